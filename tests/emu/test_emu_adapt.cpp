// test_emu_adapt.cpp - the adaptive step (gclip_adapt.h) on the emulated
// kernels against the CPU path: the norm, adapt and scale kernels launched
// through their own launchers, in the sequence the CUDA backend issues, on a
// copy of the gradients, must leave the same gradients, result slot, info
// record and state, bit for bit, step after step, for every method, in
// every thread order. The launch parameters are also built once and
// replayed, as a captured graph would, with a device-resident inv_scale
// that changes between replays.
//
// The "device" side is a second CPU plan and adaptive over the copy: their
// host memory is what the emulated kernels see as device memory, and its
// state can be exported like any other.
#include "gclip_adapt.h"
#include "gclip_adapt_math.h"
#include "gclip_internal.h"
#include "gclip_kernels.h"
#include "simt_emu.h"
#include "adapt_emu_util.hpp"
#include "adaptive_methods.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

struct TensorSpec {
    gclip_dtype dtype;
    int64_t numel;
};

// Tensors of every dtype, one spanning several chunks, one empty.
const std::vector<TensorSpec> &mixed_specs()
{
    static const std::vector<TensorSpec> s = {
        {GCLIP_F32, 7},  {GCLIP_F16, 300}, {GCLIP_BF16, 33}, {GCLIP_F64, 129},
        {GCLIP_F32, 2 * GCLIP_CHUNK_ELEMS + 3}, {GCLIP_F32, 0}, {GCLIP_F32, 1000},
    };
    return s;
}

struct AdaptiveDeleter {
    void operator()(gclip_adaptive *a) const { gclip_adaptive_destroy(a); }
};
struct PlanDeleter {
    void operator()(gclip_plan *p) const { gclip_plan_destroy(p); }
};

// One side: buffers, a CPU plan over them and its adaptive.
struct Side {
    std::vector<std::vector<unsigned char>> bufs;
    std::unique_ptr<gclip_plan, PlanDeleter> plan;
    std::unique_ptr<gclip_adaptive, AdaptiveDeleter> ad;

    Side(const std::vector<TensorSpec> &specs, const gclip_adaptive_options &o)
    {
        std::vector<gclip_tensor> t;
        for (const TensorSpec &s : specs) {
            bufs.emplace_back(static_cast<size_t>(s.numel) * gclip_dtype_size(s.dtype) + 16);
            t.push_back(gclip_tensor{s.numel ? bufs.back().data() : nullptr, s.numel, s.dtype});
        }
        gclip_plan *p = nullptr;
        EXPECT_EQ(gclip_plan_create(&p, t.data(), t.size(), GCLIP_DEVICE_CPU),
                  GCLIP_STATUS_SUCCESS);
        plan.reset(p);
        gclip_adaptive *a = nullptr;
        EXPECT_EQ(gclip_adaptive_create(&a, p, &o), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        ad.reset(a);
    }
    std::vector<unsigned char> state()
    {
        size_t n = 0;
        EXPECT_EQ(gclip_adaptive_state_size(ad.get(), &n), GCLIP_STATUS_SUCCESS);
        std::vector<unsigned char> b(n);
        EXPECT_EQ(gclip_adaptive_export(ad.get(), b.data(), n), GCLIP_STATUS_SUCCESS);
        return b;
    }
    const gclip_result_slot &slot() const
    {
        return static_cast<const gclip_cpu_state *>(plan->engine)->result;
    }
    gclip_adapt_device *device() const
    {
        const gclip_adaptive_info *info = nullptr;
        EXPECT_EQ(gclip_adaptive_device_info(ad.get(), &info), GCLIP_STATUS_SUCCESS);
        return reinterpret_cast<gclip_adapt_device *>(
            const_cast<char *>(reinterpret_cast<const char *>(info)) -
            offsetof(gclip_adapt_device, info));
    }
};

// The CPU reference and the emulated device over identical data.
struct Pair {
    std::vector<TensorSpec> specs;
    Side cpu, emu;
    unsigned tickets[2] = {0, 0};
    gclip_fold_workspace fold{}; // zero tickets, as at plan creation
    gclip_device_tables tables{};

    Pair(const std::vector<TensorSpec> &s, const gclip_adaptive_options &o)
        : specs(s), cpu(s, o), emu(s, o)
    {
        tables = cpu_plan_tables(emu.plan.get(), tickets, &fold);
    }

