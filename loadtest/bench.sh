#!/usr/bin/env bash
# wrk against portico-backend directly, then through Portico on the same route (GET /), three
# ways: with no plugin ("unlimited"), with a rate_limit plugin counting in this process
# (store = "local"), and with one counting through Redis (store = "redis", against a
# redis-server this script starts). The limit is so high that nothing is refused, so the
# difference from "unlimited" is what counting costs. Then writes loadtest/RESULTS.md.
#
#   bash loadtest/bench.sh [--quick] [--no-write]      (what `make bench` runs)
#
#   --quick      one short round: checks the script works, the numbers are noisy
#   --no-write   leave loadtest/RESULTS.md alone
#
# Portico is pinned to CPU 0 with one worker thread; the backend, redis-server and wrk share
# CPU 1, so the gateway's core does nothing but proxy and its CPU time per request is a clean
# number. Each configuration is its own Portico process (idle while the others are measured).
# Rounds interleave the targets, in a rotating order, so drift (thermal, noisy neighbours) hits
# them all alike; the tables show medians.
set -euo pipefail

DURATION=10s
ROUNDS=5
CONNECTIONS=64
QUICK=0
WRITE=1
for arg in "$@"; do
    case "$arg" in
        --quick) DURATION=3s; ROUNDS=1; QUICK=1 ;;
        --no-write) WRITE=0 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $arg (only --quick, --no-write)" >&2; exit 2 ;;
    esac
done
COMMAND="bash loadtest/bench.sh${*:+ $*}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BACKEND_BIN="$TARGET_DIR/release/portico-backend"
PORTICO_BIN="$TARGET_DIR/release/portico"
RESULTS="$ROOT/loadtest/RESULTS.md"

# The rate limit every limited scenario uses: nothing is ever refused.
RL_LIMIT=1000000000
RL_WINDOW=1m

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# The package index is only refreshed when needed: it is slow and usually already fresh.
apt_install() {
    $SUDO apt-get install -y "$@" || { $SUDO apt-get update && $SUDO apt-get install -y "$@"; }
}
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt_install wrk
fi
for tool in curl python3 awk; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
REDIS_OK=1
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing redis-server"
    apt_install redis-server || true
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        log "error: redis-server could not be installed; the Redis scenario will be skipped"
        REDIS_OK=0
        REDIS_WHY="redis-server is not installed and apt could not install it"
    fi
fi
# A system redis-server may start itself as a service when installed; this script never uses
# it (it starts its own on a free port) and leaves it alone.

# One core for the gateway, one for backend+wrk+redis; a 1-core machine cannot separate them.
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
    log "error: the portico gateway does not build; the Portico scenarios will be skipped"
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
log "backend on $BACKEND_ADDR (pid $BACKEND_PID)"

# Per target: its URL, the process whose CPU is charged, and why it was not measured.
SCENARIOS=(unlimited local redis)
declare -A URL PID WHY TICKS LABEL
LABEL=([direct]="direct" [unlimited]="portico" [local]="portico + rate_limit local"
       [redis]="portico + rate_limit redis")
URL[direct]="http://$BACKEND_ADDR/"

read -r P_UNLIMITED A_UNLIMITED P_LOCAL A_LOCAL P_REDIS A_REDIS REDIS_PORT < <(free_ports 7) || true
[ -n "${REDIS_PORT:-}" ] || die "could not get free ports from python3"
declare -A GW_PORT=([unlimited]="$P_UNLIMITED" [local]="$P_LOCAL" [redis]="$P_REDIS")
declare -A ADMIN_PORT=([unlimited]="$A_UNLIMITED" [local]="$A_LOCAL" [redis]="$A_REDIS")

# redis-server for the Redis scenario: in memory only, on the load core, stopped on exit.
if [ "$GATEWAY_OK" -eq 1 ] && [ "$REDIS_OK" -eq 1 ]; then
    "${PIN_LOAD[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
        --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    if wait_until "redis-server" "$REDIS_PID" "$WORK/redis.log" \
        sh -c "redis-cli -p $REDIS_PORT ping | grep -q PONG"; then
        log "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"
    else
        REDIS_OK=0
        REDIS_WHY="redis-server did not start (see its output above)"
    fi
fi

