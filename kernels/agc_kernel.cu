/*
 * agc_kernel.cu - unit-wise adaptive gradient clipping (gclip_agc_step):
 * the norms of every unit of the parameters and of the gradients, then each
 * unit scaled by its factor. CPU twin: host/agc_cpu.c; the order of the sums
 * and the factor are gclip_agc_math.h.
 *
 * Two launches of one kernel, one block per piece (a unit, or a part of a
 * long unit):
 *   norm   thread t sums the terms of elements t, t + B, ... of the piece in
 *          the parameter and in the gradient; a pairwise tree in shared
 *          memory folds the threads; the piece's two sums go to its slot.
 *   scale  thread 0 folds the sums of the piece's unit in piece order and
 *          takes the unit's factor; a kept unit writes nothing, otherwise
 *          every thread scales its elements. Block 0 writes the result slot.
 * The stream orders the two launches; neither allocates or synchronizes.
 *
 * ---- kernels
 */
#include "gclip_agc_math.h"
#include "gclip_cuda_compat.h"
#include "gclip_kernels.h"

#define GCLIP_AGC_THREADS GCLIP_AGC_LANES

/* Thread t's sums of elements t, t + B, ... of a piece of two arrays. */
__device__ __forceinline__ void gclip_agc_lane(const void *w, const void *g, int32_t dtype,
                                               int64_t begin, int64_t count, int32_t kind,
                                               float p, double *ws, double *gs)
{
    double a = GCLIP_TERM_ZERO, b = GCLIP_TERM_ZERO;
    for (int64_t k = threadIdx.x; k < count; k += GCLIP_AGC_THREADS) {
        a = gclip_agc_term(a, gclip_agc_load(w, dtype, begin + k), kind, p);
        b = gclip_agc_term(b, gclip_agc_load(g, dtype, begin + k), kind, p);
    }
    *ws = a;
    *gs = b;
}

/* The sums of this block's piece into its slot. */
__device__ __forceinline__ void gclip_agc_norm_phase(const gclip_device_tables &t,
                                                     const gclip_agc_device *a, double *wsh,
                                                     double *gsh)
{
    const gclip_agc_piece pc = a->pieces[blockIdx.x];
    const gclip_tensor_desc d = t.tensors[pc.tensor];
    const int32_t kind = a->kind;
    double ws, gs;
    gclip_agc_lane(a->params[pc.tensor], d.data, d.dtype, pc.begin, pc.count, kind, a->p, &ws,
                   &gs);
    wsh[threadIdx.x] = ws;
    gsh[threadIdx.x] = gs;
    __syncthreads();
    for (unsigned w = GCLIP_AGC_THREADS / 2; w > 0; w /= 2) {
        if (threadIdx.x < w) {
            wsh[threadIdx.x] = gclip_term_combine(wsh[threadIdx.x], wsh[threadIdx.x + w], kind);
            gsh[threadIdx.x] = gclip_term_combine(gsh[threadIdx.x], gsh[threadIdx.x + w], kind);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        a->partials[2u * blockIdx.x] = wsh[0];
        a->partials[2u * blockIdx.x + 1u] = gsh[0];
    }
}

/* The factor of this block's piece's unit and the piece's scaling; block 0
 * writes the slot. */
__device__ __forceinline__ void gclip_agc_scale_phase(const gclip_device_tables &t,
                                                      const gclip_agc_device *a,
                                                      double &factor_sh, int &keep_sh)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        gclip_result_slot slot;
        gclip_agc_slot(t.result->sequence, &slot);
        *t.result = slot;
    }
    if (blockIdx.x >= a->num_pieces)
        return;
    const gclip_agc_piece pc = a->pieces[blockIdx.x];
    const gclip_tensor_desc d = t.tensors[pc.tensor];
    if (threadIdx.x == 0) {
        double w = GCLIP_TERM_ZERO, g = GCLIP_TERM_ZERO;
        for (uint32_t k = pc.first; k < pc.first + pc.pieces; k++) {
            w = gclip_term_combine(w, a->partials[2u * k], a->kind);
            g = gclip_term_combine(g, a->partials[2u * k + 1u], a->kind);
        }
        int keep = 0;
        factor_sh = gclip_agc_factor(a, d.dtype, w, g, &keep);
        keep_sh = keep;
    }
    __syncthreads();
    if (keep_sh)
        return;
    const double f = factor_sh;
    for (int64_t k = threadIdx.x; k < pc.count; k += GCLIP_AGC_THREADS) {
        const int64_t i = pc.begin + k;
        if (d.dtype == GCLIP_F64) {
            double *x = (double *)d.data + i;
            *x = gclip_agc_scaled64(*x, f);
        } else {
            gclip_store(d.data, d.dtype, i, gclip_agc_scaled(gclip_load(d.data, d.dtype, i), (float)f));
        }
    }
}

/* One entry function for both launches (phase 0: norm, 1: scale), so the
 * file has one kernel per architecture as the resource check expects. */
static __global__ void __launch_bounds__(GCLIP_AGC_THREADS)
    gclip_agc_kernel(gclip_device_tables t, gclip_norm_params params, int phase)
{
    __shared__ double wsh[GCLIP_AGC_THREADS];
    __shared__ double gsh[GCLIP_AGC_THREADS];
    __shared__ double factor_sh;
    __shared__ int keep_sh;
    /* The scale launch is a dependent launch on sm_90 and later: the norm
     * launch lets it be scheduled at once, and it waits for the norm grid
     * before it reads anything (a no-op for the norm launch, which is
     * plain). */
    gclip_wait_prior_grids();
    if (phase == 0) {
        gclip_release_dependents();
        gclip_agc_norm_phase(t, params.agc, wsh, gsh);
    } else {
        gclip_agc_scale_phase(t, params.agc, factor_sh, keep_sh);
    }
}

/* ---- launchers */

extern "C" int gclip_launch_agc_norm(const gclip_device_tables *t, const gclip_norm_params *np,
                                     gclip_stream stream)
{
    if (np->num_partials == 0)
        return 0;
    return GCLIP_LAUNCH(gclip_agc_kernel, np->num_partials, GCLIP_AGC_THREADS, stream, *t, *np,
                        0);
}

extern "C" int gclip_launch_agc_scale(const gclip_device_tables *t, const gclip_norm_params *np,
                                      gclip_stream stream)
{
    return GCLIP_LAUNCH_DEPENDENT(gclip_agc_kernel, t->dependent_launch,
                                  gclip_kernel_grid(np->num_partials), GCLIP_AGC_THREADS, stream,
                                  *t, *np, 1);
}