    // The step parameters gclip_adaptive_step builds.
    gclip_norm_params params(const gclip_norm_options *base, int32_t op)
    {
        gclip_norm_params np;
        EXPECT_EQ(gclip_make_params(base, op, &np), GCLIP_STATUS_SUCCESS);
        gclip_adapt_device *d = emu.device();
        np.max_norm = std::numeric_limits<float>::infinity();
        np.max_norm_ptr = nullptr;
        np.tensor_norms = d->cfg.per_tensor ? d->tensor_norms : nullptr;
        np.adapt = d;
        return np;
    }

    // The CUDA backend's launch sequence of the op. With the scale kernel as
    // a dependent launch (tables.dependent_launch), the three launches run
    // as one stream, so that scale blocks start beside the adapt kernel.
    int launch(const gclip_norm_params &np)
    {
        auto issue = [&] {
            int r = gclip_launch_norm(&tables, &np, nullptr);
            if (r == 0)
                r = gclip_launch_adapt(&tables, &np, nullptr);
            if (r == 0 && np.op == GCLIP_OP_ADAPTIVE_CLIP)
                r = gclip_launch_adapt_scale(&tables, &np, nullptr);
            return r;
        };
        const int rc =
            tables.dependent_launch ? gclip_emu::launch_concurrent({[&] { issue(); }}) : issue();
        EXPECT_EQ(tickets[0], 0u);
        for (unsigned v : fold.ticket)
            EXPECT_EQ(v, 0u) << "a fold lane's ticket is off 0";
        return rc;
    }

    // Seeded data in both copies; every `spike_every` steps one tensor is
    // 50 times larger, and `nan_at` plants a NaN.
    void fill(std::mt19937_64 &rng, int k, bool nan = false)
    {
        std::normal_distribution<float> nd(0.0f, 1.0f);
        for (size_t t = 0; t < specs.size(); ++t) {
            const float scale = (k % 11 == 10 && t == 4) ? 50.0f : (k % 17 == 16 ? 8.0f : 1.0f);
            for (int64_t i = 0; i < specs[t].numel; ++i) {
                const float v = nd(rng) * scale;
                gclip_store(cpu.bufs[t].data(), specs[t].dtype, i, v);
                gclip_store(emu.bufs[t].data(), specs[t].dtype, i, v);
            }
        }
        if (nan) {
            gclip_store(cpu.bufs[6].data(), GCLIP_F32, 5, std::nanf(""));
            gclip_store(emu.bufs[6].data(), GCLIP_F32, 5, std::nanf(""));
        }
    }

