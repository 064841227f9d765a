"""gclip for JAX: norms of a pytree (read in place through DLPack) and a
functional clip that returns new arrays (JAX arrays are immutable).

    import gclip.jax as gj
    norm = gj.global_norm(grads)                              # float
    grads, info = gj.clip_by_global_norm(grads, max_norm=1.0)  # new pytree, ClipResult

Host (CPU) arrays: the functional clip copies each leaf once into a writable
host buffer, clips it there and hands it back to JAX, and `tensor_norms`
writes a host buffer. Arrays in GPU memory stay there: every output (the
copies the functional clip writes, the buffer of `tensor_norms`) is a fresh
JAX array on the leaves' device, written in place through DLPack before
anything else sees it, and the call waits for gclip's kernels before it
returns, so JAX's streams never race them. A tree's committed JAX arrays are
on one device (leaves committed to several are refused, as optax's
arithmetic refuses them); its uncommitted and NumPy leaves are read where
the committed ones are (copied there), as JAX's arithmetic moves them.
"""

from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _dlpack, _lib
from ._core import Clipper, ClipResult

__all__ = ["global_norm", "tensor_norms", "clip_by_global_norm", "clip_by_value",
           "clip_by_norm_per_leaf"]

_SUPPORTED = {"float32", "float16", "bfloat16", "float64"}


class _Clipper(Clipper):
    """The Clipper of this module: it writes only the fresh buffers allocated
    here (copies, outputs), never a caller's array, so JAX arrays may be
    written (gclip.Clipper refuses them: they are immutable).

    A leaf one plan cannot read as it is is read from a copy (on `device`, the
    leaves' JAX device, or in host memory when None): a leaf whose bytes an
    earlier one (in address order) already covers (a pytree may hold one
    array twice, or two views of one buffer, and a norm counts each leaf, as
    optax's does), a NumPy scalar (no memory of its own), a leaf that is
    not dense (or whose strides are not whole elements), one whose data is
    not aligned to its element size, and, in a
    tree on a GPU, a leaf in host memory. Each leaf is described once; the leaves read, copies
    included, are kept until the next operation."""
    _jax_writable = True

    def __init__(self, device=None, **kwargs):
        super().__init__(**kwargs)
        self._device = device
        self._read = []

    def _describe(self, tensors, stream):
        # a NumPy scalar, and a NumPy view whose strides are not whole
        # elements (a field of a structured array), which DLPack cannot
        # describe: a dense copy of their own
        leaves = [np.array(x) if isinstance(x, np.generic)
                  else np.ascontiguousarray(x) if isinstance(x, np.ndarray)
                  and any(s % x.itemsize for s in x.strides) else x for x in tensors]
        infos = super()._describe(leaves, stream)
        spans = []
        for k, info in enumerate(infos):
            # in a tree on a GPU: a NumPy leaf, or an uncommitted array on another device
            elsewhere = self._device is not None and (
                info.device < 0 or isinstance(leaves[k], jax.Array)
                and self._device not in leaves[k].devices())
            if not info.dense or info.ptr % _lib.DTYPE_SIZE[info.dtype] or elsewhere:
                spans.append((0, 0, k, True))
            elif info.numel > 0:
                spans.append((info.ptr, info.ptr + info.numel * _lib.DTYPE_SIZE[info.dtype], k,
                              False))
        spans.sort()
        end = 0
        for start, stop, k, copy in spans:
            if copy or start < end:
                leaves[k] = _writable_copies([leaves[k]], self._device)[0]
                infos[k] = _dlpack.describe(leaves[k], None, jax_writable=True,
                                            name=f"tensor {k}")
            else:
                end = stop
        self._read = leaves
        return infos


