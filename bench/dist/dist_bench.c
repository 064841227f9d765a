/*
 * dist_bench.c - norm and clip across MPI ranks (CPU plans): time per step
 * and the collective's share of it.
 *
 *   mpirun -np N gclip-dist-bench [--elements E] [--tensors T] [--steps S]
 *                                 [--threads K] [--fold]
 *
 * Every rank holds E / N f32 elements (the global set sharded N ways) in T
 * tensors. For each operation the ranks meet at a barrier, run it, and the
 * step's time is the slowest rank's; the median over S steps is printed.
 *   local clip    gclip_clip_grad_norm on this rank's shard alone (no
 *                 collective: what clipping costs without the reduction)
 *   dist clip     gclip_dist_clip_grad_norm (accumulate, the transport's
 *                 blocking MPI_Allgather, finalize, apply)
 *   dist norm     gclip_dist_compute_clip_factor (no write pass)
 *   allgather     MPI_Allgather of one 16-byte partial per rank alone
 * and the phases of dist clip, run on a plan without a transport so that
 * each can be timed (the same calls the MPI transport makes):
 *   accumulate    gclip_dist_accumulate: the local read pass
 *   gather        MPI_Allgather of the partials, including the wait for the
 *                 slowest rank to arrive
 *   finalize+apply  the fold and the write pass
 * The collective's share is allgather / dist clip; gather - allgather is
 * time spent waiting for the slowest rank (load imbalance, or ranks that
 * share a core). With --fold, rank 0 also
 * times gclip_norm_finalize over 1,024 and 16,384 partials (the fold
 * every rank runs after the all-gather), on a CPU plan.
 *
 * Every clip step clips and writes every element, and the values stay put:
 * steps alternate between an AMP unscale of 2 with max_norm 1.5 x N0
 * (coefficient 0.75, factor 1.5) and no unscale with max_norm N0
 * (coefficient 2/3, factor 2/3), N0 being the norm before the first step.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "gclip.h"
#include "gclip_dist.h"

typedef struct config {
    long long elements;
    int tensors;
    int steps;
    int threads;
    int fold;
} config;

static int parse(int argc, char **argv, config *c)
{
    c->elements = 1ll << 24;
    c->tensors = 8;
    c->steps = 30;
    c->threads = 1;
    c->fold = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--fold")) {
            c->fold = 1;
        } else if (v && !strcmp(a, "--elements")) {
            c->elements = atoll(v), i++;
        } else if (v && !strcmp(a, "--tensors")) {
            c->tensors = atoi(v), i++;
        } else if (v && !strcmp(a, "--steps")) {
            c->steps = atoi(v), i++;
        } else if (v && !strcmp(a, "--threads")) {
            c->threads = atoi(v), i++;
        } else {
            return 0;
        }
    }
    return c->elements > 0 && c->tensors > 0 && c->steps > 0 && c->threads >= 0;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The operations timed, one step each. */
typedef enum op {
    LOCAL_CLIP,
    DIST_CLIP,
    DIST_NORM,
    ALLGATHER,
    PHASE_ACCUMULATE,
    PHASE_GATHER,
    PHASE_FINISH,
    NUM_OPS
} op;
static const char *op_names[NUM_OPS] = {"local clip", "dist clip",  "dist norm",     "allgather",
                                        "accumulate", "gather",     "finalize+apply"};

typedef struct setup {
    gclip_plan *local;
    gclip_dist_plan *dist;
    gclip_dist_plan *phased; /* the same tensors, no transport */
    float n0_local, n0_global;
    int parity;              /* which of the two alternating steps is next */
    gclip_partial *gathered; /* for the bare all-gather */
} setup;

/* The options of the next step for data of norm n0 (see the banner). */
static gclip_norm_options step_options(float n0, int parity)
{
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.inv_scale = parity ? 2.0f : 1.0f;
    o.max_norm = parity ? 1.5f * n0 : n0;
    return o;
}

