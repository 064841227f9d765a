"""Adaptive clipping from Python (gclip.adaptive, gclip.torch.ZClip /
QuantileClip / AdaGC / SpikeSkip / adaptive_clip_grad, gclip.AdaptiveClipper):
vectors derived by hand (ZClip, AutoClip), runs side
by side with the reference packages over a few hundred steps with synthetic
spikes, checkpoints that resume bit for bit, rejected hyperparameters and
NaN norms that never enter the statistics."""

import dataclasses
import io
import math
import struct
import warnings
from collections import deque
from fractions import Fraction

import numpy as np
import pytest
import torch

import gclip
import gclip.torch as gt
from conftest import needs_cuda

SHAPES = [(16, 8), (16,), (4, 16), (4,)]  # Linear(8, 16) -> Linear(16, 4)


def make_model(device="cpu"):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 4)).to(device)


def gradient_stream(rng, steps, *, base=0.5, tensor_spikes=False):
    """Seeded training-like gradients: a total norm drifting around `base`
    with noise, a spike of 5-30x every 37 steps, and (tensor_spikes) one
    tensor alone spiking every 11 steps. Never all zeros."""
    for k in range(steps):
        target = base * (1.0 + 0.3 * math.sin(k / 17.0)) * (1.0 + 0.1 * rng.standard_normal())
        if k % 37 == 36:
            target *= rng.uniform(5.0, 30.0)
        gs = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        total = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in gs))
        gs = [(g * (target / total)).astype(np.float32) for g in gs]
        if tensor_spikes and k % 11 == 10:
            i = int(rng.integers(len(gs)))
            gs[i] = (gs[i] * rng.uniform(10.0, 50.0)).astype(np.float32)
        yield gs


def set_grads(model, gs):
    for p, g in zip(model.parameters(), gs):
        p.grad = torch.from_numpy(g.copy()).to(p.device)


def grads_of(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def assert_grads_close(a, b, rtol=3e-6):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-9)


def assert_grads_equal(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def scalar_param(x):
    p = torch.zeros(1, requires_grad=True)
    p.grad = torch.tensor([x], dtype=torch.float32)
    return p


# ---- hand-derived vectors ----------------------------------------------------------------

def run_vector14(**kwargs):
    z = gt.ZClip(warmup_steps=2, max_grad_norm=None, **kwargs)
    for x in (1.0, 3.0):
        p = scalar_param(x)
        assert z.step([p]).item() == x
        assert p.grad.item() == x
    return z


def test_zclip_vector14_zscore_adaptive_scaling():
    """Norms 1, 3 warm up (mean 2, var 1); 7 is an outlier: z = 4.999995,
    T = 3.25000125, coef 0.46428583 and the EMAs take in T; 2.5 is not
    clipped."""
    z = run_vector14()
    assert z.initialized and z.mean == 2.0 and z.var == 1.0
    p = scalar_param(7.0)
    norm = z.step([p])
    assert norm.dim() == 0 and norm.dtype == torch.float32 and norm.item() == 7.0
    info = z.info()
    assert info.spike and not info.warmup and info.recorded
    assert info.threshold == pytest.approx(3.25000125, abs=1e-6)
    assert info.clip_coef == pytest.approx(0.46428583, abs=1e-7)
    assert torch.equal(p.grad, torch.tensor([7.0]) * torch.tensor([info.clip_coef]))
    assert z.mean == pytest.approx(2.0375000375, abs=1e-9)
    assert z.var == pytest.approx(1.0141047757, abs=1e-9)
    p = scalar_param(2.5)
    z.step([p])
    assert p.grad.item() == 2.5 and not z.info().spike
    assert z.mean == pytest.approx(2.051375036, abs=1e-9)
    assert z.var == pytest.approx(0.9897195632, abs=1e-9)


def test_zclip_vector14_mean_and_percentile_modes():
    z = run_vector14(clip_option="mean")
    z.step([scalar_param(7.0)])
    assert z.info().clip_coef == pytest.approx(0.28571424, abs=1e-7)
    assert z.info().threshold == 2.0
    z = run_vector14(mode="percentile")
    z.step([scalar_param(7.0)])
    assert z.info().threshold == 4.5
    assert z.info().clip_coef == pytest.approx(0.64285705, abs=1e-7)
    assert z.mean == 0.97 * 2.0 + (1 - 0.97) * 4.5


def test_zclip_eps_is_the_zscore_eps():
    """eps divides the z-score (z = 5 / 1.5 after vector 14's warm-up), not
    the coefficient: T = 2 + 2.5 / (z / 2.5) = 3.875, coef = T / (7 + 1e-6)."""
    z = run_vector14(eps=0.5)
    z.step([scalar_param(7.0)])
    assert z.info().threshold == 3.875
    assert z.info().clip_coef == np.float32(3.875 / (7.0 + np.float32(1e-6)))


@pytest.mark.parametrize("global_threshold", [True, False])
def test_autoclip_vector15_and_first_step(global_threshold):
    """After norms 1, 2, 3, 4, 10 the 10th percentile is 1.4: a norm of 10
    is clipped by 0.139999986. The first step does not clip."""
    p = scalar_param(1.0)
    q = gt.QuantileClip([p], quantile=0.1, global_threshold=global_threshold)
    q.step()
    assert p.grad.item() == 1.0
    if global_threshold:
        assert math.isinf(q.info().threshold)
    for x in (2.0, 3.0, 4.0, 10.0):
        p.grad = torch.tensor([x])
        q.step()
    p.grad = torch.tensor([10.0])
    q.step()
    coef = p.grad.item() / 10.0
    assert coef == pytest.approx(0.139999986, abs=2e-8)
    if global_threshold:
        assert q.info().threshold == pytest.approx(1.4, abs=1e-7)
        assert q.info().clip_coef == pytest.approx(0.139999986, abs=2e-8)
    assert q.statistics()["histories"][0].tolist() == [1, 2, 3, 4, 10, 10]


# ---- side by side with the references ------------------------------------------------------

ZCLIP_CASES = [
    {},
    {"max_grad_norm": 0.6, "warmup_steps": 30},  # the cap clips in and after the warm-up
    {"max_grad_norm": None},
    {"max_grad_norm": None, "mode": "percentile"},
    {"max_grad_norm": None, "clip_option": "mean", "warmup_steps": 10},
    {"max_grad_norm": 5.0, "skip_update_on_spike": True, "clip_factor": 0.8, "z_thresh": 2.0},
]


@pytest.mark.parametrize("kwargs", ZCLIP_CASES, ids=lambda k: ",".join(k) or "defaults")
def test_zclip_matches_reference(rng, kwargs):
    zclip = pytest.importorskip("zclip", reason="the reference package zclip==1.0.0")
    ref, ours = zclip.ZClip(**kwargs), gt.ZClip(**kwargs)
    m_ref, m_ours = make_model(), make_model()
    spikes = 0
    for k, gs in enumerate(gradient_stream(rng, 300)):
        set_grads(m_ref, gs)
        set_grads(m_ours, gs)
        warm = not ref.initialized
        expected = None
        if not warm:
            g = ref._compute_grad_norm(m_ref)
            t = ref._compute_clip_val(g)
            adaptive = t if t is not None else g
            expected = adaptive if ref.max_grad_norm is None else min(adaptive, ref.max_grad_norm)
            spikes += t is not None
        n_ref = ref.step(m_ref)
        n = ours.step(m_ours)
        assert n.dim() == 0 and n.item() == pytest.approx(n_ref, rel=1e-6), k
        assert_grads_close(grads_of(m_ours), grads_of(m_ref))
        info = ours.info()
        assert info.warmup == warm, k
        if not warm:
            assert info.threshold == pytest.approx(expected, rel=1e-5), k
            assert info.spike == (t is not None), k
        if ref.initialized:
            st = ours.statistics()
            assert st["mean"] == pytest.approx(ref.mean, rel=1e-5), k
            assert st["var"] == pytest.approx(ref.var, rel=1e-4, abs=1e-12), k
    assert spikes >= 3  # the run exercised the outlier rule


@pytest.mark.parametrize("case", ["per_tensor", "global", "groups"])
def test_quantileclip_matches_autoclip(rng, case):
    autoclip = pytest.importorskip("autoclip.torch", reason="the reference package autoclip==0.2.1")
    m_ref, m_ours = make_model(), make_model()

    def groups(m):
        if case != "groups":
            return m.parameters()
        ps = list(m.parameters())
        return [{"params": ps[:2], "quantile": 0.5}, {"params": ps[2:], "history_length": 17}]

    kw = {"quantile": 0.9, "history_length": 40, "global_threshold": case == "global"}
    ref = autoclip.QuantileClip(groups(m_ref), **kw)
    ours = gt.QuantileClip(groups(m_ours), **kw)
    params_ref = list(m_ref.parameters())
    clipped = 0
    for k, gs in enumerate(gradient_stream(rng, 250, tensor_spikes=True)):
        set_grads(m_ref, gs)
        set_grads(m_ours, gs)
        ref.step()
        ours.step()
        after = grads_of(m_ours)
        # the quantile is torch.quantile's bit for bit on the same history
        # (test below); the norms in the histories are gclip's (summed in
        # double) and torch's (in float), an ulp or two apart
        assert_grads_close(after, grads_of(m_ref), rtol=1e-6)
        clipped += sum(not torch.equal(a, torch.from_numpy(g)) for a, g in zip(after, gs))
        if case == "global":
            hist = [ref.state["global_history"]]
            mine = ours.statistics()["histories"]
        else:
            hist = [ref.state[p]["history"] for p in params_ref]
            mine = ours.statistics(0)["histories"]
            if case == "groups":
                mine = mine + ours.statistics(1)["histories"]
        assert len(mine) == len(hist)
        for a, b in zip(mine, hist):
            torch.testing.assert_close(a, b.reshape(-1), rtol=1e-6, atol=0)
    assert clipped > 20


# ---- torch.quantile's arithmetic, written out -------------------------------------------

def _round_f32(x: Fraction) -> np.float32:
    """The float32 nearest to the exact value x (ties to even)."""
    c = np.float32(float(x))  # within one float32 step of the answer
    best = None
    for y in (np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))):
        err = abs(Fraction(float(y)) - x)
        if best is None or err < best[0] or (err == best[0] and not int(y.view(np.uint32)) & 1):
            best = (err, y)
    return best[1]


def _fma_f32(a, b, c) -> np.float32:
    """a * b + c in float32, rounded once."""
    return _round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def _lerp_f32(start, end, w, fused: bool) -> np.float32:
    """torch.lerp's two formulas in float32: start + w (end - start) for
    |w| < 0.5, else end - (end - start)(1 - w); each product and sum rounded
    once (fused) or the product and the sum rounded separately."""
    f = np.float32
    d = f(end - start)
    if abs(w) < f(0.5):
        return _fma_f32(w, d, start) if fused else f(start + f(w * d))
    return _fma_f32(-d, f(f(1) - w), end) if fused else f(end - f(d * f(f(1) - w)))


