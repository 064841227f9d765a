/*
 * agc.c - unit-wise adaptive gradient clipping (gclip_agc): options and
 * their validation, the tables in the plan device's memory (the parameters'
 * addresses, the pieces of every unit, the pieces' sums) and the step call,
 * handed to the plan's backend like any other step. The arithmetic is
 * kernels/gclip_agc_math.h; the kernel kernels/agc_kernel.cu, its CPU twin
 * host/agc_cpu.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gclip_adapt.h"
#include "gclip_agc_math.h"
#include "gclip_internal.h"

struct gclip_agc {
    gclip_plan *plan;
    gclip_adapt_memory mem;
    uint32_t num_pieces;
};

/* ---- options -------------------------------------------------------------------- */

static gclip_status read_agc_options(const gclip_agc_options *options, gclip_agc_options *o)
{
    if (!options)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "options is NULL: start from GCLIP_AGC_OPTIONS_INIT");
    if (options->version == 0 || options->size == 0)
        return gclip_fail(GCLIP_STATUS_VERSION_MISMATCH,
                          "AGC options were not initialized: start from GCLIP_AGC_OPTIONS_INIT "
                          "(size %zu, version %u)",
                          options->size, (unsigned)options->version);
    if (options->version > GCLIP_AGC_OPTIONS_VERSION ||
        options->size != sizeof(gclip_agc_options))
        return gclip_fail(GCLIP_STATUS_VERSION_MISMATCH,
                          "AGC options of version %u and size %zu: this library knows version "
                          "%d (%zu bytes); rebuild against its gclip_adapt.h",
                          (unsigned)options->version, options->size, GCLIP_AGC_OPTIONS_VERSION,
                          sizeof(gclip_agc_options));
    *o = *options;
    if (!(o->clip_factor > 0.0) || !isfinite(o->clip_factor))
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "clip_factor = %g: must be finite and > 0", o->clip_factor);
    if (!(o->eps >= 0.0) || !isfinite(o->eps))
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "eps = %g: must be finite and >= 0",
                          o->eps);
    if (!(o->norm_type > 0.0f))
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "norm_type = %g: must be > 0 (2, 1, INFINITY or any finite p > 0)",
                          (double)o->norm_type);
    return GCLIP_STATUS_SUCCESS;
}

/* ---- the tables ---------------------------------------------------------------- */

/* Pieces of a tensor of `numel` elements in `units` units. */
static uint64_t pieces_of(int64_t numel, int64_t units)
{
    if (numel == 0)
        return 0;
    const int64_t len = numel / units;
    return (uint64_t)units * (uint64_t)((len + GCLIP_AGC_PIECE - 1) / GCLIP_AGC_PIECE);
}

static gclip_status check_pairs(const gclip_plan *plan, const gclip_tensor *params,
                                const int64_t *units, uint64_t *num_pieces)
{
    uint64_t total = 0;
    for (size_t i = 0; i < plan->count; i++) {
        const gclip_tensor_desc *g = &plan->tensors[i];
        gclip_status s = gclip_validate_tensor(&params[i], i);
        if (s != GCLIP_STATUS_SUCCESS) {
            char why[512];
            snprintf(why, sizeof why, "%s", gclip_last_error());
            return gclip_fail(s, "params[%zu], the parameter of gradient %zu: %s", i, i, why);
        }
        if (params[i].numel != g->numel || (int32_t)params[i].dtype != g->dtype)
            return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                              "parameter %zu has %lld elements of dtype %d; its gradient has "
                              "%lld of dtype %d: they must match",
                              i, (long long)params[i].numel, (int)params[i].dtype,
                              (long long)g->numel, (int)g->dtype);
        const int64_t u = units[i];
        if (g->numel > 0 ? (u < 1 || g->numel % u != 0) : u < 0)
            return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                              "units[%zu] = %lld: must divide the tensor's %lld elements (the "
                              "size of dim 0, or 1 for ndim <= 1)",
                              i, (long long)u, (long long)g->numel);
        total += pieces_of(g->numel, u);
        /* 2^31 - 1 at most: a piece's two sums sit at 2 * piece in 32-bit
         * index arithmetic, and one block of a CUDA grid takes a piece */
        if (total > INT32_MAX)
            return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                              "the tensors' units make more than 2^31 - 1 pieces of %lld "
                              "elements",
                              (long long)GCLIP_AGC_PIECE);
    }
    *num_pieces = total;
    return GCLIP_STATUS_SUCCESS;
}

