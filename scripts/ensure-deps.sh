#!/usr/bin/env bash
# Installs what building and testing Portico needs, when it is missing (Debian/Ubuntu, apt):
#   cmake, a C/C++ compiler and make (pingora's libz-ng-sys builds C with cmake), pkg-config,
#   redis-server (the Redis-backed tests start a real one), curl (the demo, the benchmark and the
#   HTTP/2 tests), h2load (nghttp2-client: the HTTP/2 tests and benchmark), dnsmasq
#   (dnsmasq-base: the real DNS server the service discovery tests start), promtool
#   (prometheus: the observability tests check /metrics, the alert rules and their unit tests
#   with it; Debian's package also brings a Prometheus server, whose service this script stops
#   and disables when it has just installed it), openapi-spec-validator (the OpenAPI tests check
#   /openapi.json with it; Debian 12 has no package, so it comes from PyPI into a virtualenv at
#   target/tools/openapi-spec-validator, with python3-venv from apt when that is missing), openssl
#   (scripts/demo-token.sh mints the demo's JWT with it), chromium (the status page test renders
#   the admin page in headless Chromium), graphql-core (the GraphQL tests build a client schema
#   from the gateway's introspection answer with it, a third-party implementation's check; from
#   PyPI into target/tools/graphql-core, like openapi-spec-validator).
# Silent when everything is there; one line per package it installs. Cargo cannot come from
# apt here (Debian's is too old for this workspace), so a missing cargo is an error with advice.
#
# Given command names, it installs only what those need, from the same table, and checks nothing
# else (no cargo, no PyPI tools): scripts/cluster.sh asks for redis-server, redis-cli (Debian's
# redis-tools) and haproxy (Debian's package starts a haproxy service on /etc/haproxy/haproxy.cfg,
# which listens on no port; the demo runs its own).
#
#   scripts/ensure-deps.sh                 (run by `make test` and `make run`)
#   scripts/ensure-deps.sh CMD [CMD...]    e.g. scripts/ensure-deps.sh redis-server haproxy
set -euo pipefail

log() { printf 'ensure-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# command that must exist -> the Debian package that provides it
declare -A PACKAGE_FOR=(
    [cmake]=cmake
    [cc]=build-essential
    [c++]=build-essential
    [make]=build-essential
    [pkg-config]=pkg-config
    [redis-server]=redis-server
    [redis-cli]=redis-tools
    [curl]=curl
    [h2load]=nghttp2-client
    [dnsmasq]=dnsmasq-base
    [promtool]=prometheus
    [openssl]=openssl
    [chromium]=chromium
    [haproxy]=haproxy
)
ORDER=(cmake cc c++ make pkg-config redis-server curl h2load dnsmasq promtool openssl chromium)
# Named commands: only those (the demo of many instances needs no compiler and no test tools).
ONLY_NAMED=false
if [ "$#" -gt 0 ]; then
    for cmd in "$@"; do
        [ -n "${PACKAGE_FOR[$cmd]:-}" ] ||
            die "no package known for \"$cmd\" (known: ${!PACKAGE_FOR[*]})"
    done
    ORDER=("$@")
    ONLY_NAMED=true
fi

missing=()
for cmd in "${ORDER[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 && continue
    pkg="${PACKAGE_FOR[$cmd]}"
    case " ${missing[*]} " in
        *" $pkg "*) ;;
        *) missing+=("$pkg") ;;
    esac
done

# openapi-spec-validator: on PATH already, or in our own virtualenv (where the tests look too).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VALIDATOR_VENV="$ROOT/target/tools/openapi-spec-validator"
need_validator=false
if [ "$ONLY_NAMED" = false ] && ! command -v openapi-spec-validator >/dev/null 2>&1 &&
    [ ! -x "$VALIDATOR_VENV/bin/openapi-spec-validator" ]; then
    need_validator=true
    if ! command -v python3 >/dev/null 2>&1; then
        missing+=(python3 python3-venv)
    elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
fi

# graphql-core: in our own virtualenv (where the tests look).
GRAPHQL_VENV="$ROOT/target/tools/graphql-core"
need_graphql=false
if [ "$ONLY_NAMED" = false ] && ! "$GRAPHQL_VENV/bin/python" -c 'import graphql' >/dev/null 2>&1; then
    need_graphql=true
    if ! command -v python3 >/dev/null 2>&1; then
        missing+=(python3 python3-venv)
    elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing[*]} and there is no apt-get: install them with your package manager"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 ||
            die "missing ${missing[*]}: run as root or install sudo (apt-get install ${missing[*]})"
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_log="$(mktemp "${TMPDIR:-/tmp}/ensure-deps.XXXXXX")"
    trap 'rm -f "$apt_log"' EXIT
    # apt's own chatter goes to a file and is shown only when something fails.
    if ! "${SUDO[@]}" apt-get update -q >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        die "apt-get update failed"
    fi
    for pkg in "${missing[@]}"; do
        log "installing $pkg"
        if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$pkg" >"$apt_log" 2>&1; then
            cat "$apt_log" >&2
            die "apt-get install $pkg failed"
        fi
        # Only promtool was wanted: not a Prometheus server running on :9090 after `make test`.
        if [ "$pkg" = prometheus ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            log "disabling the prometheus service the package started (promtool is what the tests use)"
            "${SUDO[@]}" systemctl disable --now prometheus.service >"$apt_log" 2>&1 || cat "$apt_log" >&2
        fi
    done
fi

# A tool from PyPI in a virtualenv of its own: pip_venv NAME VENV REQUIREMENT.
pip_venv() {
    local name="$1" venv="$2" requirement="$3" pip_log
    log "installing $name (PyPI) into ${venv#"$ROOT/"}"
    pip_log="$(mktemp "${TMPDIR:-/tmp}/ensure-deps.XXXXXX")"
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q "$requirement"; } >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        rm -f "$pip_log"
        rm -rf "$venv"
        die "installing $name failed"
    fi
    rm -f "$pip_log"
}

# 0.7 and later validate OpenAPI 3.1 documents.
[ "$need_validator" = false ] ||
    pip_venv openapi-spec-validator "$VALIDATOR_VENV" 'openapi-spec-validator>=0.7,<1'
[ "$need_graphql" = false ] || pip_venv graphql-core "$GRAPHQL_VENV" 'graphql-core>=3.2,<4'

[ "$ONLY_NAMED" = false ] || exit 0
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        die "cargo is installed in ~/.cargo/bin but not on PATH: run  . \"\$HOME/.cargo/env\"  (or add ~/.cargo/bin to PATH)"
    fi
    die "cargo not found. Install a stable Rust toolchain with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    . \"\$HOME/.cargo/env\"
  (apt's cargo is too old for this workspace.)"
fi
