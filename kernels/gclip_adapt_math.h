/*
 * gclip_adapt_math.h - the arithmetic of an adaptive step, shared by the
 * adapt kernel (adapt_kernel.cu) and its CPU twin (host/adapt_cpu.c): the
 * adaptive's state as it lives in the plan device's memory, the decision of
 * a step (thresholds and coefficients of ZClip, AutoClip, AdaGC and spike
 * step-skip) and the update of the state.
 *
 * A step runs in three parts, each a function below:
 *   decide  (one thread)   the global decision from the norm and the state;
 *   row     (one per row)  a tensor's factor and the update of its own state
 *                          (AutoClip per tensor, AdaGC), or the global
 *                          factor copied to the tensor;
 *   commit  (one thread)   the update of the shared scalars, the info record
 *                          and the result slot.
 * The kernel runs the rows in parallel, the CPU in index order; each row
 * touches only its own state, so both give the same bits.
 *
 * Products are written with gclip_fmul / gclip_muld (gclip_norm_math.h):
 * nvcc would otherwise contract a product and a sum into one fused
 * multiply-add, rounded once, and the GPU's state would drift from the
 * CPU's by an ulp at a time.
 */
#ifndef GCLIP_ADAPT_MATH_H
#define GCLIP_ADAPT_MATH_H

#include "gclip_adapt.h"
#include "gclip_norm_math.h"

/* ---- the adaptive's memory ------------------------------------------------------ */

/* Hyperparameters, written once at creation. Each is stored in the precision
 * its reference computes with: ZClip and spike skip work in Python floats
 * (double), AutoClip and AdaGC in float32 tensor arithmetic. */
typedef struct gclip_adapt_config {
    int32_t method;        /* gclip_adaptive_method */
    int32_t per_tensor;    /* factors per tensor (AutoClip per tensor, AdaGC) */
    uint32_t num_tensors;
    uint32_t rows;         /* histories kept: num_tensors (AutoClip per tensor) or 1 */
    uint32_t history;      /* length of each ring: ZClip warm-up, AutoClip history, window */
    int32_t zclip_mode;    /* gclip_zclip_mode */
    int32_t zclip_clip_option;
    int32_t zclip_skip_update;
    double zclip_alpha;
    double zclip_z_thresh;
    double zclip_max;      /* +Inf: no cap */
    double zclip_eps;
    double zclip_clip_factor;
    float autoclip_q;
    float adagc_weight;    /* 1 - beta, the lerp weight */
    float adagc_lambda_abs;
    float adagc_lambda_rel;
    float adagc_eps;
    uint32_t adagc_warmup;
    uint32_t spike_min_values;
    uint32_t reserved_;
    double spike_sigma;
} gclip_adapt_config;

/* The shared scalars of the state (the start of the exported state). */
typedef struct gclip_adapt_scalars {
    uint32_t steps;  /* steps recorded (finite norms; spike skip: steps not skipped) */
    uint32_t filled; /* values in each ring */
    uint32_t head;   /* the ring slot the next value goes to */
    uint32_t spikes; /* ZClip: outlier steps; spike skip: skipped steps */
    double mean;     /* ZClip: EMA of the norm, once warmed up */
    double var;      /* ZClip: EMA of its variance */
} gclip_adapt_scalars;

/* The adaptive as the adapt kernel sees it (np->adapt). All pointers are in
 * the same allocation of the plan device's memory; `state` starts the
 * mutable region [scalars | gamma | ring | sorted] that export copies. */
typedef struct gclip_adapt_device {
    gclip_adapt_config cfg;
    gclip_adaptive_info info;     /* the last step's decision */
    float *tensor_norms;          /* [num_tensors] written by the norm kernel */
    gclip_adapt_scalars *state;
    float *gamma;                 /* [num_tensors] AdaGC thresholds */
    float *ring;                  /* [rows * history] values in arrival order (a ring) */
    float *sorted;                /* [rows * history] AutoClip: each row ascending */
} gclip_adapt_device;

/* ---- small pieces with their references' NaN behaviour ------------------------- */

/* Python's min(a, b): b if b < a, else a (so a NaN `a` is kept). */
GCLIP_HD double gclip_py_min(double a, double b)
{
    return b < a ? b : a;
}

/* torch.clamp(x, max=hi) and clamp_min(x, lo): NaN kept. */
GCLIP_HD float gclip_clamp_max(float x, float hi)
{
    return x > hi ? hi : x;
}

