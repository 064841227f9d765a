/*
 * report.c - the results: the table on stdout and the JSON file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

bench_record *bench_results_add(bench_results *res)
{
    if (res->n == res->cap) {
        size_t cap = res->cap ? 2 * res->cap : 64;
        bench_record *r = realloc(res->r, cap * sizeof *r);
        if (!r)
            return NULL;
        res->r = r;
        res->cap = cap;
    }
    bench_record *rec = &res->r[res->n++];
    memset(rec, 0, sizeof *rec);
    rec->launches_per_step = -1;
    return rec;
}

void bench_results_free(bench_results *res)
{
    free(res->r);
    memset(res, 0, sizeof *res);
}

static int has_time(const bench_record *r)
{
    return r->t.median_ms > 0.0;
}

/* The record of `impl` on `backend` for the same workload and op. */
static const bench_record *find(const bench_results *res, const bench_record *like,
                                const char *impl, const char *backend)
{
    for (size_t i = 0; i < res->n; i++) {
        const bench_record *r = &res->r[i];
        if (!strcmp(r->workload, like->workload) && !strcmp(r->op, like->op) &&
            !strcmp(r->impl, impl) && !strcmp(r->backend, backend) && has_time(r))
            return r;
    }
    return NULL;
}

/* "  3.21x" when both are timed, else blanks. */
static void speedup(char *out, size_t n, const bench_record *base, const bench_record *r)
{
    if (base && has_time(r))
        snprintf(out, n, "%7.2fx", base->t.median_ms / r->t.median_ms);
    else
        snprintf(out, n, "%8s", "");
}

static int is_peer(const bench_record *r)
{
    return strcmp(r->impl, "gclip") && strcmp(r->impl, "naive");
}

/* The fastest peer's record for the same workload, op and backend. */
static const bench_record *best_peer(const bench_results *res, const bench_record *like)
{
    const bench_record *best = NULL;
    for (size_t i = 0; i < res->n; i++) {
        const bench_record *r = &res->r[i];
        if (is_peer(r) && has_time(r) && !strcmp(r->workload, like->workload) &&
            !strcmp(r->op, like->op) && !strcmp(r->backend, like->backend) &&
            (!best || r->t.median_ms < best->t.median_ms))
            best = r;
    }
    return best;
}

static void print_row(const bench_results *res, const bench_record *r)
{
    char vs_naive[16], vs_peer[16], launches[12] = "";
    int gclip = !strcmp(r->impl, "gclip");
    const bench_record *peer = gclip ? best_peer(res, r) : NULL;
    speedup(vs_naive, sizeof vs_naive, gclip ? find(res, r, "naive", "cpu") : NULL, r);
    speedup(vs_peer, sizeof vs_peer, peer, r);
    if (r->launches_per_step >= 0)
        snprintf(launches, sizeof launches, "%d", r->launches_per_step);
    printf("%-10s %-12s %-14s %-4s %3d ", r->workload, r->op, r->impl, r->backend, r->threads);
    if (has_time(r))
        printf("%9.3f %9.3f %9.3f %7.2f %7.2f %5.2f %s %s %3s", r->t.median_ms, r->t.min_ms,
               r->t.max_ms, r->gbps, r->roofline_gbps, r->gbps / r->roofline_gbps, vs_naive,
               vs_peer, launches);
    else
        printf("%9s %9s %9s %7s %7s %5s %8s %8s %3s", "-", "-", "-", "-", "-", "-", "", "", "");
    printf("  %s%s\n", peer ? peer->impl : "", peer ? "" : r->note);
}

