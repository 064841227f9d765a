/*
 * gclip_dist.h - gradient clipping across ranks, over a communicator the
 * caller owns: NCCL for CUDA plans, MPI for CPU plans, or any other
 * transport the caller drives itself.
 *
 * A separate library (gclip::dist) on top of gclip's public API. The core
 * library never links NCCL or MPI.
 *
 * Overview
 *   A distributed plan is built once from this rank's gradient tensors, each
 *   tagged with a group (an index into an array of communicators) and a role
 *   (whether this rank's copy counts towards the norm). Every step then runs
 *   the core's step contract across ranks:
 *     accumulate  each group's counted tensors into a 16-byte gclip_partial;
 *     gather      every rank's partial of each group, with one all-gather per
 *                 group (ncclAllGather on the step's stream, MPI_Allgather);
 *     finalize    fold the gathered partials, group by group and rank by rank,
 *                 into the norm, coefficient and factor (gclip_norm_finalize);
 *     apply       multiply every tensor of the plan by that factor.
 *   Every rank folds the same array in the same order, so the norm and the
 *   factor are bitwise identical on every rank and in every run, whatever
 *   algorithm the collective used.
 *
 * Groups and roles
 *   The total norm is the fold, over groups 0..G-1 in order, of the fold over
 *   the ranks of each group's communicator (in rank order) of their counted
 *   partials. For that total to be the same on every rank:
 *     - every rank passes G communicators, in the same order, of the same
 *       sizes (checked when the plan is built), including groups in which it
 *       holds no tensor;
 *     - each group's communicator spans every distinct shard of that group's
 *       tensors; ranks outside it hold identical replicas (e.g. data-parallel
 *       copies after the gradient all-reduce);
 *     - every element is counted by exactly one rank of its group: a shard by
 *       the rank that holds it (GCLIP_DIST_SHARDED), a tensor replicated over
 *       the whole group by the group's rank 0 (GCLIP_DIST_REPLICATED), a
 *       tensor replicated over some other set of ranks by one rank of that set
 *       chosen by the caller, and GCLIP_DIST_NOT_COUNTED on the others.
 *   Every tensor is clipped on every rank that holds it, counted or not.
 *   docs/distributed.md maps Megatron TP/PP/DP/EP, FSDP2 and ZeRO onto this.
 *
 * Ordering and cost (NCCL)
 *   Step calls return once their work is enqueued on `stream`: no host
 *   synchronization, no allocation, capturable in a CUDA graph. A step waits
 *   for the plan's previous step (an event, also across streams and graph
 *   replays). The collective is one ncclAllGather of 16 bytes per rank and
 *   group; the gathered partials are folded in the fixed shape of
 *   gclip_norm_finalize (gclip.h), whose cost grows with the rank count (see
 *   docs/distributed.md for the measured fold and the cost model).
 *
 * Ordering (MPI)
 *   CPU plans run every phase before the call returns. The step call is a
 *   collective on each group's communicator: every rank of each group calls
 *   it, in the same order relative to its other collectives there.
 *
 * Bad input on one rank
 *   Options that differ between ranks (norm_type, non-finite policy) are
 *   caught by the fingerprint each partial carries: the finalize of every
 *   rank that gathers a foreign partial writes nothing and reports
 *   GCLIP_STATUS_MISMATCH (total_norm NaN). A rank whose own call is
 *   rejected (invalid options) or whose accumulate fails still joins the
 *   collectives, with a poisoned partial that no valid options produce:
 *   every rank that shares a group with it reports MISMATCH and writes
 *   nothing, and no rank waits forever. Both travel one gather: with several
 *   groups, a rank that shares no group with the failing one may clip
 *   (docs/distributed.md, "One hop"); stop the job on a failed status.
 *
 * Threads
 *   One plan must not be used by two host threads at once; distinct plans
 *   may be.
 *
 * Errors
 *   Functions return gclip_status. gclip_dist_last_error() gives the detail
 *   of the calling thread's last failed gclip_dist_* call (the core's own
 *   detail, when a core call failed, is copied into it).
 */
#ifndef GCLIP_DIST_H
#define GCLIP_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "gclip.h"

/* The transports this library was built with. A build through CMake defines
 * these for consumers of gclip::dist; without them, include <mpi.h> and/or
 * <nccl.h> before this header to declare the functions that take their
 * communicators. */
#if defined(GCLIP_DIST_HAVE_MPI) && !defined(MPI_VERSION)
/* MPI's C API only: the C++ bindings that mpi.h would also declare were
 * removed from the MPI standard and need a library of their own (include
 * <mpi.h> before this header to get them) */
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#endif
#if defined(GCLIP_DIST_HAVE_NCCL) && !defined(NCCL_MAJOR)
#include <nccl.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define GCLIP_DIST_API __attribute__((visibility("default")))
#else
#define GCLIP_DIST_API
#endif

