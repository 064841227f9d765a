// The total and per-tensor norms of the CPU path are within 1e-6 relative of
// the long-double oracle, for every dtype, norm type, size class and start
// offset, for 1 to 10,000 tensors, and at the extremes of the float range
// (near FLT_MAX, denormals, f16 norms beyond 65504). Norm operations write
// no gradient.
#include "gclip_dtype.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

using oracle::TestBuffer;

namespace {

// 1e-6 relative; a reference in the denormal range can only be matched to
// the denormal spacing, so there the bound is one FLT_TRUE_MIN.
::testing::AssertionResult norm_close(float got, long double want)
{
    if (std::isfinite(want) && std::fabs(want) < FLT_MIN) {
        if (std::fabs(static_cast<long double>(got) - want) <= FLT_TRUE_MIN)
            return ::testing::AssertionSuccess();
    } else if (oracle::rel_close(got, want, 1e-6L)) {
        return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure()
           << "got " << got << ", oracle " << static_cast<double>(want) << " (rel. error "
           << static_cast<double>(std::fabs((got - want) / want)) << ")";
}

// Runs gclip_total_norm over `bufs` and checks the total, every per-tensor
// norm, the result fields, and that no gradient changed.
void check_norms(const std::vector<TestBuffer> &bufs, float p, float inv_scale = 1.0f,
                 int num_threads = 0)
{
    const auto tensors = oracle::tensors_of(bufs);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, tensors), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    ASSERT_EQ(gclip_plan_set_num_threads(plan.get(), num_threads), GCLIP_STATUS_SUCCESS);
    const uint64_t before = oracle::checksum(bufs);

    // one guard float on each side of the per-tensor output
    std::vector<float> out(tensors.size() + 2, -7.0f);
    gclip_norm_options o = testutil::norm_options(1.0f, p);
    o.inv_scale = inv_scale;
    o.tensor_norms = out.data() + 1;
    ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS) << gclip_last_error();

    const oracle::Norms want = oracle::norms(bufs, p, inv_scale);
    const gclip_result r = testutil::result_of(plan.get());
    EXPECT_TRUE(norm_close(r.total_norm, want.total)) << "p=" << p;
    EXPECT_EQ(r.nonfinite, !std::isfinite(oracle::as_reported(want.total)));
    EXPECT_EQ(r.has_norm, 1);
    EXPECT_EQ(r.clip_coef, 1.0f);
    EXPECT_EQ(r.scale, 1.0f);
    for (size_t i = 0; i < tensors.size(); ++i)
        ASSERT_TRUE(norm_close(out[i + 1], want.per_tensor[i])) << "tensor " << i << " p=" << p;
    EXPECT_EQ(out.front(), -7.0f) << "wrote before tensor_norms";
    EXPECT_EQ(out.back(), -7.0f) << "wrote past tensor_norms";
    EXPECT_EQ(oracle::checksum(bufs), before) << "gclip_total_norm wrote a gradient";
}

const int64_t kSizes[] = {0, 1, 2, 3, 4, 5, 7, 8, 65535, 65536, 65537};
const float kNormTypes[] = {1.0f, 2.0f, 3.0f, INFINITY, 0.5f};

std::string norm_name(float p)
{
    return std::isinf(p) ? "inf" : p == 0.5f ? "half" : std::to_string(static_cast<int>(p));
}

class NormBySize : public ::testing::TestWithParam<std::tuple<gclip_dtype, float>> {};

