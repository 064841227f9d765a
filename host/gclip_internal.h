/*
 * gclip_internal.h - the plan, error reporting and the backend entry points.
 * Not installed. Included by the host C files, the CUDA glue and the tests.
 */
#ifndef GCLIP_INTERNAL_H
#define GCLIP_INTERNAL_H

#include "gclip.h"
#include "gclip_portable.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The last operation, as needed by gclip_get_result. */
typedef struct gclip_last_op {
    int32_t has_norm;     /* 0: none yet or value clipping */
    int32_t error_policy; /* last norm op used GCLIP_NONFINITE_ERROR */
} gclip_last_op;

struct gclip_plan {
    int device;                /* GCLIP_DEVICE_CPU or CUDA ordinal */
    size_t count;              /* tensors */
    uint32_t num_chunks;
    gclip_tensor_desc *tensors; /* host copy, [count] */
    gclip_chunk *chunks;        /* host copy, [num_chunks] */
    size_t *scratch;            /* [count], order for the overlap check */
    void **saved_data;          /* [count], old pointers while rebinding */
    gclip_last_op last;

    /* CPU path workspace (NULL on CUDA plans) */
    int num_threads;
    double *partials;     /* [num_chunks] */
    float *tensor_factor; /* [count] per-tensor scale factors */
    gclip_result_slot result;

    /* CUDA backend state (struct gclip_cuda_state, host/cuda_backend.c) */
    void *cuda;
};

/* ---- errors (host/status.c) ---- */

/* Record `status` with a printf-style detail for gclip_last_error and return
 * it, so that callers can write `return gclip_fail(...)`. */
gclip_status gclip_fail(gclip_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Clear the calling thread's detail message (done by every entry point). */
void gclip_clear_error(void);

/* ---- host allocation (host/alloc.c): every host allocation goes through
 * here, so that tests can make each one fail in turn. ---- */
void *gclip_host_alloc(size_t bytes);
void gclip_host_free(void *ptr);

/* Test hook: when set, called before every host allocation with a running
 * index (0, 1, ...); returning nonzero makes that allocation fail. Not part of
 * the public API. */
typedef int (*gclip_alloc_hook_fn)(size_t index, size_t bytes);
void gclip_set_alloc_hook(gclip_alloc_hook_fn hook);

/* ---- validation (host/validate.c) ---- */

/* Check one tensor descriptor; `index` is used in the message. */
gclip_status gclip_validate_tensor(const gclip_tensor *t, size_t index);

/* Check that no two of the n (data, bytes) ranges overlap. `order` is
 * scratch of n entries. Names both indices on failure. */
gclip_status gclip_check_overlap(const gclip_tensor_desc *tensors, size_t n, size_t *order);

/* Translate and check user options into kernel parameters. */
gclip_status gclip_make_params(const gclip_norm_options *options, int32_t op,
                               gclip_norm_params *out);

/* ---- CPU path (host/cpu_backend.c) ---- */
gclip_status gclip_cpu_init(gclip_plan *plan);
void gclip_cpu_release(gclip_plan *plan);
gclip_status gclip_cpu_norm_op(gclip_plan *plan, const gclip_norm_params *np);
gclip_status gclip_cpu_value_op(gclip_plan *plan, float clip_value);

/* ---- CUDA backend (host/cuda_backend.c, or host/cuda_stub.c without CUDA).
 * All return GCLIP_STATUS_NOT_SUPPORTED in builds without CUDA. ---- */
int gclip_cuda_count_devices(void);
gclip_status gclip_cuda_init(gclip_plan *plan);     /* workspace, upload tables */
void gclip_cuda_release(gclip_plan *plan);          /* waits, frees */
gclip_status gclip_cuda_upload_tensors(gclip_plan *plan, gclip_stream stream); /* rebind */
gclip_status gclip_cuda_norm_op(gclip_plan *plan, const gclip_norm_params *np,
                                gclip_stream stream);
gclip_status gclip_cuda_value_op(gclip_plan *plan, float clip_value, gclip_stream stream);
/* Wait for the plan's last operation and copy its result slot to the host. */
gclip_status gclip_cuda_fetch_result(gclip_plan *plan, gclip_result_slot *out);
const gclip_device_result *gclip_cuda_device_result(const gclip_plan *plan);

#ifdef __cplusplus
}
#endif

#endif /* GCLIP_INTERNAL_H */
