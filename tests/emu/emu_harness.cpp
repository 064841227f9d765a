// emu_harness.cpp - see emu_harness.hpp.
#include "emu_harness.hpp"

#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>
#include <stdexcept>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define EMU_POISON(p, n) __asan_poison_memory_region((p), (n))
#define EMU_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define EMU_POISON(p, n) ((void)(p), (void)(n))
#define EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace emu {

// ---- DevBuf ----------------------------------------------------------------------

DevBuf::DevBuf(std::size_t bytes, std::size_t lead, bool paged) : bytes_(bytes), lead_(lead)
{
    if (paged) {
        const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
        mapped_ = (lead + bytes + page - 1) / page * page;
        if (mapped_ == 0)
            mapped_ = page;
        void *p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            throw std::bad_alloc();
        base_ = static_cast<unsigned char *>(p);
    } else {
        base_ = static_cast<unsigned char *>(std::malloc(lead + bytes));
        if (!base_)
            throw std::bad_alloc();
    }
    std::memset(base_, 0xff, lead);
    EMU_POISON(base_, lead & ~std::size_t(7));
}

DevBuf::DevBuf(DevBuf &&o) noexcept { *this = std::move(o); }

DevBuf &DevBuf::operator=(DevBuf &&o) noexcept
{
    if (this != &o) {
        release();
        base_ = o.base_;
        bytes_ = o.bytes_;
        lead_ = o.lead_;
        mapped_ = o.mapped_;
        o.base_ = nullptr;
    }
    return *this;
}

DevBuf::~DevBuf() { release(); }

void DevBuf::release()
{
    if (!base_)
        return;
    EMU_UNPOISON(base_, lead_);
    if (mapped_)
        munmap(base_, mapped_);
    else
        std::free(base_);
    base_ = nullptr;
}

void DevBuf::fill(unsigned char byte) { std::memset(data(), byte, bytes_); }

bool DevBuf::lead_intact() const
{
    EMU_UNPOISON(base_, lead_);
    bool ok = true;
    for (std::size_t i = 0; i < lead_; ++i)
        ok = ok && base_[i] == 0xff;
    EMU_POISON(base_, lead_ & ~std::size_t(7));
    return ok;
}

void DevBuf::set_read_only(bool ro)
{
    if (mapped_)
        mprotect(base_, mapped_, ro ? PROT_READ : PROT_READ | PROT_WRITE);
}

// ---- Fixture -----------------------------------------------------------------------

namespace {

constexpr std::size_t kGuard = 16; // garbage bytes before every device tensor

std::size_t bytes_of(const Spec &s)
{
    return static_cast<std::size_t>(s.numel) * oracle::dtype_size(s.dtype);
}

template <class T>
DevBuf table_copy(const T *src, std::size_t n)
{
    DevBuf b(n * sizeof(T));
    if (n)
        std::memcpy(b.data(), src, n * sizeof(T));
    return b;
}

// |a - b| <= tol * |b|; NaN equals NaN, infinities must match exactly.
bool close(float a, float b, double tol)
{
    if (std::isnan(a) || std::isnan(b))
        return std::isnan(a) && std::isnan(b);
    if (std::isinf(a) || std::isinf(b))
        return a == b;
    return std::fabs(static_cast<double>(a) - b) <= tol * std::fabs(static_cast<double>(b));
}

// memcmp that accepts the NULL data of empty tensors.
bool same_bytes(const void *a, const void *b, std::size_t n)
{
    return n == 0 || std::memcmp(a, b, n) == 0;
}

// Same float value and sign of zero, or both NaN.
bool same(float a, float b)
{
    if (std::isnan(a) || std::isnan(b))
        return std::isnan(a) && std::isnan(b);
    return oracle::float_to_bits(a) == oracle::float_to_bits(b);
}

// Emulated norms differ from the CPU path's only by the reduction order of
// doubles (relative 1e-15) and the final rounding to float (6e-8).
constexpr double kNormTol = 1e-6;
// The oracle sums in long double: the same bound plus its own rounding.
constexpr double kOracleTol = 2e-6;

} // namespace

