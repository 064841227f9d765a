#!/usr/bin/env python3
"""Markdown tables from gclip-bench --json output: every gclip result with
its ratio to the roofline measured next to it, the naive loop's and every
peer's time for the same workload and op, gclip's speed-up over each, and
whether the row meets the targets.

    python3 bench/table.py bench.json [more.json ...] [--backend cpu] [--compact]

--compact prints one row per workload and op with the ratio and the
speed-up over the fastest peer only (the README's table).

Two speed-ups over each peer: in time (the peer's median over gclip's),
and at the same memory speed (gclip's ratio over the peer's), where the
peer's runs were paired with roofline passes of their own (gclip-bench
passes its roofline library to the peers' scripts). Peers run in their own
processes, minutes away from gclip's run of the same op, on machines whose
bandwidth drifts; the second speed-up compares the two at the memory speed
each one was measured at, and the verdict uses it when it exists.

Several files (full runs of the same build) give one table of medians:
each run's ratio compares two figures measured together, and each run's
speed-up over a peer compares gclip with that peer in the same run, so the
medians are taken of those per-run figures, never of times from different
runs. The range over the runs follows each median.

Targets (CPU): every op at >= 0.85 of its roofline, and at least as fast as
every peer of the run; 2x a peer for clip-noop and on many-small, where the
peers do avoidable work; but 1x on the clip-noop row of a peer that wrote
nothing there either (its clip-noop took about its norm's time, not its
clip's: writes_nothing). A row with no peer timed
(--quick, a peer skipped or failed) cannot meet the peer target, and a row
whose check failed in any run (gclip-bench's check_failed) misses too, as
does a row that has no time in some run (the op failed there, its note
says why, or the run lacks it). A
peer whose own output check failed (bench/peer_common.py) keeps its time in
the comparison, marked (!) and listed under the table.

Runs of `gclip-bench --policy propagate` label gclip's rows with the
policy ("tensor-norm (propagate)"); give the files of one policy at a time.
"""
import argparse
import json
import statistics

ROOFLINE_TARGET = 0.85
FIXED = ("gclip", "naive")


def peer_target(workload, op):
    """The speed-up asked over a peer that does the avoidable work."""
    return 2.0 if op == "clip-noop" or workload == "many-small" else 1.0


# A peer's clip at least this many times its norm's time shows what its
# write costs (WRITE_SHOWS); where it does not, the peer's arithmetic hides
# the write, and its times cannot tell whether its clip-noop writes.
WRITE_SHOWS = 1.25


def writes_nothing(workload, peer, indexed):
    """Whether the peer's clip-noop wrote nothing, as gclip's does: in more
    than half of the runs that timed its norm, clip and clip-noop on the
    workload, its clip took at least WRITE_SHOWS times its norm's time and
    its clip-noop less than halfway from the one to the other. A clip that
    writes reads the bytes again and writes them after its norm; a clip-noop
    that writes does as much, and one that does not takes about the norm's
    time. The times compared are the peer's own, of one run: the one op's
    extra cost against the other's, whatever the peer's speed."""
    votes = []
    for timed, _ in indexed:
        ms = [timed.get((workload, op, peer), {}).get("median_ms")
              for op in ("norm", "clip", "clip-noop")]
        if all(ms):
            norm, clip, noop = ms
            votes.append(clip >= WRITE_SHOWS * norm and noop < (norm + clip) / 2)
    return sum(votes) > len(votes) / 2


def peer_wants(workload, op, peers, indexed):
    """The speed-up asked over each peer: peer_target, but 1x on a clip-noop
    row of a peer that wrote nothing there (writes_nothing). `indexed` is
    summarize's (timed, rows) per run."""
    return {p: 1.0 if op == "clip-noop" and workload != "many-small"
            and writes_nothing(workload, p, indexed) else peer_target(workload, op)
            for p in peers}


