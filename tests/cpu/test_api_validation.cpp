// Every bad input of the validation table in docs/semantics.md: the exact
// status, a non-empty detail message, and a checksum over every gradient
// proving that nothing was written. Also the library queries (version,
// status strings, device ordinals).
#include "gclip_adapt.h"
#include "oracle.hpp"
#include "plan_util.hpp"

#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

using oracle::TestBuffer;
using testutil::make_plan;
using testutil::PlanPtr;

namespace {

// ---- library queries ---------------------------------------------------------

TEST(LibraryQueries, VersionMatchesTheHeader)
{
    EXPECT_EQ(gclip_get_version(), GCLIP_VERSION);
    EXPECT_EQ(GCLIP_VERSION,
              GCLIP_VERSION_MAJOR * 10000 + GCLIP_VERSION_MINOR * 100 + GCLIP_VERSION_PATCH);
}

TEST(LibraryQueries, EveryStatusHasItsOwnNonEmptyString)
{
    std::set<std::string> seen;
    for (int s = GCLIP_STATUS_SUCCESS; s <= GCLIP_STATUS_INTERNAL_ERROR; ++s) {
        const char *text = gclip_status_string(static_cast<gclip_status>(s));
        ASSERT_NE(text, nullptr) << s;
        EXPECT_GT(std::string(text).size(), 0u) << s;
        EXPECT_TRUE(seen.insert(text).second) << "duplicate string for status " << s;
    }
    // a value outside the enum still gets a sentence, never NULL
    const char *unknown = gclip_status_string(static_cast<gclip_status>(1234));
    ASSERT_NE(unknown, nullptr);
    EXPECT_GT(std::string(unknown).size(), 0u);
}

TEST(LibraryQueries, StatusNumbersAreTheAbi)
{
    EXPECT_EQ(GCLIP_STATUS_SUCCESS, 0);
    EXPECT_EQ(GCLIP_STATUS_INVALID_ARGUMENT, 1);
    EXPECT_EQ(GCLIP_STATUS_MISALIGNED, 2);
    EXPECT_EQ(GCLIP_STATUS_OVERLAP, 3);
    EXPECT_EQ(GCLIP_STATUS_NOT_SUPPORTED, 4);
    EXPECT_EQ(GCLIP_STATUS_NO_DEVICE, 5);
    EXPECT_EQ(GCLIP_STATUS_OUT_OF_MEMORY, 6);
    EXPECT_EQ(GCLIP_STATUS_CUDA_ERROR, 7);
    EXPECT_EQ(GCLIP_STATUS_NONFINITE, 8);
    EXPECT_EQ(GCLIP_STATUS_INTERNAL_ERROR, 9);
}

TEST(LibraryQueries, LastErrorIsPerThread)
{
    gclip_plan *p = nullptr;
    ASSERT_EQ(gclip_plan_create(&p, nullptr, 3, GCLIP_DEVICE_CPU), GCLIP_STATUS_INVALID_ARGUMENT);
    const std::string mine = gclip_last_error();
    EXPECT_FALSE(mine.empty());
    std::string other = "unset";
    std::thread([&] { other = gclip_last_error(); }).join();
    EXPECT_EQ(other, "");
    EXPECT_EQ(std::string(gclip_last_error()), mine);
}

// ---- fixture: a few seeded gradients and a checksum over them ---------------

class Validation : public ::testing::Test {
protected:
    void SetUp() override
    {
        oracle::Rng rng(20240601);
        const gclip_dtype dts[] = {GCLIP_F32, GCLIP_F16, GCLIP_BF16, GCLIP_F32, GCLIP_F16};
        const int64_t sizes[] = {7, 65537, 5, 1000, 3};
        for (int i = 0; i < 5; ++i) {
            bufs.emplace_back(dts[i], sizes[i], i % 3);
            bufs.back().fill(rng, 4.0);
        }
        tensors = oracle::tensors_of(bufs);
        before = oracle::checksum(bufs);
        ASSERT_EQ(make_plan(plan, tensors), GCLIP_STATUS_SUCCESS) << gclip_last_error();
        // a first, successful clip so the result slot holds known values
        gclip_norm_options o = testutil::norm_options(1e30f);
        ASSERT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
        ASSERT_EQ(oracle::checksum(bufs), before); // factor 1: nothing written
    }

    // The call was rejected with `want`, said why, and wrote nothing.
    void expect_rejected(gclip_status got, gclip_status want, const char *what)
    {
        EXPECT_EQ(got, want) << what;
        EXPECT_STRNE(gclip_last_error(), "") << what;
        EXPECT_EQ(oracle::checksum(bufs), before) << what << ": a gradient changed";
    }

