/*
 * clamp_kernel.cu - value clipping: every element clamped in place to
 * [-clip_value, clip_value] in one read-write pass, NaN kept (gclip_clamp).
 * CPU twin: host/clamp_cpu.c.
 *
 * One block per chunk. Block 0 also writes the result slot, since value
 * clipping computes no norm: total_norm NaN, coefficient and scale 1, no
 * non-finite flag. A vector is written back only if clamping changed it
 * (chunk_walk.cuh), so the usual step, where few elements exceed the bound,
 * writes little.
 *
 * ---- kernels
 */
#include "chunk_walk.cuh"

struct gclip_clamp_to {
    float bound;
    __device__ __forceinline__ float operator()(float x) const { return gclip_clamp(x, bound); }
    __device__ __forceinline__ double operator()(double x) const
    {
        return gclip_clamp_f64(x, (double)bound);
    }
};

static __global__ void __launch_bounds__(GCLIP_BLOCK_THREADS)
    gclip_clamp_kernel(gclip_device_tables t, float clip_value)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        gclip_result_slot slot;
        gclip_value_slot(t.result->sequence, &slot);
        *t.result = slot;
    }
    if (blockIdx.x >= t.num_chunks)
        return;
    const gclip_clamp_to f = {clip_value};
    gclip_walk_chunk<true>(gclip_chunk_at(t, blockIdx.x), f);
}

/* ---- launcher */

extern "C" int gclip_launch_clamp(const gclip_device_tables *t, float clip_value,
                                  gclip_stream stream)
{
    return GCLIP_LAUNCH(gclip_clamp_kernel, gclip_kernel_grid(t->num_chunks), GCLIP_BLOCK_THREADS,
                        stream, *t, clip_value);
}
