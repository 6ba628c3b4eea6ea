#!/usr/bin/env bash
# Builds test/consumer against this checkout as a Meson subproject and runs it.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/test/consumer/." "$work/"
mkdir -p "$work/subprojects"
ln -s "$src" "$work/subprojects/coproc"
CXX=${CXX:-g++} meson setup "$work/build" "$work" >/dev/null
ninja -C "$work/build" >/dev/null
"$work/build/consumer"
echo "consumer: built against coproc as a subproject and ran"
