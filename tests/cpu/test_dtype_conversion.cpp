// The CPU path's 16-bit element updates (scale and clamp of f16 and bf16
// tensors, host/scale_cpu.c) against the long-double oracle and against the
// scalar conversions the kernels use (kernels/gclip_dtype.h): every one of
// the 65536 patterns of each dtype is loaded, updated and stored through the
// public API, with seeded random factors that reach every rounding case
// (ties, subnormal results, overflow to Inf), at aligned and unaligned
// starts and with lengths that end in a scalar tail. Where the CPU has
// AVX2 and F16C these run the vector paths; elsewhere the generic loops.
#include "gclip.h"
#include "gclip_norm_math.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace {

float decode(gclip_dtype dt, uint16_t h)
{
    return dt == GCLIP_F16 ? oracle::f16_to_float(h) : oracle::bf16_to_float(h);
}

uint16_t encode(gclip_dtype dt, float f)
{
    return dt == GCLIP_F16 ? oracle::float_to_f16(f) : oracle::float_to_bf16(f);
}

// What the kernels store for element h updated by `update` (the scalar
// conversions of gclip_dtype.h).
template <class F> uint16_t kernel_bits(gclip_dtype dt, uint16_t h, F update)
{
    return dt == GCLIP_F16 ? gclip_f32_to_f16(update(gclip_f16_to_f32(h)))
                           : gclip_f32_to_bf16(update(gclip_bf16_to_f32(h)));
}

// Every pattern twice over plus `extra` more, starting `offset` elements
// into the buffer: two full chunks and a short last one with a tail.
struct Patterns {
    std::vector<uint16_t> buf;
    size_t offset, numel;
    Patterns(size_t off, size_t extra) : buf(off + 2 * 65536 + extra), offset(off), numel(2 * 65536 + extra)
    {
        for (size_t i = 0; i < numel; ++i)
            buf[off + i] = static_cast<uint16_t>((i * 40503u + (i >> 16)) & 0xffffu);
    }
    uint16_t *data() { return buf.data() + offset; }
};

// Checks every element of `got` (the update of `before`) against the
// oracle (for non-NaN results) and bit for bit against the kernels' scalar
// conversions; returns the number of mismatches (reports the first few).
template <class F>
int check(gclip_dtype dt, const std::vector<uint16_t> &before, const uint16_t *got, F update,
          const char *what)
{
    int bad = 0;
    for (size_t i = 0; i < before.size(); ++i) {
        const uint16_t h = before[i];
        const uint16_t want_kernel = kernel_bits(dt, h, update);
        const float x = decode(dt, h);
        const float y = update(x);
        const bool ok_oracle = std::isnan(y) ? std::isnan(decode(dt, got[i])) : got[i] == encode(dt, y);
        if (got[i] != want_kernel || !ok_oracle) {
            if (++bad <= 5)
                ADD_FAILURE() << what << " " << oracle::dtype_name(dt) << " element " << i
                              << ": in 0x" << std::hex << h << " got 0x" << got[i]
                              << " kernel 0x" << want_kernel << " oracle 0x" << encode(dt, y);
        }
    }
    return bad;
}

class HalfUpdate : public ::testing::TestWithParam<gclip_dtype> {};

TEST_P(HalfUpdate, ScaleOfEveryPatternIsBitExact)
{
    const gclip_dtype dt = GetParam();
    std::mt19937 rng(20240611u);
    std::uniform_int_distribution<uint32_t> mant(0, (1u << 23) - 1);
    std::uniform_int_distribution<int> expo(-30, 12);
    for (int trial = 0; trial < 25; ++trial) {
        // factors of every magnitude: many results round, some to subnormal
        // halves or zero, some (factor > 1) overflow to Inf; and 0 (max_norm
        // 0), which turns Inf into NaN
        float factor = std::ldexp(1.0f + static_cast<float>(mant(rng)) * 0x1p-23f, expo(rng));
        if (trial == 0)
            factor = 0.5f; // exact: no rounding at all
        if (trial == 24)
            factor = 0.0f;
        Patterns p(static_cast<size_t>(trial % 3), static_cast<size_t>(37 + 11 * trial));
        const std::vector<uint16_t> before(p.data(), p.data() + p.numel);
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, {gclip_tensor{p.data(), static_cast<int64_t>(p.numel), dt}}),
                  GCLIP_STATUS_SUCCESS);
        gclip_norm_options o = gclip_norm_options_default();
        o.max_norm = factor == 0.0f ? 0.0f : 1e30f; // coefficient 0, or 1: the factor is inv_scale
        o.inv_scale = factor == 0.0f ? 1.0f : factor;
        ASSERT_EQ(gclip_clip_grads_with_norm(plan.get(), &o, 1.0f, nullptr, nullptr),
                  GCLIP_STATUS_SUCCESS);
        const float applied = testutil::result_of(plan.get()).scale;
        ASSERT_EQ(applied, factor);
        EXPECT_EQ(check(dt, before, p.data(), [=](float x) { return x * applied; }, "scale"), 0)
            << "factor " << factor;
    }
}