GCLIP_HD float gclip_clamp_min(float x, float lo)
{
    return x < lo ? lo : x;
}

/* a * b + c rounded once. */
GCLIP_HD float gclip_fmaf(float a, float b, float c)
{
#if defined(__CUDA_ARCH__)
    return __fmaf_rn(a, b, c);
#else
    return fmaf(a, b, c);
#endif
}

/* torch.lerp in float: start + w (end - start) for |w| < 0.5, else
 * end - (end - start)(1 - w), each product and sum rounded once (a fused
 * multiply-add), as PyTorch's CPU lerp kernel evaluates them. */
GCLIP_HD float gclip_lerpf_fused(float start, float end, float w)
{
    const float d = end - start;
    return fabsf(w) < 0.5f ? gclip_fmaf(w, d, start) : gclip_fmaf(-d, 1.0f - w, end);
}

/* torch.quantile(values, q) with linear interpolation of the n values of
 * `sorted` (ascending, n >= 1), bit for bit: q is a float (torch makes it a
 * tensor of the values' dtype), the rank q * (n - 1) is taken in double
 * (exact: 24 bits times at most 21), its fraction rounded to a float weight,
 * and the two neighbours interpolated by the fused lerp. */
GCLIP_HD float gclip_quantile(const float *sorted, uint32_t n, float q)
{
    const double rank = (double)q * (double)(n - 1u);
    const uint32_t lo = (uint32_t)rank;
    const uint32_t hi = (uint32_t)ceil(rank);
    return gclip_lerpf_fused(sorted[lo], sorted[hi], (float)(rank - (double)lo));
}

/* Add x to a history of capacity h holding `filled` values: the ring keeps
 * arrival order (the oldest value, at `head` once full, is replaced), the
 * sorted copy keeps the values ascending (the replaced value removed, x
 * inserted after any equal values). Values are finite. */
GCLIP_HD void gclip_history_push(float *ring, float *sorted, uint32_t h, uint32_t filled,
                                 uint32_t head, float x)
{
    uint32_t n = filled;
    if (n == h) {
        const float old = ring[head];
        uint32_t k = 0;
        while (k + 1u < n && sorted[k] < old)
            k++;
        for (; k + 1u < n; k++)
            sorted[k] = sorted[k + 1u];
        n--;
    }
    uint32_t k = n;
    while (k > 0 && sorted[k - 1u] > x) {
        sorted[k] = sorted[k - 1u];
        k--;
    }
    sorted[k] = x;
    ring[head] = x;
}

/* ---- one step ---------------------------------------------------------------- */

/* What the step sees when it starts: the norm kernel's slot and the scalars. */
typedef struct gclip_adapt_input {
    float norm;        /* total norm (unscaled) */
    float inv_scale;
    float eps;         /* the clip's eps (base options) */
    int32_t policy;    /* gclip_nonfinite_policy */
    int32_t valid;     /* the slot's status is SUCCESS: the norm and scalars were read */
    int32_t record;    /* the norm is finite and the scalars valid: update the state */
    int32_t apply;     /* factors may differ from 1 (finite, or PROPAGATE) */
    int32_t pad_;
} gclip_adapt_input;

/* The global decision of a step (one thread), read by every row. */
typedef struct gclip_adapt_decision {
    float coef;      /* global coefficient (1 for per-tensor methods) */
    float threshold; /* for the info record */
    float warm_scale; /* AdaGC warm-up: the global scale */
    int32_t spike;
    int32_t warmup;
    int32_t pad_;
    double mean;     /* ZClip: the EMAs after this step */
    double var;
} gclip_adapt_decision;

GCLIP_HD gclip_adapt_input gclip_adapt_begin(const gclip_result_slot *slot,
                                             const gclip_norm_params *np)
{
    const gclip_scalars sc = gclip_resolve_scalars(np);
    gclip_adapt_input in;
    in.norm = slot->total_norm;
    in.inv_scale = sc.inv_scale;
    in.eps = np->eps;
    in.policy = np->policy;
    const int ok = slot->status == GCLIP_STATUS_SUCCESS;
    in.valid = ok;
    in.record = ok && !slot->nonfinite;
    in.apply = ok && (!slot->nonfinite || np->policy == GCLIP_NONFINITE_PROPAGATE);
    in.pad_ = 0;
    return in;
}

