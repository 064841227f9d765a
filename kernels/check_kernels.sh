#!/usr/bin/env bash
# check_kernels.sh NVCC SOURCE_DIR WORK_DIR GENERATED_INCLUDE_DIR [OBJECTS]
#
# Static checks of every kernel for each GPU generation gclip supports
# (sm_75, sm_80, sm_86, sm_89, sm_90) plus PTX (compute_90), read with
# cuobjdump from the kernels' objects: those of the gclip library when
# OBJECTS (a ;-separated list, the build's $<TARGET_OBJECTS:gclip_kernels>)
# holds one that covers all of them, else compiled here by NVCC, warnings
# as errors. Fails unless
#   - every function of every architecture has no stack frame and no local
#     memory (cuobjdump -res-usage STACK:0 LOCAL:0: a spill or a stack frame
#     in these memory-bound loops costs local-memory traffic), and every
#     architecture holds the kernel's entry function;
#   - the PTX of the norm and scale kernels contains 16-byte vector global
#     loads (ld.global[.nc].v4 of 32-bit lanes): the chunk walk is meant to
#     read the body of every chunk 16 bytes at a time;
#   - and the checks further down.
# Runs without a GPU. Exit status 0 = all checks passed.
set -euo pipefail

if [ $# -lt 4 ] || [ $# -gt 5 ]; then
    echo "usage: $0 NVCC SOURCE_DIR WORK_DIR GENERATED_INCLUDE_DIR [OBJECTS]" >&2
    exit 2
fi
nvcc=$1
src=$2
work=$3
gen_include=$4
objects=${5:-}
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

cuobjdump=${GCLIP_CUOBJDUMP:-}
if [ -z "$cuobjdump" ]; then
    for c in "$(dirname "$nvcc")/cuobjdump" "$(command -v cuobjdump || true)" \
             "${GCLIP_VENV:-$HOME/.cache/gclip/venv}"/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump; do
        if [ -n "$c" ] && [ -x "$c" ]; then cuobjdump=$c; break; fi
    done
fi
if [ -z "$cuobjdump" ]; then
    echo "check_kernels: cuobjdump not found (next to nvcc, on PATH, GCLIP_CUOBJDUMP): nothing can be checked"
    exit 1
fi

# covers OBJ: whether OBJ holds SASS for every architecture and compute_90 PTX
covers() {
    local listing a
    listing=$("$cuobjdump" -lelf -lptx "$1" 2>/dev/null) || return 1
    for a in "${archs[@]}"; do
        grep -q "sm_$a\.cubin" <<<"$listing" || return 1
    done
    grep -q "sm_90\.ptx" <<<"$listing"
}

# $work/K.o: kernel K's object (a link to the library's, or compiled here);
# $work/K.res: "ARCH FUNCTION REG STACK SHARED LOCAL" per function and
# architecture; $work/K.ptx: its PTX.
for k in "${kernels[@]}"; do
    obj=
    IFS=';' read -r -a listed <<<"$objects"
    for o in "${listed[@]}"; do
        [ "${o##*/}" = "$k.cu.o" ] && obj=$o
    done
    rm -f "$work/$k.o"
    if [ -n "$obj" ] && covers "$obj"; then
        ln -s "$(cd "$(dirname "$obj")" && pwd)/${obj##*/}" "$work/$k.o"
        echo "$k.cu: the library's object $obj"
    elif ! "$nvcc" "${flags[@]}" "${gencode[@]}" -c "$src/kernels/$k.cu" -o "$work/$k.o" \
            >"$work/$k.nvcc.log" 2>&1; then
        cat "$work/$k.nvcc.log"
        fail "$k.cu does not compile"
        continue
    else
        echo "$k.cu: compiled here (the library's objects do not cover ${archs[*]/#/sm_})"
    fi
    "$cuobjdump" -res-usage "$work/$k.o" | awk '
        /arch = / { arch = $3 }
        /Function [^ ]+:$/ { fn = $2; sub(/:$/, "", fn) }
        /REG:[0-9]+/ {
            for (i = 1; i <= NF; i++) { split($i, kv, ":"); v[kv[1]] = kv[2] }
            print arch, fn, v["REG"], v["STACK"], v["SHARED"], v["LOCAL"]
        }' >"$work/$k.res"
    "$cuobjdump" -ptx "$work/$k.o" >"$work/$k.ptx"
    echo "$k.cu:"
    awk '{ printf "  %-6s %-62s REG:%s STACK:%s SHARED:%s LOCAL:%s\n", $1, $2, $3, $4, $5, $6 }' "$work/$k.res"
    bad=$(awk '$4 != 0 || $6 != 0' "$work/$k.res" | wc -l)
    if [ "$bad" -ne 0 ]; then
        fail "$k.cu: $bad function(s) with a stack frame or local memory (spills)"
    fi
    entries=$(awk -v k="gclip_$k" 'index($2, k) { print $1 }' "$work/$k.res" | sort -u | tr '\n' ' ')
    want=$(printf 'sm_%s ' "${archs[@]}")
    if [ "$entries" != "$want" ]; then
        fail "$k.cu: the entry function gclip_$k on [${entries% }], expected [${want% }]"
    fi
done

vector_load='ld\.global(\.[A-Za-z0-9:_]+)*\.v4\.(u32|b32|f32)'
for k in "${vector_load_kernels[@]}"; do
    n=$(grep -cE "$vector_load" "$work/$k.ptx" || true)
    echo "$k.cu: $n 16-byte vector global loads in the compute_90 PTX"
    if [ "$n" -eq 0 ]; then
        fail "$k.cu: no 16-byte vector global load (ld.global[.nc].v4.{u32,b32,f32}) in its PTX"
    fi
done

# ---- float arithmetic as the CPU path does it ----------------------------------
# The CPU path keeps subnormals and rounds every float operation correctly,
# whatever the caller's floating-point mode. Kernels built with
# --use_fast_math or -ftz=true would flush f32 subnormals (.ftz) and
# approximate f32 divisions, square roots and reciprocals (.approx), and their
# bits would part from the CPU path's; the emulator runs the CUDA C source,
# not the PTX, so only this check sees it. The seed of nvcc's correctly
# rounded f64 division (rcp.approx.ftz.f64, refined after) is not f32 and
# stays allowed.
for k in "${kernels[@]}"; do
    [ -f "$work/$k.ptx" ] || continue
    n=$(grep -cE '\.(ftz|approx)(\.[a-z0-9]+)*\.f32([^0-9]|$)' "$work/$k.ptx" || true)
    echo "$k.cu: $n f32 instructions with .ftz or .approx in the compute_90 PTX"
    if [ "$n" -ne 0 ]; then
        fail "$k.cu: $n f32 instructions flush subnormals or approximate (.ftz/.approx): the kernels must be built without --use_fast_math or -ftz=true"
    fi
done

# ---- norm arithmetic and conversions (docs/gpu-arithmetic.md) ----------------
# Static checks of the per-thread arithmetic, from ptxas -v and from the SASS
# (cuobjdump) of tests/nvcc/walk_probes.cu, whose kernels each run one
# element type and norm kind of the norm kernel's accumulation, or one type
# of the scale kernel's update, through the kernels' own walk and functors.
# In the main loop of each (tests/nvcc/loop_stats.awk: common path, all
# groups in the safe range), on sm_90 and sm_80:
#   - L2/L1 of f32/f16/bf16: fp64 instructions (F2F.F64.F32 included) per
#     element at most 1/8 of the 2 per element of a per-element double sum;
#   - Inf-norm of f32/f16/bf16: no fp64 instruction at all;
#   - scale of f16: paired conversions (F2FP) packing, HADD2.F32 unpacking,
#     and at most 4 branches per 32 elements (a software conversion has over
#     a hundred); scale of bf16 from sm_80: F2FP.BF16 packing.
#   - L2/L1 of every type, whole probe: no FFMA or DFMA (bitwise the CPU's).
# And: the norm kernel at most 64 registers on sm_90 (4 blocks of 256 threads
# per SM); spills and stack are checked above for every architecture.
probe_src="$src/tests/nvcc/walk_probes.cu"
regs=$(awk '$1 == "sm_90" && index($2, "gclip_norm_kernel") { print $3; exit }' "$work/norm_kernel.res")
echo "norm_kernel.cu: ${regs:-?} registers on sm_90"
if [ -z "$regs" ] || [ "$regs" -gt 64 ]; then
    fail "norm_kernel.cu: ${regs:-unknown} registers on sm_90, more than 64 (4 blocks per SM)"
fi
for a in 90 80; do
    obj="$work/walk_probes_sm$a.o"
    if ! "$nvcc" "${flags[@]}" -gencode "arch=compute_$a,code=sm_$a" -Xptxas -v -c "$probe_src" \
            -o "$obj" >"$work/walk_probes_sm$a.ptxas.log" 2>&1; then
        cat "$work/walk_probes_sm$a.ptxas.log"
        fail "walk_probes.cu does not compile for sm_$a"
        continue
    fi
    if grep -E 'bytes stack frame' "$work/walk_probes_sm$a.ptxas.log" | grep -vq '^ *0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads'; then
        fail "walk_probes.cu: a probe has a stack frame or spills on sm_$a"
    fi
    stat() { "$cuobjdump" -sass -fun "$1" "$obj" | awk -f "$src/tests/nvcc/loop_stats.awk"; }
    field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }
    for dt in f32 f16 bf16; do
        lanes=4; [ "$dt" = f32 ] || lanes=8
        for kind in l2 l1 inf; do
            s=$(stat "gclip_probe_norm_${dt}_$kind")
            loads=$(field "$s" vec_loads); fp64=$(field "$s" fp64)
            elems=$((loads * lanes))
            echo "  sm_$a norm $dt $kind: $s ($elems elements per iteration)"
            if [ "${loads:-0}" -lt 4 ]; then
                fail "sm_$a norm $dt $kind: no main loop of 16-byte loads found"
            elif [ "$kind" = inf ] && [ "$fp64" -ne 0 ]; then
                fail "sm_$a norm $dt inf: $fp64 fp64 instructions in the main loop (integer max expected)"
            elif [ "$kind" != inf ] && [ $((fp64 * 4)) -gt "$elems" ]; then
                fail "sm_$a norm $dt $kind: $fp64 fp64 instructions for $elems elements (more than 1/4 per element)"
            fi
        done
    done
    # no fused multiply-add anywhere in the L2/L1 accumulation (the exact
    # path and f64 included): the CPU path rounds every product and sum
    # apart, and a chunk's partial is the same bits on every engine
    for p in f32_l2 f32_l1 f16_l2 f16_l1 bf16_l2 bf16_l1 f64_l2; do
        n=$("$cuobjdump" -sass -fun "gclip_probe_norm_$p" "$obj" | grep -cE '[[:space:]](FFMA|DFMA)[[:space:].]' || true)
        echo "  sm_$a norm $p: ${n:-?} FFMA/DFMA"
        if [ "${n:-1}" -ne 0 ]; then
            fail "sm_$a norm $p: $n fused multiply-adds in the accumulation (the CPU path rounds product and sum apart)"
        fi
    done
    s=$(stat gclip_probe_scale_f16)
    echo "  sm_$a scale f16: $s (32 elements per iteration)"
    if [ "$(field "$s" pack)" -lt 16 ] || [ "$(field "$s" cvt16)" -lt 32 ] || [ "$(field "$s" branches)" -gt 4 ]; then
        fail "sm_$a scale f16: expected 16 paired F2FP packs, 32 HADD2.F32 unpacks and at most 4 branches per 32 elements"
    fi
    s=$(stat gclip_probe_scale_bf16)
    echo "  sm_$a scale bf16: $s (32 elements per iteration)"
    if [ "$(field "$s" pack)" -lt 16 ] || [ "$(field "$s" branches)" -gt 4 ]; then
        fail "sm_$a scale bf16: expected 16 paired F2FP.BF16 packs and at most 4 branches per 32 elements"
    fi
