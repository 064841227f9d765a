"""What bench/torch_baseline.py and bench/jax_baseline.py share: the shapes
file, the ops' passes, the command line, the output records and the run
protocol (warm-up runs, then N timed runs, each after a prepare step that
restores the data of writing ops and evicts the caches, outside the timed
region).

With --roof-lib (gclip-bench passes its libgclip-bench-roof.so), each timed
CPU run is paired with the roofline passes of its op, as gclip-bench pairs
its own: before the run on even runs, after it on odd ones, with the same C
kernels, buffer and thread count. The record's roofline then comes from
those passes, measured in this process at the minutes the peer ran."""
import argparse
import ctypes
import json
import math
import platform
import statistics
import sys
import time

DATA_SIGMA = 1e-3    # gradient-like magnitude, as the C benchmark
LOSS_SCALE = 1024.0  # unscale-clip: the data carries this loss scale
EPS = 1e-6
ALIGN = 16           # elements: tensors start 64-byte aligned, as in the C arena
# Eviction between runs streams (read + write) a buffer through the caches:
# four times the data for small workloads, so no replacement policy can keep
# them cached; large ones do not fit anyway.
FLUSH_MIN_BYTES = 128 << 20
WRITES = {"clip", "value", "tensor-norm", "unscale-clip"}
# passes over the data: (reads for the norm, read-write passes)
PASSES = {"norm": (1, 0), "clip-noop": (1, 0), "clip": (1, 1), "value": (0, 1),
          "tensor-norm": (1, 1), "unscale-clip": (1, 1)}
ALL_OPS = "norm,clip,clip-noop,value,tensor-norm,unscale-clip"
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
# The output check (check_output): significand bits and smallest subnormal of
# each gradient dtype, and how far a peer's norm may be from the exact one.
SIGNIFICAND = {"f32": 24, "f16": 11, "bf16": 8}
SMALLEST = {"f32": 2.0 ** -149, "f16": 2.0 ** -24, "bf16": 2.0 ** -133}
# How far a peer's norm, and so its factor, may be off the exact one and
# still count as the op done. Loose on purpose: PyTorch 2.15's float32 norm
# on the CPU drifts with the tensor's size (0.27% low for gpt2-124m's 38.6M
# element embedding, 3.7% for one-huge's 2^28 elements, on 1 thread as on
# 2), and a norm of float16 gradients can lose their small squares; each
# peer's real error is recorded apart (norm_error).
NORM_BOUND = 2.0 ** -4
CHECK_CHUNK = 1 << 22     # elements compared at a time (float64 copies of a chunk, not a tensor)


def flush_bytes(data_bytes):
    return max(FLUSH_MIN_BYTES, 4 * data_bytes if data_bytes < 256 << 20 else 0)


def read_shapes(path, dtypes):
    """[(dtype, dims)] from the shapes file; `dtypes` maps "f32", "f16",
    "bf16" to the library's dtypes."""
    shapes = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts:
                shapes.append((dtypes[parts[0]], tuple(int(d) for d in parts[1:])))
    return shapes


def parse_args(doc, default_threads):
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--shapes", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--ops", default=ALL_OPS)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=default_threads)
    ap.add_argument("--devices", default="cpu")
    ap.add_argument("--json", help="also write the records to this file")
    ap.add_argument("--roof-lib", help="gclip-bench's roofline library: CPU runs are paired "
                    "with its passes")
    return ap.parse_args()


