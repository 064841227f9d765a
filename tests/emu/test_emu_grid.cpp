// test_emu_grid.cpp - the launch shape: norm, scale and clamp kernels under
// capped grids, and the fold of the partials (lane passes and the close).
//
//   - any grid cap gives bitwise the same slot, partial, per-tensor norms and
//     factors and data (the fold's order is fixed by the chunk table), in
//     every schedule, and the tickets end every launch at 0;
//   - the fold of the kernel's own partials by the CPU twin
//     (gclip_fold_partials_cpu) gives the kernel's per-tensor norms, factors
//     and accumulator bit for bit;
//   - any fold window (the chunks a lane pass copies at once) gives the same
//     bits, with runs, leading pieces and gaps across windows;
//   - the write kernels' windows update every chunk once, with small and
//     larger chunks side by side at every position;
//   - the launchers use gclip_launch_grid's grid, and an unclipped scale
//     launch writes nothing whatever its grid.
#include "emu_harness.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <iterator>
#include <string>
#include <vector>

namespace {

using emu::Spec;

// Chunks around the fold's corners: fewer chunks than lanes (empty lanes an
// open run passes), tensors without chunks first, between and last, runs
// that continue across lanes.
std::vector<Spec> few_chunks_with_gaps()
{
    const int64_t c = GCLIP_CHUNK_ELEMS;
    return {{GCLIP_F32, 0, 0},      {GCLIP_F16, 0, 1},      {GCLIP_F32, 3 * c + 1, 1},
            {GCLIP_BF16, 0, 0},     {GCLIP_F16, 5, 3},      {GCLIP_F32, 0, 2},
            {GCLIP_F64, 0, 0},      {GCLIP_BF16, 2 * c, 1}, {GCLIP_F64, 700, 1},
            {GCLIP_F32, 0, 0}};
}

struct Plan {
    const char *name;
    std::vector<Spec> (*make)();
};

const Plan kPlans[] = {
    {"spanning", [] { return emu::spanning_chunks(); }},
    {"gaps", few_chunks_with_gaps},
    {"mixed", [] { return emu::mixed_many(91, 400); }},
    {"empty_tensors_only",
     [] { return std::vector<Spec>{{GCLIP_F32, 0, 0}, {GCLIP_F16, 0, 0}, {GCLIP_F64, 0, 0}}; }},
};

// 0 = one block per chunk; the others make blocks walk several chunks.
const uint32_t kCaps[] = {0, 1, 2, 3, 7, 64};

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Options that clip these plans (the scale kernel writes), asking for the
// per-tensor norms (`sentinel`: the harness points them at its buffer).
gclip_norm_options clipping_options(float *sentinel)
{
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.25f;
    o.tensor_norms = sentinel;
    return o;
}

TEST(EmuGrid, AnyGridGivesTheSameBits)
{
    for (const Plan &p : kPlans) {
        SCOPED_TRACE(p.name);
        emu::Fixture f(p.make(), 4242);
        for (int32_t op : {int32_t{GCLIP_OP_CLIP_PER_TENSOR}, int32_t{GCLIP_OP_CLIP_NORM},
                           int32_t{GCLIP_OP_CLIP_VALUE}}) {
            SCOPED_TRACE(emu::op_name(op));
            float sentinel;
            const gclip_norm_options o = clipping_options(&sentinel);
            // the CPU path first: reset() gives the device its slot's sequence
            f.reset_host();
            const gclip_status cs = op == GCLIP_OP_CLIP_VALUE ? f.cpu_clamp(0.5f)
                                                              : f.cpu_norm_op(o, op);
            ASSERT_EQ(cs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
            emu::Snapshot first;
            for (uint32_t cap : kCaps) {
                for (std::size_t s = 0; s < emu::schedules().size(); s += 3) {
                    SCOPED_TRACE("cap " + std::to_string(cap) + ", schedule " +
                                 emu::schedules()[s].name);
                    f.set_grid_caps(cap, cap);
                    f.reset();
                    emu::use(emu::schedules()[s].s);
                    const int rc = op == GCLIP_OP_CLIP_VALUE ? f.emu_clamp(0.5f)
                                                             : f.emu_norm_op(o, op);
                    ASSERT_EQ(rc, 0) << gclip_emu::error_message();
                    f.expect_infrastructure();
                    if (cap == 0 && s == 0) {
                        if (op == GCLIP_OP_CLIP_VALUE)
                            f.expect_clamp_matches(0.5f);
                        else
                            f.expect_norm_op_matches(o, op);
                        first = f.snapshot();
                    } else {
                        EXPECT_TRUE(f.snapshot() == first) << "results depend on the grid";
                    }
                    if (::testing::Test::HasFailure())
                        return;
                }
            }
        }
    }
}

// The scale kernel as a dependent launch (sm_90 and later): its blocks start
// while the norm kernel's last blocks run and wait for the whole norm grid
// before they read the factor. Every plan, clip op, grid cap and
// interleaving schedule gives bitwise what the plain launch gives, which
// matches the CPU path; and scale blocks did start early.
TEST(EmuGrid, DependentScaleLaunchGivesThePlainLaunchsBits)
{
    unsigned early = 0;
    for (const Plan &p : kPlans) {
        if (p.make == kPlans[0].make)
            continue; // the spanning plan's large chunks: slow, and no new corner
        SCOPED_TRACE(p.name);
        emu::Fixture f(p.make(), 4343);
        for (int32_t op : {int32_t{GCLIP_OP_CLIP_PER_TENSOR}, int32_t{GCLIP_OP_CLIP_NORM}}) {
            SCOPED_TRACE(emu::op_name(op));
            float sentinel;
            const gclip_norm_options o = clipping_options(&sentinel);
            f.reset_host();
            ASSERT_EQ(f.cpu_norm_op(o, op), GCLIP_STATUS_SUCCESS) << gclip_last_error();
            for (uint32_t cap : {0u, 2u, 7u}) {
                SCOPED_TRACE("cap " + std::to_string(cap));
                f.set_grid_caps(cap, cap);
                f.set_dependent_launch(false);
                f.reset();
                emu::use(emu::schedules()[0].s);
                ASSERT_EQ(f.emu_norm_op(o, op), 0) << gclip_emu::error_message();
                f.expect_norm_op_matches(o, op);
                const emu::Snapshot plain = f.snapshot();
                f.set_dependent_launch(true);
                for (std::size_t s = 1; s < emu::schedules().size(); ++s) {
                    SCOPED_TRACE(std::string("schedule ") + emu::schedules()[s].name);
                    f.reset();
                    emu::use(emu::schedules()[s].s);
                    ASSERT_EQ(f.emu_norm_op(o, op), 0) << gclip_emu::error_message();
                    early += gclip_emu::early_blocks();
                    f.expect_infrastructure();
                    EXPECT_TRUE(f.snapshot() == plain)
                        << "the dependent launch changed the results";
                    if (::testing::Test::HasFailure())
                        return;
                }
                f.set_dependent_launch(false);
            }
        }
    }
    EXPECT_GT(early, 0u) << "no scale block ever started before the norm kernel ended";
}

// The CPU twin of the fold, given the kernel's own chunk partials, must
// reproduce what the kernel's last block made of them, bit for bit.
TEST(EmuGrid, CpuTwinFoldsTheKernelsPartialsToTheSameBits)
{
    for (const Plan &p : kPlans) {
        SCOPED_TRACE(p.name);
        emu::Fixture f(p.make(), 5151);
        for (float norm_type : {2.0f, 1.0f, INFINITY, 3.0f}) {
            SCOPED_TRACE("p " + std::to_string(norm_type));
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.norm_type = norm_type;
            o.max_norm = 0.5f;
            float sentinel;
            o.tensor_norms = &sentinel;
            const gclip_norm_params np_emu = f.params(o, GCLIP_OP_CLIP_PER_TENSOR);
            f.set_grid_caps(5, 3);
            f.reset();
            emu::use(emu::schedules()[1].s);
            ASSERT_EQ(f.emu_launch(np_emu), 0) << gclip_emu::error_message();

            const gclip_plan *plan = f.cpu_plan();
            std::vector<float> norms(f.count(), -1.0f), factors(f.count(), -1.0f);
            gclip_norm_params np = np_emu;
            np.tensor_norms = norms.data();
            const gclip_scalars sc = gclip_resolve_scalars(&np);
            double acc = -1.0;
            uint32_t nonfinite = 99;
            gclip_fold_partials_cpu(plan->chunks, plan->num_chunks, (uint32_t)f.count(),
                                    f.emu_partials(), &np, &sc, factors.data(), &acc, &nonfinite, 1);
            EXPECT_EQ(std::memcmp(&acc, &f.emu_partial().acc, sizeof acc), 0)
                << "accumulator: CPU fold " << acc << ", kernel " << f.emu_partial().acc;
            EXPECT_EQ(nonfinite, f.emu_partial().nonfinite);
            for (std::size_t k = 0; k < f.count(); ++k) {
                EXPECT_TRUE(same_bits(norms[k], f.emu_tensor_norm(k)))
                    << "tensor " << k << " norm: CPU fold " << norms[k] << ", kernel "
                    << f.emu_tensor_norm(k);
                EXPECT_TRUE(same_bits(factors[k], f.emu_tensor_factor(k)))
                    << "tensor " << k << " factor: CPU fold " << factors[k] << ", kernel "
                    << f.emu_tensor_factor(k);
            }
            if (::testing::Test::HasFailure())
                return;
        }
    }
}

// Lanes of several chunks folded through windows of 1, 2, 5 and 7 chunks
// (and the largest): runs, leading pieces and tensors without chunks fall
// on every side of a window's edge, lanes are met by one or several blocks,
// and the lanes' tickets are drawn while other blocks are between theirs
// and the fold. Every window and grid gives the CPU path's bits.
TEST(EmuGrid, AnyFoldWindowGivesTheSameBits)
{
    std::vector<Spec> specs = emu::mixed_many(313, 1200);
    specs.insert(specs.begin() + 700, Spec{GCLIP_BF16, GCLIP_CHUNK_ELEMS + 3, 1}); // two chunks
    specs.insert(specs.begin() + 300, Spec{GCLIP_F32, 0, 0});
    emu::Fixture f(specs, 6161);
    ASSERT_GT(f.num_chunks(), 4u * GCLIP_FOLD_LANES) << "lanes of several chunks";
    struct Restore {
        ~Restore() { gclip_emu_fold_window = 0; }
    } restore;
    struct Run {
        uint32_t window, cap;
    };
    // the first of each norm is the largest window, one block per chunk
    const Run runs_l2[] = {{0, 0}, {1, 97}, {2, 3}, {5, 0}};
    const Run runs_inf[] = {{0, 0}, {7, 97}};
    for (float norm_type : {2.0f, INFINITY}) {
        const Run *runs = norm_type == 2.0f ? runs_l2 : runs_inf;
        const std::size_t num_runs = norm_type == 2.0f ? std::size(runs_l2) : std::size(runs_inf);
        SCOPED_TRACE("p " + std::to_string(norm_type));
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.norm_type = norm_type;
        o.max_norm = 0.05f;
        float sentinel;
        o.tensor_norms = &sentinel;
        f.reset_host();
        ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_CLIP_PER_TENSOR), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        emu::Snapshot first;
        for (std::size_t i = 0; i < num_runs; ++i) {
            const Run &r = runs[i];
            SCOPED_TRACE("window " + std::to_string(r.window) + ", cap " + std::to_string(r.cap));
            gclip_emu_fold_window = r.window;
            f.set_grid_caps(r.cap, r.cap);
            f.reset();
            emu::use(emu::schedules()[(i + (norm_type == 2.0f ? 0 : 2)) % emu::schedules().size()].s);
            ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_CLIP_PER_TENSOR), 0) << gclip_emu::error_message();
            f.expect_infrastructure();
            if (i == 0) {
                f.expect_norm_op_matches(o, GCLIP_OP_CLIP_PER_TENSOR);
                first = f.snapshot();
            } else {
                EXPECT_TRUE(f.snapshot() == first) << "results depend on the fold window";
            }
            if (::testing::Test::HasFailure())
                return;
        }
    }
}

