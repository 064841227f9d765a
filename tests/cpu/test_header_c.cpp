// The public header compiles as C99 and C11 (see header_c99.c, header_c11.c,
// built with -pedantic -Werror), and C and C++ callers agree on the ABI and
// on the defaults of GCLIP_NORM_OPTIONS_INIT.
#include "gclip.h"
#include "header_abi.h"

#include <gtest/gtest.h>

#include <cstddef>

namespace {

header_abi cxx_view()
{
    header_abi a{};
    gclip_norm_options opts = GCLIP_NORM_OPTIONS_INIT;
    a.version = GCLIP_VERSION;
    a.size_tensor = sizeof(gclip_tensor);
    a.size_norm_options = sizeof(gclip_norm_options);
    a.size_result = sizeof(gclip_result);
    a.size_device_result = sizeof(gclip_device_result);
    a.off_tensor_numel = offsetof(gclip_tensor, numel);
    a.off_tensor_dtype = offsetof(gclip_tensor, dtype);
    a.off_options_nonfinite = offsetof(gclip_norm_options, nonfinite);
    a.off_options_tensor_norms = offsetof(gclip_norm_options, tensor_norms);
    a.off_result_nonfinite = offsetof(gclip_result, nonfinite);
    a.off_result_has_norm = offsetof(gclip_result, has_norm);
    a.init_max_norm = opts.max_norm;
    a.init_norm_type = opts.norm_type;
    a.init_eps = opts.eps;
    a.init_inv_scale = opts.inv_scale;
    a.init_nonfinite = opts.nonfinite;
    a.init_tensor_norms_null = opts.tensor_norms == nullptr;
    a.device_cpu = GCLIP_DEVICE_CPU;
    return a;
}

void expect_same(const header_abi &c, const header_abi &cxx)
{
    EXPECT_EQ(c.version, cxx.version);
    EXPECT_EQ(c.size_tensor, cxx.size_tensor);
    EXPECT_EQ(c.size_norm_options, cxx.size_norm_options);
    EXPECT_EQ(c.size_result, cxx.size_result);
    EXPECT_EQ(c.size_device_result, cxx.size_device_result);
    EXPECT_EQ(c.off_tensor_numel, cxx.off_tensor_numel);
    EXPECT_EQ(c.off_tensor_dtype, cxx.off_tensor_dtype);
    EXPECT_EQ(c.off_options_nonfinite, cxx.off_options_nonfinite);
    EXPECT_EQ(c.off_options_tensor_norms, cxx.off_options_tensor_norms);
    EXPECT_EQ(c.off_result_nonfinite, cxx.off_result_nonfinite);
    EXPECT_EQ(c.off_result_has_norm, cxx.off_result_has_norm);
    EXPECT_EQ(c.init_max_norm, cxx.init_max_norm);
    EXPECT_EQ(c.init_norm_type, cxx.init_norm_type);
    EXPECT_EQ(c.init_eps, cxx.init_eps);
    EXPECT_EQ(c.init_inv_scale, cxx.init_inv_scale);
    EXPECT_EQ(c.init_nonfinite, cxx.init_nonfinite);
    EXPECT_EQ(c.init_tensor_norms_null, cxx.init_tensor_norms_null);
    EXPECT_EQ(c.device_cpu, cxx.device_cpu);
}

TEST(HeaderAsC, C99SeesTheSameAbiAsCxx)
{
    header_abi c{};
    gclip_header_abi_c99(&c);
    expect_same(c, cxx_view());
}

TEST(HeaderAsC, C11SeesTheSameAbiAsCxx)
{
    header_abi c{};
    gclip_header_abi_c11(&c);
    expect_same(c, cxx_view());
}

// The documented defaults: PyTorch's eps, L2, no loss scale, SKIP.
TEST(HeaderAsC, OptionDefaultsAreDocumentedValues)
{
    const gclip_norm_options init = GCLIP_NORM_OPTIONS_INIT;
    EXPECT_EQ(init.max_norm, 1.0f);
    EXPECT_EQ(init.norm_type, 2.0f);
    EXPECT_EQ(init.eps, 1e-6f);
    EXPECT_EQ(init.inv_scale, 1.0f);
    EXPECT_EQ(init.nonfinite, GCLIP_NONFINITE_SKIP);
    EXPECT_EQ(init.tensor_norms, nullptr);

    const gclip_norm_options def = gclip_norm_options_default();
    EXPECT_EQ(def.max_norm, init.max_norm);
    EXPECT_EQ(def.norm_type, init.norm_type);
    EXPECT_EQ(def.eps, init.eps);
    EXPECT_EQ(def.inv_scale, init.inv_scale);
    EXPECT_EQ(def.nonfinite, init.nonfinite);
    EXPECT_EQ(def.tensor_norms, init.tensor_norms);
}

} // namespace
