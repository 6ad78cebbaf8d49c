#!/usr/bin/env bash
# Compare, on this machine and in one go, the same stock-decrement step done by:
#
#   1. a bare hyper hello-world server (`flashsale loadtest hello`): the ceiling
#      of HTTP on this box;
#   2. the flashsale buy endpoint, sold-out path (a deal that sold out before
#      the run: every answer is 409 sold_out);
#   3. the flashsale buy endpoint, settling path (enough stock and funds that
#      every answer is 201 and an order is settled and journaled);
#   4. Redis running the decrement as a Lua script (redis-benchmark EVALSHA);
#   5. Postgres running `UPDATE ... SET stock = stock - 1 WHERE id = $1 AND
#      stock > 0` (pgbench -f, database `test`, user postgres, host 127.0.0.1);
#   6. multi-node mode: two flashsale nodes on that Redis, settling path,
#      wrk against both at once (half of COMPARE_NODE_CONNECTIONS each), with
#      the CPU per settled buy of the nodes (/proc/PID/stat) and of Redis
#      (INFO cpu), and the script calls per buy (a node sends a shard's buys
#      that arrive while its previous call is in flight in one call);
#   7. multi-node mode: one node's sold-out path (answered from the node's
#      sold-out flag, Redis untouched);
#   8. Redis running multi-node mode's own buy step (the `reserve` function
#      of redis/flashsale.lua, the call a node sends, printed by the binary,
#      a fresh idempotency key per buy) under redis-benchmark -P 16, with one
#      buy a call and with 8 (as a node batches a busy shard's buys): the
#      ceiling of case 6, with Redis' CPU and script time per buy;
#   9. Redis running a buy-sized reference script (scripts/reference-buy.lua:
#      replay a key, check stock, limit and funds, take stock, debit, append
#      the order to a stream, record the key) by redis-benchmark -P 16, a
#      fresh key per call: what a hand-written buy costs Redis.
# Cases 6 and 9 print Redis' script time per settled buy (INFO commandstats:
# the FCALL or EVALSHA time over the orders settled) and Redis' whole CPU
# per settled buy (INFO cpu); the last lines print case 6 over case 8, and
# case 6 against case 9: script time and Redis CPU per buy (goal at most
# 1.3 x) and settled buys per second (goal at least 0.5 x). Case 6 offers
# as many requests at once as case 9 keeps in flight (64 clients x 16
# pipelined), each with its own idempotency key.
#
# The HTTP cases all use the same client, wrk, with a small Lua script that
# gives every request its own Idempotency-Key and rotates shopper tokens.
# Every number is printed with its ratio to hello-world.
#
# It installs what is missing with apt-get (wrk, redis-tools, redis-server,
# postgresql-client/-contrib, jq, curl), builds `cargo build --release`, and
# uses target/release/flashsale. Everything listens on and talks to loopback
# only; every wait and every run is bounded. Knobs (environment):
#
#   COMPARE_DURATION     seconds per wrk / pgbench run         (default 10)
#   COMPARE_CONNECTIONS  concurrent connections / clients      (default 64)
#   COMPARE_NODE_CONNECTIONS  case 6's connections over both nodes
#                        (default COMPARE_CONNECTIONS x 16: case 9's
#                        requests in flight)
#   COMPARE_THREADS      client threads                        (default 2)
#   COMPARE_REQUESTS     redis-benchmark requests              (default 500000)
#   COMPARE_DURABILITY   flashsale --durability (sync|async)   (default sync)
#   COMPARE_REDIS_SHARDS case 6's --redis-shards: fewer shards, fuller
#                        batches (default 64, the node's default)
#   COMPARE_REDIS_PORT   Redis port on 127.0.0.1               (default 6379)
#   COMPARE_REDIS_SHOPPERS  shoppers of cases 6 and 8, each buy by one of
#                        them (a multiple of 10,000; default 100000)
#   COMPARE_FSYNC_MODES  1: case 6 again with appendfsync always, then
#                        everysec (CONFIG SET, restored after)  (default 0)
#   COMPARE_CASES        all: every case; redis: only cases 6-9 (multi-node
#                        mode against redis-benchmark)          (default all)
# When nothing answers at COMPARE_REDIS_PORT, a private redis-server
# (no persistence) is started there for the run and stopped after; the
# script-time figures are Redis' own and mean most on a Redis nothing else
# uses.
#   FLASHSALE_BIN        the binary to measure (default: build target/release/flashsale)
#   PGPORT / PGPASSWORD  Postgres port / password              (5432 / none)
set -euo pipefail

