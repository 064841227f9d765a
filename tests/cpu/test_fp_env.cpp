// The library computes in the default floating-point environment whatever
// the caller's (host/gclip_internal.h, GCLIP_FP_SCOPE): a caller that
// flushes denormals, rounds upward or unmasks exceptions gets the same bits,
// statuses and results as one that does not, no SIGFPE, and its own
// environment back after every call. The environment is set on the calling
// thread and on the OpenMP threads the library's parallel regions run on,
// and only around the library's calls: the test's own arithmetic runs in the
// default environment.
#include "gclip.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define GCLIP_TEST_MXCSR 1
#endif

using oracle::TestBuffer;

#if GCLIP_TEST_MXCSR
namespace {

constexpr unsigned kDefault = 0x1f80;                     // exceptions masked, nearest
constexpr unsigned kFlushing = kDefault | 0x8000 | 0x0040; // FTZ and DAZ
constexpr unsigned kUpward = kDefault | 0x4000;           // round toward +inf
constexpr unsigned kTowardZero = kDefault | 0x6000;
constexpr unsigned kUnmasked = 0x0000; // every exception unmasked, nearest
constexpr unsigned kFlags = 0x3f;      // the sticky exception flags
constexpr int kPool = 8;               // OpenMP threads given the environment

// Sets `csr` on this thread and on kPool OpenMP threads (libgomp keeps the
// same threads from one team to the next, the library's teams included).
// Returns how many of them read it back.
int set_everywhere(unsigned csr)
{
    int took = 0;
#pragma omp parallel num_threads(kPool) reduction(+ : took)
    {
        _mm_setcsr(csr);
        took += (_mm_getcsr() & ~kFlags) == csr;
    }
    _mm_setcsr(csr);
    return took;
}

// Whether this thread's register holds `csr` once set: not under valgrind,
// whose emulated register keeps only the rounding mode.
bool register_holds(unsigned csr)
{
    _mm_setcsr(csr);
    const bool held = (_mm_getcsr() & ~kFlags) == csr;
    _mm_setcsr(kDefault);
    return held;
}

#define SKIP_UNLESS_HELD(csr)                                                               \
    if (!register_holds(csr))                                                               \
    GTEST_SKIP() << "MXCSR does not hold " << std::hex << (csr)                             \
                 << " here (an emulator such as valgrind keeps only the rounding mode)"

// How many of the kPool OpenMP threads hold `csr` (flags aside).
int threads_holding(unsigned csr)
{
    int n = 0;
#pragma omp parallel num_threads(kPool) reduction(+ : n)
    n += (_mm_getcsr() & ~kFlags) == csr;
    return n;
}

// Runs `call` with `csr` set everywhere, then puts the default back; the
// caller's register as the library left it, with its flags, in *after, and
// how many OpenMP threads still held `csr` in *held.
gclip_status under(unsigned csr, const std::function<gclip_status()> &call, unsigned *after,
                   int *held)
{
    const int took = set_everywhere(csr); // no flag set: the caller's flags stay clear
    const gclip_status s = call();
    *after = _mm_getcsr();
    *held = threads_holding(csr);
    set_everywhere(kDefault);
    EXPECT_EQ(took, kPool);
    return s;
}

// Every tensor's bits, appended to `out`.
void append_bits(std::vector<uint64_t> &out, const std::vector<TestBuffer> &bufs)
{
    for (const TestBuffer &b : bufs)
        for (int64_t i = 0; i < b.numel(); ++i) {
            uint64_t u = b.bits(i);
            if (b.dtype() == GCLIP_F64)
                std::memcpy(&u, static_cast<const char *>(b.data()) + 8 * i, 8);
            out.push_back(u);
        }
}

void append_result(std::vector<uint64_t> &out, gclip_plan *plan)
{
    gclip_result r{};
    out.push_back(static_cast<uint64_t>(gclip_get_result(plan, &r)));
    uint32_t u[3];
    std::memcpy(&u[0], &r.total_norm, 4);
    std::memcpy(&u[1], &r.clip_coef, 4);
    std::memcpy(&u[2], &r.scale, 4);
    out.insert(out.end(), {u[0], u[1], u[2], static_cast<uint64_t>(r.nonfinite),
                          static_cast<uint64_t>(r.applied)});
}

// Every op of the C API on copies of `init`, each call under `csr`, on
// `threads` threads: the statuses, results, tensor norms and gradient bits
// in order. A call that leaves the caller's register other than it was
// (flags included) or the OpenMP threads' environment changed fails the test.
std::vector<uint64_t> run_ops(const std::vector<TestBuffer> &init, int threads, unsigned csr)
{
    std::vector<TestBuffer> bufs = init;
    testutil::PlanPtr plan;
    EXPECT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_plan_set_num_threads(plan.get(), threads), GCLIP_STATUS_SUCCESS);
    gclip_plan *p = plan.get();
    std::vector<float> norms(bufs.size(), -1.0f);
    std::vector<uint64_t> out;
    const auto step = [&](const char *what, const std::function<gclip_status()> &call) {
        unsigned after = 0;
        int held = 0;
        out.push_back(static_cast<uint64_t>(under(csr, call, &after, &held)));
        EXPECT_EQ(after, csr) << what << ": the caller's register was not put back as it was";
        EXPECT_EQ(held, kPool) << what << ": an OpenMP thread's environment was not put back";
        append_result(out, p);
        append_bits(out, bufs);
    };
    for (const float norm_type : {2.0f, 1.0f, INFINITY, 3.5f}) {
        gclip_norm_options o = testutil::norm_options(1.0f, norm_type);
        o.tensor_norms = norms.data();
        step("gclip_total_norm", [&] { return gclip_total_norm(p, &o, nullptr); });
        for (float n : norms) {
            uint32_t u;
            std::memcpy(&u, &n, 4);
            out.push_back(u);
        }
    }
    for (const auto policy : {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_PROPAGATE}) {
        gclip_norm_options o = testutil::norm_options(0.5f);
        o.nonfinite = policy;
        o.inv_scale = 0.75f;
        step("gclip_clip_grad_norm", [&] { return gclip_clip_grad_norm(p, &o, nullptr); });
        step("gclip_clip_grads_with_norm",
             [&] { return gclip_clip_grads_with_norm(p, &o, 3.0f, nullptr, nullptr); });
        o.max_norm = 1e-3f;
        step("gclip_clip_grad_norm_per_tensor",
             [&] { return gclip_clip_grad_norm_per_tensor(p, &o, nullptr); });
        step("gclip_norm_accumulate", [&] { return gclip_norm_accumulate(p, &o, nullptr); });
        step("gclip_norm_finalize",
             [&] { return gclip_norm_finalize(p, &o, nullptr, 0, nullptr); });
        step("gclip_apply_clip_factor", [&] { return gclip_apply_clip_factor(p, nullptr); });
    }
    step("gclip_clip_grad_value", [&] { return gclip_clip_grad_value(p, 2e-39f, nullptr); });
    // a bound that float holds only as a subnormal (2e-39f), and one below it
    step("gclip_clip_grad_value_f64",
         [&] { return gclip_clip_grad_value_f64(p, 2.5e-39, nullptr); });
    step("gclip_clip_grad_value_f64 (below float)",
         [&] { return gclip_clip_grad_value_f64(p, 1e-50, nullptr); });
    // refused before any work: the checks compare the NaN
    gclip_norm_options bad = testutil::norm_options(NAN);
    step("gclip_clip_grad_norm (NaN max_norm)",
         [&] { return gclip_clip_grad_norm(p, &bad, nullptr); });
    step("gclip_clip_grad_value (NaN)", [&] { return gclip_clip_grad_value(p, NAN, nullptr); });
    step("gclip_clip_grad_value_f64 (NaN)",
         [&] { return gclip_clip_grad_value_f64(p, static_cast<double>(NAN), nullptr); });
    return out;
}

