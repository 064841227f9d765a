/*
 * finalize_cpu.c - the CPU twins of the finalize: of kernels/finalize_kernel.cu
 * (fold the given partials, or the plan's own, in the fixed order of
 * gclip_norm_math.h into the result slot), and of the fold the norm
 * kernel's last block runs (kernels/norm_finalize.cuh), used by
 * host/norm_cpu.c.
 */
#include <string.h>

#include "gclip_fold.h"
#include "gclip_internal.h"

/* Below this many chunks the fold takes microseconds, less than waking a
 * team of threads costs, and runs on the calling thread. */
#define GCLIP_FOLD_PARALLEL_CHUNKS 8192

void gclip_finalize_cpu(gclip_plan *plan, const gclip_norm_params *np)
{
    gclip_cpu_state *st = plan->engine;
    gclip_finalize_partials(np->partials, np->num_partials, &st->partial, np,
                            st->result.sequence, &st->result);
}

/* ---- the fold of the chunk partials (gclip_fold.h) ---- */

/* What the kernel's lanes keep: each lane's leading piece (later its share),
 * the tensor its range continues, whether the range lies inside it, and the
 * run it leaves open. */
typedef struct fold_state {
    const gclip_norm_params *np;
    const gclip_scalars *sc;
    float *tensor_factor;
    double lane[GCLIP_FOLD_LANES];
    uint32_t cont[GCLIP_FOLD_LANES];
    unsigned char whole[GCLIP_FOLD_LANES];
    uint32_t run[GCLIP_FOLD_LANES];
    double run_acc[GCLIP_FOLD_LANES];
    double share[GCLIP_FOLD_LANES];
    uint32_t nonfinite[GCLIP_FOLD_LANES];
    int per_tensor;         /* per-tensor norms or factors are written */
    double first_nonfinite; /* first_nonfinite_acc of the step's kind and scale, where
                               nothing is written per tensor */
} fold_state;

/* The smallest accumulator whose norm (gclip_norm_value) is not finite, for
 * the kinds whose root is correctly rounded or absent (L2: sqrt; L1 and inf:
 * none). Their norm is then monotone in the accumulator (the root, the
 * multiply by inv_scale and the rounding to float each are), so a norm is
 * finite exactly when its accumulator is below this one (a NaN accumulator
 * is below none). Found by halving the range of bit patterns of the
 * non-negative doubles, whose order is theirs: 63 norms, once a step. The
 * norm of +Inf is never finite, whatever inv_scale is. */
static double first_nonfinite_acc(int32_t kind, float p, float inv_scale)
{
    uint64_t lo = 0, hi = 0x7ff0000000000000ull; /* 0 and +Inf */
    double a;
    if (!gclip_is_finite(gclip_norm_value(0.0, kind, p, inv_scale)))
        return 0.0;
    while (hi - lo > 1) {
        const uint64_t mid = lo + (hi - lo) / 2;
        memcpy(&a, &mid, sizeof a);
        if (gclip_is_finite(gclip_norm_value(a, kind, p, inv_scale)))
            lo = mid;
        else
            hi = mid;
    }
    memcpy(&a, &hi, sizeof a);
    return a;
}

/* gclip_finish_tensor of norm_finalize.cuh, for lane `i`, with the norm
 * kind and whether anything is written per tensor (norms, factors) as
 * parameters: constants where lane_runs inlines it. Inlined: as a call it
 * cost more instructions (saved registers, reloaded parameters) than its
 * own work, once per tensor. */
ALWAYS_INLINE void finish_tensor_as(fold_state *f, uint32_t i, uint32_t tensor, double acc,
                                  int32_t kind, int per_tensor)
{
    const gclip_norm_params *np = f->np;
    f->share[i] = gclip_term_combine(f->share[i], acc, kind);
    if (!per_tensor && kind != GCLIP_KIND_P) {
        /* nothing is written per tensor: whether its norm is finite is
         * whether its accumulator lies below the first one whose norm is not
         * (a compare for a square root, a multiply and a rounding) */
        f->nonfinite[i] += !(acc < f->first_nonfinite);
        return;
    }
    const float n = gclip_norm_value(acc, kind, np->p, f->sc->inv_scale);
    if (per_tensor) {
        if (np->tensor_norms)
            np->tensor_norms[tensor] = n;
        if (np->op == GCLIP_OP_CLIP_PER_TENSOR)
            f->tensor_factor[tensor] =
                gclip_tensor_factor(n, np, f->sc, f->sc->status != GCLIP_STATUS_SUCCESS);
    }
    f->nonfinite[i] += !gclip_is_finite(n);
}

ALWAYS_INLINE void finish_tensor(fold_state *f, uint32_t i, uint32_t tensor, double acc)
{
    finish_tensor_as(f, i, tensor, acc, f->np->kind, 1);
}

static void finish_empty(fold_state *f, uint32_t i, uint32_t from, uint32_t to)
{
    for (uint32_t k = from; k < to; k++)
        finish_tensor(f, i, k, GCLIP_TERM_ZERO);
}

/* Lane i up to its barrier: the runs of its range (inlined with constant
 * kind and per_tensor). */
