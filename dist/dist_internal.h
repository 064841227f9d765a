/*
 * dist_internal.h - the distributed plan, its device memory and its
 * transport. Not installed.
 *
 * A distributed plan is made of core plans, through the public API only:
 *   apply      every tensor of the rank: finalize and apply run on it, and
 *              its result slot is the plan's result;
 *   counted[g] the tensors that count towards group g's partial on this
 *              rank; its result slot (the local norm) is never the plan's.
 * Memory of the plan's device (host for CPU plans, one cudaMalloc for CUDA
 * plans) holds the gather buffer (one partial per rank of each group, groups
 * consecutive), the poison partial and, for plans without a transport, the
 * send slots the caller's collective reads.
 */
#ifndef GCLIP_DIST_INTERNAL_H
#define GCLIP_DIST_INTERNAL_H

#include "gclip_dist.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gclip_dist_memory gclip_dist_memory;

typedef enum gclip_dist_copy_kind {
    GCLIP_DIST_TO_HOST,   /* plan-device memory to host */
    GCLIP_DIST_TO_DEVICE, /* host to plan-device memory */
    GCLIP_DIST_ON_DEVICE  /* within plan-device memory */
} gclip_dist_copy_kind;
typedef struct gclip_dist_transport gclip_dist_transport;

/* Where the plan's buffers live and how its steps are ordered. */
struct gclip_dist_memory {
    /* allocate the plan's buffers (plan->gather, poison, send) and upload
     * the poison partial */
    gclip_status (*init)(gclip_dist_plan *plan);
    void (*release)(gclip_dist_plan *plan);
    /* order `stream` after the plan's previous step / mark a step's end */
    gclip_status (*begin)(gclip_dist_plan *plan, gclip_stream stream);
    gclip_status (*end)(gclip_dist_plan *plan, gclip_stream stream);
    /* copy `bytes` in stream order; with `sync` set, on a private stream and
     * waited for (setup and results, never a step) */
    gclip_status (*copy)(gclip_dist_plan *plan, void *dst, const void *src, size_t bytes,
                         gclip_dist_copy_kind kind, int sync, gclip_stream stream);
};

extern const gclip_dist_memory gclip_dist_host_memory;
extern const gclip_dist_memory gclip_dist_cuda_memory; /* NOT_SUPPORTED without CUDA */

/* How the partials travel. */
struct gclip_dist_transport {
    const char *name;
    /* gather every group's send partial into the gather buffer */
    gclip_status (*gather)(gclip_dist_plan *plan, gclip_stream stream);
    void (*release)(gclip_dist_plan *plan);
};

struct gclip_dist_plan {
    int device;
    size_t count;                   /* tensors given at creation */
    size_t num_groups;
    gclip_plan *apply;              /* every tensor */
    gclip_plan **counted;           /* [num_groups] */
    size_t *member_first;           /* [num_groups + 1]: group g's counted tensors are */
    size_t *members;                /*   members[member_first[g] .. member_first[g+1]) */
    void **rebind_scratch;          /* [count] pointers handed to a counted plan */
    int *ranks, *sizes;             /* [num_groups] */
    size_t *offsets;                /* [num_groups + 1]: first partial of each group */
    gclip_partial *gather;          /* [offsets[num_groups]], plan-device memory */
    gclip_partial *poison;          /* 1, plan-device memory */
    gclip_partial *send;            /* [num_groups], plan-device memory, external plans */
    gclip_partial poison_value;     /* the same partial, on the host */
    gclip_partial *host_view;       /* [offsets[num_groups]], host: explaining a mismatch */
    int poisoned;                   /* the last accumulate failed: send the poison */
    int withdrawn;                  /* this rank's last step failed: its slot says MISMATCH */
    int accumulated;                /* a gclip_dist_accumulate has been called */
    const gclip_dist_memory *memory;
    void *memory_state;
    const gclip_dist_transport *transport; /* NULL: the caller gathers */
    void *transport_state;
};

/* ---- plan.c ---------------------------------------------------------------- */

/* Build the core plans, the layout and the buffers for `transport` (NULL:
 * the caller gathers). ranks/sizes are copied. On failure everything built
 * so far is released and *out is NULL. */
gclip_status gclip_dist_build(gclip_dist_plan **out, const gclip_dist_tensor *tensors,
                              size_t count, int device, const int *ranks, const int *sizes,
                              size_t num_groups, const gclip_dist_transport *transport);

/* Release what gclip_dist_build made (the transport is released first). */
void gclip_dist_free(gclip_dist_plan *plan);

/* A hash of the group layout (number of groups and their sizes) that every
 * rank must share; always odd, so it never equals GCLIP_DIST_LAYOUT_FAILED,
 * the word a rank whose plan could not be built sends instead. */
uint64_t gclip_dist_layout_hash(const gclip_dist_plan *plan);
#define GCLIP_DIST_LAYOUT_FAILED 0ull

/* The partial this rank sends for group g in the current step: the counted
 * plan's partial, the poison after a failed accumulate, or (external plans)
 * the send slot. */
const gclip_partial *gclip_dist_send_address(const gclip_dist_plan *plan, size_t group);

/* ---- errors.c ----------------------------------------------------------------- */

void gclip_dist_clear_error(void);
/* Record a detail message and return `status`. */
gclip_status gclip_dist_fail(gclip_status status, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* A core call returned `status`: keep its detail, prefixed with `what`. */
gclip_status gclip_dist_core_fail(gclip_status status, const char *what);
/* memory_cuda.c (CUDA builds): the runtime's last error cleared when it is
 * `error` (a cudaError_t), an error of this call that its status reports, so
 * that a caller checking cudaGetLastError after its own launches (PyTorch
 * does) does not meet it; an error the caller left unread, of another code,
 * stays. */
void gclip_dist_forget_cuda_error(int error);

/* ---- transports ----------------------------------------------------------------- */

/* Compare every rank's layout word over one communicator's all-gathered
 * words: MISMATCH naming the first rank that differs or could not build its
 * plan. */
gclip_status gclip_dist_check_layout(const uint64_t *words, int size, int group);

#ifdef __cplusplus
}
#endif

#endif /* GCLIP_DIST_INTERNAL_H */