/* ZClip's EMAs once the warm-up buffer is full: the mean and population
 * variance of the buffer (the first W - 1 norms in the ring, then x), summed
 * in order as Python's sum() does. */
GCLIP_HD void gclip_zclip_init(const float *ring, uint32_t w, double x, gclip_adapt_decision *d)
{
    double sum = 0.0;
    for (uint32_t k = 0; k + 1u < w; k++)
        sum += (double)ring[k];
    sum += x;
    const double mean = sum / (double)w;
    double ss = 0.0;
    for (uint32_t k = 0; k + 1u < w; k++) {
        const double dx = (double)ring[k] - mean;
        ss += gclip_muld(dx, dx);
    }
    ss += gclip_muld(x - mean, x - mean);
    d->mean = mean;
    d->var = ss / (double)w;
}

/* ZClip (zclip 1.0.0): warm-up clip to max_grad_norm with PyTorch's
 * arithmetic; afterwards the z-score rule, all in double. The EMAs' new
 * values are computed here and stored by the commit. */
GCLIP_HD void gclip_zclip_decide(const gclip_adapt_config *c, const gclip_adapt_scalars *s,
                                 const float *ring, const gclip_adapt_input *in,
                                 gclip_adapt_decision *d)
{
    d->mean = s->mean;
    d->var = s->var;
    if (s->steps < c->history) {
        d->warmup = 1;
        d->threshold = (float)c->zclip_max;
        d->coef = gclip_is_finite(d->threshold)
                      ? gclip_clip_coef(in->norm, d->threshold, in->eps)
                      : 1.0f;
        if (in->record && s->filled + 1u == c->history)
            gclip_zclip_init(ring, c->history, (double)in->norm, d);
        return;
    }
    const double g = (double)in->norm;
    const double std_dev = sqrt(s->var);
    double t = 0.0;
    if (c->zclip_mode == GCLIP_ZCLIP_PERCENTILE) {
        t = s->mean + gclip_muld(c->zclip_z_thresh, std_dev);
        d->spike = g > t;
    } else {
        const double z = (g - s->mean) / (std_dev + c->zclip_eps);
        d->spike = z > c->zclip_z_thresh;
        if (c->zclip_clip_option == GCLIP_ZCLIP_MEAN) {
            t = s->mean;
        } else {
            const double eta = z / c->zclip_z_thresh;
            t = gclip_muld(s->mean + gclip_muld(c->zclip_z_thresh, std_dev) / eta,
                           c->zclip_clip_factor);
        }
    }
    const double adaptive = d->spike ? t : g;
    const double limit = gclip_py_min(adaptive, c->zclip_max);
    const double coef = g > limit ? limit / (g + (double)in->eps) : 1.0;
    d->threshold = (float)limit;
    d->coef = coef < 1.0 ? (float)coef : 1.0f;
    if (!in->record || (d->spike && c->zclip_skip_update))
        return;
    /* the EMAs take in T on a spike, N otherwise; the variance uses the new mean */
    const double a = c->zclip_alpha;
    d->mean = gclip_muld(a, s->mean) + gclip_muld(1.0 - a, adaptive);
    const double dx = adaptive - d->mean;
    d->var = gclip_muld(a, s->var) + gclip_muld(1.0 - a, gclip_muld(dx, dx));
}

/* Spike step-skip: z-score of N over the window (mean and the unbiased std
 * of the values in arrival order, in double). */
GCLIP_HD void gclip_spike_decide(const gclip_adapt_config *c, const gclip_adapt_scalars *s,
                                 const float *ring, const gclip_adapt_input *in,
                                 gclip_adapt_decision *d)
{
    d->threshold = gclip_bits_f32(0x7f800000u);
    if (s->filled < c->spike_min_values) {
        d->warmup = 1;
        return;
    }
    const uint32_t n = s->filled, start = n < c->history ? 0u : s->head;
    double sum = 0.0;
    for (uint32_t k = 0; k < n; k++)
        sum += (double)ring[(start + k) % c->history];
    const double mean = sum / (double)n;
    double ss = 0.0;
    for (uint32_t k = 0; k < n; k++) {
        const double dx = (double)ring[(start + k) % c->history] - mean;
        ss += gclip_muld(dx, dx);
    }
    const double std_dev = sqrt(ss / (double)(n - 1u));
    const double z = ((double)in->norm - mean) / std_dev;
    d->spike = z > c->spike_sigma;
    d->threshold = (float)(mean + gclip_muld(c->spike_sigma, std_dev));
}