def index(records, backend):
    """(workload, op, impl) -> record with a time, and gclip's records in run
    order, those that did not run (median_ms null: the op failed) included."""
    records = [r for r in records if r["backend"] == backend]
    timed = {(r["workload"], r["op"], r["impl"]): r for r in records if r.get("median_ms")}
    rows = [r for r in records if r["impl"] == "gclip"]
    return timed, rows


def speedups(g, peer):
    """gclip's speed-up over one peer's record of the same run: in time, and
    at the same memory speed (None unless the peer has its own roofline)."""
    time_up = peer["median_ms"] / g["median_ms"]
    mem_up = None
    if peer.get("roofline_interleaved") and peer.get("ratio"):
        mem_up = g["ratio"] / peer["ratio"]
    return time_up, mem_up


def summarize(runs, backend="cpu"):
    """One entry per gclip row of any run, in the order they first appear:
    the per-run figures (ratio, and speed-up over each peer present in that
    run) and their medians. A run in which the row has no time (the op
    failed, or the run lacks it) is listed in "untimed", and the row misses
    its targets. `runs` is a list of record lists, one per gclip-bench run."""
    indexed = [index(run, backend) for run in runs]
    peers = list(dict.fromkeys(r["impl"] for run in runs for r in run
                               if r["backend"] == backend and r["impl"] not in FIXED))
    first = {}
    for _, rows in indexed:
        for r in rows:
            first.setdefault((r["workload"], r["op"]), r)
    out = []
    for row in first.values():
        w, op = row["workload"], row["op"]
        ratios, ms, naive, untimed = [], [], [], []
        ups = {p: [] for p in peers}      # in time
        mem_ups = {p: [] for p in peers}  # at the same memory speed
        judged = {p: [] for p in peers}   # the latter where it exists, else the former
        peer_ms = {p: [] for p in peers}
        peer_checks = {}  # peer -> its output check's finding, in a run where it failed
        for k, (timed, rows) in enumerate(indexed):
            g = next((r for r in rows if r["workload"] == w and r["op"] == op), None)
            if g is None or not g.get("median_ms"):
                why = "absent" if g is None else (g.get("note") or "no time")
                untimed.append(f"run {k + 1}: {why}")
                continue
            ratios.append(g["ratio"])
            ms.append(g["median_ms"])
            if (w, op, "naive") in timed:
                naive.append(timed[(w, op, "naive")]["median_ms"])
            for p in peers:
                r = timed.get((w, op, p))
                if r:
                    time_up, mem_up = speedups(g, r)
                    ups[p].append(time_up)
                    if mem_up is not None:
                        mem_ups[p].append(mem_up)
                    judged[p].append(mem_up if mem_up is not None else time_up)
                    peer_ms[p].append(r["median_ms"])
                    if r.get("check_failed"):
                        peer_checks[p] = r.get("check") or r.get("note", "")
        med = {p: statistics.median(u) for p, u in judged.items() if u}
        # the fastest peer gives the smallest (median) speed-up
        fastest = min(med, key=med.get) if med else None
        # gclip's non-finite policy, when not the default (gclip-bench --policy)
        label = op if row.get("policy", "skip") == "skip" else f"{op} ({row['policy']})"
        out.append({
            "workload": w, "op": op, "label": label, "runs": len(ratios),
            "untimed": untimed,
            "ratio": statistics.median(ratios) if ratios else None, "ratios": ratios,
            "ms": statistics.median(ms) if ms else None,
            "naive_ms": statistics.median(naive) if naive else None,
            "peer_ms": {p: statistics.median(t) for p, t in peer_ms.items() if t},
            "ups": ups, "mem_ups": mem_ups, "judged": judged, "up": med, "fastest": fastest,
            "want": peer_wants(w, op, list(med), indexed),
            # the peers whose output check failed: their times stay in the
            # comparison, flagged (a faster wrong result is still a peer's time)
            "peer_checks": peer_checks,
            # gclip-bench's check of the result and the data after the runs
            "check_failed": any(r.get("check_failed", False) for timed, rows in indexed
                                for r in rows if r["workload"] == w and r["op"] == op),
        })
    return peers, out


