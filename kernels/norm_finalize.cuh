/*
 * norm_finalize.cuh - the global-norm finalize, run by the last block of the
 * norm kernel once every chunk's partial is in place.
 *
 * It folds the per-chunk partials into per-tensor accumulators, writes the
 * per-tensor norms and factors, folds the tensor accumulators into the
 * plan's partial (the accumulate phase ends here) and, for every op but
 * GCLIP_OP_ACCUMULATE, fills the result slot from it. CPU twin:
 * host/finalize_cpu.c (gclip_fold_partials_cpu), which runs the same steps
 * lane by lane and gives the same bits from the same partials.
 *
 * The order is the one gclip_fold.h defines, fixed by the number of chunks:
 * thread i is lane i; it folds the runs of its contiguous range of chunks,
 * completes the run it leaves open with the leading pieces of the following
 * lanes (exchanged in shared memory), and the lanes' shares meet in a fixed
 * halving tree. Nothing depends on the grid, on which block arrives last or
 * on the number of SMs.
 *
 * No global load waits for another one's value: a lane's range and its
 * batches are arithmetic on the chunk count, and "a new tensor starts here"
 * is read from the batch itself (its chunk's tensor index differs from the
 * previous chunk's), so a lane loads a whole batch (GCLIP_FOLD_STAGE
 * partials and tensor indices) before folding any of it and waits for
 * memory once per batch, never once per chunk. From sm_80 the batch is
 * staged in shared memory with cp.async, so it costs no register however
 * large it is, and its size is set by shared memory (docs/gpu-launch.md);
 * on sm_75 it is held in registers. gclip_fold_load_rounds counts the
 * rounds: 30 on sm_90 for 100,000 one-chunk tensors.
 */
#ifndef GCLIP_NORM_FINALIZE_CUH
#define GCLIP_NORM_FINALIZE_CUH

#include "gclip_cuda_compat.h"
#include "gclip_kernels.h"

#if !defined(GCLIP_SIMT_EMULATION)
#define GCLIP_FOLD_UNROLL _Pragma("unroll")
#else
#define GCLIP_FOLD_UNROLL
#endif

static_assert(GCLIP_FOLD_LANES == GCLIP_BLOCK_THREADS, "one fold lane per thread");

/* The batch of this architecture (gclip_fold.h); GCLIP_FOLD_STAGED: staged
 * in shared memory with cp.async rather than held in registers. The
 * emulator runs the staged code with the sm_86 batch: the smallest staged
 * one, and the emulator copies a block's shared memory on every switch to
 * another block, so its size is the emulator's main cost. The batch never
 * changes the fold's order (gclip_fold.h). */
#if !defined(GCLIP_SIMT_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GCLIP_FOLD_STAGED 1
#define GCLIP_FOLD_STAGE GCLIP_FOLD_BATCH
#elif defined(GCLIP_SIMT_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 860)
#define GCLIP_FOLD_STAGED 1
#define GCLIP_FOLD_STAGE GCLIP_FOLD_BATCH_SM86
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define GCLIP_FOLD_STAGED 1
#define GCLIP_FOLD_STAGE GCLIP_FOLD_BATCH_SM80
#else /* sm_75, and nvcc's host pass, which compiles no device code */
#define GCLIP_FOLD_STAGED 0
#define GCLIP_FOLD_STAGE GCLIP_FOLD_BATCH_REG
#endif

/* Shared memory of the finalize; declared by the kernel at function scope. */
typedef struct gclip_finalize_shared {
#if GCLIP_FOLD_STAGED
    /* the lanes' batches, chunk k of lane i at [k][i] (consecutive lanes,
     * consecutive banks); each lane reads only what it staged itself */
    double stage_part[GCLIP_FOLD_STAGE][GCLIP_FOLD_LANES];
    uint32_t stage_tensor[GCLIP_FOLD_STAGE][GCLIP_FOLD_LANES];
#endif
    double lane[GCLIP_FOLD_LANES];        /* lane i's leading piece, later its share */
    uint32_t cont[GCLIP_FOLD_LANES];      /* tensor lane i's range continues, or GCLIP_NO_TENSOR */
    unsigned char whole[GCLIP_FOLD_LANES]; /* lane i's range lies inside that tensor */
    unsigned int nonfinite;               /* tensors whose norm is NaN or Inf */
    unsigned int skip_all;                /* per-tensor op: nothing may be written */
} gclip_finalize_shared;

/* What one lane carries through the finalize. */
typedef struct gclip_finalize_thread {
    double total;       /* this lane's share of the total accumulator */
    unsigned nonfinite; /* tensors it completed whose norm is not finite */
    gclip_scalars sc;   /* max_norm and inv_scale as read at execution */
} gclip_finalize_thread;