// Every size class at every start offset modulo 16 bytes, one tensor per
// plan, then all of them in one plan.
TEST_P(NormBySize, EverySizeAtEveryOffsetMatchesTheOracle)
{
    const gclip_dtype dt = std::get<0>(GetParam());
    const float p = std::get<1>(GetParam());
    // p = inf has no integer image: its seed is 99 (converting inf is undefined)
    const uint64_t p_seed = std::isinf(p) ? 99 : static_cast<uint64_t>(p * 4);
    oracle::Rng rng(1000 + static_cast<uint64_t>(dt) * 10 + p_seed);
    const int offsets = dt == GCLIP_F32 ? 4 : 8;
    std::vector<TestBuffer> all;
    for (int64_t n : kSizes) {
        for (int off = 0; off < offsets; ++off) {
            std::vector<TestBuffer> one;
            one.emplace_back(dt, n, off);
            one.back().fill(rng, 2.0);
            check_norms(one, p);
            if (off == n % offsets)
                all.push_back(one.back());
        }
    }
    check_norms(all, p);
}

INSTANTIATE_TEST_SUITE_P(AllDtypesAndNorms, NormBySize,
                         ::testing::Combine(::testing::Values(GCLIP_F32, GCLIP_F16, GCLIP_BF16),
                                            ::testing::ValuesIn(kNormTypes)),
                         [](const auto &tp) {
                             return std::string(oracle::dtype_name(std::get<0>(tp.param))) + "_p" +
                                    norm_name(std::get<1>(tp.param));
                         });

// `count` tensors of random dtype, size (mostly small, some across chunk
// boundaries) and start offset.
std::vector<TestBuffer> random_plan(oracle::Rng &rng, size_t count, int64_t max_small)
{
    std::vector<TestBuffer> bufs;
    bufs.reserve(count);
    for (size_t i = 0; i < count; ++i) {
        const auto dt = static_cast<gclip_dtype>(rng.range(0, 2));
        const int64_t n = rng.range(0, 15) == 0 ? rng.range(65530, 140000) : rng.range(0, max_small);
        bufs.emplace_back(dt, n, rng.range(0, 7));
        bufs.back().fill(rng, rng.uniform(0.01, 10.0));
    }
    return bufs;
}

TEST(NormManyTensors, OneToTenThousandMixedTensors)
{
    oracle::Rng rng(42);
    for (size_t count : {1u, 2u, 3u, 17u, 100u, 1000u}) {
        const auto bufs = random_plan(rng, count, 300);
        for (float p : {2.0f, 1.0f, INFINITY})
            check_norms(bufs, p);
    }
}

TEST(NormManyTensors, TenThousandTensors)
{
    oracle::Rng rng(43);
    std::vector<TestBuffer> bufs;
    for (int i = 0; i < 10000; ++i) {
        bufs.emplace_back(static_cast<gclip_dtype>(i % 3), rng.range(0, 40), rng.range(0, 7));
        bufs.back().fill(rng, 1.0);
    }
    for (float p : kNormTypes)
        check_norms(bufs, p);
}

TEST(NormLarge, MillionsOfElementsAtAnOddOffset)
{
    oracle::Rng rng(44);
    std::vector<TestBuffer> bufs;
    bufs.emplace_back(GCLIP_F32, 3000017, 1);
    bufs.emplace_back(GCLIP_BF16, 1000003, 3);
    bufs.emplace_back(GCLIP_F16, 700001, 5);
    for (auto &b : bufs)
        b.fill(rng, 0.5);
    for (float p : {2.0f, 1.0f, 3.0f, INFINITY})
        check_norms(bufs, p);
}

TEST(NormMixedDtypes, OnePlanMixingAllDtypesMatchesTheOracle)
{
    oracle::Rng rng(45);
    std::vector<TestBuffer> bufs;
    const gclip_dtype order[] = {GCLIP_BF16, GCLIP_F32, GCLIP_F16, GCLIP_F16, GCLIP_F32, GCLIP_BF16};
    for (int i = 0; i < 6; ++i) {
        bufs.emplace_back(order[i], kSizes[(i * 3) % 11] + i, i);
        bufs.back().fill(rng, 1.0 + i);
    }
    for (float p : kNormTypes)
        check_norms(bufs, p);
}

