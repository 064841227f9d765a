// test_emu_contract.cpp - the step contract (include/gclip.h) on the emulated
// kernels, against the CPU path: scalars read from device memory when a
// step executes (a captured graph replayed with new values), out-of-range
// scalars that write nothing, the factor computed then applied once, the
// finalize of gathered partials, the given-norm clip and f64 gradients.
#include "emu_harness.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The launches of a step as a captured graph holds them: each launcher's
// parameters fixed once.
using Graph = std::vector<gclip_norm_params>;

int replay(emu::Fixture &f, const Graph &g)
{
    for (const gclip_norm_params &np : g) {
        const int rc = f.emu_launch(np);
        if (rc != 0)
            return rc;
    }
    return 0;
}

gclip_norm_params apply_params()
{
    gclip_norm_params np;
    EXPECT_EQ(gclip_make_params(nullptr, GCLIP_OP_APPLY, &np), GCLIP_STATUS_SUCCESS);
    return np;
}

void in_schedule(std::size_t i)
{
    emu::use(emu::schedules()[i % emu::schedules().size()].s);
}

// A plan of small tensors of every dtype and multi-chunk tensors, so that
// the kernels run several blocks and the apply's ticket has work to do.
std::vector<emu::Spec> contract_plan(uint64_t seed)
{
    std::vector<emu::Spec> v = emu::mixed_many(seed, 40);
    const int64_t c = GCLIP_CHUNK_ELEMS;
    v.push_back(emu::Spec{GCLIP_F32, 2 * c + 5, 1});
    v.push_back(emu::Spec{GCLIP_F64, c + 3, 1});
    v.push_back(emu::Spec{GCLIP_BF16, c - 1, 3});
    return v;
}

// ---- device scalars ----------------------------------------------------------------

