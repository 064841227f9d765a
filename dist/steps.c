/*
 * steps.c - the step calls of a distributed plan: accumulate each group's
 * counted tensors, gather every rank's partials, finalize the gathered array
 * on the plan of every tensor, apply. Results, and the explanation of a
 * mismatch naming the ranks that sent foreign partials.
 *
 * A rank never skips a collective its peers are waiting in: when its own
 * options are rejected or its accumulate fails, it still gathers, sending the
 * poison partial, and returns its own status; the peers' finalize then sees
 * a foreign fingerprint and writes nothing.
 */
#include <stdio.h>
#include <string.h>

#include "dist_internal.h"

static size_t total_partials(const gclip_dist_plan *p)
{
    return p->offsets[p->num_groups];
}

/* Checks the core cannot make for us: a NULL options struct would give
 * defaults to accumulate, and tensor_norms would be indexed per core plan,
 * not per tensor of this plan; max_norm_ptr or inv_scale_ptr inside the
 * slot of the plan that finalizes would be refused only by its finalize,
 * after this rank sent sound partials and its peers went on to clip. */
static gclip_status check_options(const gclip_dist_plan *p, const gclip_norm_options *options)
{
    if (!options)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               "options is NULL: a distributed step needs an explicit max_norm "
                               "(start from GCLIP_NORM_OPTIONS_INIT)");
    if (options->size >= offsetof(gclip_norm_options, tensor_norms) + sizeof(float *) &&
        options->tensor_norms)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               "tensor_norms is set: per-tensor norms are local to a rank; "
                               "compute them with a core plan");
    const gclip_device_result *slot = NULL;
    if (options->size >= offsetof(gclip_norm_options, inv_scale_ptr) + sizeof(float *) &&
        gclip_plan_device_result(p->apply, &slot) == GCLIP_STATUS_SUCCESS) {
        const uintptr_t a = (uintptr_t)slot, b = a + sizeof *slot;
        const float *ptrs[2] = {options->max_norm_ptr, options->inv_scale_ptr};
        const char *names[2] = {"max_norm_ptr", "inv_scale_ptr"};
        for (int k = 0; k < 2; k++)
            if (ptrs[k] && (uintptr_t)ptrs[k] + sizeof(float) > a && (uintptr_t)ptrs[k] < b)
                return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                                       "%s points into the plan's result slot "
                                       "(gclip_dist_plan_device_result), which the step "
                                       "rewrites while it reads the value",
                                       names[k]);
    }
    return GCLIP_STATUS_SUCCESS;
}

/* Fill the send slots of a plan without a transport: each group's partial,
 * or the poison. */
static gclip_status fill_send_slots(gclip_dist_plan *p, gclip_stream stream)
{
    for (size_t g = 0; g < p->num_groups; g++) {
        const gclip_partial *src = p->poison;
        if (!p->poisoned)
            (void)gclip_plan_partial(p->counted[g], &src);
        gclip_status s = p->memory->copy(p, &p->send[g], src, sizeof *src, GCLIP_DIST_ON_DEVICE,
                                         0, stream);
        if (s != GCLIP_STATUS_SUCCESS)
            return s;
    }
    return GCLIP_STATUS_SUCCESS;
}

/* Accumulate every group's counted tensors. On any failure the plan sends
 * the poison this step, and the first failure's status is returned. */
static gclip_status accumulate_groups(gclip_dist_plan *p, const gclip_norm_options *options,
                                      gclip_stream stream)
{
    gclip_status s = check_options(p, options);
    for (size_t g = 0; g < p->num_groups && s == GCLIP_STATUS_SUCCESS; g++) {
        s = gclip_norm_accumulate(p->counted[g], options, stream);
        if (s != GCLIP_STATUS_SUCCESS) {
            char what[96];
            (void)snprintf(what, sizeof what, "accumulate of group %zu", g);
            s = gclip_dist_core_fail(s, what);
        }
    }
    p->poisoned = s != GCLIP_STATUS_SUCCESS;
    if (p->send) {
        const gclip_status c = fill_send_slots(p, stream);
        if (s == GCLIP_STATUS_SUCCESS)
            s = c;
    }
    return s;
}

/* ---- explaining a mismatch ------------------------------------------------------ */

