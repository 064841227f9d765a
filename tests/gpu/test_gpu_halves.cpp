// test_gpu_halves.cpp - every one of the 65,536 f16 and bf16 values through
// the scale kernel (factors that keep, shrink and flush values to subnormals
// or zero) and the clamp kernel (bounds from 0 to the largest f16), on a
// device against the CPU path, bit for bit: NaN of every payload, both
// infinities, both zeros and every subnormal included. The CPU path's
// conversions are themselves checked against every 16-bit value
// (tests/cpu/test_dtype_conversion.cpp); the emulator runs the kernels' own
// code on the CPU, but not the device's conversion instructions.
#include "gpu_fixture.hpp"

#include <cstring>

namespace gpu {
namespace {

using GpuHalvesTest = GpuTest;

constexpr int kValues = 65536;

// The 65,536 bit patterns in a scrambled order (k * 40503 mod 2^16, a
// bijection), so that NaNs, subnormals and normals share vectors and lanes,
// after `offset` elements of padding (a start past a 16-byte boundary: the
// kernels' scalar head and tail).
std::vector<uint16_t> every_half(int offset)
{
    std::vector<uint16_t> v(static_cast<std::size_t>(offset + kValues + 5), 0x3c00);
    for (int k = 0; k < kValues; ++k)
        v[static_cast<std::size_t>(offset + k)] = static_cast<uint16_t>(k * 40503u);
    return v;
}

struct Pair {
    std::vector<uint16_t> pristine, host;
    std::unique_ptr<DeviceBuffer> dev;
    testutil::PlanPtr cpu, gpu;
    int offset = 0;

    std::size_t bytes() const { return pristine.size() * sizeof(uint16_t); }
    void reset()
    {
        host = pristine;
        ASSERT_EQ(cudaMemcpy(dev->get(), pristine.data(), bytes(), cudaMemcpyHostToDevice),
                  cudaSuccess);
    }
    // Device bytes equal to the host's after the op, with a note of the first
    // difference; and the op changed something.
    void compare(const std::string &what) const
    {
        const std::vector<unsigned char> d = download_bytes(dev->get(), bytes());
        std::vector<uint16_t> got(pristine.size());
        std::memcpy(got.data(), d.data(), bytes());
        int changed = 0;
        for (std::size_t i = 0; i < got.size(); ++i) {
            ASSERT_EQ(got[i], host[i]) << what << ": element " << i << " (input 0x" << std::hex
                                       << pristine[i] << ")";
            changed += got[i] != pristine[i];
        }
        EXPECT_GT(changed, 0) << what << ": nothing was written";
    }
};

TEST_F(GpuHalvesTest, EveryHalfScaledAndClampedAsTheCpuPathDoes)
{
    for (gclip_dtype dt : {GCLIP_F16, GCLIP_BF16}) {
        for (int offset : {0, 3}) {
            SCOPED_TRACE(std::string(dt == GCLIP_F16 ? "f16" : "bf16") + ", offset " +
                         std::to_string(offset));
            Pair p;
            p.offset = offset;
            p.pristine = every_half(offset);
            p.dev = std::make_unique<DeviceBuffer>(p.bytes());
            p.reset();
            const int64_t n = kValues;
            const gclip_tensor on_host{p.host.data() + offset, n, dt};
            const gclip_tensor on_dev{static_cast<uint16_t *>(p.dev->get()) + offset, n, dt};
            ASSERT_EQ(testutil::make_plan(p.cpu, {on_host}), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();
            ASSERT_EQ(testutil::make_plan(p.gpu, {on_dev}, 0), GCLIP_STATUS_SUCCESS)
                << gclip_last_error();

            // factors about 1/3, 1/1024 (f16 normals become subnormals) and
            // 2^-30 (most become zero), from a given norm
            for (float norm : {3.0f, 1024.0f, 1073741824.0f}) {
                const std::string what = "scale, given norm " + std::to_string(norm);
                p.reset();
                gclip_norm_options o = testutil::norm_options(1.0f);
                o.nonfinite = GCLIP_NONFINITE_PROPAGATE;
                GPU_ASSERT_OK(gclip_clip_grads_with_norm(p.cpu.get(), &o, norm, nullptr, nullptr));
                GPU_ASSERT_OK(gclip_clip_grads_with_norm(p.gpu.get(), &o, norm, nullptr, nullptr));
                gclip_result rc{}, rg{};
                GPU_ASSERT_OK(gclip_get_result(p.cpu.get(), &rc));
                GPU_ASSERT_OK(gclip_get_result(p.gpu.get(), &rg));
                ASSERT_EQ(rc.scale, rg.scale) << what;
                ASSERT_LT(rc.scale, 1.0f) << what;
                p.compare(what);
            }
            for (float bound : {0.0f, 1e-5f, 0.5f, 65504.0f}) {
                const std::string what = "clamp to " + std::to_string(bound);
                p.reset();
                GPU_ASSERT_OK(gclip_clip_grad_value(p.cpu.get(), bound, nullptr));
                GPU_ASSERT_OK(gclip_clip_grad_value(p.gpu.get(), bound, nullptr));
                gclip_result r{};
                GPU_ASSERT_OK(gclip_get_result(p.gpu.get(), &r));
                p.compare(what);
            }
        }
    }
}

} // namespace
} // namespace gpu
