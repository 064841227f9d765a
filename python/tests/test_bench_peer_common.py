"""bench/peer_common.py: a peer's timed runs are paired with roofline passes
as gclip-bench pairs its own (before run k when k is even, after it when k is
odd, none for warm-up runs), and the op's roofline is formed from the passes'
medians as bench_op_roofline forms it."""
import importlib.util
import pathlib
import random
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def pc():
    spec = importlib.util.spec_from_file_location("gclip_bench_peer_common",
                                                  BENCH / "peer_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeRoof:
    """Records the order of passes and steps; pass times from a seeded stream."""

    def __init__(self, pc, log, seed):
        self.log = log
        self.rng = random.Random(seed)
        self.bytes = 256.0 * 2 ** 20
        self.real = pc.Roof.__new__(pc.Roof)  # gbps() only needs .bytes
        self.real.bytes = self.bytes

    def passes(self, op, read_ms, rw_ms):
        self.log.append("roof")
        reads, rws = {"norm": (1, 0), "value": (0, 1), "clip": (1, 1)}[op]
        if reads:
            read_ms.append(self.rng.uniform(4.0, 9.0))
        if rws:
            rw_ms.append(self.rng.uniform(8.0, 16.0))

    def gbps(self, op, read_ms, rw_ms):
        self.last = (list(read_ms), list(rw_ms))
        return self.real.gbps(op, read_ms, rw_ms)


def middle(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


@pytest.mark.parametrize("op", ["norm", "value", "clip"])
@pytest.mark.parametrize("warmup,runs", [(0, 1), (2, 5), (1, 10)])
def test_runs_are_paired_with_passes_and_the_roofline_is_their_op_s(pc, op, warmup, runs):
    log = []
    roof = FakeRoof(pc, log, seed=7 * runs + warmup)
    pc._roof = roof
    try:
        step_no = iter(range(1000))

        def step():
            log.append("step")
            return 1.0 + next(step_no)

        times = pc.run_protocol(lambda writes: log.append("prepare"), True, step, warmup, runs,
                                op)
    finally:
        pc._roof = None
    expect = ["prepare", "step"] * warmup
    for k in range(runs):
        expect += (["roof", "prepare", "step"] if k % 2 == 0 else ["prepare", "step", "roof"])
    assert log == expect
    assert list(times) == [1.0 + warmup + k for k in range(runs)]
    read_ms, rw_ms = roof.last
    reads, rws = pc.PASSES[op]
    # bench_op_roofline: the time of each pass at its own limit, per byte of data
    seconds_per_byte = 0.0
    if reads:
        seconds_per_byte += 1.0 / (roof.bytes / middle(read_ms) / 1e6)
    if rws:
        seconds_per_byte += 2.0 / (2.0 * roof.bytes / middle(rw_ms) / 1e6)
    assert times.roofline_gbps == pytest.approx((reads + 2 * rws) / seconds_per_byte, rel=1e-12)


def test_without_a_roofline_library_nothing_is_paired(pc):
    log = []
    times = pc.run_protocol(lambda writes: log.append("prepare"), False,
                            lambda: log.append("step") or 2.0, 1, 3, "clip")
    assert log == ["prepare", "step"] * 4
    assert times.roofline_gbps is None
    assert list(times) == [2.0, 2.0, 2.0]
