#!/usr/bin/env bash
# Portico side by side with nginx, HAProxy and a bare Pingora proxy (the framework's floor), all
# in front of the same portico-backend, then writes loadtest/RESULTS.md and loadtest/results.svg.
#
#   bash loadtest/bench.sh [--quick] [--no-write]      (what `make bench` runs)
#
#   --quick      one 1-second round per scenario: checks the script works, the numbers are noisy
#   --no-write   leave loadtest/RESULTS.md and loadtest/results.svg alone
#
# Scenarios (each proxy has one worker and keeps its upstream connections alive):
#   c64       GET / at 64 connections (wrk), and the backend direct
#   rate10k   a fixed 10,000 req/s (oha -q, latency-corrected): p50/p99/p99.9 at equal load
#   c1, c256  GET / at 1 and 256 connections
#   bytes16k  16 KiB answers (GET /bytes/16384) at 64 connections
#   newconn   a new connection per request (Connection: close) at 64 connections
#   idle      1,000 idle keep-alive connections: RSS before and after (idle_conns.py)
#   cache     cache hits: nginx proxy_cache vs Portico's cache plugin (when this build has one)
#   gzip      a 16 KiB JSON answer gzipped at level 1 for clients that ask (Accept-Encoding:
#             gzip): nginx's `gzip on` vs Portico's compress plugin, 64 connections
#   tls       keep-alive HTTPS at 64 connections (wrk, TLS 1.3): nginx and Portico terminating
#             TLS with the same certificate (ECDSA P-256, made for the run), and Portico plain
#   tlsnew    a new TLS connection per request (wrk, Connection: close; wrk never resumes a
#             session, so each one is a full handshake) at 64 connections
#   h2        HTTP/2 over TLS (h2load, one connection carrying 64 streams at once) to the
#             HTTP/1.1 backend
#   scale     threads = 1 and 2: Portico (server.threads) and nginx (worker_processes) with one
#             and with two workers, on both CPUs, loaded by wrk -t2 -c128 sharing them: how
#             requests/s grow from one worker to two (on a 2-CPU machine the load generator
#             takes its share of the same CPUs, so the figure is a floor, not a ceiling)
#   pairs     same window: Portico and one other proxy serve at once on the proxy core, 32
#             connections each, and each one's CPU per request is compared: bare Pingora, and
#             Portico with a local and a Redis rate limit (limits so high nothing is refused),
#             with its full chain (JWT HS256 + local rate limit + metrics + JSON access log),
#             with cors + ip_filter (every request with an allowed Origin), and with a 90/10
#             split keyed by client address, and with tracing at sample_ratio 0.01 and 1.0
#             (spans exported over OTLP/HTTP to the backend); and one duo of Portico against
#             Portico: the seed's dashboard as a GraphQL query (GET /graphql?query=..., the
#             shop schema: user and orders at once, then recommendations as a POST of the
#             orders) against the same three calls as the composition route GET /dashboard/42;
#             and the scale-out pieces: the Redis rate limit counted in a Redis Cluster of three
#             primaries (rcluster) against plain Portico, and a shared cache tier hit
#             (pshared: the memory tier too small to keep anything, so every GET / is a memory
#             miss, a Redis GET and a hit) in two pairs of its own, against a memory hit
#             (pcache) and against an upstream fetch (plain Portico, no cache), each of the
#             three answering GET / with the same body
# The proxies' configs are in loadtest/peers/; the report and chart come from report.py.
#
# Every proxy is pinned to CPU 0; the backend, redis-server (the single server and the cluster's
# three) and the load generators share CPU 1,
# so a proxy's core does nothing but proxy and its CPU time per request (from /proc) is a clean
# number. Each proxy is its own process, idle while the others are measured. Rounds interleave
# the targets in a rotating order, so drift (thermal, noisy neighbours) hits them all alike; the
# tables show medians. Everything started is stopped by PID on exit.
set -euo pipefail

QUICK=0
WRITE=1
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --no-write) WRITE=0 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $arg (only --quick, --no-write)" >&2; exit 2 ;;
    esac
done
COMMAND="bash loadtest/bench.sh${*:+ $*}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BACKEND_BIN="$TARGET_DIR/release/portico-backend"
BARE_BIN="$TARGET_DIR/release/bare-pingora"
PORTICO_BIN="$TARGET_DIR/release/portico"
PEERS="$ROOT/loadtest/peers"
RESULTS="$ROOT/loadtest/RESULTS.md"
CHART="$ROOT/loadtest/results.svg"
START_TIME=$SECONDS

# --- the plan --------------------------------------------------------------------------------
# The default run must stay under 7 minutes after the build: 3 rounds of 4 s for the scenarios
# the targets are judged on (3 of 3 s for the TLS ones), 2 shorter rounds for the others.
SCENARIOS=(c64 rate10k c1 c256 bytes16k newconn cache gzip tls tlsnew h2)
PROXIES="nginx haproxy bare portico"
declare -A SC_TARGETS=([c64]="direct $PROXIES" [rate10k]="$PROXIES" [c1]="$PROXIES"
    [c256]="$PROXIES" [bytes16k]="$PROXIES" [newconn]="$PROXIES" [cache]="ngxcache pcache"
    [gzip]="ngxgzip pgzip" [tls]="portico ngxtls ptls" [tlsnew]="ngxtls ptls" [h2]="ngxtls ptls")
declare -A SC_CONNS=([c64]=64 [rate10k]=64 [c1]=1 [c256]=256 [bytes16k]=64 [newconn]=64 [cache]=64
    [gzip]=64 [tls]=64 [tlsnew]=64 [h2]=1)
declare -A SC_PATH=([bytes16k]=/bytes/16384 [gzip]=/json/16384)
declare -A SC_DURATION=([c64]=4 [rate10k]=4 [c1]=2 [c256]=3 [bytes16k]=3 [newconn]=3 [cache]=3 [gzip]=3
    [tls]=3 [tlsnew]=3 [h2]=3)
declare -A SC_ROUNDS=([c64]=3 [rate10k]=3 [c1]=2 [c256]=2 [bytes16k]=2 [newconn]=2 [cache]=3 [gzip]=2
    [tls]=3 [tlsnew]=3 [h2]=3)
# HTTP/2 streams per connection (h2load -m): under both proxies' stream limits (128, 100).
H2_STREAMS=64
# Same-window pairs: Portico against each of these, at once (see "same window" below); pgql
# (the GraphQL dashboard) against the same dashboard by composition instead. A pair has one
# partner, so a target compared with two others is in two pairs, the second under a name of
# its own that PAIR_TARGET maps to the target: the shared-tier hit (pshared) is paired with
# plain Portico (an upstream fetch, pair pshared) and, in windows of their own, with Portico's
# cache (a memory hit, pair pshared_mem). Each ratio then comes from its own same windows.
PAIRS=(bare local redis rcluster full policy split trace001 trace1 pgql pshared pshared_mem)
declare -A PAIR_WITH=([pgql]=pcompose [pshared_mem]=pcache)
declare -A PAIR_TARGET=([pshared_mem]=pshared)
# The dashboard as GraphQL: every field GET /dashboard/42 answers (the composition passes the
# services' JSON through whole), so both sides carry the same data.
DASHBOARD_QUERY='{ userDashboard(userId: "42") { user { id name email tier } recentOrders { id user_id total items { product_id quantity price } product_ids } recommendations { id name price currency in_stock reason score } } }'
PAIR_SECS=4
PAIR_ROUNDS=3
SCALE_SECS=4
SCALE_ROUNDS=3
RATE=10000
IDLE_CONNS=1000
WARMUP=1
if [ "$QUICK" -eq 1 ]; then
    for sc in "${SCENARIOS[@]}"; do SC_DURATION[$sc]=1; SC_ROUNDS[$sc]=1; done
    PAIR_SECS=1
    PAIR_ROUNDS=1
    SCALE_SECS=1
    SCALE_ROUNDS=1
    WARMUP=0
fi
# The rate limit every limited scenario uses: nothing is ever refused.
RL_LIMIT=1000000000
RL_WINDOW=1m

# --- tools -----------------------------------------------------------------------------------
# Each missing tool only costs the rows that need it; those rows say why.
declare -A WHY=()   # target -> why it was not measured at all
declare -A SC_WHY=() # scenario -> why none of it was measured
for tool in curl python3 awk cargo; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
ensure_tool wrk wrk || die "wrk is required and apt could not install it"
ensure_tool nginx nginx || { WHY[nginx]="nginx is not installed and apt could not install it"; WHY[ngxcache]="${WHY[nginx]}"; }
ensure_tool haproxy haproxy || WHY[haproxy]="haproxy is not installed and apt could not install it"
REDIS_WHY=""
{ ensure_tool redis-server redis-server && command -v redis-cli >/dev/null; } ||
    REDIS_WHY="redis-server is not installed and apt could not install it"
