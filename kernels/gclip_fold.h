/*
 * gclip_fold.h - the shape of the finalize's fold and of the launch grid,
 * shared by the norm kernel's last block (norm_finalize.cuh), its CPU twin
 * (host/finalize_cpu.c), the CUDA backend and the tests.
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
 * The launch grid never enters it, so results are bitwise the same for any
 * grid, and the CPU twin, which runs the same steps lane by lane, gives the
 * same bits from the same partials.
 */
#ifndef GCLIP_FOLD_H
#define GCLIP_FOLD_H

#include "gclip_tables.h"

/* Lanes of the fold: the threads of the norm kernel's block. */
#define GCLIP_FOLD_LANES 256
/* Chunks whose partial and tensor index a lane loads before folding any of
 * them: the loads of one batch depend on no loaded value, so they travel
 * together, and a lane waits for memory once per batch. The batch depends
 * on the architecture (norm_finalize.cuh); it decides only how many loads
 * travel together, never the order of the fold, so every batch gives the
 * same bits.
 *   sm_80 and later: the batch is staged in shared memory with cp.async (no
 *   register holds a load in flight), as large as the shared memory of four
 *   blocks per SM allows (docs/gpu-launch.md):
 *     GCLIP_FOLD_BATCH       sm_90 (and the compute_90 PTX)
 *     GCLIP_FOLD_BATCH_SM86  sm_86, sm_89 (100 KB of shared memory per SM),
 *                            the emulator
 *     GCLIP_FOLD_BATCH_SM80  sm_80 (164 KB per SM)
 *   sm_75 (no cp.async): GCLIP_FOLD_BATCH_REG, held in registers, what fits
 *   the norm kernel's 64 registers. */
#define GCLIP_FOLD_BATCH 14
#define GCLIP_FOLD_BATCH_SM80 11
#define GCLIP_FOLD_BATCH_SM86 6
#define GCLIP_FOLD_BATCH_REG 4
/* "No tensor": the run before chunk 0, a lane range that starts a tensor. */
#define GCLIP_NO_TENSOR 0xffffffffu

/* First chunk of lane i's range (lane GCLIP_FOLD_LANES's is C, the end). */
GCLIP_HD uint32_t gclip_fold_lane_begin(uint32_t num_chunks, uint32_t lane)
{
    return (uint32_t)((uint64_t)num_chunks * lane / GCLIP_FOLD_LANES);
}

/* Dependent rounds of global loads in the last block's fold with a batch of
 * `batch` chunks (GCLIP_FOLD_BATCH on sm_90): the ticket's atomic, then the
 * batches of the longest lane range (each batch one round: its partials and
 * tensor indices, plus the two table entries around the range start in the
 * first), then the slot's previous sequence. Everything else the fold reads
 * is shared memory. */
GCLIP_HD uint32_t gclip_fold_load_rounds(uint32_t num_chunks, uint32_t batch)
{
    uint32_t longest = 0;
    for (uint32_t i = 0; i < GCLIP_FOLD_LANES; i++) {
        const uint32_t n = gclip_fold_lane_begin(num_chunks, i + 1) -
                           gclip_fold_lane_begin(num_chunks, i);
        longest = n > longest ? n : longest;
    }
    return 1u + (longest + batch - 1) / batch + 1u;
}

/* Blocks of a grid-stride launch over `num_chunks` chunks: one per chunk up
 * to `cap` (0 = no cap), at least one, so that an empty plan still writes its
 * result. The cap is fixed at plan creation from the device (host/
 * cuda_backend.c); it decides only which block walks which chunk. */
GCLIP_HD uint32_t gclip_launch_grid(uint32_t num_chunks, uint32_t cap)
{
    const uint32_t n = num_chunks > 0 ? num_chunks : 1u;
    return cap != 0 && cap < n ? cap : n;
}

#endif /* GCLIP_FOLD_H */
