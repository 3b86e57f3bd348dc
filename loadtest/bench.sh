#!/usr/bin/env bash
# The first benchmark: wrk against portico-backend directly, then through Portico, same route.
#
#   bash loadtest/bench.sh [--quick]      (what `make bench` runs)
#
# Portico is pinned to CPU 0; the backend and wrk share CPU 1, so the gateway's core does nothing
# but proxy and its CPU time per request is a clean number. Rounds alternate direct/Portico so
# drift (thermal, noisy neighbours) hits both targets alike; the table shows medians.
set -euo pipefail

DURATION=10s
ROUNDS=2
CONNECTIONS=64
for arg in "$@"; do
    case "$arg" in
        --quick) DURATION=3s; ROUNDS=1 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $arg (only --quick)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BACKEND_BIN="$TARGET_DIR/release/portico-backend"
PORTICO_BIN="$TARGET_DIR/release/portico"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    # The package index is only refreshed when needed: it is slow and usually already fresh.
    $SUDO apt-get install -y wrk || { $SUDO apt-get update && $SUDO apt-get install -y wrk; }
fi
for tool in curl python3 awk; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

# One core each for the gateway and for backend+wrk; a 1-core machine cannot separate them.
CPUS="$(nproc)"
if [ "$CPUS" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_GATEWAY=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
else
    log "warning: ${CPUS} CPU(s) or no taskset: running unpinned, numbers will be noisy"
    PIN_GATEWAY=()
    PIN_LOAD=()
fi

# --- build -----------------------------------------------------------------------------------
log "building (release)"
cargo build --release -p portico-loadtest
GATEWAY_OK=1
# Built separately so a gateway that does not compile still leaves the direct half runnable;
# a failed build must never fall back to a stale binary.
if ! cargo build --release -p portico; then
    log "error: the portico gateway does not build; the Portico half will be skipped"
    GATEWAY_OK=0
    GATEWAY_WHY="the gateway does not build (see the cargo error above)"
fi

# --- processes, cleaned up on any exit ---------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/portico-bench.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
# Turn Ctrl-C / kill into a normal exit so the EXIT trap always runs.
trap 'exit 130' INT TERM

# Polls until a command succeeds or the deadline passes; a fixed sleep would be slow or flaky.
# On failure it shows the process's output and returns 1, leaving the decision to the caller.
wait_until() {
    local what="$1" pid="$2" logfile="$3"; shift 3
    local deadline=$((SECONDS + 30)) rc=0
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || rc=$?
            log "$what exited early with status $rc; its output:"
            if [ -s "$logfile" ]; then cat "$logfile" >&2; else log "  (no output)"; fi
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$what not ready after 30s; its output:"; cat "$logfile" >&2
            return 1
        fi
        sleep 0.05
    done
}

# Free ports from the kernel: bind :0 and report. All in one process so they are distinct.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# The backend binds :0 itself (no race at all) and prints the address it got.
"${PIN_LOAD[@]}" "$BACKEND_BIN" backend=127.0.0.1:0 >"$WORK/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_until "portico-backend" "$BACKEND_PID" "$WORK/backend.log" \
    grep -q 'listening on' "$WORK/backend.log" || exit 1
BACKEND_ADDR="$(awk '/listening on/ {print $NF; exit}' "$WORK/backend.log")"
wait_until "portico-backend" "$BACKEND_PID" "$WORK/backend.log" \
    curl -fsS "http://$BACKEND_ADDR/ping" || exit 1
DIRECT_URL="http://$BACKEND_ADDR/"
log "backend on $BACKEND_ADDR (pid $BACKEND_PID)"

if [ "$GATEWAY_OK" -eq 1 ]; then
    read -r GATEWAY_PORT ADMIN_PORT < <(free_ports 2) || true
    [ -n "${ADMIN_PORT:-}" ] || die "could not get free ports from python3"
    cat >"$WORK/portico.toml" <<EOF
[server]
listen = ["127.0.0.1:$GATEWAY_PORT"]
threads = 1
access_log = "off"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[upstreams.backend]
targets = ["$BACKEND_ADDR"]
connect_timeout = "1s"
read_timeout = "10s"
idle_timeout = "60s"

[[routes]]
name = "bench"
path = "/"
upstream = "backend"
EOF
    "${PIN_GATEWAY[@]}" "$PORTICO_BIN" -c "$WORK/portico.toml" >"$WORK/portico.log" 2>&1 &
    PORTICO_PID=$!
    PIDS+=("$PORTICO_PID")
    # A gateway that will not start is reported like one that will not build: the direct half
    # still runs, and the script fails at the end.
    if wait_until "portico" "$PORTICO_PID" "$WORK/portico.log" \
        curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz"; then
        PORTICO_URL="http://127.0.0.1:$GATEWAY_PORT/"
        # Benchmarking error pages would measure the wrong thing: check the route answers first.
        body="$(curl -fsS "$PORTICO_URL")" || die "GET $PORTICO_URL through Portico failed"
        [ "$body" = "ok" ] || die "GET $PORTICO_URL through Portico answered '$body', not 'ok'"
        log "portico on 127.0.0.1:$GATEWAY_PORT, admin $ADMIN_PORT (pid $PORTICO_PID)"
    else
        log "error: portico did not become ready; the Portico half will be skipped"
        GATEWAY_OK=0
        GATEWAY_WHY="portico did not start (see its output above)"
    fi
fi

# --- measuring ---------------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
# utime+stime in clock ticks, for the whole process (all threads). The command name in field 2
# may hold spaces, so fields are counted after its closing parenthesis.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# Runs wrk once and prints "rps p50_us p90_us p99_us requests" for that run.
run_wrk() {
    local url="$1" duration="$2" out
    out="$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"$duration" --latency "$url")"
    printf '%s\n' "$out" >>"$WORK/wrk.log"
    # Errors make the throughput meaningless (fast failures look like speed): say so loudly.
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        log "warning: $url: $(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd';')"
    fi
    awk '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return v * 1000
            if (v ~ /s$/)  return v * 1000000
            return v + 0
        }
        $1 == "50%" { p50 = us($2) }
        $1 == "90%" { p90 = us($2) }
        $1 == "99%" { p99 = us($2) }
        / requests in / { requests = $1 }
        /^Requests\/sec:/ { rps = $2 }
        END { printf "%.0f %.0f %.0f %.0f %d\n", rps, p50, p90, p99, requests }
    ' <<<"$out"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

fmt_latency() {
    awk -v us="$1" 'BEGIN { if (us >= 1000) printf "%.2fms", us / 1000; else printf "%dus", us }'
}

log "warm-up"
run_wrk "$DIRECT_URL" 1s >/dev/null
if [ "$GATEWAY_OK" -eq 1 ]; then
    run_wrk "$PORTICO_URL" 1s >/dev/null
fi

: >"$WORK/direct.txt"
: >"$WORK/portico.txt"
PORTICO_TICKS=0
for round in $(seq 1 "$ROUNDS"); do
    log "round $round/$ROUNDS: direct ($DURATION)"
    run_wrk "$DIRECT_URL" "$DURATION" >>"$WORK/direct.txt"
    if [ "$GATEWAY_OK" -eq 1 ]; then
        log "round $round/$ROUNDS: through Portico ($DURATION)"
        # CPU is read around Portico's own runs only, so its idle time is not charged.
        before="$(cpu_ticks "$PORTICO_PID")"
        run_wrk "$PORTICO_URL" "$DURATION" >>"$WORK/portico.txt"
        after="$(cpu_ticks "$PORTICO_PID")"
        PORTICO_TICKS=$((PORTICO_TICKS + after - before))
    fi
done

# --- report ------------------------------------------------------------------------------------
row() {
    local name="$1" file="$2" cpu="$3"
    printf '%-10s %12.0f %10s %10s %10s %14s\n' "$name" \
        "$(cut -d' ' -f1 "$file" | median)" \
        "$(fmt_latency "$(cut -d' ' -f2 "$file" | median)")" \
        "$(fmt_latency "$(cut -d' ' -f3 "$file" | median)")" \
        "$(fmt_latency "$(cut -d' ' -f4 "$file" | median)")" \
        "$cpu"
}

echo
echo "GET / , wrk -t1 -c$CONNECTIONS -d$DURATION, $ROUNDS round(s), medians; $CPUS CPUs"
printf '%-10s %12s %10s %10s %10s %14s\n' target "requests/s" p50 p90 p99 "cpu us/req"
row direct "$WORK/direct.txt" "-"
if [ "$GATEWAY_OK" -eq 1 ]; then
    requests="$(awk '{ n += $5 } END { print n }' "$WORK/portico.txt")"
    cpu_us="$(awk -v t="$PORTICO_TICKS" -v hz="$CLK_TCK" -v n="$requests" \
        'BEGIN { if (n > 0) printf "%.2f", t / hz * 1000000 / n; else print "n/a" }')"
    row portico "$WORK/portico.txt" "$cpu_us"
    echo "(cpu us/req: Portico's utime+stime over its runs / requests it served; ${CLK_TCK} ticks/s)"
else
    printf '%-10s %s\n' portico "not measured: $GATEWAY_WHY"
    exit 1
fi