done


# ---- launch shape: the finalize's fold, the norm kernel's occupancy ----
# - A fold lane is folded by the block that completes its chunks, found by
#   the lane's own ticket; the last block only closes the lanes
#   (norm_finalize.cuh). The sm_90 SASS of the norm kernel must hold two
#   returning atomic increments (ATOMG ... INC): the norm ticket and the
#   lanes' tickets. A fold left to the last block alone has one.
# - The lane pass copies a window of partials and tensor indices before
#   folding any of it, so it waits for memory once per window. From sm_80
#   the window is copied with cp.async: the compute_90 PTX of the norm
#   kernel must hold at least ceil(GCLIP_FOLD_BATCH / 2) 16-byte L2-only copies
#   (cp.async.cg.shared.global ..., 16: the partials, in pairs) and at least
#   GCLIP_FOLD_BATCH 4-byte ones (the tensor indices), and no 8-byte
#   cp.async: a partial copied through L1 could be a stale copy of a
#   sector the next lane shares. The sm_90 SASS must hold at least
#   ceil(GCLIP_FOLD_BATCH / 2) LDGSTS ... BYPASS.128 (a window of
#   GCLIP_FOLD_BATCH partials per lane takes GCLIP_FOLD_PAIR_STEPS pair
#   copies per thread, at least that many). On sm_75 the batch goes
#   through registers with ld.global.cg: its SASS must hold at least
#   GCLIP_FOLD_BATCH_REG LDG.E.64.STRONG.GPU from a register's address
#   alone ([Rn]: the batch's partials, each at its own index; the close's
#   five lane-record loads, [Rn+0x400] and on, are always there and are not
#   counted). A fold that gates each chunk on a load of the table has one
#   of each.
# - The norm kernel's static shared memory (the window included) lets
#   four blocks of GCLIP_BLOCK_THREADS share an SM on every architecture
#   (per SM: 64 KB on sm_75, 164 KB on sm_80, 100 KB on sm_86/sm_89, 228 KB
#   on sm_90, less 1 KB the runtime reserves per block from sm_80).
# - The norm kernel keeps at least two blocks of GCLIP_BLOCK_THREADS per SM
#   on every architecture (at most 128 registers), so the grid of
#   SMs x occupancy still has two blocks' loads in flight per SM.
fold_batch=$(sed -n 's/^#define GCLIP_FOLD_BATCH \([0-9][0-9]*\).*/\1/p' "$src/kernels/gclip_fold.h")
fold_batch_reg=$(sed -n 's/^#define GCLIP_FOLD_BATCH_REG \([0-9][0-9]*\).*/\1/p' "$src/kernels/gclip_fold.h")
if [ -z "$fold_batch" ] || [ -z "$fold_batch_reg" ]; then
    fail "GCLIP_FOLD_BATCH or GCLIP_FOLD_BATCH_REG not found in kernels/gclip_fold.h"