// Tensors whose arithmetic meets subnormals everywhere: f32 and f64 made of
// them, f32 near the bottom of the normal range (scaled into subnormals),
// f16 and bf16 with subnormal elements among normal ones.
std::vector<TestBuffer> subnormal_tensors(oracle::Rng &rng)
{
    std::vector<TestBuffer> b;
    b.emplace_back(GCLIP_F32, 70001, 1);
    for (int64_t i = 0; i < b.back().numel(); ++i)
        b.back().set(i, static_cast<float>(std::ldexp(rng.uniform(-1.0, 1.0), -127 - (int)rng.range(0, 20))));
    b.emplace_back(GCLIP_F32, 5000, 0);
    for (int64_t i = 0; i < b.back().numel(); ++i)
        b.back().set(i, static_cast<float>(std::ldexp(rng.uniform(-2.0, 2.0), -126)));
    b.emplace_back(GCLIP_F16, 20000, 3);
    for (int64_t i = 0; i < b.back().numel(); ++i)
        b.back().set(i, static_cast<float>(std::ldexp(rng.uniform(-1.0, 1.0), -14 - (int)rng.range(0, 12))));
    b.emplace_back(GCLIP_BF16, 9000, 0);
    for (int64_t i = 0; i < b.back().numel(); ++i)
        b.back().set(i, static_cast<float>(std::ldexp(rng.uniform(-1.0, 1.0), -120 - (int)rng.range(0, 12))));
    b.emplace_back(GCLIP_F64, 3000, 1);
    double *d = static_cast<double *>(b.back().data());
    for (int64_t i = 0; i < b.back().numel(); ++i)
        d[i] = std::ldexp(rng.uniform(-1.0, 1.0), -1022 - (int)rng.range(0, 30));
    return b;
}

