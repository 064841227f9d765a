"""Clipping across ranks with torch.distributed.

``gclip.torch.clip_grad_norm_`` and ``gclip.torch.get_total_norm`` come here
when the gradients are DTensors (FSDP2, tensor parallel) or when a
``process_group=`` is given for plain sharded tensors (ZeRO style). One step:

1. accumulate: the tensors this rank counts are read into the 16-byte
   ``gclip_partial`` of a plan (``gclip_norm_accumulate``);
2. gather: every rank's partial is all-gathered with
   ``torch.distributed.all_gather_into_tensor`` (a uint8 tensor; gloo on the
   CPU, NCCL on the current CUDA stream, no host synchronization);
3. finalize: ``gclip_norm_finalize`` folds the gathered array (in rank
   order) in a shape fixed by its length, so the norm, coefficient and
   factor are bitwise identical on every rank;
4. apply: ``gclip_apply_clip_factor`` scales this rank's local gradients.

What counts on this rank, for a DTensor on a device mesh (as PyTorch's own
``clip_grad_norm_`` reduces DTensors):

* ``Shard(d)`` (and strided shards): every coordinate of that mesh dimension
  holds distinct elements, so each one counts;
* ``Replicate()``: every coordinate holds the same elements, so they count on
  coordinate 0 only;
* ``Partial()``: the gradient is an unreduced sum. Its norm is that of the sum,
  so the sum is formed first (``redistribute`` to ``Replicate``, a collective)
  and counted on coordinate 0; the local partial values are scaled in place
  (scaling is linear, so the sum is scaled by the same factor).

A mesh of several dimensions is gathered dimension by dimension, last first,
which leaves every rank of the mesh with the same array in row-major order of
the mesh coordinates (a dimension's process group lists its ranks by global
rank; the gathered blocks are put in coordinate order). With
``process_group=``, every tensor given counts on this rank and the partials are
gathered over that group, which must contain this rank.

Options that every rank must share: the norm type and the non-finite policy
travel with each partial, and a rank that meets a foreign one raises
``GclipError`` (status MISMATCH) on every rank, writing nothing. ``max_norm``
is not compared. A rank that rejects its own input (a non-dense shard, a norm
type <= 0 with ``process_group=``) joins the gather with a marked partial and
then raises; on the CPU the other ranks raise the same exception type naming
it, on CUDA their finalize reports MISMATCH. No rank is left waiting.
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.distributed as dist
from torch import Tensor

from . import _dlpack, _lib

__all__ = ["is_dtensor", "any_dtensor", "clip_grad_norm", "total_norm"]

try:
    from torch.distributed.tensor import DTensor, Replicate
    from torch.distributed.tensor.placement_types import _StridedShard
except ImportError:  # pragma: no cover - torch without DTensor
    DTensor = None
    Replicate = None
    _StridedShard = ()

_SLOT_WORDS = 10     # gclip_device_result: 10 32-bit words
_SLOT_STATUS = 6     # index of its `status` word
_PARTIAL_BYTES = 16  # sizeof(gclip_partial)
# A rank that rejects its input still joins the gather, with a partial whose
# fingerprint no options give (its low bits say p = 2, its other bits are none
# of p = 2's), so that every rank raises instead of waiting for it.
_REJECTED_FINGERPRINT = -4  # 0xfffffffc as int32
# A rank whose DTensor gradients take PyTorch's arithmetic (float64, say)
# first tells its mesh so with this fingerprint (none of p = 2's either):
# the call goes on only if every rank says the same.
_FALLBACK_FINGERPRINT = -8  # 0xfffffff8 as int32
_REJECTED_KINDS = (ValueError, TypeError, RuntimeError)  # coded 1, 2, 3 in `nonfinite`


def is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def any_dtensor(tensors) -> bool:
    if DTensor is None:
        return False
    for cls in set(map(type, tensors)):
        if issubclass(cls, DTensor):
            return True
    return False


# ---- which local tensors count ----------------------------------------------------------

class _Split:
    """This rank's view of the gradients: the local tensors to scale, those to
    count, and how to gather (a device mesh or a process group)."""

    __slots__ = ("apply", "counted", "mesh", "group", "rejected")

    def __init__(self, apply, counted, mesh=None, group=None):
        self.apply = apply
        self.counted = counted
        self.mesh = mesh
        self.group = group
        self.rejected = None  # an exception raised once every rank has joined the gather


def _is_sharded(p) -> bool:
    return p.is_shard() or isinstance(p, _StridedShard)


def _placement_taken(p) -> bool:
    """Whether gclip takes the DTensor placement `p`."""
    return _is_sharded(p) or p.is_replicate() or p.is_partial()


def _mesh_of(grads: List[Tensor]):
    """The device mesh of the first DTensor among `grads` (None if none)."""
    return next((g.device_mesh for g in grads if is_dtensor(g)), None)


def _mesh_on_this_rank(grads: List[Tensor]):
    mesh = _mesh_of(grads)
    if mesh.get_coordinate() is None:
        raise ValueError("gclip: this rank is not part of the gradients' device mesh")
    return mesh


def _dtensor_refusal(grads: List[Tensor], mesh):
    """Why this rank refuses a list of DTensor gradients on `mesh` (a plain
    tensor among them, another mesh, a placement gclip does not take), or
    None."""
    for i, g in enumerate(grads):
        if not is_dtensor(g):
            return TypeError(
                f"gclip: gradient {i} is a plain tensor among DTensor gradients; pass all "
                "DTensors (on one device mesh) or all plain tensors")
        if g.device_mesh != mesh:
            return ValueError(
                f"gclip: gradient {i} is on another device mesh than the first DTensor "
                f"({g.device_mesh.device_type} ranks {g.device_mesh.mesh.tolist()} vs "
                f"{mesh.device_type} ranks {mesh.mesh.tolist()}); the gradients of one call "
                "must share one mesh")
    for i, g in enumerate(grads):
        for d, p in enumerate(g.placements):
            if not _placement_taken(p):
                return TypeError(
                    f"gclip: gradient {i} has placement {p} on mesh dimension {d}; gclip takes "
                    "Shard, Replicate and Partial placements")
    return None


def _partial_reduced(g, mesh):
    """The DTensor `g` with its Partial dimensions reduced (DTensor's own
    collective over each), as PyTorch does before a norm."""
    return g.redistribute(mesh, [Replicate() if p.is_partial() else p for p in g.placements])


def _reduce_partials_as_peers_do(grads: List[Tensor], mesh) -> None:
    """Before a rank that refuses its list joins the gather: the reductions
    its peers run first, one for each Partial gradient on `mesh` (with
    placements gclip takes), in list order, so that the next collective of
    every rank is the gather. Their results are dropped. This matches the
    peers when their lists differ from this rank's only in gradients that
    are not Partial (a plain tensor added, say); a Partial gradient that only
    the peers hold still leaves them waiting in its reduction."""
    for g in grads:
        if not is_dtensor(g) or g.device_mesh != mesh:
            continue
        placements = tuple(g.placements)
        if all(_placement_taken(p) for p in placements) and \
                any(p.is_partial() for p in placements):
            _partial_reduced(g, mesh)


def _split_dtensors(grads: List[Tensor]) -> _Split:
    """The split of DTensor gradients. A list this rank refuses (a plain
    tensor among them, another mesh, a placement gclip does not take) gives
    a split on the first DTensor's mesh with `rejected` set: the rank joins
    the reductions of Partial gradients and the gather, so that its peers
    raise instead of waiting."""
    mesh = _mesh_on_this_rank(grads)
    coord = mesh.get_coordinate()
    error = _dtensor_refusal(grads, mesh)
    if error is not None:
        _reduce_partials_as_peers_do(grads, mesh)
        return _rejected_on(mesh, error)
    apply, counted = [], []
    for i, g in enumerate(grads):
        placements = tuple(g.placements)
        local = g.to_local()
        apply.append(local)
        source = local
        if any(p.is_partial() for p in placements):
            source = _partial_reduced(g, mesh).to_local()
        counts = True
        for d, p in enumerate(placements):
            if _is_sharded(p):
                continue
            if coord[d] != 0:  # Replicate or Partial (reduced above): counted once
                counts = False
        if counts:
            counted.append(source)
    return _Split(apply, counted, mesh=mesh)


def _rejected_on(mesh, error: Exception) -> _Split:
    split = _Split([], [], mesh=mesh)
    split.rejected = error
    return split


def _split_group(grads: List[Tensor], group) -> _Split:
    if dist.get_rank(group) < 0:
        raise ValueError(f"gclip: this rank (global rank {dist.get_rank()}) is not a member of "
                         "process_group; call with a group that contains it, on the group's "
                         "ranks only")
    for i, g in enumerate(grads):
        if is_dtensor(g):
            split = _Split([], [], group=group)
            split.rejected = TypeError(
                f"gclip: gradient {i} is a DTensor; process_group= is for plain tensors "
                "(DTensors are reduced over their own device mesh)")
            return split
    return _Split(list(grads), list(grads), group=group)


# ---- the step ------------------------------------------------------------------------------

def _device_of(tensors: List[Tensor]):
    device = tensors[0].device
    for i, t in enumerate(tensors):
        if t.device != device:
            raise ValueError(f"gclip: local gradient {i} is on {t.device}, gradient 0 on "
                             f"{device}; the local gradients of a rank must be on one device")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return device, index
    if device.type != "cpu":
        raise TypeError(f"gclip: gradients on a '{device.type}' device; gclip runs on the CPU "
                        "and on CUDA devices")
    return device, -1


def _group_device(group):
    """The device of a rank that holds no tensor: the current CUDA device
    when the group's backend for CUDA tensors is NCCL (alone, or the
    "cuda:nccl" of a multi-device backend such as the "cpu:gloo,cuda:nccl"
    that init_process_group() without a backend makes) and CUDA is
    available, else the CPU (gloo, whose configuration reads
    "cpu:gloo,cuda:gloo"). Its peers gather on their tensors' device."""
    try:
        config = str(dist.get_backend_config(group)).lower()
    except Exception:  # an older PyTorch, or no configuration to read
        config = str(dist.get_backend(group)).lower()
    if "nccl" in config and torch.cuda.is_available():
        index = torch.cuda.current_device()
        return torch.device("cuda", index), index
    return torch.device("cpu"), -1


