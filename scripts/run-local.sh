#!/usr/bin/env bash
# run-local.sh — build kvstore and run one node in the background on this machine.
#
#   ./scripts/run-local.sh [start]   install missing Debian packages, build (Release, into
#                                    build/), start a node on 127.0.0.1:8080, wait for it
#   ./scripts/run-local.sh stop      stop the node started here (by its pid file)
#   ./scripts/run-local.sh status    say whether it runs
#
# The node's data is in .cluster/node1, its log in .cluster/node1.log, its pid in
# .cluster/node1.pid (all under the repository root). KV_HOST and KV_PORT change the
# listen address (default 127.0.0.1 and 8080).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
HOST=${KV_HOST:-127.0.0.1}
PORT=${KV_PORT:-8080}
NAME=node1
STATE_DIR=$ROOT/.cluster
DATA_DIR=$STATE_DIR/$NAME
LOG=$STATE_DIR/$NAME.log
PIDFILE=$STATE_DIR/$NAME.pid
BUILD_DIR=$ROOT/build
START_TIMEOUT=30 # seconds to wait for /healthz
STOP_TIMEOUT=20  # seconds to wait for a clean shutdown before SIGKILL

# The pid in the pid file, if that process is still a kvstore (pids get reused).
running_pid() {
    [[ -f $PIDFILE ]] || return 1
    local pid
    pid=$(tr -dc '0-9' <"$PIDFILE")
    [[ -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kvstore servenode' || return 1
    echo "$pid"
}

print_usage_hints() {
    local url="http://$HOST:$PORT"
    cat <<HINTS

kvstore node '$NAME' is running (pid $1) at $url
  data: ${DATA_DIR#"$ROOT"/}   log: ${LOG#"$ROOT"/}

Try it:
  ./build/kvtool put greeting hello
  ./build/kvtool get greeting
  curl -X PUT --data-binary hello $url/v1/kv/greeting
  curl $url/v1/kv/greeting
  curl $url/metrics

Stop it:
  ./scripts/run-local.sh stop
HINTS
    if [[ $url != "http://127.0.0.1:8080" ]]; then
        echo "(kvtool talks to http://127.0.0.1:8080 by default: add --server $url)"
    fi
}

cmd_start() {
    local pid
    if pid=$(running_pid); then
        echo "run-local: already running"
        print_usage_hints "$pid"
        return 0
    fi

    "$ROOT/scripts/setup-deps.sh"

    echo "run-local: building (Release) in ${BUILD_DIR#"$ROOT"/}/"
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DKV_SANITIZE=OFF >/dev/null
    cmake --build "$BUILD_DIR" -j"$(nproc)" --target kvstore kvtool

    mkdir -p "$DATA_DIR"
    echo "run-local: starting $NAME on $HOST:$PORT"
    # Flags beat DIST_KV__* variables, so a stray variable in the caller's environment
    # cannot move the node elsewhere. nohup: the node outlives this shell.
    nohup "$BUILD_DIR/kvstore" servenode --host "$HOST" --port "$PORT" \
        --data-dir "$DATA_DIR" --name "$NAME" >>"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"

    local deadline=$((SECONDS + START_TIMEOUT))
    until curl -fsS --max-time 2 -o /dev/null "http://$HOST:$PORT/healthz" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            echo "run-local: the node exited during start; last lines of ${LOG#"$ROOT"/}:" >&2
            tail -n 30 "$LOG" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "run-local: no answer on /healthz after ${START_TIMEOUT}s; stopping it." >&2
            tail -n 30 "$LOG" >&2
            cmd_stop >&2 || true
            return 1
        fi
        sleep 0.2
    done
    # Something answered: make sure it is our node and not another process on the port.
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PIDFILE"
        echo "run-local: the node exited (is another server on $HOST:$PORT?); last lines of ${LOG#"$ROOT"/}:" >&2
        tail -n 30 "$LOG" >&2
        return 1
    fi
    print_usage_hints "$pid"
}

cmd_stop() {
    local pid
    if ! pid=$(running_pid); then
        echo "run-local: not running"
        rm -f "$PIDFILE"
        return 0
    fi
    echo "run-local: stopping $NAME (pid $pid)"
    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "run-local: no clean exit after ${STOP_TIMEOUT}s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE"
    echo "run-local: stopped"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        echo "run-local: $NAME running (pid $pid) on $HOST:$PORT"
    else
        echo "run-local: not running"
        return 1
    fi
}

case "${1:-start}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
-h | --help | help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
*)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
