/*
 * cuda_impl.cu - gclip's CUDA backend under the benchmark interface, timed
 * with CUDA events, and the device's own limit (a device-to-device copy).
 * Built only when the CUDA backend is.
 */
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "impl.h"

// Flush buffer: several times the L2 of current data-center GPUs (50-60 MiB).
static const size_t kFlushBytes = size_t(256) << 20;

struct cuda_ctx {
    bench_workload *w;
    gclip_plan *plan;
    cudaStream_t stream;
    cudaEvent_t start, stop;
    unsigned char *data, *pristine, *flush;
    bool dirty; // data written since it was restored
    std::vector<gclip_tensor> tensors;
};

static bool ok(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return true;
    std::fprintf(stderr, "gclip-bench: %s: %s\n", what, cudaGetErrorString(e));
    return false;
}

static void cuda_prepare(void *vctx, int writes)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    if (writes || c->dirty)
        cudaMemcpyAsync(c->data, c->pristine, c->w->arena_bytes, cudaMemcpyDeviceToDevice,
                        c->stream);
    c->dirty = writes != 0;
    cudaMemsetAsync(c->flush, 0, kFlushBytes, c->stream);
    cudaStreamSynchronize(c->stream);
}

static double cuda_run(void *vctx, bench_op op, const bench_params *p, char *err)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    cudaEventRecord(c->start, c->stream);
    gclip_status st = bench_gclip_step(c->plan, op, p, c->stream);
    cudaEventRecord(c->stop, c->stream);
    cudaError_t e = cudaEventSynchronize(c->stop);
    if (st != GCLIP_STATUS_SUCCESS || e != cudaSuccess) {
        std::snprintf(err, 96, "%s %s", gclip_status_string(st),
                      st ? gclip_last_error() : cudaGetErrorString(e));
        return -1.0;
    }
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, c->start, c->stop);
    return ms;
}

// The norm, the regime and the factor, then the data the runs left, brought
// into the host arena (which the next host run restores first) and checked
// as the CPU path's is.
static int cuda_check(void *vctx, bench_op op, const bench_params *p, char *note)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    if (bench_gclip_check(c->plan, c->w, op, p, note))
        return 1;
    gclip_result r;
    if (gclip_get_result(c->plan, &r) != GCLIP_STATUS_SUCCESS) {
        std::snprintf(note, 96, "get_result: %s", gclip_last_error());
        return 1;
    }
    c->w->dirty = 1;
    cudaError_t e = cudaMemcpy(c->w->data, c->data, c->w->arena_bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
        std::snprintf(note, 96, "copying the data back: %s", cudaGetErrorString(e));
        return 1;
    }
    return bench_check_output(c->w, op, p, r.scale, note);
}

// Kernel nodes of a captured graph: the launches the captured work makes.
static int kernel_nodes(cudaGraph_t graph)
{
    size_t n = 0;
    cudaGraphGetNodes(graph, nullptr, &n);
    std::vector<cudaGraphNode_t> nodes(n);
    cudaGraphGetNodes(graph, nodes.data(), &n);
    int kernels = 0;
    for (size_t i = 0; i < n; i++) {
        cudaGraphNodeType type;
        if (cudaGraphNodeGetType(nodes[i], &type) == cudaSuccess && type == cudaGraphNodeTypeKernel)
            kernels++;
    }
    return kernels;
}

// Kernel launches of one step, counted by capturing it into a CUDA graph
// (the capture records the work without running it). -1 if it cannot be
// captured.
static int cuda_launches(void *vctx, bench_op op, const bench_params *p)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    cudaGraph_t graph = nullptr;
    if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
        return -1;
    gclip_status st = bench_gclip_step(c->plan, op, p, c->stream);
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    if (st != GCLIP_STATUS_SUCCESS || e != cudaSuccess || !graph) {
        cudaGetLastError();
        return -1;
    }
    int kernels = kernel_nodes(graph);
    cudaGraphDestroy(graph);
    return kernels;
}

static void cuda_close(void *vctx)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    gclip_plan_destroy(c->plan);
    cudaFree(c->data);
    cudaFree(c->pristine);
    cudaFree(c->flush);
    cudaEventDestroy(c->start);
    cudaEventDestroy(c->stop);
    cudaStreamDestroy(c->stream);
    delete c;
}

