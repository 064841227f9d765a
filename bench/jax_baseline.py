#!/usr/bin/env python3
"""JAX/optax baseline for gclip-bench.

Times optax's clipping transformations, jitted, on the same tensor shapes as
the C benchmark (read from the shapes file it writes), with the same data
distribution, the same per-op arguments and the same run protocol as
bench/torch_baseline.py. JAX arrays are immutable: every op but the norm is
jitted with its gradients donated, so XLA may write the result over them as
an in-place library does; each run gets fresh copies of the pristine
gradients, made outside the timed region. Prints one JSON record per
(op, backend) on stdout.

    python3 bench/jax_baseline.py --shapes FILE --workload gpt2-124m \
        --ops norm,clip --runs 10 --threads 2 [--json OUT]

The ops: norm: optax.tree.norm (optax.global_norm in older optax); clip,
clip-noop: optax.clip_by_global_norm; value: optax.clip; tensor-norm: each
leaf scaled by min(1, max_norm / (its norm + eps)) in jnp (optax has no
per-tensor clip by norm); unscale-clip: the leaves multiplied by 1/scale,
then optax.clip_by_global_norm, in one jitted function.
"""
import json
import os
import sys
import time
import warnings

from peer_common import EPS, LOSS_SCALE, ALIGN, DATA_SIGMA, WRITES
from peer_common import chunks, evict, flush_bytes, parse_args, read_shapes, run_all
from peer_common import run_check, run_protocol

ARGS = parse_args(__doc__, len(os.sched_getaffinity(0)))
_cpus = sorted(os.sched_getaffinity(0))
if ARGS.threads < len(_cpus):
    # XLA has no flag for its CPU thread count: it sizes its pools from the
    # CPUs the process may run on, so the process is bound to --threads of
    # them before jax is imported
    os.sched_setaffinity(0, _cpus[:ARGS.threads])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

warnings.filterwarnings("ignore", message=".*donated buffers.*")
# XLA's compile time grows faster than the number of leaves: a jitted op
# over 1,000 leaves compiles in about 20 s on the 2-core VM of
# docs/benchmark.md, one over 10,000 had not compiled after 10 minutes.
# Larger workloads are reported as not run.
MAX_JIT_LEAVES = 2000
DTYPES = {"f32": jnp.float32, "f16": jnp.float16, "bf16": jnp.bfloat16}
KINDS = {jnp.dtype(v): k for k, v in DTYPES.items()}


def tree_norm(tree):
    norm = getattr(getattr(optax, "tree", None), "norm", None)
    return norm(tree) if norm is not None else optax.global_norm(tree)


@jax.jit
def copy_all(tree):
    return jax.tree.map(jnp.copy, tree)


