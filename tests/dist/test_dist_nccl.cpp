// The NCCL transport on CUDA devices. A one-rank communicator runs on one
// device; the multi-rank tests use one device and one host thread per rank
// (the step calls enqueue kernels between collectives, so one thread cannot
// drive several ranks inside ncclGroupStart/End). Each test skips, saying
// why, when the machine has too few devices.
//
// The reference is the same as the MPI suite's: the long-double norm of the
// global set and the single-process CPU plan, within 1e-6; clipped elements
// must be exactly pristine * the factor every rank reports.
#include "dist_world.hpp"
#include "plan_util.hpp"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using distw::Layout;
using distw::Rank;

namespace {

#define EXPECT_CUDA(call)                                                          \
    do {                                                                           \
        const cudaError_t e_ = (call);                                             \
        EXPECT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorString(e_);     \
    } while (0)

struct DistPlanDeleter {
    void operator()(gclip_dist_plan *p) const { gclip_dist_plan_destroy(p); }
};
using DistPlanPtr = std::unique_ptr<gclip_dist_plan, DistPlanDeleter>;

// A rank's tensors in the memory of `device`, mirrored from Rank::local.
struct DeviceCopy {
    int device = 0;
    std::vector<void *> data;

    DeviceCopy(Rank &w, int dev) : device(dev)
    {
        cudaSetDevice(device);
        for (auto &b : w.local) {
            void *p = nullptr;
            if (b.bytes())
                EXPECT_CUDA(cudaMalloc(&p, b.bytes()));
            data.push_back(p);
        }
        for (size_t k = 0; k < w.entries.size(); ++k)
            w.entries[k].tensor.data = data[k];
        upload(w, nullptr);
    }
    ~DeviceCopy()
    {
        cudaSetDevice(device);
        for (void *p : data)
            cudaFree(p);
    }
    DeviceCopy(const DeviceCopy &) = delete;
    DeviceCopy &operator=(const DeviceCopy &) = delete;

