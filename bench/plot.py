#!/usr/bin/env python3
"""Bar chart of gclip-bench --json output: achieved GB/s per op and
implementation (gclip, the naive loop and every peer of the run), one panel
per workload, with each op's roofline, measured next to it, drawn as a line
over its bars.

    python3 bench/plot.py bench.json -o docs/bench-cpu.png [--workload gpt2-124m]

Needs matplotlib (pip install matplotlib); the benchmark itself does not.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

OPS = ["norm", "clip", "clip-noop", "value", "tensor-norm", "unscale-clip"]
FIXED = {"gclip/cpu": "#1f77b4", "gclip/cuda": "#17becf", "naive/cpu": "#7f7f7f"}
# the peers (labelled by library and version) in the order they appear
PEER_COLORS = ["#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def colors_of(records):
    colors = dict(FIXED)
    peers = [k for k in dict.fromkeys(f'{r["impl"]}/{r["backend"]}' for r in records)
             if k not in FIXED]
    for i, k in enumerate(peers):
        colors[k] = PEER_COLORS[i % len(PEER_COLORS)]
    return colors


def load(path, workloads):
    with open(path) as f:
        records = [r for r in json.load(f) if r.get("gbps")]
    if workloads:
        records = [r for r in records if r["workload"] in workloads]
    return records


def panel(ax, workload, records, colors):
    recs = [r for r in records if r["workload"] == workload]
    ops = [op for op in OPS if any(r["op"] == op for r in recs)]
    impls = [k for k in colors if any(f'{r["impl"]}/{r["backend"]}' == k for r in recs)]
    width = 0.8 / max(len(impls), 1)
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, op in enumerate(ops):
            for r in recs:
                if r["op"] == op and f'{r["impl"]}/{r["backend"]}' == impl:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(r["gbps"])
        ax.bar(xs, ys, width, label=impl, color=colors[impl])
    # each op's roofline (per backend, gclip's: measured next to it) as a
    # line across its group of bars
    for i, op in enumerate(ops):
        for backend, style in (("cpu", "-"), ("cuda", "--")):
            roof = [r["roofline_gbps"] for r in recs
                    if r["op"] == op and r["backend"] == backend and r["impl"] == "gclip"
                    and r.get("roofline_gbps")]
            if roof:
                label = f"{backend} roofline" if i == 0 else None
                ax.hlines(roof[0], i - 0.45, i + 0.45, colors="black", linestyles=style,
                          label=label)
    threads = max((r["threads"] for r in recs if r["impl"] == "gclip"), default=0)
    ax.set_title(f"{workload} ({threads} CPU threads)")
    ax.set_xticks(range(len(ops)))
    ax.set_xticklabels(ops)
    ax.set_ylabel("GB/s (minimal bytes moved)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("-o", "--output", default="bench.png")
    ap.add_argument("--workload", action="append", help="only these workloads (repeatable)")
    args = ap.parse_args()
    records = load(args.json, args.workload)
    workloads = list(dict.fromkeys(r["workload"] for r in records))
    if not workloads:
        raise SystemExit("no timed records in " + args.json)
    fig, axes = plt.subplots(len(workloads), 1, figsize=(10, 3.6 * len(workloads)),
                             squeeze=False)
    colors = colors_of(records)
    for ax, workload in zip(axes[:, 0], workloads):
        panel(ax, workload, records, colors)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
