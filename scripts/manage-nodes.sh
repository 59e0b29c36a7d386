#!/usr/bin/env bash
# manage-nodes.sh — start, list and stop kvstore nodes on this machine, as plain processes
# (the default) or as Docker containers.
#
#   manage-nodes.sh add --count N --port-start P   start N nodes: HTTP ports P..P+N-1
#   manage-nodes.sh list                           table of the nodes and their state
#   manage-nodes.sh remove --name NAME             make one node leave with its data
#   manage-nodes.sh remove --all                   stop every node (SIGTERM, then SIGKILL)
#
# Node i of an `add` listens for HTTP on P+i, is named node<P+i>, and talks to its peers
# on HTTP port + 10000 (--cluster-offset). Each new node gets as seeds the peers of the
# nodes already running plus the first node of its batch, so `add` also grows a running
# cluster. `add` returns once every new node answers /healthz, lists every running node
# alive in /v1/cluster/members, and shows itself there with ring_status "normal" (it has
# streamed the ranges it owns from the others, so it counts for reads); if that fails
# within --timeout, it stops the nodes it started.
#
# `remove --name` asks a running node to leave (POST /v1/cluster/leave): it hands its
# ranges to their new owners, leaves the cluster and exits by itself; the script waits for
# that up to --leave-timeout. If the node refuses (409: still joining), cannot be asked,
# or is still running then, it is stopped as by --no-leave, with a warning: SIGTERM, wait
# --stop-timeout, then SIGKILL. `remove --all` always stops with SIGTERM (there is nobody
# left to hand the data to).
#
# Options (anywhere on the command line):
#   --backend local|docker  local (default): processes of build/kvstore, files under the
#                           data root. docker: `docker run --network host` of the image
#                           built from ./Dockerfile (UNTESTED: written without a Docker
#                           engine at hand).
#   --count N               add: how many nodes (default 1)
#   --port-start P          add: first HTTP port (required)
#   --cluster-offset K      add: peer port = HTTP port + K (default 10000)
#   --host ADDR             add: address to bind (default 127.0.0.1)
#   --data-root DIR         local: where node directories live (default <repo>/.cluster)
#   --bin PATH              local: the kvstore binary (default <repo>/build/kvstore, built
#                           with cmake if missing)
#   --image NAME            docker: image tag (default kvstore:local, built if missing)
#   --timeout SECONDS       add: deadline for health, membership and streaming (default 60)
#   --leave-timeout SECONDS remove --name: wait this long for the node to hand its data
#                           over and exit (default 300), then stop it with SIGTERM
#   --no-leave              remove --name: SIGTERM at once, no hand-over (its replicas
#                           keep their copies; the others serve its ranges from those)
#   --stop-timeout SECONDS  remove: wait this long after SIGTERM, then SIGKILL (default 20)
#   --name NAME | --all     remove: which nodes
#   --purge                 remove: delete the data too (local: the node's directory;
#                           docker: its volume)
#   -- ARGS...              add: more arguments for `kvstore servenode` (e.g. -- --storage.sync
#                           always); they come last, so they win
#   -h, --help              this text
#
# Local backend files, per node: <data root>/<name>/ is the node's data dir, with node.log
# (its output), pid, and node.env (its ports, read by list and by later adds). `list` says
# running (the pid is a live kvstore serving that directory), dead (a pid file, but no
# such process: it crashed or was killed) or stopped (removed; data kept). A pid file
# whose process is not that kvstore is never signalled, only removed.
set -euo pipefail

SELF=$(basename "$0")
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

BACKEND=local
VERB=
COUNT=1
PORT_START=
CLUSTER_OFFSET=10000
HOST=127.0.0.1
DATA_ROOT=$REPO/.cluster
BIN=
IMAGE=kvstore:local
TIMEOUT=60
STOP_TIMEOUT=20
LEAVE_TIMEOUT=300
NO_LEAVE=0
RM_NAME=
RM_ALL=0
PURGE=0
EXTRA=()

# The docker backend marks its containers with this label and never touches others.
LABEL=io.kvstore.manage-nodes

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() {
    echo "$SELF: $*" >&2
    exit 1
}
usage_error() {
    echo "$SELF: $*" >&2
    echo "usage: $SELF add --count N --port-start P | list | remove --name NAME | remove --all" \
        "(--help for all options)" >&2
    exit 2
}

