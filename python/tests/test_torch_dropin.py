"""gclip.torch's drop-ins against an independent float64 reference (NumPy)
and against torch.nn.utils, on seeded random gradients."""

import math
import threading
import warnings

import numpy as np
import pytest
import torch

import gclip
import gclip.torch as gt
from conftest import device_params, needs_cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def ref_norm(arrays, p):
    """Flat p-norm in float64 (long double sums for general p)."""
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    if math.isinf(p):
        return float(np.max(np.abs(flat))) if flat.size else 0.0
    if p == 2:
        return float(np.sqrt(np.sum(flat.astype(np.longdouble) ** 2)))
    return float(np.sum(np.abs(flat).astype(np.longdouble) ** p) ** (1.0 / p))


U32 = 2.0 ** -24  # float32's unit roundoff
# gclip's float32 L2 norm of float32/float16/bfloat16 data is within 4u of the
# exact norm (float group sums, then double; docs/gpu-arithmetic.md)
NORM_RTOL = 4 * U32


def ulp_diff(a, b):
    """Elementwise distance in ulps between two float16 or bfloat16 tensors
    (0 and -0 are one value; subnormals count their own spacing)."""
    assert a.dtype == b.dtype and a.dtype in (torch.float16, torch.bfloat16)

    def ordered(t):
        i = t.detach().cpu().contiguous().view(torch.int16).to(torch.int32)
        return torch.where(i < 0, -(i & 0x7FFF), i)
    return (ordered(a) - ordered(b)).abs()


def to_np(t):
    return t.detach().float().cpu().numpy().astype(np.float64)


def make_params(rng, shapes, dtype, device, scale=1.0):
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.zeros(s, dtype=dtype, device=device))
        p.grad = torch.from_numpy(rng.standard_normal(s) * scale).to(dtype=dtype, device=device)
        params.append(p)
    return params


def clone_params(params):
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


SHAPES = [(37, 11), (5,), (3, 4, 5), (1,), (300,), (0,)]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("p", [2.0, 1.0, math.inf, 3.0, 0.5])
def test_norm_and_clip_match_float64_reference_and_torch(rng, device, p):
    # (PyTorch raises for the inf-norm of an empty tensor; gclip counts it as 0,
    # see test_empty_tensors_contribute_zero)
    shapes = SHAPES[:-1] if math.isinf(p) else SHAPES
    params = make_params(rng, shapes, torch.float32, device, scale=2.0)
    grads0 = [to_np(q.grad) for q in params]
    ref = ref_norm(grads0, p)
    torch_params = clone_params(params)
    max_norm = ref / 3

    n = gt.clip_grad_norm_(params, max_norm, norm_type=p)
    n_t = torch.nn.utils.clip_grad_norm_(torch_params, max_norm, norm_type=p)

    assert n.dtype == torch.float32 and n.dim() == 0 and n.device.type == torch.device(device).type
    assert abs(float(n) - ref) <= 1e-6 * ref
    torch.testing.assert_close(n, n_t)
    coef = max_norm / (ref + 1e-6)
    for q, q_t, g0 in zip(params, torch_params, grads0):
        np.testing.assert_allclose(to_np(q.grad), g0 * coef, rtol=2e-6, atol=1e-30)
        torch.testing.assert_close(q.grad, q_t.grad)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_norm_bits_do_not_depend_on_the_offset(rng, device, dtype):
    # the same values as views at every element offset modulo 16 bytes of
    # one flat buffer (as in a flat gradient buffer): the same bits for the
    # total and for each tensor's norm. 300 tensors, so that a reduction
    # order that depended on the address would show: a float32 norm hides
    # most such differences, but an order fixed by the address changed tens
    # of such norms across the offsets
    sizes = [int(n) for n in rng.integers(5, 3000, 300)] + [70001]
    values = [torch.from_numpy(rng.standard_normal(n)).to(dtype) for n in sizes]
    lanes = 16 // torch.empty((), dtype=dtype).element_size()
    runs = []
    for shift in range(lanes):
        flat = torch.zeros(sum(sizes) + lanes * len(sizes), dtype=dtype, device=device)
        grads, at = [], 0
        for k, v in enumerate(values):
            at += (3 * k + shift) % lanes
            g = flat[at:at + v.numel()]
            g.copy_(v.to(device))
            grads.append(g)
            at += v.numel()
        bits = []
        for p in (2.0, 1.0):
            total = gt.get_total_norm(grads, p, fp32_norm=True)
            each = torch.stack([gt.get_total_norm([g], p, fp32_norm=True) for g in grads])
            ref = ref_norm([v.double().numpy() for v in values], p)
            assert abs(float(total) - ref) <= 1e-6 * ref
            bits.append((total.cpu().view(torch.int32).item(), each.cpu().view(torch.int32).tolist()))
        runs.append(bits)
    for shift in range(1, lanes):
        assert runs[shift] == runs[0], f"offset {shift}"


def test_empty_tensors_contribute_zero(rng):
    params = make_params(rng, [(0,), (4,), (0, 3)], torch.float32, "cpu")
    for p in (2.0, math.inf):
        assert float(gt.get_total_norm([q.grad for q in params], p)) == pytest.approx(
            ref_norm([to_np(params[1].grad)], p), rel=1e-6)


@pytest.mark.parametrize("device", device_params())
def test_no_clip_leaves_gradients_bit_identical(rng, device):
    params = make_params(rng, SHAPES, torch.float32, device)
    before = [q.grad.clone() for q in params]
    n = gt.clip_grad_norm_(params, 1e6)
    assert abs(float(n) - ref_norm([to_np(b) for b in before], 2)) <= 1e-6 * float(n)
    for q, b in zip(params, before):
        assert torch.equal(q.grad, b)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_default_is_pytorch(rng, device, dtype):
    params = make_params(rng, SHAPES, dtype, device, scale=3.0)
    torch_params = clone_params(params)
    n = gt.clip_grad_norm_(params, 1.0)
    n_t = torch.nn.utils.clip_grad_norm_(torch_params, 1.0)
    assert n.dtype == dtype == n_t.dtype
    torch.testing.assert_close(n, n_t)
    for q, q_t in zip(params, torch_params):
        torch.testing.assert_close(q.grad, q_t.grad)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp32_norm_is_exact_and_float32(rng, device, dtype):
    params = make_params(rng, SHAPES, dtype, device, scale=3.0)
    grads0 = [to_np(q.grad) for q in params]
    ref = ref_norm(grads0, 2)
    n = gt.clip_grad_norm_(params, 1.0, fp32_norm=True)
    assert n.dtype == torch.float32
    assert abs(float(n) - ref) <= NORM_RTOL * ref
    # the coefficient in float32 from that norm (a few float roundings away
    # from 1 / (n + 1e-6)), each element scaled in float and rounded once to
    # the dtype: the correctly rounded g * coef, or one ulp from it where
    # g * coef lies within those roundings of a midpoint (rare)
    coef = 1.0 / (float(n) + 1e-6)
    mismatched = total = 0
    for q, g0 in zip(params, grads0):
        exp = torch.from_numpy(g0 * coef).to(dtype)  # float64 -> dtype: one rounding
        d = ulp_diff(q.grad, exp)
        assert d.numel() == 0 or int(d.max()) <= 1
        mismatched += int((d != 0).sum())
        total += d.numel()
    assert mismatched <= total // 100, f"{mismatched} of {total} elements one ulp away"


@pytest.mark.parametrize("device", device_params())
def test_f16_norm_above_65504(device):
    g = torch.full((1024,), 4000.0, dtype=torch.float16, device=device)  # norm 128000
    p = torch.nn.Parameter(torch.zeros_like(g))
    p.grad = g.clone()
    n16 = gt.get_total_norm([p.grad])
    assert n16.dtype == torch.float16 and math.isinf(float(n16))  # PyTorch: overflow
    n32 = gt.get_total_norm([p.grad], fp32_norm=True)
    # every sum is exact (1024 * 4000^2 = 128000^2): the norm is exact
    assert n32.dtype == torch.float32 and float(n32) == 128000.0
    gt.clip_grad_norm_([p], 64000.0, fp32_norm=True)
    # coef = 64000 * (1 / float(128000 + 1e-6)) = 0.5 exactly: 4000 * 0.5
    assert torch.equal(p.grad, torch.full((1024,), 2000.0, dtype=torch.float16, device=device))


