"""gclip.torch's four drop-ins on seeded random lists that mix what a model's
gradients can hold at once: float32, float16, bfloat16 and float64
gradients, empty and 0-dim ones, transposed (dense, not contiguous) ones,
ones with gaps, parameters without a gradient, a repeated parameter, the odd
Inf, NaN or huge element, and every kind of norm type and bound.

Each case runs PyTorch and gclip on copies of the same list. The checks:
* gclip raises what PyTorch raises, except where docs/python.md lists a
  difference (the inf-norm of an empty tensor, an empty clip_grad_value_
  list, and p-th powers past float's range, where gclip's norm is the true
  one);
* a list with a repeated gradient or one with gaps, or a norm type <= 0,
  gets PyTorch's norm bit for bit (PyTorch's arithmetic takes it);
* a list of float32 gradients gets the norm an exact sum gives (math.fsum
  in double) within 1e-6;
* any other list gets PyTorch's combination of gclip's norm of each tensor
  (PyTorch's for float64 ones) bit for bit, each of those within 1e-6 of
  the exact one (a unit of float16 or bfloat16);
* the gradients clip_grad_norm_ leaves are PyTorch's clip_grads_with_norm_
  applied with the norm gclip returned, bit for bit, and clip_grad_value_
  and clip_grads_with_norm_ leave PyTorch's bits;
* clip_grad_norm_'s own options on the same lists (the second test);
* gclip.torch.Clipper, the native API, on the same lists (the last two)."""

import math
import os
import random
import warnings

import numpy as np
import pytest
import torch

from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

import gclip.torch as gt
from conftest import device_params

DTYPES = [torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64]
SIZES = [0, 1, 2, 3, 7, 33, 100, 257, 1000]
ODD = [math.inf, -math.inf, math.nan, 3e38, 6e4, 1e-40]

# the errors of PyTorch 2.15 that the drop-ins do not raise (docs/python.md)
DOCUMENTED = ("nested_tensorlist[0].empty()",      # clip_grad_value_ of no gradient
              "norm on an empty tensor",            # inf-norm of an empty tensor
              "is non-finite")                      # p-th powers past float's range


def make_grad(rng, dtype, device):
    shape = tuple(rng.choice(SIZES) for _ in range(rng.choice([0, 1, 1, 2, 2, 3])))
    while math.prod(shape) > 100000:
        shape = shape[1:]
    if rng.random() < 0.03:
        shape = (rng.choice([4096, 70000, 300000]),)
    gen = np.random.default_rng(rng.randrange(1 << 30))
    g = torch.from_numpy(np.asarray(gen.standard_normal(shape) * 10 ** rng.uniform(-8, 4)))
    if g.numel() and rng.random() < 0.05:
        g.view(-1)[rng.randrange(g.numel())] = rng.choice(ODD)
    g = g.to(dtype=dtype, device=device)
    layout = rng.random()
    if g.dim() == 2 and layout < 0.15:
        g = g.t().contiguous().t()                  # dense, column-major
    elif g.dim() >= 1 and layout < 0.22 and g.shape[-1] >= 2:
        wide = torch.zeros(*g.shape[:-1], 2 * g.shape[-1], dtype=dtype, device=device)
        wide[..., ::2] = g
        g = wide[..., ::2]                          # gaps between elements
    return g


def make_case(seed, device):
    rng = random.Random(seed)
    mixed = rng.random() < 0.3
    dtype = rng.choice(DTYPES)
    params = []
    for _ in range(rng.choice([0, 1, 2, 3, 5, 10, 40])):
        dt = rng.choice(DTYPES) if mixed else dtype
        g = make_grad(rng, dt, device)
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=dt, device=device))
        p.grad = None if rng.random() < 0.05 else g
        params.append(p)
    if params and rng.random() < 0.08:
        params.append(params[rng.randrange(len(params))])
    return rng, params


def copy_grad(g):
    """A copy with g's strides and memory of its own."""
    if g.is_contiguous():
        return g.clone()
    if g.dim() == 2 and g.t().is_contiguous():
        return g.t().clone().t()
    wide = torch.zeros(*g.shape[:-1], 2 * g.shape[-1], dtype=g.dtype, device=g.device)
    wide[..., ::2] = g
    return wide[..., ::2]


