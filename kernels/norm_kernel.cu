/*
 * norm_kernel.cu - the accumulate phase of a step (and, fused into it, the
 * finalize): the norm of every tensor of the plan in one launch.
 * CPU twin: host/norm_cpu.c.
 *
 * The work is the plan's chunk table (device memory, uploaded once at plan
 * creation, so the launch carries no per-tensor arguments and any number of
 * tensors of any mix of dtypes fits one launch). The grid is capped at plan
 * creation to what the device holds at once (gclip_launch_grid) and each
 * block walks a contiguous range of chunks (gclip_split_begin): every thread
 * accumulates its elements' norm terms (gclip_term_sum: float groups folded
 * into double, an integer max for the inf-norm), the block
 * reduces them and thread 0 stores the chunk's partial in partials[chunk].
 * Small chunks (at most one vector per thread) go a warp each, each warp
 * going on alone through its share of a window of 256 chunks and forming
 * exactly the accumulators and tree levels the block would (see "small
 * chunks" below). The slot is the
 * chunk's index and a chunk's partial has the same bits however it was
 * walked, so which block took which chunk never shows in a result: the
 * bits are the same for any grid. What a block pays once rather
 * than per chunk: its launch, the fence and the ticket (and, after its
 * walk, one more fence and the tickets of the fold lanes its range meets,
 * 1 to 3 on the plans of docs/gpu-launch.md, in flight together). The two
 * dependent table loads of a chunk are made for a window of 256 chunks at
 * once, one chunk a thread, so they are off each chunk's critical path.
 *
 * The finalize is fused in two passes (norm_finalize.cuh): after its walk,
 * the block that completes a fold lane's count folds that lane, and the
 * last block to take the norm ticket closes the lanes and writes the
 * result. Why not a separate one-block kernel: a clip step is then the norm
 * kernel plus the scale kernel, two launches whatever the tensor count, and
 * a norm-only step is one launch. A separate finalize kernel would add a
 * third launch (a few microseconds of launch latency and a dependent-kernel
 * gap on every step) for no gain in determinism: the finalize's order does
 * not depend on which block arrives last (see norm_finalize.cuh). The price
 * is one atomic per block on a ticket counter, and one per lane the block
 * meets on the lane's.
 *
 * The ticket counts modulo the grid (atomicInc wraps to 0 after grid - 1),
 * so every complete launch leaves it where it found it, with no reset and no
 * memset: the next step and every replay of a captured CUDA graph start from
 * 0. Even two launches of one plan that ran unordered (a misuse the stream
 * rule prevents) add two whole grids and leave it at 0, so one bad step
 * cannot poison every later one. The lanes' tickets count modulo the blocks
 * that meet the lane (gclip_fold_lane_blocks) in the same way.
 *
 * ---- kernels
 */
#include "block_reduce.cuh"
#include "chunk_walk.cuh"
#include "norm_finalize.cuh"

/* Accumulates the norm terms of the elements it is shown, one group at a
 * time (chunk_walk.cuh; docs/gpu-arithmetic.md). KIND is a template argument
 * so that each norm kind gets its own inner loop.
 *   L2, L1 of f32/f16/bf16: each group summed in float (gclip_group_tree_f32),
 *       converted once and added once to the double accumulator; a group
 *       outside the safe range is summed exactly in double instead.
 *   Inf: an integer max of magnitude bits (gclip_max_bits), no floating
 *       point at all; f16/bf16 compare their 16-bit magnitudes and convert
 *       one per group.
 *   P, and every kind of f64: each element added in double (gclip_term_add).
 * The CPU twin (host/cpu_walk.h) adds the same groups in the same order. */
template <int KIND>
struct gclip_term_sum {
    double acc;     /* L2, L1, P */
    uint32_t max32; /* Inf over f32/f16/bf16: float magnitude bits */
    uint64_t max64; /* Inf over f64 */
    float p;

    __device__ __forceinline__ void operator()(float x)
    {
        if constexpr (KIND == GCLIP_KIND_INF)
            max32 = gclip_max_bits(max32, gclip_f32_bits(x));
        else
            acc = gclip_term_add(acc, (double)x, KIND, p);
    }
    __device__ __forceinline__ void operator()(double x)
    {
        if constexpr (KIND == GCLIP_KIND_INF)
            max64 = gclip_max_bits64(max64, gclip_f64_bits(x));
        else
            acc = gclip_term_add(acc, x, KIND, p);
    }

