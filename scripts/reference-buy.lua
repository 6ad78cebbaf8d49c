-- A buy-sized reference script for scripts/compare.sh: the least work one
-- settled one-tap buy needs in Redis, hand-written, with none of
-- flashsale's layout. compare.sh runs it with redis-benchmark (EVALSHA,
-- pipelined) on the same Redis as the product, in the same run, and
-- prints the product's Redis script time per settled buy over this
-- script's per call.
--
-- It replays a known key, checks the stock, the per-user limit and the
-- funds, takes the stock, debits, appends the order to a stream and
-- records the key: seven commands.
--
-- KEYS: the idempotency record (a fresh key per call: redis-benchmark's
-- __rand_int__), the stock hash, the wallet hash, the order stream.
-- ARGV: the deal, its price in fen, its per-user limit, the record's
-- retention in s.
-- Returns the order's stream id (a replay returns the recorded one), or
-- an error reply naming the refusal.
local record, stock, wallet, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local deal, price, limit, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local known = redis.call('GET', record)
if known then return known end
local left = tonumber(redis.call('HGET', stock, deal) or '0')
if left < 1 then return redis.error_reply('sold_out') end
local bought_field = 'b:' .. deal
local held = redis.call('HMGET', wallet, 'available', bought_field)
local available, bought = tonumber(held[1] or '0'), tonumber(held[2] or '0')
if bought + 1 > limit then return redis.error_reply('purchase_limit_reached') end
if available < price then return redis.error_reply('insufficient_funds') end
-- Exact integers (Lua's own number-to-text keeps 14 digits).
redis.call('HSET', stock, deal, string.format('%d', left - 1))
redis.call('HSET', wallet, 'available', string.format('%d', available - price),
  bought_field, string.format('%d', bought + 1))
local order = redis.call('XADD', stream, '*', 'deal', deal, 'amount', price)
redis.call('SET', record, order, 'EX', retention)
return order
