#!/usr/bin/env bash
# Installs what is missing (Debian 12, as root), builds and runs the whole test suite three
# ways: a normal build with g++ (with samples and bench), a clang build under AddressSanitizer
# and UBSan, and a g++ build under ThreadSanitizer for the tests that use threads. Warnings in the
# library are errors.
# Ends with one line: "tests: N passed, M failed"; exits non-zero on any failure.
#   COPROC_QUICK=1 ./test/run.sh     the normal g++ build only
set -euo pipefail
cd "$(dirname "$0")/.."
. test/setup.sh
[ -n "${COPROC_QUICK:-}" ] || COPROC_PACKAGES+=("${COPROC_CLANG_PACKAGES[@]}")
coproc_install_packages

logs=()
failed_builds=0
run_suite() { # run_suite NAME BUILD_DIR "meson test args" [meson setup options...]
    local name=$1 dir=$2 args=$3 start=$SECONDS
    shift 3
    echo "== $name ($dir)"
    if ! coproc_build "$dir" "$@"; then
        echo "!! $name: build failed"
        failed_builds=$((failed_builds + 1))
        return
    fi
    rm -f "$dir/meson-logs/testlog.json"
    # shellcheck disable=SC2086
    meson test -C "$dir" --no-rebuild --print-errorlogs $args |
        grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout):" || true
    logs+=("$dir/meson-logs/testlog.json")
    echo "== $name: $((SECONDS - start)) s"
}

# Optimized as a user's default build, without debug info: -g makes g++ take half as long again
# over the coroutine-heavy tests, and a failing test reports through its own messages. The
# library, samples and bench are built at -O2, the test binaries at -O1 (test/meson.build).
run_suite release build "--no-suite mpi" -Ddebug=false -Dsamples=true -Dbench=true \
    -Dwerror_library=true

# mpi_pool under mpirun: on one host, over two fake hosts, spawned, refused, interrupted (the
# suite exists where the build found MPI), with its own log beside the release suite's.
if grep -q '"coproc:mpi"' build/meson-info/intro-tests.json 2>/dev/null; then
    echo "== mpi_pool, Open MPI (build)"
    rm -f build/meson-logs/mpilog.json
    meson test -C build --no-rebuild --print-errorlogs --suite mpi --logbase mpilog |
        grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout):" || true
    logs+=(build/meson-logs/mpilog.json)
fi

if [ -z "${COPROC_QUICK:-}" ]; then
    # Sanitizer builds: -O0 without debug info compiles in about half the time; symbols still
    # name the functions in a report.
    sanitized=(-Doptimization=0 -Ddebug=false -Db_lundef=false -Dsamples=false -Dbench=false)
    # The whole suite built by clang (its own warnings, its own coroutine lowering) under
    # AddressSanitizer and UBSan, except the consumer builds: how a project takes coproc in does
    # not depend on the compiler, and the release stage has checked it. clang compiles the
    # coroutine-heavy tests with the sanitizers in half the time g++ takes.
    # alloc_dealloc_mismatch: Asio 1.22's recycling allocator frees with std::free blocks that
    # some of its paths got from operator new (a known false positive of Asio's, not ours).
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:alloc_dealloc_mismatch=0
    export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
    CXX=$COPROC_CLANG run_suite "$COPROC_CLANG, address,undefined sanitizers" build-asan \
        "--no-suite consumer" -Db_sanitize=address,undefined -Dwerror_library=true \
        "${sanitized[@]}"
    # The tests whose parent runs several threads (the pool's loop, callers, lock helpers),
    # built by g++. Forked workers are single-threaded; TSan checks the parent.
    export TSAN_OPTIONS="die_after_fork=0:halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/test/tsan.supp"
    tsan_tests="pool pool_input cancel async_result async_generator lock event semaphore barrier threaded_respawn"
    COPROC_TARGETS=$(printf 'test/%s_test ' $tsan_tests) \
        run_suite "thread sanitizer" build-tsan "$tsan_tests" -Db_sanitize=thread "${sanitized[@]}"
fi

echo "== all stages: $SECONDS s"
read -r passed failed < <(python3 test/count.py "${logs[@]}")
failed=$((failed + failed_builds))
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