# A system nginx, haproxy or redis-server may start itself as a service when installed; this
# script never uses those (it starts its own on free ports) and leaves them alone.
OHA="$(command -v oha || echo "$HOME/.cargo/bin/oha")"
if [ ! -x "$OHA" ]; then
    log "installing oha (cargo install oha --locked; a few minutes, once)"
    cargo install oha --locked >&2 || true
fi
[ -x "$OHA" ] || SC_WHY[rate10k]="oha is not installed and \`cargo install oha --locked\` failed"
ensure_tool h2load nghttp2-client || SC_WHY[h2]="h2load is not installed and apt could not install nghttp2-client"
TLS_WHY=""
ensure_tool openssl openssl || TLS_WHY="openssl is not installed and apt could not install it (no certificate)"

# One core for the proxies, one for backend + load; a 1-core machine cannot separate them.
CPUS="$(nproc)"
if [ "$CPUS" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_PROXY=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
else
    log "warning: ${CPUS} CPU(s) or no taskset: running unpinned, numbers will be noisy"
    PIN_PROXY=()
    PIN_LOAD=()
fi
# 1,000 idle connections plus their upstreams need more descriptors than a default of 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- build -----------------------------------------------------------------------------------
log "building (release)"
# Both packages in one build, as `make build` does: built one at a time, cargo unifies their
# dependencies' features differently each time and rebuilds Pingora and tokio twice (minutes).
# A gateway that does not compile still leaves the other proxies runnable, and a failed build
# never falls back to a stale binary.
GATEWAY_WHY=""
if ! cargo build --release -p portico -p portico-loadtest; then
    cargo build --release -p portico-loadtest
    log "error: the portico gateway does not build; the Portico rows will be skipped"
    GATEWAY_WHY="the gateway does not build (see the cargo error above)"
fi
BUILT_AT=$SECONDS

# --- processes, stopped on any exit ------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/portico-bench.XXXXXX")"
chmod 755 "$WORK"
trap 'stop_all; rm -rf "$WORK"' EXIT
# Turn Ctrl-C / kill into a normal exit so the EXIT trap always runs.
trap 'exit 130' INT TERM
: >"$WORK/runs.tsv"; : >"$WORK/checks.txt"; : >"$WORK/warnings.txt"; : >"$WORK/commands.tsv"
: >"$WORK/idle.tsv"; : >"$WORK/rss.tsv"; : >"$WORK/unmeasured.tsv"; : >"$WORK/meta.tsv"
meta() { printf '%s\t%s\n' "$1" "$2" >>"$WORK/meta.tsv"; }
check() { echo "$*" >>"$WORK/checks.txt"; }
warn() { log "warning: $*"; echo "$*" >>"$WORK/warnings.txt"; }
# Records a command for the report, with the backend's address and the work dir as placeholders.
command_used() {
    local text="${2//$WORK/WORK}"
    [ -z "${BACKEND_ADDR:-}" ] || text="${text//$BACKEND_ADDR/BACKEND}"
    printf '%s\t%s\n' "$1" "$text" >>"$WORK/commands.tsv"
}
# A command line as one could paste it: arguments with spaces in single quotes.
quoted() {
    local arg out=""
    for arg in "$@"; do
        case "$arg" in *" "*) out+=" '$arg'" ;; *) out+=" $arg" ;; esac
    done
    echo "${out# }"
}

declare -A URL=() PID=() RSS_PID=()
# The backend binds :0 itself (no race at all) and prints the address it got.
start_bg "$WORK/backend.log" "${PIN_LOAD[@]}" "$BACKEND_BIN" backend=127.0.0.1:0
BACKEND_PID=$STARTED_PID
wait_until "portico-backend" "$BACKEND_PID" "$WORK/backend.log" \
    grep -q 'listening on' "$WORK/backend.log" || exit 1
BACKEND_ADDR="$(awk '/listening on/ {print $NF; exit}' "$WORK/backend.log")"
wait_until "portico-backend" "$BACKEND_PID" "$WORK/backend.log" \
    curl -fsS "http://$BACKEND_ADDR/ping" || exit 1
URL[direct]="http://$BACKEND_ADDR"
command_used proxy "backend: $(quoted "${PIN_LOAD[@]}" "$BACKEND_BIN" backend=127.0.0.1:0)"
log "backend on $BACKEND_ADDR (pid $BACKEND_PID)"

ALL_TARGETS=(nginx haproxy bare portico local redis rcluster full policy split trace001 trace1 ngxcache pcache pshared
    ngxgzip pgzip ngxtls ptls pcompose pgql)