# One config per scenario: the same route, with or without a rate limit.
write_config() {
    local name="$1"
    cat <<EOF
[server]
listen = ["127.0.0.1:${GW_PORT[$name]}"]
threads = 1
access_log = "off"

[admin]
listen = "127.0.0.1:${ADMIN_PORT[$name]}"

[upstreams.backend]
targets = ["$BACKEND_ADDR"]
connect_timeout = "1s"
read_timeout = "10s"
idle_timeout = "60s"
EOF
    if [ "$name" = redis ]; then
        printf '\n[redis]\nurl = "redis://127.0.0.1:%s/0"\ntimeout = "25ms"\n' "$REDIS_PORT"
    fi
    if [ "$name" != unlimited ]; then
        printf '\n[plugins.limit]\nkind = "rate_limit"\nlimit = %s\nwindow = "%s"\nkey = "ip"\nstore = "%s"\n' \
            "$RL_LIMIT" "$RL_WINDOW" "$name"
    fi
    printf '\n[[routes]]\nname = "bench"\npath = "/"\nupstream = "backend"\n'
    if [ "$name" != unlimited ]; then
        printf 'plugins = ["limit"]\n'
    fi
}

# Starts scenario $1's Portico and checks its route answers as it should; on failure, sets WHY.
start_portico() {
    local name="$1" url head body
    write_config "$name" >"$WORK/portico-$name.toml"
    "${PIN_GATEWAY[@]}" "$PORTICO_BIN" -c "$WORK/portico-$name.toml" >"$WORK/portico-$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    # A gateway that will not start is reported like one that will not build: the other
    # scenarios still run, and the script fails at the end.
    if ! wait_until "portico ($name)" "${PID[$name]}" "$WORK/portico-$name.log" \
        curl -fsS "http://127.0.0.1:${ADMIN_PORT[$name]}/readyz"; then
        WHY[$name]="portico did not start (see its output above)"
        return
    fi
    url="http://127.0.0.1:${GW_PORT[$name]}/"
    # Benchmarking error pages would measure the wrong thing: check the route answers first.
    head="$(curl -sS -D - -o "$WORK/body" "$url")" || { WHY[$name]="GET $url failed"; return; }
    body="$(cat "$WORK/body")"
    if [ "$body" != "ok" ]; then
        WHY[$name]="GET $url answered '$body', not 'ok'"
        return
    fi
    # ...and that the limited ones really are limited.
    if [ "$name" != unlimited ] && ! grep -qi "^ratelimit-limit: $RL_LIMIT" <<<"$head"; then
        WHY[$name]="GET $url answered without RateLimit-Limit: $RL_LIMIT"
        return
    fi
    URL[$name]="$url"
    TICKS[$name]=0
    log "portico ($name) on 127.0.0.1:${GW_PORT[$name]}, admin ${ADMIN_PORT[$name]} (pid ${PID[$name]})"
}

for name in "${SCENARIOS[@]}"; do
    if [ "$GATEWAY_OK" -eq 0 ]; then
        WHY[$name]="$GATEWAY_WHY"
    elif [ "$name" = redis ] && [ "$REDIS_OK" -eq 0 ]; then
        WHY[$name]="$REDIS_WHY"
    else
        start_portico "$name"
    fi
done

TARGETS=(direct)
for name in "${SCENARIOS[@]}"; do
    [ -n "${URL[$name]:-}" ] && TARGETS+=("$name")
done

# --- measuring ---------------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
# utime+stime in clock ticks, for the whole process (all threads). The command name in field 2
# may hold spaces, so fields are counted after its closing parenthesis.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

: >"$WORK/warnings.txt"
# Every process the numbers depend on must still be running: one that died (or was killed by
# something else on the machine) turns the runs after it into error pages. Dies if one is gone.
all_alive() {
    local what pid rc
    for what in backend redis unlimited local redis-gateway; do
        case "$what" in
            backend) pid="$BACKEND_PID" ;;
            redis) pid="${REDIS_PID:-}"; [ -n "${URL[redis]:-}" ] || pid="" ;;
            redis-gateway) pid="${PID[redis]:-}"; [ -n "${URL[redis]:-}" ] || pid="" ;;
            *) pid="${PID[$what]:-}"; [ -n "${URL[$what]:-}" ] || pid="" ;;
        esac
        [ -n "$pid" ] || continue
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" 2>/dev/null || rc=$?
            log "error: $what (pid $pid) is gone, exit status $rc$([ "$rc" -gt 128 ] && echo " (signal $((rc - 128)))")"
            die "a process the benchmark needs stopped during the run; no results"
        fi
    done
}

