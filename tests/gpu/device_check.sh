#!/usr/bin/env bash
# device_check.sh - everything gclip checks on a CUDA device, in one command
# that stays under 8 minutes on one H200 (docs/device-check.md):
#
#   1. configure and build a Release build for this GPU's architecture only
#      (CMAKE_CUDA_ARCHITECTURES=native) with the GPU suite and gclip-bench,
#      gclip a shared library (the one the Python package loads);
#   2. ctest -L gpu: the whole GPU suite (tests/gpu), JUnit XML kept;
#   3. compute-sanitizer memcheck (leak check on), racecheck and synccheck
#      on the suite's every-op cases (GpuSanitizerTest.*: a small plan, and
#      many small tensors for the warps' walks of small chunks);
#   4. the CUDA bench: gclip-bench --cuda-steps (us per step with no host
#      sync, eager and graph, against a device-to-device copy; launches per
#      step) on gpt2-124m, many-small (10,000 x 1,000) and tiny-100k;
#   5. a profile, for information (it never fails the check): Nsight
#      Compute's view of one norm kernel of tiny-100k and of many-small and
#      of one clipping scale kernel of tiny-100k (speed of light, memory,
#      occupancy, launch, warp states), the two workloads furthest from the
#      copy's speed;
#   6. the Python package's pytest suite with the device, the package from
#      python/ loading the build's libgclip.so (GCLIP_LIBRARY);
#   7. the peer on the same device: PyTorch's foreach clipping timed as the
#      CUDA bench times gclip (bench/torch_cuda_steps.py).
#
# Stages 6 and 7 need a python3 with PyTorch that sees the device
# (GCLIP_DEVICE_PYTHON, default python3), stage 6 pytest too; without them
# they are skipped, which does not fail the check (the summary says so);
# GCLIP_DEVICE_CHECK_PYTHON=0 leaves them out. Stage 7 measures the peer
# and informs: it never fails the check. GCLIP_GTEST_SRC=DIR (GoogleTest's sources) builds GoogleTest into
# the build folder first (stage gtest); without it, where GoogleTest is not
# installed, .devdeps/googletest or /usr/src/googletest is used if present.
# If the configure still fails, it is run again without the tests (stage
# configure2), so that the build, bench, python, peers and profile stages
# still run.
#
# Every stage has its own time limit and the whole has one; a stage that
# fails or runs out of time does not stop the next ones (those that need the
# build are skipped when it failed). Logs, results and summary.txt (status
# and wall time per stage, rewritten when a stage starts and ends) go to
# OUT_DIR, which is emptied first if it holds an earlier check's results
# (any other non-empty folder is refused). Killed from outside (TERM, INT,
# HUP), the check stops the running stage, records it as KILLED, and writes
# the summary and the tarball before it exits.
#
#   bash tests/gpu/device_check.sh [OUT_DIR]
#     OUT_DIR  default: build/device-check
#     GCLIP_DEVICE_CHECK_REV  the commit checked, for the summary where the
#       sources have no .git (a copy of the work tree)
#     GCLIP_DEVICE_BUILD_DIR  build folder (default build/device)
#     GCLIP_DEVICE_CHECK_TGZ  a tarball of OUT_DIR, refreshed after every
#       stage, with a copy of summary.txt beside it (default:
#       $OUT/device-check.tgz when $OUT is set; empty: none). It must lie
#       outside OUT_DIR.
#   For a dry run of the stages on a machine without a device (the GPU
#   stage then fails: its tests skip), GCLIP_DEVICE_CHECK_ASSUME_DEVICE=1 and
#   GCLIP_DEVICE_CUDA_ARCH=90 (native needs a device to detect).
#
# Exit status: 0 every stage passed; 1 a stage failed, timed out or was
# skipped (but for the Python stages and the profile, above); 2 a tool the
# check needs (cmake, nvcc) is missing, or OUT_DIR holds something else;
# 77 no CUDA device on this machine (nothing is built or run; this takes a
# second); 143 killed from outside.
set -u -o pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=${1:-build/device-check}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
# an earlier check's results go (a stage this run skips must not show the
# last run's files): a folder this script marked as its own is emptied, any
# other folder that is not empty is refused
marker=.gclip-device-check
if [ -n "$(ls -A "$out")" ]; then
    if [ -f "$out/$marker" ]; then
        find "$out" -mindepth 1 -delete ||
            { echo "device_check: could not empty $out, an earlier check's results" >&2; exit 2; }
    else
        echo "device_check: $out is not empty and is not an earlier check's OUT_DIR; give an empty or new one" >&2
        exit 2
    fi
