#!/usr/bin/env bash
# The whole test suite, stage by stage, after the machine's set-up
# (tests/setup.sh: missing Debian packages, PATH). Stops at the first failing
# stage.
#
#   tests/run_all.sh            everything
#   GCLIP_FUZZ_SECONDS=600 tests/run_all.sh   a longer fuzz run
set -euo pipefail
cd "$(dirname "$0")/.."
t_start=$(date +%s)
stage() { echo; echo "==== [$(( $(date +%s) - t_start ))s] $*"; }

# Two jobs side by side in one stage: `beside LOG CMD...` starts CMD in the
# background, its output to LOG; after the job in front, `join_beside WHAT
# FRONT_STATUS` waits for CMD, prints its output under WHAT and fails the
# stage if either failed.
beside() {
    beside_log=$1
    shift
    mkdir -p "$(dirname "$beside_log")"
    "$@" >"$beside_log" 2>&1 &
    beside_pid=$!
}
join_beside() {
    local rc=0
    wait "$beside_pid" || rc=$?
    echo "-- $1:"
    cat "$beside_log"
    if [ "$2" -ne 0 ] || [ "$rc" -ne 0 ]; then
        echo "the stage's main job exited $2, and $1 exited $rc" >&2
        exit 1
    fi
}

stage "set-up: Debian packages, PATH, the compiler cache, the Python environment (tests/setup.sh)"
GCLIP_SETUP_PYTHON=0 . tests/setup.sh # packages and PATH; the Python environment below

# A compiler cache outside the clone (ccache, which tests/setup.sh installs):
# every build below, the Python package's, the planted bugs' rebuilds and
# the fuzzer's included, takes the object of an earlier run whose compiler,
# flags and preprocessed source were the same, and compiles the others.
# Paths under the clone are made relative, so a clone at another path hits
# too. The stats log counts this run's hits and misses (printed at the end).
# GCLIP_CCACHE=0 compiles everything.
ccache_log=
if [ "${GCLIP_CCACHE:-1}" != 0 ] && command -v ccache >/dev/null 2>&1; then
    export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
    export CMAKE_CUDA_COMPILER_LAUNCHER=ccache
    export CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=1
    mkdir -p build
    ccache_log=$PWD/build/ccache-stats.log
    rm -f "$ccache_log"
    export CCACHE_STATSLOG=$ccache_log
    echo "compiler cache: $(ccache --version | sed -n 1p), in $(ccache -k cache_dir)"
else
    echo "compiler cache: none (GCLIP_CCACHE=0 or no ccache on PATH)"
fi
gclip_setup_python # the Python stage needs the environment
jobs=$(nproc 2>/dev/null || echo 2)
fuzz_seconds=${GCLIP_FUZZ_SECONDS:-120}

stage "release build (CUDA backend if nvcc is present) and the cpu, emu, nvcc, gpu, robust and dist labels"
cmake --preset default
cmake --build --preset default -j "$jobs"
ctest --preset default -j "$jobs"

stage "clang build, CPU path: the cpu and emu labels"
cmake --preset clang
cmake --build --preset clang -j "$jobs"
ctest --preset clang -j "$jobs"

# pytest keeps about one CPU busy; the planted host-code bugs run beside
# it, in a copy of the tree kept outside the clone (its builds and the
# compiler cache make a later run's rebuilds cheap): those of the CPU path,
# under the CPU suite, then those of the CUDA backend, under the emulated
# CUDA runtime
host_bugs() {
    local work=${GCLIP_HOST_MUTANTS_DIR:-$HOME/.cache/gclip/host-mutants}
    python3 tests/cpu/plant_host_bugs.py --jobs "$jobs" . "$work" &&
        python3 tests/cpu/plant_host_bugs.py --backend --jobs "$jobs" . "$work"
}
stage "Python package: pytest against PyTorch, NumPy, JAX and the reference packages, beside the planted host-code bugs (CPU path and CUDA backend)"
beside build/host-mutants.log host_bugs
rc=0
timeout 1800 "$GCLIP_PYTHON" -m pytest -q -rs python/tests || rc=$?
join_beside "planted host-code bugs (tests/cpu/plant_host_bugs.py, then with --backend)" "$rc"

# Each planted bug rebuilds one kernel source, on one CPU: the sanitizer
# build and its tests fill the other, at a lower priority so that the
# planted bugs keep theirs; the sanitizers' output follows.
asan_stage() {
    renice -n 10 -p "$BASHPID" >/dev/null 2>&1 || true
    cmake --preset asan &&
        cmake --build --preset asan -j "$jobs" &&
        ctest --preset asan -j "$jobs"
}
stage "the emulator catches planted kernel bugs, beside the AddressSanitizer + UndefinedBehaviorSanitizer build and its cpu and robust labels (emu is sanitized in every build)"
beside build/asan-stage.log asan_stage
rc=0
ctest --test-dir build/default -L emu-mutants --output-on-failure --no-tests=error || rc=$?
join_beside "sanitizers (cmake --preset asan, its build and ctest --preset asan)" "$rc"

# libFuzzer runs one process on one CPU for a fixed time; memcheck keeps
# every CPU busy. Side by side, with memcheck's processes at a lower
# priority so that the fuzzer keeps a CPU of its own, the stage ends about
# when memcheck does; the fuzzer's output follows memcheck's.
stage "valgrind memcheck of the cpu and robust suites, beside libFuzzer for ${fuzz_seconds}s"
beside build/fuzz-stage.log tests/robust/fuzz.sh "$fuzz_seconds"
rc=0
nice -n 10 timeout 2400 tests/robust/valgrind.sh build/default || rc=$?
join_beside "libFuzzer (tests/robust/fuzz.sh $fuzz_seconds)" "$rc"

stage "scale: a bf16 tensor over 2^31 elements and 100,000 tensors"
ctest --test-dir build/default -L large --output-on-failure --no-tests=error

stage "install, then build a consumer with find_package(gclip) and with pkg-config"
tests/install/check_install.sh build/default

if [ -n "$ccache_log" ] && [ -f "$ccache_log" ]; then
    echo "compiler cache, this run:"
    ccache --show-log-stats | grep -E 'Hits|Misses|Uncacheable' | sed 's/^/  /' || true
fi
stage "all stages passed in $(( $(date +%s) - t_start ))s"
