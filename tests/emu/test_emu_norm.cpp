// test_emu_norm.cpp - the norm kernel (and the scale kernel after it) run by
// the SIMT emulator for the one-call norm operations, every row of each op's
// conformance table (tests/common/specs.hpp), on plans built around the
// vector and chunk boundaries, against the CPU path and the long-double
// oracle. Each row runs in another schedule; the first row runs in every
// schedule, with bitwise identical results across them. The phases
// (compute the factor, accumulate) run the same norm kernel; their tables
// run in test_emu_contract.cpp.
#include "emu_harness.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <tuple>

namespace {

struct PlanShape {
    const char *name;
    std::function<std::vector<emu::Spec>()> make;
};

const std::vector<PlanShape> &shapes()
{
    const int64_t c = GCLIP_CHUNK_ELEMS;
    static const std::vector<PlanShape> s = {
        {"OneOddF32", [=] { return std::vector<emu::Spec>{{GCLIP_F32, 2 * c + 37, 1}}; }},
        {"BoundariesF32", [] { return emu::boundary_sizes(GCLIP_F32); }},
        {"BoundariesF16", [] { return emu::boundary_sizes(GCLIP_F16); }},
        {"BoundariesBF16", [] { return emu::boundary_sizes(GCLIP_BF16); }},
        {"BoundariesF64", [] { return emu::boundary_sizes(GCLIP_F64); }},
        {"Mixed300", [] { return emu::mixed_many(300, 300); }},
        {"Empty", [] { return std::vector<emu::Spec>{}; }},
        {"ZeroSized",
         [] { return std::vector<emu::Spec>{{GCLIP_F16, 0, 0}, {GCLIP_F32, 0, 3}, {GCLIP_F64, 0, 1}}; }},
        {"Spanning", [] { return emu::spanning_chunks(); }},
    };
    return s;
}

const int32_t kNormOps[] = {GCLIP_OP_TOTAL_NORM, GCLIP_OP_CLIP_NORM, GCLIP_OP_CLIP_PER_TENSOR};

using Param = std::tuple<std::size_t, int32_t>; // shape, op

class EmuNorm : public ::testing::TestWithParam<Param> {};

TEST_P(EmuNorm, EveryRowOfTheOpsTableMatchesTheCpuPath)
{
    // plain variables: lambdas below capture them (C++17 forbids capturing
    // structured bindings, and clang enforces it)
    const std::size_t shape = std::get<0>(GetParam());
    const int32_t op = std::get<1>(GetParam());
    emu::Fixture f(shapes()[shape].make(), 1000 + shape);
    const std::vector<specs::NormCase> rows = specs::norm_cases(op);
    for (std::size_t r = 0; r < rows.size(); ++r) {
        const specs::NormCase &row = rows[r];
        SCOPED_TRACE("row " + row.name());
        const auto total = emu::oracle_total(f, row.norm_type, row.inv_scale);
        gclip_norm_options o = row.options(static_cast<float>(total));
        float sentinel;
        o.tensor_norms = &sentinel; // ask for per-tensor norms (the fixture supplies buffers)

        f.reset_host();
        ASSERT_EQ(f.cpu_norm_op(o, op), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        if (r == 0) {
            emu::for_every_schedule(
                f, [&] { return f.emu_norm_op(o, op); }, [&] { f.expect_norm_op_matches(o, op); });
        } else {
            const emu::NamedSchedule &s = emu::schedules()[r % emu::schedules().size()];
            SCOPED_TRACE(std::string("schedule ") + s.name);
            f.reset();
            emu::use(s.s);
            ASSERT_EQ(f.emu_norm_op(o, op), 0) << gclip_emu::error_message();
            f.expect_norm_op_matches(o, op);
        }
        if (::testing::Test::HasFailure())
            return;
    }
}

// The same values at every start offset modulo 16 bytes give the emulated
// kernels the same bits: the norm walks a chunk by element index
// (gclip_split_elements), reading a chunk that does not start on a 16-byte
// boundary with element-sized loads, and its groups are those of an aligned
// copy. Sizes around one vector, the warp-walked small chunk (256 vectors),
// one batch of every thread (1,024 vectors) and the chunk; every kind, with
// per-tensor norms; each run also matches the CPU path.
TEST(EmuNormOffsets, SameBitsAtEveryOffsetModulo16)
{
    const int64_t sizes[] = {1, 3, 9, 257, 1023, 1024, 1027, 2055, 4103, 8191, GCLIP_CHUNK_ELEMS + 5};
    for (gclip_dtype dt : specs::all_dtypes()) {
        const int per = 16 / static_cast<int>(oracle::dtype_size(dt));
        for (float p : {2.0f, 1.0f, 3.0f, INFINITY}) {
            SCOPED_TRACE("dtype " + std::to_string(dt) + " p " + std::to_string(p));
            uint32_t total = 0;
            std::vector<uint32_t> per_tensor;
            for (int shift = -1; shift < per; ++shift) {
                std::vector<emu::Spec> specs;
                for (std::size_t k = 0; k < std::size(sizes); ++k)
                    specs.push_back({dt, sizes[k], shift < 0 ? 0 : static_cast<int>((3 * k + shift) % per)});
                emu::Fixture f(specs, 77); // the same values whatever the offsets
                gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
                o.norm_type = p;
                o.max_norm = 1.0f;
                float sentinel;
                o.tensor_norms = &sentinel;
                f.reset_host();
                ASSERT_EQ(f.cpu_norm_op(o, GCLIP_OP_TOTAL_NORM), GCLIP_STATUS_SUCCESS) << gclip_last_error();
                f.reset();
                ASSERT_EQ(f.emu_norm_op(o, GCLIP_OP_TOTAL_NORM), 0) << gclip_emu::error_message();
                f.expect_norm_op_matches(o, GCLIP_OP_TOTAL_NORM);
                const uint32_t got = oracle::float_to_bits(f.emu_result().total_norm);
                std::vector<uint32_t> got_tensors;
                for (std::size_t k = 0; k < specs.size(); ++k)
                    got_tensors.push_back(oracle::float_to_bits(f.emu_tensor_norm(k)));
                if (shift < 0) {
                    total = got;
                    per_tensor = got_tensors;
                    continue;
                }
                EXPECT_EQ(got, total) << "shift " << shift;
                EXPECT_TRUE(got_tensors == per_tensor) << "shift " << shift;
                if (::testing::Test::HasFailure())
                    return;
            }
        }
    }
}

std::string param_name(const ::testing::TestParamInfo<Param> &info)
{
    const auto [shape, op] = info.param;
    return std::string(shapes()[shape].name) + "_" + emu::op_name(op);
}

INSTANTIATE_TEST_SUITE_P(Plans, EmuNorm,
                         ::testing::Combine(::testing::Range<std::size_t>(0, 9),
                                            ::testing::ValuesIn(kNormOps)),
                         param_name);

} // namespace
