// test_gpu_contract.cpp - the step contract (include/gclip.h) on a device:
// scalars in device memory read at each replay of a captured graph, the
// result slot's sequence across capture, eager calls and replays, the
// phases across several plans ("ranks"), out-of-range scalars at execution,
// and long runs of eager steps and replays that must stay bitwise equal.
#include "gpu_fixture.hpp"
#include "gclip_tables.h" // GCLIP_CHUNK_ELEMS

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace gpu {
namespace {

using GpuContractTest = GpuTest;

// The scalars a step reads at execution, in one device allocation.
struct DeviceScalars {
    DeviceBuffer buf{3 * sizeof(float)};
    float *max_norm() const { return buf.as<float>(); }
    float *inv_scale() const { return buf.as<float>() + 1; }
    float *norm() const { return buf.as<float>() + 2; }
    // new values, in `stream` order
    void set(const float (&v)[3], cudaStream_t stream) const
    {
        GPU_EXPECT_CUDA(cudaMemcpyAsync(buf.get(), v, sizeof v, cudaMemcpyHostToDevice, stream));
    }
};

// One call sequence on a plan with options whose scalars live behind
// pointers (`norm` for the given-norm clip).
using Calls = std::function<gclip_status(gclip_plan *, const gclip_norm_options &, const float *norm,
                                         gclip_stream)>;

struct Sequence {
    const char *name;
    Calls calls;
};

std::vector<Sequence> pointer_sequences()
{
    return {
        {"clip_grad_norm",
         [](gclip_plan *p, const gclip_norm_options &o, const float *, gclip_stream s) {
             return gclip_clip_grad_norm(p, &o, s);
         }},
        {"per_tensor",
         [](gclip_plan *p, const gclip_norm_options &o, const float *, gclip_stream s) {
             return gclip_clip_grad_norm_per_tensor(p, &o, s);
         }},
        {"factor_then_apply",
         [](gclip_plan *p, const gclip_norm_options &o, const float *, gclip_stream s) {
             const gclip_status st = gclip_compute_clip_factor(p, &o, s);
             return st != GCLIP_STATUS_SUCCESS ? st : gclip_apply_clip_factor(p, s);
         }},
        {"accumulate_finalize_apply",
         [](gclip_plan *p, const gclip_norm_options &o, const float *, gclip_stream s) {
             gclip_status st = gclip_norm_accumulate(p, &o, s);
             st = st != GCLIP_STATUS_SUCCESS ? st : gclip_norm_finalize(p, &o, nullptr, 0, s);
             return st != GCLIP_STATUS_SUCCESS ? st : gclip_apply_clip_factor(p, s);
         }},
        {"clip_grads_with_norm",
         [](gclip_plan *p, const gclip_norm_options &o, const float *n, gclip_stream s) {
             return gclip_clip_grads_with_norm(p, &o, 0.0f, n, s);
         }},
    };
}

// Capture a sequence once, its scalars behind device pointers; before each
// replay the device floats change (in stream order). Each replay must use
// the values current when it runs: the CPU path given those values (behind
// host pointers) is the reference, and the coefficient and factor are
// exactly those of the replay's values.
TEST_F(GpuContractTest, DeviceScalarsChangedBetweenGraphReplaysAreUsed)
{
    Stream stream;
    Paired pair(edge_specs(GCLIP_F32, true), 311, 2.0);
    DeviceScalars dev;
    float host[3] = {0.0f, 1.0f, 1.0f};
    gclip_norm_options gpu_o = GCLIP_NORM_OPTIONS_INIT, cpu_o = GCLIP_NORM_OPTIONS_INIT;
    gpu_o.max_norm = cpu_o.max_norm = 123.0f; // never read: the pointers win
    gpu_o.max_norm_ptr = dev.max_norm();
    gpu_o.inv_scale_ptr = dev.inv_scale();
    cpu_o.max_norm_ptr = &host[0];
    cpu_o.inv_scale_ptr = &host[1];
    // (max_norm as a fraction of the scaled norm, inv_scale, given norm)
    const float steps[][3] = {{0.5f, 1.0f, 4.0f}, {0.25f, 0.125f, 40.0f},
                              {INFINITY, 0.5f, 0.5f}, {2.0f, 1.0f, 4.0f}};
    for (const Sequence &seq : pointer_sequences()) {
        SCOPED_TRACE(seq.name);
        cudaGraph_t graph = nullptr;
        GPU_ASSERT_CUDA(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
        const gclip_status cs = seq.calls(pair.gpu(), gpu_o, dev.norm(), stream.get());
        GPU_ASSERT_CUDA(cudaStreamEndCapture(stream.get(), &graph));
        ASSERT_EQ(cs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
        cudaGraphExec_t exec = nullptr;
        GPU_ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));

        float previous_scale = NAN;
        for (const auto &step : steps) {
            const float n = pair.total_norm(2.0f, step[1]);
            const float v[3] = {std::isinf(step[0]) ? step[0] : step[0] * n, step[1], step[2]};
            SCOPED_TRACE("max_norm " + std::to_string(v[0]) + " inv_scale " +
                         std::to_string(v[1]) + " norm " + std::to_string(v[2]));
            std::memcpy(host, v, sizeof host);
            pair.reset();
            ASSERT_EQ(seq.calls(pair.cpu(), cpu_o, &host[2], nullptr), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
            dev.set(v, stream.get());
            GPU_ASSERT_CUDA(cudaGraphLaunch(exec, stream.get()));
            gclip_status cst, gst;
            const gclip_result cr = testutil::result_of(pair.cpu(), &cst);
            const gclip_result gr = testutil::result_of(pair.gpu(), &gst);
            EXPECT_EQ(gst, cst) << gclip_last_error();
            expect_results_close(gr, cr);
            pair.expect_data_match(false);
            if (std::strcmp(seq.name, "per_tensor") != 0) {
                const float coef = oracle::expected_coef(gr.total_norm, v[0], gpu_o.eps);
                EXPECT_EQ(gr.clip_coef, coef) << "not the coefficient of this replay's max_norm";
                EXPECT_EQ(gr.scale, coef * v[1]) << "not the factor of this replay's values";
                EXPECT_NE(gr.scale, previous_scale) << "a replay kept the previous values";
                previous_scale = gr.scale;
            }
            if (HasFailure())
                break;
        }
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        if (HasFailure())
            return;
    }
}

// gclip_get_result waits for whichever operation of the plan was issued
// last, an eager call or a replay, on whatever stream, with no
// synchronization by the caller, and the slot's sequence counts every
// operation: capture counts none, each replay counts the operations it
// holds. The graph computes the factor without applying it, so the
// gradients stay as they are until the last, eager, clip.
TEST_F(GpuContractTest, GetResultFollowsCaptureEagerCallsAndReplays)
{
    Stream s1, s2;
    Paired pair(random_specs(40, 100000, 21), 22);
    OpArgs factor, clip, total;
    factor.op = GCLIP_OP_CLIP_FACTOR;
    clip.op = GCLIP_OP_CLIP_NORM;
    factor.options.max_norm = clip.options.max_norm = 0.5f * pair.total_norm(2.0f);
    total.op = GCLIP_OP_TOTAL_NORM;

    cudaGraph_t graph = nullptr;
    GPU_ASSERT_CUDA(cudaStreamBeginCapture(s1.get(), cudaStreamCaptureModeGlobal));
    const gclip_status cs = run_op(pair.gpu(), factor, nullptr, s1.get());
    GPU_ASSERT_CUDA(cudaStreamEndCapture(s1.get(), &graph));
    ASSERT_EQ(cs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
    cudaGraphExec_t exec = nullptr;
    GPU_ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));

    gclip_result r;
    GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &r));
    EXPECT_EQ(r.op, GCLIP_OP_NONE) << "capturing ran the step";
    EXPECT_EQ(r.sequence, 0u);

    // the same order on the CPU plan gives the reference of each result
    struct Issue {
        const char *what;
        std::function<void()> gpu;
        const OpArgs *cpu;
    };
    auto eager = [&](const OpArgs &a, cudaStream_t s) {
        EXPECT_EQ(run_op(pair.gpu(), a, nullptr, s), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    };
    const std::vector<Issue> issues = {
        {"eager total_norm on s2", [&] { eager(total, s2.get()); }, &total},
        {"replay on s1", [&] { GPU_EXPECT_CUDA(cudaGraphLaunch(exec, s1.get())); }, &factor},
        {"eager total_norm on s1", [&] { eager(total, s1.get()); }, &total},
        {"replay on s2", [&] { GPU_EXPECT_CUDA(cudaGraphLaunch(exec, s2.get())); }, &factor},
        {"replay on s1 again", [&] { GPU_EXPECT_CUDA(cudaGraphLaunch(exec, s1.get())); }, &factor},
        {"eager clip on s2", [&] { eager(clip, s2.get()); }, &clip},
    };
    uint32_t sequence = 0;
    gclip_result first_replay{};
    for (const Issue &is : issues) {
        SCOPED_TRACE(is.what);
        is.gpu();
        ASSERT_EQ(run_op(pair.cpu(), *is.cpu, nullptr, nullptr), GCLIP_STATUS_SUCCESS);
        ++sequence;
        GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &r));
        const gclip_result cr = testutil::result_of(pair.cpu());
        EXPECT_EQ(r.sequence, sequence);
        EXPECT_EQ(r.op, is.cpu->op);
        expect_results_close(r, cr);
        if (is.cpu == &factor) {
            if (first_replay.op == GCLIP_OP_NONE)
                first_replay = r;
            const gclip_result a = without_sequence(r), b = without_sequence(first_replay);
            EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "replays disagree";
        }
        // the data the step left, read after get_result alone
        pair.expect_data_match(false);
    }
    EXPECT_EQ(r.applied, 1);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
}

