/*
 * gclip_dtype.h - element types: sizes, and bit-exact conversions between
 * f16/bf16 and f32 (round to nearest even), shared by the kernels and the
 * CPU path.
 *
 * NaN: every NaN converts to the canonical NaN of the target format
 * (0x7fff for f16 and bf16 from f32, 0x7fffffff for f32 from f16), sign and
 * payload dropped, as the GPU's conversion instructions do (cvt.rn.f16.f32,
 * cvt.rn.bf16.f32 and their paired forms, cvt.f32.f16). The kernels use those
 * instructions where the GPU has them (chunk_walk.cuh) and these functions
 * elsewhere, so every engine stores the same bits (docs/gpu-arithmetic.md).
 * bf16 to f32 is a shift on every engine: NaN payloads pass unchanged.
 */
#ifndef GCLIP_DTYPE_H
#define GCLIP_DTYPE_H

#include "gclip_hd.h"

GCLIP_HD int gclip_dtype_size(int32_t dtype)
{
    switch (dtype) {
    case GCLIP_F64:
        return 8;
    case GCLIP_F32:
        return 4;
    default: /* GCLIP_F16, GCLIP_BF16 */
        return 2;
    }
}

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
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: the canonical bf16 NaN */
        return 0x7fffu;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

GCLIP_HD float gclip_f16_to_f32(uint16_t h)
{
    /* Branch-free so that loops over halves vectorize, and free of float
     * subnormal arithmetic (slow on x86): normal halves are rebiased in the
     * exponent bits, subnormal halves converted from their integer mantissa
     * (exact: m * 2^-24 is a normal float), Inf keeps its sign, NaN becomes
     * the canonical f32 NaN. */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    uint32_t normal = (em << 13) + (112u << 23);
    /* em < 2^15: through int32, a conversion that vectorizes on x86 */
    uint32_t subnormal = gclip_f32_bits((float)(int32_t)em * 5.9604644775390625e-8f); /* 2^-24 */
    uint32_t special = 0x7f800000u; /* Inf (NaN is handled below) */
    uint32_t bits = em >= 0x7c00u ? special : (em >= 0x400u ? normal : subnormal);
    return gclip_bits_f32(em > 0x7c00u ? 0x7fffffffu : (sign | bits));
}

GCLIP_HD uint16_t gclip_f32_to_f16(float f)
{
    uint32_t u = gclip_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN: the canonical f16 NaN */
        return 0x7fffu;
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

/* Element i of a 16-bit or f32 tensor as float (f64 has its own accessors). */
GCLIP_HD float gclip_load(const void *data, int32_t dtype, int64_t i)
{
    if (dtype == GCLIP_F32)
        return ((const float *)data)[i];
    uint16_t h = ((const uint16_t *)data)[i];
    return dtype == GCLIP_F16 ? gclip_f16_to_f32(h) : gclip_bf16_to_f32(h);
}

/* Store float v as element i of a 16-bit or f32 tensor, rounded to nearest even. */
GCLIP_HD void gclip_store(void *data, int32_t dtype, int64_t i, float v)
{
    if (dtype == GCLIP_F32)
        ((float *)data)[i] = v;
    else
        ((uint16_t *)data)[i] = dtype == GCLIP_F16 ? gclip_f32_to_f16(v) : gclip_f32_to_bf16(v);
}

#endif /* GCLIP_DTYPE_H */
