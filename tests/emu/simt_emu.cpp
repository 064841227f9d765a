// simt_emu.cpp - fibers, barrier, schedules and shared-memory refill of the
// SIMT emulator (see simt_emu.h for the model).
#include "simt_emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define GCLIP_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GCLIP_EMU_ASAN 1
#endif
#endif
#ifdef GCLIP_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// Bounds of the __shared__ section, defined by the linker because the
// section name is a C identifier. Weak: a program with no __shared__
// variable has no such section.
extern "C" char __start_gclip_emu_shared[] __attribute__((weak));
extern "C" char __stop_gclip_emu_shared[] __attribute__((weak));

namespace gclip_emu {

uint3 g_thread_idx = {0, 0, 0};
uint3 g_block_idx = {0, 0, 0};
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

// Large enough for the kernels plus a sanitizer report printed from a fiber.
constexpr std::size_t kStackBytes = 128 * 1024;
constexpr unsigned kMaxThreads = 1024;

enum class State { idle, runnable, waiting, done, aborted };

struct Fiber {
    ucontext_t ctx;
    char *stack = nullptr; // usable part, above a PROT_NONE guard page
    State state = State::idle;
    const char *site_file = nullptr;
    int site_line = 0;
    void *fake_stack = nullptr; // ASan's fake stack of this fiber
};

struct Runtime {
    Schedule sched;
    std::mt19937_64 rng{1};
    std::vector<Fiber> fibers;
    ucontext_t home;                  // the launching thread's context
    const void *home_bottom = nullptr; // its stack, for ASan's switch annotations
    std::size_t home_size = 0;
    int current = -1; // running fiber, -1 outside a block
    std::vector<unsigned> order; // thread order of the current pass
    std::size_t pos = 0;         // position of the running fiber in `order`
    bool from_home = false;      // the running fiber was entered from home
    void (*body)(void *) = nullptr;
    void *body_ctx = nullptr;
    int status = kOk;
    int block_failed = 0;
    std::string message;
    unsigned launches = 0;
    unsigned blocks_run = 0; // selects the garbage pattern
    std::map<const void *, std::vector<unsigned char>> scratch;
};

Runtime &rt()
{
    static Runtime r;
    return r;
}

void annotate_start(void **fake_save, const void *bottom, std::size_t size)
{
#ifdef GCLIP_EMU_ASAN
    __sanitizer_start_switch_fiber(fake_save, bottom, size);
#else
    (void)fake_save, (void)bottom, (void)size;
#endif
}

void annotate_finish(void *fake, const void **bottom_old, std::size_t *size_old)
{
#ifdef GCLIP_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, bottom_old, size_old);
#else
    (void)fake, (void)bottom_old, (void)size_old;
#endif
}

void set_current(int tid)
{
    rt().current = tid;
    g_thread_idx = uint3{static_cast<unsigned>(tid < 0 ? 0 : tid), 0, 0};
}

// Leave the running fiber for the next runnable fiber of the pass, or for
// the launching thread at the end of the pass or after an error. Going
// straight to the next fiber halves the number of context switches. A fiber
// that will not run again passes no fake-stack slot, which tells ASan to
// drop its fake stack.
void switch_away(bool exiting)
{
    Runtime &r = rt();
    Fiber &self = r.fibers[static_cast<std::size_t>(r.current)];
    ucontext_t *to = &r.home;
    const void *bottom = r.home_bottom;
    std::size_t size = r.home_size;
    if (!r.block_failed) {
        while (++r.pos < r.order.size() && r.fibers[r.order[r.pos]].state != State::runnable) {
        }
        if (r.pos < r.order.size()) {
            Fiber &next = r.fibers[r.order[r.pos]];
            set_current(static_cast<int>(r.order[r.pos]));
            r.from_home = false;
            to = &next.ctx;
            bottom = next.stack;
            size = kStackBytes;
        }
    }
    annotate_start(exiting ? nullptr : &self.fake_stack, bottom, size);
    swapcontext(&self.ctx, to);
    annotate_finish(self.fake_stack, nullptr, nullptr);
}

void fiber_main()
{
    Runtime &r = rt();
    const void *from_bottom = nullptr;
    std::size_t from_size = 0;
    annotate_finish(nullptr, &from_bottom, &from_size);
    if (r.from_home) {
        r.home_bottom = from_bottom;
        r.home_size = from_size;
    }
    r.body(r.body_ctx);
    r.fibers[static_cast<std::size_t>(r.current)].state = State::done;
    switch_away(true);
    std::abort(); // a finished fiber is never resumed
}

char *map_stack()
{
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    void *p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        std::perror("simt_emu: mmap of a fiber stack");
        std::abort();
    }
    // A stack overflow hits the guard page instead of the next fiber's stack.
    mprotect(p, page, PROT_NONE);
    return static_cast<char *>(p) + page;
}

