/*
 * scale_cpu.c - the CPU twin of kernels/scale_kernel.cu: multiply the
 * gradients in place by the factor of the op (the slot's, each tensor's, or
 * that of a given norm); chunks whose factor is exactly 1 are not touched.
 * Also the element update clamp_cpu.c uses (gclip_update_run_cpu).
 *
 * On x86 CPUs with AVX2 and F16C, f16 and bf16 chunks are updated with
 * explicit vector code that gives the bits of the scalar conversions of
 * kernels/gclip_dtype.h for every input (tests/cpu/test_dtype_conversion.cpp
 * runs every 16-bit value through both): a scale converts to float and
 * back, a clamp works on the bits alone. The compiler turned the generic
 * 16-bit loops into branchy scalar code, 3 to 10 times slower than memory on
 * 2 cores.
 */
#include <math.h>
#include <stdatomic.h>

#include "cpu_walk.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define GCLIP_F16C_PATH 1
#endif

#ifdef GCLIP_F16C_PATH
/* The rounding of gclip_f32_to_bf16 on eight lanes, left in the high half
 * of each lane (the low half is what rounding carried past; NaN is not
 * looked at). */
__attribute__((target("avx2"))) static __m256i bf16_round_high(__m256 v)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
}

/* gclip_f32_to_bf16 on eight lanes, each result in the low half of its lane. */
__attribute__((target("avx2"))) static __m256i bf16_round_avx2(__m256 v)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i rounded = _mm256_srli_epi32(bf16_round_high(v), 16);
    const __m256i nan = _mm256_set1_epi32(0x7fff); /* the canonical bf16 NaN */
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                              _mm256_set1_epi32(0x7f800000));
    return _mm256_blendv_epi8(rounded, nan, is_nan);
}

/* vcvtps2ph of eight floats, every NaN made the canonical f16 NaN 0x7fff
 * (vcvtps2ph itself keeps the sign and the high payload bits). */
#define GCLIP_RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
__attribute__((target("avx2,f16c"))) static __m128i f16_round_f16c(__m256 v)
{
    const __m128i h = _mm256_cvtps_ph(v, GCLIP_RNE);
    const __m256i m = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m128i m16 = _mm_packs_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    return _mm_blendv_epi8(h, _mm_set1_epi16(0x7fff), m16);
}

/* Where the canonical NaN goes in a scale of halves (walk_scale_half). */
#define HALF_NAN_FROM_ELEMENTS 1 /* where an element is NaN */
#define HALF_NAN_FROM_RESULTS 0  /* where a result is NaN */

/* r with the canonical NaN 0x7fff where the half h (whose Inf has the bits
 * `inf`) is NaN: its magnitude bits are above Inf's. */
__attribute__((target("avx2"))) static inline __m256i half_nan_where(__m256i r, __m256i h,
                                                                     __m256i inf)
{
    const __m256i magmask = _mm256_set1_epi16(0x7fff);
    return _mm256_blendv_epi8(r, magmask, _mm256_cmpgt_epi16(_mm256_and_si256(h, magmask), inf));
}

/* Sixteen f16 elements times fv with the F16C conversions: vcvtph2ps is
 * exact for numbers, and vcvtps2ph with round-to-nearest-even gives the
 * bits of gclip_f32_to_f16 for every float once NaN is made canonical
 * (tests/cpu/test_dtype_conversion.cpp checks every pattern). The generic
 * loop's software conversions cost about 4x the memory time of f16 data on
 * 2 cores. */
__attribute__((target("avx2,f16c"), always_inline)) static inline __m256i
f16_scale16(__m256i h, __m256 fv, int nan_from)
{
    const __m256 lo = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), fv);
    const __m256 hi = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), fv);
    if (nan_from == HALF_NAN_FROM_RESULTS)
        return _mm256_inserti128_si256(_mm256_castsi128_si256(f16_round_f16c(lo)),
                                       f16_round_f16c(hi), 1);
    const __m256i r = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm256_cvtps_ph(lo, GCLIP_RNE)),
                                              _mm256_cvtps_ph(hi, GCLIP_RNE), 1);
    return half_nan_where(r, h, _mm256_set1_epi16(0x7c00));
}

