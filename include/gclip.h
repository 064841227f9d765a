/*
 * gclip.h - gradient clipping for training loops, on the CPU and on CUDA GPUs.
 *
 * One public header. It compiles as C99, C11 and C++ and pulls in no CUDA
 * header: the CUDA stream is passed as an opaque `gclip_stream`, which is the
 * same type as cudaStream_t (both are `struct CUstream_st *`).
 *
 * Overview
 *   A plan is built once from the list of gradient tensors and reused every
 *   training step. Building it validates the list (including overlapping or
 *   repeated tensors) and precomputes everything the step calls need, so the
 *   step calls allocate nothing and never synchronize with the host.
 *
 * The step contract
 *   A norm-based step is made of three phases, each stream-ordered,
 *   allocation-free and capturable in a CUDA graph:
 *     accumulate  read the gradients into the plan's partial (the norm
 *                 accumulator and a count of non-finite tensor norms);
 *     finalize    turn one or more partials into the norm, the clipping
 *                 coefficient, the factor and the flags of the result slot;
 *     apply       multiply the gradients by the slot's factor (nothing is
 *                 written when it is exactly 1).
 *   gclip_clip_grad_norm runs all three in two kernel launches. The phases
 *   are also public on their own: gclip_compute_clip_factor stops before
 *   apply (an optimizer folds the factor into its own update), and
 *   gclip_norm_accumulate + gclip_norm_finalize leave room between them for a
 *   reduction across ranks, queued on the same stream with no host round
 *   trip. gclip_clip_grads_with_norm applies a norm computed elsewhere.
 *
 * Scalars in device memory
 *   max_norm, inv_scale and an externally computed norm can each be given as
 *   a value, fixed when the call is made, or as a pointer to a float in the
 *   plan's device memory, read when the step executes (as cuBLAS's device
 *   pointer mode). A step captured in a CUDA graph and replayed then uses the
 *   value current at each replay, e.g. the loss scale of dynamic AMP.
 *
 * Results: one truth
 *   Every operation writes the plan's result slot (gclip_device_result) in
 *   the memory of the plan's device, in stream order: the norm, coefficient,
 *   factor and flags, which operation wrote it, its non-finite policy and
 *   the status of its execution. gclip_plan_device_result gives its address
 *   (read it on the device, no host synchronization); gclip_get_result waits
 *   for the plan's last operation, eager or replayed, and decodes the slot.
 *
 * Streams (CUDA plans)
 *   Step calls return once their work is enqueued on `stream`. A plan's
 *   operations run in the order they were issued, even when the caller
 *   changes stream: each operation first waits for the plan's previous one
 *   (an event recorded by every operation, also inside a captured graph, so
 *   a replay counts as an operation issued at cudaGraphLaunch). One plan must
 *   not be used by two host threads at once; distinct plans may be. On CPU
 *   plans the stream is ignored and every call has completed when it returns.
 *
 * Errors
 *   Every function returns a gclip_status. gclip_status_string gives a fixed
 *   sentence for a status, gclip_last_error the detail of the calling thread's
 *   last failure. The library never exits, aborts or prints. A call that is
 *   rejected or fails leaves every gradient bit-identical. A value read from
 *   device memory at execution that is out of range (a negative max_norm, say)
 *   cannot be rejected by the call: the step then writes no gradient and its
 *   result slot carries the status, which gclip_get_result returns.
 *
 * Determinism
 *   For a given plan and backend the results are bitwise identical from run
 *   to run, for any CPU thread count and any GPU model: the reduction order
 *   is fixed by the plan's chunk table (each tensor's element count), never
 *   by the hardware, nor by where a tensor lies: the same values at another
 *   address (a rebind, a view at another offset) give the same bits. Nor by the
 *   caller's floating-point environment: on x86 every call that computes
 *   runs with round-to-nearest, without flush-to-zero or denormals-are-zero
 *   and with every exception masked, on the calling thread and on its CPU
 *   threads, and puts the caller's environment back, flags included, before
 *   it returns. A caller that flushes denormals (torch.set_flush_denormal)
 *   gets the same bits as any other; one that unmasks FE_INVALID gets a NaN
 *   norm, not SIGFPE.
 */
