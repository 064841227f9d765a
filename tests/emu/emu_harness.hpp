// emu_harness.hpp - one plan run twice: by the CPU path on host copies of the
// data (the reference) and by the emulated CUDA kernels on "device" copies,
// each in an exact-size allocation, through the kernels' own launchers and
// in the launch sequence the CUDA backend issues for each operation.
//
//   DevBuf     device stand-in memory: exact size, garbage lead bytes
//   Spec       shape of one tensor (tests/common/specs.hpp)
//   Fixture    the two runs of one plan and their comparison
//   schedules  the thread/block orders every kernel test runs in
//
// The result slot. Every kernel reads the slot's sequence (and the apply
// reads its factor), so the emulated slot cannot start as garbage. The CPU
// plan's slot is the reference: reset_host() marks where a sequence of CPU
// operations starts, and reset() gives the emulated slot garbage in every
// field but `sequence`, which it takes from that mark. After the same
// operations both slots must agree field by field (op, flags, status,
// failed, nonfinite, sequence exactly; norm, coefficient and factor to the
// reduction order's rounding, or bitwise where the inputs are the same).
#ifndef GCLIP_EMU_HARNESS_HPP
#define GCLIP_EMU_HARNESS_HPP

#include "gclip_internal.h"
#include "gclip_kernels.h"
#include "oracle.hpp"
#include "simt_emu.h"
#include "specs.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace emu {

using specs::Spec;

// Memory the kernels see as device memory. The data starts `lead` bytes into
// the allocation; the lead is filled with 0xff (NaN in every dtype), so a
// kernel that reads before the start gets a NaN norm, and its whole 8-byte
// granules are poisoned for ASan. The allocation ends exactly at the last
// byte, so ASan reports any access past the end. With `paged`, the memory is
// whole pages that set_read_only() can protect, proving that a launch writes
// nothing (any store faults); the pages' bytes past the data are poisoned,
// so ASan reports an access past the end there too.
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

// The device-resident state after an operation, byte for byte.
struct Snapshot {
    std::vector<unsigned char> result, partial, tensor_norms, tensor_factor, data;
    bool operator==(const Snapshot &o) const;
};

// Launches of each operation, as host/cuda_backend.c (launches_of) issues them.
unsigned launches_of(int32_t op);

class Fixture {
public:
    // Seeded normal data of standard deviation `scale` in every tensor.
    Fixture(std::vector<Spec> specs, uint64_t seed, double scale = 1.0, bool paged = false);
    ~Fixture();
    Fixture(const Fixture &) = delete;
    Fixture &operator=(const Fixture &) = delete;

    std::size_t count() const { return specs_.size(); }
    uint32_t num_chunks() const { return tables_.num_chunks; }
    const std::vector<Spec> &specs() const { return specs_; }

    // Element i of tensor k in the pristine data and both copies.
    void set_element(std::size_t k, int64_t i, float v);
    // Element i of tensor k in the pristine data only: the copies get it at
    // the next reset_both() (many elements set at the cost of one copy).
    void set_pristine(std::size_t k, int64_t i, float v);
    // The same for a 16-bit element given as its bits (a NaN keeps its sign
    // and payload, which a float passed through the encoder would not).
    void set_pristine_bits16(std::size_t k, int64_t i, uint16_t bits);
    // An element of any dtype given as its bits (the low bytes of `bits`).
    void set_pristine_bits(std::size_t k, int64_t i, uint64_t bits);
    // Device data back to the pristine values; workspace, partial, per-tensor
    // norms and every field of the result slot but its sequence refilled with
    // garbage (the tickets stay as they are: no memset between steps).
    void reset();
    // Host data back to the pristine values, before the next CPU operation;
    // marks the CPU slot's sequence that the next reset() gives the device.
    void reset_host();
    void reset_both()
    {
        reset_host();
        reset();
    }
    void set_read_only(bool ro);

    // The step parameters the host builds for `op` (host/steps.c), with
    // tensor_norms pointing at the fixture's device buffer when asked for.
    gclip_norm_params params(const gclip_norm_options &o, int32_t op);

    // The kernels' launch sequence of np.op, exactly as the CUDA backend
    // issues it. Returns the first nonzero launcher status. After every
    // launch both tickets must be back at 0.
    // clip_value: the bound of a CLIP_VALUE launch (not held in np).
    int emu_launch(const gclip_norm_params &np, double clip_value = 0.0);
    // The same, from options (TOTAL_NORM, CLIP_NORM, CLIP_PER_TENSOR,
    // CLIP_FACTOR, ACCUMULATE) and for the ops with arguments of their own.
    int emu_norm_op(const gclip_norm_options &o, int32_t op);
    int emu_with_norm(const gclip_norm_options &o, float norm, const float *norm_ptr = nullptr);
    int emu_finalize(const gclip_norm_options &o, const gclip_partial *partials, std::size_t n);
    int emu_apply();
    int emu_clamp(double clip_value);

