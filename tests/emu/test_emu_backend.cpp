// test_emu_backend.cpp - the CUDA backend's host code (host/cuda_backend.c)
// on the emulated runtime (cudart_emu.h): what a step call asks of the
// runtime, and what every runtime failure leaves behind. The emulated
// kernels compute; the checks are against the long-double oracle.
#include "cudart_emu.h"
#include "gclip.h"
#include "gclip_adapt.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

using oracle::ld;

// Seeded float32 gradients in "device" memory, with their pristine copy.
class Grads {
public:
    Grads(const std::vector<int64_t> &sizes, uint64_t seed, double scale = 1.0)
    {
        oracle::Rng rng(seed);
        for (int64_t n : sizes) {
            std::vector<float> h(static_cast<std::size_t>(n));
            oracle::fill_random(h.data(), GCLIP_F32, n, rng, scale);
            void *d = nullptr;
            EXPECT_EQ(cudaMalloc(&d, h.size() * sizeof(float)), cudaSuccess);
            pristine_.push_back(h);
            dev_.push_back(d);
        }
        reset();
    }
    ~Grads()
    {
        for (void *d : dev_)
            cudaFree(d);
    }
    Grads(const Grads &) = delete;
    Grads &operator=(const Grads &) = delete;

    void reset()
    {
        for (std::size_t k = 0; k < dev_.size(); ++k)
            EXPECT_EQ(cudaMemcpy(dev_[k], pristine_[k].data(), pristine_[k].size() * sizeof(float),
                                 cudaMemcpyHostToDevice),
                      cudaSuccess);
    }
    std::vector<gclip_tensor> tensors() const
    {
        std::vector<gclip_tensor> t;
        for (std::size_t k = 0; k < dev_.size(); ++k)
            t.push_back({dev_[k], static_cast<int64_t>(pristine_[k].size()), GCLIP_F32});
        return t;
    }
    std::vector<float> download(std::size_t k) const
    {
        std::vector<float> h(pristine_[k].size());
        EXPECT_EQ(cudaMemcpy(h.data(), dev_[k], h.size() * sizeof(float), cudaMemcpyDeviceToHost),
                  cudaSuccess);
        return h;
    }
    bool untouched() const
    {
        for (std::size_t k = 0; k < dev_.size(); ++k)
            if (std::memcmp(download(k).data(), pristine_[k].data(),
                            pristine_[k].size() * sizeof(float)) != 0)
                return false;
        return true;
    }
    ld norm(double p = 2.0) const
    {
        std::vector<gclip_tensor> t;
        for (const auto &h : pristine_)
            t.push_back({const_cast<float *>(h.data()), static_cast<int64_t>(h.size()), GCLIP_F32});
        return oracle::norms(t.data(), t.size(), p).total;
    }
    // Every element is its pristine value times `factor`, rounded to float.
    bool scaled_by(float factor) const
    {
        for (std::size_t k = 0; k < dev_.size(); ++k) {
            const auto got = download(k);
            for (std::size_t i = 0; i < got.size(); ++i)
                if (got[i] != pristine_[k][i] * factor)
                    return false;
        }
        return true;
    }

private:
    std::vector<std::vector<float>> pristine_;
    std::vector<void *> dev_;
};

const std::vector<int64_t> kSizes = {1, 3, 1000, 4097, 20000, 65536 + 5, 130};

struct Live {
    std::size_t allocations, streams, events;
};

Live live()
{
    return {cudart_emu::live_allocations(), cudart_emu::live_streams(), cudart_emu::live_events()};
}

void expect_same_live(const Live &before, const char *when)
{
    const Live now = live();
    EXPECT_EQ(now.allocations, before.allocations) << "device allocations left " << when;
    EXPECT_EQ(now.streams, before.streams) << "streams left " << when;
    EXPECT_EQ(now.events, before.events) << "events left " << when;
}

