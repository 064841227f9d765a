/*
 * plan.c - building a distributed plan from this rank's tagged tensors:
 * the core plans (every tensor; each group's counted tensors), the layout of
 * the gather buffer, the poison partial; rebinding, queries and teardown.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dist_internal.h"

/* ---- the poison partial ---------------------------------------------------------- */

/* A partial that no valid options produce, sent by a rank whose own step was
 * rejected or failed so that it still joins the collective and every peer's
 * finalize reports MISMATCH.
 *
 * Why it cannot collide with a real partial: a fingerprint carries the norm
 * kind in its two low bits (docs/semantics.md), and the L2 kind is produced
 * by norm_type 2 alone, i.e. by exactly three fingerprints (one per
 * non-finite policy). The core computes those three here, on an empty CPU
 * plan, and the poison takes the L2 kind bits with a value none of them has. */
static gclip_status make_poison(gclip_partial *out)
{
    gclip_plan *probe = NULL;
    gclip_status s = gclip_plan_create(&probe, NULL, 0, GCLIP_DEVICE_CPU);
    if (s != GCLIP_STATUS_SUCCESS)
        return gclip_dist_core_fail(s, "probe plan for the poison partial");
    uint32_t valid[3] = {0, 0, 0};
    const gclip_nonfinite_policy policies[3] = {GCLIP_NONFINITE_SKIP, GCLIP_NONFINITE_PROPAGATE,
                                                GCLIP_NONFINITE_ERROR};
    for (int k = 0; k < 3 && s == GCLIP_STATUS_SUCCESS; k++) {
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.norm_type = 2.0f;
        o.nonfinite = policies[k];
        const gclip_partial *part = NULL;
        s = gclip_norm_accumulate(probe, &o, NULL);
        if (s == GCLIP_STATUS_SUCCESS)
            s = gclip_plan_partial(probe, &part);
        if (s == GCLIP_STATUS_SUCCESS)
            valid[k] = part->fingerprint;
    }
    if (s != GCLIP_STATUS_SUCCESS) {
        s = gclip_dist_core_fail(s, "probe plan for the poison partial");
        gclip_plan_destroy(probe);
        return s;
    }
    gclip_plan_destroy(probe);
    uint32_t fp = valid[0];
    for (uint32_t bit = 2; bit < 32; bit++) {
        fp = valid[0] ^ (1u << bit); /* keeps the kind bits */
        if (fp != valid[1] && fp != valid[2])
            break;
    }
    out->acc = (double)NAN; /* never folded: the fingerprint stops it first */
    out->nonfinite = 1;
    out->fingerprint = fp;
    return GCLIP_STATUS_SUCCESS;
}

/* ---- validation ---------------------------------------------------------------- */

static gclip_status check_arguments(gclip_dist_plan **out, const gclip_dist_tensor *tensors,
                                    size_t count, const int *ranks, const int *sizes,
                                    size_t num_groups)
{
    if (!out)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    if (count > 0 && !tensors)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "tensors is NULL but count is %zu",
                               count);
    if (num_groups == 0)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               "num_groups is 0: pass at least one communicator");
    if (!ranks || !sizes)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "ranks or sizes is NULL");
    uint64_t total = 0;
    for (size_t g = 0; g < num_groups; g++) {
        if (sizes[g] < 1 || ranks[g] < 0 || ranks[g] >= sizes[g])
            return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                                   "group %zu: rank %d of size %d (need 0 <= rank < size)", g,
                                   ranks[g], sizes[g]);
        total += (uint64_t)sizes[g];
    }
    if (total > UINT32_MAX)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               "%llu partials in all groups exceed what one finalize folds",
                               (unsigned long long)total);
    for (size_t i = 0; i < count; i++) {
        if (tensors[i].group >= num_groups)
            return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                                   "tensor %zu: group %u, but there are %zu groups", i,
                                   (unsigned)tensors[i].group, num_groups);
        if (tensors[i].role != GCLIP_DIST_SHARDED && tensors[i].role != GCLIP_DIST_REPLICATED &&
            tensors[i].role != GCLIP_DIST_NOT_COUNTED)
            return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "tensor %zu: unknown role %d", i,
                                   (int)tensors[i].role);
    }
    return GCLIP_STATUS_SUCCESS;
}

/* Whether this rank's copy of tensor `t` counts towards its group's norm. */
static int counts_here(const gclip_dist_tensor *t, const int *ranks)
{
    switch (t->role) {
    case GCLIP_DIST_SHARDED:
        return 1;
    case GCLIP_DIST_REPLICATED:
        return ranks[t->group] == 0;
    default:
        return 0;
    }
}

/* ---- building ---------------------------------------------------------------------- */

static void *zalloc(size_t n, size_t size)
{
    return calloc(n ? n : 1, size);
}

