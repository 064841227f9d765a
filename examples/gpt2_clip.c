/*
 * gpt2_clip.c - the main job: global-norm clipping of GPT-2 small's 148
 * gradient tensors (124.4 M f32 elements) on the best backend present, as a
 * training loop would call it every step.
 *
 *   gpt2_clip [--cpu] [--steps N] [--max-norm C]
 *
 * Prints the total norm, the clip coefficient and milliseconds per step.
 */
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

#define CHECK(call)                                                                   \
    do {                                                                              \
        gclip_status s_ = (call);                                                     \
        if (s_ != GCLIP_STATUS_SUCCESS && s_ != GCLIP_STATUS_NONFINITE) {             \
            fprintf(stderr, "%s failed: %s (%s)\n", #call, gclip_status_string(s_),   \
                    gclip_last_error());                                              \
            return 1;                                                                 \
        }                                                                             \
    } while (0)

int main(int argc, char **argv)
{
    int steps = 20, force_cpu = 0;
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
    int64_t numel[GPT2_SMALL_TENSORS];
    size_t count = gpt2_small_numel(numel);
    int64_t total = 0;
    for (size_t i = 0; i < count; i++)
        total += numel[i];

    int device = !force_cpu && gclip_cuda_device_count() > 0 ? 0 : GCLIP_DEVICE_CPU;
    printf("gclip %d: GPT-2 small, %zu tensors, %lld f32 elements, backend %s\n",
           gclip_get_version(), count, (long long)total,
           device == GCLIP_DEVICE_CPU ? "cpu" : "cuda:0");
    if (device == GCLIP_DEVICE_CPU && !force_cpu)
        printf("(no CUDA device%s: using the CPU path)\n",
               gclip_cuda_device_count() == 0 ? " or no CUDA backend" : "");

    /* one arena on the host, copied to the device when there is one */
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
    float *data = host;
    if (device != GCLIP_DEVICE_CPU && gpt2_device_upload(host, total, &data) != 0)
        return 1;
    for (size_t i = 0; i < count; i++)
        tensors[i].data = data + ((float *)tensors[i].data - host);

    gclip_plan *plan;
    CHECK(gclip_plan_create(&plan, tensors, count, device));
    gclip_norm_options opt = GCLIP_NORM_OPTIONS_INIT;
    opt.max_norm = max_norm;
    gclip_result r;

    /* the first step clips at --max-norm; each timed step then clips the
     * previous step's output to half its norm, so every step writes */
    CHECK(gclip_clip_grad_norm(plan, &opt, NULL));
    CHECK(gclip_get_result(plan, &r));
    printf("step 0: total_norm %.6g  clip_coef %.6g  nonfinite %d\n", (double)r.total_norm,
           (double)r.clip_coef, r.nonfinite);
    opt.max_norm = r.total_norm * r.clip_coef * 0.5f;
    double t0 = now_ms();
    for (int s = 0; s < steps; s++) {
        CHECK(gclip_clip_grad_norm(plan, &opt, NULL));
        CHECK(gclip_get_result(plan, &r));
        opt.max_norm = r.total_norm * r.clip_coef * 0.5f;
    }
    double ms = (now_ms() - t0) / (steps > 0 ? steps : 1);
    printf("last step: total_norm %.6g  clip_coef %.6g\n", (double)r.total_norm,
           (double)r.clip_coef);
    printf("%.3f ms per clip step (norm + scale, %d steps, max_norm = half the norm)\n", ms, steps);
    gclip_plan_destroy(plan);
    if (data != host)
        gpt2_device_free(data);
    free(host);
    return 0;
}