else
    n=$(grep -cE 'cp\.async\.cg\.shared\.global.*, 16;' "$work/norm_kernel.ptx" || true)
    echo "norm_kernel.cu: $n 16-byte L2-only cp.async in the compute_90 PTX (fold batch $fold_batch)"
    if [ "$n" -lt $(((fold_batch + 1) / 2)) ]; then
        fail "norm_kernel.cu: $n paired partial copies in the PTX, fewer than ceil(GCLIP_FOLD_BATCH/2)=$(((fold_batch + 1) / 2))"
    fi
    n=$(grep -cE 'cp\.async\.ca\.shared\.global.*, 4;' "$work/norm_kernel.ptx" || true)
    echo "norm_kernel.cu: $n 4-byte cp.async in the compute_90 PTX (tensor indices)"
    if [ "$n" -lt "$fold_batch" ]; then
        fail "norm_kernel.cu: $n staged tensor-index copies in the PTX, fewer than GCLIP_FOLD_BATCH=$fold_batch"
    fi
    n=$(grep -cE 'cp\.async\.ca\.shared\.global.*, 8;' "$work/norm_kernel.ptx" || true)
    if [ "$n" -ne 0 ]; then
        fail "norm_kernel.cu: $n 8-byte cp.async through L1 in the PTX: partials must be read through L2 only"
    fi
    if sass=$("$cuobjdump" -sass "$work/norm_kernel.o" 2>&1); then
        count() { # count ARCH REGEX: matching instructions of the norm kernel on ARCH
            echo "$sass" | awk -v want="$1" -v re="$2" '
                /arch = sm_/ { arch = $NF }
                /Function : / { on = ($0 ~ /gclip_norm_kernel/) }
                on && arch == want && $0 ~ re { n++ }
                END { print n + 0 }'
        }
        n=$(count sm_90 'ATOMG[.A-Z0-9]*INC')
        echo "norm_kernel.cu: $n returning atomic increments in the sm_90 SASS (norm ticket, lane tickets)"
        if [ "$n" -lt 2 ]; then
            fail "norm_kernel.cu: $n ATOMG INC in the sm_90 SASS: the lanes are not folded behind their own tickets"
        fi
        n=$(count sm_90 'LDGSTS[.A-Z0-9]*BYPASS\.128')
        echo "norm_kernel.cu: $n 16-byte L2-only LDGSTS in the sm_90 SASS (fold batch $fold_batch, partials in pairs)"
        if [ "$n" -lt $(((fold_batch + 1) / 2)) ]; then
            fail "norm_kernel.cu: $n paired partial copies (LDGSTS BYPASS.128) in the sm_90 SASS, fewer than ceil(GCLIP_FOLD_BATCH/2)=$(((fold_batch + 1) / 2))"
        fi
        n=$(count sm_75 'LDG[.]E[.]64[.]STRONG[.]GPU R[0-9]+, [[]R[0-9]+[]]')
        echo "norm_kernel.cu: $n 64-bit L2 loads (LDG.E.64.STRONG.GPU) at [Rn] in the sm_75 SASS (batch $fold_batch_reg through registers)"
        if [ "$n" -lt "$fold_batch_reg" ]; then
            fail "norm_kernel.cu: $n batched partial loads in the sm_75 SASS, fewer than GCLIP_FOLD_BATCH_REG=$fold_batch_reg"
        fi
    else
        fail "cuobjdump -sass failed on norm_kernel.o"
    fi
