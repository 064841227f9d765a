// fuzz_plan.cpp - libFuzzer target for plan creation and every operation of
// the CPU path.
//
// An input decodes into one exact-size arena (so that AddressSanitizer sees a
// single byte read past it), tensor descriptors pointing into it at any byte
// offset (overlaps and misalignment happen), sometimes NULL or with bad sizes
// and dtypes, options drawn from special values (NaN, Inf, negative,
// denormal) and a short sequence of operations. The arena bytes are raw input
// bytes: NaN, Inf, denormals and huge values in f32, f16, bf16 and f64 (f64
// elements are checked as doubles: scaled in double by the float factor,
// clamped in double; their norms against the long-double oracle).
//
// Invariants, each violation calls abort():
//  - the status agrees with an independent model of the validation table
//    (docs/semantics.md): rejected iff some rule is broken;
//  - a rejected call leaves the arena bit-identical (and *plan NULL);
//  - an accepted norm matches the long-double oracle (tests/common/oracle.hpp)
//    within 1e-6 relative, or both are non-finite;
//  - every element written equals the oracle's rounding of original * factor
//    (or the clamp), every other byte of the arena is unchanged.
//
// Input layout (LLVMFuzzerTestOneInput): arena size, tensor count, the
// descriptors, device, number of operations; then kOpBytes bytes for the
// operations (run_op); the bytes left fill the arena, repeated cyclically.
#include "gclip.h"
#include "oracle.hpp"

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

using oracle::ld;

// ---- input decoding ----------------------------------------------------------

// Reads the input front to back; past the end every read is 0, so any prefix
// of an input is itself a valid input.
struct Reader {
    const uint8_t *p;
    std::size_t n;
    uint8_t u8()
    {
        if (!n)
            return 0;
        --n;
        return *p++;
    }
    uint16_t u16() { return static_cast<uint16_t>(u8() | u8() << 8); }
    uint32_t u32() { return static_cast<uint32_t>(u16()) | static_cast<uint32_t>(u16()) << 16; }
};

float special_float(Reader &in)
{
    static const float table[] = {0.0f, -0.0f, 1.0f, 2.0f, 0.5f, 3.0f, INFINITY, -INFINITY, NAN,
                                  -1.0f, FLT_TRUE_MIN, FLT_MAX, 1e-6f, 1e30f, 0.01f};
    const uint8_t sel = in.u8() % 16;
    if (sel < 15)
        return table[sel];
    return oracle::bits_to_float(in.u32()); // any bit pattern
}

constexpr std::size_t kMaxArena = 2048;
constexpr std::size_t kMaxTensors = 10;
constexpr int64_t kChunk = 65536;
constexpr std::size_t kOpBytes = 64;

// ---- counters (printed at exit) ----------------------------------------------

struct Counters {
    unsigned long inputs, plans_ok, plans_rejected, ops_ok, ops_rejected, elements_checked,
        norms_checked, pnorm_underflow, pnorm_overflow, pnorm_tiny_p;
} g_count;

void print_counters()
{
    std::fprintf(stderr,
                 "gclip fuzz: %lu inputs, plans accepted %lu / rejected %lu, operations accepted %lu / "
                 "rejected %lu, %lu norms and %lu elements checked; p-norm checks skipped: %lu "
                 "sum|x|^p < DBL_MIN, %lu sum|x|^p > DBL_MAX/4, %lu p too small\n",
                 g_count.inputs, g_count.plans_ok, g_count.plans_rejected, g_count.ops_ok,
                 g_count.ops_rejected, g_count.norms_checked, g_count.elements_checked,
                 g_count.pnorm_underflow, g_count.pnorm_overflow, g_count.pnorm_tiny_p);
}

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            std::fprintf(stderr, "gclip fuzz: check failed at line %d: %s (last error: %s)\n", \
                         __LINE__, #cond, gclip_last_error());                         \
            std::abort();                                                              \
        }                                                                              \
    } while (0)

// ---- the independent validation model -------------------------------------------

// An enum field as the int the C library sees. In C++ loading an enumeration
// outside its range is undefined, so out-of-range codes travel as raw bits.
template <class E>
int32_t raw(const E &e)
{
    static_assert(sizeof(E) == sizeof(int32_t), "C enums are int-sized");
    int32_t v;
    std::memcpy(&v, &e, sizeof v);
    return v;
}

