#!/usr/bin/env bash
# check_kernels.sh NVCC SOURCE_DIR WORK_DIR
#
# Compiles every kernel source of SOURCE_DIR/kernels with NVCC for each GPU
# generation gclip supports (sm_75, sm_80, sm_86, sm_89, sm_90) plus PTX
# (compute_90), warnings as errors, and fails unless
#   - ptxas reports 0 bytes stack frame, 0 bytes spill stores and 0 bytes
#     spill loads for every function of every architecture (a spill or a
#     stack frame in these memory-bound loops costs local-memory traffic), and
#     every architecture actually produced its entry function;
#   - the PTX of the norm and scale kernels contains 16-byte vector global
#     loads (ld.global[.nc].v4 of 32-bit lanes): the chunk walk is meant to
#     read the body of every chunk 16 bytes at a time.
# Runs without a GPU. Exit status 0 = all checks passed.
set -euo pipefail

if [ $# -ne 4 ]; then
    echo "usage: $0 NVCC SOURCE_DIR WORK_DIR GENERATED_INCLUDE_DIR" >&2
    exit 2
fi
nvcc=$1
src=$2
work=$3
gen_include=$4
mkdir -p "$work"

archs=(75 80 86 89 90)
kernels=(norm_kernel scale_kernel clamp_kernel finalize_kernel adapt_kernel agc_kernel)
vector_load_kernels=(norm_kernel scale_kernel)

flags=(-std=c++17 -O3 -I"$src/include" -I"$gen_include" -I"$src/kernels" -I"$src/host"
       -Werror=all-warnings -Xcompiler=-Wall,-Wextra,-Werror)
gencode=()
for a in "${archs[@]}"; do
    gencode+=(-gencode "arch=compute_$a,code=sm_$a")
done
gencode+=(-gencode "arch=compute_90,code=compute_90")

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

for k in "${kernels[@]}"; do
    log="$work/$k.ptxas.log"
    if ! "$nvcc" "${flags[@]}" "${gencode[@]}" -Xptxas -v -c "$src/kernels/$k.cu" \
            -o "$work/$k.o" >"$log" 2>&1; then
        cat "$log"
        fail "$k.cu does not compile"
        continue
    fi
    # ptxas names each entry function with its architecture ("... for 'sm_80'"),
    # and "Function properties for F" is followed by the line with F's numbers.
    report=$(awk '
        /Compiling entry function/ { entries++; arch = $NF; gsub(/\047/, "", arch) }
        /Function properties for/ { fn = $NF; next }
        /bytes stack frame/ {
            line = $0; sub(/^[ \t]+/, "", line)
            printf "  %-6s %-62s %s\n", arch, fn, line
            if ($1 != 0 || $5 != 0 || $9 != 0) bad++
        }
        END { printf "entries=%d bad=%d\n", entries, bad }' "$log")
    echo "$k.cu:"
    echo "$report" | grep -v '^entries='
    summary=$(echo "$report" | tail -n 1)
    entries=${summary#entries=}
    entries=${entries%% *}
    bad=${summary##*bad=}
    if [ "$entries" -ne "${#archs[@]}" ]; then
        fail "$k.cu: expected ${#archs[@]} compiled entry functions (one per architecture), ptxas reported $entries"
    fi
    if [ "$bad" -ne 0 ]; then
        fail "$k.cu: $bad function(s) with a stack frame or spills"
    fi
done

vector_load='ld\.global(\.[A-Za-z0-9:_]+)*\.v4\.(u32|b32|f32)'
for k in "${vector_load_kernels[@]}"; do
    ptx="$work/$k.ptx"
    if ! "$nvcc" "${flags[@]}" -arch=compute_90 -ptx "$src/kernels/$k.cu" -o "$ptx"; then
        fail "$k.cu: PTX generation failed"
        continue
    fi
    n=$(grep -cE "$vector_load" "$ptx" || true)
    echo "$k.cu: $n 16-byte vector global loads in the compute_90 PTX"
    if [ "$n" -eq 0 ]; then
        fail "$k.cu: no 16-byte vector global load (ld.global[.nc].v4.{u32,b32,f32}) in its PTX"
    fi
done

if [ "$failures" -ne 0 ]; then
    echo "check_kernels: $failures check(s) failed"
    exit 1
fi
echo "check_kernels: passed (${kernels[*]} on ${archs[*]/#/sm_} + compute_90)"
