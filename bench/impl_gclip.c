/*
 * impl_gclip.c - gclip's CPU path under the benchmark interface, and the
 * step and check helpers its CUDA counterpart shares.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "impl.h"

typedef struct gclip_cpu_ctx {
    bench_workload *w;
    gclip_plan *plan;
    int threads;
} gclip_cpu_ctx;

gclip_status bench_gclip_step(gclip_plan *plan, bench_op op, const bench_params *p,
                              gclip_stream stream)
{
    gclip_norm_options o = gclip_norm_options_default();
    o.max_norm = p->max_norm;
    o.inv_scale = p->inv_scale;
    o.nonfinite = (gclip_nonfinite_policy)p->nonfinite;
    switch (op) {
    case BENCH_NORM:
        return gclip_total_norm(plan, &o, stream);
    case BENCH_VALUE:
        return gclip_clip_grad_value(plan, p->clip_value, stream);
    case BENCH_TENSOR_NORM:
        return gclip_clip_grad_norm_per_tensor(plan, &o, stream);
    default: /* clip, clip-noop and unscale-clip differ only in their arguments */
        return gclip_clip_grad_norm(plan, &o, stream);
    }
}

int bench_norm_matches(double got, double want)
{
    return fabs(got - want) <= 1e-5 * want;
}

int bench_gclip_check(gclip_plan *plan, const bench_workload *w, bench_op op,
                      const bench_params *p, char *note)
{
    gclip_result r;
    gclip_status st = gclip_get_result(plan, &r);
    if (st != GCLIP_STATUS_SUCCESS) {
        snprintf(note, 96, "get_result: %s", gclip_status_string(st));
        return 1;
    }
    if (op == BENCH_VALUE)
        return 0;
    if (!bench_norm_matches(r.total_norm, w->norm * p->inv_scale)) {
        snprintf(note, 96, "norm %.9g differs from reference %.9g", r.total_norm,
                 w->norm * p->inv_scale);
        return 1;
    }
    /* the coefficient, not the factor: unscale-clip's factor includes inv_scale */
    int clipped = r.clip_coef < 1.0f;
    int want_clip = op == BENCH_CLIP || op == BENCH_UNSCALE_CLIP;
    if ((op == BENCH_CLIP_NOOP || want_clip) && clipped != want_clip) {
        snprintf(note, 96, "clip_coef %.9g: not in the %s regime", r.clip_coef,
                 bench_op_name(op));
        return 1;
    }
    if (want_clip) { /* the factor from the exact norm: coefficient times inv_scale */
        const double n = w->norm * p->inv_scale;
        const double want = fmin(1.0, p->max_norm / (n + 1e-6)) * p->inv_scale;
        if (!(fabs(r.scale - want) <= 1e-5 * want)) {
            snprintf(note, 96, "factor %.9g, want %.9g", r.scale, want);
            return 1;
        }
    }
    return 0;
}

/* The regime, then the data itself: what one run of the op makes of the
 * pristine values (the scale the result slot reports for the global ops). */
static int cpu_check_output(gclip_plan *plan, const bench_workload *w, bench_op op,
                            const bench_params *p, char *note)
{
    if (bench_gclip_check(plan, w, op, p, note))
        return 1;
    gclip_result r;
    if (gclip_get_result(plan, &r) != GCLIP_STATUS_SUCCESS) {
        snprintf(note, 96, "get_result: %s", gclip_last_error());
        return 1;
    }
    return bench_check_output(w, op, p, r.scale, note);
}

static void cpu_prepare(void *vctx, int writes)
{
    gclip_cpu_ctx *c = vctx;
    bench_workload_prepare(c->w, writes, c->threads);
}

static double cpu_run(void *vctx, bench_op op, const bench_params *p, char *err)
{
    gclip_cpu_ctx *c = vctx;
    double t0 = bench_now_ms();
    gclip_status st = bench_gclip_step(c->plan, op, p, NULL);
    double t1 = bench_now_ms();
    if (st != GCLIP_STATUS_SUCCESS) {
        snprintf(err, 96, "%s: %s", gclip_status_string(st), gclip_last_error());
        return -1.0;
    }
    return t1 - t0;
}

static int cpu_check(void *vctx, bench_op op, const bench_params *p, char *note)
{
    gclip_cpu_ctx *c = vctx;
    return cpu_check_output(c->plan, c->w, op, p, note);
}

static int no_launches(void *vctx, bench_op op, const bench_params *p)
{
    (void)vctx;
    (void)op;
    (void)p;
    return -1;
}

static void cpu_close(void *vctx)
{
    gclip_cpu_ctx *c = vctx;
    gclip_plan_destroy(c->plan);
    free(c);
}

int bench_gclip_cpu_open(bench_impl *impl, bench_workload *w, int threads)
{
    gclip_cpu_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    c->w = w;
    c->threads = threads;
    gclip_status st = gclip_plan_create(&c->plan, w->tensors, w->count, GCLIP_DEVICE_CPU);
    if (st == GCLIP_STATUS_SUCCESS)
        st = gclip_plan_set_num_threads(c->plan, threads);
    if (st != GCLIP_STATUS_SUCCESS) {
        fprintf(stderr, "gclip cpu plan for %s: %s: %s\n", w->name, gclip_status_string(st),
                gclip_last_error());
        gclip_plan_destroy(c->plan);
        free(c);
        return -1;
    }
    impl->impl = "gclip";
    impl->backend = "cpu";
    impl->threads = threads;
    impl->ctx = c;
    impl->prepare = cpu_prepare;
    impl->run = cpu_run;
    impl->check = cpu_check;
    impl->launches = no_launches;
    impl->close = cpu_close;
    return 0;
}
