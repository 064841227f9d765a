/*
 * adapt.c - adaptive clippers: options and their validation, the state's
 * layout in the plan device's memory, the step call (handed to the plan's
 * backend like any other step), the info record and checkpoints.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "gclip_adapt.h"
#include "gclip_adapt_math.h"
#include "gclip_internal.h"

/* Longest history or window: keeps q * (n - 1) exact in double and the
 * state of a per-tensor history within reason. */
#define GCLIP_ADAPT_MAX_HISTORY (1u << 20)

/* Checkpoint bytes: this header, then the state region. */
#define GCLIP_ADAPT_MAGIC 0x44414347u /* "GCAD" */
#define GCLIP_ADAPT_FORMAT 1u

typedef struct checkpoint_header {
    uint32_t magic;
    uint32_t format;
    uint32_t method;
    uint32_t num_tensors;
    uint32_t rows;
    uint32_t history;
    uint64_t state_bytes;
} checkpoint_header;

/* Where each part lives in the adaptive's allocation. */
typedef struct adapt_layout {
    size_t norms, state, gamma, ring, sorted, state_bytes, total;
} adapt_layout;

struct gclip_adaptive {
    gclip_plan *plan;
    gclip_adapt_memory mem;
    gclip_adapt_config cfg;
    adapt_layout layout;
    int32_t op; /* GCLIP_OP_ADAPTIVE_CLIP or GCLIP_OP_ADAPTIVE_SKIP */
};

gclip_adaptive_options gclip_adaptive_options_default(void)
{
    gclip_adaptive_options o = GCLIP_ADAPTIVE_OPTIONS_INIT;
    return o;
}

/* ---- options -------------------------------------------------------------------- */

static gclip_status read_options(const gclip_adaptive_options *options, gclip_adaptive_options *o)
{
    if (!options)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "options is NULL: start from GCLIP_ADAPTIVE_OPTIONS_INIT and set method");
    if (options->version == 0 || options->size == 0)
        return gclip_fail(GCLIP_STATUS_VERSION_MISMATCH,
                          "adaptive options were not initialized: start from "
                          "GCLIP_ADAPTIVE_OPTIONS_INIT (size %zu, version %u)",
                          options->size, (unsigned)options->version);
    if (options->version > GCLIP_ADAPTIVE_OPTIONS_VERSION ||
        options->size != sizeof(gclip_adaptive_options))
        return gclip_fail(GCLIP_STATUS_VERSION_MISMATCH,
                          "adaptive options of version %u and size %zu: this library knows "
                          "version %d (%zu bytes); rebuild against its gclip_adapt.h",
                          (unsigned)options->version, options->size,
                          GCLIP_ADAPTIVE_OPTIONS_VERSION, sizeof(gclip_adaptive_options));
    *o = *options;
    return GCLIP_STATUS_SUCCESS;
}

static gclip_status bad(const char *field, double value, const char *rule)
{
    return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "%s = %g: must be %s", field, value, rule);
}

static gclip_status check_history(const char *field, uint32_t n, uint32_t min)
{
    if (n < min || n > GCLIP_ADAPT_MAX_HISTORY)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "%s = %u: must be in %u .. %u", field,
                          (unsigned)n, (unsigned)min, (unsigned)GCLIP_ADAPT_MAX_HISTORY);
    return GCLIP_STATUS_SUCCESS;
}

