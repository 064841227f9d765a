#!/usr/bin/env python3
"""PyTorch baseline for gclip-bench.

Times torch.nn.utils.clip_grad_norm_ / clip_grad_value_ on the same tensor
shapes as the C benchmark (read from the shapes file it writes), with the
same data distribution, the same per-op arguments and the same run protocol:
warm-up runs, then N timed runs; before every run the data of writing ops is
restored from a pristine copy and the caches are evicted, outside the timed
region. Prints one JSON record per (op, backend) on stdout, with the fields
of gclip-bench's --json output.

    python3 bench/torch_baseline.py --shapes FILE --workload gpt2-124m \
        --ops norm,clip --runs 10 --threads 2 [--devices cpu,cuda] [--json OUT]

Shapes file: one tensor per line, "<f32|bf16> <dim> [<dim>...]".
"""
import argparse
import json
import statistics
import sys
import time

import torch

DATA_SIGMA = 1e-3    # gradient-like magnitude, as the C benchmark
LOSS_SCALE = 1024.0  # unscale-clip: the data carries this loss scale
EPS = 1e-6
ALIGN = 16           # elements: tensors start 64-byte aligned, as in the C arena
# Eviction between runs streams (read + write) a buffer through the caches:
# four times the data for small workloads, so no replacement policy can keep
# them cached; large ones do not fit anyway.
FLUSH_MIN_BYTES = 128 << 20
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
WRITES = {"clip", "value", "tensor-norm", "unscale-clip"}
# passes over the data: (reads for the norm, read-write passes)
PASSES = {"norm": (1, 0), "clip-noop": (1, 0), "clip": (1, 1), "value": (0, 1),
          "tensor-norm": (1, 1), "unscale-clip": (1, 1)}


def read_shapes(path):
    shapes = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts:
                shapes.append((DTYPES[parts[0]], tuple(int(d) for d in parts[1:])))
    return shapes