fi
# Small chunks a warp each (norm_kernel.cu): a lane reads the vectors of
# block threads lane, lane + 32, ..., lane + 224, so the PTX holds 16-byte
# loads at 512 x k bytes past a lane's first vector, k = 1..7, for each of
# the four element types (the block walk's loads are 4096 bytes apart).
# fewest_strided_loads PTX K: the fewest 16-byte loads at any one of the
# offsets 512, 1024, ..., 512 K bytes in PTX
fewest_strided_loads() {
    local k n least=
    for ((k = 1; k <= $2; k++)); do
        n=$(grep -E "$vector_load" "$1" | grep -cF "+$((512 * k))]" || true)
        if [ -z "$least" ] || [ "$n" -lt "$least" ]; then least=$n; fi
    done
    echo "$least"
}
if [ -f "$work/norm_kernel.ptx" ]; then
    least=$(fewest_strided_loads "$work/norm_kernel.ptx" 7)
    echo "norm_kernel.cu: at least $least 16-byte loads at each of the offsets 512..3584 in the compute_90 PTX (small chunks a warp each)"
    if [ "$least" -lt 4 ]; then
        fail "norm_kernel.cu: fewer than 4 16-byte loads at some offset 512 x k (k = 1..7) in the PTX: small chunks are not walked a warp each"
    fi
