// test_gpu_determinism.cpp - bitwise reproducibility of the CUDA backend and
// its device-resident result slot.
#include "gpu_fixture.hpp"

#include <cstring>
#include <initializer_list>

namespace gpu {
namespace {

// Everything a step leaves on the device, as bytes: data, result slot (but
// its sequence, which counts the plan's operations) and per-tensor norms.
struct Outcome {
    std::vector<unsigned char> data, slot, norms;
    bool operator==(const Outcome &o) const
    {
        return data == o.data && slot == o.slot && norms == o.norms;
    }
};

Outcome run_once(Paired &pair, gclip_plan *plan, const OpArgs &a)
{
    Outcome out;
    pair.reset();
    DeviceBuffer norms(pair.count() * sizeof(float) + 1);
    EXPECT_EQ(run_op(plan, a, static_cast<float *>(norms.get()), nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    gclip_result r;
    EXPECT_EQ(gclip_get_result(plan, &r), GCLIP_STATUS_SUCCESS);
    out.data = pair.download();
    const gclip_device_result *slot = nullptr;
    EXPECT_EQ(gclip_plan_device_result(plan, &slot), GCLIP_STATUS_SUCCESS);
    gclip_device_result d{};
    EXPECT_EQ(cudaMemcpy(&d, slot, sizeof d, cudaMemcpyDeviceToHost), cudaSuccess);
    d.sequence = 0;
    const auto *b = reinterpret_cast<const unsigned char *>(&d);
    out.slot.assign(b, b + sizeof d);
    out.norms.resize(pair.count() * sizeof(float));
    EXPECT_EQ(cudaMemcpy(out.norms.data(), norms.get(), out.norms.size(), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
}

using GpuDeterminismTest = GpuTest;

TEST_F(GpuDeterminismTest, RepeatedStepsAreBitwiseIdentical)
{
    Paired pair(long_run_specs(400, 200000, 88), 89);
    for (int32_t op : {GCLIP_OP_TOTAL_NORM, GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR,
                       GCLIP_OP_CLIP_FACTOR, GCLIP_OP_ACCUMULATE})
        for (float p : {2.0f, 3.0f, INFINITY}) {
            SCOPED_TRACE(std::string(op_name(op)) + " p " + std::to_string(p));
            OpArgs a;
            a.op = op;
            a.options.norm_type = p;
            a.options.max_norm = 1.0f;
            const Outcome first = run_once(pair, pair.gpu(), a);
            for (int run = 1; run < 5; ++run)
                EXPECT_TRUE(run_once(pair, pair.gpu(), a) == first) << "run " << run;
        }
}

// A second plan over the same tensors has its own workspace and ticket; the
// reduction order depends on the chunk table only, so the bits agree.
TEST_F(GpuDeterminismTest, TwoPlansOverTheSameTensorsAgreeBitwise)
{
    Paired pair(long_run_specs(1000, 100000, 3), 4);
    testutil::PlanPtr second;
    ASSERT_EQ(testutil::make_plan(second, pair.device_tensors(), 0), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    OpArgs a;
    a.op = GCLIP_OP_CLIP_PER_TENSOR;
    a.options.max_norm = 0.5f;
    EXPECT_TRUE(run_once(pair, pair.gpu(), a) == run_once(pair, second.get(), a));
}

// A chunk's partial is the same bits on every engine: the same groups and
// trees, the same block reduction (kernels/block_reduce.cuh), no fused
// multiply-add in the accumulation (checked in the SASS by the nvcc label);
// the finalize folds the partials in the same order. So the total and
// per-tensor norms of p = 2, 1 and Inf equal the CPU path's bit for bit
// (general p is left out: its terms use the device's exp2 and log2).
// The total norm of each op in `ops`, and under the per-tensor op every
// tensor's norm, for p = 2, 1 and Inf, bit for bit as the CPU path's (p = 3
// is left out: the device's exp2 and log2 are not the host's).
void expect_norms_equal_cpu(Paired &pair, std::initializer_list<int32_t> ops)
{
    const std::size_t n = pair.count();
    DeviceBuffer dev_norms(n * sizeof(float));
    for (float p : {2.0f, 1.0f, INFINITY}) {
        SCOPED_TRACE("p " + std::to_string(p));
        for (int32_t op : ops) {
            SCOPED_TRACE(op_name(op));
            pair.reset();
            OpArgs a;
            a.op = op;
            a.options.norm_type = p;
            a.options.max_norm = 1e30f; // per tensor: norms written, nothing clipped
            const bool per_tensor = op == GCLIP_OP_CLIP_PER_TENSOR;
            std::vector<float> cpu_norms(n, -1.0f), gpu_norms(n, -2.0f);
            GPU_ASSERT_OK(run_op(pair.cpu(), a, per_tensor ? cpu_norms.data() : nullptr, nullptr));
            GPU_ASSERT_OK(run_op(pair.gpu(), a,
                                 per_tensor ? static_cast<float *>(dev_norms.get()) : nullptr,
                                 nullptr));
            const gclip_result cr = testutil::result_of(pair.cpu());
            const gclip_result gr = testutil::result_of(pair.gpu());
            EXPECT_EQ(std::memcmp(&cr.total_norm, &gr.total_norm, sizeof(float)), 0)
                << "total norm cpu " << cr.total_norm << " gpu " << gr.total_norm;
            if (!per_tensor)
                continue;
            GPU_ASSERT_CUDA(cudaMemcpy(gpu_norms.data(), dev_norms.get(), n * sizeof(float),
                                       cudaMemcpyDeviceToHost));
            int bad = 0;
            for (std::size_t k = 0; k < n; ++k)
                if (std::memcmp(&cpu_norms[k], &gpu_norms[k], sizeof(float)) != 0 && ++bad <= 5)
                    ADD_FAILURE() << "tensor " << k << " cpu " << cpu_norms[k] << " gpu "
                                  << gpu_norms[k];
            EXPECT_EQ(bad, 0);
        }
    }
}

TEST_F(GpuDeterminismTest, NormsOfL2L1AndInfEqualTheCpuPathBitwise)
{
    Paired pair(random_specs(300, 150000, 51), 52);
    expect_norms_equal_cpu(pair, {GCLIP_OP_TOTAL_NORM, GCLIP_OP_CLIP_PER_TENSOR});
}

// More small tensors than the norm grid has blocks (SMs x occupancy), so
// blocks walk ranges of chunks and runs of small chunks go a warp each.
TEST_F(GpuDeterminismTest, ManySmallTensorsByWarpEqualTheCpuPathBitwise)
{
    Paired pair(random_specs(6000, 1100, 53), 54);
    expect_norms_equal_cpu(pair, {GCLIP_OP_CLIP_PER_TENSOR});
}

TEST_F(GpuDeterminismTest, DeviceResultSlotHoldsTheStepsResult)
{
    Paired pair(edge_specs(GCLIP_BF16, false), 21);
    const gclip_device_result *slot = nullptr;
    GPU_ASSERT_OK(gclip_plan_device_result(pair.gpu(), &slot));
    ASSERT_NE(slot, nullptr);

    // before any operation: no norm, coefficient and scale 1
    gclip_device_result before;
    GPU_ASSERT_CUDA(cudaMemcpy(&before, slot, sizeof before, cudaMemcpyDeviceToHost));
    EXPECT_EQ(before.clip_coef, 1.0f);
    EXPECT_EQ(before.scale, 1.0f);
    EXPECT_EQ(before.nonfinite, 0);

    EXPECT_EQ(before.op, GCLIP_OP_NONE);
    EXPECT_EQ(before.sequence, 0u);

    uint32_t sequence = 0;
    for (int32_t op : {GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_VALUE}) {
        SCOPED_TRACE(op_name(op));
        pair.reset();
        OpArgs a;
        a.op = op;
        a.options.max_norm = 0.1f;
        GPU_ASSERT_OK(run_op(pair.gpu(), a, nullptr, nullptr));
        // read in stream order (the default stream), without gclip_get_result
        gclip_device_result d;
        GPU_ASSERT_CUDA(cudaMemcpy(&d, slot, sizeof d, cudaMemcpyDeviceToHost));
        gclip_result r;
        GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &r));
        EXPECT_EQ(d.op, op);
        EXPECT_EQ(d.status, GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(d.sequence, ++sequence);
        EXPECT_EQ(r.sequence, sequence);
        if (op == GCLIP_OP_CLIP_NORM) {
            EXPECT_EQ(d.total_norm, r.total_norm);
            EXPECT_LT(d.scale, 1.0f);
        } else {
            EXPECT_TRUE(std::isnan(d.total_norm));
            EXPECT_EQ(d.scale, 1.0f);
        }
        EXPECT_EQ(d.clip_coef, r.clip_coef);
        EXPECT_EQ(d.scale, r.scale);
        EXPECT_EQ(d.nonfinite, r.nonfinite);
    }
}

} // namespace
} // namespace gpu
