"""Clipping across ranks with torch.distributed: DTensor gradients on 1-D and
2-D device meshes, and plain sharded tensors with process_group=.

Each world size (2, 3, 4) is one torch.multiprocessing spawn with gloo on the
CPU that runs every scenario; each rank records its checks and its norms'
bits, and the tests below read those records. Data is seeded and never all
zero; the same full tensors are built on every rank.
"""

import hashlib
import json
import math
import os
import struct
import traceback
import warnings
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)
pytest.importorskip("torch.distributed.tensor")

import torch.multiprocessing as mp  # noqa: E402
from torch.distributed.device_mesh import DeviceMesh  # noqa: E402
from torch.distributed.tensor import (  # noqa: E402
    DTensor, Partial, Replicate, Shard, distribute_tensor, init_device_mesh,
)

import gclip  # noqa: E402
import gclip.torch as gt  # noqa: E402

WORLD_SIZES = (2, 3, 4)
MAX_NORM = 0.5


# ---- helpers used inside the ranks ---------------------------------------------------------

def _bits(x: float) -> str:
    return struct.pack("<f", float(x)).hex()


def _ref_norm(fulls, p: float) -> float:
    """The norm of the full tensors, in float64 (math.fsum for p = 1, 2, 3)."""
    flat = torch.cat([f.reshape(-1).double() for f in fulls]) if fulls else torch.zeros(0)
    if math.isinf(p):
        return float(flat.abs().max()) if flat.numel() else 0.0
    terms = (flat.abs() ** p).tolist()
    return math.fsum(terms) ** (1.0 / p)


def _maxdiff(a, b) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _full(shape, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).float()


def _params_like(fulls_and_placements, mesh):
    """(torch params, gclip params): DTensor parameters with DTensor gradients."""
    out = ([], [])
    for full, placements in fulls_and_placements:
        for side in out:
            p = torch.nn.Parameter(distribute_tensor(torch.zeros_like(full), mesh, placements))
            if any(isinstance(pl, Partial) for pl in placements):
                p.grad = _partial_dtensor(full, mesh, placements)
            else:
                p.grad = distribute_tensor(full.clone(), mesh, placements)
            side.append(p)
    return out


def _partial_dtensor(full, mesh, placements):
    """A DTensor whose Partial dimensions hold exact pieces of `full`: element
    i goes to coordinate (i mod size); the sum is `full` bit for bit."""
    shard_pl = [pl if not isinstance(pl, Partial) else Replicate() for pl in placements]
    local = distribute_tensor(full.clone(), mesh, shard_pl).to_local().clone()
    coord = mesh.get_coordinate()
    idx = torch.arange(local.numel()).reshape(local.shape)
    for d, pl in enumerate(placements):
        if isinstance(pl, Partial):
            local = torch.where(idx % mesh.size(d) == coord[d], local, torch.zeros_like(local))
    return DTensor.from_local(local, mesh, placements, run_check=False)


class _Recorder:
    def __init__(self, rank):
        self.rank = rank
        self.checks = {}
        self.bits = {}
        self.notes = {}  # check name -> what the installed PyTorch did otherwise

    def note(self, name, text):
        texts = self.notes.setdefault(name, [])
        if text not in texts:
            texts.append(text)

    def check(self, name, ok, detail=""):
        prev = self.checks.get(name)
        if prev is not None and not prev[0]:
            return
        self.checks[name] = (bool(ok), str(detail))

    def close(self, name, got, want, rtol, detail=""):
        ok = (math.isnan(got) and math.isnan(want)) or abs(got - want) <= rtol * max(abs(want), 1e-30)
        self.check(name, ok, f"{detail} got {got!r} want {want!r} (rtol {rtol})")


def _check_clipped_against_torch(rec, name, i, placements, g_full, t_full, want):
    """gclip's clipped gradient `g_full` against torch.nn.utils.clip_grad_norm_'s
    `t_full` on the same DTensors, where torch's agrees with the float64
    reference `want`. Where the installed PyTorch's does not (2.11 leaves a
    Partial gradient unclipped), that is noted with its version and gclip's
    is held to the reference instead: the check fails when gclip disagrees
    with the reference, or with a torch that agrees with the reference."""
    if torch.allclose(t_full.double(), want, rtol=1e-5, atol=1e-7):
        rec.check(name, torch.allclose(g_full, t_full, rtol=1e-5, atol=1e-7),
                  f"tensor {i}: max diff {_maxdiff(g_full, t_full)}")
        return
    rec.note(name, f"torch {torch.__version__}: clip_grad_norm_ gave tensor {i} {placements} a "
                   f"max diff of {_maxdiff(t_full.double(), want):.6g} from the float64 "
                   "reference; gclip's gradient was checked against the reference instead")
    rec.check(name, torch.allclose(g_full.double(), want, rtol=2e-6, atol=1e-9),
              f"tensor {i}: max diff {_maxdiff(g_full.double(), want)} from the reference "
              f"(torch {torch.__version__}'s differs from the reference too)")


def _all_bits_equal(rec, name, value):
    """Record whether `value` (a float32) has the same bits on every rank."""
    mine = _bits(value)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    rec.check(name, len(set(everyone)) == 1, f"bits per rank {everyone}")
    rec.bits.setdefault(name, []).append(mine)


def _factors_applied(before, after):
    """The float32 factors s near after / before with after == before * s bit
    for bit (float32 products), as sorted hex strings: the factors that
    account for what a rank did to its piece (None for a piece with no
    nonzero element, which tells nothing)."""
    b, a = before.reshape(-1).float(), after.reshape(-1).float()
    if b.numel() == 0 or not bool(b.abs().max() > 0):
        return None
    j = int(b.abs().argmax())
    s = torch.tensor(float(a[j]) / float(b[j]), dtype=torch.float32)
    found, down, up = [s], s, s
    for _ in range(4):
        down = torch.nextafter(down, torch.tensor(-math.inf))
        up = torch.nextafter(up, torch.tensor(math.inf))
        found += [down, up]
    return sorted(_bits(c) for c in found
                  if torch.equal((b * c).view(torch.int32), a.view(torch.int32)))


