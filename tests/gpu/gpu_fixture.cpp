// gpu_fixture.cpp - paired CPU/CUDA plans and their comparison.
#include "gpu_fixture.hpp"

#include <cmath>
#include <cstring>

namespace gpu {

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes)
{
    if (bytes && cudaMalloc(&ptr_, bytes) != cudaSuccess) {
        ptr_ = nullptr;
        ADD_FAILURE() << "cudaMalloc of " << bytes << " bytes failed";
    }
}

DeviceBuffer::~DeviceBuffer()
{
    if (ptr_)
        cudaFree(ptr_);
}

const char *op_name(Op op)
{
    switch (op) {
    case Op::total: return "total_norm";
    case Op::global: return "clip_grad_norm";
    case Op::per_tensor: return "clip_grad_norm_per_tensor";
    default: return "clip_grad_value";
    }
}

gclip_status run_op(gclip_plan *plan, const OpArgs &a, float *tensor_norms, gclip_stream stream)
{
    gclip_norm_options o = a.options;
    o.tensor_norms = tensor_norms;
    switch (a.op) {
    case Op::total: return gclip_total_norm(plan, &o, stream);
    case Op::global: return gclip_clip_grad_norm(plan, &o, stream);
    case Op::per_tensor: return gclip_clip_grad_norm_per_tensor(plan, &o, stream);
    default: return gclip_clip_grad_value(plan, a.clip_value, stream);
    }
}

// ---- layout and data --------------------------------------------------------

std::size_t Paired::layout(const std::vector<Spec> &specs, std::vector<std::size_t> &offsets)
{
    std::size_t off = 0;
    for (const Spec &s : specs) {
        const std::size_t size = oracle::dtype_size(s.dtype);
        off = (off + 15) / 16 * 16 + static_cast<std::size_t>(s.offset) * size;
        offsets.push_back(off);
        off += static_cast<std::size_t>(s.numel) * size;
    }
    return off;
}