DURATION=${COMPARE_DURATION:-10}
CONNECTIONS=${COMPARE_CONNECTIONS:-64}
NODE_CONNECTIONS=${COMPARE_NODE_CONNECTIONS:-$((CONNECTIONS * 16))}
THREADS=${COMPARE_THREADS:-2}
REQUESTS=${COMPARE_REQUESTS:-500000}
DURABILITY=${COMPARE_DURABILITY:-sync}
REDIS_SHARDS=${COMPARE_REDIS_SHARDS:-64}
REDIS_PORT=${COMPARE_REDIS_PORT:-6379}
FSYNC_MODES=${COMPARE_FSYNC_MODES:-0}
CASES=${COMPARE_CASES:-all}
case "$CASES" in all | redis) ;; *)
  echo "COMPARE_CASES must be all or redis, not $CASES" >&2
  exit 2
  ;;
esac
PG_PORT=${PGPORT:-5432}
# Shoppers for the buy cases (one bulk call creates at most 10,000).
SHOPPERS=10000
# Shoppers of the multi-node cases, so that each buys a few times in a
# run, as in a flash sale (an account keeps two fields an order).
REDIS_SHOPPERS=${COMPARE_REDIS_SHOPPERS:-100000}
[ $((REDIS_SHOPPERS % SHOPPERS)) -eq 0 ] && [ "$REDIS_SHOPPERS" -gt 0 ] ||
  { echo "COMPARE_REDIS_SHOPPERS must be a multiple of $SHOPPERS" >&2; exit 2; }
# Upper bound on buys per second, used to size the settling deal so that no
# shopper reaches the per-user limit and stock never runs out.
BUYS_PER_SECOND_MAX=200000
READY_WAIT_TENTHS=300 # 30 s for a server to say it is listening

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${FLASHSALE_BIN:-$TARGET_DIR/release/flashsale}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-compare.XXXXXX")
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '==> %s\n' "$*" >&2; }

APT_UPDATED=0
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" -eq 0 ]; then
    $sudo apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

need() { # need COMMAND PACKAGE...
  local command=$1
  shift
  command -v "$command" >/dev/null 2>&1 && return 0
  say "installing $* for $command"
  apt_install "$@" || true
  command -v "$command" >/dev/null 2>&1
}

# Waits until FILE has a "listening on http://..." line while process PID
# lives; prints the URL.
wait_for_url() {
  local file=$1 pid=$2 i
  for ((i = 0; i < READY_WAIT_TENTHS; i++)); do
    if grep -q 'listening on http://' "$file" 2>/dev/null; then
      grep -o 'listening on http://[^ ]*' "$file" | head -n1 | sed 's/^listening on //'
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Runs wrk and prints its requests per second; the full output goes to $WORK/$name.wrk.
run_wrk() { # run_wrk NAME URL [SCRIPT]
  local name=$1 url=$2 script=${3:-}
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s --latency)
  [ -n "$script" ] && args+=(-s "$script")
  wrk "${args[@]}" "$url" >"$WORK/$name.wrk" 2>&1 || true
  awk '/^Requests\/sec:/ {print $2}' "$WORK/$name.wrk"
}

non_2xx() { # non_2xx NAME: wrk's count of answers that were not 2xx/3xx
  awk '/Non-2xx or 3xx responses:/ {print $5}' "$WORK/$1.wrk" | grep . || echo 0
}

latency() { # latency NAME PERCENT: a latency percentile from wrk --latency
  awk -v p="$2%" '$1 == p {print $2}' "$WORK/$1.wrk"
}