    std::vector<TestBuffer> bufs;
    std::vector<gclip_tensor> tensors;
    uint64_t before = 0;
    PlanPtr plan;
};

// Plan creation with a modified copy of the fixture's list; *plan must be
// NULL afterwards.
gclip_status create_with(const std::vector<gclip_tensor> &t, int device = GCLIP_DEVICE_CPU)
{
    gclip_plan *p = reinterpret_cast<gclip_plan *>(&p); // any non-NULL value
    const gclip_status s = gclip_plan_create(&p, t.data(), t.size(), device);
    if (s == GCLIP_STATUS_SUCCESS)
        gclip_plan_destroy(p);
    else
        EXPECT_EQ(p, nullptr) << "a failed create must set *plan to NULL";
    return s;
}

// ---- plan creation --------------------------------------------------------

TEST_F(Validation, NullPlanPointer)
{
    expect_rejected(gclip_plan_create(nullptr, tensors.data(), tensors.size(), GCLIP_DEVICE_CPU),
                    GCLIP_STATUS_INVALID_ARGUMENT, "plan NULL");
}

// A count the kernels' 32-bit loops over the tensors could wrap past is
// refused before the list is read (the array here is five tensors long);
// 2^31 - 1 itself passes the count check and fails on the list (NULL).
TEST_F(Validation, CountAboveInt32Max)
{
    gclip_plan *p = reinterpret_cast<gclip_plan *>(&p);
    for (size_t count : {static_cast<size_t>(INT32_MAX) + 1, static_cast<size_t>(UINT32_MAX),
                         static_cast<size_t>(UINT32_MAX) + 1}) {
        expect_rejected(gclip_plan_create(&p, tensors.data(), count, GCLIP_DEVICE_CPU),
                        GCLIP_STATUS_INVALID_ARGUMENT, "count above INT32_MAX");
        EXPECT_NE(std::string(gclip_last_error()).find("exceeds"), std::string::npos)
            << gclip_last_error();
        EXPECT_EQ(p, nullptr);
    }
    expect_rejected(gclip_plan_create(&p, nullptr, INT32_MAX, GCLIP_DEVICE_CPU),
                    GCLIP_STATUS_INVALID_ARGUMENT, "INT32_MAX tensors, NULL list");
    EXPECT_NE(std::string(gclip_last_error()).find("tensors is NULL"), std::string::npos)
        << gclip_last_error();
}

TEST_F(Validation, NullListWithPositiveCount)
{
    gclip_plan *p = reinterpret_cast<gclip_plan *>(&p);
    expect_rejected(gclip_plan_create(&p, nullptr, 5, GCLIP_DEVICE_CPU), GCLIP_STATUS_INVALID_ARGUMENT,
                    "tensors NULL");
    EXPECT_EQ(p, nullptr);
}

TEST_F(Validation, NegativeNumelNamesTheIndex)
{
    auto t = tensors;
    t[3].numel = -1;
    expect_rejected(create_with(t), GCLIP_STATUS_INVALID_ARGUMENT, "numel < 0");
    EXPECT_TRUE(testutil::names_index(gclip_last_error(), 3)) << gclip_last_error();
}

TEST_F(Validation, NullDataWithElementsNamesTheIndex)
{
    auto t = tensors;
    t[2].data = nullptr;
    expect_rejected(create_with(t), GCLIP_STATUS_INVALID_ARGUMENT, "data NULL");
    EXPECT_TRUE(testutil::names_index(gclip_last_error(), 2)) << gclip_last_error();
}

TEST_F(Validation, UnknownDtypeNamesTheIndex)
{
    for (int bad : {4, -1, 100}) {
        auto t = tensors;
        t[4].dtype = static_cast<gclip_dtype>(bad);
        expect_rejected(create_with(t), GCLIP_STATUS_INVALID_ARGUMENT, "dtype");
        EXPECT_TRUE(testutil::names_index(gclip_last_error(), 4)) << gclip_last_error();
    }
}

TEST_F(Validation, MisalignedDataNamesTheIndex)
{
    // f32 one and two bytes off its element size; f16/bf16 one byte off
    for (int k : {0, 1, 2}) {
        for (int shift : {1, 2, 3}) {
            if (k != 0 && shift != 1)
                continue;
            auto t = tensors;
            t[k].data = static_cast<char *>(t[k].data) + shift;
            t[k].numel -= 1; // stay inside the allocation
            expect_rejected(create_with(t), GCLIP_STATUS_MISALIGNED, "misaligned");
            EXPECT_TRUE(testutil::names_index(gclip_last_error(), k)) << gclip_last_error();
        }
    }
}

TEST_F(Validation, NullDataWithZeroElementsIsAccepted)
{
    auto t = tensors;
    t.push_back(gclip_tensor{nullptr, 0, GCLIP_F16});
    t.push_back(gclip_tensor{nullptr, 0, GCLIP_F32});
    EXPECT_EQ(create_with(t), GCLIP_STATUS_SUCCESS) << gclip_last_error();
}

TEST_F(Validation, EmptyListIsAcceptedAndHasNormZero)
{
    for (bool null_list : {true, false}) {
        gclip_plan *p = nullptr;
        gclip_tensor dummy{};
        ASSERT_EQ(gclip_plan_create(&p, null_list ? nullptr : &dummy, 0, GCLIP_DEVICE_CPU),
                  GCLIP_STATUS_SUCCESS);
        PlanPtr guard(p);
        gclip_norm_options o = testutil::norm_options(1.0f);
        ASSERT_EQ(gclip_clip_grad_norm(p, &o, nullptr), GCLIP_STATUS_SUCCESS);
        const gclip_result r = testutil::result_of(p);
        EXPECT_EQ(r.total_norm, 0.0f);
        EXPECT_EQ(r.clip_coef, 1.0f);
        EXPECT_EQ(r.scale, 1.0f);
        EXPECT_EQ(r.nonfinite, 0);
        EXPECT_EQ(r.has_norm, 1);
    }
}

TEST_F(Validation, RepeatedTensorNamesBothIndices)
{
    auto t = tensors;
    t.push_back(t[1]); // tied weights passed twice: index 1 and index 5
    expect_rejected(create_with(t), GCLIP_STATUS_OVERLAP, "repeat");
    EXPECT_TRUE(testutil::names_index(gclip_last_error(), 1)) << gclip_last_error();
    EXPECT_TRUE(testutil::names_index(gclip_last_error(), 5)) << gclip_last_error();
}

TEST_F(Validation, OneSharedByteIsAnOverlap)
{
    // tensor 5 is a f16 view starting at the last 2 bytes of tensor 3 (f32)
    auto t = tensors;
    char *last = static_cast<char *>(t[3].data) + 4 * (t[3].numel - 1) + 2;
    t.push_back(gclip_tensor{last, 1, GCLIP_F16});
    expect_rejected(create_with(t), GCLIP_STATUS_OVERLAP, "one byte");
    EXPECT_TRUE(testutil::names_index(gclip_last_error(), 3)) << gclip_last_error();
    EXPECT_TRUE(testutil::names_index(gclip_last_error(), 5)) << gclip_last_error();
}

TEST_F(Validation, TensorInsideAnotherIsAnOverlap)
{
    auto t = tensors;
    // tensor 0 becomes a view into the middle of tensor 1, listed first
    t[0] = gclip_tensor{static_cast<char *>(t[1].data) + 2 * 1000, 10, GCLIP_BF16};
    expect_rejected(create_with(t), GCLIP_STATUS_OVERLAP, "nested");
    EXPECT_TRUE(testutil::names_index(gclip_last_error(), 0)) << gclip_last_error();
    EXPECT_TRUE(testutil::names_index(gclip_last_error(), 1)) << gclip_last_error();
}

// A buffer whose last byte would lie past the top of the address space
// (its end wraps around to low addresses) is refused before any overlap
// test could be fooled by the wrapped end.
TEST_F(Validation, BufferRunningPastTheAddressSpaceIsRefused)
{
    const uintptr_t top = UINTPTR_MAX - 4095; // 4 KiB below the top, aligned
    std::vector<gclip_tensor> t = {
        {reinterpret_cast<void *>(top), 1023, GCLIP_F32},  // ends 4 bytes below the top: fits
        {reinterpret_cast<void *>(top), 1024, GCLIP_F32},  // its end, 2^64, wraps to 0
        {reinterpret_cast<void *>(top), int64_t(1) << 40, GCLIP_F32}};
    EXPECT_EQ(create_with({t[0]}), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    for (size_t k = 1; k < t.size(); ++k) {
        EXPECT_EQ(create_with({t[k]}), GCLIP_STATUS_INVALID_ARGUMENT) << "numel " << t[k].numel;
        EXPECT_NE(std::string(gclip_last_error()).find("address space"), std::string::npos)
            << gclip_last_error();
        // with a real tensor beside it
        EXPECT_EQ(create_with({tensors[0], t[k]}), GCLIP_STATUS_INVALID_ARGUMENT);
    }
    // a rebind to such a buffer is refused too, and keeps the old pointers
    std::vector<void *> moved; // tensor 0: 7 f32, 28 bytes
    for (const gclip_tensor &x : tensors)
        moved.push_back(x.data);
    ASSERT_EQ(tensors[0].dtype, GCLIP_F32);
    moved[0] = reinterpret_cast<void *>(UINTPTR_MAX - 7);
    expect_rejected(gclip_plan_rebind(plan.get(), moved.data(), moved.size(), nullptr),
                    GCLIP_STATUS_INVALID_ARGUMENT, "rebind past the top");
    gclip_norm_options o = testutil::norm_options(1e30f);
    EXPECT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS); // old pointers
}

TEST_F(Validation, AdjacentViewsOfOneBufferAreNotAnOverlap)
{
    TestBuffer whole(GCLIP_F32, 100);
    oracle::Rng rng(3);
    whole.fill(rng, 1.0);
    float *f = static_cast<float *>(whole.data());
    std::vector<gclip_tensor> t = {{f, 40, GCLIP_F32}, {f + 40, 60, GCLIP_F32}};
    EXPECT_EQ(create_with(t), GCLIP_STATUS_SUCCESS) << gclip_last_error();
    // an empty tensor owns no bytes, wherever it points
    t.push_back(gclip_tensor{f + 10, 0, GCLIP_F32});
    EXPECT_EQ(create_with(t), GCLIP_STATUS_SUCCESS) << gclip_last_error();
}

TEST_F(Validation, DeviceBelowMinusOneIsInvalid)
{
    for (int d : {-2, -100})
        expect_rejected(create_with(tensors, d), GCLIP_STATUS_INVALID_ARGUMENT, "device < -1");
}

TEST_F(Validation, CudaOrdinalWithoutTheBackendOrDevice)
{
    const int n = gclip_cuda_device_count();
    ASSERT_GE(n, 0);
#if GCLIP_TEST_HAVE_CUDA
    // with the backend, an ordinal past the last device does not exist
    expect_rejected(create_with(tensors, n), GCLIP_STATUS_NO_DEVICE, "ordinal >= count");
    expect_rejected(create_with(tensors, n + 7), GCLIP_STATUS_NO_DEVICE, "ordinal >= count");
#else
    EXPECT_EQ(n, 0) << "a build without CUDA counts no device";
    expect_rejected(create_with(tensors, 0), GCLIP_STATUS_NOT_SUPPORTED, "no CUDA build");
    expect_rejected(create_with(tensors, 3), GCLIP_STATUS_NOT_SUPPORTED, "no CUDA build");
#endif
}

// ---- options of the norm operations -----------------------------------------

using NormOp = gclip_status (*)(gclip_plan *, const gclip_norm_options *, gclip_stream);

struct NamedOp {
    const char *name;
    NormOp fn;
};

const NamedOp kNormOps[] = {{"total_norm", gclip_total_norm},
                            {"clip_grad_norm", gclip_clip_grad_norm},
                            {"clip_grad_norm_per_tensor", gclip_clip_grad_norm_per_tensor}};

// Each option's bad values, as {field setter, values}.
struct BadOption {
    const char *field;
    void (*set)(gclip_norm_options &, float);
    std::vector<float> values;
};

std::vector<BadOption> bad_options()
{
    const float nan = NAN, inf = INFINITY;
    return {
        {"max_norm", [](gclip_norm_options &o, float v) { o.max_norm = v; }, {nan, -1.0f, -1e-30f, -inf}},
        {"norm_type", [](gclip_norm_options &o, float v) { o.norm_type = v; }, {nan, 0.0f, -0.0f, -2.0f, -inf}},
        {"eps", [](gclip_norm_options &o, float v) { o.eps = v; }, {nan, inf, -1e-6f}},
        {"inv_scale", [](gclip_norm_options &o, float v) { o.inv_scale = v; }, {nan, inf, 0.0f, -1.0f}},
        {"nonfinite", [](gclip_norm_options &o, float v) { o.nonfinite = static_cast<gclip_nonfinite_policy>(static_cast<int>(v)); }, {3.0f, -1.0f}},
    };
}

TEST_F(Validation, EveryBadOptionOfEveryNormOperation)
{
    for (const NamedOp &op : kNormOps) {
        for (const BadOption &bad : bad_options()) {
            for (float v : bad.values) {
                gclip_norm_options o = testutil::norm_options(0.01f); // would clip
                bad.set(o, v);
                const std::string what = std::string(op.name) + " " + bad.field + "=" + std::to_string(v);
                expect_rejected(op.fn(plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT, what.c_str());
            }
        }
    }
}

TEST_F(Validation, NullOptionsOnlyForTotalNorm)
{
    expect_rejected(gclip_clip_grad_norm(plan.get(), nullptr, nullptr), GCLIP_STATUS_INVALID_ARGUMENT,
                    "clip_grad_norm options NULL");
    expect_rejected(gclip_clip_grad_norm_per_tensor(plan.get(), nullptr, nullptr),
                    GCLIP_STATUS_INVALID_ARGUMENT, "per_tensor options NULL");
    // NULL means the defaults for the total norm: L2, no scale
    ASSERT_EQ(gclip_total_norm(plan.get(), nullptr, nullptr), GCLIP_STATUS_SUCCESS);
    const gclip_result r = testutil::result_of(plan.get());
    EXPECT_TRUE(oracle::rel_close(r.total_norm, oracle::norms(bufs, 2.0).total, 1e-6L));
    EXPECT_EQ(oracle::checksum(bufs), before);
}

TEST_F(Validation, NullPlanForEveryStepCall)
{
    gclip_norm_options o = testutil::norm_options(0.01f);
    for (const NamedOp &op : kNormOps)
        expect_rejected(op.fn(nullptr, &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT, op.name);
    expect_rejected(gclip_clip_grad_value(nullptr, 1.0f, nullptr), GCLIP_STATUS_INVALID_ARGUMENT,
                    "value NULL plan");
    expect_rejected(gclip_clip_grad_value_f64(nullptr, 1.0, nullptr),
                    GCLIP_STATUS_INVALID_ARGUMENT, "value_f64 NULL plan");
}

TEST_F(Validation, BadClipValue)
{
    for (float v : {NAN, -1.0f, -1e-30f, -INFINITY})
        expect_rejected(gclip_clip_grad_value(plan.get(), v, nullptr), GCLIP_STATUS_INVALID_ARGUMENT,
                        ("clip_value " + std::to_string(v)).c_str());
    // the double bound: also below float's range (-1e-300 would round to -0.0f)
    for (double v : {static_cast<double>(NAN), -1.0, -1e-300, -static_cast<double>(INFINITY)}) {
        expect_rejected(gclip_clip_grad_value_f64(plan.get(), v, nullptr),
                        GCLIP_STATUS_INVALID_ARGUMENT, ("clip_value f64 " + std::to_string(v)).c_str());
        EXPECT_NE(std::string(gclip_last_error()).find("clip_value"), std::string::npos)
            << gclip_last_error();
    }
}

TEST_F(Validation, RejectedStepLeavesThePreviousResult)
{
    const gclip_result r0 = testutil::result_of(plan.get());
    gclip_norm_options o = testutil::norm_options(-1.0f);
    expect_rejected(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_INVALID_ARGUMENT,
                    "negative max_norm");
    const gclip_result r1 = testutil::result_of(plan.get());
    EXPECT_EQ(r1.total_norm, r0.total_norm);
    EXPECT_EQ(r1.clip_coef, r0.clip_coef);
    EXPECT_EQ(r1.scale, r0.scale);
    EXPECT_EQ(r1.has_norm, r0.has_norm);
}

// max_norm_ptr and inv_scale_ptr into the plan's own result slot, which the
// step rewrites while it reads them: refused, naming the field, nothing
// written; a pointer just past the slot is fine.
TEST_F(Validation, ScalarPointersIntoThePlansOwnResultSlot)
{
    const gclip_device_result *slot = nullptr;
    ASSERT_EQ(gclip_plan_device_result(plan.get(), &slot), GCLIP_STATUS_SUCCESS);
    const float *inside[] = {&slot->total_norm, &slot->scale,
                             reinterpret_cast<const float *>(&slot->sequence)};
    for (const float *p : inside) {
        gclip_norm_options o = testutil::norm_options(1e-3f);
        o.max_norm_ptr = p;
        expect_rejected(gclip_clip_grad_norm(plan.get(), &o, nullptr),
                        GCLIP_STATUS_INVALID_ARGUMENT, "max_norm_ptr in the slot");
        EXPECT_NE(std::string(gclip_last_error()).find("max_norm_ptr"), std::string::npos);
        o = testutil::norm_options(1e-3f);
        o.inv_scale_ptr = p;
        expect_rejected(gclip_compute_clip_factor(plan.get(), &o, nullptr),
                        GCLIP_STATUS_INVALID_ARGUMENT, "inv_scale_ptr in the slot");
        EXPECT_NE(std::string(gclip_last_error()).find("inv_scale_ptr"), std::string::npos);
    }
    // a value of the caller's own, beside the slot's memory, is taken
    const float max_norm = 1e30f;
    gclip_norm_options o = testutil::norm_options(1.0f);
    o.max_norm_ptr = &max_norm;
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    EXPECT_EQ(oracle::checksum(bufs), before);
}

// The float pointers of the options (max_norm_ptr, inv_scale_ptr,
// tensor_norms) and clip_grads_with_norm's total_norm_ptr must be aligned
// to a float, as a kernel's load or store of them needs: each at 1, 2 and 3
// bytes past a float is refused with MISALIGNED naming it, under every
// step that takes it (an adaptive's base options included), and nothing is
// written; at the float itself each is taken.
TEST_F(Validation, MisalignedFloatPointersAreRefused)
{
    alignas(16) unsigned char mem[128] = {}; // floats at 16, 32; tensor_norms at 64
    const float one = 1e30f, big_scale = 1.0f;
    std::memcpy(mem + 16, &one, 4); // for max_norm_ptr and total_norm_ptr
    std::memcpy(mem + 32, &big_scale, 4);
    for (int off : {1, 2, 3}) {
        SCOPED_TRACE("offset " + std::to_string(off));
        const auto named = [](const char *name) {
            EXPECT_NE(std::string(gclip_last_error()).find(name), std::string::npos)
                << gclip_last_error();
        };
        gclip_norm_options o = testutil::norm_options(1e-3f);
        o.max_norm_ptr = reinterpret_cast<const float *>(mem + 16 + off);
        expect_rejected(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_MISALIGNED,
                        "clip_grad_norm, max_norm_ptr");
        named("max_norm_ptr");
        expect_rejected(gclip_compute_clip_factor(plan.get(), &o, nullptr),
                        GCLIP_STATUS_MISALIGNED, "compute_clip_factor, max_norm_ptr");
        o = testutil::norm_options(1e-3f);
        o.inv_scale_ptr = reinterpret_cast<const float *>(mem + 32 + off);
        expect_rejected(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr),
                        GCLIP_STATUS_MISALIGNED, "per-tensor, inv_scale_ptr");
        named("inv_scale_ptr");
        o = testutil::norm_options(1e-3f);
        o.tensor_norms = reinterpret_cast<float *>(mem + 64 + off);
        expect_rejected(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_MISALIGNED,
                        "total_norm, tensor_norms");
        named("tensor_norms");
        expect_rejected(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_MISALIGNED,
                        "clip_grad_norm, tensor_norms");
        o = testutil::norm_options(1e-3f);
        expect_rejected(gclip_clip_grads_with_norm(plan.get(), &o, 0.0f,
                                                   reinterpret_cast<const float *>(mem + 16 + off),
                                                   nullptr),
                        GCLIP_STATUS_MISALIGNED, "clip_grads_with_norm, total_norm_ptr");
        named("total_norm_ptr");
        gclip_adaptive_options ao = GCLIP_ADAPTIVE_OPTIONS_INIT;
        ao.method = GCLIP_ADAPTIVE_ZCLIP;
        gclip_adaptive *ad = nullptr;
        ASSERT_EQ(gclip_adaptive_create(&ad, plan.get(), &ao), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
        o = testutil::norm_options(1e-3f);
        o.inv_scale_ptr = reinterpret_cast<const float *>(mem + 32 + off);
        expect_rejected(gclip_adaptive_step(ad, &o, nullptr), GCLIP_STATUS_MISALIGNED,
                        "adaptive step, inv_scale_ptr");
        named("inv_scale_ptr");
        gclip_adaptive_destroy(ad);
    }
    // aligned, each is taken: max_norm 1e30 and a total norm of 1e30 clip nothing
    gclip_norm_options o = testutil::norm_options(1e-3f);
    o.max_norm_ptr = reinterpret_cast<const float *>(mem + 16);
    o.inv_scale_ptr = reinterpret_cast<const float *>(mem + 32);
    o.tensor_norms = reinterpret_cast<float *>(mem + 64);
    EXPECT_EQ(gclip_clip_grad_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    EXPECT_EQ(oracle::checksum(bufs), before);
}

// tensor_norms is written by the step: inside a tensor it would overwrite
// gradients (even under total_norm, which writes none), inside the result
// slot the slot would overwrite it. Both are refused, and the check still
// holds after a rebind that failed on overlapping tensors.
TEST_F(Validation, TensorNormsInsideATensorOrTheSlot)
{
    const gclip_device_result *slot = nullptr;
    ASSERT_EQ(gclip_plan_device_result(plan.get(), &slot), GCLIP_STATUS_SUCCESS);
    const auto try_all = [&](float *where, gclip_status want, const char *what) {
        gclip_norm_options o = testutil::norm_options(1e-3f);
        o.tensor_norms = where;
        expect_rejected(gclip_total_norm(plan.get(), &o, nullptr), want, what);
        EXPECT_NE(std::string(gclip_last_error()).find("tensor_norms"), std::string::npos)
            << gclip_last_error();
        expect_rejected(gclip_clip_grad_norm(plan.get(), &o, nullptr), want, what);
        expect_rejected(gclip_clip_grad_norm_per_tensor(plan.get(), &o, nullptr), want, what);
        expect_rejected(gclip_norm_accumulate(plan.get(), &o, nullptr), want, what);
    };
    for (size_t i = 0; i < bufs.size(); ++i) {
        const std::string at = "tensor " + std::to_string(i);
        char *start = static_cast<char *>(bufs[i].data());
        try_all(reinterpret_cast<float *>(start), GCLIP_STATUS_OVERLAP, (at + " start").c_str());
        // the last float of the range is the tensor's first bytes
        try_all(reinterpret_cast<float *>(start) - (tensors.size() - 1), GCLIP_STATUS_OVERLAP,
                (at + ", the range's last float").c_str());
    }
    try_all(const_cast<float *>(&slot->scale), GCLIP_STATUS_INVALID_ARGUMENT, "the slot");
    // the range's last float is the slot's first bytes, or its first float
    // the slot's last
    float *slot_start = reinterpret_cast<float *>(const_cast<gclip_device_result *>(slot));
    try_all(slot_start - (tensors.size() - 1), GCLIP_STATUS_INVALID_ARGUMENT,
            "the range's last float in the slot");
    try_all(reinterpret_cast<float *>(const_cast<gclip_device_result *>(slot + 1)) - 1,
            GCLIP_STATUS_INVALID_ARGUMENT, "the range's first float in the slot");

    // after a rebind refused for overlapping tensors, every tensor is still
    // found (the order the plan searches was put back)
    std::vector<void *> data;
    for (auto &b : bufs)
        data.push_back(b.data());
    std::vector<void *> bad = data;
    bad[0] = static_cast<char *>(data[3]) + 16; // f32 inside f32: aligned
    bad[4] = data[3];
    EXPECT_EQ(gclip_plan_rebind(plan.get(), bad.data(), bad.size(), nullptr), GCLIP_STATUS_OVERLAP);
    for (size_t i = 0; i < bufs.size(); ++i)
        try_all(static_cast<float *>(bufs[i].data()), GCLIP_STATUS_OVERLAP,
                ("after the failed rebind, tensor " + std::to_string(i)).c_str());

    // a range that touches a tensor without sharing a byte is taken: ending
    // at its first byte, or starting past its last
    oracle::Rng rng(97);
    std::vector<float> arena(64 + 7 + 64);
    for (float &x : arena)
        x = static_cast<float>(rng.normal(1.0));
    PlanPtr one;
    ASSERT_EQ(make_plan(one, {gclip_tensor{arena.data() + 64, 7, GCLIP_F32}}), GCLIP_STATUS_SUCCESS);
    gclip_norm_options touching = testutil::norm_options(1e-3f);
    for (float *where : {arena.data() + 63, arena.data() + 64 + 7}) {
        touching.tensor_norms = where;
        EXPECT_EQ(gclip_total_norm(one.get(), &touching, nullptr), GCLIP_STATUS_SUCCESS)
            << gclip_last_error();
    }
    touching.tensor_norms = arena.data() + 64 + 6; // the tensor's last float
    EXPECT_EQ(gclip_total_norm(one.get(), &touching, nullptr), GCLIP_STATUS_OVERLAP);

    // the caller's own array beside them is taken and holds the norms
    std::vector<float> norms(tensors.size(), -1.0f);
    gclip_norm_options o = testutil::norm_options(1e-3f);
    o.tensor_norms = norms.data();
    ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS)
        << gclip_last_error();
    EXPECT_EQ(oracle::checksum(bufs), before);
    const oracle::Norms want = oracle::norms(bufs, 2.0);
    for (size_t i = 0; i < bufs.size(); ++i) {
        const double w = static_cast<double>(want.per_tensor[i]);
        EXPECT_NEAR(norms[i], w, 1e-6 * w) << i;
    }
}

TEST_F(Validation, NegativeThreadCount)
{
    expect_rejected(gclip_plan_set_num_threads(plan.get(), -1), GCLIP_STATUS_INVALID_ARGUMENT, "threads -1");
    expect_rejected(gclip_plan_set_num_threads(nullptr, 2), GCLIP_STATUS_INVALID_ARGUMENT, "threads NULL plan");
    EXPECT_EQ(gclip_plan_set_num_threads(plan.get(), 0), GCLIP_STATUS_SUCCESS);
}

// More threads than the documented 1024 are refused (OpenMP would fail to
// start such a team, or overflow a stack trying); 1024 itself runs a step.
TEST_F(Validation, ThreadCountAboveTheLimit)
{
    for (int n : {1025, 100000, INT_MAX}) {
        expect_rejected(gclip_plan_set_num_threads(plan.get(), n), GCLIP_STATUS_INVALID_ARGUMENT,
                        ("threads " + std::to_string(n)).c_str());
        EXPECT_NE(std::string(gclip_last_error()).find("1024"), std::string::npos);
    }
    ASSERT_EQ(gclip_plan_set_num_threads(plan.get(), 1024), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(1e30f);
    EXPECT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS) << gclip_last_error();
}

// A negative total norm would flip every gradient's sign (PyTorch's
// clip_grads_with_norm_ does); gclip refuses it as it refuses a negative
// max_norm, given as a value (the call) or read from memory (the slot).
TEST_F(Validation, NegativeGivenTotalNorm)
{
    gclip_norm_options o = testutil::norm_options(1.0f);
    for (float n : {-2.0f, -1e-30f, -INFINITY}) {
        expect_rejected(gclip_clip_grads_with_norm(plan.get(), &o, n, nullptr, nullptr),
                        GCLIP_STATUS_INVALID_ARGUMENT, ("total_norm " + std::to_string(n)).c_str());
        EXPECT_NE(std::string(gclip_last_error()).find("negative"), std::string::npos);
        float held = n; // host memory is the CPU plan's device memory
        EXPECT_EQ(gclip_clip_grads_with_norm(plan.get(), &o, 0.0f, &held, nullptr),
                  GCLIP_STATUS_SUCCESS);
        gclip_status s;
        const gclip_result r = testutil::result_of(plan.get(), &s);
        expect_rejected(s, GCLIP_STATUS_INVALID_ARGUMENT, "total_norm_ptr");
        EXPECT_NE(std::string(gclip_last_error()).find("total_norm_ptr"), std::string::npos)
            << gclip_last_error();
        EXPECT_EQ(r.applied, 0);
    }
    // -0 is a norm of zero, as +0: coefficient min(1, max_norm / eps) = 1,
    // nothing written; with eps -0 too (taken as +0), max_norm / +0 is +Inf
    // and the coefficient still 1, where -0 would have given -Inf
    float zero = -0.0f;
    for (float eps : {1e-6f, 0.0f, -0.0f}) {
        o.eps = eps;
        for (int by_pointer = 0; by_pointer < 2; ++by_pointer) {
            const std::string what =
                "eps " + std::to_string(eps) + (std::signbit(eps) ? " (-0)" : "") +
                (by_pointer ? ", norm -0 read from memory" : ", norm -0 as a value");
            EXPECT_EQ(gclip_clip_grads_with_norm(plan.get(), &o, by_pointer ? 0.0f : -0.0f,
                                                 by_pointer ? &zero : nullptr, nullptr),
                      GCLIP_STATUS_SUCCESS)
                << what << ": " << gclip_last_error();
            gclip_status s;
            const gclip_result r = testutil::result_of(plan.get(), &s);
            EXPECT_EQ(s, GCLIP_STATUS_SUCCESS) << what << ": " << gclip_last_error();
            EXPECT_EQ(r.clip_coef, 1.0f) << what;
            EXPECT_EQ(r.applied, 0) << what;
            EXPECT_EQ(oracle::checksum(bufs), before) << what << ": a gradient changed";
        }
    }
}

// Finalizing the plan's own partial (count 0) needs an accumulate first:
// without one the call says so, rather than a mismatch of options.
TEST(FinalizeOwnPartial, BeforeAnyAccumulateIsRefusedAndSaysWhy)
{
    oracle::Rng rng(31);
    std::vector<TestBuffer> bufs;
    bufs.emplace_back(GCLIP_F32, 1000);
    bufs.back().fill(rng, 1.0);
    PlanPtr plan;
    ASSERT_EQ(make_plan(plan, oracle::tensors_of(bufs)), GCLIP_STATUS_SUCCESS);
    gclip_norm_options o = testutil::norm_options(1.0f);
    EXPECT_EQ(gclip_norm_finalize(plan.get(), &o, nullptr, 0, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_last_error()).find("no gclip_norm_accumulate"), std::string::npos)
        << gclip_last_error();
    // a total norm is not an accumulate either
    ASSERT_EQ(gclip_total_norm(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(gclip_norm_finalize(plan.get(), &o, nullptr, 0, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    ASSERT_EQ(gclip_norm_accumulate(plan.get(), &o, nullptr), GCLIP_STATUS_SUCCESS);
    // partials given with a count of 0 are refused, even after an
    // accumulate: the call cannot tell which the caller meant, and the
    // result slot keeps what the accumulate wrote
    const gclip_partial *own = nullptr;
    ASSERT_EQ(gclip_plan_partial(plan.get(), &own), GCLIP_STATUS_SUCCESS);
    const gclip_result kept = testutil::result_of(plan.get());
    EXPECT_EQ(gclip_norm_finalize(plan.get(), &o, own, 0, nullptr), GCLIP_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gclip_last_error()).find("count is 0"), std::string::npos)
        << gclip_last_error();
    EXPECT_EQ(oracle::float_to_bits(testutil::result_of(plan.get()).total_norm),
              oracle::float_to_bits(kept.total_norm));
    ASSERT_EQ(gclip_norm_finalize(plan.get(), &o, nullptr, 0, nullptr), GCLIP_STATUS_SUCCESS);
    const long double want = oracle::norms(oracle::tensors_of(bufs).data(), 1, 2.0).total;
    EXPECT_TRUE(oracle::rel_close(testutil::result_of(plan.get()).total_norm, want, 1e-6L));
}

TEST_F(Validation, NullOutputPointers)
{
    gclip_result r{};
    const gclip_device_result *dr = nullptr;
    size_t n = 0;
    int dev = 0;
    expect_rejected(gclip_get_result(plan.get(), nullptr), GCLIP_STATUS_INVALID_ARGUMENT, "result NULL");
    expect_rejected(gclip_get_result(nullptr, &r), GCLIP_STATUS_INVALID_ARGUMENT, "get_result plan NULL");
    expect_rejected(gclip_plan_device_result(plan.get(), nullptr), GCLIP_STATUS_INVALID_ARGUMENT, "dev result NULL");
    expect_rejected(gclip_plan_device_result(nullptr, &dr), GCLIP_STATUS_INVALID_ARGUMENT, "dev result plan NULL");
    expect_rejected(gclip_plan_tensor_count(plan.get(), nullptr), GCLIP_STATUS_INVALID_ARGUMENT, "count NULL");
    expect_rejected(gclip_plan_tensor_count(nullptr, &n), GCLIP_STATUS_INVALID_ARGUMENT, "count plan NULL");
    expect_rejected(gclip_plan_device(plan.get(), nullptr), GCLIP_STATUS_INVALID_ARGUMENT, "device NULL");
    expect_rejected(gclip_plan_device(nullptr, &dev), GCLIP_STATUS_INVALID_ARGUMENT, "device plan NULL");
}

TEST_F(Validation, PlanQueriesReportTheList)
{
    size_t n = 0;
    int dev = 42;
    ASSERT_EQ(gclip_plan_tensor_count(plan.get(), &n), GCLIP_STATUS_SUCCESS);
    ASSERT_EQ(gclip_plan_device(plan.get(), &dev), GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(n, tensors.size());
    EXPECT_EQ(dev, GCLIP_DEVICE_CPU);
    EXPECT_EQ(gclip_plan_destroy(nullptr), GCLIP_STATUS_SUCCESS);
}

TEST(ResultBeforeAnyOperation, IsTheDocumentedEmptyResult)
{
    TestBuffer b(GCLIP_F32, 9);
    oracle::Rng rng(1);
    b.fill(rng, 1.0);
    PlanPtr plan;
    ASSERT_EQ(make_plan(plan, {b.tensor()}), GCLIP_STATUS_SUCCESS);
    gclip_status s;
    const gclip_result r = testutil::result_of(plan.get(), &s);
    EXPECT_EQ(s, GCLIP_STATUS_SUCCESS);
    EXPECT_EQ(r.has_norm, 0);
    EXPECT_TRUE(std::isnan(r.total_norm));
    EXPECT_EQ(r.clip_coef, 1.0f);
    EXPECT_EQ(r.scale, 1.0f);
    EXPECT_EQ(r.nonfinite, 0);
}

} // namespace
