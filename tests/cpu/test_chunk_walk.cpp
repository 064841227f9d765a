// How the CPU path shares a plan's chunks among its threads
// (gclip_cpu_walk_chunks, host/cpu_backend.c): runs of whole grains, each
// thread an equal run of grains, every chunk exactly once. The update pass
// after a read pass walks in reverse (each thread its own grains, last
// first), so that a core starts with what it read last; the chunks a
// thread takes must then be the ones it took in the read pass.
#include "gclip_internal.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <vector>

using oracle::TestBuffer;

namespace {

struct WalkRun {
    int thread;
    uint32_t first, last;
};

struct Recorder {
    std::mutex m;
    std::vector<std::vector<WalkRun>> by_thread; // in the order each thread made them
};

void record(const gclip_plan *, uint32_t first, uint32_t last, const void *arg)
{
    auto *r = static_cast<Recorder *>(const_cast<void *>(arg));
    const int t = omp_get_thread_num();
    std::lock_guard<std::mutex> g(r->m);
    if (r->by_thread.size() <= static_cast<size_t>(t))
        r->by_thread.resize(t + 1);
    r->by_thread[t].push_back({t, first, last});
}

std::vector<std::vector<WalkRun>> walk(gclip_plan *plan, int reverse)
{
    Recorder r;
    gclip_cpu_walk_chunks(plan, record, &r, reverse);
    return r.by_thread;
}

// Tensors that make a plan of many grains: large ones of several chunks,
// then thousands of small ones, then large ones again.
std::vector<TestBuffer> grain_buffers(oracle::Rng &rng)
{
    std::vector<TestBuffer> bufs;
    for (int i = 0; i < 9; ++i)
        bufs.emplace_back(GCLIP_F32, 150000 + 977 * i, i % 4);
    for (int i = 0; i < 3000; ++i)
        bufs.emplace_back(i % 3 ? GCLIP_F32 : GCLIP_BF16, 37 + (i * 53) % 900, i % 5);
    for (int i = 0; i < 5; ++i)
        bufs.emplace_back(i % 2 ? GCLIP_F16 : GCLIP_F32, 200003 + 4099 * i, i % 3);
    for (auto &b : bufs)
        b.fill(rng, 1.0);
    return bufs;
}

} // namespace

TEST(ChunkWalk, EachThreadTakesTheSameGrainsInBothDirectionsEveryChunkOnce)
{
    oracle::Rng rng(77);
    const std::vector<TestBuffer> bufs = grain_buffers(rng);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    const auto *st = static_cast<const gclip_cpu_state *>(plan->engine);
    const uint32_t nc = plan->num_chunks, ng = st->num_grains;
    ASSERT_GE(ng, 12u) << "the plan should be many grains";
    for (int threads : {1, 2, 3, 4, 7}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        ASSERT_EQ(gclip_plan_set_num_threads(plan.get(), threads), GCLIP_STATUS_SUCCESS);
        const auto fwd = walk(plan.get(), 0), rev = walk(plan.get(), 1);
        // every chunk exactly once, in each direction
        for (const auto *r : {&fwd, &rev}) {
            std::vector<int> seen(nc, 0);
            for (const auto &runs : *r)
                for (const WalkRun &run : runs) {
                    ASSERT_LE(run.first, run.last);
                    ASSERT_LE(run.last, nc);
                    for (uint32_t c = run.first; c < run.last; ++c)
                        ++seen[c];
                }
            for (uint32_t c = 0; c < nc; ++c)
                ASSERT_EQ(seen[c], 1) << "chunk " << c << (r == &rev ? " (reverse)" : " (forward)");
        }
        // the threads used: as many as asked for (the plan has more grains)
        int used_f = 0, used_r = 0;
        for (const auto &runs : fwd)
            used_f += !runs.empty();
        for (const auto &runs : rev)
            used_r += !runs.empty();
        EXPECT_EQ(used_f, threads);
        EXPECT_EQ(used_r, threads);
        // thread t: the same chunks both ways; forward in order, reverse
        // grain by grain from its last
        const std::set<uint32_t> grain_starts(st->grain_first, st->grain_first + ng + 1);
        for (size_t t = 0; t < fwd.size() || t < rev.size(); ++t) {
            SCOPED_TRACE("thread " + std::to_string(t));
            const std::vector<WalkRun> none;
            const auto &f = t < fwd.size() ? fwd[t] : none;
            const auto &r = t < rev.size() ? rev[t] : none;
            std::set<uint32_t> cf, cr;
            for (const WalkRun &run : f)
                for (uint32_t c = run.first; c < run.last; ++c)
                    cf.insert(c);
            for (const WalkRun &run : r)
                for (uint32_t c = run.first; c < run.last; ++c)
                    cr.insert(c);
            EXPECT_EQ(cf, cr);
            for (size_t i = 1; i < f.size(); ++i)
                EXPECT_EQ(f[i].first, f[i - 1].last);
            for (size_t i = 0; i < r.size(); ++i) {
                EXPECT_EQ(grain_starts.count(r[i].first), 1u) << "run " << i;
                EXPECT_EQ(grain_starts.count(r[i].last), 1u) << "run " << i;
                auto next = grain_starts.upper_bound(r[i].first);
                EXPECT_TRUE(next != grain_starts.end() && *next == r[i].last)
                    << "run " << i << " is not one grain";
                if (i > 0)
                    EXPECT_EQ(r[i].last, r[i - 1].first) << "run " << i;
            }
        }
    }
}

// End to end: a clip of a plan of many grains writes every element exactly
// once, x * scale in float, on any thread count (an element scaled twice or
// not at all would differ), and the norm it clipped by is the long-double
// norm's within 1e-6.
TEST(ChunkWalk, ClipOfManyGrainsScalesEveryElementOnceOnAnyThreadCount)
{
    oracle::Rng rng(78);
    const std::vector<TestBuffer> original = grain_buffers(rng);
    const oracle::Norms exact = oracle::norms(oracle::tensors_of(original).data(), original.size(), 2.0);
    for (int threads : {1, 2, 3, 5}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        std::vector<TestBuffer> bufs = original;
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_plan_set_num_threads(plan.get(), threads), GCLIP_STATUS_SUCCESS);
        const gclip_norm_options o = testutil::norm_options(static_cast<float>(exact.total / 3));
        ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        const gclip_result res = testutil::result_of(plan.get());
        EXPECT_NEAR(res.total_norm, static_cast<double>(exact.total), 1e-6 * exact.total);
        ASSERT_LT(res.scale, 0.4f);
        EXPECT_EQ(res.scale, oracle::expected_op_coef(res.total_norm, o.max_norm, o.eps));
        for (size_t k = 0; k < bufs.size(); ++k) {
            TestBuffer want = original[k];
            for (int64_t i = 0; i < want.numel(); ++i)
                want.set(i, original[k].get(i) * res.scale);
            ASSERT_EQ(std::memcmp(bufs[k].data(), want.data(), bufs[k].bytes()), 0) << "tensor " << k;
        }
    }
}