#ifndef GCLIP_H
#define GCLIP_H

#include <stddef.h>
#include <stdint.h>

#include "gclip_version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the functions a shared gclip library exports; everything else is
 * hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define GCLIP_API __attribute__((visibility("default")))
#else
#define GCLIP_API
#endif

/* Status codes. The numbers are part of the ABI and are never reused. */
typedef enum gclip_status {
    GCLIP_STATUS_SUCCESS = 0,
    GCLIP_STATUS_INVALID_ARGUMENT = 1, /* NULL pointer, bad size, dtype or option value */
    GCLIP_STATUS_MISALIGNED = 2,       /* a data pointer not aligned to its element size */
    GCLIP_STATUS_OVERLAP = 3,          /* two tensors of a plan share memory */
    GCLIP_STATUS_NOT_SUPPORTED = 4,    /* e.g. a CUDA device on a build without CUDA */
    GCLIP_STATUS_NO_DEVICE = 5,        /* the CUDA device ordinal does not exist, or no driver */
    GCLIP_STATUS_OUT_OF_MEMORY = 6,    /* host or device allocation failed */
    GCLIP_STATUS_CUDA_ERROR = 7,       /* a CUDA runtime call failed; detail names it */
    GCLIP_STATUS_NONFINITE = 8,        /* total norm is NaN or Inf (GCLIP_NONFINITE_ERROR) */
    GCLIP_STATUS_INTERNAL_ERROR = 9,
    GCLIP_STATUS_MISMATCH = 10,        /* partials made with other options (norm type, policy) */
    GCLIP_STATUS_VERSION_MISMATCH = 11 /* an options struct of an unknown size or version */
} gclip_status;

/* Element types. f16 and bf16 are read and written in place and accumulated
 * in double precision; f64 is accumulated and scaled in double. */
typedef enum gclip_dtype {
    GCLIP_F32 = 0,
    GCLIP_F16 = 1,
    GCLIP_BF16 = 2,
    GCLIP_F64 = 3
} gclip_dtype;

/* One gradient tensor: `numel` contiguous elements of `dtype` at `data`, in
 * the memory of the plan's device (host memory for GCLIP_DEVICE_CPU). `data`
 * must be aligned to the element size. `data` may be NULL only if numel == 0. */
typedef struct gclip_tensor {
    void *data;
    int64_t numel;
    gclip_dtype dtype;
} gclip_tensor;

/* What to do when the total norm is NaN or +Inf. */
typedef enum gclip_nonfinite_policy {
    /* Default. No gradient is written; the non-finite flag is raised and the
     * caller skips its optimizer step (as GradScaler does). Nothing is lost. */
    GCLIP_NONFINITE_SKIP = 0,
    /* PyTorch's arithmetic exactly: coef = min(1, max_norm / (N + eps)) is
     * applied whatever it is, so N = Inf zeroes finite gradients and N = NaN
     * turns every gradient into NaN. The flag is still raised. */
    GCLIP_NONFINITE_PROPAGATE = 1,
    /* As SKIP, and gclip_get_result returns GCLIP_STATUS_NONFINITE
     * (like PyTorch's error_if_nonfinite=True). */
    GCLIP_NONFINITE_ERROR = 2
} gclip_nonfinite_policy;