# User plus system CPU of the processes PID..., in clock ticks (getconf CLK_TCK).
cpu_ticks() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
# Calls and microseconds so far of one command (INFO commandstats), for a
# script command the time its scripts ran: "calls usec".
command_stats() { # command_stats fcall|evalsha
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
    awk -F'[=,:]' -v name="cmdstat_$1" '$1 == name {calls = $3; usec = $5} END {print calls + 0, usec + 0}'
}
# Starts a private redis-server on REDIS_PORT when nothing answers there.
ensure_redis() {
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
  need redis-server redis-server || return 0
  say "starting redis-server on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  local i
  for ((i = 0; i < READY_WAIT_TENTHS; i++)); do
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
}
# Redis' own CPU so far (INFO cpu: used_cpu_sys + used_cpu_user), in seconds.
redis_cpu() {
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO cpu | tr -d '\r' |
    awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'
}
per_buy_us() { # per_buy_us SECONDS COUNT: microseconds each
  awk -v s="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", s * 1e6 / n; else print "-" }'
}
# Results: name, requests per second (empty when skipped), note.
NAMES=()
RATES=()
NOTES=()
result() {
  NAMES+=("$1")
  RATES+=("$2")
  NOTES+=("$3")
}

# --- tools and build -------------------------------------------------------
need curl curl
need jq jq
HAVE_WRK=1
need wrk wrk || HAVE_WRK=0

say "building flashsale (release)"
[ -n "${FLASHSALE_BIN:-}" ] || (cd "$ROOT" && cargo build --release --bin flashsale)
[ -x "$BIN" ] || {
  echo "no $BIN after the build" >&2
  exit 1
}

HELLO_RATE=""
if [ "$CASES" = all ]; then
# --- 1. hello-world ceiling -----------------------------------------------
if [ "$HAVE_WRK" -eq 1 ]; then
  "$BIN" loadtest hello --addr 127.0.0.1:0 >"$WORK/hello.out" 2>&1 &
  PIDS+=($!)
  if HELLO_URL=$(wait_for_url "$WORK/hello.out" "${PIDS[-1]}"); then
    say "wrk against hello-world at $HELLO_URL"
    HELLO_RATE=$(run_wrk hello "$HELLO_URL/")
    result "hello-world (bare hyper)" "$HELLO_RATE" "p99 $(latency hello 99)"
  else
    result "hello-world (bare hyper)" "" "did not start: $(tail -c 300 "$WORK/hello.out")"
  fi
else
  result "hello-world (bare hyper)" "" "wrk not available"
fi

fi # single-node cases
# --- 2, 3. flashsale buy ---------------------------------------------------
start_flashsale() { # in this shell, so that its pid is kept for cleanup
  local token=$1
  mkdir -p "$WORK/data"
  FLASHSALE_RATE_LIMIT_SHOPPER=0 FLASHSALE_RATE_LIMIT_ADDRESS=0 \
    "$BIN" serve --addr 127.0.0.1:0 --data-dir "$WORK/data" \
    --admin-token "$token" --durability "$DURABILITY" \
    >"$WORK/serve.out" 2>"$WORK/serve.log" &
  PIDS+=($!)
}

api() { # api METHOD PATH TOKEN [BODY]: prints the JSON answer, fails on non-2xx
  local method=$1 path=$2 token=$3 body=${4:-}
  local args=(-sS --fail-with-body --max-time 60 -X "$method" -H "Authorization: Bearer $token")
  [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data "$body")
  curl "${args[@]}" "$FS_URL$path"
}

rfc3339() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }

cat >"$WORK/buy.lua" <<'LUA'
-- One buy per request: a distinct Idempotency-Key and a rotating shopper.
local tokens = {}
local counter = 0
local threads = 0
local path, run

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function init(args)
  for line in io.lines(os.getenv("COMPARE_TOKENS")) do
    tokens[#tokens + 1] = line
  end
  path = os.getenv("COMPARE_PATH")
  run = os.getenv("COMPARE_RUN")
  wrk.method = "POST"
  wrk.body = '{"quantity":1}'
end

function request()
  counter = counter + 1
  local index = (counter * 97 + id * 7919) % #tokens + 1
  return wrk.format(nil, path, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[index],
    ["Idempotency-Key"] = run .. "-" .. id .. "-" .. counter,
  })
end
LUA

FS_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
if [ "$CASES" = all ]; then
if [ "$HAVE_WRK" -eq 0 ]; then
  result "flashsale buy, sold-out path" "" "wrk not available"
  result "flashsale buy, settling path" "" "wrk not available"
