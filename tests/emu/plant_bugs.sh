#!/usr/bin/env bash
# plant_bugs.sh - shows that the emulator tests catch kernel bugs.
#
#   tests/emu/plant_bugs.sh SOURCE_DIR BUILD_DIR KERNEL_COPY WORK_DIR [MUTANT...]
#
# BUILD_DIR is a configured build tree with the emulator tests, KERNEL_COPY
# the copy of kernels/ that its target gclip_emu_mutant_test compiles
# (tests/emu/CMakeLists.txt). Makes the copy equal to SOURCE_DIR/kernels,
# builds that program and checks that the tests pass; then, for each
# mutant, plants one bug in the copy, rebuilds (only the kernels the bug
# touches) and checks that the tests FAIL. A bug that only deletes a
# barrier needs no rebuild: the emulator skips that call site instead
# (GCLIP_EMU_DROP_BARRIER). Logs go to WORK_DIR. Exits
# nonzero if the unmutated kernels fail, if any mutant survives, or if a
# mutation cannot be applied exactly as written (a kernel edit moved the
# code it targets: update the pattern here rather than let it pass). Leaves
# the copy equal to the sources.
#
# Environment: GCLIP_MUTANT_JOBS (build jobs, default 2),
#              GCLIP_MUTANT_SHARDS (test processes side by side, default 2),
#              GCLIP_MUTANT_TIMEOUT (seconds per test run, default 900).
set -euo pipefail