/* Append "group g rank r (why)" to `buf`, keeping it terminated. */
static size_t name_rank(char *buf, size_t used, size_t cap, size_t g, size_t r, int poisoned)
{
    if (used + 1 >= cap)
        return used;
    const int n = snprintf(buf + used, cap - used, "%sgroup %zu rank %zu (%s)", used ? ", " : "",
                           g, r,
                           poisoned ? "its own call was rejected or failed"
                                    : "another norm_type or non-finite policy");
    return n < 0 ? used : used + (size_t)n;
}

/* MISMATCH, with the ranks whose gathered partials differ from this rank's
 * own (read back from the gather buffer: results only, never in a step). */
static gclip_status explain_mismatch(gclip_dist_plan *p)
{
    const size_t total = total_partials(p);
    gclip_status s = p->memory->copy(p, p->host_view, p->gather, total * sizeof(gclip_partial),
                                     GCLIP_DIST_TO_HOST, 1, NULL);
    if (s != GCLIP_STATUS_SUCCESS)
        return gclip_dist_fail(GCLIP_STATUS_MISMATCH,
                               "partials of other options reached the finalize, so nothing was "
                               "written (the gathered partials could not be read back to name "
                               "the ranks)");
    const uint32_t mine = p->host_view[p->offsets[0] + (size_t)p->ranks[0]].fingerprint;
    const uint32_t poison = p->poison_value.fingerprint;
    /* this rank's own state first: after a failed gather the buffer is stale */
    if (p->poisoned || mine == poison)
        return gclip_dist_fail(GCLIP_STATUS_MISMATCH,
                               "this rank's own part of the step was rejected or failed, so it "
                               "sent the poison partial; nothing was written on any rank "
                               "(its call returned why)");
    if (p->withdrawn)
        return gclip_dist_fail(GCLIP_STATUS_MISMATCH,
                               "this rank's step failed after its accumulate (in the gather or "
                               "the finalize; its call returned why), so no factor is pending "
                               "here; it sent sound partials, so its peers may have made one");
    char list[512] = "";
    size_t used = 0, named = 0, more = 0;
    for (size_t g = 0; g < p->num_groups; g++)
        for (size_t r = 0; r < (size_t)p->sizes[g]; r++) {
            const uint32_t fp = p->host_view[p->offsets[g] + r].fingerprint;
            if (fp == mine)
                continue;
            if (named++ < 6)
                used = name_rank(list, used, sizeof list, g, r, fp == poison);
            else
                more++;
        }
    if (named == 0)
        return gclip_dist_fail(GCLIP_STATUS_MISMATCH,
                               "every gathered partial has this rank's fingerprint, so the "
                               "finalize ran with another norm_type or non-finite policy than "
                               "the accumulate; nothing was written");
    return gclip_dist_fail(GCLIP_STATUS_MISMATCH,
                           "ranks disagree on the options: %s%s differ from this rank; nothing "
                           "was written here nor on any rank that received them. Every rank "
                           "must pass the same norm_type and non-finite policy",
                           list, more ? " and more" : "");
}

/* ---- steps ------------------------------------------------------------------------ */

static gclip_status check_plan(const gclip_dist_plan *p)
{
    return p ? GCLIP_STATUS_SUCCESS : gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
}

/* After a step whose local part failed (its accumulate, its finalize, or
 * the gather): a finalize of the poison alone, which no valid options match,
 * so that the slot says MISMATCH and no factor of an earlier step stays
 * pending to be applied here alone. The options are the defaults: the
 * caller's may be what was rejected. The gathered partials are not folded:
 * when only this rank's finalize was rejected they are all sound, and the
 * defaults would make a factor of them. Writes no gradient. */
static void withdraw_factor(gclip_dist_plan *p, gclip_stream stream)
{
    const gclip_norm_options d = gclip_norm_options_default();
    (void)gclip_norm_finalize(p->apply, &d, p->poison, 1, stream);
    p->withdrawn = 1;
}