elif ! start_flashsale "$FS_TOKEN" || ! FS_URL=$(wait_for_url "$WORK/serve.out" "${PIDS[-1]}"); then
  note="flashsale serve did not start: $(tail -c 300 "$WORK/serve.log" | tr '\n' ' ')"
  result "flashsale buy, sold-out path" "" "$note"
  result "flashsale buy, settling path" "" "$note"
else
  say "setting up deals on $FS_URL"
  now=$(date +%s)
  per_user_limit=$(((BUYS_PER_SECOND_MAX * DURATION + SHOPPERS - 1) / SHOPPERS))
  merchant=$(api POST /v1/merchants "$FS_TOKEN" '{"name":"compare"}' | jq -r .token)
  api POST /v1/admin/shoppers "$FS_TOKEN" \
    "{\"count\":$SHOPPERS,\"credit\":\"$per_user_limit.00\"}" |
    jq -r '.shoppers[].token' >"$WORK/tokens"
  deal() { # deal STOCK LIMIT: prints the new deal's id
    api POST /v1/deals "$merchant" "{\"title\":\"compare\",\"price\":\"1.00\",\"stock\":$1,\
\"per_user_limit\":$2,\"starts_at\":\"$(rfc3339 $((now - 60)))\",\
\"ends_at\":\"$(rfc3339 $((now + 3600)))\",\"requires_registration\":false}" | jq -r .id
  }
  sold_out=$(deal 1 1)
  settling=$(deal $((per_user_limit * SHOPPERS)) "$per_user_limit")
  # Sell the sold-out deal's only unit first, so every measured buy is refused.
  curl -sS --max-time 10 -o /dev/null -X POST -H "Authorization: Bearer $(head -n1 "$WORK/tokens")" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: compare-first" \
    --data '{"quantity":1}' "$FS_URL/v1/deals/$sold_out/orders"

  export COMPARE_TOKENS="$WORK/tokens"
  say "wrk against the buy endpoint, sold-out path"
  rate=$(COMPARE_PATH="/v1/deals/$sold_out/orders" COMPARE_RUN="so$now" \
    run_wrk sold_out "$FS_URL" "$WORK/buy.lua")
  result "flashsale buy, sold-out path" "$rate" \
    "p99 $(latency sold_out 99); $(non_2xx sold_out) answers not 2xx (409 expected)"

  say "wrk against the buy endpoint, settling path ($DURABILITY durability)"
  rate=$(COMPARE_PATH="/v1/deals/$settling/orders" COMPARE_RUN="st$now" \
    run_wrk settling "$FS_URL" "$WORK/buy.lua")
  sold=$(api GET "/v1/deals/$settling" "$FS_TOKEN" | jq -r .sold)
  result "flashsale buy, settling path" "$rate" \
    "p99 $(latency settling 99); $(non_2xx settling) answers not 2xx (0 expected); $sold sold"
fi

# --- 4. Redis Lua decrement ------------------------------------------------
REDIS_LUA="local s = tonumber(redis.call('GET', KEYS[1])) \
if s and s > 0 then return redis.call('DECR', KEYS[1]) end return -1"
if need redis-benchmark redis-tools; then
  ensure_redis
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    key="flashsale-compare:{deal}:stock"
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" SET "$key" 1000000000000 >/dev/null
    sha=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" SCRIPT LOAD "$REDIS_LUA")
    say "redis-benchmark EVALSHA decrement ($REQUESTS requests)"
    redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONNECTIONS" -n "$REQUESTS" \
      --threads "$THREADS" --csv EVALSHA "$sha" 1 "$key" >"$WORK/redis.csv" 2>&1 || true
    rate=$(awk -F'","' 'NR > 1 && NF > 1 {print $2; exit}' "$WORK/redis.csv")
    p99=$(awk -F'","' 'NR > 1 && NF > 1 {gsub(/"/, "", $7); print $7; exit}' "$WORK/redis.csv")
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" DEL "$key" >/dev/null
    result "redis EVALSHA stock decrement" "$rate" "p99 ${p99}ms; in memory, no fsync"
  else
    result "redis EVALSHA stock decrement" "" "no Redis on 127.0.0.1:$REDIS_PORT"
  fi
else
  result "redis EVALSHA stock decrement" "" "redis-benchmark not available"
fi

