#!/usr/bin/env bash
# Side-by-side pgbench: direct Postgres vs pgsidecar vs PgBouncer, interleaved
# (A B C A B C …) so that a noisy, shared machine affects all three alike.
# Prints the median tps and latency of each target per workload, and ratios.
#
#   bash benches/pgbench.sh                 # everything (about 20 minutes)
#   ROUNDS=3 DURATION=10 CLIENTS="16" WORKLOADS="select" bash benches/pgbench.sh
#
# It starts a throwaway primary + streaming replica (as user postgres when
# run as root), pgsidecar (release build, read/write split, metrics on) and,
# if installed, Debian's PgBouncer (transaction mode, same pool size), then
# removes everything. Set PGSIDECAR_BENCH_KEEP=1 to keep the cluster dir.
#
# Workloads: select (-S simple), extended (-S -M extended), prepared
# (-S -M prepared; PgBouncer 1.18 cannot), tpcb (TPC-B), connect (-S -C:
# a new connection per transaction), latency (-S -c 1: p50/p99 from
# pgbench's per-transaction log; direct, pgsidecar and PgBouncer), memory (RSS per idle client at
# IDLE_CLIENTS connections), observe (-S at each CLIENTS count through
# pgsidecar with observability on, and through a second pgsidecar with
# [observability] enabled = false: the cost of digests and the slow-query
# log), threads (-S at each CLIENTS count through pgsidecar with its
# default worker_threads = 0, one worker per core, and through a second one
# with worker_threads = 1). observe and threads are not in the default list.
set -uo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"16 500"}
WORKLOADS=${WORKLOADS:-"select extended prepared tpcb connect latency memory"}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}

source benches/lib.sh

# --- measuring ---------------------------------------------------------------
# run_pgbench PORT ARGS… → prints "tps latency_ms" (or "fail")
run_pgbench() {
    local port=$1; shift
    local out
    out=$(PGPASSWORD=$PASSWORD "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$port" -U bench -T "$DURATION" "$@" bench 2>&1) || true
    local tps lat failed
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out" | head -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out" | head -1)
    if [ -z "$tps" ] || [ "${failed:-0}" != 0 ]; then
        echo "fail"
        grep -m3 -i error <<<"$out" >&2 || true
    else
        echo "$tps $lat"
    fi
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="n/a"||b=="n/a"||b==0) print "n/a"; else printf "%.2f", a/b }'; }

RESULTS=()
# compare NAME PGBENCH-ARGS… : interleaved rounds over the targets
compare() {
    local name=$1; shift
    local -A tps lat
    local targets=(direct pgsidecar)
    [[ -n "$BOUNCER_PORT" && $name != prepared* ]] && targets+=(pgbouncer)
    [[ -n "$BOUNCER_PORT" && $name == prepared* ]] && log "$name: PgBouncer $(pgbouncer --version | head -1 | cut -d' ' -f2) has no prepared statements in transaction mode"
    for round in $(seq "$ROUNDS"); do
        for t in "${targets[@]}"; do
            local port
            case $t in direct) port=$PRIMARY_PORT ;; pgsidecar) port=$SIDECAR_PORT ;; pgbouncer) port=$BOUNCER_PORT ;; esac
            read -r r_tps r_lat <<<"$(run_pgbench "$port" "$@")"
            log "$name round $round $t: ${r_tps} tps ${r_lat:-} ms"
            [ "$r_tps" = fail ] && continue
            tps[$t]+="$r_tps "
            lat[$t]+="$r_lat "
        done
    done
    local d s b
    d=$(tr ' ' '\n' <<<"${tps[direct]:-}" | grep . | median)
    s=$(tr ' ' '\n' <<<"${tps[pgsidecar]:-}" | grep . | median)
    b=$(tr ' ' '\n' <<<"${tps[pgbouncer]:-}" | grep . | median)
    local dl sl bl
    dl=$(tr ' ' '\n' <<<"${lat[direct]:-}" | grep . | median)
    sl=$(tr ' ' '\n' <<<"${lat[pgsidecar]:-}" | grep . | median)
    bl=$(tr ' ' '\n' <<<"${lat[pgbouncer]:-}" | grep . | median)
    RESULTS+=("$(printf '%-22s %10s %10s %10s   %7s %7s %7s   %6s %6s' "$name" "$d" "$s" "$b" "$dl" "$sl" "$bl" "$(ratio "$s" "$b")" "$(ratio "$s" "$d")")")
}