def _quantile_f32(values, q: float, rank_in_double: bool = True, fused: bool = True) -> np.float32:
    """torch.quantile(values, q) with linear interpolation, in float32 (q a
    float32, as torch makes it a tensor of the values' dtype): the rank
    q * (n - 1), in double and its fraction rounded to a float weight (what
    gclip documents, kernels/gclip_adapt_math.h gclip_quantile) or all in
    float32 (older PyTorch), and the two neighbours interpolated by lerp."""
    s = np.sort(np.asarray(values, dtype=np.float32))
    n, qf = len(s), np.float32(q)
    if rank_in_double:
        rank = float(qf) * (n - 1)
        lo, hi = int(rank), math.ceil(rank)
        w = np.float32(rank - lo)
    else:
        rank = np.float32(qf * np.float32(n - 1))
        lo, hi = int(rank), int(np.ceil(rank))
        w = np.float32(rank - np.float32(lo))
    return _lerp_f32(s[lo], s[hi], w, fused)


def _torch_quantile_arithmetic():
    """(rank_in_double, fused) of the installed PyTorch's CPU torch.quantile,
    read from torch.quantile itself, or None if it is none of these."""
    # the lerp: over two values the rank is q itself, in either precision
    rng = np.random.default_rng(7)
    pairs = [(np.sort(rng.uniform(0.1, 30.0, 2).astype(np.float32)),
              float(np.float32(rng.uniform(0.0, 1.0)))) for _ in range(400)]
    got = [torch.quantile(torch.from_numpy(p), q).numpy().tobytes() for p, q in pairs]
    lerps = [fused for fused in (True, False)
             if all(_quantile_f32(p, q, True, fused).tobytes() == g
                    for (p, q), g in zip(pairs, got))]
    if not lerps:
        return None
    # the rank: a jump of 1e7 after index 899 makes the weight of q=0.9 over
    # 1000 values visible (double: w = 0.0999761..., float32: 0.0999755...)
    v = np.arange(1000, dtype=np.float32)
    v[900:] += np.float32(1e7)
    got = torch.quantile(torch.from_numpy(v), 0.9).numpy().tobytes()
    ranks = [r for r in (True, False) if _quantile_f32(v, 0.9, r, lerps[0]).tobytes() == got]
    if len(ranks) != 1:
        return None
    return ranks[0], lerps[0]


def test_quantile_reference_is_torch_quantile_arithmetic():
    """The written-out reference against values worked by hand."""
    f = np.float32
    # rank 1.5 over [1, 2, 4]: w = 0.5 takes the second formula, 4 - 2 * 0.5
    assert _quantile_f32([4, 1, 2], 0.75) == f(3.0)
    assert _quantile_f32([5.0], 0.3) == f(5.0)
    assert _quantile_f32([1, 3], 0.0) == f(1.0) and _quantile_f32([1, 3], 1.0) == f(3.0)
    # rounding to nearest, ties to even
    assert _round_f32(Fraction(1) + Fraction(1, 2 ** 24)) == f(1.0)
    assert _round_f32(Fraction(1) + Fraction(3, 2 ** 24)) == f(1 + 2 ** -22)
    # a * a = 1 + 2^-11 + 2^-24 exactly: fused, + 2^-24 is exact; rounded
    # separately, both roundings are ties that go to 1 + 2^-11
    a = f(1 + 2 ** -12)
    assert _fma_f32(a, a, f(2 ** -24)) == f(1 + 2 ** -11 + 2 ** -23)
    assert f(f(a * a) + f(2 ** -24)) == f(1 + 2 ** -11)
    # the rank in float32 loses what double keeps: 0.9 * 999 over a jump
    v = np.arange(1000, dtype=np.float32)
    v[900:] += f(1e7)
    assert abs(float(_quantile_f32(v, 0.9, True)) - float(_quantile_f32(v, 0.9, False))) > 1.0


@pytest.mark.parametrize("q", [0.9, 0.1, 0.37, 0.999])
def test_autoclip_threshold_is_torch_quantile_bitwise_at_history_1000(rng, q):
    """A global history of 1000 norms: after every step the threshold the
    next step uses is torch.quantile(history, q) as gclip documents it, bit
    for bit (the rank in double, the weight in float, torch.lerp's fused
    formulas), against the formula written out here at every step. The
    installed torch.quantile must match the same formula with its own
    arithmetic (probed from it), so gclip's threshold equals it bit for bit
    when that is gclip's; an older PyTorch that takes the rank in float32
    (2.11 on CPU) rounds the weight otherwise, and that is reported rather
    than failed."""
    arithmetic = _torch_quantile_arithmetic()
    assert arithmetic is not None, (
        f"torch {torch.__version__}: torch.quantile is neither the rank in double nor in float32, "
        "with a fused or a separately rounded lerp")
    rank_in_double, fused = arithmetic
    torch_is_gclips = arithmetic == (True, True)
    clipper = gclip.AdaptiveClipper("autoclip", quantile=q, history_length=1000,
                                    global_threshold=True)
    g = np.zeros(64, dtype=np.float32)
    history = deque(maxlen=1000)
    checked, differ, max_ulps = 0, 0, 0
    for k in range(1150):
        g[:] = rng.standard_normal(64).astype(np.float32) * np.float32(rng.uniform(0.1, 3.0))
        norm = float(np.float32(np.sqrt(np.sum(g.astype(np.float64) ** 2))))
        clipper.step([g])
        info = clipper.info()
        if history:
            ours = np.float32(info.threshold)
            assert ours.tobytes() == _quantile_f32(history, q).tobytes(), k
            want = torch.quantile(torch.tensor(list(history), dtype=torch.float32), q).numpy()
            assert want.tobytes() == _quantile_f32(history, q, rank_in_double, fused).tobytes(), k
            if torch_is_gclips:
                assert ours.tobytes() == want.tobytes(), k
            elif ours.tobytes() != want.tobytes():
                differ += 1
                max_ulps = max(max_ulps, abs(int(ours.view(np.int32)) - int(want.view(np.int32))))
            checked += 1
        history.append(info.total_norm)
        assert info.total_norm == pytest.approx(norm, rel=1e-6)
    assert checked == 1149
    if not torch_is_gclips:
        warnings.warn(
            f"torch {torch.__version__}: torch.quantile takes the rank in "
            f"{'double' if rank_in_double else 'float32'} with a "
            f"{'fused' if fused else 'separately rounded'} lerp; gclip's threshold (the rank in "
            f"double, fused lerp) differs from it at {differ} of {checked} steps for q={q}, by at "
            f"most {max_ulps} ulp, and equals the formula written out at every step")


def scalar_stream(rng, steps, count):
    """Seeded single-element gradients: magnitudes drifting around 0.5 with
    noise, a spike of 5-30x every 37 steps, random signs; never zero. A
    tensor of one element has the norm |x| exactly in every library, so a
    reference's coefficient arithmetic can be compared bit for bit."""
    for k in range(steps):
        base = 0.5 * (1.0 + 0.3 * math.sin(k / 17.0))
        xs = []
        for _ in range(count):
            x = base * (0.05 + abs(1.0 + 0.25 * rng.standard_normal()))
            if k % 37 == 36:
                x *= rng.uniform(5.0, 30.0)
            xs.append(float(np.float32(x if rng.random() < 0.5 else -x)))
        yield xs


@pytest.mark.parametrize("case", ["local", "global"])
def test_quantileclip_bit_for_bit_with_autoclip_on_single_elements(rng, case):
    """The reference clips with clip_grad_norm_(max_norm=threshold), which
    takes the threshold as a Python float: coef = threshold * (1 / (N +
    1e-6)), two roundings, not one division. On one-element tensors (exact
    norms on both sides) every clipped gradient and every history is the
    reference's, bit for bit."""
    autoclip = pytest.importorskip("autoclip.torch", reason="the reference package autoclip==0.2.1")
    count = 3 if case == "local" else 1
    ref_ps = [torch.zeros(1, requires_grad=True) for _ in range(count)]
    our_ps = [torch.zeros(1, requires_grad=True) for _ in range(count)]
    kw = {"quantile": 0.9, "history_length": 40, "global_threshold": case == "global"}
    ref = autoclip.QuantileClip(ref_ps, **kw)
    ours = gt.QuantileClip(our_ps, **kw)
    clipped = 0
    for k, xs in enumerate(scalar_stream(rng, 400, count)):
        for p, q, x in zip(ref_ps, our_ps, xs):
            p.grad = torch.tensor([x], dtype=torch.float32)
            q.grad = torch.tensor([x], dtype=torch.float32)
        ref.step()
        ours.step()
        for i, (p, q, x) in enumerate(zip(ref_ps, our_ps, xs)):
            assert torch.equal(q.grad, p.grad), (f"step {k} tensor {i}: {x!r} clipped to "
                                                 f"{q.grad.item()!r}, the reference "
                                                 f"{p.grad.item()!r}")
            clipped += q.grad.item() != x
        hist = ([ref.state["global_history"]] if case == "global"
                else [ref.state[p]["history"] for p in ref_ps])
        mine = ours.statistics()["histories"]
        assert len(mine) == len(hist)
        for a, b in zip(mine, hist):
            assert torch.equal(a, b.reshape(-1)), f"step {k}"
    assert clipped > 40


def test_adagc_bit_for_bit_with_pytorch_optimizer_on_a_single_element(rng):
    """gamma <- gamma.lerp(||g'||, 1 - beta): PyTorch's lerp rounds each of its
    formulas once (a fused multiply-add). On a one-element tensor (its norm
    exact on both sides, and ||g'|| = h ||g|| the reference's too) every
    clipped gradient and every gamma is the reference's, bit for bit."""
    po = pytest.importorskip("pytorch_optimizer", reason="the reference package pytorch-optimizer")
    ref_p = torch.zeros(1, requires_grad=True)
    our_p = torch.zeros(1, requires_grad=True)
    ref = po.AdaGC([ref_p], lr=1e-3, betas=(0.0, 0.999), weight_decay=0.0,
                   warmup_steps=20, lambda_abs=0.45)
    ours = gt.AdaGC(warmup_steps=20, lambda_abs=0.45)
    clipped = 0
    for k, (x,) in enumerate(scalar_stream(rng, 400, 1)):
        ref_p.grad = torch.tensor([x], dtype=torch.float32)
        our_p.grad = torch.tensor([x], dtype=torch.float32)
        ref.step()
        ours.step([our_p])
        want = ref.state[ref_p]["exp_avg"]
        assert torch.equal(our_p.grad, want), (f"step {k}: {x!r} clipped to "
                                               f"{our_p.grad.item()!r}, the reference "
                                               f"{want.item()!r}")
        gamma = ours.statistics()["gamma"]
        assert torch.equal(gamma.reshape(()), ref.state[ref_p]["gamma"].reshape(())), f"step {k}"
        clipped += our_p.grad.item() != x and k >= 20
    assert clipped > 20