fi
# The write kernels' small chunks (gclip_for_block_chunks): a warp walks a
# chunk as a 32-thread block, so a lane's batch of four vectors is 512
# bytes apart: 16-byte loads at +512, +1024 and +1536 in the scale
# kernel's PTX, at least 4 of each (one per element type).
if [ -f "$work/scale_kernel.ptx" ]; then
    least=$(fewest_strided_loads "$work/scale_kernel.ptx" 3)
    echo "scale_kernel.cu: at least $least 16-byte loads at each of the offsets 512, 1024, 1536 in the compute_90 PTX (small chunks a warp each)"
    if [ "$least" -lt 4 ]; then
        fail "scale_kernel.cu: fewer than 4 16-byte loads at some offset 512 x k (k = 1..3) in the PTX: small chunks are not updated a warp each"
    fi
fi
# Looking ahead on small chunks (chunk_walk.cuh): each warp of the norm
# kernel asks L2 for the lines of its next small chunk before it loads the
# one it is at (gclip_look_ahead: prefetch.global.L2), and meets only its
# own lanes between them (two __syncwarp: bar.warp.sync). The write kernels
# (gclip_for_block_chunks) flag a window of 256 chunks, one a thread, in
# shared memory (a byte store: st.shared.u8) and meet at two block barriers
# a window (bar.sync: at least 2 in the clamp kernel, 3 in the scale
# kernel, whose block also meets to read its factor), and their warps look
# ahead too (prefetch.global.L2). And a chunk's split into head, vectors and
# tail, done for every chunk of a window, is shifts: no integer division in
# the scale and clamp kernels' PTX (a 64-bit one is a called routine).
if [ -f "$work/norm_kernel.ptx" ]; then
    n=$(grep -c 'prefetch\.global\.L2 ' "$work/norm_kernel.ptx" || true)
    echo "norm_kernel.cu: $n prefetch.global.L2 in the compute_90 PTX (look-ahead)"
    if [ "$n" -lt 1 ]; then
        fail "norm_kernel.cu: no prefetch.global.L2 in the PTX: small chunks are not looked ahead"
    fi
    n=$(grep -c 'bar\.warp\.sync' "$work/norm_kernel.ptx" || true)
    echo "norm_kernel.cu: $n bar.warp.sync in the compute_90 PTX (warps walk small chunks alone)"
    if [ "$n" -lt 2 ]; then
        fail "norm_kernel.cu: fewer than 2 bar.warp.sync in the PTX: a warp's tree is not fenced from its columns"
    fi
