#!/usr/bin/env bash
# check_exports.sh NM LIBRARY INCLUDE_DIR
#
# Compares the dynamic symbols a shared gclip library defines
# (nm -D --defined-only) with the functions that INCLUDE_DIR/*.h declare with
# GCLIP_API, and fails unless the two sets are equal: a symbol exported but
# not declared is an internal one leaking, a declared function not exported
# is missing from the ABI.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 NM LIBRARY INCLUDE_DIR" >&2
    exit 2
fi
nm=$1
lib=$2
include_dir=$3
shopt -s nullglob
headers=("$include_dir"/*.h)
if [ ${#headers[@]} -eq 0 ]; then
    echo "check_exports: no headers in $include_dir" >&2
    exit 2
fi

# Declarations: comments and preprocessor lines removed, then every
# `GCLIP_API <type> name(` with its name taken as the last identifier before
# the parenthesis.
declared() {
    local h
    for h in "$@"; do
        sed -zE 's:/\*([^*]|\*+[^*/])*\*+/: :g' "$h" |
            sed -E 's://.*$::' |
            awk '{ if (cont || $0 ~ /^[ \t]*#/) { cont = ($0 ~ /\\$/); next } print }'
        echo
    done | tr '\n' ' ' |
        { grep -oE '(^|[^A-Za-z0-9_])GCLIP_API[^A-Za-z0-9_][^;{}()]*\(' || true; } |
        sed -E 's/^.*[^A-Za-z0-9_]([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*\($/\1/' |
        sort -u
}

# Exports: every defined dynamic symbol but the ones the linker defines in
# any shared object.
exported() {
    "$nm" -D --defined-only "$1" |
        awk 'NF >= 3 { sub(/@.*/, "", $3); print $3 }' |
        grep -vxE '_init|_fini|_edata|_end|__bss_start' |
        sort -u || true
}

want=$(declared "${headers[@]}")
have=$(exported "$lib")
if [ -z "$want" ]; then
    echo "check_exports: no function is declared with GCLIP_API in ${headers[*]}"
    echo "exported by $lib: $(echo $have)"
    exit 1
fi

extra=$(comm -13 <(echo "$want") <(echo "$have"))
missing=$(comm -23 <(echo "$want") <(echo "$have"))
status=0
if [ -n "$extra" ]; then
    echo "exported by $lib but not declared with GCLIP_API:"
    "$nm" -D --defined-only "$lib" | awk 'NF >= 3 { s = $3; sub(/@.*/, "", s); print s, $2 }' |
        grep -wF "$extra" | sed 's/^/  /' || true
    status=1
fi
if [ -n "$missing" ]; then
    echo "declared with GCLIP_API but not exported by $lib:"
    echo "$missing" | sed 's/^/  /'
    status=1
fi
if [ $status -eq 0 ]; then
    echo "check_exports: $lib exports exactly the $(echo "$want" | wc -l) functions declared with GCLIP_API"
fi
exit $status