def test_adagc_eps_zero_and_zero_gradients_as_the_reference(rng):
    """eps = 0 passes validation, as in the reference: an all-zero gradient
    in the warm-up leaves gamma at 0, and that tensor's gradient is zeroed
    at every step after the warm-up; an all-zero gradient after the warm-up gives 0 / 0, and gamma
    and the gradient turn NaN for good. Two one-element tensors (exact norms
    on both sides), the second zeroed at steps 2 and 9, the first never:
    each gradient and gamma is the reference's, NaN for NaN."""
    po = pytest.importorskip("pytorch_optimizer", reason="the reference package pytorch-optimizer")
    ref_ps = [torch.zeros(1, requires_grad=True) for _ in range(2)]
    our_ps = [torch.zeros(1, requires_grad=True) for _ in range(2)]
    ref = po.AdaGC(ref_ps, lr=1e-3, betas=(0.0, 0.999), weight_decay=0.0,
                   warmup_steps=5, lambda_abs=0.45, eps=0.0)
    ours = gt.AdaGC(warmup_steps=5, lambda_abs=0.45, eps=0.0)
    xs = rng.standard_normal((14, 2)).astype(np.float32) + np.float32(0.5)
    xs[2, 1] = xs[9, 1] = 0.0
    for k in range(len(xs)):
        for rp, op, x in zip(ref_ps, our_ps, xs[k]):
            rp.grad = torch.tensor([x])
            op.grad = torch.tensor([x])
        ref.step()
        ours.step(our_ps)
        gamma = ours.statistics()["gamma"].reshape(-1)
        for i, (rp, op) in enumerate(zip(ref_ps, our_ps)):
            want = ref.state[rp]["exp_avg"]
            assert torch.equal(op.grad, want) or (op.grad.isnan().all() and want.isnan().all()), \
                f"step {k} tensor {i}: {op.grad.item()!r}, the reference {want.item()!r}"
            g_ref = ref.state[rp]["gamma"].reshape(())
            assert torch.equal(gamma[i], g_ref) or (gamma[i].isnan() and g_ref.isnan()), \
                f"step {k} tensor {i}: gamma {gamma[i].item()!r}, the reference {g_ref.item()!r}"
        if 4 <= k < 9:  # after the warm-up (steps 0-3), zeroed: its gamma is 0 since step 2
            assert our_ps[1].grad.item() == 0.0 and our_ps[0].grad.item() != 0.0, f"step {k}"
        if k >= 9:
            assert our_ps[1].grad.isnan().all() and not our_ps[0].grad.isnan().any(), f"step {k}"


def test_adagc_matches_pytorch_optimizer(rng):
    po = pytest.importorskip("pytorch_optimizer", reason="the reference package pytorch-optimizer")
    m_ref, m_ours = make_model(), make_model()
    # beta1 = 0 makes the reference's exp_avg its clipped gradient, exactly;
    # no weight decay, so the gradients reach the clipping as given
    ref = po.AdaGC(m_ref.parameters(), lr=1e-3, betas=(0.0, 0.999), weight_decay=0.0,
                   warmup_steps=20, lambda_abs=0.45)
    ours = gt.AdaGC(warmup_steps=20, lambda_abs=0.45)
    params_ref = list(m_ref.parameters())
    clipped = warm_clipped = 0
    for k, gs in enumerate(gradient_stream(rng, 200, tensor_spikes=True)):
        set_grads(m_ref, gs)
        set_grads(m_ours, gs)
        ref.step()
        n = ours.step(m_ours)
        assert n.item() == pytest.approx(math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                                       for g in gs)), rel=1e-6)
        info = ours.info()
        assert info.warmup == (k + 1 < 20)
        assert_grads_close(grads_of(m_ours), [ref.state[p]["exp_avg"] for p in params_ref],
                           rtol=1e-5)
        gamma = ours.statistics()["gamma"]
        torch.testing.assert_close(gamma, torch.stack([ref.state[p]["gamma"].reshape(())
                                                       for p in params_ref]),
                                   rtol=1e-5, atol=0)
        clipped += info.clipped if not info.warmup else 0
        warm_clipped += info.warmup and info.clipped > 0
    assert clipped > 10 and warm_clipped > 3


def spike_skip_rule(window, min_values, sigma):
    """Spike skipping: z-score over the rolling window (unbiased
    std), a skipped step's norm kept out of it."""
    values = deque(maxlen=window)

    def step(norm):
        skip, threshold = False, math.inf
        if len(values) >= min_values:
            n = len(values)
            mean = sum(values) / n
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
            skip = (norm - mean) / std > sigma
            threshold = mean + sigma * std
        if not skip:
            values.append(norm)
        return skip, threshold, list(values)
    return step


def test_spike_skip_matches_the_window_rule(rng):
    ref = spike_skip_rule(32, 8, 3.0)
    ours = gt.SpikeSkip(window=32, min_values=8, sigma=3.0)
    model = make_model()
    skips = 0
    for k, gs in enumerate(gradient_stream(rng, 300)):
        set_grads(model, gs)
        norm = float(torch.linalg.vector_norm(torch.cat([torch.from_numpy(g).reshape(-1)
                                                         for g in gs])))
        skip, threshold, window = ref(norm)
        flag = ours.step(model)
        assert flag.dim() == 0 and flag.dtype == torch.int32
        assert bool(flag) == skip, k
        assert_grads_equal(grads_of(model), [torch.from_numpy(g) for g in gs])
        info = ours.info()
        assert info.threshold == pytest.approx(threshold, rel=1e-5), k
        assert ours.result().op == "adaptive_skip"
        torch.testing.assert_close(ours.statistics()["window"],
                                   torch.tensor(window, dtype=torch.float32), rtol=1e-6, atol=0)
        skips += skip
    assert skips >= 3


# How far gclip's AGC may be from timm's, per dtype. gclip sums each unit's
# norm in double in a fixed order (docs/adaptive.md, "AGC") and rounds it
# once to float; PyTorch sums in float in its own order, so the two factors
# can differ by a few float roundings (f64: double roundings). timm also
# rounds the norms, max_norm and the factor of a bf16 tensor to bf16, where
# gclip keeps them in float: up to two bf16 roundings apart.
AGC_RTOL = {torch.float32: 4e-6, torch.float64: 1e-14, torch.bfloat16: 2.0 ** -6}


def agc_pair(dtype, shapes, rng, zero_units=(5,)):
    """Parameters with gradients whose units lie on both sides of the trigger,
    and a copy of them."""
    torch.manual_seed(int(rng.integers(1 << 30)))
    a = []
    for k, s in enumerate(shapes):
        w = torch.randn(s, dtype=dtype) * (0.0 if k in zero_units else 1.0)  # eps applies
        p = torch.nn.Parameter(w)
        unit = (s[0],) + (1,) * (len(s) - 1) if len(s) > 1 else ()
        scale = 10.0 ** torch.empty(unit).uniform_(-4.0, 0.0)  # some units clipped, some not
        p.grad = (torch.randn(s) * scale).to(dtype)
        a.append(p)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        q.grad = p.grad.clone()
    return a, b


def assert_units_match(ref, ours, before, params, rtol, clip_factor, eps=1e-3, norm_type=2.0):
    """Each unit kept by both (bit for bit) or clipped by both (within rtol);
    a unit one side keeps and the other clips must lie within rtol of the
    threshold. Returns (clipped, kept) unit counts."""
    changed = kept = 0
    for r, o, g, w in zip(ref, ours, before, params):
        rows = lambda t: t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
        for ru, ou, gu, wu in zip(rows(r), rows(o), rows(g), rows(w)):
            ref_kept, our_kept = torch.equal(ru, gu), torch.equal(ou, gu)
            if ref_kept != our_kept:
                gn = gu.double().norm(norm_type)
                mx = wu.double().norm(norm_type).clamp(min=eps) * clip_factor
                assert abs(float(gn / mx) - 1.0) < rtol, (float(gn), float(mx))
                continue
            if ref_kept:
                kept += 1
            else:
                torch.testing.assert_close(ou, ru, rtol=rtol, atol=0)
                changed += 1
    return changed, kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("clip_factor", [0.01, 0.3])
def test_adaptive_clip_grad_matches_timm(rng, dtype, norm_type, clip_factor):
    agc = pytest.importorskip("timm.utils.agc", reason="the reference package timm")
    shapes = [(8, 3, 3, 3), (16, 8), (16,), (), (1, 10), (6, 4), (3, 20000)]
    a, b = agc_pair(dtype, shapes, rng)
    before = [p.grad.clone() for p in a]
    agc.adaptive_clip_grad(a, clip_factor=clip_factor, norm_type=norm_type)
    gt.adaptive_clip_grad(b, clip_factor=clip_factor, norm_type=norm_type)
    rtol = AGC_RTOL[dtype] * (4 if norm_type == 3.0 else 1)  # torch's pow and root
    changed, kept = assert_units_match([p.grad for p in a], [q.grad for q in b], before,
                                       [p.detach() for p in a], rtol, clip_factor,
                                       norm_type=norm_type)
    assert changed and kept  # both sides of the trigger were exercised


def test_adaptive_clip_grad_conformance_vector():
    """An AGC vector in timm's row layout, derived by hand: unit
    norms of W 5 and 0 (eps 1e-3), max_norm 0.5 and 1e-4, both units scaled by
    0.1; the bias W = 0, g = [3e-5, 4e-5] at clip_factor 0.01 by 0.2."""
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    w.grad = torch.tensor([[3.0, 4.0], [0.0, 0.001]])
    gt.adaptive_clip_grad([w], clip_factor=0.1)
    torch.testing.assert_close(w.grad, torch.tensor([[0.3, 0.4], [0.0, 1e-4]]), rtol=2e-7, atol=0)
    b = torch.nn.Parameter(torch.zeros(2))
    b.grad = torch.tensor([3e-5, 4e-5])
    gt.adaptive_clip_grad(b, clip_factor=0.01)
    torch.testing.assert_close(b.grad, torch.tensor([6e-6, 8e-6]), rtol=3e-7, atol=0)


def test_adaptive_clip_grad_nonfinite_units_as_timm(rng):
    agc = pytest.importorskip("timm.utils.agc", reason="the reference package timm")
    a, b = agc_pair(torch.float32, [(6, 5)], rng, zero_units=())
    for ps in (a, b):
        with torch.no_grad():
            ps[0].grad[0, 1] = math.nan     # NaN gradient: the unit is NaN
            ps[0].grad[1, 2] = math.inf     # Inf gradient: factor 0
            ps[0][2, 3] = math.nan          # NaN parameter: the unit is NaN
            ps[0][3, 0] = math.inf          # Inf parameter: the unit is kept
    agc.adaptive_clip_grad(a, clip_factor=0.01)
    gt.adaptive_clip_grad(b, clip_factor=0.01)
    ref, ours = a[0].grad, b[0].grad
    assert torch.equal(torch.isnan(ref), torch.isnan(ours))
    assert torch.isnan(ours[0]).all() and torch.isnan(ours[2]).all()
    assert torch.isnan(ours[1, 2]) and (ours[1, [0, 1, 3, 4]] == 0).all()
    torch.testing.assert_close(ours[3:], ref[3:], rtol=AGC_RTOL[torch.float32], atol=0)


