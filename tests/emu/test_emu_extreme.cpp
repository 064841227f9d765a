// test_emu_extreme.cpp - the norm kernel's arithmetic (float groups folded
// into double, the exact path of groups outside the safe range, the integer
// max of the inf-norm) at the extremes of every element type, run by the
// SIMT emulator against the CPU path and the long-double oracle: every
// chunk's partial bit for bit as the CPU path computes it, and the norm
// within 1e-6 of the oracle. Also: f16/bf16 NaNs of any payload leave the
// scale and clamp kernels as the canonical NaN, byte for byte as the CPU
// path leaves them. (docs/gpu-arithmetic.md)
#include "emu_harness.hpp"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

const int64_t kChunk = GCLIP_CHUNK_ELEMS;

// A plan's tensors and how to fill element i of tensor k.
struct ExtremeCase {
    const char *name;
    std::vector<emu::Spec> specs;
    std::function<float(std::size_t k, int64_t i, oracle::Rng &rng)> value;
};

double magnitude(oracle::Rng &rng, double lo_exp10, double hi_exp10)
{
    const double m = std::pow(10.0, rng.uniform(lo_exp10, hi_exp10));
    return rng.range(0, 1) ? m : -m;
}

std::vector<ExtremeCase> cases()
{
    std::vector<ExtremeCase> c;
    // squares overflow float in every group: the exact path everywhere
    c.push_back({"NearFltMaxF32", {{GCLIP_F32, kChunk + 77, 1}, {GCLIP_BF16, 4099, 3}},
                 [](std::size_t, int64_t, oracle::Rng &r) {
                     return static_cast<float>(magnitude(r, 35.0, 37.0));
                 }});
    // squares underflow float (2^-110 and below): the exact path
    c.push_back({"AllTiny", {{GCLIP_F32, 3 * 4096 + 5, 2}, {GCLIP_BF16, 5000, 1}},
                 [](std::size_t, int64_t, oracle::Rng &r) {
                     return static_cast<float>(magnitude(r, -38.0, -20.0));
                 }});
    // denormal floats and subnormal halves
    c.push_back({"Denormals",
                 {{GCLIP_F32, 9000, 1}, {GCLIP_F16, 9000, 5}, {GCLIP_BF16, 9000, 0}},
                 [](std::size_t k, int64_t, oracle::Rng &r) {
                     if (k == 1)
                         return static_cast<float>(magnitude(r, -7.2, -4.3));
                     return static_cast<float>(magnitude(r, -44.5, -38.5));
                 }});
    // 1e-30 and 1e30 side by side in every group, plus ordinary values; the
    // small tensors end in a batch only some threads take (900 vectors)
    c.push_back({"MixedInOneTensor",
                 {{GCLIP_F32, 2 * kChunk + 333, 3}, {GCLIP_BF16, 70001, 7}, {GCLIP_F32, 3601, 0},
                  {GCLIP_F16, 7205, 3}},
                 [](std::size_t, int64_t i, oracle::Rng &r) {
                     switch (i % 3) {
                     case 0: return static_cast<float>(magnitude(r, -31.0, -29.0));
                     case 1: return static_cast<float>(magnitude(r, 29.0, 31.0));
                     default: return static_cast<float>(magnitude(r, -2.0, 2.0));
                     }
                 }});
    // f16 at its top (65504) and bottom, bf16 at float's top
    c.push_back({"HalfExtremes", {{GCLIP_F16, 33000, 3}, {GCLIP_BF16, 33000, 5}},
                 [](std::size_t k, int64_t i, oracle::Rng &r) {
                     if (k == 0)
                         return static_cast<float>(i % 2 ? magnitude(r, 4.0, 4.8)
                                                         : magnitude(r, -7.5, -5.0));
                     return static_cast<float>(i % 2 ? magnitude(r, 36.0, 37.5)
                                                     : magnitude(r, -39.0, -30.0));
                 }});
    // groups of zeros between ordinary groups (sparse gradients)
    c.push_back({"MostlyZeros", {{GCLIP_F32, kChunk + 1000, 0}, {GCLIP_F16, 40000, 1}},
                 [](std::size_t, int64_t i, oracle::Rng &r) {
                     return (i / 64) % 5 == 0 ? static_cast<float>(magnitude(r, -3.0, 1.0)) : 0.0f;
                 }});
    // small chunks (at most 256 vectors: the norm kernel walks them a warp
    // each when a block's range holds several) of every dtype, at sizes
    // around 32, 128 and 256 vectors, with heads and tails, and a few of 257
    // vectors and a chunk remainder between them; squares past float's top
    // and bottom, mixed and ordinary values tensor by tensor
    {
        ExtremeCase sc{"SmallChunks", {}, nullptr};
        int offset = 0;
        for (gclip_dtype dt : specs::all_dtypes()) {
            const int64_t lanes = 16 / oracle::dtype_size(dt);
            for (int64_t v : {1, 2, 31, 32, 33, 127, 128, 129, 200, 255, 256, 257})
                sc.specs.push_back({dt, v * lanes + v % 3, offset++ % 8});
            sc.specs.push_back({dt, 256 * lanes + lanes, 0});
        }
        sc.specs.push_back({GCLIP_F32, kChunk + 700, 2});
        sc.specs.push_back({GCLIP_F16, 5, 1});
        const std::vector<emu::Spec> sp = sc.specs;
        sc.value = [sp](std::size_t k, int64_t i, oracle::Rng &r) {
            const bool f16 = sp[k].dtype == GCLIP_F16;
            switch (k % 4) {
            case 0: return static_cast<float>(f16 ? magnitude(r, 4.0, 4.8) : magnitude(r, 35.0, 37.0));
            case 1: return static_cast<float>(f16 ? magnitude(r, -7.5, -5.0) : magnitude(r, -38.0, -20.0));
            case 2:
                if (f16)
                    return static_cast<float>(i % 2 ? magnitude(r, 3.0, 4.5) : magnitude(r, -7.0, -3.0));
                return static_cast<float>(i % 3 == 0   ? magnitude(r, -31.0, -29.0)
                                          : i % 3 == 1 ? magnitude(r, 29.0, 31.0)
                                                       : magnitude(r, -2.0, 2.0));
            default: return static_cast<float>(magnitude(r, -2.0, 2.0));
            }
        };
        c.push_back(sc);
    }
    return c;
}

