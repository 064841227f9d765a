#!/usr/bin/env bash
# Norm and clip across 1 to 4 MPI ranks on this machine, one Markdown row per
# rank count, then the fold of 1,024 and 16,384 partials.
#
#   bench/dist/run.sh [build dir] [extra gclip-dist-bench arguments]
# The ranks are oversubscribed when they outnumber the cores (the timings
# then include the ranks' sharing of cores; see docs/distributed.md).
set -euo pipefail
build=${1:-build/default}
shift || true
bench="$build/dist/bench/gclip-dist-bench"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
flags=()
if mpirun --version 2>/dev/null | grep -q "Open MPI"; then flags+=(--oversubscribe); fi
for np in 1 2 3 4; do
  extra=()
  [ "$np" = 1 ] && extra=(--fold)
  out=$(mpirun -np "$np" "${flags[@]}" "$bench" "${extra[@]}" "$@")
  if [ "$np" = 1 ]; then echo "$out" | head -1; fi
  echo "$out" | sed -n '2p'
  fold_lines+=$(echo "$out" | sed -n '3,$p')
done
echo
echo "${fold_lines:-}"