// Many replays of a graph of every norm-kernel op and the apply leave the
// tickets where they found them: the slot's sequence counts every replayed
// operation, every replay gives bitwise the first one's result, and the next
// step, eager, is still right.
TEST_F(GpuContractTest, TicketsBackAtZeroAfterManyReplays)
{
    Stream stream;
    Paired pair(long_run_specs(200, 150000, 41), 42);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = INFINITY; // factors exactly 1: the replays write no gradient
    const Steps steps = {steps_for(GCLIP_OP_TOTAL_NORM, o)[0], steps_for(GCLIP_OP_CLIP_FACTOR, o)[0],
                         steps_for(GCLIP_OP_CLIP_FACTOR, o)[1],
                         steps_for(GCLIP_OP_CLIP_PER_TENSOR, o)[0],
                         steps_for(GCLIP_OP_ACCUMULATE, o)[0], steps_for(GCLIP_OP_FINALIZE, o)[1]};
    cudaGraph_t graph = nullptr;
    GPU_ASSERT_CUDA(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
    for (const OpArgs &a : steps)
        EXPECT_EQ(run_op(pair.gpu(), a, nullptr, stream.get()), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
    GPU_ASSERT_CUDA(cudaStreamEndCapture(stream.get(), &graph));
    cudaGraphExec_t exec = nullptr;
    GPU_ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));

    const int kReplays = 500;
    gclip_result first{};
    for (int i = 0; i < kReplays; ++i) {
        GPU_ASSERT_CUDA(cudaGraphLaunch(exec, stream.get()));
        if (i == 0 || i == kReplays - 1 || i % 97 == 0) {
            gclip_result r;
            GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &r));
            ASSERT_EQ(r.sequence, static_cast<uint32_t>((i + 1) * steps.size())) << "replay " << i;
            if (i == 0)
                first = r;
            const gclip_result a = without_sequence(r), b = without_sequence(first);
            ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "replay " << i << " differs from the first";
        }
    }
    EXPECT_EQ(first.op, GCLIP_OP_FINALIZE);
    const auto dev = pair.download();
    EXPECT_EQ(oracle::fnv1a(dev.data(), dev.size()), oracle::fnv1a(pair.pristine_bytes(), pair.bytes()));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);

    // the next step alone: a ticket off 0 would pick the wrong last block
    OpArgs clip;
    clip.op = GCLIP_OP_CLIP_NORM;
    clip.options.max_norm = 0.5f * pair.total_norm(2.0f);
    pair.run_and_compare(clip, nullptr, stream.get());
    pair.reset();
    pair.run_and_compare(steps_for(GCLIP_OP_CLIP_FACTOR, clip.options), nullptr, stream.get());
}