    void expect_same(int k)
    {
        for (size_t t = 0; t < specs.size(); ++t)
            ASSERT_EQ(cpu.bufs[t], emu.bufs[t]) << "tensor " << t << " after step " << k;
        ASSERT_EQ(std::memcmp(&cpu.slot(), &emu.slot(), sizeof(gclip_result_slot)), 0)
            << "result slot after step " << k;
        gclip_adaptive_info a{}, b{};
        ASSERT_EQ(gclip_adaptive_get_info(cpu.ad.get(), &a), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(gclip_adaptive_get_info(emu.ad.get(), &b), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "info after step " << k;
        ASSERT_EQ(cpu.state(), emu.state()) << "state after step " << k;
    }
};

using adaptive_methods::kMethods;
using adaptive_methods::method;

gclip_emu::Schedule schedule_of(int i)
{
    return varied_schedule(i, 100u);
}

// `steps` eager steps of every method, with spikes and a NaN step at 23,
// each compared with the CPU path in full.
void every_method_matches_the_cpu_path(int steps, bool dependent)
{
    gclip_emu::reset_launch_count();
    for (int m = 0; m < kMethods; ++m) {
        SCOPED_TRACE(m);
        gclip_emu::Schedule sched = schedule_of(m);
        if (dependent) { // room for the scale blocks beside the last norm and adapt blocks
            sched.resident_blocks = 8;
            sched.block_switch_rate = 0.5;
        }
        gclip_emu::set_schedule(sched);
        Pair p(mixed_specs(), method(m));
        p.tables.dependent_launch = dependent ? 1u : 0u;
        std::mt19937_64 rng(40 + static_cast<uint64_t>(m));
        gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
        for (int k = 0; k < steps; ++k) {
            p.fill(rng, k, k == 23);
            const int32_t op = method(m).method == GCLIP_ADAPTIVE_SPIKE_SKIP
                                   ? GCLIP_OP_ADAPTIVE_SKIP
                                   : GCLIP_OP_ADAPTIVE_CLIP;
            ASSERT_EQ(gclip_adaptive_step(p.cpu.ad.get(), &base, nullptr), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(p.launch(p.params(&base, op)), 0) << gclip_emu::error_message();
            p.expect_same(k);
        }
    }
    gclip_emu::set_schedule(gclip_emu::Schedule{});
    if (dependent)
        EXPECT_GT(gclip_emu::early_blocks(), 0u) << "no scale block started beside the adapt kernel";
    else
        EXPECT_EQ(gclip_emu::early_blocks(), 0u);
}

TEST(EmuAdaptive, EveryMethodMatchesTheCpuPathBitForBit)
{
    every_method_matches_the_cpu_path(40, false);
}

// The same with the scale kernel as a dependent launch after the adapt
// kernel (sm_90 and later), which releases it at its top.
TEST(EmuAdaptive, EveryMethodWithADependentScaleLaunchMatchesTheCpuPath)
{
    every_method_matches_the_cpu_path(25, true);
}

// A captured step's stand-in: the parameters are built once, with inv_scale
// behind a pointer to an emulated device float, and replayed while the
// float changes. Each replay must update the state as an eager CPU step
// given that value does, and leave it as that step does when the value is
// out of range (+Inf every seventh step).
TEST(EmuAdaptive, ReplayOfTheSameParamsUpdatesTheStateAsEagerSteps)
{
    for (int m = 0; m < kMethods; ++m) {
        SCOPED_TRACE(m);
        Pair p(mixed_specs(), method(m));
        float inv_scale_dev = 1.0f;
        gclip_norm_options captured = GCLIP_NORM_OPTIONS_INIT;
        captured.inv_scale_ptr = &inv_scale_dev;
        const int32_t op = method(m).method == GCLIP_ADAPTIVE_SPIKE_SKIP
                               ? GCLIP_OP_ADAPTIVE_SKIP
                               : GCLIP_OP_ADAPTIVE_CLIP;
        const gclip_norm_params graph = p.params(&captured, op);
        std::mt19937_64 rng(7 + static_cast<uint64_t>(m));
        for (int k = 0; k < 30; ++k) {
            p.fill(rng, k);
            inv_scale_dev = (k % 3 == 0) ? 1.0f : 0.5f;
            gclip_norm_options eager = GCLIP_NORM_OPTIONS_INIT;
            eager.inv_scale = inv_scale_dev;
            if (k % 7 == 6) { // out of range at execution: the step fails in its slot
                inv_scale_dev = std::numeric_limits<float>::infinity();
                eager.inv_scale_ptr = &inv_scale_dev;
            }
            ASSERT_EQ(gclip_adaptive_step(p.cpu.ad.get(), &eager, nullptr), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(p.launch(graph), 0) << gclip_emu::error_message();
            p.expect_same(k);
        }
    }
}

// A kernel that read the state after thread 0 updated it, or a row that read
// another row's history, would differ between thread orders: run the same
// steps in every order and compare the states.
TEST(EmuAdaptive, ThreadOrderDoesNotChangeTheState)
{
    for (int m : {2, 4}) {
        SCOPED_TRACE(m);
        std::vector<TensorSpec> many;
        for (int i = 0; i < 300; ++i)
            many.push_back(TensorSpec{GCLIP_F32, 3 + i % 5});
        std::vector<std::vector<unsigned char>> states;
        for (int s = 0; s < 3; ++s) {
            gclip_emu::set_schedule(schedule_of(s));
            Pair p(many, method(m));
            std::mt19937_64 rng(1);
            gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
            for (int k = 0; k < 12; ++k) {
                p.fill(rng, k);
                ASSERT_EQ(gclip_adaptive_step(p.cpu.ad.get(), &base, nullptr),
                          GCLIP_STATUS_SUCCESS);
                ASSERT_EQ(p.launch(p.params(&base, GCLIP_OP_ADAPTIVE_CLIP)), 0)
                    << gclip_emu::error_message();
                p.expect_same(k);
            }
            states.push_back(p.emu.state());
        }
        EXPECT_EQ(states[0], states[1]);
        EXPECT_EQ(states[0], states[2]);
    }
    gclip_emu::set_schedule(gclip_emu::Schedule{});
}

} // namespace
