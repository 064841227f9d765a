/*
 * naive.c - the baseline a user writes by hand: one thread, a loop per
 * tensor, the sum of squares accumulated in one double, then a scale (or
 * clamp) loop. Compiled with the same flags as the rest of the benchmark.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "impl.h"

#define EPS 1e-6

typedef struct naive_ctx {
    bench_workload *w;
    int threads;
    double last_norm;
    float last_scale; /* the factor of the last global clip (1: none) */
} naive_ctx;

static double sum_squares(const gclip_tensor *t)
{
    double s = 0.0;
    if (t->dtype == GCLIP_F32) {
        const float *x = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            s += (double)x[i] * x[i];
    } else {
        const uint16_t *x = t->data;
        for (int64_t i = 0; i < t->numel; i++) {
            double v = bench_half_load(t->dtype, x[i]);
            s += v * v;
        }
    }
    return s;
}

static void scale(gclip_tensor *t, float f)
{
    if (t->dtype == GCLIP_F32) {
        float *x = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            x[i] *= f;
    } else {
        uint16_t *x = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            x[i] = bench_half_round(t->dtype, bench_half_load(t->dtype, x[i]) * f);
    }
}

static float clamp1(float x, float v)
{
    return x < -v ? -v : (x > v ? v : x);
}

static void clamp(gclip_tensor *t, float v)
{
    if (t->dtype == GCLIP_F32) {
        float *x = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            x[i] = clamp1(x[i], v);
    } else {
        uint16_t *x = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            x[i] = bench_half_round(t->dtype, clamp1(bench_half_load(t->dtype, x[i]), v));
    }
}

static double total_norm(const bench_workload *w)
{
    double s = 0.0;
    for (size_t i = 0; i < w->count; i++)
        s += sum_squares(&w->tensors[i]);
    return sqrt(s);
}

/* Global-norm clipping with an optional loss-scale factor. */
static void clip_global(naive_ctx *c, const bench_params *p)
{
    double norm = total_norm(c->w) * p->inv_scale;
    double coef = fmin(1.0, p->max_norm / (norm + EPS));
    float f = (float)(coef * p->inv_scale);
    c->last_scale = f;
    if (f != 1.0f)
        for (size_t i = 0; i < c->w->count; i++)
            scale(&c->w->tensors[i], f);
    c->last_norm = norm;
}

static void clip_per_tensor(naive_ctx *c, const bench_params *p)
{
    double total = 0.0;
    for (size_t i = 0; i < c->w->count; i++) {
        double s = sum_squares(&c->w->tensors[i]);
        total += s;
        double coef = p->max_norm / (sqrt(s) + EPS);
        if (coef < 1.0)
            scale(&c->w->tensors[i], (float)coef);
    }
    c->last_norm = sqrt(total);
}

static double naive_run(void *vctx, bench_op op, const bench_params *p, char *err)
{
    naive_ctx *c = vctx;
    (void)err;
    double t0 = bench_now_ms();
    switch (op) {
    case BENCH_NORM:
        c->last_norm = total_norm(c->w);
        break;
    case BENCH_VALUE:
        for (size_t i = 0; i < c->w->count; i++)
            clamp(&c->w->tensors[i], p->clip_value);
        break;
    case BENCH_TENSOR_NORM:
        clip_per_tensor(c, p);
        break;
    default:
        clip_global(c, p);
        break;
    }
    return bench_now_ms() - t0;
}

static void naive_prepare(void *vctx, int writes)
{
    naive_ctx *c = vctx;
    bench_workload_prepare(c->w, writes, c->threads);
}

static int naive_check(void *vctx, bench_op op, const bench_params *p, char *note)
{
    naive_ctx *c = vctx;
    if (op != BENCH_VALUE && !bench_norm_matches(c->last_norm, c->w->norm * p->inv_scale)) {
        snprintf(note, 96, "norm %.9g differs from reference %.9g", c->last_norm,
                 c->w->norm * p->inv_scale);
        return 1;
    }
    return bench_check_output(c->w, op, p, c->last_scale, note);
}

static int naive_launches(void *vctx, bench_op op, const bench_params *p)
{
    (void)vctx;
    (void)op;
    (void)p;
    return -1;
}

static void naive_close(void *vctx)
{
    free(vctx);
}

int bench_naive_open(bench_impl *impl, bench_workload *w, int threads)
{
    naive_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    c->w = w;
    c->threads = threads;
    impl->impl = "naive";
    impl->backend = "cpu";
    impl->threads = 1;
    impl->ctx = c;
    impl->prepare = naive_prepare;
    impl->run = naive_run;
    impl->check = naive_check;
    impl->launches = naive_launches;
    impl->close = naive_close;
    return 0;
}
