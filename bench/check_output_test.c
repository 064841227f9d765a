/*
 * check_output_test.c - bench_check_output passes the data each op leaves
 * (gclip's CPU path runs the op) and fails on one element changed, on
 * seeded random tensors of every dtype: a list of 7 (every tensor checked)
 * and one of 100 (64 of them checked, spread over the list).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "impl.h"

enum { KINDS = 7, MAX_TENSORS = 100 };
static const int64_t kind_numel[KINDS] = {1000, 37, 4096, 1, 515, 2048, 333};
static const gclip_dtype kind_dtype[KINDS] = {GCLIP_F32, GCLIP_F16, GCLIP_BF16, GCLIP_F32,
                                              GCLIP_F64, GCLIP_F16, GCLIP_BF16};
static int failures;

static void expect(int cond, const char *what, const char *note)
{
    if (!cond) {
        printf("FAIL: %s (%s)\n", what, note);
        failures++;
    }
}

/* xorshift normals-ish in [-2, 2), seeded, never all zero */
static float next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((double)(*s >> 11) * 0x1p-53 * 4.0 - 2.0);
}

static void store(void *data, gclip_dtype d, int64_t k, float v)
{
    if (d == GCLIP_F32)
        ((float *)data)[k] = v;
    else if (d == GCLIP_F64)
        ((double *)data)[k] = v;
    else
        ((uint16_t *)data)[k] = bench_half_round(d, v);
}

/* Whether bench_check_output looks at tensor i of n (all of up to 64). */
static int checked(int i, int n)
{
    if (n <= 64)
        return 1;
    for (int j = 0; j < 64; j++)
        if (i == j * (n - 1) / 63)
            return 1;
    return 0;
}

static void run(int ntensors)
{
    int64_t numel[MAX_TENSORS];
    gclip_dtype dtype[MAX_TENSORS];
    for (int i = 0; i < ntensors; i++) {
        numel[i] = kind_numel[i % KINDS];
        dtype[i] = kind_dtype[i % KINDS];
    }
    bench_workload w;
    memset(&w, 0, sizeof w);
    gclip_tensor t[MAX_TENSORS];
    size_t offs[MAX_TENSORS], total = 0;
    for (int i = 0; i < ntensors; i++) {
        offs[i] = total;
        total += ((size_t)numel[i] * bench_dtype_bytes(dtype[i]) + 63) / 64 * 64;
    }
    w.data = malloc(total);
    w.pristine = malloc(total);
    if (!w.data || !w.pristine) {
        printf("FAIL: out of memory\n");
        failures++;
        return;
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    double sum = 0.0, min_tensor = 1e300;
    for (int i = 0; i < ntensors; i++) {
        t[i] = (gclip_tensor){w.data + offs[i], numel[i], dtype[i]};
        double s = 0.0;
        for (int64_t k = 0; k < numel[i]; k++) {
            store(t[i].data, dtype[i], k, next(&seed));
            double x = bench_load_element(t[i].data, dtype[i], k);
            s += x * x;
        }
        sum += s;
        min_tensor = sqrt(s) < min_tensor ? sqrt(s) : min_tensor;
    }
    memcpy(w.pristine, w.data, total);
    w.count = (size_t)ntensors;
    w.tensors = t;
    w.arena_bytes = total;
    w.norm = sqrt(sum);
    w.min_tensor_norm = min_tensor;
    int64_t elems = 0;
    for (int i = 0; i < ntensors; i++)
        elems += numel[i];
    w.rms = sqrt(sum / (double)elems);

    gclip_plan *plan = NULL;
    if (gclip_plan_create(&plan, t, (size_t)ntensors, GCLIP_DEVICE_CPU) != GCLIP_STATUS_SUCCESS) {
        printf("FAIL: plan: %s\n", gclip_last_error());
        failures++;
        free(w.data);
        free(w.pristine);
        return;
    }
    for (int op = 0; op < BENCH_OP_COUNT; op++) {
        char note[96] = "";
        bench_params p = bench_params_for(&w, (bench_op)op);
        memcpy(w.data, w.pristine, total);
        if (bench_gclip_step(plan, (bench_op)op, &p, NULL) != GCLIP_STATUS_SUCCESS) {
            printf("FAIL: %s: %s\n", bench_op_name((bench_op)op), gclip_last_error());
            failures++;
            continue;
        }
        gclip_result r;
        gclip_get_result(plan, &r);
        int rc = bench_check_output(&w, (bench_op)op, &p, r.scale, note);
        expect(rc == 0, bench_op_name((bench_op)op), note);
        /* one element of each tensor changed in turn: caught, tensor named,
         * where the check looks (the others: not seen) */
        for (int i = 0; i < ntensors; i++) {
            /* a bit of the middle element's exponent (f16: a high mantissa bit) */
            unsigned char *b = (unsigned char *)t[i].data +
                               (size_t)(numel[i] / 2 + 1) * bench_dtype_bytes(dtype[i]) - 1;
            const unsigned char saved = *b;
            *b ^= 0x01;
            note[0] = 0;
            rc = bench_check_output(&w, (bench_op)op, &p, r.scale, note);
            char what[64], want[32];
            snprintf(what, sizeof what, "%s: tensor %d of %d changed", bench_op_name((bench_op)op),
                     i, ntensors);
            snprintf(want, sizeof want, "tensor %d ", i);
            if (checked(i, ntensors))
                expect(rc != 0 && strstr(note, want) == note, what, note);
            else
                expect(rc == 0, what, "a tensor the check does not look at was seen");
            *b = saved;
        }
        /* a factor one rounding off is caught by the exact ops */
        if (op == BENCH_CLIP || op == BENCH_UNSCALE_CLIP) {
            note[0] = 0;
            rc = bench_check_output(&w, (bench_op)op, &p, nextafterf(r.scale, 1.0f), note);
            expect(rc != 0, "a factor one ulp off", note);
        }
    }
    gclip_plan_destroy(plan);
    free(w.data);
    free(w.pristine);
}

int main(void)
{
    run(7);
    run(100);
    if (failures)
        printf("%d failures\n", failures);
    else
        printf("every op's data checked; every change caught\n");
    return failures != 0;
}