// Runs of 1 to 9 small chunks (at most 256 vectors: a warp each) between
// runs of 1 to 3 larger ones (the whole block), every dtype, seeded sizes and
// starts: with more than 768 chunks, under a grid of one, two or three blocks
// each block's chunks fill two or more windows of the write kernels, and
// small and larger chunks meet at every position of a four-flag word.
std::vector<Spec> alternating_runs(uint64_t seed, int runs)
{
    oracle::Rng rng(seed);
    const gclip_dtype dts[] = {GCLIP_F32, GCLIP_F16, GCLIP_BF16, GCLIP_F64};
    std::vector<Spec> v;
    for (int r = 0; r < runs; ++r) {
        const int64_t small = rng.range(1, 9), large = rng.range(1, 3);
        for (int64_t i = 0; i < small + large; ++i) {
            const gclip_dtype dt = dts[v.size() % 4];
            const int64_t per_vector = 16 / static_cast<int64_t>(gclip_dtype_size(dt));
            // small: at most 248 vectors whatever the start; larger: at least 260
            const int64_t numel = i < small ? rng.range(1, 248 * per_vector)
                                            : rng.range(260 * per_vector, 300 * per_vector);
            v.push_back(Spec{dt, numel, static_cast<int>(rng.range(0, 7))});
        }
    }
    return v;
}

