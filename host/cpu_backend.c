/*
 * cpu_backend.c - the CPU path: the reference the GPU results are checked
 * against, and a real fallback.
 *
 * Work is split into the plan's chunks (64 Ki elements of one tensor each).
 * Each chunk's norm terms are accumulated in double in a fixed lane order and
 * written to the chunk's own slot; the slots are then folded serially in
 * chunk order. The thread count only decides who computes which chunk, so the
 * results are bitwise identical for any number of threads.
 *
 * One read pass computes the norm; the write pass runs only when the factor
 * differs from 1.
 */
#include <math.h>
#include <omp.h>

#include "gclip_internal.h"

/* Independent accumulators per chunk: enough to hide the add latency and let
 * the compiler vectorize the lanes; fixed, so the summation order is too. */
#define LANES 8
/* Sequential streams each chunk is read as (see accumulate). */
#define STREAMS 4

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* The chunk loops are compiled twice, for AVX2 and for baseline x86-64, and
 * the loader picks one per machine. Contraction into FMA stays off
 * (-ffp-contract=off), so both clones round every operation alike. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CPU_CLONES
#endif

gclip_status gclip_cpu_init(gclip_plan *plan)
{
    plan->partials = gclip_host_alloc((size_t)plan->num_chunks * sizeof(double));
    plan->tensor_factor = gclip_host_alloc(plan->count * sizeof(float));
    if (!plan->partials || !plan->tensor_factor)
        return gclip_fail(GCLIP_STATUS_OUT_OF_MEMORY, "plan: CPU workspace allocation failed");
    plan->result.total_norm = NAN;
    plan->result.clip_coef = 1.0f;
    plan->result.scale = 1.0f;
    plan->result.nonfinite = 0;
    return GCLIP_STATUS_SUCCESS;
}

void gclip_cpu_release(gclip_plan *plan)
{
    gclip_host_free(plan->partials);
    gclip_host_free(plan->tensor_factor);
}

static int thread_count(const gclip_plan *plan)
{
    return plan->num_threads > 0 ? plan->num_threads : omp_get_max_threads();
}

/* ---- read pass ----------------------------------------------------------- */

/* Accumulate n elements from element `begin` of `data`. Inlined with constant
 * dtype and kind, so each combination becomes its own branch-free loop.
 *
 * The elements are read as STREAMS equal parts walked in lockstep, each with
 * its own LANES accumulators: several sequential streams per core keep more
 * memory requests in flight than one. The order of every addition is fixed
 * by n alone. */
ALWAYS_INLINE double accumulate(const void *data, int32_t dtype, int64_t begin, int64_t n,
                                int32_t kind, float p)
{
    double lane[STREAMS][LANES];
    for (int s = 0; s < STREAMS; s++)
        for (int j = 0; j < LANES; j++)
            lane[s][j] = GCLIP_TERM_ZERO;
    const int64_t part = n / (STREAMS * LANES) * LANES; /* elements per stream */
    for (int64_t i = 0; i < part; i += LANES)
        for (int s = 0; s < STREAMS; s++)
            for (int j = 0; j < LANES; j++)
                lane[s][j] = gclip_term_add(lane[s][j],
                                            gclip_load(data, dtype, begin + s * part + i + j), kind, p);
    /* the tail has its own accumulator: indexing the lanes with a run-time
     * value would keep them in memory for the whole main loop */
    double rest = GCLIP_TERM_ZERO;
    for (int64_t i = STREAMS * part; i < n; i++)
        rest = gclip_term_add(rest, gclip_load(data, dtype, begin + i), kind, p);
    /* pairwise fold of each stream's lanes, then the streams in order */
    double acc = GCLIP_TERM_ZERO;
    for (int s = 0; s < STREAMS; s++) {
        for (int width = LANES / 2; width > 0; width /= 2)
            for (int j = 0; j < width; j++)
                lane[s][j] = gclip_term_combine(lane[s][j], lane[s][j + width], kind);
        acc = gclip_term_combine(acc, lane[s][0], kind);
    }
    return gclip_term_combine(acc, rest, kind);
}