PORTICO_TARGETS=(portico local redis rcluster full policy split trace001 trace1 pcache pshared pgzip ptls pcompose pgql)
# A port and an admin port per Portico, a port per other proxy, redis-server's, the TLS target's
# plain listener, and the Redis Cluster's three nodes with a cluster bus port each.
N_PORTS=$((${#ALL_TARGETS[@]} + ${#PORTICO_TARGETS[@]} + 2 + 6))
read -r -a PORTS < <(free_ports "$N_PORTS") || true
[ "${#PORTS[@]}" -eq "$N_PORTS" ] || die "could not get free ports from python3"
declare -A PORT=() ADMIN_PORT=()
i=0
for t in "${ALL_TARGETS[@]}"; do PORT[$t]="${PORTS[$i]}"; i=$((i + 1)); done
for t in "${PORTICO_TARGETS[@]}"; do ADMIN_PORT[$t]="${PORTS[$i]}"; i=$((i + 1)); done
REDIS_PORT="${PORTS[$i]}"
PTLS_PLAIN_PORT="${PORTS[$((i + 1))]}"
CLUSTER_PORTS=("${PORTS[@]:$((i + 2)):3}")
CLUSTER_BUS_PORTS=("${PORTS[@]:$((i + 5)):3}")
# The TLS targets are reached over https, with the run's own certificate (curl -k: the checks
# are about the answers; both proxies serve the same self-signed certificate).
declare -A SCHEME=([ngxtls]=https [ptls]=https)
CERT="$WORK/bench.crt"
KEY="$WORK/bench.key"
if [ -z "$TLS_WHY" ] && ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$KEY" -out "$CERT" >"$WORK/openssl.log" 2>&1; then
    TLS_WHY="openssl could not make the certificate: $(tail -1 "$WORK/openssl.log")"
fi
if [ -n "$TLS_WHY" ]; then WHY[ngxtls]="$TLS_WHY"; WHY[ptls]="$TLS_WHY"; fi

# Marks a target measurable once it answers GET / with the backend's "ok" (not an error page);
# otherwise records why not. Never fails, so one broken proxy does not stop the others.
ready() {
    local t="$1" body base="${SCHEME[$1]:-http}://127.0.0.1:${PORT[$1]}"
    body="$(curl -ksS --max-time 5 -H "${AUTH_HEADER[$t]:-X-Bench: 1}" "$base/" 2>&1)" || true
    if [ "$body" = "ok" ]; then
        URL[$t]="$base"
    else
        WHY[$t]="GET / answered '${body:0:80}', not 'ok'"
    fi
}

start_nginx() {
    local t="$1" template="$2"
    local conf="$WORK/nginx-$t.conf"
    mkdir -p "$WORK/nginx-$t"
    render "$PEERS/$template" "$conf" NAME="$t" WORK="$WORK" PORT="${PORT[$t]}" BACKEND="$BACKEND_ADDR" \
        CERT="$CERT" KEY="$KEY"
    start_bg "$WORK/$t.log" "${PIN_PROXY[@]}" "$(command -v nginx)" -p "$WORK/" -c "$conf"
    PID[$t]=$STARTED_PID
    command_used proxy "$t: ${PIN_PROXY[*]} nginx -p WORK/ -c loadtest/peers/$template (rendered)"
    if wait_until "nginx ($t)" "${PID[$t]}" "$WORK/$t.log" curl -ksS "${SCHEME[$t]:-http}://127.0.0.1:${PORT[$t]}/"; then
        RSS_PID[$t]="$(child_matching "${PID[$t]}" 'worker process')" || RSS_PID[$t]="${PID[$t]}"
        ready "$t"
    else
        WHY[$t]="nginx did not start (see its output above)"
    fi
}

start_haproxy() {
    local t=haproxy conf="$WORK/haproxy.cfg"
    render "$PEERS/haproxy.cfg" "$conf" PORT="${PORT[$t]}" BACKEND="$BACKEND_ADDR"
    start_bg "$WORK/$t.log" "${PIN_PROXY[@]}" "$(command -v haproxy)" -db -f "$conf"
    PID[$t]=$STARTED_PID; RSS_PID[$t]=$STARTED_PID
    command_used proxy "$t: ${PIN_PROXY[*]} haproxy -db -f loadtest/peers/haproxy.cfg (rendered)"
    if wait_until "haproxy" "${PID[$t]}" "$WORK/$t.log" curl -sS "http://127.0.0.1:${PORT[$t]}/"; then
        ready "$t"
    else
        WHY[$t]="haproxy did not start (see its output above)"
    fi
}

start_bare() {
    local t=bare
    start_bg "$WORK/$t.log" "${PIN_PROXY[@]}" "$BARE_BIN" "127.0.0.1:${PORT[$t]}" "$BACKEND_ADDR"
    PID[$t]=$STARTED_PID; RSS_PID[$t]=$STARTED_PID
    command_used proxy "$t: ${PIN_PROXY[*]} $BARE_BIN 127.0.0.1:PORT $BACKEND_ADDR"
    if wait_until "bare-pingora" "${PID[$t]}" "$WORK/$t.log" curl -sS "http://127.0.0.1:${PORT[$t]}/"; then
        ready "$t"
    else
        WHY[$t]="bare-pingora did not start (see its output above)"
    fi
}

# Portico: peers/portico.toml, plus peers/portico-VARIANT.toml for everything but plain.
declare -A PLUGINS=([portico]="" [local]='"limit"' [redis]='"limit"' [rcluster]='"limit"' [full]='"auth", "limit"'
    [pcache]='"cache"' [pshared]='"cache"' [policy]='"web", "office"' [pgzip]='"squeeze"' [trace001]="" [trace1]="")
declare -A FRAGMENT=([local]=portico-local.toml [redis]=portico-redis.toml [rcluster]=portico-rcluster.toml
    [full]=portico-full.toml [pcache]=portico-cache.toml [pshared]=portico-shared.toml [policy]=portico-policy.toml
    [pgzip]=portico-gzip.toml [trace001]=portico-trace.toml [trace1]=portico-trace.toml)
declare -A SAMPLE_RATIO=([trace001]=0.01 [trace1]=1.0)
# Portico terminating TLS, splitting its route, composing the dashboard and serving it over
# GraphQL have whole configs of their own.
declare -A BASE=([ptls]=portico-tls.toml [split]=portico-split.toml [pcompose]=portico-compose.toml
    [pgql]=portico-graphql.toml)
# The header each target's load sends (the policy route's: an allowed Origin, as a browser's).
declare -A AUTH_HEADER=([policy]="Origin: https://app.example.com" [ngxgzip]="Accept-Encoding: gzip"
    [pgzip]="Accept-Encoding: gzip")
BENCH_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
# An HS256 token valid for an hour, minted with the standard library only.
BENCH_TOKEN="$(BENCH_JWT_SECRET="$BENCH_JWT_SECRET" python3 -c '
import base64, hmac, json, os, time
e = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
j = lambda d: e(json.dumps(d, separators=(",", ":")).encode())
m = j({"alg": "HS256", "typ": "JWT"}) + b"." + j({"sub": "bench", "exp": int(time.time()) + 3600})
print((m + b"." + e(hmac.digest(os.environ["BENCH_JWT_SECRET"].encode(), m, "sha256"))).decode())')"
AUTH_HEADER[full]="Authorization: Bearer $BENCH_TOKEN"
# What each pair's load asks for: GET / but for the dashboard duo (the query URL-encoded).
declare -A PAIR_PATH=([pcompose]=/dashboard/42
    [pgql]="/graphql?query=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$DASHBOARD_QUERY")")

portico_config() {
    local t="$1" conf="$WORK/portico-$1.toml" access_log=off
    [ "$t" != full ] || access_log="$WORK/access.log"
    if [ -n "${BASE[$t]:-}" ]; then
        render "$PEERS/${BASE[$t]}" "$conf" NAME="$t" WORK="$WORK" PORT="${PORT[$t]}" \
            ADMIN_PORT="${ADMIN_PORT[$t]}" BACKEND="$BACKEND_ADDR" PLAIN_PORT="$PTLS_PLAIN_PORT" CERT="$CERT" KEY="$KEY" \
            SCHEMA="$ROOT/conf/examples/shop.graphql"
        echo "$conf"
        return
    fi
    render "$PEERS/portico.toml" "$conf" NAME="$t" WORK="$WORK" PORT="${PORT[$t]}" \
        ADMIN_PORT="${ADMIN_PORT[$t]}" BACKEND="$BACKEND_ADDR" ACCESS_LOG="$access_log" PLUGINS="${PLUGINS[$t]}"
    if [ -n "${FRAGMENT[$t]:-}" ]; then
        render "$PEERS/${FRAGMENT[$t]}" "$conf.part" RL_LIMIT="$RL_LIMIT" RL_WINDOW="$RL_WINDOW" REDIS_PORT="$REDIS_PORT" \
            BACKEND="$BACKEND_ADDR" SAMPLE_RATIO="${SAMPLE_RATIO[$t]:-}" CLUSTER_PORT1="${CLUSTER_PORTS[0]}" \
            CLUSTER_PORT2="${CLUSTER_PORTS[1]}" CLUSTER_PORT3="${CLUSTER_PORTS[2]}"
        cat "$conf.part" >>"$conf"
    fi
    echo "$conf"
}

start_portico() {
    local t="$1" conf
    conf="$(portico_config "$t")"
    start_bg "$WORK/portico-$t.log" env BENCH_JWT_SECRET="$BENCH_JWT_SECRET" \
        "${PIN_PROXY[@]}" "$PORTICO_BIN" -c "$conf"
    PID[$t]=$STARTED_PID; RSS_PID[$t]=$STARTED_PID
    command_used proxy "$t: ${PIN_PROXY[*]} $PORTICO_BIN -c FILE (loadtest/peers/${BASE[$t]:-portico.toml}${FRAGMENT[$t]:+ + ${FRAGMENT[$t]}})"
    # A gateway that will not start is reported like one that will not build: the other rows
    # still run, and the script fails at the end.
    if wait_until "portico ($t)" "${PID[$t]}" "$WORK/portico-$t.log" \
        curl -fsS "http://127.0.0.1:${ADMIN_PORT[$t]}/readyz"; then
        ready "$t"
    else
        WHY[$t]="portico did not start (see its output above)"
    fi
}

[ -n "${WHY[nginx]:-}" ] || start_nginx nginx nginx.conf
[ -n "${WHY[ngxcache]:-}" ] || start_nginx ngxcache nginx-cache.conf
[ -n "${WHY[nginx]:-}" ] || start_nginx ngxgzip nginx-gzip.conf
[ -z "${WHY[nginx]:-}" ] || WHY[ngxgzip]="${WHY[nginx]}"
[ -n "${WHY[ngxtls]:-}" ] || [ -n "${WHY[nginx]:-}" ] || start_nginx ngxtls nginx-tls.conf
[ -z "${WHY[nginx]:-}" ] || WHY[ngxtls]="${WHY[nginx]}"
[ -n "${WHY[haproxy]:-}" ] || start_haproxy
start_bare

# redis-server for the Redis scenario: in memory only, on the load core, stopped on exit.
if [ -z "$GATEWAY_WHY" ] && [ -z "$REDIS_WHY" ]; then
    start_bg "$WORK/redis.log" "${PIN_LOAD[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save "" --appendonly no --dir "$WORK"
    REDIS_PID=$STARTED_PID
    if wait_until "redis-server" "$REDIS_PID" "$WORK/redis.log" \
        sh -c "redis-cli -p $REDIS_PORT ping | grep -q PONG"; then
        log "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"
    else
        REDIS_WHY="redis-server did not start (see its output above)"
    fi
fi

# A Redis Cluster of three primaries for the cluster scenario (rcluster): redis-server like the
# one above (in memory only, on the load core), each node with its cluster bus on a free port of
# its own (--cluster-port: the default, the port + 10000, can be past 65535 for a port the
# kernel gave), the 16384 slots assigned by one `redis-cli --cluster create`, stopped on exit.
CLUSTER_WHY="$REDIS_WHY"
CLUSTER_PIDS=()
CLUSTER_NODES=()
cluster_ok() {
    local port
    for port in "${CLUSTER_PORTS[@]}"; do
        redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r' | grep -q '^cluster_state:ok$' || return 1
    done
}
if [ -z "$GATEWAY_WHY" ] && [ -z "$CLUSTER_WHY" ]; then
    for n in 0 1 2; do
        mkdir -p "$WORK/cluster-$n"
        start_bg "$WORK/cluster-$n.log" "${PIN_LOAD[@]}" redis-server --port "${CLUSTER_PORTS[$n]}" --bind 127.0.0.1 \
            --cluster-enabled yes --cluster-config-file "$WORK/cluster-$n/nodes.conf" \
            --cluster-port "${CLUSTER_BUS_PORTS[$n]}" --save "" --appendonly no --dir "$WORK/cluster-$n"
        CLUSTER_PIDS+=("$STARTED_PID")
        CLUSTER_NODES+=("127.0.0.1:${CLUSTER_PORTS[$n]}")
        if ! wait_until "redis-server (cluster node $((n + 1)))" "$STARTED_PID" "$WORK/cluster-$n.log" \
            sh -c "redis-cli -p ${CLUSTER_PORTS[$n]} ping | grep -q PONG"; then
            CLUSTER_WHY="a Redis Cluster node did not start (see its output above)"
            break
        fi
    done
fi
if [ -z "$GATEWAY_WHY" ] && [ -z "$CLUSTER_WHY" ]; then
    if ! "${PIN_LOAD[@]}" redis-cli --cluster create "${CLUSTER_NODES[@]}" --cluster-replicas 0 --cluster-yes \
        >"$WORK/cluster-create.log" 2>&1; then
        cat "$WORK/cluster-create.log" >&2
        CLUSTER_WHY="redis-cli --cluster create failed (see its output above)"
    elif ! wait_until "the Redis Cluster" "${CLUSTER_PIDS[0]}" "$WORK/cluster-create.log" cluster_ok; then
        CLUSTER_WHY="the Redis Cluster did not reach cluster_state:ok (see above)"
    else
        log "Redis Cluster on ${CLUSTER_NODES[*]} (pids ${CLUSTER_PIDS[*]})"
    fi
    command_used proxy "rcluster's Redis Cluster: three of ${PIN_LOAD[*]} redis-server --port PORT --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file WORK/cluster-N/nodes.conf --cluster-port BUS_PORT --save '' --appendonly no --dir WORK/cluster-N, then ${PIN_LOAD[*]} redis-cli --cluster create 127.0.0.1:PORT1 127.0.0.1:PORT2 127.0.0.1:PORT3 --cluster-replicas 0 --cluster-yes"
fi

CACHE_EXPECTED_GAP=0
for t in "${PORTICO_TARGETS[@]}"; do
    if [ -n "$GATEWAY_WHY" ]; then
        WHY[$t]="$GATEWAY_WHY"
    elif { [ "$t" = redis ] || [ "$t" = pshared ]; } && [ -n "$REDIS_WHY" ]; then
        WHY[$t]="$REDIS_WHY"
    elif [ "$t" = rcluster ] && [ -n "$CLUSTER_WHY" ]; then
        WHY[$t]="$CLUSTER_WHY"
    elif [ -n "${WHY[$t]:-}" ]; then
        :
    elif [ "$t" = pcache ] && ! "$PORTICO_BIN" -t -c "$(portico_config pcache)" >"$WORK/pcache-t.log" 2>&1; then
        # The cache plugin is newer than this harness: a build without it is a known gap.
        WHY[$t]="this build has no cache plugin (\`portico -t\` rejects its config, see Checks)"
        CACHE_EXPECTED_GAP=1
        check "pcache: \`portico -t\` rejects the cache config: $(awk 'NR <= 2 { sub(/^ +/, ""); line = $0 } END { print line }' "$WORK/pcache-t.log" | sed "s|$WORK/||g")"
    elif [ "$t" = pshared ] && [ "$CACHE_EXPECTED_GAP" -eq 1 ]; then
        # No cache plugin, no shared tier either: the same known gap.
        WHY[$t]="${WHY[pcache]}"
    else
        start_portico "$t"
    fi
done
for t in "${ALL_TARGETS[@]}"; do
    if [ -n "${URL[$t]:-}" ]; then
        log "$t on ${URL[$t]} (pid ${PID[$t]})"
    fi
done

# --- checks before measuring: every proxy serves the same thing ------------------------------------
# A counter from a Portico's /metrics, summed over the series whose labels contain $3 (all of
# them when $3 is empty); 0 when the series does not exist yet.
metric() {
    { curl -fsS "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" 2>/dev/null || true; } |
        awk -v m="$2" -v l="$3" '(index($0, m "{") == 1 || index($0, m " ") == 1) && (l == "" || index($0, l)) { n += $NF }
            END { printf "%d\n", n }'
}
# 16 KiB through each plain proxy: a 200 with every byte.
for t in $PROXIES; do
    [ -n "${URL[$t]:-}" ] || continue
    size="$(curl -sS -o /dev/null -w '%{http_code} %{size_download}' "${URL[$t]}/bytes/16384" || true)"
    [ "$size" = "200 16384" ] || WHY[$t]="GET /bytes/16384 answered '$size', not 200 with 16384 bytes"
done
# The TLS targets: TLS 1.3 with the run's certificate, and HTTP/2 by ALPN, on both; and 16 KiB
# over each, every byte.
for t in ngxtls ptls; do
    [ -n "${URL[$t]:-}" ] || continue
    hs="$(openssl s_client -connect "127.0.0.1:${PORT[$t]}" -servername localhost -brief </dev/null 2>&1 | tr -d '\r')" || true
    proto="$(awk -F': *' '/^Protocol version/ { print $2 }' <<<"$hs")"
    suite="$(awk -F': *' '/^Ciphersuite/ { print $2 }' <<<"$hs")"
    key="$(awk -F': *' '/^(Server|Peer) Temp Key/ { print $2 }' <<<"$hs")"
    h2="$(curl -ksS --http2 -o /dev/null -w '%{http_version} %{http_code}' "${URL[$t]}/" || true)"
    size="$(curl -ksS -o /dev/null -w '%{http_code} %{size_download}' "${URL[$t]}/bytes/16384" || true)"
    check "$t: openssl s_client: ${proto:-no handshake}, ${suite:-?}, key exchange ${key:-?}; curl --http2: HTTP/${h2% *} ${h2#* }"
    if [ "$proto" != TLSv1.3 ]; then
        WHY[$t]="the handshake did not give TLS 1.3: '${proto:-none}'"
    elif [ "$h2" != "2 200" ]; then
        WHY[$t]="curl --http2 got '$h2', not HTTP/2 with a 200"
    elif [ "$size" != "200 16384" ]; then
        WHY[$t]="GET /bytes/16384 answered '$size', not 200 with 16384 bytes"
    fi
done
# The limited routes really are limited...
for t in local redis rcluster full; do
    [ -n "${URL[$t]:-}" ] || continue
    if ! curl -sS -D - -o /dev/null -H "${AUTH_HEADER[$t]:-X-Bench: 1}" "${URL[$t]}/" | grep -qi "^ratelimit-limit: $RL_LIMIT"; then
        WHY[$t]="GET / answered without RateLimit-Limit: $RL_LIMIT"
    fi
done
# ...and the full chain refuses a request without the token.
if [ -n "${URL[full]:-}" ] && [ -z "${WHY[full]:-}" ]; then
    code="$(curl -sS -o /dev/null -w '%{http_code}' "${URL[full]}/" || true)"
    check "full: GET / with the token answered 200 \"ok\" with RateLimit-Limit; without a token, $code"
    [ "$code" = 401 ] || WHY[full]="GET / without a token answered $code, not 401"
fi
# Cache hits: the first GET fills the cache (and warms it), the second must be a HIT.
cache_check() {
    local t="$1" header="$2" when="$3" got
    curl -sS -o /dev/null "${URL[$t]}/" || true
    got="$(curl -sS -D - -o /dev/null "${URL[$t]}/" | tr -d '\r' | awk -v h="$header:" 'tolower($1) == tolower(h) { print $2 }')" || true
    check "$t: $when, curl GET / twice: the second answered $header: ${got:-(none)}"
    [ "$got" != HIT ] || return 0
    if [ "$when" = "before measuring" ]; then
        WHY[$t]="the second GET / answered $header: '${got:-none}', not HIT"
    else
        warn "$t: after measuring, GET / is no longer a cache HIT ($header: ${got:-none})"
    fi
}
[ -z "${URL[ngxcache]:-}" ] || cache_check ngxcache X-Cache-Status "before measuring"
[ -z "${URL[pcache]:-}" ] || cache_check pcache X-Cache "before measuring"
# The shared-tier hit: GET / answered HIT while the memory tier holds nothing, and the shared
# tier's hit count grew, so the answer came from Redis. A fill reaches Redis in the background,
# so a fresh one is waited for (up to 5 s) rather than asked for at once.
shared_check() {
    local t=pshared when="$1" hits_before hits got="" entries deadline=$((SECONDS + 5))
    hits_before="$(metric "$t" portico_cache_shared_operations_total 'result="hit"')"
    curl -sS -o /dev/null "${URL[$t]}/" || true
    while :; do
        got="$(curl -sS -D - -o /dev/null "${URL[$t]}/" | tr -d '\r' | awk 'tolower($1) == "x-cache:" { print $2 }')" || true
        if [ "$got" = HIT ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
        sleep 0.1
    done
    hits="$(metric "$t" portico_cache_shared_operations_total 'result="hit"')"
    entries="$(metric "$t" portico_cache_entries '')"
    check "$t: $when, GET / answered X-Cache: ${got:-(none)}; shared-tier hits $hits_before -> $hits; the memory tier holds $entries entries"
    [ "$got" = HIT ] && [ "$hits" -gt "$hits_before" ] && [ "$entries" -eq 0 ] && return 0
    local why="GET / answered X-Cache: '${got:-none}' with shared-tier hits $hits_before -> $hits and $entries entries in memory, not a HIT from the shared tier with an empty memory tier"
    if [ "$when" = "before measuring" ]; then WHY[$t]="$why"; else warn "$t: after measuring, $why"; fi
}
[ -z "${URL[pshared]:-}" ] || shared_check "before measuring"
# The three cache rows' sides answer GET / with the same body: a shared-tier hit, a memory hit,
# and an upstream fetch through plain Portico.
if [ -n "${URL[pshared]:-}" ] && [ -n "${URL[pcache]:-}" ] && [ -n "${URL[portico]:-}" ]; then
    sizes=""
    for t in pshared pcache portico; do
        sizes+="${sizes:+, }$t $(curl -sS -o "$WORK/$t.body" -w '%{http_code} with %{size_download}' "${URL[$t]}/" || true) bytes"
    done
    check "cache rows: GET / answered $sizes"
    if ! cmp -s "$WORK/pshared.body" "$WORK/portico.body" || ! cmp -s "$WORK/pcache.body" "$WORK/portico.body"; then
        warn "cache rows: GET / answered different bodies ($sizes): the shared-tier rows compare different answers"
    fi
fi
# The dashboard duo serves the same thing: the composition answers 200 with its three parts, and
# the GraphQL query 200 without "errors" and with the same user, orders and recommendations. A
# mismatch is warned about (the duo then compares different work) but still measured; the
# metrics after measuring say whether every request of the load was complete too.
dashboard_check() {
    local c_code g_code kind line
    c_code="$(curl -sS --max-time 5 -o "$WORK/pcompose.json" -w '%{http_code}' "${URL[pcompose]}${PAIR_PATH[pcompose]}" || true)"
    g_code="$(curl -sS --max-time 5 -o "$WORK/pgql.json" -w '%{http_code}' "${URL[pgql]}${PAIR_PATH[pgql]}" || true)"
    # One line per finding, "check TEXT" or "warn TEXT"; a check that cannot run is a warning too.
    python3 - "$WORK/pcompose.json" "$c_code" "$WORK/pgql.json" "$g_code" >"$WORK/dashboard-check.txt" <<'EOF' ||
import json, os, sys
c_path, c_code, g_path, g_code = sys.argv[1:]

def answer(path, code, what):
    size = os.path.getsize(path) if os.path.exists(path) else 0
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = None
    ok = code == "200" and isinstance(doc, dict)
    print(("check" if ok else "warn") + f" {what} answered {code or 'nothing'}, {size} bytes"
          + ("" if ok else ", not 200 with a JSON object"))
    return doc if isinstance(doc, dict) else {}

c = answer(c_path, c_code, "pcompose: GET /dashboard/42")
g = answer(g_path, g_code, "pgql: GET /graphql?query=(the dashboard query)")
missing = [k for k in ("user", "orders", "recommendations") if not c.get(k)]
if missing or "_errors" in c:
    print(f"warn pcompose: the composed dashboard is incomplete: missing {', '.join(missing) or 'nothing'}, "
          f"_errors {json.dumps(c.get('_errors'))}")
if "errors" in g:
    print(f"warn pgql: the GraphQL dashboard has errors: {json.dumps(g['errors'])[:300]}")
dash = (g.get("data") or {}).get("userDashboard")
want = {"user": c.get("user"), "recentOrders": c.get("orders"), "recommendations": c.get("recommendations")}
if dash == want:
    print("check pgql: its data is GET /dashboard/42's (user, orders as recentOrders, recommendations)")
else:
    print("warn pgql: the GraphQL dashboard's data is not GET /dashboard/42's: the duo compares different work")
EOF
        echo "warn pgql: the dashboard check could not run (python3 failed)" >>"$WORK/dashboard-check.txt"
    while read -r kind line; do
        if [ "$kind" = check ]; then check "$line"; else warn "$line"; fi
    done <"$WORK/dashboard-check.txt"
}
[ -z "${URL[pcompose]:-}" ] || [ -z "${URL[pgql]:-}" ] || dashboard_check
for t in "${ALL_TARGETS[@]}"; do
    if [ -n "${WHY[$t]:-}" ]; then
        URL[$t]=""
        printf '*\t%s\t%s\n' "$t" "${WHY[$t]}" >>"$WORK/unmeasured.tsv"
    fi
done
for sc in "${!SC_WHY[@]}"; do
    for t in ${SC_TARGETS[$sc]}; do printf '%s\t%s\t%s\n' "$sc" "$t" "${SC_WHY[$sc]}" >>"$WORK/unmeasured.tsv"; done
done

# Every process the numbers depend on must still be running: one that died (or was killed by
# something else on the machine) turns the runs after it into error pages.
all_alive() {
    local t pid rc
    for t in backend redis-server cluster-1 cluster-2 cluster-3 "${ALL_TARGETS[@]}"; do
        case "$t" in
            backend) pid="$BACKEND_PID" ;;
            redis-server) pid="${REDIS_PID:-}"; [ -n "${URL[redis]:-}${URL[pshared]:-}" ] || pid="" ;;
            cluster-*) pid="${CLUSTER_PIDS[$((${t#cluster-} - 1))]:-}"; [ -n "${URL[rcluster]:-}" ] || pid="" ;;
            *) pid="${PID[$t]:-}"; [ -n "${URL[$t]:-}" ] || pid="" ;;
        esac
        [ -n "$pid" ] || continue
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" 2>/dev/null || rc=$?
            log "error: $t (pid $pid) is gone, exit status $rc$([ "$rc" -gt 128 ] && echo " (signal $((rc - 128)))")"
            die "a process the benchmark needs stopped during the run; no results"
        fi
    done
}

