// gclip_plan_rebind: new data pointers for the same shapes. On success the
// next step works on the new buffers only; on every failure the plan keeps
// its old pointers (proved by clipping afterwards) and nothing is written.
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
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
        const gclip_result clipped = testutil::result_of(plan.get());
        const float factor = clipped.scale;
        ASSERT_LT(factor, 1.0f);
        EXPECT_EQ(clipped.total_norm, r.total_norm) << what;
        EXPECT_EQ(factor, oracle::expected_op_coef(clipped.total_norm, o.max_norm, o.eps)) << what;
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

namespace {

// Rebinding every step (as a framework whose allocator hands gradients new
// addresses does): addresses in the same order as before take a linear
// check, any other order the full one. Either way the verdict must equal a
// brute-force pairwise overlap test, and a rejected rebind keeps the plan.
TEST(RebindEveryStep, VerdictEqualsPairwiseOverlapWhateverTheAddressOrder)
{
    constexpr int kTensors = 40;
    constexpr int64_t kElems = 16; // f32: 64 bytes each
    std::vector<float> arena(kTensors * kElems * 3);
    oracle::Rng rng(4242);
    std::vector<int64_t> sizes(kTensors);
    for (int i = 0; i < kTensors; ++i)
        sizes[i] = i % 7 == 3 ? 0 : rng.range(1, kElems);
    auto tensors_at = [&](const std::vector<int64_t> &slot) {
        std::vector<gclip_tensor> t(kTensors);
        for (int i = 0; i < kTensors; ++i)
            t[i] = gclip_tensor{arena.data() + slot[i], sizes[i], GCLIP_F32};
        return t;
    };
    auto pairwise_overlap = [&](const std::vector<int64_t> &slot) {
        for (int a = 0; a < kTensors; ++a)
            for (int b = a + 1; b < kTensors; ++b)
                if (sizes[a] > 0 && sizes[b] > 0 && slot[a] < slot[b] + sizes[b] &&
                    slot[b] < slot[a] + sizes[a])
                    return true;
        return false;
    };
    std::vector<int64_t> slot(kTensors);
    for (int i = 0; i < kTensors; ++i)
        slot[i] = i * kElems;
    PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, tensors_at(slot)), GCLIP_STATUS_SUCCESS);
    std::vector<int64_t> bound = slot; // what the plan points at
    int rejected = 0, same_order = 0;
    for (int step = 0; step < 400; ++step) {
        std::vector<int64_t> next = bound;
        switch (step % 4) {
        case 0: // same order, shifted: the linear check suffices
            for (auto &s : next)
                s += kElems * kTensors;
            ++same_order;
            break;
        case 1: // a fresh random placement
            for (int i = 0; i < kTensors; ++i)
                next[i] = (rng.range(0, 3 * kTensors - 1)) * kElems / 2;
            break;
        case 2: // one tensor moved onto a random neighbour's bytes
            next[rng.range(0, kTensors - 1)] = next[rng.range(0, kTensors - 1)] + rng.range(0, 3);
            break;
        default: // back to disjoint slots in a shuffled order
            for (int i = 0; i < kTensors; ++i)
                next[i] = ((i * 17) % kTensors) * kElems;
            break;
        }
        for (auto &s : next)
            s %= static_cast<int64_t>(arena.size()) - kElems;
        const auto t = tensors_at(next);
        std::vector<void *> ptrs;
        for (const auto &x : t)
            ptrs.push_back(x.data);
        const bool overlap = pairwise_overlap(next);
        const gclip_status s = gclip_plan_rebind(plan.get(), ptrs.data(), ptrs.size(), nullptr);
        ASSERT_EQ(s, overlap ? GCLIP_STATUS_OVERLAP : GCLIP_STATUS_SUCCESS) << "step " << step;
        if (overlap)
            ++rejected;
        else
            bound = next;
    }
    EXPECT_GT(rejected, 20);
    EXPECT_GT(same_order, 50);
    // the plan still reads what it was last bound to: seeded values all over
    // the arena, so that reading any other bytes (another tensor's slot, or
    // a slot it was bound to before) changes the norm
    for (float &x : arena)
        x = static_cast<float>(rng.uniform(0.5, 2.0) * (rng.range(0, 1) ? 1.0 : -1.0));
    long double sum = 0.0L;
    for (int i = 0; i < kTensors; ++i)
        for (int64_t e = 0; e < sizes[i]; ++e)
            sum += static_cast<long double>(arena[bound[i] + e]) * arena[bound[i] + e];
    ASSERT_EQ(gclip_total_norm(plan.get(), nullptr, nullptr), GCLIP_STATUS_SUCCESS);
    const float got = testutil::result_of(plan.get()).total_norm;
    EXPECT_TRUE(oracle::rel_close(got, std::sqrt(sum), 1e-6L)) << got;
}

} // namespace

// The CPU path keeps where each chunk's bytes are (its spans) and reads small
// tensors of whole 16-byte vectors from there: a rebind must move those too.
// Hundreds of such tensors of every 16-bit and 32-bit dtype, aligned, so
// every one takes that path; the old buffers stay alive with other values.
TEST(RebindSmallTensors, NormsAreThoseOfTheNewBuffers)
{
    oracle::Rng rng(4242);
    const gclip_dtype dts[] = {GCLIP_F32, GCLIP_BF16, GCLIP_F16};
    std::vector<TestBuffer> old_bufs, new_bufs;
    for (int i = 0; i < 300; ++i) {
        const gclip_dtype dt = dts[i % 3];
        const int64_t per_vector = dt == GCLIP_F32 ? 4 : 8;
        const int64_t numel = per_vector * rng.range(1, 40);
        old_bufs.emplace_back(dt, numel);
        old_bufs.back().fill(rng, 2.0);
        new_bufs.emplace_back(dt, numel);
        new_bufs.back().fill(rng, 5.0);
        ASSERT_EQ(reinterpret_cast<uintptr_t>(new_bufs.back().data()) % 16, 0u);
    }
    PlanPtr plan;
    ASSERT_EQ(testutil::make_plan(plan, oracle::tensors_of(old_bufs)), GCLIP_STATUS_SUCCESS);
    std::vector<void *> ptrs;
    for (const auto &b : new_bufs)
        ptrs.push_back(b.data());
    for (const float p : {2.0f, 1.0f}) {
        const long double want_old = oracle::norms(old_bufs, p).total;
        const long double want_new = oracle::norms(new_bufs, p).total;
        ASSERT_GT(std::fabs(want_old - want_new), 1e-3L * want_new) << "p " << p;
        gclip_norm_options o = testutil::norm_options(1.0f, p);
        ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        EXPECT_TRUE(oracle::rel_close(testutil::result_of(plan.get()).total_norm, want_old, 1e-6L))
            << "p " << p << " before the rebind";
        ASSERT_EQ(gclip_plan_rebind(plan.get(), ptrs.data(), ptrs.size(), nullptr),
                  GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        EXPECT_TRUE(oracle::rel_close(testutil::result_of(plan.get()).total_norm, want_new, 1e-6L))
            << "p " << p << ": the plan still reads the old buffers";
        std::vector<void *> back;
        for (const auto &b : old_bufs)
            back.push_back(b.data());
        ASSERT_EQ(gclip_plan_rebind(plan.get(), back.data(), back.size(), nullptr),
                  GCLIP_STATUS_SUCCESS);
    }
}
