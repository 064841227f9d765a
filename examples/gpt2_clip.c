/*
 * gpt2_clip.c - the main job: global-norm clipping of GPT-2 small's 148
 * gradient tensors (124.4 M f32 elements) on the best backend present, as a
 * training loop calls it every step: the steps are queued with no host wait,
 * and the result is read once, after the last.
 *
 *   gpt2_clip [--cpu] [--steps N] [--max-norm C]
 *
 * Step 0 clips at --max-norm (default 1) and prints the norm and the clip
 * coefficient. The N timed steps then each clip the previous step's output
 * by a factor 2^(-1/N) (max_norm set on the host from step 0's result, no
 * result read in between), so every step writes every gradient and the
 * norm ends at half of step 0's output: the data stays far from the
 * subnormals whatever N. The program checks step 0's norm against the exact
 * norm of the data (a double sum on the host, 1e-6), follows every step's
 * expected norm and coefficient, eps included, checks the last step's
 * against them, and the norm of the data it leaves (read back once, after
 * the timed steps) against the one expected, to 1e-5; then prints
 * milliseconds per step. Any difference exits 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gclip.h"
#include "gpt2_device.h"
#include "gpt2_shapes.h"

/* xorshift64* uniform in [-scale, scale): cheap, seeded, never all zero. */
static void fill_random(float *x, int64_t n, uint64_t seed, float scale)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        uint64_t r = s * 0x2545f4914f6cdd1dull;
        x[i] = scale * ((float)(r >> 40) * (1.0f / 8388608.0f) - 1.0f);
    }
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* The exact 2-norm of n floats: a double sum of squares (relative error
 * about n * 2^-53, far below the library's 1e-6 for GPT-2's 124 M). */
static double norm2(const float *x, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += (double)x[i] * (double)x[i];
    return sqrt(s);
}

/* The max_norm of timed step s of n: 2^(-s/n) of step 0's output norm. */
static float target(double start, int s, int n)
{
    return (float)(start * exp2(-(double)s / n));
}

/* |got - want| <= rel * |want| (false for NaN) */
static int close_to(double got, double want, double rel)
{
    return fabs(got - want) <= rel * fabs(want);
}

/* For main's calls: report a failed status and leave through `done`. */
#define CHECK(call)                                                                   \
    do {                                                                              \
        gclip_status s_ = (call);                                                     \
        if (s_ != GCLIP_STATUS_SUCCESS && s_ != GCLIP_STATUS_NONFINITE) {             \
            fprintf(stderr, "%s failed: %s (%s)\n", #call, gclip_status_string(s_),   \
                    gclip_last_error());                                              \
            goto done;                                                                \
        }                                                                             \
    } while (0)

/* The plan of `count` tensors laid out in `base` (host) at `data` on
 * `device`; tensors[i] keeps its offset from `base`. */
static gclip_status make_plan(gclip_plan **plan, gclip_tensor *tensors, size_t count,
                              const float *base, float *data, int device)
{
    gclip_tensor t[GPT2_SMALL_TENSORS];
    for (size_t i = 0; i < count; i++) {
        t[i] = tensors[i];
        t[i].data = data + ((const float *)tensors[i].data - base);
    }
    return gclip_plan_create(plan, t, count, device);
}

