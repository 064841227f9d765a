#!/usr/bin/env python3
"""Markdown tables from gclip-bench --json output: every gclip result with
its ratio to the roofline measured next to it, the naive loop's and every
peer's time for the same workload and op, gclip's speed-up over each, and
whether the row meets the targets.

    python3 bench/table.py bench.json [--backend cpu] [--compact]

--compact prints one row per workload and op with the ratio and the
speed-up over the fastest peer only (the README's table).

Targets (CPU): every op at >= 0.85 of its roofline, and at least as fast as
the fastest peer of the run; 2x the fastest peer for clip-noop and on
many-small, where the peers do avoidable work.
"""
import argparse
import json

ROOFLINE_TARGET = 0.85
FIXED = ("gclip", "naive")


def peer_target(workload, op):
    return 2.0 if op == "clip-noop" or workload == "many-small" else 1.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--compact", action="store_true")
    args = ap.parse_args()
    records = [r for r in json.load(open(args.json)) if r["backend"] == args.backend]
    by = {(r["workload"], r["op"], r["impl"]): r for r in records}
    peers = list(dict.fromkeys(r["impl"] for r in records if r["impl"] not in FIXED))

    def ms(w, op, impl):
        r = by.get((w, op, impl))
        return r["median_ms"] if r and r.get("median_ms") else None

    head = ["workload", "op", "gclip ms", "ratio", "naive ms"] + [f"{p} ms" for p in peers] \
        + [f"vs {p}" for p in peers] + ["target met"]
    if args.compact:
        head = ["workload", "op", "roofline ratio", "vs fastest peer", "fastest peer", "target met"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    misses = []
    for r in records:
        if r["impl"] != "gclip" or not r.get("median_ms"):
            continue
        w, op, g = r["workload"], r["op"], r["median_ms"]
        times = [ms(w, op, p) for p in peers]
        ups = [t / g if t else None for t in times]
        want = peer_target(w, op)
        ok_roof = r["ratio"] >= ROOFLINE_TARGET
        # the fastest peer gives the smallest speed-up
        worst = min((u for u in ups if u), default=None)
        ok_peer = worst is None or worst >= want
        met = []
        if not ok_roof:
            met.append(f"roofline < {ROOFLINE_TARGET}")
        if not ok_peer:
            met.append(f"< {want:g}x best peer")
        if met:
            misses.append(f"{w} {op}: " + ", ".join(met))
        naive = ms(w, op, "naive")
        if args.compact:
            fastest = min((t, p) for t, p in zip(times, peers) if t) if any(times) else None
            cells = [w, op, f"{r['ratio']:.2f}", f"{worst:.2f}x" if worst else "-",
                     fastest[1] if fastest else "-"]
        else:
            cells = [w, op, f"{g:.2f}", f"**{r['ratio']:.2f}**", f"{naive:.1f}" if naive else "-"]
            cells += [f"{t:.2f}" if t else "-" for t in times]
            cells += [f"{u:.2f}x" if u else "-" for u in ups]
        cells.append("yes" if not met else "no")
        print("| " + " | ".join(cells) + " |")
    print(f"\n{len(misses)} rows below target" + (":" if misses else "."))
    for m in misses:
        print(f"- {m}")


if __name__ == "__main__":
    main()
