// test_emu_norm.cpp - the norm kernel (and the scale kernel after it) run by
// the SIMT emulator, for every norm type and norm operation, on plans built
// around the vector and chunk boundaries, against the CPU path, in every
// schedule, with bitwise identical results across schedules.
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
        {"Mixed300", [] { return emu::mixed_many(300, 300); }},
        {"Empty", [] { return std::vector<emu::Spec>{}; }},
        {"ZeroSized", [] { return std::vector<emu::Spec>{{GCLIP_F16, 0, 0}, {GCLIP_F32, 0, 3}}; }},
        {"Spanning", [] { return emu::spanning_chunks(); }},
    };
    return s;
}

using Param = std::tuple<std::size_t, float, int32_t>; // shape, norm type, op

class EmuNorm : public ::testing::TestWithParam<Param> {};

TEST_P(EmuNorm, MatchesCpuPathInEveryScheduleBitwiseAlike)
{
    const auto [shape, p, op] = GetParam();
    emu::Fixture f(shapes()[shape].make(), 1000 + shape);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.norm_type = p;
    o.max_norm = 2.0f; // clips big tensors and the total, not the smallest tensors
    o.inv_scale = p == 1.0f ? 0.25f : 1.0f;
    float sentinel;
    o.tensor_norms = &sentinel; // ask for per-tensor norms (the fixture supplies buffers)

    ASSERT_EQ(f.cpu_norm_op(o, op), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    emu::for_every_schedule(
        f, [&] { return f.emu_norm_op(o, op); }, [&] { f.expect_norm_op_matches(o, op); });
}

std::string param_name(const ::testing::TestParamInfo<Param> &info)
{
    const auto [shape, p, op] = info.param;
    std::string n = shapes()[shape].name;
    n += std::isinf(p) ? "_Linf" : "_L" + std::to_string(static_cast<int>(p));
    n += op == GCLIP_OP_TOTAL ? "_Total" : op == GCLIP_OP_GLOBAL ? "_Global" : "_PerTensor";
    return n;
}

INSTANTIATE_TEST_SUITE_P(Plans, EmuNorm,
                         ::testing::Combine(::testing::Range<std::size_t>(0, 8),
                                            ::testing::Values(1.0f, 2.0f, 3.0f, INFINITY),
                                            ::testing::Values(int32_t{GCLIP_OP_TOTAL},
                                                              int32_t{GCLIP_OP_GLOBAL},
                                                              int32_t{GCLIP_OP_PER_TENSOR})),
                         param_name);

} // namespace
