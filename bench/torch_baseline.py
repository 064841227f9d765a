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

Shapes file: one tensor per line, "<f32|f16|bf16> <dim> [<dim>...]".
"""
import sys
import time

import torch

from peer_common import EPS, LOSS_SCALE, ALIGN, DATA_SIGMA, WRITES
from peer_common import chunks, evict, flush_bytes, parse_args, read_shapes, run_all
from peer_common import run_check, run_protocol

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
KINDS = {v: k for k, v in DTYPES.items()}


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
        self.pristine_views = []
        for dtype, dims, off, numel in layout:
            # torch.empty leaves the parameter's pages untouched: no memory traffic
            p = torch.nn.Parameter(torch.empty(dims, dtype=dtype, device=device))
            p.grad = self.flat[dtype][off:off + numel].view(dims)
            self.params.append(p)
            self.pristine_views.append(self.pristine[dtype][off:off + numel].view(dims))
        self.grads = [p.grad for p in self.params]
        self.kinds = [KINDS[g.dtype] for g in self.grads]
        self.data_bytes = sum(g.numel() * g.element_size() for g in self.grads)
        self.sq = [torch.linalg.vector_norm(g, dtype=torch.float64).item() ** 2
                   for g in self.grads]
        self.norm = sum(self.sq) ** 0.5
        self.min_tensor_norm = min(s ** 0.5 for s in self.sq)
        self.rms = (sum(self.sq) / sum(g.numel() for g in self.grads)) ** 0.5
        self.flush_buf = None
        self.dirty = False

    def prepare(self, writes):
        """Start from the pristine data (also after a writing op) with the
        gradients evicted from the caches: by gclip-bench's own eviction
        where its roofline library is loaded (CPU runs), else by writing a
        buffer four times their size (at least 128 MiB) through the caches."""
        if writes or self.dirty:
            for dtype, buf in self.flat.items():
                buf.copy_(self.pristine[dtype])
        self.dirty = writes
        if not evict((b.data_ptr(), b.numel() * b.element_size()) for b in self.flat.values()):
            if self.flush_buf is None:
                self.flush_buf = torch.ones(flush_bytes(self.data_bytes) // 4,
                                            device=self.grads[0].device)
            self.flush_buf.add_(1.0)  # touches every line: evicts the gradients

    def unrestored(self):
        """None when every gradient buffer holds the pristine bits, else
        which does not (run_protocol calls it before the last run)."""
        for dtype, buf in self.flat.items():
            if not torch.equal(buf.view(torch.uint8), self.pristine[dtype].view(torch.uint8)):
                return f"the {dtype} gradients were not restored before the last run"
        return None

    def pairs(self):
        """(pristine, current) values of each gradient for check_output."""
        def f64(t, a, b):
            return t.reshape(-1)[a:b].to("cpu", torch.float64).numpy()
        for x, g in zip(self.pristine_views, self.grads):
            yield chunks(g.numel(), lambda a, b, x=x, g=g: (f64(x, a, b), f64(g, a, b)))


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
    """A callable running one step of `op` (returning the total norm where
    the torch call returns one), a note naming the torch call, and the op's
    arguments for check_output."""
    clip = torch.nn.utils.clip_grad_norm_
    if op == "norm":
        return lambda: total_norm(w.grads), "total norm as clip_grad_norm_", {}
    if op in ("clip", "clip-noop"):
        max_norm = (0.5 if op == "clip" else 2.0) * w.norm
        return lambda: clip(w.params, max_norm), "clip_grad_norm_", {"max_norm": max_norm}
    if op == "value":
        return (lambda: torch.nn.utils.clip_grad_value_(w.params, w.rms)), "clip_grad_value_", \
            {"clip_value": w.rms}
    if op == "tensor-norm":
        max_norm = 0.5 * w.min_tensor_norm
        fn, note = per_tensor_clip(w, max_norm)
        return (lambda: (fn(), None)[1]), note, {"tensor_max_norm": max_norm}
    if op == "unscale-clip":
        unscale, name = unscaler(w)
        max_norm = 0.5 * w.norm / LOSS_SCALE
        return (lambda: (unscale(), clip(w.params, max_norm))[1]), \
            name + " + clip_grad_norm_", {"max_norm": max_norm, "inv_scale": 1.0 / LOSS_SCALE}
    raise ValueError(op)


def timed(fn, device, last):
    """ms of one call of fn; its return value kept in last["out"]."""
    if device == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        last["out"] = fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop)
    t0 = time.perf_counter()
    last["out"] = fn()
    return (time.perf_counter() - t0) * 1e3


def main():
    args = parse_args(__doc__, torch.get_num_threads())
    torch.set_num_threads(args.threads)
    shapes = read_shapes(args.shapes, DTYPES)
    devices = []
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            print(f"torch: no CUDA device visible to torch {torch.__version__}: cuda skipped",
                  file=sys.stderr)
            continue
        devices.append(device)

    def bench_op(w, op):
        fn, note, op_args = make_op(w, op)
        device = w.grads[0].device.type
        last = {}

        def step():
            if device == "cuda":
                torch.cuda.synchronize()
            return timed(fn, device, last)
        times = run_protocol(w.prepare, op in WRITES, step, args.warmup, args.runs, op,
                             w.unrestored)
        # the data and the norm the last run left
        norm = None if last["out"] is None else float(last["out"])
        run_check(times, op, w.kinds, w.sq, w.pairs(), norm, op_args)
        return times, note

    run_all(args, devices, lambda d: Workload(shapes, d), bench_op, "torch")


if __name__ == "__main__":
    main()
