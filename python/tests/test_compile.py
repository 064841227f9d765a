"""torch.library registration: torch.compile of a training step that clips
with gclip.torch gives the eager result."""

import math
import os

import numpy as np
import pytest
import torch

import gclip.torch as gt


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def batches(rng, n):
    return [(torch.from_numpy(rng.standard_normal((8, 16)).astype(np.float32) * 3),
             torch.from_numpy(rng.standard_normal((8, 4)).astype(np.float32))) for _ in range(n)]


def train(step_fn, model, data):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        norms.append(step_fn(model, opt, x, y))
    return norms


def step(model, opt, x, y):
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    norm = gt.clip_grad_norm_(model.parameters(), 0.5)
    gt.clip_grad_value_(model.parameters(), 0.05)
    opt.step()
    return norm.detach()


def test_ops_are_registered():
    for name in ("clip_grad_norm_", "get_total_norm", "clip_grads_with_norm_", "clip_grad_value_"):
        assert hasattr(torch.ops.gclip, name)
    schema = str(torch.ops.gclip.clip_grad_norm_.default._schema)
    assert "!)[] grads" in schema  # declared as mutated


def test_opcheck():
    gen = torch.Generator().manual_seed(47)
    g = [torch.randn(5, generator=gen), torch.randn(3, 2, generator=gen)]
    torch.library.opcheck(torch.ops.gclip.clip_grad_norm_.default, (g, 1.0, 2.0, False, False, False))
    torch.library.opcheck(torch.ops.gclip.get_total_norm.default, (g, 2.0, False, False))
    torch.library.opcheck(torch.ops.gclip.clip_grad_value_.default, (g, 0.5))


@pytest.mark.parametrize("dtype,norm_type,fp32_norm", [
    (torch.float64, 2.0, True), (torch.float64, 2.0, False), (torch.float16, 0.0, True),
    (torch.bfloat16, -1.0, True), (torch.float16, 2.0, True), (torch.float16, 2.0, False),
    (torch.bfloat16, float("inf"), False)])
def test_opcheck_norm_dtypes(dtype, norm_type, fp32_norm):
    """The fake kernels give the dtype of the real norm: the gradients'
    dtypes promoted, float16/bfloat16 as float32 under fp32_norm (float64
    stays float64; norm types <= 0, which PyTorch's kernels compute, too)."""
    gen = torch.Generator().manual_seed(48)
    g = [torch.randn(5, generator=gen).to(dtype), torch.randn(3, 2, generator=gen).to(dtype)]
    args = (g, norm_type, False, fp32_norm)
    torch.library.opcheck(torch.ops.gclip.get_total_norm.default, args)
    torch.library.opcheck(torch.ops.gclip.clip_grad_norm_.default,
                          ([t.clone() for t in g], 1.0, norm_type, False, fp32_norm, False))
    want = torch.float32 if fp32_norm and dtype != torch.float64 else dtype
    assert gt.get_total_norm(g, norm_type, fp32_norm=fp32_norm).dtype == want
    mixed = g + [torch.randn(4, generator=gen)]  # a float32 tensor beside them
    assert gt.get_total_norm(mixed, norm_type, fp32_norm=fp32_norm).dtype == \
        torch.promote_types(want, torch.float32)


def test_compiled_training_step_matches_eager(rng):
    data = batches(rng, 4)
    eager_model = make_model(0)
    eager_norms = train(step, eager_model, data)
    compiled_model = make_model(0)
    compiled_norms = train(torch.compile(step, backend="aot_eager"), compiled_model, data)
    for a, b in zip(eager_norms, compiled_norms):
        torch.testing.assert_close(a, b)
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p, q)


