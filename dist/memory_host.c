/*
 * memory_host.c - buffers of CPU plans: host memory, and no ordering to do
 * (every CPU call has completed when it returns).
 */
#include <stdlib.h>
#include <string.h>

#include "dist_internal.h"

/* One allocation: gather buffer, poison, send slots. */
static gclip_status host_init(gclip_dist_plan *p)
{
    const size_t n = p->offsets[p->num_groups] + 1 + (p->transport ? 0 : p->num_groups);
    gclip_partial *block = calloc(n, sizeof *block);
    if (!block)
        return gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "gather buffer: host allocation failed");
    p->memory_state = block;
    p->gather = block;
    p->poison = block + p->offsets[p->num_groups];
    *p->poison = p->poison_value;
    p->send = p->transport ? NULL : p->poison + 1;
    return GCLIP_STATUS_SUCCESS;
}

static void host_release(gclip_dist_plan *p)
{
    free(p->memory_state);
    p->memory_state = NULL;
}

static gclip_status host_order(gclip_dist_plan *p, gclip_stream stream)
{
    (void)p;
    (void)stream;
    return GCLIP_STATUS_SUCCESS;
}

static gclip_status host_copy(gclip_dist_plan *p, void *dst, const void *src, size_t bytes,
                              gclip_dist_copy_kind kind, int sync, gclip_stream stream)
{
    (void)p;
    (void)kind;
    (void)sync;
    (void)stream;
    memmove(dst, src, bytes);
    return GCLIP_STATUS_SUCCESS;
}

const gclip_dist_memory gclip_dist_host_memory = {host_init, host_release, host_order, host_order,
                                                  host_copy};
