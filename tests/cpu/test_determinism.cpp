// Bitwise determinism: the same plan gives the same norm bits, the same
// per-tensor norm bits and the same clipped bytes from run to run, for any
// thread count (1, 2, 3, 7 and OpenMP's default), and a plan rebuilt over
// the same data agrees with the first one. A plan of many small tensors
// (more chunks than the fold runs on one thread) covers the fold's lanes
// split among threads.
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

// 12,000 small tensors (more than the 8,192 chunks from which the fold of
// the chunk partials is split among threads), of every float dtype, odd
// sizes and offsets, some empty, values over six decades.
std::vector<TestBuffer> many_small()
{
    oracle::Rng rng(501);
    std::vector<TestBuffer> bufs;
    for (int k = 0; k < 12000; ++k) {
        const int64_t n = k % 997 == 5 ? 0 : 1 + static_cast<int64_t>(rng.range(0, 300));
        bufs.emplace_back(static_cast<gclip_dtype>(k % 3), n, k % 5);
        const double sd = std::pow(10.0, rng.range(-3, 3));
        for (int64_t i = 0; i < n; ++i)
            bufs.back().set(i, static_cast<float>(rng.normal(sd)));
    }
    return bufs;
}

TEST(Determinism, ManySmallTensorsIdenticalBitsForEveryThreadCount)
{
    auto bufs = many_small();
    for (float p : {2.0f, 1.0f, 3.0f, INFINITY}) {
        for (bool per_tensor : {false, true}) {
            const Fingerprint ref = run(bufs, p, 1, per_tensor);
            EXPECT_NE(ref.data, oracle::checksum(bufs)) << "the clip must write something";
            const auto want = oracle::norms(bufs, p, 0.3);
            ASSERT_EQ(ref.tensor_bits.size(), want.per_tensor.size());
            for (std::size_t k = 0; k < want.per_tensor.size(); ++k)
                ASSERT_TRUE(oracle::rel_close(oracle::bits_to_float(ref.tensor_bits[k]), want.per_tensor[k], 1e-6L))
                    << "tensor " << k << " p=" << p;
            EXPECT_TRUE(oracle::rel_close(oracle::bits_to_float(ref.total_bits), want.total, 1e-6L)) << "p=" << p;
            for (int threads : {2, 3, 7, 0})
                EXPECT_TRUE(run(bufs, p, threads, per_tensor) == ref)
                    << "p=" << p << " threads=" << threads << " per_tensor=" << per_tensor;
        }
    }
    // one NaN in a tensor near the end of a fold lane's range: its norm and
    // the flag are the same on every thread count, and nothing is written
    bufs[9001].set(0, NAN);
    const Fingerprint nan_ref = run(bufs, 2.0f, 1, false);
    EXPECT_TRUE(std::isnan(oracle::bits_to_float(nan_ref.tensor_bits[9001])));
    EXPECT_FALSE(std::isnan(oracle::bits_to_float(nan_ref.tensor_bits[9000])));
    EXPECT_EQ(nan_ref.data, oracle::checksum(bufs)) << "a skipped step writes nothing";
    for (int threads : {2, 3})
        EXPECT_TRUE(run(bufs, 2.0f, threads, false) == nan_ref) << "threads=" << threads;
}

// The same values at every start offset modulo 16 bytes. The norm's groups
// are formed by element index (gclip_split_elements), not from the first
// 16-byte boundary, so the total, every per-tensor norm and the clipped
// bytes keep their bits wherever the tensors lie. Sizes around one vector,
// the small chunk (256 vectors), one batch of every thread (1,024 vectors)
// and the chunk (64 Ki elements); f32 tensors also hold values whose
// squares overflow a float group, so the exact path is taken too.
std::vector<TestBuffer> at_offsets(gclip_dtype dt, const std::vector<std::vector<float>> &values, int shift)
{
    const int per = 16 / static_cast<int>(oracle::dtype_size(dt));
    std::vector<TestBuffer> bufs;
    for (std::size_t k = 0; k < values.size(); ++k) {
        const int64_t n = static_cast<int64_t>(values[k].size());
        bufs.emplace_back(dt, n, shift < 0 ? 0 : static_cast<int64_t>((3 * k + shift) % per));
        for (int64_t i = 0; i < n; ++i)
            bufs.back().set(i, values[k][i]);
    }
    return bufs;
}

TEST(Determinism, SameBitsAtEveryOffsetModulo16)
{
    oracle::Rng rng(502);
    const int64_t sizes[] = {1,    3,    7,    9,    31,   257,  1023,  1024,         1027,
                             1031, 2048, 2055, 4096, 4103, 8191, 16389, 65536 + 5, 131072 + 4099};
    for (gclip_dtype dt : {GCLIP_F32, GCLIP_F16, GCLIP_BF16, GCLIP_F64}) {
        const int per = 16 / static_cast<int>(oracle::dtype_size(dt));
        std::vector<std::vector<float>> values;
        for (int64_t n : sizes) {
            values.emplace_back(n);
            const double sd = std::pow(10.0, rng.range(-3, 3));
            for (auto &v : values.back())
                v = static_cast<float>(rng.normal(sd));
            if (dt == GCLIP_F32 && n > 100)
                for (int j = 0; j < 3; ++j)
                    values.back()[static_cast<std::size_t>(rng.range(0, n - 1))] = 3e19f; // square > FLT_MAX
        }
        const std::vector<TestBuffer> aligned = at_offsets(dt, values, -1);
        for (float p : {2.0f, 1.0f, 3.0f, INFINITY}) {
            const Fingerprint ref = run(aligned, p, 2, false);
            const auto want = oracle::norms(aligned, p, 0.3);
            EXPECT_TRUE(oracle::rel_close(oracle::bits_to_float(ref.total_bits), want.total, 1e-6L))
                << "dtype " << dt << " p=" << p;
            for (int shift = 0; shift < per; ++shift) {
                const std::vector<TestBuffer> moved = at_offsets(dt, values, shift);
                const Fingerprint got = run(moved, p, 2, false);
                EXPECT_EQ(got.total_bits, ref.total_bits) << "dtype " << dt << " p=" << p << " shift " << shift;
                EXPECT_TRUE(got.tensor_bits == ref.tensor_bits) << "dtype " << dt << " p=" << p << " shift " << shift;
                EXPECT_EQ(got.data, ref.data) << "dtype " << dt << " p=" << p << " shift " << shift;
            }
        }
    }
}

} // namespace
