/*
 * gclip_portable.h - per-thread logic shared by the CUDA kernels and the host.
 *
 * Everything here is plain C that compiles three ways: as CUDA C++ under nvcc
 * (GCLIP_HD = __host__ __device__), as C11 in the host library (the CPU path
 * and the plan builder use it), and as C++17 in the SIMT emulator and the
 * tests. Chunk mapping, the vector/scalar split, element conversions, the
 * per-element norm terms and the finalize arithmetic live here once, so the
 * host can run and test the exact code the kernels run.
 */
#ifndef GCLIP_PORTABLE_H
#define GCLIP_PORTABLE_H

#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__CUDACC__)
#define GCLIP_HD __host__ __device__ __forceinline__
#else
#define GCLIP_HD static inline
#endif

/* Elements per chunk. A chunk is the unit of work of one CUDA block and of
 * one OpenMP iteration, and the unit of the fixed reduction order: each chunk
 * writes one partial to its own slot. 64 Ki elements = 256 KiB of f32. */
#define GCLIP_CHUNK_ELEMS ((int64_t)65536)

/* Bytes of one vector access (a 16-byte load or store). */
#define GCLIP_VEC_BYTES 16

/* How the norm terms are formed and combined. */
enum {
    GCLIP_KIND_L2 = 0,  /* sum of x^2, root sqrt      */
    GCLIP_KIND_L1 = 1,  /* sum of |x|                 */
    GCLIP_KIND_INF = 2, /* max of |x| (NaN wins)      */
    GCLIP_KIND_P = 3    /* sum of |x|^p, root 1/p     */
};

/* What a norm operation does after the norm. */
enum {
    GCLIP_OP_TOTAL = 0,     /* norm only, nothing written */
    GCLIP_OP_GLOBAL = 1,    /* scale every tensor by one factor */
    GCLIP_OP_PER_TENSOR = 2 /* scale each tensor by its own factor */
};

/* Per-tensor entry of the plan's tensor table (host and device copies). */
typedef struct gclip_tensor_desc {
    void *data;
    int64_t numel;
    int32_t dtype;       /* gclip_dtype */
    uint32_t first_chunk; /* index of the tensor's first chunk */
    uint32_t num_chunks;
    uint32_t pad_;
} gclip_tensor_desc;

/* One entry of the chunk table: chunk `index` of tensor `tensor`. Its
 * elements are [index * GCLIP_CHUNK_ELEMS, min(numel, (index+1)*...)). */
typedef struct gclip_chunk {
    uint32_t tensor;
    uint32_t index;
} gclip_chunk;

/* Scalar parameters of one norm operation, passed by value to kernels. */
typedef struct gclip_norm_params {
    int32_t kind;       /* GCLIP_KIND_* */
    int32_t op;         /* GCLIP_OP_* */
    int32_t policy;     /* gclip_nonfinite_policy */
    float p;            /* norm_type for GCLIP_KIND_P */
    float max_norm;
    float eps;
    float inv_scale;
    float *tensor_norms; /* optional output, plan-device memory */
} gclip_norm_params;

/* The result slot layout (same as gclip_device_result in gclip.h). */
typedef struct gclip_result_slot {
    float total_norm;
    float clip_coef;
    float scale;
    int32_t nonfinite;
} gclip_result_slot;

/* ---- chunk mapping ------------------------------------------------------ */

GCLIP_HD uint32_t gclip_chunks_for(int64_t numel)
{
    return (uint32_t)((numel + GCLIP_CHUNK_ELEMS - 1) / GCLIP_CHUNK_ELEMS);
}

/* First element and element count of chunk `index` of a tensor. */
GCLIP_HD void gclip_chunk_range(int64_t numel, uint32_t index, int64_t *begin, int64_t *count)
{
    int64_t b = (int64_t)index * GCLIP_CHUNK_ELEMS;
    int64_t n = numel - b;
    *begin = b;
    *count = n < GCLIP_CHUNK_ELEMS ? n : GCLIP_CHUNK_ELEMS;
}

