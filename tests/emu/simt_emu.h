// simt_emu.h - a SIMT emulator that runs the gclip CUDA kernels' own .cu
// sources on the CPU, compiled as C++17 with GCLIP_SIMT_EMULATION defined
// (kernels/gclip_cuda_compat.h includes this header in that mode).
//
// Model
//   Every CUDA thread is a fiber (ucontext) with its own stack. The blocks of
//   a launch run one after another on the calling OS thread; inside a block
//   the fibers run one at a time and switch at every __syncthreads() (and, if
//   the schedule asks, at atomics and fences). Thread order and block order
//   are forward, reverse or a seeded shuffle, so a result that depends on an
//   unsynchronized order shows up as a difference between schedules.
//
//   __syncthreads() is a barrier that checks the block is convergent: a thread
//   that exited while others wait, or threads waiting at different barrier
//   call sites, abort the launch with an error (GCLIP_LAUNCH_STATUS() != 0).
//
//   __shared__ variables are static storage placed in one linker section; it
//   is filled with a garbage pattern before every block, so a read of shared
//   memory that no thread of the block wrote gives NaN or a huge value. (GCC
//   ignores the section attribute on static locals of function templates:
//   such variables are shared but not refilled.)
//
//   uint4 is 16-byte aligned; builds with -fsanitize=alignment report a
//   vector access through a misaligned uint4 pointer.
#ifndef GCLIP_SIMT_EMU_H
#define GCLIP_SIMT_EMU_H

#include <cstddef>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- CUDA keywords -----------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __shared__ static __attribute__((section("gclip_emu_shared")))

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

struct Schedule {
    Order threads = Order::forward;
    Order blocks = Order::forward;
    uint64_t seed = 1;            // drives both shuffles
    bool yield_at_atomics = false; // also switch fibers at atomics and fences
};

// The schedule of the following launches (the shuffle generator restarts
// from `seed`, so a sequence of launches replays exactly).
void set_schedule(const Schedule &s);
const Schedule &schedule();
const char *order_name(Order o);

// Status codes of a launch (0 = success), returned by GCLIP_LAUNCH_STATUS().
enum : int {
    kOk = 0,
    kErrDivergence = 9001,   // __syncthreads not reached by every thread alike
    kErrConfiguration = 9002, // grid or block shape a GPU would reject
    kErrReduceShape = 9003    // gclip_emu_block_reduce<BLOCK> in a block of another size
};

// Status of the most recent launch.
int last_status();
// Message of the first error since clear_error() ("" if none).
const char *error_message();
void clear_error();
// Launches since the last reset_launch_count(); lets tests count the
// launches of one operation.
unsigned launch_count();
void reset_launch_count();

// Run `body(ctx)` as every thread of a grid x block launch; returns its status.
int launch(dim3 grid, dim3 block, void (*body)(void *), void *ctx);

template <class F>
void invoke_body(void *f)
{
    (*static_cast<F *>(f))();
}

template <class F>
int launch_fn(dim3 grid, dim3 block, F f)
{
    return launch(grid, block, &invoke_body<F>, &f);
}

// Barrier of the current block at call site file:line.
void syncthreads(const char *file, int line);
// A point where the schedule may switch fibers (atomics, fences).
void yield_point();
// Records an error and makes the current launch fail.
void fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Per-block scratch of `bytes` for one emulator-internal shared object,
// refilled with the garbage pattern before every block.
void *block_scratch(const void *key, std::size_t bytes);

} // namespace gclip_emu

#define __syncthreads() ::gclip_emu::syncthreads(__FILE__, __LINE__)

inline void __threadfence()
{
    ::gclip_emu::yield_point();
}

// The switch comes after the update, so other threads run between an atomic
// and the code that acts on its result.
inline unsigned atomicAdd(unsigned *address, unsigned val)
{
    unsigned old = *address;
    *address = old + val;
    ::gclip_emu::yield_point();
    return old;
}

inline unsigned atomicExch(unsigned *address, unsigned val)
{
    unsigned old = *address;
    *address = val;
    ::gclip_emu::yield_point();
    return old;
}

// ---- block reduction ---------------------------------------------------------

// Stand-in for cub::BlockReduce: each thread publishes its value, a barrier,
// then thread 0 folds the values in thread-index order with `op`. As with CUB
// the result is valid in thread 0 only (the others get NaN here, so a kernel
// that uses it elsewhere is caught), and the storage is reused by the next
// call with the same BLOCK and Op, which therefore needs a barrier between.
template <int BLOCK, class Op>
double gclip_emu_block_reduce(double v, Op op)
{
    static char key; // one storage per instantiation, as a __shared__ TempStorage
    if (blockDim.x != static_cast<unsigned>(BLOCK))
        ::gclip_emu::fail(::gclip_emu::kErrReduceShape,
                          "gclip_emu_block_reduce<%d> called in a block of %u threads", BLOCK,
                          blockDim.x);
    double *slots = static_cast<double *>(::gclip_emu::block_scratch(&key, sizeof(double) * BLOCK));
    slots[threadIdx.x] = v;
    ::gclip_emu::syncthreads("gclip_emu_block_reduce", BLOCK);
    if (threadIdx.x != 0)
        return std::numeric_limits<double>::quiet_NaN();
    double acc = slots[0];
    for (int i = 1; i < BLOCK; ++i)
        acc = op(acc, slots[i]);
    return acc;
}

// ---- launch macros -----------------------------------------------------------------

namespace gclip_emu {

// The arguments are evaluated once and converted to the kernel's parameter
// types, as a CUDA launch copies them; each thread then gets its own copy.
template <class... P, class... A>
int launch_kernel(dim3 grid, dim3 block, void (*kernel)(P...), A &&...args)
{
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    return launch_fn(grid, block, [kernel, &params]() { std::apply(kernel, params); });
}

} // namespace gclip_emu

// Runs the whole grid before it returns; `stream` is evaluated and ignored.
#define GCLIP_LAUNCH(kernel, grid, block, stream, ...)                                    \
    ((void)(stream), ::gclip_emu::launch_kernel(dim3(grid), dim3(block), kernel, ##__VA_ARGS__))
#define GCLIP_LAUNCH_STATUS() (::gclip_emu::last_status())

#endif // GCLIP_SIMT_EMU_H
