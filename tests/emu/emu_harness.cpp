// emu_harness.cpp - see emu_harness.hpp.
#include "emu_harness.hpp"

#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
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
    // the rest of the last page is not the buffer's: a read past the end
    // is reported there as past a malloc'd one
    if (mapped_)
        EMU_POISON(base_ + lead + bytes, mapped_ - lead - bytes);
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
    EMU_UNPOISON(base_, mapped_ ? mapped_ : lead_);
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

static_assert(specs::kChunkElems == GCLIP_CHUNK_ELEMS, "tests/common/specs.hpp is out of date");

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

bool close_f64(double a, double b, double tol)
{
    if (std::isnan(a) || std::isnan(b))
        return std::isnan(a) && std::isnan(b);
    if (std::isinf(a) || std::isinf(b))
        return a == b;
    return std::fabs(a - b) <= tol * std::fabs(b);
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

bool same_f64(double a, double b)
{
    if (std::isnan(a) || std::isnan(b))
        return std::isnan(a) && std::isnan(b);
    return std::memcmp(&a, &b, sizeof a) == 0;
}

// Emulated norms differ from the CPU path's only by the reduction order of
// doubles (relative 1e-15) and the final rounding to float (6e-8).
constexpr double kNormTol = 1e-6;
// The oracle sums in long double: the same bound plus its own rounding.
constexpr double kOracleTol = 2e-6;
// Accumulators of the plan's partial: the same terms summed in another order.
constexpr double kAccTol = 1e-12;

// Whether the op's launch sequence starts with the norm kernel, so that the
// slot's norm, the partial and tensor_norms are this plan's.
bool runs_norm_kernel(int32_t op)
{
    return op == GCLIP_OP_TOTAL_NORM || op == GCLIP_OP_CLIP_NORM ||
           op == GCLIP_OP_CLIP_PER_TENSOR || op == GCLIP_OP_CLIP_FACTOR ||
           op == GCLIP_OP_ACCUMULATE;
}

} // namespace

unsigned launches_of(int32_t op)
{
    return op == GCLIP_OP_CLIP_NORM || op == GCLIP_OP_CLIP_PER_TENSOR ? 2u : 1u;
}

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
    partials_ = DevBuf(sizeof(double) * gclip_partial_slots(plan_->num_chunks));
    factors_ = DevBuf(sizeof(float) * count());
    ticket_ = DevBuf(sizeof(unsigned));
    apply_ticket_ = DevBuf(sizeof(unsigned));
    fold_ = DevBuf(sizeof(gclip_fold_workspace));
    partial_ = DevBuf(sizeof(gclip_partial));
    result_ = DevBuf(sizeof(gclip_result_slot));
    norms_ = DevBuf(sizeof(float) * count());
    // as the plan's workspace starts: tickets at 0 (never reset again)
    *ticket_.as<unsigned>() = 0;
    *apply_ticket_.as<unsigned>() = 0;
    fold_.fill(0);
    cpu_norms_.assign(count(), 0.0f);

    tables_.tensors = tensors_.as<const gclip_tensor_desc>();
    tables_.chunks = chunks_.as<const gclip_chunk>();
    tables_.num_tensors = static_cast<uint32_t>(count());
    tables_.num_chunks = plan_->num_chunks;
    tables_.partials = partials_.as<double>();
    tables_.tensor_factor = factors_.as<float>();
    tables_.ticket = ticket_.as<unsigned>();
    tables_.apply_ticket = apply_ticket_.as<unsigned>();
    tables_.fold = fold_.as<gclip_fold_workspace>();
    tables_.partial = partial_.as<gclip_partial>();
    tables_.result = result_.as<gclip_result_slot>();
    reset_host();
    reset();
}

Fixture::~Fixture()
{
    set_read_only(false);
    gclip_plan_destroy(plan_);
}

void Fixture::set_element(std::size_t k, int64_t i, float v)
{
    set_pristine(k, i, v);
    reset_both();
}

void Fixture::set_pristine(std::size_t k, int64_t i, float v)
{
    oracle::store(pristine_[k].data(), specs_[k].dtype, i, v);
}

