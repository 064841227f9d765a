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


# ---- the peers' output check ------------------------------------------------------------

np = pytest.importorskip("numpy")


def low_dtype(kind):
    """The NumPy dtype a peer would compute a kind in (bf16 from ml_dtypes)."""
    if kind == "bf16":
        return pytest.importorskip("ml_dtypes").bfloat16
    return {"f32": np.float32, "f16": np.float16}[kind]


def peer_data(kinds, seed):
    """Gradient-like data, rounded to each kind, as float64 arrays, and each
    tensor's exact sum of squares (computed here in float64)."""
    rng = np.random.default_rng(seed)
    xs = []
    for k, kind in enumerate(kinds):
        n = int(rng.integers(200, 1000))
        x = rng.standard_normal(n) * 1e-3 * (1 + k % 3)
        xs.append(x.astype(low_dtype(kind)).astype(np.float64))
    return xs, [float(np.dot(x, x)) for x in xs]


def like_a_peer(op, kinds, xs, args):
    """What a peer computes, in the gradient dtype: its norm from float32
    sums (returned where the op returns one) and each tensor times its
    factor, rounded; PyTorch's arithmetic (eps added to the norm)."""
    norms = [np.float32(np.sqrt(np.sum(x.astype(np.float32) ** 2, dtype=np.float32))) for x in xs]
    inv = args.get("inv_scale", 1.0)
    total = float(np.sqrt(np.sum(np.square(norms, dtype=np.float32)))) * inv
    outs = []
    for kind, x, n in zip(kinds, xs, norms):
        dt = low_dtype(kind)
        if op in ("norm", "clip-noop"):
            f = 1.0
        elif op == "value":
            c = float(dt(args["clip_value"]))
            outs.append(np.clip(x, -c, c).astype(dt).astype(np.float64))
            continue
        elif op == "tensor-norm":
            f = min(1.0, args["tensor_max_norm"] / (float(n) + 1e-6))
        else:
            f = min(1.0, args["max_norm"] / (total + 1e-6))
        y = (x * inv).astype(dt).astype(np.float64) if op == "unscale-clip" else x
        outs.append((y * np.float32(f)).astype(dt).astype(np.float64))
    return (total if op in ("norm", "clip", "clip-noop", "unscale-clip") else None), outs


def in_chunks(pc, pairs):
    """Each tensor's (pristine, output) pair as check_output takes it: flat
    chunks, of 128 elements here, so that a tensor spans several."""
    old, pc.CHECK_CHUNK = pc.CHECK_CHUNK, 128
    try:
        return [list(pc.chunks(x.size, lambda a, b, x=x, y=y: (x.ravel()[a:b], y.ravel()[a:b])))
                for x, y in pairs]
    finally:
        pc.CHECK_CHUNK = old


def op_args(op, sq):
    norm = sum(sq) ** 0.5
    return {"norm": {}, "clip": {"max_norm": 0.5 * norm}, "clip-noop": {"max_norm": 2 * norm},
            "value": {"clip_value": (sum(sq) / 3000) ** 0.5},
            "tensor-norm": {"tensor_max_norm": 0.5 * min(s ** 0.5 for s in sq)},
            "unscale-clip": {"max_norm": 0.5 * norm / 1024, "inv_scale": 1 / 1024}}[op]


OPS = ["norm", "clip", "clip-noop", "value", "tensor-norm", "unscale-clip"]
KIND_SETS = [["f32"] * 5, ["f32", "f16", "f16", "f32"], ["bf16", "f32", "bf16"]]


@pytest.fixture(params=[(op, kinds) for kinds in KIND_SETS for op in OPS],
                ids=lambda p: f"{p[0]}-{'+'.join(p[1])}")
def peer_case(request):
    """An op, a list's kinds, its data and sums of squares, the op's
    arguments, and what a peer returns and leaves."""
    op, kinds = request.param
    xs, sq = peer_data(kinds, seed=len(kinds) * 31 + OPS.index(op))
    args = op_args(op, sq)
    norm, outs = like_a_peer(op, kinds, xs, args)
    return op, kinds, xs, sq, args, norm, outs


def test_the_check_passes_what_a_peer_makes_of_the_data(pc, peer_case):
    op, kinds, xs, sq, args, norm, outs = peer_case
    assert pc.check_output(op, kinds, sq, in_chunks(pc, zip(xs, outs)), norm, args) is None
    # the norm alone (JAX's norm op returns no data)
    assert pc.check_output(op, kinds, sq, None, norm, args) is None


