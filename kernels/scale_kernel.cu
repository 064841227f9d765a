/*
 * scale_kernel.cu - the apply phase of a step: multiply every element in
 * place by a factor that lives in device memory. CPU twin: host/scale_cpu.c.
 *
 * Where the factor comes from depends on the op:
 *   GCLIP_OP_CLIP_NORM       result->scale, left by the norm kernel's finalize
 *   GCLIP_OP_APPLY           result->scale, left by gclip_norm_finalize or
 *                            gclip_compute_clip_factor (only while it is
 *                            pending: never applied twice)
 *   GCLIP_OP_CLIP_PER_TENSOR tensor_factor[tensor] of each chunk
 *   GCLIP_OP_CLIP_WITH_NORM  computed by every block from the given norm and
 *                            the scalars; block 0 writes the result slot
 * The factor is read on the device, so the step needs no host round trip and
 * can be captured in a CUDA graph. The grid is capped at plan creation
 * (gclip_launch_grid with scale_grid_cap: a couple of blocks per SM, as many
 * as keep enough 16-byte loads in flight to stream at full bandwidth) and
 * each block walks chunks blockIdx.x, + gridDim.x, ..., 256 at a time, the
 * small ones a warp each (gclip_for_block_chunks); a block whose factor
 * is exactly 1 returns before touching any chunk, so an unclipped step is
 * that many blocks that each read one float and leave: it reads and writes
 * no gradient. f16/bf16 are scaled in float and rounded back to nearest
 * even, f64 is scaled in double.
 *
 * Under GCLIP_OP_APPLY the slot is both read (by every block) and updated
 * (op, flags, sequence), so the update is done by the last block to have
 * read it, found with a ticket that counts modulo the grid as the norm
 * kernel's does.
 *
 * ---- kernels
 */
#include "chunk_walk.cuh"

struct gclip_scale_by {
    float factor;
    __device__ __forceinline__ float operator()(float x) const { return x * factor; }
    __device__ __forceinline__ double operator()(double x) const { return x * (double)factor; }
};

/* The factor of this block's chunks; thread 0 only. Under the per-tensor op
 * each chunk has its own (gclip_chunk_factor) and this is 0, "not 1". */
__device__ __forceinline__ float gclip_block_factor(const gclip_device_tables &t,
                                                    const gclip_norm_params &np)
{
    switch (np.op) {
    case GCLIP_OP_CLIP_PER_TENSOR:
        return 0.0f;
    case GCLIP_OP_CLIP_WITH_NORM: {
        gclip_result_slot slot;
        gclip_given_norm_slot(&np, t.result->sequence, &slot);
        if (blockIdx.x == 0)
            *t.result = slot;
        return slot.scale;
    }
    case GCLIP_OP_APPLY: {
        const gclip_result_slot *r = t.result;
        const float f = gclip_factor_pending(r) ? r->scale : 1.0f;
        /* every block has read the slot before the last one updates it */
        __threadfence();
        if (atomicInc(t.apply_ticket, gridDim.x - 1) == gridDim.x - 1) {
            gclip_result_slot slot = *r;
            gclip_applied_slot(&slot);
            *t.result = slot;
        }
        return f;
    }
    default: /* GCLIP_OP_CLIP_NORM */
        return t.result->scale;
    }
}

/* The factor of chunk c under the per-tensor op (every thread reads it: one
 * broadcast load per warp, no barrier). */
__device__ __forceinline__ float gclip_chunk_factor(const gclip_device_tables &t, uint32_t c)
{
    return t.tensor_factor[t.chunks[c].tensor];
}

static __global__ void __launch_bounds__(GCLIP_BLOCK_THREADS)
    gclip_scale_kernel(gclip_device_tables t, gclip_norm_params params)
{
    __shared__ float block_factor;
    __shared__ gclip_write_window win;
    const gclip_norm_params np = params;
    /* a dependent launch may start before the kernel before it has
     * finished: nothing in global memory is read or written until it has */
    gclip_wait_prior_grids();
    /* the factor first: a block that has nothing to write reads no tensor data */
    if (threadIdx.x == 0)
        block_factor = gclip_block_factor(t, np);
    __syncthreads();
    const float factor = block_factor;
    /* unclipped: every block reads the factor and leaves */
    if (factor == 1.0f || blockIdx.x >= t.num_chunks)
        return;
    const int per_tensor = np.op == GCLIP_OP_CLIP_PER_TENSOR;
    auto visit = [&](uint32_t c, bool by_warp) {
        const gclip_scale_by f = {per_tensor ? gclip_chunk_factor(t, c) : factor};
        if (per_tensor && f.factor == 1.0f)
            return; /* a tensor that is not clipped */
        if (by_warp)
            gclip_walk_chunk_warp<true>(gclip_chunk_at(t, c), f);
        else
            gclip_walk_chunk<true>(gclip_chunk_at(t, c), f);
    };
    gclip_for_block_chunks(t, win, visit);
}

/* ---- launcher */

extern "C" int gclip_launch_scale(const gclip_device_tables *t, const gclip_norm_params *np,
                                  gclip_stream stream)
{
    return GCLIP_LAUNCH_DEPENDENT(gclip_scale_kernel, t->dependent_launch,
                                  gclip_launch_grid(t->num_chunks, t->scale_grid_cap),
                                  GCLIP_BLOCK_THREADS, stream, *t, *np);
}

extern "C" int gclip_scale_blocks_per_sm(int *blocks)
{
    return GCLIP_BLOCKS_PER_SM(blocks, gclip_scale_kernel, GCLIP_BLOCK_THREADS);
}