@pytest.mark.parametrize("device", device_params())
def test_mixed_dtypes_follow_pytorch(rng, device):
    """PyTorch's arithmetic: one norm per tensor, the float16 tensor's
    rounded to float16, stacked (promoted to float32) and combined in float32;
    the coefficient min(1, max_norm / (N + 1e-6)) in float32 applied to each
    gradient in its dtype."""
    params = make_params(rng, [(40,), (7, 3)], torch.float32, device)
    params += make_params(rng, [(9,)], torch.float16, device)
    grads0 = [to_np(q.grad) for q in params]
    torch_params = clone_params(params)
    n = gt.clip_grad_norm_(params, 0.5)
    n_t = torch.nn.utils.clip_grad_norm_(torch_params, 0.5)
    assert n.dtype == n_t.dtype == torch.float32
    # float64 reference with PyTorch's one rounding to float16 of that tensor's norm
    n16 = float(torch.tensor(ref_norm([grads0[2]], 2)).to(torch.float16))
    ref = math.sqrt(ref_norm(grads0[:2], 2) ** 2 + n16 ** 2)
    # per-tensor norms within 4u, combined by float operations (~2u more)
    assert abs(float(n) - ref) <= 6 * U32 * ref
    torch.testing.assert_close(n, n_t, rtol=8 * U32, atol=0)  # torch sums in float
    # the gradients from the returned norm: the coefficient's float roundings
    # and the product's; float16 within one ulp of g * coef rounded once
    coef = 0.5 / (float(n) + 1e-6)
    for q, q_t, g0 in zip(params, torch_params, grads0):
        exp = g0 * coef
        if q.grad.dtype == torch.float16:
            assert int(ulp_diff(q.grad, torch.from_numpy(exp).to(torch.float16)).max()) <= 1
            assert int(ulp_diff(q.grad, q_t.grad).max()) <= 1
        else:
            np.testing.assert_allclose(to_np(q.grad), exp, rtol=4 * U32, atol=0)
            # torch's norm (and so its coefficient) is a few float roundings away
            torch.testing.assert_close(q.grad, q_t.grad, rtol=12 * U32, atol=0)


@pytest.mark.parametrize("device", device_params())
def test_nonfinite_propagates_by_default_and_skip_keeps_gradients(rng, device):
    for bad in (math.inf, math.nan):
        params = make_params(rng, [(10,), (4, 4)], torch.float32, device)
        params[1].grad[2, 1] = bad
        torch_params = clone_params(params)
        n = gt.clip_grad_norm_(params, 1.0)
        n_t = torch.nn.utils.clip_grad_norm_(torch_params, 1.0)
        torch.testing.assert_close(n, n_t, equal_nan=True)
        for q, q_t in zip(params, torch_params):
            torch.testing.assert_close(q.grad, q_t.grad, equal_nan=True)

        params = make_params(rng, [(10,), (4, 4)], torch.float32, device)
        params[1].grad[2, 1] = bad
        before = [q.grad.clone() for q in params]
        n = gt.clip_grad_norm_(params, 1.0, nonfinite="skip")
        assert not math.isfinite(float(n))
        for q, b in zip(params, before):
            torch.testing.assert_close(q.grad, b, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_skip_leaves_gradients_on_pytorchs_arithmetic_too(rng, device, bad):
    """nonfinite="skip" where the drop-ins take PyTorch's arithmetic: a list
    that repeats a gradient (a plan's tensors must be disjoint), and a
    float64 total_norm given to clip_grads_with_norm_. A non-finite norm
    leaves every gradient's bits as they were; a finite one clips as
    PyTorch does, the repeated gradient once for each time it is listed."""
    params = make_params(rng, [(10,), (4, 4)], torch.float32, device, scale=10.0)
    params[1].grad[2, 1] = bad
    before = [q.grad.clone() for q in params]
    n = gt.clip_grad_norm_([params[0], params[1], params[0]], 1.0, nonfinite="skip")
    assert not math.isfinite(float(n))
    for q, b in zip(params, before):
        assert torch.equal(q.grad.view(torch.int32), b.view(torch.int32))
    for total in (torch.tensor(bad, dtype=torch.float64, device=device),
                  torch.tensor(bad, dtype=torch.float32, device=device)):
        gt.clip_grads_with_norm_(params, 1.0, total, nonfinite="skip")
        for q, b in zip(params, before):
            assert torch.equal(q.grad.view(torch.int32), b.view(torch.int32)), total.dtype
    # finite: the repeated gradient scaled twice, as PyTorch's loop does
    params[1].grad[2, 1] = 0.5
    torch_params = clone_params(params)
    n = gt.clip_grad_norm_([params[0], params[1], params[0]], 1.0, nonfinite="skip")
    n_t = torch.nn.utils.clip_grad_norm_([torch_params[0], torch_params[1], torch_params[0]], 1.0)
    torch.testing.assert_close(n, n_t)
    for q, q_t in zip(params, torch_params):
        torch.testing.assert_close(q.grad, q_t.grad)
    assert float(n) > 1.0


@pytest.mark.parametrize("device", device_params())
def test_error_if_nonfinite_raises_before_writing(rng, device):
    params = make_params(rng, [(10,), (4, 4)], torch.float32, device, scale=10.0)
    params[0].grad[3] = math.inf
    before = [q.grad.clone() for q in params]
    with pytest.raises(RuntimeError, match="The total norm of order 2.0 for gradients"):
        gt.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    for q, b in zip(params, before):
        assert torch.equal(q.grad, b)
    with pytest.raises(RuntimeError, match="non-finite"):
        gt.get_total_norm([q.grad for q in params], error_if_nonfinite=True)


def test_conformance_vectors():
    """Vectors V1-V9 of clip_grad_norm_ / clip_grad_value_ as PyTorch 1.13.1
    printed them (tests/cpu/test_conformance.cpp holds the same)."""
    def mk(*gs):
        ps = []
        for g in gs:
            p = torch.nn.Parameter(torch.zeros(len(g)))
            p.grad = torch.tensor(g, dtype=torch.float32)
            ps.append(p)
        return ps

    ps = mk([3, 4], [12])
    assert float(gt.clip_grad_norm_(ps, 6.5)) == 13.0
    torch.testing.assert_close(ps[0].grad, torch.tensor([1.499999881, 1.999999881]), rtol=0, atol=1e-7)
    torch.testing.assert_close(ps[1].grad, torch.tensor([5.999999523]), rtol=0, atol=1e-6)
    ps = mk([3, 4], [12])
    assert float(gt.clip_grad_norm_(ps, 20)) == 13.0
    assert ps[0].grad.tolist() == [3, 4] and ps[1].grad.tolist() == [12]
    ps = mk([-3, 1], [2, -5])
    assert float(gt.clip_grad_norm_(ps, 2, norm_type=math.inf)) == 5.0
    torch.testing.assert_close(ps[1].grad, torch.tensor([0.799999833, -1.999999523]), rtol=0, atol=1e-7)
    ps = mk([1, -2], [3])
    assert float(gt.clip_grad_norm_(ps, 3, norm_type=1)) == 6.0
    torch.testing.assert_close(ps[0].grad, torch.tensor([0.499999940, -0.999999881]), rtol=0, atol=1e-8)
    ps = mk([0, 0, 5], [1, 2, 3], [0, 0])
    assert float(gt.get_total_norm([p.grad for p in ps], norm_type=0)) == 2.0
    ps = mk([0, 0], [0])
    assert float(gt.clip_grad_norm_(ps, 0)) == 0.0 and ps[0].grad.tolist() == [0, 0]
    ps = mk([1, math.inf], [2])
    assert math.isinf(float(gt.clip_grad_norm_(ps, 1)))
    assert ps[0].grad[0] == 0 and math.isnan(ps[0].grad[1]) and ps[1].grad.tolist() == [0]
    ps = mk([3, 4])
    assert float(gt.clip_grad_norm_(ps, -1)) == 5.0  # negative max_norm flips the sign, as PyTorch
    torch.testing.assert_close(ps[0].grad, torch.tensor([-0.599999905, -0.799999833]), rtol=0, atol=1e-7)
    ps = mk([-3, 0.5, 2, math.nan])
    gt.clip_grad_value_(ps, 1)
    torch.testing.assert_close(ps[0].grad, torch.tensor([-1, 0.5, 1, math.nan]), equal_nan=True)
    ps = mk([-3, 0.5, 2, math.nan])
    gt.clip_grad_value_(ps, -1)
    torch.testing.assert_close(ps[0].grad, torch.tensor([-1, -1, -1, math.nan]), equal_nan=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("bound", [1.7, 0.1])
def test_clip_grad_value_matches_torch(rng, device, dtype, bound, monkeypatch):
    # 0.1 is not a float32: float64 gradients are clamped to the double 0.1
    params = make_params(rng, SHAPES, dtype, device, scale=3.0)
    params[0].grad[0, 0] = math.nan
    torch_params = clone_params(params)
    calls = []
    real = gclip._core.Plan.clip_grad_value
    monkeypatch.setattr(gclip._core.Plan, "clip_grad_value",
                        lambda self, *a: (calls.append(a[0]), real(self, *a))[1])
    gt.clip_grad_value_(params, bound)
    if dtype != torch.float64 or gclip._core._HAS_VALUE_F64:
        assert calls == [bound]  # one library call, float64 included where it can be
    torch.nn.utils.clip_grad_value_(torch_params, bound)
    for q, q_t in zip(params, torch_params):
        torch.testing.assert_close(q.grad, q_t.grad, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("device", device_params())
def test_clip_grads_with_norm_matches_torch(rng, device):
    params = make_params(rng, SHAPES, torch.float32, device, scale=2.0)
    torch_params = clone_params(params)
    total = gt.get_total_norm([q.grad for q in params])
    total_t = torch.nn.utils.get_total_norm([q.grad for q in torch_params])
    torch.testing.assert_close(total, total_t)
    assert gt.clip_grads_with_norm_(params, 1.0, total) is None
    torch.nn.utils.clip_grads_with_norm_(torch_params, 1.0, total_t)
    for q, q_t in zip(params, torch_params):
        torch.testing.assert_close(q.grad, q_t.grad)


def _assert_same_grads(params, torch_params):
    for q, q_t in zip(params, torch_params):
        torch.testing.assert_close(q.grad, q_t.grad, equal_nan=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("max_norm", [0.0, 1.0, math.inf])
@pytest.mark.parametrize("total", [-5.0, -3e-7, 0.0, math.inf, math.nan])
def test_clip_grads_with_norm_edge_norms_match_torch(rng, device, max_norm, total):
    # a negative norm flips the gradients' sign in PyTorch (the library refuses
    # it); 0, Inf, NaN norms and max_norm 0 / Inf follow PyTorch's arithmetic
    params = make_params(rng, [(37, 11), (5,), (300,)], torch.float32, device, scale=2.0)
    params[1].grad[2] = math.inf
    torch_params = clone_params(params)
    for where in ("cpu", device):
        gt.clip_grads_with_norm_(params, max_norm, torch.tensor(total, device=where))
        torch.nn.utils.clip_grads_with_norm_(torch_params, max_norm,
                                             torch.tensor(total, device=where))
        _assert_same_grads(params, torch_params)


@pytest.mark.parametrize("device", device_params())
def test_clip_grads_with_norm_negative_norm_flips_sign(rng, device):
    params = make_params(rng, [(4, 5), (7,)], torch.float32, device)
    grads0 = [to_np(q.grad) for q in params]
    gt.clip_grads_with_norm_(params, 1.5, torch.tensor(-2.0, device=device))
    coef = 1.5 / (-2.0 + 1e-6)
    for q, g0 in zip(params, grads0):
        np.testing.assert_allclose(to_np(q.grad), g0 * coef, rtol=1e-6)


@pytest.mark.parametrize("device", device_params())
def test_clip_grads_with_norm_gclip_norm_written_in_place(rng, device):
    # a norm gclip returned, then negated in place, is not trusted as a norm
    params = make_params(rng, [(37, 11), (5,)], torch.float32, device, scale=2.0)
    torch_params = clone_params(params)
    total = gt.get_total_norm([q.grad for q in params])
    total_t = torch.nn.utils.get_total_norm([q.grad for q in torch_params])
    total.neg_()
    total_t.neg_()
    gt.clip_grads_with_norm_(params, 1.0, total)
    torch.nn.utils.clip_grads_with_norm_(torch_params, 1.0, total_t)
    _assert_same_grads(params, torch_params)
    assert float(params[0].grad[0, 0]) * float(torch_params[0].grad[0, 0]) > 0
    total = gt.clip_grad_norm_(params, 1e9)
    total_t = torch.nn.utils.clip_grad_norm_(torch_params, 1e9)
    total.mul_(-0.5)
    total_t.mul_(-0.5)
    gt.clip_grads_with_norm_(params, 1.0, total)
    torch.nn.utils.clip_grads_with_norm_(torch_params, 1.0, total_t)
    _assert_same_grads(params, torch_params)


def _aliased_params(kind, dtype, device, seed):
    """Parameters whose gradients are not disjoint: one listed twice, two
    sharing one .grad, or two .grads overlapping in one buffer."""
    rng = np.random.default_rng(seed)

    def grad(n):
        return torch.from_numpy(rng.standard_normal(n) * 3).to(dtype=dtype, device=device)

    def param(g):
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=dtype, device=device))
        p.grad = g
        return p

    no_grad = torch.nn.Parameter(torch.zeros(1, device=device))
    p, q = param(grad(37)), param(grad(5))
    if kind == "repeated":
        return [no_grad, p, q, p]
    if kind == "shared":
        return [p, q, param(p.grad)]
    buf = grad(50)
    return [param(buf[:30]), q, param(buf[20:])]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", ["repeated", "shared", "overlapping"])
def test_aliased_gradients_match_torch(device, dtype, kind):
    # PyTorch counts a repeated gradient in the norm as often as it is listed
    # and scales it as often (foreach=False: one tensor after the other)
    cases = [
        (lambda ps: gt.clip_grad_norm_(ps, 1.0),
         lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=False)),
        (lambda ps: gt.clip_grad_norm_(ps, 1.0, norm_type=math.inf, nonfinite="skip"),
         lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0, norm_type=math.inf, foreach=False)),
        (lambda ps: gt.clip_grad_value_(ps, 1.0),
         lambda ps: torch.nn.utils.clip_grad_value_(ps, 1.0, foreach=False)),
        (lambda ps: gt.clip_grads_with_norm_(ps, 1.0, torch.tensor(7.0, device=device)),
         lambda ps: torch.nn.utils.clip_grads_with_norm_(ps, 1.0, torch.tensor(7.0, device=device),
                                                         foreach=False)),
    ]
    for k, (ours, theirs) in enumerate(cases):
        seed = 100 + k
        params, torch_params = (_aliased_params(kind, dtype, device, seed) for _ in range(2))
        before = [q.grad.clone() for q in params if q.grad is not None]
        r = ours(params)
        r_t = theirs(torch_params)
        if r_t is None:
            assert r is None
        else:
            torch.testing.assert_close(r, r_t, rtol=0, atol=0)
        grads = [q.grad for q in params if q.grad is not None]
        grads_t = [q.grad for q in torch_params if q.grad is not None]
        for g, g_t, b in zip(grads, grads_t, before):
            torch.testing.assert_close(g, g_t, rtol=0, atol=0)
            assert not torch.equal(g, b)