def _one_factor_on_every_rank(rec, name, before, after):
    """Record whether every rank's piece is its piece before times one float32
    factor, the same on every rank (a gathered tensor could not tell: every
    rank would gather the same bytes whatever each applied)."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, _factors_applied(before, after))
    told = [set(f) for f in everyone if f is not None]
    rec.check(name, bool(told) and all(told) and bool(set.intersection(*told)),
              f"factors per rank {everyone}")


def _as_float(norm):
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm)


# ---- the scenarios ---------------------------------------------------------------------------

def _scenario_1d(rec, ws, rank):
    mesh = init_device_mesh("cpu", (ws,))
    gen = torch.Generator().manual_seed(1234)
    spec = [
        (_full((13, 7), gen), [Shard(0)]),
        (_full((12, 5), gen, 2.0), [Shard(0)]),
        (_full((11,), gen, 0.5), [Replicate()]),
        (_full((6, 10), gen), [Shard(1)]),
        (_full((5, 4), gen, 3.0), [Partial()]),
    ]
    fulls = [f for f, _ in spec]
    ref = _ref_norm(fulls, 2.0)
    tparams, gparams = _params_like(spec, mesh)

    for p in (2.0, 1.0, math.inf, 3.0):
        tn = torch.nn.utils.get_total_norm([q.grad for q in tparams], p)
        gn = gt.get_total_norm([q.grad for q in gparams], p)
        rec.check("1d_total_norm_is_replicated_dtensor",
                  isinstance(gn, DTensor) and all(pl.is_replicate() for pl in gn.placements),
                  f"{type(gn)}")
        rec.close("1d_total_norm_matches_torch", _as_float(gn), _as_float(tn), 2e-6, f"p={p}")
        rec.close("1d_total_norm_matches_reference", _as_float(gn), _ref_norm(fulls, p), 1e-6,
                  f"p={p}")
        _all_bits_equal(rec, "1d_total_norm_bitwise_across_ranks", gn.to_local())

    tn = torch.nn.utils.clip_grad_norm_(tparams, MAX_NORM)
    before = [gp.grad.to_local().clone() for gp in gparams]
    gn = gt.clip_grad_norm_(gparams, MAX_NORM)
    rec.close("1d_clip_norm_matches_torch", _as_float(gn), _as_float(tn), 2e-6)
    rec.close("1d_clip_norm_matches_reference", _as_float(gn), ref, 1e-6)
    _all_bits_equal(rec, "1d_clip_norm_bitwise_across_ranks", gn.to_local())
    coef = MAX_NORM / (ref + 1e-6)
    for i, (tp, gp) in enumerate(zip(tparams, gparams)):
        g_full = gp.grad.full_tensor()
        t_full = tp.grad.full_tensor()
        want = fulls[i].double() * coef
        _check_clipped_against_torch(rec, "1d_clipped_grads_match_torch", i, spec[i][1],
                                     g_full, t_full, want)
        rec.check("1d_clipped_grads_match_reference",
                  torch.allclose(g_full.double(), want, rtol=2e-6, atol=1e-9),
                  f"tensor {i}: max diff {_maxdiff(g_full.double(), want)}")
        _one_factor_on_every_rank(rec, "1d_clipped_grads_bitwise_across_ranks", before[i],
                                  gp.grad.to_local())

    # a shard that is empty on some ranks (3 rows over 4 ranks); PyTorch's
    # _foreach_norm rejects p = inf on an empty tensor, so only the reference
    small = _full((3, 5), gen, 2.0)
    dts = [distribute_tensor(small.clone(), mesh, [Shard(0)]),
           distribute_tensor(fulls[0].clone(), mesh, [Shard(0)])]
    for p in (2.0, math.inf):
        gn = gt.get_total_norm(dts, p)
        rec.close("1d_empty_shard_matches_reference", _as_float(gn),
                  _ref_norm([small, fulls[0]], p), 1e-6, f"p={p}")

    # replicated tensors count once
    rep_full = _full((17, 3), gen)
    rep = distribute_tensor(rep_full.clone(), mesh, [Replicate()])
    gn = _as_float(gt.get_total_norm([rep]))
    one = _ref_norm([rep_full], 2.0)
    rec.close("replicated_counted_once", gn, one, 1e-6)
    rec.check("replicated_counted_once", abs(gn - math.sqrt(ws) * one) > 1e-3 * one,
              "the norm equals the norm counted on every rank")
    rec.close("replicated_counted_once",
              _as_float(torch.nn.utils.get_total_norm([rep])), gn, 2e-6, "torch")


def _scenario_2d(rec, ws, rank):
    if ws != 4:
        return
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    gen = torch.Generator().manual_seed(99)
    spec = [
        (_full((8, 6), gen), [Shard(0), Shard(1)]),
        (_full((7, 5), gen, 2.0), [Shard(0), Replicate()]),
        (_full((9,), gen, 0.25), [Replicate(), Shard(0)]),
        (_full((4, 3), gen), [Replicate(), Replicate()]),
        (_full((6, 2), gen, 1.5), [Shard(0), Partial()]),
    ]
    fulls = [f for f, _ in spec]
    tparams, gparams = _params_like(spec, mesh)
    for p in (2.0, math.inf):
        tn = torch.nn.utils.get_total_norm([q.grad for q in tparams], p)
        gn = gt.get_total_norm([q.grad for q in gparams], p)
        rec.close("2d_total_norm_matches_torch", _as_float(gn), _as_float(tn), 2e-6, f"p={p}")
        rec.close("2d_total_norm_matches_reference", _as_float(gn), _ref_norm(fulls, p), 1e-6,
                  f"p={p}")
        _all_bits_equal(rec, "2d_bitwise_across_ranks", gn.to_local())
    tn = torch.nn.utils.clip_grad_norm_(tparams, MAX_NORM)
    gn = gt.clip_grad_norm_(gparams, MAX_NORM)
    rec.close("2d_clip_matches_torch", _as_float(gn), _as_float(tn), 2e-6)
    rec.close("2d_clip_matches_reference", _as_float(gn), _ref_norm(fulls, 2.0), 1e-6)
    _all_bits_equal(rec, "2d_bitwise_across_ranks", gn.to_local())
    coef = MAX_NORM / (_ref_norm(fulls, 2.0) + 1e-6)
    for i, (tp, gp) in enumerate(zip(tparams, gparams)):
        g_full, t_full = gp.grad.full_tensor(), tp.grad.full_tensor()
        _check_clipped_against_torch(rec, "2d_clip_matches_torch", i, spec[i][1], g_full, t_full,
                                     fulls[i].double() * coef)
        rec.check("2d_clip_matches_reference",
                  torch.allclose(g_full.double(), fulls[i].double() * coef, rtol=2e-6, atol=1e-9),
                  f"tensor {i}: max diff {_maxdiff(g_full.double(), fulls[i].double() * coef)}")


def _scenario_nonfinite(rec, ws, rank):
    mesh = init_device_mesh("cpu", (ws,))
    gen = torch.Generator().manual_seed(7)
    for bad in (math.nan, math.inf):
        full = _full((4 * ws, 3), gen)
        full[-1, 1] = bad  # on the last rank only
        other = _full((5,), gen)
        spec = [(full, [Shard(0)]), (other, [Replicate()])]
        name = "nan" if math.isnan(bad) else "inf"

        # default: PyTorch's semantics, on every rank
        tparams, gparams = _params_like(spec, mesh)
        tn = torch.nn.utils.clip_grad_norm_(tparams, MAX_NORM)
        gn = gt.clip_grad_norm_(gparams, MAX_NORM)
        g_norm, t_norm = float(gn.to_local()), float(tn.full_tensor())
        rec.check(f"{name}_propagate_every_rank",
                  (math.isnan(g_norm) and math.isnan(t_norm)) or g_norm == t_norm,
                  f"gclip {g_norm} torch {t_norm}")
        for tp, gp in zip(tparams, gparams):
            gl, tl = gp.grad.to_local(), tp.grad.to_local()
            rec.check(f"{name}_propagate_every_rank", torch.equal(gl.isnan(), tl.isnan()) and
                      torch.equal(torch.nan_to_num(gl), torch.nan_to_num(tl)),
                      f"rank {rank}: local gradients differ from torch's")

        # skip: nothing written on any rank, the norm still says what happened
        _, gparams = _params_like(spec, mesh)
        before = [gp.grad.to_local().clone() for gp in gparams]
        gn = gt.clip_grad_norm_(gparams, MAX_NORM, nonfinite="skip")
        g_norm = float(gn.to_local())
        rec.check(f"{name}_skip_every_rank", not math.isfinite(g_norm), f"norm {g_norm}")
        for b, gp in zip(before, gparams):
            rec.check(f"{name}_skip_every_rank", torch.equal(b.view(torch.int32),
                                                            gp.grad.to_local().view(torch.int32)),
                      f"rank {rank}: a gradient was written under nonfinite='skip'")

        # error_if_nonfinite raises on every rank and writes nothing
        _, gparams = _params_like(spec, mesh)
        before = [gp.grad.to_local().clone() for gp in gparams]
        try:
            gt.clip_grad_norm_(gparams, MAX_NORM, error_if_nonfinite=True)
            rec.check(f"{name}_error_every_rank", False, "no exception")
        except RuntimeError as e:
            rec.check(f"{name}_error_every_rank", "non-finite" in str(e), str(e))
        for b, gp in zip(before, gparams):
            rec.check(f"{name}_error_every_rank", torch.equal(b.view(torch.int32),
                                                             gp.grad.to_local().view(torch.int32)),
                      "a gradient was written")


def _zero_shards(fulls, rank, ws):
    """ZeRO-style flat shards: each full tensor flattened, split in ws chunks."""
    return [torch.tensor_split(f.reshape(-1), ws)[rank].clone() for f in fulls]


def _scenario_process_group(rec, ws, rank):
    gen = torch.Generator().manual_seed(2024)
    fulls = [_full((31,), gen), _full((2,), gen, 4.0), _full((10, 10), gen, 0.1)]
    group = dist.group.WORLD
    for p in (2.0, 1.0, math.inf):
        shards = _zero_shards(fulls, rank, ws)
        gn = gt.get_total_norm(shards, p, process_group=group)
        rec.check("pg_returns_plain_float32", type(gn) is torch.Tensor and gn.dtype == torch.float32,
                  f"{type(gn)} {gn.dtype}")
        rec.close("pg_total_norm_matches_reference", float(gn), _ref_norm(fulls, p), 1e-6, f"p={p}")
        _all_bits_equal(rec, "pg_bitwise_across_ranks", float(gn))
        local = gt.get_total_norm(shards, p)
        rec.close("pg_default_none_is_local", float(local), _ref_norm(shards, p), 1e-6, f"p={p}")

    params = []
    for s in _zero_shards(fulls, rank, ws):
        q = torch.nn.Parameter(torch.zeros_like(s))
        q.grad = s
        params.append(q)
    ref = _ref_norm(fulls, 2.0)
    gn = gt.clip_grad_norm_(params, MAX_NORM, process_group=group)
    rec.close("pg_clip_matches_reference", float(gn), ref, 1e-6)
    _all_bits_equal(rec, "pg_bitwise_across_ranks", float(gn))
    coef = MAX_NORM / (ref + 1e-6)
    for q, s in zip(params, _zero_shards(fulls, rank, ws)):
        rec.check("pg_clip_matches_reference",
                  torch.allclose(q.grad.double(), s.double() * coef, rtol=2e-6, atol=1e-9),
                  f"max diff {_maxdiff(q.grad.double(), s.double() * coef)}")

    # a rank that holds nothing still takes part
    shards = _zero_shards(fulls, rank, ws) if rank != ws - 1 else []
    counted = [f for f in fulls]
    if ws > 1:
        last = [torch.tensor_split(f.reshape(-1), ws)[ws - 1] for f in fulls]
        want = math.sqrt(max(_ref_norm(fulls, 2.0) ** 2 - _ref_norm(last, 2.0) ** 2, 0.0))
    else:
        want = _ref_norm(counted, 2.0)
    gn = gt.get_total_norm(shards, process_group=group)
    rec.close("pg_rank_without_tensors", float(gn), want, 1e-5)
    _all_bits_equal(rec, "pg_rank_without_tensors", float(gn))

    # a sub-group: ranks {0, 1} and the rest, each its own reduction
    if ws >= 3:
        lo, hi = list(range(2)), list(range(2, ws))
        g_lo, g_hi = dist.new_group(lo), dist.new_group(hi)
        mine = g_lo if rank in lo else g_hi
        members = lo if rank in lo else hi
        my_fulls = [_full((9, 4), torch.Generator().manual_seed(50 + len(members)))]
        shard = torch.tensor_split(my_fulls[0].reshape(-1), len(members))[members.index(rank)]
        gn = gt.get_total_norm([shard.clone()], process_group=mine)
        rec.close("pg_subgroup", float(gn), _ref_norm(my_fulls, 2.0), 1e-6)


def _scenario_mismatch(rec, ws, rank):
    mesh = init_device_mesh("cpu", (ws,))
    gen = torch.Generator().manual_seed(5)
    spec = [(_full((3 * ws, 4), gen), [Shard(0)])]
    _, gparams = _params_like(spec, mesh)
    before = gparams[0].grad.to_local().clone()
    norm_type = 1.0 if rank == 0 else 2.0
    for name, call in (
        ("clip", lambda: gt.clip_grad_norm_(gparams, MAX_NORM, norm_type=norm_type)),
        ("total", lambda: gt.get_total_norm([g.grad for g in gparams], norm_type)),
        ("policy", lambda: gt.clip_grad_norm_(gparams, MAX_NORM,
                                              nonfinite="skip" if rank == 0 else "propagate")),
        ("pg", lambda: gt.get_total_norm([gparams[0].grad.to_local().clone()], norm_type,
                                         process_group=dist.group.WORLD)),
    ):
        try:
            call()
            rec.check("mismatch_raises_every_rank", False, f"{name}: no exception")
        except gclip.GclipError as e:
            rec.check("mismatch_raises_every_rank",
                      e.status_name == "MISMATCH" and "norm type" in str(e), f"{name}: {e}")
    rec.check("mismatch_raises_every_rank",
              torch.equal(before.view(torch.int32), gparams[0].grad.to_local().view(torch.int32)),
              "a gradient was written")
    # the next call with agreeing options is whole again
    gn = gt.get_total_norm([g.grad for g in gparams])
    rec.close("mismatch_raises_every_rank", _as_float(gn), _ref_norm([spec[0][0]], 2.0), 1e-6,
              "after the mismatch")


def _same_on_every_rank(rec, name, value):
    """Record whether `value` (bits, as a string) is the same on every rank."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    rec.check(name, len(set(everyone)) == 1, f"per rank {everyone}")


