// gpu_fixture.hpp - the CUDA backend checked against the CPU path.
//
// A Paired object holds one set of seeded tensors three times: the pristine
// values, a host copy driven by a CPU plan and a device copy driven by a CUDA
// plan. Both copies use the same byte layout, so every tensor starts at the
// same address modulo 16 on both sides (unaligned starts exercise the scalar
// head and tail of the kernels' chunk walk). Plan shapes and the per-op
// tables of cases are those of every engine (tests/common/specs.hpp).
//
// Tolerances: both paths accumulate the norm terms in double and round once
// to float, but in different orders (the CPU folds 8 lanes per chunk, the GPU
// 256 threads and a block tree), so their double accumulators agree to about
// 1e-15 and the reported float norms to at most 1 ulp; a 2-ulp bound leaves
// room for exp2/log2 of p-norms differing in the last double bit. The
// coefficient max_norm/(N+eps) and scale then differ by at most a few ulps,
// and each scaled element by a few f32 ulps (f64: the same relative bound,
// the factor being a float), or one unit of f16/bf16 after rounding. Value
// clipping involves no norm and must match bit for bit. The finalize of the
// same partials runs the same arithmetic on both (no reduction order), so it
// matches bit for bit where no exp2/log2 is involved (p = 1, 2, Inf).
#ifndef GCLIP_GPU_FIXTURE_HPP
#define GCLIP_GPU_FIXTURE_HPP

#include "gclip.h"
#include "oracle.hpp"
#include "plan_util.hpp"
#include "specs.hpp"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace gpu {

#define GPU_ASSERT_CUDA(call)                                                       \
    do {                                                                            \
        const cudaError_t e_ = (call);                                              \
        ASSERT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorString(e_);      \
    } while (0)

#define GPU_EXPECT_CUDA(call)                                                       \
    do {                                                                            \
        const cudaError_t e_ = (call);                                              \
        EXPECT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorString(e_);      \
    } while (0)

#define GPU_ASSERT_OK(call)                                                         \
    do {                                                                            \
        const gclip_status s_ = (call);                                             \
        ASSERT_EQ(s_, GCLIP_STATUS_SUCCESS) << #call << ": " << gclip_last_error(); \
    } while (0)

// Every GPU test derives from this: without a device it skips, saying why.
class GpuTest : public ::testing::Test {
protected:
    void SetUp() override
    {
        if (gclip_cuda_device_count() == 0)
            GTEST_SKIP() << "no CUDA device: gclip_cuda_device_count() is 0, so the CUDA "
                            "backend is built but cannot run on this machine";
    }
};

using specs::Spec;

// Device memory owned for the scope of a test.
class DeviceBuffer {
public:
    explicit DeviceBuffer(std::size_t bytes);
    ~DeviceBuffer();
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;
    void *get() const { return ptr_; }
    template <class T>
    T *as() const { return static_cast<T *>(ptr_); }
    std::size_t bytes() const { return bytes_; }

private:
    void *ptr_ = nullptr;
    std::size_t bytes_ = 0;
};

// A non-blocking stream owned for the scope of a test.
class Stream {
public:
    Stream();
    ~Stream();
    Stream(const Stream &) = delete;
    Stream &operator=(const Stream &) = delete;
    cudaStream_t get() const { return s_; }

private:
    cudaStream_t s_ = nullptr;
};

// The byte layout every fixture uses for `specs`: each tensor starts
// `offset` elements past a 16-byte boundary. Fills `offsets` and returns the
// bytes of the whole layout.
std::size_t pack_layout(const std::vector<Spec> &specs, std::vector<std::size_t> &offsets);

// The tensors of `specs` laid out by pack_layout from `base`.
std::vector<gclip_tensor> tensors_in(const std::vector<Spec> &specs,
                                     const std::vector<std::size_t> &offsets, void *base);

// `bytes` of device memory at `dev`, copied to the host (legacy stream).
std::vector<unsigned char> download_bytes(const void *dev, std::size_t bytes);

