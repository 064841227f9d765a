"""Adaptive clipping and spike step-skip, with the state in the memory of the
plan's device (include/gclip_adapt.h, docs/adaptive.md).

    import gclip.torch as gt
    zclip = gt.ZClip()                  # zclip 1.0.0's constructor and defaults
    for batch in data:
        loss(batch).backward()
        norm = zclip.step(model)        # 0-dim tensor, no host synchronization
        optimizer.step()

Framework-neutral: `AdaptiveClipper` is `gclip.Clipper` with one adaptive
method (ZClip, AutoClip, AdaGC or spike step-skip) and the state that method
keeps between steps, for any array with __dlpack__.

PyTorch (exported by gclip.torch): `ZClip`, `QuantileClip`, `AdaGC`,
`SpikeSkip`, the `AdaptiveClipper` that takes parameters, and
`adaptive_clip_grad` (AGC: timm's function on the C library's gclip_agc_step).
`AGCClipper` is gclip.Clipper running AGC on any arrays with __dlpack__.

The state belongs to one set of gradients (element counts, dtypes, device);
gradients reallocated every step are rebound on every call. If the set
changes, the state of a global method (ZClip, AutoClip with
global_threshold, spike step-skip) moves to the new set; a per-tensor state
(AutoClip per tensor, AdaGC) cannot, and the step raises ValueError.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import struct
import threading
from dataclasses import dataclass
from typing import List, Optional

from . import _dlpack, _lib
from ._core import Clipper, Plan, _body, _locked, _real, _serialized, stream_handle
from ._lib import fn

__all__ = [
    "METHODS", "AdaptiveClipper", "AdaptiveInfo", "AdaptiveInfoView",
    "ZClip", "QuantileClip", "AdaGC", "SpikeSkip", "TorchAdaptiveClipper",
    "adaptive_clip_grad", "AGCClipper", "agc_hyperparameters",
]

METHODS = {
    "zclip": _lib.ADAPTIVE_ZCLIP,
    "autoclip": _lib.ADAPTIVE_AUTOCLIP,
    "adagc": _lib.ADAPTIVE_ADAGC,
    "spike_skip": _lib.ADAPTIVE_SPIKE_SKIP,
}

_DEFAULTS = {
    "zclip": dict(alpha=0.97, z_thresh=2.5, max_grad_norm=1.0, eps=1e-6, warmup_steps=25,
                  mode="zscore", clip_option="adaptive_scaling", clip_factor=1.0,
                  skip_update_on_spike=False),
    "autoclip": dict(quantile=0.9, history_length=1000, global_threshold=False),
    "adagc": dict(beta=0.98, lambda_abs=1.0, lambda_rel=1.05, warmup_steps=100, eps=1e-8),
    "spike_skip": dict(window=128, min_values=20, sigma=6.0),
}

_MAX_HISTORY = 1 << 20  # longest history, window or warm-up buffer of the C library


# ---- hyperparameters -------------------------------------------------------------------

def _integer(name: str, x, lo: int, hi: int) -> int:
    if isinstance(x, bool) or not hasattr(x, "__index__"):
        raise TypeError(f"gclip: {name} must be an int, got {type(x).__name__}")
    x = int(x)
    if not lo <= x <= hi:
        raise ValueError(f"gclip: {name} = {x}: must be in {lo} .. {hi}")
    return x


def _require(ok: bool, name: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"gclip: {name} = {value!r}: must be {rule}")


def _positive(name: str, x) -> float:
    v = _real(name, x)
    _require(v > 0 and math.isfinite(v), name, x, "finite and > 0")
    return v


def _non_negative(name: str, x) -> float:
    v = _real(name, x)
    _require(v >= 0 and math.isfinite(v), name, x, "finite and >= 0")
    return v


def _zclip(hp: dict) -> dict:
    alpha = _real("alpha", hp["alpha"])
    _require(0.0 < alpha < 1.0, "alpha", hp["alpha"], "in (0, 1)")
    cap = hp["max_grad_norm"]
    if cap is not None:
        cap = _real("max_grad_norm", cap)
        _require(cap > 0, "max_grad_norm", hp["max_grad_norm"], "> 0 or None (no cap)")
        if math.isinf(cap):
            cap = None
    mode = hp["mode"]
    if not isinstance(mode, str) or mode.lower() not in ("zscore", "percentile"):
        raise ValueError(f"gclip: mode = {mode!r}: must be 'zscore' or 'percentile'")
    mode = mode.lower()
    option = hp["clip_option"]
    if mode == "zscore":
        if option not in ("adaptive_scaling", "mean"):
            raise ValueError(f"gclip: clip_option = {option!r}: for zscore mode it must be "
                             "'mean' or 'adaptive_scaling'")
    else:
        option = None  # percentile mode ignores it, as the reference
    return dict(alpha=alpha, z_thresh=_positive("z_thresh", hp["z_thresh"]), max_grad_norm=cap,
                eps=_non_negative("eps", hp["eps"]),
                warmup_steps=_integer("warmup_steps", hp["warmup_steps"], 1, _MAX_HISTORY),
                mode=mode, clip_option=option,
                clip_factor=_positive("clip_factor", hp["clip_factor"]),
                skip_update_on_spike=bool(hp["skip_update_on_spike"]))


def _autoclip(hp: dict) -> dict:
    q = _real("quantile", hp["quantile"])
    _require(0.0 <= q <= 1.0, "quantile", hp["quantile"], "in [0, 1]")
    return dict(quantile=q,
                history_length=_integer("history_length", hp["history_length"], 1, _MAX_HISTORY),
                global_threshold=bool(hp["global_threshold"]))


_FLT_MAX = 3.4028234663852886e38


def _as_float32(name: str, x, v: float, positive: bool) -> float:
    """`v`, which the library uses as a float: it must stay finite there (and
    above 0 when `positive`), as gclip_adaptive_create checks."""
    f = struct.unpack("f", struct.pack("f", v))[0] if abs(v) <= _FLT_MAX else math.inf
    _require(math.isfinite(f) and (f > 0 or not positive), name, x,
             ("> 0 and " if positive else ">= 0 and ") + "finite as a float32")
    return v


def _adagc(hp: dict) -> dict:
    beta = _real("beta", hp["beta"])
    _require(0.0 <= beta < 1.0, "beta", hp["beta"], "in [0, 1)")
    return dict(beta=beta,
                lambda_abs=_as_float32("lambda_abs", hp["lambda_abs"],
                                       _positive("lambda_abs", hp["lambda_abs"]), True),
                lambda_rel=_as_float32("lambda_rel", hp["lambda_rel"],
                                       _positive("lambda_rel", hp["lambda_rel"]), True),
                warmup_steps=_integer("warmup_steps", hp["warmup_steps"], 0, 2**32 - 1),
                eps=_as_float32("eps", hp["eps"], _non_negative("eps", hp["eps"]), False))


def _spike_skip(hp: dict) -> dict:
    window = _integer("window", hp["window"], 2, _MAX_HISTORY)
    return dict(window=window, min_values=_integer("min_values", hp["min_values"], 2, window),
                sigma=_positive("sigma", hp["sigma"]))


_VALIDATE = {"zclip": _zclip, "autoclip": _autoclip, "adagc": _adagc, "spike_skip": _spike_skip}


def hyperparameters(method: str, values: Optional[dict] = None) -> dict:
    """The complete, validated hyperparameters of `method` ("zclip",
    "autoclip", "adagc" or "spike_skip"): the references' defaults updated
    with `values`. Raises ValueError (a value out of range, an unknown
    method) or TypeError (a value of the wrong type, an unknown name)."""
    if method not in METHODS:
        raise ValueError(f"gclip: method = {method!r}: must be one of {', '.join(METHODS)}")
    hp = dict(_DEFAULTS[method])
    for k, v in (values or {}).items():
        if k not in hp:
            raise TypeError(f"gclip: {method} has no hyperparameter {k!r} "
                            f"(it has {', '.join(hp)})")
        hp[k] = v
    return _VALIDATE[method](hp)


def _c_options(method: str, hp: dict) -> "_lib.AdaptiveOptions":
    o = _lib.default_adaptive_options()
    o.method = METHODS[method]
    if method == "zclip":
        o.zclip_alpha = hp["alpha"]
        o.zclip_z_thresh = hp["z_thresh"]
        o.zclip_max_grad_norm = math.inf if hp["max_grad_norm"] is None else hp["max_grad_norm"]
        o.zclip_eps = hp["eps"]
        o.zclip_warmup_steps = hp["warmup_steps"]
        o.zclip_mode = _lib.ZCLIP_ZSCORE if hp["mode"] == "zscore" else _lib.ZCLIP_PERCENTILE
        o.zclip_clip_option = (_lib.ZCLIP_MEAN if hp["clip_option"] == "mean"
                               else _lib.ZCLIP_ADAPTIVE_SCALING)
        o.zclip_clip_factor = hp["clip_factor"]
        o.zclip_skip_update_on_spike = int(hp["skip_update_on_spike"])
    elif method == "autoclip":
        o.autoclip_quantile = hp["quantile"]
        o.autoclip_history_length = hp["history_length"]
        o.autoclip_global = int(hp["global_threshold"])
    elif method == "adagc":
        o.adagc_beta = hp["beta"]
        o.adagc_lambda_abs = hp["lambda_abs"]
        o.adagc_lambda_rel = hp["lambda_rel"]
        o.adagc_warmup_steps = hp["warmup_steps"]
        o.adagc_eps = hp["eps"]
    else:
        o.spike_window = hp["window"]
        o.spike_min_values = hp["min_values"]
        o.spike_sigma = hp["sigma"]
    return o


def _per_tensor(method: str, hp: dict) -> bool:
    return method == "adagc" or (method == "autoclip" and not hp["global_threshold"])


# ---- exported state ----------------------------------------------------------------------

# gclip_adaptive_export's bytes: a 32-byte header (magic "GCAD", format,
# method, tensor count, histories, history length, state bytes), then the
# state: the shared scalars (steps, filled, head, spikes, mean, var), AdaGC's
# thresholds (one float per tensor), the rings (one float per value, in
# arrival order from `head` once full), AutoClip's sorted copies.
_HEADER = struct.Struct("=6IQ")
_SCALARS = struct.Struct("=4I2d")
_MAGIC, _FORMAT = 0x44414347, 1
_METHOD_NAMES = {v: k for k, v in METHODS.items()}


def _header(data: bytes) -> tuple:
    if len(data) < _HEADER.size:
        raise ValueError(f"gclip: {len(data)} bytes are too few for an adaptive state")
    h = _HEADER.unpack_from(data)
    if h[0] != _MAGIC:
        raise ValueError("gclip: the bytes are not an adaptive state (gclip_adaptive_export)")
    if h[1] != _FORMAT:
        raise ValueError(f"gclip: adaptive state of format {h[1]}; this package reads format "
                         f"{_FORMAT}")
    return h


def _with_tensor_count(data: bytes, count: int) -> bytes:
    """The state of a global method, its header naming `count` tensors (a
    global state does not depend on the tensor count)."""
    h = list(_header(data))
    h[3] = count
    return _HEADER.pack(*h) + data[_HEADER.size:]


def _check_state(method: str, hp: dict, data: bytes, per_tensor: bool) -> None:
    """Raise ValueError if `data` is not a whole state of `method` under `hp`
    (kept until the first step, which loads it for its gradients): it is
    loaded into an adaptive of as many empty CPU tensors as it names (a
    per-tensor state holds at least a float per tensor) or, for a global
    state, of none, and dropped."""
    count = _header(data)[3] if per_tensor else 0
    if count > len(data) // 4:
        raise ValueError(f"gclip: the adaptive state names {count} tensors in {len(data)} bytes")
    _probe(method, hp, count).load(data if per_tensor else _with_tensor_count(data, 0))


def _probe(method: str, hp: dict, count: int) -> "Adaptive":
    """An adaptive of `method` under `hp` on `count` empty CPU tensors: a
    state's bytes load into it as into any adaptive of that many tensors."""
    return Adaptive(Plan([0] * count, [_lib.F32] * count, _lib.DEVICE_CPU), method, hp)


