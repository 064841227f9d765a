#!/usr/bin/env python3
"""Markdown tables from gclip-bench --json output: the targets, then every
gclip result with the naive and PyTorch times of the same workload and op.

    python3 bench/table.py bench.json [--backend cpu]
"""
import argparse
import json

# (workload, op, what the ratio is compared with, threshold)
TARGETS = [
    ("gpt2-124m", "norm", "roofline", 0.8),
    ("gpt2-124m", "clip-noop", "roofline", 0.8),
    ("gpt2-124m", "clip", "roofline", 0.75),
    ("gpt2-124m", "value", "roofline", 0.8),
    ("many-small", "norm", "roofline", 0.5),
    ("gpt2-124m", "clip-noop", "torch", 3.0),
    ("gpt2-124m", "clip", "torch", 1.3),
    ("gpt2-124m", "value", "torch", 4.0),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args()
    records = json.load(open(args.json))
    by = {(r["workload"], r["op"], r["impl"], r["backend"]): r for r in records}

    def speedup(w, op, other):
        g, o = by.get((w, op, "gclip", args.backend)), by.get((w, op, other, args.backend))
        return o["median_ms"] / g["median_ms"] if g and o else None

    print("| target | measured | met |\n|---|---|---|")
    for w, op, kind, thr in TARGETS:
        if kind == "roofline":
            r = by.get((w, op, "gclip", args.backend))
            val, label = (r["ratio"] if r else None), f"{w} {op} >= {thr} of its roofline"
            shown = f"{val:.2f}" if val is not None else "n/a"
        else:
            val = speedup(w, op, "torch")
            label = f"{w} {op} >= {thr}x PyTorch"
            shown = f"{val:.2f}x" if val is not None else "n/a (no torch)"
        met = "n/a" if val is None else ("yes" if val >= thr else "no")
        print(f"| {label} | {shown} | {met} |")

    print("\n| workload | op | gclip ms | GB/s | roofline GB/s | ratio | naive ms | torch ms "
          "| vs naive | vs torch |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        if r["impl"] != "gclip" or r["backend"] != args.backend:
            continue
        w, op = r["workload"], r["op"]
        cells = []
        for other in ("naive", "torch"):
            o = by.get((w, op, other, args.backend))
            cells.append(f"{o['median_ms']:.1f}" if o else "-")
        ups = [speedup(w, op, o) for o in ("naive", "torch")]
        ups = [f"{u:.2f}x" if u else "-" for u in ups]
        print(f"| {w} | {op} | {r['median_ms']:.1f} | {r['gbps']:.2f} | {r['roofline_gbps']:.2f} "
              f"| **{r['ratio']:.2f}** | {cells[0]} | {cells[1]} | {ups[0]} | {ups[1]} |")


if __name__ == "__main__":
    main()
