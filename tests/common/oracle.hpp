// oracle.hpp - an independent reference for the gclip tests (header only, C++17).
//
// Nothing here uses the library's own code: the f16/bf16 conversions are
// written from the IEEE definitions with frexp/ldexp and explicit
// round-to-nearest-even on long double (the library does bit manipulation),
// and the norms are naive long-double loops. The tests compare the library
// against these helpers.
//
//   to_float / from_float     element decode and RNE encode for every dtype
//   Rng, fill_random          seeded data, never all zeros
//   TestBuffer                exact-size allocation at a chosen element offset
//   norms                     long-double p-norms, total and per tensor
//   expected_coef/scaled/...  the expected arithmetic of docs/semantics.md
//   fnv1a / checksum          byte hashes proving that nothing changed
//   ulp_distance              distance between floats in units in the last place
#ifndef GCLIP_TEST_ORACLE_HPP
#define GCLIP_TEST_ORACLE_HPP

#include "gclip.h"

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

namespace oracle {

using ld = long double;

// ---- element conversions ----------------------------------------------------

inline std::size_t dtype_size(gclip_dtype dt)
{
    return dt == GCLIP_F64 ? 8 : dt == GCLIP_F32 ? 4 : 2;
}

inline const char *dtype_name(gclip_dtype dt)
{
    return dt == GCLIP_F64 ? "f64" : dt == GCLIP_F32 ? "f32" : dt == GCLIP_F16 ? "f16" : "bf16";
}

inline float bits_to_float(uint32_t u)
{
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline uint32_t float_to_bits(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// Decode an IEEE binary16 value: (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m for e = 0.
inline float f16_to_float(uint16_t h)
{
    const int sign = (h >> 15) & 1;
    const int e = (h >> 10) & 0x1f;
    const int m = h & 0x3ff;
    ld v;
    if (e == 0x1f)
        v = m ? std::numeric_limits<ld>::quiet_NaN() : std::numeric_limits<ld>::infinity();
    else if (e == 0)
        v = std::ldexp(static_cast<ld>(m), -24);
    else
        v = std::ldexp(static_cast<ld>(1024 + m), e - 25);
    return static_cast<float>(sign ? -v : v);
}

// bfloat16 is the top half of a binary32: decode by value, 1.m * 2^(e-127).
inline float bf16_to_float(uint16_t h)
{
    const int sign = (h >> 15) & 1;
    const int e = (h >> 7) & 0xff;
    const int m = h & 0x7f;
    ld v;
    if (e == 0xff)
        v = m ? std::numeric_limits<ld>::quiet_NaN() : std::numeric_limits<ld>::infinity();
    else if (e == 0)
        v = std::ldexp(static_cast<ld>(m), -133);
    else
        v = std::ldexp(static_cast<ld>(128 + m), e - 134);
    return static_cast<float>(sign ? -v : v);
}

// Round |x| to a multiple of 2^q_exp, ties to even (x is exact in long double).
inline ld round_to_quantum(ld ax, int q_exp)
{
    const ld q = std::ldexp(ax, -q_exp); // exact: power-of-two scaling
    ld whole = std::floor(q);
    const ld frac = q - whole;
    if (frac > 0.5L || (frac == 0.5L && std::fmod(whole, 2.0L) != 0.0L))
        whole += 1.0L;
    return std::ldexp(whole, q_exp);
}

// Round a value to a binary format with `mant_bits` significand bits
// (including the implicit one), minimum normal exponent `emin` and largest
// finite value `max_finite`. Returns the rounded value (possibly +-Inf).
inline ld round_to_format(ld x, int mant_bits, int emin, ld max_finite)
{
    if (std::isnan(x) || std::isinf(x) || x == 0.0L)
        return x;
    const ld ax = std::fabs(x);
    int e; // ax = f * 2^e, f in [0.5, 1): the leading bit has weight 2^(e-1)
    std::frexp(ax, &e);
    int lead = e - 1;
    if (lead < emin)
        lead = emin; // subnormal: fixed quantum
    ld r = round_to_quantum(ax, lead - (mant_bits - 1));
    // Overflow threshold is max_finite + half an ulp of it; the tie rounds to
    // the even neighbour, which is the next power of two, i.e. Inf.
    if (r > max_finite)
        r = std::numeric_limits<ld>::infinity();
    return x < 0 ? -r : r;
}

// Encode a float as binary16 with round-to-nearest-even (NaN -> quiet NaN).
inline uint16_t float_to_f16(float f)
{
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    if (std::isnan(f))
        return static_cast<uint16_t>(sign | 0x7e00);
    const ld r = std::fabs(round_to_format(f, 11, -14, 65504.0L));
    if (std::isinf(r))
        return static_cast<uint16_t>(sign | 0x7c00);
    if (r < std::ldexp(1.0L, -14)) // subnormal or zero: count of 2^-24 steps
        return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::ldexp(r, 24)));
    int e;
    std::frexp(r, &e); // r = 1.m * 2^(e-1)
    const unsigned man = static_cast<unsigned>(std::ldexp(r, 11 - e)) - 1024u;
    return static_cast<uint16_t>(sign | ((e - 1 + 15) << 10) | man);
}

// Encode a float as bfloat16 with round-to-nearest-even (NaN -> quiet NaN).
inline uint16_t float_to_bf16(float f)
{
    if (std::isnan(f))
        return static_cast<uint16_t>((std::signbit(f) ? 0x8000 : 0) | 0x7fc0);
    const ld max_bf16 = std::ldexp(static_cast<ld>(255), 120); // 0x7f7f
    const ld r = round_to_format(f, 8, -126, max_bf16);
    // the rounded value is a float whose low 16 bits are zero
    return static_cast<uint16_t>(float_to_bits(static_cast<float>(r)) >> 16);
}

// Element i of an f64 buffer.
inline double load_f64(const void *p, int64_t i)
{
    double d;
    std::memcpy(&d, static_cast<const char *>(p) + 8 * i, 8);
    return d;
}

// Element i of a buffer of `dt`, as float (f64 rounded; see load_exact).
inline float load(const void *p, gclip_dtype dt, int64_t i)
{
    if (dt == GCLIP_F64)
        return static_cast<float>(load_f64(p, i));
    if (dt == GCLIP_F32) {
        float f;
        std::memcpy(&f, static_cast<const char *>(p) + 4 * i, 4);
        return f;
    }
    uint16_t h;
    std::memcpy(&h, static_cast<const char *>(p) + 2 * i, 2);
    return dt == GCLIP_F16 ? f16_to_float(h) : bf16_to_float(h);
}

// Element i with its full value, for every dtype.
inline ld load_exact(const void *p, gclip_dtype dt, int64_t i)
{
    return dt == GCLIP_F64 ? static_cast<ld>(load_f64(p, i)) : static_cast<ld>(load(p, dt, i));
}

// Store float v as element i of a buffer of `dt`, rounding to nearest even.
inline void store(void *p, gclip_dtype dt, int64_t i, float v)
{
    char *c = static_cast<char *>(p);
    if (dt == GCLIP_F64) {
        const double d = v;
        std::memcpy(c + 8 * i, &d, 8);
        return;
    }
    if (dt == GCLIP_F32) {
        std::memcpy(c + 4 * i, &v, 4);
        return;
    }
    const uint16_t h = dt == GCLIP_F16 ? float_to_f16(v) : float_to_bf16(v);
    std::memcpy(c + 2 * i, &h, 2);
}

// Raw bits of element i (f32: 32 bits, f16/bf16: 16 bits, f64: a 32-bit
// fold of its 64 bits).
inline uint32_t raw_bits(const void *p, gclip_dtype dt, int64_t i)
{
    if (dt == GCLIP_F64) {
        uint64_t u;
        std::memcpy(&u, static_cast<const char *>(p) + 8 * i, 8);
        return static_cast<uint32_t>(u ^ (u >> 32));
    }
    if (dt == GCLIP_F32) {
        uint32_t u;
        std::memcpy(&u, static_cast<const char *>(p) + 4 * i, 4);
        return u;
    }
    uint16_t h;
    std::memcpy(&h, static_cast<const char *>(p) + 2 * i, 2);
    return h;
}

// The value `v` would have after a round trip through `dt`.
inline float quantize(float v, gclip_dtype dt)
{
    if (dt == GCLIP_F32 || dt == GCLIP_F64)
        return v;
    return dt == GCLIP_F16 ? f16_to_float(float_to_f16(v)) : bf16_to_float(float_to_bf16(v));
}

// ---- seeded random data -------------------------------------------------------

// A deterministic generator: every test names its seed, so failures replay.
class Rng {
public:
    explicit Rng(uint64_t seed) : gen_(seed) {}