fi
echo "OUT_DIR of tests/gpu/device_check.sh: emptied by the next check given it" >"$out/$marker"
build=${GCLIP_DEVICE_BUILD_DIR:-build/device}
jobs=$(nproc 2>/dev/null || echo 4)
t_start=$(date +%s)
total_budget=465                 # seconds, everything included (one H200: ~410)
deadline=$((t_start + total_budget))
summary=$out/summary.txt
filter='GpuSanitizerTest.*'      # the cases the sanitizers run
test_timeout=75                  # seconds, each GPU test (GCLIP_GPU_TEST_TIMEOUT)
: >"$out/stages.tsv"

tgz=${GCLIP_DEVICE_CHECK_TGZ-${OUT:+$OUT/device-check.tgz}}
if [ -n "$tgz" ]; then
    case $tgz in /*) ;; *) tgz=$root/$tgz ;; esac
    mkdir -p "$(dirname "$tgz")" && tgz=$(cd "$(dirname "$tgz")" && pwd)/$(basename "$tgz")
    case $tgz/ in
    "$out"/*)
        echo "device_check: $tgz lies inside $out; no tarball kept" >&2
        tgz= ;;
    esac
fi

say() { echo "[$(($(date +%s) - t_start))s] $*"; }
time_left() { echo $((deadline - $(date +%s))); }
# probe_limit: 20 s, or less where less is left
probe_limit() { local t; t=$(time_left); echo $((t < 20 ? t : 20)); }

header() {
    local rev
    if [ -n "${GCLIP_DEVICE_CHECK_REV:-}" ]; then
        rev="$GCLIP_DEVICE_CHECK_REV (GCLIP_DEVICE_CHECK_REV)"
    elif rev=$(git -C "$root" rev-parse -q --verify --short HEAD 2>/dev/null); then
        git -C "$root" diff --quiet HEAD 2>/dev/null || rev="$rev (with uncommitted changes)"
    else
        rev="unknown (no .git; GCLIP_DEVICE_CHECK_REV names it)"
    fi
    {
        echo "gclip device check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $rev"
        echo "host: $(hostname), $jobs CPUs"
        echo "device: ${gpu_desc:-none}${compute_mode:+, compute mode $compute_mode}"
        echo "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo missing)," \
             "cmake: $(cmake --version 2>/dev/null | head -1 | awk '{print $3}' || echo missing)"
        echo
    } >"$summary"
    head_text=$(cat "$summary")
}

# pack: OUT_DIR as the tarball GCLIP_DEVICE_CHECK_TGZ, summary.txt beside it
pack() {
    [ -n "$tgz" ] || return 0
    timeout 10 tar -czf "$tgz.part" -C "$(dirname "$out")" "$(basename "$out")" 2>/dev/null &&
        mv -f "$tgz.part" "$tgz"
    cp "$summary" "$(dirname "$tgz")/summary.txt" 2>/dev/null
    return 0
}

# write_summary [final]: the header, one line per stage so far and, when
# final, the verdict and the bench tables
write_summary() {
    local name status secs limit log note verdict=RUNNING
    [ "${1:-}" = final ] && verdict=$([ $failed = 0 ] && echo PASS || echo FAIL)
    {
        printf '%s\n\n' "$head_text"
        printf '%-10s %-8s %8s %8s  %s\n' stage status seconds limit "log / note"
        while IFS=$'\t' read -r name status secs limit log note; do
            printf '%-10s %-8s %8s %8s  %s%s\n' "$name" "$status" "$secs" "$limit" "$log" \
                   "${note:+  ($note)}"
        done <"$out/stages.tsv"
        [ "$verdict" = RUNNING ] && [ -n "${running:-}" ] &&
            printf '%-10s %-8s %8s %8s  %s\n' "$running" RUNNING "$(($(date +%s) - running_since))" \
                   "$stage_limit" "$running_log"
        printf '%-10s %-8s %8s %8s\n' total "$verdict" "$(($(date +%s) - t_start))" "$total_budget"
        if [ "$verdict" != RUNNING ] && [ -f "$out/bench-cuda.csv" ]; then
            echo
            echo "CUDA bench (bench-cuda.csv):"
            grep -E '^ *(workload|gpt2|many|tiny)' "$out/bench.log" || true
        fi
        if [ "$verdict" != RUNNING ] && [ -f "$out/torch-cuda.csv" ]; then
            echo
            echo "PyTorch on the same device (torch-cuda.csv):"
            grep -E '^ *(workload|gpt2|many|tiny)' "$out/peers.log" || true
        fi
    } >"$summary"
}

# ---- no device, no tools: say so and stop at once ------------------------------
gpu_desc=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
           grep -m1 ',')
if [ -z "$gpu_desc" ] && [ "${GCLIP_DEVICE_CHECK_ASSUME_DEVICE:-0}" = 1 ]; then
    gpu_desc="none detected; a device assumed (GCLIP_DEVICE_CHECK_ASSUME_DEVICE=1: a dry run)"
elif [ -z "$gpu_desc" ]; then
    if ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
        gpu_desc="a device node exists (/dev/nvidia*), but nvidia-smi gave no description"
    else
        header
        echo "NO DEVICE: no CUDA device on this machine (nvidia-smi lists none, no /dev/nvidia*);" \
             "nothing was built or run" >>"$summary"
        echo "device_check: no CUDA device on this machine (nvidia-smi lists none and there is" \
             "no /dev/nvidia*): nothing built or run; exit 77. Summary: $summary" >&2
        pack
        exit 77
    fi
fi
missing=
pyexe=${GCLIP_DEVICE_PYTHON:-python3}
# the CUDA toolkit's usual folder, when its bin is not on PATH
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    PATH=/usr/local/cuda/bin:$PATH
fi
for tool in cmake ctest nvcc timeout; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    header
    echo "MISSING TOOLS:$missing; nothing was built or run" >>"$summary"
    echo "device_check: missing$missing (is the CUDA toolkit's bin folder on PATH?); exit 2" >&2
    pack
    exit 2
fi
timeout 20 nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
# a device in exclusive-process mode takes one process at a time: the GPU
# suite then runs its tests one after another
compute_mode=$(timeout 20 nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2>/dev/null | head -1)
sanitizer=$(command -v compute-sanitizer ||
            ls "$(dirname "$(command -v nvcc)")/compute-sanitizer" \
               /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
header

# ---- stages ------------------------------------------------------------------------
failed=0

# record NAME STATUS SECONDS LIMIT LOG NOTE
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$out/stages.tsv"
    [ "$2" = PASS ] || failed=1
    say "$1: $2 (${3}s of ${4}s)${6:+, $6}; log $5"
    write_summary
    pack
}

# stage NAME BUDGET LOG COMMAND...: runs COMMAND under the smaller of its
# budget and the time left; sets stage_status (PASS, FAIL, TIMEOUT, SKIP).
# The command runs in the background, waited for, so that a signal from
# outside reaches the trap below at once, not when the stage ends.
running= running_pid= running_since=0 running_log=
stage() {
    local name=$1 budget=$2 log=$3 left limit rc
    shift 3
    left=$(time_left)
    limit=$((budget < left ? budget : left))
    stage_secs=0
    stage_limit=$limit
    if [ "$limit" -lt 10 ]; then
        stage_status=SKIP
        stage_note="no time left of the ${total_budget}s"
        return
    fi
    say "$name (limit ${limit}s) ..."
    running=$name running_since=$(date +%s) running_log=$log
    write_summary
    pack
    timeout --kill-after=3 "$limit" "$@" >"$out/$log" 2>&1 &
    running_pid=$!
    wait "$running_pid"
    rc=$?
    running= running_pid=
    stage_secs=$(($(date +%s) - running_since))
    stage_note=
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        stage_status=TIMEOUT
    elif [ $rc -ne 0 ]; then
        stage_status=FAIL
        stage_note="exit status $rc"
    else
        stage_status=PASS
    fi
}

finish() { record "$1" "$stage_status" "$stage_secs" "$stage_limit" "$2" "$stage_note"; }

# Killed from outside: timeout runs its command in a process group of its
# own, which a signal to this script does not reach; stop that group, keep
# what the stage wrote, and say so.
on_signal() {
    trap - TERM INT HUP
    if [ -n "$running_pid" ]; then
        kill -TERM -- "-$running_pid" 2>/dev/null || kill -TERM "$running_pid" 2>/dev/null
        sleep 1
        kill -KILL -- "-$running_pid" 2>/dev/null
        stage_status=KILLED stage_secs=$(($(date +%s) - running_since))
        stage_note="the check was stopped from outside during this stage"
        local name=$running log=$running_log
        running=
        finish "$name" "$log"
    fi
    failed=1
    write_summary final
    pack
    cat "$summary"
    exit 143
}
trap on_signal TERM INT HUP

# finish_info NAME LOG: as finish, for a stage that informs and cannot fail
# the check
finish_info() {
    local kept=$failed
    stage_note="${stage_note:+$stage_note, }for information"
    finish "$1" "$2"
    failed=$kept
}

skip() { # NAME WHY
    stage_status=SKIP stage_secs=0 stage_limit=0 stage_note=$2
    finish "$1" -
}

skip_info() { # NAME WHY: as skip, for a stage whose absence does not fail the check
    stage_status=SKIP stage_secs=0 stage_limit=0 stage_note=$2
    finish_info "$1" -
}

# gtest_installed: GoogleTest's header and library under CMAKE_PREFIX_PATH,
# /usr or /usr/local
gtest_installed() {
    local d IFS=:
    for d in ${CMAKE_PREFIX_PATH:-} /usr /usr/local; do
        [ -f "$d/include/gtest/gtest.h" ] || continue
        if compgen -G "$d/lib*/libgtest.*" >/dev/null ||
           compgen -G "$d/lib/*/libgtest.*" >/dev/null; then
            return 0
        fi
    done
    return 1
}

