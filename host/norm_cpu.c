/*
 * norm_cpu.c - the CPU twin of kernels/norm_kernel.cu and its finalize
 * (kernels/norm_finalize.cuh): the accumulate phase and, for every op but
 * GCLIP_OP_ACCUMULATE, the finalize into the result slot.
 *
 * Work is split into the plan's chunks (64 Ki elements of one tensor each).
 * Each chunk's partial is computed as the norm kernel's block computes it
 * (float groups folded into double, per-thread accumulators folded in thread
 * order: host/cpu_walk.h) and written to the chunk's own slot; the slots are
 * then folded in the order the kernel's last block folds them
 * (gclip_fold_partials_cpu, gclip_fold.h). The thread count only decides who
 * computes which chunk, so the results are bitwise identical for any number
 * of threads.
 */
#include "cpu_walk.h"

/* A run of chunks, each partial into its own slot: the read pass for
 * baseline x86-64 and other CPUs. No AVX2 clone of it: a CPU with AVX2 has
 * F16C as well and runs norm_cpu_f16c.c's, so this one is also the one the
 * tests run as the generic build (gclip_read_run_generic). */
static void read_run(const gclip_plan *plan, uint32_t first, uint32_t last, const void *arg)
{
    gclip_read_chunks(plan, first, last, arg);
}

void gclip_read_run_generic(const gclip_plan *plan, uint32_t first, uint32_t last, const void *arg)
{
    read_run(plan, first, last, arg);
}

gclip_cpu_run_fn gclip_cpu_read_run(void)
{
#ifdef GCLIP_HAVE_READ_F16C
    if (gclip_cpu_has_f16c())
        return gclip_read_run_f16c;
#endif
    return read_run;
}

static void read_pass(gclip_plan *plan, double *partials, int32_t kind, float p)
{
    const gclip_read_arg a = {partials, kind, p};
    gclip_cpu_for_chunks(plan, gclip_cpu_read_run(), &a);
}

void gclip_norm_fold_cpu(gclip_plan *plan, const gclip_norm_params *np,
                         const gclip_norm_params *fold_np, const gclip_scalars *sc)
{
    gclip_cpu_state *st = plan->engine;
    /* the norm kernel's fold of the chunk slots (kernels/gclip_fold.h) */
    double total = GCLIP_TERM_ZERO;
    uint32_t nonfinite = 0;
    gclip_fold_partials_cpu(plan->chunks, plan->num_chunks, (uint32_t)plan->count, st->partials,
                            fold_np, sc, st->tensor_factor, &total, &nonfinite,
                            gclip_cpu_threads(plan));
    st->partial.acc = total;
    st->partial.nonfinite = nonfinite;
    st->partial.fingerprint = np->fingerprint;

    const float n = gclip_norm_value(total, np->kind, np->p, sc->inv_scale);
    gclip_finalize_slot(n, nonfinite, np, sc, sc->status, st->result.sequence, &st->result);
    if (np->op == GCLIP_OP_CLIP_PER_TENSOR) {
        const int skip_all =
            (st->result.nonfinite && np->policy != GCLIP_NONFINITE_PROPAGATE) ||
            st->result.status != GCLIP_STATUS_SUCCESS;
        if (skip_all)
            for (size_t i = 0; i < plan->count; i++)
                st->tensor_factor[i] = 1.0f;
    }
}

void gclip_norm_cpu(gclip_plan *plan, const gclip_norm_params *np)
{
    gclip_cpu_state *st = plan->engine;
    read_pass(plan, st->partials, np->kind, np->p);
    const gclip_scalars sc = gclip_resolve_scalars(np);
    gclip_norm_fold_cpu(plan, np, np, &sc);
}
