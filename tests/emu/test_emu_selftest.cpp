// test_emu_selftest.cpp - the SIMT emulator itself: schedules, barrier
// divergence detection, shared-memory refill, atomics, the block reduction
// stand-in, and that the sanitizers see accesses made inside fibers.
#include "simt_emu.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using gclip_emu::Order;
using gclip_emu::Schedule;

constexpr int kThreads = 8;

std::vector<int> g_log; // (block * 100 + thread) per event, in execution order

void use_schedule(Order threads, Order blocks, uint64_t seed = 7, bool yields = false)
{
    Schedule s;
    s.threads = threads;
    s.blocks = blocks;
    s.seed = seed;
    s.yield_at_atomics = yields;
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

struct OrderedFold {
    // Not commutative: the result encodes the order of the operands.
    double operator()(double a, double b) const { return a * 10.0 + b; }
};

__global__ void reduce_kernel(double *out, bool second_with_barrier)
{
    double first = gclip_emu_block_reduce<kThreads>(static_cast<double>(threadIdx.x), OrderedFold{});
    if (second_with_barrier)
        __syncthreads();
    double second = gclip_emu_block_reduce<kThreads>(1.0, OrderedFold{});
    if (threadIdx.x == 0) {
        out[0] = first;
        out[1] = second;
    } else if (!std::isnan(first)) {
        out[2] = 1.0; // other threads must not get a usable value
    }
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

TEST(EmuSchedule, BlockOrders)
{
    const Order orders[] = {Order::forward, Order::reverse, Order::shuffled};
    for (Order o : orders) {
        use_schedule(Order::forward, o, 3);
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

TEST(EmuAtomics, LastBlockDoneTicketFollowsTheBlockOrder)
{
    unsigned ticket = 0;
    int last = -1;
    use_schedule(Order::forward, Order::forward);
    ASSERT_EQ(GCLIP_LAUNCH(ticket_kernel, 5, kThreads, nullptr, &ticket, &last), 0);
    EXPECT_EQ(last, 4);
    EXPECT_EQ(ticket, 0u);
    use_schedule(Order::forward, Order::reverse);
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

TEST(EmuReduce, FoldsInThreadOrderIntoThreadZeroOnly)
{
    const Order orders[] = {Order::forward, Order::reverse, Order::shuffled};
    for (Order o : orders) {
        double out[3] = {0, 0, 0};
        use_schedule(o, Order::forward, 5);
        ASSERT_EQ(GCLIP_LAUNCH(reduce_kernel, 1, kThreads, nullptr, out, true), 0);
        EXPECT_EQ(out[0], 1234567.0) << gclip_emu::order_name(o); // digits 0..7 in order
        EXPECT_EQ(out[1], 11111111.0) << gclip_emu::order_name(o);
        EXPECT_EQ(out[2], 0.0) << "a thread other than 0 got a reduction value";
    }
}

TEST(EmuReduce, ReusingTheStorageWithoutABarrierIsCaughtInReverseOrder)
{
    double out[3] = {0, 0, 0};
    use_schedule(Order::reverse, Order::forward);
    ASSERT_EQ(GCLIP_LAUNCH(reduce_kernel, 1, kThreads, nullptr, out, false), 0);
    EXPECT_NE(out[0], 1234567.0);
}

TEST(EmuReduce, WrongBlockSizeIsReported)
{
    double out[3] = {0, 0, 0};
    use_schedule(Order::forward, Order::forward);
    EXPECT_EQ(GCLIP_LAUNCH(reduce_kernel, 1, kThreads * 2, nullptr, out, true),
              gclip_emu::kErrReduceShape);
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