template <class E>
void set_raw(E &field, int32_t v)
{
    std::memcpy(&field, &v, sizeof v);
}

bool known_dtype(const gclip_dtype &d)
{
    return raw(d) == GCLIP_F32 || raw(d) == GCLIP_F16 || raw(d) == GCLIP_BF16 || raw(d) == GCLIP_F64;
}

bool tensor_ok(const gclip_tensor &t)
{
    if (!known_dtype(t.dtype) || t.numel < 0 || (t.numel > 0 && !t.data))
        return false;
    if (static_cast<uint64_t>(t.numel) > static_cast<uint64_t>(INTPTR_MAX / 4))
        return false;
    return reinterpret_cast<uintptr_t>(t.data) % oracle::dtype_size(t.dtype) == 0;
}

// All tensors valid, chunk indices fit in int32 and no two share a byte.
bool list_ok(const std::vector<gclip_tensor> &t)
{
    uint64_t chunks = 0;
    for (const gclip_tensor &x : t) {
        if (!tensor_ok(x))
            return false;
        chunks += static_cast<uint64_t>((x.numel + kChunk - 1) / kChunk);
        if (chunks > static_cast<uint64_t>(INT32_MAX))
            return false;
    }
    for (std::size_t i = 0; i < t.size(); ++i)
        for (std::size_t j = i + 1; j < t.size(); ++j) {
            if (!t[i].numel || !t[j].numel)
                continue;
            const uintptr_t a0 = reinterpret_cast<uintptr_t>(t[i].data),
                            a1 = a0 + t[i].numel * oracle::dtype_size(t[i].dtype);
            const uintptr_t b0 = reinterpret_cast<uintptr_t>(t[j].data),
                            b1 = b0 + t[j].numel * oracle::dtype_size(t[j].dtype);
            if (a0 < b1 && b0 < a1)
                return false;
        }
    return true;
}

bool options_ok(const gclip_norm_options &o)
{
    return !std::isnan(o.max_norm) && o.max_norm >= 0 && !std::isnan(o.norm_type) &&
           o.norm_type > 0 && std::isfinite(o.eps) && o.eps >= 0 && std::isfinite(o.inv_scale) &&
           o.inv_scale > 0 &&
           raw(o.nonfinite) >= GCLIP_NONFINITE_SKIP && raw(o.nonfinite) <= GCLIP_NONFINITE_ERROR;
}

// ---- state of one input -------------------------------------------------------------

struct State {
    uint8_t *arena = nullptr;
    std::size_t size = 0;
    std::vector<gclip_tensor> tensors; // what the plan currently points at
    gclip_plan *plan = nullptr;
};

// A pointer into the arena for `numel` elements of `dt` at byte `offset`,
// moved back so the tensor stays inside the arena (the library cannot know
// the bounds of caller memory; every other mistake is its to catch).
void *place(const State &s, uint16_t offset, int64_t numel, gclip_dtype dt)
{
    const std::size_t bytes = static_cast<std::size_t>(numel) * oracle::dtype_size(dt);
    if (bytes > s.size)
        return nullptr;
    std::size_t off = offset % (s.size + 1);
    if (off + bytes > s.size)
        off = s.size - bytes;
    return s.arena + off;
}

gclip_tensor decode_tensor(Reader &in, const State &s)
{
    const uint8_t mode = in.u8();
    const gclip_dtype dt = static_cast<gclip_dtype>((mode >> 3) % 4); // F32, F16, BF16, F64
    const uint16_t offset = in.u16();
    const int64_t fit = static_cast<int64_t>(s.size / oracle::dtype_size(dt));
    int64_t numel = fit ? in.u16() % (fit + 1) : 0;
    switch (mode & 7) {
    case 5: // NULL data: valid only when empty
        return {nullptr, in.u8() % 2 ? numel : 0, dt};
    case 6: { // sizes the library must reject before touching memory
        static const int64_t bad[] = {-1, INT64_MIN, INT64_MAX, INTPTR_MAX / 4 + 1,
                                      int64_t{1} << 47 /* 2^31 chunks */};
        return {s.arena + offset % (s.size + 1), bad[in.u8() % 5], dt};
    }
    case 7: { // unknown dtype
        gclip_tensor t{place(s, offset, numel, dt), numel, dt};
        set_raw(t.dtype, static_cast<int32_t>(in.u32()) | 4);
        return t;
    }
    default:
        return {place(s, offset, numel, dt), numel, dt};
    }
}