// A thousand eager steps and a thousand replays of the same step on the same
// data give bitwise the first step's result and data.
TEST_F(GpuContractTest, ThousandEagerStepsAndReplaysEqualTheFirstBitwise)
{
    Stream stream;
    Paired pair(long_run_specs(100, 200000, 31), 32);
    OpArgs clip;
    clip.op = GCLIP_OP_CLIP_NORM;
    clip.options.max_norm = 0.5f * pair.total_norm(2.0f);
    const int kSteps = 1000;

    gclip_result first{};
    std::vector<unsigned char> first_data;
    for (int i = 0; i < kSteps; ++i) {
        pair.reset_async(stream.get()); // the pristine data, in stream order
        ASSERT_EQ(run_op(pair.gpu(), clip, nullptr, stream.get()), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        gclip_result r;
        GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &r));
        if (i == 0) {
            first = r;
            first_data = pair.download();
            ASSERT_LT(first.scale, 1.0f);
            continue;
        }
        ASSERT_EQ(r.sequence, first.sequence + static_cast<uint32_t>(i));
        const gclip_result a = without_sequence(r), b = without_sequence(first);
        ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "eager step " << i;
        if (i % 250 == 0) {
            ASSERT_TRUE(pair.download() == first_data) << "eager step " << i;
        }
    }
    EXPECT_TRUE(pair.download() == first_data);

    cudaGraph_t graph = nullptr;
    GPU_ASSERT_CUDA(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
    const gclip_status cs = run_op(pair.gpu(), clip, nullptr, stream.get());
    GPU_ASSERT_CUDA(cudaStreamEndCapture(stream.get(), &graph));
    ASSERT_EQ(cs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
    cudaGraphExec_t exec = nullptr;
    GPU_ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    for (int i = 0; i < kSteps; ++i) {
        pair.reset_async(stream.get());
        GPU_ASSERT_CUDA(cudaGraphLaunch(exec, stream.get()));
        gclip_result r;
        GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &r));
        ASSERT_EQ(r.sequence, first.sequence + static_cast<uint32_t>(kSteps + i));
        const gclip_result a = without_sequence(r), b = without_sequence(first);
        ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "replay " << i;
        if (i % 250 == 0) {
            ASSERT_TRUE(pair.download() == first_data) << "replay " << i;
        }
    }
    EXPECT_TRUE(pair.download() == first_data);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
}

