// The per-tensor clip under GCLIP_NONFINITE_PROPAGATE, which the CPU path
// runs segment by segment (host/tensor_clip_cpu.c): read a segment of whole
// tensors, compute their factors, scale them, then the next segment.
//
// On finite data its bits must be those of the two-pass step the other
// policies run (SKIP here): the gradients, every per-tensor norm and the
// result slot, for any thread count and norm type. The plan has more than
// twice as many chunks as the fold has lanes, so a tensor of several chunks
// spans lanes that each hold more than one of its chunks (its norm is then
// folded in pieces, not left to right), small tensors share segments and
// large ones have segments of their own. The values are checked against the
// long-double oracle too, and a NaN and an Inf in the middle of the plan
// spoil only their own tensors, as PyTorch's per-tensor arithmetic would,
// also a tensor of several chunks that several threads update.
#include "gclip_fold.h"
#include "gclip_internal.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

using oracle::TestBuffer;

namespace {

constexpr int64_t kChunk = int64_t(1) << 16;

// 700 small tensors of every dtype (a few empty), with tensors of 3 to 9
// chunks among them; each tensor's values have their own scale, over six
// decades, so that another summation order changes low bits.
std::vector<TestBuffer> make_mixed_plan()
{
    oracle::Rng rng(1200);
    std::vector<TestBuffer> bufs;
    for (int k = 0; k < 700; ++k) {
        int64_t n = k % 97 == 3 ? 0 : 1 + static_cast<int64_t>(rng.range(0, 3000));
        if (k % 150 == 40)
            n = (3 + k % 7) * kChunk - 1 - k; // several chunks, the last one short
        bufs.emplace_back(static_cast<gclip_dtype>(k % 4), n, k % 3);
        oracle::fill_random(bufs.back().data(), bufs.back().dtype(), n, rng,
                            std::pow(10.0, rng.range(-3, 3)));
    }
    return bufs;
}

// Made once (each test copies what it changes).
const std::vector<TestBuffer> &mixed_plan()
{
    static const std::vector<TestBuffer> plan = make_mixed_plan();
    return plan;
}

struct Outcome {
    gclip_result r{};
    std::vector<float> norms;
    std::vector<TestBuffer> grads;
};

// The clip of a copy of `original`; with_norms: tensor_norms asked for
// (else out.norms stays all -1).
Outcome clip(const std::vector<TestBuffer> &original, gclip_nonfinite_policy policy, float p,
             float max_norm, float inv_scale, int threads, uint32_t *segments = nullptr,
             bool with_norms = true)
{
    Outcome out;
    out.grads = original;
    out.norms.assign(original.size(), -1.0f);
    testutil::PlanPtr plan;
    EXPECT_EQ(testutil::make_plan(plan, oracle::tensors_of(out.grads)), GCLIP_STATUS_SUCCESS);
    if (!plan)
        return out;
    EXPECT_EQ(gclip_plan_set_num_threads(plan.get(), threads), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(max_norm, p);
    o.nonfinite = policy;
    o.inv_scale = inv_scale;
    o.tensor_norms = with_norms ? out.norms.data() : nullptr;
    // which path the CPU backend takes for these options
    gclip_norm_params np;
    EXPECT_EQ(gclip_make_params(&o, GCLIP_OP_CLIP_PER_TENSOR, &np), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_tensor_clip_blocked(plan.get(), &np) != 0, policy == GCLIP_NONFINITE_PROPAGATE);
    if (segments)
        *segments = static_cast<const gclip_cpu_state *>(plan->engine)->num_segments;
    EXPECT_EQ(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    out.r = testutil::result_of(plan.get());
    return out;
}

// The tensor-by-tensor bits of two outcomes; the first difference named.
void expect_same_bits(const Outcome &a, const Outcome &b)
{
    EXPECT_EQ(oracle::float_to_bits(a.r.total_norm), oracle::float_to_bits(b.r.total_norm));
    EXPECT_EQ(a.r.nonfinite, b.r.nonfinite);
    ASSERT_EQ(a.grads.size(), b.grads.size());
    for (size_t k = 0; k < a.grads.size(); ++k) {
        ASSERT_EQ(oracle::float_to_bits(a.norms[k]), oracle::float_to_bits(b.norms[k]))
            << "norm of tensor " << k;
        for (int64_t i = 0; i < a.grads[k].numel(); ++i)
            ASSERT_EQ(oracle::raw_bits(a.grads[k].data(), a.grads[k].dtype(), i),
                      oracle::raw_bits(b.grads[k].data(), b.grads[k].dtype(), i))
                << "tensor " << k << " element " << i;
    }
}

TEST(TensorClipBlocked, PlanHasLaneSplitTensorsAndSeveralSegments)
{
    const auto &bufs = mixed_plan();
    int64_t chunks = 0, multi = 0;
    for (const auto &b : bufs) {
        chunks += (b.numel() + kChunk - 1) / kChunk;
        multi += b.numel() > 2 * kChunk;
    }
    EXPECT_GT(chunks, 2 * GCLIP_FOLD_LANES) << "lanes must hold several chunks";
    EXPECT_GE(multi, 4);
    for (int threads : {1, 2}) {
        uint32_t segments = 0;
        clip(bufs, GCLIP_NONFINITE_PROPAGATE, 2.0f, 1.0f, 1.0f, threads, &segments);
        EXPECT_GE(segments, 10u) << threads << " threads";
    }
}

TEST(TensorClipBlocked, SameBitsAsTheTwoPassStepForEveryThreadCountAndNormType)
{
    const auto &bufs = mixed_plan();
    for (float p : {2.0f, 1.0f, INFINITY, 3.0f}) {
        // about half the tensors clipped: the median of their norms
        const oracle::Norms want = oracle::norms(bufs, p);
        std::vector<long double> sorted = want.per_tensor;
        std::sort(sorted.begin(), sorted.end());
        const float max_norm = static_cast<float>(sorted[sorted.size() / 2]);
        const Outcome two_pass = clip(bufs, GCLIP_NONFINITE_SKIP, p, max_norm, 1.0f, 1);
        for (int threads : {1, 2, 3, 0}) {
            SCOPED_TRACE("p " + std::to_string(p) + " threads " + std::to_string(threads));
            const Outcome blocked =
                clip(bufs, GCLIP_NONFINITE_PROPAGATE, p, max_norm, 1.0f, threads);
            expect_same_bits(blocked, two_pass);
            if (::testing::Test::HasFatalFailure())
                return;
        }
    }
}

TEST(TensorClipBlocked, WithoutTensorNormsSameBitsAsTheTwoPassStep)
{
    // no per-tensor norm asked for: the closing fold then writes nothing per
    // tensor, and the total and the non-finite count must not change
    const auto &bufs = mixed_plan();
    for (float p : {2.0f, INFINITY}) {
        const Outcome two_pass = clip(bufs, GCLIP_NONFINITE_SKIP, p, 0.02f, 1.0f, 2, nullptr, false);
        const Outcome blocked = clip(bufs, GCLIP_NONFINITE_PROPAGATE, p, 0.02f, 1.0f, 2, nullptr, false);
        expect_same_bits(blocked, two_pass);
        EXPECT_EQ(blocked.norms[0], -1.0f);
        EXPECT_NE(oracle::checksum(blocked.grads), oracle::checksum(bufs)) << "p " << p;
    }
}

TEST(TensorClipBlocked, UnscaledSameBitsAsTheTwoPassStep)
{
    // with inv_scale every tensor is written, clipped or not; a loss scale
    // below 1 (inv_scale 4) gives the unclipped tensors a factor above 1
    // (every tensor, at max_norm 1e30)
    const auto &bufs = mixed_plan();
    for (float inv : {1.0f / 1024.0f, 4.0f}) {
        for (float max_norm : {0.05f, 1e30f}) {
            for (int threads : {2, 3}) {
                SCOPED_TRACE("inv_scale " + std::to_string(inv) + " max_norm " +
                             std::to_string(max_norm) + " threads " + std::to_string(threads));
                const Outcome two_pass =
                    clip(bufs, GCLIP_NONFINITE_SKIP, 2.0f, max_norm, inv, threads);
                const Outcome blocked =
                    clip(bufs, GCLIP_NONFINITE_PROPAGATE, 2.0f, max_norm, inv, threads);
                expect_same_bits(blocked, two_pass);
                if (::testing::Test::HasFatalFailure())
                    return;
            }
        }
    }
}

TEST(TensorClipBlocked, MatchesTheOracle)
{
    const auto &bufs = mixed_plan();
    const oracle::Norms want = oracle::norms(bufs, 2.0);
    std::vector<long double> sorted = want.per_tensor;
    std::sort(sorted.begin(), sorted.end());
    const float max_norm = static_cast<float>(sorted[sorted.size() / 3]);
    const Outcome got = clip(bufs, GCLIP_NONFINITE_PROPAGATE, 2.0f, max_norm, 1.0f, 2);
    EXPECT_TRUE(oracle::rel_close(got.r.total_norm, want.total, 1e-6L));
    size_t clipped = 0;
    for (size_t k = 0; k < bufs.size(); ++k) {
        ASSERT_TRUE(oracle::rel_close(got.norms[k], want.per_tensor[k], 1e-6L)) << "tensor " << k;
        const float f = oracle::expected_coef(got.norms[k], max_norm, 1e-6f);
        clipped += f < 1.0f && bufs[k].numel() > 0;
        for (int64_t i = 0; i < bufs[k].numel(); ++i) {
            if (bufs[k].dtype() == GCLIP_F64) {
                const double x = oracle::load_f64(bufs[k].data(), i);
                ASSERT_EQ(oracle::load_f64(got.grads[k].data(), i), f == 1.0f ? x : x * f)
                    << "tensor " << k << " element " << i;
                continue;
            }
            const float x = bufs[k].get(i);
            const float w = f == 1.0f ? x : oracle::expected_scaled(x, f, bufs[k].dtype());
            ASSERT_EQ(got.grads[k].get(i), w) << "tensor " << k << " element " << i;
        }
    }
    EXPECT_GT(clipped, bufs.size() / 2);
    EXPECT_LT(clipped, bufs.size());
}

TEST(TensorClipBlocked, NonFiniteTensorsSpoilOnlyThemselves)
{
    auto bufs = mixed_plan();
    // a NaN in a small f32 tensor, an Inf in the middle of a tensor of
    // several chunks, segments apart, and a NaN in the first chunk of a
    // later tensor of several chunks, where a thread's part of its segment
    // can begin: that thread computes the tensor's NaN factor again for the
    // chunks it updates (a factor applied only when below 1, instead of
    // when not 1, fails here)
    size_t nan_at = 0, inf_at = 0, nan_wide_at = 0;
    for (size_t k = 300; k < bufs.size() && !nan_at; ++k)
        if (bufs[k].dtype() == GCLIP_F32 && bufs[k].numel() > 10 && bufs[k].numel() < kChunk)
            nan_at = k;
    for (size_t k = 0; k < bufs.size() && !inf_at; ++k)
        if (bufs[k].numel() > 2 * kChunk && bufs[k].dtype() != GCLIP_F64)
            inf_at = k;
    for (size_t k = inf_at + 1; k < bufs.size() && !nan_wide_at; ++k)
        if (bufs[k].numel() > 2 * kChunk && bufs[k].dtype() != GCLIP_F64)
            nan_wide_at = k;
    ASSERT_TRUE(nan_at && inf_at && nan_wide_at);
    bufs[nan_at].set(bufs[nan_at].numel() / 2, std::numeric_limits<float>::quiet_NaN());
    bufs[inf_at].set(kChunk + 7, std::numeric_limits<float>::infinity());
    bufs[nan_wide_at].set(3, std::numeric_limits<float>::quiet_NaN());
    const oracle::Norms want = oracle::norms(bufs, 2.0);
    for (int threads : {1, 2, 3}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        const Outcome got = clip(bufs, GCLIP_NONFINITE_PROPAGATE, 2.0f, 1.0f, 1.0f, threads);
        EXPECT_EQ(got.r.nonfinite, 1);
        EXPECT_TRUE(std::isnan(got.r.total_norm));
        for (size_t k = 0; k < bufs.size(); ++k) {
            for (int64_t i = 0; i < bufs[k].numel(); ++i) {
                const float x = bufs[k].get(i), g = got.grads[k].get(i);
                if (k == nan_at || k == nan_wide_at) {
                    ASSERT_TRUE(std::isnan(g)) << "tensor " << k << " element " << i; // coef NaN
                } else if (k == inf_at) {
                    // coef 1 / (Inf + eps) = 0: finite elements become 0, Inf NaN
                    if (std::isinf(x))
                        ASSERT_TRUE(std::isnan(g)) << i;
                    else
                        ASSERT_EQ(g, 0.0f) << i;
                } else if (bufs[k].dtype() != GCLIP_F64) {
                    ASSERT_TRUE(oracle::rel_close(got.norms[k], want.per_tensor[k], 1e-6L)) << k;
                    const float f = oracle::expected_coef(got.norms[k], 1.0f, 1e-6f);
                    ASSERT_EQ(g, f == 1.0f ? x : oracle::expected_scaled(x, f, bufs[k].dtype()))
                        << "tensor " << k << " element " << i;
                }
            }
        }
        EXPECT_TRUE(std::isnan(got.norms[nan_at]));
        EXPECT_TRUE(std::isnan(got.norms[nan_wide_at]));
        EXPECT_TRUE(std::isinf(got.norms[inf_at]));
    }
}

// Calls made from inside the caller's own OpenMP parallel region: each call
// runs its segments in a team of its own, or alone on one thread, and never
// waits at a barrier of the caller's team. Two threads of one region clip
// two plans of different segment counts on one library thread each, and one
// thread of a region clips under `omp single` while the others wait at the
// construct's end. Either hung when the one-thread walk met a barrier that
// bound to the caller's team; a watchdog turns a hang into a failure.
class Watchdog {
public:
    explicit Watchdog(int seconds)
        : thread_([this, seconds] {
              std::unique_lock<std::mutex> lock(m_);
              if (!cv_.wait_for(lock, std::chrono::seconds(seconds), [this] { return done_; })) {
                  std::fprintf(stderr, "the calls did not return in %d s\n", seconds);
                  std::_Exit(1);
              }
          })
    {
    }
    ~Watchdog()
    {
        {
            std::lock_guard<std::mutex> lock(m_);
            done_ = true;
        }
        cv_.notify_one();
        thread_.join();
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    bool done_ = false;
    std::thread thread_;
};

TEST(TensorClipBlocked, CallsFromInsideTheCallersParallelRegionReturnWithTheSameBits)
{
    const auto &mixed = mixed_plan();
    oracle::Rng rng(1210);
    std::vector<TestBuffer> small;
    small.emplace_back(GCLIP_F32, 1000, 0);
    oracle::fill_random(small.back().data(), GCLIP_F32, 1000, rng, 1.0);
    const Outcome want_mixed = clip(mixed, GCLIP_NONFINITE_SKIP, 2.0f, 0.05f, 1.0f, 1);
    const Outcome want_small = clip(small, GCLIP_NONFINITE_SKIP, 2.0f, 0.05f, 1.0f, 1);
    ASSERT_NE(oracle::checksum(want_small.grads), oracle::checksum(small)) << "nothing clipped";
    for (int threads : {1, 2, 0}) {
        SCOPED_TRACE("library threads " + std::to_string(threads));
        Outcome got_mixed, got_small, got_single;
        {
            Watchdog dog(120);
#pragma omp parallel num_threads(2)
            {
                if (omp_get_thread_num() == 0)
                    got_mixed = clip(mixed, GCLIP_NONFINITE_PROPAGATE, 2.0f, 0.05f, 1.0f, threads);
                else
                    got_small = clip(small, GCLIP_NONFINITE_PROPAGATE, 2.0f, 0.05f, 1.0f, threads);
            }
#pragma omp parallel num_threads(2)
            {
#pragma omp single
                got_single = clip(small, GCLIP_NONFINITE_PROPAGATE, 2.0f, 0.05f, 1.0f, threads);
            }
        }
        expect_same_bits(got_mixed, want_mixed);
        expect_same_bits(got_small, want_small);
        expect_same_bits(got_single, want_small);
    }
}

} // namespace