def _slot_words(entry, device: torch.device) -> Tensor:
    plan = entry.plan
    view = _dlpack.MemoryView(plan, plan.slot_address(), plan.device, "int32", (_SLOT_WORDS,))
    return torch.from_dlpack(view)


def _partial_bytes(entry) -> Tensor:
    plan = entry.plan
    view = _dlpack.MemoryView(plan, plan.partial_address(), plan.device, "int32", (4,))
    return torch.from_dlpack(view).view(torch.uint8)


def _mesh_line(mesh, d: int) -> List[int]:
    """The global ranks along mesh dimension `d` through this rank, in order
    of their coordinate on `d`."""
    coord = mesh.get_coordinate()
    index = tuple(slice(None) if i == d else c for i, c in enumerate(coord))
    return mesh.mesh[index].reshape(-1).tolist()


def _gather(send: Tensor, split: _Split) -> Tensor:
    """Every rank's 16-byte partial, in rank order of the group (row-major
    order of the mesh coordinates), identical on every rank."""
    if split.mesh is not None:
        mesh = split.mesh
        steps = [(mesh.get_group(d), _mesh_line(mesh, d)) for d in reversed(range(mesh.ndim))]
    else:
        steps = [(split.group, None)]
    buf = send
    for group, line in steps:
        n = dist.get_world_size(group)
        if n == 1:
            continue
        out = torch.empty(n * buf.numel(), dtype=torch.uint8, device=buf.device)
        dist.all_gather_into_tensor(out, buf, group=group)
        if line is not None:
            # a mesh dimension's group lists its ranks by global rank, which
            # need not rise with the coordinate: put the blocks in coordinate order
            ranks = dist.get_process_group_ranks(group)
            if ranks != line:
                blocks = out.view(n, -1)
                out = torch.cat([blocks[ranks.index(r)] for r in line])
        buf = out
    return buf


