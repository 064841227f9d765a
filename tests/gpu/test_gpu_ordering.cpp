// test_gpu_ordering.cpp - ordering under stress, with no host
// synchronization between steps: a thousand eager steps and a thousand graph
// replays each bitwise equal to the first; one plan driven from two streams
// in turn, eager calls and replays mixed; two plans whose steps overlap on
// the device. The host waits once, at the end, then compares.
#include "gpu_fixture.hpp"
#include "tickets.hpp"

#include <cuda_runtime_api.h>

#include <cstring>
#include <functional>
#include <memory>

namespace gpu {
namespace {

using GpuOrderingTest = GpuTest;

// What each step of a run leaves, recorded in stream order on the device
// while the run goes on: the result slot, the per-tensor norms of the data
// the step wrote (by a second plan over the same tensors) and, every
// `snap_every` steps, the data itself.
class StepRecorder {
public:
    StepRecorder(const Paired &pair, int steps, int snap_every)
        : pair_(pair), steps_(steps), snap_every_(snap_every),
          slots_(static_cast<std::size_t>(steps) * sizeof(gclip_device_result)),
          norms_(static_cast<std::size_t>(steps) * pair.count() * sizeof(float) + 1),
          snaps_(static_cast<std::size_t>((steps + snap_every - 1) / snap_every) * pair.bytes() + 1)
    {
        EXPECT_EQ(testutil::make_plan(probe_, pair.device_tensors(), 0), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        EXPECT_EQ(gclip_plan_device_result(pair.gpu(), &slot_), GCLIP_STATUS_SUCCESS);
    }

    // After step i, on the step's stream.
    void record(int i, cudaStream_t stream)
    {
        GPU_EXPECT_CUDA(cudaMemcpyAsync(slots_.as<gclip_device_result>() + i, slot_,
                                        sizeof(gclip_device_result), cudaMemcpyDeviceToDevice,
                                        stream));
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.tensor_norms = norms_.as<float>() + static_cast<std::size_t>(i) * pair_.count();
        EXPECT_EQ(gclip_total_norm(probe_.get(), &o, stream), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        if (i % snap_every_ == 0) {
            unsigned char *snap = snaps_.as<unsigned char>() + (i / snap_every_) * pair_.bytes();
            GPU_EXPECT_CUDA(cudaMemcpyAsync(snap, pair_.device_base(), pair_.bytes(),
                                            cudaMemcpyDeviceToDevice, stream));
        }
    }

    // After the one host synchronization: every step's slot (but its
    // sequence, which must count ops_per_step per step), per-tensor norms
    // and snapshot equal the first step's, bit for bit. Returns the first
    // step's slot.
    gclip_device_result expect_every_step_equals_the_first(uint32_t ops_per_step) const
    {
        std::vector<gclip_device_result> slots(static_cast<std::size_t>(steps_));
        std::vector<float> norms(static_cast<std::size_t>(steps_) * pair_.count());
        std::vector<unsigned char> snaps(snaps_.bytes() - 1);
        EXPECT_EQ(cudaMemcpy(slots.data(), slots_.get(), slots.size() * sizeof slots[0],
                             cudaMemcpyDeviceToHost), cudaSuccess);
        EXPECT_EQ(cudaMemcpy(norms.data(), norms_.get(), norms.size() * sizeof(float),
                             cudaMemcpyDeviceToHost), cudaSuccess);
        EXPECT_EQ(cudaMemcpy(snaps.data(), snaps_.get(), snaps.size(), cudaMemcpyDeviceToHost),
                  cudaSuccess);
        int bad_slots = 0, bad_norms = 0, bad_snaps = 0, first_bad = -1;
        const std::size_t n = pair_.count(), b = pair_.bytes();
        for (int i = 1; i < steps_; ++i) {
            const auto k = static_cast<std::size_t>(i);
            gclip_device_result a = slots[k], f = slots[0];
            const bool counted = a.sequence == f.sequence + ops_per_step * static_cast<uint32_t>(i);
            a.sequence = f.sequence = 0;
            const bool slot_ok = counted && std::memcmp(&a, &f, sizeof a) == 0;
            const bool norms_ok = std::memcmp(&norms[k * n], &norms[0], n * sizeof(float)) == 0;
            const bool snap_ok = i % snap_every_ != 0 ||
                                 std::memcmp(&snaps[(k / snap_every_) * b], &snaps[0], b) == 0;
            bad_slots += !slot_ok;
            bad_norms += !norms_ok;
            bad_snaps += !snap_ok;
            if ((!slot_ok || !norms_ok || !snap_ok) && first_bad < 0)
                first_bad = i;
        }
        EXPECT_EQ(bad_slots, 0) << "steps whose result slot differs from the first's (first: "
                                << first_bad << ")";
        EXPECT_EQ(bad_norms, 0) << "steps whose written data has other tensor norms (first: "
                                << first_bad << ")";
        EXPECT_EQ(bad_snaps, 0) << "snapshots of the data that differ from the first (first step: "
                                << first_bad << ")";
        EXPECT_EQ(slots[0].status, GCLIP_STATUS_SUCCESS);
        return slots[0];
    }

private:
    const Paired &pair_;
    int steps_, snap_every_;
    const gclip_device_result *slot_ = nullptr;
    DeviceBuffer slots_, norms_, snaps_;
    testutil::PlanPtr probe_;
};

// The first step's slot against the CPU path's result of the same step on
// the pristine data, and the data the last step left against the CPU path's.
void expect_first_step_is_the_cpu_paths(Paired &pair, const OpArgs &step,
                                        const gclip_device_result &first)
{
    ASSERT_EQ(run_op(pair.cpu(), step, nullptr, nullptr), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    const gclip_device_result *cpu = nullptr;
    ASSERT_EQ(gclip_plan_device_result(pair.cpu(), &cpu), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(first.op, cpu->op);
    EXPECT_EQ(first.flags, cpu->flags);
    EXPECT_EQ(first.nonfinite, cpu->nonfinite);
    EXPECT_TRUE(norm_close(first.total_norm, cpu->total_norm))
        << "gpu " << first.total_norm << " cpu " << cpu->total_norm;
    pair.expect_data_match(false);
}

const int kSteps = 1000;

// Each step restores the pristine data (a device copy) and clips it, on one
// stream, a thousand times with no host synchronization in between.
TEST_F(GpuOrderingTest, ThousandEagerStepsWithoutHostSyncEqualTheFirst)
{
    Stream stream;
    Paired pair(long_run_specs(48, 150000, 901), 902);
    const OpArgs clip = clipping(GCLIP_OP_CLIP_NORM, pair);
    StepRecorder rec(pair, kSteps, 50);
    for (int i = 0; i < kSteps; ++i) {
        pair.reset_async(stream.get());
        ASSERT_EQ(run_op(pair.gpu(), clip, nullptr, stream.get()), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        rec.record(i, stream.get());
    }
    GPU_ASSERT_CUDA(cudaStreamSynchronize(stream.get()));
    const gclip_device_result first = rec.expect_every_step_equals_the_first(1);
    EXPECT_EQ(first.sequence, 1u);
    EXPECT_LT(first.scale, 1.0f) << "the step did not clip";
    expect_first_step_is_the_cpu_paths(pair, clip, first);
    expect_tickets_at_zero(pair.gpu(), "after the eager steps");
}

// The step (restore, then clip) captured once and replayed a thousand times
// with no host synchronization in between.
TEST_F(GpuOrderingTest, ThousandGraphReplaysWithoutHostSyncEqualTheFirst)
{
    Stream stream;
    Paired pair(long_run_specs(48, 150000, 903), 904);
    OpArgs clip = clipping(GCLIP_OP_CLIP_PER_TENSOR, pair);
    clip.options.max_norm = 1e-3f;
    GPU_ASSERT_CUDA(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
    pair.reset_async(stream.get());
    const gclip_status cs = run_op(pair.gpu(), clip, nullptr, stream.get());
    cudaGraph_t graph = nullptr;
    GPU_ASSERT_CUDA(cudaStreamEndCapture(stream.get(), &graph));
    ASSERT_EQ(cs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
    GraphExec exec(graph);
    ASSERT_TRUE(exec.ok());

    StepRecorder rec(pair, kSteps, 50);
    for (int i = 0; i < kSteps; ++i) {
        GPU_ASSERT_CUDA(exec.launch(stream.get()));
        rec.record(i, stream.get());
    }
    GPU_ASSERT_CUDA(cudaStreamSynchronize(stream.get()));
    const gclip_device_result first = rec.expect_every_step_equals_the_first(1);
    EXPECT_EQ(first.sequence, 1u);
    EXPECT_EQ(first.op, GCLIP_OP_CLIP_PER_TENSOR);
    expect_first_step_is_the_cpu_paths(pair, clip, first);
    expect_tickets_at_zero(pair.gpu(), "after the replays");
}

// A cycle of steps in which every step writes the gradients and no two
// commute: x4 (inv_scale 4, never clipped), a value clip at 1.5, per-tensor
// clipping at 50, a global clip at 100 as factor then apply, and again as
// accumulate, finalize, apply. Run over and over, any step reordered or
// overlapped with its neighbour changes the bits of the outcome.
Steps mutating_cycle()
{
    OpArgs grow, clamp, per_tensor;
    grow.op = GCLIP_OP_CLIP_NORM;
    grow.options.max_norm = INFINITY;
    grow.options.inv_scale = 4.0f;
    clamp.op = GCLIP_OP_CLIP_VALUE;
    clamp.clip_value = 1.5f;
    per_tensor.op = GCLIP_OP_CLIP_PER_TENSOR;
    per_tensor.options.max_norm = 50.0f;
    gclip_norm_options global = GCLIP_NORM_OPTIONS_INIT;
    global.max_norm = 100.0f;
    Steps c = {grow, clamp, per_tensor};
    for (int32_t op : {GCLIP_OP_CLIP_FACTOR, GCLIP_OP_FINALIZE})
        for (const OpArgs &a : steps_for(op, global))
            c.push_back(a);
    return c;
}

// A chain of steps in which each reads what the previous one wrote, as
// issued by `issue(i, stream)`.
using Issue = std::function<void(int step, cudaStream_t stream)>;

// Run `steps` of the chain, on one stream or alternating between two, with
// no host synchronization until the end; returns the result (but its
// sequence) and the data.
std::pair<gclip_result, std::vector<unsigned char>> run_chain(Paired &pair, int steps,
                                                              const Issue &issue,
                                                              cudaStream_t a, cudaStream_t b)
{
    pair.reset();
    for (int i = 0; i < steps; ++i)
        issue(i, i % 2 ? b : a);
    gclip_result r;
    EXPECT_EQ(gclip_get_result(pair.gpu(), &r), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    return {without_sequence(r), pair.download()};
}

// One plan used from two streams in turn, its steps a mix of eager calls and
// replays of graphs captured on a third stream: the plan's event alone
// orders them, so the thousand-step chain gives bitwise what it gives on one
// stream, every time.
TEST_F(GpuOrderingTest, OnePlanFromTwoStreamsEagerAndReplayedIsOrderedByThePlan)
{
    Stream s1, s2, s3;
    Paired pair(long_run_specs(64, 300000, 905), 906);
    const Steps cycle = mutating_cycle();
    std::vector<std::unique_ptr<GraphExec>> graphs;
    for (const OpArgs &a : cycle) {
        graphs.push_back(std::make_unique<GraphExec>(capture(pair.gpu(), a, s3.get())));
        ASSERT_TRUE(graphs.back()->ok());
    }
    const Issue issue = [&](int i, cudaStream_t s) {
        const std::size_t k = static_cast<std::size_t>(i) % cycle.size();
        if ((i / 3) % 2) // three eager steps, then three replays
            EXPECT_EQ(graphs[k]->launch(s), cudaSuccess);
        else
            EXPECT_EQ(run_op(pair.gpu(), cycle[k], nullptr, s), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
    };
    const auto one = run_chain(pair, kSteps, issue, s1.get(), s1.get());
    for (int attempt = 0; attempt < 3; ++attempt) {
        const auto two = run_chain(pair, kSteps, issue, s1.get(), s2.get());
        EXPECT_EQ(std::memcmp(&two.first, &one.first, sizeof(gclip_result)), 0)
            << "attempt " << attempt;
        EXPECT_TRUE(two.second == one.second)
            << "attempt " << attempt << ": steps on two streams overlapped or were reordered";
    }
    expect_tickets_at_zero(pair.gpu(), "after the two-stream chains");
}

// Two plans over different tensors, each driven on its own stream, their
// launches interleaved so that they overlap on the device: each plan's
// chain gives bitwise what it gives when it runs alone. Two plans over the
// same tensors computing norms concurrently each give the serial result at
// every step. Plans share no device state.
TEST_F(GpuOrderingTest, TwoPlansOverlappingOnTwoStreamsDoNotInterfere)
{
    Stream s1, s2;
    Paired p1(long_run_specs(200, 400000, 907), 908), p2(long_run_specs(150, 400000, 909), 910);
    const Steps chain = mutating_cycle();
    const int kChain = 500;
    auto run = [&](Paired &pair, const Steps &c, int i, cudaStream_t s) {
        EXPECT_EQ(run_op(pair.gpu(), c[static_cast<std::size_t>(i) % c.size()], nullptr, s),
                  GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
    };
    auto outcome = [](Paired &pair) {
        gclip_result r;
        EXPECT_EQ(gclip_get_result(pair.gpu(), &r), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        return std::make_pair(without_sequence(r), pair.download());
    };
    // alone
    p1.reset();
    for (int i = 0; i < kChain; ++i)
        run(p1, chain, i, s1.get());
    const auto alone1 = outcome(p1);
    p2.reset();
    for (int i = 0; i < kChain; ++i)
        run(p2, chain, i, s2.get());
    const auto alone2 = outcome(p2);
    // interleaved
    p1.reset();
    p2.reset();
    for (int i = 0; i < kChain; ++i) {
        run(p1, chain, i, s1.get());
        run(p2, chain, i, s2.get());
    }
    const auto both1 = outcome(p1), both2 = outcome(p2);
    EXPECT_EQ(std::memcmp(&both1.first, &alone1.first, sizeof(gclip_result)), 0);
    EXPECT_TRUE(both1.second == alone1.second) << "the first plan's chain changed next to the second";
    EXPECT_EQ(std::memcmp(&both2.first, &alone2.first, sizeof(gclip_result)), 0);
    EXPECT_TRUE(both2.second == alone2.second) << "the second plan's chain changed next to the first";
    expect_tickets_at_zero(p1.gpu(), "first plan");
    expect_tickets_at_zero(p2.gpu(), "second plan");

    // two plans over the same tensors, norms only, concurrently
    p1.reset();
    testutil::PlanPtr twin;
    ASSERT_EQ(testutil::make_plan(twin, p1.device_tensors(), 0), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    const int kNorms = 200;
    const std::size_t n = p1.count();
    DeviceBuffer norms(2 * kNorms * n * sizeof(float));
    for (int i = 0; i < kNorms; ++i)
        for (int k = 0; k < 2; ++k) {
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.norm_type = i % 2 ? 2.0f : INFINITY;
            o.tensor_norms = norms.as<float>() + (static_cast<std::size_t>(2 * i + k)) * n;
            EXPECT_EQ(gclip_total_norm(k ? twin.get() : p1.gpu(), &o, k ? s2.get() : s1.get()),
                      GCLIP_STATUS_SUCCESS);
        }
    GPU_ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<float> host(2 * kNorms * n);
    GPU_ASSERT_CUDA(cudaMemcpy(host.data(), norms.get(), host.size() * sizeof(float),
                               cudaMemcpyDeviceToHost));
    int differ = 0;
    for (int i = 1; i < 2 * kNorms; ++i) {
        // the first plan's row of step 0 or 1, of the same p
        const std::size_t row = static_cast<std::size_t>(i), ref = (row / 2) % 2 * 2;
        differ += std::memcmp(&host[row * n], &host[ref * n], n * sizeof(float)) != 0;
    }
    EXPECT_EQ(differ, 0) << "norms of the same data by two concurrent plans differ";
    expect_tickets_at_zero(p1.gpu(), "first plan, after the concurrent norms");
    expect_tickets_at_zero(twin.get(), "twin plan");
}

} // namespace
} // namespace gpu