fi # single-node cases
# --- 6, 7, 8, 9. multi-node mode on the same Redis -----------------------------
need redis-benchmark redis-tools || true
ensure_redis
REDIS_UP=0
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && REDIS_UP=1
NS="compare$(date +%s)"
if [ "$HAVE_WRK" -eq 0 ] || [ "$REDIS_UP" -eq 0 ]; then
  result "2 redis-mode nodes, settling" "" "wrk or Redis not available"
  result "redis-mode node, sold-out path" "" "wrk or Redis not available"
else
  SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  REDIS_URLS=()
  NODE_PIDS=()
  for node in 1 2; do
    FLASHSALE_RATE_LIMIT_SHOPPER=0 FLASHSALE_RATE_LIMIT_ADDRESS=0 \
      "$BIN" serve --addr 127.0.0.1:0 --data-dir "$WORK/redis-node-$node" \
      --admin-token "$FS_TOKEN" --secret "$SECRET" \
      --redis-url "redis://127.0.0.1:$REDIS_PORT" --redis-namespace "$NS" --allow-volatile-redis \
      --redis-shards "$REDIS_SHARDS" \
      >"$WORK/node$node.out" 2>"$WORK/node$node.log" &
    PIDS+=($!)
    NODE_PIDS+=($!)
    REDIS_URLS+=("$(wait_for_url "$WORK/node$node.out" "${PIDS[-1]}")")
  done
  FS_URL=${REDIS_URLS[0]}
  say "setting up deals on the redis-mode nodes ${REDIS_URLS[*]}"
  now=$(date +%s)
  per_user_limit=$(((BUYS_PER_SECOND_MAX * DURATION + REDIS_SHOPPERS - 1) / REDIS_SHOPPERS))
  [ "$per_user_limit" -le 1000 ] || per_user_limit=1000
  merchant=$(api POST /v1/merchants "$FS_TOKEN" '{"name":"compare"}' | jq -r .token)
  : >"$WORK/redis-tokens"
  for _ in $(seq 1 $(((REDIS_SHOPPERS + SHOPPERS - 1) / SHOPPERS))); do
    api POST /v1/admin/shoppers "$FS_TOKEN" \
      "{\"count\":$SHOPPERS,\"credit\":\"$per_user_limit.00\"}" |
      jq -r '.shoppers[].token' >>"$WORK/redis-tokens"
  done
  redis_deal() { # redis_deal STOCK LIMIT
    api POST /v1/deals "$merchant" "{\"title\":\"compare\",\"price\":\"1.00\",\"stock\":$1,\
\"per_user_limit\":$2,\"starts_at\":\"$(rfc3339 $((now - 60)))\",\
\"ends_at\":\"$(rfc3339 $((now + 3600)))\"}" | jq -r .id
  }
  sold_out=$(redis_deal 1 1)
  settling=$(redis_deal $((per_user_limit * REDIS_SHOPPERS)) "$per_user_limit")
  for line in 1 2; do # the second finds nothing and marks the deal sold out
    curl -sS --max-time 10 -o /dev/null -X POST \
      -H "Authorization: Bearer $(sed -n "${line}p" "$WORK/redis-tokens")" \
      -H 'Content-Type: application/json' -H "Idempotency-Key: compare-$line" \
      --data '{"quantity":1}' "$FS_URL/v1/deals/$sold_out/orders"
  done
  export COMPARE_TOKENS="$WORK/redis-tokens"
  # wrk against both nodes at once (half the connections each), settling
  # path; records the result as "2 redis-mode nodes, settling$1".
  two_nodes_settling() {
    say "wrk against two redis-mode nodes at once, settling path$1"
    local half=$((NODE_CONNECTIONS / 2)) wrks=() node rate bad sold settled ticks redis_s
    local calls usec
    ticks=$(cpu_ticks "${NODE_PIDS[@]}")
    redis_s=$(redis_cpu)
    read -r calls usec <<<"$(command_stats fcall)"
    for node in 0 1; do
      COMPARE_PATH="/v1/deals/$settling/orders" COMPARE_RUN="rs$node$now$2" \
        wrk -t1 -c"$half" -d"${DURATION}s" --timeout 10s --latency -s "$WORK/buy.lua" \
        "${REDIS_URLS[$node]}" >"$WORK/redis_settling$node.wrk" 2>&1 &
      wrks+=($!)
    done
    wait "${wrks[@]}" || true
    ticks=$(($(cpu_ticks "${NODE_PIDS[@]}") - ticks))
    redis_s=$(awk -v a="$(redis_cpu)" -v b="$redis_s" 'BEGIN { print a - b }')
    read -r calls usec <<<"$(command_stats fcall | awk -v c="$calls" -v u="$usec" '{print $1 - c, $2 - u}')"
    rate=$(awk '/^Requests\/sec:/ {sum += $2} END {print sum}' "$WORK"/redis_settling?.wrk)
    bad=$(awk '/Non-2xx or 3xx responses:/ {sum += $5} END {print sum + 0}' "$WORK"/redis_settling?.wrk)
    settled=$(awk '/ requests in / {sum += $1} END {print sum - '"$bad"'}' "$WORK"/redis_settling?.wrk)
    sold=$(api GET "/v1/deals/$settling" "$FS_TOKEN" | jq -r .sold)
    local script_us
    script_us=$(per_buy_us "$(awk -v u="$usec" 'BEGIN { print u / 1e6 }')" "$settled")
    result "2 redis-mode nodes, settling$1" "$rate" "p99 $(latency redis_settling0 99) and \
$(latency redis_settling1 99); $bad answers not 2xx (0 expected); $sold sold; CPU per buy: nodes $(per_buy_us "$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { print t / hz }')" "$settled") us, \
Redis $(per_buy_us "$redis_s" "$settled") us; Redis script time per buy $script_us us \
($(awk -v c="$calls" -v n="$settled" 'BEGIN { if (n > 0) printf "%.2f", c / n; else print "-" }') script calls per buy)"
    if [ -z "$1" ]; then
      NODES_SCRIPT_US=$script_us
      NODES_REDIS_US=$(per_buy_us "$redis_s" "$settled")
      NODES_SETTLED_RATE=$(awk -v n="$settled" -v d="$DURATION" 'BEGIN { printf "%.0f", n / d }')
    fi
  }
  two_nodes_settling "" ""
  if [ "$FSYNC_MODES" -eq 1 ]; then
    # The same two nodes and deal with Redis' AOF fsync before
    # every reply, then once a second; Redis' own settings are put back.
    rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
    was_aof=$(rcli CONFIG GET appendonly | sed -n 2p)
    was_fsync=$(rcli CONFIG GET appendfsync | sed -n 2p)
    rcli CONFIG SET appendonly yes >/dev/null
    for _ in $(seq 1 300); do # the rewrite that starts the AOF, bounded
      rcli INFO persistence | tr -d '\r' | grep -q '^aof_rewrite_in_progress:0' && break
      sleep 0.1
    done
    for mode in always everysec; do
      rcli CONFIG SET appendfsync "$mode" >/dev/null
      two_nodes_settling ", appendfsync $mode" "$mode"
    done
    rcli CONFIG SET appendfsync "$was_fsync" >/dev/null
    rcli CONFIG SET appendonly "$was_aof" >/dev/null
  fi
  say "wrk against a redis-mode node, sold-out path"
  before=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_fcall:/ {print $2}')
  rate=$(COMPARE_PATH="/v1/deals/$sold_out/orders" COMPARE_RUN="rso$now" \
    run_wrk redis_sold_out "$FS_URL" "$WORK/buy.lua")
  after=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_fcall:/ {print $2}')
  result "redis-mode node, sold-out path" "$rate" \
    "p99 $(latency redis_sold_out 99); $((after - before)) script calls during the run"