def test_clip_and_step_compile_without_graph_breaks(rng):
    """The clipping and the optimizer update trace into one graph."""
    model = make_model(1)
    x, y = batches(rng, 1)[0]
    torch.nn.functional.mse_loss(model(x), y).backward()
    params = list(model.parameters())
    ref = [p.grad.clone() for p in params]
    expected_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in ref]))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def clip_only(ps):
        n = gt.clip_grad_norm_(ps, 0.1)
        with torch.no_grad():
            for p in ps:
                p.sub_(p.grad, alpha=0.1)
        return n

    before = [p.detach().clone() for p in params]
    n = clip_only(params)
    torch.testing.assert_close(n, expected_norm)
    coef = 0.1 / (float(expected_norm) + 1e-6)
    for p, b, g in zip(params, before, ref):
        torch.testing.assert_close(p.grad, g * coef)
        torch.testing.assert_close(p.detach(), b - 0.1 * g * coef)


def test_fullgraph_compile_on_a_thread_that_never_clipped_eagerly(rng):
    """The drop-in's per-thread scanner is made on a thread's first eager
    call; a compiled region must not trace its construction (ctypes arrays
    are not traceable), so a fresh thread compiles with fullgraph=True too."""
    import threading
    model = make_model(1)
    x, y = batches(rng, 1)[0]
    torch.nn.functional.mse_loss(model(x), y).backward()
    params = list(model.parameters())
    expected = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    out = {}

    def run():
        try:
            torch._dynamo.reset()
            out["norm"] = torch.compile(lambda ps: gt.clip_grad_norm_(ps, 0.1),
                                        fullgraph=True, backend="aot_eager")(params)
        except Exception as e:  # reported below, on the test's thread
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert "error" not in out, repr(out.get("error"))
    torch.testing.assert_close(out["norm"], expected)


# GCLIP_TEST_COMPILED_LISTS: how many of test_torch_dropin_random's lists
# (seeds 0 to N - 1) go through torch.compile
COMPILED_CASES = int(os.environ.get("GCLIP_TEST_COMPILED_LISTS", "40"))


@pytest.mark.parametrize("seed", range(COMPILED_CASES))
def test_random_lists_compiled_give_the_eager_bits(seed):
    """test_torch_dropin_random's seeded lists (mixed dtypes, layouts with gaps,
    missing and repeated gradients, non-finite elements) through one of the
    four drop-ins compiled (aot_eager) and eager: the same exception, or the
    same norm and gradients bit for bit; a call that raises writes nothing."""
    from test_torch_dropin_random import (copy_params, grads_of, make_case, max_norm_of,
                                          outcome, same_bits)
    rng, params = make_case(seed, "cpu")
    op = rng.choice(["norm", "value", "with_norm", "total"])
    if op == "norm":
        max_norm, p = max_norm_of(rng), rng.choice([2.0, 1.0, math.inf, 0.5, 3.0])

        def fn(ps):
            return gt.clip_grad_norm_(ps, max_norm, p)
    elif op == "value":
        bound = rng.choice([0.0, 1e-3, 0.5, 100.0, math.inf])

        def fn(ps):
            return gt.clip_grad_value_(ps, bound)
    elif op == "with_norm":
        max_norm = max_norm_of(rng)
        total = torch.tensor(rng.choice([0.0, 1e-3, 1.0, 10.0, math.inf, math.nan]))

        def fn(ps):
            return gt.clip_grads_with_norm_(ps, max_norm, total)
    else:
        p = rng.choice([2.0, 1.0, math.inf, 3.0])

        def fn(ps):
            return gt.get_total_norm(grads_of(ps), p)
    eager, compiled = copy_params(params), copy_params(params)
    torch._dynamo.reset()
    e_ok, e_res = outcome(fn, eager)
    c_ok, c_res = outcome(torch.compile(fn, backend="aot_eager"), compiled)
    assert e_ok == c_ok, (e_res, c_res)
    if not e_ok:
        assert e_res.split(":")[0] == c_res.split(":")[0], (e_res, c_res)  # the type
        for a, b in zip(grads_of(params), grads_of(compiled)):
            assert same_bits(a, b)
        return
    assert (e_res is None) == (c_res is None)
    if e_res is not None:
        assert same_bits(e_res, c_res), (e_res, c_res)
    for a, b in zip(grads_of(eager), grads_of(compiled)):
        assert same_bits(a, b)