def _scenario_custom_mesh(rec, ws, rank):
    """A 2 x 2 mesh whose global ranks do not rise with the coordinate: the
    partials are folded in mesh-coordinate order on every rank. Gradients are
    checked shard by shard (full_tensor() of torch 2.15 puts the shards of
    such a mesh in another order on some ranks)."""
    if ws != 4:
        return
    mesh = DeviceMesh("cpu", torch.tensor([[0, 3], [1, 2]]))
    gen = torch.Generator().manual_seed(314)
    coord = mesh.get_coordinate()
    # one element per rank, powers of two with seeded exponent and signs, so
    # that each rank's clipped element is its factor times a power of two; the
    # float32 sum (p = 1) of a and b is a tie that c and d break upwards, so
    # a fold of (a, b, c, d) and one of (c, d, b, a) round apart
    for trial in range(4):
        e = int(torch.randint(-6, 7, (1,), generator=gen))
        signs = torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1
        full = torch.tensor([2.0 ** e, 2.0 ** (e - 24), 2.0 ** (e - 53), 2.0 ** (e - 53)]) * signs
        exact = math.fsum(abs(x) for x in full.double().tolist())
        d = distribute_tensor(full.clone(), mesh, [Shard(0), Shard(0)])
        gn = gt.get_total_norm([d], 1.0)
        rec.close("custom_mesh_matches_reference", _as_float(gn), exact, 1e-6, f"trial {trial}")
        _same_on_every_rank(rec, "custom_mesh_bitwise_across_ranks", _bits(float(gn.to_local())))
        p = torch.nn.Parameter(distribute_tensor(torch.zeros_like(full), mesh, [Shard(0), Shard(0)]))
        p.grad = distribute_tensor(full.clone(), mesh, [Shard(0), Shard(0)])
        before = p.grad.to_local().clone()
        gn = gt.clip_grad_norm_([p], MAX_NORM * 2.0 ** e, 1.0)
        rec.close("custom_mesh_matches_reference", _as_float(gn), exact, 1e-6, f"trial {trial}")
        _same_on_every_rank(rec, "custom_mesh_bitwise_across_ranks", _bits(float(gn.to_local())))
        factor = float(p.grad.to_local()[0]) / float(before[0])
        _same_on_every_rank(rec, "custom_mesh_bitwise_across_ranks", _bits(factor))
        want = before.double() * (MAX_NORM * 2.0 ** e / (exact + 1e-6))
        got = p.grad.to_local().double()
        rec.check("custom_mesh_matches_reference", torch.allclose(got, want, rtol=2e-6, atol=0),
                  f"trial {trial} coord {coord}: max diff {_maxdiff(got, want)}")

    spec = [
        (_full((8, 6), gen), [Shard(0), Shard(1)]),
        (_full((7, 5), gen, 2.0), [Shard(0), Replicate()]),
        (_full((9,), gen, 0.25), [Replicate(), Shard(0)]),
    ]
    fulls = [f for f, _ in spec]
    tparams, gparams = _params_like(spec, mesh)
    before = [q.grad.to_local().clone() for q in gparams]
    for p in (2.0, 1.0, math.inf, 3.0):
        gn = gt.get_total_norm([q.grad for q in gparams], p)
        tn = torch.nn.utils.get_total_norm([q.grad for q in tparams], p)
        rec.close("custom_mesh_matches_reference", _as_float(gn), _ref_norm(fulls, p), 1e-6,
                  f"p={p}")
        rec.close("custom_mesh_matches_reference", _as_float(gn), _as_float(tn), 2e-6,
                  f"p={p}, torch")
        _same_on_every_rank(rec, "custom_mesh_bitwise_across_ranks", _bits(float(gn.to_local())))
    gn = gt.clip_grad_norm_(gparams, MAX_NORM)
    ref = _ref_norm(fulls, 2.0)
    rec.close("custom_mesh_matches_reference", _as_float(gn), ref, 1e-6, "clip")
    _same_on_every_rank(rec, "custom_mesh_bitwise_across_ranks", _bits(float(gn.to_local())))
    for i, gp in enumerate(gparams):
        got = gp.grad.to_local().double()
        want = before[i].double() * (MAX_NORM / (ref + 1e-6))
        rec.check("custom_mesh_matches_reference", torch.allclose(got, want, rtol=2e-6, atol=1e-9),
                  f"tensor {i}: max diff {_maxdiff(got, want)}")