class Roof:
    """The roofline passes of gclip-bench (bench/roofline.c) through ctypes:
    a 256 MiB buffer, a read pass and an in-place read-write pass."""

    def __init__(self, path, threads):
        lib = ctypes.CDLL(path)
        lib.bench_roof_create.restype = ctypes.c_void_p
        lib.bench_roof_create.argtypes = [ctypes.c_int]
        for name in ("bench_roof_read_ms", "bench_roof_rw_ms"):
            getattr(lib, name).restype = ctypes.c_double
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.bench_roof_bytes.restype = ctypes.c_double
        lib.bench_roof_destroy.argtypes = [ctypes.c_void_p]
        lib.bench_evict.restype = None
        lib.bench_evict.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.lib = lib
        self.threads = threads
        self.roof = lib.bench_roof_create(threads)
        if not self.roof:
            raise MemoryError("roofline buffer")
        self.bytes = lib.bench_roof_bytes()

    def passes(self, op, read_ms, rw_ms):
        """One repetition of op's passes; their times appended."""
        reads, rws = PASSES[op]
        if reads:
            read_ms.append(self.lib.bench_roof_read_ms(self.roof))
        if rws:
            rw_ms.append(self.lib.bench_roof_rw_ms(self.roof))

    def gbps(self, op, read_ms, rw_ms):
        """op's roofline from the medians of its passes (bench_op_roofline)."""
        reads, rws = PASSES[op]
        seconds_per_byte = 0.0
        if reads:
            seconds_per_byte += reads / (self.bytes / statistics.median(read_ms) / 1e6)
        if rws:
            seconds_per_byte += 2 * rws / (2 * self.bytes / statistics.median(rw_ms) / 1e6)
        return (reads + 2 * rws) / seconds_per_byte

    def evict(self, ptr, nbytes):
        """Take [ptr, ptr + nbytes) out of the caches as gclip-bench takes its
        gradients out (bench_evict: clflush of every line on x86)."""
        self.lib.bench_evict(ctypes.c_void_p(ptr), ctypes.c_size_t(nbytes), self.threads)

    def close(self):
        self.lib.bench_roof_destroy(self.roof)
        self.roof = None


def evict(buffers):
    """Take the gradients' memory, (address, bytes) pairs, out of the caches
    as gclip-bench does its own, where the roofline library is loaded (CPU
    runs from gclip-bench); False elsewhere, where the caller streams its
    flush buffer through the caches instead."""
    if _roof is None:
        return False
    for ptr, nbytes in buffers:
        if nbytes:
            _roof.evict(ptr, nbytes)
            if not X86:  # bench_evict streams its own buffer there, whatever the range
                break
    return True


def run_check(times, op, kinds, sq, pairs, norm, args):
    """times.check from check_output (None: the output is the op's) and
    times.norm_error; a peer without NumPy cannot check, and its record says
    so (times.unchecked)."""
    times.norm_error = norm_error(op, sq, norm, args)
    if times.check is not None:  # run_protocol found the data not restored
        return
    try:
        times.check = check_output(op, kinds, sq, pairs, norm, args)
    except ImportError as e:
        times.unchecked = f"not checked: {e}"


class Times(list):
    """The timed runs' ms, the roofline measured between them (GB/s, None
    without), and the output check's finding (None: passed or not run)."""
    roofline_gbps = None
    check = None
    unchecked = None
    norm_error = None


_roof = None  # the Roof of the CPU device's runs (run_all), None elsewhere

# Seconds of idle before each roofline repetition. A peer's worker threads
# stay busy for a while after its step returns: JAX's roofline passes right
# after `clip-noop` on `one-huge` read 14-16 GB/s where the same passes
# measured 31 GB/s after its `norm`; with this pause, 29.9-30.8 (20 ms:
# 28.6). gclip's own passes share its OpenMP threads and need none.
ROOF_IDLE_S = 0.05


