// Scale (label `large`): a bf16 tensor of more than 2^31 elements and a plan
// of 100,000 tensors, both against the long-double oracle. Elapsed times are
// printed and recorded as test properties (never asserted).
#include "robust_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0)
{
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

void report_time(const char *what, Clock::time_point t0)
{
    const double s = seconds_since(t0);
    std::printf("[ time     ] %-34s %8.2f s\n", what, s);
    ::testing::Test::RecordProperty(what, std::to_string(s));
}

// ---- the big bf16 tensor ---------------------------------------------------------

constexpr int64_t kBig = (int64_t{1} << 31) + 1000;
constexpr int64_t kSpike = (int64_t{1} << 31) + 500; // past every 32-bit index
constexpr uint16_t kSpikeBits = 0xc480;              // bf16 -1024, the largest |x|

uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Element i as bf16 bits, recomputable at any index (counter-based): one
// hash gives four elements, each a random sign and mantissa with an exponent
// putting |x| in [2^-6, 2^2), so never zero.
uint16_t lane_bits(uint64_t h, int lane)
{
    const unsigned r = static_cast<unsigned>(h >> (16 * lane)) & 0xffffu;
    const unsigned sign = r >> 15, exp = 121u + ((r >> 7) & 7u), mant = r & 0x7fu;
    return static_cast<uint16_t>(sign << 15 | exp << 7 | mant);
}

uint64_t group_hash(int64_t i) { return splitmix64(0x5eedull ^ static_cast<uint64_t>(i >> 2)); }

uint16_t element_bits(int64_t i)
{
    return i == kSpike ? kSpikeBits : lane_bits(group_hash(i), static_cast<int>(i & 3));
}

// f(i, bits) for every element of [b, e), hashing once per group of four.
template <class F>
void for_elements(int64_t b, int64_t e, F f)
{
    for (int64_t i = b; i < e;) {
        const uint64_t h = group_hash(i);
        for (int lane = static_cast<int>(i & 3); lane < 4 && i < e; ++lane, ++i)
            f(i, i == kSpike ? kSpikeBits : lane_bits(h, lane));
    }
}

// Runs body(begin, end) over [0, n) on every core.
template <class F>
void parallel_range(int64_t n, F body)
{
    const int64_t k = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> pool;
    for (int64_t t = 0; t < k; ++t)
        pool.emplace_back([=] { body(n * t / k, n * (t + 1) / k); });
    for (auto &th : pool)
        th.join();
}

using Histogram = std::array<uint64_t, 65536>;

// How often each bf16 bit pattern occurs: the oracle's view of the tensor.
Histogram histogram(const uint16_t *x, int64_t n)
{
    std::mutex m;
    Histogram total{};
    parallel_range(n, [&](int64_t b, int64_t e) {
        auto h = std::make_unique<Histogram>();
        h->fill(0);
        for (int64_t i = b; i < e; ++i)
            ++(*h)[x[i]];
        std::lock_guard<std::mutex> lock(m);
        for (std::size_t k = 0; k < total.size(); ++k)
            total[k] += (*h)[k];
    });
    return total;
}

TEST(Large, Bf16TensorOver2Pow31Elements)
{
    auto t0 = Clock::now();
    auto *x = static_cast<uint16_t *>(std::malloc(static_cast<std::size_t>(kBig) * 2));
    if (!x)
        GTEST_SKIP() << "cannot allocate 4 GiB on this machine";
    std::unique_ptr<uint16_t, decltype(&std::free)> own(x, &std::free);
    parallel_range(kBig, [x](int64_t b, int64_t e) {
        for_elements(b, e, [x](int64_t i, uint16_t bits) { x[i] = bits; });
    });
    report_time("fill 2^31+1000 bf16", t0);

    // Oracle: long-double norms from the histogram, values decoded by the
    // oracle's own bf16 conversion.
    t0 = Clock::now();
    const Histogram hist = histogram(x, kBig);
    oracle::ld sum_sq = 0, max_abs = 0;
    uint64_t seen = 0;
    for (uint32_t b = 0; b < 65536; ++b) {
        if (!hist[b])
            continue;
        const oracle::ld a = std::fabs(static_cast<oracle::ld>(oracle::bf16_to_float(static_cast<uint16_t>(b))));
        sum_sq += static_cast<oracle::ld>(hist[b]) * a * a;
        max_abs = std::max(max_abs, a);
        seen += hist[b];
    }
    ASSERT_EQ(seen, static_cast<uint64_t>(kBig));
    const oracle::ld want_l2 = std::sqrt(sum_sq);
    report_time("oracle (histogram)", t0);
    ASSERT_EQ(max_abs, 1024.0L);

    const gclip_tensor t{x, kBig, GCLIP_BF16};
    robust::Plan plan;
    ASSERT_EQ(gclip_plan_create(plan.out(), &t, 1, GCLIP_DEVICE_CPU), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    gclip_result r;

    // max|x| sits past index 2^31: a truncated index would miss it
    t0 = Clock::now();
    o.norm_type = std::numeric_limits<float>::infinity();
    ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    report_time("gclip_total_norm p=inf", t0);
    ASSERT_EQ(gclip_get_result(plan.get(), &r), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.total_norm, 1024.0f);

    t0 = Clock::now();
    o.norm_type = 2.0f;
    o.max_norm = static_cast<float>(want_l2 * 0.37L);
    ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    report_time("gclip_clip_grad_norm p=2", t0);
    ASSERT_EQ(gclip_get_result(plan.get(), &r), GCLIP_STATUS_SUCCESS);
    EXPECT_TRUE(oracle::rel_close(r.total_norm, want_l2, 1e-6L))
        << r.total_norm << " vs " << static_cast<double>(want_l2);
    const float coef = oracle::expected_op_coef(r.total_norm, o.max_norm, o.eps);
    EXPECT_EQ(r.clip_coef, coef);
    EXPECT_EQ(r.scale, coef);
    ASSERT_LT(r.scale, 0.5f);

    // Full position-exact check: element i must be the oracle's rounding of
    // original(i) * scale. The originals are recomputed from the generator and
    // the expected output of each of the 65536 patterns is tabulated.
    t0 = Clock::now();
    std::vector<uint16_t> expect(65536);
    for (uint32_t b = 0; b < 65536; ++b)
        expect[b] = oracle::float_to_bf16(oracle::bf16_to_float(static_cast<uint16_t>(b)) * r.scale);
    for (int64_t i : {int64_t{0}, (int64_t{1} << 31) - 1, int64_t{1} << 31, kSpike, kBig - 1})
        EXPECT_EQ(x[i], expect[element_bits(i)]) << "element " << i;
    std::atomic<int64_t> wrong{0};
    parallel_range(kBig, [&](int64_t b, int64_t e) {
        int64_t w = 0;
        for_elements(b, e, [&](int64_t i, uint16_t bits) { w += x[i] != expect[bits]; });
        wrong += w;
    });
    EXPECT_EQ(wrong.load(), 0) << "elements not equal to original * scale";
    report_time("full check of every element", t0);
}

// ---- many tensors ---------------------------------------------------------------

TEST(Large, HundredThousandTensors)
{
    auto t0 = Clock::now();
    auto specs = robust::random_specs(100000, 64, 77);
    specs[500] = {200000, GCLIP_F32, 1}; // one multi-chunk tensor among them
    auto bufs = robust::make_buffers(specs, 78);
    const auto originals = bufs;
    const auto t = oracle::tensors_of(bufs);
    report_time("fill 100000 tensors", t0);

    t0 = Clock::now();
    const oracle::Norms want = oracle::norms(bufs, 2.0, 0.5);
    report_time("oracle norms", t0);

    t0 = Clock::now();
    robust::Plan plan;
    ASSERT_EQ(gclip_plan_create(plan.out(), t.data(), t.size(), GCLIP_DEVICE_CPU), GCLIP_STATUS_SUCCESS);
    report_time("gclip_plan_create 100000 tensors", t0);

    std::vector<float> tn(t.size());
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 2.0f;
    o.inv_scale = 0.5f;
    o.tensor_norms = tn.data();
    t0 = Clock::now();
    ASSERT_EQ(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    report_time("per-tensor clip 100000 tensors", t0);
    gclip_result r;
    ASSERT_EQ(gclip_get_result(plan.get(), &r), GCLIP_STATUS_SUCCESS);
    EXPECT_TRUE(oracle::rel_close(r.total_norm, want.total, 1e-6L));
    int64_t bad_norms = 0, bad_elems = 0, clipped = 0;
    for (std::size_t i = 0; i < t.size(); ++i) {
        bad_norms += !oracle::rel_close(tn[i], want.per_tensor[i], 1e-6L);
        const float factor = oracle::expected_op_coef(tn[i], o.max_norm, o.eps) * o.inv_scale;
        clipped += factor < o.inv_scale;
        for (int64_t k = 0; k < bufs[i].numel(); ++k) {
            const float e = oracle::expected_scaled(originals[i].get(k), factor, bufs[i].dtype());
            bad_elems += oracle::float_to_bits(bufs[i].get(k)) != oracle::float_to_bits(e);
        }
    }
    EXPECT_EQ(bad_norms, 0);
    EXPECT_EQ(bad_elems, 0);
    EXPECT_GT(clipped, 1000) << "max_norm should clip a good share of the tensors";
}

} // namespace
