// The clipping operations element by element against the oracle: global
// norm clipping (with inv_scale fused), per-tensor clipping and value
// clipping, for every dtype and odd start offsets; the no-write guarantee
// when the factor is exactly 1; the per-tensor norm output; and the device
// result slot.
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

using oracle::TestBuffer;

namespace {

// A plan of every dtype and several sizes (across chunk boundaries too), at
// odd offsets, with values of scale `scale`. Tensor k is of dtype k % 3
// (f32, f16, bf16); the last six sit on either side of the 16 KiB up to
// which the CPU path updates a chunk as one stream (4096 f32, 8192 halves).
std::vector<TestBuffer> mixed_buffers(uint64_t seed, double scale = 3.0)
{
    oracle::Rng rng(seed);
    std::vector<TestBuffer> bufs;
    const int64_t sizes[] = {1,    2,    3,    4,    5,    7,    8,    65535, 65536, 65537,
                             100,  0,    131075, 8192, 8193, 4096, 8191, 8192,  4097};
    int k = 0;
    for (int64_t n : sizes) {
        bufs.emplace_back(static_cast<gclip_dtype>(k % 3), n, k % 5);
        bufs.back().fill(rng, scale * (1 + k % 4));
        ++k;
    }
    return bufs;
}

// f32: within 1 ulp of x * factor; f16/bf16: exactly RNE(float(x) * factor).
::testing::AssertionResult scaled_ok(float got, float x, float factor, gclip_dtype dt)
{
    const float want = oracle::expected_scaled(x, factor, dt);
    if (std::isnan(want) ? std::isnan(got)
                         : dt == GCLIP_F32 ? oracle::ulp_distance(got, want) <= 1 : got == want)
        return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "x=" << x << " factor=" << factor << " got " << got
                                         << " want " << want << " (" << oracle::dtype_name(dt) << ")";
}

// Every element of `after` is `before` times `factor[tensor]`; tensors
// whose factor is exactly 1 are bit-identical.
void expect_scaled(const std::vector<TestBuffer> &before, const std::vector<TestBuffer> &after,
                   const std::vector<float> &factor)
{
    for (size_t k = 0; k < before.size(); ++k) {
        if (factor[k] == 1.0f) {
            const gclip_tensor a = before[k].tensor(), b = after[k].tensor();
            EXPECT_EQ(oracle::checksum(&a, 1), oracle::checksum(&b, 1)) << "tensor " << k;
            continue;
        }
        for (int64_t i = 0; i < before[k].numel(); ++i)
            ASSERT_TRUE(scaled_ok(after[k].get(i), before[k].get(i), factor[k], before[k].dtype()))
                << "tensor " << k << " element " << i;
    }
}

struct ClipCase {
    float p;
    float inv_scale;
    float max_over_norm; // max_norm as a fraction of the true norm
};

TEST(ClipGradNorm, ElementsMatchTheOracleForEveryNormAndScale)
{
    const ClipCase cases[] = {{2, 1, 0.25f}, {1, 1, 0.5f}, {INFINITY, 1, 0.1f}, {3, 1, 0.7f},
                              {0.5f, 1, 0.3f}, {2, 1.0f / 1024, 0.25f}, {2, 0.5f, 10.0f},
                              {1, 3.0f, 0.01f}};
    uint64_t seed = 300;
    for (const ClipCase &c : cases) {
        auto bufs = mixed_buffers(seed++);
        const std::vector<TestBuffer> before = bufs;
        const oracle::Norms want = oracle::norms(bufs, c.p, c.inv_scale);
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        gclip_norm_options o = testutil::norm_options(static_cast<float>(want.total) * c.max_over_norm, c.p);
        o.inv_scale = c.inv_scale;
        ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        const gclip_result r = testutil::result_of(plan.get());

        EXPECT_TRUE(oracle::rel_close(r.total_norm, want.total, 1e-6L)) << c.p;
        // the float formula on the returned norm, and on the oracle's norm
        EXPECT_EQ(r.clip_coef, oracle::expected_coef(r.total_norm, o.max_norm, o.eps));
        EXPECT_TRUE(oracle::rel_close(r.clip_coef,
                                      std::fmin(1.0L, o.max_norm / (want.total + o.eps)), 2e-6L));
        EXPECT_EQ(r.scale, r.clip_coef * c.inv_scale);
        EXPECT_EQ(r.nonfinite, 0);
        EXPECT_EQ(r.has_norm, 1);
        if (c.max_over_norm < 1) {
            EXPECT_LT(r.clip_coef, 1.0f);
        } else {
            EXPECT_EQ(r.clip_coef, 1.0f);
        }
        expect_scaled(before, bufs, std::vector<float>(bufs.size(), r.scale));
    }
}

TEST(ClipGradNorm, FactorOneWritesNothingEvenToReadOnlyMemory)
{
    // The gradients live in pages made read-only: any store, even of an
    // unchanged value, would fault.
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t n = 3 * page / sizeof(float) + 17;
    const size_t bytes = (n * sizeof(float) + page - 1) / page * page;
    void *mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(mem, MAP_FAILED);
    float *f = static_cast<float *>(mem);
    oracle::Rng rng(301);
    oracle::fill_random(f, GCLIP_F32, static_cast<int64_t>(n), rng, 1.0);
    f[5] = -0.0f;
    uint16_t *h = reinterpret_cast<uint16_t *>(f + 3 * page / sizeof(float));
    h[1] = 0x8000; // an f16 -0.0 in the last tensor
    std::vector<gclip_tensor> t = {{f + 1, static_cast<int64_t>(3 * page / sizeof(float)) - 1, GCLIP_F32},
                                   {h, 34, GCLIP_F16}};
    const uint64_t before = oracle::checksum(t.data(), t.size());
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, t), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(mprotect(mem, bytes, PROT_READ), 0);

