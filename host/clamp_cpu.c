/*
 * clamp_cpu.c - the CPU twin of kernels/clamp_kernel.cu: every element
 * clamped in place to [-clip_value, clip_value], NaN kept; the slot says
 * that no norm was computed.
 */
#include <math.h>
#include <omp.h>

#include "cpu_walk.h"

void gclip_clamp_cpu(gclip_plan *plan, float clip_value)
{
    gclip_cpu_state *st = plan->engine;
    const gclip_tensor_desc *tensors = plan->tensors;
    const gclip_chunk *chunks = plan->chunks;
    int64_t n = plan->num_chunks;
    if (clip_value != INFINITY) {
#pragma omp parallel for schedule(static) num_threads(gclip_cpu_threads(plan)) if (n > 1)
        for (int64_t c = 0; c < n; c++)
            gclip_update_chunk_cpu(&tensors[chunks[c].tensor], chunks[c].index, 1, clip_value);
    }
    gclip_value_slot(st->result.sequence, &st->result);
}
