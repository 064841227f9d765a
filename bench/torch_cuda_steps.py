#!/usr/bin/env python3
"""PyTorch's foreach clipping on a CUDA device, timed as gclip-bench
--cuda-steps times gclip: many steps issued back to back on one stream with no
host synchronization between them, CUDA events around the whole, the median
of --runs timed runs of about 20 ms each after a warm-up (a step of more
than 50 ms: the median of three steps timed alone); eager, and as replays of
a captured CUDA graph of one step.

    python3 bench/torch_cuda_steps.py [--workload gpt2-124m,many-small,tiny-100k]
                                      [--runs 7] [--csv OUT.csv]

Workloads: the f32 shapes of gclip-bench's workloads of the same names
(bench/shapes.c): gpt2-124m (148 tensors), many-small (10,000 x 1,000) and
tiny-100k (100,000 x 100), each tensor a view into one flat buffer, data
N(0, 1e-3) from a seeded generator.

Ops, each through torch.nn.utils with foreach=True:
  norm       get_total_norm (or, before PyTorch 2.6, _foreach_norm + norm)
  clip       clip_grad_norm_ with max_norm half the norm: the first step scales
             by about 0.5, the next ones by a clamped 1.0; PyTorch multiplies
             every step either way
  clip-noop  clip_grad_norm_ with max_norm twice the norm: factor 1, and
             PyTorch still reads and multiplies every gradient
d2d-copy is a device-to-device copy of the flat buffer (GB/s counting the read
and the write), the device's own limit in the same process. The bytes an op
must move are those gclip-bench counts: the norm and clip-noop read once, a
clip reads, then reads and writes. launches is the number of kernels one eager
step runs, counted by torch.profiler (-1 where the profiler cannot say).
"""
import argparse
import statistics
import sys
import time

import torch

SIGMA = 1e-3
TARGET_MS = 20.0
SLOW_MS = 50.0


def gpt2_shapes():
    d = 768
    s = [(50257, d), (1024, d)]
    for _ in range(12):
        s += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,),
              (4 * d, d), (d,)]
    return s + [(d,), (d,)]


WORKLOADS = {
    "gpt2-124m": gpt2_shapes,
    "many-small": lambda: [(1000,)] * 10000,
    "tiny-100k": lambda: [(100,)] * 100000,
}


def say(line, file=sys.stdout):
    """Print and flush at once, so that a run stopped part way keeps what it printed."""
    print(line, file=file, flush=True)


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


class Workload:
    def __init__(self, name, device):
        shapes = WORKLOADS[name]()
        total = sum(numel(s) for s in shapes)
        gen = torch.Generator(device=device).manual_seed(1234)
        self.flat = torch.randn(total, generator=gen, device=device) * SIGMA
        self.pristine = self.flat.clone()
        self.copy_dst = torch.empty_like(self.flat)
        self.params = []
        off = 0
        for s in shapes:
            p = torch.nn.Parameter(torch.empty(s, device=device))
            p.grad = self.flat[off:off + numel(s)].view(s)
            self.params.append(p)
            off += numel(s)
        self.grads = [p.grad for p in self.params]
        self.tensors = len(shapes)
        self.bytes = total * 4
        self.norm = float(torch.linalg.vector_norm(self.flat.double()))

    def restore(self):
        self.flat.copy_(self.pristine)


def total_norm_fn(w):
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:
        return lambda: get_total_norm(w.grads, 2.0, foreach=True)

    def norm():
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(w.grads)))
    return norm


def op_fn(w, op):
    clip = torch.nn.utils.clip_grad_norm_
    if op == "norm":
        return total_norm_fn(w), 1
    if op == "clip":
        return lambda: clip(w.params, 0.5 * w.norm, foreach=True), 3
    if op == "clip-noop":
        return lambda: clip(w.params, 2.0 * w.norm, foreach=True), 1
    if op == "d2d-copy":
        return lambda: w.copy_dst.copy_(w.flat), 2
    raise ValueError(op)


