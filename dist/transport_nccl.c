/*
 * transport_nccl.c - partials of CUDA plans gathered with NCCL.
 *
 * One ncclAllGather of 16 bytes per rank and group, queued on the step's
 * stream between the accumulate kernels and the finalize kernel: no host
 * synchronization, no allocation, capturable. The groups' collectives are
 * issued one after the other, in group order on every rank, so collectives
 * over overlapping communicators cannot wait on each other in a cycle.
 */
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "dist_internal.h"

typedef struct nccl_state {
    ncclComm_t *comms; /* [num_groups], the caller's handles */
} nccl_state;

static gclip_status nccl_fail(ncclResult_t r, const char *what, ncclComm_t comm)
{
    gclip_status s = GCLIP_STATUS_INTERNAL_ERROR;
    switch (r) {
    case ncclInvalidArgument:
    case ncclInvalidUsage:
        s = GCLIP_STATUS_INVALID_ARGUMENT;
        break;
    case ncclUnhandledCudaError:
        s = GCLIP_STATUS_CUDA_ERROR;
        break;
    case ncclInProgress:
        return gclip_dist_fail(GCLIP_STATUS_NOT_SUPPORTED,
                               "%s: the communicator is nonblocking; gclip::dist needs a blocking "
                               "one (the default ncclConfig_t)",
                               what);
    default:
        break;
    }
    const char *last = comm ? ncclGetLastError(comm) : NULL;
    return gclip_dist_fail(s, "%s failed: %s%s%s", what, ncclGetErrorString(r),
                           last && *last ? ": " : "", last ? last : "");
}

/* A collective that a nonblocking communicator accepted with ncclInProgress
 * is issued later by NCCL's own thread: wait on the host until it has been
 * (the communicator's state leaves ncclInProgress), before anything else is
 * queued behind it or its buffers are freed. A wait for that thread, not
 * for the device. Returns the state it ends in. */
static ncclResult_t wait_issued(ncclComm_t comm)
{
    ncclResult_t st = ncclInProgress;
    while (st == ncclInProgress)
        if (ncclCommGetAsyncError(comm, &st) != ncclSuccess)
            return ncclInternalError;
    return st;
}

static gclip_status nccl_gather(gclip_dist_plan *p, gclip_stream stream)
{
    nccl_state *s = p->transport_state;
    gclip_status result = GCLIP_STATUS_SUCCESS;
    /* every group is issued even after a failure: the peers wait in each */
    for (size_t g = 0; g < p->num_groups; g++) {
        ncclResult_t r = ncclAllGather(gclip_dist_send_address(p, g), p->gather + p->offsets[g],
                                       sizeof(gclip_partial), ncclUint8, s->comms[g],
                                       (cudaStream_t)stream);
        if (r == ncclInProgress) /* a nonblocking communicator plan creation could not tell */
            r = wait_issued(s->comms[g]);
        if (r != ncclSuccess && result == GCLIP_STATUS_SUCCESS)
            result = nccl_fail(r, "ncclAllGather of the partials", s->comms[g]);
    }
    return result;
}

static void free_state(nccl_state *s)
{
    if (!s)
        return;
    free(s->comms);
    free(s);
}

static void nccl_release(gclip_dist_plan *p)
{
    free_state(p->transport_state);
    p->transport_state = NULL;
}

static const gclip_dist_transport nccl_transport = {"nccl", nccl_gather, nccl_release};

/* As the MPI transport: every rank of every group compares its peers' layout
 * words, and a rank whose plan failed still joins. Setup only: a private
 * stream, a temporary buffer, synchronous. */
