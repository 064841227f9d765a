// test_emu_scale_clamp.cpp - the scale and clamp kernels run by the SIMT
// emulator: value clipping of every dtype (NaN kept) for every bound of the
// shared table, factors of exactly 1 that must write nothing (the data sits
// in read-only pages, so any store faults), and the non-finite policies,
// all against the CPU path.
#include "emu_harness.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<emu::Spec> every_dtype_boundaries()
{
    std::vector<emu::Spec> v;
    for (gclip_dtype dt : specs::all_dtypes())
        for (const emu::Spec &s : emu::boundary_sizes(dt))
            v.push_back(s);
    return v;
}

// Clamp in every schedule; results equal the CPU path's and one another.
void expect_clamp_everywhere(emu::Fixture &f, double v)
{
    f.reset_host();
    ASSERT_EQ(f.cpu_clamp(v), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    emu::for_every_schedule(
        f, [&] { return f.emu_clamp(v); }, [&] { f.expect_clamp_matches(v); });
}

TEST(EmuClamp, EveryDtypeAroundVectorAndChunkEnds)
{
    emu::Fixture f(every_dtype_boundaries(), 21);
    expect_clamp_everywhere(f, 0.75f);
}

// Every bound of value clipping's table, on many tensors of every dtype.
TEST(EmuClamp, EveryBoundOfTheTable)
{
    emu::Fixture f(emu::mixed_many(26, 120), 26);
    for (float v : specs::value_clip_bounds()) {
        SCOPED_TRACE("bound " + specs::bound_name(v));
        expect_clamp_everywhere(f, v);
        if (::testing::Test::HasFailure())
            return;
    }
}

// gclip_clip_grad_value_f64: f64 elements clamped to the double bound
// itself, the other dtypes to the float nearest it. Bounds that float does
// not hold (0.1, 1/3), one past FLT_MAX (f32 and halves left as they are,
// f64 infinities brought to it) and one below float's subnormals (0 for
// them, a tiny bound for f64).
TEST(EmuClamp, DoubleBoundClampsF64ExactlyAndTheOthersToTheNearestFloat)
{
    emu::Fixture f(every_dtype_boundaries(), 27);
    for (std::size_t k = 0; k + 1 < f.count(); k += 2) {
        f.set_element(k, 0, kInf);
        f.set_element(k + 1, 0, -kInf);
    }
    for (double v : {0.1, 1.0 / 3.0, 1e39, 1e-50}) {
        char name[40];
        std::snprintf(name, sizeof name, "bound %.17g", v);
        SCOPED_TRACE(name);
        ASSERT_NE(static_cast<double>(static_cast<float>(v)), v);
        expect_clamp_everywhere(f, v);
        if (::testing::Test::HasFailure())
            return;
    }
}

// A bound that rounds to +Inf in float (+Inf itself, or past FLT_MAX)
// leaves f32 and half chunks alone: every bit as it was, NaNs of either
// sign and any payload included (a half stored back would hold the
// canonical NaN), as on the CPU path. f64 chunks are still clamped to the
// double bound, NaN payloads kept.
TEST(EmuClamp, BoundPastFloatLeavesEveryBitOfTheOtherDtypes)
{
    emu::Fixture f(every_dtype_boundaries(), 28, 1e3);
    for (std::size_t k = 0; k < f.count(); ++k) {
        const int64_t n = f.specs()[k].numel;
        if (n == 0)
            continue;
        for (int i = 0; i < 6; ++i) {
            static const uint64_t f16[] = {0xfe01, 0x7c01, 0x7d55, 0xfc00, 0x7c00, 0x7bff};
            static const uint64_t bf16[] = {0xffc1, 0x7f81, 0x7fa5, 0xff80, 0x7f80, 0x7f7f};
            static const uint64_t f32[] = {0xffc00001u, 0x7f800001u, 0x7fa5a5a5u,
                                           0xff800000u, 0x7f800000u, 0x7f7fffffu};
            static const uint64_t f64[] = {0xfff8000000000001ull, 0x7ff0000000000001ull,
                                           0x7ff5a5a5a5a5a5a5ull, 0xfff0000000000000ull,
                                           0x7ff0000000000000ull, 0x7fefffffffffffffull};
            const gclip_dtype dt = f.specs()[k].dtype;
            const uint64_t bits = dt == GCLIP_F16 ? f16[i] : dt == GCLIP_BF16 ? bf16[i]
                                  : dt == GCLIP_F32 ? f32[i] : f64[i];
            f.set_pristine_bits(k, (i * 7 + static_cast<int64_t>(k)) % n, bits);
        }
    }
    f.reset_both();
    for (double v : {static_cast<double>(kInf), 1e39, 3.5e38, 1e300}) {
        char name[40];
        std::snprintf(name, sizeof name, "bound %.17g", v);
        SCOPED_TRACE(name);
        expect_clamp_everywhere(f, v);
        for (std::size_t k = 0; k < f.count(); ++k) {
            if (f.specs()[k].dtype == GCLIP_F64)
                continue;
            const std::size_t bytes = static_cast<std::size_t>(f.specs()[k].numel) *
                                      oracle::dtype_size(f.specs()[k].dtype);
            ASSERT_EQ(std::memcmp(f.device_data(k), f.pristine_data(k), bytes), 0)
                << "tensor " << k << " (" << oracle::dtype_name(f.specs()[k].dtype)
                << ") was changed";
        }
        if (::testing::Test::HasFailure())
            return;
    }
}

TEST(EmuClamp, KeepsNaNAndClampsInfinities)
{
    emu::Fixture f(every_dtype_boundaries(), 22);
    for (std::size_t k = 0; k + 2 < f.count(); k += 3) {
        f.set_element(k, 0, kNaN);
        f.set_element(k + 1, 0, kInf);
        f.set_element(k + 2, 0, -kInf);
    }
    expect_clamp_everywhere(f, 0.5f);
}

TEST(EmuClamp, ZeroAndInfiniteBounds)
{
    emu::Fixture f(emu::mixed_many(23, 40), 23);
    expect_clamp_everywhere(f, 0.0f);
    expect_clamp_everywhere(f, kInf);
}

TEST(EmuClamp, ManyTensorsAndEmptyPlans)
{
    emu::Fixture many(emu::mixed_many(24, 300), 24);
    expect_clamp_everywhere(many, 1.0f);
    emu::Fixture none({}, 25);
    expect_clamp_everywhere(none, 1.0f); // block 0 still writes the result
}

// The launches of `op`, the data read only while they run when `read_only`
// (the fixture's memory paged): a single store faults.
int run_op(emu::Fixture &f, const gclip_norm_options &o, int32_t op, bool read_only)
{
    f.set_read_only(read_only);
    const int rc = f.emu_norm_op(o, op);
    f.set_read_only(false);
    return rc;
}

void expect_no_write(const std::vector<emu::Spec> &specs, gclip_norm_options o, int32_t op)
{
    emu::Fixture f(specs, 31, 1.0, /*paged=*/true);
    ASSERT_EQ(f.cpu_norm_op(o, op), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    auto run = [&] { return run_op(f, o, op, true); };
    emu::for_every_schedule(f, run, [&] {
        f.expect_norm_op_matches(o, op);
        f.expect_data_unchanged();
    });
}

// A paged buffer's bytes past its data are poisoned: reading them is fatal
// under ASan, as past an exact-size buffer, so the fixtures that prove a
// launch writes nothing still catch a kernel that reads past a tensor.
using EmuDevBufDeathTest = ::testing::Test;

TEST_F(EmuDevBufDeathTest, ReadPastAPagedBufferIsFatal)
{
#if defined(__SANITIZE_ADDRESS__)
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    {
        emu::DevBuf b(13, 3, /*paged=*/true);
        b.fill(0x5a);
        const volatile unsigned char *p = b.as<const unsigned char>();
        unsigned sum = 0;
        for (int i = 0; i < 13; ++i)
            sum += p[i]; // every byte of the data may be read
        EXPECT_EQ(sum, 13u * 0x5a);
    }
    EXPECT_DEATH(
        {
            emu::DevBuf b(13, 3, /*paged=*/true);
            const volatile unsigned char *p = b.as<const unsigned char>();
            (void)p[13];
        },
        "use-after-poison");
#else
    GTEST_SKIP() << "needs AddressSanitizer";
#endif
}

TEST(EmuScale, FactorOneWritesNothing)
{
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = kInf;
    expect_no_write(every_dtype_boundaries(), o, GCLIP_OP_CLIP_NORM);
    expect_no_write(every_dtype_boundaries(), o, GCLIP_OP_CLIP_PER_TENSOR);
    o.max_norm = 1e30f; // coefficient 1 from the division, not from +Inf
    expect_no_write(emu::mixed_many(32, 100), o, GCLIP_OP_CLIP_NORM);
}

TEST(EmuScale, OpsThatDoNotApplyWriteNothing)
{
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 1e-3f; // would clip hard, but the norm-only op writes nothing
    expect_no_write(every_dtype_boundaries(), o, GCLIP_OP_TOTAL_NORM);
    expect_no_write(every_dtype_boundaries(), o, GCLIP_OP_CLIP_FACTOR);
    expect_no_write(every_dtype_boundaries(), o, GCLIP_OP_ACCUMULATE);
}

TEST(EmuScale, InvScaleAloneAndMaxNormZero)
{
    for (float max_norm : {kInf, 0.0f}) {
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.max_norm = max_norm;
        o.inv_scale = 0.125f;
        for (int32_t op : {int32_t{GCLIP_OP_CLIP_NORM}, int32_t{GCLIP_OP_CLIP_PER_TENSOR}}) {
            emu::Fixture f(every_dtype_boundaries(), 33);
            ASSERT_EQ(f.cpu_norm_op(o, op), GCLIP_STATUS_SUCCESS) << gclip_last_error();
            emu::use(emu::schedules()[2].s);
            ASSERT_EQ(f.emu_norm_op(o, op), 0) << gclip_emu::error_message();
            f.expect_norm_op_matches(o, op);
        }
    }
}

struct NonfiniteCase {
    float value;
    gclip_nonfinite_policy policy;
    int32_t op;
};

class EmuNonfinite : public ::testing::TestWithParam<NonfiniteCase> {};

// One NaN or Inf element: SKIP and ERROR write nothing, PROPAGATE applies
// PyTorch's arithmetic; the flag is raised either way.
TEST_P(EmuNonfinite, FollowsThePolicyLikeTheCpuPath)
{
    const NonfiniteCase c = GetParam();
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.nonfinite = c.policy;
    float sentinel;
    o.tensor_norms = &sentinel;
    const bool writes = c.policy == GCLIP_NONFINITE_PROPAGATE;
    emu::Fixture f(emu::mixed_many(41, 30), 41, 1.0, /*paged=*/!writes);
    ASSERT_GT(f.specs()[7].numel, 0);
    f.set_element(7, 0, c.value);
    ASSERT_EQ(f.cpu_norm_op(o, c.op), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    auto run = [&] { return run_op(f, o, c.op, !writes); };
    emu::for_every_schedule(f, run, [&] {
        f.expect_norm_op_matches(o, c.op);
        EXPECT_EQ(f.emu_result().nonfinite, 1);
        if (!writes)
            f.expect_data_unchanged();
    });
}

std::vector<NonfiniteCase> nonfinite_cases()
{
    std::vector<NonfiniteCase> v;
    for (float value : {kNaN, kInf, -kInf})
        for (gclip_nonfinite_policy p :
             {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_PROPAGATE, GCLIP_NONFINITE_ERROR})
            for (int32_t op : {int32_t{GCLIP_OP_CLIP_NORM}, int32_t{GCLIP_OP_CLIP_PER_TENSOR}})
                v.push_back(NonfiniteCase{value, p, op});
    return v;
}

std::string name_of(const NonfiniteCase &c)
{
    std::string n = std::isnan(c.value) ? "NaN" : c.value > 0 ? "Inf" : "MinusInf";
    n += c.policy == GCLIP_NONFINITE_SKIP ? "_Skip" : c.policy == GCLIP_NONFINITE_ERROR ? "_Error" : "_Propagate";
    n += c.op == GCLIP_OP_CLIP_NORM ? "_Global" : "_PerTensor";
    return n;
}

// gtest prints parameters in test listings (and so in ctest names).
void PrintTo(const NonfiniteCase &c, std::ostream *os) { *os << name_of(c); }

std::string nonfinite_name(const ::testing::TestParamInfo<NonfiniteCase> &info)
{
    return name_of(info.param);
}

INSTANTIATE_TEST_SUITE_P(Policies, EmuNonfinite, ::testing::ValuesIn(nonfinite_cases()),
                         nonfinite_name);

// Non-finite tensors that the fold lanes complete, not the last block's
// close: a plan of several chunks a lane, a NaN, Inf or -Inf in every 37th
// tensor (half NaNs among them, which convert to the canonical f32 NaN where
// the CPU path's chunk partials take the positive quiet NaN). The partial
// counts each such tensor once, as the CPU path does (its count is what a
// distributed finalize adds up); their norms alone are not finite; the
// slot's NaN norm has the CPU path's bits; nothing is written.
TEST(EmuNonfiniteCount, TensorsCompletedInsideFoldLanesAreCounted)
{
    emu::Fixture f(emu::mixed_many(37, 900), 37, 1.0, /*paged=*/true);
    ASSERT_GE(f.num_chunks(), 3u * GCLIP_FOLD_LANES) << "too few chunks for lanes of several";
    const float values[] = {kNaN, kInf, -kInf};
    std::vector<bool> planted(f.count(), false);
    uint32_t expected = 0, half_nans = 0;
    for (std::size_t k = 5; k < f.count(); k += 37) {
        if (f.specs()[k].numel == 0)
            continue;
        f.set_element(k, f.specs()[k].numel / 2, values[expected % 3]);
        const gclip_dtype dt = f.specs()[k].dtype;
        half_nans += expected % 3 == 0 && (dt == GCLIP_F16 || dt == GCLIP_BF16);
        planted[k] = true;
        ++expected;
    }
    ASSERT_GE(expected, 20u);
    ASSERT_GE(half_nans, 1u) << "no half's NaN among the planted values";
    for (int32_t op : {int32_t{GCLIP_OP_CLIP_NORM}, int32_t{GCLIP_OP_CLIP_PER_TENSOR}}) {
        SCOPED_TRACE(emu::op_name(op));
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.nonfinite = GCLIP_NONFINITE_SKIP;
        float sentinel;
        o.tensor_norms = &sentinel;
        f.reset_host();
        ASSERT_EQ(f.cpu_norm_op(o, op), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        ASSERT_EQ(f.cpu_partial().nonfinite, expected);
        auto run = [&] { return run_op(f, o, op, true); };
        emu::for_every_schedule(f, run, [&] {
            f.expect_norm_op_matches(o, op);
            f.expect_data_unchanged();
            EXPECT_EQ(f.emu_partial().nonfinite, expected);
            EXPECT_EQ(f.emu_result().nonfinite, 1);
            for (std::size_t k = 0; k < f.count(); ++k)
                EXPECT_EQ(std::isfinite(f.emu_tensor_norm(k)), !planted[k]) << "tensor " << k;
        });
    }
}

} // namespace