/* The members of every group (counted tensors, in the order given) and the
 * offsets of the groups in the gather buffer. */
static void lay_out(gclip_dist_plan *p, const gclip_dist_tensor *tensors)
{
    size_t k = 0;
    for (size_t g = 0; g < p->num_groups; g++) {
        p->member_first[g] = k;
        for (size_t i = 0; i < p->count; i++)
            if (tensors[i].group == g && counts_here(&tensors[i], p->ranks))
                p->members[k++] = i;
    }
    p->member_first[p->num_groups] = k;
    p->offsets[0] = 0;
    for (size_t g = 0; g < p->num_groups; g++)
        p->offsets[g + 1] = p->offsets[g] + (size_t)p->sizes[g];
}

/* One core plan per group over its counted tensors, always distinct from
 * the plan of every tensor: the accumulate writes its plan's result slot
 * (the local norm), and the slot the caller reads must only ever hold the
 * global one. */
static gclip_status make_core_plans(gclip_dist_plan *p, const gclip_tensor *all)
{
    gclip_status s = gclip_plan_create(&p->apply, all, p->count, p->device);
    if (s != GCLIP_STATUS_SUCCESS)
        return gclip_dist_core_fail(s, "plan of this rank's tensors");
    gclip_tensor *subset = zalloc(p->count, sizeof *subset);
    if (!subset)
        return gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    for (size_t g = 0; g < p->num_groups && s == GCLIP_STATUS_SUCCESS; g++) {
        const size_t first = p->member_first[g], n = p->member_first[g + 1] - first;
        for (size_t k = 0; k < n; k++)
            subset[k] = all[p->members[first + k]];
        s = gclip_plan_create(&p->counted[g], n ? subset : NULL, n, p->device);
        if (s != GCLIP_STATUS_SUCCESS)
            s = gclip_dist_core_fail(s, "plan of a group's counted tensors");
    }
    free(subset);
    return s;
}

gclip_status gclip_dist_build(gclip_dist_plan **out, const gclip_dist_tensor *tensors,
                              size_t count, int device, const int *ranks, const int *sizes,
                              size_t num_groups, const gclip_dist_transport *transport)
{
    gclip_status s = check_arguments(out, tensors, count, ranks, sizes, num_groups);
    if (s != GCLIP_STATUS_SUCCESS) {
        if (out)
            *out = NULL;
        return s;
    }
    *out = NULL;
    gclip_dist_plan *p = zalloc(1, sizeof *p);
    if (!p)
        return gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    p->device = device;
    p->count = count;
    p->num_groups = num_groups;
    p->transport = transport;
    p->memory = device == GCLIP_DEVICE_CPU ? &gclip_dist_host_memory : &gclip_dist_cuda_memory;
    p->counted = zalloc(num_groups, sizeof *p->counted);
    p->member_first = zalloc(num_groups + 1, sizeof *p->member_first);
    p->members = zalloc(count, sizeof *p->members);
    p->rebind_scratch = zalloc(count, sizeof *p->rebind_scratch);
    p->ranks = zalloc(num_groups, sizeof *p->ranks);
    p->sizes = zalloc(num_groups, sizeof *p->sizes);
    p->offsets = zalloc(num_groups + 1, sizeof *p->offsets);
    gclip_tensor *all = zalloc(count, sizeof *all);
    if (!p->counted || !p->member_first || !p->members || !p->rebind_scratch || !p->ranks ||
        !p->sizes || !p->offsets || !all) {
        free(all);
        gclip_dist_free(p);
        return gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    }
    memcpy(p->ranks, ranks, num_groups * sizeof *ranks);
    memcpy(p->sizes, sizes, num_groups * sizeof *sizes);
    for (size_t i = 0; i < count; i++)
        all[i] = tensors[i].tensor;
    lay_out(p, tensors);

    s = make_poison(&p->poison_value);
    if (s == GCLIP_STATUS_SUCCESS)
        s = make_core_plans(p, count ? all : NULL);
    free(all);
    if (s == GCLIP_STATUS_SUCCESS) {
        p->host_view = zalloc(p->offsets[num_groups], sizeof *p->host_view);
        if (!p->host_view)
            s = gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    }
    if (s == GCLIP_STATUS_SUCCESS)
        s = p->memory->init(p);
    if (s != GCLIP_STATUS_SUCCESS) {
        gclip_dist_free(p);
        return s;
    }
    *out = p;
    return GCLIP_STATUS_SUCCESS;
}

