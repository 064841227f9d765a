/*
 * main.c - gclip-bench: what gradient clipping costs per step, against the
 * machine's own limits and against the alternatives, measured in one run.
 *
 *   gclip-bench [--quick] [--runs N] [--threads N] [--workload LIST]
 *               [--op LIST] [--impl LIST] [--json FILE] [--python LIST]
 *
 * See docs/benchmark.md.
 */
#define _POSIX_C_SOURCE 200809L
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "impl.h"

#ifndef GCLIP_BENCH_SOURCE_DIR
#define GCLIP_BENCH_SOURCE_DIR "bench"
#endif

/* --quick runs the baselines (naive, the peers) only on this workload. */
#define QUICK_BASELINE_WORKLOAD "gpt2-124m"

enum { IMPL_GCLIP = 1, IMPL_NAIVE = 2, IMPL_PEERS = 4 };
static const char *const impl_names[] = {"gclip", "naive", "peers"};
#define MAX_PEERS 8
static const char *const op_list[] = {"norm", "clip", "clip-noop", "value", "tensor-norm",
                                      "unscale-clip"};

typedef struct options {
    unsigned workloads, ops, impls;
    int runs, warmup, threads, quick;
    int policy; /* gclip_nonfinite_policy of gclip's steps */
    const char *json, *python, *script_dir;
    const char *cuda_steps; /* --cuda-steps PREFIX */
} options;

/* The machine's limits measured in this run. */
typedef struct limits {
    bench_roof *roof;          /* CPU: the buffer the interleaved passes run over */
    double read_gbps, rw_gbps; /* CPU, at the start and end of the run */
    double copy_gbps;          /* GPU device-to-device, <= 0 without */
} limits;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gclip-bench [options]\n"
            "  --workload LIST  gpt2-124m,resnet50,many-small,one-huge,mixed,mixed-f16,\n"
            "                   tiny-100k (default all)\n"
            "  --op LIST        norm,clip,clip-noop,value,tensor-norm,unscale-clip (default all)\n"
            "  --impl LIST      gclip,naive,peers (default all)\n"
            "  --runs N         timed runs after warm-up (default 10; --quick 3)\n"
            "  --threads N      CPU threads (default: the machine's processors)\n"
            "  --policy P       gclip's non-finite policy: skip (default) or propagate;\n"
            "                   under propagate the CPU path clips tensor-norm tensor by\n"
            "                   tensor while the caches hold them (the peers propagate)\n"
            "  --quick          fewer runs, a smaller one-huge (256 Mi -> 32 Mi elements),\n"
            "                   naive and the peers on gpt2-124m only\n"
            "  --json FILE      write one record per (workload, op, impl, backend)\n"
            "  --python LIST    comma-separated interpreters; each one that imports torch\n"
            "                   and/or jax+optax adds those peers, labelled by version\n"
            "                   (default: python3,/usr/bin/python3)\n"
            "  --script-dir DIR where torch_baseline.py and jax_baseline.py are\n"
            "  --cuda-steps PREFIX  only the CUDA steady state: us per step of many steps with\n"
            "                   no host sync (eager and graph), against a device-to-device\n"
            "                   copy, launches per step; PREFIX.csv, PREFIX.json (default\n"
            "                   workloads gpt2-124m,many-small,tiny-100k)\n");
}

/* Bit mask of the comma-separated names in `arg` (all of them for "all"). */
static int parse_list(const char *arg, const char *const *names, size_t n, unsigned *mask)
{
    *mask = 0;
    char *copy = strdup(arg), *save = NULL;
    if (!copy)
        return -1;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < n && strcmp(tok, names[i]) && strcmp(tok, "all"))
            i++;
        if (i == n) {
            fprintf(stderr, "gclip-bench: unknown name '%s'\n", tok);
            free(copy);
            return -1;
        }
        *mask |= strcmp(tok, "all") ? 1u << i : (1u << n) - 1;
    }
    free(copy);
    return *mask ? 0 : -1;
}

