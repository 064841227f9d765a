// simt_emu.h - a SIMT emulator that runs the gclip CUDA kernels' own .cu
// sources on the CPU, compiled as C++17 with GCLIP_SIMT_EMULATION defined
// (kernels/gclip_cuda_compat.h includes this header in that mode).
//
// Model
//   Every CUDA thread is a fiber with its own stack (switched by a few
//   instructions on x86-64, by ucontext elsewhere), and
//   everything runs on the calling OS thread, one fiber at a time. A launch
//   keeps a window of Schedule::resident_blocks blocks resident, as the SMs
//   of a GPU hold several blocks at once: every fiber of a resident block
//   exists, and the fibers of different resident blocks interleave. Blocks
//   enter the window in the schedule's block order; when a resident block
//   finishes, the next block in that order takes its place and a seeded
//   choice among the resident blocks decides which one runs next. With
//   resident_blocks = 1 the blocks run one after another.
//
//   Inside a block the fibers take turns in passes over the thread order
//   (forward, reverse or a seeded shuffle, drawn anew after every barrier).
//   A fiber runs until it reaches a switch point:
//     - __syncthreads(): the fiber waits; the next fiber of the pass runs.
//     - an atomic or __threadfence(): with Schedule::yield_at_atomics the
//       next fiber of the pass runs, otherwise the fiber goes on.
//     - at each of these points, with probability block_switch_rate (seeded),
//       a different resident block, chosen at random, continues where it
//       stopped instead; the interrupted block later resumes at the same
//       fiber (or at the next one, if the point handed the turn on).
//   So a last-block-done ticket is drawn while other blocks are between
//   their own atomic and the code that acts on it, and a result that depends
//   on an unsynchronized order of threads or blocks, at the granularity of
//   these switch points, shows up as a difference between schedules. The
//   atomic's update happens before the switch. Memory is sequentially
//   consistent: every store is seen at once by every thread, so a missing
//   fence, a plain read-modify-write in place of an atomic or a load through
//   L1 in place of an L2-only one gives the right bits here. Those are
//   checked in the PTX (kernels/check_kernels.sh, "memory ordering"). A
//   block that waits for another block to make progress (a spin loop across
//   blocks) is not supported, as CUDA does not promise co-residency either.
//
//   Between barriers the 32 threads of a warp are not in step (as on sm_70
//   and later, where each thread has its own program counter): __syncwarp()
//   is a switch point where a thread waits for the other lanes of its warp
//   (those that have not exited) to reach the same __syncwarp call site.
//   The lane that completes a warp's barrier either lets the pass go on,
//   so that the released warp runs after the block's other runnable
//   threads, or (a seeded coin) starts a new pass, in which the released
//   warp may run ahead of the others.
//
//   __syncthreads() is a barrier that checks the block is convergent: a thread
//   that exited while others wait, or threads waiting at different barrier
//   call sites, abort the launch with an error (the launch's status != 0);
//   the other resident blocks are abandoned with it.
//
//   __shared__ variables are static storage placed in a linker section, one
//   per translation unit (GCLIP_EMU_SECTION), of which each resident block
//   of a kernel defined there has its own copy: the section holds the copy
//   of the block that ran last among those, and is swapped (saved and
//   reloaded) when a fiber of another of those blocks runs. A block's copy
//   is filled with
//   a garbage pattern when the block enters the window (all-ones and 0x7f
//   bytes on alternate blocks), so a read of shared memory that no thread of
//   the block wrote gives NaN or a huge value. block_scratch() storage is
//   per resident block and refilled alike. (GCC ignores the section
//   attribute on static locals of function templates: such variables are
//   one object for all blocks, neither swapped nor refilled.)
//
//   Memory stays bounded whatever the grid: the fibers (and their 128 KiB
//   stacks) belong to resident-block slots and are reused by the blocks
//   that occupy a slot in turn, so at most resident_blocks x blockDim stacks
//   exist (resident_blocks is capped at kMaxResidentBlocks).
//
//   launch_concurrent() runs the launches of several streams with their
//   blocks interleaved in one window, for code that must survive unordered
//   streams (see there).
//
//   Programmatic dependent launch (GCLIP_LAUNCH_DEPENDENT) is modelled in
//   the launches recorded by launch_concurrent: a dependent launch's blocks
//   may enter the window as soon as every block of the launch before it in
//   its stream has entered and has called release_dependents() or
//   finished, so they run alongside that launch's last blocks. A thread of
//   any launch that calls wait_prior_grids() before every earlier launch of
//   its stream has finished waits (it stays out of the turns) until they
//   have; a block whose remaining threads all wait so cannot run, and if
//   no resident block can, the launch fails (kErrDeadlock). A kernel that
//   reads what the launch before it writes without waiting reads it early,
//   as on a GPU. Launches run at once by launch() have nothing before them.
//
//   uint4 is 16-byte aligned; builds with -fsanitize=alignment report a
//   vector access through a misaligned uint4 pointer.
#ifndef GCLIP_SIMT_EMU_H
#define GCLIP_SIMT_EMU_H

