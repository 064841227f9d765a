// test_gpu_dependent_launch.cpp - the scale kernel as a programmatic
// dependent launch (compute capability 9.0 and later). Its blocks may be
// scheduled while the norm kernel before it still runs, and wait on the
// device for it; reading the factor or touching a gradient before that wait
// would use the previous step's factor or race with the norm's reads. Two
// plans over the same seeded data, one created under GCLIP_DEPENDENT_LAUNCH=1
// (the dependent launch) and one under GCLIP_DEPENDENT_LAUNCH=0, run the same
// chain of steps with no host synchronization, each step's factor different
// from the one before; every step's result slot and the data at the end must
// be the same bits. The plain plan's steps are those the other GPU tests
// check against the CPU path.
#include "gpu_fixture.hpp"
#include "tickets.hpp"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

namespace gpu {
namespace {

// GCLIP_DEPENDENT_LAUNCH=value for the scope of the object (the plan reads
// it once, at creation), then restored.
class ScopedSetting {
public:
    explicit ScopedSetting(const char *value)
    {
        const char *old = std::getenv("GCLIP_DEPENDENT_LAUNCH");
        had_ = old != nullptr;
        if (had_)
            old_ = old;
        setenv("GCLIP_DEPENDENT_LAUNCH", value, 1);
    }
    ~ScopedSetting()
    {
        if (had_)
            setenv("GCLIP_DEPENDENT_LAUNCH", old_.c_str(), 1);
        else
            unsetenv("GCLIP_DEPENDENT_LAUNCH");
    }

private:
    bool had_ = false;
    std::string old_;
};

int compute_major()
{
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
        return 0;
    return major;
}

// A cycle of four steps: the global clip to half the starting norm, an
// unscale by 2 with no clip (factor exactly 2), the per-tensor clip, an
// unscale by 2 again. Each step's factor differs from the previous one's.
Steps cycle_of(const Paired &pair)
{
    const float n0 = pair.total_norm(2.0f);
    OpArgs clip;
    clip.op = GCLIP_OP_CLIP_NORM;
    clip.options.max_norm = 0.5f * n0;
    OpArgs grow;
    grow.op = GCLIP_OP_CLIP_NORM;
    grow.options.max_norm = INFINITY;
    grow.options.inv_scale = 2.0f;
    OpArgs per_tensor;
    per_tensor.op = GCLIP_OP_CLIP_PER_TENSOR;
    // a tenth of n0 for 64 tensors: what the per-tensor clip leaves, doubled,
    // is then large enough for the next global clip to clip again
    per_tensor.options.max_norm = 0.8f * n0 / std::sqrt(static_cast<float>(pair.count()));
    return Steps{clip, grow, per_tensor, grow};
}

const int kCycles = 100;

struct Chain {
    std::unique_ptr<Paired> pair;
    std::unique_ptr<DeviceBuffer> slots; // one gclip_device_result per step
};

Chain make_run(const char *setting)
{
    Chain r;
    const ScopedSetting s(setting);
    r.pair = std::make_unique<Paired>(long_run_specs(64, 120000, 931), 932);
    r.slots = std::make_unique<DeviceBuffer>(sizeof(gclip_device_result) * 4 * kCycles);
    return r;
}

// Every step of kCycles cycles, eager on `stream`, the slot copied after each.
void run_eager(const Chain &r, cudaStream_t stream)
{
    const Steps cycle = cycle_of(*r.pair);
    const gclip_device_result *slot = nullptr;
    ASSERT_EQ(gclip_plan_device_result(r.pair->gpu(), &slot), GCLIP_STATUS_SUCCESS);
    for (int i = 0; i < 4 * kCycles; ++i) {
        ASSERT_EQ(run_op(r.pair->gpu(), cycle[static_cast<std::size_t>(i % 4)], nullptr, stream),
                  GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        GPU_ASSERT_CUDA(cudaMemcpyAsync(r.slots->as<gclip_device_result>() + i, slot,
                                        sizeof *slot, cudaMemcpyDeviceToDevice, stream));
    }
}

std::vector<gclip_device_result> slots_of(const Chain &r)
{
    std::vector<gclip_device_result> s(static_cast<std::size_t>(4 * kCycles));
    EXPECT_EQ(cudaMemcpy(s.data(), r.slots->get(), s.size() * sizeof s[0], cudaMemcpyDeviceToHost),
              cudaSuccess);
    return s;
}

// Two chains over the same seeded data, one per stream: `dependent` created
// under GCLIP_DEPENDENT_LAUNCH=1, `plain` under GCLIP_DEPENDENT_LAUNCH=0.
class GpuDependentLaunchTest : public GpuTest {
protected:
    void SetUp() override
    {
        GpuTest::SetUp();
        if (IsSkipped())
            return;
        if (compute_major() < 9)
            GTEST_SKIP() << "compute capability " << compute_major()
                         << ".x: the scale kernel is a dependent launch from 9.0 only";
        a = std::make_unique<Stream>();
        b = std::make_unique<Stream>();
        dependent = make_run("1");
        plain = make_run("0");
    }
    std::unique_ptr<Stream> a, b;
    Chain dependent, plain;
};

TEST_F(GpuDependentLaunchTest, EagerStepsEqualPlainLaunchesBitwise)
{
    // both plans at once, each on its stream: the device is shared as in training
    run_eager(dependent, a->get());
    run_eager(plain, b->get());
    GPU_ASSERT_CUDA(cudaStreamSynchronize(a->get()));
    GPU_ASSERT_CUDA(cudaStreamSynchronize(b->get()));

    const std::vector<gclip_device_result> d = slots_of(dependent), p = slots_of(plain);
    for (std::size_t i = 0; i < d.size(); ++i) {
        ASSERT_EQ(std::memcmp(&d[i], &p[i], sizeof d[i]), 0)
            << "step " << i << ": dependent launch total_norm " << d[i].total_norm << " scale "
            << d[i].scale << ", plain " << p[i].total_norm << " " << p[i].scale;
        EXPECT_EQ(d[i].sequence, static_cast<uint32_t>(i + 1));
    }
    // the chain does what it says: the clip clips, the unscale doubles
    EXPECT_LT(d[0].scale, 0.55f);
    EXPECT_EQ(d[1].scale, 2.0f);
    EXPECT_LT(d[4 * kCycles - 4].scale, 1.0f);
    EXPECT_EQ(d[4 * kCycles - 1].scale, 2.0f);
    const std::vector<unsigned char> dd = dependent.pair->download(), pd = plain.pair->download();
    ASSERT_EQ(dd.size(), pd.size());
    EXPECT_EQ(std::memcmp(dd.data(), pd.data(), dd.size()), 0) << "the data differ after the chain";
    EXPECT_NE(std::memcmp(dd.data(), dependent.pair->pristine_bytes(), dd.size()), 0)
        << "the chain left the data as they started";
    expect_tickets_at_zero(dependent.pair->gpu(), "after the dependent launches");
}

TEST_F(GpuDependentLaunchTest, GraphReplaysEqualPlainEagerStepsBitwise)
{
    GraphExec g(capture(dependent.pair->gpu(), cycle_of(*dependent.pair), a->get()));
    ASSERT_TRUE(g.ok()) << "a cycle of dependent launches could not be captured";
    for (int c = 0; c < kCycles; ++c)
        GPU_ASSERT_CUDA(g.launch(a->get()));
    run_eager(plain, b->get());
    GPU_ASSERT_CUDA(cudaStreamSynchronize(a->get()));
    GPU_ASSERT_CUDA(cudaStreamSynchronize(b->get()));

    const gclip_device_result last = read_slot(dependent.pair->gpu());
    const std::vector<gclip_device_result> p = slots_of(plain);
    EXPECT_EQ(std::memcmp(&last, &p.back(), sizeof last), 0)
        << "last slot: replayed total_norm " << last.total_norm << ", plain "
        << p.back().total_norm;
    EXPECT_EQ(last.sequence, static_cast<uint32_t>(4 * kCycles));
    const std::vector<unsigned char> dd = dependent.pair->download(), pd = plain.pair->download();
    ASSERT_EQ(dd.size(), pd.size());
    EXPECT_EQ(std::memcmp(dd.data(), pd.data(), dd.size()), 0)
        << "the replayed chain's data differ from the plain eager chain's";
    expect_tickets_at_zero(dependent.pair->gpu(), "after the replays");
}

} // namespace
} // namespace gpu