fi
for k in scale_kernel clamp_kernel; do
    [ -f "$work/$k.ptx" ] || continue
    n=$(grep -c 'st\.shared\.u8 ' "$work/$k.ptx" || true)
    b=$(grep -cE '(bar|barrier)\.sync(\.aligned)? ' "$work/$k.ptx" || true)
    n2=$(grep -c 'prefetch\.global\.L2 ' "$work/$k.ptx" || true)
    d=$(grep -cE '(div|rem)\.[su](32|64) ' "$work/$k.ptx" || true)
    echo "$k.cu: $n st.shared.u8, $b block barriers, $n2 prefetch.global.L2 and $d integer divisions in the compute_90 PTX"
    least_b=2
    [ "$k" = scale_kernel ] && least_b=3
    if [ "$n" -lt 1 ] || [ "$b" -lt "$least_b" ]; then
        fail "$k.cu: $n st.shared.u8 and $b bar.sync in the PTX (at least 1 and $least_b): the window's flags are not written to shared memory, or a window barrier is missing"
    fi
    if [ "$n2" -lt 1 ]; then
        fail "$k.cu: no prefetch.global.L2 in the PTX: a warp's next small chunk is not asked for"
    fi
    if [ "$d" -ne 0 ]; then
        fail "$k.cu: $d integer divisions (div/rem .s32/.u32/.s64/.u64) in the PTX: a chunk's split must be shifts"
    fi
done
# (cuobjdump's SHARED; on sm_90 it is ptxas's smem plus the 1 KB the
# runtime reserves, which is added again below: the figure errs high)
smem=$(awk 'index($2, "gclip_norm_kernel") { print $1, $5 }' "$work/norm_kernel.res")
while read -r arch bytes; do
    [ -n "$arch" ] || continue
    case $arch in
        sm_75) per_sm=65536; reserved=0 ;;
        sm_80) per_sm=167936; reserved=1024 ;;
        sm_86 | sm_89) per_sm=102400; reserved=1024 ;;
        *) per_sm=233472; reserved=1024 ;;
    esac
    echo "norm_kernel.cu: $bytes bytes of shared memory per block on $arch (4 blocks: $((4 * (bytes + reserved))) of $per_sm)"
    if [ $((4 * (bytes + reserved))) -gt "$per_sm" ]; then
        fail "norm_kernel.cu: $bytes bytes of shared memory on $arch, more than four blocks per SM hold"
    fi
done <<<"$smem"
if [ "$(echo "$smem" | grep -c .)" -ne "${#archs[@]}" ]; then
    fail "norm_kernel.cu: shared memory not reported for every architecture"
fi
regs=$(awk 'index($2, "gclip_norm_kernel") { print $3 }' "$work/norm_kernel.res")
for r in $regs; do
    if [ "$r" -gt 128 ]; then
        fail "norm_kernel.cu: $r registers per thread, fewer than two blocks of 256 threads per SM"
    fi
done
echo "norm_kernel.cu: registers per architecture: $(echo $regs)"
# Programmatic dependent launch (sm_90 and later, docs/gpu-launch.md): the
# scale kernel may be scheduled before the norm kernel has finished, so it
# must wait for the grids before it (griddepcontrol.wait, ACQBULK in the
# SASS) before any access to global memory; the norm kernel and the adapt
# kernel, which it follows, let it be scheduled
# (griddepcontrol.launch_dependents, PREEXIT). The same for the AGC kernel,
# whose scale launch follows its norm launch.
# first_before_wait FILE ENTRY WAIT MEMORY: the first line of ENTRY's body in
# FILE (PTX or SASS text) that matches the regex MEMORY before a line that
# matches WAIT; "none" if the wait comes first, "nowait" if there is none.
first_before_wait() {
    awk -v entry="$2" -v wait="$3" -v mem="$4" '
        /[.]entry |Function : / { on = (index($0, entry) > 0); next }
        !on { next }
        $0 ~ wait { print "none"; found = 1; exit }
        $0 ~ mem { sub(/^[ \t]+/, ""); print; found = 1; exit }
        END { if (!found) print "nowait" }' "$1"
}
# (bracketed dots and stars: awk -v would read a backslash as an escape)
ptx_mem='^[[:space:]]*(@!?%p[0-9]+[[:space:]]+)?(ld|ldu|st|atom|red|prefetch|prefetchu|cp[.]async)([.]|[[:space:]])'
ptx_local='^[[:space:]]*(@!?%p[0-9]+[[:space:]]+)?(ld|st)\.(param|shared|local|const)'
# The AGC kernel's scale launch is dependent too (one entry for both
# launches, the wait at its top).
for k in scale_kernel agc_kernel; do
    [ -f "$work/$k.ptx" ] || continue
    # the body without its .param, .shared, .local and .const accesses
    grep -vE "$ptx_local" "$work/$k.ptx" >"$work/$k.global.ptx" || true
    r=$(first_before_wait "$work/$k.global.ptx" "gclip_${k}" 'griddepcontrol[.]wait' "$ptx_mem")
    echo "$k.cu: compute_90 PTX, first global access before griddepcontrol.wait: $r"
    if [ "$r" != none ]; then
        fail "$k.cu: gclip_$k touches global memory before griddepcontrol.wait ($r)"
    fi
