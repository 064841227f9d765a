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
 *   step calls (gclip_total_norm, gclip_clip_grad_norm,
 *   gclip_clip_grad_norm_per_tensor, gclip_clip_grad_value) allocate nothing
 *   and never synchronize with the host.
 *
 * Stream semantics (CUDA plans)
 *   Step calls return once their work has been enqueued on `stream`. Their
 *   results are read with gclip_get_result (which waits for the plan's last
 *   operation) or, without any host synchronization, through
 *   gclip_plan_device_result. On CPU plans the stream is ignored and every
 *   call has completed when it returns.
 *
 * Errors
 *   Every function returns a gclip_status. gclip_status_string gives a fixed
 *   sentence for a status, gclip_last_error the detail of the calling thread's
 *   last failure. The library never exits, aborts or prints. A call that is
 *   rejected or fails leaves every gradient bit-identical.
 *
 * Determinism
 *   For a given plan and backend the results are bitwise identical from run
 *   to run, for any CPU thread count and any GPU model: the reduction order
 *   is fixed by the plan's chunk table, never by the hardware.
 */
#ifndef GCLIP_H
#define GCLIP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GCLIP_VERSION_MAJOR 0
#define GCLIP_VERSION_MINOR 1
#define GCLIP_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH */
#define GCLIP_VERSION \
    (GCLIP_VERSION_MAJOR * 10000 + GCLIP_VERSION_MINOR * 100 + GCLIP_VERSION_PATCH)

/* Status codes. The numbers are part of the ABI and are never reused. */
typedef enum gclip_status {
    GCLIP_STATUS_SUCCESS = 0,
    GCLIP_STATUS_INVALID_ARGUMENT = 1, /* NULL pointer, bad size, dtype, option value */
    GCLIP_STATUS_MISALIGNED = 2,       /* a data pointer not aligned to its element size */
    GCLIP_STATUS_OVERLAP = 3,          /* two tensors of a plan share memory */
    GCLIP_STATUS_NOT_SUPPORTED = 4,    /* e.g. a CUDA device on a build without CUDA */
    GCLIP_STATUS_NO_DEVICE = 5,        /* the CUDA device ordinal does not exist, or no driver */
    GCLIP_STATUS_OUT_OF_MEMORY = 6,    /* host or device allocation failed */
    GCLIP_STATUS_CUDA_ERROR = 7,       /* a CUDA runtime call failed; detail names it */
    GCLIP_STATUS_NONFINITE = 8,        /* total norm is NaN or Inf (GCLIP_NONFINITE_ERROR) */
    GCLIP_STATUS_INTERNAL_ERROR = 9
} gclip_status;

/* Element types. f16 and bf16 are read and written in place and accumulated
 * in double precision. */