/* Partials were written by other blocks. The kernel's fence after the
 * ticket orders these loads after every block's fenced store (the two
 * fences synchronize through the ticket), so weak loads see them, and they
 * may come through L1: a lane's batch is consecutive doubles, four to a
 * 32-byte sector, fetched once rather than once per load. */
__device__ __forceinline__ double gclip_load_partial(const double *partials, uint32_t c)
{
#if defined(GCLIP_SIMT_EMULATION)
    return *(const volatile double *)(partials + c);
#else
    return __ldca(partials + c);
#endif
}

/* A tensor's accumulator is complete: report its norm and factor and add it
 * to the lane's share. The per-tensor factor assumes the step may write; if
 * the total says otherwise the factors are overwritten with 1 at the end. */
__device__ __forceinline__ void gclip_finish_tensor(const gclip_device_tables &t,
                                                    const gclip_norm_params &np, uint32_t tensor,
                                                    double acc, gclip_finalize_thread &th)
{
    const float n = gclip_norm_value(acc, np.kind, np.p, th.sc.inv_scale);
    if (np.tensor_norms)
        np.tensor_norms[tensor] = n;
    if (np.op == GCLIP_OP_CLIP_PER_TENSOR)
        t.tensor_factor[tensor] =
            gclip_tensor_factor(n, &np, &th.sc, th.sc.status != GCLIP_STATUS_SUCCESS);
    th.total = gclip_term_combine(th.total, acc, np.kind);
    th.nonfinite += !gclip_is_finite(n);
}

/* Tensors [from, to) have no chunk (0 elements): norm 0. */
__device__ __forceinline__ void gclip_finish_empty(const gclip_device_tables &t,
                                                   const gclip_norm_params &np, uint32_t from,
                                                   uint32_t to, gclip_finalize_thread &th)
{
    for (uint32_t i = from; i < to; ++i)
        gclip_finish_tensor(t, np, i, GCLIP_TERM_ZERO, th);
}

/* The run a lane is folding. */
typedef struct gclip_fold_run {
    uint32_t tensor; /* its tensor; first the tensor of the chunk before the range */
    double acc;
    int leading;   /* still the range's leading piece */
    int continues; /* the range's first chunk continues the tensor before it */
} gclip_fold_run;

/* One chunk of the lane's range, in chunk order: `first` for the range's
 * first chunk. */
__device__ __forceinline__ void gclip_fold_chunk(const gclip_device_tables &t,
                                                 const gclip_norm_params &np,
                                                 gclip_finalize_shared &sh,
                                                 gclip_finalize_thread &th, gclip_fold_run &r,
                                                 uint32_t tensor, double part, bool first)
{
    if (tensor != r.tensor) {
        if (r.leading)
            sh.lane[threadIdx.x] = r.acc;
        else
            gclip_finish_tensor(t, np, r.tensor, r.acc, th);
        r.leading = 0;
        /* tensors between the two runs have no chunk */
        gclip_finish_empty(t, np, r.tensor + 1u, tensor, th);
        r.tensor = tensor;
        r.acc = GCLIP_TERM_ZERO;
    } else if (first) {
        r.continues = 1;
    }
    r.acc = gclip_term_combine(r.acc, part, np.kind);
}