// A captured graph's stand-in: the parameters of every launch are built once,
// with max_norm, inv_scale (and the given norm) behind pointers to emulated
// device floats, then the floats change and the same parameters run again.
// Each run must use the values current when it runs, as the CPU path given
// those values does. Catches kernels that take a scalar from the parameter's
// value instead of its pointer, or that resolve it anywhere but at execution.
TEST(EmuDeviceScalars, ReplayOfTheSameParamsUsesTheNewValues)
{
    emu::Fixture f(contract_plan(81), 81);
    emu::DevBuf max_d(sizeof(float)), inv_d(sizeof(float)), norm_d(sizeof(float));
    float *max_norm = max_d.as<float>(), *inv_scale = inv_d.as<float>();
    float *given = norm_d.as<float>();
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 123.0f; // never read: the pointers win
    o.inv_scale = 7.0f;
    o.max_norm_ptr = max_norm;
    o.inv_scale_ptr = inv_scale;

    struct Captured {
        const char *name;
        int32_t last_op;
        Graph graph;
        std::function<gclip_status()> cpu;
    };
    const std::vector<Captured> graphs = {
        {"clip_grad_norm", GCLIP_OP_CLIP_NORM, {f.params(o, GCLIP_OP_CLIP_NORM)},
         [&] { return f.cpu_norm_op(o, GCLIP_OP_CLIP_NORM); }},
        {"per_tensor", GCLIP_OP_CLIP_PER_TENSOR, {f.params(o, GCLIP_OP_CLIP_PER_TENSOR)},
         [&] { return f.cpu_norm_op(o, GCLIP_OP_CLIP_PER_TENSOR); }},
        {"factor_then_apply", GCLIP_OP_APPLY, {f.params(o, GCLIP_OP_CLIP_FACTOR), apply_params()},
         [&] {
             const gclip_status s = f.cpu_norm_op(o, GCLIP_OP_CLIP_FACTOR);
             return s != GCLIP_STATUS_SUCCESS ? s : f.cpu_apply();
         }},
        {"accumulate_finalize_apply", GCLIP_OP_APPLY,
         {f.params(o, GCLIP_OP_ACCUMULATE), f.params(o, GCLIP_OP_FINALIZE), apply_params()},
         [&] {
             gclip_status s = f.cpu_norm_op(o, GCLIP_OP_ACCUMULATE);
             s = s != GCLIP_STATUS_SUCCESS ? s : f.cpu_finalize(o, nullptr, 0);
             return s != GCLIP_STATUS_SUCCESS ? s : f.cpu_apply();
         }},
    };
    // (max_norm as a fraction of the scaled norm, inv_scale) at each replay
    const float steps[][2] = {{0.5f, 1.0f}, {0.25f, 0.125f}, {kInf, 0.5f}, {2.0f, 1.0f}};
    std::size_t run = 0;
    for (const Captured &g : graphs) {
        SCOPED_TRACE(g.name);
        float previous_scale = kNaN;
        for (const auto &step : steps) {
            *inv_scale = step[1];
            const float n = static_cast<float>(emu::oracle_total(f, 2.0f, *inv_scale));
            *max_norm = std::isinf(step[0]) ? step[0] : step[0] * n;
            SCOPED_TRACE("max_norm " + std::to_string(*max_norm) + " inv_scale " +
                         std::to_string(*inv_scale));
            f.reset_host();
            ASSERT_EQ(g.cpu(), GCLIP_STATUS_SUCCESS) << gclip_last_error();
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(replay(f, g.graph), 0) << gclip_emu::error_message();
            f.expect_norm_op_matches(o, g.last_op);
            const gclip_result_slot &e = f.emu_result();
            if (g.last_op != GCLIP_OP_CLIP_PER_TENSOR) {
                const float coef = oracle::expected_op_coef(e.total_norm, *max_norm, o.eps);
                EXPECT_EQ(e.clip_coef, coef);
                EXPECT_EQ(e.scale, coef * *inv_scale) << "the factor is not that of this replay's values";
                EXPECT_NE(e.scale, previous_scale) << "a replay kept the previous values";
                previous_scale = e.scale;
            }
            if (::testing::Test::HasFailure())
                return;
        }
    }

    // the given-norm clip with the norm behind a pointer too
    SCOPED_TRACE("clip_grads_with_norm");
    gclip_norm_params np = f.params(o, GCLIP_OP_CLIP_WITH_NORM);
    np.given_norm = 99.0f; // never read
    np.given_norm_ptr = given;
    const Graph g = {np};
    const float with_norm_steps[][3] = {{4.0f, 1.0f, 1.0f}, {40.0f, 2.0f, 0.5f}, {0.5f, 8.0f, 0.25f}};
    for (const auto &step : with_norm_steps) {
        *given = step[0];
        *max_norm = step[1];
        *inv_scale = step[2];
        f.reset_host();
        ASSERT_EQ(f.cpu_with_norm(o, 99.0f, given), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        f.reset();
        in_schedule(run++);
        ASSERT_EQ(replay(f, g), 0) << gclip_emu::error_message();
        f.expect_norm_op_matches(o, GCLIP_OP_CLIP_WITH_NORM);
        EXPECT_EQ(f.emu_result().total_norm, *given);
        EXPECT_EQ(f.emu_result().scale,
                  oracle::expected_op_coef(*given, *max_norm, o.eps) * *inv_scale);
    }
}

// A value read at execution that the host would have rejected (negative or
// NaN max_norm; zero, negative, infinite or NaN inv_scale): no gradient is
// written (the data is in read-only pages while the kernels run) and the
// slot says INVALID_ARGUMENT, as the CPU path's does. Catches kernels that
// apply a factor made of a bad scalar (flipping signs, zeroing or NaN-ing
// gradients) or that leave the status out of the slot.
TEST(EmuDeviceScalars, OutOfRangeValueAtExecutionWritesNothing)
{
    emu::Fixture f(contract_plan(82), 82, 1.0, /*paged=*/true);
    emu::DevBuf max_d(sizeof(float)), inv_d(sizeof(float));
    float *max_norm = max_d.as<float>(), *inv_scale = inv_d.as<float>();
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm_ptr = max_norm;
    o.inv_scale_ptr = inv_scale;
    const float bad[][2] = {{-0.5f, 1.0f}, {kNaN, 1.0f}, {0.5f, 0.0f},
                            {0.5f, -1.0f}, {0.5f, kInf}, {0.5f, kNaN}};

    struct Sequence {
        const char *name;
        std::function<gclip_status()> cpu;
        std::function<int()> emu;
    };
    const std::vector<Sequence> seqs = {
        {"total_norm", [&] { return f.cpu_norm_op(o, GCLIP_OP_TOTAL_NORM); },
         [&] { return f.emu_norm_op(o, GCLIP_OP_TOTAL_NORM); }},
        {"clip_grad_norm", [&] { return f.cpu_norm_op(o, GCLIP_OP_CLIP_NORM); },
         [&] { return f.emu_norm_op(o, GCLIP_OP_CLIP_NORM); }},
        {"per_tensor", [&] { return f.cpu_norm_op(o, GCLIP_OP_CLIP_PER_TENSOR); },
         [&] { return f.emu_norm_op(o, GCLIP_OP_CLIP_PER_TENSOR); }},
        {"with_norm", [&] { return f.cpu_with_norm(o, 0.25f); },
         [&] { return f.emu_with_norm(o, 0.25f); }},
        {"factor_then_apply",
         [&] {
             const gclip_status s = f.cpu_norm_op(o, GCLIP_OP_CLIP_FACTOR);
             return s != GCLIP_STATUS_SUCCESS ? s : f.cpu_apply();
         },
         [&] {
             const int rc = f.emu_norm_op(o, GCLIP_OP_CLIP_FACTOR);
             return rc != 0 ? rc : f.emu_apply();
         }},
        {"accumulate_finalize_apply",
         [&] {
             gclip_status s = f.cpu_norm_op(o, GCLIP_OP_ACCUMULATE);
             s = s != GCLIP_STATUS_SUCCESS ? s : f.cpu_finalize(o, nullptr, 0);
             return s != GCLIP_STATUS_SUCCESS ? s : f.cpu_apply();
         },
         [&] {
             int rc = f.emu_norm_op(o, GCLIP_OP_ACCUMULATE);
             rc = rc != 0 ? rc : f.emu_finalize(o, nullptr, 0);
             return rc != 0 ? rc : f.emu_apply();
         }},
    };
    std::size_t run = 0;
    for (const Sequence &s : seqs)
        for (const auto &b : bad) {
            *max_norm = b[0];
            *inv_scale = b[1];
            SCOPED_TRACE(std::string(s.name) + " max_norm " + std::to_string(b[0]) +
                         " inv_scale " + std::to_string(b[1]));
            f.reset_host();
            ASSERT_EQ(s.cpu(), GCLIP_STATUS_SUCCESS) << gclip_last_error();
            gclip_status st;
            f.cpu_result(&st);
            ASSERT_EQ(st, GCLIP_STATUS_INVALID_ARGUMENT) << "the CPU path disagrees";
            f.reset();
            in_schedule(run++);
            f.set_read_only(true);
            const int rc = s.emu();
            f.set_read_only(false);
            ASSERT_EQ(rc, 0) << gclip_emu::error_message();
            f.expect_infrastructure();
            f.expect_data_unchanged();
            const gclip_result_slot &e = f.emu_result();
            EXPECT_EQ(e.status, GCLIP_STATUS_INVALID_ARGUMENT);
            EXPECT_EQ(e.scale, 1.0f);
            f.expect_slot_matches();
            if (::testing::Test::HasFailure())
                return;
        }
}

// max_norm 0 and +Inf read from device memory where the quotient
// max_norm / (N + eps) meets 0 x Inf: gradients whose norm has no float
// reciprocal (subnormal f32, eps 0) under 0, and one gradient near 3e38
// with eps 1e38 (N + eps past FLT_MAX) under +Inf. The coefficient and
// every tensor's factor are 0 and 1, as for the same max_norm given by
// value, never NaN; 0 zeroes every gradient and +Inf writes nothing. The
// slot is the CPU path's bit for bit. Catches kernels that form the
// coefficient of a max_norm read at execution with eps as given.
TEST(EmuDeviceScalars, MaxNormZeroAndInfinityReadAtExecutionKeepTheirMeaning)
{
    emu::DevBuf max_d(sizeof(float));
    float *max_norm = max_d.as<float>();
    struct Case {
        const char *name;
        float max_norm, eps;
        std::vector<emu::Spec> specs;
        double scale; // standard deviation of the seeded data
    };
    // small tensors and tensors of several chunks, so that the per-tensor
    // norms are folded by several blocks as well as by the last one
    const int64_t ch = GCLIP_CHUNK_ELEMS;
    std::vector<emu::Spec> many = {{GCLIP_F32, 1, 0},          {GCLIP_F32, 37, 1},
                                   {GCLIP_F32, 100, 3},        {GCLIP_F32, 2 * ch + 5, 1},
                                   {GCLIP_BF16, ch - 1, 3},    {GCLIP_F32, ch + 3, 0}};
    for (int i = 0; i < 30; ++i)
        many.push_back(emu::Spec{i % 3 ? GCLIP_F32 : GCLIP_BF16, 1 + (i * 389) % 3000, i % 4});
    // f32 only where the data is subnormal: bf16 rounds 1e-43 to 0 or to its
    // least subnormal, 9.2e-41, whose squares add up past the corner
    std::vector<emu::Spec> many_f32 = many;
    for (emu::Spec &sp : many_f32)
        sp.dtype = GCLIP_F32;
    const Case cases[] = {
        {"max_norm 0, subnormal gradients, eps 0", 0.0f, 0.0f,
         {{GCLIP_F32, 1, 0}, {GCLIP_F32, 37, 1}, {GCLIP_F32, 100, 3}}, 1e-40},
        {"max_norm 0, subnormal gradients in many chunks, eps 0", 0.0f, 0.0f, many_f32, 1e-43},
        {"max_norm Inf, one gradient near 3e38, eps 1e38", kInf, 1e38f, {{GCLIP_F32, 1, 0}}, 1.0},
        {"max_norm Inf, a gradient near 3e38 among many chunks, eps 1e38", kInf, 1e38f, many,
         1.0},
    };
    const int32_t ops[] = {GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR, GCLIP_OP_CLIP_FACTOR};
    std::size_t run = 0;
    for (const Case &c : cases)
        for (const int32_t op : ops) {
            SCOPED_TRACE(std::string(c.name) + ", " + emu::op_name(op));
            emu::Fixture f(c.specs, 97, c.scale, /*paged=*/true);
            if (std::isinf(c.max_norm)) {
                f.set_element(0, 0, -2.8e38f);
                f.reset_both();
            }
            const long double n = emu::oracle_total(f, 2.0f, 1.0f);
            // the corner this test is about: N finite, N + eps without a
            // usable float reciprocal
            ASSERT_TRUE(std::isfinite(static_cast<double>(n)));
            if (c.max_norm == 0.0f) {
                ASSERT_LT(static_cast<double>(n), 2.9e-39);
            } else {
                ASSERT_TRUE(std::isinf(static_cast<float>(n) + c.eps));
            }
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.max_norm = 1.0f; // never read: the pointer wins
            o.max_norm_ptr = max_norm;
            o.eps = c.eps;
            *max_norm = c.max_norm;
            f.reset_host();
            ASSERT_EQ(f.cpu_norm_op(o, op), GCLIP_STATUS_SUCCESS) << gclip_last_error();
            if (op == GCLIP_OP_CLIP_FACTOR) {
                ASSERT_EQ(f.cpu_apply(), GCLIP_STATUS_SUCCESS);
            }
            f.reset();
            in_schedule(run++);
            f.set_read_only(c.max_norm != 0.0f); // +Inf: not a byte written
            ASSERT_EQ(f.emu_norm_op(o, op), 0) << gclip_emu::error_message();
            if (op == GCLIP_OP_CLIP_FACTOR) {
                ASSERT_EQ(f.emu_apply(), 0) << gclip_emu::error_message();
            }
            f.set_read_only(false);
            f.expect_norm_op_matches(o, op == GCLIP_OP_CLIP_FACTOR ? GCLIP_OP_APPLY : op);
            f.expect_slot_matches(/*bitwise=*/true);
            const gclip_result_slot &e = f.emu_result();
            EXPECT_EQ(e.status, GCLIP_STATUS_SUCCESS);
            EXPECT_EQ(e.nonfinite, 0);
            const float want = c.max_norm == 0.0f ? 0.0f : 1.0f;
            if (op == GCLIP_OP_CLIP_PER_TENSOR) {
                for (std::size_t k = 0; k < f.count(); ++k)
                    EXPECT_EQ(f.emu_tensor_factor(k), want) << "tensor " << k;
            } else {
                EXPECT_EQ(e.clip_coef, want);
                EXPECT_EQ(e.scale, want);
            }
            if (c.max_norm == 0.0f)
                f.expect_scaled_by(0.0f);
            else
                f.expect_data_unchanged();
            if (::testing::Test::HasFailure())
                return;
        }
}

// ---- factor, then apply once ---------------------------------------------------------

// gclip_compute_clip_factor then gclip_apply_clip_factor leaves the bytes of
// the fused clip, bit for bit; a second apply, and an apply after the fused
// clip, find no pending factor and write nothing (the data is read-only while
// they run), and the slot says so as the CPU path's does; the apply ticket
// is back at 0 after every launch. Catches a factor applied twice (the
// pending state not cleared, or an applied op's factor taken as pending), an
// apply that differs from the fused scale, and a slot update made by a
// block other than the last to read it.
TEST(EmuApply, FactorThenApplyEqualsTheFusedClipAndAppliesOnce)
{
    emu::Fixture f(contract_plan(83), 83, 1.0, /*paged=*/true);
    std::size_t run = 0;
    for (const specs::NormCase &row : specs::norm_cases(GCLIP_OP_CLIP_FACTOR)) {
        SCOPED_TRACE("row " + row.name());
        const float n = static_cast<float>(emu::oracle_total(f, row.norm_type, row.inv_scale));
        const gclip_norm_options o = row.options(n);
        in_schedule(run++);

        // the fused clip: the reference bytes
        f.reset_host();
        ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_CLIP_NORM), GCLIP_STATUS_SUCCESS);
        f.reset();
        ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_CLIP_NORM), 0) << gclip_emu::error_message();
        f.expect_norm_op_matches(o, GCLIP_OP_CLIP_NORM);
        const emu::Snapshot fused = f.snapshot();
        const gclip_result_slot fused_slot = f.emu_result();

        // ... and an apply after it: nothing pending, nothing written
        ASSERT_EQ(f.cpu_apply(), GCLIP_STATUS_SUCCESS);
        f.set_read_only(true);
        ASSERT_EQ(f.emu_apply(), 0) << gclip_emu::error_message();
        f.set_read_only(false);
        f.expect_infrastructure();
        EXPECT_TRUE(f.snapshot().data == fused.data) << "apply after clip_grad_norm wrote";
        f.expect_slot_matches(/*bitwise=*/true);
        EXPECT_EQ(f.emu_result().op, GCLIP_OP_APPLY);
        EXPECT_EQ(f.emu_result().status, GCLIP_STATUS_INVALID_ARGUMENT);
        EXPECT_EQ(f.emu_result().sequence, fused_slot.sequence + 1);

        // factor, then apply
        f.reset_host();
        const uint32_t base = f.cpu_slot().sequence;
        ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_CLIP_FACTOR), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(f.cpu_apply(), GCLIP_STATUS_SUCCESS);
        f.reset();
        f.set_read_only(true); // the factor op writes no gradient
        ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_CLIP_FACTOR), 0) << gclip_emu::error_message();
        f.set_read_only(false);
        f.expect_data_unchanged();
        ASSERT_EQ(f.emu_apply(), 0) << gclip_emu::error_message();
        f.expect_norm_op_matches(o, GCLIP_OP_APPLY);
        const gclip_result_slot &a = f.emu_result();
        EXPECT_TRUE(f.snapshot().data == fused.data)
            << "factor then apply differs from the fused clip";
        EXPECT_EQ(std::memcmp(&a.total_norm, &fused_slot.total_norm, 3 * sizeof(float)), 0)
            << "norm, coefficient or factor differ from the fused clip's";
        EXPECT_EQ(a.op, GCLIP_OP_APPLY);
        EXPECT_EQ(a.status, GCLIP_STATUS_SUCCESS);
        EXPECT_EQ(a.flags & GCLIP_RESULT_APPLIES, GCLIP_RESULT_APPLIES);
        EXPECT_EQ(a.sequence, base + 2); // factor, apply: two operations
        const emu::Snapshot once = f.snapshot();

        // a second apply: nothing pending any more
        ASSERT_EQ(f.cpu_apply(), GCLIP_STATUS_SUCCESS);
        f.set_read_only(true);
        ASSERT_EQ(f.emu_apply(), 0) << gclip_emu::error_message();
        f.set_read_only(false);
        f.expect_infrastructure();
        EXPECT_TRUE(f.snapshot().data == once.data) << "the factor was applied twice";
        f.expect_slot_matches(/*bitwise=*/true);
        EXPECT_EQ(f.emu_result().status, GCLIP_STATUS_INVALID_ARGUMENT);
        EXPECT_EQ(f.emu_result().scale, 1.0f);
        f.expect_data_equals_cpu();
        if (::testing::Test::HasFailure())
            return;
    }
}

