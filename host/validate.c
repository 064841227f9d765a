/*
 * validate.c - checks of tensor lists and options. Every check runs before
 * anything is written, so a rejected call leaves all gradients untouched.
 */
#include <math.h>
#include <string.h>

#include "gclip_internal.h"

gclip_status gclip_validate_tensor(const gclip_tensor *t, size_t index)
{
    if (t->dtype != GCLIP_F32 && t->dtype != GCLIP_F16 && t->dtype != GCLIP_BF16 &&
        t->dtype != GCLIP_F64)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "tensor %zu: unknown dtype %d (expected GCLIP_F32, GCLIP_F16, "
                          "GCLIP_BF16 or GCLIP_F64)",
                          index, (int)t->dtype);
    if (t->numel < 0)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "tensor %zu: negative numel %lld", index,
                          (long long)t->numel);
    if (t->numel > 0 && t->data == NULL)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "tensor %zu: data is NULL but numel is %lld",
                          index, (long long)t->numel);
    /* the byte size must fit in the address space */
    if ((uint64_t)t->numel > (uint64_t)(INTPTR_MAX / 8))
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "tensor %zu: numel %lld is too large", index,
                          (long long)t->numel);
    int size = gclip_dtype_size(t->dtype);
    /* ... and so must the buffer: its end may not wrap past the top */
    if ((uintptr_t)t->numel * (uintptr_t)size > UINTPTR_MAX - (uintptr_t)t->data)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "tensor %zu: %lld elements from %p run past the end of the address "
                          "space",
                          index, (long long)t->numel, t->data);
    if ((uintptr_t)t->data % (uintptr_t)size != 0)
        return gclip_fail(GCLIP_STATUS_MISALIGNED,
                          "tensor %zu: data %p is not aligned to its %d-byte elements", index,
                          t->data, size);
    return GCLIP_STATUS_SUCCESS;
}

static uintptr_t start_of(const gclip_tensor_desc *t)
{
    return (uintptr_t)t->data;
}

static uintptr_t end_of(const gclip_tensor_desc *t)
{
    return (uintptr_t)t->data + (uintptr_t)t->numel * (uintptr_t)gclip_dtype_size(t->dtype);
}

/* Order by start address, then by index, so the sort is total. */
static int before(const gclip_tensor_desc *t, size_t a, size_t b)
{
    uintptr_t sa = start_of(&t[a]), sb = start_of(&t[b]);
    return sa < sb || (sa == sb && a < b);
}

/* Heap sort of the index array: O(n log n), no recursion, no allocation. */
static void sift_down(const gclip_tensor_desc *t, size_t *v, size_t root, size_t n)
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && before(t, v[child], v[child + 1]))
            child++;
        if (!before(t, v[root], v[child]))
            return;
        size_t tmp = v[root];
        v[root] = v[child];
        v[child] = tmp;
        root = child;
    }
}

static void sort_by_address(const gclip_tensor_desc *t, size_t *v, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(t, v, i, n);
    for (size_t end = n; end-- > 1;) {
        size_t tmp = v[0];
        v[0] = v[end];
        v[end] = tmp;
        sift_down(t, v, 0, end);
    }
}

gclip_status gclip_check_overlap(const gclip_tensor_desc *tensors, size_t n, size_t *order)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (tensors[i].numel > 0) /* empty tensors own no bytes */
            order[m++] = i;
    sort_by_address(tensors, order, m);
    /* After sorting, a tensor overlaps an earlier one iff it starts before
     * the largest end seen so far. */
    size_t widest = 0;
    for (size_t k = 0; k < m; k++) {
        size_t i = order[k];
        if (k > 0 && start_of(&tensors[i]) < end_of(&tensors[widest])) {
            size_t a = widest < i ? widest : i, b = widest < i ? i : widest;
            return gclip_fail(GCLIP_STATUS_OVERLAP,
                              "tensors %zu and %zu overlap (%s); each buffer must appear once",
                              a, b, start_of(&tensors[a]) == start_of(&tensors[b]) ? "same start address" : "shared bytes");
        }
        if (k == 0 || end_of(&tensors[i]) > end_of(&tensors[widest]))
            widest = i;
    }
    return GCLIP_STATUS_SUCCESS;
}

int gclip_still_disjoint(const gclip_tensor_desc *tensors, const size_t *order, size_t m)
{
    for (size_t k = 1; k < m; k++)
        if (start_of(&tensors[order[k]]) < end_of(&tensors[order[k - 1]]))
            return 0;
    return 1;
}