    // Gaussian value with standard deviation `scale`, never exactly zero.
    double normal(double scale)
    {
        std::normal_distribution<double> d(0.0, 1.0);
        for (;;) {
            const double v = d(gen_) * scale;
            if (v != 0.0)
                return v;
        }
    }

    double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gen_); }

    // Integer in [lo, hi].
    int64_t range(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen_); }

    std::mt19937_64 &engine() { return gen_; }

private:
    std::mt19937_64 gen_;
};

// Fill n elements of `dt` at p with normal values of standard deviation
// `scale`. Values that round to zero in `dt` are replaced by the smallest
// positive value of the format, so the buffer is never all zeros.
inline void fill_random(void *p, gclip_dtype dt, int64_t n, Rng &rng, double scale)
{
    if (dt == GCLIP_F64) { // full double values, not floats widened
        for (int64_t i = 0; i < n; ++i) {
            const double v = rng.normal(scale);
            std::memcpy(static_cast<char *>(p) + 8 * i, &v, 8);
        }
        return;
    }
    for (int64_t i = 0; i < n; ++i) {
        float v = static_cast<float>(rng.normal(scale));
        if (quantize(v, dt) == 0.0f || std::isinf(quantize(v, dt)))
            v = dt == GCLIP_F32 ? std::numeric_limits<float>::denorm_min()
                : dt == GCLIP_F16 ? f16_to_float(1) : bf16_to_float(1);
        store(p, dt, i, v);
    }
}

