/*
 * tensor_clip_cpu.c - gclip_clip_grad_norm_per_tensor under
 * GCLIP_NONFINITE_PROPAGATE, segment by segment, so that each tensor is
 * scaled while the caches still hold what its norm read.
 *
 * Under SKIP and ERROR no tensor may be written before the last one's norm is
 * known (one non-finite norm anywhere leaves every gradient as it was), so the
 * step reads everything, then writes: every clipped byte crosses the memory
 * bus three times. Under PROPAGATE a tensor's factor depends on its own norm
 * alone, so the CPU path cuts the plan into segments of whole tensors of
 * about SEGMENT_BYTES_PER_THREAD per thread (a tensor larger than that is a
 * segment of its own) and runs the read pass, the tensors' factors and the
 * update of one segment before the next. Each thread updates the chunks it
 * read, which its own L2 (or the shared L3, for a large tensor) still holds.
 *
 * The bits are those of the two-pass step: the same partials (the read pass
 * does not depend on who reads a chunk), each tensor's norm folded from them
 * as the fold of gclip_fold.h folds it (gclip_tensor_acc_cpu), the same
 * factor, the same update; the plan's total, the per-tensor norms and the
 * result slot then come from the fold of all the partials, as in
 * gclip_norm_cpu, with no factor left to compute. The emulator tests compare
 * this path with the emulated kernels bit for bit.
 *
 * The segments are cut when the plan is made, for the thread count it has
 * then; a later gclip_plan_set_num_threads changes how each segment is
 * shared out, not the segments (nor any bit).
 */
#include <omp.h>

#include "gclip_fold.h"
#include "gclip_internal.h"

/* What a segment may hold per thread of the plan: half of a 1 MiB L2, so
 * the data read and the lines the update writes back both fit. */
#define SEGMENT_BYTES_PER_THREAD ((int64_t)512 * 1024)

/* Segments of whole tensors for `threads` threads: the first chunk of each
 * into first (when set), and their count. */
static uint32_t cut_segments(const gclip_plan *plan, int threads, uint32_t *first)
{
    const int64_t budget = SEGMENT_BYTES_PER_THREAD * (threads > 0 ? threads : 1);
    uint32_t s = 0;
    int64_t held = 0;
    for (size_t i = 0; i < plan->count; i++) {
        const gclip_tensor_desc *t = &plan->tensors[i];
        if (t->num_chunks == 0)
            continue;
        const int64_t bytes = t->numel * gclip_dtype_size(t->dtype);
        if (s == 0 || held + bytes > budget) {
            if (first)
                first[s] = t->first_chunk;
            s++;
            held = 0;
        }
        held += bytes;
    }
    if (first)
        first[s] = plan->num_chunks;
    return s;
}

gclip_status gclip_cpu_cut_segments(gclip_plan *plan)
{
    gclip_cpu_state *st = plan->engine;
    const int threads = gclip_cpu_threads(plan);
    const uint32_t n = cut_segments(plan, threads, NULL);
    uint32_t *first = gclip_host_alloc(((size_t)n + 1) * sizeof(uint32_t));
    int64_t *weight = gclip_host_alloc(((size_t)plan->num_chunks + 1) * sizeof(int64_t));
    if (!first || !weight) {
        gclip_host_free(first);
        gclip_host_free(weight);
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "plan: CPU workspace allocation failed");
    }
    cut_segments(plan, threads, first);
    weight[0] = 0;
    for (uint32_t c = 0; c < plan->num_chunks; c++)
        weight[c + 1] = weight[c] + gclip_cpu_chunk_weight(plan, c);
    st->segment_first = first;
    st->num_segments = n;
    st->chunk_weight_before = weight;
    return GCLIP_STATUS_SUCCESS;
}

/* First chunk of part k of `parts` equal-weight parts of chunks [c0, c1):
 * the first chunk whose weight before it, counted from c0, reaches k/parts
 * of the whole (a binary search of the running weights). */