fi
if [ "$REDIS_UP" -eq 1 ] && command -v redis-benchmark >/dev/null 2>&1; then
  # The keys and arguments a node sends for shopper 1 on shard 0 (the
  # gateway's Keys), with the terms, wallet and bucket set up so every call
  # settles; __rand_int__ makes each buy's idempotency key new.
  cli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@" >/dev/null; }
  # The library and the call come from the binary's own step definitions
  # (redis/src/steps.rs), so they cannot drift from what a node sends.
  "$BIN" redis-steps library | redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -x FUNCTION LOAD REPLACE >/dev/null
  for per_call in 1 8; do
    # Each buy by a shopper drawn among REDIS_SHOPPERS accounts (the
    # names redis-benchmark's __rand_int__ makes: 12 digits), as the
    # nodes' buys are.
    P="$NS-bench$per_call:{s:0}"
    cli EVAL "for i = 0, tonumber(ARGV[1]) - 1 do
      redis.call('HSET', KEYS[1] .. string.format('%012d', i), 'name', 'bench',
        'credited', ARGV[2], 'available', ARGV[2], 'held', 0, 'spent', 0)
    end" 1 "$P:acct:" "$REDIS_SHOPPERS" 1000000000000000
    cli HSET "$P:stock" b:1 1000000000000 v:1 1
    name="redis FCALL buy step, $per_call a call"
    [ "$per_call" -eq 1 ] && name="redis FCALL multi-node buy step"
    mapfile -t call < <("$BIN" redis-steps reserve-call --namespace "$NS-bench$per_call" \
      --shopper __rand_int__ --requests "$per_call" 2>/dev/null)
    if [ "${#call[@]}" -eq 0 ]; then
      result "$name" "" "this binary cannot print a call of $per_call buys"
      continue
    fi
    say "redis-benchmark -P 16 FCALL of the multi-node buy step, $per_call a call ($REQUESTS buys)"
    redis_s=$(redis_cpu)
    read -r _ usec <<<"$(command_stats fcall)"
    redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONNECTIONS" -n $((REQUESTS / per_call)) -r "$REDIS_SHOPPERS" -P 16 \
      --threads "$THREADS" --csv "${call[@]}" >"$WORK/redis-buy.csv" 2>&1 || true
    rate=$(awk -F'","' -v n="$per_call" 'NR > 1 && NF > 1 {print $2 * n; exit}' "$WORK/redis-buy.csv")
    redis_s=$(awk -v a="$(redis_cpu)" -v b="$redis_s" 'BEGIN { print a - b }')
    usec=$(command_stats fcall | awk -v u="$usec" '{print ($2 - u) / 1e6}')
    settled=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" HGET "$P:stock" s:1)
    result "$name" "$rate" "buys/s; $settled settled; Redis CPU per buy \
$(per_buy_us "$redis_s" "$settled") us, script time $(per_buy_us "$usec" "$settled") us"
  done

  # 9. The buy-sized reference script, pipelined, a fresh record per call.
  R="$NS-reference:{r}"
  cli HSET "$R:stock" 1 1000000000000
  cli HSET "$R:wallet" available 1000000000000000
  sha=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" SCRIPT LOAD "$(cat "$ROOT/scripts/reference-buy.lua")")
  say "redis-benchmark -P 16 EVALSHA of the reference buy script ($REQUESTS requests)"
  redis_s=$(redis_cpu)
  read -r _ usec <<<"$(command_stats evalsha)"
  redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONNECTIONS" -n "$REQUESTS" -r 1000000000 -P 16 \
    --threads "$THREADS" --csv EVALSHA "$sha" 4 "$R:key:__rand_int__" "$R:stock" "$R:wallet" \
    "$R:books" 1 100 1000000000000 86400 >"$WORK/reference.csv" 2>&1 || true
  rate=$(awk -F'","' 'NR > 1 && NF > 1 {print $2; exit}' "$WORK/reference.csv")
  redis_s=$(awk -v a="$(redis_cpu)" -v b="$redis_s" 'BEGIN { print a - b }')
  usec=$(command_stats evalsha | awk -v u="$usec" '{print ($2 - u) / 1e6}')
  settled=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" HGET "$R:wallet" b:1)
  REFERENCE_SCRIPT_US=$(per_buy_us "$usec" "$settled")
  REFERENCE_REDIS_US=$(per_buy_us "$redis_s" "$settled")
  REFERENCE_RATE=$rate
  result "redis reference buy script -P 16" "$rate" "$settled settled; Redis CPU per call \
$(per_buy_us "$redis_s" "$settled") us, script time $REFERENCE_SCRIPT_US us"
else
  result "redis FCALL multi-node buy step" "" "Redis or redis-benchmark not available"
  result "redis reference buy script -P 16" "" "Redis or redis-benchmark not available"