void start_fiber(unsigned tid)
{
    Runtime &r = rt();
    Fiber &f = r.fibers[tid];
    if (!f.stack)
        f.stack = map_stack();
#ifdef GCLIP_EMU_ASAN
    // An aborted fiber leaves its frames' redzones poisoned.
    __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
    // ASan's swapcontext interceptor clears the shadow of the target
    // context's whole stack on every switch, which costs time and forgets
    // the redzones of the suspended frames. Forget the stack bounds instead:
    // makecontext has consumed them, and the switches are annotated below.
    f.ctx.uc_stack.ss_sp = nullptr;
    f.ctx.uc_stack.ss_size = 0;
    f.state = State::runnable;
    f.fake_stack = nullptr;
}

// Run the pass of the current order from position `pos` (a runnable fiber)
// until it comes back to the launching thread.
void run_pass_from(std::size_t pos)
{
    Runtime &r = rt();
    const unsigned tid = r.order[pos];
    r.pos = pos;
    set_current(static_cast<int>(tid));
    r.from_home = true;
    void *fake = nullptr;
    annotate_start(&fake, r.fibers[tid].stack, kStackBytes);
    swapcontext(&r.home, &r.fibers[tid].ctx);
    annotate_finish(fake, nullptr, nullptr);
    set_current(-1);
}

std::vector<unsigned> make_order(unsigned n, Order o)
{
    std::vector<unsigned> v(n);
    std::iota(v.begin(), v.end(), 0u);
    if (o == Order::reverse)
        std::reverse(v.begin(), v.end());
    else if (o == Order::shuffled)
        std::shuffle(v.begin(), v.end(), rt().rng);
    return v;
}

// Fill shared memory with garbage: all-ones bytes (NaN doubles and floats,
// 0xffffffff counters) and 0x7f bytes (huge finite values) on alternate
// blocks. Bypasses ASan because the section holds redzones between variables.
__attribute__((no_sanitize_address)) void refill_shared()
{
    Runtime &r = rt();
    const unsigned char pat = (r.blocks_run & 1u) ? 0x7f : 0xff;
    if (__start_gclip_emu_shared && __stop_gclip_emu_shared) {
        volatile unsigned char *p = reinterpret_cast<unsigned char *>(__start_gclip_emu_shared);
        const std::size_t n =
            static_cast<std::size_t>(__stop_gclip_emu_shared - __start_gclip_emu_shared);
        for (std::size_t i = 0; i < n; ++i)
            p[i] = pat;
    }
    for (auto &kv : r.scratch)
        std::fill(kv.second.begin(), kv.second.end(), pat);
}

const char *site_name(const Fiber &f, char *buf, std::size_t n)
{
    std::snprintf(buf, n, "%s:%d", f.site_file, f.site_line);
    return buf;
}

// Every live fiber is waiting: check they all wait at one barrier call site
// and nobody exited, then release them. Returns false on divergence.
bool release_barrier(unsigned nthreads, unsigned block)
{
    Runtime &r = rt();
    int first_wait = -1, first_done = -1;
    for (unsigned t = 0; t < nthreads; ++t) {
        const Fiber &f = r.fibers[t];
        if (f.state == State::waiting && first_wait < 0)
            first_wait = static_cast<int>(t);
        if (f.state == State::done && first_done < 0)
            first_done = static_cast<int>(t);
    }
    if (first_wait < 0)
        return true; // every thread finished
    char a[512], b[512];
    const Fiber &w = r.fibers[static_cast<std::size_t>(first_wait)];
    if (first_done >= 0) {
        fail(kErrDivergence,
             "divergent __syncthreads in block %u: thread %d exited while thread %d waits at %s",
             block, first_done, first_wait, site_name(w, a, sizeof a));
        return false;
    }
    for (unsigned t = 0; t < nthreads; ++t) {
        const Fiber &f = r.fibers[t];
        if (f.site_line != w.site_line || std::strcmp(f.site_file, w.site_file) != 0) {
            fail(kErrDivergence,
                 "divergent __syncthreads in block %u: thread %d waits at %s, thread %u at %s",
                 block, first_wait, site_name(w, a, sizeof a), t, site_name(f, b, sizeof b));
            return false;
        }
    }
    for (unsigned t = 0; t < nthreads; ++t)
        r.fibers[t].state = State::runnable;
    return true;
}