if [[ $# -eq 0 ]]; then
    usage >&2
    exit 2
fi

need_value() { [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 <= 1000000)); }

while [[ $# -gt 0 ]]; do
    case "$1" in
    add | list | remove)
        [[ -z $VERB ]] || usage_error "one command at a time ('$VERB' and '$1')"
        VERB=$1
        ;;
    help | -h | --help)
        usage
        exit 0
        ;;
    --backend | --count | --port-start | --cluster-offset | --host | --data-root | --bin | \
        --image | --timeout | --stop-timeout | --leave-timeout | --name)
        need_value "$@"
        case "$1" in
        --backend) BACKEND=$2 ;;
        --count) COUNT=$2 ;;
        --port-start) PORT_START=$2 ;;
        --cluster-offset) CLUSTER_OFFSET=$2 ;;
        --host) HOST=$2 ;;
        --data-root) DATA_ROOT=$2 ;;
        --bin) BIN=$2 ;;
        --image) IMAGE=$2 ;;
        --timeout) TIMEOUT=$2 ;;
        --stop-timeout) STOP_TIMEOUT=$2 ;;
        --leave-timeout) LEAVE_TIMEOUT=$2 ;;
        --name) RM_NAME=$2 ;;
        esac
        shift
        ;;
    --*=*) usage_error "write '${1%%=*} ${1#*=}' (a space, not '=')" ;;
    --all) RM_ALL=1 ;;
    --purge) PURGE=1 ;;
    --no-leave) NO_LEAVE=1 ;;
    --)
        shift
        EXTRA=("$@")
        break
        ;;
    *) usage_error "unknown argument '$1'" ;;
    esac
    shift
done