def test_adaptive_clip_grad_matches_optax(rng):
    """optax.adaptive_grad_clip reduces over every axis but the last (an
    input-output layout): gclip on the transposed weight is the same clip."""
    optax = pytest.importorskip("optax", reason="the reference package optax")
    jnp = pytest.importorskip("jax.numpy")
    a, b = agc_pair(torch.float32, [(12, 7), (9,)], rng, zero_units=())
    w_io = [a[0].detach().T.contiguous().numpy(), a[1].detach().numpy()]
    g_io = [a[0].grad.T.contiguous().numpy(), a[1].grad.numpy()]
    tx = optax.adaptive_grad_clip(0.05)
    updates, _ = tx.update([jnp.asarray(g) for g in g_io], tx.init(None),
                           [jnp.asarray(w) for w in w_io])
    gt.adaptive_clip_grad(b, clip_factor=0.05)
    ref = [torch.tensor(np.asarray(updates[0])).T, torch.tensor(np.asarray(updates[1]))]
    before = [a[0].grad, a[1].grad]
    changed, kept = assert_units_match(ref, [b[0].grad, b[1].grad], before,
                                       [a[0].detach(), a[1].detach()], 4e-6, 0.05)
    assert changed and kept


def test_adaptive_clip_grad_rejects_bad_hyperparameters():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    for kw in (dict(clip_factor=0.0), dict(clip_factor=-1.0), dict(clip_factor=math.inf),
               dict(eps=-1e-3), dict(eps=math.nan), dict(norm_type=0.0), dict(norm_type=-2.0)):
        with pytest.raises(ValueError):
            gt.adaptive_clip_grad([p], **kw)
    assert torch.equal(p.grad, torch.ones(3))


def test_adaptive_clip_grad_strided_gradients_take_pytorch_operations(rng):
    """A non-contiguous gradient (or parameter) goes through PyTorch
    operations: the same result as timm within the float tolerance."""
    agc = pytest.importorskip("timm.utils.agc", reason="the reference package timm")
    a, b = agc_pair(torch.float32, [(10, 6), (8, 4)], rng, zero_units=())
    b[0].grad = b[0].grad.T.contiguous().T  # same values, column-major
    before = [p.grad.clone() for p in a]
    agc.adaptive_clip_grad(a, clip_factor=0.02)
    gt.adaptive_clip_grad(b, clip_factor=0.02)
    changed, kept = assert_units_match([p.grad for p in a], [q.grad for q in b], before,
                                       [p.detach() for p in a], 4e-6, 0.02)
    assert changed + kept == 18


def test_agc_clipper_on_numpy_matches_torch(rng):
    """gclip.AGCClipper (any __dlpack__ arrays) gives the bits of
    gclip.torch.adaptive_clip_grad."""
    a, b = agc_pair(torch.float32, [(16, 8), (16,), (4, 16)], rng, zero_units=())
    ws = [p.detach().numpy().copy() for p in a]
    gs = [p.grad.numpy().copy() for p in a]
    clipper = gclip.AGCClipper(clip_factor=0.02)
    clipper.step(ws, gs)
    gt.adaptive_clip_grad(b, clip_factor=0.02)
    for g, q in zip(gs, b):
        assert torch.equal(torch.from_numpy(g), q.grad)
    assert clipper.result().op == "agc"
    with pytest.raises(ValueError):
        gclip.AGCClipper(clip_factor=0.0)


@needs_cuda
def test_agc_clipper_refuses_parameters_on_another_device_than_the_gradients(rng):
    ws = [torch.ones(4, 3)]
    gs = [torch.ones(4, 3, device="cuda")]
    clipper = gclip.AGCClipper(clip_factor=0.02)
    with pytest.raises(ValueError, match="parameter 0 lives on device -1, the gradients on 0"):
        clipper.step(ws, gs)
    assert torch.equal(gs[0], torch.ones(4, 3, device="cuda"))


def test_adaptive_clip_grad_single_tensor_and_missing_grad():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([3.0, 4.0])
    q = torch.nn.Parameter(torch.ones(3))
    gt.adaptive_clip_grad(p, clip_factor=0.1)
    gt.adaptive_clip_grad([q])
    torch.testing.assert_close(p.grad, torch.tensor([0.3, 0.4]), rtol=1e-6, atol=0)
    assert q.grad is None


# ---- checkpoints -------------------------------------------------------------------------

def build(kind, model):
    return {
        "zclip": lambda: gt.ZClip(warmup_steps=10),
        "zclip_nocap": lambda: gt.ZClip(warmup_steps=10, max_grad_norm=None),
        "autoclip": lambda: gt.QuantileClip(model.parameters(), quantile=0.75, history_length=9),
        "autoclip_global": lambda: gt.QuantileClip(model.parameters(), history_length=9,
                                                   global_threshold=True),
        "adagc": lambda: gt.AdaGC(warmup_steps=8),
        "spike_skip": lambda: gt.SpikeSkip(window=12, min_values=4, sigma=2.0),
    }[kind]()


def run_step(kind, clipper, model):
    if kind.startswith("autoclip"):
        clipper.step()
        return None
    return clipper.step(model)


KINDS = ["zclip", "zclip_nocap", "autoclip", "autoclip_global", "adagc", "spike_skip"]


def step_in_lockstep(kind, a, m_a, b, m_b, grads):
    """Step clippers a and b on the same gradients: returned values and
    clipped gradients equal bit for bit."""
    for gs in grads:
        set_grads(m_a, gs)
        set_grads(m_b, gs)
        ra, rb = run_step(kind, a, m_a), run_step(kind, b, m_b)
        if ra is not None:
            assert torch.equal(ra, rb)
        assert_grads_equal(grads_of(m_a), grads_of(m_b))


def assert_same_steps(kind, a, m_a, b, m_b, grads):
    """step_in_lockstep, then their states equal."""
    step_in_lockstep(kind, a, m_a, b, m_b, grads)
    sa, sb = a.state_dict(), b.state_dict()
    if kind.startswith("autoclip"):
        sa, sb = sa["clippers"][0], sb["clippers"][0]
    assert torch.equal(sa["state"], sb["state"])
    assert sa["hyperparameters"] == sb["hyperparameters"]


@pytest.mark.parametrize("warm_importer", [False, True], ids=["fresh", "used"])
@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_resumes_bit_identically(rng, kind, warm_importer):
    """Stop at step 23, save with torch.save, load into a new clipper (fresh,
    or one that already ran other steps), continue: returned values,
    gradients and state equal the uninterrupted run bit for bit."""
    stream = list(gradient_stream(rng, 70, tensor_spikes=True))
    m_a, m_b = make_model(), make_model()
    a, b = build(kind, m_a), build(kind, m_b)
    for gs in stream[:23]:
        set_grads(m_a, gs)
        run_step(kind, a, m_a)
    if warm_importer:
        for gs in stream[40:45]:
            set_grads(m_b, gs)
            run_step(kind, b, m_b)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert_same_steps(kind, a, m_a, b, m_b, stream[23:])


def test_load_state_dict_restores_hyperparameters_and_rejects_foreign_state(rng):
    m = make_model()
    z = gt.ZClip(warmup_steps=5, max_grad_norm=None)
    for gs in gradient_stream(rng, 8):
        set_grads(m, gs)
        z.step(m)
    sd = z.state_dict()
    other = gt.ZClip()
    other.load_state_dict(sd)
    assert other.warmup_steps == 5 and other.max_grad_norm is None
    before = z.state_dict()
    spike = gt.SpikeSkip()
    set_grads(m, next(gradient_stream(rng, 1)))
    spike.step(m)
    bad = [
        dict(sd, method="adagc"),
        dict(sd, hyperparameters=dict(sd["hyperparameters"], alpha=1.5)),
        dict(sd, state=spike.state_dict()["state"]),
        dict(sd, state=torch.zeros(40, dtype=torch.uint8)),
        dict(sd, state=sd["state"][:20]),
    ]
    for d in bad:
        with pytest.raises(ValueError):
            z.load_state_dict(d)
    after = z.state_dict()
    assert torch.equal(before["state"], after["state"])
    assert before["hyperparameters"] == after["hyperparameters"]
    # per-tensor state of another tensor count: refused at load, nothing changed
    q = gt.QuantileClip(m.parameters())
    q.step()
    q2 = gt.QuantileClip(list(m.parameters())[:2])
    q2.step()
    saved = q2.state_dict()
    with pytest.raises(ValueError):
        q2.load_state_dict(q.state_dict())
    assert torch.equal(q2.state_dict()["clippers"][0]["state"], saved["clippers"][0]["state"])


@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_into_a_stepped_clipper_keeps_its_device_state(rng, kind):
    """A clipper that has stepped takes a state of the same hyperparameters in
    place: its info record (and state) stay at their addresses, which a CUDA
    graph captured on it holds, and it resumes the saver bit for bit. A state
    saved before the first step resets it in place to a fresh clipper's."""
    stream = list(gradient_stream(rng, 60, tensor_spikes=True))
    m_a, m_b, m_f = make_model(), make_model(), make_model()
    a, b, fresh = build(kind, m_a), build(kind, m_b), build(kind, m_f)
    unstepped = build(kind, m_f).state_dict()
    for gs in stream[:20]:
        set_grads(m_a, gs)
        run_step(kind, a, m_a)
    for gs in stream[30:36]:
        set_grads(m_b, gs)
        run_step(kind, b, m_b)
    address = b.device_info()["total_norm"].data_ptr()
    b.load_state_dict(a.state_dict())
    assert b.device_info()["total_norm"].data_ptr() == address
    assert_same_steps(kind, a, m_a, b, m_b, stream[20:40])
    assert b.device_info()["total_norm"].data_ptr() == address
    b.load_state_dict(unstepped)
    assert b.device_info()["total_norm"].data_ptr() == address
    assert_same_steps(kind, fresh, m_f, b, m_b, stream[40:])