TEST(NormEmpty, EmptyTensorsContributeZero)
{
    std::vector<TestBuffer> bufs;
    bufs.emplace_back(GCLIP_F32, 0, 1);
    bufs.emplace_back(GCLIP_F16, 0);
    for (float p : kNormTypes)
        check_norms(bufs, p); // total 0, each tensor 0
    oracle::Rng rng(46);
    bufs.emplace_back(GCLIP_BF16, 9, 1);
    bufs.back().fill(rng, 1.0);
    for (float p : kNormTypes)
        check_norms(bufs, p);
}

// ---- extremes of the float range --------------------------------------------

// `n` elements of magnitude draw() and random signs.
template <class Draw>
TestBuffer signed_values(gclip_dtype dt, int64_t n, int64_t off, oracle::Rng &rng, Draw draw)
{
    TestBuffer b(dt, n, off);
    for (int64_t i = 0; i < n; ++i) {
        const double m = draw();
        b.set(i, static_cast<float>(rng.range(0, 1) ? m : -m));
    }
    return b;
}

// `n` f32 values with magnitudes uniform in [lo, hi] and random signs.
TestBuffer magnitudes(oracle::Rng &rng, gclip_dtype dt, int64_t n, double lo, double hi, int64_t off)
{
    return signed_values(dt, n, off, rng, [&] { return rng.uniform(lo, hi); });
}

TEST(NormExtremes, ManyValuesNearFltMaxDoNotOverflow)
{
    oracle::Rng rng(47);
    // true norms below FLT_MAX (3.4e38): sqrt(10) * 1e38, 3 * 1e38, ...
    std::vector<TestBuffer> l2;
    l2.push_back(magnitudes(rng, GCLIP_F32, 10, 0.9e38, 1.0e38, 1));
    check_norms(l2, 2.0f);
    check_norms(l2, 3.0f);
    check_norms(l2, INFINITY);
    std::vector<TestBuffer> l1;
    l1.push_back(magnitudes(rng, GCLIP_F32, 3, 0.9e38, 1.0e38, 3));
    check_norms(l1, 1.0f);
    // bf16 shares float's range
    std::vector<TestBuffer> bf;
    bf.push_back(magnitudes(rng, GCLIP_BF16, 10, 0.9e38, 1.0e38, 1));
    check_norms(bf, 2.0f);
    // a single FLT_MAX is its own norm for every p
    std::vector<TestBuffer> one;
    one.emplace_back(GCLIP_F32, 1);
    one.back().set(0, -FLT_MAX);
    for (float p : kNormTypes)
        check_norms(one, p);
}

TEST(NormExtremes, TrueNormAboveFltMaxIsInfAndNonFinite)
{
    oracle::Rng rng(48);
    std::vector<TestBuffer> bufs;
    bufs.push_back(magnitudes(rng, GCLIP_F32, 100, 1e38, 3e38, 2));
    for (float p : {1.0f, 2.0f, 3.0f}) {
        check_norms(bufs, p); // the oracle gives Inf; the flag must follow
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        gclip_norm_options o = testutil::norm_options(1.0f, p);
        ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        const gclip_result r = testutil::result_of(plan.get());
        EXPECT_TRUE(std::isinf(r.total_norm)) << p;
        EXPECT_EQ(r.nonfinite, 1) << p;
    }
}

TEST(NormExtremes, DenormalInputs)
{
    oracle::Rng rng(49);
    // f32 denormals whose norms are normal floats (and, for p = inf, exact)
    std::vector<TestBuffer> f32;
    f32.push_back(magnitudes(rng, GCLIP_F32, 10000, 1e-45, 1e-38, 1));
    for (float p : kNormTypes)
        check_norms(f32, p);
    // a handful of denormals whose norm is itself denormal
    std::vector<TestBuffer> tiny;
    tiny.push_back(magnitudes(rng, GCLIP_F32, 5, 1e-44, 1e-42, 0));
    for (float p : kNormTypes)
        check_norms(tiny, p);
    // f16 subnormals (below 6.1e-5) and bf16 subnormals
    std::vector<TestBuffer> halves;
    halves.push_back(magnitudes(rng, GCLIP_F16, 5000, 6e-8, 6e-5, 3));
    halves.push_back(magnitudes(rng, GCLIP_BF16, 5000, 1e-40, 1e-38, 1));
    for (float p : kNormTypes)
        check_norms(halves, p);
}

