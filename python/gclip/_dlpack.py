"""DLPack on both sides, with ctypes only.

Consumer: `describe(x)` reads the data pointer, element count, dtype, device
and writability of any array with `__dlpack__` (NumPy, PyTorch, CuPy, JAX),
with fast paths for NumPy arrays and PyTorch tensors.

Producer: `MemoryView` exports a piece of gclip memory (the plan's result
slot) as a DLPack tensor, so that any framework can view it without a copy:
``torch.from_dlpack(view)``, ``numpy.from_dlpack(view)``, ...
"""

from __future__ import annotations

import ctypes
import sys
from typing import NamedTuple

from . import _lib

# ---- DLPack structs (dlpack.h, ABI v0.8 and v1.x) ----------------------------

KDL_CPU, KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED = 1, 2, 3, 13
KDL_INT, KDL_UINT, KDL_FLOAT, KDL_BFLOAT = 0, 1, 2, 4
FLAG_READ_ONLY = 1


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", _Deleter)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p),
                ("deleter", _Deleter), ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


_api = ctypes.pythonapi
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

# Raw-pointer variants for the capsule destructor, which must not touch the
# reference count of the capsule being destroyed.
_IsValidRaw = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_IsValid", _api))
_GetPointerRaw = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", _api))

_DTYPES = {
    (KDL_FLOAT, 32): _lib.F32, (KDL_FLOAT, 16): _lib.F16,
    (KDL_BFLOAT, 16): _lib.BF16, (KDL_FLOAT, 64): _lib.F64,
}


class ArrayInfo(NamedTuple):
    """What gclip needs to know about one array."""
    ptr: int
    numel: int
    dtype: int       # gclip dtype code
    device: int      # -1 for host memory, else the CUDA ordinal
    writable: bool
    dense: bool      # non-overlapping and dense (any dimension order)


def dense_strides(shape, strides) -> bool:
    """True when the elements tile one block of len(prod(shape)) with no gap or
    overlap, in some dimension order (C, Fortran, channels-last, ...)."""
    dims = [(st, sz) for sz, st in zip(shape, strides) if sz != 1]
    if any(sz == 0 for sz in shape):
        return True
    expected = 1
    for st, sz in sorted(dims):
        if st != expected:
            return False
        expected *= sz
    return True


def _from_dltensor(t: DLTensor, read_only: bool, name: str = "the array") -> ArrayInfo:
    key = (t.dtype.code, t.dtype.bits)
    if t.dtype.lanes != 1 or key not in _DTYPES:
        raise TypeError(f"gclip: {name} has unsupported DLPack dtype code={t.dtype.code} "
                        f"bits={t.dtype.bits} "
                        f"lanes={t.dtype.lanes} (expected float32, float16, bfloat16 or float64)")
    shape = [t.shape[i] for i in range(t.ndim)]
    numel = 1
    for s in shape:
        numel *= s
    if t.strides:
        strides = [t.strides[i] for i in range(t.ndim)]
        dense = dense_strides(shape, strides)
    else:
        dense = True
    dev = t.device.device_type
    if dev in (KDL_CPU, KDL_CUDA_HOST):
        device = -1
    elif dev in (KDL_CUDA, KDL_CUDA_MANAGED):
        device = t.device.device_id
    else:
        raise TypeError(f"gclip: {name} is on unsupported DLPack device type {dev} (CPU and "
                        "CUDA only)")
    ptr = (t.data or 0) + t.byte_offset
    return ArrayInfo(ptr, numel, _DTYPES[key], device, not read_only, dense)


def describe_dlpack(x, stream=None, name: str = "the array") -> ArrayInfo:
    """Read an array's description through its __dlpack__ capsule. The capsule
    is not consumed: its destructor releases the producer's reference when it
    goes away, and the data stays owned by `x`."""
    cap, t, read_only = _dltensor_of(x, stream)  # t lives as long as cap
    info = _from_dltensor(t, read_only, name)
    del cap
    return info


def _raw_dltensor(t: DLTensor):
    """(address, bytes, device) of a C-contiguous DLPack tensor of any dtype."""
    if t.dtype.bits * t.dtype.lanes % 8:
        raise TypeError(f"gclip: the partials have {t.dtype.bits}-bit elements; pass whole bytes")
    item = t.dtype.bits * t.dtype.lanes // 8
    shape = [t.shape[i] for i in range(t.ndim)]
    numel = 1
    for s in shape:
        numel *= s
    if t.strides and numel:
        expected = 1
        for i in reversed(range(t.ndim)):
            if shape[i] != 1 and t.strides[i] != expected:
                raise ValueError("gclip: the partials must be one contiguous array")
            expected *= shape[i]
    dev = t.device.device_type
    if dev in (KDL_CPU, KDL_CUDA_HOST):
        device = _lib.DEVICE_CPU
    elif dev in (KDL_CUDA, KDL_CUDA_MANAGED):
        device = t.device.device_id
    else:
        raise TypeError(f"gclip: the partials are on unsupported DLPack device type {dev} (CPU "
                        "and CUDA only)")
    return (t.data or 0) + t.byte_offset, numel * item, device


