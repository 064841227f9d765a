/*
 * chunk_walk.cuh - how one block visits the elements of one chunk; shared by
 * the norm (read only), scale and clamp (read-modify-write) kernels.
 *
 * The write passes split a chunk by gclip_split_vectors into a scalar head
 * up to the first 16-byte boundary, a body of whole 16-byte vectors and a
 * scalar tail. The body is always written with 16-byte accesses whatever
 * the tensor's start address; at most 7 elements at each end go through
 * scalar accesses, so an unaligned tensor never falls back to a scalar
 * loop. Who writes an element does not show in what is stored.
 *
 * The norm's read walk splits a chunk by element index instead
 * (gclip_split_elements: no head, vectors of 16 bytes' worth of elements
 * from the chunk's first element, a scalar tail), so that its sums do not
 * depend on the chunk's address modulo 16. An aligned chunk's vectors are
 * read with 16-byte loads; a chunk that does not start on a 16-byte
 * boundary (a view at an odd element, say) has its groups read by the
 * visitor itself with element-sized loads (gclip_term_sum::group_unaligned):
 * the same elements in the same groups, more load instructions.
 *
 * Thread i visits head element i, then vectors i, i + B, i + 2B, ... in
 * increasing order, then tail element i. For the norm that order is fixed
 * by the chunk's element count and the block size alone, which is what
 * makes each thread's accumulation (and so the block's partial)
 * reproducible, at any address.
 *
 * Read mode hands the visitor whole groups: the GCLIP_WALK_BATCH vectors a
 * thread loads at once, then each single vector, then each head or tail
 * element alone (the norm's float groups, docs/gpu-arithmetic.md; the CPU
 * twin forms the same groups).
 *
 * Conversions: on the GPU, f16 and bf16 are converted by the conversion
 * instructions, two elements at a time (cvt.f32.f16; cvt.rn.f16x2.f32 and,
 * from sm_80, cvt.rn.bf16x2.f32: one instruction per packed pair), with the
 * results gclip_dtype.h's functions give, which the emulator runs
 * (round to nearest even, subnormals kept, every NaN to the canonical NaN).
 * bf16 to f32 is a shift everywhere; sm_75 has no bf16 conversion
 * instruction and rounds to bf16 with gclip_f32_to_bf16.
 *
 * Writes: a vector is stored only when one of its bits changed. The memory
 * then holds exactly what an unconditional store would leave, but value
 * clipping, which usually changes few elements, writes few vectors.
 */
#ifndef GCLIP_CHUNK_WALK_CUH
#define GCLIP_CHUNK_WALK_CUH

#include "gclip_cuda_compat.h"
#include "gclip_kernels.h"

#include <string.h>

#if !defined(GCLIP_SIMT_EMULATION)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#if defined(GCLIP_SIMT_EMULATION)
#define GCLIP_UNROLL
#else
#define GCLIP_UNROLL _Pragma("unroll")
#endif

/* Vectors each thread loads before using any of them, so that several 16-byte
 * loads are in flight per thread (memory-level parallelism). */
#define GCLIP_WALK_BATCH 4

/* The elements of one chunk: `count` elements of `dtype` from `base`. */
typedef struct gclip_chunk_view {
    void *base;
    int64_t count;
    int32_t dtype;
    uint32_t tensor;
} gclip_chunk_view;

/* 16-byte accesses the compiler knows to be to global memory. Tensor data
 * pointers come from the tensor table, so nvcc cannot infer their address
 * space and would emit generic ld.v4/st.v4, which pay an address-space check
 * per access; the assumption at the access lets it emit ld.global.v4 and
 * st.global.v4. The emulator has one address space. */
__device__ __forceinline__ uint4 gclip_load_vec(const uint4 *p)
{
#if !defined(GCLIP_SIMT_EMULATION)
    __builtin_assume(__isGlobal(p));
#endif
    return *p;
}

__device__ __forceinline__ void gclip_store_vec(uint4 *p, const uint4 &v)
{
#if !defined(GCLIP_SIMT_EMULATION)
    __builtin_assume(__isGlobal(p));
#endif
    *p = v;
}

/* Chunk `c` of the plan's device tables; 64-bit offsets throughout, so
 * tensors of more than 2^31 elements work. */
