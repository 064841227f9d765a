"""PyTorch's own test cases for the clipping functions (test/test_nn.py of
pytorch/pytorch: test_clip_grad_norm, test_clip_grad_value,
test_clip_grad_norm_error_if_nonfinite, test_clip_grad_norm_multi_device),
run against gclip.torch. The setups and assertions are PyTorch's; only the
harness is pytest (assertEqual -> torch.testing.assert_close with PyTorch's
default tolerances) and the functions come from gclip.torch."""

import warnings
from itertools import product
from math import inf, nan

import pytest
import torch
from torch import nn

from conftest import GCLIP_CUDA, device_params
from gclip.torch import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm


def assert_equal(a, b):
    a = a if isinstance(a, torch.Tensor) else torch.tensor(a)
    b = b if isinstance(b, torch.Tensor) else torch.tensor(b)
    torch.testing.assert_close(a.to(b.device), b, check_dtype=False, equal_nan=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("norm_type", [0.5, 1.5, 2, 4, "inf"])
def test_clip_grad_norm(norm_type, foreach, device):
    torch.manual_seed(0)
    layer = nn.Linear(10, 10).to(device)
    max_norm = 2

    def compute_norm(norm_type):
        norm_type = float(norm_type)
        if norm_type != inf:
            total_norm = 0
            for p in layer.parameters():
                total_norm += p.grad.data.abs().pow(norm_type).sum()
            return pow(total_norm, 1.0 / norm_type)
        return max(p.grad.data.abs().max() for p in layer.parameters())

    def compare_scaling(grads):
        p_scale = [p.grad.data.div(g).view(-1) for p, g in zip(layer.parameters(), grads)]
        scale = torch.cat(p_scale)
        assert_equal(scale.std(), torch.tensor(0.0))
        return scale[0]

    grads = (torch.arange(1.0, 101, device=device).view(10, 10),
             torch.ones(10, device=device).div(1000))
    for p, g in zip(layer.parameters(), grads):
        p._grad = g.clone().view_as(p.data)
    norm_before = compute_norm(norm_type)
    norm = clip_grad_norm_(layer.parameters(), max_norm, norm_type=norm_type, foreach=foreach)
    norm_after = compute_norm(norm_type)
    assert_equal(norm, norm_before)
    assert_equal(norm_after, torch.tensor(float(max_norm)))
    assert norm_after <= norm_before
    compare_scaling(grads)

    # decomposed APIs should behave as expected
    grads = (torch.arange(1.0, 101, device=device).view(10, 10),
             torch.ones(10, device=device).div(1000))
    for p, g in zip(layer.parameters(), grads):
        p._grad = g.clone().view_as(p)
    norm_before = compute_norm(norm_type)
    live = [p.grad for p in layer.parameters()]
    total_norm = get_total_norm(live, norm_type=norm_type, foreach=foreach)
    clip_grads_with_norm_(layer.parameters(), max_norm, total_norm, foreach=foreach)
    norm_after = compute_norm(norm_type)
    assert_equal(total_norm, norm_before)
    assert_equal(norm_after, torch.tensor(float(max_norm)))
    assert norm_after <= norm_before
    compare_scaling(grads)  # the originals: the live gradients were clipped in place

    # Small gradients should be left unchanged
    grads = (torch.rand(10, 10, device=device).div(10000), torch.ones(10, device=device).div(500))
    for p, g in zip(layer.parameters(), grads):
        p.grad.data.copy_(g)
    norm_before = compute_norm(norm_type)
    norm = clip_grad_norm_(layer.parameters(), max_norm, norm_type=norm_type, foreach=foreach)
    norm_after = compute_norm(norm_type)
    assert_equal(norm, norm_before)
    assert_equal(norm_before, norm_after)
    assert norm_after <= max_norm
    scale = compare_scaling(grads)
    assert_equal(scale, torch.tensor(1.0))

    # Should accept a single Tensor as input
    gen = torch.Generator().manual_seed(90)
    p1, p2 = (torch.randn(10, 10, generator=gen).to(device) for _ in range(2))
    g = torch.arange(1.0, 101, device=device).view(10, 10)
    p1._grad = g.clone()
    p2._grad = g.clone()
    clip_grad_norm_(p1, max_norm, norm_type=norm_type, foreach=foreach)
    clip_grad_norm_([p2], max_norm, norm_type=norm_type, foreach=foreach)
    assert_equal(p1.grad, p2.grad)

    # Should warn when the parameters generator is exhausted
    params = layer.parameters()
    for _p in params:
        pass
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        clip_grad_norm_(params, max_norm, norm_type=norm_type, foreach=foreach)
        assert len(w) == 1
        assert str(w[0].message) == "`parameters` is an empty generator, no gradient clipping will occur."


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("foreach", [False, True])
def test_clip_grad_value(foreach, device):
    layer = nn.Linear(10, 10).to(device)
    clip_value = 2.5

    grad_w = torch.arange(-50.0, 50, device=device).view(10, 10).div_(5)
    grad_b = torch.ones(10, device=device).mul_(2)
    for grad_list in [[grad_w, grad_b], [grad_w, None]]:
        for p, g in zip(layer.parameters(), grad_list):
            p._grad = g.clone().view_as(p.data) if g is not None else g

        clip_grad_value_(layer.parameters(), clip_value, foreach=foreach)
        for p in filter(lambda p: p.grad is not None, layer.parameters()):
            assert p.grad.data.max() <= clip_value
            assert p.grad.data.min() >= -clip_value

    # Should accept a single Tensor as input
    gen = torch.Generator().manual_seed(127)
    p1, p2 = (torch.randn(10, 10, generator=gen).to(device) for _ in range(2))
    g = torch.arange(-50.0, 50, device=device).view(10, 10).div_(5)
    p1._grad = g.clone()
    p2._grad = g.clone()
    clip_grad_value_(p1, clip_value, foreach=foreach)
    clip_grad_value_([p2], clip_value, foreach=foreach)
    assert_equal(p1.grad, p2.grad)


@pytest.mark.parametrize("device", device_params())
def test_clip_grad_norm_error_if_nonfinite(device):
    norms_pos = [0.1, 1, 2, 3.5, inf]
    norms_neg = [-0.1, -1, -2, -3.5]
    norms_except_0 = norms_pos + norms_neg
    norms_all = norms_except_0 + [0]

    # (grad_only_one_elem, prefix_finite_grad_param, scalars, norms_nonfinite, norms_finite)
    test_cases = [
        # errors from an infinite grad
        (False, False, [inf, -inf], norms_except_0, [0]),
        (False, True, [inf, -inf], norms_pos, norms_neg + [0]),
        (True, False, [inf, -inf], norms_pos, norms_neg + [0]),
        (True, True, [inf, -inf], norms_pos, norms_neg + [0]),
        # errors from a NaN grad
        (False, False, [nan], norms_except_0, [0]),
        (False, True, [nan], norms_except_0, [0]),
        (True, False, [nan], norms_except_0, [0]),
        (True, True, [nan], norms_except_0, [0]),
        # a grad that should never error
        (False, False, [2e22, -2e22], [], norms_all),
        (False, True, [2e22, -2e22], [], norms_all),
        (True, False, [2e22, -2e22], [], norms_all),
        (True, True, [2e22, -2e22], [], norms_all),
        # a grad that overflows to inf for only some norm orders
        (False, False, [2e200, -2e200], [3.5, 2, -2, -3.5], [inf, 1, 0.1, 0, -1, -0.1]),
        (False, True, [2e200, -2e200], [3.5, 2], norms_neg + [inf, 1, 0.1, 0]),
        (True, False, [2e200, -2e200], [3.5, 2], norms_neg + [inf, 1, 0.1, 0]),
        (True, True, [2e200, -2e200], [3.5, 2], norms_neg + [inf, 1, 0.1, 0]),
    ]

    def gen_parameters(scalar, grad_only_one_elem, prefix_finite_grad_param):
        param = torch.ones(10, dtype=torch.float64, device=device, requires_grad=True)
        if grad_only_one_elem:
            param[1].mul(scalar).sum().backward()
        else:
            param.mul(scalar).sum().backward()
        if prefix_finite_grad_param:
            prefix_param = torch.ones(1, dtype=torch.float64, device=device, requires_grad=True)
            prefix_param.mul(1).sum().backward()
            return [prefix_param, param]
        return [param]

    def run_test_case(norm_type, error_if_nonfinite, scalar, grad_only_one_elem,
                      prefix_finite_grad_param, is_norm_nonfinite):
        parameters = gen_parameters(scalar, grad_only_one_elem, prefix_finite_grad_param)
        if is_norm_nonfinite and error_if_nonfinite:
            error_msg = f"The total norm of order {float(norm_type)} for gradients"
            grads_before = [p.grad.clone() for p in parameters]
            with pytest.raises(RuntimeError, match=error_msg):
                clip_grad_norm_(parameters, 1, norm_type=norm_type, error_if_nonfinite=True)
            # Grad should not change if error is thrown
            grads_after = [p.grad for p in parameters]
            for a, b in zip(grads_before, grads_after):
                assert_equal(b, a)
        else:
            clip_grad_norm_(parameters, 1, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite)

    for grad_only_one_elem, prefix_finite_grad_param, scalars, norms_nonfinite, norms_finite in test_cases:
        for error_if_nonfinite in [False, True]:
            for norm_type, scalar in product(norms_nonfinite, scalars):
                run_test_case(norm_type, error_if_nonfinite, scalar, grad_only_one_elem,
                              prefix_finite_grad_param, True)
            for norm_type, scalar in product(norms_finite, scalars):
                run_test_case(norm_type, error_if_nonfinite, scalar, grad_only_one_elem,
                              prefix_finite_grad_param, False)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2 or not GCLIP_CUDA,
                    reason="needs two CUDA devices and gclip's CUDA backend")
@pytest.mark.parametrize("foreach", [False, True])
def test_clip_grad_norm_multi_device(foreach):
    class TestModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Linear(10, 10)
            self.layer2 = nn.Linear(10, 10)

    test_model = TestModel()
    test_model.layer1.to("cuda:0")
    test_model.layer2.to("cuda:1")
    ref_model = TestModel().to("cuda:0")
    for norm_type in [2.0, inf]:
        for p in test_model.parameters():
            p.grad = torch.ones_like(p)
        for p in ref_model.parameters():
            p.grad = torch.ones_like(p)
        norm = clip_grad_norm_(test_model.parameters(), 0.5, norm_type=norm_type, foreach=foreach)
        # the reference is PyTorch's own clip_grad_norm_ (the name above is gclip's)
        expected = nn.utils.clip_grad_norm_(ref_model.parameters(), 0.5, norm_type=norm_type,
                                            foreach=foreach)
        assert_equal(norm, expected)
        for p, pe in zip(test_model.parameters(), ref_model.parameters()):
            assert_equal(p.grad.to(pe.device), pe.grad)