die() { echo "plant_bugs: $*" >&2; exit 2; }
[[ $# -ge 4 ]] || die "usage: $0 SOURCE_DIR BUILD_DIR KERNEL_COPY WORK_DIR [MUTANT...]"
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
kdir=$(cd "$3" && pwd)
mkdir -p "$4"
work=$(cd "$4" && pwd)
shift 4
program=$build/tests/emu/gclip_emu_mutant_test
jobs=${GCLIP_MUTANT_JOBS:-2}
limit=${GCLIP_MUTANT_TIMEOUT:-900}
shards=${GCLIP_MUTANT_SHARDS:-2}

# Tests that run every kernel on unaligned starts, vector and chunk ends,
# more chunks than a block has threads, read-only data and replays, the
# phases of the step contract and concurrent launches, in every schedule,
# and chunk partials compared bit for bit with the CPU path's.
# They stop at the first failure: one is enough here.
filter='Plans/EmuNorm.*/BoundariesF16_ClipNorm:Plans/EmuNorm.*/BoundariesF32_PerTensor'
filter+=':Plans/EmuNorm.*/BoundariesF64_ClipNorm:Plans/EmuNorm.*/Spanning_PerTensor'
filter+=':EmuScale.FactorOneWritesNothing:EmuClamp.EveryDtypeAroundVectorAndChunkEnds'
filter+=':EmuReplay.EmptyPlanStillFinalizes:EmuReplay.ClampReplaysIdentically'
filter+=':EmuDeviceScalars.*:EmuApply.*:EmuUnorderedStreams.*'
filter+=':EmuGrid.*'
# The norm's groups at every offset modulo 16 bytes, compared bit for bit
filter+=':EmuNormOffsets.*'
# Partials compared bit for bit: all a mutant that only reorders arithmetic
# can break, so such mutants run these alone (order_only below).
bitwise='Ranges/EmuExtreme.PartialsBitwiseAndNormWithinOneInAMillion/HalfExtremes'
bitwise+=':Ranges/EmuExtreme.PartialsBitwiseAndNormWithinOneInAMillion/NearFltMaxF32'
bitwise+=':Ranges/EmuExtreme.PartialsBitwiseAndNormWithinOneInAMillion/SmallChunks'
filter+=":$bitwise"
order_only=" block_tree_order small_tree_order "
# Mutants of the small-chunk runs and of the capped grid's walk: the tests
# that build such plans, alone (the others would run first and pass).
small='Ranges/EmuExtreme.PartialsBitwiseAndNormWithinOneInAMillion/SmallChunks:EmuGrid.*'
small_only=" small_chunk_too_large small_tail_skipped norm_one_chunk_per_block "
small_only+="write_one_window_per_block write_window_skips_its_first_chunk write_word_skip_on_first_flag "
small_only+="write_scan_no_barrier write_flags_rewritten_early warp_walk_half_stride "
small_only+="small_scan_wrong_chunk small_scan_no_barrier look_ahead_past_chunk "
small_only+="warp_tree_no_syncwarp warp_columns_overwritten "
# The fold-window test is slow under the sanitizers and only a mutant of
# the lane pass's windows needs it: the other mutants run without it, that
# one runs it alone (and the unmutated kernels both).
windows='EmuGrid.AnyFoldWindowGivesTheSameBits'
window_only=" window_restarts_runs fold_runs_no_barrier fold_refill_no_barrier "
# Likewise the scale launches as dependent launches: their tests alone, for
# the mutants of the waits (and the unmutated kernels).
dependent='EmuGrid.DependentScaleLaunchGivesThePlainLaunchsBits'
dependent+=':EmuAgc.WithADependentScaleLaunchEveryNormTypeMatchesTheCpuPath'
dependent_only=" scale_reads_before_wait agc_scale_without_wait "
# The adaptive kernel's mutants: the adaptive test that compares state and
# gradients bit for bit with the CPU path, each method under its own thread
# order (EmuAdaptive.ThreadOrderDoesNotChangeTheState, 40 s, runs in the
# emu label only: each of these mutants fails the first test, within 7 s).
adapt='EmuAdaptive.EveryMethodMatchesTheCpuPathBitForBit'
adapt_only=" adapt_input_no_barrier adapt_commit_no_barrier adapt_clipped_dropped "
# The AGC kernel's mutants: its tests, compared bit for bit with the CPU path.
agc='EmuAgc.EveryDtypeAndNormTypeMatchesTheCpuPathBitForBit'
agc+=':EmuAgc.WithADependentScaleLaunchEveryNormTypeMatchesTheCpuPath'
agc_only=" agc_sums_no_barrier agc_tree_no_barrier agc_factor_no_barrier "
# The counts of non-finite tensors: the policies' tests and the plan whose
# fold lanes complete non-finite tensors.
nonfinite='Policies/EmuNonfinite.*:EmuNonfiniteCount.*'
nonfinite_only=" close_nonfinite_dropped lane_nonfinite_dropped "
# Value clipping's double bound: its test alone, for the mutant that clamps
# f64 elements to the float bound (and the unmutated kernels).
clamp64='EmuClamp.DoubleBoundClampsF64ExactlyAndTheOthersToTheNearestFloat'
clamp64+=':EmuClamp.BoundPastFloatLeavesEveryBitOfTheOtherDtypes'
clamp64_only=" f64_clamped_to_float clamp_walks_past_float "
# The finalize of a gathered array: its test of many partials alone.
finalize='EmuFinalize.*'
finalize_only=" finalize_group_skips_a_leaf finalize_leaves_no_barrier finalize_groups_no_barrier "
filter+="-$windows:$dependent:$adapt:$agc:$nonfinite"

# Make kdir equal to the sources, rewriting only files that differ, so a
# rebuild recompiles what the previous mutant touched and nothing else.
fresh_copy() {
    local f base
    mkdir -p "$kdir"
    for f in "$kdir"/*; do
        [[ -e $f ]] || continue
        base=${f##*/}
        [[ -e $src/kernels/$base ]] || rm -rf "$f"
    done
    for f in "$src"/kernels/*; do
        base=${f##*/}
        cmp -s "$f" "$kdir/$base" || cp "$f" "$kdir/$base"
    done
}

# mutate FILE SED_SCRIPT: edit one line of the fresh copy; anything but
# exactly one changed line means the pattern no longer fits the source.
# Each call adds "FILE:LINE" of its line to `edits`, and to `removed` when
# the edit only deletes a barrier: the line held a lone __syncthreads(); or
# __syncwarp(); and keeps nothing but blanks and comments.
mutate() {
    local file=$kdir/$1 changed line before after
    [[ -f $file ]] || die "mutant $name: $1 does not exist"
    cp "$file" "$file.orig"
    sed -i -e "$2" "$file"
    changed=$(diff "$file.orig" "$file" | grep -c '^>' || true)
    [[ $changed -eq 1 ]] || { rm -f "$file.orig"; die "mutant $name: expected 1 changed line in $1, got $changed"; }
    line=$(cmp "$file.orig" "$file" | sed -n 's/.* line \([0-9]*\)$/\1/p' || true)
    before=$(sed -n "${line}p" "$file.orig" | code_of)
    after=$(sed -n "${line}p" "$file" | code_of)
    rm -f "$file.orig"
    edits+=("$1:$line")
    if [[ $before =~ ^__sync(threads|warp)\(\)\;$ && -z $after ]]; then
        removed+=("$1:$line")
    fi
}