    gclip_norm_options o = testutil::norm_options(1e30f); // coef 1, inv_scale 1
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(testutil::result_of(plan.get()).scale, 1.0f);
    o.max_norm = INFINITY; // +Inf never clips
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(testutil::result_of(plan.get()).clip_coef, 1.0f);
    EXPECT_EQ(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);

    EXPECT_EQ(oracle::checksum(t.data(), t.size()), before);
    EXPECT_EQ(oracle::float_to_bits(f[5]), 0x80000000u);
    ASSERT_EQ(mprotect(mem, bytes, PROT_READ | PROT_WRITE), 0);
    munmap(mem, bytes);
}

TEST(ClipGradNorm, MaxNormZeroZeroesEveryGradient)
{
    auto bufs = mixed_buffers(302);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(0.0f);
    ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(plan.get());
    EXPECT_EQ(r.clip_coef, 0.0f);
    EXPECT_GT(r.total_norm, 0.0f);
    for (const auto &b : bufs)
        for (int64_t i = 0; i < b.numel(); ++i)
            ASSERT_EQ(b.get(i), 0.0f);
}

// max_norm 0 and +Inf where the quotient max_norm / (N + eps) meets 0 x Inf:
// N + eps too small for float's reciprocal (seeded subnormal f32 gradients,
// eps 0), and N + eps past FLT_MAX (gradients near 3e38, eps 1e38). The
// factor is what the header promises, 0 and 1, never NaN, for the global
// and the per-tensor op, with max_norm given by value and read from
// max_norm_ptr at execution.
TEST(ClipGradNorm, MaxNormZeroAndInfinityKeepTheirMeaningWhereTheQuotientIsZeroTimesInf)
{
    struct Case {
        const char *name;
        float max_norm, eps, lo, hi; // gradient magnitudes in [lo, hi)
        bool per_tensor;
        std::vector<int64_t> sizes;
    };
    // subnormals: every norm below 2.9e-39, whose reciprocal overflows;
    // near 3e38: one element, so that N is finite and N + eps is not
    const std::vector<int64_t> three = {1, 37, 100}, one = {1};
    const Case cases[] = {
        {"max_norm 0, subnormal gradients, eps 0", 0.0f, 0.0f, 1e-40f, 2.5e-40f, false, three},
        {"max_norm 0, subnormal gradients, eps 0, per tensor", 0.0f, 0.0f, 1e-40f, 2.5e-40f, true,
         three},
        {"max_norm Inf, a gradient near 3e38, eps 1e38", INFINITY, 1e38f, 2.5e38f, 3e38f, false, one},
        {"max_norm Inf, a gradient near 3e38, eps 1e38, per tensor", INFINITY, 1e38f, 2.5e38f, 3e38f,
         true, one},
    };
    oracle::Rng rng(305);
    const size_t n_cases = sizeof cases / sizeof cases[0];
    for (size_t v = 0; v < 2 * n_cases; ++v) {
        const Case &c = cases[v % n_cases];
        const bool by_pointer = v >= n_cases;
        SCOPED_TRACE(std::string(c.name) + (by_pointer ? ", max_norm_ptr" : ", max_norm by value"));
        std::vector<TestBuffer> bufs;
        for (int64_t n : c.sizes) {
            bufs.emplace_back(GCLIP_F32, n, 0);
            for (int64_t i = 0; i < n; ++i) {
                const float m = static_cast<float>(rng.uniform(c.lo, c.hi));
                bufs.back().set(i, rng.uniform(0.0, 1.0) < 0.5 ? -m : m);
            }
        }
        const std::vector<TestBuffer> before = bufs;
        const auto exact = oracle::norms(before, 2.0, 1.0);
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        gclip_norm_options o = testutil::norm_options(c.max_norm);
        o.eps = c.eps;
        const float max_norm_cell = c.max_norm;
        if (by_pointer) {
            o.max_norm = 1.0f; // not read when the pointer is set
            o.max_norm_ptr = &max_norm_cell;
        }
        ASSERT_EQ(c.per_tensor ? gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr)
                               : gclip_clip_grad_norm(plan.get(), &o, nullptr),
                  GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        const gclip_result r = testutil::result_of(plan.get());
        EXPECT_EQ(r.nonfinite, 0);
        EXPECT_TRUE(oracle::rel_close(r.total_norm, exact.total, 1e-6L))
            << r.total_norm << " vs " << static_cast<double>(exact.total);
        if (!c.per_tensor)
            EXPECT_EQ(r.clip_coef, c.max_norm == 0.0f ? 0.0f : 1.0f);
        for (size_t k = 0; k < bufs.size(); ++k)
            for (int64_t i = 0; i < bufs[k].numel(); ++i) {
                if (c.max_norm == 0.0f)
                    ASSERT_EQ(bufs[k].get(i), 0.0f) << "tensor " << k << " element " << i;
                else
                    ASSERT_EQ(oracle::float_to_bits(bufs[k].get(i)),
                              oracle::float_to_bits(before[k].get(i)))
                        << "tensor " << k << " element " << i;
            }
    }
}