static uint32_t part_begin(const int64_t *before, uint32_t c0, uint32_t c1, int k, int parts)
{
    if (k <= 0)
        return c0;
    if (k >= parts)
        return c1;
    const int64_t goal = before[c0] + (before[c1] - before[c0]) * k / parts;
    uint32_t lo = c0, hi = c1;
    while (lo < hi) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (before[mid] < goal)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The accumulator of the tensor whose chunks are [a, b), as the fold of
 * gclip_fold.h forms it: inside each lane's range a left fold from the
 * neutral element, and the pieces of the lanes it spans combined in lane
 * order (finalize_cpu.c, lane_runs_as and lane_close). Bitwise the
 * accumulator that fold gives the tensor (tests/cpu/test_fold.cpp). */
double gclip_tensor_acc_cpu(const double *partials, uint32_t num_chunks, uint32_t a, uint32_t b,
                            int32_t kind)
{
    if (b - a == 1) /* one chunk: one piece (no lane arithmetic) */
        return gclip_term_combine(GCLIP_TERM_ZERO, partials[a], kind);
    double acc = GCLIP_TERM_ZERO;
    int first_piece = 1;
    uint32_t c = a;
    while (c < b) {
        const uint32_t lane = gclip_fold_lane_of(num_chunks, c);
        uint32_t end = gclip_fold_lane_begin(num_chunks, lane + 1);
        if (end > b)
            end = b;
        double piece = GCLIP_TERM_ZERO;
        for (; c < end; c++)
            piece = gclip_term_combine(piece, partials[c], kind);
        acc = first_piece ? piece : gclip_term_combine(acc, piece, kind);
        first_piece = 0;
    }
    return acc;
}

static float tensor_factor_of(const gclip_plan *plan, const double *partials, uint32_t tensor,
                              const gclip_norm_params *np, const gclip_scalars *sc)
{
    const gclip_tensor_desc *t = &plan->tensors[tensor];
    const double acc = gclip_tensor_acc_cpu(partials, plan->num_chunks, t->first_chunk,
                                  t->first_chunk + t->num_chunks, np->kind);
    return gclip_tensor_factor(gclip_norm_value(acc, np->kind, np->p, sc->inv_scale), np, sc, 0);
}

int gclip_tensor_clip_blocked(const gclip_plan *plan, const gclip_norm_params *np)
{
    const gclip_cpu_state *st = plan->engine;
    return np->op == GCLIP_OP_CLIP_PER_TENSOR && np->policy == GCLIP_NONFINITE_PROPAGATE &&
           st->segment_first != NULL && gclip_resolve_scalars(np).status == GCLIP_STATUS_SUCCESS;
}

/* Thread `t` of `threads` in segment s: read its part, wait for the others,
 * then update its part, with the factor of each tensor that starts in the
 * part into tensor_factor and that of a tensor continued from the part
 * before computed again here (each factor is written by one thread). */
static void segment_part(gclip_plan *plan, uint32_t s, int t, int threads,
                         const gclip_read_arg *a, gclip_cpu_run_fn read,
                         const gclip_norm_params *np, const gclip_scalars *sc)
{
    gclip_cpu_state *st = plan->engine;
    const uint32_t s0 = st->segment_first[s], s1 = st->segment_first[s + 1];
    const uint32_t c0 = part_begin(st->chunk_weight_before, s0, s1, t, threads);
    const uint32_t c1 = part_begin(st->chunk_weight_before, s0, s1, t + 1, threads);
    if (c0 < c1)
        read(plan, c0, c1, a);
    /* a barrier of this call's own team; none for one thread, which calls
     * this outside any region of its own: an orphaned barrier there would
     * bind to the caller's parallel region, if the call is made from one,
     * and wait for threads that never reach it */
    if (threads > 1) {
#pragma omp barrier
    }
    if (c0 >= c1)
        return;
    /* the tensor continued from the part before, if any */
    uint32_t c = c0;
    const uint32_t lead = plan->chunks[c0].tensor;
    if (plan->chunks[c0].index != 0) {
        const gclip_tensor_desc *d = &plan->tensors[lead];
        uint32_t end = d->first_chunk + d->num_chunks;
        if (end > c1)
            end = c1;
        const float f = tensor_factor_of(plan, st->partials, lead, np, sc);
        if (f != 1.0f)
            gclip_update_run_cpu(plan, c0, end, 0, f, NULL);
        c = end;
    }
    for (uint32_t k = c; k < c1; k++)
        if (plan->chunks[k].index == 0) {
            const uint32_t tensor = plan->chunks[k].tensor;
            st->tensor_factor[tensor] = tensor_factor_of(plan, st->partials, tensor, np, sc);
        }
    if (c < c1)
        gclip_update_run_cpu(plan, c, c1, 0, 1.0f, st->tensor_factor);
}

void gclip_tensor_clip_cpu(gclip_plan *plan, const gclip_norm_params *np)
{
    gclip_cpu_state *st = plan->engine;
    const gclip_scalars sc = gclip_resolve_scalars(np);
    const gclip_read_arg a = {st->partials, np->kind, np->p};
    const gclip_cpu_run_fn read = gclip_cpu_read_run();
    const int threads = gclip_cpu_team(plan, plan->num_chunks);
    if (threads < 2) {
        for (uint32_t s = 0; s < st->num_segments; s++)
            segment_part(plan, s, 0, 1, &a, read, np, &sc);
    } else {
#pragma omp parallel num_threads(threads)
        {
            GCLIP_FP_SCOPE(); /* this thread's part in the default environment */
            const int t = omp_get_thread_num(), n = omp_get_num_threads();
            for (uint32_t s = 0; s < st->num_segments; s++)
                segment_part(plan, s, t, n, &a, read, np, &sc);
        }
    }
    /* The factors are applied: the fold has the total, the count of
     * non-finite norms and the per-tensor norms asked for to give, and
     * without those, nothing per tensor (the same total and count). */
    gclip_norm_params fold_np = *np;
    if (!np->tensor_norms)
        fold_np.op = GCLIP_OP_TOTAL_NORM;
    gclip_norm_fold_cpu(plan, np, &fold_np, &sc);
}