// The write kernels' windows (gclip_for_block_chunks): every chunk of such a
// plan is scaled or clamped once, bit for bit as the CPU path does it, under
// grids of one to three blocks (each block's chunks span two or more
// windows) and one block per chunk, in several schedules. A chunk visited
// twice is scaled twice; a chunk left out keeps its value.
TEST(EmuGrid, WriteWindowsUpdateEveryChunkOnceWhateverItsNeighbours)
{
    emu::Fixture f(alternating_runs(6161, 130), 6161);
    ASSERT_GT(f.num_chunks(), 3u * GCLIP_BLOCK_THREADS) << "a grid of three must cross windows";
    for (int32_t op : {int32_t{GCLIP_OP_CLIP_NORM}, int32_t{GCLIP_OP_CLIP_PER_TENSOR},
                       int32_t{GCLIP_OP_CLIP_VALUE}}) {
        SCOPED_TRACE(emu::op_name(op));
        float sentinel;
        const gclip_norm_options o = clipping_options(&sentinel);
        for (uint32_t cap : {1u, 2u, 3u, 0u}) {
            for (std::size_t s : {std::size_t{0}, std::size_t{2}}) {
                SCOPED_TRACE("cap " + std::to_string(cap) + ", schedule " +
                             emu::schedules()[s].name);
                f.reset_host();
                const gclip_status cs = op == GCLIP_OP_CLIP_VALUE ? f.cpu_clamp(0.5f)
                                                                  : f.cpu_norm_op(o, op);
                ASSERT_EQ(cs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
                f.set_grid_caps(cap, cap);
                f.reset();
                emu::use(emu::schedules()[s].s);
                const int rc = op == GCLIP_OP_CLIP_VALUE ? f.emu_clamp(0.5f) : f.emu_norm_op(o, op);
                ASSERT_EQ(rc, 0) << gclip_emu::error_message();
                f.expect_infrastructure();
                if (op == GCLIP_OP_CLIP_VALUE)
                    f.expect_clamp_matches(0.5f);
                else
                    f.expect_norm_op_matches(o, op);
                if (::testing::Test::HasFailure())
                    return;
            }
        }
    }
}

// The launchers' grids are gclip_launch_grid's: capped, one per chunk below
// the cap, one for an empty plan.
TEST(EmuGrid, LaunchersUseTheCappedGrid)
{
    emu::Fixture f(emu::spanning_chunks(), 17);
    ASSERT_GT(f.num_chunks(), 64u);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    emu::use(emu::schedules().front().s);
    for (uint32_t cap : {0u, 5u, 64u, 100000u}) {
        SCOPED_TRACE("cap " + std::to_string(cap));
        f.set_grid_caps(cap, cap / 2);
        f.reset();
        const gclip_norm_params np = f.params(o, GCLIP_OP_TOTAL_NORM);
        ASSERT_EQ(gclip_launch_norm(&f.tables(), &np, nullptr), 0);
        EXPECT_EQ(gclip_emu::last_grid(), gclip_launch_grid(f.num_chunks(), cap));
        EXPECT_EQ(gclip_emu::last_grid(), cap == 0 || cap > f.num_chunks() ? f.num_chunks() : cap);
        ASSERT_EQ(gclip_launch_clamp(&f.tables(), 1.0f, nullptr), 0);
        EXPECT_EQ(gclip_emu::last_grid(), gclip_launch_grid(f.num_chunks(), cap / 2));
    }
    emu::Fixture empty({}, 18);
    empty.set_grid_caps(8, 8);
    const gclip_norm_params enp = empty.params(o, GCLIP_OP_TOTAL_NORM);
    ASSERT_EQ(gclip_launch_norm(&empty.tables(), &enp, nullptr), 0);
    EXPECT_EQ(gclip_emu::last_grid(), 1u);
}

// An unclipped step under a capped grid: every block reads the factor and
// leaves; on read-only memory any store would fault.
TEST(EmuGrid, UnclippedScaleUnderACappedGridWritesNothing)
{
    emu::Fixture f(emu::spanning_chunks(), 23, 1.0, /*paged=*/true);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 1e30f; // never clips: factor 1
    for (uint32_t cap : {1u, 3u, 8u}) {
        SCOPED_TRACE("cap " + std::to_string(cap));
        f.set_grid_caps(cap, cap);
        f.reset();
        f.set_read_only(true);
        emu::use(emu::schedules()[2].s);
        ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_CLIP_NORM), 0) << gclip_emu::error_message();
        EXPECT_EQ(gclip_emu::last_grid(), cap);
        f.set_read_only(false);
        EXPECT_EQ(f.emu_result().scale, 1.0f);
        f.expect_infrastructure();
        f.expect_data_unchanged();
    }
}