int main(int argc, char **argv)
{
    int steps = 20, force_cpu = 0, rc = 1;
    float max_norm = 1.0f;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cpu"))
            force_cpu = 1;
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--max-norm") && i + 1 < argc)
            max_norm = (float)atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--cpu] [--steps N] [--max-norm C]\n", argv[0]);
            return 2;
        }
    }
    /* below 1e-3 the norm's eps (1e-6) would make the timed steps' factors
     * other than 2^(-1/N), and far below it the data subnormal */
    if (steps < 1 || !(max_norm >= 1e-3f) || !isfinite(max_norm)) {
        fprintf(stderr, "--steps must be >= 1 and --max-norm finite and >= 1e-3\n");
        return 2;
    }
    int64_t numel[GPT2_SMALL_TENSORS];
    size_t count = gpt2_small_numel(numel);
    int64_t total = 0;
    for (size_t i = 0; i < count; i++)
        total += numel[i];

    gclip_plan *plan = NULL;
    float *data = NULL; /* device memory, when the CUDA backend takes the plan */
    float *host = malloc((size_t)total * sizeof(float));
    if (!host) {
        fprintf(stderr, "out of host memory\n");
        return 1;
    }
    gclip_tensor tensors[GPT2_SMALL_TENSORS];
    int64_t off = 0;
    for (size_t i = 0; i < count; i++) {
        fill_random(host + off, numel[i], 1234 + i, 1e-3f);
        tensors[i].data = host + off;
        tensors[i].numel = numel[i];
        tensors[i].dtype = GCLIP_F32;
        off += numel[i];
    }

    const double exact = norm2(host, total); /* before any step */

    /* CUDA device 0 when this build and the machine have a usable one, else
     * the CPU path (a device the build has no kernels for is NOT_SUPPORTED) */
    int device = GCLIP_DEVICE_CPU;
    if (!force_cpu && gclip_cuda_device_count() > 0 && gpt2_device_upload(host, total, &data) == 0) {
        const gclip_status s = make_plan(&plan, tensors, count, host, data, 0);
        if (s == GCLIP_STATUS_SUCCESS) {
            device = 0;
        } else {
            printf("(cuda:0 not used: %s, %s)\n", gclip_status_string(s), gclip_last_error());
            gpt2_device_free(data);
            data = NULL;
        }
    }
    if (device == GCLIP_DEVICE_CPU) {
        if (!force_cpu)
            printf("(no usable CUDA device in this build or machine: using the CPU path)\n");
        CHECK(make_plan(&plan, tensors, count, host, host, GCLIP_DEVICE_CPU));
    }
    printf("gclip %d: GPT-2 small, %zu tensors, %lld f32 elements, backend %s\n",
           gclip_get_version(), count, (long long)total,
           device == GCLIP_DEVICE_CPU ? "cpu" : "cuda:0");

    gclip_norm_options opt = GCLIP_NORM_OPTIONS_INIT;
    opt.max_norm = max_norm;
    gclip_result r;
    CHECK(gclip_clip_grad_norm(plan, &opt, NULL));
    CHECK(gclip_get_result(plan, &r));
    printf("step 0: total_norm %.6g (exact %.6g)  clip_coef %.6g  nonfinite %d\n",
           (double)r.total_norm, exact, (double)r.clip_coef, r.nonfinite);
    if (r.nonfinite || !close_to(r.total_norm, exact, 1e-6)) {
        fprintf(stderr, "step 0's norm is not the data's\n");
        goto done;
    }
    /* the norm of step 0's output, and the timed steps' targets below it */
    const double start = (double)r.total_norm * (r.clip_coef < 1.0f ? r.clip_coef : 1.0f);
    double t0 = now_ms();
    for (int s = 1; s <= steps; s++) {
        opt.max_norm = target(start, s, steps);
        CHECK(gclip_clip_grad_norm(plan, &opt, NULL));
    }
    CHECK(gclip_get_result(plan, &r)); /* waits for the last step */
    double ms = (now_ms() - t0) / steps;
    /* Each step's output norm is n * min(1, max_norm / (n + eps)) of its
     * input's norm n: the last step reads the output of the one before it,
     * and the data end at its own output. */
    const double eps = (double)opt.eps;
    double before_last = start;
    for (int s = 1; s < steps; s++)
        before_last *= fmin(1.0, (double)target(start, s, steps) / (before_last + eps));
    const double coef = fmin(1.0, (double)target(start, steps, steps) / (before_last + eps));
    const double after = before_last * coef;
    printf("last step: total_norm %.6g (expected %.6g)  clip_coef %.6g (expected %.6g)\n",
           (double)r.total_norm, before_last, (double)r.clip_coef, coef);
    if (!close_to(r.total_norm, before_last, 1e-5) || !close_to(r.clip_coef, coef, 1e-5)) {
        fprintf(stderr, "the last step did not clip the norm expected\n");
        goto done;
    }
    if (data && gpt2_device_download(data, total, host) != 0)
        goto done;
    const double left = norm2(host, total);
    printf("the data's norm after the last step: %.6g (expected %.6g)\n", left, after);
    if (!close_to(left, after, 1e-5)) {
        fprintf(stderr, "the data were not clipped to the norm expected\n");
        goto done;
    }
    printf("%.3f ms per clip step (norm + scale, %d steps, each clipping by 2^(-1/%d))\n", ms,
           steps, steps);
    rc = 0;
done:
    if (plan && gclip_plan_destroy(plan) != GCLIP_STATUS_SUCCESS) {
        fprintf(stderr, "gclip_plan_destroy failed: %s\n", gclip_last_error());
        rc = 1;
    }
    if (data)
        gpt2_device_free(data);
    free(host);
    return rc;
}
