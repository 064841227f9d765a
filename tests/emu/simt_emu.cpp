// simt_emu.cpp - fibers, resident-block window, barrier, schedules and
// shared-memory swapping of the SIMT emulator (see simt_emu.h for the model).
#include "simt_emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
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
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#ifdef GCLIP_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// Fiber switches. On x86-64 a switch saves the callee-saved registers and
// the SSE and x87 control words on the running stack and moves the stack
// pointer: swapcontext would also save and restore the signal mask, one
// system call per switch, and a launch switches fibers millions of times.
// Elsewhere the emulator uses ucontext.
#if defined(__x86_64__) && defined(__GNUC__)
#define GCLIP_EMU_OWN_SWITCH 1
// gclip_emu_switch(save, to): stores the running fiber's stack pointer in
// *save and resumes the one saved at `to`.
extern "C" void gclip_emu_switch(void **save, void *to);
__asm__(".text\n"
        ".p2align 4\n"
        ".globl gclip_emu_switch\n"
        ".hidden gclip_emu_switch\n"
        ".type gclip_emu_switch, @function\n"
        "gclip_emu_switch:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  stmxcsr (%rsp)\n"
        "  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n"
        "  fldcw 4(%rsp)\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size gclip_emu_switch, .-gclip_emu_switch\n");
#endif

// The fold window of the kernels compiled for the emulator
// (kernels/norm_finalize.cuh): 0 is the largest, GCLIP_FOLD_WINDOW_MAX.
uint32_t gclip_emu_fold_window = 0;

