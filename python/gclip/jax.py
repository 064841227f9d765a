"""gclip for JAX: norms of a pytree (read in place through DLPack) and a
functional clip that returns new arrays (JAX arrays are immutable).

    import gclip.jax as gj
    norm = gj.global_norm(grads)                              # float
    grads, info = gj.clip_by_global_norm(grads, max_norm=1.0)  # new pytree, ClipResult

Host (CPU) arrays are supported; the functional clip copies each leaf once
into a writable host buffer, clips it there and hands it back to JAX.
"""

from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ._core import Clipper, ClipResult

__all__ = ["global_norm", "tensor_norms", "clip_by_global_norm", "clip_by_value",
           "clip_by_norm_per_leaf"]

_SUPPORTED = {"float32", "float16", "bfloat16", "float64"}


def _leaves(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    for i, x in enumerate(leaves):
        if not hasattr(x, "dtype"):
            raise TypeError(f"gclip: leaf {i} is a {type(x).__name__}, not an array; gclip takes "
                            "arrays (jax.numpy.asarray makes one)")
        if str(x.dtype) not in _SUPPORTED:
            raise TypeError(f"gclip: leaf {i} has dtype {x.dtype}; gclip takes float32, float16, "
                            "bfloat16 and float64")
    return leaves, treedef


def _writable_copies(leaves):
    out = []
    for x in leaves:
        out.append(np.array(x, copy=True, order="C"))  # bfloat16: ml_dtypes.bfloat16
    return out


def global_norm(tree: Any, norm_type: float = 2.0) -> float:
    """p-norm of all leaves together, exact to 1e-6 (read without copies)."""
    leaves, _ = _leaves(tree)
    c = Clipper(norm_type=norm_type, nonfinite="propagate")
    c.total_norm(leaves)
    return c.result().total_norm


def tensor_norms(tree: Any, norm_type: float = 2.0):
    """Each leaf's own p-norm, as a pytree of float32 scalars."""
    leaves, treedef = _leaves(tree)
    out = np.empty(len(leaves), dtype=np.float32)
    c = Clipper(norm_type=norm_type, nonfinite="propagate")
    c.total_norm(leaves, tensor_norms=out)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v) for v in out])


def clip_by_global_norm(tree: Any, max_norm: float, norm_type: float = 2.0, *,
                        nonfinite: str = "skip", inv_scale: float = 1.0) -> Tuple[Any, ClipResult]:
    """New leaves scaled by min(1, max_norm / (N + 1e-6)) * inv_scale, and the
    result (norm before clipping, coefficient, non-finite flag). With the
    default nonfinite="skip" a NaN/Inf norm returns the leaves unchanged."""
    leaves, treedef = _leaves(tree)
    copies = _writable_copies(leaves)
    c = Clipper(max_norm=max_norm, norm_type=norm_type, nonfinite=nonfinite)
    c.clip_grad_norm(copies, inv_scale=inv_scale)
    res = c.result()
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in copies]), res


def clip_by_norm_per_leaf(tree: Any, max_norm: float, norm_type: float = 2.0, *,
                          nonfinite: str = "skip") -> Tuple[Any, ClipResult]:
    """Each leaf scaled to its own norm (Keras clipnorm)."""
    leaves, treedef = _leaves(tree)
    copies = _writable_copies(leaves)
    c = Clipper(max_norm=max_norm, norm_type=norm_type, nonfinite=nonfinite)
    c.clip_grad_norm_per_tensor(copies)
    res = c.result()
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in copies]), res


def clip_by_value(tree: Any, clip_value: float) -> Any:
    """New leaves clamped to [-clip_value, clip_value] (NaN kept)."""
    leaves, treedef = _leaves(tree)
    copies = _writable_copies(leaves)
    Clipper().clip_grad_value(copies, clip_value)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in copies])