gclip_status gclip_check_outside_tensors(const gclip_plan *plan, const void *ptr, size_t bytes,
                                        const char *what)
{
    const uintptr_t a = (uintptr_t)ptr, b = a + bytes;
    const gclip_tensor_desc *t = plan->tensors;
    const size_t *order = plan->scratch;
    /* the first tensor by address that ends past a (disjoint tensors in
     * address order end in address order too), then whether it starts
     * before b */
    size_t lo = 0, hi = plan->nonempty;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (end_of(&t[order[mid]]) > a)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (bytes > 0 && lo < plan->nonempty && start_of(&t[order[lo]]) < b)
        return gclip_fail(GCLIP_STATUS_OVERLAP,
                          "%s shares bytes with tensor %zu of the plan; it must lie outside "
                          "every tensor",
                          what, order[lo]);
    return GCLIP_STATUS_SUCCESS;
}

/* Size of the options struct of each version; index 0 is unused. */
static const size_t options_size_of_version[GCLIP_OPTIONS_VERSION + 1] = {
    0, sizeof(gclip_norm_options)};

/* Copy the caller's options over the defaults, checking the size and version
 * the initializer stamped on them. */
static gclip_status read_options(const gclip_norm_options *options, gclip_norm_options *o)
{
    *o = gclip_norm_options_default();
    if (!options)
        return GCLIP_STATUS_SUCCESS;
    if (options->version == 0 || options->size == 0)
        return gclip_fail(GCLIP_STATUS_VERSION_MISMATCH,
                          "options were not initialized: start from GCLIP_NORM_OPTIONS_INIT or "
                          "gclip_norm_options_default() (size %zu, version %u)",
                          options->size, (unsigned)options->version);
    if (options->version > GCLIP_OPTIONS_VERSION ||
        options->size != options_size_of_version[options->version])
        return gclip_fail(GCLIP_STATUS_VERSION_MISMATCH,
                          "options of version %u and size %zu: this library knows versions up "
                          "to %d (version %d is %zu bytes); rebuild against its gclip.h",
                          (unsigned)options->version, options->size, GCLIP_OPTIONS_VERSION,
                          GCLIP_OPTIONS_VERSION, sizeof(gclip_norm_options));
    memcpy(o, options, options->size);
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_make_params(const gclip_norm_options *options, int32_t op,
                               gclip_norm_params *out)
{
    gclip_norm_options o;
    gclip_status s = read_options(options, &o);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    /* an adaptive step's method decides its threshold: max_norm plays no part */
    const int uses_max_norm = op != GCLIP_OP_ADAPTIVE_CLIP && op != GCLIP_OP_ADAPTIVE_SKIP;
    if (uses_max_norm && !o.max_norm_ptr && (isnan(o.max_norm) || o.max_norm < 0.0f))
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "max_norm %g must be >= 0 (0 zeroes the gradients, +inf never clips)",
                          (double)o.max_norm);
    if (isnan(o.norm_type) || !(o.norm_type > 0.0f))
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "norm_type %g must be > 0 (2, 1, INFINITY or any finite p > 0)",
                          (double)o.norm_type);
    if (!isfinite(o.eps) || o.eps < 0.0f)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "eps %g must be finite and >= 0",
                          (double)o.eps);
    if (!o.inv_scale_ptr && (!isfinite(o.inv_scale) || !(o.inv_scale > 0.0f)))
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "inv_scale %g must be finite and > 0",
                          (double)o.inv_scale);
    if (o.nonfinite != GCLIP_NONFINITE_SKIP && o.nonfinite != GCLIP_NONFINITE_PROPAGATE &&
        o.nonfinite != GCLIP_NONFINITE_ERROR)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "unknown non-finite policy %d",
                          (int)o.nonfinite);
    if (o.eps == 0.0f)
        o.eps = 0.0f; /* -0 as +0: N + eps of a zero norm must not be -0 */
    memset(out, 0, sizeof *out);
    out->kind = gclip_kind_of(o.norm_type);
    out->op = op;
    out->policy = (int32_t)o.nonfinite;
    out->fingerprint = gclip_fingerprint(o.norm_type, (int32_t)o.nonfinite);
    out->p = o.norm_type;
    out->max_norm = o.max_norm;
    /* max_norm 0 and +Inf keep their meaning (gclip_coef_eps): for a value,
     * once here, so that the kernels' per-tensor fold pays nothing for it */
    out->eps = uses_max_norm && !o.max_norm_ptr ? gclip_coef_eps(o.max_norm, o.eps) : o.eps;
    out->inv_scale = o.inv_scale;
    out->max_norm_ptr = o.max_norm_ptr;
    out->inv_scale_ptr = o.inv_scale_ptr;
    out->tensor_norms = o.tensor_norms;
    return GCLIP_STATUS_SUCCESS;
}
