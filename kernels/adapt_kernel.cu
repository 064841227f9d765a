/*
 * adapt_kernel.cu - the adaptive step between the norm kernel and the scale
 * kernel (gclip_adaptive_step): read the norm the norm kernel left in the
 * result slot (and the per-tensor norms), the adaptive's state, decide this
 * step's coefficient(s), write them as the per-tensor factors the scale
 * kernel applies, update the state and the slot. CPU twin: host/adapt_cpu.c;
 * the arithmetic is gclip_adapt_math.h.
 *
 * One block. Thread 0 takes the global decision (a z-score, a quantile of
 * one history, a window's mean and deviation: a few hundred dependent
 * operations); then each thread takes the tensors i = tid, tid + B, ...,
 * each with its own history or threshold; then thread 0 commits the shared
 * scalars and the slot. The per-tensor work is independent by tensor, so the
 * result does not depend on which thread runs which tensor.
 *
 * Why the scale is done by the scale kernel under per-tensor factors even
 * for a global method: one launch sequence for every method, and a block of
 * the scale kernel whose factor is 1 reads nothing, so the unclipped step
 * costs the same as with a global factor.
 *
 * ---- kernels
 */
#include "gclip_adapt_math.h"
#include "gclip_cuda_compat.h"
#include "gclip_kernels.h"

#define GCLIP_ADAPT_THREADS GCLIP_BLOCK_THREADS

static __global__ void __launch_bounds__(GCLIP_ADAPT_THREADS)
    gclip_adapt_kernel(gclip_device_tables t, gclip_norm_params params)
{
    __shared__ gclip_adapt_input in_sh;
    __shared__ gclip_adapt_decision dec_sh;
    __shared__ unsigned int clipped_sh;

    const gclip_norm_params np = params;
    gclip_adapt_device *a = np.adapt;
    /* the scale kernel after this one may be scheduled now (a dependent
     * launch: it waits for this grid before it reads anything) */
    gclip_release_dependents();
    if (threadIdx.x == 0) {
        const gclip_adapt_input in = gclip_adapt_begin(t.result, &np);
        gclip_adapt_decision d;
        gclip_adapt_decide(a, &in, &d);
        in_sh = in;
        dec_sh = d;
        clipped_sh = 0;
    }
    __syncthreads();

    /* the rows read the input and decision from shared memory: holding them
     * in registers across the loop makes ptxas spill around the division's
     * slow path */
    unsigned int clipped = 0;
    for (uint32_t i = threadIdx.x; i < t.num_tensors; i += GCLIP_ADAPT_THREADS) {
        const float coef = gclip_adapt_row(a, &in_sh, &dec_sh, i);
        clipped += coef < 1.0f;
        t.tensor_factor[i] = gclip_adapt_factor(&in_sh, coef);
    }
    if (clipped)
        atomicAdd(&clipped_sh, clipped);
    /* every row has read the shared scalars before thread 0 updates them */
    __syncthreads();
    if (threadIdx.x == 0) {
        gclip_adapt_commit(a, &in_sh, &dec_sh, clipped_sh, t.result);
    }
}

/* ---- launchers */

extern "C" int gclip_launch_adapt(const gclip_device_tables *t, const gclip_norm_params *np,
                                  gclip_stream stream)
{
    return GCLIP_LAUNCH(gclip_adapt_kernel, 1u, GCLIP_ADAPT_THREADS, stream, *t, *np);
}

/* The scale kernel, by the per-tensor factors the adapt kernel left. */
extern "C" int gclip_launch_adapt_scale(const gclip_device_tables *t, const gclip_norm_params *np,
                                        gclip_stream stream)
{
    gclip_norm_params s = *np;
    s.op = GCLIP_OP_CLIP_PER_TENSOR;
    return gclip_launch_scale(t, &s, stream);
}