__device__ __forceinline__ gclip_chunk_view gclip_chunk_at(const gclip_device_tables &t,
                                                           uint32_t c)
{
    const gclip_chunk ch = t.chunks[c];
    const gclip_tensor_desc *d = &t.tensors[ch.tensor];
    const int32_t dtype = d->dtype;
    int64_t begin, count;
    gclip_chunk_range(d->numel, ch.index, &begin, &count);
    gclip_chunk_view v;
    v.base = (char *)d->data + begin * gclip_dtype_size(dtype);
    v.count = count;
    v.dtype = dtype;
    v.tensor = ch.tensor;
    return v;
}

/* One 16-byte vector for element type DTYPE: its lanes and the type the
 * functor sees (float for f32/f16/bf16, double for f64). */
template <int DTYPE>
struct gclip_vec_traits {
    typedef float value_type;
    static const int elem_bytes = DTYPE == GCLIP_F32 ? 4 : 2;
    static const int lanes = GCLIP_VEC_BYTES / elem_bytes;
};

template <>
struct gclip_vec_traits<GCLIP_F64> {
    typedef double value_type;
    static const int elem_bytes = 8;
    static const int lanes = 2;
};

/* One f16 or bf16 element (its 16 bits) as float, and a float rounded to one. */
template <int DTYPE>
__device__ __forceinline__ float gclip_half_to_f32(uint32_t h)
{
    if constexpr (DTYPE == GCLIP_BF16) {
        return gclip_bits_f32(h << 16);
    } else {
#if defined(__CUDA_ARCH__)
        return __half2float(__ushort_as_half((unsigned short)h));
#else
        return gclip_f16_to_f32((uint16_t)h);
#endif
    }
}

template <int DTYPE>
__device__ __forceinline__ uint32_t gclip_f32_to_half(float x)
{
#if defined(__CUDA_ARCH__)
    if constexpr (DTYPE == GCLIP_F16)
        return __half_as_ushort(__float2half_rn(x));
#if __CUDA_ARCH__ >= 800
    else
        return __bfloat16_as_ushort(__float2bfloat16_rn(x));
#endif
#endif
    return DTYPE == GCLIP_F16 ? gclip_f32_to_f16(x) : gclip_f32_to_bf16(x);
}

/* The two elements of one 32-bit word (the lower half is the earlier one). */
template <int DTYPE>
__device__ __forceinline__ void gclip_unpack_pair(uint32_t w, float &lo, float &hi)
{
    if constexpr (DTYPE == GCLIP_BF16) {
        lo = gclip_bits_f32(w << 16);
        hi = gclip_bits_f32(w & 0xffff0000u);
    } else {
#if defined(__CUDA_ARCH__)
        const float2 f = __half22float2(__halves2half2(__ushort_as_half((unsigned short)w),
                                                       __ushort_as_half((unsigned short)(w >> 16))));
        lo = f.x;
        hi = f.y;
#else
        lo = gclip_f16_to_f32((uint16_t)w);
        hi = gclip_f16_to_f32((uint16_t)(w >> 16));
#endif
    }
}

template <int DTYPE>
__device__ __forceinline__ uint32_t gclip_pack_pair(float lo, float hi)
{
#if defined(__CUDA_ARCH__)
    if constexpr (DTYPE == GCLIP_F16) {
        const __half2 h = __floats2half2_rn(lo, hi);
        return (uint32_t)__half_as_ushort(__low2half(h)) |
               ((uint32_t)__half_as_ushort(__high2half(h)) << 16);
    }
#if __CUDA_ARCH__ >= 800
    if constexpr (DTYPE == GCLIP_BF16) {
        const __nv_bfloat162 b = __floats2bfloat162_rn(lo, hi);
        return (uint32_t)__bfloat16_as_ushort(__low2bfloat16(b)) |
               ((uint32_t)__bfloat16_as_ushort(__high2bfloat16(b)) << 16);
    }
#endif
#endif
    return gclip_f32_to_half<DTYPE>(lo) | (gclip_f32_to_half<DTYPE>(hi) << 16);
}