def test_the_check_fails_a_step_that_did_not_do_the_op(pc, peer_case):
    op, kinds, xs, sq, args, norm, outs = peer_case
    pairs = list(zip(xs, outs))
    # the float32 tensor of largest norm (a float16 one's unscaled values are
    # subnormal, where the check allows an ulp of each)
    t = max((i for i, k in enumerate(kinds) if k == "f32"), key=lambda i: sq[i])
    if op in ("clip", "tensor-norm", "unscale-clip", "value"):
        # the write skipped on one tensor: its pristine values left
        skipped = [(x, x.copy() if i == t else y) for i, (x, y) in enumerate(pairs)]
        assert "tensor" in pc.check_output(op, kinds, sq, in_chunks(pc, skipped), None, args)
    if op in ("clip", "tensor-norm", "unscale-clip"):
        # the data not restored between runs: a second run of the op on what
        # the first left. unscale-clip unscales twice, which the check sees;
        # clip and tensor-norm find the norm at max_norm already and change
        # next to nothing, which it cannot see: run_protocol's unrestored()
        # does (test_a_missed_restore_fails_the_peer_s_check below)
        _, again = like_a_peer(op, kinds, outs, args)
        twice = list(zip(xs, again))
        found = pc.check_output(op, kinds, sq, in_chunks(pc, twice), None, args)
        if op == "unscale-clip":
            assert "tensor" in found
        else:
            assert found is None
            assert max(np.max(np.abs(a - y)) / np.max(np.abs(y)) for a, y in zip(again, outs)) < 1e-3
    # the exponent of one tensor's largest element two higher
    j = int(np.argmax(np.abs(outs[t])))
    bumped = [(x, y.copy()) for x, y in pairs]
    bumped[t][1][j] *= 4.0
    assert f"tensor {t}: off the expected values" in pc.check_output(
        op, kinds, sq, in_chunks(pc, bumped), None, args) if op not in ("norm", "clip-noop") \
        else True
    assert f"element {j}:" in pc.check_output(op, kinds, sq, in_chunks(pc, bumped), None, args)
    # a NaN
    nan = [(x, y.copy()) for x, y in pairs]
    nan[t][1][j] = np.nan
    why = pc.check_output(op, kinds, sq, in_chunks(pc, nan), None, args)
    assert f"tensor {t}" in why and f"element {j}: nan" in why
    # a NaN in an early chunk stays the one named when later chunks differ too
    if op not in ("norm", "clip-noop"):
        both = [(x, y.copy()) for x, y in nan]
        both[t][1][-1] = both[t][1][-1] * 8 + 1.0
        assert f"element {j}: nan" in pc.check_output(op, kinds, sq, in_chunks(pc, both), None,
                                                      args)
    # a tensor missing from the output
    assert pc.check_output(op, kinds, sq, in_chunks(pc, pairs[:-1]), None, args) == \
        f"{len(kinds) - 1} tensors in the output, expected {len(kinds)}"
    if norm is not None:
        # the norm of other data: what a clip to half the norm leaves
        other = 0.5 * norm
        assert pc.check_output(op, kinds, sq, in_chunks(pc, pairs), other, args).startswith("norm ")


def test_the_factor_follows_the_peer_s_eps(pc):
    # optax divides by the norm without adding eps: on unscaled gradients of
    # norm ~1e-6 that is a factor 2 apart from PyTorch's; the check takes the
    # eps the peer uses
    kinds = ["f32"] * 3
    xs, sq = peer_data(kinds, seed=5)
    inv = 2.0 ** -15
    args = {"max_norm": 0.5 * sum(sq) ** 0.5 * inv, "inv_scale": inv}
    exact = sum(sq) ** 0.5 * inv
    f = inv * args["max_norm"] / exact  # no eps
    pairs = [(x, (x * f).astype(np.float32).astype(np.float64)) for x in xs]
    assert pc.check_output("unscale-clip", kinds, sq, in_chunks(pc, pairs), None,
                           dict(args, eps=0.0)) is None
    assert "tensor 0" in pc.check_output("unscale-clip", kinds, sq, in_chunks(pc, pairs), None, args)


def test_records_carry_the_check_and_the_norm_error(pc):
    class A:
        workload, threads = "resnet50", 2
    times = pc.Times([3.0, 1.0, 2.0])
    kinds = ["f32", "f32"]
    xs, sq = peer_data(kinds, seed=9)
    args = {"max_norm": sum(sq) ** 0.5}
    exact = sum(sq) ** 0.5
    pc.run_check(times, "clip", kinds, sq, in_chunks(pc, [(x, x) for x in xs]),
                 exact * (1 + 3e-6), args)
    rec = pc.record(A, 100, "clip", "cpu", times, "clip_grad_norm_", "torch")
    assert rec["check_failed"] is False and "check" not in rec
    assert rec["norm_error"] == pytest.approx(3e-6, rel=1e-6)
    times = pc.Times([1.0])
    pc.run_check(times, "clip", kinds, sq, in_chunks(pc, [(x, 0.5 * x) for x in xs]), None,
                 args)
    rec = pc.record(A, 100, "clip", "cpu", times, "clip_grad_norm_", "torch")
    assert rec["check_failed"] is True and rec["check"].startswith("tensor 0")
    assert "norm_error" not in rec


