#!/usr/bin/env bash
# Runs every sample binary that exists in BUILD_ROOT/samples with short arguments and checks
# its output: the key lines of each sample and its success line "<name>: ok".
# Usage: test/samples_test.sh BUILD_ROOT     (registered as the meson test 'samples')
set -uo pipefail

build=${1:?usage: samples_test.sh BUILD_ROOT}
[ -d "$build/samples" ] || { echo "no $build/samples: configure with -Dsamples=true" >&2; exit 1; }

# Arguments that keep a sample short (none: its default demo).
args_of() {
    case $1 in
    10_imap_progress) echo 50 ;;
    esac
}

# Extended regular expressions the output must match, one per line, besides "<name>: ok".
expect_of() {
    case $1 in
    01_pool_map) echo '^\[1, 4, 9\]$' ;;
    02_apply_async) printf '%s\n' '^result: 49$' '^error: division by zero$' '^successful: yes, no$' ;;
    03_starmap_async) printf '%s\n' '^waiting$' '^3$' '^7$' '^11$' ;;
    04_imap) printf '%s\n' '^imap: +0 1 4 9 16 25 36 49 64 81$' '^imap_unordered:( [0-9]+){10}$' \
        '^sum of squares below 100: 328350$' ;;
    05_process_lock) echo '^hello world [0-9]$' ;;
    06_queue) echo "^\\[42, None, 'hello'\\]$" ;;
    07_pipe) echo "^\\[42, None, 'hello'\\]$" ;;
    08_close_terminate) printf '%s\n' '^close\+join: 4 results, last 8$' '^terminate: ' ;;
    09_http_offload) printf '%s\n' '^server: ok, pool of [0-9]+ workers$' \
        '^server: ok, no pool' \
        '^  GET /fib\?n=99 +-> 400 n must be an integer' \
        '^  GET /fib\?n=abc +-> 400 ' \
        '^  GET /nope +-> 404 no such path' \
        '^  GET /primes\?limit=100000 -> 200 9592$' \
        '^  GET /spin\?ms=5000&deadline_ms=200 -> 504 after [0-9]+ ms$' \
        '^  then /health and /fib\?n=20 -> 200, 200 in [0-9.]+ ms$' \
        '^server: the client of /spin\?ms=5000 left; its task was cancelled$' \
        '^  a client left during /spin\?ms=5000; then /fib\?n=20 -> 200 in [0-9.]+ ms$' \
        '^  80 x /fib\?n=32 over 8 connections: [0-9.]+ s, [0-9]+ requests/s$' \
        '^  /health under that load: p50 [0-9.]+ ms, p99 [0-9.]+ ms \([0-9]+ probes\)$' ;;
    10_imap_progress) printf '%s\n' '^ 50% 25/50 ' '^100% 50/50 ' '^sum of squares below 50: 40425$' ;;
    esac
}

passed=0
failed=0
for exe in "$build"/samples/[0-9][0-9]_*; do
    [ -f "$exe" ] && [ -x "$exe" ] || continue
    name=$(basename "$exe")
    # shellcheck disable=SC2046 # args_of gives words on purpose
    out=$(timeout 60 "$exe" $(args_of "$name") 2>&1 </dev/null)
    rc=$?
    problems=()
    [ "$rc" -eq 0 ] || problems+=("exit status $rc")
    [ "$(tail -n 1 <<<"$out")" = "$name: ok" ] || problems+=("last line is not '$name: ok'")
    while IFS= read -r pattern; do
        [ -n "$pattern" ] || continue
        grep -Eq -- "$pattern" <<<"$out" || problems+=("no line matches: $pattern")
    done < <(expect_of "$name")
    if [ ${#problems[@]} -eq 0 ]; then
        echo "[ok]   $name"
        passed=$((passed + 1))
    else
        echo "[FAIL] $name"
        printf '         %s\n' "${problems[@]}"
        printf '%s\n' "$out" | sed 's/^/       | /'
        failed=$((failed + 1))
    fi
done

echo "[samples] $((passed + failed)) run: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
