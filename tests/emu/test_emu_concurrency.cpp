// test_emu_concurrency.cpp - the misuse "one plan on two unordered streams":
// launches of the same plan (same tables, same ticket) run concurrently by
// the emulator, their blocks interleaved in one window of resident blocks.
// Whatever those launches compute, they must leave both tickets at 0, so
// that the plan's next step, run alone, is right: one bad step must not
// poison every later one.
#include "emu_harness.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using gclip_emu::Order;

// Small tensors of every dtype and multi-chunk tensors: a grid of a few
// dozen blocks, so that two grids overlap in the window for a long time.
std::vector<emu::Spec> unordered_plan()
{
    std::vector<emu::Spec> v = emu::mixed_many(101, 20);
    const int64_t c = GCLIP_CHUNK_ELEMS;
    v.push_back(emu::Spec{GCLIP_F32, 3 * c + 11, 1});
    v.push_back(emu::Spec{GCLIP_BF16, c + 1, 3});
    v.push_back(emu::Spec{GCLIP_F64, c - 5, 1});
    return v;
}

// Seeded schedules with several blocks resident and frequent switches
// between them, so that blocks of one launch draw their ticket while the
// last block of the other launch is inside its finalize.
std::vector<gclip_emu::Schedule> interleaving_schedules()
{
    const Order orders[] = {Order::forward, Order::reverse, Order::shuffled};
    const unsigned resident[] = {4, 8, 16};
    const double rates[] = {0.25, 0.5, 1.0};
    std::vector<gclip_emu::Schedule> v;
    for (uint64_t seed = 1; seed <= 12; ++seed) {
        gclip_emu::Schedule s;
        s.threads = orders[seed % 3];
        s.blocks = orders[(seed / 3) % 3];
        s.seed = 7000 + seed;
        s.yield_at_atomics = seed % 2 == 0;
        s.resident_blocks = resident[seed % 3];
        s.block_switch_rate = rates[(seed / 2) % 3];
        v.push_back(s);
    }
    return v;
}

std::string describe(const gclip_emu::Schedule &s)
{
    return std::string("threads ") + gclip_emu::order_name(s.threads) + ", blocks " +
           gclip_emu::order_name(s.blocks) + ", seed " + std::to_string(s.seed) + ", " +
           std::to_string(s.resident_blocks) + " resident, switch rate " +
           std::to_string(s.block_switch_rate) + (s.yield_at_atomics ? ", yield at atomics" : "");
}

// After the unordered launches: the tickets are at 0, and the next step,
// alone, gives the CPU path's results.
void expect_next_step_right(emu::Fixture &f, const gclip_norm_options &o)
{
    EXPECT_EQ(f.ticket(), 0u) << "the unordered launches left the norm ticket off 0";
    EXPECT_EQ(f.apply_ticket(), 0u) << "the unordered launches left the apply ticket off 0";
    f.reset_host();
    ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_CLIP_NORM), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    f.reset();
    ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_CLIP_NORM), 0) << gclip_emu::error_message();
    f.expect_norm_op_matches(o, GCLIP_OP_CLIP_NORM);
}

// Two norm launches of the same plan on two unordered streams, blocks
// interleaved. Catches a last-block ticket that is reset to 0 by the block
// that finalizes: the blocks of the other launch that count while that block
// finalizes are erased by the reset, so the ticket ends off 0 and every later
// launch of the plan elects its "last" block at the wrong count.
TEST(EmuUnorderedStreams, TwoNormLaunchesOfOnePlanLeaveTheTicketAtZero)
{
    emu::Fixture f(unordered_plan(), 102);
    ASSERT_GE(f.num_chunks(), 8u);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.5f * static_cast<float>(emu::oracle_total(f, 2.0f, 1.0f));
    const gclip_norm_params total = f.params(o, GCLIP_OP_TOTAL_NORM);
    const gclip_norm_params factor = f.params(o, GCLIP_OP_CLIP_FACTOR);
    const gclip_device_tables &t = f.tables();
    for (const gclip_emu::Schedule &s : interleaving_schedules()) {
        SCOPED_TRACE(describe(s));
        f.reset();
        emu::use(s);
        const int st = gclip_emu::launch_concurrent(
            {[&] { gclip_launch_norm(&t, &total, nullptr); },
             [&] { gclip_launch_norm(&t, &factor, nullptr); }});
        ASSERT_EQ(st, 0) << gclip_emu::error_message();
        f.expect_data_unchanged();
        expect_next_step_right(f, o);
        if (::testing::Test::HasFailure())
            return;
    }
}

// The same with whole steps on each stream (the factor then its apply, the
// fused clip), and three streams: the apply's ticket must come back to 0 too.
TEST(EmuUnorderedStreams, WholeStepsOnThreeStreamsLeaveBothTicketsAtZero)
{
    emu::Fixture f(unordered_plan(), 103);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.5f * static_cast<float>(emu::oracle_total(f, 2.0f, 1.0f));
    const gclip_norm_params factor = f.params(o, GCLIP_OP_CLIP_FACTOR);
    const gclip_norm_params clip = f.params(o, GCLIP_OP_CLIP_NORM);
    gclip_norm_params apply;
    ASSERT_EQ(gclip_make_params(nullptr, GCLIP_OP_APPLY, &apply), GCLIP_STATUS_SUCCESS);
    const gclip_device_tables &t = f.tables();
    for (const gclip_emu::Schedule &s : interleaving_schedules()) {
        SCOPED_TRACE(describe(s));
        f.reset();
        emu::use(s);
        const int st = gclip_emu::launch_concurrent({
            [&] {
                gclip_launch_norm(&t, &factor, nullptr);
                gclip_launch_scale(&t, &apply, nullptr);
            },
            [&] {
                gclip_launch_norm(&t, &clip, nullptr);
                gclip_launch_scale(&t, &clip, nullptr);
            },
            [&] {
                gclip_launch_norm(&t, &factor, nullptr);
                gclip_launch_scale(&t, &apply, nullptr);
            },
        });
        ASSERT_EQ(st, 0) << gclip_emu::error_message();
        expect_next_step_right(f, o);
        if (::testing::Test::HasFailure())
            return;
    }
}

} // namespace
