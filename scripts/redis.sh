#!/usr/bin/env bash
# A local Redis for multi-node mode, with the persistence that mode
# recommends: an append-only file fsynced before every reply
# (appendonly yes, appendfsync always), so an acknowledged order survives
# kill -9 of Redis and a power loss of this machine (docs/multi-node.md,
# "What a 201 promises").
#
#   scripts/redis.sh [PORT]        start it on 127.0.0.1:PORT (default
#                                  ${REDIS_PORT:-6379}) unless a Redis already
#                                  answers there (idempotent)
#   scripts/redis.sh stop [PORT]   stop the one this script started there
#
# Exit 0 once a persistent Redis answers on PORT; 1 if the Redis already
# there persists nothing (appendonly no): nodes refuse it, so this says so
# and names a free port to start one on instead.
#
# Data and the pid file live in ${FLASHSALE_REDIS_DIR:-./.data/redis-PORT}.
# Uses Debian's redis-server and redis-cli; installs them with apt-get when
# missing and run as root.
set -euo pipefail

command=start
if [ "${1:-}" = stop ]; then
    command=stop
    shift
fi
port="${1:-${REDIS_PORT:-6379}}"
case "$port" in
    '' | *[!0-9]*)
        echo "usage: scripts/redis.sh [stop] [PORT]: $port is not a port number" >&2
        exit 2
        ;;
esac
dir="${FLASHSALE_REDIS_DIR:-$(pwd)/.data/redis-$port}"
pidfile="$dir/redis.pid"

if [ "$command" = stop ]; then
    . "$(dirname "$0")/stop-by-pidfile.sh"
    if stop_by_pidfile "$pidfile"; then
        echo "stopped the Redis on port $port"
    else
        echo "no Redis started by this script on port $port"
    fi
    exit 0
fi

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools
    else
        echo "redis-server is not installed: apt-get install redis-server redis-tools" >&2
        exit 1
    fi
fi

if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
    echo "a Redis already answers on 127.0.0.1:$port: leaving it as it is"
    appendonly=$(redis-cli -h 127.0.0.1 -p "$port" config get appendonly | sed -n 2p)
    appendfsync=$(redis-cli -h 127.0.0.1 -p "$port" config get appendfsync | sed -n 2p)
    if [ "$appendonly" != yes ]; then
        echo "its persistence: none (appendonly no): a restart of it loses every order," >&2
        echo "so multi-node nodes refuse it (the tests accept it: they pass --allow-volatile-redis)." >&2
        echo "Start a persistent one on another port: bash scripts/redis.sh $((port + 11))" >&2
        exit 1
    fi
    echo "its persistence: appendonly yes, appendfsync $appendfsync"
    echo "REDIS_URL=redis://127.0.0.1:$port"
    exit 0
fi

mkdir -p "$dir"
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
    --dir "$dir" --pidfile "$pidfile" --logfile "$dir/redis.log" \
    --appendonly yes --appendfsync always --save ""
for _ in $(seq 1 100); do
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null
echo "Redis on 127.0.0.1:$port (appendonly yes, appendfsync always), data in $dir"
echo "REDIS_URL=redis://127.0.0.1:$port"