def test_spans_overlap_finds_shared_memory():
    # the check that sends an aliased list on CUDA to one multiplication per
    # listed tensor instead of one fused kernel (the CPU's foreach already
    # goes tensor by tensor): every way two gradients can meet, and none
    from gclip.torch import _spans_overlap
    buf = torch.arange(60, dtype=torch.float32)
    a, b = torch.ones(7), torch.ones(5)
    m = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    assert not _spans_overlap([a, b])
    assert not _spans_overlap([buf[:30], buf[30:]])          # touching, not sharing
    assert not _spans_overlap([m[:2], m[2:], torch.empty(0), torch.empty(0)])
    assert _spans_overlap([a, b, a])                          # listed twice
    assert _spans_overlap([buf[:30], b, buf[29:]])            # one element shared
    assert _spans_overlap([m[:, :3], m[:, 3:]])               # column blocks interleave
    assert _spans_overlap([buf[::2], buf[1::2]])              # strided views interleave
    assert not _spans_overlap([m.t(), b])                     # a transpose spans its matrix
    assert _spans_overlap([m, m.t()])                         # two views of one matrix


@needs_cuda
def test_drop_ins_are_captured_in_a_cuda_graph(rng):
    # the drop-ins rebind their cached plan before every call; on a stream
    # being captured a rebind to the pointers the plan has records nothing,
    # so steps captured after eager ones (which build the plans) replay as
    # eager steps, bit for bit, on new gradients copied into the same memory
    shapes = [(300,), (17, 9), (4096,), (1,)]
    eager = make_params(rng, shapes, torch.float32, "cuda")
    graphed = clone_params(eager)

    def steps(ps):
        n = gt.clip_grad_norm_(ps, 1.0)
        t = gt.get_total_norm([q.grad for q in ps], 2.0)
        gt.clip_grads_with_norm_(ps, 0.5, t)
        gt.clip_grad_value_(ps, 0.01)
        return n, t

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        steps(graphed)  # the plans are created outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = steps(graphed)
    def on_another_thread(fn):
        # the drop-ins' plan caches are per thread, and `eager` has the
        # shapes of `graphed`: on this thread the eager calls would rebind
        # the plan the graph replays
        box = {}

        def run():
            try:
                box["out"] = fn()
                torch.cuda.synchronize()
            except BaseException as e:  # re-raised below
                box["error"] = e

        t = threading.Thread(target=run)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["out"]

    for k in range(5):
        new = [torch.from_numpy(rng.standard_normal(sh) * (0.1 + k)).to(torch.float32) for sh in shapes]
        for ps in (eager, graphed):
            for q, g in zip(ps, new):
                q.grad.copy_(g)
        torch.cuda.synchronize()
        ref = on_another_thread(lambda: steps(eager))
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(ref, out):
            assert torch.equal(a, b)
        for q, r in zip(graphed, eager):
            assert torch.equal(q.grad, r.grad)


