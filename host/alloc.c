/*
 * alloc.c - the single gate for host allocations, with a hook that lets the
 * fault-injection tests fail each allocation in turn.
 */
#include <stdlib.h>
#include <string.h>

#include "gclip_internal.h"

static gclip_alloc_hook_fn alloc_hook;
static size_t alloc_index;

void gclip_set_alloc_hook(gclip_alloc_hook_fn hook)
{
    alloc_hook = hook;
    alloc_index = 0;
}

void *gclip_host_alloc(size_t bytes)
{
    if (alloc_hook && alloc_hook(alloc_index++, bytes))
        return NULL;
    /* never 0 bytes: a NULL from malloc(0) would read as a failure */
    return malloc(bytes ? bytes : 1);
}

gclip_status gclip_host_alloc_zeroed(size_t bytes, const char *what, void **ptr)
{
    *ptr = gclip_host_alloc(bytes);
    if (!*ptr)
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "%s: host allocation failed", what);
    memset(*ptr, 0, bytes);
    return GCLIP_STATUS_SUCCESS;
}

void gclip_host_free(void *ptr)
{
    free(ptr);
}