/* The lanes' folds. */
__device__ __forceinline__ void gclip_fold_lanes(const gclip_device_tables &t,
                                                 const gclip_norm_params &np,
                                                 gclip_finalize_shared &sh,
                                                 gclip_finalize_thread &th)
{
    const uint32_t tid = threadIdx.x;
    const uint32_t num_chunks = t.num_chunks;
    const uint32_t begin = gclip_fold_lane_begin(num_chunks, tid);
    const uint32_t end = gclip_fold_lane_begin(num_chunks, tid + 1);
    const uint32_t before = begin < end && begin > 0 ? t.chunks[begin - 1].tensor : GCLIP_NO_TENSOR;

    /* the run in progress: first the range's leading piece, which belongs
     * to the tensor of the chunk before the range (empty if a tensor starts
     * at `begin`) */
    gclip_fold_run r;
    r.tensor = before;
    r.acc = GCLIP_TERM_ZERO;
    r.leading = 1;
    r.continues = 0;
    for (uint32_t base = begin; base < end; base += GCLIP_FOLD_STAGE) {
        const uint32_t n = end - base < GCLIP_FOLD_STAGE ? end - base : GCLIP_FOLD_STAGE;
#if GCLIP_FOLD_STAGED
        /* the whole batch in flight at once, then one wait */
        GCLIP_FOLD_UNROLL
        for (int k = 0; k < GCLIP_FOLD_STAGE; ++k)
            if (base + k < end) {
                gclip_stage_f64(&sh.stage_part[k][tid], t.partials + base + k);
                gclip_stage_u32(&sh.stage_tensor[k][tid], &t.chunks[base + k].tensor);
            }
        gclip_stage_wait();
        for (uint32_t k = 0; k < n; ++k)
            gclip_fold_chunk(t, np, sh, th, r, sh.stage_tensor[k][tid], sh.stage_part[k][tid],
                             base + k == begin);
#else
        double part[GCLIP_FOLD_STAGE];
        uint32_t tensor[GCLIP_FOLD_STAGE];
        GCLIP_FOLD_UNROLL
        for (int k = 0; k < GCLIP_FOLD_STAGE; ++k)
            if (base + k < end) {
                part[k] = gclip_load_partial(t.partials, base + k);
                tensor[k] = t.chunks[base + k].tensor;
            }
        /* one copy of the fold step, which takes the batch's head element
         * and shifts the rest down: the batch stays in registers */
        for (uint32_t k = 0; k < n; ++k) {
            gclip_fold_chunk(t, np, sh, th, r, tensor[0], part[0], base + k == begin);
            GCLIP_FOLD_UNROLL
            for (int j = 0; j + 1 < GCLIP_FOLD_STAGE; ++j) {
                part[j] = part[j + 1];
                tensor[j] = tensor[j + 1];
            }
        }
#endif
    }
    const uint32_t run = r.tensor;
    const int leading = r.leading;
    const int continues = r.continues;
    double acc = r.acc;
    if (leading) /* an empty range, or one inside a single tensor */
        sh.lane[tid] = acc;
    sh.cont[tid] = continues ? before : GCLIP_NO_TENSOR;
    sh.whole[tid] = (unsigned char)(begin < end && leading);
    __syncthreads(); /* every leading piece is in shared memory */

    if (begin < end && !leading) {
        /* the last run goes on in the following lanes while they continue it */
        for (uint32_t k = tid + 1; k < GCLIP_FOLD_LANES; ++k) {
            if (gclip_fold_lane_begin(num_chunks, k) == gclip_fold_lane_begin(num_chunks, k + 1))
                continue; /* an empty range */
            if (sh.cont[k] != run)
                break;
            acc = gclip_term_combine(acc, sh.lane[k], np.kind);
            if (!sh.whole[k])
                break;
        }
        gclip_finish_tensor(t, np, run, acc, th);
    }
    /* tensors after the last chunk's have no chunk; with no chunk at all,
     * every tensor is empty and lane i takes tensors i, i + LANES, ... */
    if (num_chunks > 0 && end == num_chunks && begin < end)
        gclip_finish_empty(t, np, run + 1u, t.num_tensors, th);
    if (num_chunks == 0)
        for (uint32_t i = tid; i < t.num_tensors; i += GCLIP_FOLD_LANES)
            gclip_finish_tensor(t, np, i, GCLIP_TERM_ZERO, th);
}

/* The whole finalize, called by every thread of the last block. */
__device__ __forceinline__ void gclip_finalize(const gclip_device_tables &t,
                                               const gclip_norm_params &np,
                                               gclip_finalize_shared &sh)
{
    const uint32_t tid = threadIdx.x;
    gclip_finalize_thread th;
    th.total = GCLIP_TERM_ZERO;
    th.nonfinite = 0;
    th.sc = gclip_resolve_scalars(&np);
    if (tid == 0)
        sh.nonfinite = 0; /* published by the barrier inside gclip_fold_lanes */

    gclip_fold_lanes(t, np, sh, th);
    if (th.nonfinite)
        atomicAdd(&sh.nonfinite, th.nonfinite);
    __syncthreads(); /* the leading pieces are read: sh.lane takes the shares */
    sh.lane[tid] = th.total;
    __syncthreads();
    for (uint32_t half = GCLIP_FOLD_LANES / 2; half > 0; half /= 2) {
        if (tid < half)
            sh.lane[tid] = gclip_term_combine(sh.lane[tid], sh.lane[tid + half], np.kind);
        __syncthreads(); /* the last one also completes sh.nonfinite */
    }

    if (tid == 0) {
        gclip_partial part;
        part.acc = sh.lane[0];
        part.nonfinite = sh.nonfinite;
        part.fingerprint = np.fingerprint;
        *t.partial = part;
        const float n = gclip_norm_value(part.acc, np.kind, np.p, th.sc.inv_scale);
        gclip_result_slot slot;
        gclip_finalize_slot(n, part.nonfinite, &np, &th.sc, th.sc.status, t.result->sequence,
                            &slot);
        *t.result = slot;
        sh.skip_all = (slot.nonfinite && np.policy != GCLIP_NONFINITE_PROPAGATE) ||
                      slot.status != GCLIP_STATUS_SUCCESS;
    }
    if (np.op != GCLIP_OP_CLIP_PER_TENSOR)
        return;
    __syncthreads(); /* sh.skip_all is set */
    if (sh.skip_all)
        for (uint32_t i = tid; i < t.num_tensors; i += GCLIP_FOLD_LANES)
            t.tensor_factor[i] = 1.0f;
}

#endif /* GCLIP_NORM_FINALIZE_CUH */