/* Sixteen bf16 elements times fv. A shift left by 16 makes the even
 * elements the floats they stand for, a mask of the high halves the odd
 * ones; after the multiply and the rounding the odd results are in place
 * and the even ones are shifted back, so one 16-bit blend puts all sixteen
 * in their order (no unpacking and packing). */
__attribute__((target("avx2,f16c"), always_inline)) static inline __m256i
bf16_scale16(__m256i h, __m256 fv, int nan_from)
{
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    const __m256 even = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(h, 16)), fv);
    const __m256 odd = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_and_si256(h, high)), fv);
    if (nan_from == HALF_NAN_FROM_RESULTS)
        return _mm256_blend_epi16(bf16_round_avx2(even), _mm256_slli_epi32(bf16_round_avx2(odd), 16),
                                  0xaa);
    const __m256i r = _mm256_blend_epi16(_mm256_srli_epi32(bf16_round_high(even), 16),
                                         bf16_round_high(odd), 0xaa);
    return half_nan_where(r, h, _mm256_set1_epi16(0x7f80));
}

/* How far ahead of itself each stream of a 16-bit update requests its
 * lines (prefetcht0, one request per 64-byte line). The conversions of a
 * scale of halves take about three quarters of the time its bytes take to
 * come from memory on one core, and without the requests the two hardly
 * overlapped: on a 2-core Xeon (AVX-512, run here on AVX2) the scale of
 * 1 GiB of bf16 moved 36 GB/s against 58 for f32, and 47-48 GB/s with them
 * (docs/benchmark.md, "The 16-bit update pass: requests ahead"). */
#define HALF_AHEAD_BYTES 1024

/* The request of stream p at element `done` of its part: once per 32
 * elements (a 64-byte line), and only when there are several streams (one
 * stream is a small chunk's, requested by update_run, or the rest of a
 * large one). */
ALWAYS_INLINE void half_request_ahead(const void *p, int streams, int64_t done)
{
    if (streams > 1 && !(done & 31))
        _mm_prefetch((const char *)p + HALF_AHEAD_BYTES, _MM_HINT_T0);
}

/* The first `streams` * part elements from `begin`, as that many parts in
 * lockstep, sixteen at a time (inlined with constant streams, bf16 and
 * nan_from, so each loop has no test in it but half_request_ahead's). */
__attribute__((target("avx2,f16c"), always_inline)) static inline void
scale_half_parts(uint16_t *x, int64_t begin, int64_t part, int streams, __m256 fv, int bf16,
                 int nan_from)
{
    for (int64_t i = begin; i < begin + part; i += 16)
        for (int s = 0; s < streams; s++) {
            __m256i *p = (__m256i *)(x + i + s * part);
            half_request_ahead(p, streams, i - begin);
            const __m256i h = _mm256_loadu_si256(p);
            _mm256_storeu_si256(p, bf16 ? bf16_scale16(h, fv, nan_from) : f16_scale16(h, fv, nan_from));
        }
}

/* How n halves are walked sixteen at a time: STREAMS lockstep parts of
 * *part elements, then *rest elements in one stream after them (all of a
 * chunk of fewer than 16 STREAMS elements or of at most ONE_STREAM_BYTES).
 * Returns STREAMS * part + rest; the elements from there go through the
 * scalar conversions. */
static inline int64_t half_split(int64_t n, int64_t *part, int64_t *rest)
{
    /* a chunk of at most ONE_STREAM_BYTES is one stream, as in
     * gclip_walk_update: update_run has requested its lines already */
    *part = n * 2 <= ONE_STREAM_BYTES ? 0 : n / (STREAMS * 16) * 16;
    *rest = (n - STREAMS * *part) / 16 * 16;
    return STREAMS * *part + *rest;
}