    // The same operations by the CPU path, through the public API.
    gclip_status cpu_norm_op(const gclip_norm_options &o, int32_t op);
    gclip_status cpu_with_norm(const gclip_norm_options &o, float norm,
                               const float *norm_ptr = nullptr);
    gclip_status cpu_finalize(const gclip_norm_options &o, const gclip_partial *partials,
                              std::size_t n);
    gclip_status cpu_apply();
    gclip_status cpu_clamp(double clip_value); // gclip_clip_grad_value_f64

    gclip_plan *cpu_plan() const { return plan_; }
    // The plan's emulated device tables, for launches the harness does not
    // sequence itself (concurrent streams).
    const gclip_device_tables &tables() const { return tables_; }
    const gclip_result_slot &emu_result() const { return *tables_.result; }
    // The launch grids' caps (gclip_device_tables; 0, the default, = one
    // block per chunk), as a device's SM count and occupancy would set them.
    void set_grid_caps(uint32_t norm, uint32_t scale)
    {
        tables_.norm_grid_cap = norm;
        tables_.scale_grid_cap = scale;
    }
    // The scale kernel as a programmatic dependent launch (a device of
    // compute capability 9.0 or later): emu_launch then issues the norm and
    // scale launches of a clip as one stream (launch_concurrent), so that
    // scale blocks start while the norm kernel's last blocks run.
    void set_dependent_launch(bool on) { tables_.dependent_launch = on ? 1u : 0u; }
    // The per-chunk partials and per-tensor norms the last norm launch left.
    const double *emu_partials() const { return tables_.partials; }
    float emu_tensor_norm(std::size_t k) const { return norms_.as<const float>()[k]; }
    const gclip_partial &emu_partial() const { return *tables_.partial; }
    // The CPU plan's slot (gclip_plan_device_result) and its decoding
    // (gclip_get_result, whose status is returned in `status`).
    const gclip_result_slot &cpu_slot() const;
    gclip_result cpu_result(gclip_status *status = nullptr) const;
    const gclip_partial &cpu_partial() const;
    float cpu_tensor_factor(std::size_t k) const;
    float emu_tensor_factor(std::size_t k) const { return tables_.tensor_factor[k]; }
    unsigned ticket() const { return *tables_.ticket; }
    unsigned apply_ticket() const { return *tables_.apply_ticket; }
    // fold lanes whose ticket is not 0
    unsigned lane_tickets_off() const
    {
        unsigned n = 0;
        for (unsigned v : tables_.fold->ticket)
            n += v != 0;
        return n;
    }
    unsigned launches() const { return launches_; }
    Snapshot snapshot() const;
    // The device copy of tensor k, and the pristine values.
    const void *device_data(std::size_t k) const { return dev_[k].data(); }
    const void *host_data(std::size_t k) const { return host_[k].data(); }
    const void *pristine_data(std::size_t k) const { return pristine_[k].data(); }

    // gtest checks: the emulated slot, partial and per-tensor norms against
    // the CPU path and the long-double oracle; every element against the
    // expected arithmetic with the factor the kernels used; guards, tickets
    // and launch count. `op` is the last operation run.
    void expect_norm_op_matches(const gclip_norm_options &o, int32_t op) const;
    void expect_clamp_matches(double clip_value) const;
    // The slot field by field against the CPU plan's; `bitwise` also for
    // the norm, coefficient and factor.
    void expect_slot_matches(bool bitwise = false) const;
    // The plan's partial against the CPU plan's.
    void expect_partial_matches() const;
    // Every device element is its pristine value times `factor`.
    void expect_scaled_by(float factor) const;
    // Every device element bitwise as the CPU path left it.
    void expect_data_equals_cpu() const;
    // Nothing written: every device element bitwise as before.
    void expect_data_unchanged() const;
    // Tickets back at 0 after every launch, no byte before any tensor written.
    void expect_infrastructure() const;
    std::string describe() const;

private:
    void expect_scaled(std::size_t k, float factor) const;
    float emu_factor(int32_t op, std::size_t k) const;
    float cpu_factor(int32_t op, std::size_t k) const;
    // One launch; records whether both tickets are back at 0 after it.
    int checked(int rc);

    std::vector<Spec> specs_;
    std::vector<std::vector<unsigned char>> pristine_;
    std::vector<oracle::TestBuffer> host_;
    std::vector<DevBuf> dev_;
    gclip_plan *plan_ = nullptr;
    std::vector<float> cpu_norms_;
    DevBuf tensors_, chunks_, partials_, factors_, ticket_, apply_ticket_, fold_, partial_, result_,
        norms_;
    gclip_device_tables tables_{};
    uint32_t sequence_mark_ = 0;
    bool with_norms_ = false;
    bool tickets_ok_ = true;
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

// Plans used across the kernel tests (tests/common/specs.hpp).
using specs::boundary_sizes;
using specs::mixed_many;
using specs::spanning_chunks;

const char *op_name(int32_t op);

// max_norm and inv_scale as a step reads them (the float behind a pointer).
float effective_max_norm(const gclip_norm_options &o);
float effective_inv_scale(const gclip_norm_options &o);

// The long-double oracle's total norm of a fixture's pristine data.
long double oracle_total(const Fixture &f, float norm_type, float inv_scale);

} // namespace emu

#endif // GCLIP_EMU_HARNESS_HPP