def _dltensor_of(x, stream=None):
    """(capsule, DLTensor, read-only flag) of an array's __dlpack__ export:
    the DLTensor is valid while the capsule is alive (its destructor frees
    it and releases the producer's reference); the data stays owned by `x`."""
    kwargs = {} if stream is None else {"stream": stream}
    try:
        cap = x.__dlpack__(max_version=(1, 0), **kwargs)
    except TypeError:
        cap = x.__dlpack__(**kwargs)
    except BufferError:
        # NumPy refuses to export read-only arrays through the unversioned API
        raise
    if _api.PyCapsule_IsValid(cap, b"dltensor_versioned"):
        m = DLManagedTensorVersioned.from_address(_api.PyCapsule_GetPointer(cap, b"dltensor_versioned"))
        return cap, m.dl_tensor, bool(m.flags & FLAG_READ_ONLY)
    if _api.PyCapsule_IsValid(cap, b"dltensor"):
        m = DLManagedTensor.from_address(_api.PyCapsule_GetPointer(cap, b"dltensor"))
        return cap, m.dl_tensor, False
    raise TypeError("gclip: __dlpack__ returned something that is not a DLPack capsule")


_NP_DTYPES = {"float32": _lib.F32, "float16": _lib.F16, "float64": _lib.F64, "bfloat16": _lib.BF16}