// The name of an op for traces and test names (letters only).
const char *op_name(int32_t op);

// Launches of each op on the CUDA backend (gclip.h documents each count).
unsigned kernels_of(int32_t op);

// One operation with its arguments. GCLIP_OP_FINALIZE folds the plan's own
// partial; GCLIP_OP_CLIP_WITH_NORM uses the value `given_norm`.
struct OpArgs {
    int32_t op = GCLIP_OP_CLIP_NORM;
    gclip_norm_options options = GCLIP_NORM_OPTIONS_INIT;
    float clip_value = 1.0f;
    // GCLIP_OP_CLIP_VALUE through gclip_clip_grad_value_f64, with this bound
    bool value_f64 = false;
    double clip_value_f64 = 1.0;
    float given_norm = 0.0f;
};

// The steps of one call sequence: e.g. factor then apply.
using Steps = std::vector<OpArgs>;

// Whether op writes tensor_norms when asked (the ops that read the tensors).
bool writes_tensor_norms(int32_t op);

// Run `a` on `plan` with `tensor_norms` (memory of the plan's device, or
// NULL; ignored by the ops that write none).
gclip_status run_op(gclip_plan *plan, const OpArgs &a, float *tensor_norms, gclip_stream stream);

// The step sequences of an op as a table row runs it: the op alone, the
// factor then its apply, accumulate then finalize then apply.
Steps steps_for(int32_t op, const gclip_norm_options &o, float given_norm = 0.0f);

// Every op, in an order where each apply has a factor pending before it.
extern const int32_t kAllOps[9];

class Paired {
public:
    Paired(std::vector<Spec> specs, uint64_t seed, double scale = 1.0);

    std::size_t count() const { return specs_.size(); }
    const std::vector<Spec> &specs() const { return specs_; }
    gclip_plan *cpu() const { return cpu_plan_.get(); }
    gclip_plan *gpu() const { return gpu_plan_.get(); }
    void *device_base() const { return dev_.get(); }
    std::size_t bytes() const { return pristine_.size(); }
    // Start of tensor k in a buffer of this layout.
    std::size_t offset_of(std::size_t k) const { return offsets_[k]; }

    // Change element i of tensor k in the pristine data (then call reset).
    void set_element(std::size_t k, int64_t i, float v);
    // Both copies back to the pristine data.
    void reset();
    // The device copy back to the pristine data in `stream` order, with no
    // host synchronization (from a device copy of the pristine bytes).
    void reset_async(cudaStream_t stream);
    // The device copy, as bytes of this layout.
    std::vector<unsigned char> download() const;
    const unsigned char *host_bytes() const { return host_ + pad_; }
    const unsigned char *pristine_bytes() const { return pristine_.data(); }

    // The tensors of the CUDA plan (device pointers).
    std::vector<gclip_tensor> device_tensors() const;

    // The total norm of the pristine data by the CPU path (a plan of its own,
    // so that neither paired plan counts an operation).
    float total_norm(float norm_type, float inv_scale = 1.0f) const;

    // Run `steps` on both plans (the CUDA one on `stream`) and compare
    // results (op, flags, status and sequence exactly, norms within the
    // tolerances above), per-tensor norms and data. The CPU plan's result is
    // returned in `cpu_result` if given.
    void run_and_compare(const Steps &steps, gclip_result *cpu_result = nullptr,
                         gclip_stream stream = nullptr);
    void run_and_compare(const OpArgs &a, gclip_result *cpu_result = nullptr,
                         gclip_stream stream = nullptr)
    {
        run_and_compare(Steps{a}, cpu_result, stream);
    }

    // The device data against the host data: bitwise, or within tolerance.
    void expect_data_match(bool bitwise) const;

private:
    std::vector<Spec> specs_;
    std::vector<std::size_t> offsets_;
    std::vector<unsigned char> pristine_;
    std::vector<unsigned char> host_storage_;
    unsigned char *host_ = nullptr; // 16-byte aligned start in host_storage_
    std::size_t pad_ = 0;
    DeviceBuffer dev_, dev_pristine_;
    std::vector<unsigned char> probe_storage_;
    testutil::PlanPtr cpu_plan_, gpu_plan_, probe_plan_;