// Three "ranks" accumulate on their own plans, their partials are gathered
// into one device array in stream order, and every rank finalizes that array
// and applies the factor: all ranks get bitwise the same norm and factor,
// equal to the CPU finalize of the same array (bitwise where no exp2/log2 is
// involved), and their data matches the CPU path's. A foreign partial makes
// every finalize say MISMATCH and write nothing.
TEST_F(GpuContractTest, FinalizeOfGatheredPartialsAcrossRanks)
{
    Stream stream;
    std::vector<std::unique_ptr<Paired>> ranks;
    for (uint64_t r = 0; r < 3; ++r)
        ranks.push_back(std::make_unique<Paired>(random_specs(30 + 10 * r, 150000, 50 + r), 60 + r));
    DeviceBuffer gathered(3 * sizeof(gclip_partial));
    gclip_partial *dev_parts = gathered.as<gclip_partial>();
    for (float p : {2.0f, 1.0f, INFINITY, 3.0f}) {
        SCOPED_TRACE("p " + std::to_string(p));
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.norm_type = p;
        o.max_norm = 0.5f * ranks[0]->total_norm(p);
        std::vector<gclip_partial> cpu_parts(3);
        for (std::size_t r = 0; r < 3; ++r) {
            Paired &pr = *ranks[r];
            pr.reset();
            GPU_ASSERT_OK(gclip_norm_accumulate(pr.gpu(), &o, stream.get()));
            const gclip_partial *own = nullptr;
            GPU_ASSERT_OK(gclip_plan_partial(pr.gpu(), &own));
            GPU_ASSERT_CUDA(cudaMemcpyAsync(dev_parts + r, own, sizeof(gclip_partial),
                                            cudaMemcpyDeviceToDevice, stream.get()));
            GPU_ASSERT_OK(gclip_norm_accumulate(pr.cpu(), &o, nullptr));
            const gclip_partial *cpu_own = nullptr;
            GPU_ASSERT_OK(gclip_plan_partial(pr.cpu(), &cpu_own));
            cpu_parts[r] = *cpu_own;
        }
        std::vector<gclip_result> results;
        for (std::size_t r = 0; r < 3; ++r) {
            Paired &pr = *ranks[r];
            GPU_ASSERT_OK(gclip_norm_finalize(pr.gpu(), &o, dev_parts, 3, stream.get()));
            GPU_ASSERT_OK(gclip_apply_clip_factor(pr.gpu(), stream.get()));
            GPU_ASSERT_OK(gclip_norm_finalize(pr.cpu(), &o, cpu_parts.data(), 3, nullptr));
            GPU_ASSERT_OK(gclip_apply_clip_factor(pr.cpu(), nullptr));
            gclip_result gr;
            GPU_ASSERT_OK(gclip_get_result(pr.gpu(), &gr));
            const gclip_result cr = testutil::result_of(pr.cpu());
            EXPECT_EQ(gr.op, GCLIP_OP_APPLY);
            expect_results_close(gr, cr);
            pr.expect_data_match(false);
            results.push_back(gr);
            EXPECT_EQ(std::memcmp(&results[r].total_norm, &results[0].total_norm, 3 * sizeof(float)), 0)
                << "rank " << r << " disagrees with rank 0";
        }
        // the CPU finalize of the very array the device folded
        std::vector<gclip_partial> host_copy(3);
        GPU_ASSERT_CUDA(cudaMemcpy(host_copy.data(), dev_parts, 3 * sizeof(gclip_partial),
                                   cudaMemcpyDeviceToHost));
        GPU_ASSERT_OK(gclip_norm_finalize(ranks[0]->cpu(), &o, host_copy.data(), 3, nullptr));
        const gclip_result same_input = testutil::result_of(ranks[0]->cpu());
        if (p != 3.0f)
            EXPECT_EQ(std::memcmp(&same_input.total_norm, &results[0].total_norm, 3 * sizeof(float)), 0)
                << "finalize of the same partials: cpu " << same_input.total_norm << " gpu "
                << results[0].total_norm;
        else {
            // the device result is the apply's (op APPLY, applied); the CPU
            // finalize alone has neither: compare the norm, factor and flags
            gclip_result finalized = results[0];
            finalized.op = same_input.op;
            finalized.applied = same_input.applied;
            EXPECT_EQ(results[0].op, GCLIP_OP_APPLY);
            expect_results_close(finalized, same_input);
        }
    }

    // a partial of another norm type: MISMATCH, nothing written
    gclip_norm_options l2 = GCLIP_NORM_OPTIONS_INIT, l1 = GCLIP_NORM_OPTIONS_INIT;
    l2.max_norm = l1.max_norm = 1e-3f;
    l1.norm_type = 1.0f;
    for (std::size_t r = 0; r < 3; ++r) {
        Paired &pr = *ranks[r];
        pr.reset();
        GPU_ASSERT_OK(gclip_norm_accumulate(pr.gpu(), r == 1 ? &l1 : &l2, stream.get()));
        const gclip_partial *own = nullptr;
        GPU_ASSERT_OK(gclip_plan_partial(pr.gpu(), &own));
        GPU_ASSERT_CUDA(cudaMemcpyAsync(dev_parts + r, own, sizeof(gclip_partial),
                                        cudaMemcpyDeviceToDevice, stream.get()));
    }
    for (std::size_t r = 0; r < 3; ++r) {
        Paired &pr = *ranks[r];
        GPU_ASSERT_OK(gclip_norm_finalize(pr.gpu(), &l2, dev_parts, 3, stream.get()));
        gclip_result fin;
        EXPECT_EQ(gclip_get_result(pr.gpu(), &fin), GCLIP_STATUS_MISMATCH);
        EXPECT_EQ(fin.scale, 1.0f);
        GPU_ASSERT_OK(gclip_apply_clip_factor(pr.gpu(), stream.get()));
        gclip_result after;
        EXPECT_EQ(gclip_get_result(pr.gpu(), &after), GCLIP_STATUS_MISMATCH);
        const auto dev = pr.download();
        EXPECT_EQ(std::memcmp(dev.data(), pr.pristine_bytes(), pr.bytes()), 0)
            << "rank " << r << " was written";
    }
}

