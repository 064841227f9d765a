// test_gpu_ops.cpp - every operation (the phases and their sequences
// included), dtype and row of the op's conformance table on the CUDA backend
// against the CPU path, on seeded random data.
#include "gpu_fixture.hpp"

#include <cmath>
#include <tuple>

namespace gpu {
namespace {

enum class Mix { f32, f16, bf16, f64, mixed };

gclip_dtype dtype_of(Mix m)
{
    return m == Mix::f16 ? GCLIP_F16 : m == Mix::bf16 ? GCLIP_BF16 : m == Mix::f64 ? GCLIP_F64 : GCLIP_F32;
}

const char *mix_name(Mix m)
{
    return m == Mix::f32    ? "f32"
           : m == Mix::f16  ? "f16"
           : m == Mix::bf16 ? "bf16"
           : m == Mix::f64  ? "f64"
                            : "mixed";
}

// The ops a table row runs as: alone, or (the phases) as the sequence of
// calls they are made for (steps_for).
const int32_t kTableOps[] = {GCLIP_OP_TOTAL_NORM,  GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR,
                             GCLIP_OP_CLIP_FACTOR, GCLIP_OP_ACCUMULATE, GCLIP_OP_FINALIZE,
                             GCLIP_OP_CLIP_WITH_NORM, GCLIP_OP_CLIP_VALUE};

using OpCase = std::tuple<int32_t, Mix>;

class GpuOpsTest : public GpuTest, public ::testing::WithParamInterface<OpCase> {};

TEST_P(GpuOpsTest, EveryRowOfTheOpsTableMatchesCpuPathOnEdgeSizesAndUnalignedStarts)
{
    const auto [op, mix] = GetParam();
    Paired pair(table_specs(dtype_of(mix), mix == Mix::mixed), 1234, 2.0);
    if (op == GCLIP_OP_CLIP_VALUE) {
        for (float v : specs::value_clip_bounds()) {
            SCOPED_TRACE("bound " + specs::bound_name(v));
            pair.reset();
            OpArgs a;
            a.op = op;
            a.clip_value = v;
            pair.run_and_compare(a);
            if (HasFailure())
                return;
        }
        // a double bound: f64 clamped to it, the others to the float nearest it
        for (double v : {0.1, 1.0 / 3.0, 1e39, 1e-50}) {
            SCOPED_TRACE("double bound " + std::to_string(v));
            pair.reset();
            OpArgs a;
            a.op = op;
            a.value_f64 = true;
            a.clip_value_f64 = v;
            pair.run_and_compare(a);
            if (HasFailure())
                return;
        }
        return;
    }
    for (const specs::NormCase &row : specs::norm_cases(op)) {
        SCOPED_TRACE("row " + row.name());
        pair.reset();
        const float n = pair.total_norm(row.norm_type, row.inv_scale);
        pair.run_and_compare(steps_for(op, row.options(n), n));
        if (HasFailure())
            return;
    }
}

std::string op_case_name(const ::testing::TestParamInfo<OpCase> &param_info)
{
    const int32_t op = std::get<0>(param_info.param);
    const Mix mix = std::get<1>(param_info.param);
    return std::string(op_name(op)) + "_" + mix_name(mix);
}

INSTANTIATE_TEST_SUITE_P(AllOpsDtypesRows, GpuOpsTest,
                         ::testing::Combine(::testing::ValuesIn(kTableOps),
                                            ::testing::Values(Mix::f32, Mix::f16, Mix::bf16,
                                                              Mix::f64, Mix::mixed)),
                         op_case_name);

class GpuTensorCountTest : public GpuTest, public ::testing::WithParamInterface<std::size_t> {};

TEST_P(GpuTensorCountTest, ClipGradNormAndPerTensorMatchCpuPath)
{
    const std::size_t n = GetParam();
    Paired pair(random_specs(n, 3000, 77 + n), 99 + n);
    for (int32_t op : {GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR, GCLIP_OP_CLIP_FACTOR}) {
        pair.reset();
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.max_norm = 0.5f * pair.total_norm(2.0f);
        pair.run_and_compare(steps_for(op, o));
    }
}

INSTANTIATE_TEST_SUITE_P(OneToTenThousand, GpuTensorCountTest,
                         ::testing::Values(1, 2, 3, 148, 255, 256, 257, 1000, 10000));

using GpuShapesTest = GpuTest;

// Tensors of hundreds of chunks next to small ones: the finalize splits the
// chunk table into per-thread ranges, so one tensor's partials are folded by
// several threads and joined in shared memory.
TEST_F(GpuShapesTest, TensorsSpanningManyFinalizeRangesMatchCpuPath)
{
    const int64_t c = specs::kChunkElems;
    std::vector<Spec> shapes = {{GCLIP_F32, 5, 1},
                                {GCLIP_BF16, 600 * c + 17, 3},
                                {GCLIP_F16, 0, 0},
                                {GCLIP_F32, 70 * c - 1, 2},
                                {GCLIP_F64, 40 * c + 3, 1},
                                {GCLIP_F16, c + 1, 5},
                                {GCLIP_BF16, 1, 0}};
    Paired pair(shapes, 4242, 0.01);
    for (int32_t op : {GCLIP_OP_TOTAL_NORM, GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR,
                       GCLIP_OP_FINALIZE})
        for (float p : {2.0f, INFINITY}) {
            pair.reset();
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.norm_type = p;
            o.max_norm = 0.5f * pair.total_norm(p);
            pair.run_and_compare(steps_for(op, o));
        }
}

TEST_F(GpuShapesTest, EmptyPlanAndZeroSizeTensorsGiveNormZero)
{
    testutil::PlanPtr empty;
    ASSERT_EQ(testutil::make_plan(empty, {}, 0), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    GPU_ASSERT_OK(gclip_clip_grad_norm(empty.get(), &o, nullptr));
    gclip_result r = testutil::result_of(empty.get());
    EXPECT_EQ(r.total_norm, 0.0f);
    EXPECT_EQ(r.clip_coef, 1.0f);
    EXPECT_EQ(r.sequence, 1u);

    Paired zeros({{GCLIP_F32, 0, 0}, {GCLIP_F16, 0, 3}, {GCLIP_BF16, 0, 1}, {GCLIP_F64, 0, 1}}, 5);
    OpArgs a;
    a.op = GCLIP_OP_CLIP_PER_TENSOR;
    gclip_result cr;
    zeros.run_and_compare(a, &cr);
    EXPECT_EQ(cr.total_norm, 0.0f);
    zeros.run_and_compare(steps_for(GCLIP_OP_FINALIZE, a.options), &cr);
    EXPECT_EQ(cr.total_norm, 0.0f);
}

TEST_F(GpuShapesTest, UnclippedStepWritesNothing)
{
    Paired pair(edge_specs(GCLIP_F16, true), 31);
    for (int32_t op : {GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_FACTOR, GCLIP_OP_CLIP_WITH_NORM}) {
        SCOPED_TRACE(op_name(op));
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.max_norm = INFINITY;
        pair.reset();
        pair.run_and_compare(steps_for(op, o, 3.0f));
        const auto dev = pair.download();
        EXPECT_EQ(oracle::fnv1a(dev.data(), dev.size()),
                  oracle::fnv1a(pair.pristine_bytes(), pair.bytes()));
    }
}

TEST_F(GpuShapesTest, InvScaleIsAppliedInTheSamePass)
{
    Paired pair(edge_specs(GCLIP_F32, true), 8);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.inv_scale = 1.0f / 1024.0f;
    o.max_norm = 0.5f * pair.total_norm(2.0f, o.inv_scale);
    for (int32_t op : {GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR, GCLIP_OP_CLIP_FACTOR,
                       GCLIP_OP_FINALIZE}) {
        SCOPED_TRACE(op_name(op));
        pair.reset();
        pair.run_and_compare(steps_for(op, o));
    }
}

using GpuNonFiniteTest = GpuTest;

TEST_F(GpuNonFiniteTest, EveryPolicyMatchesCpuPath)
{
    for (float bad : {NAN, INFINITY})
        for (gclip_nonfinite_policy pol :
             {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_PROPAGATE, GCLIP_NONFINITE_ERROR})
            for (int32_t op : {GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR, GCLIP_OP_CLIP_FACTOR,
                               GCLIP_OP_FINALIZE, GCLIP_OP_CLIP_WITH_NORM}) {
                Paired pair(table_specs(GCLIP_F32, true), 55);
                pair.set_element(20, 3, bad);
                pair.reset();
                gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
                o.nonfinite = pol;
                o.max_norm = 1.0f;
                SCOPED_TRACE(std::string(op_name(op)) + " policy " + std::to_string(pol) +
                             " value " + std::to_string(bad));
                const Steps steps = steps_for(op, o, bad);
                for (const OpArgs &a : steps) {
                    ASSERT_EQ(run_op(pair.cpu(), a, nullptr, nullptr), GCLIP_STATUS_SUCCESS);
                    ASSERT_EQ(run_op(pair.gpu(), a, nullptr, nullptr), GCLIP_STATUS_SUCCESS)
                        << gclip_last_error();
                }
                gclip_status cst, gst;
                const gclip_result cr = testutil::result_of(pair.cpu(), &cst);
                const gclip_result gr = testutil::result_of(pair.gpu(), &gst);
                EXPECT_EQ(gst, cst);
                if (steps.back().op != GCLIP_OP_APPLY) {
                    EXPECT_EQ(gst, pol == GCLIP_NONFINITE_ERROR ? GCLIP_STATUS_NONFINITE
                                                                : GCLIP_STATUS_SUCCESS);
                }
                EXPECT_EQ(gr.nonfinite, 1);
                expect_results_close(gr, cr);
                // SKIP and ERROR write nothing: bit for bit. PROPAGATE makes
                // NaNs whose payload is the hardware's (x86 keeps the
                // operand's, CUDA gives its canonical NaN), so NaN == NaN.
                pair.expect_data_match(pol != GCLIP_NONFINITE_PROPAGATE);
            }
}

} // namespace
} // namespace gpu