/* The operation that last wrote a plan's result slot. */
typedef enum gclip_op {
    GCLIP_OP_NONE = 0,            /* no operation yet */
    GCLIP_OP_TOTAL_NORM = 1,      /* gclip_total_norm */
    GCLIP_OP_CLIP_NORM = 2,       /* gclip_clip_grad_norm */
    GCLIP_OP_CLIP_PER_TENSOR = 3, /* gclip_clip_grad_norm_per_tensor */
    GCLIP_OP_CLIP_VALUE = 4,      /* gclip_clip_grad_value */
    GCLIP_OP_CLIP_FACTOR = 5,     /* gclip_compute_clip_factor */
    GCLIP_OP_CLIP_WITH_NORM = 6,  /* gclip_clip_grads_with_norm */
    GCLIP_OP_ACCUMULATE = 7,      /* gclip_norm_accumulate */
    GCLIP_OP_FINALIZE = 8,        /* gclip_norm_finalize */
    GCLIP_OP_APPLY = 9,           /* gclip_apply_clip_factor */
    GCLIP_OP_ADAPTIVE_CLIP = 10,  /* gclip_adaptive_step (gclip_adapt.h), clipping methods */
    GCLIP_OP_ADAPTIVE_SKIP = 11,  /* gclip_adaptive_step, spike step-skip */
    GCLIP_OP_AGC = 12             /* gclip_agc_step (gclip_adapt.h) */
} gclip_op;

/* Bits of gclip_device_result.flags. */
enum {
    GCLIP_RESULT_HAS_NORM = 1,     /* total_norm holds a norm (not value clipping) */
    GCLIP_RESULT_APPLIES = 2,      /* the operation writes the gradients by `scale`
                                      (nothing is written when scale == 1) */
    GCLIP_RESULT_ERROR_POLICY = 4, /* the operation used GCLIP_NONFINITE_ERROR */
    GCLIP_RESULT_LOCAL = 8,        /* the norm is this plan's part only (accumulate) */
    GCLIP_RESULT_PROPAGATE = 16,   /* the operation used GCLIP_NONFINITE_PROPAGATE */
    GCLIP_RESULT_SKIP_STEP = 32    /* spike step-skip: the optimizer should skip this step */
};

/* Opaque plan. */
typedef struct gclip_plan gclip_plan;

/* The CUDA stream type, identical to cudaStream_t. NULL is the default stream. */
typedef struct CUstream_st *gclip_stream;

/* Device argument of gclip_plan_create for the CPU path. */
#define GCLIP_DEVICE_CPU (-1)

/* Tag and revision of the options structs: the initializer fills `size` and
 * `version`, so a caller compiled against an older header passes a smaller
 * size and the fields it does not know take their defaults. */
#define GCLIP_OPTIONS_VERSION 1

/* Options of the norm-based operations. Fill from GCLIP_NORM_OPTIONS_INIT or
 * gclip_norm_options_default() and change what you need.
 *
 *  size, version  set by the initializer; do not change.
 *  max_norm       threshold C. Must be >= 0 and not NaN; +Inf never clips.
 *                 0 sets every finite gradient to 0 (as PyTorch). Negative
 *                 values are rejected (PyTorch would flip the gradients' sign).
 *  norm_type      p: 2, 1, INFINITY or any finite p > 0. For p other than
 *                 1, 2 and Inf the sum of |x|^p is accumulated in double, so
 *                 it is exact to 1e-6 while every nonzero |x|^p and their sum
 *                 stay in double's normal range and p >= 1e-3.
 *  eps            added to the norm before dividing: coef = min(1, C*(1/(N+eps)))
 *                 in float, rounded as PyTorch rounds it. Default 1e-6
 *                 (PyTorch). Must be finite and >= 0 (-0 counts as +0).
 *  inv_scale      AMP loss-scale factor (1/scale), applied in the same pass.
 *                 The norm reported and clipped is that of the unscaled
 *                 gradients. Must be finite and > 0. Default 1.
 *  nonfinite      the non-finite policy, default GCLIP_NONFINITE_SKIP.
 *  tensor_norms   optional output of `count` floats, each tensor's own p-norm
 *                 (unscaled). Memory of the plan's device, written in stream
 *                 order; outside every tensor of the plan (OVERLAP) and its
 *                 result slot (INVALID_ARGUMENT).
 *  max_norm_ptr   optional: read C from this float in the plan's device
 *                 memory when the step executes, instead of `max_norm`; it
 *                 means what `max_norm` means, 0 and +Inf included.
 *  inv_scale_ptr  optional: the same for inv_scale.
 *                 An out-of-range value read at execution writes no gradient;
 *                 the result slot's status says INVALID_ARGUMENT. Neither may
 *                 point into the result slot of the plan it is given to
 *                 (gclip_plan_device_result): the step rewrites that slot
 *                 while its blocks read the pointers (INVALID_ARGUMENT).
 *                 tensor_norms, max_norm_ptr and inv_scale_ptr must be
 *                 aligned to a float (MISALIGNED).
 */