__device__ __forceinline__ double gclip_bits_f64(uint32_t lo, uint32_t hi)
{
    const uint64_t u = ((uint64_t)hi << 32) | lo;
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

__device__ __forceinline__ uint64_t gclip_f64_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

/* Decode a vector into its lanes, in memory order (little endian: the lower
 * half of each 32-bit word is the earlier element). */
template <int DTYPE>
__device__ __forceinline__ void gclip_unpack(const uint4 &v,
                                             typename gclip_vec_traits<DTYPE>::value_type *x)
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    if constexpr (DTYPE == GCLIP_F64) {
        x[0] = gclip_bits_f64(w[0], w[1]);
        x[1] = gclip_bits_f64(w[2], w[3]);
    } else {
        GCLIP_UNROLL
        for (int i = 0; i < 4; ++i) {
            if constexpr (DTYPE == GCLIP_F32) {
                x[i] = gclip_bits_f32(w[i]);
            } else {
                gclip_unpack_pair<DTYPE>(w[i], x[2 * i], x[2 * i + 1]);
            }
        }
    }
}

template <int DTYPE>
__device__ __forceinline__ uint4 gclip_pack(
    const typename gclip_vec_traits<DTYPE>::value_type (&x)[gclip_vec_traits<DTYPE>::lanes])
{
    uint32_t w[4];
    if constexpr (DTYPE == GCLIP_F64) {
        const uint64_t a = gclip_f64_bits(x[0]), b = gclip_f64_bits(x[1]);
        w[0] = (uint32_t)a;
        w[1] = (uint32_t)(a >> 32);
        w[2] = (uint32_t)b;
        w[3] = (uint32_t)(b >> 32);
    } else {
        GCLIP_UNROLL
        for (int i = 0; i < 4; ++i) {
            if constexpr (DTYPE == GCLIP_F32)
                w[i] = gclip_f32_bits(x[i]);
            else
                w[i] = gclip_pack_pair<DTYPE>(x[2 * i], x[2 * i + 1]);
        }
    }
    uint4 v;
    v.x = w[0];
    v.y = w[1];
    v.z = w[2];
    v.w = w[3];
    return v;
}

/* One scalar element. Read mode calls f(x); write mode stores f(x). */
template <int DTYPE, bool WRITE, class F>
__device__ __forceinline__ void gclip_visit_scalar(void *base, int64_t i, F &f)
{
    if constexpr (DTYPE == GCLIP_F64 || DTYPE == GCLIP_F32) {
        typedef typename gclip_vec_traits<DTYPE>::value_type T;
        T *p = (T *)base + i;
        if constexpr (WRITE)
            *p = f(*p);
        else
            f(*p);
    } else {
        uint16_t *p = (uint16_t *)base + i;
        const float x = gclip_half_to_f32<DTYPE>(*p);
        if constexpr (WRITE)
            *p = (uint16_t)gclip_f32_to_half<DTYPE>(f(x));
        else
            f(x);
    }
}

/* Write mode: the loaded vector `r` that lives at `dst` replaced by f of
 * each lane. */
template <int DTYPE, class F>
__device__ __forceinline__ void gclip_update_vector(const uint4 &r, uint4 *dst, F &f)
{
    typename gclip_vec_traits<DTYPE>::value_type x[gclip_vec_traits<DTYPE>::lanes];
    gclip_unpack<DTYPE>(r, x);
    GCLIP_UNROLL
    for (int j = 0; j < gclip_vec_traits<DTYPE>::lanes; ++j)
        x[j] = f(x[j]);
    const uint4 w = gclip_pack<DTYPE>(x);
    if (w.x != r.x || w.y != r.y || w.z != r.z || w.w != r.w)
        gclip_store_vec(dst, w);
}

/* N loaded vectors, vector k living at dst + k * stride: read mode
 * hands them to the visitor as one group (f.group<DTYPE, N>(r, dst, stride)),
 * write mode updates each. */
template <int DTYPE, bool WRITE, int N, class F>
__device__ __forceinline__ void gclip_visit_vectors(const uint4 (&r)[N], uint4 *dst, int64_t stride,
                                                    F &f)
{
    if constexpr (WRITE) {
        GCLIP_UNROLL
        for (int k = 0; k < N; ++k)
            gclip_update_vector<DTYPE>(r[k], dst + k * stride, f);
    } else {
        f.template group<DTYPE, N>(r, dst, stride);
    }
}