// ---- exact-size buffers at an element offset ------------------------------------

// Owns (offset + numel) elements of `dt`, allocated with exactly that many
// bytes, and exposes the last `numel` of them. malloc returns 16-byte aligned
// memory, so `offset` elements shift the start by offset*size bytes modulo 16
// (odd starts for the vector/scalar split). Exact sizes let AddressSanitizer
// catch a single element read or written past the end.
class TestBuffer {
public:
    TestBuffer() = default;
    TestBuffer(gclip_dtype dt, int64_t numel, int64_t offset = 0)
        : dt_(dt), numel_(numel), offset_(offset)
    {
        const std::size_t bytes = static_cast<std::size_t>(offset + numel) * dtype_size(dt);
        if (bytes) {
            base_ = static_cast<char *>(std::malloc(bytes));
            if (!base_)
                throw std::bad_alloc();
        }
    }
    TestBuffer(const TestBuffer &o) : TestBuffer(o.dt_, o.numel_, o.offset_)
    {
        if (o.base_)
            std::memcpy(base_, o.base_, bytes_total());
    }
    TestBuffer(TestBuffer &&o) noexcept { swap(o); }
    TestBuffer &operator=(TestBuffer o) noexcept
    {
        swap(o);
        return *this;
    }
    ~TestBuffer() { std::free(base_); }

    void swap(TestBuffer &o) noexcept
    {
        std::swap(dt_, o.dt_);
        std::swap(numel_, o.numel_);
        std::swap(offset_, o.offset_);
        std::swap(base_, o.base_);
    }