/* max|x| of n elements, on the floats' bit patterns: with the sign cleared
 * they order as integers like the values do, with Inf above every finite
 * value and NaN above Inf, so NaN wins without a branch and the loop
 * vectorizes. */
ALWAYS_INLINE double max_abs(const void *data, int32_t dtype, int64_t begin, int64_t n)
{
    uint32_t lane[LANES];
    for (int j = 0; j < LANES; j++)
        lane[j] = 0;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            uint32_t b = gclip_f32_bits(gclip_load(data, dtype, begin + i + j)) & 0x7fffffffu;
            lane[j] = b > lane[j] ? b : lane[j];
        }
    for (; i < n; i++) {
        uint32_t b = gclip_f32_bits(gclip_load(data, dtype, begin + i)) & 0x7fffffffu;
        lane[0] = b > lane[0] ? b : lane[0];
    }
    for (int j = 1; j < LANES; j++)
        lane[0] = lane[j] > lane[0] ? lane[j] : lane[0];
    return (double)gclip_bits_f32(lane[0]);
}

#define ACCUMULATE_KIND(dt)                                                     \
    switch (kind) {                                                             \
    case GCLIP_KIND_L2: return accumulate(data, dt, begin, n, GCLIP_KIND_L2, p);  \
    case GCLIP_KIND_L1: return accumulate(data, dt, begin, n, GCLIP_KIND_L1, p);  \
    case GCLIP_KIND_INF: return max_abs(data, dt, begin, n);                       \
    default: return accumulate(data, dt, begin, n, GCLIP_KIND_P, p);              \
    }

CPU_CLONES static double chunk_terms(const gclip_tensor_desc *t, uint32_t index, int32_t kind, float p)
{
    int64_t begin, n;
    gclip_chunk_range(t->numel, index, &begin, &n);
    const void *data = t->data;
    switch (t->dtype) {
    case GCLIP_F32:
        ACCUMULATE_KIND(GCLIP_F32)
    case GCLIP_F16:
        ACCUMULATE_KIND(GCLIP_F16)
    default:
        ACCUMULATE_KIND(GCLIP_BF16)
    }
}

static void read_pass(gclip_plan *plan, int32_t kind, float p)
{
    const gclip_tensor_desc *tensors = plan->tensors;
    const gclip_chunk *chunks = plan->chunks;
    double *partials = plan->partials;
    int64_t n = plan->num_chunks;
#pragma omp parallel for schedule(static) num_threads(thread_count(plan)) if (n > 1)
    for (int64_t c = 0; c < n; c++)
        partials[c] = chunk_terms(&tensors[chunks[c].tensor], chunks[c].index, kind, p);
}

/* ---- write passes --------------------------------------------------------- */

/* Multiply n elements by f, or clamp them to [-f, f], as STREAMS parts in
 * lockstep like the read pass. Inlined with constant dtype and clamp, so
 * each combination is its own vectorized loop. */
ALWAYS_INLINE void update_elems(void *data, int32_t dtype, int64_t begin, int64_t n, int clamp,
                                float f)
{
    const int64_t part = n / (STREAMS * LANES) * LANES;
    for (int64_t i = begin; i < begin + part; i += LANES)
        for (int s = 0; s < STREAMS; s++)
            for (int j = 0; j < LANES; j++) {
                const int64_t k = i + s * part + j;
                const float x = gclip_load(data, dtype, k);
                gclip_store(data, dtype, k, clamp ? gclip_clamp(x, f) : x * f);
            }
    for (int64_t k = begin + STREAMS * part; k < begin + n; k++) {
        const float x = gclip_load(data, dtype, k);
        gclip_store(data, dtype, k, clamp ? gclip_clamp(x, f) : x * f);
    }
}

#define UPDATE_DTYPE(clamp)                                                 \
    do {                                                                    \
        if (t->dtype == GCLIP_F32)                                          \
            update_elems(t->data, GCLIP_F32, begin, n, clamp, f);           \
        else if (t->dtype == GCLIP_F16)                                     \
            update_elems(t->data, GCLIP_F16, begin, n, clamp, f);           \
        else                                                                \
            update_elems(t->data, GCLIP_BF16, begin, n, clamp, f);          \
    } while (0)

