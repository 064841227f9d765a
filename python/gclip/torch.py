"""PyTorch drop-ins for torch.nn.utils' clipping functions, and a Clipper
that takes parameters.

    import gclip.torch as gt
    total_norm = gt.clip_grad_norm_(model.parameters(), max_norm=1.0)

The four functions have PyTorch's names, signatures, defaults and return
values, and by default PyTorch's results, non-finite norms included. Two
deliberate differences are each one keyword away:

* ``fp32_norm=True``: for float16/bfloat16 gradients the norm is computed to
  1e-6 of the exact value and returned as float32, and the coefficient is
  computed in float32 (PyTorch rounds the norm to the gradient dtype, where
  float16 overflows at 65504).
* ``nonfinite="skip"``: when the norm is NaN or Inf no gradient is written
  (PyTorch zeroes them or turns them into NaN); the norm is still returned.

float32 gradients (and float16/bfloat16 with ``fp32_norm=True``) on one device
are clipped entirely by gclip: one call, norm and scaling fused, nothing
written when the coefficient is 1. Other inputs reproduce PyTorch's
arithmetic step by step: gclip computes the per-tensor norms and PyTorch's
own operations combine and apply them (float16/bfloat16 norms rounded to the
gradient dtype, several devices, float64, norm types <= 0, a negative
max_norm).
"""

from __future__ import annotations

import functools
import math
import operator
import threading
import types
import warnings
from typing import Iterable, List, Optional, Union

import torch
from torch import Tensor

from . import _core, _dlpack, _lib
from ._core import ClipResult, DeviceResultView, Plan, policy_code  # noqa: F401

__all__ = [
    "clip_grad_norm_", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_",
    "Clipper", "describe_tensor",
]

_tensor_or_tensors = Union[Tensor, Iterable[Tensor]]

_DTYPE_CODES = {torch.float32: _lib.F32, torch.float16: _lib.F16, torch.bfloat16: _lib.BF16,
                torch.float64: _lib.F64}
_FAST_DTYPES = {torch.float32: _lib.F32, torch.float16: _lib.F16, torch.bfloat16: _lib.BF16}
_LOW_DTYPES = (torch.float16, torch.bfloat16)
_get_dtype = Tensor.dtype.__get__
_numel = Tensor.numel
_data_ptr = Tensor.data_ptr
_get_device = Tensor.get_device
_is_cpu = operator.attrgetter("is_cpu")
_is_cuda = operator.attrgetter("is_cuda")
_is_contiguous = Tensor.is_contiguous

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)

try:  # the C++ scan, built when PyTorch was importable at build time
    from . import _torch_fast
except ImportError:  # pragma: no cover - depends on the build
    _torch_fast = None
# Its inlined tensor accessors read the layouts of the PyTorch it was built
# with: with another PyTorch (upgraded since) the Python scan is used.
if _torch_fast is not None and getattr(_torch_fast, "TORCH_VERSION", None) != torch.__version__:
    _torch_fast = None

_SMALL_PLAN = 1 << 20  # elements below which a CPU plan runs on one thread


def _current_stream(device_index: int) -> int:
    if device_index < 0:
        return 0
    if _raw_stream is not None:
        return _raw_stream(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


# ---- describing tensors ------------------------------------------------------------

def _dense(t: Tensor) -> bool:
    return t.is_contiguous() or _dlpack.dense_strides(t.shape, t.stride())


def describe_tensor(t: Tensor, name: Union[int, str] = "the tensor") -> _dlpack.ArrayInfo:
    """gclip's view of one tensor (used by gclip.Clipper for torch tensors).
    `name` is what a rejection calls it: an index names gradient `name`."""
    _check_tensor(t, name)
    code = _DTYPE_CODES[t.dtype]
    dev = t.get_device() if t.is_cuda else -1
    return _dlpack.ArrayInfo(t.data_ptr(), t.numel(), code, dev, True, _dense(t))


def _check_tensor(g: Tensor, index: Union[int, str]) -> None:
    """Every check of one tensor; `index` is the gradient's position, or a
    name (an argument's) for the message."""
    what = f"gradient {index}" if isinstance(index, int) else index
    if g.layout is not torch.strided:
        raise TypeError(f"gclip: {what} has layout {g.layout}; gclip takes dense "
                        "(strided) gradients only, sparse gradients are not supported")
    if g.dtype not in _DTYPE_CODES:
        raise TypeError(f"gclip: {what} has dtype {g.dtype}; gclip takes float32, "
                        "float16, bfloat16 and float64")
    if g.device.type not in ("cpu", "cuda"):
        raise TypeError(f"gclip: {what} is on a '{g.device.type}' device; gclip runs "
                        "on the CPU and on CUDA devices")
    if not _dense(g):
        raise (_Gapped if _no_overlap(g) else ValueError)(
            f"gclip: {what} is not dense (shape {tuple(g.shape)}, strides {g.stride()}); gclip "
            "needs gradients without gaps or overlaps")


def _no_overlap(t: Tensor) -> bool:
    """Whether no two elements of a strided tensor share memory: its
    dimensions of more than one element, by increasing stride, each step
    past the last element the smaller ones reach."""
    reach = 1  # the highest offset so far, plus one
    for stride, n in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n > 1):
        if stride < reach:
            return False
        reach += stride * (n - 1)
    return True


class _Gapped(ValueError):
    """A gradient with gaps between its elements but no element shared (a
    strided view such as x[:, ::2]): the library reads dense gradients only,
    so the drop-ins take PyTorch's arithmetic for a list holding one, as
    PyTorch takes it; gclip.torch.Clipper, process_group= and the adaptive
    clippers refuse it with this ValueError."""


class _NotInMemory(TypeError):
    """A non-empty gradient with no memory of its own (a wrapper subclass, a
    functional or a zero tensor): the library needs a pointer to the data,
    so the drop-ins take PyTorch's arithmetic, which dispatches to the
    tensor's own operations, for such a list."""


def _check_memory(grads: List[Tensor]) -> None:
    """_NotInMemory naming the first non-empty tensor with no memory."""
    for i, g in enumerate(grads):
        try:
            ok = g.numel() == 0 or g.data_ptr() != 0
        except RuntimeError:  # no storage to point at
            ok = False
        if not ok:
            raise _NotInMemory(f"gclip: gradient {i} ({type(g).__name__}) has no memory of its "
                               "own (a wrapper subclass, a functional or a zero tensor); where "
                               "gclip cannot leave it to PyTorch's arithmetic, clip it with "
                               "torch.nn.utils")


def _check_writable(grads: List[Tensor]) -> None:
    """PyTorch refuses an in-place update of an inference tensor outside
    inference mode; the drop-ins that write refuse it too, before writing."""
    if torch.is_inference_mode_enabled() or not any(map(Tensor.is_inference, grads)):
        return
    i = next(k for k, g in enumerate(grads) if g.is_inference())
    raise RuntimeError(f"gclip: gradient {i} is an inference tensor: an in-place update to it "
                       "outside InferenceMode is not allowed, as in PyTorch (clone it first, "
                       "or clip inside torch.inference_mode())")


