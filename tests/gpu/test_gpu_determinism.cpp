// test_gpu_determinism.cpp - bitwise reproducibility of the CUDA backend and
// its device-resident result slot.
#include "gpu_fixture.hpp"

#include <cstring>

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
    Paired pair(random_specs(400, 200000, 88), 89);
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
    Paired pair(random_specs(1000, 100000, 3), 4);
    testutil::PlanPtr second;
    ASSERT_EQ(testutil::make_plan(second, pair.device_tensors(), 0), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    OpArgs a;
    a.op = GCLIP_OP_CLIP_PER_TENSOR;
    a.options.max_norm = 0.5f;
    EXPECT_TRUE(run_once(pair, pair.gpu(), a) == run_once(pair, second.get(), a));
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
