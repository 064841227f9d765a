/*
 * block_reduce.cuh - the one block-wide reduction of the gclip kernels: a
 * fixed tree over the GCLIP_BLOCK_THREADS values of a block, the same on a
 * GPU, in the SIMT emulator and in the CPU twin (gclip_block_tree_cpu,
 * host/cpu_walk.h), so a chunk's partial has the same bits on every engine.
 *
 * The tree, in two levels:
 *   1. each warp's 32 values in a halving tree: lane l takes lane l + w for
 *      w = 16, 8, 4, 2, 1 (warp shuffles, no shared memory, no barrier);
 *   2. thread 0 takes the eight warp values in a halving tree: warp i with
 *      i + 4, then i with i + 2, then 0 with 1.
 * Values are combined with gclip_term_combine: a sum for the p-norms, a max
 * that keeps NaN for the Inf-norm.
 *
 * Usage (every thread of the block calls it, with the same `kind`):
 *
 *     __shared__ gclip_reduce_storage red;      // at kernel function scope
 *     double r = gclip_block_reduce(red, v, kind);
 *
 * The result is valid in thread 0 only. The storage is reused by the next
 * call, so a __syncthreads() must separate two calls on the same storage.
 *
 * The emulator (tests/emu/simt_emu.h) provides __shfl_down_sync with CUDA's
 * meaning for a block whose threads all call it together, so this source
 * runs unchanged there.
 */
#ifndef GCLIP_BLOCK_REDUCE_CUH
#define GCLIP_BLOCK_REDUCE_CUH

#include "gclip_cuda_compat.h"
#include "gclip_kernels.h"

#define GCLIP_WARP_THREADS 32
#define GCLIP_BLOCK_WARPS (GCLIP_BLOCK_THREADS / GCLIP_WARP_THREADS)
static_assert(GCLIP_BLOCK_WARPS == 8, "the tree's second level is written for 8 warps");

struct gclip_reduce_storage {
    double warp[GCLIP_BLOCK_WARPS];
};

__device__ __forceinline__ double gclip_block_reduce(gclip_reduce_storage &storage, double v,
                                                     int32_t kind)
{
    for (unsigned w = GCLIP_WARP_THREADS / 2; w >= 1; w /= 2)
        v = gclip_term_combine(v, __shfl_down_sync(0xffffffffu, v, w), kind);
    if (threadIdx.x % GCLIP_WARP_THREADS == 0)
        storage.warp[threadIdx.x / GCLIP_WARP_THREADS] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        const double *s = storage.warp;
        const double a0 = gclip_term_combine(s[0], s[4], kind);
        const double a1 = gclip_term_combine(s[1], s[5], kind);
        const double a2 = gclip_term_combine(s[2], s[6], kind);
        const double a3 = gclip_term_combine(s[3], s[7], kind);
        v = gclip_term_combine(gclip_term_combine(a0, a2, kind), gclip_term_combine(a1, a3, kind),
                               kind);
    }
    return v;
}

#endif /* GCLIP_BLOCK_REDUCE_CUH */
