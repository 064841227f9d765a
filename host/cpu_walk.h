/*
 * cpu_walk.h - how the CPU path walks the elements of one chunk: the twin of
 * kernels/chunk_walk.cuh, shared by norm_cpu.c, scale_cpu.c and clamp_cpu.c.
 *
 * The norm's read pass computes a chunk's partial as one block of the norm
 * kernel does (see below), so it is the emulated kernel's bit for bit and
 * does not depend on the thread count. The update pass (scale, clamp) walks
 * each chunk as STREAMS equal parts in lockstep, LANES elements at a time:
 * several sequential streams per core keep more memory requests in flight
 * than one, and the lanes let the compiler vectorize.
 */
#ifndef GCLIP_CPU_WALK_H
#define GCLIP_CPU_WALK_H

#include "gclip_internal.h"
#include "gclip_kernels.h"

/* Compiled with F16C (host/norm_cpu_f16c.c), the read pass converts f16
 * vectors with vcvtph2ps: exact for every half, subnormals included. */
#if defined(__F16C__) && defined(__AVX2__)
#include <immintrin.h>
#define GCLIP_WALK_F16C 1
#endif

/* Elements per stream and step of the update pass. */
#define LANES 8
/* Sequential streams each chunk is walked as. */
#define STREAMS 4
/* A chunk of at most this many bytes is updated as one stream: the update
 * pass has requested its lines ahead (gclip_prefetch_before), and
 * four streams of a few hundred bytes each only broke the sequence the
 * hardware prefetchers follow (docs/benchmark.md, "The update pass: small
 * chunks as one stream"). */
#define ONE_STREAM_BYTES 16384

/* The chunk loops are compiled twice, for AVX2 and for baseline x86-64, and
 * the loader picks one per machine. Contraction into FMA stays off
 * (-ffp-contract=off), so both clones round every operation alike. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CPU_CLONES
#endif

/* ---- the norm's read pass: the norm kernel's per-thread accumulation ------
 *
 * A chunk's partial is computed exactly as one block of the norm kernel
 * computes it under the emulator (kernels/norm_kernel.cu, gclip_term_sum;
 * kernels/chunk_walk.cuh): GCLIP_BLOCK_THREADS thread accumulators, each fed
 * its groups of GCLIP_WALK_BATCH vectors v, v + B, ..., its single vectors
 * and its tail element in the walk's order (vectors counted from the
 * chunk's first element, gclip_split_elements, at any address), then the
 * block reduction's tree (gclip_block_tree_cpu). The same float groups, the
 * same trees, the same order: the partial is bitwise the kernel's. */

#define NT GCLIP_BLOCK_THREADS /* threads of one norm-kernel block */
#define WALK_BATCH 4 /* GCLIP_WALK_BATCH of chunk_walk.cuh */
#define VEC_BYTES GCLIP_VEC_BYTES
#define PAIR 2 /* large chunks whose batches one thread reads side by side */

/* Element j of the vector at `vec` (16 bytes of dtype), as float. */
ALWAYS_INLINE float vec_elem(const char *vec, int32_t dtype, int j)
{
    return gclip_load(vec, dtype, j);
}

/* The term of 32-bit word m of a vector of f32/f16/bf16 (the two halves of a
 * word added first), as gclip_term_sum::group forms it. */
ALWAYS_INLINE float word_term(const char *vec, int32_t dtype, int m, int32_t kind)
{
    if (dtype == GCLIP_F32)
        return gclip_term_f32(vec_elem(vec, dtype, m), kind);
    return gclip_fadd(gclip_term_f32(vec_elem(vec, dtype, 2 * m), kind),
                      gclip_term_f32(vec_elem(vec, dtype, 2 * m + 1), kind));
}

/* The value of one group of `nv` vectors (vector k at vec + k * stride
 * bytes) for L2/L1 of f32/f16/bf16: the float tree, or the exact sum. */
ALWAYS_INLINE double group_value(const char *vec, int64_t stride, int nv, int32_t dtype,
                                 int32_t kind)
{
    float t[4 * WALK_BATCH];
    for (int k = 0; k < nv; k++)
        for (int m = 0; m < 4; m++)
            t[4 * k + m] = word_term(vec + k * stride, dtype, m, kind);
    const float s = gclip_group_tree_f32(t, 4 * nv);
    if (gclip_group_safe(s, kind))
        return (double)s;
    const int lanes = VEC_BYTES / gclip_dtype_size(dtype);
    double g = 0.0;
    for (int k = 0; k < nv; k++)
        for (int j = 0; j < lanes; j++)
            g = gclip_group_exact_add(g, vec_elem(vec + k * stride, dtype, j), kind);
    return g;
}

/* The element-by-element kinds (P of any dtype, every sum kind of f64):
 * the group's elements added to acc in order. */
ALWAYS_INLINE double group_elements(double acc, const char *vec, int64_t stride, int nv,
                                    int32_t dtype, int32_t kind, float p)
{
    const int lanes = VEC_BYTES / gclip_dtype_size(dtype);
    for (int k = 0; k < nv; k++)
        for (int j = 0; j < lanes; j++) {
            const double x = dtype == GCLIP_F64 ? ((const double *)(vec + k * stride))[j]
                                                : (double)vec_elem(vec + k * stride, dtype, j);
            acc = gclip_term_add(acc, x, kind, p);
        }
    return acc;
}

ALWAYS_INLINE double elem_f64(const char *base, int32_t dtype, int64_t i)
{
    if (dtype == GCLIP_F64)
        return ((const double *)base)[i];
    return (double)gclip_load(base, dtype, i);
}

/* One 64-byte line requested into L2 (prefetcht1): the level of every
 * request ahead in the read pass (batch_rows_of, single_row_chunk) and of
 * gclip_prefetch_before; on a 2-core Xeon it read faster from memory than
 * prefetcht0 everywhere it was tried (docs/benchmark.md, "Whole-vector
 * chunks request the next ones"). */
ALWAYS_INLINE void gclip_request_line(const char *line)
{
    __builtin_prefetch(line, 0, 2);
}

/* Eight floats, and their bits: GCC/Clang vector types that the AVX2 build
 * keeps in one register and the baseline build in two. The helpers are
 * always inlined, so no vector crosses a call: -Wpsabi's note on passing
 * them without AVX does not apply (GCC gives it at the end of the file that
 * includes this header, so it stays off there; Clang at each use). */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float gclip_v8f __attribute__((vector_size(32)));
typedef int32_t gclip_v8i __attribute__((vector_size(32)));
typedef uint32_t gclip_v8u __attribute__((vector_size(32)));
typedef double gclip_v4d __attribute__((vector_size(32)));
typedef float gclip_v4f __attribute__((vector_size(16)));

