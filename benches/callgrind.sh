#!/usr/bin/env bash
# Instructions the proxy executes per `pgbench -S` transaction, counted by
# valgrind's callgrind: unlike tps on a shared, noisy machine, the count
# barely moves from run to run, so a hot-path change can be judged by it
# (it does not see system calls, cache misses or contention: check those
# with benches/pgbench.sh).
#
#   cargo build --release && bash benches/callgrind.sh
#   TXNS=500 CLIENTS=16 bash benches/callgrind.sh
#   FLAGS="-S -C" TXNS=50 bash benches/callgrind.sh   # per new connection
#   TARGET=pgbouncer bash benches/callgrind.sh         # PgBouncer's count
#   CACHE_SIM=1 bash benches/callgrind.sh              # + simulated L1 misses
#
# Starts a throwaway primary + replica (benches/lib.sh) and the release
# pgsidecar under callgrind, warms up, zeroes the counters, runs
# `pgbench -S -c CLIENTS -j 2 -t TXNS`, and prints the total divided by
# the number of transactions. Keeps the profile (callgrind_annotate it)
# when CALLGRIND_OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-16}
TXNS=${TXNS:-500}
FLAGS=${FLAGS:--S}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
TARGET=${TARGET:-pgsidecar}
case $TARGET in
    pgsidecar) [ -x "${PGSIDECAR_BIN:-target/release/pgsidecar}" ] || { echo "cargo build --release first" >&2; exit 1; } ;;
    pgbouncer) command -v pgbouncer >/dev/null || { echo "needs pgbouncer (apt-get install pgbouncer)" >&2; exit 1; } ;;
    *) echo "TARGET is pgsidecar or pgbouncer, not $TARGET" >&2; exit 1 ;;
esac

source benches/lib.sh
start_cluster
# Under valgrind every query takes milliseconds: past slow_query_threshold,
# each statement would be logged as slow and EXPLAINed on a connection
# that logs in with SCRAM (~7,000 instructions per transaction when it
# lands in the counted window). Natively none of that happens on -S.
SIDECAR_EXTRA=${SIDECAR_EXTRA:-'[observability]\nslow_query_threshold = "1h"'}
out=$WORK/callgrind.out
# CACHE_SIM=1: valgrind also simulates the caches (this CPU's L1 sizes) and
# the script prints L1 instruction and data misses per transaction: the
# memory a transaction touches, which instruction counts do not show.
wrap="valgrind --tool=callgrind ${CACHE_SIM:+--cache-sim=yes} --callgrind-out-file=$out"
if [ "$TARGET" = pgbouncer ]; then
    # The same pool size and SCRAM verifier as pgbench.sh gives it.
    BOUNCER_WRAP=$wrap start_pgbouncer
    PORT=$BOUNCER_PORT PID=$BOUNCER_PID
    # valgrind's control pipes are named after the user it runs as.
    ctl() { as_pg callgrind_control "$@"; }
else
    ctl() { callgrind_control "$@"; }
    PGSIDECAR_WRAP=$wrap start_pgsidecar
    PORT=$SIDECAR_PORT PID=$SIDECAR_PID
fi

bench() {
    PGPASSWORD=$PASSWORD "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$PORT" -U bench \
        $FLAGS -c "$CLIENTS" -j 2 -t "$1" bench 2>&1
}
log "warm-up"
bench 100 >/dev/null
# The catalog reader (read-your-writes across related tables) logs in once
# per database when the first client uses it: a SCRAM login costs tens of
# millions of instructions, so wait until it is done before counting.
for _ in $(seq 100); do
    [ "$TARGET" = pgbouncer ] && break
    n=$(psql_su "$PRIMARY_PORT" -Atc "select count(*) from pg_stat_activity where application_name = 'pgsidecar-catalog'" 2>/dev/null)
    [ "${n:-0}" -ge 1 ] && break
    sleep 0.1
done
sleep 0.5
ctl -z "$PID" >/dev/null 2>&1
log "pgbench $FLAGS -c $CLIENTS -j 2 -t $TXNS under callgrind"
result=$(bench "$TXNS")
grep -q "number of failed transactions: 0 " <<<"$result" || { echo "$result" >&2; exit 1; }
ctl -d "$PID" >/dev/null 2>&1
for _ in $(seq 100); do compgen -G "$out.*" >/dev/null && break; sleep 0.1; done
sleep 1
file=$(ls "$out".* | head -1)
total=$(awk '/^summary:/ {print $2}' "$file")
awk -v t="$total" -v n=$((CLIENTS * TXNS)) 'BEGIN {printf "instructions per transaction: %.0f (%d transactions)\n", t / n, n}'
if [ -n "${CACHE_SIM:-}" ]; then
    # events: Ir Dr Dw I1mr D1mr D1mw ... and the summary in the same order.
    awk -v n=$((CLIENTS * TXNS)) '/^events:/ {for (i = 2; i <= NF; i++) name[i] = $i}
        /^summary:/ {for (i = 2; i <= NF; i++) if (name[i] ~ /^(I1mr|D1mr|D1mw)$/) m[name[i]] = $i / n}
        END {printf "L1 misses per transaction: instructions %.1f, data reads %.1f, data writes %.1f\n", m["I1mr"], m["D1mr"], m["D1mw"]}' "$file"
fi
if [ -n "${CALLGRIND_OUT:-}" ]; then cp "$file" "$CALLGRIND_OUT" && log "profile kept in $CALLGRIND_OUT"; fi