/* Whether this rank's copy of a tensor counts towards the norm. The tensor is
 * clipped in every case. */
typedef enum gclip_dist_role {
    /* Default. This rank's elements count: a shard (FSDP, ZeRO, a TP-split
     * weight) or a tensor that no other rank of the group holds. */
    GCLIP_DIST_SHARDED = 0,
    /* Identical on every rank of the tensor's group: counted by the group's
     * rank 0 only. */
    GCLIP_DIST_REPLICATED = 1,
    /* A copy that another rank counts (a layer norm duplicated over the TP
     * ranks of a TP x PP group: counted on TP rank 0; an embedding tied
     * across pipeline stages: counted on the first stage). */
    GCLIP_DIST_NOT_COUNTED = 2
} gclip_dist_role;

/* One gradient tensor of this rank, its group and its role. The tensor is as
 * in gclip_plan_create (memory of the plan's device). */
typedef struct gclip_dist_tensor {
    gclip_tensor tensor;
    uint32_t group;       /* index into the communicator array, < num_groups */
    gclip_dist_role role;
} gclip_dist_tensor;

/* Opaque distributed plan. */
typedef struct gclip_dist_plan gclip_dist_plan;

/* Bits of gclip_dist_transports(). */
enum {
    GCLIP_DIST_TRANSPORT_MPI = 1,
    GCLIP_DIST_TRANSPORT_NCCL = 2
};

/* The transports compiled into this library (GCLIP_DIST_TRANSPORT_* bits).
 * Plans without a transport (gclip_dist_plan_create_external) always exist. */
GCLIP_DIST_API int gclip_dist_transports(void);

/* Detail of the calling thread's last failed gclip_dist_* call ("" if
 * none). Valid until the thread's next gclip_dist_* call. */
GCLIP_DIST_API const char *gclip_dist_last_error(void);

/* ---- plans ---------------------------------------------------------------- */

#if defined(MPI_VERSION)
/* A CPU plan whose partials are gathered with MPI. `tensors` (host memory,
 * copied) are this rank's; `comms` holds num_groups communicators, each used
 * by this plan's step calls only through collectives. The caller keeps them
 * alive until the plan is destroyed. Collective over every communicator: it
 * checks that the ranks agree on the number and sizes of the groups
 * (GCLIP_STATUS_MISMATCH on every rank otherwise). Allocates; may block. */
GCLIP_DIST_API gclip_status gclip_dist_plan_create_mpi(gclip_dist_plan **plan,
                                                       const gclip_dist_tensor *tensors,
                                                       size_t count, const MPI_Comm *comms,
                                                       size_t num_groups);
#endif

#if defined(NCCL_MAJOR)
/* A CUDA plan on `device` whose partials are gathered with NCCL. Each
 * communicator must be blocking (the default config) and bound to `device`;
 * a nonblocking one is refused (NOT_SUPPORTED) where NCCL says so (its
 * gather answers ncclInProgress), and one that fails during the exchange
 * (INTERNAL_ERROR) is the caller's to abort (ncclCommAbort). The caller
 * keeps them alive until the plan is destroyed. Collective over
 * every communicator as gclip_dist_plan_create_mpi; allocates the gather
 * buffer (16 bytes per rank and group) and synchronizes. One rank per
 * device and per host thread: the step calls enqueue kernels between the
 * collectives, so they cannot sit inside ncclGroupStart/ncclGroupEnd. */
GCLIP_DIST_API gclip_status gclip_dist_plan_create_nccl(gclip_dist_plan **plan,
                                                        const gclip_dist_tensor *tensors,
                                                        size_t count, int device,
                                                        const ncclComm_t *comms,
                                                        size_t num_groups);
#endif

/* A plan with no transport: the caller gathers the partials itself (e.g.
 * torch.distributed's all_gather_into_tensor) between gclip_dist_accumulate
 * and gclip_dist_finalize. `ranks` and `sizes` (host arrays of num_groups)
 * give this rank's rank in each group and each group's size. `device` is
 * GCLIP_DEVICE_CPU or a CUDA ordinal. Nothing is checked across ranks. */
GCLIP_DIST_API gclip_status gclip_dist_plan_create_external(gclip_dist_plan **plan,
                                                            const gclip_dist_tensor *tensors,
                                                            size_t count, int device,
                                                            const int *ranks, const int *sizes,
                                                            size_t num_groups);

/* Release the plan (NULL is a no-op). Waits for its last step. Collective on
 * nothing: the communicators stay the caller's. */
GCLIP_DIST_API gclip_status gclip_dist_plan_destroy(gclip_dist_plan *plan);

/* This rank's rank in group `group` and the group's size. */
GCLIP_DIST_API gclip_status gclip_dist_plan_group(const gclip_dist_plan *plan, size_t group,
                                                  int *rank, int *size);

