/*
 * gclip_adapt.h - adaptive clipping and spike step-skip, with their state
 * kept in the memory of the plan's device.
 *
 * Overview
 *   An adaptive clipper (gclip_adaptive) is built once against an existing
 *   plan and keeps the statistics of its method (EMAs, a history of norms,
 *   per-tensor thresholds, a rolling window) in the plan's device memory
 *   (host memory for CPU plans). Each gclip_adaptive_step computes the norm
 *   of the plan's gradients, derives this step's threshold(s) from the state,
 *   writes the result slot, updates the state and clips the gradients, all
 *   in stream order: no host synchronization, no allocation, capturable in a
 *   CUDA graph. A replay updates the state exactly as an eager step does.
 *
 * Methods (formulas and the references they follow: docs/adaptive.md)
 *   ZCLIP       z-score of the norm against an EMA of its mean and variance
 *               after a warm-up (PyPI zclip 1.0.0).
 *   AUTOCLIP    the threshold is a quantile of the last history_length
 *               pre-clip norms, per tensor or global (PyPI autoclip 0.2.1,
 *               QuantileClip).
 *   ADAGC       global clipping to lambda_abs during warm-up, then per-tensor
 *               clipping against an EMA of each tensor's clipped norm
 *               (pytorch_optimizer AdaGC, its clipping part).
 *   SPIKE_SKIP  writes no gradient: raises GCLIP_RESULT_SKIP_STEP in the
 *               result slot when the norm's z-score over a rolling window
 *               exceeds sigma (OLMo-core SkipStepOptimizer).
 *   AGC         unit-wise clipping against the parameters' unit norms
 *               (timm adaptive_clip_grad): its own object, gclip_agc, below;
 *               it keeps no state between steps.
 *
 * Non-finite norms
 *   A step whose total norm (or any tensor norm) is NaN or Inf never enters
 *   the statistics: EMAs, histories, windows and step counters keep their
 *   values. The base options' non-finite policy still applies: SKIP and
 *   ERROR write no gradient, PROPAGATE applies the method's own arithmetic
 *   (as its reference would) to that step.
 *
 * Memory and ordering
 *   The adaptive borrows its plan: destroy the adaptive before the plan. Its
 *   steps are operations of the plan, ordered with the plan's other
 *   operations (include/gclip.h, "Streams"). Each step writes the plan's
 *   result slot and this adaptive's info record (gclip_adaptive_info).
 */
#ifndef GCLIP_ADAPT_H
#define GCLIP_ADAPT_H

#include "gclip.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The adaptive methods. The numbers are part of the ABI. */
typedef enum gclip_adaptive_method {
    GCLIP_ADAPTIVE_ZCLIP = 0,
    GCLIP_ADAPTIVE_AUTOCLIP = 1,
    GCLIP_ADAPTIVE_ADAGC = 2,
    GCLIP_ADAPTIVE_SPIKE_SKIP = 3
} gclip_adaptive_method;

/* ZClip's modes (its `mode` and `clip_option` strings). */
typedef enum gclip_zclip_mode {
    GCLIP_ZCLIP_ZSCORE = 0,    /* clip outliers with z > z_thresh */
    GCLIP_ZCLIP_PERCENTILE = 1 /* clip to mean + z_thresh * std */
} gclip_zclip_mode;

typedef enum gclip_zclip_clip_option {
    GCLIP_ZCLIP_ADAPTIVE_SCALING = 0, /* T = (mean + z_thresh^2 * std / z) * clip_factor */
    GCLIP_ZCLIP_MEAN = 1              /* T = mean */
} gclip_zclip_clip_option;

/* Revision of gclip_adaptive_options (see GCLIP_OPTIONS_VERSION). */
#define GCLIP_ADAPTIVE_OPTIONS_VERSION 1