# Runs wrk once and prints "rps p50_us p90_us p99_us requests" for that run.
run_wrk() {
    local name="$1" duration="$2" out problems
    if ! out="$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"$duration" --latency "${URL[$name]}")"; then
        all_alive
        die "wrk against ${LABEL[$name]} (${URL[$name]}) failed"
    fi
    printf '%s\n' "$out" >>"$WORK/wrk.log"
    # Errors make the throughput meaningless (fast failures look like speed): say so loudly.
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        problems="$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd';')"
        log "warning: ${LABEL[$name]}: $problems"
        echo "${LABEL[$name]} ($duration run): $problems" >>"$WORK/warnings.txt"
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

# The redis-server's script calls, to show how many requests one round trip serves.
redis_script_calls() {
    { redis-cli -p "$REDIS_PORT" info commandstats 2>/dev/null || true; } | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_(eval|evalsha):/ { n += $3 } END { print n + 0 }'
}

# Other work on the machine skews everything: note how busy it was when measuring began.
LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
log "warm-up (load average $LOADAVG)"
for name in "${TARGETS[@]}"; do
    run_wrk "$name" 1s >/dev/null
    all_alive
done

for name in "${TARGETS[@]}"; do
    : >"$WORK/$name.txt"
done
REDIS_TICKS=0
REDIS_CALLS=0
for round in $(seq 1 "$ROUNDS"); do
    # Each round starts one target later, so no target always runs first or right after another.
    n="${#TARGETS[@]}"
    for i in $(seq 0 $((n - 1))); do
        name="${TARGETS[$(((i + round - 1) % n))]}"
        log "round $round/$ROUNDS: ${LABEL[$name]} ($DURATION)"
        if [ "$name" = direct ]; then
            run_wrk "$name" "$DURATION" >>"$WORK/$name.txt"
            all_alive
            continue
        fi
        # CPU is read around each gateway's own runs only, so its idle time is not charged.
        before="$(cpu_ticks "${PID[$name]}")"
        if [ "$name" = redis ]; then
            redis_before="$(cpu_ticks "$REDIS_PID")"
            calls_before="$(redis_script_calls)"
        fi
        run_wrk "$name" "$DURATION" >>"$WORK/$name.txt"
        after="$(cpu_ticks "${PID[$name]}")"
        TICKS[$name]=$((TICKS[$name] + after - before))
        if [ "$name" = redis ]; then
            REDIS_TICKS=$((REDIS_TICKS + $(cpu_ticks "$REDIS_PID") - redis_before))
            REDIS_CALLS=$((REDIS_CALLS + $(redis_script_calls) - calls_before))
        fi
        all_alive
    done
done

# --- checks: the limits counted, and the Redis one really went to Redis -------------------------
# A decision count from a gateway's /metrics (0 when the series does not exist yet).
decisions() {
    { curl -fsS "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" 2>/dev/null || true; } |
        awk -v d="decision=\"$2\"" 'index($0, "portico_rate_limit_decisions_total{") == 1 && index($0, d) { n += $NF }
            END { printf "%d\n", n }'
}
: >"$WORK/checks.txt"
for name in local redis; do
    [ -n "${URL[$name]:-}" ] || continue
    allowed="$(decisions "$name" allowed)"
    limited="$(decisions "$name" limited)"
    store_error="$(decisions "$name" store_error)"
    echo "${LABEL[$name]}: decisions allowed $allowed, limited $limited, store_error $store_error" >>"$WORK/checks.txt"
    if [ "$allowed" -eq 0 ] || [ "$limited" -ne 0 ] || [ "$store_error" -ne 0 ]; then
        log "warning: ${LABEL[$name]}: expected only allowed decisions, got allowed $allowed, limited $limited, store_error $store_error"
        echo "${LABEL[$name]}: expected only allowed decisions; limited $limited, store_error $store_error (store_error means those requests were counted locally, not in Redis)" >>"$WORK/warnings.txt"
    fi
done
if [ -n "${URL[redis]:-}" ]; then
    redis_keys="$(redis-cli -p "$REDIS_PORT" --scan --pattern 'portico:rl:*' 2>/dev/null | tr -d '\r' | sort)" || true
    if [ -z "$redis_keys" ]; then
        log "warning: no portico:rl:* keys in redis-server: the Redis scenario did not use Redis"
        echo "${LABEL[redis]}: no portico:rl:* keys in redis-server after the run: Redis was not used" >>"$WORK/warnings.txt"
    else
        while read -r key; do
            echo "redis-server holds $key = $(redis-cli -p "$REDIS_PORT" get "$key" | tr -d '\r')" >>"$WORK/checks.txt"
        done <<<"$redis_keys"
    fi
fi

# --- report ------------------------------------------------------------------------------------
rps_of() { cut -d' ' -f1 "$WORK/$1.txt" | median; }
pct_of_unlimited() {
    awk -v a="$(rps_of "$1")" -v b="$(rps_of unlimited)" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }'
}
cpu_per_req() {
    local requests
    requests="$(awk '{ n += $5 } END { print n + 0 }' "$WORK/$1.txt")"
    awk -v t="$2" -v hz="$CLK_TCK" -v n="$requests" \
        'BEGIN { if (n > 0) printf "%.2f", t / hz * 1000000 / n; else print "n/a" }'
}

