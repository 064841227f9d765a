// gpu_fixture.cpp - paired CPU/CUDA plans and their comparison.
#include "gpu_fixture.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace {

// With GCLIP_GPU_RESET_AT_EXIT=1 (tests/gpu/device_check.sh sets it under
// compute-sanitizer) the device is reset after the last test: memcheck's
// leak check looks at what is still allocated when the context is
// destroyed, which at a plain process exit it may not see.
class ResetAtExit : public ::testing::Environment {
public:
    void TearDown() override
    {
        const char *e = std::getenv("GCLIP_GPU_RESET_AT_EXIT");
        int n = 0;
        if (e && std::strcmp(e, "1") == 0 && cudaGetDeviceCount(&n) == cudaSuccess && n > 0)
            EXPECT_EQ(cudaDeviceReset(), cudaSuccess);
    }
};

::testing::Environment *const reset_at_exit = ::testing::AddGlobalTestEnvironment(new ResetAtExit);

} // namespace

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

Stream::Stream() { EXPECT_EQ(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), cudaSuccess); }

Stream::~Stream()
{
    if (s_)
        cudaStreamDestroy(s_);
}

const char *op_name(int32_t op)
{
    switch (op) {
    case GCLIP_OP_TOTAL_NORM: return "total_norm";
    case GCLIP_OP_CLIP_NORM: return "clip_grad_norm";
    case GCLIP_OP_CLIP_PER_TENSOR: return "clip_grad_norm_per_tensor";
    case GCLIP_OP_CLIP_VALUE: return "clip_grad_value";
    case GCLIP_OP_CLIP_FACTOR: return "compute_clip_factor";
    case GCLIP_OP_CLIP_WITH_NORM: return "clip_grads_with_norm";
    case GCLIP_OP_ACCUMULATE: return "norm_accumulate";
    case GCLIP_OP_FINALIZE: return "norm_finalize";
    case GCLIP_OP_APPLY: return "apply_clip_factor";
    default: return "none";
    }
}

unsigned kernels_of(int32_t op)
{
    return op == GCLIP_OP_CLIP_NORM || op == GCLIP_OP_CLIP_PER_TENSOR ? 2u : 1u;
}

bool writes_tensor_norms(int32_t op)
{
    return op == GCLIP_OP_TOTAL_NORM || op == GCLIP_OP_CLIP_NORM ||
           op == GCLIP_OP_CLIP_PER_TENSOR || op == GCLIP_OP_CLIP_FACTOR ||
           op == GCLIP_OP_ACCUMULATE;
}

gclip_status run_op(gclip_plan *plan, const OpArgs &a, float *tensor_norms, gclip_stream stream)
{
    gclip_norm_options o = a.options;
    o.tensor_norms = writes_tensor_norms(a.op) ? tensor_norms : nullptr;
    switch (a.op) {
    case GCLIP_OP_TOTAL_NORM: return gclip_total_norm(plan, &o, stream);
    case GCLIP_OP_CLIP_NORM: return gclip_clip_grad_norm(plan, &o, stream);
    case GCLIP_OP_CLIP_PER_TENSOR: return gclip_clip_grad_norm_per_tensor(plan, &o, stream);
    case GCLIP_OP_CLIP_FACTOR: return gclip_compute_clip_factor(plan, &o, stream);
    case GCLIP_OP_ACCUMULATE: return gclip_norm_accumulate(plan, &o, stream);
    case GCLIP_OP_CLIP_WITH_NORM:
        return gclip_clip_grads_with_norm(plan, &o, a.given_norm, nullptr, stream);
    case GCLIP_OP_FINALIZE: return gclip_norm_finalize(plan, &o, nullptr, 0, stream);
    case GCLIP_OP_APPLY: return gclip_apply_clip_factor(plan, stream);
    default:
        return a.value_f64 ? gclip_clip_grad_value_f64(plan, a.clip_value_f64, stream)
                           : gclip_clip_grad_value(plan, a.clip_value, stream);
    }
}

