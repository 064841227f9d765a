// test_gpu_scale.cpp - sizes past the limits a launch shape or an index
// type could hide: more than 65,536 chunks (one block each: past any 16-bit
// grid dimension, and hundreds of chunks per thread of the last block's
// fold), and one tensor of more than 2^31 elements (64-bit element indices).
// Both against the long-double oracle, every element checked. Each test
// first asks the device for the memory it needs and skips, saying so, when
// there is not enough.
#include "oracle_set.hpp"
#include "tickets.hpp"

#include <cmath>
#include <cstring>

namespace gpu {
namespace {

using GpuScaleTest = GpuTest;

uint64_t chunks_of(const std::vector<Spec> &specs)
{
    uint64_t c = 0;
    for (const Spec &s : specs)
        c += static_cast<uint64_t>((s.numel + specs::kChunkElems - 1) / specs::kChunkElems);
    return c;
}

// 100,000 tensors of 1..64 elements (one chunk each), dtypes rotating, at
// random starts, then three multi-chunk tensors: 100,010 chunks.
TEST_F(GpuScaleTest, MoreThan65536ChunksMatchTheOracle)
{
    std::vector<Spec> specs = random_specs(100000, 63, 2001);
    for (Spec &s : specs)
        s.numel += 1;
    const int64_t c = specs::kChunkElems;
    specs.push_back(Spec{GCLIP_F32, 5 * c + 3, 1});
    specs.push_back(Spec{GCLIP_BF16, c + 1, 3});
    specs.push_back(Spec{GCLIP_F64, 2 * c, 1});
    ASSERT_GT(chunks_of(specs), 65536u);
    std::vector<std::size_t> offsets;
    std::string why;
    if (!device_has_room(2 * pack_layout(specs, offsets) + specs.size() * 64, &why))
        GTEST_SKIP() << why;

    OracleSet set(specs);
    set.fill_random(2002, 1.0);
    set.upload();
    DeviceBuffer tensor_norms(set.count() * sizeof(float));
    for (float p : {2.0f, INFINITY}) {
        SCOPED_TRACE("p " + std::to_string(p));
        const oracle::Norms want = set.norms(p);
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.norm_type = p;
        o.tensor_norms = tensor_norms.as<float>();

        GPU_ASSERT_OK(gclip_total_norm(set.plan(), &o, nullptr));
        set.expect_norms(testutil::result_of(set.plan()), want, tensor_norms);

        o.max_norm = 0.5f * oracle::as_reported(want.total);
        GPU_ASSERT_OK(gclip_clip_grad_norm(set.plan(), &o, nullptr));
        gclip_result r = testutil::result_of(set.plan());
        set.expect_norms(r, want, tensor_norms);
        EXPECT_EQ(r.clip_coef, oracle::expected_coef(r.total_norm, o.max_norm, o.eps));
        EXPECT_LT(r.scale, 1.0f);
        set.expect_scaled(r.scale);
        set.upload();

        // the phases: accumulate, finalize the plan's own partial, apply
        GPU_ASSERT_OK(gclip_norm_accumulate(set.plan(), &o, nullptr));
        gclip_norm_options fin = o;
        fin.tensor_norms = nullptr; // finalize computes no tensor norm
        GPU_ASSERT_OK(gclip_norm_finalize(set.plan(), &fin, nullptr, 0, nullptr));
        GPU_ASSERT_OK(gclip_apply_clip_factor(set.plan(), nullptr));
        r = testutil::result_of(set.plan());
        EXPECT_TRUE(norm_matches(r.total_norm, want.total)) << norm_pair(r.total_norm, want.total);
        EXPECT_EQ(r.clip_coef, oracle::expected_coef(r.total_norm, o.max_norm, o.eps));
        set.expect_scaled(r.scale);
        set.upload();

        // per-tensor clipping: most of the small tensors are clipped
        o.max_norm = 2.0f;
        GPU_ASSERT_OK(gclip_clip_grad_norm_per_tensor(set.plan(), &o, nullptr));
        const std::vector<float> tn =
            set.expect_norms(testutil::result_of(set.plan()), want, tensor_norms);
        std::vector<float> factor(set.count());
        for (std::size_t k = 0; k < set.count(); ++k)
            factor[k] = oracle::expected_coef(tn[k], o.max_norm, o.eps);
        set.expect_scaled(factor);
        set.upload();
        if (HasFailure())
            return;
    }
    GPU_ASSERT_OK(gclip_clip_grad_value(set.plan(), 0.5f, nullptr));
    set.expect_clamped(0.5f);
    expect_tickets_at_zero(set.plan(), "after the 100,010-chunk steps");
}

class GpuHugeTensorTest : public GpuTest, public ::testing::WithParamInterface<gclip_dtype> {};

// One tensor of 2^31 + 1000 elements at an odd start, filled on the device
// by copies of a seeded pattern whose period is a prime, so an index that
// wrapped at any power of two would land on another value. The largest
// magnitude, -1024, sits at 2^31 + 500, past every 32-bit index. Checked:
// p = Inf norm exactly 1024, p = 2 norm within 1e-6 of the oracle, the
// clipped tensor element by element, and guard bytes on both sides.
TEST_P(GpuHugeTensorTest, TensorOfMoreThan2Pow31ElementsMatchesTheOracle)
{
    const gclip_dtype dt = GetParam();
    const std::size_t size = oracle::dtype_size(dt);
    const int64_t n = (int64_t(1) << 31) + 1000, planted_at = (int64_t(1) << 31) + 500;
    const int64_t period = 1000003, head = 3;
    const std::size_t guard = 64, bytes = static_cast<std::size_t>(head + n) * size + guard;
    std::string why;
    if (!device_has_room(bytes, &why))
        GTEST_SKIP() << why;
    DeviceBuffer buf(bytes);
    ASSERT_NE(buf.get(), nullptr);
    unsigned char *data = buf.as<unsigned char>() + head * size;

    // the pattern: |x| in [2^-6, 2^2), random signs
    std::vector<unsigned char> pattern(static_cast<std::size_t>(period) * size);
    oracle::Rng rng(3001);
    for (int64_t i = 0; i < period; ++i) {
        const double m = std::ldexp(1.0 + rng.uniform(0.0, 1.0), static_cast<int>(rng.range(-6, 1)));
        oracle::store(pattern.data(), dt, i, static_cast<float>(rng.range(0, 1) ? -m : m));
    }
    const float planted = -1024.0f;
    GPU_ASSERT_CUDA(cudaMemset(buf.get(), 0xa5, bytes));
    GPU_ASSERT_CUDA(cudaMemcpy(data, pattern.data(), pattern.size(), cudaMemcpyHostToDevice));
    for (int64_t have = period; have < n; have *= 2)
        GPU_ASSERT_CUDA(cudaMemcpy(data + have * size, data,
                                   static_cast<std::size_t>(std::min(have, n - have)) * size,
                                   cudaMemcpyDeviceToDevice));
    unsigned char one[8];
    oracle::store(one, dt, 0, planted);
    GPU_ASSERT_CUDA(cudaMemcpy(data + planted_at * size, one, size, cudaMemcpyHostToDevice));
    GPU_ASSERT_CUDA(cudaDeviceSynchronize());

    // the oracle: whole periods, the last partial one, the planted value
    long double whole = 0, part = 0;
    const int64_t rest = n % period;
    for (int64_t i = 0; i < period; ++i) {
        const long double x = oracle::load_exact(pattern.data(), dt, i);
        whole += x * x;
        if (i < rest)
            part += x * x;
    }
    const long double replaced = oracle::load_exact(pattern.data(), dt, planted_at % period);
    const long double sum = whole * static_cast<long double>(n / period) + part - replaced * replaced +
                            static_cast<long double>(planted) * planted;
    const long double want = std::sqrt(sum);

    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, {gclip_tensor{data, n, dt}}, 0), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.norm_type = INFINITY;
    GPU_ASSERT_OK(gclip_total_norm(plan.get(), &o, nullptr));
    EXPECT_EQ(testutil::result_of(plan.get()).total_norm, 1024.0f)
        << "the element past 2^31 was missed";

