// test_emu_agc.cpp - AGC (gclip_agc_step) on the emulated kernels against the
// CPU path: the AGC norm and scale kernels launched through their own
// launchers, in the CUDA backend's order, on a copy of the parameters and
// gradients, must leave the same gradients and result slot, bit for bit,
// for every dtype and norm type, with units shorter and longer than a
// piece, NaN and Inf units, in every thread and block order.
//
// The "device" side is a second CPU plan and AGC over the copy: their host
// memory is what the emulated kernels see as device memory.
#include "gclip_adapt.h"
#include "gclip_agc_math.h"
#include "gclip_internal.h"
#include "gclip_kernels.h"
#include "simt_emu.h"
#include "adapt_emu_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

namespace {

struct Shape {
    gclip_dtype dtype;
    int64_t rows, cols;
};

// every dtype; short rows, a 1-D tensor, rows of several pieces (the last
// one short), empty rows
const std::vector<Shape> &shapes()
{
    static const std::vector<Shape> s = {
        {GCLIP_F32, 13, 70},   {GCLIP_F16, 4, 300},  {GCLIP_BF16, 6, 33},
        {GCLIP_F64, 3, 129},   {GCLIP_F32, 1, 1000}, {GCLIP_F32, 2, 2 * GCLIP_AGC_PIECE + 77},
        {GCLIP_F32, 5, 0},     {GCLIP_BF16, 1, 257},
    };
    return s;
}

struct AgcDeleter {
    void operator()(gclip_agc *a) const { gclip_agc_destroy(a); }
};
struct PlanDeleter {
    void operator()(gclip_plan *p) const { gclip_plan_destroy(p); }
};

struct Side {
    std::vector<std::vector<unsigned char>> w, g;
    std::unique_ptr<gclip_plan, PlanDeleter> plan;
    std::unique_ptr<gclip_agc, AgcDeleter> agc;

    Side(const std::vector<Shape> &shapes, const gclip_agc_options &o)
    {
        std::vector<gclip_tensor> gt, wt;
        std::vector<int64_t> units;
        for (const Shape &s : shapes) {
            const int64_t n = s.rows * s.cols;
            w.emplace_back(static_cast<size_t>(n) * gclip_dtype_size(s.dtype) + 16);
            g.emplace_back(static_cast<size_t>(n) * gclip_dtype_size(s.dtype) + 16);
            wt.push_back(gclip_tensor{n ? w.back().data() : nullptr, n, s.dtype});
            gt.push_back(gclip_tensor{n ? g.back().data() : nullptr, n, s.dtype});
            units.push_back(s.rows);
        }
        gclip_plan *p = nullptr;
        EXPECT_EQ(gclip_plan_create(&p, gt.data(), gt.size(), GCLIP_DEVICE_CPU),
                  GCLIP_STATUS_SUCCESS);
        plan.reset(p);
        gclip_agc *a = nullptr;
        EXPECT_EQ(gclip_agc_create(&a, p, wt.data(), units.data(), &o), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        agc.reset(a);
    }
    const gclip_result_slot &slot() const
    {
        return static_cast<const gclip_cpu_state *>(plan->engine)->result;
    }
};

struct Pair {
    std::vector<Shape> shapes;
    Side cpu, emu;
    unsigned tickets[2] = {0, 0};
    gclip_fold_workspace fold{}; // zero tickets, as at plan creation
    gclip_device_tables tables{};

    Pair(const std::vector<Shape> &s, const gclip_agc_options &o) : shapes(s), cpu(s, o), emu(s, o)
    {
        tables = cpu_plan_tables(emu.plan.get(), tickets, &fold);
    }

    // the CUDA backend's launch sequence of GCLIP_OP_AGC; with the scale
    // launch dependent (tables.dependent_launch) both run as one stream, the
    // scale blocks starting beside the norm launch's last blocks
    int launch()
    {
        gclip_norm_params np;
        EXPECT_EQ(gclip_agc_params(emu.agc.get(), &np), GCLIP_STATUS_SUCCESS);
        auto issue = [&] {
            const int r = gclip_launch_agc_norm(&tables, &np, nullptr);
            return r != 0 ? r : gclip_launch_agc_scale(&tables, &np, nullptr);
        };
        return tables.dependent_launch ? gclip_emu::launch_concurrent({[&] { issue(); }}) : issue();
    }

