/*
 * norm_finalize.cuh - the global-norm finalize, run by the norm kernel in two
 * passes once the chunks' partials are in place.
 *
 * It folds the per-chunk partials into per-tensor accumulators, writes the
 * per-tensor norms and factors, folds the tensor accumulators into the
 * plan's partial (the accumulate phase ends here) and, for every op but
 * GCLIP_OP_ACCUMULATE, fills the result slot from it. CPU twin:
 * host/finalize_cpu.c (gclip_fold_partials_cpu), which runs the same steps
 * lane by lane and gives the same bits from the same partials.
 *
 * The order is the one gclip_fold.h defines, fixed by the number of chunks:
 * the chunks are cut into 256 contiguous lane ranges; each lane folds the
 * runs of its range, and completes the run it leaves open with the leading
 * pieces of the following lanes; the lanes' shares meet in a fixed halving
 * tree. Who does which part:
 *
 *   - the lane pass (gclip_fold_lane_pass): a norm block walks a contiguous
 *     range of chunks and then counts itself in the ticket of every lane
 *     its range meets (1 to 3 on large plans). The block that completes a
 *     lane's count folds the lane with all its threads: it copies a window of the lane's partials
 *     and tensor indices into shared memory (one wait per window: 3,328
 *     chunks on sm_90, 1,536 on sm_86/sm_89), every thread folds the runs
 *     that start at its positions and reports the tensors they complete
 *     (norms, factors), and thread 0 folds the lane's share in order. The
 *     lane's results go to the plan's fold workspace.
 *   - the close (gclip_finalize), by the last block to take the norm
 *     ticket: thread i loads lane i's results, completes its open run with
 *     the following lanes' leading pieces, and the shares meet in the tree.
 *
 * Nothing depends on the grid, on which block completes a lane or arrives
 * last, or on the number of SMs: every addition is the CPU twin's, in its
 * order. The longest chain of dependent global loads is a few rounds
 * (gclip_fold_load_rounds: 6 on an H100 for 100,000 one-chunk tensors),
 * not one per chunk of a lane.
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

/* The batch of this architecture (gclip_fold.h); GCLIP_FOLD_ASYNC: copied
 * with cp.async rather than through registers. The emulator runs the
 * cp.async code (its copies happen when issued, its wait does nothing) with
 * a batch of its own, GCLIP_FOLD_BATCH_EMU, and a window it can shrink at
 * run time (gclip_emu_fold_window), so that small plans cross windows too.
 * The batch never changes the fold's order (gclip_fold.h). */
#if defined(GCLIP_SIMT_EMULATION)
#define GCLIP_FOLD_ASYNC 1
#define GCLIP_FOLD_STAGE GCLIP_FOLD_BATCH_EMU
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GCLIP_FOLD_ASYNC 1
#define GCLIP_FOLD_STAGE GCLIP_FOLD_BATCH
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 860
#define GCLIP_FOLD_ASYNC 1
#define GCLIP_FOLD_STAGE GCLIP_FOLD_BATCH_SM86
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define GCLIP_FOLD_ASYNC 1
#define GCLIP_FOLD_STAGE GCLIP_FOLD_BATCH_SM80
#else /* sm_75, and nvcc's host pass, which compiles no device code */
#define GCLIP_FOLD_ASYNC 0
#define GCLIP_FOLD_STAGE GCLIP_FOLD_BATCH_REG
#endif
#define GCLIP_FOLD_WINDOW_MAX (GCLIP_FOLD_STAGE * GCLIP_FOLD_LANES)
/* Positions of a window whose tensor indices and partials thread 0 loads
 * together when it folds the lane's share (gclip_fold_lane_pass). */
#define GCLIP_SHARE_BATCH 4u
/* 16-byte copies per thread for a window's partials: up to
 * GCLIP_FOLD_WINDOW_MAX / 2 + 1 pairs */