def _digest(t) -> str:
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _scenario_dtensor_with_norm_and_value(rec, ws, rank):
    """The FSDP2 idiom get_total_norm + clip_grads_with_norm_, and
    clip_grad_value_, on DTensor gradients: PyTorch's result bit for bit."""
    mesh = init_device_mesh("cpu", (ws,))
    gen = torch.Generator().manual_seed(808)
    spec = [(_full((4 * ws, 3), gen), [Shard(0)]), (_full((5,), gen, 2.0), [Replicate()]),
            (_full((3, 2 * ws + 1), gen), [Shard(1)])]
    fulls = [f for f, _ in spec]
    ref = _ref_norm(fulls, 2.0)
    for nonfinite in ("propagate", "skip"):
        name = "dtensor_clip_grads_with_norm_matches_torch"
        tparams, gparams = _params_like(spec, mesh)
        try:
            tn = torch.nn.utils.get_total_norm([q.grad for q in tparams])
            torch.nn.utils.clip_grads_with_norm_(tparams, MAX_NORM, tn)
            gn = gt.get_total_norm([q.grad for q in gparams])
            rec.close(name, _as_float(gn), ref, 1e-6, "gclip's norm against the reference")
            gt.clip_grads_with_norm_(gparams, MAX_NORM, tn, nonfinite=nonfinite)
            for i, (tp, gp) in enumerate(zip(tparams, gparams)):
                rec.check(name, isinstance(gp.grad, DTensor), f"tensor {i}: {type(gp.grad)}")
                g_full, t_full = gp.grad.full_tensor(), tp.grad.full_tensor()
                rec.check(name, _digest(g_full) == _digest(t_full),
                          f"{nonfinite} tensor {i}: max diff {_maxdiff(g_full, t_full)}")
                want = fulls[i].double() * (MAX_NORM / (ref + 1e-6))
                rec.check(name, torch.allclose(g_full.double(), want, rtol=2e-6, atol=1e-9),
                          f"tensor {i}: max diff {_maxdiff(g_full.double(), want)} from the reference")
            # with gclip's own (replicated DTensor) norm, as FSDP2 code does
            _, gparams = _params_like(spec, mesh)
            gt.clip_grads_with_norm_(gparams, MAX_NORM, gn, nonfinite=nonfinite)
            for i, gp in enumerate(gparams):
                want = fulls[i].double() * (MAX_NORM / (ref + 1e-6))
                g_full = gp.grad.full_tensor().double()
                rec.check(name, torch.allclose(g_full, want, rtol=2e-6, atol=1e-9),
                          f"gclip norm, tensor {i}: max diff {_maxdiff(g_full, want)}")
        except Exception:
            rec.check(name, False, traceback.format_exc())

    name = "dtensor_clip_grad_value_matches_torch"
    tparams, gparams = _params_like(spec, mesh)
    try:
        torch.nn.utils.clip_grad_value_(tparams, 0.3)
        gt.clip_grad_value_(gparams, 0.3)
        for i, (tp, gp) in enumerate(zip(tparams, gparams)):
            g_full, t_full = gp.grad.full_tensor(), tp.grad.full_tensor()
            rec.check(name, isinstance(gp.grad, DTensor) and _digest(g_full) == _digest(t_full),
                      f"tensor {i}: max diff {_maxdiff(g_full, t_full)}")
            rec.check(name, torch.equal(g_full, fulls[i].clamp(-0.3, 0.3)), f"tensor {i}")
    except Exception:
        rec.check(name, False, traceback.format_exc())


