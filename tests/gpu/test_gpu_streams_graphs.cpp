// test_gpu_streams_graphs.cpp - steps on non-default streams, steps captured
// into CUDA graphs and replayed, and the launch count of each step.
#include "gpu_fixture.hpp"

#include <cuda_runtime_api.h>

#include <cstring>

namespace gpu {
namespace {

// A non-blocking stream owned for the scope of a test.
class Stream {
public:
    Stream() { EXPECT_EQ(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), cudaSuccess); }
    ~Stream() { cudaStreamDestroy(s_); }
    Stream(const Stream &) = delete;
    Stream &operator=(const Stream &) = delete;
    cudaStream_t get() const { return s_; }

private:
    cudaStream_t s_ = nullptr;
};

// The plan's device result slot, as raw bytes.
std::vector<unsigned char> slot_bytes(gclip_plan *plan)
{
    const gclip_device_result *slot = nullptr;
    EXPECT_EQ(gclip_plan_device_result(plan, &slot), GCLIP_STATUS_SUCCESS);
    std::vector<unsigned char> b(sizeof(gclip_device_result));
    EXPECT_EQ(cudaMemcpy(b.data(), slot, b.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    return b;
}

OpArgs clipping(Op op, const Paired &pair)
{
    OpArgs a;
    a.op = op;
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    EXPECT_EQ(gclip_total_norm(pair.cpu(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    a.options.max_norm = testutil::result_of(pair.cpu()).total_norm * 0.25f;
    a.clip_value = 0.3f;
    return a;
}

// Capture one operation on `stream` into a graph (global mode: any call that
// is illegal during capture, in any thread, fails the capture).
cudaGraph_t capture(gclip_plan *plan, const OpArgs &a, cudaStream_t stream)
{
    cudaGraph_t graph = nullptr;
    EXPECT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    const gclip_status s = run_op(plan, a, nullptr, stream);
    EXPECT_EQ(s, GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    return graph;
}

using GpuStreamTest = GpuTest;

TEST_F(GpuStreamTest, NonDefaultStreamMatchesCpuPath)
{
    Stream stream;
    Paired pair(edge_specs(GCLIP_F32, true), 606);
    for (Op op : {Op::total, Op::global, Op::per_tensor, Op::value}) {
        SCOPED_TRACE(op_name(op));
        pair.reset();
        pair.run_and_compare(clipping(op, pair), nullptr, stream.get());
    }
}

TEST_F(GpuStreamTest, CallerCurrentDeviceIsKept)
{
    int n = 0;
    ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
    const int mine = n - 1; // a device other than the plan's when there are two
    GPU_ASSERT_CUDA(cudaSetDevice(0)); // the data and the plan live on device 0
    Paired pair({{GCLIP_F32, 1000, 1}}, 3);
    const OpArgs a = clipping(Op::global, pair);

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

using GpuGraphTest = GpuTest;

TEST_F(GpuGraphTest, EveryStepIsAtMostTwoKernelsAndNothingElse)
{
    Stream stream;
    Paired pair(random_specs(300, 100000, 12), 13);
    for (Op op : {Op::total, Op::global, Op::per_tensor, Op::value}) {
        SCOPED_TRACE(op_name(op));
        cudaGraph_t graph = capture(pair.gpu(), clipping(op, pair), stream.get());
        ASSERT_NE(graph, nullptr);
        std::size_t n = 0;
        GPU_ASSERT_CUDA(cudaGraphGetNodes(graph, nullptr, &n));
        std::vector<cudaGraphNode_t> nodes(n);
        GPU_ASSERT_CUDA(cudaGraphGetNodes(graph, nodes.data(), &n));
        std::size_t kernels = 0;
        for (cudaGraphNode_t node : nodes) {
            cudaGraphNodeType t;
            GPU_ASSERT_CUDA(cudaGraphNodeGetType(node, &t));
            EXPECT_EQ(t, cudaGraphNodeTypeKernel) << "a step may only launch kernels";
            kernels += t == cudaGraphNodeTypeKernel;
        }
        const std::size_t want = op == Op::global || op == Op::per_tensor ? 2 : 1;
        EXPECT_EQ(kernels, want);
        cudaGraphDestroy(graph);
    }
}

TEST_F(GpuGraphTest, ReplaysGiveTheEagerStepsResultsBitwise)
{
    Stream stream;
    Paired pair(edge_specs(GCLIP_F32, true), 2024);
    for (Op op : {Op::global, Op::per_tensor, Op::value}) {
        SCOPED_TRACE(op_name(op));
        const OpArgs a = clipping(op, pair);

        pair.reset();
        GPU_ASSERT_OK(run_op(pair.gpu(), a, nullptr, stream.get()));
        gclip_result eager;
        GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &eager));
        const auto eager_data = pair.download();
        const auto eager_slot = slot_bytes(pair.gpu());

        pair.reset();
        cudaGraph_t graph = capture(pair.gpu(), a, stream.get());
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
            EXPECT_EQ(std::memcmp(&r, &eager, sizeof r), 0);
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
    const OpArgs a = clipping(Op::global, pair);
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

} // namespace
} // namespace gpu