Fixture::Fixture(std::vector<Spec> specs, uint64_t seed, double scale, bool paged)
    : specs_(std::move(specs))
{
    oracle::Rng rng(seed);
    std::vector<gclip_tensor> host_tensors;
    for (const Spec &s : specs_) {
        std::vector<unsigned char> bytes(bytes_of(s));
        oracle::fill_random(bytes.data(), s.dtype, s.numel, rng, scale);
        pristine_.push_back(bytes);
        host_.emplace_back(s.dtype, s.numel, s.offset);
        const std::size_t lead = kGuard + static_cast<std::size_t>(s.offset) * oracle::dtype_size(s.dtype);
        dev_.emplace_back(bytes.size(), lead, paged);
        host_tensors.push_back(gclip_tensor{host_.back().data(), s.numel, s.dtype});
    }
    const gclip_status st = gclip_plan_create(&plan_, host_tensors.data(), host_tensors.size(),
                                              GCLIP_DEVICE_CPU);
    if (st != GCLIP_STATUS_SUCCESS)
        throw std::runtime_error(std::string("gclip_plan_create: ") + gclip_last_error());

    std::vector<gclip_tensor_desc> desc(plan_->tensors, plan_->tensors + count());
    for (std::size_t k = 0; k < count(); ++k)
        desc[k].data = dev_[k].data();
    tensors_ = table_copy(desc.data(), desc.size());
    chunks_ = table_copy(plan_->chunks, plan_->num_chunks);
    partials_ = DevBuf(sizeof(double) * gclip_kernel_grid(plan_->num_chunks));
    factors_ = DevBuf(sizeof(float) * count());
    ticket_ = DevBuf(sizeof(unsigned));
    result_ = DevBuf(sizeof(gclip_result_slot));
    norms_ = DevBuf(sizeof(float) * count());
    *ticket_.as<unsigned>() = 0; // as the plan's workspace starts
    cpu_norms_.assign(count(), 0.0f);

    tables_.tensors = tensors_.as<const gclip_tensor_desc>();
    tables_.chunks = chunks_.as<const gclip_chunk>();
    tables_.num_tensors = static_cast<uint32_t>(count());
    tables_.num_chunks = plan_->num_chunks;
    tables_.partials = partials_.as<double>();
    tables_.tensor_factor = factors_.as<float>();
    tables_.ticket = ticket_.as<unsigned>();
    tables_.result = result_.as<gclip_result_slot>();
    reset();
    reset_host();
}

Fixture::~Fixture()
{
    set_read_only(false);
    gclip_plan_destroy(plan_);
}

void Fixture::set_element(std::size_t k, int64_t i, float v)
{
    oracle::store(pristine_[k].data(), specs_[k].dtype, i, v);
    reset();
    reset_host();
}

void Fixture::reset()
{
    for (std::size_t k = 0; k < count(); ++k)
        if (!pristine_[k].empty())
            std::memcpy(dev_[k].data(), pristine_[k].data(), pristine_[k].size());
    // garbage, so that a slot the kernels fail to write shows up
    partials_.fill(0xff);
    factors_.fill(0xff);
    result_.fill(0xff);
    norms_.fill(0xff);
}

void Fixture::reset_host()
{
    for (std::size_t k = 0; k < count(); ++k)
        if (!pristine_[k].empty())
            std::memcpy(host_[k].data(), pristine_[k].data(), pristine_[k].size());
    std::fill(cpu_norms_.begin(), cpu_norms_.end(), std::nanf(""));
}

void Fixture::set_read_only(bool ro)
{
    for (DevBuf &b : dev_)
        b.set_read_only(ro);
}

int Fixture::emu_norm_op(const gclip_norm_options &o, int32_t op)
{
    gclip_norm_params np;
    if (gclip_make_params(&o, op, &np) != GCLIP_STATUS_SUCCESS)
        throw std::runtime_error(std::string("gclip_make_params: ") + gclip_last_error());
    with_norms_ = o.tensor_norms != nullptr;
    np.tensor_norms = with_norms_ ? norms_.as<float>() : nullptr;
    gclip_emu::reset_launch_count();
    int rc = gclip_launch_norm(&tables_, &np, nullptr);
    if (rc == 0 && op != GCLIP_OP_TOTAL)
        rc = gclip_launch_scale(&tables_, op, nullptr);
    launches_ = gclip_emu::launch_count();
    return rc;
}

int Fixture::emu_clamp(float clip_value)
{
    gclip_emu::reset_launch_count();
    const int rc = gclip_launch_clamp(&tables_, clip_value, nullptr);
    launches_ = gclip_emu::launch_count();
    return rc;
}

gclip_status Fixture::cpu_norm_op(const gclip_norm_options &o, int32_t op)
{
    gclip_norm_options c = o;
    c.tensor_norms = o.tensor_norms ? cpu_norms_.data() : nullptr;
    switch (op) {
    case GCLIP_OP_TOTAL:
        return gclip_total_norm(plan_, &c, nullptr);
    case GCLIP_OP_GLOBAL:
        return gclip_clip_grad_norm(plan_, &c, nullptr);
    default:
        return gclip_clip_grad_norm_per_tensor(plan_, &c, nullptr);
    }
}

gclip_status Fixture::cpu_clamp(float clip_value)
{
    return gclip_clip_grad_value(plan_, clip_value, nullptr);
}

gclip_result Fixture::cpu_result() const
{
    gclip_result r{};
    gclip_get_result(plan_, &r); // NONFINITE under the ERROR policy still fills r
    return r;
}