def _leaves(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    for i, x in enumerate(leaves):
        if not hasattr(x, "dtype"):
            raise TypeError(f"gclip: leaf {i} is a {type(x).__name__}, not an array; gclip takes "
                            "arrays (jax.numpy.asarray makes one)")
        if isinstance(x, np.ndarray) and not x.dtype.isnative:  # e.g. '>f4': a native copy
            x = leaves[i] = x.astype(x.dtype.newbyteorder("="))
        if str(x.dtype) not in _SUPPORTED:
            raise TypeError(f"gclip: leaf {i} has dtype {x.dtype}; gclip takes float32, float16, "
                            "bfloat16 and float64")
    return leaves, treedef


def _tree_device(leaves):
    """The one JAX device of the tree (None when it has no JAX array) and
    whether a leaf is committed to it. As in JAX's arithmetic (and so
    optax's), uncommitted arrays follow the device the committed ones are
    on; committed leaves on several devices are refused, as are uncommitted
    ones on several with none committed: JAX CPU devices all read as host
    memory to DLPack, so the Clipper alone would not see it."""
    committed, uncommitted = set(), set()
    for x in leaves:
        if isinstance(x, jax.Array):
            (committed if x.committed else uncommitted).update(x.devices())
    devices = committed or uncommitted
    if len(devices) > 1:
        raise ValueError("gclip: the leaves are on several devices "
                         f"({', '.join(sorted(map(str, devices)))}); put them on one")
    return (next(iter(devices)) if devices else None), bool(committed)


def _gpu_device(leaves):
    """The JAX device of the leaves when gclip reads them in CUDA memory,
    else None: host memory, where outputs are NumPy buffers."""
    device, _ = _tree_device(leaves)
    if device is None:
        return None
    first = next(k for k, x in enumerate(leaves)
                 if isinstance(x, jax.Array) and device in x.devices())
    if _dlpack.describe(leaves[first], name=f"leaf {first}").device < 0:  # CPU, pinned host
        return None
    return device


def _writable_copies(leaves, device=None):
    """One writable copy of each leaf: a NumPy array in host memory, or a new
    JAX buffer on `device` (jnp.array(copy=True) always makes a new buffer,
    which no other JAX array shares; a leaf that is not a JAX array, or is
    an uncommitted one elsewhere, is put on `device` too, where the Clipper
    reads the others)."""
    if device is not None:
        return [jnp.array(x, copy=True) if isinstance(x, jax.Array) and device in x.devices()
                else jnp.array(x, copy=True, device=device) for x in leaves]
    out = []
    for x in leaves:
        out.append(np.array(x, copy=True, order="C"))  # bfloat16: ml_dtypes.bfloat16
    return out


def _outputs(copies, leaves):
    """The clipped copies as JAX arrays where optax's results would be: a
    host copy of a committed JAX array goes back to its device, committed;
    in a tree with a committed leaf, the others' go to that device, committed
    too (JAX's arithmetic moves uncommitted operands there); in a tree with
    none, to JAX's default device. A copy already on the GPU is a JAX array
    on the tree's device."""
    device, committed = _tree_device(leaves)
    out = []
    for a, x in zip(copies, leaves):
        if not isinstance(a, np.ndarray):
            out.append(a)
        elif isinstance(x, jax.Array) and x.committed:
            # a leaf's norm (0-d) cannot take a sharding that splits a dimension:
            # it goes to the leaf's device (one: a tree on several is refused)
            same = a.shape == x.shape
            out.append(jax.device_put(a, x.sharding if same else device))
        elif committed:
            out.append(jax.device_put(a, device))
        else:
            out.append(jnp.asarray(a))
    return out


def _wait(c: Clipper, device) -> None:
    """On a GPU: wait for the Clipper's last operation (its kernels run on
    gclip's stream, not JAX's), before JAX reads what they wrote."""
    if device is not None and c.plan is not None:
        c.plan.get_result()


def global_norm(tree: Any, norm_type: float = 2.0) -> float:
    """p-norm of all leaves together, exact to 1e-6 (read in place; a leaf
    that repeats another's bytes, is not dense or is a NumPy scalar is read
    from a copy)."""
    leaves, _ = _leaves(tree)
    c = _Clipper(_gpu_device(leaves), norm_type=norm_type, nonfinite="propagate")
    c.total_norm(leaves)
    return c.result().total_norm


def tensor_norms(tree: Any, norm_type: float = 2.0):
    """Each leaf's own p-norm, as a pytree of float32 scalars."""
    leaves, treedef = _leaves(tree)
    device = _gpu_device(leaves)
    c = _Clipper(device, norm_type=norm_type, nonfinite="propagate")
    if device is None:
        out = np.empty(len(leaves), dtype=np.float32)
        c.total_norm(leaves, tensor_norms=out)
        return jax.tree_util.tree_unflatten(treedef, _outputs([np.array(v) for v in out], leaves))
    # a new buffer on the leaves' device, written by the kernel through DLPack
    out = jnp.zeros(len(leaves), dtype=jnp.float32, device=device)
    c.total_norm(leaves, tensor_norms=out)
    _wait(c, device)
    return jax.tree_util.tree_unflatten(treedef, list(out))


def clip_by_global_norm(tree: Any, max_norm: float, norm_type: float = 2.0, *,
                        nonfinite: str = "skip", inv_scale: float = 1.0) -> Tuple[Any, ClipResult]:
    """New leaves scaled by min(1, max_norm / (N + 1e-6)) * inv_scale, and the
    result (norm before clipping, coefficient, non-finite flag). With the
    default nonfinite="skip" a NaN/Inf norm returns the leaves unchanged."""
    leaves, treedef = _leaves(tree)
    device = _gpu_device(leaves)
    copies = _writable_copies(leaves, device)
    c = _Clipper(max_norm=max_norm, norm_type=norm_type, nonfinite=nonfinite)
    c.clip_grad_norm(copies, inv_scale=inv_scale)
    res = c.result()
    return jax.tree_util.tree_unflatten(treedef, _outputs(copies, leaves)), res


def clip_by_norm_per_leaf(tree: Any, max_norm: float, norm_type: float = 2.0, *,
                          nonfinite: str = "skip") -> Tuple[Any, ClipResult]:
    """Each leaf scaled to its own norm (Keras clipnorm)."""
    leaves, treedef = _leaves(tree)
    device = _gpu_device(leaves)
    copies = _writable_copies(leaves, device)
    c = _Clipper(max_norm=max_norm, norm_type=norm_type, nonfinite=nonfinite)
    c.clip_grad_norm_per_tensor(copies)
    res = c.result()
    return jax.tree_util.tree_unflatten(treedef, _outputs(copies, leaves)), res


def clip_by_value(tree: Any, clip_value: float) -> Any:
    """New leaves clamped to [-clip_value, clip_value] (NaN kept); float64
    leaves to the double clip_value, as optax.clip clamps them, the others to
    the float32 nearest it."""
    leaves, treedef = _leaves(tree)
    device = _gpu_device(leaves)
    copies = _writable_copies(leaves, device)
    c = _Clipper()
    c.clip_grad_value(copies, clip_value)
    _wait(c, device)
    return jax.tree_util.tree_unflatten(treedef, _outputs(copies, leaves))
