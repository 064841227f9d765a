// test_emu_selftest.cpp - the SIMT emulator itself: schedules, barrier
// divergence detection, shared-memory refill, atomics, the window of
// resident blocks and their interleaving, concurrent launches, the block
// reduction stand-in, and that the sanitizers see accesses made inside
// fibers.
#include "simt_emu.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

namespace {

using gclip_emu::Order;
using gclip_emu::Schedule;

constexpr int kThreads = 8;

std::vector<int> g_log; // (block * 100 + thread) per event, in execution order

// Without the last two arguments, the default window of resident blocks.
void use_schedule(Order threads, Order blocks, uint64_t seed = 7, bool yields = false,
                  unsigned resident = Schedule{}.resident_blocks,
                  double switch_rate = Schedule{}.block_switch_rate)
{
    Schedule s;
    s.threads = threads;
    s.blocks = blocks;
    s.seed = seed;
    s.yield_at_atomics = yields;
    s.resident_blocks = resident;
    s.block_switch_rate = switch_rate;
    gclip_emu::set_schedule(s);
    gclip_emu::clear_error();
    g_log.clear();
}

// ---- kernels ----------------------------------------------------------------

__global__ void log_around_barrier()
{
    g_log.push_back(static_cast<int>(blockIdx.x * 100 + threadIdx.x));
    __syncthreads();
    g_log.push_back(static_cast<int>(1000 + threadIdx.x));
}

__global__ void early_exit_thread0()
{
    if (threadIdx.x == 0)
        return;
    __syncthreads();
}

__global__ void two_barrier_sites()
{
    if (threadIdx.x % 2)
        __syncthreads();
    else
        __syncthreads();
}

// Thread 0 reads what the other threads wrote; `with_barrier` orders it.
__global__ void publish_and_read(float *out, bool with_barrier)
{
    __shared__ float s[kThreads];
    s[threadIdx.x] = static_cast<float>(threadIdx.x + 1);
    if (with_barrier)
        __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0;
        for (int i = 0; i < kThreads; ++i)
            sum += s[i];
        out[blockIdx.x] = sum;
    }
}

// Reads shared memory nobody in this block wrote: gets the refill pattern.
__global__ void read_unwritten(float *out)
{
    __shared__ float s;
    if (threadIdx.x == 0) {
        out[blockIdx.x] = s;
        s = 1.0f; // must not be visible to the next block
    }
}