static gclip_status exchange_layouts(uint64_t mine, int device, const ncclComm_t *comms,
                                     const int *sizes, size_t num_groups)
{
    int largest = 1;
    for (size_t g = 0; g < num_groups; g++)
        largest = sizes[g] > largest ? sizes[g] : largest;
    uint64_t *host = calloc((size_t)largest, sizeof *host);
    if (!host)
        return gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    int prev = 0;
    (void)cudaGetDevice(&prev);
    cudaStream_t stream = NULL;
    uint64_t *dev = NULL;
    gclip_status result = GCLIP_STATUS_SUCCESS;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&dev, ((size_t)largest + 1) * sizeof *dev);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(dev, &mine, sizeof mine, cudaMemcpyHostToDevice, stream);
    int stuck = 0; /* a communicator failed while the device may still use `dev` */
    for (size_t g = 0; g < num_groups && e == cudaSuccess && !stuck; g++) {
        ncclResult_t r = ncclAllGather(dev, dev + 1, 1, ncclUint64, comms[g], stream);
        if (r == ncclInProgress) {
            /* nonblocking: refused, once the gather is issued (its peers
             * wait in it, and `dev` must outlive it) */
            r = wait_issued(comms[g]);
            if (r != ncclSuccess) { /* it may be queued, never to end */
                if (result == GCLIP_STATUS_SUCCESS)
                    result = nccl_fail(r, "ncclAllGather of the group layout", comms[g]);
                stuck = 1;
                break;
            }
            if (result == GCLIP_STATUS_SUCCESS)
                result = nccl_fail(ncclInProgress, "ncclAllGather of the group layout", comms[g]);
        }
        if (r != ncclSuccess) {
            if (result == GCLIP_STATUS_SUCCESS)
                result = nccl_fail(r, "ncclAllGather of the group layout", comms[g]);
            continue; /* the later groups' peers are waiting in their gathers */
        }
        /* the stream polled until the gather has run, and the communicator
         * with it: a gather whose communicator fails (a peer or the network
         * lost) never completes, and a synchronization, or the copy to
         * pageable memory below (which waits for the stream), would wait for
         * it for ever */
        while (e == cudaSuccess && (e = cudaStreamQuery(stream)) == cudaErrorNotReady) {
            gclip_dist_forget_cuda_error(e);
            ncclResult_t st = ncclSuccess;
            if (ncclCommGetAsyncError(comms[g], &st) != ncclSuccess)
                st = ncclInternalError;
            if (st != ncclSuccess && st != ncclInProgress) {
                if (result == GCLIP_STATUS_SUCCESS)
                    result = gclip_dist_fail(
                        GCLIP_STATUS_INTERNAL_ERROR,
                        "ncclAllGather of the group layout of group %zu: the communicator failed "
                        "(%s); abort it (ncclCommAbort) and make a new one",
                        g, ncclGetErrorString(st));
                stuck = 1;
                e = cudaSuccess;
                break;
            }
        }
        if (e == cudaSuccess && !stuck)
            e = cudaMemcpyAsync(host, dev + 1, (size_t)sizes[g] * sizeof *host,
                                cudaMemcpyDeviceToHost, stream);
        if (e == cudaSuccess && !stuck)
            e = cudaStreamSynchronize(stream);
        if (e == cudaSuccess && !stuck && result == GCLIP_STATUS_SUCCESS)
            result = gclip_dist_check_layout(host, sizes[g], (int)g);
    }
    if (e != cudaSuccess && result == GCLIP_STATUS_SUCCESS)
        result = gclip_dist_fail(GCLIP_STATUS_CUDA_ERROR, "exchange of the group layout: %s (%s)",
                                 cudaGetErrorName(e), cudaGetErrorString(e));
    gclip_dist_forget_cuda_error(e);
    /* after a failed communicator the gather may never end: cudaFree would
     * wait for it, so its few bytes are left (the stream is destroyed once
     * its work ends) */
    if (dev && !stuck)
        gclip_dist_forget_cuda_error(cudaFree(dev));
    if (stream)
        gclip_dist_forget_cuda_error(cudaStreamDestroy(stream));
    (void)cudaSetDevice(prev);
    free(host);
    return result;
}

/* This rank's rank and size in each communicator, which must be bound to
 * `device`. */
static gclip_status query_comms(const ncclComm_t *comms, size_t num_groups, int device, int *ranks,
                                int *sizes)
{
    for (size_t g = 0; g < num_groups; g++) {
        if (!comms[g])
            return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "comms[%zu] is NULL", g);
        int cu = -1;
        ncclResult_t r = ncclCommCount(comms[g], &sizes[g]);
        if (r == ncclSuccess)
            r = ncclCommUserRank(comms[g], &ranks[g]);
        if (r == ncclSuccess)
            r = ncclCommCuDevice(comms[g], &cu);
        if (r != ncclSuccess)
            return nccl_fail(r, "query of a group's communicator", comms[g]);
        if (cu != device)
            return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                                   "comms[%zu] is bound to CUDA device %d, the plan to device %d", g,
                                   cu, device);
    }
    return GCLIP_STATUS_SUCCESS;
}

gclip_status gclip_dist_plan_create_nccl(gclip_dist_plan **plan, const gclip_dist_tensor *tensors,
                                         size_t count, int device, const ncclComm_t *comms,
                                         size_t num_groups)
{
    gclip_dist_clear_error();
    if (plan)
        *plan = NULL;
    if (!comms || num_groups == 0)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               "comms is NULL or num_groups is 0: pass one communicator per group");
    if (device < 0)
        return gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT,
                               "device %d: NCCL plans run on a CUDA device (CPU plans: MPI)",
                               device);
    int *ranks = calloc(num_groups, sizeof *ranks);
    int *sizes = calloc(num_groups, sizeof *sizes);
    if (!ranks || !sizes) {
        free(ranks);
        free(sizes);
        return gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    }
    gclip_status st = query_comms(comms, num_groups, device, ranks, sizes);
    if (st != GCLIP_STATUS_SUCCESS) {
        /* no collective can be joined on a communicator we cannot use */
        free(ranks);
        free(sizes);
        return st;
    }

    /* a NULL `plan` is this rank's own failure: it still joins the exchange */
    if (st == GCLIP_STATUS_SUCCESS && !plan)
        st = gclip_dist_fail(GCLIP_STATUS_INVALID_ARGUMENT, "plan is NULL");
    gclip_dist_plan *p = NULL;
    nccl_state *s = calloc(1, sizeof *s);
    if (s)
        s->comms = calloc(num_groups, sizeof *s->comms);
    if (!s || !s->comms)
        st = gclip_dist_fail(GCLIP_STATUS_OUT_OF_MEMORY, "host allocation failed");
    if (st == GCLIP_STATUS_SUCCESS)
        st = gclip_dist_build(&p, tensors, count, device, ranks, sizes, num_groups,
                              &nccl_transport);
    if (st == GCLIP_STATUS_SUCCESS) {
        for (size_t g = 0; g < num_groups; g++)
            s->comms[g] = comms[g];
        p->transport_state = s;
        s = NULL;
    }
    free_state(s);

    const uint64_t word = p ? gclip_dist_layout_hash(p) : GCLIP_DIST_LAYOUT_FAILED;
    char local_detail[768];
    snprintf(local_detail, sizeof local_detail, "%s", gclip_dist_last_error());
    const gclip_status ex = exchange_layouts(word, device, comms, sizes, num_groups);
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
