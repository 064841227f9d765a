/*
 * gclip_tables.h - the plan's tables as every engine reads them: the tensor
 * table, the chunk table (the unit of work and of the fixed reduction
 * order), and the split of a chunk into scalar head, 16-byte vectors and
 * scalar tail.
 */
#ifndef GCLIP_TABLES_H
#define GCLIP_TABLES_H

#include "gclip_dtype.h"

/* Elements per chunk. A chunk is the unit of work of one CUDA block and of
 * one OpenMP iteration, and the unit of the fixed reduction order: each chunk
 * writes one partial to its own slot. 64 Ki elements = 256 KiB of f32. */
#define GCLIP_CHUNK_ELEMS ((int64_t)65536)

/* Bytes of one vector access (a 16-byte load or store). */
#define GCLIP_VEC_BYTES 16

/* Per-tensor entry of the plan's tensor table (host and device copies). */
typedef struct gclip_tensor_desc {
    void *data;
    int64_t numel;
    int32_t dtype;        /* gclip_dtype */
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

/* Split `count` elements of `elem_size` bytes starting at address `addr` into
 * a scalar head (up to the first 16-byte boundary), whole 16-byte vectors and
 * a scalar tail. addr must be aligned to elem_size, which is 2, 4 or 8 (the
 * dtypes' sizes): the split is shifts and masks, with no division. The norm
 * kernel splits a window of GCLIP_BLOCK_THREADS chunks at a time, one chunk
 * a thread, to flag the window's small ones, and the write kernels do the
 * same (gclip_for_block_chunks). A 64-bit division by a size known only at
 * run time is a called routine on a GPU. */
typedef struct gclip_split {
    int64_t head;    /* scalar elements before the first vector */
    int64_t vectors; /* number of 16-byte vectors */
    int64_t tail;    /* scalar elements after the last vector */
} gclip_split;

GCLIP_HD gclip_split gclip_split_vectors(uintptr_t addr, int64_t count, int elem_size)
{
    gclip_split s;
    const int sh = elem_size == 8 ? 3 : (elem_size == 4 ? 2 : 1); /* log2(elem_size) */
    /* bytes to the next 16-byte boundary (0 when aligned), in elements */
    int64_t head = (int64_t)((0u - (unsigned)addr) & (GCLIP_VEC_BYTES - 1)) >> sh;
    if (head > count)
        head = count;
    s.head = head;
    s.vectors = (count - head) >> (4 - sh); /* count - head >= 0 */
    s.tail = count - head - (s.vectors << (4 - sh));
    return s;
}

/* The split the norm's reduction walks: by element index, not by address.
 * Vector k is elements [k L, (k + 1) L) of the chunk (L = 16 / elem_size),
 * the head is empty and the tail holds the last count mod L elements, so
 * which elements share a thread and a float group does not depend on where
 * the chunk lies in memory, and a sum has the same bits at every offset
 * modulo 16. For a 16-byte aligned chunk it is gclip_split_vectors's split;
 * for another, the kernels assemble each vector from narrower loads
 * (chunk_walk.cuh, gclip_load_vec_any). The write passes keep the address
 * split: what they store does not depend on who stores it. */
GCLIP_HD gclip_split gclip_split_elements(int64_t count, int elem_size)
{
    gclip_split s;
    const int sh = elem_size == 8 ? 3 : (elem_size == 4 ? 2 : 1); /* log2(elem_size) */
    s.head = 0;
    s.vectors = count >> (4 - sh);
    s.tail = count - (s.vectors << (4 - sh));
    return s;
}

#endif /* GCLIP_TABLES_H */
