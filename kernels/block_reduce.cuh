/*
 * block_reduce.cuh - the one block-wide reduction of the gclip kernels: a
 * fixed tree over the GCLIP_BLOCK_THREADS values of a block, the same on a
 * GPU, in the SIMT emulator and in the CPU twin (gclip_block_tree_cpu,
 * host/cpu_walk.h), so a chunk's partial has the same bits on every engine.
 *
 * The tree is the halving tree over the 256 values: value t takes t + 128,
 * then t + 64, 32, 16, 8, 4, 2, 1 (the finalize's fold meets in the same
 * shape). It runs in two steps through shared memory: threads 0-31 each
 * take the eight values t, t + 32, ..., t + 224 (the levels 128, 64, 32),
 * then thread 0 takes those 32 (the levels 16 to 1, in registers). Values
 * are combined with gclip_term_combine: a sum for the p-norms, a max that
 * keeps NaN for the Inf-norm.
 *
 * Usage (every thread of the block calls it, with the same `kind`):
 *
 *     __shared__ gclip_reduce_storage red;      // at kernel function scope
 *     double r = gclip_block_reduce(red, v, kind);
 *
 * The result is valid in thread 0 only. The storage is reused by the next
 * call, so a __syncthreads() must separate two calls on the same storage.
 */
#ifndef GCLIP_BLOCK_REDUCE_CUH
#define GCLIP_BLOCK_REDUCE_CUH

#include "gclip_cuda_compat.h"
#include "gclip_kernels.h"

static_assert(GCLIP_BLOCK_THREADS == 256, "the tree is written for 256 threads");

#if defined(GCLIP_SIMT_EMULATION)
#define GCLIP_REDUCE_UNROLL
#else
#define GCLIP_REDUCE_UNROLL _Pragma("unroll")
#endif

struct gclip_reduce_storage {
    double v[GCLIP_BLOCK_THREADS];
};

/* Levels 128, 64 and 32 of the tree for one column: the values of slots
 * t, t + 32, ..., t + 224 (v[k] is slot t + 32k), combined as the halving
 * tree combines them into slot t. */
__device__ __forceinline__ double gclip_tree_column(const double (&v)[8], int32_t kind)
{
    const double a0 = gclip_term_combine(v[0], v[4], kind);
    const double a1 = gclip_term_combine(v[1], v[5], kind);
    const double a2 = gclip_term_combine(v[2], v[6], kind);
    const double a3 = gclip_term_combine(v[3], v[7], kind);
    return gclip_term_combine(gclip_term_combine(a0, a2, kind), gclip_term_combine(a1, a3, kind),
                              kind);
}

/* Levels 16, 8, 4, 2, 1 over the 32 columns s[0..31]; returns the root.
 * Level 16's 32 loads are independent, and the levels after it run in
 * registers: a chain of five combines after one round of shared-memory
 * loads, where combining in place would wait for a load and a store per
 * combine, 31 in a row. Each level combines slot i with slot i + h, as the
 * halving tree does. */
__device__ __forceinline__ double gclip_tree_32(const double *s, int32_t kind)
{
    double a[16];
    GCLIP_REDUCE_UNROLL
    for (int i = 0; i < 16; i++)
        a[i] = gclip_term_combine(s[i], s[i + 16], kind);
    /* one loop per level, with constant bounds: unrolled, a[] is registers */
    GCLIP_REDUCE_UNROLL
    for (int i = 0; i < 8; i++)
        a[i] = gclip_term_combine(a[i], a[i + 8], kind);
    GCLIP_REDUCE_UNROLL
    for (int i = 0; i < 4; i++)
        a[i] = gclip_term_combine(a[i], a[i + 4], kind);
    a[0] = gclip_term_combine(a[0], a[2], kind);
    a[1] = gclip_term_combine(a[1], a[3], kind);
    a[0] = gclip_term_combine(a[0], a[1], kind);
    return a[0];
}

__device__ __forceinline__ double gclip_block_reduce(gclip_reduce_storage &storage, double v,
                                                     int32_t kind)
{
    double *s = storage.v;
    const unsigned t = threadIdx.x;
    s[t] = v;
    __syncthreads();
    if (t < 32) {
        /* thread t alone reads and then writes s[t] */
        const double c[8] = {s[t],       s[t + 32],  s[t + 64],  s[t + 96],
                             s[t + 128], s[t + 160], s[t + 192], s[t + 224]};
        s[t] = gclip_tree_column(c, kind);
    }
    __syncthreads(); /* the 32 values are in s[0..31] */
    if (t == 0)
        v = gclip_tree_32(s, kind);
    return v;
}

#endif /* GCLIP_BLOCK_REDUCE_CUH */