def _scenario_dtensor_torch_fallback(rec, ws, rank):
    """DTensor gradients gclip leaves to PyTorch's arithmetic (float64, and
    float16 without fp32_norm): clip_grad_norm_ gives PyTorch's norm and
    gradients bit for bit, and the float64 ones match the reference."""
    mesh = init_device_mesh("cpu", (ws,))
    gen = torch.Generator().manual_seed(4242)
    name = "dtensor_torch_fallback_matches_torch"
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float16, 2e-3)):
        spec = [(_full((4 * ws, 3), gen, 2.0).to(dtype), [Shard(0)]),
                (_full((7,), gen, 3.0).to(dtype), [Replicate()]),
                # no empty shard: PyTorch's own inf-norm raises on one
                (_full((3, 3 * ws + 1), gen).to(dtype), [Shard(1)])]
        fulls = [f for f, _ in spec]
        for p, nonfinite in ((2.0, "propagate"), (3.0, "skip"), (math.inf, "propagate")):
            detail = f"{dtype} p={p} {nonfinite}"
            try:
                ref = _ref_norm(fulls, p)
                max_norm = 0.25 * ref  # every gradient is clipped
                tparams, gparams = _params_like(spec, mesh)
                tn = torch.nn.utils.clip_grad_norm_(tparams, max_norm, p)
                gn = gt.clip_grad_norm_(gparams, max_norm, p, nonfinite=nonfinite)
                rec.check(name, isinstance(gn, DTensor) and gn.dtype == dtype,
                          f"{detail}: norm {type(gn)} {gn.dtype}")
                rec.check(name, _digest(gn.full_tensor().reshape(1)) == _digest(tn.full_tensor().reshape(1)),
                          f"{detail}: norm {_as_float(gn)!r} torch {_as_float(tn)!r}")
                rec.close(name, _as_float(gn), ref, rtol, f"{detail}: norm against the reference")
                for i, (tp, gp) in enumerate(zip(tparams, gparams)):
                    g_full, t_full = gp.grad.full_tensor(), tp.grad.full_tensor()
                    rec.check(name, isinstance(gp.grad, DTensor) and g_full.dtype == dtype
                              and _digest(g_full) == _digest(t_full),
                              f"{detail} tensor {i}: max diff "
                              f"{_maxdiff(g_full.double(), t_full.double())}")
                    want = fulls[i].double() * (max_norm / (ref + 1e-6))
                    rec.check(name, torch.allclose(g_full.double(), want, rtol=rtol, atol=0),
                              f"{detail} tensor {i}: max diff "
                              f"{_maxdiff(g_full.double(), want)} from the reference")
            except Exception:
                rec.check(name, False, f"{detail}: {traceback.format_exc()}")


def _scenario_not_member(rec, ws, rank):
    """process_group= a group without this rank: ValueError, nothing written."""
    group = dist.new_group([0])
    gen = torch.Generator().manual_seed(77 + rank)
    shard = _full((6,), gen)
    q = torch.nn.Parameter(torch.zeros_like(shard))
    q.grad = shard.clone()
    name = "pg_not_member_raises"
    for what, call in (
        ("total", lambda: gt.get_total_norm([shard], process_group=group)),
        ("clip", lambda: gt.clip_grad_norm_([q], MAX_NORM, process_group=group)),
    ):
        try:
            gn = call()
            rec.check(name, rank == 0, f"{what}: no exception on rank {rank}")
            if rank == 0:
                rec.close(name, float(gn), _ref_norm([shard], 2.0), 1e-6, what)
        except Exception as e:
            rec.check(name, rank != 0 and isinstance(e, ValueError) and "not a member" in str(e),
                      f"{what}: {type(e).__name__}: {e}")
    if rank != 0:
        rec.check(name, torch.equal(q.grad.view(torch.int32), shard.view(torch.int32)),
                  "a gradient was written")