# 0. GoogleTest from its sources, where it is not installed
gtest_src=${GCLIP_GTEST_SRC:-}
if [ -z "$gtest_src" ] && ! gtest_installed; then
    for d in "$root/.devdeps/googletest" /usr/src/googletest; do
        if [ -f "$d/CMakeLists.txt" ]; then
            gtest_src=$d
            break
        fi
    done
fi
if [ -n "$gtest_src" ]; then
    gtest_prefix=$(mkdir -p "$build" && cd "$build" && pwd)/_gtest/install
    stage gtest 60 gtest.log bash -c 'cmake -S "$1" -B "$2/.." -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_GMOCK=OFF -DCMAKE_INSTALL_PREFIX="$2" && cmake --build "$2/.." -j "$3" &&
        cmake --install "$2/.."' _ "$gtest_src" "$gtest_prefix" "$jobs"
    stage_note="${stage_note:+$stage_note, }from $gtest_src"
    finish gtest gtest.log
    export CMAKE_PREFIX_PATH="$gtest_prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
fi

# 1. configure and build; where the configure with the tests fails (no
# GoogleTest), once more without them
configure=(cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
           -DCMAKE_CUDA_ARCHITECTURES="${GCLIP_DEVICE_CUDA_ARCH:-native}" -DGCLIP_ENABLE_CUDA=ON
           -DGCLIP_GPU_TEST_TIMEOUT="$test_timeout" -DGCLIP_BUILD_BENCH=ON
           -DGCLIP_BUILD_EMU_TESTS=OFF -DGCLIP_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=ON)