#include "emu_intercept.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA keywords -----------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__
// Each translation unit puts its __shared__ variables in its own section,
// GCLIP_EMU_SECTION (the build defines one per kernel source; a C identifier,
// so the linker defines its bounds), and its launches name that section:
// the emulator then copies only the launched kernel's shared memory when it
// switches blocks.
#ifndef GCLIP_EMU_SECTION
#define GCLIP_EMU_SECTION gclip_emu_shared
#endif
#define GCLIP_EMU_STR2(x) #x
#define GCLIP_EMU_STR(x) GCLIP_EMU_STR2(x)
#define GCLIP_EMU_CAT2(a, b) a##b
#define GCLIP_EMU_CAT(a, b) GCLIP_EMU_CAT2(a, b)
#define __shared__ static __attribute__((section(GCLIP_EMU_STR(GCLIP_EMU_SECTION))))
// Weak: a translation unit with no __shared__ variable has no section.
extern "C" char GCLIP_EMU_CAT(__start_, GCLIP_EMU_SECTION)[] __attribute__((weak));
extern "C" char GCLIP_EMU_CAT(__stop_, GCLIP_EMU_SECTION)[] __attribute__((weak));

// ---- built-in types and variables -----------------------------------------------

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w)
{
    return uint4{x, y, z, w};
}

// The fold window of the emulated norm kernel (kernels/norm_finalize.cuh):
// the chunks a lane pass copies to shared memory at once. 0, the default, is
// the sm_86 window; tests set 1, 2, ... so that small plans cross windows.
extern uint32_t gclip_emu_fold_window;

namespace gclip_emu {

// The running fiber's coordinates. Written only by the emulator when it
// switches fibers; the switch is an opaque call, so kernels re-read them.
extern uint3 g_thread_idx;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

} // namespace gclip_emu

#define threadIdx (static_cast<const uint3 &>(::gclip_emu::g_thread_idx))
#define blockIdx (static_cast<const uint3 &>(::gclip_emu::g_block_idx))
#define blockDim (static_cast<const dim3 &>(::gclip_emu::g_block_dim))
#define gridDim (static_cast<const dim3 &>(::gclip_emu::g_grid_dim))

// ---- schedules, errors, launches ------------------------------------------------

