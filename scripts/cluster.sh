#!/usr/bin/env bash
# The demo behind `make cluster`: several Portico instances behind a load balancer, sharing
# their state through a Redis Cluster, all on this machine:
#
#   Redis Cluster   three primaries on 127.0.0.1:7001-7003 (cluster bus on 17001-17003)
#   backends        portico-backend: users on 127.0.0.1:3101, products on 127.0.0.1:3102
#   Portico a, b, c 127.0.0.1:8101-8103, admin on 127.0.0.1:9101-9103, one config for all three
#                   (conf/examples/cluster.toml, or $PORTICO_CLUSTER_CONFIG)
#   HAProxy         127.0.0.1:8000, round robin, health checks on each instance's /readyz;
#                   its stats page on http://127.0.0.1:8404/
#
# It prints what to try, then waits; Ctrl-C stops everything and removes its temporary
# directory (Redis's data, the logs). Ports are fixed, so the commands it prints can be copied;
# none is shared with `make run` (8080, 9901, 3001-3004), and if one is taken it says which
# and starts nothing.
#
#   scripts/cluster.sh            (after: cargo build --release -p portico -p portico-loadtest)
#
# Environment: PORTICO_CLUSTER_CONFIG (the config every instance serves), PORTICO_BIN and
# PORTICO_BACKEND_BIN (the binaries; default target/release/portico and portico-backend).
# The config gets PORTICO_INSTANCE (a, b, c), PORTICO_PORT, PORTICO_ADMIN_PORT and
# PORTICO_RUN_DIR from this script, different for each instance.
# redis-server, redis-cli and haproxy come from apt when missing (scripts/ensure-deps.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PORTICO_BIN="${PORTICO_BIN:-$TARGET_DIR/release/portico}"
BACKEND_BIN="${PORTICO_BACKEND_BIN:-$TARGET_DIR/release/portico-backend}"
CONFIG="${PORTICO_CLUSTER_CONFIG:-conf/examples/cluster.toml}"

HOST=127.0.0.1
LB_PORT=8000
STATS_PORT=8404
REDIS_PORTS=(7001 7002 7003)
BACKENDS=("users=$HOST:3101" "products=$HOST:3102")
INSTANCES=(a b c)
declare -A PORT=([a]=8101 [b]=8102 [c]=8103)
declare -A ADMIN_PORT=([a]=9101 [b]=9102 [c]=9103)
LB="$HOST:$LB_PORT"

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- what is needed --------------------------------------------------------------------------
[ "$#" -eq 0 ] || die "usage: scripts/cluster.sh   (no arguments; see the comment at its top)"
for bin in "$PORTICO_BIN" "$BACKEND_BIN"; do
    [ -x "$bin" ] || die "$bin is missing: run  make cluster  (or cargo build --release -p portico -p portico-loadtest)"
done
[ -f "$CONFIG" ] || die "no config at $CONFIG"
need=()
for cmd in redis-server redis-cli haproxy curl; do
    command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ "${#need[@]}" -gt 0 ]; then
    scripts/ensure-deps.sh "${need[@]}" || die "could not install ${need[*]}"
fi

# The environment of instance $1, for `env`.
instance_env() {
    local name="$1"
    printf '%s\n' "PORTICO_INSTANCE=$name" "PORTICO_PORT=${PORT[$name]}" \
        "PORTICO_ADMIN_PORT=${ADMIN_PORT[$name]}" "PORTICO_RUN_DIR=$WORK/portico-$name"
}

# A bad config is reported before anything starts (checked as instance a sees it).
WORK=/nonexistent   # only named in the paths checked here; nothing is written
mapfile -t check_env < <(instance_env a)
if ! env "${check_env[@]}" "$PORTICO_BIN" -t -c "$CONFIG" >/dev/null; then
    die "$CONFIG is not a valid config (problems above)"
fi

# Something already listening would answer in place of our processes: refuse to start.
port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
ports=("$LB_PORT" "$STATS_PORT")
for p in "${REDIS_PORTS[@]}"; do ports+=("$p" "$((p + 10000))"); done
for spec in "${BACKENDS[@]}"; do ports+=("${spec##*:}"); done
for name in "${INSTANCES[@]}"; do ports+=("${PORT[$name]}" "${ADMIN_PORT[$name]}"); done
taken=()
for p in "${ports[@]}"; do
    if port_in_use "$p"; then taken+=("$p"); fi
done
if [ "${#taken[@]}" -gt 0 ]; then
    die "port(s) ${taken[*]} on $HOST already in use (another  make cluster  still running?); this demo needs ${ports[*]}: stop whatever listens there and try again"
fi

