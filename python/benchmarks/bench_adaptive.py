"""Per-step cost of gclip's adaptive methods on GPT-2 small's shapes (CPU).

    python python/benchmarks/bench_adaptive.py [--repeat N] [--threads 1,0] [--json out.json]
                                               [--markdown] [--skip-references]

Every method steps over the 148 gradients of GPT-2 small (124.4 M float32
elements), restored before each call outside the timing, in its steady state
(warm-up steps run untimed first; ZClip and AdaGC with warmup_steps=5,
AutoClip with a history of 1000, spike step-skip with its defaults); the
position embedding's gradient is scaled by a random factor each step so that
the total norm varies. Each
gclip method is timed against plain global clipping in gclip
(gclip.torch.Clipper.clip_grad_norm) in the same run, with 1 OpenMP thread and
with the default (0 in --threads), in two regimes:
  noop   max_norm above the norm: one read pass, nothing written. Spike
         step-skip never writes; AutoClip with a global threshold clips only
         the steps whose norm is above its quantile (about one in ten here).
  clip   max_norm below the norm: a read pass and a write pass. ZClip's
         default cap (max_grad_norm 1.0, against a norm of ~11) clips every
         step; AutoClip per tensor writes the tensors whose norm is not below
         their quantile (all but one here: their norms repeat); AdaGC
         (lambda_abs 1) clips every tensor for hundreds of steps after its
         warm-up; AGC writes the units it clips and reads the parameters too.
The references run with PyTorch's default threads: zclip 1.0.0 ZClip (a
.item() every step), autoclip 0.2.1 QuantileClip (per tensor), timm's
adaptive_clip_grad, and pytorch_optimizer's AdaGC, which is an optimizer: its
time is a whole step (clipping plus its Adam update, lr = 0).

Timings are medians of calls that take turns by blocks (bench_clip.timeit), so
the machine's load reaches all functions alike; the run ends with the load
average. `ratio` is the method over the plain clip of its regime.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import gclip
import gclip.torch as gt
from bench_clip import gpt2_shapes, timeit

# untimed steps before timing: past every warm-up used here (spike step-skip
# needs 20 norms in its window, the others 5 steps)
WARM = {"spike-skip": 21}
WARM_OTHERS = 6


def make_model(shapes):
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Module()
    model.ps = torch.nn.ParameterList()
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
        p.grad = torch.randn(s, generator=g) * 1e-3  # total norm ~ 11
        model.ps.append(p)
    return model


def gclip_methods(params, threads):
    """name -> (regime, step function) of gclip's methods and baselines."""
    nt = None if threads == 0 else threads
    noop = gt.Clipper(max_norm=1e30, num_threads=nt)
    clip = gt.Clipper(max_norm=1.0, num_threads=nt)
    clippers = {
        "zclip": gt.AdaptiveClipper("zclip", num_threads=nt, warmup_steps=5),
        "autoclip": gt.AdaptiveClipper("autoclip", num_threads=nt, history_length=1000),
        "autoclip-global": gt.AdaptiveClipper("autoclip", num_threads=nt, history_length=1000,
                                              global_threshold=True),
        "adagc": gt.AdaptiveClipper("adagc", num_threads=nt, warmup_steps=5),
        "spike-skip": gt.AdaptiveClipper("spike_skip", num_threads=nt),
    }
    regime = {"zclip": "clip", "autoclip": "clip", "autoclip-global": "noop", "adagc": "clip",
              "spike-skip": "noop"}
    out = {"plain-noop": ("noop", lambda: noop.clip_grad_norm(params)),
           "plain-clip": ("clip", lambda: clip.clip_grad_norm(params))}
    for name, c in clippers.items():
        out[name] = (regime[name], lambda c=c: c.step(params))
    agc = gclip.AGCClipper(clip_factor=0.01, num_threads=nt)
    weights = [p.detach() for p in params]
    grads = [p.grad for p in params]
    out["agc"] = ("clip", lambda: agc.step(weights, grads))
    return out