// The apply's ticket counts modulo the capped grid too: the pending factor
// is applied once, and a second apply writes nothing.
TEST(EmuGrid, ApplyUnderACappedGridAppliesOnce)
{
    emu::Fixture f(emu::mixed_many(29, 120), 29);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.5f;
    for (uint32_t cap : {1u, 2u, 5u}) {
        SCOPED_TRACE("cap " + std::to_string(cap));
        f.set_grid_caps(cap + 1, cap);
        f.reset_host();
        ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_CLIP_FACTOR), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(f.cpu_apply(), GCLIP_STATUS_SUCCESS);
        (void)f.cpu_apply(); // nothing pending: INVALID_ARGUMENT in the slot
        f.reset();
        emu::use(emu::schedules()[3].s);
        ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_CLIP_FACTOR), 0) << gclip_emu::error_message();
        const float factor = f.emu_result().scale;
        ASSERT_LT(factor, 1.0f) << "the case must clip";
        ASSERT_EQ(f.emu_apply(), 0) << gclip_emu::error_message();
        ASSERT_EQ(f.emu_apply(), 0) << gclip_emu::error_message();
        EXPECT_EQ(gclip_emu::last_grid(), cap);
        f.expect_infrastructure();
        f.expect_slot_matches();
        EXPECT_EQ(f.emu_result().status, GCLIP_STATUS_INVALID_ARGUMENT);
        f.expect_scaled_by(factor);
    }
}

} // namespace
