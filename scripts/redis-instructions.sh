#!/usr/bin/env bash
# Instructions Redis spends per settled buy, counted by valgrind's
# callgrind (the same count however loaded the machine is): multi-node
# mode's `reserve` step as a node sends it, with 1, 2, 8 and 32 buys a call
# (a node sends a shard's buys that arrive together in one call), against
# the buy-sized reference script scripts/reference-buy.lua. Each runs on a
# private redis-server under callgrind (no persistence) on 127.0.0.1:
# ${INSTRUCTIONS_REDIS_PORT:-6395}, driven by redis-benchmark -P 16 with a
# fresh idempotency key per buy; the counters are zeroed before and dumped
# after each run. Each buy of the step is by a shopper drawn at random
# among ${INSTRUCTIONS_ACCOUNTS:-20000} accounts (at least 1,000: the
# idempotency keys are drawn from as many), as a flash sale's buys are
# one per shopper; one shopper buying them all would grow one account by
# two fields an order and time its lookups in it instead. Prints, per settled buy, the whole server's instructions
# and those inside FCALL or EVALSHA, and each over the reference's.
# Uses $FLASHSALE_BIN, else target/release/flashsale (built if missing).
# Needs valgrind and redis-tools (installed with apt-get when missing).
# Bounded waits; stops what it starts.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${FLASHSALE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/flashsale}
PORT=${INSTRUCTIONS_REDIS_PORT:-6395}
BUYS=${INSTRUCTIONS_BUYS:-4096}
ACCOUNTS=${INSTRUCTIONS_ACCOUNTS:-20000}
[ "$ACCOUNTS" -ge 1000 ] || { echo "INSTRUCTIONS_ACCOUNTS must be at least 1000" >&2; exit 2; }
[ -x "$BIN" ] || cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin flashsale
for tool in valgrind:valgrind callgrind_control:valgrind redis-benchmark:redis-tools redis-server:redis-server; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool##*:}" >/dev/null
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-instructions.XXXXXX")
valgrind --tool=callgrind --callgrind-out-file="$WORK/out.%p" \
  redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cli() { redis-cli -p "$PORT" "$@"; }
for _ in $(seq 1 300); do # 30 s for the server under valgrind to answer
  cli ping >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/redis.log" >&2; exit 1; }
  sleep 0.1
done
cli ping >/dev/null

# count NAME SETTLED_COMMAND KEYSPACE -- BENCHMARK_ARGS...: zeroes the
# counters, runs redis-benchmark (each __rand_int__ one of KEYSPACE),
# dumps; prints "NAME whole script settled".
count() {
  local name=$1 settled=$2 keyspace=$3 dump whole script buys
  shift 4
  callgrind_control -z "$PID" >/dev/null 2>&1
  redis-benchmark -p "$PORT" -c 32 -r "$keyspace" -P 16 "$@" >/dev/null 2>&1
  callgrind_control -d "$PID" >/dev/null 2>&1
  dump=$(ls -t "$WORK"/out.* | head -n1)
  whole=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  script=$(callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
    awk '/:(fcallCommand|evalShaCommand) / {gsub(",", "", $1); print $1; exit}')
  buys=$(eval "$settled")
  echo "$name $whole ${script:-0} $buys"
}

NS=instructions
cli FUNCTION LOAD REPLACE "$("$BIN" redis-steps library)" >/dev/null
results=()
for per_call in 1 2 8 32; do
  cli FLUSHALL >/dev/null
  S="$NS:{s:0}"
  # The accounts redis-benchmark's __rand_int__ names (12 digits).
  cli EVAL "for i = 0, tonumber(ARGV[1]) - 1 do
    redis.call('HSET', KEYS[1] .. string.format('%012d', i), 'name', 'bench',
      'credited', ARGV[2], 'available', ARGV[2], 'held', 0, 'spent', 0)
  end" 1 "$S:acct:" "$ACCOUNTS" 1000000000000000 >/dev/null
  cli HSET "$S:stock" b:1 1000000000000 v:1 1 >/dev/null
  # A build that batches no buys prints only a call of one.
  mapfile -t call < <("$BIN" redis-steps reserve-call --namespace "$NS" --shopper __rand_int__ \
    --requests "$per_call")
  [ "${#call[@]}" -gt 0 ] || continue
  results+=("$(count "reserve, $per_call a call" "cli HGET '$S:stock' s:1" "$ACCOUNTS" -- \
    -n $((BUYS / per_call)) "${call[@]}")")
done
cli FLUSHALL >/dev/null
R="$NS-reference:{r}"
cli HSET "$R:stock" 1 1000000000000 >/dev/null
cli HSET "$R:wallet" available 1000000000000000 >/dev/null
sha=$(cli SCRIPT LOAD "$(cat "$ROOT/scripts/reference-buy.lua")")
reference=$(count "reference script" "cli HGET '$R:wallet' b:1" 1000000000 -- -n "$BUYS" \
  EVALSHA "$sha" 4 "$R:key:__rand_int__" "$R:stock" "$R:wallet" "$R:books" 1 100 1000000000000 86400)

printf '%-22s %14s %9s %14s %9s\n' "per settled buy" "redis-server" "vs ref" "inside script" "vs ref"
read -r _ _ ref_whole ref_script ref_buys <<<"$reference"
for line in "${results[@]}" "$reference"; do
  awk -v line="$line" -v rw="$ref_whole" -v rs="$ref_script" -v rb="$ref_buys" 'BEGIN {
    n = split(line, f, " ")
    buys = f[n]; script = f[n - 1]; whole = f[n - 2]
    name = f[1]; for (i = 2; i <= n - 3; i++) name = name " " f[i]
    w = whole / buys; s = script / buys; rw1 = rw / rb; rs1 = rs / rb
    printf "%-22s %14.0f %8.2fx %14.0f %8.2fx\n", name, w, w / rw1, s, s / rs1
  }'
done
