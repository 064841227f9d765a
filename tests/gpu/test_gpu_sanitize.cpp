// test_gpu_sanitize.cpp - the small case compute-sanitizer runs
// (tests/gpu/device_check.sh: memcheck with leak checking, racecheck,
// synccheck): every op and its phases once, eager and replayed from a graph,
// on a plan small enough for the slowest tool yet with several blocks,
// every dtype, odd starts and a multi-chunk tensor, so every kernel's
// vector head and tail, block reduction, ticket and last-block fold run.
// The results are checked against the CPU path as in the rest of the suite.
#include "gpu_fixture.hpp"
#include "tickets.hpp"

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

TEST_F(GpuSanitizerTest, EveryOpOnceOnASmallPlanEagerAndReplayed)
{
    Stream stream;
    Paired pair(small_plan(), 77);
    for (int32_t op : kAllOps) {
        if (op == GCLIP_OP_APPLY)
            continue; // in the factor and finalize sequences
        SCOPED_TRACE(op_name(op));
        const OpArgs a = clipping(op, pair);
        const Steps steps =
            op == GCLIP_OP_CLIP_VALUE ? Steps{a} : steps_for(op, a.options, a.given_norm);
        pair.reset();
        pair.run_and_compare(steps, nullptr, stream.get());

        // the same steps from a graph, on the pristine data: bitwise the eager result
        const auto eager = pair.download();
        pair.reset();
        GraphExec graph(capture(pair.gpu(), steps, stream.get()));
        ASSERT_TRUE(graph.ok());
        GPU_ASSERT_CUDA(graph.launch(stream.get()));
        gclip_result r;
        EXPECT_EQ(gclip_get_result(pair.gpu(), &r), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        EXPECT_TRUE(pair.download() == eager) << "the replay differs from the eager steps";
        if (HasFailure())
            return;
    }
    expect_tickets_at_zero(pair.gpu(), "after every op");
}

} // namespace
} // namespace gpu