TEST(NormExtremes, HalfNormIsFloatNotRoundedToHalf)
{
    oracle::Rng rng(50);
    // 4000 f16 values near 30000: the norm (~1.9e6) is far above f16's 65504
    std::vector<TestBuffer> bufs;
    bufs.push_back(magnitudes(rng, GCLIP_F16, 4000, 20000, 60000, 1));
    for (float p : kNormTypes)
        check_norms(bufs, p);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_total_norm(plan.get(), nullptr, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(plan.get());
    EXPECT_TRUE(std::isfinite(r.total_norm));
    EXPECT_GT(r.total_norm, 65504.0f);
    EXPECT_EQ(r.nonfinite, 0);
}

TEST(NormExtremes, MixedMagnitudesAcrossDtypes)
{
    oracle::Rng rng(51);
    std::vector<TestBuffer> bufs;
    bufs.push_back(magnitudes(rng, GCLIP_F32, 1000, 1e-30, 1e-20, 1));
    bufs.push_back(magnitudes(rng, GCLIP_F16, 1000, 1e-3, 6e4, 0));
    bufs.push_back(magnitudes(rng, GCLIP_BF16, 1000, 1e20, 1e30, 2));
    bufs.push_back(magnitudes(rng, GCLIP_F32, 1000, 1e-40, 1e-38, 3));
    for (float p : kNormTypes)
        check_norms(bufs, p);
}

// ---- float groups at the edges of their safe range (docs/gpu-arithmetic.md) ----
//
// L2 and L1 are summed in float over groups of up to 32 elements and folded
// into double; groups whose float sum overflows, or (L2) falls below 2^-110,
// are summed exactly. Each case puts whole tensors, or single groups, on
// either side of those edges.

// `n` elements with log10|x| uniform in [lo, hi] and random signs.
TestBuffer log_uniform(oracle::Rng &rng, gclip_dtype dt, int64_t n, double lo, double hi,
                       int64_t off)
{
    return signed_values(dt, n, off, rng, [&] { return std::pow(10.0, rng.uniform(lo, hi)); });
}

TEST(NormGroups, SquaresOverflowingFloatInEveryGroup)
{
    oracle::Rng rng(60);
    // |x| in [1e19, 1e37]: every square overflows float, the norm does not
    std::vector<TestBuffer> bufs;
    bufs.push_back(log_uniform(rng, GCLIP_F32, 70001, 19.0, 37.0, 1));
    bufs.push_back(log_uniform(rng, GCLIP_BF16, 9000, 19.0, 37.0, 3));
    for (float p : kNormTypes)
        check_norms(bufs, p);
    // L1 groups near FLT_MAX: 32 of them overflow a float sum
    std::vector<TestBuffer> l1;
    l1.push_back(log_uniform(rng, GCLIP_F32, 5, 37.0, 37.5, 0));
    check_norms(l1, 1.0f);
}

TEST(NormGroups, AllTinyTensors)
{
    oracle::Rng rng(61);
    // squares below 2^-110 (|x| < 2.8e-17) down to denormals: every group
    // takes the exact path; f16's smallest subnormals square to 2^-48, inside
    for (auto range : {std::pair<double, double>{-36.0, -17.0}, {-44.8, -38.0}, {-25.0, -20.0}}) {
        std::vector<TestBuffer> bufs;
        bufs.push_back(log_uniform(rng, GCLIP_F32, 66000, range.first, range.second, 2));
        bufs.push_back(log_uniform(rng, GCLIP_BF16, 7000, range.first, range.second, 5));
        for (float p : kNormTypes)
            check_norms(bufs, p);
    }
    std::vector<TestBuffer> halves;
    halves.push_back(log_uniform(rng, GCLIP_F16, 40000, -7.7, -4.3, 1));
    for (float p : kNormTypes)
        check_norms(halves, p);
}

TEST(NormGroups, HugeAndTinyInTheSameGroups)
{
    oracle::Rng rng(62);
    // 1e-30, 1e30 and ordinary values interleaved: every group mixes them
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_BF16}) {
        TestBuffer b(dt, 3 * 65536 + 11, 3);
        for (int64_t i = 0; i < b.numel(); ++i) {
            const double e = i % 3 == 0 ? rng.uniform(-31, -29) : i % 3 == 1 ? rng.uniform(29, 31)
                                                                             : rng.uniform(-2, 2);
            const double m = std::pow(10.0, e);
            b.set(i, static_cast<float>(rng.range(0, 1) ? m : -m));
        }
        std::vector<TestBuffer> bufs;
        bufs.push_back(b);
        for (float p : kNormTypes)
            check_norms(bufs, p);
    }
    // one tensor of 1e-30s next to one of 1e30s (the tiny one must not vanish
    // from its own per-tensor norm)
    std::vector<TestBuffer> two;
    two.push_back(log_uniform(rng, GCLIP_F32, 50000, -30.5, -29.5, 0));
    two.push_back(log_uniform(rng, GCLIP_F32, 50000, 29.5, 30.5, 1));
    for (float p : kNormTypes)
        check_norms(two, p);
}

