/*
 * gclip_kernels.h - the kernel launchers, callable from C (host/cuda_backend.c)
 * and from the SIMT emulator tests. Defined in the .cu files of kernels/.
 *
 * Every launcher enqueues exactly one kernel on `stream`, checks the launch
 * error and returns it as an int (0 = success, otherwise a cudaError_t
 * value). None allocates, copies or synchronizes.
 */
#ifndef GCLIP_KERNELS_H
#define GCLIP_KERNELS_H

#include "gclip.h"
#include "gclip_portable.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Threads per block of every gclip kernel. */
#define GCLIP_BLOCK_THREADS 256

/* The plan's device-resident tables and workspace. All pointers are device
 * memory. Built once by gclip_cuda_init; its sizes come from
 * gclip_kernel_workspace so that one function decides both the workspace and
 * the launch shape. */
typedef struct gclip_device_tables {
    const gclip_tensor_desc *tensors; /* [num_tensors] */
    const gclip_chunk *chunks;        /* [num_chunks] */
    uint32_t num_tensors;
    uint32_t num_chunks;
    double *partials;          /* [gclip_kernel_grid(num_chunks)] one slot per block */
    float *tensor_factor;      /* [num_tensors] per-tensor scale factors */
    unsigned int *ticket;      /* one counter, 0 between operations */
    gclip_result_slot *result; /* the plan's result slot */
} gclip_device_tables;

/* Blocks of the norm, scale and clamp kernels: one per chunk, at least one
 * (so that an empty plan still writes its result). */
static inline uint32_t gclip_kernel_grid(uint32_t num_chunks)
{
    return num_chunks > 0 ? num_chunks : 1u;
}

/* Kernel 1: per-chunk partials of the norm terms; the last block to finish
 * reduces them in chunk order, writes per-tensor norms (np->tensor_norms),
 * per-tensor factors, the result slot, and resets the ticket. */
int gclip_launch_norm(const gclip_device_tables *t, const gclip_norm_params *np,
                      gclip_stream stream);

/* Kernel 2: multiply in place by result->scale (GCLIP_OP_GLOBAL) or by
 * tensor_factor[tensor] (GCLIP_OP_PER_TENSOR); blocks whose factor is exactly
 * 1 return without writing. */
int gclip_launch_scale(const gclip_device_tables *t, int32_t op, gclip_stream stream);

/* Value clipping in one read-write pass; block 0 also writes the result slot
 * (no norm: total_norm NaN, coef 1, scale 1, nonfinite 0). */
int gclip_launch_clamp(const gclip_device_tables *t, float clip_value, gclip_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* GCLIP_KERNELS_H */