gclip_norm_options decode_options(Reader &in, std::vector<float> &norms_out)
{
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    const uint8_t which = in.u8(); // which fields to change from the defaults
    if (which & 1)
        o.max_norm = special_float(in);
    if (which & 2)
        o.norm_type = special_float(in);
    if (which & 4)
        o.eps = special_float(in);
    if (which & 8)
        o.inv_scale = special_float(in);
    if (which & 16) {
        const uint8_t pol = in.u8();
        set_raw(o.nonfinite, pol < 240 ? pol % 3 : static_cast<int32_t>(in.u32()));
    }
    if (which & 32)
        o.tensor_norms = norms_out.data();
    return o;
}

// ---- the oracle side -----------------------------------------------------------------

// |got - want| within `tol` relative (plus one float denormal step, since the
// result is rounded to float once), both NaN, or both beyond FLT_MAX.
bool norm_close(float got, ld want, ld tol)
{
    if (std::isnan(want) || std::isnan(got))
        return std::isnan(want) && std::isnan(got);
    if (std::isinf(want))
        return std::isinf(got);
    if (std::isinf(got))
        return want >= static_cast<ld>(FLT_MAX) * (1 - tol);
    return std::fabs(static_cast<ld>(got) - want) <= tol * std::fabs(want) + static_cast<ld>(FLT_TRUE_MIN);
}

// Checks a reported norm of `t` (a snapshot) against the oracle. For a
// general p the library sums |x|^p in double (docs: exact while the terms
// stay in double's range), so the check is skipped, and counted, when the
// long-double sum leaves that range or when p is so small that the 1/p root
// magnifies the double rounding beyond 1e-7 (p below ~1e-8 per 1000
// elements); otherwise the tolerance includes that magnified rounding.
void check_norm(float got, const gclip_tensor *t, std::size_t n, const gclip_norm_options &o)
{
    const double p = o.norm_type;
    const ld want = oracle::norms(t, n, p, o.inv_scale).total;
    ld tol = 1e-6L;
    if (!(std::isinf(p) || p == 1.0 || p == 2.0)) {
        ld sum = 0, elems = 0;
        bool nonfinite = false;
        for (std::size_t k = 0; k < n; ++k)
            for (int64_t i = 0; i < t[k].numel; ++i) {
                const ld x = oracle::load_exact(t[k].data, t[k].dtype, i); // f64 not rounded
                nonfinite |= !std::isfinite(x);
                sum += std::pow(std::fabs(x), static_cast<ld>(p));
                elems += 1;
            }
        // relative error of the double sum, magnified 1/p times by the root
        const ld cond = (elems + 4) * static_cast<ld>(DBL_EPSILON) / static_cast<ld>(p);
        const bool in_range = sum > static_cast<ld>(DBL_MIN) && sum < static_cast<ld>(DBL_MAX) / 4;
        if (!nonfinite && sum != 0 && (!in_range || cond > 1e-7L)) {
            ++(cond > 1e-7L ? g_count.pnorm_tiny_p
                            : sum <= static_cast<ld>(DBL_MIN) ? g_count.pnorm_underflow : g_count.pnorm_overflow);
            return;
        }
        tol += cond;
    }
    ++g_count.norms_checked;
    if (!norm_close(got, want, tol)) {
        std::fprintf(stderr, "gclip fuzz: norm %.9g, oracle %.12Lg (p %g, inv_scale %g)\n",
                     static_cast<double>(got), want, p, static_cast<double>(o.inv_scale));
        std::abort();
    }
}

// Element k of an f64 tensor must be `want` (NaN matches any NaN).
void check_element_f64(const gclip_tensor &t, int64_t k, double want)
{
    const double got = oracle::load_f64(t.data, k);
    if (std::isnan(want)) {
        CHECK(std::isnan(got));
    } else {
        uint64_t a, b;
        std::memcpy(&a, &got, 8);
        std::memcpy(&b, &want, 8);
        CHECK(a == b);
    }
    ++g_count.elements_checked;
}