void fill(emu::Fixture &f, const ExtremeCase &ec, uint64_t seed)
{
    oracle::Rng rng(seed);
    for (std::size_t k = 0; k < ec.specs.size(); ++k)
        for (int64_t i = 0; i < ec.specs[k].numel; ++i)
            f.set_pristine(k, i, ec.value(k, i, rng));
    f.reset_both();
}

bool same_bits(double a, double b)
{
    if (std::isnan(a) && std::isnan(b))
        return true;
    return std::memcmp(&a, &b, sizeof a) == 0;
}

// Every chunk's partial of the emulated norm kernel against the CPU path's.
void expect_partials_bitwise(const emu::Fixture &f)
{
    const auto *cpu = static_cast<const gclip_cpu_state *>(f.cpu_plan()->engine);
    for (uint32_t c = 0; c < f.num_chunks(); ++c) {
        const double e = f.tables().partials[c], h = cpu->partials[c];
        EXPECT_TRUE(same_bits(e, h)) << "chunk " << c << ": emulated " << e << ", CPU " << h;
    }
}

class EmuExtreme : public ::testing::TestWithParam<std::size_t> {};

TEST_P(EmuExtreme, PartialsBitwiseAndNormWithinOneInAMillion)
{
    const ExtremeCase ec = cases()[GetParam()];
    emu::Fixture f(ec.specs, 7000 + GetParam());
    fill(f, ec, 7100 + GetParam());
    // cap 0: one block per chunk, every chunk walked by a whole block; cap 3:
    // blocks walk ranges, and runs of small chunks go a warp each
    for (uint32_t cap : {0u, 3u})
        for (float p : {2.0f, 1.0f, INFINITY, 3.0f}) {
            SCOPED_TRACE(std::string(ec.name) + " p=" + std::to_string(p) + " cap " +
                         std::to_string(cap));
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.max_norm = 1.0f;
            o.norm_type = p;
            float sentinel;
            o.tensor_norms = &sentinel; // per-tensor norms too (the fixture's buffers)
            f.set_grid_caps(cap, cap);
            f.reset_both();
            ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_TOTAL_NORM), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
            ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_TOTAL_NORM), 0) << gclip_emu::error_message();
            expect_partials_bitwise(f);
            f.expect_norm_op_matches(o, GCLIP_OP_TOTAL_NORM);
            if (::testing::Test::HasFailure())
                return;
        }
}

INSTANTIATE_TEST_SUITE_P(Ranges, EmuExtreme, ::testing::Range<std::size_t>(0, 7),
                         [](const ::testing::TestParamInfo<std::size_t> &i) {
                             return std::string(cases()[i.param].name);
                         });

// NaNs of every payload and sign in f16 and bf16 tensors: clamped (NaN kept)
// and scaled (NaN * factor), every engine stores the canonical NaN 0x7fff,
// the same bytes as the CPU path.
TEST(EmuExtremeNaN, HalfNaNsLeaveAsTheCanonicalNaN)
{
    const std::vector<emu::Spec> specs = {{GCLIP_F16, 3000, 3}, {GCLIP_BF16, 3000, 1}};
    for (int op = 0; op < 2; ++op) {
        emu::Fixture f(specs, 7200 + op);
        oracle::Rng rng(7300 + op);
        std::vector<std::vector<int64_t>> nans(specs.size());
        for (std::size_t k = 0; k < specs.size(); ++k)
            for (int64_t i = 0; i < specs[k].numel; i += 1 + rng.range(0, 40)) {
                // a NaN of random sign and payload, written as raw bits
                const uint16_t payload = static_cast<uint16_t>(rng.range(1, k == 0 ? 0x3ff : 0x7f));
                const uint16_t h = static_cast<uint16_t>(
                    (rng.range(0, 1) ? 0x8000 : 0) | (k == 0 ? 0x7c00 : 0x7f80) | payload);
                f.set_pristine_bits16(k, i, h);
                nans[k].push_back(i);
            }
        f.reset_both();
        if (op == 0) {
            ASSERT_EQ(f.cpu_clamp(0.5f), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(f.emu_clamp(0.5f), 0) << gclip_emu::error_message();
        } else {
            gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
            o.max_norm = 1.0f;
            o.nonfinite = GCLIP_NONFINITE_PROPAGATE;
            ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_CLIP_NORM), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_CLIP_NORM), 0) << gclip_emu::error_message();
        }
        f.expect_data_equals_cpu();
        for (std::size_t k = 0; k < specs.size(); ++k)
            for (int64_t i : nans[k]) {
                uint16_t h;
                std::memcpy(&h, static_cast<const char *>(f.device_data(k)) + 2 * i, 2);
                ASSERT_EQ(h, 0x7fff) << "tensor " << k << " element " << i << " op " << op;
            }
    }
}

} // namespace