def _mismatch_error() -> _lib.GclipError:
    return _lib.GclipError(
        _lib.MISMATCH,
        "gclip: ranks disagree on the norm type or the non-finite policy (a gathered partial "
        "was made with other options than this rank's, by a rank that rejected its input, or "
        "by a rank whose gradients take PyTorch's arithmetic); every rank must pass the same "
        "norm_type, nonfinite and error_if_nonfinite, and gradients of the same dtypes. "
        "Nothing was written.")


def _fallback_device(split: _Split) -> torch.device:
    """The device of the gather when this rank's tensors cannot say."""
    if split.mesh is not None:
        if split.mesh.device_type == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(split.mesh.device_type)
    return _group_device(split.group)[0]


def _join_rejected(split: _Split, error: Exception) -> None:
    """Join the gather with a rejected partial, so that no peer waits for
    this rank, then raise `error`."""
    try:
        device = _local_device(split)[0]
    except Exception:
        device = _fallback_device(split)
    kind = next((k for k, cls in enumerate(_REJECTED_KINDS, 1) if isinstance(error, cls)), 3)
    words = torch.tensor([0, 0x7ff80000, kind, _REJECTED_FINGERPRINT], dtype=torch.int32)
    _gather(words.view(torch.uint8).to(device), split)
    raise error