#define GCLIP_FOLD_PAIR_STEPS ((GCLIP_FOLD_WINDOW_MAX / 2 + 1 + GCLIP_FOLD_LANES - 1) / GCLIP_FOLD_LANES)
#if defined(GCLIP_SIMT_EMULATION)
/* the emulator's window, 1 to GCLIP_FOLD_WINDOW_MAX (tests/emu/simt_emu.cpp) */
extern uint32_t gclip_emu_fold_window;
#define GCLIP_FOLD_WINDOW                                                                          \
    (gclip_emu_fold_window >= 1u && gclip_emu_fold_window < GCLIP_FOLD_WINDOW_MAX                 \
         ? gclip_emu_fold_window                                                                   \
         : (uint32_t)GCLIP_FOLD_WINDOW_MAX)
#else
#define GCLIP_FOLD_WINDOW ((uint32_t)GCLIP_FOLD_WINDOW_MAX)
#endif

/* Shared memory of the finalize; declared by the kernel at function scope. */
typedef struct gclip_finalize_shared {
    /* lane pass: a window of the lane's chunks, chunk w + k's partial at
     * [k + gclip_fold_stage_offset(w)], its tensor index at [k]; after the
     * runs are folded, a run's accumulator replaces the partial at its first
     * position */
    alignas(16) double stage_part[GCLIP_FOLD_WINDOW_MAX + 2];
    uint32_t stage_tensor[GCLIP_FOLD_WINDOW_MAX];
    /* lane pass: the run carried from one window to the next (thread 0
     * writes them between barriers) */
    double carried_acc;      /* its accumulator so far */
    double lead;             /* the leading piece, once it has ended */
    double share;            /* the lane's share so far */
    uint32_t carried_tensor; /* its tensor (first the one before the range) */
    uint32_t leading;        /* it is still the leading piece */
    uint32_t continues;      /* the tensor before the range if the range's first chunk
                              * continues it, else GCLIP_NO_TENSOR */
    unsigned int lane_nonfinite; /* tensors the lane completed whose norm is not finite */
    /* the lanes the block completed (norm_kernel.cu), 1 = fold it */
    unsigned char mine[GCLIP_FOLD_LANES];
    unsigned int any_mine; /* some mine[] is 1 */
    uint32_t walk_end;     /* the end of the block's chunks (norm_kernel.cu) */
    unsigned char small[GCLIP_BLOCK_THREADS]; /* the walk: the window's chunk k is small */
    uint32_t lane0, lane1; /* the lanes the block's chunks meet: lane0..lane1 */
    uint32_t next, current; /* the lane pass loop: where to look next, the lane now */
    /* close */
    double lane[GCLIP_FOLD_LANES];        /* lane i's leading piece, later its share */
    uint32_t cont[GCLIP_FOLD_LANES];      /* tensor lane i's range continues, or GCLIP_NO_TENSOR */
    unsigned char whole[GCLIP_FOLD_LANES]; /* lane i's range lies inside that tensor */
    unsigned int nonfinite;               /* tensors whose norm is NaN or Inf */
    unsigned int skip_all;                /* per-tensor op: nothing may be written */
} gclip_finalize_shared;

/* What one thread carries through a pass. */
typedef struct gclip_finalize_thread {
    double total;       /* close: this lane's share of the total accumulator */
    unsigned nonfinite; /* tensors it completed whose norm is not finite */
    gclip_scalars sc;   /* max_norm and inv_scale as read at execution */
    /* per-tensor op: max_norm_ptr gave 0 or +Inf with an eps that
     * gclip_coef_eps moves; the fold then leaves each tensor's norm in its
     * factor's place and the close turns the norms into factors, so that the
     * fold, at the norm kernel's register cap, does not move eps itself */
    int moved;
} gclip_finalize_thread;

/* A thread's start in either pass: nothing folded yet, and the scalars as
 * read at execution (the lane pass and the close read the same). */
