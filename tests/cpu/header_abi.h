/* header_abi.h - what a C translation unit sees of the public structs.
 * Filled by header_c99.c and header_c11.c, compared by test_header_c.cpp. */
#ifndef GCLIP_TEST_HEADER_ABI_H
#define GCLIP_TEST_HEADER_ABI_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct header_abi {
    int version;
    size_t size_tensor, size_norm_options, size_result, size_device_result;
    size_t off_tensor_numel, off_tensor_dtype;
    size_t off_options_nonfinite, off_options_tensor_norms;
    size_t off_result_nonfinite, off_result_has_norm;
    float init_max_norm, init_norm_type, init_eps, init_inv_scale;
    int init_nonfinite, init_tensor_norms_null;
    int device_cpu;
};

void gclip_header_abi_c99(struct header_abi *out);
void gclip_header_abi_c11(struct header_abi *out);

#ifdef __cplusplus
}
#endif

#endif