TEST(ClipGradNorm, InvScaleAloneUnscalesWithoutClipping)
{
    // a loss-scaled gradient set, unscaled in the same pass; no clipping
    auto bufs = mixed_buffers(303, 3000.0);
    const std::vector<TestBuffer> before = bufs;
    const float inv = 1.0f / 1024;
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(1e30f);
    o.inv_scale = inv;
    ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(plan.get());
    EXPECT_TRUE(oracle::rel_close(r.total_norm, oracle::norms(before, 2.0, inv).total, 1e-6L));
    EXPECT_EQ(r.clip_coef, 1.0f);
    EXPECT_EQ(r.scale, inv);
    expect_scaled(before, bufs, std::vector<float>(bufs.size(), inv));
}

TEST(ClipGradNorm, DeviceResultSlotMatchesGetResult)
{
    auto bufs = mixed_buffers(304);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    const gclip_device_result *slot = nullptr;
    ASSERT_EQ(gclip_plan_device_result(plan.get(), &slot), GCLIP_STATUS_SUCCESS);
    ASSERT_NE(slot, nullptr);
    gclip_norm_options o = testutil::norm_options(1.0f);
    o.inv_scale = 0.5f;
    ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(plan.get());
    EXPECT_EQ(slot->total_norm, r.total_norm);
    EXPECT_EQ(slot->clip_coef, r.clip_coef);
    EXPECT_EQ(slot->scale, r.scale);
    EXPECT_EQ(slot->nonfinite, r.nonfinite);
    EXPECT_LT(slot->scale, 0.5f);
}