namespace gclip_emu {

uint3 g_thread_idx = {0, 0, 0};
uint3 g_block_idx = {0, 0, 0};
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

// Large enough for the kernels plus a sanitizer report printed from a fiber.
constexpr std::size_t kStackBytes = 128 * 1024;
constexpr unsigned kMaxThreads = 1024;

// grid_wait: in wait_prior_grids() while an earlier launch of its stream runs;
// warp_waiting: in __syncwarp() while a lane of its warp has not arrived
enum class State { idle, runnable, waiting, warp_waiting, grid_wait, done, aborted };

struct Slot;

// A suspended fiber, or the launching thread while a fiber runs.
struct Context {
#ifdef GCLIP_EMU_OWN_SWITCH
    void *sp = nullptr;
#else
    ucontext_t uc;
    bool made = false; // uc came from getcontext or a switch
#endif
};

struct Fiber {
    Context ctx;
    char *stack = nullptr; // usable part, above a PROT_NONE guard page
    char *low = nullptr;   // below it, ASan's shadow of the stack is clean
    const char *site_file = nullptr;
    int site_line = 0;
    void *fake_stack = nullptr; // ASan's fake stack of this fiber
    Slot *slot = nullptr;       // the resident-block slot that owns it
    unsigned tid = 0;
};

struct Stream;

// One kernel launch: its shape, body and the progress of its blocks.
struct Launch {
    dim3 grid, block;
    unsigned threads = 0;
    void (*body)(void *) = nullptr;
    void *ctx = nullptr;
    void (*destroy)(void *) = nullptr; // frees ctx of a recorded launch
    Section sec;                       // the kernel's __shared__ section
    std::vector<unsigned> order;       // block order, drawn when the launch may start
    std::size_t admitted = 0, retired = 0;
    std::size_t released = 0; // blocks that called release_dependents() or finished
    bool dependent = false;   // programmatic dependent launch
    Stream *stream = nullptr; // its stream while it runs, and its place there
    std::size_t index = 0;
};

// The launches of one stream, run in order; `current` is the first that
// has not finished (a dependent launch may run alongside it).
struct Stream {
    std::vector<Launch *> launches;
    std::size_t current = 0;
};

// Whether every launch before `l` in its stream has finished.
bool prior_done(const Launch &l)
{
    return !l.stream || l.stream->current >= l.index;
}

// A place in the window of resident blocks. Its fibers (and their stacks)
// are reused by every block that occupies it in turn; a saved context must
// not move, hence the deque.
struct Slot {
    std::deque<Fiber> fibers;
    std::vector<State> states; // of the fibers, by thread index (scanned often)
    bool live = false;
    bool released = false; // the block called release_dependents()
    Launch *launch = nullptr;
    unsigned block = 0; // blockIdx.x of the resident block
    unsigned threads = 0;
    std::vector<unsigned> order; // thread order of the current barrier phase
    std::size_t pos = 0;         // position in `order` of the block's current fiber
    bool advance = false;        // that fiber has handed its turn on
    unsigned char pattern = 0xff;
    std::vector<unsigned char> shared; // the block's copy of its kernel's __shared__ section
    std::map<const void *, std::vector<unsigned char>> scratch;
};

struct Runtime {
    Schedule sched;
    std::mt19937_64 rng{1};
    std::vector<std::unique_ptr<Slot>> slots;
    std::vector<Slot *> live;          // resident blocks, in the order they entered
    Context home;                      // the launching thread's context
    const void *home_bottom = nullptr; // its stack, for ASan's switch annotations
    std::size_t home_size = 0;
    Fiber *current = nullptr; // running fiber, null outside a launch
    bool from_home = false;   // the running fiber was entered from home
    Slot *active = nullptr; // the block of the fiber that ran last
    // The block whose copy each section holds, by the section's start.
    std::vector<std::pair<char *, Slot *>> owners;
    Slot *finished = nullptr;      // block whose last fiber exited, for home to retire
    int status = kOk;
    bool failed = false;
    std::string message;
    unsigned launches = 0;
    unsigned last_grid = 0; // blocks of the most recent launch
    unsigned early = 0;     // dependent blocks admitted before the launch before them ended
    std::vector<Stream> *streams = nullptr; // of the run in progress
    unsigned blocks_run = 0; // selects the garbage pattern
    std::size_t stacks = 0;
    bool recording = false;
    std::vector<std::vector<std::unique_ptr<Launch>>> recorded; // per stream
    std::size_t recording_stream = 0;
    int recording_status = kOk; // first launch rejected while recording
    std::map<const void *, std::vector<unsigned char>> outside_scratch;
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

std::size_t below(std::size_t n)
{
    return static_cast<std::size_t>(rt().rng() % n);
}

// ---- the __shared__ section ----------------------------------------------------

std::size_t section_bytes(const Section &sec)
{
    if (!sec.begin || !sec.end)
        return 0;
    return static_cast<std::size_t>(sec.end - sec.begin);
}

// Copies that bypass ASan: the section holds redzones between the
// variables, and a plain loop could become a memcpy call that ASan
// intercepts. A block switch copies the section twice, and the norm
// kernel's is 12 KB: on x86-64 one `rep movsb` (the CPU's own string copy,
// 1.6x faster than the vector loop on Spanning_PerTensor), else 16-byte
// vector moves, else bytes through volatile pointers.
__attribute__((no_sanitize_address)) void copy_bytes(unsigned char *to, const unsigned char *from,
                                                     std::size_t n)
{
#if defined(__x86_64__)
    __asm__ volatile("rep movsb" : "+D"(to), "+S"(from), "+c"(n) : : "memory");
#else
    std::size_t i = 0;
#if defined(__SSE2__)
    for (; i + 16 <= n; i += 16)
        _mm_storeu_si128(reinterpret_cast<__m128i *>(to + i),
                         _mm_loadu_si128(reinterpret_cast<const __m128i *>(from + i)));
#endif
    volatile unsigned char *t = to;
    const volatile unsigned char *f = from;
    for (; i < n; ++i)
        t[i] = f[i];
#endif
}

// The block whose copy section `begin` holds (null: none).
Slot *&section_owner(char *begin)
{
    Runtime &r = rt();
    for (auto &o : r.owners)
        if (o.first == begin)
            return o.second;
    r.owners.emplace_back(begin, nullptr);
    return r.owners.back().second;
}

// Make the section of block `s`'s kernel hold `s`'s copy, saving the copy
// of the block it held (a block of the same kernel: the same size).
void load_section(Slot &s)
{
    const Section &sec = s.launch->sec;
    const std::size_t n = section_bytes(sec);
    if (n == 0)
        return;
    Slot *&owner = section_owner(sec.begin);
    if (owner == &s)
        return;
    unsigned char *p = reinterpret_cast<unsigned char *>(sec.begin);
    if (owner)
        copy_bytes(owner->shared.data(), p, n);
    copy_bytes(p, s.shared.data(), n);
    owner = &s;
}

// Block `s` leaves the window: no section holds its copy any more.
void drop_sections(const Slot &s)
{
    for (auto &o : rt().owners)
        if (o.second == &s)
            o.second = nullptr;
}

// ---- fibers ----------------------------------------------------------------------

// Make `f` the running fiber: its coordinates, and its block's copy of its
// kernel's section if another block's copy is in place.
void activate(Fiber &f)
{
    Runtime &r = rt();
    r.current = &f;
    g_thread_idx = uint3{f.tid, 0, 0};
    Slot &s = *f.slot;
    if (r.active != &s) {
        r.active = &s;
        load_section(s);
        g_block_idx = uint3{s.block, 0, 0};
        g_block_dim = s.launch->block;
        g_grid_dim = s.launch->grid;
    }
}

// Save the running context in `save` and resume `to`.
inline void switch_context(Context &save, Context &to)
{
#ifdef GCLIP_EMU_OWN_SWITCH
    gclip_emu_switch(&save.sp, to.sp);
#else
    save.made = true;
    swapcontext(&save.uc, &to.uc);
#endif
}

// Below the frame of the switch function itself, the switch runs only
// uninstrumented code (libc and the sanitizer runtime), which poisons nothing.
constexpr std::size_t kSwitchMargin = 4096;

// The running fiber is about to switch away: its live frames, whose
// redzones stay poisoned if it never returns, lie above this frame.
__attribute__((always_inline)) inline void note_stack_use(Fiber &self)
{
    char *sp = static_cast<char *>(__builtin_frame_address(0));
    const std::size_t above_end = static_cast<std::size_t>(sp - self.stack);
    char *low = sp - std::min(kSwitchMargin, above_end);
    self.low = std::min(self.low, low);
}

// Leave the running fiber for good: back to the launching thread, which
// retires a finished block or stops after an error. Passing no fake-stack
// slot tells ASan to drop this fiber's fake stack.
[[noreturn]] void go_home()
{
    Runtime &r = rt();
    Fiber &self = *r.current;
    note_stack_use(self);
    annotate_start(nullptr, r.home_bottom, r.home_size);
    switch_context(self.ctx, r.home);
    std::abort(); // never resumed
}

// Switch from the running fiber straight to `next` (going through home
// would double the context switches). A fiber that will not run again
// passes no fake-stack slot.
void switch_to(Fiber &next, bool exiting)
{
    Runtime &r = rt();
    Fiber &self = *r.current;
    if (&next == &self)
        return;
    note_stack_use(self);
    activate(next);
    r.from_home = false;
    annotate_start(exiting ? nullptr : &self.fake_stack, next.stack, kStackBytes);
    switch_context(self.ctx, next.ctx);
    annotate_finish(self.fake_stack, nullptr, nullptr);
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
    ++rt().stacks;
    return static_cast<char *>(p) + page;
}

void fiber_main();

// A context that starts fiber_main on `f`'s stack when switched to.
void make_context(Fiber &f)
{
#ifdef GCLIP_EMU_OWN_SWITCH
    // What gclip_emu_switch pops, from its stack pointer up: the control
    // words, r15, r14, r13, r12, rbx, rbp, the address it returns to. Its
    // `ret` enters fiber_main as a call would have, the stack pointer 8 past
    // a multiple of 16, below a null return address; rbp = 0 ends the frame
    // chain for stack traces.
    char *top = f.stack + kStackBytes; // page-aligned
    void **frame = reinterpret_cast<void **>(top - 8 - 8 * 8);
    unsigned mxcsr = 0;
    unsigned short fcw = 0;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fcw));
    std::memset(frame, 0, 9 * sizeof(void *));
    std::memcpy(frame, &mxcsr, 4);
    std::memcpy(reinterpret_cast<char *>(frame) + 4, &fcw, 2);
    void (*entry)() = fiber_main;
    std::memcpy(&frame[7], &entry, sizeof entry);
    f.ctx.sp = frame;
#else
    // makecontext needs a context from getcontext; one saved by a switch
    // serves as well, and the deque never moves it.
    if (!f.ctx.made) {
        getcontext(&f.ctx.uc);
        f.ctx.made = true;
    }
    f.ctx.uc.uc_stack.ss_sp = f.stack;
    f.ctx.uc.uc_stack.ss_size = kStackBytes;
    f.ctx.uc.uc_link = nullptr;
    makecontext(&f.ctx.uc, fiber_main, 0);
    // ASan's swapcontext interceptor clears the shadow of the target
    // context's whole stack on every switch, which costs time and forgets
    // the redzones of the suspended frames. Forget the stack bounds instead:
    // makecontext has consumed them, and the switches are annotated.
    f.ctx.uc.uc_stack.ss_sp = nullptr;
    f.ctx.uc.uc_stack.ss_size = 0;
#endif
}