static gclip_status check_zclip(const gclip_adaptive_options *o)
{
    if (!(o->zclip_alpha > 0.0 && o->zclip_alpha < 1.0))
        return bad("zclip_alpha", o->zclip_alpha, "in (0, 1)");
    if (!(o->zclip_z_thresh > 0.0) || !isfinite(o->zclip_z_thresh))
        return bad("zclip_z_thresh", o->zclip_z_thresh, "finite and > 0");
    if (!(o->zclip_max_grad_norm > 0.0))
        return bad("zclip_max_grad_norm", o->zclip_max_grad_norm, "> 0 (INFINITY for none)");
    if (!(o->zclip_eps >= 0.0) || !isfinite(o->zclip_eps))
        return bad("zclip_eps", o->zclip_eps, "finite and >= 0");
    if (!(o->zclip_clip_factor > 0.0) || !isfinite(o->zclip_clip_factor))
        return bad("zclip_clip_factor", o->zclip_clip_factor, "finite and > 0");
    if (o->zclip_mode != GCLIP_ZCLIP_ZSCORE && o->zclip_mode != GCLIP_ZCLIP_PERCENTILE)
        return bad("zclip_mode", (double)o->zclip_mode,
                   "GCLIP_ZCLIP_ZSCORE or GCLIP_ZCLIP_PERCENTILE");
    if (o->zclip_clip_option != GCLIP_ZCLIP_ADAPTIVE_SCALING &&
        o->zclip_clip_option != GCLIP_ZCLIP_MEAN)
        return bad("zclip_clip_option", (double)o->zclip_clip_option,
                   "GCLIP_ZCLIP_ADAPTIVE_SCALING or GCLIP_ZCLIP_MEAN");
    return check_history("zclip_warmup_steps", o->zclip_warmup_steps, 1);
}

static gclip_status check_autoclip(const gclip_adaptive_options *o)
{
    if (!(o->autoclip_quantile >= 0.0 && o->autoclip_quantile <= 1.0))
        return bad("autoclip_quantile", o->autoclip_quantile, "in [0, 1]");
    return check_history("autoclip_history_length", o->autoclip_history_length, 1);
}

/* AdaGC's thresholds and eps are used as floats (make_config): each must
 * stay finite there, and the thresholds above 0. */
static int float_positive(double x)
{
    return x > 0.0 && x <= FLT_MAX && (float)x > 0.0f;
}

static gclip_status check_adagc(const gclip_adaptive_options *o)
{
    if (!(o->adagc_beta >= 0.0 && o->adagc_beta < 1.0))
        return bad("adagc_beta", o->adagc_beta, "in [0, 1)");
    if (!float_positive(o->adagc_lambda_abs))
        return bad("adagc_lambda_abs", o->adagc_lambda_abs, "> 0 and finite as a float");
    if (!float_positive(o->adagc_lambda_rel))
        return bad("adagc_lambda_rel", o->adagc_lambda_rel, "> 0 and finite as a float");
    if (!(o->adagc_eps >= 0.0 && o->adagc_eps <= FLT_MAX))
        return bad("adagc_eps", o->adagc_eps, ">= 0 and finite as a float");
    return GCLIP_STATUS_SUCCESS;
}

static gclip_status check_spike(const gclip_adaptive_options *o)
{
    gclip_status s = check_history("spike_window", o->spike_window, 2);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    if (o->spike_min_values < 2 || o->spike_min_values > o->spike_window)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "spike_min_values = %u: must be in 2 .. spike_window (%u)",
                          (unsigned)o->spike_min_values, (unsigned)o->spike_window);
    if (!(o->spike_sigma > 0.0) || !isfinite(o->spike_sigma))
        return bad("spike_sigma", o->spike_sigma, "finite and > 0");
    return GCLIP_STATUS_SUCCESS;
}

/* The kernel's configuration of validated options. */
static void make_config(const gclip_adaptive_options *o, uint32_t num_tensors,
                        gclip_adapt_config *c)
{
    memset(c, 0, sizeof *c);
    c->method = (int32_t)o->method;
    c->num_tensors = num_tensors;
    c->rows = 1;
    switch (o->method) {
    case GCLIP_ADAPTIVE_ZCLIP:
        c->history = o->zclip_warmup_steps;
        break;
    case GCLIP_ADAPTIVE_AUTOCLIP:
        c->history = o->autoclip_history_length;
        c->per_tensor = !o->autoclip_global;
        c->rows = c->per_tensor ? num_tensors : 1u;
        break;
    case GCLIP_ADAPTIVE_ADAGC:
        c->history = 0;
        c->per_tensor = 1;
        c->rows = 0;
        break;
    default:
        c->history = o->spike_window;
        break;
    }
    c->zclip_mode = (int32_t)o->zclip_mode;
    c->zclip_clip_option = (int32_t)o->zclip_clip_option;
    c->zclip_skip_update = o->zclip_skip_update_on_spike != 0;
    c->zclip_alpha = o->zclip_alpha;
    c->zclip_z_thresh = o->zclip_z_thresh;
    c->zclip_max = o->zclip_max_grad_norm;
    c->zclip_eps = o->zclip_eps;
    c->zclip_clip_factor = o->zclip_clip_factor;
    c->autoclip_q = (float)o->autoclip_quantile;
    c->adagc_weight = (float)(1.0 - o->adagc_beta);
    c->adagc_lambda_abs = (float)o->adagc_lambda_abs;
    c->adagc_lambda_rel = (float)o->adagc_lambda_rel;
    c->adagc_eps = (float)o->adagc_eps;
    c->adagc_warmup = o->adagc_warmup_steps;
    c->spike_min_values = o->spike_min_values;
    c->spike_sigma = o->spike_sigma;
}

