// Fault injection: every host allocation of gclip_plan_create is made to fail
// in turn through the allocation hook. Each failure must return
// GCLIP_STATUS_OUT_OF_MEMORY, set *plan to NULL, leak nothing (checked by
// LeakSanitizer in the asan preset and by valgrind, tests/robust/valgrind.sh)
// and leave every gradient bit-identical.
#include "gclip_internal.h"
#include "robust_util.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace {

using robust::Spec;

// Hook state. The hook is process-global and not thread-safe, which is fine:
// these tests run one at a time.
struct HookState {
    std::size_t fail_at = 0;   // index of the allocation to fail
    bool fail_rest = false;    // also fail every later allocation
    std::size_t calls = 0;     // allocations requested while installed
    std::size_t injected = 0;  // allocations made to fail
};
HookState g_hook;
std::size_t g_total_injected = 0;

int failing_hook(std::size_t index, std::size_t)
{
    ++g_hook.calls;
    const bool fail = index == g_hook.fail_at || (g_hook.fail_rest && index > g_hook.fail_at);
    if (fail)
        ++g_hook.injected;
    return fail;
}

// Removes the hook even when an assertion returns early.
struct HookGuard {
    HookGuard(std::size_t fail_at, bool fail_rest)
    {
        g_hook = HookState{};
        g_hook.fail_at = fail_at;
        g_hook.fail_rest = fail_rest;
        gclip_set_alloc_hook(failing_hook);
    }
    ~HookGuard() { gclip_set_alloc_hook(nullptr); }
};

// Fails allocation 0, 1, 2, ... of plan creation until a creation runs
// without reaching the failing index. Returns the number of faults injected.
// `expected_final` is the status of the creation once no fault is hit.
std::size_t sweep(const std::vector<gclip_tensor> &t, std::size_t count_arg, int device,
                  bool fail_rest, gclip_status expected_final)
{
    const uint64_t before = oracle::checksum(t.data(), t.size());
    const gclip_tensor *list = t.empty() ? nullptr : t.data();
    std::size_t injected = 0;
    for (std::size_t k = 0;; ++k) {
        gclip_status s;
        gclip_plan *plan = reinterpret_cast<gclip_plan *>(&injected); // must be overwritten
        std::size_t fired;
        {
            HookGuard guard(k, fail_rest);
            s = gclip_plan_create(&plan, list, count_arg, device);
            fired = g_hook.injected;
        }
        injected += fired;
        EXPECT_EQ(oracle::checksum(t.data(), t.size()), before) << "fault at allocation " << k;
        if (fired == 0) { // every allocation succeeded: the sweep is complete
            EXPECT_EQ(s, expected_final) << gclip_last_error();
            if (s == GCLIP_STATUS_SUCCESS)
                EXPECT_NE(plan, nullptr);
            else
                EXPECT_EQ(plan, nullptr);
            gclip_plan_destroy(s == GCLIP_STATUS_SUCCESS ? plan : nullptr);
            EXPECT_GE(k, 1u) << "plan creation made no allocation at all";
            break;
        }
        // A validation error found before the failing allocation is also a
        // correct answer; anything else must be OUT_OF_MEMORY.
        if (s != expected_final)
            EXPECT_EQ(s, GCLIP_STATUS_OUT_OF_MEMORY) << "fault at allocation " << k;
        EXPECT_NE(s, GCLIP_STATUS_SUCCESS) << "fault at allocation " << k;
        EXPECT_EQ(plan, nullptr) << "fault at allocation " << k;
        EXPECT_STRNE(gclip_last_error(), "") << "fault at allocation " << k;
        if (::testing::Test::HasFailure())
            break;
    }
    return injected;
}

void report(const char *what, std::size_t injected)
{
    g_total_injected += injected;
    ::testing::Test::RecordProperty("faults_injected", static_cast<int>(injected));
    std::printf("[ faults   ] %s: %zu allocation failures injected\n", what, injected);
}

// Clip with the plan built after the sweep, checked against the oracle, so
// the sweep is known to end on a plan that works.
void check_plan_works(std::vector<oracle::TestBuffer> &bufs)
{
    const auto t = oracle::tensors_of(bufs);
    robust::Plan plan;
    ASSERT_EQ(gclip_plan_create(plan.out(), t.empty() ? nullptr : t.data(), t.size(),
                                GCLIP_DEVICE_CPU),
              GCLIP_STATUS_SUCCESS);
    const oracle::Norms want = oracle::norms(bufs, 2.0);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.5f;
    ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    gclip_result r;
    ASSERT_EQ(gclip_get_result(plan.get(), &r), GCLIP_STATUS_SUCCESS);
    EXPECT_TRUE(oracle::rel_close(r.total_norm, want.total, 1e-6L))
        << r.total_norm << " vs " << static_cast<double>(want.total);
}

struct Case {
    const char *name;
    std::vector<Spec> specs;
};