Paired::Paired(std::vector<Spec> specs, uint64_t seed, double scale)
    : specs_(std::move(specs)), dev_(layout(specs_, offsets_) + 1)
{
    const std::size_t bytes = dev_.bytes() - 1;
    pristine_.assign(bytes, 0);
    oracle::Rng rng(seed);
    for (std::size_t k = 0; k < specs_.size(); ++k)
        oracle::fill_random(pristine_.data() + offsets_[k], specs_[k].dtype, specs_[k].numel, rng,
                            scale);
    host_storage_.assign(bytes + 16, 0);
    const auto addr = reinterpret_cast<uintptr_t>(host_storage_.data());
    pad_ = (16 - addr % 16) % 16;
    host_ = host_storage_.data();
    reset();

    const auto ht = tensors_at(host_ + pad_);
    const auto dt = device_tensors();
    EXPECT_EQ(testutil::make_plan(cpu_plan_, ht, GCLIP_DEVICE_CPU), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    EXPECT_EQ(testutil::make_plan(gpu_plan_, dt, 0), GCLIP_STATUS_SUCCESS) << gclip_last_error();
}

std::vector<gclip_tensor> Paired::tensors_at(void *base) const
{
    std::vector<gclip_tensor> t;
    for (std::size_t k = 0; k < specs_.size(); ++k)
        t.push_back(gclip_tensor{static_cast<unsigned char *>(base) + offsets_[k], specs_[k].numel,
                                 specs_[k].dtype});
    return t;
}

std::vector<gclip_tensor> Paired::device_tensors() const
{
    return tensors_at(dev_.get());
}

void Paired::set_element(std::size_t k, int64_t i, float v)
{
    oracle::store(pristine_.data() + offsets_[k], specs_[k].dtype, i, v);
}

void Paired::reset()
{
    if (pristine_.empty())
        return;
    std::memcpy(host_ + pad_, pristine_.data(), pristine_.size());
    GPU_ASSERT_CUDA(cudaMemcpy(dev_.get(), pristine_.data(), pristine_.size(),
                               cudaMemcpyHostToDevice));
    // a pageable upload may still be in flight when cudaMemcpy returns, and
    // tests run on non-blocking streams that do not wait for it
    GPU_ASSERT_CUDA(cudaDeviceSynchronize());
}

std::vector<unsigned char> Paired::download() const
{
    std::vector<unsigned char> out(pristine_.size());
    if (!out.empty()) {
        const cudaError_t e = cudaMemcpy(out.data(), dev_.get(), out.size(), cudaMemcpyDeviceToHost);
        EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
    }
    return out;
}

// ---- comparison ----------------------------------------------------------------

bool norm_close(float gpu, float cpu)
{
    if (std::isnan(cpu) || std::isnan(gpu))
        return std::isnan(cpu) && std::isnan(gpu);
    if (std::isinf(cpu) || std::isinf(gpu))
        return gpu == cpu;
    return oracle::ulp_distance(gpu, cpu) <= 2;
}

// Scale and coefficient derive from the norm through one division and one
// multiplication, each adding at most half an ulp to the norm's difference.
static bool factor_close(float gpu, float cpu)
{
    if (std::isnan(cpu) || std::isnan(gpu))
        return std::isnan(cpu) && std::isnan(gpu);
    return gpu == cpu || oracle::ulp_distance(gpu, cpu) <= 4;
}

void expect_results_close(const gclip_result &gpu, const gclip_result &cpu)
{
    EXPECT_EQ(gpu.has_norm, cpu.has_norm);
    EXPECT_EQ(gpu.nonfinite, cpu.nonfinite);
    EXPECT_TRUE(norm_close(gpu.total_norm, cpu.total_norm))
        << "total_norm gpu " << gpu.total_norm << " cpu " << cpu.total_norm;
    EXPECT_TRUE(factor_close(gpu.clip_coef, cpu.clip_coef))
        << "clip_coef gpu " << gpu.clip_coef << " cpu " << cpu.clip_coef;
    EXPECT_TRUE(factor_close(gpu.scale, cpu.scale))
        << "scale gpu " << gpu.scale << " cpu " << cpu.scale;
}

// One element of the two paths: f32 within 4 ulps (the factor may differ by
// a few ulps), f16/bf16 within one unit of the format after rounding.
static bool element_close(float gpu, float cpu, gclip_dtype dt)
{
    if (std::isnan(cpu) || std::isnan(gpu))
        return std::isnan(cpu) && std::isnan(gpu);
    if (gpu == cpu)
        return true;
    if (std::isinf(cpu) || std::isinf(gpu))
        return false;
    const double rel = dt == GCLIP_F32 ? std::ldexp(4.0, -24) : dt == GCLIP_F16 ? std::ldexp(1.0, -10)
                                                                                : std::ldexp(1.0, -7);
    const double quantum = dt == GCLIP_F32 ? 1e-45 : dt == GCLIP_F16 ? std::ldexp(1.0, -24)
                                                                     : std::ldexp(1.0, -133);
    return std::fabs(static_cast<double>(gpu) - cpu) <= rel * std::fabs(cpu) + quantum;
}

void Paired::expect_data_match(bool bitwise) const
{
    const std::vector<unsigned char> dev = download();
    int64_t mismatches = 0;
    std::string first;
    for (std::size_t k = 0; k < specs_.size(); ++k) {
        const Spec &s = specs_[k];
        const unsigned char *d = dev.data() + offsets_[k];
        const unsigned char *h = host_bytes() + offsets_[k];
        for (int64_t i = 0; i < s.numel; ++i) {
            const bool ok = bitwise ? oracle::raw_bits(d, s.dtype, i) == oracle::raw_bits(h, s.dtype, i)
                                    : element_close(oracle::load(d, s.dtype, i),
                                                    oracle::load(h, s.dtype, i), s.dtype);
            if (!ok && mismatches++ == 0)
                first = "tensor " + std::to_string(k) + " (" + oracle::dtype_name(s.dtype) +
                        ") element " + std::to_string(i) + ": gpu " +
                        std::to_string(oracle::load(d, s.dtype, i)) + " cpu " +
                        std::to_string(oracle::load(h, s.dtype, i));
        }
    }
    EXPECT_EQ(mismatches, 0) << (bitwise ? "bitwise " : "") << "data mismatches, first: " << first;
}

void Paired::run_and_compare(const OpArgs &a, gclip_result *cpu_result, gclip_stream stream)
{
    const std::size_t n = count();
    std::vector<float> cpu_norms(n + 1, -1.0f), gpu_norms(n + 1, -1.0f);
    DeviceBuffer dev_norms((n + 1) * sizeof(float));
    GPU_ASSERT_CUDA(cudaMemcpy(dev_norms.get(), gpu_norms.data(), (n + 1) * sizeof(float),
                               cudaMemcpyHostToDevice));
    GPU_ASSERT_CUDA(cudaDeviceSynchronize());

    const gclip_status cs = run_op(cpu(), a, cpu_norms.data(), nullptr);
    const gclip_status gs = run_op(gpu(), a, static_cast<float *>(dev_norms.get()), stream);
    ASSERT_EQ(cs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
    ASSERT_EQ(gs, GCLIP_STATUS_SUCCESS) << gclip_last_error();

    gclip_status cstat, gstat;
    const gclip_result cr = testutil::result_of(cpu(), &cstat);
    const gclip_result gr = testutil::result_of(gpu(), &gstat);
    EXPECT_EQ(gstat, cstat) << gclip_last_error();
    expect_results_close(gr, cr);
    if (cpu_result)
        *cpu_result = cr;

    // get_result waited for the CUDA plan's operation, on whatever stream
    if (a.op != Op::value) {
        GPU_ASSERT_CUDA(cudaMemcpy(gpu_norms.data(), dev_norms.get(), (n + 1) * sizeof(float),
                                   cudaMemcpyDeviceToHost));
        for (std::size_t k = 0; k < n; ++k)
            EXPECT_TRUE(norm_close(gpu_norms[k], cpu_norms[k]))
                << "tensor " << k << " norm gpu " << gpu_norms[k] << " cpu " << cpu_norms[k];
        EXPECT_EQ(gpu_norms[n], -1.0f) << "tensor_norms written past its end";
    }
    expect_data_match(a.op == Op::value);
}

// ---- shapes ----------------------------------------------------------------------

std::vector<Spec> edge_specs(gclip_dtype dtype, bool mixed)
{
    static const int64_t sizes[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33,
                                    255, 256, 257, 65535, 65536, 65537, 3 * 65536 + 5, 1000003};
    static const gclip_dtype all[] = {GCLIP_F32, GCLIP_F16, GCLIP_BF16};
    std::vector<Spec> specs;
    int k = 0;
    for (int offset : {0, 1, 3, 7})
        for (int64_t n : sizes) {
            const gclip_dtype dt = mixed ? all[k % 3] : dtype;
            specs.push_back(Spec{dt, n, offset});
            ++k;
        }
    return specs;
}

std::vector<Spec> random_specs(std::size_t count, int64_t max_numel, uint64_t seed)
{
    static const gclip_dtype all[] = {GCLIP_F32, GCLIP_F16, GCLIP_BF16};
    oracle::Rng rng(seed);
    std::vector<Spec> specs;
    for (std::size_t k = 0; k < count; ++k)
        specs.push_back(Spec{all[k % 3], rng.range(0, max_numel), static_cast<int>(rng.range(0, 7))});
    return specs;
}

} // namespace gpu
