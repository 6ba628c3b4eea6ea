#!/usr/bin/env bash
# Installs what is missing (Debian 12, as root), builds, and runs every sample as a demo.
set -euo pipefail
cd "$(dirname "$0")/.."
. test/setup.sh
coproc_install_packages
coproc_build build -Dsamples=true

status=0
for src in samples/[0-9][0-9]_*.cpp; do
    name=$(basename "$src" .cpp)
    [ -x "build/samples/$name" ] || continue
    echo "=== $name"
    run=("build/samples/$name")
    if [ "$name" = 11_mpi_pool ] && command -v mpirun >/dev/null; then # rank 0 and two agents
        run=(mpirun --allow-run-as-root --oversubscribe --mca mpi_yield_when_idle 1 -np 3 "${run[@]}")
    fi
    if ! timeout 30 "${run[@]}"; then
        echo "!!! $name failed" >&2
        status=1
    fi
done
exit $status
