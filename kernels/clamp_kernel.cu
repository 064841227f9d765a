/*
 * clamp_kernel.cu - value clipping: every element clamped in place to
 * [-clip_value, clip_value] in one read-write pass, NaN kept (gclip_clamp;
 * f64 elements to the double bound, the others to the float nearest it).
 * CPU twin: host/clamp_cpu.c.
 *
 * The scale kernel's capped grid, each block walking chunks blockIdx.x,
 * + gridDim.x, ..., 256 at a time, the small ones a warp each. Block 0
 * also writes the result slot, since value clipping computes no norm:
 * total_norm NaN, coefficient and scale 1, no non-finite flag. A vector is
 * written back only if clamping changed it (chunk_walk.cuh), so the usual
 * step, where few elements exceed the bound, writes little.
 *
 * ---- kernels
 */
#include "chunk_walk.cuh"

/* f64 elements are clamped to the double bound, the others (in float) to
 * the float nearest it. */
struct gclip_clamp_to {
    float bound;
    double bound_f64;
    __device__ __forceinline__ float operator()(float x) const { return gclip_clamp(x, bound); }
    __device__ __forceinline__ double operator()(double x) const
    {
        return gclip_clamp_f64(x, bound_f64);
    }
};

static __global__ void __launch_bounds__(GCLIP_BLOCK_THREADS)
    gclip_clamp_kernel(gclip_device_tables t, float clip_value, double clip_value_f64)
{
    __shared__ gclip_write_window win;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        gclip_result_slot slot;
        gclip_value_slot(t.result->sequence, &slot);
        *t.result = slot;
    }
    const gclip_clamp_to f = {clip_value, clip_value_f64};
    auto visit = [&](uint32_t c, bool by_warp) {
        const gclip_chunk_view v = gclip_chunk_at(t, c);
        /* a bound of +Inf where the chunk compares (a bound past FLT_MAX for
         * f32 and halves) changes nothing: the chunk is left alone, NaN
         * payloads included (a half's NaN would be stored canonical) */
        if (v.dtype == GCLIP_F64 ? f.bound_f64 == INFINITY : f.bound == INFINITY)
            return;
        if (by_warp)
            gclip_walk_chunk_warp<true>(v, f);
        else
            gclip_walk_chunk<true>(v, f);
    };
    gclip_for_block_chunks(t, win, visit);
}

/* ---- launcher */

/* The float bound is rounded here, once: rounded in the kernel, it took
 * sm_90's clamp kernel from 44 registers to 54. */
extern "C" int gclip_launch_clamp(const gclip_device_tables *t, double clip_value,
                                  gclip_stream stream)
{
    return GCLIP_LAUNCH(gclip_clamp_kernel, gclip_launch_grid(t->num_chunks, t->scale_grid_cap),
                        GCLIP_BLOCK_THREADS, stream, *t, (float)clip_value, clip_value);
}

extern "C" int gclip_clamp_blocks_per_sm(int *blocks)
{
    return GCLIP_BLOCKS_PER_SM(blocks, gclip_clamp_kernel, GCLIP_BLOCK_THREADS);
}