/* ---- layout ---------------------------------------------------------------------- */

static size_t align8(size_t x)
{
    return (x + 7u) & ~(size_t)7u;
}

static adapt_layout layout_of(const gclip_adapt_config *c)
{
    const size_t ring = (size_t)c->rows * c->history * sizeof(float);
    adapt_layout l;
    l.norms = align8(sizeof(gclip_adapt_device));
    l.state = align8(l.norms + (size_t)c->num_tensors * sizeof(float));
    l.gamma = l.state + sizeof(gclip_adapt_scalars);
    l.ring = align8(l.gamma + (c->method == GCLIP_ADAPTIVE_ADAGC
                                   ? (size_t)c->num_tensors * sizeof(float)
                                   : 0u));
    l.sorted = l.ring + ring;
    l.state_bytes = l.sorted + (c->method == GCLIP_ADAPTIVE_AUTOCLIP ? ring : 0u) - l.state;
    l.total = l.state + l.state_bytes;
    return l;
}

/* The device struct with the pointers of this allocation. */
static gclip_adapt_device device_image(const gclip_adaptive *ad)
{
    char *base = (char *)ad->mem.ptr;
    const adapt_layout *l = &ad->layout;
    gclip_adapt_device d;
    memset(&d, 0, sizeof d);
    d.cfg = ad->cfg;
    d.info.threshold = NAN;
    d.info.total_norm = NAN;
    d.info.clip_coef = 1.0f;
    d.tensor_norms = (float *)(void *)(base + l->norms);
    d.state = (gclip_adapt_scalars *)(void *)(base + l->state);
    d.gamma = (float *)(void *)(base + l->gamma);
    d.ring = (float *)(void *)(base + l->ring);
    d.sorted = (float *)(void *)(base + l->sorted);
    return d;
}

/* ---- create, destroy --------------------------------------------------------------- */

static gclip_status initialize(gclip_adaptive *ad)
{
    const size_t n = ad->layout.total;
    unsigned char *image = gclip_host_alloc(n);
    if (!image)
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "adaptive state: host staging failed");
    memset(image, 0, n);
    const gclip_adapt_device d = device_image(ad);
    memcpy(image, &d, sizeof d);
    const gclip_status s = gclip_adapt_mem_write(&ad->mem, 0, image, n);
    gclip_host_free(image);
    return s;
}

gclip_status gclip_adaptive_create(gclip_adaptive **ad, gclip_plan *plan,
                                   const gclip_adaptive_options *options)
{
    GCLIP_FP_SCOPE();
    gclip_clear_error();
    if (!ad)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "ad is NULL");
    *ad = NULL;
    if (!plan)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    gclip_adaptive_options o = GCLIP_ADAPTIVE_OPTIONS_INIT;
    gclip_status s = read_options(options, &o);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    switch (o.method) {
    case GCLIP_ADAPTIVE_ZCLIP:
        s = check_zclip(&o);
        break;
    case GCLIP_ADAPTIVE_AUTOCLIP:
        s = check_autoclip(&o);
        break;
    case GCLIP_ADAPTIVE_ADAGC:
        s = check_adagc(&o);
        break;
    case GCLIP_ADAPTIVE_SPIKE_SKIP:
        s = check_spike(&o);
        break;
    default:
        s = gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                       "unknown adaptive method %d (ZCLIP, AUTOCLIP, ADAGC or SPIKE_SKIP)",
                       (int)o.method);
    }
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    if (plan->count > UINT32_MAX)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan of %zu tensors", plan->count);

    gclip_adaptive *a = gclip_host_alloc(sizeof *a);
    if (!a)
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "adaptive: host allocation failed");
    memset(a, 0, sizeof *a);
    a->plan = plan;
    a->op = o.method == GCLIP_ADAPTIVE_SPIKE_SKIP ? GCLIP_OP_ADAPTIVE_SKIP : GCLIP_OP_ADAPTIVE_CLIP;
    make_config(&o, (uint32_t)plan->count, &a->cfg);
    a->layout = layout_of(&a->cfg);
    s = gclip_adapt_mem_alloc(plan, a->layout.total, &a->mem);
    if (s == GCLIP_STATUS_SUCCESS)
        s = initialize(a);
    if (s != GCLIP_STATUS_SUCCESS) {
        gclip_adapt_mem_free(&a->mem);
        gclip_host_free(a);
        return s;
    }
    *ad = a;
    return GCLIP_STATUS_SUCCESS;
}

