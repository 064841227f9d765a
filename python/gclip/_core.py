"""Plans and the framework-neutral Clipper."""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

from . import _dlpack, _lib
from ._lib import fn, check

# bytes of one gclip_partial record (double acc, uint32 nonfinite, uint32 fingerprint)
_PARTIAL_BYTES = 16

_POLICIES = {"skip": _lib.SKIP, "propagate": _lib.PROPAGATE, "error": _lib.ERROR}
_c_void_p = ctypes.c_void_p

# the thread counts gclip_plan_set_num_threads takes (0: OpenMP's default)
_MAX_THREADS = 1024


def check_num_threads(n) -> int:
    """`n` as a thread count of a CPU plan (an int from 0 to 1024), checked
    here: ctypes would pass an out-of-range int cut to 32 bits."""
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"gclip: num_threads must be an int, got {type(n).__name__}")
    n = n.__index__()
    if not 0 <= n <= _MAX_THREADS:
        raise ValueError(f"gclip: num_threads = {n}: must be from 0 (OpenMP's default) to "
                         f"{_MAX_THREADS}")
    return n


def policy_code(name: str) -> int:
    if not isinstance(name, str):
        raise TypeError(f"gclip: nonfinite must be 'skip', 'propagate' or 'error', got a "
                        f"{type(name).__name__}")
    try:
        return _POLICIES[name]
    except KeyError:
        raise ValueError(f"gclip: nonfinite must be 'skip', 'propagate' or 'error', got {name!r}") from None


def stream_handle(stream) -> int:
    """A cudaStream_t address from an int, a torch.cuda.Stream (.cuda_stream),
    a CuPy stream (.ptr) or None (the legacy default stream)."""
    if stream is None:
        return 0
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr", "handle"):
        h = getattr(stream, attr, None)
        if isinstance(h, int):
            return h
    raise TypeError(f"gclip: cannot read a CUDA stream handle from {type(stream).__name__}")


@dataclass(frozen=True)
class ClipResult:
    """The plan's result slot, decoded on the host (gclip_result)."""
    total_norm: float
    clip_coef: float
    scale: float
    nonfinite: bool
    has_norm: bool
    applied: bool
    op: str
    sequence: int


_HAS_VALUE_F64 = _lib.has_function("clip_grad_value_f64")


def _not_negative(name: str, value: float, why: str) -> None:
    if value < 0:
        raise _lib.InvalidArgumentError(_lib.INVALID_ARGUMENT,
                              f"gclip: {name} {value!r} must be >= 0 ({why}) [INVALID_ARGUMENT]")


