// emu_harness.hpp - one plan run twice: by the CPU path on host copies of the
// data (the reference) and by the emulated CUDA kernels on "device" copies,
// each in an exact-size allocation, through the kernels' own launchers.
//
//   DevBuf     device stand-in memory: exact size, garbage lead bytes
//   Spec       shape of one tensor (dtype, elements, start offset)
//   Fixture    the two runs of one plan and their comparison
//   schedules  the thread/block orders every kernel test runs in
#ifndef GCLIP_EMU_HARNESS_HPP
#define GCLIP_EMU_HARNESS_HPP

#include "gclip_internal.h"
#include "gclip_kernels.h"
#include "oracle.hpp"
#include "simt_emu.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace emu {

// Memory the kernels see as device memory. The data starts `lead` bytes into
// the allocation; the lead is filled with 0xff (NaN in every dtype), so a
// kernel that reads before the start gets a NaN norm, and its whole 8-byte
// granules are poisoned for ASan. The allocation ends exactly at the last
// byte, so ASan reports any access past the end. With `paged`, the memory is
// whole pages that set_read_only() can protect, proving that a launch writes
// nothing (any store faults).
class DevBuf {
public:
    DevBuf() = default;
    DevBuf(std::size_t bytes, std::size_t lead = 0, bool paged = false);
    DevBuf(const DevBuf &) = delete;
    DevBuf &operator=(const DevBuf &) = delete;
    DevBuf(DevBuf &&o) noexcept;
    DevBuf &operator=(DevBuf &&o) noexcept;
    ~DevBuf();

    void *data() const { return base_ + lead_; }
    std::size_t bytes() const { return bytes_; }
    template <class T>
    T *as() const { return static_cast<T *>(data()); }
    void fill(unsigned char byte);
    bool lead_intact() const;
    void set_read_only(bool ro);

private:
    void release();
    unsigned char *base_ = nullptr;
    std::size_t bytes_ = 0, lead_ = 0, mapped_ = 0;
};

struct Spec {
    gclip_dtype dtype;
    int64_t numel;
    int offset; // elements between a 16-byte boundary and the tensor start
};

// The device-resident state after an operation, byte for byte.
struct Snapshot {
    std::vector<unsigned char> result, tensor_norms, tensor_factor, data;
    bool operator==(const Snapshot &o) const;
};

class Fixture {
public:
    // Seeded normal data of standard deviation `scale` in every tensor.
    Fixture(std::vector<Spec> specs, uint64_t seed, double scale = 1.0, bool paged = false);
    ~Fixture();
    Fixture(const Fixture &) = delete;
    Fixture &operator=(const Fixture &) = delete;

    std::size_t count() const { return specs_.size(); }
    uint32_t num_chunks() const { return tables_.num_chunks; }

    // Element i of tensor k in the pristine data and both copies.
    void set_element(std::size_t k, int64_t i, float v);
    // Device data back to the pristine values; workspace, result and
    // per-tensor norms refilled with garbage (the ticket stays as it is).
    void reset();
    // Host data back to the pristine values, before the next CPU operation.
    void reset_host();
    void set_read_only(bool ro);

    // The kernels' launch sequence of each operation, as the CUDA backend
    // issues it. Returns the first nonzero launcher status.
    int emu_norm_op(const gclip_norm_options &o, int32_t op);
    int emu_clamp(float clip_value);
    // The same operation by the CPU path.
    gclip_status cpu_norm_op(const gclip_norm_options &o, int32_t op);
    gclip_status cpu_clamp(float clip_value);

    const gclip_result_slot &emu_result() const { return *tables_.result; }
    gclip_result cpu_result() const;
    unsigned ticket() const { return *tables_.ticket; }
    Snapshot snapshot() const;

    // gtest checks: the emulated result against the CPU path and the
    // long-double oracle; every element against the expected arithmetic with
    // the factor the kernels used; guards, ticket and launch count.
    void expect_norm_op_matches(const gclip_norm_options &o, int32_t op) const;
    void expect_clamp_matches(float clip_value) const;
    // Nothing written: every device element bitwise as before.
    void expect_data_unchanged() const;
    // Ticket back at 0, no byte before any tensor written.
    void expect_infrastructure() const;
    std::string describe() const;

private:
    void expect_scaled(std::size_t k, float factor) const;
    float emu_factor(int32_t op, std::size_t k) const;

    std::vector<Spec> specs_;
    std::vector<std::vector<unsigned char>> pristine_;
    std::vector<oracle::TestBuffer> host_;
    std::vector<DevBuf> dev_;
    gclip_plan *plan_ = nullptr;
    std::vector<float> cpu_norms_;
    DevBuf tensors_, chunks_, partials_, factors_, ticket_, result_, norms_;
    gclip_device_tables tables_{};
    bool with_norms_ = false;
    unsigned launches_ = 0;
};

// Thread order x block order x seed, named for test output.
struct NamedSchedule {
    const char *name;
    gclip_emu::Schedule s;
};
const std::vector<NamedSchedule> &schedules();
void use(const gclip_emu::Schedule &s);

// Runs `run` (returning a launcher status) once per schedule, each time from
// reset device state. The first run's results are checked in full by
// `check`; every later run must reproduce them byte for byte.
template <class Run, class Check>
void for_every_schedule(Fixture &f, Run run, Check check)
{
    Snapshot first;
    for (const NamedSchedule &s : schedules()) {
        SCOPED_TRACE(std::string("schedule ") + s.name);
        f.reset();
        use(s.s);
        ASSERT_EQ(run(), 0) << gclip_emu::error_message();
        f.expect_infrastructure();
        if (&s == &schedules().front()) {
            check();
            first = f.snapshot();
        } else {
            EXPECT_TRUE(f.snapshot() == first) << "results depend on the schedule";
        }
        if (::testing::Test::HasFailure())
            return;
    }
}

// Plans used across the kernel tests.
std::vector<Spec> boundary_sizes(gclip_dtype dt);  // sizes around vector and chunk ends
std::vector<Spec> mixed_many(uint64_t seed, int n); // n small tensors, every dtype
std::vector<Spec> spanning_chunks();                // > 256 chunks, tensors across thread ranges

const char *op_name(int32_t op);

} // namespace emu

#endif // GCLIP_EMU_HARNESS_HPP