def _raise_if_rejected(gathered: Tensor, split: _Split) -> None:
    """On the CPU: raise when a peer joined the gather with a rejected partial
    (on CUDA, reading would synchronize: finalize reports MISMATCH instead)."""
    words = gathered.view(torch.int32).view(-1, 4)
    found = (words[:, 3] == _REJECTED_FINGERPRINT).nonzero().view(-1).tolist()
    if not found:
        return
    if split.mesh is not None:
        ranks = [split.mesh.mesh.reshape(-1)[i].item() for i in found]
    else:
        ranks = [dist.get_global_rank(split.group, i) for i in found]
    code = int(words[found[0], 2])
    cls = _REJECTED_KINDS[code - 1] if 1 <= code <= len(_REJECTED_KINDS) else RuntimeError
    who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
    raise cls(f"gclip: {who} rejected its input (the exception raised there says why); "
              "nothing was written on any rank")


def _run(split: _Split, norm_type: float, max_norm: float, policy: int, apply: bool):
    """Accumulate, gather, finalize and (when `apply`) apply. Returns the
    plan entry whose result slot holds the global result."""
    from . import torch as gt

    every = split.apply + split.counted
    try:
        if split.rejected is not None:
            raise split.rejected
        device, dev_index = _local_device(split)
        for i, t in enumerate(every):
            gt._check_tensor(t, i)
        stream = gt._current_stream(dev_index)

        counted = gt._bind(split.counted, device, dev_index, stream) if split.counted else \
            gt._cache_of_thread().get([], device, dev_index, [])
        plan = counted.plan
        plan.run("norm_accumulate", plan.options(1.0, norm_type, 1e-6, 1.0, policy), stream)
        send = torch.empty(_PARTIAL_BYTES, dtype=torch.uint8, device=device)
        send.copy_(_partial_bytes(counted))
        target = gt._bind(split.apply, device, dev_index, stream) if split.apply else counted
    except Exception as e:
        _join_rejected(split, e)
    gathered = _gather(send, split)
    if dev_index < 0:
        _raise_if_rejected(gathered, split)
    count = gathered.numel() // _PARTIAL_BYTES

    plan = target.plan
    plan.finalize(plan.options(max_norm, norm_type, 1e-6, 1.0, policy), gathered.data_ptr(),
                  count, stream)
    if dev_index < 0 and int(_slot_words(target, device)[_SLOT_STATUS]) == _lib.MISMATCH:
        raise _mismatch_error()
    if apply and split.apply:
        plan.apply_clip_factor(stream)
    return target


def _status_checked(target, device, dev_index: int) -> Tensor:
    """The norm; on CUDA, NaN when the slot says MISMATCH (read on the device)."""
    norm = target.norm_view.clone()
    if dev_index >= 0:
        status = _slot_words(target, device)[_SLOT_STATUS]
        norm = torch.where(status == _lib.SUCCESS, norm, torch.full_like(norm, math.nan))
    return norm


def _local_device(split: _Split):
    every = split.apply + split.counted
    if every:
        return _device_of(every)
    if split.mesh is not None:
        device = _fallback_device(split)
        return device, (device.index if device.type == "cuda" else -1)
    return _group_device(split.group)


def _wrap(norm: Tensor, split: _Split) -> Tensor:
    if split.mesh is None:
        return norm
    return DTensor.from_local(norm, split.mesh, [Replicate()] * split.mesh.ndim, run_check=False)


def _nonfinite_message(norm_type: float) -> str:
    from . import torch as gt
    return gt._nonfinite_message(norm_type)


def _split(grads: List[Tensor], process_group) -> _Split:
    if process_group is not None:
        return _split_group(grads, process_group)
    return _split_dtensors(grads)


