"""Performance of gclip.torch against torch.nn.utils, in one run.

    python python/benchmarks/bench_clip.py [--device cpu|cuda] [--repeat N] [--json out.json]

Workloads (the targets of the Python package):
  host-148      GPT-2 small's tensor count with 1-element tensors: host time per
                clip_grad_norm_ call (target <= 50 us)
  host-10000    10,000 1-element tensors (target <= 1.5 ms)
  many-10000    10,000 tensors of 1,000 float32 elements on the CPU:
                gclip.torch.clip_grad_norm_ >= 5x torch's
  gpt2-clip     GPT-2 small's 148 gradient shapes, clipping (>= 1x torch)
  gpt2-noop     the same, max_norm above the norm (>= 2x torch)

Each number is the median of `repeat` timings of one call (gradients are
restored between calls only where clipping changes them, outside the timing).
"""

from __future__ import annotations

import argparse
import json
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


def make_params(shapes, device, scale):
    g = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.empty(s, device=device))
        p.grad = (torch.randn(s, generator=g) * scale).to(device)
        params.append(p)
    return params


def timeit(fn, repeat, sync):
    fn()
    sync()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-gpt2", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    rows = []

    def compare(name, params, max_norm, target_ratio=None, target_us=None, repeat=args.repeat):
        # host time: no synchronization inside the timing for the host rows
        t_g = timeit(lambda: gt.clip_grad_norm_(params, max_norm), repeat, sync)
        t_t = timeit(lambda: torch.nn.utils.clip_grad_norm_(params, max_norm), repeat, sync)
        row = {"workload": name, "tensors": len(params), "gclip_us": t_g * 1e6,
               "torch_us": t_t * 1e6, "speedup": t_t / t_g}
        if target_ratio is not None:
            row["target"] = f">= {target_ratio}x torch"
            row["met"] = row["speedup"] >= target_ratio
        if target_us is not None:
            row["target"] = f"<= {target_us} us"
            row["met"] = row["gclip_us"] <= target_us
        rows.append(row)
        print(f"{name:12s} {len(params):6d} tensors  gclip {row['gclip_us']:10.1f} us  "
              f"torch {row['torch_us']:10.1f} us  {row['speedup']:6.2f}x  "
              f"{row.get('target', '')} {'met' if row.get('met') else 'NOT met' if 'met' in row else ''}",
              flush=True)

    # host overhead: 1-element tensors, huge max_norm so nothing is written
    compare("host-148", make_params([(1,)] * 148, dev, 1.0), 1e30, target_us=50,
            repeat=max(args.repeat, 200))
    compare("host-10000", make_params([(1,)] * 10000, dev, 1.0), 1e30, target_us=1500)
    if dev.type == "cpu":
        compare("many-10000", make_params([(1000,)] * 10000, dev, 1.0), 1e30, target_ratio=5)
    if not args.skip_gpt2:
        params = make_params(gpt2_shapes(), dev, 1e-3)
        compare("gpt2-noop", params, 1e30, target_ratio=2)
        # clipping: a max_norm far below the norm, so every call scales (and
        # writes) every gradient
        compare("gpt2-clip", params, 1e-20, target_ratio=1)
    print(f"torch {torch.__version__}, device {dev}, gclip library {gt._lib.version_string()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(dev), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
