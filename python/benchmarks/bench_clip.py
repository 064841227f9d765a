"""Performance of gclip.torch against torch.nn.utils, in one run.

    python python/benchmarks/bench_clip.py [--device cpu|cuda] [--repeat N] [--json out.json]
                                           [--markdown] [--alternate block|call]

Workloads (the targets of the Python package):
  host-148      GPT-2 small's tensor count with 1-element tensors: host time per
                clip_grad_norm_ call (target <= 50 us)
  host-10000    10,000 1-element tensors (target <= 1.5 ms)
  host-10000-value, host-10000-with-norm, host-10000-total-norm
                the same gradients through clip_grad_value_ (bound 1e30),
                clip_grads_with_norm_ (max_norm 1e30, total_norm 1: a factor
                of 1) and get_total_norm (target <= 1.5 ms each)
  many-10000    10,000 tensors of 1,000 float32 elements on the CPU, clipped
                (max_norm 1, restored before every call):
                gclip.torch.clip_grad_norm_ >= 5x torch's
  many-10000-noop  the same with nothing clipped (max_norm above the norm):
                gclip writes nothing, torch still multiplies by 1 (no target)
  gpt2-clip     GPT-2 small's 148 gradient shapes, clipping (>= 1x torch)
  gpt2-noop     the same, max_norm above the norm (>= 2x torch)
  gpt2-bf16-noop, gpt2-bf16-with-norm-noop  (CPU)
                the same shapes in bfloat16, nothing clipped, through
                clip_grad_norm_ and through clip_grads_with_norm_ with
                PyTorch's bfloat16 norm (no target)

Each number is the median of `repeat` timings of one call (host-148 takes at
least 200). gclip and torch take turns so that both see the same machine: by
blocks of calls (default; each block starts with an untimed call) or, with
--alternate call, call by call. In many-10000 and gpt2-clip, which write
the gradients, they are restored before every call, outside the timing. On CUDA the device
is synchronized around each timed call; the host rows use 1-element tensors,
so what they measure is the host's work per call. The run ends with what it
ran on (torch threads, OMP_NUM_THREADS, load average): on a machine shared
with other busy processes the multi-threaded rows can be many times slower
than on one thread, for both libraries; OMP_NUM_THREADS=1 in the environment
runs torch and gclip on one thread each. --markdown also prints the table as
Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import gclip.torch as gt


def gpt2_shapes():
    d, v, ctx, layers = 768, 50257, 1024, 12
    shapes = [(v, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,),
                   (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return shapes  # 148 tensors, 124.4 M elements


def make_params(shapes, device, scale, dtype=torch.float32):
    g = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.empty(s, device=device, dtype=dtype))
        p.grad = (torch.randn(s, generator=g) * scale).to(device=device, dtype=dtype)
        params.append(p)
    return params


def timeit(fns, repeat, sync, setup=None, alternate="block", rounds=5):
    """Median time of one call of each function. The functions take turns, so
    a change in the machine's load during the run reaches all of them alike:
    alternate="block" runs `rounds` rounds of one untimed and repeat/rounds
    timed calls of each (back-to-back calls, caches warm with the function's
    own data); alternate="call" switches after every call, after two untimed
    calls of each (every call starts with what the other one left in the
    caches)."""
    times = [[] for _ in fns]
    if alternate == "call":
        schedule = [(k, r >= 2) for r in range(repeat + 2) for k in range(len(fns))]
    else:
        per = -(-repeat // rounds)
        schedule = [(k, i > 0) for _ in range(rounds) for k in range(len(fns))
                    for i in range(per + 1)]
    for k, timed in schedule:
        if setup:
            setup()
        sync()
        t0 = time.perf_counter()
        fns[k]()
        sync()
        if timed:
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--alternate", choices=("block", "call"), default="block",
                    help="gclip and torch take turns by blocks of calls (default) or call by call")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    rows = []

    def compare(name, params, max_norm, target_ratio=None, target_us=None, repeat=args.repeat,
                restore=False, calls=None):
        setup = None
        if restore:  # put the original gradients back before each call
            saved = [p.grad.clone() for p in params]

            def setup():
                with torch.no_grad():
                    for p, g in zip(params, saved):
                        p.grad.copy_(g)
        if calls is None:  # (gclip's call, torch's)
            calls = (lambda: gt.clip_grad_norm_(params, max_norm),
                     lambda: torch.nn.utils.clip_grad_norm_(params, max_norm))
        t_g, t_t = timeit(list(calls), repeat, sync, setup, args.alternate)
        row = {"workload": name, "tensors": len(params), "gclip_us": t_g * 1e6,
               "torch_us": t_t * 1e6, "speedup": t_t / t_g}
        if target_ratio is not None:
            row["target"] = f">= {target_ratio}x torch"
            row["met"] = row["speedup"] >= target_ratio
        if target_us is not None:
            row["target"] = f"<= {target_us} us"
            row["met"] = row["gclip_us"] <= target_us
        rows.append(row)
        print(f"{name:24s} {len(params):6d} tensors  gclip {row['gclip_us']:10.1f} us  "
              f"torch {row['torch_us']:10.1f} us  {row['speedup']:6.2f}x  "
              f"{row.get('target', '')} {'met' if row.get('met') else 'NOT met' if 'met' in row else ''}",
              flush=True)

    # host overhead: 1-element tensors, huge max_norm so nothing is written
    compare("host-148", make_params([(1,)] * 148, dev, 1.0), 1e30, target_us=50,
            repeat=max(args.repeat, 200))
    host = make_params([(1,)] * 10000, dev, 1.0)
    compare("host-10000", host, 1e30, target_us=1500)
    # the other drop-ins, on the same gradients, writing nothing (clip_grad_value_
    # clamps to a bound above every value, clip_grads_with_norm_ scales by 1)
    one = torch.tensor(1.0, device=dev)
    host_grads = [p.grad for p in host]
    compare("host-10000-value", host, None, target_us=1500,
            calls=(lambda: gt.clip_grad_value_(host, 1e30),
                   lambda: torch.nn.utils.clip_grad_value_(host, 1e30)))
    compare("host-10000-with-norm", host, None, target_us=1500,
            calls=(lambda: gt.clip_grads_with_norm_(host, 1e30, one),
                   lambda: torch.nn.utils.clip_grads_with_norm_(host, 1e30, one)))
    compare("host-10000-total-norm", host, None, target_us=1500,
            calls=(lambda: gt.get_total_norm(host_grads),
                   lambda: torch.nn.utils.get_total_norm(host_grads)))
    if dev.type == "cpu":
        params = make_params([(1000,)] * 10000, dev, 1.0)
        compare("many-10000", params, 1.0, target_ratio=5, restore=True)
        compare("many-10000-noop", params, 1e30)
    if not args.skip_gpt2:
        params = make_params(gpt2_shapes(), dev, 1e-3)
        compare("gpt2-noop", params, 1e30, target_ratio=2)
        # clipping: a max_norm far below the norm, so every call scales (and
        # writes) every gradient
        compare("gpt2-clip", params, 1e-20, target_ratio=1, restore=True)
        if dev.type == "cpu":
            # bfloat16 gradients, nothing clipped: PyTorch's arithmetic rounds
            # the norm to bfloat16, and the library applies its coefficient
            params = make_params(gpt2_shapes(), dev, 1e-3, torch.bfloat16)
            compare("gpt2-bf16-noop", params, 1e30)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            compare("gpt2-bf16-with-norm-noop", params, None,
                    calls=(lambda: gt.clip_grads_with_norm_(params, 1e30, norm),
                           lambda: torch.nn.utils.clip_grads_with_norm_(params, 1e30, norm)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = {"device": str(dev), "torch": torch.__version__,
               "gclip": gt._lib.version_string(), "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
               "alternate": args.alternate, "repeat": args.repeat, "load_1min": load}
    print(f"torch {torch.__version__}, device {dev}, gclip library {machine['gclip']}, "
          f"{machine['cpus']} CPUs, torch threads {machine['torch_threads']}, "
          f"OMP_NUM_THREADS {machine['omp_num_threads']}, turns by {args.alternate}, "
          f"load average {load:.2f}")
    if args.markdown:
        print()
        print("| workload | tensors | gclip | torch | gclip speedup | target | met |")
        print("|---|---:|---:|---:|---:|---|---|")
        for r in rows:
            print(f"| {r['workload']} | {r['tensors']:,} | {_fmt_us(r['gclip_us'])} | "
                  f"{_fmt_us(r['torch_us'])} | {r['speedup']:.1f}x | {r.get('target', '')} | "
                  f"{'yes' if r.get('met') else 'no' if 'met' in r else ''} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**machine, "rows": rows}, f, indent=1)


def _fmt_us(us):
    return f"{us:,.1f} us" if us < 1000 else f"{us / 1000:,.2f} ms"


if __name__ == "__main__":
    main()
