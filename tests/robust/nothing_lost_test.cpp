// Nothing lost: every failure path of the validation table
// (docs/semantics.md) and every non-finite policy is run on seeded gradients,
// and the checksum of every gradient buffer is compared before and after.
#include "plan_util.hpp"
#include "robust_util.hpp"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

namespace {

using oracle::TestBuffer;
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

std::vector<TestBuffer> gradients(uint64_t seed)
{
    // tensor 1 spans two chunks; f32 keeps the element-wise oracle cheap
    return robust::make_buffers({{1000, GCLIP_F32, 1}, {70000, GCLIP_F32, 0}, {37, GCLIP_F16, 3},
                                 {0, GCLIP_F32, 0}, {300, GCLIP_BF16, 1}},
                                seed, 2.0);
}

// A plan over `bufs` plus a checksum of every buffer it may touch.
struct Fixture {
    std::vector<TestBuffer> bufs;
    robust::Plan plan;
    uint64_t sum = 0;
    explicit Fixture(uint64_t seed) : bufs(gradients(seed))
    {
        const auto t = oracle::tensors_of(bufs);
        EXPECT_EQ(gclip_plan_create(plan.out(), t.data(), t.size(), GCLIP_DEVICE_CPU),
                  GCLIP_STATUS_SUCCESS);
        sum = oracle::checksum(bufs);
    }
    bool unchanged() const { return oracle::checksum(bufs) == sum; }
};

// ---- plan creation ---------------------------------------------------------

struct BadList {
    std::string name;
    std::function<void(std::vector<gclip_tensor> &)> spoil;
    gclip_status want;
};

TEST(NothingLost, RejectedPlanCreation)
{
    const int64_t f16_odd_byte = 1; // a 2-byte element at an odd address
    const std::vector<BadList> bad = {
        {"negative numel", [](auto &t) { t[2].numel = -1; }, GCLIP_STATUS_INVALID_ARGUMENT},
        {"NULL data, numel > 0", [](auto &t) { t[4].data = nullptr; }, GCLIP_STATUS_INVALID_ARGUMENT},
        {"unknown dtype 4", [](auto &t) { robust::set_raw(t[1].dtype, 4); },
         GCLIP_STATUS_INVALID_ARGUMENT},
        {"unknown dtype -1", [](auto &t) { robust::set_raw(t[0].dtype, -1); },
         GCLIP_STATUS_INVALID_ARGUMENT},
        {"huge numel", [](auto &t) { t[3].numel = INT64_MAX; t[3].data = t[0].data; },
         GCLIP_STATUS_INVALID_ARGUMENT},
        {"misaligned f32", [](auto &t) { t[0].data = static_cast<char *>(t[0].data) + 2; t[0].numel -= 1; },
         GCLIP_STATUS_MISALIGNED},
        {"misaligned f16", [=](auto &t) { t[2].data = static_cast<char *>(t[2].data) + f16_odd_byte; t[2].numel -= 1; },
         GCLIP_STATUS_MISALIGNED},
        {"same tensor twice", [](auto &t) { t.push_back(t[1]); }, GCLIP_STATUS_OVERLAP},
        {"partial overlap", [](auto &t) { t.push_back({static_cast<float *>(t[0].data) + 999, 2, GCLIP_F32}); },
         GCLIP_STATUS_OVERLAP},
        {"contained, other dtype", [](auto &t) { t.push_back({static_cast<char *>(t[1].data) + 64, 8, GCLIP_F32}); },
         GCLIP_STATUS_OVERLAP},
    };
    for (const BadList &b : bad) {
        SCOPED_TRACE(b.name);
        auto bufs = gradients(7);
        auto t = oracle::tensors_of(bufs);
        const uint64_t before = oracle::checksum(bufs);
        b.spoil(t);
        gclip_plan *plan = reinterpret_cast<gclip_plan *>(&bufs); // must become NULL
        EXPECT_EQ(gclip_plan_create(&plan, t.data(), t.size(), GCLIP_DEVICE_CPU), b.want);
        EXPECT_EQ(plan, nullptr);
        EXPECT_STRNE(gclip_last_error(), "");
        EXPECT_EQ(oracle::checksum(bufs), before);
    }
}

// A tensor of 2^48 elements or more has 2^32 chunks or more: refused like
// any plan of more than 2^31 - 1 chunks, not counted modulo 2^32 (which gave
// 2^48 elements no chunk at all, and 2^48 + 65,536 one). The data is never
// read: creation refuses it first.
TEST(NothingLost, TensorOfTwoToThe32ChunksOrMoreIsRefused)
{
    auto bufs = gradients(3);
    const uint64_t before = oracle::checksum(bufs);
    for (int64_t numel : {int64_t{1} << 48, (int64_t{1} << 48) + 65536, (int64_t{1} << 52) + 1,
                          (int64_t{1} << 47) + 5}) {
        SCOPED_TRACE(numel);
        gclip_tensor t = oracle::tensors_of(bufs)[0];
        t.numel = numel;
        gclip_plan *plan = reinterpret_cast<gclip_plan *>(&bufs); // must become NULL
        EXPECT_EQ(gclip_plan_create(&plan, &t, 1, GCLIP_DEVICE_CPU), GCLIP_STATUS_INVALID_ARGUMENT);
        EXPECT_EQ(plan, nullptr);
        EXPECT_NE(std::string(gclip_last_error()).find("elements in all"), std::string::npos)
            << gclip_last_error();
    }
    EXPECT_EQ(oracle::checksum(bufs), before);
}

TEST(NothingLost, OverlapMessageNamesBothIndices)
{
    auto bufs = gradients(8);
    auto t = oracle::tensors_of(bufs);
    t.push_back(t[2]); // index 5 repeats index 2
    gclip_plan *plan = nullptr;
    ASSERT_EQ(gclip_plan_create(&plan, t.data(), t.size(), GCLIP_DEVICE_CPU), GCLIP_STATUS_OVERLAP);
    const std::string msg = gclip_last_error();
    EXPECT_TRUE(testutil::names_index(msg, 2)) << msg;
    EXPECT_TRUE(testutil::names_index(msg, 5)) << msg;
}

TEST(NothingLost, RejectedArgumentsAndDevices)
{
    auto bufs = gradients(9);
    const auto t = oracle::tensors_of(bufs);
    const uint64_t before = oracle::checksum(bufs);
    gclip_plan *plan = reinterpret_cast<gclip_plan *>(&bufs);
    EXPECT_EQ(gclip_plan_create(nullptr, t.data(), t.size(), GCLIP_DEVICE_CPU), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_plan_create(&plan, nullptr, 3, GCLIP_DEVICE_CPU), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(plan, nullptr);
    EXPECT_EQ(gclip_plan_create(&plan, t.data(), t.size(), -2), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(plan, nullptr);
    if (gclip_cuda_device_count() == 0) {
        const gclip_status s0 = gclip_plan_create(&plan, t.data(), t.size(), 0);
        EXPECT_TRUE(s0 == GCLIP_STATUS_NOT_SUPPORTED || s0 == GCLIP_STATUS_NO_DEVICE) << s0;
        EXPECT_EQ(plan, nullptr);
    }
    // an ordinal no machine has
    const gclip_status s = gclip_plan_create(&plan, t.data(), t.size(), 1 << 20);
    EXPECT_TRUE(s == GCLIP_STATUS_NOT_SUPPORTED || s == GCLIP_STATUS_NO_DEVICE) << s;
    EXPECT_EQ(plan, nullptr);
    EXPECT_EQ(oracle::checksum(bufs), before);
}

// ---- step calls ------------------------------------------------------------

TEST(NothingLost, RejectedOptions)
{
    Fixture f(10);
    const gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
    std::vector<std::pair<std::string, gclip_norm_options>> bad;
    auto add = [&](const std::string &name, auto change) {
        gclip_norm_options o = base;
        o.max_norm = 0.01f; // would clip every tensor if accepted
        change(o);
        bad.emplace_back(name, o);
    };
    for (float v : {kNaN, -1.0f, -kInf, -FLT_MIN})
        add("max_norm " + std::to_string(v), [=](auto &o) { o.max_norm = v; });
    for (float v : {kNaN, 0.0f, -0.0f, -1.0f, -kInf})
        add("norm_type " + std::to_string(v), [=](auto &o) { o.norm_type = v; });
    for (float v : {kNaN, kInf, -kInf, -1e-6f})
        add("eps " + std::to_string(v), [=](auto &o) { o.eps = v; });
    for (float v : {kNaN, kInf, 0.0f, -0.0f, -1.0f})
        add("inv_scale " + std::to_string(v), [=](auto &o) { o.inv_scale = v; });
    for (int v : {3, -1, 1000})
        add("policy " + std::to_string(v), [=](auto &o) { robust::set_raw(o.nonfinite, v); });
    for (const auto &[name, o] : bad) {
        SCOPED_TRACE(name);
        EXPECT_EQ(gclip_total_norm(f.plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
        EXPECT_EQ(gclip_clip_grad_norm(f.plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
        EXPECT_STRNE(gclip_last_error(), "");
        EXPECT_EQ(gclip_clip_grad_norm_per_tensor(f.plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
        EXPECT_TRUE(f.unchanged());
    }
    EXPECT_EQ(gclip_clip_grad_norm(f.plan.get(), nullptr, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_clip_grad_norm_per_tensor(f.plan.get(), nullptr, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    for (float v : {kNaN, -1.0f, -kInf, -FLT_MIN})
        EXPECT_EQ(gclip_clip_grad_value(f.plan.get(), v, nullptr), GCLIP_STATUS_INVALID_ARGUMENT) << v;
    for (double v : {static_cast<double>(kNaN), -1.0, -static_cast<double>(kInf), -1e-300})
        EXPECT_EQ(gclip_clip_grad_value_f64(f.plan.get(), v, nullptr), GCLIP_STATUS_INVALID_ARGUMENT)
            << v;
    gclip_norm_options o = base;
    EXPECT_EQ(gclip_clip_grad_norm(nullptr, &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_clip_grad_value(nullptr, 0.0f, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_clip_grad_value_f64(nullptr, 0.0, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_get_result(f.plan.get(), nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(gclip_plan_set_num_threads(f.plan.get(), -1), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_TRUE(f.unchanged());
    // nothing ran, so the plan still reports "no operation yet"
    gclip_result r;
    ASSERT_EQ(gclip_get_result(f.plan.get(), &r), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.has_norm, 0);
}

// A rejected rebind keeps the old pointers: a later clip changes the old
// buffers and leaves the new ones alone.
TEST(NothingLost, RejectedRebindKeepsOldPointers)
{
    Fixture f(11);
    auto fresh = gradients(12);
    const uint64_t fresh_sum = oracle::checksum(fresh);
    std::vector<void *> d;
    for (auto &b : fresh)
        d.push_back(b.data());
    auto try_bad = [&](const char *name, std::vector<void *> v, std::size_t count) {
        SCOPED_TRACE(name);
        EXPECT_NE(gclip_plan_rebind(f.plan.get(), v.empty() ? nullptr : v.data(), count, nullptr),
                  GCLIP_STATUS_SUCCESS);
        EXPECT_STRNE(gclip_last_error(), "");
    };
    try_bad("NULL array", {}, d.size());
    try_bad("count too small", d, d.size() - 1);
    auto v = d;
    v[0] = static_cast<char *>(v[0]) + 1;
    try_bad("misaligned", v, v.size());
    v = d;
    v[4] = nullptr;
    try_bad("NULL data", v, v.size());
    v = d;
    v[4] = v[0];
    try_bad("overlap", v, v.size());
    EXPECT_TRUE(f.unchanged());
    EXPECT_EQ(oracle::checksum(fresh), fresh_sum);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.01f;
    ASSERT_EQ(gclip_clip_grad_norm(f.plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_FALSE(f.unchanged());
    EXPECT_EQ(oracle::checksum(fresh), fresh_sum);
}

// ---- non-finite norms ----------------------------------------------------------

struct Poison {
    const char *name;
    float value;
};

// Each policy with NaN, +Inf, -Inf and an overflowing finite norm, for every
// norm operation: SKIP and ERROR change nothing; PROPAGATE applies PyTorch's
// arithmetic, checked element by element.
TEST(NothingLost, NonFinitePolicies)
{
    const Poison poisons[] = {{"NaN", kNaN}, {"+Inf", kInf}, {"-Inf", -kInf}, {"FLT_MAX", FLT_MAX}};
    const gclip_nonfinite_policy policies[] = {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_ERROR,
                                               GCLIP_NONFINITE_PROPAGATE};
    for (const Poison &poison : poisons)
        for (gclip_nonfinite_policy pol : policies)
            for (int op = 0; op < 3; ++op)
                for (float p : {2.0f, 1.0f, kInf, 3.0f}) {
                    if (poison.value == FLT_MAX && p == kInf)
                        continue; // max|x| = FLT_MAX does not overflow
                    SCOPED_TRACE(std::string(poison.name) + " policy " + std::to_string(pol) +
                                 " op " + std::to_string(op) + " p " + std::to_string(p));
                    Fixture f(20 + op);
                    f.bufs[1].set(66000, poison.value); // in the second chunk
                    if (poison.value == FLT_MAX) // two of them: the norm overflows float
                        f.bufs[0].set(17, -FLT_MAX);
                    const uint64_t before = oracle::checksum(f.bufs);
                    const auto originals = f.bufs;
                    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
                    o.max_norm = 0.5f;
                    o.norm_type = p;
                    o.nonfinite = pol;
                    float tn[5];
                    o.tensor_norms = tn;
                    gclip_status s = op == 0   ? gclip_total_norm(f.plan.get(), &o, nullptr)
                                     : op == 1 ? gclip_clip_grad_norm(f.plan.get(), &o, nullptr)
                                               : gclip_clip_grad_norm_per_tensor(f.plan.get(), &o, nullptr);
                    ASSERT_EQ(s, GCLIP_STATUS_SUCCESS);
                    gclip_result r;
                    s = gclip_get_result(f.plan.get(), &r);
                    EXPECT_EQ(s, pol == GCLIP_NONFINITE_ERROR ? GCLIP_STATUS_NONFINITE : GCLIP_STATUS_SUCCESS);
                    EXPECT_EQ(r.nonfinite, 1);
                    EXPECT_FALSE(std::isfinite(r.total_norm));
                    EXPECT_EQ(std::isnan(r.total_norm), std::isnan(poison.value) != 0);
                    if (op == 0 || pol != GCLIP_NONFINITE_PROPAGATE) {
                        EXPECT_EQ(oracle::checksum(f.bufs), before);
                        EXPECT_EQ(r.scale, 1.0f);
                        continue;
                    }
                    // PROPAGATE: every element times the factor, as PyTorch.
                    const oracle::Norms want = oracle::norms(originals, p);
                    for (std::size_t i = 0; i < f.bufs.size(); ++i) {
                        float factor;
                        if (op == 1) {
                            factor = oracle::expected_coef(r.total_norm, 0.5f, o.eps);
                            EXPECT_EQ(oracle::float_to_bits(r.scale), oracle::float_to_bits(factor));
                        } else {
                            const float ni = oracle::as_reported(want.per_tensor[i]);
                            ASSERT_TRUE(oracle::rel_close(tn[i], want.per_tensor[i], 1e-6L))
                                << i << ": " << tn[i] << " vs " << static_cast<double>(want.per_tensor[i]);
                            factor = oracle::expected_coef(ni, 0.5f, o.eps);
                        }
                        for (int64_t k = 0; k < f.bufs[i].numel(); ++k) {
                            const float got = f.bufs[i].get(k);
                            const float exp = oracle::expected_scaled(originals[i].get(k), factor, f.bufs[i].dtype());
                            if (std::isnan(exp))
                                ASSERT_TRUE(std::isnan(got)) << i << ":" << k;
                            else
                                ASSERT_EQ(oracle::float_to_bits(got), oracle::float_to_bits(exp)) << i << ":" << k;
                        }
                    }
                }
}

} // namespace