TEST_P(HalfUpdate, ClampOfEveryPatternIsBitExact)
{
    const gclip_dtype dt = GetParam();
    // bounds between representable values (rounded on store), exact ones,
    // subnormal ones, the largest half, one that rounds to Inf (f16), a
    // half-way one that rounds up, zero and -0 (which sends positive
    // elements to -0 and negative ones to +0), then seeded random ones of
    // every magnitude
    std::vector<float> bounds = {0.1f,     1.0f,    3e-6f,           6e-8f, 65504.0f,
                                 65520.0f, 1e30f,   1.0f + 0x1p-11f, 0.0f,  -0.0f,
                                 0x1.ffffp-15f, 3.4e38f};
    std::mt19937 rng(20261202u);
    std::uniform_int_distribution<uint32_t> mant(0, (1u << 23) - 1);
    std::uniform_int_distribution<int> expo(-28, 20);
    for (int i = 0; i < 12; ++i)
        bounds.push_back(std::ldexp(1.0f + static_cast<float>(mant(rng)) * 0x1p-23f, expo(rng)));
    int k = 0;
    for (float v : bounds) {
        Patterns p(static_cast<size_t>(k % 3), static_cast<size_t>(5 + 13 * k));
        ++k;
        const std::vector<uint16_t> before(p.data(), p.data() + p.numel);
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, {gclip_tensor{p.data(), static_cast<int64_t>(p.numel), dt}}),
                  GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_clip_grad_value(plan.get(), v, nullptr), GCLIP_STATUS_SUCCESS);
        // the contract's clamp, written here: NaN compares false and is kept
        auto clamp = [=](float x) { return x < -v ? -v : (x > v ? v : x); };
        EXPECT_EQ(check(dt, before, p.data(), clamp, "clamp"), 0)
            << "clip_value " << v << (std::signbit(v) ? " (negative sign)" : "");
    }
}

// The same patterns cut into many small tensors: a chunk of at most 16 KiB
// is updated as one stream (host/scale_cpu.c, half_split), larger ones as
// four streams and a rest; the lengths straddle both, the 16-element vector
// and the scalar tail.
TEST_P(HalfUpdate, SmallTensorsOfEveryPatternAreBitExact)
{
    const gclip_dtype dt = GetParam();
    const size_t lengths[] = {1, 15, 16, 17, 100, 1000, 4095, 8191, 8192, 8193, 8208, 20000};
    std::mt19937 rng(20261204u);
    std::uniform_int_distribution<uint32_t> mant(0, (1u << 23) - 1);
    std::uniform_int_distribution<int> expo(-24, 8);
    for (int trial = 0; trial < 6; ++trial) {
        Patterns p(static_cast<size_t>(trial % 3), static_cast<size_t>(trial));
        std::vector<gclip_tensor> ts;
        for (size_t at = 0, k = static_cast<size_t>(trial); at < p.numel; ++k) {
            const size_t n = std::min(lengths[k % (sizeof lengths / sizeof lengths[0])], p.numel - at);
            ts.push_back(gclip_tensor{p.data() + at, static_cast<int64_t>(n), dt});
            at += n;
        }
        const std::vector<uint16_t> before(p.data(), p.data() + p.numel);
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, ts), GCLIP_STATUS_SUCCESS);
        const float r = std::ldexp(1.0f + static_cast<float>(mant(rng)) * 0x1p-23f, expo(rng));
        if (trial % 2 == 0) {
            gclip_norm_options o = gclip_norm_options_default();
            o.max_norm = 1e30f;
            o.inv_scale = trial == 4 ? 0.0f : r; // 0: Inf becomes NaN
            if (trial == 4)
                o.max_norm = 0.0f, o.inv_scale = 1.0f;
            ASSERT_EQ(gclip_clip_grads_with_norm(plan.get(), &o, 1.0f, nullptr, nullptr),
                      GCLIP_STATUS_SUCCESS);
            const float applied = testutil::result_of(plan.get()).scale;
            // max_norm 1e30 leaves the coefficient at 1 (the factor is
            // inv_scale); max_norm 0 makes it 0
            ASSERT_EQ(applied, trial == 4 ? 0.0f : r);
            EXPECT_EQ(check(dt, before, p.data(), [=](float x) { return x * applied; }, "scale"), 0)
                << "factor " << applied;
        } else {
            const float v = trial == 5 ? -0.0f : r;
            ASSERT_EQ(gclip_clip_grad_value(plan.get(), v, nullptr), GCLIP_STATUS_SUCCESS);
            auto clamp = [=](float x) { return x < -v ? -v : (x > v ? v : x); };
            EXPECT_EQ(check(dt, before, p.data(), clamp, "clamp"), 0) << "clip_value " << v;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, HalfUpdate, ::testing::Values(GCLIP_F16, GCLIP_BF16),
                         [](const ::testing::TestParamInfo<gclip_dtype> &i) {
                             return std::string(oracle::dtype_name(i.param));
                         });

} // namespace
