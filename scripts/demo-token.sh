#!/usr/bin/env bash
# Prints an HS256 JWT that the shipped config (conf/portico.toml, plugin "demo-jwt") accepts:
# subject SUB (default 42), valid for an hour. Only openssl is needed (scripts/ensure-deps.sh
# installs it). The secret is the demo's published one, so the token is worth nothing anywhere
# else; PORTICO_DEMO_JWT_SECRET signs with another secret instead.
#
#   TOKEN=$(scripts/demo-token.sh)
#   curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/api/v1/me
set -euo pipefail

# Must match plugins.demo-jwt.secret in conf/portico.toml (tests/it/demo.rs checks that it does).
SECRET="${PORTICO_DEMO_JWT_SECRET:-portico-demo-secret-not-for-production}"
SUB="${1:-42}"
case "$SUB" in
    *[!A-Za-z0-9._@-]* | "") echo "demo-token: the subject must be letters, digits, . _ @ or -" >&2; exit 2 ;;
esac
command -v openssl >/dev/null || { echo "demo-token: openssl is required (scripts/ensure-deps.sh installs it)" >&2; exit 1; }

# base64url without padding (RFC 7515), from stdin.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

header="$(printf '%s' '{"alg":"HS256","typ":"JWT"}' | b64url)"
payload="$(printf '{"sub":"%s","exp":%d}' "$SUB" "$(($(date +%s) + 3600))" | b64url)"
signature="$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -hmac "$SECRET" -binary | b64url)"
printf '%s.%s.%s\n' "$header" "$payload" "$signature"