def copy_params(params):
    """Deep copies, a repeated parameter still repeated."""
    seen = {}
    for p in params:
        if id(p) not in seen:
            q = torch.nn.Parameter(p.detach().clone())
            if p.grad is not None:
                q.grad = copy_grad(p.grad)
                assert q.grad.stride() == p.grad.stride()
                assert q.grad.numel() == 0 or q.grad.data_ptr() != p.grad.data_ptr()
            seen[id(p)] = q
    return [seen[id(p)] for p in params]


def grads_of(params):
    return [p.grad for p in params if p.grad is not None]


def outcome(fn, *args, **kwargs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return True, fn(*args, **kwargs)
    except (RuntimeError, ValueError, TypeError) as e:
        return False, f"{type(e).__name__}: {e}"


def exact_norm(grads, p):
    """The p-norm of the listed values (a repeated gradient counts as often as
    it is listed), from math.fsum of the p-th powers in double."""
    flat = [np.abs(g.detach().double().cpu().numpy().ravel()) for g in grads]
    flat = np.concatenate(flat) if flat else np.zeros(0)
    if math.isinf(p):
        return float(flat.max()) if flat.size else 0.0
    return math.fsum((flat ** p).tolist()) ** (1.0 / p)


def same_bits(a, b):
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if not a.numel():
        return True
    view = {torch.float64: torch.int64, torch.float32: torch.int32,
            torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    # NaNs agree as NaNs (PyTorch's operations may pick other payloads)
    an, bn = torch.isnan(a), torch.isnan(b)
    return bool(torch.equal(an, bn) and torch.equal(a.contiguous().view(view)[~an],
                                                    b.contiguous().view(view)[~bn]))


def within_units(a, b, dtype, units):
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    info = torch.finfo(dtype)
    return abs(a - b) <= units * info.eps * max(abs(a), abs(b)) + units * info.smallest_normal


FAST = (torch.float32, torch.float16, torch.bfloat16)


def path_of(grads, p, max_norm):
    """Which arithmetic the drop-ins use for a norm (docs/python.md):
    "torch": PyTorch's throughout (a gradient with gaps, or a gradient of a
    dtype gclip reads that is listed twice; a norm type <= 0);
    "library": one gclip norm over the list (float32 gradients, max_norm >= 0);
    "combine": gclip's norm of each float32/float16/bfloat16 tensor (rounded
    to its dtype) and PyTorch's of each float64 one, combined by PyTorch."""
    full = [g for g in grads if g.numel()]
    gaps = any(not g.is_contiguous() and not (g.dim() == 2 and g.t().is_contiguous())
               for g in full)
    fast = [id(g) for g in full if g.dtype in FAST]
    if p <= 0 or gaps or len(set(fast)) < len(fast):
        return "torch"
    if all(g.dtype is torch.float32 for g in grads) and max_norm >= 0:
        return "library"
    return "combine"


def near_exact(value, exact):
    """A float32 norm against the exact one: within 1e-6 (and half the
    subnormals' spacing), Inf allowed past float32's range."""
    if math.isnan(exact):
        return math.isnan(value)
    if exact >= 3.4e38:
        return value == math.inf or abs(value - exact) <= 1e-6 * exact
    return abs(value - exact) <= 1e-6 * exact + 2.0 ** -150


def check_norm(norm, grads, p):
    """gclip's norm of float32 tensors, or of one tensor, against the exact one:
    within 1e-6 (float32, float64), within a unit of the tensor's dtype
    (float16, bfloat16)."""
    dtypes = {g.dtype for g in grads}
    assert dtypes == {torch.float32} or len(grads) == 1
    exact = exact_norm(grads, p)
    value = float(norm)
    if math.isnan(exact) or math.isinf(exact):
        assert math.isnan(value) if math.isnan(exact) else value == exact
        return
    (dt,) = dtypes
    if dt is torch.float32:
        assert near_exact(value, exact), (value, exact)
    elif dt is torch.float64:
        # below FLT_MIN also half the subnormals' spacing (docs/semantics.md)
        assert abs(value - exact) <= 1e-6 * exact + 2.0 ** -150, (value, exact)
    else:
        assert within_units(value, exact, dt, 1) or (
            exact > torch.finfo(dt).max and value == math.inf), (value, exact)


def combined(grads, p):
    """The "combine" path rebuilt here: each tensor's norm (gclip's, checked
    against the exact one, for the dtypes it reads; PyTorch's _foreach_norm
    for float64), stacked in the order of PyTorch's grouping by dtype and
    reduced by PyTorch's vector_norm."""
    groups = _group_tensors_by_device_and_dtype([grads])
    norms = []
    for (_, dt), ([gs], _) in groups.items():
        if dt in FAST:
            for g in gs:
                n = gt.get_total_norm([g], p, fp32_norm=True)
                check_norm(n, [g], p)
                norms.append(n.to(dt))
        else:
            norms.extend(torch._foreach_norm(gs, p))
    return torch.linalg.vector_norm(torch.stack(norms), p)


def max_norm_of(rng):
    return rng.choice([0.0, 1e-3, 1.0, 5.0, 1e6, -1.0])


# GCLIP_TEST_RANDOM_LISTS: how many lists (seeds 0 to N - 1)
CASES = int(os.environ.get("GCLIP_TEST_RANDOM_LISTS", "300"))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("seed", range(CASES))
def test_random_lists_match_pytorch_and_the_exact_norm(seed, device):
    rng, params = make_case(seed, device)
    ours, theirs = copy_params(params), copy_params(params)
    op = rng.choice(["norm", "norm", "value", "with_norm", "total"])
    if op == "norm":
        max_norm = max_norm_of(rng)
        p = rng.choice([2.0, 2.0, 1.0, math.inf, 0.5, 3.0, 0.0, -math.inf, 1.5])
        err = rng.random() < 0.2
        t_ok, t_res = outcome(torch.nn.utils.clip_grad_norm_, theirs, max_norm, p,
                              error_if_nonfinite=err)
        g_ok, g_res = outcome(gt.clip_grad_norm_, ours, max_norm, p, error_if_nonfinite=err)
    elif op == "value":
        bound = rng.choice([0.0, 1e-3, 0.5, 100.0, 7e4, math.inf, -1.0])
        t_ok, t_res = outcome(torch.nn.utils.clip_grad_value_, theirs, bound)
        g_ok, g_res = outcome(gt.clip_grad_value_, ours, bound)
    elif op == "with_norm":
        max_norm = max_norm_of(rng)
        total = rng.choice([0.0, 1e-3, 1.0, 10.0, 1e30, math.inf, math.nan, -2.0])
        total = torch.tensor(total, dtype=rng.choice([torch.float32, torch.float16, torch.float64]))
        t_ok, t_res = outcome(torch.nn.utils.clip_grads_with_norm_, theirs, max_norm, total)
        g_ok, g_res = outcome(gt.clip_grads_with_norm_, ours, max_norm, total.clone())
    else:
        p = rng.choice([2.0, 1.0, math.inf, 3.0])
        t_ok, t_res = outcome(torch.nn.utils.get_total_norm, grads_of(theirs), p)
        g_ok, g_res = outcome(gt.get_total_norm, grads_of(ours), p)

    if not t_ok:
        if g_ok:
            assert any(d in t_res for d in DOCUMENTED), (t_res, g_res)
        else:
            assert g_res == t_res
        if not g_ok:
            # a refused call writes nothing
            for a, b in zip(grads_of(params), grads_of(ours)):
                assert same_bits(a, b)
            return
    else:
        assert g_ok, (t_res, g_res)

    if op in ("value", "with_norm"):
        assert g_res is None
        for a, b in zip(grads_of(theirs), grads_of(ours)):
            assert same_bits(a, b)
        return

    assert isinstance(g_res, torch.Tensor) and g_res.dim() == 0
    if op == "norm" and err:
        assert math.isfinite(float(g_res))
    if t_ok:
        assert g_res.dtype == t_res.dtype
    grads = grads_of(params)
    if not grads:
        assert float(g_res) == 0.0 and same_bits(g_res, t_res)
        return
    path = path_of(grads, p, max_norm if op == "norm" else 0.0)
    if path == "torch":
        assert t_ok and same_bits(g_res, t_res), (g_res, t_res)
    elif path == "library":
        check_norm(g_res, grads, p)
    else:
        assert same_bits(g_res, combined(grads, p)), (g_res, combined(grads, p))
    if op == "norm":
        # the gradients are PyTorch's arithmetic on the norm gclip returned
        expected = copy_params(params)
        torch.nn.utils.clip_grads_with_norm_(expected, max_norm, g_res)
        for a, b in zip(grads_of(expected), grads_of(ours)):
            assert same_bits(a, b)


def test_the_random_lists_hold_what_they_are_said_to():
    """The generator makes every kind of gradient the docstring lists (in the
    default 300 lists, whatever GCLIP_TEST_RANDOM_LISTS says)."""
    seen = set()
    for seed in range(300):
        _, params = make_case(seed, "cpu")
        grads = grads_of(params)
        seen |= {g.dtype for g in grads}
        seen |= {"no grad" for p in params if p.grad is None}
        seen |= {"repeated" for i, p in enumerate(params) if any(p is q for q in params[:i])}
        seen |= {"empty" for g in grads if g.numel() == 0}
        seen |= {"0-dim" for g in grads if g.dim() == 0}
        seen |= {"gaps" for g in grads if not g.is_contiguous() and g.dim() and g.stride(-1) == 2}
        seen |= {"transposed" for g in grads if g.dim() == 2 and not g.is_contiguous()
                 and g.t().is_contiguous() and g.shape[0] > 1 and g.shape[1] > 1}
        seen |= {"non-finite" for g in grads if not torch.isfinite(g).all()}
    assert seen >= {torch.float32, torch.float16, torch.bfloat16, torch.float64, "no grad",
                    "repeated", "empty", "0-dim", "gaps", "transposed", "non-finite"}, seen


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("seed", range(CASES))
def test_random_lists_with_gclips_own_options(seed, device):
    """fp32_norm=True and nonfinite="skip" on the same lists. With fp32_norm a
    list of float32/float16/bfloat16 gradients on the library's path gets a
    float32 norm within 1e-6 of the exact one (float16 norms past 65504
    included), and its gradients are PyTorch's clip_grads_with_norm_ with that
    norm; "skip" leaves every bit of every gradient where the norm is NaN or
    Inf, and does what the default does otherwise."""
    rng, params = make_case(seed, device)
    max_norm = max_norm_of(rng)
    p = rng.choice([2.0, 2.0, 1.0, math.inf, 0.5, 3.0])
    fp32_norm, skip = rng.random() < 0.6, rng.random() < 0.6
    ours, plain = copy_params(params), copy_params(params)
    ok, norm = outcome(gt.clip_grad_norm_, ours, max_norm, p, fp32_norm=fp32_norm,
                       nonfinite="skip" if skip else "propagate")
    p_ok, p_norm = outcome(gt.clip_grad_norm_, plain, max_norm, p, fp32_norm=fp32_norm)
    assert ok == p_ok and (ok or norm == p_norm), (norm, p_norm)
    if not ok:
        return
    assert same_bits(norm, p_norm)
    grads = grads_of(params)
    if skip and not math.isfinite(float(norm)):
        for a, b in zip(grads, grads_of(ours)):
            assert same_bits(a, b)
    else:
        for a, b in zip(grads_of(plain), grads_of(ours)):
            assert same_bits(a, b)
    fast = grads and all(g.dtype in FAST for g in grads)
    if fp32_norm and fast and max_norm >= 0 and path_of(grads, p, max_norm) != "torch":
        assert norm.dtype is torch.float32
        exact = exact_norm(grads, p)
        if math.isfinite(exact) and exact < 3.4e38:
            assert abs(float(norm) - exact) <= 1e-6 * exact + 2.0 ** -150, (float(norm), exact)
        expected = copy_params(params)
        torch.nn.utils.clip_grads_with_norm_(expected, max_norm, norm)
        if not (skip and not math.isfinite(float(norm))):
            for a, b in zip(grads_of(expected), grads_of(ours)):
                assert same_bits(a, b)


def clipper_takes(grads):
    """What gclip.torch.Clipper takes (docs/python.md): at least one gradient,
    none with gaps between its elements, none listed twice."""
    full = [g for g in grads if g.numel()]
    gaps = any(not g.is_contiguous() and not (g.dim() == 2 and g.t().is_contiguous())
               for g in full)
    return bool(grads) and not gaps and len({id(g) for g in full}) == len(full)


def clipper_outcome(ok, res, grads, ours, takes):
    """A call the Clipper should refuse raised and wrote nothing (False); one
    it should take did not raise (True)."""
    if not takes:
        assert not ok, "the Clipper took what it refuses"
        for a, b in zip(grads, grads_of(ours)):
            assert same_bits(a, b)
        return False
    assert ok, res
    return True


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("seed", range(CASES))
def test_random_lists_through_the_clipper(seed, device):
    """gclip.torch.Clipper, the native API, on the same lists. A list it
    refuses raises before anything is written. On a list it takes:
    clip_grad_norm's norm is within 1e-6 of the exact one; the same step in
    phases (compute_clip_factor, which writes nothing, then
    apply_clip_factor) and clip_grads_with_norm given that norm leave the
    same bits; the norm is the float32 norm clip_grad_norm_(fp32_norm=True)
    returns with the same non-finite policy, gradients included, bit for
    bit, where that call takes the same library call (float32, float16 and
    bfloat16 gradients); the gradients are PyTorch's clip_grads_with_norm_
    with the Clipper's norm (float64 ones too), or untouched under "skip"
    when it is not finite; and clip_grad_value clamps as the library says it
    does, which is clip_grad_value_'s bits wherever the drop-in takes the
    bound."""
    rng, params = make_case(seed, device)
    grads = grads_of(params)
    ours = copy_params(params)
    if rng.random() < 0.7:
        max_norm = max_norm_of(rng)
        p = rng.choice([2.0, 2.0, 1.0, math.inf, 0.5, 3.0])
        policy = rng.choice(["skip", "skip", "propagate"])
        clipper = gt.Clipper(max_norm=max_norm, norm_type=p, nonfinite=policy)
        ok, res = outcome(clipper.clip_grad_norm, ours)
        if not clipper_outcome(ok, res, grads, ours, clipper_takes(grads) and max_norm >= 0):
            return
        result = clipper.result()
        norm = result.total_norm
        assert near_exact(norm, exact_norm(grads, p)), (norm, exact_norm(grads, p))
        # the same step in phases: the factor computed (nothing written), then
        # applied; and the norm given back to clip_grads_with_norm
        phased, given = copy_params(params), copy_params(params)
        other = gt.Clipper(max_norm=max_norm, norm_type=p, nonfinite=policy)
        other.compute_clip_factor(phased)
        for a, b in zip(grads, grads_of(phased)):
            assert same_bits(a, b)
        factor_result = other.result()
        other.apply_clip_factor()
        other.clip_grads_with_norm(given, norm)
        assert (factor_result.clip_coef, factor_result.scale) == (result.clip_coef, result.scale) \
            or math.isnan(result.scale) and math.isnan(factor_result.scale)
        for a, b, c in zip(grads_of(ours), grads_of(phased), grads_of(given)):
            assert same_bits(a, b) and same_bits(a, c)
        if policy == "skip" and not math.isfinite(norm):
            for a, b in zip(grads, grads_of(ours)):
                assert same_bits(a, b)
        else:
            expected = copy_params(params)
            torch.nn.utils.clip_grads_with_norm_(expected, max_norm,
                                                 torch.tensor(norm, dtype=torch.float32))
            for a, b in zip(grads_of(expected), grads_of(ours)):
                assert same_bits(a, b)
        if all(g.dtype in FAST for g in grads):
            dropin = copy_params(params)
            d_norm = gt.clip_grad_norm_(dropin, max_norm, p, fp32_norm=True, nonfinite=policy)
            assert d_norm.dtype is torch.float32
            assert same_bits(d_norm, torch.tensor(norm, dtype=torch.float32)), (d_norm, norm)
            for a, b in zip(grads_of(dropin), grads_of(ours)):
                assert same_bits(a, b)
    else:
        bound = rng.choice([0.0, 1e-3, 0.5, 100.0, 7e4, math.inf])
        clipper = gt.Clipper()
        ok, res = outcome(clipper.clip_grad_value, ours, bound)
        if not clipper_outcome(ok, res, grads, ours, clipper_takes(grads)):
            return
        # float64 gradients clamped to the bound, the others in float32 to the
        # float32 nearest it, rounded back to their dtype (docs/python.md)
        for g, ours_g in zip(grads, grads_of(ours)):
            if g.dtype is torch.float64:
                want = g.clamp(-bound, bound)
            else:
                b32 = float(torch.tensor(bound, dtype=torch.float32))
                want = g.float().clamp(-b32, b32).to(g.dtype)
            assert same_bits(want, ours_g), (g.dtype, bound)
        # the drop-in, where it takes the bound (it refuses one past a
        # gradient dtype's range, as PyTorch does), gives the same bits
        dropin = copy_params(params)
        if outcome(gt.clip_grad_value_, dropin, bound)[0]:
            for a, b in zip(grads_of(dropin), grads_of(ours)):
                assert same_bits(a, b)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("seed", range(CASES))
def test_random_lists_through_the_clipper_per_tensor_with_inv_scale(seed, device):
    """gclip.torch.Clipper.clip_grad_norm_per_tensor on the same lists, with
    tensor_norms and an inv_scale (AMP's unscale, fused): a power of two, so
    that the exact norm of the unscaled values is inv_scale times the exact
    norm. A list it refuses raises and writes nothing. Otherwise, as
    docs/semantics.md gives it: each tensor's norm and the global one within
    1e-6 of the exact ones; under "skip" with any of them not finite nothing
    written; else tensor i multiplied by min(1, max_norm / (N_i + 1e-6))
    (PyTorch's arithmetic) times inv_scale, in float32 for float32, float16
    and bfloat16 and rounded back, in double for float64."""
    rng, params = make_case(seed, device)
    grads = grads_of(params)
    ours = copy_params(params)
    max_norm = rng.choice([1e-3, 1.0, 5.0])
    p = rng.choice([2.0, 1.0, math.inf, 3.0])
    inv = 2.0 ** rng.choice([0, -4, -16, 3])
    policy = rng.choice(["skip", "propagate"])
    norms = torch.full((max(len(grads), 1),), -1.0, dtype=torch.float32, device=device)
    clipper = gt.Clipper(max_norm=max_norm, norm_type=p, nonfinite=policy)
    ok, res = outcome(clipper.clip_grad_norm_per_tensor, ours, inv_scale=inv, tensor_norms=norms)
    if not clipper_outcome(ok, res, grads, ours, clipper_takes(grads)):
        return
    total = clipper.result().total_norm
    assert near_exact(total, inv * exact_norm(grads, p)), (total, inv * exact_norm(grads, p))
    got = norms.cpu()
    for k, g in enumerate(grads):
        want = inv * exact_norm([g], p)
        assert near_exact(float(got[k]), want), (k, float(got[k]), want)
    if policy == "skip" and not (torch.isfinite(got).all() and math.isfinite(total)):
        for a, b in zip(grads, grads_of(ours)):
            assert same_bits(a, b)
        return
    for k, (g, out) in enumerate(zip(grads, grads_of(ours))):
        coef = torch.clamp(max_norm / (got[k] + 1e-6), max=1.0)
        factor = (coef * torch.tensor(inv, dtype=torch.float32)).to(g.device)
        if g.dtype is torch.float64:
            want = g * factor.double()
        else:
            want = (g.float() * factor).to(g.dtype)
        assert same_bits(want, out), (k, g.dtype, float(factor))