/* The elements half_split walks sixteen at a time, from `begin`. Returns
 * how many. */
__attribute__((target("avx2,f16c"), always_inline)) static inline int64_t
scale_half_span(uint16_t *x, int64_t begin, int64_t n, __m256 fv, int bf16, int nan_from)
{
    int64_t part, rest;
    const int64_t done = half_split(n, &part, &rest);
    scale_half_parts(x, begin, part, STREAMS, fv, bf16, nan_from);
    scale_half_parts(x, begin + STREAMS * part, rest, 1, fv, bf16, nan_from);
    return done;
}

/* n f16 or bf16 elements from `begin` times f. With a finite nonzero
 * factor a result is NaN exactly where the element is, so the canonical NaN
 * is placed from the elements' bits (one test per sixteen, not one per
 * eight results); any other factor takes the test on the results. */
__attribute__((target("avx2,f16c"))) static void walk_scale_half(uint16_t *x, int32_t dtype,
                                                                 int64_t begin, int64_t n, float f)
{
    const __m256 fv = _mm256_set1_ps(f);
    const int bf16 = dtype == GCLIP_BF16;
    int64_t done;
    if (f != 0.0f && f - f == 0.0f)
        done = bf16 ? scale_half_span(x, begin, n, fv, 1, HALF_NAN_FROM_ELEMENTS)
                    : scale_half_span(x, begin, n, fv, 0, HALF_NAN_FROM_ELEMENTS);
    else
        done = bf16 ? scale_half_span(x, begin, n, fv, 1, HALF_NAN_FROM_RESULTS)
                    : scale_half_span(x, begin, n, fv, 0, HALF_NAN_FROM_RESULTS);
    for (int64_t k = begin + done; k < begin + n; k++)
        gclip_walk_update_one(x, dtype, k, 0, f);
}

/* The clamp of f16 or bf16 elements on their bits, sixteen at a time
 * (clamp_half_parts, as scale_half_parts). An element beyond [-v, v]
 * becomes v or -v rounded to the dtype; the halves' magnitudes are ordered
 * like their bits, so comparing them with the bits `top` of |v| rounded
 * gives the same result: no half lies strictly between |v| and `top`, and
 * an element equal to `top` is what clamping would make it. A NaN becomes
 * the canonical NaN 0x7fff. These are the bits gclip_clamp and the scalar
 * conversions give, with no conversion to float and back.
 *
 * For v >= +0 the result is the element's sign over the smaller of its
 * magnitude and `top` (an unsigned 16-bit min), and NaN's mask puts 0x7fff
 * in its place: seven one-micro-op instructions per sixteen elements, where
 * three byte blends (two or three micro-ops each) held the clamp of halves
 * below the memory's speed (docs/benchmark.md, "The value clamp as min and
 * max"). v = -0 sends positive elements to -0 and negative ones to +0, as
 * the contract's comparisons do: the sign flips where the magnitude is
 * above 0, which the blend form (`neg_zero`) handles. */
__attribute__((target("avx2"), always_inline)) static inline __m256i
clamp_half16(__m256i h, __m256i top, __m256i above, __m256i below, __m256i inf, int neg_zero)
{
    const __m256i magmask = _mm256_set1_epi16(0x7fff);
    const __m256i mag = _mm256_and_si256(h, magmask);
    const __m256i nan = _mm256_cmpgt_epi16(mag, inf);
    if (neg_zero) {
        const __m256i bound = _mm256_blendv_epi8(above, below, _mm256_srai_epi16(h, 15));
        const __m256i r = _mm256_blendv_epi8(h, bound, _mm256_cmpgt_epi16(mag, top));
        return _mm256_blendv_epi8(r, magmask, nan);
    }
    /* the sign where h is not NaN; the magnitude, all ones where it is */
    const __m256i sign = _mm256_andnot_si256(nan, _mm256_andnot_si256(magmask, h));
    const __m256i m = _mm256_or_si256(_mm256_min_epu16(mag, top), nan);
    return _mm256_or_si256(sign, _mm256_and_si256(m, magmask));
}

