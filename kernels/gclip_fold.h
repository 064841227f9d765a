/*
 * gclip_fold.h - the shape of the finalize's fold and of the launch grid,
 * shared by the norm kernel (norm_finalize.cuh: each lane folded by the
 * block that finishes its chunks, the lanes closed by the last block), its
 * CPU twin (host/finalize_cpu.c), the CUDA backend and the tests.
 *
 * The fold turns the per-chunk partials into per-tensor accumulators and the
 * plan's total. Its order depends on the number of chunks alone:
 *
 *   - the chunks are cut into GCLIP_FOLD_LANES contiguous lane ranges
 *     [gclip_fold_lane_begin(C, i), gclip_fold_lane_begin(C, i + 1));
 *   - inside its range a lane left-folds each run of chunks of one tensor;
 *     a run that continues into the following lanes is completed, in lane
 *     order, with their leading pieces;
 *   - a lane's share is the left fold of the tensors it completed, in the
 *     order it completed them (tensors without chunks are completed, with
 *     the neutral element, by the lane that meets the gap in tensor indices);
 *   - the lanes' shares are combined by a fixed halving tree.
 *
 * The launch grid never enters it (it decides only which block folds which
 * lane), so results are bitwise the same for any grid, and the CPU twin,
 * which runs the same steps lane by lane, gives the same bits from the same
 * partials.
 */
#ifndef GCLIP_FOLD_H
#define GCLIP_FOLD_H

#include <stddef.h>

#include "gclip_tables.h"

/* Lanes of the fold: the threads of the norm kernel's block. */
#define GCLIP_FOLD_LANES 256
/* The fold's loads per thread in one window (norm_finalize.cuh): a lane's
 * chunks are folded by a whole block, which first copies a window of
 * GCLIP_FOLD_LANES x batch partials and tensor indices into shared memory
 * (every load of a window depends on no loaded value, so they travel
 * together and the block waits for memory once per window). The batch
 * depends on the architecture; it decides only how many loads travel
 * together, never the order of the fold, so every batch gives the same bits.
 *   sm_80 and later: copied with cp.async (no register holds a load in
 *   flight), as large as the shared memory of four blocks per SM allows
 *   (docs/gpu-launch.md):
 *     GCLIP_FOLD_BATCH       sm_90 (and the compute_90 PTX)
 *     GCLIP_FOLD_BATCH_SM86  sm_86, sm_89 (100 KB of shared memory per SM)
 *     GCLIP_FOLD_BATCH_SM80  sm_80 (164 KB per SM)
 *     GCLIP_FOLD_BATCH_EMU   the SIMT emulator, which copies a block's
 *                            shared memory at every switch to another
 *                            block, so the window's size is its main cost
 *                            (and its window can be made smaller still)
 *   sm_75 (no cp.async): GCLIP_FOLD_BATCH_REG, loaded into registers, then
 *   stored to shared memory. */
#define GCLIP_FOLD_BATCH 13
#define GCLIP_FOLD_BATCH_SM80 11
#define GCLIP_FOLD_BATCH_SM86 6
#define GCLIP_FOLD_BATCH_REG 3
#define GCLIP_FOLD_BATCH_EMU 2
/* Partial slots a plan allocates: one per chunk, rounded up to an even
 * count (at least 2), because the fold copies partials in aligned pairs
 * (norm_finalize.cuh) and may read the slot past the last chunk. */
GCLIP_HD size_t gclip_partial_slots(uint32_t num_chunks)
{
    const size_t n = (size_t)num_chunks + (num_chunks & 1u);
    return n > 0 ? n : 2u;
}

/* "No tensor": the run before chunk 0, a lane range that starts a tensor. */
#define GCLIP_NO_TENSOR 0xffffffffu

/* Part i of n items cut into `parts` contiguous ranges: its first item
 * (part `parts` begins at n, the end). */
GCLIP_HD uint32_t gclip_split_begin(uint32_t n, uint32_t parts, uint32_t i)
{
    return (uint32_t)((uint64_t)n * i / parts);
}

/* The part whose (non-empty) range holds item c < n: the last part that
 * begins at or before c. */
GCLIP_HD uint32_t gclip_split_owner(uint32_t n, uint32_t parts, uint32_t c)
{
    return (uint32_t)((((uint64_t)c + 1u) * parts - 1u) / n);
}