def _scenario_rejected_on_one_rank(rec, ws, rank):
    """One rank rejects its input before the gather (a non-dense shard, a norm
    type <= 0, a NaN max_norm, a keyword argument that is not valid): it
    raises its own error, every other rank raises one naming it, none waits
    for the collective timeout, and nothing is written."""
    last = ws - 1
    mesh = init_device_mesh("cpu", (ws,))
    gen = torch.Generator().manual_seed(4242)
    full = _full((2 * ws, 4), gen)
    mine = torch.tensor_split(full.reshape(-1), ws)[rank].clone()
    spaced = torch.stack([mine, torch.ones_like(mine)], 1).reshape(-1)  # mine at even indices

    def pg_shard():
        return spaced[::2] if rank == last else mine.clone()

    def mesh_grad():
        local = distribute_tensor(full.clone(), mesh, [Shard(0)]).to_local()
        if rank == last:
            local = torch.stack([local, torch.ones_like(local)], -1)[..., 0]
        return DTensor.from_local(local, mesh, [Shard(0)], run_check=False)

    def param(grad):
        q = torch.nn.Parameter(torch.zeros_like(grad))
        q.grad = grad
        return q

    def mesh_ok():
        return distribute_tensor(full.clone(), mesh, [Shard(0)])

    plain = param(torch.ones(3))  # a plain tensor among the last rank's DTensors
    plain64 = param(torch.ones(3, dtype=torch.float64))

    def mesh_ok64():  # float64: PyTorch's arithmetic, after the ranks agree on it
        return distribute_tensor(full.double(), mesh, [Shard(0)])

    def mesh_partial():  # the peers reduce it with DTensor's collective first
        return _partial_dtensor(full, mesh, [Partial()])

    def mesh_partial64():  # float64: PyTorch's path, whose first collective is gclip's gather
        return _partial_dtensor(full.double(), mesh, [Partial()])

    name = "rejected_on_one_rank_raises_everywhere"
    cases = (
        ("pg_noncontig_total", lambda g: gt.get_total_norm([g], process_group=dist.group.WORLD),
         pg_shard, False, "not dense"),
        ("pg_noncontig_clip", lambda q: gt.clip_grad_norm_([q], MAX_NORM,
                                                           process_group=dist.group.WORLD),
         pg_shard, True, "not dense"),
        ("pg_norm_type", lambda q: gt.clip_grad_norm_([q], MAX_NORM,
                                                      norm_type=2.0 if rank != last else -1.0,
                                                      process_group=dist.group.WORLD),
         lambda: mine.clone(), True, "norm types > 0"),
        # NaN fails `max_norm < 0` as it fails `>= 0`: rejected before the
        # gather like a negative one, not by the finalize after it
        ("pg_max_norm_nan", lambda q: gt.clip_grad_norm_([q], MAX_NORM if rank != last
                                                         else math.nan,
                                                         process_group=dist.group.WORLD),
         lambda: mine.clone(), True, "max_norm=nan"),
        ("mesh_noncontig_clip", lambda q: gt.clip_grad_norm_([q], MAX_NORM), mesh_grad, True,
         "not dense"),
        # keyword arguments refused before any option is read: the rank
        # still joins the gather (it raised at once, its peers waited)
        ("pg_nonfinite_word", lambda q: gt.clip_grad_norm_(
            [q], MAX_NORM, nonfinite="propagate" if rank != last else "bogus",
            process_group=dist.group.WORLD), lambda: mine.clone(), True, "nonfinite must be"),
        ("pg_max_norm_word", lambda q: gt.clip_grad_norm_(
            [q], MAX_NORM if rank != last else "one", process_group=dist.group.WORLD),
         lambda: mine.clone(), True, "could not convert"),
        ("pg_norm_type_word", lambda g: gt.get_total_norm(
            [g], norm_type=2.0 if rank != last else "two", process_group=dist.group.WORLD),
         lambda: mine.clone(), False, "could not convert"),
        # an OverflowError there: its peers raise a RuntimeError naming it
        ("pg_max_norm_overflow", lambda q: gt.clip_grad_norm_(
            [q], MAX_NORM if rank != last else 10 ** 400, process_group=dist.group.WORLD),
         lambda: mine.clone(), True, "too large"),
        # the same on DTensors: the rank joins its mesh's gather
        ("mesh_nonfinite_word", lambda q: gt.clip_grad_norm_(
            [q], MAX_NORM, nonfinite="propagate" if rank != last else "bogus"),
         mesh_ok, True, "nonfinite must be"),
        ("mesh_max_norm_word", lambda q: gt.clip_grad_norm_(
            [q], MAX_NORM if rank != last else "one"), mesh_ok, True, "could not convert"),
        ("mesh_norm_type_word", lambda g: gt.get_total_norm(
            [g], norm_type=2.0 if rank != last else "two"), mesh_ok, False, "could not convert"),
        ("mesh_plain_in_list", lambda q: gt.clip_grad_norm_(
            [q] + ([plain] if rank == last else []), MAX_NORM), mesh_ok, True,
         "plain tensor among DTensor"),
        # the same where the peers hold Partial gradients, which they reduce
        # with DTensor's collective before the gather: the rejecting rank
        # joins those reductions first (its list differs from theirs only in
        # a gradient that is not Partial)
        ("mesh_partial_plain_in_list", lambda q: gt.clip_grad_norm_(
            [q] + ([plain] if rank == last else []), MAX_NORM), mesh_partial, True,
         "plain tensor among DTensor"),
        ("mesh_partial_plain_first_total", lambda g: gt.get_total_norm(
            ([plain.grad] if rank == last else []) + [g]), mesh_partial, False,
         "plain tensor among DTensor"),
        ("mesh_partial_nonfinite_word", lambda q: gt.clip_grad_norm_(
            [q], MAX_NORM, nonfinite="propagate" if rank != last else "bogus"),
         mesh_partial, True, "nonfinite must be"),
        # the path is the DTensors' own: a plain float64 tensor among float32
        # Partial DTensors still takes gclip's (the reductions, then the
        # gather), and a bad keyword with float64 Partial DTensors PyTorch's
        # (the gather, no reduction before it)
        ("mesh_partial_plain64_in_list", lambda q: gt.clip_grad_norm_(
            [q] + ([plain64] if rank == last else []), MAX_NORM), mesh_partial, True,
         "plain tensor among DTensor"),
        ("mesh_partial_plain64_in_list_total", lambda g: gt.get_total_norm(
            [g] + ([plain64.grad] if rank == last else [])), mesh_partial, False,
         "plain tensor among DTensor"),
        ("mesh64_partial_nonfinite_word", lambda q: gt.clip_grad_norm_(
            [q], MAX_NORM, nonfinite="propagate" if rank != last else "bogus"),
         mesh_partial64, True, "nonfinite must be"),
        ("mesh64_partial_norm_type_word", lambda g: gt.get_total_norm(
            [g], norm_type=2.0 if rank != last else "two"), mesh_partial64, False,
         "could not convert"),
        # the same where the peers take PyTorch's DTensor arithmetic
        # (float64), whose collectives are not gclip's gather
        ("mesh64_plain_in_list", lambda q: gt.clip_grad_norm_(
            [q] + ([plain64] if rank == last else []), MAX_NORM), mesh_ok64, True,
         "plain tensor among DTensor"),
        ("mesh64_plain_in_list_total", lambda g: gt.get_total_norm(
            [g] + ([plain64.grad] if rank == last else [])), mesh_ok64, False,
         "plain tensor among DTensor"),
        ("mesh64_nonfinite_word", lambda q: gt.clip_grad_norm_(
            [q], MAX_NORM, nonfinite="propagate" if rank != last else "bogus"),
         mesh_ok64, True, "nonfinite must be"),
        ("mesh64_max_norm_word", lambda q: gt.clip_grad_norm_(
            [q], MAX_NORM if rank != last else "one"), mesh_ok64, True, "could not convert"),
    )
    for what, call, make, as_param, own in cases:
        grad = make()
        before = (grad.to_local() if isinstance(grad, DTensor) else grad).clone()
        arg = param(grad) if as_param else grad
        try:
            call(arg)
            rec.check(name, False, f"{what}: no exception on rank {rank}")
        except (ValueError, TypeError, OverflowError, RuntimeError) as e:
            want = own if rank == last else f"rank {last} rejected its input"
            rec.check(name, want in str(e), f"{what}: rank {rank}: {type(e).__name__}: {e}")
            # the peers raise the class of the refusal (a ValueError or a
            # TypeError), a RuntimeError for any other
            own_cls = {"plain tensor among DTensor": TypeError,
                       "too large": OverflowError}.get(own, ValueError)
            peer_cls = own_cls if own_cls in (ValueError, TypeError) else RuntimeError
            rec.check(name, isinstance(e, own_cls) if rank == last else type(e) is peer_cls,
                      f"{what}: rank {rank} raised {type(e).__name__}, not "
                      f"{(own_cls if rank == last else peer_cls).__name__}")
        except Exception as e:
            rec.check(name, False, f"{what}: rank {rank}: {type(e).__name__}: {e}")
        after = arg.grad if as_param else arg
        after = after.to_local() if isinstance(after, DTensor) else after
        rec.check(name, torch.equal(before.view(torch.int32), after.view(torch.int32)),
                  f"{what}: a gradient was written on rank {rank}")
    # every rank mixes a float32 DTensor with a plain float64 tensor: each
    # refuses its own list, nothing is written (PyTorch's arithmetic would
    # scale the DTensor group, then fail on the mix)
    q32, q64 = param(mesh_ok()), param(torch.ones(3, dtype=torch.float64) * 5)
    before = [q32.grad.to_local().clone(), q64.grad.clone()]
    for what, call in (("mixed_clip", lambda: gt.clip_grad_norm_([q32, q64], MAX_NORM)),
                       ("mixed_total", lambda: gt.get_total_norm([q32.grad, q64.grad]))):
        try:
            call()
            rec.check(name, False, f"{what}: no exception on rank {rank}")
        except TypeError as e:
            rec.check(name, "plain tensor among DTensor" in str(e), f"{what}: rank {rank}: {e}")
        except Exception as e:
            rec.check(name, False, f"{what}: rank {rank}: {type(e).__name__}: {e}")
    rec.check(name, torch.equal(before[0], q32.grad.to_local()) and torch.equal(before[1], q64.grad),
              f"mixed: a gradient was written on rank {rank}")
    # the last rank takes gclip's path, the others PyTorch's (float64
    # gradients, a norm type <= 0, a negative max_norm, bfloat16 without
    # fp32_norm): every rank raises MISMATCH, nothing is written
    gclip_here = rank == last
    cases = (
        ("dtypes_clip", torch.float64, lambda q: gt.clip_grad_norm_([q], MAX_NORM)),
        ("dtypes_total", torch.float64, lambda q: gt.get_total_norm([q.grad])),
        ("norm_type", torch.float32,
         lambda q: gt.clip_grad_norm_([q], MAX_NORM, norm_type=2.0 if gclip_here else 0.0)),
        ("max_norm_sign", torch.float32,
         lambda q: gt.clip_grad_norm_([q], MAX_NORM if gclip_here else -MAX_NORM)),
        ("fp32_norm", torch.bfloat16,
         lambda q: gt.clip_grad_norm_([q], MAX_NORM, fp32_norm=gclip_here)),
    )
    for what, dtype, call in cases:
        # made without a collective (distribute_tensor's would not match)
        local = torch.tensor_split(full, ws)[rank].clone()
        local = local if rank == last and what.startswith("dtypes") else local.to(dtype)
        q = param(DTensor.from_local(local, mesh, [Shard(0)], run_check=False))
        before = q.grad.to_local().clone()
        try:
            call(q)
            rec.check(name, False, f"{what}: no exception on rank {rank}")
        except gclip.GclipError as e:
            rec.check(name, e.status_name == "MISMATCH", f"{what}: rank {rank}: {e}")
        except Exception as e:
            rec.check(name, False, f"{what}: rank {rank}: {type(e).__name__}: {e}")
        rec.check(name, torch.equal(before, q.grad.to_local()),
                  f"{what}: a gradient was written on rank {rank}")
    # the next call with good input on every rank is whole again
    gn = gt.get_total_norm([mine], process_group=dist.group.WORLD)
    rec.close(name, float(gn), _ref_norm([full], 2.0), 1e-6, "after the rejections")
    gn = gt.get_total_norm([mesh_ok64()])
    rec.close(name, _as_float(gn), _ref_norm([full.double()], 2.0), 1e-12, "float64 after them")


