"""ctypes declarations of the public C API in include/gclip.h.

The library is loaded once, from the package directory (or from the path in
the GCLIP_LIBRARY environment variable). Functions that the loaded library
does not export are bound lazily: calling one raises NotSupportedError, so the
rest of the package keeps working against an older library.
"""

from __future__ import annotations

import ctypes
import glob
import math
import os
import struct

__all__ = [
    "lib", "GclipError", "NotSupportedError", "NonFiniteError", "check",
    "F32", "F16", "BF16", "F64", "DEVICE_CPU",
    "SKIP", "PROPAGATE", "ERROR", "OPS",
    "Tensor", "NormOptions", "Result", "DeviceResult", "Partial",
    "version", "has_function", "cuda_device_count",
]

# ---- constants (numbers are part of the ABI) ---------------------------------

STATUS_NAMES = {
    0: "SUCCESS", 1: "INVALID_ARGUMENT", 2: "MISALIGNED", 3: "OVERLAP",
    4: "NOT_SUPPORTED", 5: "NO_DEVICE", 6: "OUT_OF_MEMORY", 7: "CUDA_ERROR",
    8: "NONFINITE", 9: "INTERNAL_ERROR", 10: "MISMATCH", 11: "VERSION_MISMATCH",
}
SUCCESS, INVALID_ARGUMENT, MISALIGNED, OVERLAP, NOT_SUPPORTED = 0, 1, 2, 3, 4
NONFINITE = 8
MISMATCH, VERSION_MISMATCH = 10, 11

F32, F16, BF16, F64 = 0, 1, 2, 3
DTYPE_SIZE = {F32: 4, F16: 2, BF16: 2, F64: 8}
DEVICE_CPU = -1
SKIP, PROPAGATE, ERROR = 0, 1, 2
OPTIONS_VERSION = 1

OPS = {
    0: "none", 1: "total_norm", 2: "clip_norm", 3: "clip_per_tensor",
    4: "clip_value", 5: "clip_factor", 6: "clip_with_norm", 7: "accumulate",
    8: "finalize", 9: "apply",
}

RESULT_HAS_NORM, RESULT_APPLIES, RESULT_ERROR_POLICY, RESULT_LOCAL = 1, 2, 4, 8
RESULT_PROPAGATE, RESULT_SKIP_STEP = 16, 32
OPS.update({10: "adaptive_clip", 11: "adaptive_skip", 12: "agc"})

# gclip_adapt.h
ADAPTIVE_ZCLIP, ADAPTIVE_AUTOCLIP, ADAPTIVE_ADAGC, ADAPTIVE_SPIKE_SKIP = 0, 1, 2, 3
ZCLIP_ZSCORE, ZCLIP_PERCENTILE = 0, 1
ZCLIP_ADAPTIVE_SCALING, ZCLIP_MEAN = 0, 1
AGC_OPTIONS_VERSION = 1


# ---- errors ------------------------------------------------------------------