done
if [ -f "$work/norm_kernel.ptx" ] && ! grep -q 'griddepcontrol\.launch_dependents' "$work/norm_kernel.ptx"; then
    fail "norm_kernel.cu: no griddepcontrol.launch_dependents in the compute_90 PTX"
fi
sass_mem='^[[:space:]]*/[*][0-9a-f]+[*]/[[:space:]]+(@!?P[0-9T][[:space:]]+)?(LDG|STG|LD|ST|ATOMG|ATOM|RED|REDG|LDGSTS|CCTL)[.[:space:]]'
for k in scale_kernel agc_kernel; do
    "$cuobjdump" -sass -arch sm_90 "$work/$k.o" >"$work/$k.sm_90.sass" 2>&1 || true
    r=$(first_before_wait "$work/$k.sm_90.sass" "gclip_$k" '[[:space:]]ACQBULK[[:space:]]' "$sass_mem")
    echo "$k.cu: sm_90 SASS, first global access before ACQBULK: $r"
    if [ "$r" != none ]; then
        fail "$k.cu: the sm_90 gclip_$k touches global memory before ACQBULK ($r)"
    fi
done
for k in norm_kernel adapt_kernel agc_kernel; do
    n=$("$cuobjdump" -sass -arch sm_90 "$work/$k.o" 2>/dev/null | grep -c '[[:space:]]PREEXIT[[:space:]]' || true)
    echo "$k.cu: $n PREEXIT in the sm_90 SASS (dependents released)"
    if [ "${n:-0}" -lt 1 ]; then
        fail "$k.cu: no PREEXIT in the sm_90 SASS: the scale kernel's dependent launch waits for the whole grid to exit"
    fi
done
# The finalize of a gathered array (finalize_kernel.cu) folds it in the
# fixed shape of gclip_norm_math.h, a leaf a thread: its entry must be
# built for GCLIP_FINALIZE_LEAVES threads (.maxntid in the compute_90 PTX),
# and hold the leaves' and the groups' folds in shared memory
# ((LEAVES + FAN) x 16 bytes on every architecture). A fold left to one
# thread, as a serial chain over every partial, needs neither. And a
# thread's loads of its leaf's partials do not wait for their fingerprints
# (gclip_fold_part_take has no branch): the sm_90 SASS must hold
# at least 8 unpredicated 64-bit loads (four partials' acc and
# nonfinite/fingerprint words, issued together). With the fingerprint
# compared first, every acc load is predicated on it.
fan=$(sed -n 's/^#define GCLIP_FINALIZE_FAN \([0-9][0-9]*\)u.*/\1/p' "$src/kernels/gclip_norm_math.h")
if [ -z "$fan" ]; then
    fail "GCLIP_FINALIZE_FAN not found in kernels/gclip_norm_math.h"