/* The clamp of the first `streams` * part elements from `begin`, as that
 * many parts in lockstep (inlined with constant streams and neg_zero), each
 * stream requesting its lines ahead as scale_half_parts does. */
__attribute__((target("avx2"), always_inline)) static inline void
clamp_half_parts(uint16_t *x, int64_t begin, int64_t part, int streams, __m256i top,
                 __m256i above, __m256i below, __m256i inf, int neg_zero)
{
    for (int64_t i = begin; i < begin + part; i += 16)
        for (int s = 0; s < streams; s++) {
            __m256i *p = (__m256i *)(x + i + s * part);
            half_request_ahead(p, streams, i - begin);
            const __m256i h = _mm256_loadu_si256(p);
            _mm256_storeu_si256(p, clamp_half16(h, top, above, below, inf, neg_zero));
        }
}

__attribute__((target("avx2"), always_inline)) static inline int64_t
clamp_half_span(uint16_t *x, int64_t n, __m256i top, __m256i above, __m256i below, __m256i inf,
                int neg_zero)
{
    int64_t part, rest;
    const int64_t done = half_split(n, &part, &rest);
    clamp_half_parts(x, 0, part, STREAMS, top, above, below, inf, neg_zero);
    clamp_half_parts(x, STREAMS * part, rest, 1, top, above, below, inf, neg_zero);
    return done;
}

__attribute__((target("avx2"))) static void walk_clamp_half_avx2(uint16_t *x, int32_t dtype,
                                                                 int64_t n, float v)
{
    const int f16 = dtype == GCLIP_F16;
    const float a = v + 0.0f; /* |v|: v >= 0 or -0, made +0 */
    const uint16_t top = f16 ? gclip_f32_to_f16(a) : gclip_f32_to_bf16(a);
    const __m256i inf = _mm256_set1_epi16((short)(f16 ? 0x7c00 : 0x7f80));
    const __m256i topv = _mm256_set1_epi16((short)top);
    const __m256i above = _mm256_set1_epi16((short)(f16 ? gclip_f32_to_f16(v) : gclip_f32_to_bf16(v)));
    const __m256i below = _mm256_set1_epi16((short)(f16 ? gclip_f32_to_f16(-v) : gclip_f32_to_bf16(-v)));
    const int64_t done = signbit(v) ? clamp_half_span(x, n, topv, above, below, inf, 1)
                                    : clamp_half_span(x, n, topv, above, below, inf, 0);
    for (int64_t k = done; k < n; k++)
        gclip_walk_update_one(x, dtype, k, 1, v);
}

int gclip_cpu_has_f16c(void)
{
    /* asked once (cpuid traps to the hypervisor in a VM); relaxed atomics:
     * every thread that asks stores the same answer */
    static _Atomic int known = -1;
    int k = atomic_load_explicit(&known, memory_order_relaxed);
    if (k < 0) {
        /* F16C is CPUID.1:ECX bit 29 (not every compiler's
         * __builtin_cpu_supports knows its name); AVX2 also says that the
         * system saves the 32-byte registers */
        unsigned a, b, c, d;
        k = __builtin_cpu_supports("avx2") && __get_cpuid(1, &a, &b, &c, &d) && ((c >> 29) & 1u);
        atomic_store_explicit(&known, k, memory_order_relaxed);
    }
    return k;
}
#endif

#define UPDATE_DTYPE(clamp)                                                        \
    do {                                                                           \
        switch (dtype) {                                                           \
        case GCLIP_F32: gclip_walk_update(data, GCLIP_F32, 0, n, clamp, f); break;   \
        case GCLIP_F16: gclip_walk_update(data, GCLIP_F16, 0, n, clamp, f); break;   \
        case GCLIP_F64: gclip_walk_update(data, GCLIP_F64, 0, n, clamp, f); break;   \
        default: gclip_walk_update(data, GCLIP_BF16, 0, n, clamp, f); break;         \
        }                                                                          \
    } while (0)