CPU_CLONES static void update_chunk(const gclip_tensor_desc *t, uint32_t index, int clamp, float f)
{
    int64_t begin, n;
    gclip_chunk_range(t->numel, index, &begin, &n);
    if (clamp)
        UPDATE_DTYPE(1);
    else
        UPDATE_DTYPE(0);
}

/* Multiply every chunk by `global` (per_tensor == 0) or by its tensor's
 * factor; chunks whose factor is exactly 1 are not touched. */
static void write_pass(gclip_plan *plan, int per_tensor, float global)
{
    const gclip_tensor_desc *tensors = plan->tensors;
    const gclip_chunk *chunks = plan->chunks;
    const float *factor = plan->tensor_factor;
    int64_t n = plan->num_chunks;
#pragma omp parallel for schedule(static) num_threads(thread_count(plan)) if (n > 1)
    for (int64_t c = 0; c < n; c++) {
        float f = per_tensor ? factor[chunks[c].tensor] : global;
        if (f != 1.0f)
            update_chunk(&tensors[chunks[c].tensor], chunks[c].index, 0, f);
    }
}

/* ---- operations ------------------------------------------------------------ */

/* Fold the chunk slots in chunk order into per-tensor accumulators and the
 * total; write per-tensor norms and factors. */
static void finalize(gclip_plan *plan, const gclip_norm_params *np)
{
    double total = GCLIP_TERM_ZERO;
    int any_nonfinite = 0;
    for (size_t i = 0; i < plan->count; i++) {
        const gclip_tensor_desc *t = &plan->tensors[i];
        double acc = GCLIP_TERM_ZERO;
        for (uint32_t k = 0; k < t->num_chunks; k++)
            acc = gclip_term_combine(acc, plan->partials[t->first_chunk + k], np->kind);
        total = gclip_term_combine(total, acc, np->kind);
        float norm = gclip_norm_value(acc, np);
        any_nonfinite |= !gclip_is_finite(norm);
        if (np->tensor_norms)
            np->tensor_norms[i] = norm;
        plan->tensor_factor[i] = norm; /* turned into factors below */
    }
    gclip_finalize_total(total, np, any_nonfinite && np->op == GCLIP_OP_PER_TENSOR, &plan->result);
    if (np->op == GCLIP_OP_PER_TENSOR) {
        int skip_all = plan->result.nonfinite && np->policy != GCLIP_NONFINITE_PROPAGATE;
        for (size_t i = 0; i < plan->count; i++)
            plan->tensor_factor[i] = gclip_tensor_factor(plan->tensor_factor[i], np, skip_all);
    }
}

gclip_status gclip_cpu_norm_op(gclip_plan *plan, const gclip_norm_params *np)
{
    read_pass(plan, np->kind, np->p);
    finalize(plan, np);
    if (np->op == GCLIP_OP_GLOBAL && plan->result.scale != 1.0f)
        write_pass(plan, 0, plan->result.scale);
    else if (np->op == GCLIP_OP_PER_TENSOR)
        write_pass(plan, 1, 1.0f);
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_cpu_value_op(gclip_plan *plan, float clip_value)
{
    const gclip_tensor_desc *tensors = plan->tensors;
    const gclip_chunk *chunks = plan->chunks;
    int64_t n = plan->num_chunks;
    if (clip_value != INFINITY) {
#pragma omp parallel for schedule(static) num_threads(thread_count(plan)) if (n > 1)
        for (int64_t c = 0; c < n; c++)
            update_chunk(&tensors[chunks[c].tensor], chunks[c].index, 1, clip_value);
    }
    plan->result.total_norm = NAN;
    plan->result.clip_coef = 1.0f;
    plan->result.scale = 1.0f;
    plan->result.nonfinite = 0;
    return GCLIP_STATUS_SUCCESS;
}
