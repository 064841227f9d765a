// specs.hpp - the plan shapes and the per-operation conformance tables that
// every engine's tests share (the SIMT emulator in tests/emu, the CUDA
// backend in tests/gpu), so that they check the same cases the same way.
// Header only, C++17.
//
//   Spec               shape of one tensor: dtype, elements, start offset
//   boundary_sizes     sizes around vector and chunk ends, one dtype
//   mixed_many         many small tensors of every dtype (f64 included)
//   spanning_chunks    more chunks than a block has threads
//   edge_specs         the GPU suite's edge sizes at odd starts
//   random_specs       seeded random sizes, dtypes rotating
//   NormCase           one row of a norm operation's table
//   norm_cases(op)     the table of a norm operation
//   value_clip_bounds  the table of value clipping
#ifndef GCLIP_TEST_SPECS_HPP
#define GCLIP_TEST_SPECS_HPP

#include "gclip.h"
#include "oracle.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace specs {

// Elements per chunk of the plan's chunk table (GCLIP_CHUNK_ELEMS of
// kernels/gclip_tables.h, which the emulator harness checks against this).
constexpr int64_t kChunkElems = 65536;

// ---- plan shapes ------------------------------------------------------------

struct Spec {
    gclip_dtype dtype;
    int64_t numel;
    int offset; // elements between a 16-byte boundary and the tensor start
};

// Every element type, in the order the rotating generators use.
inline const std::vector<gclip_dtype> &all_dtypes()
{
    static const std::vector<gclip_dtype> d = {GCLIP_F32, GCLIP_F16, GCLIP_BF16, GCLIP_F64};
    return d;
}

// Sizes around the 16-byte vector ends (of 2, 4 and 8 lanes) and the chunk
// ends, each at another start offset (0..7 elements), all of dtype `dt`.
inline std::vector<Spec> boundary_sizes(gclip_dtype dt)
{
    const int64_t c = kChunkElems;
    const int64_t sizes[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 33, c - 1, c, c + 1, 2 * c + 9};
    std::vector<Spec> v;
    int offset = 0;
    for (int64_t n : sizes)
        v.push_back(Spec{dt, n, offset++ % 8});
    return v;
}

// `n` small tensors of every dtype: 5% empty, 85% of 1..64 elements, 10% of
// 65..5000, each at a random offset.
inline std::vector<Spec> mixed_many(uint64_t seed, int n)
{
    oracle::Rng rng(seed);
    const std::vector<gclip_dtype> &dts = all_dtypes();
    std::vector<Spec> v;
    for (int i = 0; i < n; ++i) {
        const int64_t r = rng.range(0, 99);
        const int64_t numel = r < 5 ? 0 : r < 90 ? rng.range(1, 64) : rng.range(65, 5000);
        const gclip_dtype dt = dts[static_cast<std::size_t>(rng.range(0, 3))];
        v.push_back(Spec{dt, numel, static_cast<int>(rng.range(0, 7))});
    }
    return v;
}

// 250 one-chunk tensors, then multi-chunk tensors: 264 chunks, more than the
// finalize's 256 threads, so tensors cross the threads' chunk ranges.
inline std::vector<Spec> spanning_chunks()
{
    std::vector<Spec> v = mixed_many(77, 250);
    for (Spec &s : v)
        s.numel = s.numel == 0 ? 1 : s.numel;
    const int64_t c = kChunkElems;
    v.push_back(Spec{GCLIP_F16, 9 * c + 5, 3});
    v.push_back(Spec{GCLIP_BF16, 2 * c, 1});
    v.push_back(Spec{GCLIP_F32, c + 4465, 3});
    return v;
}

// The sizes that stress the chunk walk (0, a few elements, around a vector,
// around one chunk, several chunks, a million) at starts 0, 1, 3 and 7
// elements past a 16-byte boundary, all of `dtype`, or rotating through
// every dtype when `mixed`.
inline std::vector<Spec> edge_specs(gclip_dtype dtype, bool mixed)
{
    const int64_t c = kChunkElems;
    const int64_t sizes[] = {0,   1,   2,   3,     4, 5, 7,     8,         9,      15, 16,
                             17,  31,  33,  255, 256, 257, c - 1, c, c + 1, 3 * c + 5, 1000003};
    const std::vector<gclip_dtype> &dts = all_dtypes();
    std::vector<Spec> v;
    std::size_t k = 0;
    for (int offset : {0, 1, 3, 7})
        for (int64_t n : sizes) {
            v.push_back(Spec{mixed ? dts[k % dts.size()] : dtype, n, offset});
            ++k;
        }
    return v;
}

// `count` tensors of 0..max_numel elements at random offsets, dtypes
// rotating through every dtype, seeded.
inline std::vector<Spec> random_specs(std::size_t count, int64_t max_numel, uint64_t seed)
{
    const std::vector<gclip_dtype> &dts = all_dtypes();
    oracle::Rng rng(seed);
    std::vector<Spec> v;
    for (std::size_t k = 0; k < count; ++k)
        v.push_back(Spec{dts[k % dts.size()], rng.range(0, max_numel),
                         static_cast<int>(rng.range(0, 7))});
    return v;
}

