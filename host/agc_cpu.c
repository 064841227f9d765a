/*
 * agc_cpu.c - the CPU twin of kernels/agc_kernel.cu: each piece's two sums
 * with the kernel's lanes and pairwise fold (gclip_agc_math.h), then each
 * unit's factor from its pieces in order and the scaling of its elements.
 * The lanes are the kernel's threads, so every sum is added in the same
 * order and the results are the same bits.
 */
#include <math.h>
#include <omp.h>

#include "cpu_walk.h"
#include "gclip_agc_math.h"

/* One array's sum over a piece: lane j takes elements j, j + LANES, ...,
 * then the lanes fold pairwise. Inlined with a constant dtype and kind. */
ALWAYS_INLINE double agc_piece_sum(const void *data, int32_t dtype, int64_t begin, int64_t n,
                                   int32_t kind, float p)
{
    double lane[GCLIP_AGC_LANES];
    for (int j = 0; j < GCLIP_AGC_LANES; j++)
        lane[j] = GCLIP_TERM_ZERO;
    int64_t k = 0;
    for (; k + GCLIP_AGC_LANES <= n; k += GCLIP_AGC_LANES)
        for (int j = 0; j < GCLIP_AGC_LANES; j++)
            lane[j] = gclip_agc_term(lane[j], elem_f64((const char *)data, dtype, begin + k + j), kind, p);
    for (int j = 0; k + j < n; j++)
        lane[j] = gclip_agc_term(lane[j], elem_f64((const char *)data, dtype, begin + k + j), kind, p);
    for (int w = GCLIP_AGC_LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            lane[j] = gclip_term_combine(lane[j], lane[j + w], kind);
    return lane[0];
}

#define AGC_SUM_KIND(dtype, kind)                                                          \
    do {                                                                                   \
        if (kind == GCLIP_KIND_L2)                                                         \
            return agc_piece_sum(data, dtype, begin, n, GCLIP_KIND_L2, p);                 \
        if (kind == GCLIP_KIND_L1)                                                         \
            return agc_piece_sum(data, dtype, begin, n, GCLIP_KIND_L1, p);                 \
        if (kind == GCLIP_KIND_INF)                                                        \
            return agc_piece_sum(data, dtype, begin, n, GCLIP_KIND_INF, p);                \
        return agc_piece_sum(data, dtype, begin, n, GCLIP_KIND_P, p);                      \
    } while (0)

CPU_CLONES static double agc_sum(const void *data, int32_t dtype, int64_t begin, int64_t n,
                                 int32_t kind, float p)
{
    switch (dtype) {
    case GCLIP_F32:
        AGC_SUM_KIND(GCLIP_F32, kind);
    case GCLIP_F16:
        AGC_SUM_KIND(GCLIP_F16, kind);
    case GCLIP_BF16:
        AGC_SUM_KIND(GCLIP_BF16, kind);
    default:
        AGC_SUM_KIND(GCLIP_F64, kind);
    }
}

/* Scale n elements by f (float arithmetic, f64 in double), every NaN
 * result the canonical NaN as in the kernel (gclip_agc_scaled). */
CPU_CLONES static void agc_scale(void *data, int32_t dtype, int64_t begin, int64_t n, double f)
{
    switch (dtype) {
    case GCLIP_F32: {
        float *x = (float *)data + begin;
        const float ff = (float)f;
        for (int64_t i = 0; i < n; i++)
            x[i] = gclip_agc_scaled(x[i], ff);
        break;
    }
    case GCLIP_F64: {
        double *x = (double *)data + begin;
        for (int64_t i = 0; i < n; i++)
            x[i] = gclip_agc_scaled64(x[i], f);
        break;
    }
    default:
        for (int64_t i = begin; i < begin + n; i++)
            gclip_store(data, dtype, i, gclip_agc_scaled(gclip_load(data, dtype, i), (float)f));
        break;
    }
}

/* Piece c's unit: fold its pieces' sums in order, take the factor, scale
 * the piece unless the unit is kept. */
static void agc_apply_piece(const gclip_agc_device *a, const gclip_tensor_desc *tensors,
                            int64_t c)
{
    const gclip_agc_piece *pc = &a->pieces[c];
    const gclip_tensor_desc *d = &tensors[pc->tensor];
    double w = GCLIP_TERM_ZERO, g = GCLIP_TERM_ZERO;
    for (uint32_t k = pc->first; k < pc->first + pc->pieces; k++) {
        w = gclip_term_combine(w, a->partials[2u * k], a->kind);
        g = gclip_term_combine(g, a->partials[2u * k + 1u], a->kind);
    }
    int keep = 0;
    const double f = gclip_agc_factor(a, d->dtype, w, g, &keep);
    if (!keep)
        agc_scale(d->data, d->dtype, pc->begin, pc->count, f);
}

void gclip_agc_cpu(gclip_plan *plan, const gclip_norm_params *np)
{
    gclip_cpu_state *st = plan->engine;
    const gclip_agc_device *a = np->agc;
    const gclip_tensor_desc *tensors = plan->tensors;
    const int64_t n = (int64_t)a->num_pieces;
    const int threads = gclip_cpu_team(plan, n);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        GCLIP_FP_SCOPE(); /* this thread's part in the default environment */
        /* A unit of one piece (every row up to 16384 elements) is scaled
         * right after its sums, while its gradient is still in the cache;
         * the factor is the same as after the barrier. */
#pragma omp for schedule(static)
        for (int64_t c = 0; c < n; c++) {
            const gclip_agc_piece *pc = &a->pieces[c];
            const gclip_tensor_desc *d = &tensors[pc->tensor];
            a->partials[2 * c] = agc_sum(a->params[pc->tensor], d->dtype, pc->begin, pc->count,
                                         a->kind, a->p);
            a->partials[2 * c + 1] =
                agc_sum(d->data, d->dtype, pc->begin, pc->count, a->kind, a->p);
            if (pc->pieces == 1)
                agc_apply_piece(a, tensors, c);
        }
        /* the implicit barrier: every piece's sums are in */
#pragma omp for schedule(static)
        for (int64_t c = 0; c < n; c++)
            if (a->pieces[c].pieces > 1)
                agc_apply_piece(a, tensors, c);
    }
    gclip_agc_slot(st->result.sequence, &st->result);
}
