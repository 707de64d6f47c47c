#!/usr/bin/env bash
# Side-by-side pgbench: direct Postgres vs pgsidecar vs PgBouncer, interleaved
# (A B C A B C …) so that a noisy, shared machine affects all three alike.
# Prints the median tps and latency of each target per workload, and ratios,
# and the CPU time each proxy used per transaction, user and system apart
# (utime and stime of the whole process from /proc/PID/stat, read before
# and after each pgbench run, divided by the transactions it processed;
# this includes the clients' logins at the start of each run).
#
#   bash benches/pgbench.sh                 # everything (about 20 minutes)
#   ROUNDS=3 DURATION=10 CLIENTS="16" WORKLOADS="select" bash benches/pgbench.sh
#
# It starts a throwaway primary + streaming replica (as user postgres when
# run as root), pgsidecar (release build, read/write split, metrics on) and,
# if installed, Debian's PgBouncer (transaction mode, same pool size), then
# removes everything. Set PGSIDECAR_BENCH_KEEP=1 to keep the cluster dir.
#
# Workloads: select (-S simple), extended (-S -M extended), select-unix and
# extended-unix (the same through each proxy's Unix socket: pgsidecar's
# unix_socket_dir against PgBouncer's, no direct column), prepared
# (-S -M prepared; PgBouncer 1.18 cannot), tpcb (TPC-B), connect (-S -C:
# a new connection per transaction), latency (-S -c 1: p50/p99 from
# pgbench's per-transaction log; direct, pgsidecar and PgBouncer), memory (RSS per idle client at
# IDLE_CLIENTS connections), observe (-S at each CLIENTS count through
# two fresh pgsidecars, one with observability on and one with
# [observability] enabled = false: the cost of digests and the slow-query
# log), threads (-S at each CLIENTS count through pgsidecar with its
# default worker_threads = 1, one thread, and through a second one with
# worker_threads = 0, one worker per core). observe and threads are not in
# the default list.
set -uo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"16 500"}
WORKLOADS=${WORKLOADS:-"select extended select-unix extended-unix prepared tpcb connect latency memory"}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}

source benches/lib.sh

# --- measuring ---------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

# endpoint TARGET [TRANSPORT] → "host port pid" (pid "-": CPU not measured)
endpoint() {
    case $1/${2:-tcp} in
        direct/tcp) echo "127.0.0.1 $PRIMARY_PORT -" ;;
        pgsidecar/tcp) echo "127.0.0.1 $SIDECAR_PORT $SIDECAR_PID" ;;
        pgbouncer/tcp) echo "127.0.0.1 $BOUNCER_PORT $BOUNCER_PID" ;;
        pgsidecar/unix) echo "$SIDECAR_SOCKET_DIR $SIDECAR_PORT $SIDECAR_PID" ;;
        pgbouncer/unix) echo "$BOUNCER_SOCKET_DIR $BOUNCER_PORT $BOUNCER_PID" ;;
        variant-*/tcp) echo "127.0.0.1 ${VARIANTS[${1#variant-}]} ${VARIANT_PIDS[${1#variant-}]}" ;;
        *) log "no endpoint $1/${2:-tcp}"; exit 1 ;;
    esac
}

# cpu_ticks PID → "utime stime" of the whole process in clock ticks ("- -"
# without a PID). Fields 14 and 15 of /proc/PID/stat, counted after the
# command name, which may hold spaces.
cpu_ticks() {
    if [ "$1" = - ] || [ ! -r "/proc/$1/stat" ]; then echo "- -"; return; fi
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}'
}

# per_txn TICKS_BEFORE TICKS_AFTER TRANSACTIONS → µs per transaction
per_txn() {
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" \
        'BEGIN { if (a=="-"||b=="-"||n+0<=0) print "-"; else printf "%.1f", (b-a)*1e6/hz/n }'
}

# run_pgbench HOST PORT PID ARGS… → "tps latency_ms user_us sys_us" (CPU
# per transaction of process PID, "-" for none), or "fail"
run_pgbench() {
    local host=$1 port=$2 pid=$3; shift 3
    local out u0 s0 u1 s1
    read -r u0 s0 <<<"$(cpu_ticks "$pid")"
    out=$(PGPASSWORD=$PASSWORD "$BINDIR/pgbench" -n -h "$host" -p "$port" -U bench -T "$DURATION" "$@" bench 2>&1) || true
    read -r u1 s1 <<<"$(cpu_ticks "$pid")"
    local tps lat failed txns
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out" | head -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out" | head -1)
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out" | head -1)
    if [ -z "$tps" ] || [ "${failed:-0}" != 0 ]; then
        echo "fail"
        grep -m3 -i error <<<"$out" >&2 || tail -3 <<<"$out" >&2
    else
        echo "$(printf '%.0f' "$tps") $lat $(per_txn "$u0" "$u1" "$txns") $(per_txn "$s0" "$s1" "$txns")"
    fi
}

