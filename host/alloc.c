/*
 * alloc.c - the single gate for host allocations, with a hook that lets the
 * fault-injection tests fail each allocation in turn.
 */
#include <stdlib.h>

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

void gclip_host_free(void *ptr)
{
    free(ptr);
}