def test_parameters_without_grad_are_skipped_and_empty_inputs(rng):
    params = make_params(rng, [(5,), (6,)], torch.float32, "cpu")
    params.append(torch.nn.Parameter(torch.ones(3)))  # no grad
    n = gt.clip_grad_norm_(params, 1e9)
    assert abs(float(n) - ref_norm([to_np(params[0].grad), to_np(params[1].grad)], 2)) <= 1e-5
    assert params[2].grad is None
    e = gt.clip_grad_norm_([], 1.0)
    assert e.dtype == torch.float32 and float(e) == 0.0 and e.device.type == "cpu"
    assert float(gt.get_total_norm([])) == 0.0
    assert gt.clip_grad_value_([], 1.0) is None
    assert gt.clip_grads_with_norm_([], 1.0, torch.tensor(1.0)) is None
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        gt.clip_grad_norm_((p for p in []), 1.0)
    assert len(w) == 1 and w[0].filename == __file__


def test_generator_input(rng):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    x = torch.from_numpy(rng.standard_normal((3, 8)).astype(np.float32))
    model(x).pow(2).sum().backward()
    ref = ref_norm([to_np(p.grad) for p in model.parameters()], 2)
    n = gt.clip_grad_norm_(model.parameters(), 1e9)
    assert abs(float(n) - ref) <= 1e-6 * ref


def test_reallocated_gradients_are_rebound(rng):
    """Plans are cached by shapes, never by pointers: new gradient tensors
    (zero_grad(set_to_none=True)) every step must be clipped, not the old ones."""
    params = make_params(rng, SHAPES, torch.float32, "cpu")
    for step in range(5):
        keep = [q.grad for q in params]  # hold the old tensors so addresses differ
        for q in params:
            q.grad = torch.from_numpy(rng.standard_normal(q.shape).astype(np.float32) * (step + 1))
        g0 = [to_np(q.grad) for q in params]
        ref = ref_norm(g0, 2)
        n = gt.clip_grad_norm_(params, 0.5)
        assert abs(float(n) - ref) <= 1e-6 * ref
        for q, g in zip(params, g0):
            np.testing.assert_allclose(to_np(q.grad), g * (0.5 / (ref + 1e-6)), rtol=2e-6)
        del keep


def test_channels_last_gradients(rng):
    p = torch.nn.Parameter(torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last))
    p.grad = torch.from_numpy(rng.standard_normal((2, 3, 4, 5)).astype(np.float32)).to(
        memory_format=torch.channels_last)
    g0 = to_np(p.grad)
    ref = ref_norm([g0], 2)
    n = gt.clip_grad_norm_([p], 1.0)
    assert abs(float(n) - ref) <= 1e-6 * ref
    np.testing.assert_allclose(to_np(p.grad), g0 / (ref + 1e-6), rtol=2e-6)


def test_rejected_inputs_change_nothing(rng):
    good = make_params(rng, [(6,)], torch.float32, "cpu")[0]
    before = good.grad.clone()
    # a gradient whose elements share memory (stride 0): PyTorch would raise
    # only when it writes, after scaling the gradients before it
    expanded = torch.nn.Parameter(torch.zeros(4, 3))
    expanded.grad = torch.from_numpy(rng.standard_normal((1, 3)).astype(np.float32)).expand(4, 3)
    for call in (lambda ps: gt.clip_grad_norm_(ps, 0.1), lambda ps: gt.clip_grad_value_(ps, 0.1),
                 lambda ps: gt.clip_grads_with_norm_(ps, 0.1, torch.tensor(5.0)),
                 lambda ps: gt.get_total_norm([q.grad for q in ps])):
        with pytest.raises(ValueError, match="gradient 1 is not dense"):
            call([good, expanded])
    assert torch.equal(good.grad, before)
    sparse = torch.nn.Parameter(torch.zeros(5))
    sparse.grad = torch.sparse_coo_tensor([[1, 3]], [2.0, -1.0], (5,))
    with pytest.raises(TypeError, match="sparse"):
        gt.clip_grad_norm_([good, sparse], 0.1)
    with pytest.raises(TypeError, match="sparse"):
        gt.clip_grad_value_([good, sparse], 0.1)
    assert torch.equal(good.grad, before)
    with pytest.raises(ValueError, match="nonfinite"):
        gt.clip_grad_norm_([good], 0.1, nonfinite="maybe")


def _gapped_params(dtype, device, seed):
    """Three parameters whose gradients are views with gaps into one buffer
    (the even columns; columns 1, 5 and 9 as the rows of a transpose) around
    a dense one,
    and the buffer."""
    rng = np.random.default_rng(seed)
    base = torch.from_numpy(rng.standard_normal((6, 10)) * 3).to(dtype=dtype, device=device)
    dense = torch.from_numpy(rng.standard_normal(7) * 3).to(dtype=dtype, device=device)
    params = []
    for g in (base[:, ::2], dense, base.t()[1::4]):
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=dtype, device=device))
        p.grad = g
        params.append(p)
    return base, params


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_gradients_with_gaps_take_pytorchs_arithmetic(device, dtype):
    """Gradients with gaps (x[:, ::2]; autograd does not make them, an
    assignment to .grad can): the drop-ins give PyTorch's results bit for
    bit, leave the elements between them as they were, and agree with the
    float64 reference."""
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}.get(dtype, 2 * torch.finfo(dtype).eps)

    def f64(t):
        return t.detach().cpu().double().numpy().copy()  # float64 on the CPU: no copy made

    cases = [
        ("clip_grad_norm_", lambda ps: gt.clip_grad_norm_(ps, 1.0),
         lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0)),
        ("clip_grad_norm_ inf", lambda ps: gt.clip_grad_norm_(ps, 1.0, norm_type=math.inf),
         lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0, norm_type=math.inf)),
        ("clip_grad_value_", lambda ps: gt.clip_grad_value_(ps, 0.5),
         lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.5)),
        ("clip_grads_with_norm_",
         lambda ps: gt.clip_grads_with_norm_(ps, 1.0, torch.tensor(9.0, device=device)),
         lambda ps: torch.nn.utils.clip_grads_with_norm_(ps, 1.0, torch.tensor(9.0, device=device))),
        ("get_total_norm", lambda ps: gt.get_total_norm([q.grad for q in ps], norm_type=1.0),
         lambda ps: torch.nn.utils.get_total_norm([q.grad for q in ps], norm_type=1.0)),
    ]
    for k, (name, ours, theirs) in enumerate(cases):
        base, params = _gapped_params(dtype, device, 300 + k)
        base_t, params_t = _gapped_params(dtype, device, 300 + k)
        views = [f64(q.grad) for q in params]
        outside = torch.ones(base.shape, dtype=torch.bool, device=device)
        outside[:, ::2] = False
        outside.t()[1::4] = False
        before_outside = base[outside].clone()
        r, r_t = ours(params), theirs(params_t)
        if r_t is None:
            assert r is None, name
        else:
            assert r.dtype == r_t.dtype and torch.equal(r, r_t), (name, r, r_t)
        assert torch.equal(base, base_t), name
        assert all(torch.equal(q.grad, q_t.grad) for q, q_t in zip(params, params_t)), name
        assert torch.equal(base[outside], before_outside), name
        got = [f64(q.grad) for q in params]
        p = math.inf if name.endswith("inf") else 1.0 if name == "get_total_norm" else 2.0
        ref = ref_norm(views, p)
        if r is not None:
            assert abs(float(r) - ref) <= tol * ref, (name, float(r), ref)
        if name.startswith("clip_grad_norm_") or name == "clip_grads_with_norm_":
            # PyTorch's coefficient is in the norm's dtype: float32 for the given 9.0
            coef = (float(np.float32(1.0) / (np.float32(9.0) + np.float32(1e-6)))
                    if name == "clip_grads_with_norm_" else 1.0 / (ref + 1e-6))
            assert coef < 1.0
            for g, v in zip(got, views):
                np.testing.assert_allclose(g, v * coef, rtol=4 * tol, atol=0)
        elif name == "clip_grad_value_":
            for g, v in zip(got, views):
                np.testing.assert_array_equal(g, np.clip(v, -0.5, 0.5))
            assert any((np.abs(v) > 0.5).any() for v in views)
        else:
            assert all(np.array_equal(g, v) for g, v in zip(got, views)), name


def test_which_strided_layouts_share_memory():
    from gclip.torch import _no_overlap
    x = torch.zeros(6, 10)
    flat = torch.zeros(20)
    assert _no_overlap(x[:, ::2]) and _no_overlap(x.t()[1::3]) and _no_overlap(x[::2, 1:4])
    assert _no_overlap(flat.as_strided((2, 2), (3, 1)))       # rows 3 apart, 2 long: a gap
    assert _no_overlap(flat.as_strided((3, 1), (2, 0)))       # a stride-0 dim of one element
    assert not _no_overlap(flat.as_strided((3, 3), (1, 1)))   # sliding windows share elements
    assert not _no_overlap(flat.as_strided((2, 3), (2, 1)))   # rows 2 apart, 3 long
    assert not _no_overlap(torch.zeros(1, 4).expand(3, 4))


def test_clipper_still_refuses_gradients_with_gaps():
    _, params = _gapped_params(torch.float32, "cpu", 7)
    grads = [q.grad for q in params]
    before = [g.clone() for g in grads]
    with pytest.raises(ValueError, match="gradient 0 is not dense"):
        gt.Clipper().clip_grad_norm(grads)
    assert all(torch.equal(g, b) for g, b in zip(grads, before))


