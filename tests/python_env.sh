#!/usr/bin/env bash
# Create (or reuse) the Python environment of the gclip package and install
# the package from this checkout into it. The last line printed on stdout is
# the path of the environment's python; everything else goes to stderr.
#
#   GCLIP_VENV           where the environment lives
#                        (default: $HOME/.cache/gclip/venv, outside the clone)
#   GCLIP_ENABLE_CUDA    ON/OFF: build the CUDA backend (default: if nvcc is found)
#   GCLIP_PY_CONSTRAINTS pip constraints file of the third-party packages
#                        (default: python/constraints.txt; "none": unpinned)
#   GCLIP_PY_BUILD_DIR   CMake build directory of the package
#                        (default: $GCLIP_VENV/../build-<hash of the checkout path>)
#   GCLIP_PY_CUDA_ARCHS  CMAKE_CUDA_ARCHITECTURES of the package's CUDA backend;
#                        "project": the project's list (sm_75 to sm_90 code,
#                        compute_90 PTX). Default: the project's list when
#                        nvidia-smi lists a GPU, else 75 (sm_75 code and its
#                        PTX, which newer GPUs compile when they load it): no
#                        test runs the kernels without a GPU, and the other
#                        four generations cost nvcc a minute or more
#
# Usage:  PY=$(tests/python_env.sh) && "$PY" -m pytest python/tests
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${GCLIP_VENV:-$HOME/.cache/gclip/venv}
python=${PYTHON:-python3}

# Third-party requirements. Changing this list rebuilds the environment.
requirements=(torch numpy pytest "jax[cpu]" scikit-build-core matplotlib zclip==1.0.0 autoclip==0.2.1 pytorch-optimizer timm)
# Their versions, and those of everything they pull in, are pinned by
# python/constraints.txt (GCLIP_PY_CONSTRAINTS=none installs the newest).
constraints=${GCLIP_PY_CONSTRAINTS:-$root/python/constraints.txt}
pin=()
[[ "$constraints" != none ]] && pin=(-c "$constraints")
stamp_text="gclip-env 1: ${requirements[*]}"
stamp="$venv/.gclip-env-complete"

log() { printf 'python_env: %s\n' "$*" >&2; }

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$stamp_text" ]]; then
    log "reusing $venv"
else
    log "creating $venv (torch from PyPI: a large first download)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    start=$(date +%s)
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet "${pin[@]}" "${requirements[@]}" >&2
    log "third-party packages installed in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
    printf '%s\n' "$stamp_text" >"$stamp"
fi

# Added after the list above was stamped: installed into an existing
# environment when missing, so adding one does not rebuild the environment.
extras=(optax)
for pkg in "${extras[@]}"; do
    if ! "$venv/bin/python" -c "import $pkg" 2>/dev/null; then
        log "installing $pkg"
        "$venv/bin/python" -m pip install --quiet "${pin[@]}" "$pkg" >&2
    fi
done

# An environment made before a pin moved (or before the pins) is brought to
# the pinned versions; when it has them, pip only checks (well under 1 s).
if (( ${#pin[@]} )); then
    "$venv/bin/python" -m pip install --quiet "${pin[@]}" "${requirements[@]}" "${extras[@]}" >&2
fi

# The package itself, from this checkout, every time (CMake rebuilds only
# what changed in its persistent build directory).
hash=$(printf '%s' "$root" | cksum | cut -d' ' -f1)
build_dir=${GCLIP_PY_BUILD_DIR:-$(dirname "$venv")/build-$hash}
archs=${GCLIP_PY_CUDA_ARCHS:-}
if [[ -z $archs ]]; then
    archs=75
    # read whole first: grep -q quitting early could leave nvidia-smi a
    # SIGPIPE, which pipefail would count as no GPU
    gpus=$(timeout 20 nvidia-smi -L 2>/dev/null || true)
    if grep -q '^GPU ' <<<"$gpus"; then archs=project; fi
fi
# the project's list: drop a value an earlier run left in the build's cache
arch_setting=(--config-settings=cmake.args=-UCMAKE_CUDA_ARCHITECTURES)
if [[ $archs != project ]]; then
    arch_setting=(--config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES="$archs")
fi
log "installing gclip from $root/python (build dir $build_dir, CUDA architectures: $archs)"
"$venv/bin/python" -m pip install --quiet --no-build-isolation --no-deps \
    --config-settings=build-dir="$build_dir" "${arch_setting[@]}" "$root/python" >&2

echo "$venv/bin/python"