class Workload:
    """The pristine gradients as a list of jax arrays, the working list the
    ops run on, and the per-op arguments."""

    def __init__(self, shapes, device, seed=1234):
        rng = np.random.default_rng(seed)
        total = sum(int(np.prod(dims)) + ALIGN for _, dims in shapes)
        flat = rng.standard_normal(total, dtype=np.float32) * np.float32(DATA_SIGMA)
        self.pristine, off = [], 0
        for dtype, dims in shapes:
            n = int(np.prod(dims))
            self.pristine.append(jnp.asarray(flat[off:off + n].reshape(dims)).astype(dtype))
            off += n
        del flat
        jax.block_until_ready(self.pristine)
        self.data_bytes = sum(g.size * g.dtype.itemsize for g in self.pristine)
        self.kinds = [KINDS[g.dtype] for g in self.pristine]
        self.sq = [float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in self.pristine]
        self.norm = sum(self.sq) ** 0.5
        self.min_tensor_norm = min(s ** 0.5 for s in self.sq)
        self.rms = (sum(self.sq) / sum(g.size for g in self.pristine)) ** 0.5
        self.flush_buf = None
        self.flush = jax.jit(lambda b: b + 1.0, donate_argnums=0)
        self.grads = copy_all(self.pristine)
        self.out = None  # what the last run returned

    def prepare(self, fresh):
        """Fresh copies of the pristine gradients when the op consumes its
        input, then the caches evicted: by gclip-bench's own eviction of the
        gradients where its roofline library is loaded (CPU runs), else by
        writing a buffer four times their size (at least 128 MiB) through
        the caches."""
        self.out = None  # only the last run's output is kept (for the check)
        if fresh:
            self.grads = copy_all(self.pristine)
        jax.block_until_ready(self.grads)
        if not evict((g.unsafe_buffer_pointer(), g.nbytes) for g in self.grads):
            if self.flush_buf is None:
                self.flush_buf = jnp.ones(flush_bytes(self.data_bytes) // 4, jnp.float32)
            self.flush_buf = self.flush(self.flush_buf)
            jax.block_until_ready(self.flush_buf)

    def pairs(self):
        """(pristine, output) values of each leaf for check_output."""
        def f64(t, a, b):
            return np.asarray(t).reshape(-1)[a:b].astype(np.float64)
        if len(self.out) != len(self.pristine):
            return  # check_output counts the tensors
        for x, y in zip(self.pristine, self.out):
            if x.size != y.size:  # check_output names the tensor (views of one zero)
                yield [(np.broadcast_to(0.0, (x.size,)), np.broadcast_to(0.0, (y.size,)))]
                continue
            yield chunks(x.size, lambda a, b, x=x, y=y: (f64(x, a, b), f64(y, a, b)))


def make_op(w, op):
    """A jitted function of the gradients for `op`, whether it donates them,
    a note naming the calls, and the op's arguments for check_output."""
    state = optax.EmptyState()
    if op == "norm":
        return jax.jit(tree_norm), False, "optax.tree.norm", {}
    if op in ("clip", "clip-noop"):
        max_norm = (0.5 if op == "clip" else 2.0) * w.norm
        tx = optax.clip_by_global_norm(max_norm)
        fn, note, op_args = (lambda g: tx.update(g, state)[0]), "optax.clip_by_global_norm", \
            {"max_norm": max_norm, "eps": 0.0}  # optax divides by the norm itself
    elif op == "value":
        tx = optax.clip(w.rms)
        fn, note, op_args = (lambda g: tx.update(g, state)[0]), "optax.clip", \
            {"clip_value": w.rms}
    elif op == "tensor-norm":
        max_norm = 0.5 * w.min_tensor_norm
        op_args = {"tensor_max_norm": max_norm}

        def fn(g):
            def leaf(t):
                coef = jnp.minimum(1.0, max_norm / (jnp.linalg.norm(t.ravel()) + EPS))
                return t * coef.astype(t.dtype)
            return jax.tree.map(leaf, g)
        note = "per-leaf jnp.linalg.norm + multiply"
    elif op == "unscale-clip":
        tx = optax.clip_by_global_norm(0.5 * w.norm / LOSS_SCALE)
        inv = 1.0 / LOSS_SCALE

        def fn(g):
            unscaled = jax.tree.map(lambda t: t * jnp.asarray(inv, t.dtype), g)
            return tx.update(unscaled, state)[0]
        note = "multiply by 1/scale + optax.clip_by_global_norm"
        op_args = {"max_norm": 0.5 * w.norm / LOSS_SCALE, "inv_scale": inv, "eps": 0.0}
    else:
        raise ValueError(op)
    return jax.jit(fn, donate_argnums=0), True, note, op_args


def main():
    args = ARGS
    shapes = read_shapes(args.shapes, DTYPES)
    devices = [d for d in args.devices.split(",") if d == "cpu"]
    if len(devices) < len(args.devices.split(",")):
        print("jax: only the cpu device is timed", file=sys.stderr)
    if len(shapes) > MAX_JIT_LEAVES:
        for op in args.ops.split(","):
            print(json.dumps({"workload": args.workload, "op": op, "impl": "jax", "backend": "cpu",
                              "error": f"not run: a jit over {len(shapes)} leaves compiles for "
                                       "more than 10 minutes"}), flush=True)
        return

    def bench_op(w, op):
        fn, donates, note, op_args = make_op(w, op)

        def step():
            t0 = time.perf_counter()
            out = fn(w.grads)
            jax.block_until_ready(out)
            ms = (time.perf_counter() - t0) * 1e3
            if donates:
                w.grads = None  # consumed
            w.out = out
            return ms
        times = run_protocol(w.prepare, donates, step, args.warmup, args.runs, op)
        if donates:  # the leaves the last run returned
            run_check(times, op, w.kinds, w.sq, w.pairs(), None, op_args)
        else:  # the norm
            run_check(times, op, w.kinds, w.sq, None, float(w.out), op_args)
        w.out = None
        return times, note

    run_all(args, devices, lambda d: Workload(shapes, d), bench_op, "jax")


if __name__ == "__main__":
    main()
