"""bench/table.py: the medians over several gclip-bench runs are taken of
per-run figures (each run's ratio, each run's speed-up over a peer, in time
and at the same memory speed), and the verdict follows the targets. Checked on seeded random runs against sums
written out here."""
import importlib.util
import pathlib
import random

import pytest

TABLE = pathlib.Path(__file__).resolve().parents[2] / "bench" / "table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("gclip_bench_table", TABLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_runs(seed, nruns):
    rng = random.Random(seed)
    runs = []
    for _ in range(nruns):
        run = []
        for w in ("gpt2-124m", "many-small"):
            for op in ("norm", "clip-noop"):
                g = rng.uniform(1.0, 20.0)
                run.append({"workload": w, "op": op, "impl": "gclip", "backend": "cpu",
                            "median_ms": g, "ratio": rng.uniform(0.6, 1.2)})
                run.append({"workload": w, "op": op, "impl": "naive", "backend": "cpu",
                            "median_ms": g * rng.uniform(1.0, 5.0)})
                for peer in ("torch-2.15.0", "jax-0.10.2"):
                    # some peers' runs were paired with roofline passes of their own
                    own = rng.random() < 0.6
                    run.append({"workload": w, "op": op, "impl": peer, "backend": "cpu",
                                "median_ms": g * rng.uniform(0.5, 3.0),
                                "ratio": rng.uniform(0.3, 1.3), "roofline_interleaved": own})
        runs.append(run)
    return runs


