#!/usr/bin/env bash
# Install a configured gclip build into a temporary prefix, then build and run
# a consumer against it three times: with find_package(gclip) from a C
# project and from a C++-only one, and with pkg-config, each asking for the
# version of project() in the top-level CMakeLists.txt.
set -euo pipefail
build=${1:?usage: check_install.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(sed -nE 's/^project\(gclip VERSION ([0-9]+\.[0-9]+\.[0-9]+).*/\1/p' "$root/CMakeLists.txt")
[ -n "$version" ] || { echo "check_install: no project(gclip VERSION ...) in $root/CMakeLists.txt" >&2; exit 2; }
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$here/consumer" -B "$prefix/consumer-build" -DCMAKE_PREFIX_PATH="$prefix" \
    -DGCLIP_VERSION_WANTED="$version" >/dev/null
cmake --build "$prefix/consumer-build" >/dev/null
"$prefix/consumer-build/consumer"
cmake -S "$here/consumer_cxx" -B "$prefix/consumer-cxx-build" -DCMAKE_PREFIX_PATH="$prefix" \
    -DGCLIP_VERSION_WANTED="$version" >/dev/null
cmake --build "$prefix/consumer-cxx-build" >/dev/null
"$prefix/consumer-cxx-build/consumer_cxx"
pc=$(find "$prefix" -name gclip.pc -print -quit)
[ -n "$pc" ] || { echo "check_install: no gclip.pc under $prefix" >&2; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc")
pkg-config --exact-version="$version" gclip ||
    { echo "check_install: pkg-config has gclip $(pkg-config --modversion gclip), not $version" >&2; exit 1; }
cc -std=c11 "$here/consumer/main.c" $(pkg-config --cflags gclip) \
   $(pkg-config --libs --static gclip) -o "$prefix/consumer-pc"
"$prefix/consumer-pc"
echo "install check passed: find_package (C and C++ projects) and pkg-config, version $version"