// ---- accumulate on several plans, finalize a gathered array ------------------------

// Three "ranks" accumulate their own plans; their partials are gathered into
// one array in (emulated) device memory and every rank finalizes that array:
// each finalize kernel gives bitwise the CPU finalize of the same array, the
// norm is the oracle's over all ranks' data, and the apply after it leaves
// the CPU path's bytes. Catches a finalize that folds out of index order or
// reads the plan's own partial instead of the array, and accumulate-phase
// partials (fingerprint, non-finite count, accumulator) unlike the CPU's.
TEST(EmuFinalize, GatheredPartialsGiveTheCpuFinalizeBitwise)
{
    std::vector<std::unique_ptr<emu::Fixture>> ranks;
    for (uint64_t r = 0; r < 3; ++r)
        ranks.push_back(std::make_unique<emu::Fixture>(contract_plan(90 + r), 90 + r));
    emu::DevBuf gathered(3 * sizeof(gclip_partial));
    gclip_partial *parts = gathered.as<gclip_partial>();
    std::size_t run = 0;
    for (const specs::NormCase &row : specs::norm_cases(GCLIP_OP_FINALIZE)) {
        SCOPED_TRACE("row " + row.name());
        // the norm over every rank's data, for the threshold and the oracle
        std::vector<gclip_tensor> all;
        for (const auto &f : ranks)
            for (std::size_t k = 0; k < f->count(); ++k)
                all.push_back(gclip_tensor{const_cast<void *>(f->pristine_data(k)),
                                           f->specs()[k].numel, f->specs()[k].dtype});
        const long double want =
            oracle::norms(all.data(), all.size(), row.norm_type, row.inv_scale).total;
        const gclip_norm_options o = row.options(static_cast<float>(want));

        for (std::size_t r = 0; r < ranks.size(); ++r) {
            emu::Fixture &f = *ranks[r];
            f.reset_host();
            ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_ACCUMULATE), GCLIP_STATUS_SUCCESS);
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_ACCUMULATE), 0) << gclip_emu::error_message();
            f.expect_norm_op_matches(o, GCLIP_OP_ACCUMULATE);
            EXPECT_EQ(f.emu_result().flags & GCLIP_RESULT_LOCAL, GCLIP_RESULT_LOCAL);
            parts[r] = f.emu_partial();
        }
        float first_norm = kNaN;
        for (std::size_t r = 0; r < ranks.size(); ++r) {
            SCOPED_TRACE("rank " + std::to_string(r));
            emu::Fixture &f = *ranks[r];
            f.reset_host(); // the CPU plan's data back too, for the apply below
            ASSERT_EQ(f.cpu_finalize(o, parts, 3), GCLIP_STATUS_SUCCESS) << gclip_last_error();
            ASSERT_EQ(f.cpu_apply(), GCLIP_STATUS_SUCCESS);
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(f.emu_finalize(o, parts, 3), 0) << gclip_emu::error_message();
            EXPECT_EQ(f.launches(), 1u);
            const gclip_result_slot fin = f.emu_result();
            EXPECT_EQ(fin.op, GCLIP_OP_FINALIZE);
            EXPECT_EQ(fin.status, GCLIP_STATUS_SUCCESS);
            EXPECT_TRUE(oracle::rel_close(fin.total_norm, want, 2e-6L))
                << fin.total_norm << " vs the oracle's " << static_cast<double>(want);
            if (r == 0)
                first_norm = fin.total_norm;
            EXPECT_EQ(std::memcmp(&fin.total_norm, &first_norm, sizeof(float)), 0)
                << "ranks disagree on the norm";
            ASSERT_EQ(f.emu_apply(), 0) << gclip_emu::error_message();
            f.expect_infrastructure();
            f.expect_slot_matches(/*bitwise=*/true);
            f.expect_data_equals_cpu();
            f.expect_scaled_by(f.emu_result().scale);
        }
        if (::testing::Test::HasFailure())
            return;
    }

    // the plan's own partial (partials NULL, count 0) after its accumulate
    emu::Fixture &f = *ranks[0];
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.max_norm = 0.5f;
    f.reset_host();
    ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_ACCUMULATE), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(f.cpu_finalize(o, nullptr, 0), GCLIP_STATUS_SUCCESS);
    f.reset();
    ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_ACCUMULATE), 0) << gclip_emu::error_message();
    ASSERT_EQ(f.emu_finalize(o, nullptr, 0), 0) << gclip_emu::error_message();
    f.expect_norm_op_matches(o, GCLIP_OP_FINALIZE);
}