# Prints the table, as aligned text ("text") or as a Markdown table ("md").
table() {
    local format="$1" name cpu pct
    if [ "$format" = md ]; then
        echo "| target | requests/s | p50 | p90 | p99 | Portico CPU µs/req | throughput vs unlimited |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
    else
        printf '%-28s %12s %10s %10s %10s %11s %14s\n' target "requests/s" p50 p90 p99 "cpu us/req" "vs unlimited"
    fi
    for name in direct "${SCENARIOS[@]}"; do
        if [ -z "${URL[$name]:-}" ]; then
            if [ "$format" = md ]; then
                echo "| ${LABEL[$name]} | not measured: ${WHY[$name]} ||||||"
            else
                printf '%-28s %s\n' "${LABEL[$name]}" "not measured: ${WHY[$name]}"
            fi
            continue
        fi
        cpu="-"; pct="-"
        if [ "$name" != direct ]; then
            cpu="$(cpu_per_req "$name" "${TICKS[$name]}")"
            [ -n "${URL[unlimited]:-}" ] && pct="$(pct_of_unlimited "$name")"
        fi
        set -- "$(rps_of "$name")" \
            "$(fmt_latency "$(cut -d' ' -f2 "$WORK/$name.txt" | median)")" \
            "$(fmt_latency "$(cut -d' ' -f3 "$WORK/$name.txt" | median)")" \
            "$(fmt_latency "$(cut -d' ' -f4 "$WORK/$name.txt" | median)")"
        if [ "$format" = md ]; then
            printf '| %s | %.0f | %s | %s | %s | %s | %s |\n' "${LABEL[$name]}" "$1" "$2" "$3" "$4" "$cpu" "$pct"
        else
            printf '%-28s %12.0f %10s %10s %10s %11s %14s\n' "${LABEL[$name]}" "$1" "$2" "$3" "$4" "$cpu" "$pct"
        fi
    done
}

# The issue's targets: what each rate-limited scenario may cost in throughput at 64 connections.
declare -A TARGET_COST=([local]=5 [redis]=15)
targets() {
    local format="$1" name cost verdict
    for name in local redis; do
        if [ -z "${URL[$name]:-}" ] || [ -z "${URL[unlimited]:-}" ]; then
            cost="not measured"; verdict="unknown"
        else
            cost="$(awk -v a="$(rps_of "$name")" -v b="$(rps_of unlimited)" 'BEGIN { printf "%.1f%%", 100 - 100 * a / b }')"
            verdict="$(awk -v a="$(rps_of "$name")" -v b="$(rps_of unlimited)" -v t="${TARGET_COST[$name]}" \
                'BEGIN { print (100 - 100 * a / b <= t) ? "met" : "NOT met" }')"
            [ "$QUICK" -eq 0 ] || verdict="$verdict (a --quick run decides nothing)"
        fi
        if [ "$format" = md ]; then
            echo "| ${LABEL[$name]} | costs ≤ ${TARGET_COST[$name]}% of unlimited throughput | costs $cost | $verdict |"
        else
            printf '%-28s costs %s of unlimited throughput (target <= %s%%): %s\n' \
                "${LABEL[$name]}" "$cost" "${TARGET_COST[$name]}" "$verdict"
        fi
    done
}

redis_note() {
    [ -n "${URL[redis]:-}" ] || return 0
    local requests
    requests="$(awk '{ n += $5 } END { print n + 0 }' "$WORK/redis.txt")"
    awk -v t="$REDIS_TICKS" -v hz="$CLK_TCK" -v n="$requests" -v calls="$REDIS_CALLS" 'BEGIN {
        if (t > 0 && n > 0) cpu = sprintf("%.2f us", t / hz * 1000000 / n)
        else if (n > 0) cpu = sprintf("under %.2f us (less than one clock tick in all)", 1 / hz * 1000000 / n)
        else cpu = "n/a"
        printf "redis-server (on the load core, not in the table): %s CPU per request; ", cpu
        if (calls > 0) printf "%d script calls for %d requests, one round trip per %.0f requests\n", calls, n, n / calls
        else printf "no script calls counted\n"
    }'
}