def _ring_in_order(ring: list, filled: int, head: int) -> list:
    return ring[:filled] if filled < len(ring) else ring[head:] + ring[:head]


def _statistics(method: str, data: bytes) -> dict:
    """The state of exported bytes, decoded: counters, EMAs, histories."""
    _, _, _, tensors, rows, history, _ = _header(data)
    base = _HEADER.size
    steps, filled, head, spikes, mean, var = _SCALARS.unpack_from(data, base)
    gamma_n = tensors if method == "adagc" else 0
    off = base + _SCALARS.size
    gamma = list(struct.unpack_from(f"={gamma_n}f", data, off))
    off += (gamma_n * 4 + 7) // 8 * 8
    ring = struct.unpack_from(f"={rows * history}f", data, off)
    rings = [_ring_in_order(list(ring[r * history:(r + 1) * history]), filled, head)
             for r in range(rows)]
    out = {"steps": steps}
    if method == "zclip":
        initialized = steps >= history
        out.update(initialized=initialized, mean=mean if initialized else None,
                   var=var if initialized else None, spikes=spikes,
                   buffer=[] if initialized else rings[0][:filled])
    elif method == "autoclip":
        out["histories"] = rings
    elif method == "adagc":
        out["gamma"] = gamma
    else:
        out.update(window=rings[0], skipped=spikes)
    return out


def _state_bytes(x) -> bytes:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    if hasattr(x, "detach"):  # a torch uint8 tensor
        x = x.detach().cpu().contiguous().numpy()
    if hasattr(x, "tobytes"):
        return x.tobytes()
    raise TypeError(f"gclip: an adaptive state is bytes or a uint8 array, got {type(x).__name__}")


# ---- one gclip_adaptive ----------------------------------------------------------------------