// Last-block-done ticket: the block that draws the final ticket records
// itself and resets the counter for the next launch.
__global__ void ticket_kernel(unsigned *ticket, int *last_block)
{
    __shared__ unsigned is_last;
    if (threadIdx.x == 0) {
        __threadfence();
        is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (is_last && threadIdx.x == 0) {
        *last_block = static_cast<int>(blockIdx.x);
        atomicExch(ticket, 0u);
    }
}

__global__ void atomic_then_log(unsigned *counter)
{
    unsigned v = atomicAdd(counter, 1u);
    (void)v;
    g_log.push_back(static_cast<int>(*counter));
}

__global__ void load_vector(const float *p, unsigned *out)
{
    const uint4 v = reinterpret_cast<const uint4 *>(p)[threadIdx.x];
    out[threadIdx.x] = v.x ^ v.y ^ v.z ^ v.w;
}

// Through a pointer, so that ASan (not UBSan's array bounds) must see it.
__global__ void shared_write_at(int i)
{
    __shared__ float s[kThreads];
    float *volatile p = s;
    p[i] = 1.0f;
}

__global__ void read_at(const float *p, int i, float *out)
{
    if (threadIdx.x == 0)
        *out = p[i];
}

// ---- kernels of the warp barrier -------------------------------------------------

constexpr int kWarpBlock = 64; // two warps

// Every thread logs (thread) before and (1000 + thread) after its warp's
// barrier; warp 0 then waits there a second time.
__global__ void log_around_warp_barrier()
{
    g_log.push_back(static_cast<int>(threadIdx.x));
    __syncwarp();
    g_log.push_back(static_cast<int>(1000 + threadIdx.x));
    if (threadIdx.x < 32)
        __syncwarp();
}

// Lane 0 of each warp sums what its lanes wrote; `with_barrier` orders it.
__global__ void warp_publish_and_read(float *out, bool with_barrier)
{
    __shared__ float s[kWarpBlock];
    s[threadIdx.x] = static_cast<float>(threadIdx.x % 32 + 1);
    if (with_barrier)
        __syncwarp();
    if (threadIdx.x % 32 == 0) {
        float sum = 0;
        for (int i = 0; i < 32; ++i)
            sum += s[threadIdx.x + i];
        out[blockIdx.x * 2 + threadIdx.x / 32] = sum;
    }
}

__global__ void two_warp_barrier_sites()
{
    if (threadIdx.x % 2)
        __syncwarp();
    else
        __syncwarp();
}

// Lane 5 waits at the block barrier while its warp waits at the warp's.
__global__ void warp_barrier_meets_block_barrier()
{
    if (threadIdx.x == 5)
        __syncthreads();
    else
        __syncwarp();
}

// The last lane of each warp exits first: the others still meet.
__global__ void warp_barrier_after_an_exit(int *count)
{
    if (threadIdx.x % 32 == 31)
        return;
    __syncwarp();
    atomicAdd(count, 1);
}

__global__ void warp_barrier_with_a_mask()
{
    __syncwarp(0x0000ffffu);
}

// ---- kernels of the resident-block window -----------------------------------------

// Thread 0 of every block appends its block index to `events` four times,
// with a fence (a switch point) after each append.
__global__ void block_steps(unsigned *n, int *events, int tag)
{
    if (threadIdx.x != 0)
        return;
    for (int step = 0; step < 4; ++step) {
        events[atomicAdd(n, 1u)] = tag * 1000 + static_cast<int>(blockIdx.x);
        __threadfence();
    }
}

// Blocks in flight: a block counts from its first thread's first step to
// its last thread's last step.
struct Flight {
    unsigned *arrived;           // per block: threads that started
    unsigned *left;              // per block: threads that finished
    unsigned *finished_at_start; // per block: blocks finished when it started
    unsigned in_flight;
    unsigned max_in_flight;
    unsigned finished;
};

__global__ void in_flight(Flight *f)
{
    const unsigned b = blockIdx.x;
    if (atomicAdd(&f->arrived[b], 1u) == 0) {
        f->finished_at_start[b] = f->finished;
        const unsigned now = atomicAdd(&f->in_flight, 1u) + 1;
        f->max_in_flight = std::max(f->max_in_flight, now);
    }
    __syncthreads();
    __threadfence();
    if (atomicAdd(&f->left[b], 1u) == blockDim.x - 1) {
        atomicAdd(&f->in_flight, ~0u); // minus one
        atomicAdd(&f->finished, 1u);
    }
}

// Last-block-done sum of the blocks' partials (block b contributes b + 1).
// With `publish_late` a block writes its partial only after drawing its
// ticket: the last block may then sum before every partial is in place.
// With `modulo` the ticket counts modulo the grid (atomicInc) instead of
// being reset by the last block.
__global__ void ticket_sum(unsigned *ticket, unsigned *partials, unsigned *sum, int *last,
                           bool publish_late, bool modulo)
{
    __shared__ unsigned is_last;
    const unsigned b = blockIdx.x;
    if (threadIdx.x == 0) {
        if (!publish_late)
            partials[b] = b + 1;
        __threadfence();
        const unsigned t = modulo ? atomicInc(ticket, gridDim.x - 1) : atomicAdd(ticket, 1u);
        is_last = t == gridDim.x - 1;
        if (publish_late)
            partials[b] = b + 1;
    }
    __syncthreads();
    if (!is_last || threadIdx.x != 0)
        return;
    __threadfence();
    unsigned acc = 0;
    for (unsigned i = 0; i < gridDim.x; ++i)
        acc += partials[i];
    *sum = acc;
    *last = static_cast<int>(b);
    if (!modulo)
        atomicExch(ticket, 0u);
}

// Each block keeps its own __shared__ copy across switch points while other blocks write theirs. `others_ran`
// counts blocks that saw another block's write to a global in between.
__global__ void shared_per_block(unsigned *last_writer, unsigned *wrong, unsigned *others_ran)
{
    __shared__ unsigned mine[kThreads];
    mine[threadIdx.x] = blockIdx.x * 100 + threadIdx.x;
    *last_writer = blockIdx.x;
    __threadfence();
    __syncthreads();
    __threadfence();
    if (threadIdx.x == 0 && *last_writer != blockIdx.x)
        atomicAdd(others_ran, 1u);
    for (unsigned t = 0; t < kThreads; ++t)
        if (mine[t] != blockIdx.x * 100 + t)
            atomicAdd(wrong, 1u);
}

// Reads shared memory after a switch point, before any thread of the block
// wrote it, then writes it and gives other blocks the chance to run.
__global__ void read_unwritten_after_fence(float *out)
{
    __shared__ float s;
    __threadfence();
    if (threadIdx.x == 0) {
        out[blockIdx.x] = s;
        s = 1.0f;
    }
    __threadfence();
    __syncthreads();
}

// One thread applies each atomic to its own word of `w` and records the
// returned old values in `old`.
__global__ void atomic_ops(unsigned *w, int *wi, unsigned long long *wl, unsigned *old,
                           int *old_i, unsigned long long *old_l)
{
    if (threadIdx.x != 0)
        return;
    old[0] = atomicInc(&w[0], 5u);         // 3 -> 4
    old[1] = atomicInc(&w[1], 5u);         // 5 -> 0 (old == val wraps)
    old[2] = atomicInc(&w[2], 5u);         // 9 -> 0 (old > val wraps)
    old[3] = atomicInc(&w[3], 0u);         // 0 -> 0
    old[4] = atomicInc(&w[4], UINT_MAX);   // UINT_MAX -> 0
    old[5] = atomicCAS(&w[5], 7u, 8u);     // 7 -> 8
    old[6] = atomicCAS(&w[6], 7u, 8u);     // 6 stays
    old[7] = atomicExch(&w[7], 11u);       // 10 -> 11
    old[8] = atomicAdd(&w[8], 2u);         // UINT_MAX wraps to 1
    old_i[0] = atomicAdd(&wi[0], -5);      // 3 -> -2
    old_i[1] = atomicAdd(&wi[1], 1);       // INT_MAX wraps to INT_MIN
    old_i[2] = atomicCAS(&wi[2], -1, 4);   // -1 -> 4
    old_i[3] = atomicExch(&wi[3], -9);     // 0 -> -9
    old_l[0] = atomicAdd(&wl[0], 1ull);    // 2^32 - 1 -> 2^32
    old_l[1] = atomicCAS(&wl[1], 1ull << 40, 5ull); // 2^40 -> 5
    old_l[2] = atomicExch(&wl[2], 1ull << 63);      // 1 -> 2^63
}

__global__ void count_modulo(unsigned *counter, unsigned *seen, unsigned modulus)
{
    const unsigned old = atomicInc(counter, modulus - 1);
    atomicAdd(&seen[old], 1u);
}

// ---- tests ----------------------------------------------------------------

TEST(EmuSchedule, ForwardRunsThreadsInIndexOrderAndBarrierSeparatesPhases)
{
    use_schedule(Order::forward, Order::forward);
    ASSERT_EQ(GCLIP_LAUNCH(log_around_barrier, 1, kThreads, nullptr), 0);
    std::vector<int> want;
    for (int t = 0; t < kThreads; ++t)
        want.push_back(t);
    for (int t = 0; t < kThreads; ++t)
        want.push_back(1000 + t);
    EXPECT_EQ(g_log, want);
}

TEST(EmuSchedule, ReverseAndShuffledChangeTheOrderButKeepThePhases)
{
    use_schedule(Order::reverse, Order::forward);
    ASSERT_EQ(GCLIP_LAUNCH(log_around_barrier, 1, kThreads, nullptr), 0);
    EXPECT_EQ(g_log.front(), kThreads - 1);
    EXPECT_EQ(g_log.back(), 1000);

    use_schedule(Order::shuffled, Order::forward, 12345);
    ASSERT_EQ(GCLIP_LAUNCH(log_around_barrier, 1, kThreads, nullptr), 0);
    std::vector<int> before(g_log.begin(), g_log.begin() + kThreads);
    std::vector<int> sorted = before;
    std::sort(sorted.begin(), sorted.end());
    for (int t = 0; t < kThreads; ++t) {
        EXPECT_EQ(sorted[static_cast<size_t>(t)], t); // each thread once before the barrier
        EXPECT_GE(g_log[static_cast<size_t>(kThreads + t)], 1000);
    }
    EXPECT_FALSE(std::is_sorted(before.begin(), before.end())) << "seed 12345 left 8 threads in order";
}

TEST(EmuSchedule, ShuffleReplaysForTheSameSeed)
{
    use_schedule(Order::shuffled, Order::shuffled, 99);
    ASSERT_EQ(GCLIP_LAUNCH(log_around_barrier, 5, kThreads, nullptr), 0);
    const std::vector<int> first = g_log;
    use_schedule(Order::shuffled, Order::shuffled, 99);
    ASSERT_EQ(GCLIP_LAUNCH(log_around_barrier, 5, kThreads, nullptr), 0);
    EXPECT_EQ(g_log, first);
}

TEST(EmuSchedule, BlockOrdersWithOneResidentBlock)
{
    const Order orders[] = {Order::forward, Order::reverse, Order::shuffled};
    for (Order o : orders) {
        use_schedule(Order::forward, o, 3, false, 1);
        ASSERT_EQ(GCLIP_LAUNCH(log_around_barrier, 6, 1, nullptr), 0);
        std::vector<int> blocks;
        for (int v : g_log)
            if (v < 1000)
                blocks.push_back(v / 100);
        ASSERT_EQ(blocks.size(), 6u);
        const std::vector<int> up = {0, 1, 2, 3, 4, 5}, down = {5, 4, 3, 2, 1, 0};
        if (o == Order::forward) {
            EXPECT_EQ(blocks, up);
        } else if (o == Order::reverse) {
            EXPECT_EQ(blocks, down);
        } else {
            EXPECT_NE(blocks, up);
            EXPECT_TRUE(std::is_permutation(blocks.begin(), blocks.end(), up.begin()));
        }
    }
}

TEST(EmuBarrier, ThreadExitingWhileOthersWaitIsReported)
{
    use_schedule(Order::forward, Order::forward);
    EXPECT_EQ(GCLIP_LAUNCH(early_exit_thread0, 2, kThreads, nullptr), gclip_emu::kErrDivergence);
    EXPECT_EQ(GCLIP_LAUNCH_STATUS(), gclip_emu::kErrDivergence);
    EXPECT_NE(std::string(gclip_emu::error_message()).find("thread 0 exited"), std::string::npos)
        << gclip_emu::error_message();
}

TEST(EmuBarrier, DifferentBarrierSitesAreReported)
{
    use_schedule(Order::reverse, Order::forward);
    EXPECT_EQ(GCLIP_LAUNCH(two_barrier_sites, 1, kThreads, nullptr), gclip_emu::kErrDivergence);
    EXPECT_NE(std::string(gclip_emu::error_message()).find("test_emu_selftest.cpp"), std::string::npos)
        << gclip_emu::error_message();
}

TEST(EmuBarrier, LaunchAfterAFailedLaunchRunsNormally)
{
    use_schedule(Order::forward, Order::forward);
    ASSERT_NE(GCLIP_LAUNCH(early_exit_thread0, 1, kThreads, nullptr), 0);
    use_schedule(Order::forward, Order::forward);
    EXPECT_EQ(GCLIP_LAUNCH(log_around_barrier, 3, kThreads, nullptr), 0);
    EXPECT_EQ(g_log.size(), 6u * kThreads);
}

TEST(EmuWarpBarrier, OrdersTheLanesOfAWarpAndNotTheWarps)
{
    bool warps_overlap = false;
    for (Order o : {Order::forward, Order::reverse, Order::shuffled}) {
        for (uint64_t seed = 1; seed <= 4; ++seed) {
            use_schedule(o, Order::forward, seed);
            ASSERT_EQ(GCLIP_LAUNCH(log_around_warp_barrier, 1, kWarpBlock, nullptr), 0)
                << gclip_emu::error_message();
            ASSERT_EQ(g_log.size(), 2u * kWarpBlock);
            std::vector<std::size_t> before(kWarpBlock), after(kWarpBlock);
            for (std::size_t i = 0; i < g_log.size(); ++i)
                (g_log[i] < 1000 ? before[g_log[i]] : after[g_log[i] - 1000]) = i;
            for (int w = 0; w < 2; ++w) {
                std::size_t last_before = 0, first_after = SIZE_MAX;
                for (int l = 0; l < 32; ++l) {
                    last_before = std::max(last_before, before[w * 32 + l]);
                    first_after = std::min(first_after, after[w * 32 + l]);
                }
                EXPECT_LT(last_before, first_after) << "warp " << w << " order " << int(o);
            }
            // a lane of one warp past its barrier before a lane of the other arrives
            for (int a = 0; a < kWarpBlock; ++a)
                for (int b = 0; b < kWarpBlock; ++b)
                    warps_overlap = warps_overlap || (a / 32 != b / 32 && after[a] < before[b]);
        }
    }
    EXPECT_TRUE(warps_overlap) << "the warp barrier behaved as a block barrier in every schedule";
}

TEST(EmuWarpBarrier, MissingWarpBarrierGivesWrongResultInSomeOrder)
{
    std::vector<float> out(4);
    const float want = 32.0f * 33.0f / 2.0f;
    for (Order o : {Order::forward, Order::reverse, Order::shuffled}) {
        use_schedule(o, Order::forward);
        ASSERT_EQ(GCLIP_LAUNCH(warp_publish_and_read, 2, kWarpBlock, nullptr, out.data(), true), 0);
        for (float v : out)
            EXPECT_EQ(v, want);
    }
    use_schedule(Order::forward, Order::forward);
    ASSERT_EQ(GCLIP_LAUNCH(warp_publish_and_read, 2, kWarpBlock, nullptr, out.data(), false), 0);
    for (float v : out)
        EXPECT_NE(v, want);
}

TEST(EmuWarpBarrier, DifferentSitesAndABlockBarrierAreReported)
{
    // the launch fails as divergent, with `what` in the message
    const auto expect_divergence = [](void (*kernel)(), Order threads, const char *what) {
        use_schedule(threads, Order::forward);
        EXPECT_EQ(GCLIP_LAUNCH(kernel, 1, kWarpBlock, nullptr), gclip_emu::kErrDivergence);
        EXPECT_NE(std::string(gclip_emu::error_message()).find(what), std::string::npos)
            << gclip_emu::error_message();
    };
    expect_divergence(two_warp_barrier_sites, Order::reverse, "divergent __syncwarp");
    expect_divergence(warp_barrier_meets_block_barrier, Order::forward,
                      "thread 5 at __syncthreads");
    use_schedule(Order::forward, Order::forward);
    EXPECT_EQ(GCLIP_LAUNCH(warp_barrier_with_a_mask, 1, kWarpBlock, nullptr),
              gclip_emu::kErrConfiguration);
}

TEST(EmuWarpBarrier, ExitedLanesAndAPartialWarpDoNotBlockIt)
{
    for (Order o : {Order::forward, Order::reverse, Order::shuffled}) {
        int count = 0;
        use_schedule(o, Order::forward);
        // 40 threads: a full warp whose lane 31 exits, and a warp of 8 lanes
        ASSERT_EQ(GCLIP_LAUNCH(warp_barrier_after_an_exit, 2, 40, nullptr, &count), 0)
            << gclip_emu::error_message();
        EXPECT_EQ(count, 2 * (31 + 8));
    }
}

TEST(EmuShared, MissingBarrierGivesWrongResultInSomeOrder)
{
    std::vector<float> out(2);
    use_schedule(Order::forward, Order::forward);
    ASSERT_EQ(GCLIP_LAUNCH(publish_and_read, 2, kThreads, nullptr, out.data(), true), 0);
    EXPECT_EQ(out[0], 36.0f);
    EXPECT_EQ(out[1], 36.0f);
    // Without the barrier thread 0 runs first and sums garbage.
    use_schedule(Order::forward, Order::forward);
    ASSERT_EQ(GCLIP_LAUNCH(publish_and_read, 2, kThreads, nullptr, out.data(), false), 0);
    EXPECT_NE(out[0], 36.0f);
    EXPECT_NE(out[1], 36.0f);
}

TEST(EmuShared, UnwrittenSharedMemoryReadsGarbageInEveryBlock)
{
    std::vector<float> out(4);
    use_schedule(Order::forward, Order::forward);
    ASSERT_EQ(GCLIP_LAUNCH(read_unwritten, 4, kThreads, nullptr, out.data()), 0);
    for (float v : out) {
        EXPECT_NE(v, 1.0f) << "a block saw the previous block's shared memory";
        EXPECT_TRUE(std::isnan(v) || std::fabs(v) > 1e30f) << v;
    }
}

TEST(EmuAtomics, LastBlockDoneTicketFollowsTheBlockOrderWithOneResidentBlock)
{
    unsigned ticket = 0;
    int last = -1;
    use_schedule(Order::forward, Order::forward, 7, false, 1);
    ASSERT_EQ(GCLIP_LAUNCH(ticket_kernel, 5, kThreads, nullptr, &ticket, &last), 0);
    EXPECT_EQ(last, 4);
    EXPECT_EQ(ticket, 0u);
    use_schedule(Order::forward, Order::reverse, 7, false, 1);
    ASSERT_EQ(GCLIP_LAUNCH(ticket_kernel, 5, kThreads, nullptr, &ticket, &last), 0);
    EXPECT_EQ(last, 0);
    EXPECT_EQ(ticket, 0u);
}

TEST(EmuAtomics, YieldAtAtomicsInterleavesThreads)
{
    unsigned counter = 0;
    use_schedule(Order::forward, Order::forward, 1, false);
    ASSERT_EQ(GCLIP_LAUNCH(atomic_then_log, 1, kThreads, nullptr, &counter), 0);
    EXPECT_EQ(g_log.front(), 1); // thread 0 ran alone to the end
    counter = 0;
    use_schedule(Order::forward, Order::forward, 1, true);
    ASSERT_EQ(GCLIP_LAUNCH(atomic_then_log, 1, kThreads, nullptr, &counter), 0);
    ASSERT_EQ(g_log.size(), static_cast<size_t>(kThreads));
    EXPECT_EQ(g_log.front(), kThreads); // every thread reached its atomic first
}

TEST(EmuLaunch, UnsupportedShapesAreRejected)
{
    use_schedule(Order::forward, Order::forward);
    EXPECT_EQ(GCLIP_LAUNCH(log_around_barrier, 0, kThreads, nullptr), gclip_emu::kErrConfiguration);
    EXPECT_EQ(GCLIP_LAUNCH(log_around_barrier, 1, 2048, nullptr), gclip_emu::kErrConfiguration);
    EXPECT_EQ(GCLIP_LAUNCH(log_around_barrier, dim3(1, 2), kThreads, nullptr),
              gclip_emu::kErrConfiguration);
    EXPECT_TRUE(g_log.empty());
}

TEST(EmuLaunch, CountsLaunches)
{
    use_schedule(Order::forward, Order::forward);
    gclip_emu::reset_launch_count();
    ASSERT_EQ(GCLIP_LAUNCH(log_around_barrier, 2, 4, nullptr), 0);
    ASSERT_EQ(GCLIP_LAUNCH(log_around_barrier, 1, 4, nullptr), 0);
    EXPECT_EQ(gclip_emu::launch_count(), 2u);
}

// ---- the window of resident blocks ------------------------------------------------

// Changes of block between consecutive events: grid - 1 when every block's
// events are contiguous.
int block_changes(const std::vector<int> &events)
{
    int changes = 0;
    for (std::size_t i = 1; i < events.size(); ++i)
        changes += events[i] != events[i - 1];
    return changes;
}

TEST(EmuBlocks, BlocksInterleaveOnlyWithSeveralResident)
{
    constexpr unsigned kGrid = 12;
    for (bool yields : {false, true}) {
        SCOPED_TRACE(yields ? "yield at atomics" : "no yield at atomics");
        int interleaved_seeds = 0;
        for (uint64_t seed = 1; seed <= 8; ++seed) {
            for (unsigned resident : {1u, 4u}) {
                unsigned n = 0;
                std::vector<int> events(4 * kGrid, -1);
                use_schedule(Order::shuffled, Order::shuffled, seed, yields, resident, 0.5);
                ASSERT_EQ(GCLIP_LAUNCH(block_steps, kGrid, kThreads, nullptr, &n, events.data(), 0),
                          0);
                ASSERT_EQ(n, 4 * kGrid);
                std::vector<int> sorted = events;
                std::sort(sorted.begin(), sorted.end());
                for (unsigned i = 0; i < 4 * kGrid; ++i)
                    ASSERT_EQ(sorted[i], static_cast<int>(i / 4)) << "each block logs 4 times";
                if (resident == 1)
                    EXPECT_EQ(block_changes(events), static_cast<int>(kGrid) - 1)
                        << "one resident block: blocks run one after another";
                else
                    interleaved_seeds += block_changes(events) > static_cast<int>(kGrid) - 1;
            }
        }
        EXPECT_GE(interleaved_seeds, 4) << "4 resident blocks seldom interleaved over 8 seeds";
    }
}

TEST(EmuBlocks, InterleavingReplaysForTheSameSeed)
{
    std::vector<int> first;
    for (int run = 0; run < 2; ++run) {
        unsigned n = 0;
        std::vector<int> events(4 * 10, -1);
        use_schedule(Order::shuffled, Order::shuffled, 42, true, 4, 0.5);
        ASSERT_EQ(GCLIP_LAUNCH(block_steps, 10, kThreads, nullptr, &n, events.data(), 0), 0);
        if (run == 0)
            first = events;
        else
            EXPECT_EQ(events, first);
    }
    EXPECT_GT(block_changes(first), 9);
}

// At most `resident` blocks in flight, as many as that with switches at
// every point, and blocks enter the window in the block order: when a block
// starts, at least its position in the order minus resident - 1 blocks have
// finished.
void expect_window(unsigned grid, unsigned threads, unsigned resident, Order blocks, bool yields,
                   double rate)
{
    std::vector<unsigned> arrived(grid), left(grid), at_start(grid, ~0u);
    Flight f{arrived.data(), left.data(), at_start.data(), 0, 0, 0};
    use_schedule(Order::shuffled, blocks, 11, yields, resident, rate);
    ASSERT_EQ(GCLIP_LAUNCH(in_flight, grid, threads, nullptr, &f), 0) << gclip_emu::error_message();
    EXPECT_EQ(f.in_flight, 0u);
    EXPECT_EQ(f.finished, grid);
    EXPECT_LE(f.max_in_flight, resident);
    if (rate == 1.0) {
        EXPECT_EQ(f.max_in_flight, std::min(resident, grid));
    }
    if (blocks == Order::shuffled)
        return;
    for (unsigned pos = 0; pos < grid; ++pos) {
        const unsigned b = blocks == Order::forward ? pos : grid - 1 - pos;
        ASSERT_EQ(arrived[b], threads);
        ASSERT_EQ(left[b], threads);
        EXPECT_GE(at_start[b] + resident, pos + 1) << "block " << b << " entered the window early";
    }
}

TEST(EmuBlocks, WindowHoldsAtMostResidentBlocksInBlockOrder)
{
    for (Order o : {Order::forward, Order::reverse, Order::shuffled})
        for (unsigned resident : {1u, 3u, 8u})
            for (bool yields : {false, true}) {
                SCOPED_TRACE(std::string(gclip_emu::order_name(o)) + " resident " +
                             std::to_string(resident) + (yields ? " yields" : ""));
                expect_window(20, kThreads, resident, o, yields, 1.0);
                expect_window(20, kThreads, resident, o, yields, 0.3);
            }
}

TEST(EmuBlocks, ResidentBlocksAreCappedAndZeroMeansOne)
{
    std::vector<unsigned> arrived(40), left(40), at_start(40);
    Flight f{arrived.data(), left.data(), at_start.data(), 0, 0, 0};
    use_schedule(Order::forward, Order::forward, 1, false, 1000, 1.0);
    ASSERT_EQ(GCLIP_LAUNCH(in_flight, 40, 2, nullptr, &f), 0);
    EXPECT_LE(f.max_in_flight, gclip_emu::kMaxResidentBlocks);
    EXPECT_GT(f.max_in_flight, gclip_emu::kMaxResidentBlocks / 2);
    for (unsigned b = 0; b < 40; ++b)
        EXPECT_GE(at_start[b] + gclip_emu::kMaxResidentBlocks, b + 1) << "block " << b;
    Flight g{arrived.data(), left.data(), at_start.data(), 0, 0, 0};
    std::fill(arrived.begin(), arrived.end(), 0u);
    std::fill(left.begin(), left.end(), 0u);
    use_schedule(Order::forward, Order::forward, 1, false, 0, 1.0);
    ASSERT_EQ(GCLIP_LAUNCH(in_flight, 40, 2, nullptr, &g), 0);
    EXPECT_EQ(g.max_in_flight, 1u);
}

long resident_kib()
{
    long kib = -1;
    if (FILE *f = std::fopen("/proc/self/status", "r")) {
        char line[256];
        while (std::fgets(line, sizeof line, f))
            if (std::sscanf(line, "VmRSS: %ld kB", &kib) == 1)
                break;
        std::fclose(f);
    }
    return kib;
}

TEST(EmuBlocks, StacksAreReusedInALaunchOfThousandsOfBlocks)
{
    constexpr unsigned kGrid = 5000, kBlock = 64, kResident = 6;
    const std::size_t stacks_before = gclip_emu::fiber_stacks();
    const long rss_before = resident_kib();
    std::vector<unsigned> arrived(kGrid), left(kGrid), at_start(kGrid);
    Flight f{arrived.data(), left.data(), at_start.data(), 0, 0, 0};
    use_schedule(Order::shuffled, Order::shuffled, 5, false, kResident, 0.25);
    ASSERT_EQ(GCLIP_LAUNCH(in_flight, kGrid, kBlock, nullptr, &f), 0) << gclip_emu::error_message();
    EXPECT_EQ(f.finished, kGrid);
    EXPECT_EQ(f.max_in_flight, kResident);
    EXPECT_LE(gclip_emu::fiber_stacks() - stacks_before, std::size_t{kResident} * kBlock);
    EXPECT_LE(gclip_emu::fiber_stacks(), std::size_t{gclip_emu::kMaxResidentBlocks} * 1024);
    // a stack per fiber of the grid would be 320000 stacks of 128 KiB
    if (rss_before > 0) {
        EXPECT_LT(resident_kib() - rss_before, 256L * 1024) << "KiB of resident memory";
    }
}

// The ticket pattern of the norm kernel, with blocks in flight around it.
struct TicketRun {
    unsigned sum = 0;
    int last = -1;
    unsigned ticket = 0;
};

TicketRun run_ticket(unsigned grid, uint64_t seed, unsigned resident, bool late, bool modulo)
{
    TicketRun r;
    std::vector<unsigned> partials(grid, 0);
    use_schedule(Order::shuffled, Order::forward, seed, false, resident, 0.5);
    EXPECT_EQ(GCLIP_LAUNCH(ticket_sum, grid, kThreads, nullptr, &r.ticket, partials.data(), &r.sum,
                           &r.last, late, modulo),
              0);
    return r;
}

TEST(EmuBlocks, LastBlockDoneTicketWorksWithBlocksInFlight)
{
    constexpr unsigned kGrid = 16, kSum = kGrid * (kGrid + 1) / 2;
    for (bool modulo : {false, true}) {
        SCOPED_TRACE(modulo ? "atomicInc ticket" : "atomicAdd ticket, reset by the last block");
        std::set<int> lasts;
        for (uint64_t seed = 1; seed <= 20; ++seed) {
            const TicketRun r = run_ticket(kGrid, seed, 4, false, modulo);
            EXPECT_EQ(r.sum, kSum) << "seed " << seed;
            EXPECT_EQ(r.ticket, 0u) << "seed " << seed;
            lasts.insert(r.last);
        }
        // with one block at a time the last block in the order is always last
        EXPECT_GT(lasts.size(), 1u) << "the ticket always went to the same block";
    }
}

TEST(EmuBlocks, PartialPublishedAfterTheTicketIsCaughtOnlyWithBlocksInFlight)
{
    constexpr unsigned kGrid = 16, kSum = kGrid * (kGrid + 1) / 2;
    int wrong = 0;
    for (uint64_t seed = 1; seed <= 20; ++seed) {
        EXPECT_EQ(run_ticket(kGrid, seed, 1, true, false).sum, kSum) << "seed " << seed;
        wrong += run_ticket(kGrid, seed, 4, true, false).sum != kSum;
    }
    EXPECT_GT(wrong, 0) << "the last block never summed a missing partial";
}

TEST(EmuBlocks, SharedMemoryAndScratchArePerBlock)
{
    constexpr unsigned kGrid = 9;
    for (uint64_t seed = 1; seed <= 4; ++seed)
        for (Order o : {Order::forward, Order::reverse, Order::shuffled}) {
            SCOPED_TRACE(std::string(gclip_emu::order_name(o)) + " seed " + std::to_string(seed));
            unsigned last_writer = 0, wrong = 0, others_ran = 0;
            use_schedule(o, Order::shuffled, seed, seed % 2 == 0, 4, 1.0);
            ASSERT_EQ(GCLIP_LAUNCH(shared_per_block, kGrid, kThreads, nullptr, &last_writer, &wrong,
                                   &others_ran),
                      0);
            EXPECT_EQ(wrong, 0u) << "a block read another block's __shared__ values";
            EXPECT_GT(others_ran, 0u) << "no block ran between another's write and read";

        }
}

TEST(EmuBlocks, EveryBlockStartsWithGarbageSharedMemory)
{
    constexpr unsigned kGrid = 12;
    std::vector<float> out(kGrid);
    use_schedule(Order::forward, Order::shuffled, 3, false, 4, 1.0);
    ASSERT_EQ(GCLIP_LAUNCH(read_unwritten_after_fence, kGrid, kThreads, nullptr, out.data()), 0);
    int nans = 0, huge = 0;
    for (float v : out) {
        EXPECT_NE(v, 1.0f) << "a block saw another block's shared memory";
        nans += std::isnan(v);
        huge += !std::isnan(v) && std::fabs(v) > 1e30f;
    }
    EXPECT_EQ(nans + huge, static_cast<int>(kGrid));
    EXPECT_GT(nans, 0);
    EXPECT_GT(huge, 0);
}

TEST(EmuBlocks, DivergenceIsReportedWithSeveralResidentBlocks)
{
    for (uint64_t seed = 1; seed <= 4; ++seed) {
        use_schedule(Order::shuffled, Order::shuffled, seed, seed % 2 == 0, 4, 1.0);
        EXPECT_EQ(GCLIP_LAUNCH(early_exit_thread0, 10, kThreads, nullptr),
                  gclip_emu::kErrDivergence);
        EXPECT_NE(std::string(gclip_emu::error_message()).find("thread 0 exited"),
                  std::string::npos)
            << gclip_emu::error_message();
        use_schedule(Order::reverse, Order::shuffled, seed, false, 4, 1.0);
        EXPECT_EQ(GCLIP_LAUNCH(two_barrier_sites, 10, kThreads, nullptr),
                  gclip_emu::kErrDivergence);
        EXPECT_NE(std::string(gclip_emu::error_message()).find("waits at"), std::string::npos)
            << gclip_emu::error_message();
        // the abandoned blocks leave nothing behind
        use_schedule(Order::forward, Order::forward, seed, false, 4, 1.0);
        EXPECT_EQ(GCLIP_LAUNCH(log_around_barrier, 7, kThreads, nullptr), 0);
        EXPECT_EQ(g_log.size(), 14u * kThreads);
    }
}

// ---- atomics ------------------------------------------------------------------------

TEST(EmuAtomics, AtomicIncCasExchAndAddFollowCuda)
{
    unsigned w[9] = {3, 5, 9, 0, UINT_MAX, 7, 6, 10, UINT_MAX};
    int wi[4] = {3, INT_MAX, -1, 0};
    unsigned long long wl[3] = {0xffffffffull, 1ull << 40, 1};
    unsigned old[9] = {};
    int old_i[4] = {};
    unsigned long long old_l[3] = {};
    use_schedule(Order::forward, Order::forward, 1, true);
    ASSERT_EQ(GCLIP_LAUNCH(atomic_ops, 1, kThreads, nullptr, w, wi, wl, old, old_i, old_l), 0);
    const unsigned want_w[9] = {4, 0, 0, 0, 0, 8, 6, 11, 1};
    const unsigned want_old[9] = {3, 5, 9, 0, UINT_MAX, 7, 6, 10, UINT_MAX};
    for (int i = 0; i < 9; ++i) {
        EXPECT_EQ(w[i], want_w[i]) << "word " << i;
        EXPECT_EQ(old[i], want_old[i]) << "word " << i;
    }
    EXPECT_EQ(wi[0], -2);
    EXPECT_EQ(wi[1], INT_MIN);
    EXPECT_EQ(wi[2], 4);
    EXPECT_EQ(wi[3], -9);
    EXPECT_EQ(old_i[0], 3);
    EXPECT_EQ(old_i[1], INT_MAX);
    EXPECT_EQ(old_i[2], -1);
    EXPECT_EQ(old_i[3], 0);
    EXPECT_EQ(wl[0], 1ull << 32);
    EXPECT_EQ(wl[1], 5ull);
    EXPECT_EQ(wl[2], 1ull << 63);
    EXPECT_EQ(old_l[0], 0xffffffffull);
    EXPECT_EQ(old_l[1], 1ull << 40);
    EXPECT_EQ(old_l[2], 1ull);
}

TEST(EmuAtomics, AtomicIncCountsModuloAcrossInterleavedBlocks)
{
    constexpr unsigned kGrid = 6, kModulus = 5, kCalls = kGrid * kThreads; // 48 = 9 * 5 + 3
    unsigned counter = 0;
    std::vector<unsigned> seen(kModulus, 0);
    use_schedule(Order::shuffled, Order::shuffled, 9, true, 4, 0.5);
    ASSERT_EQ(
        GCLIP_LAUNCH(count_modulo, kGrid, kThreads, nullptr, &counter, seen.data(), kModulus), 0);
    EXPECT_EQ(counter, kCalls % kModulus);
    for (unsigned v = 0; v < kModulus; ++v)
        EXPECT_EQ(seen[v], kCalls / kModulus + (v < kCalls % kModulus)) << "old value " << v;
}

// ---- concurrent launches ------------------------------------------------------------

// Position of the first and last event of launch `tag` in `events`.
std::pair<int, int> span_of(const std::vector<int> &events, int tag)
{
    int first = -1, last = -1;
    for (std::size_t i = 0; i < events.size(); ++i)
        if (events[i] / 1000 == tag) {
            if (first < 0)
                first = static_cast<int>(i);
            last = static_cast<int>(i);
        }
    return {first, last};
}

TEST(EmuConcurrent, BlocksOfTwoGridsInterleave)
{
    constexpr unsigned kGrid = 8;
    int overlapping = 0;
    for (uint64_t seed = 1; seed <= 6; ++seed) {
        unsigned n = 0;
        std::vector<int> events(2 * 4 * kGrid, -1);
        use_schedule(Order::shuffled, Order::forward, seed, false, 4, 0.5);
        gclip_emu::reset_launch_count();
        auto stream = [&](int tag) {
            return [&, tag] {
                const int launched =
                    GCLIP_LAUNCH(block_steps, kGrid, kThreads, nullptr, &n, events.data(), tag);
                EXPECT_EQ(launched, 0);
            };
        };
        const int st = gclip_emu::launch_concurrent({stream(1), stream(2)});
        ASSERT_EQ(st, 0) << gclip_emu::error_message();
        EXPECT_EQ(gclip_emu::last_status(), 0);
        EXPECT_EQ(gclip_emu::launch_count(), 2u);
        ASSERT_EQ(n, 2 * 4 * kGrid);
        const auto a = span_of(events, 1), b = span_of(events, 2);
        ASSERT_GE(a.first, 0);
        ASSERT_GE(b.first, 0);
        // each grid's blocks run while the other grid has blocks in flight
        overlapping += a.first < b.second && b.first < a.second;
    }
    EXPECT_EQ(overlapping, 6);
}

TEST(EmuConcurrent, LaunchesOfOneStreamRunInOrder)
{
    constexpr unsigned kGrid = 6;
    for (uint64_t seed = 1; seed <= 4; ++seed) {
        unsigned n = 0;
        std::vector<int> events(3 * 4 * kGrid, -1);
        use_schedule(Order::shuffled, Order::shuffled, seed, true, 4, 0.5);
        const int st = gclip_emu::launch_concurrent(
            {[&] {
                 GCLIP_LAUNCH(block_steps, kGrid, kThreads, nullptr, &n, events.data(), 1);
                 GCLIP_LAUNCH(block_steps, kGrid, kThreads, nullptr, &n, events.data(), 2);
             },
             [&] { GCLIP_LAUNCH(block_steps, kGrid, kThreads, nullptr, &n, events.data(), 3); }});
        ASSERT_EQ(st, 0) << gclip_emu::error_message();
        const auto a = span_of(events, 1), b = span_of(events, 2), c = span_of(events, 3);
        EXPECT_LT(a.second, b.first) << "the stream's second launch started before its first ended";
        EXPECT_LT(c.first, a.second) << "the other stream waited for the first launch";
    }
}

TEST(EmuConcurrent, RecordedLaunchesRunOnlyAfterTheHostCode)
{
    unsigned n = 0;
    std::vector<int> events(4 * 3, -1);
    use_schedule(Order::forward, Order::forward);
    const int st = gclip_emu::launch_concurrent({[&] {
        EXPECT_TRUE(gclip_emu::recording());
        GCLIP_LAUNCH(block_steps, 3, kThreads, nullptr, &n, events.data(), 0);
        EXPECT_EQ(n, 0u) << "a recorded launch ran at once";
    }});
    EXPECT_EQ(st, 0);
    EXPECT_FALSE(gclip_emu::recording());
    EXPECT_EQ(n, 12u);
}

TEST(EmuConcurrent, TheFirstErrorIsReturnedAndStopsEveryStream)
{
    for (uint64_t seed = 1; seed <= 3; ++seed) {
        unsigned n = 0;
        std::vector<int> events(4 * 200, -1);
        use_schedule(Order::shuffled, Order::forward, seed, false, 4, 0.5);
        const int st = gclip_emu::launch_concurrent(
            {[&] { GCLIP_LAUNCH(early_exit_thread0, 4, kThreads, nullptr); },
             [&] { GCLIP_LAUNCH(block_steps, 200, kThreads, nullptr, &n, events.data(), 0); }});
        EXPECT_EQ(st, gclip_emu::kErrDivergence);
        EXPECT_EQ(gclip_emu::last_status(), gclip_emu::kErrDivergence);
        EXPECT_LT(n, 4u * 200) << "the other stream ran to its end after the error";
    }
    // a shape the emulator rejects is reported by its launch and by the run;
    // the other launches still run
    unsigned n = 0;
    std::vector<int> events(4 * 2, -1);
    use_schedule(Order::forward, Order::forward);
    int rejected = 0;
    const int st = gclip_emu::launch_concurrent(
        {[&] { rejected = GCLIP_LAUNCH(log_around_barrier, 0, kThreads, nullptr); },
         [&] { GCLIP_LAUNCH(block_steps, 2, kThreads, nullptr, &n, events.data(), 0); }});
    EXPECT_EQ(rejected, gclip_emu::kErrConfiguration);
    EXPECT_EQ(st, gclip_emu::kErrConfiguration);
    EXPECT_EQ(n, 8u);
    // and the next plain launch is unaffected
    use_schedule(Order::forward, Order::forward);
    EXPECT_EQ(GCLIP_LAUNCH(log_around_barrier, 2, kThreads, nullptr), 0);
}

// Two launches of the ticket kernel on one counter, as two unordered streams
// using one plan would issue them.
struct TwoTickets {
    bool sums_right = true;
    unsigned ticket = 0;
};

TwoTickets two_ticket_launches(uint64_t seed, bool modulo, bool same_stream)
{
    constexpr unsigned kGrid = 8, kSum = kGrid * (kGrid + 1) / 2;
    TwoTickets r;
    std::vector<unsigned> p1(kGrid, 0), p2(kGrid, 0);
    unsigned s1 = 0, s2 = 0;
    int l1 = -1, l2 = -1;
    auto first = [&] {
        GCLIP_LAUNCH(ticket_sum, kGrid, kThreads, nullptr, &r.ticket, p1.data(), &s1, &l1, false,
                     modulo);
    };
    auto second = [&] {
        GCLIP_LAUNCH(ticket_sum, kGrid, kThreads, nullptr, &r.ticket, p2.data(), &s2, &l2, false,
                     modulo);
    };
    use_schedule(Order::shuffled, Order::shuffled, seed, false, 6, 0.5);
    const int st = same_stream ? gclip_emu::launch_concurrent({[&] { first(); second(); }})
                               : gclip_emu::launch_concurrent({first, second});
    EXPECT_EQ(st, 0) << gclip_emu::error_message();
    r.sums_right = s1 == kSum && s2 == kSum;
    return r;
}

TEST(EmuConcurrent, UnorderedLaunchesSharingATicketAreCaught)
{
    int wrong_sums = 0, ticket_left = 0;
    for (uint64_t seed = 1; seed <= 20; ++seed) {
        for (bool modulo : {false, true}) {
            const TwoTickets ordered = two_ticket_launches(seed, modulo, true);
            EXPECT_TRUE(ordered.sums_right) << "seed " << seed;
            EXPECT_EQ(ordered.ticket, 0u) << "seed " << seed;
            const TwoTickets unordered = two_ticket_launches(seed, modulo, false);
            wrong_sums += !unordered.sums_right;
            if (modulo)
                EXPECT_EQ(unordered.ticket, 0u) << "two whole grids modulo the grid: seed " << seed;
            else
                ticket_left += unordered.ticket != 0;
        }
    }
    EXPECT_GT(wrong_sums, 0) << "unordered launches never mixed their tickets";
    EXPECT_GT(ticket_left, 0) << "a reset never lost a concurrent launch's ticket";
}

// ---- programmatic dependent launch -------------------------------------------------

// The launch before a dependent one: each block counts itself in `started`,
// then releases its dependents (if `release`), then, after a few switch
// points, thread 0 sets done[blockIdx.x].
__global__ void pdl_producer(unsigned *started, int *done, bool release)
{
    if (threadIdx.x == 0)
        atomicAdd(started, 1u);
    __syncthreads();
    if (release)
        ::gclip_emu::release_dependents();
    for (int k = 0; k < 3; ++k) {
        __threadfence();
        __syncthreads();
    }
    if (threadIdx.x == 0)
        done[blockIdx.x] = 1;
}

// What one block of the dependent launch saw: producer blocks started when
// it began, and producer blocks done before and after its wait.
struct PdlSeen {
    unsigned started = 0;
    int before = 0, after = 0;
};

__global__ void pdl_consumer(const unsigned *started, const int *done, int producers,
                             PdlSeen *seen)
{
    PdlSeen &me = seen[blockIdx.x];
    auto count = [&] {
        int n = 0;
        for (int b = 0; b < producers; ++b)
            n += done[b];
        return n;
    };
    if (threadIdx.x == 0) {
        me.started = *started;
        me.before = count();
    }
    ::gclip_emu::wait_prior_grids();
    // every thread's view after its own wait
    const int after = count();
    if (threadIdx.x == kThreads - 1)
        me.after = after;
}

struct PdlRun {
    std::vector<PdlSeen> seen;
    int status = 0;
};

PdlRun pdl_run(uint64_t seed, bool dependent, bool release)
{
    constexpr int kProducers = 5, kConsumers = 6;
    unsigned started = 0;
    std::vector<int> done(kProducers, 0);
    PdlRun r;
    r.seen.assign(kConsumers, PdlSeen{});
    use_schedule(Order::shuffled, Order::shuffled, seed, seed % 2 == 0, 6, 0.5);
    r.status = gclip_emu::launch_concurrent({[&] {
        GCLIP_LAUNCH(pdl_producer, kProducers, kThreads, nullptr, &started, done.data(), release);
        GCLIP_LAUNCH_DEPENDENT(pdl_consumer, dependent, kConsumers, kThreads, nullptr, &started,
                               done.data(), kProducers, r.seen.data());
    }});
    return r;
}

// A dependent launch starts while the launch before it still runs, never
// before every block of that launch has started, and its threads see all
// of that launch's writes once they have waited.
TEST(EmuDependentLaunch, StartsAlongsideTheLaunchBeforeItAndWaitsForIt)
{
    int overlapped = 0;
    for (uint64_t seed = 1; seed <= 12; ++seed) {
        const PdlRun r = pdl_run(seed, true, true);
        ASSERT_EQ(r.status, 0) << gclip_emu::error_message();
        for (const PdlSeen &s : r.seen) {
            EXPECT_EQ(s.started, 5u) << "seed " << seed
                                     << ": a dependent block began before every block before it";
            EXPECT_EQ(s.after, 5) << "seed " << seed << ": a wait returned early";
            overlapped += s.before < 5;
        }
    }
    EXPECT_GT(overlapped, 0) << "no dependent block ever ran before the launch before it ended";
}

// A plain launch, or a dependent one after a launch that never releases it,
// starts only after the launch before it has finished.
TEST(EmuDependentLaunch, PlainLaunchesAndUnreleasedOnesStartAfterTheLaunchBefore)
{
    for (uint64_t seed = 1; seed <= 6; ++seed) {
        for (const bool dependent : {false, true}) {
            const PdlRun r = pdl_run(seed, dependent, !dependent);
            ASSERT_EQ(r.status, 0) << gclip_emu::error_message();
            for (const PdlSeen &s : r.seen) {
                EXPECT_EQ(s.before, 5) << "seed " << seed << (dependent ? ", unreleased" : ", plain");
                EXPECT_EQ(s.after, 5);
            }
        }
    }
}

TEST(EmuSanitizers, AlignedVectorLoadWorks)
{
    float *p = static_cast<float *>(std::aligned_alloc(16, 4 * 4 * kThreads));
    for (int i = 0; i < 4 * kThreads; ++i)
        p[i] = static_cast<float>(i + 1);
    std::vector<unsigned> out(kThreads);
    use_schedule(Order::forward, Order::forward);
    ASSERT_EQ(GCLIP_LAUNCH(load_vector, 1, kThreads, nullptr, p, out.data()), 0);
    unsigned want[4];
    std::memcpy(want, p, sizeof want);
    EXPECT_EQ(out[0], want[0] ^ want[1] ^ want[2] ^ want[3]);
    std::free(p);
}

using EmuSanitizersDeathTest = ::testing::Test;

TEST_F(EmuSanitizersDeathTest, MisalignedVectorLoadInAFiberIsFatal)
{
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            float *p = static_cast<float *>(std::aligned_alloc(16, 4 * 4 * (kThreads + 1)));
            std::vector<unsigned> out(kThreads);
            use_schedule(Order::forward, Order::forward);
            GCLIP_LAUNCH(load_vector, 1, kThreads, nullptr, p + 1, out.data());
            std::free(p);
        },
        "misaligned address");
}

TEST_F(EmuSanitizersDeathTest, ReadPastAnExactSizeBufferInAFiberIsFatal)
{
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            float *p = static_cast<float *>(std::malloc(3 * sizeof(float)));
            float out = 0;
            use_schedule(Order::forward, Order::forward);
            GCLIP_LAUNCH(read_at, 1, kThreads, nullptr, p, 3, &out);
            std::free(p);
        },
        "heap-buffer-overflow");
}

TEST_F(EmuSanitizersDeathTest, SharedArrayOverflowIsFatal)
{
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            use_schedule(Order::forward, Order::forward);
            GCLIP_LAUNCH(shared_write_at, 1, 1, nullptr, kThreads);
        },
        "global-buffer-overflow");
}

} // namespace