std::vector<Case> cases()
{
    return {
        {"one f32 tensor", {{5, GCLIP_F32, 0}}},
        {"mixed dtypes and odd offsets",
         {{0, GCLIP_F32, 0}, {1, GCLIP_F16, 1}, {7, GCLIP_BF16, 3}, {65537, GCLIP_F32, 1},
          {3, GCLIP_F16, 0}}},
        {"multi-chunk tensor", {{200000, GCLIP_BF16, 1}, {65536, GCLIP_F32, 0}}},
        {"10000 tensors", robust::random_specs(10000, 40, 11)},
    };
}

TEST(FaultInjection, EmptyPlans)
{
    std::vector<gclip_tensor> none;
    std::size_t n = sweep(none, 0, GCLIP_DEVICE_CPU, false, GCLIP_STATUS_SUCCESS);
    gclip_tensor one{nullptr, 0, GCLIP_F32}; // a non-NULL list with count 0
    std::vector<gclip_tensor> list{one};
    n += sweep(list, 0, GCLIP_DEVICE_CPU, false, GCLIP_STATUS_SUCCESS);
    EXPECT_GT(n, 0u);
    report("count 0", n);
}

TEST(FaultInjection, EachAllocationFailsInTurn)
{
    std::size_t total = 0;
    for (const Case &c : cases()) {
        SCOPED_TRACE(c.name);
        auto bufs = robust::make_buffers(c.specs, 1234);
        const auto t = oracle::tensors_of(bufs);
        const std::size_t n = sweep(t, t.size(), GCLIP_DEVICE_CPU, false, GCLIP_STATUS_SUCCESS);
        EXPECT_GE(n, 3u) << "expected several allocation points";
        total += n;
        check_plan_works(bufs);
    }
    report("one allocation failing", total);
}

// Allocation k and every later one fail: the cleanup runs with several
// members missing at once.
TEST(FaultInjection, AllLaterAllocationsFail)
{
    std::size_t total = 0;
    for (const Case &c : cases()) {
        SCOPED_TRACE(c.name);
        auto bufs = robust::make_buffers(c.specs, 99);
        const auto t = oracle::tensors_of(bufs);
        total += sweep(t, t.size(), GCLIP_DEVICE_CPU, true, GCLIP_STATUS_SUCCESS);
    }
    report("every allocation from k on failing", total);
}

// Lists that are rejected after some allocations were made (overlap found
// after the tables exist, a CUDA device in a build without CUDA): faults and
// rejections interleave, and neither may leak.
TEST(FaultInjection, RejectedListsUnderFaults)
{
    auto bufs = robust::make_buffers({{64, GCLIP_F32, 0}, {9, GCLIP_F16, 1}}, 5);
    std::vector<gclip_tensor> t = oracle::tensors_of(bufs);
    t.push_back(t[0]); // the same tensor twice
    std::size_t n = sweep(t, t.size(), GCLIP_DEVICE_CPU, false, GCLIP_STATUS_OVERLAP);
    if (gclip_cuda_device_count() == 0) {
        const auto ok = oracle::tensors_of(bufs);
        gclip_plan *p = nullptr;
        const gclip_status want = gclip_plan_create(&p, ok.data(), ok.size(), 0);
        ASSERT_NE(want, GCLIP_STATUS_SUCCESS);
        n += sweep(ok, ok.size(), 0, false, want);
    }
    report("rejected lists", n);
}

// Step calls and rebinding allocate nothing: with every allocation failing
// they still succeed and the hook is never called.
TEST(FaultInjection, StepCallsAllocateNothing)
{
    auto bufs = robust::make_buffers({{70000, GCLIP_F32, 1}, {33, GCLIP_BF16, 0}}, 8);
    auto other = robust::make_buffers({{70000, GCLIP_F32, 0}, {33, GCLIP_BF16, 1}}, 9);
    const auto t = oracle::tensors_of(bufs);
    robust::Plan plan;
    ASSERT_EQ(gclip_plan_create(plan.out(), t.data(), t.size(), GCLIP_DEVICE_CPU),
              GCLIP_STATUS_SUCCESS);
    HookGuard guard(0, true);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.1f;
    float norms[2];
    o.tensor_norms = norms;
    gclip_result r;
    EXPECT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_clip_grad_value(plan.get(), 0.01f, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_clip_grad_value_f64(plan.get(), 0.01, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_get_result(plan.get(), &r), GCLIP_STATUS_SUCCESS);
    void *data[2] = {other[0].data(), other[1].data()};
    EXPECT_EQ(gclip_plan_rebind(plan.get(), data, 2, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(g_hook.calls, 0u);
}

// Prints the suite's total for docs/robustness.md.
class TotalReporter : public ::testing::Environment {
public:
    void TearDown() override
    {
        std::printf("[ faults   ] total: %zu allocation failures injected\n", g_total_injected);
    }
};
const auto *const g_reporter = ::testing::AddGlobalTestEnvironment(new TotalReporter);

} // namespace
