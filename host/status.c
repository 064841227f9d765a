/*
 * status.c - status strings, the per-thread detail message, the version.
 */
#include <stdarg.h>
#include <stdio.h>

#include "gclip_internal.h"

/* Detail of the calling thread's last failure. A fixed buffer: reporting an
 * error must never itself allocate or fail. */
static _Thread_local char last_error[512];

int gclip_get_version(void)
{
    return GCLIP_VERSION;
}

const char *gclip_status_string(gclip_status status)
{
    switch (status) {
    case GCLIP_STATUS_SUCCESS:
        return "success";
    case GCLIP_STATUS_INVALID_ARGUMENT:
        return "invalid argument: a pointer, size, dtype or option is out of range; see gclip_last_error()";
    case GCLIP_STATUS_MISALIGNED:
        return "misaligned data: a tensor's data pointer is not a multiple of its element size";
    case GCLIP_STATUS_OVERLAP:
        return "overlapping tensors: two tensors share memory (tied weights passed twice?); pass each buffer once";
    case GCLIP_STATUS_NOT_SUPPORTED:
        return "not supported by this build (e.g. a CUDA device without the CUDA backend)";
    case GCLIP_STATUS_NO_DEVICE:
        return "no such CUDA device, or no CUDA driver; check the ordinal and gclip_cuda_device_count()";
    case GCLIP_STATUS_OUT_OF_MEMORY:
        return "out of memory while allocating the plan's tables or workspace";
    case GCLIP_STATUS_CUDA_ERROR:
        return "a CUDA runtime call failed; gclip_last_error() names it";
    case GCLIP_STATUS_NONFINITE:
        return "the total norm is NaN or Inf; no gradient was changed, skip this optimizer step";
    case GCLIP_STATUS_INTERNAL_ERROR:
        return "internal error in gclip; please report it with gclip_last_error()";
    case GCLIP_STATUS_MISMATCH:
        return "partials made with other options: every rank must use the same norm_type and "
               "non-finite policy; nothing was written";
    case GCLIP_STATUS_VERSION_MISMATCH:
        return "options struct of an unknown size or version: initialize it with its "
               "GCLIP_..._INIT macro and rebuild against this library's gclip.h";
    }
    return "unknown gclip_status value";
}

const char *gclip_op_name(int32_t op)
{
    switch (op) {
    case GCLIP_OP_NONE:
        return "no operation";
    case GCLIP_OP_TOTAL_NORM:
        return "gclip_total_norm";
    case GCLIP_OP_CLIP_NORM:
        return "gclip_clip_grad_norm";
    case GCLIP_OP_CLIP_PER_TENSOR:
        return "gclip_clip_grad_norm_per_tensor";
    case GCLIP_OP_CLIP_VALUE:
        return "gclip_clip_grad_value";
    case GCLIP_OP_CLIP_FACTOR:
        return "gclip_compute_clip_factor";
    case GCLIP_OP_CLIP_WITH_NORM:
        return "gclip_clip_grads_with_norm";
    case GCLIP_OP_ACCUMULATE:
        return "gclip_norm_accumulate";
    case GCLIP_OP_FINALIZE:
        return "gclip_norm_finalize";
    case GCLIP_OP_APPLY:
        return "gclip_apply_clip_factor";
    case GCLIP_OP_ADAPTIVE_CLIP:
        return "gclip_adaptive_step (clipping)";
    case GCLIP_OP_ADAPTIVE_SKIP:
        return "gclip_adaptive_step (spike skip)";
    case GCLIP_OP_AGC:
        return "gclip_agc_step";
    }
    return "unknown operation";
}

const char *gclip_last_error(void)
{
    return last_error;
}

void gclip_clear_error(void)
{
    last_error[0] = '\0';
}

gclip_status gclip_fail(gclip_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}
