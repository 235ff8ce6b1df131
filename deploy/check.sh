#!/usr/bin/env bash
# `make container-check`: builds the image from the Dockerfile, boots compose.yaml's whole
# stack (PostgreSQL, Redis, migrate, web, worker, beat), sends requests through it to the
# test suite's fake upstream, run on this host, reads /metrics, and backs the database up
# and restores it. Then it takes the stack down with its volumes. Throw-away secrets;
# nothing is written to the checkout.
#
#   REQRUN_STANDINS=1   first build stand-ins for the public base images from Debian's
#                       archive (deploy/standins/build.sh), for a machine that reaches no
#                       container registry
#   REQRUN_CHECK_KEEP=1 leave the stack running afterwards
#   REQRUN_PORT         the host port the web is published on (default 18080)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { echo "[container-check] $*" >&2; }

if docker compose version > /dev/null 2>&1; then
    compose=(docker compose -p reqrun-check)
elif command -v podman-compose > /dev/null; then
    compose=(podman-compose -p reqrun-check)
else
    say "needs docker compose or podman-compose"
    exit 2
fi
export REQRUN_PORT=${REQRUN_PORT:-18080}

if [ "${REQRUN_STANDINS:-}" = 1 ]; then
    say "building stand-ins for the base images"
    set -a
    eval "$(deploy/standins/build.sh)"
    set +a
fi

