# Helpers for bench.sh: logging, installing tools, starting and stopping processes, reading
# /proc, and parsing the load generators' output. Sourced, not run.
# shellcheck shell=bash

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# The package index is only refreshed when needed: it is slow and usually already fresh.
apt_install() {
    $SUDO apt-get install -y "$@" || { $SUDO apt-get update && $SUDO apt-get install -y "$@"; }
}

# Installs Debian package $2 when command $1 is missing; returns 1 if it is still missing.
ensure_tool() {
    local tool="$1" package="$2"
    command -v "$tool" >/dev/null && return 0
    log "installing $package"
    apt_install "$package" >&2 || true
    command -v "$tool" >/dev/null
}

# --- processes -------------------------------------------------------------------------------
# Every process this script starts, so cleanup stops exactly those (by PID, nothing else).
PIDS=()

# start_bg LOGFILE COMMAND...: runs COMMAND in the background with its output in LOGFILE and
# sets STARTED_PID. The pinning wrapper (taskset) execs, so the PID is the program's own.
start_bg() {
    local logfile="$1"; shift
    "$@" >"$logfile" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# SIGTERM to everything started, then poll: a process that has not gone after 10 s gets SIGKILL,
# so a stuck peer cannot hang the script. Only our own PIDs are ever signalled.
stop_all() {
    local pid deadline=$((SECONDS + 10)) left
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    while :; do
        left=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && left=1
        done
        [ "$left" -eq 1 ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for pid in "${PIDS[@]}"; do
                kill -0 "$pid" 2>/dev/null && { log "pid $pid ignored SIGTERM for 10s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
            done
            break
        fi
        sleep 0.05
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

# Polls until a command succeeds or 30 s pass; a fixed sleep would be slow or flaky.
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

# render TEMPLATE OUT KEY=VALUE...: copies TEMPLATE to OUT with every @KEY@ replaced. A
# placeholder left over is an error, so a config never runs with a literal @PORT@ in it.
render() {
    python3 - "$@" <<'EOF'
import re, sys
template, out, *pairs = sys.argv[1:]
values = dict(p.split("=", 1) for p in pairs)
text = open(template).read()
for key, value in values.items():
    text = text.replace("@" + key + "@", value)
left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
if left:
    sys.exit(f"render {template}: no value for {', '.join(left)}")
open(out, "w").write(text)
EOF
}

# --- /proc -----------------------------------------------------------------------------------
# shellcheck disable=SC2034  # used by bench.sh
CLK_TCK="$(getconf CLK_TCK)"

# The PIDs of a process's children (nginx's worker, cache manager and loader).
children_of() {
    cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$' || true
}

# utime+stime in clock ticks of a process and its children, all threads. The command name in
# field 2 may hold spaces, so fields are counted after its closing parenthesis.
cpu_ticks() {
    local pid total=0 t
    for pid in "$1" $(children_of "$1"); do
        t="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null)" || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# A line of /proc/PID/status in KiB, e.g. status_kib PID VmHWM.
status_kib() {
    awk -v k="$2:" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# The child of $1 whose command line contains $2 ("worker process" for nginx), polled for
# because the master forks its worker only after it has started.
child_matching() {
    local parent="$1" pattern="$2" deadline=$((SECONDS + 10)) pid
    while [ "$SECONDS" -lt "$deadline" ]; do
        for pid in $(children_of "$parent"); do
            if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$pattern"; then
                echo "$pid"
                return 0
            fi
        done
        sleep 0.05
    done
    return 1
}

# --- load generators' output -> "rps p50_us p99_us p999_us requests errors" ----------------------
# wrk --latency prints 50/75/90/99%: it has no p99.9, which is printed as "-".
parse_wrk() {
    awk '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return v * 1000
            if (v ~ /s$/)  return v * 1000000
            return v + 0
        }
        $1 == "50%" { p50 = us($2) }
        $1 == "99%" { p99 = us($2) }
        / requests in / { requests = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { errors += $NF }
        /Socket errors:/ { gsub(/,/, ""); errors += $4 + $6 + $8 + $10 }
        END { printf "%.0f %.0f %.0f - %d %d\n", rps, p50, p99, requests, errors }
    '
}

# h2load: req/s from "finished in", requests done, and every request that did not get a 2xx
# (failed, errored, timed out or another status) as an error. h2load reports no percentiles,
# only min/max/mean per request, so p50 and p99 are "-".
parse_h2load() {
    awk '
        /^finished in / { gsub(/,/, ""); rps = $4 }
        /^requests: / { gsub(/,/, ""); done = $8 }
        /^status codes: / { gsub(/,/, ""); ok = $3 }
        END { printf "%.0f - - - %d %d\n", rps, done, done - ok }
    '
}

# oha --output-format json: latencies are in seconds; every non-2xx status and every error counts.
parse_oha() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
s, p = d["summary"], d.get("latencyPercentiles") or {}
codes = {int(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
ok = sum(v for k, v in codes.items() if 200 <= k < 300)
errors = sum(codes.values()) - ok + sum((d.get("errorDistribution") or {}).values())
us = lambda k: "%.0f" % (p[k] * 1e6) if p.get(k) is not None else "-"
print("%.0f %s %s %s %d %d" % (s.get("requestsPerSec") or 0, us("p50"), us("p99"), us("p99.9"), sum(codes.values()), errors))'
}
