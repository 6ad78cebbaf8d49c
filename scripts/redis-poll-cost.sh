#!/usr/bin/env bash
# What NODES multi-node-mode nodes (default 3) cost Redis while idle, with
# no deals and with DEALS live deals (default 1,000), measured on a private
# redis-server
# (no persistence) on 127.0.0.1:${POLL_REDIS_PORT:-6394}: commands per
# second (INFO commandstats) and Redis CPU time per second (INFO cpu,
# used_cpu_user + used_cpu_sys), each over WINDOW seconds, side by side in
# one run, in all and per node. A node's poller follows the epoch, the
# newest deals' ids and the stamp of their shared numbers every 250 ms;
# once a second one node reads every deal's hash and sums it over the
# shards for all, and the others take what it wrote (docs/multi-node.md,
# "What a node costs Redis").
# Uses $FLASHSALE_BIN, else target/release/flashsale (built if missing). Bounded waits; stops what
# it starts.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${FLASHSALE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/flashsale}
PORT=${POLL_REDIS_PORT:-6394}
DEALS=${POLL_DEALS:-1000}
WINDOW=${POLL_WINDOW:-10}
NODES=${POLL_NODES:-3}
NAME=poll
# shellcheck source=scripts/private-node.sh
. "$ROOT/scripts/private-node.sh"
for _ in $(seq 2 "$NODES"); do start_node || exit 1; done

# Commands run and CPU seconds used so far: "calls cpu".
sample() {
  local calls cpu
  calls=$(redis-cli -p "$PORT" INFO commandstats | tr -d '\r' \
    | sed -n 's/^cmdstat_[^:]*:calls=\([0-9]*\),.*/\1/p' | awk '{s += $1} END {print s + 0}')
  cpu=$(redis-cli -p "$PORT" INFO cpu | tr -d '\r' \
    | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.3f", s}')
  echo "$calls $cpu"
}
# Per second over WINDOW seconds: "commands/s cpu-ms/s".
measure() {
  local before after
  before=$(sample)
  sleep "$WINDOW"
  after=$(sample)
  # The two INFO calls of each sample count too: 2 per sample, 4 in all.
  echo "$before $after" | awk -v w="$WINDOW" '{printf "%.0f %.1f", ($3 - $1 - 4) / w, ($4 - $2) * 1000 / w}'
}

sleep 2
read -r idle_calls idle_cpu <<<"$(measure)"
merchant=$(api POST /v1/merchants "$ADMIN" '{"name":"poll"}' | jq -r .token)
# A deal's creation answered 503 (Redis slow to answer on a loaded
# machine) is asked again, at most CREATE_ATTEMPTS times.
CREATE_ATTEMPTS=5
for i in $(seq 1 "$DEALS"); do
  for attempt in $(seq 1 "$CREATE_ATTEMPTS"); do
    api POST /v1/deals "$merchant" "{\"title\":\"deal $i\",\"price\":\"1.00\",\"stock\":100,\
\"starts_at\":\"2020-01-01T00:00:00Z\",\"ends_at\":\"2099-01-01T00:00:00Z\"}" >/dev/null 2>&1 && break
    [ "$attempt" -lt "$CREATE_ATTEMPTS" ] || { echo "deal $i not created" >&2; exit 1; }
    sleep 1
  done
done
sleep 3
redis-cli -p "$PORT" CONFIG RESETSTAT >/dev/null
read -r busy_calls busy_cpu <<<"$(measure)"
per_node() { awk -v v="$1" -v n="$NODES" -v p="$2" 'BEGIN { printf "%." p "f", v / n }'; }
echo "$NODES nodes, no deals:       $idle_calls commands/s, Redis CPU $idle_cpu ms/s \
(per node $(per_node "$idle_calls" 0) and $(per_node "$idle_cpu" 1) ms/s)"
echo "$NODES nodes, $DEALS live deals: $busy_calls commands/s, Redis CPU $busy_cpu ms/s \
(per node $(per_node "$busy_calls" 0) and $(per_node "$busy_cpu" 1) ms/s)"
echo "busiest commands with $DEALS deals (calls per second):"
redis-cli -p "$PORT" INFO commandstats | tr -d '\r' \
  | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\2 \1/p' | sort -rn | head -5 \
  | awk -v w="$WINDOW" '{printf "  %-14s %.0f\n", $2, $1 / w}'