# --- start and stop --------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/portico-cluster.XXXXXX")"
declare -A PID=()      # what -> pid, for everything started
declare -A LOG_OF=()   # what -> its output
ORDER_STARTED=()       # in start order; stopped in reverse
stopping=false
cleanup() {
    local i what pid deadline
    trap - INT TERM
    stopping=true
    # Reverse order: the load balancer first, Redis last. SIGTERM to each: Portico drains
    # (nothing is in flight, so it exits at once), Redis shuts down without saving.
    for ((i = ${#ORDER_STARTED[@]} - 1; i >= 0; i--)); do
        what="${ORDER_STARTED[$i]}"
        pid="${PID[$what]}"
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 15))
    for what in "${ORDER_STARTED[@]}"; do
        pid="${PID[$what]}"
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$what (pid $pid) did not stop within 15s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo; log "stopping"; exit 130' INT
trap 'log "stopping"; exit 143' TERM

# start WHAT LOG COMMAND...: in the background, output to LOG.
start() {
    local what="$1" out="$2"
    shift 2
    "$@" >"$out" 2>&1 &
    PID[$what]=$!
    LOG_OF[$what]="$out"
    ORDER_STARTED+=("$what")
}

# wait_for WHAT LOG COMMAND...: until COMMAND succeeds, WHAT dies, or 20 seconds pass.
wait_for() {
    local what="$1" out="$2" deadline=$((SECONDS + 20)) rc
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "${PID[$what]}" 2>/dev/null; then
            rc=0
            wait "${PID[$what]}" || rc=$?
            tail -n 30 "$out" >&2
            die "$what exited with status $rc before it was ready (its output above)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$out" >&2
            die "$what was not ready within 20s (its output above)"
        fi
        sleep 0.1
    done
}

# Redis Cluster: three empty primaries, then one `--cluster create` that assigns the 16384
# slots among them, then cluster_state:ok on each.
for p in "${REDIS_PORTS[@]}"; do
    dir="$WORK/redis-$p"
    mkdir -p "$dir"
    start "redis-$p" "$dir/redis.log" redis-server --bind "$HOST" --port "$p" --dir "$dir" \
        --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 5000 \
        --save '' --appendonly no --daemonize no
done
for p in "${REDIS_PORTS[@]}"; do
    wait_for "redis-$p" "$WORK/redis-$p/redis.log" redis-cli -h "$HOST" -p "$p" ping
done
nodes=()
for p in "${REDIS_PORTS[@]}"; do nodes+=("$HOST:$p"); done
if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$WORK/cluster-create.log" 2>&1; then
    cat "$WORK/cluster-create.log" >&2
    die "redis-cli --cluster create failed"
fi
cluster_ok() {
    local p
    for p in "${REDIS_PORTS[@]}"; do
        redis-cli -h "$HOST" -p "$p" cluster info | grep -q '^cluster_state:ok' || return 1
    done
}
wait_for "redis-${REDIS_PORTS[0]}" "$WORK/cluster-create.log" cluster_ok
log "Redis Cluster up: three primaries on ${nodes[*]}"

# The demo backends.
start backends "$WORK/backends.log" "$BACKEND_BIN" "${BACKENDS[@]}"
for spec in "${BACKENDS[@]}"; do
    wait_for backends "$WORK/backends.log" curl -fsS -o /dev/null --max-time 1 "http://${spec#*=}/health"
done
log "demo backends up: ${BACKENDS[*]}"

# Three Portico instances on one config; only their environment differs.
for name in "${INSTANCES[@]}"; do
    mkdir -p "$WORK/portico-$name"
    mapfile -t vars < <(instance_env "$name")
    start "portico-$name" "$WORK/portico-$name.log" env "${vars[@]}" "$PORTICO_BIN" -c "$CONFIG"
done
for name in "${INSTANCES[@]}"; do
    wait_for "portico-$name" "$WORK/portico-$name.log" \
        curl -fsS -o /dev/null --max-time 1 "http://$HOST:${ADMIN_PORT[$name]}/readyz"
done
log "Portico up: a, b, c on $HOST:${PORT[a]}-${PORT[c]} (admin $HOST:${ADMIN_PORT[a]}-${ADMIN_PORT[c]}), config $CONFIG"

# HAProxy in front, in the foreground (-db) as our child.
{
    cat <<EOF
# Written by scripts/cluster.sh: the load balancer in front of Portico a, b and c.
global
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 10s
    option forwardfor               # X-Forwarded-For: the client; Portico trusts 127.0.0.1
    retries 2
    option redispatch               # a refused connection is tried on another instance

frontend portico
    bind $LB
    default_backend portico

backend portico
    balance roundrobin
    # An instance gets traffic while its admin /readyz answers 200: a draining one (SIGTERM)
    # answers 503 and is taken out within two checks, before it stops.
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
EOF
    for name in "${INSTANCES[@]}"; do
        printf '    server %s %s:%s check port %s\n' "$name" "$HOST" "${PORT[$name]}" "${ADMIN_PORT[$name]}"
    done
    cat <<EOF

listen stats
    bind $HOST:$STATS_PORT
    stats enable
    stats uri /
    stats refresh 2s
EOF
} >"$WORK/haproxy.cfg"
haproxy -c -q -f "$WORK/haproxy.cfg" || die "HAProxy refused the config it was given ($WORK/haproxy.cfg)"
start haproxy "$WORK/haproxy.log" haproxy -db -f "$WORK/haproxy.cfg"
# Until HAProxy's own health checks see all three instances UP.
all_up() {
    local csv
    csv="$(curl -fsS --max-time 1 "http://$HOST:$STATS_PORT/;csv")" || return 1
    [ "$(awk -F, '$1 == "portico" && $2 ~ /^[abc]$/ && $18 == "UP"' <<<"$csv" | wc -l)" -eq "${#INSTANCES[@]}" ]
}
wait_for haproxy "$WORK/haproxy.log" all_up
log "HAProxy up on $LB, balancing a, b and c (all three UP)"

# --- what to try -----------------------------------------------------------------------------
example() { printf '  %-72s # %s\n' "$1" "$2"; }
echo
echo "Try, from another terminal. Every request through HAProxy (http://$LB) goes to the next"
echo "instance in turn, and x-served-by says which one answered:"
echo
example "for i in 1 2 3; do curl -s -o /dev/null -w '%header{x-served-by}\\n' http://$LB/api/v1/users/42; done" "portico-a, portico-b, portico-c (in some order)"
echo
echo "One rate limit for all three instances: 5 a minute per client IP, counted in the Redis Cluster,"
echo "so the 6th request is refused whichever instance it reaches (each alone would admit 5; a 429 is"
echo "Portico's own answer, without x-served-by):"
echo
example "for i in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null -w '%{http_code} %header{x-served-by}\\n' http://$LB/api/v1/recommendations/42; done" "five 200s from a, b and c, then 429s"
example "for p in ${PORT[a]} ${PORT[b]} ${PORT[c]}; do curl -s -o /dev/null -w '%{http_code} ' http://$HOST:\$p/api/v1/recommendations/42; done; echo" "429 429 429: asked directly, each instance refuses"
echo
echo "A cache shared by all three: the first request fetches from the backend (MISS), the next"
echo "ones are served from the shared tier by the other instances (HIT); a purge on any instance"
echo "removes it everywhere:"
echo
example "for i in 1 2 3; do curl -si http://$LB/api/v1/products/7 | grep -i -E '^(x-cache|x-served-by)'; done" "MISS from one, then HIT from the others"
example "curl -s -X POST http://$HOST:${ADMIN_PORT[b]}/cache/purge -d '{\"url\":\"http://$LB/api/v1/products/7\"}'" "{\"purged\":1,\"shared\":{\"purged\":1}}: from b, from Redis, and published to a and c"
example "curl -si http://$LB/api/v1/products/7 | grep -i '^x-cache'" "MISS again, whichever instance answers"
echo
echo "The load balancer and the instances:"
echo
example "open http://$HOST:$STATS_PORT/" "HAProxy's stats page: a, b, c and their /readyz checks"
for name in "${INSTANCES[@]}"; do
    example "curl -s http://$HOST:${ADMIN_PORT[$name]}/status" "instance $name: generation, last_reload, upstreams"
done
example "open http://$HOST:${ADMIN_PORT[a]}/" "instance a's status page"
example "kill -TERM ${PID[portico-b]}" "stop instance b: it drains, HAProxy marks it DOWN, a and c answer"
echo
echo "Logs, while it runs: $WORK/portico-{a,b,c}.log (Portico's log and its access log, JSON lines),"
echo "$WORK/backends.log, $WORK/haproxy.log and $WORK/redis-*/redis.log."
echo "Ctrl-C stops HAProxy, the three instances, the backends and Redis, and removes $WORK."
echo

# Wait for Ctrl-C. An instance that exits (stopped by hand, or failed) is reported and the rest
# keep running, as they would behind a real load balancer; when everything has exited, so do we.
declare -A REPORTED=()
while :; do
    running=0
    for what in "${ORDER_STARTED[@]}"; do
        pid="${PID[$what]}"
        if kill -0 "$pid" 2>/dev/null; then
            running=$((running + 1))
        elif [ -z "${REPORTED[$what]:-}" ] && ! $stopping; then
            REPORTED[$what]=1
            rc=0
            wait "$pid" 2>/dev/null || rc=$?
            log "$what (pid $pid) exited with status $rc; the others keep running (its output: ${LOG_OF[$what]})"
        fi
    done
    [ "$running" -gt 0 ] || die "everything has exited"
    sleep 1
done
