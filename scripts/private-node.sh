# Sourced by the Redis-mode measurement scripts (redis-memory.sh,
# redis-poll-cost.sh): a private redis-server without persistence on
# 127.0.0.1:$PORT and one `flashsale serve` node on it, both stopped (by
# pid) and their temporary directory removed when the script exits.
#
# The caller sets ROOT, BIN (the flashsale binary; built with
# `cargo build --release` if missing), PORT and NAME (the temporary
# directory's prefix, and the node's admin token and secret). Afterwards
# WORK is the temporary directory, ADMIN the admin token, URL the node's
# address, api METHOD PATH TOKEN [JSON] calls it, and start_node starts
# another node of the same deployment. Waits are bounded.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-$NAME.XXXXXX")
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin flashsale)

redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >/dev/null &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

ADMIN=$NAME-admin-token-0123456789
# Starts one more node of the deployment (its files under $WORK/node-*)
# in this shell, so that its pid is kept for the cleanup; sets NODE_URL to
# its address.
start_node() {
  local dir
  dir=$(mktemp -d "$WORK/node-XXXXXX")
  FLASHSALE_RATE_LIMIT_SHOPPER=0 FLASHSALE_RATE_LIMIT_ADDRESS=0 "$BIN" serve --addr 127.0.0.1:0 \
    --data-dir "$dir/data" --redis-url "redis://127.0.0.1:$PORT" --secret "$NAME-secret-0123456789" \
    --admin-token "$ADMIN" --allow-volatile-redis >"$dir/out" 2>"$dir/log" &
  PIDS+=($!)
  for _ in $(seq 1 300); do grep -q 'listening on' "$dir/out" 2>/dev/null && break; sleep 0.1; done
  NODE_URL=$(grep -o 'http://[^ ]*' "$dir/out" | head -n1)
  [ -n "$NODE_URL" ] || { echo "the node did not start:" >&2; cat "$dir/log" >&2; return 1; }
}
start_node || exit 1
URL=$NODE_URL
api() { curl -sS --fail-with-body --max-time 60 -X "$1" -H "Authorization: Bearer $3" \
  -H 'Content-Type: application/json' ${4:+--data "$4"} "$URL$2"; }
