"""gclip.Clipper (native API) on NumPy arrays, PyTorch tensors and JAX
arrays, against float64 references."""

import math
import re

import numpy as np
import pytest
import torch

import gclip
import gclip.torch as gt
from conftest import device_params, needs_cuda, needs_function
from test_torch_dropin import ref_norm


def arrays(rng, shapes=((50,), (7, 9), (1,), (1000,)), dtype=np.float32, scale=1.0):
    return [(rng.standard_normal(s) * scale).astype(dtype) for s in shapes]


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf, 2.5])
def test_numpy_clip_grad_norm(rng, p):
    xs = arrays(rng, scale=3.0)
    x0 = [x.astype(np.float64) for x in xs]
    ref = ref_norm(x0, p)
    c = gclip.Clipper(max_norm=ref / 4, norm_type=p)
    c.clip_grad_norm(xs)
    r = c.result()
    assert r.has_norm and not r.nonfinite
    assert abs(r.total_norm - ref) <= 1e-6 * ref
    coef = (ref / 4) / (ref + 1e-6)
    assert r.clip_coef == pytest.approx(coef, rel=1e-6)
    for x, g in zip(xs, x0):
        np.testing.assert_allclose(x, g * coef, rtol=2e-6)


def test_numpy_inv_scale_and_tensor_norms(rng):
    xs = arrays(rng, scale=1024.0)
    x0 = [x.astype(np.float64) for x in xs]
    ref = ref_norm(x0, 2) / 1024
    out = np.zeros(len(xs), dtype=np.float32)
    c = gclip.Clipper(max_norm=1e9)
    c.clip_grad_norm(xs, inv_scale=1 / 1024, tensor_norms=out)
    r = c.result()
    assert abs(r.total_norm - ref) <= 1e-6 * ref and r.scale == pytest.approx(1 / 1024)
    np.testing.assert_allclose(out, [ref_norm([g], 2) / 1024 for g in x0], rtol=1e-6)
    for x, g in zip(xs, x0):
        np.testing.assert_allclose(x, g / 1024, rtol=1e-7)


def test_numpy_skip_default_and_error_policy(rng):
    xs = arrays(rng)
    xs[1][3, 3] = np.nan
    before = [x.copy() for x in xs]
    c = gclip.Clipper(max_norm=0.1)
    c.clip_grad_norm(xs)
    r = c.result()
    assert r.nonfinite and math.isnan(r.total_norm)
    for x, b in zip(xs, before):
        np.testing.assert_array_equal(x, b)
    c = gclip.Clipper(max_norm=0.1, nonfinite="error")
    c.clip_grad_norm(xs)
    with pytest.raises(gclip.NonFiniteError) as e:
        c.result()
    assert e.value.result.nonfinite
    c = gclip.Clipper(max_norm=0.1, nonfinite="propagate")
    c.clip_grad_norm(xs)
    assert all(np.isnan(x).all() for x in xs)


def test_numpy_per_tensor_and_value(rng):
    xs = arrays(rng, scale=2.0)
    x0 = [x.astype(np.float64) for x in xs]
    c = gclip.Clipper(max_norm=1.5)
    c.clip_grad_norm_per_tensor(xs)
    for x, g in zip(xs, x0):
        n = ref_norm([g], 2)
        np.testing.assert_allclose(x, g * min(1.0, 1.5 / (n + 1e-6)), rtol=2e-6)
    assert c.result().total_norm == pytest.approx(ref_norm(x0, 2), rel=1e-6)
    ys = arrays(rng, scale=2.0)
    y0 = [y.copy() for y in ys]
    c.clip_grad_value(ys, 0.75)
    for y, g in zip(ys, y0):
        np.testing.assert_array_equal(y, np.clip(g, -0.75, 0.75))
    assert not c.result().has_norm


@needs_function("clip_grad_value_f64")
@pytest.mark.parametrize("bound", [0.1, 1.0 / 3.0, 0.75, 1e-50, 1e39])
def test_value_clip_of_float64_uses_the_double_bound_as_pytorch_does(rng, bound):
    """float64 arrays clamped to the double bound (0.1 itself, not the float32
    0.10000000149), float32 ones to the float32 nearest it: bit for bit what
    torch.nn.utils.clip_grad_value_ gives on the same tensors, NaN, infinities
    and values past float32's range included."""
    ys = [rng.standard_normal(s) * (0.2 if k % 2 else 3.0)
          for k, s in enumerate((1000, 3, 4099, 70000))]
    ys[0][:6] = [np.nan, np.inf, -np.inf, 1e300, -1e300, 0.1000000001]
    ys += [(rng.standard_normal(777) * 0.2).astype(np.float32)]
    peer = [torch.tensor(y) for y in ys]
    for dtype in (torch.float64, torch.float32):
        if dtype == torch.float32 and bound > 3.5e38:
            continue  # PyTorch refuses a bound past float32's range for float32 tensors
        params = [torch.nn.Parameter(torch.zeros_like(t)) for t in peer if t.dtype == dtype]
        for p_, t in zip(params, [t for t in peer if t.dtype == dtype]):
            p_.grad = t
        torch.nn.utils.clip_grad_value_(params, bound)
    y0 = [y.copy() for y in ys]
    c = gclip.Clipper()
    c.clip_grad_value(ys, bound)
    changed = 0
    for y, g, t in zip(ys, y0, peer):
        if y.dtype == np.float64 or bound < 3.5e38:
            assert y.tobytes() == t.numpy().tobytes(), (bound, y.dtype)
        b = bound if y.dtype == np.float64 else np.float32(bound) if bound < 3.5e38 else np.inf
        with np.errstate(invalid="ignore"):
            want = np.clip(g, -b, b)
        assert y.tobytes() == want.astype(y.dtype).tobytes()
        changed += int(np.sum(y != g))
    assert changed > 0


