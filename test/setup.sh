# shellcheck shell=bash
# Shared set-up of ./test/run.sh and ./samples/run.sh: install what is missing, configure, build.
# Usage: . test/setup.sh; coproc_setup BUILD_DIR [meson options...]
set -euo pipefail

COPROC_PACKAGES=(g++ meson ninja-build pkg-config cmake libasio-dev libcereal-dev doctest-dev python3
    libopenmpi-dev openmpi-bin) # Open MPI: mpi_pool (-Dmpi=auto builds it where MPI is found)
# ./test/run.sh also builds and tests with clang (adds these to COPROC_PACKAGES).
# shellcheck disable=SC2034 # used by run.sh
COPROC_CLANG=clang++-19
# shellcheck disable=SC2034
COPROC_CLANG_PACKAGES=(clang-19 libclang-rt-19-dev) # and its sanitizer runtimes

coproc_install_packages() {
    local missing=()
    for p in "${COPROC_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
        return 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# coproc_build DIR [meson setup options...]: configure DIR once, then build it (only the
# targets in $COPROC_TARGETS when set).
coproc_build() {
    local dir=$1
    shift
    if [ ! -f "$dir/build.ninja" ]; then
        CXX=${CXX:-g++} meson setup "$dir" "$@" >/dev/null
    fi
    # shellcheck disable=SC2086
    ninja -C "$dir" ${COPROC_TARGETS:-} | tail -n 1
}