# --- idle keep-alive connections (first, on fresh processes: a proxy that has just served 256
# connections keeps their freed memory, and new connections would look free) ------------------------
for t in $PROXIES; do
    [ -n "${URL[$t]:-}" ] || continue
    log "idle: $IDLE_CONNS keep-alive connections to $t"
    if out="$("${PIN_LOAD[@]}" python3 "$ROOT/loadtest/idle_conns.py" "127.0.0.1:${PORT[$t]}" "$IDLE_CONNS" "${RSS_PID[$t]}" 2>&1)"; then
        printf '%s\t%s\n' "$t" "$out" >>"$WORK/idle.tsv"
        grep -q "still_open=$IDLE_CONNS " <<<"$out" || warn "$t: closed some of the idle connections: $out"
    else
        warn "$t: the idle connections test failed: $out"
    fi
    all_alive
done
command_used load "idle: ${PIN_LOAD[*]} python3 loadtest/idle_conns.py 127.0.0.1:PORT $IDLE_CONNS PROXY_PID"

# --- measuring ---------------------------------------------------------------------------------
# Sets LOAD to the command line for one run of scenario $1, $2 seconds long, against $3 (a
# target, or a placeholder for the report).
load_command() {
    local sc="$1" secs="$2" t="$3" url conns
    url="${URL[$t]:-http://127.0.0.1:PORT}${SC_PATH[$sc]:-/}"
    conns="${SC_CONNS[$sc]}"
    LOAD=("${PIN_LOAD[@]}")
    if [ "$sc" = rate10k ]; then
        LOAD+=("$OHA" -z "${secs}s" -w -c "$conns" -q "$RATE" --latency-correction --no-tui --output-format json)
    elif [ "$sc" = h2 ]; then
        LOAD+=(h2load -t1 -c"$conns" -m"$H2_STREAMS" -D"$secs")
    else
        LOAD+=(wrk -t1 -c"$conns" -d"${secs}s" --latency)
        [ "$sc" != newconn ] && [ "$sc" != tlsnew ] || LOAD+=(-H "Connection: close")
    fi
    [ -z "${AUTH_HEADER[$t]:-}" ] || LOAD+=(-H "${AUTH_HEADER[$t]}")
    LOAD+=("$url")
}