def test_per_tensor_propagate_over_many_segments_matches_float64_and_torch(rng):
    # 6 MB of tensors, so the CPU path clips them segment by segment; a NaN
    # and an Inf spoil only their own tensors (PyTorch's per-tensor
    # arithmetic: _foreach_norm, then each tensor times min(1, C / (n + eps)))
    sizes = [int(rng.integers(1, 120_000)) for _ in range(30)]
    xs = [(rng.standard_normal(n) * 10.0 ** rng.uniform(-2, 2)).astype(np.float32) for n in sizes]
    xs[7][len(xs[7]) // 2] = np.nan
    xs[20][0] = np.inf
    x0 = [x.astype(np.float64) for x in xs]
    norms0 = [math.sqrt(float(np.sum(g * g))) for g in x0]
    max_norm = float(np.median([n for n in norms0 if math.isfinite(n)]))
    ts = [torch.from_numpy(x.copy()) for x in xs]
    with torch.no_grad():
        for t, n in zip(ts, torch._foreach_norm(ts)):
            t.mul_(torch.clamp(max_norm / (n + 1e-6), max=1.0))
    out = np.zeros(len(xs), dtype=np.float32)
    c = gclip.Clipper(max_norm=max_norm, nonfinite="propagate")
    c.clip_grad_norm_per_tensor(xs, tensor_norms=out)
    r = c.result()
    assert r.nonfinite and math.isnan(r.total_norm)
    clipped = 0
    for k, (x, g, n, t) in enumerate(zip(xs, x0, norms0, ts)):
        if k == 7:
            assert np.isnan(x).all() and np.isnan(t.numpy()).all()
        elif k == 20:
            # 1 / (Inf + eps) = 0: finite elements become 0, the Inf NaN
            assert np.isnan(x[0]) and (x[1:] == 0).all()
            np.testing.assert_array_equal(x, t.numpy())
        else:
            assert out[k] == pytest.approx(n, rel=1e-6)
            coef = min(1.0, max_norm / (n + 1e-6))
            clipped += coef < 1.0
            np.testing.assert_allclose(x, g * coef, rtol=2e-6)
            np.testing.assert_allclose(x, t.numpy(), rtol=2e-6)
    assert 5 < clipped < 25


def test_numpy_total_norm_reads_readonly_and_rejects_writes(rng):
    xs = arrays(rng)
    for x in xs:
        x.flags.writeable = False
    c = gclip.Clipper(nonfinite="propagate")
    c.total_norm(xs)
    assert c.result().total_norm == pytest.approx(ref_norm(xs, 2), rel=1e-6)
    with pytest.raises(ValueError, match="read-only"):
        c.clip_grad_norm(xs)


def test_numpy_float64_and_low_precision(rng):
    xs = arrays(rng, dtype=np.float16) + arrays(rng, shapes=((33,),))
    ref = ref_norm(xs, 2)
    c = gclip.Clipper()
    c.total_norm(xs)
    assert c.result().total_norm == pytest.approx(ref, rel=1e-6)
    # float64 is a supported dtype (gclip._dlpack._NP_DTYPES): a rejection is a
    # regression and must fail here, not be skipped
    f64 = arrays(rng, dtype=np.float64)
    c.total_norm(f64)
    assert c.result().total_norm == pytest.approx(ref_norm(f64, 2), rel=1e-6)


def test_device_result_views(rng):
    xs = arrays(rng, scale=5.0)
    ref = ref_norm(xs, 2)
    c = gclip.Clipper(max_norm=1.0)
    c.clip_grad_norm(xs)
    v = c.device_result()
    vals = np.from_dlpack(v.values)
    np.testing.assert_allclose(vals[0], ref, rtol=1e-6)
    assert vals[2] == pytest.approx(1.0 / (ref + 1e-6), rel=1e-6)
    assert int(np.from_dlpack(v.nonfinite)) == 0
    t = torch.from_dlpack(v.scale)
    assert float(t) == pytest.approx(vals[2])
    del c, v
    assert float(t) == pytest.approx(vals[2])  # the view keeps the plan alive


def test_plans_are_reused_and_rebound(rng):
    c = gclip.Clipper(max_norm=0.5)
    for step in range(4):
        xs = arrays(rng, scale=step + 1)
        x0 = [x.astype(np.float64) for x in xs]
        c.clip_grad_norm(xs)
        ref = ref_norm(x0, 2)
        for x, g in zip(xs, x0):
            np.testing.assert_allclose(x, g * (0.5 / (ref + 1e-6)), rtol=2e-6)
    assert len(c._plans) == 1


@pytest.mark.parametrize("device", device_params())
def test_torch_clipper_parameters(rng, device):
    params = []
    for s in [(20, 3), (7,), (128,)]:
        p = torch.nn.Parameter(torch.zeros(s, device=device))
        p.grad = torch.from_numpy(rng.standard_normal(s).astype(np.float32) * 4).to(device)
        params.append(p)
    params.append(torch.nn.Parameter(torch.zeros(3, device=device)))  # no grad: skipped
    g0 = [p.grad.double().cpu().numpy() for p in params[:3]]
    ref = ref_norm(g0, 2)
    c = gt.Clipper(max_norm=1.0)
    norms = c.tensor_norms(params)
    np.testing.assert_allclose(norms.cpu().numpy(), [ref_norm([g], 2) for g in g0], rtol=1e-6)
    c.clip_grad_norm(params)
    res = c.device_result()
    assert res["norm"].device.type == torch.device(device).type
    assert float(res["norm"]) == pytest.approx(ref, rel=1e-6)
    assert int(res["nonfinite"]) == 0
    for p, g in zip(params, g0):
        np.testing.assert_allclose(p.grad.double().cpu().numpy(), g / (ref + 1e-6), rtol=2e-6)


@needs_function("clip_grads_with_norm")
@pytest.mark.parametrize("device", device_params())
def test_device_scalars(rng, device):
    """max_norm, inv_scale and the total norm as device tensors, read when the step runs."""
    grads = [torch.from_numpy(rng.standard_normal(s).astype(np.float32) * 64).to(device)
             for s in [(30,), (5, 5)]]
    g0 = [g.double().cpu().numpy() for g in grads]
    inv = torch.tensor([1 / 64], device=device)
    mx = torch.tensor([0.25], device=device)
    c = gclip.Clipper()
    c.clip_grad_norm(grads, max_norm=mx, inv_scale=inv)
    ref = ref_norm(g0, 2) / 64
    r = c.result()
    assert r.total_norm == pytest.approx(ref, rel=1e-6)
    for g, x in zip(grads, g0):
        np.testing.assert_allclose(g.double().cpu().numpy(), x / 64 * (0.25 / (ref + 1e-6)), rtol=3e-6)
    norm = torch.tensor([100.0], device=device)
    before = [g.clone() for g in grads]
    c.clip_grads_with_norm(grads, norm, max_norm=1.0)
    for g, b in zip(grads, before):
        torch.testing.assert_close(g, b * (1.0 / (100.0 + 1e-6)))


@needs_function("compute_clip_factor")
def test_clip_factor_then_apply(rng):
    xs = arrays(rng, scale=3.0)
    x0 = [x.copy() for x in xs]
    c = gclip.Clipper(max_norm=1.0)
    c.compute_clip_factor(xs)
    r = c.result()
    for x, g in zip(xs, x0):
        np.testing.assert_array_equal(x, g)  # not applied
    c.apply_clip_factor(xs)
    for x, g in zip(xs, x0):
        np.testing.assert_allclose(x, g * np.float32(r.scale), rtol=1e-7)


@needs_function("norm_accumulate")
def test_phases_accumulate_finalize_apply(rng):
    xs = arrays(rng, scale=3.0)
    x0 = [x.astype(np.float64) for x in xs]
    ref = ref_norm(x0, 2)
    c = gclip.Clipper(max_norm=1.0)
    c.norm_accumulate(xs)
    c.norm_finalize()
    assert c.result().total_norm == pytest.approx(ref, rel=1e-6)
    c.apply_clip_factor()
    for x, g in zip(xs, x0):
        np.testing.assert_allclose(x, g / (ref + 1e-6), rtol=2e-6)


@needs_function("clip_grad_value_f64")
def test_jax_clip_by_value_clamps_float64_leaves_to_the_double_bound(rng):
    """optax.clip clamps a float64 leaf to the double clip_value, and so does
    gclip.jax (NaN, -0.0 and the elements between float64's and float32's
    bound included); a float32 leaf is clamped to the float32 nearest it."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import gclip.jax as gj
    optax = pytest.importorskip("optax", reason="the reference package optax")
    x = rng.standard_normal(2000) * 0.2
    x[:3] = [np.nan, -0.0, 0.0]
    x[3:7] = [0.1, -0.1, 0.100000001, -0.100000001]  # between float64's and float32's 0.1
    x[7:9] = [1e300, -1e-60]
    jax.config.update("jax_enable_x64", True)
    try:
        tree = {"j": jnp.asarray(x), "n": x.copy(), "f": jnp.asarray(x[9:].astype(np.float32))}
        for c in (0.1, 0.5, 1e-50, 1e200):
            out = gj.clip_by_value(tree, c)
            peer = optax.clip(c).update(tree, optax.EmptyState())[0]
            want = np.clip(x, -c, c)
            for k in ("j", "n"):
                got = np.asarray(out[k])
                assert got.dtype == np.float64
                # bit for bit: NaN where NaN, the sign of each zero kept
                assert got.tobytes() == want.tobytes(), (c, k)
                assert got.tobytes() == np.asarray(peer[k], dtype=np.float64).tobytes(), (c, k)
            c32 = np.float32(c) if c < 3e38 else np.float32(np.inf)
            f = np.asarray(out["f"])
            assert f.tobytes() == np.clip(x[9:].astype(np.float32), -c32, c32).tobytes(), c
    finally:
        jax.config.update("jax_enable_x64", False)


def test_jax_norms_and_functional_clip(rng):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import gclip.jax as gj
    tree = {"w": jnp.asarray(rng.standard_normal((6, 5)).astype(np.float32) * 3),
            "b": [jnp.asarray(rng.standard_normal(4).astype(np.float32))]}
    leaves = [np.asarray(x, dtype=np.float64) for x in jax.tree_util.tree_leaves(tree)]
    ref = ref_norm(leaves, 2)
    assert gj.global_norm(tree) == pytest.approx(ref, rel=1e-6)
    norms = gj.tensor_norms(tree)
    assert float(norms["w"]) == pytest.approx(ref_norm([np.asarray(tree["w"])], 2), rel=1e-6)
    new, info = gj.clip_by_global_norm(tree, 1.0)
    assert info.total_norm == pytest.approx(ref, rel=1e-6)
    np.testing.assert_allclose(np.asarray(new["w"]), np.asarray(tree["w"]) / (ref + 1e-6), rtol=2e-6)
    assert float(jnp.abs(tree["w"]).max()) > 1.0  # the input is untouched
    clipped = gj.clip_by_value(tree, 0.5)
    np.testing.assert_array_equal(np.asarray(clipped["b"][0]), np.clip(np.asarray(tree["b"][0]), -0.5, 0.5))
    per, _ = gj.clip_by_norm_per_leaf(tree, 0.1)
    assert ref_norm([np.asarray(per["w"])], 2) == pytest.approx(0.1, rel=1e-5)
    # every output is on the leaves' device (a GPU when JAX arrays live there)
    leaf_devices = {d for x in jax.tree_util.tree_leaves(tree) for d in x.devices()}
    for out in (norms, new, clipped, per):
        for x in jax.tree_util.tree_leaves(out):
            assert x.devices() == leaf_devices


def test_jax_norms_count_shared_and_overlapping_leaves_as_optax_does(rng):
    """A pytree may hold one array twice, or views of one buffer; optax's
    global_norm counts each leaf. The norms read such leaves (and NumPy
    scalars, and leaves that are not dense) from copies, as the functional
    clip does, instead of refusing them."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import gclip.jax as gj
    optax = pytest.importorskip("optax", minversion="0.2.5")  # optax.tree.norm
    w = jnp.asarray(rng.standard_normal(7).astype(np.float32))
    v = jnp.asarray(rng.standard_normal(5).astype(np.float32))
    base = (rng.standard_normal(12) * 2).astype(np.float32)
    trees = [[w, w, v], {"a": w, "b": w},
             [base[0:8], base[4:12]],  # two NumPy views that overlap
             [base[::3], v],  # not dense
             [np.float32(rng.standard_normal()), np.float64(rng.standard_normal()), v]]
    for tree in trees:
        leaves = [np.asarray(x, dtype=np.float64).reshape(-1)
                  for x in jax.tree_util.tree_leaves(tree)]
        ref = ref_norm(leaves, 2)
        assert gj.global_norm(tree) == pytest.approx(ref, rel=1e-6)
        assert gj.global_norm(tree) == pytest.approx(
            float(optax.tree.norm([jnp.asarray(x) for x in leaves])), rel=1e-6)
        _, info = gj.clip_by_global_norm(tree, 1e-3)
        assert info.total_norm == gj.global_norm(tree)
        norms = jax.tree_util.tree_leaves(gj.tensor_norms(tree))
        for n, x in zip(norms, leaves):
            assert float(n) == pytest.approx(ref_norm([x], 2), rel=1e-6)
    before = base.copy()
    gj.global_norm([base[0:8], base[4:12]])
    np.testing.assert_array_equal(base, before)


def test_numpy_scalars_are_refused_and_one_array_is_one_tensor(rng):
    """A NumPy scalar has no memory of its own (its array interface is a
    temporary array): refused with TypeError, nothing read or written. One
    array given alone is one tensor, as torch.nn.utils takes one Tensor, not
    the sequence of its rows or elements."""
    c = gclip.Clipper(1.0)
    with pytest.raises(TypeError, match=r"tensor 1 is a NumPy scalar"):
        c.total_norm([np.ones(3, np.float32), np.float32(4.0)])
    with pytest.raises(TypeError, match=r"tensor 0 is a NumPy scalar"):
        c.total_norm(np.float32(4.0))
    x = (rng.standard_normal(6) * 10).astype(np.float32)
    want = x.astype(np.float64)
    c.clip_grad_norm(x)
    ref = ref_norm([want], 2)
    assert c.result().total_norm == pytest.approx(ref, rel=1e-6)
    assert c.result().applied
    np.testing.assert_allclose(x, want / (ref + 1e-6), rtol=2e-6)
    m = (rng.standard_normal((3, 4)) * 10).astype(np.float32)
    c.total_norm(m)
    assert c.result().total_norm == pytest.approx(ref_norm([m.astype(np.float64)], 2), rel=1e-6)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_plans"):
            gclip.Clipper(1.0, max_plans=bad)


def test_jax_device_path_writes_new_jax_buffers_on_the_leaves_device(rng, monkeypatch):
    """The path gclip.jax takes for leaves in GPU memory (outputs are new JAX
    buffers on the leaves' device, written through DLPack), taken here with
    JAX arrays on whatever device JAX has: same values as the host path, and
    the input leaves untouched."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import gclip.jax as gj
    tree = {"w": jnp.asarray(rng.standard_normal((6, 5)).astype(np.float32) * 3),
            "b": [jnp.asarray(rng.standard_normal(4).astype(np.float32))]}
    before = [np.array(x) for x in jax.tree_util.tree_leaves(tree)]
    host_norms = gj.tensor_norms(tree)
    host_clip, host_info = gj.clip_by_global_norm(tree, 1.0)
    host_value = gj.clip_by_value(tree, 0.5)
    host_per, _ = gj.clip_by_norm_per_leaf(tree, 0.1)
    real = gj._gpu_device
    monkeypatch.setattr(gj, "_gpu_device", lambda leaves: real(leaves) or
                        next(iter(leaves[0].devices())))
    norms = gj.tensor_norms(tree)
    clip, info = gj.clip_by_global_norm(tree, 1.0)
    value = gj.clip_by_value(tree, 0.5)
    per, _ = gj.clip_by_norm_per_leaf(tree, 0.1)
    assert info.total_norm == host_info.total_norm
    for got, want in ((norms, host_norms), (clip, host_clip), (value, host_value), (per, host_per)):
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            assert isinstance(g, jax.Array)
            assert g.devices() == tree["w"].devices()
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    for x, b in zip(jax.tree_util.tree_leaves(tree), before):
        np.testing.assert_array_equal(np.asarray(x), b)


def test_jax_device_path_takes_its_buffers_flagged_read_only(rng, monkeypatch):
    """Should JAX export its arrays with DLPack's read-only flag, the GPU path
    of gclip.jax still writes the fresh buffers it made (and gclip.Clipper
    still refuses to write JAX arrays): taken here with JAX arrays on
    whatever device JAX has, every capsule of a JAX array flagged read-only."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import gclip.jax as gj
    from gclip import _dlpack
    tree = [jnp.asarray(rng.standard_normal((6, 5)).astype(np.float32) * 3),
            jnp.asarray(rng.standard_normal(4).astype(np.float32))]
    host_clip, host_info = gj.clip_by_global_norm(tree, 1.0)
    host_norms = gj.tensor_norms(tree)
    real_of, real_dev = _dlpack._dltensor_of, gj._gpu_device

    def flagged(x, stream=None):
        cap, t, read_only = real_of(x, stream)
        return cap, t, read_only or _dlpack.is_jax_array(x)
    monkeypatch.setattr(_dlpack, "_dltensor_of", flagged)
    monkeypatch.setattr(gj, "_gpu_device", lambda leaves: real_dev(leaves) or
                        next(iter(leaves[0].devices())))
    clip, info = gj.clip_by_global_norm(tree, 1.0)
    norms = gj.tensor_norms(tree)
    assert info.total_norm == host_info.total_norm
    for got, want in ((clip, host_clip), (norms, host_norms)):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    with pytest.raises(ValueError, match="read-only"):
        gclip.Clipper(1.0).clip_grad_norm(tree)


def test_clipper_refuses_to_write_jax_arrays(rng):
    """JAX arrays are immutable (and exported without DLPack's read-only
    flag): every writing operation of gclip.Clipper refuses them, before
    anything is written; the norms still read them."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    host = arrays(rng, shapes=((6, 5), (4,)), scale=3.0)
    xs = [jnp.asarray(x) for x in host]
    alias = list(xs)
    before = [np.array(x) for x in xs]
    ref = ref_norm([x.astype(np.float64) for x in host], 2)
    ops = [lambda c: c.clip_grad_norm(xs),
           lambda c: c.clip_grad_value(xs, 0.5),
           lambda c: c.clip_grad_norm_per_tensor(xs),
           lambda c: c.clip_grads_with_norm(xs, 2 * ref),
           lambda c: c.apply_clip_factor(xs)]
    for op in ops:
        c = gclip.Clipper(max_norm=0.1)
        c.compute_clip_factor(xs)
        with pytest.raises(ValueError, match="read-only.*gclip.jax"):
            op(c)
    with pytest.raises(ValueError, match="tensor_norms"):
        gclip.Clipper().total_norm(host, tensor_norms=jnp.zeros(2, dtype=jnp.float32))
    for x, y, b in zip(xs, alias, before):
        np.testing.assert_array_equal(np.asarray(x), b)
        np.testing.assert_array_equal(np.asarray(y), b)
    c = gclip.Clipper()
    c.total_norm(xs)
    assert c.result().total_norm == pytest.approx(ref, rel=1e-6)
    assert isinstance(xs[0], jax.Array)


def test_torch_clipper_tensor_norms_without_gradients(rng):
    c = gt.Clipper()
    for arg in ([], [torch.nn.Parameter(torch.zeros(2))]):
        with pytest.raises(ValueError, match="no gradients"):
            c.tensor_norms(arg)
        with pytest.raises(ValueError, match="no gradients"):
            c.total_norm(arg)
    p = torch.nn.Parameter(torch.zeros(7))
    p.grad = torch.from_numpy(rng.standard_normal(7).astype(np.float32))
    norms = c.tensor_norms([torch.nn.Parameter(torch.zeros(2)), p])
    assert norms.shape == (1,)
    assert float(norms[0]) == pytest.approx(ref_norm([p.grad.numpy()], 2), rel=1e-6)


def test_rejections_name_the_offending_tensor_or_argument(rng):
    good = [torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in (3, 2)]
    before = [g.clone() for g in good]
    c = gclip.Clipper()

    def raises(exc, pattern, f):
        with pytest.raises(exc) as info:
            f()
        assert re.search(pattern, str(info.value)), str(info.value)
        assert "gradient 0" not in str(info.value)

    raises(TypeError, r"tensor 2 has dtype torch\.int32",
           lambda: c.clip_grad_norm(good + [torch.ones(3, dtype=torch.int32)]))
    raises(ValueError, r"tensor 2 is not dense",
           lambda: c.clip_grad_norm(good + [torch.ones(6)[::2]]))
    raises(TypeError, r"tensor 1 has unsupported dtype int32",
           lambda: c.clip_grad_norm([good[0].numpy(), np.ones(3, np.int32)]))
    raises(TypeError, r"total_norm .*float32.*torch\.int64",
           lambda: c.clip_grads_with_norm(good, torch.tensor(13)))
    raises(TypeError, r"max_norm .*float32.*torch\.float64",
           lambda: c.clip_grad_norm(good, max_norm=torch.tensor(2.0, dtype=torch.float64)))
    raises(ValueError, r"inv_scale is not dense",
           lambda: c.clip_grad_norm(good, inv_scale=torch.ones(4)[::2]))
    raises(TypeError, r"tensor_norms has dtype torch\.int32",
           lambda: c.total_norm(good, tensor_norms=torch.ones(2, dtype=torch.int32)))
    raises(TypeError, r"gradient 1 has dtype torch\.int64",
           lambda: gt.Clipper().clip_grad_norm([good[0], torch.ones(2, dtype=torch.int64)]))
    raises(TypeError, r"the tensor has dtype torch\.int32",
           lambda: gt.describe_tensor(torch.ones(2, dtype=torch.int32)))
    raises(TypeError, r"gradient 3 has dtype torch\.int32",
           lambda: gt.describe_tensor(torch.ones(2, dtype=torch.int32), 3))
    agc_grads = [good[0].numpy(), np.ones(2, np.float32)]
    raises(TypeError, r"parameter 1 has unsupported dtype int32",
           lambda: gclip.AGCClipper().step([np.ones(3, np.float32), np.ones(2, np.int32)],
                                           agc_grads))
    for g, b in zip(good, before):
        assert torch.equal(g, b)


def test_torch_clipper_keeps_its_own_plans_and_thread_count(rng):
    # gclip.torch.Clipper's plans are its own: a drop-in call or another
    # Clipper on gradients of the same shapes uses another plan, so neither
    # the thread count nor the result slot of one reaches the other, and the
    # bits depend on neither
    shapes = [(1024, 1100), (300,), (1000, 40)]  # above the one-thread size (2^20)
    base = [torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes]

    def params():
        out = []
        for b in base:
            p = torch.nn.Parameter(torch.zeros_like(b))
            p.grad = b.clone()
            out.append(p)
        return out

    p1 = params()
    clipper = gt.Clipper(max_norm=1.0, num_threads=1)
    clipper.clip_grad_norm(p1)
    view = clipper.device_result()["norm"]
    n1 = float(view)
    assert clipper.plan.num_threads == 1
    mine = clipper.plan

    p2 = params()
    for g in p2:
        g.grad.mul_(3.0)  # another norm: it must not reach the Clipper's slot
    n2 = gt.clip_grad_norm_(p2, max_norm=1.0)
    assert mine.num_threads == 1
    assert float(view) == n1 and clipper.result().total_norm == n1
    assert abs(float(n2) - 3.0 * n1) <= 1e-5 * float(n2)

    p3 = params()
    c3 = gt.Clipper(max_norm=1.0, num_threads=2)
    c3.clip_grad_norm(p3)
    n3 = float(c3.device_result()["norm"])
    assert c3.plan is not mine and c3.plan.num_threads == 2 and mine.num_threads == 1

    expected = ref_norm([b.numpy() for b in base], 2.0)
    assert n1 == n3
    assert abs(n1 - expected) <= 1e-6 * expected
    for a, c in zip(p1, p3):
        assert torch.equal(a.grad, c.grad)
    assert not torch.equal(p1[0].grad, base[0])  # clipped: the norm is far above 1


def test_torch_clippers_and_drop_ins_do_not_share_a_pending_factor(rng):
    # a factor computed by one Clipper is applied to its own gradients, by its
    # own result, whatever other Clippers or drop-ins did on gradients of the
    # same shapes in between
    def model(scale):
        m = torch.nn.Linear(4, 3)
        for p in m.parameters():
            p.grad = torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32) * scale)
        return m

    A, B, C = model(10.0), model(20.0), model(30.0)
    a0 = [p.grad.clone() for p in A.parameters()]
    b0 = [p.grad.clone() for p in B.parameters()]
    na = ref_norm([g.numpy() for g in a0], 2.0)
    c1, c2 = gt.Clipper(max_norm=1.0), gt.Clipper(max_norm=1.0)
    c1.compute_clip_factor(A.parameters())
    c2.compute_clip_factor(B.parameters())
    gt.get_total_norm([p.grad for p in C.parameters()])
    gt.clip_grad_norm_(C.parameters(), 1.0)
    assert abs(c1.result().total_norm - na) <= 1e-6 * na
    c1.apply_clip_factor()
    coef = 1.0 / (na + 1e-6)
    for p, g in zip(A.parameters(), a0):
        assert torch.allclose(p.grad, g * coef, rtol=1e-6, atol=0)
    for p, g in zip(B.parameters(), b0):
        assert torch.equal(p.grad, g)  # c2 has not applied yet


def test_norm_finalize_takes_partial_records_of_any_dtype_and_checks_count(rng):
    x = [np.array([3.0, 4.0], np.float32), np.array([12.0], np.float32)]
    c = gclip.Clipper(max_norm=1.0)
    c.norm_accumulate(x)
    rec = np.from_dlpack(c.partial()).copy()  # int32 records, as gathered
    two = np.concatenate([rec, rec])
    c.norm_finalize(two, 2)
    assert abs(c.result().total_norm - math.sqrt(2 * 169.0)) <= 1e-5
    c.norm_finalize(two.view(np.uint8))  # count 0: every record of the array
    assert abs(c.result().total_norm - math.sqrt(2 * 169.0)) <= 1e-5
    c.norm_finalize(torch.from_numpy(rec))
    assert abs(c.result().total_norm - 13.0) <= 1e-5
    with pytest.raises(ValueError, match="count 3 partials need 48 bytes"):
        c.norm_finalize(two, 3)
    with pytest.raises(ValueError, match="count"):
        c.norm_finalize(two, -1)
    with pytest.raises(ValueError, match="contiguous"):
        c.norm_finalize(np.concatenate([two, two]).reshape(2, 8)[:, :4])
    assert abs(c.result().total_norm - 13.0) <= 1e-5  # the refused calls changed nothing
    # any DLPack array of records: the Clipper's own int32 view, JAX integers
    c.norm_accumulate(x)
    c.norm_finalize(c.partial())
    assert abs(c.result().total_norm - 13.0) <= 1e-5
    jnp = pytest.importorskip("jax.numpy")
    for arr in (jnp.asarray(two), jnp.asarray(two.view(np.uint8))):
        c.norm_finalize(arr)
        assert abs(c.result().total_norm - math.sqrt(2 * 169.0)) <= 1e-5


def test_a_cuda_producer_is_handed_the_callers_stream():
    # a CUDA array's producer orders its pending writes before the stream
    # given to the DLPack export; CPU producers take none, and gclip's 0
    # (CUDA's legacy default stream) is the protocol's None
    from gclip._dlpack import _consumer_stream

    class Exporter:
        def __init__(self, dev_type):
            self.dev_type = dev_type

        def __dlpack_device__(self):
            return (self.dev_type, 0)

    assert _consumer_stream(Exporter(2), 0x1234) == 0x1234      # kDLCUDA
    assert _consumer_stream(Exporter(13), 0x1234) == 0x1234     # kDLCUDAManaged
    assert _consumer_stream(Exporter(2), 0) is None
    assert _consumer_stream(Exporter(2), None) is None
    assert _consumer_stream(Exporter(1), 0x1234) is None        # kDLCPU
    assert _consumer_stream(object(), 0x1234) is None


def test_norm_finalize_refuses_partials_on_another_device():
    # the library cannot tell host from device memory: partials on another
    # device than the plan's are refused before anything runs
    c = gclip.Clipper(max_norm=1.0)
    c.norm_accumulate([np.array([3.0, 4.0], np.float32)])
    with pytest.raises(TypeError, match="CPU or CUDA memory"):
        c.norm_finalize(torch.empty(8, dtype=torch.int32, device="meta"))
    assert c.result().op == "accumulate"


@needs_cuda
def test_norm_finalize_refuses_host_partials_for_a_cuda_plan():
    c = gclip.Clipper(max_norm=1.0)
    x = [torch.tensor([3.0, 4.0], device="cuda")]
    c.norm_accumulate(x)
    rec = torch.from_dlpack(c.partial()).clone()
    with pytest.raises(ValueError, match="partials live on device -1, the plan on 0"):
        c.norm_finalize(rec.cpu())
    c.norm_finalize(rec)
    assert abs(c.result().total_norm - 5.0) <= 1e-6


def test_norm_finalize_refuses_an_array_without_records(rng):
    # an empty array is not "no partials given" (None): refused alike for
    # NumPy and PyTorch, and the slot keeps the last result
    x = arrays(rng, shapes=((9,), (4, 3)), scale=2.0)
    ref = ref_norm([a.astype(np.float64) for a in x], 2)
    c = gclip.Clipper(max_norm=1.0)
    c.norm_accumulate(x)
    c.norm_finalize()
    before = c.result()
    assert before.total_norm == pytest.approx(ref, rel=1e-6)
    for empty in (np.empty(0, dtype=np.int32), torch.empty(0, dtype=torch.int32),
                  np.empty((0, 4), dtype=np.int32), torch.zeros(2, dtype=torch.int32)):
        c.norm_accumulate(x)
        with pytest.raises(ValueError, match="partials holds .* bytes"):
            c.norm_finalize(empty)
        with pytest.raises(ValueError, match="partials holds .* bytes"):
            c.norm_finalize(empty, 0)
    assert c.result().sequence == before.sequence + 4
    assert c.result().op == "accumulate"
    c.norm_finalize()
    assert c.result().total_norm == before.total_norm


def test_numpy_arrays_in_foreign_byte_order_or_with_partial_strides_are_refused():
    big = np.array([3.0, 4.0], dtype=">f4")
    rec = np.zeros(4, dtype=[("a", "<f4"), ("b", "<i2")])
    rec["a"] = [3, 4, 0, 0]
    rec["b"] = 7
    before = rec.copy()
    c = gclip.Clipper(max_norm=1.0)
    with pytest.raises(TypeError, match="non-native"):
        c.clip_grad_norm([big])
    with pytest.raises(ValueError, match="not whole elements"):
        c.clip_grad_norm([rec["a"]])
    with pytest.raises(TypeError, match="non-native"):
        c.total_norm([big])
    assert big.tolist() == [3.0, 4.0]
    assert rec.tobytes() == before.tobytes()
    # an ordinary strided view (whole elements) is still only refused as not dense
    c.total_norm([np.arange(8, dtype=np.float32)[::2].copy()])
    assert abs(c.result().total_norm - math.sqrt(0 + 4 + 16 + 36)) <= 1e-5


def test_a_generator_of_temporary_arrays_lives_until_the_operation_has_run():
    """The plan holds only pointers: a generator's arrays have no other
    reference, so the Clipper keeps the list it reads them into until the
    operation is queued (they were freed first: a segfault on arrays of a
    million elements, or a plan refusing reused addresses as overlapping)."""
    sizes = [1_000_000 + 1000 * i for i in range(3)]
    want = math.sqrt(sum(sizes) * 0.25)
    for clipper in (gclip.Clipper(max_norm=1.0), gt.Clipper(max_norm=1.0)):
        make = (lambda n: np.full(n, 0.5, np.float32)) if type(clipper) is gclip.Clipper \
            else (lambda n: torch.full((n,), 0.5))
        clipper.total_norm(make(n) for n in sizes)
        assert abs(clipper.result().total_norm - want) <= 1e-6 * want
        clipper.clip_grad_norm(make(n) for n in sizes)
        r = clipper.result()
        assert r.applied and abs(r.total_norm - want) <= 1e-6 * want
        small = [make(n) for n in (5, 7, 9)]
        clipper.total_norm(x + 0 for x in small)  # temporaries of reused sizes
        assert abs(clipper.result().total_norm - math.sqrt(21 * 0.25)) <= 1e-6


def test_jax_host_scalars_misaligned_and_foreign_order_leaves(rng):
    """gclip.jax reads a NumPy or JAX scalar in host memory as a number (it
    was taken for a device scalar and refused unless float32), and reads a
    misaligned or byte-swapped NumPy leaf from a native copy."""
    pytest.importorskip("jax")
    import jax.numpy as jnp
    import gclip.jax as gj
    g = {"a": rng.standard_normal(40).astype(np.float32) * 3}
    ref, _ = gj.clip_by_global_norm(g, 1.0)
    for scalar in (np.array(1.0), np.float16(1.0), jnp.array(1.0), np.array(1.0, np.float32)):
        got, info = gj.clip_by_global_norm(g, scalar)
        np.testing.assert_array_equal(np.asarray(got["a"]), np.asarray(ref["a"]))
        assert info.clip_coef < 1
    data = rng.standard_normal(10).astype(np.float32)
    buf = np.zeros(41, np.uint8)
    buf[1:41] = np.frombuffer(data.tobytes(), np.uint8)
    misaligned = np.frombuffer(buf, np.float32, count=10, offset=1)
    assert misaligned.ctypes.data % 4 and np.array_equal(misaligned, data)
    swapped = data.astype(">f4")
    want = float(np.linalg.norm(data.astype(np.float64)))
    for leaf in (misaligned, swapped):
        assert abs(gj.global_norm([leaf]) - want) <= 1e-6 * want
        out, info = gj.clip_by_global_norm([leaf], 1.0)
        np.testing.assert_allclose(np.asarray(out[0]), data / (want + 1e-6), rtol=2e-7)
    assert np.array_equal(misaligned, data) and np.array_equal(swapped, data)


def test_jax_strided_field_leaves_and_bad_bounds(rng):
    """A NumPy leaf whose strides are not whole elements (a field of a
    structured array) is read from a copy by the norms as by the clips, as
    optax reads it; a negative or NaN max_norm or clip_value raises
    InvalidArgumentError, a ValueError, leaving the leaves as they were."""
    pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import gclip.jax as gj
    rec = np.zeros(37, dtype=[("a", "<f4"), ("b", "<f2")])
    rec["a"] = rng.standard_normal(37).astype(np.float32) * 3
    rec["b"] = rng.standard_normal(37).astype(np.float16)
    before = rec.copy()
    leaf, other = rec["a"], rng.standard_normal((3, 4)).astype(np.float32)
    assert leaf.strides == (6,)
    tree = {"x": leaf, "y": other}
    want = ref_norm([leaf, other], 2.0)
    assert abs(gj.global_norm(tree) - want) <= 1e-6 * want
    assert abs(gj.global_norm(tree, norm_type=1.0) - ref_norm([leaf, other], 1.0)) <= 1e-6 * want
    peer = optax.tree.norm if hasattr(optax, "tree") else optax.global_norm
    assert abs(float(peer(tree)) - want) <= 1e-5 * want
    norms = gj.tensor_norms(tree)
    assert abs(float(norms["x"]) - ref_norm([leaf], 2.0)) <= 1e-6 * ref_norm([leaf], 2.0)
    out, info = gj.clip_by_global_norm(tree, 1.0)
    np.testing.assert_allclose(np.asarray(out["x"]), leaf / (want + 1e-6), rtol=2e-7)
    assert np.array_equal(rec, before)
    for bad in (-1.0, float("nan")):
        for call in (lambda: gj.clip_by_global_norm(tree, bad),
                     lambda: gj.clip_by_value(tree, bad),
                     lambda: gj.clip_by_norm_per_leaf(tree, bad)):
            with pytest.raises(gclip.InvalidArgumentError) as err:
                call()
            assert isinstance(err.value, ValueError) and isinstance(err.value, gclip.GclipError)
            assert err.value.status_name == "INVALID_ARGUMENT"
    assert np.array_equal(rec, before) and np.array_equal(tree["y"], other)


def test_arguments_that_are_not_numbers_are_refused_by_name(rng):
    """norm_type, eps and clip_value must be numbers: None, a string (which
    float() would read) and a bool raise a TypeError naming the argument,
    from the Clipper as from gclip.jax, before anything is written."""
    xs = arrays(rng, shapes=((5, 3), (4,)), scale=3.0)
    before = [x.copy() for x in xs]
    for bad in (None, "0.5", b"2", True):
        for name, call in (("norm_type", lambda: gclip.Clipper(1.0, norm_type=bad)),
                           ("eps", lambda: gclip.Clipper(1.0, eps=bad)),
                           ("clip_value", lambda: gclip.Clipper().clip_grad_value(xs, bad))):
            with pytest.raises(TypeError, match=f"gclip: {name} must be a number"):
                call()
    for x, b in zip(xs, before):
        assert np.array_equal(x, b)
    pytest.importorskip("jax")
    import gclip.jax as gj
    tree = {"a": xs[0], "b": xs[1]}
    for bad in (None, "1", True):
        for name, call in (("norm_type", lambda: gj.global_norm(tree, bad)),
                           ("norm_type", lambda: gj.tensor_norms(tree, bad)),
                           ("clip_value", lambda: gj.clip_by_value(tree, bad)),
                           ("norm_type", lambda: gj.clip_by_global_norm(tree, 1.0, bad))):
            with pytest.raises(TypeError, match=f"gclip: {name} must be a number"):
                call()
    for x, b in zip(xs, before):
        assert np.array_equal(x, b)
    assert gclip.Clipper(1.0, norm_type=np.float32(1.0)).norm_type == 1.0  # NumPy numbers pass


def test_jax_leaves_stay_on_their_device_and_a_mixed_tree_is_refused():
    """On a JAX with two CPU devices (its own process): the results of a
    tree committed to device 1 stay there (committed); uncommitted leaves
    give uncommitted results; a tree on both devices raises ValueError, as
    optax's arithmetic refuses it, and writes nothing. Uncommitted leaves
    and NumPy leaves beside a leaf committed to device 1 follow it there, as
    in optax: the same norms, and every result on device 1, committed."""
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    import os
    import subprocess
    import sys
    code = r'''
import jax, jax.numpy as jnp, numpy as np
import gclip.jax as gj
d0, d1 = jax.devices()[:2]
x = jax.device_put(jnp.arange(1.0, 5.0), d1)
for out in (gj.clip_by_global_norm({"x": x}, 1.0)[0]["x"], gj.clip_by_value({"x": x}, 2.0)["x"],
            gj.clip_by_norm_per_leaf({"x": x}, 1.0)[0]["x"], gj.tensor_norms({"x": x})["x"]):
    assert out.devices() == {d1} and out.committed, (out.devices(), out.committed)
u = jnp.arange(1.0, 5.0)
out = gj.clip_by_global_norm([u], 1.0)[0][0]
assert not out.committed and out.devices() == u.devices()
y = jax.device_put(jnp.arange(3.0), d0)
for call in (lambda: gj.global_norm([x, y]), lambda: gj.clip_by_global_norm([x, y], 1.0),
             lambda: gj.clip_by_value([x, y], 1.0), lambda: gj.tensor_norms([x, y])):
    try:
        call()
    except ValueError as e:
        assert "several devices" in str(e), e
    else:
        raise AssertionError("a tree on two devices was taken")
assert np.array_equal(np.asarray(x), np.arange(1.0, 5.0)) and np.array_equal(np.asarray(y), np.arange(3.0))
import optax
rng = np.random.default_rng(7)
mixed = {"a": jax.device_put(jnp.asarray(rng.standard_normal(6).astype(np.float32)) * 3, d1),
         "u": jnp.asarray(rng.standard_normal(5).astype(np.float32)),
         "n": rng.standard_normal(4).astype(np.float32)}
assert mixed["a"].committed and not mixed["u"].committed
want = float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in mixed.values())))
assert abs(gj.global_norm(mixed) - want) <= 1e-6 * want, (gj.global_norm(mixed), want)
peer = optax.clip_by_global_norm(1.0).update(mixed, optax.EmptyState())[0]
for out in (gj.clip_by_global_norm(mixed, 1.0)[0], gj.clip_by_value(mixed, 0.5),
            gj.clip_by_norm_per_leaf(mixed, 1.0)[0], gj.tensor_norms(mixed)):
    for k, v in out.items():
        assert v.devices() == {d1} and v.committed, (k, v.devices(), v.committed)
got = gj.clip_by_global_norm(mixed, 1.0)[0]
for k in mixed:
    assert peer[k].devices() == {d1}
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(peer[k]), rtol=2e-6)
norms = gj.tensor_norms(mixed)
for k, v in mixed.items():
    w = float(np.linalg.norm(np.asarray(v, np.float64)))
    assert abs(float(norms[k]) - w) <= 1e-6 * w
print("ok")
'''
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


# ---- threads, lifetimes and copies -------------------------------------------------------

def run_in_threads(worker, args):
    """worker(a) for each a, each on its own thread, with a short switch
    interval so that the threads interleave often."""
    import sys
    import threading
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(a,)) for a in args]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)


def test_threads_sharing_a_clipper_each_clip_their_own_arrays(rng):
    # a Clipper's plan has one pointer table: without its lock, one thread's
    # rebind between another's rebind and operation clipped the wrong arrays
    c = gclip.Clipper(max_norm=1.0)
    calls = 200
    failures = []

    def worker(seed):
        r = np.random.default_rng(seed)
        for _ in range(calls):
            xs = [r.standard_normal(1 << 18, dtype=np.float32) * 10]
            c.clip_grad_norm(xs)
            n = float(np.linalg.norm(xs[0].astype(np.float64)))
            if abs(n - 1.0) > 1e-5:
                failures.append(n)
    run_in_threads(worker, (1, 2))
    assert failures == []


class _ReentrantArray:
    """A NumPy array whose __dlpack__ first runs `hook` (once): an operation of
    the Clipper that is reading it, called from inside that operation."""

    def __init__(self, array, hook):
        self.array, self.hook = array, hook

    def __dlpack__(self, **kwargs):
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


@pytest.mark.parametrize("inner", ["clip_grad_norm", "clip_grad_value", "result"])
def test_an_operation_called_from_inside_another_of_the_same_clipper_is_refused(rng, inner):
    # such a call (a signal handler, a finalizer, an array's __dlpack__) would
    # rebind the plan under the outer operation, which would then clip the
    # inner call's arrays; both raise, the outer one is undone, nothing is
    # written and the Clipper still works
    c = gclip.Clipper(max_norm=0.5)
    first = arrays(rng, scale=3.0)
    c.clip_grad_norm(first)  # the last operation before the refused one
    last = c.result()
    xs, others = arrays(rng, scale=3.0), arrays(rng, scale=3.0)
    before = [x.copy() for x in xs + others]
    raised = []

    def hook():
        with pytest.raises(RuntimeError, match="do not nest") as e:
            if inner == "result":
                c.result()
            else:
                getattr(c, inner)(others, 0.1)
        raised.append(e.value)
        raise e.value

    wrapped = [_ReentrantArray(xs[0], hook)] + xs[1:]
    with pytest.raises(RuntimeError, match="do not nest"):
        c.clip_grad_norm(wrapped)
    assert len(raised) == 1
    for x, b in zip(xs + others, before):
        assert x.tobytes() == b.tobytes()
    assert c.result() == last  # still the operation before the refused one
    c.clip_grad_norm(xs)  # and the Clipper works on
    assert c.result().total_norm == pytest.approx(ref_norm([x.astype(np.float64) for x in before[:len(xs)]], 2), rel=1e-6)
    assert float(np.linalg.norm(np.concatenate([x.ravel() for x in xs]).astype(np.float64))) == pytest.approx(0.5, rel=1e-5)


def test_torch_clipper_builds_on_its_own_operations(rng):
    # tensor_norms and device_result run another operation's body inside
    # their own: not a nested call
    c = gt.Clipper(max_norm=1.0)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (5, 300)]
    for p_ in params:
        p_.grad = torch.from_numpy(rng.standard_normal(p_.numel()).astype(np.float32))
    norms = c.tensor_norms(params)
    want = [float(np.linalg.norm(p_.grad.numpy().astype(np.float64))) for p_ in params]
    assert norms.tolist() == pytest.approx(want, rel=1e-6)
    view = c.device_result()
    assert float(view["norm"]) == pytest.approx(math.hypot(*want), rel=1e-6)


@pytest.mark.parametrize("kind", ["clipper", "adaptive"])
def test_torch_clippers_hold_the_gradients_they_read_until_the_operation_returns(kind):
    # the library runs with the GIL released: another thread may set .grad to
    # None meanwhile; the gradient must stay alive until the operation returns
    import gc
    import weakref
    import gclip._core as core
    p = torch.nn.Parameter(torch.zeros(1000))
    p.grad = torch.full((1000,), 3.0)
    c = gt.Clipper(max_norm=1.0) if kind == "clipper" else gt.AdaptiveClipper("zclip")
    run = (lambda: c.clip_grad_norm([p])) if kind == "clipper" else (lambda: c.step([p]))
    run()  # the plan exists
    p.grad = torch.full((1000,), 3.0)
    ref = weakref.ref(p.grad)
    alive = []
    real_run = core.Plan.run
    real_step = gclip.adaptive.Adaptive.step

    def drop_then(real):
        def wrapper(self, *args, **kwargs):
            p.grad = None  # what another thread may do while the library runs
            gc.collect()
            alive.append(ref() is not None)
            return real(self, *args, **kwargs)
        return wrapper
    try:
        core.Plan.run = drop_then(real_run)
        gclip.adaptive.Adaptive.step = drop_then(real_step)
        run()
    finally:
        core.Plan.run = real_run
        gclip.adaptive.Adaptive.step = real_step
    assert alive and all(alive)


def test_adaptive_rebind_interrupted_is_redone(monkeypatch):
    # a KeyboardInterrupt raised just after the library's rebind (a signal
    # handler returning) must not leave the clipper believing the old
    # pointers are bound: the next step on them would write another tensor
    import gclip._core as core
    real = core.Plan.rebind
    fire = [False]

    def rebind(self, ptrs, stream=0):
        real(self, ptrs, stream)
        if fire[0]:
            fire[0] = False
            raise KeyboardInterrupt
    monkeypatch.setattr(core.Plan, "rebind", rebind)
    ac = gt.AdaptiveClipper("zclip", warmup_steps=1, max_grad_norm=1.0)
    pa, pb = torch.nn.Parameter(torch.zeros(1000)), torch.nn.Parameter(torch.zeros(1000))
    pa.grad = torch.full((1000,), 0.01)
    ac.step([pa])
    pb.grad = torch.full((1000,), 5.0)
    fire[0] = True
    with pytest.raises(KeyboardInterrupt):
        ac.step([pb])
    pa.grad.fill_(5.0)  # norm 158: a spike, clipped to ZClip's threshold (below max_grad_norm)
    ac.step([pa])
    info = ac.info()
    assert info.total_norm == pytest.approx(158.1139, rel=1e-5) and info.clip_coef < 0.01
    assert float(pa.grad.norm()) == pytest.approx(158.1139 * info.clip_coef, rel=1e-5)
    assert torch.equal(pb.grad, torch.full((1000,), 5.0))


def test_apply_clip_factor_refuses_the_read_only_arrays_of_the_last_operation(rng):
    xs = arrays(rng, scale=10.0)
    for x in xs:
        x.setflags(write=False)
    before = [x.copy() for x in xs]
    c = gclip.Clipper(max_norm=1.0)
    c.compute_clip_factor(xs)
    with pytest.raises(ValueError, match="read-only"):
        c.apply_clip_factor()
    for x, b in zip(xs, before):
        np.testing.assert_array_equal(x, b)
    ws = [b.copy() for b in before]  # writable ones of the same shapes are taken
    c.apply_clip_factor(ws)
    assert ref_norm(ws, 2) == pytest.approx(1.0, rel=1e-5)
    c.compute_clip_factor(ws)  # and a bind of writable arrays may be applied bare
    c.apply_clip_factor()
    # a call refused after it bound other arrays (tensor_norms inside one of
    # them) puts the read-only ones back, and they are still refused
    c.compute_clip_factor(xs)
    others = [b.copy() for b in before]
    with pytest.raises(gclip.GclipError):
        c.total_norm(others, tensor_norms=others[3][:len(others)])
    with pytest.raises(ValueError, match="read-only"):
        c.apply_clip_factor()
    for x, b in zip(xs, before):
        np.testing.assert_array_equal(x, b)


@pytest.mark.parametrize("make", [
    lambda: gclip.Clipper(max_norm=1.0), lambda: gt.Clipper(max_norm=1.0),
    lambda: gclip.AdaptiveClipper("zclip"), lambda: gt.ZClip(), lambda: gclip.AGCClipper(),
    lambda: gt.QuantileClip([torch.nn.Parameter(torch.zeros(3))])])
def test_clippers_cannot_be_pickled_or_copied(make):
    import copy
    import pickle
    c = make()
    for f in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be pickled or copied"):
            f(c)


def test_torch_clipper_keeps_max_plans(rng):
    c = gt.Clipper(max_norm=1.0, max_plans=2)
    for n in range(1, 6):
        p = torch.nn.Parameter(torch.zeros(n))
        p.grad = torch.ones(n)
        c.clip_grad_norm([p])
    assert len(c._plan_cache._plans) == 2


def test_zclip_shared_by_threads_returns_each_step_its_own_norm():
    # the step and the record it returns are one locked unit
    z = gt.ZClip(warmup_steps=10 ** 6, max_grad_norm=1e30)  # never clips
    bad = []

    def worker(val):
        p = torch.nn.Parameter(torch.zeros(4096))
        for _ in range(1500):
            p.grad = torch.full((4096,), val)
            want = float(p.grad.norm())
            got = float(z.step([p]))
            if abs(got - want) > 1e-3 * want:
                bad.append((want, got))
    run_in_threads(worker, (1.0, 100.0))
    assert bad == []


@pytest.mark.parametrize("refuse", ["library", "python", "other_shapes"])
def test_a_refused_call_leaves_the_last_operation_in_place(refuse):
    # a call refused after its arrays were bound must not leave the plan
    # pointing at them: apply_clip_factor() would write them, and result()
    # would read another plan
    a = np.full(4, 10.0, np.float32)
    b = np.full(4 if refuse != "other_shapes" else 3, 1.0, np.float32)
    c = gclip.Clipper(max_norm=1.0)
    c.compute_clip_factor([a])
    before = c.result()
    with pytest.raises((gclip.GclipError, ValueError)):
        if refuse == "python":
            c.clip_grad_norm([b], tensor_norms=np.zeros(1, np.float64))
        else:  # refused by the library's own check, after the bind
            c.clip_grad_norm([b], max_norm=math.nan)
    assert c.result() == before
    c.apply_clip_factor()
    np.testing.assert_array_equal(b, np.ones_like(b))
    assert float(np.linalg.norm(a.astype(np.float64))) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("nested", [False, True])
def test_a_refused_call_on_torch_clipper_leaves_the_last_operation_in_place(nested):
    # nested: tensor_norms runs total_norm inside it; the refusal is undone
    # once, by the outer call (undone twice, the plan went back to the
    # refused call's pointers)
    pa, pb = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    pa.grad, pb.grad = torch.full((4,), 10.0), torch.full((4,), 3.0)
    c = gt.Clipper(max_norm=1.0)
    c.compute_clip_factor([pa])
    with pytest.raises((gclip.GclipError, TypeError)):
        if nested:
            c.tensor_norms([pb], inv_scale="bad")
        else:
            c.clip_grad_norm([pb], max_norm=math.nan)
    c.apply_clip_factor()
    assert torch.equal(pb.grad, torch.full((4,), 3.0))
    assert float(pa.grad.norm()) == pytest.approx(1.0, rel=1e-6)


def test_a_refused_adaptive_step_on_new_shapes_keeps_the_last_steps_record():
    ac = gt.AdaptiveClipper("zclip", warmup_steps=2)
    p = torch.nn.Parameter(torch.zeros(8))
    for v in (1.0, 2.0, 3.0):
        p.grad = torch.full((8,), v)
        ac.step([p])
    info = ac.info()
    q = torch.nn.Parameter(torch.zeros(5))
    q.grad = torch.ones(5)
    with pytest.raises((gclip.GclipError, TypeError)):
        ac.step([q], inv_scale="bad")  # refused after the new shapes' Adaptive was built
    assert ac.info() == info
    assert ac.statistics()["steps"] == 3
    assert torch.equal(q.grad, torch.ones(5))


def test_negative_values_that_round_to_zero_in_float32_are_refused():
    x = np.array([0.5, -0.5], np.float32)
    c = gclip.Clipper()
    for call in (lambda: c.clip_grad_value([x], -1e-50),
                 lambda: c.clip_grad_norm([x], max_norm=-1e-50),
                 lambda: c.clip_grads_with_norm([x], -1e-50),
                 lambda: gclip.Clipper(eps=-1e-50).clip_grad_norm([x])):
        with pytest.raises(gclip.InvalidArgumentError, match="must be >= 0"):
            call()
    np.testing.assert_array_equal(x, [0.5, -0.5])


def test_a_plan_made_without_pointers_refuses_operations_until_rebound(rng):
    """gclip.Plan without data pointers holds placeholders: every operation
    raises until rebind() gives it arrays, then runs on them."""
    from gclip import _lib
    x = rng.standard_normal(4).astype(np.float32) * 3
    p = gclip.Plan([4], [_lib.F32], _lib.DEVICE_CPU)
    for call in (lambda: p.run("total_norm", p.options()),
                 lambda: p.run("clip_grad_norm", p.options()),
                 lambda: p.clip_grad_value(0.5),
                 lambda: p.clip_grads_with_norm(p.options(), 1.0, 0),
                 lambda: p.apply_clip_factor()):
        with pytest.raises(ValueError, match="without data pointers"):
            call()
    p.rebind([x.ctypes.data])
    p.run("total_norm", p.options())
    want = float(np.linalg.norm(x.astype(np.float64)))
    assert abs(p.result().total_norm - want) <= 1e-6 * want
    with pytest.raises(ValueError, match="dtype code 7"):
        gclip.Plan([4], [7], _lib.DEVICE_CPU)


def test_apply_clip_factor_refuses_tensors_of_other_shapes(rng):
    """apply_clip_factor(tensors) applies the last operation's factor: arrays
    of other shapes are refused, unchanged, and the factor still applies to
    the last operation's arrays."""
    c = gclip.Clipper(max_norm=1.0)
    big = np.full(3, 100.0, np.float32)
    c.compute_clip_factor([big])
    a = rng.standard_normal(4).astype(np.float32) * 10
    a0 = a.copy()
    c.compute_clip_factor([a])
    other = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="last operation"):
        c.apply_clip_factor([other])
    np.testing.assert_array_equal(other, 1.0)
    np.testing.assert_array_equal(a, a0)
    c.apply_clip_factor([a])
    want = a0.astype(np.float64) / (np.linalg.norm(a0.astype(np.float64)) + 1e-6)
    np.testing.assert_allclose(a, want, rtol=2e-7)
    with pytest.raises(RuntimeError, match="no operation"):
        gclip.Clipper().apply_clip_factor([a])


