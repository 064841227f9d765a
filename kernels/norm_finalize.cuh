/*
 * norm_finalize.cuh - the global-norm finalize, run by the last block of the
 * norm kernel once every chunk's partial is in place.
 *
 * It reduces the per-chunk partials to per-tensor accumulators, writes the
 * per-tensor norms and factors, reduces the tensor accumulators to the
 * plan's partial (the accumulate phase ends here) and, for every op but
 * GCLIP_OP_ACCUMULATE, fills the result slot from it. CPU twin:
 * host/norm_cpu.c.
 *
 * The reduction order is fixed by the chunk table and the block size alone:
 *
 *  1. Thread i owns the contiguous chunk range [C*i/B, C*(i+1)/B) (C chunks,
 *     B threads) and folds each tensor's partials within that range in chunk
 *     order. A tensor whose chunks run past the range is finished by the
 *     thread holding its first chunk: it appends, in thread order, the pieces
 *     the following threads folded ("head" pieces, exchanged in shared
 *     memory). So a tensor accumulator is a left fold over contiguous runs of
 *     its chunks, the runs fixed by C and B.
 *  2. Each thread folds the accumulators of the tensors it finished, in the
 *     order it finished them, into its share of the total; the block
 *     reduction (a fixed tree for a fixed B) combines the shares.
 *
 * Nothing depends on which block arrives last or on the number of SMs, so
 * the results are bitwise identical from run to run and across GPUs. Work per
 * thread is about C/B partials plus the tensors it finishes, so a tensor of
 * thousands of chunks is not folded by one thread alone.
 */
#ifndef GCLIP_NORM_FINALIZE_CUH
#define GCLIP_NORM_FINALIZE_CUH

#include "block_reduce.cuh"

/* Shared memory of the finalize; declared by the kernel at function scope. */
typedef struct gclip_finalize_shared {
    double head[GCLIP_BLOCK_THREADS]; /* thread i's piece of a tensor begun earlier */
    unsigned int nonfinite;           /* tensors whose norm is NaN or Inf */
    unsigned int skip_all;            /* per-tensor op: nothing may be written */
} gclip_finalize_shared;

/* What one thread carries through the finalize. */
typedef struct gclip_finalize_thread {
    double total;       /* this thread's share of the total accumulator */
    unsigned nonfinite; /* tensors it finished whose norm is not finite */
    gclip_scalars sc;   /* max_norm and inv_scale as read at execution */
} gclip_finalize_thread;

/* First chunk of thread i's range (thread B's is C, the end of the table). */
__device__ __forceinline__ uint32_t gclip_range_begin(uint32_t num_chunks, uint32_t i)
{
    return (uint32_t)((uint64_t)num_chunks * i / GCLIP_BLOCK_THREADS);
}

/* Partials were written by other blocks: read them from memory, not from a
 * cache line this SM may hold from before. */
__device__ __forceinline__ double gclip_load_partial(const double *partials, uint32_t c)
{
    return *(const volatile double *)(partials + c);
}

/* A tensor's accumulator is complete: report its norm and add it to the
 * thread's share of the total. For the per-tensor op the norm is parked in
 * tensor_factor and turned into the factor once every tensor is known. */
__device__ __forceinline__ void gclip_finish_tensor(const gclip_device_tables &t,
                                                    const gclip_norm_params &np, uint32_t tensor,
                                                    double acc, gclip_finalize_thread &th)
{
    const float n = gclip_norm_value(acc, np.kind, np.p, th.sc.inv_scale);
    if (np.tensor_norms)
        np.tensor_norms[tensor] = n;
    if (np.op == GCLIP_OP_CLIP_PER_TENSOR)
        t.tensor_factor[tensor] = n;
    th.total = gclip_term_combine(th.total, acc, np.kind);
    th.nonfinite += !gclip_is_finite(n);
}

/* Fold chunks [c, end) while they belong to `tensor`; returns where it stopped. */
__device__ __forceinline__ uint32_t gclip_fold_run(const gclip_device_tables &t, int32_t kind,
                                                   uint32_t c, uint32_t end, uint32_t tensor,
                                                   double *acc)
{
    for (; c < end && t.chunks[c].tensor == tensor; ++c)
        *acc = gclip_term_combine(*acc, gclip_load_partial(t.partials, c), kind);
    return c;
}