def check_output(op, kinds, sq, pairs, norm, args):
    """Whether a peer's result after its runs is what one run of `op` makes
    of the pristine data: None if so, else what differs.

    kinds: each tensor's "f32", "f16" or "bf16"; sq: each tensor's exact sum
    of squares (pristine data, float64); pairs: for each tensor, its
    (pristine, output) values as flat float64 chunks (chunks()), or None
    where the op leaves no data to look at (JAX's norm); norm: the total
    norm the peer returned, or None; args: "max_norm", "clip_value",
    "tensor_max_norm", "inv_scale", as the op uses, and "eps", what the peer
    adds to a norm before dividing by it (default EPS, PyTorch's; optax adds
    none).

    The check asks whether the step did the op, not whether it did it as
    exactly as gclip: a peer's norm may be off the exact one by NORM_BOUND,
    and each written tensor may be off the exact one by that much again plus
    one rounding of its elements (two for unscale-clip's two products),
    measured as the 2-norm of the difference: a peer's intermediate results can underflow to its
    dtype's subnormals (optax divides a float16 gradient by the norm before
    multiplying it by max_norm), which moves single small elements by
    several of their ulps and the tensor by nothing that matters. Data the
    op must leave alone (norm, clip-noop) must keep its bits. What fails: a
    skipped or repeated write, another factor, a norm of other data, a NaN,
    and of data not restored between runs, unscale-clip's and the data of
    ops that must leave it alone (run_protocol's unrestored() sees the
    others). How far the norm is off is reported
    apart (norm_error)."""
    import numpy as np  # here: an interpreter without NumPy still times its peer
    delta = NORM_BOUND
    want = op_norm(op, sq, args)
    inv = args.get("inv_scale", 1.0) if op == "unscale-clip" else 1.0
    if norm is not None and not abs(norm - want) <= delta * want:
        return f"norm {norm!r}, the exact one {want!r}"
    if pairs is None:
        return None
    eps = args.get("eps", EPS)
    if op in ("clip", "unscale-clip"):
        factor = inv * min(1.0, args["max_norm"] / (want + eps))
    writes = op not in ("norm", "clip-noop")
    seen = 0
    for i, (kind, tensor) in enumerate(zip(kinds, pairs)):
        seen += 1
        rounding = 2.0 ** (1 - SIGNIFICAND[kind])
        rel = {"value": rounding,  # the bound rounded to the dtype
               "unscale-clip": delta + 2 * rounding}.get(op, delta + rounding)
        if op == "tensor-norm":
            factor = min(1.0, args["tensor_max_norm"] / (math.sqrt(sq[i]) + eps))
        err2 = size2 = 0.0
        worst = (-1.0, 0, 0.0, 0.0)  # the largest difference: size, element, value, expected
        n = 0
        for x, y in tensor:
            if x.size != y.size:
                return f"tensor {i}: {y.size} elements from element {n}, expected {x.size}"
            if not writes:
                same = (x == y) & (np.signbit(x) == np.signbit(y))
                if not same.all():
                    j = int(np.flatnonzero(~same)[0])
                    return (f"tensor {i} element {n + j}: {float(y[j])!r}, expected its bits "
                            f"unchanged ({float(x[j])!r})")
            else:
                expected = np.clip(x, -args["clip_value"], args["clip_value"]) \
                    if op == "value" else x * factor
                d = np.abs(y - expected)
                err2 += float(np.dot(d, d))  # NaN stays NaN
                size2 += float(np.dot(expected, expected))
                j = int(np.argmax(d))  # the first NaN, if any
                if worst[0] == worst[0] and not d[j] <= worst[0]:  # a NaN stays the worst
                    worst = (float(d[j]), n + j, float(y[j]), float(expected[j]))
            n += x.size
        # and an ulp of each element where it is subnormal
        if writes and not math.sqrt(err2) <= rel * math.sqrt(size2) + math.sqrt(n) * SMALLEST[kind]:
            return (f"tensor {i}: off the expected values by "
                    f"{math.sqrt(err2) / max(math.sqrt(size2), 1e-300):.3g} of their norm, most at "
                    f"element {worst[1]}: {worst[2]!r}, expected {worst[3]!r}")
    if seen != len(kinds):
        return f"{seen} tensors in the output, expected {len(kinds)}"
    return None


def chunks(numel, pair_at):
    """One tensor's (pristine, output) values for check_output, as flat
    float64 chunks of CHECK_CHUNK elements: pair_at(begin, end) gives each."""
    for a in range(0, numel, CHECK_CHUNK):
        yield pair_at(a, min(numel, a + CHECK_CHUNK))


