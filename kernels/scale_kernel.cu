/*
 * scale_kernel.cu - kernel 2 of a clip step: multiply every element in place
 * by the factor the norm kernel left in device memory.
 *
 * GCLIP_OP_GLOBAL reads result->scale (clip coefficient x inv_scale),
 * GCLIP_OP_PER_TENSOR reads tensor_factor[tensor] of the block's chunk. The
 * factor is read on the device, so the step needs no host round trip and can
 * be captured in a CUDA graph. A block whose factor is exactly 1 returns
 * before touching its chunk: an unclipped step reads and writes no gradient.
 * One block per chunk; f16/bf16 are scaled in float and rounded back to
 * nearest even (gclip_portable.h).
 *
 * ---- kernels
 */
#include "chunk_walk.cuh"

struct gclip_scale_by {
    float factor;
    __device__ __forceinline__ float operator()(float x) const { return x * factor; }
};

static __global__ void __launch_bounds__(GCLIP_BLOCK_THREADS)
    gclip_scale_kernel(gclip_device_tables t, int32_t op)
{
    if (blockIdx.x >= t.num_chunks)
        return;
    /* the factor first: a block that has nothing to write reads no tensor data */
    const float factor = op == GCLIP_OP_GLOBAL ? t.result->scale
                                               : t.tensor_factor[t.chunks[blockIdx.x].tensor];
    if (factor == 1.0f)
        return;
    const gclip_scale_by f = {factor};
    gclip_walk_chunk<true>(gclip_chunk_at(t, blockIdx.x), f);
}

/* ---- launcher */

extern "C" int gclip_launch_scale(const gclip_device_tables *t, int32_t op, gclip_stream stream)
{
    GCLIP_LAUNCH(gclip_scale_kernel, gclip_kernel_grid(t->num_chunks), GCLIP_BLOCK_THREADS,
                 stream, *t, op);
    return GCLIP_LAUNCH_STATUS();
}