def test_a_gradient_on_another_device_is_refused_wherever_it_stands(rng):
    """A 'meta' tensor (get_device() -1, as a CPU tensor's) after CPU ones,
    with a plan for these shapes already cached: TypeError naming it, as
    when it comes first, and nothing written."""
    def param(g):
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=g.dtype, device=g.device))
        p.grad = g
        return p

    calls = [lambda ps: gt.clip_grad_norm_(ps, 0.1),
             lambda ps: gt.clip_grad_value_(ps, 0.1),
             lambda ps: gt.get_total_norm([p.grad for p in ps]),
             lambda ps: gt.clip_grads_with_norm_(ps, 0.1, torch.tensor(100.0))]
    for call in calls:
        for dtypes in ((torch.float32, torch.float32), (torch.float32, torch.float16)):
            warm = [param(torch.from_numpy(rng.standard_normal(4).astype(np.float32)).to(d))
                    for d in dtypes]
            call(warm)
            cpu = torch.from_numpy(rng.standard_normal(4).astype(np.float32) * 10).to(dtypes[0])
            before = cpu.clone()
            meta = torch.empty(4, dtype=dtypes[1], device="meta")
            for order in ((cpu, meta), (meta, cpu)):
                with pytest.raises(TypeError, match="'meta' device"):
                    call([param(g) for g in order])
                assert torch.equal(cpu, before)


# ---- threads and autograd ------------------------------------------------------------

def _thread_worker(seed, calls, errors, use_list):
    import threading  # noqa: F401  (run inside a thread)
    g = torch.Generator().manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 32))
    for k in range(calls):
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=g) * (seed + 1)
        ref = [p.grad.double().numpy().copy() for p in m.parameters()]
        want = ref_norm(ref, 2.0)
        coef = min(1.0, 1.0 / (want + 1e-6))
        params = list(m.parameters()) if use_list else m.parameters()
        n = float(gt.clip_grad_norm_(params, 1.0))
        t = float(gt.get_total_norm([p.grad for p in m.parameters()]))
        if abs(n - want) > 1e-5 * want or abs(t - want * coef) > 1e-4 * want * coef:
            errors.append(f"seed {seed} call {k}: norm {n} / {t}, want {want}")
        for p, r in zip(m.parameters(), ref):
            if not np.allclose(p.grad.double().numpy(), r * coef, rtol=1e-5, atol=0):
                errors.append(f"seed {seed} call {k}: a gradient is not its own clip")
                break


@pytest.mark.parametrize("use_list", [True, False], ids=["list", "generator"])
def test_threads_clipping_their_own_models_get_their_own_results(use_list):
    # each thread clips its own model of the same shapes: every call must see
    # its own norm and scale its own gradients (one shared plan rebound by
    # another thread between the bind and the run clipped the wrong model)
    import threading
    errors = []
    threads = [threading.Thread(target=_thread_worker, args=(s, 150, errors, use_list))
               for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_in_place_writes_bump_the_autograd_version():
    # gclip writes the gradients' memory itself: like PyTorch's in-place ops
    # it must tell autograd, or a graph that saved the tensor backpropagates
    # through the clipped values without a word
    p = torch.nn.Parameter(torch.zeros(2))
    for call in (lambda ps: gt.clip_grad_norm_(ps, 1.0),
                 lambda ps: gt.clip_grad_norm_(tuple(ps), 1.0),
                 lambda ps: gt.clip_grad_value_(ps, 1.0),
                 lambda ps: gt.clip_grads_with_norm_(ps, 1.0, torch.tensor(5.0))):
        p.grad = torch.tensor([3.0, 4.0])
        v0 = p.grad._version
        call([p])
        assert p.grad._version > v0
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    g = w * 1.0
    loss = (g * g).sum()
    q = torch.nn.Parameter(torch.zeros(2))
    q.grad = g.detach()  # shares g's version counter
    gt.clip_grad_norm_([q], 1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf])
def test_get_total_norm_of_repeated_or_overlapping_tensors_is_pytorchs(p, rng):
    # a norm only reads: a tensor given twice counts twice, as in PyTorch
    g = torch.from_numpy(rng.standard_normal(50).astype(np.float32))
    x = torch.from_numpy(rng.standard_normal(60).astype(np.float32))
    for ts in ([g, g], [x[:40], x[20:]], [g, x[:40], x[20:], g]):
        got = gt.get_total_norm(ts, norm_type=p)
        want = torch.nn.utils.get_total_norm(ts, norm_type=p)
        ref = ref_norm([t.numpy() for t in ts], p)
        assert got.dtype == want.dtype
        assert abs(float(got) - ref) <= 1e-6 * ref
        assert abs(float(got) - float(want)) <= 1e-5 * ref


@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_of_two_dtypes_sharing_memory_are_written_in_pytorchs_order(reverse, rng):
    """A float32 gradient that views a float16 one's bytes: each writing
    drop-in writes the (device, dtype) groups in the order PyTorch's grouping
    gives, whatever the list's, so the shared bytes end as PyTorch's do."""
    data = (rng.standard_normal(8) * 4).astype(np.float16)

    def params():
        h = torch.from_numpy(data.copy())
        p32 = torch.nn.Parameter(torch.zeros(4))
        p32.grad = h.view(torch.float32)
        p16 = torch.nn.Parameter(torch.zeros(8, dtype=torch.float16))
        p16.grad = h
        return h, ([p16, p32] if reverse else [p32, p16])

    for ours, theirs in (
            (lambda ps: gt.clip_grad_value_(ps, 1.0),
             lambda ps: torch.nn.utils.clip_grad_value_(ps, 1.0)),
            (lambda ps: gt.clip_grads_with_norm_(ps, 1.0, torch.tensor(7.0)),
             lambda ps: torch.nn.utils.clip_grads_with_norm_(ps, 1.0, torch.tensor(7.0))),
            (lambda ps: gt.clip_grad_norm_(ps, 1.0),
             lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0))):
        h_ours, ps_ours = params()
        h_theirs, ps_theirs = params()
        ours(ps_ours)
        theirs(ps_theirs)
        assert h_ours.view(torch.int16).tolist() == h_theirs.view(torch.int16).tolist()
        assert h_ours.view(torch.int16).tolist() != torch.from_numpy(data).view(torch.int16).tolist()


def test_a_parameter_whose_grad_is_a_python_property_is_read_through_it(rng):
    """A Parameter subclass that keeps its gradient behind a .grad property:
    the drop-ins read the gradient as PyTorch does, through the property
    (the C++ scan, which reads the tensor's own .grad, hands such a list to
    the general path)."""
    class PropParam(torch.nn.Parameter):
        @property
        def grad(self):
            return self.__dict__.get("_g")

        @grad.setter
        def grad(self, v):
            self.__dict__["_g"] = v

    data = [(rng.standard_normal(s) * 3).astype(np.float32) for s in ((4, 5), (7,))]

    def params():
        ps = [PropParam(torch.zeros(d.shape)) for d in data]
        for q, d in zip(ps, data):
            q.grad = torch.from_numpy(d.copy())
        return ps

    for ours, theirs in ((gt.clip_grad_norm_, torch.nn.utils.clip_grad_norm_),
                         (gt.clip_grad_value_, torch.nn.utils.clip_grad_value_)):
        a, b = params(), params()
        ra, rb = ours(a, 1.0), theirs(b, 1.0)
        if rb is not None:
            assert abs(float(ra) - float(rb)) <= 1e-6 * float(rb) and float(ra) > 1.0
        for x, y in zip(a, b):
            torch.testing.assert_close(x.grad, y.grad, rtol=2e-6, atol=0)
            assert not torch.equal(x.grad, torch.zeros_like(x.grad))
    norm = gt.get_total_norm([q.grad for q in params()])
    assert abs(float(norm) - ref_norm(data, 2.0)) <= 1e-6 * ref_norm(data, 2.0)


@pytest.mark.parametrize("items, error", [
    (("t", None), RuntimeError), ((None, "t"), AttributeError), ((None,), AttributeError),
    ((1.0, "t"), AttributeError), (("t", 1.0), TypeError), (("t", "t", "x"), TypeError),
])
def test_get_total_norm_of_a_list_with_a_non_tensor_raises_as_pytorch(items, error):
    """A None or another object among the tensors: PyTorch's exception type
    (its message differs), gclip's naming the item; nothing is written."""
    def make():
        torch.manual_seed(0)
        return [torch.randn(3) if x == "t" else x for x in items]  # "t": a tensor
    for f in (torch.nn.utils.get_total_norm, gt.get_total_norm):
        with pytest.raises(error):
            f(make())
    lst = make()
    before = [x.clone() for x in lst if isinstance(x, torch.Tensor)]
    k = next(i for i, x in enumerate(lst) if not isinstance(x, torch.Tensor))
    with pytest.raises(error, match=f"gclip: tensor {k} of the list is "):
        gt.get_total_norm(lst)
    assert all(torch.equal(a, b) for a, b in zip(before, [x for x in lst if isinstance(x, torch.Tensor)]))


