/*
 * steps.c - the step calls and the results: validate on the host, build the
 * step's parameters, hand the step to the plan's backend; decode the result
 * slot, the one place results live.
 */
#include <math.h>

#include "gclip_internal.h"

gclip_norm_options gclip_norm_options_default(void)
{
    gclip_norm_options o = GCLIP_NORM_OPTIONS_INIT;
    return o;
}

gclip_status gclip_partial_combine(gclip_partial *a, const gclip_partial *b)
{
    GCLIP_FP_SCOPE();
    gclip_clear_error();
    if (!a || !b)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "partial a or b is NULL");
    /* the fingerprint's low bits are the norm kind: how the two combine */
    const int32_t kind = (int32_t)(a->fingerprint & 3u);
    if (gclip_partial_fold(a, b, kind))
        return gclip_fail(GCLIP_STATUS_MISMATCH,
                          "partials of different options (fingerprints %08x and %08x): "
                          "every rank must use the same norm_type and non-finite policy",
                          (unsigned)a->fingerprint, (unsigned)b->fingerprint);
    return GCLIP_STATUS_SUCCESS;
}

/* max_norm_ptr and inv_scale_ptr may not point into the plan's own result
 * slot: the step rewrites the slot while its blocks read them. tensor_norms
 * may point neither there nor into a tensor: the step writes it. All three
 * must be aligned to a float (checked last: a range inside a tensor is
 * named as such). */
gclip_status gclip_check_step_pointers(const gclip_plan *plan, const gclip_norm_params *np)
{
    const uintptr_t slot = (uintptr_t)plan->backend->result_slot(plan);
    const uintptr_t end = slot + sizeof(gclip_device_result);
    const float *ptrs[2] = {np->max_norm_ptr, np->inv_scale_ptr};
    const char *names[2] = {"max_norm_ptr", "inv_scale_ptr"};
    for (int k = 0; k < 2; k++) {
        const uintptr_t a = (uintptr_t)ptrs[k];
        if (ptrs[k] && a + sizeof(float) > slot && a < end)
            return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                              "%s points into this plan's result slot "
                              "(gclip_plan_device_result), which the step rewrites while it "
                              "reads the value; copy the value elsewhere first",
                              names[k]);
    }
    if (np->tensor_norms && plan->count > 0) {
        const uintptr_t a = (uintptr_t)np->tensor_norms;
        const size_t bytes = plan->count * sizeof(float);
        if (a + bytes > slot && a < end)
            return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                              "tensor_norms (%zu floats) overlaps this plan's result slot "
                              "(gclip_plan_device_result), which the step also writes",
                              plan->count);
        const gclip_status s =
            gclip_check_outside_tensors(plan, np->tensor_norms, bytes, "tensor_norms");
        if (s != GCLIP_STATUS_SUCCESS)
            return s;
    }
    /* the kernels load and store them as floats */
    const void *const floats[3] = {np->max_norm_ptr, np->inv_scale_ptr, np->tensor_norms};
    static const char *const float_names[3] = {"max_norm_ptr", "inv_scale_ptr", "tensor_norms"};
    for (int k = 0; k < 3; k++)
        if ((uintptr_t)floats[k] % _Alignof(float))
            return gclip_fail(GCLIP_STATUS_MISALIGNED, "%s at %p: a float needs %zu-byte alignment",
                              float_names[k], floats[k], (size_t)_Alignof(float));
    return GCLIP_STATUS_SUCCESS;
}

/* Ops that see no tensor of their own cannot report per-tensor norms. */
static gclip_status no_tensor_norms(const gclip_norm_options *options, int32_t op)
{
    if (options->tensor_norms)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "tensor_norms is set, but %s computes no tensor norm; leave it NULL "
                          "(gclip_norm_accumulate writes them)",
                          gclip_op_name(op));
    return GCLIP_STATUS_SUCCESS;
}

/* The checks every step call starts with: the plan, the options (required
 * by every op that clips or computes a factor: they carry max_norm), their
 * translation into the step's parameters. */
static gclip_status begin_step(gclip_plan *plan, const gclip_norm_options *options, int32_t op,
                               gclip_step *step)
{
    gclip_clear_error();
    if (!plan)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    const int needs_options = gclip_op_has_coef(op) || op == GCLIP_OP_CLIP_PER_TENSOR;
    if (!options && needs_options)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "options is NULL: %s needs an explicit max_norm "
                          "(start from GCLIP_NORM_OPTIONS_INIT)",
                          gclip_op_name(op));
    step->op = op;
    step->clip_value = 0.0;
    gclip_status s = gclip_make_params(options, op, &step->np);
    /* ops that write no tensor norms refuse tensor_norms before its
     * address is looked at */
    if (s == GCLIP_STATUS_SUCCESS && options &&
        (op == GCLIP_OP_FINALIZE || op == GCLIP_OP_CLIP_WITH_NORM))
        s = no_tensor_norms(options, op);
    return s != GCLIP_STATUS_SUCCESS ? s : gclip_check_step_pointers(plan, &step->np);
}