class Plan:
    """One gclip plan: fixed element counts and dtypes on one device; the data
    pointers are given again (rebound) before every operation."""

    __slots__ = ("handle", "count", "device", "key", "num_threads", "rebinds", "_ptrs", "_prev",
                 "_prev_valid", "_opts", "_result", "_slot", "_partial", "_unbound",
                 "__weakref__")

    def __init__(self, numels: Sequence[int], dtypes: Sequence[int], device: int,
                 ptrs: Optional[Sequence[int]] = None):
        n = len(numels)
        for k, dt in enumerate(dtypes):
            if dt not in _lib.DTYPE_SIZE:
                raise ValueError(f"gclip: dtype code {dt!r} of tensor {k} is not one of "
                                 f"{sorted(_lib.DTYPE_SIZE)}")
        descs = (_lib.Tensor * max(n, 1))()
        for i in range(n):
            d = descs[i]
            d.numel = numels[i]
            d.dtype = dtypes[i]
            d.data = ptrs[i] if ptrs is not None else None
        h = _c_void_p()
        if ptrs is None and any(numels):
            # Placeholder pointers: aligned, disjoint, never dereferenced
            # (the real ones are bound before any operation).
            addr = 1 << 20
            for i in range(n):
                descs[i].data = addr
                addr += (numels[i] * _lib.DTYPE_SIZE[dtypes[i]] + 255) // 256 * 256 + 256
        check(fn.plan_create(ctypes.byref(h), descs, n, device), "gclip_plan_create")
        self.handle = h.value
        self.count = n
        self.device = device
        self.num_threads = 0  # 0: the library's default
        self.key = None
        self._ptrs = (_c_void_p * max(n, 1))()  # the pointers the library holds
        self._prev = (_c_void_p * max(n, 1))()  # the ones before the last rebind
        for i in range(n):
            self._ptrs[i] = descs[i].data
        self.rebinds = 0  # successful rebinds so far
        # placeholder pointers until the first rebind: no operation may run
        self._unbound = ptrs is None and any(numels)
        self._prev_valid = False
        self._opts = _lib.default_options()
        self._result = _lib.Result()
        self._slot = None
        self._partial = None

    def __del__(self):
        h = getattr(self, "handle", None)
        if h:
            self.handle = None
            try:
                fn.plan_destroy(h)
            except Exception:  # interpreter shutdown
                pass

    # -- pointers ----------------------------------------------------------------
    def rebind(self, ptrs, stream: int = 0) -> None:
        new = self._prev  # the spare table (the library copies it, and keeps
        new[: self.count] = ptrs  # the pointers it held when it refuses)
        st = fn.plan_rebind(self.handle, new, self.count, stream)
        if st:
            self._prev_valid = False  # overwritten by the refused pointers
            raise _lib.error_for(st, "gclip_plan_rebind")
        self._prev, self._ptrs = self._ptrs, new
        self._prev_valid = True
        self._unbound = False
        self.rebinds += 1

    def _require_bound(self) -> None:
        if self._unbound:
            raise ValueError("gclip: this plan was made without data pointers; rebind() it to "
                             "the arrays before any operation")

    def previous_pointers(self) -> list:
        """The pointers the plan held before its last rebind (ValueError when
        a refused rebind has overwritten them since)."""
        if not self._prev_valid:
            raise ValueError("gclip: the plan's previous pointers are not known")
        return list(self._prev[: self.count])

    def set_num_threads(self, n: int) -> None:
        n = check_num_threads(n)
        check(fn.plan_set_num_threads(self.handle, n), "gclip_plan_set_num_threads")
        self.num_threads = n

    # -- options -----------------------------------------------------------------
    def options(self, max_norm=1.0, norm_type=2.0, eps=1e-6, inv_scale=1.0,
                nonfinite=_lib.SKIP, tensor_norms=0, max_norm_ptr=0, inv_scale_ptr=0):
        # the library reads float32: a negative value that rounds to -0 would pass its check
        _not_negative("max_norm", max_norm, "0 zeroes the gradients, +inf never clips")
        _not_negative("eps", eps, "it keeps the coefficient finite")
        o = self._opts
        o.max_norm = max_norm
        o.norm_type = norm_type
        o.eps = eps
        o.inv_scale = inv_scale
        o.nonfinite = nonfinite
        o.tensor_norms = tensor_norms or None
        if _lib.LEGACY:
            if max_norm_ptr or inv_scale_ptr:
                raise _lib.NotSupportedError(
                    _lib.NOT_SUPPORTED,
                    "device scalars (max_norm / inv_scale in device memory) need a gclip 0.2 library")
        else:
            o.max_norm_ptr = max_norm_ptr or None
            o.inv_scale_ptr = inv_scale_ptr or None
        return o

    # -- operations (each writes the result slot) ------------------------------------
    def run(self, name: str, opts, stream: int = 0) -> None:
        self._require_bound()
        st = getattr(fn, name)(self.handle, ctypes.byref(opts), stream)
        if st:
            raise _lib.error_for(st, "gclip_" + name)

    def clip_grads_with_norm(self, opts, total_norm: float, total_norm_ptr: int, stream: int = 0):
        self._require_bound()
        _not_negative("total_norm", total_norm, "a norm")
        st = fn.clip_grads_with_norm(self.handle, ctypes.byref(opts), total_norm,
                                     total_norm_ptr or None, stream)
        if st:
            raise _lib.error_for(st, "gclip_clip_grads_with_norm")

    def clip_grad_value(self, clip_value: float, stream: int = 0) -> None:
        self._require_bound()
        _not_negative("clip_value", clip_value, "the bound of |g|")
        # the bound in double: float64 arrays clamped to it, the others to
        # the float32 nearest it (a library without the call: float32 for all)
        if _HAS_VALUE_F64:
            st = fn.clip_grad_value_f64(self.handle, clip_value, stream)
        else:
            st = fn.clip_grad_value(self.handle, clip_value, stream)
        if st:
            raise _lib.error_for(st, "gclip_clip_grad_value")

    def finalize(self, opts, partials_ptr: int, count: int, stream: int = 0) -> None:
        st = fn.norm_finalize(self.handle, ctypes.byref(opts), partials_ptr or None, count, stream)
        if st:
            raise _lib.error_for(st, "gclip_norm_finalize")

    def apply_clip_factor(self, stream: int = 0) -> None:
        self._require_bound()
        st = fn.apply_clip_factor(self.handle, stream)
        if st:
            raise _lib.error_for(st, "gclip_apply_clip_factor")

    # -- results -------------------------------------------------------------------
    def get_result(self):
        """(status, gclip_result) after waiting for the plan's last operation."""
        r = self._result
        st = fn.get_result(self.handle, ctypes.byref(r))
        return st, r

    def result(self) -> ClipResult:
        st, r = self.get_result()
        if st not in (_lib.SUCCESS, _lib.NONFINITE):
            raise _lib.error_for(st, "gclip_get_result")
        res = decode(r)
        if st == _lib.NONFINITE:
            err = _lib.error_for(st, "gclip: the total norm is not finite (nonfinite='error')")
            err.result = res
            raise err
        return res

    def slot_address(self) -> int:
        if self._slot is None:
            p = _c_void_p()
            check(fn.plan_device_result(self.handle, ctypes.byref(p)), "gclip_plan_device_result")
            self._slot = p.value
        return self._slot

    def partial_address(self) -> int:
        if self._partial is None:
            p = _c_void_p()
            check(fn.plan_partial(self.handle, ctypes.byref(p)), "gclip_plan_partial")
            self._partial = p.value
        return self._partial


