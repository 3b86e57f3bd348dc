#!/usr/bin/env bash
# Same-window A/B: what one running proxy costs per request against another, measured while
# both serve load at the same time on the same core, so the drift of a shared VM (±20% between
# sequential rounds here) hits both alike. Each gets its own wrk (half of 64 connections) on the
# load core; each process's CPU time comes from /proc.
#
#   bash loadtest/ab.sh PID_A URL_A PID_B URL_B [ROUNDS] [-- extra wrk arguments for B]
#
# Start the two proxies pinned to one core first (taskset -c 0 ...); wrk runs on CPU 1.
# Prints, per round, each one's CPU µs per request and how much more B costs than A.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
PID_A=$1 URL_A=$2 PID_B=$3 URL_B=$4
shift 4
ROUNDS=3
if [ $# -gt 0 ] && [ "$1" != -- ]; then ROUNDS=$1; shift; fi
[ "${1:-}" != -- ] || shift
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
served() { awk '/requests in/ { print $1 }' "$1"; }
for round in $(seq 1 "$ROUNDS"); do
    a0=$(cpu "$PID_A"); b0=$(cpu "$PID_B")
    taskset -c 1 wrk -t1 -c32 -d8s "$URL_A" >"$WORK/a" 2>&1 &
    taskset -c 1 wrk -t1 -c32 -d8s "$@" "$URL_B" >"$WORK/b" 2>&1
    wait
    a1=$(cpu "$PID_A"); b1=$(cpu "$PID_B")
    python3 -c "
a = ($a1 - $a0) / $TICK * 1e6 / $(served "$WORK/a")
b = ($b1 - $b0) / $TICK * 1e6 / $(served "$WORK/b")
print(f'round $round: A {a:.2f} us/req, B {b:.2f} us/req: B costs {(b / a - 1) * 100:+.1f}%')"
done
