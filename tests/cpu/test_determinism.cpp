// Bitwise determinism: the same plan gives the same norm bits, the same
// per-tensor norm bits and the same clipped bytes from run to run, for any
// thread count (1, 2, 3, 7 and OpenMP's default), and a plan rebuilt over
// the same data agrees with the first one.
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

using oracle::TestBuffer;

namespace {

// Enough chunks (64 Ki elements each) for every thread count to split the
// work differently, in every dtype, with odd offsets and a wide dynamic
// range so that a different summation order would change low bits.
std::vector<TestBuffer> workload()
{
    oracle::Rng rng(500);
    std::vector<TestBuffer> bufs;
    const int64_t sizes[] = {400003, 65537, 3, 131072, 250001, 17, 65535, 99999};
    int k = 0;
    for (int64_t n : sizes) {
        bufs.emplace_back(static_cast<gclip_dtype>(k % 3), n, k % 4);
        for (int64_t i = 0; i < n; ++i)
            bufs.back().set(i, static_cast<float>(rng.normal(std::pow(10.0, rng.range(-3, 3)))));
        ++k;
    }
    return bufs;
}

struct Fingerprint {
    uint32_t total_bits = 0, coef_bits = 0, scale_bits = 0;
    std::vector<uint32_t> tensor_bits;
    uint64_t data = 0; // checksum of the gradients after the operation
};

bool operator==(const Fingerprint &a, const Fingerprint &b)
{
    return a.total_bits == b.total_bits && a.coef_bits == b.coef_bits && a.scale_bits == b.scale_bits &&
           a.tensor_bits == b.tensor_bits && a.data == b.data;
}

// Clip a fresh copy of `original` on a new plan with `threads` threads.
Fingerprint run(const std::vector<TestBuffer> &original, float p, int threads, bool per_tensor)
{
    std::vector<TestBuffer> bufs = original;
    testutil::PlanPtr plan;
    Fingerprint f;
    EXPECT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    if (!plan)
        return f;
    EXPECT_EQ(gclip_plan_set_num_threads(plan.get(), threads), GCLIP_STATUS_SUCCESS);
    std::vector<float> norms(bufs.size());
    gclip_norm_options o = testutil::norm_options(0.75f, p);
    o.inv_scale = 0.3f;
    o.tensor_norms = norms.data();
    EXPECT_EQ((per_tensor ? gclip_clip_grad_norm_per_tensor : gclip_clip_grad_norm)(plan.get(), &o, nullptr),
              GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(plan.get());
    f.total_bits = oracle::float_to_bits(r.total_norm);
    f.coef_bits = oracle::float_to_bits(r.clip_coef);
    f.scale_bits = oracle::float_to_bits(r.scale);
    for (float n : norms)
        f.tensor_bits.push_back(oracle::float_to_bits(n));
    f.data = oracle::checksum(bufs);
    return f;
}

TEST(Determinism, IdenticalBitsForEveryThreadCountAndRun)
{
    const auto bufs = workload();
    for (float p : {2.0f, 1.0f, 3.0f, INFINITY}) {
        for (bool per_tensor : {false, true}) {
            const Fingerprint ref = run(bufs, p, 1, per_tensor);
            EXPECT_NE(ref.data, oracle::checksum(bufs)) << "the clip must write something";
            for (int threads : {2, 3, 7, 0, 1, 2})
                EXPECT_TRUE(run(bufs, p, threads, per_tensor) == ref)
                    << "p=" << p << " threads=" << threads << " per_tensor=" << per_tensor;
        }
    }
}

TEST(Determinism, RepeatedNormsOnOnePlanAgree)
{
    const auto bufs = workload();
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    for (float p : {2.0f, 0.5f}) {
        gclip_norm_options o = testutil::norm_options(1.0f, p);
        uint32_t first = 0;
        for (int i = 0; i < 8; ++i) {
            ASSERT_EQ(gclip_plan_set_num_threads(plan.get(), 1 + i % 4), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
            const uint32_t bits = oracle::float_to_bits(testutil::result_of(plan.get()).total_norm);
            if (i == 0)
                first = bits;
            EXPECT_EQ(bits, first) << "run " << i << " p=" << p;
        }
        // and the value itself is right
        EXPECT_TRUE(oracle::rel_close(oracle::bits_to_float(first), oracle::norms(bufs, p).total, 1e-6L));
    }
}

} // namespace
