#!/usr/bin/env bash
# A 3-primary Redis Cluster on loopback for multi-node mode's tests:
# ports ${REDIS_CLUSTER_PORT:-7001} and the two after it (each also listens on
# port + 10000 for the cluster bus), joined by `redis-cli --cluster create`.
#
#   scripts/redis-cluster.sh        start it, unless it already answers with
#                                   cluster_state:ok (idempotent)
#   scripts/redis-cluster.sh stop   stop the servers by their pid files
#
# No persistence: this Cluster is for tests and is disposable. Waits are
# bounded; prints the REDIS_CLUSTER_URLS to use.
set -euo pipefail

first="${REDIS_CLUSTER_PORT:-7001}"
ports=("$first" "$((first + 1))" "$((first + 2))")
dir="${FLASHSALE_REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/flashsale-redis-cluster-$first}"
urls="redis://127.0.0.1:${ports[0]},redis://127.0.0.1:${ports[1]},redis://127.0.0.1:${ports[2]}"

if [ "${1:-start}" = stop ]; then
    for port in "${ports[@]}"; do
        pidfile="$dir/$port/redis.pid"
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
    echo "stopped the Redis Cluster on ports ${ports[*]}"
    exit 0
fi

state() { redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:' || true; }

if [ "$(state)" = "cluster_state:ok" ]; then
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
        # A fresh node: forget any earlier cluster of this directory.
        rm -rf "$dir/$port"
        mkdir -p "$dir/$port"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
            --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
            --cluster-node-timeout 2000 \
            --dir "$dir/$port" --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" \
            --save "" --appendonly no
    fi
done
for port in "${ports[@]}"; do
    for _ in $(seq 1 100); do
        redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null
done

redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" "127.0.0.1:${ports[2]}" \
    --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 1 100); do
    [ "$(state)" = "cluster_state:ok" ] && break
    sleep 0.1
done
if [ "$(state)" != "cluster_state:ok" ]; then
    echo "the Redis Cluster did not reach cluster_state:ok; logs in $dir" >&2
    exit 1
fi
echo "Redis Cluster of 3 primaries on ports ${ports[*]}"
echo "REDIS_CLUSTER_URLS=$urls"
