/*
 * errors.c - the per-thread detail message of gclip_dist_* calls.
 *
 * The core keeps its own detail (gclip_last_error) and clears it on its next
 * call, which a distributed step makes several of; a failed core call's
 * detail is therefore copied here at once, with the part of the plan it
 * concerns.
 */
#include <stdarg.h>
#include <stdio.h>

#include "dist_internal.h"

/* A fixed buffer: reporting an error must never itself allocate or fail. */
static _Thread_local char last_error[768];

const char *gclip_dist_last_error(void)
{
    return last_error;
}

void gclip_dist_clear_error(void)
{
    last_error[0] = '\0';
}

gclip_status gclip_dist_fail(gclip_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

gclip_status gclip_dist_core_fail(gclip_status status, const char *what)
{
    return gclip_dist_fail(status, "%s: %s (%s)", what, gclip_last_error(),
                           gclip_status_string(status));
}

gclip_status gclip_dist_check_layout(const uint64_t *words, int size, int group)
{
    for (int r = 0; r < size; r++)
        if (words[r] == GCLIP_DIST_LAYOUT_FAILED)
            return gclip_dist_fail(GCLIP_STATUS_MISMATCH,
                                   "group %d: rank %d could not build its plan (its own call "
                                   "returned why), so no rank of the group has one",
                                   group, r);
    for (int r = 1; r < size; r++)
        if (words[r] != words[0])
            return gclip_dist_fail(GCLIP_STATUS_MISMATCH,
                                   "group %d: rank %d passed other groups than rank 0 (a different "
                                   "number of communicators or of other sizes); every rank must "
                                   "pass the same groups in the same order",
                                   group, r);
    return GCLIP_STATUS_SUCCESS;
}