// Tensors with NaN, Inf and squares past float's range.
std::vector<TestBuffer> nonfinite_tensors(oracle::Rng &rng)
{
    std::vector<TestBuffer> b;
    for (const gclip_dtype dt : {GCLIP_F32, GCLIP_F16, GCLIP_BF16}) {
        b.emplace_back(dt, 30000, 0);
        b.back().fill(rng, 1.0);
    }
    b[0].set(17, 3e38f);
    b[0].set(4000, -2.5e38f);
    b[1].set(29999, INFINITY);
    b[2].set(123, NAN);
    b.emplace_back(GCLIP_F32, 1000, 2);
    b.back().fill(rng, 1e30);
    return b;
}

} // namespace

TEST(FpEnvironment, FlushingCallerGetsTheBitsOfTheDefaultEnvironment)
{
    SKIP_UNLESS_HELD(kFlushing);
    oracle::Rng rng(4041);
    const std::vector<TestBuffer> init = subnormal_tensors(rng);
    for (const int threads : {1, 2}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        const std::vector<uint64_t> want = run_ops(init, threads, kDefault);
        const std::vector<uint64_t> got = run_ops(init, threads, kFlushing);
        ASSERT_EQ(want.size(), got.size());
        for (std::size_t i = 0; i < want.size(); ++i)
            ASSERT_EQ(want[i], got[i]) << "record " << i;
    }
    // and the norms are right: the f32 tensor of subnormals and the f16 and
    // bf16 ones with subnormals among them, against the long-double sums of
    // their squares (the f64 tensor's norm is below float's range)
    std::vector<TestBuffer> bufs = init;
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    std::vector<float> norms(bufs.size());
    gclip_norm_options o = testutil::norm_options(1.0f);
    o.tensor_norms = norms.data();
    unsigned after = 0;
    int held = 0;
    ASSERT_EQ(under(kFlushing, [&] { return gclip_total_norm(plan.get(), &o, nullptr); }, &after,
                    &held),
              GCLIP_STATUS_SUCCESS);
    for (const std::size_t k : {std::size_t{0}, std::size_t{2}, std::size_t{3}}) {
        long double s = 0.0L;
        for (int64_t i = 0; i < bufs[k].numel(); ++i)
            s += bufs[k].get_exact(i) * bufs[k].get_exact(i);
        const long double want = std::sqrt(s);
        ASSERT_GT(want, 0.0L);
        EXPECT_LE(std::fabs((norms[k] - want) / want), 1e-6L) << "tensor " << k;
    }
}

TEST(FpEnvironment, UnmaskedExceptionsNeitherTrapNorChangeAResult)
{
    SKIP_UNLESS_HELD(kUnmasked);
    oracle::Rng rng(4042);
    for (const auto &init : {nonfinite_tensors(rng), subnormal_tensors(rng)}) {
        const std::vector<uint64_t> want = run_ops(init, 2, kDefault);
        const std::vector<uint64_t> got = run_ops(init, 2, kUnmasked);
        ASSERT_EQ(want, got);
    }
}

TEST(FpEnvironment, TheCallersRoundingModeIsNotUsed)
{
    oracle::Rng rng(4043);
    std::vector<TestBuffer> init;
    for (const gclip_dtype dt : {GCLIP_F32, GCLIP_F16, GCLIP_BF16, GCLIP_F64}) {
        init.emplace_back(dt, 40000, 1);
        init.back().fill(rng, 1.0);
    }
    SKIP_UNLESS_HELD(kUpward);
    SKIP_UNLESS_HELD(kTowardZero);
    const std::vector<uint64_t> want = run_ops(init, 2, kDefault);
    for (const unsigned csr : {kUpward, kTowardZero})
        EXPECT_EQ(run_ops(init, 2, csr), want) << std::hex << "mxcsr " << csr;
}

#else
TEST(FpEnvironment, FlushingCallerGetsTheBitsOfTheDefaultEnvironment)
{
    GTEST_SKIP() << "the environment is pinned on x86 only (MXCSR)";
}
#endif