int current_device()
{
    int d = -1;
    EXPECT_EQ(cudaGetDevice(&d), cudaSuccess);
    return d;
}

// A global-norm clip on `plan` (which holds `g`'s tensors, pristine) that
// the oracle agrees with: the norm within 1e-6 and every element scaled by
// the factor the slot reports.
void expect_clip_right(gclip_plan *plan, const Grads &g, float max_norm)
{
    gclip_norm_options o = testutil::norm_options(max_norm);
    ASSERT_EQ(gclip_clip_grad_norm(plan, &o, nullptr), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    gclip_result r{};
    ASSERT_EQ(gclip_get_result(plan, &r), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_TRUE(oracle::rel_close(r.total_norm, g.norm(), 1e-6L)) << r.total_norm;
    EXPECT_EQ(r.applied, r.scale != 1.0f);
    EXPECT_TRUE(g.scaled_by(r.scale));
}

class EmuBackend : public ::testing::Test {
protected:
    void SetUp() override
    {
        cudart_emu::reset(2);
        ASSERT_EQ(gclip_cuda_device_count(), 2);
    }
    void TearDown() override { cudart_emu::reset(2); }
};

// Each step call queues its kernels and nothing else: no allocation, copy,
// memset or synchronization, one or two launches, on the plan's device
// while another is current; the results are the oracle's.
TEST_F(EmuBackend, StepCallsOnlyLaunchAndTakeTheCallersDeviceBack)
{
    Grads g(kSizes, 11);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, g.tensors(), 0), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    ASSERT_EQ(cudaSetDevice(1), cudaSuccess); // the caller works on device 1
    cudart_emu::reset(2);
    ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
    const ld exact = g.norm();
    float *tensor_norms = nullptr;
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void **>(&tensor_norms), kSizes.size() * sizeof(float)),
              cudaSuccess);
    const gclip_partial *partial = nullptr;
    ASSERT_EQ(gclip_plan_partial(plan.get(), &partial), GCLIP_STATUS_SUCCESS);

    struct Step {
        const char *name;
        unsigned launches;
        std::function<gclip_status(gclip_norm_options &)> call;
    };
    gclip_plan *p = plan.get();
    const std::vector<Step> steps = {
        {"total_norm", 1, [&](gclip_norm_options &o) { return gclip_total_norm(p, &o, stream); }},
        {"clip_grad_norm", 2, [&](gclip_norm_options &o) { return gclip_clip_grad_norm(p, &o, stream); }},
        {"compute_clip_factor", 1,
         [&](gclip_norm_options &o) { return gclip_compute_clip_factor(p, &o, stream); }},
        {"clip_grads_with_norm", 1,
         [&](gclip_norm_options &o) {
             return gclip_clip_grads_with_norm(p, &o, static_cast<float>(exact), nullptr, stream);
         }},
        {"per_tensor", 2,
         [&](gclip_norm_options &o) {
             o.tensor_norms = tensor_norms;
             return gclip_clip_grad_norm_per_tensor(p, &o, stream);
         }},
        {"clip_value", 1, [&](gclip_norm_options &) { return gclip_clip_grad_value(p, 0.5f, stream); }},
        {"clip_value_f64", 1,
         [&](gclip_norm_options &) { return gclip_clip_grad_value_f64(p, 0.5, stream); }},
        {"accumulate", 1, [&](gclip_norm_options &o) { return gclip_norm_accumulate(p, &o, stream); }},
        {"finalize", 1,
         [&](gclip_norm_options &o) { return gclip_norm_finalize(p, &o, partial, 1, stream); }},
        {"apply", 1, [&](gclip_norm_options &) { return gclip_apply_clip_factor(p, stream); }},
    };
    for (const Step &s : steps) {
        SCOPED_TRACE(s.name);
        gclip_norm_options o = testutil::norm_options(static_cast<float>(exact) * 0.5f);
        const unsigned launches = cudart_emu::launches();
        const unsigned blocking = cudart_emu::blocking_calls();
        ASSERT_EQ(s.call(o), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        EXPECT_EQ(cudart_emu::blocking_calls(), blocking) << "a step call allocated, copied or waited";
        EXPECT_EQ(cudart_emu::launches() - launches, s.launches);
        EXPECT_EQ(current_device(), 1) << "the caller's device was not given back";
        EXPECT_EQ(cudart_emu::wrong_device_uses(), 0u) << cudart_emu::first_wrong_device_use();
    }
    EXPECT_EQ(cudart_emu::calls("cudaMemcpyAsync"), 0u);
    EXPECT_EQ(cudart_emu::calls("cudaMemsetAsync"), 0u);

    // the results, against the oracle; get_result waits for the plan's last
    // operation by its event, and for nothing else but its own copy
    g.reset();
    gclip_norm_options o = testutil::norm_options(static_cast<float>(exact) * 0.5f);
    ASSERT_EQ(gclip_clip_grad_norm(p, &o, stream), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    const unsigned event_waits = cudart_emu::calls("cudaEventSynchronize");
    gclip_result r{};
    ASSERT_EQ(gclip_get_result(p, &r), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_EQ(cudart_emu::calls("cudaEventSynchronize"), event_waits + 1);
    EXPECT_EQ(cudart_emu::calls("cudaDeviceSynchronize"), 0u);
    EXPECT_TRUE(oracle::rel_close(r.total_norm, exact, 1e-6L)) << r.total_norm << " vs " << (double)exact;
    EXPECT_EQ(r.applied, 1);
    EXPECT_LT(r.scale, 0.51f);
    EXPECT_GT(r.scale, 0.49f);
    EXPECT_TRUE(g.scaled_by(r.scale));
    EXPECT_EQ(current_device(), 1);

    EXPECT_EQ(cudaSetDevice(0), cudaSuccess);
    EXPECT_EQ(cudaFree(tensor_norms), cudaSuccess);
    EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

// Plan creation, with each of its runtime calls failing in turn (every call
// site of every function the backend uses at creation): the status names
// the failure, no plan is returned, nothing is left allocated, the caller's
// device and last error are as they were; then creation succeeds.
TEST_F(EmuBackend, EveryRuntimeFailureInPlanCreationIsReportedAndLeavesNothing)
{
    Grads g(kSizes, 12);
    const auto tensors = g.tensors();
    const char *functions[] = {"cudaGetDeviceCount",     "cudaGetDevice",
                               "cudaSetDevice",          "cudaStreamCreateWithFlags",
                               "cudaEventCreateWithFlags", "cudaMalloc",
                               "cudaDeviceGetAttribute", "cudaMemcpyAsync",
                               "cudaMemsetAsync",        "cudaStreamSynchronize"};
    int failures = 0;
    for (const char *fn : functions) {
        for (unsigned nth = 1;; ++nth) {
            SCOPED_TRACE(std::string(fn) + " call " + std::to_string(nth));
            ASSERT_LT(nth, 20u);
            cudart_emu::reset(2);
            ASSERT_EQ(cudaSetDevice(1), cudaSuccess); // the plan goes on device 0
            const Live before = live();
            const cudaError_t err = std::strcmp(fn, "cudaMalloc") == 0 ? cudaErrorMemoryAllocation
                                                                       : cudaErrorLaunchFailure;
            cudart_emu::fail_call(fn, nth, err);
            const unsigned calls_before = cudart_emu::calls(fn);
            gclip_plan *plan = reinterpret_cast<gclip_plan *>(&failures); // must be overwritten
            const gclip_status st = gclip_plan_create(&plan, tensors.data(), tensors.size(), 0);
            const bool reached = cudart_emu::calls(fn) - calls_before >= nth;
            if (reached && st == GCLIP_STATUS_SUCCESS && std::strcmp(fn, "cudaSetDevice") == 0 &&
                nth == 2) {
                // the call that gives the caller's device back, which was
                // current a moment before: its failure is not reported
                EXPECT_EQ(gclip_plan_destroy(plan), GCLIP_STATUS_SUCCESS);
                (void)cudaGetLastError();
                continue;
            }
            if (!reached) { // the fault was never reached
                ASSERT_EQ(st, GCLIP_STATUS_SUCCESS) << gclip_last_error();
                EXPECT_EQ(gclip_plan_destroy(plan), GCLIP_STATUS_SUCCESS);
                EXPECT_GT(nth, 1u) << fn << " is never called at plan creation";
                break;
            }
            ++failures;
            const std::string msg = gclip_last_error();
            EXPECT_EQ(plan, nullptr);
            if (std::strcmp(fn, "cudaGetDeviceCount") == 0) {
                EXPECT_EQ(st, GCLIP_STATUS_NO_DEVICE) << msg;
            } else if (err == cudaErrorMemoryAllocation) {
                EXPECT_EQ(st, GCLIP_STATUS_OUT_OF_MEMORY) << msg;
            } else {
                EXPECT_EQ(st, GCLIP_STATUS_CUDA_ERROR) << msg;
            }
            if (std::strcmp(fn, "cudaGetDeviceCount") != 0) {
                EXPECT_NE(msg.find(fn), std::string::npos) << "the message does not name " << fn
                                                           << ": " << msg;
                EXPECT_NE(msg.find(cudaGetErrorName(err)), std::string::npos) << msg;
            }
            expect_same_live(before, "by a failed plan creation");
            EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess)
                << "the failure the status reports is left in the runtime's last error";
            if (std::strcmp(fn, "cudaGetDevice") != 0) { // nothing to give back then
                EXPECT_EQ(current_device(), 1);
            }
        }
    }
    EXPECT_GE(failures, 12);
    RecordProperty("failures", failures);
}

// Devices: none, one out of range, and a plan on device 1 used while device
// 0 is current.
TEST_F(EmuBackend, NoDeviceAndAPlanOnTheOtherDevice)
{
    Grads g(kSizes, 13);
    const auto tensors = g.tensors();
    cudart_emu::reset(0);
    EXPECT_EQ(gclip_cuda_device_count(), 0);
    testutil::PlanPtr plan;
    EXPECT_EQ(testutil::make_plan(plan, tensors, 0), GCLIP_STATUS_NO_DEVICE);
    EXPECT_EQ(plan, nullptr);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "the device query's error was left behind";

    cudart_emu::reset(2);
    EXPECT_EQ(testutil::make_plan(plan, tensors, 2), GCLIP_STATUS_NO_DEVICE);
    EXPECT_NE(std::string(gclip_last_error()).find("does not exist"), std::string::npos)
        << gclip_last_error();

    // the data was allocated on device 0; the plan and its work on device 1
    ASSERT_EQ(testutil::make_plan(plan, tensors, 1), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_EQ(current_device(), 0);
    int dev = -1;
    EXPECT_EQ(gclip_plan_device(plan.get(), &dev), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(dev, 1);
    const float max_norm = static_cast<float>(g.norm()) * 0.25f;
    expect_clip_right(plan.get(), g, max_norm);
    EXPECT_EQ(current_device(), 0);
    EXPECT_EQ(cudart_emu::wrong_device_uses(), 0u) << cudart_emu::first_wrong_device_use();

    // a stream of device 0 given to the plan of device 1: the rebind is refused
    // before it queues anything, the launch of a step fails
    cudaStream_t s0 = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking), cudaSuccess);
    std::vector<void *> data;
    for (const auto &t : tensors)
        data.push_back(t.data);
    EXPECT_EQ(gclip_plan_rebind(plan.get(), data.data(), data.size(), s0),
              GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_last_error()).find("device 0"), std::string::npos)
        << gclip_last_error();
    g.reset();
    gclip_norm_options o = testutil::norm_options(max_norm);
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, s0), GCLIP_STATUS_CUDA_ERROR);
    EXPECT_TRUE(g.untouched());
    EXPECT_EQ(current_device(), 0);
    EXPECT_EQ(cudaStreamDestroy(s0), cudaSuccess);
}

