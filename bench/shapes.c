/*
 * shapes.c - the parameter shapes of the benchmark workloads.
 *
 * gpt2-124m and resnet50 are the real models' parameter lists, in the order
 * their frameworks enumerate them, so per-tensor overheads show as they would
 * in training.
 */
#include <stdlib.h>
#include <string.h>

#include "shapes.h"

typedef struct shape_list {
    bench_shape *s;
    size_t n, cap;
    int ok;
} shape_list;

static void add(shape_list *l, gclip_dtype dtype, int rank, int64_t d0, int64_t d1, int64_t d2,
                int64_t d3)
{
    if (!l->ok)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        bench_shape *s = realloc(l->s, cap * sizeof *s);
        if (!s) {
            l->ok = 0;
            return;
        }
        l->s = s;
        l->cap = cap;
    }
    bench_shape *t = &l->s[l->n++];
    t->rank = rank;
    t->dims[0] = d0;
    t->dims[1] = d1;
    t->dims[2] = d2;
    t->dims[3] = d3;
    t->dtype = dtype;
}

static void vec(shape_list *l, gclip_dtype dt, int64_t n) { add(l, dt, 1, n, 1, 1, 1); }
static void mat(shape_list *l, gclip_dtype dt, int64_t r, int64_t c) { add(l, dt, 2, r, c, 1, 1); }
static void conv(shape_list *l, int64_t out, int64_t in, int64_t k) { add(l, GCLIP_F32, 4, out, in, k, k); }

/* GPT-2 small (124M): 148 tensors. `mdt` is the dtype of the matrices,
 * vectors (biases, layer norms) stay f32. */
static void gpt2(shape_list *l, gclip_dtype mdt)
{
    const int64_t d = 768;
    mat(l, mdt, 50257, d); /* wte */
    mat(l, mdt, 1024, d);  /* wpe */
    for (int layer = 0; layer < 12; layer++) {
        vec(l, GCLIP_F32, d); /* ln_1 weight, bias */
        vec(l, GCLIP_F32, d);
        mat(l, mdt, d, 3 * d); /* attn.c_attn */
        vec(l, GCLIP_F32, 3 * d);
        mat(l, mdt, d, d); /* attn.c_proj */
        vec(l, GCLIP_F32, d);
        vec(l, GCLIP_F32, d); /* ln_2 weight, bias */
        vec(l, GCLIP_F32, d);
        mat(l, mdt, d, 4 * d); /* mlp.c_fc */
        vec(l, GCLIP_F32, 4 * d);
        mat(l, mdt, 4 * d, d); /* mlp.c_proj */
        vec(l, GCLIP_F32, d);
    }
    vec(l, GCLIP_F32, d); /* ln_f weight, bias */
    vec(l, GCLIP_F32, d);
}

static void batch_norm(shape_list *l, int64_t c)
{
    vec(l, GCLIP_F32, c); /* weight, bias */
    vec(l, GCLIP_F32, c);
}

/* ResNet-50 (torchvision layout): 161 tensors, 25,557,032 elements. */
static void resnet50(shape_list *l)
{
    static const int64_t planes[4] = {64, 128, 256, 512};
    static const int blocks[4] = {3, 4, 6, 3};
    conv(l, 64, 3, 7);
    batch_norm(l, 64);
    int64_t in = 64;
    for (int stage = 0; stage < 4; stage++) {
        int64_t p = planes[stage];
        for (int b = 0; b < blocks[stage]; b++) {
            conv(l, p, in, 1);
            batch_norm(l, p);
            conv(l, p, p, 3);
            batch_norm(l, p);
            conv(l, 4 * p, p, 1);
            batch_norm(l, 4 * p);
            if (b == 0) { /* downsample projection */
                conv(l, 4 * p, in, 1);
                batch_norm(l, 4 * p);
            }
            in = 4 * p;
        }
    }
    mat(l, GCLIP_F32, 1000, 2048); /* fc */
    vec(l, GCLIP_F32, 1000);
}

const char *const bench_workload_names[] = {"gpt2-124m", "resnet50", "many-small", "one-huge",
                                            "mixed",     "mixed-f16", "tiny-100k"};
const size_t bench_workload_count = sizeof bench_workload_names / sizeof bench_workload_names[0];

int bench_shapes_for(const char *name, int64_t huge_elems, bench_shape **shapes, size_t *count)
{
    shape_list l = {NULL, 0, 0, 1};
    if (!strcmp(name, "gpt2-124m"))
        gpt2(&l, GCLIP_F32);
    else if (!strcmp(name, "mixed"))
        gpt2(&l, GCLIP_BF16);
    else if (!strcmp(name, "mixed-f16"))
        gpt2(&l, GCLIP_F16);
    else if (!strcmp(name, "resnet50"))
        resnet50(&l);
    else if (!strcmp(name, "many-small"))
        for (int i = 0; i < 10000; i++)
            vec(&l, GCLIP_F32, 1000);
    else if (!strcmp(name, "tiny-100k")) /* per-tensor costs: 100,000 tensors of 100 elements */
        for (int i = 0; i < 100000; i++)
            vec(&l, GCLIP_F32, 100);
    else if (!strcmp(name, "one-huge"))
        vec(&l, GCLIP_F32, huge_elems);
    else
        l.ok = 0;
    if (!l.ok) {
        free(l.s);
        return -1;
    }
    *shapes = l.s;
    *count = l.n;
    return 0;
}

int64_t bench_shape_numel(const bench_shape *s)
{
    int64_t n = 1;
    for (int i = 0; i < s->rank; i++)
        n *= s->dims[i];
    return n;
}
