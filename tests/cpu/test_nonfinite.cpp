// NaN and Inf gradients (and finite gradients whose true norm overflows
// float) under each non-finite policy, for global and per-tensor clipping:
//   SKIP       nothing written, flag raised, get_result SUCCESS
//   ERROR      as SKIP, get_result returns GCLIP_STATUS_NONFINITE
//   PROPAGATE  PyTorch's arithmetic applied (Inf -> coef 0, NaN -> NaN)
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using oracle::TestBuffer;

namespace {

enum class Poison { Inf, NegInf, Nan, SignalingNan, Overflow };

const char *poison_name(Poison p)
{
    switch (p) {
    case Poison::Inf: return "inf";
    case Poison::NegInf: return "-inf";
    case Poison::Nan: return "nan";
    case Poison::SignalingNan: return "snan";
    default: return "overflow";
    }
}

// Three tensors of random data; tensor 1 (f16 or f32) gets the poison.
std::vector<TestBuffer> poisoned(Poison p, gclip_dtype dt, uint64_t seed)
{
    oracle::Rng rng(seed);
    std::vector<TestBuffer> bufs;
    bufs.emplace_back(GCLIP_BF16, 70000, 1);
    bufs.emplace_back(p == Poison::Overflow ? GCLIP_F32 : dt, 1001, 3);
    bufs.emplace_back(GCLIP_F32, 33, 2);
    for (auto &b : bufs)
        b.fill(rng, 2.0);
    TestBuffer &t = bufs[1];
    switch (p) {
    case Poison::Inf: t.set(500, INFINITY); break;
    case Poison::NegInf: t.set(0, -INFINITY); break;
    case Poison::Nan: t.set(1000, std::nanf("0x2a")); break;
    case Poison::SignalingNan:
        // a payload that any arithmetic would quiet: it must survive bit-exactly
        if (t.dtype() == GCLIP_F32) {
            const uint32_t snan = 0x7f800123u;
            std::memcpy(static_cast<char *>(t.data()) + 4 * 7, &snan, 4);
        } else {
            const uint16_t snan = 0x7c05u;
            std::memcpy(static_cast<char *>(t.data()) + 2 * 7, &snan, 2);
        }
        break;
    case Poison::Overflow: // finite, but the true L2 norm exceeds FLT_MAX
        t.set(10, FLT_MAX);
        t.set(20, -FLT_MAX);
        break;
    }
    return bufs;
}

bool is_nan_poison(Poison p) { return p == Poison::Nan || p == Poison::SignalingNan; }

struct PolicyCase {
    gclip_nonfinite_policy policy;
    bool per_tensor;
};

class NonFinite : public ::testing::TestWithParam<PolicyCase> {};

TEST_P(NonFinite, SkipAndErrorWriteNothingAndRaiseTheFlag)
{
    const PolicyCase pc = GetParam(); // SKIP or ERROR; PROPAGATE is checked below
    for (Poison p : {Poison::Inf, Poison::NegInf, Poison::Nan, Poison::SignalingNan, Poison::Overflow}) {
        for (gclip_dtype dt : {GCLIP_F32, GCLIP_F16}) {
            SCOPED_TRACE(std::string(poison_name(p)) + " in " + oracle::dtype_name(dt));
            auto bufs = poisoned(p, dt, 400);
            const uint64_t before = oracle::checksum(bufs);
            testutil::PlanPtr plan;
            ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
            std::vector<float> norms(bufs.size());
            gclip_norm_options o = testutil::norm_options(0.5f); // would clip
            o.nonfinite = pc.policy;
            o.tensor_norms = norms.data();
            const auto op = pc.per_tensor ? gclip_clip_grad_norm_per_tensor : gclip_clip_grad_norm;
            ASSERT_EQ(op(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS) << "the step call itself succeeds";
            EXPECT_EQ(oracle::checksum(bufs), before) << "a gradient was written";

            gclip_status s;
            const gclip_result r = testutil::result_of(plan.get(), &s);
            EXPECT_EQ(s, pc.policy == GCLIP_NONFINITE_ERROR ? GCLIP_STATUS_NONFINITE : GCLIP_STATUS_SUCCESS);
            if (s == GCLIP_STATUS_NONFINITE) {
                EXPECT_STRNE(gclip_last_error(), "");
            }
            EXPECT_EQ(r.nonfinite, 1);
            EXPECT_EQ(r.has_norm, 1);
            EXPECT_EQ(r.clip_coef, 1.0f);
            EXPECT_EQ(r.scale, 1.0f);
            if (is_nan_poison(p))
                EXPECT_TRUE(std::isnan(r.total_norm));
            else
                EXPECT_TRUE(std::isinf(r.total_norm) && r.total_norm > 0);
            // the clean tensors still report their norms; the poisoned one is not finite
            const oracle::Norms want = oracle::norms(bufs, 2.0);
            EXPECT_TRUE(oracle::rel_close(norms[0], want.per_tensor[0], 1e-6L));
            EXPECT_FALSE(std::isfinite(norms[1]));
            EXPECT_TRUE(oracle::rel_close(norms[2], want.per_tensor[2], 1e-6L));
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Policies, NonFinite,
                         ::testing::Values(PolicyCase{GCLIP_NONFINITE_SKIP, false},
                                           PolicyCase{GCLIP_NONFINITE_SKIP, true},
                                           PolicyCase{GCLIP_NONFINITE_ERROR, false},
                                           PolicyCase{GCLIP_NONFINITE_ERROR, true}),
                         [](const auto &tp) {
                             return std::string(tp.param.policy == GCLIP_NONFINITE_SKIP ? "Skip" : "Error") +
                                    (tp.param.per_tensor ? "PerTensor" : "Global");
                         });

TEST(NonFinitePropagate, InfZeroesFiniteGradientsAndInfBecomesNan)
{
    for (Poison p : {Poison::Inf, Poison::NegInf, Poison::Overflow}) {
        SCOPED_TRACE(poison_name(p));
        auto bufs = poisoned(p, GCLIP_F16, 410);
        const std::vector<TestBuffer> before = bufs;
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        gclip_norm_options o = testutil::norm_options(1.0f);
        o.nonfinite = GCLIP_NONFINITE_PROPAGATE;
        ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        gclip_status s;
        const gclip_result r = testutil::result_of(plan.get(), &s);
        EXPECT_EQ(s, GCLIP_STATUS_SUCCESS);
        EXPECT_TRUE(std::isinf(r.total_norm));
        EXPECT_EQ(r.nonfinite, 1);
        EXPECT_EQ(r.clip_coef, 0.0f);
        EXPECT_EQ(r.scale, 0.0f);
        for (size_t k = 0; k < bufs.size(); ++k)
            for (int64_t i = 0; i < bufs[k].numel(); ++i) {
                const float x = before[k].get(i);
                const float got = bufs[k].get(i);
                if (std::isinf(x))
                    ASSERT_TRUE(std::isnan(got)) << k << ":" << i; // inf * 0
                else
                    ASSERT_EQ(got, 0.0f) << k << ":" << i;
            }
    }
}

TEST(NonFinitePropagate, NanMakesEveryGradientNan)
{
    auto bufs = poisoned(Poison::Nan, GCLIP_F32, 411);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(1.0f);
    o.nonfinite = GCLIP_NONFINITE_PROPAGATE;
    ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(plan.get());
    EXPECT_TRUE(std::isnan(r.total_norm));
    EXPECT_TRUE(std::isnan(r.clip_coef));
    EXPECT_TRUE(std::isnan(r.scale));
    EXPECT_EQ(r.nonfinite, 1);
    for (const auto &b : bufs)
        for (int64_t i = 0; i < b.numel(); ++i)
            ASSERT_TRUE(std::isnan(b.get(i))) << i;
}

// A NaN norm has the bits a GPU's arithmetic gives every NaN, 0x7fffffff,
// whatever NaN was in the data (sign, payload, signaling, or a half's NaN)
// and for every norm type; so have the coefficient and factor computed
// from it, and a NaN norm given to gclip_clip_grads_with_norm
// (docs/semantics.md).
TEST(NonFiniteNanBits, ANaNNormIsTheCanonicalNaNOnEveryPath)
{
    const uint32_t canonical = 0x7fffffffu;
    const uint32_t f32_nans[] = {0xffc00001u, 0x7fc0002au, 0x7f800123u};
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_F16}) {
        for (uint32_t bits : f32_nans) {
            if (dt == GCLIP_F16 && bits != f32_nans[0])
                continue; // a half's NaN converts to one float NaN whatever its own bits
            for (float p : {2.0f, 1.0f, INFINITY, 3.0f}) {
                char what[64];
                std::snprintf(what, sizeof what, "%s, NaN 0x%08x, p %g", oracle::dtype_name(dt),
                              static_cast<unsigned>(bits), static_cast<double>(p));
                SCOPED_TRACE(what);
                oracle::Rng rng(420);
                std::vector<TestBuffer> bufs;
                bufs.emplace_back(GCLIP_F32, 5000, 1);
                bufs.emplace_back(dt, 777, 2);
                for (auto &b : bufs)
                    b.fill(rng, 2.0);
                if (dt == GCLIP_F32)
                    std::memcpy(static_cast<char *>(bufs[1].data()) + 4 * 300, &bits, 4);
                else
                    bufs[1].set(300, oracle::bits_to_float(bits));
                testutil::PlanPtr plan;
                ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
                std::vector<float> norms(bufs.size());
                gclip_norm_options o = testutil::norm_options(1.0f, p);
                o.nonfinite = GCLIP_NONFINITE_PROPAGATE;
                o.tensor_norms = norms.data();
                ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
                EXPECT_EQ(oracle::float_to_bits(testutil::result_of(plan.get()).total_norm), canonical);
                EXPECT_EQ(oracle::float_to_bits(norms[1]), canonical);
                EXPECT_TRUE(std::isfinite(norms[0]));
                ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
                gclip_result r = testutil::result_of(plan.get());
                EXPECT_EQ(oracle::float_to_bits(r.total_norm), canonical);
                EXPECT_EQ(oracle::float_to_bits(r.clip_coef), canonical);
                EXPECT_EQ(oracle::float_to_bits(r.scale), canonical);
                o.tensor_norms = nullptr;
                ASSERT_EQ(gclip_clip_grads_with_norm(plan.get(), &o, oracle::bits_to_float(bits),
                                                     nullptr, nullptr),
                          GCLIP_STATUS_SUCCESS);
                r = testutil::result_of(plan.get());
                EXPECT_EQ(oracle::float_to_bits(r.total_norm), canonical);
                EXPECT_EQ(oracle::float_to_bits(r.clip_coef), canonical);
                EXPECT_EQ(oracle::float_to_bits(r.scale), canonical);
            }
        }
    }
}

// max_norm +Inf and an Inf norm under PROPAGATE: Inf * (1 / Inf) = Inf * 0,
// a NaN made from numbers, which is the canonical NaN (a GPU's, where x86
// makes 0xffc00000) in the slot, in each tensor's factor and so in the
// finite elements it scales.
TEST(NonFiniteNanBits, InfTimesZeroIsTheCanonicalNaN)
{
    const uint32_t canonical = 0x7fffffffu;
    oracle::Rng rng(421);
    std::vector<TestBuffer> bufs;
    bufs.emplace_back(GCLIP_F32, 300, 1);
    bufs.emplace_back(GCLIP_F32, 70000, 0);
    for (auto &b : bufs)
        b.fill(rng, 2.0);
    bufs[1].set(123, INFINITY);
    const std::vector<TestBuffer> pristine = bufs;
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(INFINITY);
    o.nonfinite = GCLIP_NONFINITE_PROPAGATE;
    ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    gclip_result r = testutil::result_of(plan.get());
    EXPECT_EQ(r.total_norm, INFINITY);
    EXPECT_EQ(oracle::float_to_bits(r.clip_coef), canonical);
    EXPECT_EQ(oracle::float_to_bits(r.scale), canonical);
    EXPECT_EQ(oracle::float_to_bits(bufs[0].get(7)), canonical);
    // per tensor: tensor 1's own norm is Inf; tensor 0's is finite and kept
    bufs = pristine;
    ASSERT_EQ(gclip_plan_rebind(plan.get(),
                                std::vector<void *>{bufs[0].data(), bufs[1].data()}.data(), 2,
                                nullptr),
              GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(oracle::float_to_bits(bufs[1].get(5)), canonical);
    EXPECT_EQ(std::memcmp(bufs[0].data(), pristine[0].data(), 300 * 4), 0);
}

TEST(NonFinitePropagate, PerTensorClipsEachTensorByItsOwnNorm)
{
    // tensor 1 holds an Inf: its coefficient is 0 (Inf -> NaN); the clean
    // tensors are clipped by their own finite norms
    auto bufs = poisoned(Poison::Inf, GCLIP_F16, 412);
    const std::vector<TestBuffer> before = bufs;
    const oracle::Norms want = oracle::norms(bufs, 2.0);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    std::vector<float> norms(bufs.size());
    gclip_norm_options o = testutil::norm_options(1.0f);
    o.nonfinite = GCLIP_NONFINITE_PROPAGATE;
    o.tensor_norms = norms.data();
    ASSERT_EQ(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(plan.get());
    EXPECT_EQ(r.nonfinite, 1);
    for (size_t k = 0; k < bufs.size(); ++k) {
        const float f = oracle::expected_coef(norms[k], 1.0f, o.eps);
        if (k != 1) {
            EXPECT_TRUE(oracle::rel_close(norms[k], want.per_tensor[k], 1e-6L));
        }
        for (int64_t i = 0; i < bufs[k].numel(); ++i) {
            const float w = oracle::expected_scaled(before[k].get(i), f, bufs[k].dtype());
            const float got = bufs[k].get(i);
            ASSERT_TRUE(std::isnan(w) ? std::isnan(got)
                                      : bufs[k].dtype() == GCLIP_F32 ? oracle::ulp_distance(got, w) <= 1
                                                                     : got == w)
                << k << ":" << i << " got " << got << " want " << w;
        }
    }
}

TEST(NonFiniteError, TotalNormReportsNonFiniteAndAFollowingCleanStepSucceeds)
{
    auto bufs = poisoned(Poison::Inf, GCLIP_F32, 413);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(1.0f);
    o.nonfinite = GCLIP_NONFINITE_ERROR;
    ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    gclip_status s;
    gclip_result r = testutil::result_of(plan.get(), &s);
    EXPECT_EQ(s, GCLIP_STATUS_NONFINITE);
    EXPECT_TRUE(std::isinf(r.total_norm));
    EXPECT_EQ(r.nonfinite, 1);

    // the same plan with the poison removed: the error is not sticky
    bufs[1].set(500, 1.0f);
    const long double clean = oracle::norms(bufs, 2.0).total;
    ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    r = testutil::result_of(plan.get(), &s);
    EXPECT_EQ(s, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.nonfinite, 0);
    EXPECT_TRUE(oracle::rel_close(r.total_norm, clean, 1e-6L));
    EXPECT_LT(r.clip_coef, 1.0f);

    // SKIP policy on a total norm: flag, but get_result succeeds
    bufs[1].set(500, INFINITY);
    o.nonfinite = GCLIP_NONFINITE_SKIP;
    ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    r = testutil::result_of(plan.get(), &s);
    EXPECT_EQ(s, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.nonfinite, 1);

    // value clipping after an ERROR-policy failure reports its own result
    o.nonfinite = GCLIP_NONFINITE_ERROR;
    ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_clip_grad_value(plan.get(), 1.0f, nullptr), GCLIP_STATUS_SUCCESS);
    r = testutil::result_of(plan.get(), &s);
    EXPECT_EQ(s, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.has_norm, 0);
    EXPECT_EQ(r.nonfinite, 0);
}

TEST(NonFiniteInfNorm, MaxNormTypeSeesInfAndNan)
{
    for (Poison p : {Poison::Inf, Poison::Nan}) {
        auto bufs = poisoned(p, GCLIP_BF16, 414);
        const uint64_t before = oracle::checksum(bufs);
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        gclip_norm_options o = testutil::norm_options(0.5f, INFINITY);
        ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        const gclip_result r = testutil::result_of(plan.get());
        EXPECT_EQ(r.nonfinite, 1) << poison_name(p);
        EXPECT_EQ(std::isnan(r.total_norm), p == Poison::Nan) << poison_name(p);
        EXPECT_EQ(oracle::checksum(bufs), before);
    }
}

} // namespace