// Element k of tensor t must be `want` (NaN matches any NaN).
void check_element(const gclip_tensor &t, int64_t k, float want)
{
    const float got = oracle::load(t.data, t.dtype, k);
    if (std::isnan(want))
        CHECK(std::isnan(got));
    else
        CHECK(oracle::float_to_bits(got) == oracle::float_to_bits(want));
    ++g_count.elements_checked;
}

// The whole arena equals `before` (memcmp must not see the NULL data() of an
// empty vector).
bool unchanged(const State &s, const std::vector<uint8_t> &before)
{
    return s.size == 0 || std::memcmp(before.data(), s.arena, s.size) == 0;
}

// Bytes of the arena owned by no tensor must never change.
void check_untouched_bytes(const State &s, const std::vector<uint8_t> &before)
{
    std::vector<bool> owned(s.size, false);
    for (const gclip_tensor &t : s.tensors)
        for (std::size_t b = 0; b < static_cast<std::size_t>(t.numel) * oracle::dtype_size(t.dtype); ++b)
            owned[static_cast<std::size_t>(static_cast<uint8_t *>(t.data) - s.arena) + b] = true;
    for (std::size_t b = 0; b < s.size; ++b)
        CHECK(owned[b] || s.arena[b] == before[b]);
}

// The snapshot's view of tensor i (same offsets inside the copy).
gclip_tensor in_copy(const State &s, const std::vector<uint8_t> &copy, const gclip_tensor &t)
{
    if (!t.data)
        return t;
    return {const_cast<uint8_t *>(copy.data()) + (static_cast<uint8_t *>(t.data) - s.arena), t.numel, t.dtype};
}

// ---- operations ------------------------------------------------------------------------

enum Op { TOTAL, GLOBAL, PER_TENSOR, VALUE, REBIND, THREADS, NUM_OPS };

void check_norm_op(State &s, int op, const gclip_norm_options &o, const std::vector<uint8_t> &before,
                   const std::vector<float> &pre_norms)
{
    const std::size_t n = s.tensors.size();
    std::vector<gclip_tensor> orig(n);
    for (std::size_t i = 0; i < n; ++i)
        orig[i] = in_copy(s, before, s.tensors[i]);
    gclip_result r;
    const gclip_status rs = gclip_get_result(s.plan, &r);
    CHECK(r.has_norm == 1);
    check_norm(r.total_norm, orig.data(), n, o);
    bool any_tensor_nonfinite = false;
    for (std::size_t i = 0; i < n; ++i) {
        check_norm(pre_norms[i], &orig[i], 1, o);
        any_tensor_nonfinite |= !std::isfinite(pre_norms[i]);
        if (o.tensor_norms) // the operation's own output is the same as the norm-only call's
            CHECK(oracle::float_to_bits(o.tensor_norms[i]) == oracle::float_to_bits(pre_norms[i]));
    }
    const bool nonfinite = !std::isfinite(r.total_norm) || (op == PER_TENSOR && any_tensor_nonfinite);
    CHECK(r.nonfinite == nonfinite);
    CHECK(rs == (nonfinite && o.nonfinite == GCLIP_NONFINITE_ERROR ? GCLIP_STATUS_NONFINITE : GCLIP_STATUS_SUCCESS));
    const bool skip = nonfinite && o.nonfinite != GCLIP_NONFINITE_PROPAGATE;
    if (op == GLOBAL && !skip) {
        // a NaN coefficient is the canonical NaN, also one made from numbers
        // (Inf x 0: max_norm +Inf and an Inf norm), where x86 gives 0xffc00000
        float coef = oracle::expected_op_coef(r.total_norm, o.max_norm, o.eps);
        if (std::isnan(coef))
            coef = oracle::bits_to_float(0x7fffffffu);
        CHECK(oracle::float_to_bits(r.clip_coef) == oracle::float_to_bits(coef));
        CHECK(oracle::float_to_bits(r.scale) == oracle::float_to_bits(coef * o.inv_scale));
    } else {
        CHECK(r.clip_coef == 1.0f && r.scale == 1.0f);
    }
    for (std::size_t i = 0; i < n; ++i) {
        float f = 1.0f;
        if (op == GLOBAL)
            f = r.scale;
        else if (op == PER_TENSOR && !skip)
            f = oracle::expected_op_coef(pre_norms[i], o.max_norm, o.eps) * o.inv_scale;
        const std::size_t bytes = static_cast<std::size_t>(s.tensors[i].numel) * oracle::dtype_size(s.tensors[i].dtype);
        if (f == 1.0f) { // nothing may be written at all
            CHECK(bytes == 0 || std::memcmp(s.tensors[i].data, orig[i].data, bytes) == 0);
            continue;
        }
        for (int64_t k = 0; k < s.tensors[i].numel; ++k) {
            if (orig[i].dtype == GCLIP_F64) // scaled in double by the float factor
                check_element_f64(s.tensors[i], k,
                                  oracle::load_f64(orig[i].data, k) * static_cast<double>(f));
            else
                check_element(s.tensors[i], k,
                              oracle::expected_scaled(oracle::load(orig[i].data, orig[i].dtype, k), f,
                                                      orig[i].dtype));
        }
    }
}

