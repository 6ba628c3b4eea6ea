#!/usr/bin/env bash
# Fuzzes coproc's frame and payload decoders with libFuzzer for SECONDS (default 300).
# Not part of ./test/run.sh (CI time); new crashes land in test/fuzz/regressions/, which the
# regular suite replays (fuzz_regression test).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-300}
. test/setup.sh
COPROC_PACKAGES+=(clang libclang-rt-14-dev)
coproc_install_packages
if [ ! -f build-fuzz/build.ninja ]; then
    CXX=clang++ meson setup build-fuzz -Dfuzz=true -Dtests=false -Dsamples=false -Dbench=false >/dev/null
fi
ninja -C build-fuzz test/fuzz/fuzz_frames | tail -n 1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
FUZZ_WRITE_CORPUS=test/fuzz/corpus build-fuzz/test/fuzz/fuzz_frames -runs=0 test/fuzz/corpus >/dev/null 2>&1
# Inputs up to 16 KiB from the start; no decode of one may allocate 8 MiB at once (a length prefix
# that asks for far more memory than the bytes that follow it is what this catches).
build-fuzz/test/fuzz/fuzz_frames -max_total_time="$seconds" -max_len=16384 -len_control=0 \
    -rss_limit_mb=1024 -malloc_limit_mb=8 -artifact_prefix=test/fuzz/regressions/ "$work" test/fuzz/corpus test/fuzz/regressions 2>&1 | tail -n 5
echo "fuzz: ran ${seconds}s; crashes (if any) are in test/fuzz/regressions/"
