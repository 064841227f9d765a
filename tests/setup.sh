# tests/setup.sh - everything the test suite needs on a fresh Debian machine.
# tests/run_all.sh sources it before its first stage, so that its changes to
# PATH and the environment reach every stage:
#
#   - the Debian packages the stages use: the missing ones are installed with
#     apt-get when running as root; otherwise they are named and the run stops
#     (on a system without dpkg nothing is checked);
#   - /usr/local/cuda/bin on PATH when nvcc is there and not yet on PATH (the
#     CUDA toolkit is optional: without nvcc the CUDA stages are skipped);
#   - the Python environment (gclip_setup_python below).
#
#   . tests/setup.sh       the same set-up for a shell of your own

# build tools; GoogleTest; clang with libFuzzer and OpenMP (the clang build and
# the fuzz stage); valgrind; nm (the export check); pkg-config (install check);
# Open MPI (gclip::dist and its `dist` label); python3-venv and python3-dev
# (the Python stage; the headers build gclip._torch_fast); ccache (the
# compiler cache of tests/run_all.sh)
gclip_setup_debian_packages=(cmake g++ make libgtest-dev clang libclang-rt-dev libomp-dev
                             valgrind binutils pkg-config libopenmpi-dev openmpi-bin
                             python3-venv python3-dev ccache)

gclip_setup_packages() {
    command -v dpkg >/dev/null 2>&1 || return 0
    local pkg missing=()
    for pkg in "${gclip_setup_debian_packages[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages: ${missing[*]}" >&2
        echo "setup: install them as root: apt-get install ${missing[*]}" >&2
        return 1
    fi
    echo "setup: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

gclip_setup_cuda_path() {
    if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
        export PATH=/usr/local/cuda/bin:$PATH
    fi
}

# ---- Python environment ------------------------------------------------------
# The virtual environment of the Python stage (tests/python_env.sh: created on
# the first run, outside the clone, and reused; torch, numpy, jax, pytest and
# the reference packages from PyPI), with the gclip package of this checkout
# installed into it. GCLIP_PYTHON names its interpreter.
gclip_setup_python() {
    GCLIP_PYTHON=$(tests/python_env.sh | tail -n 1)
    export GCLIP_PYTHON
}

gclip_setup_packages
gclip_setup_cuda_path
# GCLIP_SETUP_PYTHON=0: the packages and PATH only (enough for the C library,
# its tests and the main job)
if [ "${GCLIP_SETUP_PYTHON:-1}" != 0 ]; then
    gclip_setup_python
fi