fi
if [ "$REDIS_UP" -eq 1 ]; then
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" EVAL \
    "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end" 0 "$NS*" >/dev/null || true
fi

if [ "$CASES" = all ]; then
# --- 5. Postgres conditional UPDATE ---------------------------------------
if need pgbench postgresql-contrib || need pgbench postgresql-client; then
  psql_test() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d test -v ON_ERROR_STOP=1 -qtA "$@"; }
  if pg_isready -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1 && psql_test -c 'SELECT 1' >/dev/null 2>&1; then
    psql_test >/dev/null <<'SQL'
CREATE TABLE IF NOT EXISTS flashsale_compare_stock (id integer PRIMARY KEY, stock bigint NOT NULL);
INSERT INTO flashsale_compare_stock VALUES (1, 1000000000000)
  ON CONFLICT (id) DO UPDATE SET stock = EXCLUDED.stock;
SQL
    cat >"$WORK/decrement.sql" <<'SQL'
\set id 1
UPDATE flashsale_compare_stock SET stock = stock - 1 WHERE id = :id AND stock > 0;
SQL
    say "pgbench conditional UPDATE ($CONNECTIONS clients, ${DURATION}s)"
    pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared -f "$WORK/decrement.sql" \
      -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" test >"$WORK/pgbench.out" 2>&1 || true
    rate=$(awk '/^tps = / {print $3; exit}' "$WORK/pgbench.out")
    lat=$(awk '/^latency average/ {print $4; exit}' "$WORK/pgbench.out")
    psql_test -c 'DROP TABLE IF EXISTS flashsale_compare_stock' >/dev/null
    result "postgres UPDATE ... stock > 0" "$rate" "mean ${lat}ms; one hot row, fsync per commit"
  else
    result "postgres UPDATE ... stock > 0" "" "no Postgres (user postgres, db test) on 127.0.0.1:$PG_PORT"
  fi