typedef struct gclip_norm_options {
    size_t size;
    uint32_t version;
    float max_norm;
    float norm_type;
    float eps;
    float inv_scale;
    gclip_nonfinite_policy nonfinite;
    float *tensor_norms;
    const float *max_norm_ptr;
    const float *inv_scale_ptr;
} gclip_norm_options;

#define GCLIP_NORM_OPTIONS_INIT                                                               \
    {sizeof(gclip_norm_options), GCLIP_OPTIONS_VERSION, 1.0f, 2.0f, 1e-6f, 1.0f,              \
     GCLIP_NONFINITE_SKIP, NULL, NULL, NULL}

/* Result of the plan's last operation, decoded on the host. */
typedef struct gclip_result {
    float total_norm;  /* p-norm of all (unscaled) gradients before clipping; NaN if none */
    float clip_coef;   /* min(1, max_norm/(total_norm+eps)); 1 if the op computes none */
    float scale;       /* clip_coef * inv_scale: the factor applied (or to apply, for
                          gclip_compute_clip_factor and gclip_norm_finalize); 1 if none */
    int32_t nonfinite; /* 1 if the total norm (or, per tensor, any tensor norm) was NaN or Inf */
    int32_t has_norm;  /* 0 for value clipping and before the first operation */
    int32_t applied;   /* 1 if gradients were multiplied by `scale` (scale != 1), by
                          their own factors (per-tensor clipping, AGC) or clamped */
    gclip_op op;       /* the operation that wrote the slot */
    uint32_t sequence; /* operations executed on the plan so far, replays included */
} gclip_result;

/* The plan's result slot, in the memory of its device, written by every
 * operation in stream order. A GPU optimizer reads `scale` and `nonfinite`
 * here with no host synchronization. */
typedef struct gclip_device_result {
    float total_norm;
    float clip_coef;
    float scale;
    int32_t nonfinite;
    int32_t op;       /* gclip_op */
    int32_t flags;    /* GCLIP_RESULT_* bits */
    int32_t status;   /* gclip_status of the execution (SUCCESS, INVALID_ARGUMENT for an
                         out-of-range device scalar, MISMATCH for foreign partials) */
    int32_t failed;   /* nonzero: a later launch of the operation failed, so nothing was
                         written although `scale` may differ from 1 */
    uint32_t sequence;
    uint32_t reserved_;
} gclip_device_result;

/* A norm accumulator: what gclip_norm_accumulate leaves in the plan, what a
 * communicator gathers across ranks and what gclip_norm_finalize folds.
 * Fold partials with gclip_partial_combine (host) or let
 * gclip_norm_finalize fold an array of them (in the order it documents). */
typedef struct gclip_partial {
    double acc;           /* sum of |x|^p terms (max |x| for p = Inf), not yet rooted or scaled */
    uint32_t nonfinite;   /* tensors whose own norm is NaN or Inf */
    uint32_t fingerprint; /* of the norm type and policy; finalize rejects a mix */
} gclip_partial;

/* ---- library ---------------------------------------------------------- */

/* GCLIP_VERSION of the library actually linked. */
GCLIP_API int gclip_get_version(void);

/* A fixed sentence describing `status`; never NULL. */
GCLIP_API const char *gclip_status_string(gclip_status status);