# run_target TARGET TRANSPORT ARGS… : run_pgbench against a named target
run_target() {
    local target=$1 transport=$2; shift 2
    local host port pid
    read -r host port pid <<<"$(endpoint "$target" "$transport")"
    run_pgbench "$host" "$port" "$pid" "$@"
}

median() { grep -v '^-$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="n/a"||b=="n/a"||b==0) print "n/a"; else printf "%.2f", a/b }'; }

sum() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="n/a"||b=="n/a") print "n/a"; else printf "%.1f", a+b }'; }

# of WORDS: the median of the space-separated values
of() { tr ' ' '\n' <<<"$1" | grep . | median; }

ROW_FORMAT='%-22s %9s %9s %9s  %6s %6s %6s  %5s %5s  %6s %6s %6s %6s %5s'
RESULTS=()
# compare NAME TRANSPORT PGBENCH-ARGS… : interleaved rounds over the
# targets (TCP: direct, pgsidecar, PgBouncer; unix: the two proxies)
compare() {
    local name=$1 transport=$2; shift 2
    local -A tps lat usr sys
    local targets=(pgsidecar)
    [ "$transport" = tcp ] && targets=(direct pgsidecar)
    [[ -n "$BOUNCER_PORT" && $name != prepared* ]] && targets+=(pgbouncer)
    [[ -n "$BOUNCER_PORT" && $name == prepared* ]] && log "$name: PgBouncer $(pgbouncer --version | head -1 | cut -d' ' -f2) has no prepared statements in transaction mode"
    for round in $(seq "$ROUNDS"); do
        for t in "${targets[@]}"; do
            read -r r_tps r_lat r_usr r_sys <<<"$(run_target "$t" "$transport" "$@")"
            log "$name round $round $t: ${r_tps} tps ${r_lat:-} ms, CPU per transaction user ${r_usr:-} us sys ${r_sys:-} us"
            [ "$r_tps" = fail ] && continue
            tps[$t]+="$r_tps "
            lat[$t]+="$r_lat "
            usr[$t]+="$r_usr "
            sys[$t]+="$r_sys "
        done
    done
    local d s b dl sl bl su ss bu bs
    d=$(of "${tps[direct]:-}") s=$(of "${tps[pgsidecar]:-}") b=$(of "${tps[pgbouncer]:-}")
    dl=$(of "${lat[direct]:-}") sl=$(of "${lat[pgsidecar]:-}") bl=$(of "${lat[pgbouncer]:-}")
    su=$(of "${usr[pgsidecar]:-}") ss=$(of "${sys[pgsidecar]:-}")
    bu=$(of "${usr[pgbouncer]:-}") bs=$(of "${sys[pgbouncer]:-}")
    # shellcheck disable=SC2059
    RESULTS+=("$(printf "$ROW_FORMAT" "$name" "$d" "$s" "$b" "$dl" "$sl" "$bl" "$(ratio "$s" "$b")" "$(ratio "$s" "$d")" \
        "$su" "$ss" "$bu" "$bs" "$(ratio "$(sum "$su" "$ss")" "$(sum "$bu" "$bs")")")")
}

# latency TARGET: pgbench -c 1 with a per-transaction log → "p50 p99"
# in µs and the target's CPU per transaction, "user sys" in µs
latency() {
    local name=$1 host port pid u0 s0 u1 s1
    read -r host port pid <<<"$(endpoint "$name")"
    local dir="$WORK/lat-$name"
    rm -rf "$dir" && mkdir -p "$dir" && chmod 777 "$dir"
    read -r u0 s0 <<<"$(cpu_ticks "$pid")"
    (cd "$dir" && PGPASSWORD=$PASSWORD "$BINDIR/pgbench" -n -S -c 1 -T "$DURATION" -l -h "$host" -p "$port" -U bench bench >/dev/null 2>&1)
    read -r u1 s1 <<<"$(cpu_ticks "$pid")"
    local txns
    txns=$(cat "$dir"/pgbench_log.* | wc -l)
    cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%d %d", a[int(NR*0.5)], a[int(NR*0.99)]}'
    echo " $(per_txn "$u0" "$u1" "$txns") $(per_txn "$s0" "$s1" "$txns")"
}

