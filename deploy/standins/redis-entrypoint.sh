#!/bin/sh
# As the official image does: a redis-server started without a configuration file listens
# to other containers (protected mode off); anything else runs as given.
set -eu
if [ "${1:-}" = "redis-server" ]; then
    shift
    exec redis-server "$@" --protected-mode no
fi
exec "$@"
