/*
 * finalize_kernel.cu - the finalize phase on its own (gclip_norm_finalize):
 * fold partials, the plan's own or an array that a communicator gathered
 * (one per rank), into the norm, coefficient, factor and flags of the
 * result slot. CPU twin: host/finalize_cpu.c (gclip_finalize_partials).
 *
 * One block of GCLIP_FINALIZE_LEAVES threads folds the array in the fixed
 * shape of gclip_norm_math.h: thread i folds leaf i (a run of at most
 * ceil(count / 1024) partials, taken without a branch, so that the loads
 * of several are issued together), warp 0 folds the 32 groups of 32
 * leaves, and thread 0 folds the groups and writes the slot. The order of every combine depends on the
 * count alone, so the result is bitwise the CPU twin's, and the same on
 * every rank whatever the collective did; the longest chain of dependent
 * combines is ceil(count / 1024) + 64, not count.
 *
 * ---- kernels
 */
#include "gclip_cuda_compat.h"
#include "gclip_kernels.h"

#define GCLIP_FINALIZE_THREADS GCLIP_FINALIZE_LEAVES

static __global__ void __launch_bounds__(GCLIP_FINALIZE_THREADS)
    gclip_finalize_kernel(gclip_device_tables t, gclip_norm_params params)
{
    __shared__ gclip_fold_part leaves[GCLIP_FINALIZE_LEAVES];
    __shared__ gclip_fold_part groups[GCLIP_FINALIZE_FAN];
    const gclip_norm_params np = params;
    const uint32_t tid = threadIdx.x;
    if (np.num_partials == 0) {
        /* the plan's own partial (accumulate, then finalize) */
        if (tid == 0) {
            gclip_result_slot slot;
            gclip_finalize_partials(np.partials, 0, t.partial, &np, t.result->sequence, &slot);
            *t.result = slot;
        }
        return;
    }
    leaves[tid] = gclip_finalize_leaf(np.partials, np.num_partials, tid, np.fingerprint, np.kind);
    __syncthreads(); /* every leaf is in shared memory */
    if (tid < GCLIP_FINALIZE_FAN)
        groups[tid] =
            gclip_fold_parts_in_order(&leaves[tid * GCLIP_FINALIZE_FAN], GCLIP_FINALIZE_FAN, np.kind);
    __syncthreads(); /* every group is in shared memory */
    if (tid == 0) {
        const gclip_fold_part total = gclip_fold_parts_in_order(groups, GCLIP_FINALIZE_FAN, np.kind);
        gclip_result_slot slot;
        gclip_finalize_slot_of_fold(&total, &np, t.result->sequence, &slot);
        *t.result = slot;
    }
}

/* ---- launcher */

extern "C" int gclip_launch_finalize(const gclip_device_tables *t, const gclip_norm_params *np,
                                     gclip_stream stream)
{
    return GCLIP_LAUNCH(gclip_finalize_kernel, 1u, GCLIP_FINALIZE_THREADS, stream, *t, *np);
}