elif [ -f "$work/finalize_kernel.ptx" ]; then
    leaves=$((fan * fan))
    ntid=$(awk '/[.]entry / { on = index($0, "gclip_finalize_kernel") > 0 }
                on && /[.]maxntid/ { gsub(/[^0-9 ,]/, ""); split($0, v, ","); print v[1] + 0; exit }' \
               "$work/finalize_kernel.ptx")
    echo "finalize_kernel.cu: .maxntid ${ntid:-none} in the compute_90 PTX (a leaf a thread: $leaves)"
    if [ "${ntid:-0}" -ne "$leaves" ]; then
        fail "finalize_kernel.cu: the entry is not built for $leaves threads (.maxntid ${ntid:-none}): the fold is not a leaf a thread"
    fi
    want_smem=$(((leaves + fan) * 16))
    while read -r arch bytes; do
        [ -n "$arch" ] || continue
        echo "finalize_kernel.cu: $bytes bytes of shared memory on $arch (leaves and groups: $want_smem)"
        if [ "$bytes" -lt "$want_smem" ]; then
            fail "finalize_kernel.cu: $bytes bytes of shared memory on $arch, fewer than the $want_smem of the leaves' and groups' folds"
        fi
    done < <(awk 'index($2, "gclip_finalize_kernel") { print $1, $5 }' "$work/finalize_kernel.res")
    n=$("$cuobjdump" -sass -arch sm_90 "$work/finalize_kernel.o" 2>/dev/null |
        grep -cE '^[[:space:]]*/[*][0-9a-f]+[*]/[[:space:]]+LDG[.]E[.]64[[:space:]]' || true)
    echo "finalize_kernel.cu: $n unpredicated 64-bit loads in the sm_90 SASS (at least 8)"
    if [ "${n:-0}" -lt 8 ]; then
        fail "finalize_kernel.cu: $n unpredicated LDG.E.64 in the sm_90 SASS: a leaf's loads wait for each fingerprint"
    fi
fi
# ---- end of the launch-shape checks

# ---- memory ordering between blocks (docs/gpu-launch.md) ---------------------
# The emulator runs every kernel with sequentially consistent memory and
# makes each atomic and fence a point where threads may switch: a fence
# removed, an atomic turned into a plain read-modify-write, an L2-only load
# turned into one through L1 or a cp.async wait removed still gives the
# right bits there. On a GPU each is a race between blocks. So the
# compute_90 PTX must hold, per kernel, exactly the fences, atomics, L2-only
# loads and async-copy waits of the ticket protocols (kernels/norm_kernel.cu,
# norm_finalize.cuh, scale_kernel.cu, adapt_kernel.cu): a count below means
# one was lost; a count above means the protocol changed, and this table
# with it.
#   norm    membar.gl 5: block partials before the lane tickets, the lane
#           fold's reader and writer sides, the slot before the norm
#           ticket, every thread after the last block's barrier;
#           atom.global.inc 2: the lane tickets and the norm ticket;
#           atom.shared.add 2: the non-finite counts of a lane and of the
#           close; ld.global.cg 8: the close's seven run fields and the
#           per-tensor factors; cp.async.wait_all 1: the window's copies landed
#   scale   membar.gl 1, atom.global.inc 1: the apply ticket
#   adapt   atom.shared.add 1: the block's clipped count
#   finalize bar.sync 2: the leaves, then the groups, folded before they are read
# and exactly their barriers (bar.sync; bar.warp.sync for __syncwarp), as
# inlined: a lost barrier lowers the count. Most lost barriers also fail the
# emulator's tests (tests/emu/plant_bugs.sh), but not three of the norm
# kernel's: without the one after the lane tickets only the fence that
# follows it reads a stale flag, and without the one between the lanes'
# fences and the block's norm ticket only the order of those fences
# changes (the emulator's memory is sequentially consistent); the one after
# the small chunks ("`red` is the block's again") is also ordered by
# gclip_block_reduce's first barrier. Removing any of them leaves every
# emulated result the same, and only this count sees it.
ordering_table="norm_kernel membar.gl 5
norm_kernel atom.global.inc 2
norm_kernel atom.shared.add 2
norm_kernel ld.global.cg 8
norm_kernel cp.async.wait_all 1
norm_kernel bar.sync 26
norm_kernel bar.warp.sync 2
scale_kernel membar.gl 1
scale_kernel atom.global.inc 1
scale_kernel bar.sync 3
clamp_kernel bar.sync 2
finalize_kernel bar.sync 2
agc_kernel bar.sync 10
adapt_kernel atom.shared.add 1
adapt_kernel bar.sync 2"
while read -r k op want; do
    [ -f "$work/$k.ptx" ] || { fail "$k.cu: no PTX to check its memory ordering"; continue; }
    re_op=${op//./\\.}
    n=$(grep -cE "^[[:space:]]*(@!?%p[0-9]+[[:space:]]+)?$re_op[.[:space:];]" "$work/$k.ptx" || true)
    echo "$k.cu: $n $op in the compute_90 PTX (expected $want)"
    if [ "$n" -ne "$want" ]; then
        fail "$k.cu: $n $op in the compute_90 PTX, expected $want: a fence, atomic, L2-only load, copy wait or barrier was lost or added (see the table above)"
    fi
done <<<"$ordering_table"

if [ "$failures" -ne 0 ]; then
    echo "check_kernels: $failures check(s) failed"
    exit 1
fi
echo "check_kernels: passed (${kernels[*]} on ${archs[*]/#/sm_} + compute_90)"
