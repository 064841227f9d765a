"""Where the host time of gclip.torch.clip_grad_norm_ goes, part by part.

    python python/benchmarks/host_breakdown.py [--tensors N] [--repeat R]

With N one-element CPU gradients (the data costs nothing) it times the whole
drop-in call and, separately, its parts: the C++ scan of the parameter list
(gradient pointers, counts, dtypes, device), the lookup of the cached plan
for that signature, gclip_plan_rebind (the new pointers, with the overlap
check), the gclip call itself (norm, coefficient, result slot), the clone
of the returned norm and the C++ loop that bumps every gradient's version
counter (autograd's record of the in-place write); what the whole call
takes beyond their sum is Python. Each is measured with warm caches (back-to-back
calls) and right after a 64 MB write that evicts them, as after a backward
pass (then every part pays for its own misses, and the parts add up to more
than the whole call). Needs the C++ module gclip._torch_fast; the parts are internals of
gclip.torch and may change with it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import gclip.torch as gt
from gclip import _lib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensors", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    if gt._scanner_of_thread() is None:
        raise SystemExit("gclip._torch_fast is not built: the drop-ins use the Python scan")
    params = []
    for _ in range(args.tensors):
        p = torch.nn.Parameter(torch.empty(1))
        p.grad = torch.randn(1)
        params.append(p)
    gt.clip_grad_norm_(params, 1e30)  # builds the plan
    scanner = gt._scanner_of_thread()
    entry, stream, count = gt._scan_fast(params, True, False)
    _, sig, _, dev = scanner.scan(params, True)
    plan = entry.plan
    if gt._bump_versions is None:
        raise SystemExit("gclip._torch_fast has no bump_versions: rebuild the package")
    opts = plan.options(1e30, 2.0, 1e-6, 1.0, _lib.PROPAGATE)
    parts = {
        "whole call": lambda: gt.clip_grad_norm_(params, 1e30),
        "scan (C++)": lambda: scanner.scan(params, True),
        "plan lookup": lambda: scanner.entry(sig, params, True, dev),
        "rebind (C)": lambda: scanner.rebind(entry, count, stream),
        "clip (C)": lambda: plan.run("clip_grad_norm", opts, stream),
        "norm clone": lambda: entry.norm_view.clone(),
        "versions (C++)": lambda: gt._bump_versions(params, True),
    }
    junk = torch.empty(16 << 20)

    def evict():
        junk.add_(1.0)

    print(f"{args.tensors} one-element gradients, median of {args.repeat} calls, us")
    print(f"{'caches':>8s} " + " ".join(f"{k:>11s}" for k in parts) + f" {'Python':>8s}")
    for label, before in (("warm", None), ("evicted", evict)):
        med = {}
        for name, fn in parts.items():
            ts = []
            for _ in range(args.repeat):
                if before:
                    before()
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            med[name] = statistics.median(ts) * 1e6
        rest = med["whole call"] - sum(v for k, v in med.items() if k != "whole call")
        # evicted: each part is timed after its own eviction, so the parts
        # add up to more than the whole call and leave no remainder to show
        tail = f" {rest:8.0f}" if before is None else f" {'-':>8s}"
        print(f"{label:>8s} " + " ".join(f"{v:11.0f}" for v in med.values()) + tail)


if __name__ == "__main__":
    main()