__device__ __forceinline__ gclip_finalize_thread gclip_finalize_thread_start(
    const gclip_norm_params &np)
{
    gclip_finalize_thread th;
    th.total = GCLIP_TERM_ZERO;
    th.nonfinite = 0;
    th.sc = gclip_resolve_scalars(&np);
    th.moved = gclip_coef_eps(th.sc.max_norm, np.eps) != np.eps;
    return th;
}

/* Loads of what other blocks wrote in this launch, through L2: the fences
 * around the tickets order them after those blocks' fenced stores. */
template <class T> __device__ __forceinline__ T gclip_load_cg(const T *p)
{
#if defined(GCLIP_SIMT_EMULATION)
    return *(const volatile T *)p;
#else
    return __ldcg(p); /* double, float and unsigned int (uint32_t) */
#endif
}

/* A tensor's accumulator is complete: report its norm and factor. The
 * per-tensor factor assumes the step may write; if the total says otherwise
 * the factors are overwritten with 1 at the end. */
__device__ __forceinline__ void gclip_report_tensor(const gclip_device_tables &t,
                                                    const gclip_norm_params &np, uint32_t tensor,
                                                    double acc, gclip_finalize_thread &th)
{
    const float n = gclip_norm_value(acc, np.kind, np.p, th.sc.inv_scale);
    if (np.tensor_norms)
        np.tensor_norms[tensor] = n;
    if (np.op == GCLIP_OP_CLIP_PER_TENSOR)
        t.tensor_factor[tensor] =
            th.moved ? n
                     : gclip_tensor_factor_eps(n, np.eps, &th.sc,
                                               th.sc.status != GCLIP_STATUS_SUCCESS);
    th.nonfinite += !gclip_is_finite(n);
}

/* Reported, and added to the thread's share (the close). */
__device__ __forceinline__ void gclip_finish_tensor(const gclip_device_tables &t,
                                                    const gclip_norm_params &np, uint32_t tensor,
                                                    double acc, gclip_finalize_thread &th)
{
    gclip_report_tensor(t, np, tensor, acc, th);
    th.total = gclip_term_combine(th.total, acc, np.kind);
}

/* Where position k of a window that starts at chunk w sits in
 * stage_part: k + gclip_fold_stage_offset(w). */
__device__ __forceinline__ uint32_t gclip_fold_stage_offset(uint32_t w)
{
#if GCLIP_FOLD_ASYNC
    return w & 1u; /* pairs start at an even chunk */
#else
    (void)w;
    return 0u;
#endif
}

/* Copies chunks [w, w + n) of the partials and of the chunk table's tensor
 * indices to the window, n <= GCLIP_FOLD_WINDOW, and waits for this
 * thread's copies (the caller's barrier publishes them). A warp's loads are
 * consecutive.
 *
 * The partials are read through L2 only, never through L1: lanes are
 * folded at different times, and the 32-byte sector that holds a lane's
 * last partials also holds the next lane's first ones, possibly not yet
 * written when this lane is read; an L1 copy of that sector could still be
 * there, stale, when the same SM folds the next lane. cp.async reads
 * through L2 only in 16-byte copies, so from sm_80 the partials travel in
 * aligned pairs from the even chunk at or before w (gclip_partial_slots
 * allocates the slot past an odd last chunk); the pair's other half, outside
 * the window, is never read. On sm_75 they are loaded with ld.global.cg into
 * registers, then stored. The tensor indices are the plan's read-only
 * table: cp.async through L1 from sm_80. */
