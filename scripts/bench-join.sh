#!/usr/bin/env bash
# bench-join.sh — what a join costs: three nodes on 127.0.0.1 are loaded with data, a
# client runs a steady open-loop workload against them, and a fourth node joins. Prints the
# join's time, bytes and throughput (from the joining node's "join complete" log line) and
# the client's latency before and during the join (kvbench, same rate).
#
#   KV_BUILD_DIR=build-rel scripts/bench-join.sh [--keys N] [--value-size B] [--rate OPS]
#                                                [--streaming-rate SIZE] [--measure SECONDS]
#
# Defaults: 1,000,000 keys of 1000 bytes (about 1 GB on each node), 2000 ops/s of
# workload A at quorum, the default streaming.rate (64MiB per source). Everything runs
# in a temporary directory that is removed at the end; every process started is stopped
# by PID. Traffic only on 127.0.0.1. Needs kvstore and kvbench in KV_BUILD_DIR (a Release
# build: cmake -DCMAKE_BUILD_TYPE=Release).
set -euo pipefail

KEYS=1000000
VSIZE=1000
RATE=2000
SRATE=""
MEASURE=20
while (($#)); do
    case $1 in
    --keys) KEYS=$2; shift 2 ;;
    --value-size) VSIZE=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --streaming-rate) SRATE=$2; shift 2 ;;
    --measure) MEASURE=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-join: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${KV_BUILD_DIR:-$ROOT/build}
[[ $BUILD = /* ]] || BUILD=$ROOT/$BUILD
KVSTORE=$BUILD/kvstore
KVBENCH=$BUILD/kvbench
for b in "$KVSTORE" "$KVBENCH"; do
    [[ -x $b ]] || { echo "bench-join: $b not found (set KV_BUILD_DIR)" >&2; exit 1; }
done

DIR=$(mktemp -d /tmp/kv-bench-join.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

# Free ports: ask the kernel for four pairs (http, cluster).
ports=$(python3 - <<'EOF'
import socket
socks = []
for _ in range(8):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
read -r -a P <<<"$ports"
HTTP=("${P[0]}" "${P[1]}" "${P[2]}" "${P[3]}")
PEER=("${P[4]}" "${P[5]}" "${P[6]}" "${P[7]}")

start_node() { # index
    local i=$1 extra=()
    [[ -n $SRATE ]] && extra+=(--streaming.rate "$SRATE")
    "$KVSTORE" servenode --name "n$i" --host 127.0.0.1 --port "${HTTP[i]}" \
        --cluster.host 127.0.0.1 --cluster.port "${PEER[i]}" --data-dir "$DIR/n$i" \
        --cluster.seeds "127.0.0.1:${PEER[0]}" --storage.sync interval "${extra[@]}" \
        >"$DIR/n$i.log" 2>&1 &
    PIDS+=($!)
}

wait_ready() { # index
    local i=$1 t=0
    until curl -fsS -o /dev/null "http://127.0.0.1:${HTTP[i]}/readyz" 2>/dev/null; do
        sleep 0.2
        t=$((t + 1))
        ((t < 300)) || { echo "bench-join: n$i not ready" >&2; tail -20 "$DIR/n$i.log" >&2; exit 1; }
    done
}

wait_normal() { # index: until the node says it is normal (its own join finished)
    local i=$1 t=0
    until curl -fsS "http://127.0.0.1:${HTTP[i]}/v1/cluster/members" 2>/dev/null |
        tr '{' '\n' | grep '"self":true' | grep -q '"ring_status":"normal"'; do
        sleep 0.2
        t=$((t + 1))
        ((t < 600)) || { echo "bench-join: n$i never turned normal" >&2; exit 1; }
    done
}

urls() { # count
    local u="" i
    for ((i = 0; i < $1; i++)); do u+="${u:+,}http://127.0.0.1:${HTTP[i]}"; done
    echo "$u"
}

summary() { # kvbench --json output file → "ops/s, p50 / p99 / max ms, failed"
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["run"]
l = r["latency_ms"]["all"]
print("%.0f ops/s, p50 %.2f ms, p99 %.2f ms, max %.1f ms, %d failed of %d" %
      (r["throughput"], l["p50"], l["p99"], l["max"], r["failed"], r["ops"]))' "$1" 2>/dev/null ||
        echo "(no report)"
}

for i in 0 1 2; do start_node "$i"; done
for i in 0 1 2; do wait_ready "$i"; done
for i in 0 1 2; do wait_normal "$i"; done # one join at a time: theirs first
echo "loading $KEYS keys of $VSIZE bytes into 3 nodes (N=3) ..."
"$KVBENCH" -u "$(urls 3)" -w write -k "$KEYS" --value-size "$VSIZE" -c 64 -n 1 --warmup 0 \
    --max-time 30m >"$DIR/load.txt"
curl -fsS "http://127.0.0.1:${HTTP[0]}/v1/cluster/digest" | sed 's/^/n0 digest: /'
echo

echo "before the join: workload A at $RATE ops/s for ${MEASURE}s ..."
"$KVBENCH" -u "$(urls 3)" -w a --no-load -k "$KEYS" --value-size "$VSIZE" -c 32 -r "$RATE" \
    -d "${MEASURE}s" --warmup 2s --json >"$DIR/before.json"

echo "the join: n3 starts; the same workload runs meanwhile ..."
"$KVBENCH" -u "$(urls 3)" -w a --no-load -k "$KEYS" --value-size "$VSIZE" -c 32 -r "$RATE" \
    -d 600s --warmup 0 --json >"$DIR/during.json" &
BENCH=$!
PIDS+=("$BENCH")
t0=$(date +%s.%N)
start_node 3
until grep -q "join complete" "$DIR/n3.log" 2>/dev/null; do
    sleep 0.2
    kill -0 "${PIDS[4]}" 2>/dev/null || { echo "bench-join: n3 exited" >&2; tail -20 "$DIR/n3.log" >&2; exit 1; }
done
t1=$(date +%s.%N)
kill -INT "$BENCH" 2>/dev/null || true
wait "$BENCH" 2>/dev/null || true

echo
grep "join complete" "$DIR/n3.log" | sed 's/^.*msg=/joining node: /'
curl -fsS "http://127.0.0.1:${HTTP[3]}/metrics" | grep -E '^kv_sync_(raw_)?bytes_received_total|^kv_join_unit_failures_total' |
    sed 's/^/n3 /'
grep -c "streaming a slice failed" "$DIR/n3.log" | sed "s/^/slice failures logged: /" || true
grep -c "plan redone" "$DIR/n3.log" | sed "s/^/plans redone: /" || true
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "wall time from start to normal: %.1f s\n", b - a }'
cp "$DIR/n3.log" /tmp/kv-bench-join-n3.log 2>/dev/null && echo "(the joining node's log: /tmp/kv-bench-join-n3.log)"
echo "client before the join: $(summary "$DIR/before.json")"
echo "client during the join: $(summary "$DIR/during.json")"
