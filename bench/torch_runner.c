/*
 * torch_runner.c - runs bench/torch_baseline.py as a subprocess on the
 * workload's shapes and reads back its JSON records (one per line).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

/* `s` in single quotes for the shell. */
static void shell_quote(char *out, size_t n, const char *s)
{
    size_t j = 0;
    if (j + 1 < n)
        out[j++] = '\'';
    for (; *s && j + 5 < n; s++) {
        if (*s == '\'') { /* close, escaped quote, reopen */
            memcpy(out + j, "'\\''", 4);
            j += 4;
        } else {
            out[j++] = *s;
        }
    }
    if (j + 1 < n)
        out[j++] = '\'';
    out[j] = '\0';
}

/* First line of a command's output, newline removed; 0 if it exited 0. */
static int first_line(const char *cmd, char *out, size_t n)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    out[0] = '\0';
    if (fgets(out, (int)n, f))
        out[strcspn(out, "\n")] = '\0';
    return pclose(f) == 0 ? 0 : -1;
}

int bench_torch_find(const char *preferred, char *python, size_t python_size, char *version,
                     size_t version_size)
{
    const char *candidates[] = {"python3", "/usr/bin/python3"};
    const char *const *list = preferred ? &preferred : candidates;
    size_t count = preferred ? 1 : sizeof candidates / sizeof candidates[0];
    for (size_t i = 0; i < count; i++) {
        char q[512], cmd[768];
        shell_quote(q, sizeof q, list[i]);
        snprintf(cmd, sizeof cmd, "%s -c 'import torch; print(torch.__version__)' 2>/dev/null", q);
        if (first_line(cmd, version, version_size) == 0 && version[0]) {
            snprintf(python, python_size, "%s", list[i]);
            return 0;
        }
    }
    return -1;
}

/* Value of "key": "..." or "key": number in one json.dumps line. */
static int json_str(const char *line, const char *key, char *out, size_t n)
{
    char pat[48];
    snprintf(pat, sizeof pat, "\"%s\": \"", key);
    const char *p = strstr(line, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    size_t j = 0;
    for (; *p && *p != '"' && j + 1 < n; p++) {
        if (*p == '\\' && p[1])
            p++;
        out[j++] = *p;
    }
    out[j] = '\0';
    return 0;
}

static int json_num(const char *line, const char *key, double *out)
{
    char pat[48];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(line, pat);
    if (!p)
        return -1;
    char *end;
    *out = strtod(p + strlen(pat), &end);
    return end == p + strlen(pat) ? -1 : 0;
}

static int write_shapes(const bench_workload *w, char *path, size_t n)
{
    snprintf(path, n, "/tmp/gclip-bench-shapes-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return -1;
    }
    for (size_t i = 0; i < w->count; i++) {
        const bench_shape *s = &w->shapes[i];
        fputs(s->dtype == GCLIP_F32 ? "f32" : "bf16", f);
        for (int d = 0; d < s->rank; d++)
            fprintf(f, " %lld", (long long)s->dims[d]);
        fputc('\n', f);
    }
    return fclose(f);
}

static void ops_list(unsigned ops, char *out, size_t n)
{
    out[0] = '\0';
    for (int op = 0; op < BENCH_OP_COUNT; op++)
        if (ops & (1u << op)) {
            size_t len = strlen(out);
            snprintf(out + len, n - len, "%s%s", len ? "," : "", bench_op_name((bench_op)op));
        }
}

/* One output line of the script into a record; 0 if it was one. */
static int parse_record(const char *line, bench_record *r)
{
    double v = 0.0;
    if (json_str(line, "op", r->op, sizeof r->op) || json_str(line, "backend", r->backend, sizeof r->backend))
        return -1;
    snprintf(r->impl, sizeof r->impl, "torch");
    r->launches_per_step = -1;
    char err[160];
    if (json_str(line, "error", err, sizeof err) == 0) {
        snprintf(r->note, sizeof r->note, "error: %.88s", err);
        return 0;
    }
    json_num(line, "threads", &v);
    r->threads = (int)v;
    json_num(line, "median_ms", &r->t.median_ms);
    json_num(line, "min_ms", &r->t.min_ms);
    json_num(line, "max_ms", &r->t.max_ms);
    json_num(line, "bytes", &r->bytes);
    json_num(line, "gbps", &r->gbps);
    char version[32] = "", note[64] = "";
    json_str(line, "torch_version", version, sizeof version);
    json_str(line, "note", note, sizeof note);
    snprintf(r->note, sizeof r->note, "torch %s: %s", version, note);
    return 0;
}

int bench_torch_run(const char *python, const char *script, const bench_workload *w,
                    unsigned ops, int warmup, int runs, int threads, const char *devices,
                    bench_results *res)
{
    char shapes[64], qpy[512], qscript[1024], list[128], cmd[2048];
    if (write_shapes(w, shapes, sizeof shapes))
        return -1;
    shell_quote(qpy, sizeof qpy, python);
    shell_quote(qscript, sizeof qscript, script);
    ops_list(ops, list, sizeof list);
    snprintf(cmd, sizeof cmd,
             "%s %s --shapes %s --workload %s --ops %s --warmup %d --runs %d --threads %d "
             "--devices %s",
             qpy, qscript, shapes, w->name, list, warmup, runs, threads, devices);
    FILE *f = popen(cmd, "r");
    if (!f) {
        unlink(shapes);
        return -1;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        bench_record r;
        memset(&r, 0, sizeof r);
        if (line[0] != '{' || parse_record(line, &r))
            continue;
        snprintf(r.workload, sizeof r.workload, "%s", w->name);
        bench_record *slot = bench_results_add(res);
        if (slot)
            *slot = r;
    }
    int status = pclose(f);
    unlink(shapes);
    return status == 0 ? 0 : -1;
}
