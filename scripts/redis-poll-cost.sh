#!/usr/bin/env bash
# What one multi-node-mode node costs Redis while idle, with no deals and
# with DEALS live deals (default 1,000), measured on a private redis-server
# (no persistence) on 127.0.0.1:${POLL_REDIS_PORT:-6394}: commands per
# second (INFO commandstats) and Redis CPU time per second (INFO cpu,
# used_cpu_user + used_cpu_sys), each over WINDOW seconds, side by side in
# one run. The node's poller reads every deal's hash every 250 ms and sums
# each deal over the shards once a second (README "Multi-node mode").
# Uses $FLASHSALE_BIN, else target/release/flashsale (built if missing). Bounded waits; stops what
# it starts.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${FLASHSALE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/flashsale}
PORT=${POLL_REDIS_PORT:-6394}
DEALS=${POLL_DEALS:-1000}
WINDOW=${POLL_WINDOW:-10}
NAME=poll
# shellcheck source=scripts/private-node.sh
. "$ROOT/scripts/private-node.sh"

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
for i in $(seq 1 "$DEALS"); do
  api POST /v1/deals "$merchant" "{\"title\":\"deal $i\",\"price\":\"1.00\",\"stock\":100,\
\"starts_at\":\"2020-01-01T00:00:00Z\",\"ends_at\":\"2099-01-01T00:00:00Z\"}" >/dev/null
done
sleep 3
redis-cli -p "$PORT" CONFIG RESETSTAT >/dev/null
read -r busy_calls busy_cpu <<<"$(measure)"
echo "one node, no deals:       $idle_calls commands/s, Redis CPU $idle_cpu ms/s"
echo "one node, $DEALS live deals: $busy_calls commands/s, Redis CPU $busy_cpu ms/s"
echo "busiest commands with $DEALS deals (calls per second):"
redis-cli -p "$PORT" INFO commandstats | tr -d '\r' \
  | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\2 \1/p' | sort -rn | head -5 \
  | awk -v w="$WINDOW" '{printf "  %-14s %.0f\n", $2, $1 / w}'
