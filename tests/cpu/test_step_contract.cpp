// The step contract on the CPU path: the phases as public calls (compute the
// factor without applying it, apply it once, clip with a norm computed
// elsewhere, accumulate then finalize from partials combined elsewhere),
// scalars read from memory when the step executes, the result slot as the
// one truth (op, flags, status, sequence), versioned options and f64
// gradients. Every figure is checked against the long-double oracle.
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using oracle::TestBuffer;
using testutil::PlanPtr;

namespace {

std::vector<TestBuffer> random_buffers(uint64_t seed, double scale = 2.0)
{
    oracle::Rng rng(seed);
    std::vector<TestBuffer> bufs;
    const int64_t sizes[] = {3, 65537, 1000, 17, 70000, 5};
    int k = 0;
    for (int64_t n : sizes) {
        bufs.emplace_back(static_cast<gclip_dtype>(k % 4), n, k % 3);
        bufs.back().fill(rng, scale);
        ++k;
    }
    return bufs;
}

// Byte-for-byte equality of two buffer sets.
void expect_same_bytes(const std::vector<TestBuffer> &a, const std::vector<TestBuffer> &b)
{
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k)
        ASSERT_EQ(std::memcmp(a[k].data(), b[k].data(), a[k].bytes()), 0) << "tensor " << k;
}