// A gathered array of many partials (a large group): the device finalize
// folds it a leaf a thread in the shape the CPU folds it one partial after
// the other, so norm, coefficient and factor are bitwise the CPU finalize's
// of the same array, for counts on each side of 32 and of 1,024 and p = 2,
// 1, Inf (p = 3 takes exp2/log2, whose last bit may differ on the device);
// the norm is the long-double sum's within 1e-6. A foreign partial in the
// last leaf makes the slot say MISMATCH, factor 1.
TEST_F(GpuContractTest, LargeGatheredArraysFoldToTheCpuFinalizesBits)
{
    Stream stream;
    Paired pair(random_specs(8, 1000, 80), 81);
    std::mt19937_64 rng(8201);
    std::uniform_real_distribution<double> mant(0.5, 2.0);
    std::uniform_int_distribution<int> expo(-6, 6);
    // a partial's fingerprint, as an accumulate with these options makes it
    const auto fingerprint_of = [&](const gclip_norm_options &o) {
        EXPECT_EQ(gclip_norm_accumulate(pair.cpu(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        const gclip_partial *own = nullptr;
        EXPECT_EQ(gclip_plan_partial(pair.cpu(), &own), GCLIP_STATUS_SUCCESS);
        return own ? own->fingerprint : 0u;
    };
    for (uint32_t count : {33u, 1000u, 1025u, 70001u}) {
        DeviceBuffer buf(count * sizeof(gclip_partial));
        gclip_partial *dev_parts = buf.as<gclip_partial>();
        std::vector<gclip_partial> parts(count);
        for (float p : {2.0f, 1.0f, INFINITY}) {
            SCOPED_TRACE("count " + std::to_string(count) + ", p " + std::to_string(p));
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.norm_type = p;
            const uint32_t fp = fingerprint_of(o);
            long double exact = 0.0L;
            for (gclip_partial &x : parts) {
                x = gclip_partial{std::ldexp(mant(rng), expo(rng)), 0u, fp};
                exact = std::isinf(p) ? std::max(exact, static_cast<long double>(x.acc))
                                      : exact + static_cast<long double>(x.acc);
            }
            const long double want = p == 2.0f ? std::sqrt(exact) : exact;
            o.max_norm = static_cast<float>(want / 3.0L);
            GPU_ASSERT_CUDA(cudaMemcpyAsync(dev_parts, parts.data(), count * sizeof(gclip_partial),
                                            cudaMemcpyHostToDevice, stream.get()));
            GPU_ASSERT_OK(gclip_norm_finalize(pair.gpu(), &o, dev_parts, count, stream.get()));
            gclip_result gr;
            GPU_ASSERT_OK(gclip_get_result(pair.gpu(), &gr));
            GPU_ASSERT_OK(gclip_norm_finalize(pair.cpu(), &o, parts.data(), count, nullptr));
            const gclip_result cr = testutil::result_of(pair.cpu());
            EXPECT_EQ(std::memcmp(&gr.total_norm, &cr.total_norm, 3 * sizeof(float)), 0)
                << "gpu " << gr.total_norm << " cpu " << cr.total_norm;
            EXPECT_TRUE(oracle::rel_close(gr.total_norm, want, 1e-6L))
                << gr.total_norm << " vs " << static_cast<double>(want);
            EXPECT_LT(gr.clip_coef, 0.5f);

            gclip_norm_options l3 = o;
            l3.norm_type = 3.0f;
            parts[count - 1].fingerprint = fingerprint_of(l3);
            ASSERT_NE(parts[count - 1].fingerprint, fp);
            GPU_ASSERT_CUDA(cudaMemcpyAsync(dev_parts, parts.data(), count * sizeof(gclip_partial),
                                            cudaMemcpyHostToDevice, stream.get()));
            GPU_ASSERT_OK(gclip_norm_finalize(pair.gpu(), &o, dev_parts, count, stream.get()));
            EXPECT_EQ(gclip_get_result(pair.gpu(), &gr), GCLIP_STATUS_MISMATCH);
            EXPECT_EQ(gr.scale, 1.0f);
            if (::testing::Test::HasFailure())
                return;
        }
    }
}

// A scalar read at execution that the host would have rejected: no gradient
// written, and gclip_get_result says INVALID_ARGUMENT, as on the CPU path.
TEST_F(GpuContractTest, OutOfRangeDeviceScalarWritesNothing)
{
    Stream stream;
    Paired pair(edge_specs(GCLIP_F32, true), 71);
    DeviceScalars dev;
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm_ptr = dev.max_norm();
    o.inv_scale_ptr = dev.inv_scale();
    const float bad[][3] = {{-0.5f, 1.0f, 1.0f}, {NAN, 1.0f, 1.0f}, {0.5f, 0.0f, 1.0f},
                            {0.5f, -1.0f, 1.0f}, {0.5f, INFINITY, 1.0f}, {0.5f, NAN, 1.0f}};
    for (const Sequence &seq : pointer_sequences())
        for (const auto &b : bad) {
            SCOPED_TRACE(std::string(seq.name) + " max_norm " + std::to_string(b[0]) +
                         " inv_scale " + std::to_string(b[1]));
            pair.reset();
            dev.set(b, stream.get());
            ASSERT_EQ(seq.calls(pair.gpu(), o, dev.norm(), stream.get()), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
            gclip_result r;
            EXPECT_EQ(gclip_get_result(pair.gpu(), &r), GCLIP_STATUS_INVALID_ARGUMENT);
            EXPECT_EQ(r.applied, 0);
            EXPECT_EQ(r.scale, 1.0f);
            const auto data = pair.download();
            EXPECT_EQ(std::memcmp(data.data(), pair.pristine_bytes(), pair.bytes()), 0)
                << "a gradient was written";
            if (HasFailure())
                return;
        }
}

// max_norm 0 and +Inf read from device memory where max_norm / (N + eps)
// meets 0 x Inf: subnormal gradients with eps 0 (no float reciprocal of
// N + eps), and one gradient near 3e38 with eps 1e38 (N + eps past
// FLT_MAX), in small tensors and tensors of several chunks. Every sequence
// gives coefficient and factor 0 and 1, never NaN, as the CPU path given the
// same values behind host pointers: 0 zeroes every gradient, +Inf writes
// nothing.
TEST_F(GpuContractTest, MaxNormZeroAndInfinityInDeviceMemoryKeepTheirMeaning)
{
    Stream stream;
    const int64_t ch = GCLIP_CHUNK_ELEMS;
    std::vector<Spec> specs = {{GCLIP_F32, 1, 0},          {GCLIP_F32, 37, 1},
                               {GCLIP_F32, 100, 3},        {GCLIP_F32, 2 * ch + 5, 1},
                               {GCLIP_F32, ch + 3, 0}};
    for (int i = 0; i < 30; ++i)
        specs.push_back(Spec{GCLIP_F32, 1 + (i * 389) % 3000, i % 4});
    struct Case {
        const char *name;
        float max_norm, eps;
        double scale;
    };
    const Case cases[] = {{"max_norm 0, subnormal gradients, eps 0", 0.0f, 0.0f, 1e-43},
                          {"max_norm Inf, a gradient near 3e38, eps 1e38", INFINITY, 1e38f, 1.0}};
    for (const Case &c : cases) {
        Paired pair(specs, 331, c.scale);
        if (std::isinf(c.max_norm))
            pair.set_element(0, 0, -2.8e38f);
        pair.reset();
        const float n = pair.total_norm(2.0f);
        ASSERT_TRUE(std::isfinite(n)) << c.name;
        if (c.max_norm == 0.0f) {
            ASSERT_LT(n, 2.9e-39f) << c.name;
        } else {
            ASSERT_TRUE(std::isinf(n + c.eps)) << c.name;
        }
        DeviceScalars dev;
        const float v[3] = {c.max_norm, 1.0f, n};
        float host[3] = {v[0], v[1], v[2]};
        dev.set(v, stream.get());
        gclip_norm_options gpu_o = GCLIP_NORM_OPTIONS_INIT, cpu_o = GCLIP_NORM_OPTIONS_INIT;
        gpu_o.max_norm = cpu_o.max_norm = 1.0f; // never read: the pointers win
        gpu_o.eps = cpu_o.eps = c.eps;
        gpu_o.max_norm_ptr = dev.max_norm();
        gpu_o.inv_scale_ptr = dev.inv_scale();
        cpu_o.max_norm_ptr = &host[0];
        cpu_o.inv_scale_ptr = &host[1];
        const float want = c.max_norm == 0.0f ? 0.0f : 1.0f;
        for (const Sequence &seq : pointer_sequences()) {
            SCOPED_TRACE(std::string(c.name) + ", " + seq.name);
            pair.reset();
            ASSERT_EQ(seq.calls(pair.cpu(), cpu_o, &host[2], nullptr), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
            ASSERT_EQ(seq.calls(pair.gpu(), gpu_o, dev.norm(), stream.get()), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
            gclip_status cst, gst;
            const gclip_result cr = testutil::result_of(pair.cpu(), &cst);
            const gclip_result gr = testutil::result_of(pair.gpu(), &gst);
            EXPECT_EQ(gst, GCLIP_STATUS_SUCCESS) << gclip_last_error();
            EXPECT_EQ(cst, GCLIP_STATUS_SUCCESS);
            expect_results_close(gr, cr);
            if (std::strcmp(seq.name, "per_tensor") != 0) {
                EXPECT_EQ(gr.clip_coef, want);
                EXPECT_EQ(gr.scale, want);
            }
            pair.expect_data_match(true);
            const auto data = pair.download();
            if (c.max_norm == 0.0f) {
                for (std::size_t k = 0; k < pair.count(); ++k) {
                    const float *x = reinterpret_cast<const float *>(data.data() + pair.offset_of(k));
                    for (int64_t i = 0; i < pair.specs()[k].numel; ++i)
                        ASSERT_EQ(x[i], 0.0f) << "tensor " << k << " element " << i;
                }
            } else {
                EXPECT_EQ(std::memcmp(data.data(), pair.pristine_bytes(), pair.bytes()), 0)
                    << "a gradient was written";
            }
            if (HasFailure())
                return;
        }
    }
}

} // namespace
} // namespace gpu