// Run one block: phases of "run every runnable fiber in schedule order until
// none is runnable", separated by barrier checks.
bool run_block(unsigned block, unsigned nthreads)
{
    Runtime &r = rt();
    g_block_idx = uint3{block, 0, 0};
    refill_shared();
    ++r.blocks_run;
    for (unsigned t = 0; t < nthreads; ++t)
        start_fiber(t);
    for (;;) {
        r.order = make_order(nthreads, r.sched.threads);
        // passes over the order until no fiber is runnable (yields leave
        // fibers runnable for the next pass)
        for (;;) {
            std::size_t first = 0;
            while (first < nthreads && r.fibers[r.order[first]].state != State::runnable)
                ++first;
            if (first == nthreads)
                break;
            run_pass_from(first);
            if (r.block_failed)
                return false;
        }
        bool finished = true;
        for (unsigned t = 0; t < nthreads; ++t)
            finished = finished && r.fibers[t].state == State::done;
        if (finished)
            return true;
        if (!release_barrier(nthreads, block))
            return false;
    }
}

} // namespace

void set_schedule(const Schedule &s)
{
    rt().sched = s;
    rt().rng.seed(s.seed);
}

const Schedule &schedule() { return rt().sched; }

const char *order_name(Order o)
{
    return o == Order::forward ? "forward" : o == Order::reverse ? "reverse" : "shuffled";
}

int last_status() { return rt().status; }
const char *error_message() { return rt().message.c_str(); }
void clear_error() { rt().message.clear(); }
unsigned launch_count() { return rt().launches; }
void reset_launch_count() { rt().launches = 0; }

void fail(int status, const char *fmt, ...)
{
    Runtime &r = rt();
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (r.message.empty())
        r.message = buf;
    r.status = status;
    r.block_failed = 1;
    if (r.current >= 0) {
        // abandon this fiber: the launch stops, nothing of the block resumes
        r.fibers[static_cast<std::size_t>(r.current)].state = State::aborted;
        switch_away(true); // goes home: the block has failed
        std::abort();
    }
}

int launch(dim3 grid, dim3 block, void (*body)(void *), void *ctx)
{
    Runtime &r = rt();
    ++r.launches;
    r.status = kOk;
    r.block_failed = 0;
    if (r.current >= 0) {
        std::fprintf(stderr, "simt_emu: a kernel launched a kernel\n");
        std::abort();
    }
    const unsigned threads = block.x * block.y * block.z;
    if (grid.x == 0 || grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1 ||
        threads == 0 || threads > kMaxThreads) {
        fail(kErrConfiguration, "launch shape grid (%u,%u,%u) block (%u,%u,%u) not supported",
             grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return r.status;
    }
    if (r.fibers.size() < threads)
        r.fibers.resize(threads);
    r.body = body;
    r.body_ctx = ctx;
    g_grid_dim = grid;
    g_block_dim = block;
    for (unsigned b : make_order(grid.x, r.sched.blocks))
        if (!run_block(b, threads))
            break;
    for (auto &f : r.fibers)
        f.state = State::idle;
    return r.status;
}

void syncthreads(const char *file, int line)
{
    Runtime &r = rt();
    if (r.current < 0) {
        std::fprintf(stderr, "simt_emu: __syncthreads() outside a kernel at %s:%d\n", file, line);
        std::abort();
    }
    Fiber &f = r.fibers[static_cast<std::size_t>(r.current)];
    f.state = State::waiting;
    f.site_file = file;
    f.site_line = line;
    switch_away(false);
}

void yield_point()
{
    Runtime &r = rt();
    if (r.current >= 0 && r.sched.yield_at_atomics)
        switch_away(false); // stays runnable: the pass moves on to the next fiber
}

void *block_scratch(const void *key, std::size_t bytes)
{
    std::vector<unsigned char> &v = rt().scratch[key];
    if (v.size() != bytes) {
        // first use, in the middle of a block: garbage as after a refill
        v.assign(bytes, 0xff);
    }
    return v.data();
}

} // namespace gclip_emu