Steps steps_for(int32_t op, const gclip_norm_options &o, float given_norm)
{
    auto step = [&](int32_t k) {
        OpArgs a;
        a.op = k;
        a.options = o;
        a.given_norm = given_norm;
        return a;
    };
    switch (op) {
    case GCLIP_OP_CLIP_FACTOR:
        return {step(GCLIP_OP_CLIP_FACTOR), step(GCLIP_OP_APPLY)};
    case GCLIP_OP_FINALIZE:
        return {step(GCLIP_OP_ACCUMULATE), step(GCLIP_OP_FINALIZE), step(GCLIP_OP_APPLY)};
    default:
        return {step(op)};
    }
}

const int32_t kAllOps[9] = {GCLIP_OP_TOTAL_NORM,  GCLIP_OP_CLIP_NORM,   GCLIP_OP_CLIP_PER_TENSOR,
                            GCLIP_OP_CLIP_VALUE,  GCLIP_OP_CLIP_FACTOR, GCLIP_OP_CLIP_WITH_NORM,
                            GCLIP_OP_ACCUMULATE, GCLIP_OP_FINALIZE,    GCLIP_OP_APPLY};

OpArgs clipping(int32_t op, const Paired &pair)
{
    OpArgs a;
    a.op = op;
    a.options.max_norm = 0.25f * pair.total_norm(2.0f);
    a.clip_value = 0.3f;
    a.given_norm = 2.0f * a.options.max_norm;
    return a;
}

cudaGraph_t capture(gclip_plan *plan, const Steps &steps, cudaStream_t stream)
{
    cudaGraph_t graph = nullptr;
    EXPECT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    for (const OpArgs &a : steps) {
        const gclip_status s = run_op(plan, a, nullptr, stream);
        EXPECT_EQ(s, GCLIP_STATUS_SUCCESS) << gclip_last_error();
    }
    EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    return graph;
}

GraphExec::GraphExec(cudaGraph_t graph) : graph_(graph)
{
    EXPECT_NE(graph_, nullptr) << "no graph was captured";
    if (graph_)
        GPU_EXPECT_CUDA(cudaGraphInstantiate(&exec_, graph_, 0));
}

GraphExec::~GraphExec()
{
    if (exec_)
        cudaGraphExecDestroy(exec_);
    if (graph_)
        cudaGraphDestroy(graph_);
}

gclip_device_result read_slot(gclip_plan *plan)
{
    gclip_device_result d{};
    const gclip_device_result *slot = nullptr;
    EXPECT_EQ(gclip_plan_device_result(plan, &slot), GCLIP_STATUS_SUCCESS);
    if (slot)
        GPU_EXPECT_CUDA(cudaMemcpy(&d, slot, sizeof d, cudaMemcpyDeviceToHost));
    return d;
}

gclip_result without_sequence(gclip_result r)
{
    r.sequence = 0;
    return r;
}

// ---- layout and data --------------------------------------------------------