tests_built=1
no_tests=
stage configure 45 configure.log "${configure[@]}" -DGCLIP_BUILD_TESTS=ON
finish configure configure.log
if [ "$stage_status" = FAIL ]; then
    tests_built=0
    no_tests="configured without the tests: the configure with them failed (configure.log)"
    stage configure2 45 configure2.log "${configure[@]}" -DGCLIP_BUILD_TESTS=OFF
    stage_note="${stage_note:+$stage_note, }GCLIP_BUILD_TESTS=OFF"
    finish configure2 configure2.log
fi
built=0
if [ "$stage_status" = PASS ]; then
    targets=(gclip gclip-bench)
    [ $tests_built = 1 ] && targets+=(gclip_gpu_tests)
    stage build 170 build.log cmake --build "$build" -j "$jobs" --target "${targets[@]}"
    finish build build.log
    [ "$stage_status" = PASS ] && built=1
else
    skip build "configure failed"
fi
gpu_tests=$build/tests/gpu/gclip_gpu_tests

# 2. the GPU suite. Several test processes share the device, each test
# stopped alone past GCLIP_GPU_TEST_TIMEOUT; a test that skipped because no
# device was usable fails the stage (a test that skipped for want of memory
# or of a second device is counted in the note).
if [ $built = 1 ] && [ $tests_built = 0 ]; then
    skip gpu-tests "$no_tests"
