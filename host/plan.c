/*
 * plan.c - building, rebinding and destroying plans. The step calls and the
 * results are in steps.c; both reach the engine through plan->backend.
 */
#include <math.h>
#include <string.h>

#include "gclip_internal.h"
#include "gclip_kernels.h" /* gclip_span_is_small */

/* Most chunks a plan may have: chunk indices are 32-bit in the kernels. */
#define GCLIP_MAX_CHUNKS ((uint64_t)INT32_MAX)

int gclip_cuda_device_count(void)
{
    return gclip_cuda_visible_devices();
}

int gclip_dependent_launch_wanted(int compute_major, const char *setting)
{
    return compute_major >= 9 && setting && strcmp(setting, "1") == 0;
}

int gclip_scale_blocks_wanted(int occupancy, const gclip_plan *plan)
{
    uint32_t small = 0;
    for (uint32_t c = 0; c < plan->num_chunks; c++) {
        const gclip_tensor_desc *d = &plan->tensors[plan->chunks[c].tensor];
        int64_t begin, count;
        gclip_chunk_range(d->numel, plan->chunks[c].index, &begin, &count);
        const uintptr_t base = (uintptr_t)d->data + (uintptr_t)(begin * gclip_dtype_size(d->dtype));
        small += gclip_span_is_small(base, count, d->dtype) != 0;
    }
    const int wanted = plan->num_chunks > 0 && 2 * (uint64_t)small >= plan->num_chunks ? occupancy : 2;
    return occupancy < wanted ? occupancy : wanted;
}

static void plan_free(gclip_plan *p)
{
    if (!p)
        return;
    if (p->backend)
        p->backend->release(p);
    gclip_host_free(p->saved_data);
    gclip_host_free(p->scratch);
    gclip_host_free(p->chunks);
    gclip_host_free(p->tensors);
    gclip_host_free(p);
}

static gclip_status check_device(int device)
{
    if (device == GCLIP_DEVICE_CPU)
        return GCLIP_STATUS_SUCCESS;
    if (device < GCLIP_DEVICE_CPU)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "device %d: use GCLIP_DEVICE_CPU (-1) or a CUDA ordinal >= 0", device);
    return GCLIP_STATUS_SUCCESS; /* the CUDA backend checks the ordinal */
}

/* Copy and validate the descriptors, count chunks. */
static gclip_status build_tensor_table(gclip_plan *p, const gclip_tensor *tensors)
{
    uint64_t chunks = 0;
    for (size_t i = 0; i < p->count; i++) {
        gclip_status s = gclip_validate_tensor(&tensors[i], i);
        if (s != GCLIP_STATUS_SUCCESS)
            return s;
        /* counted in 64 bits (numel up to 2^63 - 1 makes up to 2^47 chunks)
         * and checked, with the chunks of the tensors before it, against
         * GCLIP_MAX_CHUNKS before the 32-bit counts are kept: a tensor of
         * more than (2^31 - 1) * 65536 elements is refused on its own, and
         * so is one that takes the plan's total past 2^31 - 1 chunks */
        const uint64_t n =
            ((uint64_t)tensors[i].numel + GCLIP_CHUNK_ELEMS - 1) / GCLIP_CHUNK_ELEMS;
        if (n > GCLIP_MAX_CHUNKS - chunks)
            return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                              "the plan's tensors hold more than %lld elements in all",
                              (long long)(GCLIP_MAX_CHUNKS * (uint64_t)GCLIP_CHUNK_ELEMS));
        gclip_tensor_desc *d = &p->tensors[i];
        d->data = tensors[i].data;
        d->numel = tensors[i].numel;
        d->dtype = (int32_t)tensors[i].dtype;
        d->num_chunks = (uint32_t)n;
        d->first_chunk = (uint32_t)chunks;
        p->nonempty += tensors[i].numel > 0;
        p->total_elems += tensors[i].numel;
        d->pad_ = 0;
        chunks += n;
    }
    p->num_chunks = (uint32_t)chunks;
    return GCLIP_STATUS_SUCCESS;
}

static void build_chunk_table(gclip_plan *p)
{
    for (size_t i = 0; i < p->count; i++)
        for (uint32_t k = 0; k < p->tensors[i].num_chunks; k++) {
            gclip_chunk *c = &p->chunks[p->tensors[i].first_chunk + k];
            c->tensor = (uint32_t)i;
            c->index = k;
        }
}

static void *alloc_array(size_t n, size_t size)
{
    if (n != 0 && size > SIZE_MAX / n)
        return NULL;
    return gclip_host_alloc(n * size);
}