def time_steps(step, steps):
    """ms for `steps` calls of step() issued back to back, by CUDA events."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop)


def steady(step, runs):
    """(us per step, steps per run): a warm-up sizes the runs to ~TARGET_MS.
    A step slower than SLOW_MS (PyTorch's eager calls on 100,000 tensors
    take most of a second of host time) is timed alone, three times."""
    step()
    torch.cuda.synchronize()
    probe = time_steps(step, 1)
    if probe > SLOW_MS:
        times = [time_steps(step, 1) for _ in range(3)]
        return 1e3 * statistics.median(times), 1
    for _ in range(2):
        step()
    probe = time_steps(step, 10) / 10
    steps = max(10, min(20000, int(TARGET_MS / max(probe, 1e-4))))
    times = [time_steps(step, steps) / steps for _ in range(runs)]
    return 1e3 * statistics.median(times), steps


def graph_of(fn):
    """A CUDA graph of one call of fn, captured after a warm-up on a side
    stream (PyTorch's recipe)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def kernels_per_step(fn):
    """Kernels one call of fn runs on the device, by torch.profiler; -1 when
    the profiler records no device activity."""
    try:
        from torch.profiler import ProfilerActivity, profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        names = [e.name for e in prof.events()
                 if str(getattr(e, "device_type", "")).endswith("CUDA")]
    except Exception as e:  # noqa: BLE001 - any profiler failure: say so in the row
        say(f"torch_cuda_steps: profiler: {e}", sys.stderr)
        return -1
    kernels = [n for n in names if not n.startswith(("Memcpy", "Memset", "cuda"))]
    return len(kernels) if kernels else -1


CSV_HEADER = ("device,workload,tensors,data_bytes,op,mode,launches_per_step,steps_per_run,"
              "us_per_step,bytes_per_step,gbps,copy_gbps,fraction_of_copy\n")


def emit(r, csv):
    """One result: its line on stdout and, with --csv, its row in the file,
    both flushed before the next measurement starts."""
    say(f"{r[1]:<10} {r[4]:<10} {r[5]:<6} {r[6]:>8} {r[7]:>10} {r[8]:>10.3f} "
        f"{r[10]:>8.1f} {100 * r[10] / r[11]:>7.1f}%")
    if csv is not None:
        csv.write(f"\"{r[0]}\",{r[1]},{r[2]},{r[3]},{r[4]},{r[5]},{r[6]},{r[7]},"
                  f"{r[8]:.3f},{r[9]},{r[10]:.2f},{r[11]:.2f},{r[10] / r[11]:.4f}\n")
        csv.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="gpt2-124m,many-small,tiny-100k")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--csv", help="also write the rows to this file, each as it is measured")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        say(f"torch_cuda_steps: no CUDA device visible to torch {torch.__version__}", sys.stderr)
        return 1
    device = torch.cuda.get_device_name(0)
    csv = None
    if args.csv:
        csv = open(args.csv, "w")
        csv.write(CSV_HEADER)
        csv.flush()
    say(f"torch {torch.__version__} foreach clipping, {device}, median of {args.runs} runs")
    say(f"{'workload':<10} {'op':<10} {'mode':<6} {'launches':>8} {'steps/run':>10} "
        f"{'us/step':>10} {'GB/s':>8} {'of copy':>8}")
    failed = 0
    try:
        for name in args.workload.split(","):
            t0 = time.perf_counter()
            w = Workload(name, "cuda")
            copy_us, copy_steps = steady(op_fn(w, "d2d-copy")[0], args.runs)
            copy_gbps = 2 * w.bytes / copy_us / 1e3
            emit((device, name, w.tensors, w.bytes, "d2d-copy", "eager", 0, copy_steps,
                  copy_us, 2 * w.bytes, copy_gbps, copy_gbps), csv)
            for op in ("norm", "clip", "clip-noop"):
                fn, passes = op_fn(w, op)
                w.restore()
                got = float(fn())
                if abs(got - w.norm) > 1e-4 * w.norm:
                    say(f"torch_cuda_steps: {name} {op}: norm {got!r}, expected {w.norm!r}",
                        sys.stderr)
                    failed += 1
                w.restore()
                kernels = kernels_per_step(fn)
                w.restore()
                g = graph_of(fn)
                for mode, step in (("eager", fn), ("graph", g.replay)):
                    w.restore()
                    us, steps = steady(step, args.runs)
                    moved = passes * w.bytes
                    gbps = moved / us / 1e3
                    emit((device, name, w.tensors, w.bytes, op, mode, kernels, steps, us,
                          moved, gbps, copy_gbps), csv)
                del g
            say(f"  ({name}: {w.tensors} tensors, {w.bytes / 1e6:.1f} MB, "
                f"{time.perf_counter() - t0:.1f} s)")
            del w
            torch.cuda.empty_cache()
    finally:
        if csv is not None:
            csv.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
