/*
 * norm_kernel.cu - the accumulate phase of a step (and, fused into its last
 * block, the finalize): the norm of every tensor of the plan in one launch.
 * CPU twin: host/norm_cpu.c.
 *
 * The work is the plan's chunk table (device memory, uploaded once at plan
 * creation, so the launch carries no per-tensor arguments and any number of
 * tensors of any mix of dtypes fits one launch). The grid is capped at plan
 * creation to what the device holds at once (gclip_launch_grid) and each
 * block walks chunks blockIdx.x, blockIdx.x + gridDim.x, ...: every thread
 * accumulates its elements' norm terms in double (gclip_term_add), the block
 * reduces them and thread 0 stores the chunk's partial in partials[chunk].
 * The slot is the chunk's index and a chunk is always walked by one whole
 * block in the same way, so which block took which chunk never shows in a
 * result: the bits are the same for any grid. What a block pays once rather
 * than per chunk: its launch, the fence and the ticket. While it walks one
 * chunk it already has the next chunk's table entry in flight and asks for
 * that chunk's tensor descriptor before its reduction, so the two dependent
 * table loads of a chunk are off the critical path.
 *
 * Why the finalize is a last-block-done step rather than a separate one-block
 * kernel: a clip step is then the norm kernel plus the scale kernel, two
 * launches whatever the tensor count, and a norm-only step is one launch.
 * A separate finalize kernel would add a third launch (a few microseconds of
 * launch latency and a dependent-kernel gap on every step) for no gain in
 * determinism: the finalize's order does not depend on which block arrives
 * last (see norm_finalize.cuh). The price is one atomic per block on a
 * ticket counter.
 *
 * The ticket counts modulo the grid (atomicInc wraps to 0 after grid - 1),
 * so every complete launch leaves it where it found it, with no reset and no
 * memset: the next step and every replay of a captured CUDA graph start from
 * 0. Even two launches of one plan that ran unordered (a misuse the stream
 * rule prevents) add two whole grids and leave it at 0, so one bad step
 * cannot poison every later one.
 *
 * ---- kernels
 */
#include "block_reduce.cuh"
#include "chunk_walk.cuh"
#include "norm_finalize.cuh"

/* Accumulates the norm terms of the elements it is shown. KIND is a template
 * argument so that each norm kind gets its own branch-free inner loop. */
template <int KIND>
struct gclip_term_sum {
    double acc;
    float p;
    __device__ __forceinline__ void operator()(float x)
    {
        acc = gclip_term_add(acc, (double)x, KIND, p);
    }
    __device__ __forceinline__ void operator()(double x) { acc = gclip_term_add(acc, x, KIND, p); }
};

template <int KIND>
__device__ __forceinline__ double gclip_chunk_terms(const gclip_chunk_view &c, float p)
{
    gclip_term_sum<KIND> f = {GCLIP_TERM_ZERO, p};
    gclip_walk_chunk<false>(c, f);
    return f.acc;
}

/* This thread's accumulator over its elements of chunk `c`. */
__device__ __forceinline__ double gclip_thread_terms(const gclip_chunk_view &c,
                                                     const gclip_norm_params &np)
{
    switch (np.kind) {
    case GCLIP_KIND_L2:
        return gclip_chunk_terms<GCLIP_KIND_L2>(c, np.p);
    case GCLIP_KIND_L1:
        return gclip_chunk_terms<GCLIP_KIND_L1>(c, np.p);
    case GCLIP_KIND_INF:
        return gclip_chunk_terms<GCLIP_KIND_INF>(c, np.p);
    default:
        return gclip_chunk_terms<GCLIP_KIND_P>(c, np.p);
    }
}

static __global__ void __launch_bounds__(GCLIP_BLOCK_THREADS)
    gclip_norm_kernel(gclip_device_tables t, gclip_norm_params params)
{
    __shared__ gclip_reduce_storage red;
    __shared__ gclip_finalize_shared fin;
    __shared__ unsigned int is_last;

    /* a local copy: the finalize math takes its address, and a kernel
     * parameter whose address escapes would be copied to the stack */
    const gclip_norm_params np = params;

    /* an empty plan launches one block with no chunk: it only finalizes */
    for (uint32_t c = blockIdx.x; c < t.num_chunks; c += gridDim.x) {
        const uint32_t next = c + gridDim.x;
        const uint32_t next_tensor = next < t.num_chunks ? t.chunks[next].tensor : 0u;
        const double acc = gclip_thread_terms(gclip_chunk_at(t, c), np);
        if (next < t.num_chunks)
            gclip_prefetch_l1(&t.tensors[next_tensor]);
        const double partial = gclip_block_reduce(red, acc, np.kind);
        if (threadIdx.x == 0)
            t.partials[c] = partial;
        __syncthreads(); /* `red` is reused by the next chunk's reduction */
    }

    if (threadIdx.x == 0) {
        /* the block's partials are visible device-wide before the ticket counts it */
        __threadfence();
        is_last = atomicInc(t.ticket, gridDim.x - 1) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last)
        return;
    /* pairs with the other blocks' fences: their partials are visible now */
    __threadfence();
    gclip_finalize(t, np, fin);
}

/* ---- launcher */

extern "C" int gclip_launch_norm(const gclip_device_tables *t, const gclip_norm_params *np,
                                 gclip_stream stream)
{
    return GCLIP_LAUNCH(gclip_norm_kernel, gclip_launch_grid(t->num_chunks, t->norm_grid_cap),
                        GCLIP_BLOCK_THREADS, stream, *t, *np);
}

extern "C" int gclip_norm_blocks_per_sm(int *blocks)
{
    return GCLIP_BLOCKS_PER_SM(blocks, gclip_norm_kernel, GCLIP_BLOCK_THREADS);
}