Snapshot Fixture::snapshot() const
{
    auto bytes = [](const DevBuf &b) {
        const unsigned char *p = b.as<const unsigned char>();
        return std::vector<unsigned char>(p, p + b.bytes());
    };
    Snapshot s{bytes(result_), bytes(norms_), bytes(factors_), {}};
    for (const DevBuf &b : dev_) {
        const unsigned char *p = b.as<const unsigned char>();
        s.data.insert(s.data.end(), p, p + b.bytes());
    }
    return s;
}

bool Snapshot::operator==(const Snapshot &o) const
{
    return result == o.result && tensor_norms == o.tensor_norms &&
           tensor_factor == o.tensor_factor && data == o.data;
}

std::string Fixture::describe() const
{
    std::ostringstream os;
    os << count() << " tensors, " << num_chunks() << " chunks:";
    for (std::size_t k = 0; k < count() && k < 6; ++k)
        os << ' ' << oracle::dtype_name(specs_[k].dtype) << '[' << specs_[k].numel << "]@+"
           << specs_[k].offset;
    if (count() > 6)
        os << " ...";
    return os.str();
}

float Fixture::emu_factor(int32_t op, std::size_t k) const
{
    if (op == GCLIP_OP_GLOBAL)
        return emu_result().scale;
    if (op == GCLIP_OP_PER_TENSOR)
        return factors_.as<const float>()[k];
    return 1.0f;
}

void Fixture::expect_infrastructure() const
{
    EXPECT_EQ(ticket(), 0u) << "the ticket counter must be 0 after every launch";
    for (std::size_t k = 0; k < count(); ++k)
        EXPECT_TRUE(dev_[k].lead_intact()) << "bytes before tensor " << k << " were written";
}

void Fixture::expect_scaled(std::size_t k, float factor) const
{
    const Spec &s = specs_[k];
    const void *got = dev_[k].data();
    if (factor == 1.0f) {
        EXPECT_TRUE(same_bytes(got, pristine_[k].data(), pristine_[k].size()))
            << "tensor " << k << " has factor 1 and must be untouched";
        return;
    }
    for (int64_t i = 0; i < s.numel; ++i) {
        const float x = oracle::load(pristine_[k].data(), s.dtype, i);
        const float want = oracle::expected_scaled(x, factor, s.dtype);
        const float g = oracle::load(got, s.dtype, i);
        if (!same(g, want)) {
            ADD_FAILURE() << "tensor " << k << " element " << i << " of " << s.numel << ": " << x
                          << " * " << factor << " gave " << g << ", want " << want;
            return;
        }
    }
}

void Fixture::expect_norm_op_matches(const gclip_norm_options &o, int32_t op) const
{
    SCOPED_TRACE(describe() + ", op " + op_name(op) + ", p " + std::to_string(o.norm_type));
    expect_infrastructure();
    EXPECT_LE(launches_, op == GCLIP_OP_TOTAL ? 1u : 2u);
    const gclip_result r = cpu_result();
    const gclip_result_slot &e = emu_result();
    EXPECT_TRUE(close(e.total_norm, r.total_norm, kNormTol))
        << "total norm: emulated " << e.total_norm << ", CPU " << r.total_norm;
    EXPECT_EQ(e.nonfinite, r.nonfinite);
    EXPECT_TRUE(close(e.clip_coef, r.clip_coef, kNormTol))
        << "coefficient: emulated " << e.clip_coef << ", CPU " << r.clip_coef;
    EXPECT_TRUE(close(e.scale, r.scale, kNormTol))
        << "scale: emulated " << e.scale << ", CPU " << r.scale;

    std::vector<gclip_tensor> orig;
    for (std::size_t k = 0; k < count(); ++k)
        orig.push_back(gclip_tensor{const_cast<unsigned char *>(pristine_[k].data()),
                                    specs_[k].numel, specs_[k].dtype});
    const oracle::Norms ref = oracle::norms(orig.data(), orig.size(), o.norm_type, o.inv_scale);
    EXPECT_TRUE(oracle::rel_close(e.total_norm, ref.total, kOracleTol))
        << "total norm " << e.total_norm << ", long-double oracle " << static_cast<double>(ref.total);

    for (std::size_t k = 0; k < count(); ++k) {
        const float cpu_factor = op == GCLIP_OP_GLOBAL ? r.scale
                                 : op == GCLIP_OP_PER_TENSOR ? plan_->tensor_factor[k]
                                                             : 1.0f;
        const float factor = emu_factor(op, k);
        if (with_norms_) {
            const float n = norms_.as<const float>()[k];
            EXPECT_TRUE(close(n, cpu_norms_[k], kNormTol))
                << "tensor " << k << " norm: emulated " << n << ", CPU " << cpu_norms_[k];
            EXPECT_TRUE(oracle::rel_close(n, ref.per_tensor[k], kOracleTol)) << "tensor " << k;
        }
        EXPECT_TRUE(close(factor, cpu_factor, kNormTol))
            << "tensor " << k << " factor: emulated " << factor << ", CPU " << cpu_factor;
        expect_scaled(k, factor);
        if (same(factor, cpu_factor)) { // same factor: the CPU path's bytes exactly
            EXPECT_TRUE(same_bytes(dev_[k].data(), host_[k].data(), pristine_[k].size()))
                << "tensor " << k << " differs from the CPU path";
        }
    }
}

