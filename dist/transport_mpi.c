/*
 * transport_mpi.c - partials of CPU plans gathered with MPI.
 *
 * One MPI_Allgather of 16 bytes per rank and group, in group order on every
 * rank (so that collectives over overlapping communicators cannot wait on
 * each other in a cycle). Blocking collectives rather than MPI_Iallgather:
 * a job has one or two groups, and a nonblocking collective makes most MPI
 * libraries build (allocate) a schedule on every call. The communicators
 * stay the caller's: they are used only through collectives, which MPI
 * orders per communicator, so the caller's own collectives on them need no
 * separate context.
 */
#include <stdio.h>
#include <stdlib.h>

#include <mpi.h>

#include "dist_internal.h"

typedef struct mpi_state {
    MPI_Comm *comms; /* [num_groups], the caller's handles */
} mpi_state;

static gclip_status mpi_fail(int err, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, text, &len) != MPI_SUCCESS)
        len = 0;
    text[len < MPI_MAX_ERROR_STRING ? len : MPI_MAX_ERROR_STRING - 1] = '\0';
    return gclip_dist_fail(GCLIP_STATUS_INTERNAL_ERROR, "%s failed: MPI error %d (%s)", what, err,
                           text);
}

static gclip_status mpi_gather(gclip_dist_plan *p, gclip_stream stream)
{
    (void)stream;
    mpi_state *s = p->transport_state;
    const int bytes = (int)sizeof(gclip_partial);
    gclip_status result = GCLIP_STATUS_SUCCESS;
    /* every group even after a failure: the peers wait in each */
    for (size_t g = 0; g < p->num_groups; g++) {
        const int err = MPI_Allgather(gclip_dist_send_address(p, g), bytes, MPI_BYTE,
                                      p->gather + p->offsets[g], bytes, MPI_BYTE, s->comms[g]);
        if (err != MPI_SUCCESS && result == GCLIP_STATUS_SUCCESS)
            result = mpi_fail(err, "MPI_Allgather of the partials");
    }
    return result;
}

static void free_state(mpi_state *s);

static void mpi_release(gclip_dist_plan *p)
{
    free_state(p->transport_state);
    p->transport_state = NULL;
}

static const gclip_dist_transport mpi_transport = {"mpi", mpi_gather, mpi_release};

/* Every rank of every group compares the layout words of its peers (a rank
 * whose plan could not be built sends GCLIP_DIST_LAYOUT_FAILED, so that it
 * still joins and its peers fail too instead of waiting). Every group is
 * checked even after a mismatch, so that each rank joins the same
 * collectives. */
static gclip_status exchange_layouts(uint64_t mine, const MPI_Comm *comms, const int *sizes,
                                     size_t num_groups)
{
    int largest = 1;
    for (size_t g = 0; g < num_groups; g++)
        largest = sizes[g] > largest ? sizes[g] : largest;
    uint64_t *words = calloc((size_t)largest, sizeof *words);
    if (!words)
        return gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    gclip_status result = GCLIP_STATUS_SUCCESS;
    for (size_t g = 0; g < num_groups; g++) {
        if (sizes[g] == 0)
            continue; /* a communicator this rank could not query: no collective on it */
        const int err = MPI_Allgather(&mine, 1, MPI_UINT64_T, words, 1, MPI_UINT64_T, comms[g]);
        if (result != GCLIP_STATUS_SUCCESS)
            continue; /* the first failure's detail is kept */
        result = err == MPI_SUCCESS ? gclip_dist_check_layout(words, sizes[g], (int)g)
                                    : mpi_fail(err, "MPI_Allgather of the group layout");
    }
    free(words);
    return result;
}

static void free_state(mpi_state *s)
{
    if (!s)
        return;
    free(s->comms);
    free(s);
}

gclip_status gclip_dist_plan_create_mpi(gclip_dist_plan **plan, const gclip_dist_tensor *tensors,
                                        size_t count, const MPI_Comm *comms, size_t num_groups)
{
    gclip_dist_clear_error();
    if (plan)
        *plan = NULL;
    if (!comms || num_groups == 0)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               "comms is NULL or num_groups is 0: pass one communicator per group");
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "MPI is not initialized");
    int *ranks = calloc(num_groups, sizeof *ranks);
    int *sizes = calloc(num_groups, sizeof *sizes);
    if (!ranks || !sizes) {
        free(ranks);
        free(sizes);
        return gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    }
    gclip_status st = GCLIP_STATUS_SUCCESS;
    for (size_t g = 0; g < num_groups; g++) {
        int err = comms[g] == MPI_COMM_NULL ? MPI_ERR_COMM : MPI_Comm_rank(comms[g], &ranks[g]);
        if (err == MPI_SUCCESS)
            err = MPI_Comm_size(comms[g], &sizes[g]);
        if (err != MPI_SUCCESS) {
            /* no collective can be joined on a communicator we cannot query
             * (size 0 marks it); the others still get this rank's failure */
            sizes[g] = 0;
            if (st == GCLIP_STATUS_SUCCESS)
                st = comms[g] == MPI_COMM_NULL
                         ? gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                                           "group %zu: the communicator is MPI_COMM_NULL", g)
                         : mpi_fail(err, "MPI_Comm_rank/MPI_Comm_size of a group's communicator");
        }
    }

    /* a NULL `plan` is this rank's own failure: it still joins the exchange */
    if (st == GCLIP_STATUS_SUCCESS && !plan)
        st = gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    gclip_dist_plan *p = NULL;
    mpi_state *s = st == GCLIP_STATUS_SUCCESS ? calloc(1, sizeof *s) : NULL;
    if (s)
        s->comms = calloc(num_groups, sizeof *s->comms);
    if (st == GCLIP_STATUS_SUCCESS && (!s || !s->comms))
        st = gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    if (st == GCLIP_STATUS_SUCCESS)
        st = gclip_dist_build(&p, tensors, count, GCLIP_DEVICE_CPU, ranks, sizes, num_groups,
                              &mpi_transport);
    if (st == GCLIP_STATUS_SUCCESS) {
        for (size_t g = 0; g < num_groups; g++)
            s->comms[g] = comms[g];
        p->transport_state = s;
        s = NULL;
    }
    free_state(s);

    /* a local failure keeps its own detail; the exchange still runs */
    const uint64_t word = p ? gclip_dist_layout_hash(p) : GCLIP_DIST_LAYOUT_FAILED;
    char local_detail[768];
    snprintf(local_detail, sizeof local_detail, "%s", gclip_dist_last_error());
    const gclip_status ex = exchange_layouts(word, comms, sizes, num_groups);
    free(ranks);
    free(sizes);
    if (st != GCLIP_STATUS_SUCCESS)
        return gclip_dist_fail(st, "%s", local_detail);
    if (ex != GCLIP_STATUS_SUCCESS) {
        gclip_dist_free(p);
        return ex;
    }
    *plan = p;
    return GCLIP_STATUS_SUCCESS;
}