# Runs one load and prints "rps p50 p99 p999 requests errors".
run_load() {
    local sc="$1" secs="$2" t="$3" out
    load_command "$sc" "$secs" "$t"
    if ! out="$(timeout $((secs + 60)) "${LOAD[@]}" 2>"$WORK/load.err")"; then
        all_alive
        cat "$WORK/load.err" >&2
        die "${LOAD[*]} failed"
    fi
    printf '%s\n' "$out" >>"$WORK/load.log"
    case "$sc" in
        rate10k) parse_oha <<<"$out" ;;
        h2) parse_h2load <<<"$out" ;;
        *) parse_wrk <<<"$out" ;;
    esac
}

# One side of a same-window pair: wrk -t1 -c32 for $3 seconds (PAIR_SECS by default) against
# target $1, its output in $2.
pair_load() {
    local t="$1" out="$2" secs="${3:-$PAIR_SECS}"
    local cmd=("${PIN_LOAD[@]}" wrk -t1 -c32 -d"${secs}s")
    [ -z "${AUTH_HEADER[$t]:-}" ] || cmd+=(-H "${AUTH_HEADER[$t]}")
    timeout $((secs + 60)) "${cmd[@]}" "${URL[$t]}${PAIR_PATH[$t]:-/}" >"$out" 2>&1
}

