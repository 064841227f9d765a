/*
 * cuda_stub.c - the CUDA backend of a build without CUDA: plan creation on a
 * CUDA device answers GCLIP_STATUS_NOT_SUPPORTED, and no device is ever
 * counted. No plan ever reaches the other entries.
 */
#include "gclip_internal.h"

int gclip_cuda_visible_devices(void)
{
    return 0;
}

static gclip_status no_cuda_init(gclip_plan *plan)
{
    (void)plan;
    return gclip_fail(GCLIP_STATUS_NOT_SUPPORTED,
                      "this gclip build has no CUDA backend (configure with GCLIP_ENABLE_CUDA=ON); "
                      "use GCLIP_DEVICE_CPU");
}

static void no_cuda_release(gclip_plan *plan)
{
    (void)plan;
}

const gclip_backend gclip_cuda_backend = {
    "cuda (not built)", no_cuda_init, no_cuda_release, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL,
};
