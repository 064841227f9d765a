/* The public header must compile as strict C99 and C11 (-pedantic -Werror):
 * this file is built once per standard, with GCLIP_HEADER_ABI_FN naming its
 * entry point, and reports how that standard lays out the public structs so
 * that the C++ test can check that C and C++ callers see the same ABI. */
#include "gclip.h"

#include <stddef.h>

#include "header_abi.h"

void GCLIP_HEADER_ABI_FN(struct header_abi *out)
{
    gclip_norm_options opts = GCLIP_NORM_OPTIONS_INIT;
    out->version = GCLIP_VERSION;
    out->size_tensor = sizeof(gclip_tensor);
    out->size_norm_options = sizeof(gclip_norm_options);
    out->size_result = sizeof(gclip_result);
    out->size_device_result = sizeof(gclip_device_result);
    out->off_tensor_numel = offsetof(gclip_tensor, numel);
    out->off_tensor_dtype = offsetof(gclip_tensor, dtype);
    out->off_options_nonfinite = offsetof(gclip_norm_options, nonfinite);
    out->off_options_tensor_norms = offsetof(gclip_norm_options, tensor_norms);
    out->off_result_nonfinite = offsetof(gclip_result, nonfinite);
    out->off_result_has_norm = offsetof(gclip_result, has_norm);
    out->init_max_norm = opts.max_norm;
    out->init_norm_type = opts.norm_type;
    out->init_eps = opts.eps;
    out->init_inv_scale = opts.inv_scale;
    out->init_nonfinite = (int)opts.nonfinite;
    out->init_tensor_norms_null = opts.tensor_norms == NULL;
    out->device_cpu = GCLIP_DEVICE_CPU;
}