/* Wait for the plan's last operation (every step issued so far). */
static gclip_status wait_for_plan(gclip_adaptive *ad)
{
    gclip_result_slot slot;
    return ad->plan->backend->read_result(ad->plan, &slot);
}

gclip_status gclip_adaptive_destroy(gclip_adaptive *ad)
{
    gclip_clear_error();
    if (!ad)
        return GCLIP_STATUS_SUCCESS;
    const gclip_status s = wait_for_plan(ad);
    gclip_adapt_mem_free(&ad->mem);
    gclip_host_free(ad);
    return s;
}

/* ---- the step ------------------------------------------------------------------ */

gclip_status gclip_adaptive_step(gclip_adaptive *ad, const gclip_norm_options *base,
                                 gclip_stream stream)
{
    GCLIP_FP_SCOPE();
    gclip_clear_error();
    if (!ad)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "ad is NULL");
    gclip_step step;
    gclip_status s = gclip_make_params(base, ad->op, &step.np);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    if (step.np.tensor_norms)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "tensor_norms is set: the adaptive keeps the tensor norms in its own "
                          "state; leave it NULL");
    /* the method decides the threshold; the base's max_norm plays no part */
    step.np.max_norm = INFINITY;
    step.np.max_norm_ptr = NULL;
    s = gclip_check_step_pointers(ad->plan, &step.np);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    const gclip_adapt_device d = device_image(ad);
    if (ad->cfg.per_tensor)
        step.np.tensor_norms = d.tensor_norms;
    step.np.adapt = (gclip_adapt_device *)ad->mem.ptr;
    step.op = ad->op;
    step.clip_value = 0.0;
    return ad->plan->backend->run(ad->plan, &step, stream);
}

gclip_status gclip_adaptive_get_info(gclip_adaptive *ad, gclip_adaptive_info *info)
{
    GCLIP_FP_SCOPE();
    gclip_clear_error();
    if (!ad || !info)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "ad or info is NULL");
    gclip_status s = wait_for_plan(ad);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    return gclip_adapt_mem_read(&ad->mem, offsetof(gclip_adapt_device, info), info, sizeof *info);
}

gclip_status gclip_adaptive_device_info(const gclip_adaptive *ad, const gclip_adaptive_info **info)
{
    gclip_clear_error();
    if (!ad || !info)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "ad or info is NULL");
    *info = &((const gclip_adapt_device *)ad->mem.ptr)->info;
    return GCLIP_STATUS_SUCCESS;
}

/* ---- checkpoints ------------------------------------------------------------------ */

static checkpoint_header header_of(const gclip_adaptive *ad)
{
    checkpoint_header h;
    h.magic = GCLIP_ADAPT_MAGIC;
    h.format = GCLIP_ADAPT_FORMAT;
    h.method = (uint32_t)ad->cfg.method;
    h.num_tensors = ad->cfg.num_tensors;
    h.rows = ad->cfg.rows;
    h.history = ad->cfg.history;
    h.state_bytes = ad->layout.state_bytes;
    return h;
}