void start_fiber(Fiber &f)
{
    if (!f.stack) {
        f.stack = map_stack();
        f.low = f.stack;
    }
#ifdef GCLIP_EMU_ASAN
    // The frames that were live when the previous fiber on this stack last
    // switched away (all of them, if it was abandoned) left their redzones
    // poisoned; they all lie above `low`.
    __asan_unpoison_memory_region(f.low, static_cast<std::size_t>(f.stack + kStackBytes - f.low));
#endif
    f.low = f.stack + kStackBytes;
    make_context(f);
    f.slot->states[f.tid] = State::runnable;
    f.fake_stack = nullptr;
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

// ---- errors ------------------------------------------------------------------------

void record_error(int status, const char *fmt, va_list ap)
{
    Runtime &r = rt();
    char buf[1024];
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    if (r.message.empty())
        r.message = buf;
    if (!r.failed)
        r.status = status;
    r.failed = true;
}

__attribute__((format(printf, 2, 3))) void record_error(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record_error(status, fmt, ap);
    va_end(ap);
}

// ---- barrier and the next fiber of a block -----------------------------------------

const char *site_name(const Fiber &f, char *buf, std::size_t n)
{
    std::snprintf(buf, n, "%s:%d", f.site_file, f.site_line);
    return buf;
}

bool same_site(const Fiber &f, const Fiber &g)
{
    // the same __FILE__ literal is mostly the same pointer: strcmp only if not
    return f.site_line == g.site_line &&
           (f.site_file == g.site_file || std::strcmp(f.site_file, g.site_file) == 0);
}

// Every live fiber of the block is waiting: check they all wait at one
// barrier call site and nobody exited, then release them. Returns false on
// divergence.
bool release_barrier(Slot &s)
{
    int first_wait = -1, first_done = -1;
    for (unsigned t = 0; t < s.threads; ++t) {
        if (s.states[t] == State::waiting && first_wait < 0)
            first_wait = static_cast<int>(t);
        if (s.states[t] == State::done && first_done < 0)
            first_done = static_cast<int>(t);
    }
    char a[512], b[512];
    const Fiber &w = s.fibers[static_cast<std::size_t>(first_wait)];
    if (first_done >= 0) {
        record_error(kErrDivergence,
                     "divergent __syncthreads in block %u: thread %d exited while thread %d waits "
                     "at %s",
                     s.block, first_done, first_wait, site_name(w, a, sizeof a));
        return false;
    }
    for (unsigned t = 0; t < s.threads; ++t) {
        const Fiber &f = s.fibers[t];
        if (!same_site(f, w)) {
            record_error(kErrDivergence,
                         "divergent __syncthreads in block %u: thread %d waits at %s, thread %u "
                         "at %s",
                         s.block, first_wait, site_name(w, a, sizeof a), t,
                         site_name(f, b, sizeof b));
            return false;
        }
    }
    for (unsigned t = 0; t < s.threads; ++t)
        s.states[t] = State::runnable;
    return true;
}

// Warp `warp` of block `s` (threads 32 warp .. 32 warp + 31 that exist):
// when every lane that has not exited waits in __syncwarp, and one does,
// they must all wait at one call site; then they are released. Returns
// false on divergence (the error is recorded).
bool release_warp(Slot &s, unsigned warp)
{
    const unsigned begin = warp * 32, end = std::min(s.threads, begin + 32);
    int first = -1;
    for (unsigned t = begin; t < end; ++t) {
        if (s.states[t] == State::warp_waiting) {
            if (first < 0)
                first = static_cast<int>(t);
        } else if (s.states[t] != State::done) {
            return true; // a lane is still on its way
        }
    }
    if (first < 0)
        return true;
    const Fiber &w = s.fibers[static_cast<std::size_t>(first)];
    for (unsigned t = begin; t < end; ++t) {
        const Fiber &f = s.fibers[t];
        if (s.states[t] == State::warp_waiting && !same_site(f, w)) {
            char a[512], b[512];
            record_error(kErrDivergence,
                         "divergent __syncwarp in block %u: thread %d waits at %s, thread %u at %s",
                         s.block, first, site_name(w, a, sizeof a), t, site_name(f, b, sizeof b));
            return false;
        }
    }
    for (unsigned t = begin; t < end; ++t)
        if (s.states[t] == State::warp_waiting)
            s.states[t] = State::runnable;
    return true;
}

// No fiber of block `s` can run: a lane that waits in __syncwarp while a lane
// of its warp waits at __syncthreads (or has exited, which release_warp
// handled) would wait forever, as it would on a GPU. Returns false, with the
// error recorded, when some lane waits so.
bool check_no_warp_wait(Slot &s)
{
    for (unsigned t = 0; t < s.threads; ++t) {
        if (s.states[t] != State::warp_waiting)
            continue;
        const unsigned begin = t / 32 * 32, end = std::min(s.threads, begin + 32);
        for (unsigned u = begin; u < end; ++u) {
            if (s.states[u] == State::waiting) {
                char a[512], b[512];
                record_error(kErrDivergence,
                             "divergent __syncwarp in block %u: thread %u waits at __syncwarp at "
                             "%s, thread %u at __syncthreads at %s",
                             s.block, t, site_name(s.fibers[t], a, sizeof a), u,
                             site_name(s.fibers[u], b, sizeof b));
                return false;
            }
        }
    }
    return true;
}

constexpr int kPickDone = -1;    // every fiber of the block exited
constexpr int kPickFailed = -2;  // the barrier found divergence, or no block can run
constexpr int kPickBlocked = -3; // the block's fibers wait for an earlier grid

// The fiber of block `s` to run next: the current one unless it handed its
// turn on, else the next runnable one in the pass; after the pass a new one
// over the same order while some fiber is runnable (yields), else the
// barrier or the end of the block.
int pick_in_block(Slot &s)
{
    std::size_t p = s.advance ? s.pos + 1 : s.pos;
    s.advance = false;
    const std::size_t n = s.order.size();
    for (;;) {
        while (p < n && s.states[s.order[p]] != State::runnable)
            ++p;
        if (p < n) {
            s.pos = p;
            return static_cast<int>(s.order[p]);
        }
        bool runnable = false, all_done = true, grid_wait = false;
        for (unsigned t = 0; t < s.threads; ++t) {
            runnable = runnable || s.states[t] == State::runnable;
            all_done = all_done && s.states[t] == State::done;
            grid_wait = grid_wait || s.states[t] == State::grid_wait;
        }
        p = 0;
        if (runnable)
            continue;
        if (grid_wait) {
            if (!prior_done(*s.launch))
                return kPickBlocked;
            for (unsigned t = 0; t < s.threads; ++t)
                if (s.states[t] == State::grid_wait)
                    s.states[t] = State::runnable;
            continue;
        }
        if (all_done) {
            rt().finished = &s;
            return kPickDone;
        }
        // a warp whose last lane to arrive exited instead
        bool released = false;
        for (unsigned w = 0; w * 32 < s.threads; ++w) {
            if (!release_warp(s, w))
                return kPickFailed;
            for (unsigned t = w * 32; t < std::min(s.threads, w * 32 + 32); ++t)
                released = released || s.states[t] == State::runnable;
        }
        if (released)
            continue;
        if (!check_no_warp_wait(s))
            return kPickFailed;
        if (!release_barrier(s))
            return kPickFailed;
        s.order = make_order(s.threads, rt().sched.threads);
    }
}

// Another resident block to switch to at a switch point, or null to stay.
Slot *maybe_other_block()
{
    Runtime &r = rt();
    const double rate = r.sched.block_switch_rate;
    if (r.live.size() < 2 || !(rate > 0.0))
        return nullptr;
    if (rate < 1.0 && static_cast<double>(r.rng() >> 11) * 0x1.0p-53 >= rate)
        return nullptr;
    std::size_t k = below(r.live.size() - 1);
    if (r.live[k] == r.current->slot)
        k = r.live.size() - 1;
    return r.live[k];
}

// The next fiber of block `s`, or, when `s` is blocked (its fibers wait for
// an earlier grid), of the first resident block after it that can run, `s`
// then naming that block. When none can, the launch fails (kErrDeadlock).
int pick_any(Slot *&s)
{
    int next = pick_in_block(*s);
    if (next != kPickBlocked)
        return next;
    Runtime &r = rt();
    const std::size_t n = r.live.size();
    const std::size_t at =
        static_cast<std::size_t>(std::find(r.live.begin(), r.live.end(), s) - r.live.begin());
    for (std::size_t k = 1; k < n; ++k) {
        Slot *o = r.live[(at + k) % n];
        next = pick_in_block(*o);
        if (next != kPickBlocked) {
            s = o;
            return next;
        }
    }
    record_error(kErrDeadlock, "every resident block waits in wait_prior_grids() for an "
                               "earlier launch that cannot finish");
    return kPickFailed;
}

// The running fiber gives up the processor to the next fiber of block `t`
// (its own or another resident one, or any that can run if `t` cannot),
// or goes home when that block has finished or the launch failed.
void reschedule(Slot &t, bool exiting)
{
    Slot *s = &t;
    const int next = pick_any(s);
    if (next < 0)
        go_home();
    switch_to(s->fibers[static_cast<std::size_t>(next)], exiting);
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
    const Launch &l = *r.current->slot->launch;
    l.body(l.ctx);
    Fiber &self = *r.current;
    self.slot->states[self.tid] = State::done;
    self.slot->advance = true;
    reschedule(*self.slot, true);
    std::abort(); // a finished fiber is never resumed
}

// ---- the window of resident blocks ----------------------------------------------

// The launch a stream runs now, or null when it has run them all.
Launch *stream_launch(Stream &st)
{
    return st.current < st.launches.size() ? st.launches[st.current] : nullptr;
}

void begin_launch(Launch &l)
{
    l.order = make_order(l.grid.x, rt().sched.blocks);
}

// Put block `block` of `l` into a free slot: fresh fibers, a garbage-filled
// copy of shared memory and scratch, the first thread order.
void admit_block(Launch &l, unsigned block)
{
    Runtime &r = rt();
    Slot *s = nullptr;
    for (auto &p : r.slots)
        if (!p->live) {
            s = p.get();
            break;
        }
    if (!s) {
        r.slots.push_back(std::make_unique<Slot>());
        s = r.slots.back().get();
    }
    s->live = true;
    s->released = false;
    s->launch = &l;
    s->block = block;
    s->threads = l.threads;
    s->pattern = (r.blocks_run & 1u) ? 0x7f : 0xff;
    ++r.blocks_run;
    s->shared.assign(section_bytes(l.sec), s->pattern);
    for (auto &kv : s->scratch)
        std::fill(kv.second.begin(), kv.second.end(), s->pattern);
    while (s->fibers.size() < l.threads)
        s->fibers.emplace_back();
    s->states.assign(l.threads, State::idle);
    for (unsigned t = 0; t < l.threads; ++t) {
        Fiber &f = s->fibers[t];
        f.slot = s;
        f.tid = t;
        start_fiber(f);
    }
    s->order = make_order(l.threads, r.sched.threads);
    s->pos = 0;
    s->advance = false;
    r.live.push_back(s);
}

// The launch of `st` whose blocks may enter the window now, or null: the
// stream's first unfinished launch while it has blocks left, else a
// dependent launch after it once every block of the launch before it has
// entered and has released it or finished (its block order drawn then).
Launch *admissible(Stream &st)
{
    for (std::size_t k = st.current; k < st.launches.size(); ++k) {
        Launch *l = st.launches[k];
        if (l->admitted == l->grid.x)
            continue;
        if (k == st.current)
            return l;
        const Launch &p = *st.launches[k - 1];
        if (!l->dependent || p.admitted < p.grid.x || p.released < p.grid.x)
            return nullptr;
        if (l->order.empty())
            begin_launch(*l);
        return l;
    }
    return nullptr;
}

// Fill the window: the next block of a stream that has one ready (a seeded
// choice when several streams have).
void admit(std::vector<Stream> &streams)
{
    Runtime &r = rt();
    const unsigned window =
        std::min(std::max(r.sched.resident_blocks, 1u), kMaxResidentBlocks);
    std::vector<Launch *> ready;
    while (r.live.size() < window) {
        ready.clear();
        for (Stream &st : streams)
            if (Launch *l = admissible(st))
                ready.push_back(l);
        if (ready.empty())
            return;
        Launch &l = *ready[ready.size() == 1 ? 0 : below(ready.size())];
        if (!prior_done(l))
            ++r.early;
        admit_block(l, l.order[l.admitted++]);
    }
}

void retire(Slot &s)
{
    Runtime &r = rt();
    s.live = false;
    r.live.erase(std::find(r.live.begin(), r.live.end(), &s));
    if (r.active == &s)
        r.active = nullptr;
    drop_sections(s);
    Launch &l = *s.launch;
    if (!s.released)
        ++l.released;
    if (++l.retired < l.grid.x)
        return;
    Stream &st = *l.stream;
    while (st.current < st.launches.size() &&
           st.launches[st.current]->retired == st.launches[st.current]->grid.x)
        ++st.current;
    Launch *n = stream_launch(st);
    if (n && n->order.empty())
        begin_launch(*n);
}

// Run `f` from the launching thread until some fiber comes back home.
void enter(Fiber &f)
{
    Runtime &r = rt();
    activate(f);
    r.from_home = true;
    void *fake = nullptr;
    annotate_start(&fake, f.stack, kStackBytes);
    switch_context(r.home, f.ctx);
    annotate_finish(fake, nullptr, nullptr);
    r.current = nullptr;
    g_thread_idx = uint3{0, 0, 0};
}

// Run every launch of every stream; returns the first error.
int run_streams(std::vector<Stream> &streams)
{
    Runtime &r = rt();
    r.streams = &streams;
    for (Stream &st : streams) {
        for (std::size_t k = 0; k < st.launches.size(); ++k) {
            st.launches[k]->stream = &st;
            st.launches[k]->index = k;
        }
        if (Launch *l = stream_launch(st))
            begin_launch(*l);
    }
    for (;;) {
        admit(streams);
        if (r.live.empty() || r.failed)
            break;
        Slot *ps = r.live[r.live.size() == 1 ? 0 : below(r.live.size())];
        const int next = pick_any(ps);
        Slot &s = *ps;
        if (next == kPickFailed)
            break;
        if (next == kPickDone) {
            r.finished = nullptr;
            retire(s);
            continue;
        }
        enter(s.fibers[static_cast<std::size_t>(next)]);
        if (r.failed)
            break;
        if (r.finished) {
            Slot *done = r.finished;
            r.finished = nullptr;
            retire(*done);
        }
    }
    // after an error the fibers of the resident blocks are abandoned
    for (auto &p : r.slots) {
        p->live = false;
        std::fill(p->states.begin(), p->states.end(), State::idle);
    }
    r.live.clear();
    r.active = nullptr;
    r.owners.clear();
    r.finished = nullptr;
    r.current = nullptr;
    r.streams = nullptr;
    return r.status;
}

bool shape_ok(dim3 grid, dim3 block)
{
    const unsigned threads = block.x * block.y * block.z;
    if (grid.x == 0 || grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1 ||
        threads == 0 || threads > kMaxThreads) {
        record_error(kErrConfiguration,
                     "launch shape grid (%u,%u,%u) block (%u,%u,%u) not supported", grid.x,
                     grid.y, grid.z, block.x, block.y, block.z);
        return false;
    }
    return true;
}

void no_launch_from_kernel(const char *what)
{
    if (rt().current) {
        std::fprintf(stderr, "simt_emu: %s inside a kernel\n", what);
        std::abort();
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
unsigned last_grid() { return rt().last_grid; }
void reset_launch_count()
{
    rt().launches = 0;
    rt().early = 0;
}
unsigned early_blocks() { return rt().early; }
std::size_t fiber_stacks() { return rt().stacks; }

void fail(int status, const char *fmt, ...)
{
    Runtime &r = rt();
    va_list ap;
    va_start(ap, fmt);
    record_error(status, fmt, ap);
    va_end(ap);
    if (r.current) {
        // abandon this fiber: the launch stops, nothing of it resumes
        r.current->slot->states[r.current->tid] = State::aborted;
        go_home();
    }
}

int launch(dim3 grid, dim3 block, void (*body)(void *), void *ctx, Section sec)
{
    Runtime &r = rt();
    no_launch_from_kernel("a kernel launch");
    ++r.launches;
    r.last_grid = grid.x * grid.y * grid.z;
    r.status = kOk;
    r.failed = false;
    if (!shape_ok(grid, block))
        return r.status;
    Launch l;
    l.grid = grid;
    l.block = block;
    l.threads = block.x;
    l.body = body;
    l.ctx = ctx;
    l.sec = sec;
    std::vector<Stream> streams(1);
    streams[0].launches.push_back(&l);
    return run_streams(streams);
}

bool recording() { return rt().recording; }

static Interceptor g_interceptor = nullptr;
void set_interceptor(Interceptor fn) { g_interceptor = fn; }
Interceptor interceptor() { return g_interceptor; }
int run_intercepted(const Intercepted *l) { return launch(l->grid, l->block, l->body, l->ctx, l->sec); }
void free_intercepted(Intercepted *l)
{
    if (l->ctx)
        l->destroy(l->ctx);
    delete l;
}

int record_launch(dim3 grid, dim3 block, void (*body)(void *), void *ctx,
                  void (*destroy)(void *), Section sec, bool dependent)
{
    Runtime &r = rt();
    ++r.launches;
    r.last_grid = grid.x * grid.y * grid.z;
    r.status = kOk;
    r.failed = false;
    auto l = std::make_unique<Launch>();
    l->body = body;
    l->ctx = ctx;
    l->sec = sec;
    l->destroy = destroy;
    if (!shape_ok(grid, block)) {
        destroy(ctx);
        l->ctx = nullptr;
        if (r.recording_status == kOk)
            r.recording_status = r.status;
        return r.status;
    }
    l->grid = grid;
    l->block = block;
    l->threads = block.x;
    l->dependent = dependent;
    r.recorded[r.recording_stream].push_back(std::move(l));
    return kOk;
}

int launch_concurrent(const std::vector<std::function<void()>> &streams)
{
    Runtime &r = rt();
    no_launch_from_kernel("launch_concurrent");
    if (r.recording) {
        std::fprintf(stderr, "simt_emu: launch_concurrent inside launch_concurrent\n");
        std::abort();
    }
    // Frees the recorded launches and ends recording however this returns.
    struct Recorded {
        Runtime &r;
        ~Recorded()
        {
            r.recording = false;
            for (auto &st : r.recorded)
                for (auto &l : st)
                    if (l->ctx)
                        l->destroy(l->ctx);
            r.recorded.clear();
        }
    } guard{r};
    r.recorded.clear();
    r.recorded.resize(streams.size());
    r.recording = true;
    r.recording_status = kOk;
    for (std::size_t i = 0; i < streams.size(); ++i) {
        r.recording_stream = i;
        streams[i]();
    }
    r.recording = false;
    const int first = r.recording_status;
    std::vector<Stream> run(streams.size());
    for (std::size_t i = 0; i < streams.size(); ++i)
        for (auto &l : r.recorded[i])
            run[i].launches.push_back(l.get());
    r.status = kOk;
    r.failed = false;
    const int st = run_streams(run);
    r.status = first != kOk ? first : st;
    return r.status;
}

// Whether file:line is the barrier site that GCLIP_EMU_DROP_BARRIER names
// (simt_emu.h). A value without a colon and a line number names no site.
static bool barrier_dropped(const char *file, int line)
{
    struct Site {
        std::string base;
        int line = 0;
    };
    static const Site site = [] {
        Site s;
        const char *v = std::getenv("GCLIP_EMU_DROP_BARRIER");
        const char *colon = v ? std::strrchr(v, ':') : nullptr;
        if (colon) {
            s.base.assign(v, colon);
            s.line = std::atoi(colon + 1);
        }
        return s;
    }();
    if (site.line <= 0 || line != site.line)
        return false;
    const char *slash = std::strrchr(file, '/');
    return site.base == (slash ? slash + 1 : file);
}

void syncthreads(const char *file, int line)
{
    Runtime &r = rt();
    if (!r.current) {
        std::fprintf(stderr, "simt_emu: __syncthreads() outside a kernel at %s:%d\n", file, line);
        std::abort();
    }
    if (barrier_dropped(file, line))
        return;
    Fiber &f = *r.current;
    f.slot->states[f.tid] = State::waiting;
    f.site_file = file;
    f.site_line = line;
    f.slot->advance = true;
    Slot *other = maybe_other_block();
    reschedule(other ? *other : *f.slot, false);
}

void syncwarp(const char *file, int line, unsigned mask)
{
    Runtime &r = rt();
    if (!r.current) {
        std::fprintf(stderr, "simt_emu: __syncwarp() outside a kernel at %s:%d\n", file, line);
        std::abort();
    }
    if (barrier_dropped(file, line))
        return;
    Fiber &f = *r.current;
    Slot &own = *f.slot;
    if (mask != 0xffffffffu) {
        fail(kErrConfiguration, "__syncwarp(0x%08x) at %s:%d: only the full mask is modelled", mask,
             file, line);
    }
    own.states[f.tid] = State::warp_waiting;
    f.site_file = file;
    f.site_line = line;
    own.advance = true;
    if (!release_warp(own, f.tid / 32)) {
        own.states[f.tid] = State::aborted; // the launch stops (the error is recorded)
        go_home();
    }
    if (own.states[f.tid] == State::runnable && below(2) == 0) {
        // The warp this lane completed goes on at once: a new pass starts,
        // in which it may run ahead of lanes of other warps that have not
        // reached their next switch point; otherwise the pass goes on and
        // it runs after them.
        own.order = make_order(own.threads, r.sched.threads);
        own.pos = 0;
        own.advance = false;
    }
    Slot *other = maybe_other_block();
    reschedule(other ? *other : own, false);
}

void wait_prior_grids()
{
    Runtime &r = rt();
    if (!r.current)
        return;
    Fiber &f = *r.current;
    Slot &own = *f.slot;
    if (prior_done(*own.launch)) {
        yield_point();
        return;
    }
    // out of the turns until the earlier launches finish (pick_in_block)
    own.states[f.tid] = State::grid_wait;
    own.advance = true;
    Slot *other = maybe_other_block();
    reschedule(other ? *other : own, false);
}

void release_dependents()
{
    Runtime &r = rt();
    if (!r.current)
        return;
    Slot &own = *r.current->slot;
    if (!own.released) {
        own.released = true;
        // the last block to release lets a dependent launch's blocks in now,
        // as a GPU launches them, not when a block next leaves the window
        if (++own.launch->released == own.launch->grid.x && r.streams)
            admit(*r.streams);
    }
    yield_point();
}

void yield_point()
{
    Runtime &r = rt();
    if (!r.current)
        return;
    Slot *other = maybe_other_block();
    if (!other && !r.sched.yield_at_atomics)
        return;
    // stays runnable; hands its turn on within its block only if asked to
    Slot &own = *r.current->slot;
    own.advance = r.sched.yield_at_atomics;
    reschedule(other ? *other : own, false);
}

void *block_scratch(const void *key, std::size_t bytes)
{
    Runtime &r = rt();
    Slot *s = r.current ? r.current->slot : nullptr;
    std::vector<unsigned char> &v = s ? s->scratch[key] : r.outside_scratch[key];
    if (v.size() != bytes) {
        // first use, in the middle of a block: garbage as after a refill
        v.assign(bytes, s ? s->pattern : 0xff);
    }
    return v.data();
}

} // namespace gclip_emu