class Workload:
    """Gradients as views into one flat buffer per dtype, with their
    parameters, a pristine copy and the per-op arguments."""

    def __init__(self, shapes, device, seed=1234):
        gen = torch.Generator().manual_seed(seed)
        sizes = {}
        layout = []
        for dtype, dims in shapes:
            numel = 1
            for d in dims:
                numel *= d
            off = sizes.get(dtype, 0)
            layout.append((dtype, dims, off, numel))
            sizes[dtype] = off + (numel + ALIGN - 1) // ALIGN * ALIGN
        self.flat = {}
        self.pristine = {}
        for dtype, n in sizes.items():
            data = torch.randn(n, generator=gen) * DATA_SIGMA
            self.pristine[dtype] = data.to(device=device, dtype=dtype)
            self.flat[dtype] = self.pristine[dtype].clone()
        self.params = []
        for dtype, dims, off, numel in layout:
            # torch.empty leaves the parameter's pages untouched: no memory traffic
            p = torch.nn.Parameter(torch.empty(dims, dtype=dtype, device=device))
            p.grad = self.flat[dtype][off:off + numel].view(dims)
            self.params.append(p)
        self.grads = [p.grad for p in self.params]
        self.data_bytes = sum(g.numel() * g.element_size() for g in self.grads)
        sq = [torch.linalg.vector_norm(g, dtype=torch.float64).item() ** 2 for g in self.grads]
        self.norm = sum(sq) ** 0.5
        self.min_tensor_norm = min(s ** 0.5 for s in sq)
        self.rms = (sum(sq) / sum(g.numel() for g in self.grads)) ** 0.5
        flush_bytes = max(FLUSH_MIN_BYTES, 4 * self.data_bytes if self.data_bytes < 256 << 20 else 0)
        self.flush_buf = torch.ones(flush_bytes // 4, device=device)
        self.dirty = False

    def prepare(self, writes):
        """Start from the pristine data (also after a writing op) with the
        gradients evicted from the caches."""
        if writes or self.dirty:
            for dtype, buf in self.flat.items():
                buf.copy_(self.pristine[dtype])
        self.dirty = writes
        self.flush_buf.add_(1.0)  # touches every line: evicts the gradients


def total_norm(grads):
    """The norm exactly as this torch version's clip_grad_norm_ computes it."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:
        return get_total_norm(grads, 2.0)
    return torch.norm(torch.stack([torch.norm(g, 2.0) for g in grads]), 2.0)


def unscaler(w):
    """GradScaler.unscale_'s kernel where this torch has it for the gradients'
    device and dtypes, else a plain foreach multiply; and its name."""
    device = w.grads[0].device
    found_inf = torch.zeros(1, device=device)
    try:
        probe = [torch.ones(4, dtype=d, device=device) for d in w.flat]
        torch._amp_foreach_non_finite_check_and_unscale_(probe, found_inf,
                                                         torch.ones(1, device=device))
    except (RuntimeError, AttributeError, NotImplementedError):
        return (lambda: torch._foreach_mul_(w.grads, 1.0 / LOSS_SCALE)), "_foreach_mul_"
    inv = torch.full((1,), 1.0 / LOSS_SCALE, device=device)
    return (lambda: torch._amp_foreach_non_finite_check_and_unscale_(
        w.grads, found_inf, inv)), "unscale_ kernel"


def per_tensor_clip(w, max_norm):
    """Each tensor clipped to its own norm: torch has no single call for it;
    the fastest form this torch offers is foreach norms and a foreach multiply
    by a list of coefficients, else clip_grad_norm_ on each tensor."""
    def foreach():
        norms = torch._foreach_norm(w.grads)
        coefs = torch.clamp(max_norm / (torch.stack(norms) + EPS), max=1.0)
        torch._foreach_mul_(w.grads, list(coefs.unbind()))
    try:
        foreach()  # probe; the run protocol restores the data afterwards
        return foreach, "_foreach_norm + _foreach_mul_"
    except (RuntimeError, AttributeError, TypeError):
        clip = torch.nn.utils.clip_grad_norm_
        return (lambda: [clip([p], max_norm) for p in w.params]), "clip_grad_norm_ per tensor"


def make_op(w, op):
    """A callable running one step of `op`, and a note naming the torch call."""
    clip = torch.nn.utils.clip_grad_norm_
    if op == "norm":
        return lambda: total_norm(w.grads), "total norm as clip_grad_norm_"
    if op == "clip":
        return lambda: clip(w.params, 0.5 * w.norm), "clip_grad_norm_"
    if op == "clip-noop":
        return lambda: clip(w.params, 2.0 * w.norm), "clip_grad_norm_"
    if op == "value":
        return lambda: torch.nn.utils.clip_grad_value_(w.params, w.rms), "clip_grad_value_"
    if op == "tensor-norm":
        return per_tensor_clip(w, 0.5 * w.min_tensor_norm)
    if op == "unscale-clip":
        unscale, name = unscaler(w)
        max_norm = 0.5 * w.norm / LOSS_SCALE
        return (lambda: (unscale(), clip(w.params, max_norm))), name + " + clip_grad_norm_"
    raise ValueError(op)


def timed(fn, device):
    if device == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench(w, op, device, warmup, runs):
    fn, note = make_op(w, op)
    times = []
    for i in range(warmup + runs):
        w.prepare(op in WRITES)
        if device == "cuda":
            torch.cuda.synchronize()
        ms = timed(fn, device)
        if i >= warmup:
            times.append(ms)
    return times, note


def record(args, w, op, device, times, note):
    reads, rws = PASSES[op]
    nbytes = w.data_bytes * (reads + 2 * rws)
    med = statistics.median(times)
    return {"workload": args.workload, "op": op, "impl": "torch", "backend": device,
            "threads": args.threads if device == "cpu" else 0,
            "median_ms": med, "min_ms": min(times), "max_ms": max(times),
            "bytes": nbytes, "gbps": nbytes / med / 1e6, "roofline_gbps": None,
            "torch_version": torch.__version__, "note": note}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--ops", default="norm,clip,clip-noop,value,tensor-norm,unscale-clip")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--devices", default="cpu")
    ap.add_argument("--json", help="also write the records to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = read_shapes(args.shapes)
    out = []
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            print(f"torch: no CUDA device visible to torch {torch.__version__}: cuda skipped",
                  file=sys.stderr)
            continue
        w = Workload(shapes, device)
        for op in args.ops.split(","):
            try:
                times, note = bench(w, op, device, args.warmup, args.runs)
            except Exception as e:  # report, keep the other ops
                print(json.dumps({"workload": args.workload, "op": op, "impl": "torch",
                                  "backend": device, "error": f"{type(e).__name__}: {e}"}),
                      flush=True)
                continue
            rec = record(args, w, op, device, times, note)
            out.append(rec)
            print(json.dumps(rec), flush=True)
        del w
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