static int parse_options(int argc, char **argv, options *o)
{
    static const struct option longs[] = {
        {"workload", required_argument, 0, 'w'}, {"op", required_argument, 0, 'o'},
        {"impl", required_argument, 0, 'i'},     {"runs", required_argument, 0, 'r'},
        {"threads", required_argument, 0, 't'},  {"quick", no_argument, 0, 'q'},
        {"json", required_argument, 0, 'j'},     {"python", required_argument, 0, 'p'},
        {"script-dir", required_argument, 0, 's'}, {"help", no_argument, 0, 'h'},
        {"cuda-steps", required_argument, 0, 'c'}, {"policy", required_argument, 0, 'P'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->workloads = (1u << bench_workload_count) - 1;
    o->ops = (1u << BENCH_OP_COUNT) - 1;
    o->impls = IMPL_GCLIP | IMPL_NAIVE | IMPL_PEERS;
    o->runs = -1;
    o->threads = omp_get_num_procs();
    o->script_dir = GCLIP_BENCH_SOURCE_DIR;
    int c, bad = 0;
    while (!bad && (c = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        switch (c) {
        case 'w': bad = parse_list(optarg, bench_workload_names, bench_workload_count, &o->workloads); break;
        case 'o': bad = parse_list(optarg, op_list, BENCH_OP_COUNT, &o->ops); break;
        case 'i': bad = parse_list(optarg, impl_names, 3, &o->impls); break;
        case 'r': o->runs = atoi(optarg); bad = o->runs < 1; break;
        case 't': o->threads = atoi(optarg); bad = o->threads < 1; break;
        case 'q': o->quick = 1; break;
        case 'j': o->json = optarg; break;
        case 'p': o->python = optarg; break;
        case 's': o->script_dir = optarg; break;
        case 'c': o->cuda_steps = optarg; break;
        case 'P':
            bad = strcmp(optarg, "skip") && strcmp(optarg, "propagate");
            o->policy = strcmp(optarg, "propagate") ? GCLIP_NONFINITE_SKIP : GCLIP_NONFINITE_PROPAGATE;
            break;
        case 'h': usage(stdout); exit(0);
        default: bad = 1;
        }
    }
    if (bad || optind != argc) {
        usage(stderr);
        return -1;
    }
    if (o->runs < 0)
        o->runs = o->quick ? 3 : 10;
    o->warmup = o->quick ? 1 : 2;
    return 0;
}

static void print_load(const char *when)
{
    char buf[128] = "?";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fgets(buf, sizeof buf, f))
            buf[strcspn(buf, "\n")] = '\0';
        fclose(f);
    }
    printf("load average %s: %s\n", when, buf);
}

/* One repetition of the roofline passes of op; their times go to read_ms
 * and rw_ms at index k. */
static void roof_rep(bench_roof *roof, bench_op op, int k, double *read_ms, double *rw_ms)
{
    int read, rw;
    bench_op_passes(op, &read, &rw);
    if (read)
        read_ms[k] = bench_roof_read_ms(roof);
    if (rw)
        rw_ms[k] = bench_roof_rw_ms(roof);
}

/* The op's roofline from the medians of the passes measured with it. */
static double interleaved_roofline(bench_op op, double *read_ms, double *rw_ms, int runs)
{
    int read, rw;
    bench_op_passes(op, &read, &rw);
    double bytes = bench_roof_bytes();
    double read_gbps = read ? bytes / bench_stats_of(read_ms, runs).median_ms / 1e6 : 1.0;
    double rw_gbps = rw ? 2.0 * bytes / bench_stats_of(rw_ms, runs).median_ms / 1e6 : 1.0;
    return bench_op_roofline(op, read_gbps, rw_gbps);
}

/* Warm-up, then the timed runs of one (impl, op); appends its record. On
 * the CPU each timed run is paired with a run of the op's roofline passes
 * (before it on even runs, after it on odd ones), and the record's roofline
 * is computed from their medians: the ratio compares two figures measured
 * together, on a machine whose bandwidth moves from minute to minute. */
static void measure(const options *o, const limits *lim, bench_impl *im, bench_workload *w,
                    bench_op op, bench_results *res)
{
    bench_params p = bench_params_for(w, op);
    p.nonfinite = o->policy;
    bench_record *r = bench_results_add(res);
    double *ms = malloc(3 * (size_t)o->runs * sizeof *ms);
    if (!r || !ms) {
        free(ms);
        return;
    }
    double *read_ms = ms + o->runs, *rw_ms = ms + 2 * o->runs;
    bench_roof *roof = strcmp(im->backend, "cpu") ? NULL : lim->roof;
    snprintf(r->workload, sizeof r->workload, "%s", w->name);
    snprintf(r->op, sizeof r->op, "%s", bench_op_name(op));
    snprintf(r->impl, sizeof r->impl, "%s", im->impl);
    snprintf(r->backend, sizeof r->backend, "%s", im->backend);
    r->threads = im->threads;
    if (!strcmp(im->impl, "gclip"))
        snprintf(r->policy, sizeof r->policy, "%s",
                 o->policy == GCLIP_NONFINITE_PROPAGATE ? "propagate" : "skip");
    r->bytes = bench_op_bytes(op, w->data_bytes);
    r->launches_per_step = im->launches(im->ctx, op, &p);
    if (!strcmp(im->backend, "cuda") && r->launches_per_step < 0)
        snprintf(r->note, sizeof r->note, "step could not be captured: launches not counted");
    for (int i = 0; i < o->warmup + o->runs; i++) {
        int k = i - o->warmup, timed = k >= 0;
        if (roof && timed && k % 2 == 0)
            roof_rep(roof, op, k, read_ms, rw_ms);
        im->prepare(im->ctx, bench_op_writes(op));
        double t = im->run(im->ctx, op, &p, r->note);
        if (t < 0) {
            printf("  %-12s %s/%s failed: %s\n", r->op, r->impl, r->backend, r->note);
            free(ms);
            return;
        }
        if (roof && timed && k % 2 == 1)
            roof_rep(roof, op, k, read_ms, rw_ms);
        if (timed)
            ms[k] = t;
    }
    r->t = bench_stats_of(ms, o->runs);
    r->gbps = r->bytes / r->t.median_ms / 1e6;
    if (roof) {
        r->roofline_gbps = interleaved_roofline(op, read_ms, rw_ms, o->runs);
        r->roofline_interleaved = 1;
    }
    if (im->check(im->ctx, op, &p, r->note)) {
        r->check_failed = 1; /* kept, marked: bench/table.py counts the row as failed */
        fprintf(stderr, "gclip-bench: warning: %s %s %s/%s: check failed: %s\n", w->name, r->op,
                r->impl, r->backend, r->note);
    }
    printf("  %-12s %-14s %-4s %9.3f ms  %7.2f GB/s", r->op, r->impl, r->backend,
           r->t.median_ms, r->gbps);
    if (roof)
        printf("  roofline %7.2f GB/s  ratio %.2f", r->roofline_gbps, r->gbps / r->roofline_gbps);
    printf("\n");
    free(ms);
}

/* Open the implementations selected and present for workload w. */
static int open_impls(const options *o, const limits *lim, bench_workload *w, int baselines,
                      bench_impl *im)
{
    int n = 0;
    if ((o->impls & IMPL_GCLIP) && bench_gclip_cpu_open(&im[n], w, o->threads) == 0)
        n++;
#ifdef GCLIP_BENCH_CUDA
    if ((o->impls & IMPL_GCLIP) && lim->copy_gbps > 0 && bench_gclip_cuda_open(&im[n], w) == 0)
        n++;
#else
    (void)lim;
#endif
    if (baselines && (o->impls & IMPL_NAIVE) && bench_naive_open(&im[n], w, o->threads) == 0)
        n++;
    return n;
}

static void run_peers(const options *o, const limits *lim, const bench_peer *peers,
                      int npeers, bench_workload *w, bench_results *res)
{
    for (int k = 0; k < npeers; k++) {
        size_t first = res->n;
        double t0 = bench_now_ms();
        const char *devices = lim->copy_gbps > 0 ? "cpu,cuda" : "cpu";
        if (bench_peer_run(&peers[k], o->script_dir, w, o->ops, o->warmup, o->runs,
                           o->threads, devices, res))
            fprintf(stderr, "gclip-bench: %s_baseline.py (%s) failed on %s\n", peers[k].kind,
                    peers[k].label, w->name);
        for (size_t i = first; i < res->n; i++) {
            const bench_record *r = &res->r[i];
            if (r->t.median_ms > 0 && r->roofline_gbps > 0)
                printf("  %-12s %-14s %-4s %9.3f ms  %7.2f GB/s  roofline %7.2f GB/s  ratio %.2f\n",
                       r->op, r->impl, r->backend, r->t.median_ms, r->gbps, r->roofline_gbps,
                       r->gbps / r->roofline_gbps);
            else if (r->t.median_ms > 0)
                printf("  %-12s %-14s %-4s %9.3f ms  %7.2f GB/s\n", r->op, r->impl, r->backend,
                       r->t.median_ms, r->gbps);
            else
                printf("  %-12s %-14s %-4s %s\n", r->op, r->impl, r->backend, r->note);
            if (r->check_failed) /* the time is kept and bench/table.py flags it */
                printf("  %-12s %-14s %-4s output %s\n", r->op, r->impl, r->backend, r->note);
        }
        printf("  (%s: %.1f s)\n", peers[k].label, (bench_now_ms() - t0) / 1e3);
    }
}

static void run_workload(const options *o, const limits *lim, const char *name,
                         const bench_peer *peers, int npeers, bench_results *res)
{
    bench_workload w;
    int64_t huge = o->quick ? (int64_t)32 << 20 : (int64_t)256 << 20;
    double t0 = bench_now_ms();
    if (bench_workload_create(&w, name, huge, o->threads)) {
        fprintf(stderr, "gclip-bench: cannot build workload %s (out of memory?)\n", name);
        bench_workload_destroy(&w);
        return;
    }
    printf("\n%s: %zu tensors, %lld elements, %.1f MB, norm %.6g (generated in %.1f s)\n", name,
           w.count, (long long)w.elems, w.data_bytes / 1e6, w.norm, (bench_now_ms() - t0) / 1e3);
    bench_impl im[3];
    int baselines = !o->quick || !strcmp(name, QUICK_BASELINE_WORKLOAD);
    int n = open_impls(o, lim, &w, baselines, im);
    t0 = bench_now_ms();
    for (int op = 0; op < BENCH_OP_COUNT; op++)
        for (int i = 0; i < n && (o->ops & (1u << op)); i++)
            measure(o, lim, &im[i], &w, (bench_op)op, res);
    for (int i = 0; i < n; i++)
        im[i].close(im[i].ctx);
    printf("  (%.1f s)\n", (bench_now_ms() - t0) / 1e3);
    if (baselines)
        run_peers(o, lim, peers, npeers, &w, res);
    bench_workload_destroy(&w);
}

/* The CPU limits, measured at the start and again at the end of the run:
 * the higher of the two is used, so a limit measured while the machine was
 * busy cannot inflate the ratios. */
static int cpu_limit(const options *o, limits *lim, const char *when)
{
    double read, rw;
    if (bench_cpu_roofline(lim->roof, o->runs, &read, &rw)) {
        fprintf(stderr, "gclip-bench: out of memory\n");
        return -1;
    }
    printf("CPU roofline %s: read %.2f GB/s, in-place read-write %.2f GB/s\n", when, read, rw);
    lim->read_gbps = read > lim->read_gbps ? read : lim->read_gbps;
    lim->rw_gbps = rw > lim->rw_gbps ? rw : lim->rw_gbps;
    return 0;
}

/* Records without a roofline of their own (a peer's run without the
 * roofline library) take that of gclip's record of the same workload, op
 * and backend, else the higher of the start and end limits of the run. */
static void assign_rooflines(bench_results *res, const limits *lim)
{
    for (size_t i = 0; i < res->n; i++) {
        bench_record *r = &res->r[i];
        if (r->roofline_gbps > 0)
            continue;
        for (size_t j = 0; j < res->n && r->roofline_gbps <= 0; j++) {
            const bench_record *g = &res->r[j];
            if (g->roofline_interleaved && !strcmp(g->impl, "gclip") &&
                !strcmp(g->workload, r->workload) && !strcmp(g->op, r->op) &&
                !strcmp(g->backend, r->backend))
                r->roofline_gbps = g->roofline_gbps;
        }
        if (r->roofline_gbps > 0)
            continue;
        bench_op op = BENCH_NORM;
        while (op < BENCH_OP_COUNT && strcmp(r->op, bench_op_name(op)))
            op = (bench_op)(op + 1);
        r->roofline_gbps = !strcmp(r->backend, "cuda")
                               ? lim->copy_gbps
                               : bench_op_roofline(op, lim->read_gbps, lim->rw_gbps);
    }
}

/* The CUDA device's copy bandwidth, or why the CUDA backend is skipped. */
static double cuda_limit(const options *o)
{
#ifdef GCLIP_BENCH_CUDA
    int devices = gclip_cuda_device_count();
    if (devices <= 0) {
        printf("CUDA backend: skipped (no CUDA device or driver)\n");
        return 0.0;
    }
    double gbps = bench_cuda_copy_gbps((size_t)1 << 30, o->runs);
    printf("CUDA backend: %s; device-to-device copy %.1f GB/s (read + write)\n",
           bench_cuda_device_name(), gbps);
    return gbps;
#else
    (void)o;
    printf("CUDA backend: skipped (this build has no CUDA backend)\n");
    return 0.0;
#endif
}

int main(int argc, char **argv)
{
    options o;
    if (parse_options(argc, argv, &o))
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines appear as they are measured */
    if (o.cuda_steps) {
#ifdef GCLIP_BENCH_CUDA
        return bench_cuda_steps(o.workloads, o.runs, o.threads, o.cuda_steps);
#else
        fprintf(stderr, "gclip-bench: --cuda-steps: this build has no CUDA backend\n");
        return 1;
#endif
    }
    printf("gclip-bench: gclip %d, %d CPU threads, %d warm-up + %d timed runs, policy %s%s\n",
           gclip_get_version(), o.threads, o.warmup, o.runs,
           o.policy == GCLIP_NONFINITE_PROPAGATE ? "propagate" : "skip",
           o.quick ? " (--quick: naive and peers on " QUICK_BASELINE_WORKLOAD " only)" : "");
    print_load("at start");
    limits lim = {bench_roof_create(o.threads), 0, 0, 0};
    if (!lim.roof || cpu_limit(&o, &lim, "at start")) {
        fprintf(stderr, "gclip-bench: out of memory\n");
        return 1;
    }
    lim.copy_gbps = cuda_limit(&o);
    bench_peer peers[MAX_PEERS];
    int npeers = (o.impls & IMPL_PEERS) ? bench_peers_find(o.python, peers, MAX_PEERS) : 0;
    if ((o.impls & IMPL_PEERS) && !npeers)
        printf("no peer importable: peers skipped (tried %s)\n",
               o.python ? o.python : "python3,/usr/bin/python3");
    bench_results res = {0};
    for (size_t i = 0; i < bench_workload_count; i++)
        if (o.workloads & (1u << i))
            run_workload(&o, &lim, bench_workload_names[i], peers, npeers, &res);
    bench_evict_release();
    if (cpu_limit(&o, &lim, "at end"))
        return 1;
    bench_roof_destroy(lim.roof);
    assign_rooflines(&res, &lim);
    bench_print_table(&res);
    printf("roofline: each CPU record's own, measured between its repetitions; start/end "
           "limits: read %.2f GB/s, in-place read-write %.2f GB/s (the higher of the two)\n",
           lim.read_gbps, lim.rw_gbps);
    print_load("at end");
    int rc = 0;
    if (o.json && bench_write_json(&res, o.json)) {
        fprintf(stderr, "gclip-bench: cannot write %s\n", o.json);
        rc = 1;
    }
    bench_results_free(&res);
    return rc;
}