def test_load_state_dict_of_other_hyperparameters_into_a_stepped_clipper(rng):
    """Other hyperparameters need a new state: the stepped clipper builds one
    and resumes the saver (of those hyperparameters) bit for bit."""
    stream = list(gradient_stream(rng, 50))
    m_a, m_b = make_model(), make_model()
    a = gt.ZClip(warmup_steps=4, alpha=0.9, max_grad_norm=None)
    b = gt.ZClip(warmup_steps=10)
    for gs in stream[:15]:
        set_grads(m_a, gs)
        a.step(m_a)
        set_grads(m_b, gs)
        b.step(m_b)
    b.load_state_dict(a.state_dict())
    assert b.alpha == 0.9 and b.warmup_steps == 4 and b.max_grad_norm is None
    for gs in stream[15:]:
        set_grads(m_a, gs)
        set_grads(m_b, gs)
        assert torch.equal(a.step(m_a), b.step(m_b))
        assert_grads_equal(grads_of(m_a), grads_of(m_b))
    assert torch.equal(a.state_dict()["state"], b.state_dict()["state"])


def test_a_clipper_that_has_not_stepped_checks_a_loaded_state_whole(rng):
    """Before its first step a clipper has no tensors to load a state into; it
    checks the state when it is loaded, as a clipper that has stepped does:
    a cut or header-corrupted state raises ValueError there and leaves the
    clipper fresh, and a whole one resumes the saved clipper bit for bit."""
    m = make_model()
    for make in (lambda: gt.ZClip(warmup_steps=3), lambda: gt.AdaGC(warmup_steps=3),
                 lambda: gt.SpikeSkip()):
        saved = make()
        for gs in gradient_stream(rng, 6):
            set_grads(m, gs)
            saved.step(m)
        sd = saved.state_dict()
        raw = bytes(sd["state"].numpy())
        header = bytearray(raw)
        struct.pack_into("=I", header, 16, 2 ** 31)  # the histories named
        for bad in (raw[:-4], raw[:40], bytes(header)):
            fresh = make()
            with pytest.raises(ValueError):
                fresh.load_state_dict(dict(sd, state=torch.frombuffer(bytearray(bad),
                                                                      dtype=torch.uint8)))
            assert fresh.state_dict()["state"] is None
            gs = next(gradient_stream(rng, 1))
            set_grads(m, gs)
            fresh.step(m)  # a fresh clipper's first step
            assert fresh.statistics()["steps"] == 1
        resumed = make()
        resumed.load_state_dict(sd)
        gs = next(gradient_stream(rng, 1))
        set_grads(m, gs)
        saved.step(m)
        want = grads_of(m)
        set_grads(m, gs)
        resumed.step(m)
        assert_grads_equal(grads_of(m), want)
        assert torch.equal(resumed.state_dict()["state"], saved.state_dict()["state"])


# ---- bad input -----------------------------------------------------------------------------

def _params():
    return make_model().parameters()


INVALID = {
    "zclip_alpha_1": lambda: gt.ZClip(alpha=1.0),
    "zclip_alpha_0": lambda: gt.ZClip(alpha=0.0),
    "zclip_z_thresh_negative": lambda: gt.ZClip(z_thresh=-2.5),
    "zclip_z_thresh_nan": lambda: gt.ZClip(z_thresh=float("nan")),
    "zclip_max_grad_norm_negative": lambda: gt.ZClip(max_grad_norm=-1.0),
    "zclip_max_grad_norm_zero": lambda: gt.ZClip(max_grad_norm=0.0),
    "zclip_eps_negative": lambda: gt.ZClip(eps=-1e-6),
    "zclip_warmup_0": lambda: gt.ZClip(warmup_steps=0),
    "zclip_mode": lambda: gt.ZClip(mode="median"),
    "zclip_clip_option": lambda: gt.ZClip(clip_option="max"),
    "zclip_clip_factor": lambda: gt.ZClip(clip_factor=0.0),
    "quantile_above_1": lambda: gt.QuantileClip(_params(), quantile=1.5),
    "quantile_negative": lambda: gt.QuantileClip(_params(), quantile=-0.1),
    "quantile_nan": lambda: gt.QuantileClip(_params(), quantile=float("nan")),
    "history_length_0": lambda: gt.QuantileClip(_params(), history_length=0),
    "group_quantile": lambda: gt.QuantileClip([{"params": list(_params()), "quantile": 2.0}]),
    "empty_parameters": lambda: gt.QuantileClip([]),
    "adagc_beta_1": lambda: gt.AdaGC(beta=1.0),
    "adagc_lambda_rel_negative": lambda: gt.AdaGC(lambda_rel=-1.0),
    "adagc_lambda_abs_zero": lambda: gt.AdaGC(lambda_abs=0.0),
    "adagc_eps_negative": lambda: gt.AdaGC(eps=-1e-8),
    "adagc_warmup_negative": lambda: gt.AdaGC(warmup_steps=-1),
    # finite doubles that are Inf or 0 as the float32 the step uses
    "adagc_eps_past_float32": lambda: gt.AdaGC(eps=1e39),
    "adagc_lambda_abs_past_float32": lambda: gt.AdaGC(lambda_abs=1e39),
    "adagc_lambda_rel_below_float32": lambda: gt.AdaGC(lambda_rel=1e-50),
    "spike_window_1": lambda: gt.SpikeSkip(window=1),
    "spike_min_values_above_window": lambda: gt.SpikeSkip(min_values=200),
    "spike_sigma_negative": lambda: gt.SpikeSkip(sigma=-6.0),
    "native_method": lambda: gclip.AdaptiveClipper("median"),
    "native_quantile": lambda: gclip.AdaptiveClipper("autoclip", quantile=2.0),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_hyperparameters_raise_value_error(name):
    with pytest.raises(ValueError):
        INVALID[name]()


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError):
        gt.QuantileClip(_params(), history_length=2.5)
    with pytest.raises(TypeError):
        gt.ZClip(alpha="0.9")
    with pytest.raises(TypeError):
        gclip.AdaptiveClipper("zclip", quantile=0.5)


def test_hyperparameters_are_read_only():
    z = gt.ZClip(alpha=0.9)
    assert z.alpha == 0.9 and z.mode == "zscore"
    with pytest.raises(AttributeError):
        z.alpha = 0.5


def test_rejected_step_changes_nothing(rng):
    """A gradient with gaps, or gradients on two dtypes of one per-tensor
    state, is refused before any gradient or statistic is written."""
    z = gt.ZClip(warmup_steps=3)
    good = [torch.from_numpy(g) for g in next(gradient_stream(rng, 1))]
    for _ in range(4):
        z.step([g.clone() for g in good])
    state = z.state_dict()["state"]
    grads = [g.clone() * 10 for g in good]
    strided = torch.randn(4, 8, generator=torch.Generator().manual_seed(785))[:, ::2]
    with pytest.raises(ValueError):
        z.step(grads + [strided])
    assert_grads_equal(grads, [g * 10 for g in good])
    assert torch.equal(z.state_dict()["state"], state)

    m = make_model()
    q = gt.QuantileClip(m.parameters())
    set_grads(m, next(gradient_stream(rng, 1)))
    q.step()
    saved = q.state_dict()["clippers"][0]["state"]
    params = list(m.parameters())
    params[1].grad = None
    kept = params[0].grad.clone()
    with pytest.raises(ValueError, match="per tensor"):
        q.step()
    assert torch.equal(params[0].grad, kept)
    assert torch.equal(q.state_dict()["clippers"][0]["state"], saved)


def test_refused_group_of_a_quantile_clip_leaves_every_group_unclipped(rng):
    """QuantileClip over two groups whose second gradient has gaps: the step
    is refused before the first group is clipped or recorded; a retry with a
    dense gradient then goes on as a twin that never saw the refusal."""
    m, m_twin = make_model(), make_model()
    groups = lambda mm: [{"params": list(mm.parameters())[:2]},
                         {"params": list(mm.parameters())[2:]}]
    q = gt.QuantileClip(groups(m), quantile=0.0, history_length=5)
    twin = gt.QuantileClip(groups(m_twin), quantile=0.0, history_length=5)
    stream = list(gradient_stream(rng, 4))
    step_in_lockstep("autoclip", q, m, twin, m_twin, stream[:2])
    saved = q.state_dict()
    set_grads(m, [g * 20 for g in stream[2]])  # group 0 would be clipped
    params = list(m.parameters())
    params[2].grad = torch.randn(4, 32, generator=torch.Generator().manual_seed(5))[:, ::2]
    before = [p.grad.clone() for p in params]
    with pytest.raises(ValueError, match="not dense"):
        q.step()
    assert_grads_equal([p.grad for p in params], before)
    for a, b in zip(q.state_dict()["clippers"], saved["clippers"]):
        assert torch.equal(a["state"], b["state"])
    step_in_lockstep("autoclip", q, m, twin, m_twin, stream[2:])


@pytest.mark.parametrize("first_group", ["same", "other"])
def test_a_quantile_clip_load_that_fails_on_the_device_changes_no_group(rng, monkeypatch,
                                                                         first_group):
    """QuantileClip over two groups loads each group's state in place; the
    second group's import fails (a device failure, injected): the error is
    raised, the first group is put back as it was, and both go on as a twin
    that never saw the load. The first group's loaded state has the same
    hyperparameters (imported in place) or another quantile (a new state,
    which the undo must drop for the one of before)."""
    m, m_twin, m_other = make_model(), make_model(), make_model()
    q0 = 0.5 if first_group == "same" else 0.75
    groups = lambda mm, q=0.5: [{"params": list(mm.parameters())[:2], "quantile": q},
                                {"params": list(mm.parameters())[2:]}]
    q = gt.QuantileClip(groups(m), quantile=0.5, history_length=5)
    twin = gt.QuantileClip(groups(m_twin), quantile=0.5, history_length=5)
    other = gt.QuantileClip(groups(m_other, q0), quantile=0.5, history_length=5)
    stream = list(gradient_stream(rng, 10, tensor_spikes=True))
    step_in_lockstep("autoclip", q, m, twin, m_twin, stream[:4])
    for gs in stream[4:7]:  # other histories
        set_grads(m_other, gs)
        other.step()
    target = other.state_dict()
    saved = q.state_dict()
    assert any(not torch.equal(a["state"], b["state"])
               for a, b in zip(saved["clippers"], target["clippers"]))
    first, second = q._clippers[0]._adaptive, q._clippers[1]._adaptive
    adaptive_cls = type(second)
    real_load = adaptive_cls.load
    imports = []  # the in-place imports into q's groups (not the CPU probes)

    def failing_load(self, data):
        if self is first or self is second:
            imports.append(self)
            if self is second:
                raise RuntimeError("gclip: injected device failure of the import")
        return real_load(self, data)

    monkeypatch.setattr(adaptive_cls, "load", failing_load)
    with pytest.raises(RuntimeError, match="injected device failure"):
        q.load_state_dict(target)
    # the first group is put back: imported again in place, or its state of
    # before taken back from the new one
    assert imports == ([first, second, first] if first_group == "same" else [second, first])
    monkeypatch.setattr(adaptive_cls, "load", real_load)
    assert q._clippers[0]._adaptive is first and q._clippers[1]._adaptive is second
    assert [g["quantile"] for g in q.parameter_groups] == [0.5, 0.5]
    for a, b in zip(q.state_dict()["clippers"], saved["clippers"]):
        assert torch.equal(a["state"], b["state"])
        assert a["hyperparameters"] == b["hyperparameters"]
    step_in_lockstep("autoclip", q, m, twin, m_twin, stream[4:])
    # and without the failure the same load installs every group
    q.load_state_dict(target)
    assert [g["quantile"] for g in q.parameter_groups] == [q0, 0.5]
    for a, b in zip(q.state_dict()["clippers"], target["clippers"]):
        assert torch.equal(a["state"], b["state"])
        assert a["hyperparameters"] == b["hyperparameters"]