__device__ __forceinline__ void gclip_fold_stage_window(const gclip_device_tables &t,
                                                        gclip_finalize_shared &sh, uint32_t w,
                                                        uint32_t n)
{
#if GCLIP_FOLD_ASYNC
    const uint32_t w0 = w & ~1u;
    const uint32_t pairs = (w + n - w0 + 1u) / 2u;
    GCLIP_FOLD_UNROLL
    for (int j = 0; j < GCLIP_FOLD_PAIR_STEPS; ++j) {
        const uint32_t q = threadIdx.x + (uint32_t)j * GCLIP_FOLD_LANES;
        if (q < pairs)
            gclip_stage_f64x2_l2(&sh.stage_part[2u * q], t.partials + w0 + 2u * q);
    }
    GCLIP_FOLD_UNROLL
    for (int j = 0; j < GCLIP_FOLD_STAGE; ++j) {
        const uint32_t k = threadIdx.x + (uint32_t)j * GCLIP_FOLD_LANES;
        if (k < n)
            gclip_stage_u32(&sh.stage_tensor[k], &t.chunks[w + k].tensor);
    }
    gclip_stage_wait();
#else
    double part[GCLIP_FOLD_STAGE];
    uint32_t tensor[GCLIP_FOLD_STAGE];
    GCLIP_FOLD_UNROLL
    for (int j = 0; j < GCLIP_FOLD_STAGE; ++j) {
        const uint32_t k = threadIdx.x + (uint32_t)j * GCLIP_FOLD_LANES;
        if (k < n) {
            part[j] = gclip_load_cg(t.partials + w + k);
            tensor[j] = t.chunks[w + k].tensor;
        }
    }
    GCLIP_FOLD_UNROLL
    for (int j = 0; j < GCLIP_FOLD_STAGE; ++j) {
        const uint32_t k = threadIdx.x + (uint32_t)j * GCLIP_FOLD_LANES;
        if (k < n) {
            sh.stage_part[k] = part[j];
            sh.stage_tensor[k] = tensor[j];
        }
    }
#endif
}

/* The lane pass: lane `lane`'s (non-empty) range folded by the whole block,
 * once every partial of it is in place; the lane's results go to
 * t.fold->lane[lane]. The steps and their order are lane_runs' in
 * host/finalize_cpu.c:
 *   - a run (the chunks of one tensor in a row) is left-folded from the
 *     neutral element; the range's first run, if it continues the tensor
 *     of the chunk before the range, is the leading piece;
 *   - every run but the leading piece and the last one completes its
 *     tensor; tensors between two runs' have no chunk and are completed
 *     with the neutral element; the share is the left fold of the completed
 *     tensors in order.
 * Each window: every run that starts in it is folded by the thread that
 * owns its first position (the run at position 0 goes on from the carried
 * one if it continues it), which also reports the tensors it completes;
 * then thread 0 walks the window's run starts in order for the share. */