GCLIP_HD int gclip_dtype_size(int32_t dtype)
{
    return dtype == 0 ? 4 : 2;
}

/* Split `count` elements of `elem_size` bytes starting at address `addr` into
 * a scalar head (up to the first 16-byte boundary), whole 16-byte vectors and
 * a scalar tail. addr must be aligned to elem_size. */
typedef struct gclip_split {
    int64_t head;    /* scalar elements before the first vector */
    int64_t vectors; /* number of 16-byte vectors */
    int64_t tail;    /* scalar elements after the last vector */
} gclip_split;

GCLIP_HD gclip_split gclip_split_vectors(uintptr_t addr, int64_t count, int elem_size)
{
    gclip_split s;
    int64_t per_vec = GCLIP_VEC_BYTES / elem_size;
    int64_t mis = (int64_t)(addr % GCLIP_VEC_BYTES);
    int64_t head = mis == 0 ? 0 : (GCLIP_VEC_BYTES - mis) / elem_size;
    if (head > count)
        head = count;
    s.head = head;
    s.vectors = (count - head) / per_vec;
    s.tail = count - head - s.vectors * per_vec;
    return s;
}

/* ---- element conversions (bit exact, round to nearest even) -------------- */

GCLIP_HD uint32_t gclip_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

GCLIP_HD float gclip_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

GCLIP_HD float gclip_bf16_to_f32(uint16_t h)
{
    return gclip_bits_f32((uint32_t)h << 16);
}

GCLIP_HD uint16_t gclip_f32_to_bf16(float f)
{
    uint32_t u = gclip_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign, force quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

GCLIP_HD float gclip_f16_to_f32(uint16_t h)
{
    /* Branch-free so that loops over halves vectorize, and free of float
     * subnormal arithmetic (slow on x86): normal halves are rebiased in the
     * exponent bits, subnormal halves converted from their integer mantissa
     * (exact: m * 2^-24 is a normal float), Inf and NaN keep an all-ones
     * exponent. */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    uint32_t normal = (em << 13) + (112u << 23);
    uint32_t subnormal = gclip_f32_bits((float)em * 5.9604644775390625e-8f); /* 2^-24 */
    uint32_t special = (em << 13) | 0x7f800000u;
    uint32_t bits = em >= 0x7c00u ? special : (em >= 0x400u ? normal : subnormal);
    return gclip_bits_f32(sign | bits);
}

GCLIP_HD uint16_t gclip_f32_to_f16(float f)
{
    uint32_t u = gclip_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* rounds to >= 65520: Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: subnormal half or zero */
        /* round(|f| * 2^24) to nearest even; the float multiply is exact */
        float v = gclip_bits_f32(a) * 16777216.0f;
        uint32_t q = (uint32_t)v;
        float r = v - (float)q;
        if (r > 0.5f || (r == 0.5f && (q & 1u)))
            q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias exponent, round mantissa from 23 to 10 bits */
    a += 0xc8000000u; /* (112 << 23) subtracted modulo 2^32 */
    a += 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | (a >> 13));
}

/* Load element i of a tensor of `dtype` as float. */
GCLIP_HD float gclip_load(const void *data, int32_t dtype, int64_t i)
{
    if (dtype == 0)
        return ((const float *)data)[i];
    uint16_t h = ((const uint16_t *)data)[i];
    return dtype == 1 ? gclip_f16_to_f32(h) : gclip_bf16_to_f32(h);
}

/* Store float v as element i of a tensor of `dtype`. */
GCLIP_HD void gclip_store(void *data, int32_t dtype, int64_t i, float v)
{
    if (dtype == 0)
        ((float *)data)[i] = v;
    else
        ((uint16_t *)data)[i] = dtype == 1 ? gclip_f32_to_f16(v) : gclip_f32_to_bf16(v);
}

/* ---- per-element norm terms ----------------------------------------------- */

/* Neutral element of the combine for `kind` (0 for sums and for max|x|). */
#define GCLIP_TERM_ZERO 0.0