/* The walk over one chunk, split as `s` says, for a known element type by
 * NT threads, this one being thread `tid` of them (a block, or a warp: see
 * below). ALIGNED: the vectors start on a 16-byte boundary. */
template <int DTYPE, bool WRITE, int NT, bool ALIGNED, class F>
__device__ __forceinline__ void gclip_walk_split(void *base, const gclip_split &s, int64_t tid, F &f)
{
    typedef gclip_vec_traits<DTYPE> vt;
    const int64_t nt = NT;

    if (tid < s.head)
        gclip_visit_scalar<DTYPE, WRITE>(base, tid, f);

    uint4 *__restrict__ vec = (uint4 *)((char *)base + s.head * vt::elem_bytes);
    int64_t v = tid;
    if constexpr (!WRITE && !ALIGNED) {
        /* a chunk off a 16-byte boundary: the visitor reads each group
         * itself with element-sized loads (gclip_term_sum::group_unaligned) */
        for (; v + (GCLIP_WALK_BATCH - 1) * nt < s.vectors; v += GCLIP_WALK_BATCH * nt)
            f.template group_unaligned<DTYPE, GCLIP_WALK_BATCH>(vec + v, nt);
        for (; v < s.vectors; v += nt)
            f.template group_unaligned<DTYPE, 1>(vec + v, nt);
    } else {
        for (; v + (GCLIP_WALK_BATCH - 1) * nt < s.vectors; v += GCLIP_WALK_BATCH * nt) {
            uint4 r[GCLIP_WALK_BATCH];
            GCLIP_UNROLL
            for (int k = 0; k < GCLIP_WALK_BATCH; ++k)
                r[k] = gclip_load_vec(vec + v + k * nt);
            gclip_visit_vectors<DTYPE, WRITE>(r, vec + v, nt, f);
        }
        for (; v < s.vectors; v += nt) {
            const uint4 r[1] = {gclip_load_vec(vec + v)};
            gclip_visit_vectors<DTYPE, WRITE>(r, vec + v, nt, f);
        }
    }

    if (tid < s.tail)
        gclip_visit_scalar<DTYPE, WRITE>(base, s.head + s.vectors * vt::lanes + tid, f);
}

/* The walk over one chunk for a known element type. Write mode splits it by
 * address (gclip_split_vectors: every vector access is 16 bytes, whatever
 * the chunk's alignment), read mode by element index (gclip_split_elements:
 * the norm's groups do not depend on the chunk's address). */
template <int DTYPE, bool WRITE, int NT, class F>
__device__ __forceinline__ void gclip_walk_typed(void *base, int64_t count, int64_t tid, F &f)
{
    typedef gclip_vec_traits<DTYPE> vt;
    if constexpr (WRITE) {
        const gclip_split s = gclip_split_vectors((uintptr_t)base, count, vt::elem_bytes);
        gclip_walk_split<DTYPE, true, NT, true>(base, s, tid, f);
    } else {
        const gclip_split s = gclip_split_elements(count, vt::elem_bytes);
        if (((uintptr_t)base & (GCLIP_VEC_BYTES - 1)) == 0)
            gclip_walk_split<DTYPE, false, NT, true>(base, s, tid, f);
        else
            gclip_walk_split<DTYPE, false, NT, false>(base, s, tid, f);
    }
}

/* Chunk `c` walked by NT threads, this one being thread `tid` of them. */
template <bool WRITE, int NT, class F>
__device__ __forceinline__ void gclip_walk_chunk_by(const gclip_chunk_view &c, int64_t tid, F &f)
{
    switch (c.dtype) {
    case GCLIP_F32:
        gclip_walk_typed<GCLIP_F32, WRITE, NT>(c.base, c.count, tid, f);
        break;
    case GCLIP_F16:
        gclip_walk_typed<GCLIP_F16, WRITE, NT>(c.base, c.count, tid, f);
        break;
    case GCLIP_F64:
        gclip_walk_typed<GCLIP_F64, WRITE, NT>(c.base, c.count, tid, f);
        break;
    default:
        gclip_walk_typed<GCLIP_BF16, WRITE, NT>(c.base, c.count, tid, f);
        break;
    }
}