def _worker(rank, ws, store, outdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ws,
                            timeout=timedelta(seconds=60))
    rec = _Recorder(rank)
    finished = False
    try:
        for scenario in (_scenario_1d, _scenario_2d, _scenario_nonfinite,
                         _scenario_process_group, _scenario_mismatch, _scenario_custom_mesh,
                         _scenario_dtensor_with_norm_and_value, _scenario_dtensor_torch_fallback,
                         _scenario_not_member,
                         _scenario_rejected_on_one_rank):
            scenario(rec, ws, rank)
            dist.barrier()
        finished = True
    except Exception:
        rec.check("worker_ran", False, traceback.format_exc())
        raise
    finally:
        # written whole or not at all (a rank killed mid-write leaves no record)
        path = os.path.join(outdir, f"rank{rank}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"checks": rec.checks, "bits": rec.bits, "notes": rec.notes,
                       "finished": finished}, f)
        os.replace(path + ".tmp", path)
    # every rank's record is on disk before any rank tears gloo down
    dist.barrier()
    dist.destroy_process_group()


# ---- the tests --------------------------------------------------------------------------------

_RUNS = {}


def _teardown_abort_only(exc, ranks) -> bool:
    """Whether a failed world is the one known benign failure: torch's gloo
    teardown aborting a rank ("terminate called without an active
    exception", SIGABRT) after every rank ran every scenario and recorded all
    its checks as passed (the records are written before the teardown)."""
    if not isinstance(exc, mp.ProcessExitedException) or exc.signal_name != "SIGABRT":
        return False
    return all(rec is not None and rec.get("finished") is True
               and all(ok for ok, _ in rec["checks"].values()) for rec in ranks)


def _failed_checks(ranks) -> str:
    out = []
    for r, rec in enumerate(ranks):
        if rec is None:
            out.append(f"rank {r}: no record")
            continue
        if not rec.get("finished"):
            out.append(f"rank {r}: did not finish its scenarios")
        out += [f"rank {r}: {name}: {detail}" for name, (ok, detail) in rec["checks"].items()
                if not ok]
    return "; ".join(out)


def _run_world(ws, tmp_path_factory):
    # A world that fails is a test failure (the error goes to every test of
    # it), with one exception: torch's gloo teardown has aborted a rank after
    # every check had passed and been recorded. Only that world is run once
    # more, with a warning, and the second run must succeed outright. Any
    # other failure (a rank that raised, timed out, crashed otherwise, left
    # no or an unfinished record, or recorded a failed check) is not retried.
    if ws not in _RUNS:
        for attempt in (1, 2):
            d = tmp_path_factory.mktemp(f"ws{ws}")
            error = exc = None
            try:
                mp.spawn(_worker, args=(ws, str(d / "store"), str(d)), nprocs=ws, join=True)
            except Exception as e:  # a rank failed: its record says why
                exc = e
            ranks = []
            for r in range(ws):
                path = d / f"rank{r}.json"
                ranks.append(json.loads(path.read_text()) if path.exists() else None)
            if exc is None:
                break
            error = f"run {attempt}: {type(exc).__name__}: {exc}"
            failed = _failed_checks(ranks)
            if failed:
                error += f" [{failed}]"
            if attempt == 2 or not _teardown_abort_only(exc, ranks):
                break
            warnings.warn(f"world of {ws} ranks, {error}: the gloo teardown abort after every "
                          "check passed; running the world once more")
        _RUNS[ws] = (ranks, error)
    return _RUNS[ws]


def _expect(ws, name, tmp_path_factory):
    ranks, error = _run_world(ws, tmp_path_factory)
    assert error is None, f"a rank failed: {error}"
    for r, rec in enumerate(ranks):
        assert rec is not None, f"rank {r} left no record"
        assert rec.get("finished") is True, f"rank {r} did not finish its scenarios"
        assert name in rec["checks"], f"rank {r} did not run check {name}"
        ok, detail = rec["checks"][name]
        assert ok, f"rank {r}: {name}: {detail}"
    for text in sorted({t for rec in ranks for t in rec.get("notes", {}).get(name, [])}):
        warnings.warn(text)


ws_params = pytest.mark.parametrize("ws", WORLD_SIZES, ids=[f"ws{w}" for w in WORLD_SIZES])


@ws_params
@pytest.mark.parametrize("name", [
    "1d_total_norm_is_replicated_dtensor",
    "1d_total_norm_matches_torch",
    "1d_total_norm_matches_reference",
    "1d_total_norm_bitwise_across_ranks",
    "1d_clip_norm_matches_torch",
    "1d_clip_norm_matches_reference",
    "1d_clip_norm_bitwise_across_ranks",
    "1d_clipped_grads_match_torch",
    "1d_clipped_grads_match_reference",
    "1d_clipped_grads_bitwise_across_ranks",
    "1d_empty_shard_matches_reference",
])
def test_dtensor_1d_shard_replicate_partial(ws, name, tmp_path_factory):
    """Shard(0), Shard(1), Replicate and Partial DTensors on a 1-D mesh: the
    norm and the clipped gradients match torch.nn.utils.clip_grad_norm_ on the
    same DTensors and the float64 reference, bitwise equal on every rank. A
    gradient the installed PyTorch clips away from the reference (2.11 leaves
    the Partial one unclipped) is compared with the reference only, with a
    warning that names the torch version."""
    _expect(ws, name, tmp_path_factory)


@pytest.mark.parametrize("name", [
    "2d_total_norm_matches_torch", "2d_total_norm_matches_reference", "2d_clip_matches_torch",
    "2d_clip_matches_reference", "2d_bitwise_across_ranks",
])
def test_dtensor_2d_mesh_mix(name, tmp_path_factory):
    """A 2 x 2 mesh with (Shard, Shard), (Shard, Replicate), (Replicate, Shard),
    (Replicate, Replicate) and (Shard, Partial) gradients; the clipped
    gradients against torch's where torch's match the reference (as in 1-D)."""
    _expect(4, name, tmp_path_factory)


@ws_params
def test_replicated_counted_once(ws, tmp_path_factory):
    _expect(ws, "replicated_counted_once", tmp_path_factory)


@ws_params
@pytest.mark.parametrize("name", ["nan_propagate_every_rank", "inf_propagate_every_rank",
                                  "nan_skip_every_rank", "inf_skip_every_rank",
                                  "nan_error_every_rank", "inf_error_every_rank"])