    o.norm_type = 2.0f;
    o.max_norm = 0.5f * static_cast<float>(want);
    GPU_ASSERT_OK(gclip_clip_grad_norm(plan.get(), &o, nullptr));
    const gclip_result r = testutil::result_of(plan.get());
    EXPECT_TRUE(norm_matches(r.total_norm, want)) << norm_pair(r.total_norm, want);
    EXPECT_EQ(r.nonfinite, 0);
    EXPECT_EQ(r.clip_coef, oracle::expected_coef(r.total_norm, o.max_norm, o.eps));
    ASSERT_LT(r.scale, 1.0f);

    // every element: the pattern's values scaled, in slices of one period
    std::vector<unsigned char> expected(pattern.size()), planted_bytes(size);
    for (int64_t i = 0; i < period; ++i)
        oracle::store(expected.data(), dt, i,
                      oracle::expected_scaled(oracle::load(pattern.data(), dt, i), r.scale, dt));
    oracle::store(planted_bytes.data(), dt, 0, oracle::expected_scaled(planted, r.scale, dt));
    const int64_t block = 16 * period;
    std::vector<unsigned char> got(static_cast<std::size_t>(block) * size);
    int64_t bad_slices = 0, first_bad = -1;
    for (int64_t b = 0; b < n; b += block) {
        const int64_t len = std::min(block, n - b);
        GPU_ASSERT_CUDA(cudaMemcpy(got.data(), data + b * size, static_cast<std::size_t>(len) * size,
                                   cudaMemcpyDeviceToHost));
        for (int64_t s = 0; s < len; s += period) {
            const int64_t start = b + s, count = std::min(period, len - s);
            unsigned char *g = got.data() + s * size;
            bool ok;
            if (planted_at >= start && planted_at < start + count) {
                const std::size_t at = static_cast<std::size_t>(planted_at - start) * size;
                ok = std::memcmp(g + at, planted_bytes.data(), size) == 0;
                std::memcpy(g + at, expected.data() + at, size); // compare the rest as a whole
                ok = ok && std::memcmp(g, expected.data(), static_cast<std::size_t>(count) * size) == 0;
            } else {
                ok = std::memcmp(g, expected.data(), static_cast<std::size_t>(count) * size) == 0;
            }
            if (!ok && bad_slices++ == 0)
                first_bad = start;
        }
    }
    EXPECT_EQ(bad_slices, 0) << "slices of " << period << " elements that differ from the oracle, "
                             << "the first starting at element " << first_bad;
    const auto before = download_bytes(buf.get(), static_cast<std::size_t>(head) * size);
    const auto after = download_bytes(data + n * size, guard);
    EXPECT_EQ(before, std::vector<unsigned char>(before.size(), 0xa5)) << "written before the tensor";
    EXPECT_EQ(after, std::vector<unsigned char>(guard, 0xa5)) << "written past the tensor";
    expect_tickets_at_zero(plan.get(), "after the 2^31-element steps");
}

INSTANTIATE_TEST_SUITE_P(Bf16AndF32, GpuHugeTensorTest, ::testing::Values(GCLIP_BF16, GCLIP_F32),
                         [](const ::testing::TestParamInfo<gclip_dtype> &i) {
                             return std::string(oracle::dtype_name(i.param));
                         });

} // namespace
} // namespace gpu
