#!/usr/bin/env bash
# Fleet budget vs static pools: 4 pgsidecar members sharing [pool] budget =
# BUDGET on the primary ([fleet], shares following demand) against 4
# PgBouncers with a static quarter each (default_pool_size = BUDGET / 4),
# the way a fleet is sized without shared budgets. One member carries most
# of the load (BUSY_CLIENTS clients), the other three a trickle (1 client
# each, rate-limited). Reported: throughput and p50/p99 latency of the busy
# member's clients, rounds interleaved (fleet, pgbouncer, fleet, …), and
# the most server connections each target had open, seen in
# pg_stat_activity (sampled every 50 ms; PgBouncer serves a copy of the
# database so the two are counted apart), which must stay within BUDGET.
#
#   bash benches/fleet.sh
#   ROUNDS=3 DURATION=20 BUSY_CLIENTS=40 bash benches/fleet.sh
#
# The transaction holds its server connection for about 2 ms of database
# time (an indexed read and pg_sleep(0.002), standing for I/O waits), so
# throughput is bound by how many connections the busy member may use, not
# by this machine's 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${BUDGET:-8}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20}
BUSY_CLIENTS=${BUSY_CLIENTS:-40}
SCALE=${SCALE:-1}
IDLE_CLIENTS=0
POOL=$((BUDGET / 4))

source benches/lib.sh

command -v pgbouncer >/dev/null || { log "pgbouncer is not installed: apt-get install -y pgbouncer"; exit 1; }
[ -x target/release/pgsidecar ] || cargo build --release

start_cluster
# PgBouncer gets a copy of the database, so each target's server
# connections can be counted apart; the members' monitor and coordinator
# sessions log in as their own role.
psql_su "$PRIMARY_PORT" -c "create database bench_pgb template bench owner bench" >/dev/null
psql_su "$PRIMARY_PORT" -c "create role benchmon login password '$PASSWORD'" >/dev/null

cat >"$WORK/txn.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT pg_sleep(0.002);
END;
EOF

# --- 4 fleet members -----------------------------------------------------------
MEMBER_PORTS=()
MEMBER_HTTP=()
for i in 1 2 3 4; do
    port=$(free_port)
    http=$(free_port)
    cat >"$WORK/member$i.toml" <<EOF
[proxy]
listen = "127.0.0.1:$port"
[http]
listen = "127.0.0.1:$http"
[cluster]
primary = "127.0.0.1:$PRIMARY_PORT"
monitor_user = "benchmon"
[[users]]
name = "bench"
password = "$PASSWORD"
[[users]]
name = "benchmon"
password = "$PASSWORD"
[pool]
budget = $BUDGET
[fleet]
name = "bench"
instance = "member$i"
interval = "250ms"
[observability]
explain = "off"
EOF
    PGSIDECAR_LOG=warn ./target/release/pgsidecar run -c "$WORK/member$i.toml" >"$WORK/member$i.log" 2>&1 &
    PIDS+=("$!")
    MEMBER_PORTS+=("$port")
    MEMBER_HTTP+=("$http")
done
for p in "${MEMBER_PORTS[@]}"; do wait_port "$p"; done
log "4 pgsidecar members, fleet budget $BUDGET: ports ${MEMBER_PORTS[*]}"

# --- 4 PgBouncers, a static quarter each -----------------------------------------
BOUNCER_PORTS=()
echo "\"bench\" \"$PASSWORD\"" >"$WORK/userlist.txt"
for i in 1 2 3 4; do
    port=$(free_port)
    cat >"$WORK/bouncer$i.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PRIMARY_PORT dbname=bench_pgb
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 1000
logfile = $WORK/bouncer$i.log
pidfile = $WORK/bouncer$i.pid
EOF
    BOUNCER_PORTS+=("$port")
done
[ "$(id -u)" = 0 ] && chown -R postgres "$WORK"
for i in 1 2 3 4; do
    as_pg pgbouncer "$WORK/bouncer$i.ini" >/dev/null 2>&1 &
    PIDS+=("$!")
done
for p in "${BOUNCER_PORTS[@]}"; do wait_port "$p"; done
log "4 PgBouncers $(pgbouncer --version | head -1 | cut -d' ' -f2), default_pool_size = $POOL each: ports ${BOUNCER_PORTS[*]}"
stop_bouncers() {
    for i in 1 2 3 4; do [ -f "$WORK/bouncer$i.pid" ] && kill "$(cat "$WORK/bouncer$i.pid")" 2>/dev/null; done
}
trap 'stop_bouncers; cleanup' EXIT