# code_of: a line less its /* */ comments and blanks
code_of() { sed -e 's|/\*[^*]*\*/||g' -e 's/[[:space:]]//g'; }

# Each mutant: a name, a line saying what it plants, and the edit (one
# changed line per mutate call).
plant() {
    case $1 in
    tail_off_by_one) # scalar tail reads one element past the chunk
        mutate chunk_walk.cuh 's/^    if (tid < s\.tail)$/    if (tid <= s.tail)/' ;;
    missing_barrier) # other threads read is_last before thread 0 wrote it
        mutate norm_kernel.cu '/is_last = atomicInc/,/__syncthreads();/s/__syncthreads();/\/* barrier removed *\//' ;;
    unaligned_group_order) # an unaligned f16/bf16 batch folded as vectors 0, 1, 2, 3: another float tree
        mutate norm_kernel.cu 's/const int k = N == 4 ? (i \& 1) \* 2 + (i >> 1) : 0;/const int k = N == 4 ? i : 0;/' ;;
    norm_split_by_address) # the norm's block walk splits a chunk by its address: its groups depend on where it lies
        mutate chunk_walk.cuh 's/const gclip_split s = gclip_split_elements(count, vt::elem_bytes);/const gclip_split s = gclip_split_vectors((uintptr_t)base, count, vt::elem_bytes);/' ;;
    small_split_by_address) # a warp splits its small chunk by address, the block walk by element index
        mutate norm_kernel.cu 's/const gclip_split s = gclip_split_elements(c\.count, vt::elem_bytes);/const gclip_split s = gclip_split_vectors((uintptr_t)c.base, c.count, vt::elem_bytes);/' ;;
    misaligned_vector) # vector accesses start at the tensor start, not after the head
        mutate chunk_walk.cuh 's/(char \*)base + s\.head \* vt::elem_bytes)/(char *)base)/' ;;
    ticket_not_wrapped) # the ticket counts up for ever: the next launch finds no last block
        mutate norm_kernel.cu 's/atomicInc(t\.ticket, gridDim\.x - 1)/atomicAdd(t.ticket, 1u)/' ;;
    ticket_reset_at_end) # a ticket that counts up and that the last block resets to 0
        # when its finalize is done: two unordered launches of one plan lose
        # counts to the reset and leave it off 0, poisoning every later step
        mutate norm_kernel.cu 's/atomicInc(t\.ticket, gridDim\.x - 1)/atomicAdd(t.ticket, 1u)/'
        mutate norm_finalize.cuh 's/^\( *\)\*t\.result = slot;$/\1*t.result = slot; atomicExch(t.ticket, 0u);/' ;;
    writes_factor_one) # the scale kernel no longer skips chunks whose factor is 1
        mutate scale_kernel.cu 's/if (factor == 1\.0f ||/if (factor != factor ||/' ;;
    per_tensor_writes_factor_one) # nor, under the per-tensor op, the chunks of
        # tensors whose own factor is 1
        mutate scale_kernel.cu 's/if (per_tensor \&\& f\.factor == 1\.0f)/if (per_tensor \&\& f.factor != f.factor)/' ;;
    apply_twice) # every slot counts as holding a pending factor: applied again
        mutate gclip_norm_math.h '/gclip_factor_pending(const gclip_result_slot \*s)$/{n;s/^{$/{ return 1;/}' ;;
    apply_ticket_not_wrapped) # the apply's ticket counts up for ever
        mutate scale_kernel.cu 's/atomicInc(t\.apply_ticket, gridDim\.x - 1)/atomicAdd(t.apply_ticket, 1u)/' ;;
    scalars_from_params) # the finalize takes max_norm from the launch parameters, so a
        # replayed graph keeps the value of its capture
        mutate norm_finalize.cuh 's/^\( *\)th\.sc = gclip_resolve_scalars(&np);$/\1th.sc = gclip_resolve_scalars(\&np); th.sc.max_norm = np.max_norm;/' ;;
    f64_scaled_in_float) # f64 elements multiplied in float
        mutate scale_kernel.cu 's/return x \* (double)factor;/return (double)((float)x * factor);/' ;;
    f64_clamped_to_float) # f64 elements clamped to the float nearest a double bound
        mutate clamp_kernel.cu 's/return gclip_clamp_f64(x, bound_f64);/return gclip_clamp_f64(x, (double)bound);/' ;;
    clamp_walks_past_float) # a chunk whose bound is +Inf where it compares (past
        # FLT_MAX for f32 and halves) is walked anyway: its halves' NaNs are
        # stored back canonical
        mutate clamp_kernel.cu 's/if (v\.dtype == GCLIP_F64 ? f\.bound_f64 == INFINITY : f\.bound == INFINITY)/if (0)/' ;;
    norm_one_chunk_per_block) # a norm block walks the small chunks of its first
        # window and then only the first chunk of its range: under a capped
        # grid the others' partials are never written
        mutate norm_kernel.cu 's/^            ++c;$/            c = fin.walk_end;/' ;;
    write_one_window_per_block) # a scale or clamp block updates only its first
        # window of 256 chunks
        mutate chunk_walk.cuh 's/for (uint64_t first = blockIdx\.x; first < t\.num_chunks; first += span) {/for (uint64_t first = blockIdx.x; first < t.num_chunks; first = t.num_chunks) {/' ;;
    write_window_skips_its_first_chunk) # the block's pass over a write window's
        # other chunks starts at its second position
        mutate chunk_walk.cuh 's/for (uint32_t p = gclip_window_next_block(win, 0); /for (uint32_t p = gclip_window_next_block(win, 1); /' ;;
    write_word_skip_on_first_flag) # the block's pass skips four positions when the
        # first of them is small, whatever the other three are
        mutate chunk_walk.cuh 's/if (p % 4 == 0 \&\& w\.word\[p \/ 4\] == 0x01010101u \* GCLIP_WINDOW_WARP) {/if (p % 4 == 0 \&\& (w.word[p \/ 4] \& 0xffu) == GCLIP_WINDOW_WARP) {/' ;;
    write_scan_no_barrier) # a write kernel's warps read the window's flags with no
        # barrier after the scan that writes them
        mutate chunk_walk.cuh 's|^\( *\)__syncthreads(); /\* the window.s flags are written \*/$|\1/* barrier removed */|' ;;
    write_flags_rewritten_early) # a write kernel's thread writes the next window's
        # flag while others still read this window's
        mutate chunk_walk.cuh 's|^\( *\)__syncthreads(); /\* every thread has read the flags before they are written again \*/$|\1/* barrier removed */|' ;;
    warp_walk_half_stride) # a warp walks its chunk as if it had 16 lanes: lanes
        # 16-31 update vectors lanes 0-15 also update
        mutate chunk_walk.cuh 's/gclip_walk_chunk_by<WRITE, 32>(c, (int64_t)(threadIdx\.x % 32), f);/gclip_walk_chunk_by<WRITE, 16>(c, (int64_t)(threadIdx.x % 32), f);/' ;;
    fold_drops_pieces) # the run a lane leaves open is finished without the pieces
        # the following lanes folded
        mutate norm_finalize.cuh 's/^\( *\)acc = gclip_term_combine(acc, sh\.lane\[k\], np\.kind);$/\1(void)sh.lane[k];/' ;;
    share_batch_drops_a_position) # the lane's share, folded four positions at a
        # time, leaves out a window's last position
        mutate norm_finalize.cuh 's/if (k >= n || (k > 0 \&\& tensor == cur))/if (k + 1 >= n || (k > 0 \&\& tensor == cur))/' ;;
    lane_ticket_not_wrapped) # a fold lane's ticket counts up for ever: the next launch
        # finds no block to fold the lane
        mutate norm_kernel.cu 's/atomicInc(&t\.fold->ticket\[lane\], blocks - 1)/atomicAdd(\&t.fold->ticket[lane], 1u)/' ;;
    window_restarts_runs) # a run that goes on across a fold window's edge restarts
        # from the neutral element: its first window's chunks are lost
        mutate norm_finalize.cuh 's/double acc = goes_on ? carried : GCLIP_TERM_ZERO;/double acc = GCLIP_TERM_ZERO;/' ;;
    block_tree_order) # the block reduction pairs its values in another order: a
        # chunk's partial is no longer the CPU path's bits
        mutate block_reduce.cuh 's/gclip_term_combine(a0, a2, kind), gclip_term_combine(a1, a3, kind)/gclip_term_combine(a0, a1, kind), gclip_term_combine(a2, a3, kind)/' ;;
    small_tree_order) # a warp's small chunk pairs its columns in another order
        mutate norm_kernel.cu 's/    return gclip_term_combine(gclip_term_combine(a\[0\], a\[2\], KIND),/    return gclip_term_combine(gclip_term_combine(a[0], a[1], KIND),/' ;;
    small_chunk_too_large) # a chunk of 257 vectors goes to a warp, which reads 256
        mutate gclip_kernels.h 's/gclip_split_elements(count, es)\.vectors <= GCLIP_BLOCK_THREADS;/gclip_split_elements(count, es).vectors <= GCLIP_BLOCK_THREADS + 1;/' ;;
    small_tail_skipped) # a warp's small chunk leaves out its scalar tail
        mutate norm_kernel.cu 's/^\( *\)gclip_visit_scalar<DTYPE, false>(base, head + vectors \* vt::lanes + t, f);$/\1(void)f;/' ;;
    small_scan_wrong_chunk) # thread k of the window scan flags chunk k + 1, not
        # chunk k: a warp walks a chunk of the block's as if it were small
        mutate norm_kernel.cu 's/gclip_norm_chunk_is_small(gclip_chunk_at(t, k))/gclip_norm_chunk_is_small(gclip_chunk_at(t, k + 1 < fin.walk_end ? k + 1 : k))/' ;;
    look_ahead_past_chunk) # the look-ahead asks for 32 lines whatever the chunk's
        # size: requests past the end of a small tensor (the emulator's prefetch
        # reads the byte it names, and AddressSanitizer reports it)
        mutate chunk_walk.cuh 's/    if (line < base + (uintptr_t)v\.count \* (uintptr_t)gclip_dtype_size(v\.dtype))/    if (line < base + (uintptr_t)4096)/' ;;
    small_scan_no_barrier) # the warps read the window's flags with no barrier after
        # the scan that writes them
        mutate norm_kernel.cu 's|^\( *\)__syncthreads(); /\* the window.s flags are written \*/$|\1/* barrier removed */|' ;;
    warp_tree_no_syncwarp) # a warp's lane 0 runs the tree before its lanes have
        # written their columns
        mutate norm_kernel.cu 's|^\( *\)__syncwarp(); /\* the warp.s 32 columns are in red\.v \*/$|\1/* warp barrier removed */|' ;;
    warp_columns_overwritten) # a warp's lanes go on to the next chunk and write
        # its columns before lane 0 has read this one's
        mutate norm_kernel.cu 's|^\( *\)__syncwarp(); /\* lane 0 has read them before they are written again \*/$|\1/* warp barrier removed */|' ;;
    scale_reads_before_wait) # a dependent scale launch reads the slot's factor before
        # waiting for the norm kernel: it scales by whatever the slot held
        mutate scale_kernel.cu 's|^    gclip_wait_prior_grids();$|    /* wait moved below */|'
        mutate scale_kernel.cu 's|^    const float factor = block_factor;$|    gclip_wait_prior_grids(); const float factor = block_factor;|' ;;
    agc_scale_without_wait) # the AGC kernel's dependent scale launch reads the pieces'
        # sums without waiting for the norm launch that writes them
        mutate agc_kernel.cu 's|^    gclip_wait_prior_grids();$|    /* wait removed */|' ;;
    moved_norms_left_as_factors) # under the per-tensor op, a max_norm of 0 or +Inf read
        # at execution with an eps that must move: the close no longer turns the
        # norms the fold left into factors, so the gradients are scaled by them
        mutate norm_finalize.cuh 's/} else if (th\.moved) {/} else if (0) {/' ;;
    adapt_input_no_barrier) # the adaptive's rows read the step's input and decision
        # before thread 0 has written them to shared memory
        mutate adapt_kernel.cu '/clipped_sh = 0;/,/__syncthreads();/s/__syncthreads();/\/* barrier removed *\//' ;;
    adapt_commit_no_barrier) # thread 0 commits the state before the other rows have
        # added their clipped tensors to the block's count
        mutate adapt_kernel.cu '/every row has read the shared scalars/,/__syncthreads();/s/__syncthreads();/\/* barrier removed *\//' ;;
    close_leads_no_barrier) # the last block's close reads the lanes' leading pieces
        # before every thread has put its own in shared memory
        mutate norm_finalize.cuh 's|^\( *\)__syncthreads(); /\* every leading piece is in shared memory \*/$|\1/* barrier removed */|' ;;
    block_reduce_no_barrier) # thread 0 reads the 32 values before threads 1-31 wrote them
        mutate block_reduce.cuh 's|^    __syncthreads(); /\* the 32 values are in s\[0\.\.31\] \*/$|    /* barrier removed */|' ;;
    walk_setup_no_barrier) # a norm block's threads read the walk's end before
        # thread 0 has written it
        mutate norm_kernel.cu '/fin\.lane1 = first < last/,/__syncthreads();/s/__syncthreads();/\/* barrier removed *\//' ;;
    red_reused_no_barrier) # the block's next chunk writes `red` before thread 0
        # has read the last one's values
        mutate norm_kernel.cu 's|^\( *\)__syncthreads(); /\* .red. is reused by the next chunk \*/$|\1/* barrier removed */|' ;;
    flags_reused_no_barrier) # the next window's flags are written while threads
        # still read this window's
        mutate norm_kernel.cu 's|^\( *\)__syncthreads(); /\* .fin\.small. is the next window.s \*/$|\1/* barrier removed */|' ;;
    lane_choice_no_barrier) # the threads read the lane to fold before thread 0 has
        # chosen it
        mutate norm_kernel.cu '/fin\.next = lane + 1;/,/__syncthreads();/s/__syncthreads();/\/* barrier removed *\//' ;;
    fold_window_no_barrier) # a lane pass reads its window before it is staged
        mutate norm_finalize.cuh 's|^\( *\)__syncthreads(); /\* the window and the carried run are in place \*/$|\1/* barrier removed */|' ;;
    fold_runs_no_barrier) # thread 0 chains the window's runs before the threads
        # have put their accumulators in place
        mutate norm_finalize.cuh 's|^\( *\)__syncthreads(); /\* every run.s accumulator is at its first position \*/$|\1/* barrier removed */|' ;;
    fold_refill_no_barrier) # the next window is staged while thread 0 still
        # chains this one
        mutate norm_finalize.cuh 's|^\( *\)__syncthreads(); /\* the window may be refilled \*/$|\1/* barrier removed */|' ;;
    close_shares_no_barrier) # the close's shares overwrite `sh.lane` while threads
        # still read the leading pieces there
        mutate norm_finalize.cuh 's|^\( *\)__syncthreads(); /\* the leading pieces are read: sh\.lane takes the shares \*/$|\1/* barrier removed */|' ;;
    close_tree_input_no_barrier) # the close's tree reads the shares before every
        # thread has written its own
        mutate norm_finalize.cuh '/^    sh\.lane\[tid\] = th\.total;$/{n;s/__syncthreads();/\/* barrier removed *\//}' ;;
    close_tree_no_barrier) # the close's tree reads a level before the one below
        # it is complete
        mutate norm_finalize.cuh 's|^\( *\)__syncthreads(); /\* the last one also completes sh\.nonfinite \*/$|\1/* barrier removed */|' ;;
    skip_all_no_barrier) # under the per-tensor op the threads read whether to skip
        # before thread 0 has decided it
        mutate norm_finalize.cuh 's|^\( *\)__syncthreads(); /\* sh\.skip_all is set \*/$|\1/* barrier removed */|' ;;
    close_nonfinite_dropped) # the close counts no thread's non-finite terms
        mutate norm_finalize.cuh 's/^\( *\)atomicAdd(&sh\.nonfinite, th\.nonfinite);$/\1(void)th.nonfinite;/' ;;
    lane_nonfinite_dropped) # a lane pass counts no thread's non-finite terms
        mutate norm_finalize.cuh 's/^\( *\)atomicAdd(&sh\.lane_nonfinite, th\.nonfinite);$/\1(void)0;/' ;;
    block_reduce_input_no_barrier) # threads 0-31 read the block's values before the
        # others wrote them
        mutate block_reduce.cuh '/^    s\[t\] = v;$/{n;s/__syncthreads();/\/* barrier removed *\//}' ;;
    scale_factor_no_barrier) # a scale block's threads read the factor before thread
        # 0 has read it from the slot
        mutate scale_kernel.cu '/block_factor = gclip_block_factor(t, np);/{n;s/__syncthreads();/\/* barrier removed *\//}' ;;
    agc_sums_no_barrier) # an AGC piece's tree reads the threads' sums before they
        # are all written
        mutate agc_kernel.cu '/^    gsh\[threadIdx\.x\] = gs;$/{n;s/__syncthreads();/\/* barrier removed *\//}' ;;
    agc_tree_no_barrier) # an AGC piece's tree reads a level before the one below
        # it is complete
        mutate agc_kernel.cu 's/^        __syncthreads();$/        \/* barrier removed *\//' ;;
    agc_factor_no_barrier) # an AGC block's threads read the unit's factor before
        # thread 0 has computed it
        mutate agc_kernel.cu '/keep_sh = keep;/,/__syncthreads();/s/__syncthreads();/\/* barrier removed *\//' ;;
    adapt_clipped_dropped) # the adaptive kernel's rows no longer count the tensors
        # they clipped
        mutate adapt_kernel.cu 's/^\( *\)atomicAdd(&clipped_sh, clipped);$/\1(void)clipped;/' ;;
    finalize_group_skips_a_leaf) # a group of the finalize's fold leaves out its
        # last leaf
        mutate finalize_kernel.cu 's/(&leaves\[tid \* GCLIP_FINALIZE_FAN\], GCLIP_FINALIZE_FAN, np\.kind)/(\&leaves[tid * GCLIP_FINALIZE_FAN], GCLIP_FINALIZE_FAN - 1u, np.kind)/' ;;
    finalize_leaves_no_barrier) # the finalize's groups read leaves that other
        # threads have not written yet
        mutate finalize_kernel.cu 's|^\( *\)__syncthreads(); /\* every leaf is in shared memory \*/$|\1/* barrier removed */|' ;;
    finalize_groups_no_barrier) # the finalize's total reads groups that warp 0 has
        # not written yet
        mutate finalize_kernel.cu 's|^\( *\)__syncthreads(); /\* every group is in shared memory \*/$|\1/* barrier removed */|' ;;
    *) die "unknown mutant $1" ;;
    esac
}