elif [ $built = 1 ]; then
    # four test processes share the 16 cores: four OpenMP threads each for
    # the CPU-path twins (the H200 run measured this stage at 89 s); one
    # at a time on a device in exclusive-process mode. ctest stops starting
    # tests 15 s before the stage's limit (--stop-time), so that it ends
    # and writes its JUnit file rather than being killed
    parallel=4
    case ${compute_mode:-} in *[Ee]xclusive*) parallel=1 ;; esac
    # (the stop time only where it lies ahead: ctest takes a past one as
    # tomorrow's)
    budget=130
    left=$(time_left)
    [ "$left" -lt "$budget" ] && budget=$left
    stop=()
    [ "$budget" -gt 30 ] && stop=(--stop-time "$(date -d "@$(($(date +%s) + budget - 15))" +%H:%M:%S)")
    stage gpu-tests "$budget" ctest-gpu.log \
        env OMP_NUM_THREADS=4 ctest --test-dir "$build" -L gpu -j "$parallel" --no-tests=error \
              ${stop[@]+"${stop[@]}"} --output-on-failure --output-junit "$out/ctest-gpu.xml"
    skipped=$(grep -c '(Skipped)' "$out/ctest-gpu.log" 2>/dev/null)
    # at its stop time ctest also cuts the tests still running short (they
    # read "Timeout") and exits non-zero: the log says which happened
    if grep -q 'stop time has been passed' "$out/ctest-gpu.log" 2>/dev/null; then
        stage_status=TIMEOUT
        stage_note="ctest reached its stop time: the tests then running were cut off (they read Timeout) and the rest left unrun; failures before it are in ctest-gpu.log"
    elif grep -q 'no CUDA device' "$out/ctest-gpu.xml" 2>/dev/null; then
        stage_status=FAIL
        stage_note="tests skipped for want of a device although nvidia-smi lists one"
    elif [ "${skipped:-0}" -gt 0 ]; then
        stage_note="${stage_note:+$stage_note, }$skipped skipped (see ctest-gpu.log)"
    fi
    finish gpu-tests ctest-gpu.log
else
    skip gpu-tests "no build"
fi

# 3. compute-sanitizer on the filter's cases; every one must have run, not
# skipped
cases=0
if [ $built = 1 ] && [ $tests_built = 1 ] && [ "$(time_left)" -ge 10 ]; then
    cases=$(timeout "$(probe_limit)" "$gpu_tests" --gtest_filter="$filter" --gtest_list_tests 2>/dev/null |
            grep -c '^  ')
fi
for tool in memcheck racecheck synccheck; do
    if [ $built = 0 ]; then
        skip "$tool" "no build"
        continue
    fi
    if [ $tests_built = 0 ]; then
        skip "$tool" "$no_tests"
        continue
    fi
    if [ -z "$sanitizer" ]; then
        skip "$tool" "compute-sanitizer not found (PATH, the nvcc folder, /usr/local/cuda)"
        continue
    fi
    # memcheck's leak check looks at the allocations left when the context
    # is destroyed: GCLIP_GPU_RESET_AT_EXIT=1 makes the suite reset the
    # device after its last test (tests/gpu/gpu_fixture.cpp)
    extra=()
    [ "$tool" = memcheck ] && extra=(--leak-check full)
    budget=40
    [ "$tool" = synccheck ] && budget=30
    reset=0
    [ "$tool" = memcheck ] && reset=1
    stage "$tool" "$budget" "$tool.log" env GCLIP_GPU_RESET_AT_EXIT=$reset \
        "$sanitizer" --tool "$tool" ${extra[@]+"${extra[@]}"} --error-exitcode 1 \
        --log-file "$out/$tool-report.txt" "$gpu_tests" --gtest_filter="$filter" \
        --gtest_output="xml:$out/$tool-gtest.xml"
    if [ "$stage_status" = PASS ] &&
       { [ "$cases" -eq 0 ] || ! grep -q "\[  PASSED  \] $cases test" "$out/$tool.log"; }; then
        stage_status=FAIL
        stage_note="not every case of $filter ran ($cases listed; skipped or filtered out)"
    fi
    finish "$tool" "$tool.log"
