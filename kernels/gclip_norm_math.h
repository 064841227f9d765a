/*
 * gclip_norm_math.h - the arithmetic of a step, shared by the kernels and the
 * CPU path: per-element norm terms, their combine and root, the scalars of a
 * step (given as values or read from memory at execution), the coefficient
 * and factor, and the result slot every operation writes.
 */
#ifndef GCLIP_NORM_MATH_H
#define GCLIP_NORM_MATH_H

#include "gclip_dtype.h"

/* How the norm terms are formed and combined. */
typedef enum gclip_norm_kind {
    GCLIP_KIND_L2 = 0,  /* sum of x^2, root sqrt      */
    GCLIP_KIND_L1 = 1,  /* sum of |x|                 */
    GCLIP_KIND_INF = 2, /* max of |x| (NaN wins)      */
    GCLIP_KIND_P = 3    /* sum of |x|^p, root 1/p     */
} gclip_norm_kind;

/* Scalar parameters of one step, passed by value to the kernels. Each of
 * max_norm, inv_scale and given_norm is read from its pointer at execution
 * when the pointer is set (plan-device memory), else taken from the value. */
typedef struct gclip_norm_params {
    int32_t kind;         /* gclip_norm_kind */
    int32_t op;           /* gclip_op */
    int32_t policy;       /* gclip_nonfinite_policy */
    uint32_t fingerprint; /* gclip_fingerprint(p, policy) */
    float p;              /* norm_type */
    float max_norm;
    float eps;
    float inv_scale;
    float given_norm;     /* GCLIP_OP_CLIP_WITH_NORM */
    uint32_t num_partials; /* GCLIP_OP_FINALIZE: 0 = the plan's own partial */
    const float *max_norm_ptr;
    const float *inv_scale_ptr;
    const float *given_norm_ptr;
    const gclip_partial *partials; /* GCLIP_OP_FINALIZE, [num_partials] */
    float *tensor_norms;  /* optional output, plan-device memory */
    struct gclip_adapt_device *adapt; /* GCLIP_OP_ADAPTIVE_*: the adaptive's state */
    const struct gclip_agc_device *agc; /* GCLIP_OP_AGC: the AGC's tables */
} gclip_norm_params;

/* The result slot is gclip_device_result (gclip.h); the kernels use this name. */
typedef gclip_device_result gclip_result_slot;

/* ---- per-element norm terms ----------------------------------------------- */

/* Neutral element of the combine for every kind (0 for sums and for max|x|). */
#define GCLIP_TERM_ZERO 0.0

/* Products and sums that the CUDA compiler may not fuse into an FMA: the
 * engines must round every operation of the float groups alike (the host
 * library and the emulator are built without contraction). */