extern "C" int bench_gclip_cuda_open(bench_impl *impl, bench_workload *w)
{
    cuda_ctx *c = new cuda_ctx();
    c->w = w;
    bool good = ok(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "stream") &&
                ok(cudaEventCreate(&c->start), "event") && ok(cudaEventCreate(&c->stop), "event") &&
                ok(cudaMalloc(&c->data, w->arena_bytes), "cudaMalloc data") &&
                ok(cudaMalloc(&c->pristine, w->arena_bytes), "cudaMalloc pristine") &&
                ok(cudaMalloc(&c->flush, kFlushBytes), "cudaMalloc flush") &&
                ok(cudaMemcpy(c->pristine, w->pristine, w->arena_bytes, cudaMemcpyHostToDevice),
                   "upload") &&
                ok(cudaMemcpy(c->data, c->pristine, w->arena_bytes, cudaMemcpyDeviceToDevice),
                   "copy");
    if (good) {
        // same layout as the host arena, rebased onto the device copy
        c->tensors.assign(w->tensors, w->tensors + w->count);
        for (gclip_tensor &t : c->tensors)
            t.data = c->data + (static_cast<unsigned char *>(t.data) - w->data);
        gclip_status st = gclip_plan_create(&c->plan, c->tensors.data(), w->count, 0);
        if (st != GCLIP_STATUS_SUCCESS) {
            std::fprintf(stderr, "gclip cuda plan for %s: %s: %s\n", w->name,
                         gclip_status_string(st), gclip_last_error());
            good = false;
        }
    }
    if (!good) {
        cuda_close(c);
        return -1;
    }
    impl->impl = "gclip";
    impl->backend = "cuda";
    impl->threads = 0;
    impl->ctx = c;
    impl->prepare = cuda_prepare;
    impl->run = cuda_run;
    impl->check = cuda_check;
    impl->launches = cuda_launches;
    impl->close = cuda_close;
    return 0;
}

extern "C" double bench_cuda_copy_gbps(size_t bytes, int runs)
{
    void *a = nullptr, *b = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    std::vector<double> ms;
    if (ok(cudaMalloc(&a, bytes), "cudaMalloc") && ok(cudaMalloc(&b, bytes), "cudaMalloc") &&
        ok(cudaEventCreate(&start), "event") && ok(cudaEventCreate(&stop), "event") &&
        ok(cudaMemset(a, 0, bytes), "memset")) {
        for (int i = 0; i < runs + 2; i++) { // two warm-up copies
            cudaEventRecord(start);
            cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
            cudaEventRecord(stop);
            cudaEventSynchronize(stop);
            float t = 0.0f;
            cudaEventElapsedTime(&t, start, stop);
            if (i >= 2)
                ms.push_back(t);
        }
    }
    cudaFree(a);
    cudaFree(b);
    if (start)
        cudaEventDestroy(start);
    if (stop)
        cudaEventDestroy(stop);
    if (ms.empty())
        return -1.0;
    std::sort(ms.begin(), ms.end());
    double med = ms.size() % 2 ? ms[ms.size() / 2]
                               : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
    return 2.0 * static_cast<double>(bytes) / med / 1e6; // read + write bytes
}

extern "C" const char *bench_cuda_device_name(void)
{
    static cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess)
        return "unknown device";
    return prop.name;
}

// ---- steady state: many steps back to back ---------------------------------
//
// gclip-bench --cuda-steps PREFIX: the cost a training loop sees. Each op
// runs many steps back to back on one stream, with no host synchronization
// between the two CUDA events that time them, both as eager calls and as
// replays of a captured graph; the data stays where the previous step left
// it. Beside it, a device-to-device cudaMemcpyAsync of the same bytes timed
// the same way, and the kernel launches of one step (the kernel nodes of
// its captured graph). On devices where the scale kernel can be a dependent
// launch (compute capability 9.0 and later), clip and clip-noop are also
// timed by a plan created under GCLIP_DEPENDENT_LAUNCH=1 (modes
// eager-dependent and graph-dependent). Writes PREFIX.csv and PREFIX.json.

enum steady_op { STEADY_NORM, STEADY_CLIP, STEADY_CLIP_NOOP, STEADY_OPS };
static const char *const steady_names[STEADY_OPS] = {"norm", "clip", "clip-noop"};
static const bench_op steady_bench_op[STEADY_OPS] = {BENCH_NORM, BENCH_CLIP, BENCH_CLIP_NOOP};

// The options of each step. clip alternates a clip by about 0.5 with an
// unclipped step of inv_scale 2 (factor exactly 2), so that every step reads
// and writes every element while the values stay where they started.
struct steady_args {
    gclip_norm_options norm, clip, grow, noop;
};