@dataclass(frozen=True)
class AdaptiveInfo:
    """What the last adaptive step decided (gclip_adaptive_info), on the host.

    total_norm: the pre-clip norm; threshold: the global threshold used (NaN
    for per-tensor thresholds, +Inf when none applied); clip_coef: the global
    coefficient (1 for per-tensor methods); spike: ZClip's outlier or spike
    step-skip's skip; warmup: the warm-up rule was used; recorded: the step
    entered the statistics (False for NaN/Inf norms); clipped: tensors whose
    factor was below 1; steps: steps recorded so far."""
    total_norm: float
    threshold: float
    clip_coef: float
    spike: bool
    warmup: bool
    recorded: bool
    clipped: int
    steps: int


def _check_create(st: int, what: str) -> None:
    """A creation's status: INVALID_ARGUMENT (a hyperparameter) as ValueError."""
    if st == _lib.INVALID_ARGUMENT:
        raise ValueError(f"gclip: {_lib.last_error()}")
    _lib.check(st, what)


def _destroy_borrowing(obj, destroy) -> None:
    """Destroy obj.handle, an object that borrows obj.plan. The garbage
    collector finalizes the objects of a cycle in any order: once the plan is
    gone, destroying the object would touch it, so its memory is left to the
    process's end instead."""
    h = getattr(obj, "handle", None)
    plan = getattr(obj, "plan", None)
    if not h:
        return
    obj.handle = None
    if plan is None or not plan.handle:
        return
    try:
        destroy(h)
    except Exception:  # interpreter shutdown
        pass


class Adaptive:
    """One gclip_adaptive on `plan`. Holds the plan, so the plan outlives it."""

    __slots__ = ("handle", "plan", "method", "count", "_info", "_info_address", "__weakref__")

    def __init__(self, plan: Plan, method: str, hp: dict):
        options = _c_options(method, hp)
        h = ctypes.c_void_p()
        _check_create(fn.adaptive_create(ctypes.byref(h), plan.handle, ctypes.byref(options)),
                      "gclip_adaptive_create")
        self.handle = h.value
        self.plan = plan
        self.method = method
        self.count = plan.count
        self._info = _lib.AdaptiveInfo()
        self._info_address = None

    def __del__(self):
        _destroy_borrowing(self, fn.adaptive_destroy)

    def step(self, opts, stream: int) -> None:
        st = fn.adaptive_step(self.handle, ctypes.byref(opts), stream)
        if st:
            raise _lib.error_for(st, "gclip_adaptive_step")

    def info(self) -> AdaptiveInfo:
        i = self._info
        _lib.check(fn.adaptive_get_info(self.handle, ctypes.byref(i)), "gclip_adaptive_get_info")
        return AdaptiveInfo(i.total_norm, i.threshold, i.clip_coef, bool(i.spike), bool(i.warmup),
                            bool(i.recorded), i.clipped, i.steps)

    def info_address(self) -> int:
        if self._info_address is None:
            p = ctypes.c_void_p()
            _lib.check(fn.adaptive_device_info(self.handle, ctypes.byref(p)),
                       "gclip_adaptive_device_info")
            self._info_address = p.value
        return self._info_address

    def export(self) -> bytes:
        n = ctypes.c_size_t()
        _lib.check(fn.adaptive_state_size(self.handle, ctypes.byref(n)),
                   "gclip_adaptive_state_size")
        buf = ctypes.create_string_buffer(n.value)
        _lib.check(fn.adaptive_export(self.handle, buf, n.value), "gclip_adaptive_export")
        return buf.raw

    def load(self, data: bytes) -> None:
        buf = (ctypes.c_char * max(len(data), 1)).from_buffer_copy(data or b"\0")
        st = fn.adaptive_import(self.handle, buf, len(data))
        if st in (_lib.INVALID_ARGUMENT, _lib.MISMATCH, _lib.VERSION_MISMATCH):
            raise ValueError(f"gclip: the state does not fit this clipper: {_lib.last_error()}")
        _lib.check(st, "gclip_adaptive_import")


class AdaptiveInfoView:
    """The info record of the last step in the memory of the plan's device,
    readable with no host synchronization (in stream order after the step).
    Each member exports DLPack: float32 scalars total_norm, threshold,
    clip_coef; int32 scalars spike, warmup, recorded, clipped, steps;
    `values` float32 [total_norm, threshold, clip_coef]."""

    FLOATS = ("total_norm", "threshold", "clip_coef")
    INTS = ("spike", "warmup", "recorded", "clipped", "steps")

    def __init__(self, adaptive: Adaptive):
        addr = adaptive.info_address()
        dev = adaptive.plan.device
        mk = _dlpack.MemoryView
        for k, name in enumerate(self.FLOATS):
            setattr(self, name, mk(adaptive, addr + 4 * k, dev, "float32"))
        for k, name in enumerate(self.INTS):
            setattr(self, name, mk(adaptive, addr + 12 + 4 * k, dev, "int32"))
        self.values = mk(adaptive, addr, dev, "float32", (3,))


# ---- the native clipper ------------------------------------------------------------------