class GclipError(RuntimeError):
    """A gclip call failed. `status` is the C status code, `status_name` its name."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.status_name = STATUS_NAMES.get(status, str(status))


class NotSupportedError(GclipError):
    """The loaded library or build does not offer this operation (NOT_SUPPORTED)."""


class InvalidArgumentError(GclipError, ValueError):
    """An argument, or a device scalar the library read, was out of range
    (INVALID_ARGUMENT); nothing was written. Also a ValueError."""


class NonFiniteError(GclipError):
    """The total norm was NaN or Inf under the error policy; no gradient was written."""


# ---- structs -------------------------------------------------------------------

class Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("numel", ctypes.c_int64), ("dtype", ctypes.c_int)]


class NormOptions(ctypes.Structure):
    """gclip_norm_options of the 0.2 header (size/version tagged)."""
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("version", ctypes.c_uint32),
        ("max_norm", ctypes.c_float),
        ("norm_type", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("inv_scale", ctypes.c_float),
        ("nonfinite", ctypes.c_int),
        ("tensor_norms", ctypes.c_void_p),
        ("max_norm_ptr", ctypes.c_void_p),
        ("inv_scale_ptr", ctypes.c_void_p),
    ]


class NormOptionsV1(ctypes.Structure):
    """gclip_norm_options of the 0.1 header (no tag, no device scalars)."""
    _fields_ = [
        ("max_norm", ctypes.c_float),
        ("norm_type", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("inv_scale", ctypes.c_float),
        ("nonfinite", ctypes.c_int),
        ("tensor_norms", ctypes.c_void_p),
    ]


class Result(ctypes.Structure):
    _fields_ = [
        ("total_norm", ctypes.c_float),
        ("clip_coef", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("nonfinite", ctypes.c_int32),
        ("has_norm", ctypes.c_int32),
        ("applied", ctypes.c_int32),
        ("op", ctypes.c_int),
        ("sequence", ctypes.c_uint32),
    ]


class ResultV1(ctypes.Structure):
    _fields_ = [
        ("total_norm", ctypes.c_float),
        ("clip_coef", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("nonfinite", ctypes.c_int32),
        ("has_norm", ctypes.c_int32),
    ]


class DeviceResult(ctypes.Structure):
    _fields_ = [
        ("total_norm", ctypes.c_float),
        ("clip_coef", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("nonfinite", ctypes.c_int32),
        ("op", ctypes.c_int32),
        ("flags", ctypes.c_int32),
        ("status", ctypes.c_int32),
        ("failed", ctypes.c_int32),
        ("sequence", ctypes.c_uint32),
        ("reserved_", ctypes.c_uint32),
    ]


class Partial(ctypes.Structure):
    _fields_ = [("acc", ctypes.c_double), ("nonfinite", ctypes.c_uint32),
                ("fingerprint", ctypes.c_uint32)]


class AdaptiveOptions(ctypes.Structure):
    """gclip_adaptive_options (gclip_adapt.h)."""
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("version", ctypes.c_uint32),
        ("method", ctypes.c_int),
        ("zclip_alpha", ctypes.c_double),
        ("zclip_z_thresh", ctypes.c_double),
        ("zclip_max_grad_norm", ctypes.c_double),
        ("zclip_eps", ctypes.c_double),
        ("zclip_warmup_steps", ctypes.c_uint32),
        ("zclip_mode", ctypes.c_int),
        ("zclip_clip_option", ctypes.c_int),
        ("zclip_skip_update_on_spike", ctypes.c_int32),
        ("zclip_clip_factor", ctypes.c_double),
        ("autoclip_quantile", ctypes.c_double),
        ("autoclip_history_length", ctypes.c_uint32),
        ("autoclip_global", ctypes.c_int32),
        ("adagc_beta", ctypes.c_double),
        ("adagc_lambda_abs", ctypes.c_double),
        ("adagc_lambda_rel", ctypes.c_double),
        ("adagc_eps", ctypes.c_double),
        ("adagc_warmup_steps", ctypes.c_uint32),
        ("spike_window", ctypes.c_uint32),
        ("spike_min_values", ctypes.c_uint32),
        ("spike_sigma", ctypes.c_double),
    ]


class AgcOptions(ctypes.Structure):
    """gclip_agc_options (gclip_adapt.h)."""
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("version", ctypes.c_uint32),
        ("clip_factor", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("norm_type", ctypes.c_float),
    ]


class AdaptiveInfo(ctypes.Structure):
    """gclip_adaptive_info: what one adaptive step decided."""
    _fields_ = [
        ("total_norm", ctypes.c_float),
        ("threshold", ctypes.c_float),
        ("clip_coef", ctypes.c_float),
        ("spike", ctypes.c_int32),
        ("warmup", ctypes.c_int32),
        ("recorded", ctypes.c_int32),
        ("clipped", ctypes.c_uint32),
        ("steps", ctypes.c_uint32),
    ]


# ---- loading -------------------------------------------------------------------

def _find_library() -> str:
    env = os.environ.get("GCLIP_LIBRARY")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for pattern in ("libgclip.so", "libgclip.so.*", "libgclip*.dylib", "gclip*.dll"):
        hits = sorted(glob.glob(os.path.join(here, pattern)))
        if hits:
            return hits[0]
    raise ImportError(
        f"gclip: no shared library next to {here}; install the package with pip "
        "or set GCLIP_LIBRARY to the path of libgclip.so")


_path = _find_library()
lib = ctypes.CDLL(_path)

_P = ctypes.c_void_p
_S = ctypes.c_int  # gclip_status

_SIGNATURES = {
    "gclip_get_version": (ctypes.c_int, []),
    "gclip_status_string": (ctypes.c_char_p, [ctypes.c_int]),
    "gclip_last_error": (ctypes.c_char_p, []),
    "gclip_cuda_device_count": (ctypes.c_int, []),
    "gclip_plan_create": (_S, [ctypes.POINTER(_P), _P, ctypes.c_size_t, ctypes.c_int]),
    "gclip_plan_destroy": (_S, [_P]),
    "gclip_plan_rebind": (_S, [_P, _P, ctypes.c_size_t, _P]),
    "gclip_plan_tensor_count": (_S, [_P, ctypes.POINTER(ctypes.c_size_t)]),
    "gclip_plan_device": (_S, [_P, ctypes.POINTER(ctypes.c_int)]),
    "gclip_plan_set_num_threads": (_S, [_P, ctypes.c_int]),
    "gclip_total_norm": (_S, [_P, _P, _P]),
    "gclip_clip_grad_norm": (_S, [_P, _P, _P]),
    "gclip_compute_clip_factor": (_S, [_P, _P, _P]),
    "gclip_clip_grads_with_norm": (_S, [_P, _P, ctypes.c_float, _P, _P]),
    "gclip_clip_grad_norm_per_tensor": (_S, [_P, _P, _P]),
    "gclip_clip_grad_value": (_S, [_P, ctypes.c_float, _P]),
    "gclip_clip_grad_value_f64": (_S, [_P, ctypes.c_double, _P]),
    "gclip_norm_accumulate": (_S, [_P, _P, _P]),
    "gclip_norm_finalize": (_S, [_P, _P, _P, ctypes.c_size_t, _P]),
    "gclip_apply_clip_factor": (_S, [_P, _P]),
    "gclip_plan_partial": (_S, [_P, ctypes.POINTER(_P)]),
    "gclip_partial_combine": (_S, [ctypes.POINTER(Partial), ctypes.POINTER(Partial)]),
    "gclip_get_result": (_S, [_P, _P]),
    "gclip_plan_device_result": (_S, [_P, ctypes.POINTER(_P)]),
    "gclip_adaptive_create": (_S, [ctypes.POINTER(_P), _P, _P]),
    "gclip_adaptive_destroy": (_S, [_P]),
    "gclip_adaptive_step": (_S, [_P, _P, _P]),
    "gclip_adaptive_get_info": (_S, [_P, _P]),
    "gclip_adaptive_device_info": (_S, [_P, ctypes.POINTER(_P)]),
    "gclip_adaptive_state_size": (_S, [_P, ctypes.POINTER(ctypes.c_size_t)]),
    "gclip_adaptive_export": (_S, [_P, _P, ctypes.c_size_t]),
    "gclip_adaptive_import": (_S, [_P, _P, ctypes.c_size_t]),
    "gclip_agc_create": (_S, [ctypes.POINTER(_P), _P, _P, _P, _P]),
    "gclip_agc_destroy": (_S, [_P]),
    "gclip_agc_step": (_S, [_P, _P]),
}


def _missing(name):
    def call(*_args):
        raise NotSupportedError(
            NOT_SUPPORTED, f"{name} is not exported by the loaded gclip library ({_path})")
    call.missing = True
    return call


class _Functions:
    """Attribute access to the C functions; a missing one raises when called."""


fn = _Functions()
for _name, (_res, _args) in _SIGNATURES.items():
    try:
        _f = getattr(lib, _name)
    except AttributeError:
        setattr(fn, _name[len("gclip_"):], _missing(_name))
        continue
    _f.restype = _res
    _f.argtypes = _args
    setattr(fn, _name[len("gclip_"):], _f)


def has_function(name: str) -> bool:
    """Whether the loaded library exports gclip_<name>."""
    return not getattr(getattr(fn, name), "missing", False)


version: int = fn.get_version()
#: 0.1 libraries use the untagged option struct and the short result structs.
LEGACY = version < 200
if LEGACY:
    NormOptions = NormOptionsV1  # noqa: F811
    Result = ResultV1  # noqa: F811
    DEVICE_RESULT_FIELDS = 4
else:
    DEVICE_RESULT_FIELDS = 10


def version_string() -> str:
    return f"{version // 10000}.{version // 100 % 100}.{version % 100}"


def status_string(status: int) -> str:
    return fn.status_string(status).decode()


def last_error() -> str:
    return (fn.last_error() or b"").decode()


def error_for(status: int, what: str) -> GclipError:
    detail = last_error() or status_string(status)
    cls = {NOT_SUPPORTED: NotSupportedError, NONFINITE: NonFiniteError,
           INVALID_ARGUMENT: InvalidArgumentError}.get(status, GclipError)
    return cls(status, f"{what}: {detail} [{STATUS_NAMES.get(status, status)}]")


def check(status: int, what: str) -> None:
    if status != SUCCESS:
        raise error_for(status, what)


def cuda_device_count() -> int:
    return int(fn.cuda_device_count())


try:
    lib.gclip_norm_options_default.restype = NormOptions
    lib.gclip_norm_options_default.argtypes = []
    _options_default = lib.gclip_norm_options_default
except AttributeError:  # pragma: no cover - every released library exports it
    _options_default = None


def takes_norm_type(p: float) -> bool:
    """Whether the library computes the p-norm asked for. It reads norm_type
    as a float32: p must be > 0 and stay > 0 and finite when rounded to
    float32 (below about 7e-46 it reads 0, from about 3.4e38 inf), or be inf."""
    if p == math.inf:
        return True
    if not p > 0:
        return False
    try:
        f = struct.unpack("<f", struct.pack("<f", p))[0]
    except OverflowError:  # rounds past FLT_MAX
        return False
    return 0.0 < f < math.inf


NORM_TYPE_RANGE = ("> 0 and, unless inf, within float32's range (from about 7e-46 to "
                   "3.4e38: the library reads a float32)")


def default_options() -> NormOptions:
    """A fresh options struct filled by gclip_norm_options_default()."""
    if _options_default is not None:
        return _options_default()
    o = NormOptions()
    if not LEGACY:
        o.size = ctypes.sizeof(NormOptions)
        o.version = OPTIONS_VERSION
    o.max_norm, o.norm_type, o.eps, o.inv_scale = 1.0, 2.0, 1e-6, 1.0
    o.nonfinite = SKIP
    return o


try:
    lib.gclip_adaptive_options_default.restype = AdaptiveOptions
    lib.gclip_adaptive_options_default.argtypes = []
    _adaptive_options_default = lib.gclip_adaptive_options_default
except AttributeError:  # a library without gclip_adapt.h
    _adaptive_options_default = None


def default_adaptive_options() -> AdaptiveOptions:
    """A fresh gclip_adaptive_options filled by gclip_adaptive_options_default()
    (the references' defaults, method ZCLIP)."""
    if _adaptive_options_default is None:
        raise NotSupportedError(
            NOT_SUPPORTED, f"adaptive clipping is not in the loaded gclip library ({_path})")
    return _adaptive_options_default()