# variant NAME TOML [VAR=value…]: a second pgsidecar from the bench config
# with TOML appended and the variables set, started once per NAME; sets
# VARIANT_PORT; its target name for endpoint is variant-NAME.
declare -A VARIANTS=() VARIANT_PIDS=()
variant() {
    local name=$1 toml=$2; shift 2
    if [ -z "${VARIANTS[$name]:-}" ]; then
        local port
        port=$(free_port)
        sed -e "s/127.0.0.1:$SIDECAR_PORT/127.0.0.1:$port/" -e "s/127.0.0.1:$SIDECAR_HTTP/127.0.0.1:$(free_port)/" \
            "$WORK/pgsidecar.toml" >"$WORK/pgsidecar-$name.toml"
        printf '%b' "$toml" >>"$WORK/pgsidecar-$name.toml"
        env "$@" PGSIDECAR_LOG=warn "${PGSIDECAR_BIN:-./target/release/pgsidecar}" run -c "$WORK/pgsidecar-$name.toml" >"$WORK/pgsidecar-$name.log" 2>&1 &
        PIDS+=("$!")
        VARIANT_PIDS[$name]=$!
        wait_port "$port"
        VARIANTS[$name]=$port
    fi
    VARIANT_PORT=${VARIANTS[$name]}
}

# side_by_side LABEL CLIENTS A_NAME A_TARGET B_NAME B_TARGET: -S through
# two pgsidecars, interleaved; records the median tps and CPU per
# transaction (user+sys µs) of each, and A/B.
side_by_side() {
    local label=$1 c=$2 a=$3 a_target=$4 b=$5 b_target=$6 j=$(( $2 < 2 ? 1 : 2 ))
    local -A tps cpu
    local t u s n target
    for round in $(seq "$ROUNDS"); do
        for n in "$a" "$b"; do
            target=$a_target
            [ "$n" = "$b" ] && target=$b_target
            read -r t _ u s <<<"$(run_target "$target" tcp -S -c "$c" -j "$j")"
            log "$label c=$c round $round $n: $t tps, CPU per transaction user ${u:-} us sys ${s:-} us"
            [ "$t" = fail ] && continue
            tps[$n]+="$t "
            cpu[$n]+="$(sum "$u" "$s") "
        done
    done
    local m_a m_b c_a c_b
    m_a=$(of "${tps[$a]:-}") m_b=$(of "${tps[$b]:-}")
    c_a=$(of "${cpu[$a]:-}") c_b=$(of "${cpu[$b]:-}")
    SIDE_BY_SIDE+=("$label, -S c=$c: $a $m_a tps ($c_a us CPU/txn), $b $m_b tps ($c_b us CPU/txn), $a/$b tps $(ratio "$m_a" "$m_b"), CPU $(ratio "$c_a" "$c_b")")
}