def _validate(grads: List[Tensor], gaps: bool = False) -> None:
    """Every check that can reject the input, run before anything is written;
    with `gaps`, gradients with gaps pass (PyTorch's arithmetic takes them)."""
    for i, g in enumerate(grads):
        try:
            _check_tensor(g, i)
        except _Gapped:
            if not gaps:
                raise


# ---- plan cache of the drop-ins -------------------------------------------------------

class _PlanEntry:
    __slots__ = ("plan", "norm_view", "norms_buf", "default_threads", "all_f32")

    def __init__(self, plan: Plan, device: torch.device, all_f32: bool):
        self.plan = plan
        self.all_f32 = all_f32  # every tensor float32
        addr = plan.slot_address()
        if device.type == "cpu":
            import ctypes
            buf = (ctypes.c_float * 3).from_address(addr)
            self.norm_view = torch.frombuffer(buf, dtype=torch.float32, count=1)[0]
            self.norm_view._gclip_plan = plan  # keep the slot's owner alive
        else:
            self.norm_view = torch.from_dlpack(_dlpack.MemoryView(plan, addr, plan.device, "float32"))
        self.norms_buf = None

    def tensor_norms(self, device: torch.device) -> Tensor:
        if self.norms_buf is None:
            self.norms_buf = torch.empty(max(self.plan.count, 1), dtype=torch.float32, device=device)
        return self.norms_buf


class _PlanCache:
    def __init__(self, capacity: int = 32):
        self._plans = {}
        self._capacity = capacity

    def get(self, grads: List[Tensor], device: torch.device, dev_index: int,
            dtypes: Optional[list] = None) -> _PlanEntry:
        if dtypes is None:
            dtypes = list(map(_get_dtype, grads))
        numels = tuple(map(_numel, grads))
        key = (dev_index, numels, tuple(dtypes))
        entry = self._plans.get(key)
        if entry is None:
            _validate(grads)
            codes = [_DTYPE_CODES[d] for d in dtypes]
            plan = Plan(list(numels), codes, dev_index, list(map(_data_ptr, grads)))
            if dev_index < 0 and sum(numels) < _SMALL_PLAN:
                plan.set_num_threads(1)  # a parallel region costs more than the work
            entry = _PlanEntry(plan, device, all(d is torch.float32 for d in dtypes))
            entry.default_threads = plan.num_threads
            if len(self._plans) >= self._capacity:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = entry
        return entry


def _use_threads(entry: _PlanEntry, threads: Optional[int] = None) -> None:
    """Set the plan's thread count to ``threads``, or back to the plan's own
    default when None (plans are shared: a Clipper may have left its count)."""
    want = entry.default_threads if threads is None else threads
    if entry.plan.num_threads != want:
        entry.plan.set_num_threads(want)


class _ThreadCaches(threading.local):
    """Each thread's own plans (and scanner): a plan is rebound to the
    gradients of every call and its result slot is read after the call, so
    two threads sharing one would clip each other's gradients."""

    def __init__(self):
        self.cache = _PlanCache()
        self.scanner = None
        self.depth = 0  # drop-in calls in progress on this thread (_one_call)


_threads = _ThreadCaches()


def _cache_of_thread() -> _PlanCache:
    return _threads.cache


def _one_call(fn):
    """A drop-in call. One nested in another on the same thread (from a
    warnings hook, a signal handler, a finalizer, a tensor subclass's code)
    gets plans of its own and no fast scan: the outer call's plan may be
    bound to its gradients and not yet run, and its scan's pointers and held
    gradients are still in use."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        t = _threads
        if t.depth == 0:
            t.depth = 1
            try:
                return fn(*args, **kwargs)
            finally:
                t.depth = 0
        outer = t.cache
        t.depth += 1
        t.cache = _PlanCache(4)
        try:
            return fn(*args, **kwargs)
        finally:
            t.cache = outer
            t.depth -= 1
    return call


class _Scanner:
    """The C++ scan: one pass over the parameters fills a shared pointer array
    and returns the signature (counts, dtypes, device) that keys the plan."""

    def __init__(self):
        self._sig_plans = {}
        self._grow(1024)

    def _grow(self, n):
        import ctypes
        self.capacity = n
        self.buf = (ctypes.c_void_p * n)()
        self.addr = ctypes.addressof(self.buf)

    def scan(self, items, from_params: bool):
        r = _torch_fast.scan(items, from_params, self.addr, self.capacity)
        if r[0] > self.capacity:
            self._grow(max(r[0], 2 * self.capacity))
            r = _torch_fast.scan(items, from_params, self.addr, self.capacity)
        return r

    def entry(self, sig, items, from_params, device_code):
        """The plan entry for a scanned signature (created on first sight)."""
        entry = self._sig_plans.get(sig)
        if entry is None:
            grads = _grads_list(items, from_params)
            device = grads[0].device
            entry = _cache_of_thread().get(grads, device, device_code)
            if len(self._sig_plans) >= 32:
                self._sig_plans.pop(next(iter(self._sig_plans)))
            self._sig_plans[sig] = entry
        return entry

    def rebind(self, entry, count, stream):
        _use_threads(entry)
        st = _lib.fn.plan_rebind(entry.plan.handle, self.buf, count, stream)
        if st:
            raise _lib.error_for(st, "gclip_plan_rebind")


def _scanner_of_thread() -> Optional[_Scanner]:
    """This thread's scanner (its pointer array and signature table), or
    None without the C++ extension."""
    s = _threads.scanner
    if s is None and _torch_fast is not None:
        s = _threads.scanner = _Scanner()
    return s


def _grads_list(items, from_params):
    if from_params:
        return [p.grad for p in items if p.grad is not None]
    return list(items)


def _scan_fast(items, from_params: bool, fp32_norm: bool):
    """The plan entry, stream and count when the fused gclip path applies to
    these gradients (one CPU/CUDA device, dense, float32 or with fp32_norm
    float16/bfloat16), with their pointers bound; else (None, 0, count),
    count -1 when an item is not a tensor."""
    scanner = _scanner_of_thread()
    count, sig, flags, dev = scanner.scan(items, from_params)
    F = _torch_fast
    ok_dtype = flags & (F.FAST_DTYPES if fp32_norm else F.ALL_F32)
    if count == 0 or not ok_dtype or not (flags & F.ONE_DEVICE) or not (flags & F.DENSE) or dev < -1:
        return None, 0, count
    if not (flags & F.NO_INFERENCE):  # the general path refuses them outside inference mode
        return None, 0, count
    if not scanner.buf[0]:  # no data pointer: an empty tensor, or a DTensor's wrapper
        return None, 0, count
    entry = scanner.entry(sig, items, from_params, dev)
    stream = _current_stream(dev)
    scanner.rebind(entry, count, stream)
    return entry, stream, count


def _scanned_call(items, from_params: bool, fp32_norm: bool, run, writes: bool):
    """A drop-in's fused path: `run(entry, stream)` on the cached plan bound
    to these gradients by the C++ scan, where _scan_fast takes them and no
    other drop-in call of this thread is under way (_one_call). `run`
    returns (done, result); when done and `writes`, the gradients' version
    counters are bumped. Returns (done, result, count): count as _scan_fast
    gives it (0: no gradient), -1 where the scan did not run or the library
    left the list to PyTorch's arithmetic (_is_overlap). The scan holds the
    gradients while the library runs with the GIL released (another thread
    could drop a .grad meanwhile), until released here."""
    if _threads.depth != 1 or torch.compiler.is_compiling() or _scanner_of_thread() is None:
        return False, None, -1  # (a compiled region takes the op: dynamo does not trace the scan)
    try:
        try:
            entry, stream, count = _scan_fast(items, from_params, fp32_norm)
        except _TORCH_TAKES as e:
            if not _is_overlap(e):
                raise
            return False, None, -1
        if entry is None:
            return False, None, count
        done, result = run(entry, stream)
        if done and writes:
            if _bump_versions is not None:
                _bump_versions(items, from_params)
            else:
                _written(_grads_list(items, from_params))
        return done, result, count
    finally:
        _torch_fast.release()


def _bind(grads: List[Tensor], device: torch.device, dev_index: int, stream: int,
          dtypes: Optional[list] = None, cache: Optional[_PlanCache] = None) -> _PlanEntry:
    """The cached plan for these shapes, dtypes and device (this thread's
    cache, or `cache`), rebound to the gradients' current data pointers."""
    try:
        contiguous = all(map(_is_contiguous, grads))
        ptrs = list(map(_data_ptr, grads))
    except RuntimeError:  # sparse and other layouts, tensors without storage
        contiguous, ptrs = False, None
    if not contiguous or 0 in ptrs:  # a pointer 0 is fine for an empty tensor only
        _validate(grads)
        _check_memory(grads)
        ptrs = list(map(_data_ptr, grads))
    entry = (cache if cache is not None else _cache_of_thread()).get(grads, device, dev_index, dtypes)
    _use_threads(entry)
    entry.plan.rebind(ptrs, stream)
    return entry