gclip_status gclip_adaptive_state_size(const gclip_adaptive *ad, size_t *size)
{
    gclip_clear_error();
    if (!ad || !size)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "ad or size is NULL");
    *size = sizeof(checkpoint_header) + ad->layout.state_bytes;
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_adaptive_export(gclip_adaptive *ad, void *host_buf, size_t size)
{
    GCLIP_FP_SCOPE();
    gclip_clear_error();
    if (!ad || !host_buf)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "ad or host_buf is NULL");
    const size_t need = sizeof(checkpoint_header) + ad->layout.state_bytes;
    if (size < need)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "size %zu is less than the %zu bytes of the state "
                          "(gclip_adaptive_state_size)",
                          size, need);
    gclip_status s = wait_for_plan(ad);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    const checkpoint_header h = header_of(ad);
    memcpy(host_buf, &h, sizeof h);
    return gclip_adapt_mem_read(&ad->mem, ad->layout.state,
                                (char *)host_buf + sizeof h, ad->layout.state_bytes);
}

/* The scalars must keep every index in its ring. */
static gclip_status check_scalars(const gclip_adaptive *ad, const gclip_adapt_scalars *sc)
{
    const uint32_t h = ad->cfg.history;
    if (sc->filled > h || (h > 0 && sc->head >= h) || (h == 0 && sc->head != 0))
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "the state's ring position (%u values, next slot %u) does not fit a "
                          "history of %u: the bytes are corrupt",
                          (unsigned)sc->filled, (unsigned)sc->head, (unsigned)h);
    /* ZClip's warm-up keeps every recorded norm, one per step, until the
     * history is full */
    const uint32_t warm = sc->steps < h ? sc->steps : h;
    if (ad->cfg.method == GCLIP_ADAPTIVE_ZCLIP && sc->filled != warm)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "the state holds %u warm-up norms after %u steps; ZClip keeps "
                          "min(steps, %u): the bytes are corrupt",
                          (unsigned)sc->filled, (unsigned)sc->steps, (unsigned)h);
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_adaptive_import(gclip_adaptive *ad, const void *host_buf, size_t size)
{
    GCLIP_FP_SCOPE();
    gclip_clear_error();
    if (!ad || !host_buf)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "ad or host_buf is NULL");
    checkpoint_header h;
    if (size < sizeof h)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "%zu bytes are too few for an adaptive state", size);
    memcpy(&h, host_buf, sizeof h);
    if (h.magic != GCLIP_ADAPT_MAGIC)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "the bytes are not an adaptive state from gclip_adaptive_export");
    if (h.format != GCLIP_ADAPT_FORMAT)
        return gclip_fail(GCLIP_STATUS_VERSION_MISMATCH,
                          "adaptive state of format %u; this library reads format %u",
                          (unsigned)h.format, GCLIP_ADAPT_FORMAT);
    const checkpoint_header mine = header_of(ad);
    if (h.method != mine.method || h.num_tensors != mine.num_tensors || h.rows != mine.rows ||
        h.history != mine.history || h.state_bytes != mine.state_bytes)
        return gclip_fail(GCLIP_STATUS_MISMATCH,
                          "the state is of method %u with %u tensors, %u histories of %u, "
                          "%llu bytes; this adaptive is of method %u with %u tensors, %u "
                          "histories of %u, %llu bytes",
                          (unsigned)h.method, (unsigned)h.num_tensors, (unsigned)h.rows,
                          (unsigned)h.history, (unsigned long long)h.state_bytes,
                          (unsigned)mine.method, (unsigned)mine.num_tensors,
                          (unsigned)mine.rows, (unsigned)mine.history,
                          (unsigned long long)mine.state_bytes);
    if (size < sizeof h + h.state_bytes)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "%zu bytes: the state needs %zu", size,
                          (size_t)(sizeof h + h.state_bytes));
    const unsigned char *state = (const unsigned char *)host_buf + sizeof h;
    gclip_adapt_scalars sc;
    memcpy(&sc, state, sizeof sc);
    gclip_status s = check_scalars(ad, &sc);
    if (s == GCLIP_STATUS_SUCCESS)
        s = wait_for_plan(ad);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    return gclip_adapt_mem_write(&ad->mem, ad->layout.state, state, ad->layout.state_bytes);
}