def verdict(row):
    """The targets the row misses (empty when it meets them all)."""
    met = []
    if row.get("untimed"):
        met.append(f"not timed in {len(row['untimed'])} of "
                   f"{len(row['untimed']) + row['runs']} runs ({'; '.join(row['untimed'])})")
    if row.get("check_failed"):
        met.append("output check failed")
    if row["ratio"] is not None and row["ratio"] < ROOFLINE_TARGET:
        met.append(f"roofline < {ROOFLINE_TARGET}")
    if row["fastest"] is None:
        met.append("no peer timed")
    for p, up in row["up"].items():
        if up < row["want"][p]:
            met.append(f"< {row['want'][p]:g}x {p}")
    return met


def spread(values, fmt):
    """'median' for one value, 'median (min-max)' for several, '-' for none."""
    if not values:
        return "-"
    m = fmt.format(statistics.median(values))
    if len(values) < 2:
        return m
    return f"{m} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def speedup_cell(row, p):
    """'time / same memory speed' speed-ups over peer p (the second only
    where the peer's runs had a roofline of their own)."""
    if not row["ups"][p]:
        return "-"
    cell = spread(row["ups"][p], "{:.2f}x")
    if row["mem_ups"][p]:
        cell += " / " + spread(row["mem_ups"][p], "{:.2f}x")
    return cell


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--compact", action="store_true")
    args = ap.parse_args()
    runs = []
    for path in args.json:
        with open(path) as f:
            runs.append(json.load(f))
    peers, rows = summarize(runs, args.backend)
    if len(runs) > 1:
        print(f"Medians of {len(runs)} runs, the range over the runs in parentheses.\n")
    head = ["workload", "op", "gclip ms", "ratio", "naive ms"] + [f"{p} ms" for p in peers] \
        + [f"vs {p}, time / same memory speed" for p in peers] + ["target met"]
    if args.compact:
        head = ["workload", "op", "roofline ratio", "vs fastest peer, same memory speed",
                "vs fastest peer, time", "fastest peer", "target met"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    misses = []
    for row in rows:
        w, op = row["workload"], row["label"]
        met = verdict(row)
        if met:
            misses.append(f"{w} {op}: " + ", ".join(met))
        if args.compact:
            f = row["fastest"]
            cells = [w, op, spread(row["ratios"], "{:.2f}"),
                     spread(row["mem_ups"][f], "{:.2f}x") if f and row["mem_ups"][f] else "-",
                     spread(row["ups"][f], "{:.2f}x") if f else "-",
                     (f + (" (!)" if f in row["peer_checks"] else "")) if f else "-"]
        else:
            naive = row["naive_ms"]
            cells = [w, op, f"{row['ms']:.2f}" if row["ms"] is not None else "-",
                     f"**{spread(row['ratios'], '{:.2f}')}**",
                     f"{naive:.1f}" if naive else "-"]
            cells += [(f"{row['peer_ms'][p]:.2f}" + (" (!)" if p in row["peer_checks"] else ""))
                      if p in row["peer_ms"] else "-" for p in peers]
            cells += [speedup_cell(row, p) for p in peers]
        cells.append("yes" if not met else "no")
        print("| " + " | ".join(cells) + " |")
    print(f"\n{len(misses)} rows below target" + (":" if misses else "."))
    for m in misses:
        print(f"- {m}")
    flagged = [f"- {row['workload']} {row['label']}, {p}: {why}"
               for row in rows for p, why in row["peer_checks"].items()]
    if flagged:
        print(f"\nPeer results that failed their output check: {len(flagged)} (marked (!); "
              "their times are compared as they are):")
        print("\n".join(flagged))


if __name__ == "__main__":
    main()
