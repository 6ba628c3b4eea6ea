#!/usr/bin/env bash
# Installs what is missing (Debian 12, as root), builds and runs the whole test suite.
# Ends with one line: "tests: N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. test/setup.sh
coproc_install_packages

logs=()
run_suite() { # run_suite NAME BUILD_DIR [meson options...]
    local name=$1 dir=$2
    shift 2
    echo "== $name build ($dir)"
    coproc_build "$dir" -Dsamples=true -Dbench=true "$@"
    rm -f "$dir/meson-logs/testlog.json"
    meson test -C "$dir" --no-rebuild --print-errorlogs ${COPROC_TEST_ARGS:-} | grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout)" || true
    logs+=("$dir/meson-logs/testlog.json")
}

run_suite release build

read -r passed failed < <(python3 test/count.py "${logs[@]}")
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
