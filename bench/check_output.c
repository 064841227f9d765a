/*
 * check_output.c - after an op's timed runs, the data it left compared with
 * what that op makes of the pristine values, computed here apart from the
 * implementations but for the global clipping ops' factor, which the caller
 * passes (bench_gclip_check compares gclip's with the workload's norm).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "impl.h"

#define CHECKED_TENSORS 64

/* x op'd exactly as the library's contract says (docs/semantics.md): a
 * float product or clamp, rounded back to a 16-bit dtype; f64 in double. */
static double exact(gclip_dtype dtype, double x, bench_op op, float f)
{
    if (x != x)
        return x; /* NaN stays NaN, clamped or scaled */
    if (dtype == GCLIP_F64)
        return op == BENCH_VALUE ? fmin(fmax(x, -(double)f), (double)f) : x * (double)f;
    float y = op == BENCH_VALUE ? fminf(fmaxf((float)x, -f), f) : (float)x * f;
    if (dtype == GCLIP_F32)
        return y;
    return bench_half_load(dtype, bench_half_round(dtype, y));
}

/* One tensor's factor under per-tensor clipping, from its exact norm: the
 * implementation's own norm is within 1e-6 of it, so its factor, and the
 * data, may differ from this one by a rounding or two. */
static float tensor_factor(const gclip_tensor *pristine, float max_norm)
{
    double s = 0.0;
    for (int64_t k = 0; k < pristine->numel; k++) {
        const double x = bench_load_element(pristine->data, pristine->dtype, k);
        s += x * x;
    }
    const float c = max_norm * (1.0f / ((float)sqrt(s) + 1e-6f));
    return c < 1.0f ? c : 1.0f;
}

int bench_check_output(const bench_workload *w, bench_op op, const bench_params *p, float scale,
                       char *note)
{
    const size_t n = w->count;
    const size_t checked = n < CHECKED_TENSORS ? n : CHECKED_TENSORS;
    for (size_t j = 0; j < checked; j++) {
        const size_t i = checked == n ? j : j * (n - 1) / (checked - 1);
        const gclip_tensor *t = &w->tensors[i];
        gclip_tensor orig = *t;
        orig.data = w->pristine + ((const unsigned char *)t->data - w->data);
        if (op == BENCH_NORM || op == BENCH_CLIP_NOOP) {
            if (memcmp(t->data, orig.data, (size_t)t->numel * bench_dtype_bytes(t->dtype))) {
                snprintf(note, 96, "tensor %zu written by an op that writes nothing", i);
                return 1;
            }
            continue;
        }
        const int tolerant = op == BENCH_TENSOR_NORM;
        const float f = op == BENCH_VALUE ? p->clip_value
                        : tolerant       ? tensor_factor(&orig, p->max_norm)
                                         : scale;
        /* a rounding of the factor, and one of a 16-bit element */
        const double rel = t->dtype == GCLIP_F16 ? 0x1p-10 : t->dtype == GCLIP_BF16 ? 0x1p-7 : 4e-6;
        const double abs_tol = t->dtype == GCLIP_F16 ? 0x1p-24 : 0.0;
        for (int64_t k = 0; k < t->numel; k++) {
            const double x = bench_load_element(orig.data, t->dtype, k),
                         got = bench_load_element(t->data, t->dtype, k);
            const double want = exact(t->dtype, x, op, f);
            /* exact: the same value and the same sign of zero, or both NaN */
            const int ok = tolerant ? fabs(got - want) <= rel * fabs(want) + abs_tol
                                    : ((got == want && !signbit(got) == !signbit(want)) ||
                                       (got != got && want != want));
            if (!ok) {
                snprintf(note, 96, "tensor %zu element %lld: %.9g, want %.9g", i, (long long)k,
                         got, want);
                return 1;
            }
        }
    }
    return 0;
}