void Fixture::set_pristine_bits16(std::size_t k, int64_t i, uint16_t bits)
{
    std::memcpy(pristine_[k].data() + 2 * i, &bits, 2);
}

void Fixture::set_pristine_bits(std::size_t k, int64_t i, uint64_t bits)
{
    const std::size_t size = oracle::dtype_size(specs_[k].dtype);
    unsigned char b[8];
    for (std::size_t j = 0; j < 8; ++j)
        b[j] = static_cast<unsigned char>(bits >> (8 * j));
    std::memcpy(pristine_[k].data() + size * static_cast<std::size_t>(i), b, size);
}

void Fixture::reset()
{
    for (std::size_t k = 0; k < count(); ++k)
        if (!pristine_[k].empty())
            std::memcpy(dev_[k].data(), pristine_[k].data(), pristine_[k].size());
    // garbage, so that whatever the kernels fail to write shows up
    partials_.fill(0xff);
    // the lanes' results too (their tickets are the plan's and stay)
    std::memset(static_cast<void *>(tables_.fold->lane), 0xff, sizeof tables_.fold->lane);
    factors_.fill(0xff);
    partial_.fill(0xff);
    result_.fill(0xff);
    norms_.fill(0xff);
    // ... but for the slot's sequence, which every operation counts on
    tables_.result->sequence = sequence_mark_;
    tickets_ok_ = true;
}

void Fixture::reset_host()
{
    for (std::size_t k = 0; k < count(); ++k)
        if (!pristine_[k].empty())
            std::memcpy(host_[k].data(), pristine_[k].data(), pristine_[k].size());
    std::fill(cpu_norms_.begin(), cpu_norms_.end(), std::nanf(""));
    sequence_mark_ = cpu_slot().sequence;
}

void Fixture::set_read_only(bool ro)
{
    for (DevBuf &b : dev_)
        b.set_read_only(ro);
}

gclip_norm_params Fixture::params(const gclip_norm_options &o, int32_t op)
{
    gclip_norm_params np;
    if (gclip_make_params(&o, op, &np) != GCLIP_STATUS_SUCCESS)
        throw std::runtime_error(std::string("gclip_make_params: ") + gclip_last_error());
    if (o.tensor_norms && !runs_norm_kernel(op))
        throw std::invalid_argument("tensor_norms is only written by the norm kernel's ops");
    with_norms_ = o.tensor_norms != nullptr;
    np.tensor_norms = with_norms_ ? norms_.as<float>() : nullptr;
    return np;
}

int Fixture::checked(int rc)
{
    tickets_ok_ = tickets_ok_ && ticket() == 0 && apply_ticket() == 0 && lane_tickets_off() == 0;
    return rc;
}

int Fixture::emu_launch(const gclip_norm_params &np, double clip_value)
{
    // host/cuda_backend.c, launches_of: the kernels of each op in launch order
    gclip_emu::reset_launch_count();
    int rc = 0;
    switch (np.op) {
    case GCLIP_OP_TOTAL_NORM:
    case GCLIP_OP_ACCUMULATE:
    case GCLIP_OP_CLIP_FACTOR:
        rc = checked(gclip_launch_norm(&tables_, &np, nullptr));
        break;
    case GCLIP_OP_CLIP_NORM:
    case GCLIP_OP_CLIP_PER_TENSOR:
        if (tables_.dependent_launch) {
            // one stream: the scale launch may start alongside the norm's tail
            rc = checked(gclip_emu::launch_concurrent({[&] {
                gclip_launch_norm(&tables_, &np, nullptr);
                gclip_launch_scale(&tables_, &np, nullptr);
            }}));
            break;
        }
        rc = checked(gclip_launch_norm(&tables_, &np, nullptr));
        if (rc == 0)
            rc = checked(gclip_launch_scale(&tables_, &np, nullptr));
        break;
    case GCLIP_OP_CLIP_WITH_NORM:
    case GCLIP_OP_APPLY:
        rc = checked(gclip_launch_scale(&tables_, &np, nullptr));
        break;
    case GCLIP_OP_FINALIZE:
        rc = checked(gclip_launch_finalize(&tables_, &np, nullptr));
        break;
    case GCLIP_OP_CLIP_VALUE: /* its bound, a double, is not in np */
        rc = checked(gclip_launch_clamp(&tables_, clip_value, nullptr));
        break;
    default:
        throw std::invalid_argument("emu_launch: unknown op");
    }
    launches_ = gclip_emu::launch_count();
    return rc;
}