ALWAYS_INLINE void lane_runs_as(fold_state *f, uint32_t i, const gclip_chunk *chunks,
                              uint32_t num_chunks, const double *partials, int32_t kind,
                              int per_tensor)
{
    const uint32_t begin = gclip_fold_lane_begin(num_chunks, i);
    const uint32_t end = gclip_fold_lane_begin(num_chunks, i + 1);
    const uint32_t before = begin < end && begin > 0 ? chunks[begin - 1].tensor : GCLIP_NO_TENSOR;
    uint32_t run = before;
    double acc = GCLIP_TERM_ZERO;
    int leading = 1, continues = 0;
    for (uint32_t c = begin; c < end; c++) {
        if (chunks[c].tensor != run) {
            if (leading)
                f->lane[i] = acc;
            else
                finish_tensor_as(f, i, run, acc, kind, per_tensor);
            leading = 0;
            /* tensors without chunks in between (run + 1 wraps to 0 from
             * GCLIP_NO_TENSOR); tested here, as there rarely are any */
            if (run + 1u < chunks[c].tensor)
                finish_empty(f, i, run + 1u, chunks[c].tensor);
            run = chunks[c].tensor;
            acc = GCLIP_TERM_ZERO;
        } else if (c == begin) {
            continues = 1;
        }
        acc = gclip_term_combine(acc, partials[c], kind);
    }
    if (leading)
        f->lane[i] = acc;
    f->cont[i] = continues ? before : GCLIP_NO_TENSOR;
    f->whole[i] = (unsigned char)(begin < end && leading);
    f->run[i] = run;
    f->run_acc[i] = acc;
}

#define LANE_RUNS_KIND(k)                                                        \
    do {                                                                         \
        if (per_tensor)                                                          \
            lane_runs_as(f, i, chunks, num_chunks, partials, k, 1);              \
        else                                                                     \
            lane_runs_as(f, i, chunks, num_chunks, partials, k, 0);              \
    } while (0)

static void lane_runs(fold_state *f, uint32_t i, const gclip_chunk *chunks, uint32_t num_chunks,
                      const double *partials)
{
    const gclip_norm_params *np = f->np;
    const int per_tensor = f->per_tensor;
    switch (np->kind) {
    case GCLIP_KIND_L2: LANE_RUNS_KIND(GCLIP_KIND_L2); break;
    case GCLIP_KIND_L1: LANE_RUNS_KIND(GCLIP_KIND_L1); break;
    case GCLIP_KIND_INF: LANE_RUNS_KIND(GCLIP_KIND_INF); break;
    default: LANE_RUNS_KIND(np->kind); break;
    }
}
#undef LANE_RUNS_KIND

/* Lane i after its barrier: the open run, then the tensors without chunks
 * that are its to complete. */
static void lane_close(fold_state *f, uint32_t i, uint32_t num_chunks, uint32_t num_tensors)
{
    const int32_t kind = f->np->kind;
    const uint32_t begin = gclip_fold_lane_begin(num_chunks, i);
    const uint32_t end = gclip_fold_lane_begin(num_chunks, i + 1);
    const uint32_t run = f->run[i];
    if (begin < end && !f->whole[i]) {
        double acc = f->run_acc[i];
        for (uint32_t k = i + 1; k < GCLIP_FOLD_LANES; k++) {
            if (gclip_fold_lane_begin(num_chunks, k) == gclip_fold_lane_begin(num_chunks, k + 1))
                continue;
            if (f->cont[k] != run)
                break;
            acc = gclip_term_combine(acc, f->lane[k], kind);
            if (!f->whole[k])
                break;
        }
        finish_tensor(f, i, run, acc);
    }
    if (num_chunks > 0 && end == num_chunks && begin < end)
        finish_empty(f, i, run + 1u, num_tensors);
    if (num_chunks == 0)
        for (uint32_t k = i; k < num_tensors; k += GCLIP_FOLD_LANES)
            finish_tensor(f, i, k, GCLIP_TERM_ZERO);
}

void gclip_fold_partials_cpu(const gclip_chunk *chunks, uint32_t num_chunks, uint32_t num_tensors,
                             const double *partials, const gclip_norm_params *np,
                             const gclip_scalars *sc, float *tensor_factor, double *acc,
                             uint32_t *nonfinite, int threads)
{
    fold_state f;
    f.np = np;
    f.sc = sc;
    f.tensor_factor = tensor_factor;
    f.per_tensor = np->tensor_norms != NULL || np->op == GCLIP_OP_CLIP_PER_TENSOR;
    f.first_nonfinite = f.per_tensor || np->kind == GCLIP_KIND_P
                            ? 0.0
                            : first_nonfinite_acc(np->kind, np->p, sc->inv_scale);
    for (uint32_t i = 0; i < GCLIP_FOLD_LANES; i++) {
        f.lane[i] = GCLIP_TERM_ZERO;
        f.share[i] = GCLIP_TERM_ZERO;
        f.nonfinite[i] = 0;
    }
    /* Each lane writes only its own entries, and the tensors it completes
     * (each tensor is completed by one lane), so the lanes can run on any
     * threads: only the barrier between the two passes matters. */
    if (threads < 2 || num_chunks < GCLIP_FOLD_PARALLEL_CHUNKS)
        threads = 1;
    if (threads > GCLIP_FOLD_LANES)
        threads = GCLIP_FOLD_LANES; /* no thread without a lane */
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        GCLIP_FP_SCOPE(); /* this thread's part in the default environment */
#pragma omp for schedule(static)
        for (int i = 0; i < GCLIP_FOLD_LANES; i++)
            lane_runs(&f, (uint32_t)i, chunks, num_chunks, partials);
#pragma omp for schedule(static)
        for (int i = 0; i < GCLIP_FOLD_LANES; i++)
            lane_close(&f, (uint32_t)i, num_chunks, num_tensors);
    }
    /* the fixed halving tree of the lanes' shares */
    uint32_t bad = 0;
    for (uint32_t i = 0; i < GCLIP_FOLD_LANES; i++)
        bad += f.nonfinite[i];
    for (uint32_t half = GCLIP_FOLD_LANES / 2; half > 0; half /= 2)
        for (uint32_t i = 0; i < half; i++)
            f.share[i] = gclip_term_combine(f.share[i], f.share[i + half], np->kind);
    *acc = f.share[0];
    *nonfinite = bad;
}