def decode(r) -> ClipResult:
    if _lib.LEGACY:
        return ClipResult(r.total_norm, r.clip_coef, r.scale, bool(r.nonfinite),
                          bool(r.has_norm), r.scale != 1.0, "unknown", 0)
    return ClipResult(r.total_norm, r.clip_coef, r.scale, bool(r.nonfinite), bool(r.has_norm),
                      bool(r.applied), _lib.OPS.get(r.op, str(r.op)), r.sequence)


class DeviceResultView:
    """Views of a plan's result slot in the memory of its device, readable with
    no host synchronization (in stream order after the operation). Each member
    exports DLPack: ``torch.from_dlpack(view.scale)``, ``numpy.from_dlpack(...)``.

    norm, coef, scale: float32 scalars; nonfinite: int32 scalar (0 or 1);
    values: float32 [norm, coef, scale]; status and op: int32 scalars
    (0.2 libraries only)."""

    def __init__(self, plan: Plan):
        addr = plan.slot_address()
        dev = plan.device
        mk = _dlpack.MemoryView
        self.norm = mk(plan, addr, dev, "float32")
        self.coef = mk(plan, addr + 4, dev, "float32")
        self.scale = mk(plan, addr + 8, dev, "float32")
        self.nonfinite = mk(plan, addr + 12, dev, "int32")
        self.values = mk(plan, addr, dev, "float32", (3,))
        if not _lib.LEGACY:
            self.op = mk(plan, addr + 16, dev, "int32")
            self.flags = mk(plan, addr + 20, dev, "int32")
            self.status = mk(plan, addr + 24, dev, "int32")
            self.sequence = mk(plan, addr + 32, dev, "int32")