python=.venv/bin/python
secret() { "$python" -c 'import secrets; print(secrets.token_urlsafe(32))'; }
export POSTGRES_PASSWORD=$(secret)
export SECRET_KEY=$(secret)$(secret)
export REQRUN_ENCRYPTION_KEYS=$("$python" -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')
export EMAIL_URL=consolemail://
export REQRUN_METRICS_TOKEN=$(secret)
# Plain http on one machine, and an upstream on this host's own address.
export SECURE_SSL_REDIRECT=false
export REQRUN_ALLOW_PRIVATE_UPSTREAMS=true

host_address=$(ip route get 1 | sed -n 's/.* src \([0-9.]*\).*/\1/p')
upstream_port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
"$python" -m tests.fake_upstream --host "$host_address" --port "$upstream_port" > /dev/null 2>&1 &
upstream_pid=$!

cleanup() {
    kill "$upstream_pid" 2> /dev/null || true
    if [ "${REQRUN_CHECK_KEEP:-}" != 1 ]; then
        say "taking the stack down"
        "${compose[@]}" down -v > /dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

say "building the image and starting the stack with ${compose[*]}"
"${compose[@]}" up -d --build > "${TMPDIR:-/tmp}/reqrun-container-check.log" 2>&1 \
    || { tail -30 "${TMPDIR:-/tmp}/reqrun-container-check.log" >&2; exit 1; }

base=http://127.0.0.1:$REQRUN_PORT
wait_ready() {  # /readyz answers 200 once migrated, with the sweeper and a worker seen
    for _ in $(seq 180); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz")" = 200 ] && return 0
        sleep 1
    done
    say "never ready"
    "${compose[@]}" logs --tail 20 >&2
    exit 1
}
say "waiting for $base/readyz (migrated, sweeper and worker seen)"
wait_ready

say "bootstrapping a project whose upstream is http://$host_address:$upstream_port/v1"
created=$("${compose[@]}" exec web python manage.py bootstrap_project \
    --email check@example.com --plan free \
    --upstream-url "http://$host_address:$upstream_port/v1" --upstream-key sk-container-check \
    | grep '^{"account"')  # its one JSON line, among the log lines a TTY merges in
api_key=$(echo "$created" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')

say "one call in wait mode, one accepted with 202 and polled"
BASE=$base API_KEY=$api_key "$python" - << 'PY'
import os, time

import httpx

base, headers = os.environ["BASE"], {"Authorization": f"Bearer {os.environ['API_KEY']}"}
body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
waited = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60)
assert waited.status_code == 200, (waited.status_code, waited.text)
assert waited.json()["object"] == "chat.completion", waited.text
print(f"wait mode: 200, {waited.headers['ReqRun-Request-Id']}")

accepted = httpx.post(
    f"{base}/v1/chat/completions",
    json=body,
    headers={**headers, "Prefer": "respond-async"},
    timeout=30,
)
assert accepted.status_code == 202, (accepted.status_code, accepted.text)
request_id = accepted.json()["id"]
polled = httpx.get(f"{base}/v1/requests/{request_id}?wait=30", headers=headers, timeout=40)
assert polled.json()["status"] == "succeeded", polled.text
print(f"async: 202, then {request_id} succeeded after {len(polled.json()['attempts'])} attempt")

# The pages and static files come from the image too (templates, collected static).
for path in ("/", "/docs", "/pricing", "/legal/privacy", "/accounts/login/", "/static/css/app.css"):
    page = httpx.get(f"{base}{path}", timeout=30)
    assert page.status_code == 200, (path, page.status_code, page.text[:500])
print("pages: /, /docs, /pricing, /legal/privacy, /accounts/login/ and a static file answer 200")

# The worker's attempts, counted in its container, are in the web's /metrics.
token = {"Authorization": f"Bearer {os.environ['REQRUN_METRICS_TOKEN']}"}
scraped = httpx.get(f"{base}/metrics", headers=token, timeout=10).text
attempts = [
    line for line in scraped.splitlines()
    if line.startswith('reqrun_attempts_total{outcome="success"}')
]
assert attempts and float(attempts[0].split()[-1]) == 2, attempts or scraped[:2000]
print(f"/metrics from the web: {attempts[0]}")
PY
user=$("${compose[@]}" exec web id -u | tr -d '\r' | grep -x '[0-9][0-9]*')
[ "$user" != 0 ] || { say "the web runs as root"; exit 1; }
say "the stack as it ran (processes as uid $user):"
"${compose[@]}" ps >&2

# docs/operations.md "Backups", as written: dump, stop the processes, restore into an empty
# database, start them again. (The engine's own exec: binary output through no terminal.)
engine=$(command -v docker > /dev/null && docker info > /dev/null 2>&1 && echo docker || echo podman)
container() {
    "$engine" ps -q --filter "label=com.docker.compose.project=reqrun-check" \
        --filter "label=com.docker.compose.service=$1"
}
postgres=$(container postgres)
processes=("$(container web)" "$(container worker)" "$(container beat)")
dump=$(mktemp)
say "backup and restore: pg_dump, then a request the dump does not hold"
"$engine" exec "$postgres" pg_dump -U reqrun -Fc reqrun > "$dump"
late=$(curl -sf -H "Authorization: Bearer $api_key" -H "Prefer: respond-async" \
    -H "Content-Type: application/json" -d '{"model": "m", "messages": []}' \
    "$base/v1/chat/completions" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')
"$engine" stop -t 45 "${processes[@]}" > /dev/null
"$engine" exec "$postgres" dropdb -U reqrun reqrun
"$engine" exec "$postgres" createdb -U reqrun reqrun
"$engine" exec -i "$postgres" pg_restore --no-owner -U reqrun -d reqrun < "$dump"
rm -f "$dump"
"$engine" start "${processes[@]}" > /dev/null
wait_ready
BASE=$base API_KEY=$api_key LATE=$late "$python" - << 'PY'
import os

import httpx

base, headers = os.environ["BASE"], {"Authorization": f"Bearer {os.environ['API_KEY']}"}
kept = httpx.get(f"{base}/v1/requests", headers=headers, timeout=30).json()["data"]
assert [item["status"] for item in kept] == ["succeeded", "succeeded"], kept
late = httpx.get(f"{base}/v1/requests/{os.environ['LATE']}", headers=headers, timeout=30)
assert late.status_code == 404, late.text
print("restored: the two requests of the dump; the one accepted after it is gone (404)")
PY
say "PASSED"
