// test_gpu_streams_graphs.cpp - steps on non-default streams, steps captured
// into CUDA graphs and replayed, and the nodes of each step's graph.
#include "gpu_fixture.hpp"

#include <cuda_runtime_api.h>

#include <cstring>

namespace gpu {
namespace {

// The plan's device result slot with its sequence cleared, as raw bytes.
std::vector<unsigned char> slot_bytes(gclip_plan *plan)
{
    gclip_device_result d = read_slot(plan);
    d.sequence = 0;
    const auto *p = reinterpret_cast<const unsigned char *>(&d);
    return std::vector<unsigned char>(p, p + sizeof d);
}

using GpuStreamTest = GpuTest;

TEST_F(GpuStreamTest, NonDefaultStreamMatchesCpuPath)
{
    Stream stream;
    Paired pair(edge_specs(GCLIP_F32, true), 606);
    for (int32_t op : {GCLIP_OP_TOTAL_NORM, GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR,
                       GCLIP_OP_CLIP_VALUE, GCLIP_OP_CLIP_FACTOR, GCLIP_OP_FINALIZE,
                       GCLIP_OP_CLIP_WITH_NORM}) {
        SCOPED_TRACE(op_name(op));
        pair.reset();
        const OpArgs a = clipping(op, pair);
        Steps steps = op == GCLIP_OP_CLIP_VALUE ? Steps{a} : steps_for(op, a.options, a.given_norm);
        pair.run_and_compare(steps, nullptr, stream.get());
    }
}

TEST_F(GpuStreamTest, CallerCurrentDeviceIsKept)
{
    int n = 0;
    ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
    if (n < 2)
        GTEST_SKIP() << "needs two CUDA devices (this machine has " << n
                     << "): the caller's current device must differ from the plan's";
    const int mine = n - 1; // a device other than the plan's
    GPU_ASSERT_CUDA(cudaSetDevice(0)); // the data and the plan live on device 0
    Paired pair({{GCLIP_F32, 1000, 1}}, 3);
    const OpArgs a = clipping(GCLIP_OP_CLIP_NORM, pair);

    GPU_ASSERT_CUDA(cudaSetDevice(mine));
    int now = -1;
    GPU_ASSERT_OK(run_op(pair.gpu(), a, nullptr, nullptr));
    GPU_ASSERT_CUDA(cudaGetDevice(&now));
    EXPECT_EQ(now, mine);
    gclip_result r;
    GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &r));
    GPU_ASSERT_CUDA(cudaGetDevice(&now));
    EXPECT_EQ(now, mine);
    GPU_ASSERT_CUDA(cudaSetDevice(0));
}