done

# 4. the CUDA bench
if [ $built = 1 ]; then
    stage bench 45 bench.log \
        "$build/bench/gclip-bench" --cuda-steps "$out/bench-cuda" --runs 7 \
        --workload gpt2-124m,many-small,tiny-100k
    finish bench bench.log
else
    skip bench "no build"
fi

# 5. the profile (information only), before the Python stages, whose
# time on a slower machine could otherwise leave it none
ncu_bin=$(command -v ncu || ls "$(dirname "$(command -v nvcc)")/ncu" /opt/nvidia/nsight-compute/*/ncu \
          2>/dev/null | head -1)
if [ $built = 0 ]; then
    stage_status=SKIP stage_secs=0 stage_limit=0 stage_note="no build"
    finish_info profile -
elif [ -z "$ncu_bin" ]; then
    stage_status=SKIP stage_secs=0 stage_limit=0 stage_note="ncu not found"
    finish_info profile -
else
    # the 11th norm launch is one of the norm op's steps, the 11th scale
    # launch one of the clip op's (gclip-bench --cuda-steps runs norm, clip,
    # clip-noop in that order)
    stage profile 60 profile.log bash -c '
        for wk in tiny-100k:norm tiny-100k:scale many-small:norm; do
            w=${wk%:*} k=${wk#*:}
            echo "== $w: the 11th $k kernel of gclip-bench --cuda-steps"
            "$1" --clock-control none --kernel-name "regex:gclip_${k}_kernel" \
                --launch-skip 10 --launch-count 1 \
                --section SpeedOfLight --section MemoryWorkloadAnalysis \
                --section Occupancy --section LaunchStats --section WarpStateStats \
                "$2/bench/gclip-bench" --cuda-steps "$2/profile-$w-$k" --runs 1 --workload "$w" ||
                exit 1
        done' _ "$ncu_bin" "$build"
    finish_info profile profile.log
fi

# 6. the Python suite with the device, on the build's libgclip.so
torch_rc=0 pytest_rc=0
if [ "${GCLIP_DEVICE_CHECK_PYTHON:-1}" != 0 ] && [ "$(time_left)" -ge 10 ]; then
    timeout "$(probe_limit)" "$pyexe" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        >"$out/python-torch.log" 2>&1
    torch_rc=$?
    if [ $torch_rc -eq 0 ] && [ "$(time_left)" -ge 10 ]; then
        timeout "$(probe_limit)" "$pyexe" -c 'import pytest' >>"$out/python-torch.log" 2>&1
        pytest_rc=$?
    fi
fi
if [ "${GCLIP_DEVICE_CHECK_PYTHON:-1}" = 0 ]; then
    :
elif [ $torch_rc -ne 0 ]; then
    why="$pyexe has no PyTorch that sees the device (python-torch.log)"
    [ $torch_rc -eq 124 ] && why="$pyexe did not say in time whether PyTorch sees the device"
    skip_info python "$why"
    skip_info peers "$why"
else
    if [ $built = 0 ]; then
        skip python "no build"
    elif [ $pytest_rc -ne 0 ]; then
        skip_info python "$pyexe has PyTorch but no pytest (python-torch.log)"
    else
        lib=$(cd "$build" && pwd)/libgclip.so
        stage python 120 python.log env PYTHONPATH="$root/python" GCLIP_LIBRARY="$lib" \
            XLA_PYTHON_CLIENT_PREALLOCATE=false \
            "$pyexe" -m pytest -q -rs -p no:cacheprovider --junitxml="$out/pytest.xml" python/tests
        if [ "$stage_status" = PASS ] && grep -q 'needs a CUDA device\|no CUDA device' "$out/python.log"; then
            stage_status=FAIL
            stage_note="CUDA tests skipped although the device is there"
        fi
        finish python python.log
    fi
    # 7. the peer on the same device: needs PyTorch only
    stage peers 75 peers.log "$pyexe" -u bench/torch_cuda_steps.py --runs 7 --csv "$out/torch-cuda.csv"
    finish_info peers peers.log
fi

# ---- summary ---------------------------------------------------------------------------
write_summary final
pack
cat "$summary"
exit $failed
