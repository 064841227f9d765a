// oracle_set.hpp - tensors whose values are set on the host (by hand or by a
// seeded generator), uploaded to a CUDA plan and checked against the
// long-double oracle of tests/common/oracle.hpp rather than the CPU path.
//
// Norms: the library accumulates the terms in double and rounds once to
// float (docs/semantics.md), so its norm is within 1e-6 of the oracle's
// long-double norm, or, for a norm in float's subnormal range, within one
// subnormal step; a norm beyond FLT_MAX is reported as Inf. Elements: the
// factor is a float, f32/f16/bf16 elements are scaled in float and rounded
// to nearest even, f64 elements are scaled in double, so each element is
// exactly the IEEE product of its original value and the reported factor
// and is compared bit for bit. Value clipping is compared bit for bit too.
#ifndef GCLIP_GPU_ORACLE_SET_HPP
#define GCLIP_GPU_ORACLE_SET_HPP

#include "gpu_fixture.hpp"

#include <string>
#include <vector>

namespace gpu {

class OracleSet {
public:
    explicit OracleSet(std::vector<Spec> specs);

    std::size_t count() const { return specs_.size(); }
    const std::vector<Spec> &specs() const { return specs_; }
    gclip_plan *plan() const { return plan_.get(); }
    std::size_t bytes() const { return host_.size(); }

    // Tensor k's host bytes: set values here (oracle::store), then upload.
    unsigned char *host(std::size_t k) { return host_.data() + offsets_[k]; }
    const unsigned char *host(std::size_t k) const { return host_.data() + offsets_[k]; }
    // Element i of tensor k, an f64 element with its full value.
    void set(std::size_t k, int64_t i, double v);
    // Every element of every tensor: seeded normal values of deviation `scale`.
    void fill_random(uint64_t seed, double scale);

    // The host values to the device (and the CUDA plan, made on first use).
    void upload();
    // The device bytes, in the host layout.
    std::vector<unsigned char> download() const;

    // The long-double norms of the host values.
    oracle::Norms norms(double p, double inv_scale = 1.0) const;

    // The result's total norm and non-finite flag, and the per-tensor norms
    // the operation wrote to `tensor_norms`, against `want`; returns the
    // per-tensor norms.
    std::vector<float> expect_norms(const gclip_result &r, const oracle::Norms &want,
                                    const DeviceBuffer &tensor_norms) const;

    // Whether the device data equals the host values with tensor k scaled
    // by factor[k] (the host values themselves where factor[k] is 1).
    void expect_scaled(const std::vector<float> &factor) const;
    void expect_scaled(float factor) const;
    // ... or clamped to [-v, v].
    void expect_clamped(float v) const;
    // ... or unchanged, bit for bit.
    void expect_unchanged() const;

private:
    std::vector<Spec> specs_;
    std::vector<std::size_t> offsets_;
    std::vector<unsigned char> host_;
    DeviceBuffer dev_;
    testutil::PlanPtr plan_;

    // Compare the device data with what `expected` makes of element i of
    // tensor k (written into `out`, one element of the tensor's dtype).
    template <class F>
    void expect_each(const char *what, F expected) const;
};

// A norm reported by the library against the oracle's long-double value.
bool norm_matches(float got, long double want);

// A tensor norm of the reported type and the oracle side by side, for
// failure messages.
std::string norm_pair(float got, long double want);

// Room on the current device for `bytes` more (with a 256 MiB margin for
// the plan's workspace and the runtime). Sets `why` when there is not.
bool device_has_room(std::size_t bytes, std::string *why);

} // namespace gpu

#endif // GCLIP_GPU_ORACLE_SET_HPP
