// test_emu_schedules.cpp - determinism and replay of the emulated kernels:
// every combination of thread and block order gives bitwise the same
// results, and launching the same step again (as a CUDA graph replay does,
// with no memset in between) gives the same results again because the
// tickets count modulo the grid and so end every launch at 0.
#include "emu_harness.hpp"

#include <gtest/gtest.h>

#include <string>

namespace {

using gclip_emu::Order;

TEST(EmuDeterminism, EveryThreadAndBlockOrderGivesTheSameBits)
{
    emu::Fixture f(emu::spanning_chunks(), 51);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 3.0f;
    float sentinel;
    o.tensor_norms = &sentinel;
    const Order orders[] = {Order::forward, Order::reverse, Order::shuffled};
    for (int32_t op : {int32_t{GCLIP_OP_CLIP_NORM}, int32_t{GCLIP_OP_CLIP_PER_TENSOR}}) {
        emu::Snapshot first;
        bool have_first = false;
        uint64_t seed = 100;
        for (Order threads : orders)
            for (Order blocks : orders) {
                SCOPED_TRACE(std::string("threads ") + gclip_emu::order_name(threads) +
                             ", blocks " + gclip_emu::order_name(blocks));
                f.reset();
                emu::use(gclip_emu::Schedule{threads, blocks, ++seed, seed % 2 == 0});
                ASSERT_EQ(f.emu_norm_op(o, op), 0) << gclip_emu::error_message();
                f.expect_infrastructure();
                if (!have_first) {
                    first = f.snapshot();
                    have_first = true;
                } else {
                    EXPECT_TRUE(f.snapshot() == first) << "results depend on the schedule";
                }
            }
    }
}

// Run an operation, then again on the same data with the result, norms and
// workspace refilled with garbage and the ticket left as the first launch
// left it: a replay must reproduce every byte.
template <class Op>
void expect_replay_identical(emu::Fixture &f, Op op)
{
    for (const emu::NamedSchedule &s : emu::schedules()) {
        SCOPED_TRACE(std::string("schedule ") + s.name);
        f.reset();
        emu::use(s.s);
        ASSERT_EQ(op(), 0) << gclip_emu::error_message();
        ASSERT_EQ(f.ticket(), 0u) << "the ticket counter is not back at 0 for the next step";
        ASSERT_EQ(f.apply_ticket(), 0u) << "the apply ticket is not back at 0 for the next step";
        const emu::Snapshot first = f.snapshot();
        f.reset();
        ASSERT_EQ(op(), 0) << gclip_emu::error_message();
        f.expect_infrastructure();
        EXPECT_TRUE(f.snapshot() == first) << "a replayed step gave different results";
    }
}

TEST(EmuReplay, NormOpsReplayIdentically)
{
    emu::Fixture f(emu::mixed_many(61, 60), 61);
    float sentinel;
    for (int32_t op : {int32_t{GCLIP_OP_TOTAL_NORM}, int32_t{GCLIP_OP_CLIP_NORM},
                       int32_t{GCLIP_OP_CLIP_PER_TENSOR}, int32_t{GCLIP_OP_CLIP_FACTOR},
                       int32_t{GCLIP_OP_ACCUMULATE}}) {
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.tensor_norms = &sentinel;
        SCOPED_TRACE(emu::op_name(op));
        expect_replay_identical(f, [&] { return f.emu_norm_op(o, op); });
    }
}

// The phases replayed as one graph would replay them: factor then apply,
// accumulate then finalize then apply, and the given-norm clip.
TEST(EmuReplay, PhasesReplayIdentically)
{
    emu::Fixture f(emu::mixed_many(65, 60), 65);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.5f;
    expect_replay_identical(f, [&] {
        const int rc = f.emu_norm_op(o, GCLIP_OP_CLIP_FACTOR);
        return rc != 0 ? rc : f.emu_apply();
    });
    expect_replay_identical(f, [&] {
        int rc = f.emu_norm_op(o, GCLIP_OP_ACCUMULATE);
        rc = rc != 0 ? rc : f.emu_finalize(o, nullptr, 0);
        return rc != 0 ? rc : f.emu_apply();
    });
    expect_replay_identical(f, [&] { return f.emu_with_norm(o, 3.0f); });
}

TEST(EmuReplay, ClampReplaysIdentically)
{
    emu::Fixture f(emu::mixed_many(62, 120), 62);
    expect_replay_identical(f, [&] { return f.emu_clamp(0.5f); });
}

TEST(EmuReplay, EmptyPlanStillFinalizes)
{
    emu::Fixture f({}, 63);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    expect_replay_identical(f, [&] { return f.emu_norm_op(o, GCLIP_OP_CLIP_NORM); });
    EXPECT_EQ(f.emu_result().total_norm, 0.0f);
    EXPECT_EQ(f.emu_result().scale, 1.0f);
    EXPECT_EQ(f.emu_result().nonfinite, 0);
}

// One launch per op, two for the fused clips (gclip.h documents each count).
TEST(EmuLaunches, OneForEveryOpButTwoForTheFusedClips)
{
    emu::Fixture f(emu::mixed_many(64, 50), 64);
    emu::use(emu::schedules().front().s);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    const int32_t norm_ops[] = {GCLIP_OP_TOTAL_NORM, GCLIP_OP_CLIP_FACTOR, GCLIP_OP_ACCUMULATE,
                                GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR};
    const unsigned want[] = {1, 1, 1, 2, 2};
    for (int i = 0; i < 5; ++i) {
        ASSERT_EQ(f.emu_norm_op(o, norm_ops[i]), 0);
        EXPECT_EQ(gclip_emu::launch_count(), want[i]) << emu::op_name(norm_ops[i]);
    }
    ASSERT_EQ(f.emu_finalize(o, nullptr, 0), 0);
    EXPECT_EQ(gclip_emu::launch_count(), 1u);
    ASSERT_EQ(f.emu_apply(), 0);
    EXPECT_EQ(gclip_emu::launch_count(), 1u);
    ASSERT_EQ(f.emu_with_norm(o, 2.0f), 0);
    EXPECT_EQ(gclip_emu::launch_count(), 1u);
    ASSERT_EQ(f.emu_clamp(1.0f), 0);
    EXPECT_EQ(gclip_emu::launch_count(), 1u);
    f.expect_infrastructure();
}

} // namespace