/* Visit every element of chunk `c` with `f`, the whole block walking it:
 * read mode (WRITE = false) calls f(x) for each head and tail element and
 * f.group<DTYPE, N>(r, at, stride) for each group of N loaded vectors;
 * write mode replaces each element x with f(x), computed in float and
 * rounded back to the element type (in double for f64). `f` takes float
 * and double. */
template <bool WRITE, class F>
__device__ __forceinline__ void gclip_walk_chunk(const gclip_chunk_view &c, F &f)
{
    gclip_walk_chunk_by<WRITE, GCLIP_BLOCK_THREADS>(c, (int64_t)threadIdx.x, f);
}

/* ---- small chunks
 *
 * A chunk of at most GCLIP_BLOCK_THREADS vectors gives each thread of a
 * block at most one vector: walked by the whole block, most threads would
 * wait for one 16-byte load. The kernels walk such chunks a warp each, each
 * of a block's GCLIP_SMALL_BATCH warps its own. The write kernels' results
 * do not depend on who updates an element; the norm kernel forms in each
 * warp the block's own accumulators and tree (norm_kernel.cu). */
#define GCLIP_SMALL_BATCH (GCLIP_BLOCK_THREADS / 32)

__device__ __forceinline__ bool gclip_chunk_is_small(const gclip_chunk_view &c)
{
    return gclip_span_is_small((uintptr_t)c.base, c.count, c.dtype) != 0;
}

/* The same for the norm kernel's walk (by element index). */
__device__ __forceinline__ bool gclip_norm_chunk_is_small(const gclip_chunk_view &c)
{
    return gclip_norm_span_is_small(c.count, c.dtype) != 0;
}

/* Lane l of the calling warp asks L2 for the l-th 128-byte line of chunk
 * c, a small chunk (the first 32 lines: a small chunk may reach into one or
 * two more, not asked for). The warps of every kernel call it on the small
 * chunk each walks next, found in the window's flags, before loading the one
 * it is at (norm_kernel.cu, gclip_for_block_chunks): the table loads are
 * broadcasts that hit L1 (the window's flags were read from the same
 * entries), and the chunk's data is on its way from memory while the warp
 * finishes the chunk it is at. */
__device__ __forceinline__ void gclip_look_ahead(const gclip_device_tables &t, uint32_t c)
{
    const gclip_chunk_view v = gclip_chunk_at(t, c);
    /* lane l: the chunk's l-th line, named by an address inside the chunk
     * (lane 0 by the chunk's start, which may lie past its line's start),
     * so that no request names memory outside the tensor */
    const uintptr_t base = (uintptr_t)v.base, lane = threadIdx.x % 32;
    const uintptr_t line = lane == 0 ? base : (base & ~(uintptr_t)127) + (uintptr_t)128 * lane;
    if (line < base + (uintptr_t)v.count * (uintptr_t)gclip_dtype_size(v.dtype))
        gclip_prefetch_l2((const void *)line);
}

/* The write kernels' window (gclip_for_block_chunks), in the kernel's
 * shared memory: byte k says who updates the window's chunk k. Kept as
 * words so that the block's pass can pass four small chunks in a row with
 * one load. (A kernel
 * declares it: the emulator gives each block its own copy only of the
 * __shared__ variables of a kernel's own body.) */
#define GCLIP_WINDOW_BLOCK 0u /* the whole block */
#define GCLIP_WINDOW_WARP 1u  /* one warp: a small chunk */
#define GCLIP_WINDOW_NONE 2u  /* past the last chunk, as are the window's later ones */
struct gclip_write_window {
    uint32_t word[GCLIP_BLOCK_THREADS / 4];
};

__device__ __forceinline__ uint32_t gclip_window_flag(const gclip_write_window &w, uint32_t p)
{
    return ((const unsigned char *)w.word)[p];
}

/* The first of positions p, p + GCLIP_SMALL_BATCH, ... whose chunk is
 * small, or GCLIP_BLOCK_THREADS: the next chunk of the warp whose positions
 * these are. */
