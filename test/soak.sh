#!/usr/bin/env bash
# Soak: a mixed pool workload for MINUTES (default 10) while random workers are SIGKILLed.
# Installs what is missing and builds like ./test/run.sh (release build in build-soak/), runs
# coproc-soak and tees its output to build-soak/soak-<date>.log. Not part of CI.
#   ./test/soak.sh [MINUTES] [SEED]        SOAK_INTERVAL=10 (seconds between report lines)
# Exits with coproc-soak's status: non-zero on a lost task, a hang, a leak or a leftover process.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
seed=${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
. test/setup.sh
coproc_install_packages
if [ -f build-soak/build.ninja ]; then meson setup --reconfigure build-soak -Dsoak=true >/dev/null; fi
COPROC_TARGETS=test/coproc-soak coproc_build build-soak --buildtype=release -Dsamples=false \
    -Dbench=false -Dsoak=true
log="build-soak/soak-$(date +%Y%m%d-%H%M%S).log"
seconds=$(python3 -c "print(int(float('$minutes') * 60))")
echo "soak: $minutes min, seed $seed, log $log"
set +e
./build-soak/test/coproc-soak "$seconds" "$seed" "${SOAK_INTERVAL:-10}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "soak: exit status $status (log: $log)"
exit "$status"