def test_nonfinite_policy_can_be_changed_and_is_checked():
    c = gclip.Clipper(max_norm=1.0)
    x = np.array([np.inf, 1.0], np.float32)
    c.clip_grad_norm([x])
    assert c.result().nonfinite
    c.nonfinite = "error"
    assert c.nonfinite == "error"
    c.clip_grad_norm([x])
    with pytest.raises(gclip.NonFiniteError):
        c.result()
    with pytest.raises(ValueError, match="nonfinite"):
        c.nonfinite = "bogus"
    with pytest.raises(TypeError, match="nonfinite"):
        gclip.Clipper(nonfinite=["skip"])
    assert c.nonfinite == "error"
    np.testing.assert_array_equal(x, [np.inf, 1.0])


def test_jax_tensor_norms_of_a_committed_sharded_leaf():
    jax = pytest.importorskip("jax")
    import gclip.jax as gj
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
    x = jax.device_put(jax.numpy.arange(4.0, dtype=jax.numpy.float32), NamedSharding(mesh, P("x")))
    out = gj.tensor_norms({"a": x})["a"]
    assert out.shape == () and float(out) == pytest.approx(math.sqrt(14.0), rel=1e-6)


def test_a_load_interrupted_as_it_returns_is_undone_whole():
    # an interrupt that surfaces just after the load installed other
    # hyperparameters and their state: both are put back, never one of them
    import _thread
    ac = gclip.AdaptiveClipper("zclip", warmup_steps=2)
    a = np.ones(8, np.float32)
    for v in (1.0, 2.0, 3.0):
        a[:] = v
        ac.step([a])
    other = gclip.AdaptiveClipper("zclip", warmup_steps=7, alpha=0.5)
    other.step([np.ones(8, np.float32)])
    real = ac._prepare_load

    def prepare(s):
        install = real(s)

        def interrupted():
            install()
            _thread.interrupt_main()  # raised as install() returns
        return interrupted
    ac._prepare_load = prepare
    with pytest.raises(KeyboardInterrupt):
        ac.load_state_dict(other.state_dict())
    assert ac.hyperparameters["warmup_steps"] == 2 and ac.hyperparameters["alpha"] == 0.97
    assert ac.statistics()["steps"] == 3