def _bind_disjoint(grads: List[Tensor], device: torch.device, dev_index: int, stream: int,
                   dtypes: Optional[list] = None) -> Optional[_PlanEntry]:
    """_bind, or None when the library refuses the list as overlapping (a
    gradient listed twice, or two sharing memory) or a gradient has no
    memory: the caller then takes PyTorch's arithmetic, which processes each
    entry in turn."""
    try:
        return _bind(grads, device, dev_index, stream, dtypes)
    except _TORCH_TAKES as e:
        if not _is_overlap(e):
            raise
        return None


_increment_version = getattr(torch.autograd.graph, "increment_version", None)
_bump_versions = getattr(_torch_fast, "bump_versions", None)


def _written(grads: List[Tensor]) -> None:
    """Tell autograd that gclip wrote these tensors in place, as PyTorch's
    own in-place ops do (a graph that saved one of them then refuses to
    backpropagate through the stale value instead of using it)."""
    if _increment_version is not None:
        _increment_version(grads)


def _single_device(grads: List[Tensor]):
    """(device, index) when every gradient is on one CPU/CUDA device, else None."""
    devs = list(map(_get_device, grads))
    first = devs[0]
    if devs.count(first) != len(devs):
        return None
    # get_device() is -1 on the CPU and on devices without an index ("meta"),
    # and an index on CUDA and on other indexed devices (XPU, MPS): every
    # gradient, the first one included, must be on the CPU (-1) or on CUDA,
    # or the first one that is not is refused here, before its pointer is
    # taken
    same = _is_cpu if first < 0 else _is_cuda
    if not all(map(same, grads)):
        for k, g in enumerate(grads):
            if not same(g):
                _check_tensor(g, k)  # raises: g is on neither the CPU nor CUDA
                return None
    return grads[0].device, first


def _fast_dtypes(dtypes, fp32_norm: bool) -> bool:
    if fp32_norm:
        return all(d in _FAST_DTYPES for d in set(dtypes))
    return all(d is torch.float32 for d in set(dtypes))


# ---- PyTorch's arithmetic on gclip's per-tensor norms ------------------------------------

def _nonfinite_message(norm_type: float) -> str:
    return (f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the gradients "
            "by the non-finite norm anyway, set `error_if_nonfinite=False`")


def _group_by_device(tensors: List[Tensor]):
    groups = {}
    for t in tensors:
        groups.setdefault(t.device, []).append(t)
    return groups


def _group_by_device_dtype(tensors: List[Tensor]):
    """{(device, dtype): tensors}, each group in list order, the groups in the
    order PyTorch's own grouping gives them (not the list's), as its
    clip_grad_norm_, clip_grads_with_norm_ and clip_grad_value_ batch their
    foreach kernels: one kernel takes one device and one dtype. The order
    matters where gradients of two dtypes share memory (the later group's
    write wins) and in the sum of a mixed list's norms (the last bit)."""
    try:
        from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype
        groups = _group_tensors_by_device_and_dtype([tensors])
        return {key: ts for key, ([ts], _) in groups.items()}
    except Exception:  # a PyTorch without it: first appearance
        groups = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype), []).append(t)
        return groups


def _torch_order(tensors: List[Tensor]) -> List[Tensor]:
    """The tensors in the order in which PyTorch's get_total_norm stacks their
    norms (_group_by_device_dtype's)."""
    return [t for ts in _group_by_device_dtype(tensors).values() for t in ts]


def _per_tensor_norms(tensors: List[Tensor], norm_type: float, fp32_norm: bool,
                      torch_only: bool = False) -> List[Tensor]:
    """One norm per tensor, in PyTorch's order (_torch_order): gclip computes
    them (float32, exact to 1e-6); rounded to each tensor's dtype unless
    fp32_norm. float64 tensors, norm types <= 0 and, with `torch_only`, every
    tensor use PyTorch's own kernels, as its get_total_norm picks them."""
    out = {}
    use_gclip = _lib.takes_norm_type(norm_type) and not torch_only
    for device, group in _group_by_device(tensors).items():
        gtensors = [t for t in group if t.dtype in _FAST_DTYPES] if use_gclip else []
        others = [t for t in group if t.dtype not in _FAST_DTYPES] if use_gclip else group
        if gtensors:
            dev_index = device.index if device.type == "cuda" else -1
            if device.type == "cuda" and dev_index is None:
                dev_index = torch.cuda.current_device()
            stream = _current_stream(dev_index)
            entry = _bind(gtensors, device, dev_index, stream)
            buf = torch.empty(len(gtensors), dtype=torch.float32, device=device)
            plan = entry.plan
            opts = plan.options(1.0, norm_type, 1e-6, 1.0, _lib.PROPAGATE, buf.data_ptr())
            plan.run("total_norm", opts, stream)
            for t, n in zip(gtensors, buf.unbind(0)):
                out[id(t)] = n if fp32_norm else n.to(t.dtype)
        by_dtype = {}
        for t in others:
            by_dtype.setdefault(t.dtype, []).append(t)
        for dtype, ts in by_dtype.items():
            # fp32_norm: a float16/bfloat16 norm is computed and returned in float32 here too
            wide = torch.float32 if fp32_norm and dtype in _LOW_DTYPES else None
            out.update(zip(map(id, ts), _torch_norms(ts, device, norm_type, wide)))
    return [out[id(t)] for t in _torch_order(tensors)]


