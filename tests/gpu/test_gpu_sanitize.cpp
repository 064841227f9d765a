// test_gpu_sanitize.cpp - the cases compute-sanitizer runs
// (tests/gpu/device_check.sh: memcheck with leak checking, racecheck,
// synccheck): every op and its phases once, eager and replayed from a graph,
// on plans small enough for the slowest tool.
//
//   - a plan of 8 tensors with several blocks, every dtype, odd starts and
//     a multi-chunk tensor, so every kernel's vector head and tail, block
//     reduction, ticket and last-block fold run;
//   - a plan of many small tensors (about 32 chunks per norm block, almost
//     all small, a few larger ones among them), so that each norm block's
//     warps walk several small chunks of a window each, between warp
//     barriers, and the scale and clamp blocks flag windows of small
//     chunks that their warps walk alone, asking for the next ones ahead.
//
// The results are checked against the CPU path as in the rest of the suite.
#include "gpu_fixture.hpp"
#include "tickets.hpp"

#include "gclip_internal.h"
#include "gclip_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace gpu {
namespace {

using GpuSanitizerTest = GpuTest;

std::vector<Spec> small_plan()
{
    const int64_t c = specs::kChunkElems;
    return {{GCLIP_F32, 2 * c + 5, 1}, {GCLIP_F16, 17, 3}, {GCLIP_BF16, c + 1, 1},
            {GCLIP_F64, 255, 1},       {GCLIP_F32, 0, 0},  {GCLIP_F32, 1, 2},
            {GCLIP_F16, 33, 7},        {GCLIP_BF16, 9, 5}};
}

// `count` one-chunk tensors at random starts: 98% of 1..300 elements (a
// small chunk in every dtype), 2% of 2,100..4,000 (more than 256 vectors in
// every dtype: a chunk the block walks together, which also ends a run of
// small ones), dtypes f32, f16 and bf16 with some f64, seeded.
std::vector<Spec> many_small_plan(int count)
{
    static const gclip_dtype dts[] = {GCLIP_F32, GCLIP_F16, GCLIP_BF16, GCLIP_F32,
                                      GCLIP_F16, GCLIP_BF16, GCLIP_F64};
    oracle::Rng rng(9001);
    std::vector<Spec> v;
    for (int i = 0; i < count; ++i) {
        const int64_t numel = rng.range(0, 99) < 2 ? rng.range(2100, 4000) : rng.range(1, 300);
        const gclip_dtype dt = dts[rng.range(0, 6)];
        v.push_back(Spec{dt, numel, static_cast<int>(rng.range(0, 7))});
    }
    return v;
}

// `steps` on the pristine data, eager against the CPU path, then the same
// steps from a graph on the pristine data: bitwise the eager result.
void eager_and_replayed(Paired &pair, const Steps &steps, cudaStream_t stream)
{
    pair.reset();
    pair.run_and_compare(steps, nullptr, stream);
    const auto eager = pair.download();
    pair.reset();
    GraphExec graph(capture(pair.gpu(), steps, stream));
    ASSERT_TRUE(graph.ok());
    GPU_ASSERT_CUDA(graph.launch(stream));
    gclip_result r;
    EXPECT_EQ(gclip_get_result(pair.gpu(), &r), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_TRUE(pair.download() == eager) << "the replay differs from the eager steps";
}

// Every op and phase sequence once (the apply within the factor and
// finalize sequences), eager and replayed.
void every_op_once(Paired &pair, cudaStream_t stream)
{
    for (int32_t op : kAllOps) {
        if (op == GCLIP_OP_APPLY)
            continue;
        SCOPED_TRACE(op_name(op));
        const OpArgs a = clipping(op, pair);
        eager_and_replayed(
            pair, op == GCLIP_OP_CLIP_VALUE ? Steps{a} : steps_for(op, a.options, a.given_norm),
            stream);
        if (::testing::Test::HasFailure())
            return;
    }
}

// The median of the tensors' L2 norms, from the pristine bytes.
float median_tensor_norm(const Paired &pair)
{
    std::vector<double> norms;
    for (std::size_t k = 0; k < pair.count(); ++k) {
        const Spec &s = pair.specs()[k];
        long double sum = 0;
        for (int64_t i = 0; i < s.numel; ++i) {
            const long double x = oracle::load_exact(pair.pristine_bytes() + pair.offset_of(k),
                                                     s.dtype, i);
            sum += x * x;
        }
        norms.push_back(static_cast<double>(std::sqrt(sum)));
    }
    std::nth_element(norms.begin(), norms.begin() + norms.size() / 2, norms.end());
    return static_cast<float>(norms[norms.size() / 2]);
}

// The plan's grid caps, read as tickets.cpp reads its counters: through the
// internal headers, after checking that the plan's CUDA state still starts
// with the device tables whose result slot the public API gives.
bool grid_caps(gclip_plan *plan, uint32_t *norm_cap, uint32_t *scale_cap, uint32_t *chunks)
{
    const gclip_device_result *slot = nullptr;
    if (gclip_plan_device_result(plan, &slot) != GCLIP_STATUS_SUCCESS)
        return false;
    const auto *tables = static_cast<const gclip_device_tables *>(plan->engine);
    if (!tables || static_cast<const void *>(tables->result) != static_cast<const void *>(slot))
        return false;
    *norm_cap = tables->norm_grid_cap;
    *scale_cap = tables->scale_grid_cap;
    *chunks = tables->num_chunks;
    return true;
}

TEST_F(GpuSanitizerTest, EveryOpOnceOnASmallPlanEagerAndReplayed)
{
    Stream stream;
    Paired pair(small_plan(), 77);
    every_op_once(pair, stream.get());
    if (HasFailure())
        return;
    expect_tickets_at_zero(pair.gpu(), "after every op");
}

TEST_F(GpuSanitizerTest, EveryOpOnceOnManySmallTensorsEagerAndReplayed)
{
    // about 32 chunks per norm block: the norm kernel fills each SM with at
    // most 4 blocks of 64 registers a thread
    int sms = 0;
    GPU_ASSERT_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int count = std::max(9000, 128 * sms);
    Stream stream;
    Paired pair(many_small_plan(count), 78);
    ASSERT_NE(pair.gpu(), nullptr);

    uint32_t norm_cap = 0, scale_cap = 0, chunks = 0;
    ASSERT_TRUE(grid_caps(pair.gpu(), &norm_cap, &scale_cap, &chunks))
        << "the plan's CUDA state no longer starts with its device tables "
           "(host/cuda_backend.c): update tests/gpu/test_gpu_sanitize.cpp";
    ASSERT_EQ(chunks, static_cast<uint32_t>(count)) << "a tensor of this plan is one chunk";
    // a norm block's range holds two or more small chunks for each of its 8
    // warps, and a scale block's window holds one or more small chunks for
    // each of its warps
    EXPECT_GE(chunks, 16u * norm_cap) << count << " tensors, norm grid cap " << norm_cap;
    EXPECT_GE(chunks, 8u * scale_cap) << count << " tensors, scale grid cap " << scale_cap;
    if (HasFailure())
        return;

    every_op_once(pair, stream.get());
    if (HasFailure())
        return;
    // per-tensor clipping that clips about half the tensors: windows of
    // small chunks where some are scaled and some left alone
    SCOPED_TRACE("per-tensor clipping at the median tensor norm");
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = median_tensor_norm(pair);
    eager_and_replayed(pair, steps_for(GCLIP_OP_CLIP_PER_TENSOR, o), stream.get());
    if (HasFailure())
        return;
    expect_tickets_at_zero(pair.gpu(), "after every op on many small tensors");
}

} // namespace
} // namespace gpu