/* One tensor's bytes for the sweep of params_clear_of_gradients. */
typedef struct agc_range {
    uintptr_t start, end;
    size_t index;
    int param;
} agc_range;

static int range_before(const void *pa, const void *pb)
{
    const agc_range *a = pa, *b = pb;
    if (a->start != b->start)
        return a->start < b->start ? -1 : 1;
    if (a->param != b->param)
        return a->param - b->param;
    return a->index < b->index ? -1 : a->index > b->index;
}

/* OVERLAP when a parameter shares a byte with a gradient: the step scales a
 * unit's gradient while other units may still read their parameters, so
 * the result would depend on the order the pieces run in (and on the
 * thread count). Parameters may share bytes with each other: they are only
 * read. One sweep in address order, keeping the furthest end of each kind. */
static gclip_status params_clear_of_gradients(const gclip_plan *plan, const gclip_tensor *params)
{
    const size_t n = plan->count;
    if (n == 0)
        return GCLIP_STATUS_SUCCESS;
    agc_range *r = gclip_host_alloc(2 * n * sizeof *r);
    if (!r)
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "AGC: host allocation failed");
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const gclip_tensor_desc *g = &plan->tensors[i];
        if (g->numel == 0)
            continue;
        const uintptr_t bytes = (uintptr_t)g->numel * (uintptr_t)gclip_dtype_size(g->dtype);
        const agc_range rg = {(uintptr_t)g->data, (uintptr_t)g->data + bytes, i, 0};
        const agc_range rp = {(uintptr_t)params[i].data, (uintptr_t)params[i].data + bytes, i, 1};
        r[m++] = rg;
        r[m++] = rp;
    }
    qsort(r, m, sizeof *r, range_before);
    uintptr_t reach[2] = {0, 0};
    size_t who[2] = {0, 0};
    gclip_status s = GCLIP_STATUS_SUCCESS;
    for (size_t k = 0; k < m && s == GCLIP_STATUS_SUCCESS; k++) {
        const int other = !r[k].param;
        if (r[k].start < reach[other])
            s = gclip_fail(GCLIP_STATUS_OVERLAP,
                           "params[%zu] shares bytes with gradient %zu: a parameter must lie "
                           "outside every gradient of the plan",
                           r[k].param ? r[k].index : who[other],
                           r[k].param ? who[other] : r[k].index);
        if (r[k].end > reach[r[k].param]) {
            reach[r[k].param] = r[k].end;
            who[r[k].param] = r[k].index;
        }
    }
    gclip_host_free(r);
    return s;
}

static size_t align8(size_t x)
{
    return (x + 7u) & ~(size_t)7u;
}

/* Where each table lives in the AGC's allocation. */
typedef struct agc_layout {
    size_t params, pieces, partials, total;
} agc_layout;

static agc_layout agc_layout_of(size_t count, uint32_t num_pieces)
{
    agc_layout l;
    l.params = align8(sizeof(gclip_agc_device));
    l.pieces = align8(l.params + count * sizeof(void *));
    l.partials = l.pieces + (size_t)num_pieces * sizeof(gclip_agc_piece);
    l.total = l.partials + (size_t)num_pieces * 2u * sizeof(double);
    return l;
}

