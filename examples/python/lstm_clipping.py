"""What gradient clipping is for: an LSTM on a long-sequence task.

The task is the adding problem (Hochreiter & Schmidhuber): each input is a
sequence of (value, marker) pairs; two positions are marked and the target is
the sum of their values. The answer depends on inputs far back in the
sequence, so gradients flow through hundreds of steps and now and then
explode. The data is generated here, no download.

The same model, from the same initial weights and on the same batches, is
trained three times at a learning rate where that matters:
  none     no clipping: the loss spikes or turns NaN
  torch    torch.nn.utils.clip_grad_norm_
  gclip    gclip.torch.clip_grad_norm_
Each run prints the loss and the gradient norm (before clipping) per step,
and the script writes a plot of both (PNG).

    python examples/python/lstm_clipping.py --steps 300 --out lstm_clipping.png
"""

from __future__ import annotations

import argparse
import math

import torch

import gclip.torch as gt


def adding_batch(gen, batch, length):
    values = torch.rand(batch, length, generator=gen)
    markers = torch.zeros(batch, length)
    first = torch.randint(0, length // 2, (batch,), generator=gen)
    second = torch.randint(length // 2, length, (batch,), generator=gen)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=2)
    y = (values * markers).sum(dim=1, keepdim=True)
    return x, y


class Model(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.rnn = torch.nn.LSTM(2, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def train(mode, args, init_state, batches):
    model = Model(args.hidden)
    model.load_state_dict(init_state)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    losses, norms = [], []
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
        losses.append(float(loss))
        norms.append(float(norm))
        if step % args.print_every == 0 or step == len(batches) - 1:
            print(f"{mode:6s} step {step:4d}  loss {losses[-1]:10.4g}  grad norm {norms[-1]:10.4g}",
                  flush=True)
    return losses, norms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--length", type=int, default=150, help="sequence length")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--max-norm", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--print-every", type=int, default=25)
    ap.add_argument("--out", default="lstm_clipping.png")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    init_state = Model(args.hidden).state_dict()
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = [adding_batch(gen, args.batch, args.length) for _ in range(args.steps)]

    results = {m: train(m, args, init_state, batches) for m in ("none", "torch", "gclip")}

    print("\nfinal loss (mean of the last 20 steps; the variance baseline is ~0.167):")
    for m, (losses, norms) in results.items():
        tail = losses[-20:]
        finite = all(math.isfinite(v) for v in losses)
        print(f"  {m:6s} {sum(tail) / len(tail):10.4g}   max grad norm {max(norms):10.4g}"
              f"   {'finite' if finite else 'NaN/Inf reached'}")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    styles = {"none": ("no clipping", "tab:red"), "torch": ("torch clip_grad_norm_", "tab:blue"),
              "gclip": ("gclip clip_grad_norm_", "tab:green")}
    for m, (losses, norms) in results.items():
        label, color = styles[m]
        ls = "--" if m == "gclip" else "-"
        ax1.plot(losses, label=label, color=color, linestyle=ls, linewidth=1)
        ax2.plot(norms, label=label, color=color, linestyle=ls, linewidth=1)
    ax1.set_yscale("log")
    ax1.set_ylabel("loss (MSE)")
    ax1.set_title(f"LSTM, adding problem, length {args.length}, SGD lr {args.lr}, "
                  f"max_norm {args.max_norm}")
    ax1.legend()
    ax2.set_yscale("log")
    ax2.set_ylabel("gradient norm before clipping")
    ax2.set_xlabel("step")
    ax2.axhline(args.max_norm, color="gray", linewidth=0.8, linestyle=":")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
