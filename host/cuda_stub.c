/*
 * cuda_stub.c - the CUDA backend of a build without CUDA: every entry point
 * answers GCLIP_STATUS_NOT_SUPPORTED, and no device is ever counted.
 */
#include "gclip_internal.h"

static gclip_status no_cuda(void)
{
    return gclip_fail(GCLIP_STATUS_NOT_SUPPORTED,
                      "this gclip build has no CUDA backend (configure with GCLIP_ENABLE_CUDA=ON); "
                      "use GCLIP_DEVICE_CPU");
}

int gclip_cuda_count_devices(void)
{
    return 0;
}

gclip_status gclip_cuda_init(gclip_plan *plan)
{
    (void)plan;
    return no_cuda();
}

void gclip_cuda_release(gclip_plan *plan)
{
    (void)plan;
}

gclip_status gclip_cuda_upload_tensors(gclip_plan *plan, gclip_stream stream)
{
    (void)plan;
    (void)stream;
    return no_cuda();
}

gclip_status gclip_cuda_norm_op(gclip_plan *plan, const gclip_norm_params *np, gclip_stream stream)
{
    (void)plan;
    (void)np;
    (void)stream;
    return no_cuda();
}

gclip_status gclip_cuda_value_op(gclip_plan *plan, float clip_value, gclip_stream stream)
{
    (void)plan;
    (void)clip_value;
    (void)stream;
    return no_cuda();
}

gclip_status gclip_cuda_fetch_result(gclip_plan *plan, gclip_result_slot *out)
{
    (void)plan;
    (void)out;
    return no_cuda();
}

const gclip_device_result *gclip_cuda_device_result(const gclip_plan *plan)
{
    (void)plan;
    return NULL;
}