def _joinable(group) -> bool:
    """Whether this rank can take part in a gather over `group`."""
    try:
        return dist.is_initialized() and dist.get_rank(group) >= 0
    except Exception:  # not a process group
        return False


def _reject_options(group, grads: List[Tensor], message: str) -> _Split:
    """The split of a process_group= call whose options this rank rejects:
    it joins the gather before raising, when it can."""
    error = ValueError(message)
    if not _joinable(group):
        raise error
    split = _split_group(grads, group)
    split.apply, split.counted = [], []
    split.rejected = error
    return split


def _refuse(grads: List[Tensor], group, error: Exception) -> None:
    """A process_group= call this rank refuses before it has read its options
    (a bad keyword argument): it joins the gather with a rejected partial, so
    that its peers raise naming it instead of waiting, then raises `error`."""
    if not _joinable(group):
        raise error
    split = _Split(list(grads), list(grads), group=group)  # gathered on their device
    split.rejected = error
    _join_rejected(split, error)


def _refuse_on_mesh(grads: List[Tensor], error: Exception, norm_type=2.0, fp32_norm=False,
                    max_norm=0.0) -> None:
    """A call on DTensor gradients that this rank refuses before it has read
    its options (a bad keyword argument): when some gradient is a DTensor
    and this rank is in its mesh, it joins the collectives its peers run
    before they would see its refusal, with a rejected partial, so that they
    raise naming it instead of waiting: on gclip's path the reductions of
    Partial gradients and the mesh's gather, on PyTorch's (a CPU mesh) the
    gather alone. The path is the one this rank's DTensors and the options
    it could read would take (an option it could not read is taken to be
    one gclip takes). Raises `error` in every case."""
    mesh = _mesh_of(grads) if DTensor is not None else None
    if mesh is None or mesh.get_coordinate() is None:
        raise error

    def readable(x, default):
        try:
            return float(x)
        except Exception:
            return default
    try:
        fp32 = bool(fp32_norm)
    except Exception:
        fp32 = False
    if _gclip_takes(grads, readable(norm_type, 2.0), fp32, True) and \
            readable(max_norm, 0.0) >= 0:
        _reduce_partials_as_peers_do(grads, mesh)
        _join_rejected(_rejected_on(mesh, error), error)
    split = _rejected_on(mesh, error)
    if _fallback_device(split).type != "cpu":
        raise error  # PyTorch's path on a CUDA mesh: its peers agree on nothing first
    _join_rejected(split, error)


def _gclip_takes(grads: List[Tensor], norm_type: float, fp32_norm: bool, is_mesh: bool) -> bool:
    """Whether gclip's path takes the call. On a mesh the dtypes are those
    of the DTensors on the first DTensor's mesh: a plain tensor or a second
    mesh among them is refused on gclip's path, and a rank that refuses its
    list must take the path its peers take (the collectives it joins before
    raising are that path's)."""
    if not _lib.takes_norm_type(norm_type):
        return False
    if not is_mesh:
        return True
    allowed = (torch.float32, torch.float16, torch.bfloat16) if fp32_norm else (torch.float32,)
    mesh = _mesh_of(grads)
    return all(g.dtype in allowed for g in grads if is_dtensor(g) and g.device_mesh == mesh)


def clip_grad_norm(grads: List[Tensor], max_norm: float, norm_type: float,
                   error_if_nonfinite: bool, fp32_norm: bool, skip: bool,
                   process_group=None) -> Tensor:
    """Global-norm clipping of DTensor gradients, or of plain tensors sharded
    over `process_group`. Returns the global norm on every rank (a replicated
    DTensor for DTensor gradients, a float32 tensor otherwise)."""
    is_mesh = process_group is None
    if not _gclip_takes(grads, norm_type, fp32_norm, is_mesh) or not max_norm >= 0:
        if not is_mesh:
            split = _reject_options(process_group, grads,
                                    f"gclip: process_group= takes norm types "
                                    f"{_lib.NORM_TYPE_RANGE}, and max_norm >= 0 (got "
                                    f"norm_type={norm_type}, max_norm={max_norm})")
        else:
            return _torch_clip(grads, max_norm, norm_type, error_if_nonfinite, skip)
    else:
        split = _split(grads, process_group)
    policy = _lib.ERROR if error_if_nonfinite else (_lib.SKIP if skip else _lib.PROPAGATE)
    target = _run(split, norm_type, max_norm, policy, True)
    device, dev_index = _local_device(split)
    if error_if_nonfinite:
        st, _ = target.plan.get_result()
        if st == _lib.NONFINITE:
            raise RuntimeError(_nonfinite_message(norm_type))
        if st == _lib.MISMATCH:
            raise _mismatch_error()
        if st:
            raise _lib.error_for(st, "gclip_norm_finalize")
    return _wrap(_status_checked(target, device, dev_index), split)


