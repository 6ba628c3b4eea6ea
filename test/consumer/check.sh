#!/usr/bin/env bash
# Builds test/consumer against this checkout the three ways a user's project can, and runs it:
#   check.sh subproject                         as a Meson subproject (subprojects/coproc)
#   check.sh pkg-config BUILD_DIR PREFIX LIBDIR installed from BUILD_DIR, found by pkg-config
#   check.sh cmake BUILD_DIR PREFIX LIBDIR      installed from BUILD_DIR, find_package(coproc)
# The installed ways `meson install --destdir` into a temporary directory. $CXX is the compiler.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:-subproject}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/test/consumer/." "$work/"
CXX=${CXX:-g++}

if [ "$mode" = subproject ]; then
    mkdir -p "$work/subprojects"
    ln -s "$src" "$work/subprojects/coproc"
    # Without debug info: the build of coproc inside takes a third less time.
    CXX=$CXX meson setup -Ddebug=false "$work/build" "$work" >/dev/null
    ninja -C "$work/build" >/dev/null
    "$work/build/consumer"
    echo "consumer: built against coproc as a subproject and ran"
    exit 0
fi

build=$2 prefix=$3 libdir=$4
root=$work/root$prefix
meson install -C "$build" --no-rebuild --quiet --destdir "$work/root" >/dev/null
export LD_LIBRARY_PATH=$root/$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
case $mode in
pkg-config)
    # The .pc file names $prefix; point it at the staged copy.
    flags=$(PKG_CONFIG_PATH=$root/$libdir/pkgconfig \
        pkg-config --define-variable=prefix="$root" --cflags --libs coproc)
    # shellcheck disable=SC2086
    $CXX "$work/consumer.cpp" -o "$work/consumer" $flags
    ;;
cmake)
    cmake -S "$work" -B "$work/build" -G Ninja -DCMAKE_CXX_COMPILER="$CXX" \
        -DCMAKE_PREFIX_PATH="$root" >/dev/null
    cmake --build "$work/build" >/dev/null
    cp "$work/build/consumer" "$work/consumer"
    ;;
*)
    echo "check.sh: unknown way in '$mode' (subproject, pkg-config or cmake)" >&2
    exit 2
    ;;
esac
"$work/consumer"
echo "consumer: built against the installed coproc through $mode and ran"
