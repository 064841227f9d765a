// robust_util.hpp - small helpers shared by the robustness suites: seeded
// tensor lists on top of the oracle's TestBuffer, and an RAII plan handle.
#ifndef GCLIP_ROBUST_UTIL_HPP
#define GCLIP_ROBUST_UTIL_HPP

#include "gclip.h"
#include "oracle.hpp"

#include <cstdint>
#include <cstring>
#include <vector>

namespace robust {

// One tensor of a list: element count, dtype and the element offset of its
// start inside its own allocation (odd offsets give unaligned-to-16 starts).
struct Spec {
    int64_t numel;
    gclip_dtype dtype;
    int64_t offset;
};

// Buffers for `specs`, filled with seeded normal data of standard deviation
// `scale` (never all zeros).
inline std::vector<oracle::TestBuffer> make_buffers(const std::vector<Spec> &specs, uint64_t seed,
                                                    double scale = 1.0)
{
    oracle::Rng rng(seed);
    std::vector<oracle::TestBuffer> bufs;
    bufs.reserve(specs.size());
    for (const Spec &s : specs) {
        bufs.emplace_back(s.dtype, s.numel, s.offset);
        bufs.back().fill(rng, scale);
    }
    return bufs;
}

// `count` tensors with seeded sizes in [0, max_numel], dtypes and offsets.
inline std::vector<Spec> random_specs(std::size_t count, int64_t max_numel, uint64_t seed)
{
    oracle::Rng rng(seed);
    std::vector<Spec> specs;
    specs.reserve(count);
    for (std::size_t i = 0; i < count; ++i)
        specs.push_back({rng.range(0, max_numel), static_cast<gclip_dtype>(rng.range(0, 2)),
                         rng.range(0, 3)});
    return specs;
}

// Stores an enum code the C library must reject. C++ may not even load an
// enumeration value outside its range, so the bits are copied in.
template <class E>
inline void set_raw(E &field, int32_t v)
{
    static_assert(sizeof(E) == sizeof(int32_t), "C enums are int-sized");
    std::memcpy(&field, &v, sizeof v);
}

// Owns a plan; destroys it at scope exit.
class Plan {
public:
    Plan() = default;
    Plan(const Plan &) = delete;
    Plan &operator=(const Plan &) = delete;
    ~Plan() { gclip_plan_destroy(p_); }
    gclip_plan **out() { return &p_; }
    gclip_plan *get() const { return p_; }

private:
    gclip_plan *p_ = nullptr;
};

// A result reduced to bits, so that results compare exactly (NaN included).
struct ResultBits {
    uint32_t total, coef, scale;
    int32_t nonfinite, has_norm;
    bool operator==(const ResultBits &o) const
    {
        return total == o.total && coef == o.coef && scale == o.scale &&
               nonfinite == o.nonfinite && has_norm == o.has_norm;
    }
};

inline ResultBits bits_of(const gclip_result &r)
{
    return {oracle::float_to_bits(r.total_norm), oracle::float_to_bits(r.clip_coef),
            oracle::float_to_bits(r.scale), r.nonfinite, r.has_norm};
}

} // namespace robust

#endif // GCLIP_ROBUST_UTIL_HPP