@pytest.mark.parametrize("restores", [True, False])
def test_a_missed_restore_fails_the_peer_s_check(pc, restores):
    """unrestored() runs once, after the last run's prepare() and before its
    step; what it finds is the record's check, whatever the output check
    would say."""
    class A:
        workload, threads = "resnet50", 2
    kinds = ["f32", "f32"]
    xs, sq = peer_data(kinds, seed=17)
    data = [x.copy() for x in xs]
    args = {"max_norm": 0.5 * sum(sq) ** 0.5}
    log = []

    def prepare(writes):
        log.append("prepare")
        if restores:
            for d, x in zip(data, xs):
                d[:] = x

    def step():
        log.append("step")
        _, outs = like_a_peer("clip", kinds, data, args)
        for d, y in zip(data, outs):
            d[:] = y
        return 1.0

    def unrestored():
        log.append("unrestored")
        same = all(np.array_equal(d, x) for d, x in zip(data, xs))
        return None if same else "the float32 gradients were not restored before the last run"
    times = pc.run_protocol(prepare, True, step, 1, 3, None, unrestored)
    assert log == ["prepare", "step"] * 3 + ["prepare", "unrestored", "step"]
    pc.run_check(times, "clip", kinds, sq, in_chunks(pc, list(zip(xs, data))), None, args)
    rec = pc.record(A, 100, "clip", "cpu", times, "clip_grad_norm_", "torch")
    if restores:
        assert rec["check_failed"] is False
    else:
        assert rec["check_failed"] is True and "not restored" in rec["check"]
        # the output check alone passes what the unrestored runs left
        assert pc.check_output("clip", kinds, sq, in_chunks(pc, list(zip(xs, data))), None,
                               args) is None


def test_a_peer_without_numpy_is_timed_and_its_record_says_unchecked(pc, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_numpy(name, *a, **k):
        if name == "numpy":
            raise ImportError("No module named 'numpy'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_numpy)
    times = pc.Times([1.0])
    pc.run_check(times, "norm", ["f32"], [4.0], [], 2.0, {})

    class A:
        workload, threads = "gpt2-124m", 2
    rec = pc.record(A, 100, "norm", "cpu", times, "", "torch")
    assert "check_failed" not in rec and rec["unchecked"].startswith("not checked")
    assert rec["norm_error"] == 0.0


def test_eviction_goes_through_the_roofline_library_when_loaded(pc):
    pc._roof = None
    assert pc.evict([(4096, 64)]) is False  # the caller streams its flush buffer

    class Lib:
        calls = []

    class R:
        def evict(self, ptr, nbytes):
            Lib.calls.append((ptr, nbytes))
    pc._roof = R()
    x86 = pc.X86
    try:
        pc.X86 = True
        assert pc.evict(iter([(4096, 64), (8192, 0), (1 << 20, 4096)])) is True
        assert Lib.calls == [(4096, 64), (1 << 20, 4096)]
        # elsewhere bench_evict streams its own buffer whatever the range: once
        pc.X86 = False
        Lib.calls.clear()
        assert pc.evict(iter([(4096, 64), (1 << 20, 4096)])) is True
        assert Lib.calls == [(4096, 64)]
    finally:
        pc._roof = None
        pc.X86 = x86


def test_run_all_prints_an_unchecked_record(pc, capsys):
    # a peer interpreter without NumPy: its records lack check_failed, and
    # run_all must still print them and go on to the next op
    class Args:
        workload, ops, threads, json, roof_lib = "resnet50", "norm,clip", 2, None, None

    class W:
        data_bytes = 1000

    def bench_op(w, op):
        times = pc.Times([1.0, 2.0])
        times.unchecked = "not checked: No module named 'numpy'"
        return times, op
    pc.run_all(Args, ["cpu"], lambda d: W(), bench_op, "torch")
    lines = [__import__("json").loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [(r["op"], r["unchecked"]) for r in lines] == \
        [("norm", "not checked: No module named 'numpy'"), ("clip", "not checked: No module "
                                                          "named 'numpy'")]
    assert not any("check_failed" in r or "error" in r for r in lines)