TEST(NormGroups, HalfExtremes)
{
    oracle::Rng rng(63);
    // f16 from its largest finite values (65504) to its smallest subnormal
    TestBuffer h(GCLIP_F16, 65536 * 2 + 5, 1);
    for (int64_t i = 0; i < h.numel(); ++i) {
        const double e = i % 2 ? rng.uniform(4.0, 4.8163) : rng.uniform(-7.7, -4.0);
        h.set(i, static_cast<float>(std::pow(10.0, e)) * (i % 3 ? 1.0f : -1.0f));
    }
    h.set(7, 65504.0f);
    h.set(8, oracle::f16_to_float(1)); // 2^-24
    // bf16 across float's whole range
    TestBuffer b(GCLIP_BF16, 65536 + 9, 3);
    for (int64_t i = 0; i < b.numel(); ++i)
        b.set(i, static_cast<float>(std::pow(10.0, rng.uniform(-40.0, 38.3))));
    std::vector<TestBuffer> bufs;
    bufs.push_back(h);
    bufs.push_back(b);
    for (float p : kNormTypes)
        check_norms(bufs, p);
}

TEST(NormGroups, SparseTensorsWithGroupsOfZeros)
{
    oracle::Rng rng(64);
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_F16, GCLIP_BF16}) {
        TestBuffer b(dt, 65536 + 4000, 2);
        for (int64_t i = 0; i < b.numel(); ++i)
            b.set(i, (i / 40) % 7 == 0 ? static_cast<float>(rng.normal(1.0)) : (i % 2 ? -0.0f : 0.0f));
        std::vector<TestBuffer> bufs;
        bufs.push_back(b);
        for (float p : kNormTypes)
            check_norms(bufs, p);
    }
}

// ---- f16/bf16 conversions against the oracle's (docs/gpu-arithmetic.md) ----
//
// The software conversions must give the GPU conversion instructions'
// results: round to nearest even with subnormals, every NaN to the canonical
// NaN (0x7fff, or 0x7fffffff for f32).