namespace gclip_emu {

enum class Order { forward, reverse, shuffled };

// Most blocks resident at once (Schedule::resident_blocks is clamped to it):
// bounds the fibers and stacks to 16 x blockDim.
constexpr unsigned kMaxResidentBlocks = 16;

struct Schedule {
    Order threads = Order::forward;
    Order blocks = Order::forward;
    uint64_t seed = 1;             // drives the shuffles and every random switch
    bool yield_at_atomics = false; // atomics and fences hand the turn to the next thread
    unsigned resident_blocks = 4;  // blocks in flight at once; 1 (or 0) = one after another
    // Probability, at each atomic, fence and barrier arrival, of switching to
    // another resident block (0 = only when a block finishes).
    double block_switch_rate = 0.25;
};

// The schedule of the following launches (the random generator restarts
// from `seed`, so a sequence of launches replays exactly).
void set_schedule(const Schedule &s);
const Schedule &schedule();
const char *order_name(Order o);

// Status codes of a launch (0 = success), returned by GCLIP_LAUNCH.
enum : int {
    kOk = 0,
    kErrDivergence = 9001,   // __syncthreads or __syncwarp not reached by every thread alike
    kErrConfiguration = 9002, // grid or block shape a GPU would reject
    kErrDeadlock = 9003,      // every resident block waits for an earlier grid
};

// Status of the most recent launch (or launch_concurrent).
int last_status();
// Message of the first error since clear_error() ("" if none).
const char *error_message();
void clear_error();
// Launches since the last reset_launch_count(); lets tests count the
// launches of one operation. A launch recorded by launch_concurrent counts
// when it is recorded.
unsigned launch_count();
void reset_launch_count();
// Blocks of the most recent launch (or recorded launch).
unsigned last_grid();
// Blocks of dependent launches that entered the window while an earlier
// launch of their stream was still running, since the last
// reset_launch_count().
unsigned early_blocks();
// Fiber stacks mapped so far (they are reused, never unmapped): at most
// kMaxResidentBlocks x the largest block launched.
std::size_t fiber_stacks();

// The __shared__ section of the kernel a launch runs: [begin, end), or two
// nulls when its translation unit has none.
struct Section {
    char *begin = nullptr;
    char *end = nullptr;
};

// Run `body(ctx)` as every thread of a grid x block launch; returns its status.
// Runs at once, even while launch_concurrent is recording.
int launch(dim3 grid, dim3 block, void (*body)(void *), void *ctx, Section sec);

// Several streams at once, as CUDA streams with no ordering between them.
// Each function in `streams` is the host code of one stream: it runs first,
// in turn, and the launches it makes through GCLIP_LAUNCH (or launch_fn) are
// recorded, not run; there GCLIP_LAUNCH returns 0, or kErrConfiguration for
// a shape the emulator rejects, which is not recorded. Then the recorded
// launches run under the current schedule, in one window of resident
// blocks: those of one stream in the order they were made (a launch's blocks
// enter the window only after every block of the stream's previous launch
// finished), those of different streams interleaved block by block. Each
// launch's blocks enter in the schedule's block order; when several streams
// have a block ready, a seeded choice picks the stream. Returns the first
// error (recording errors first); an error in any block stops all the
// streams. The host code must not depend on what its launches compute, since
// they run only after it returns; nesting launch_concurrent, or calling it
// from a kernel, aborts.
//
//     int st = gclip_emu::launch_concurrent({[&] { gclip_launch_norm(&t, &np, nullptr); },
//                                            [&] { gclip_launch_norm(&t, &np, nullptr); }});
int launch_concurrent(const std::vector<std::function<void()>> &streams);

// Whether launch_concurrent is recording launches.
bool recording();
// Records a launch for launch_concurrent: `ctx` is owned by the emulator and
// freed with `destroy` after the run. Returns 0 or kErrConfiguration.
// With `dependent`, a programmatic dependent launch (see the model above).
int record_launch(dim3 grid, dim3 block, void (*body)(void *), void *ctx,
                  void (*destroy)(void *), Section sec, bool dependent = false);

template <class F>
void invoke_body(void *f)
{
    (*static_cast<F *>(f))();
}

template <class F>
void destroy_body(void *f)
{
    delete static_cast<F *>(f);
}

// A launch handed to the interceptor (emu_intercept.h).
struct Intercepted {
    dim3 grid, block;
    void (*body)(void *);
    void *ctx;
    void (*destroy)(void *);
    Section sec;
    bool dependent;
};

template <class F>
int launch_fn(dim3 grid, dim3 block, F f, Section sec, bool dependent = false,
              const void *stream = nullptr)
{
    if (recording())
        return record_launch(grid, block, &invoke_body<F>, new F(std::move(f)), &destroy_body<F>,
                             sec, dependent);
    if (Interceptor ic = interceptor())
        return ic(new Intercepted{grid, block, &invoke_body<F>, new F(std::move(f)),
                                  &destroy_body<F>, sec, dependent},
                  stream);
    return launch(grid, block, &invoke_body<F>, &f, sec);
}

// Barrier of the current block at call site file:line.
//
// Fault injection (tests/emu/plant_bugs.sh): with GCLIP_EMU_DROP_BARRIER set
// to BASENAME:LINE in the environment, the __syncthreads() or __syncwarp()
// call at that site (BASENAME: the source file's name without its
// directory) does nothing, as if its line were deleted from the source: no
// wait and no switch point. So a missing barrier can be tried without
// rebuilding the kernels.
void syncthreads(const char *file, int line);
// Barrier of the calling thread's warp (threads 32 w .. 32 w + 31 of its
// block) at call site file:line: the thread waits until every lane of its
// warp that has not exited waits at the same call site. Only the full mask
// is modelled (another fails the launch, kErrConfiguration). A lane that
// waits here while a lane of its warp waits at __syncthreads, or lanes at
// different __syncwarp call sites, fail the launch (kErrDivergence).
void syncwarp(const char *file, int line, unsigned mask = 0xffffffffu);
// griddepcontrol.wait: the calling thread waits until every earlier launch
// of its stream has finished (a switch point either way).
void wait_prior_grids();
// griddepcontrol.launch_dependents: the calling thread's block lets the
// stream's next launch, if dependent, start (once every block has).
void release_dependents();
// A point where the schedule may switch fibers or blocks (atomics, fences).
void yield_point();
// Records an error and makes the current launch fail.
void fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Scratch of `bytes` for one emulator-internal shared object, one per
// resident block, refilled with the garbage pattern for every new block.
void *block_scratch(const void *key, std::size_t bytes);

// Read-modify-write of one word, then the switch point: the switch comes
// after the update, so other threads and blocks run between an atomic and
// the code that acts on its result.
template <class T, class Op>
inline T atomic_rmw(T *address, Op op)
{
    const T old = *address;
    *address = op(old);
    yield_point();
    return old;
}

} // namespace gclip_emu