typedef enum gclip_dtype {
    GCLIP_F32 = 0,
    GCLIP_F16 = 1,
    GCLIP_BF16 = 2
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

/* Opaque plan. */
typedef struct gclip_plan gclip_plan;

/* The CUDA stream type, identical to cudaStream_t. NULL is the default stream. */
typedef struct CUstream_st *gclip_stream;

/* Device argument of gclip_plan_create for the CPU path. */
#define GCLIP_DEVICE_CPU (-1)

/* Options of the norm-based operations. Fill from GCLIP_NORM_OPTIONS_INIT or
 * gclip_norm_options_default() and change what you need.
 *
 *  max_norm     threshold C. Must be >= 0 and not NaN; +Inf never clips.
 *               0 sets every finite gradient to 0 (as PyTorch). Negative
 *               values are rejected (PyTorch would flip the gradients' sign).
 *  norm_type    p: 2, 1, INFINITY or any finite p > 0. For p other than
 *               1, 2 and Inf the sum of |x|^p is accumulated in double, so it
 *               is exact to 1e-6 while every nonzero |x|^p and their sum stay
 *               in double's normal range and p >= 1e-3 (docs/semantics.md).
 *  eps          added to the norm before dividing: coef = min(1, C*(1/(N+eps)))
 *               in float, rounded as PyTorch rounds it. Default 1e-6 (PyTorch).
 *               Must be finite and >= 0.
 *  inv_scale    AMP loss-scale factor (1/scale), applied in the same pass.
 *               The norm reported and clipped is that of the unscaled
 *               gradients. Must be finite and > 0. Default 1.
 *  nonfinite    the non-finite policy, default GCLIP_NONFINITE_SKIP.
 *  tensor_norms optional output of `count` floats, each tensor's own p-norm
 *               (unscaled). Memory of the plan's device (host memory for CPU
 *               plans, device memory for CUDA plans), written in stream order.
 */
typedef struct gclip_norm_options {
    float max_norm;
    float norm_type;
    float eps;
    float inv_scale;
    gclip_nonfinite_policy nonfinite;
    float *tensor_norms;
} gclip_norm_options;

#define GCLIP_NORM_OPTIONS_INIT {1.0f, 2.0f, 1e-6f, 1.0f, GCLIP_NONFINITE_SKIP, NULL}

/* Result of the plan's last operation, on the host. */
typedef struct gclip_result {
    float total_norm; /* p-norm of all (unscaled) gradients before clipping; NaN if none computed */
    float clip_coef;  /* min(1, max_norm/(total_norm+eps)); 1 if nothing was applied */
    float scale;      /* factor the gradients were multiplied by (clip_coef * inv_scale); 1 if unchanged */
    int32_t nonfinite;  /* 1 if the total norm was NaN or Inf */
    int32_t has_norm;   /* 0 after gclip_clip_grad_value, which computes no norm */
} gclip_result;

/* The same values in the memory of the plan's device, written by every
 * operation in stream order, so that a GPU optimizer can fold `scale` into
 * its update and skip its step on `nonfinite` without a host synchronization. */
typedef struct gclip_device_result {
    float total_norm;
    float clip_coef;
    float scale;
    int32_t nonfinite;
} gclip_device_result;

/* ---- library ---------------------------------------------------------- */

/* GCLIP_VERSION of the library actually linked. */
int gclip_get_version(void);

/* A fixed sentence describing `status`; never NULL. */
const char *gclip_status_string(gclip_status status);

/* Detail of the calling thread's last failed call ("" if none). The pointer
 * stays valid until the thread's next gclip call. */
const char *gclip_last_error(void);

/* Whether this build has the CUDA backend and how many devices it sees
 * (0 without CUDA, driver or device; never an error). */
int gclip_cuda_device_count(void);

gclip_norm_options gclip_norm_options_default(void);

/* ---- plans -------------------------------------------------------------- */

/* Build a plan for `count` tensors on `device` (GCLIP_DEVICE_CPU or a CUDA
 * ordinal). `tensors` is host memory and is copied; the data stays where it
 * is. count == 0 is allowed (every norm is 0, nothing is written). Rejects
 * tensors that overlap or repeat with GCLIP_STATUS_OVERLAP naming both
 * indices. Allocates the plan's workspace; may synchronize. */
gclip_status gclip_plan_create(gclip_plan **plan, const gclip_tensor *tensors,
                               size_t count, int device);

/* Release the plan and its workspace. NULL is a no-op. Waits for the plan's
 * pending work on CUDA. */
gclip_status gclip_plan_destroy(gclip_plan *plan);

/* Point the plan's tensors at new data of the same sizes and dtypes (for
 * frameworks that reallocate gradients). `data` is a host array of `count`
 * pointers, count == the plan's tensor count. Validates alignment and overlap
 * like gclip_plan_create; on failure the plan keeps its old pointers. On CUDA
 * the new table is uploaded in `stream` order and the call waits for that
 * upload (it is not a step call). No allocation. */
gclip_status gclip_plan_rebind(gclip_plan *plan, void *const *data, size_t count,
                               gclip_stream stream);

/* Number of tensors / device of the plan. */
gclip_status gclip_plan_tensor_count(const gclip_plan *plan, size_t *count);
gclip_status gclip_plan_device(const gclip_plan *plan, int *device);

/* CPU plans: number of OpenMP threads used (0 = OpenMP's default). Results do
 * not depend on it. Ignored by CUDA plans. */
gclip_status gclip_plan_set_num_threads(gclip_plan *plan, int num_threads);

/* ---- step calls: no allocation, no host synchronization ------------------ */

/* Total p-norm of all tensors without clipping. Uses norm_type, inv_scale,
 * nonfinite (only the ERROR status of get_result) and tensor_norms of
 * `options` (NULL = defaults). Writes no gradient. */
gclip_status gclip_total_norm(gclip_plan *plan, const gclip_norm_options *options,
                              gclip_stream stream);

/* Global-norm clipping, in place: N = p-norm of all gradients (times
 * inv_scale), coef = min(1, max_norm / (N + eps)), every element multiplied
 * by coef * inv_scale. When that factor is exactly 1 nothing is written.
 * Non-finite N follows options->nonfinite. At most two kernel launches. */
gclip_status gclip_clip_grad_norm(gclip_plan *plan, const gclip_norm_options *options,
                                  gclip_stream stream);

/* Per-tensor norm clipping, in place (Keras clipnorm, tf.clip_by_norm): each
 * tensor i is multiplied by min(1, max_norm / (N_i + eps)) * inv_scale.
 * total_norm of the result is still the global norm; its clip_coef and scale
 * are 1 (each tensor has its own factor). If any tensor's norm is non-finite,
 * SKIP and ERROR leave every tensor untouched. */
gclip_status gclip_clip_grad_norm_per_tensor(gclip_plan *plan,
                                             const gclip_norm_options *options,
                                             gclip_stream stream);

/* Value clipping, in place: every element clamped to [-clip_value,
 * clip_value]; NaN stays NaN. clip_value must be >= 0 and not NaN (+Inf is
 * a no-op). One read-write pass, one launch. */
gclip_status gclip_clip_grad_value(gclip_plan *plan, float clip_value, gclip_stream stream);

/* ---- results ------------------------------------------------------------ */

/* Wait for the plan's last operation and return its result on the host.
 * Returns GCLIP_STATUS_NONFINITE (with `result` filled) when the last norm
 * operation used GCLIP_NONFINITE_ERROR and the norm was not finite. */
gclip_status gclip_get_result(gclip_plan *plan, gclip_result *result);

/* Pointer to the plan's result slot in the memory of its device (device
 * memory for CUDA plans, host memory for CPU plans). Valid until the plan is
 * destroyed; read it in stream order after a step call. */
gclip_status gclip_plan_device_result(const gclip_plan *plan,
                                      const gclip_device_result **result);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* GCLIP_H */