# --- measuring -------------------------------------------------------------------
# sample_connections OUTFILE DB: max backends of role bench on DB, every 50 ms, until killed.
sample_connections() {
    local max=0 n
    while :; do
        n=$(psql_su "$PRIMARY_PORT" -Atc "select count(*) from pg_stat_activity where usename = 'bench' and datname = '$2' and backend_type = 'client backend'" 2>/dev/null || echo 0)
        [ "${n:-0}" -gt "$max" ] && { max=$n; echo "$max" >"$1"; }
        sleep 0.05
    done
}

# run_target NAME DB BUSY_PORT OTHER_PORT… → "tps p50_ms p99_ms failed max_connections"
run_target() {
    local name=$1; shift
    local db=$1; shift
    local busy=$1; shift
    local dir="$WORK/run-$name-$RANDOM"
    mkdir -p "$dir"
    echo 0 >"$dir/max"
    sample_connections "$dir/max" "$db" &
    local sampler=$!
    local pids=()
    for p in "$@"; do
        PGPASSWORD=$PASSWORD "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$p" -U bench -c 1 -R 20 \
            -T "$DURATION" -f "$WORK/txn.sql" bench >"$dir/light-$p.txt" 2>&1 &
        pids+=("$!")
    done
    (cd "$dir" && PGPASSWORD=$PASSWORD "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$busy" -U bench \
        -c "$BUSY_CLIENTS" -j 2 -T "$DURATION" -l --log-prefix=lat -f "$WORK/txn.sql" bench >"$dir/busy.txt" 2>&1)
    for pid in "${pids[@]}"; do wait "$pid"; done
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    local tps failed
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$dir/busy.txt" | head -1)
    failed=$(cat "$dir"/busy.txt "$dir"/light-*.txt | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' | awk '{s+=$1} END {print s+0}')
    if grep -q aborted "$dir"/*.txt; then failed="aborted"; fi
    python3 - "$dir" "${tps:-0}" "$failed" "$(cat "$dir/max")" <<'EOF'
import glob, sys
d, tps, failed, most = sys.argv[1:]
lat = sorted(int(l.split()[2]) for f in glob.glob(d + "/lat.*") for l in open(f))
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else float("nan")
print(f"{float(tps):.0f} {pct(0.50):.2f} {pct(0.99):.2f} {failed} {most}")
EOF
}

echo
echo "busy member: $BUSY_CLIENTS clients; 3 others: 1 client at 20 tps each; ${DURATION}s x $ROUNDS rounds"
echo "transaction: indexed read + pg_sleep(0.002) between BEGIN and END"
printf '%-10s %5s %8s %8s %8s %7s %9s\n' target round tps p50_ms p99_ms failed max_conn
declare -A TPS P99
# A warm-up so every member holds its floor and the pools are open.
DURATION=3 run_target warmup bench "${MEMBER_PORTS[0]}" "${MEMBER_PORTS[@]:1}" >/dev/null
for r in $(seq "$ROUNDS"); do
    for target in fleet pgbouncer; do
        if [ "$target" = fleet ]; then ports=("${MEMBER_PORTS[@]}"); db=bench; else ports=("${BOUNCER_PORTS[@]}"); db=bench_pgb; fi
        read -r tps p50 p99 failed most < <(run_target "$target" "$db" "${ports[0]}" "${ports[@]:1}")
        printf '%-10s %5s %8s %8s %8s %7s %9s\n' "$target" "$r" "$tps" "$p50" "$p99" "$failed" "$most"
        TPS[$target]+="$tps "
        P99[$target]+="$p99 "
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ft=$(median <<<"${TPS[fleet]}"); bt=$(median <<<"${TPS[pgbouncer]}")
fp=$(median <<<"${P99[fleet]}"); bp=$(median <<<"${P99[pgbouncer]}")
echo
echo "median busy-member tps: fleet $ft, pgbouncer $bt (ratio $(awk -v a="$ft" -v b="$bt" 'BEGIN{printf "%.2f", a/b}'))"
echo "median busy-member p99: fleet ${fp} ms, pgbouncer ${bp} ms (ratio $(awk -v a="$fp" -v b="$bp" 'BEGIN{printf "%.2f", a/b}'))"
echo "fleet shares at the end: $(for h in "${MEMBER_HTTP[@]}"; do curl -s "127.0.0.1:$h/metrics" | sed -n 's/^pgsidecar_pool_share{[^}]*} //p'; done | tr '\n' ' ')"