void Fixture::expect_clamp_matches(float clip_value) const
{
    SCOPED_TRACE(describe() + ", clamp to " + std::to_string(clip_value));
    expect_infrastructure();
    EXPECT_EQ(launches_, 1u);
    const gclip_result_slot &e = emu_result();
    EXPECT_TRUE(std::isnan(e.total_norm));
    EXPECT_EQ(e.clip_coef, 1.0f);
    EXPECT_EQ(e.scale, 1.0f);
    EXPECT_EQ(e.nonfinite, 0);
    for (std::size_t k = 0; k < count(); ++k) {
        const Spec &s = specs_[k];
        for (int64_t i = 0; i < s.numel; ++i) {
            const float x = oracle::load(pristine_[k].data(), s.dtype, i);
            const float want = oracle::expected_clamped(x, clip_value, s.dtype);
            const float g = oracle::load(dev_[k].data(), s.dtype, i);
            if (!same(g, want)) {
                ADD_FAILURE() << "tensor " << k << " element " << i << ": clamp(" << x << ") gave "
                              << g << ", want " << want;
                break;
            }
        }
        EXPECT_TRUE(same_bytes(dev_[k].data(), host_[k].data(), pristine_[k].size()))
            << "tensor " << k << " differs from the CPU path";
    }
}

void Fixture::expect_data_unchanged() const
{
    for (std::size_t k = 0; k < count(); ++k)
        EXPECT_TRUE(same_bytes(dev_[k].data(), pristine_[k].data(), pristine_[k].size()))
            << "tensor " << k << " was written";
}

// ---- schedules and plans ----------------------------------------------------------

const std::vector<NamedSchedule> &schedules()
{
    using O = gclip_emu::Order;
    static const std::vector<NamedSchedule> s = {
        {"forward", {O::forward, O::forward, 1, false}},
        {"reverse", {O::reverse, O::reverse, 2, false}},
        {"shuffled", {O::shuffled, O::shuffled, 3, false}},
        {"shuffled-yield", {O::shuffled, O::reverse, 4, true}},
    };
    return s;
}

void use(const gclip_emu::Schedule &s)
{
    gclip_emu::set_schedule(s);
    gclip_emu::clear_error();
}

std::vector<Spec> boundary_sizes(gclip_dtype dt)
{
    const int64_t c = GCLIP_CHUNK_ELEMS;
    const int64_t sizes[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 33, c - 1, c, c + 1, 2 * c + 9};
    std::vector<Spec> v;
    int offset = 0;
    for (int64_t n : sizes)
        v.push_back(Spec{dt, n, offset++ % 8});
    return v;
}

std::vector<Spec> mixed_many(uint64_t seed, int n)
{
    oracle::Rng rng(seed);
    const gclip_dtype dts[] = {GCLIP_F32, GCLIP_F16, GCLIP_BF16};
    std::vector<Spec> v;
    for (int i = 0; i < n; ++i) {
        const int64_t r = rng.range(0, 99);
        const int64_t numel = r < 5 ? 0 : r < 90 ? rng.range(1, 64) : rng.range(65, 5000);
        v.push_back(Spec{dts[rng.range(0, 2)], numel, static_cast<int>(rng.range(0, 7))});
    }
    return v;
}

std::vector<Spec> spanning_chunks()
{
    // 250 one-chunk tensors, then multi-chunk tensors: 264 chunks, more than
    // the finalize's 256 threads, so tensors cross the threads' chunk ranges.
    std::vector<Spec> v = mixed_many(77, 250);
    for (Spec &s : v)
        s.numel = s.numel == 0 ? 1 : s.numel;
    const int64_t c = GCLIP_CHUNK_ELEMS;
    v.push_back(Spec{GCLIP_F16, 9 * c + 5, 3});
    v.push_back(Spec{GCLIP_BF16, 2 * c, 1});
    v.push_back(Spec{GCLIP_F32, c + 4465, 3});
    return v;
}

const char *op_name(int32_t op)
{
    return op == GCLIP_OP_TOTAL ? "total" : op == GCLIP_OP_GLOBAL ? "global" : "per-tensor";
}

} // namespace emu