static int run_op(setup *s, op which)
{
    const gclip_norm_options local = step_options(s->n0_local, s->parity);
    const gclip_norm_options global = step_options(s->n0_global, s->parity);
    if (which == LOCAL_CLIP || which == DIST_CLIP || which == PHASE_FINISH)
        s->parity ^= 1; /* the steps that write */
    switch (which) {
    case LOCAL_CLIP:
        return (int)gclip_clip_grad_norm(s->local, &local, NULL);
    case DIST_CLIP:
        return (int)gclip_dist_clip_grad_norm(s->dist, &global, NULL);
    case DIST_NORM:
        return (int)gclip_dist_compute_clip_factor(s->dist, &global, NULL);
    case ALLGATHER: {
        gclip_partial mine = {1.0, 0, 0};
        return MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, s->gathered, (int)sizeof mine,
                             MPI_BYTE, MPI_COMM_WORLD) != MPI_SUCCESS;
    }
    case PHASE_ACCUMULATE:
        return (int)gclip_dist_accumulate(s->phased, &global, NULL);
    case PHASE_GATHER: {
        const gclip_partial *send = NULL;
        gclip_partial *recv = NULL;
        size_t n = 0;
        gclip_dist_plan_send_partial(s->phased, 0, &send);
        gclip_dist_plan_gather_buffer(s->phased, 0, &recv, &n);
        return MPI_Allgather(send, (int)sizeof *send, MPI_BYTE, recv, (int)sizeof *send,
                             MPI_BYTE, MPI_COMM_WORLD) != MPI_SUCCESS;
    }
    default: {
        const gclip_status st = gclip_dist_finalize(s->phased, &global, NULL);
        return st != GCLIP_STATUS_SUCCESS ? (int)st : (int)gclip_dist_apply_clip_factor(s->phased, NULL);
    }
    }
}

