/*
 * adapt_memory.c - the memory of an adaptive clipper or an AGC on its plan's
 * device, through the plan's backend (gclip_backend's mem_* entries: host
 * memory for CPU plans, device memory and waited-for copies on a private
 * stream for CUDA plans). None of this runs in a step; the callers in
 * adapt.c and agc.c first wait for the plan's last operation.
 */
#include <string.h>

#include "gclip_internal.h"

gclip_status gclip_adapt_mem_alloc(const gclip_plan *plan, size_t bytes, gclip_adapt_memory *m)
{
    memset(m, 0, sizeof *m);
    m->plan = plan;
    const gclip_status s = plan->backend->mem_alloc(plan, bytes, &m->ptr);
    if (s != GCLIP_STATUS_SUCCESS)
        m->ptr = NULL;
    return s;
}

void gclip_adapt_mem_free(gclip_adapt_memory *m)
{
    if (m->plan && m->ptr)
        m->plan->backend->mem_free(m->plan, m->ptr);
    m->ptr = NULL;
}

gclip_status gclip_adapt_mem_write(const gclip_adapt_memory *m, size_t offset, const void *src,
                                   size_t bytes)
{
    return m->plan->backend->mem_write(m->plan, (char *)m->ptr + offset, src, bytes);
}

gclip_status gclip_adapt_mem_read(const gclip_adapt_memory *m, size_t offset, void *dst,
                                  size_t bytes)
{
    return m->plan->backend->mem_read(m->plan, dst, (const char *)m->ptr + offset, bytes);
}
