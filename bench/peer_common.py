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
import statistics
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
        self.lib = lib
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

    def close(self):
        self.lib.bench_roof_destroy(self.roof)
        self.roof = None


class Times(list):
    """The timed runs' ms, and the roofline measured between them (GB/s,
    None without)."""
    roofline_gbps = None


_roof = None  # the Roof of the CPU device's runs (run_all), None elsewhere

# Seconds of idle before each roofline repetition. A peer's worker threads
# stay busy for a while after its step returns: JAX's roofline passes right
# after `clip-noop` on `one-huge` read 14-16 GB/s where the same passes
# measured 31 GB/s after its `norm`; with this pause, 29.9-30.8 (20 ms:
# 28.6). gclip's own passes share its OpenMP threads and need none.
ROOF_IDLE_S = 0.05


def run_protocol(prepare, writes, step, warmup, runs, op=None):
    """Times of `runs` calls of step(), after `warmup` untimed ones; before
    each, prepare(writes) outside the timed region. step() returns ms. With
    a roofline library and op given, timed run k is paired with op's
    roofline passes, before it when k is even, after it when k is odd."""
    times = Times()
    roof = _roof if op is not None else None
    read_ms, rw_ms = [], []
    for i in range(warmup + runs):
        k = i - warmup
        if roof and k >= 0 and k % 2 == 0:
            time.sleep(ROOF_IDLE_S)
            roof.passes(op, read_ms, rw_ms)
        prepare(writes)
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
    return {"workload": args.workload, "op": op, "impl": impl, "backend": device,
            "threads": args.threads if device == "cpu" else 0,
            "median_ms": med, "min_ms": min(times), "max_ms": max(times),
            "bytes": nbytes, "gbps": nbytes / med / 1e6,
            "roofline_gbps": getattr(times, "roofline_gbps", None), "note": note}


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
            out.append(rec)
            print(json.dumps(rec), flush=True)
        del w
        if _roof:
            _roof.close()
            _roof = None
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
