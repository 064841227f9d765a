/*
 * finalize_kernel.cu - the finalize phase on its own (gclip_norm_finalize):
 * fold partials, the plan's own or an array that a communicator gathered
 * (one per rank), in index order into the norm, coefficient, factor and
 * flags of the result slot. CPU twin: host/finalize_cpu.c.
 *
 * One block, one working thread: the fold is a few dozen dependent adds at
 * most (one partial per rank), and a fixed serial order is what makes the
 * result bitwise identical on every rank whatever the collective did.
 *
 * ---- kernels
 */
#include "gclip_cuda_compat.h"
#include "gclip_kernels.h"

#define GCLIP_FINALIZE_THREADS 32

static __global__ void __launch_bounds__(GCLIP_FINALIZE_THREADS)
    gclip_finalize_kernel(gclip_device_tables t, gclip_norm_params params)
{
    if (threadIdx.x != 0)
        return;
    const gclip_norm_params np = params;
    gclip_result_slot slot;
    gclip_finalize_partials(np.partials, np.num_partials, t.partial, &np, t.result->sequence,
                            &slot);
    *t.result = slot;
}

/* ---- launcher */

extern "C" int gclip_launch_finalize(const gclip_device_tables *t, const gclip_norm_params *np,
                                     gclip_stream stream)
{
    return GCLIP_LAUNCH(gclip_finalize_kernel, 1u, GCLIP_FINALIZE_THREADS, stream, *t, *np);
}