int Fixture::emu_norm_op(const gclip_norm_options &o, int32_t op)
{
    if (!runs_norm_kernel(op))
        throw std::invalid_argument("emu_norm_op: not a norm-kernel op");
    return emu_launch(params(o, op));
}

int Fixture::emu_with_norm(const gclip_norm_options &o, float norm, const float *norm_ptr)
{
    gclip_norm_params np = params(o, GCLIP_OP_CLIP_WITH_NORM);
    np.given_norm = norm;
    np.given_norm_ptr = norm_ptr;
    return emu_launch(np);
}

int Fixture::emu_finalize(const gclip_norm_options &o, const gclip_partial *partials,
                          std::size_t n)
{
    gclip_norm_params np = params(o, GCLIP_OP_FINALIZE);
    np.partials = partials;
    np.num_partials = static_cast<uint32_t>(n);
    return emu_launch(np);
}

int Fixture::emu_apply()
{
    gclip_norm_params np;
    if (gclip_make_params(nullptr, GCLIP_OP_APPLY, &np) != GCLIP_STATUS_SUCCESS)
        throw std::runtime_error(std::string("gclip_make_params: ") + gclip_last_error());
    return emu_launch(np);
}

int Fixture::emu_clamp(double clip_value)
{
    gclip_norm_params np;
    if (gclip_make_params(nullptr, GCLIP_OP_CLIP_VALUE, &np) != GCLIP_STATUS_SUCCESS)
        throw std::runtime_error(std::string("gclip_make_params: ") + gclip_last_error());
    return emu_launch(np, clip_value);
}

gclip_status Fixture::cpu_norm_op(const gclip_norm_options &o, int32_t op)
{
    gclip_norm_options c = o;
    c.tensor_norms = o.tensor_norms ? cpu_norms_.data() : nullptr;
    switch (op) {
    case GCLIP_OP_TOTAL_NORM:
        return gclip_total_norm(plan_, &c, nullptr);
    case GCLIP_OP_CLIP_NORM:
        return gclip_clip_grad_norm(plan_, &c, nullptr);
    case GCLIP_OP_CLIP_PER_TENSOR:
        return gclip_clip_grad_norm_per_tensor(plan_, &c, nullptr);
    case GCLIP_OP_CLIP_FACTOR:
        return gclip_compute_clip_factor(plan_, &c, nullptr);
    case GCLIP_OP_ACCUMULATE:
        return gclip_norm_accumulate(plan_, &c, nullptr);
    default:
        throw std::invalid_argument("cpu_norm_op: not a norm-kernel op");
    }
}

gclip_status Fixture::cpu_with_norm(const gclip_norm_options &o, float norm, const float *norm_ptr)
{
    return gclip_clip_grads_with_norm(plan_, &o, norm, norm_ptr, nullptr);
}

gclip_status Fixture::cpu_finalize(const gclip_norm_options &o, const gclip_partial *partials,
                                   std::size_t n)
{
    return gclip_norm_finalize(plan_, &o, partials, n, nullptr);
}

gclip_status Fixture::cpu_apply() { return gclip_apply_clip_factor(plan_, nullptr); }

gclip_status Fixture::cpu_clamp(double clip_value)
{
    return gclip_clip_grad_value_f64(plan_, clip_value, nullptr);
}

const gclip_result_slot &Fixture::cpu_slot() const
{
    const gclip_device_result *slot = nullptr;
    if (gclip_plan_device_result(plan_, &slot) != GCLIP_STATUS_SUCCESS || !slot)
        throw std::runtime_error("gclip_plan_device_result failed");
    return *slot;
}

gclip_result Fixture::cpu_result(gclip_status *status) const
{
    gclip_result r{};
    const gclip_status s = gclip_get_result(plan_, &r); // statuses other than SUCCESS fill r too
    if (status)
        *status = s;
    return r;
}

