/*
 * gpt2_broken.c - library bugs the main job must see (its checks exit 1):
 * linked into copies of gpt2_clip with -Wl,--wrap, so that the program's
 * own calls reach these instead of the library's (examples/CMakeLists.txt).
 *
 *   GPT2_BROKEN_SHORT_TENSOR  the plan takes the first tensor at half its
 *                             length: its other half is neither measured
 *                             nor clipped
 *   GPT2_BROKEN_NO_WRITE      every clip after the first returns success
 *                             and does nothing
 */
#include <stddef.h>
#include <string.h>

#include "gclip.h"

#if defined(GPT2_BROKEN_SHORT_TENSOR)
gclip_status __real_gclip_plan_create(gclip_plan **plan, const gclip_tensor *tensors,
                                      size_t count, int device);
gclip_status __wrap_gclip_plan_create(gclip_plan **plan, const gclip_tensor *tensors,
                                      size_t count, int device)
{
    gclip_tensor t[256];
    if (count == 0 || count > 256)
        return __real_gclip_plan_create(plan, tensors, count, device);
    memcpy(t, tensors, count * sizeof *t);
    t[0].numel /= 2;
    return __real_gclip_plan_create(plan, t, count, device);
}
#elif defined(GPT2_BROKEN_NO_WRITE)
gclip_status __real_gclip_clip_grad_norm(gclip_plan *plan, const gclip_norm_options *options,
                                         gclip_stream stream);
gclip_status __wrap_gclip_clip_grad_norm(gclip_plan *plan, const gclip_norm_options *options,
                                         gclip_stream stream)
{
    static int calls;
    if (calls++ == 0)
        return __real_gclip_clip_grad_norm(plan, options, stream);
    return GCLIP_STATUS_SUCCESS;
}
#else
#error "define GPT2_BROKEN_SHORT_TENSOR or GPT2_BROKEN_NO_WRITE"
#endif
