// test_fold.cpp - the finalize's fold (kernels/gclip_fold.h) through its CPU
// twin, gclip_fold_partials_cpu: every chunk partial reaches its tensor and
// the total exactly once, for chunk tables of every shape around the fold's
// lanes; and the fold's longest chain of dependent global loads, from the
// plan's own chunk count, for the plans the performance targets name.
#include "gclip_fold.h"
#include "gclip_internal.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

namespace {

// A chunk table from chunks per tensor (0 = a tensor without elements).
std::vector<gclip_chunk> table_of(const std::vector<uint32_t> &chunks_per_tensor)
{
    std::vector<gclip_chunk> t;
    for (std::size_t i = 0; i < chunks_per_tensor.size(); ++i)
        for (uint32_t k = 0; k < chunks_per_tensor[i]; ++k)
            t.push_back(gclip_chunk{static_cast<uint32_t>(i), k});
    return t;
}

// Layouts around the lanes: fewer chunks than lanes, exactly as many, runs
// crossing many lanes, tensors without chunks at both ends and in between.
std::vector<std::vector<uint32_t>> layouts()
{
    std::vector<std::vector<uint32_t>> v = {
        {},
        {0, 0, 0},
        {1},
        {0, 3, 0, 0, 1, 2, 0},
        std::vector<uint32_t>(256, 1),
        std::vector<uint32_t>(257, 1),
        {1000},
        {1, 700, 0, 1, 300, 0},
    };
    oracle::Rng rng(2024);
    for (int n : {10, 100, 1000, 5000}) {
        std::vector<uint32_t> l;
        for (int i = 0; i < n; ++i) {
            const int64_t r = rng.range(0, 99);
            l.push_back(static_cast<uint32_t>(r < 10 ? 0 : r < 90 ? 1 : rng.range(2, 600)));
        }
        v.push_back(l);
    }
    return v;
}

TEST(Fold, EveryPartialReachesItsTensorAndTheTotalOnce)
{
    for (const std::vector<uint32_t> &layout : layouts()) {
        const std::vector<gclip_chunk> chunks = table_of(layout);
        SCOPED_TRACE(std::to_string(layout.size()) + " tensors, " +
                     std::to_string(chunks.size()) + " chunks");
        oracle::Rng rng(chunks.size() + 7);
        std::vector<double> partials(chunks.size());
        for (double &p : partials)
            p = static_cast<double>(rng.range(1, 1000000)) * 1e-3; // terms of squares: >= 0
        for (float norm_type : {2.0f, 1.0f, INFINITY}) {
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.norm_type = norm_type;
            o.max_norm = 1.0f;
            gclip_norm_params np;
            ASSERT_EQ(gclip_make_params(&o, GCLIP_OP_CLIP_PER_TENSOR, &np), GCLIP_STATUS_SUCCESS);
            std::vector<float> first_norms;
            double first_acc = 0.0;
            // one thread, then the lanes split among 2 and 3 (from 8,192
            // chunks): the same bits
            for (int threads : {1, 2, 3}) {
                std::vector<float> norms(layout.size(), NAN), factors(layout.size(), NAN);
                np.tensor_norms = norms.data();
                const gclip_scalars sc = gclip_resolve_scalars(&np);
                double acc = -1.0;
                uint32_t nonfinite = 99;
                gclip_fold_partials_cpu(chunks.data(), static_cast<uint32_t>(chunks.size()),
                                        static_cast<uint32_t>(layout.size()), partials.data(), &np,
                                        &sc, factors.data(), &acc, &nonfinite, threads);
                if (threads == 1) {
                    first_norms = norms;
                    first_acc = acc;
                } else {
                    EXPECT_EQ(std::memcmp(&acc, &first_acc, sizeof acc), 0) << threads << " threads";
                    ASSERT_EQ(norms.size(), first_norms.size());
                    for (std::size_t i = 0; i < norms.size(); ++i)
                        ASSERT_EQ(oracle::float_to_bits(norms[i]), oracle::float_to_bits(first_norms[i]))
                            << "tensor " << i << ", " << threads << " threads";
                }
                // the reference: each tensor's partials summed (or maxed) in long double
                long double total = 0.0L;
                std::size_t c = 0;
                for (std::size_t i = 0; i < layout.size(); ++i) {
                    long double t = 0.0L;
                    for (uint32_t k = 0; k < layout[i]; ++k, ++c)
                        t = np.kind == GCLIP_KIND_INF ? std::fmax(t, (long double)partials[c])
                                                      : t + partials[c];
                    total = np.kind == GCLIP_KIND_INF ? std::fmax(total, t) : total + t;
                    const long double want = np.kind == GCLIP_KIND_L2 ? std::sqrt(t) : t;
                    ASSERT_FALSE(std::isnan(norms[i])) << "tensor " << i << " norm never written";
                    EXPECT_NEAR(norms[i], static_cast<double>(want), 1e-6 * static_cast<double>(want))
                        << "tensor " << i;
                    EXPECT_EQ(factors[i], gclip_tensor_factor(norms[i], &np, &sc, 0)) << i;
                }
                EXPECT_NEAR(acc, static_cast<double>(total), 1e-12 * static_cast<double>(total));
                EXPECT_EQ(nonfinite, 0u);
            }
        }
    }
}

// gclip_tensor_acc_cpu (the per-tensor clip under PROPAGATE, segment by
// segment) gives each tensor the accumulator the fold gives it: with every
// other tensor's partials zero, the fold's total is that tensor's
// accumulator exactly (adding zeros, or taking the max with them, rounds
// nothing). The partials span sixteen decades, so a tensor folded left to
// right instead of lane by lane would differ in low bits.
TEST(Fold, TensorAccumulatorIsTheFoldsOwn)
{
    int compared = 0;
    for (const std::vector<uint32_t> &layout : layouts()) {
        const std::vector<gclip_chunk> chunks = table_of(layout);
        const uint32_t nc = static_cast<uint32_t>(chunks.size());
        oracle::Rng rng(nc + 11);
        std::vector<double> all(nc);
        for (double &p : all)
            p = static_cast<double>(rng.range(1, 1000000)) * std::pow(10.0, rng.range(-8, 8));
        for (int32_t kind : {GCLIP_KIND_L2, GCLIP_KIND_INF}) {
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.norm_type = kind == GCLIP_KIND_L2 ? 2.0f : INFINITY;
            gclip_norm_params np;
            ASSERT_EQ(gclip_make_params(&o, GCLIP_OP_TOTAL_NORM, &np), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(np.kind, kind);
            const gclip_scalars sc = gclip_resolve_scalars(&np);
            uint32_t first = 0;
            // the multi-chunk tensors, and the first few of the others
            int singles = 0;
            for (std::size_t i = 0; i < layout.size(); first += layout[i], ++i) {
                if (layout[i] == 0 || (layout[i] == 1 && ++singles > 5))
                    continue;
                std::vector<double> partials(nc, 0.0);
                std::copy(all.begin() + first, all.begin() + first + layout[i], partials.begin() + first);
                double acc = -1.0;
                uint32_t nonfinite = 0;
                gclip_fold_partials_cpu(chunks.data(), nc, static_cast<uint32_t>(layout.size()),
                                        partials.data(), &np, &sc, nullptr, &acc, &nonfinite, 1);
                const double got =
                    gclip_tensor_acc_cpu(partials.data(), nc, first, first + layout[i], kind);
                ASSERT_EQ(std::memcmp(&got, &acc, sizeof acc), 0)
                    << "tensor " << i << " of " << layout.size() << ", kind " << kind << ": "
                    << got << " vs " << acc;
                ++compared;
            }
        }
    }
    EXPECT_GT(compared, 100);
}

// When nothing is written per tensor, the fold counts the tensors whose norm
// is not finite by comparing each accumulator with the first one whose norm
// is not (found once a step). The count must be that of the norms
// themselves: checked on accumulators within a few thousand ulps of the
// float overflow of the norm, for several inv_scale, with +Inf and NaN among
// them, against each norm formed here as the library forms it.
TEST(Fold, NonFiniteCountAtTheOverflowBoundary)
{
    oracle::Rng rng(909);
    for (int32_t kind : {GCLIP_KIND_L2, GCLIP_KIND_L1, GCLIP_KIND_INF}) {
        for (float inv : {1.0f, 1.0f / 1024.0f, 3.5f, 1e-30f, 7e30f}) {
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.norm_type = kind == GCLIP_KIND_L2 ? 2.0f : kind == GCLIP_KIND_L1 ? 1.0f : INFINITY;
            o.inv_scale = inv;
            gclip_norm_params np;
            ASSERT_EQ(gclip_make_params(&o, GCLIP_OP_TOTAL_NORM, &np), GCLIP_STATUS_SUCCESS);
            const gclip_scalars sc = gclip_resolve_scalars(&np);
            // where the norm passes FLT_MAX (+ half an ulp), in the accumulator
            const long double top = (long double)FLT_MAX + std::ldexp(1.0L, 103);
            const long double n_at = top / (long double)inv;
            const double boundary = static_cast<double>(kind == GCLIP_KIND_L2 ? n_at * n_at : n_at);
            std::vector<double> accs = {0.0, 1.0, INFINITY, NAN};
            if (std::isfinite(boundary)) {
                double a = boundary;
                for (int k = 0; k < 2000; ++k)
                    a = std::nextafter(a, 0.0);
                for (int k = 0; k < 4000; ++k, a = std::nextafter(a, INFINITY))
                    if (rng.range(0, 9) < 3)
                        accs.push_back(a);
            }
            const std::vector<gclip_chunk> chunks =
                table_of(std::vector<uint32_t>(accs.size(), 1));
            uint32_t want = 0;
            int finite = 0;
            for (double a : accs) {
                const double root = kind == GCLIP_KIND_L2 ? std::sqrt(a) : a;
                const bool ok = std::isfinite(static_cast<float>(root * static_cast<double>(inv)));
                want += !ok;
                finite += ok;
            }
            SCOPED_TRACE("kind " + std::to_string(kind) + " inv_scale " + std::to_string(inv));
            EXPECT_GT(finite, 1);
            EXPECT_GT(want, std::isfinite(boundary) ? 100u : 1u);
            double acc = 0.0;
            uint32_t nonfinite = 0;
            gclip_fold_partials_cpu(chunks.data(), static_cast<uint32_t>(chunks.size()),
                                    static_cast<uint32_t>(accs.size()), accs.data(), &np, &sc,
                                    nullptr, &acc, &nonfinite, 1);
            EXPECT_EQ(nonfinite, want);
        }
    }
}

TEST(Fold, NonFiniteTensorsAreCountedOnce)
{
    // and the same with 10,000 one-chunk tensors after them, so that the
    // lanes are split among threads
    for (int tail : {0, 10000}) {
        std::vector<uint32_t> layout = {3, 0, 1, 40, 2, 300, 1};
        layout.resize(layout.size() + tail, 1);
        const std::vector<gclip_chunk> chunks = table_of(layout);
        std::vector<double> partials(chunks.size(), 0.5);
        partials[1] = NAN;      // tensor 0
        partials[4 + 17] = INFINITY; // tensor 3
        partials[4 + 40 + 2 + 299] = INFINITY; // tensor 5, last chunk
        if (tail)
            partials[chunks.size() - 4321] = NAN; // a one-chunk tensor near the end
        gclip_norm_params np;
        ASSERT_EQ(gclip_make_params(nullptr, GCLIP_OP_TOTAL_NORM, &np), GCLIP_STATUS_SUCCESS);
        const gclip_scalars sc = gclip_resolve_scalars(&np);
        for (int threads : {1, 2, 3}) {
            double acc = 0.0;
            uint32_t nonfinite = 0;
            gclip_fold_partials_cpu(chunks.data(), static_cast<uint32_t>(chunks.size()),
                                    static_cast<uint32_t>(layout.size()), partials.data(), &np, &sc,
                                    nullptr, &acc, &nonfinite, threads);
            EXPECT_EQ(nonfinite, tail ? 4u : 3u) << threads << " threads";
            EXPECT_TRUE(std::isnan(acc));
        }
    }
}

// The fold's longest chain of dependent global loads (gclip_fold_load_rounds)
// for the plans the targets name, from plans built by gclip_plan_create, on
// the grids of real devices (SMs x 4 norm blocks) with each architecture's
// window. The chain is recounted here chunk by chunk, lanes found by search.
TEST(Fold, LongestLoadChainStaysShort)
{
    struct Device {
        const char *name;
        uint32_t sms, batch;
    };
    const Device devices[] = {
        {"H100 (sm_90)", 132, GCLIP_FOLD_BATCH},  {"A100 (sm_80)", 108, GCLIP_FOLD_BATCH_SM80},
        {"A10 (sm_86)", 72, GCLIP_FOLD_BATCH_SM86}, {"RTX 4090 (sm_89)", 128, GCLIP_FOLD_BATCH_SM86},
        {"L4 (sm_89)", 58, GCLIP_FOLD_BATCH_SM86},  {"T4 (sm_75)", 40, GCLIP_FOLD_BATCH_REG},
    };
    struct Case {
        const char *name;
        std::vector<int64_t> sizes;
        uint32_t at_most;
    };
    std::vector<Case> cases = {
        {"100,000 tensors of 1,000 elements", std::vector<int64_t>(100000, 1000), 32},
        {"10,000 tensors of 1,000 elements", std::vector<int64_t>(10000, 1000), 16},
        {"one tensor of 2^31 + 1 elements", {(int64_t(1) << 31) + 1}, 32},
    };
    for (const Case &c : cases) {
        std::vector<gclip_tensor> t;
        // the plan reads only addresses and sizes: give each tensor a distinct address
        const uintptr_t base = uintptr_t(1) << 40;
        uintptr_t at = base;
        for (int64_t n : c.sizes) {
            t.push_back(gclip_tensor{reinterpret_cast<void *>(at), n, GCLIP_F32});
            at += static_cast<uintptr_t>(n) * 4 + 64;
        }
        testutil::PlanPtr plan;
        ASSERT_EQ(testutil::make_plan(plan, t), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        const uint32_t chunks = plan->num_chunks;
        std::vector<uint32_t> lane_begin(GCLIP_FOLD_LANES + 1);
        for (uint32_t i = 0; i <= GCLIP_FOLD_LANES; ++i)
            lane_begin[i] = static_cast<uint32_t>(uint64_t(chunks) * i / GCLIP_FOLD_LANES);
        const uint32_t widest = (chunks + GCLIP_FOLD_LANES - 1) / GCLIP_FOLD_LANES;
        for (const Device &d : devices) {
            const uint32_t grid = gclip_launch_grid(chunks, d.sms * 4);
            const uint32_t window = d.batch * GCLIP_FOLD_LANES;
            // recount: every block's tickets (one round), then each lane's windows
            uint32_t longest = 0;
            for (uint32_t b = 0; b < grid; ++b) {
                const uint32_t first = static_cast<uint32_t>(uint64_t(chunks) * b / grid);
                const uint32_t last = static_cast<uint32_t>(uint64_t(chunks) * (b + 1) / grid);
                std::vector<uint32_t> met;
                for (uint32_t ch = first; ch < last; ++ch) {
                    const uint32_t lane = static_cast<uint32_t>(
                        std::upper_bound(lane_begin.begin(), lane_begin.end(), ch) -
                        lane_begin.begin() - 1);
                    if (met.empty() || met.back() != lane)
                        met.push_back(lane);
                }
                uint32_t rounds = 1;
                for (uint32_t lane : met) {
                    const uint32_t range = lane_begin[lane + 1] - lane_begin[lane];
                    ASSERT_GT(range, 0u) << "chunk in an empty lane range";
                    ASSERT_LE(range, widest);
                    rounds += (range + window - 1) / window;
                }
                longest = std::max(longest, rounds);
            }
            const uint32_t rounds = gclip_fold_load_rounds(chunks, grid, window);
            std::printf("[fold] %s on %s: %u chunks, %u blocks, lanes of up to %u chunks, "
                        "%u dependent load rounds (the whole fold in the last block, this batch: %u)\n",
                        c.name, d.name, chunks, grid, widest, rounds, 2 + (widest + d.batch - 1) / d.batch);
            EXPECT_EQ(rounds, longest + 3) << c.name << " on " << d.name;
            EXPECT_LE(rounds, c.at_most) << c.name << " on " << d.name;
            // shorter than one round per chunk of a lane
            EXPECT_LT(rounds, 2 + widest) << c.name << " on " << d.name;
        }
    }
}

// Which block meets which lane: gclip_fold_lane_blocks against a count of
// the blocks whose contiguous range holds a chunk of the lane, and
// gclip_fold_lane_of against the lane ranges, for chunk counts around the
// lanes and grids around them.
TEST(Fold, LaneBlocksCountTheBlocksThatMeetTheLane)
{
    for (uint32_t chunks : {1u, 2u, 3u, 255u, 256u, 257u, 511u, 1000u, 4099u}) {
        for (uint32_t grid : {1u, 2u, 7u, 255u, 256u, 257u, 1000u}) {
            if (grid > chunks)
                continue; // gclip_launch_grid never gives more blocks than chunks
            std::vector<std::set<uint32_t>> blocks(GCLIP_FOLD_LANES);
            for (uint32_t b = 0; b < grid; ++b) {
                const uint32_t first = gclip_split_begin(chunks, grid, b);
                const uint32_t last = gclip_split_begin(chunks, grid, b + 1);
                ASSERT_LT(first, last) << "an empty block range";
                for (uint32_t c = first; c < last; ++c) {
                    const uint32_t lane = gclip_fold_lane_of(chunks, c);
                    ASSERT_LE(gclip_fold_lane_begin(chunks, lane), c);
                    ASSERT_LT(c, gclip_fold_lane_begin(chunks, lane + 1));
                    ASSERT_EQ(gclip_split_owner(chunks, grid, c), b);
                    blocks[lane].insert(b);
                }
            }
            for (uint32_t lane = 0; lane < GCLIP_FOLD_LANES; ++lane) {
                if (gclip_fold_lane_begin(chunks, lane) == gclip_fold_lane_begin(chunks, lane + 1)) {
                    EXPECT_TRUE(blocks[lane].empty());
                    continue;
                }
                EXPECT_EQ(gclip_fold_lane_blocks(chunks, grid, lane), blocks[lane].size())
                    << chunks << " chunks, " << grid << " blocks, lane " << lane;
            }
        }
    }
}

} // namespace