def test_nonfinite_on_one_rank(ws, name, tmp_path_factory):
    """NaN or Inf on the last rank only: PyTorch's result by default on every
    rank, nothing written anywhere under nonfinite='skip', an exception on
    every rank with error_if_nonfinite=True."""
    _expect(ws, name, tmp_path_factory)


@ws_params
@pytest.mark.parametrize("name", ["pg_returns_plain_float32", "pg_total_norm_matches_reference",
                                  "pg_bitwise_across_ranks", "pg_default_none_is_local",
                                  "pg_clip_matches_reference", "pg_rank_without_tensors"])
def test_process_group_plain_shards(ws, name, tmp_path_factory):
    """ZeRO-style flat shards of plain tensors with process_group=."""
    _expect(ws, name, tmp_path_factory)


@pytest.mark.parametrize("ws", (3, 4), ids=["ws3", "ws4"])
def test_process_group_subgroups(ws, tmp_path_factory):
    _expect(ws, "pg_subgroup", tmp_path_factory)


@ws_params
def test_mismatched_norm_types_raise_on_every_rank(ws, tmp_path_factory):
    """Rank 0 passes another norm type (or non-finite policy): every rank
    raises GclipError MISMATCH, nothing is written, the next call works."""
    _expect(ws, "mismatch_raises_every_rank", tmp_path_factory)


@pytest.mark.parametrize("name", ["custom_mesh_bitwise_across_ranks",
                                  "custom_mesh_matches_reference"])
def test_custom_mesh_folds_in_coordinate_order(name, tmp_path_factory):
    """DeviceMesh("cpu", [[0, 3], [1, 2]]): global ranks do not rise with the
    mesh coordinate. Every rank folds the partials in row-major coordinate
    order, so the norm and each rank's factor have the same bits everywhere,
    on data whose float32 norm depends on that order; the norm matches the
    float64 reference (and torch's)."""
    _expect(4, name, tmp_path_factory)


@ws_params
@pytest.mark.parametrize("name", ["dtensor_clip_grads_with_norm_matches_torch",
                                  "dtensor_clip_grad_value_matches_torch"])
def test_dtensor_clip_grads_with_norm_and_value(ws, name, tmp_path_factory):
    """clip_grads_with_norm_ (after get_total_norm, as FSDP2 code does) and
    clip_grad_value_ take DTensor gradients and give torch's gradients."""
    _expect(ws, name, tmp_path_factory)


@ws_params
def test_dtensor_torch_fallback(ws, tmp_path_factory):
    """float64 DTensor gradients, and float16 ones without fp32_norm, take
    PyTorch's arithmetic: torch's norm and clipped gradients bit for bit, at
    p = 2, 3 and inf, with nonfinite="propagate" and "skip"."""
    _expect(ws, "dtensor_torch_fallback_matches_torch", tmp_path_factory)


@ws_params
def test_process_group_without_this_rank(ws, tmp_path_factory):
    """A process_group that does not contain the calling rank: ValueError
    naming it, gradients untouched; the group's own rank is served."""
    _expect(ws, "pg_not_member_raises", tmp_path_factory)


@ws_params
def test_input_rejected_on_one_rank_raises_on_every_rank(ws, tmp_path_factory):
    """A non-dense shard (process_group= and DTensor), a norm type <= 0
    (process_group=), a keyword argument that is not valid or a plain tensor
    among DTensors on the last rank: that rank raises its own error, the
    others one naming it, at once; nothing is written."""
    _expect(ws, "rejected_on_one_rank_raises_everywhere", tmp_path_factory)


def test_results_bitwise_identical_across_runs(tmp_path_factory):
    """A second run at 3 ranks gives the same bits as the first."""
    first, error = _run_world(3, tmp_path_factory)
    assert error is None, f"a rank failed: {error}"
    d = tmp_path_factory.mktemp("ws3_again")
    mp.spawn(_worker, args=(3, str(d / "store"), str(d)), nprocs=3, join=True)
    again = json.loads((d / "rank0.json").read_text())
    assert again["bits"] == first[0]["bits"]


def test_process_group_rejects_norm_types_not_above_zero():
    with pytest.raises(ValueError, match="norm types > 0"):
        gt.get_total_norm([torch.ones(3)], 0.0, process_group=object())


_NCCL_REASON = ("needs torch.distributed with NCCL, a CUDA device and gclip's CUDA backend")


def _nccl_ok(n):
    return (torch.cuda.is_available() and torch.cuda.device_count() >= n
            and dist.is_nccl_available() and gclip.cuda_device_count() >= n)


def _nccl_worker(rank, ws, store, outdir):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=ws)
    gen = torch.Generator().manual_seed(11)
    fulls = [_full((1000, 7), gen), _full((33,), gen)]
    shards = [torch.tensor_split(f.reshape(-1), ws)[rank].cuda() for f in fulls]
    params = []
    for s in shards:
        q = torch.nn.Parameter(torch.zeros_like(s))
        q.grad = s.clone()
        params.append(q)
    gn = gt.clip_grad_norm_(params, MAX_NORM, process_group=dist.group.WORLD)
    mesh = init_device_mesh("cuda", (ws,))
    dt = [distribute_tensor(f.cuda(), mesh, [Shard(0)]) for f in fulls]
    dn = gt.get_total_norm(dt)
    out = {"pg": float(gn), "dtensor": float(dn.to_local()), "ref": _ref_norm(fulls, 2.0)}
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


@pytest.mark.parametrize("ws", (1, 2), ids=["nccl1", "nccl2"])
def test_nccl_on_the_current_stream(ws, tmp_path_factory):
    if not _nccl_ok(ws):
        pytest.skip(f"{_NCCL_REASON}; {ws} device(s) needed, "
                    f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} visible")
    d = tmp_path_factory.mktemp(f"nccl{ws}")
    mp.spawn(_nccl_worker, args=(ws, str(d / "store"), str(d)), nprocs=ws, join=True)
    recs = [json.loads((d / f"rank{r}.json").read_text()) for r in range(ws)]
    for rec in recs:
        assert abs(rec["pg"] - rec["ref"]) <= 1e-6 * rec["ref"]
        assert abs(rec["dtensor"] - rec["ref"]) <= 1e-6 * rec["ref"]
    assert len({_bits(r["pg"]) for r in recs}) == 1


def test_a_rank_without_gradients_gathers_where_the_group_takes_cuda_tensors(monkeypatch):
    """The device of a rank that holds no gradient: CUDA when the group's
    backend for CUDA tensors is NCCL (alone, or in the "cpu:gloo,cuda:nccl"
    of init_process_group() without a backend) and CUDA is available, else
    the CPU, gloo's "cpu:gloo,cuda:gloo" included (the backend string alone
    said "nccl" or not: the multi-device one read as the CPU, while its
    peers gathered on CUDA)."""
    from gclip import distributed as gd
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for config, want in (("cpu:gloo,cuda:nccl", ("cuda", 1)), ("nccl", ("cuda", 1)),
                         ("cuda:nccl", ("cuda", 1)), ("gloo", ("cpu", -1)),
                         ("cpu:gloo", ("cpu", -1)), ("cpu:gloo,cuda:gloo", ("cpu", -1))):
        monkeypatch.setattr(gd.dist, "get_backend_config", lambda group, c=config: c)
        device, index = gd._group_device(None)
        assert (device.type, index) == want, config
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gd.dist, "get_backend_config", lambda group: "cpu:gloo,cuda:nccl")
    device, index = gd._group_device(None)
    assert (device.type, index) == ("cpu", -1)
