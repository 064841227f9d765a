# loop_stats.awk - statistics of the main loop of one function's SASS
# (cuobjdump -sass -fun NAME), for kernels/check_kernels.sh.
#
# The main loop is the backward branch's range [target, branch] holding the
# most 16-byte vector loads (LDG.E.128, the batch of the chunk walk);
# among equals, the shortest. Inside it, a group's exact path (read again
# with volatile loads, LDG.E.STRONG) is skipped by a forward branch on the
# common path: the range from that branch to its target is left out, so the
# counts are those of an iteration in which every group is in the safe range.
#
# Prints one line:  vec_loads=N fp64=N f2f64=N cvt16=N pack=N branches=N
#   fp64      instructions on doubles (D*, and conversions to or from F64)
#   f2f64     conversions from f32 to f64 (F2F.F64.F32)
#   cvt16     f16 conversions: HADD2.F32 (f16 to f32), F2F to or from F16
#   pack      paired conversions to f16x2/bf16x2 (F2FP...)
#   branches  BRA instructions
function hexval(s,    n, i, c) {
    s = tolower(s); sub(/^0x/, "", s); n = 0
    for (i = 1; i <= length(s); i++) { c = index("0123456789abcdef", substr(s, i, 1)) - 1; n = n * 16 + c }
    return n
}
/^[ \t]+\/\*[0-9a-f]+\*\// {
    match($0, /\/\*[0-9a-f]+\*\//)
    a = hexval(substr($0, RSTART + 2, RLENGTH - 4))
    line = substr($0, RSTART + RLENGTH)
    sub(/;.*/, "", line)
    n++; addr[n] = a; text[n] = line
    if (line ~ /(^|[ \t])BRA[ \t]/) {
        t = line; sub(/.*BRA[ \t]+/, "", t); sub(/[ \t].*/, "", t)
        target[n] = hexval(t)
    }
}
END {
    best_loads = -1
    for (i = 1; i <= n; i++) {
        if (!(i in target) || target[i] >= addr[i]) continue
        loads = 0
        for (j = 1; j <= n; j++)
            if (addr[j] >= target[i] && addr[j] <= addr[i] && text[j] ~ /LDG\.E\.128/ && text[j] !~ /STRONG/) loads++
        span = addr[i] - target[i]
        if (loads > best_loads || (loads == best_loads && span < best_span)) {
            best_loads = loads; best_span = span; lo = target[i]; hi = addr[i]
        }
    }
    if (best_loads < 0) { print "vec_loads=0 fp64=0 f2f64=0 cvt16=0 pack=0 branches=0 noloop=1"; exit }
    # the exact path: from the forward branch before the first volatile load to its target
    cold_lo = -1; cold_hi = -1
    for (j = 1; j <= n; j++) {
        if (addr[j] < lo || addr[j] > hi) continue
        if (text[j] ~ /LDG\.E\.STRONG/) {
            for (k = j - 1; k >= 1 && addr[k] >= lo; k--)
                if ((k in target) && target[k] > addr[k]) { cold_lo = addr[k] + 1; cold_hi = target[k]; break }
            break
        }
    }
    fp64 = f2f64 = cvt16 = pack = br = 0
    for (j = 1; j <= n; j++) {
        if (addr[j] < lo || addr[j] > hi) continue
        if (cold_lo >= 0 && addr[j] >= cold_lo && addr[j] < cold_hi) continue
        op = text[j]; sub(/^[ \t]*(@!?U?P[0-9T]+[ \t]+)?/, "", op); sub(/[ \t].*/, "", op)
        if (op ~ /^D(ADD|FMA|MUL|MNMX|SETP|MUL|RCP)/ || op ~ /F64/) fp64++
        if (op == "F2F.F64.F32") f2f64++
        if (op ~ /^HADD2\.F32/ || (op ~ /^F2F\./ && op ~ /F16/)) cvt16++
        if (op ~ /^F2FP/) pack++
        if (op ~ /^BRA/) br++
    }
    printf "vec_loads=%d fp64=%d f2f64=%d cvt16=%d pack=%d branches=%d\n", best_loads, fp64, f2f64, cvt16, pack, br
}