const gclip_partial &Fixture::cpu_partial() const
{
    const gclip_partial *p = nullptr;
    if (gclip_plan_partial(plan_, &p) != GCLIP_STATUS_SUCCESS || !p)
        throw std::runtime_error("gclip_plan_partial failed");
    return *p;
}

float Fixture::cpu_tensor_factor(std::size_t k) const
{
    return static_cast<const gclip_cpu_state *>(plan_->engine)->tensor_factor[k];
}

Snapshot Fixture::snapshot() const
{
    auto bytes = [](const DevBuf &b) {
        const unsigned char *p = b.as<const unsigned char>();
        return std::vector<unsigned char>(p, p + b.bytes());
    };
    Snapshot s{bytes(result_), bytes(partial_), bytes(norms_), bytes(factors_), {}};
    for (const DevBuf &b : dev_) {
        const unsigned char *p = b.as<const unsigned char>();
        s.data.insert(s.data.end(), p, p + b.bytes());
    }
    return s;
}

bool Snapshot::operator==(const Snapshot &o) const
{
    return result == o.result && partial == o.partial && tensor_norms == o.tensor_norms &&
           tensor_factor == o.tensor_factor && data == o.data;
}

std::string Fixture::describe() const
{
    return specs::describe(specs_) + " (" + std::to_string(num_chunks()) + " chunks)";
}

// The factor the op applied to tensor k: the slot's (which says 1 when
// nothing was applied), or the tensor's own.
float Fixture::emu_factor(int32_t op, std::size_t k) const
{
    switch (op) {
    case GCLIP_OP_CLIP_NORM:
    case GCLIP_OP_CLIP_WITH_NORM:
    case GCLIP_OP_APPLY:
        return emu_result().scale;
    case GCLIP_OP_CLIP_PER_TENSOR:
        return emu_tensor_factor(k);
    default:
        return 1.0f;
    }
}

float Fixture::cpu_factor(int32_t op, std::size_t k) const
{
    switch (op) {
    case GCLIP_OP_CLIP_NORM:
    case GCLIP_OP_CLIP_WITH_NORM:
    case GCLIP_OP_APPLY:
        return cpu_slot().scale;
    case GCLIP_OP_CLIP_PER_TENSOR:
        return cpu_tensor_factor(k);
    default:
        return 1.0f;
    }
}