def test_flush_denormal_mode_changes_no_bit(rng):
    """torch.set_flush_denormal(True) sets flush-to-zero and
    denormals-are-zero on this thread. gclip computes in the default
    environment whatever the caller's, so gradients of subnormal floats give
    the norm and the clipped bits they give without it, and the caller's mode
    is still set afterwards."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-denormal mode")
    torch.set_flush_denormal(False)
    shapes = [(64, 33), (1000,), (7,)]
    # f32 subnormals (below 2^-126), prepared before any mode is set
    tiny = [(rng.uniform(-1.0, 1.0, s) * 2.0**-128).astype(np.float32) for s in shapes]
    ref = ref_norm(tiny, 2.0)
    max_norm = 5e-7  # against eps = 1e-6 in min(1, max_norm / (norm + eps)): a factor of 0.5

    def run(flush):
        params = [torch.nn.Parameter(torch.zeros(a.shape)) for a in tiny]
        for q, a in zip(params, tiny):
            q.grad = torch.from_numpy(a.copy())
        torch.set_flush_denormal(flush)
        try:
            n = gt.clip_grad_norm_(params, max_norm)
            # torch's own arithmetic still flushes when the mode is on
            still = float(torch.full((1,), 2.0**-140) * 3.0) == 0.0
        finally:
            torch.set_flush_denormal(False)
        return n, [q.grad.clone() for q in params], still

    n0, g0, still0 = run(False)
    n1, g1, still1 = run(True)
    assert not still0 and still1
    assert n1.item() > 0.0 and abs(n1.item() - ref) <= 1e-6 * ref
    assert n1.numpy().tobytes() == n0.numpy().tobytes()
    coef = max_norm / (ref + 1e-6)
    for a, x0, x1 in zip(tiny, g0, g1):
        assert x1.numpy().tobytes() == x0.numpy().tobytes()
        assert np.count_nonzero(x1.numpy()) == np.count_nonzero(a)
        np.testing.assert_allclose(x1.numpy(), a.astype(np.float64) * coef, rtol=2e-6, atol=1.5e-45)


# ---- tensors the library cannot take, and PyTorch's own refusals ---------------------------

class _NoMemory(torch.Tensor):
    """A wrapper subclass: a tensor with a shape and no memory of its own;
    `fail` makes every operation on it raise."""

    @staticmethod
    def __new__(cls, elem, fail=False):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype,
                                                device=elem.device, strides=elem.stride(),
                                                dispatch_sizes_strides_policy="strides" if fail
                                                else None)
        r.elem, r.fail = elem, fail
        return r

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if any(getattr(a, "fail", False) for a in args):
            raise NotImplementedError(f"_NoMemory does not support {func}")
        from torch.utils._pytree import tree_map
        unwrap = lambda a: a.elem if isinstance(a, _NoMemory) else a
        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))


def _params_with(grads):
    ps = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=g.dtype))
        p.grad = g
        ps.append(p)
    return ps


def test_an_accessor_that_raises_is_a_python_exception(rng):
    """A gradient whose metadata accessors run Python code that raises (a
    tensor subclass): the drop-ins raise that exception (the C++ scan hands it
    back instead of terminating the process), and nothing is written."""
    plain = torch.from_numpy(rng.standard_normal(7).astype(np.float32))
    before = plain.clone()
    ps = _params_with([plain, _NoMemory(torch.ones(3), fail=True)])
    with pytest.raises(NotImplementedError, match="_NoMemory does not support"):
        gt.clip_grad_norm_(ps, 0.1)
    assert torch.equal(plain, before)


def test_a_gradient_without_memory_takes_pytorchs_arithmetic(rng):
    """A wrapper subclass whose data pointer is 0 (the library would refuse a
    NULL pointer): wherever it stands in the list, the drop-ins take
    PyTorch's arithmetic, which dispatches to its own operations, and give
    torch.nn.utils' results."""
    def values(g):
        return (g.elem if isinstance(g, _NoMemory) else g).clone()

    for order in ("pw", "wp", "ww"):
        data = [rng.standard_normal(7 if c == "p" else 3).astype(np.float32) * 5 for c in order]

        def make():
            return _params_with([torch.from_numpy(d.copy()) if c == "p"
                                 else _NoMemory(torch.from_numpy(d.copy()))
                                 for c, d in zip(order, data)])

        for ours, theirs in (
                (lambda ps: gt.clip_grad_norm_(ps, 0.1),
                 lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.1)),
                (lambda ps: gt.clip_grad_value_(ps, 0.1),
                 lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.1)),
                (lambda ps: gt.clip_grads_with_norm_(ps, 0.1, torch.tensor(7.0)),
                 lambda ps: torch.nn.utils.clip_grads_with_norm_(ps, 0.1, torch.tensor(7.0))),
                (lambda ps: gt.get_total_norm([p.grad for p in ps]),
                 lambda ps: torch.nn.utils.get_total_norm([p.grad for p in ps]))):
            a, b = make(), make()
            ra, rb = ours(a), theirs(b)
            if rb is None:  # the writing ones wrote: every norm here is above 0.1
                assert not torch.equal(values(a[0].grad), torch.from_numpy(data[0]))
            if rb is not None:
                torch.testing.assert_close(ra, rb, rtol=1e-6, atol=0)
            for p, q in zip(a, b):
                torch.testing.assert_close(values(p.grad), values(q.grad), rtol=1e-6, atol=0)


def test_inference_tensors_are_written_only_inside_inference_mode(rng):
    """PyTorch refuses an in-place update of an inference tensor outside
    inference mode; the drop-ins and gclip.torch.Clipper's writing calls
    refuse it too, writing nothing, read it (get_total_norm) and clip it
    inside inference mode."""
    data = rng.standard_normal((3, 5)).astype(np.float32) * 4
    with torch.inference_mode():
        grads = [torch.from_numpy(d.copy()) for d in data]
    norm = gt.get_total_norm(grads)
    torch.testing.assert_close(norm, torch.tensor(float(np.linalg.norm(data.astype(np.float64)))),
                               rtol=1e-6, atol=0)
    def factor_then_apply(ps):
        c = gt.Clipper(max_norm=0.5)
        c.compute_clip_factor(ps)  # reads only
        c.apply_clip_factor()  # the arrays of the last operation may not be written

    inference = (RuntimeError, "gradient 0 is an inference tensor")
    calls = ((lambda ps: gt.clip_grad_norm_(ps, 0.5), inference),
             (lambda ps: gt.clip_grad_value_(ps, 0.5), inference),
             (lambda ps: gt.clip_grads_with_norm_(ps, 0.5, norm), inference),
             (lambda ps: gt.Clipper(max_norm=0.5).clip_grad_norm(ps), inference),
             (lambda ps: gt.Clipper().clip_grad_value(ps, 0.5), inference),
             (lambda ps: gt.ZClip(warmup_steps=2).step(ps), inference),
             (factor_then_apply, (ValueError, "read-only")))
    for call, (error, message) in calls:
        ps = _params_with(grads)
        with pytest.raises(error, match=message):
            call(ps)
        for p, d in zip(ps, data):
            assert torch.equal(p.grad, torch.from_numpy(d))
    with torch.inference_mode():
        ps = _params_with([g.clone() for g in grads])
        gt.clip_grad_norm_(ps, 0.5)
    ref = [torch.from_numpy(d.copy()) for d in data]
    torch.nn.utils.clip_grad_norm_(_params_with(ref), 0.5)
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.grad, r, rtol=1e-6, atol=1e-7)


def test_a_non_leaf_gradient_warns_through_python_warnings():
    """Reading .grad of a non-leaf tensor warns in PyTorch; the C++ scan's
    warning reaches Python's warnings module (catchable, filterable)."""
    x = torch.ones(3, requires_grad=True)
    y = x * 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gt.clip_grad_norm_([y], 1.0)
    assert any(".grad attribute of a Tensor that is not a leaf" in str(w.message) for w in caught)


