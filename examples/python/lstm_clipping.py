"""What gradient clipping is for: an LSTM on a long-sequence task.

The task is the adding problem (Hochreiter & Schmidhuber), answered at every
step: each input is a sequence of (value, marker) pairs in which two positions
are marked, one in each half, and at every step the model must output the sum
of the marked values seen so far. The first marked value has to be carried
across up to `length` steps, so gradients flow back through the whole
sequence, and at a large learning rate they now and then explode. The data is
generated here, no download.

The same model, from the same initial weights and on the same batches, is
trained three times with SGD at a learning rate where that matters:
  none     no clipping: the gradient norm explodes and the loss overflows
           (seed 0), or spikes and stays above the baseline (other seeds)
  torch    torch.nn.utils.clip_grad_norm_
  gclip    gclip.torch.clip_grad_norm_ (the one-import drop-in)
Each run prints the loss and the gradient norm (before clipping) every
`--print-every` steps; the script then compares the runs with the trivial
baseline (predicting each step's mean, which knows nothing about the input)
and writes a plot of both curves (PNG, docs/lstm-clipping.png by default).
It exits 1 when the gclip run does not do its job: its loss or gradient
norm turns non-finite, its first gradient norm is not torch's (1e-6: same
weights, same batch), or it ends above the baseline while the torch run
ends below it.
The model is small, so it runs on one CPU thread (--threads); the three runs
take well under a minute on a 2-core machine.

    python examples/python/lstm_clipping.py            # writes docs/lstm-clipping.png
    python examples/python/lstm_clipping.py --lr 0.3   # no blow-up unclipped, but slow learning
    python examples/python/lstm_clipping.py --out ''   # no plot
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

import gclip.torch as gt

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                           "lstm-clipping.png")


def adding_batch(gen, batch, length):
    """Inputs (batch, length, 2) and the running sum of the marked values (batch, length)."""
    values = torch.rand(batch, length, generator=gen)
    markers = torch.zeros(batch, length)
    first = torch.randint(0, length // 2, (batch,), generator=gen)
    second = torch.randint(length // 2, length, (batch,), generator=gen)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=2)
    y = (values * markers).cumsum(dim=1)
    return x, y


class Model(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.rnn = torch.nn.LSTM(2, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out).squeeze(-1)


def train(mode, args, init_state, batches):
    model = Model(args.hidden)
    model.load_state_dict(init_state)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    losses, norms = [], []
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if mode == "none":
            norm = gt.get_total_norm([p.grad for p in model.parameters()])
        elif mode == "torch":
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_norm)
        else:
            norm = gt.clip_grad_norm_(model.parameters(), args.max_norm)
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
        last = step == len(batches) - 1
        if not math.isfinite(losses[-1]):
            print(f"{mode:6s} step {step:4d}  loss {losses[-1]:10.4g}  grad norm {norms[-1]:10.4g}"
                  "  -> non-finite: the run is over", flush=True)
            break
        if step % args.print_every == 0 or last:
            print(f"{mode:6s} step {step:4d}  loss {losses[-1]:10.4g}  grad norm {norms[-1]:10.4g}",
                  flush=True)
    return losses, norms, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--length", type=int, default=50, help="sequence length")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--max-norm", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--print-every", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (a model this small runs fastest on one)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="the PNG to write ('' for none)")
    args = ap.parse_args()
    for name in ("steps", "batch", "hidden", "print_every", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.length < 2:
        ap.error("--length must be >= 2 (one marked position in each half)")
    if not (args.max_norm > 0 and math.isfinite(args.max_norm)):
        ap.error("--max-norm must be finite and > 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    init_state = Model(args.hidden).state_dict()
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = [adding_batch(gen, args.batch, args.length) for _ in range(args.steps)]
    # the trivial baseline: predict at every step the mean target of that step
    ys = torch.cat([y for _, y in batches])
    baseline = float(ys.var(dim=0, unbiased=False).mean())

    results = {}
    for m in ("none", "torch", "gclip"):
        results[m] = train(m, args, init_state, batches)
        print()

    tail = 20
    print(f"adding problem, length {args.length}; baseline loss (each step's mean) {baseline:.4g}")
    print(f"{'run':6s} {'steps':>5s} {'mean loss, last ' + str(tail):>20s} {'min loss':>10s} "
          f"{'max grad norm':>14s} {'time':>7s}")
    for m, (losses, norms, secs) in results.items():
        finite = all(math.isfinite(v) for v in losses)
        last = losses[-tail:]
        mean = sum(last) / len(last) if finite else float("nan")
        nan = float("nan")
        print(f"{m:6s} {len(losses):5d} {mean:20.4g} {min(_finite(losses), default=nan):10.4g} "
              f"{max(_finite(norms), default=nan):14.4g} {secs:6.1f}s"
              f"{'' if finite else f'   loss {_what(losses[-1])} at step {len(losses) - 1}'}")
    lt, lg = results["torch"][0], results["gclip"][0]
    # a NaN loss is apart from anything; runs of different lengths are apart
    # from the shorter one's end
    apart = next((i for i, (a, b) in enumerate(zip(lt, lg)) if not abs(a - b) <= 0.01 * abs(a)),
                 None if len(lt) == len(lg) else min(len(lt), len(lg)))
    if apart is None:
        print(f"torch and gclip losses within 1% of each other at every step ({len(lt)})")
    elif apart == 0:
        print("torch and gclip losses more than 1% apart from the first step")
    else:
        print(f"torch and gclip losses within 1% of each other up to step {apart - 1}")

    if args.out:
        plot(results, args, baseline)
    return check(results, baseline, tail)


def check(results, baseline, tail):
    """0 when the gclip run did its job, else 1 (with what went wrong)."""
    (lg, ng, _), (lt, nt, _) = results["gclip"], results["torch"]
    problems = []
    if not all(math.isfinite(v) for v in lg + ng):
        problems.append("the gclip run's loss or gradient norm turned non-finite")
    if not abs(ng[0] - nt[0]) <= 1e-6 * abs(nt[0]):
        problems.append(f"the first gradient norms differ: gclip {ng[0]!r}, torch {nt[0]!r}")
    mean_t = sum(lt[-tail:]) / len(lt[-tail:])
    mean_g = sum(lg[-tail:]) / len(lg[-tail:])
    if mean_t < baseline and not mean_g < baseline:
        problems.append(f"the gclip run ends at loss {mean_g:.4g}, above the baseline "
                        f"{baseline:.4g}, where the torch run ends below it ({mean_t:.4g})")
    for p in problems:
        print(f"FAILED: {p}")
    return 1 if problems else 0


def _finite(values):
    return [v for v in values if math.isfinite(v)]


def _what(v):
    return "NaN" if math.isnan(v) else "Inf"


def plot(results, args, baseline):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True)
    styles = {"none": ("no clipping", "tab:red", "-", 1.6),
              "torch": ("torch.nn.utils.clip_grad_norm_", "tab:blue", "-", 2.4),
              "gclip": ("gclip.torch.clip_grad_norm_", "tab:orange", "--", 1.2)}
    # The axes end a decade above what the runs that stayed finite reached; a
    # run that blows up leaves through the top, marked with its peak.
    finite = _finite
    kept = [r for r in results.values() if all(math.isfinite(x) for x in r[0])]
    top_loss = 10 ** math.ceil(math.log10(max(max(finite(r[0])) for r in kept)) + 1) if kept else None
    top_norm = 10 ** math.ceil(math.log10(max(max(finite(r[1])) for r in kept)) + 2) if kept else None
    for m, (losses, norms, _) in results.items():
        label, color, ls, lw = styles[m]
        ax1.plot(losses, label=label, color=color, linestyle=ls, linewidth=lw)
        ax2.plot(norms, label=label, color=color, linestyle=ls, linewidth=lw)
        if not math.isfinite(losses[-1]):
            end = len(losses) - 1
            for ax, values, top, what in ((ax1, losses, top_loss, "loss"),
                                          (ax2, norms, top_norm, "gradient norm")):
                peak = max(finite(values), default=float("nan"))
                y = top if top is not None and peak > top else peak
                ax.plot([end], [y], "x", color=color, markersize=10, markeredgewidth=2.5,
                        clip_on=False)
                ax.annotate(f"{label}: {what} up to {peak:.1e}, "
                            f"loss {_what(losses[-1])} at step {end}",
                            (end, y), textcoords="offset points", xytext=(10, -14), color=color)
    ax1.axhline(baseline, color="gray", linewidth=1, linestyle=":")
    ax1.annotate(f"trivial baseline {baseline:.3f}", (args.steps, baseline),
                 textcoords="offset points", xytext=(-140, 5), color="gray")
    ax1.set_yscale("log")
    if top_loss is not None:
        ax1.set_ylim(top=top_loss)
    ax1.set_ylabel("loss (MSE)")
    ax1.set_title(f"LSTM ({args.hidden} units), adding problem answered at every step, "
                  f"length {args.length}\nSGD lr {args.lr:g}, momentum {args.momentum:g}, "
                  f"batch {args.batch}, seed {args.seed}; clipping at max_norm {args.max_norm:g}")
    ax1.legend(loc="lower left")
    ax2.set_yscale("log")
    if top_norm is not None:
        ax2.set_ylim(top=top_norm)
    ax2.set_ylabel("gradient norm before clipping")
    ax2.set_xlabel("step")
    ax2.axhline(args.max_norm, color="gray", linewidth=1, linestyle=":")
    ax2.annotate(f"max_norm {args.max_norm:g}", (args.steps, args.max_norm),
                 textcoords="offset points", xytext=(-80, 5), color="gray")
    ax1.set_xlim(0, args.steps)
    fig.tight_layout()
    out = os.path.normpath(args.out)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
