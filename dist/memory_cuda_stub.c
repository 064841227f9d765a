/*
 * memory_cuda_stub.c - CUDA plans in a build without the CUDA toolkit.
 */
#include "dist_internal.h"

static gclip_status stub_init(gclip_dist_plan *p)
{
    (void)p;
    return gclip_dist_fail(GCLIP_STATUS_NOT_SUPPORTED,
                           "gclip::dist was built without CUDA: use GCLIP_DEVICE_CPU");
}

static void stub_release(gclip_dist_plan *p)
{
    (void)p;
}

static gclip_status stub_order(gclip_dist_plan *p, gclip_stream stream)
{
    (void)p;
    (void)stream;
    return GCLIP_STATUS_NOT_SUPPORTED;
}

static gclip_status stub_copy(gclip_dist_plan *p, void *dst, const void *src, size_t bytes,
                              gclip_dist_copy_kind kind, int sync, gclip_stream stream)
{
    (void)p, (void)dst, (void)src, (void)bytes, (void)kind, (void)sync, (void)stream;
    return GCLIP_STATUS_NOT_SUPPORTED;
}

const gclip_dist_memory gclip_dist_cuda_memory = {stub_init, stub_release, stub_order, stub_order,
                                                  stub_copy};
