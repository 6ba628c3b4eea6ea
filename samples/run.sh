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
    if ! timeout 30 "build/samples/$name"; then
        echo "!!! $name failed" >&2
        status=1
    fi
done
exit $status