static gclip_status norm_step(gclip_plan *plan, const gclip_norm_options *options, int32_t op,
                              gclip_stream stream)
{
    GCLIP_FP_SCOPE();
    gclip_step step;
    const gclip_status s = begin_step(plan, options, op, &step);
    return s != GCLIP_STATUS_SUCCESS ? s : plan->backend->run(plan, &step, stream);
}

gclip_status gclip_total_norm(gclip_plan *plan, const gclip_norm_options *options,
                              gclip_stream stream)
{
    return norm_step(plan, options, GCLIP_OP_TOTAL_NORM, stream);
}

gclip_status gclip_clip_grad_norm(gclip_plan *plan, const gclip_norm_options *options,
                                  gclip_stream stream)
{
    return norm_step(plan, options, GCLIP_OP_CLIP_NORM, stream);
}

gclip_status gclip_compute_clip_factor(gclip_plan *plan, const gclip_norm_options *options,
                                       gclip_stream stream)
{
    return norm_step(plan, options, GCLIP_OP_CLIP_FACTOR, stream);
}

gclip_status gclip_clip_grad_norm_per_tensor(gclip_plan *plan, const gclip_norm_options *options,
                                             gclip_stream stream)
{
    return norm_step(plan, options, GCLIP_OP_CLIP_PER_TENSOR, stream);
}

gclip_status gclip_norm_accumulate(gclip_plan *plan, const gclip_norm_options *options,
                                   gclip_stream stream)
{
    const gclip_status s = norm_step(plan, options, GCLIP_OP_ACCUMULATE, stream);
    if (s == GCLIP_STATUS_SUCCESS)
        plan->accumulated = 1;
    return s;
}

gclip_status gclip_clip_grads_with_norm(gclip_plan *plan, const gclip_norm_options *options,
                                        float total_norm, const float *total_norm_ptr,
                                        gclip_stream stream)
{
    GCLIP_FP_SCOPE();
    gclip_step step;
    const gclip_status s = begin_step(plan, options, GCLIP_OP_CLIP_WITH_NORM, &step);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    if (!total_norm_ptr && total_norm < 0.0f)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "total_norm %g is negative: a norm is >= 0 (NaN and Inf follow the "
                          "non-finite policy)",
                          (double)total_norm);
    if ((uintptr_t)total_norm_ptr % _Alignof(float))
        return gclip_fail(GCLIP_STATUS_MISALIGNED,
                          "total_norm_ptr at %p: a float needs %zu-byte alignment",
                          (const void *)total_norm_ptr, (size_t)_Alignof(float));
    step.np.given_norm = total_norm;
    step.np.given_norm_ptr = total_norm_ptr;
    return plan->backend->run(plan, &step, stream);
}

gclip_status gclip_norm_finalize(gclip_plan *plan, const gclip_norm_options *options,
                                 const gclip_partial *partials, size_t count, gclip_stream stream)
{
    GCLIP_FP_SCOPE();
    gclip_step step;
    const gclip_status s = begin_step(plan, options, GCLIP_OP_FINALIZE, &step);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    if (count > 0 && !partials)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "partials is NULL but count is %zu",
                          count);
    if (count == 0 && partials)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "partials is set but count is 0 (NULL and 0 fold the plan's own partial)");
    if (count > UINT32_MAX)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "count %zu exceeds %u partials", count,
                          (unsigned)UINT32_MAX);
    if ((uintptr_t)partials % _Alignof(gclip_partial))
        return gclip_fail(GCLIP_STATUS_MISALIGNED,
                          "partials at %p: gclip_partial records need %zu-byte alignment",
                          (const void *)partials, (size_t)_Alignof(gclip_partial));
    if (count == 0 && !plan->accumulated)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "count 0 folds the plan's own partial, but no gclip_norm_accumulate "
                          "has run on this plan");
    step.np.partials = partials;
    step.np.num_partials = (uint32_t)count;
    return plan->backend->run(plan, &step, stream);
}

gclip_status gclip_apply_clip_factor(gclip_plan *plan, gclip_stream stream)
{
    return norm_step(plan, NULL, GCLIP_OP_APPLY, stream);
}