    // seeded data in both copies; rows of either side of the threshold, and
    // with `nonfinite` a NaN and an Inf in gradient rows and parameter rows
    void fill(std::mt19937_64 &rng, bool nonfinite)
    {
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::uniform_real_distribution<float> scale(0.0005f, 0.05f);
        for (size_t t = 0; t < shapes.size(); ++t) {
            const Shape &s = shapes[t];
            for (int64_t r = 0; r < s.rows; ++r) {
                const float gs = scale(rng);
                for (int64_t j = 0; j < s.cols; ++j) {
                    const int64_t i = r * s.cols + j;
                    const float wv = nd(rng), gv = nd(rng) * gs;
                    for (Side *side : {&cpu, &emu}) {
                        gclip_store(side->w[t].data(), s.dtype, i, wv);
                        gclip_store(side->g[t].data(), s.dtype, i, gv);
                    }
                }
            }
        }
        if (nonfinite) {
            const float nan = std::numeric_limits<float>::quiet_NaN();
            const float inf = std::numeric_limits<float>::infinity();
            for (Side *side : {&cpu, &emu}) {
                gclip_store(side->g[0].data(), GCLIP_F32, 75, nan);
                gclip_store(side->g[0].data(), GCLIP_F32, 150, inf);
                gclip_store(side->w[0].data(), GCLIP_F32, 290, nan);
                gclip_store(side->w[0].data(), GCLIP_F32, 360, inf);
            }
        }
    }

    void expect_same()
    {
        for (size_t t = 0; t < shapes.size(); ++t) {
            ASSERT_EQ(cpu.g[t], emu.g[t]) << "gradient " << t;
            ASSERT_EQ(cpu.w[t], emu.w[t]) << "parameter " << t;
        }
        ASSERT_EQ(std::memcmp(&cpu.slot(), &emu.slot(), sizeof(gclip_result_slot)), 0);
        // the pieces' sums themselves: the order of every addition
        gclip_norm_params a, b;
        ASSERT_EQ(gclip_agc_params(cpu.agc.get(), &a), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_agc_params(emu.agc.get(), &b), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(a.num_partials, b.num_partials);
        ASSERT_EQ(std::memcmp(a.agc->partials, b.agc->partials,
                              2u * a.num_partials * sizeof(double)),
                  0)
            << "piece sums";
    }
};

gclip_emu::Schedule schedule_of(int i)
{
    return varied_schedule(i, 300u);
}

// Two steps of every norm type, with and without non-finite values, each
// compared with the CPU path in full; `dependent`: the scale launch as a
// dependent launch (sm_90 and later).
void every_norm_type_matches_the_cpu_path(bool dependent)
{
    const float norm_types[] = {2.0f, 1.0f, std::numeric_limits<float>::infinity(), 3.0f};
    int i = 0;
    gclip_emu::reset_launch_count();
    for (float p : norm_types) {
        for (bool nonfinite : {false, true}) {
            SCOPED_TRACE(testing::Message() << "p " << p << " nonfinite " << nonfinite);
            gclip_emu::Schedule sched = schedule_of(i++);
            if (dependent) {
                sched.resident_blocks = 8;
                sched.block_switch_rate = 0.5;
            }
            gclip_emu::set_schedule(sched);
            gclip_agc_options o = GCLIP_AGC_OPTIONS_INIT;
            o.norm_type = p;
            o.clip_factor = 0.02;
            Pair pair(shapes(), o);
            pair.tables.dependent_launch = dependent ? 1u : 0u;
            std::mt19937_64 rng(11 + static_cast<uint64_t>(i));
            for (int step = 0; step < 2; ++step) {
                pair.fill(rng, nonfinite);
                ASSERT_EQ(gclip_agc_step(pair.cpu.agc.get(), nullptr), GCLIP_STATUS_SUCCESS);
                ASSERT_EQ(pair.launch(), 0) << gclip_emu::error_message();
                pair.expect_same();
            }
            EXPECT_EQ(pair.emu.slot().op, GCLIP_OP_AGC);
        }
    }
    gclip_emu::set_schedule(gclip_emu::Schedule{});
    if (dependent)
        EXPECT_GT(gclip_emu::early_blocks(), 0u) << "no scale block started beside the norm launch";
    else
        EXPECT_EQ(gclip_emu::early_blocks(), 0u);
}

TEST(EmuAgc, EveryDtypeAndNormTypeMatchesTheCpuPathBitForBit)
{
    every_norm_type_matches_the_cpu_path(false);
}

TEST(EmuAgc, WithADependentScaleLaunchEveryNormTypeMatchesTheCpuPath)
{
    every_norm_type_matches_the_cpu_path(true);
}

// A plan of empty tensors only: no piece, one scale block that writes the slot.
TEST(EmuAgc, EmptyPlanWritesOnlyTheSlot)
{
    const std::vector<Shape> empty = {{GCLIP_F32, 0, 5}, {GCLIP_F16, 3, 0}};
    Pair pair(empty, GCLIP_AGC_OPTIONS_INIT);
    ASSERT_EQ(gclip_agc_step(pair.cpu.agc.get(), nullptr), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(pair.launch(), 0) << gclip_emu::error_message();
    pair.expect_same();
    EXPECT_EQ(pair.emu.slot().op, GCLIP_OP_AGC);
}

} // namespace