static steady_args steady_args_for(const bench_workload *w)
{
    steady_args a = {GCLIP_NORM_OPTIONS_INIT, GCLIP_NORM_OPTIONS_INIT, GCLIP_NORM_OPTIONS_INIT,
                     GCLIP_NORM_OPTIONS_INIT};
    a.clip.max_norm = static_cast<float>(0.5 * w->norm);
    a.grow.max_norm = INFINITY;
    a.grow.inv_scale = 2.0f;
    a.noop.max_norm = static_cast<float>(2.0 * w->norm); // factor exactly 1: nothing written
    return a;
}

static gclip_status steady_step(cuda_ctx *c, const steady_args &a, steady_op op, long i)
{
    switch (op) {
    case STEADY_NORM: return gclip_total_norm(c->plan, &a.norm, c->stream);
    case STEADY_CLIP: return gclip_clip_grad_norm(c->plan, i % 2 ? &a.grow : &a.clip, c->stream);
    default: return gclip_clip_grad_norm(c->plan, &a.noop, c->stream);
    }
}

// Microseconds per step of `steps` steps issued back to back by issue(k),
// between two events with no host synchronization: the median of `runs`.
// Negative if an issue or the wait failed.
template <class Issue>
static double us_per_step(cuda_ctx *c, int runs, long steps, Issue issue)
{
    std::vector<double> us;
    for (int r = 0; r < runs; r++) {
        cudaEventRecord(c->start, c->stream);
        for (long k = 0; k < steps; k++)
            if (!issue(k))
                return -1.0;
        cudaEventRecord(c->stop, c->stream);
        float ms = 0.0f;
        if (!ok(cudaEventSynchronize(c->stop), "timed steps") ||
            !ok(cudaEventElapsedTime(&ms, c->start, c->stop), "event time"))
            return -1.0;
        us.push_back(1e3 * ms / static_cast<double>(steps));
    }
    // the median as the CPU rows and the PyTorch steps take it (the mean of
    // the middle two for an even count)
    return bench_stats_of(us.data(), static_cast<int>(us.size())).median_ms;
}

// Steps per timed run: about 20 ms of work, even (the clip's pairs), after
// a warm-up of 20 steps that also measures one step.
template <class Issue>
static long steps_per_run(cuda_ctx *c, Issue issue)
{
    const double one = us_per_step(c, 1, 20, issue);
    if (one <= 0.0)
        return -1;
    const long n = static_cast<long>(2e4 / one);
    return std::max(20L, std::min(20000L, n + n % 2));
}

struct steady_row {
    const char *workload, *op, *mode;
    size_t tensors;
    double data_bytes, bytes_per_step;
    int launches;
    long steps;
    double us, gbps, copy_gbps;
};

// The kernel launches of step 0 of `op`, from its captured graph (-1 if it
// cannot be captured).
static int steady_launches(cuda_ctx *c, const steady_args &a, steady_op op)
{
    cudaGraph_t graph = nullptr;
    if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
        return -1;
    const gclip_status st = steady_step(c, a, op, 0);
    const cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    int n = -1;
    if (st == GCLIP_STATUS_SUCCESS && e == cudaSuccess && graph)
        n = kernel_nodes(graph);
    if (graph)
        cudaGraphDestroy(graph);
    cudaGetLastError();
    return n;
}

// A graph of two consecutive steps of `op`, instantiated (NULL on failure).
static cudaGraphExec_t steady_pair_graph(cuda_ctx *c, const steady_args &a, steady_op op)
{
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
        return nullptr;
    const bool issued = steady_step(c, a, op, 0) == GCLIP_STATUS_SUCCESS &&
                        steady_step(c, a, op, 1) == GCLIP_STATUS_SUCCESS;
    if (cudaStreamEndCapture(c->stream, &graph) == cudaSuccess && issued && graph)
        cudaGraphInstantiate(&exec, graph, 0);
    if (graph)
        cudaGraphDestroy(graph);
    cudaGetLastError();
    return exec;
}