else
  result "postgres UPDATE ... stock > 0" "" "pgbench not available"
fi

fi # Postgres case
# --- the table -------------------------------------------------------------
printf '\n%-34s %12s %9s  %s\n' "case ($CONNECTIONS connections, ${DURATION}s)" "req/s" "vs hello" "notes"
for i in "${!NAMES[@]}"; do
  rate=${RATES[$i]}
  if [ -z "$rate" ]; then
    printf '%-34s %12s %9s  %s\n' "${NAMES[$i]}" "-" "-" "skipped: ${NOTES[$i]}"
    continue
  fi
  ratio="-"
  [ -n "$HELLO_RATE" ] && ratio=$(awk -v a="$rate" -v b="$HELLO_RATE" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }')
  printf '%-34s %12.0f %9s  %s\n' "${NAMES[$i]}" "$rate" "$ratio" "${NOTES[$i]}"
done
# The ratio of two nodes settling against Redis alone running their step.
nodes_rate="" step_rate=""
for i in "${!NAMES[@]}"; do
  case "${NAMES[$i]}" in
  "2 redis-mode nodes, settling") nodes_rate=${RATES[$i]} ;;
  "redis FCALL multi-node buy step") step_rate=${RATES[$i]} ;;
  esac
done
if [ -n "$nodes_rate" ] && [ -n "$step_rate" ]; then
  awk -v a="$nodes_rate" -v b="$step_rate" 'BEGIN { if (b > 0) printf "\n2 nodes settling / redis-benchmark of their step: %.2f x (goal >= 0.8)\n", a / b }'
fi
# Against the hand-written reference buy, on the same Redis in this run.
if [ -n "${NODES_SCRIPT_US:-}" ] && [ -n "${REFERENCE_SCRIPT_US:-}" ]; then
  awk -v a="$NODES_SCRIPT_US" -v b="$REFERENCE_SCRIPT_US" 'BEGIN { if (b > 0) printf "Redis script time per settled buy, 2 nodes / reference script: %s / %s us = %.2f x (goal <= 1.3)\n", a, b, a / b }'
  awk -v a="$NODES_REDIS_US" -v b="$REFERENCE_REDIS_US" 'BEGIN { if (b > 0) printf "Redis CPU per settled buy (INFO cpu), 2 nodes / reference script: %s / %s us = %.2f x (goal <= 1.3)\n", a, b, a / b }'
  awk -v a="$NODES_SETTLED_RATE" -v b="$REFERENCE_RATE" 'BEGIN { if (b > 0) printf "settled buys/s, 2 nodes / reference script -P 16: %s / %.0f = %.2f x (goal >= 0.5)\n", a, b, a / b }'
fi
