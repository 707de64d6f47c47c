#!/usr/bin/env bash
# Behaviour comparison, not speed: runs benches/compare.py against direct
# Postgres, PgBouncer (Debian's, transaction mode) and pgsidecar, all with a
# pool of 2 server connections in front of the same throwaway database.
#
#   bash benches/compare.sh
#
# Needs psycopg 3 (installed into a temporary venv if python3 lacks it).
set -uo pipefail
cd "$(dirname "$0")/.."
POOL=${POOL:-2}
SCALE=1
source benches/lib.sh

PY=python3
if ! python3 -c 'import psycopg' 2>/dev/null; then
    log "installing psycopg into a temporary venv"
    python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q 'psycopg[binary]==3.3.9' || exit 1
    PY=$WORK/venv/bin/python
fi
[ -x target/release/pgsidecar ] || cargo build --release
start_cluster
start_pgsidecar
start_pgbouncer

dsn() { echo "host=127.0.0.1 port=$1 user=bench password=$PASSWORD dbname=bench"; }
targets=("direct=$(dsn "$PRIMARY_PORT")")
[ -n "$BOUNCER_PORT" ] && targets+=("pgbouncer=$(dsn "$BOUNCER_PORT")")
targets+=("pgsidecar=$(dsn "$SIDECAR_PORT")")
echo
[ -n "$BOUNCER_PORT" ] && echo "PgBouncer $(pgbouncer --version | head -1 | cut -d' ' -f2), pool_mode = transaction, default_pool_size = $POOL"
echo "pgsidecar, pool_mode = transaction, [pool] size = $POOL"
"$PY" benches/compare.py "${targets[@]}"