def _torch_norms(ts: List[Tensor], device: torch.device, norm_type: float, dtype) -> List[Tensor]:
    """PyTorch's norms of tensors of one device and dtype, by the kernel its
    get_total_norm picks: the foreach kernel where the device has it (its
    results differ from vector_norm's for some norm types)."""
    try:
        from torch.utils._foreach_utils import _has_foreach_support
        foreach = _has_foreach_support(ts, device)
    except Exception:  # a PyTorch without it
        foreach = False
    if foreach:
        return list(torch._foreach_norm(ts, norm_type, dtype=dtype))
    return [torch.linalg.vector_norm(t, norm_type, dtype=dtype) for t in ts]


def _combine(norms: List[Tensor], norm_type: float, first_device: torch.device) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), norm_type)


def _spans_overlap(gs: List[Tensor]) -> bool:
    """Whether two of these tensors may share memory (one listed twice, two
    views of one storage that meet): each tensor's span, from its first
    element to its last, is compared; interleaved views count as sharing."""
    spans = []
    for g in gs:
        if g.numel() == 0:
            continue
        try:
            start = g.data_ptr()
        except RuntimeError:  # no storage (a wrapper subclass): PyTorch's own arithmetic
            return False
        last = sum((n - 1) * st for n, st in zip(g.shape, g.stride()))
        spans.append((start, start + (last + 1) * g.element_size()))
    spans.sort()
    end = 0
    for lo, hi in spans:
        if lo < end:
            return True
        end = max(end, hi)
    return False


def _apply_coef(grads: List[Tensor], max_norm: float, total_norm: Tensor, skip: bool,
                overlapping: bool = False) -> None:
    """PyTorch's clip_grads_with_norm_ arithmetic, grouped by device and dtype.
    A list that repeats a gradient (or holds overlapping ones: `overlapping`,
    or found so here on CUDA) is multiplied once for each time a tensor is
    listed, one tensor after the other, as PyTorch's loop over the list does:
    on CUDA one fused kernel would read and write the shared memory from two
    blocks at once."""
    clip_coef = max_norm / (total_norm + 1e-6)
    coef = torch.clamp(clip_coef, max=1.0)
    if skip:
        coef = torch.where(torch.isfinite(total_norm), coef, torch.ones_like(coef))
    for (device, _), gs in _group_by_device_dtype(grads).items():
        c = coef.to(device)
        if overlapping or (device.type == "cuda" and _spans_overlap(gs)):
            for g in gs:
                g.mul_(c)
        else:
            torch._foreach_mul_(gs, c)


def _is_overlap(e: Exception) -> bool:
    """Whether PyTorch's arithmetic takes the list instead: the library
    refused a list that repeats a gradient or holds overlapping ones (a
    plan's tensors must be disjoint; PyTorch takes such a list, and its
    operations process each entry in turn), or a gradient has no memory or
    has gaps (_Gapped)."""
    return isinstance(e, (_NotInMemory, _Gapped)) or (isinstance(e, _lib.GclipError)
                                                      and e.status == _lib.OVERLAP)


# what _is_overlap may find PyTorch's arithmetic takes
_TORCH_TAKES = (_lib.GclipError, _NotInMemory, _Gapped)


def _mark_norm(total: Tensor) -> Tensor:
    """Mark a total norm computed here (>= 0, or NaN/Inf) with its version, so
    that clip_grads_with_norm_ may hand it to the library on the device without
    reading it, for as long as nothing has written it in place."""
    try:
        total._gclip_norm_version = total._version
    except RuntimeError:  # an inference tensor has no version counter
        pass
    return total


def _library_takes_norm(total_norm: Tensor, tn: Tensor) -> bool:
    """Whether gclip_clip_grads_with_norm gives PyTorch's result for this CUDA
    norm: the library refuses a negative norm (where PyTorch flips the
    gradients' sign), so the value must be known not to be negative. `tn` is
    the norm on the gradients' device, only trusted when it is a norm computed
    by gclip and not written since (reading it would synchronize with the
    device). A CPU norm is read by the caller."""
    version = getattr(total_norm, "_gclip_norm_version", None)
    return version is not None and version == total_norm._version


def _raise_if_nonfinite(total_norm: Tensor, norm_type: float) -> None:
    if not bool(torch.isfinite(total_norm)):
        raise RuntimeError(_nonfinite_message(norm_type))


# ---- the drop-ins -----------------------------------------------------------------------

def _as_list(parameters, warn_empty_generator: bool, stacklevel: int = 5) -> list:
    """`parameters` as a list; the empty-generator warning points `stacklevel`
    frames up (the caller of a drop-in: _as_list, the drop-in, _one_call,
    torch.no_grad's wrapper, the caller)."""
    if isinstance(parameters, Tensor):
        return [parameters]
    is_generator = isinstance(parameters, types.GeneratorType)
    parameters = list(parameters)
    if warn_empty_generator and is_generator and len(parameters) == 0:
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.",
                      stacklevel=stacklevel)
    return parameters


def _check_nonfinite_arg(nonfinite: str) -> bool:
    if nonfinite not in ("propagate", "skip"):
        raise ValueError(f"gclip: nonfinite must be 'propagate' (PyTorch) or 'skip', got {nonfinite!r}")
    return nonfinite == "skip"