    // Start of the tensor's elements (NULL for an empty buffer with offset 0).
    void *data() const { return base_ ? base_ + offset_ * dtype_size(dt_) : nullptr; }
    int64_t numel() const { return numel_; }
    gclip_dtype dtype() const { return dt_; }
    std::size_t bytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dt_); }
    gclip_tensor tensor() const { return gclip_tensor{data(), numel_, dt_}; }

    float get(int64_t i) const { return load(data(), dt_, i); }
    long double get_exact(int64_t i) const { return load_exact(data(), dt_, i); }
    void set(int64_t i, float v) { store(data(), dt_, i, v); }
    uint32_t bits(int64_t i) const { return raw_bits(data(), dt_, i); }

    void fill(Rng &rng, double scale) { fill_random(data(), dt_, numel_, rng, scale); }

    // Copy the elements of a buffer of the same dtype and size into this
    // one, keeping this buffer's address (a plan may point at it).
    void copy_from(const TestBuffer &o)
    {
        if (o.dt_ != dt_ || o.numel_ != numel_)
            throw std::invalid_argument("TestBuffer::copy_from: shape differs");
        if (numel_)
            std::memcpy(data(), o.data(), bytes());
    }

private:
    std::size_t bytes_total() const
    {
        return static_cast<std::size_t>(offset_ + numel_) * dtype_size(dt_);
    }

    gclip_dtype dt_ = GCLIP_F32;
    int64_t numel_ = 0;
    int64_t offset_ = 0;
    char *base_ = nullptr;
};

inline std::vector<gclip_tensor> tensors_of(const std::vector<TestBuffer> &bufs)
{
    std::vector<gclip_tensor> t;
    t.reserve(bufs.size());
    for (const auto &b : bufs)
        t.push_back(b.tensor());
    return t;
}

// ---- checksums ---------------------------------------------------------------------

// FNV-1a 64-bit over raw bytes, chained through `h`.
inline uint64_t fnv1a(const void *p, std::size_t n, uint64_t h = 1469598103934665603ull)
{
    const unsigned char *c = static_cast<const unsigned char *>(p);
    for (std::size_t i = 0; i < n; ++i) {
        h ^= c[i];
        h *= 1099511628211ull;
    }
    return h;
}

// Hash of every byte of every tensor (the numel and dtype are mixed in too).
inline uint64_t checksum(const gclip_tensor *t, std::size_t count)
{
    uint64_t h = 1469598103934665603ull;
    for (std::size_t i = 0; i < count; ++i) {
        h = fnv1a(&t[i].numel, sizeof t[i].numel, h);
        if (t[i].data && t[i].numel > 0)
            h = fnv1a(t[i].data, static_cast<std::size_t>(t[i].numel) * dtype_size(t[i].dtype), h);
    }
    return h;
}

inline uint64_t checksum(const std::vector<TestBuffer> &bufs)
{
    const auto t = tensors_of(bufs);
    return checksum(t.data(), t.size());
}

// ---- norms ------------------------------------------------------------------------

// Long-double p-norms of a list of tensors, per tensor and over all elements.
// `p` may be INFINITY (max |x|). NaN anywhere gives NaN; otherwise an Inf
// element gives Inf. As in docs/semantics.md every norm is multiplied by
// inv_scale (the norm of the unscaled gradients).
struct Norms {
    ld total = 0;
    std::vector<ld> per_tensor;
};

inline ld norm_root(ld acc, double p)
{
    if (std::isinf(p) || p == 1.0)
        return acc;
    if (p == 2.0)
        return std::sqrt(acc);
    return std::pow(acc, 1.0L / static_cast<ld>(p));
}

inline Norms norms(const gclip_tensor *t, std::size_t count, double p, double inv_scale = 1.0)
{
    Norms out;
    ld total_acc = 0;
    bool any_nan = false;
    for (std::size_t k = 0; k < count; ++k) {
        ld acc = 0;
        bool nan = false;
        for (int64_t i = 0; i < t[k].numel; ++i) {
            const ld a = std::fabs(load_exact(t[k].data, t[k].dtype, i));
            if (std::isnan(a))
                nan = true;
            else if (std::isinf(p))
                acc = a > acc ? a : acc;
            else if (p == 1.0)
                acc += a;
            else if (p == 2.0)
                acc += a * a;
            else
                acc += std::pow(a, static_cast<ld>(p));
        }
        ld n = nan ? std::numeric_limits<ld>::quiet_NaN() : norm_root(acc, p) * inv_scale;
        out.per_tensor.push_back(n);
        any_nan = any_nan || nan;
        if (std::isinf(p))
            total_acc = acc > total_acc ? acc : total_acc;
        else
            total_acc += acc;
    }
    out.total = any_nan ? std::numeric_limits<ld>::quiet_NaN() : norm_root(total_acc, p) * inv_scale;
    return out;
}