GCLIP_HD float gclip_fmul(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

GCLIP_HD float gclip_fadd(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

/* The product in double, rounded on its own (the exact terms, the
 * adaptive's and the AGC's arithmetic). */
GCLIP_HD double gclip_muld(double a, double b)
{
#if defined(__CUDA_ARCH__)
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

/* The term of element x in double: x^2, |x| or |x|^p (kind L2, L1, P).
 * x^2 of a float is exact in double (so a fused multiply-add with it rounds
 * as the separate product and sum do); for f64 elements the CUDA compiler
 * fuses acc + x^2 into one FMA, the host does not. |x|^p is 2^(p log2|x|): CUDA's double
 * pow is an out-of-line call whose register save forces stack spills in the
 * norm kernel's loop, while exp2 and log2 inline. |p log2|x|| < 1100
 * wherever the term is a finite nonzero double, so its relative error stays
 * below ~3e-13. 0, Inf and NaN map to 0, Inf and NaN as with pow. */
GCLIP_HD double gclip_term_exact(double x, int32_t kind, float p)
{
    const double a = fabs(x);
    if (kind == GCLIP_KIND_L2)
        return gclip_muld(a, a); /* not fused with the add that follows */
    if (kind == GCLIP_KIND_L1)
        return a;
    return exp2((double)p * log2(a));
}

/* Add element x (a float converted exactly, or an f64 element) to
 * accumulator acc, in double. Max keeps NaN. */
GCLIP_HD double gclip_term_add(double acc, double x, int32_t kind, float p)
{
    if (kind == GCLIP_KIND_INF) {
        const double a = fabs(x);
        return (a > acc || a != a) ? a : acc;
    }
    return acc + gclip_term_exact(x, kind, p);
}

/* ---- float groups (docs/gpu-arithmetic.md) ----------------------------------
 *
 * The L2 and L1 norms of f32, f16 and bf16 elements are summed in float over
 * small groups (the vectors one thread loads at once: up to 32 elements),
 * with the fixed pairwise tree of gclip_group_tree_f32, and each group's sum
 * is converted once and added once to the thread's double accumulator. A
 * group whose float sum is outside the safe range (not finite: an Inf or NaN
 * element, or squares that overflowed; or, for L2, below 2^-110, where
 * squares may have lost bits to underflow) is summed again in double, its
 * exact terms added in element order (gclip_group_exact_add). Every engine
 * forms the same groups in the same order (kernels/chunk_walk.cuh,
 * host/cpu_walk.h). */

/* Bits of 2^-110, the smallest float sum of squares taken as it is. */
#define GCLIP_GROUP_SAFE_MIN_BITS 0x08800000u

/* The float term of element x: x^2 (L2) or |x| (L1). */
GCLIP_HD float gclip_term_f32(float x, int32_t kind)
{
    const float a = fabsf(x);
    return kind == GCLIP_KIND_L2 ? gclip_fmul(a, a) : a;
}

/* Whether a group's float sum s is the group's value: finite, and for L2 at
 * least 2^-110 (one compare of the bit pattern; NaN fails it). */
GCLIP_HD int gclip_group_safe(float s, int32_t kind)
{
    const uint32_t b = gclip_f32_bits(s);
    if (kind == GCLIP_KIND_L2)
        return b - GCLIP_GROUP_SAFE_MIN_BITS < 0x7f800000u - GCLIP_GROUP_SAFE_MIN_BITS;
    return b < 0x7f800000u;
}

/* The fixed pairwise tree over the n 32-bit words of a group (n a power of
 * two, at most 16): t[i] += t[i + w] for w = n/2, n/4, ..., 1, where t[i] is
 * the term of word i % 4 of vector i / 4: an f32 element's term, or the sum
 * of the terms of the word's two halves (lower + upper). The first levels
 * add whole vectors, the last ones the words of one vector. The terms are
 * overwritten. */
GCLIP_HD float gclip_group_tree_f32(float *t, int n)
{
    for (int w = n / 2; w > 0; w /= 2)
        for (int i = 0; i < w; i++)
            t[i] = gclip_fadd(t[i], t[i + w]);
    return t[0];
}

/* One element of a group outside the safe range, added to the group's double
 * sum g (its term is exact in double: no fused multiply-add can change it). */
GCLIP_HD double gclip_group_exact_add(double g, float x, int32_t kind)
{
    return g + gclip_term_exact((double)x, kind, 0.0f);
}

/* The inf-norm as an integer max of magnitude bits: with the sign cleared,
 * float (and half) bit patterns order as integers like their magnitudes, Inf
 * above every finite value and NaN above Inf, so NaN wins. The result is a
 * float magnitude's bits with every NaN made the canonical NaN, so that the
 * engines agree bit for bit whichever NaN they met first. */
GCLIP_HD uint32_t gclip_max_bits(uint32_t m, uint32_t bits)
{
    const uint32_t a = bits & 0x7fffffffu;
    return a > m ? a : m;
}

GCLIP_HD double gclip_max_bits_value(uint32_t m)
{
    return (double)gclip_bits_f32(m > 0x7f800000u ? 0x7fffffffu : m);
}

/* The same for f64 elements. */
GCLIP_HD uint64_t gclip_max_bits64(uint64_t m, uint64_t bits)
{
    const uint64_t a = bits & 0x7fffffffffffffffull;
    return a > m ? a : m;
}

GCLIP_HD double gclip_max_bits64_value(uint64_t m)
{
    const uint64_t u = m > 0x7ff0000000000000ull ? 0x7fffffffffffffffull : m;
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* Combine two partial accumulators (sum, or max keeping NaN). */
GCLIP_HD double gclip_term_combine(double a, double b, int32_t kind)
{
    if (kind == GCLIP_KIND_INF)
        return (b > a || b != b) ? b : a;
    return a + b;
}

/* The norm from a combined accumulator. */
GCLIP_HD double gclip_term_root(double acc, int32_t kind, float p)
{
    switch (kind) {
    case GCLIP_KIND_L2:
        return sqrt(acc);
    case GCLIP_KIND_L1:
    case GCLIP_KIND_INF:
        return acc;
    default:
        /* acc^(1/p) as 2^(log2(acc)/p), inlined on the GPU like the terms
         * (see gclip_term_exact); relative error below ~2e-13 */
        return exp2(log2(acc) / (double)p);
    }
}

GCLIP_HD gclip_norm_kind gclip_kind_of(float p)
{
    if (p == 2.0f)
        return GCLIP_KIND_L2;
    if (p == 1.0f)
        return GCLIP_KIND_L1;
    if (gclip_f32_bits(p) == 0x7f800000u) /* +Inf; FLT_MAX is a finite p */
        return GCLIP_KIND_INF;
    return GCLIP_KIND_P;
}

/* Identifies the options a partial was made with: the norm type's bits and
 * the policy (FNV-1a over 8 bytes), with the norm kind in the low two bits so
 * that a partial says how it combines. Ranks that disagree on either are
 * caught when their partials meet. */
GCLIP_HD uint32_t gclip_fingerprint(float p, int32_t policy)
{
    uint32_t words[2];
    words[0] = gclip_f32_bits(p);
    words[1] = (uint32_t)policy;
    uint32_t h = 2166136261u;
    for (int w = 0; w < 2; w++)
        for (int b = 0; b < 4; b++) {
            h ^= (words[w] >> (8 * b)) & 0xffu;
            h *= 16777619u;
        }
    return (h & ~3u) | (uint32_t)gclip_kind_of(p);
}

GCLIP_HD int gclip_is_finite(float x)
{
    return (gclip_f32_bits(x) & 0x7f800000u) != 0x7f800000u;
}

/* ---- the scalars of a step ------------------------------------------------ */

/* max_norm and inv_scale as the step sees them when it executes. */
typedef struct gclip_scalars {
    float max_norm;
    float inv_scale;
    int32_t status; /* GCLIP_STATUS_SUCCESS or INVALID_ARGUMENT (out of range) */
} gclip_scalars;

/* The eps the coefficient min(1, max_norm * (1 / (N + eps))) is formed with.
 * Max_norm 0 zeroes and +Inf keeps every finite-norm gradient, but the
 * formula meets 0 x Inf where N + eps has no float reciprocal (eps below
 * FLT_MIN, N tiny or 0) under 0, and where N + eps overflows (eps past 1e30)
 * under +Inf. There eps is moved to FLT_MIN and to 1e30: 1 / (N + eps) is
 * then finite (at most 2^126) and nonzero (N + 1e30 rounds to at most
 * FLT_MAX, whose reciprocal is a subnormal), and every other coefficient is
 * what it was, 0 x a finite number and +Inf x a positive one; a non-finite
 * N keeps PyTorch's arithmetic. The host applies it to a max_norm given by
 * value (gclip_make_params); the coefficient and the per-tensor factors
 * apply it again (a second time changes nothing) for one read from
 * max_norm_ptr. */
GCLIP_HD float gclip_coef_eps(float max_norm, float eps)
{
    if (max_norm == 0.0f && eps < gclip_bits_f32(0x00800000u)) /* FLT_MIN */
        return gclip_bits_f32(0x00800000u);
    if (gclip_f32_bits(max_norm) == 0x7f800000u && eps > 1e30f) /* +Inf */
        return 1e30f;
    return eps;
}

/* Resolve the scalars; the range checks are those the host applies to values
 * (max_norm >= 0 and not NaN, inv_scale finite and > 0), repeated here for
 * values that only exist at execution. */
GCLIP_HD gclip_scalars gclip_resolve_scalars(const gclip_norm_params *np)
{
    gclip_scalars s;
    s.max_norm = np->max_norm_ptr ? *np->max_norm_ptr : np->max_norm;
    s.inv_scale = np->inv_scale_ptr ? *np->inv_scale_ptr : np->inv_scale;
    const int max_ok = s.max_norm >= 0.0f; /* false for NaN */
    const int inv_ok = s.inv_scale > 0.0f && gclip_is_finite(s.inv_scale);
    s.status = max_ok && inv_ok ? GCLIP_STATUS_SUCCESS : GCLIP_STATUS_INVALID_ARGUMENT;
    return s;
}

/* ---- coefficient, factor and result slot ------------------------------------ */

/* A NaN norm as the canonical NaN 0x7fffffff, which a GPU's arithmetic gives
 * whatever NaN went in, and which x86 keeps through the coefficient and the
 * factor: the slot's NaN has the same bits on every engine, whichever
 * element's NaN the accumulator met first. */
GCLIP_HD float gclip_canonical_norm(float n)
{
    return n == n ? n : gclip_bits_f32(0x7fffffffu);
}

/* A norm as reported: the root of the accumulator times inv_scale, rounded
 * once to float (Inf only if the true value exceeds FLT_MAX). */
GCLIP_HD float gclip_norm_value(double acc, int32_t kind, float p, float inv_scale)
{
    return gclip_canonical_norm((float)(gclip_term_root(acc, kind, p) * (double)inv_scale));
}

/* PyTorch's coefficient in float arithmetic: min(1, C / (N + eps)), NaN kept.
 * PyTorch evaluates `max_norm / tensor` as max_norm * reciprocal(tensor), which
 * differs from a true division by an ulp for some inputs (N = 6, C = 3), so
 * the same two roundings are used here. A NaN coefficient is the canonical
 * NaN: a NaN norm's already, and the one that Inf * 0 makes (C = +Inf and
 * N = Inf), which a GPU gives as 0x7fffffff and x86 as 0xffc00000. */
GCLIP_HD float gclip_clip_coef(float norm, float max_norm, float eps)
{
    float c = max_norm * (1.0f / (norm + eps));
    return c > 1.0f ? 1.0f : gclip_canonical_norm(c);
}

/* Whether the op's own factor is applied to the gradients (by the op itself or
 * by a later gclip_apply_clip_factor). */
GCLIP_HD int gclip_op_applies(int32_t op)
{
    return op == GCLIP_OP_CLIP_NORM || op == GCLIP_OP_CLIP_PER_TENSOR ||
           op == GCLIP_OP_CLIP_WITH_NORM;
}

/* Whether the op computes a clipping coefficient for the whole plan. */
GCLIP_HD int gclip_op_has_coef(int32_t op)
{
    return op == GCLIP_OP_CLIP_NORM || op == GCLIP_OP_CLIP_FACTOR ||
           op == GCLIP_OP_CLIP_WITH_NORM || op == GCLIP_OP_FINALIZE;
}

/* Fill the result slot of a norm operation from its (total) norm `n` and the
 * number of tensors whose own norm was not finite. `prev_sequence` is the
 * slot's sequence before the operation. */
GCLIP_HD void gclip_finalize_slot(float n, uint32_t nonfinite_tensors, const gclip_norm_params *np,
                                  const gclip_scalars *sc, int32_t status,
                                  uint32_t prev_sequence, gclip_result_slot *out)
{
    const int nonfinite = !gclip_is_finite(n) || nonfinite_tensors != 0;
    float coef = 1.0f, scale = 1.0f;
    if (status == GCLIP_STATUS_SUCCESS && gclip_op_has_coef(np->op) &&
        (!nonfinite || np->policy == GCLIP_NONFINITE_PROPAGATE)) {
        coef = gclip_clip_coef(n, sc->max_norm, gclip_coef_eps(sc->max_norm, np->eps));
        scale = coef * sc->inv_scale;
    }
    int32_t flags = GCLIP_RESULT_HAS_NORM;
    if (gclip_op_applies(np->op))
        flags |= GCLIP_RESULT_APPLIES;
    if (np->policy == GCLIP_NONFINITE_ERROR)
        flags |= GCLIP_RESULT_ERROR_POLICY;
    if (np->policy == GCLIP_NONFINITE_PROPAGATE)
        flags |= GCLIP_RESULT_PROPAGATE;
    if (np->op == GCLIP_OP_ACCUMULATE)
        flags |= GCLIP_RESULT_LOCAL;
    out->total_norm = n;
    out->clip_coef = coef;
    out->scale = scale;
    out->nonfinite = nonfinite;
    out->op = np->op;
    out->flags = flags;
    out->status = status;
    out->failed = 0;
    out->sequence = prev_sequence + 1u;
    out->reserved_ = 0;
}

/* The slot of value clipping, which computes no norm. */
GCLIP_HD void gclip_value_slot(uint32_t prev_sequence, gclip_result_slot *out)
{
    out->total_norm = gclip_bits_f32(0x7fc00000u); /* quiet NaN: no norm */
    out->clip_coef = 1.0f;
    out->scale = 1.0f;
    out->nonfinite = 0;
    out->op = GCLIP_OP_CLIP_VALUE;
    out->flags = GCLIP_RESULT_APPLIES;
    out->status = GCLIP_STATUS_SUCCESS;
    out->failed = 0;
    out->sequence = prev_sequence + 1u;
    out->reserved_ = 0;
}

/* Fold partial b into a (index order is the caller's). Returns 0, or 1 when
 * the fingerprints differ (a is then left as it was). */
GCLIP_HD int gclip_partial_fold(gclip_partial *a, const gclip_partial *b, int32_t kind)
{
    if (a->fingerprint != b->fingerprint)
        return 1;
    a->acc = gclip_term_combine(a->acc, b->acc, kind);
    a->nonfinite += b->nonfinite;
    return 0;
}

/* ---- the finalize's fold of an array of partials (GCLIP_OP_FINALIZE) ----
 * The order of the fold is fixed by the count alone, so every engine and
 * every rank folds one array to the same bits:
 *   - leaf i (0 <= i < GCLIP_FINALIZE_LEAVES) folds the run of partials
 *     [count*i/LEAVES, count*(i+1)/LEAVES) left to right;
 *   - group g (0 <= g < GCLIP_FINALIZE_FAN) folds leaves FAN*g ... FAN*g+FAN-1
 *     in order;
 *   - the result folds the groups in order.
 * Each fold starts from the zero term, which combines exactly (0 + t = t for
 * the sums of non-negative terms, and the max keeps t), so an empty leaf
 * changes no bit. Up to FAN partials every group holds one partial at most,
 * and the fold is the plain left fold in index order. The kernel gives a
 * leaf to each thread of one block: the longest chain of dependent combines
 * is ceil(count/LEAVES) + 2 FAN (80 for 16,384 ranks), where a left fold's is
 * count. A partial whose fingerprint is not the options' is left out and
 * marks the fold as a mismatch. */
#define GCLIP_FINALIZE_FAN 32u
#define GCLIP_FINALIZE_LEAVES (GCLIP_FINALIZE_FAN * GCLIP_FINALIZE_FAN)

/* A fold in progress: the combined terms, the non-finite tensors, and
 * whether a foreign partial was met. */
typedef struct gclip_fold_part {
    double acc;
    uint32_t nonfinite;
    uint32_t mismatch;
} gclip_fold_part;

GCLIP_HD gclip_fold_part gclip_fold_part_zero(void)
{
    gclip_fold_part z;
    z.acc = GCLIP_TERM_ZERO;
    z.nonfinite = 0;
    z.mismatch = 0;
    return z;
}

/* a += b, in that order */
GCLIP_HD void gclip_fold_part_add(gclip_fold_part *a, const gclip_fold_part *b, int32_t kind)
{
    a->acc = gclip_term_combine(a->acc, b->acc, kind);
    a->nonfinite += b->nonfinite;
    a->mismatch |= b->mismatch;
}

/* a += partial p, unless p's fingerprint is not `fingerprint`. Without a
 * branch: a foreign partial adds the zero term, which changes no bit, and
 * marks the fold. So a GPU issues the loads of several partials before it
 * compares any fingerprint (a branch on it made every acc load wait for its
 * fingerprint); on the CPU it costs a sixth more than the branch at 16,384
 * partials (docs/distributed.md), and every engine runs the same code. */
GCLIP_HD void gclip_fold_part_take(gclip_fold_part *a, const gclip_partial *p,
                                   uint32_t fingerprint, int32_t kind)
{
    const double acc = p->acc;
    const uint32_t nonfinite = p->nonfinite;
    const uint32_t foreign = p->fingerprint != fingerprint;
    a->acc = gclip_term_combine(a->acc, foreign ? GCLIP_TERM_ZERO : acc, kind);
    a->nonfinite += foreign ? 0u : nonfinite;
    a->mismatch |= foreign;
}

/* First partial of leaf `leaf` (leaf = GCLIP_FINALIZE_LEAVES gives count). */
GCLIP_HD uint32_t gclip_finalize_leaf_begin(uint32_t count, uint32_t leaf)
{
    return (uint32_t)(((uint64_t)count * leaf) / GCLIP_FINALIZE_LEAVES);
}

/* Leaf `leaf` of the fold of `count` partials. */
GCLIP_HD gclip_fold_part gclip_finalize_leaf(const gclip_partial *parts, uint32_t count,
                                             uint32_t leaf, uint32_t fingerprint, int32_t kind)
{
    gclip_fold_part a = gclip_fold_part_zero();
    const uint32_t end = gclip_finalize_leaf_begin(count, leaf + 1u);
    for (uint32_t i = gclip_finalize_leaf_begin(count, leaf); i < end; i++)
        gclip_fold_part_take(&a, &parts[i], fingerprint, kind);
    return a;
}

/* Left fold of n folds in progress from the zero term: a group of leaves,
 * or the groups. */
GCLIP_HD gclip_fold_part gclip_fold_parts_in_order(const gclip_fold_part *p, uint32_t n,
                                                   int32_t kind)
{
    gclip_fold_part a = gclip_fold_part_zero();
    for (uint32_t i = 0; i < n; i++)
        gclip_fold_part_add(&a, &p[i], kind);
    return a;
}

/* The whole fold of `count` partials in the order above, on one thread (the
 * finalize's CPU twin). Group g holds partials [count*g/FAN,
 * count*(g+1)/FAN). Up to LEAVES partials a leaf holds one at most, and a
 * leaf of one partial is that partial (0 + t = t), so a group is the left
 * fold of its partials: taken so, without the leaves. */
GCLIP_HD gclip_fold_part gclip_fold_partials(const gclip_partial *parts, uint32_t count,
                                             uint32_t fingerprint, int32_t kind)
{
    gclip_fold_part total = gclip_fold_part_zero();
    if (count <= GCLIP_FINALIZE_FAN) {
        /* a group holds one partial at most: the left fold, group by group */
        for (uint32_t i = 0; i < count; i++)
            gclip_fold_part_take(&total, &parts[i], fingerprint, kind);
        return total;
    }
    for (uint32_t g = 0; g < GCLIP_FINALIZE_FAN; g++) {
        gclip_fold_part group = gclip_fold_part_zero();
        if (count <= GCLIP_FINALIZE_LEAVES) {
            const uint32_t end = gclip_finalize_leaf_begin(count, (g + 1u) * GCLIP_FINALIZE_FAN);
            for (uint32_t i = gclip_finalize_leaf_begin(count, g * GCLIP_FINALIZE_FAN); i < end;
                 i++)
                gclip_fold_part_take(&group, &parts[i], fingerprint, kind);
        } else {
            uint32_t begin = gclip_finalize_leaf_begin(count, g * GCLIP_FINALIZE_FAN);
            for (uint32_t l = g * GCLIP_FINALIZE_FAN; l < (g + 1u) * GCLIP_FINALIZE_FAN; l++) {
                const uint32_t end = gclip_finalize_leaf_begin(count, l + 1u);
                gclip_fold_part leaf = gclip_fold_part_zero();
                for (uint32_t i = begin; i < end; i++)
                    gclip_fold_part_take(&leaf, &parts[i], fingerprint, kind);
                gclip_fold_part_add(&group, &leaf, kind);
                begin = end;
            }
        }
        gclip_fold_part_add(&total, &group, kind);
    }
    return total;
}

/* The slot of GCLIP_OP_FINALIZE from its fold. */
GCLIP_HD void gclip_finalize_slot_of_fold(const gclip_fold_part *total,
                                          const gclip_norm_params *np, uint32_t prev_sequence,
                                          gclip_result_slot *out)
{
    const gclip_scalars sc = gclip_resolve_scalars(np);
    const int32_t status = total->mismatch ? GCLIP_STATUS_MISMATCH : sc.status;
    /* a fold that skipped foreign partials has no norm: NaN, not the norm
     * of the partials that happened to match (which differs rank by rank) */
    const float n = total->mismatch ? gclip_bits_f32(0x7fc00000u)
                                    : gclip_norm_value(total->acc, np->kind, np->p, sc.inv_scale);
    gclip_finalize_slot(n, total->nonfinite, np, &sc, status, prev_sequence, out);
}

/* GCLIP_OP_FINALIZE on one thread: fold `count` partials in the order above
 * (or the plan's own partial when count is 0) and fill the slot. */
GCLIP_HD void gclip_finalize_partials(const gclip_partial *parts, uint32_t count,
                                      const gclip_partial *own, const gclip_norm_params *np,
                                      uint32_t prev_sequence, gclip_result_slot *out)
{
    gclip_fold_part total = gclip_fold_part_zero();
    if (count == 0)
        gclip_fold_part_take(&total, own, np->fingerprint, np->kind);
    else
        total = gclip_fold_partials(parts, count, np->fingerprint, np->kind);
    gclip_finalize_slot_of_fold(&total, np, prev_sequence, out);
}

/* GCLIP_OP_CLIP_WITH_NORM: the slot, and so the factor, from a norm computed
 * elsewhere (the value, or the float at given_norm_ptr). */
GCLIP_HD void gclip_given_norm_slot(const gclip_norm_params *np, uint32_t prev_sequence,
                                    gclip_result_slot *out)
{
    const gclip_scalars sc = gclip_resolve_scalars(np);
    const float given = np->given_norm_ptr ? *np->given_norm_ptr : np->given_norm;
    /* -0 is the norm 0, reported as +0 (eps is never -0: the host takes an
     * eps of -0 as +0, since -0 + -0 would give the coefficient -Inf) */
    const float n = given == 0.0f ? 0.0f : gclip_canonical_norm(given);
    /* a negative norm would flip the gradients' sign: rejected, as a
     * negative max_norm is */
    const int32_t status =
        sc.status == GCLIP_STATUS_SUCCESS && n < 0.0f ? GCLIP_STATUS_INVALID_ARGUMENT : sc.status;
    gclip_finalize_slot(n, 0, np, &sc, status, prev_sequence, out);
}

/* GCLIP_OP_APPLY: whether the slot holds a factor that is still to be
 * applied (left by gclip_norm_finalize or gclip_compute_clip_factor, with
 * no failure), and the slot once the apply has run. */
GCLIP_HD int gclip_factor_pending(const gclip_result_slot *s)
{
    return (s->op == GCLIP_OP_FINALIZE || s->op == GCLIP_OP_CLIP_FACTOR) &&
           s->status == GCLIP_STATUS_SUCCESS && s->failed == 0;
}

GCLIP_HD void gclip_applied_slot(gclip_result_slot *s)
{
    if (gclip_factor_pending(s)) {
        s->flags |= GCLIP_RESULT_APPLIES;
    } else {
        /* nothing was pending: nothing was written, and the slot says why
         * (a failed status of the earlier operation is kept) */
        if (s->status == GCLIP_STATUS_SUCCESS)
            s->status = GCLIP_STATUS_INVALID_ARGUMENT;
        s->scale = 1.0f;
        s->clip_coef = 1.0f;
    }
    s->op = GCLIP_OP_APPLY;
    s->sequence += 1u;
}

/* Factor of one tensor under per-tensor clipping, with the eps given.
 * `skip_all` is set when a non-finite norm or a bad scalar means nothing may
 * be written. */
GCLIP_HD float gclip_tensor_factor_eps(float tensor_norm, float eps, const gclip_scalars *sc,
                                       int skip_all)
{
    if (skip_all)
        return 1.0f;
    return gclip_clip_coef(tensor_norm, sc->max_norm, eps) * sc->inv_scale;
}

/* The same with the step's eps, moved for max_norm 0 and +Inf. */
GCLIP_HD float gclip_tensor_factor(float tensor_norm, const gclip_norm_params *np,
                                   const gclip_scalars *sc, int skip_all)
{
    return gclip_tensor_factor_eps(tensor_norm, gclip_coef_eps(sc->max_norm, np->eps), sc,
                                   skip_all);
}

/* ---- per-element updates -------------------------------------------------- */

/* x clamped to [-v, v] for v >= 0 or v = -0: x < -v ? -v : (x > v ? v : x).
 * Written as the upper bound first, then the lower one, each in the operand
 * order of the x86 min/max instructions (vminps(a, b) = a < b ? a : b, and
 * the second operand when either is NaN): GCC vectorizes these two into one
 * vminps and one vmaxps, where the form above took three compares and two
 * blends per vector and held the f32 clamp below the memory's speed on
 * AVX2 (docs/benchmark.md, "The value clamp as min and max"). The results
 * are the same for every x and every v >= 0 or -0: when x < -v, x > v is
 * false, so the first step keeps x; a NaN x compares false both ways and is
 * returned unchanged, its payload kept; the signed zeros meet the same
 * comparisons (tests/cpu/test_core.cpp, ClampIsTheContractsExpression). */
GCLIP_HD float gclip_clamp(float x, float v)
{
    const float upper = v < x ? v : x;
    const float lower = -v;
    return lower > upper ? lower : upper;
}

GCLIP_HD double gclip_clamp_f64(double x, double v)
{
    const double upper = v < x ? v : x;
    const double lower = -v;
    return lower > upper ? lower : upper;
}

#endif /* GCLIP_NORM_MATH_H */