/* The elements of one chunk, found from its span. f is a float factor, or
 * the value clip's bound: f64 elements are clamped to it, the others to the
 * float nearest it. */
ALWAYS_INLINE void update_chunk(gclip_cpu_span sp, int clamp, double f)
{
    void *data = sp.start;
    const int32_t dtype = sp.dtype;
    const int64_t n = sp.bytes / gclip_dtype_size(dtype);
#ifdef GCLIP_F16C_PATH
    if (clamp && (dtype == GCLIP_F16 || dtype == GCLIP_BF16) && gclip_cpu_has_f16c()) {
        walk_clamp_half_avx2(data, dtype, n, (float)f);
        return;
    }
    if ((dtype == GCLIP_F16 || dtype == GCLIP_BF16) && gclip_cpu_has_f16c()) {
        walk_scale_half(data, dtype, 0, n, (float)f);
        return;
    }
#endif
    if (clamp)
        UPDATE_DTYPE(1);
    else
        UPDATE_DTYPE(0);
}

/* Small chunks are walked one after another, each a short sequential
 * stream. The update pass keeps the lines of the next PREFETCH_AHEAD bytes
 * of chunks it will write requested into L2 (gclip_prefetch_before): the
 * chunks it walks as one stream (at most ONE_STREAM_BYTES, cpu_walk.h); a
 * larger chunk is left to the hardware but counts towards the distance.
 * prefetcht1 measured faster than prefetcht0 and than prefetchw
 * (docs/benchmark.md, "Prefetching into L2"). The read pass has its own
 * distance and size (READ_AHEAD_BYTES, cpu_walk.h). */
#define PREFETCH_AHEAD 8192

/* Whether a clamp to [-f, f] can change a chunk of `dtype`: not where the
 * bound it is compared with (the double for f64, the float nearest it for
 * the others) is +Inf. Such a chunk is left alone, NaN payloads included
 * (a half's NaN is written back as the canonical NaN). */
ALWAYS_INLINE int clamp_touches(int32_t dtype, double f)
{
    return dtype == GCLIP_F64 ? f != INFINITY : (float)f != INFINITY;
}

/* Chunk w->c's factor (a global factor is never 1 here: the step returns
 * before) and whether it is written (*touched); with `request`, the lines
 * of the chunks ahead requested (gclip_prefetch_before). */
ALWAYS_INLINE double update_begin(const gclip_plan *plan, gclip_half_walk *w, int clamp, double f,
                                  const float *factor, int request, int *touched)
{
    const gclip_chunk *chunks = plan->chunks;
    const gclip_cpu_span *spans = ((const gclip_cpu_state *)plan->engine)->spans;
    const uint32_t c = w->c;
    const double fc = clamp || !factor ? f : (double)factor[chunks[c].tensor];
    *touched = clamp ? clamp_touches(spans[c].dtype, f) : fc != 1.0;
    if (request)
        gclip_prefetch_before(&w->pc, spans, chunks, c, w->last, clamp ? NULL : factor,
                              *touched ? spans[c].bytes : 0, PREFETCH_AHEAD, ONE_STREAM_BYTES);
    return fc;
}

/* Chunk w->c updated, w moved past it. */
ALWAYS_INLINE void update_step(const gclip_plan *plan, gclip_half_walk *w, int clamp, double f,
                               const float *factor)
{
    const gclip_cpu_span sp = ((const gclip_cpu_state *)plan->engine)->spans[w->c];
    int touched;
    const double fc = update_begin(plan, w, clamp, f, factor, 1, &touched);
    if (touched)
        update_chunk(sp, clamp, fc);
    w->c++;
}

/* Whether a chunk is updated side by side with another (update_pair): f32
 * of at most ONE_STREAM_BYTES. */
ALWAYS_INLINE int pair_update_chunk(gclip_cpu_span sp)
{
    return sp.dtype == GCLIP_F32 && sp.bytes <= ONE_STREAM_BYTES;
}