def total_norm(tensors: List[Tensor], norm_type: float, error_if_nonfinite: bool,
               fp32_norm: bool, process_group=None) -> Tensor:
    """The global norm of DTensors, or of plain tensors sharded over
    `process_group`, on every rank."""
    is_mesh = process_group is None
    if not _gclip_takes(tensors, norm_type, fp32_norm, is_mesh):
        if not is_mesh:
            split = _reject_options(process_group, tensors,
                                    f"gclip: process_group= takes norm types "
                                    f"{_lib.NORM_TYPE_RANGE} (got {norm_type})")
        else:
            _agreed_fallback(tensors)
            return torch.nn.utils.get_total_norm(tensors, norm_type, error_if_nonfinite)
    else:
        split = _split(tensors, process_group)
    target = _run(split, norm_type, 1.0, _lib.PROPAGATE, False)
    device, dev_index = _local_device(split)
    norm = _status_checked(target, device, dev_index)
    if error_if_nonfinite:
        # the host waits here anyway: a mismatch is named as such, not as
        # the NaN that _status_checked puts in its place
        st, _ = target.plan.get_result()
        if st == _lib.MISMATCH:
            raise _mismatch_error()
        if st not in (_lib.SUCCESS, _lib.NONFINITE):
            raise _lib.error_for(st, "gclip_norm_finalize")
        if not bool(torch.isfinite(norm)):
            raise RuntimeError(_nonfinite_message(norm_type))
    return _wrap(norm, split)


def _agreed_fallback(grads: List[Tensor]) -> None:
    """Before PyTorch's own DTensor arithmetic runs (with collectives of its
    own): this rank's list is checked as gclip's path checks it (a refused
    list writes nothing). On a CPU mesh every rank then says which path it
    takes, in gclip's 16-byte gather, so that a rank that refuses its list
    (a plain tensor among the DTensors, another mesh, a bad option) or
    takes gclip's path makes every rank raise, instead of leaving its peers
    waiting in collectives that do not match. On a CUDA mesh that would
    take a host synchronization every step: a refused list raises on its
    rank alone, as on gclip's path before it (its peers wait)."""
    mesh = _mesh_on_this_rank(grads)
    split = _Split([], [], mesh=mesh)
    error = _dtensor_refusal(grads, mesh)
    if _fallback_device(split).type != "cpu":
        if error is not None:
            raise error
        return
    if error is not None:
        _join_rejected(split, error)
    words = torch.tensor([0, 0, 0, _FALLBACK_FINGERPRINT], dtype=torch.int32)
    gathered = _gather(words.view(torch.uint8).to(_fallback_device(split)), split).cpu()
    _raise_if_rejected(gathered, split)
    marks = gathered.view(torch.int32).view(-1, 4)[:, 3]
    others = (marks != _FALLBACK_FINGERPRINT).nonzero().view(-1).tolist()
    if others:
        ranks = [mesh.mesh.reshape(-1)[i].item() for i in others]
        raise _lib.GclipError(
            _lib.MISMATCH,
            f"gclip: rank(s) {', '.join(map(str, ranks))} computed this norm with gclip, this "
            "rank with PyTorch's DTensor arithmetic (float64 gradients, float16/bfloat16 ones "
            "without fp32_norm, a norm type <= 0 or a negative max_norm): every rank must pass "
            "gradients of the same dtypes and the same options. Nothing was written.")


def _torch_clip(grads, max_norm, norm_type, error_if_nonfinite, skip) -> Tensor:
    """PyTorch's own DTensor arithmetic, for what gclip does not take here
    (float64, float16/bfloat16 norms rounded to the gradient dtype, norm types
    <= 0, a negative max_norm)."""
    from . import torch as gt
    _agreed_fallback(grads)
    total = torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite)
    gt._apply_coef(grads, max_norm, total, skip)  # clip_grads_with_norm_'s arithmetic
    return total