    // pristine values to the device, in `stream` order
    void upload(const Rank &w, cudaStream_t stream)
    {
        for (size_t k = 0; k < data.size(); ++k)
            if (data[k])
                EXPECT_CUDA(cudaMemcpyAsync(data[k], w.pristine[k].data(), w.pristine[k].bytes(),
                                            cudaMemcpyHostToDevice, stream));
        EXPECT_CUDA(cudaStreamSynchronize(stream));
    }
    // the device values into Rank::local, for distw::misclipped
    void download(Rank &w)
    {
        cudaSetDevice(device);
        for (size_t k = 0; k < data.size(); ++k)
            if (data[k])
                EXPECT_CUDA(cudaMemcpy(w.local[k].data(), data[k], w.local[k].bytes(),
                                       cudaMemcpyDeviceToHost));
    }
};

gclip_norm_options options(float max_norm, float p, float inv_scale = 1.0f)
{
    gclip_norm_options o = testutil::norm_options(max_norm, p);
    o.inv_scale = inv_scale;
    return o;
}

uint64_t result_bits(const gclip_result &r)
{
    return (uint64_t(distw::bits(r.total_norm)) << 32) ^ distw::bits(r.scale) ^
           (uint64_t(distw::bits(r.clip_coef)) << 16);
}

class NcclTest : public ::testing::Test {
protected:
    // Skip unless `n` devices exist.
    bool need(int n)
    {
        const int have = gclip_cuda_device_count();
        if (have >= n)
            return true;
        skip_reason_ = "needs " + std::to_string(n) + " CUDA device(s), this machine has " +
                       std::to_string(have) + " (gclip_cuda_device_count)";
        return false;
    }
    std::string skip_reason_;
};

// One rank's whole step on its own device and thread.
struct RankRun {
    Rank w;
    gclip_status created = GCLIP_STATUS_INTERNAL_ERROR, step = GCLIP_STATUS_INTERNAL_ERROR,
                 result = GCLIP_STATUS_INTERNAL_ERROR;
    gclip_result r{};
    int64_t misclipped = -1;
};

void run_rank(RankRun &run, ncclComm_t comm, int device, const gclip_norm_options &o)
{
    cudaSetDevice(device);
    DeviceCopy dev(run.w, device);
    cudaStream_t stream = nullptr;
    EXPECT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    gclip_dist_plan *p = nullptr;
    run.created = gclip_dist_plan_create_nccl(&p, run.w.entries.data(), run.w.entries.size(),
                                              device, &comm, 1);
    DistPlanPtr plan(p);
    run.step = gclip_dist_clip_grad_norm(plan.get(), &o, stream);
    run.result = gclip_dist_get_result(plan.get(), &run.r);
    dev.download(run.w);
    run.misclipped = distw::misclipped(run.w, distw::expected_factor(run.r, o));
    plan.reset();
    cudaStreamDestroy(stream);
}

TEST_F(NcclTest, OneRankCommunicatorMatchesTheSingleProcessPlan)
{
    if (!need(1))
        GTEST_SKIP() << skip_reason_;
    int dev0 = 0;
    ncclComm_t comm = nullptr;
    ASSERT_EQ(ncclCommInitAll(&comm, 1, &dev0), ncclSuccess);
    const distw::Global global = distw::make_global(2000);
    for (float p : {2.0f, 1.0f, INFINITY, 3.0f}) {
        SCOPED_TRACE(testing::Message() << "p " << p);
        RankRun run{distw::make_rank(global, Layout{0, 1, 1, false})};
        const gclip_norm_options o = options(0.05f, p, 0.5f);
        run_rank(run, comm, 0, o);
        EXPECT_EQ(run.created, GCLIP_STATUS_SUCCESS) << gclip_dist_last_error();
        EXPECT_EQ(run.step, GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(run.result, GCLIP_STATUS_SUCCESS);
        const auto want = distw::reference_norm(run.w, p, 0.5);
        EXPECT_TRUE(oracle::rel_close(run.r.total_norm, want.total, 1e-6L));
        EXPECT_TRUE(oracle::rel_close(run.r.total_norm,
                                      distw::single_process_result(run.w, o).total_norm, 1e-6L));
        EXPECT_LT(run.r.clip_coef, 1.0f); // clipped (scale also holds inv_scale)
        EXPECT_EQ(distw::bits(run.r.scale), distw::bits(distw::expected_factor(run.r, o)));
        EXPECT_EQ(run.misclipped, 0);
        // a second run gives the same bits
        RankRun again{distw::make_rank(global, Layout{0, 1, 1, false})};
        run_rank(again, comm, 0, o);
        EXPECT_EQ(result_bits(again.r), result_bits(run.r));
    }
    ncclCommDestroy(comm);
}

TEST_F(NcclTest, TheStepIsCapturedInAGraphAndEachReplayMatchesTheEagerStep)
{
    if (!need(1))
        GTEST_SKIP() << skip_reason_;
    int dev0 = 0;
    ncclComm_t comm = nullptr;
    ASSERT_EQ(ncclCommInitAll(&comm, 1, &dev0), ncclSuccess);
    cudaSetDevice(0);
    Rank w = distw::make_rank(2001, Layout{0, 1, 1, true});
    DeviceCopy dev(w, 0);
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    gclip_dist_plan *p = nullptr;
    const ncclComm_t comms[2] = {comm, comm};
    ASSERT_EQ(gclip_dist_plan_create_nccl(&p, w.entries.data(), w.entries.size(), 0, comms, 2),
              GCLIP_STATUS_SUCCESS)
        << gclip_dist_last_error();
    DistPlanPtr plan(p);
    const gclip_norm_options o = options(0.05f, 2.0f);

    ASSERT_EQ(gclip_dist_clip_grad_norm(plan.get(), &o, stream), GCLIP_STATUS_SUCCESS);
    gclip_result eager{};
    ASSERT_EQ(gclip_dist_get_result(plan.get(), &eager), GCLIP_STATUS_SUCCESS);

    // a step that synchronized the host or allocated would fail the capture
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const gclip_status captured = gclip_dist_clip_grad_norm(plan.get(), &o, stream);
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    ASSERT_EQ(captured, GCLIP_STATUS_SUCCESS) << gclip_dist_last_error();
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    for (int replay = 0; replay < 3; ++replay) {
        dev.upload(w, stream);
        ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
        gclip_result r{};
        ASSERT_EQ(gclip_dist_get_result(plan.get(), &r), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(result_bits(r), result_bits(eager)) << "replay " << replay;
        dev.download(w);
        EXPECT_LT(r.scale, 1.0f);
        EXPECT_EQ(distw::bits(r.scale), distw::bits(distw::expected_factor(r, o)));
        EXPECT_EQ(distw::misclipped(w, distw::expected_factor(r, o)), 0);
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    plan.reset();
    cudaStreamDestroy(stream);
    ncclCommDestroy(comm);
}

TEST_F(NcclTest, NonFiniteSkipsAndRejectedOptionsStillJoinTheCollective)
{
    if (!need(1))
        GTEST_SKIP() << skip_reason_;
    int dev0 = 0;
    ncclComm_t comm = nullptr;
    ASSERT_EQ(ncclCommInitAll(&comm, 1, &dev0), ncclSuccess);
    cudaSetDevice(0);
    Rank w = distw::make_rank(2002, Layout{0, 1, 1, false});
    w.pristine[1].set(7, NAN);
    DeviceCopy dev(w, 0);
    gclip_dist_plan *p = nullptr;
    ASSERT_EQ(gclip_dist_plan_create_nccl(&p, w.entries.data(), w.entries.size(), 0, &comm, 1),
              GCLIP_STATUS_SUCCESS);
    DistPlanPtr plan(p);
    gclip_norm_options o = options(0.01f, 2.0f);
    ASSERT_EQ(gclip_dist_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    gclip_result r{};
    ASSERT_EQ(gclip_dist_get_result(plan.get(), &r), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.nonfinite, 1);
    dev.download(w);
    EXPECT_EQ(w.checksum(), oracle::checksum(w.pristine)) << "a gradient was written";

    o.max_norm = -1.0f;
    EXPECT_EQ(gclip_dist_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    // the rejecting rank's slot: MISMATCH, no norm, no factor; nothing written
    EXPECT_EQ(gclip_dist_get_result(plan.get(), &r), GCLIP_STATUS_MISMATCH);
    EXPECT_TRUE(std::isnan(r.total_norm)) << r.total_norm;
    EXPECT_EQ(r.applied, 0);
    dev.download(w);
    EXPECT_EQ(w.checksum(), oracle::checksum(w.pristine)) << "the rejected step wrote a gradient";
    o.max_norm = 0.01f;
    EXPECT_EQ(gclip_dist_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    plan.reset();
    ncclCommDestroy(comm);
}

// Several devices, one thread per rank.
void run_ranks(int n, const std::vector<gclip_norm_options> &o, std::vector<RankRun> &runs)
{
    std::vector<int> devs(n);
    for (int i = 0; i < n; ++i)
        devs[i] = i;
    std::vector<ncclComm_t> comms(n);
    ASSERT_EQ(ncclCommInitAll(comms.data(), n, devs.data()), ncclSuccess);
    const distw::Global global = distw::make_global(2003);
    runs.clear();
    for (int r = 0; r < n; ++r)
        runs.push_back(RankRun{distw::make_rank(global, Layout{r, n, n, false})});
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r)
        threads.emplace_back(run_rank, std::ref(runs[r]), comms[r], r, o[r]);
    for (auto &t : threads)
        t.join();
    for (auto c : comms)
        ncclCommDestroy(c);
}

TEST_F(NcclTest, SeveralDevicesAgreeBitForBit)
{
    if (!need(2))
        GTEST_SKIP() << skip_reason_;
    const int n = std::min(gclip_cuda_device_count(), 4);
    std::vector<RankRun> runs;
    const gclip_norm_options o = options(0.05f, 2.0f);
    run_ranks(n, std::vector<gclip_norm_options>(n, o), runs);
    const auto want = distw::reference_norm(runs[0].w, 2.0, 1.0);
    for (int r = 0; r < n; ++r) {
        EXPECT_EQ(runs[r].created, GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(runs[r].result, GCLIP_STATUS_SUCCESS);
        EXPECT_TRUE(oracle::rel_close(runs[r].r.total_norm, want.total, 1e-6L));
        EXPECT_EQ(result_bits(runs[r].r), result_bits(runs[0].r)) << "rank " << r;
        EXPECT_LT(runs[r].r.scale, 1.0f);
        EXPECT_EQ(distw::bits(runs[r].r.scale),
                  distw::bits(distw::expected_factor(runs[r].r, o)));
        EXPECT_EQ(runs[r].misclipped, 0);
    }
}

TEST_F(NcclTest, SeveralDevicesReportAMismatchOnEveryRank)
{
    if (!need(2))
        GTEST_SKIP() << skip_reason_;
    const int n = std::min(gclip_cuda_device_count(), 4);
    std::vector<gclip_norm_options> o(n, options(0.05f, 2.0f));
    o[1].norm_type = 1.0f;
    std::vector<RankRun> runs;
    run_ranks(n, o, runs);
    for (int r = 0; r < n; ++r) {
        EXPECT_EQ(runs[r].result, GCLIP_STATUS_MISMATCH) << "rank " << r;
        EXPECT_EQ(runs[r].r.applied, 0);
        EXPECT_EQ(runs[r].w.checksum(), oracle::checksum(runs[r].w.pristine));
    }
}

} // namespace
