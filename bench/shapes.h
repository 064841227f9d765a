/* shapes.h - parameter shape lists of the workloads (shapes.c). */
#ifndef GCLIP_BENCH_SHAPES_H
#define GCLIP_BENCH_SHAPES_H

#include "bench.h"

/* The shapes of workload `name` (malloc'd; free with free()). `huge_elems`
 * sizes one-huge. Returns 0, or -1 for an unknown name or no memory. */
int bench_shapes_for(const char *name, int64_t huge_elems, bench_shape **shapes, size_t *count);
int64_t bench_shape_numel(const bench_shape *s);

#endif