// Every op of one workload, eager and replayed; appends its rows. Returns
// the number of measurements that failed.
static int steady_workload(bench_workload *w, int runs, std::vector<steady_row> &rows)
{
    bench_impl im;
    if (bench_gclip_cuda_open(&im, w))
        return 1;
    cuda_ctx *c = static_cast<cuda_ctx *>(im.ctx);
    const steady_args a = steady_args_for(w);
    const size_t bytes = static_cast<size_t>(w->data_bytes);
    int failed = 0;

    auto copy = [&](long) {
        return ok(cudaMemcpyAsync(c->data, c->pristine, bytes, cudaMemcpyDeviceToDevice, c->stream),
                  "copy");
    };
    const long copy_steps = steps_per_run(c, copy);
    const double copy_us = copy_steps > 0 ? us_per_step(c, runs, copy_steps, copy) : -1.0;
    const double copy_gbps = copy_us > 0 ? 2.0 * w->data_bytes / copy_us / 1e3 : 0.0;
    rows.push_back({w->name, "d2d-copy", "eager", w->count, w->data_bytes, 2.0 * w->data_bytes, 0,
                    copy_steps, copy_us, copy_gbps, copy_gbps});
    failed += copy_us <= 0;
    // the last copy left the pristine values in place for the steps

    // The ops with gclip's default, plain launches, then, on devices of
    // compute capability 9.0 and later, clip and clip-noop again by a second
    // plan over the same tensors created under GCLIP_DEPENDENT_LAUNCH=1, the
    // scale kernel a dependent launch (modes eager-dependent and
    // graph-dependent): what the dependent launch saves or costs.
    int device = 0, major = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    gclip_plan *plain_plan = c->plan, *dependent_plan = nullptr;
    if (major >= 9) {
        const char *old = std::getenv("GCLIP_DEPENDENT_LAUNCH");
        const std::string kept = old ? old : "";
        setenv("GCLIP_DEPENDENT_LAUNCH", "1", 1);
        const gclip_status st = gclip_plan_create(&dependent_plan, c->tensors.data(), w->count, 0);
        if (old)
            setenv("GCLIP_DEPENDENT_LAUNCH", kept.c_str(), 1);
        else
            unsetenv("GCLIP_DEPENDENT_LAUNCH");
        if (st != GCLIP_STATUS_SUCCESS) {
            std::fprintf(stderr, "gclip-bench: %s: dependent-launch plan: %s: %s\n", w->name,
                         gclip_status_string(st), gclip_last_error());
            failed++;
            dependent_plan = nullptr;
        }
    }
    for (int k = 0; k < STEADY_OPS + (dependent_plan ? 2 : 0); k++) {
        const bool dependent = k >= STEADY_OPS;
        const steady_op op = dependent ? (k == STEADY_OPS ? STEADY_CLIP : STEADY_CLIP_NOOP)
                                       : static_cast<steady_op>(k);
        c->plan = dependent ? dependent_plan : plain_plan;
        const int launches = steady_launches(c, a, op);
        const double per_step = bench_op_bytes(steady_bench_op[op], w->data_bytes);
        auto eager = [&](long i) {
            const gclip_status st = steady_step(c, a, op, i);
            if (st != GCLIP_STATUS_SUCCESS)
                std::fprintf(stderr, "gclip-bench: %s %s: %s: %s\n", w->name, steady_names[op],
                             gclip_status_string(st), gclip_last_error());
            return st == GCLIP_STATUS_SUCCESS;
        };
        cudaGraphExec_t pair = steady_pair_graph(c, a, op);
        auto replay = [&](long i) {
            return i % 2 == 1 || (pair && ok(cudaGraphLaunch(pair, c->stream), "graph launch"));
        };
        const char *const modes[2] = {dependent ? "eager-dependent" : "eager",
                                      dependent ? "graph-dependent" : "graph"};
        for (int m = 0; m < 2; m++) {
            const long steps = m ? steps_per_run(c, replay) : steps_per_run(c, eager);
            const double us = steps <= 0 ? -1.0
                              : m    ? us_per_step(c, runs, steps, replay)
                                     : us_per_step(c, runs, steps, eager);
            rows.push_back({w->name, steady_names[op], modes[m], w->count, w->data_bytes, per_step,
                            launches, steps, us, us > 0 ? per_step / us / 1e3 : 0.0, copy_gbps});
            failed += us <= 0;
        }
        if (pair)
            cudaGraphExecDestroy(pair);
        // the norm the steps computed is the workload's own
        gclip_result r;
        const gclip_status st = gclip_get_result(c->plan, &r);
        if (op == STEADY_NORM &&
            (st != GCLIP_STATUS_SUCCESS || !bench_norm_matches(r.total_norm, w->norm))) {
            std::fprintf(stderr, "gclip-bench: %s: norm %.9g, expected %.9g (%s)\n", w->name,
                         r.total_norm, w->norm, gclip_status_string(st));
            failed++;
        }
    }
    c->plan = plain_plan;
    if (dependent_plan)
        gclip_plan_destroy(dependent_plan);
    im.close(im.ctx);
    return failed;
}