// A launch that fails: the first of an operation queues nothing and leaves
// the slot as it was; the second leaves the norm in a slot marked failed,
// which get_result reports; no gradient changes either way, the runtime's
// last error is not left to the caller, and the next step is right.
TEST_F(EmuBackend, AFailedLaunchWritesNoGradientAndIsReported)
{
    Grads g(kSizes, 14);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, g.tensors(), 0), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    const ld exact = g.norm();
    gclip_norm_options o = testutil::norm_options(static_cast<float>(exact) * 0.5f);
    ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    gclip_result before{};
    ASSERT_EQ(gclip_get_result(plan.get(), &before), GCLIP_STATUS_SUCCESS);

    unsigned records = cudart_emu::calls("cudaEventRecordWithFlags");
    cudart_emu::fail_launch(1, cudaErrorLaunchOutOfResources);
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_CUDA_ERROR);
    EXPECT_EQ(cudart_emu::calls("cudaEventRecordWithFlags"), records)
        << "nothing was queued, yet the plan's event was recorded";
    std::string msg = gclip_last_error();
    EXPECT_NE(msg.find("norm kernel"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cudaErrorLaunchOutOfResources"), std::string::npos) << msg;
    EXPECT_NE(msg.find("nothing was queued"), std::string::npos) << msg;
    EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);
    gclip_result after{};
    ASSERT_EQ(gclip_get_result(plan.get(), &after), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_EQ(std::memcmp(&after, &before, sizeof after), 0) << "the slot changed";
    EXPECT_TRUE(g.untouched());

    records = cudart_emu::calls("cudaEventRecordWithFlags");
    cudart_emu::fail_launch(2, cudaErrorLaunchOutOfResources);
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_CUDA_ERROR);
    EXPECT_EQ(cudart_emu::calls("cudaEventRecordWithFlags"), records + 1)
        << "the norm kernel was queued: the plan's event must follow it";
    msg = gclip_last_error();
    EXPECT_NE(msg.find("scale kernel"), std::string::npos) << msg;
    EXPECT_NE(msg.find("marked failed"), std::string::npos) << msg;
    EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);
    EXPECT_TRUE(g.untouched());
    gclip_result failed{};
    EXPECT_EQ(gclip_get_result(plan.get(), &failed), GCLIP_STATUS_CUDA_ERROR);
    EXPECT_NE(std::string(gclip_last_error()).find("no gradient was written"), std::string::npos)
        << gclip_last_error();
    EXPECT_TRUE(oracle::rel_close(failed.total_norm, exact, 1e-6L));
    EXPECT_EQ(failed.sequence, before.sequence + 1);

    // the record of the plan's event after queued launches fails: reported
    cudart_emu::fail_call("cudaEventRecordWithFlags", 1, cudaErrorLaunchFailure);
    EXPECT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_CUDA_ERROR);
    EXPECT_NE(std::string(gclip_last_error()).find("cudaEventRecordWithFlags"), std::string::npos)
        << gclip_last_error();

    // a failed second launch, then a failed record (as a launch that fails
    // in a capture leaves it): the launch's status and message are kept
    for (cudaError_t err : {cudaErrorLaunchOutOfResources, cudaErrorMemoryAllocation}) {
        cudart_emu::fail_launch(2, err);
        cudart_emu::fail_call("cudaEventRecordWithFlags", 1, cudaErrorLaunchFailure);
        EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr),
                  err == cudaErrorMemoryAllocation ? GCLIP_STATUS_OUT_OF_MEMORY
                                                   : GCLIP_STATUS_CUDA_ERROR);
        msg = gclip_last_error();
        EXPECT_NE(msg.find("scale kernel"), std::string::npos) << msg;
        EXPECT_NE(msg.find(cudaGetErrorName(err)), std::string::npos) << msg;
        EXPECT_EQ(msg.find("cudaEventRecordWithFlags"), std::string::npos) << msg;
        EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);
        EXPECT_TRUE(g.untouched());
    }

    expect_clip_right(plan.get(), g, o.max_norm);
}