    /* The group's value exactly (gclip_group_exact_add): its terms in double,
     * added in element order. The group is read again from memory (vector k
     * at src + k * stride), so that the common path need not keep the loaded
     * vectors alive; a group of zeros skips the arithmetic. */
    template <int DTYPE, int N, bool ALIGNED>
    __device__ __forceinline__ static double exact(const uint4 *src, int64_t stride)
    {
        typedef gclip_vec_traits<DTYPE> vt;
        if constexpr (!ALIGNED) {
            /* a group of a chunk that does not start on a 16-byte boundary
             * (aligned to its elements only): read element by element, each
             * element added as it is read (in element order, as below; a
             * group of zeros sums to +0 here too), which holds few
             * registers */
            double g = 0.0;
#if !defined(GCLIP_SIMT_EMULATION)
#pragma unroll 1
#endif
            for (int i = 0; i < vt::lanes * N; ++i) {
                const volatile void *e = src + (i / vt::lanes) * stride;
                const float x = DTYPE == GCLIP_F32
                                    ? ((const volatile float *)e)[i % vt::lanes]
                                    : gclip_half_to_f32<DTYPE>(((const volatile uint16_t *)e)[i % vt::lanes]);
                g = gclip_group_exact_add(g, x, KIND);
            }
            return g;
        }
        uint4 r[N];
        uint32_t any = 0;
        GCLIP_UNROLL
        for (int k = 0; k < N; ++k) {
            /* volatile: a load the compiler cannot merge with the first one */
            const volatile uint32_t *q = (const volatile uint32_t *)(src + k * stride);
            r[k].x = q[0];
            r[k].y = q[1];
            r[k].z = q[2];
            r[k].w = q[3];
            any |= (r[k].x | r[k].y | r[k].z | r[k].w) & (DTYPE == GCLIP_F32 ? 0x7fffffffu : 0x7fff7fffu);
        }
        double g = 0.0;
        if (any == 0) /* every element is +-0: the sum below is +0 too */
            return g;
        GCLIP_UNROLL
        for (int k = 0; k < N; ++k) {
            float x[vt::lanes];
            gclip_unpack<DTYPE>(r[k], x);
            GCLIP_UNROLL
            for (int j = 0; j < vt::lanes; ++j)
                g = gclip_group_exact_add(g, x[j], KIND);
        }
        return g;
    }