// One plan used from two streams in turn, with no host synchronization and
// no event of the caller's: the plan's own event orders each step after the
// previous one, so the steps (each reading what the previous one wrote) give
// bitwise what they give on one stream.
TEST_F(GpuStreamTest, OnePlanOnTwoStreamsInTurnIsOrderedByThePlan)
{
    Stream a, b, one;
    Paired pair(long_run_specs(64, 400000, 17), 18);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.9f * pair.total_norm(2.0f);
    // each step reads the gradients the previous step wrote
    const Steps cycle = {
        steps_for(GCLIP_OP_CLIP_NORM, o)[0],   steps_for(GCLIP_OP_CLIP_PER_TENSOR, o)[0],
        steps_for(GCLIP_OP_CLIP_FACTOR, o)[0], steps_for(GCLIP_OP_CLIP_FACTOR, o)[1],
        steps_for(GCLIP_OP_CLIP_NORM, o)[0]};
    const int kSteps = 40;
    auto run = [&](bool alternate) {
        pair.reset();
        const uint32_t before = testutil::result_of(pair.gpu()).sequence;
        for (int i = 0; i < kSteps; ++i) {
            const cudaStream_t s = !alternate ? one.get() : (i % 2 ? a.get() : b.get());
            EXPECT_EQ(run_op(pair.gpu(), cycle[static_cast<std::size_t>(i) % cycle.size()],
                             nullptr, s),
                      GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
        }
        gclip_result r;
        EXPECT_EQ(gclip_get_result(pair.gpu(), &r), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        EXPECT_EQ(r.sequence - before, static_cast<uint32_t>(kSteps));
        return std::make_pair(without_sequence(r), pair.download());
    };
    const auto single = run(false);
    for (int attempt = 0; attempt < 3; ++attempt) {
        const auto alternating = run(true);
        EXPECT_EQ(std::memcmp(&alternating.first, &single.first, sizeof(gclip_result)), 0)
            << "attempt " << attempt;
        EXPECT_TRUE(alternating.second == single.second)
            << "attempt " << attempt << ": steps on two streams overlapped or reordered";
    }
}

using GpuGraphTest = GpuTest;

// A captured step is its kernels, one wait for the plan's previous operation
// and one record of the plan's event: no memset, copy or host node.
TEST_F(GpuGraphTest, EveryStepIsItsKernelsAndThePlansEventNodes)
{
    Stream stream;
    Paired pair(random_specs(300, 100000, 12), 13);
    for (int32_t op : kAllOps) {
        SCOPED_TRACE(op_name(op));
        cudaGraph_t graph = capture(pair.gpu(), clipping(op, pair), stream.get());
        ASSERT_NE(graph, nullptr);
        std::size_t n = 0;
        GPU_ASSERT_CUDA(cudaGraphGetNodes(graph, nullptr, &n));
        std::vector<cudaGraphNode_t> nodes(n);
        GPU_ASSERT_CUDA(cudaGraphGetNodes(graph, nodes.data(), &n));
        std::size_t kernels = 0, waits = 0, records = 0;
        for (cudaGraphNode_t node : nodes) {
            cudaGraphNodeType t;
            GPU_ASSERT_CUDA(cudaGraphNodeGetType(node, &t));
            kernels += t == cudaGraphNodeTypeKernel;
            waits += t == cudaGraphNodeTypeWaitEvent;
            records += t == cudaGraphNodeTypeEventRecord;
            EXPECT_TRUE(t == cudaGraphNodeTypeKernel || t == cudaGraphNodeTypeWaitEvent ||
                        t == cudaGraphNodeTypeEventRecord)
                << "a step may only launch kernels and wait for and record the plan's event";
        }
        EXPECT_EQ(kernels, kernels_of(op));
        EXPECT_EQ(waits, 1u);
        EXPECT_EQ(records, 1u);
        cudaGraphDestroy(graph);
    }
}

TEST_F(GpuGraphTest, ReplaysGiveTheEagerStepsResultsBitwise)
{
    Stream stream;
    Paired pair(edge_specs(GCLIP_F32, true), 2024);
    for (int32_t op : {GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR, GCLIP_OP_CLIP_VALUE,
                       GCLIP_OP_CLIP_FACTOR, GCLIP_OP_FINALIZE, GCLIP_OP_CLIP_WITH_NORM}) {
        SCOPED_TRACE(op_name(op));
        const OpArgs a = clipping(op, pair);
        const Steps steps = op == GCLIP_OP_CLIP_VALUE ? Steps{a} : steps_for(op, a.options, a.given_norm);

        pair.reset();
        for (const OpArgs &s : steps)
            GPU_ASSERT_OK(run_op(pair.gpu(), s, nullptr, stream.get()));
        gclip_result eager;
        GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &eager));
        const auto eager_data = pair.download();
        const auto eager_slot = slot_bytes(pair.gpu());

        pair.reset();
        cudaGraph_t graph = capture(pair.gpu(), steps, stream.get());
        ASSERT_NE(graph, nullptr);
        const auto captured_data = pair.download();
        EXPECT_EQ(std::memcmp(captured_data.data(), pair.pristine_bytes(), pair.bytes()), 0)
            << "capturing must not run the step";
        cudaGraphExec_t exec = nullptr;
        GPU_ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));

        for (int replay = 0; replay < 3; ++replay) {
            SCOPED_TRACE("replay " + std::to_string(replay));
            pair.reset();
            GPU_ASSERT_CUDA(cudaGraphLaunch(exec, stream.get()));
            GPU_ASSERT_CUDA(cudaStreamSynchronize(stream.get()));
            EXPECT_EQ(pair.download(), eager_data);
            EXPECT_EQ(slot_bytes(pair.gpu()), eager_slot);
            gclip_result r;
            GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &r));
            const gclip_result want = without_sequence(eager), got = without_sequence(r);
            EXPECT_EQ(std::memcmp(&got, &want, sizeof got), 0);
            EXPECT_EQ(r.sequence, eager.sequence + steps.size() * (replay + 1));
        }
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
    }
}