/* Options of an adaptive clipper. Fill from GCLIP_ADAPTIVE_OPTIONS_INIT or
 * gclip_adaptive_options_default(), set `method` and change what you need.
 * The defaults are the references' defaults. Only the fields of the chosen
 * method are read (and validated).
 *
 * ZClip
 *  zclip_alpha             EMA factor, in (0, 1). 0.97
 *  zclip_z_thresh          > 0 and finite. 2.5
 *  zclip_max_grad_norm     cap on the effective threshold, > 0; INFINITY for
 *                          none (the reference's None). Also the clip norm
 *                          of the warm-up steps. 1.0
 *  zclip_eps               added to std in the z-score, finite and >= 0. 1e-6
 *  zclip_warmup_steps      norms collected before the EMAs start, >= 1. 25
 *  zclip_mode, zclip_clip_option   GCLIP_ZCLIP_ZSCORE, GCLIP_ZCLIP_ADAPTIVE_SCALING
 *  zclip_clip_factor       multiplies the adaptive threshold, > 0. 1.0
 *  zclip_skip_update_on_spike  nonzero: a spike step leaves the EMAs. 0
 * AutoClip (QuantileClip)
 *  autoclip_quantile       in [0, 1]. 0.9
 *  autoclip_history_length norms kept per history, 1 .. 2^20. 1000
 *  autoclip_global         nonzero: one history of the total norm and one
 *                          global factor; 0: one history and factor per
 *                          tensor. 0
 * AdaGC
 *  adagc_beta              EMA factor of the thresholds, in [0, 1). 0.98
 *  adagc_lambda_abs        warm-up clip norm, > 0 (as a float too). 1.0
 *  adagc_lambda_rel        relative threshold, > 0 (as a float too). 1.05
 *  adagc_eps               >= 0 and finite as a float. 1e-8
 *  adagc_warmup_steps      steps with global clipping. 100
 * Spike step-skip
 *  spike_window            norms in the rolling window, 2 .. 2^20. 128
 *  spike_min_values        norms needed before a step can be skipped,
 *                          2 .. spike_window. 20
 *  spike_sigma             skip when (N - mean) / std > sigma; > 0. 6.0
 */
typedef struct gclip_adaptive_options {
    size_t size;
    uint32_t version;
    gclip_adaptive_method method;
    double zclip_alpha;
    double zclip_z_thresh;
    double zclip_max_grad_norm;
    double zclip_eps;
    uint32_t zclip_warmup_steps;
    gclip_zclip_mode zclip_mode;
    gclip_zclip_clip_option zclip_clip_option;
    int32_t zclip_skip_update_on_spike;
    double zclip_clip_factor;
    double autoclip_quantile;
    uint32_t autoclip_history_length;
    int32_t autoclip_global;
    double adagc_beta;
    double adagc_lambda_abs;
    double adagc_lambda_rel;
    double adagc_eps;
    uint32_t adagc_warmup_steps;
    uint32_t spike_window;
    uint32_t spike_min_values;
    double spike_sigma;
} gclip_adaptive_options;

#define GCLIP_ADAPTIVE_OPTIONS_INIT                                                            \
    {sizeof(gclip_adaptive_options), GCLIP_ADAPTIVE_OPTIONS_VERSION, GCLIP_ADAPTIVE_ZCLIP,      \
     0.97, 2.5, 1.0, 1e-6, 25u, GCLIP_ZCLIP_ZSCORE, GCLIP_ZCLIP_ADAPTIVE_SCALING, 0, 1.0,      \
     0.9, 1000u, 0,                                                                              \
     0.98, 1.0, 1.05, 1e-8, 100u,                                                                \
     128u, 20u, 6.0}

/* What one adaptive step decided, in the memory of the plan's device,
 * written in stream order by every step (read it on the device, or with
 * gclip_adaptive_get_info on the host). */
