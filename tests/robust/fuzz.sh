#!/usr/bin/env bash
# Builds the libFuzzer target (clang, ASan + UBSan) from host/*.c and
# tests/robust/fuzz_plan.cpp, then fuzzes for a bounded time starting from
# the committed seed corpus.
#
#   tests/robust/fuzz.sh [seconds (default 120)] [work dir (default build/fuzz)]
#
# Prints the number of executions and the target's counters; exits non-zero
# when libFuzzer reports a crash, leak, timeout or failed check (the input is
# saved as <work dir>/crash-* etc.; replay it with `<work dir>/fuzz_plan FILE`).
set -euo pipefail

seconds=${1:-120}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${2:-$root/build/fuzz}
CC=${CC:-clang}
CXX=${CXX:-clang++}
# the compiler launcher of the CMake builds, if the environment names one
# (tests/run_all.sh: ccache)
read -ra launch <<<"${CMAKE_C_COMPILER_LAUNCHER:-}"

# objects of this run only: a host file renamed since the last run must not link
rm -rf "$work/obj"
mkdir -p "$work/obj" "$work/include"
# gclip_version.h, which a CMake build generates from the project version
cmake -DOUTPUT="$work/include/gclip_version.h" -P "$root/cmake/gclip_version_header.cmake"
# UBSan without its pointer-overflow check: with it, clang takes 70 s on each
# of the read pass's files (host/norm_cpu*.c), 17 s without. The GCC
# sanitizer build (the asan preset) keeps that check on the same code.
san=(-fsanitize=address,undefined -fno-sanitize=pointer-overflow -fno-sanitize-recover=undefined
     -fno-omit-frame-pointer -g -O1)
inc=(-I"$root/include" -I"$work/include" -I"$root/host" -I"$root/kernels" -I"$root/tests/common")
# the CPU build of the library: every host file except the CUDA glue
# the host sources compiled side by side, one job per CPU; a failed
# compile leaves a mark
jobs=$(nproc 2>/dev/null || echo 2)
for src in "$root"/host/*.c; do
    [ "$(basename "$src")" = cuda_backend.c ] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 0.2; done
    { "${launch[@]}" "$CC" -std=c11 "${san[@]}" -fsanitize=fuzzer-no-link -fopenmp "${inc[@]}" \
        -c "$src" -o "$work/obj/$(basename "$src" .c).o" || touch "$work/obj/FAILED"; } &
done
wait
if [ -e "$work/obj/FAILED" ]; then
    echo "fuzz.sh: compiling the host sources failed" >&2
    exit 1
fi
"$CXX" -std=c++17 "${san[@]}" -fsanitize=fuzzer -fopenmp "${inc[@]}" \
    "$here/fuzz_plan.cpp" "$work"/obj/*.o -lm -o "$work/fuzz_plan"

# fuzz a copy, so that the committed seeds stay as they are
rm -rf "$work/corpus"
mkdir -p "$work/corpus"
cp "$here"/corpus/* "$work/corpus/"
rm -f "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*

set +e
OMP_NUM_THREADS=2 "$work/fuzz_plan" "$work/corpus" -max_total_time="$seconds" \
    -max_len=4096 -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$work/" >"$work/fuzz.log" 2>&1
rc=$?
set -e

execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/fuzz.log" | grep -o '[0-9]*$' || true)
echo "fuzz_plan: ${execs:-?} executions in ${seconds} s (log: $work/fuzz.log)"
grep '^gclip fuzz:' "$work/fuzz.log" | tail -n 3 || true
echo "corpus: $(ls "$work/corpus" | wc -l) inputs after the run"
findings=$(ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* 2>/dev/null || true)
if [ "$rc" -ne 0 ] || [ -n "$findings" ]; then
    echo "FINDING (libFuzzer exit code $rc):"
    grep -E 'ERROR|SUMMARY|check failed|norm .* oracle' "$work/fuzz.log" | head -n 20 || true
    echo "${findings:-no artifact saved}"
    exit 1
fi
echo "no crash, leak or failed check"