/* Step 1: the tensors whose first chunk lies in this thread's range. */
__device__ __forceinline__ void gclip_finalize_tensors(const gclip_device_tables &t,
                                                       const gclip_norm_params &np,
                                                       gclip_finalize_shared &sh,
                                                       gclip_finalize_thread &th)
{
    const uint32_t tid = threadIdx.x;
    const uint32_t end = gclip_range_begin(t.num_chunks, tid + 1);
    uint32_t c = gclip_range_begin(t.num_chunks, tid);

    /* the range may start inside a tensor begun by an earlier thread */
    double head = GCLIP_TERM_ZERO;
    if (c < end && t.chunks[c].index != 0)
        c = gclip_fold_run(t, np.kind, c, end, t.chunks[c].tensor, &head);
    sh.head[tid] = head;

    /* tensors starting here; the last one may continue past the range */
    uint32_t open_tensor = 0;
    double open_acc = GCLIP_TERM_ZERO;
    int open = 0;
    while (c < end) {
        const uint32_t tensor = t.chunks[c].tensor;
        double acc = GCLIP_TERM_ZERO;
        c = gclip_fold_run(t, np.kind, c, end, tensor, &acc);
        if (c == end && end < t.num_chunks && t.chunks[end].tensor == tensor) {
            open = 1;
            open_tensor = tensor;
            open_acc = acc;
        } else {
            gclip_finish_tensor(t, np, tensor, acc, th);
        }
    }
    __syncthreads(); /* every head piece is in shared memory */

    if (open) {
        const gclip_tensor_desc *d = &t.tensors[open_tensor];
        const uint32_t last = d->first_chunk + d->num_chunks - 1;
        /* threads whose range starts inside the tensor hold its next pieces
         * (an empty range holds the neutral element) */
        for (uint32_t k = tid + 1;
             k < GCLIP_BLOCK_THREADS && gclip_range_begin(t.num_chunks, k) <= last; ++k)
            open_acc = gclip_term_combine(open_acc, sh.head[k], np.kind);
        gclip_finish_tensor(t, np, open_tensor, open_acc, th);
    }

    /* tensors of 0 elements have no chunk: norm 0 */
    for (uint32_t i = tid; i < t.num_tensors; i += GCLIP_BLOCK_THREADS)
        if (t.tensors[i].num_chunks == 0)
            gclip_finish_tensor(t, np, i, GCLIP_TERM_ZERO, th);
}

/* The whole finalize, called by every thread of the last block. `red` may
 * be reused: the caller has a barrier after its own last use. */
__device__ __forceinline__ void gclip_finalize(const gclip_device_tables &t,
                                               const gclip_norm_params &np,
                                               gclip_finalize_shared &sh,
                                               gclip_reduce_storage &red)
{
    const uint32_t tid = threadIdx.x;
    gclip_finalize_thread th;
    th.total = GCLIP_TERM_ZERO;
    th.nonfinite = 0;
    th.sc = gclip_resolve_scalars(&np);
    if (tid == 0)
        sh.nonfinite = 0; /* published by the barrier inside gclip_finalize_tensors */

    gclip_finalize_tensors(t, np, sh, th);
    if (th.nonfinite)
        atomicAdd(&sh.nonfinite, th.nonfinite);
    const double total = gclip_block_reduce(red, th.total, np.kind);
    __syncthreads(); /* sh.nonfinite is complete */

    if (tid == 0) {
        gclip_partial part;
        part.acc = total;
        part.nonfinite = sh.nonfinite;
        part.fingerprint = np.fingerprint;
        *t.partial = part;
        const float n = gclip_norm_value(total, np.kind, np.p, th.sc.inv_scale);
        gclip_result_slot slot;
        gclip_finalize_slot(n, part.nonfinite, &np, &th.sc, th.sc.status, t.result->sequence,
                            &slot);
        *t.result = slot;
        sh.skip_all = (slot.nonfinite && np.policy != GCLIP_NONFINITE_PROPAGATE) ||
                      slot.status != GCLIP_STATUS_SUCCESS;
    }
    if (np.op != GCLIP_OP_CLIP_PER_TENSOR)
        return;
    __syncthreads(); /* sh.skip_all and every parked tensor norm are visible */
    for (uint32_t i = tid; i < t.num_tensors; i += GCLIP_BLOCK_THREADS)
        t.tensor_factor[i] =
            gclip_tensor_factor(t.tensor_factor[i], &np, &th.sc, (int)sh.skip_all);
}

#endif /* GCLIP_NORM_FINALIZE_CUH */