# How many times redis-server ran a command (an extended regular expression of command names,
# lower case), summed over the servers on ports $2...: the rate limit's scripts are eval|evalsha,
# the shared cache tier's lookups get.
redis_calls() {
    local commands="$1" port; shift
    for port in "$@"; do
        { redis-cli -p "$port" info commandstats 2>/dev/null || true; } | tr -d '\r'
    done | awk -F'[:=,]' -v c="^cmdstat_($commands)$" '$1 ~ c { n += $3 } END { print n + 0 }'
}
redis_script_calls() { redis_calls 'eval|evalsha' "$REDIS_PORT"; }
# The Redis work of a pair's second side, measured around its windows: the store's processes,
# ports and commands (pairs that use no Redis have none).
declare -A STORE_TICKS=() STORE_CALLS=()
store_of() {
    STORE_PIDS=() STORE_PORTS=() STORE_COMMANDS=""
    case "$1" in
        redis) STORE_PIDS=("$REDIS_PID"); STORE_PORTS=("$REDIS_PORT"); STORE_COMMANDS='eval|evalsha' ;;
        rcluster) STORE_PIDS=("${CLUSTER_PIDS[@]}"); STORE_PORTS=("${CLUSTER_PORTS[@]}"); STORE_COMMANDS='eval|evalsha' ;;
        pshared|pshared_mem) STORE_PIDS=("$REDIS_PID"); STORE_PORTS=("$REDIS_PORT"); STORE_COMMANDS='get' ;;
    esac
}
store_ticks() {
    local pid n=0
    for pid in "${STORE_PIDS[@]}"; do n=$((n + $(cpu_ticks "$pid"))); done
    echo "$n"
}

# Other work on the machine skews everything: note how busy it was when measuring began.
LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
measured_targets() {
    local t
    for t in ${SC_TARGETS[$1]}; do
        [ -n "${URL[$t]:-}" ] && [ -z "${SC_WHY[$1]:-}" ] && echo "$t"
    done
    return 0
}
ESTIMATE=0
for sc in "${SCENARIOS[@]}"; do
    n="$(measured_targets "$sc" | wc -l)"
    ESTIMATE=$((ESTIMATE + n * SC_ROUNDS[$sc] * SC_DURATION[$sc]))
