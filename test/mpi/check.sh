#!/bin/sh
# Runs mpi_pool_test one way and checks that no process of it is left afterwards.
# Usage: check.sh WAY MPIRUN MPI_POOL_TEST OTHER_BUILD
#   one-host     mpirun -np 3 on this host
#   fake-hosts   mpirun -np 3 over two "hosts" (127.0.0.2, 127.0.0.3; fakessh starts mpirun's
#                daemons locally, ranks talk over TCP); --display-map must show both
#   spawn        no mpirun: every pool spawns its agents (MPI_Comm_spawn)
#   spawn-fake-hosts  the same, the agents placed on the two fake hosts by an MPI_Info hostfile
#   other-build  rank 1 runs another program: rank 0 must refuse it
#   sigint       SIGINT to mpirun while tasks run: everything ends
set -u
way=$1 mpirun=$2 test=$3 other=$4
here=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_rmaps_base_oversubscribe=1
set -- --allow-run-as-root --oversubscribe --mca mpi_yield_when_idle 1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
fail() {
    cat "$out"
    echo "check.sh $way: $*" >&2
    exit 1
}

case $way in
one-host)
    timeout 100 "$mpirun" "$@" -np 3 "$test" -nc >"$out" 2>&1 || fail "mpirun failed"
    ;;
fake-hosts)
    timeout 100 "$mpirun" "$@" --mca plm_rsh_agent "$here/fakessh" \
        --hostfile "$here/hostfile_fake" --display-map -np 3 "$test" -nc >"$out" 2>&1 ||
        fail "mpirun failed"
    nodes=$(grep -o 'Data for node: 127\.0\.0\.[0-9]*' "$out" | sort -u | wc -l)
    [ "$nodes" -eq 2 ] || fail "the ranks sit on $nodes node(s), not 2"
    ;;
spawn)
    timeout 100 "$test" -nc >"$out" 2>&1 || fail "the singleton run failed"
    ;;
spawn-fake-hosts)
    MPI_POOL_TEST_HOSTFILE="$here/hostfile_fake" OMPI_MCA_plm_rsh_agent="$here/fakessh" \
        timeout 100 "$test" -nc >"$out" 2>&1 || fail "the singleton run failed"
    for h in 127.0.0.2 127.0.0.3; do
        grep -q "fakessh: host=$h" "$out" || fail "no agent was started on $h"
    done
    ;;
other-build)
    timeout 100 "$mpirun" "$@" -np 1 "$test" --no-skip -tc='*another build*' : \
        -np 1 "$other" >"$out" 2>&1 || fail "mpirun failed"
    grep -q 'runs a different build of the program' "$out" || fail "no build mismatch reported"
    ;;
sigint)
    "$mpirun" "$@" -np 3 "$test" --no-skip -tc='*until interrupted*' >"$out" 2>&1 &
    pid=$!
    i=0
    until grep -q 'serving until interrupted' "$out"; do
        i=$((i + 1))
        [ $i -lt 300 ] || { kill -9 $pid; fail "the long task never started"; }
        sleep 0.1
    done
    kill -INT $pid
    i=0
    while kill -0 $pid 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 300 ] || { kill -9 $pid; fail "mpirun still runs 30 s after SIGINT"; }
        sleep 0.1
    done
    ;;
*)
    fail "unknown way"
    ;;
esac
grep -E '^\[doctest\] (test cases|assertions)' "$out"

# No process of the run is left (workers are forks of the agents, with the same command line;
# zombies have none). Orphans may take a moment to go.
i=0
mine="^($test|$other)( |\$)"
while pgrep -f "$mine" >/dev/null || pgrep -x orted >/dev/null; do
    i=$((i + 1))
    if [ $i -ge 100 ]; then
        ps -eo pid,ppid,stat,args | grep -E " ($test|$other|orted)( |\$)"
        fail "processes left after the run"
    fi
    sleep 0.1
done
exit 0