__device__ __forceinline__ void gclip_fold_lane_pass(const gclip_device_tables &t,
                                                     const gclip_norm_params &np,
                                                     gclip_finalize_shared &sh, uint32_t lane)
{
    const uint32_t tid = threadIdx.x;
    const uint32_t num_chunks = t.num_chunks;
    const uint32_t begin = gclip_fold_lane_begin(num_chunks, lane);
    const uint32_t end = gclip_fold_lane_begin(num_chunks, lane + 1);
    const uint32_t before = begin > 0 ? t.chunks[begin - 1].tensor : GCLIP_NO_TENSOR;
    const uint32_t window = GCLIP_FOLD_WINDOW;
    gclip_finalize_thread th = gclip_finalize_thread_start(np);
    if (tid == 0) { /* published by the first window's barrier */
        sh.carried_acc = GCLIP_TERM_ZERO;
        sh.lead = GCLIP_TERM_ZERO;
        sh.share = GCLIP_TERM_ZERO;
        sh.carried_tensor = before;
        sh.leading = 1;
        sh.continues = GCLIP_NO_TENSOR;
        sh.lane_nonfinite = 0;
    }
    for (uint32_t w = begin; w < end; w += window) {
        const uint32_t n = end - w < window ? end - w : window;
        gclip_fold_stage_window(t, sh, w, n);
        double *const part = sh.stage_part + gclip_fold_stage_offset(w);
        __syncthreads(); /* the window and the carried run are in place */
        const uint32_t prev0 = sh.carried_tensor;
        const double carried = sh.carried_acc;
        const bool leading = sh.leading != 0;
        for (uint32_t k = tid; k < n; k += GCLIP_FOLD_LANES) {
            const uint32_t tensor = sh.stage_tensor[k];
            const uint32_t prev = k > 0 ? sh.stage_tensor[k - 1] : prev0;
            if (k > 0 && tensor == prev)
                continue; /* inside a run that starts earlier */
            const bool goes_on = tensor == prev; /* position 0 continues the carried run */
            double acc = goes_on ? carried : GCLIP_TERM_ZERO;
            uint32_t e = k;
            do {
                acc = gclip_term_combine(acc, part[e], np.kind);
                ++e;
            } while (e < n && sh.stage_tensor[e] == tensor);
            part[k] = acc; /* only this thread reads positions k..e-1 */
            /* The tensors this position completes, in order (one call site,
             * which keeps the norm kernel's registers within its cap):
             *   item 0: the run before, if it ends here at position 0 (the
             *           carried one; a leading piece is not the lane's);
             *   items 1..gap: the tensors between the two runs' (no chunk);
             *   item gap + 1: this run, if it ends inside the window. */
            const uint32_t gap = goes_on ? 0u : tensor - (prev + 1u);
            const uint32_t from = (k == 0 && !goes_on && !leading) ? 0u : 1u;
            const uint32_t to = gap + 1u + ((e < n && !(goes_on && leading)) ? 1u : 0u);
            for (uint32_t i = from; i < to; ++i) {
                const uint32_t which = i == 0 ? prev0 : (i <= gap ? prev + i : tensor);
                const double value = i == 0 ? carried : (i <= gap ? GCLIP_TERM_ZERO : acc);
                gclip_report_tensor(t, np, which, value, th);
            }
        }
        if (th.nonfinite) {
            atomicAdd(&sh.lane_nonfinite, th.nonfinite);
            th.nonfinite = 0;
        }
        __syncthreads(); /* every run's accumulator is at its first position */
        if (tid == 0) {
            uint32_t cur = prev0;
            double cur_acc = carried;
            bool lead_on = leading;
            double share = sh.share;
            double lead = sh.lead;
            /* positions in batches of GCLIP_SHARE_BATCH, each batch's tensor
             * indices and partials loaded before any is used: one wait for
             * shared memory a batch rather than one a position; the
             * combines are the same, in the same order */
            for (uint32_t k0 = 0; k0 < n; k0 += GCLIP_SHARE_BATCH) {
                uint32_t tv[GCLIP_SHARE_BATCH];
                double pv[GCLIP_SHARE_BATCH];
                GCLIP_FOLD_UNROLL
                for (uint32_t j = 0; j < GCLIP_SHARE_BATCH; ++j) {
                    tv[j] = k0 + j < n ? sh.stage_tensor[k0 + j] : 0u;
                    pv[j] = k0 + j < n ? part[k0 + j] : GCLIP_TERM_ZERO;
                }
                GCLIP_FOLD_UNROLL
                for (uint32_t j = 0; j < GCLIP_SHARE_BATCH; ++j) {
                    const uint32_t k = k0 + j, tensor = tv[j];
                    if (k >= n || (k > 0 && tensor == cur))
                        continue;
                    if (tensor != cur) {
                        if (lead_on)
                            lead = cur_acc;
                        else
                            share = gclip_term_combine(share, cur_acc, np.kind);
                        lead_on = false;
                        for (uint32_t u = cur + 1u; u < tensor; ++u)
                            share = gclip_term_combine(share, GCLIP_TERM_ZERO, np.kind);
                        cur = tensor;
                    }
                    cur_acc = pv[j];
                }
            }
            if (w == begin) /* prev0 is the tensor before the range */
                sh.continues = sh.stage_tensor[0] == prev0 ? prev0 : GCLIP_NO_TENSOR;
            sh.carried_tensor = cur;
            sh.carried_acc = cur_acc;
            sh.leading = lead_on;
            sh.share = share;
            sh.lead = lead;
        }
        __syncthreads(); /* the window may be refilled */
    }
    if (tid == 0) {
        /* the lane: before sm_90, as the caller's loop keeps it in shared
         * memory (sh.current, which is `lane`: norm_kernel.cu), so that no
         * register holds it across the windows. Which of the two keeps the
         * norm kernel within its 64 registers without a spill differs by
         * architecture (ptxas's allocation; kernels/check_kernels.sh checks
         * every one). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
        gclip_fold_lane *r = &t.fold->lane[sh.current];
#else
        gclip_fold_lane *r = &t.fold->lane[lane];
#endif
        r->lead = sh.leading ? sh.carried_acc : sh.lead;
        r->run_acc = sh.carried_acc;
        r->share = sh.share;
        r->cont = sh.continues;
        r->run = sh.carried_tensor;
        r->nonfinite = sh.lane_nonfinite;
        r->whole = sh.leading;
    }
}

/* The close, by every thread of the last block once every lane is folded:
 * thread i is lane i. */
__device__ __forceinline__ void gclip_fold_close(const gclip_device_tables &t,
                                                 const gclip_norm_params &np,
                                                 gclip_finalize_shared &sh,
                                                 gclip_finalize_thread &th)
{
    const uint32_t tid = threadIdx.x;
    const uint32_t num_chunks = t.num_chunks;
    const uint32_t begin = gclip_fold_lane_begin(num_chunks, tid);
    const uint32_t end = gclip_fold_lane_begin(num_chunks, tid + 1);
    uint32_t run = GCLIP_NO_TENSOR;
    double acc = GCLIP_TERM_ZERO;
    uint32_t whole = 0;
    double lead = GCLIP_TERM_ZERO;
    uint32_t cont = GCLIP_NO_TENSOR;
    if (begin < end) { /* an empty range was never folded: it has nothing */
        const gclip_fold_lane *r = &t.fold->lane[tid];
        lead = gclip_load_cg(&r->lead);
        acc = gclip_load_cg(&r->run_acc);
        th.total = gclip_load_cg(&r->share);
        cont = gclip_load_cg(&r->cont);
        run = gclip_load_cg(&r->run);
        th.nonfinite = gclip_load_cg(&r->nonfinite);
        whole = gclip_load_cg(&r->whole);
    }
    sh.lane[tid] = lead;
    sh.cont[tid] = cont;
    sh.whole[tid] = (unsigned char)(whole != 0);
    __syncthreads(); /* every leading piece is in shared memory */

    if (begin < end && !whole) {
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
        for (uint32_t i = run + 1u; i < t.num_tensors; ++i)
            gclip_finish_tensor(t, np, i, GCLIP_TERM_ZERO, th);
    if (num_chunks == 0)
        for (uint32_t i = tid; i < t.num_tensors; i += GCLIP_FOLD_LANES)
            gclip_finish_tensor(t, np, i, GCLIP_TERM_ZERO, th);
}

/* The close and the result, called by every thread of the last block. */
__device__ __forceinline__ void gclip_finalize(const gclip_device_tables &t,
                                               const gclip_norm_params &np,
                                               gclip_finalize_shared &sh)
{
    const uint32_t tid = threadIdx.x;
    gclip_finalize_thread th = gclip_finalize_thread_start(np);
    if (tid == 0)
        sh.nonfinite = 0; /* published by the barrier inside gclip_fold_close */

    gclip_fold_close(t, np, sh, th);
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
    if (sh.skip_all) {
        for (uint32_t i = tid; i < t.num_tensors; i += GCLIP_FOLD_LANES)
            t.tensor_factor[i] = 1.0f;
    } else if (th.moved) { /* the same in every thread: max_norm and eps are */
        /* each tensor's norm, left by any block's fold: through L2 */
        for (uint32_t i = tid; i < t.num_tensors; i += GCLIP_FOLD_LANES)
            t.tensor_factor[i] =
                gclip_tensor_factor(gclip_load_cg(&t.tensor_factor[i]), &np, &th.sc, 0);
    }
}

#endif /* GCLIP_NORM_FINALIZE_CUH */