def middle(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


@pytest.mark.parametrize("nruns", [1, 2, 3, 5])
def test_medians_are_of_per_run_figures(table, nruns):
    runs = make_runs(1234 + nruns, nruns)
    peers, rows = table.summarize(runs)
    assert peers == ["torch-2.15.0", "jax-0.10.2"]
    assert len(rows) == 4
    for row in rows:
        key = (row["workload"], row["op"])

        def pick(run, impl):
            return next(r for r in run if (r["workload"], r["op"]) == key and r["impl"] == impl)

        ratios = [pick(run, "gclip")["ratio"] for run in runs]
        assert row["ratio"] == pytest.approx(middle(ratios), rel=1e-12)
        judged = {}
        for p in peers:
            in_time, same_memory = [], []
            judged[p] = []
            for run in runs:
                g, r = pick(run, "gclip"), pick(run, p)
                in_time.append(r["median_ms"] / g["median_ms"])
                if r["roofline_interleaved"]:
                    # (B / t_g / R_g) / (B / t_p / R_p): the time ratio times R_p / R_g
                    same_memory.append(g["ratio"] / r["ratio"])
                judged[p].append(same_memory[-1] if r["roofline_interleaved"] else in_time[-1])
            assert row["ups"][p] == pytest.approx(in_time, rel=1e-12)
            assert row["mem_ups"][p] == pytest.approx(same_memory, rel=1e-12)
            assert row["up"][p] == pytest.approx(middle(judged[p]), rel=1e-12)
        fastest = min(peers, key=lambda p: middle(judged[p]))
        assert row["fastest"] == fastest
        # these runs time no peer's clip, so no peer is known to write
        # nothing in its clip-noop: 2x of each there, and on many-small
        want = 2.0 if row["op"] == "clip-noop" or row["workload"] == "many-small" else 1.0
        misses = table.verdict(row)
        assert (middle(ratios) < 0.85) == any(m.startswith("roofline") for m in misses)
        for p in peers:
            assert (middle(judged[p]) < want) == (f"< {want:g}x {p}" in misses)


def test_a_peer_absent_from_some_runs_is_judged_on_the_runs_it_has(table):
    runs = make_runs(99, 3)
    runs[1] = [r for r in runs[1] if r["impl"] != "jax-0.10.2"]
    _, rows = table.summarize(runs)
    for row in rows:
        assert len(row["ups"]["jax-0.10.2"]) == 2
        assert len(row["ups"]["torch-2.15.0"]) == 3


def test_a_row_without_a_peer_or_with_a_failed_check_misses_its_target(table):
    """No peer timed (--quick, a peer skipped or failed): the peer target
    cannot be met. A gclip record whose check failed in any run (gclip-bench
    marks it check_failed): the row fails, whatever its speed."""
    runs = make_runs(5, 2)
    alone = [[r for r in run if r["impl"] in ("gclip", "naive")] for run in runs]
    _, rows = table.summarize(alone)
    assert rows and all(row["fastest"] is None for row in rows)
    assert all("no peer timed" in table.verdict(row) for row in rows)
    _, rows = table.summarize(runs)
    assert not any("no peer timed" in table.verdict(row) for row in rows)
    assert not any("output check failed" in table.verdict(row) for row in rows)
    bad = next(r for r in runs[1] if r["impl"] == "gclip")
    bad["check_failed"] = True
    _, rows = table.summarize(runs)
    failed = [row for row in rows if "output check failed" in table.verdict(row)]
    assert [(row["workload"], row["op"]) for row in failed] == [(bad["workload"], bad["op"])]


@pytest.mark.parametrize("failed_run", [0, 1])
def test_a_gclip_op_that_did_not_run_is_listed_and_misses(table, failed_run, tmp_path, capsys,
                                                          monkeypatch):
    """A gclip op that failed in a run (gclip-bench keeps its record, with
    median_ms null and the reason in its note) keeps its row, whichever run
    failed, and misses its targets; the other runs' figures still show."""
    runs = make_runs(13, 2)
    bad = next(r for r in runs[failed_run] if r["impl"] == "gclip" and r["op"] == "clip-noop")
    bad.update(median_ms=None, ratio=None, note="clip failed: OUT_OF_MEMORY")
    _, rows = table.summarize(runs)
    assert len(rows) == 4
    row = next(r for r in rows if (r["workload"], r["op"]) == (bad["workload"], "clip-noop"))
    assert row["runs"] == 1 and len(row["ratios"]) == 1
    assert row["untimed"] == [f"run {failed_run + 1}: clip failed: OUT_OF_MEMORY"]
    assert any(m.startswith("not timed in 1 of 2 runs") for m in table.verdict(row))
    others = [r for r in rows if r is not row]
    assert all(r["runs"] == 2 and not r["untimed"] for r in others)
    # a run alone with the failed op: its row is printed, below target
    path = tmp_path / "run.json"
    path.write_text(__import__("json").dumps(runs[failed_run]))
    monkeypatch.setattr("sys.argv", ["table.py", str(path)])
    table.main()
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines()
                if ln.startswith(f"| {bad['workload']} | clip-noop |"))
    assert line.endswith("| no |") and "| - |" in line
    assert f"- {bad['workload']} clip-noop: not timed in 1 of 1 runs" in out


def test_spread_names_the_range_only_for_several_runs(table):
    assert table.spread([0.9], "{:.2f}") == "0.90"
    assert table.spread([0.95, 0.8, 1.1], "{:.2f}x") == "0.95x (0.80x-1.10x)"
    assert table.spread([], "{:.2f}") == "-"


def test_rows_of_another_policy_are_labelled_with_it(table):
    # gclip-bench --policy propagate marks gclip's records; the op itself,
    # and so its targets and the peers it is compared with, stay the same
    runs = make_runs(77, 2)
    for run in runs:
        for r in run:
            if r["impl"] == "gclip":
                r["policy"] = "propagate" if r["op"] == "norm" else "skip"
    _, rows = table.summarize(runs)
    labels = {(row["workload"], row["label"]) for row in rows}
    assert labels == {("gpt2-124m", "norm (propagate)"), ("gpt2-124m", "clip-noop"),
                      ("many-small", "norm (propagate)"), ("many-small", "clip-noop")}
    assert all(row["op"] in ("norm", "clip-noop") for row in rows)
    # the verdict's peer target is the op's: 2x for clip-noop and many-small
    missed = {(row["workload"], row["label"]): table.verdict(row) for row in rows}
    for (w, label), met in missed.items():
        row = next(r for r in rows if (r["workload"], r["label"]) == (w, label))
        want = 2.0 if row["op"] == "clip-noop" or w == "many-small" else 1.0
        below = [f"< {want:g}x {p}" for p, up in row["up"].items() if up < want]
        assert [m for m in met if not m.startswith("roofline")] == below


