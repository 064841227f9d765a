// gpu_fixture.hpp - the CUDA backend checked against the CPU path.
//
// A Paired object holds one set of seeded tensors three times: the pristine
// values, a host copy driven by a CPU plan and a device copy driven by a CUDA
// plan. Both copies use the same byte layout, so every tensor starts at the
// same address modulo 16 on both sides (unaligned starts exercise the scalar
// head and tail of the kernels' chunk walk).
//
// Tolerances: both paths accumulate the norm terms in double and round once
// to float, but in different orders (the CPU folds 8 lanes per chunk, the GPU
// 256 threads and a block tree), so their double accumulators agree to about
// 1e-15 and the reported float norms to at most 1 ulp; a 2-ulp bound leaves
// room for exp2/log2 of p-norms differing in the last double bit. The
// coefficient max_norm/(N+eps) and scale then differ by at most a few ulps,
// and each scaled element by a few f32 ulps or one unit of f16/bf16 after
// rounding. Value clipping involves no norm and must match bit for bit.
#ifndef GCLIP_GPU_FIXTURE_HPP
#define GCLIP_GPU_FIXTURE_HPP

#include "gclip.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace gpu {

#define GPU_ASSERT_CUDA(call)                                                       \
    do {                                                                            \
        const cudaError_t e_ = (call);                                              \
        ASSERT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorString(e_);      \
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

struct Spec {
    gclip_dtype dtype;
    int64_t numel;
    int offset; // elements between a 16-byte boundary and the tensor start
};

// Device memory owned for the scope of a test.
class DeviceBuffer {
public:
    explicit DeviceBuffer(std::size_t bytes);
    ~DeviceBuffer();
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;
    void *get() const { return ptr_; }
    std::size_t bytes() const { return bytes_; }

private:
    void *ptr_ = nullptr;
    std::size_t bytes_ = 0;
};

enum class Op { total, global, per_tensor, value };
const char *op_name(Op op);

// One operation with its arguments.
struct OpArgs {
    Op op = Op::global;
    gclip_norm_options options = GCLIP_NORM_OPTIONS_INIT;
    float clip_value = 1.0f;
};

// Run `a` on `plan` with `tensor_norms` (memory of the plan's device, or NULL).
gclip_status run_op(gclip_plan *plan, const OpArgs &a, float *tensor_norms, gclip_stream stream);

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
    // The device copy, as bytes of this layout.
    std::vector<unsigned char> download() const;
    const unsigned char *host_bytes() const { return host_ + pad_; }
    const unsigned char *pristine_bytes() const { return pristine_.data(); }

    // The tensors of the CUDA plan (device pointers).
    std::vector<gclip_tensor> device_tensors() const;

    // Run `a` on both plans (the CUDA one on `stream`) and compare results,
    // per-tensor norms and data within the tolerances above. The CPU plan's
    // result is returned in `cpu_result` if given.
    void run_and_compare(const OpArgs &a, gclip_result *cpu_result = nullptr,
                         gclip_stream stream = nullptr);

    // The device data against the host data: bitwise, or within tolerance.
    void expect_data_match(bool bitwise) const;

private:
    std::vector<Spec> specs_;
    std::vector<std::size_t> offsets_;
    std::vector<unsigned char> pristine_;
    std::vector<unsigned char> host_storage_;
    unsigned char *host_ = nullptr; // 16-byte aligned start in host_storage_
    std::size_t pad_ = 0;
    DeviceBuffer dev_;
    testutil::PlanPtr cpu_plan_, gpu_plan_;

    static std::size_t layout(const std::vector<Spec> &specs, std::vector<std::size_t> &offsets);
    std::vector<gclip_tensor> tensors_at(void *base) const;
};

// Results of the two paths within the tolerances above.
void expect_results_close(const gclip_result &gpu, const gclip_result &cpu);

// Norms of two paths within 2 ulps (NaN equal to NaN).
bool norm_close(float gpu, float cpu);

// A mix of the sizes that stress the chunk walk (0, 1, 2, 3, 4, 5, 7, 8,
// around one chunk, several chunks) at odd starts, in `dtype`
// (GCLIP_F32/F16/BF16), or rotating through all three when `mixed`.
std::vector<Spec> edge_specs(gclip_dtype dtype, bool mixed);

// `count` tensors of random small sizes (0..max_numel) at random offsets,
// dtypes rotating, seeded.
std::vector<Spec> random_specs(std::size_t count, int64_t max_numel, uint64_t seed);

} // namespace gpu

#endif // GCLIP_GPU_FIXTURE_HPP