/* Finalize (and apply) on the plan of every tensor, from the gather buffer. */
static gclip_status finalize_and_apply(gclip_dist_plan *p, const gclip_norm_options *options,
                                       int apply, gclip_stream stream)
{
    gclip_status s = gclip_norm_finalize(p->apply, options, p->gather, total_partials(p), stream);
    if (s != GCLIP_STATUS_SUCCESS) {
        /* the core's message first: the withdrawal is a core call too */
        s = gclip_dist_core_fail(s, "finalize");
        withdraw_factor(p, stream);
        return s;
    }
    p->withdrawn = 0;
    if (apply) {
        s = gclip_apply_clip_factor(p->apply, stream);
        if (s != GCLIP_STATUS_SUCCESS)
            return gclip_dist_core_fail(s, "apply");
    }
    return GCLIP_STATUS_SUCCESS;
}

/* The status of the plan's last step, from its result slot: what
 * gclip_dist_get_result returns. */
static gclip_status slot_status(gclip_dist_plan *p, gclip_result *r)
{
    gclip_status s = gclip_get_result(p->apply, r);
    if (s == GCLIP_STATUS_MISMATCH)
        return explain_mismatch(p);
    if (s != GCLIP_STATUS_SUCCESS)
        return gclip_dist_core_fail(s, "result");
    return s;
}

/* Begin the step and accumulate; whatever fails, the plan sends the poison
 * this step. */
static gclip_status begin_and_accumulate(gclip_dist_plan *p, const gclip_norm_options *options,
                                         gclip_stream stream)
{
    const gclip_status s = p->memory->begin(p, stream);
    if (s != GCLIP_STATUS_SUCCESS) {
        p->poisoned = 1;
        /* the send slots must not keep the last step's partials: the poison
         * goes there too, if the stream still takes a copy (whose own
         * failure does not replace the start's message) */
        if (p->send) {
            char detail[768];
            (void)snprintf(detail, sizeof detail, "%s", gclip_dist_last_error());
            (void)fill_send_slots(p, stream);
            return gclip_dist_fail(s, "%s", detail);
        }
        return s;
    }
    return accumulate_groups(p, options, stream);
}

static gclip_status run_step(gclip_dist_plan *p, const gclip_norm_options *options, int apply,
                             gclip_stream stream)
{
    gclip_dist_clear_error();
    gclip_status s = check_plan(p);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    if (!p->transport)
        return gclip_dist_fail(GCLIP_STATUS_NOT_SUPPORTED,
                               "this plan has no transport: run gclip_dist_accumulate, gather "
                               "the partials, then gclip_dist_finalize");
    const gclip_status local = begin_and_accumulate(p, options, stream);
    char local_detail[768] = "";
    if (local != GCLIP_STATUS_SUCCESS)
        (void)snprintf(local_detail, sizeof local_detail, "%s", gclip_dist_last_error());
    /* whatever failed locally, the peers are waiting in the gather: join it */
    s = p->transport->gather(p, stream);
    if (s == GCLIP_STATUS_SUCCESS && local == GCLIP_STATUS_SUCCESS)
        s = finalize_and_apply(p, options, apply, stream); /* withdraws if its finalize fails */
    else
        withdraw_factor(p, stream); /* a local failure, or a failed gather */
    const gclip_status e = p->memory->end(p, stream);
    if (local != GCLIP_STATUS_SUCCESS)
        return gclip_dist_fail(local, "%s", local_detail); /* this rank's own failure first */
    if (s == GCLIP_STATUS_SUCCESS)
        s = e;
    if (s != GCLIP_STATUS_SUCCESS || p->memory != &gclip_dist_host_memory)
        return s;
    /* a CPU step has completed: report what its slot says, as the result
     * would, except a non-finite norm (a result, not a failure, as in the core) */
    gclip_result r;
    s = slot_status(p, &r);
    return s == GCLIP_STATUS_NONFINITE ? GCLIP_STATUS_SUCCESS : s;
}

gclip_status gclip_dist_clip_grad_norm(gclip_dist_plan *plan, const gclip_norm_options *options,
                                       gclip_stream stream)
{
    return run_step(plan, options, 1, stream);
}

gclip_status gclip_dist_compute_clip_factor(gclip_dist_plan *plan,
                                            const gclip_norm_options *options,
                                            gclip_stream stream)
{
    return run_step(plan, options, 0, stream);
}