def is_jax_array(x) -> bool:
    """Whether `x` is a JAX array (jax is not imported to find out)."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, getattr(jax, "Array", ()))


def _consumer_stream(x, stream):
    """The `stream` to hand a CUDA producer's __dlpack__, so that it orders
    its pending work before the stream gclip will use: the caller's stream
    handle when one was given; None (the protocol's legacy default stream,
    gclip's 0) otherwise and for every other device, whose producers take no
    stream."""
    if not stream:
        return None
    try:
        dev_type = int(x.__dlpack_device__()[0])
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return stream if dev_type in (2, 13) else None  # kDLCUDA, kDLCUDAManaged


def describe(x, stream=None, *, jax_writable: bool = False, name: str = "the array") -> ArrayInfo:
    """Description of a NumPy array, PyTorch tensor or any __dlpack__ array
    (`name`: what a rejection calls it, e.g. "tensor 2" or "max_norm").
    JAX arrays are immutable, and JAX exports them without DLPack's read-only
    flag: they are described as read-only unless `jax_writable` (gclip.jax,
    for the fresh buffers it allocates and writes before anyone sees them),
    and then as writable, whatever flag a later JAX may set."""
    mod = type(x).__module__
    if mod == "numpy":
        import numpy as np  # loaded already: x is one of its objects
        if isinstance(x, np.generic):
            # a NumPy scalar (np.float32(3.0)): its __array_interface__ makes
            # a temporary array that dies with the dict, and a clip could not
            # write to an immutable scalar anyway
            raise TypeError(f"gclip: {name} is a NumPy scalar ({type(x).__name__}), which has "
                            "no memory to read or clip in place; pass an array "
                            "(numpy.atleast_1d(x))")
        dt = _NP_DTYPES.get(x.dtype.name)
        if dt is None:
            raise TypeError(f"gclip: {name} has unsupported dtype {x.dtype} (float32, float16, "
                            "bfloat16, float64)")
        if not x.dtype.isnative:
            raise TypeError(f"gclip: the bytes of {name} are in non-native order ({x.dtype.str}); "
                            "convert it with astype(dtype.newbyteorder('='))")
        ai = x.__array_interface__
        ptr, read_only = ai["data"]
        strides = ai.get("strides")
        if strides is not None and any(s % x.itemsize for s in strides):
            raise ValueError(f"gclip: the strides {tuple(strides)} (bytes) of {name} are not whole "
                             f"elements of {x.itemsize} bytes (a field of a structured array?)")
        dense = True if strides is None else dense_strides(
            x.shape, [s // x.itemsize for s in strides])
        return ArrayInfo(ptr or 0, x.size, dt, -1, not read_only, dense)
    if mod.startswith("torch"):
        from . import torch as _gt  # noqa: WPS433 - torch is imported only when given one
        return _gt.describe_tensor(x, name)
    if hasattr(x, "__dlpack__"):
        info = describe_dlpack(x, _consumer_stream(x, stream), name)
        if is_jax_array(x):
            info = info._replace(writable=jax_writable)
        return info
    raise TypeError(f"gclip: {name}: expected an array with __dlpack__ (NumPy, PyTorch, CuPy, "
                    f"JAX), got {type(x).__name__}")


# ---- producer ----------------------------------------------------------------------

# ctx id -> (managed tensor, shape array, owner); entries die with the consumer's tensor.
_live: dict = {}


def raw_bytes(x):
    """(address, bytes, device) of a dense array of any dtype: the records a
    communicator gathered (int32, uint8, ...), e.g. gclip_partial records;
    device is a CUDA index or _lib.DEVICE_CPU."""
    mod = type(x).__module__
    if mod == "numpy":
        import numpy as np  # loaded already: x is one of its objects
        if isinstance(x, np.generic):
            raise TypeError("gclip: the partials are a NumPy scalar; pass the array of records")
        if not x.flags.c_contiguous:
            raise ValueError("gclip: the partials must be one contiguous array")
        return x.__array_interface__["data"][0] or 0, x.nbytes, _lib.DEVICE_CPU
    if mod.startswith("torch"):
        if not x.is_contiguous():
            raise ValueError("gclip: the partials must be one contiguous tensor")
        if x.device.type not in ("cpu", "cuda"):
            raise TypeError(f"gclip: the partials are on {x.device}; gclip takes CPU or CUDA memory")
        device = x.device.index if x.device.type == "cuda" else _lib.DEVICE_CPU
        return x.data_ptr(), x.numel() * x.element_size(), device
    if not hasattr(x, "__dlpack__"):
        raise TypeError(f"gclip: partials: expected an array with __dlpack__ (NumPy, PyTorch, "
                        f"CuPy, JAX), got {type(x).__name__}")
    cap, t, _ = _dltensor_of(x)  # t lives as long as cap
    out = _raw_dltensor(t)
    del cap
    return out


@_Deleter
def _delete(managed_ptr):
    m = DLManagedTensor.from_address(managed_ptr)
    _live.pop(m.manager_ctx, None)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _capsule_destructor(capsule_ptr):
    # Called when a capsule dies; if no consumer renamed it to "used_dltensor",
    # nobody took ownership, so release the entry here.
    if _IsValidRaw(capsule_ptr, b"dltensor"):
        managed = _GetPointerRaw(capsule_ptr, b"dltensor")
        if managed:
            _delete(managed)


_next_ctx = [1]


class MemoryView:
    """A DLPack-exportable view of `count` elements at `address` (gclip memory).

    `owner` is kept alive for as long as any framework tensor made from this
    view exists (it is the plan whose memory this is)."""

    def __init__(self, owner, address: int, device: int, dtype: str = "float32",
                 shape: tuple = ()):
        self._owner = owner
        self._address = address
        self._device = device
        self._dtype = dtype
        self._shape = tuple(shape)

    def __dlpack_device__(self):
        return (KDL_CPU, 0) if self._device < 0 else (KDL_CUDA, self._device)

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        if copy:
            raise BufferError("gclip: views of plan memory cannot be copied by the producer")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError("gclip: the view lives on another device")
        ndim = len(self._shape)
        shape = (ctypes.c_int64 * max(ndim, 1))(*self._shape)
        m = DLManagedTensor()
        t = m.dl_tensor
        t.data = self._address
        t.device = DLDevice(*self.__dlpack_device__())
        t.ndim = ndim
        code, bits = {"float32": (KDL_FLOAT, 32), "int32": (KDL_INT, 32)}[self._dtype]
        t.dtype = DLDataType(code, bits, 1)
        t.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
        t.strides = None
        t.byte_offset = 0
        ctx = _next_ctx[0]
        _next_ctx[0] += 1
        m.manager_ctx = ctx
        m.deleter = _delete
        _live[ctx] = (m, shape, self._owner)
        return _api.PyCapsule_New(ctypes.addressof(m), b"dltensor",
                                  ctypes.cast(_capsule_destructor, ctypes.c_void_p))

    def __repr__(self):
        where = "cpu" if self._device < 0 else f"cuda:{self._device}"
        return f"<gclip view {self._dtype}{list(self._shape)} at {self._address:#x} on {where}>"
