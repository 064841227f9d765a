#!/usr/bin/env bash
# Install a configured gclip build into a temporary prefix, then build and run
# a consumer against it twice: with find_package(gclip) and with pkg-config.
set -euo pipefail
build=${1:?usage: check_install.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$here/consumer" -B "$prefix/consumer-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$prefix/consumer-build" >/dev/null
"$prefix/consumer-build/consumer"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cc -std=c11 "$here/consumer/main.c" $(pkg-config --cflags gclip) \
   $(pkg-config --libs --static gclip) -L/usr/local/cuda/lib64 -o "$prefix/consumer-pc"
"$prefix/consumer-pc"
echo "install check passed: find_package and pkg-config"
