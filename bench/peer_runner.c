/*
 * peer_runner.c - finds the peers (PyTorch, JAX/optax) in the Python
 * interpreters given, runs bench/torch_baseline.py or bench/jax_baseline.py
 * as a subprocess on the workload's shapes and reads back its JSON records
 * (one per line).
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

/* One peer of `kind` in interpreter `python`, if its probe prints versions. */
static int probe(const char *python, const char *kind, bench_peer *peer)
{
    static const char torch_probe[] = "import torch; print(torch.__version__)";
    static const char jax_probe[] =
        "import jax, optax; print(jax.__version__, optax.__version__)";
    char q[512], cmd[768], line[128];
    shell_quote(q, sizeof q, python);
    snprintf(cmd, sizeof cmd, "%s -c '%s' 2>/dev/null", q,
             strcmp(kind, "torch") ? jax_probe : torch_probe);
    if (first_line(cmd, line, sizeof line) || !line[0])
        return -1;
    memset(peer, 0, sizeof *peer);
    snprintf(peer->python, sizeof peer->python, "%s", python);
    snprintf(peer->kind, sizeof peer->kind, "%s", kind);
    char first[64] = "", second[64] = "";
    sscanf(line, "%63s %63s", first, second);
    first[strcspn(first, "+")] = '\0'; /* "2.15.0+cu132" -> "2.15.0" */
    snprintf(peer->label, sizeof peer->label, "%s-%.16s", kind, first);
    if (second[0])
        snprintf(peer->versions, sizeof peer->versions, "jax %.24s, optax %.24s", first, second);
    else
        snprintf(peer->versions, sizeof peer->versions, "torch %.48s", line);
    return 0;
}

int bench_peers_find(const char *list, bench_peer *peers, int max)
{
    char *copy = strdup(list ? list : "python3,/usr/bin/python3"), *save = NULL;
    int n = 0;
    if (!copy)
        return 0;
    for (char *py = strtok_r(copy, ",", &save); py; py = strtok_r(NULL, ",", &save)) {
        static const char *const kinds[] = {"torch", "jax"};
        int offered = 0;
        for (int k = 0; k < 2 && n < max; k++) {
            bench_peer p;
            if (probe(py, kinds[k], &p))
                continue;
            offered = 1;
            int seen = 0;
            for (int i = 0; i < n && !seen; i++)
                seen = !strcmp(peers[i].label, p.label);
            printf("peer %s (%s) via %s%s\n", p.label, p.versions, py,
                   seen ? ": already found, not run twice" : "");
            if (!seen)
                peers[n++] = p;
        }
        if (!offered)
            printf("peer: %s imports neither torch nor jax+optax: absent\n", py);
    }
    free(copy);
    return n;
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
        fputs(s->dtype == GCLIP_F32 ? "f32" : s->dtype == GCLIP_F16 ? "f16" : "bf16", f);
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
static int parse_record(const char *line, const bench_peer *peer, bench_record *r)
{
    double v = 0.0;
    if (json_str(line, "op", r->op, sizeof r->op) || json_str(line, "backend", r->backend, sizeof r->backend))
        return -1;
    snprintf(r->impl, sizeof r->impl, "%s", peer->label);
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
    /* the roofline of the peer's own runs (--roof-lib), or null */
    if (json_num(line, "roofline_gbps", &v) == 0 && v > 0) {
        r->roofline_gbps = v;
        r->roofline_interleaved = 1;
    }
    char note[80] = "";
    json_str(line, "note", note, sizeof note);
    snprintf(r->note, sizeof r->note, "%s", note);
    /* the script's check of its output (absent where it could not check) */
    if (strstr(line, "\"check_failed\": true")) {
        r->checked = r->check_failed = 1;
        char why[160] = "";
        json_str(line, "check", why, sizeof why);
        snprintf(r->note, sizeof r->note, "check failed: %.80s", why);
    } else if (strstr(line, "\"check_failed\": false")) {
        r->checked = 1;
    } else if (strstr(line, "\"unchecked\": ")) { /* no NumPy in the peer's interpreter */
        size_t len = strlen(r->note);
        snprintf(r->note + len, sizeof r->note - len, " (output not checked)");
    }
    if (json_num(line, "norm_error", &r->norm_error) == 0)
        r->has_norm_error = 1;
    return 0;
}

int bench_peer_run(const bench_peer *peer, const char *script_dir, const bench_workload *w,
                   unsigned ops, int warmup, int runs, int threads, const char *devices,
                   bench_results *res)
{
    char shapes[64], qpy[600], script[1024], qscript[1100], list[128], cmd[2048];
    if (write_shapes(w, shapes, sizeof shapes))
        return -1;
    snprintf(script, sizeof script, "%s/%s_baseline.py", script_dir, peer->kind);
    shell_quote(qpy, sizeof qpy, peer->python);
    shell_quote(qscript, sizeof qscript, script);
    ops_list(ops, list, sizeof list);
    int n = snprintf(cmd, sizeof cmd,
                     "%s %s --shapes %s --workload %s --ops %s --warmup %d --runs %d "
                     "--threads %d --devices %s",
                     qpy, qscript, shapes, w->name, list, warmup, runs, threads, devices);
#ifdef GCLIP_BENCH_ROOF_LIB
    /* the peer pairs its CPU runs with the roofline passes, as gclip's are */
    if (access(GCLIP_BENCH_ROOF_LIB, R_OK) == 0 && n > 0 && (size_t)n < sizeof cmd) {
        char qlib[1100];
        shell_quote(qlib, sizeof qlib, GCLIP_BENCH_ROOF_LIB);
        snprintf(cmd + n, sizeof cmd - (size_t)n, " --roof-lib %s", qlib);
    }
#endif
    FILE *f = popen(cmd, "r");
    if (!f) {
        unlink(shapes);
        return -1;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        bench_record r;
        memset(&r, 0, sizeof r);
        if (line[0] != '{' || parse_record(line, peer, &r))
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