void Fixture::expect_infrastructure() const
{
    EXPECT_TRUE(tickets_ok_) << "a ticket counter was not back at 0 after a launch";
    EXPECT_EQ(ticket(), 0u) << "the norm kernel's ticket must be 0 after every launch";
    EXPECT_EQ(apply_ticket(), 0u) << "the apply ticket must be 0 after every launch";
    EXPECT_EQ(lane_tickets_off(), 0u) << "fold lanes' tickets must be 0 after every launch";
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
        if (s.dtype == GCLIP_F64) { // scaled in double
            const double x = oracle::load_f64(pristine_[k].data(), i);
            const double want = x * static_cast<double>(factor);
            const double g = oracle::load_f64(got, i);
            if (!same_f64(g, want)) {
                ADD_FAILURE() << "f64 tensor " << k << " element " << i << " of " << s.numel
                              << ": " << x << " * " << factor << " gave " << g << ", want " << want;
                return;
            }
            continue;
        }
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

void Fixture::expect_slot_matches(bool bitwise) const
{
    const gclip_result_slot &e = emu_result();
    const gclip_result_slot &c = cpu_slot();
    EXPECT_EQ(e.op, c.op);
    EXPECT_EQ(e.flags, c.flags);
    EXPECT_EQ(e.status, c.status);
    EXPECT_EQ(e.failed, c.failed);
    EXPECT_EQ(e.nonfinite, c.nonfinite);
    EXPECT_EQ(e.sequence, c.sequence);
    EXPECT_EQ(e.reserved_, c.reserved_);
    EXPECT_TRUE(close(e.total_norm, c.total_norm, kNormTol))
        << "total norm: emulated " << e.total_norm << ", CPU " << c.total_norm;
    EXPECT_TRUE(close(e.clip_coef, c.clip_coef, kNormTol))
        << "coefficient: emulated " << e.clip_coef << ", CPU " << c.clip_coef;
    EXPECT_TRUE(close(e.scale, c.scale, kNormTol))
        << "scale: emulated " << e.scale << ", CPU " << c.scale;
    // the same norm, the same scalars: the same coefficient and factor, bit for bit
    if (bitwise || same(e.total_norm, c.total_norm)) {
        EXPECT_EQ(std::memcmp(&e, &c, sizeof e), 0)
            << "slots differ: emulated norm " << e.total_norm << " coef " << e.clip_coef
            << " scale " << e.scale << ", CPU norm " << c.total_norm << " coef " << c.clip_coef
            << " scale " << c.scale;
    }
}

void Fixture::expect_partial_matches() const
{
    const gclip_partial &e = emu_partial();
    const gclip_partial &c = cpu_partial();
    EXPECT_EQ(e.fingerprint, c.fingerprint);
    EXPECT_EQ(e.nonfinite, c.nonfinite);
    EXPECT_TRUE(close_f64(e.acc, c.acc, kAccTol))
        << "partial accumulator: emulated " << e.acc << ", CPU " << c.acc;
}

void Fixture::expect_norm_op_matches(const gclip_norm_options &o, int32_t op) const
{
    SCOPED_TRACE(describe() + ", op " + op_name(op) + ", p " + std::to_string(o.norm_type));
    expect_infrastructure();
    EXPECT_EQ(launches_, launches_of(op)) << "launches of " << op_name(op);
    expect_slot_matches();
    const gclip_result_slot &e = emu_result();

    if (op != GCLIP_OP_CLIP_WITH_NORM) { // the slot's norm is this plan's own
        expect_partial_matches();
        std::vector<gclip_tensor> orig;
        for (std::size_t k = 0; k < count(); ++k)
            orig.push_back(gclip_tensor{const_cast<unsigned char *>(pristine_[k].data()),
                                        specs_[k].numel, specs_[k].dtype});
        const float inv = effective_inv_scale(o);
        const oracle::Norms ref = oracle::norms(orig.data(), orig.size(), o.norm_type, inv);
        EXPECT_TRUE(oracle::rel_close(e.total_norm, ref.total, kOracleTol))
            << "total norm " << e.total_norm << ", long-double oracle "
            << static_cast<double>(ref.total);
        if (with_norms_ && runs_norm_kernel(op))
            for (std::size_t k = 0; k < count(); ++k) {
                const float n = norms_.as<const float>()[k];
                EXPECT_TRUE(close(n, cpu_norms_[k], kNormTol))
                    << "tensor " << k << " norm: emulated " << n << ", CPU " << cpu_norms_[k];
                EXPECT_TRUE(oracle::rel_close(n, ref.per_tensor[k], kOracleTol)) << "tensor " << k;
            }
    }

    for (std::size_t k = 0; k < count(); ++k) {
        const float cf = cpu_factor(op, k);
        const float factor = emu_factor(op, k);
        EXPECT_TRUE(close(factor, cf, kNormTol))
            << "tensor " << k << " factor: emulated " << factor << ", CPU " << cf;
        expect_scaled(k, factor);
        if (same(factor, cf)) { // same factor: the CPU path's bytes exactly
            EXPECT_TRUE(same_bytes(dev_[k].data(), host_[k].data(), pristine_[k].size()))
                << "tensor " << k << " differs from the CPU path";
        }
    }
}

void Fixture::expect_clamp_matches(double clip_value) const
{
    char bound[40];
    std::snprintf(bound, sizeof bound, "%.17g", clip_value);
    SCOPED_TRACE(describe() + ", clamp to " + bound);
    expect_infrastructure();
    EXPECT_EQ(launches_, 1u);
    const gclip_result_slot &e = emu_result();
    EXPECT_TRUE(std::isnan(e.total_norm));
    EXPECT_EQ(e.clip_coef, 1.0f);
    EXPECT_EQ(e.scale, 1.0f);
    EXPECT_EQ(e.nonfinite, 0);
    expect_slot_matches(/*bitwise=*/true);
    for (std::size_t k = 0; k < count(); ++k) {
        const Spec &s = specs_[k];
        for (int64_t i = 0; i < s.numel; ++i) {
            bool ok;
            if (s.dtype == GCLIP_F64) { // clamped in double
                const double x = oracle::load_f64(pristine_[k].data(), i);
                const double v = clip_value;
                const double want = std::isnan(x) ? x : x < -v ? -v : (x > v ? v : x);
                ok = same_f64(oracle::load_f64(dev_[k].data(), i), want);
            } else {
                const float x = oracle::load(pristine_[k].data(), s.dtype, i);
                // the others to the float nearest the bound
                ok = same(oracle::load(dev_[k].data(), s.dtype, i),
                          oracle::expected_clamped(x, static_cast<float>(clip_value), s.dtype));
            }
            if (!ok) {
                ADD_FAILURE() << "tensor " << k << " (" << oracle::dtype_name(s.dtype)
                              << ") element " << i << ": clamp("
                              << oracle::load(pristine_[k].data(), s.dtype, i) << ") gave "
                              << oracle::load(dev_[k].data(), s.dtype, i);
                break;
            }
        }
        EXPECT_TRUE(same_bytes(dev_[k].data(), host_[k].data(), pristine_[k].size()))
            << "tensor " << k << " differs from the CPU path";
    }
}

void Fixture::expect_scaled_by(float factor) const
{
    for (std::size_t k = 0; k < count(); ++k)
        expect_scaled(k, factor);
}

void Fixture::expect_data_equals_cpu() const
{
    for (std::size_t k = 0; k < count(); ++k)
        EXPECT_TRUE(same_bytes(dev_[k].data(), host_[k].data(), pristine_[k].size()))
            << "tensor " << k << " differs from the CPU path";
}

void Fixture::expect_data_unchanged() const
{
    for (std::size_t k = 0; k < count(); ++k)
        EXPECT_TRUE(same_bytes(dev_[k].data(), pristine_[k].data(), pristine_[k].size()))
            << "tensor " << k << " was written";
}

// ---- schedules, plans, scalars -----------------------------------------------------

const std::vector<NamedSchedule> &schedules()
{
    using O = gclip_emu::Order;
    // thread order, block order, seed, yield at atomics, resident blocks,
    // rate of switches between resident blocks
    static const std::vector<NamedSchedule> s = {
        {"forward", {O::forward, O::forward, 1, false, 1, 0.0}},
        {"reverse", {O::reverse, O::reverse, 2, false, 4, 0.25}},
        {"shuffled", {O::shuffled, O::shuffled, 3, false, 8, 0.5}},
        {"shuffled-yield", {O::shuffled, O::reverse, 4, true, 16, 1.0}},
    };
    return s;
}

void use(const gclip_emu::Schedule &s)
{
    gclip_emu::set_schedule(s);
    gclip_emu::clear_error();
}

const char *op_name(int32_t op)
{
    switch (op) {
    case GCLIP_OP_TOTAL_NORM: return "TotalNorm";
    case GCLIP_OP_CLIP_NORM: return "ClipNorm";
    case GCLIP_OP_CLIP_PER_TENSOR: return "PerTensor";
    case GCLIP_OP_CLIP_VALUE: return "ClipValue";
    case GCLIP_OP_CLIP_FACTOR: return "ClipFactor";
    case GCLIP_OP_CLIP_WITH_NORM: return "ClipWithNorm";
    case GCLIP_OP_ACCUMULATE: return "Accumulate";
    case GCLIP_OP_FINALIZE: return "Finalize";
    case GCLIP_OP_APPLY: return "Apply";
    default: return "None";
    }
}

float effective_max_norm(const gclip_norm_options &o)
{
    return o.max_norm_ptr ? *o.max_norm_ptr : o.max_norm;
}

float effective_inv_scale(const gclip_norm_options &o)
{
    return o.inv_scale_ptr ? *o.inv_scale_ptr : o.inv_scale;
}

long double oracle_total(const Fixture &f, float norm_type, float inv_scale)
{
    std::vector<gclip_tensor> t;
    for (std::size_t k = 0; k < f.count(); ++k)
        t.push_back(gclip_tensor{const_cast<void *>(f.pristine_data(k)), f.specs()[k].numel,
                                 f.specs()[k].dtype});
    return oracle::norms(t.data(), t.size(), norm_type, inv_scale).total;
}

} // namespace emu