def test_the_cpp_scan_holds_the_gradients_until_the_step_has_run(monkeypatch):
    """The library runs with the GIL released: another thread may drop a
    .grad meanwhile. The C++ scan holds each gradient it read (one more use
    of its TensorImpl) until release(): clip_grad_norm_'s step runs while
    they are held (seen from inside it), and nothing is held after the
    call, nor after a step that raises."""
    fast = getattr(gt, "_torch_fast", None)
    if fast is None:
        pytest.skip("gclip._torch_fast is not built")
    params = _params_with([torch.full((5,), 2.0), torch.full((3, 2), -1.0)])
    before = [p.grad._use_count() for p in params]
    fast.scan(params, True, 0, 0)
    assert [p.grad._use_count() for p in params] == [u + 1 for u in before]
    fast.release()
    assert [p.grad._use_count() for p in params] == before
    seen = []
    real = gt._run_clip

    def run_and_look(*args):
        seen.append([p.grad._use_count() for p in params])
        return real(*args)

    monkeypatch.setattr(gt, "_run_clip", run_and_look)
    gt.clip_grad_norm_(params, 0.5)
    assert seen == [[u + 1 for u in before]]
    assert [p.grad._use_count() for p in params] == before
    assert not torch.equal(params[0].grad, torch.full((5,), 2.0))
    params[1].grad[0, 0] = math.nan
    with pytest.raises(RuntimeError, match="non-finite"):
        gt.clip_grad_norm_(params, 0.5, error_if_nonfinite=True)
    assert [p.grad._use_count() for p in params] == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_each_drop_in_takes_the_cpp_scan_where_the_library_serves_the_list(monkeypatch, dtype):
    """A list of gradients of one dtype on the CPU: every drop-in that the
    library serves for it binds its plan through the C++ scan (the Python
    path's _bind is not called) and holds the gradients only while it runs.
    Each result is torch.nn.utils' (bit
    for bit where no norm is computed; a norm within 1e-6 of the float64
    one, and the gradients scaled by it)."""
    fast = getattr(gt, "_torch_fast", None)
    if fast is None:
        pytest.skip("gclip._torch_fast is not built")
    rng = np.random.default_rng(41)
    f32 = dtype is torch.float32
    cases = [  # (name, the library serves it, ours, theirs)
        ("clip_grad_norm_", f32, lambda ps: gt.clip_grad_norm_(ps, 1.0),
         lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0)),
        ("value 0.75", True, lambda ps: gt.clip_grad_value_(ps, 0.75),
         lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.75)),
        ("value inf", True, lambda ps: gt.clip_grad_value_(ps, math.inf),
         lambda ps: torch.nn.utils.clip_grad_value_(ps, math.inf)),
        # past float16's range: float32 only (PyTorch refuses it for float16)
        ("value 1e30", f32, lambda ps: gt.clip_grad_value_(ps, 1e30),
         lambda ps: torch.nn.utils.clip_grad_value_(ps, 1e30)),
        ("clip_grads_with_norm_", True, lambda ps: gt.clip_grads_with_norm_(ps, 1.0, torch.tensor(40.0)),
         lambda ps: torch.nn.utils.clip_grads_with_norm_(ps, 1.0, torch.tensor(40.0))),
        ("get_total_norm", f32, lambda ps: gt.get_total_norm([q.grad for q in ps], 3.0),
         lambda ps: torch.nn.utils.get_total_norm([q.grad for q in ps], 3.0)),
    ]
    real_bind = gt._bind
    for name, served, ours, theirs in cases:
        mine = _params_with([torch.from_numpy(rng.standard_normal(s) * 2).to(dtype)
                             for s in [(300,), (7, 9), (1,), (64,)]])
        torch_params = clone_params(mine)
        data = [to_np(q.grad) for q in mine]
        before = [q.grad._use_count() for q in mine]
        bound = []

        def bind(*a, **k):
            bound.append(None)
            return real_bind(*a, **k)
        monkeypatch.setattr(gt, "_bind", bind)
        try:
            r = ours(mine)
        except RuntimeError as e:  # value 1e30 on float16/bfloat16: PyTorch's own error
            assert not served and "overflow" in str(e), name
            assert all(np.array_equal(to_np(q.grad), d) for q, d in zip(mine, data))
            continue
        finally:
            monkeypatch.undo()
        assert [q.grad._use_count() for q in mine] == before, name
        if not served:
            continue  # the Python path (or PyTorch's arithmetic): tested above
        assert not bound, name
        r_t = theirs(torch_params)
        if name.startswith("value") or name == "clip_grads_with_norm_":
            assert r is None and r_t is None
            assert all(torch.equal(q.grad, q_t.grad) for q, q_t in zip(mine, torch_params)), name
            continue
        p = 3.0 if name == "get_total_norm" else 2.0
        ref = ref_norm(data, p)
        assert r.dtype == r_t.dtype and abs(float(r) - ref) <= 1e-6 * ref, name
        assert abs(float(r_t) - ref) <= 1e-5 * ref, name
        if name == "clip_grad_norm_":
            coef = 1.0 / (ref + 1e-6)
            for q, q_t, d in zip(mine, torch_params, data):
                np.testing.assert_allclose(to_np(q.grad), d * coef, rtol=2e-6, atol=0)
                torch.testing.assert_close(q.grad, q_t.grad, rtol=4e-6, atol=0)
        else:
            assert all(np.array_equal(to_np(q.grad), d) for q, d in zip(mine, data))


LOW_LISTS = {"float16": [torch.float16] * 3, "bfloat16": [torch.bfloat16] * 3,
             "mixed": [torch.float16, torch.float32, torch.bfloat16]}


@pytest.mark.parametrize("grads", sorted(LOW_LISTS))
@pytest.mark.parametrize("norm_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("skip", [False, True])
def test_clip_grads_with_norm_of_cpu_gradients_of_any_dtype_is_one_library_call(
        monkeypatch, grads, norm_dtype, skip):
    """float16/bfloat16 (or mixed) CPU gradients, or a float16/bfloat16 norm:
    PyTorch's coefficient, computed in the norm's dtype, multiplies every
    gradient in one library call (nothing written where it is 1), with
    PyTorch's bits, 0-dim gradients included; a NaN or negative coefficient
    and a bound of -0.0 take PyTorch's arithmetic, as PyTorch gives them."""
    rng = np.random.default_rng(77)
    shapes = [(300,), (), (7, 9)]
    calls = []
    real = gt._run_with_factor

    def spy(entry, stream, factor):
        done = real(entry, stream, factor)
        calls.append((factor, done))
        return done
    monkeypatch.setattr(gt, "_run_with_factor", spy)
    for total in [40.0, 0.5, 1e-3, 0.0, math.inf, math.nan, -2.0]:
        for max_norm in [1.0, 0.0, math.inf, -0.0]:
            grads0 = [torch.from_numpy(np.asarray(rng.standard_normal(s) * 3)).to(dt)
                      for s, dt in zip(shapes, LOW_LISTS[grads])]
            for scan in (True, False):  # the C++ scan, and the Python path it falls back to
                mine = _params_with([g.clone() for g in grads0])
                theirs = _params_with([g.clone() for g in grads0])
                norm = torch.tensor(total, dtype=norm_dtype)
                del calls[:]
                if scan:
                    gt.clip_grads_with_norm_(mine, max_norm, norm,
                                             nonfinite="skip" if skip else "propagate")
                else:
                    gt._clip_grads_with_norm_impl([q.grad for q in mine], max_norm, norm, skip)
                if skip and not math.isfinite(total):
                    expected = grads0
                else:
                    torch.nn.utils.clip_grads_with_norm_(theirs, max_norm, norm)
                    expected = [q.grad for q in theirs]
                case = (grads, norm_dtype, skip, total, max_norm, scan)
                for q, e in zip(mine, expected):
                    assert q.grad.dtype == e.dtype and q.grad.shape == e.shape, case
                    assert torch.equal(q.grad.isnan(), e.isnan()), case
                    assert torch.equal(q.grad.nan_to_num(), e.nan_to_num()), case
                    zeros = e == 0
                    assert torch.equal(torch.signbit(q.grad[zeros]), torch.signbit(e[zeros])), case
                # PyTorch's coefficient, in the norm's dtype
                coef = float(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
                skipped = skip and not math.isfinite(total)
                fused = skipped or (coef >= 0 and math.copysign(1.0, coef) > 0)
                assert [done for _, done in calls] == ([True] if fused else []), case
                if fused:
                    assert calls[0][0] == (1.0 if skipped else coef), case


@pytest.mark.parametrize("grads", sorted(LOW_LISTS))
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 0.0])
def test_clip_grad_norm_of_low_precision_cpu_gradients_writes_only_to_clip(
        monkeypatch, grads, norm_type):
    """clip_grad_norm_ on float16/bfloat16 (or mixed) CPU gradients, whose
    norm PyTorch's arithmetic rounds to their dtype (or counts, p = 0): the
    library multiplies them by PyTorch's coefficient in one call, writing
    nothing when it is 1, and the gradients are PyTorch's
    clip_grads_with_norm_ with the norm returned, bit for bit."""
    rng = np.random.default_rng(78)
    calls = []
    real = gt._run_with_factor

    def spy(entry, stream, factor):
        calls.append(factor)
        return real(entry, stream, factor)
    monkeypatch.setattr(gt, "_run_with_factor", spy)
    monkeypatch.setattr(gt, "_apply_coef", None)  # PyTorch's multiply is not reached
    for max_norm in [1e-3, 1e9]:
        grads0 = [torch.from_numpy(np.asarray(rng.standard_normal(s) * 3)).to(dt)
                  for s, dt in zip([(300,), (), (7, 9)], LOW_LISTS[grads])]
        mine = _params_with([g.clone() for g in grads0])
        expected = _params_with([g.clone() for g in grads0])
        del calls[:]
        norm = gt.clip_grad_norm_(mine, max_norm, norm_type)
        assert len(calls) == 1 and (calls[0] == 1.0) == (max_norm == 1e9)
        torch.nn.utils.clip_grads_with_norm_(expected, max_norm, norm)
        assert all(torch.equal(q.grad, e.grad) for q, e in zip(mine, expected))
        if max_norm == 1e9:
            assert all(torch.equal(q.grad, g) for q, g in zip(mine, grads0))


