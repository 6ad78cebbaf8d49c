#!/usr/bin/env bash
# A 3-primary Redis Cluster on loopback: ports FIRST, FIRST+1 and FIRST+2
# (each also listens on port + 10000 for the cluster bus), joined by
# `redis-cli --cluster create`; with --replicas, 3 primaries with one
# replica each on ports FIRST..FIRST+5 (6 processes).
#
#   scripts/redis-cluster.sh [--persistent] [--replicas] [FIRST]   start
#                        it, unless it already answers with
#                        cluster_state:ok (idempotent)
#   scripts/redis-cluster.sh stop [--replicas] [FIRST]              stop
#                        the servers by their pid files (all six ports
#                        are tried either way)
#
# FIRST defaults to ${REDIS_CLUSTER_PORT:-7001}. Without --persistent the
# Cluster persists nothing and is disposable: it is the tests' (.ci/run
# starts it on 7001-7003); nodes serve on it only with
# --allow-volatile-redis. With --persistent every server keeps an
# append-only file fsynced before every reply (appendonly yes, appendfsync
# always), as multi-node nodes require, under
# ${FLASHSALE_REDIS_CLUSTER_DIR:-./.data/redis-cluster-FIRST}; started
# again after a stop, it comes back with its data and its slots. With
# --replicas the script also waits until every replica holds its primary's
# copy (what `serve --redis-replica-acks 1` needs at start).
# ${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000} is each server's
# cluster-node-timeout: how long a primary may be silent before its
# replica is promoted. Exit 0 once the Cluster answers cluster_state:ok
# (with --persistent: and every server persists); every wait is bounded
# (10 s for the servers and the Cluster, 30 s for the replicas' copies);
# prints the REDIS_CLUSTER_URLS to use.
set -euo pipefail

command=start
persistent=no
replicas=no
while [ $# -gt 0 ]; do
    case "$1" in
        stop) command=stop ;;
        --persistent) persistent=yes ;;
        --replicas) replicas=yes ;;
        '' | *[!0-9]*)
            echo "usage: scripts/redis-cluster.sh [--persistent] [--replicas] [FIRST_PORT] | stop [FIRST_PORT]: $1?" >&2
            exit 2
            ;;
        *) first_arg="$1" ;;
    esac
    shift
done
first="${first_arg:-${REDIS_CLUSTER_PORT:-7001}}"
ports=("$first" "$((first + 1))" "$((first + 2))")
if [ "$replicas" = yes ]; then
    ports+=("$((first + 3))" "$((first + 4))" "$((first + 5))")
fi
node_timeout_ms="${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"
case "$node_timeout_ms" in
    '' | *[!0-9]*)
        echo "REDIS_CLUSTER_NODE_TIMEOUT_MS=$node_timeout_ms is not a number of milliseconds" >&2
        exit 2
        ;;
esac
if [ "$persistent" = yes ]; then
    dir="${FLASHSALE_REDIS_CLUSTER_DIR:-$(pwd)/.data/redis-cluster-$first}"
else
    dir="${FLASHSALE_REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/flashsale-redis-cluster-$first}"
fi
urls=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}")
urls="${urls%,}"

if [ "$command" = stop ]; then
    . "$(dirname "$0")/stop-by-pidfile.sh"
    # Either mode's directory: stop what this script started on these ports.
    for base in "${FLASHSALE_REDIS_CLUSTER_DIR:-}" "$(pwd)/.data/redis-cluster-$first" \
        "${TMPDIR:-/tmp}/flashsale-redis-cluster-$first"; do
        # All six ports: a Cluster started with --replicas is stopped
        # whole even when `stop` is not told so.
        for port in $(seq "$first" "$((first + 5))"); do
            [ -n "$base" ] && stop_by_pidfile "$base/$port/redis.pid" || true
        done
    done
    echo "stopped the Redis Cluster on ports $first-$((first + 5))"
    exit 0
fi

state() { redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:' || true; }

# With --persistent, refuses (exit 1) a Cluster of which a server persists nothing.
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
            --cluster-node-timeout "$node_timeout_ms" \
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
    addresses=()
    for port in "${ports[@]}"; do addresses+=("127.0.0.1:$port"); done
    per_primary=0
    [ "$replicas" = yes ] && per_primary=1
    redis-cli --cluster create "${addresses[@]}" --cluster-replicas "$per_primary" --cluster-yes >/dev/null
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
# Every replica connected to its primary and done with its first copy:
# until then its primary counts no replica online.
in_sync() {
    [ "$replicas" = yes ] || return 0
    local replicas_in_sync=0 port info
    for port in "${ports[@]}"; do
        info=$(redis-cli -h 127.0.0.1 -p "$port" info replication 2>/dev/null | tr -d '\r')
        if echo "$info" | grep -q '^role:slave' && echo "$info" | grep -q '^master_link_status:up' &&
            echo "$info" | grep -q '^master_sync_in_progress:0'; then
            replicas_in_sync=$((replicas_in_sync + 1))
        fi
    done
    [ "$replicas_in_sync" = 3 ]
}
for _ in $(seq 1 300); do
    in_sync && break
    sleep 0.1
done
if ! in_sync; then
    echo "the replicas did not finish their first copy within 30 s; logs in $dir" >&2
    exit 1
fi
shape="3 primaries"
[ "$replicas" = yes ] && shape="3 primaries with one replica each"
if [ "$persistent" = yes ]; then
    echo "Redis Cluster of $shape on ports ${ports[*]} (appendonly yes, appendfsync always), data in $dir"
else
    echo "Redis Cluster of $shape on ports ${ports[*]} (no persistence: for tests)"
fi
echo "REDIS_CLUSTER_URLS=$urls"