void gclip_dist_free(gclip_dist_plan *p)
{
    if (!p)
        return;
    if (p->transport && p->transport->release)
        p->transport->release(p);
    /* first: waits for the plan's last step, whose collective may still read
     * a counted plan's partial */
    if (p->memory_state)
        p->memory->release(p);
    if (p->counted)
        for (size_t g = 0; g < p->num_groups; g++)
            gclip_plan_destroy(p->counted[g]);
    gclip_plan_destroy(p->apply);
    free(p->counted);
    free(p->member_first);
    free(p->members);
    free(p->rebind_scratch);
    free(p->ranks);
    free(p->sizes);
    free(p->offsets);
    free(p->host_view);
    free(p);
}

uint64_t gclip_dist_layout_hash(const gclip_dist_plan *p)
{
    /* FNV-1a over the group count and sizes */
    uint64_t h = 1469598103934665603ull;
    const uint64_t words0 = (uint64_t)p->num_groups;
    for (size_t g = 0; g <= p->num_groups; g++) {
        const uint64_t w = g == 0 ? words0 : (uint64_t)(uint32_t)p->sizes[g - 1];
        for (int b = 0; b < 8; b++) {
            h ^= (w >> (8 * b)) & 0xffu;
            h *= 1099511628211ull;
        }
    }
    return h | 1u;
}

const gclip_partial *gclip_dist_send_address(const gclip_dist_plan *p, size_t group)
{
    if (p->send)
        return &p->send[group];
    if (p->poisoned)
        return p->poison;
    const gclip_partial *part = NULL;
    (void)gclip_plan_partial(p->counted[group], &part); /* cannot fail: both set */
    return part;
}

/* ---- public: plans ------------------------------------------------------------------ */

int gclip_dist_transports(void)
{
    int t = 0;
#ifdef GCLIP_DIST_HAVE_MPI
    t |= GCLIP_DIST_TRANSPORT_MPI;
#endif
#ifdef GCLIP_DIST_HAVE_NCCL
    t |= GCLIP_DIST_TRANSPORT_NCCL;
#endif
    return t;
}

gclip_status gclip_dist_plan_create_external(gclip_dist_plan **plan,
                                             const gclip_dist_tensor *tensors, size_t count,
                                             int device, const int *ranks, const int *sizes,
                                             size_t num_groups)
{
    gclip_dist_clear_error();
    return gclip_dist_build(plan, tensors, count, device, ranks, sizes, num_groups, NULL);
}

gclip_status gclip_dist_plan_destroy(gclip_dist_plan *plan)
{
    gclip_dist_clear_error();
    gclip_dist_free(plan);
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_dist_plan_group(const gclip_dist_plan *plan, size_t group, int *rank, int *size)
{
    gclip_dist_clear_error();
    if (!plan || !rank || !size)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan, rank or size is NULL");
    if (group >= plan->num_groups)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "group %zu of %zu", group,
                               plan->num_groups);
    *rank = plan->ranks[group];
    *size = plan->sizes[group];
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_dist_plan_set_num_threads(gclip_dist_plan *plan, int num_threads)
{
    gclip_dist_clear_error();
    if (!plan)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    gclip_status s = gclip_plan_set_num_threads(plan->apply, num_threads);
    for (size_t g = 0; g < plan->num_groups && s == GCLIP_STATUS_SUCCESS; g++)
        s = gclip_plan_set_num_threads(plan->counted[g], num_threads);
    return s == GCLIP_STATUS_SUCCESS ? s : gclip_dist_core_fail(s, "set_num_threads");
}

/* Point group g's counted plan at `data` (indexed like the creation list). */
static gclip_status rebind_group(gclip_dist_plan *p, size_t g, void *const *data,
                                 gclip_stream stream)
{
    const size_t first = p->member_first[g], n = p->member_first[g + 1] - first;
    for (size_t k = 0; k < n; k++)
        p->rebind_scratch[k] = data[p->members[first + k]];
    return gclip_plan_rebind(p->counted[g], p->rebind_scratch, n, stream);
}

gclip_status gclip_dist_plan_rebind(gclip_dist_plan *plan, void *const *data, size_t count,
                                    gclip_stream stream)
{
    gclip_dist_clear_error();
    if (!plan || (!data && count > 0))
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               !plan ? "plan is NULL" : "data is NULL and count is not 0");
    if (count != plan->count)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               "count %zu, but the plan has %zu tensors", count, plan->count);
    /* the plan of every tensor validates the whole list (alignment, overlap)
     * before any counted plan changes */
    gclip_status s = gclip_plan_rebind(plan->apply, data, count, stream);
    if (s != GCLIP_STATUS_SUCCESS)
        return gclip_dist_core_fail(s, "rebind");
    for (size_t g = 0; g < plan->num_groups; g++) {
        s = rebind_group(plan, g, data, stream);
        if (s != GCLIP_STATUS_SUCCESS)
            return gclip_dist_core_fail(s, "rebind of a group's counted tensors (a device "
                                           "failure after the list was validated)");
    }
    return GCLIP_STATUS_SUCCESS;
}