typedef struct gclip_adaptive_info {
    float total_norm;    /* the pre-clip total norm (unscaled) */
    float threshold;     /* the global threshold used (ZClip: the effective limit; AutoClip
                            global: the quantile; AdaGC warm-up: lambda_abs; spike skip:
                            mean + sigma * std); +Inf when none applied; NaN for
                            per-tensor thresholds */
    float clip_coef;     /* the global coefficient (1 for per-tensor methods) */
    int32_t spike;       /* ZClip: the norm was an outlier; spike skip: the step is skipped */
    int32_t warmup;      /* the step used the method's warm-up rule */
    int32_t recorded;    /* the step entered the statistics (0 for non-finite norms) */
    uint32_t clipped;    /* tensors whose factor is below 1 (all of them for a global clip) */
    uint32_t steps;      /* steps recorded so far, this one included */
} gclip_adaptive_info;

/* Opaque adaptive clipper. */
typedef struct gclip_adaptive gclip_adaptive;

GCLIP_API gclip_adaptive_options gclip_adaptive_options_default(void);

/* Build an adaptive clipper for `plan` (which it borrows; destroy the
 * adaptive first). Validates the method's hyperparameters (INVALID_ARGUMENT
 * naming the field), allocates and initializes its state in the plan
 * device's memory; may synchronize. On failure *ad is NULL. */
GCLIP_API gclip_status gclip_adaptive_create(gclip_adaptive **ad, gclip_plan *plan,
                                             const gclip_adaptive_options *options);

/* Free the state; waits for the plan's last operation. NULL is a no-op. */
GCLIP_API gclip_status gclip_adaptive_destroy(gclip_adaptive *ad);

/* One adaptive step, in place. `base` (NULL = defaults) gives norm_type,
 * eps (the clip's eps, PyTorch's 1e-6 by default), inv_scale /
 * inv_scale_ptr (AMP: the norms are of the unscaled gradients and the factor
 * includes inv_scale) and the non-finite policy; its max_norm and
 * max_norm_ptr are not used and its tensor_norms must be NULL.
 * Three launches (norm, adapt, scale); SPIKE_SKIP has two and writes no
 * gradient. No allocation, no host synchronization, capturable. Should the
 * scale launch fail (CUDA_ERROR, slot marked failed, no gradient written),
 * the state has already taken in the step's norm: it is not rolled back.
 * A step whose slot fails at execution (an out-of-range inv_scale_ptr
 * value) writes no gradient, changes no state and reports no spike.
 * The result slot: op GCLIP_OP_ADAPTIVE_CLIP or GCLIP_OP_ADAPTIVE_SKIP,
 * total_norm, and for global methods the coefficient and factor applied
 * (per-tensor methods: 1 and 1, as gclip_clip_grad_norm_per_tensor);
 * flags GCLIP_RESULT_SKIP_STEP when spike skip says so. */
GCLIP_API gclip_status gclip_adaptive_step(gclip_adaptive *ad, const gclip_norm_options *base,
                                           gclip_stream stream);

/* Wait for the plan's last operation and copy this adaptive's info record. */
GCLIP_API gclip_status gclip_adaptive_get_info(gclip_adaptive *ad, gclip_adaptive_info *info);

/* Address of the info record in the memory of the plan's device (valid until
 * the adaptive is destroyed); read it in stream order after a step. */
GCLIP_API gclip_status gclip_adaptive_device_info(const gclip_adaptive *ad,
                                                  const gclip_adaptive_info **info);

/* ---- checkpointing ----------------------------------------------------------- */

/* Bytes of the exported state of `ad` (a header with a magic, the format
 * version, the method and the sizes, then the state). */
GCLIP_API gclip_status gclip_adaptive_state_size(const gclip_adaptive *ad, size_t *size);

/* Copy the state to `host_buf` (host memory, at least state_size bytes).
 * Waits for the plan's last operation first, so the state is that of every
 * step issued so far. Not capturable. */
GCLIP_API gclip_status gclip_adaptive_export(gclip_adaptive *ad, void *host_buf, size_t size);

/* Replace the state by bytes from gclip_adaptive_export of an adaptive of
 * the same method and sizes (tensor count, history or window length);
 * hyperparameters may differ. Waits for the plan's last operation; the next
 * step continues from the imported state, bit for bit as the exporter would.
 * Rejects bytes that are not an export (INVALID_ARGUMENT), of another format
 * version (VERSION_MISMATCH) or of another method or sizes (MISMATCH),
 * leaving the state as it was. Not capturable. */