def _real(name: str, x) -> float:
    """x as a Python float; None, strings, bytes and bools are refused (float()
    would take "0.5" and True), as is anything float() cannot read."""
    if isinstance(x, (bool, str, bytes)):
        raise TypeError(f"gclip: {name} must be a number, got {type(x).__name__}")
    try:
        return float(x)
    except (TypeError, ValueError):
        raise TypeError(f"gclip: {name} must be a number, got {type(x).__name__}") from None


def _scalar_ptr(x, device: int, what: str) -> int:
    if not (hasattr(x, "__dlpack__") or hasattr(x, "__array_interface__")):
        raise TypeError(f"gclip: {what} must be a number or a float32 array in device memory, "
                        f"got {type(x).__name__}")
    need = (f"gclip: {what} in device memory must be a float32 array of >= 1 element, got "
            f"{getattr(x, 'dtype', type(x).__name__)}")
    try:
        info = _dlpack.describe(x, name=what)
    except TypeError:
        raise TypeError(need) from None
    if info.dtype != _lib.F32 or info.numel < 1:
        raise TypeError(need + (" with no element" if info.numel < 1 else ""))
    if info.device != device:
        raise ValueError(f"gclip: {what} lives on device {info.device}, the plan on {device}")
    return info.ptr


def _locked(method):
    """`method` under `self._lock` (a threading.RLock)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


def _serialized(method):
    """One operation at a time on a Clipper, and a refused one undone. Its
    plans hold one pointer table and one result slot each, and the library
    runs with the GIL released: a second thread inside the same Clipper
    between the first one's rebind and its operation would clip the second
    one's arrays; the second thread waits instead. An operation refused
    after its bind (its options, the library's checks) leaves the Clipper's
    last plan and that plan's pointers as they were (`_undo`), so that
    `result()` and `apply_clip_factor()` still mean the last operation.

    Operations do not nest: a call made while another operation of the same
    Clipper is running on this thread (from a signal handler, a finalizer,
    an array's __dlpack__) would rebind the plan under that operation, which
    would then read or write the inner call's arrays. It raises RuntimeError
    instead (the outer operation is then undone, as any refused one). The
    methods that build on another one call its body (`_body`), not it."""
    @functools.wraps(method)
    def serialized(self, *args, **kwargs):
        with self._lock:
            if self._in_op:  # only this thread can be inside: it holds the lock
                raise RuntimeError(
                    f"gclip: {type(self).__name__}.{method.__name__} was called while another "
                    "operation of the same Clipper was running on this thread (from a signal "
                    "handler, a finalizer or an array's __dlpack__?); operations of one Clipper "
                    "do not nest, and the outer one is refused and undone")
            plan = self.plan
            before = (plan, self._bound_writable, plan.rebinds if plan is not None else 0,
                      self._own_state())
            self._in_op = True
            try:
                return method(self, *args, **kwargs)
            except BaseException:
                self._undo(before)
                raise
            finally:
                self._in_op = False
    return serialized


def _body(method):
    """The body of a _serialized method, for another operation of the same
    Clipper to build on while it holds the Clipper."""
    return method.__wrapped__


class Clipper:
    """Gradient clipping for a training loop, on any arrays with __dlpack__.

    Holds one plan per (device, element counts, dtypes) seen, never keyed by
    data pointers: the pointers are rebound before every operation, so
    gradients that are reallocated every step are fine.

    Defaults follow gclip's policy: on a NaN or Inf norm nothing is written and
    the non-finite flag is raised (`nonfinite="skip"`); "propagate" is
    PyTorch's arithmetic, "error" makes `result()` raise NonFiniteError.

    Operations are queued on `stream` (CUDA) and never synchronize; `result()`
    waits and decodes, `device_result()` gives views readable on the device.

    Threads may share a Clipper: its operations run one at a time, and
    `result()` is the last one's, whichever thread ran it. They do not nest:
    one called from inside another on the same thread raises RuntimeError.
    A Clipper holds library plans: it cannot be pickled or copied (make a
    new one; an adaptive clipper's state travels by `state_dict()`).
    """

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0, *, eps: float = 1e-6,
                 nonfinite: str = "skip", inv_scale=1.0, num_threads: Optional[int] = None,
                 max_plans: int = 8):
        norm_type = _real("norm_type", norm_type)
        if not _lib.takes_norm_type(norm_type):
            raise ValueError(f"gclip: norm_type must be {_lib.NORM_TYPE_RANGE}, got {norm_type}")
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.eps = _real("eps", eps)
        self.nonfinite = nonfinite
        self.inv_scale = inv_scale
        self.num_threads = None if num_threads is None else check_num_threads(num_threads)
        if isinstance(max_plans, bool) or not isinstance(max_plans, int) or max_plans < 1:
            raise ValueError(f"gclip: max_plans must be an int >= 1, got {max_plans!r}")
        self._plans: "OrderedDict[tuple, Plan]" = OrderedDict()
        self._max_plans = max_plans
        self.plan: Optional[Plan] = None  # the plan of the last operation
        self._lock = threading.RLock()
        self._binding = None  # what a framework's _bind read (its gradients), for _bind_for_op
        self._bound_writable = False  # whether the arrays of the last bind may be written
        self._last_stream = 0  # the stream of the last bind's operation
        self._in_op = False  # inside a _serialized method (which undoes a refused one)

    @property
    def nonfinite(self) -> str:
        """The non-finite policy: "skip", "propagate" or "error" (settable,
        checked, used from the next operation on)."""
        return self._nonfinite

    @nonfinite.setter
    def nonfinite(self, name: str) -> None:
        self._policy = policy_code(name)
        self._nonfinite = name

    def _undo(self, before) -> None:
        """Put back the last plan, and its pointers when a refused call
        rebound it (`before`: plan, writable flag, rebind count and
        `_own_state()` taken before the call; no method rebinds one plan
        twice, so the pointers before the last rebind are the ones to put
        back)."""
        plan, writable, rebinds, own = before
        restored = False
        try:
            if plan is not None and plan.rebinds != rebinds:
                plan.rebind(plan.previous_pointers(), self._last_stream)
                restored = True
                self._binding_undone()
            else:
                restored = True
        except BaseException:  # cannot (or interrupted): apply_clip_factor() refuses instead
            pass
        finally:
            self.plan, self._bound_writable = plan, writable and restored
            self._restore_own_state(own)

    def _binding_undone(self) -> None:
        """A subclass that remembers what its plans are bound to forgets it."""

    def _own_state(self):
        """What a subclass's operation may replace (put back by `_undo`)."""
        return None

    def _restore_own_state(self, state) -> None:
        pass

    def __reduce_ex__(self, protocol):
        # pickle, copy.copy and copy.deepcopy: a copy would share (copy) or
        # lose (pickle) the plans, pointer tables and result slots
        raise TypeError(f"gclip: a {type(self).__name__} holds library plans and cannot be "
                        "pickled or copied; make a new one with the same arguments (an "
                        "adaptive clipper's state: state_dict() and load_state_dict())")

    # whether JAX arrays may be written (gclip.jax's own fresh buffers only)
    _jax_writable = False

    # -- plans -------------------------------------------------------------------
    def _describe(self, tensors, stream):
        if hasattr(tensors, "__dlpack__") or hasattr(tensors, "__array_interface__"):
            # one array (or NumPy scalar, refused below) is one tensor, as
            # torch.nn.utils takes one Tensor: not the sequence of its rows
            tensors = [tensors]
        return [_dlpack.describe(t, stream, jax_writable=self._jax_writable, name=f"tensor {k}")
                for k, t in enumerate(tensors)]

    def _bind(self, tensors, stream, writable: bool) -> Plan:
        infos = self._describe(tensors, stream)
        devices = {i.device for i in infos}
        if len(devices) > 1:
            raise ValueError(f"gclip: the tensors of one call must be on one device, got {sorted(devices)}")
        device = devices.pop() if devices else _lib.DEVICE_CPU
        for k, i in enumerate(infos):
            if not i.dense:
                raise ValueError(f"gclip: tensor {k} is not dense (it has gaps, overlaps or "
                                 "negative strides); pass a contiguous array")
            if writable and not i.writable:
                raise ValueError(f"gclip: tensor {k} is read-only; in-place clipping needs writable "
                                 "buffers (for JAX use gclip.jax)")
        key = (device, tuple((i.numel, i.dtype) for i in infos))
        plan = self._get_plan(key)
        plan.rebind([i.ptr for i in infos], stream)
        self._bound_writable = all(i.writable for i in infos)
        self.plan = plan
        return plan

    def _op_stream(self, plan: Plan, stream: int) -> int:
        """The stream an operation on `plan` is queued on, given the caller's
        (0 when none was given): here the caller's, 0 being CUDA's legacy
        default stream. A framework's Clipper takes its current stream for 0,
        the one its `_bind` rebinds on, so the operation is ordered with the
        framework's work and is captured with it in a CUDA graph."""
        return stream

    def _bind_for_op(self, tensors, stream, writable: bool):
        """(plan, stream, held) of an operation on `tensors`: bound, the
        stream the operation goes on (`_op_stream`), and what must stay
        alive until the operation is queued: the arrays given, and the
        gradients a framework's `_bind` read from parameters (another thread
        may set a `.grad` to None meanwhile). An iterator is read into a list
        here (the plan holds only pointers, and a generator's arrays have no
        other reference). The caller holds `held` until the operation
        returns. On CUDA, queued is not done: arrays freed then are safe only
        with an allocator that orders reuse on the stream the work went on
        (PyTorch's, on its current stream)."""
        s = stream_handle(stream)
        if hasattr(tensors, "__next__"):  # a generator or another one-shot iterator
            tensors = list(tensors)
        self._binding = None
        try:
            plan = self._bind(tensors, s, writable)
            held = (tensors, self._binding)
        finally:
            self._binding = None
        self._last_stream = self._op_stream(plan, s)
        return plan, self._last_stream, held

    def _get_plan(self, key) -> Plan:
        plan = self._plans.get(key)
        if plan is None:
            device, sig = key
            plan = Plan([s[0] for s in sig], [s[1] for s in sig], device)
            plan.key = key
            if self.num_threads is not None:
                plan.set_num_threads(self.num_threads)
            self._plans[key] = plan
            while len(self._plans) > self._max_plans:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def _opts(self, plan, max_norm=None, inv_scale=None, tensor_norms=None, norm_type=None):
        mn = self.max_norm if max_norm is None else max_norm
        isc = self.inv_scale if inv_scale is None else inv_scale
        mn_val, mn_ptr = (float(mn), 0) if _is_number(mn) else (0.0, _scalar_ptr(mn, plan.device, "max_norm"))
        is_val, is_ptr = (float(isc), 0) if _is_number(isc) else (1.0, _scalar_ptr(isc, plan.device, "inv_scale"))
        tn = 0
        if tensor_norms is not None:
            info = _dlpack.describe(tensor_norms, jax_writable=self._jax_writable,
                                    name="tensor_norms")
            if info.dtype != _lib.F32 or info.numel < plan.count or not info.writable or not info.dense:
                raise ValueError(f"gclip: tensor_norms must be a writable, contiguous float32 "
                                 f"array of {plan.count} elements")
            if info.device != plan.device:
                raise ValueError("gclip: tensor_norms must be on the plan's device")
            tn = info.ptr
        p = self.norm_type if norm_type is None else _real("norm_type", norm_type)
        if not _lib.takes_norm_type(p):
            raise ValueError(f"gclip: norm_type must be {_lib.NORM_TYPE_RANGE}, got {p}")
        return plan.options(mn_val, p, self.eps, is_val, self._policy, tn, mn_ptr, is_ptr)

    # -- operations ----------------------------------------------------------------
    @_serialized
    def clip_grad_norm(self, tensors, max_norm=None, *, inv_scale=None, tensor_norms=None,
                       stream=None) -> None:
        """Global-norm clipping in place (gclip_clip_grad_norm)."""
        plan, s, _held = self._bind_for_op(tensors, stream, True)
        plan.run("clip_grad_norm", self._opts(plan, max_norm, inv_scale, tensor_norms), s)

    @_serialized
    def total_norm(self, tensors, *, inv_scale=None, tensor_norms=None, stream=None) -> None:
        """The norm only, nothing written (gclip_total_norm). Read-only arrays are fine."""
        plan, s, _held = self._bind_for_op(tensors, stream, False)
        plan.run("total_norm", self._opts(plan, None, inv_scale, tensor_norms), s)

    @_serialized
    def compute_clip_factor(self, tensors, max_norm=None, *, inv_scale=None, tensor_norms=None,
                            stream=None) -> None:
        """Norm, coefficient and factor into the result slot, not applied."""
        plan, s, _held = self._bind_for_op(tensors, stream, False)
        plan.run("compute_clip_factor", self._opts(plan, max_norm, inv_scale, tensor_norms), s)

    @_serialized
    def clip_grads_with_norm(self, tensors, total_norm, max_norm=None, *, inv_scale=None,
                             stream=None) -> None:
        """Clip with a norm computed elsewhere: a float, or a float32 scalar in
        the plan's device memory (read when the step executes)."""
        plan, s, _held = self._bind_for_op(tensors, stream, True)
        opts = self._opts(plan, max_norm, inv_scale)
        if _is_number(total_norm):
            plan.clip_grads_with_norm(opts, float(total_norm), 0, s)
        else:
            plan.clip_grads_with_norm(opts, 0.0, _scalar_ptr(total_norm, plan.device, "total_norm"), s)

    @_serialized
    def clip_grad_norm_per_tensor(self, tensors, max_norm=None, *, inv_scale=None,
                                  tensor_norms=None, stream=None) -> None:
        """Each tensor clipped to its own norm (Keras clipnorm)."""
        plan, s, _held = self._bind_for_op(tensors, stream, True)
        plan.run("clip_grad_norm_per_tensor", self._opts(plan, max_norm, inv_scale, tensor_norms), s)

    @_serialized
    def clip_grad_value(self, tensors, clip_value: float, *, stream=None) -> None:
        """Clamp every element to [-clip_value, clip_value]; NaN stays NaN.
        float64 arrays are clamped to the double clip_value, the others to
        the float32 nearest it (as PyTorch's clip_grad_value_)."""
        plan, s, _held = self._bind_for_op(tensors, stream, True)
        plan.clip_grad_value(_real("clip_value", clip_value), s)

    # phases
    @_serialized
    def norm_accumulate(self, tensors, *, inv_scale=None, tensor_norms=None, stream=None) -> None:
        """Phase 1: this rank's partial (see `partial()`), for a reduction elsewhere."""
        plan, s, _held = self._bind_for_op(tensors, stream, False)
        plan.run("norm_accumulate", self._opts(plan, None, inv_scale, tensor_norms), s)

    @_serialized
    def norm_finalize(self, partials=None, count: int = 0, *, max_norm=None, inv_scale=None,
                      stream=None) -> None:
        """Phase 2: fold `count` partials (an array of gclip_partial records in
        the plan's device memory, e.g. gathered from every rank) into the result
        slot; None folds the plan's own partial. An array of any dtype is taken
        as raw bytes (16 per record); `count` 0 then means all of them, and a
        `count` larger than the array holds, or an array with no record, is
        refused. A bare address (int)
        is trusted to hold `count` records."""
        plan = self._require_plan()
        s = self._op_stream(plan, stream_handle(stream))
        count = int(count)
        if count < 0:
            raise ValueError(f"gclip: count {count} must be >= 0")
        ptr = 0
        if partials is not None:
            if isinstance(partials, int):
                ptr = partials
            else:
                ptr, nbytes, device = _dlpack.raw_bytes(partials)
                if device != plan.device:
                    raise ValueError(f"gclip: the partials live on device {device}, the plan on "
                                     f"{plan.device}; gather them onto the plan's device")
                if nbytes < _PARTIAL_BYTES:
                    raise ValueError(f"gclip: partials holds {nbytes} bytes, less than one "
                                     f"{_PARTIAL_BYTES}-byte record; pass None to fold the "
                                     "plan's own partial")
                if count == 0:
                    count = nbytes // _PARTIAL_BYTES
                if count * _PARTIAL_BYTES > nbytes:
                    raise ValueError(f"gclip: count {count} partials need {count * _PARTIAL_BYTES} "
                                     f"bytes; the array holds {nbytes}")
        plan.finalize(self._opts(plan, max_norm, inv_scale), ptr, count, s)

    @_serialized
    def apply_clip_factor(self, tensors=None, *, stream=None) -> None:
        """Phase 3: multiply the gradients by the slot's factor. `tensors`
        rebinds the pointers first (same shapes as the last operation).
        Without `tensors` it writes the arrays of the last operation, which
        must still be alive (pass them to be sure), and refuses read-only
        ones."""
        if tensors is not None:
            last = self._require_plan()
            plan, s, _held = self._bind_for_op(tensors, stream, True)
            if plan is not last:  # undone by _serialized: the last plan keeps its factor
                raise ValueError("gclip: apply_clip_factor(tensors) needs the element counts "
                                 "and dtypes of the last operation, whose factor it applies; "
                                 "these tensors have others")
        else:
            plan = self._require_plan()
            if not self._bound_writable:
                raise ValueError("gclip: apply_clip_factor() without tensors writes the arrays "
                                 "of the last operation, and those are read-only (or could not "
                                 "be bound again after a refused call); pass writable arrays as "
                                 "`tensors`")
            s = self._op_stream(plan, stream_handle(stream))
        plan.apply_clip_factor(s)

    @_serialized
    def partial(self) -> "_dlpack.MemoryView":
        """View of the plan's gclip_partial (16 bytes: double acc, uint32
        nonfinite, uint32 fingerprint) as 4 int32, for a communicator."""
        plan = self._require_plan()
        return _dlpack.MemoryView(plan, plan.partial_address(), plan.device, "int32", (4,))

    # -- results -------------------------------------------------------------------
    def _require_plan(self) -> Plan:
        if self.plan is None:
            raise RuntimeError("gclip: no operation has run on this Clipper yet")
        return self.plan

    @_serialized
    def result(self) -> ClipResult:
        """Wait for the last operation and decode its result. Raises
        NonFiniteError (with `.result`) under nonfinite='error'."""
        return self._require_plan().result()

    @_serialized
    def device_result(self) -> DeviceResultView:
        """DLPack views of the last plan's result slot (no synchronization)."""
        return DeviceResultView(self._require_plan())


def _is_number(x) -> bool:
    """Whether `x` is a value read now: a Python or NumPy number, a 0-d NumPy
    array, or a 0-d JAX array in host memory. Any other array is a scalar in
    device memory, read when the step executes."""
    if isinstance(x, (int, float)) or type(x).__name__ in ("float32", "float64", "int64", "int32"):
        return True
    np = sys.modules.get("numpy")
    if np is not None and (isinstance(x, np.generic)
                           or (isinstance(x, np.ndarray) and x.ndim == 0)):
        return True
    devices = getattr(x, "devices", None)
    if callable(devices) and type(x).__module__.startswith("jax") and getattr(x, "ndim", 1) == 0:
        return all(d.platform == "cpu" for d in devices())
    return False


def finite(x: float) -> bool:
    return math.isfinite(x)
