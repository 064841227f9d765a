#!/usr/bin/env python3
"""plant_host_bugs.py - shows that the CPU suite catches bugs in the host code.

    python3 tests/cpu/plant_host_bugs.py [--jobs N] [--backend] SOURCE_DIR WORK_DIR [MUTANT...]

The kernels have tests/emu/plant_bugs.sh; this is its twin for the C of
host/: the CPU path's update and segment walks, the validation of pointers
and partials, the adaptive state's checks and AGC's creation. It copies the
tracked files of SOURCE_DIR (git ls-files, or every file but build/ where
there is no git) into WORK_DIR/src, configures a CPU-only build of the CPU
suite there (WORK_DIR/build; CMAKE_C_COMPILER_LAUNCHER and the like are
taken from the environment), builds it and checks that each mutant's tests
pass on the unchanged copy. Then, for each mutant, it plants one bug in the
copy, rebuilds and runs the tests named for it, which must FAIL (a crash
counts), and takes the bug out again. The checkout itself is never written.

With --backend, the bugs are those of BACKEND_MUTANTS, planted in the CUDA
backend (host/cuda_backend.c), and the tests are the emulator suite's
programs that run it on the emulated CUDA runtime (tests/emu/cudart_emu.h):
gclip_emu_backend_test and gclip_emu_gpu_tests, built in WORK_DIR/build-emu
(logs in WORK_DIR/logs-backend). They need the CUDA Toolkit's headers, not
a device; without them the build has no such programs, and the run says so
and exits 0.

Exits 0 when every mutant was caught; 1 when one survived or the unchanged
copy failed its tests; 2 when a mutation no longer applies exactly once (a
change to the code it targets: update the pattern here) or the build failed.

Left out, as they cannot be caught by a test: mutations that change no
result (a threshold of a walk's speed, which order two equal-cost paths run
in, and the others docs/robustness.md names), and one that makes a thread
read a factor another thread writes in the same step without a barrier (a
race: its outcome depends on timing).
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

# name, file, exact text, replacement, the tests that must fail
MUTANTS = [
    # the update pass (host/scale_cpu.c, host/cpu_walk.h)
    ("pair_rest_factor", "host/scale_cpu.c",
     "gclip_walk_update(b, GCLIP_F32, both, nb - both, clamp, fb);",
     "gclip_walk_update(b, GCLIP_F32, both, nb - both, clamp, fa);",
     "UpdatePass.*"),
    ("pair_body_factor", "host/scale_cpu.c",
     "gclip_walk_update_one(b, GCLIP_F32, i + j, clamp, fb);",
     "gclip_walk_update_one(b, GCLIP_F32, i + j, clamp, fa);",
     "UpdatePass.*"),
    ("pair_writes_factor_one", "host/scale_cpu.c",
     "*touched = clamp ? clamp_touches(spans[c].dtype, f) : fc != 1.0;", "*touched = 1;",
     "UpdatePass.*"),
    ("run_writes_factor_one", "host/scale_cpu.c",
     "const int touched = clamp ? clamp_touches(spans[c].dtype, f) : fc != 1.0;",
     "const int touched = 1;",
     "ClipGradNorm.FactorOneWritesNothingEvenToReadOnlyMemory"),
    ("half_nan_of_inf_times_zero", "host/scale_cpu.c",
     "if (f != 0.0f && f - f == 0.0f)", "if (f - f == 0.0f)",
     "Dtypes/HalfUpdate.*"),
    ("half_clamp_negative_zero", "host/scale_cpu.c",
     "const int64_t done = signbit(v) ?", "const int64_t done = 0 ?",
     "Dtypes/HalfUpdate.*"),
    ("half_split_past_the_end", "host/scale_cpu.c",
     "*rest = (n - STREAMS * *part) / 16 * 16;",
     "*rest = (n - STREAMS * *part + 15) / 16 * 16;",
     "Dtypes/HalfUpdate.*:UpdatePass.*:ClipGradValue.*"),
    ("apply_without_pending_factor", "host/scale_cpu.c",
     "const float f = gclip_factor_pending(&st->result) ? st->result.scale : 1.0f;",
     "const float f = st->result.scale;",
     "StepContract.*"),
    ("global_factor_one_test", "host/scale_cpu.c",
     "if (!per_tensor && a.global == 1.0f)\n        return;",
     "if (!per_tensor && a.global >= 0.5f)\n        return;",
     "ClipGradNorm.*"),
    ("large_chunk_last_element", "host/cpu_walk.h",
     "for (int64_t k = begin + STREAMS * part; k < begin + n; k++)",
     "for (int64_t k = begin + STREAMS * part; k < begin + n - 1; k++)",
     "ChunkWalk.*"),
    ("small_chunk_last_element", "host/cpu_walk.h",
     "        for (; i < begin + n; i++)\n            gclip_walk_update_one",
     "        for (; i < begin + n - 1; i++)\n            gclip_walk_update_one",
     "Rebind.*:ClipGradNorm.*"),
    ("f64_clamp_to_float_bound", "host/cpu_walk.h",
     "x[k] = clamp ? gclip_clamp_f64(x[k], f) : x[k] * f;",
     "x[k] = clamp ? gclip_clamp_f64(x[k], (float)f) : x[k] * f;",
     "ClipGradValue.*"),
    ("clamp_at_huge_bound_skipped", "host/clamp_cpu.c",
     "if (clip_value != INFINITY)", "if (clip_value < 1e30)",
     "ClipGradValue.*"),
    # the norm's read pass (host/cpu_walk.h, compiled into norm_cpu*.c)
    ("unsafe_groups_unnoticed", "host/cpu_walk.h",
     "*note = (gclip_v8u)_mm256_max_epu32((__m256i)*note, (__m256i)e);",
     "*note = (gclip_v8u)_mm256_min_epu32((__m256i)*note, (__m256i)e);",
     "ReadPass.*"),
    ("unsafe_limit_one_low", "host/cpu_walk.h",
     "const __m256i limit = _mm256_set1_epi32((int)(0x7f800000u - safe_lowest(kind)));",
     "const __m256i limit = _mm256_set1_epi32((int)(0x7f800000u - safe_lowest(kind) + 0x00800000u));",
     "ReadPass.*"),
    ("partial_batch_threads_past_the_rest", "host/cpu_walk.h",
     "    const int words = n / 8 * 4;",
     "    const int words = (n + 7) / 8 * 4;",
     "ReadPass.*"),
    ("max_tail_last_element", "host/cpu_walk.h",
     "    for (; i < n; i++)\n        lane[0] = gclip_max_bits(lane[0]",
     "    for (; i < n - 1; i++)\n        lane[0] = gclip_max_bits(lane[0]",
     "NormManyTensors.*:ReadPass.*"),
    ("max_lanes_last_dropped", "host/cpu_walk.h",
     "    for (int j = 1; j < 8; j++)\n        lane[0] = lane[j] > lane[0]",
     "    for (int j = 1; j < 7; j++)\n        lane[0] = lane[j] > lane[0]",
     "NormManyTensors.*:ReadPass.*"),
    ("tiny_run_past_its_dtype", "host/cpu_walk.h",
     "tiny_row(spans[c]) && spans[c].dtype == dtype);",
     "tiny_row(spans[c]));",
     "ReadPass.RunsOfTinyTensorsAreTheBlockTreeOfTheirGroups"),
    ("tiny_run_unsafe_chunk_kept", "host/cpu_walk.h",
     "            partials[c] = general_partial(plan, c, kind, 0.0f);",
     "            (void)0;",
     "ReadPass.RunsOfTinyTensorsAreTheBlockTreeOfTheirGroups"),
    # the per-tensor clip segment by segment (host/tensor_clip_cpu.c)
    ("segment_continued_past_part", "host/tensor_clip_cpu.c",
     "        if (end > c1)\n            end = c1;\n        const float f",
     "        const float f",
     "TensorClipBlocked.*"),
    ("segment_factor_below_one_only", "host/tensor_clip_cpu.c",
     "if (f != 1.0f)\n            gclip_update_run_cpu",
     "if (f < 1.0f)\n            gclip_update_run_cpu",
     "TensorClipBlocked.*"),
    ("segments_under_skip", "host/tensor_clip_cpu.c",
     "np->policy == GCLIP_NONFINITE_PROPAGATE &&",
     "np->policy != GCLIP_NONFINITE_ERROR &&",
     "TensorClipBlocked.*"),
    ("tensor_acc_of_one_chunk", "host/tensor_clip_cpu.c",
     "return gclip_term_combine(GCLIP_TERM_ZERO, partials[a], kind);",
     "return partials[a] * 1.0000001;",
     "Fold.*:TensorClipBlocked.*"),
    # the fold's non-finite count (host/finalize_cpu.c)
    ("nonfinite_at_the_boundary", "host/finalize_cpu.c",
     "f->nonfinite[i] += !(acc < f->first_nonfinite);",
     "f->nonfinite[i] += !(acc <= f->first_nonfinite);",
     "Fold.*"),
    ("first_nonfinite_below", "host/finalize_cpu.c",
     "    memcpy(&a, &hi, sizeof a);\n    return a;",
     "    memcpy(&a, &lo, sizeof a);\n    return a;",
     "Fold.*"),
    # pointers, partials and rebinds (host/validate.c, host/steps.c, host/plan.c)
    ("outside_touching_before", "host/validate.c",
     "if (bytes > 0 && lo < plan->nonempty && start_of(&t[order[lo]]) < b)",
     "if (bytes > 0 && lo < plan->nonempty && start_of(&t[order[lo]]) <= b)",
     "Validation.*"),
    ("outside_touching_after", "host/validate.c",
     "if (end_of(&t[order[mid]]) > a)", "if (end_of(&t[order[mid]]) >= a)",
     "Validation.*"),
    ("scalar_pointer_at_slot_start", "host/steps.c",
     "if (ptrs[k] && a + sizeof(float) > slot && a < end)",
     "if (ptrs[k] && a > slot && a < end)",
     "Validation.*"),
    ("tensor_norms_ending_in_slot", "host/steps.c",
     "if (a + bytes > slot && a < end)", "if (a + bytes > slot + 4 && a < end)",
     "Validation.*"),
    ("combine_kind_bits", "host/steps.c",
     "const int32_t kind = (int32_t)(a->fingerprint & 3u);",
     "const int32_t kind = (int32_t)(a->fingerprint & 1u);",
     "StepContract.*"),
    ("negative_given_norm", "host/steps.c",
     "if (!total_norm_ptr && total_norm < 0.0f)",
     "if (!total_norm_ptr && total_norm < -1.0f)",
     "Validation.*"),
    ("partials_with_count_zero", "host/steps.c",
     "if (count == 0 && partials)\n", "if (0 && partials)\n",
     "FinalizeOwnPartial.*"),
    ("finalize_before_accumulate", "host/steps.c",
     "if (count == 0 && !plan->accumulated)", "if (0)",
     "FinalizeOwnPartial.*"),
    ("failed_rebind_order_kept", "host/plan.c",
     "        if (!same_order)\n            (void)gclip_check_overlap",
     "        if (0)\n            (void)gclip_check_overlap",
     "Validation.*"),
    ("rebind_without_overlap_check", "host/plan.c",
     "gclip_status s = same_order ? GCLIP_STATUS_SUCCESS",
     "gclip_status s = 1 ? GCLIP_STATUS_SUCCESS",
     "Validation.*"),
    # the adaptive state and options (host/adapt.c)
    ("ring_head_past_the_ring", "host/adapt.c",
     "(h > 0 && sc->head >= h)", "(h > 0 && sc->head > h)",
     "AdaptiveValidation.*"),
    ("ring_count_past_the_ring", "host/adapt.c",
     "if (sc->filled > h || (h > 0", "if (sc->filled > h + 1 || (h > 0",
     "AdaptiveValidation.*"),
    ("zclip_warmup_count", "host/adapt.c",
     "if (ad->cfg.method == GCLIP_ADAPTIVE_ZCLIP && sc->filled != warm)",
     "if (ad->cfg.method == GCLIP_ADAPTIVE_ZCLIP && sc->filled > warm)",
     "AdaptiveValidation.*"),
    ("import_one_byte_short", "host/adapt.c",
     "if (size < sizeof h + h.state_bytes)", "if (size < sizeof h + h.state_bytes - 1)",
     "AdaptiveValidation.*"),
    ("export_one_byte_short", "host/adapt.c",
     "    if (size < need)\n", "    if (size + 1 < need)\n",
     "AdaptiveValidation.*"),
    ("zclip_alpha_one", "host/adapt.c",
     "if (!(o->zclip_alpha > 0.0 && o->zclip_alpha < 1.0))",
     "if (!(o->zclip_alpha > 0.0 && o->zclip_alpha <= 1.0))",
     "AdaptiveValidation.*"),
    ("autoclip_quantile_one", "host/adapt.c",
     "if (!(o->autoclip_quantile >= 0.0 && o->autoclip_quantile <= 1.0))",
     "if (!(o->autoclip_quantile >= 0.0 && o->autoclip_quantile < 1.0))",
     "AdaptiveValidation.*"),
    ("adagc_beta_one", "host/adapt.c",
     "if (!(o->adagc_beta >= 0.0 && o->adagc_beta < 1.0))",
     "if (!(o->adagc_beta >= 0.0 && o->adagc_beta <= 1.0))",
     "AdaptiveValidation.*"),
    ("spike_min_values_one", "host/adapt.c",
     "if (o->spike_min_values < 2 || o->spike_min_values > o->spike_window)",
     "if (o->spike_min_values < 1 || o->spike_min_values > o->spike_window)",
     "AdaptiveValidation.*"),
    ("history_past_the_limit", "host/adapt.c",
     "if (n < min || n > GCLIP_ADAPT_MAX_HISTORY)",
     "if (n < min || n > GCLIP_ADAPT_MAX_HISTORY + 1)",
     "AdaptiveValidation.*"),
    # AGC (host/agc.c, host/agc_cpu.c)
    ("agc_units_not_dividing", "host/agc.c",
     "if (g->numel > 0 ? (u < 1 || g->numel % u != 0) : u < 0)",
     "if (g->numel > 0 ? (u < 1) : u < 0)",
     "Agc.*"),
    ("agc_param_dtype", "host/agc.c",
     "if (params[i].numel != g->numel || (int32_t)params[i].dtype != g->dtype)",
     "if (params[i].numel != g->numel)",
     "Agc.*"),
    ("agc_param_overlap_reach", "host/agc.c",
     "if (r[k].end > reach[r[k].param]) {", "if (r[k].end > reach[r[k].param] && 0) {",
     "Agc.*"),
    ("agc_last_piece_short", "host/agc.c",
     "pc.count = len - off < GCLIP_AGC_PIECE ? len - off : GCLIP_AGC_PIECE;",
     "pc.count = len - off <= GCLIP_AGC_PIECE ? len - off - (len - off > 1) : GCLIP_AGC_PIECE;",
     "Agc.*"),
    ("agc_eps_zero", "host/agc.c",
     "if (!(o->eps >= 0.0) || !isfinite(o->eps))", "if (!(o->eps > 0.0) || !isfinite(o->eps))",
     "Agc.*"),
    ("agc_piece_limit", "host/agc.c",
     "if (total > INT32_MAX)", "if (total > UINT32_MAX)",
     "Agc.*"),
    ("agc_lane_tail", "host/agc_cpu.c",
     "for (int j = 0; k + j < n; j++)", "for (int j = 0; k + j < n - 1; j++)",
     "Agc.*"),
    ("agc_unit_scaled_early", "host/agc_cpu.c",
     "if (pc->pieces == 1)", "if (pc->pieces >= 1)",
     "Agc.*"),
    ("agc_f64_factor_as_float", "host/agc_cpu.c",
     "x[i] = gclip_agc_scaled64(x[i], f);", "x[i] = gclip_agc_scaled64(x[i], (float)f);",
     "Agc.*"),
    # a bound of +Inf where a chunk compares, float pointers' alignment, the
    # tensor count (host/scale_cpu.c, host/steps.c, host/plan.c)
    ("clamp_past_float_walks_halves", "host/scale_cpu.c",
     "return dtype == GCLIP_F64 ? f != INFINITY : (float)f != INFINITY;",
     "return dtype == GCLIP_F64 ? f != INFINITY : f != INFINITY;",
     "ClipGradValue.*"),
    ("step_floats_unaligned", "host/steps.c",
     "if ((uintptr_t)floats[k] % _Alignof(float))", "if ((uintptr_t)floats[k] % 1)",
     "Validation.*"),
    ("total_norm_ptr_unaligned", "host/steps.c",
     "if ((uintptr_t)total_norm_ptr % _Alignof(float))", "if ((uintptr_t)total_norm_ptr % 1)",
     "Validation.*"),
    ("tensor_count_limit", "host/plan.c",
     "if (count > INT32_MAX)", "if (count > UINT32_MAX)",
     "Validation.*"),
]

# The CUDA backend's bugs: name, file, exact text, replacement, and the
# tests that must fail as "BACKEND_FILTER|GPU_FILTER" (gtest filters of
# gclip_emu_backend_test and gclip_emu_gpu_tests; either may be empty).
BACKEND_MUTANTS = [
    ("cuda_error_left_behind", "host/cuda_backend.c",
     "    forget_error(e);\n    gclip_status s = e ==", "    gclip_status s = e ==",
     "EmuBackend.*|"),
    ("block_not_freed", "host/cuda_backend.c",
     "    if (s->block)\n        forget_error(cudaFree(s->block));", "    (void)0;",
     "EmuBackend.*|"),
    ("event_not_destroyed", "host/cuda_backend.c",
     "    if (s->done)\n        forget_error(cudaEventDestroy(s->done));", "    (void)0;",
     "EmuBackend.*|"),
    ("slot_not_marked_failed", "host/cuda_backend.c",
     "                if (slot_written)\n                    mark_failed(s, stream);",
     "                (void)0;",
     "EmuBackend.*|"),
    ("step_keeps_plans_device", "host/cuda_backend.c",
     "        }\n    }\n    leave_device(&g);\n    return st;\n}\n\n/* ---- results",
     "        }\n    }\n    return st;\n}\n\n/* ---- results",
     "EmuBackend.*|GpuStreamTest.CallerCurrentDeviceIsKept"),
    ("upload_not_waited_for", "host/cuda_backend.c",
     "    CUDA_TRY(cudaStreamSynchronize(cs));\ndone:", "done:",
     "EmuBackend.*|"),
    ("stream_device_unchecked", "host/cuda_backend.c",
     "    if (dev != device)\n        return gclip_fail(",
     "    if (dev != device && 0)\n        return gclip_fail(",
     "EmuBackend.*|"),
    ("clip_with_norm_launches_norm", "host/cuda_backend.c",
     "    case GCLIP_OP_CLIP_WITH_NORM:\n    case GCLIP_OP_APPLY:", "    case GCLIP_OP_APPLY:",
     "EmuBackend.*|GpuGraphTest.*"),
    ("captured_wait_not_external", "host/cuda_backend.c",
     "captured ? cudaEventWaitExternal : cudaEventWaitDefault", "cudaEventWaitDefault",
     "|GpuGraphTest.*"),
    ("captured_record_not_external", "host/cuda_backend.c",
     "captured ? cudaEventRecordExternal\n                                                      : "
     "cudaEventRecordDefault",
     "cudaEventRecordDefault",
     "|GpuGraphTest.*"),
    ("captured_rebind_to_new_pointers", "host/cuda_backend.c",
     "        if (!pointers_changed(plan))\n            goto done;", "        goto done;",
     "|GpuGraphTest.*"),
    ("launch_error_left_behind", "host/cuda_backend.c",
     "            if (err != cudaSuccess) {\n                forget_error(err);",
     "            if (err != cudaSuccess) {",
     "EmuBackend.*|"),
    ("no_event_after_failed_launch", "host/cuda_backend.c",
     "        if (queued > 0) {", "        if (queued > 0 && st == GCLIP_STATUS_SUCCESS) {",
     "EmuBackend.*|"),
    ("result_read_without_event", "host/cuda_backend.c",
     "    CUDA_TRY(cudaEventSynchronize(s->done));\n    /* a private", "    /* a private",
     "EmuBackend.*|"),
    ("failed_creation_keeps_device", "host/cuda_backend.c",
     "        free_state(s);\n    leave_device(&g);",
     "        free_state(s);\n    if (st == GCLIP_STATUS_SUCCESS)\n        leave_device(&g);",
     "EmuBackend.*|"),
    ("allocation_failure_as_cuda_error", "host/cuda_backend.c",
     "    gclip_status s = e == cudaErrorMemoryAllocation ? GCLIP_STATUS_OUT_OF_MEMORY\n"
     "                                                    : GCLIP_STATUS_CUDA_ERROR;",
     "    gclip_status s = GCLIP_STATUS_CUDA_ERROR;",
     "EmuBackend.*|"),
    ("failed_rebind_keeps_new_table", "host/cuda_backend.c",
     "        if (st != GCLIP_STATUS_SUCCESS)\n            put_old_table_back(plan, stream);",
     "        (void)0;",
     "EmuBackend.*|"),
    ("mem_alloc_keeps_device", "host/cuda_backend.c",
     "    CUDA_TRY(cudaMalloc(ptr, bytes));\ndone:\n    leave_device(&g);",
     "    CUDA_TRY(cudaMalloc(ptr, bytes));\n    return st;\ndone:\n    leave_device(&g);",
     "EmuBackend.*|"),
    ("agc_failure_marks_previous_slot", "host/cuda_backend.c",
     "const int slot_written = k > 0 && step->op != GCLIP_OP_AGC;",
     "const int slot_written = k > 0;",
     "EmuBackend.*|"),
    ("failed_record_replaces_message", "host/cuda_backend.c",
     "mark_done(s, stream, captured, st != GCLIP_STATUS_SUCCESS);",
     "mark_done(s, stream, captured, 0);",
     "EmuBackend.*|"),
]


def run(cmd, log, cwd=None, timeout=None):
    with open(log, "w") as f:
        try:
            return subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124


def copy_tree(src, dst):
    try:
        files = subprocess.run(["git", "-C", src, "ls-files", "-z"], check=True,
                               capture_output=True).stdout.decode().split("\0")
        files = [f for f in files if f]
    except (subprocess.CalledProcessError, FileNotFoundError):
        files = []
        for root, dirs, names in os.walk(src):
            dirs[:] = [d for d in dirs if d not in ("build", ".git")]
            files += [os.path.relpath(os.path.join(root, n), src) for n in names]
    for f in files:
        s, d = os.path.join(src, f), os.path.join(dst, f)
        if not os.path.isfile(s):
            continue
        os.makedirs(os.path.dirname(d), exist_ok=True)
        # unchanged files keep their times, so a second run rebuilds nothing
        if not (os.path.exists(d) and open(s, "rb").read() == open(d, "rb").read()):
            shutil.copy2(s, d)
    # a file an earlier run copied that the sources no longer have goes
    keep = {os.path.normpath(f) for f in files}
    for root, _dirs, names in os.walk(dst):
        for n in names:
            rel = os.path.normpath(os.path.relpath(os.path.join(root, n), dst))
            if rel not in keep:
                os.remove(os.path.join(root, n))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source")
    ap.add_argument("work")
    ap.add_argument("mutants", nargs="*")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--backend", action="store_true",
                    help="the CUDA backend's bugs, on the emulated runtime")
    a = ap.parse_args()
    src, work = os.path.abspath(a.source), os.path.abspath(a.work)
    tree, build, logs = (os.path.join(work, d) for d in
                         ("src", "build-emu" if a.backend else "build",
                          "logs-backend" if a.backend else "logs"))
    for d in (tree, logs):
        os.makedirs(d, exist_ok=True)
    pool = BACKEND_MUTANTS if a.backend else MUTANTS
    chosen = [m for m in pool if not a.mutants or m[0] in a.mutants]
    unknown = set(a.mutants) - {m[0] for m in pool}
    if unknown:
        print("plant_host_bugs: unknown mutants: " + ", ".join(sorted(unknown)), file=sys.stderr)
        return 2
    copy_tree(src, tree)
    # every pattern must apply exactly once before anything is built
    for name, path, old, _new, _tests in chosen:
        n = open(os.path.join(tree, path)).read().count(old)
        if n != 1:
            print(f"plant_host_bugs: {name}: its text occurs {n} times in {path}; update "
                  "the pattern", file=sys.stderr)
            return 2
    t0 = time.time()
    configure = ["cmake", "-S", tree, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                 "-DGCLIP_ENABLE_CUDA=OFF", "-DGCLIP_BUILD_BENCH=OFF",
                 "-DGCLIP_BUILD_EXAMPLES=OFF"]
    if a.backend:
        programs = [os.path.join(build, "tests", "emu", p)
                    for p in ("gclip_emu_backend_test", "gclip_emu_gpu_tests")]
        configure += ["-DGCLIP_BUILD_EMU_TESTS=ON", "-DGCLIP_BUILD_EMU_CUDA=ON"]
    else:
        programs = [os.path.join(build, "tests", "cpu", "gclip_cpu_tests")]
    target = ["cmake", "--build", build, "-j", str(a.jobs), "--target"] + \
        [os.path.basename(p) for p in programs]
    if run(configure, os.path.join(logs, "configure.log")):
        print(f"plant_host_bugs: the unchanged copy did not configure (logs in {logs})",
              file=sys.stderr)
        return 2
    if a.backend and not os.path.isdir(os.path.join(build, "tests", "emu", "CMakeFiles",
                                                    "gclip_emu_backend_test.dir")):
        print("plant_host_bugs: skipped: no CUDA Toolkit headers, so the build has no "
              "emulated CUDA backend to plant bugs in")
        return 0
    if run(target, os.path.join(logs, "build.log")):
        print(f"plant_host_bugs: the unchanged copy did not build (logs in {logs})",
              file=sys.stderr)
        return 2

    def run_tests(tests, log, extra, timeout):
        """The programs on their filters ("A|B" with --backend); nonzero if
        any failed."""
        rc = 0
        for k, (program, f) in enumerate(zip(programs, tests.split("|"))):
            if f:
                rc = rc or run([program, "--gtest_filter=" + f, "--gtest_brief=1"] + extra,
                               f"{log}.{k}.log", timeout=timeout)
        return rc

    unchanged = "|".join(":".join(sorted({f for m in chosen
                                          for f in m[4].split("|")[k:k + 1] if f}))
                         for k in range(len(programs)))
    if run_tests(unchanged, os.path.join(logs, "unchanged"), [], 900):
        print("plant_host_bugs: the unchanged copy fails its tests "
              f"(logs in {logs})", file=sys.stderr)
        return 1
    print(f"unchanged copy built and passed in {time.time() - t0:.0f} s")
    survived = []
    for name, path, old, new, tests in chosen:
        t1 = time.time()
        target_file = os.path.join(tree, path)
        original = open(target_file).read()
        try:
            open(target_file, "w").write(original.replace(old, new))
            if run(target, os.path.join(logs, name + ".build.log")):
                print(f"plant_host_bugs: {name} did not build "
                      f"({os.path.join(logs, name + '.build.log')})", file=sys.stderr)
                return 2
            rc = run_tests(tests, os.path.join(logs, name), ["--gtest_fail_fast"], 600)
        finally:
            open(target_file, "w").write(original)
        verdict = "caught" if rc != 0 else "SURVIVED"
        if rc == 0:
            survived.append(name)
        print(f"{name:32s} {verdict:8s} ({tests}, {time.time() - t1:.0f} s)")
    # the copy as it was, built, for the next run
    run(target, os.path.join(logs, "build.log"))
    print(f"{len(chosen) - len(survived)} of {len(chosen)} planted bugs caught "
          f"in {time.time() - t0:.0f} s")
    if survived:
        print("survived: " + ", ".join(survived), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