// ---- per-tensor clipping -----------------------------------------------------------

TEST(ClipPerTensor, EachTensorByItsOwnCoefficient)
{
    for (float p : {2.0f, 1.0f, INFINITY, 3.0f}) {
        for (float inv : {1.0f, 0.25f}) {
            // p = inf seeds 99 (converting inf to an integer is undefined)
            auto bufs = mixed_buffers(310 + (std::isinf(p) ? 99 : static_cast<uint64_t>(p)), 2.0);
            const std::vector<TestBuffer> before = bufs;
            const oracle::Norms want = oracle::norms(bufs, p, inv);
            // a threshold between the tensors' norms: some clip, some do not
            std::vector<long double> sorted(want.per_tensor);
            std::sort(sorted.begin(), sorted.end());
            const float max_norm = static_cast<float>(sorted[sorted.size() / 2]);
            std::vector<float> norms_out(bufs.size(), -1.0f);
            testutil::PlanPtr plan;
            ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
            gclip_norm_options o = testutil::norm_options(max_norm, p);
            o.inv_scale = inv;
            o.tensor_norms = norms_out.data();
            ASSERT_EQ(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
            const gclip_result r = testutil::result_of(plan.get());
            EXPECT_TRUE(oracle::rel_close(r.total_norm, want.total, 1e-6L));
            EXPECT_EQ(r.clip_coef, 1.0f);
            EXPECT_EQ(r.scale, 1.0f);
            EXPECT_EQ(r.nonfinite, 0);

            std::vector<float> factor;
            int clipped = 0;
            for (size_t k = 0; k < bufs.size(); ++k) {
                EXPECT_TRUE(oracle::rel_close(norms_out[k], want.per_tensor[k], 1e-6L)) << k;
                const float c = oracle::expected_coef(norms_out[k], max_norm, o.eps);
                clipped += c < 1.0f;
                factor.push_back(c * inv);
            }
            EXPECT_GT(clipped, 0);
            EXPECT_LT(clipped, static_cast<int>(bufs.size()));
            expect_scaled(before, bufs, factor);
        }
    }
}

TEST(ClipPerTensor, TenThousandTensorsEachGetTheirOwnFactor)
{
    // catches a factor read from the wrong tensor's slot
    oracle::Rng rng(315);
    std::vector<TestBuffer> bufs;
    for (int i = 0; i < 10000; ++i) {
        bufs.emplace_back(static_cast<gclip_dtype>(i % 3), rng.range(0, 12), rng.range(0, 7));
        bufs.back().fill(rng, rng.uniform(0.1, 4.0));
    }
    const std::vector<TestBuffer> before = bufs;
    std::vector<TestBuffer> unasked = bufs; // clipped without tensor_norms
    std::vector<float> norms_out(bufs.size());
    testutil::PlanPtr plan, plan2;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(testutil::make_plan(plan2, oracle::tensors_of(unasked)), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(2.0f);
    ASSERT_EQ(gclip_clip_grad_norm_per_tensor(plan2.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    o.tensor_norms = norms_out.data();
    ASSERT_EQ(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const oracle::Norms want = oracle::norms(before, 2.0);
    std::vector<float> factor;
    for (size_t k = 0; k < bufs.size(); ++k) {
        ASSERT_TRUE(oracle::rel_close(norms_out[k], want.per_tensor[k], 1e-6L)) << k;
        factor.push_back(oracle::expected_coef(norms_out[k], o.max_norm, o.eps));
    }
    expect_scaled(before, bufs, factor);
    // the factors do not depend on whether the norms are asked for (the
    // fold writes them on another path when nothing else is per tensor)
    expect_scaled(before, unasked, factor);
}

// ---- value clipping ------------------------------------------------------------------

void expect_clamped(const std::vector<TestBuffer> &before, const std::vector<TestBuffer> &after, float v)
{
    for (size_t k = 0; k < before.size(); ++k)
        for (int64_t i = 0; i < before[k].numel(); ++i) {
            const float want = oracle::expected_clamped(before[k].get(i), v, before[k].dtype());
            const float got = after[k].get(i);
            ASSERT_TRUE(std::isnan(want) ? std::isnan(got) : got == want)
                << "tensor " << k << " element " << i << ": " << got << " want " << want << " v=" << v;
        }
}

TEST(ClipGradValue, ClampsEveryElementAndKeepsNan)
{
    for (float v : {1.0f, 0.1f, 2.5f, 1e-3f, 0.0f}) {
        auto bufs = mixed_buffers(320);
        // NaN (with payload) at the start, middle and end of a few tensors
        for (size_t k : {0u, 7u, 9u, 12u}) {
            bufs[k].set(0, std::nanf("0x123"));
            bufs[k].set(bufs[k].numel() - 1, -NAN);
            bufs[k].set(bufs[k].numel() / 2, INFINITY);
        }
        const std::vector<TestBuffer> before = bufs;
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_clip_grad_value(plan.get(), v, nullptr), GCLIP_STATUS_SUCCESS);
        expect_clamped(before, bufs, v);
        const gclip_result r = testutil::result_of(plan.get());
        EXPECT_EQ(r.has_norm, 0);
        EXPECT_TRUE(std::isnan(r.total_norm));
        EXPECT_EQ(r.clip_coef, 1.0f);
        EXPECT_EQ(r.scale, 1.0f);
        EXPECT_EQ(r.nonfinite, 0);
    }
}

TEST(ClipGradValue, InfiniteBoundChangesNoBit)
{
    auto bufs = mixed_buffers(321, 1e4);
    bufs[0].set(0, -0.0f);
    bufs[1].set(1, std::nanf("0x55"));
    bufs[2].set(2, -INFINITY);
    const uint64_t before = oracle::checksum(bufs);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_clip_grad_value(plan.get(), INFINITY, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(oracle::checksum(bufs), before);
}

TEST(ClipGradValue, ValueBetweenHalfValuesRoundsTheBound)
{
    // 0.1 is not a f16 or bf16 value: the clamped float rounds to nearest even
    std::vector<TestBuffer> bufs;
    bufs.emplace_back(GCLIP_F16, 4, 1);
    bufs.emplace_back(GCLIP_BF16, 4, 3);
    for (auto &b : bufs) {
        b.set(0, 5.0f);
        b.set(1, -5.0f);
        b.set(2, 0.05f);
        b.set(3, -0.0999f);
    }
    const std::vector<TestBuffer> before = bufs;
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_clip_grad_value(plan.get(), 0.1f, nullptr), GCLIP_STATUS_SUCCESS);
    expect_clamped(before, bufs, 0.1f);
    EXPECT_EQ(bufs[0].get(0), oracle::quantize(0.1f, GCLIP_F16));
    EXPECT_EQ(bufs[1].get(1), -oracle::quantize(0.1f, GCLIP_BF16));
}

// gclip_clip_grad_value_f64: f64 elements clamped to the double bound (PyTorch's
// clip_grad_value_ on float64), the other dtypes to the float nearest it. The
// f64 reference is a long-double clamp of each element, written here.
TEST(ClipGradValue, DoubleBoundClampsF64ExactlyAndTheOthersToTheNearestFloat)
{
    const int64_t sizes[] = {1, 3, 8, 9, 100, 2047, 2048, 2049, 65537, 4099, 40000};
    for (double v : {0.1, 1.0 / 3.0, 2.7182818284590451, 1e39, 1e-50, 0.0}) {
        char name[40];
        std::snprintf(name, sizeof name, "bound %.17g", v);
        SCOPED_TRACE(name);
        oracle::Rng rng(330);
        std::vector<TestBuffer> bufs;
        int k = 0;
        for (int64_t n : sizes) {
            bufs.emplace_back(k % 4 == 3 ? GCLIP_F64 : static_cast<gclip_dtype>(k % 3), n, k % 3);
            bufs.back().fill(rng, k % 2 ? 1.0 : 1e3);
            ++k;
        }
        for (size_t j : {3u, 7u}) { // f64: NaN, infinities, values past float's range
            const double special[] = {std::nan("0x42"), INFINITY, -INFINITY, 1e300, -1e-60};
            for (int i = 0; i < 5; ++i)
                std::memcpy(static_cast<char *>(bufs[j].data()) + 8 * (i * 7 % bufs[j].numel()),
                            &special[i], 8);
        }
        const std::vector<TestBuffer> before = bufs;
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_clip_grad_value_f64(plan.get(), v, nullptr), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        size_t f64_at_bound = 0, f64_inside = 0;
        for (size_t j = 0; j < bufs.size(); ++j) {
            if (bufs[j].dtype() != GCLIP_F64) {
                std::vector<TestBuffer> one_before{before[j]}, one_after{bufs[j]};
                expect_clamped(one_before, one_after, static_cast<float>(v));
                continue;
            }
            const long double b = v;
            for (int64_t i = 0; i < bufs[j].numel(); ++i) {
                const long double x = before[j].get_exact(i);
                const double got = oracle::load_f64(bufs[j].data(), i);
                if (std::isnan(x)) {
                    ASSERT_TRUE(std::isnan(got)) << j << " " << i;
                    continue;
                }
                const double want = static_cast<double>(x > b ? b : (x < -b ? -b : x));
                ASSERT_EQ(got, want) << "tensor " << j << " element " << i << " x=" << (double)x;
                f64_at_bound += std::fabs(got) == v ? 1u : 0u;
                f64_inside += std::fabs(x) < b ? 1u : 0u;
            }
        }
        EXPECT_GT(f64_at_bound, 0u); // some f64 elements were clamped
        if (v > 0.0)
            EXPECT_GT(f64_inside, 0u); // and some were not
    }
}

// A bound that rounds to +Inf in float (past FLT_MAX, or +Inf itself)
// changes no f32, f16 or bf16 element: their bits stay as they were, NaNs
// of either sign and any payload included (a half written back would hold
// the canonical NaN). f64 elements are still clamped to the double bound,
// their NaN payloads kept. Every tensor holds signed NaNs with payloads,
// infinities and random values; the expected bits are written here.
TEST(ClipGradValue, BoundPastFloatLeavesEveryBitOfTheOtherDtypes)
{
    const int64_t sizes[] = {1, 7, 8, 33, 100, 2049, 4099, 40000};
    for (double v : {static_cast<double>(INFINITY), 1e39, 3.5e38, 1e300}) {
        char name[40];
        std::snprintf(name, sizeof name, "bound %.17g", v);
        SCOPED_TRACE(name);
        oracle::Rng rng(337);
        std::vector<TestBuffer> bufs;
        for (int k = 0; k < 16; ++k) {
            const int64_t n = sizes[k % 8];
            bufs.emplace_back(k % 4 == 3 ? GCLIP_F64 : static_cast<gclip_dtype>(k % 3), n, k % 3);
            bufs.back().fill(rng, k % 2 ? 1.0 : 1e30);
            char *d = static_cast<char *>(bufs.back().data());
            for (int i = 0; i < 6; ++i) {
                const int64_t at = (i * 5 + k) % n;
                switch (bufs.back().dtype()) {
                case GCLIP_F16: {
                    const uint16_t b[] = {0xfe01, 0x7c01, 0x7d55, 0xfc00, 0x7c00, 0x7bff};
                    std::memcpy(d + 2 * at, &b[i], 2);
                    break;
                }
                case GCLIP_BF16: {
                    const uint16_t b[] = {0xffc1, 0x7f81, 0x7fa5, 0xff80, 0x7f80, 0x7f7f};
                    std::memcpy(d + 2 * at, &b[i], 2);
                    break;
                }
                case GCLIP_F32: {
                    const uint32_t b[] = {0xffc00001u, 0x7f800001u, 0x7fa5a5a5u,
                                          0xff800000u, 0x7f800000u, 0x7f7fffffu};
                    std::memcpy(d + 4 * at, &b[i], 4);
                    break;
                }
                default: {
                    const uint64_t b[] = {0xfff8000000000001ull, 0x7ff0000000000001ull,
                                          0x7ff5a5a5a5a5a5a5ull, 0xfff0000000000000ull,
                                          0x7ff0000000000000ull, 0x7fefffffffffffffull};
                    std::memcpy(d + 8 * at, &b[i], 8);
                    break;
                }
                }
            }
        }
        const std::vector<TestBuffer> before = bufs;
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_clip_grad_value_f64(plan.get(), v, nullptr), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        size_t f64_clamped = 0;
        for (size_t j = 0; j < bufs.size(); ++j) {
            const size_t bytes = static_cast<size_t>(bufs[j].numel()) * oracle::dtype_size(bufs[j].dtype());
            if (bufs[j].dtype() != GCLIP_F64) {
                EXPECT_EQ(std::memcmp(bufs[j].data(), before[j].data(), bytes), 0)
                    << "tensor " << j << " (" << oracle::dtype_name(bufs[j].dtype()) << ") was changed";
                continue;
            }
            for (int64_t i = 0; i < bufs[j].numel(); ++i) {
                uint64_t xb, gb;
                std::memcpy(&xb, static_cast<const char *>(before[j].data()) + 8 * i, 8);
                std::memcpy(&gb, static_cast<const char *>(bufs[j].data()) + 8 * i, 8);
                double x, want;
                std::memcpy(&x, &xb, 8);
                if (std::isnan(x)) {
                    ASSERT_EQ(gb, xb) << "tensor " << j << " element " << i << ": a NaN's bits";
                    continue;
                }
                want = x > v ? v : (x < -v ? -v : x);
                uint64_t wb;
                std::memcpy(&wb, &want, 8);
                ASSERT_EQ(gb, wb) << "tensor " << j << " element " << i << " x=" << x;
                f64_clamped += want != x;
            }
        }
        if (v != static_cast<double>(INFINITY))
            EXPECT_GT(f64_clamped, 0u); // the f64 infinities (and 1e300 past 3.5e38) came to the bound
    }
}

TEST(ClipGradValue, FloatBoundIsTheDoubleCallWithTheFloatWidened)
{
    for (float v : {0.1f, 1.0f, 3e-39f, 0.0f}) {
        SCOPED_TRACE("bound " + std::to_string(v));
        std::vector<TestBuffer> a;
        oracle::Rng rng(331);
        for (int k = 0; k < 8; ++k) {
            a.emplace_back(k % 4 == 3 ? GCLIP_F64 : static_cast<gclip_dtype>(k % 3), 1000 + 37 * k,
                           k % 3);
            a.back().fill(rng, 0.5);
        }
        std::vector<TestBuffer> b = a;
        testutil::PlanPtr pa, pb;
        ASSERT_EQ(testutil::make_plan(pa, oracle::tensors_of(a)), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(testutil::make_plan(pb, oracle::tensors_of(b)), GCLIP_STATUS_SUCCESS);
        const uint64_t start = oracle::checksum(a);
        ASSERT_EQ(gclip_clip_grad_value(pa.get(), v, nullptr), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_clip_grad_value_f64(pb.get(), static_cast<double>(v), nullptr),
                  GCLIP_STATUS_SUCCESS);
        EXPECT_NE(oracle::checksum(a), start);
        EXPECT_EQ(oracle::checksum(a), oracle::checksum(b));
    }
}

// ---- the per-tensor norm output of every norm operation ---------------------------------

TEST(TensorNorms, WrittenByEveryNormOperation)
{
    using Op = gclip_status (*)(gclip_plan *, const gclip_norm_options *, gclip_stream);
    for (Op op : {Op{gclip_total_norm}, Op{gclip_clip_grad_norm}, Op{gclip_clip_grad_norm_per_tensor}}) {
        auto bufs = mixed_buffers(330);
        const oracle::Norms want = oracle::norms(bufs, 2.0, 0.5);
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        std::vector<float> out(bufs.size() + 1, 123.0f);
        gclip_norm_options o = testutil::norm_options(0.5f);
        o.inv_scale = 0.5f;
        o.tensor_norms = out.data();
        ASSERT_EQ(op(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        for (size_t k = 0; k < bufs.size(); ++k)
            EXPECT_TRUE(oracle::rel_close(out[k], want.per_tensor[k], 1e-6L)) << k;
        EXPECT_EQ(out.back(), 123.0f) << "wrote past the output";
    }
}

} // namespace