gclip_status gclip_dist_apply_clip_factor(gclip_dist_plan *plan, gclip_stream stream)
{
    gclip_dist_clear_error();
    gclip_status s = check_plan(plan);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    /* after a failed step no factor may be applied here alone, also when
     * the withdrawal's own finalize could not be queued */
    if (plan->withdrawn)
        return gclip_dist_fail(GCLIP_STATUS_MISMATCH,
                               "this rank's last step failed (its call returned why): there is "
                               "no factor to apply; nothing was written");
    s = plan->memory->begin(plan, stream);
    if (s == GCLIP_STATUS_SUCCESS) {
        s = gclip_apply_clip_factor(plan->apply, stream);
        if (s != GCLIP_STATUS_SUCCESS)
            s = gclip_dist_core_fail(s, "apply");
    }
    const gclip_status e = plan->memory->end(plan, stream);
    return s == GCLIP_STATUS_SUCCESS ? e : s;
}

/* ---- phases ------------------------------------------------------------------------ */

gclip_status gclip_dist_accumulate(gclip_dist_plan *plan, const gclip_norm_options *options,
                                   gclip_stream stream)
{
    gclip_dist_clear_error();
    gclip_status s = check_plan(plan);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    plan->accumulated = 1; /* its send partial is set, the poison if it failed */
    s = begin_and_accumulate(plan, options, stream);
    const gclip_status e = plan->memory->end(plan, stream);
    return s == GCLIP_STATUS_SUCCESS ? e : s;
}

gclip_status gclip_dist_finalize(gclip_dist_plan *plan, const gclip_norm_options *options,
                                 gclip_stream stream)
{
    gclip_dist_clear_error();
    gclip_status s = check_plan(plan);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    if (!plan->accumulated)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               "no gclip_dist_accumulate has run on this plan: accumulate, "
                               "gather the partials, then finalize");
    s = plan->memory->begin(plan, stream);
    if (s == GCLIP_STATUS_SUCCESS) {
        /* a failed finalize withdraws the factor itself */
        s = finalize_and_apply(plan, options, 0, stream);
        /* this rank's accumulate failed (its poison is in the gathered
         * partials): its slot says MISMATCH like its peers', and no earlier
         * factor stays pending here alone */
        if (s == GCLIP_STATUS_SUCCESS && plan->poisoned)
            withdraw_factor(plan, stream);
    } else {
        plan->withdrawn = 1; /* nothing could be queued: no factor may be applied */
    }
    const gclip_status e = plan->memory->end(plan, stream);
    return s == GCLIP_STATUS_SUCCESS ? e : s;
}

gclip_status gclip_dist_plan_send_partial(const gclip_dist_plan *plan, size_t group,
                                          const gclip_partial **partial)
{
    gclip_dist_clear_error();
    if (!plan || !partial)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan or partial is NULL");
    if (group >= plan->num_groups)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "group %zu of %zu", group,
                               plan->num_groups);
    *partial = gclip_dist_send_address(plan, group);
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_dist_plan_gather_buffer(const gclip_dist_plan *plan, size_t group,
                                           gclip_partial **partials, size_t *count)
{
    gclip_dist_clear_error();
    if (!plan || !partials || !count)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan, partials or count is NULL");
    if (group >= plan->num_groups)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "group %zu of %zu", group,
                               plan->num_groups);
    *partials = plan->gather + plan->offsets[group];
    *count = (size_t)plan->sizes[group];
    return GCLIP_STATUS_SUCCESS;
}

/* ---- results ------------------------------------------------------------------------ */

gclip_status gclip_dist_get_result(gclip_dist_plan *plan, gclip_result *result)
{
    gclip_dist_clear_error();
    gclip_status s = check_plan(plan);
    if (s != GCLIP_STATUS_SUCCESS)
        return s;
    if (!result)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "result is NULL");
    return slot_status(plan, result);
}

gclip_status gclip_dist_plan_device_result(const gclip_dist_plan *plan,
                                           const gclip_device_result **result)
{
    gclip_dist_clear_error();
    if (!plan || !result)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan or result is NULL");
    gclip_status s = gclip_plan_device_result(plan->apply, result);
    return s == GCLIP_STATUS_SUCCESS ? s : gclip_dist_core_fail(s, "device result");
}