class AdaptiveClipper(Clipper):
    """gclip.Clipper with an adaptive method and the state it keeps.

        clipper = gclip.AdaptiveClipper("zclip", warmup_steps=25, max_grad_norm=1.0)
        clipper.step(grads)                      # norm -> threshold -> clip, in place
        clipper.info()                           # waits; AdaptiveInfo
        clipper.device_info().total_norm         # DLPack views, no synchronization

    `method` is "zclip", "autoclip", "adagc" or "spike_skip"; the keyword
    hyperparameters are those of the gclip.torch classes (defaults: the
    references'; `eps` is the method's own: ZClip's z-score eps, AdaGC's).
    `clip_eps` is the eps of ZClip's and AutoClip's coefficients
    (``T / (N + clip_eps)``, PyTorch's 1e-6, fixed in the references);
    `inv_scale` unscales AMP gradients (a float or a float32 scalar in device
    memory); `nonfinite` as gclip.Clipper. Every other Clipper operation works
    too, on the same plan.
    """

    def __init__(self, method: str = "zclip", *, norm_type: float = 2.0, clip_eps: float = 1e-6,
                 nonfinite: str = "skip", inv_scale=1.0, num_threads: Optional[int] = None,
                 **hyperparameters_):
        hp = hyperparameters(method, hyperparameters_)
        super().__init__(math.inf, norm_type, eps=clip_eps, nonfinite=nonfinite,
                         inv_scale=inv_scale, num_threads=num_threads, max_plans=1)
        self.method = method
        self._hp = hp
        self._adaptive: Optional[Adaptive] = None
        self._pending: Optional[bytes] = None  # loaded before the first step
        self._views = None

    @property
    def hyperparameters(self) -> dict:
        return dict(self._hp)

    def _own_state(self):
        # a step on new shapes builds a new Adaptive before it can be refused,
        # and a load (interrupted as it returns) installs hyperparameters with
        # its state: they are put back together
        return (self._adaptive, self._pending, self._views, self._hp)

    def _restore_own_state(self, state) -> None:
        self._adaptive, self._pending, self._views, self._hp = state

    # -- the adaptive of a set of tensors -----------------------------------------------------
    def _adaptive_for(self, key, make_plan) -> Adaptive:
        """The adaptive of this set of tensors: the current one, or a new one
        that takes over the state (loaded or of the previous set)."""
        ad = self._adaptive
        if ad is not None and ad.plan.key == key:
            return ad
        count = len(key[1])
        carry = self._pending if ad is None else None
        self._check_count(count)
        plan = make_plan()
        plan.key = key
        if self.num_threads is not None:
            plan.set_num_threads(self.num_threads)
        new = Adaptive(plan, self.method, self._hp)
        if ad is not None:
            carry = ad.export()
        if carry is not None:
            new.load(carry if self._per_tensor() else _with_tensor_count(carry, count))
        self._adaptive, self._pending = new, None
        self._views = None
        return new

    def _per_tensor(self) -> bool:
        return _per_tensor(self.method, self._hp)

    def _check_fits(self, count: int, data: Optional[bytes]) -> None:
        held = self._adaptive.count if data is None else _header(data)[3]
        if self._per_tensor() and held != count:
            raise ValueError(
                f"gclip: this {self.method} clipper keeps a state per tensor for {held} "
                f"gradients; this call has {count}. Keep the set of gradients fixed "
                "(parameters whose .grad is None are left out)")

    def _check_count(self, count: int) -> None:
        """Raise ValueError, changing nothing, if a per-tensor state held or
        loaded does not fit `count` gradients."""
        if self._adaptive is not None:
            self._check_fits(count, None)
        elif self._pending is not None:
            self._check_fits(count, self._pending)

    def _get_plan(self, key) -> Plan:
        device, sig = key
        return self._adaptive_for(
            key, lambda: Plan([s[0] for s in sig], [s[1] for s in sig], device)).plan

    def _require_adaptive(self) -> Adaptive:
        if self._adaptive is None:
            raise RuntimeError("gclip: no adaptive step has run on this clipper yet")
        return self._adaptive

    # -- the step ---------------------------------------------------------------------------
    @_serialized
    def step(self, tensors, *, inv_scale=None, stream=None) -> None:
        """One adaptive step in place (gclip_adaptive_step): the norm, this
        step's threshold(s) from the state, the state's update, the clip.
        Spike step-skip writes no gradient and raises the result slot's
        skip flag instead. No host synchronization."""
        plan, s, _held = self._bind_for_op(tensors, stream, True)
        self._adaptive.step(self._opts(plan, None, inv_scale), s)

    # -- results ------------------------------------------------------------------------------
    @_serialized
    def info(self) -> AdaptiveInfo:
        """Wait for the last step and decode its info record."""
        return self._require_adaptive().info()

    @_serialized
    def device_info(self) -> AdaptiveInfoView:
        """DLPack views of the last step's info record (no synchronization)."""
        return AdaptiveInfoView(self._require_adaptive())

    @_serialized
    def statistics(self) -> dict:
        """The state, decoded (waits for the last step): `steps`, and ZClip's
        `initialized`, `mean`, `var`, `buffer`, `spikes`; AutoClip's
        `histories` (one list per tensor, or one for a global threshold, in
        arrival order); AdaGC's `gamma` (one per tensor); spike step-skip's
        `window` and `skipped`."""
        data = self._state()
        if data is None:
            return _statistics(self.method, self._fresh_state())
        return _statistics(self.method, data)

    def _fresh_state(self) -> bytes:
        plan = Plan([], [], _lib.DEVICE_CPU)
        return Adaptive(plan, self.method, self._hp).export()

    # -- checkpoints --------------------------------------------------------------------------
    def _state(self) -> Optional[bytes]:
        return self._adaptive.export() if self._adaptive is not None else self._pending

    @_serialized
    def state_dict(self) -> dict:
        """{"method", "hyperparameters", "state"}: the state is the bytes of
        gclip_adaptive_export (None before the first step). Waits for the last
        step."""
        return {"method": self.method, "hyperparameters": dict(self._hp),
                "state": self._pack(self._state())}

    def _pack(self, data: Optional[bytes]):
        return data

    @_serialized
    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and state from `state_dict()`; the next step
        continues bit for bit as the saving clipper would have. Raises
        ValueError, changing nothing, if the dict is not of this method, its
        hyperparameters are invalid, or its state does not fit. After a step,
        a state of the same hyperparameters is copied into the state in
        place (a CUDA graph captured before goes on from it; `info()` keeps
        the last step's record until the next step); other hyperparameters
        get a new state, with a blank info record, and a graph must be
        captured again. Waits for the last step; not capturable."""
        self._prepare_load(state_dict)()

    def _prepare_load(self, state_dict: dict):
        """Check `state_dict` and build what it restores; returns the function
        that installs it (which cannot refuse it: only a device failure of
        the in-place import, which first waits for the last step, can make it
        raise)."""
        method = state_dict.get("method")
        if method != self.method:
            raise ValueError(f"gclip: the state dict is of method {method!r}, this clipper "
                             f"of {self.method!r}")
        hp = hyperparameters(method, state_dict.get("hyperparameters"))
        raw = state_dict.get("state")
        data = None if raw is None else _state_bytes(raw)
        if data is not None:
            h = _header(data)
            if _METHOD_NAMES.get(h[2]) != method:
                raise ValueError(f"gclip: the state bytes are of method "
                                 f"{_METHOD_NAMES.get(h[2], h[2])!r}, not {method!r}")
        ad = self._adaptive
        new = None
        same = None
        per_tensor = _per_tensor(method, hp)
        if ad is not None:
            fitted = None if data is None else \
                (data if per_tensor else _with_tensor_count(data, ad.count))
            if hp == self._hp:
                # Same hyperparameters: the adaptive that has stepped takes the
                # state in place, so its device memory (which a CUDA graph
                # captured on it reads and writes) stays where it is. The bytes
                # are checked on a CPU probe first; the import cannot refuse them.
                probe = _probe(method, hp, ad.count)
                if fitted is None:
                    fitted = probe.export()  # a fresh state
                else:
                    probe.load(fitted)
                same = fitted
            else:
                new = Adaptive(ad.plan, method, hp)
                if fitted is not None:
                    new.load(fitted)
        elif data is not None:
            _check_state(method, hp, data, per_tensor)

        def install():
            self._hp = hp
            if same is not None:
                if self._adaptive is not ad:
                    # undoing a load that gave this clipper a new state (see
                    # QuantileClip.load_state_dict): the state of before
                    self._adaptive, self._views = ad, None
                ad.load(same)
            elif new is not None:
                self._adaptive = new
                self._views = None
            else:
                self._pending = data
        return install


# ---- PyTorch ------------------------------------------------------------------------------------

def _torch():
    import torch
    return torch


def _gradients_and_owners(model_or_parameters):
    """The gradients of a module, a tensor or an iterable of tensors, picked
    as gclip.torch's drop-ins pick them, and their parameters' identities
    (gclip.torch._grads_and_owners)."""
    torch = _torch()
    from .torch import _grads_and_owners
    x = model_or_parameters
    return _grads_and_owners(x.parameters() if isinstance(x, torch.nn.Module) else x)


def _check_owners(clipper, before, now):
    """`now` if the per-tensor state of `clipper` may go on with the
    parameters `now`; ValueError, before anything is written, when a
    per-tensor method's set of parameters with gradients changed (its state
    slot i would go to another parameter's gradient)."""
    if before is not None and now is not None and now != before and clipper._per_tensor():
        what = ("same count, other parameters" if len(now) == len(before)
                else f"{len(before)} at the last step, {len(now)} now")
        raise ValueError(
            f"gclip: this {clipper.method} clipper keeps a state per tensor; the parameters "
            f"with a gradient changed since the last step ({what}). "
            "Keep the set of gradients fixed (parameters whose .grad is None are left out)")
    return now


def _gradients(model_or_parameters) -> list:
    """The gradients of a module, a tensor or an iterable of tensors, picked
    as gclip.torch's drop-ins pick them."""
    return _gradients_and_owners(model_or_parameters)[0]


_SMALL_PLAN = 1 << 20  # elements below which a CPU plan runs on one thread


class TorchAdaptiveClipper(AdaptiveClipper):
    """AdaptiveClipper for PyTorch (gclip.torch.AdaptiveClipper): `step` takes
    a module, parameters (their .grad) or gradient tensors, queues work on
    the current CUDA stream, and `device_info()` gives tensors. The default
    non-finite policy is "propagate" (the references' arithmetic on that
    step; the statistics are never updated with a NaN or Inf norm)."""

    def __init__(self, method: str = "zclip", *, nonfinite: str = "propagate", **kwargs):
        super().__init__(method, nonfinite=nonfinite, **kwargs)
        self._bound = None  # (plan, pointers) of the last rebind

    def _checked(self, grads):
        """(device index, element counts, plan key) of the gradients of one
        step, after every check of them that can reject (ValueError or
        TypeError, nothing written)."""
        torch = _torch()
        if not grads:
            raise ValueError("gclip: no gradients to clip")
        codes = _dtype_codes()
        g0 = grads[0]
        if g0.device.type not in ("cpu", "cuda"):
            _gt().describe_tensor(g0, 0)  # raises the drop-ins' TypeError
        devs = set(map(torch.Tensor.get_device, grads))
        if len(devs) > 1:
            raise ValueError("gclip: the gradients of one step must be on one device, got "
                             f"{sorted(str(g.device) for g in grads)[:4]}")
        dev_index = devs.pop()
        numels = tuple(map(torch.Tensor.numel, grads))
        key = (dev_index, tuple(zip(numels, (codes.get(g.dtype) for g in grads))))
        ad = self._adaptive
        if ad is None or ad.plan.key != key or not all(map(torch.Tensor.is_contiguous, grads)):
            for i, g in enumerate(grads):
                _gt().describe_tensor(g, i)  # every check that can reject, before any write
        return dev_index, numels, key

    def _bind(self, tensors, stream, writable) -> Plan:
        torch = _torch()
        grads = _gradients(tensors)
        checked = getattr(grads, "checked", None)  # QuantileClip checked them just before
        dev_index, numels, key = checked if checked is not None else self._checked(grads)
        if writable:
            _gt()._check_writable(grads)  # an inference tensor, outside inference mode
        stream = self._op_stream_on(dev_index, stream)
        ptrs = tuple(map(torch.Tensor.data_ptr, grads))

        def make_plan():
            plan = Plan(list(numels), [c for _, c in key[1]], dev_index, ptrs)
            if dev_index < 0 and sum(numels) < _SMALL_PLAN and self.num_threads is None:
                plan.set_num_threads(1)  # a parallel region costs more than the work
            return plan

        plan = self._adaptive_for(key, make_plan).plan
        # The plan is this clipper's own: the same pointers need no new table
        # (a CUDA rebind is a copy, and is refused during graph capture).
        if self._bound != (plan, ptrs):
            self._bound = None  # until the rebind has succeeded (it may raise, or be interrupted)
            plan.rebind(ptrs, stream)
            self._bound = (plan, ptrs)
        self._binding = grads  # held until the step returns (_bind_for_op)
        self._bound_writable = True
        self.plan = plan
        return plan

    def _binding_undone(self) -> None:
        self._bound = None  # the next step rebinds
        super()._binding_undone()

    @staticmethod
    def _op_stream_on(dev_index: int, stream: int) -> int:
        # gclip.torch's current-stream lookup (0 on the CPU)
        return _gt()._current_stream(dev_index) if stream == 0 else stream

    def _op_stream(self, plan: Plan, stream: int) -> int:
        # The step goes on the stream _bind rebound on: PyTorch's current
        # stream when none is given. On the legacy default stream (0) instead,
        # a step issued while torch.cuda.graph captures its own stream would
        # run once, eagerly, and be missing from the graph, whose replays
        # would then only copy out the info record of that one eager step.
        return self._op_stream_on(plan.device, stream)

    @_serialized
    def device_info(self) -> dict:
        """The last step's info record as 0-dim tensors on the gradients'
        device (float32 total_norm, threshold, clip_coef; int32 spike,
        warmup, recorded, clipped, steps), read with no host synchronization.
        They are views: the next step overwrites them."""
        if self._views is None:
            torch = _torch()
            view = _body(AdaptiveClipper.device_info)(self)
            self._views = {k: torch.from_dlpack(getattr(view, k))
                           for k in AdaptiveInfoView.FLOATS + AdaptiveInfoView.INTS}
        return self._views

    @_serialized
    def statistics(self) -> dict:
        torch = _torch()
        out = _body(AdaptiveClipper.statistics)(self)
        for k in ("buffer", "gamma", "window"):
            if k in out:
                out[k] = torch.tensor(out[k], dtype=torch.float32)
        if "histories" in out:
            out["histories"] = [torch.tensor(h, dtype=torch.float32) for h in out["histories"]]
        return out

    def _pack(self, data):
        if data is None:
            return None
        torch = _torch()
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _gt():
    from . import torch as gt
    return gt


_CODES = {}


def _dtype_codes() -> dict:
    if not _CODES:
        torch = _torch()
        _CODES.update({torch.float32: _lib.F32, torch.float16: _lib.F16,
                       torch.bfloat16: _lib.BF16, torch.float64: _lib.F64})
    return _CODES


class _Hyperparameters:
    """Read-only attributes for the hyperparameters of `self._clipper`."""

    _clipper: TorchAdaptiveClipper

    def __getattr__(self, name):
        clipper = self.__dict__.get("_clipper")
        if clipper is not None and name in clipper._hp:
            return clipper._hp[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __reduce_ex__(self, protocol):
        # pickle, copy.copy and copy.deepcopy: see Clipper.__reduce_ex__
        raise TypeError(f"gclip: a {type(self).__name__} holds library plans and cannot be "
                        "pickled or copied; make a new one with the same arguments and carry "
                        "its state with state_dict() and load_state_dict()")

    def __setattr__(self, name, value):
        clipper = self.__dict__.get("_clipper")
        if clipper is not None and name in clipper._hp:
            raise AttributeError(f"gclip: {name} is fixed when the clipper is built (its state "
                                 "lives on the device); build a new one, or load_state_dict")
        super().__setattr__(name, value)


class _OneClipper(_Hyperparameters):
    """A PyTorch class over one TorchAdaptiveClipper."""

    def __init__(self, method: str, hp: dict, nonfinite: str):
        self._clipper = TorchAdaptiveClipper(method, nonfinite=nonfinite, **hp)
        self._lock = self._clipper._lock  # a step and the record it returns, together
        self._owners = None  # the parameters of the last step (per-tensor methods)

    def _step(self, model_or_parameters, inv_scale):
        """The adaptive step; False when there is no gradient."""
        grads, owners = _gradients_and_owners(model_or_parameters)
        if not grads:
            return False
        self._owners = _check_owners(self._clipper, self._owners, owners)
        self._clipper.step(grads, inv_scale=inv_scale)
        return True

    def _returned(self, field: str):
        return self._clipper.device_info()[field].clone()

    def info(self) -> AdaptiveInfo:
        """The last step's decision (waits for it)."""
        return self._clipper.info()

    def device_info(self) -> dict:
        """The last step's decision as 0-dim tensor views, no synchronization."""
        return self._clipper.device_info()

    def result(self):
        """The plan's result slot after the last step (waits; ClipResult)."""
        return self._clipper.result()

    def statistics(self) -> dict:
        """The method's state, decoded (waits for the last step)."""
        return self._clipper.statistics()

    def state_dict(self) -> dict:
        return self._clipper.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self._clipper.load_state_dict(state_dict)
        self._owners = None  # the loaded state's tensors are the next step's


class ZClip(_OneClipper):
    """ZClip (PyPI zclip 1.0.0): z-score anomaly detection on the gradient
    norm with EMAs of its mean and variance, and an adaptive threshold for
    outliers. Constructor, defaults and arithmetic are the reference's.

        zclip = gclip.torch.ZClip()
        loss.backward()
        norm = zclip.step(model)       # before optimizer.step()

    `step` returns the pre-clip total norm as a 0-dim float32 tensor on the
    gradients' device, without a host synchronization (the reference returns
    a Python float, with one). Hyperparameters are read-only attributes;
    `mean`, `var` and `initialized` read the EMAs (waiting for the device).
    Keyword extensions: `nonfinite` ("propagate", the reference's arithmetic
    on that step; "skip" writes no gradient) and `step(..., inv_scale=)`.
    """

    def __init__(self, alpha=0.97, z_thresh=2.5, max_grad_norm=1.0, eps=1e-6, warmup_steps=25,
                 mode="zscore", clip_option="adaptive_scaling", clip_factor=1.0,
                 skip_update_on_spike=False, *, nonfinite: str = "propagate"):
        super().__init__("zclip", dict(
            alpha=alpha, z_thresh=z_thresh, max_grad_norm=max_grad_norm, eps=eps,
            warmup_steps=warmup_steps, mode=mode, clip_option=clip_option,
            clip_factor=clip_factor, skip_update_on_spike=skip_update_on_spike), nonfinite)

    @_locked  # the step and the record it returns: one thread's
    def step(self, model_or_parameters, *, inv_scale=None):
        """Clip the gradients in place; returns their pre-clip total norm."""
        if not self._step(model_or_parameters, inv_scale):
            return _torch().tensor(0.0)
        return self._returned("total_norm")

    @property
    def initialized(self) -> bool:
        return self.statistics()["initialized"]

    @property
    def mean(self) -> Optional[float]:
        return self.statistics()["mean"]

    @property
    def var(self) -> Optional[float]:
        return self.statistics()["var"]


class AdaGC(_OneClipper):
    """The clipping part of AdaGC (pytorch_optimizer 4.1.0 `AdaGC`, its
    defaults): global clipping to `lambda_abs` during the warm-up, then each
    tensor clipped to `lambda_rel` times an EMA of its own clipped norm.
    Use it before any optimizer. `step` returns the pre-clip total norm
    (0-dim float32 tensor, no host synchronization)."""

    def __init__(self, beta=0.98, lambda_abs=1.0, lambda_rel=1.05, warmup_steps=100, eps=1e-8,
                 *, nonfinite: str = "propagate"):
        super().__init__("adagc", dict(beta=beta, lambda_abs=lambda_abs, lambda_rel=lambda_rel,
                                       warmup_steps=warmup_steps, eps=eps), nonfinite)

    @_locked  # the step and the record it returns: one thread's
    def step(self, model_or_parameters, *, inv_scale=None):
        if not self._step(model_or_parameters, inv_scale):
            return _torch().tensor(0.0)
        return self._returned("total_norm")


class SpikeSkip(_OneClipper):
    """Spike step-skip (OLMo-core's SkipStepOptimizer rule): once the rolling
    window of the last `window` norms holds `min_values`, a step whose norm
    has a z-score above `sigma` is to be skipped. A skipped step's norm stays
    out of the window. No gradient is written.

    `step` returns the skip flag as a 0-dim int32 tensor on the gradients'
    device (1: skip this optimizer step), with no host synchronization; gate
    the update on the device, e.g. ``lr * (1 - flag)``. The result slot's
    flags carry GCLIP_RESULT_SKIP_STEP as well."""

    def __init__(self, window=128, min_values=20, sigma=6.0):
        super().__init__("spike_skip", dict(window=window, min_values=min_values, sigma=sigma),
                         "propagate")

    @_locked  # the step and the record it returns: one thread's
    def step(self, model_or_parameters, *, inv_scale=None):
        if not self._step(model_or_parameters, inv_scale):
            return _torch().tensor(0, dtype=_torch().int32)
        return self._returned("spike")


class QuantileClip(_Hyperparameters):
    """AutoClip (PyPI autoclip 0.2.1 `QuantileClip`): each tensor is clipped to
    the `quantile` of its last `history_length` pre-clip norms
    (`torch.quantile`, linear interpolation), or with `global_threshold` all
    gradients to the quantile of the total norm's history. The first step
    does not clip. Constructor, parameter groups (dicts with "params" and
    optional "quantile" / "history_length") and arithmetic are the
    reference's; the histories live on the gradients' device and a step does
    not synchronize."""

    def __init__(self, parameters, quantile=0.9, history_length=1000, global_threshold=False,
                 *, nonfinite: str = "propagate"):
        torch = _torch()
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        groups = list(parameters)
        if not groups:
            raise ValueError("gclip: QuantileClip got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        defaults = hyperparameters("autoclip",
                                   dict(quantile=quantile, history_length=history_length))
        self.parameter_groups: List[dict] = []
        seen = set()
        for group in groups:
            params = group["params"]
            if isinstance(params, set):
                raise TypeError("gclip: clipping parameters must be an ordered collection, "
                                "not a set")
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            for p in params:
                if not isinstance(p, torch.Tensor):
                    raise TypeError(f"gclip: QuantileClip clips tensors, got {type(p).__name__}")
                if not p.is_leaf:
                    raise ValueError("gclip: QuantileClip got a non-leaf tensor (gradients "
                                     "accumulate on leaves only)")
                if id(p) in seen:
                    raise ValueError("gclip: a parameter appears twice in QuantileClip's groups")
                seen.add(id(p))
            hp = hyperparameters("autoclip", dict(
                quantile=group.get("quantile", defaults["quantile"]),
                history_length=group.get("history_length", defaults["history_length"])))
            self.parameter_groups.append(dict(params=params, quantile=hp["quantile"],
                                              history_length=hp["history_length"]))
        self.global_threshold = bool(global_threshold)
        if self.global_threshold:
            everything = [p for g in self.parameter_groups for p in g["params"]]
            self._sets = [everything]
            self._clippers = [TorchAdaptiveClipper(
                "autoclip", nonfinite=nonfinite, global_threshold=True, **{
                    k: defaults[k] for k in ("quantile", "history_length")})]
        else:
            self._sets = [g["params"] for g in self.parameter_groups]
            self._clippers = [TorchAdaptiveClipper(
                "autoclip", nonfinite=nonfinite, quantile=g["quantile"],
                history_length=g["history_length"]) for g in self.parameter_groups]
        self._clipper = self._clippers[0]
        self._owners = [None] * len(self._sets)  # each set's parameters at the last step
        self._lock = threading.RLock()  # steps and loads, one at a time

    @contextlib.contextmanager
    def _all_clippers(self):
        """Every group's clipper held: a load installs states in place."""
        with contextlib.ExitStack() as stack:
            for c in self._clippers:
                stack.enter_context(c._lock)
            yield

    @_locked
    def step(self) -> None:
        """Clip the gradients of the parameters in place (no return value,
        as the reference)."""
        # every group's gradients checked before any is clipped: a refused
        # step writes nothing. A group with no gradient is left as it is (its
        # state and its parameters of the last step), as the reference does.
        work = []
        new_owners = list(self._owners)
        for k, (params, clipper) in enumerate(zip(self._sets, self._clippers)):
            with_grad = [p for p in params if p.grad is not None]
            if not with_grad:
                continue
            new_owners[k] = _check_owners(clipper, self._owners[k], tuple(map(id, with_grad)))
            clipper._check_count(len(with_grad))
            grads = _gt()._Picked(p.grad for p in with_grad)
            grads.checked = clipper._checked(grads)  # not checked again by its step
            work.append((clipper, grads))
        for clipper, grads in work:
            clipper.step(grads)
        self._owners = new_owners

    def info(self, group: int = 0) -> AdaptiveInfo:
        """The last step's decision of a parameter group (of all parameters
        with global_threshold); waits for it."""
        return self._clippers[group].info()

    def device_info(self, group: int = 0) -> dict:
        return self._clippers[group].device_info()

    def statistics(self, group: int = 0) -> dict:
        """`steps` and `histories`: one float32 tensor of pre-clip norms per
        gradient (one for global_threshold), oldest first."""
        return self._clippers[group].statistics()

    @_locked
    def state_dict(self) -> dict:
        return {"global_threshold": self.global_threshold,
                "clippers": [c.state_dict() for c in self._clippers]}

    @_locked
    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the state and hyperparameters of every group; raises
        ValueError, changing nothing, when the dict does not fit. Should a
        group's import fail on the device, the groups before it are put
        back as they were and the error is raised."""
        saved = state_dict.get("clippers", ())
        if bool(state_dict.get("global_threshold")) != self.global_threshold or \
                len(saved) != len(self._clippers):
            raise ValueError(f"gclip: the state dict has {len(saved)} history sets "
                             f"(global_threshold={state_dict.get('global_threshold')}); this "
                             f"QuantileClip has {len(self._clippers)} "
                             f"(global_threshold={self.global_threshold})")
        with self._all_clippers():
            installs = [c._prepare_load(s) for c, s in zip(self._clippers, saved)]
            # what puts each group back as it is, should a later group's
            # in-place import fail on the device: a load is whole or nothing
            undos = [c._prepare_load(c.state_dict()) for c in self._clippers]
            done = 0
            try:
                for install in installs:
                    install()
                    done += 1
            except BaseException:
                for undo in reversed(undos[:done]):
                    try:
                        undo()
                    except Exception:  # the device failed again: the error raised says so
                        pass
                raise
        self._owners = [None] * len(self._sets)  # the loaded states' are the next step's
        if not self.global_threshold:
            for g, c in zip(self.parameter_groups, self._clippers):
                g["quantile"] = c._hp["quantile"]
                g["history_length"] = c._hp["history_length"]


# ---- AGC -----------------------------------------------------------------------------------

def agc_hyperparameters(clip_factor=0.01, eps=1e-3, norm_type=2.0) -> tuple:
    """(clip_factor, eps, norm_type) of AGC, validated as gclip_agc_create
    does: clip_factor finite and > 0, eps finite and >= 0, norm_type > 0 and
    still so as a float32 (from about 7e-46), finite below about 3.4e38 or
    inf. Raises ValueError or TypeError."""
    cf = _positive("clip_factor", clip_factor)
    e = _non_negative("eps", eps)
    nt = _real("norm_type", norm_type)
    _require(_lib.takes_norm_type(nt), "norm_type", norm_type, _lib.NORM_TYPE_RANGE)
    return cf, e, nt


_INT64_MAX = (1 << 63) - 1


def _units(shape) -> int:
    """AGC units of a tensor of `shape`: the size of dim 0, or 1 for ndim <= 1."""
    return int(shape[0]) if len(shape) > 1 else 1


class Agc:
    """One gclip_agc: the gradients of `plan` paired with parameters given as
    (address, numel, dtype code) and their unit counts. Holds the plan."""

    __slots__ = ("handle", "plan", "__weakref__")

    def __init__(self, plan: Plan, params, units, clip_factor: float, eps: float,
                 norm_type: float):
        o = _lib.AgcOptions()
        o.size = ctypes.sizeof(o)
        o.version = _lib.AGC_OPTIONS_VERSION
        o.clip_factor, o.eps, o.norm_type = clip_factor, eps, norm_type
        n = len(params)
        descs = (_lib.Tensor * max(n, 1))()
        for i, (ptr, numel, dtype) in enumerate(params):
            descs[i].data = ptr or None
            descs[i].numel = numel
            descs[i].dtype = dtype
        counts = (ctypes.c_int64 * max(n, 1))(*units)
        h = ctypes.c_void_p()
        _check_create(fn.agc_create(ctypes.byref(h), plan.handle, descs, counts,
                                    ctypes.byref(o)), "gclip_agc_create")
        self.handle = h.value
        self.plan = plan

    def __del__(self):
        _destroy_borrowing(self, fn.agc_destroy)

    def step(self, stream: int) -> None:
        st = fn.agc_step(self.handle, stream)
        if st:
            raise _lib.error_for(st, "gclip_agc_step")


class AGCClipper(Clipper):
    """gclip.Clipper running unit-wise adaptive gradient clipping (AGC,
    gclip_agc_step, timm's arithmetic) on arrays with __dlpack__.

        agc = gclip.AGCClipper(clip_factor=0.01)
        agc.step(params, grads)         # in place, no host synchronization

    Each gradient is paired with the parameter at the same position (same
    element count and dtype, dense); its units are rows along dim 0 (the
    whole array for ndim <= 1), or `units` when given. Every other Clipper
    operation works on the gradients too."""

    def __init__(self, clip_factor: float = 0.01, eps: float = 1e-3, norm_type: float = 2.0, *,
                 num_threads: Optional[int] = None, max_plans: int = 8):
        cf, e, nt = agc_hyperparameters(clip_factor, eps, norm_type)
        super().__init__(math.inf, nt, num_threads=num_threads, max_plans=max_plans)
        self.clip_factor, self.agc_eps = cf, e
        self._agcs: "dict[tuple, Agc]" = {}

    @_serialized
    def step(self, params, grads, *, units=None, stream=None) -> None:
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"gclip: {len(params)} parameters for {len(grads)} gradients")
        s = stream_handle(stream)
        infos = [_dlpack.describe(p, None, name=f"parameter {k}") for k, p in enumerate(params)]
        for k, i in enumerate(infos):
            if not i.dense:
                raise ValueError(f"gclip: parameter {k} is not dense; pass a contiguous array")
        if units is None:
            units = [_units(getattr(p, "shape", ())) for p in params]
        units = list(units)
        if len(units) != len(params):
            raise ValueError(f"gclip: {len(units)} units for {len(params)} parameters; give one "
                             "per parameter (rows along dim 0, 1 for ndim <= 1)")
        units = [_integer(f"units[{k}]", u, 0, _INT64_MAX) for k, u in enumerate(units)]
        plan = self._bind(grads, s, True)
        self._last_stream = s = self._op_stream(plan, s)
        for k, i in enumerate(infos):
            if i.device != plan.device:
                raise ValueError(f"gclip: parameter {k} lives on device {i.device}, the gradients "
                                 f"on {plan.device}")
        key = (plan.key, tuple((i.ptr, i.numel, i.dtype) for i in infos), tuple(units))
        agc = self._agcs.get(key)
        if agc is None or agc.plan is not plan:
            agc = Agc(plan, [(i.ptr, i.numel, i.dtype) for i in infos], units, self.clip_factor,
                      self.agc_eps, self.norm_type)
            if len(self._agcs) >= 2 * self._max_plans:
                self._agcs.clear()
            self._agcs[key] = agc
        agc.step(s)


def _unitwise_norm(x, norm_type: float):
    if x.ndim <= 1:
        return x.norm(norm_type)
    return x.norm(norm_type, dim=tuple(range(1, x.ndim)), keepdim=True)


def _agc_torch(pairs, clip_factor, eps, norm_type) -> None:
    """AGC with PyTorch operations, for the tensors the C path does not take."""
    torch = _torch()
    with torch.no_grad():
        for p, g in pairs:
            max_norm = _unitwise_norm(p.detach(), norm_type).clamp_(min=eps).mul_(clip_factor)
            grad_norm = _unitwise_norm(g, norm_type)
            factor = torch.where(grad_norm < max_norm, 1.0, max_norm / grad_norm.clamp(min=1e-6))
            g.mul_(factor)


# (plan, Agc) of each set of parameters seen, most recent last
_AGC_CACHE: "dict[tuple, Agc]" = {}
_AGC_CACHE_SIZE = 8


def _agc_native(p, g) -> bool:
    """Whether the C path takes this pair: dense strided tensors of one dtype
    gclip knows, on the CPU or on a CUDA device of a CUDA build."""
    torch = _torch()
    if p.layout != torch.strided or g.layout != torch.strided or p.dtype != g.dtype:
        return False
    if p.dtype not in _dtype_codes() or p.device != g.device or p.numel() != g.numel():
        return False
    if not (p.is_contiguous() and g.is_contiguous()):
        return False
    return p.device.type == "cpu" or (p.device.type == "cuda" and _lib.cuda_device_count() > 0)


def _agc_native_step(pairs, clip_factor, eps, norm_type) -> None:
    """One gclip_agc_step over pairs on one device; the plan and AGC of the
    parameters are kept, the gradients rebound each call."""
    dev = pairs[0][0].device
    index = -1 if dev.type == "cpu" else (dev.index if dev.index is not None
                                           else _torch().cuda.current_device())
    codes = _dtype_codes()
    sig = tuple((p.data_ptr(), p.numel(), codes[p.dtype], _units(p.shape)) for p, _ in pairs)
    key = (index, clip_factor, eps, norm_type, sig)
    agc = _AGC_CACHE.pop(key, None)
    if agc is None:
        plan = Plan([s[1] for s in sig], [s[2] for s in sig], index)
        agc = Agc(plan, [s[:3] for s in sig], [s[3] for s in sig], clip_factor, eps, norm_type)
        while len(_AGC_CACHE) >= _AGC_CACHE_SIZE:
            _AGC_CACHE.pop(next(iter(_AGC_CACHE)))
    _AGC_CACHE[key] = agc
    stream = 0 if index < 0 else _gt()._current_stream(index)
    agc.plan.rebind([g.data_ptr() for _, g in pairs], stream)
    agc.step(stream)


def adaptive_clip_grad(parameters, clip_factor: float = 0.01, eps: float = 1e-3,
                       norm_type: float = 2.0) -> None:
    """Unit-wise adaptive gradient clipping (AGC, Brock et al. 2021), in place,
    with timm's signature and arithmetic (`timm.utils.agc.adaptive_clip_grad`):
    each unit (the slice at one index of dim 0, or the whole tensor for
    ndim <= 1) of a gradient is scaled by
    ``clip_factor * max(||W_unit||, eps) / max(||g_unit||, 1e-6)`` unless
    ``||g_unit|| < clip_factor * max(||W_unit||, eps)``.

    The C library's gclip_agc_step (two kernel launches on CUDA, no host
    synchronization) for dense tensors; PyTorch operations for the others
    (sparse or strided gradients, a gradient of another dtype). gclip sums a
    unit's norm in double in a fixed order, PyTorch in float in its own, so
    a factor can differ from timm's by a float rounding. Raises ValueError for
    clip_factor <= 0, eps < 0 (either non-finite included), or a norm_type the
    library cannot read as a float32 p > 0 (<= 0, NaN, below about 7e-46, or
    finite from about 3.4e38)."""
    torch = _torch()
    clip_factor, eps, norm_type = agc_hyperparameters(clip_factor, eps, norm_type)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    native, other = {}, []
    for p in parameters:
        g = p.grad
        if g is None:
            continue
        if _agc_native(p, g):
            native.setdefault(p.device, []).append((p.detach(), g))
        else:
            other.append((p, g))
    for pairs in native.values():
        _agc_native_step(pairs, clip_factor, eps, norm_type)
    if other:
        _agc_torch(other, clip_factor, eps, norm_type)
