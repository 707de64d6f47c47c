#!/usr/bin/env bash
# Soak test: pgbench (TPC-B) through pgsidecar for SOAK_SECONDS (default 600)
# while the proxy's idle server connections are killed with
# pg_terminate_backend every KILL_EVERY seconds and the config is reloaded
# (SIGHUP, pool size alternating between POOL_SIZES) every RELOAD_EVERY
# seconds. Reports failed and aborted transactions, kills, reloads, and the
# proxy's RSS after warm-up and at the end.
#
# "Idle" means idle in the pool for at least KILL_IDLE_MS, and the kill
# must not race with a checkout: pg_stat_activity is a snapshot, and on a
# loaded machine the querying backend can be descheduled for milliseconds
# between reading it and sending the signal, by which time a server seen
# idle may be in the middle of a client's transaction. Killing a server
# mid-transaction fails that transaction by design (pgbench then aborts
# the client); that is the mid-query failure the integration tests cover,
# not what this soak asks. So each candidate is frozen (SIGSTOP), checked
# from outside Postgres to be waiting for a command (its process title
# says "idle" and it is blocked in epoll_wait: set after the transaction
# ended, before the next command is read), sent SIGTERM (what
# pg_terminate_backend sends) if it is, and let run again (SIGCONT) within
# the same few milliseconds. Nothing in between asks Postgres anything: a
# backend frozen in the middle of work may hold locks others wait for. A
# request the proxy sends to a frozen server meanwhile waits, then meets
# the FATAL: the case the proxy must retry on another connection.
# Each client thinks THINK_MS between transactions (as an application
# does), which leaves servers idle in the pool for the kills to find.
#
# Runs a throwaway PostgreSQL from the installed binaries in a temp dir (as
# the postgres user when run as root) and removes it on exit. Everything is
# on 127.0.0.1.
#
#   cargo build --release && scripts/soak.sh
#   SOAK_SECONDS=60 PGSIDECAR=target/debug/pgsidecar scripts/soak.sh
set -euo pipefail

SOAK_SECONDS=${SOAK_SECONDS:-600}
KILL_EVERY=${KILL_EVERY:-1}
RELOAD_EVERY=${RELOAD_EVERY:-15}
CLIENTS=${CLIENTS:-16}
POOL_SIZES=${POOL_SIZES:-"8 10"}
THINK_MS=${THINK_MS:-10}
KILL_IDLE_MS=${KILL_IDLE_MS:-50}
read -r size_a size_b <<<"$POOL_SIZES"
cd "$(dirname "$0")/.."
PGSIDECAR=${PGSIDECAR:-target/release/pgsidecar}
PGSIDECAR=$(realpath "$PGSIDECAR")
[ -x "$PGSIDECAR" ] || { echo "no $PGSIDECAR: cargo build --release first" >&2; exit 1; }

bindir=$(pg_config --bindir 2>/dev/null || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[ -x "$bindir/initdb" ] || { echo "PostgreSQL server binaries not found" >&2; exit 1; }
PATH="$bindir:$PATH"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

work=$(mktemp -d /tmp/pgsidecar-soak.XXXXXX)
chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown postgres "$work"
pg_port=$(free_port)
proxy_pid=""
frozen=""
cleanup() {
    [ -n "$frozen" ] && kill -CONT "$frozen" 2>/dev/null || true
    [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null || true
    as_pg pg_ctl -D "$work/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> PostgreSQL on 127.0.0.1:$pg_port ($work)"
as_pg initdb -D "$work/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
cat >>"$work/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$work'
max_connections = 200
fsync = off
CONF
echo "host all app 127.0.0.1/32 scram-sha-256" >"$work/data/pg_hba.conf.new"
cat "$work/data/pg_hba.conf" >>"$work/data/pg_hba.conf.new"
mv "$work/data/pg_hba.conf.new" "$work/data/pg_hba.conf"
[ "$(id -u)" = 0 ] && chown postgres "$work/data/pg_hba.conf"
as_pg pg_ctl -D "$work/data" -l "$work/postgres.log" -w start >/dev/null
psql_su() { psql -X -q -At -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }
psql_su -c "CREATE ROLE app LOGIN PASSWORD 'soak-secret'" -c "CREATE DATABASE soak OWNER app"
PGPASSWORD=soak-secret pgbench -i -q -s 10 -h 127.0.0.1 -p "$pg_port" -U app soak >/dev/null 2>&1

proxy_port=$(free_port)
http_port=$(free_port)
write_config() {
    cat >"$work/pgsidecar.toml" <<CONF
[proxy]
listen = "127.0.0.1:$proxy_port"
[http]
listen = "127.0.0.1:$http_port"
[cluster]
primary = "127.0.0.1:$pg_port"
[[users]]
name = "app"
password = "soak-secret"
[pool]
size = $1
checkout_timeout = "30s"
CONF
}
write_config "$size_a"
"$PGSIDECAR" run --config "$work/pgsidecar.toml" >"$work/pgsidecar.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 100); do
    (echo >/dev/tcp/127.0.0.1/"$proxy_port") 2>/dev/null && break
    sleep 0.1
done
# Kills the proxy's server connections idle for KILL_IDLE_MS (see the
# header for how); adds them to `kills`.
case $(uname -m) in
    x86_64) epoll_calls=" 232 281 441 " ;; # epoll_wait, epoll_pwait, epoll_pwait2
    aarch64) epoll_calls=" 22 441 " ;;
    *) epoll_calls="" ;;
