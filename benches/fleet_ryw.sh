#!/usr/bin/env bash
# What read-your-writes across a fleet costs a write, and what a causal
# token costs: pgbench TPC-B (`pgbench -N`-free default script: 3 UPDATEs,
# a SELECT and an INSERT per transaction) through
#   - a fleet member announcing its writes (routing.read_your_writes =
#     "lsn", the default; a second member listens),
#   - the same member kind with read_your_writes = "off" (no announcement,
#     no ReadyForQuery held),
#   - a sidecar without a fleet,
# rounds interleaved; then a write followed by `SHOW
# pgsidecar.last_write_lsn` (the token) against the write alone, through
# the fleet member (position from the announcement) and the sidecar
# without a fleet (from the monitor, asked for a sample at once).
#
#   bash benches/fleet_ryw.sh
#   ROUNDS=3 DURATION=15 CLIENTS=8 bash benches/fleet_ryw.sh
set -uo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
SCALE=${SCALE:-1}
IDLE_CLIENTS=0
POOL=${CLIENTS}

source benches/lib.sh
[ -x target/release/pgsidecar ] || { echo "cargo build --release first" >&2; exit 1; }

start_cluster
psql_su "$PRIMARY_PORT" -c "create role benchmon login password '$PASSWORD'" >/dev/null

# member NAME FLEET RYW: starts it, sets PORT (FLEET empty: no [fleet])
member() {
    local port http fleet=""
    port=$(free_port)
    http=$(free_port)
    [ -n "$2" ] && fleet="[fleet]
name = \"$2\"
instance = \"$1\""
    cat >"$WORK/$1.toml" <<EOF
[proxy]
listen = "127.0.0.1:$port"
[http]
listen = "127.0.0.1:$http"
[cluster]
primary = "127.0.0.1:$PRIMARY_PORT"
replicas = ["127.0.0.1:$REPLICA_PORT"]
monitor_user = "benchmon"
[[users]]
name = "bench"
password = "$PASSWORD"
[[users]]
name = "benchmon"
password = "$PASSWORD"
[pool]
size = $POOL
budget = $((POOL * 2))
[routing]
read_your_writes = "$3"
[observability]
explain = "off"
$fleet
EOF
    PGSIDECAR_LOG=warn ./target/release/pgsidecar run -c "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$port"
    PORT=$port
}

member announcing bench lsn; ANNOUNCING=$PORT
member listener bench lsn; LISTENER=$PORT
member silent quiet off; SILENT=$PORT
member alone "" lsn; ALONE=$PORT
log "fleet member announcing $ANNOUNCING (listener $LISTENER), fleet member with read_your_writes off $SILENT, no fleet $ALONE"
sleep 2

cat >"$WORK/write.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
EOF
cat >"$WORK/token.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SHOW pgsidecar.last_write_lsn;
EOF

# run PORT ARGS… → "tps latency_ms"
run() {
    local port=$1; shift
    local out
    out=$(PGPASSWORD=$PASSWORD "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$port" -U bench \
        -c "$CLIENTS" -j 2 -T "$DURATION" "$@" bench 2>&1)
    grep -q "number of failed transactions: 0 " <<<"$out" || { echo "$out" >&2; exit 1; }
    local tps lat
    tps=$(awk '/^tps = / {printf "%.0f", $3}' <<<"$out")
    lat=$(awk '/^latency average = / {print $4}' <<<"$out")
    echo "$tps $lat"
}

declare -A SUM
for r in $(seq "$ROUNDS"); do
    for target in announcing silent alone; do
        case $target in announcing) p=$ANNOUNCING ;; silent) p=$SILENT ;; alone) p=$ALONE ;; esac
        read -r tps lat < <(run "$p")
        log "round $r TPC-B via $target: $tps tps, $lat ms"
        SUM[tpcb_$target]=$(( ${SUM[tpcb_$target]:-0} + tps ))
    done
    for target in announcing alone; do
        case $target in announcing) p=$ANNOUNCING ;; alone) p=$ALONE ;; esac
        for script in write token; do
            read -r tps lat < <(run "$p" -f "$WORK/$script.sql")
            log "round $r $script via $target: $tps tps, $lat ms"
            SUM[${script}_$target]=$(( ${SUM[${script}_$target]:-0} + tps ))
        done
    done
done

echo
echo "TPC-B, $CLIENTS clients, ${DURATION}s x $ROUNDS rounds (mean tps):"
for t in announcing silent alone; do
    printf '  %-38s %6d tps\n' "$t" $(( SUM[tpcb_$t] / ROUNDS ))
done
echo "UPDATE alone vs UPDATE + SHOW pgsidecar.last_write_lsn (mean tps):"
for t in announcing alone; do
    printf '  %-12s write %6d tps, write + token %6d tps\n' "$t" $(( SUM[write_$t] / ROUNDS )) $(( SUM[token_$t] / ROUNDS ))
done