# grouped by the file they edit: a rebuild recompiles what the previous
# mutant and this one touched, once when both edit the same file
all_mutants=(writes_factor_one per_tensor_writes_factor_one apply_ticket_not_wrapped
             f64_scaled_in_float scale_reads_before_wait agc_scale_without_wait f64_clamped_to_float
             clamp_walks_past_float
             missing_barrier ticket_not_wrapped norm_one_chunk_per_block lane_ticket_not_wrapped
             small_tree_order small_tail_skipped small_split_by_address small_scan_wrong_chunk
             small_scan_no_barrier warp_tree_no_syncwarp warp_columns_overwritten
             ticket_reset_at_end
             scalars_from_params moved_norms_left_as_factors fold_drops_pieces window_restarts_runs share_batch_drops_a_position
             close_leads_no_barrier
             block_tree_order block_reduce_no_barrier
             tail_off_by_one misaligned_vector norm_split_by_address unaligned_group_order
             write_one_window_per_block
             write_window_skips_its_first_chunk write_word_skip_on_first_flag
             write_scan_no_barrier write_flags_rewritten_early
             warp_walk_half_stride small_chunk_too_large look_ahead_past_chunk
             apply_twice adapt_input_no_barrier adapt_commit_no_barrier adapt_clipped_dropped
             walk_setup_no_barrier red_reused_no_barrier flags_reused_no_barrier
             lane_choice_no_barrier fold_window_no_barrier fold_runs_no_barrier
             fold_refill_no_barrier close_shares_no_barrier close_tree_input_no_barrier
             close_tree_no_barrier skip_all_no_barrier close_nonfinite_dropped
             lane_nonfinite_dropped block_reduce_input_no_barrier scale_factor_no_barrier
             agc_sums_no_barrier agc_tree_no_barrier agc_factor_no_barrier
             finalize_group_skips_a_leaf finalize_leaves_no_barrier finalize_groups_no_barrier)
