"""torch.library registration of the drop-ins, so that torch.compile traces
them as single opaque operations: each declares the gradients it writes
(mutates_args) and has a fake implementation for tracing."""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from . import torch as _gt


def _norm_dtype(grads: List[Tensor], fp32_norm: bool) -> torch.dtype:
    """The dtype of the norm the drop-ins return: the gradients' dtypes
    promoted, float16/bfloat16 counting as float32 under fp32_norm (a
    float64 gradient keeps a float64 norm either way)."""
    dtype = None
    for g in grads:
        d = torch.float32 if fp32_norm and g.dtype in _gt._LOW_DTYPES else g.dtype
        dtype = d if dtype is None else torch.promote_types(dtype, d)
    return dtype


@torch.library.custom_op("gclip::clip_grad_norm_", mutates_args=("grads",))
def clip_grad_norm_op(grads: List[Tensor], max_norm: float, norm_type: float,
                      error_if_nonfinite: bool, fp32_norm: bool, skip: bool) -> Tensor:
    return _gt._clip_grad_norm_impl(grads, max_norm, norm_type, error_if_nonfinite, fp32_norm, skip)


@clip_grad_norm_op.register_fake
def _(grads, max_norm, norm_type, error_if_nonfinite, fp32_norm, skip):
    return grads[0].new_empty((), dtype=_norm_dtype(grads, fp32_norm))


@torch.library.custom_op("gclip::get_total_norm", mutates_args=())
def get_total_norm_op(tensors: List[Tensor], norm_type: float, error_if_nonfinite: bool,
                      fp32_norm: bool) -> Tensor:
    return _gt._get_total_norm_impl(tensors, norm_type, error_if_nonfinite, fp32_norm)


@get_total_norm_op.register_fake
def _(tensors, norm_type, error_if_nonfinite, fp32_norm):
    return tensors[0].new_empty((), dtype=_norm_dtype(tensors, fp32_norm))


@torch.library.custom_op("gclip::clip_grads_with_norm_", mutates_args=("grads",))
def clip_grads_with_norm_op(grads: List[Tensor], max_norm: float, total_norm: Tensor,
                            skip: bool) -> None:
    _gt._clip_grads_with_norm_impl(grads, max_norm, total_norm, skip)


@clip_grads_with_norm_op.register_fake
def _(grads, max_norm, total_norm, skip):
    return None


@torch.library.custom_op("gclip::clip_grad_value_", mutates_args=("grads",))
def clip_grad_value_op(grads: List[Tensor], clip_value: float) -> None:
    _gt._clip_grad_value_impl(grads, clip_value)


@clip_grad_value_op.register_fake
def _(grads, clip_value):
    return None
