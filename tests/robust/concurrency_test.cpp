// Concurrency: distinct plans used from many threads at once give bitwise the
// results of a serial run, gclip_last_error is per thread, and a forked child
// clips as its parent does.
#include "robust_util.hpp"

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <limits>
#include <string>
#include <thread>

namespace {

constexpr int kThreads = 8;
constexpr int kPlansPerThread = 4;

// Everything a job observes: result bits after each operation, the per-tensor
// norms and the checksum of the gradients at the end.
struct Fingerprint {
    std::vector<robust::ResultBits> results;
    std::vector<uint32_t> tensor_norms;
    uint64_t checksum = 0;
    std::vector<int> statuses;
    bool operator==(const Fingerprint &o) const
    {
        return results == o.results && tensor_norms == o.tensor_norms && checksum == o.checksum &&
               statuses == o.statuses;
    }
};

// Job j: a seeded tensor list and a fixed sequence of operations on its own
// plan, with `omp_threads` OpenMP threads (0 = default). `max_numel` 0: the
// job's own sizes, else up to that many elements in each of 4 tensors.
Fingerprint run_job(int j, int omp_threads, int64_t max_numel = 0)
{
    Fingerprint fp;
    const uint64_t seed = 1000 + static_cast<uint64_t>(j);
    // a few jobs have multi-chunk tensors so that OpenMP splits the work
    const bool big = j % 5 == 0;
    auto bufs = robust::make_buffers(
        max_numel > 0 ? robust::random_specs(4, max_numel, seed)
                      : robust::random_specs(big ? 3 : 1 + j % 13, big ? 140000 : 2000, seed),
        seed);
    const auto t = oracle::tensors_of(bufs);
    robust::Plan plan;
    fp.statuses.push_back(gclip_plan_create(plan.out(), t.data(), t.size(), GCLIP_DEVICE_CPU));
    if (!plan.get())
        return fp;
    fp.statuses.push_back(gclip_plan_set_num_threads(plan.get(), omp_threads));
    std::vector<float> tn(t.size());
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.tensor_norms = tn.data();
    auto record = [&](gclip_status s) {
        fp.statuses.push_back(s);
        gclip_result r{};
        fp.statuses.push_back(gclip_get_result(plan.get(), &r));
        fp.results.push_back(robust::bits_of(r));
        for (float v : tn)
            fp.tensor_norms.push_back(oracle::float_to_bits(v));
    };
    o.max_norm = 0.25f * static_cast<float>(1 + j % 4);
    record(gclip_clip_grad_norm(plan.get(), &o, nullptr));
    o.norm_type = 3.0f;
    o.inv_scale = 0.5f;
    record(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr));
    record(gclip_clip_grad_value(plan.get(), 0.01f, nullptr));
    record(gclip_clip_grad_value_f64(plan.get(), 0.001 * (1 + j % 3), nullptr));
    o.norm_type = std::numeric_limits<float>::infinity();
    record(gclip_total_norm(plan.get(), &o, nullptr));
    fp.checksum = oracle::checksum(bufs);
    return fp;
}