def op_norm(op, sq, args):
    """The exact norm the op measures: the pristine data's, unscaled for
    unscale-clip."""
    inv = args.get("inv_scale", 1.0) if op == "unscale-clip" else 1.0
    return math.sqrt(sum(sq)) * inv


def norm_error(op, sq, norm, args):
    """The peer's norm over the exact one, less 1 (None without a norm)."""
    return None if norm is None else norm / op_norm(op, sq, args) - 1.0


def run_protocol(prepare, writes, step, warmup, runs, op=None, unrestored=None):
    """Times of `runs` calls of step(), after `warmup` untimed ones; before
    each, prepare(writes) outside the timed region. step() returns ms. With
    a roofline library and op given, timed run k is paired with op's
    roofline passes, before it when k is even, after it when k is odd.
    unrestored(), for a peer that writes its input in place, is called after
    the last run's prepare(), outside the timed region: None when the data
    is bit for bit the pristine copy, else what differs (times.check). The
    output check cannot see a missed restore of clip or tensor-norm: a
    second run finds the norm already at max_norm and changes next to
    nothing."""
    times = Times()
    roof = _roof if op is not None else None
    read_ms, rw_ms = [], []
    for i in range(warmup + runs):
        k = i - warmup
        if roof and k >= 0 and k % 2 == 0:
            time.sleep(ROOF_IDLE_S)
            roof.passes(op, read_ms, rw_ms)
        prepare(writes)
        if unrestored is not None and i == warmup + runs - 1:
            times.check = unrestored()
        ms = step()
        if roof and k >= 0 and k % 2 == 1:
            time.sleep(ROOF_IDLE_S)
            roof.passes(op, read_ms, rw_ms)
        if k >= 0:
            times.append(ms)
    if roof:
        times.roofline_gbps = roof.gbps(op, read_ms, rw_ms)
    return times


def record(args, data_bytes, op, device, times, note, impl):
    reads, rws = PASSES[op]
    nbytes = data_bytes * (reads + 2 * rws)
    med = statistics.median(times)
    rec = {"workload": args.workload, "op": op, "impl": impl, "backend": device,
           "threads": args.threads if device == "cpu" else 0,
           "median_ms": med, "min_ms": min(times), "max_ms": max(times),
           "bytes": nbytes, "gbps": nbytes / med / 1e6,
           "roofline_gbps": getattr(times, "roofline_gbps", None),
           "check_failed": getattr(times, "check", None) is not None, "note": note}
    if rec["check_failed"]:
        rec["check"] = times.check
    if getattr(times, "unchecked", None):
        del rec["check_failed"]
        rec["unchecked"] = times.unchecked
    if getattr(times, "norm_error", None) is not None:
        rec["norm_error"] = times.norm_error  # the peer's norm over the exact one, less 1
    return rec


def run_all(args, devices, make_workload, bench_op, impl):
    """Every op of args.ops on every device; one JSON line per record on
    stdout (an "error" record when an op fails, the others still run)."""
    global _roof
    out = []
    for device in devices:
        _roof = Roof(args.roof_lib, args.threads) if args.roof_lib and device == "cpu" else None
        w = make_workload(device)
        for op in args.ops.split(","):
            try:
                times, note = bench_op(w, op)
            except Exception as e:  # report, keep the other ops
                print(json.dumps({"workload": args.workload, "op": op, "impl": impl,
                                  "backend": device, "error": f"{type(e).__name__}: {e}"}),
                      flush=True)
                continue
            rec = record(args, w.data_bytes, op, device, times, note, impl)
            if rec.get("check_failed"):
                print(f"warning: {impl} {args.workload} {op} ({device}): the output check "
                      f"failed: {rec['check']}", file=sys.stderr, flush=True)
            out.append(rec)
            print(json.dumps(rec), flush=True)
        del w
        if _roof:
            _roof.close()
            _roof = None
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