void run_op(Reader &in, State &s)
{
    const std::vector<uint8_t> before(s.arena, s.arena + s.size);
    const std::size_t n = s.tensors.size();
    std::vector<float> out_norms(n + 1), pre_norms(n + 1);
    const int op = in.u8() % NUM_OPS;
    gclip_status st = GCLIP_STATUS_SUCCESS;
    bool expect_ok = true;
    if (op == TOTAL || op == GLOBAL || op == PER_TENSOR) {
        gclip_norm_options o = decode_options(in, out_norms);
        const bool null_options = op == TOTAL && (in.u8() & 1);
        if (null_options)
            o = gclip_norm_options_default();
        expect_ok = options_ok(o);
        if (expect_ok) { // the per-tensor norms the operation will use (writes nothing)
            gclip_norm_options probe = o;
            probe.tensor_norms = pre_norms.data();
            CHECK(gclip_total_norm(s.plan, &probe, nullptr) == GCLIP_STATUS_SUCCESS);
            CHECK(unchanged(s, before));
        }
        st = op == TOTAL    ? gclip_total_norm(s.plan, null_options ? nullptr : &o, nullptr)
             : op == GLOBAL ? gclip_clip_grad_norm(s.plan, &o, nullptr)
                            : gclip_clip_grad_norm_per_tensor(s.plan, &o, nullptr);
        CHECK((st == GCLIP_STATUS_SUCCESS) == expect_ok);
        if (expect_ok)
            check_norm_op(s, op, o, before, pre_norms);
    } else if (op == VALUE) {
        const float v = special_float(in);
        expect_ok = !std::isnan(v) && v >= 0;
        st = gclip_clip_grad_value(s.plan, v, nullptr);
        CHECK((st == GCLIP_STATUS_SUCCESS) == expect_ok);
        if (expect_ok) {
            gclip_result r;
            CHECK(gclip_get_result(s.plan, &r) == GCLIP_STATUS_SUCCESS);
            CHECK(r.has_norm == 0 && std::isnan(r.total_norm) && r.scale == 1.0f && r.nonfinite == 0);
            for (const gclip_tensor &t : s.tensors)
                for (int64_t k = 0; k < t.numel; ++k) {
                    const void *was = in_copy(s, before, t).data;
                    if (t.dtype == GCLIP_F64) { // clamped in double to the widened bound
                        check_element_f64(t, k, oracle::expected_clamped_f64(oracle::load_f64(was, k), v));
                    } else {
                        check_element(t, k, oracle::expected_clamped(oracle::load(was, t.dtype, k), v, t.dtype));
                    }
                }
        }
    } else if (op == REBIND) {
        std::vector<gclip_tensor> next = s.tensors;
        for (gclip_tensor &t : next) {
            const uint8_t mode = in.u8();
            const uint16_t offset = in.u16();
            if (mode % 8 == 6)
                t.data = nullptr;
            else if (mode % 8 != 7)
                t.data = place(s, offset, t.numel, t.dtype);
        }
        std::vector<void *> ptrs;
        for (const gclip_tensor &t : next)
            ptrs.push_back(t.data);
        ptrs.push_back(nullptr);
        const uint8_t c = in.u8();
        const std::size_t count = c < 240 ? n : c % 2 ? n + 1 : n - (n > 0);
        expect_ok = count == n && list_ok(next);
        st = gclip_plan_rebind(s.plan, ptrs.data(), count, nullptr);
        CHECK((st == GCLIP_STATUS_SUCCESS) == expect_ok);
        if (expect_ok)
            s.tensors = next;
        CHECK(unchanged(s, before));
    } else {
        const int k = static_cast<int>(in.u8() % 4) - 1;
        expect_ok = k >= 0;
        CHECK((gclip_plan_set_num_threads(s.plan, k) == GCLIP_STATUS_SUCCESS) == expect_ok);
    }
    if (expect_ok) {
        ++g_count.ops_ok;
        check_untouched_bytes(s, before);
    } else {
        ++g_count.ops_rejected;
        CHECK(gclip_last_error()[0] != '\0');
        CHECK(unchanged(s, before));
    }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
    std::atexit(print_counters);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, std::size_t size)
{
    ++g_count.inputs;
    Reader in{data, size};
    State s;
    s.size = in.u16() % (kMaxArena + 1);
    const uint8_t head = in.u8();
    const std::size_t count = head % (kMaxTensors + 1);
    s.arena = static_cast<uint8_t *>(std::malloc(s.size ? s.size : 1));
    CHECK(s.arena);
    for (std::size_t i = 0; i < count; ++i)
        s.tensors.push_back(decode_tensor(in, s));
    const uint8_t dev = in.u8();
    int device = dev < 240 ? GCLIP_DEVICE_CPU : dev < 248 ? -2 - dev % 3 : dev % 2;
    if (device >= 0 && gclip_cuda_device_count() > 0)
        device = GCLIP_DEVICE_CPU; // arena memory is host memory
    const bool null_list = (head & 0x80) && count > 0;
    const bool null_plan_arg = (head & 0x40) && (head & 0x20);
    const int nops = 1 + in.u8() % 4;
    // The next kOpBytes bytes describe the operations, the rest is the arena
    // data; fixed, so that mutating one part does not shift the other.
    Reader ops{in.p, in.n < kOpBytes ? in.n : kOpBytes};
    for (std::size_t i = 0; i < kOpBytes; ++i)
        in.u8();
    for (std::size_t b = 0; b < s.size; ++b)
        s.arena[b] = in.n ? in.p[b % in.n] : static_cast<uint8_t>(0x3c + b);

    const std::vector<uint8_t> before(s.arena, s.arena + s.size);
    gclip_plan *sentinel = reinterpret_cast<gclip_plan *>(&s);
    s.plan = sentinel;
    const bool expect_ok = !null_list && !null_plan_arg && device == GCLIP_DEVICE_CPU && list_ok(s.tensors);
    const gclip_status st = gclip_plan_create(null_plan_arg ? nullptr : &s.plan,
                                              null_list ? nullptr : s.tensors.data(), count, device);
    CHECK((st == GCLIP_STATUS_SUCCESS) == expect_ok);
    CHECK(unchanged(s, before));
    if (!expect_ok) {
        ++g_count.plans_rejected;
        CHECK(gclip_last_error()[0] != '\0');
        CHECK(s.plan == (null_plan_arg ? sentinel : nullptr));
        std::free(s.arena);
        return 0;
    }
    ++g_count.plans_ok;
    gclip_result r;
    CHECK(gclip_get_result(s.plan, &r) == GCLIP_STATUS_SUCCESS && r.has_norm == 0 && r.scale == 1.0f);
    for (int i = 0; i < nops; ++i)
        run_op(ops, s);
    const gclip_device_result *dr = nullptr;
    CHECK(gclip_plan_device_result(s.plan, &dr) == GCLIP_STATUS_SUCCESS && dr);
    CHECK(gclip_get_result(s.plan, &r) != GCLIP_STATUS_INVALID_ARGUMENT);
    CHECK(oracle::float_to_bits(dr->scale) == oracle::float_to_bits(r.scale) && dr->nonfinite == r.nonfinite);
    CHECK(gclip_plan_destroy(s.plan) == GCLIP_STATUS_SUCCESS);
    std::free(s.arena);
    return 0;
}