esac
kill_idle() {
    local pid pids title call
    pids=$(psql_su -d postgres -c "SELECT pid FROM pg_stat_activity WHERE datname = 'soak' \
        AND usename = 'app' AND state = 'idle' \
        AND state_change < now() - interval '$KILL_IDLE_MS milliseconds'")
    for pid in $pids; do
        frozen=$pid
        kill -STOP "$pid" 2>/dev/null || continue
        title=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -1) || title=""
        call=$(cut -d' ' -f1 "/proc/$pid/syscall" 2>/dev/null) || call=""
        if [[ "$title" == *" idle" && "$epoll_calls" == *" $call "* ]]; then
            kill -TERM "$pid" && kills=$(( kills + 1 ))
        fi
        kill -CONT "$pid" 2>/dev/null || true
        frozen=""
    done
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status"; }

echo "==> pgbench -c $CLIENTS for ${SOAK_SECONDS}s through pgsidecar (127.0.0.1:$proxy_port)"
# pgbench's built-in TPC-B transaction, then the think time.
cat >"$work/tpcb-think.sql" <<SQL
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
\sleep $THINK_MS ms
SQL
PGPASSWORD=soak-secret pgbench -n -c "$CLIENTS" -j 2 -T "$SOAK_SECONDS" -P 60 -f "$work/tpcb-think.sql" \
    -h 127.0.0.1 -p "$proxy_port" -U app soak >"$work/pgbench.out" 2>"$work/pgbench.err" &
bench_pid=$!

start=$(date +%s)
kills=0
reloads=0
rss_start=""
size=$size_a
next_kill=$KILL_EVERY
next_reload=$RELOAD_EVERY
while kill -0 "$bench_pid" 2>/dev/null; do
    sleep 1
    now=$(( $(date +%s) - start ))
    if [ -z "$rss_start" ] && [ "$now" -ge 30 ]; then
        rss_start=$(rss)
        echo "    RSS after warm-up: ${rss_start} kB"
    fi
    if [ "$now" -ge "$next_kill" ]; then
        next_kill=$(( next_kill + KILL_EVERY ))
        kill_idle
    fi
    if [ "$now" -ge "$next_reload" ]; then
        next_reload=$(( next_reload + RELOAD_EVERY ))
        size=$(( size == size_a ? size_b : size_a ))
        write_config "$size"
        kill -HUP "$proxy_pid"
        reloads=$(( reloads + 1 ))
    fi
done
bench_status=0
wait "$bench_pid" || bench_status=$?
rss_end=$(rss)

processed=$(awk -F': ' '/actually processed/ {print $2}' "$work/pgbench.out" | cut -d/ -f1)
failed=$(awk -F': ' '/number of failed transactions/ {print $2}' "$work/pgbench.out" | cut -d' ' -f1)
aborted=$(grep -c "aborted" "$work/pgbench.err" || true)
tps=$(awk -F'= ' '/^tps/ {print $2}' "$work/pgbench.out" | cut -d' ' -f1)
reloaded=$(grep -c "config reloaded" "$work/pgsidecar.log" || true)
refused=$(grep -c "reload refused" "$work/pgsidecar.log" || true)

echo "==> result"
echo "duration:               ${SOAK_SECONDS}s, $CLIENTS clients (TPC-B, ${THINK_MS} ms think time), pool $POOL_SIZES"
echo "transactions processed: ${processed:-0} (tps ${tps:-?})"
echo "failed transactions:    ${failed:-?}"
echo "aborted clients:        $aborted"
echo "backends killed:        $kills"
echo "reloads:                $reloads sent, $reloaded applied, $refused refused"
echo "proxy RSS:              ${rss_start:-?} kB after warm-up, $rss_end kB at the end"
echo "pgbench exit status:    $bench_status"
if [ -s "$work/pgbench.err" ]; then
    echo "--- pgbench stderr (last lines)"
    tail -5 "$work/pgbench.err"
fi
if [ "$aborted" != 0 ]; then
    echo "--- why clients were aborted (first 10)"
    grep -B1 "aborted" "$work/pgbench.err" | grep -v '^--$' | head -20
    echo "--- pgsidecar warnings around them (first 20)"
    grep -E "WARN|ERROR" "$work/pgsidecar.log" | grep -v "config reloaded" | head -20
fi
[ "$bench_status" = 0 ] && [ "${failed:-1}" = 0 ] && [ "$aborted" = 0 ]