@torch.no_grad()
@_one_call
def clip_grad_norm_(parameters: _tensor_or_tensors, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: Optional[bool] = None, *,
                    fp32_norm: bool = False, nonfinite: str = "propagate",
                    process_group=None) -> Tensor:
    r"""Clip the gradient norm of an iterable of parameters, in place.

    Same arguments, defaults and return value as
    :func:`torch.nn.utils.clip_grad_norm_`: the total norm of the gradients
    (before clipping) as a 0-dim tensor on their device. ``foreach`` is
    accepted and has no effect (gclip always processes the list at once).

    Keyword-only extensions: ``fp32_norm=True`` returns a float32 norm exact
    to 1e-6 for float16/bfloat16 gradients and computes the coefficient in
    float32; ``nonfinite="skip"`` leaves every gradient untouched when the
    norm is NaN or Inf.

    Across ranks: DTensor gradients (FSDP2, tensor parallel) are reduced over
    their device mesh as PyTorch reduces them, and the norm returned is the
    global one, a replicated DTensor, bitwise identical on every rank.
    ``process_group=`` does the same for plain tensors sharded over that
    group (ZeRO style). See gclip.distributed.
    """
    if process_group is not None:
        try:  # a bad argument still joins the gather: the peers raise instead of waiting
            skip = _check_nonfinite_arg(nonfinite)
            max_norm, norm_type = float(max_norm), float(norm_type)
        except Exception as e:  # ValueError, TypeError, OverflowError, RuntimeError, ...
            params = _as_list(parameters, True)
            _distributed._refuse([p.grad for p in params if p.grad is not None], process_group, e)
        return _clip_distributed(parameters, max_norm, norm_type, error_if_nonfinite, fp32_norm,
                                 skip, process_group)
    params = parameters if type(parameters) in (list, tuple) else _as_list(parameters, True)
    try:
        skip = _check_nonfinite_arg(nonfinite)
        norm_type = float(norm_type)
        max_norm = float(max_norm)
    except Exception as e:  # DTensor gradients: join the mesh's gather, then raise
        _refuse_dtensors(params, True, e, norm_type=norm_type, fp32_norm=fp32_norm,
                         max_norm=max_norm)
    if _lib.takes_norm_type(norm_type) and max_norm >= 0:
        done, total, count = _scanned_call(
            params, True, fp32_norm,
            lambda entry, stream: (True, _mark_norm(_run_clip(entry, stream, max_norm, norm_type,
                                                              error_if_nonfinite, skip))),
            writes=True)
        if done:
            return total
        if count == 0:
            return torch.tensor(0.0)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    if _distributed.any_dtensor(grads):
        return _distributed.clip_grad_norm(grads, max_norm, norm_type, error_if_nonfinite,
                                           fp32_norm, skip)
    if torch.compiler.is_compiling():
        return torch.ops.gclip.clip_grad_norm_(grads, max_norm, norm_type, error_if_nonfinite,
                                                fp32_norm, skip)
    return _clip_grad_norm_impl(grads, max_norm, norm_type, error_if_nonfinite, fp32_norm, skip)


def _refuse_dtensors(items, from_params: bool, error: Exception, **options) -> None:
    """Raise `error`, after joining the gather of a DTensor mesh when the
    gradients are DTensors (their peers then raise instead of waiting).
    `options`: norm_type, fp32_norm, max_norm as given (they say which path
    the peers take)."""
    try:
        grads = [p.grad for p in items if p.grad is not None] if from_params else list(items)
        dtensors = bool(grads) and _distributed.any_dtensor(grads)
    except Exception:  # items that are not what they should be: nothing to join
        dtensors = False
    if not dtensors:
        raise error
    _distributed._refuse_on_mesh(grads, error, **options)


def _clip_distributed(parameters, max_norm, norm_type, error_if_nonfinite, fp32_norm, skip,
                      process_group):
    params = _as_list(parameters, True, stacklevel=6)
    grads = [p.grad for p in params if p.grad is not None]
    return _distributed.clip_grad_norm(grads, float(max_norm), float(norm_type),
                                       error_if_nonfinite, fp32_norm, skip, process_group)


def _run_clip(entry, stream, max_norm, norm_type, error_if_nonfinite, skip):
    plan = entry.plan
    policy = _lib.ERROR if error_if_nonfinite else (_lib.SKIP if skip else _lib.PROPAGATE)
    plan.run("clip_grad_norm", plan.options(max_norm, norm_type, 1e-6, 1.0, policy), stream)
    if error_if_nonfinite:
        st, _ = plan.get_result()
        if st == _lib.NONFINITE:
            raise RuntimeError(_nonfinite_message(norm_type))
        if st:
            raise _lib.error_for(st, "gclip_clip_grad_norm")
    return entry.norm_view.clone()


def _clip_grad_norm_impl(grads, max_norm, norm_type, error_if_nonfinite, fp32_norm, skip):
    _check_writable(grads)
    try:
        return _clip_grad_norm_disjoint(grads, max_norm, norm_type, error_if_nonfinite, fp32_norm,
                                        skip)
    except _TORCH_TAKES as e:  # raised before anything is written
        if not _is_overlap(e):
            raise
    # a repeated gradient counts in the norm and is scaled as often as it is
    # listed; gradients with gaps are scaled by PyTorch's own operations
    total = _get_total_norm_impl(grads, norm_type, error_if_nonfinite, fp32_norm)
    _apply_coef(grads, max_norm, total, skip, overlapping=True)
    return total


def _clip_grad_norm_disjoint(grads, max_norm, norm_type, error_if_nonfinite, fp32_norm, skip):
    dtypes = list(map(_get_dtype, grads))
    single = _single_device(grads)
    if (single is not None and _fast_dtypes(dtypes, fp32_norm) and _lib.takes_norm_type(norm_type)
            and max_norm >= 0):
        device, dev_index = single
        stream = _current_stream(dev_index)
        entry = _bind(grads, device, dev_index, stream, dtypes)
        total = _run_clip(entry, stream, max_norm, norm_type, error_if_nonfinite, skip)
        _written(grads)
        return _mark_norm(total)
    _validate(grads)
    total = _combine(_per_tensor_norms(grads, norm_type, fp32_norm), norm_type, grads[0].device)
    if error_if_nonfinite:
        _raise_if_nonfinite(total, norm_type)
    # CPU gradients of float32/float16/bfloat16 (a norm rounded to float16 or
    # bfloat16, or a norm type <= 0): PyTorch's coefficient, multiplied by
    # the library, which writes nothing when it is 1
    factor = _cpu_factor(single, dtypes, max_norm, total, skip)
    if factor is None or not _run_with_factor(_bind(grads, *single, 0, dtypes), 0, factor):
        _apply_coef(grads, max_norm, total, skip)
    else:
        _written(grads)
    return _mark_norm(total)