# latency: pgbench -c 1 with a per-transaction log, p50/p99 in µs
latency() {
    local name=$1 port=$2
    local dir="$WORK/lat-$name"
    mkdir -p "$dir" && chmod 777 "$dir"
    (cd "$dir" && PGPASSWORD=$PASSWORD "$BINDIR/pgbench" -n -S -c 1 -T "$DURATION" -l -h 127.0.0.1 -p "$port" -U bench bench >/dev/null 2>&1)
    cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%d %d", a[int(NR*0.5)], a[int(NR*0.99)]}'
}

# variant NAME TOML [VAR=value…]: a second pgsidecar from the bench config
# with TOML appended and the variables set, started once per NAME; sets
# VARIANT_PORT.
declare -A VARIANTS=()
variant() {
    local name=$1 toml=$2; shift 2
    if [ -z "${VARIANTS[$name]:-}" ]; then
        local port
        port=$(free_port)
        sed -e "s/127.0.0.1:$SIDECAR_PORT/127.0.0.1:$port/" -e "s/127.0.0.1:$SIDECAR_HTTP/127.0.0.1:$(free_port)/" \
            "$WORK/pgsidecar.toml" >"$WORK/pgsidecar-$name.toml"
        printf '%b' "$toml" >>"$WORK/pgsidecar-$name.toml"
        env "$@" PGSIDECAR_LOG=warn ./target/release/pgsidecar run -c "$WORK/pgsidecar-$name.toml" >"$WORK/pgsidecar-$name.log" 2>&1 &
        PIDS+=("$!")
        wait_port "$port"
        VARIANTS[$name]=$port
    fi
    VARIANT_PORT=${VARIANTS[$name]}
}

# side_by_side LABEL CLIENTS A_NAME A_PORT B_NAME B_PORT: -S through two
# pgsidecars, interleaved; records the median tps of each and A/B.
side_by_side() {
    local label=$1 c=$2 a=$3 a_port=$4 b=$5 b_port=$6 j=$(( $2 < 2 ? 1 : 2 ))
    local a_tps="" b_tps="" t
    for round in $(seq "$ROUNDS"); do
        read -r t _ <<<"$(run_pgbench "$a_port" -S -c "$c" -j "$j")"
        log "$label c=$c round $round $a: $t tps"
        [ "$t" != fail ] && a_tps+="$t "
        read -r t _ <<<"$(run_pgbench "$b_port" -S -c "$c" -j "$j")"
        log "$label c=$c round $round $b: $t tps"
        [ "$t" != fail ] && b_tps+="$t "
    done
    local m_a m_b
    m_a=$(tr ' ' '\n' <<<"$a_tps" | grep . | median)
    m_b=$(tr ' ' '\n' <<<"$b_tps" | grep . | median)
    SIDE_BY_SIDE+=("$label, -S c=$c: $a $m_a tps, $b $m_b tps, $a/$b $(ratio "$m_a" "$m_b")")
}