if [[ $# -gt 0 ]]; then mutants=("$@"); else mutants=("${all_mutants[@]}"); fi

build_tests() {
    cmake --build "$build" -j "$jobs" --target gclip_emu_mutant_test >"$work/build.log" 2>&1 \
        || { tail -40 "$work/build.log" >&2; die "build failed ($1)"; }
}

# run_tests LOG [FILTER]: status of the filtered kernel tests, run as
# $shards GoogleTest shards side by side; the first shard that fails stops
# the others.
run_tests() {
    local log=$1 tests=${2:-$filter} i pid rc failed=0
    local -A running=()
    for ((i = 0; i < shards; i++)); do
        GCLIP_EMU_DROP_BARRIER=${dropped:-} GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i timeout "$limit" \
            "$program" --gtest_filter="$tests" \
            --gtest_fail_fast >"$log.$i" 2>&1 &
        running[$!]=$i
    done
    while ((${#running[@]} > 0)); do
        rc=0
        wait -n -p pid "${!running[@]}" || rc=$?
        unset "running[$pid]"
        if ((rc != 0)); then
            failed=$rc
            for pid in "${!running[@]}"; do kill "$pid" 2>/dev/null || true; done
            wait "${!running[@]}" 2>/dev/null || true
            break
        fi
    done
    for ((i = 0; i < shards; i++)); do cat "$log.$i"; rm -f "$log.$i"; done >"$log"
    return $failed
}

# the first lines that say why a run failed
why() {
    grep -m 3 -E 'Failure|runtime error|ERROR: AddressSanitizer|divergent|SEGV|Segmentation|results depend|ticket' "$1" \
        | sed 's/^/      /' || true
}

# Every edit must apply before anything is built: a stale pattern fails here.
# A mutant whose one edit deletes a barrier runs without a rebuild: the
# emulator skips that call site (GCLIP_EMU_DROP_BARRIER, simt_emu.h), which
# is what the deleted line would do. These run first, on the unmutated
# program; the others rebuild the kernels they edit.
declare -A drop=()
rebuilt=()
for name in "${mutants[@]}"; do
    fresh_copy
    edits=() removed=()
    plant "$name"
    if [[ ${#edits[@]} -eq 1 && ${#removed[@]} -eq 1 ]]; then
        drop[$name]=${removed[0]}
    else
        rebuilt+=("$name")
    fi
done
ordered=()
for name in "${mutants[@]}"; do
    if [[ -n ${drop[$name]:-} ]]; then ordered+=("$name"); fi
done
ordered+=("${rebuilt[@]}")
name=unmutated
fresh_copy
t0=$SECONDS
build_tests unmutated
t1=$SECONDS
# every test any mutant runs, in one run: its shards share the load better
if ! run_tests "$work/unmutated.log" "${filter%%-*}:$windows:$dependent:$adapt:$agc:$nonfinite:$clamp64:$finalize"; then
    why "$work/unmutated.log"
    die "the unmutated kernels fail the tests; see $work/unmutated.log"
fi
echo "unmutated kernels: tests pass (build $((t1 - t0)) s, tests $((SECONDS - t1)) s)"

survivors=0
for name in "${ordered[@]}"; do
    t0=$SECONDS
    dropped=${drop[$name]:-}
    if [[ -n $dropped ]]; then
        how="barrier at ${dropped} skipped"
    else
        fresh_copy
        edits=() removed=()
        plant "$name"
        build_tests "$name"
        how="build $((SECONDS - t0)) s"
    fi
    t1=$SECONDS
    rc=0
    tests=$filter
    [[ $order_only == *" $name "* ]] && tests=$bitwise
    [[ $window_only == *" $name "* ]] && tests=$windows
    [[ $dependent_only == *" $name "* ]] && tests=$dependent
    [[ $adapt_only == *" $name "* ]] && tests=$adapt
    [[ $agc_only == *" $name "* ]] && tests=$agc
    [[ $nonfinite_only == *" $name "* ]] && tests=$nonfinite
    [[ $clamp64_only == *" $name "* ]] && tests=$clamp64
    [[ $finalize_only == *" $name "* ]] && tests=$finalize
    [[ $small_only == *" $name "* ]] && tests=$small-$windows:$dependent
    run_tests "$work/$name.log" "$tests" || rc=$?
    when="$how, tests $((SECONDS - t1)) s"
    if [[ $rc -eq 0 ]]; then
        echo "SURVIVED $name: the tests pass with this bug planted ($when)"
        survivors=$((survivors + 1))
    else
        echo "caught   $name (exit $rc; $when)"
        why "$work/$name.log"
    fi
done

fresh_copy # leave the work tree matching the sources
if [[ $survivors -ne 0 ]]; then
    echo "$survivors of ${#mutants[@]} planted bugs went unnoticed"
    exit 1
fi
echo "all ${#mutants[@]} planted bugs caught"