@torch.no_grad()
@_one_call
def get_total_norm(tensors: _tensor_or_tensors, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False, foreach: Optional[bool] = None, *,
                   fp32_norm: bool = False, process_group=None) -> Tensor:
    r"""The norm of an iterable of tensors, as :func:`torch.nn.utils.get_total_norm`.

    Takes the tensors themselves (the gradients), not parameters. Returns a
    0-dim tensor on the first tensor's device; ``torch.tensor(0.0)`` for an
    empty list. ``fp32_norm=True``: float32 result for float16/bfloat16 input.
    DTensors, and plain tensors sharded over ``process_group=``, give the
    global norm on every rank (see :func:`clip_grad_norm_`).
    """
    tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    if process_group is not None:
        try:  # a bad argument still joins the gather: the peers raise instead of waiting
            norm_type = float(norm_type)
        except Exception as e:  # ValueError, TypeError, OverflowError, RuntimeError, ...
            _distributed._refuse(tensors, process_group, e)
    try:
        norm_type = float(norm_type)
    except Exception as e:  # DTensors: join the mesh's gather, then raise
        _refuse_dtensors(tensors, False, e, norm_type=norm_type, fp32_norm=fp32_norm)
    if process_group is not None or (tensors and _distributed.any_dtensor(tensors)):
        return _distributed.total_norm(tensors, norm_type, error_if_nonfinite, fp32_norm,
                                       process_group)
    if not tensors:
        return torch.tensor(0.0)
    if torch.compiler.is_compiling():
        return torch.ops.gclip.get_total_norm(tensors, norm_type, error_if_nonfinite, fp32_norm)
    if _lib.takes_norm_type(norm_type):
        def run(entry, stream):
            plan = entry.plan
            plan.run("total_norm", plan.options(1.0, norm_type, 1e-6, 1.0, _lib.PROPAGATE), stream)
            return True, entry.norm_view.clone()

        done, total, _ = _scanned_call(tensors, False, fp32_norm, run, writes=False)
        if done:
            if error_if_nonfinite:
                _raise_if_nonfinite(total, norm_type)
            return _mark_norm(total)
    return _get_total_norm_impl(tensors, norm_type, error_if_nonfinite, fp32_norm)


def _get_total_norm_impl(tensors, norm_type, error_if_nonfinite, fp32_norm):
    try:
        dtypes = list(map(_get_dtype, tensors))
    except TypeError:
        i = next((k for k, t in enumerate(tensors) if not isinstance(t, Tensor)), None)
        if i is None:
            raise
        bad = tensors[i]
        msg = (f"gclip: tensor {i} of the list is "
               f"{'None' if bad is None else 'a ' + type(bad).__name__}; get_total_norm takes "
               "tensors (pass parameters' .grad without the None ones)")
        # the exception types of PyTorch's get_total_norm: it reads the first
        # item's device (AttributeError), then groups the list by device and
        # dtype (RuntimeError for a None, TypeError for any other object)
        raise (AttributeError if i == 0 else RuntimeError if bad is None else TypeError)(msg) from None
    single = _single_device(tensors)
    try:
        if single is not None and _fast_dtypes(dtypes, fp32_norm) and _lib.takes_norm_type(norm_type):
            device, dev_index = single
            stream = _current_stream(dev_index)
            entry = _bind(tensors, device, dev_index, stream, dtypes)
            plan = entry.plan
            plan.run("total_norm", plan.options(1.0, norm_type, 1e-6, 1.0, _lib.PROPAGATE), stream)
            total = entry.norm_view.clone()
        else:
            _validate(tensors)
            total = _combine(_per_tensor_norms(tensors, norm_type, fp32_norm), norm_type,
                             tensors[0].device)
    except _TORCH_TAKES as e:
        # a plan's tensors must be disjoint, but a norm only reads: PyTorch
        # counts a repeated or overlapping tensor as often as it is given, and
        # so do its own operations, used here for such a list (and for
        # tensors without memory, whose own operations they dispatch to, and
        # tensors with gaps)
        if not _is_overlap(e):
            raise
        _validate(tensors, gaps=True)
        total = _combine(_per_tensor_norms(tensors, norm_type, fp32_norm, torch_only=True),
                         norm_type, tensors[0].device)
    if error_if_nonfinite:
        _raise_if_nonfinite(total, norm_type)
    return _mark_norm(total)


@torch.no_grad()
@_one_call
def clip_grads_with_norm_(parameters: _tensor_or_tensors, max_norm: float, total_norm: Tensor,
                          foreach: Optional[bool] = None, *, nonfinite: str = "propagate") -> None:
    r"""Scale the gradients by ``min(1, max_norm / (total_norm + 1e-6))``, in
    place, as :func:`torch.nn.utils.clip_grads_with_norm_`. ``total_norm`` is
    a tensor (e.g. from :func:`get_total_norm`). Returns None.

    A CUDA ``total_norm`` returned by gclip's :func:`get_total_norm` or
    :func:`clip_grad_norm_`, and not written since, is read on the device in
    one fused step, with no host synchronization; any other CUDA tensor (which
    could hold a negative value, where PyTorch flips the gradients' sign) takes
    PyTorch's arithmetic, also without synchronization. A CPU ``total_norm``
    is read on the host; with CPU gradients, float16 and bfloat16 ones
    included, PyTorch's coefficient computed in its dtype (float32, float16
    or bfloat16) multiplies them in one library call."""
    skip = _check_nonfinite_arg(nonfinite)
    params = parameters if type(parameters) in (list, tuple) else _as_list(parameters, False)
    max_norm = float(max_norm)
    # one library call: float32 gradients and a float32 norm (the library
    # computes the coefficient), or CPU gradients of float32/float16/bfloat16
    # and a CPU norm (PyTorch's coefficient, _host_factor)
    with_norm = (_HAS_WITH_NORM and max_norm >= 0 and isinstance(total_norm, Tensor)
                 and total_norm.dim() == 0 and total_norm.dtype is torch.float32
                 and not _distributed.is_dtensor(total_norm))
    host = _host_norm(total_norm)
    if with_norm or host:
        def run(entry, stream):
            if with_norm and entry.all_f32 and _run_with_norm(entry, stream, max_norm, total_norm,
                                                              skip):
                return True, None
            factor = _host_factor(max_norm, total_norm, skip) \
                if host and entry.norm_view.device.type == "cpu" else None
            return factor is not None and _run_with_factor(entry, stream, factor), None

        done, _, count = _scanned_call(params, True, host, run, writes=True)
        if done or count == 0:
            return None
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    _check_total_norm(total_norm)
    if torch.compiler.is_compiling():
        torch.ops.gclip.clip_grads_with_norm_(grads, max_norm, total_norm, skip)
        return None
    _clip_grads_with_norm_impl(grads, max_norm, total_norm, skip)
    return None


def _check_total_norm(total_norm) -> None:
    """What PyTorch's clip_grads_with_norm_ refuses, refused before anything
    is written (PyTorch's default path raises only after scaling the
    gradients of its first groups)."""
    if not isinstance(total_norm, Tensor):
        raise TypeError(f"gclip: total_norm must be a tensor (as get_total_norm returns), "
                        f"got {type(total_norm).__name__}")
    if total_norm.dim() != 0:
        raise RuntimeError(f"scalar tensor expected to be 0 dim but it has {total_norm.dim()} "
                           f"dimensions and {total_norm.numel()} elements.")


_HAS_WITH_NORM = _lib.has_function("clip_grads_with_norm") and not _lib.LEGACY