def test_quantile_clip_without_gradients_does_nothing(rng):
    """A step where no parameter has a gradient changes nothing, as the
    reference's; a step that drops some gradients of a per-tensor state is
    refused with both counts."""
    m, m_twin = make_model(), make_model()
    q = gt.QuantileClip(m.parameters(), history_length=5)
    twin = gt.QuantileClip(m_twin.parameters(), history_length=5)
    stream = list(gradient_stream(rng, 6))
    step_in_lockstep("autoclip", q, m, twin, m_twin, stream[:3])
    saved = q.state_dict()["clippers"][0]["state"]
    for p in m.parameters():
        p.grad = None
    q.step()
    assert torch.equal(q.state_dict()["clippers"][0]["state"], saved)
    step_in_lockstep("autoclip", q, m, twin, m_twin, stream[3:5])
    set_grads(m, stream[5])
    list(m.parameters())[1].grad = None
    with pytest.raises(ValueError, match="4 at the last step, 3 now"):
        q.step()


@pytest.mark.parametrize("kind", [k for k in KINDS if not k.startswith("autoclip")])
def test_tensors_that_require_grad_are_parameters(rng, kind):
    """A tensor that requires grad but is not a leaf (a parameter moved or
    cast, as `p.to(...)` gives) is read as PyTorch's clip_grad_norm_ reads
    it: its .grad, None skipped. Its values are never written."""
    leaf = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(6).astype(np.float32)))
    w = leaf * 1.0
    values = w.detach().clone()
    (w * 2).sum().backward()
    clipper = build(kind, None)
    for _ in range(12):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PyTorch's non-leaf .grad warning
            clipper.step([w])
        assert torch.equal(w.detach(), values)
    # with retain_grad its .grad is the gradient: clipped as the same
    # gradient given alone, the tensor's values still untouched
    w = leaf * 1.0
    w.retain_grad()
    (w * 20).sum().backward()
    alone = w.grad.clone()
    a, b = build(kind, None), build(kind, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a.step([w])
    b.step([alone])
    assert torch.equal(w.detach(), values)
    assert torch.equal(w.grad, alone)
    if kind in ("zclip", "adagc"):  # their warm-up clips a norm of about 49 to 1
        assert float(w.grad.norm()) < 1.01


@pytest.mark.parametrize("kind", ["zclip", "adagc", "spike_skip"])
def test_step_failed_at_execution_decides_nothing(rng, kind):
    """A step whose inv_scale tensor is out of range when it runs (+Inf)
    fails in the result slot: the gradients, the state and the skip count
    stay as they were, and no spike is reported, on gradients that are one."""
    m = make_model()
    clipper = build(kind, m)
    stream = list(gradient_stream(rng, 16))
    for gs in stream[:15]:
        set_grads(m, gs)
        clipper.step(m)
    saved = clipper.state_dict()["state"]
    skipped = clipper.statistics().get("skipped")
    spike = [g * 40 for g in stream[15]]
    set_grads(m, spike)
    returned = clipper.step(m, inv_scale=torch.tensor(float("inf")))
    with pytest.raises(gclip.GclipError):
        clipper.result()
    assert_grads_equal(grads_of(m), [torch.from_numpy(g) for g in spike])
    assert torch.equal(clipper.state_dict()["state"], saved)
    assert clipper.statistics().get("skipped") == skipped
    assert not clipper.info().spike and not clipper.info().recorded
    if kind == "spike_skip":
        assert int(returned) == 0
    # the same gradients in a valid step are a spike
    returned = clipper.step(m)
    if kind != "adagc":
        assert clipper.info().spike
    if kind == "spike_skip":
        assert int(returned) == 1


@pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True")
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_that_require_grad_are_clipped_as_detached_ones(rng, kind):
    """After backward(create_graph=True) each .grad requires grad itself:
    every clipper given the parameters clips those gradients bit for bit as
    a twin clips the same values detached."""
    m, m_twin = make_model(), make_model()
    clipper, twin = build(kind, m), build(kind, m_twin)
    x = torch.from_numpy(rng.standard_normal((5, 8)).astype(np.float32))
    for k in range(14):
        for p in m.parameters():
            p.grad = None
        scale = 40.0 if k % 6 == 5 else 1.0
        (m(x * scale) ** 2).sum().backward(create_graph=True)
        assert all(p.grad.requires_grad for p in m.parameters())
        set_grads(m_twin, [p.grad.detach().numpy().copy() for p in m.parameters()])
        ra, rb = run_step(kind, clipper, m), run_step(kind, twin, m_twin)
        if ra is not None:
            assert torch.equal(ra, rb)
        assert_grads_equal([p.grad.detach() for p in m.parameters()], grads_of(m_twin))
    assert clipper.info().steps == twin.info().steps > 0


@pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True")
def test_clipper_tensor_norms_of_gradients_that_require_grad(rng):
    """gclip.torch.Clipper reads parameters whose .grad requires grad."""
    m = make_model()
    x = torch.from_numpy(rng.standard_normal((5, 8)).astype(np.float32))
    (m(x) ** 2).sum().backward(create_graph=True)
    norms = gt.Clipper(max_norm=1.0).tensor_norms(m.parameters())
    want = [float(np.linalg.norm(p.grad.detach().double().numpy())) for p in m.parameters()]
    np.testing.assert_allclose(norms.numpy(), want, rtol=1e-6)


def test_global_state_follows_a_changing_set_of_gradients(rng):
    """Parameters without .grad are left out, as the reference does; the
    state of a global method moves to the new set."""
    zclip = pytest.importorskip("zclip", reason="the reference package zclip==1.0.0")
    ref, ours = zclip.ZClip(warmup_steps=5, max_grad_norm=None), gt.ZClip(warmup_steps=5,
                                                                          max_grad_norm=None)
    m_ref, m_ours = make_model(), make_model()
    for k, gs in enumerate(gradient_stream(rng, 60)):
        set_grads(m_ref, gs)
        set_grads(m_ours, gs)
        if 20 <= k < 30:
            for m in (m_ref, m_ours):
                list(m.parameters())[3].grad = None
        assert ours.step(m_ours).item() == pytest.approx(ref.step(m_ref), rel=1e-6)
        assert_grads_close([p.grad for p in list(m_ours.parameters())[:3]],
                           [p.grad for p in list(m_ref.parameters())[:3]])
    assert ours.mean == pytest.approx(ref.mean, rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_norm_never_enters_the_statistics(rng, kind):
    """A NaN norm leaves the state as it was: the clipper then goes on bit
    for bit as a twin that never saw that step."""
    stream = list(gradient_stream(rng, 30, tensor_spikes=True))
    m, m_twin = make_model(), make_model()
    clipper, twin = build(kind, m), build(kind, m_twin)
    for gs in stream[:14]:
        set_grads(m, gs)
        run_step(kind, clipper, m)
    saved = clipper.state_dict()
    gs = [g.copy() for g in stream[14]]
    gs[1][3] = np.nan
    set_grads(m, gs)
    run_step(kind, clipper, m)
    info = clipper.info()
    assert not info.recorded and math.isnan(info.total_norm)
    twin.load_state_dict(saved)
    step_in_lockstep(kind, clipper, m, twin, m_twin, stream[15:])


def test_nonfinite_skip_writes_nothing(rng):
    m = make_model()
    z = gt.ZClip(warmup_steps=3, nonfinite="skip")
    for gs in gradient_stream(rng, 5):
        set_grads(m, gs)
        z.step(m)
    gs = next(gradient_stream(rng, 1))
    gs[0][0, 0] = np.inf
    set_grads(m, gs)
    z.step(m)
    assert_grads_equal(grads_of(m), [torch.from_numpy(g) for g in gs])
    assert z.result().nonfinite


# ---- the native clipper and device views ---------------------------------------------------

def test_native_adaptive_clipper_on_numpy_matches_torch(rng):
    """gclip.AdaptiveClipper on NumPy arrays gives the bits of gclip.torch.ZClip."""
    c = gclip.AdaptiveClipper("zclip", warmup_steps=4, max_grad_norm=None)
    z = gt.ZClip(warmup_steps=4, max_grad_norm=None, nonfinite="skip")
    for gs in gradient_stream(rng, 60):
        xs = [g.copy() for g in gs]
        ts = [torch.from_numpy(g.copy()) for g in gs]
        c.step(xs)
        z.step(ts)
        for x, t in zip(xs, ts):
            assert np.array_equal(x, t.numpy())
    assert c.result().op == "adaptive_clip"
    assert c.statistics()["mean"] == z.statistics()["mean"]
    assert c.statistics()["var"] == z.statistics()["var"]
    view = c.device_info()
    assert np.from_dlpack(view.total_norm) == np.float32(c.info().total_norm)
    assert int(np.from_dlpack(view.steps)) == 60
    assert c.state_dict()["state"] == bytes(z.state_dict()["state"].numpy())


NATIVE_STEPS = 40  # the stream's first spike (x5-30) is step 36
U = 2.0 ** -24     # float32's unit roundoff
# a float32 L2 norm of float32 data: within 4u of the exact norm (float group
# sums, docs/gpu-arithmetic.md); gclip and torch share the bits on any engine
NORM_RTOL = 4 * U


def _native_torch_twin(method, kw, model):
    """The gclip.torch class of `method` with the same hyperparameters."""
    if method == "autoclip":
        return gt.QuantileClip(model.parameters(), **kw)
    return {"adagc": gt.AdaGC, "spike_skip": gt.SpikeSkip}[method](**kw)


def _f64_norms(gs):
    return [math.sqrt(float(np.sum(g.astype(np.float64) ** 2))) for g in gs]


@pytest.mark.parametrize("method,kw", [("autoclip", {"global_threshold": True}),
                                       ("adagc", {"warmup_steps": 3}),
                                       ("spike_skip", {"window": 8, "min_values": 3})])
def test_native_adaptive_clipper_methods(rng, method, kw):
    """gclip.AdaptiveClipper on NumPy arrays, step by step: against the
    method's rule written out here in float64 (docs/adaptive.md; the state
    the rule starts a step from is gclip's, read back, so rounding does not
    accumulate), and against the gclip.torch class on copies of the same
    gradients, bit for bit (gradients, norms, flags, state)."""
    c = gclip.AdaptiveClipper(method, **kw)
    model = make_model()
    twin = _native_torch_twin(method, kw, model)
    history = []                                    # autoclip: the float32 total norms
    rule = (spike_skip_rule(kw["window"], kw["min_values"], 6.0)  # SpikeSkip's default sigma
            if method == "spike_skip" else None)
    clipped = skips = 0
    for k, gs in enumerate(gradient_stream(rng, NATIVE_STEPS)):
        xs = [g.copy() for g in gs]
        set_grads(model, gs)
        before = c.statistics() if k else None
        c.step(xs)
        ret = None if method == "autoclip" else twin.step(model)
        if method == "autoclip":
            twin.step()
        info = c.info()
        norms = _f64_norms(gs)
        total = math.sqrt(sum(n * n for n in norms))
        # the norm against the exact one (float64)
        N = info.total_norm
        assert abs(N - total) <= NORM_RTOL * total, k
        assert info.recorded or method == "spike_skip", k
        # bit for bit with gclip.torch on the same gradients
        for x, t in zip(xs, grads_of(model)):
            assert np.array_equal(x, t.numpy()), k
        assert all(a == b or (a != a and b != b)  # NaN: the per-tensor methods' threshold
                   for a, b in zip(dataclasses.astuple(twin.info()), dataclasses.astuple(info))), k
        if method == "autoclip":
            # coef = min(1, T / (N + 1e-6)), T = torch.quantile(history, 0.9) (+Inf first):
            # three float roundings of the coefficient, one of each product
            want_t = _quantile_f32(history, 0.9) if history else np.float32(np.inf)
            assert np.float32(info.threshold).tobytes() == want_t.tobytes(), k
            coef = min(1.0, float(want_t) / (N + 1e-6))
            assert abs(info.clip_coef - coef) <= 3 * U * coef, k
            for x, g in zip(xs, gs):
                if coef == 1.0:
                    assert np.array_equal(x, g), k
                else:
                    np.testing.assert_allclose(x, g.astype(np.float64) * coef, rtol=4 * U,
                                               atol=0, err_msg=str(k))
            clipped += coef < 1.0
            history.append(np.float32(info.total_norm))
            assert c.statistics()["histories"][0] == [float(h) for h in history], k
        elif method == "adagc":
            assert ret.item() == info.total_norm, k
            warm = k + 1 < kw["warmup_steps"] or k == 0
            assert info.warmup == warm, k
            # factors in float from float norms (each within 4u): 8u for a
            # clipped gradient or a gamma
            if warm:  # one global factor min(lambda_abs / (N + eps), 1)
                h = [min(1.0 / (total + 1e-8), 1.0)] * len(gs)
            else:     # per tensor: min(1, lambda_rel max(gamma, eps) / max(|g|, eps))
                h = [min(1.0, 1.05 * max(gm, 1e-8) / max(n, 1e-8))
                     for gm, n in zip(before["gamma"], norms)]
            assert info.clipped == sum(f < 1.0 for f in h), k
            gamma = c.statistics()["gamma"]
            for i, (x, g, f, n) in enumerate(zip(xs, gs, h, norms)):
                if f == 1.0:
                    assert np.array_equal(x, g), (k, i)
                else:
                    np.testing.assert_allclose(x, g.astype(np.float64) * f, rtol=8 * U, atol=0,
                                               err_msg=str((k, i)))
                clipped += f < 1.0
                # gamma: |g'| on the first step, then min(gamma, |g'|) in the
                # warm-up, lerp(gamma, |g'|, 1 - beta) after it
                new = f * n
                if k == 0:
                    want = new
                elif warm:
                    want = min(before["gamma"][i], new)
                else:
                    want = before["gamma"][i] + 0.02 * (new - before["gamma"][i])
                assert abs(gamma[i] - want) <= 8 * U * want, (k, i)
        else:  # spike_skip: the window rule on the float32 norms; no gradient written
            skip, threshold, window = rule(info.total_norm)  # gclip's float32 norm
            assert info.spike == skip and bool(ret) == skip, k
            assert ret.dtype == torch.int32
            assert info.recorded == (not skip) and info.warmup == math.isinf(threshold), k
            if not math.isinf(threshold):
                # mean + sigma std of the window in double, rounded to float
                assert abs(info.threshold - threshold) <= 2 * U * threshold, k
            assert c.statistics()["window"] == window, k
            for x, g in zip(xs, gs):
                assert np.array_equal(x, g), k
            skips += skip
    r = c.result()
    assert r.op == ("adaptive_skip" if method == "spike_skip" else "adaptive_clip")
    # every step counts, but a skipped one (its norm stays out of the window)
    assert c.info().steps == NATIVE_STEPS - skips
    assert c.statistics()["steps"] == NATIVE_STEPS - skips
    if method == "spike_skip":
        assert skips >= 1 and c.statistics()["skipped"] == skips
    else:
        assert clipped >= 3  # the run exercised the clipping
    mine = c.state_dict()["state"]
    theirs = twin.state_dict()
    if method == "autoclip":
        theirs = theirs["clippers"][0]
    assert mine == bytes(theirs["state"].numpy())
    restored = gclip.AdaptiveClipper(method, **kw)
    restored.load_state_dict(c.state_dict())
    assert restored.state_dict() == c.state_dict()


def test_returned_norm_is_a_copy_and_views_are_live(rng):
    m = make_model()
    z = gt.ZClip(warmup_steps=3)
    stream = gradient_stream(rng, 2)
    set_grads(m, next(stream))
    n1 = z.step(m)
    live = z.device_info()["total_norm"]
    assert live.item() == n1.item()
    set_grads(m, next(stream))
    n2 = z.step(m)
    assert n1.item() != n2.item() and live.item() == n2.item()
    assert z.device_info()["steps"].item() == 2


def test_torch_adaptive_clipper_takes_parameters(rng):
    m_a, m_b = make_model(), make_model()
    c = gt.AdaptiveClipper("zclip", warmup_steps=3)
    z = gt.ZClip(warmup_steps=3)
    for gs in gradient_stream(rng, 10):
        set_grads(m_a, gs)
        set_grads(m_b, gs)
        c.step(m_a.parameters())
        z.step(m_b)
        assert_grads_equal(grads_of(m_a), grads_of(m_b))
    for p in m_a.parameters():  # the parameters themselves are untouched
        assert p.grad is not None and p.requires_grad


# ---- CUDA ------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_state_and_gradients_equal_the_cpu_bitwise(rng, kind):
    stream = list(gradient_stream(rng, 60, tensor_spikes=True))
    m_cpu, m_gpu = make_model(), make_model("cuda")
    c_cpu, c_gpu = build(kind, m_cpu), build(kind, m_gpu)
    for gs in stream:
        set_grads(m_cpu, gs)
        set_grads(m_gpu, gs)
        r_cpu, r_gpu = run_step(kind, c_cpu, m_cpu), run_step(kind, c_gpu, m_gpu)
        if r_cpu is not None:
            assert r_gpu.device.type == "cuda"
            assert torch.equal(r_cpu, r_gpu.cpu())
        assert_grads_equal(grads_of(m_cpu), [g.cpu() for g in grads_of(m_gpu)])
    s_cpu, s_gpu = c_cpu.state_dict(), c_gpu.state_dict()
    if kind.startswith("autoclip"):
        s_cpu, s_gpu = s_cpu["clippers"][0], s_gpu["clippers"][0]
    assert torch.equal(s_cpu["state"], s_gpu["state"])


@needs_cuda
def test_cuda_step_does_not_synchronize(rng):
    m = make_model("cuda")
    z = gt.ZClip(warmup_steps=3)
    stream = [[torch.from_numpy(g).cuda() for g in gs] for gs in gradient_stream(rng, 10)]
    for p, g in zip(m.parameters(), stream[0]):
        p.grad = g.clone()
    z.step(m)  # builds the plan and the state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for gs in stream[1:]:
            for p, g in zip(m.parameters(), gs):
                p.grad.copy_(g)
            norm = z.step(m)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert norm.device.type == "cuda"


@needs_cuda
def test_cuda_steps_queue_on_the_current_stream(rng):
    """With no stream given, a step goes on PyTorch's current stream: what a
    side stream reads right after the call is the step's result, even while
    the default stream is busy (a step queued on the legacy default stream
    would wait behind the sleep, and the side stream would read the old
    values)."""
    stream = list(gradient_stream(rng, 2, base=5.0))
    side = torch.cuda.Stream()
    # ZClip: the returned norm is this step's
    m = make_model("cuda")
    z = gt.ZClip(warmup_steps=5)
    set_grads(m, stream[0])
    z.step(m)
    for p, g in zip(m.parameters(), stream[1]):
        p.grad.copy_(torch.from_numpy(g))
    torch.cuda.synchronize()
    want = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in stream[1]))
    torch.cuda._sleep(int(2e8))  # the default stream is busy for a while
    with torch.cuda.stream(side):
        norm = z.step(m)
    torch.cuda.synchronize()
    assert norm.item() == pytest.approx(want, rel=1e-5)
    # gclip.torch.Clipper: the side stream reads the clipped gradients
    p = torch.nn.Parameter(torch.zeros(1000, device="cuda"))
    original = torch.full((1000,), 3.0, device="cuda")
    p.grad = original.clone()
    clipper = gt.Clipper(max_norm=1.0)
    clipper.clip_grad_norm([p])
    p.grad.copy_(original)
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e8))
    with torch.cuda.stream(side):
        clipper.clip_grad_norm([p])
        seen = p.grad.clone()
    torch.cuda.synchronize()
    assert not torch.equal(p.grad, original)
    assert torch.equal(seen, p.grad)