#define __syncthreads() ::gclip_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::gclip_emu::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)

inline void __threadfence()
{
    ::gclip_emu::yield_point();
}

inline unsigned atomicAdd(unsigned *address, unsigned val)
{
    return ::gclip_emu::atomic_rmw(address, [val](unsigned o) { return o + val; });
}

inline int atomicAdd(int *address, int val)
{
    // wraps like the GPU's two's-complement add, without signed overflow
    return ::gclip_emu::atomic_rmw(address, [val](int o) {
        return static_cast<int>(static_cast<unsigned>(o) + static_cast<unsigned>(val));
    });
}

inline unsigned long long atomicAdd(unsigned long long *address, unsigned long long val)
{
    return ::gclip_emu::atomic_rmw(address, [val](unsigned long long o) { return o + val; });
}

// ((old >= val) ? 0 : old + 1): counts modulo val + 1.
inline unsigned atomicInc(unsigned *address, unsigned val)
{
    return ::gclip_emu::atomic_rmw(address, [val](unsigned o) { return o >= val ? 0u : o + 1u; });
}

inline unsigned atomicExch(unsigned *address, unsigned val)
{
    return ::gclip_emu::atomic_rmw(address, [val](unsigned) { return val; });
}

inline int atomicExch(int *address, int val)
{
    return ::gclip_emu::atomic_rmw(address, [val](int) { return val; });
}

inline unsigned long long atomicExch(unsigned long long *address, unsigned long long val)
{
    return ::gclip_emu::atomic_rmw(address, [val](unsigned long long) { return val; });
}

// Stores val if the word equals compare; returns the old word either way.
inline unsigned atomicCAS(unsigned *address, unsigned compare, unsigned val)
{
    return ::gclip_emu::atomic_rmw(address,
                                   [compare, val](unsigned o) { return o == compare ? val : o; });
}

inline int atomicCAS(int *address, int compare, int val)
{
    return ::gclip_emu::atomic_rmw(address,
                                   [compare, val](int o) { return o == compare ? val : o; });
}

inline unsigned long long atomicCAS(unsigned long long *address, unsigned long long compare,
                                    unsigned long long val)
{
    return ::gclip_emu::atomic_rmw(
        address, [compare, val](unsigned long long o) { return o == compare ? val : o; });
}

// ---- launch macros -----------------------------------------------------------------

namespace gclip_emu {

// The arguments are evaluated once and converted to the kernel's parameter
// types, as a CUDA launch copies them; each thread then gets its own copy.
template <class... P, class... A>
int launch_kernel(Section sec, bool dependent, const void *stream, dim3 grid, dim3 block,
                  void (*kernel)(P...), A &&...args)
{
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    // the closure owns the parameters: a recorded launch runs after this returns
    return launch_fn(
        grid, block, [kernel, params = std::move(params)]() { std::apply(kernel, params); }, sec,
        dependent, stream);
}

} // namespace gclip_emu

// Runs the whole grid before it returns (or records it, inside
// launch_concurrent, or hands it to the interceptor) and evaluates to its
// status; `stream` is evaluated and only the interceptor sees it.
// GCLIP_LAUNCH_DEPENDENT: the same as a programmatic dependent launch when
// `dependent` is nonzero.
#define GCLIP_LAUNCH_DEPENDENT(kernel, dependent, grid, block, stream, ...)               \
    (::gclip_emu::launch_kernel(::gclip_emu::Section{GCLIP_EMU_CAT(__start_, GCLIP_EMU_SECTION), \
                                                     GCLIP_EMU_CAT(__stop_, GCLIP_EMU_SECTION)}, \
                                (dependent) != 0, (const void *)(stream), dim3(grid),     \
                                dim3(block), kernel, ##__VA_ARGS__))
#define GCLIP_LAUNCH(kernel, grid, block, stream, ...) \
    GCLIP_LAUNCH_DEPENDENT(kernel, 0, grid, block, stream, ##__VA_ARGS__)
#define GCLIP_LAUNCH_STATUS() (::gclip_emu::last_status())

#endif // GCLIP_SIMT_EMU_H
