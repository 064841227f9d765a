// Adaptive clipping on the CPU path (include/gclip_adapt.h): vectors derived
// by hand (ZClip in its three modes, AutoClip), the
// warm-up boundary and first step of each method, spikes, NaN norms that
// must not enter the statistics, checkpoints that resume bit for bit,
// invalid hyperparameters and foreign checkpoint bytes.
#include "gclip_adapt.h"
#include "gclip_adapt_math.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

using testutil::PlanPtr;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kInfD = std::numeric_limits<double>::infinity();

struct AdaptiveDeleter {
    void operator()(gclip_adaptive *a) const { gclip_adaptive_destroy(a); }
};
using AdaptivePtr = std::unique_ptr<gclip_adaptive, AdaptiveDeleter>;

// A set of f32 gradient tensors, a CPU plan over them and an adaptive.
struct Model {
    std::vector<std::vector<float>> grads;
    PlanPtr plan;
    AdaptivePtr ad;

    Model(const std::vector<int64_t> &sizes, const gclip_adaptive_options &o)
    {
        for (int64_t n : sizes)
            grads.emplace_back(static_cast<size_t>(n), 0.0f);
        std::vector<gclip_tensor> t;
        for (auto &g : grads)
            t.push_back(gclip_tensor{g.data(), static_cast<int64_t>(g.size()), GCLIP_F32});
        EXPECT_EQ(testutil::make_plan(plan, t), GCLIP_STATUS_SUCCESS);
        gclip_adaptive *a = nullptr;
        EXPECT_EQ(gclip_adaptive_create(&a, plan.get(), &o), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        ad.reset(a);
    }
    gclip_status step(const gclip_norm_options *base = nullptr)
    {
        return gclip_adaptive_step(ad.get(), base, nullptr);
    }
    gclip_adaptive_info info()
    {
        gclip_adaptive_info i{};
        EXPECT_EQ(gclip_adaptive_get_info(ad.get(), &i), GCLIP_STATUS_SUCCESS);
        return i;
    }
    std::vector<unsigned char> state()
    {
        size_t n = 0;
        EXPECT_EQ(gclip_adaptive_state_size(ad.get(), &n), GCLIP_STATUS_SUCCESS);
        std::vector<unsigned char> b(n);
        EXPECT_EQ(gclip_adaptive_export(ad.get(), b.data(), n), GCLIP_STATUS_SUCCESS);
        return b;
    }
    // The shared scalars of the exported state (after its 32-byte header).
    gclip_adapt_scalars scalars()
    {
        const std::vector<unsigned char> b = state();
        gclip_adapt_scalars s;
        std::memcpy(&s, b.data() + 32, sizeof s);
        return s;
    }
    const gclip_device_result &slot() const
    {
        const gclip_device_result *r = nullptr;
        EXPECT_EQ(gclip_plan_device_result(plan.get(), &r), GCLIP_STATUS_SUCCESS);
        return *r;
    }
};

// A one-element plan: its norm is |x|, so every vector's norm is exact.
struct Scalar : Model {
    explicit Scalar(const gclip_adaptive_options &o) : Model({1}, o) {}
    float step_with(float norm)
    {
        grads[0][0] = norm;
        EXPECT_EQ(step(), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        return grads[0][0];
    }
};

gclip_adaptive_options zclip(uint32_t warmup, double max_norm)
{
    gclip_adaptive_options o = GCLIP_ADAPTIVE_OPTIONS_INIT;
    o.method = GCLIP_ADAPTIVE_ZCLIP;
    o.zclip_warmup_steps = warmup;
    o.zclip_max_grad_norm = max_norm;
    return o;
}

// Seeded normal data of scale s in every tensor (never all zeros).
void fill(Model &m, std::mt19937_64 &rng, float s)
{
    std::normal_distribution<float> nd(0.0f, s);
    for (auto &g : m.grads)
        for (float &x : g)
            x = nd(rng);
}

// ---- ZClip --------------------------------------------------------------------

// A ZClip vector derived by hand: warm-up 2, no cap. Norms 1, 3 give mean 2, var 1;
// g = 7 is an outlier (z = 4.999995): T = 3.25000125, coef 0.46428583, and
// the EMAs take in T; g = 2.5 is not clipped.
TEST(AdaptiveZClip, Vector14ZScoreAdaptiveScaling)
{
    Scalar m(zclip(2, kInfD));
    EXPECT_EQ(m.step_with(1.0f), 1.0f);
    EXPECT_EQ(m.info().warmup, 1);
    EXPECT_EQ(m.step_with(3.0f), 3.0f);
    gclip_adapt_scalars s = m.scalars();
    EXPECT_EQ(s.mean, 2.0);
    EXPECT_EQ(s.var, 1.0);

    const float g = m.step_with(7.0f);
    const gclip_adaptive_info i = m.info();
    EXPECT_EQ(i.spike, 1);
    EXPECT_EQ(i.warmup, 0);
    EXPECT_NEAR(i.threshold, 3.25000125, 1e-6);
    EXPECT_NEAR(i.clip_coef, 0.46428583, 1e-7);
    EXPECT_EQ(m.slot().clip_coef, i.clip_coef);
    EXPECT_EQ(g, 7.0f * i.clip_coef);
    // exactly the reference's double arithmetic
    const double z = (7.0 - 2.0) / (1.0 + 1e-6);
    const double t = 2.0 + 2.5 * 1.0 / (z / 2.5);
    const double mean = 0.97 * 2.0 + (1 - 0.97) * t;
    const double var = 0.97 * 1.0 + (1 - 0.97) * (t - mean) * (t - mean);
    s = m.scalars();
    EXPECT_EQ(s.mean, mean);
    EXPECT_NEAR(s.var, var, 1e-15);
    EXPECT_NEAR(s.mean, 2.0375000375, 1e-9);
    EXPECT_NEAR(s.var, 1.0141047757, 1e-9);

    EXPECT_EQ(m.step_with(2.5f), 2.5f);
    EXPECT_EQ(m.info().spike, 0);
    s = m.scalars();
    EXPECT_NEAR(s.mean, 2.051375036, 1e-9);
    EXPECT_NEAR(s.var, 0.9897195632, 1e-9);
}

TEST(AdaptiveZClip, Vector14ModeMeanAndPercentile)
{
    gclip_adaptive_options o = zclip(2, kInfD);
    o.zclip_clip_option = GCLIP_ZCLIP_MEAN;
    Scalar mean_mode(o);
    mean_mode.step_with(1.0f);
    mean_mode.step_with(3.0f);
    mean_mode.step_with(7.0f);
    EXPECT_NEAR(mean_mode.info().clip_coef, 0.28571424, 1e-7);
    EXPECT_EQ(mean_mode.info().threshold, 2.0f);

    o = zclip(2, kInfD);
    o.zclip_mode = GCLIP_ZCLIP_PERCENTILE;
    Scalar pct(o);
    pct.step_with(1.0f);
    pct.step_with(3.0f);
    pct.step_with(7.0f);
    EXPECT_EQ(pct.info().threshold, 4.5f);
    EXPECT_NEAR(pct.info().clip_coef, 0.64285705, 1e-7);
    // the EMAs took in T = 4.5
    const double mean = 0.97 * 2.0 + (1 - 0.97) * 4.5;
    EXPECT_EQ(pct.scalars().mean, mean);
}

// Warm-up clips to max_grad_norm with PyTorch's arithmetic; the step that
// fills the buffer is still a warm-up step; the cap applies afterwards.
TEST(AdaptiveZClip, WarmupClipsToMaxGradNormAndBoundary)
{
    Scalar m(zclip(3, 1.0));
    const float c1 = 1.0f * (1.0f / (3.0f + 1e-6f));
    EXPECT_EQ(m.step_with(3.0f), 3.0f * c1);
    EXPECT_EQ(m.step_with(0.5f), 0.5f); // coef clamps to 1
    EXPECT_EQ(m.step_with(0.7f), 0.7f);
    EXPECT_EQ(m.info().warmup, 1);
    EXPECT_EQ(m.scalars().steps, 3u);
    m.step_with(0.6f);
    EXPECT_EQ(m.info().warmup, 0);
    // a norm above the cap but no outlier: limit = min(g, 1) = 1
    Scalar cap(zclip(2, 1.0));
    cap.step_with(2.0f);
    cap.step_with(2.2f);
    const float g = cap.step_with(2.1f);
    EXPECT_EQ(cap.info().spike, 0);
    EXPECT_EQ(cap.info().threshold, 1.0f);
    EXPECT_EQ(g, 2.1f * (float)(1.0 / (2.1f + (double)1e-6f)));
}

TEST(AdaptiveZClip, SkipUpdateOnSpikeLeavesTheEmas)
{
    gclip_adaptive_options o = zclip(2, kInfD);
    o.zclip_skip_update_on_spike = 1;
    Scalar m(o);
    m.step_with(1.0f);
    m.step_with(3.0f);
    m.step_with(7.0f);
    EXPECT_EQ(m.info().spike, 1);
    EXPECT_EQ(m.scalars().mean, 2.0);
    EXPECT_EQ(m.scalars().var, 1.0);
    EXPECT_EQ(m.scalars().spikes, 1u);
}

// ---- AutoClip -------------------------------------------------------------------

gclip_adaptive_options autoclip(double q, uint32_t history, int global)
{
    gclip_adaptive_options o = GCLIP_ADAPTIVE_OPTIONS_INIT;
    o.method = GCLIP_ADAPTIVE_AUTOCLIP;
    o.autoclip_quantile = q;
    o.autoclip_history_length = history;
    o.autoclip_global = global;
    return o;
}

// An AutoClip vector, derived by hand as QuantileClip computes it: after norms
// 1, 2, 3, 4, 10 the 10th percentile is 1.4 and a norm of 10 is clipped by
// 0.139999986. The first step does not clip (threshold +Inf).
TEST(AdaptiveAutoClip, Vector15AndFirstStep)
{
    Scalar m(autoclip(0.1, 1000, 1));
    EXPECT_EQ(m.step_with(1.0f), 1.0f);
    EXPECT_TRUE(std::isinf(m.info().threshold));
    for (float x : {2.0f, 3.0f, 4.0f, 10.0f})
        m.step_with(x);
    const float g = m.step_with(10.0f);
    EXPECT_NEAR(m.info().threshold, 1.4f, 1e-7);
    EXPECT_NEAR(m.info().clip_coef, 0.139999986, 2e-8);
    // clip_grad_norm_ takes the threshold as a Python float: T * (1 / (N + eps))
    EXPECT_EQ(m.info().clip_coef, m.info().threshold * (1.0f / (10.0f + 1e-6f)));
    EXPECT_EQ(g, 10.0f * m.info().clip_coef);
}

// The history keeps the last history_length norms: after 1, 2, 3, 100 with
// a history of 3, the median is that of 2, 3, 100.
TEST(AdaptiveAutoClip, HistoryKeepsTheLastValues)
{
    Scalar m(autoclip(0.5, 3, 1));
    for (float x : {1.0f, 2.0f, 3.0f, 100.0f})
        m.step_with(x);
    m.step_with(50.0f);
    EXPECT_EQ(m.info().threshold, 3.0f);
    m.step_with(0.5f);
    EXPECT_EQ(m.info().threshold, 50.0f); // median of 3, 100, 50
}

// Per tensor: each tensor has its own history and factor.
TEST(AdaptiveAutoClip, PerTensorHistories)
{
    Model m({2, 3}, autoclip(0.5, 10, 0));
    std::mt19937_64 rng(5);
    for (int s = 0; s < 5; ++s) {
        fill(m, rng, 1.0f);
        ASSERT_EQ(m.step(), GCLIP_STATUS_SUCCESS);
    }
    // tensor 1 spikes alone: only it is clipped
    fill(m, rng, 1.0f);
    for (float &x : m.grads[1])
        x *= 100.0f;
    const std::vector<float> t0 = m.grads[0];
    ASSERT_EQ(m.step(), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(m.grads[0], t0);
    EXPECT_EQ(m.info().clipped, 1u);
    EXPECT_EQ(m.slot().op, GCLIP_OP_ADAPTIVE_CLIP);
    EXPECT_EQ(m.slot().scale, 1.0f);
}

// ---- AdaGC ----------------------------------------------------------------------

gclip_adaptive_options adagc(uint32_t warmup)
{
    gclip_adaptive_options o = GCLIP_ADAPTIVE_OPTIONS_INIT;
    o.method = GCLIP_ADAPTIVE_ADAGC;
    o.adagc_warmup_steps = warmup;
    return o;
}

// First step: global clip to lambda_abs = 1 (scale = 1 * (1 / (5 + 1e-8))),
// gamma = the clipped norms. Steps 1 and 2 of warm-up 3 are warm-up, step 3
// is per tensor: h_i = min(1, 1.05 * gamma_i / ||g_i||) and gamma lerps.
TEST(AdaptiveAdaGC, WarmupBoundaryAndFirstStep)
{
    Model m({1, 1}, adagc(3));
    const float eps = 1e-8f;
    m.grads[0][0] = 3.0f;
    m.grads[1][0] = 4.0f;
    ASSERT_EQ(m.step(), GCLIP_STATUS_SUCCESS);
    const float scale = 1.0f * (1.0f / (5.0f + eps));
    EXPECT_EQ(m.info().warmup, 1);
    EXPECT_EQ(m.grads[0][0], 3.0f * scale);
    EXPECT_EQ(m.grads[1][0], 4.0f * scale);
    float gamma0 = 3.0f * scale, gamma1 = 4.0f * scale;

    // step 2, still warm-up: gamma = min(gamma, clipped norm)
    m.grads[0][0] = 0.1f;
    m.grads[1][0] = 0.2f;
    ASSERT_EQ(m.step(), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(m.info().warmup, 1);
    EXPECT_EQ(m.grads[0][0], 0.1f); // norm below lambda_abs: scale 1
    gamma0 = std::min(gamma0, 0.1f);
    gamma1 = std::min(gamma1, 0.2f);

    // step 3: per tensor
    m.grads[0][0] = 5.0f;
    m.grads[1][0] = 0.01f;
    ASSERT_EQ(m.step(), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(m.info().warmup, 0);
    const float h0 = std::min((1.05f * std::max(gamma0, eps)) / 5.0f, 1.0f);
    EXPECT_EQ(m.grads[0][0], 5.0f * h0);
    EXPECT_EQ(m.grads[1][0], 0.01f); // h = 1
    EXPECT_EQ(m.info().clipped, 1u);
    // gamma after torch.lerp with weight 1 - 0.98 (< 0.5): start + w (end -
    // start), the difference rounded, then the product and sum rounded once
    const float w = (float)(1.0 - 0.98);
    const float g0 = std::fma(w, 5.0f * h0 - gamma0, gamma0);
    const std::vector<unsigned char> st = m.state();
    float gamma[2];
    std::memcpy(gamma, st.data() + 32 + sizeof(gclip_adapt_scalars), sizeof gamma);
    EXPECT_EQ(gamma[0], g0);
}

// NaNs the coefficients make from numbers (0 / 0, Inf * 0) are the canonical
// NaN 0x7fffffff, as a GPU's arithmetic makes them (x86 makes 0xffc00000),
// so the CPU path and the kernels keep the same bits in the state and the
// gradients: AdaGC with eps 0 past its warm-up, where a tensor's gamma and
// norm are both 0 (SKIP, a finite norm); AutoClip's first coefficient from an
// Inf norm under PROPAGATE (its threshold is +Inf then).
TEST(AdaptiveNaNBits, CoefficientsMadeFromNumbersAreTheCanonicalNaN)
{
    gclip_adaptive_options o = adagc(2);
    o.adagc_eps = 0.0f;
    Model m({3, 2}, o);
    const float x[][2] = {{0.0f, 0.5f}, {0.0f, 0.25f}, {0.0f, 0.25f}, {1.5f, 0.25f}};
    for (int k = 0; k < 4; ++k) {
        for (float &v : m.grads[0])
            v = x[k][0];
        for (float &v : m.grads[1])
            v = x[k][1];
        ASSERT_EQ(m.step(), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    }
    // step 1 (t = 2, past the warm-up of 2): gamma 0 (from step 0) and norm 0
    // give 0 / 0 for tensor 0, whose gamma then holds the NaN; step 3 scales
    // its 1.5s by it
    const std::vector<unsigned char> st = m.state();
    float gamma[2];
    std::memcpy(gamma, st.data() + 32 + sizeof(gclip_adapt_scalars), sizeof gamma);
    EXPECT_EQ(oracle::float_to_bits(gamma[0]), 0x7fffffffu);
    EXPECT_TRUE(std::isfinite(gamma[1]));
    for (float v : m.grads[0])
        EXPECT_EQ(oracle::float_to_bits(v), 0x7fffffffu);
    for (float v : m.grads[1])
        EXPECT_TRUE(std::isfinite(v));

    Model a({4}, autoclip(0.5, 8, 1));
    a.grads[0] = {1.0f, std::numeric_limits<float>::infinity(), 2.0f, 3.0f};
    gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
    base.nonfinite = GCLIP_NONFINITE_PROPAGATE;
    ASSERT_EQ(a.step(&base), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_EQ(oracle::float_to_bits(a.info().clip_coef), 0x7fffffffu);
    EXPECT_EQ(oracle::float_to_bits(a.grads[0][0]), 0x7fffffffu); // 1 * NaN
}

// ---- spike step-skip -------------------------------------------------------------

gclip_adaptive_options spike()
{
    gclip_adaptive_options o = GCLIP_ADAPTIVE_OPTIONS_INIT;
    o.method = GCLIP_ADAPTIVE_SPIKE_SKIP;
    return o;
}

// Window 128, at least 20 values, sigma 6: a spike among 19 values is not
// skipped (and enters the window); with 20 values it is skipped, stays out
// of the window, and no gradient is written either way.
TEST(AdaptiveSpikeSkip, MinValuesWindowAndSigma)
{
    Scalar m(spike());
    std::mt19937_64 rng(3);
    std::normal_distribution<float> nd(1.0f, 0.01f);
    for (int k = 0; k < 19; ++k)
        m.step_with(nd(rng));
    EXPECT_EQ(m.step_with(100.0f), 100.0f);
    EXPECT_EQ(m.info().spike, 0);
    EXPECT_EQ(m.info().warmup, 1);
    EXPECT_EQ(m.slot().flags & GCLIP_RESULT_SKIP_STEP, 0);

    Scalar s(spike());
    for (int k = 0; k < 20; ++k)
        s.step_with(nd(rng));
    EXPECT_EQ(s.step_with(100.0f), 100.0f);
    EXPECT_EQ(s.info().spike, 1);
    EXPECT_EQ(s.info().recorded, 0);
    EXPECT_NE(s.slot().flags & GCLIP_RESULT_SKIP_STEP, 0);
    EXPECT_EQ(s.slot().op, GCLIP_OP_ADAPTIVE_SKIP);
    EXPECT_EQ(s.scalars().filled, 20u);
    s.step_with(nd(rng));
    EXPECT_EQ(s.slot().flags & GCLIP_RESULT_SKIP_STEP, 0);
    EXPECT_EQ(s.scalars().filled, 21u);
}

// The threshold is mean + sigma * std with the unbiased std, in double.
TEST(AdaptiveSpikeSkip, ThresholdUsesTheUnbiasedStd)
{
    gclip_adaptive_options o = spike();
    o.spike_min_values = 3;
    o.spike_sigma = 2.0;
    Scalar m(o);
    for (float x : {1.0f, 2.0f, 3.0f})
        m.step_with(x);
    m.step_with(4.0f); // z = (4 - 2) / 1 = 2: not above sigma
    EXPECT_EQ(m.info().spike, 0);
    EXPECT_EQ(m.info().threshold, 4.0f);
    // window 1, 2, 3, 4: mean 2.5, std sqrt(5/3)
    m.step_with(5.2f);
    EXPECT_EQ(m.info().spike, 1);
    EXPECT_EQ(m.info().threshold, (float)(2.5 + 2.0 * std::sqrt(5.0 / 3.0)));
}

// ---- every method: NaN, checkpoints, replays ---------------------------------------

std::vector<gclip_adaptive_options> every_method()
{
    gclip_adaptive_options z = zclip(5, 1.0);
    gclip_adaptive_options zp = zclip(5, kInfD);
    zp.zclip_mode = GCLIP_ZCLIP_PERCENTILE;
    return {z, zp, autoclip(0.9, 7, 0), autoclip(0.25, 7, 1), adagc(4), [] {
                gclip_adaptive_options o = spike();
                o.spike_window = 8;
                o.spike_min_values = 4;
                o.spike_sigma = 2.0;
                return o;
            }()};
}

// Seeded training-like norms with a spike every 13 steps.
void train_step(Model &m, std::mt19937_64 &rng, int k)
{
    fill(m, rng, (k % 13 == 12) ? 50.0f : 1.0f);
}

// `steps` training-like steps, each accepted.
void warm_up(Model &m, std::mt19937_64 &rng, int steps)
{
    for (int k = 0; k < steps; ++k) {
        train_step(m, rng, k);
        ASSERT_EQ(m.step(), GCLIP_STATUS_SUCCESS);
    }
}

void expect_grads_unchanged(const std::vector<std::vector<float>> &before, const Model &m)
{
    for (size_t t = 0; t < before.size(); ++t)
        EXPECT_EQ(std::memcmp(before[t].data(), m.grads[t].data(), before[t].size() * 4), 0)
            << "tensor " << t;
}

TEST(AdaptiveEveryMethod, NanNormNeverEntersTheStatistics)
{
    for (const gclip_adaptive_options &o : every_method()) {
        SCOPED_TRACE(o.method);
        Model m({3, 70000, 5}, o);
        std::mt19937_64 rng(9);
        warm_up(m, rng, 12);
        const std::vector<unsigned char> before = m.state();
        fill(m, rng, 1.0f);
        m.grads[1][17] = kNaN;
        const std::vector<std::vector<float>> grads = m.grads;
        ASSERT_EQ(m.step(), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(m.state(), before);
        EXPECT_EQ(m.slot().nonfinite, 1);
        EXPECT_EQ(m.info().recorded, 0);
        expect_grads_unchanged(grads, m);
        // the error policy reports it
        gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
        base.nonfinite = GCLIP_NONFINITE_ERROR;
        ASSERT_EQ(m.step(&base), GCLIP_STATUS_SUCCESS);
        gclip_result r{};
        EXPECT_EQ(gclip_get_result(m.plan.get(), &r), GCLIP_STATUS_NONFINITE);
        EXPECT_EQ(m.state(), before);
    }
}

// A step whose device inv_scale is out of range at execution (+Inf) is
// accepted by the call and fails in its slot: every method then leaves the
// gradients, its state and the skip flag alone, and reports no spike, even
// on gradients that would have been one.
TEST(AdaptiveEveryMethod, StepFailedAtExecutionDecidesNothing)
{
    for (const gclip_adaptive_options &o : every_method()) {
        SCOPED_TRACE(o.method);
        Model m({3, 700, 5}, o);
        std::mt19937_64 rng(31);
        warm_up(m, rng, 12);
        const std::vector<unsigned char> before = m.state();
        fill(m, rng, 50.0f); // a spike for every method that looks for one
        const std::vector<std::vector<float>> grads = m.grads;
        const float inf = std::numeric_limits<float>::infinity();
        gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
        base.inv_scale_ptr = &inf;
        ASSERT_EQ(m.step(&base), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        gclip_result r{};
        EXPECT_EQ(gclip_get_result(m.plan.get(), &r), GCLIP_STATUS_INVALID_ARGUMENT);
        EXPECT_EQ(m.state(), before);
        const gclip_adaptive_info info = m.info();
        EXPECT_EQ(info.spike, 0);
        EXPECT_EQ(info.recorded, 0);
        EXPECT_EQ(info.clipped, 0u);
        EXPECT_EQ(m.slot().flags & GCLIP_RESULT_SKIP_STEP, 0);
        expect_grads_unchanged(grads, m);
        // the same gradients in a valid step: spike skip and ZClip see the spike
        ASSERT_EQ(m.step(), GCLIP_STATUS_SUCCESS);
        if (o.method == GCLIP_ADAPTIVE_SPIKE_SKIP || o.method == GCLIP_ADAPTIVE_ZCLIP)
            EXPECT_EQ(m.info().spike, 1);
    }
}

// AutoClip's first step has an +Inf threshold and clips nothing, whatever
// the base eps: one that overflows N + eps (FLT_MAX) is held to 1e30, as in
// the core ops with max_norm +Inf, instead of giving Inf * 0 = NaN factors.
TEST(AdaptiveAutoClip, FirstStepWithAHugeEpsWritesNothing)
{
    for (int global : {0, 1}) {
        SCOPED_TRACE(global);
        Model m({4, 3}, autoclip(0.9, 7, global));
        for (auto &g : m.grads)
            for (float &x : g)
                x = 1e32f;
        const std::vector<std::vector<float>> grads = m.grads;
        gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
        base.eps = FLT_MAX;
        ASSERT_EQ(m.step(&base), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        EXPECT_EQ(m.grads, grads);
        EXPECT_EQ(m.slot().nonfinite, 0);
    }
}

// Under PROPAGATE a NaN norm follows the method's arithmetic (PyTorch-like:
// gradients become NaN for the clipping methods), still without touching
// the statistics.
TEST(AdaptiveEveryMethod, PropagateAppliesButDoesNotRecord)
{
    Scalar m(zclip(2, 1.0));
    m.step_with(0.5f);
    const std::vector<unsigned char> before = m.state();
    gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
    base.nonfinite = GCLIP_NONFINITE_PROPAGATE;
    m.grads[0][0] = kNaN;
    ASSERT_EQ(m.step(&base), GCLIP_STATUS_SUCCESS);
    EXPECT_TRUE(std::isnan(m.grads[0][0]));
    EXPECT_EQ(m.state(), before);
}

// Stop at step k, export, import into a new plan and adaptive, continue:
// gradients, results and state equal an uninterrupted run bit for bit.
TEST(AdaptiveEveryMethod, CheckpointResumesBitForBit)
{
    const std::vector<int64_t> sizes = {4, 65537, 300};
    for (const gclip_adaptive_options &o : every_method()) {
        SCOPED_TRACE(o.method);
        Model a(sizes, o);
        std::mt19937_64 ra(21);
        for (int k = 0; k < 17; ++k) {
            train_step(a, ra, k);
            ASSERT_EQ(a.step(), GCLIP_STATUS_SUCCESS);
        }
        const std::vector<unsigned char> saved = a.state();
        Model b(sizes, o);
        ASSERT_EQ(gclip_adaptive_import(b.ad.get(), saved.data(), saved.size()),
                  GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        std::mt19937_64 rb = ra;
        for (int k = 17; k < 60; ++k) {
            train_step(a, ra, k);
            train_step(b, rb, k);
            ASSERT_EQ(a.step(), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(b.step(), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(a.grads, b.grads) << "step " << k;
            ASSERT_EQ(std::memcmp(&a.slot(), &b.slot(), sizeof(gclip_device_result) - 12), 0);
        }
        EXPECT_EQ(a.state(), b.state());
    }
}

// AMP: the norms are those of the unscaled gradients and the factor carries
// inv_scale, so a scaled run equals an unscaled one up to the scale.
TEST(AdaptiveEveryMethod, InvScaleUnscalesNormsAndFactors)
{
    for (const gclip_adaptive_options &o : every_method()) {
        SCOPED_TRACE(o.method);
        Model plain({5, 9}, o), amp({5, 9}, o);
        std::mt19937_64 rp(4), ra(4);
        gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
        base.inv_scale = 1.0f / 1024.0f;
        for (int k = 0; k < 30; ++k) {
            train_step(plain, rp, k);
            train_step(amp, ra, k);
            for (auto &g : amp.grads)
                for (float &x : g)
                    x *= 1024.0f;
            ASSERT_EQ(plain.step(), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(amp.step(&base), GCLIP_STATUS_SUCCESS);
            EXPECT_EQ(plain.info().total_norm, amp.info().total_norm);
            EXPECT_EQ(plain.state(), amp.state()) << "step " << k;
        }
    }
}

// ---- validation --------------------------------------------------------------------

void expect_rejected(gclip_adaptive_options o, const char *field)
{
    std::vector<float> g(4, 1.0f);
    gclip_tensor t{g.data(), 4, GCLIP_F32};
    PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, {t}), GCLIP_STATUS_SUCCESS);
    gclip_adaptive *a = reinterpret_cast<gclip_adaptive *>(&g);
    EXPECT_EQ(gclip_adaptive_create(&a, plan.get(), &o), GCLIP_STATUS_INVALID_ARGUMENT) << field;
    EXPECT_EQ(a, nullptr);
    EXPECT_NE(std::string(gclip_last_error()).find(field), std::string::npos)
        << gclip_last_error();
}

TEST(AdaptiveValidation, BadHyperparametersAreRejectedByName)
{
    gclip_adaptive_options o = zclip(25, 1.0);
    o.zclip_alpha = 1.0;
    expect_rejected(o, "zclip_alpha");
    o = zclip(25, 1.0);
    o.zclip_alpha = 0.0;
    expect_rejected(o, "zclip_alpha");
    o = zclip(0, 1.0);
    expect_rejected(o, "zclip_warmup_steps");
    o = zclip(25, -1.0);
    expect_rejected(o, "zclip_max_grad_norm");
    o = zclip(25, 1.0);
    o.zclip_z_thresh = -2.5;
    expect_rejected(o, "zclip_z_thresh");
    expect_rejected(autoclip(1.5, 10, 0), "autoclip_quantile");
    expect_rejected(autoclip(-0.1, 10, 0), "autoclip_quantile");
    expect_rejected(autoclip(std::nan(""), 10, 0), "autoclip_quantile");
    expect_rejected(autoclip(0.5, 0, 0), "autoclip_history_length");
    o = adagc(10);
    o.adagc_lambda_rel = -1.0;
    expect_rejected(o, "adagc_lambda_rel");
    o = adagc(10);
    o.adagc_beta = 1.0;
    expect_rejected(o, "adagc_beta");
    // finite as doubles, but Inf or 0 as the floats the step uses
    o = adagc(10);
    o.adagc_eps = 1e39;
    expect_rejected(o, "adagc_eps");
    o = adagc(10);
    o.adagc_lambda_abs = 1e39;
    expect_rejected(o, "adagc_lambda_abs");
    o = adagc(10);
    o.adagc_lambda_rel = 1e-50;
    expect_rejected(o, "adagc_lambda_rel");
    o = spike();
    o.spike_sigma = -6.0;
    expect_rejected(o, "spike_sigma");
    o = spike();
    o.spike_min_values = 200;
    expect_rejected(o, "spike_min_values");
    o = spike();
    o.method = static_cast<gclip_adaptive_method>(9);
    expect_rejected(o, "method");
}

TEST(AdaptiveValidation, OptionsVersionAndNullArguments)
{
    std::vector<float> g(4, 1.0f);
    PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, {gclip_tensor{g.data(), 4, GCLIP_F32}}),
              GCLIP_STATUS_SUCCESS);
    gclip_adaptive *a = nullptr;
    gclip_adaptive_options o{};
    EXPECT_EQ(gclip_adaptive_create(&a, plan.get(), &o), GCLIP_STATUS_VERSION_MISMATCH);
    o = gclip_adaptive_options_default();
    o.version = 2;
    EXPECT_EQ(gclip_adaptive_create(&a, plan.get(), &o), GCLIP_STATUS_VERSION_MISMATCH);
    EXPECT_EQ(gclip_adaptive_create(&a, plan.get(), nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_adaptive_create(&a, nullptr, &o), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_adaptive_step(nullptr, nullptr, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_adaptive_destroy(nullptr), GCLIP_STATUS_SUCCESS);
    // tensor_norms belongs to the adaptive
    Model m({4}, zclip(3, 1.0));
    float norms[1];
    gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
    base.tensor_norms = norms;
    EXPECT_EQ(m.step(&base), GCLIP_STATUS_INVALID_ARGUMENT);
}

TEST(AdaptiveValidation, ForeignCheckpointsAreRejectedAndChangeNothing)
{
    Model z({3, 5}, zclip(3, 1.0));
    Model q({3, 5}, autoclip(0.5, 10, 0));
    Model q2({3, 5}, autoclip(0.5, 11, 0));
    std::mt19937_64 rng(2);
    for (int k = 0; k < 4; ++k) {
        fill(z, rng, 1.0f);
        fill(q, rng, 1.0f);
        ASSERT_EQ(z.step(), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(q.step(), GCLIP_STATUS_SUCCESS);
    }
    const std::vector<unsigned char> zs = z.state(), qs = q.state(), q2s = q2.state();
    EXPECT_EQ(gclip_adaptive_import(q.ad.get(), zs.data(), zs.size()), GCLIP_STATUS_MISMATCH);
    EXPECT_EQ(gclip_adaptive_import(q2.ad.get(), qs.data(), qs.size()), GCLIP_STATUS_MISMATCH);
    std::vector<unsigned char> bad = qs;
    bad[0] ^= 0xff;
    EXPECT_EQ(gclip_adaptive_import(q.ad.get(), bad.data(), bad.size()),
              GCLIP_STATUS_INVALID_ARGUMENT);
    bad = qs;
    bad[4] = 7; // format
    EXPECT_EQ(gclip_adaptive_import(q.ad.get(), bad.data(), bad.size()),
              GCLIP_STATUS_VERSION_MISMATCH);
    bad = qs;
    bad[32 + 4] = 0xff; // filled beyond the history
    EXPECT_EQ(gclip_adaptive_import(q.ad.get(), bad.data(), bad.size()),
              GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_adaptive_import(q.ad.get(), qs.data(), qs.size() - 1),
              GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(q.state(), qs);
    EXPECT_EQ(q2.state(), q2s);
    std::vector<unsigned char> small(8);
    EXPECT_EQ(gclip_adaptive_export(q.ad.get(), small.data(), small.size()),
              GCLIP_STATUS_INVALID_ARGUMENT);
}

// ZClip keeps one warm-up norm per step until its history is full, so a
// state's count of kept norms is min(steps, history). A state that says
// otherwise (a full ring before the warm-up is over would make the next
// warm-up step write past the ring) is refused, and changes nothing; the
// consistent ones, before, during and after the warm-up, are taken.
TEST(AdaptiveValidation, ZClipStateWhoseRingDisagreesWithItsStepsIsRefused)
{
    std::mt19937_64 rng(5);
    for (int steps : {0, 2, 3, 6}) { // history 3
        SCOPED_TRACE("after " + std::to_string(steps) + " steps");
        Model z({3, 5}, zclip(3, 1.0));
        for (int k = 0; k < steps; ++k) {
            fill(z, rng, 1.0f);
            ASSERT_EQ(z.step(), GCLIP_STATUS_SUCCESS);
        }
        const std::vector<unsigned char> good = z.state();
        const gclip_adapt_scalars sc = z.scalars();
        ASSERT_EQ(sc.filled, std::min<uint32_t>(sc.steps, 3u));
        EXPECT_EQ(gclip_adaptive_import(z.ad.get(), good.data(), good.size()), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        for (uint32_t filled = 0; filled <= 3; ++filled) {
            if (filled == sc.filled)
                continue;
            std::vector<unsigned char> bad = good;
            std::memcpy(&bad[32 + offsetof(gclip_adapt_scalars, filled)], &filled, 4);
            EXPECT_EQ(gclip_adaptive_import(z.ad.get(), bad.data(), bad.size()),
                      GCLIP_STATUS_INVALID_ARGUMENT)
                << "filled " << filled;
            EXPECT_NE(std::string(gclip_last_error()).find("corrupt"), std::string::npos);
            EXPECT_EQ(z.state(), good);
        }
        // the state as it was still steps on
        fill(z, rng, 1.0f);
        EXPECT_EQ(z.step(), GCLIP_STATUS_SUCCESS);
    }
}

// A state's ring position at the edges of its ring: an AutoClip history of
// 10, full after 12 steps, takes any count of values up to 10 and any next
// slot up to 9; a count of 11 or a next slot of 10 (one past the ring, where
// the next step would write) is refused and changes nothing. An export into
// a buffer one byte short is refused before it writes.
TEST(AdaptiveValidation, RingPositionsAtTheRingsEdgesAndShortExports)
{
    Model q({3, 5}, autoclip(0.5, 10, 1));
    std::mt19937_64 rng(6);
    for (int k = 0; k < 12; ++k) {
        fill(q, rng, 1.0f);
        ASSERT_EQ(q.step(), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    }
    const std::vector<unsigned char> good = q.state();
    const gclip_adapt_scalars sc = q.scalars();
    ASSERT_EQ(sc.filled, 10u);
    const auto with = [&](size_t offset, uint32_t v) {
        std::vector<unsigned char> b = good;
        std::memcpy(&b[32 + offset], &v, 4);
        return b;
    };
    for (uint32_t head : {0u, 9u}) {
        const std::vector<unsigned char> b = with(offsetof(gclip_adapt_scalars, head), head);
        EXPECT_EQ(gclip_adaptive_import(q.ad.get(), b.data(), b.size()), GCLIP_STATUS_SUCCESS)
            << "head " << head << ": " << gclip_last_error();
    }
    for (uint32_t filled : {1u, 10u}) {
        const std::vector<unsigned char> b = with(offsetof(gclip_adapt_scalars, filled), filled);
        EXPECT_EQ(gclip_adaptive_import(q.ad.get(), b.data(), b.size()), GCLIP_STATUS_SUCCESS)
            << "filled " << filled << ": " << gclip_last_error();
    }
    ASSERT_EQ(gclip_adaptive_import(q.ad.get(), good.data(), good.size()), GCLIP_STATUS_SUCCESS);
    const std::pair<size_t, uint32_t> bad[] = {{offsetof(gclip_adapt_scalars, head), 10u},
                                               {offsetof(gclip_adapt_scalars, filled), 11u}};
    for (const auto &[offset, v] : bad) {
        const std::vector<unsigned char> b = with(offset, v);
        EXPECT_EQ(gclip_adaptive_import(q.ad.get(), b.data(), b.size()),
                  GCLIP_STATUS_INVALID_ARGUMENT)
            << "offset " << offset << " value " << v;
        EXPECT_NE(std::string(gclip_last_error()).find("corrupt"), std::string::npos)
            << gclip_last_error();
        EXPECT_EQ(q.state(), good);
    }
    // one byte short: refused, and the byte past the buffer's end untouched
    std::vector<unsigned char> out(good.size(), 0xa5);
    EXPECT_EQ(gclip_adaptive_export(q.ad.get(), out.data(), good.size() - 1),
              GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(out.back(), 0xa5);
    EXPECT_EQ(gclip_adaptive_export(q.ad.get(), out.data(), out.size()), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(out, good);
}

// The hyperparameters' bounds: the last value taken and the first refused.
TEST(AdaptiveValidation, HyperparametersAtTheirBounds)
{
    std::vector<float> g(4, 1.0f);
    PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, {gclip_tensor{g.data(), 4, GCLIP_F32}}),
              GCLIP_STATUS_SUCCESS);
    const auto taken = [&](const gclip_adaptive_options &o, const char *what) {
        gclip_adaptive *a = nullptr;
        EXPECT_EQ(gclip_adaptive_create(&a, plan.get(), &o), GCLIP_STATUS_SUCCESS)
            << what << ": " << gclip_last_error();
        gclip_adaptive_destroy(a);
    };
    // the quantile's ends: the smallest and the largest value in the history
    taken(autoclip(0.0, 10, 1), "autoclip_quantile 0");
    taken(autoclip(1.0, 10, 1), "autoclip_quantile 1");
    // a history of up to 2^20 values
    taken(autoclip(0.5, 1u << 20, 1), "autoclip_history_length 2^20");
    expect_rejected(autoclip(0.5, (1u << 20) + 1, 1), "autoclip_history_length");
    // a standard deviation needs two values
    gclip_adaptive_options o = spike();
    o.spike_min_values = 2;
    taken(o, "spike_min_values 2");
    o.spike_min_values = 1;
    expect_rejected(o, "spike_min_values");
}

// The method decides an adaptive step's threshold: the base options'
// max_norm is not used, so no value of it is refused.
// inv_scale_ptr may not point into the plan's own result slot, which the
// step rewrites between the norm pass and the adaptive's update (both read
// it): refused as in the core's steps, with nothing written.
TEST(AdaptiveValidation, InvScalePointerIntoTheSlotIsRefused)
{
    std::mt19937_64 rng(12);
    for (gclip_adaptive_method method :
         {GCLIP_ADAPTIVE_ZCLIP, GCLIP_ADAPTIVE_AUTOCLIP, GCLIP_ADAPTIVE_ADAGC,
          GCLIP_ADAPTIVE_SPIKE_SKIP}) {
        gclip_adaptive_options o = gclip_adaptive_options_default();
        o.method = method;
        Model m({3, 5}, o);
        fill(m, rng, 2.0f);
        const std::vector<std::vector<float>> pristine = m.grads;
        const std::vector<unsigned char> state = m.state();
        const gclip_device_result *slot = nullptr;
        ASSERT_EQ(gclip_plan_device_result(m.plan.get(), &slot), GCLIP_STATUS_SUCCESS);
        gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
        base.inv_scale_ptr = &slot->total_norm;
        EXPECT_EQ(m.step(&base), GCLIP_STATUS_INVALID_ARGUMENT) << method;
        EXPECT_NE(std::string(gclip_last_error()).find("inv_scale_ptr"), std::string::npos)
            << gclip_last_error();
        EXPECT_EQ(m.grads, pristine) << method;
        EXPECT_EQ(m.state(), state) << method;
        // a float of the caller's own is taken
        const float inv_scale = 0.5f;
        base.inv_scale_ptr = &inv_scale;
        EXPECT_EQ(m.step(&base), GCLIP_STATUS_SUCCESS) << method << ": " << gclip_last_error();
    }
}

TEST(AdaptiveValidation, BaseMaxNormIsNotUsed)
{
    std::mt19937_64 rng(6);
    Model a({3, 5}, zclip(3, 1.0)), b({3, 5}, zclip(3, 1.0));
    for (int k = 0; k < 6; ++k) {
        fill(a, rng, 2.0f);
        for (size_t i = 0; i < a.grads.size(); ++i)
            std::copy(a.grads[i].begin(), a.grads[i].end(), b.grads[i].begin());
        ASSERT_EQ(a.step(), GCLIP_STATUS_SUCCESS);
        gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
        base.max_norm = k % 2 ? -1.0f : NAN;
        ASSERT_EQ(b.step(&base), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        EXPECT_EQ(a.grads, b.grads) << "step " << k;
    }
    EXPECT_EQ(a.state(), b.state());
}

} // namespace
