// When a CUDA plan makes its scale kernel a programmatic dependent launch
// (gclip_dependent_launch_wanted, asked once at plan creation): only when
// GCLIP_DEPENDENT_LAUNCH is "1", and only from compute capability 9.0. The
// launches themselves need a device (tests/gpu, GpuDependentLaunchTest).
// And how many blocks per SM its scale and clamp launches take
// (gclip_scale_blocks_wanted, also once per plan).
#include "gclip_internal.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

TEST(DependentLaunch, OffWhenUnset)
{
    for (int major : {7, 8, 9, 10, 12})
        EXPECT_EQ(gclip_dependent_launch_wanted(major, nullptr), 0) << "compute capability " << major;
}

TEST(DependentLaunch, OneTurnsItOnFromComputeCapabilityNine)
{
    EXPECT_EQ(gclip_dependent_launch_wanted(7, "1"), 0);
    EXPECT_EQ(gclip_dependent_launch_wanted(8, "1"), 0);
    EXPECT_EQ(gclip_dependent_launch_wanted(9, "1"), 1);
    EXPECT_EQ(gclip_dependent_launch_wanted(10, "1"), 1);
    EXPECT_EQ(gclip_dependent_launch_wanted(12, "1"), 1);
}

TEST(DependentLaunch, OtherSettingsKeepItOff)
{
    for (const char *s : {"", "0", "yes", "01", " 1", "1 ", "true"}) {
        EXPECT_EQ(gclip_dependent_launch_wanted(8, s), 0) << "'" << s << "' on 8.x";
        EXPECT_EQ(gclip_dependent_launch_wanted(9, s), 0) << "'" << s << "' on 9.x";
    }
}

namespace {

// A CPU plan over tensors of the given element counts (f32, or f16 where
// `half`), carved from one 16-byte aligned buffer with `skew` bytes before
// the first; the buffer holds seeded random values (the plan reads none).
struct Carved {
    std::vector<float> storage;
    gclip_plan *plan = nullptr;
    Carved(const std::vector<int64_t> &numels, bool half, size_t skew)
    {
        const int es = half ? 2 : 4;
        int64_t total = 0;
        for (int64_t n : numels)
            total += n;
        storage.resize((size_t)(total * es + skew) / sizeof(float) + 8);
        std::mt19937 rng(7);
        std::normal_distribution<float> d(0.0f, 1.0f);
        for (float &x : storage)
            x = d(rng);
        char *p = (char *)storage.data() + (16 - (uintptr_t)storage.data() % 16) % 16 + skew;
        std::vector<gclip_tensor> ts;
        for (int64_t n : numels) {
            ts.push_back({p, n, half ? GCLIP_F16 : GCLIP_F32});
            p += n * es;
        }
        EXPECT_EQ(gclip_plan_create(&plan, ts.data(), ts.size(), GCLIP_DEVICE_CPU),
                  GCLIP_STATUS_SUCCESS);
    }
    ~Carved() { gclip_plan_destroy(plan); }
};

} // namespace

TEST(ScaleBlocks, TwoForLargeChunks)
{
    // GPT-2-like shapes: 53 chunks, none small (2,304 f32 are 576 vectors)
    Carved c({1 << 20, 768 * 2304, 2304, 768 * 768}, false, 0);
    ASSERT_NE(c.plan, nullptr);
    EXPECT_EQ(gclip_scale_blocks_wanted(4, c.plan), 2);
    EXPECT_EQ(gclip_scale_blocks_wanted(8, c.plan), 2);
    EXPECT_EQ(gclip_scale_blocks_wanted(1, c.plan), 1); // never more than fit
    EXPECT_EQ(gclip_scale_blocks_wanted(0, c.plan), 0);
}

TEST(ScaleBlocks, AsManyAsFitForSmallChunks)
{
    // 100,000 x 100 f32 and 2,000 x 1,000 f32 (250 vectors: small)
    Carved tiny(std::vector<int64_t>(100000, 100), false, 0);
    Carved small(std::vector<int64_t>(2000, 1000), false, 0);
    for (const Carved *c : {&tiny, &small}) {
        ASSERT_NE(c->plan, nullptr);
        EXPECT_EQ(gclip_scale_blocks_wanted(4, c->plan), 4);
        EXPECT_EQ(gclip_scale_blocks_wanted(6, c->plan), 6);
        EXPECT_EQ(gclip_scale_blocks_wanted(1, c->plan), 1);
    }
}

TEST(ScaleBlocks, SmallMeansAtMostOneVectorPerThread)
{
    // 1,024 f32 are 256 vectors when aligned: small; unaligned by 4 bytes they
    // are a head of 3, 255 vectors and a tail of 1: small too. 1,032 f32 are
    // 258 vectors: not small. 2,048 f16 are 256 vectors.
    Carved at(std::vector<int64_t>(10, 1024), false, 0);
    Carved off(std::vector<int64_t>(10, 1024), false, 4);
    Carved over(std::vector<int64_t>(10, 1032), false, 0);
    Carved halves(std::vector<int64_t>(10, 2048), true, 0);
    Carved halves_over(std::vector<int64_t>(10, 2064), true, 0);
    EXPECT_EQ(gclip_scale_blocks_wanted(4, at.plan), 4);
    EXPECT_EQ(gclip_scale_blocks_wanted(4, off.plan), 4);
    EXPECT_EQ(gclip_scale_blocks_wanted(4, over.plan), 2);
    EXPECT_EQ(gclip_scale_blocks_wanted(4, halves.plan), 4);
    EXPECT_EQ(gclip_scale_blocks_wanted(4, halves_over.plan), 2);
}

TEST(ScaleBlocks, HalfTheChunksSmallIsEnough)
{
    // 3 tensors of 4 large chunks each (12) beside 12 small tensors: half
    std::vector<int64_t> half(3, 4 * 65536), fewer(3, 4 * 65536);
    for (int i = 0; i < 12; i++)
        half.push_back(100);
    for (int i = 0; i < 11; i++)
        fewer.push_back(100);
    Carved h(half, false, 0), f(fewer, false, 0);
    EXPECT_EQ(gclip_scale_blocks_wanted(4, h.plan), 4);
    EXPECT_EQ(gclip_scale_blocks_wanted(4, f.plan), 2);
}