static gclip_status clip_value_step(gclip_plan *plan, double clip_value, gclip_stream stream)
{
    gclip_step step;
    gclip_status s = begin_step(plan, NULL, GCLIP_OP_CLIP_VALUE, &step);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    if (isnan(clip_value) || clip_value < 0.0)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                          "clip_value %g must be >= 0 (+inf leaves the gradients as they are)",
                          clip_value);
    step.clip_value = clip_value;
    return plan->backend->run(plan, &step, stream);
}

gclip_status gclip_clip_grad_value_f64(gclip_plan *plan, double clip_value, gclip_stream stream)
{
    GCLIP_FP_SCOPE();
    return clip_value_step(plan, clip_value, stream);
}

gclip_status gclip_clip_grad_value(gclip_plan *plan, float clip_value, gclip_stream stream)
{
    GCLIP_FP_SCOPE(); /* before the widening: a subnormal bound is kept, and the
                       * caller's flags are not touched by it */
    return clip_value_step(plan, (double)clip_value, stream);
}

gclip_status gclip_plan_partial(const gclip_plan *plan, const gclip_partial **partial)
{
    gclip_clear_error();
    if (!plan || !partial)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan or partial is NULL");
    *partial = plan->backend->partial(plan);
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_plan_device_result(const gclip_plan *plan, const gclip_device_result **result)
{
    gclip_clear_error();
    if (!plan || !result)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan or result is NULL");
    *result = plan->backend->result_slot(plan);
    return GCLIP_STATUS_SUCCESS;
}

/* ---- decoding the result slot ----------------------------------------------- */

/* Whether the op of the slot changed gradients. */
static int32_t slot_applied(const gclip_result_slot *s)
{
    if (!(s->flags & GCLIP_RESULT_APPLIES) || s->status != GCLIP_STATUS_SUCCESS || s->failed)
        return 0;
    if (s->op == GCLIP_OP_CLIP_VALUE || s->op == GCLIP_OP_AGC)
        return 1; /* every element clamped; AGC: each unit by its own factor */
    if (s->nonfinite && !(s->flags & GCLIP_RESULT_PROPAGATE))
        return 0;
    if (s->op == GCLIP_OP_CLIP_PER_TENSOR)
        return 1; /* each tensor by its own factor, where it differs from 1 */
    return s->scale != 1.0f;
}

gclip_status gclip_get_result(gclip_plan *plan, gclip_result *result)
{
    GCLIP_FP_SCOPE();
    gclip_clear_error();
    if (!plan || !result)
        return gclip_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan or result is NULL");
    gclip_result_slot slot;
    gclip_status s = plan->backend->read_result(plan, &slot);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    const int has_norm = (slot.flags & GCLIP_RESULT_HAS_NORM) != 0;
    result->total_norm = has_norm ? slot.total_norm : NAN;
    result->clip_coef = slot.clip_coef;
    result->scale = slot.scale;
    result->nonfinite = slot.nonfinite;
    result->has_norm = has_norm;
    result->applied = slot_applied(&slot);
    result->op = (gclip_op)slot.op;
    result->sequence = slot.sequence;
    const char *op = gclip_op_name(slot.op);
    if (slot.failed)
        return gclip_fail(GCLIP_STATUS_CUDA_ERROR,
                          "%s: a later launch of the operation failed, so no gradient was "
                          "written; the slot holds what the earlier launch computed",
                          op);
    switch (slot.status) {
    case GCLIP_STATUS_SUCCESS:
        break;
    case GCLIP_STATUS_MISMATCH:
        return gclip_fail(GCLIP_STATUS_MISMATCH,
                          "%s: a partial was made with another norm_type or non-finite policy "
                          "than this call's options; nothing was written",
                          op);
    default:
        if (slot.op == GCLIP_OP_APPLY)
            return gclip_fail((gclip_status)slot.status,
                              "gclip_apply_clip_factor found no pending factor (it follows "
                              "gclip_norm_finalize or gclip_compute_clip_factor, once); "
                              "nothing was written");
        if (slot.op == GCLIP_OP_CLIP_WITH_NORM && slot.total_norm < 0.0f)
            return gclip_fail((gclip_status)slot.status,
                              "%s: the total norm read from total_norm_ptr at execution was %g, "
                              "negative (a norm is >= 0); nothing was written",
                              op, (double)slot.total_norm);
        return gclip_fail((gclip_status)slot.status,
                          "%s: max_norm or inv_scale read from device memory at execution was "
                          "out of range (max_norm must be >= 0, inv_scale finite and > 0); "
                          "nothing was written",
                          op);
    }
    if ((slot.flags & GCLIP_RESULT_ERROR_POLICY) && slot.nonfinite)
        return gclip_fail(GCLIP_STATUS_NONFINITE,
                          "total norm is %g: no gradient was changed (GCLIP_NONFINITE_ERROR)",
                          (double)slot.total_norm);
    return GCLIP_STATUS_SUCCESS;
}
