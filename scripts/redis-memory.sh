#!/usr/bin/env bash
# Redis memory per shopper and per order in multi-node mode, measured on a
# private redis-server (no persistence) on 127.0.0.1:${MEMORY_REDIS_PORT:-6393}:
# used_memory before, after SHOPPERS bulk shoppers, and after each of them
# buys one unit (a one-tap order, with its idempotency record and order id
# in the account, the deal's order list entry, the record-set entry and the
# books stream entries). Uses $FLASHSALE_BIN, else target/release/flashsale
# (built if missing).
# Bounded waits; stops what it starts.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${FLASHSALE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/flashsale}
PORT=${MEMORY_REDIS_PORT:-6393}
SHOPPERS=${MEMORY_SHOPPERS:-5000}
NAME=memory
# shellcheck source=scripts/private-node.sh
. "$ROOT/scripts/private-node.sh"
used() { redis-cli -p "$PORT" INFO memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}'; }

merchant=$(api POST /v1/merchants "$ADMIN" '{"name":"memory"}' | jq -r .token)
deal=$(api POST /v1/deals "$merchant" "{\"title\":\"memory\",\"price\":\"1.00\",\"stock\":$SHOPPERS,\
\"starts_at\":\"2020-01-01T00:00:00Z\",\"ends_at\":\"2099-01-01T00:00:00Z\"}" | jq -r .id)
sleep 1
before=$(used)
: >"$WORK/tokens"
left=$SHOPPERS
while [ "$left" -gt 0 ]; do
  count=$((left < 10000 ? left : 10000))
  api POST /v1/admin/shoppers "$ADMIN" "{\"count\":$count,\"credit\":\"10.00\"}" | jq -r '.shoppers[].token' >>"$WORK/tokens"
  left=$((left - count))
done
shoppers=$(used)
export URL deal
awk '{print NR, $0}' "$WORK/tokens" | xargs -P 32 -n 2 sh -c \
  'curl -sS -o /dev/null --max-time 10 -X POST -H "Authorization: Bearer $1" \
     -H "Content-Type: application/json" -H "Idempotency-Key: memory-$0" \
     --data "{\"quantity\":1}" "$URL/v1/deals/$deal/orders"'
orders=$(used)
sold=$(api GET "/v1/deals/$deal" "$ADMIN" | jq -r .sold)
echo "shoppers: $SHOPPERS, orders: $sold"
echo "bytes per shopper (account, wallet, shard index): $(( (shoppers - before) / SHOPPERS ))"
echo "bytes per order (order record, idempotency record, list and set entries, buyer counters): $(( (orders - shoppers) / sold ))"
