#!/usr/bin/env bash
# A 3-primary Redis Cluster on loopback: ports FIRST, FIRST+1 and FIRST+2
# (each also listens on port + 10000 for the cluster bus), joined by
# `redis-cli --cluster create`.
#
#   scripts/redis-cluster.sh [--persistent] [FIRST]   start it, unless it
#                        already answers with cluster_state:ok (idempotent)
#   scripts/redis-cluster.sh stop [FIRST]              stop the servers by
#                        their pid files
#
# FIRST defaults to ${REDIS_CLUSTER_PORT:-7001}. Without --persistent the
# Cluster persists nothing and is disposable: it is the tests' (.ci/run
# starts it on 7001-7003); nodes serve on it only with
# --allow-volatile-redis. With --persistent every primary keeps an
# append-only file fsynced before every reply (appendonly yes, appendfsync
# always), as multi-node nodes require, under
# ${FLASHSALE_REDIS_CLUSTER_DIR:-./.data/redis-cluster-FIRST}; started
# again after a stop, it comes back with its data and its slots. Exit 0
# once the Cluster answers cluster_state:ok (with --persistent: and every
# primary persists); waits are bounded; prints the REDIS_CLUSTER_URLS to use.
set -euo pipefail

command=start
persistent=no
while [ $# -gt 0 ]; do
    case "$1" in
        stop) command=stop ;;
        --persistent) persistent=yes ;;
        '' | *[!0-9]*)
            echo "usage: scripts/redis-cluster.sh [--persistent] [FIRST_PORT] | stop [FIRST_PORT]: $1?" >&2
            exit 2
            ;;
        *) first_arg="$1" ;;
    esac
    shift
done
first="${first_arg:-${REDIS_CLUSTER_PORT:-7001}}"
ports=("$first" "$((first + 1))" "$((first + 2))")
if [ "$persistent" = yes ]; then
    dir="${FLASHSALE_REDIS_CLUSTER_DIR:-$(pwd)/.data/redis-cluster-$first}"
else
    dir="${FLASHSALE_REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/flashsale-redis-cluster-$first}"
fi
urls="redis://127.0.0.1:${ports[0]},redis://127.0.0.1:${ports[1]},redis://127.0.0.1:${ports[2]}"

if [ "$command" = stop ]; then
    . "$(dirname "$0")/stop-by-pidfile.sh"
    # Either mode's directory: stop what this script started on these ports.
    for base in "${FLASHSALE_REDIS_CLUSTER_DIR:-}" "$(pwd)/.data/redis-cluster-$first" \
        "${TMPDIR:-/tmp}/flashsale-redis-cluster-$first"; do
        for port in "${ports[@]}"; do
            [ -n "$base" ] && stop_by_pidfile "$base/$port/redis.pid" || true
        done
    done
    echo "stopped the Redis Cluster on ports ${ports[*]}"
    exit 0
fi

state() { redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:' || true; }

# With --persistent, refuses (exit 1) a Cluster of which a primary persists nothing.
check_persistence() {
    [ "$persistent" = yes ] || return 0
    for port in "${ports[@]}"; do
        appendonly=$(redis-cli -h 127.0.0.1 -p "$port" config get appendonly | sed -n 2p)
        if [ "$appendonly" != yes ]; then
            echo "the Redis on port $port persists nothing (appendonly $appendonly): nodes refuse" >&2
            echo "this Cluster; start a persistent one on other ports: bash scripts/redis-cluster.sh --persistent $((first + 100))" >&2
            exit 1
        fi
    done
}

if [ "$(state)" = "cluster_state:ok" ]; then
    check_persistence
    echo "a Redis Cluster already answers on ports ${ports[*]}"
    echo "REDIS_CLUSTER_URLS=$urls"
    exit 0
fi

command -v redis-server >/dev/null 2>&1 || {
    echo "redis-server is not installed: apt-get install redis-server redis-tools" >&2
    exit 1
}

for port in "${ports[@]}"; do
    if ! redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
        if [ "$persistent" = yes ]; then
            # Its append-only file and nodes.conf, if any, bring it back
            # with its data and its place in the Cluster.
            mkdir -p "$dir/$port"
            persistence=(--appendonly yes --appendfsync always --save "")
        else
            # A fresh node: forget any earlier cluster of this directory.
            rm -rf "$dir/$port"
            mkdir -p "$dir/$port"
            persistence=(--appendonly no --save "")
        fi
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
            --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
            --cluster-node-timeout 2000 \
            --dir "$dir/$port" --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" \
            "${persistence[@]}"
    fi
done
for port in "${ports[@]}"; do
    for _ in $(seq 1 100); do
        redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null
done

# Nodes that already know each other (a persistent Cluster started again)
# find their slots on their own; only nodes that know no one are joined.
known() { redis-cli -h 127.0.0.1 -p "$1" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p'; }
if [ "$(known "${ports[0]}")" = 1 ]; then
    redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" "127.0.0.1:${ports[2]}" \
        --cluster-replicas 0 --cluster-yes >/dev/null
fi
for _ in $(seq 1 100); do
    [ "$(state)" = "cluster_state:ok" ] && break
    sleep 0.1
done
if [ "$(state)" != "cluster_state:ok" ]; then
    echo "the Redis Cluster did not reach cluster_state:ok; logs in $dir" >&2
    exit 1
fi
check_persistence
if [ "$persistent" = yes ]; then
    echo "Redis Cluster of 3 primaries on ports ${ports[*]} (appendonly yes, appendfsync always), data in $dir"
else
    echo "Redis Cluster of 3 primaries on ports ${ports[*]} (no persistence: for tests)"
fi
echo "REDIS_CLUSTER_URLS=$urls"
