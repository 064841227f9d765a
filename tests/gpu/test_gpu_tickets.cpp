// test_gpu_tickets.cpp - both ticket counters of a plan (tickets.hpp) read 0
// after every operation, eager or replayed, after a step call that failed,
// and after thousands of replays issued with no host synchronization; and
// the step after each of those is still right.
#include "gpu_fixture.hpp"
#include "tickets.hpp"

#include <cuda_runtime_api.h>

#include <cstring>

namespace gpu {
namespace {

using GpuTicketTest = GpuTest;

// The steps that run `op` as a user would: the apply after the factor it
// applies, every other op alone.
Steps steps_of(int32_t op, const Paired &pair)
{
    const OpArgs a = clipping(op, pair);
    if (op == GCLIP_OP_APPLY)
        return {clipping(GCLIP_OP_CLIP_FACTOR, pair), a};
    return {a};
}

// One block (a single small tensor) and a grid of hundreds of blocks: the
// counters wrap at the grid size, so both ends are checked.
TEST_F(GpuTicketTest, TicketsAreZeroAfterEveryOpEagerAndReplayed)
{
    Stream stream;
    const std::vector<std::vector<Spec>> plans = {{{GCLIP_F32, 1000, 1}},
                                                  random_specs(300, 100000, 12)};
    for (const auto &specs : plans) {
        SCOPED_TRACE(specs::describe(specs));
        Paired pair(specs, 13);
        expect_tickets_at_zero(pair.gpu(), "after plan creation");
        for (int32_t op : kAllOps) {
            SCOPED_TRACE(op_name(op));
            const Steps steps = steps_of(op, pair);
            for (const OpArgs &a : steps)
                GPU_ASSERT_OK(run_op(pair.gpu(), a, nullptr, stream.get()));
            expect_tickets_at_zero(pair.gpu(), "after the eager step");
            GraphExec graph(capture(pair.gpu(), steps, stream.get()));
            ASSERT_TRUE(graph.ok());
            for (int replay = 0; replay < 3; ++replay)
                GPU_ASSERT_CUDA(graph.launch(stream.get()));
            expect_tickets_at_zero(pair.gpu(), "after three replays");
            if (HasFailure())
                return;
        }
        // the next step, from the pristine data, is the CPU path's
        pair.reset();
        pair.run_and_compare(clipping(GCLIP_OP_CLIP_NORM, pair), nullptr, stream.get());
    }
}

// A step call issued into a capture that CUDA has invalidated fails with
// CUDA_ERROR and a message: nothing runs, the slot keeps the previous
// operation's result, no gradient changes, both counters stay at 0, and the
// next eager step is right. Using the legacy default stream while a
// blocking stream is being captured is invalid (the legacy stream is
// implicitly ordered with it), and invalidates that capture.
TEST_F(GpuTicketTest, TicketsAreZeroAfterAFailedStepCall)
{
    Paired pair(random_specs(100, 150000, 7), 8);
    const OpArgs clip = clipping(GCLIP_OP_CLIP_NORM, pair);
    cudaStream_t blocking = nullptr;
    GPU_ASSERT_CUDA(cudaStreamCreate(&blocking));
    DeviceBuffer scratch(sizeof(float)); // allocated before the capture: cudaMalloc is not capturable

    GPU_ASSERT_OK(run_op(pair.gpu(), clip, nullptr, blocking));
    gclip_result before;
    GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &before));
    pair.reset();

    GPU_ASSERT_CUDA(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeGlobal));
    const cudaError_t legacy = cudaMemsetAsync(scratch.get(), 0, sizeof(float), nullptr);
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    GPU_EXPECT_CUDA(cudaStreamIsCapturing(blocking, &cs));
    const gclip_status st = run_op(pair.gpu(), clip, nullptr, blocking);
    const std::string message = gclip_last_error();
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(blocking, &graph);
    if (graph)
        cudaGraphDestroy(graph);
    (void)cudaGetLastError();

    EXPECT_NE(legacy, cudaSuccess) << "the legacy stream was usable during a capture";
    ASSERT_EQ(cs, cudaStreamCaptureStatusInvalidated)
        << "the capture was not invalidated: this test cannot make a step call fail";
    EXPECT_EQ(st, GCLIP_STATUS_CUDA_ERROR);
    EXPECT_FALSE(message.empty()) << "a failed call must say why";
    EXPECT_NE(end, cudaSuccess);

    gclip_result after;
    GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &after));
    EXPECT_EQ(std::memcmp(&after, &before, sizeof after), 0)
        << "the failed call changed the result slot (sequence " << before.sequence << " -> "
        << after.sequence << ")";
    const auto data = pair.download();
    EXPECT_EQ(std::memcmp(data.data(), pair.pristine_bytes(), pair.bytes()), 0)
        << "the failed call wrote a gradient";
    expect_tickets_at_zero(pair.gpu(), "after the failed call");

    pair.run_and_compare(clip, nullptr, blocking);
    expect_tickets_at_zero(pair.gpu(), "after the next step");
    GPU_EXPECT_CUDA(cudaStreamDestroy(blocking));
}

// Five thousand replays of a graph of every op, issued back to back with no
// host synchronization: the slot counts every replayed operation, the
// counters are at 0, the gradients are untouched (every factor is exactly
// 1 and the value clip's bound is infinite), and the next step is right.
TEST_F(GpuTicketTest, TicketsAreZeroAfterThousandsOfReplays)
{
    Stream stream;
    Paired pair(random_specs(200, 150000, 41), 42);
    Steps steps;
    for (int32_t op : kAllOps) {
        OpArgs a = clipping(op, pair);
        a.options.max_norm = INFINITY;
        a.clip_value = INFINITY;
        a.given_norm = 1.0f;
        steps.push_back(a); // the apply follows the finalize, whose factor is 1
    }
    GraphExec graph(capture(pair.gpu(), steps, stream.get()));
    ASSERT_TRUE(graph.ok());
    const int kReplays = 5000;
    for (int i = 0; i < kReplays; ++i)
        GPU_ASSERT_CUDA(graph.launch(stream.get()));
    gclip_result r;
    GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &r));
    EXPECT_EQ(r.sequence, static_cast<uint32_t>(kReplays * steps.size()));
    EXPECT_EQ(r.op, GCLIP_OP_APPLY);
    expect_tickets_at_zero(pair.gpu(), "after the replays");
    const auto dev = pair.download();
    EXPECT_EQ(std::memcmp(dev.data(), pair.pristine_bytes(), pair.bytes()), 0)
        << "a replay wrote a gradient";

    pair.run_and_compare(steps_for(GCLIP_OP_FINALIZE, clipping(GCLIP_OP_FINALIZE, pair).options),
                         nullptr, stream.get());
    expect_tickets_at_zero(pair.gpu(), "after the next step");
}

} // namespace
} // namespace gpu