/* Detail of the calling thread's last failed call ("" if none). The pointer
 * stays valid until the thread's next gclip call. */
GCLIP_API const char *gclip_last_error(void);

/* How many CUDA devices this build sees (0 without the CUDA backend, driver
 * or device; never an error). */
GCLIP_API int gclip_cuda_device_count(void);

GCLIP_API gclip_norm_options gclip_norm_options_default(void);

/* Fold partial `b` into `a` (host memory), as gclip_norm_finalize does:
 * sum (or max keeping NaN for p = Inf) of acc, sum of nonfinite. Rejects
 * partials of different fingerprints with GCLIP_STATUS_MISMATCH. */
GCLIP_API gclip_status gclip_partial_combine(gclip_partial *a, const gclip_partial *b);

/* ---- plans -------------------------------------------------------------- */

/* Build a plan for `count` tensors on `device` (GCLIP_DEVICE_CPU or a CUDA
 * ordinal). `tensors` is host memory and is copied; the data stays where it
 * is. count == 0 is allowed (every norm is 0, nothing is written). Rejects
 * tensors that overlap or repeat with GCLIP_STATUS_OVERLAP naming both
 * indices. A tensor of n elements takes ceil(n / 65536) chunks, and a plan
 * of more than 2^31 - 1 chunks in all is refused with
 * GCLIP_STATUS_INVALID_ARGUMENT: so is any single tensor of more than
 * (2^31 - 1) * 65536 = 2^47 - 65536 elements, and any set of tensors that
 * holds more elements than that together; so is a count above 2^31 - 1
 * (the kernels' 32-bit loops over the tensors must not wrap). A CUDA
 * device that this build has no kernel image for (older than its CUDA
 * architectures, sm_75 and newer by default) is GCLIP_STATUS_NOT_SUPPORTED. Allocates the plan's
 * workspace; may synchronize. */
GCLIP_API gclip_status gclip_plan_create(gclip_plan **plan, const gclip_tensor *tensors,
                                         size_t count, int device);

/* Release the plan and its workspace. NULL is a no-op. Waits for the plan's
 * last operation (its event) on CUDA; graph execs that contain the plan's
 * steps must not be launched afterwards. */
GCLIP_API gclip_status gclip_plan_destroy(gclip_plan *plan);

/* Point the plan's tensors at new data of the same sizes and dtypes (for
 * frameworks that reallocate gradients). `data` is a host array of `count`
 * pointers, count == the plan's tensor count. Validates alignment and overlap
 * like gclip_plan_create; on failure the plan keeps its old pointers. On
 * CUDA the new table is copied in `stream` order after the plan's previous
 * operation, so operations already queued (on any stream) keep the old
 * pointers and later ones see the new ones; the call waits only for the
 * previous rebind's copy. `stream` must belong to the plan's device
 * (INVALID_ARGUMENT otherwise, checked with CUDA 12.8 and newer). Not
 * capturable, but for a rebind to the pointers the plan already has, which
 * on a stream being captured records nothing (NOT_SUPPORTED for new
 * pointers there); allocates nothing. */
GCLIP_API gclip_status gclip_plan_rebind(gclip_plan *plan, void *const *data, size_t count,
                                         gclip_stream stream);

/* Number of tensors / device of the plan. */
GCLIP_API gclip_status gclip_plan_tensor_count(const gclip_plan *plan, size_t *count);
GCLIP_API gclip_status gclip_plan_device(const gclip_plan *plan, int *device);

/* CPU plans: number of OpenMP threads used, 0 to 1024 (0 = OpenMP's
 * default, or one thread for plans of fewer than 2^18 elements, where
 * starting a team costs more than the work). Results do not depend on it.
 * In a process forked from one that had loaded gclip, every CPU step runs
 * on the calling thread whatever the count: OpenMP cannot start a team in a
 * forked child whose parent had one (GNU libgomp waits forever).
 * Ignored by CUDA plans. */
GCLIP_API gclip_status gclip_plan_set_num_threads(gclip_plan *plan, int num_threads);

