#!/usr/bin/env bash
# Runs coproc-mpi-bench (release build) under mpirun: on one host, then over two fake hosts
# (test/mpi/fakessh, test/mpi/hostfile_fake: mpirun's daemons started locally, ranks talking
# over TCP on 127.0.0.2 and 127.0.0.3).
# Usage: bench/mpi_run.sh           (BENCH_SCALE scales the counts)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. test/setup.sh
coproc_install_packages
COPROC_TARGETS=bench/coproc-mpi-bench \
    coproc_build build-release --buildtype=release -Dtests=false -Dsamples=false -Dbench=true
run=(mpirun --allow-run-as-root --oversubscribe --mca mpi_yield_when_idle 1 -np 3)
echo "== one host (shared memory)"
"${run[@]}" build-release/bench/coproc-mpi-bench
echo "== two fake hosts (TCP)"
"${run[@]}" --mca plm_rsh_agent test/mpi/fakessh --hostfile test/mpi/hostfile_fake \
    build-release/bench/coproc-mpi-bench 2>/dev/null
