"""What bench/torch_baseline.py and bench/jax_baseline.py share: the shapes
file, the ops' passes, the command line, the output records and the run
protocol (warm-up runs, then N timed runs, each after a prepare step that
restores the data of writing ops and evicts the caches, outside the timed
region)."""
import argparse
import json
import statistics

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
    return ap.parse_args()


def run_protocol(prepare, writes, step, warmup, runs):
    """Times of `runs` calls of step(), after `warmup` untimed ones; before
    each, prepare(writes) outside the timed region. step() returns ms."""
    times = []
    for i in range(warmup + runs):
        prepare(writes)
        ms = step()
        if i >= warmup:
            times.append(ms)
    return times


def record(args, data_bytes, op, device, times, note, impl):
    reads, rws = PASSES[op]
    nbytes = data_bytes * (reads + 2 * rws)
    med = statistics.median(times)
    return {"workload": args.workload, "op": op, "impl": impl, "backend": device,
            "threads": args.threads if device == "cpu" else 0,
            "median_ms": med, "min_ms": min(times), "max_ms": max(times),
            "bytes": nbytes, "gbps": nbytes / med / 1e6, "roofline_gbps": None, "note": note}


def run_all(args, devices, make_workload, bench_op, impl):
    """Every op of args.ops on every device; one JSON line per record on
    stdout (an "error" record when an op fails, the others still run)."""
    out = []
    for device in devices:
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