/* ---- step calls: no allocation, no host synchronization ------------------ */

/* Total p-norm of all tensors, nothing written. Uses norm_type, inv_scale,
 * nonfinite (only the ERROR status of get_result) and tensor_norms of
 * `options` (NULL = defaults). The slot's clip_coef and scale are 1. One
 * launch. */
GCLIP_API gclip_status gclip_total_norm(gclip_plan *plan, const gclip_norm_options *options,
                                        gclip_stream stream);

/* Global-norm clipping, in place: N = p-norm of all gradients (times
 * inv_scale), coef = min(1, max_norm / (N + eps)), every element multiplied
 * by coef * inv_scale. When that factor is exactly 1 nothing is written.
 * Non-finite N follows options->nonfinite. Two kernel launches. */
GCLIP_API gclip_status gclip_clip_grad_norm(gclip_plan *plan, const gclip_norm_options *options,
                                            gclip_stream stream);

/* The norm, coefficient and factor of gclip_clip_grad_norm, written to the
 * result slot and NOT applied: the slot's `scale` is the factor for an
 * optimizer to fold into its update (and `nonfinite` tells it to skip).
 * No gradient is written. One launch. */
GCLIP_API gclip_status gclip_compute_clip_factor(gclip_plan *plan,
                                                 const gclip_norm_options *options,
                                                 gclip_stream stream);

/* Clip with a total norm computed elsewhere (PyTorch's
 * clip_grads_with_norm_): coef = min(1, max_norm / (N + eps)), every element
 * multiplied by coef * inv_scale, nothing written when that is 1. N is
 * `total_norm`, or the float at `total_norm_ptr` (plan-device memory, read at
 * execution) when that is not NULL. A NaN or Inf N follows the non-finite
 * policy; a negative N is rejected with GCLIP_STATUS_INVALID_ARGUMENT (from
 * total_norm_ptr: the slot's status at execution, nothing written), where
 * PyTorch would flip the gradients' sign. total_norm_ptr must be aligned to
 * a float (MISALIGNED). tensor_norms is not written. One launch. */
GCLIP_API gclip_status gclip_clip_grads_with_norm(gclip_plan *plan,
                                                  const gclip_norm_options *options,
                                                  float total_norm, const float *total_norm_ptr,
                                                  gclip_stream stream);

/* Per-tensor norm clipping, in place (Keras clipnorm, tf.clip_by_norm): each
 * tensor i is multiplied by min(1, max_norm / (N_i + eps)) * inv_scale.
 * total_norm of the result is still the global norm; its clip_coef and scale
 * are 1 (each tensor has its own factor). If any tensor's norm is non-finite,
 * SKIP and ERROR leave every tensor untouched, so no tensor is written before
 * every norm is known. Under PROPAGATE a factor depends on its own tensor
 * alone, and the CPU path clips a few hundred KiB of whole tensors at a time
 * while the caches still hold them (the same bits, less memory traffic).
 * Two launches. */
GCLIP_API gclip_status gclip_clip_grad_norm_per_tensor(gclip_plan *plan,
                                                       const gclip_norm_options *options,
                                                       gclip_stream stream);

/* Value clipping, in place: every element clamped to [-clip_value,
 * clip_value]; NaN stays NaN. clip_value must be >= 0 and not NaN (+Inf is
 * a no-op). One read-write pass, one launch. The same call as
 * gclip_clip_grad_value_f64 with (double)clip_value. */
GCLIP_API gclip_status gclip_clip_grad_value(gclip_plan *plan, float clip_value,
                                             gclip_stream stream);

/* Value clipping with the bound in double: f64 elements are clamped to
 * [-clip_value, clip_value] exactly, f32, f16 and bf16 elements to the
 * float nearest clip_value (a bound past FLT_MAX rounds to +Inf and leaves
 * them as they are). So 0.1 clamps float64 gradients to the double 0.1 and
 * float32 ones to 0.1f, as PyTorch's clip_grad_value_ does. Checks as
 * gclip_clip_grad_value. */