GCLIP_API gclip_status gclip_adaptive_import(gclip_adaptive *ad, const void *host_buf,
                                             size_t size);

/* ---- AGC: unit-wise adaptive gradient clipping -------------------------------- */

/* Unit-wise adaptive gradient clipping (Brock et al. 2021) with the
 * arithmetic of timm.utils.agc.adaptive_clip_grad: each unit of a gradient
 * (a row along dim 0, or the whole tensor for ndim <= 1) with
 *     max_norm = clip_factor * max(||W_unit||, eps)
 * is kept when ||g_unit|| < max_norm, else scaled by
 *     max_norm / max(||g_unit||, 1e-6).
 * Norms, max_norm and the factor are float for f32/f16/bf16 tensors and
 * double for f64; an element is scaled in float (f64: double) and rounded
 * back. A unit's norm terms are summed in double in a fixed order that
 * depends on its length alone (docs/adaptive.md, "AGC"), the same on the CPU
 * and the GPU. No non-finite policy: as timm, a NaN in a unit of W or g makes
 * the unit NaN, an Inf gradient norm zeroes its finite elements, an Inf
 * parameter norm keeps the unit. */

/* Revision of gclip_agc_options (see GCLIP_OPTIONS_VERSION). */
#define GCLIP_AGC_OPTIONS_VERSION 1

/* clip_factor  finite and > 0. 0.01
 * eps          lower bound of a parameter unit's norm, finite and >= 0. 1e-3
 * norm_type    p > 0 or INFINITY (timm's unitwise_norm: any torch norm). 2 */
typedef struct gclip_agc_options {
    size_t size;
    uint32_t version;
    double clip_factor;
    double eps;
    float norm_type;
} gclip_agc_options;

#define GCLIP_AGC_OPTIONS_INIT \
    {sizeof(gclip_agc_options), GCLIP_AGC_OPTIONS_VERSION, 0.01, 1e-3, 2.0f}

/* Opaque AGC: a plan's gradients paired with their parameter tensors. */
typedef struct gclip_agc gclip_agc;

/* Pair the plan's gradients with their parameters: params[i] has the numel
 * and dtype of the plan's tensor i, in the memory of the plan's device, and
 * units[i] is its number of units (the size of dim 0 for ndim >= 2, else 1;
 * a divisor of numel, >= 1 unless numel is 0). The units are cut into
 * pieces of at most 16,384 elements; more than 2^31 - 1 pieces in all are
 * refused (INVALID_ARGUMENT). A parameter may not share a byte with any
 * of the plan's gradients (OVERLAP): the step scales some units while
 * others still read their parameters. The AGC borrows the plan
 * (destroy the AGC first) and follows its rebinds; the parameters' addresses
 * are fixed at creation, and a rebind must keep the gradients clear of them
 * (not checked). Validates (INVALID_ARGUMENT / MISALIGNED / OVERLAP /
 * VERSION_MISMATCH naming the field or tensor), allocates its tables in the
 * plan device's memory; may synchronize. On failure *agc is NULL. */
GCLIP_API gclip_status gclip_agc_create(gclip_agc **agc, gclip_plan *plan,
                                        const gclip_tensor *params, const int64_t *units,
                                        const gclip_agc_options *options);

/* Free the tables; waits for the plan's last operation. NULL is a no-op. */
GCLIP_API gclip_status gclip_agc_destroy(gclip_agc *agc);

/* One AGC step in place: two launches (unit norms, then scaling), no
 * allocation, no host synchronization, capturable; ordered with the plan's
 * other operations. The result slot: op GCLIP_OP_AGC, total_norm NaN,
 * clip_coef and scale 1 (each unit has its own factor), flags APPLIES; the
 * scaling launch writes it, so should that launch fail (CUDA_ERROR), no
 * gradient is written and the slot is the previous operation's, unchanged. */
GCLIP_API gclip_status gclip_agc_step(gclip_agc *agc, gclip_stream stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* GCLIP_ADAPT_H */