/* How far ahead of its writes a pair of chunks updated side by side
 * requests lines into L2: with each 128 bytes of each chunk, the two lines
 * this many bytes on (in a plan of such chunks packed in one buffer, mostly
 * the next ones), or those at the same offset in the chunk the walk writes
 * next where that one starts elsewhere (gclip_walk_ahead). The
 * chunk-by-chunk requests of the one-stream walk (PREFETCH_AHEAD) made the
 * pairs slower than no requests at all: 10,000 tensors of 1,000 f32 under
 * gclip_clip_grad_value at 0.82-0.83 of an in-place scale with them,
 * 0.91-0.93 with none, 0.95-0.96 with these (docs/benchmark.md, "The
 * update pass in two streams"). */
#define PAIR_AHEAD 4096

/* The f32 chunks of w->c and v->c updated side by side: 32 elements (128
 * bytes) of one, then 32 of the other, as long as both have 32 left, then
 * the rest of each. Every element gets the operation it gets alone. */
ALWAYS_INLINE void update_pair(const gclip_plan *plan, gclip_half_walk *w, gclip_half_walk *v, int clamp,
                               double f, const float *factor)
{
    const gclip_cpu_span *spans = ((const gclip_cpu_state *)plan->engine)->spans;
    const gclip_cpu_span sa = spans[w->c], sb = spans[v->c];
    int ta, tb;
    const float fa = (float)update_begin(plan, w, clamp, f, factor, 0, &ta);
    const float fb = (float)update_begin(plan, v, clamp, f, factor, 0, &tb);
    float *a = (float *)(void *)sa.start, *b = (float *)(void *)sb.start;
    const char *ahead_a = gclip_walk_ahead(spans, w->c, w->last, PAIR_AHEAD);
    const char *ahead_b = gclip_walk_ahead(spans, v->c, v->last, PAIR_AHEAD);
    const int64_t na = ta ? sa.bytes / 4 : 0, nb = tb ? sb.bytes / 4 : 0;
    const int64_t both = (na < nb ? na : nb) / 32 * 32;
    for (int64_t i = 0; i < both; i += 32) {
        gclip_request_line(ahead_a + 4 * i);
        gclip_request_line(ahead_a + 4 * i + 64);
        gclip_request_line(ahead_b + 4 * i);
        gclip_request_line(ahead_b + 4 * i + 64);
        for (int j = 0; j < 32; j++)
            gclip_walk_update_one(a, GCLIP_F32, i + j, clamp, fa);
        for (int j = 0; j < 32; j++)
            gclip_walk_update_one(b, GCLIP_F32, i + j, clamp, fb);
    }
    gclip_walk_update(a, GCLIP_F32, both, na - both, clamp, fa);
    gclip_walk_update(b, GCLIP_F32, both, nb - both, clamp, fb);
    w->c++;
    v->c++;
}

/* The run [first, last) walked as two halves at once (see update_run);
 * out of line, so that the one-walk loop of update_run compiles as it did
 * alone (with this inlined, GCC vectorized its clamp of 800-byte chunks
 * with lane permutes, at 2.4 times the time in the caches). */
OUT_OF_LINE CPU_CLONES void update_two_walks(const gclip_plan *plan, uint32_t first,
                                             uint32_t last, int clamp, double f,
                                             const float *factor)
{
    const gclip_cpu_state *st = plan->engine;
    const uint32_t mid = first + (last - first) / 2;
    gclip_half_walk a = {first, mid, {first, 0}, 0}, b = {mid, last, {mid, 0}, 0};
    while (a.c < a.last && b.c < b.last) {
        const int pa = pair_update_chunk(st->spans[a.c]), pb = pair_update_chunk(st->spans[b.c]);
        if (pa && pb)
            update_pair(plan, &a, &b, clamp, f, factor);
        else
            update_step(plan, pa ? &b : &a, clamp, f, factor);
    }
    while (a.c < a.last)
        update_step(plan, &a, clamp, f, factor);
    while (b.c < b.last)
        update_step(plan, &b, clamp, f, factor);
}

