// oracle_set.cpp - host-set tensors on a CUDA plan, checked against the
// long-double oracle.
#include "oracle_set.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

namespace gpu {

OracleSet::OracleSet(std::vector<Spec> specs)
    : specs_(std::move(specs)), dev_(pack_layout(specs_, offsets_) + 1)
{
    host_.assign(dev_.bytes() - 1, 0);
}

void OracleSet::set(std::size_t k, int64_t i, double v)
{
    if (specs_[k].dtype == GCLIP_F64)
        std::memcpy(host(k) + 8 * i, &v, 8);
    else
        oracle::store(host(k), specs_[k].dtype, i, static_cast<float>(v));
}

void OracleSet::fill_random(uint64_t seed, double scale)
{
    oracle::Rng rng(seed);
    for (std::size_t k = 0; k < count(); ++k)
        oracle::fill_random(host(k), specs_[k].dtype, specs_[k].numel, rng, scale);
}

void OracleSet::upload()
{
    if (!host_.empty()) {
        GPU_ASSERT_CUDA(cudaMemcpy(dev_.get(), host_.data(), host_.size(), cudaMemcpyHostToDevice));
        // a pageable upload may still be in flight when cudaMemcpy returns
        GPU_ASSERT_CUDA(cudaDeviceSynchronize());
    }
    if (!plan_) {
        const gclip_status s = testutil::make_plan(plan_, tensors_in(specs_, offsets_, dev_.get()), 0);
        ASSERT_EQ(s, GCLIP_STATUS_SUCCESS) << gclip_last_error();
    }
}

std::vector<unsigned char> OracleSet::download() const
{
    return download_bytes(dev_.get(), host_.size());
}

oracle::Norms OracleSet::norms(double p, double inv_scale) const
{
    const auto t = tensors_in(specs_, offsets_, const_cast<unsigned char *>(host_.data()));
    return oracle::norms(t.data(), t.size(), p, inv_scale);
}

std::vector<float> OracleSet::expect_norms(const gclip_result &r, const oracle::Norms &want,
                                           const DeviceBuffer &tensor_norms) const
{
    EXPECT_TRUE(norm_matches(r.total_norm, want.total))
        << "total " << norm_pair(r.total_norm, want.total);
    EXPECT_EQ(r.nonfinite, !std::isfinite(oracle::as_reported(want.total)) ? 1 : 0);
    std::vector<float> tn(count());
    if (!tn.empty()) {
        EXPECT_EQ(cudaMemcpy(tn.data(), tensor_norms.get(), tn.size() * sizeof(float),
                             cudaMemcpyDeviceToHost), cudaSuccess);
    }
    int64_t bad = 0;
    std::string first;
    for (std::size_t k = 0; k < count(); ++k)
        if (!norm_matches(tn[k], want.per_tensor[k]) && bad++ == 0)
            first = "tensor " + std::to_string(k) + " (" + oracle::dtype_name(specs_[k].dtype) + "[" +
                    std::to_string(specs_[k].numel) + "]) " + norm_pair(tn[k], want.per_tensor[k]);
    EXPECT_EQ(bad, 0) << "per-tensor norms that differ from the oracle, first: " << first;
    return tn;
}

template <class F>
void OracleSet::expect_each(const char *what, F expected) const
{
    const std::vector<unsigned char> dev = download();
    int64_t mismatches = 0;
    std::string first;
    unsigned char want[8];
    for (std::size_t k = 0; k < count(); ++k) {
        const Spec &s = specs_[k];
        const std::size_t size = oracle::dtype_size(s.dtype);
        const unsigned char *got = dev.data() + offsets_[k];
        for (int64_t i = 0; i < s.numel; ++i) {
            expected(k, i, want);
            if (std::memcmp(got + size * i, want, size) == 0)
                continue;
            if (mismatches++ == 0) {
                std::ostringstream m;
                m.precision(9);
                m << "tensor " << k << " (" << oracle::dtype_name(s.dtype) << ") element " << i
                  << ": original " << oracle::load_exact(host(k), s.dtype, i) << ", device "
                  << oracle::load_exact(got, s.dtype, i) << ", expected "
                  << oracle::load_exact(want, s.dtype, 0);
                first = m.str();
            }
        }
    }
    EXPECT_EQ(mismatches, 0) << what << ": elements that differ from the oracle, first: " << first;
}

void OracleSet::expect_scaled(const std::vector<float> &factor) const
{
    expect_each("scaled", [&](std::size_t k, int64_t i, unsigned char *want) {
        const gclip_dtype dt = specs_[k].dtype;
        const std::size_t size = oracle::dtype_size(dt);
        if (factor[k] == 1.0f) { // nothing written, whatever the value
            std::memcpy(want, host(k) + size * i, size);
        } else if (dt == GCLIP_F64) {
            const double v = oracle::load_f64(host(k), i) * static_cast<double>(factor[k]);
            std::memcpy(want, &v, 8);
        } else {
            oracle::store(want, dt, 0,
                          oracle::expected_scaled(oracle::load(host(k), dt, i), factor[k], dt));
        }
    });
}

void OracleSet::expect_scaled(float factor) const
{
    expect_scaled(std::vector<float>(count(), factor));
}

void OracleSet::expect_clamped(float v) const
{
    expect_each("clamped", [&](std::size_t k, int64_t i, unsigned char *want) {
        const gclip_dtype dt = specs_[k].dtype;
        if (dt == GCLIP_F64) {
            const double x = oracle::load_f64(host(k), i), b = v;
            const double c = x < -b ? -b : (x > b ? b : x);
            std::memcpy(want, &c, 8);
        } else {
            oracle::store(want, dt, 0, oracle::expected_clamped(oracle::load(host(k), dt, i), v, dt));
        }
    });
}

void OracleSet::expect_unchanged() const
{
    const std::vector<unsigned char> dev = download();
    EXPECT_EQ(oracle::fnv1a(dev.data(), dev.size()), oracle::fnv1a(host_.data(), host_.size()))
        << "the device data changed";
}

bool norm_matches(float got, long double want)
{
    if (oracle::rel_close(got, want, 1e-6L))
        return true;
    // a norm in float's subnormal range: one subnormal step of rounding
    const long double step = std::numeric_limits<float>::denorm_min();
    return std::isfinite(got) && std::isfinite(static_cast<float>(want)) &&
           std::fabs(static_cast<long double>(got) - want) <= step;
}

std::string norm_pair(float got, long double want)
{
    std::ostringstream m;
    m.precision(9);
    m << "device " << got << ", oracle " << static_cast<double>(want);
    return m.str();
}

bool device_has_room(std::size_t bytes, std::string *why)
{
    std::size_t free_bytes = 0, total = 0;
    const cudaError_t e = cudaMemGetInfo(&free_bytes, &total);
    const std::size_t need = bytes + (std::size_t(256) << 20);
    if (e == cudaSuccess && free_bytes >= need)
        return true;
    std::ostringstream m;
    if (e != cudaSuccess)
        m << "cudaMemGetInfo failed: " << cudaGetErrorString(e);
    else
        m << "not enough free device memory: " << (need >> 20) << " MiB needed, "
          << (free_bytes >> 20) << " MiB free of " << (total >> 20) << " MiB";
    *why = m.str();
    return false;
}

} // namespace gpu
