/*
 * gclip_agc_math.h - the arithmetic of unit-wise adaptive gradient clipping
 * (AGC, gclip_agc_step), shared by kernels/agc_kernel.cu and its CPU twin
 * host/agc_cpu.c: the AGC's tables as they live in the plan device's
 * memory, the fixed order in which a unit's norm terms are summed, and the
 * per-unit factor (timm.utils.agc.adaptive_clip_grad's arithmetic).
 *
 * Units and pieces
 *   Tensor i of the plan is `units[i]` units of numel / units elements each
 *   (a row along dim 0, or the whole tensor). A unit is cut into pieces of
 *   at most GCLIP_AGC_PIECE elements; a piece is the unit of work of one
 *   CUDA block and one OpenMP iteration.
 *
 * Summation order (fixed by the unit's length alone)
 *   Within a piece, element k goes to lane k mod GCLIP_AGC_LANES; each lane
 *   adds its elements in increasing k (gclip_term_add, in double); the
 *   lanes are then folded pairwise, lane j taking lane j + w for
 *   w = LANES/2, ..., 1. The pieces of a unit are folded in order. The
 *   kernel's lanes are its threads and the pairwise fold is its shared-memory
 *   tree, so the kernel and the CPU add the same numbers in the same order.
 */
#ifndef GCLIP_AGC_MATH_H
#define GCLIP_AGC_MATH_H

#include "gclip_adapt_math.h"
#include "gclip_norm_math.h"

/* Elements of a piece (a unit longer than this is cut) and lanes of its sum:
 * the lanes are the threads of one block. */
#define GCLIP_AGC_PIECE ((int64_t)16384)
#define GCLIP_AGC_LANES 256

/* One piece: elements [begin, begin + count) of tensor `tensor`, in the unit
 * whose pieces are first .. first + pieces - 1. */
typedef struct gclip_agc_piece {
    int64_t begin;
    int64_t count;
    uint32_t tensor;
    uint32_t first;
    uint32_t pieces;
    uint32_t pad_;
} gclip_agc_piece;

/* The AGC as its kernels see it (np->agc), in the plan device's memory. */
typedef struct gclip_agc_device {
    double clip_factor;
    double eps;
    float p;               /* norm_type */
    int32_t kind;          /* gclip_norm_kind of p */
    uint32_t num_pieces;
    uint32_t pad_;
    const gclip_agc_piece *pieces; /* [num_pieces] */
    const void *const *params;     /* [num_tensors] parameter data, dtype of the gradient */
    double *partials;              /* [2 * num_pieces] per piece: parameter sum, gradient sum */
} gclip_agc_device;

/* Add element x's term to a lane. The square is rounded on its own
 * (gclip_muld), so nvcc cannot fuse it with the sum: for p = 2, 1 and inf
 * the GPU adds exactly the CPU's numbers. */
GCLIP_HD double gclip_agc_term(double acc, double x, int32_t kind, float p)
{
    if (kind == GCLIP_KIND_L2)
        return acc + gclip_muld(x, x);
    return gclip_term_add(acc, x, kind, p);
}

/* Element k of `data` as double (exact for every dtype). */
GCLIP_HD double gclip_agc_load(const void *data, int32_t dtype, int64_t k)
{
    if (dtype == GCLIP_F64)
        return ((const double *)data)[k];
    return (double)gclip_load(data, dtype, k);
}

/* The factor of one unit from its two accumulators: 1 (the unit is kept)
 * when ||g|| < clip_factor * max(||W||, eps), else
 * clip_factor * max(||W||, eps) / max(||g||, 1e-6). NaN anywhere gives a NaN
 * factor (timm: the comparison is false and the division is NaN); an Inf
 * parameter norm keeps the unit; an Inf gradient norm gives 0. Float
 * arithmetic for f32/f16/bf16 tensors (PyTorch's float norm and scalars),
 * double for f64. `*keep` says whether the unit stays as it is. */
GCLIP_HD double gclip_agc_factor(const gclip_agc_device *a, int32_t dtype, double wacc,
                                 double gacc, int *keep)
{
    const double wn = gclip_term_root(wacc, a->kind, a->p);
    const double gn = gclip_term_root(gacc, a->kind, a->p);
    if (dtype == GCLIP_F64) {
        const double lo = wn < a->eps ? a->eps : wn;
        const double max_norm = gclip_muld(lo, a->clip_factor);
        *keep = gn < max_norm;
        return max_norm / (gn < 1e-6 ? 1e-6 : gn);
    }
    const float max_norm =
        gclip_fmul(gclip_clamp_min((float)wn, (float)a->eps), (float)a->clip_factor);
    const float g = (float)gn;
    *keep = g < max_norm;
    return (double)(max_norm / gclip_clamp_min(g, 1e-6f));
}

/* An element times its unit's factor as every engine writes it: a NaN
 * result is the canonical NaN, 0x7fffffff (f32) or 0x7fffffffffffffff
 * (f64), whatever NaN the arithmetic gave. FP32 arithmetic on the GPU gives
 * that NaN; x86 keeps a NaN operand's sign and payload and makes 0xffc00000
 * of Inf * 0, so a unit with NaN or Inf would otherwise leave different
 * bytes on the two engines. f16 and bf16 results take the canonical half NaN
 * in their conversion (gclip_store). */
GCLIP_HD float gclip_agc_scaled(float x, float f)
{
    const float r = gclip_fmul(x, f);
    return r == r ? r : gclip_bits_f32(0x7fffffffu);
}

GCLIP_HD double gclip_agc_scaled64(double x, double f)
{
    const double r = gclip_muld(x, f);
    if (r == r)
        return r;
    const uint64_t u = 0x7fffffffffffffffull;
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* The slot of an AGC step, which computes no total norm. */
GCLIP_HD void gclip_agc_slot(uint32_t prev_sequence, gclip_result_slot *out)
{
    gclip_value_slot(prev_sequence, out);
    out->op = GCLIP_OP_AGC;
}

#endif /* GCLIP_AGC_MATH_H */
