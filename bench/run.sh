#!/usr/bin/env bash
# Builds coproc-bench in release mode, then runs the Python anchor, the C limit and coproc
# one after the other on this machine and prints the side-by-side table (compare.py).
# Usage: bench/run.sh [workload ...]     (BENCH_SCALE scales every count, see WORKLOADS.md)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="$root/../shared/bench"
out="$root/bench/results"
cd "$root"
. test/setup.sh
coproc_install_packages
coproc_build build-release --buildtype=release -Dtests=false -Dsamples=false -Dbench=true
mkdir -p "$out"

echo "== python-mp anchor"
python3 "$shared/anchor_multiprocessing.py" "$@" | tee "$out/python-mp.jsonl"
echo "== c-limit"
gcc -O2 -o "$out/limits" "$shared/limits/limits.c" -lpthread
("$out/limits" "$@" || true) | tee "$out/c-limit.jsonl"
echo "== coproc"
build-release/bench/coproc-bench "$@" | tee "$out/coproc.jsonl"

{
    echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr); BENCH_SCALE=${BENCH_SCALE:-1}; $(date -u +%Y-%m-%d)"
    echo
    python3 "$shared/compare.py" --impl coproc "$out/coproc.jsonl" "$out/python-mp.jsonl" "$out/c-limit.jsonl"
} | tee "$out/table.md"