/* A run of chunks in one call, each chunk found from its span: the dtype
 * dispatch per chunk is inline, and the clone is chosen once per run rather
 * than once per chunk. In a plan of more than GCLIP_CPU_PAIR_BYTES the run
 * is walked as two halves at once (update_two_walks), much as the read
 * pass walks its runs (read_chunks_kind, cpu_walk.h): where both halves
 * are at an f32 chunk of at most ONE_STREAM_BYTES, the two are updated side
 * by side; otherwise the half not at such a chunk goes on by one chunk, the
 * first half where neither is. Large chunks are not taken from the two
 * halves in turn: a value clip of 100 tensors of 10^6 f32 that did so ran
 * at 0.70 of an in-place scale, 0.97-1.00 one half after the other. Each
 * half keeps its own requests ahead. static: GCC exports the ifunc of a
 * non-static target_clones function whatever its visibility. */
CPU_CLONES static void update_run(const gclip_plan *plan, uint32_t first, uint32_t last, int clamp,
                                  double f, const float *factor)
{
    const gclip_cpu_state *st = plan->engine;
    if (st->read_pairs && last - first >= GCLIP_TWO_WALKS_MIN) {
        if (clamp)
            update_two_walks(plan, first, last, 1, f, NULL);
        else
            update_two_walks(plan, first, last, 0, f, factor);
        return;
    }
    const gclip_chunk *chunks = plan->chunks;
    const gclip_cpu_span *spans = st->spans;
    gclip_prefetch_cursor pc = {first, 0};
    for (uint32_t c = first; c < last; c++) {
        /* a global factor is never 1 here (the step returns before) */
        const double fc = clamp || !factor ? f : (double)factor[chunks[c].tensor];
        const int touched = clamp ? clamp_touches(spans[c].dtype, f) : fc != 1.0;
        gclip_prefetch_before(&pc, spans, chunks, c, last, clamp ? NULL : factor,
                              touched ? spans[c].bytes : 0, PREFETCH_AHEAD, ONE_STREAM_BYTES);
        if (touched)
            update_chunk(spans[c], clamp, fc);
    }
}

void gclip_update_run_cpu(const gclip_plan *plan, uint32_t first, uint32_t last, int clamp,
                          double f, const float *factor)
{
    update_run(plan, first, last, clamp, f, factor);
}

/* The factor of the whole plan under a global op (1 = nothing to write);
 * updates the slot where the op owns it, as the kernel's blocks do. */
static float global_factor(gclip_cpu_state *st, const gclip_norm_params *np)
{
    switch (np->op) {
    case GCLIP_OP_CLIP_WITH_NORM:
        gclip_given_norm_slot(np, st->result.sequence, &st->result);
        return st->result.scale;
    case GCLIP_OP_APPLY: {
        const float f = gclip_factor_pending(&st->result) ? st->result.scale : 1.0f;
        gclip_applied_slot(&st->result);
        return f;
    }
    default: /* GCLIP_OP_CLIP_NORM */
        return st->result.scale;
    }
}

typedef struct scale_arg {
    float global;        /* the factor of a global op */
    const float *factor; /* or each tensor's */
} scale_arg;

static void scale_run(const gclip_plan *plan, uint32_t first, uint32_t last, const void *arg)
{
    const scale_arg *a = arg;
    gclip_update_run_cpu(plan, first, last, 0, a->global, a->factor);
}

void gclip_scale_cpu(gclip_plan *plan, const gclip_norm_params *np)
{
    gclip_cpu_state *st = plan->engine;
    const int per_tensor = np->op == GCLIP_OP_CLIP_PER_TENSOR;
    const scale_arg a = {per_tensor ? 1.0f : global_factor(st, np),
                         per_tensor ? st->tensor_factor : NULL};
    if (!per_tensor && a.global == 1.0f)
        return;
    gclip_cpu_walk_chunks(plan, scale_run, &a, 1);
}
