// test_gpu_adaptive.cpp - adaptive clipping (ZClip, AutoClip, AdaGC, spike
// skip) and AGC on a device against the CPU path, bit for bit: the same
// seeded gradients (and parameters) on the host under a CPU plan and on the
// device under a CUDA plan, the same steps, then every gradient byte, the
// result, and for the adaptive methods the info record and the exported
// state compared. The kernels' arithmetic is the CPU path's (the emulator
// suite checks it on the CPU); this runs it on the hardware, with the scale
// launch a dependent launch where the device has one (sm_90 and later).
#include "adaptive_methods.hpp"
#include "gclip_adapt.h"
#include "gclip_agc_math.h" // GCLIP_AGC_PIECE
#include "gclip_dtype.h"
#include "gclip_tables.h" // GCLIP_CHUNK_ELEMS
#include "gpu_fixture.hpp"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

namespace gpu {
namespace {

struct Shape {
    gclip_dtype dtype;
    int64_t rows, cols;
    int64_t numel() const { return rows * cols; }
};

// Every dtype; a tensor of several chunks; an empty one; rows of several
// AGC pieces (the last one short).
const std::vector<Shape> &shapes()
{
    static const std::vector<Shape> s = {
        {GCLIP_F32, 1, 7},     {GCLIP_F16, 4, 75},    {GCLIP_BF16, 3, 11},
        {GCLIP_F64, 3, 43},    {GCLIP_F32, 2, GCLIP_CHUNK_ELEMS + 3},
        {GCLIP_F32, 5, 0},     {GCLIP_F32, 10, 100},  {GCLIP_F32, 2, 2 * GCLIP_AGC_PIECE + 77},
        {GCLIP_BF16, 1, 257},
    };
    return s;
}

void store(void *data, gclip_dtype dt, int64_t i, float v)
{
    if (dt == GCLIP_F64)
        static_cast<double *>(data)[i] = static_cast<double>(v);
    else
        gclip_store(data, dt, i, v);
}

// One set of tensors twice: host bytes and a device copy of them.
class Twin {
public:
    explicit Twin(const std::vector<Shape> &s) : shapes_(s)
    {
        for (const Shape &x : s) {
            const std::size_t bytes = static_cast<std::size_t>(x.numel()) *
                                      static_cast<std::size_t>(gclip_dtype_size(x.dtype));
            host_.emplace_back(bytes + 16, 0);
            dev_.push_back(std::make_unique<DeviceBuffer>(bytes + 16));
        }
    }
    void *host(std::size_t t) { return host_[t].data(); }
    const std::vector<std::vector<unsigned char>> &host_bytes() const { return host_; }
    std::vector<gclip_tensor> tensors(bool device) const
    {
        std::vector<gclip_tensor> v;
        for (std::size_t t = 0; t < shapes_.size(); ++t) {
            const int64_t n = shapes_[t].numel();
            void *p = device ? dev_[t]->get() : const_cast<unsigned char *>(host_[t].data());
            v.push_back(gclip_tensor{n ? p : nullptr, n, shapes_[t].dtype});
        }
        return v;
    }
    void upload() const
    {
        for (std::size_t t = 0; t < host_.size(); ++t)
            GPU_EXPECT_CUDA(cudaMemcpy(dev_[t]->get(), host_[t].data(), host_[t].size(),
                                       cudaMemcpyHostToDevice));
        // a copy from pageable memory may return before it lands, and the
        // steps run on a non-blocking stream, which does not wait for it
        GPU_EXPECT_CUDA(cudaDeviceSynchronize());
    }
    // Every device byte equals the host's; with f64_rel > 0, an f64 tensor's
    // elements need only be within that relative distance (the general-p
    // norms go through exp2 and log2, whose double bits the GPU's math
    // library and glibc may round apart, and an f64 unit's factor stays in
    // double).
    void expect_equal(const char *what, int step, double f64_rel = 0.0) const
    {
        for (std::size_t t = 0; t < host_.size(); ++t) {
            const std::vector<unsigned char> d = download_bytes(dev_[t]->get(), host_[t].size());
            if (f64_rel > 0.0 && shapes_[t].dtype == GCLIP_F64) {
                for (int64_t i = 0; i < shapes_[t].numel(); ++i) {
                    double a, b;
                    std::memcpy(&a, d.data() + 8 * i, 8);
                    std::memcpy(&b, host_[t].data() + 8 * i, 8);
                    // the same bits (NaN and Inf included), or two finite
                    // values that close
                    const bool same = std::memcmp(&a, &b, 8) == 0 ||
                                      (std::isfinite(a) && std::isfinite(b) &&
                                       std::fabs(a - b) <= f64_rel * std::fabs(b));
                    EXPECT_TRUE(same) << what << " " << t << " element " << i << ": " << a
                                      << " against the CPU path's " << b << " after step " << step;
                }
                continue;
            }
            EXPECT_EQ(std::memcmp(d.data(), host_[t].data(), d.size()), 0)
                << what << " " << t << " differs from the CPU path's after step " << step;
        }
    }

private:
    std::vector<Shape> shapes_;
    std::vector<std::vector<unsigned char>> host_;
    std::vector<std::unique_ptr<DeviceBuffer>> dev_;
};

// Seeded values in `tw`'s host copy, then uploaded: each row of tensor t
// scaled by `row_scale(t)` draws.
template <class RowScale>
void fill(Twin &tw, std::mt19937_64 &rng, RowScale row_scale)
{
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (std::size_t t = 0; t < shapes().size(); ++t) {
        const Shape &s = shapes()[t];
        for (int64_t r = 0; r < s.rows; ++r) {
            const float k = row_scale(t);
            for (int64_t j = 0; j < s.cols; ++j)
                store(tw.host(t), s.dtype, r * s.cols + j, nd(rng) * k);
        }
    }
    tw.upload();
}

void expect_results_equal(gclip_plan *gpu, gclip_plan *cpu, int step)
{
    const gclip_result g = testutil::result_of(gpu), c = testutil::result_of(cpu);
    EXPECT_EQ(g.op, c.op) << "step " << step;
    EXPECT_EQ(g.nonfinite, c.nonfinite) << "step " << step;
    EXPECT_EQ(g.has_norm, c.has_norm) << "step " << step;
    EXPECT_EQ(g.applied, c.applied) << "step " << step;
    EXPECT_EQ(g.sequence, c.sequence) << "step " << step;
    EXPECT_EQ(std::memcmp(&g.total_norm, &c.total_norm, sizeof g.total_norm), 0)
        << "step " << step << ": total_norm " << g.total_norm << " vs " << c.total_norm;
    EXPECT_EQ(std::memcmp(&g.clip_coef, &c.clip_coef, sizeof g.clip_coef), 0) << "step " << step;
    EXPECT_EQ(std::memcmp(&g.scale, &c.scale, sizeof g.scale), 0) << "step " << step;
}

struct AdaptiveDeleter {
    void operator()(gclip_adaptive *a) const { gclip_adaptive_destroy(a); }
};
using AdaptivePtr = std::unique_ptr<gclip_adaptive, AdaptiveDeleter>;

AdaptivePtr make_adaptive(gclip_plan *plan, const gclip_adaptive_options &o)
{
    gclip_adaptive *a = nullptr;
    EXPECT_EQ(gclip_adaptive_create(&a, plan, &o), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    return AdaptivePtr(a);
}

std::vector<unsigned char> state_of(gclip_adaptive *a)
{
    std::size_t n = 0;
    EXPECT_EQ(gclip_adaptive_state_size(a, &n), GCLIP_STATUS_SUCCESS);
    std::vector<unsigned char> b(n);
    EXPECT_EQ(gclip_adaptive_export(a, b.data(), n), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    return b;
}

using adaptive_methods::kMethods;
using adaptive_methods::method;

using GpuAdaptiveTest = GpuTest;

// Thirty steps of every method, with spikes (one tensor 50 times larger
// every 11th step, everything 8 times larger every 17th) and a NaN at step
// 23, each compared with the CPU path in full.
TEST_F(GpuAdaptiveTest, EveryMethodMatchesTheCpuPathBitForBit)
{
    Stream stream;
    for (int m = 0; m < kMethods; ++m) {
        SCOPED_TRACE(m);
        Twin tw(shapes());
        testutil::PlanPtr cpu, gpu;
        ASSERT_EQ(testutil::make_plan(cpu, tw.tensors(false), GCLIP_DEVICE_CPU),
                  GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(testutil::make_plan(gpu, tw.tensors(true), 0), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        const AdaptivePtr ac = make_adaptive(cpu.get(), method(m));
        const AdaptivePtr ag = make_adaptive(gpu.get(), method(m));
        ASSERT_TRUE(ac && ag);
        std::mt19937_64 rng(60 + static_cast<uint64_t>(m));
        const gclip_norm_options base = GCLIP_NORM_OPTIONS_INIT;
        int spikes = 0, clipped = 0;
        for (int k = 0; k < 30; ++k) {
            fill(tw, rng, [k](std::size_t t) {
                return (k % 11 == 10 && t == 6) ? 50.0f : (k % 17 == 16 ? 8.0f : 1.0f);
            });
            if (k == 23) {
                store(tw.host(6), GCLIP_F32, 5, std::nanf(""));
                tw.upload();
            }
            ASSERT_EQ(gclip_adaptive_step(ac.get(), &base, nullptr), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
            ASSERT_EQ(gclip_adaptive_step(ag.get(), &base, stream.get()), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
            GPU_ASSERT_CUDA(cudaStreamSynchronize(stream.get()));
            tw.expect_equal("gradient", k);
            expect_results_equal(gpu.get(), cpu.get(), k);
            gclip_adaptive_info a{}, b{};
            ASSERT_EQ(gclip_adaptive_get_info(ac.get(), &a), GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(gclip_adaptive_get_info(ag.get(), &b), GCLIP_STATUS_SUCCESS);
            EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "info after step " << k;
            EXPECT_EQ(state_of(ac.get()), state_of(ag.get())) << "state after step " << k;
            spikes += b.spike != 0;
            clipped += b.clipped != 0;
            if (::testing::Test::HasFailure())
                return;
        }
        // the steps exercised the method: it clipped or flagged something
        EXPECT_GT(spikes + clipped, 0) << "no step of method " << m << " clipped or spiked";
    }
}

struct AgcDeleter {
    void operator()(gclip_agc *a) const { gclip_agc_destroy(a); }
};
using AgcPtr = std::unique_ptr<gclip_agc, AgcDeleter>;

AgcPtr make_agc(gclip_plan *plan, const std::vector<gclip_tensor> &params,
                const gclip_agc_options &o)
{
    std::vector<int64_t> units;
    for (const Shape &s : shapes())
        units.push_back(s.rows);
    gclip_agc *a = nullptr;
    EXPECT_EQ(gclip_agc_create(&a, plan, params.data(), units.data(), &o), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    return AgcPtr(a);
}

using GpuAgcTest = GpuTest;

// Two steps of AGC for every norm type, with and without non-finite values
// in gradient and parameter rows; rows on both sides of the threshold.
TEST_F(GpuAgcTest, EveryNormTypeMatchesTheCpuPath)
{
    Stream stream;
    const float norm_types[] = {2.0f, 1.0f, std::numeric_limits<float>::infinity(), 3.0f};
    int i = 0;
    for (float p : norm_types) {
        for (bool nonfinite : {false, true}) {
            SCOPED_TRACE(testing::Message() << "p " << p << " nonfinite " << nonfinite);
            Twin g(shapes()), w(shapes());
            testutil::PlanPtr cpu, gpu;
            ASSERT_EQ(testutil::make_plan(cpu, g.tensors(false), GCLIP_DEVICE_CPU),
                      GCLIP_STATUS_SUCCESS);
            ASSERT_EQ(testutil::make_plan(gpu, g.tensors(true), 0), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
            gclip_agc_options o = GCLIP_AGC_OPTIONS_INIT;
            o.norm_type = p;
            o.clip_factor = 0.02;
            const AgcPtr ac = make_agc(cpu.get(), w.tensors(false), o);
            const AgcPtr ag = make_agc(gpu.get(), w.tensors(true), o);
            ASSERT_TRUE(ac && ag);
            std::mt19937_64 rng(80 + static_cast<uint64_t>(i++));
            std::uniform_real_distribution<float> row(0.0005f, 0.05f);
            for (int step = 0; step < 2; ++step) {
                fill(w, rng, [](std::size_t) { return 1.0f; });
                fill(g, rng, [&](std::size_t) { return row(rng); });
                if (nonfinite) {
                    store(g.host(6), GCLIP_F32, 75, std::nanf(""));
                    store(g.host(6), GCLIP_F32, 150, INFINITY);
                    store(w.host(6), GCLIP_F32, 290, std::nanf(""));
                    store(w.host(6), GCLIP_F32, 360, INFINITY);
                    g.upload();
                    w.upload();
                }
                const std::vector<std::vector<unsigned char>> before = g.host_bytes();
                ASSERT_EQ(gclip_agc_step(ac.get(), nullptr), GCLIP_STATUS_SUCCESS)
                    << gclip_last_error();
                EXPECT_NE(before, g.host_bytes()) << "the CPU path's AGC step clipped no row";
                ASSERT_EQ(gclip_agc_step(ag.get(), stream.get()), GCLIP_STATUS_SUCCESS)
                    << gclip_last_error();
                GPU_ASSERT_CUDA(cudaStreamSynchronize(stream.get()));
                // p = 3: f64 gradients within 1e-14 (a few ulps), the others bit for bit
                g.expect_equal("gradient", step, p == 3.0f ? 1e-14 : 0.0);
                w.expect_equal("parameter", step);
                expect_results_equal(gpu.get(), cpu.get(), step);
                if (::testing::Test::HasFailure())
                    return;
            }
        }
    }
}

} // namespace
} // namespace gpu