inline std::string describe(const std::vector<Spec> &v, std::size_t shown = 6)
{
    std::string s = std::to_string(v.size()) + " tensors:";
    for (std::size_t k = 0; k < v.size() && k < shown; ++k)
        s += std::string(" ") + oracle::dtype_name(v[k].dtype) + "[" + std::to_string(v[k].numel) +
             "]@+" + std::to_string(v[k].offset);
    if (v.size() > shown)
        s += " ...";
    return s;
}

// ---- per-operation conformance tables ---------------------------------------

// One row of a norm operation's table. max_norm is given relative to the
// plan's total norm N (already multiplied by inv_scale), so that each row
// means the same thing on every plan: a fraction below 1 clips, a fraction
// above 1 leaves the factor at exactly inv_scale (nothing written when that
// is 1), infinity never clips and 0 zeroes the gradients.
struct NormCase {
    float norm_type;
    float inv_scale;
    float max_norm_fraction;

    float max_norm(float total_norm) const
    {
        if (std::isinf(max_norm_fraction))
            return max_norm_fraction;
        return max_norm_fraction * (std::isfinite(total_norm) ? total_norm : 1.0f);
    }

    gclip_norm_options options(float total_norm) const
    {
        gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
        o.norm_type = norm_type;
        o.inv_scale = inv_scale;
        o.max_norm = max_norm(total_norm);
        return o;
    }

    // gtest-friendly: letters, digits and underscores only
    std::string name() const
    {
        std::string n = std::isinf(norm_type) ? "Linf"
                        : norm_type == 0.5f   ? "Lhalf"
                                              : "L" + std::to_string(static_cast<int>(norm_type));
        n += inv_scale == 1.0f ? "" : "_inv" + std::to_string(static_cast<int>(1.0f / inv_scale));
        if (std::isinf(max_norm_fraction))
            n += "_noclip";
        else if (max_norm_fraction == 0.0f)
            n += "_zero";
        else if (max_norm_fraction >= 1.0f)
            n += "_above";
        else
            n += "_clip";
        return n;
    }
};

// Whether op uses max_norm (computes a clipping coefficient of its own).
inline bool op_clips(int32_t op)
{
    return op == GCLIP_OP_CLIP_NORM || op == GCLIP_OP_CLIP_PER_TENSOR ||
           op == GCLIP_OP_CLIP_FACTOR || op == GCLIP_OP_CLIP_WITH_NORM ||
           op == GCLIP_OP_FINALIZE;
}

// The rows every engine runs for a norm operation. Norm types x inv_scale
// x max_norm fractions in a covering design rather than the full product
// (the emulator runs every row on every plan shape): every norm kind (L2,
// L1, Inf, a general p above and below 1) clips, with and without an AMP
// inv_scale; then a fraction above 1 (coefficient 1 from the division: the
// factor is exactly 1 and nothing is written, or inv_scale alone), infinity
// (never clips) and 0 (every finite gradient zeroed). Ops that do not clip
// run the norm rows only.
inline std::vector<NormCase> norm_cases(int32_t op)
{
    const float inf = std::numeric_limits<float>::infinity();
    const NormCase norms[] = {{2.0f, 1.0f, 0.5f}, {2.0f, 0.25f, 0.5f}, {1.0f, 0.25f, 0.5f},
                              {inf, 1.0f, 0.5f},  {3.0f, 0.25f, 0.5f}, {0.5f, 1.0f, 0.5f}};
    std::vector<NormCase> v;
    for (NormCase c : norms) {
        if (!op_clips(op))
            c.max_norm_fraction = inf;
        v.push_back(c);
    }
    if (op_clips(op)) {
        v.push_back(NormCase{2.0f, 1.0f, 2.0f});
        v.push_back(NormCase{1.0f, 0.25f, 2.0f});
        v.push_back(NormCase{inf, 1.0f, inf});
        v.push_back(NormCase{2.0f, 0.25f, inf});
        v.push_back(NormCase{2.0f, 1.0f, 0.0f});
        v.push_back(NormCase{3.0f, 0.25f, 0.0f});
    }
    return v;
}

// The bounds every engine runs value clipping with: one that clips about
// half the elements of unit-variance data, one that clips nearly all, 0
// (every element to +-0, NaN kept) and +Inf (nothing changes).
inline std::vector<float> value_clip_bounds()
{
    return {0.75f, 3.0e-3f, 0.0f, std::numeric_limits<float>::infinity()};
}

inline std::string bound_name(float v)
{
    if (std::isinf(v))
        return "inf";
    if (v == 0.0f)
        return "zero";
    return v >= 0.5f ? "wide" : "tight";
}

} // namespace specs

#endif // GCLIP_TEST_SPECS_HPP