def _norm_arg(total_norm: Tensor, device: torch.device):
    """How gclip_clip_grads_with_norm takes a float32 0-dim total_norm for
    gradients on `device`: (value, None) for a norm on the CPU, read on the
    host and passed by value whatever the gradients' device; (0.0, the norm
    on their device) for a CUDA norm the library may read (_library_takes_norm);
    None where PyTorch's arithmetic must take it (a negative norm, where
    PyTorch flips the gradients' sign)."""
    if total_norm.device.type == "cpu":
        value = float(total_norm)
        return None if value < 0.0 else (value, None)
    tn = total_norm if total_norm.device == device else total_norm.to(device)
    tn = tn.contiguous()
    return (0.0, tn) if _library_takes_norm(total_norm, tn) else None


def _run_with_norm(entry: _PlanEntry, stream: int, max_norm: float, total_norm: Tensor,
                   skip: bool) -> bool:
    """gclip_clip_grads_with_norm on a bound plan; False, with nothing
    written, where the library or the norm leaves it to PyTorch's arithmetic."""
    arg = _norm_arg(total_norm, entry.norm_view.device)
    if arg is None:
        return False
    value, tn = arg
    plan = entry.plan
    opts = plan.options(max_norm, 2.0, 1e-6, 1.0, _lib.SKIP if skip else _lib.PROPAGATE)
    try:
        plan.clip_grads_with_norm(opts, value, 0 if tn is None else tn.data_ptr(), stream)
    except _lib.NotSupportedError:
        return False
    return True


def _host_factor(max_norm: float, total_norm, skip: bool) -> Optional[float]:
    """The factor PyTorch's clip_grads_with_norm_ multiplies CPU gradients by,
    for a 0-dim CPU `total_norm` of float32, float16 or bfloat16: its clamped
    coefficient, computed in the norm's dtype by PyTorch's own operations,
    which its CPU multiply uses as that float32 number whatever the
    gradients' dtype (a 0-dim gradient too: the two 0-dim operands promote to
    float32 at least). None where it is not in [0, 1] (a NaN norm, a negative
    norm or bound: PyTorch's arithmetic takes those) or the norm is not such
    a tensor (a float64 coefficient multiplies a 0-dim gradient in double,
    and any other gradient rounded to float32: PyTorch's arithmetic takes it)."""
    if not _host_norm(total_norm):
        return None
    if skip and not math.isfinite(float(total_norm)):
        return 1.0
    coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    factor = float(coef.to(torch.float32))
    # -0 (a bound of -0.0) flips the sign of PyTorch's zeros: its arithmetic takes it
    return factor if 0.0 <= factor <= 1.0 and math.copysign(1.0, factor) > 0 else None


def _cpu_factor(single, dtypes, max_norm: float, total_norm, skip: bool) -> Optional[float]:
    """_host_factor for gradients on one CPU device (`single`, as
    _single_device gives it), all float32, float16 or bfloat16; None for
    any other list."""
    if single is None or single[0].type != "cpu" or not _fast_dtypes(dtypes, True):
        return None
    return _host_factor(max_norm, total_norm, skip)


_NORM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _host_norm(total_norm) -> bool:
    """Whether _host_factor reads this total_norm: a plain 0-dim CPU tensor
    of float32, float16 or bfloat16."""
    return (_HAS_WITH_NORM and type(total_norm) is Tensor and total_norm.dim() == 0
            and total_norm.device.type == "cpu" and total_norm.dtype in _NORM_DTYPES)


def _run_with_factor(entry: _PlanEntry, stream: int, factor: float) -> bool:
    """Every gradient of a CPU plan multiplied by `factor` (one rounding per
    element, to its dtype, as PyTorch's CPU multiply by a 0-dim tensor rounds
    it), nothing written when it is 1: gclip_clip_grads_with_norm with the
    norm 1, eps 0 and max_norm `factor`, whose coefficient factor * (1 / 1)
    is `factor` itself. False, with nothing written, for a plan on another
    device: a CUDA multiply's rounding of the coefficient is PyTorch's
    arithmetic's to give."""
    if entry.norm_view.device.type != "cpu":
        return False
    plan = entry.plan
    opts = plan.options(factor, 2.0, 0.0, 1.0, _lib.PROPAGATE)
    try:
        plan.clip_grads_with_norm(opts, 1.0, 0, stream)
    except _lib.NotSupportedError:
        return False
    return True


def _clip_grads_with_norm_impl(grads, max_norm, total_norm, skip):
    _check_writable(grads)
    overlapping = False
    dtypes = list(map(_get_dtype, grads))
    # DTensors (FSDP2: get_total_norm, then this) take PyTorch's DTensor arithmetic
    single = None if _distributed.any_dtensor(grads) or _distributed.is_dtensor(total_norm) \
        else _single_device(grads)
    if (_HAS_WITH_NORM and single is not None and _fast_dtypes(dtypes, False) and max_norm >= 0
            and total_norm.dtype is torch.float32 and total_norm.numel() == 1):
        device, dev_index = single
        stream = _current_stream(dev_index)
        entry = _bind_disjoint(grads, device, dev_index, stream, dtypes)
        overlapping = entry is None
        if entry is not None and _run_with_norm(entry, stream, max_norm, total_norm, skip):
            _written(grads)
            return
    factor = None if overlapping else _cpu_factor(single, dtypes, max_norm, total_norm, skip)
    if factor is not None:
        device, dev_index = single
        entry = _bind_disjoint(grads, device, dev_index, 0, dtypes)
        overlapping = entry is None
        if entry is not None and _run_with_factor(entry, 0, factor):
            _written(grads)
            return
    _validate(grads, gaps=True)
    _apply_coef(grads, max_norm, total_norm, skip, overlapping)


@torch.no_grad()
@_one_call
def clip_grad_value_(parameters: _tensor_or_tensors, clip_value: float,
                     foreach: Optional[bool] = None) -> None:
    r"""Clamp the gradients to ``[-clip_value, clip_value]`` in place, as
    :func:`torch.nn.utils.clip_grad_value_` (NaN stays NaN). Returns None."""
    params = parameters if type(parameters) in (list, tuple) else _as_list(parameters, False)
    clip_value = float(clip_value)
    # a bound that none of the gradients' dtypes refuses (_check_clip_value):
    # float32, float16 and bfloat16 up to float16's largest and for +inf,
    # float32 alone up to its own largest
    if 0.0 <= clip_value <= _F32_MAX or clip_value == math.inf:
        done, _, count = _scanned_call(
            params, True, clip_value <= 65504.0 or clip_value == math.inf,
            lambda entry, stream: (True, entry.plan.clip_grad_value(clip_value, stream)),
            writes=True)
        if done or count == 0:
            return None
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    if torch.compiler.is_compiling():
        torch.ops.gclip.clip_grad_value_(grads, clip_value)
        return None
    _clip_grad_value_impl(grads, clip_value)
    return None


_F32_MAX = float(torch.finfo(torch.float32).max)