/* A row's ring slot and sorted copy. */
GCLIP_HD float *gclip_adapt_ring_row(const gclip_adapt_device *a, uint32_t row)
{
    return a->ring + (size_t)row * a->cfg.history;
}

GCLIP_HD float *gclip_adapt_sorted_row(const gclip_adapt_device *a, uint32_t row)
{
    return a->sorted + (size_t)row * a->cfg.history;
}

/* AutoClip (QuantileClip): the first step does not clip; then the quantile
 * of the stored norms, applied as clip_grad_norm_(max_norm=threshold). */
GCLIP_HD float gclip_autoclip_threshold(const gclip_adapt_device *a, uint32_t row, uint32_t filled)
{
    if (filled == 0)
        return gclip_bits_f32(0x7f800000u);
    return gclip_quantile(gclip_adapt_sorted_row(a, row), filled, a->cfg.autoclip_q);
}

GCLIP_HD float gclip_autoclip_coef(float threshold, float norm, float eps)
{
    /* clip_grad_norm_ takes max_norm as a Python float, so the threshold
     * multiplies the reciprocal of N + eps (gclip_clip_coef: two roundings,
     * not one division); the first step's +Inf threshold gives 1 for any
     * finite norm, an eps that would overflow N + eps included (the core
     * ops' gclip_coef_eps) */
    return gclip_clip_coef(norm, threshold, gclip_coef_eps(threshold, eps));
}

/* The global decision (one thread). Reads the state, writes nothing. A
 * step whose slot carries a failed status (an out-of-range device scalar,
 * foreign partials) decides nothing: no spike, coefficient 1, NaN
 * threshold, so that its commit changes no state and raises no skip. */
GCLIP_HD void gclip_adapt_decide(const gclip_adapt_device *a, const gclip_adapt_input *in,
                                 gclip_adapt_decision *d)
{
    const gclip_adapt_config *c = &a->cfg;
    const gclip_adapt_scalars *s = a->state;
    d->coef = 1.0f;
    d->threshold = gclip_bits_f32(0x7fc00000u);
    d->warm_scale = 1.0f;
    d->spike = 0;
    d->warmup = 0;
    d->pad_ = 0;
    d->mean = 0.0;
    d->var = 0.0;
    if (!in->valid)
        return;
    switch (c->method) {
    case GCLIP_ADAPTIVE_ZCLIP:
        gclip_zclip_decide(c, s, a->ring, in, d);
        break;
    case GCLIP_ADAPTIVE_AUTOCLIP:
        if (!c->per_tensor) {
            d->threshold = gclip_autoclip_threshold(a, 0, s->filled);
            d->coef = gclip_autoclip_coef(d->threshold, in->norm, in->eps);
        }
        break;
    case GCLIP_ADAPTIVE_ADAGC:
        /* the reference's step counter is 1 on the first step; gamma exists
         * from the first step on */
        d->warmup = s->steps == 0 || s->steps + 1u < c->adagc_warmup;
        if (d->warmup) {
            const float r = c->adagc_lambda_abs * (1.0f / (in->norm + c->adagc_eps));
            d->warm_scale = 1.0f < r ? 1.0f : r;
            d->threshold = c->adagc_lambda_abs;
        }
        break;
    default: /* GCLIP_ADAPTIVE_SPIKE_SKIP */
        gclip_spike_decide(c, s, a->ring, in, d);
        break;
    }
}

/* AdaGC's coefficient of tensor i and its threshold's update. */
GCLIP_HD float gclip_adagc_row(const gclip_adapt_device *a, const gclip_adapt_input *in,
                               const gclip_adapt_decision *d, uint32_t i)
{
    const gclip_adapt_config *c = &a->cfg;
    const float n = a->tensor_norms[i];
    float h;
    if (d->warmup) {
        h = d->warm_scale;
        if (in->record) {
            const float clipped = gclip_fmul(n, h);
            const float g = a->gamma[i];
            a->gamma[i] = a->state->steps == 0 ? clipped : (clipped < g ? clipped : g);
        }
        return h;
    }
    const float num = gclip_fmul(c->adagc_lambda_rel, gclip_clamp_min(a->gamma[i], c->adagc_eps));
    /* 0 / 0 (eps 0, gamma and the norm 0) as the canonical NaN, the GPU's
     * (x86 makes 0xffc00000): gamma and the gradients keep it on every engine */
    h = gclip_canonical_norm(gclip_clamp_max(num / gclip_clamp_min(n, c->adagc_eps), 1.0f));
    if (in->record)
        a->gamma[i] = gclip_lerpf_fused(a->gamma[i], gclip_fmul(n, h), c->adagc_weight);
    return h;
}

