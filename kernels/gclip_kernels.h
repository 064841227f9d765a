/*
 * gclip_kernels.h - the kernel launchers, callable from C (host/cuda_backend.c)
 * and from the SIMT emulator tests. Defined in the .cu files of kernels/.
 *
 * Every launcher enqueues exactly one kernel on `stream` and returns that
 * launch's own status as an int (0 = success, otherwise a cudaError_t value;
 * never an error left over from an earlier call). None allocates, copies or
 * synchronizes.
 */
#ifndef GCLIP_KERNELS_H
#define GCLIP_KERNELS_H

#include "gclip_fold.h"
#include "gclip_norm_math.h"
#include "gclip_tables.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Threads per block of every gclip kernel. */
#define GCLIP_BLOCK_THREADS 256

/* Whether `count` elements of `dtype` from address `base` (a chunk) are
 * small: at most one 16-byte vector per thread of a block, so the kernels
 * walk them a warp each (chunk_walk.cuh). Host code asks it too, to size
 * the write kernels' grid (gclip_scale_blocks_wanted). */
GCLIP_HD int gclip_span_is_small(uintptr_t base, int64_t count, int32_t dtype)
{
    const int es = gclip_dtype_size(dtype);
    return gclip_split_vectors(base, count, es).vectors <= GCLIP_BLOCK_THREADS;
}

/* The same for the norm kernel, whose walk splits a chunk by element index
 * (gclip_split_elements): whether it has at most one vector per thread of
 * a block. */
GCLIP_HD int gclip_norm_span_is_small(int64_t count, int32_t dtype)
{
    const int es = gclip_dtype_size(dtype);
    return gclip_split_elements(count, es).vectors <= GCLIP_BLOCK_THREADS;
}

/* The plan's device-resident tables and workspace. All pointers are device
 * memory. Built once at plan creation: the partials are sized by
 * gclip_partial_slots (one slot per chunk, and a pad), the launch grids by
 * gclip_launch_grid with the caps below. */
typedef struct gclip_device_tables {
    const gclip_tensor_desc *tensors; /* [num_tensors] */
    const gclip_chunk *chunks;        /* [num_chunks] */
    uint32_t num_tensors;
    uint32_t num_chunks;
    double *partials;          /* [gclip_partial_slots(num_chunks)] one slot per chunk */
    float *tensor_factor;      /* [num_tensors] per-tensor scale factors */
    unsigned int *ticket;      /* norm kernel: blocks done, modulo the grid */
    gclip_fold_workspace *fold; /* norm kernel: the lanes' tickets and results */
    unsigned int *apply_ticket; /* scale kernel under GCLIP_OP_APPLY: the same */
    gclip_partial *partial;    /* the plan's own partial (accumulate phase) */
    gclip_result_slot *result; /* the plan's result slot */
    /* Most blocks of a norm launch and of a scale or clamp launch (0 = one
     * per chunk), fixed at plan creation from the device's SM count and the
     * kernels' occupancy. A norm block walks a contiguous range of chunks,
     * a scale or clamp block chunks blockIdx.x, + gridDim.x, ...; no result
     * depends on these. */
    uint32_t norm_grid_cap;
    uint32_t scale_grid_cap;
    /* Nonzero: the scale kernel is a programmatic dependent launch, so its
     * blocks may be scheduled while the norm kernel's last blocks run and
     * wait on the device for it to complete (sm_90 and later, and only with
     * GCLIP_DEPENDENT_LAUNCH=1 at plan creation; docs/gpu-launch.md). */
    uint32_t dependent_launch;
} gclip_device_tables;

/* One block per chunk (or AGC piece), at least one: the AGC kernels' grid. */
static inline uint32_t gclip_kernel_grid(uint32_t num_chunks)
{
    return num_chunks > 0 ? num_chunks : 1u;
}

/* Norm kernel: per-chunk partials of the norm terms, each in its chunk's
 * slot, over a grid of gclip_launch_grid(num_chunks, norm_grid_cap) blocks;
 * the blocks that complete each lane's chunks and the last block to finish
 * fold them (gclip_fold.h) into per-tensor norms
 * (np->tensor_norms), the plan's partial and, for every op but
 * GCLIP_OP_ACCUMULATE, the result slot and per-tensor factors. */
int gclip_launch_norm(const gclip_device_tables *t, const gclip_norm_params *np,
                      gclip_stream stream);

/* Finalize kernel (GCLIP_OP_FINALIZE), one block: folds np->partials (or the
 * plan's partial) in index order into the result slot. */
int gclip_launch_finalize(const gclip_device_tables *t, const gclip_norm_params *np,
                          gclip_stream stream);

/* Scale kernel, gclip_launch_grid(num_chunks, scale_grid_cap) blocks:
 * multiply in place by the slot's factor (GCLIP_OP_CLIP_NORM,
 * GCLIP_OP_APPLY), by tensor_factor[tensor] (GCLIP_OP_CLIP_PER_TENSOR) or by
 * the factor of a given norm (GCLIP_OP_CLIP_WITH_NORM, which also writes the
 * slot). Blocks whose factor is exactly 1 return without writing. */
int gclip_launch_scale(const gclip_device_tables *t, const gclip_norm_params *np,
                       gclip_stream stream);

/* Value clipping in one read-write pass (the scale kernel's grid): f64
 * elements clamped to clip_value, the others to the float nearest it;
 * block 0 also writes the result slot
 * (no norm: total_norm NaN, coef 1, scale 1, nonfinite 0). */
int gclip_launch_clamp(const gclip_device_tables *t, double clip_value, gclip_stream stream);

/* Blocks per SM of the norm, scale and clamp kernels at full occupancy
 * (the CUDA runtime's answer for the current device; a fixed 4 in the
 * emulator). Asked once, at plan creation, to cap the grids: the scale and
 * clamp launches share a cap, so it is the smaller of theirs. Return 0 or
 * a cudaError_t. */
int gclip_norm_blocks_per_sm(int *blocks);
int gclip_scale_blocks_per_sm(int *blocks);
int gclip_clamp_blocks_per_sm(int *blocks);

/* Adapt kernel (GCLIP_OP_ADAPTIVE_*), one block: from the slot the norm
 * kernel left, the per-tensor norms and the adaptive's state (np->adapt),
 * the per-tensor factors (tensor_factor), the updated state and the slot. */
int gclip_launch_adapt(const gclip_device_tables *t, const gclip_norm_params *np,
                       gclip_stream stream);

/* The scale kernel under the per-tensor factors the adapt kernel left. */
int gclip_launch_adapt_scale(const gclip_device_tables *t, const gclip_norm_params *np,
                             gclip_stream stream);

/* AGC (GCLIP_OP_AGC, np->agc, np->num_partials pieces): the unit norms of
 * the parameters and gradients, one block per piece, into np->agc's
 * partials; then each unit scaled by its factor (block 0 writes the slot). */
int gclip_launch_agc_norm(const gclip_device_tables *t, const gclip_norm_params *np,
                          gclip_stream stream);
int gclip_launch_agc_scale(const gclip_device_tables *t, const gclip_norm_params *np,
                           gclip_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* GCLIP_KERNELS_H */