# memory: RSS growth per idle client at IDLE_CLIENTS connections
memory() {
    ulimit -n $((IDLE_CLIENTS * 2 + 1000)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    # A fresh pgsidecar: one that served the other workloads first has
    # freed buffers its allocator keeps, which idle clients then reuse
    # without growing RSS (measured: 3.94 KiB per client after a 500-client
    # -S run against 4.27 on a fresh process, the same final RSS).
    variant idle ''
    local before after pid=${VARIANT_PIDS[idle]}
    before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    python3 benches/idle_clients.py 127.0.0.1 "$VARIANT_PORT" bench bench "$PASSWORD" "$IDLE_CLIENTS" "$pid" >"$WORK/idle.out"
    after=$(awk '/^rss_kb/ {print $2}' "$WORK/idle.out")
    local opened
    opened=$(awk '/^opened/ {print $2}' "$WORK/idle.out")
    # Started in this subshell: the clean-up's list of PIDs never saw it.
    kill "$pid" 2>/dev/null
    awk -v b="$before" -v a="$after" -v n="$opened" 'BEGIN { printf "idle clients: %d, RSS %d KiB -> %d KiB, %.2f KiB per client\n", n, b, a, (a-b)/n }'
}

# --- main --------------------------------------------------------------------
[ -n "${PGSIDECAR_BIN:-}" ] || [ -x target/release/pgsidecar ] || cargo build --release
start_cluster
start_pgsidecar
start_pgbouncer

for w in $WORKLOADS; do
    case $w in
        select | extended | select-unix | extended-unix | prepared | tpcb | connect)
            for c in $CLIENTS; do
                j=$(( c < 2 ? 1 : 2 ))
                case $w in
                    select) compare "select c=$c" tcp -S -c "$c" -j "$j" ;;
                    extended) compare "extended c=$c" tcp -S -M extended -c "$c" -j "$j" ;;
                    select-unix) compare "select unix c=$c" unix -S -c "$c" -j "$j" ;;
                    extended-unix) compare "extended unix c=$c" unix -S -M extended -c "$c" -j "$j" ;;
                    prepared) compare "prepared c=$c" tcp -S -M prepared -c "$c" -j "$j" ;;
                    tpcb) compare "tpcb c=$c" tcp -c "$c" -j "$j" ;;
                    connect) compare "connect c=$c" tcp -S -C -c "$c" -j "$j" ;;
                esac
            done
            ;;
        latency)
            for round in $(seq "$ROUNDS"); do
                read -r dp50 dp99 _ _ <<<"$(latency direct)"
                read -r sp50 sp99 su ss <<<"$(latency pgsidecar)"
                bp50=n/a bp99=n/a bu=- bs=-
                [ -n "$BOUNCER_PORT" ] && read -r bp50 bp99 bu bs <<<"$(latency pgbouncer)"
                log "latency round $round: direct p50 ${dp50}us p99 ${dp99}us, pgsidecar p50 ${sp50}us p99 ${sp99}us (CPU/txn user $su sys $ss us), pgbouncer p50 ${bp50}us p99 ${bp99}us (CPU/txn user $bu sys $bs us)"
                LAT+=("$dp50 $dp99 $sp50 $sp99 $bp50 $bp99 $su $ss $bu $bs")
            done
            ;;
        memory) MEMORY=$(memory) ;;
        observe)
            # The cost of digests, the slow-query log and EXPLAIN sampling.
            # Two fresh processes started together, so that both have the
            # same history (the main pgsidecar has served every earlier
            # workload, 10,000 idle clients among them).
            variant on ''
            variant off '[observability]\nenabled = false\n'
            for c in $CLIENTS; do side_by_side observability "$c" on variant-on off variant-off; done
            ;;
        threads)
            # [proxy] worker_threads: the default, one thread, against 0,
            # one worker per core.
            variant percore '' PGSIDECAR_PROXY_WORKER_THREADS=0
            for c in $CLIENTS; do side_by_side worker_threads "$c" one pgsidecar percore variant-percore; done
            ;;
    esac
done

echo
echo "pgbench medians of $ROUNDS interleaved rounds of ${DURATION}s, pool $POOL, scale $SCALE ($(nproc) cores)"
echo "tps (direct, pgsidecar, pgbouncer), latency ms (lat_*), proxy CPU per transaction in us"
echo "(s_usr/s_sys: pgsidecar user/system, b_usr/b_sys: PgBouncer; cpu s/b: user+system ratio)"
# shellcheck disable=SC2059
printf "$ROW_FORMAT\n" workload "direct" "pgsidecar" "pgbouncer" "lat_d" "lat_s" "lat_b" "s/b" "s/d" "s_usr" "s_sys" "b_usr" "b_sys" "cpu"
for r in "${RESULTS[@]:-}"; do [ -n "$r" ] && echo "$r"; done
if [ -n "${LAT[*]:-}" ]; then
    dp50=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f1; done | median)
    dp99=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f2; done | median)
    sp50=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f3; done | median)
    sp99=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f4; done | median)
    bp50=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f5; done | grep -v n/a | median)
    bp99=$(for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f6; done | grep -v n/a | median)
    echo "latency, 1 client (us): direct p50 $dp50 p99 $dp99; pgsidecar p50 $sp50 p99 $sp99; pgbouncer p50 $bp50 p99 $bp99"
    col() { for l in "${LAT[@]}"; do echo "$l" | cut -d' ' -f"$1"; done | grep -v n/a | median; }
    echo "CPU per transaction, 1 client (us): pgsidecar user $(col 7) sys $(col 8); pgbouncer user $(col 9) sys $(col 10)"
    echo "p50 added over direct (us): pgsidecar $(awk -v a="$sp50" -v b="$dp50" 'BEGIN {print a-b}'), pgbouncer $(awk -v a="$bp50" -v b="$dp50" 'BEGIN {if (a=="n/a") print a; else print a-b}')"
fi
[ -n "${MEMORY:-}" ] && echo "$MEMORY"
for o in "${SIDE_BY_SIDE[@]:-}"; do [ -n "$o" ] && echo "$o"; done
