// Vectors of torch.nn.utils.clip_grad_norm_ / clip_grad_value_ on PyTorch
// 1.13.1 (CPU, float32): the returned norm and the exact fp32 gradients
// PyTorch printed (9 significant digits identify a float); the coefficient
// and gradients are also checked against the oracle's arithmetic.
// Where gclip deliberately differs (p = 0, negative max_norm, negative
// clip_value) the call must be rejected with nothing changed.
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <vector>

using oracle::TestBuffer;

namespace {

// f32 tensors holding the given values, each at an odd element offset.
std::vector<TestBuffer> tensors(std::initializer_list<std::initializer_list<float>> lists)
{
    std::vector<TestBuffer> bufs;
    int64_t off = 1;
    for (const auto &l : lists) {
        bufs.emplace_back(GCLIP_F32, static_cast<int64_t>(l.size()), off);
        off += 2;
        int64_t i = 0;
        for (float v : l)
            bufs.back().set(i++, v);
    }
    return bufs;
}

// The float PyTorch printed (9+ significant digits identify a float).
float printed(const char *s) { return std::strtof(s, nullptr); }

void expect_values(const TestBuffer &b, std::initializer_list<const char *> want)
{
    ASSERT_EQ(static_cast<size_t>(b.numel()), want.size());
    int64_t i = 0;
    for (const char *w : want) {
        const float v = printed(w);
        if (std::isnan(v))
            EXPECT_TRUE(std::isnan(b.get(i))) << i;
        else
            EXPECT_EQ(b.get(i), v) << "element " << i << " want " << w;
        ++i;
    }
}

// The same clip by the oracle's arithmetic: the exact norm rounded to float,
// PyTorch's coefficient and x * coef rounded to float, for every element.
void expect_oracle(const std::vector<TestBuffer> &before, const std::vector<TestBuffer> &after,
                   float max_norm, float p)
{
    const float n = static_cast<float>(oracle::norms(before, p).total);
    const float coef = oracle::expected_op_coef(n, max_norm, testutil::norm_options(max_norm, p).eps);
    for (size_t k = 0; k < before.size(); ++k)
        for (int64_t i = 0; i < before[k].numel(); ++i)
            EXPECT_EQ(after[k].get(i), oracle::expected_scaled(before[k].get(i), coef, GCLIP_F32))
                << "tensor " << k << " element " << i;
}

struct ClipRun {
    gclip_status status;        // of the clipping call
    gclip_status result_status; // of gclip_get_result
    gclip_result result;
};

ClipRun clip(std::vector<TestBuffer> &bufs, float max_norm, float p,
         gclip_nonfinite_policy policy = GCLIP_NONFINITE_PROPAGATE)
{
    testutil::PlanPtr plan;
    ClipRun run{};
    run.status = testutil::make_plan(plan, oracle::tensors_of(bufs));
    if (run.status != GCLIP_STATUS_SUCCESS)
        return run;
    gclip_norm_options o = testutil::norm_options(max_norm, p);
    o.nonfinite = policy;
    run.status = gclip_clip_grad_norm(plan.get(), &o, nullptr);
    if (run.status == GCLIP_STATUS_SUCCESS)
        run.result = testutil::result_of(plan.get(), &run.result_status);
    return run;
}

TEST(PyTorchVectors, V1_L2Clip)
{
    auto g = tensors({{3, 4}, {12}});
    const std::vector<TestBuffer> before = g;
    const ClipRun r = clip(g, 6.5f, 2.0f);
    ASSERT_EQ(r.status, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.result.total_norm, 13.0f);
    expect_values(g[0], {"1.499999881", "1.999999881"});
    expect_values(g[1], {"5.999999523"});
    expect_oracle(before, g, 6.5f, 2.0f);
}

TEST(PyTorchVectors, V2_NoClipLeavesGradsBitIdentical)
{
    auto g = tensors({{3, 4}, {12}});
    const uint64_t before = oracle::checksum(g);
    const ClipRun r = clip(g, 20.0f, 2.0f);
    ASSERT_EQ(r.status, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.result.total_norm, 13.0f);
    EXPECT_EQ(r.result.clip_coef, 1.0f);
    EXPECT_EQ(oracle::checksum(g), before);
}

TEST(PyTorchVectors, V3_InfNorm)
{
    auto g = tensors({{-3, 1}, {2, -5}});
    const std::vector<TestBuffer> before = g;
    const ClipRun r = clip(g, 2.0f, INFINITY);
    ASSERT_EQ(r.status, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.result.total_norm, 5.0f);
    expect_values(g[0], {"-1.199999809", "0.399999917"});
    expect_values(g[1], {"0.799999833", "-1.999999523"});
    expect_oracle(before, g, 2.0f, INFINITY);
}

TEST(PyTorchVectors, V4_L1Norm)
{
    auto g = tensors({{1, -2}, {3}});
    const std::vector<TestBuffer> before = g;
    const ClipRun r = clip(g, 3.0f, 1.0f);
    ASSERT_EQ(r.status, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.result.total_norm, 6.0f);
    expect_values(g[0], {"0.499999940", "-0.999999881"});
    expect_values(g[1], {"1.499999762"});
    expect_oracle(before, g, 3.0f, 1.0f);
}

TEST(PyTorchVectors, V5_ZeroNormTypeIsRejected)
{
    // PyTorch counts tensors with a nonzero element (2 here); gclip
    // supports p > 0 only and says so
    auto g = tensors({{0, 0, 5}, {1, 2, 3}, {0, 0}});
    const uint64_t before = oracle::checksum(g);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(g)), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(1.0f, 0.0f);
    EXPECT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_STRNE(gclip_last_error(), "");
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(oracle::checksum(g), before);
}

