/*
 * chunk_walk.cuh - how one block visits the elements of one chunk; shared by
 * the norm (read only), scale and clamp (read-modify-write) kernels.
 *
 * A chunk is split by gclip_split_vectors into a scalar head up to the first
 * 16-byte boundary, a body of whole 16-byte vectors and a scalar tail. The
 * body is always read (and written) with 16-byte accesses whatever the
 * tensor's start address; at most 7 elements at each end go through scalar
 * accesses, so an unaligned tensor never falls back to a scalar loop.
 *
 * Thread i visits head element i, then vectors i, i + B, i + 2B, ... in
 * increasing order, then tail element i. That order is fixed by the chunk
 * and the block size alone, which is what makes each thread's accumulation
 * (and so the block's partial) reproducible.
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

template <int DTYPE>
__device__ __forceinline__ float gclip_half_bits_to_f32(uint32_t h)
{
    return DTYPE == GCLIP_F16 ? gclip_f16_to_f32((uint16_t)h) : gclip_bf16_to_f32((uint16_t)h);
}

template <int DTYPE>
__device__ __forceinline__ uint32_t gclip_f32_to_half_bits(float x)
{
    return DTYPE == GCLIP_F16 ? gclip_f32_to_f16(x) : gclip_f32_to_bf16(x);
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
__device__ __forceinline__ void gclip_unpack(
    const uint4 &v, typename gclip_vec_traits<DTYPE>::value_type (&x)[gclip_vec_traits<DTYPE>::lanes])
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
                x[2 * i] = gclip_half_bits_to_f32<DTYPE>(w[i] & 0xffffu);
                x[2 * i + 1] = gclip_half_bits_to_f32<DTYPE>(w[i] >> 16);
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
                w[i] = gclip_f32_to_half_bits<DTYPE>(x[2 * i]) |
                       (gclip_f32_to_half_bits<DTYPE>(x[2 * i + 1]) << 16);
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
    if constexpr (DTYPE == GCLIP_F64) {
        double *p = (double *)base + i;
        if constexpr (WRITE)
            *p = f(*p);
        else
            f(*p);
    } else {
        const float x = gclip_load(base, DTYPE, i);
        if constexpr (WRITE)
            gclip_store(base, DTYPE, i, f(x));
        else
            f(x);
    }
}

/* One loaded vector `r` that lives at `dst`. */
template <int DTYPE, bool WRITE, class F>
__device__ __forceinline__ void gclip_visit_vector(const uint4 &r, uint4 *dst, F &f)
{
    typename gclip_vec_traits<DTYPE>::value_type x[gclip_vec_traits<DTYPE>::lanes];
    gclip_unpack<DTYPE>(r, x);
    GCLIP_UNROLL
    for (int j = 0; j < gclip_vec_traits<DTYPE>::lanes; ++j) {
        if constexpr (WRITE)
            x[j] = f(x[j]);
        else
            f(x[j]);
    }
    if constexpr (WRITE) {
        const uint4 w = gclip_pack<DTYPE>(x);
        if (w.x != r.x || w.y != r.y || w.z != r.z || w.w != r.w)
            gclip_store_vec(dst, w);
    } else {
        (void)dst;
    }
}

/* The walk over one chunk for a known element type. */
template <int DTYPE, bool WRITE, class F>
__device__ __forceinline__ void gclip_walk_typed(void *base, int64_t count, F &f)
{
    typedef gclip_vec_traits<DTYPE> vt;
    const int64_t nt = GCLIP_BLOCK_THREADS;
    const int64_t tid = (int64_t)threadIdx.x;
    const gclip_split s = gclip_split_vectors((uintptr_t)base, count, vt::elem_bytes);

    if (tid < s.head)
        gclip_visit_scalar<DTYPE, WRITE>(base, tid, f);

    uint4 *__restrict__ vec = (uint4 *)((char *)base + s.head * vt::elem_bytes);
    int64_t v = tid;
    for (; v + (GCLIP_WALK_BATCH - 1) * nt < s.vectors; v += GCLIP_WALK_BATCH * nt) {
        uint4 r[GCLIP_WALK_BATCH];
        GCLIP_UNROLL
        for (int k = 0; k < GCLIP_WALK_BATCH; ++k)
            r[k] = gclip_load_vec(vec + v + k * nt);
        GCLIP_UNROLL
        for (int k = 0; k < GCLIP_WALK_BATCH; ++k)
            gclip_visit_vector<DTYPE, WRITE>(r[k], vec + v + k * nt, f);
    }
    for (; v < s.vectors; v += nt) {
        const uint4 r = gclip_load_vec(vec + v);
        gclip_visit_vector<DTYPE, WRITE>(r, vec + v, f);
    }

    if (tid < s.tail)
        gclip_visit_scalar<DTYPE, WRITE>(base, s.head + s.vectors * vt::lanes + tid, f);
}

/* Visit every element of chunk `c` with `f`: read mode (WRITE = false) calls
 * f(x) for each element; write mode replaces each element x with f(x),
 * computed in float and rounded back to the element type (in double for
 * f64). `f` takes float and double. */
template <bool WRITE, class F>
__device__ __forceinline__ void gclip_walk_chunk(const gclip_chunk_view &c, F &f)
{
    switch (c.dtype) {
    case GCLIP_F32:
        gclip_walk_typed<GCLIP_F32, WRITE>(c.base, c.count, f);
        break;
    case GCLIP_F16:
        gclip_walk_typed<GCLIP_F16, WRITE>(c.base, c.count, f);
        break;
    case GCLIP_F64:
        gclip_walk_typed<GCLIP_F64, WRITE>(c.base, c.count, f);
        break;
    default:
        gclip_walk_typed<GCLIP_BF16, WRITE>(c.base, c.count, f);
        break;
    }
}

#endif /* GCLIP_CHUNK_WALK_CUH */