def _check_clip_value(dtypes, clip_value: float) -> None:
    """PyTorch's clamp refuses a finite bound past a gradient dtype's range;
    so does gclip, before anything is written (PyTorch's default path raises
    only after clamping the gradients of its first groups)."""
    if not math.isfinite(clip_value) or abs(clip_value) <= 65504.0:  # float16's largest
        return
    for dtype in set(dtypes):
        if dtype.is_floating_point and abs(clip_value) > torch.finfo(dtype).max:
            torch.zeros(1, dtype=dtype).clamp_(-clip_value, clip_value)  # PyTorch's own error
            raise RuntimeError(f"value cannot be converted to type {dtype} without overflow")


def _clip_grad_value_impl(grads, clip_value):
    dtypes = list(map(_get_dtype, grads))
    _check_clip_value(dtypes, clip_value)
    _check_writable(grads)
    single = None if _distributed.any_dtensor(grads) else _single_device(grads)
    # float64 too where the library takes the bound as a double: float64
    # gradients are then clamped to it as PyTorch clamps them
    ours = _DTYPE_CODES if _core._HAS_VALUE_F64 else _FAST_DTYPES
    if single is not None and all(d in ours for d in set(dtypes)) and clip_value >= 0:
        device, dev_index = single
        stream = _current_stream(dev_index)
        entry = _bind_disjoint(grads, device, dev_index, stream, dtypes)
        if entry is not None:
            entry.plan.clip_grad_value(clip_value, stream)
            _written(grads)
            return
    # negative or NaN clip_value, several devices, a repeated gradient
    # (clamping twice is clamping once), gradients with gaps, DTensors:
    # PyTorch's own clamps
    _validate(grads, gaps=True)
    for gs in _group_by_device_dtype(grads).values():
        torch._foreach_clamp_min_(gs, -clip_value)
        torch._foreach_clamp_max_(gs, clip_value)


# ---- the native API for parameters ----------------------------------------------------------

class Clipper(_core.Clipper):
    """gclip.Clipper for PyTorch: takes parameters (their .grad; parameters
    without a gradient are skipped) or tensors, queues work on the current CUDA
    stream unless `stream` is given, and returns the device result and
    per-tensor norms as tensors.

        clipper = gclip.torch.Clipper(max_norm=1.0)          # skip on NaN/Inf
        clipper.clip_grad_norm(model.parameters(), inv_scale=1 / scaler.get_scale())
        res = clipper.device_result()                        # tensors, no sync
        optimizer_step_unless(res["nonfinite"])
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_plans", 32)  # a model's parameter sets: more than NumPy code has
        super().__init__(*args, **kwargs)
        # this Clipper's own plans: a pending factor, the result slot and the
        # bound pointers are never touched by the drop-ins or another Clipper
        self._plan_cache = _PlanCache(self._max_plans)

    def _describe(self, tensors, stream):
        grads = _grads_of(tensors)
        _validate(grads)
        return [describe_tensor(g, i) for i, g in enumerate(grads)]

    def _bind(self, tensors, stream, writable):
        grads = _grads_of(tensors)
        if not grads:
            raise ValueError("gclip: no gradients to clip")
        single = _single_device(grads)
        if single is None:
            raise ValueError("gclip: the gradients of one call must be on one device")
        device, dev_index = single
        # an inference tensor may be written only inside inference mode
        may_write = torch.is_inference_mode_enabled() or not any(map(Tensor.is_inference, grads))
        if writable and not may_write:
            _check_writable(grads)  # raises PyTorch's error, naming the tensor
        if stream == 0 and dev_index >= 0:
            stream = _current_stream(dev_index)
        entry = _bind(grads, device, dev_index, stream, cache=self._plan_cache)
        self._binding = grads  # held until the operation returns (_bind_for_op)
        self._bound_writable = may_write  # what apply_clip_factor() with no tensors writes
        _use_threads(entry, self.num_threads)
        if writable:
            _written(grads)
        self.plan = entry.plan
        self._entry = entry
        self._device = device
        return entry.plan

    def _op_stream(self, plan, stream):
        # the stream _bind rebound on: the current CUDA stream when none is given
        return _current_stream(plan.device) if stream == 0 else stream

    @_core._serialized
    def device_result(self) -> dict:
        """The last operation's result slot as tensors on its device, read with
        no host synchronization: float32 ``norm``, ``coef``, ``scale``, int32
        ``nonfinite`` (and ``status``, ``op`` with a 0.2 library). They are
        views: the next operation on the same plan overwrites them."""
        view = _core._body(_core.Clipper.device_result)(self)
        out = {k: torch.from_dlpack(getattr(view, k)) for k in ("norm", "coef", "scale", "nonfinite")}
        if not _lib.LEGACY:
            out["status"] = torch.from_dlpack(view.status)
            out["op"] = torch.from_dlpack(view.op)
        return out

    @_core._serialized
    def tensor_norms(self, parameters, *, inv_scale=None, stream=None) -> Tensor:
        """Each gradient's own norm (float32, on the gradients' device)."""
        grads = _grads_of(parameters)
        if not grads:
            raise ValueError("gclip: no gradients to clip")
        out = torch.empty(len(grads), dtype=torch.float32, device=grads[0].device)
        _core._body(_core.Clipper.total_norm)(self, grads, inv_scale=inv_scale, tensor_norms=out,
                                              stream=stream)
        return out


class _Picked(list):
    """Gradients already picked by _grads_and_owners: taken as they are when
    they come back to it. A gradient can require grad itself (a backward
    with create_graph=True), and picked again it would read as a parameter."""


def _grads_and_owners(tensors):
    """The gradients of parameters (their .grad, None skipped) or tensors
    (themselves), and the identities of the parameters they belong to (None
    when some gradient was given as a tensor of its own, whose identity says
    nothing from one step to the next). A tensor that requires grad, leaf or
    not, is a parameter, as PyTorch's clip_grad_norm_ reads it: its values
    are never written."""
    if isinstance(tensors, _Picked):
        return tensors, None
    items = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    out, owners = [], []
    for t in items:
        if isinstance(t, torch.nn.Parameter) or t.requires_grad:
            if t.grad is not None:
                out.append(t.grad)
                owners.append(id(t))
        else:
            out.append(t)
    return _Picked(out), (tuple(owners) if len(owners) == len(out) else None)


def _grads_of(tensors) -> List[Tensor]:
    return _grads_and_owners(tensors)[0]


from . import _torch_ops  # noqa: E402,F401  (registers torch.ops.gclip.*)
from . import distributed as _distributed  # noqa: E402  (DTensor and process_group= paths)
from .adaptive import (  # noqa: E402,F401  (adaptive clipping, state on the device)
    AdaGC, QuantileClip, SpikeSkip, ZClip, adaptive_clip_grad,
    TorchAdaptiveClipper as AdaptiveClipper,
)

__all__ += ["ZClip", "QuantileClip", "AdaGC", "SpikeSkip", "AdaptiveClipper", "adaptive_clip_grad"]
