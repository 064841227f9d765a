/*
 * block_reduce.cuh - the one block-wide reduction the gclip kernels use.
 *
 * Under nvcc it is cub::BlockReduce<double, GCLIP_BLOCK_THREADS>; in the SIMT
 * emulator (GCLIP_SIMT_EMULATION) it is gclip_emu_block_reduce, which folds
 * the threads' values in thread order. Both combine with gclip_term_combine:
 * a sum for the p-norms, a max that keeps NaN for the Inf-norm.
 *
 * Usage (every thread of the block calls it, with the same `kind`):
 *
 *     __shared__ gclip_reduce_storage red;      // at kernel function scope
 *     double r = gclip_block_reduce(red, v, kind);
 *
 * The result is valid in thread 0 only. The storage is reused by the next
 * call, so a __syncthreads() must separate two calls on the same storage.
 *
 * Determinism: CUB's BlockReduce combines the values in a fixed tree that
 * depends only on the block size (no atomics), so for a fixed
 * GCLIP_BLOCK_THREADS the result is bitwise reproducible on every GPU.
 */
#ifndef GCLIP_BLOCK_REDUCE_CUH
#define GCLIP_BLOCK_REDUCE_CUH

#include "gclip_cuda_compat.h"
#include "gclip_kernels.h"

#if !defined(GCLIP_SIMT_EMULATION)
#include <cub/block/block_reduce.cuh>
#endif

/* The combine of the norm accumulators as a functor for the reduction. */
struct gclip_combine_op {
    int32_t kind;
    __device__ __forceinline__ double operator()(const double &a, const double &b) const
    {
        return gclip_term_combine(a, b, kind);
    }
};

#if defined(GCLIP_SIMT_EMULATION)

/* The emulator keeps its own per-block scratch; the kernel still declares the
 * storage so that the kernel source is the same in both modes. */
struct gclip_reduce_storage {
    int unused;
};

__device__ __forceinline__ double gclip_block_reduce(gclip_reduce_storage &storage, double v,
                                                     int32_t kind)
{
    (void)storage;
    return gclip_emu_block_reduce<GCLIP_BLOCK_THREADS>(v, gclip_combine_op{kind});
}

#else

typedef cub::BlockReduce<double, GCLIP_BLOCK_THREADS> gclip_cub_block_reduce;
typedef gclip_cub_block_reduce::TempStorage gclip_reduce_storage;

__device__ __forceinline__ double gclip_block_reduce(gclip_reduce_storage &storage, double v,
                                                     int32_t kind)
{
    return gclip_cub_block_reduce(storage).Reduce(v, gclip_combine_op{kind});
}

#endif

#endif /* GCLIP_BLOCK_REDUCE_CUH */