ALWAYS_INLINE gclip_v8f load_v8f(const void *p)
{
    gclip_v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* gclip_term_f32 of eight floats (x * x is |x| * |x| but for a NaN's sign,
 * and a NaN makes its group unsafe either way). */
ALWAYS_INLINE gclip_v8f term_v8f(gclip_v8f x, int32_t kind)
{
    return kind == GCLIP_KIND_L2 ? x * x : (gclip_v8f)((gclip_v8i)x & 0x7fffffff);
}

/* The terms of the eight 32-bit words at p, as gclip_term_sum::group forms
 * them: an f32 element's term, or the sum of the terms of the word's two
 * halves (lower + upper). The halves are decoded to their magnitude with
 * integer operations: a finite half gives the bits gclip_f16_to_f32 or
 * gclip_bf16_to_f32 gives its magnitude, so its term is the same; an Inf or
 * NaN half gives a non-finite term, which makes the group unsafe, and an
 * unsafe group is summed again from the scalar conversions. */
ALWAYS_INLINE gclip_v8f half_terms_v8f(gclip_v8i h, int32_t dtype, int32_t kind)
{
    const gclip_v8i em = h & 0x7fff;
    gclip_v8i mag;
    if (dtype == GCLIP_BF16) {
        mag = em << 16;
    } else {
        const gclip_v8i normal = (em << 13) + (112 << 23);
        /* subnormal halves: the integer mantissa times 2^-24, exact */
        const gclip_v8f sub = __builtin_convertvector(em, gclip_v8f) * 5.9604644775390625e-8f;
        /* the masks as sign bits shifted across the lane (em <= 0x7fff, so
         * the differences do not overflow): without SSE4.1, GCC turned the
         * comparisons em >= 0x400 and em >= 0x7c00 into a compare and a
         * conditional move per lane, a third of the baseline build's code */
        const gclip_v8i is_normal = (0x3ff - em) >> 31;
        mag = (normal & is_normal) | ((gclip_v8i)sub & ~is_normal);
        mag |= ((0x7bff - em) >> 31) & 0x7f800000; /* Inf and NaN stay non-finite */
    }
    return term_v8f((gclip_v8f)mag, kind);
}

/* The terms of eight words of f16/bf16 halves: lower plus upper. */
ALWAYS_INLINE gclip_v8f word_halves_v8f(gclip_v8i w, int32_t dtype, int32_t kind)
{
    if (dtype == GCLIP_BF16) {
        /* a bf16 half is the upper half of an f32: the lower half shifted
         * up, the upper one with the lower bits cleared; their terms are
         * those of the magnitudes (term_v8f), with a NaN's sign aside */
        const gclip_v8u u = (gclip_v8u)w;
        return term_v8f((gclip_v8f)(u << 16), kind) + term_v8f((gclip_v8f)(u & 0xffff0000u), kind);
    }
    const gclip_v8i lo = w & 0xffff, hi = (gclip_v8i)((gclip_v8u)w >> 16);
    return half_terms_v8f(lo, dtype, kind) + half_terms_v8f(hi, dtype, kind);
}

/* Whether words_lane_v8f leaves the words of a vector in the order
 * 0 1 4 5 | 2 3 6 7 (f16 in the F16C build) rather than 0..7. */
ALWAYS_INLINE int words_in_lanes(int32_t dtype)
{
#ifdef GCLIP_WALK_F16C
    return dtype == GCLIP_F16;
#else
    (void)dtype;
    return 0;
#endif
}

/* The terms of the eight 32-bit words at p (see words_v8f), in the order
 * words_in_lanes gives. */
ALWAYS_INLINE gclip_v8f words_lane_v8f(const char *p, int32_t dtype, int32_t kind)
{
    if (dtype == GCLIP_F32)
        return term_v8f(load_v8f(p), kind);
#ifdef GCLIP_WALK_F16C
    if (dtype == GCLIP_F16) {
        /* halves 0-7 and 8-15 in float; word m is halves 2m and 2m + 1.
         * The even and odd halves are taken within each 128-bit lane
         * (vshufps), so the sums are words 0 1 4 5 | 2 3 6 7; shuffles
         * across the lanes took GCC two vpermd and a blend each. */
        const gclip_v8f a = (gclip_v8f)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        const gclip_v8f b = (gclip_v8f)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
        const gclip_v8f ta = term_v8f(a, kind), tb = term_v8f(b, kind);
        return __builtin_shufflevector(ta, tb, 0, 2, 8, 10, 4, 6, 12, 14) +
               __builtin_shufflevector(ta, tb, 1, 3, 9, 11, 5, 7, 13, 15);
    }
#endif
    gclip_v8i w;
    memcpy(&w, p, sizeof w);
    return word_halves_v8f(w, dtype, kind);
}

/* Words 0 1 4 5 | 2 3 6 7 put in order 0..7 (a permute of 64-bit pairs). */
ALWAYS_INLINE gclip_v8f words_in_order(gclip_v8f w)
{
    return __builtin_shufflevector(w, w, 0, 1, 4, 5, 2, 3, 6, 7);
}

/* The terms of the eight 32-bit words at p, words 0..7 in lanes 0..7. */
ALWAYS_INLINE gclip_v8f words_v8f(const char *p, int32_t dtype, int32_t kind)
{
    const gclip_v8f w = words_lane_v8f(p, dtype, kind);
    return words_in_lanes(dtype) ? words_in_order(w) : w;
}

/* The terms of the four 32-bit words of the one vector at p in lanes 0-3,
 * +0 in lanes 4-7: words_v8f of a vector followed by a zero one, without
 * reading past the vector. */
ALWAYS_INLINE gclip_v8f word_one_v8f(const char *p, int32_t dtype, int32_t kind)
{
    const gclip_v4f z4 = {0, 0, 0, 0};
    if (dtype == GCLIP_F32) {
        gclip_v4f x;
        memcpy(&x, p, sizeof x);
        return term_v8f(__builtin_shufflevector(x, z4, 0, 1, 2, 3, 4, 5, 6, 7), kind);
    }
#ifdef GCLIP_WALK_F16C
    if (dtype == GCLIP_F16) {
        const gclip_v8f ta =
            term_v8f((gclip_v8f)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)), kind);
        const gclip_v8f z = {0, 0, 0, 0, 0, 0, 0, 0};
        return __builtin_shufflevector(ta, z, 0, 2, 4, 6, 8, 8, 8, 8) +
               __builtin_shufflevector(ta, z, 1, 3, 5, 7, 8, 8, 8, 8);
    }
#endif
    typedef int32_t v4i __attribute__((vector_size(16)));
    const v4i z4i = {0, 0, 0, 0};
    v4i x;
    memcpy(&x, p, sizeof x);
    return word_halves_v8f(__builtin_shufflevector(x, z4i, 0, 1, 2, 3, 4, 5, 6, 7), dtype, kind);
}

/* The group sums of eight threads from their 32 words w0..w3 (thread
 * 2i + h's words in lanes 4h..4h+3 of wi): word q with q + 2, then the two
 * (the last levels of gclip_group_tree_f32), lanes in thread order. */
ALWAYS_INLINE gclip_v8f group_tree_v8f(gclip_v8f w0, gclip_v8f w1, gclip_v8f w2, gclip_v8f w3)
{
    /* per thread (w0 + w2, w1 + w3); lanes: threads 0 2 0 2 1 3 1 3 (+4) */
    const gclip_v8f p01 = __builtin_shufflevector(w0, w1, 0, 1, 8, 9, 4, 5, 12, 13) +
                          __builtin_shufflevector(w0, w1, 2, 3, 10, 11, 6, 7, 14, 15);
    const gclip_v8f p23 = __builtin_shufflevector(w2, w3, 0, 1, 8, 9, 4, 5, 12, 13) +
                          __builtin_shufflevector(w2, w3, 2, 3, 10, 11, 6, 7, 14, 15);
    /* lanes: threads 0 2 4 6 1 3 5 7 */
    const gclip_v8f s = __builtin_shufflevector(p01, p23, 0, 2, 8, 10, 4, 6, 12, 14) +
                        __builtin_shufflevector(p01, p23, 1, 3, 9, 11, 5, 7, 13, 15);
    return __builtin_shufflevector(s, s, 0, 4, 1, 5, 2, 6, 3, 7);
}

/* group_tree_v8f of words in the order 0 1 4 5 | 2 3 6 7 (words_lane_v8f
 * of f16): thread 2i's words are lanes 0 1 4 5 of wi, thread 2i + 1's
 * lanes 2 3 6 7, so word q and word q + 2 face each other across the two
 * 128-bit lanes. The same additions in the same order. */
ALWAYS_INLINE gclip_v8f group_tree_lanes_v8f(gclip_v8f w0, gclip_v8f w1, gclip_v8f w2,
                                             gclip_v8f w3)
{
    /* per thread (w0 + w2, w1 + w3); lanes: threads 0 0 1 1 2 2 3 3 (+4) */
    const gclip_v8f p01 = __builtin_shufflevector(w0, w1, 0, 1, 2, 3, 8, 9, 10, 11) +
                          __builtin_shufflevector(w0, w1, 4, 5, 6, 7, 12, 13, 14, 15);
    const gclip_v8f p23 = __builtin_shufflevector(w2, w3, 0, 1, 2, 3, 8, 9, 10, 11) +
                          __builtin_shufflevector(w2, w3, 4, 5, 6, 7, 12, 13, 14, 15);
    /* lanes: threads 0 1 4 5 2 3 6 7 */
    const gclip_v8f s = __builtin_shufflevector(p01, p23, 0, 2, 8, 10, 4, 6, 12, 14) +
                        __builtin_shufflevector(p01, p23, 1, 3, 9, 11, 5, 7, 13, 15);
    return words_in_order(s);
}

/* The groups' safety (gclip_group_safe), noted lane by lane. A sum is
 * safe exactly when its bits minus the safe range's lowest, as unsigned
 * (its excess), are below 0x7f800000 minus that lowest: below the range the
 * difference wraps around, and Inf and NaN lie above. With AVX2 a lane of
 * the note keeps the largest excess seen (a subtraction and a max per eight
 * groups), otherwise all-ones once an unsafe sum was seen; both start at 0. */
ALWAYS_INLINE uint32_t safe_lowest(int32_t kind)
{
    return kind == GCLIP_KIND_L2 ? GCLIP_GROUP_SAFE_MIN_BITS : 0u;
}

ALWAYS_INLINE gclip_v8u excess_v8f(gclip_v8f s, int32_t kind)
{
    return (gclip_v8u)s - safe_lowest(kind);
}

ALWAYS_INLINE void note_excess(gclip_v8u *note, gclip_v8u e, int32_t kind)
{
#ifdef GCLIP_WALK_F16C
    (void)kind;
    *note = (gclip_v8u)_mm256_max_epu32((__m256i)*note, (__m256i)e);
#else
    *note |= (gclip_v8u)(e >= 0x7f800000u - safe_lowest(kind));
#endif
}

/* Whether any lane of m is set: the four 64-bit quarters or'd (fewer
 * instructions than a loop over the eight lanes, in both builds). */
ALWAYS_INLINE int any_lane(gclip_v8i m)
{
    uint64_t q[4];
    memcpy(q, &m, sizeof q);
    return ((q[0] | q[1]) | (q[2] | q[3])) != 0;
}

/* Whether a note holds an unsafe group. */
ALWAYS_INLINE int any_unsafe(gclip_v8u note, int32_t kind)
{
#ifdef GCLIP_WALK_F16C
    /* lanes at or above the limit are those the max leaves unchanged */
    const __m256i limit = _mm256_set1_epi32((int)(0x7f800000u - safe_lowest(kind)));
    const __m256i over = _mm256_cmpeq_epi32(_mm256_max_epu32((__m256i)note, limit), (__m256i)note);
    return !_mm256_testz_si256(over, over);
#else
    (void)kind;
    return any_lane((gclip_v8i)note);
#endif
}