/* The coefficient of row i (tensor i), updating the row's own state. Every
 * row reads the shared scalars as they were before the step. */
GCLIP_HD float gclip_adapt_row(const gclip_adapt_device *a, const gclip_adapt_input *in,
                               const gclip_adapt_decision *d, uint32_t i)
{
    const gclip_adapt_config *c = &a->cfg;
    if (!c->per_tensor)
        return d->coef;
    if (c->method == GCLIP_ADAPTIVE_ADAGC)
        return gclip_adagc_row(a, in, d, i);
    /* AutoClip per tensor */
    const gclip_adapt_scalars *s = a->state;
    const float n = a->tensor_norms[i];
    const float coef = gclip_autoclip_coef(gclip_autoclip_threshold(a, i, s->filled), n, in->eps);
    if (in->record)
        gclip_history_push(gclip_adapt_ring_row(a, i), gclip_adapt_sorted_row(a, i), c->history,
                           s->filled, s->head, n);
    return coef;
}

/* The factor a row's coefficient gives its tensor (1: nothing written). */
GCLIP_HD float gclip_adapt_factor(const gclip_adapt_input *in, float coef)
{
    return in->apply ? gclip_fmul(coef, in->inv_scale) : 1.0f;
}

/* The shared scalars, the info record and the result slot (one thread,
 * after every row). `clipped` counts rows whose coefficient is below 1. */
GCLIP_HD void gclip_adapt_commit(gclip_adapt_device *a, const gclip_adapt_input *in,
                                 const gclip_adapt_decision *d, uint32_t clipped,
                                 gclip_result_slot *slot)
{
    const gclip_adapt_config *c = &a->cfg;
    gclip_adapt_scalars *s = a->state;
    const int skip_method = c->method == GCLIP_ADAPTIVE_SPIKE_SKIP;
    /* spike skip keeps a skipped step's norm out of its window */
    const int record = in->record && !(skip_method && d->spike);
    if (record) {
        switch (c->method) {
        case GCLIP_ADAPTIVE_ZCLIP:
            if (d->warmup && s->filled < c->history)
                a->ring[s->filled++] = in->norm;
            s->mean = d->mean;
            s->var = d->var;
            break;
        case GCLIP_ADAPTIVE_AUTOCLIP:
            if (!c->per_tensor)
                gclip_history_push(a->ring, a->sorted, c->history, s->filled, s->head, in->norm);
            break;
        case GCLIP_ADAPTIVE_SPIKE_SKIP:
            a->ring[s->head] = in->norm;
            break;
        default:
            break;
        }
        if (c->method != GCLIP_ADAPTIVE_ZCLIP && c->history > 0) {
            s->filled = s->filled < c->history ? s->filled + 1u : c->history;
            s->head = s->head + 1u == c->history ? 0u : s->head + 1u;
        }
        s->steps += 1u;
    }
    if (d->spike && (in->record || skip_method))
        s->spikes += 1u;

    const float coef = in->apply && !c->per_tensor ? d->coef : 1.0f;
    gclip_adaptive_info info;
    info.total_norm = in->norm;
    info.threshold = d->threshold;
    info.clip_coef = coef;
    info.spike = d->spike;
    info.warmup = d->warmup;
    info.recorded = record;
    info.clipped = in->apply ? clipped : 0u;
    info.steps = s->steps;
    a->info = info;

    if (skip_method) {
        if (d->spike && slot->status == GCLIP_STATUS_SUCCESS)
            slot->flags |= GCLIP_RESULT_SKIP_STEP;
        return;
    }
    slot->flags |= GCLIP_RESULT_APPLIES;
    slot->clip_coef = coef;
    slot->scale = c->per_tensor ? 1.0f : gclip_adapt_factor(in, coef);
}

#endif /* GCLIP_ADAPT_MATH_H */