[[ -n $VERB ]] || usage_error "no command (add, list or remove)"
[[ $BACKEND == local || $BACKEND == docker ]] || usage_error "--backend must be local or docker"
if ! is_uint "$COUNT" || ((10#$COUNT < 1)); then usage_error "--count must be a positive integer"; fi
if ! is_uint "$TIMEOUT" || ((10#$TIMEOUT < 1)); then usage_error "--timeout must be seconds (>= 1)"; fi
is_uint "$STOP_TIMEOUT" || usage_error "--stop-timeout must be seconds"
if ! is_uint "$LEAVE_TIMEOUT" || ((10#$LEAVE_TIMEOUT < 1)); then
    usage_error "--leave-timeout must be seconds (>= 1)"
fi
[[ $CLUSTER_OFFSET =~ ^-?[0-9]{1,6}$ ]] || usage_error "--cluster-offset must be an integer"
[[ $HOST =~ ^[A-Za-z0-9._-]+$ ]] || usage_error "--host must be an IPv4 address or a host name"
COUNT=$((10#$COUNT))
TIMEOUT=$((10#$TIMEOUT))
STOP_TIMEOUT=$((10#$STOP_TIMEOUT))
LEAVE_TIMEOUT=$((10#$LEAVE_TIMEOUT))
if [[ $CLUSTER_OFFSET == -* ]]; then
    CLUSTER_OFFSET=$((-10#${CLUSTER_OFFSET#-}))
else
    CLUSTER_OFFSET=$((10#$CLUSTER_OFFSET))
fi
if [[ $VERB != add && ${#EXTRA[@]} -gt 0 ]]; then
    usage_error "arguments after -- are for add only"
fi

# Absolute and without symlinks: node processes are recognised by their --data-dir.
abs_root() {
    if [[ -d $DATA_ROOT ]]; then
        DATA_ROOT=$(cd -P -- "$DATA_ROOT" && pwd -P)
    elif [[ $DATA_ROOT != /* ]]; then
        DATA_ROOT=$PWD/$DATA_ROOT
    fi
}
abs_root
STARTED_PID=

# Where the nodes' HTTP and peer ports can be reached from this machine.
REACH_HOST=$HOST
[[ $HOST == 0.0.0.0 ]] && REACH_HOST=127.0.0.1

# ------------------------------------------------------------------------------ helpers

# True if something on this machine listens on TCP port $1 (any address, IPv4 or IPv6).
# /proc/net/tcp*: local address "HEX_IP:HEX_PORT", state 0A = LISTEN.
port_in_use() {
    local hex f
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $f ]] || continue
        if awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p \
                { found = 1 } END { exit !found }' "$f"; then
            return 0
        fi
    done
    return 1
}

# True once $url/healthz answers 200.
healthy() { curl -fsS --max-time 2 -o /dev/null "$1/healthz" 2>/dev/null; }

# True if the node at URL $1 lists every name in $2.. as alive in /v1/cluster/members.
# The JSON is split into one line per object, so a name and its state are on one line.
members_alive() {
    local url=$1 json records name
    shift
    json=$(curl -fsS --max-time 2 "$url/v1/cluster/members" 2>/dev/null) || return 1
    records=$(tr '{' '\n' <<<"$json")
    for name in "$@"; do
        grep -F "\"name\":\"$name\"" <<<"$records" | grep -qF '"state":"alive"' || return 1
    done
}

http_url() { echo "http://$REACH_HOST:$1"; }

# The ring status (joining, normal, leaving, ...) the node at URL $1 reports for itself in
# /v1/cluster/members; empty if it does not answer.
self_ring_status() {
    local json rec
    json=$(curl -fsS --max-time 2 "$1/v1/cluster/members" 2>/dev/null) || return 0
    rec=$(tr '{' '\n' <<<"$json" | grep -F '"self":true' | head -n 1) || return 0
    [[ $rec =~ \"ring_status\":\"([a-z_]+)\" ]] && echo "${BASH_REMATCH[1]}"
    return 0
}

# Ask the node at URL $2 (named $1) to leave with its data: POST /v1/cluster/leave. True
# on 202; otherwise a warning on stderr says why (409 joining, an error, no answer).
ask_leave() {
    local name=$1 url=$2 resp code body detail
    if ! command -v curl >/dev/null 2>&1; then
        echo "$SELF: warning: curl is missing, so $name cannot be asked to leave;" \
            "stopping it with SIGTERM" >&2
        return 1
    fi
    echo "$name: asking it to leave (POST $url/v1/cluster/leave)"
    resp=$(curl -sS -X POST --max-time 10 -w '\n%{http_code}' "$url/v1/cluster/leave" 2>&1) ||
        true
    code=${resp##*$'\n'}
    body=${resp%$'\n'*}
    body=${body%$'\n'} # curl's own error line ends in a newline
    [[ $code == 202 ]] && return 0
    detail=
    [[ $body =~ \"detail\":\"([^\"]*)\" ]] && detail=${BASH_REMATCH[1]}
    if [[ $code == 409 && $body == *'"joining"'* ]]; then
        echo "$SELF: warning: $name is still joining (it has not streamed its ranges yet," \
            "so it has nothing complete to hand over); stopping it with SIGTERM" >&2
    elif [[ $code =~ ^[1-9][0-9]{2}$ ]]; then
        echo "$SELF: warning: $name refused to leave: HTTP $code${detail:+ ($detail)};" \
            "stopping it with SIGTERM" >&2
    else
        echo "$SELF: warning: could not ask $name to leave (${body:-no answer});" \
            "stopping it with SIGTERM" >&2
    fi
    return 1
}

# After a 202 from ask_leave: wait up to LEAVE_TIMEOUT for node $1 to exit by itself while
# "${@:2}" (a command) says it still runs. True if it exited; a warning if not.
await_leave() {
    local name=$1 start=$SECONDS
    local deadline=$((start + LEAVE_TIMEOUT)) next=$((start + 30))
    shift
    echo "$name: handing its data over to the new owners of its ranges" \
        "(waiting up to ${LEAVE_TIMEOUT}s for it to exit)"
    while "$@"; do
        if ((SECONDS >= deadline)); then
            echo "$SELF: warning: $name is still running ${LEAVE_TIMEOUT}s after it was asked" \
                "to leave (--leave-timeout); stopping it with SIGTERM" >&2
            return 1
        fi
        if ((SECONDS >= next)); then
            echo "$name: still handing its data over ($((SECONDS - start))s)"
            next=$((SECONDS + 30))
        fi
        sleep 0.2
    done
}

# ------------------------------------------------------------------------ local backend

# The process state letter of pid $1 (R, S, Z, ...), empty if there is no such process.
proc_state() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    echo "${stat%% *}"
}

# True if pid $1 is a live (not zombie) `kvstore servenode` serving data dir $2. Pids are
# reused: a stale pid file may name any process, which must never be signalled.
is_node_pid() {
    local pid=$1 dir=$2 st i
    local -a args=()
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    st=$(proc_state "$pid")
    [[ -n $st && $st != Z && $st != X ]] || return 1
    mapfile -d '' args <"/proc/$pid/cmdline" 2>/dev/null || return 1
    [[ ${#args[@]} -ge 2 && $(basename -- "${args[0]}") == kvstore ]] || return 1
    local serve=0 owns=0
    for ((i = 1; i < ${#args[@]}; i++)); do
        [[ ${args[i]} == servenode ]] && serve=1
        if [[ ${args[i]} == --data-dir && $((i + 1)) -lt ${#args[@]} &&
            ${args[i + 1]} == "$dir" ]]; then
            owns=1
        fi
    done
    ((serve && owns))
}

# Echo the pid of node $1 if it runs (see is_node_pid); fail otherwise.
local_pid() {
    local dir=$DATA_ROOT/$1 pid
    [[ -f $dir/pid ]] || return 1
    pid=$(tr -dc '0-9' <"$dir/pid")
    is_node_pid "$pid" "$dir" || return 1
    echo "$pid"
}

# Read node $1's node.env into NODE_HOST, NODE_HTTP, NODE_PEER (parsed, never sourced).
read_node_env() {
    local file=$DATA_ROOT/$1/node.env key val
    NODE_HOST='' NODE_HTTP='' NODE_PEER=''

    [[ -f $file ]] || return 1
    while IFS='=' read -r key val; do
        case "$key" in
        HOST) NODE_HOST=$val ;;
        HTTP_PORT) NODE_HTTP=$val ;;
        PEER_PORT) NODE_PEER=$val ;;
        esac
    done <"$file"
    [[ -n $NODE_HOST && $NODE_HTTP =~ ^[0-9]+$ && $NODE_PEER =~ ^[0-9]+$ ]]
}

# Names of the node directories under the data root (those with a node.env), sorted.
local_names() {
    local d
    [[ -d $DATA_ROOT ]] || return 0
    for d in "$DATA_ROOT"/*/; do
        [[ -f $d/node.env ]] && basename "$d"
    done | sort -V
}

# The kvstore binary: --bin, or build/kvstore, built when missing.
resolve_bin() {
    if [[ -n $BIN ]]; then
        [[ -x $BIN ]] || die "--bin $BIN is not an executable file"
    else
        BIN=$REPO/build/kvstore
        if [[ ! -x $BIN ]]; then
            command -v cmake >/dev/null 2>&1 ||
                die "build/kvstore is missing and cmake is not installed (run scripts/setup-deps.sh)"
            echo "$SELF: build/kvstore is missing; building it" >&2
            (cd "$REPO" && cmake -S . -B build >&2 && make -C build -j2 kvstore kvtool >&2) ||
                die "the build failed"
        fi
    fi
    BIN=$(cd "$(dirname -- "$BIN")" && pwd)/$(basename -- "$BIN")
    [[ $(basename -- "$BIN") == kvstore ]] || die "--bin must name a file called kvstore"
}

# Start node $1 (HTTP port $2, peer port $3, seeds $4); its pid goes into STARTED_PID.
local_start() {
    local name=$1 http=$2 peer=$3 seeds=$4 dir=$DATA_ROOT/$1
    local -a cmd=("$BIN" servenode --host "$HOST" --port "$http" --cluster.host "$HOST"
        --cluster.port "$peer" --data-dir "$dir" --name "$name")
    [[ -n $seeds ]] && cmd+=(--seeds "$seeds")
    cmd+=("${EXTRA[@]}")
    mkdir -p "$dir"
    printf 'BACKEND=local\nNAME=%s\nHOST=%s\nHTTP_PORT=%s\nPEER_PORT=%s\n' \
        "$name" "$HOST" "$http" "$peer" >"$dir/node.env"
    printf '%s starting: %s\n' "$(date -u +%FT%TZ)" "${cmd[*]}" >>"$dir/node.log"
    # A session of its own: a Ctrl-C in the terminal that ran `add` does not reach the
    # node, and it outlives this script. Not a process-group leader here (no job
    # control), so setsid execs in place and $! is the node's pid.
    if command -v setsid >/dev/null 2>&1; then
        setsid "${cmd[@]}" </dev/null >>"$dir/node.log" 2>&1 &
    else
        nohup "${cmd[@]}" </dev/null >>"$dir/node.log" 2>&1 &
    fi
    STARTED_PID=$!
    echo "$STARTED_PID" >"$dir/pid"
}

# True while node $1 (pid $2) is up, or still on its way there (forked from this shell or
# running setsid, not yet exec'd kvstore).
local_alive() {
    local st arg0=
    is_node_pid "$2" "$DATA_ROOT/$1" && return 0
    st=$(proc_state "$2")
    [[ -n $st && $st != Z && $st != X ]] || return 1
    IFS= read -r -d '' arg0 <"/proc/$2/cmdline" 2>/dev/null || true
    [[ $(basename -- "${arg0:-x}") != kvstore ]]
}

# Ask running node $1 (pid $2) to leave and wait for it to exit. True if it did; its log
# (from where it stood before the request) tells whether it handed every range over.
local_leave() {
    local name=$1 pid=$2 dir=$DATA_ROOT/$1 host off
    if ! read_node_env "$name"; then
        echo "$SELF: warning: $dir/node.env is unreadable: cannot ask $name to leave" >&2
        return 1
    fi
    host=$NODE_HOST
    [[ $host == 0.0.0.0 ]] && host=127.0.0.1
    off=$(stat -c %s "$dir/node.log" 2>/dev/null) || off=0
    ask_leave "$name" "http://$host:$NODE_HTTP" || return 1
    await_leave "$name" is_node_pid "$pid" "$dir" || return 1
    if tail -c +$((off + 1)) "$dir/node.log" 2>/dev/null | grep -qF 'every range handed over'; then
        echo "$name: handed its data over and left the cluster"
    else
        echo "$SELF: warning: $name exited, but its log does not say it handed every range" \
            "over (see $dir/node.log); its replicas still hold their copies" >&2
    fi
}

# Stop node $1. With $2 = leave, first ask it to hand its data over and leave (local_leave);
# otherwise, or if that fails: SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL with a
# warning. Removes the pid file (and with --purge the directory).
local_stop() {
    local name=$1 mode=${2:-stop} dir=$DATA_ROOT/$1 pid deadline
    if ! pid=$(local_pid "$name"); then
        if [[ -f $dir/pid ]]; then
            echo "$name: not running (removing its stale pid file; no process signalled)"
        else
            echo "$name: not running"
        fi
        rm -f "$dir/pid"
    elif [[ $mode == leave ]] && local_leave "$name" "$pid"; then
        rm -f "$dir/pid"
    else
        echo "$name: stopping pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT))
        while is_node_pid "$pid" "$dir"; do
            if ((SECONDS >= deadline)); then
                echo "$SELF: warning: $name (pid $pid) still running ${STOP_TIMEOUT}s after" \
                    "SIGTERM; sending SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
                deadline=$((SECONDS + 10))
                while is_node_pid "$pid" "$dir"; do
                    ((SECONDS < deadline)) || die "$name (pid $pid) survived SIGKILL"
                    sleep 0.1
                done
                break
            fi
            sleep 0.1
        done
        rm -f "$dir/pid"
        echo "$name: stopped"
    fi
    if ((PURGE)); then
        rm -rf -- "$dir"
        echo "$name: data removed"
    fi
}

local_log_tail() {
    echo "--- last lines of $DATA_ROOT/$1/node.log ---" >&2
    tail -n 25 "$DATA_ROOT/$1/node.log" >&2 2>/dev/null || true
}

# ----------------------------------------------------------------------- docker backend
# Written to the same plan as the local backend but not run here (no Docker engine on
# the machine it was written on).

docker_check() {
    command -v docker >/dev/null 2>&1 ||
        die "--backend docker: the docker command is not installed (use --backend local, the default)"
    docker info >/dev/null 2>&1 ||
        die "--backend docker: cannot reach the Docker engine (is it running? may this user use it?)"
}

docker_image() {
    if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
        echo "$SELF: building image $IMAGE from $REPO/Dockerfile" >&2
        docker build -t "$IMAGE" "$REPO" >&2 || die "docker build failed"
    fi
}

# Our containers: "name running-or-not pid host http peer", one a line.
docker_nodes() {
    local name
    docker ps -a --filter "label=$LABEL=1" --format '{{.Names}}' | sort -V | while read -r name; do
        docker inspect -f "$name {{.State.Running}} {{.State.Pid}} \
{{index .Config.Labels \"$LABEL.host\"}} {{index .Config.Labels \"$LABEL.http-port\"}} \
{{index .Config.Labels \"$LABEL.peer-port\"}}" "$name" 2>/dev/null || true
    done
}

docker_start() {
    local name=$1 http=$2 peer=$3 seeds=$4
    if docker inspect "$name" >/dev/null 2>&1; then
        [[ $(docker inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$name") == 1 ]] ||
            die "a container named $name exists and was not made by $SELF"
        docker rm "$name" >/dev/null # stopped: replaced, its volume (data) is kept
    fi
    # The image's CMD is `kvstore servenode`; flags after it win over the environment.
    docker run -d --name "$name" --network host \
        --label "$LABEL=1" --label "$LABEL.host=$HOST" \
        --label "$LABEL.http-port=$http" --label "$LABEL.peer-port=$peer" \
        -e "DIST_KV__SERVER__HOST=$HOST" -e "DIST_KV__SERVER__PORT=$http" \
        -e "DIST_KV__CLUSTER__HOST=$HOST" -e "DIST_KV__CLUSTER__PORT=$peer" \
        -e "DIST_KV__NODE__NAME=$name" -e "DIST_KV__CLUSTER__SEEDS=$seeds" \
        -v "kvstore-$name:/var/lib/kvstore/data" \
        "$IMAGE" kvstore servenode "${EXTRA[@]}" >/dev/null || die "docker run $name failed"
    STARTED_PID=$(docker inspect -f '{{.State.Pid}}' "$name")
}

docker_alive() { [[ $(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) == true ]]; }

# Ask container $1 to leave (through its HTTP port on the host network) and wait for it to
# exit. True if it exited 0, which the node does once every range is handed over.
docker_leave() {
    local name=$1 host http
    host=$(docker inspect -f "{{index .Config.Labels \"$LABEL.host\"}}" "$name" 2>/dev/null)
    http=$(docker inspect -f "{{index .Config.Labels \"$LABEL.http-port\"}}" "$name" 2>/dev/null)
    [[ $host == 0.0.0.0 ]] && host=127.0.0.1
    if [[ -z $host || ! $http =~ ^[0-9]+$ ]]; then
        echo "$SELF: warning: $name has no port labels: cannot ask it to leave" >&2
        return 1
    fi
    ask_leave "$name" "http://$host:$http" || return 1
    await_leave "$name" docker_alive "$name" || return 1
    if [[ $(docker inspect -f '{{.State.ExitCode}}' "$name" 2>/dev/null) == 0 ]]; then
        echo "$name: handed its data over and left the cluster"
    else
        echo "$SELF: warning: $name exited with an error while leaving (docker logs $name);" \
            "its replicas still hold their copies" >&2
    fi
}

# Stop and remove container $1; with $2 = leave, ask it to leave with its data first.
docker_stop() {
    local name=$1 mode=${2:-stop}
    if [[ $(docker inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$name" 2>/dev/null) != 1 ]]; then
        echo "$name: no such container made by $SELF"
        return 0
    fi
    if [[ $mode == leave ]] && docker_alive "$name" && docker_leave "$name"; then
        :
    elif docker_alive "$name"; then
        echo "$name: stopping container"
        # docker stop sends SIGTERM, and SIGKILL after -t seconds.
        docker stop -t "$STOP_TIMEOUT" "$name" >/dev/null
    fi
    docker rm "$name" >/dev/null
    echo "$name: stopped (container removed)"
    if ((PURGE)); then
        docker volume rm "kvstore-$name" >/dev/null && echo "$name: data volume removed"
    fi
}

# ------------------------------------------------------------------------- the commands

# Running nodes as "name host http peer", whatever the backend.
running_nodes() {
    local name running pid host http peer
    if [[ $BACKEND == docker ]]; then
        docker_nodes | while read -r name running pid host http peer; do
            [[ $running == true ]] && echo "$name $host $http $peer"
        done
        return 0
    fi
    for name in $(local_names); do
        if local_pid "$name" >/dev/null && read_node_env "$name"; then
            echo "$name $NODE_HOST $NODE_HTTP $NODE_PEER"
        fi
    done
}

peer_addr() {
    local h=$1
    [[ $h == 0.0.0.0 ]] && h=127.0.0.1
    echo "$h:$2"
}

cmd_add() {
    [[ -n $PORT_START ]] || usage_error "add needs --port-start P"
    is_uint "$PORT_START" || usage_error "--port-start must be a port number"
    local p0=$((10#$PORT_START)) i
    ((p0 >= 1)) || usage_error "--port-start must be at least 1"
    ((p0 + COUNT - 1 <= 65535)) ||
        die "HTTP ports $p0..$((p0 + COUNT - 1)) go past 65535"
    ((p0 + CLUSTER_OFFSET >= 1 && p0 + COUNT - 1 + CLUSTER_OFFSET <= 65535)) ||
        die "peer ports $((p0 + CLUSTER_OFFSET))..$((p0 + COUNT - 1 + CLUSTER_OFFSET)) are" \
            "out of range (HTTP port + --cluster-offset $CLUSTER_OFFSET must be 1..65535)"
    command -v curl >/dev/null 2>&1 ||
        die "curl is missing: it checks the nodes' health (scripts/setup-deps.sh installs it)"
    if [[ $BACKEND == docker ]]; then
        docker_check
        docker_image
    else
        resolve_bin
        mkdir -p "$DATA_ROOT"
        abs_root
    fi

    # The cluster so far: its names and peers. Then check the whole batch before starting
    # anything, so a clash leaves nothing half-started.
    local -a old_names=() seeds=() names=() https=() peers=() pids=()
    local name host http peer
    while read -r name host http peer; do
        [[ -n $name ]] || continue
        old_names+=("$name")
        seeds+=("$(peer_addr "$host" "$peer")")
    done < <(running_nodes)
    local taken=()
    for ((i = 0; i < COUNT; i++)); do
        http=$((p0 + i))
        peer=$((http + CLUSTER_OFFSET))
        name=node$http
        for n in "${old_names[@]}"; do
            [[ $n == "$name" ]] && die "$name is already running ($SELF list; remove it first)"
        done
        port_in_use "$http" && taken+=("$http (HTTP of $name)")
        port_in_use "$peer" && taken+=("$peer (peer port of $name)")
        names+=("$name")
        https+=("$http")
        peers+=("$peer")
    done
    for ((i = 0; i < COUNT; i++)); do
        for ((j = 0; j < COUNT; j++)); do
            [[ ${https[i]} == "${peers[j]}" ]] &&
                die "port ${https[i]} would be both an HTTP and a peer port (change --cluster-offset)"
        done
    done
    ((${#taken[@]} == 0)) || die "port(s) already in use: ${taken[*]}; pick another --port-start"

    # Start: each node gets the running nodes' peers plus the first node of this batch.
    local first_peer
    first_peer=$(peer_addr "$HOST" "${peers[0]}")
    for ((i = 0; i < COUNT; i++)); do
        local s=("${seeds[@]}")
        ((i > 0)) && s+=("$first_peer")
        local seed_list
        seed_list=$(
            IFS=,
            echo "${s[*]}"
        )
        if [[ $BACKEND == docker ]]; then
            docker_start "${names[i]}" "${https[i]}" "${peers[i]}" "$seed_list"
        else
            local_start "${names[i]}" "${https[i]}" "${peers[i]}" "$seed_list"
        fi
        pids+=("$STARTED_PID")
    done

    # Undo this batch if it does not come up: stop what it started, keep logs and data.
    rollback() {
        echo "$SELF: $1; stopping the ${#names[@]} node(s) this add started" >&2
        local k
        for ((k = 0; k < ${#names[@]}; k++)); do
            if [[ $BACKEND == docker ]]; then
                docker_stop "${names[k]}" >&2 || true
            else
                local_stop "${names[k]}" >&2 || true
            fi
        done
        exit 1
    }
    node_up() {
        if [[ $BACKEND == docker ]]; then docker_alive "${names[$1]}"; else local_alive "${names[$1]}" "${pids[$1]}"; fi
    }
    log_tail() {
        if [[ $BACKEND == docker ]]; then
            echo "--- docker logs ${names[$1]} ---" >&2
            docker logs --tail 25 "${names[$1]}" >&2 2>&1 || true
        else
            local_log_tail "${names[$1]}"
        fi
    }

    local deadline=$((SECONDS + TIMEOUT)) all
    while :; do
        all=1
        for ((i = 0; i < COUNT; i++)); do
            if ! node_up "$i"; then
                log_tail "$i"
                rollback "${names[i]} exited during start"
            fi
            healthy "$(http_url "${https[i]}")" || all=0
        done
        ((all)) && break
        ((SECONDS < deadline)) || rollback "not every new node answered /healthz within ${TIMEOUT}s"
        sleep 0.2
    done
    # Something answered on every port: make sure it is our node, not another server.
    for ((i = 0; i < COUNT; i++)); do
        node_up "$i" || {
            log_tail "$i"
            rollback "${names[i]} exited (another server on port ${https[i]}?)"
        }
    done

    local want=("${old_names[@]}" "${names[@]}")
    while :; do
        all=1
        for ((i = 0; i < COUNT; i++)); do
            members_alive "$(http_url "${https[i]}")" "${want[@]}" || all=0
        done
        ((all)) && break
        if ((SECONDS >= deadline)); then
            for ((i = 0; i < COUNT; i++)); do
                members_alive "$(http_url "${https[i]}")" "${want[@]}" ||
                    echo "$SELF: ${names[i]} does not list all of ${want[*]} as alive" >&2
            done
            rollback "the cluster did not converge within ${TIMEOUT}s"
        fi
        sleep 0.2
    done

    # Joined, but a node with seeds streams its ranges first (ring status joining) and
    # only counts for reads once it is normal: wait for that too.
    local -a normal=()
    local rs
    for ((i = 0; i < COUNT; i++)); do normal[i]=0; done
    while :; do
        all=1
        for ((i = 0; i < COUNT; i++)); do
            ((normal[i])) && continue
            node_up "$i" || {
                log_tail "$i"
                rollback "${names[i]} exited while joining"
            }
            rs=$(self_ring_status "$(http_url "${https[i]}")")
            if [[ $rs == normal ]]; then
                normal[i]=1
                echo "${names[i]}: ring status normal (its ranges are streamed; it serves reads)"
            else
                all=0
            fi
        done
        ((all)) && break
        if ((SECONDS >= deadline)); then
            for ((i = 0; i < COUNT; i++)); do
                ((normal[i])) && continue
                rs=$(self_ring_status "$(http_url "${https[i]}")")
                echo "$SELF: ${names[i]} is ${rs:-not answering}, not normal yet" >&2
            done
            rs="not every new node finished streaming its ranges within ${TIMEOUT}s"
            rollback "$rs (a large data set needs a larger --timeout)"
        fi
        sleep 0.2
    done

    printf '%-12s %-26s %-22s %s\n' NAME URL PEER PID
    for ((i = 0; i < COUNT; i++)); do
        printf '%-12s %-26s %-22s %s\n' "${names[i]}" "$(http_url "${https[i]}")" \
            "$(peer_addr "$HOST" "${peers[i]}")" "${pids[i]}"
    done
    echo "cluster: ${#want[@]} node(s) alive: ${want[*]}"
}

row() { printf '%-12s %-8s %-26s %-22s %s\n' "$@"; }

cmd_list() {
    local name running pid host http peer state n=0
    if [[ $BACKEND == docker ]]; then
        docker_check
        row NAME PID HTTP PEER STATE
        while read -r name running pid host http peer; do
            [[ -n $name ]] || continue
            n=$((n + 1))
            state=stopped
            [[ $running == true ]] && state=running
            [[ $running == true ]] || pid=-
            row "$name" "$pid" "http://$host:$http" "$(peer_addr "$host" "$peer")" "$state"
        done < <(docker_nodes)
        ((n > 0)) || echo "(no containers labelled $LABEL)"
        return 0
    fi
    row NAME PID HTTP PEER STATE
    for name in $(local_names); do
        n=$((n + 1))
        read_node_env "$name" || {
            row "$name" - - - "unreadable node.env"
            continue
        }
        host=$NODE_HOST
        [[ $host == 0.0.0.0 ]] && host=127.0.0.1
        if pid=$(local_pid "$name"); then
            state=running
        elif [[ -f $DATA_ROOT/$name/pid ]]; then
            state=dead
            pid=$(tr -dc '0-9' <"$DATA_ROOT/$name/pid")
            [[ -n $pid ]] || pid=-
        else
            state=stopped
            pid=-
        fi
        row "$name" "$pid" "http://$host:$NODE_HTTP" "$host:$NODE_PEER" "$state"
    done
    ((n > 0)) || echo "(no nodes under $DATA_ROOT)"
}

cmd_remove() {
    ((RM_ALL)) || [[ -n $RM_NAME ]] || usage_error "remove needs --name NAME or --all"
    ((RM_ALL)) && [[ -n $RM_NAME ]] && usage_error "remove takes --name or --all, not both"
    local name LEAVE_MODE=leave
    ((NO_LEAVE)) && LEAVE_MODE=stop
    if [[ $BACKEND == docker ]]; then
        docker_check
        if ((RM_ALL)); then
            local any=0
            while read -r name _; do
                [[ -n $name ]] || continue
                any=1
                docker_stop "$name"
            done < <(docker_nodes)
            ((any)) || echo "no containers labelled $LABEL"
        else
            docker_stop "$RM_NAME" "$LEAVE_MODE"
        fi
        return 0
    fi
    if ((RM_ALL)); then
        local -a all=()
        mapfile -t all < <(local_names)
        ((${#all[@]} > 0)) || {
            echo "no nodes under $DATA_ROOT"
            return 0
        }
        for name in "${all[@]}"; do local_stop "$name"; done
    else
        [[ $RM_NAME =~ ^[A-Za-z0-9._-]+$ && -f $DATA_ROOT/$RM_NAME/node.env ]] ||
            die "no node named '$RM_NAME' under $DATA_ROOT ($SELF list shows them)"
        local_stop "$RM_NAME" "$LEAVE_MODE"
    fi
}

case "$VERB" in
add) cmd_add ;;
list) cmd_list ;;
remove) cmd_remove ;;
esac
