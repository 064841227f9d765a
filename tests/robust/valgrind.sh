#!/usr/bin/env bash
# Runs the cpu and robust GoogleTest binaries of a build (and the fuzz corpus
# replay) under valgrind memcheck. Fails on any memory error and on
# "definitely" or "indirectly lost" blocks.
#
#   tests/robust/valgrind.sh [build dir (default build/cpu)] [more tests to leave out, gtest patterns joined by :]
#
# The build must not use the sanitizers (GCLIP_SANITIZE=OFF; valgrind and
# ASan exclude each other), e.g. the `cpu` preset. The emu suite is always
# built with ASan, so it is not run here.
#
# "Possibly lost" blocks are reported but do not fail the run: libgomp keeps
# its worker threads (and their thread-local blocks) alive until exit, which
# memcheck can only classify as possibly lost.
#
# valgrind.supp silences one harness artefact: GoogleTest printing the padding
# bytes of a test parameter (never library memory).
#
# Left out to keep the run under ~8 minutes on 2 cores (each takes 30 s to
# 2 min under memcheck; the same code paths run in the remaining cases):
#   robust  Concurrency.DistinctPlansMatchSerialRun (128 jobs on 8 threads;
#           the two other Concurrency tests still run), and
#           Concurrency.ForkedChildClipsWithoutHanging (its child, given 60 s
#           by the wall clock, steps over 10^6 elements)
#   cpu     NormManyTensors.OneToTenThousandMixedTensors, NormLarge.*,
#           the f16/bf16 instances of NormBySize (f32 instances run),
#           ClipGradNorm.ElementsMatchTheOracleForEveryNormAndScale,
#           ClipPerTensor.EachTensorByItsOwnCoefficient,
#           Determinism.IdenticalBitsForEveryThreadCountAndRun,
#           Determinism.ManySmallTensorsIdenticalBitsForEveryThreadCount and
#           ChunkWalk.ClipOfManyGrainsScalesEveryElementOnceOnAnyThreadCount
#           (57 s and 40 s: the many-small walk and the grain split run in
#           NormManyTensors.TenThousandTensors and the other ChunkWalk cases),
#           Determinism.SameBitsAtEveryOffsetModulo16 (31 s: the read pass at
#           every start offset runs in the f32 instances of NormBySize)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build/cpu}
extra_filter=${2:-}

if grep -q '^GCLIP_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
    echo "valgrind.sh: $build is a sanitizer build; use one configured with GCLIP_SANITIZE=OFF" >&2
    exit 2
fi

vg=(valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=all
    --errors-for-leak-kinds=definite,indirect --num-callers=30
    --suppressions="$here/valgrind.supp")
slow_robust=Concurrency.DistinctPlansMatchSerialRun:Concurrency.ForkedChildClipsWithoutHanging
slow_cpu=NormManyTensors.OneToTenThousandMixedTensors:NormLarge.*:*NormBySize*/f16_*:*NormBySize*/bf16_*
slow_cpu+=:ClipGradNorm.ElementsMatchTheOracleForEveryNormAndScale:ClipPerTensor.EachTensorByItsOwnCoefficient
slow_cpu+=:Determinism.IdenticalBitsForEveryThreadCountAndRun
slow_cpu+=:Determinism.ManySmallTensorsIdenticalBitsForEveryThreadCount
slow_cpu+=:ChunkWalk.ClipOfManyGrainsScalesEveryElementOnceOnAnyThreadCount
slow_cpu+=:Determinism.SameBitsAtEveryOffsetModulo16
# spinning OpenMP workers crawl under valgrind's one-thread-at-a-time scheduler
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2

# memcheck runs a program's threads one at a time: the runs below go side by
# side, the cpu suite as GoogleTest shards, one per CPU (at most 4).
shards=$(nproc 2>/dev/null || echo 2)
((shards > 4)) && shards=4
((shards < 1)) && shards=1

run() { # name, command...; its line and status go to $build/valgrind-NAME.result
    local name=$1 log="$build/valgrind-$1.log" t0=$SECONDS
    shift
    "${vg[@]}" "$@" >"$log" 2>&1
    local rc=$?
    local summary
    summary=$(grep -E 'ERROR SUMMARY|definitely lost:|indirectly lost:|possibly lost:' "$log" | sed 's/^==[0-9]*== *//' | tr '\n' ';')
    {
        printf '%-26s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$summary"
        [ "$rc" -eq 0 ] || echo "  see $log"
    } >"$build/valgrind-$name.result"
    return "$rc"
}

names=()
found=0
for bin in "$build"/tests/cpu/gclip_cpu_tests "$build"/tests/robust/gclip_robust_tests; do
    [ -x "$bin" ] || continue
    found=1
    case $bin in *cpu*) slow=$slow_cpu n=$shards ;; *) slow=$slow_robust n=1 ;; esac
    filter="-$slow${extra_filter:+:$extra_filter}"
    for ((i = 0; i < n; i++)); do
        name=$(basename "$bin")
        ((n > 1)) && name+=".shard$i"
        names+=("$name")
        GTEST_TOTAL_SHARDS=$n GTEST_SHARD_INDEX=$i run "$name" "$bin" --gtest_filter="$filter" &
    done
done
if [ -x "$build/tests/robust/gclip_fuzz_replay" ]; then
    names+=(gclip_fuzz_replay)
    run gclip_fuzz_replay "$build/tests/robust/gclip_fuzz_replay" "$here/corpus" &
fi
if [ "$found" -eq 0 ]; then
    echo "valgrind.sh: no test binaries under $build/tests; build the tests first" >&2
    exit 2
fi
status=0
for pid in $(jobs -p); do
    wait "$pid" || status=1
done
for name in "${names[@]}"; do
    cat "$build/valgrind-$name.result" 2>/dev/null || { echo "$name: no result"; status=1; }
done
exit $status