/* Add element x to accumulator acc. Sums are in double: x^2 of any float
 * (including FLT_MAX and denormals) is exact-range in double, so nothing
 * overflows or underflows before the final root. Max keeps NaN. */
GCLIP_HD double gclip_term_add(double acc, float x, int32_t kind, float p)
{
    double a = fabs((double)x);
    switch (kind) {
    case GCLIP_KIND_L2:
        return acc + a * a;
    case GCLIP_KIND_L1:
        return acc + a;
    case GCLIP_KIND_INF:
        return (a > acc || a != a) ? a : acc;
    default:
        /* |x|^p as 2^(p log2|x|): CUDA's double pow is an out-of-line call
         * whose register save forces stack spills in the norm kernel's loop,
         * while exp2 and log2 inline. |p log2|x|| < 1100 wherever the term
         * is a finite nonzero double, so the relative error stays below
         * ~3e-13, far inside the 1e-6 contract. 0, Inf and NaN map to
         * 0, Inf and NaN as with pow. */
        return acc + exp2((double)p * log2(a));
    }
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
         * (see gclip_term_add); relative error below ~2e-13 */
        return exp2(log2(acc) / (double)p);
    }
}

/* ---- finalize arithmetic -------------------------------------------------- */

/* A norm as reported: the root of the accumulator times inv_scale, rounded
 * once to float (Inf only if the true value exceeds FLT_MAX). */
GCLIP_HD float gclip_norm_value(double acc, const gclip_norm_params *np)
{
    return (float)(gclip_term_root(acc, np->kind, np->p) * (double)np->inv_scale);
}

/* PyTorch's coefficient in float arithmetic: min(1, C / (N + eps)), NaN kept.
 * PyTorch evaluates `max_norm / tensor` as max_norm * reciprocal(tensor), which
 * differs from a true division by an ulp for some inputs (N = 6, C = 3), so
 * the same two roundings are used here. */
GCLIP_HD float gclip_clip_coef(float norm, float max_norm, float eps)
{
    float c = max_norm * (1.0f / (norm + eps));
    return c > 1.0f ? 1.0f : c;
}

GCLIP_HD int gclip_is_finite(float x)
{
    return (gclip_f32_bits(x) & 0x7f800000u) != 0x7f800000u;
}

/* Fill the result slot from the total accumulator. `any_nonfinite` says
 * whether a tensor norm was not finite (used by GCLIP_OP_PER_TENSOR, whose
 * slot keeps coefficient and scale 1: each tensor has its own factor). */
GCLIP_HD void gclip_finalize_total(double total_acc, const gclip_norm_params *np,
                                   int any_nonfinite, gclip_result_slot *out)
{
    float n = gclip_norm_value(total_acc, np);
    int nonfinite = !gclip_is_finite(n) || any_nonfinite;
    float coef = 1.0f, scale = 1.0f;
    if (np->op == GCLIP_OP_GLOBAL && (!nonfinite || np->policy == 1)) {
        coef = gclip_clip_coef(n, np->max_norm, np->eps);
        scale = coef * np->inv_scale;
    }
    out->total_norm = n;
    out->clip_coef = coef;
    out->scale = scale;
    out->nonfinite = nonfinite;
}

/* Factor of one tensor under per-tensor clipping. `skip_all` is set when a
 * non-finite norm means nothing may be written (SKIP and ERROR policies). */
GCLIP_HD float gclip_tensor_factor(float tensor_norm, const gclip_norm_params *np, int skip_all)
{
    if (skip_all)
        return 1.0f;
    return gclip_clip_coef(tensor_norm, np->max_norm, np->eps) * np->inv_scale;
}

/* ---- per-element updates -------------------------------------------------- */

GCLIP_HD float gclip_clamp(float x, float v)
{
    /* NaN compares false both ways and is returned unchanged */
    return x < -v ? -v : (x > v ? v : x);
}

#endif /* GCLIP_PORTABLE_H */