def reference_methods(model, params):
    out = {}
    try:
        from zclip import ZClip
        z = ZClip(warmup_steps=5)
        out["zclip"] = lambda: z.step(model)
    except ImportError:
        pass
    try:
        from autoclip.torch import QuantileClip
        q = QuantileClip(params, quantile=0.9, history_length=1000)
        out["autoclip"] = q.step
    except ImportError:
        pass
    try:
        from timm.utils.agc import adaptive_clip_grad
        out["agc"] = lambda: adaptive_clip_grad(params, clip_factor=0.01)
    except ImportError:
        pass
    try:
        from pytorch_optimizer import AdaGC
        opt = AdaGC(params, lr=0.0, warmup_steps=5)
        out["adagc"] = opt.step
    except ImportError:
        pass
    out["plain-clip"] = lambda: torch.nn.utils.clip_grad_norm_(params, 1.0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", default="1,0", help="gclip OpenMP threads to run (0: default)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--skip-references", action="store_true")
    args = ap.parse_args()

    model = make_model(gpt2_shapes())
    params = list(model.parameters())
    saved = [p.grad.clone() for p in params]
    nothing = lambda: None  # noqa: E731

    noise = torch.Generator().manual_seed(1)

    def restore():
        """The saved gradients, the position embedding's scaled by a random
        factor in [0.5, 1.5): the total norm varies a little from step to
        step, as in training (equal norms would make every z-score 0/0)."""
        with torch.no_grad():
            for p, g in zip(params, saved):
                p.grad.copy_(g)
            params[1].grad.mul_(0.5 + torch.rand((), generator=noise).item())

    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        methods = gclip_methods(params, threads)
        for name, (_, fn) in methods.items():
            for _ in range(WARM.get(name, WARM_OTHERS)):
                restore()
                fn()
        names = list(methods)
        times = timeit([methods[n][1] for n in names], args.repeat, nothing, restore)
        t = dict(zip(names, times))
        for n in names:
            regime = methods[n][0]
            rows.append({"side": "gclip", "threads": threads or "default", "method": n,
                         "regime": regime, "ms": t[n] * 1e3,
                         "ratio": t[n] / t["plain-" + regime]})
            print(f"gclip threads={threads or 'default':7} {n:16s} {t[n] * 1e3:9.2f} ms  "
                  f"{rows[-1]['ratio']:5.2f}x plain-{regime}", flush=True)
    refs = {} if args.skip_references else reference_methods(model, params)
    if refs:
        for fn in refs.values():
            for _ in range(WARM_OTHERS):
                restore()
                fn()
        names = list(refs)
        times = timeit([refs[n] for n in names], max(3, args.repeat // 2), nothing, restore)
        # each reference against gclip's same method at the last thread
        # setting run (the default, 0, unless --threads leaves it out)
        ours_threads = rows[-1]["threads"]
        ours = {r["method"]: r["ms"] for r in rows
                if r["side"] == "gclip" and r["threads"] == ours_threads}
        for n, tm in zip(names, times):
            mine = ours[n]
            rows.append({"side": "reference", "threads": torch.get_num_threads(), "method": n,
                         "ms": tm * 1e3, "gclip_ms": mine, "gclip_threads": ours_threads,
                         "speedup": tm * 1e3 / mine})
            print(f"reference {n:16s} {tm * 1e3:9.2f} ms  gclip ({ours_threads} threads) "
                  f"{mine:9.2f} ms  {tm * 1e3 / mine:5.2f}x", flush=True)
    load = os.getloadavg()[0]
    machine = {"torch": torch.__version__, "gclip": gclip.library_version, "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
               "repeat": args.repeat, "load_1min": load}
    print(f"torch {torch.__version__}, gclip {gclip.library_version}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, load average {load:.2f}")
    if args.markdown:
        print("\n| method | regime | gclip 1 thread | ratio | gclip default | ratio |")
        print("|---|---|---:|---:|---:|---:|")
        by = {(r["method"], r["threads"]): r for r in rows if r["side"] == "gclip"}
        for n in dict.fromkeys(r["method"] for r in rows if r["side"] == "gclip"):
            one, dflt = by.get((n, 1)), by.get((n, "default"))
            cells = [f"{x['ms']:.1f} ms | {x['ratio']:.2f}x" if x else "- | -" for x in (one, dflt)]
            print(f"| {n} | {(one or dflt)['regime']} | {cells[0]} | {cells[1]} |")
        if refs:
            print(f"\n| reference | reference | gclip ({ours_threads} threads) | gclip speedup |")
            print("|---|---:|---:|---:|")
            for r in rows:
                if r["side"] == "reference":
                    print(f"| {r['method']} | {r['ms']:.1f} ms | {r['gclip_ms']:.1f} ms | "
                          f"{r['speedup']:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