def test_a_peer_whose_output_check_failed_is_flagged_and_still_compared(table, tmp_path,
                                                                        capsys, monkeypatch):
    runs = make_runs(11, 2)
    _, before = table.summarize(runs)
    bad = next(r for r in runs[1] if r["impl"] == "jax-0.10.2" and r["op"] == "clip-noop")
    bad["check_failed"] = True
    bad["check"] = "tensor 3: off the expected values by 1 of their norm"
    _, rows = table.summarize(runs)
    flagged = [(row["workload"], row["op"], row["peer_checks"]) for row in rows if row["peer_checks"]]
    assert flagged == [(bad["workload"], "clip-noop", {"jax-0.10.2": bad["check"]})]
    # the peer's time stays in the comparison: speed-ups and verdicts as before
    assert [(row["up"], table.verdict(row)) for row in rows] == \
        [(row["up"], table.verdict(row)) for row in before]
    path = tmp_path / "run.json"
    path.write_text(__import__("json").dumps(runs[1]))
    monkeypatch.setattr("sys.argv", ["table.py", str(path)])
    table.main()
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines()
                if ln.startswith(f"| {bad['workload']} | clip-noop |"))
    assert f"{bad['median_ms']:.2f} (!)" in line
    assert out.count("(!)") == 2  # the cell, and the note under the table
    assert f"- {bad['workload']} clip-noop, jax-0.10.2: {bad['check']}" in out
    # --compact: the fastest peer's name carries the flag where it is that peer
    monkeypatch.setattr("sys.argv", ["table.py", "--compact", str(path)])
    table.main()
    out = capsys.readouterr().out
    row = next(r for r in table.summarize([runs[1]])[1]
               if (r["workload"], r["op"]) == (bad["workload"], "clip-noop"))
    line = next(ln for ln in out.splitlines()
                if ln.startswith(f"| {bad['workload']} | clip-noop |"))
    assert line.split(" | ")[-2] == row["fastest"] + (" (!)" if row["fastest"] == "jax-0.10.2"
                                                      else "")