    std::vector<gclip_tensor> tensors_at(void *base) const;
    unsigned char *probe_bytes();
};

// `op` with arguments that clip on `pair`'s data: max_norm a quarter of its
// L2 norm, clip value 0.3, a given norm of twice max_norm.
OpArgs clipping(int32_t op, const Paired &pair);

// Capture the steps on `stream` into a graph (global mode: any call that is
// illegal during capture, in any thread, fails the capture).
cudaGraph_t capture(gclip_plan *plan, const Steps &steps, cudaStream_t stream);
inline cudaGraph_t capture(gclip_plan *plan, const OpArgs &a, cudaStream_t stream)
{
    return capture(plan, Steps{a}, stream);
}

// A captured graph and its executable, owned for the scope of a test.
class GraphExec {
public:
    // Takes `graph` (from capture) and instantiates it.
    explicit GraphExec(cudaGraph_t graph);
    ~GraphExec();
    GraphExec(const GraphExec &) = delete;
    GraphExec &operator=(const GraphExec &) = delete;
    bool ok() const { return exec_ != nullptr; }
    cudaError_t launch(cudaStream_t stream) const { return cudaGraphLaunch(exec_, stream); }

private:
    cudaGraph_t graph_ = nullptr;
    cudaGraphExec_t exec_ = nullptr;
};

// The plan's result slot read from device memory in stream order (a
// cudaMemcpy, which waits for the legacy default stream only).
gclip_device_result read_slot(gclip_plan *plan);

// Results of the two paths: op, flags and status exactly, norms within the
// tolerances above.
void expect_results_close(const gclip_result &gpu, const gclip_result &cpu);

// Norms of two paths within 2 ulps (NaN equal to NaN).
bool norm_close(float gpu, float cpu);

// A gclip_result with its sequence cleared, for bitwise comparisons of
// results of different operations.
gclip_result without_sequence(gclip_result r);

using specs::edge_specs;
using specs::random_specs;

// Whether this build of the suite runs on the emulated CUDA runtime
// (tests/emu builds it with GCLIP_GPU_SUITE_EMULATED=1).
#ifndef GCLIP_GPU_SUITE_EMULATED
#define GCLIP_GPU_SUITE_EMULATED 0
#endif
constexpr bool kEmulated = GCLIP_GPU_SUITE_EMULATED != 0;

// The tensors of a test whose point is a long run of steps, replays or
// streams, not the sizes of its tensors: random_specs(count, max_numel,
// seed) on a device. The emulated runtime runs every thread of a step in
// turn, so there a run has a twentieth as many tensors (at least 4) of at
// most a tenth the elements: the same steps, replays and streams as
// written, on less data. (Tensors of several chunks are left to the tests
// of table_specs below.)
inline std::vector<Spec> long_run_specs(std::size_t count, int64_t max_numel, uint64_t seed)
{
    if (!kEmulated)
        return random_specs(count, max_numel, seed);
    return random_specs(count / 20 < 4 ? 4 : count / 20, max_numel / 10, seed);
}

// The edge sizes of a test that runs every row of a table on them:
// edge_specs(dtype, mixed) on a device. On the emulated runtime, without
// the four tensors of a million elements, which hold three quarters of the
// elements; the tensors of three chunks and five elements still cross
// chunk ends at every start offset.
inline std::vector<Spec> table_specs(gclip_dtype dtype, bool mixed)
{
    std::vector<Spec> v = edge_specs(dtype, mixed);
    if (kEmulated)
        v.erase(std::remove_if(v.begin(), v.end(),
                               [](const Spec &s) { return s.numel > 3 * specs::kChunkElems + 5; }),
                v.end());
    return v;
}

} // namespace gpu

#endif // GCLIP_GPU_FIXTURE_HPP