GCLIP_API gclip_status gclip_clip_grad_value_f64(gclip_plan *plan, double clip_value,
                                                 gclip_stream stream);

/* ---- phases: accumulate, (reduce elsewhere), finalize, apply -------------- */

/* Phase 1: accumulate the plan's gradients into its partial (the plan's
 * device memory, see gclip_plan_partial) and write tensor_norms if asked.
 * Uses norm_type, nonfinite (the fingerprint, and ERROR's status), inv_scale
 * and tensor_norms: the partial's sum is of the unscaled gradients, but its
 * non-finite count, the tensor norms and the slot's local norm (flag
 * GCLIP_RESULT_LOCAL) are of the gradients times inv_scale, so pass
 * gclip_norm_finalize the same inv_scale (a local norm that overflows float
 * only unscaled is counted non-finite). One launch. */
GCLIP_API gclip_status gclip_norm_accumulate(gclip_plan *plan, const gclip_norm_options *options,
                                             gclip_stream stream);

/* Phase 2: fold `count` partials at `partials` (plan-device memory, read at
 * execution) into the norm, coefficient, factor and flags of the result
 * slot. The order of the fold depends on `count` alone, so one array gives
 * the same bits on every rank and engine: up to 32 partials, left to right;
 * above, 1024 runs (run i holds partials [count*i/1024, count*(i+1)/1024)),
 * each folded left to right, then 32 groups of 32 consecutive runs, then the
 * 32 groups; each fold runs in index order from a partial of acc 0, as
 * gclip_partial_combine would. partials == NULL with count == 0 folds the
 * plan's own partial (INVALID_ARGUMENT before any gclip_norm_accumulate). Partials
 * with another fingerprint than `options` give the slot status
 * GCLIP_STATUS_MISMATCH, factor 1 and no norm (total_norm NaN, so nonfinite
 * 1). Nothing is written to the gradients.
 * One single-block launch. */
GCLIP_API gclip_status gclip_norm_finalize(gclip_plan *plan, const gclip_norm_options *options,
                                           const gclip_partial *partials, size_t count,
                                           gclip_stream stream);

/* Phase 3: multiply the gradients by the factor in the result slot (left by
 * gclip_norm_finalize or gclip_compute_clip_factor); nothing is written when
 * it is 1, or when the slot says the norm was non-finite under SKIP/ERROR or
 * carries a failed status. One launch. */
GCLIP_API gclip_status gclip_apply_clip_factor(gclip_plan *plan, gclip_stream stream);

/* Address of the plan's partial in the memory of its device (valid until the
 * plan is destroyed), for a communicator to gather after
 * gclip_norm_accumulate, in stream order. Every operation that computes a
 * norm rewrites it (a gclip_total_norm between an accumulate and a
 * gclip_norm_finalize of the plan's own partial replaces what it folds). */
GCLIP_API gclip_status gclip_plan_partial(const gclip_plan *plan, const gclip_partial **partial);

/* ---- results ------------------------------------------------------------ */

/* Wait for the plan's last operation (eager call or graph replay, whichever
 * was issued last) and decode its result slot. Returns the execution's
 * status: GCLIP_STATUS_NONFINITE (with `result` filled) when the operation
 * used GCLIP_NONFINITE_ERROR and the norm was not finite; the slot's status
 * for an out-of-range device scalar or foreign partials; CUDA_ERROR when a
 * launch of the operation failed after an earlier one was queued. */
GCLIP_API gclip_status gclip_get_result(gclip_plan *plan, gclip_result *result);

/* Pointer to the plan's result slot in the memory of its device (device
 * memory for CUDA plans, host memory for CPU plans). Valid until the plan is
 * destroyed; read it in stream order after a step call. */
GCLIP_API gclip_status gclip_plan_device_result(const gclip_plan *plan,
                                                const gclip_device_result **result);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* GCLIP_H */
