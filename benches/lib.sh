# Shared by the benchmark scripts: a throwaway primary + streaming replica,
# pgsidecar (release build) and Debian's PgBouncer in front of them, and the
# clean-up. Source it after setting POOL, SCALE and IDLE_CLIENTS (defaults
# below); it sets PRIMARY_PORT, REPLICA_PORT, SIDECAR_PORT, SIDECAR_PID,
# SIDECAR_SOCKET_DIR, BOUNCER_PORT (empty without PgBouncer), BOUNCER_PID,
# BOUNCER_SOCKET_DIR, BINDIR, PASSWORD and WORK. Each proxy also listens
# on a Unix socket, <its socket dir>/.s.PGSQL.<its port>.

POOL=${POOL:-5}
SCALE=${SCALE:-10}
IDLE_CLIENTS=${IDLE_CLIENTS:-1000}
BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
PASSWORD=benchpw

log() { printf '==> %s\n' "$*" >&2; }

# --- processes to clean up ---------------------------------------------------
WORK=$(mktemp -d /tmp/pgsidecar-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    # runuser does not pass SIGTERM on to PgBouncer; its pidfile does.
    [ -f "$WORK/pgbouncer.pid" ] && kill "$(cat "$WORK/pgbouncer.pid")" 2>/dev/null
    for d in "$WORK"/primary "$WORK"/replica; do
        [ -f "$d/postmaster.pid" ] && as_pg "$BINDIR/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    # Wait (up to 10 s each) for them to exit: a process still writing
    # into $WORK (callgrind's output at exit) would make the rm fail.
    for pid in "${PIDS[@]:-}"; do
        for _ in $(seq 100); do { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; } || break; sleep 0.1; done
    done
    [ -n "${PGSIDECAR_BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- cluster -----------------------------------------------------------------
start_cluster() {
    [ "$(id -u)" = 0 ] && chown postgres "$WORK"
    PRIMARY_PORT=$(free_port)
    REPLICA_PORT=$(free_port)
    log "initdb primary on $PRIMARY_PORT"
    as_pg "$BINDIR/initdb" -D "$WORK/primary" -U postgres --auth=trust --no-sync >/dev/null
    cat >>"$WORK/primary/postgresql.conf" <<EOF
port = $PRIMARY_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 700
shared_buffers = 256MB
fsync = off
synchronous_commit = off
wal_level = replica
max_wal_senders = 4
password_encryption = 'scram-sha-256'
EOF
    cat >"$WORK/primary/pg_hba.conf" <<EOF
local all postgres trust
host all postgres 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
EOF
    as_pg "$BINDIR/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null
    psql_su "$PRIMARY_PORT" -c "create role bench login password '$PASSWORD'" >/dev/null
    psql_su "$PRIMARY_PORT" -c "create database bench owner bench" >/dev/null
    log "pg_basebackup replica on $REPLICA_PORT"
    as_pg "$BINDIR/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$WORK/replica" -R -X stream -c fast
    echo "port = $REPLICA_PORT" >>"$WORK/replica/postgresql.auto.conf"
    as_pg "$BINDIR/pg_ctl" -D "$WORK/replica" -l "$WORK/replica.log" -w start >/dev/null
    log "pgbench -i -s $SCALE"
    PGPASSWORD=$PASSWORD "$BINDIR/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PRIMARY_PORT" -U bench bench >/dev/null 2>&1
    # Let the replica catch up before measuring.
    for _ in $(seq 100); do
        lag=$(psql_su "$REPLICA_PORT" -Atc "select pg_wal_lsn_diff('$(psql_su "$PRIMARY_PORT" -Atc 'select pg_current_wal_lsn()')', pg_last_wal_replay_lsn())")
        [ "${lag%.*}" -le 0 ] 2>/dev/null && break
        sleep 0.1
    done
}

psql_su() { local port=$1; shift; "$BINDIR/psql" -X -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }

# --- proxies -----------------------------------------------------------------
start_pgsidecar() {
    SIDECAR_PORT=$(free_port)
    SIDECAR_HTTP=$(free_port)
    SIDECAR_SOCKET_DIR=$WORK/sidecar-sock
    cat >"$WORK/pgsidecar.toml" <<EOF
[proxy]
listen = "127.0.0.1:$SIDECAR_PORT"
unix_socket_dir = "$SIDECAR_SOCKET_DIR"
max_client_conn = $((IDLE_CLIENTS + 1000))
[http]
listen = "127.0.0.1:$SIDECAR_HTTP"
[cluster]
primary = "127.0.0.1:$PRIMARY_PORT"
replicas = ["127.0.0.1:$REPLICA_PORT"]
[auth]
client_auth = "scram-sha-256"
[[users]]
name = "bench"
password = "$PASSWORD"
[pool]
size = $POOL
EOF
    # SIDECAR_EXTRA: more TOML, appended (benches/callgrind.sh).
    [ -z "${SIDECAR_EXTRA:-}" ] || printf '%b\n' "$SIDECAR_EXTRA" >>"$WORK/pgsidecar.toml"
    log "pgsidecar on $SIDECAR_PORT (metrics on $SIDECAR_HTTP)"
    # PGSIDECAR_WRAP: a command to run it under (benches/callgrind.sh).
    # PGSIDECAR_BIN: another build (a copy of main's, to compare while the
    # next one compiles).
    # shellcheck disable=SC2086
    PGSIDECAR_LOG=warn ${PGSIDECAR_WRAP:-} "${PGSIDECAR_BIN:-./target/release/pgsidecar}" run -c "$WORK/pgsidecar.toml" >"$WORK/pgsidecar.log" 2>&1 &
    SIDECAR_PID=$!
    PIDS+=("$SIDECAR_PID")
    wait_port "$SIDECAR_PORT" "${PGSIDECAR_WRAP:+600}"
}

start_pgbouncer() {
    BOUNCER_PORT=""
    command -v pgbouncer >/dev/null || { log "pgbouncer not installed: skipped (apt-get install pgbouncer)"; return; }
    BOUNCER_PORT=$(free_port)
    BOUNCER_SOCKET_DIR=$WORK/bouncer-sock
    mkdir -p "$BOUNCER_SOCKET_DIR"
    # PgBouncer gets the role's SCRAM verifier from pg_authid, as
    # pgsidecar derives one when it loads its config: with the plaintext
    # password PgBouncer would run PBKDF2 (4096 rounds) on every login, a
    # cost that swamps -C and the login of 500 clients. BOUNCER_PLAINTEXT=1
    # gives it the plaintext password instead.
    local secret=$PASSWORD
    [ -n "${BOUNCER_PLAINTEXT:-}" ] || secret=$(psql_su "$PRIMARY_PORT" -Atc "select rolpassword from pg_authid where rolname = 'bench'")
    echo "\"bench\" \"$secret\"" >"$WORK/userlist.txt"
    cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PRIMARY_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir = $BOUNCER_SOCKET_DIR
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = $((IDLE_CLIENTS + 1000))
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
EOF
    [ "$(id -u)" = 0 ] && chown -R postgres "$WORK"
    log "pgbouncer $(pgbouncer --version | head -1 | cut -d' ' -f2) on $BOUNCER_PORT"
    # BOUNCER_WRAP: a command to run it under (benches/callgrind.sh).
    # shellcheck disable=SC2086
    as_pg ${BOUNCER_WRAP:-} pgbouncer "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
    PIDS+=("$!")
    wait_port "$BOUNCER_PORT" "${BOUNCER_WRAP:+600}"
    # $! is runuser's; the pidfile has PgBouncer's own (for its CPU time).
    for _ in $(seq 100); do [ -s "$WORK/pgbouncer.pid" ] && break; sleep 0.05; done
    BOUNCER_PID=$(cat "$WORK/pgbouncer.pid")
}

# wait_port PORT [TRIES]: up to TRIES × 50 ms (default 10 s).
wait_port() {
    for _ in $(seq "${2:-200}"); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return
        sleep 0.05
    done
    log "nothing listens on $1"; exit 1
}