static int write_steady(const std::vector<steady_row> &rows, const std::string &prefix,
                        const char *device)
{
    FILE *csv = std::fopen((prefix + ".csv").c_str(), "w");
    FILE *json = std::fopen((prefix + ".json").c_str(), "w");
    if (!csv || !json) {
        if (csv)
            std::fclose(csv);
        if (json)
            std::fclose(json);
        return -1;
    }
    std::fprintf(csv, "device,workload,tensors,data_bytes,op,mode,launches_per_step,steps_per_run,"
                      "us_per_step,bytes_per_step,gbps,copy_gbps,fraction_of_copy\n");
    std::fprintf(json, "[\n");
    for (size_t i = 0; i < rows.size(); i++) {
        const steady_row &r = rows[i];
        const double frac = r.copy_gbps > 0 ? r.gbps / r.copy_gbps : 0.0;
        std::fprintf(csv, "\"%s\",%s,%zu,%.0f,%s,%s,%d,%ld,%.3f,%.0f,%.2f,%.2f,%.4f\n", device,
                     r.workload, r.tensors, r.data_bytes, r.op, r.mode, r.launches, r.steps, r.us,
                     r.bytes_per_step, r.gbps, r.copy_gbps, frac);
        std::fprintf(json,
                     "  {\"device\": \"%s\", \"workload\": \"%s\", \"tensors\": %zu, "
                     "\"data_bytes\": %.0f, \"op\": \"%s\", \"mode\": \"%s\", "
                     "\"launches_per_step\": %d, \"steps_per_run\": %ld, \"us_per_step\": %.3f, "
                     "\"bytes_per_step\": %.0f, \"gbps\": %.2f, \"copy_gbps\": %.2f, "
                     "\"fraction_of_copy\": %.4f}%s\n",
                     device, r.workload, r.tensors, r.data_bytes, r.op, r.mode, r.launches, r.steps,
                     r.us, r.bytes_per_step, r.gbps, r.copy_gbps, frac,
                     i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(json, "]\n");
    const bool good = std::fclose(csv) == 0;
    return std::fclose(json) == 0 && good ? 0 : -1;
}

extern "C" int bench_cuda_steps(unsigned workloads, int runs, int threads, const char *prefix)
{
    if (gclip_cuda_device_count() <= 0) {
        std::fprintf(stderr, "gclip-bench: --cuda-steps: no CUDA device or driver "
                             "(gclip_cuda_device_count() is 0); nothing measured\n");
        return 1;
    }
    // the default (every workload) means the three the steady state is for
    if (workloads == (1u << bench_workload_count) - 1) {
        workloads = 0;
        for (size_t i = 0; i < bench_workload_count; i++)
            if (!std::strcmp(bench_workload_names[i], "gpt2-124m") ||
                !std::strcmp(bench_workload_names[i], "many-small") ||
                !std::strcmp(bench_workload_names[i], "tiny-100k"))
                workloads |= 1u << i;
    }
    const char *device = bench_cuda_device_name();
    std::printf("gclip-bench --cuda-steps: %s, median of %d timed runs per row\n", device, runs);
    std::printf("%-10s %-10s %-11s %8s %10s %12s %9s %9s %7s\n", "workload", "op", "mode",
                "launches", "steps/run", "us/step", "GB/s", "copy GB/s", "of copy");
    std::vector<steady_row> rows;
    int failed = 0;
    for (size_t i = 0; i < bench_workload_count; i++) {
        if (!(workloads & (1u << i)))
            continue;
        bench_workload w;
        if (bench_workload_create(&w, bench_workload_names[i], (int64_t)256 << 20, threads)) {
            std::fprintf(stderr, "gclip-bench: cannot build workload %s\n", bench_workload_names[i]);
            bench_workload_destroy(&w);
            failed++;
            continue;
        }
        const size_t first = rows.size();
        failed += steady_workload(&w, runs, rows);
        for (size_t k = first; k < rows.size(); k++) {
            const steady_row &r = rows[k];
            std::printf("%-10s %-10s %-11s %8d %10ld %12.3f %9.1f %9.1f %6.1f%%\n", r.workload, r.op,
                        r.mode, r.launches, r.steps, r.us, r.gbps, r.copy_gbps,
                        r.copy_gbps > 0 ? 100.0 * r.gbps / r.copy_gbps : 0.0);
        }
        bench_workload_destroy(&w);
    }
    if (write_steady(rows, prefix, device)) {
        std::fprintf(stderr, "gclip-bench: cannot write %s.csv / %s.json\n", prefix, prefix);
        return 1;
    }
    std::printf("wrote %s.csv and %s.json\n", prefix, prefix);
    return failed ? 1 : 0;
}
