// gclip_plan_rebind: new data pointers for the same shapes. On success the
// next step works on the new buffers only; on every failure the plan keeps
// its old pointers (proved by clipping afterwards) and nothing is written.
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using oracle::TestBuffer;
using testutil::PlanPtr;

namespace {

class Rebind : public ::testing::Test {
protected:
    void SetUp() override
    {
        oracle::Rng rng(777);
        const gclip_dtype dts[] = {GCLIP_F32, GCLIP_BF16, GCLIP_F16, GCLIP_F32};
        const int64_t sizes[] = {65537, 33, 8, 0};
        for (int i = 0; i < 4; ++i) {
            old_bufs.emplace_back(dts[i], sizes[i], i);
            old_bufs.back().fill(rng, 2.0);
            new_bufs.emplace_back(dts[i], sizes[i], 3 - i);
            new_bufs.back().fill(rng, 5.0);
        }
        ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(old_bufs)), GCLIP_STATUS_SUCCESS);
        for (const auto &b : new_bufs)
            new_ptrs.push_back(b.data());
        old_sum = oracle::checksum(old_bufs);
        new_sum = oracle::checksum(new_bufs);
    }

    // Rebinding with `ptrs` fails with `want`, says why, writes nothing, and
    // the plan still clips the old buffers.
    void expect_failed_rebind(const std::vector<void *> &ptrs, size_t count, gclip_status want,
                              const char *what)
    {
        const gclip_status s =
            gclip_plan_rebind(plan.get(), ptrs.empty() ? nullptr : ptrs.data(), count, nullptr);
        EXPECT_EQ(s, want) << what;
        last_msg = gclip_last_error(); // before later calls clear it
        EXPECT_NE(last_msg, "") << what;
        EXPECT_EQ(oracle::checksum(old_bufs), old_sum) << what;
        EXPECT_EQ(oracle::checksum(new_bufs), new_sum) << what;
        expect_plan_targets(old_bufs, new_bufs, what);
    }

    // A norm over the plan equals the oracle's norm of `target`, and a clip
    // changes `target` but not `other`.
    void expect_plan_targets(std::vector<TestBuffer> &target, std::vector<TestBuffer> &other,
                             const char *what)
    {
        ASSERT_EQ(gclip_total_norm(plan.get(), nullptr, nullptr), GCLIP_STATUS_SUCCESS) << what;
        const gclip_result r = testutil::result_of(plan.get());
        EXPECT_TRUE(oracle::rel_close(r.total_norm, oracle::norms(target, 2.0).total, 1e-6L))
            << what << ": the plan reads other data";
        const std::vector<TestBuffer> snapshot = target;
        const uint64_t other_sum = oracle::checksum(other);
        gclip_norm_options o = testutil::norm_options(r.total_norm / 4);
        ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS) << what;
        const float factor = testutil::result_of(plan.get()).scale;
        ASSERT_LT(factor, 1.0f);
        for (size_t k = 0; k < target.size(); ++k)
            for (int64_t i = 0; i < target[k].numel(); ++i)
                ASSERT_EQ(target[k].get(i),
                          oracle::expected_scaled(snapshot[k].get(i), factor, target[k].dtype()))
                    << what << " tensor " << k << " element " << i;
        EXPECT_EQ(oracle::checksum(other), other_sum) << what << ": the plan wrote other data";
        // undo in place (the plan points at these buffers), so later checks
        // see the original contents
        for (size_t k = 0; k < target.size(); ++k)
            target[k].copy_from(snapshot[k]);
    }

    std::vector<TestBuffer> old_bufs, new_bufs;
    std::vector<void *> new_ptrs;
    uint64_t old_sum = 0, new_sum = 0;
    std::string last_msg; // detail message of the last failed rebind
    PlanPtr plan;
};

TEST_F(Rebind, MovesTheStepsToTheNewBuffers)
{
    ASSERT_EQ(gclip_plan_rebind(plan.get(), new_ptrs.data(), new_ptrs.size(), nullptr),
              GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    EXPECT_EQ(oracle::checksum(new_bufs), new_sum) << "rebind itself writes nothing";
    expect_plan_targets(new_bufs, old_bufs, "after rebind");
    // and back again
    std::vector<void *> old_ptrs;
    for (const auto &b : old_bufs)
        old_ptrs.push_back(b.data());
    ASSERT_EQ(gclip_plan_rebind(plan.get(), old_ptrs.data(), old_ptrs.size(), nullptr),
              GCLIP_STATUS_SUCCESS);
    expect_plan_targets(old_bufs, new_bufs, "after rebinding back");
}

TEST_F(Rebind, NullPlan)
{
    EXPECT_EQ(gclip_plan_rebind(nullptr, new_ptrs.data(), new_ptrs.size(), nullptr),
              GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_STRNE(gclip_last_error(), "");
}

TEST_F(Rebind, NullArray)
{
    expect_failed_rebind({}, new_ptrs.size(), GCLIP_STATUS_INVALID_ARGUMENT, "data NULL");
}

TEST_F(Rebind, WrongCount)
{
    expect_failed_rebind(new_ptrs, new_ptrs.size() - 1, GCLIP_STATUS_INVALID_ARGUMENT, "count - 1");
    auto more = new_ptrs;
    more.push_back(nullptr);
    expect_failed_rebind(more, more.size(), GCLIP_STATUS_INVALID_ARGUMENT, "count + 1");
}

TEST_F(Rebind, NullPointerForATensorWithElements)
{
    auto p = new_ptrs;
    p[1] = nullptr;
    expect_failed_rebind(p, p.size(), GCLIP_STATUS_INVALID_ARGUMENT, "NULL data");
}

TEST_F(Rebind, NullPointerForAnEmptyTensorIsFine)
{
    auto p = new_ptrs;
    p[3] = nullptr; // tensor 3 has no elements
    ASSERT_EQ(gclip_plan_rebind(plan.get(), p.data(), p.size(), nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    expect_plan_targets(new_bufs, old_bufs, "empty tensor NULL");
}

TEST_F(Rebind, MisalignedPointer)
{
    auto p = new_ptrs;
    p[2] = static_cast<char *>(p[2]) + 1; // f16 tensor one byte off
    expect_failed_rebind(p, p.size(), GCLIP_STATUS_MISALIGNED, "misaligned f16");
    EXPECT_TRUE(testutil::names_index(last_msg, 2)) << last_msg;
    p = new_ptrs;
    p[0] = static_cast<char *>(p[0]) + 2; // f32 tensor two bytes off
    expect_failed_rebind(p, p.size(), GCLIP_STATUS_MISALIGNED, "misaligned f32");
}

TEST_F(Rebind, RepeatedPointerNamesBothIndices)
{
    auto p = new_ptrs;
    p[2] = p[1]; // bf16 of 33 and f16 of 8 at the same address
    expect_failed_rebind(p, p.size(), GCLIP_STATUS_OVERLAP, "repeat");
    EXPECT_TRUE(testutil::names_index(last_msg, 1)) << last_msg;
    EXPECT_TRUE(testutil::names_index(last_msg, 2)) << last_msg;
}

TEST_F(Rebind, OverlapWithANewNeighbour)
{
    auto p = new_ptrs;
    // tensor 1 (33 bf16) placed inside tensor 0's new buffer
    p[1] = static_cast<char *>(p[0]) + 4 * 100;
    expect_failed_rebind(p, p.size(), GCLIP_STATUS_OVERLAP, "overlap");
    EXPECT_TRUE(testutil::names_index(last_msg, 0)) << last_msg;
    EXPECT_TRUE(testutil::names_index(last_msg, 1)) << last_msg;
}

} // namespace