inline Norms norms(const std::vector<TestBuffer> &bufs, double p, double inv_scale = 1.0)
{
    const auto t = tensors_of(bufs);
    return norms(t.data(), t.size(), p, inv_scale);
}

// The float the library should report for a long-double norm: rounded once,
// Inf when the true value exceeds FLT_MAX.
inline float as_reported(ld n) { return static_cast<float>(n); }

// |got - want| <= tol * |want| + 2^-150, with NaN == NaN. The 2^-150 is
// half the spacing of float's subnormals: a norm below FLT_MIN is reported
// as a subnormal float, which holds no relative accuracy, and its rounding
// is off by at most that (elsewhere it is far below tol * |want|). A
// reference beyond the float range (Inf once rounded to float) must be
// reported as that Inf.
inline bool rel_close(float got, ld want, ld tol)
{
    if (std::isnan(want))
        return std::isnan(got);
    if (std::isinf(as_reported(want)))
        return got == as_reported(want);
    if (!std::isfinite(got))
        return false;
    return std::fabs(static_cast<ld>(got) - want) <= tol * std::fabs(want) + std::ldexp(1.0L, -150);
}

// ---- expected clipping arithmetic (docs/semantics.md) ----------------------------

// PyTorch's coefficient, in float: min(1, max_norm / (N + eps)), NaN kept.
// torch evaluates `scalar / tensor` as reciprocal(tensor) * scalar: two float
// roundings, which PyTorch's vector V4 (N = 6, C = 3; test_conformance.cpp) tells apart
// from one division.
inline float expected_coef(float norm, float max_norm, float eps)
{
    const float denom = norm + eps;
    const float recip = 1.0f / denom;
    const float c = recip * max_norm;
    return std::isnan(c) ? c : std::fmin(c, 1.0f);
}

// The coefficient of an operation, its max_norm given by value or read
// from max_norm_ptr (docs/semantics.md), written as eps raised to FLT_MIN
// under max_norm 0 and lowered to 1e30 under +Inf: 0 x Inf never makes the
// coefficient of a finite norm NaN (0 and 1 instead); written here apart
// from the library's gclip_coef_eps.
inline float expected_op_coef(float norm, float max_norm, float eps)
{
    if (max_norm == 0.0f && eps < FLT_MIN)
        eps = FLT_MIN;
    else if (max_norm == INFINITY && eps > 1e30f)
        eps = 1e30f;
    return expected_coef(norm, max_norm, eps);
}

// Element after multiplication by `factor`: float product, rounded to the
// element's dtype to nearest even.
inline float expected_scaled(float x, float factor, gclip_dtype dt)
{
    return quantize(x * factor, dt);
}

// Element after value clipping to [-v, v] (NaN kept), rounded to the dtype.
inline float expected_clamped(float x, float v, gclip_dtype dt)
{
    if (std::isnan(x))
        return x;
    const float c = x < -v ? -v : (x > v ? v : x);
    return quantize(c, dt);
}

// An f64 element after value clipping to the double bound [-v, v] (NaN kept).
inline double expected_clamped_f64(double x, double v)
{
    if (std::isnan(x))
        return x;
    return x < -v ? -v : (x > v ? v : x);
}

// Distance between two finite floats of equal sign in units in the last place
// (0 for identical values, including +0 and -0).
inline int64_t ulp_distance(float a, float b)
{
    if (a == b)
        return 0;
    if (std::isnan(a) || std::isnan(b))
        return std::numeric_limits<int64_t>::max();
    auto key = [](float f) {
        const int64_t u = float_to_bits(f);
        return (u & 0x80000000) ? -(u & 0x7fffffff) : u;
    };
    const int64_t d = key(a) - key(b);
    return d < 0 ? -d : d;
}

} // namespace oracle

#endif // GCLIP_TEST_ORACLE_HPP
