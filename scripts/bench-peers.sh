#!/usr/bin/env bash
# bench-peers.sh — kvstore, Redis and etcd measured side by side by kvbench, on this machine,
# with the same workloads, in one run, and a markdown table of the results.
#
#   ./scripts/bench-peers.sh [--duration 10s] [--warmup 2s] [--keys 20000] [--connections 32]
#                            [--rate 2000] [--workloads "a b c write"] [--out DIR] [--no-plots]
#
# What it does:
#   1. installs what is missing (Debian packages): the build dependencies
#      (scripts/setup-deps.sh), redis-server, etcd-server + etcd-client, gnuplot-nox;
#   2. builds kvstore and kvbench (Release) into $KV_BUILD_DIR (default build/);
#   3. starts, on 127.0.0.1 only, ports $KV_BENCH_PORT_BASE.. (default 27100..27140), data in
#      a temporary directory:
#        - kvstore: 3 nodes when scripts/manage-nodes.sh exists (clustering has landed),
#          else 1 node — the output says which;
#        - Redis: 1 node; and a primary with 2 replicas (every SET followed by WAIT 1);
#        - etcd: 3 members;
#      each with comparable durability: kvstore storage.sync=interval (fsync every 100 ms),
#      Redis appendonly with appendfsync everysec, etcd as shipped (fsync on every commit);
#   4. runs kvbench against each: every workload closed loop with the same connections, then
#      YCSB A open loop at --rate ops/s (latency at equal load, no coordinated omission);
#   5. stops everything it started by PID (also on error or ^C) and removes the data;
#   6. prints the markdown table and writes it, the kvbench JSON reports and plots to
#      --out DIR (default: a new directory under ${TMPDIR:-/tmp}).
#
# Exit status: 0 done, 1 a step failed (message says which), 2 bad arguments.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

DURATION=10s
WARMUP=2s
KEYS=20000
CONNS=32
RATE=2000
WORKLOADS="a b c write"
OUT=""
PLOTS=1
BUILD=${KV_BUILD_DIR:-$ROOT/build}
BASE=${KV_BENCH_PORT_BASE:-27100}

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
    echo "bench-peers: $*" >&2
    exit 1
}
bad() {
    echo "bench-peers: $*" >&2
    echo "Try '$0 --help'." >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    --duration) DURATION=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --keys) KEYS=${2:?}; shift 2 ;;
    --connections) CONNS=${2:?}; shift 2 ;;
    --rate) RATE=${2:?}; shift 2 ;;
    --workloads) WORKLOADS=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --no-plots) PLOTS=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) bad "unknown argument '$1'" ;;
    esac
done
[[ $BASE =~ ^[0-9]+$ && $BASE -ge 1024 && $BASE -le 65000 ]] || bad "KV_BENCH_PORT_BASE must be 1024..65000"
for w in $WORKLOADS; do
    case "$w" in a | b | c | write) ;; *) bad "--workloads: '$w' is not one of a b c write" ;; esac
done

# ---------- 1. packages ----------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
"$ROOT/scripts/setup-deps.sh"
need=()
for p in redis-server etcd-server etcd-client gnuplot-nox; do
    installed "$p" || need+=("$p")