def test_clip_grads_with_norm_leaves_a_float64_norm_to_pytorch(monkeypatch):
    """A float64 norm's coefficient multiplies a 0-dim gradient in double
    and the others rounded to float32: PyTorch's arithmetic takes it, and
    the results are PyTorch's."""
    calls = []
    real = gt._run_with_factor
    monkeypatch.setattr(gt, "_run_with_factor", lambda *a: calls.append(a) or real(*a))
    grads0 = [torch.tensor(-843.1119384765625), torch.tensor([188.84938049316406, -237.86])]
    for dt in (torch.float32, torch.float16):
        mine = _params_with([g.to(dt) for g in grads0])
        theirs = _params_with([g.to(dt) for g in grads0])
        norm = torch.tensor(1e30, dtype=torch.float64)
        gt.clip_grads_with_norm_(mine, 1e6, norm)
        torch.nn.utils.clip_grads_with_norm_(theirs, 1e6, norm)
        assert all(torch.equal(q.grad, t.grad) for q, t in zip(mine, theirs))
    assert not calls


# ---- differences from torch.nn.utils found by a differential fuzz --------------------------

@pytest.mark.parametrize("norm_type", [1e39, 1e300, 1e-46, 1e-300])
def test_norm_types_the_library_reads_as_0_or_inf_take_pytorchs_arithmetic(rng, norm_type):
    # the library reads norm_type as a float32: 1e39 would be its inf-norm
    # and 1e-46 its refused 0; PyTorch computes with the double
    ours = make_params(rng, [(5,), (3, 4)], torch.float32, "cpu")
    theirs = clone_params(ours)
    n_ours = gt.clip_grad_norm_(ours, 1.0, norm_type)
    n_theirs = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    assert torch.equal(n_ours, n_theirs) or (n_ours.isnan() and n_theirs.isnan())
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)
    assert torch.equal(gt.get_total_norm([p.grad for p in ours], norm_type),
                       torch.nn.utils.get_total_norm([p.grad for p in ours], norm_type))


@pytest.mark.parametrize("norm_type", [1e39, 1e-46, 0.0, -1.0, math.nan])
def test_native_api_refuses_norm_types_it_cannot_read(norm_type):
    with pytest.raises(ValueError, match="norm_type"):
        gclip.Clipper(max_norm=1.0, norm_type=norm_type)
    with pytest.raises(ValueError, match="norm_type"):
        gclip.AGCClipper(norm_type=norm_type)
    c = gclip.Clipper(max_norm=1.0)
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="norm_type"):
        c._opts(c._bind([x], 0, False), norm_type=norm_type)
    assert gclip.Clipper(max_norm=1.0, norm_type=3.0e38).norm_type == 3.0e38


def test_clip_value_past_a_dtypes_range_is_refused_before_anything_is_written():
    # PyTorch's clamp refuses 70000 for float16 after clamping its other
    # groups; gclip refuses first, on every path
    for grads, bound in (
            ([torch.tensor([1e5, -1e5]), torch.tensor([1.0, 2.0], dtype=torch.float16)], 70000.0),
            ([torch.tensor([1e5, -1e5])], 1e39),                     # the fused path
            ([torch.tensor([3.0, -3.0], dtype=torch.bfloat16)], 1e39)):
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g
        if len(params) > 1:
            params.append(params[0])  # a repeated gradient: PyTorch's arithmetic
        before = [p.grad.clone() for p in params]
        with pytest.raises(RuntimeError, match="without overflow"):
            gt.clip_grad_value_(params, bound)
        for p, b in zip(params, before):
            assert torch.equal(p.grad, b)
    for dtype, bound in ((torch.float16, 70000.0), (torch.float32, 1e39), (torch.bfloat16, 1e39)):
        p = torch.nn.Parameter(torch.zeros(2, dtype=dtype))
        p.grad = torch.ones(2, dtype=dtype)
        with pytest.raises(RuntimeError, match="without overflow"):
            torch.nn.utils.clip_grad_value_([p], bound)  # PyTorch refuses each of them
    # an infinite bound is no bound, as in PyTorch
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))
    p.grad = torch.tensor([1.0, -3.0], dtype=torch.float16)
    gt.clip_grad_value_([p], math.inf)
    assert p.grad.tolist() == [1.0, -3.0]


def test_total_norm_of_clip_grads_with_norm_must_be_a_0_dim_tensor():
    def params_of(*vals):
        ps = [torch.nn.Parameter(torch.zeros(len(v))) for v in vals]
        for p, v in zip(ps, vals):
            p.grad = torch.tensor(v)
        return ps
    for ps in (params_of([3.0, 4.0]), params_of([3.0, 4.0]) * 2):  # fused, and a repeat
        before = [p.grad.clone() for p in ps]
        with pytest.raises(RuntimeError, match="0 dim"):
            gt.clip_grads_with_norm_(ps, 1.0, torch.tensor([10.0]))
        with pytest.raises(TypeError):
            gt.clip_grads_with_norm_(ps, 1.0, 10.0)
        for p, b in zip(ps, before):
            assert torch.equal(p.grad, b)
    with pytest.raises(RuntimeError, match="0 dim"):
        torch.nn.utils.clip_grads_with_norm_(params_of([3.0, 4.0]), 1.0, torch.tensor([10.0]))
    with pytest.raises(TypeError):
        torch.nn.utils.clip_grads_with_norm_(params_of([3.0, 4.0]), 1.0, 10.0)


def test_items_that_are_not_tensors_are_read_as_pytorch_reads_them():
    class Holder:  # anything with a .grad
        def __init__(self, values):
            self.grad = torch.tensor(values)
    ours, theirs = [Holder([3.0, 4.0]), Holder([12.0])], [Holder([3.0, 4.0]), Holder([12.0])]
    n = gt.clip_grad_norm_(ours, 1.0)
    assert torch.equal(n, torch.nn.utils.clip_grad_norm_(theirs, 1.0))
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)
    with pytest.raises(AttributeError):
        gt.clip_grad_norm_([None], 1.0)
    with pytest.raises(AttributeError):
        torch.nn.utils.clip_grad_norm_([None], 1.0)


def test_mixed_dtype_norms_are_combined_in_pytorchs_order(rng):
    # PyTorch stacks the per-tensor norms group by group ((device, dtype),
    # in its grouping's order), not in list order; float16 and float64 norms
    # come from the same kernels in both, so the totals are bitwise equal
    for _ in range(60):
        tensors = [torch.from_numpy(rng.standard_normal(int(rng.integers(1, 300)))).to(
                       [torch.float16, torch.float64][int(rng.integers(0, 2))])
                   for _ in range(int(rng.integers(2, 8)))]
        assert torch.equal(gt.get_total_norm(tensors, 2.0),
                           torch.nn.utils.get_total_norm(tensors, 2.0))


def test_a_call_nested_in_the_scan_takes_the_general_path():
    # a warnings hook (here: the warning for a non-leaf tensor's .grad) that
    # clips runs inside the outer call's scan; it must not take the outer
    # call's pointers or release its gradients
    n = 1 << 16
    p = torch.nn.Parameter(torch.zeros(n))
    p.grad = torch.full((n,), 1.0)  # norm 256
    leaf = torch.zeros(3, requires_grad=True)
    nonleaf = leaf * 2
    arena = torch.full((n,), 7.0)
    q = torch.nn.Parameter(torch.zeros(16))
    q.grad = arena[:16]
    inner = []
    old = warnings.showwarning

    def hook(message, category, filename, lineno, file=None, line=None):
        if not inner:
            inner.append(float(gt.clip_grad_norm_([q], 1e9)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = hook
            total = gt.clip_grad_norm_([nonleaf, p], 1.0)
    finally:
        warnings.showwarning = old
    assert inner == [28.0]
    assert float(total) == 256.0
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-6)
    assert bool((arena == 7.0).all())


def test_a_call_nested_between_the_outer_calls_bind_and_run_uses_plans_of_its_own(monkeypatch):
    # a handler that clips gradients of the same shapes after the outer call
    # bound its plan, before the plan ran: it must not rebind that plan
    n = 1000
    p = torch.nn.Parameter(torch.zeros(n))
    p.grad = torch.full((n,), 1.0)
    q = torch.nn.Parameter(torch.zeros(n))
    q.grad = torch.full((n,), 2.0)
    real = gt._run_clip
    inner = []

    def run_clip(entry, *a, **k):
        if not inner:
            inner.append(None)  # the nested call runs this too: once only
            inner[0] = float(gt.clip_grad_norm_([q], 1.0))
        return real(entry, *a, **k)
    monkeypatch.setattr(gt, "_run_clip", run_clip)
    total = gt.clip_grad_norm_([p], 1.0)
    assert inner == [pytest.approx(math.sqrt(4000.0), rel=1e-6)]
    assert float(total) == pytest.approx(math.sqrt(1000.0), rel=1e-6)
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    assert float(q.grad.norm()) == pytest.approx(1.0, rel=1e-5)
