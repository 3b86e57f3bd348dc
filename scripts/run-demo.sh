#!/usr/bin/env bash
# The demo behind `make run`: the demo backends on 127.0.0.1:3001-3004 in the background, then
# Portico in the foreground on conf/portico.toml (or $PORTICO_CONFIG). Ctrl-C stops both.
#
#   scripts/run-demo.sh          (after: cargo build --release -p portico -p portico-loadtest)
#   scripts/run-demo.sh --tour   print the tour of curl commands only, and start nothing
#
# tests/it/demo.rs runs the tour, line by line, against conf/portico.toml and the demo
# backends: a command changed here must still do what its comment says.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BACKEND_BIN="$TARGET_DIR/release/portico-backend"
PORTICO_BIN="$TARGET_DIR/release/portico"
CONFIG="${PORTICO_CONFIG:-conf/portico.toml}"
BACKENDS=(users=127.0.0.1:3001 orders=127.0.0.1:3002 products=127.0.0.1:3003 users-b=127.0.0.1:3004)
# What conf/portico.toml listens on; the tour below assumes these (the test sets others).
GATEWAY="${PORTICO_DEMO_GATEWAY:-127.0.0.1:8080}"
ADMIN="${PORTICO_DEMO_ADMIN:-127.0.0.1:9901}"
# conf/portico.toml's consumers.demo-partner key: published, for the demo only.
PARTNER_KEY=demo-partner-key-not-for-production

log() { printf 'run-demo: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

example() { printf '  %-66s # %s\n' "$1" "$2"; }
tour() {
    local token
    token="$(scripts/demo-token.sh 42)" || die "could not mint the demo JWT (scripts/demo-token.sh)"
    echo "Try, from another terminal. Routing and errors:"
    echo
    example "curl -i http://$GATEWAY/api/v1/users/42" "a user; x-backend names the target"
    example "curl http://$GATEWAY/api/v1/orders/user/42" "a user's orders"
    example "curl http://$GATEWAY/api/v1/products/7" "a product"
    example "curl -i http://$GATEWAY/nope" "404 no_route, application/problem+json"
    example "curl -i -X DELETE http://$GATEWAY/api/v1/orders" "405 method_not_allowed, Allow: GET, POST"
    example "curl -H 'X-Request-Id: demo-1' http://$GATEWAY/echo" "what the upstream got: X-Forwarded-*, traceparent"
    example "curl -i --path-as-is http://$GATEWAY/api/v1/users/../admin" "400 bad_request: dot segments are refused"
    echo
    echo "A JWT-protected route, with a token for user 42 that is valid for an hour"
    echo "(TOKEN=\$(scripts/demo-token.sh) mints a new one):"
    echo
    example "export TOKEN=$token" "HS256, signed with the demo's published secret"
    example "curl -i http://$GATEWAY/api/v1/me" "401 unauthorized, WWW-Authenticate: Bearer"
    example "curl -H \"Authorization: Bearer \$TOKEN\" http://$GATEWAY/api/v1/me" "200: the backend got x-user-id: 42"
    echo
    echo "An API-key route, a rate-limited route, a cached route and a composed dashboard:"
    echo
    example "curl -i http://$GATEWAY/partner/v1" "401 unauthorized: no API key"
    example "curl -H 'x-api-key: $PARTNER_KEY' http://$GATEWAY/partner/v1" "200: the backend got x-consumer: demo-partner"
    example "for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' http://$GATEWAY/api/v1/recommendations/42; done; echo" "5 a minute per client: 200 200 200 200 200 429"
    example "curl -si http://$GATEWAY/api/v1/products/9 | grep -i '^x-cache'" "MISS; run it again: HIT (cached for 30 s)"
    example "curl -s http://$GATEWAY/dashboard/42" "a user, their orders and recommendations in one call"
    echo
    echo "The status page: http://$ADMIN/ (open it in a browser; the demo sets no admin password)"
    echo
    example "curl http://$ADMIN/status" "routes, upstreams, target health"
    example "curl -s http://$ADMIN/metrics | grep ^portico_http_requests" "Prometheus metrics"
}

if [ "${1:-}" = --tour ]; then
    tour
    exit 0
fi
[ "$#" -eq 0 ] || die "usage: scripts/run-demo.sh [--tour]"

for bin in "$BACKEND_BIN" "$PORTICO_BIN"; do
    [ -x "$bin" ] || die "$bin is missing: run  make run  (or cargo build --release -p portico -p portico-loadtest)"
done
command -v curl >/dev/null || die "curl is required (scripts/ensure-deps.sh installs it)"

# A bad config is reported before anything starts.
if ! "$PORTICO_BIN" -t -c "$CONFIG" >/dev/null; then
    die "$CONFIG is not a valid config (problems above)"
fi

# Something already listening would answer in place of our processes: refuse to start.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=()
for spec in "${BACKENDS[@]}"; do ports+=("${spec##*:}"); done
[ -n "${PORTICO_CONFIG:-}" ] || ports+=("${GATEWAY##*:}" "${ADMIN##*:}")
taken=()
for port in "${ports[@]}"; do
    if port_in_use "$port"; then taken+=("$port"); fi
done
if [ "${#taken[@]}" -gt 0 ]; then
    die "port(s) ${taken[*]} on 127.0.0.1 already in use (another demo still running?); stop whatever listens there and try again"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/portico-demo.XXXXXX")"
BACKEND_PID=""
PORTICO_PID=""
cleanup() {
    local pid
    for pid in "$PORTICO_PID" "$BACKEND_PID"; do
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
# Ctrl-C stops Portico at once, as it would if run by hand; SIGTERM lets it drain. Either way
# the EXIT trap then stops the backend.
on_signal() {
    local sig="$1" code="$2"
    trap - INT TERM
    if [ -n "$PORTICO_PID" ]; then
        kill "-$sig" "$PORTICO_PID" 2>/dev/null || true
        wait "$PORTICO_PID" 2>/dev/null || true
        PORTICO_PID=""
    fi
    exit "$code"
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

"$BACKEND_BIN" "${BACKENDS[@]}" >"$WORK/backend.log" 2>&1 &
BACKEND_PID=$!

# Poll each backend's /health until it answers, the backend dies, or 15 seconds pass.
deadline=$((SECONDS + 15))
for spec in "${BACKENDS[@]}"; do
    addr="${spec#*=}"
    until curl -fsS -o /dev/null --max-time 1 "http://$addr/health" 2>/dev/null; do
        if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
            rc=0
            wait "$BACKEND_PID" || rc=$?
            BACKEND_PID=""
            cat "$WORK/backend.log" >&2
            die "portico-backend exited with status $rc before it was ready"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            cat "$WORK/backend.log" >&2
            die "portico-backend did not answer http://$addr/health within 15s"
        fi
        sleep 0.05
    done
done
log "demo backends up: ${BACKENDS[*]} (pid $BACKEND_PID)"

echo
echo "Portico is starting on http://$GATEWAY (admin on http://$ADMIN) with $CONFIG."
tour
echo
echo "Ctrl-C stops Portico and the backends. Portico's log and access log (JSON lines) follow."
echo

# Portico runs as a child we wait for, so a signal to this script is handled at once.
"$PORTICO_BIN" -c "$CONFIG" &
PORTICO_PID=$!
rc=0
wait "$PORTICO_PID" || rc=$?
PORTICO_PID=""
exit "$rc"
