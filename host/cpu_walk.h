/*
 * cpu_walk.h - how the CPU path walks the elements of one chunk: the twin of
 * kernels/chunk_walk.cuh, shared by norm_cpu.c, scale_cpu.c and clamp_cpu.c.
 *
 * Each chunk is read (and written) as STREAMS equal parts walked in lockstep,
 * each with LANES independent accumulators: several sequential streams per
 * core keep more memory requests in flight than one, and the lanes let the
 * compiler vectorize. The order of every addition is fixed by the chunk's
 * length alone, so a chunk's partial does not depend on the thread count.
 */
#ifndef GCLIP_CPU_WALK_H
#define GCLIP_CPU_WALK_H

#include "gclip_internal.h"

/* Independent accumulators per stream: enough to hide the add latency and
 * let the compiler vectorize the lanes; fixed, so the summation order is too. */
#define LANES 8
/* Sequential streams each chunk is walked as. */
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

/* Element i as double, for any dtype (exact). Inlined with a constant dtype. */
ALWAYS_INLINE double gclip_load_f64(const void *data, int32_t dtype, int64_t i)
{
    if (dtype == GCLIP_F64)
        return ((const double *)data)[i];
    return (double)gclip_load(data, dtype, i);
}

/* Accumulate n elements from element `begin` of `data`. Inlined with constant
 * dtype and kind, so each combination becomes its own branch-free loop. */
ALWAYS_INLINE double gclip_walk_accumulate(const void *data, int32_t dtype, int64_t begin,
                                           int64_t n, int32_t kind, float p)
{
    double lane[STREAMS][LANES];
    for (int s = 0; s < STREAMS; s++)
        for (int j = 0; j < LANES; j++)
            lane[s][j] = GCLIP_TERM_ZERO;
    const int64_t part = n / (STREAMS * LANES) * LANES; /* elements per stream */
    for (int64_t i = 0; i < part; i += LANES)
        for (int s = 0; s < STREAMS; s++)
            for (int j = 0; j < LANES; j++)
                lane[s][j] = gclip_term_add(
                    lane[s][j], gclip_load_f64(data, dtype, begin + s * part + i + j), kind, p);
    /* the tail has its own accumulator: indexing the lanes with a run-time
     * value would keep them in memory for the whole main loop */
    double rest = GCLIP_TERM_ZERO;
    for (int64_t i = STREAMS * part; i < n; i++)
        rest = gclip_term_add(rest, gclip_load_f64(data, dtype, begin + i), kind, p);
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

/* max|x| of n 16- or 32-bit elements, on the floats' bit patterns: with the
 * sign cleared they order as integers like the values do, with Inf above
 * every finite value and NaN above Inf, so NaN wins without a branch and the
 * loop vectorizes. */
ALWAYS_INLINE double gclip_walk_max_abs(const void *data, int32_t dtype, int64_t begin, int64_t n)
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

/* Multiply n elements by f, or clamp them to [-f, f], as STREAMS parts in
 * lockstep like the read pass. Inlined with constant dtype and clamp, so
 * each combination is its own vectorized loop. f16/bf16 are updated in
 * float and rounded back; f64 in double. */
ALWAYS_INLINE void gclip_walk_update_one(void *data, int32_t dtype, int64_t k, int clamp, float f)
{
    if (dtype == GCLIP_F64) {
        double *x = (double *)data + k;
        *x = clamp ? gclip_clamp_f64(*x, (double)f) : *x * (double)f;
    } else {
        const float x = gclip_load(data, dtype, k);
        gclip_store(data, dtype, k, clamp ? gclip_clamp(x, f) : x * f);
    }
}

ALWAYS_INLINE void gclip_walk_update(void *data, int32_t dtype, int64_t begin, int64_t n,
                                     int clamp, float f)
{
    const int64_t part = n / (STREAMS * LANES) * LANES;
    for (int64_t i = begin; i < begin + part; i += LANES)
        for (int s = 0; s < STREAMS; s++)
            for (int j = 0; j < LANES; j++)
                gclip_walk_update_one(data, dtype, i + s * part + j, clamp, f);
    for (int64_t k = begin + STREAMS * part; k < begin + n; k++)
        gclip_walk_update_one(data, dtype, k, clamp, f);
}

/* Update chunk `index` of tensor t (scale by f, or clamp to [-f, f]). */
void gclip_update_chunk_cpu(const gclip_tensor_desc *t, uint32_t index, int clamp, float f);

#endif /* GCLIP_CPU_WALK_H */