LOAD_LINE="GET /, wrk -t1 -c$CONNECTIONS -d$DURATION, $ROUNDS round(s) interleaved, medians; $CPUS CPUs"
LIMIT_LINE="rate_limit: limit = $RL_LIMIT, window = \"$RL_WINDOW\", key = \"ip\" (nothing is refused)"
CPU_LINE="cpu us/req: Portico's utime+stime over its own runs / requests it served; ${CLK_TCK} ticks/s"

echo
echo "$LOAD_LINE"
echo "$LIMIT_LINE"
table text
echo "($CPU_LINE)"
redis_note
if [ -n "${URL[local]:-}${URL[redis]:-}" ]; then
    echo
    echo "Targets (issue \"rate limiting speed\"):"
    targets text
fi
if [ -s "$WORK/checks.txt" ]; then
    echo
    echo "Checks:"
    sed 's/^/  /' "$WORK/checks.txt"
fi
if [ -s "$WORK/warnings.txt" ]; then
    echo
    echo "WARNINGS (the numbers above may be meaningless):"
    sed 's/^/  /' "$WORK/warnings.txt"
fi

# --- loadtest/RESULTS.md -----------------------------------------------------------------------
write_results() {
    local cpu_model kernel commit
    cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)"
    kernel="$(uname -sr)"
    commit="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    {
        echo "# Benchmark results"
        echo
        echo "Written by [\`bench.sh\`](bench.sh) from its last run; run it again to replace this"
        echo "file (\`--no-write\` leaves it alone). What is measured and how is described at the"
        echo "top of the script."
        echo
        echo "- **Date:** $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- **Command:** \`$COMMAND\` (at commit \`$commit\`)"
        echo "- **Machine:** $CPUS CPUs (\`nproc\`), ${cpu_model:-unknown CPU model}, kernel $kernel;"
        echo "  load average $LOADAVG (1, 5, 15 min) when measuring began"
        echo "- **Load:** $LOAD_LINE."
        if [ "${#PIN_GATEWAY[@]}" -gt 0 ]; then
            echo "  Portico (one worker thread) is pinned to CPU 0; portico-backend, redis-server and wrk share CPU 1."
        else
            echo "  Not pinned (fewer than 2 CPUs or no taskset): the numbers are noisy."
        fi
        echo "- **Limit:** $LIMIT_LINE; the Redis one uses \`[redis] timeout = \"25ms\"\` and the default \`on_store_error\`."
        if [ "$QUICK" -eq 1 ]; then
            echo
            echo "**This was a \`--quick\` run** (one short round): it shows the script works, not what"
            echo "rate limiting costs. Run \`bash loadtest/bench.sh\` for numbers to compare."
        fi
        echo
        echo "## Throughput and latency"
        echo
        table md
        echo
        echo "$CPU_LINE."
        [ -z "${URL[redis]:-}" ] || echo "$(redis_note)."
        echo
        echo "## Targets (issue \"rate limiting speed\")"
        echo
        echo "At $CONNECTIONS connections, relative to the same route without a rate limit:"
        echo
        echo "| scenario | target | measured | |"
        echo "|---|---|---|---|"
        targets md
        if [ -s "$WORK/checks.txt" ]; then
            echo
            echo "## Checks"
            echo
            sed 's/^/- /' "$WORK/checks.txt"
        fi
        if [ -s "$WORK/warnings.txt" ]; then
            echo
            echo "## Warnings"
            echo
            echo "The numbers above may be meaningless:"
            echo
            sed 's/^/- /' "$WORK/warnings.txt"
        fi
    } >"$RESULTS.tmp"
    mv "$RESULTS.tmp" "$RESULTS"
    log "wrote ${RESULTS#"$ROOT"/}"
}

UNMEASURED=0
for name in "${SCENARIOS[@]}"; do
    [ -n "${URL[$name]:-}" ] || UNMEASURED=1
done
if [ "$WRITE" -eq 1 ]; then
    # A partial run never replaces a complete one.
    if [ "$UNMEASURED" -eq 1 ]; then
        log "not writing loadtest/RESULTS.md: some scenarios were not measured"
    else
        write_results
    fi
fi
[ "$UNMEASURED" -eq 0 ] || exit 1