gclip_status gclip_plan_create(gclip_plan **plan, const gclip_tensor *tensors, size_t count,
                               int device)
{
    gclip_clear_error();
    if (!plan)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    *plan = NULL;
    if (!tensors && count > 0)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "tensors is NULL but count is %zu", count);
    /* the kernels' loops over the tensors step a 32-bit index by up to 1024:
     * it must not wrap past the count */
    if (count > INT32_MAX)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "count %zu exceeds %d tensors", count,
                          INT32_MAX);
    gclip_status s = check_device(device);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;

    void *mem;
    s = gclip_host_alloc_zeroed(sizeof(gclip_plan), "plan", &mem);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    gclip_plan *p = mem;
    p->device = device;
    p->backend = device == GCLIP_DEVICE_CPU ? &gclip_cpu_backend : &gclip_cuda_backend;
    p->count = count;
    p->tensors = alloc_array(count, sizeof *p->tensors);
    p->scratch = alloc_array(count, sizeof *p->scratch);
    p->saved_data = alloc_array(count, sizeof *p->saved_data);
    if (!p->tensors || !p->scratch || !p->saved_data) {
        plan_free(p);
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "plan: tensor table allocation failed");
    }
    s = build_tensor_table(p, tensors);
    if (s == GCLIP_STATUS_SUCCESS)
        s = gclip_check_overlap(p->tensors, count, p->scratch);
    if (s != GCLIP_STATUS_SUCCESS) {
        plan_free(p);
        return s;
    }
    p->chunks = alloc_array(p->num_chunks, sizeof *p->chunks);
    if (!p->chunks) {
        plan_free(p);
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "plan: chunk table allocation failed");
    }
    build_chunk_table(p);
    s = p->backend->init(p);
    if (s != GCLIP_STATUS_SUCCESS) {
        plan_free(p);
        return s;
    }
    *plan = p;
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_plan_destroy(gclip_plan *plan)
{
    gclip_clear_error();
    plan_free(plan);
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_plan_rebind(gclip_plan *plan, void *const *data, size_t count,
                               gclip_stream stream)
{
    gclip_clear_error();
    if (!plan)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    if (!data && count > 0)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "data is NULL but count is %zu", count);
    if (count != plan->count)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "count %zu differs from the plan's %zu tensors", count, plan->count);
    for (size_t i = 0; i < count; i++) {
        gclip_tensor t = {data[i], plan->tensors[i].numel, (gclip_dtype)plan->tensors[i].dtype};
        gclip_status s = gclip_validate_tensor(&t, i);
        if (s != GCLIP_STATUS_SUCCESS)
            return s;
    }
    /* Swap the new pointers in, keeping the old ones to restore on failure. */
    for (size_t i = 0; i < count; i++) {
        plan->saved_data[i] = plan->tensors[i].data;
        plan->tensors[i].data = data[i];
    }
    const int same_order = gclip_still_disjoint(plan->tensors, plan->scratch, plan->nonempty);
    gclip_status s = same_order ? GCLIP_STATUS_SUCCESS
                                : gclip_check_overlap(plan->tensors, count, plan->scratch);
    if (s == GCLIP_STATUS_SUCCESS)
        s = plan->backend->upload_tensors(plan, stream);
    if (s != GCLIP_STATUS_SUCCESS) {
        for (size_t i = 0; i < count; i++)
            plan->tensors[i].data = plan->saved_data[i];
        /* scratch lists the tensors by address after every call (the step
         * calls search it): sorted again for the old addresses, which were
         * disjoint, so this check passes */
        if (!same_order)
            (void)gclip_check_overlap(plan->tensors, count, plan->scratch);
    }
    return s;
}

gclip_status gclip_plan_tensor_count(const gclip_plan *plan, size_t *count)
{
    gclip_clear_error();
    if (!plan || !count)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan or count is NULL");
    *count = plan->count;
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_plan_device(const gclip_plan *plan, int *device)
{
    gclip_clear_error();
    if (!plan || !device)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan or device is NULL");
    *device = plan->device;
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_plan_set_num_threads(gclip_plan *plan, int num_threads)
{
    gclip_clear_error();
    if (!plan)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    if (num_threads < 0 || num_threads > GCLIP_CPU_MAX_THREADS)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "num_threads %d must be from 0 (OpenMP's default) to %d", num_threads,
                          GCLIP_CPU_MAX_THREADS);
    plan->num_threads = num_threads;
    return GCLIP_STATUS_SUCCESS;
}
