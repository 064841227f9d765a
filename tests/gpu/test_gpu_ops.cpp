// test_gpu_ops.cpp - every operation, dtype and norm type on the CUDA backend
// against the CPU path, on seeded random data.
#include "gpu_fixture.hpp"

#include <cmath>
#include <tuple>

namespace gpu {
namespace {

// A max_norm that makes the clip coefficient about 1/2, so that the scale
// kernel really writes.
float half_of_norm(const Paired &p, float norm_type)
{
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.norm_type = norm_type;
    EXPECT_EQ(gclip_total_norm(p.cpu(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(p.cpu());
    return r.total_norm * 0.5f;
}

enum class Mix { f32, f16, bf16, mixed };

gclip_dtype dtype_of(Mix m)
{
    return m == Mix::f16 ? GCLIP_F16 : m == Mix::bf16 ? GCLIP_BF16 : GCLIP_F32;
}

const char *mix_name(Mix m)
{
    return m == Mix::f32 ? "f32" : m == Mix::f16 ? "f16" : m == Mix::bf16 ? "bf16" : "mixed";
}

using OpCase = std::tuple<Op, Mix, float>;

class GpuOpsTest : public GpuTest, public ::testing::WithParamInterface<OpCase> {};

TEST_P(GpuOpsTest, MatchesCpuPathOnEdgeSizesAndUnalignedStarts)
{
    const auto [op, mix, p] = GetParam();
    Paired pair(edge_specs(dtype_of(mix), mix == Mix::mixed), 1234, 2.0);
    OpArgs a;
    a.op = op;
    a.options.norm_type = p;
    a.options.max_norm = half_of_norm(pair, p);
    a.clip_value = 0.5f;
    pair.run_and_compare(a);
}

std::string op_case_name(const ::testing::TestParamInfo<OpCase> &param_info)
{
    const Op op = std::get<0>(param_info.param);
    const Mix mix = std::get<1>(param_info.param);
    const float p = std::get<2>(param_info.param);
    const std::string pn = std::isinf(p) ? "inf" : p == 0.5f ? "half" : std::to_string(int(p));
    return std::string(op_name(op)) + "_" + mix_name(mix) + "_p" + pn;
}

INSTANTIATE_TEST_SUITE_P(
    AllOpsDtypesNorms, GpuOpsTest,
    ::testing::Combine(::testing::Values(Op::total, Op::global, Op::per_tensor, Op::value),
                       ::testing::Values(Mix::f32, Mix::f16, Mix::bf16, Mix::mixed),
                       ::testing::Values(1.0f, 2.0f, 3.0f, 0.5f, INFINITY)),
    op_case_name);

class GpuTensorCountTest : public GpuTest, public ::testing::WithParamInterface<std::size_t> {};

TEST_P(GpuTensorCountTest, ClipGradNormAndPerTensorMatchCpuPath)
{
    const std::size_t n = GetParam();
    Paired pair(random_specs(n, 3000, 77 + n), 99 + n);
    for (Op op : {Op::global, Op::per_tensor}) {
        pair.reset();
        OpArgs a;
        a.op = op;
        a.options.max_norm = half_of_norm(pair, 2.0f);
        pair.run_and_compare(a);
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
    std::vector<Spec> specs = {{GCLIP_F32, 5, 1},
                               {GCLIP_BF16, 600 * 65536 + 17, 3},
                               {GCLIP_F16, 0, 0},
                               {GCLIP_F32, 70 * 65536 - 1, 2},
                               {GCLIP_F16, 65537, 5},
                               {GCLIP_BF16, 1, 0}};
    Paired pair(specs, 4242, 0.01);
    for (Op op : {Op::total, Op::global, Op::per_tensor})
        for (float p : {2.0f, INFINITY}) {
            pair.reset();
            OpArgs a;
            a.op = op;
            a.options.norm_type = p;
            a.options.max_norm = half_of_norm(pair, p);
            pair.run_and_compare(a);
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

    Paired zeros({{GCLIP_F32, 0, 0}, {GCLIP_F16, 0, 3}, {GCLIP_BF16, 0, 1}}, 5);
    OpArgs a;
    a.op = Op::per_tensor;
    gclip_result cr;
    zeros.run_and_compare(a, &cr);
    EXPECT_EQ(cr.total_norm, 0.0f);
}

TEST_F(GpuShapesTest, UnclippedStepWritesNothing)
{
    Paired pair(edge_specs(GCLIP_F16, true), 31);
    OpArgs a;
    a.op = Op::global;
    a.options.max_norm = INFINITY;
    pair.run_and_compare(a);
    const auto dev = pair.download();
    EXPECT_EQ(oracle::fnv1a(dev.data(), dev.size()), oracle::fnv1a(pair.pristine_bytes(), pair.bytes()));
}

TEST_F(GpuShapesTest, InvScaleIsAppliedInTheSamePass)
{
    Paired pair(edge_specs(GCLIP_F32, true), 8);
    OpArgs a;
    a.op = Op::global;
    a.options.inv_scale = 1.0f / 1024.0f;
    a.options.max_norm = half_of_norm(pair, 2.0f) / 1024.0f;
    pair.run_and_compare(a);
    a.op = Op::per_tensor;
    pair.reset();
    pair.run_and_compare(a);
}

using GpuNonFiniteTest = GpuTest;

TEST_F(GpuNonFiniteTest, EveryPolicyMatchesCpuPath)
{
    for (float bad : {NAN, INFINITY})
        for (gclip_nonfinite_policy pol :
             {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_PROPAGATE, GCLIP_NONFINITE_ERROR})
            for (Op op : {Op::global, Op::per_tensor}) {
                Paired pair(edge_specs(GCLIP_F32, true), 55);
                pair.set_element(20, 3, bad);
                pair.reset();
                OpArgs a;
                a.op = op;
                a.options.nonfinite = pol;
                a.options.max_norm = 1.0f;
                SCOPED_TRACE(std::string(op_name(op)) + " policy " + std::to_string(pol) +
                             " value " + std::to_string(bad));
                const gclip_status cs = run_op(pair.cpu(), a, nullptr, nullptr);
                const gclip_status gs = run_op(pair.gpu(), a, nullptr, nullptr);
                ASSERT_EQ(cs, GCLIP_STATUS_SUCCESS);
                ASSERT_EQ(gs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
                gclip_status cst, gst;
                const gclip_result cr = testutil::result_of(pair.cpu(), &cst);
                const gclip_result gr = testutil::result_of(pair.gpu(), &gst);
                EXPECT_EQ(gst, cst);
                EXPECT_EQ(gst, pol == GCLIP_NONFINITE_ERROR ? GCLIP_STATUS_NONFINITE
                                                            : GCLIP_STATUS_SUCCESS);
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