// Partials made with another norm type or policy: the finalize's slot says
// MISMATCH with factor 1, and the apply after it writes nothing (read-only
// data). Catches a finalize that folds foreign partials into the norm.
TEST(EmuFinalize, ForeignPartialsAreRejectedAndNothingIsWritten)
{
    emu::Fixture f(contract_plan(95), 95, 1.0, /*paged=*/true);
    emu::Fixture other(emu::mixed_many(96, 30), 96);
    gclip_norm_options l2 = GCLIP_NORM_OPTIONS_INIT;
    l2.max_norm = 1e-3f; // would clip hard
    emu::DevBuf gathered(2 * sizeof(gclip_partial));
    gclip_partial *parts = gathered.as<gclip_partial>();
    ASSERT_EQ(f.emu_norm_op(l2, GCLIP_OP_ACCUMULATE), 0) << gclip_emu::error_message();
    parts[0] = f.emu_partial();

    gclip_norm_options l1 = l2, propagate = l2;
    l1.norm_type = 1.0f;
    propagate.nonfinite = GCLIP_NONFINITE_PROPAGATE;
    std::size_t run = 0;
    for (const gclip_norm_options *foreign : {&l1, &propagate}) {
        SCOPED_TRACE(foreign == &l1 ? "norm type" : "policy");
        ASSERT_EQ(other.emu_norm_op(*foreign, GCLIP_OP_ACCUMULATE), 0);
        parts[1] = other.emu_partial();
        ASSERT_NE(parts[0].fingerprint, parts[1].fingerprint);
        for (std::size_t order = 0; order < 2; ++order) {
            const gclip_partial *arr = order == 0 ? parts : parts + 1;
            const std::size_t n = order == 0 ? 2 : 1;
            f.reset_host();
            ASSERT_EQ(f.cpu_finalize(l2, arr, n), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(f.cpu_apply(), GCLIP_STATUS_SUCCESS);
            f.reset();
            in_schedule(run++);
            f.set_read_only(true);
            int rc = f.emu_finalize(l2, arr, n);
            const gclip_result_slot fin = f.emu_result();
            rc = rc != 0 ? rc : f.emu_apply();
            f.set_read_only(false);
            ASSERT_EQ(rc, 0) << gclip_emu::error_message();
            EXPECT_EQ(fin.status, GCLIP_STATUS_MISMATCH);
            EXPECT_EQ(fin.scale, 1.0f);
            EXPECT_EQ(fin.clip_coef, 1.0f);
            f.expect_infrastructure();
            f.expect_data_unchanged();
            f.expect_slot_matches(/*bitwise=*/true);
            EXPECT_EQ(f.emu_result().status, GCLIP_STATUS_MISMATCH) << "the apply lost the status";
            gclip_status st;
            f.cpu_result(&st);
            EXPECT_EQ(st, GCLIP_STATUS_MISMATCH);
        }
    }
}

// A gathered array of many partials, as a large group gives: the finalize
// kernel folds it in its fixed shape (1024 leaves, 32 groups of 32, then the
// groups), a leaf a thread. For counts on each side of 32 and of 1024, for
// the sum (p = 2, 1, 3) and the max (p = Inf), its slot is bitwise the CPU
// finalize's, and the norm is the long-double oracle's within 1e-6 (a leaf
// or a group left out or folded twice moves it by about 1/1024 or more).
// Non-finite partials in the last leaf reach the slot; a foreign partial in
// the first, a middle or the last leaf gives MISMATCH and factor 1.
TEST(EmuFinalize, LargeGatheredArraysGiveTheCpuFinalizeBitwise)
{
    emu::Fixture f(contract_plan(97), 97);
    std::mt19937_64 rng(9701);
    std::uniform_real_distribution<double> mant(0.5, 2.0);
    std::uniform_int_distribution<int> expo(-6, 6);
    std::size_t run = 0;
    for (uint32_t count : {1u, 31u, 32u, 33u, 1000u, 1024u, 1025u, 4099u, 70001u}) {
        emu::DevBuf buf(count * sizeof(gclip_partial));
        gclip_partial *parts = buf.as<gclip_partial>();
        for (float p : {2.0f, 1.0f, kInf, 3.0f}) {
            SCOPED_TRACE("count " + std::to_string(count) + ", p = " + std::to_string(p));
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.norm_type = p;
            const uint32_t fp = gclip_fingerprint(p, o.nonfinite);
            long double exact = 0.0L;
            for (uint32_t i = 0; i < count; ++i) {
                const double acc = std::ldexp(mant(rng), expo(rng));
                parts[i] = gclip_partial{acc, 0u, fp};
                exact = std::isinf(p) ? std::max(exact, static_cast<long double>(acc))
                                      : exact + static_cast<long double>(acc);
            }
            const long double want = std::isinf(p) ? exact : std::pow(exact, 1.0L / p);
            o.max_norm = static_cast<float>(want / 3.0L); // clips
            f.reset_host();
            ASSERT_EQ(f.cpu_finalize(o, parts, count), GCLIP_STATUS_SUCCESS) << gclip_last_error();
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(f.emu_finalize(o, parts, count), 0) << gclip_emu::error_message();
            EXPECT_EQ(f.launches(), 1u);
            const gclip_result_slot fin = f.emu_result();
            EXPECT_EQ(fin.status, GCLIP_STATUS_SUCCESS);
            EXPECT_TRUE(oracle::rel_close(fin.total_norm, want, 1e-6L))
                << fin.total_norm << " vs the oracle's " << static_cast<double>(want);
            EXPECT_LT(fin.scale, 0.5f);
            f.expect_slot_matches(/*bitwise=*/true);
            if (::testing::Test::HasFailure())
                return;
        }
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.max_norm = 1e-3f;
        const uint32_t fp = gclip_fingerprint(2.0f, o.nonfinite);
        for (uint32_t i = 0; i < count; ++i)
            parts[i] = gclip_partial{std::ldexp(mant(rng), expo(rng)), 0u, fp};
        // non-finite partials in the last leaf (and the first, when it is
        // the only one)
        parts[count - 1] = gclip_partial{static_cast<double>(kInf), 2u, fp};
        for (gclip_nonfinite_policy policy : {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_PROPAGATE}) {
            SCOPED_TRACE("count " + std::to_string(count) + ", an Inf, policy " +
                         std::to_string(policy));
            o.nonfinite = policy;
            const uint32_t pfp = gclip_fingerprint(2.0f, policy);
            for (uint32_t i = 0; i < count; ++i)
                parts[i].fingerprint = pfp;
            f.reset_host();
            ASSERT_EQ(f.cpu_finalize(o, parts, count), GCLIP_STATUS_SUCCESS) << gclip_last_error();
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(f.emu_finalize(o, parts, count), 0) << gclip_emu::error_message();
            EXPECT_EQ(f.emu_result().nonfinite, 1);
            EXPECT_TRUE(std::isinf(f.emu_result().total_norm));
            f.expect_slot_matches(/*bitwise=*/true);
        }
        o.nonfinite = GCLIP_NONFINITE_SKIP;
        for (uint32_t i = 0; i < count; ++i)
            parts[i].fingerprint = fp;
        parts[count - 1].acc = 1.0;
        parts[count - 1].nonfinite = 0;
        for (uint32_t at : {0u, count / 2, count - 1}) {
            SCOPED_TRACE("count " + std::to_string(count) + ", a foreign partial at " +
                         std::to_string(at));
            parts[at].fingerprint = gclip_fingerprint(1.0f, GCLIP_NONFINITE_SKIP);
            f.reset_host();
            ASSERT_EQ(f.cpu_finalize(o, parts, count), GCLIP_STATUS_SUCCESS) << gclip_last_error();
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(f.emu_finalize(o, parts, count), 0) << gclip_emu::error_message();
            EXPECT_EQ(f.emu_result().status, GCLIP_STATUS_MISMATCH);
            EXPECT_EQ(f.emu_result().scale, 1.0f);
            EXPECT_TRUE(std::isnan(f.emu_result().total_norm));
            f.expect_slot_matches(/*bitwise=*/true);
            parts[at].fingerprint = fp;
        }
        if (::testing::Test::HasFailure())
            return;
    }
}

// ---- a norm computed elsewhere ---------------------------------------------------

// gclip_clip_grads_with_norm's kernel for every row of its table and every
// dtype, the norm given as a value and behind a device pointer, and a NaN or
// Inf norm under each policy (SKIP and ERROR write nothing: read-only data).
// Catches a given-norm factor that differs from the CPU's (or between
// blocks), block 0 not writing the slot, the pointer ignored, and a
// non-finite norm applied under SKIP or ERROR.
TEST(EmuClipWithNorm, MatchesTheCpuPath)
{
    std::vector<emu::Spec> plan;
    for (gclip_dtype dt : specs::all_dtypes())
        for (const emu::Spec &s : emu::boundary_sizes(dt))
            plan.push_back(s);
    emu::Fixture f(plan, 97, 1.0, /*paged=*/true);
    emu::DevBuf norm_d(sizeof(float));
    float *given = norm_d.as<float>();
    std::size_t run = 0;
    for (const specs::NormCase &row : specs::norm_cases(GCLIP_OP_CLIP_WITH_NORM)) {
        const bool by_pointer = run % 2 == 1; // every other row reads the norm from memory
        SCOPED_TRACE("row " + row.name() + (by_pointer ? ", norm by pointer" : ""));
        const float n = static_cast<float>(emu::oracle_total(f, row.norm_type, row.inv_scale));
        const gclip_norm_options o = row.options(n);
        *given = n;
        const float value = by_pointer ? 0.0f : n;
        const float *ptr = by_pointer ? given : nullptr;
        f.reset_host();
        ASSERT_EQ(f.cpu_with_norm(o, value, ptr), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        f.reset();
        in_schedule(run++);
        ASSERT_EQ(f.emu_with_norm(o, value, ptr), 0) << gclip_emu::error_message();
        f.expect_norm_op_matches(o, GCLIP_OP_CLIP_WITH_NORM);
        f.expect_slot_matches(/*bitwise=*/true);
        EXPECT_EQ(f.emu_result().total_norm, n);
        if (::testing::Test::HasFailure())
            return;
    }

    for (float bad : {kNaN, kInf})
        for (gclip_nonfinite_policy pol :
             {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_PROPAGATE, GCLIP_NONFINITE_ERROR}) {
            SCOPED_TRACE("norm " + std::to_string(bad) + " policy " + std::to_string(pol));
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.nonfinite = pol;
            const bool writes = pol == GCLIP_NONFINITE_PROPAGATE;
            f.reset_host();
            ASSERT_EQ(f.cpu_with_norm(o, bad), GCLIP_STATUS_SUCCESS);
            f.reset();
            in_schedule(run++);
            f.set_read_only(!writes);
            const int rc = f.emu_with_norm(o, bad);
            f.set_read_only(false);
            ASSERT_EQ(rc, 0) << gclip_emu::error_message();
            f.expect_infrastructure();
            f.expect_slot_matches(/*bitwise=*/true);
            EXPECT_EQ(f.emu_result().nonfinite, 1);
            f.expect_data_equals_cpu();
            if (!writes)
                f.expect_data_unchanged();
        }
}

// ---- f64 gradients ------------------------------------------------------------------

// f64 tensors (two lanes per 16-byte vector) at every vector and chunk
// boundary, with elements whose squares overflow float, through every
// operation and sequence, against the CPU path and the oracle, scaled and
// clamped in double. Catches f64 accumulated or scaled in float, and a
// vector walk with the lane count of another dtype (elements skipped, or
// read past the end, which ASan reports).
TEST(EmuF64, EveryOpMatchesTheCpuPathAndTheOracle)
{
    std::vector<emu::Spec> plan = emu::boundary_sizes(GCLIP_F64);
    plan.push_back(emu::Spec{GCLIP_F32, 1000, 1});
    emu::Fixture f(plan, 98, 3.0);
    f.set_element(3, 2, 1e20f); // squared: beyond float, not beyond double
    f.set_element(12, 65000, -3e19f);
    std::size_t run = 0;
    for (float p : {2.0f, 1.0f, kInf, 3.0f}) {
        SCOPED_TRACE("p " + std::to_string(p));
        const float n = static_cast<float>(emu::oracle_total(f, p, 1.0f));
        ASSERT_TRUE(std::isfinite(n));
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.norm_type = p;
        o.max_norm = 0.25f * n;
        float sentinel;
        for (int32_t op : {GCLIP_OP_TOTAL_NORM, GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR,
                           GCLIP_OP_CLIP_FACTOR, GCLIP_OP_ACCUMULATE}) {
            SCOPED_TRACE(emu::op_name(op));
            o.tensor_norms = &sentinel;
            f.reset_host();
            ASSERT_EQ(f.cpu_norm_op(o, op), GCLIP_STATUS_SUCCESS);
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(f.emu_norm_op(o, op), 0) << gclip_emu::error_message();
            f.expect_norm_op_matches(o, op);
        }
        o.tensor_norms = nullptr;
        {
            SCOPED_TRACE("factor, apply");
            f.reset_host();
            ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_CLIP_FACTOR), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(f.cpu_apply(), GCLIP_STATUS_SUCCESS);
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_CLIP_FACTOR), 0);
            ASSERT_EQ(f.emu_apply(), 0) << gclip_emu::error_message();
            f.expect_norm_op_matches(o, GCLIP_OP_APPLY);
        }
        {
            SCOPED_TRACE("accumulate, finalize, apply");
            f.reset_host();
            ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_ACCUMULATE), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(f.cpu_finalize(o, nullptr, 0), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(f.cpu_apply(), GCLIP_STATUS_SUCCESS);
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_ACCUMULATE), 0);
            ASSERT_EQ(f.emu_finalize(o, nullptr, 0), 0);
            ASSERT_EQ(f.emu_apply(), 0) << gclip_emu::error_message();
            f.expect_norm_op_matches(o, GCLIP_OP_APPLY);
        }
        {
            SCOPED_TRACE("with norm");
            f.reset_host();
            ASSERT_EQ(f.cpu_with_norm(o, n), GCLIP_STATUS_SUCCESS);
            f.reset();
            in_schedule(run++);
            ASSERT_EQ(f.emu_with_norm(o, n), 0) << gclip_emu::error_message();
            f.expect_norm_op_matches(o, GCLIP_OP_CLIP_WITH_NORM);
        }
        if (::testing::Test::HasFailure())
            return;
    }
    for (float v : specs::value_clip_bounds()) {
        SCOPED_TRACE("clamp, bound " + specs::bound_name(v));
        f.reset_host();
        ASSERT_EQ(f.cpu_clamp(v), GCLIP_STATUS_SUCCESS);
        f.reset();
        in_schedule(run++);
        ASSERT_EQ(f.emu_clamp(v), 0) << gclip_emu::error_message();
        f.expect_clamp_matches(v);
    }
}

} // namespace