void bench_print_table(const bench_results *res)
{
    printf("\n%-10s %-12s %-14s %-4s %3s %9s %9s %9s %7s %7s %5s %8s %8s %3s  %s\n", "workload",
           "op", "impl", "dev", "thr", "median_ms", "min_ms", "max_ms", "GB/s", "roof", "ratio",
           "vs_naive", "vs_peer", "lps", "best peer / note");
    /* grouped by workload (in run order), then op, then implementation */
    for (size_t i = 0; i < res->n; i++) {
        const bench_record *w = &res->r[i];
        int first = 1;
        for (size_t k = 0; k < i && first; k++)
            first = strcmp(res->r[k].workload, w->workload) != 0;
        if (!first)
            continue;
        for (int op = 0; op < BENCH_OP_COUNT; op++)
            for (size_t j = 0; j < res->n; j++) {
                const bench_record *r = &res->r[j];
                if (!strcmp(r->workload, w->workload) && !strcmp(r->op, bench_op_name((bench_op)op)))
                    print_row(res, r);
            }
    }
    printf("\nGB/s counts the minimal bytes each op moves; roof = the limit for that op's "
           "passes,\nmeasured between the op's own repetitions (a peer's in its own process);\n"
           "ratio = GB/s / roof; vs_naive, vs_peer = speed-up of gclip over the naive loop and\n"
           "over the fastest peer (median over median); lps = kernel launches per step (CUDA).\n");
}

static void json_string(FILE *f, const char *key, const char *s)
{
    fprintf(f, "\"%s\": \"", key);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        if ((unsigned char)*s >= 0x20)
            fputc(*s, f);
    }
    fputc('"', f);
}

int bench_write_json(const bench_results *res, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("[\n", f);
    for (size_t i = 0; i < res->n; i++) {
        const bench_record *r = &res->r[i];
        fputs("  {", f);
        json_string(f, "workload", r->workload);
        fputs(", ", f);
        json_string(f, "op", r->op);
        fputs(", ", f);
        json_string(f, "impl", r->impl);
        fputs(", ", f);
        json_string(f, "backend", r->backend);
        fputs(", ", f);
        fprintf(f, "\"threads\": %d, ", r->threads);
        /* the figures the verdicts compare, at full precision: a ratio rounded
         * to 0.85 from below would pass the roofline target */
        if (has_time(r))
            fprintf(f,
                    "\"median_ms\": %.17g, \"min_ms\": %.17g, \"max_ms\": %.17g, "
                    "\"bytes\": %.0f, \"gbps\": %.17g, \"roofline_gbps\": %.17g, "
                    "\"ratio\": %.17g, ",
                    r->t.median_ms, r->t.min_ms, r->t.max_ms, r->bytes, r->gbps,
                    r->roofline_gbps, r->gbps / r->roofline_gbps);
        else
            fprintf(f, "\"median_ms\": null, \"min_ms\": null, \"max_ms\": null, "
                       "\"bytes\": %.0f, \"gbps\": null, \"roofline_gbps\": %.17g, "
                       "\"ratio\": null, ",
                    r->bytes, r->roofline_gbps);
        fprintf(f, "\"roofline_interleaved\": %s, ", r->roofline_interleaved ? "true" : "false");
        if (r->launches_per_step >= 0)
            fprintf(f, "\"launches_per_step\": %d, ", r->launches_per_step);
        else if (!strcmp(r->backend, "cuda"))
            fputs("\"launches_per_step\": null, ", f);
        if (r->policy[0]) {
            json_string(f, "policy", r->policy);
            fputs(", ", f);
        }
        if (!strcmp(r->impl, "gclip") || !strcmp(r->impl, "naive") || r->checked)
            fprintf(f, "\"check_failed\": %s, ", r->check_failed ? "true" : "false");
        if (r->has_norm_error && isfinite(r->norm_error))
            fprintf(f, "\"norm_error\": %.6g, ", r->norm_error);
        else if (r->has_norm_error) /* a NaN or Inf norm: JSON has no such number */
            fputs("\"norm_error\": null, ", f);
        json_string(f, "note", r->note);
        fprintf(f, "}%s\n", i + 1 < res->n ? "," : "");
    }
    fputs("]\n", f);
    return fclose(f);
}