std::size_t pack_layout(const std::vector<Spec> &specs, std::vector<std::size_t> &offsets)
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
    : specs_(std::move(specs)), dev_(pack_layout(specs_, offsets_) + 1), dev_pristine_(dev_.bytes())
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
    probe_storage_.assign(bytes + 16, 0);
    reset();

    const auto ht = tensors_at(host_ + pad_);
    const auto dt = device_tensors();
    const auto pt = tensors_at(probe_bytes());
    EXPECT_EQ(testutil::make_plan(cpu_plan_, ht, GCLIP_DEVICE_CPU), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    EXPECT_EQ(testutil::make_plan(gpu_plan_, dt, 0), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    EXPECT_EQ(testutil::make_plan(probe_plan_, pt, GCLIP_DEVICE_CPU), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
}

unsigned char *Paired::probe_bytes()
{
    const auto addr = reinterpret_cast<uintptr_t>(probe_storage_.data());
    return probe_storage_.data() + (16 - addr % 16) % 16;
}

std::vector<gclip_tensor> tensors_in(const std::vector<Spec> &specs,
                                     const std::vector<std::size_t> &offsets, void *base)
{
    std::vector<gclip_tensor> t;
    for (std::size_t k = 0; k < specs.size(); ++k)
        t.push_back(gclip_tensor{static_cast<unsigned char *>(base) + offsets[k], specs[k].numel,
                                 specs[k].dtype});
    return t;
}

std::vector<gclip_tensor> Paired::tensors_at(void *base) const
{
    return tensors_in(specs_, offsets_, base);
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
    std::memcpy(probe_bytes(), pristine_.data(), pristine_.size());
    GPU_ASSERT_CUDA(cudaMemcpy(dev_.get(), pristine_.data(), pristine_.size(),
                               cudaMemcpyHostToDevice));
    GPU_ASSERT_CUDA(cudaMemcpy(dev_pristine_.get(), pristine_.data(), pristine_.size(),
                               cudaMemcpyHostToDevice));
    // a pageable upload may still be in flight when cudaMemcpy returns, and
    // tests run on non-blocking streams that do not wait for it
    GPU_ASSERT_CUDA(cudaDeviceSynchronize());
}

void Paired::reset_async(cudaStream_t stream)
{
    if (pristine_.empty())
        return;
    GPU_EXPECT_CUDA(cudaMemcpyAsync(dev_.get(), dev_pristine_.get(), pristine_.size(),
                                    cudaMemcpyDeviceToDevice, stream));
}

std::vector<unsigned char> download_bytes(const void *dev, std::size_t bytes)
{
    std::vector<unsigned char> out(bytes);
    if (bytes) {
        const cudaError_t e = cudaMemcpy(out.data(), dev, bytes, cudaMemcpyDeviceToHost);
        EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
    }
    return out;
}

std::vector<unsigned char> Paired::download() const
{
    return download_bytes(dev_.get(), pristine_.size());
}

float Paired::total_norm(float norm_type, float inv_scale) const
{
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    o.norm_type = norm_type;
    o.inv_scale = inv_scale;
    EXPECT_EQ(gclip_total_norm(probe_plan_.get(), &o, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    return testutil::result_of(probe_plan_.get()).total_norm;
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
    EXPECT_EQ(gpu.op, cpu.op);
    EXPECT_EQ(gpu.has_norm, cpu.has_norm);
    EXPECT_EQ(gpu.applied, cpu.applied);
    EXPECT_EQ(gpu.nonfinite, cpu.nonfinite);
    EXPECT_TRUE(norm_close(gpu.total_norm, cpu.total_norm))
        << "total_norm gpu " << gpu.total_norm << " cpu " << cpu.total_norm;
    EXPECT_TRUE(factor_close(gpu.clip_coef, cpu.clip_coef))
        << "clip_coef gpu " << gpu.clip_coef << " cpu " << cpu.clip_coef;
    EXPECT_TRUE(factor_close(gpu.scale, cpu.scale))
        << "scale gpu " << gpu.scale << " cpu " << cpu.scale;
}

// One element of the two paths: f32 and f64 within 4 f32 ulps (the factor,
// a float, may differ by a few ulps), f16/bf16 within one unit of the format
// after rounding.
static bool element_close(double gpu, double cpu, gclip_dtype dt)
{
    if (std::isnan(cpu) || std::isnan(gpu))
        return std::isnan(cpu) && std::isnan(gpu);
    if (gpu == cpu)
        return true;
    if (std::isinf(cpu) || std::isinf(gpu))
        return false;
    const double rel = dt == GCLIP_F32 || dt == GCLIP_F64 ? std::ldexp(4.0, -24)
                       : dt == GCLIP_F16                  ? std::ldexp(1.0, -10)
                                                          : std::ldexp(1.0, -7);
    const double quantum = dt == GCLIP_F64 ? 1e-300
                           : dt == GCLIP_F32 ? 1e-45
                           : dt == GCLIP_F16 ? std::ldexp(1.0, -24)
                                             : std::ldexp(1.0, -133);
    return std::fabs(gpu - cpu) <= rel * std::fabs(cpu) + quantum;
}

static double element(const unsigned char *p, gclip_dtype dt, int64_t i)
{
    return dt == GCLIP_F64 ? oracle::load_f64(p, i) : static_cast<double>(oracle::load(p, dt, i));
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
                                    : element_close(element(d, s.dtype, i),
                                                    element(h, s.dtype, i), s.dtype);
            if (!ok && mismatches++ == 0)
                first = "tensor " + std::to_string(k) + " (" + oracle::dtype_name(s.dtype) +
                        ") element " + std::to_string(i) + ": gpu " +
                        std::to_string(element(d, s.dtype, i)) + " cpu " +
                        std::to_string(element(h, s.dtype, i));
        }
    }
    EXPECT_EQ(mismatches, 0) << (bitwise ? "bitwise " : "") << "data mismatches, first: " << first;
}

void Paired::run_and_compare(const Steps &steps, gclip_result *cpu_result, gclip_stream stream)
{
    const std::size_t n = count();
    std::vector<float> cpu_norms(n + 1, -1.0f), gpu_norms(n + 1, -1.0f);
    DeviceBuffer dev_norms((n + 1) * sizeof(float));
    GPU_ASSERT_CUDA(cudaMemcpy(dev_norms.get(), gpu_norms.data(), (n + 1) * sizeof(float),
                               cudaMemcpyHostToDevice));
    GPU_ASSERT_CUDA(cudaDeviceSynchronize());

    const uint32_t cpu_before = testutil::result_of(cpu()).sequence;
    const uint32_t gpu_before = testutil::result_of(gpu()).sequence;
    bool norms_written = false, values_only = true;
    for (const OpArgs &a : steps) {
        SCOPED_TRACE(op_name(a.op));
        const gclip_status cs = run_op(cpu(), a, cpu_norms.data(), nullptr);
        const gclip_status gs = run_op(gpu(), a, static_cast<float *>(dev_norms.get()), stream);
        ASSERT_EQ(cs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
        ASSERT_EQ(gs, GCLIP_STATUS_SUCCESS) << gclip_last_error();
        norms_written = norms_written || writes_tensor_norms(a.op);
        values_only = values_only && a.op == GCLIP_OP_CLIP_VALUE;
    }

    gclip_status cstat, gstat;
    const gclip_result cr = testutil::result_of(cpu(), &cstat);
    const gclip_result gr = testutil::result_of(gpu(), &gstat);
    EXPECT_EQ(gstat, cstat) << gclip_last_error();
    expect_results_close(gr, cr);
    EXPECT_EQ(gr.sequence - gpu_before, steps.size()) << "operations counted by the CUDA plan";
    EXPECT_EQ(cr.sequence - cpu_before, steps.size()) << "operations counted by the CPU plan";
    if (cpu_result)
        *cpu_result = cr;

    // get_result waited for the CUDA plan's operation, on whatever stream
    const gclip_device_result gs_slot = read_slot(gpu());
    const gclip_device_result *cs_slot = nullptr;
    EXPECT_EQ(gclip_plan_device_result(cpu(), &cs_slot), GCLIP_STATUS_SUCCESS);
    if (cs_slot) {
        EXPECT_EQ(gs_slot.op, cs_slot->op);
        EXPECT_EQ(gs_slot.flags, cs_slot->flags);
        EXPECT_EQ(gs_slot.status, cs_slot->status);
        EXPECT_EQ(gs_slot.failed, cs_slot->failed);
        EXPECT_EQ(gs_slot.sequence, gr.sequence);
    }
    if (norms_written) {
        GPU_ASSERT_CUDA(cudaMemcpy(gpu_norms.data(), dev_norms.get(), (n + 1) * sizeof(float),
                                   cudaMemcpyDeviceToHost));
        for (std::size_t k = 0; k < n; ++k)
            EXPECT_TRUE(norm_close(gpu_norms[k], cpu_norms[k]))
                << "tensor " << k << " norm gpu " << gpu_norms[k] << " cpu " << cpu_norms[k];
        EXPECT_EQ(gpu_norms[n], -1.0f) << "tensor_norms written past its end";
    }
    expect_data_match(values_only);
}

} // namespace gpu
