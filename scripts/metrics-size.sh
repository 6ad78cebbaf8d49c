#!/usr/bin/env bash
# What a scrape of /metrics costs: its size (bytes, lines, series) and the
# time of one GET /metrics (median and p99 of $SCRAPES scrapes by curl, one
# at a time), on an idle one-node server and on the same server with 1,000
# live deals (METRICS_DEALS_MAX, the most /metrics lists). Uses
# $FLASHSALE_BIN, else target/release/flashsale (built if missing); with
# BASE_BIN set (another build of flashsale, e.g. main's) measures it too,
# side by side in the same run. Each server runs on 127.0.0.1:0 with a
# temporary data directory, stopped by pid; waits are bounded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${FLASHSALE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/flashsale}
DEALS=${METRICS_DEALS:-1000}
SCRAPES=${METRICS_SCRAPES:-200}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-metrics.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin flashsale)
ADMIN=metrics-admin-token-0123456789

# start NAME BINARY: a server; sets URL.
start() {
  mkdir -p "$WORK/$1"
  FLASHSALE_RATE_LIMIT_SHOPPER=0 FLASHSALE_RATE_LIMIT_ADDRESS=0 "$2" serve --addr 127.0.0.1:0 \
    --data-dir "$WORK/$1/data" --admin-token "$ADMIN" >"$WORK/$1/out" 2>"$WORK/$1/log" &
  PIDS+=($!)
  for _ in $(seq 1 300); do grep -q 'listening on' "$WORK/$1/out" 2>/dev/null && break; sleep 0.1; done
  URL=$(grep -o 'http://[^ ]*' "$WORK/$1/out" | head -n1)
  [ -n "$URL" ] || { echo "$1 did not start:" >&2; cat "$WORK/$1/log" >&2; exit 1; }
}

api() { curl -sS --fail-with-body --max-time 60 -X "$1" -H "Authorization: Bearer $3" \
  -H 'Content-Type: application/json' ${4:+--data "$4"} "$URL$2"; }

# measure NAME STATE: one line of figures for the server at $URL.
measure() {
  curl -sS --max-time 60 "$URL/metrics" >"$WORK/body"
  local bytes lines series
  bytes=$(wc -c <"$WORK/body")
  lines=$(wc -l <"$WORK/body")
  series=$(grep -vc '^#\|^$' "$WORK/body")
  for _ in $(seq 1 "$SCRAPES"); do
    curl -sS --max-time 60 -o /dev/null -w '%{time_total}\n' "$URL/metrics"
  done | sort -n >"$WORK/times"
  local median p99
  median=$(awk -v n="$SCRAPES" 'NR == int((n + 1) / 2) { printf "%.2f", $1 * 1000 }' "$WORK/times")
  p99=$(awk -v n="$SCRAPES" 'NR == int(n * 0.99) { printf "%.2f", $1 * 1000 }' "$WORK/times")
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$bytes" "$lines" "$series" "$median" "$p99"
}

# run NAME BINARY: idle, then with $DEALS live deals.
run() {
  start "$1" "$2"
  measure "$1" idle
  merchant=$(api POST /v1/merchants "$ADMIN" '{"name":"metrics"}' | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
  for n in $(seq 1 "$DEALS"); do
    api POST /v1/deals "$merchant" "{\"title\":\"deal $n\",\"price\":\"1.00\",\"stock\":100,\
\"starts_at\":\"2020-01-01T00:00:00Z\",\"ends_at\":\"2099-01-01T00:00:00Z\"}" >/dev/null
  done
  sleep 1 # the feed's sampler (200 ms) lists the new deals
  measure "$1" "$DEALS live deals"
}

echo "| build | node | bytes | lines | samples | scrape median ms | scrape p99 ms |"
echo "|---|---|---:|---:|---:|---:|---:|"
run this "$BIN"
if [ -n "${BASE_BIN:-}" ]; then run base "$BASE_BIN"; fi