/* First chunk of lane i's range (lane GCLIP_FOLD_LANES's is C, the end). */
GCLIP_HD uint32_t gclip_fold_lane_begin(uint32_t num_chunks, uint32_t lane)
{
    return gclip_split_begin(num_chunks, GCLIP_FOLD_LANES, lane);
}

/* The lane whose range holds chunk c. */
GCLIP_HD uint32_t gclip_fold_lane_of(uint32_t num_chunks, uint32_t c)
{
    return gclip_split_owner(num_chunks, GCLIP_FOLD_LANES, c);
}

/* Blocks of a norm launch of `grid` blocks whose chunks meet lane `lane`'s
 * (non-empty) range: block b walks chunks [gclip_split_begin(C, grid, b),
 * gclip_split_begin(C, grid, b + 1)). */
GCLIP_HD uint32_t gclip_fold_lane_blocks(uint32_t num_chunks, uint32_t grid, uint32_t lane)
{
    const uint32_t b = gclip_fold_lane_begin(num_chunks, lane);
    const uint32_t e = gclip_fold_lane_begin(num_chunks, lane + 1u);
    return gclip_split_owner(num_chunks, grid, e - 1u) - gclip_split_owner(num_chunks, grid, b) +
           1u;
}

/* What the block that folds a lane leaves for the last block
 * (norm_finalize.cuh; host/finalize_cpu.c keeps the same per lane). */
typedef struct gclip_fold_lane {
    double lead;        /* the leading piece: the run that continues `cont` */
    double run_acc;     /* the run the range leaves open */
    double share;       /* left fold of the tensors the lane completed */
    uint32_t cont;      /* tensor the range continues, or GCLIP_NO_TENSOR */
    uint32_t run;       /* tensor of the open run */
    uint32_t nonfinite; /* tensors completed whose norm is not finite */
    uint32_t whole;     /* the range lies inside one tensor */
} gclip_fold_lane;

/* The fold's workspace in the plan's device memory: per lane, a ticket that
 * counts the blocks done with its chunks (modulo gclip_fold_lane_blocks, so
 * it is back at 0 after every launch, like the norm kernel's ticket), and
 * the lane's results. Zeroed once at plan creation. */
typedef struct gclip_fold_workspace {
    unsigned int ticket[GCLIP_FOLD_LANES];
    gclip_fold_lane lane[GCLIP_FOLD_LANES];
} gclip_fold_workspace;

/* The longest chain of dependent rounds of global memory from a block's
 * last partial to the result, for a norm launch of `grid` blocks whose fold
 * copies `window` chunks at a time (GCLIP_FOLD_LANES x the batch): a block
 * takes the tickets of the lanes its chunks meet (one round: the atomics
 * travel together) and, for each lane whose count it completes, waits for
 * each window of that lane (one round each: partials and tensor indices,
 * and in the first the table entry before the range); the bound counts
 * every lane the block meets as completed by it. Then the norm ticket, the
 * last block's load of the lanes' records and the slot's previous sequence:
 * three more. Everything else is shared memory. */
GCLIP_HD uint32_t gclip_fold_load_rounds(uint32_t num_chunks, uint32_t grid, uint32_t window)
{
    uint32_t longest = 0;
    if (grid > num_chunks)
        grid = num_chunks;
    for (uint32_t b = 0; b < grid; b++) {
        const uint32_t first = gclip_split_begin(num_chunks, grid, b);
        const uint32_t last = gclip_split_begin(num_chunks, grid, b + 1u);
        uint32_t rounds = 1u;
        for (uint32_t c = first; c < last;) {
            const uint32_t lane = gclip_fold_lane_of(num_chunks, c);
            const uint32_t lb = gclip_fold_lane_begin(num_chunks, lane);
            const uint32_t le = gclip_fold_lane_begin(num_chunks, lane + 1u);
            rounds += (le - lb + window - 1u) / window;
            c = le;
        }
        longest = rounds > longest ? rounds : longest;
    }
    return longest + 3u;
}

/* Blocks of a launch over `num_chunks` chunks: one per chunk up to `cap`
 * (0 = no cap), at least one, so that an empty plan still writes its
 * result; never more blocks than chunks. The cap is fixed at plan creation
 * from the device (host/cuda_backend.c); it decides only which block walks
 * which chunk. */
GCLIP_HD uint32_t gclip_launch_grid(uint32_t num_chunks, uint32_t cap)
{
    const uint32_t n = num_chunks > 0 ? num_chunks : 1u;
    return cap != 0 && cap < n ? cap : n;
}

#endif /* GCLIP_FOLD_H */