# memory: RSS growth per idle client at IDLE_CLIENTS connections
memory() {
    ulimit -n $((IDLE_CLIENTS * 2 + 1000)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    local before after
    before=$(awk '/VmRSS/ {print $2}' "/proc/$SIDECAR_PID/status")
    python3 benches/idle_clients.py 127.0.0.1 "$SIDECAR_PORT" bench bench "$PASSWORD" "$IDLE_CLIENTS" "$SIDECAR_PID" >"$WORK/idle.out"
    after=$(awk '/^rss_kb/ {print $2}' "$WORK/idle.out")
    local opened
    opened=$(awk '/^opened/ {print $2}' "$WORK/idle.out")
    awk -v b="$before" -v a="$after" -v n="$opened" 'BEGIN { printf "idle clients: %d, RSS %d KiB -> %d KiB, %.2f KiB per client\n", n, b, a, (a-b)/n }'
}

# --- main --------------------------------------------------------------------
[ -x target/release/pgsidecar ] || cargo build --release
start_cluster
start_pgsidecar
start_pgbouncer

for w in $WORKLOADS; do
    case $w in
        select | extended | prepared | tpcb | connect)
            for c in $CLIENTS; do
                j=$(( c < 2 ? 1 : 2 ))
                case $w in
                    select) compare "select c=$c" -S -c "$c" -j "$j" ;;
                    extended) compare "extended c=$c" -S -M extended -c "$c" -j "$j" ;;
                    prepared) compare "prepared c=$c" -S -M prepared -c "$c" -j "$j" ;;
                    tpcb) compare "tpcb c=$c" -c "$c" -j "$j" ;;
                    connect) compare "connect c=$c" -S -C -c "$c" -j "$j" ;;
                esac
            done
            ;;
        latency)
            for round in $(seq "$ROUNDS"); do
                read -r dp50 dp99 <<<"$(latency direct "$PRIMARY_PORT")"
                read -r sp50 sp99 <<<"$(latency pgsidecar "$SIDECAR_PORT")"
                bp50=n/a bp99=n/a
                [ -n "$BOUNCER_PORT" ] && read -r bp50 bp99 <<<"$(latency pgbouncer "$BOUNCER_PORT")"
                log "latency round $round: direct p50 ${dp50}us p99 ${dp99}us, pgsidecar p50 ${sp50}us p99 ${sp99}us, pgbouncer p50 ${bp50}us p99 ${bp99}us"
                LAT+=("$dp50 $dp99 $sp50 $sp99 $bp50 $bp99")
            done
            ;;
        memory) MEMORY=$(memory) ;;
        observe)
            # The cost of digests, the slow-query log and EXPLAIN sampling.
            variant off '[observability]\nenabled = false\n'
            for c in $CLIENTS; do side_by_side observability "$c" on "$SIDECAR_PORT" off "$VARIANT_PORT"; done
            ;;
        threads)
            # [proxy] worker_threads: 1 against the default, one per core.
            variant one '' PGSIDECAR_PROXY_WORKER_THREADS=1
            for c in $CLIENTS; do side_by_side worker_threads "$c" one "$VARIANT_PORT" percore "$SIDECAR_PORT"; done
            ;;
    esac
done

echo
echo "pgbench medians of $ROUNDS interleaved rounds of ${DURATION}s, pool $POOL, scale $SCALE ($(nproc) cores)"
printf '%-22s %10s %10s %10s   %7s %7s %7s   %6s %6s\n' workload "direct" "pgsidecar" "pgbouncer" "lat_d" "lat_s" "lat_b" "s/b" "s/d"
for r in "${RESULTS[@]:-}"; do [ -n "$r" ] && echo "$r"; done
if [ -n "${LAT[*]:-}" ]; then
    dp50=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f1; done | median)
    dp99=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f2; done | median)
    sp50=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f3; done | median)
    sp99=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f4; done | median)
    bp50=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f5; done | grep -v n/a | median)
    bp99=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f6; done | grep -v n/a | median)
    echo "latency, 1 client (us): direct p50 $dp50 p99 $dp99; pgsidecar p50 $sp50 p99 $sp99; pgbouncer p50 $bp50 p99 $bp99"
    echo "p50 added over direct (us): pgsidecar $(awk -v a="$sp50" -v b="$dp50" 'BEGIN {print a-b}'), pgbouncer $(awk -v a="$bp50" -v b="$dp50" 'BEGIN {if (a=="n/a") print a; else print a-b}')"
fi
[ -n "${MEMORY:-}" ] && echo "$MEMORY"
for o in "${SIDE_BY_SIDE[@]:-}"; do [ -n "$o" ] && echo "$o"; done
