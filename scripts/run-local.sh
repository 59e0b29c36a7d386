#!/usr/bin/env bash
# run-local.sh — build kvstore and run a 3-node cluster in the background on this machine.
#
#   ./scripts/run-local.sh [start]   install missing Debian packages, build (Release, into
#                                    build/), start nodes node8080, node8081, node8082
#                                    (HTTP 8080-8082, peers 18080-18082) on 127.0.0.1 and
#                                    wait until they answer and see each other alive
#   ./scripts/run-local.sh stop      stop every node under .cluster/ (data is kept)
#   ./scripts/run-local.sh status    list them; exit 1 if none runs
#
# The nodes are started by scripts/manage-nodes.sh (local backend): node N keeps its data,
# log (node.log) and pid file in .cluster/nodeN/ under the repository root. KV_HOST and
# KV_PORT change the listen address and the first HTTP port (default 127.0.0.1 and 8080);
# KV_BUILD_DIR the build directory (default build/).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
HOST=${KV_HOST:-127.0.0.1}
PORT=${KV_PORT:-8080}
NODES=3
STATE_DIR=$ROOT/.cluster
BUILD_DIR=${KV_BUILD_DIR:-$ROOT/build}
[[ $BUILD_DIR == /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR
REL_BUILD=${BUILD_DIR#"$ROOT"/}
KVTOOL=$BUILD_DIR/kvtool
[[ $REL_BUILD == /* ]] || KVTOOL=./$REL_BUILD/kvtool
MANAGE=("$ROOT/scripts/manage-nodes.sh" --data-root "$STATE_DIR" --bin "$BUILD_DIR/kvstore")

if ! [[ $PORT =~ ^[0-9]{1,5}$ ]] || ((10#$PORT < 1 || 10#$PORT + NODES - 1 > 55535)); then
    echo "run-local: KV_PORT must be a port number from 1 to $((55535 - NODES + 1))" >&2
    exit 2
fi
PORT=$((10#$PORT))

reach_host() { if [[ $HOST == 0.0.0.0 ]]; then echo 127.0.0.1; else echo "$HOST"; fi; }

# Names of this cluster's nodes that run now (manage-nodes.sh list: STATE is the last column).
running_names() {
    "${MANAGE[@]}" list 2>/dev/null | awk 'NR > 1 && $NF == "running" { print $1 }'
}

# The single node that run-local.sh started before it ran a cluster (.cluster/node1.pid):
# stop it if it still runs, so that it does not hold port 8080.
stop_legacy_node() {
    local pidfile=$STATE_DIR/node1.pid pid deadline
    [[ -f $pidfile ]] || return 0
    pid=$(tr -dc '0-9' <"$pidfile")
    if [[ -n $pid ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
        grep -q "kvstore servenode .*--data-dir $STATE_DIR/node1 "; then
        echo "run-local: stopping node1 (pid $pid), the single node of an older run-local.sh"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 20))
        while [[ -d /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
            if ((SECONDS >= deadline)); then
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    fi
    rm -f "$pidfile"
}

print_usage_hints() {
    local h i urls=()
    h=$(reach_host)
    for ((i = 0; i < NODES; i++)); do urls+=("http://$h:$((PORT + i))"); done
    cat <<HINTS

A $NODES-node kvstore cluster is running: ${urls[*]}
(any node answers any request; each keeps its data, node.log and pid in .cluster/node<PORT>/)

Try it:
  export DIST_KV__CLIENT__SERVER_URL=${urls[0]}
  $KVTOOL put greeting hello
  $KVTOOL --server ${urls[1]} get greeting
  $KVTOOL members     # the cluster as one node sees it
  curl -X PUT --data-binary hello ${urls[2]}/v1/kv/greeting
  curl ${urls[0]}/v1/cluster/members
  curl ${urls[0]}/metrics

More nodes, one node, the table:
  ./scripts/manage-nodes.sh add --count 2 --port-start $((PORT + NODES))
  ./scripts/manage-nodes.sh remove --name node$((PORT + 1))
  ./scripts/run-local.sh status               # or: ./scripts/manage-nodes.sh list

Stop them all:
  ./scripts/run-local.sh stop
HINTS
}

cmd_start() {
    local running=() missing=() i name
    mapfile -t running < <(running_names)
    for ((i = 0; i < NODES; i++)); do
        name=node$((PORT + i))
        [[ " ${running[*]} " == *" $name "* ]] || missing+=("$((PORT + i))")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "run-local: already running"
        print_usage_hints
        return 0
    fi

    "$ROOT/scripts/setup-deps.sh"

    echo "run-local: building (Release) in $REL_BUILD/"
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DKV_SANITIZE=OFF >/dev/null
    cmake --build "$BUILD_DIR" -j"$(nproc)" --target kvstore kvtool

    stop_legacy_node
    if [[ ${#missing[@]} -eq $NODES ]]; then
        echo "run-local: starting $NODES nodes on $HOST, HTTP ports $PORT-$((PORT + NODES - 1))"
        "${MANAGE[@]}" add --count "$NODES" --port-start "$PORT" --host "$HOST"
    else
        # Some run already: start the others one by one; each joins the running ones.
        local p
        for p in "${missing[@]}"; do
            echo "run-local: starting node$p"
            "${MANAGE[@]}" add --count 1 --port-start "$p" --host "$HOST"
        done
    fi
    print_usage_hints
}

cmd_stop() {
    stop_legacy_node
    "${MANAGE[@]}" remove --all
    echo "run-local: stopped (data kept in .cluster/)"
}

cmd_status() {
    "${MANAGE[@]}" list
    [[ -n $(running_names) ]] || {
        echo "run-local: not running"
        return 1
    }
}

case "${1:-start}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
-h | --help | help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' ;;
*)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
