#!/usr/bin/env bash
# Builds stand-ins for the three public images compose.yaml and the Dockerfile start from
# (python:3.11-slim-bookworm, postgres:17-bookworm, redis:7-bookworm), for a machine that
# reaches Debian's package archive but no container registry. Each is Debian bookworm from
# debootstrap with Debian's own Python 3.11, PostgreSQL 15 or Redis 7; the PostgreSQL and
# Redis ones start as the official images do for what compose.yaml uses. Needs root,
# debootstrap and podman (or docker). Prints the variables that point compose.yaml at them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
engine=${CONTAINER_ENGINE:-$(command -v podman || command -v docker)}
# DEBIAN_MIRROR: an archive to take the packages from; unset, debootstrap's own default.
mirror=(${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"})
prefix=localhost/reqrun-standin

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! "$engine" image exists "$prefix/bookworm:latest" 2>/dev/null; then
    echo "[standins] debootstrap bookworm (minbase)" >&2
    debootstrap --variant=minbase bookworm "$work/rootfs" "${mirror[@]}" > "$work/debootstrap.log" \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    tar -C "$work/rootfs" -c . | "$engine" import - "$prefix/bookworm:latest" > /dev/null
fi

mkdir -p "$work/context/extra-ca"
cp "$here"/*.Containerfile "$here"/*-entrypoint.sh "$work/context/"
# The host's own additional authorities (Debian keeps them in this directory).
cp /usr/local/share/ca-certificates/*.crt "$work/context/extra-ca/" 2>/dev/null || true
for name in python postgres redis; do
    echo "[standins] building $prefix/$name" >&2
    "$engine" build -q -f "$work/context/$name.Containerfile" -t "$prefix/$name:latest" \
        "$work/context" > /dev/null
done

cat <<VARS
REQRUN_PYTHON_IMAGE=$prefix/python:latest
REQRUN_POSTGRES_IMAGE=$prefix/postgres:latest
REQRUN_REDIS_IMAGE=$prefix/redis:latest
VARS
