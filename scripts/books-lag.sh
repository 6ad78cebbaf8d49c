#!/usr/bin/env bash
# Redis mode's books under a burst: how fast settled orders reach Postgres
# from three nodes' books streams, against how fast they settle, and the lag
# of each order.
#
# Starts three `flashsale serve` nodes on one Redis, each with
# --database-url (so three sinks share the streams), runs one
# `flashsale loadtest burst` against each node at once (each its own deal and
# shoppers, every shopper buying one unit that is there), and meanwhile
# records in Postgres when each order is first seen there (a `\watch` every
# 50 ms into the table books_lag_probe). Then prints:
#
#   settled buys/s    orders / (last created_at - first created_at), Redis' clock
#   into Postgres/s   orders / (last seen - first seen), Postgres' clock
#   lag p50/p99/max   seen - created_at per order (resolution: the 50 ms poll)
#
# Knobs (environment): REDIS_URL (redis://127.0.0.1:6379), DATABASE_URL
# (required), BOOKS_SHOPPERS per node (5000), BOOKS_RAMP (2s), FLASHSALE_BIN
# (default: ${CARGO_TARGET_DIR:-target}/debug/flashsale, built with `cargo
# build` if missing: a debug build, so the absolute figures are low; compare
# the ratio). Every wait is bounded; the nodes are stopped on exit.
set -euo pipefail

redis_url="${REDIS_URL:-redis://127.0.0.1:6379}"
database_url="${DATABASE_URL:?set DATABASE_URL to the books Postgres}"
shoppers="${BOOKS_SHOPPERS:-5000}"
ramp="${BOOKS_RAMP:-2s}"
bin="${FLASHSALE_BIN:-${CARGO_TARGET_DIR:-target}/debug/flashsale}"
[ -x "$bin" ] || cargo build --bin flashsale
namespace="lag$$"
secret="books-lag-secret-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
admin="books-lag-admin-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    redis-cli -u "$redis_url" EVAL \
        "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end" \
        0 "$namespace:*" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

urls=()
for node in 1 2 3; do
    : >"$work/node$node.out"
    "$bin" serve --addr 127.0.0.1:0 --data-dir "$work/node$node" \
        --redis-url "$redis_url" --redis-namespace "$namespace" \
        --secret "$secret" --admin-token "$admin" --database-url "$database_url" \
        --rate-limit-shopper 0 --rate-limit-address 0 --allow-volatile-redis \
        >"$work/node$node.out" 2>"$work/node$node.err" &
    pids+=("$!")
    for _ in $(seq 1 300); do
        url=$(sed -n 's/^flashsale listening on //p' "$work/node$node.out" | head -1)
        [ -n "$url" ] && break
        sleep 0.1
    done
    [ -n "$url" ] || { echo "node $node did not start:" >&2; tail -5 "$work/node$node.err" >&2; exit 1; }
    urls+=("${url%/}")
done
echo "three nodes: ${urls[*]} (namespace $namespace)"

# The deployment id appears in Redis once a node's sink has started.
deployment=""
for _ in $(seq 1 100); do
    deployment=$(redis-cli -u "$redis_url" GET "$namespace:{g}:deployment")
    [ -n "$deployment" ] && break
    sleep 0.1
done
[ -n "$deployment" ] || { echo "no deployment id in Redis" >&2; exit 1; }

psql "$database_url" -q -v ON_ERROR_STOP=1 -c \
    "CREATE TABLE IF NOT EXISTS books_lag_probe (deployment_id text, id text, seen_at timestamptz,
     PRIMARY KEY (deployment_id, id))"
probe="INSERT INTO books_lag_probe SELECT o.deployment_id, o.id, clock_timestamp() FROM orders o
       WHERE o.deployment_id = '$deployment' ON CONFLICT DO NOTHING"
# \watch repeats the probe every 50 ms until killed.
printf '%s \\watch 0.05\n' "$probe" | psql "$database_url" -q >/dev/null 2>&1 &
watcher=$!
pids+=("$watcher")

loads=()
for node in 0 1 2; do
    "$bin" loadtest burst --target "${urls[$node]}" --admin-token "$admin" \
        --shoppers "$shoppers" --stock "$shoppers" --ramp "$ramp" --quiet \
        >"$work/load$node.out" 2>&1 &
    loads+=("$!")
done
for pid in "${loads[@]}"; do
    wait "$pid" || echo "a loadtest exited non-zero; see $work" >&2
done

# Wait (bounded) until Postgres has every order Redis settled.
expected=$((shoppers * 3))
for _ in $(seq 1 600); do
    seen=$(psql "$database_url" -tA -c \
        "SELECT count(*) FROM books_lag_probe WHERE deployment_id = '$deployment'")
    [ "$seen" -ge "$expected" ] && break
    sleep 0.1
done
kill "$watcher" 2>/dev/null || true

psql "$database_url" -q -P pager=off -c "
WITH o AS (
  SELECT o.created_at, p.seen_at FROM orders o
  JOIN books_lag_probe p ON p.deployment_id = o.deployment_id AND p.id = o.id
  WHERE o.deployment_id = '$deployment')
SELECT count(*) AS orders,
  round(count(*) / nullif(extract(epoch FROM max(created_at) - min(created_at)), 0)) AS settled_per_s,
  round(count(*) / nullif(extract(epoch FROM max(seen_at) - min(seen_at)), 0)) AS into_postgres_per_s,
  round(extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY seen_at - created_at))::numeric * 1000) AS lag_p50_ms,
  round(extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY seen_at - created_at))::numeric * 1000) AS lag_p99_ms,
  round(extract(epoch FROM max(seen_at - created_at))::numeric * 1000) AS lag_max_ms
FROM o"
psql "$database_url" -q -c "DELETE FROM books_lag_probe WHERE deployment_id = '$deployment'"