// The graph reads the tensor table from device memory, so a replay after a
// rebind works on the new pointers.
TEST_F(GpuGraphTest, ReplayAfterRebindUsesTheNewPointers)
{
    Stream stream;
    Paired pair(random_specs(50, 70000, 5), 6);
    const OpArgs a = clipping(GCLIP_OP_CLIP_NORM, pair);
    pair.reset();
    GPU_ASSERT_OK(run_op(pair.gpu(), a, nullptr, stream.get()));
    gclip_result eager;
    GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &eager));
    const auto eager_data = pair.download();

    DeviceBuffer other(pair.bytes() + 1);
    GPU_ASSERT_CUDA(cudaMemcpy(other.get(), pair.pristine_bytes(), pair.bytes(), cudaMemcpyHostToDevice));
    GPU_ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<void *> moved;
    for (std::size_t k = 0; k < pair.count(); ++k)
        moved.push_back(static_cast<unsigned char *>(other.get()) + pair.offset_of(k));

    pair.reset();
    cudaGraph_t graph = capture(pair.gpu(), a, stream.get());
    cudaGraphExec_t exec = nullptr;
    GPU_ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    GPU_ASSERT_OK(gclip_plan_rebind(pair.gpu(), moved.data(), moved.size(), stream.get()));
    GPU_ASSERT_CUDA(cudaGraphLaunch(exec, stream.get()));
    GPU_ASSERT_CUDA(cudaStreamSynchronize(stream.get()));

    std::vector<unsigned char> got(pair.bytes());
    GPU_ASSERT_CUDA(cudaMemcpy(got.data(), other.get(), got.size(), cudaMemcpyDeviceToHost));
    EXPECT_EQ(got, eager_data) << "the replay did not scale the rebound tensors";
    EXPECT_EQ(pair.download(), std::vector<unsigned char>(pair.pristine_bytes(),
                                                          pair.pristine_bytes() + pair.bytes()))
        << "the replay wrote the old tensors";
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
}

// Frameworks rebind before every call. On a stream being captured a rebind
// to the pointers the plan has is taken and records nothing; one to new
// pointers is refused (the graph would keep the host table's address) and
// leaves the plan as it was; the captured step replays as the eager one.
TEST_F(GpuGraphTest, RebindToTheSamePointersIsCapturedAsNothing)
{
    Stream stream;
    Paired pair(random_specs(40, 50000, 7), 8);
    const OpArgs a = clipping(GCLIP_OP_CLIP_NORM, pair);
    pair.reset();
    GPU_ASSERT_OK(run_op(pair.gpu(), a, nullptr, stream.get()));
    const auto eager_data = pair.download();

    std::vector<void *> same, moved;
    for (const gclip_tensor &t : pair.device_tensors())
        same.push_back(t.data);
    DeviceBuffer other(pair.bytes() + 1);
    for (std::size_t k = 0; k < pair.count(); ++k)
        moved.push_back(static_cast<unsigned char *>(other.get()) + pair.offset_of(k));

    pair.reset();
    GPU_ASSERT_CUDA(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
    const gclip_status same_st = gclip_plan_rebind(pair.gpu(), same.data(), same.size(), stream.get());
    const gclip_status moved_st =
        gclip_plan_rebind(pair.gpu(), moved.data(), moved.size(), stream.get());
    const gclip_status step_st = run_op(pair.gpu(), a, nullptr, stream.get());
    cudaGraph_t graph = nullptr;
    GPU_ASSERT_CUDA(cudaStreamEndCapture(stream.get(), &graph));
    EXPECT_EQ(same_st, GCLIP_STATUS_SUCCESS) << "the same pointers under capture";
    EXPECT_EQ(moved_st, GCLIP_STATUS_NOT_SUPPORTED) << "new pointers under capture";
    EXPECT_EQ(step_st, GCLIP_STATUS_SUCCESS);

    std::size_t n = 0;
    GPU_ASSERT_CUDA(cudaGraphGetNodes(graph, nullptr, &n));
    std::vector<cudaGraphNode_t> nodes(n);
    GPU_ASSERT_CUDA(cudaGraphGetNodes(graph, nodes.data(), &n));
    std::size_t kernels = 0;
    for (cudaGraphNode_t node : nodes) {
        cudaGraphNodeType t;
        GPU_ASSERT_CUDA(cudaGraphNodeGetType(node, &t));
        kernels += t == cudaGraphNodeTypeKernel;
        EXPECT_NE(t, cudaGraphNodeTypeMemcpy) << "a rebind was recorded";
    }
    EXPECT_EQ(kernels, kernels_of(GCLIP_OP_CLIP_NORM));

    GraphExec exec(graph);
    ASSERT_TRUE(exec.ok());
    GPU_ASSERT_CUDA(exec.launch(stream.get()));
    GPU_ASSERT_CUDA(cudaStreamSynchronize(stream.get()));
    EXPECT_EQ(pair.download(), eager_data) << "the replay did not clip the plan's tensors";
}

} // namespace
} // namespace gpu