/* Point the plan's tensors at new data of the same sizes and dtypes, as
 * gclip_plan_rebind: `data` holds `count` pointers in the order of the
 * tensors given at creation. A list that gclip_plan_rebind rejects
 * (alignment, overlap) leaves every pointer as it was. Local (no
 * collective); not capturable; allocates nothing. */
GCLIP_DIST_API gclip_status gclip_dist_plan_rebind(gclip_dist_plan *plan, void *const *data,
                                                   size_t count, gclip_stream stream);

/* CPU plans: OpenMP threads of the local passes (0 = OpenMP's default). */
GCLIP_DIST_API gclip_status gclip_dist_plan_set_num_threads(gclip_dist_plan *plan,
                                                            int num_threads);

/* ---- step calls: no allocation; no host synchronization on CUDA plans ------ */

/* Global-norm clipping across ranks, in place: accumulate, gather, finalize,
 * apply (gclip_clip_grad_norm with the norm of every rank's counted
 * tensors). `options` as gclip_clip_grad_norm; tensor_norms must be NULL
 * (the per-tensor norms are local; ask a core plan for them). MPI plans
 * return, once the step has completed, the status gclip_dist_get_result
 * would give, except NONFINITE (reported by gclip_dist_get_result, as in the
 * core). NCCL plans return once the step is enqueued. Plans without a
 * transport: GCLIP_STATUS_NOT_SUPPORTED (use the phases). */
GCLIP_DIST_API gclip_status gclip_dist_clip_grad_norm(gclip_dist_plan *plan,
                                                      const gclip_norm_options *options,
                                                      gclip_stream stream);

/* The norm, coefficient and factor across ranks, not applied (as
 * gclip_compute_clip_factor): the result slot's `scale` is the factor and
 * `nonfinite` says to skip. gclip_dist_apply_clip_factor applies it. */
GCLIP_DIST_API gclip_status gclip_dist_compute_clip_factor(gclip_dist_plan *plan,
                                                           const gclip_norm_options *options,
                                                           gclip_stream stream);

/* Multiply every tensor of the plan by the pending factor of the result slot
 * (as gclip_apply_clip_factor: once, and nothing under a non-finite norm
 * with SKIP/ERROR or a failed status). Local: no collective. */
GCLIP_DIST_API gclip_status gclip_dist_apply_clip_factor(gclip_dist_plan *plan,
                                                         gclip_stream stream);

/* ---- phases, for a caller that gathers the partials itself ------------------ */

/* Accumulate each group's counted tensors into that group's partial. When
 * the options are rejected or the accumulate fails, the status says why and
 * the partials to send become the plan's poisoned partial, so that the
 * caller still joins its collectives and every rank that shares a group with
 * it sees MISMATCH. */
GCLIP_DIST_API gclip_status gclip_dist_accumulate(gclip_dist_plan *plan,
                                                  const gclip_norm_options *options,
                                                  gclip_stream stream);

/* Address of the partial this rank sends for group `group` (memory of the
 * plan's device; 16 bytes) after gclip_dist_accumulate. For plans without a
 * transport it is a slot of the plan, fixed for its life (a collective
 * captured in a CUDA graph can read it), that holds the poison after a
 * failed accumulate. */
GCLIP_DIST_API gclip_status gclip_dist_plan_send_partial(const gclip_dist_plan *plan,
                                                         size_t group,
                                                         const gclip_partial **partial);

/* Where group `group`'s gathered partials go: `*count` (the group's size)
 * gclip_partial in rank order, in the memory of the plan's device. The
 * groups' ranges are consecutive in one array, group 0 first. */
GCLIP_DIST_API gclip_status gclip_dist_plan_gather_buffer(const gclip_dist_plan *plan,
                                                          size_t group, gclip_partial **partials,
                                                          size_t *count);

/* Fold the gather buffer, group by group and rank by rank, into the result
 * slot (gclip_norm_finalize). Nothing is written to the gradients.
 * INVALID_ARGUMENT before any gclip_dist_accumulate on the plan. When this
 * call or this rank's accumulate failed, the slot says MISMATCH and holds
 * no factor, so gclip_dist_apply_clip_factor writes nothing. */
GCLIP_DIST_API gclip_status gclip_dist_finalize(gclip_dist_plan *plan,
                                                const gclip_norm_options *options,
                                                gclip_stream stream);

/* ---- results ---------------------------------------------------------------- */

/* Wait for the plan's last step and decode its result slot, as
 * gclip_get_result. A MISMATCH names, in gclip_dist_last_error(), the ranks
 * whose partials differ from this rank's. */
GCLIP_DIST_API gclip_status gclip_dist_get_result(gclip_dist_plan *plan, gclip_result *result);

/* The result slot in the memory of the plan's device (the one an optimizer
 * reads `scale` and `nonfinite` from, in stream order). */
GCLIP_DIST_API gclip_status gclip_dist_plan_device_result(const gclip_dist_plan *plan,
                                                          const gclip_device_result **result);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* GCLIP_DIST_H */