def _capture(clipper, model):
    """One eager step of `clipper` on a side stream (it builds the plan and
    the state outside the capture), then a CUDA graph of its next step:
    (graph, the step's returned norm in the graph's memory)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        clipper.step(model)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = clipper.step(model)
    return graph, out


def _replay_against_eager(eager, m_e, graph, out, m_g, grads, graphed):
    """Each step: the eager clipper steps, the graph replays on the same
    gradients (copied into the captured ones); norms and gradients equal bit
    for bit, then the two states."""
    for gs in grads:
        set_grads(m_e, gs)
        for p, g in zip(m_g.parameters(), gs):
            p.grad.copy_(torch.from_numpy(g))
        ref = eager.step(m_e)
        graph.replay()
        assert torch.equal(ref, out)
        assert_grads_equal(grads_of(m_e), grads_of(m_g))
    assert torch.equal(eager.state_dict()["state"], graphed.state_dict()["state"])


@needs_cuda
def test_cuda_graph_replay_updates_the_state_as_eager_steps(rng):
    stream = list(gradient_stream(rng, 40))
    m_e, m_g = make_model("cuda"), make_model("cuda")
    eager, graphed = gt.ZClip(warmup_steps=5), gt.ZClip(warmup_steps=5)
    for m in (m_e, m_g):
        set_grads(m, stream[0])
    eager.step(m_e)
    graph, out = _capture(graphed, m_g)
    _replay_against_eager(eager, m_e, graph, out, m_g, stream[1:], graphed)


@needs_cuda
def test_a_captured_step_follows_a_state_loaded_after_the_capture(rng):
    """load_state_dict with the same hyperparameters after a capture: the
    replays continue from the loaded state, as eager steps from it do."""
    stream = list(gradient_stream(rng, 30))
    m_e, m_g = make_model("cuda"), make_model("cuda")
    eager, graphed = gt.ZClip(warmup_steps=5), gt.ZClip(warmup_steps=5)
    for gs in stream[:12]:
        set_grads(m_e, gs)
        eager.step(m_e)
    set_grads(m_g, stream[20])
    graph, out = _capture(graphed, m_g)
    graphed.load_state_dict(eager.state_dict())
    _replay_against_eager(eager, m_e, graph, out, m_g, stream[12:], graphed)


# ---- a per-tensor state follows its parameters ------------------------------------------

def _swap_step(make, step):
    # two parameters with gradients, then a different two: same count and
    # shapes, other parameters
    p = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    clip = make(p)
    p[0].grad = torch.full((3,), 1.0)
    p[1].grad = torch.full((3,), 1.0)
    step(clip, p)
    p[0].grad = None
    p[1].grad = torch.full((3,), 1.0)
    p[2].grad = torch.full((3,), 5.0)
    return clip, p


@pytest.mark.parametrize("name", ["quantile", "adagc"])
def test_per_tensor_state_refuses_another_set_of_parameters_and_writes_nothing(name):
    # state slot i belongs to a parameter: given another parameter's gradient
    # it would clip it by a history that is not its own (autoclip keeps a
    # state per parameter and does not clip p[2] here)
    if name == "quantile":
        make, step = (lambda p: gt.QuantileClip(p, history_length=5)), (lambda c, p: c.step())
    else:
        make, step = (lambda p: gt.AdaGC(warmup_steps=0)), (lambda c, p: c.step(p))
    clip, p = _swap_step(make, step)
    before = [q.grad.clone() for q in p[1:]]
    with pytest.raises(ValueError, match="parameters with a gradient changed"):
        step(clip, p)
    assert all(torch.equal(q.grad, b) for q, b in zip(p[1:], before))
    # the same parameters as before go on
    p[0].grad, p[2].grad = torch.full((3,), 1.0), None
    step(clip, p)


def test_zclip_follows_no_parameter_and_accepts_another_set():
    """One global state: the second step, on another set of parameters
    (p[1] = 1, p[2] = 5, p[0] without a gradient), is the default ZClip's
    warm-up step 2 over those gradients: its total norm sqrt(78) enters the
    warm-up buffer after step 1's sqrt(6), and the cap max_grad_norm = 1
    clips all of them by one coefficient, as clip_grad_norm_(max_norm=1)."""
    clip, p = _swap_step(lambda p: gt.ZClip(), lambda c, p: c.step(p))
    g0 = {k: p[k].grad.detach().double().numpy().copy() for k in (1, 2)}
    torch_params = [torch.nn.Parameter(p[k].detach().clone()) for k in (1, 2)]
    for q, k in zip(torch_params, (1, 2)):
        q.grad = p[k].grad.clone()
    ref = math.sqrt(sum(float(np.sum(g ** 2)) for g in g0.values()))  # sqrt(78), float64
    assert ref == math.sqrt(78.0)

    n = clip.step(p)  # one global state: any gradients of the same count
    n_t = torch.nn.utils.clip_grad_norm_(torch_params, 1.0)

    # the norm: every sum is exact here, so it is sqrt(78) rounded once to float32
    assert n.dim() == 0 and n.dtype == torch.float32
    assert abs(n.item() - ref) <= U * ref
    torch.testing.assert_close(n, n_t, rtol=3e-7, atol=0)  # torch sums in float
    info = clip.info()
    assert info.warmup and info.recorded and not info.spike
    assert info.steps == 2 and info.clipped == 2
    assert info.total_norm == n.item() and info.threshold == 1.0
    st = clip.statistics()
    assert st["steps"] == 2 and not st["initialized"]
    np.testing.assert_allclose(st["buffer"].double().numpy(), [math.sqrt(6.0), ref],
                               rtol=U, atol=0)
    # warm-up coefficient, in float: min(1, max_grad_norm * (1 / (N + eps)))
    f = np.float32
    coef32 = min(f(1.0), f(1.0) * (f(1.0) / (f(n.item()) + f(1e-6))))
    assert info.clip_coef == coef32
    coef = 1.0 / (ref + 1e-6)
    assert abs(info.clip_coef - coef) <= 3e-7 * coef
    assert p[0].grad is None
    for k, q_t in zip((1, 2), torch_params):
        got = p[k].grad.double().numpy()
        np.testing.assert_array_equal(p[k].grad.numpy(), f(g0[k]) * coef32)
        np.testing.assert_allclose(got, g0[k] * coef, rtol=4e-7, atol=0)
        torch.testing.assert_close(p[k].grad, q_t.grad, rtol=4e-7, atol=0)


def test_quantile_clip_groups_are_all_checked_before_any_is_clipped():
    a, b, c = (torch.nn.Parameter(torch.zeros(n)) for n in (4, 3, 3))
    qc = gt.QuantileClip([{"params": [a]}, {"params": [b, c]}], history_length=5)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        a.grad, b.grad, c.grad = (torch.randn(n, generator=g) for n in (4, 3, 3))
        qc.step()
    a.grad = torch.randn(4, generator=g) * 100
    b.grad, c.grad = torch.randn(3, generator=g), None
    before, steps = a.grad.clone(), qc.statistics(0)["steps"]
    with pytest.raises(ValueError):
        qc.step()
    assert torch.equal(a.grad, before)
    assert qc.statistics(0)["steps"] == steps


def test_quantile_clip_refuses_a_parameter_listed_twice():
    """A parameter in two places of QuantileClip's groups (within one group
    or across two) would have two histories and be clipped twice: refused
    when the clipper is made."""
    a, b = (torch.nn.Parameter(torch.zeros(n)) for n in (4, 3))
    for groups in ([a, b, a], [{"params": [a]}, {"params": [b, a]}]):
        with pytest.raises(ValueError, match="appears twice"):
            gt.QuantileClip(groups, history_length=5)
    gt.QuantileClip([{"params": [a]}, {"params": [b]}], history_length=5)  # distinct: taken


def test_state_naming_more_tensors_than_its_bytes_hold_is_refused():
    """A per-tensor state holds at least a float per tensor: a header that
    names more tensors than that is refused before any clipper is made for
    it (a probe of that many tensors would be made otherwise)."""
    m = make_model()
    saved = gt.AdaGC(warmup_steps=3)
    for gs in gradient_stream(np.random.default_rng(7), 4):
        set_grads(m, gs)
        saved.step(m)
    sd = saved.state_dict()
    raw = bytearray(bytes(sd["state"].numpy()))
    struct.pack_into("=I", raw, 12, len(raw) // 4 + 1)  # the tensors named
    fresh = gt.AdaGC(warmup_steps=3)
    with pytest.raises(ValueError, match=f"names {len(raw) // 4 + 1} tensors"):
        fresh.load_state_dict(dict(sd, state=torch.frombuffer(raw, dtype=torch.uint8)))
    assert fresh.state_dict()["state"] is None


def test_agc_units_must_be_one_per_parameter():
    P = np.ones((4, 3), np.float32)
    G = np.ones((4, 3), np.float32) * 10
    agc = gclip.AGCClipper()
    for units in ([4, 4], []):
        with pytest.raises(ValueError, match="units for 1 parameters"):
            agc.step([P], [G], units=units)
    assert np.all(G == 10)


def test_agc_units_out_of_range_are_refused_not_truncated(rng):
    P = rng.standard_normal((4, 3)).astype(np.float32)
    G = (rng.standard_normal((4, 3)) * 10).astype(np.float32)
    G0 = G.copy()
    agc = gclip.AGCClipper()
    for u in (2**64 + 2, 2**63, 2**32 + 2, -1):
        with pytest.raises(ValueError, match=r"units\[0\]"):
            agc.step([P], [G], units=[u])
    with pytest.raises(TypeError, match=r"units\[0\]"):
        agc.step([P], [G], units=[2.0])
    np.testing.assert_array_equal(G, G0)
    agc.step([P], [G], units=[np.int64(4)])
    ref = G0.astype(np.float64)
    wn = np.maximum(np.linalg.norm(P.astype(np.float64), axis=1, keepdims=True), 1e-3) * 0.01
    gn = np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(G, np.where(gn < wn, ref, ref * wn / np.maximum(gn, 1e-6)),
                               rtol=1e-5)


def test_num_threads_out_of_range_is_refused_not_truncated(rng):
    x = [rng.standard_normal(5).astype(np.float32)]
    for n in (2**32 + 2, 2**31, 1025, -1):
        with pytest.raises(ValueError, match="num_threads"):
            gclip.Clipper(num_threads=n)
        with pytest.raises(ValueError, match="num_threads"):
            gclip.AGCClipper(num_threads=n)
    for n in (1.0, True, "2"):
        with pytest.raises(TypeError, match="num_threads"):
            gclip.Clipper(num_threads=n)
    c = gclip.Clipper(num_threads=np.int64(3))
    c.total_norm(x)
    assert c.plan.num_threads == 3
    with pytest.raises(ValueError, match="num_threads"):
        c.plan.set_num_threads(2**32 + 2)
    assert c.plan.num_threads == 3
    assert c.result().total_norm == pytest.approx(float(np.linalg.norm(x[0].astype(np.float64))),
                                                  rel=1e-6)


def test_jax_functions_name_a_leaf_that_is_not_an_array():
    gj = pytest.importorskip("gclip.jax")
    with pytest.raises(TypeError, match="leaf 0 is a float"):
        gj.global_norm([1.0, 2.0])


def test_the_native_adaptive_clipper_steps_a_module_and_a_generator(rng):
    """gclip.torch.AdaptiveClipper.step takes a module (its parameters'
    gradients), a list or a generator of parameters, with the same results."""
    data = list(gradient_stream(rng, 12))
    runs = []
    for how in ("module", "list", "generator"):
        m = make_model()
        clipper = gt.AdaptiveClipper("zclip", warmup_steps=3)
        for gs in data:
            set_grads(m, gs)
            clipper.step(m if how == "module" else list(m.parameters()) if how == "list"
                         else (p for p in m.parameters()))
        runs.append((grads_of(m), clipper.info().total_norm))
    for grads, norm in runs[1:]:
        assert norm == runs[0][1]
        assert_grads_equal(grads, runs[0][0])