done
if [[ ${#need[@]} -gt 0 ]]; then
    echo "bench-peers: installing ${need[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"; then
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" || {
            # gnuplot is optional (plots are skipped without it); the servers are not.
            installed redis-server && installed etcd-server || die "could not install ${need[*]}"
        }
    fi
fi
REDIS=$(command -v redis-server) || die "redis-server not found after install"
REDIS_CLI=$(command -v redis-cli) || die "redis-cli not found (package redis-tools)"
ETCD=$(command -v etcd) || die "etcd not found after install (package etcd-server)"

# ---------- 2. build ----------
echo "bench-peers: building kvstore and kvbench (Release) in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target kvstore kvbench >/dev/null
KVSTORE=$BUILD/kvstore
KVBENCH=$BUILD/kvbench

# ---------- 3. processes, stopped by PID on exit ----------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-bench-peers.XXXXXX")
[[ -n $OUT ]] || OUT="${TMPDIR:-/tmp}/kvstore-bench-peers-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Up to 10 s each for a clean exit, then SIGKILL.
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for off in $(seq 0 40); do
    port_free $((BASE + off)) || die "port $((BASE + off)) on 127.0.0.1 is in use; set KV_BENCH_PORT_BASE"
done

# wait_for DESCRIPTION SECONDS COMMAND...: poll until COMMAND succeeds, or fail.
wait_for() {
    local what=$1 secs=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [[ $SECONDS -lt $end ]] || die "$what did not come up within ${secs}s (logs in $TMP)"
        sleep 0.1
    done
}
http_ok() { curl -fsS -m 2 "$1" >/dev/null; }
ring_has() { [[ $(curl -fsS -m 2 "$1/v1/cluster/ring" | grep -o '"tokens":' | wc -l) -ge $2 ]]; }

stop_all() { cleanup; TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-bench-peers.XXXXXX"); }

# kvstore: 3 nodes once clustering exists (scripts/manage-nodes.sh is part of that work).
KV_NODES=1
[[ -e "$ROOT/scripts/manage-nodes.sh" ]] && KV_NODES=3
start_kvstore() {
    local i urls="" seeds=""
    for i in $(seq 1 "$KV_NODES"); do
        seeds+="${seeds:+,}127.0.0.1:$((BASE + 10 + i))"
    done
    for i in $(seq 1 "$KV_NODES"); do
        local port=$((BASE + i)) cport=$((BASE + 10 + i))
        # The peer listener too stays on 127.0.0.1 and in our port range.
        local args=(servenode --server.host 127.0.0.1 --port "$port" --data-dir "$TMP/kv$i"
            --name "bench$i" --storage.sync interval --log-level warn
            --cluster.host 127.0.0.1 --cluster.port "$cport")
        [[ $KV_NODES -gt 1 ]] && args+=(--cluster.seeds "$seeds")
        "$KVSTORE" "${args[@]}" >"$TMP/kv$i.log" 2>&1 &
        PIDS+=($!)
        urls+="${urls:+,}http://127.0.0.1:$port"
    done
    for i in $(seq 1 "$KV_NODES"); do
        wait_for "kvstore node $i" 30 http_ok "http://127.0.0.1:$((BASE + i))/readyz"
    done
    # Measure the cluster, not its first second: every node's ring must hold every node.
    for i in $(seq 1 "$KV_NODES"); do
        wait_for "kvstore node $i's ring" 30 ring_has "http://127.0.0.1:$((BASE + i))" "$KV_NODES"
    done
    KV_URLS=$urls
}

start_redis() { # start_redis PORT [PRIMARY_PORT]
    local port=$1 dir="$TMP/redis$1"
    mkdir -p "$dir"
    local args=(--port "$port" --bind 127.0.0.1 --protected-mode no --dir "$dir" --save ""
        --appendonly yes --appendfsync everysec --daemonize no --logfile "$dir/redis.log")
    [[ $# -gt 1 ]] && args+=(--replicaof 127.0.0.1 "$2")
    "$REDIS" "${args[@]}" &
    PIDS+=($!)
    wait_for "redis on $port" 20 "$REDIS_CLI" -p "$port" ping
}
redis_replicas() { "$REDIS_CLI" -p "$1" info replication | grep -q "^connected_slaves:$2"; }

start_etcd() {
    local i cluster=""
    for i in 1 2 3; do
        cluster+="${cluster:+,}e$i=http://127.0.0.1:$((BASE + 30 + i))"
    done
    ETCD_URLS=""
    for i in 1 2 3; do
        local cport=$((BASE + 20 + i)) pport=$((BASE + 30 + i))
        "$ETCD" --name "e$i" --data-dir "$TMP/etcd$i" \
            --listen-client-urls "http://127.0.0.1:$cport" \
            --advertise-client-urls "http://127.0.0.1:$cport" \
            --listen-peer-urls "http://127.0.0.1:$pport" \
            --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token kvstore-bench --log-level warn \
            >"$TMP/etcd$i.log" 2>&1 &
        PIDS+=($!)
        ETCD_URLS+="${ETCD_URLS:+,}http://127.0.0.1:$cport"
    done
    for i in 1 2 3; do
        wait_for "etcd member $i" 30 etcd_healthy "http://127.0.0.1:$((BASE + 20 + i))/health"
    done
}
etcd_healthy() { curl -fsS -m 2 "$1" | grep -q '"health":"true"'; }

# ---------- 4. measurements ----------
TABLE="$OUT/rows.md"
: >"$TABLE"
num() { # num JSON KEY: the first number after "KEY": in JSON
    [[ $1 =~ \"$2\":([0-9.]+) ]] && printf '%s' "${BASH_REMATCH[1]}" || printf 'NaN'
}
# bench SYSTEM SLUG LOAD(yes|no) MODE WORKLOAD KVBENCH-ARGS...
bench() {
    local system=$1 slug=$2 load=$3 mode=$4 wl=$5
    shift 5
    local json="$OUT/$slug-$wl-$mode.json" extra=()
    [[ $load == yes ]] || extra+=(--no-load)
    [[ $mode == open ]] && extra+=(--rate "$RATE")
    [[ $PLOTS == 1 ]] && extra+=(--plot "$OUT/$slug-$wl-$mode.svg")
    echo "bench-peers: $system, workload $wl, $mode loop"
    "$KVBENCH" "$@" --workload "$wl" --keys "$KEYS" --connections "$CONNS" \
        --duration "$DURATION" --warmup "$WARMUP" --json --quiet "${extra[@]}" >"$json" ||
        echo "bench-peers: kvbench exited $? for $system $wl $mode (see $json)" >&2
    local doc run all
    doc=$(cat "$json")
    run=${doc#*\"run\":}
    all=${run#*\"latency_ms\":\{\"all\":}
    local thr p50 p99 p999 failed missed
    thr=$(num "$run" throughput)
    failed=$(num "$run" failed)
    missed=$(num "$run" missed)
    p50=$(num "$all" p50)
    p99=$(num "$all" p99)
    p999=$(num "$all" p99_9)
    local what="$wl"
    [[ $mode == open ]] && what="$wl @ $RATE/s"
    printf '| %s | %s | %.0f | %.3f | %.3f | %.3f | %s | %s |\n' "$system" "$what" "$thr" \
        "$p50" "$p99" "$p999" "$failed" "$missed" >>"$TABLE"
}
run_all() { # run_all SYSTEM SLUG KVBENCH-TARGET-ARGS...
    local system=$1 slug=$2 first=yes wl
    shift 2
    for wl in $WORKLOADS; do
        bench "$system" "$slug" $first closed "$wl" "$@"
        first=no
    done
    bench "$system" "$slug" no open a "$@"
}

if [[ $KV_NODES -gt 1 ]]; then
    KV_LABEL="kvstore, 3 nodes (N=3, W=2, R=2)"
else
    KV_LABEL="kvstore, 1 node"
fi
echo "bench-peers: kvstore runs as $KV_NODES node(s)$([[ $KV_NODES == 1 ]] && echo ' (scripts/manage-nodes.sh not present: no clustering yet)')"

start_kvstore
run_all "$KV_LABEL" kvstore --target kvstore --url "$KV_URLS"
stop_all

start_redis $((BASE + 5))
run_all "Redis, 1 node" redis1 --target redis --url "redis://127.0.0.1:$((BASE + 5))"
stop_all

start_redis $((BASE + 6))
start_redis $((BASE + 7)) $((BASE + 6))
start_redis $((BASE + 8)) $((BASE + 6))
wait_for "redis replication" 30 redis_replicas $((BASE + 6)) 2
run_all "Redis, primary + 2 replicas (WAIT 1)" redis3 --target redis \
    --url "redis://127.0.0.1:$((BASE + 6))" --redis-wait 1
stop_all

start_etcd
run_all "etcd, 3 members" etcd3 --target etcd --url "$ETCD_URLS"
stop_all

# ---------- 6. the table ----------
CPU=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
{
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPUs ($CPU), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, $(. /etc/os-release && echo "$PRETTY_NAME")."
    echo "Versions: kvstore $("$KVSTORE" version 2>/dev/null | head -1 | awk '{print $NF}'), $("$REDIS" --version | awk '{print $1, $2, $3}'), etcd $("$ETCD" --version | awk '/etcd Version/{print $3}')."
    echo "kvbench: $KEYS keys (16 B), 100 B values, zipfian, $CONNS connections, 1 thread, warm-up $WARMUP, $DURATION per row; closed loop unless a rate is given (open loop, latency from the intended start)."
    echo
    echo "| system | workload | ops/s | p50 ms | p99 ms | p99.9 ms | failed | missed |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    cat "$TABLE"
} >"$OUT/peers.md"
rm -f "$TABLE"
echo
cat "$OUT/peers.md"
echo
echo "bench-peers: table in $OUT/peers.md; kvbench JSON reports$([[ $PLOTS == 1 ]] && echo ' and plots') in $OUT"