/* One full batch of every thread for L2/L1 of f32/f16/bf16: thread t's
 * group is words 4t..4t+3 of the four rows at row + k * NT * 16 bytes, its
 * tree row k with k + 2, then k with k + 1, then the words. Eight threads at
 * a time: their words of the four rows summed lane by lane, then the words'
 * tree across lanes. The groups' sums are folded together when all are in
 * the safe range (one test per batch).
 *
 * The rows are read one after the other, in address order, their words kept
 * in two 4 KiB arrays (rows 0 + 2, row 1) until row 3 completes the sums;
 * each pass requests the same row of the next batch into L2
 * (gclip_request_line; a 400 MB f32 tensor read at 0.86-0.88 of a plain
 * read that way on a 2-core Xeon, at 0.82-0.84 with prefetcht0).
 * The additions are those of the tree above, in its order, so the sums are
 * bitwise the same as reading the four rows side by side; but four 4 KiB
 * pages read side by side are four short streams that the hardware
 * prefetchers follow poorly: on 64 Ki-element f32 tensors the read pass ran
 * at 0.75-0.78 of a plain read of the same buffer that way, at 0.85-0.88
 * this way (docs/benchmark.md, "The batch's rows in address order").
 *
 * batch_rows_of does this for the batches of nc <= PAIR chunks at once
 * (rows[k], into accs[k]), each pass 128 bytes of one chunk, then of the
 * next: one thread reads nc sequential streams instead of one. Each
 * chunk's additions are those of batch_rows, in its order. Only the first
 * `words` 32-byte words of each row are read, a multiple of 4: the groups
 * of threads 0 .. 2 words - 1 (all NT of them for WORDS_PER_ROW). */
enum { WORDS_PER_ROW = NT * VEC_BYTES / (2 * VEC_BYTES) };
ALWAYS_INLINE void batch_rows_of(const char *const *rows, int nc, int words, int32_t dtype,
                                  int32_t kind, double *const *accs)
{
    const int64_t rs = (int64_t)NT * VEC_BYTES; /* bytes between the batch's rows */
    enum { WB = 2 * VEC_BYTES }; /* words_v8f's bytes */
    gclip_v8f even[PAIR][WORDS_PER_ROW], odd[PAIR][WORDS_PER_ROW]; /* rows 0 + 2, row 1 */
    float s[PAIR][NT];
    gclip_v8u bad[PAIR];
    for (int k = 0; k < nc; k++)
        bad[k] = (gclip_v8u){0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < words; j += 4)
        for (int k = 0; k < nc; k++) {
            const char *row = rows[k], *ahead = row + WALK_BATCH * rs;
            gclip_request_line(ahead + j * WB);
            gclip_request_line(ahead + j * WB + 64);
            for (int i = 0; i < 4; i++)
                even[k][j + i] = words_lane_v8f(row + (j + i) * WB, dtype, kind);
        }
    for (int j = 0; j < words; j += 4)
        for (int k = 0; k < nc; k++) {
            const char *row = rows[k], *ahead = row + WALK_BATCH * rs;
            gclip_request_line(ahead + rs + j * WB);
            gclip_request_line(ahead + rs + j * WB + 64);
            for (int i = 0; i < 4; i++)
                odd[k][j + i] = words_lane_v8f(row + rs + (j + i) * WB, dtype, kind);
        }
    for (int j = 0; j < words; j += 4)
        for (int k = 0; k < nc; k++) {
            const char *row = rows[k], *ahead = row + WALK_BATCH * rs;
            gclip_request_line(ahead + 2 * rs + j * WB);
            gclip_request_line(ahead + 2 * rs + j * WB + 64);
            for (int i = 0; i < 4; i++)
                even[k][j + i] = even[k][j + i] + words_lane_v8f(row + 2 * rs + (j + i) * WB, dtype, kind);
        }
    for (int j = 0; j < words; j += 4)
        for (int k = 0; k < nc; k++) {
            const char *row = rows[k], *ahead = row + WALK_BATCH * rs;
            gclip_request_line(ahead + 3 * rs + j * WB);
            gclip_request_line(ahead + 3 * rs + j * WB + 64);
            gclip_v8f w[4];
            for (int i = 0; i < 4; i++)
                w[i] = even[k][j + i] +
                       (odd[k][j + i] + words_lane_v8f(row + 3 * rs + (j + i) * WB, dtype, kind));
            const gclip_v8f g = words_in_lanes(dtype)
                                    ? group_tree_lanes_v8f(w[0], w[1], w[2], w[3])
                                    : group_tree_v8f(w[0], w[1], w[2], w[3]);
            note_excess(&bad[k], excess_v8f(g, kind), kind);
            memcpy(&s[k][2 * j], &g, sizeof g);
        }
    for (int k = 0; k < nc; k++) {
        double *acc = accs[k];
        if (!any_unsafe(bad[k], kind)) {
            for (int t = 0; t < 2 * words; t++)
                acc[t] = acc[t] + (double)s[k][t];
            continue;
        }
        for (int t = 0; t < 2 * words; t++) {
            const double g = gclip_group_safe(s[k][t], kind)
                                 ? (double)s[k][t]
                                 : group_value(rows[k] + (int64_t)t * VEC_BYTES, rs, WALK_BATCH,
                                               dtype, kind);
            acc[t] = acc[t] + g;
        }
    }
}

/* The walk is inlined with constant dtype and kind, but its largest pieces
 * are compiled once for each (chunks, dtype, kind) and called: batch_rows_of
 * here, the general walk of a chunk (chunk_sum_of below) and the read pass
 * of each kind (read_chunks_of). A call per batch of 16 KiB, per chunk or
 * per run costs nothing measurable, and GCC took 80-120 s on norm_cpu.c when
 * all of it was one function (its register allocation and redundancy
 * elimination grow faster than the function), against about 20 s this way.
 * For the same reason read_chunks_kind calls read_step from one place: from
 * four, GCC took 89 s. */
#define OUT_OF_LINE static __attribute__((noinline, unused))