struct TwoCopies {
    std::vector<TestBuffer> a, b;
    PlanPtr pa, pb;
    explicit TwoCopies(uint64_t seed) : a(random_buffers(seed)), b(a)
    {
        EXPECT_EQ(testutil::make_plan(pa, oracle::tensors_of(a)), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(testutil::make_plan(pb, oracle::tensors_of(b)), GCLIP_STATUS_SUCCESS);
    }
};

TEST(StepContract, FactorWithoutApplyThenApplyEqualsTheFusedClip)
{
    TwoCopies t(11);
    const uint64_t before = oracle::checksum(t.b);
    const auto n = oracle::norms(t.a, 2.0, 0.25);
    gclip_norm_options o = testutil::norm_options(0.5f);
    o.inv_scale = 0.25f;
    ASSERT_EQ(gclip_clip_grad_norm(t.pa.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_compute_clip_factor(t.pb.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(oracle::checksum(t.b), before) << "computing the factor wrote gradients";

    const gclip_result fused = testutil::result_of(t.pa.get());
    gclip_result factor = testutil::result_of(t.pb.get());
    EXPECT_EQ(factor.op, GCLIP_OP_CLIP_FACTOR);
    EXPECT_EQ(factor.applied, 0);
    EXPECT_EQ(factor.total_norm, fused.total_norm);
    EXPECT_EQ(factor.clip_coef, fused.clip_coef);
    EXPECT_EQ(factor.scale, fused.scale);
    EXPECT_LT(factor.scale, 1.0f);
    EXPECT_TRUE(oracle::rel_close(factor.total_norm, n.total, 1e-6L));

    ASSERT_EQ(gclip_apply_clip_factor(t.pb.get(), nullptr), GCLIP_STATUS_SUCCESS);
    expect_same_bytes(t.a, t.b);
    const gclip_result applied = testutil::result_of(t.pb.get());
    EXPECT_EQ(applied.op, GCLIP_OP_APPLY);
    EXPECT_EQ(applied.applied, 1);
    EXPECT_EQ(applied.sequence, factor.sequence + 1);

    // a second apply finds no pending factor: nothing written, and it says so
    const uint64_t once = oracle::checksum(t.b);
    ASSERT_EQ(gclip_apply_clip_factor(t.pb.get(), nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(oracle::checksum(t.b), once);
    gclip_status s;
    const gclip_result twice = testutil::result_of(t.pb.get(), &s);
    EXPECT_EQ(s, GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(twice.applied, 0);
    EXPECT_NE(std::string(gclip_last_error()).find("pending"), std::string::npos);
}

TEST(StepContract, ApplyAfterAnOpThatAppliedItselfWritesNothing)
{
    TwoCopies t(12);
    gclip_norm_options o = testutil::norm_options(0.5f);
    ASSERT_EQ(gclip_clip_grad_norm(t.pa.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const uint64_t once = oracle::checksum(t.a);
    ASSERT_EQ(gclip_apply_clip_factor(t.pa.get(), nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(oracle::checksum(t.a), once) << "the factor was applied twice";
}

TEST(StepContract, ClipWithAGivenNormMatchesPyTorchsClipGradsWithNorm)
{
    TwoCopies t(13);
    gclip_norm_options o = testutil::norm_options(0.75f);
    ASSERT_EQ(gclip_clip_grad_norm(t.pa.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(t.pa.get());
    // the same norm, as a value and as a float read from memory at execution
    ASSERT_EQ(gclip_clip_grads_with_norm(t.pb.get(), &o, r.total_norm, nullptr, nullptr),
              GCLIP_STATUS_SUCCESS);
    expect_same_bytes(t.a, t.b);
    const gclip_result w = testutil::result_of(t.pb.get());
    EXPECT_EQ(w.op, GCLIP_OP_CLIP_WITH_NORM);
    EXPECT_EQ(w.scale, r.scale);

    // PyTorch's vector V1 (test_conformance.cpp) through the given-norm path: N = 13, C = 6.5
    TestBuffer g1(GCLIP_F32, 2, 0), g2(GCLIP_F32, 1, 1);
    g1.set(0, 3), g1.set(1, 4), g2.set(0, 12);
    std::vector<gclip_tensor> ts = {g1.tensor(), g2.tensor()};
    PlanPtr p;
    ASSERT_EQ(testutil::make_plan(p, ts), GCLIP_STATUS_SUCCESS);
    o = testutil::norm_options(6.5f);
    float n = 13.0f;
    ASSERT_EQ(gclip_clip_grads_with_norm(p.get(), &o, 0.0f, &n, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(g1.get(0), 1.4999999f);
    EXPECT_EQ(g1.get(1), 1.9999999f);
    EXPECT_EQ(g2.get(0), 5.9999995f);

    // a NaN norm follows the policy: SKIP writes nothing
    const uint64_t before = oracle::checksum(ts.data(), ts.size());
    n = NAN;
    ASSERT_EQ(gclip_clip_grads_with_norm(p.get(), &o, 0.0f, &n, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(oracle::checksum(ts.data(), ts.size()), before);
    EXPECT_EQ(testutil::result_of(p.get()).nonfinite, 1);
}

TEST(StepContract, ScalarsInMemoryAreReadWhenTheStepRuns)
{
    // One options struct, made once (as a captured graph keeps its
    // parameters); the loss scale and threshold change between steps.
    TwoCopies t(14);
    float max_norm = 0.5f, inv_scale = 0.5f;
    gclip_norm_options o = testutil::norm_options(123.0f); // ignored: the pointer wins
    o.max_norm_ptr = &max_norm;
    o.inv_scale_ptr = &inv_scale;
    for (int step = 0; step < 3; ++step) {
        max_norm = 0.5f / float(step + 1);
        inv_scale = 1.0f / float(1 << step);
        const auto want = oracle::norms(t.a, 2.0, inv_scale);
        ASSERT_EQ(gclip_clip_grad_norm(t.pa.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        const gclip_result r = testutil::result_of(t.pa.get());
        EXPECT_TRUE(oracle::rel_close(r.total_norm, want.total, 1e-6L)) << step;
        EXPECT_EQ(r.clip_coef, oracle::expected_coef(r.total_norm, max_norm, 1e-6f)) << step;
        EXPECT_EQ(r.scale, r.clip_coef * inv_scale) << step;
        // the same step with the values in the options gives the same bytes
        gclip_norm_options v = testutil::norm_options(max_norm);
        v.inv_scale = inv_scale;
        ASSERT_EQ(gclip_clip_grad_norm(t.pb.get(), &v, nullptr), GCLIP_STATUS_SUCCESS);
        expect_same_bytes(t.a, t.b);
    }

    // an out-of-range value seen at execution: nothing written, status in the slot
    const uint64_t before = oracle::checksum(t.a);
    for (float bad_inv : {0.0f, -1.0f, INFINITY, NAN}) {
        max_norm = 0.1f;
        inv_scale = bad_inv;
        ASSERT_EQ(gclip_clip_grad_norm(t.pa.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(oracle::checksum(t.a), before) << bad_inv;
        gclip_status s;
        const gclip_result r = testutil::result_of(t.pa.get(), &s);
        EXPECT_EQ(s, GCLIP_STATUS_INVALID_ARGUMENT) << bad_inv;
        EXPECT_EQ(r.applied, 0);
        EXPECT_EQ(r.scale, 1.0f);
    }
    inv_scale = 1.0f;
    for (float bad_max : {-0.5f, NAN}) {
        max_norm = bad_max;
        ASSERT_EQ(gclip_clip_grad_norm_per_tensor(t.pa.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(oracle::checksum(t.a), before) << bad_max;
        gclip_status s;
        testutil::result_of(t.pa.get(), &s);
        EXPECT_EQ(s, GCLIP_STATUS_INVALID_ARGUMENT) << bad_max;
    }
}

TEST(StepContract, AccumulateThenFinalizeAcrossShardsEqualsOnePlan)
{
    // Three "ranks" each own a slice of one tensor set; their partials are
    // gathered (here: copied) and every rank finalizes the same array.
    auto all = random_buffers(15);
    for (float p : {2.0f, 1.0f, INFINITY, 3.0f}) {
        SCOPED_TRACE(p);
        const auto want = oracle::norms(all, p, 0.5);
        std::vector<std::vector<gclip_tensor>> shards(3);
        for (size_t k = 0; k < all.size(); ++k)
            shards[k % 3].push_back(all[k].tensor());
        std::vector<PlanPtr> plans(3);
        std::vector<gclip_partial> gathered(3);
        gclip_norm_options o = testutil::norm_options(0.1f, p);
        o.inv_scale = 0.5f;
        for (int r = 0; r < 3; ++r) {
            ASSERT_EQ(testutil::make_plan(plans[r], shards[r]), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(gclip_norm_accumulate(plans[r].get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
            const gclip_result local = testutil::result_of(plans[r].get());
            EXPECT_EQ(local.op, GCLIP_OP_ACCUMULATE);
            EXPECT_EQ(local.scale, 1.0f);
            const gclip_partial *part = nullptr;
            ASSERT_EQ(gclip_plan_partial(plans[r].get(), &part), GCLIP_STATUS_SUCCESS);
            gathered[r] = *part;
        }
        std::vector<gclip_result> results(3);
        for (int r = 0; r < 3; ++r) {
            ASSERT_EQ(gclip_norm_finalize(plans[r].get(), &o, gathered.data(), 3, nullptr),
                      GCLIP_STATUS_SUCCESS);
            results[r] = testutil::result_of(plans[r].get());
            EXPECT_EQ(results[r].op, GCLIP_OP_FINALIZE);
            EXPECT_TRUE(oracle::rel_close(results[r].total_norm, want.total, 1e-6L))
                << results[r].total_norm << " vs " << static_cast<double>(want.total);
            EXPECT_EQ(std::memcmp(&results[r].total_norm, &results[0].total_norm, 4), 0);
            EXPECT_EQ(results[r].scale, results[0].scale);
        }
        // the host combine folds the same way
        gclip_partial folded = gathered[0];
        ASSERT_EQ(gclip_partial_combine(&folded, &gathered[1]), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_partial_combine(&folded, &gathered[2]), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_norm_finalize(plans[0].get(), &o, &folded, 1, nullptr),
                  GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(testutil::result_of(plans[0].get()).total_norm, results[0].total_norm);
    }
}

TEST(StepContract, FinalizeOfTheOwnPartialEqualsTheFactorOp)
{
    TwoCopies t(16);
    gclip_norm_options o = testutil::norm_options(0.3f);
    ASSERT_EQ(gclip_compute_clip_factor(t.pa.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_norm_accumulate(t.pb.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_norm_finalize(t.pb.get(), &o, nullptr, 0, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result a = testutil::result_of(t.pa.get());
    const gclip_result b = testutil::result_of(t.pb.get());
    EXPECT_EQ(std::memcmp(&a.total_norm, &b.total_norm, 4), 0);
    EXPECT_EQ(a.scale, b.scale);
    ASSERT_EQ(gclip_apply_clip_factor(t.pa.get(), nullptr), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_apply_clip_factor(t.pb.get(), nullptr), GCLIP_STATUS_SUCCESS);
    expect_same_bytes(t.a, t.b);
}

// gclip_partial holds a double: records at an address that is not a multiple
// of its alignment (a byte buffer at an odd offset) are refused, with the
// slot as it was; the same records aligned are folded.
TEST(StepContract, MisalignedPartialsAreRefused)
{
    TwoCopies t(18);
    gclip_norm_options o = testutil::norm_options(0.3f);
    ASSERT_EQ(gclip_norm_accumulate(t.pb.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_partial *own = nullptr;
    ASSERT_EQ(gclip_plan_partial(t.pb.get(), &own), GCLIP_STATUS_SUCCESS);
    alignas(16) unsigned char bytes[sizeof(gclip_partial) * 2 + 16];
    const gclip_result before = testutil::result_of(t.pb.get());
    for (size_t offset : {1u, 4u}) {
        SCOPED_TRACE(offset);
        std::memcpy(bytes + offset, own, sizeof *own);
        const auto *moved = reinterpret_cast<const gclip_partial *>(bytes + offset);
        EXPECT_EQ(gclip_norm_finalize(t.pb.get(), &o, moved, 1, nullptr), GCLIP_STATUS_MISALIGNED);
        EXPECT_NE(std::string(gclip_last_error()).find("alignment"), std::string::npos);
        const gclip_result after = testutil::result_of(t.pb.get());
        EXPECT_EQ(std::memcmp(&before, &after, sizeof before), 0);
    }
    std::memcpy(bytes + 8, own, sizeof *own);
    EXPECT_EQ(gclip_norm_finalize(t.pb.get(), &o, reinterpret_cast<const gclip_partial *>(bytes + 8),
                                  1, nullptr),
              GCLIP_STATUS_SUCCESS);
}

TEST(StepContract, PartialsOfOtherOptionsAreRejectedAndNothingIsWritten)
{
    TwoCopies t(17);
    gclip_norm_options l2 = testutil::norm_options(0.1f, 2.0f);
    gclip_norm_options l1 = testutil::norm_options(0.1f, 1.0f);
    ASSERT_EQ(gclip_norm_accumulate(t.pa.get(), &l1, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_partial *mine = nullptr;
    ASSERT_EQ(gclip_plan_partial(t.pa.get(), &mine), GCLIP_STATUS_SUCCESS);
    const gclip_partial foreign = *mine;
    const uint64_t before = oracle::checksum(t.b);
    ASSERT_EQ(gclip_norm_accumulate(t.pb.get(), &l2, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_partial *own = nullptr;
    ASSERT_EQ(gclip_plan_partial(t.pb.get(), &own), GCLIP_STATUS_SUCCESS);
    const gclip_partial both[2] = {*own, foreign};
    ASSERT_EQ(gclip_norm_finalize(t.pb.get(), &l2, both, 2, nullptr), GCLIP_STATUS_SUCCESS);
    gclip_status s;
    const gclip_result r = testutil::result_of(t.pb.get(), &s);
    EXPECT_EQ(s, GCLIP_STATUS_MISMATCH);
    EXPECT_EQ(r.scale, 1.0f);
    ASSERT_EQ(gclip_apply_clip_factor(t.pb.get(), nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(oracle::checksum(t.b), before);
    gclip_partial a = both[0];
    EXPECT_EQ(gclip_partial_combine(&a, &both[1]), GCLIP_STATUS_MISMATCH);

    // and the policy counts too
    gclip_norm_options prop = l2;
    prop.nonfinite = GCLIP_NONFINITE_PROPAGATE;
    ASSERT_EQ(gclip_norm_finalize(t.pb.get(), &prop, own, 1, nullptr), GCLIP_STATUS_SUCCESS);
    testutil::result_of(t.pb.get(), &s);
    EXPECT_EQ(s, GCLIP_STATUS_MISMATCH);
}

TEST(StepContract, NonFiniteOnOneShardMakesEveryFinalizeSkip)
{
    auto all = random_buffers(18);
    all[4].set(17, NAN);
    std::vector<gclip_tensor> left, right;
    for (size_t k = 0; k < all.size(); ++k)
        (k < 3 ? left : right).push_back(all[k].tensor());
    PlanPtr pl, pr;
    ASSERT_EQ(testutil::make_plan(pl, left), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(testutil::make_plan(pr, right), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(0.01f);
    ASSERT_EQ(gclip_norm_accumulate(pl.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_norm_accumulate(pr.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_partial *a, *b;
    ASSERT_EQ(gclip_plan_partial(pl.get(), &a), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_plan_partial(pr.get(), &b), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(a->nonfinite, 0u);
    EXPECT_EQ(b->nonfinite, 1u);
    const gclip_partial parts[2] = {*a, *b};
    const uint64_t before = oracle::checksum(all);
    for (gclip_plan *p : {pl.get(), pr.get()}) {
        ASSERT_EQ(gclip_norm_finalize(p, &o, parts, 2, nullptr), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_apply_clip_factor(p, nullptr), GCLIP_STATUS_SUCCESS);
        const gclip_result r = testutil::result_of(p);
        EXPECT_EQ(r.nonfinite, 1);
        EXPECT_TRUE(std::isnan(r.total_norm));
    }
    EXPECT_EQ(oracle::checksum(all), before);
}

TEST(StepContract, ResultSlotRecordsOpFlagsAndSequence)
{
    TwoCopies t(19);
    gclip_result r = testutil::result_of(t.pa.get());
    EXPECT_EQ(r.op, GCLIP_OP_NONE);
    EXPECT_EQ(r.sequence, 0u);
    EXPECT_EQ(r.has_norm, 0);
    gclip_norm_options o = testutil::norm_options(0.5f);
    o.nonfinite = GCLIP_NONFINITE_ERROR;
    ASSERT_EQ(gclip_total_norm(t.pa.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_device_result *dev = nullptr;
    ASSERT_EQ(gclip_plan_device_result(t.pa.get(), &dev), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(dev->op, GCLIP_OP_TOTAL_NORM);
    EXPECT_EQ(dev->flags, GCLIP_RESULT_HAS_NORM | GCLIP_RESULT_ERROR_POLICY);
    EXPECT_EQ(dev->sequence, 1u);
    ASSERT_EQ(gclip_clip_grad_value(t.pa.get(), 0.1f, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(dev->op, GCLIP_OP_CLIP_VALUE);
    EXPECT_EQ(dev->sequence, 2u);
    r = testutil::result_of(t.pa.get());
    EXPECT_EQ(r.has_norm, 0);
    EXPECT_TRUE(std::isnan(r.total_norm));
    EXPECT_EQ(r.applied, 1);
    // the device slot and the decoded result agree: there is no host shadow
    o.nonfinite = GCLIP_NONFINITE_SKIP;
    ASSERT_EQ(gclip_clip_grad_norm(t.pa.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    r = testutil::result_of(t.pa.get());
    EXPECT_EQ(r.total_norm, dev->total_norm);
    EXPECT_EQ(r.scale, dev->scale);
    EXPECT_EQ(r.sequence, dev->sequence);
    EXPECT_EQ(r.op, GCLIP_OP_CLIP_NORM);
}

TEST(StepContract, OptionsCarryTheirSizeAndVersion)
{
    TwoCopies t(20);
    const uint64_t before = oracle::checksum(t.a);
    gclip_norm_options o = testutil::norm_options(0.01f);
    EXPECT_EQ(o.size, sizeof(gclip_norm_options));
    EXPECT_EQ(o.version, (uint32_t)GCLIP_OPTIONS_VERSION);
    gclip_norm_options zero;
    std::memset(&zero, 0, sizeof zero);
    zero.max_norm = 0.01f;
    zero.norm_type = 2.0f;
    zero.inv_scale = 1.0f;
    EXPECT_EQ(gclip_clip_grad_norm(t.pa.get(), &zero, nullptr), GCLIP_STATUS_VERSION_MISMATCH);
    EXPECT_NE(std::string(gclip_last_error()).find("GCLIP_NORM_OPTIONS_INIT"), std::string::npos);
    gclip_norm_options newer = o;
    newer.version = GCLIP_OPTIONS_VERSION + 1;
    EXPECT_EQ(gclip_clip_grad_norm(t.pa.get(), &newer, nullptr), GCLIP_STATUS_VERSION_MISMATCH);
    gclip_norm_options wrong_size = o;
    wrong_size.size = sizeof(gclip_norm_options) - 8;
    EXPECT_EQ(gclip_clip_grad_norm(t.pa.get(), &wrong_size, nullptr),
              GCLIP_STATUS_VERSION_MISMATCH);
    EXPECT_EQ(oracle::checksum(t.a), before);
    const gclip_norm_options d = gclip_norm_options_default();
    EXPECT_EQ(std::memcmp(&d, &o, offsetof(gclip_norm_options, max_norm)), 0);
}

TEST(StepContract, F64GradientsAreNormedAndScaledInDouble)
{
    oracle::Rng rng(21);
    std::vector<TestBuffer> bufs;
    for (int64_t n : {1, 7, 65536, 65539, 100}) {
        bufs.emplace_back(GCLIP_F64, n, static_cast<int>(n % 2));
        bufs.back().fill(rng, 1e3);
    }
    // values far outside float's range, which an f32 path would overflow
    double huge = 1e100;
    std::memcpy(bufs[0].data(), &huge, 8);
    PlanPtr p;
    ASSERT_EQ(testutil::make_plan(p, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(1e30f);
    ASSERT_EQ(gclip_total_norm(p.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    // the norm itself is reported in float: 1e100 is beyond it
    EXPECT_EQ(testutil::result_of(p.get()).nonfinite, 1);

    double one = 1.0;
    std::memcpy(bufs[0].data(), &one, 8);
    double big = 1e20;
    std::memcpy(bufs[1].data(), &big, 8);
    const auto want = oracle::norms(bufs, 2.0);
    ASSERT_EQ(gclip_clip_grad_norm(p.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(p.get());
    EXPECT_TRUE(oracle::rel_close(r.total_norm, want.total, 1e-6L));
    EXPECT_EQ(r.scale, 1.0f);
    const std::vector<TestBuffer> snap = bufs;
    o.max_norm = 1e10f;
    ASSERT_EQ(gclip_clip_grad_norm(p.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result c = testutil::result_of(p.get());
    ASSERT_LT(c.scale, 1.0f) << c.total_norm << " " << c.nonfinite << " " << gclip_last_error();
    for (size_t k = 0; k < bufs.size(); ++k)
        for (int64_t i = 0; i < bufs[k].numel(); ++i)
            ASSERT_EQ(oracle::load_f64(bufs[k].data(), i),
                      oracle::load_f64(snap[k].data(), i) * static_cast<double>(c.scale))
                << k << " " << i;
    const std::vector<TestBuffer> scaled = bufs;
    ASSERT_EQ(gclip_clip_grad_value(p.get(), 1.0f, nullptr), GCLIP_STATUS_SUCCESS);
    // each double clamped to [-1, 1] in double: the ones inside kept bit for bit
    size_t inside = 0;
    for (size_t k = 0; k < bufs.size(); ++k)
        for (int64_t i = 0; i < bufs[k].numel(); ++i) {
            const double x = oracle::load_f64(scaled[k].data(), i);
            inside += std::fabs(x) < 1.0 ? 1u : 0u;
            ASSERT_EQ(oracle::load_f64(bufs[k].data(), i), x < -1.0 ? -1.0 : (x > 1.0 ? 1.0 : x))
                << k << " " << i;
        }
    EXPECT_GT(inside, 0u); // the data straddles the bound
}

} // namespace