// AGC's first launch writes the unit norms only; its scaling launch writes
// the slot. Should that launch fail, no gradient is written and the slot is
// the previous operation's, unchanged: not marked failed (a clip that did
// scale the gradients would then read as failed and not applied).
TEST_F(EmuBackend, AFailedAgcScalingLaunchLeavesThePreviousSlot)
{
    Grads g(kSizes, 18);
    Grads w(kSizes, 19);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, g.tensors(), 0), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    gclip_agc_options ao = GCLIP_AGC_OPTIONS_INIT;
    const std::vector<int64_t> units(kSizes.size(), 1);
    gclip_agc *agc = nullptr;
    ASSERT_EQ(gclip_agc_create(&agc, plan.get(), w.tensors().data(), units.data(), &ao),
              GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    const ld exact = g.norm();
    gclip_norm_options o = testutil::norm_options(static_cast<float>(exact) * 0.5f);
    for (int applies : {1, 0}) {
        SCOPED_TRACE(applies ? "after a clip" : "after a factor computed");
        g.reset();
        ASSERT_EQ(applies ? gclip_clip_grad_norm(plan.get(), &o, nullptr)
                          : gclip_compute_clip_factor(plan.get(), &o, nullptr),
                  GCLIP_STATUS_SUCCESS);
        gclip_result before{};
        ASSERT_EQ(gclip_get_result(plan.get(), &before), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(before.applied, applies);
        const auto download_all = [&] {
            std::vector<std::vector<float>> v;
            for (std::size_t k = 0; k < kSizes.size(); ++k)
                v.push_back(g.download(k));
            return v;
        };
        const std::vector<std::vector<float>> data = download_all();
        cudart_emu::fail_launch(2, cudaErrorLaunchOutOfResources);
        EXPECT_EQ(gclip_agc_step(agc, nullptr), GCLIP_STATUS_CUDA_ERROR);
        const std::string msg = gclip_last_error();
        EXPECT_NE(msg.find("AGC scale kernel"), std::string::npos) << msg;
        EXPECT_NE(msg.find("result slot is unchanged"), std::string::npos) << msg;
        EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);
        EXPECT_TRUE(download_all() == data) << "a gradient was written";
        gclip_result after{};
        EXPECT_EQ(gclip_get_result(plan.get(), &after), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        EXPECT_EQ(std::memcmp(&after, &before, sizeof after), 0) << "the slot changed";
    }
    // the next AGC step runs and writes its own slot
    ASSERT_EQ(gclip_agc_step(agc, nullptr), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    gclip_result r{};
    EXPECT_EQ(gclip_get_result(plan.get(), &r), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_EQ(r.op, GCLIP_OP_AGC);
    EXPECT_EQ(r.applied, 1);
    EXPECT_EQ(gclip_agc_destroy(agc), GCLIP_STATUS_SUCCESS);
}

// A rebind whose copy or whose event record fails: the call reports it and
// the plan goes on with the old pointers, on the host and on the device
// (the next step clips the old tensors and leaves the new ones alone).
TEST_F(EmuBackend, AFailedRebindLeavesTheOldPointersEverywhere)
{
    Grads g(kSizes, 16);
    Grads h(kSizes, 17);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, g.tensors(), 0), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    std::vector<void *> fresh;
    for (const auto &t : h.tensors())
        fresh.push_back(t.data);
    for (const char *fn : {"cudaMemcpyAsync", "cudaEventRecordWithFlags", "cudaStreamWaitEvent"}) {
        SCOPED_TRACE(fn);
        g.reset();
        cudart_emu::fail_call(fn, 1, cudaErrorLaunchFailure);
        EXPECT_EQ(gclip_plan_rebind(plan.get(), fresh.data(), fresh.size(), nullptr),
                  GCLIP_STATUS_CUDA_ERROR);
        EXPECT_NE(std::string(gclip_last_error()).find(fn), std::string::npos)
            << gclip_last_error();
        expect_clip_right(plan.get(), g, static_cast<float>(g.norm()) * 0.5f);
        EXPECT_TRUE(h.untouched()) << "the step clipped the tensors of the failed rebind";
    }
    // and a rebind that succeeds moves the plan to the new tensors
    g.reset();
    ASSERT_EQ(gclip_plan_rebind(plan.get(), fresh.data(), fresh.size(), nullptr),
              GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    expect_clip_right(plan.get(), h, static_cast<float>(h.norm()) * 0.5f);
    EXPECT_TRUE(g.untouched());
}

// An adaptive clipper on a CUDA plan: its state's allocation and
// upload failing is reported, leaves nothing allocated, and the plan works.
TEST_F(EmuBackend, AdaptiveStateFailuresLeaveNothing)
{
    Grads g(kSizes, 15);
    testutil::PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, g.tensors(), 0), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    const gclip_adaptive_options opts = gclip_adaptive_options_default();
    for (const char *fn : {"cudaMalloc", "cudaMemcpyAsync", "cudaStreamSynchronize"}) {
        SCOPED_TRACE(fn);
        cudart_emu::reset(2);
        ASSERT_EQ(cudaSetDevice(1), cudaSuccess); // the plan is on device 0
        const Live before = live();
        cudart_emu::fail_call(fn, 1, std::strcmp(fn, "cudaMalloc") == 0 ? cudaErrorMemoryAllocation
                                                                        : cudaErrorLaunchFailure);
        gclip_adaptive *ad = nullptr;
        const gclip_status st = gclip_adaptive_create(&ad, plan.get(), &opts);
        ASSERT_EQ(cudart_emu::calls(fn), 1u) << fn << " is not called by gclip_adaptive_create";
        EXPECT_EQ(st, std::strcmp(fn, "cudaMalloc") == 0 ? GCLIP_STATUS_OUT_OF_MEMORY
                                                         : GCLIP_STATUS_CUDA_ERROR)
            << gclip_last_error();
        EXPECT_EQ(ad, nullptr);
        expect_same_live(before, "by a failed gclip_adaptive_create");
        EXPECT_EQ(current_device(), 1) << "the caller's device was not given back";
    }
    cudart_emu::reset(2);
    ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
    const Live before = live();
    gclip_adaptive *ad = nullptr;
    ASSERT_EQ(gclip_adaptive_create(&ad, plan.get(), &opts), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    EXPECT_EQ(current_device(), 1) << "the caller's device was not given back";
    const unsigned blocking = cudart_emu::blocking_calls();
    ASSERT_EQ(gclip_adaptive_step(ad, nullptr, nullptr), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_EQ(cudart_emu::blocking_calls(), blocking) << "an adaptive step allocated or waited";
    gclip_adaptive_info info{};
    ASSERT_EQ(gclip_adaptive_get_info(ad, &info), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_TRUE(oracle::rel_close(info.total_norm, g.norm(), 1e-6L)) << info.total_norm;
    EXPECT_EQ(info.steps, 1u);
    EXPECT_EQ(gclip_adaptive_destroy(ad), GCLIP_STATUS_SUCCESS);
    expect_same_live(before, "by gclip_adaptive_destroy");
    EXPECT_EQ(current_device(), 1) << "the caller's device was not given back";
    EXPECT_EQ(cudart_emu::wrong_device_uses(), 0u) << cudart_emu::first_wrong_device_use();
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);

    // the plan's own results are the oracle's after all that
    g.reset();
    expect_clip_right(plan.get(), g, 1e30f);
    EXPECT_TRUE(g.untouched());
}

} // namespace