#define BATCH_ROWS_OF(nc, dt, k)                                                           \
    OUT_OF_LINE void batch_rows_##nc##_##dt##_##k(const char *const *rows, double *const *accs) \
    {                                                                                       \
        batch_rows_of(rows, nc, WORDS_PER_ROW, GCLIP_##dt, GCLIP_KIND_##k, accs);           \
    }
#define BATCH_ROWS_OF_DTYPE(nc, dt) BATCH_ROWS_OF(nc, dt, L2) BATCH_ROWS_OF(nc, dt, L1)
BATCH_ROWS_OF_DTYPE(1, F32)
BATCH_ROWS_OF_DTYPE(1, F16)
BATCH_ROWS_OF_DTYPE(1, BF16)
BATCH_ROWS_OF_DTYPE(PAIR, F32)
BATCH_ROWS_OF_DTYPE(PAIR, F16)
BATCH_ROWS_OF_DTYPE(PAIR, BF16)

#define BATCH_ROWS_CALL(nc, k) BATCH_ROWS_CALL_EXPANDED(nc, k) /* PAIR expanded */
#define BATCH_ROWS_CALL_EXPANDED(nc, k)                             \
    switch (dtype) {                                                \
    case GCLIP_F32: batch_rows_##nc##_F32_##k(rows, accs); return;  \
    case GCLIP_F16: batch_rows_##nc##_F16_##k(rows, accs); return;  \
    default: batch_rows_##nc##_BF16_##k(rows, accs); return;        \
    }

/* batch_rows_of for nc = 1 or PAIR chunks of f32/f16/bf16, L2 or L1 (all
 * constants where it is inlined), through the function compiled for them. */
ALWAYS_INLINE void batch_rows_call(const char *const *rows, int nc, int32_t dtype, int32_t kind,
                                   double *const *accs)
{
    if (nc == 1) {
        if (kind == GCLIP_KIND_L2)
            BATCH_ROWS_CALL(1, L2)
        BATCH_ROWS_CALL(1, L1)
    }
    if (kind == GCLIP_KIND_L2)
        BATCH_ROWS_CALL(PAIR, L2)
    BATCH_ROWS_CALL(PAIR, L1)
}

/* One full batch of one chunk. */
ALWAYS_INLINE void batch_rows(const char *row, int32_t dtype, int32_t kind, double *acc)
{
    batch_rows_call(&row, 1, dtype, kind, &acc);
}

/* The groups of the r <= 8 threads t..t+r-1 of a row of single vectors, for
 * L2/L1 of f32/f16/bf16 (the words' tree across lanes), in lanes 0..r-1,
 * +0 in the lanes from r (the groups of zero vectors); the first r lanes
 * whose group is outside the safe range are noted in *bad (note_excess).
 * No byte past thread t+r-1's vector is read. */
ALWAYS_INLINE gclip_v8f few_groups(const char *row, int t, int r, int32_t dtype, int32_t kind,
                                   gclip_v8u *bad)
{
    const gclip_v8f z = {0, 0, 0, 0, 0, 0, 0, 0};
    gclip_v8f w[4];
    for (int i = 0; i < 4; i++) {
        const char *p = row + (int64_t)(t + 2 * i) * VEC_BYTES;
        w[i] = 2 * i + 2 <= r ? words_v8f(p, dtype, kind)
               : 2 * i < r    ? word_one_v8f(p, dtype, kind)
                              : z;
    }
    const gclip_v8f g = group_tree_v8f(w[0], w[1], w[2], w[3]);
    const gclip_v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    note_excess(bad, excess_v8f(g, kind) & (gclip_v8u)(lane < r), kind);
    return g;
}

/* The groups of threads t..t+7 (few_groups of all eight). */
ALWAYS_INLINE gclip_v8f eight_groups(const char *row, int t, int32_t dtype, int32_t kind,
                                     gclip_v8u *bad)
{
    return few_groups(row, t, 8, dtype, kind, bad);
}

/* Four floats as doubles. GCC converts a 4-float vector with two 2-float
 * conversions and a trip through memory; with AVX the intrinsic is one
 * vcvtps2pd. */
ALWAYS_INLINE gclip_v4d widen_v4f(gclip_v4f f)
{
#ifdef GCLIP_WALK_F16C
    return (gclip_v4d)_mm256_cvtps_pd((__m128)f);
#else
    return __builtin_convertvector(f, gclip_v4d);
#endif
}

/* Lanes 0-3 and 4-7 of g as doubles. */
ALWAYS_INLINE gclip_v4d widen_lo(gclip_v8f g)
{
    return widen_v4f(__builtin_shufflevector(g, g, 0, 1, 2, 3));
}

ALWAYS_INLINE gclip_v4d widen_hi(gclip_v8f g)
{
    return widen_v4f(__builtin_shufflevector(g, g, 4, 5, 6, 7));
}

/* Groups t..t+7 into slots t..t+7, as doubles. */
ALWAYS_INLINE void store_groups(double *acc, int t, gclip_v8f g)
{
    const gclip_v4d lo = widen_lo(g), hi = widen_hi(g);
    memcpy(&acc[t], &lo, sizeof lo);
    memcpy(&acc[t + 4], &hi, sizeof hi);
}

/* Single vectors of threads t0 <= t < t1 for L2/L1 of f32/f16/bf16: thread
 * t's group is words 4t..4t+3 of the row (its tree: word q with q + 2, then
 * the two). */
ALWAYS_INLINE void single_rows(const char *row, int t0, int t1, int32_t dtype, int32_t kind,
                               double *acc)
{
    float s[NT + 8]; /* the last eight may end past slot NT - 1 */
    gclip_v8u bad = {0, 0, 0, 0, 0, 0, 0, 0};
    int t = t0;
    for (; t + 8 <= t1; t += 8) {
        const gclip_v8f g = eight_groups(row, t, dtype, kind, &bad);
        memcpy(&s[t], &g, sizeof g);
    }
    if (t < t1) {
        const gclip_v8f g = few_groups(row, t, t1 - t, dtype, kind, &bad);
        memcpy(&s[t], &g, sizeof g);
    }
    if (!any_unsafe(bad, kind)) {
        /* every group safe: four slots at a time */
        for (t = t0; t + 4 <= t1; t += 4) {
            gclip_v4f f;
            gclip_v4d a;
            memcpy(&f, &s[t], sizeof f);
            memcpy(&a, &acc[t], sizeof a);
            a = a + widen_v4f(f);
            memcpy(&acc[t], &a, sizeof a);
        }
        for (; t < t1; t++)
            acc[t] = acc[t] + (double)s[t];
        return;
    }
    for (t = t0; t < t1; t++)
        acc[t] = acc[t] + (!gclip_group_safe(s[t], kind)
                               ? group_value(row + (int64_t)t * VEC_BYTES, 0, 1, dtype, kind)
                               : (double)s[t]);
}

/* The slots the block tree runs on for `used` thread values: the power of
 * two from 32 that holds them (levels whose pairs all have an unused upper
 * slot are skipped: see gclip_block_tree_cpu). */
ALWAYS_INLINE int tree_slots(int64_t used)
{
    int n = 32;
    while (n < used)
        n *= 2;
    return n;
}

/* Slots 0..n-1 set to +0, four at a time. The empty asm hides that z is
 * zero, so the loop stays vector stores instead of becoming a memset call
 * or rep stos, whose start-up costs more than these few stores. */
ALWAYS_INLINE void zero_slots(double *acc, int n)
{
    gclip_v4d z = {0.0, 0.0, 0.0, 0.0};
#if defined(__GNUC__) && defined(__AVX__)
    __asm__("" : "+x"(z));
#endif
    for (int t = 0; t < n; t += 4)
        memcpy(&acc[t], &z, sizeof z);
}

ALWAYS_INLINE gclip_v4d load_v4d(const double *p)
{
    gclip_v4d v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Slots c, c + 32, ..., c + 32 (m - 1) of the four columns from acc folded
 * by the tree's levels n/2 .. 32 (m = n/32): at each level the lower slot
 * plus the upper one, as the block tree adds them. */
ALWAYS_INLINE gclip_v4d column_fold(const double *acc, int m)
{
#define C(k) load_v4d(acc + 32 * (k))
    switch (m) {
    case 1: return C(0);
    case 2: return C(0) + C(1);
    case 4: return (C(0) + C(2)) + (C(1) + C(3));
    default: return ((C(0) + C(4)) + (C(2) + C(6))) + ((C(1) + C(5)) + (C(3) + C(7)));
    }
#undef C
}

/* The tree's levels 16, 8, 4, 2 and 1 on slots 0..31, held four at a time
 * in r[0..7]. */
ALWAYS_INLINE double tree_levels_16_to_1(gclip_v4d r[8])
{
    for (int q = 0; q < 4; q++)
        r[q] = r[q] + r[q + 4];
    r[0] = r[0] + r[2];
    r[1] = r[1] + r[3];
    r[0] = r[0] + r[1];
    return (r[0][0] + r[0][2]) + (r[0][1] + r[0][3]);
}

/* The block reduction of kernels/block_reduce.cuh over slots 0..n-1 of acc
 * (n = tree_slots(used); the slots from `used` hold +0): the halving tree,
 * value t with t + 128, 64, ..., 1. A slot at or above `used` only ever
 * receives from higher slots, so it stays +0, and adding +0 to a sum of
 * terms changes nothing (no term is -0): the levels above n/2 are skipped.
 * Slot t's value after the levels down to 32 depends only on the slots
 * congruent to t mod 32, so those levels run column by column in registers
 * (column_fold), then 16, 8 and 4 on the 32 results. For the sum kinds
 * only, whose combine is an addition (the inf-norm's read pass is an
 * integer max: gclip_chunk_max). */
ALWAYS_INLINE double gclip_block_tree_cpu(const double *acc, int n)
{
    const int m = n / 32;
    gclip_v4d r[8];
    for (int q = 0; q < 8; q++)
        r[q] = column_fold(acc + 4 * q, m);
    return tree_levels_16_to_1(r);
}

/* The block tree of a chunk of at most 32 threads (tree_slots 32), from
 * their groups in g[0..3] (threads 8i..8i+7 in g[i], +0 past the last):
 * gclip_block_tree_cpu's operations in its order, in registers. */
ALWAYS_INLINE double tree_of_32(const gclip_v8f g[4])
{
    gclip_v4d d[8];
    for (int i = 0; i < 4; i++) {
        d[2 * i] = widen_lo(g[i]);
        d[2 * i + 1] = widen_hi(g[i]);
    }
    return tree_levels_16_to_1(d);
}

/* How far ahead of its reads a chunk of 33 to NT whole vectors requests
 * lines into L2 (prefetcht1, the two lines of each eight vectors): the
 * bytes past the chunk, which in a plan of many such tensors packed in one
 * buffer are mostly the next ones. One core reads such a chunk about as
 * fast from its caches as from memory, and without the requests the two
 * hardly overlapped: 10,000 tensors of 1,000 f32 read at 0.59-0.61 of a
 * plain read from cold caches on a 2-core Xeon, 0.74-0.83 with them, and
 * the same from the caches (docs/benchmark.md, "Whole-vector chunks request
 * the next ones"). Where the next chunk the walk reads starts elsewhere
 * (tensors allocated one by one, with other data between them), the
 * requests follow it instead (row_ahead). */
#define WHOLE_ROW_AHEAD 4096

/* The end of a chunk of nv whole vectors whose groups 0..t-1 (t a multiple
 * of 8, nv - t < 8) are in slots 0..t-1 of acc: the last nv - t groups,
 * the slots up to tree_slots(nv) at +0, and the tree into *out. Returns 0,
 * leaving *out as it was, when a group is outside the safe range. */
ALWAYS_INLINE int row_finish(const char *row, int nv, int t, double *acc, int32_t dtype,
                             int32_t kind, gclip_v8u bad, double *out)
{
    const int slots = tree_slots(nv);
    if (t < nv) {
        store_groups(acc, t, few_groups(row, t, nv - t, dtype, kind, &bad));
        t += 8;
    }
    /* t is a multiple of 8 here, and so is slots - t */
    zero_slots(acc + t, slots - t);
    if (any_unsafe(bad, kind))
        return 0;
    *out = gclip_block_tree_cpu(acc, slots);
    return 1;
}

/* The partial of a chunk of nv <= NT whole vectors at row, no head or tail
 * element, for L2/L1 of f32/f16/bf16, into *out: thread t's accumulator is
 * +0 plus its one group, which is the group itself (no group is -0), so the
 * groups go straight into the tree's slots, eight at a time; the last
 * nv % 8 as eight with +0 in the slots past nv, which is what those slots
 * hold. Up to 32 vectors the slots stay in registers. Returns 0, leaving
 * *out as it was and the chunk to the general walk (gclip_chunk_sum), when
 * a group is outside the safe range. Past 32 vectors, the lines from
 * `ahead` (row_ahead) are requested as the vectors are read. */
ALWAYS_INLINE int single_row_chunk(const char *row, int nv, const char *ahead, int32_t dtype,
                                   int32_t kind, double *out)
{
    gclip_v8u bad = {0, 0, 0, 0, 0, 0, 0, 0};
    if (nv <= 32) {
        const gclip_v8f z = {0, 0, 0, 0, 0, 0, 0, 0};
        gclip_v8f g[4];
        /* unrolled, so that g stays in registers (GCC kept the loop and g
         * on the stack: ten instructions a round) */
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const int t = 8 * i;
            g[i] = t + 8 <= nv ? eight_groups(row, t, dtype, kind, &bad)
                   : t < nv    ? few_groups(row, t, nv - t, dtype, kind, &bad)
                               : z;
        }
        if (any_unsafe(bad, kind))
            return 0;
        *out = tree_of_32(g);
        return 1;
    }
    double acc[NT];
    int t = 0;
    for (; t + 8 <= nv; t += 8) {
        const char *line = ahead + (int64_t)t * VEC_BYTES;
        gclip_request_line(line);
        gclip_request_line(line + 64);
        store_groups(acc, t, eight_groups(row, t, dtype, kind, &bad));
    }
    return row_finish(row, nv, t, acc, dtype, kind, bad, out);
}

/* single_row_chunk of two chunks of one dtype, slot_row both, read side by
 * side: eight vectors (128 bytes) of one, then eight of the other, as long
 * as both have eight left, then the rest of each. Each chunk's slots take
 * the same values as when it is read alone, and its tree is the same, so
 * the partials are the same bits. ok[k] is 0 where chunk k had a group
 * outside the safe range (out[k] then left as it was). */
ALWAYS_INLINE void single_row_pair(const char *ra, int na, const char *rb, int nb,
                                   const char *ahead_a, const char *ahead_b, int32_t dtype,
                                   int32_t kind, double out[2], int ok[2])
{
    double acc_a[NT], acc_b[NT];
    gclip_v8u bad_a = {0, 0, 0, 0, 0, 0, 0, 0}, bad_b = bad_a;
    const int both = (na < nb ? na : nb) & ~7;
    int t = 0;
    for (; t < both; t += 8) {
        const char *line_a = ahead_a + (int64_t)t * VEC_BYTES;
        const char *line_b = ahead_b + (int64_t)t * VEC_BYTES;
        gclip_request_line(line_a);
        gclip_request_line(line_a + 64);
        gclip_request_line(line_b);
        gclip_request_line(line_b + 64);
        store_groups(acc_a, t, eight_groups(ra, t, dtype, kind, &bad_a));
        store_groups(acc_b, t, eight_groups(rb, t, dtype, kind, &bad_b));
    }
    int ta = t, tb = t;
    for (; ta + 8 <= na; ta += 8)
        store_groups(acc_a, ta, eight_groups(ra, ta, dtype, kind, &bad_a));
    for (; tb + 8 <= nb; tb += 8)
        store_groups(acc_b, tb, eight_groups(rb, tb, dtype, kind, &bad_b));
    ok[0] = row_finish(ra, na, ta, acc_a, dtype, kind, bad_a, &out[0]);
    ok[1] = row_finish(rb, nb, tb, acc_b, dtype, kind, bad_b, &out[1]);
}

/* batch_rows_of of one chunk's first `words` words of each row (the
 * threads 0 .. 2 words - 1 of a batch that not every thread takes), for
 * f32/f16/bf16 and L2/L1, compiled once for each (OUT_OF_LINE). */
#define PARTIAL_ROWS_OF(dt, k)                                                             \
    OUT_OF_LINE void partial_rows_##dt##_##k(const char *row, int words, double *acc)     \
    {                                                                                      \
        batch_rows_of(&row, 1, words, GCLIP_##dt, GCLIP_KIND_##k, &acc);                   \
    }
#define PARTIAL_ROWS_OF_DTYPE(dt) PARTIAL_ROWS_OF(dt, L2) PARTIAL_ROWS_OF(dt, L1)
PARTIAL_ROWS_OF_DTYPE(F32)
PARTIAL_ROWS_OF_DTYPE(F16)
PARTIAL_ROWS_OF_DTYPE(BF16)

#define PARTIAL_ROWS_CALL(k)                                                   \
    switch (dtype) {                                                           \
    case GCLIP_F32: partial_rows_F32_##k(row, words, acc); break;              \
    case GCLIP_F16: partial_rows_F16_##k(row, words, acc); break;              \
    default: partial_rows_BF16_##k(row, words, acc); break;                    \
    }

/* The batch that only threads 0..n-1 take (the rest of a chunk after its
 * full batches, n < NT), for L2/L1 of f32/f16/bf16: the groups of threads
 * 0 .. 8 floor(n / 8) - 1 added to their accumulators by batch_rows_of,
 * which reads the four rows' parts one after the other, requesting the
 * same parts of the rows that follow. Returns the threads done; the last
 * n % 8 are the caller's. Tensors of 4,000 f32 (1,000 vectors: 232
 * threads take a batch) were read at 0.25-0.27 of a plain read of the same
 * bytes on one thread, from the caches, with these groups summed one at a
 * time by group_value, and at 0.53-0.54 this way; 8,000 bf16 at 0.20-0.22
 * and 0.45-0.46 (gclip-chunk-cost, three runs each). */
ALWAYS_INLINE int partial_batch(const char *row, int n, int32_t dtype, int32_t kind, double *acc)
{
    const int words = n / 8 * 4;
    if (words == 0)
        return 0;
    if (kind == GCLIP_KIND_L2)
        PARTIAL_ROWS_CALL(L2)
    else
        PARTIAL_ROWS_CALL(L1)
    return 2 * words;
}

/* A chunk's sum between its batches: where its vectors are, and its
 * threads' accumulators. */
typedef struct chunk_sum {
    const char *base; /* the chunk's first element; vector k starts at base + 16 k */
    gclip_split sp;
    int64_t full; /* batches every thread takes */
    int slots;
    double acc[NT];
} chunk_sum;

/* The sum of the n elements from element `begin` of `data` started: the
 * accumulators at +0 (the element split has no head). Inlined with a
 * constant dtype. */
ALWAYS_INLINE void chunk_sum_begin(chunk_sum *cs, const void *data, int32_t dtype, int64_t begin,
                                   int64_t n)
{
    const int esize = gclip_dtype_size(dtype);
    cs->base = (const char *)data + begin * esize;
    cs->sp = gclip_split_elements(n, esize); /* as the norm kernel splits it */
    const int64_t nv = cs->sp.vectors;
    /* threads that get an element: the others' accumulators stay +0, and
     * adding +0 changes no sum of terms (never -0), so they are left out */
    int64_t used = nv < NT ? nv : NT;
    used = cs->sp.tail > used ? cs->sp.tail : used;
    cs->slots = tree_slots(used);
    zero_slots(cs->acc, cs->slots);
    /* batches every thread takes: thread NT-1 still has v + 3 NT < nv */
    cs->full = nv >= WALK_BATCH * NT ? (nv - WALK_BATCH * NT) / (WALK_BATCH * NT) + 1 : 0;
}

/* Whether the batches are read by batch_rows (the float groups). */
ALWAYS_INLINE int float_groups(int32_t dtype, int32_t kind)
{
    return dtype != GCLIP_F64 && kind != GCLIP_KIND_P;
}

/* Batch b of the chunk. */
ALWAYS_INLINE void chunk_sum_batch(chunk_sum *cs, int64_t b, int32_t dtype, int32_t kind, float p)
{
    const int64_t rs = (int64_t)NT * VEC_BYTES;
    const char *row = cs->base + b * WALK_BATCH * rs;
    if (float_groups(dtype, kind)) {
        batch_rows(row, dtype, kind, cs->acc);
    } else {
        for (int t = 0; t < NT; t++)
            cs->acc[t] = group_elements(cs->acc[t], row + (int64_t)t * VEC_BYTES, rs, WALK_BATCH,
                                        dtype, kind, p);
    }
}

/* The chunk's partial: after its batches, the rest of its vectors, its tail
 * elements and the block tree. */
ALWAYS_INLINE double chunk_sum_end(chunk_sum *cs, int32_t dtype, int32_t kind, float p)
{
    const int lanes = VEC_BYTES / gclip_dtype_size(dtype);
    const int64_t nv = cs->sp.vectors, rs = (int64_t)NT * VEC_BYTES;
    const int floats = float_groups(dtype, kind);
    double *acc = cs->acc;
    /* the rest, fewer than 4 NT vectors: threads t < R - 3 NT take one more
     * batch, the others up to 4 single vectors (rows of NT vectors) */
    const int64_t rest = nv - cs->full * WALK_BATCH * NT;
    const char *tail_rows = cs->base + cs->full * WALK_BATCH * rs;
    const int with_batch = rest > (WALK_BATCH - 1) * NT ? (int)(rest - (WALK_BATCH - 1) * NT) : 0;
    for (int t = floats ? partial_batch(tail_rows, with_batch, dtype, kind, acc) : 0;
         t < with_batch; t++)
        acc[t] = floats ? acc[t] + group_value(tail_rows + (int64_t)t * VEC_BYTES, rs, WALK_BATCH,
                                               dtype, kind)
                        : group_elements(acc[t], tail_rows + (int64_t)t * VEC_BYTES, rs,
                                         WALK_BATCH, dtype, kind, p);
    for (int j = 0; j < WALK_BATCH; j++) {
        const int64_t in_row = rest - (int64_t)j * NT;
        const int end = in_row >= NT ? NT : (int)(in_row > 0 ? in_row : 0);
        const char *row = tail_rows + j * rs;
        if (floats) {
            if (with_batch < end)
                single_rows(row, with_batch, end, dtype, kind, acc);
        } else {
            for (int t = with_batch; t < end; t++)
                acc[t] = group_elements(acc[t], row + (int64_t)t * VEC_BYTES, rs, 1, dtype, kind, p);
        }
    }
    for (int t = 0; t < cs->sp.tail; t++)
        acc[t] = gclip_term_add(acc[t], elem_f64(cs->base, dtype, nv * lanes + t), kind, p);
    return gclip_block_tree_cpu(acc, cs->slots);
}

/* The partial of the n elements from element `begin` of `data` for a sum
 * kind (L2, L1, P). Inlined with constant dtype and kind. */
ALWAYS_INLINE double gclip_chunk_sum(const void *data, int32_t dtype, int64_t begin, int64_t n,
                                     int32_t kind, float p)
{
    chunk_sum cs;
    chunk_sum_begin(&cs, data, dtype, begin, n);
    for (int64_t b = 0; b < cs.full; b++)
        chunk_sum_batch(&cs, b, dtype, kind, p);
    return chunk_sum_end(&cs, dtype, kind, p);
}

/* The partials of two chunks of the same dtype for L2/L1 of f32/f16/bf16
 * into out[0] and out[1]: each is gclip_chunk_sum's, bit for bit (every
 * accumulator takes the same additions in the same order), but the two
 * chunks' batches are read side by side, so the thread walks two
 * sequential streams instead of one (docs/benchmark.md, "Two chunks side
 * by side"). */
ALWAYS_INLINE void chunk_sum_pair(const void *const data[PAIR], const int64_t begin[PAIR],
                                  const int64_t n[PAIR], int32_t dtype, int32_t kind,
                                  double out[PAIR])
{
    chunk_sum cs[PAIR];
    for (int k = 0; k < PAIR; k++)
        chunk_sum_begin(&cs[k], data[k], dtype, begin[k], n[k]);
    int64_t both = cs[0].full;
    for (int k = 1; k < PAIR; k++)
        both = cs[k].full < both ? cs[k].full : both;
    const int64_t rs = (int64_t)NT * VEC_BYTES;
    for (int64_t b = 0; b < both; b++) {
        const char *rows[PAIR];
        double *accs[PAIR];
        for (int k = 0; k < PAIR; k++) {
            rows[k] = cs[k].base + b * WALK_BATCH * rs;
            accs[k] = cs[k].acc;
        }
        batch_rows_call(rows, PAIR, dtype, kind, accs);
    }
    for (int k = 0; k < PAIR; k++) {
        for (int64_t b = both; b < cs[k].full; b++)
            chunk_sum_batch(&cs[k], b, dtype, kind, 0.0f);
        out[k] = chunk_sum_end(&cs[k], dtype, kind, 0.0f);
    }
}

/* max|x| of n elements as an integer max of magnitude bits (order free, so
 * any order gives the kernel's result), NaN made canonical. */
ALWAYS_INLINE double gclip_chunk_max(const void *data, int32_t dtype, int64_t begin, int64_t n)
{
    if (dtype == GCLIP_F64) {
        const uint64_t *u = (const uint64_t *)data + begin;
        uint64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            m = gclip_max_bits64(m, u[i]);
        return gclip_max_bits64_value(m);
    }
    uint32_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            lane[j] = gclip_max_bits(lane[j], gclip_f32_bits(gclip_load(data, dtype, begin + i + j)));
    for (; i < n; i++)
        lane[0] = gclip_max_bits(lane[0], gclip_f32_bits(gclip_load(data, dtype, begin + i)));
    for (int j = 1; j < 8; j++)
        lane[0] = lane[j] > lane[0] ? lane[j] : lane[0];
    return gclip_max_bits_value(lane[0]);
}

/* ---- the read pass of a run of chunks (norm_cpu.c, norm_cpu_f16c.c) ---- */

/* gclip_chunk_sum for each dtype and sum kind, compiled once each
 * (OUT_OF_LINE above). */
#define CHUNK_SUM_OF(dt, k)                                                                \
    OUT_OF_LINE double chunk_sum_of_##dt##_##k(const void *data, int64_t begin, int64_t n, \
                                               float p)                                    \
    {                                                                                      \
        return gclip_chunk_sum(data, GCLIP_##dt, begin, n, GCLIP_KIND_##k, p);             \
    }
#define CHUNK_SUM_OF_DTYPE(dt) CHUNK_SUM_OF(dt, L2) CHUNK_SUM_OF(dt, L1) CHUNK_SUM_OF(dt, P)
CHUNK_SUM_OF_DTYPE(F32)
CHUNK_SUM_OF_DTYPE(F16)
CHUNK_SUM_OF_DTYPE(BF16)
CHUNK_SUM_OF_DTYPE(F64)

#define ACCUMULATE_KIND(dt)                                                     \
    switch (kind) {                                                             \
    case GCLIP_KIND_L2: return chunk_sum_of_##dt##_L2(data, begin, n, p);       \
    case GCLIP_KIND_L1: return chunk_sum_of_##dt##_L1(data, begin, n, p);       \
    case GCLIP_KIND_INF: return gclip_chunk_max(data, GCLIP_##dt, begin, n);    \
    default: return chunk_sum_of_##dt##_P(data, begin, n, p);                   \
    }

/* The partial of the n elements from `begin` of tensor t (a chunk's range). */
ALWAYS_INLINE double gclip_chunk_terms(const gclip_tensor_desc *t, int64_t begin, int64_t n,
                                       int32_t kind, float p)
{
    const void *data = t->data;
    switch (t->dtype) {
    case GCLIP_F32:
        ACCUMULATE_KIND(F32)
    case GCLIP_F16:
        ACCUMULATE_KIND(F16)
    case GCLIP_F64:
        ACCUMULATE_KIND(F64)
    default:
        ACCUMULATE_KIND(BF16)
    }
}


/* The partial of a chunk of whole vectors, at most NT of them, of
 * f32/f16/bf16 for L2/L1 (single_row_chunk with a constant dtype). */
ALWAYS_INLINE int whole_row_chunk(const char *row, int nv, const char *ahead, int32_t dtype,
                                  int32_t kind, double *out)
{
    switch (dtype) {
    case GCLIP_F32: return single_row_chunk(row, nv, ahead, GCLIP_F32, kind, out);
    case GCLIP_F16: return single_row_chunk(row, nv, ahead, GCLIP_F16, kind, out);
    default: return single_row_chunk(row, nv, ahead, GCLIP_BF16, kind, out);
    }
}

/* ---- requests ahead of a walk of small chunks (read and update passes) ---- */

typedef struct gclip_prefetch_cursor {
    uint32_t next; /* the first chunk not yet looked at */
    int64_t ahead; /* bytes looked at past the chunk being walked */
} gclip_prefetch_cursor;

/* One of the two halves of a run that the read and update passes walk at
 * once in a plan of more than GCLIP_CPU_PAIR_BYTES: the next chunk, the
 * end, the cursor of the requests ahead and the bytes done so far (which
 * the read pass balances the halves by). A run needs at least
 * GCLIP_TWO_WALKS_MIN chunks to be walked that way. */
typedef struct gclip_half_walk {
    uint32_t c, last;
    gclip_prefetch_cursor pc;
    int64_t done;
} gclip_half_walk;

#define GCLIP_TWO_WALKS_MIN 4

/* Before walking chunk c of a run ending at `last`, c of `bytes_c` bytes (0
 * when c is left untouched): the lines of the chunks up to `distance` bytes
 * past it requested into L2 (prefetcht1), each chunk found from its span
 * (gclip_cpu_span); a chunk larger than `largest` is left to the hardware
 * prefetchers but counts towards the distance. Under per-tensor factors
 * `factor` (then `chunks` gives each chunk's tensor), chunks that stay
 * untouched (factor 1) are neither requested nor counted. Inlined with
 * constant distance and size. */
ALWAYS_INLINE void gclip_prefetch_before(gclip_prefetch_cursor *pc, const gclip_cpu_span *spans,
                                         const gclip_chunk *chunks, uint32_t c, uint32_t last,
                                         const float *factor, int64_t bytes_c, int64_t distance,
                                         int64_t largest)
{
    if (pc->next <= c) { /* c itself, on the first call */
        pc->next = c;
        pc->ahead = 0;
    }
    for (; pc->next < last && pc->ahead < distance; pc->next++) {
        if (factor && factor[chunks[pc->next].tensor] == 1.0f)
            continue;
        const gclip_cpu_span sp = spans[pc->next];
        if (sp.bytes <= largest) {
            const char *line = (const char *)((uintptr_t)sp.start & ~(uintptr_t)63);
            for (; line < sp.start + sp.bytes; line += 64)
                gclip_request_line(line);
        }
        pc->ahead += sp.bytes;
    }
    pc->ahead -= bytes_c;
}

/* The read pass requests the lines of the next READ_AHEAD_BYTES of chunks of
 * at most READ_AHEAD_SMALL bytes into L2. A tensor of 100 f32 takes a few
 * hundred instructions for its 448 bytes: a thread walking such tensors
 * issues its loads too slowly for the hardware prefetchers to keep ahead
 * of it, and waits on most lines. Chunks of 1 KiB to 4 KiB, requested too,
 * went faster out of the caches and slower in them (docs/benchmark.md,
 * "Small chunks requested ahead, again"); those of whole vectors request
 * their successors as they go (WHOLE_ROW_AHEAD). The requests went into L1
 * (prefetcht0, 12 KiB ahead) until a 2-core Xeon read 100,000 tensors of
 * 100 f32 at 0.54-0.55 of a plain read that way, and at 0.65-0.67 with
 * prefetcht1 16 KiB ahead, the same from the caches (docs/benchmark.md,
 * "Whole-vector chunks request the next ones"). */
#define READ_AHEAD_BYTES 16384
#define READ_AHEAD_SMALL 1024

/* A partial, or the quiet NaN of positive sign if it is a NaN. Which NaN a
 * sum ends with is up to the compiler's choices, not the source: LLVM, for
 * one, turns fabs(x) * fabs(x) into x * x, and a NaN element's sign then
 * survives into its term in one inlined copy of the walk and not in another.
 * One NaN keeps a chunk's partial the same whether the chunk is read alone
 * or beside another, so the norm's bits do not depend on how the threads cut
 * the chunks into runs. */
ALWAYS_INLINE double one_nan(double v)
{
    if (v == v)
        return v;
    const uint64_t q = 0x7ff8000000000000ull;
    memcpy(&v, &q, sizeof v);
    return v;
}

/* Whether a chunk is read beside the next one (chunk_sum_pair): f32, f16
 * or bf16, and at least one batch of every thread. */
ALWAYS_INLINE int pair_chunk(gclip_cpu_span sp)
{
    return sp.dtype != GCLIP_F64 && sp.bytes >= (int64_t)(WALK_BATCH + 1) * NT * VEC_BYTES;
}

/* Whether a chunk is at most NT whole vectors of f32, f16 or bf16 (the
 * whole of a small tensor): its size in bytes is a multiple of VEC_BYTES.
 * Its start need not be: the vectors are counted from its first element
 * (gclip_split_elements) and read with unaligned loads. */
ALWAYS_INLINE int whole_row(gclip_cpu_span sp)
{
    return sp.dtype != GCLIP_F64 && sp.bytes % VEC_BYTES == 0 && sp.bytes <= NT * VEC_BYTES;
}

/* Whether a chunk is read by single_row_chunk's loop over its slots: 33 to
 * NT whole vectors (whole_row, and more than the 32 vectors kept in
 * registers). */
ALWAYS_INLINE int slot_row(gclip_cpu_span sp)
{
    return sp.bytes > 32 * VEC_BYTES && whole_row(sp);
}

/* Where a walk at chunk c of a run ending at `last` requests lines while it
 * reads or writes c, byte k of c going with the line of byte k from here:
 * `distance` bytes past c's start where the chunk it walks next starts
 * within them, or c is the run's last; else that next chunk's start. In a
 * plan of small tensors packed in one buffer the bytes past a chunk are
 * mostly the next ones; tensors allocated one by one have other data
 * between them. On 10,000 tensors of 1,000 f32 allocated by PyTorch one by
 * one, 9 KB apart, a clip_grad_norm_ call that writes nothing took 8.0 ms
 * on one thread (median of 8 processes, 5.7-12.6) where the bytes past each
 * chunk took 9.7 ms (8.8-10.7), host time included; on such tensors packed
 * 4,032 bytes apart, always the next chunk's start read at 0.94 of a plain
 * read where the bytes past took 1.00 (medians of 12 runs, 2 threads). */
ALWAYS_INLINE const char *gclip_walk_ahead(const gclip_cpu_span *spans, uint32_t c, uint32_t last,
                                           int64_t distance)
{
    const char *start = spans[c].start;
    /* the next chunk's distance from c's start, as unsigned: one that
     * starts before c wraps past `distance` */
    if (c + 1 < last && (uintptr_t)spans[c + 1].start - (uintptr_t)start > (uintptr_t)distance)
        return spans[c + 1].start;
    return start + distance;
}

/* Where the read pass requests lines while it reads chunk c by
 * single_row_chunk (gclip_walk_ahead). */
ALWAYS_INLINE const char *row_ahead(const gclip_cpu_span *spans, uint32_t c, uint32_t last)
{
    return gclip_walk_ahead(spans, c, last, WHOLE_ROW_AHEAD);
}

/* Whether chunks c .. c + PAIR - 1 are all in [c, last), pair_chunk and of
 * one dtype. */
ALWAYS_INLINE int pair_run(const gclip_cpu_span *spans, uint32_t c, uint32_t last)
{
    if (last - c < PAIR)
        return 0;
    for (int k = 0; k < PAIR; k++)
        if (!pair_chunk(spans[c + k]) || spans[c + k].dtype != spans[c].dtype)
            return 0;
    return 1;
}

/* The partials of chunks c and c + 1 (pair_chunk both, same dtype) into
 * out[0] and out[1], for L2/L1. */
ALWAYS_INLINE void read_pair(const gclip_plan *plan, uint32_t c, int32_t kind, double out[PAIR])
{
    const void *data[PAIR];
    int64_t begin[PAIR], n[PAIR];
    int32_t dtype = GCLIP_F32;
    for (int k = 0; k < PAIR; k++) {
        const gclip_tensor_desc *t = &plan->tensors[plan->chunks[c + k].tensor];
        gclip_chunk_range(t->numel, plan->chunks[c + k].index, &begin[k], &n[k]);
        data[k] = t->data;
        dtype = t->dtype;
    }
    switch (dtype) {
    case GCLIP_F32: chunk_sum_pair(data, begin, n, GCLIP_F32, kind, out); break;
    case GCLIP_F16: chunk_sum_pair(data, begin, n, GCLIP_F16, kind, out); break;
    default: chunk_sum_pair(data, begin, n, GCLIP_BF16, kind, out); break;
    }
    for (int k = 0; k < PAIR; k++)
        out[k] = one_nan(out[k]);
}

/* Chunk c's partial by the general walk (gclip_chunk_terms), any dtype and
 * kind, a NaN as one_nan gives it. */
ALWAYS_INLINE double general_partial(const gclip_plan *plan, uint32_t c, int32_t kind, float p)
{
    const gclip_tensor_desc *t = &plan->tensors[plan->chunks[c].tensor];
    int64_t begin, n;
    gclip_chunk_range(t->numel, plan->chunks[c].index, &begin, &n);
    return one_nan(gclip_chunk_terms(t, begin, n, kind, p));
}

/* The partial of chunk w->c into its slot (and of w->c + 1 when the two are
 * read as a pair of large chunks), w moved past them, for one kind. Chunks
 * of at most READ_AHEAD_SMALL bytes are requested READ_AHEAD_BYTES ahead; a
 * larger chunk gives the hardware time, and the cursor starts again after
 * it. A chunk of at most NT whole vectors of f32/f16/bf16, the whole of a
 * small tensor, is tested for first (whole_row). In a plan of more than
 * GCLIP_CPU_PAIR_BYTES, a large chunk is read beside the next one when both
 * are large (pair_run); the partials are the same either way. */
ALWAYS_INLINE void read_step(const gclip_plan *plan, gclip_half_walk *w, double *partials, int32_t kind,
                             float p)
{
    const gclip_cpu_state *st = plan->engine;
    const gclip_cpu_span *spans = st->spans;
    const uint32_t c = w->c;
    const gclip_cpu_span sp = spans[c];
    w->c = c + 1;
    w->done += sp.bytes;
    if (sp.bytes <= READ_AHEAD_SMALL)
        gclip_prefetch_before(&w->pc, spans, NULL, c, w->last, NULL, sp.bytes, READ_AHEAD_BYTES,
                              READ_AHEAD_SMALL);
    else
        w->pc.next = 0;
    const int sums = kind == GCLIP_KIND_L2 || kind == GCLIP_KIND_L1;
    if (sums && whole_row(sp) &&
        whole_row_chunk(sp.start, sp.bytes / VEC_BYTES, row_ahead(spans, c, w->last), sp.dtype,
                        kind, &partials[c]))
        return;
    if (sums && st->read_pairs && pair_run(spans, c, w->last)) {
        read_pair(plan, c, kind, &partials[c]);
        w->c = c + PAIR;
        w->done += spans[c + 1].bytes;
        return;
    }
    partials[c] = general_partial(plan, c, kind, p);
}

/* Whether a chunk is at most 32 whole vectors of f32, f16 or bf16 (the
 * whole of a tensor of at most 128 f32 or 256 halves): whole_row, read by
 * single_row_chunk with its groups in registers. */
ALWAYS_INLINE int tiny_row(gclip_cpu_span sp)
{
    return sp.bytes <= 32 * VEC_BYTES && whole_row(sp);
}

/* How far one half of a run goes on by itself through tiny_row chunks past
 * the bytes the other half has read (read_chunks_kind): the two halves
 * still read two streams, in turns of a few kilobytes. */
#define TINY_TURN_BYTES 4096

/* The partials of w's chunks from w->c on, into their slots, w moved past
 * them: the first chunk (tiny_row, of `dtype`) and those after it that are
 * tiny_row and of `dtype` too, as long as w has read at most `limit` bytes
 * before each. Each is read as read_step reads it: its lines requested
 * READ_AHEAD_BYTES ahead, then single_row_chunk, or the general walk for a
 * chunk with a group outside the safe range; the partials are the same. A
 * tensor of 100 f32 took 295 instructions through read_step, a third of
 * them to find the chunk, keep the two halves' books and choose its path,
 * and two threads read such tensors out of L3 hardly faster than out of
 * memory; inlined with a constant dtype and kind, this loop keeps its few
 * values in registers, and takes 229 (docs/benchmark.md, "Tiny tensors: a
 * loop of their own"). */
ALWAYS_INLINE void tiny_rows(const gclip_plan *plan, gclip_half_walk *w, int64_t limit,
                             double *partials, int32_t dtype, int32_t kind)
{
    const gclip_cpu_span *spans = ((const gclip_cpu_state *)plan->engine)->spans;
    uint32_t c = w->c;
    const uint32_t last = w->last;
    int64_t done = w->done;
    gclip_prefetch_cursor pc = w->pc;
    do {
        const gclip_cpu_span sp = spans[c];
        done += sp.bytes;
        gclip_prefetch_before(&pc, spans, NULL, c, last, NULL, sp.bytes, READ_AHEAD_BYTES,
                              READ_AHEAD_SMALL);
        if (!single_row_chunk(sp.start, sp.bytes / VEC_BYTES, NULL, dtype, kind, &partials[c]))
            partials[c] = general_partial(plan, c, kind, 0.0f);
        c++;
    } while (c < last && done <= limit && tiny_row(spans[c]) && spans[c].dtype == dtype);
    w->c = c;
    w->done = done;
    w->pc = pc;
}

/* tiny_rows for f32/f16/bf16 and L2/L1, compiled once for each
 * (OUT_OF_LINE). */
#define TINY_ROWS_OF(dt, k)                                                                \
    OUT_OF_LINE void tiny_rows_##dt##_##k(const gclip_plan *plan, gclip_half_walk *w,    \
                                          int64_t limit, double *partials)                 \
    {                                                                                      \
        tiny_rows(plan, w, limit, partials, GCLIP_##dt, GCLIP_KIND_##k);                   \
    }
#define TINY_ROWS_OF_DTYPE(dt) TINY_ROWS_OF(dt, L2) TINY_ROWS_OF(dt, L1)
TINY_ROWS_OF_DTYPE(F32)
TINY_ROWS_OF_DTYPE(F16)
TINY_ROWS_OF_DTYPE(BF16)

/* tiny_rows of w, whose chunk w->c is tiny_row, for L2 or L1. */
ALWAYS_INLINE void tiny_rows_call(const gclip_plan *plan, gclip_half_walk *w, int64_t limit,
                                  double *partials, int32_t dtype, int32_t kind)
{
#define TINY_ROWS_CALL(k)                                                                  \
    switch (dtype) {                                                                       \
    case GCLIP_F32: tiny_rows_F32_##k(plan, w, limit, partials); break;                   \
    case GCLIP_F16: tiny_rows_F16_##k(plan, w, limit, partials); break;                   \
    default: tiny_rows_BF16_##k(plan, w, limit, partials); break;                         \
    }
    if (kind == GCLIP_KIND_L2)
        TINY_ROWS_CALL(L2)
    else
        TINY_ROWS_CALL(L1)
#undef TINY_ROWS_CALL
}

/* The partials of chunk a->c and b->c, slot_row both and of one dtype, read
 * side by side (single_row_pair); a chunk with a group outside the safe
 * range is read again alone by the general walk. */
ALWAYS_INLINE void read_row_pair(const gclip_plan *plan, gclip_half_walk *a, gclip_half_walk *b,
                                 double *partials, int32_t kind, float p)
{
    const gclip_cpu_span *spans = ((const gclip_cpu_state *)plan->engine)->spans;
    const uint32_t c[2] = {a->c, b->c};
    const gclip_cpu_span sa = spans[c[0]], sb = spans[c[1]];
    const char *ahead_a = row_ahead(spans, c[0], a->last);
    const char *ahead_b = row_ahead(spans, c[1], b->last);
    double out[2];
    int ok[2];
    switch (sa.dtype) {
    case GCLIP_F32:
        single_row_pair(sa.start, sa.bytes / VEC_BYTES, sb.start, sb.bytes / VEC_BYTES, ahead_a,
                        ahead_b, GCLIP_F32, kind, out, ok);
        break;
    case GCLIP_F16:
        single_row_pair(sa.start, sa.bytes / VEC_BYTES, sb.start, sb.bytes / VEC_BYTES, ahead_a,
                        ahead_b, GCLIP_F16, kind, out, ok);
        break;
    default:
        single_row_pair(sa.start, sa.bytes / VEC_BYTES, sb.start, sb.bytes / VEC_BYTES, ahead_a,
                        ahead_b, GCLIP_BF16, kind, out, ok);
        break;
    }
    for (int k = 0; k < 2; k++) {
        if (ok[k]) {
            partials[c[k]] = out[k];
            continue;
        }
        partials[c[k]] = general_partial(plan, c[k], kind, p);
    }
    a->c++;
    b->c++;
    a->done += sa.bytes;
    b->done += sb.bytes;
    a->pc.next = 0;
    b->pc.next = 0;
}

/* The partial of each chunk of [first, last) into its slot, for one kind
 * (inlined with a constant kind), each chunk found from its span. In a plan
 * of more than GCLIP_CPU_PAIR_BYTES, the sums walk the run as two halves at
 * once, so that a thread reads two streams of memory where one chunk after
 * the other would be one: where both halves are at a chunk of 33 to NT
 * whole vectors of one dtype (a small tensor, slot_row), the two are read
 * side by side (read_row_pair); otherwise the half with fewer bytes read
 * goes on by one chunk (read_step), the one not at such a chunk first, or
 * through its run of chunks of at most 32 whole vectors (tiny_rows).
 * Every chunk's partial is the one it gets read alone. 10,000 tensors of
 * 1,000 f32 read at 0.77-0.78 of a plain read from memory one after the
 * other, at 0.83-0.87 this way (docs/benchmark.md, "Small tensors in two
 * streams a thread"). */
ALWAYS_INLINE void read_chunks_kind(const gclip_plan *plan, uint32_t first, uint32_t last,
                                    double *partials, int32_t kind, float p)
{
    const gclip_cpu_state *st = plan->engine;
    const gclip_cpu_span *spans = st->spans;
    const int sums = kind == GCLIP_KIND_L2 || kind == GCLIP_KIND_L1;
    gclip_half_walk h[2] = {{first, last, {first, 0}, 0}, {last, last, {last, 0}, 0}};
    gclip_half_walk *const a = &h[0], *const b = &h[1];
    if (sums && st->read_pairs && last - first >= GCLIP_TWO_WALKS_MIN) {
        const uint32_t mid = first + (last - first) / 2;
        a->last = mid;
        b->c = b->pc.next = mid;
    }
    /* One call site of read_step, so that it is inlined once: first while
     * both halves have chunks left, then each half to its end. */
    for (int k = 0; k < 2;) {
        gclip_half_walk *w;
        if (a->c < a->last && b->c < b->last) {
            const gclip_cpu_span sa = spans[a->c], sb = spans[b->c];
            const int ra = slot_row(sa), rb = slot_row(sb);
            if (ra && rb && sa.dtype == sb.dtype) {
                read_row_pair(plan, a, b, partials, kind, p);
                continue;
            }
            w = ra != rb ? (ra ? b : a) : a->done <= b->done ? a : b;
        } else if (h[k].c < h[k].last) {
            w = &h[k];
        } else {
            k++;
            continue;
        }
        const gclip_cpu_span sw = spans[w->c];
        if (sums && tiny_row(sw)) {
            const gclip_half_walk *o = w == a ? b : a;
            const int64_t limit = o->c < o->last ? o->done + TINY_TURN_BYTES : INT64_MAX;
            tiny_rows_call(plan, w, limit, partials, sw.dtype, kind);
            continue;
        }
        read_step(plan, w, partials, kind, p);
    }
}

/* read_chunks_kind for each kind, compiled once each (OUT_OF_LINE). */
#define READ_CHUNKS_OF(k)                                                              \
    OUT_OF_LINE void read_chunks_of_##k(const gclip_plan *plan, uint32_t first,        \
                                        uint32_t last, double *partials, float p)      \
    {                                                                                  \
        read_chunks_kind(plan, first, last, partials, GCLIP_KIND_##k, p);              \
    }
READ_CHUNKS_OF(L2)
READ_CHUNKS_OF(L1)
READ_CHUNKS_OF(INF)
READ_CHUNKS_OF(P)

/* The partial of each chunk of [first, last) into its slot. */
ALWAYS_INLINE void gclip_read_chunks(const gclip_plan *plan, uint32_t first, uint32_t last,
                                     const void *arg)
{
    const gclip_read_arg *a = arg;
    double *out = a->partials;
    switch (a->kind) {
    case GCLIP_KIND_L2: read_chunks_of_L2(plan, first, last, out, a->p); break;
    case GCLIP_KIND_L1: read_chunks_of_L1(plan, first, last, out, a->p); break;
    case GCLIP_KIND_INF: read_chunks_of_INF(plan, first, last, out, a->p); break;
    default: read_chunks_of_P(plan, first, last, out, a->p); break;
    }
}

/* Multiply n elements by f, or clamp them to [-f, f], as STREAMS parts in
 * lockstep like the read pass. Inlined with constant dtype and clamp, so
 * each combination is its own vectorized loop. f is a float factor (exact
 * in double) or the value clip's bound: f64 elements are updated in double
 * against f itself; f32, f16 and bf16 in float against the float nearest f
 * (f16/bf16 rounded back to their type). */
ALWAYS_INLINE void gclip_walk_update_one(void *data, int32_t dtype, int64_t k, int clamp, double f)
{
    if (dtype == GCLIP_F64) {
        double *x = data;
        x[k] = clamp ? gclip_clamp_f64(x[k], f) : x[k] * f;
        return;
    }
    const float x = gclip_load(data, dtype, k);
    gclip_store(data, dtype, k, clamp ? gclip_clamp(x, (float)f) : x * (float)f);
}

ALWAYS_INLINE void gclip_walk_update(void *data, int32_t dtype, int64_t begin, int64_t n,
                                     int clamp, double f)
{
    if (n * gclip_dtype_size(dtype) <= ONE_STREAM_BYTES) {
        int64_t i = begin;
        for (; i + LANES <= begin + n; i += LANES)
            for (int j = 0; j < LANES; j++)
                gclip_walk_update_one(data, dtype, i + j, clamp, f);
        for (; i < begin + n; i++)
            gclip_walk_update_one(data, dtype, i, clamp, f);
        return;
    }
    const int64_t part = n / (STREAMS * LANES) * LANES;
    for (int64_t i = begin; i < begin + part; i += LANES)
        for (int s = 0; s < STREAMS; s++)
            for (int j = 0; j < LANES; j++)
                gclip_walk_update_one(data, dtype, i + s * part + j, clamp, f);
    for (int64_t k = begin + STREAMS * part; k < begin + n; k++)
        gclip_walk_update_one(data, dtype, k, clamp, f);
}

#endif /* GCLIP_CPU_WALK_H */