/* The image of the tables as the device will hold them at `base`. */
static void build_image(unsigned char *image, char *base, const agc_layout *l,
                        const gclip_plan *plan, const gclip_tensor *params, const int64_t *units,
                        uint32_t num_pieces, const gclip_agc_options *o)
{
    gclip_agc_device d;
    memset(&d, 0, sizeof d);
    d.clip_factor = o->clip_factor;
    d.eps = o->eps;
    d.p = o->norm_type;
    d.kind = gclip_kind_of(o->norm_type);
    d.num_pieces = num_pieces;
    d.pieces = (const gclip_agc_piece *)(const void *)(base + l->pieces);
    d.params = (const void *const *)(const void *)(base + l->params);
    d.partials = (double *)(void *)(base + l->partials);
    memcpy(image, &d, sizeof d);
    for (size_t i = 0; i < plan->count; i++) {
        const void *ptr = params[i].data;
        memcpy(image + l->params + i * sizeof(void *), &ptr, sizeof ptr);
    }
    uint32_t k = 0;
    for (size_t i = 0; i < plan->count; i++) {
        const int64_t numel = plan->tensors[i].numel;
        if (numel == 0)
            continue;
        const int64_t len = numel / units[i];
        const uint32_t per_unit = (uint32_t)((len + GCLIP_AGC_PIECE - 1) / GCLIP_AGC_PIECE);
        for (int64_t u = 0; u < units[i]; u++) {
            const uint32_t first = k;
            for (uint32_t j = 0; j < per_unit; j++, k++) {
                gclip_agc_piece pc;
                memset(&pc, 0, sizeof pc);
                const int64_t off = (int64_t)j * GCLIP_AGC_PIECE;
                pc.begin = u * len + off;
                pc.count = len - off < GCLIP_AGC_PIECE ? len - off : GCLIP_AGC_PIECE;
                pc.tensor = (uint32_t)i;
                pc.first = first;
                pc.pieces = per_unit;
                memcpy(image + l->pieces + (size_t)k * sizeof pc, &pc, sizeof pc);
            }
        }
    }
}

gclip_status gclip_agc_create(gclip_agc **agc, gclip_plan *plan, const gclip_tensor *params,
                              const int64_t *units, const gclip_agc_options *options)
{
    GCLIP_FP_SCOPE();
    gclip_clear_error();
    if (!agc)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "agc is NULL");
    *agc = NULL;
    if (!plan)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    if (plan->count > 0 && (!params || !units))
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "params or units is NULL for a plan of %zu tensors", plan->count);
    if (plan->count > UINT32_MAX)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan of %zu tensors", plan->count);
    gclip_agc_options o = GCLIP_AGC_OPTIONS_INIT;
    gclip_status s = read_agc_options(options, &o);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    uint64_t pieces = 0;
    s = check_pairs(plan, params, units, &pieces);
    if (s == GCLIP_STATUS_SUCCESS)
        s = params_clear_of_gradients(plan, params);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;

    void *mem;
    s = gclip_host_alloc_zeroed(sizeof(gclip_agc), "AGC", &mem);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    gclip_agc *a = mem;
    a->plan = plan;
    a->num_pieces = (uint32_t)pieces;
    const agc_layout l = agc_layout_of(plan->count, a->num_pieces);
    s = gclip_adapt_mem_alloc(plan, l.total, &a->mem);
    if (s == GCLIP_STATUS_SUCCESS) {
        unsigned char *image = gclip_host_alloc(l.partials);
        if (!image) {
            s = gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "AGC: host staging failed");
        } else {
            memset(image, 0, l.partials);
            build_image(image, (char *)a->mem.ptr, &l, plan, params, units, a->num_pieces, &o);
            s = gclip_adapt_mem_write(&a->mem, 0, image, l.partials);
            gclip_host_free(image);
        }
    }
    if (s != GCLIP_STATUS_SUCCESS) {
        gclip_adapt_mem_free(&a->mem);
        gclip_host_free(a);
        return s;
    }
    *agc = a;
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_agc_destroy(gclip_agc *agc)
{
    gclip_clear_error();
    if (!agc)
        return GCLIP_STATUS_SUCCESS;
    gclip_result_slot slot;
    const gclip_status s = agc->plan->backend->read_result(agc->plan, &slot);
    gclip_adapt_mem_free(&agc->mem);
    gclip_host_free(agc);
    return s;
}

gclip_status gclip_agc_params(const gclip_agc *agc, gclip_norm_params *np)
{
    const gclip_status s = gclip_make_params(NULL, GCLIP_OP_AGC, np);
    np->agc = (const gclip_agc_device *)agc->mem.ptr;
    np->num_partials = agc->num_pieces;
    return s;
}

gclip_status gclip_agc_step(gclip_agc *agc, gclip_stream stream)
{
    GCLIP_FP_SCOPE();
    gclip_clear_error();
    if (!agc)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "agc is NULL");
    gclip_step step;
    gclip_status s = gclip_agc_params(agc, &step.np);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    step.op = GCLIP_OP_AGC;
    step.clip_value = 0.0;
    return agc->plan->backend->run(agc->plan, &step, stream);
}