TEST(PyTorchVectors, V6_ZeroGradsZeroMaxNormStayZero)
{
    auto g = tensors({{0, 0, 0}, {0}});
    const ClipRun r = clip(g, 0.0f, 2.0f);
    ASSERT_EQ(r.status, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.result.total_norm, 0.0f);
    EXPECT_EQ(r.result.nonfinite, 0);
    for (const auto &b : g)
        for (int64_t i = 0; i < b.numel(); ++i)
            EXPECT_EQ(b.get(i), 0.0f); // no NaN
}

TEST(PyTorchVectors, V7_InfUnderPropagate)
{
    auto g = tensors({{1, INFINITY}, {2}});
    const ClipRun r = clip(g, 1.0f, 2.0f, GCLIP_NONFINITE_PROPAGATE);
    ASSERT_EQ(r.status, GCLIP_STATUS_SUCCESS);
    EXPECT_TRUE(std::isinf(r.result.total_norm));
    EXPECT_EQ(r.result.nonfinite, 1);
    expect_values(g[0], {"0", "nan"});
    expect_values(g[1], {"0"});
}

TEST(PyTorchVectors, V7_InfUnderSkipAndErrorIsUntouched)
{
    for (auto policy : {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_ERROR}) {
        auto g = tensors({{1, INFINITY}, {2}});
        const uint64_t before = oracle::checksum(g);
        const ClipRun r = clip(g, 1.0f, 2.0f, policy);
        EXPECT_EQ(oracle::checksum(g), before);
        ASSERT_EQ(r.status, GCLIP_STATUS_SUCCESS);
        // ERROR is PyTorch's error_if_nonfinite: reported by get_result
        EXPECT_EQ(r.result_status,
                  policy == GCLIP_NONFINITE_ERROR ? GCLIP_STATUS_NONFINITE : GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(r.result.nonfinite, 1);
        EXPECT_TRUE(std::isinf(r.result.total_norm));
    }
}

TEST(PyTorchVectors, V8_NegativeMaxNormIsRejected)
{
    // PyTorch would flip the gradients' sign; gclip refuses
    auto g = tensors({{3, 4}});
    const uint64_t before = oracle::checksum(g);
    const ClipRun r = clip(g, -1.0f, 2.0f);
    EXPECT_EQ(r.status, GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(oracle::checksum(g), before);
}

TEST(PyTorchVectors, V9_ValueClip)
{
    auto g = tensors({{-3, 0.5f, 2, NAN}});
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(g)), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_clip_grad_value(plan.get(), 1.0f, nullptr), GCLIP_STATUS_SUCCESS);
    expect_values(g[0], {"-1", "0.5", "1", "nan"});
    // v = -1 (PyTorch: every element -1) is rejected, nothing changes
    const uint64_t before = oracle::checksum(g);
    EXPECT_EQ(gclip_clip_grad_value(plan.get(), -1.0f, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(oracle::checksum(g), before);
}

TEST(PyTorchVectors, NanGradUnderPropagateCorruptsEverything)
{
    auto g = tensors({{1, 2}, {NAN}});
    const ClipRun r = clip(g, 1.0f, 2.0f, GCLIP_NONFINITE_PROPAGATE);
    ASSERT_EQ(r.status, GCLIP_STATUS_SUCCESS);
    EXPECT_TRUE(std::isnan(r.result.total_norm));
    expect_values(g[0], {"nan", "nan"});
    expect_values(g[1], {"nan"});
}

TEST(PyTorchVectors, NanGradUnderDefaultPolicyIsUntouched)
{
    auto g = tensors({{1, 2}, {NAN}});
    const uint64_t before = oracle::checksum(g);
    const ClipRun r = clip(g, 1.0f, 2.0f, GCLIP_NONFINITE_SKIP);
    ASSERT_EQ(r.status, GCLIP_STATUS_SUCCESS);
    EXPECT_TRUE(std::isnan(r.result.total_norm));
    EXPECT_EQ(r.result.nonfinite, 1);
    EXPECT_EQ(oracle::checksum(g), before);
}

} // namespace