TEST(Concurrency, DistinctPlansMatchSerialRun)
{
    constexpr int kJobs = kThreads * kPlansPerThread;
    std::vector<Fingerprint> serial(kJobs);
    for (int j = 0; j < kJobs; ++j)
        serial[j] = run_job(j, 1);
    // the serial run itself must be a real clipping run
    ASSERT_EQ(serial[0].statuses.front(), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(serial[0].results.size(), 5u);

    constexpr int kRounds = 3;
    std::vector<Fingerprint> got(static_cast<std::size_t>(kJobs) * kRounds);
    std::atomic<int> ready{0};
    std::vector<std::thread> pool;
    for (int th = 0; th < kThreads; ++th)
        pool.emplace_back([&, th] {
            // start together so that plan creation also overlaps
            ready.fetch_add(1);
            while (ready.load() < kThreads)
                std::this_thread::yield();
            for (int round = 0; round < kRounds; ++round)
                for (int k = 0; k < kPlansPerThread; ++k) {
                    const int j = th * kPlansPerThread + k;
                    got[static_cast<std::size_t>(round) * kJobs + j] = run_job(j, (j + round) % 3);
                }
        });
    for (auto &t : pool)
        t.join();
    for (int round = 0; round < kRounds; ++round)
        for (int j = 0; j < kJobs; ++j)
            EXPECT_TRUE(got[static_cast<std::size_t>(round) * kJobs + j] == serial[j])
                << "job " << j << " round " << round;
}

// Each thread fails with its own message and must read back exactly its own
// message, however the calls of the other threads interleave.
TEST(Concurrency, LastErrorIsPerThread)
{
    std::atomic<int> ready{0};
    std::atomic<int> mismatches{0};
    std::atomic<int> checks{0};
    std::vector<std::thread> pool;
    for (int th = 0; th < kThreads; ++th)
        pool.emplace_back([&, th] {
            // each thread its own plan: one plan is not for concurrent use
            auto bufs = robust::make_buffers({{100, GCLIP_F32, th}}, 3 + th);
            const gclip_tensor t = bufs[0].tensor();
            robust::Plan plan;
            if (gclip_plan_create(plan.out(), &t, 1, GCLIP_DEVICE_CPU) != GCLIP_STATUS_SUCCESS)
                mismatches.fetch_add(1);
            ready.fetch_add(1);
            while (ready.load() < kThreads)
                std::this_thread::yield();
            const std::string mine = "num_threads " + std::to_string(-(th + 1));
            for (int i = 0; i < 2000; ++i) {
                if (th % 2 == 0 || i % 2 == 0) {
                    if (gclip_plan_set_num_threads(plan.get(), -(th + 1)) != GCLIP_STATUS_INVALID_ARGUMENT ||
                        std::string(gclip_last_error()).find(mine) == std::string::npos)
                        mismatches.fetch_add(1);
                } else {
                    // a successful call clears only this thread's message
                    gclip_result r;
                    if (gclip_get_result(plan.get(), &r) != GCLIP_STATUS_SUCCESS ||
                        gclip_last_error()[0] != '\0')
                        mismatches.fetch_add(1);
                }
                std::this_thread::yield();
                checks.fetch_add(1);
            }
        });
    for (auto &th : pool)
        th.join();
    EXPECT_EQ(checks.load(), kThreads * 2000);
    EXPECT_EQ(mismatches.load(), 0);
}

// A failure in one thread leaves another thread's earlier message alone.
TEST(Concurrency, FailureElsewhereKeepsMessage)
{
    std::atomic<int> stage{0};
    std::string seen_a, seen_b;
    std::thread a([&] {
        gclip_plan_create(nullptr, nullptr, 0, GCLIP_DEVICE_CPU);
        const std::string before = gclip_last_error();
        stage = 1;
        while (stage.load() != 2)
            std::this_thread::yield();
        seen_a = gclip_last_error();
        EXPECT_EQ(seen_a, before);
    });
    std::thread b([&] {
        while (stage.load() != 1)
            std::this_thread::yield();
        EXPECT_STREQ(gclip_last_error(), "") << "a new thread starts with no message";
        gclip_plan *p = nullptr;
        gclip_plan_create(&p, nullptr, 3, GCLIP_DEVICE_CPU); // a different message
        seen_b = gclip_last_error();
        stage = 2;
    });
    a.join();
    b.join();
    EXPECT_FALSE(seen_a.empty());
    EXPECT_FALSE(seen_b.empty());
    EXPECT_NE(seen_a, seen_b);
}

// A child forked from a process whose OpenMP runtime has run teams (GNU
// libgomp cannot start one there) runs its steps on one thread: it neither
// hangs nor computes anything else. The parent gives the child 60 s.
TEST(Concurrency, ForkedChildClipsWithoutHanging)
{
    // tensors of up to 2^19 elements: with 2 threads and with the default
    // (more than 2^18 elements), parallel regions run here, in the parent,
    // before the fork
    constexpr int64_t kLarge = int64_t(1) << 19;
    const Fingerprint want = run_job(0, 1, kLarge);
    ASSERT_EQ(want.statuses.front(), GCLIP_STATUS_SUCCESS);
    ASSERT_TRUE(run_job(0, 2, kLarge) == want);
    ASSERT_TRUE(run_job(0, 0, kLarge) == want);

    const pid_t pid = fork();
    ASSERT_GE(pid, 0) << "fork failed";
    if (pid == 0) {
        // the child: no gtest assertion here, only an exit code
        const bool same = run_job(0, 2, kLarge) == want && run_job(0, 0, kLarge) == want;
        _exit(same ? 0 : 3);
    }
    int status = 0;
    pid_t done = 0;
    for (int waited_ms = 0; waited_ms < 60000 && done == 0; waited_ms += 10) {
        done = waitpid(pid, &status, WNOHANG);
        if (done == 0)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (done == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        FAIL() << "the forked child's steps hung for 60 s";
    }
    ASSERT_EQ(done, pid);
    ASSERT_TRUE(WIFEXITED(status)) << "the child ended by signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "3: the child's results differ from the parent's";
}

} // namespace