    /* The group of N (4 or 1) vectors at src + k * stride of a chunk that
     * does not start on a 16-byte boundary (src only names an address,
     * aligned to the elements: nothing is read through it as a 16-byte
     * type), read element by element, one vector after the other, and
     * folded as it is read: the value group() gives the same vectors. The
     * float tree's first level adds vectors k and k + 2 word by word, the
     * second the two results, so vectors 0 and 2, then 1 and 3, are taken
     * in turn and only one vector's loads are held at a time (a batch's
     * element-sized loads at once would not fit the kernel's 64
     * registers). */
    template <int DTYPE, int N>
    __device__ __forceinline__ void group_unaligned(const uint4 *src, int64_t stride)
    {
        typedef gclip_vec_traits<DTYPE> vt;
        if constexpr (KIND == GCLIP_KIND_INF || KIND == GCLIP_KIND_P || DTYPE == GCLIP_F64) {
            /* order-free max, or group()'s own element-by-element sum */
#if !defined(GCLIP_SIMT_EMULATION)
#pragma unroll 1
#endif
            for (int i = 0; i < vt::lanes * N; ++i) {
                const void *e = src + (i / vt::lanes) * stride;
                if constexpr (DTYPE == GCLIP_F64)
                    (*this)(((const double *)e)[i % vt::lanes]);
                else if constexpr (DTYPE == GCLIP_F32)
                    (*this)(((const float *)e)[i % vt::lanes]);
                else
                    (*this)(gclip_half_to_f32<DTYPE>(((const uint16_t *)e)[i % vt::lanes]));
            }
        } else {
            float a[4] = {0.0f, 0.0f, 0.0f, 0.0f}, b[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#if !defined(GCLIP_SIMT_EMULATION)
#pragma unroll 1
#endif
            for (int i = 0; i < N; ++i) {
                /* vectors 0, 2, 1, 3 of a batch */
                const int k = N == 4 ? (i & 1) * 2 + (i >> 1) : 0;
                float t[4];
                if constexpr (DTYPE == GCLIP_F32) {
                    const float *q = (const float *)(src + k * stride);
                    GCLIP_UNROLL
                    for (int m = 0; m < 4; ++m)
                        t[m] = gclip_term_f32(q[m], KIND);
                } else {
                    const uint16_t *q = (const uint16_t *)(src + k * stride);
                    GCLIP_UNROLL
                    for (int m = 0; m < 4; ++m)
                        t[m] = gclip_fadd(gclip_term_f32(gclip_half_to_f32<DTYPE>(q[2 * m]), KIND),
                                          gclip_term_f32(gclip_half_to_f32<DTYPE>(q[2 * m + 1]), KIND));
                }
                GCLIP_UNROLL
                for (int m = 0; m < 4; ++m) {
                    if (i == 0)
                        a[m] = t[m];
                    else if (i == 1)
                        a[m] = gclip_fadd(a[m], t[m]); /* level 8: word m + word m + 8 */
                    else if (i == 2)
                        b[m] = t[m];
                    else
                        b[m] = gclip_fadd(b[m], t[m]); /* word m + 4 + word m + 12 */
                }
            }
            float c[4];
            GCLIP_UNROLL
            for (int m = 0; m < 4; ++m)
                c[m] = N == 4 ? gclip_fadd(a[m], b[m]) : a[m]; /* level 4 */
            const float s = gclip_fadd(gclip_fadd(c[0], c[2]), gclip_fadd(c[1], c[3]));
            if (__builtin_expect(gclip_group_safe(s, KIND), 1))
                acc = acc + (double)s;
            else
                acc = acc + exact<DTYPE, N, false>(src, stride);
        }
    }

    template <int DTYPE, int N>
    __device__ __forceinline__ void group(const uint4 (&r)[N], const uint4 *src, int64_t stride)
    {
        typedef gclip_vec_traits<DTYPE> vt;
        typedef typename vt::value_type T;
        if constexpr (KIND == GCLIP_KIND_INF && DTYPE == GCLIP_F64) {
            GCLIP_UNROLL
            for (int k = 0; k < N; ++k) {
                max64 = gclip_max_bits64(max64, ((uint64_t)r[k].y << 32) | r[k].x);
                max64 = gclip_max_bits64(max64, ((uint64_t)r[k].w << 32) | r[k].z);
            }
        } else if constexpr (KIND == GCLIP_KIND_INF && DTYPE == GCLIP_F32) {
            GCLIP_UNROLL
            for (int k = 0; k < N; ++k) {
                max32 = gclip_max_bits(max32, r[k].x);
                max32 = gclip_max_bits(max32, r[k].y);
                max32 = gclip_max_bits(max32, r[k].z);
                max32 = gclip_max_bits(max32, r[k].w);
            }
        } else if constexpr (KIND == GCLIP_KIND_INF) {
            /* halves: the largest 16-bit magnitude of each word's lower and
             * upper half (compared in place), converted once */
            uint32_t lo = 0, hi = 0;
            GCLIP_UNROLL
            for (int k = 0; k < N; ++k) {
                const uint32_t w[4] = {r[k].x, r[k].y, r[k].z, r[k].w};
                GCLIP_UNROLL
                for (int i = 0; i < 4; ++i) {
                    const uint32_t a = w[i] & 0x7fffu, b = w[i] & 0x7fff0000u;
                    lo = a > lo ? a : lo;
                    hi = b > hi ? b : hi;
                }
            }
            const uint32_t h = (hi >> 16) > lo ? (hi >> 16) : lo;
            max32 = gclip_max_bits(max32, gclip_f32_bits(gclip_half_to_f32<DTYPE>(h)));
        } else if constexpr (KIND == GCLIP_KIND_P) {
            /* element by element, read again: the inlined exp2 and log2 of a
             * whole group at once would take more than the kernel's registers */
#if !defined(GCLIP_SIMT_EMULATION)
#pragma unroll 1
#endif
            for (int i = 0; i < vt::lanes * N; ++i) {
                const void *v = src + (i / vt::lanes) * stride;
                double x;
                if constexpr (DTYPE == GCLIP_F64 || DTYPE == GCLIP_F32)
                    x = ((const T *)v)[i % vt::lanes];
                else
                    x = gclip_half_to_f32<DTYPE>(((const uint16_t *)v)[i % vt::lanes]);
                acc = gclip_term_add(acc, x, KIND, p);
            }
        } else if constexpr (DTYPE == GCLIP_F64) {
            GCLIP_UNROLL
            for (int k = 0; k < N; ++k) {
                T x[vt::lanes];
                gclip_unpack<DTYPE>(r[k], x);
                GCLIP_UNROLL
                for (int j = 0; j < vt::lanes; ++j)
                    acc = gclip_term_add(acc, (double)x[j], KIND, p);
            }
        } else {
            /* the term of each 32-bit word (two halves added first), then
             * the tree over the words */
            float t[4 * N];
            GCLIP_UNROLL
            for (int k = 0; k < N; ++k) {
                const uint32_t w[4] = {r[k].x, r[k].y, r[k].z, r[k].w};
                GCLIP_UNROLL
                for (int m = 0; m < 4; ++m) {
                    if constexpr (DTYPE == GCLIP_F32) {
                        t[4 * k + m] = gclip_term_f32(gclip_bits_f32(w[m]), KIND);
                    } else {
                        float lo, hi;
                        gclip_unpack_pair<DTYPE>(w[m], lo, hi);
                        t[4 * k + m] = gclip_fadd(gclip_term_f32(lo, KIND), gclip_term_f32(hi, KIND));
                    }
                }
            }
            const float s = gclip_group_tree_f32(t, 4 * N);
            if (__builtin_expect(gclip_group_safe(s, KIND), 1))
                acc = acc + (double)s;
            else
                acc = acc + exact<DTYPE, N, true>(src, stride);
        }
    }

    /* The thread's accumulator as the block reduction combines it. */
    __device__ __forceinline__ double value() const
    {
        if constexpr (KIND == GCLIP_KIND_INF)
            return gclip_term_combine(gclip_max_bits_value(max32), gclip_max_bits64_value(max64),
                                      GCLIP_KIND_INF);
        else
            return acc;
    }
};

template <int KIND>
__device__ __forceinline__ double gclip_chunk_terms(const gclip_chunk_view &c, float p)
{
    gclip_term_sum<KIND> f = {GCLIP_TERM_ZERO, 0u, 0ull, p};
    gclip_walk_chunk<false>(c, f);
    return f.value();
}

/* This thread's accumulator over its elements of chunk `c`. */
__device__ __forceinline__ double gclip_thread_terms(const gclip_chunk_view &c,
                                                     const gclip_norm_params &np)
{
    switch (np.kind) {
    case GCLIP_KIND_L2:
        return gclip_chunk_terms<GCLIP_KIND_L2>(c, np.p);
    case GCLIP_KIND_L1:
        return gclip_chunk_terms<GCLIP_KIND_L1>(c, np.p);
    case GCLIP_KIND_INF:
        return gclip_chunk_terms<GCLIP_KIND_INF>(c, np.p);
    default:
        return gclip_chunk_terms<GCLIP_KIND_P>(c, np.p);
    }
}

/* ---- small chunks, a warp each
 *
 * A chunk of at most GCLIP_BLOCK_THREADS vectors (up to 1,024 f32 or 2,048
 * f16/bf16 elements, plus a tail of up to 7: the norm splits a chunk by
 * element index, with no head) gives each thread of a block at most one
 * vector and one tail element: walked by
 * the whole block, most threads would wait for one 16-byte load and the
 * block would pay two barriers for a few kilobytes. So such chunks go a
 * warp each, and each of the block's GCLIP_SMALL_BATCH warps goes through
 * its own without waiting for the others. Lane l of a warp
 * forms the accumulators that threads l, l + 32, ..., l + 224 of the block
 * walk would form (the same visitor, fed the same elements in the same
 * order) and combines them as levels 128, 64 and 32 of the block tree do
 * (gclip_tree_column); one thread of the warp then runs levels 16 to 1. A
 * chunk's partial has the same bits whichever way it was walked, so which
 * warp walks which chunk, and when, need not be fixed by the plan. */

/* The accumulators of threads lane + 32 k, k in [k0, k0 + A), of the block
 * walk of a small chunk (its split, in 32 bits: a small chunk has at most
 * GCLIP_BLOCK_THREADS vectors; vec: its first whole vector, on a 16-byte
 * boundary when ALIGNED), the A loads issued before any is used. */
template <int KIND, int DTYPE, int A, bool ALIGNED>
__device__ __forceinline__ void gclip_small_slots(void *base, int head, int vectors, int tail,
                                                  const uint4 *vec, int k0, float p, double *v)
{
    typedef gclip_vec_traits<DTYPE> vt;
    const int lane = (int)(threadIdx.x % 32);
    /* off a 16-byte boundary, each vector is read by the visitor itself
     * with element-sized loads, as the block walk reads it */
    uint4 r[A];
    if constexpr (ALIGNED) {
        GCLIP_UNROLL
        for (int k = 0; k < A; ++k) {
            const int t = lane + 32 * (k0 + k);
            if (t < vectors)
                r[k] = gclip_load_vec(vec + t);
        }
    }
    GCLIP_UNROLL
    for (int k = 0; k < A; ++k) {
        const int t = lane + 32 * (k0 + k);
        gclip_term_sum<KIND> f = {GCLIP_TERM_ZERO, 0u, 0ull, p};
        if (t < head)
            gclip_visit_scalar<DTYPE, false>(base, t, f);
        if (t < vectors) {
            if constexpr (ALIGNED) {
                const uint4 one[1] = {r[k]};
                f.template group<DTYPE, 1>(one, vec + t, GCLIP_BLOCK_THREADS);
            } else {
                f.template group_unaligned<DTYPE, 1>(vec + t, GCLIP_BLOCK_THREADS);
            }
        }
        if (t < tail)
            gclip_visit_scalar<DTYPE, false>(base, head + vectors * vt::lanes + t, f);
        v[k] = f.value();
    }
}

/* Column `lane` of the block tree over the small chunk c (levels 128 to 32:
 * gclip_tree_column's combines, each slot k + 4 combined into slot k as
 * soon as it is formed), split by element index as the block walk splits
 * it (gclip_split_elements). */
template <int KIND, int DTYPE, bool ALIGNED>
__device__ __forceinline__ double gclip_small_column_split(const gclip_chunk_view &c, float p)
{
    typedef gclip_vec_traits<DTYPE> vt;
    const gclip_split s = gclip_split_elements(c.count, vt::elem_bytes);
    const int head = (int)s.head, vectors = (int)s.vectors, tail = (int)s.tail;
    const uint4 *vec = (const uint4 *)((const char *)c.base + head * vt::elem_bytes);
    /* two loads in flight per lane (more spill at the kernel's 64
     * registers); the p-norm's pow takes many registers: one */
    constexpr int A = KIND == GCLIP_KIND_P ? 1 : 2;
    double a[4];
    GCLIP_UNROLL
    for (int k = 0; k < 4; k += A)
        gclip_small_slots<KIND, DTYPE, A, ALIGNED>(c.base, head, vectors, tail, vec, k, p, a + k);
    GCLIP_UNROLL
    for (int k = 0; k < 4; k += A) {
        double b[A];
        gclip_small_slots<KIND, DTYPE, A, ALIGNED>(c.base, head, vectors, tail, vec, 4 + k, p, b);
        GCLIP_UNROLL
        for (int j = 0; j < A; ++j)
            a[k + j] = gclip_term_combine(a[k + j], b[j], KIND);
    }
    return gclip_term_combine(gclip_term_combine(a[0], a[2], KIND),
                              gclip_term_combine(a[1], a[3], KIND), KIND);
}

template <int KIND, int DTYPE>
__device__ __forceinline__ double gclip_small_column(const gclip_chunk_view &c, float p)
{
    if (((uintptr_t)c.base & (GCLIP_VEC_BYTES - 1)) == 0)
        return gclip_small_column_split<KIND, DTYPE, true>(c, p);
    return gclip_small_column_split<KIND, DTYPE, false>(c, p);
}

template <int KIND>
__device__ __forceinline__ double gclip_small_column_kind(const gclip_chunk_view &c, float p)
{
    switch (c.dtype) {
    case GCLIP_F32:
        return gclip_small_column<KIND, GCLIP_F32>(c, p);
    case GCLIP_F16:
        return gclip_small_column<KIND, GCLIP_F16>(c, p);
    case GCLIP_F64:
        return gclip_small_column<KIND, GCLIP_F64>(c, p);
    default:
        return gclip_small_column<KIND, GCLIP_BF16>(c, p);
    }
}

__device__ __forceinline__ double gclip_small_column_of(const gclip_chunk_view &c,
                                                        const gclip_norm_params &np)
{
    switch (np.kind) {
    case GCLIP_KIND_L2:
        return gclip_small_column_kind<GCLIP_KIND_L2>(c, np.p);
    case GCLIP_KIND_L1:
        return gclip_small_column_kind<GCLIP_KIND_L1>(c, np.p);
    case GCLIP_KIND_INF:
        return gclip_small_column_kind<GCLIP_KIND_INF>(c, np.p);
    default:
        return gclip_small_column_kind<GCLIP_KIND_P>(c, np.p);
    }
}

/* The first position p, p + 8, ... of the window (below GCLIP_BLOCK_THREADS,
 * else that bound) whose chunk is small: the positions of one warp. */
__device__ __forceinline__ uint32_t gclip_next_small(const gclip_finalize_shared &fin, uint32_t p)
{
    while (p < GCLIP_BLOCK_THREADS && !fin.small[p])
        p += GCLIP_SMALL_BATCH;
    return p;
}

/* At least this many blocks of the norm kernel resident per SM: caps its
 * registers at 64 per thread (docs/gpu-arithmetic.md). */
#define GCLIP_NORM_MIN_BLOCKS 4

static __global__ void __launch_bounds__(GCLIP_BLOCK_THREADS, GCLIP_NORM_MIN_BLOCKS)
    gclip_norm_kernel(gclip_device_tables t, __grid_constant__ const gclip_norm_params params)
{
    __shared__ gclip_reduce_storage red;
    __shared__ gclip_finalize_shared fin;
    __shared__ unsigned int is_last;

    /* a local copy for the lane pass and the finalize; the walk reads
     * `params` itself, from the constant bank. `params` is a grid constant:
     * without it the compiler loaded max_norm and inv_scale at the
     * kernel's start and held them across the walk (a spill on sm_86 and
     * sm_89 at the 64-register cap) */
    const gclip_norm_params np = params;

    /* The scale kernel after this one may be scheduled as soon as every
     * block of this grid is running: its blocks take the SM room this
     * grid's blocks leave as they finish, then wait for the whole grid
     * (gclip_wait_prior_grids) before they read the factor. */
    gclip_release_dependents();

    /* block b walks chunks [C * b / grid, C * (b + 1) / grid); an empty plan
     * launches one block with no chunk: it only finalizes */
    const uint32_t num_chunks = t.num_chunks;
    const uint32_t first = gclip_split_begin(num_chunks, gridDim.x, blockIdx.x);
    const uint32_t last = gclip_split_begin(num_chunks, gridDim.x, blockIdx.x + 1);
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (threadIdx.x == 0) {
        /* the end of the walk, and the fold lanes whose ranges the block's
         * chunks meet: lanes lane0..lane1 that are not empty (none when
         * lane0 > lane1); kept in shared memory, not in registers across
         * the walk, which needs all 64 */
        fin.walk_end = last;
        fin.lane0 = first < last ? gclip_fold_lane_of(num_chunks, first) : 1u;
        fin.lane1 = first < last ? gclip_fold_lane_of(num_chunks, last - 1) : 0u;
    }
    __syncthreads();
    /* The block walks its chunks a window at a time: the chunks whose index
     * divided by GCLIP_BLOCK_THREADS is the same. Thread k finds out whether
     * the window's chunk k is small: one round of table loads for the whole
     * window, which also leaves its chunk entries and tensor descriptors in
     * L1 for the walk. Then each warp w goes alone through the window's
     * small chunks at positions w, w + 8, ..., a warp barrier between its
     * columns and its tree, asking L2 for its next small chunk before it
     * loads the one it is at (gclip_look_ahead); then the block walks the
     * window's other chunks together. A chunk's partial has the same bits
     * however it was walked and goes to the chunk's own slot, so the order
     * of the walk never shows in a result. */
    for (uint32_t c = first; c < fin.walk_end;) {
        /* the window: chunks base .. base + GCLIP_BLOCK_THREADS - 1 from c
         * on (c's position in it is c % GCLIP_BLOCK_THREADS) */
        const uint32_t base = c - c % GCLIP_BLOCK_THREADS;
        {
            const uint32_t k = base + threadIdx.x;
            fin.small[threadIdx.x] = (unsigned char)(k >= c && k < fin.walk_end &&
                                                     gclip_norm_chunk_is_small(gclip_chunk_at(t, k)));
        }
        __syncthreads(); /* the window's flags are written */
        for (uint32_t p = gclip_next_small(fin, warp); p < GCLIP_BLOCK_THREADS;
             p = gclip_next_small(fin, p + GCLIP_SMALL_BATCH)) {
            {
                /* found again after the walk: no register kept across it */
                const uint32_t q = gclip_next_small(fin, p + GCLIP_SMALL_BATCH);
                if (q < GCLIP_BLOCK_THREADS)
                    gclip_look_ahead(t, base + q);
            }
            red.v[threadIdx.x] = gclip_small_column_of(gclip_chunk_at(t, base + p), params);
            __syncwarp(); /* the warp's 32 columns are in red.v */
            if (lane == 0)
                t.partials[base + p] = gclip_tree_32(&red.v[threadIdx.x], params.kind);
            __syncwarp(); /* lane 0 has read them before they are written again */
        }
        __syncthreads(); /* `red` is the block's again */
        /* the window's other chunks, the block together; c alone is kept
         * across the walk, and ends at the next window's first chunk */
        do {
            if (!fin.small[c % GCLIP_BLOCK_THREADS]) {
                const double acc = gclip_thread_terms(gclip_chunk_at(t, c), params);
                const double partial = gclip_block_reduce(red, acc, params.kind);
                if (threadIdx.x == 0)
                    t.partials[c] = partial;
                __syncthreads(); /* `red` is reused by the next chunk */
            }
            ++c;
        } while (c % GCLIP_BLOCK_THREADS != 0 && c < fin.walk_end);
        __syncthreads(); /* `fin.small` is the next window's */
    }

    const uint32_t lane0 = fin.lane0, lane1 = fin.lane1;
    if (lane0 <= lane1) {
        /* The block counts itself in the ticket of each lane it met (one
         * fence, the atomics all in flight together), then folds the lanes
         * whose count it completed. */
        if (threadIdx.x == 0) {
            __threadfence(); /* the block's partials are visible before the tickets count it */
            uint32_t any = 0;
            for (uint32_t lane = lane0; lane <= lane1; ++lane) {
                uint32_t mine = 0;
                if (gclip_fold_lane_begin(t.num_chunks, lane) <
                    gclip_fold_lane_begin(t.num_chunks, lane + 1)) {
                    const uint32_t blocks = gclip_fold_lane_blocks(t.num_chunks, gridDim.x, lane);
                    mine = atomicInc(&t.fold->ticket[lane], blocks - 1) == blocks - 1;
                }
                fin.mine[lane] = (unsigned char)mine;
                any |= mine;
            }
            fin.any_mine = any;
            fin.next = lane0;
        }
        __syncthreads();
        if (fin.any_mine)
            __threadfence(); /* pairs with the other blocks' fences */
        /* the lanes to fold, one at a time; the next one is kept in shared
         * memory, so no register outlives a lane pass (the norm kernel's
         * registers stay within their cap) */
        for (;;) {
            if (threadIdx.x == 0) {
                uint32_t lane = fin.next;
                while (lane <= fin.lane1 && !fin.mine[lane])
                    ++lane;
                fin.current = lane;
                fin.next = lane + 1;
            }
            __syncthreads();
            const uint32_t lane = fin.current;
            if (lane > fin.lane1)
                break;
            gclip_fold_lane_pass(t, np, fin, lane);
        }
        if (fin.any_mine) {
            /* the lanes' norms, factors and records are visible before the
             * block's norm ticket (thread 0's, after the barrier) */
            __threadfence();
            __syncthreads();
        }
    }

    if (threadIdx.x == 0) {
        /* what the block wrote is visible device-wide before the ticket counts it */
        __threadfence();
        is_last = atomicInc(t.ticket, gridDim.x - 1) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last)
        return;
    /* pairs with the other blocks' fences: their partials are visible now */
    __threadfence();
    gclip_finalize(t, np, fin);
}

/* ---- launcher */

extern "C" int gclip_launch_norm(const gclip_device_tables *t, const gclip_norm_params *np,
                                 gclip_stream stream)
{
    return GCLIP_LAUNCH(gclip_norm_kernel, gclip_launch_grid(t->num_chunks, t->norm_grid_cap),
                        GCLIP_BLOCK_THREADS, stream, *t, *np);
}

extern "C" int gclip_norm_blocks_per_sm(int *blocks)
{
    return GCLIP_BLOCKS_PER_SM(blocks, gclip_norm_kernel, GCLIP_BLOCK_THREADS);
}