__device__ __forceinline__ uint32_t gclip_window_next_small(const gclip_write_window &w,
                                                            uint32_t p)
{
    for (; p < GCLIP_BLOCK_THREADS; p += GCLIP_SMALL_BATCH) {
        const uint32_t f = gclip_window_flag(w, p);
        if (f == GCLIP_WINDOW_WARP)
            return p;
        if (f == GCLIP_WINDOW_NONE)
            break;
    }
    return GCLIP_BLOCK_THREADS;
}

/* The first position at or after p whose chunk the whole block updates, or
 * GCLIP_BLOCK_THREADS; four small chunks in a row are passed with one load. */
__device__ __forceinline__ uint32_t gclip_window_next_block(const gclip_write_window &w,
                                                            uint32_t p)
{
    while (p < GCLIP_BLOCK_THREADS) {
        if (p % 4 == 0 && w.word[p / 4] == 0x01010101u * GCLIP_WINDOW_WARP) {
            p += 4;
            continue;
        }
        const uint32_t f = gclip_window_flag(w, p);
        if (f == GCLIP_WINDOW_BLOCK)
            return p;
        if (f == GCLIP_WINDOW_NONE)
            break;
        ++p;
    }
    return GCLIP_BLOCK_THREADS;
}

/* The chunks blockIdx.x + i * gridDim.x (i = 0, 1, ...) of a write kernel
 * (scale, clamp), each visited once as visit(chunk, by_warp). The block
 * takes them a window of GCLIP_BLOCK_THREADS at a time (i / 256 the same):
 * thread k reads the tables of the window's chunk k and writes its flag,
 * one round of table loads for the window that also leaves its chunk
 * entries and tensor descriptors in L1 for the visits; a barrier; then warp
 * w updates the window's small chunks at positions w, w + 8, ... alone
 * (gclip_walk_chunk_warp), asking L2 for its next one before it updates the
 * one it is at (gclip_look_ahead), and goes on, without waiting for the
 * other warps, to the window's other chunks, each updated by the whole block
 * (gclip_walk_chunk); a second barrier before the flags are written again.
 * An element's update does not depend on who makes it or when. */
template <class Visit>
__device__ __forceinline__ void gclip_for_block_chunks(const gclip_device_tables &t,
                                                       gclip_write_window &win, Visit &visit)
{
    const uint64_t stride = gridDim.x, span = (uint64_t)GCLIP_BLOCK_THREADS * stride;
    const uint32_t warp = threadIdx.x / 32;
    for (uint64_t first = blockIdx.x; first < t.num_chunks; first += span) {
        {
            const uint64_t c = first + (uint64_t)threadIdx.x * stride;
            uint32_t flag = GCLIP_WINDOW_NONE;
            if (c < t.num_chunks)
                flag = gclip_chunk_is_small(gclip_chunk_at(t, (uint32_t)c)) ? GCLIP_WINDOW_WARP
                                                                            : GCLIP_WINDOW_BLOCK;
            ((unsigned char *)win.word)[threadIdx.x] = (unsigned char)flag;
        }
        __syncthreads(); /* the window's flags are written */
        for (uint32_t p = gclip_window_next_small(win, warp); p < GCLIP_BLOCK_THREADS;) {
            const uint32_t q = gclip_window_next_small(win, p + GCLIP_SMALL_BATCH);
            if (q < GCLIP_BLOCK_THREADS)
                gclip_look_ahead(t, (uint32_t)(first + q * stride));
            visit((uint32_t)(first + p * stride), true);
            p = q;
        }
        for (uint32_t p = gclip_window_next_block(win, 0); p < GCLIP_BLOCK_THREADS;
             p = gclip_window_next_block(win, p + 1))
            visit((uint32_t)(first + p * stride), false);
        __syncthreads(); /* every thread has read the flags before they are written again */
    }
}

/* Chunk `c` walked by the calling warp alone. */
template <bool WRITE, class F>
__device__ __forceinline__ void gclip_walk_chunk_warp(const gclip_chunk_view &c, F &f)
{
    gclip_walk_chunk_by<WRITE, 32>(c, (int64_t)(threadIdx.x % 32), f);
}

#endif /* GCLIP_CHUNK_WALK_CUH */