/* Median over `steps` of the slowest rank's time, in seconds. */
static double time_op(setup *s, op which, int steps, double *scratch)
{
    for (int k = 0; k < steps + 2; k++) { /* two warm-up steps */
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        if (run_op(s, which) != 0) {
            fprintf(stderr, "%s failed: %s\n", op_names[which], gclip_dist_last_error());
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        double dt = MPI_Wtime() - t0, slowest = 0;
        MPI_Allreduce(&dt, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (k >= 2)
            scratch[k - 2] = slowest;
    }
    return median(scratch, steps);
}

/* The three phases of one step in sequence, each behind a barrier; the
 * medians of each phase's slowest rank. */
static void time_phases(setup *s, int steps, double *scratch, double out[3])
{
    double *per = scratch + steps; /* steps x 3 */
    for (int k = 0; k < steps + 2; k++)
        for (int ph = 0; ph < 3; ph++) {
            MPI_Barrier(MPI_COMM_WORLD);
            const double t0 = MPI_Wtime();
            if (run_op(s, (op)(PHASE_ACCUMULATE + ph)) != 0) {
                fprintf(stderr, "%s failed: %s\n", op_names[PHASE_ACCUMULATE + ph],
                        gclip_dist_last_error());
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            double dt = MPI_Wtime() - t0, slowest = 0;
            MPI_Allreduce(&dt, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            if (k >= 2)
                per[(k - 2) * 3 + ph] = slowest;
        }
    for (int ph = 0; ph < 3; ph++) {
        for (int k = 0; k < steps; k++)
            scratch[k] = per[k * 3 + ph];
        out[ph] = median(scratch, steps);
    }
}

/* gclip_norm_finalize over n partials on an empty CPU plan: the fold. */
static double time_fold(size_t n, int steps, double *scratch)
{
    gclip_plan *plan = NULL;
    gclip_partial *parts = calloc(n, sizeof *parts);
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    if (!parts || gclip_plan_create(&plan, NULL, 0, GCLIP_DEVICE_CPU) != GCLIP_STATUS_SUCCESS ||
        gclip_norm_accumulate(plan, &o, NULL) != GCLIP_STATUS_SUCCESS) {
        free(parts);
        return NAN;
    }
    const gclip_partial *own = NULL;
    gclip_plan_partial(plan, &own);
    for (size_t i = 0; i < n; i++) {
        parts[i] = *own;
        parts[i].acc = 1.0 + (double)i * 1e-3;
    }
    for (int k = 0; k < steps; k++) {
        const double t0 = MPI_Wtime();
        gclip_norm_finalize(plan, &o, parts, n, NULL);
        scratch[k] = MPI_Wtime() - t0;
    }
    gclip_plan_destroy(plan);
    free(parts);
    return median(scratch, steps);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    config c;
    if (!parse(argc, argv, &c)) {
        if (rank == 0)
            fprintf(stderr, "usage: gclip-dist-bench [--elements E] [--tensors T] [--steps S] "
                            "[--threads K] [--fold]\n");
        MPI_Finalize();
        return 2;
    }

    /* this rank's shard, split into c.tensors tensors of about equal size */
    const long long begin = c.elements * rank / size, end = c.elements * (rank + 1) / size;
    const long long mine = end - begin;
    float *data = malloc((size_t)(mine > 0 ? mine : 1) * sizeof *data);
    gclip_tensor *t = calloc((size_t)c.tensors, sizeof *t);
    gclip_dist_tensor *dt = calloc((size_t)c.tensors, sizeof *dt);
    double *scratch = calloc((size_t)c.steps * 4, sizeof *scratch);
    setup s = {NULL, NULL, NULL, 0.0f, 0.0f, 0, calloc((size_t)size, sizeof(gclip_partial))};
    if (!data || !t || !dt || !scratch || !s.gathered) {
        fprintf(stderr, "allocation failed\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    unsigned x = 12345u + (unsigned)rank;
    for (long long i = 0; i < mine; i++) {
        x = x * 1664525u + 1013904223u;
        data[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * 1e-3f;
    }
    for (int k = 0; k < c.tensors; k++) {
        const long long b = mine * k / c.tensors, e = mine * (k + 1) / c.tensors;
        t[k] = (gclip_tensor){data + b, e - b, GCLIP_F32};
        dt[k] = (gclip_dist_tensor){t[k], 0, GCLIP_DIST_SHARDED};
    }
    MPI_Comm world = MPI_COMM_WORLD;
    if (gclip_plan_create(&s.local, t, (size_t)c.tensors, GCLIP_DEVICE_CPU) != GCLIP_STATUS_SUCCESS ||
        gclip_dist_plan_create_mpi(&s.dist, dt, (size_t)c.tensors, &world, 1) !=
            GCLIP_STATUS_SUCCESS ||
        gclip_dist_plan_create_external(&s.phased, dt, (size_t)c.tensors, GCLIP_DEVICE_CPU, &rank,
                                        &size, 1) != GCLIP_STATUS_SUCCESS) {
        fprintf(stderr, "plan: %s %s\n", gclip_last_error(), gclip_dist_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    gclip_plan_set_num_threads(s.local, c.threads);
    gclip_dist_plan_set_num_threads(s.dist, c.threads);
    gclip_dist_plan_set_num_threads(s.phased, c.threads);
    /* the norms before the first step: the local one, and the global one
     * (which also checks that the dist plan works) */
    gclip_norm_options plain = GCLIP_NORM_OPTIONS_INIT;
    gclip_result r;
    if (gclip_total_norm(s.local, &plain, NULL) != GCLIP_STATUS_SUCCESS ||
        gclip_get_result(s.local, &r) != GCLIP_STATUS_SUCCESS) {
        fprintf(stderr, "local norm: %s\n", gclip_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    s.n0_local = r.total_norm;
    if (gclip_dist_compute_clip_factor(s.dist, &plain, NULL) != GCLIP_STATUS_SUCCESS ||
        gclip_dist_get_result(s.dist, &r) != GCLIP_STATUS_SUCCESS) {
        fprintf(stderr, "global norm: %s\n", gclip_dist_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    s.n0_global = r.total_norm;

    double t_op[NUM_OPS];
    for (int k = 0; k <= ALLGATHER; k++)
        t_op[k] = time_op(&s, (op)k, c.steps, scratch);
    time_phases(&s, c.steps, scratch, &t_op[PHASE_ACCUMULATE]);
    if (rank == 0) {
        printf("| ranks | elements/rank | local clip (ms) | dist clip (ms) | dist norm (ms) | "
               "allgather 16 B (us) | collective's share | phases: accumulate / gather / "
               "finalize+apply (ms) |\n");
        printf("| %d | %lld | %.3f | %.3f | %.3f | %.1f | %.2f%% | %.3f / %.3f / %.3f |\n", size,
               mine, t_op[LOCAL_CLIP] * 1e3, t_op[DIST_CLIP] * 1e3, t_op[DIST_NORM] * 1e3,
               t_op[ALLGATHER] * 1e6, 100.0 * t_op[ALLGATHER] / t_op[DIST_CLIP],
               t_op[PHASE_ACCUMULATE] * 1e3, t_op[PHASE_GATHER] * 1e3, t_op[PHASE_FINISH] * 1e3);
        if (c.fold) {
            const size_t ns[2] = {1024, 16384};
            for (int k = 0; k < 2; k++)
                printf("fold of %zu partials (gclip_norm_finalize, CPU): %.1f us\n", ns[k],
                       time_fold(ns[k], c.steps, scratch) * 1e6);
        }
    }
    gclip_dist_plan_destroy(s.phased);
    gclip_dist_plan_destroy(s.dist);
    gclip_plan_destroy(s.local);
    free(s.gathered);
    free(scratch);
    free(dt);
    free(t);
    free(data);
    MPI_Finalize();
    return 0;
}
