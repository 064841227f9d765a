// The total and per-tensor norms of the CPU path are within 1e-6 relative of
// the long-double oracle, for every dtype, norm type, size class and start
// offset, for 1 to 10,000 tensors, and at the extremes of the float range
// (near FLT_MAX, denormals, f16 norms beyond 65504). Norm operations write
// no gradient.
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
    oracle::Rng rng(1000 + static_cast<uint64_t>(dt) * 10 + static_cast<uint64_t>(p * 4));
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

// `n` f32 values with magnitudes uniform in [lo, hi] and random signs.
TestBuffer magnitudes(oracle::Rng &rng, gclip_dtype dt, int64_t n, double lo, double hi, int64_t off)
{
    TestBuffer b(dt, n, off);
    for (int64_t i = 0; i < n; ++i) {
        const double m = rng.uniform(lo, hi);
        b.set(i, static_cast<float>(rng.range(0, 1) ? m : -m));
    }
    return b;
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