done
ESTIMATE=$((ESTIMATE + ${#PAIRS[@]} * PAIR_ROUNDS * PAIR_SECS))
log "measuring: about $((ESTIMATE + WARMUP * ${#ALL_TARGETS[@]}))s of load (load average $LOADAVG)"

if [ "$WARMUP" -gt 0 ]; then
    for t in direct "${ALL_TARGETS[@]}"; do
        [ -n "${URL[$t]:-}" ] || continue
        # The dashboard duo serves only its pair, so it warms up on its dashboard (the pool of
        # upstream connections filled, the query's first parse done).
        if [ -n "${PAIR_PATH[$t]:-}" ]; then
            pair_load "$t" "$WORK/warmup.out" "$WARMUP" || { cat "$WORK/warmup.out" >&2; die "wrk against $t failed"; }
        else
            run_load c64 "$WARMUP" "$t" >/dev/null
        fi
        all_alive
    done
fi

for sc in "${SCENARIOS[@]}"; do
    mapfile -t targets < <(measured_targets "$sc")
    n="${#targets[@]}"
    [ "$n" -gt 0 ] || continue
    load_command "$sc" "${SC_DURATION[$sc]}" PLACEHOLDER
    command_used load "$sc: $(quoted "${LOAD[@]}")"
    rounds="${SC_ROUNDS[$sc]}"
    for round in $(seq 1 "$rounds"); do
        # Each round starts one target later, so no target always runs first or after another.
        for i in $(seq 0 $((n - 1))); do
            t="${targets[$(((i + round - 1) % n))]}"
            log "$sc round $round/$rounds: $t (${SC_DURATION[$sc]}s)"
            cpu_before=0
            # CPU is read around each proxy's own runs only, so its idle time is not charged.
            [ "$t" = direct ] || cpu_before="$(cpu_ticks "${PID[$t]}")"
            # Not `read < <(...)`: a failed run must stop the script, not read an empty line.
            result="$(run_load "$sc" "${SC_DURATION[$sc]}" "$t")"
            read -r rps p50 p99 p999 requests errors <<<"$result"
            cpu_us=-
            [ "$t" = direct ] || cpu_us=$((($(cpu_ticks "${PID[$t]}") - cpu_before) * 1000000 / CLK_TCK))
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$t" "$round" "$rps" "$p50" "$p99" \
                "$p999" "$requests" "$errors" "$cpu_us" >>"$WORK/runs.tsv"
            # Errors make the throughput meaningless (fast failures look like speed): say so loudly.
            [ "$errors" -eq 0 ] || warn "$t: $sc, round $round: $errors of $requests requests failed or were not 2xx"
            all_alive
        done
    done
done

# --- same window: Portico against bare Pingora, and against itself with plugins ---------------------
# Sequential rounds drift (±20% between rounds of one binary on this VM), more than what a
# plugin costs. Here Portico and the other proxy of a pair serve at once, on the same core, each
# loaded by its own wrk with half of the 64 connections on the load core, so drift hits both
# alike. Each one's CPU time per request comes from /proc; the ratio of the two is the ratio of
# their requests per second per core, which the targets on bare Pingora and on the plugins'
# costs are judged on. The dashboard duo is the same measurement with Portico's composition
# route on the first side and its GraphQL answer of the same dashboard on the other (pairs.tsv:
# the first side's figures are then pcompose's); the shared-tier hit is the second side of two
# pairs, pshared (against plain Portico's upstream fetch) and pshared_mem (against pcache's
# memory hit, the first side's figures then pcache's). For the pairs that use Redis, its CPU
# time and the commands it ran over their windows are recorded too (STORE_TICKS, STORE_CALLS).
command_used load "pairs: two at once, $(quoted "${PIN_LOAD[@]}" wrk -t1 -c32 -d"${PAIR_SECS}s") URL, one per proxy (full chain: with -H 'Authorization: Bearer <token>')"
command_used load "pairs, the dashboard duo: the same, URL/dashboard/42 (pcompose) and URL/graphql?query=... (pgql: $DASHBOARD_QUERY, URL-encoded)"
command_used load "pairs, the shared-tier hit: the same, URL/ on both sides: pshared and portico, then pshared and pcache"
for round in $(seq 1 "$PAIR_ROUNDS"); do
    for i in $(seq 0 $((${#PAIRS[@]} - 1))); do
        pair="${PAIRS[$(((i + round - 1) % ${#PAIRS[@]}))]}"
        t="${PAIR_TARGET[$pair]:-$pair}"
        a="${PAIR_WITH[$pair]:-portico}"
        [ -n "${URL[$a]:-}" ] && [ -n "${URL[$t]:-}" ] || continue
        log "pairs round $round/$PAIR_ROUNDS: $a and $t at once (${PAIR_SECS}s)"
        store_of "$pair"
        if [ "${#STORE_PIDS[@]}" -gt 0 ]; then
            store_before="$(store_ticks)"
            calls_before="$(redis_calls "$STORE_COMMANDS" "${STORE_PORTS[@]}")"
        fi
        a_before="$(cpu_ticks "${PID[$a]}")"
        b_before="$(cpu_ticks "${PID[$t]}")"
        pair_load "$a" "$WORK/pair-a.out" & a_job=$!
        pair_load "$t" "$WORK/pair-b.out" || { all_alive; cat "$WORK/pair-b.out" >&2; die "wrk against $t failed"; }
        wait "$a_job" || { all_alive; cat "$WORK/pair-a.out" >&2; die "wrk against $a failed"; }
        a_us=$((($(cpu_ticks "${PID[$a]}") - a_before) * 1000000 / CLK_TCK))
        b_us=$((($(cpu_ticks "${PID[$t]}") - b_before) * 1000000 / CLK_TCK))
        if [ "${#STORE_PIDS[@]}" -gt 0 ]; then
            STORE_TICKS[$pair]=$((${STORE_TICKS[$pair]:-0} + $(store_ticks) - store_before))
            STORE_CALLS[$pair]=$((${STORE_CALLS[$pair]:-0} + $(redis_calls "$STORE_COMMANDS" "${STORE_PORTS[@]}") - calls_before))
        fi
        cat "$WORK/pair-a.out" "$WORK/pair-b.out" >>"$WORK/load.log"
        read -r a_rps _ _ _ a_req a_err < <(parse_wrk <"$WORK/pair-a.out")
        read -r b_rps _ _ _ b_req b_err < <(parse_wrk <"$WORK/pair-b.out")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pair" "$round" "$a_rps" "$a_req" "$a_us" \
            "$b_rps" "$b_req" "$b_us" >>"$WORK/pairs.tsv"
        [ "$a_err" -eq 0 ] || warn "$a: pairs with $t, round $round: $a_err of $a_req requests failed or were not 2xx"
        [ "$b_err" -eq 0 ] || warn "$t: pairs with $a, round $round: $b_err of $b_req requests failed or were not 2xx"
        all_alive
    done
done

# --- scale: one worker against two ---------------------------------------------------------------
# The other proxies are idle meanwhile. Each worker count runs as its own process on both CPUs
# (taskset -c 0,1), started here and stopped by stop_all, with the same wrk for each.
: >"$WORK/scale.tsv"
if [ "$CPUS" -ge 2 ] && [ -z "$GATEWAY_WHY" ] && [ -z "${WHY[nginx]:-}" ]; then
    PIN_BOTH=()
    ! command -v taskset >/dev/null || PIN_BOTH=(taskset -c 0,1)
    read -r -a SCALE_PORTS < <(free_ports 6) || true
    declare -A SCALE_URL=() SCALE_PID=()
    for threads in 1 2; do
        i=$(((threads - 1) * 3))
        port="${SCALE_PORTS[$i]}" admin_port="${SCALE_PORTS[$((i + 1))]}" ngx_port="${SCALE_PORTS[$((i + 2))]}"
        conf="$WORK/portico-scale$threads.toml"
        render "$PEERS/portico.toml" "$conf" NAME="scale$threads" WORK="$WORK" PORT="$port" \
            ADMIN_PORT="$admin_port" BACKEND="$BACKEND_ADDR" ACCESS_LOG=off PLUGINS=""
        sed -i "s/^threads = 1$/threads = $threads/" "$conf"
        start_bg "$WORK/portico-scale$threads.log" "${PIN_BOTH[@]}" "$PORTICO_BIN" -c "$conf"
        SCALE_PID[portico$threads]=$STARTED_PID
        SCALE_URL[portico$threads]="http://127.0.0.1:$port/"
        wait_until "portico (threads = $threads)" "$STARTED_PID" "$WORK/portico-scale$threads.log" \
            curl -fsS "http://127.0.0.1:$admin_port/readyz" || die "portico with threads = $threads did not start"
        ngx_conf="$WORK/nginx-scale$threads.conf"
        mkdir -p "$WORK/nginx-scale$threads"
        render "$PEERS/nginx.conf" "$ngx_conf" NAME="scale$threads" WORK="$WORK" PORT="$ngx_port" BACKEND="$BACKEND_ADDR"
        sed -i "s/^worker_processes 1;/worker_processes $threads;/" "$ngx_conf"
        start_bg "$WORK/nginx-scale$threads.log" "${PIN_BOTH[@]}" "$(command -v nginx)" -p "$WORK/" -c "$ngx_conf"
        SCALE_PID[nginx$threads]=$STARTED_PID
        SCALE_URL[nginx$threads]="http://127.0.0.1:$ngx_port/"
        wait_until "nginx (worker_processes $threads)" "$STARTED_PID" "$WORK/nginx-scale$threads.log" \
            curl -sS "http://127.0.0.1:$ngx_port/" || die "nginx with $threads workers did not start"
    done
    command_used proxy "scale: ${PIN_BOTH[*]} portico -c FILE (loadtest/peers/portico.toml, threads = 1 or 2); ${PIN_BOTH[*]} nginx (loadtest/peers/nginx.conf, worker_processes 1 or 2)"
    command_used load "scale: $(quoted "${PIN_BOTH[@]}" wrk -t2 -c128 -d"${SCALE_SECS}s" --latency) URL"
    scale_targets=(portico1 portico2 nginx1 nginx2)
    for round in $(seq 1 "$SCALE_ROUNDS"); do
        for i in 0 1 2 3; do
            t="${scale_targets[$(((i + round - 1) % 4))]}"
            log "scale round $round/$SCALE_ROUNDS: $t (${SCALE_SECS}s)"
            before="$(cpu_ticks "${SCALE_PID[$t]}")"
            out="$(timeout $((SCALE_SECS + 60)) "${PIN_BOTH[@]}" wrk -t2 -c128 -d"${SCALE_SECS}s" --latency "${SCALE_URL[$t]}" 2>&1)" ||
                { all_alive; die "wrk against $t failed"; }
            after="$(cpu_ticks "${SCALE_PID[$t]}")"
            printf '%s\n' "$out" >>"$WORK/load.log"
            read -r rps p50 p99 _ requests errors < <(parse_wrk <<<"$out")
            cpu_us=$(((after - before) * 1000000 / CLK_TCK))
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$round" "$rps" "$p99" "$requests" "$errors" "$cpu_us" >>"$WORK/scale.tsv"
            [ "$errors" -eq 0 ] || warn "$t: scale, round $round: $errors of $requests requests failed or were not 2xx"
            all_alive
        done
    done
fi

# --- checks after measuring ----------------------------------------------------------------------
for t in local redis rcluster full; do
    [ -n "${URL[$t]:-}" ] || continue
    allowed="$(metric "$t" portico_rate_limit_decisions_total 'decision="allowed"')"
    limited="$(metric "$t" portico_rate_limit_decisions_total 'decision="limited"')"
    store_error="$(metric "$t" portico_rate_limit_decisions_total 'decision="store_error"')"
    check "$t: rate limit decisions allowed $allowed, limited $limited, store_error $store_error"
    if [ "$allowed" -eq 0 ] || [ "$limited" -ne 0 ] || [ "$store_error" -ne 0 ]; then
        warn "$t: expected only allowed decisions; limited $limited, store_error $store_error (store_error means those requests were counted locally, not in Redis)"
    fi
done
if [ -n "${URL[redis]:-}" ]; then
    # The counters themselves expire two windows after their last use, which a long run
    # outlasts; the script calls redis-server counted say whether Redis did the counting.
    calls="$(redis_script_calls)"
    if [ "$calls" -eq 0 ]; then
        warn "redis: redis-server ran no rate-limit script: Redis was not used"
    else
        check "redis: redis-server ran the rate-limit script $calls time(s)"
    fi
fi
# The same for the cluster, summed over its three primaries (one limiter's keys share a slot, so
# one primary does the counting).
if [ -n "${URL[rcluster]:-}" ]; then
    per_node=""
    for port in "${CLUSTER_PORTS[@]}"; do per_node+="${per_node:+, }$(redis_calls 'eval|evalsha' "$port")"; done
    calls="$(redis_calls 'eval|evalsha' "${CLUSTER_PORTS[@]}")"
    if [ "$calls" -eq 0 ]; then
        warn "rcluster: no primary of the Redis Cluster ran a rate-limit script: the cluster was not used"
    else
        check "rcluster: the Redis Cluster's primaries ran the rate-limit script $calls time(s) (per node: $per_node)"
    fi
fi
if [ -n "${URL[full]:-}" ]; then
    served="$(metric full portico_http_requests_total 'route="bench"')"
    lines="$(wc -l <"$WORK/access.log" 2>/dev/null || echo 0)"
    dropped="$(metric full portico_access_log_dropped_total '')"
    check "full: /metrics counted $served requests on route bench; the access log file has $lines JSON lines ($dropped dropped)"
    python3 -c 'import json,sys; json.loads(open(sys.argv[1]).readline())' "$WORK/access.log" 2>/dev/null ||
        warn "full: the access log's first line is not JSON"
fi
# The gzip pair: both answer /json/16384 gzipped, and it inflates to the backend's 16 KiB.
for t in ngxgzip pgzip; do
    [ -n "${URL[$t]:-}" ] || continue
    got="$(curl -sS -H 'Accept-Encoding: gzip' -D "$WORK/$t.headers" "${URL[$t]}/json/16384" | gzip -dc | wc -c)" || true
    enc="$(tr -d '\r' <"$WORK/$t.headers" | awk -F': ' 'tolower($1) == "content-encoding" { print $2 }')"
    check "$t: GET /json/16384 with Accept-Encoding: gzip: content-encoding ${enc:-none}, ${got:-0} bytes once inflated"
    [ "$enc" = gzip ] && [ "${got:-0}" = 16384 ] || warn "$t: /json/16384 was not gzip inflating to 16384 bytes"
done
if [ -n "${URL[policy]:-}" ]; then
    cors="$(curl -sS -D - -o /dev/null -H "${AUTH_HEADER[policy]}" "${URL[policy]}/" | tr -d '\r' |
        awk -F': ' 'tolower($1) == "access-control-allow-origin" { print $2 }')"
    check "policy: GET / with an allowed Origin answered access-control-allow-origin: ${cors:-none}"
    [ "$cors" = "https://app.example.com" ] || warn "policy: the cors plugin did not answer the allowed origin"
fi
# Tracing: every request at 1.0 was told its trace, and no span was dropped on the way out.
for t in trace001 trace1; do
    [ -n "${URL[$t]:-}" ] || continue
    dropped="$(metric "$t" portico_tracing_spans_dropped_total '')"
    check "$t: sample_ratio ${SAMPLE_RATIO[$t]}: /metrics portico_tracing_spans_dropped_total $dropped"
    [ "$dropped" -eq 0 ] || warn "$t: $dropped spans dropped (the queue was full or the export failed)"
done
if [ -n "${URL[trace1]:-}" ] && [ -z "${WHY[trace1]:-}" ]; then
    curl -sS -D - -o /dev/null "${URL[trace1]}/" | grep -qi '^traceparent: 00-' ||
        warn "trace1: GET / at sample_ratio 1.0 came back without a traceparent"
fi
if [ -n "${URL[split]:-}" ]; then
    stable="$(metric split portico_split_requests_total 'upstream="stable"')"
    canary="$(metric split portico_split_requests_total 'upstream="canary"')"
    check "split: /metrics portico_split_requests_total stable $stable, canary $canary (one client address: all on one variant)"
    [ $((stable + canary)) -gt 0 ] || warn "split: no request went through the split"
fi
# The dashboard duo: every composed part and every GraphQL operation of the load complete (a
# request with a failed part or resolver is still a 200, so wrk's count cannot tell).
if [ -n "${URL[pcompose]:-}" ]; then
    ok="$(metric pcompose portico_compose_calls_total 'outcome="success"')"
    failed="$(metric pcompose portico_compose_calls_total 'outcome="failed"')"
    check "pcompose: /metrics portico_compose_calls_total success $ok, failed $failed"
    [ "$failed" -eq 0 ] && [ "$ok" -gt 0 ] || warn "pcompose: $failed composed parts failed during the load (of $((ok + failed)))"
fi
if [ -n "${URL[pgql]:-}" ]; then
    ok="$(metric pgql portico_graphql_operations_total 'result="ok"')"
    all="$(metric pgql portico_graphql_operations_total '')"
    check "pgql: /metrics portico_graphql_operations_total ok $ok of $all"
    [ "$ok" -eq "$all" ] && [ "$ok" -gt 0 ] || warn "pgql: $((all - ok)) of $all GraphQL operations were not ok (partial, error, invalid or refused)"
fi
[ -z "${URL[pcache]:-}" ] || check "pcache: /metrics portico_cache_lookups_total hit = $(metric pcache portico_cache_lookups_total 'result="hit"')"
[ -z "${URL[ngxcache]:-}" ] || cache_check ngxcache X-Cache-Status "after measuring"
[ -z "${URL[pcache]:-}" ] || cache_check pcache X-Cache "after measuring"
# The shared-tier hit: the tier answered the requests it served, and GET / is still a HIT. A miss
# now and then is the entry expiring (the next request refills it), and an error a GET that took
# longer than redis.timeout (25 ms) on the load core that redis-server shares with both wrks:
# either is answered from the backend, so up to 5% of them still leave a row of shared-tier hits.
if [ -n "${URL[pshared]:-}" ]; then
    served="$(metric pshared portico_http_requests_total 'route="bench"')"
    hit="$(metric pshared portico_cache_shared_operations_total 'result="hit"')"
    miss="$(metric pshared portico_cache_shared_operations_total 'result="miss"')"
    written="$(metric pshared portico_cache_shared_operations_total 'result="write"')"
    failed="$(metric pshared portico_cache_shared_operations_total 'result="error"')"
    answered="$(metric pshared portico_cache_lookups_total 'result="hit"')"
    check "pshared: /metrics portico_http_requests_total $served on route bench, portico_cache_lookups_total hit $answered; portico_cache_shared_operations_total hit $hit, miss $miss, write $written, error $failed"
    if [ $((hit * 100)) -lt $((served * 95)) ] || [ $((answered * 100)) -lt $((served * 95)) ]; then
        warn "pshared: of $served requests, $answered were answered as cache hits and $hit were shared-tier hits ($miss misses, $failed errors): the rows are not shared-tier hits"
    fi
    shared_check "after measuring"
fi
for t in "${ALL_TARGETS[@]}"; do
    [ -n "${URL[$t]:-}" ] || continue
    printf '%s\t%s\t%s\n' "$t" "${RSS_PID[$t]}" "$(status_kib "${RSS_PID[$t]}" VmHWM)" >>"$WORK/rss.tsv"
done

# --- report ------------------------------------------------------------------------------------
for sc in "${SCENARIOS[@]}"; do
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "${SC_DURATION[$sc]}" "${SC_ROUNDS[$sc]}" "${SC_CONNS[$sc]}" \
        "${SC_PATH[$sc]:-/}" "${SC_TARGETS[$sc]}" >>"$WORK/plan.tsv"
done
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta command "$COMMAND"
meta commit "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
meta quick "$QUICK"
meta cpus "$CPUS"
meta cpu_model "$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)"
meta kernel "$(uname -sr)"
meta memory "$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
meta loadavg "$LOADAVG"
meta pinned "$([ "${#PIN_PROXY[@]}" -gt 0 ] && echo 1 || echo 0)"
meta clk_tck "$CLK_TCK"
meta rate "$RATE"
meta pair_secs "$PAIR_SECS"
meta pair_rounds "$PAIR_ROUNDS"
meta idle_conns "$IDLE_CONNS"
meta rl "limit = $RL_LIMIT, window = \"$RL_WINDOW\", key = \"ip\" (nothing is refused)"
# The Redis work in the pairs that use Redis: redis-server's CPU ticks (all the cluster's nodes
# for rcluster) and the calls it ran, around those pairs' windows.
for pair in "${!STORE_TICKS[@]}"; do
    meta "store_ticks:$pair" "${STORE_TICKS[$pair]}"
    meta "store_calls:$pair" "${STORE_CALLS[$pair]}"
done
meta versions "$(wrk --version 2>&1 | awk 'NR == 1 { print $1, $2 }'); $("$OHA" --version 2>/dev/null || echo 'oha: none'); $(h2load --version 2>/dev/null | awk 'NR == 1 { print "h2load", $NF }'); $(openssl version | awk '{ print $1, $2 }'); $(nginx -v 2>&1 | sed 's/.*version: //'); $(haproxy -v 2>/dev/null | awk 'NR == 1 { print "HAProxy", $3 }'); $(redis-server --version 2>/dev/null | awk '{ print "redis", $3 }' | sed 's/v=//'); Pingora 0.9.1"
meta build_seconds "$((BUILT_AT - START_TIME))"
meta measure_seconds "$((SECONDS - BUILT_AT))"

python3 "$ROOT/loadtest/report.py" text "$WORK"
# A partial run never replaces a complete one. A build without the cache plugin is a known gap,
# reported in its row; anything else that was not measured is a failure.
UNMEASURED=0
while IFS=$'\t' read -r _ t why; do
    { [ "$t" = pcache ] || [ "$t" = pshared ]; } && [ "$CACHE_EXPECTED_GAP" -eq 1 ] && continue
    log "not measured: $t: $why"
    UNMEASURED=1
done <"$WORK/unmeasured.tsv"
if [ "$WRITE" -eq 1 ]; then
    if [ "$UNMEASURED" -eq 1 ]; then
        log "not writing loadtest/RESULTS.md: some targets were not measured"
    else
        python3 "$ROOT/loadtest/report.py" markdown "$WORK" "$RESULTS" "$CHART"
        log "wrote ${RESULTS#"$ROOT"/} and ${CHART#"$ROOT"/}"
    fi
else
    # The chart is still drawn (and thrown away), so --no-write runs check that code too.
    python3 "$ROOT/loadtest/report.py" markdown "$WORK" "$WORK/RESULTS.md" "$WORK/results.svg"
fi
log "elapsed: $((SECONDS - START_TIME))s ($((BUILT_AT - START_TIME))s building, $((SECONDS - BUILT_AT))s measuring)"
[ "$UNMEASURED" -eq 0 ] || exit 1