TEST(NormConversions, EveryHalfToFloat)
{
    for (uint32_t h = 0; h < 65536; ++h) {
        const uint16_t u = static_cast<uint16_t>(h);
        const float f16 = gclip_f16_to_f32(u), bf16 = gclip_bf16_to_f32(u);
        const float want16 = oracle::f16_to_float(u), want_bf = oracle::bf16_to_float(u);
        if (std::isnan(want16))
            ASSERT_EQ(oracle::float_to_bits(f16), 0x7fffffffu) << std::hex << h;
        else
            ASSERT_EQ(oracle::float_to_bits(f16), oracle::float_to_bits(want16)) << std::hex << h;
        // bf16 widens by a shift: every pattern, NaN payloads included
        ASSERT_EQ(oracle::float_to_bits(bf16), h << 16) << std::hex << h;
        if (!std::isnan(want_bf))
            ASSERT_EQ(bf16, want_bf) << std::hex << h;
    }
}

// Every float on a rounding boundary of each format (the midpoints between
// neighbouring halves, one float ulp either side), every representable half,
// float NaNs of many payloads and a sample of 2^22 random floats.
TEST(NormConversions, FloatToHalfAtEveryRoundingBoundary)
{
    std::vector<uint32_t> probes;
    for (uint32_t h = 0; h < 0x7c00; ++h) { // f16: the midpoint to the next half
        const float lo = oracle::f16_to_float(static_cast<uint16_t>(h));
        const float hi = h + 1 < 0x7c00 ? oracle::f16_to_float(static_cast<uint16_t>(h + 1)) : 65520.0f;
        const uint32_t mid = oracle::float_to_bits(static_cast<float>((static_cast<double>(lo) + hi) / 2));
        for (uint32_t b : {oracle::float_to_bits(lo), mid - 1, mid, mid + 1})
            for (uint32_t sign : {0u, 0x80000000u})
                probes.push_back(b | sign);
    }
    for (uint32_t h = 0; h < 0x7f80; ++h) // bf16: the midpoint is bits h.8000
        for (uint32_t low : {0x0000u, 0x7fffu, 0x8000u, 0x8001u})
            for (uint32_t sign : {0u, 0x80000000u})
                probes.push_back(((h << 16) | low) | sign);
    oracle::Rng rng(65);
    for (int i = 0; i < (1 << 22); ++i)
        probes.push_back(static_cast<uint32_t>(rng.engine()()));
    for (uint32_t m = 1; m < (1u << 23); m = m * 3 + 1)
        for (uint32_t sign : {0u, 0x80000000u})
            probes.push_back(sign | 0x7f800000u | m);
    probes.push_back(0x7f800000u);
    probes.push_back(0xff800000u);
    for (uint32_t u : probes) {
        const float f = oracle::bits_to_float(u);
        const uint16_t h = gclip_f32_to_f16(f), b = gclip_f32_to_bf16(f);
        if (std::isnan(f)) {
            ASSERT_EQ(h, 0x7fff) << std::hex << u;
            ASSERT_EQ(b, 0x7fff) << std::hex << u;
        } else {
            ASSERT_EQ(h, oracle::float_to_f16(f)) << std::hex << u;
            ASSERT_EQ(b, oracle::float_to_bf16(f)) << std::hex << u;
        }
    }
}

// ---- inv_scale: the norm is that of the unscaled gradients ---------------------

TEST(NormInvScale, ReportedNormIsOfTheUnscaledGradients)
{
    oracle::Rng rng(52);
    std::vector<TestBuffer> bufs;
    bufs.push_back(magnitudes(rng, GCLIP_F32, 5000, 1e3, 1e5, 1)); // loss scale 65536 applied
    bufs.push_back(magnitudes(rng, GCLIP_F16, 700, 1, 6e4, 1));
    bufs.push_back(magnitudes(rng, GCLIP_BF16, 65537, 1e2, 1e6, 0));
    for (float inv : {1.0f / 65536, 0.3f, 8.0f})
        for (float p : kNormTypes)
            check_norms(bufs, p, inv);
}

} // namespace
