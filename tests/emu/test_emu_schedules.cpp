// test_emu_schedules.cpp - determinism and replay of the emulated kernels:
// every combination of thread and block order gives bitwise the same
// results, and launching the same step again (as a CUDA graph replay does,
// with no memset in between) gives the same results again because the
// last block resets the ticket counter.
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
    for (int32_t op : {int32_t{GCLIP_OP_GLOBAL}, int32_t{GCLIP_OP_PER_TENSOR}}) {
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
                EXPECT_EQ(f.ticket(), 0u);
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
        ASSERT_EQ(f.ticket(), 0u) << "the ticket counter is not reset for the next step";
        const emu::Snapshot first = f.snapshot();
        f.reset();
        ASSERT_EQ(op(), 0) << gclip_emu::error_message();
        EXPECT_EQ(f.ticket(), 0u);
        EXPECT_TRUE(f.snapshot() == first) << "a replayed step gave different results";
    }
}

TEST(EmuReplay, NormOpsReplayIdentically)
{
    emu::Fixture f(emu::mixed_many(61, 60), 61);
    float sentinel;
    for (int32_t op : {int32_t{GCLIP_OP_TOTAL}, int32_t{GCLIP_OP_GLOBAL}, int32_t{GCLIP_OP_PER_TENSOR}}) {
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.tensor_norms = &sentinel;
        SCOPED_TRACE(emu::op_name(op));
        expect_replay_identical(f, [&] { return f.emu_norm_op(o, op); });
    }
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
    expect_replay_identical(f, [&] { return f.emu_norm_op(o, GCLIP_OP_GLOBAL); });
    EXPECT_EQ(f.emu_result().total_norm, 0.0f);
    EXPECT_EQ(f.emu_result().scale, 1.0f);
    EXPECT_EQ(f.emu_result().nonfinite, 0);
}

TEST(EmuLaunches, OneForTheNormAndClampTwoForAClipStep)
{
    emu::Fixture f(emu::mixed_many(64, 50), 64);
    emu::use(emu::schedules().front().s);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_TOTAL), 0);
    EXPECT_EQ(gclip_emu::launch_count(), 1u);
    ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_GLOBAL), 0);
    EXPECT_EQ(gclip_emu::launch_count(), 2u);
    ASSERT_EQ(f.emu_clamp(1.0f), 0);
    EXPECT_EQ(gclip_emu::launch_count(), 1u);
}

} // namespace