def test_a_peer_whose_clip_noop_writes_nothing_is_asked_1x_there(table):
    """2x is asked of clip-noop where the peer does the avoidable work (the
    write of factor 1); a peer whose clip-noop takes about its own norm's
    time, not its clip's, writes nothing either, and 1x is asked of it on
    that row. Three runs of seeded random times: "quiet" writes nothing,
    "loud" writes, "noisy" writes but its clip-noop came out near its norm
    in one run of three. gclip's clip-noop is 1.3x the quiet peer's in
    every run, and at least 2.6x the others' (their norms take 3x as long)."""
    rng = random.Random(4242)
    peers = ("quiet", "loud", "noisy")
    runs = []
    for k in range(3):
        run = []
        for w in ("gpt2-124m", "many-small"):
            base = rng.uniform(10.0, 20.0)
            for p in peers:
                norm = base * (1.0 if p == "quiet" else 3.0) * rng.uniform(0.9, 1.1)
                clip = norm * rng.uniform(2.2, 3.0)
                near_norm = p == "quiet" or (p == "noisy" and k == 1)
                noop = norm * rng.uniform(0.95, 1.15) if near_norm else clip * rng.uniform(0.9, 1.1)
                for op, ms in (("norm", norm), ("clip", clip), ("clip-noop", noop)):
                    run.append({"workload": w, "op": op, "impl": p, "backend": "cpu",
                                "median_ms": ms})
                if p == "quiet":
                    g_noop = noop / 1.3
            for op, ms in (("norm", base), ("clip", 2.5 * base), ("clip-noop", g_noop)):
                run.append({"workload": w, "op": op, "impl": "gclip", "backend": "cpu",
                            "median_ms": ms, "ratio": 0.9})
        runs.append(run)
    indexed = [table.index(run, "cpu") for run in runs]
    _, rows = table.summarize(runs)
    by = {(row["workload"], row["op"]): row for row in rows}
    for w in ("gpt2-124m", "many-small"):
        assert table.writes_nothing(w, "quiet", indexed)
        assert not table.writes_nothing(w, "loud", indexed)
        assert not table.writes_nothing(w, "noisy", indexed)
        noop = by[(w, "clip-noop")]
        assert noop["up"]["quiet"] == pytest.approx(1.3, rel=1e-9)
        assert min(noop["up"]["loud"], noop["up"]["noisy"]) > 2.6
        if w == "gpt2-124m":
            assert noop["want"] == {"quiet": 1.0, "loud": 2.0, "noisy": 2.0}
            assert table.verdict(noop) == []
        else:  # on many-small every peer does avoidable work
            assert noop["want"] == {"quiet": 2.0, "loud": 2.0, "noisy": 2.0}
            assert table.verdict(noop) == ["< 2x quiet"]
    # the norm and clip rows keep the op's target
    assert by[("gpt2-124m", "norm")]["want"] == {p: 1.0 for p in peers}
    assert by[("many-small", "clip")]["want"] == {p: 2.0 for p in peers}
    # 0.9x the quiet peer misses the 1x
    for run in runs:
        pick = {r["impl"]: r for r in run if (r["workload"], r["op"]) == ("gpt2-124m", "clip-noop")}
        pick["gclip"]["median_ms"] = pick["quiet"]["median_ms"] / 0.9
    _, rows = table.summarize(runs)
    noop = next(r for r in rows if (r["workload"], r["op"]) == ("gpt2-124m", "clip-noop"))
    assert table.verdict(noop) == ["< 1x quiet"]


def test_a_peer_whose_clip_hides_its_write_is_asked_2x(table):
    """A peer whose arithmetic costs far more than its bytes (a float16 norm
    done slowly) takes about as long for its clip as for its norm: its times
    cannot tell whether its clip-noop writes, and 2x is asked of it. Here
    its clip takes 1.0-1.2 times its norm in each run, its clip-noop about
    its norm's time."""
    rng = random.Random(4243)
    runs = []
    for _ in range(3):
        norm = rng.uniform(100.0, 200.0)
        clip = norm * rng.uniform(1.0, 1.2)
        noop = norm * rng.uniform(0.97, 1.03)
        run = [{"workload": "mixed-f16", "op": op, "impl": "slow", "backend": "cpu",
                "median_ms": ms} for op, ms in (("norm", norm), ("clip", clip), ("clip-noop", noop))]
        run += [{"workload": "mixed-f16", "op": op, "impl": "gclip", "backend": "cpu",
                 "median_ms": ms / 1.5, "ratio": 0.9}
                for op, ms in (("norm", norm), ("clip", clip), ("clip-noop", noop))]
        runs.append(run)
    indexed = [table.index(run, "cpu") for run in runs]
    assert not table.writes_nothing("mixed-f16", "slow", indexed)
    _, rows = table.summarize(runs)
    noop = next(r for r in rows if r["op"] == "clip-noop")
    assert noop["want"] == {"slow": 2.0}
    assert table.verdict(noop) == ["< 2x slow"]
    # the same times with its clip at 2.5 times its norm: the write shows,
    # and the clip-noop did not pay for one
    for run in runs:
        pick = {(r["impl"], r["op"]): r for r in run}
        pick[("slow", "clip")]["median_ms"] = 2.5 * pick[("slow", "norm")]["median_ms"]
    indexed = [table.index(run, "cpu") for run in runs]
    assert table.writes_nothing("mixed-f16", "slow", indexed)
    _, rows = table.summarize(runs)
    noop = next(r for r in rows if r["op"] == "clip-noop")
    assert noop["want"] == {"slow": 1.0} and table.verdict(noop) == []
