#!lua name=flashsale_VERSION
-- flashsale's server-side steps in Redis mode: a Redis Functions library.
--
-- One library, one function per step (`<library>_<step>`), loaded by every
-- node with FUNCTION LOAD REPLACE on every primary when it connects, and
-- again when a call answers that the function does not exist (a Redis
-- restarted empty, a new primary). The library's name carries a version,
-- `flashsale_<16 hex digits>`, a hash of this file that the node computes
-- when it is built (redis/src/steps.rs) and puts in place of the
-- `flashsale_VERSION` placeholder above and below: a node calls only the
-- library of its own build, so two builds run side by side during a
-- rolling upgrade, each with its own library.
--
-- Every step is atomic (Redis runs a function to the end before anything
-- else) and touches only the keys the caller passed, all under one hash
-- tag, so it runs on one Cluster slot:
--
--   shard steps, tag {s:K}: reserve, pay, release, credit, accounts, link,
--                           register, terms, accept, sweep_out, sweep_done,
--                           review, share, audit (read only)
--   deal steps,  tag {d:D}: create, refill, confirm, sweep_in, sold_out, update
--   global steps, tag {g}:  ids, merchant, revoke
--
-- Each step states its call in one machine-readable block of `---` lines
-- just above it, which redis/src/steps.rs defines again in Rust for the
-- callers (a unit test holds the two equal):
--   --- step: <name>
--   --- keys: <key names in order>   (a last `name...`: any number of them;
--                                      `name?`: at most one)
--   --- args: <argument names in order>  (`(a b c)...`: groups of three)
--   --- replies: <the reply tags the step may answer>
--   --- ok: <what follows 'OK' in its reply>
--   --- flags: no-writes (a read-only step, called with FCALL_RO) or -
-- The registration at the end of this file gives each step its flags.
--
-- The in-memory engine (engine/src/rules/) is the specification: each step
-- checks in the engine's order and answers what the engine would. Every step
-- is idempotent or guarded so that the cluster client's own retries, and a
-- node's retry after a timeout, never apply a change twice: reserve by its
-- idempotency key, credit by its reference, transfers by their ids, holds by
-- their status.
--
-- Replies are flat arrays whose first element says what they are:
--   {'OK', ...}       done; the rest depends on the step
--   {'ERR', code, a}  a refusal, nothing changed (engine: "a refusal changes
--                     nothing"); code names an EngineError variant
--   {'REFILL', need, total}
--                     the shard's bucket lacks `need` of the `total` units the
--                     request needs there: the node moves stock from the
--                     deal's pool (sweeping the other buckets into the pool
--                     when it is short) and retries
--   {'TERMS'}         the terms the node passed are not of the version the
--                     shard holds (or it holds none): the node reads them
--                     afresh from the deal's slot, installs their version on
--                     the shard and retries
--   {'EPOCH'}         `ids`: the deployment's epoch is not the node's: the
--                     node re-reads it and retries. A step acting for a
--                     shopper's token: the shopper's account was made in
--                     another epoch than the token's (`other_epoch`):
--                     nothing changed, the node refuses the token
--   {'BACKLOG'}       the shard's books stream is at its bound (Postgres is
--                     behind): nothing changed, the node answers 503
--
-- Steps that change what every node caches of a deal (its sold-out marker,
-- its pool after a restock, its terms) publish the deal's key on the
-- deployment's channel; nodes re-read that deal at once (redis/src/poller.rs).
-- Every deal step that changes the deal's hash (refill, sweep_in, sold_out,
-- update) counts the change in its field `c`, so a node never takes an
-- older copy of the hash over a newer one (redis/src/sums.rs).
--
-- Money is whole fen; every amount stays below 2^53 so Lua's doubles are
-- exact (the node refuses larger wallets: WALLET_FEN_MAX in redis/src/lib.rs).
--
-- The books: every step that settles an order, credits a wallet, creates,
-- restocks or changes a deal appends its row to the stream of its own slot
-- in the same call (`ns:{s:K}:books` for a shard, `ns:{d:D}:books` for a
-- deal), so no row exists in Redis without its entry or the other way
-- round. An entry is the engine event the single-node journal would hold
-- (engine/src/event.rs), as flat field/value pairs; its first field names
-- the event and holds its subject:
--   o <order JSON, as encode_order writes it>        OrderSettled (debit)
--   c <shopper> a <fen> r <reference> t <ms>          WalletCredited
--   d <deal> m <merchant> n <title> p <price fen> s <stock> l <limit>
--     b <starts ms> e <ends ms> g <registration 0|1> h <hold s> t <ms>
--                                                     DealCreated
--   r <deal> q <units> t <ms>                         StockAdded
--   u <deal> e <ends ms> p <paused 0|1> t <ms>        DealChanged
-- A replayed step returns before it appends (its idempotency record, credit
-- reference, hold status or deal's existence says it was done), so each
-- fact is appended once. Nodes read the streams through the consumer group
-- `books` and write Postgres (books/src/streams.rs).

-- This library's name (the node puts its version in place of `VERSION`);
-- each step is registered as `<LIBRARY>_<step>`.
local LIBRARY = 'flashsale_VERSION'


-- Tests only: the time the node's clock gave this call (RedisSettings::clock),
-- passed as a first argument `@ms` and taken off by the registration below;
-- nil in production.
local given_ms = nil

-- The Redis server's clock in ms: one clock for every node of a deployment
-- (a test's time instead when the node passed one).
local function now_ms()
  if given_ms then return given_ms end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The texts of the integers 0 to SMALL_MAX and back, made once: most
-- quantities, counts and shard numbers are small, and a table lookup
-- costs a fraction of tonumber's and string.format's conversions.
local SMALL_MAX = 127
local small_text, small_number = {}, {}
for n = 0, SMALL_MAX do
  local text = '' .. n -- exact below 10^14; `string` is not reachable while loading
  small_text[n], small_number[text] = text, n
end

-- A reply's or argument's decimal text as a number (0 for none).
local function num(value)
  return small_number[value] or tonumber(value) or 0
end

-- Appends one entry to a books stream (the header's layout).
local function books(stream, ...)
  redis.call('XADD', stream, '*', ...)
end

-- Whether a books stream holds `bound` entries or more (0: no bound). The
-- sinks trim what Postgres has every second, so the length is the backlog
-- plus at most a second of entries.
local function behind(stream, bound)
  return bound > 0 and redis.call('XLEN', stream) >= bound
end

local function err(code, arg)
  return {'ERR', code, arg or ''}
end

-- An account made in another epoch than the caller's token (`epoch`, the
-- epoch the node verified the token under): Redis lost its data and the
-- token's id now names an account made since (ids start from 1 again),
-- which the token must not act for (the node learns a new epoch within a
-- poll, so it may still take the old one's tokens until then). Every step
-- that makes an account writes its epoch as `e`; an account without one
-- (an older build's) and a call without an epoch ('') pass. `made`: the
-- account's `e` as read (false when it has none); `other_epoch` reads it.
local function of_other_epoch(made, epoch)
  return epoch ~= '' and made ~= false and made ~= nil and made ~= epoch
end

local function other_epoch(account, epoch)
  if epoch == '' then return false end
  return of_other_epoch(redis.call('HGET', account, 'e'), epoch)
end

-- Integers as exact decimal text: Lua's own number-to-text conversion keeps
-- only 14 significant digits, too few for money near 2^53 fen.
local function int(n)
  return small_text[n] or string.format('%d', n)
end

-- Records are JSON objects written here with exact integers (cjson's
-- encoder also keeps only 14 digits) and read back by cjson.decode and by
-- the gateway (store/redis.rs `RecordJson`).
-- An order as JSON, its fields given as decimal text (`int`, or a
-- caller's argument the node wrote) and joined without a format: the
-- buy's hot path. `hold`: the paid hold's id, or nil.
local function encode_order(id, deal, shopper, quantity, unit_price, amount, late, created_at, hold)
  return '{"id":' .. id .. ',"deal":' .. deal .. ',"shopper":' .. shopper
    .. ',"quantity":' .. quantity .. ',"unit_price":' .. unit_price .. ',"amount":'
    .. amount .. ',"late":' .. (late and 'true' or 'false') .. ',"created_at":'
    .. created_at .. (hold and (',"hold":' .. hold) or '') .. '}'
end

local function encode_hold(h)
  local order = h.order and (',"order":' .. int(h.order)) or ''
  return string.format(
    '{"id":%s,"deal":%s,"shopper":%s,"quantity":%s,"amount":%s,"created_at":%s,"expires_at":%s,"status":"%s"%s}',
    int(h.id), int(h.deal), int(h.shopper), int(h.quantity), int(h.amount),
    int(h.created_at), int(h.expires_at), h.status, order)
end

-- Ids of orders and holds carry their shard in the low 10 bits
-- (engine/src/ids.rs `compose`): sequence * 1024 + shard.
local function compose(shard, sequence)
  return sequence * 1024 + shard
end

-- ----- shard steps ------------------------------------------------------------

-- A pure function of a text remembered: `make(text)` runs once per text
-- (a false or nil result is remembered as false) until the memo holds
-- `max` texts, when it is emptied. What a call writes never depends on
-- whether a text was remembered.
local function memo(max, make)
  local entries, count = {}, 0
  return function(text)
    local value = entries[text]
    if value == nil then
      value = make(text) or false
      if count >= max then
        entries, count = {}, 0
      end
      entries[text] = value
      count = count + 1
    end
    return value
  end
end

-- The deal's terms as the node passes them, one argument
-- `version:price:limit:starts:ends:paused:registration:hold_seconds` (price
-- in fen, times in ms, flags 1|0), or nil when `held`, the version this
-- shard holds (the stock hash's `v:<deal>`), is missing or not the node's:
-- the node then reads the deal's terms afresh, installs their version here
-- (the step `terms`) and retries: a deal's first step on a shard installs
-- it there, and a change of the terms installs its new version on every
-- shard before it is answered, so no shard decides with terms older than
-- the newest it was given. A node sends the same text on every call until
-- the terms change, so each is parsed once (TERMS_PARSED_MAX texts kept).
local TERMS_PARSED_MAX = 1024
local parsed_terms = memo(TERMS_PARSED_MAX, function(text)
  local version, price, limit, starts, ends, paused, registration, hold_seconds =
    string.match(text, '^(%d+):(%d+):(%d+):(%-?%d+):(%-?%d+):([01]):([01]):(%d+)$')
  if not version then return nil end
  return {
    version = version, price = tonumber(price), price_text = price, limit = tonumber(limit),
    starts = tonumber(starts), ends = tonumber(ends), paused = paused == '1',
    registration = registration == '1', hold_seconds = tonumber(hold_seconds),
  }
end)

local function terms_of(text, held)
  local terms = parsed_terms(text)
  if not terms or held ~= terms.version then return nil end
  return terms
end

-- engine: `decide_open` (engine/src/rules/reserve.rs): whether a deal sells
-- now, whoever asks: nil, or its refusal, in this order: sold_out,
-- not_started (now < starts), deal_ended (now >= ends), deal_paused.
-- `window.sold_out` is the node's view of the deal's marker.
local function decide_open(window)
  if window.sold_out then return 'sold_out' end
  if window.now < window.starts then return 'not_started' end
  if window.now >= window.ends then return 'deal_ended' end
  if window.paused then return 'deal_paused' end
  return nil
end

-- engine: `RecordView`: what the shopper's idempotency record says of
-- this request. A record is one string, `deal:kind:quantity:outcome`.
local function record_view(record, deal, kind, quantity)
  if not record then return 'none', nil end
  local of_deal, of_kind, of_quantity, outcome =
    string.match(record, '^(%d+):(%a+):(%d+):(%d+)$')
  if of_deal ~= deal then return 'other_deal', nil end
  if of_kind ~= kind or num(of_quantity) ~= quantity then return 'other_request', nil end
  return 'same_request', outcome
end

-- engine: `decide_reserve` (engine/src/rules/reserve.rs), check for check:
--   1. a raffle: none here (Redis mode refuses to create one);
--   2. a record of this key on this deal: the same request is replayed,
--      another is idempotency_key_reused (so a retry gets its answer even
--      once the deal is sold out or over);
--   3. the window, `decide_open`. Its first check, sold out (nothing
--      remaining), is here an empty bucket the node does not know to be
--      sold out: the shard cannot see the pool and the other buckets, so
--      it asks for one unit ({'REFILL', 1, 1}) and the node answers
--      sold_out itself when there is none anywhere;
--   4. a record of this key on another deal: idempotency_key_reused;
--      (Redis only: a buy while the shard's books stream is at its bound,
--      Postgres behind: {'BACKLOG'}, nothing changed, the node answers 503)
--   5. no such shopper: not_found;
--   6. registration required and missing: not_registered;
--   7. held + bought + quantity over the limit: purchase_limit_reached
--      (doubles do not overflow: no `quantity is too large` here);
--   8. the engine's deals_per_shopper_max (capacity_reached): not checked,
--      Redis mode keeps no bound on the deals a shopper touches;
--   9. price x quantity past MONEY_MAX: cannot happen (a deal's price x
--      limit is at most WALLET_FEN_MAX, checked when it is created);
--   10. available funds below price x quantity: insufficient_funds.
-- `view` holds the deal's side (the window, its terms, the bucket) and
-- the request's (kind, quantity, record, backlog, shopper: nil or its
-- wallet's numbers). Returns a reply (a refusal or a request to the
-- node), or nil and the debit when the request may take its stock
-- (taken when the effects are applied); a replay is the caller's, which
-- checks its record first.
local function decide_reserve(view)
  if view.record == 'other_request' then return err('idempotency_key_reused') end
  if view.bucket == 0 and not view.window.sold_out then return {'REFILL', 1, 1} end
  local refused = decide_open(view.window)
  if refused then return err(refused) end
  if view.record == 'other_deal' then return err('idempotency_key_reused') end
  if view.backlog then return {'BACKLOG'} end
  local shopper = view.shopper
  if not shopper then return err('not_found', 'shopper') end
  if view.requires_registration and not shopper.registered then
    return err('not_registered')
  end
  if shopper.held + shopper.bought + view.quantity > view.per_user_limit then
    return err('purchase_limit_reached', view.per_user_limit)
  end
  local debit = view.price * view.quantity
  if shopper.available < debit then return err('insufficient_funds') end
  return nil, debit
end

-- Puts one request's outcome (a reply of its own, as flat words: the
-- tag, then its fields, `RESERVE_OUTCOME_WORDS` of them in all) into
-- `reply` after its first `at` words; returns the words it then holds.
local RESERVE_OUTCOME_WORDS = {OK = 4, ERR = 3, REFILL = 3, EPOCH = 1, BACKLOG = 1}
local function put_outcome(reply, at, outcome)
  local count = RESERVE_OUTCOME_WORDS[outcome[1]]
  for index = 1, count do
    reply[at + index] = outcome[index] or ''
  end
  return at + count
end

-- The stock hash's fields of a deal, by the deal's id as text, made once
-- per deal (DEAL_FIELDS_MAX deals kept): b bucket, h held, s sold, n
-- buyers, r registered (an account's field), v terms' version.
local DEAL_FIELDS_MAX = 1024
local fields_of = memo(DEAL_FIELDS_MAX, function(deal)
  return {b = 'b:' .. deal, h = 'h:' .. deal, s = 's:' .. deal, n = 'n:' .. deal,
    r = 'r:' .. deal, v = 'v:' .. deal}
end)

-- The one view every `reserve` call fills in (`decide_reserve`'s; a
-- call runs alone, to its end, so none sees another's): its window and
-- the shopper's wallet numbers (`shopper_of`, set as `shopper` when the
-- account exists).
local reserve_view = {
  window = {sold_out = false, now = 0, starts = 0, ends = 0, paused = false},
  requires_registration = false, per_user_limit = 0, price = 0,
  kind = nil, quantity = nil, record = nil, bucket = nil, backlog = nil, shopper = nil,
  shopper_of = {available = 0, bought = 0, held = 0, registered = false},
}

-- The tables every `reserve` call fills from their start and reads only
-- as far as it filled them, reused so that no call grows tables of its
-- own: its reply (ended by a nil word: Redis reads a returned table up
-- to its first nil), the orders it wrote (id, JSON, id, JSON, ...), their
-- ids, and the shoppers it recorded.
local reserve_reply, reserve_orders, reserve_order_ids, reserve_recorded = {}, {}, {}, {}

-- Keys and arguments of `reserve` before its requests, and per request.
local RESERVE_KEYS, RESERVE_ARGS, REQUEST_KEYS, REQUEST_ARGS = 8, 5, 1, 5

-- reserve: one-tap buys (kind 'order') and holds (kind 'hold') of one deal
-- on one shard, any number of them, each with its own outcome, decided in
-- order as if each were a call of its own: the node sends together the
-- requests of a shard and deal that arrive while its previous call for
-- them is in flight (redis/src/batch.rs). For each request: reads what
-- `decide_reserve` needs, decides, then takes the stock and applies the
-- effects (engine: `reserve`, `commit_order`, `commit_hold`). The shard's
-- numbers of the deal (its held units only when the call holds), the
-- clock and the books' backlog are read once per call, and the shard's
-- stock hash, orders hash, deal order list and record set written once at
-- its end; each request reads its account once (the wallet numbers its
-- kind changes, the epoch, the record, the registration only when the
-- deal requires one) and writes it once (wallet, record, the order's id),
-- and appends its own books entry.
-- Keys: the shard's stock, orders, holds, expiries, sequences; the deal's
-- order list and record set on the shard; the books stream; then per
-- request the account, which keeps the request's idempotency record as
-- `k:<key>` and its orders' ids as `o:<id>` (value: the deal). Args:
-- sold_out: the node's flag (1|0); backlog: the books stream's bound
-- (entries; 0: none); terms: the node's copy of the deal's terms
-- (`terms_of`); then per request the shopper, kind ('order' or 'hold'),
-- quantity, epoch (the caller's token's: `other_epoch`) and idempotency
-- key. OK: per request one outcome, a reply of its own as flat words
-- (`put_outcome`): OK kind <the record's JSON> <1 when replayed, else
-- 0>, ERR code arg, REFILL need total, EPOCH or BACKLOG; TERMS for the
-- whole call.
--- step: reserve
--- keys: stock orders holds expiries sequences deal_orders records books account...
--- args: deal shard sold_out backlog terms (shopper kind quantity epoch key)...
--- replies: OK TERMS
--- ok: (outcome)...
--- flags: -
local function reserve(keys, args)
  local call = redis.call
  local stock, orders, stream = keys[1], keys[2], keys[8]
  local deal, shard = args[1], num(args[2])
  local bound = num(args[4])
  local f = fields_of(deal)
  local b, h = f.b, f.h
  -- Whether the call holds (a kind other than 'order' is a hold, as
  -- below): only then are the held units read and written.
  local holding = false
  for at = RESERVE_ARGS + 2, #args, REQUEST_ARGS do
    if args[at] ~= 'order' then holding = true end
  end
  -- Read once: the shard's numbers of the deal with its terms' version
  -- (not the node's: the node refreshes its terms and retries), the clock.
  local counts
  if holding then
    counts = call('HMGET', stock, f.v, b, f.s, f.n, 'order', h)
  else
    counts = call('HMGET', stock, f.v, b, f.s, f.n, 'order')
  end
  local terms = terms_of(args[5], counts[1])
  if not terms then return {'TERMS'} end
  -- The shard's numbers as this call's requests change them.
  local bucket, sold, buyers = num(counts[2]), num(counts[3]), num(counts[4])
  local sequence, held = num(counts[5]), num(counts[6])
  -- The books stream's length: read at the first order that asks, then
  -- counted on as this call appends.
  local length = nil
  local now = now_ms()
  local now_text = int(now)
  local price_text, registration = terms.price_text, terms.registration
  -- The view `decide_reserve` reads: the deal's side set for the call,
  -- the request's afresh for each request.
  local view, window, shopper_view = reserve_view, reserve_view.window, reserve_view.shopper_of
  window.sold_out, window.now, window.starts = args[3] == '1', now, terms.starts
  window.ends, window.paused = terms.ends, terms.paused
  view.requires_registration, view.per_user_limit = registration, terms.limit
  view.price = terms.price
  local reply, order_fields, order_ids, recorded = reserve_reply, reserve_orders,
    reserve_order_ids, reserve_recorded
  reply[1] = 'OK'
  local words, orders_written, recorded_count = 1, 0, 0
  for first = RESERVE_KEYS + 1, #keys, REQUEST_KEYS do
    local account = keys[first]
    local at = RESERVE_ARGS + 1 + (first - RESERVE_KEYS - 1) / REQUEST_KEYS * REQUEST_ARGS
    local shopper, kind, quantity_text = args[at], args[at + 1], args[at + 2]
    local quantity = num(quantity_text)
    local record_field = 'k:' .. args[at + 4]
    -- Read: the wallet numbers this kind changes with the epoch the
    -- account was made in, the record, the registration when required.
    local spent_or_held = kind == 'order' and 'spent' or 'held'
    local wallet
    if registration then
      wallet = call('HMGET', account, 'available', spent_or_held, b, h, 'e', record_field, f.r)
    else
      wallet = call('HMGET', account, 'available', spent_or_held, b, h, 'e', record_field)
    end
    local record, outcome = 'none', nil
    if wallet[6] then record, outcome = record_view(wallet[6], deal, kind, quantity) end
    local refused, debit
    if of_other_epoch(wallet[5], args[at + 3]) then
      words = words + 1
      reply[words] = 'EPOCH'
    elseif record == 'same_request' then
      -- The replayed record: an order written earlier in this call is
      -- still among this call's orders (the orders hash is written at the
      -- call's end).
      local body
      if kind == 'order' then
        for index = 1, orders_written, 2 do
          if order_fields[index] == outcome then body = order_fields[index + 1] end
        end
        body = body or call('HGET', orders, outcome)
      else
        body = call('HGET', keys[3], outcome)
      end
      words = put_outcome(reply, words, {'OK', kind, body, '1'})
    else
      if kind == 'order' and bound > 0 and not length then length = call('XLEN', stream) end
      view.kind, view.quantity, view.record = kind, quantity, record
      view.bucket, view.backlog = bucket, kind == 'order' and length ~= nil and length >= bound
      view.shopper = nil
      if wallet[1] then
        shopper_view.available, shopper_view.bought = num(wallet[1]), num(wallet[3])
        shopper_view.held, shopper_view.registered = num(wallet[4]), wallet[7] == '1'
        view.shopper = shopper_view
      end
      -- Decide.
      refused, debit = decide_reserve(view)
      if not refused and bucket < quantity then
        -- engine: `deal.stock.try_take`: here the shard's bucket of the
        -- deal; short, the node refills it and retries (nothing written).
        refused = {'REFILL', quantity - bucket, quantity}
      end
      if refused then
        words = put_outcome(reply, words, refused)
      else
        -- Apply: from here on nothing can fail.
        local id_text, body
        local available = int(shopper_view.available - debit)
        local total = int(num(wallet[2]) + debit)
        bucket = bucket - quantity
        if kind == 'order' then
          -- engine: `commit_order`.
          id_text = int(compose(shard, sequence))
          sequence = sequence + 1
          call('HSET', account, 'available', available, 'spent', total,
            b, int(shopper_view.bought + quantity),
            record_field, deal .. ':order:' .. quantity_text .. ':' .. id_text,
            'o:' .. id_text, deal)
          sold = sold + quantity
          -- engine: `counts_new_buyer`.
          if shopper_view.bought == 0 then buyers = buyers + 1 end
          -- One unit's amount is the price, already text.
          body = encode_order(id_text, deal, shopper, quantity_text, price_text,
            quantity == 1 and price_text or int(debit), false, now_text, nil)
          order_fields[orders_written + 1], order_fields[orders_written + 2] = id_text, body
          orders_written = orders_written + 2
          order_ids[orders_written / 2] = id_text
          -- engine: the OrderSettled event, for the books.
          call('XADD', stream, '*', 'o', body)
          if length then length = length + 1 end
        else
          -- engine: `commit_hold` / `reserve_for`; `hold_expiry`.
          local id = compose(shard, call('HINCRBY', keys[5], 'hold', 1) - 1)
          local expires_at = now + terms.hold_seconds * 1000
          id_text = int(id)
          call('HSET', account, 'available', available, 'held', total,
            h, int(shopper_view.held + quantity),
            record_field, deal .. ':hold:' .. quantity_text .. ':' .. id_text)
          held = held + quantity
          body = encode_hold({id = id, deal = num(deal), shopper = num(shopper),
            quantity = quantity, amount = debit, created_at = now,
            expires_at = expires_at, status = 'active'})
          call('HSET', keys[3], id_text, body)
          call('ZADD', keys[4], int(expires_at), id_text)
        end
        recorded_count = recorded_count + 1
        recorded[recorded_count] = shopper
        reply[words + 1], reply[words + 2], reply[words + 3], reply[words + 4] = 'OK', kind, body, '0'
        words = words + 4
      end
    end
  end
  reply[words + 1] = nil
  -- Write once what the requests changed of the shard.
  if recorded_count > 0 then
    if holding then
      call('HSET', stock, b, int(bucket), f.s, int(sold), f.n, int(buyers),
        'order', int(sequence), h, int(held))
    else
      call('HSET', stock, b, int(bucket), f.s, int(sold), f.n, int(buyers),
        'order', int(sequence))
    end
    call('SADD', keys[7], unpack(recorded, 1, recorded_count))
  end
  if orders_written > 0 then
    call('HSET', orders, unpack(order_fields, 1, orders_written))
    call('RPUSH', keys[6], unpack(order_ids, 1, orders_written / 2))
  end
  return reply
end

-- Gives an active hold's stock and funds back (engine: `release`); its units
-- go to this shard's bucket. `status` is 'released' or 'expired'.
local function release_hold(hold, account, stock, holds, expiries, status)
  local deal = tostring(hold.deal)
  hold.status = status
  redis.call('HSET', holds, int(hold.id), encode_hold(hold))
  redis.call('ZREM', expiries, int(hold.id))
  redis.call('HINCRBY', account, 'available', int(hold.amount))
  redis.call('HINCRBY', account, 'held', int(-hold.amount))
  redis.call('HINCRBY', account, 'h:' .. deal, -hold.quantity)
  redis.call('HINCRBY', stock, 'h:' .. deal, -hold.quantity)
  redis.call('HINCRBY', stock, 'b:' .. deal, hold.quantity)
end

-- engine: `HoldView`: what paying, releasing or expiring reads of a hold
-- (the decoded record, whether `shopper` owns it, the server's clock; the
-- sweep's '*' owns none, and `decide_expire` does not ask).
local function hold_view(hold, shopper, now)
  return {own = tostring(hold.shopper) == shopper, status = hold.status,
    order = hold.order, expires_at = hold.expires_at, now = now}
end

-- engine: `is_due`: a hold is in time while now < expires_at.
local function is_due(view)
  return view.now >= view.expires_at
end

-- engine: `decide_pay` (engine/src/rules/holds.rs): not the caller's hold:
-- forbidden; settled: hold_settled with its order; released:
-- hold_released; otherwise 'on_time' (active, not due: settled at once,
-- even while the deal is paused or after it ended), 'expire_then_late'
-- (active, due) or 'late' (expired). Returns the step, or nil and the
-- refusal.
local function decide_pay(view)
  if not view.own then return nil, err('forbidden', 'hold') end
  if view.status == 'settled' then return nil, err('hold_settled', int(view.order)) end
  if view.status == 'released' then return nil, err('hold_released') end
  if view.status == 'active' and not is_due(view) then return 'on_time' end
  if view.status == 'active' then return 'expire_then_late' end
  return 'late'
end

-- engine: `decide_late_pay`: a late payment is judged afresh like a new
-- buy, every refusal but a missing shopper answered hold_expired: the deal
-- paused or ended (now >= ends): hold_expired; no such shopper: not_found;
-- held + bought + quantity over the limit, or available funds below the
-- hold's amount: hold_expired. Returns the payment, or nil and the
-- refusal. The stock is taken when the effects are applied.
local function decide_late_pay(view)
  if view.paused or view.now >= view.ends then return nil, err('hold_expired') end
  local shopper = view.shopper
  if not shopper then return nil, err('not_found', 'shopper') end
  if shopper.held + shopper.bought + view.quantity > view.per_user_limit
    or shopper.available < view.amount then
    return nil, err('hold_expired')
  end
  return {units = view.quantity, debit = view.amount}
end

-- pay: pays a hold (engine: `pay_hold`): `decide_pay` on the hold, then,
-- late, `decide_late_pay` on the state its expiry left. On time: held
-- funds become spent, held stock sold. Late: the units are taken from the
-- bucket again and the funds from available.
-- backlog: the books stream's bound (entries; 0: none); terms: the node's
-- copy of the hold's deal's terms (`terms_of`); epoch: the caller's
-- token's (`other_epoch`: else 'EPOCH').
--- step: pay
--- keys: account stock orders holds expiries deal_orders books
--- args: hold shopper shard backlog terms epoch
--- replies: OK ERR REFILL TERMS EPOCH BACKLOG
--- ok: kind body
--- flags: -
local function pay(keys, args)
  local account, stock, orders, holds = keys[1], keys[2], keys[3], keys[4]
  local expiries, deal_orders, stream = keys[5], keys[6], keys[7]
  local id, shopper, shard = args[1], args[2], num(args[3])
  if other_epoch(account, args[6]) then return {'EPOCH'} end
  -- Read the hold (engine: a lookup, before the rule) and decide.
  local encoded = redis.call('HGET', holds, id)
  if not encoded then return err('not_found', 'hold') end
  local hold = cjson.decode(encoded)
  local now = now_ms()
  local step, refused = decide_pay(hold_view(hold, shopper, now))
  if not step then return refused end
  -- The deal's terms (not the shard's version: the node refreshes them
  -- and retries), and the books' backlog (Redis only: nothing changed).
  local deal = tostring(hold.deal)
  local terms = terms_of(args[5], redis.call('HGET', stock, 'v:' .. deal))
  if not terms then return {'TERMS'} end
  if behind(stream, num(args[4])) then return {'BACKLOG'} end
  local late = step ~= 'on_time'
  if step == 'expire_then_late' then
    -- engine: the expiry first (`release`, Expired), as the sweep would.
    release_hold(hold, account, stock, holds, expiries, 'expired')
  end
  if not late then
    -- engine: `settle`.
    redis.call('ZREM', expiries, int(hold.id))
    redis.call('HINCRBY', account, 'held', int(-hold.amount))
    redis.call('HINCRBY', stock, 'h:' .. deal, -hold.quantity)
    redis.call('HINCRBY', account, 'h:' .. deal, -hold.quantity)
  else
    -- Read what a late payment needs (after the expiry), decide, apply.
    local wallet = redis.call('HMGET', account, 'available', 'b:' .. deal, 'h:' .. deal)
    local payment
    payment, refused = decide_late_pay({
      quantity = hold.quantity, amount = hold.amount, paused = terms.paused, now = now,
      ends = terms.ends, per_user_limit = terms.limit,
      shopper = wallet[1] and {available = num(wallet[1]), bought = num(wallet[2]),
        held = num(wallet[3])} or nil,
    })
    if not payment then return refused end
    -- engine: `deal.stock.try_take`: the shard's bucket; short, the node
    -- refills it and retries (the hold stays expired).
    local bucket = num(redis.call('HGET', stock, 'b:' .. deal))
    if bucket < payment.units then
      return {'REFILL', payment.units - bucket, payment.units}
    end
    redis.call('HINCRBY', stock, 'b:' .. deal, -payment.units)
    redis.call('HINCRBY', account, 'available', int(-payment.debit))
  end
  -- engine: `settle` / `settle_late`: the order, counted as a new buyer's
  -- first (`counts_new_buyer`).
  if num(redis.call('HGET', account, 'b:' .. deal)) == 0 then
    redis.call('HINCRBY', stock, 'n:' .. deal, 1)
  end
  redis.call('HINCRBY', account, 'spent', int(hold.amount))
  redis.call('HINCRBY', account, 'b:' .. deal, hold.quantity)
  redis.call('HINCRBY', stock, 's:' .. deal, hold.quantity)
  local order_id = compose(shard, redis.call('HINCRBY', stock, 'order', 1) - 1)
  local body = encode_order(int(order_id), int(hold.deal), int(hold.shopper),
    int(hold.quantity), int(terms.price), int(hold.amount), late, int(now), int(hold.id))
  redis.call('HSET', orders, int(order_id), body)
  redis.call('RPUSH', deal_orders, int(order_id))
  redis.call('HSET', account, 'o:' .. int(order_id), deal)
  -- engine: the OrderSettled event, for the books (once: a settled hold is
  -- refused hold_settled above).
  books(stream, 'o', body)
  hold.status = 'settled'
  hold.order = order_id
  redis.call('HSET', holds, int(hold.id), encode_hold(hold))
  return {'OK', 'order', body}
end

-- engine: `decide_release`: not the caller's hold: forbidden; settled:
-- hold_settled with its order; active: released at once (even past its
-- time); released or expired: unchanged. Returns 'release' or
-- 'unchanged', or nil and the refusal.
local function decide_release(view)
  if not view.own then return nil, err('forbidden', 'hold') end
  if view.status == 'settled' then return nil, err('hold_settled', int(view.order)) end
  if view.status == 'active' then return 'release' end
  return 'unchanged'
end

-- engine: `decide_expire`: an active hold past its time expires;
-- otherwise nothing. Never refuses: 'expire' or 'unchanged'.
local function decide_expire(view)
  if view.status == 'active' and is_due(view) then return 'expire' end
  return 'unchanged'
end

-- release: DELETE /v1/holds/{id} (engine: `release_hold`), or, with
-- shopper '*', the expiry sweep of one hold whose time is up (engine:
-- `expire_holds`). Releasing a released or expired hold changes nothing.
-- account: of the hold's shopper; shopper: the caller, or '*' for the sweep;
-- epoch: the caller's token's (`other_epoch`: else 'EPOCH'; '' for the
-- sweep).
--- step: release
--- keys: account stock holds expiries
--- args: hold shopper epoch
--- replies: OK ERR EPOCH
--- ok: kind body
--- flags: -
local function release(keys, args)
  local account, stock, holds, expiries = keys[1], keys[2], keys[3], keys[4]
  local id, shopper = args[1], args[2]
  if other_epoch(account, args[3]) then return {'EPOCH'} end
  local encoded = redis.call('HGET', holds, id)
  if not encoded then return err('not_found', 'hold') end
  local hold = cjson.decode(encoded)
  local view = hold_view(hold, shopper, now_ms())
  if shopper == '*' then
    if decide_expire(view) == 'unchanged' then return {'OK', 'hold', encoded} end
    release_hold(hold, account, stock, holds, expiries, 'expired')
    return {'OK', 'hold', encode_hold(hold)}
  end
  local effect, refused = decide_release(view)
  if not effect then return refused end
  if effect == 'release' then
    release_hold(hold, account, stock, holds, expiries, 'released')
  end
  return {'OK', 'hold', encode_hold(hold)}
end

-- engine: `decide_credit` (engine/src/rules/account.rs): no such shopper:
-- not_found; the reference credited before: the same amount is a replay,
-- another idempotency_key_reused; (the engine's credits_per_shopper_max,
-- capacity_reached, is not checked in Redis mode;) the wallet's credited
-- total past `bound`: invalid amount (available never exceeds credited, so
-- the engine's two overflow checks are this one). Returns 'replay' or
-- 'credit', or nil and the refusal.
local function decide_credit(view)
  local account = view.account
  if not account then return nil, err('not_found', 'shopper') end
  if account.previous then
    if account.previous == view.amount then return 'replay' end
    return nil, err('idempotency_key_reused')
  end
  if account.credited + view.amount > view.bound then return nil, err('invalid', 'amount') end
  return 'credit'
end

-- credit: the payment provider credits a wallet (engine: `credit_wallet`);
-- the same reference again changes nothing, with another amount it is
-- idempotency_key_reused.
-- amount and bound (the largest wallet) in fen.
--- step: credit
--- keys: account books
--- args: amount reference bound shopper
--- replies: OK ERR
--- ok: credited available held spent
--- flags: -
local function credit(keys, args)
  local account, stream = keys[1], keys[2]
  local amount, reference, bound = num(args[1]), args[2], num(args[3])
  local read = redis.call('HMGET', account, 'name', 'credited', 'c:' .. reference)
  local effect, refused = decide_credit({amount = amount, bound = bound,
    account = read[1] and {credited = num(read[2]), previous = read[3] and num(read[3])}
      or nil})
  if not effect then return refused end
  if effect == 'credit' then
    redis.call('HSET', account, 'c:' .. reference, int(amount))
    redis.call('HINCRBY', account, 'credited', int(amount))
    redis.call('HINCRBY', account, 'available', int(amount))
    -- engine: the WalletCredited event, for the books (once per reference).
    books(stream, 'c', args[4], 'a', int(amount), 'r', reference, 't', int(now_ms()))
  end
  return {'OK', unpack(redis.call('HMGET', account, 'credited', 'available', 'held', 'spent'))}
end

-- accounts: creates shoppers of this shard, each wallet credited `credit`
-- fen under its own reference (engine: `create_shoppers`). Creating an
-- existing account again changes nothing (a retried call).
-- created_at in ms, credit in fen, epoch: the deployment's, which the
-- account keeps as `e` (`other_epoch`); then for each account its shopper
-- id, its name and its credit reference.
--- step: accounts
--- keys: books account...
--- args: created_at credit epoch (shopper name reference)...
--- replies: OK
--- ok:
--- flags: -
local function accounts(keys, args)
  local created, amount, epoch = args[1], num(args[2]), args[3]
  for index = 2, #keys do
    local account = keys[index]
    if redis.call('EXISTS', account) == 0 then
      local at = (index - 1) * 3 + 1
      local shopper, name, reference = args[at], args[at + 1], args[at + 2]
      redis.call('HSET', account, 'name', name, 'created_at', created, 'e', epoch,
        'credited', int(amount), 'available', int(amount), 'held', 0, 'spent', 0)
      if amount > 0 then
        redis.call('HSET', account, 'c:' .. reference, int(amount))
        -- engine: `create_shoppers` credits each wallet: WalletCredited.
        books(keys[1], 'c', shopper, 'a', int(amount), 'r', reference, 't', created)
      end
    end
  end
  return {'OK'}
end

-- link: the account of a platform's user id (engine: `link_shopper`) on
-- the shard of the shopper id that `ns:{g}:ext:shoppers` links it to (the
-- node set the link first, with HSETNX): made with its name, external id
-- and signup credit unless it exists, so whoever finds the link runs this
-- step, a crash between the link and this step is repaired by the next
-- request, and the credit lands once. created_at in ms, credit in fen,
-- epoch: the deployment's, kept as `e` (`other_epoch`). OK: 1 when this
-- call made the account (else 0), then its name, created_at and external
-- id.
--- step: link
--- keys: books account
--- args: created_at credit shopper name reference external epoch
--- replies: OK
--- ok: made name created_at external
--- flags: -
local function link(keys, args)
  local stream, account = keys[1], keys[2]
  local made = 0
  if redis.call('EXISTS', account) == 0 then
    local created, amount, reference = args[1], num(args[2]), args[5]
    redis.call('HSET', account, 'name', args[4], 'created_at', created, 'ext', args[6],
      'e', args[7], 'credited', int(amount), 'available', int(amount), 'held', 0, 'spent', 0)
    if amount > 0 then
      redis.call('HSET', account, 'c:' .. reference, int(amount))
      -- engine: the signup credit's WalletCredited.
      books(stream, 'c', args[3], 'a', int(amount), 'r', reference, 't', created)
    end
    made = 1
  end
  local read = redis.call('HMGET', account, 'name', 'created_at', 'ext')
  return {'OK', made, read[1], read[2], read[3]}
end

-- engine: `decide_register` (engine/src/rules/account.rs): no such
-- shopper: not_found; registered already: 'already' (even after the
-- start); now >= starts: registration_closed; (the engine's
-- deals_per_shopper_max, capacity_reached, is not checked in Redis mode).
-- Returns 'already' or 'register', or nil and the refusal.
local function decide_register(view)
  local shopper = view.shopper
  if not shopper then return nil, err('not_found', 'shopper') end
  if shopper.registered then return 'already' end
  if view.now >= view.starts then return nil, err('registration_closed') end
  return 'register'
end

-- register: a shopper registers for a deal before it starts (engine:
-- `register`): 'new' or 'again'.
-- terms: the node's copy of the deal's terms (`terms_of`); epoch: the
-- caller's token's (`other_epoch`: else 'EPOCH').
--- step: register
--- keys: account stock
--- args: deal terms epoch
--- replies: OK ERR TERMS EPOCH
--- ok: outcome
--- flags: -
local function register(keys, args)
  local account, stock, deal = keys[1], keys[2], args[1]
  if other_epoch(account, args[3]) then return {'EPOCH'} end
  local terms = terms_of(args[2], redis.call('HGET', stock, 'v:' .. deal))
  if not terms then return {'TERMS'} end
  local read = redis.call('HMGET', account, 'name', 'r:' .. deal)
  local effect, refused = decide_register({now = now_ms(), starts = terms.starts,
    shopper = read[1] and {registered = read[2] == '1'} or nil})
  if not effect then return refused end
  if effect == 'already' then return {'OK', 'again'} end
  redis.call('HSET', account, 'r:' .. deal, 1)
  redis.call('HINCRBY', stock, 'g:' .. deal, 1)
  return {'OK', 'new'}
end

-- terms: installs the version of a deal's terms on a shard (the stock
-- hash's `v:<deal>`, which `terms_of` checks) unless it holds this or a
-- newer one (the version only grows).
--- step: terms
--- keys: stock
--- args: deal version
--- replies: OK
--- ok: outcome
--- flags: -
local function install_terms(keys, args)
  local field = 'v:' .. args[1]
  if num(redis.call('HGET', keys[1], field)) >= num(args[2]) then return {'OK', 'kept'} end
  redis.call('HSET', keys[1], field, args[2])
  return {'OK', 'installed'}
end

-- accept: the shard half of a pool-to-bucket transfer: adds the units to the
-- bucket once per transfer id, however often it is called.
--- step: accept
--- keys: stock accepted
--- args: deal transfer units
--- replies: OK
--- ok:
--- flags: -
local function accept(keys, args)
  if redis.call('SADD', keys[2], args[1] .. ':' .. args[2]) == 1 then
    redis.call('HINCRBY', keys[1], 'b:' .. args[1], num(args[3]))
  end
  return {'OK'}
end

-- sweep_out: takes all of a deal's units out of this shard's bucket, under a
-- new sweep id, to be added to the deal's pool (sweep_in). Pending sweeps
-- are kept until sweep_done so a crash strands nothing, and every sweep of
-- the deal still pending on this shard (one whose node died, or never heard
-- the reply) is returned too, so the caller finishes it now: units on their
-- way to the pool are never left there while the deal is judged sold out
-- (engine: stock is only ever in one place, and sold out means none left).
-- Reply: {'OK', id, units, id, units, ...}: every pending sweep of the deal,
-- this one included; just {'OK'} when there is none.
--- step: sweep_out
--- keys: stock pending sequences
--- args: deal shard
--- replies: OK
--- ok: (sweep units)...
--- flags: -
local function sweep_out(keys, args)
  local stock, pending, sequences = keys[1], keys[2], keys[3]
  local deal, shard = args[1], args[2]
  local units = num(redis.call('HGET', stock, 'b:' .. deal))
  if units > 0 then
    local id = shard .. '.' .. int(redis.call('HINCRBY', sequences, 'sweep', 1))
    redis.call('HSET', stock, 'b:' .. deal, 0)
    redis.call('HSET', pending, id, deal .. ':' .. int(units))
  end
  local reply = {'OK'}
  local entries = redis.call('HGETALL', pending)
  for i = 1, #entries, 2 do
    local of_deal, amount = string.match(entries[i + 1], '^(%d+):(%d+)$')
    if of_deal == deal then
      reply[#reply + 1] = entries[i]
      reply[#reply + 1] = num(amount)
    end
  end
  return reply
end

-- sweep_done: the sweep reached the pool; forget it.
--- step: sweep_done
--- keys: pending
--- args: sweep
--- replies: OK
--- ok:
--- flags: -
local function sweep_done(keys, args)
  redis.call('HDEL', keys[1], args[1])
  return {'OK'}
end

-- A settled order by id (engine: a lookup, before the rule), or not_found.
local function order_of(orders, id)
  local encoded = redis.call('HGET', orders, id)
  if not encoded then return nil, err('not_found', 'order') end
  return cjson.decode(encoded)
end

-- engine: `decide_review`: not the caller's order: forbidden; reviewed
-- already: already_reviewed. Returns the sum of its scores for the
-- merchant's rating, or nil and the refusal.
local function decide_review(view)
  if not view.own then return nil, err('forbidden', 'order') end
  if view.reviewed then return nil, err('already_reviewed') end
  return view.scores[1] + view.scores[2] + view.scores[3]
end

-- review: the order's shopper reviews it once (engine: `review`); the
-- merchant's rating sums on this shard count it in the same step.
-- account: the caller's on the order's shard; epoch: the caller's token's
-- (`other_epoch`: else 'EPOCH').
--- step: review
--- keys: orders reviews ratings account
--- args: order shopper merchant description delivery service text created_at epoch
--- replies: OK ERR EPOCH
--- ok: deal
--- flags: -
local function review(keys, args)
  local orders, reviews, ratings = keys[1], keys[2], keys[3]
  local id, shopper, merchant = args[1], args[2], args[3]
  if other_epoch(keys[4], args[9]) then return {'EPOCH'} end
  local order, missing = order_of(orders, id)
  if not order then return missing end
  local scores = {num(args[4]), num(args[5]), num(args[6])}
  local sum, refused = decide_review({own = tostring(order.shopper) == shopper,
    reviewed = redis.call('HEXISTS', reviews, id) == 1, scores = scores})
  if not sum then return refused end
  redis.call('HSET', reviews, id, cjson.encode({description = scores[1],
    delivery = scores[2], service = scores[3], text = args[7],
    created_at = args[8], merchant = merchant}))
  redis.call('HINCRBY', ratings, 'n:' .. merchant, 1)
  redis.call('HINCRBY', ratings, 's:' .. merchant, sum)
  return {'OK', int(order.deal)}
end

-- engine: `decide_share`: not the caller's order: forbidden; shared
-- already: 'already'; otherwise 'count'. Returns it, or nil and the
-- refusal.
local function decide_share(view)
  if not view.own then return nil, err('forbidden', 'order') end
  if view.shared then return 'already' end
  return 'count'
end

-- share: counts a shared order toward its deal's popularity once (engine:
-- `share`): 'new' or 'again'. account: the caller's on the order's
-- shard; epoch: the caller's token's (`other_epoch`: else 'EPOCH').
--- step: share
--- keys: orders shared stock account
--- args: order shopper epoch
--- replies: OK ERR EPOCH
--- ok: outcome
--- flags: -
local function share(keys, args)
  local orders, shared, stock = keys[1], keys[2], keys[3]
  if other_epoch(keys[4], args[3]) then return {'EPOCH'} end
  local order, missing = order_of(orders, args[1])
  if not order then return missing end
  local effect, refused = decide_share({own = tostring(order.shopper) == args[2],
    shared = redis.call('SISMEMBER', shared, args[1]) == 1})
  if not effect then return refused end
  if effect == 'already' then return {'OK', 'again'} end
  redis.call('SADD', shared, args[1])
  redis.call('HINCRBY', stock, 'x:' .. int(order.deal), 1)
  return {'OK', 'new'}
end

-- audit: a read-only snapshot of one shard for `flashsale audit`
-- (gateway/src/audit.rs), taken atomically so that the shard's own
-- invariants can be checked while sales go on (engine:
-- `Engine::check_invariants`, per shard): its stock hash, every order and
-- hold, and the wallets of the accounts passed.
-- Reply: {'OK', stock field/value list, orders (JSON), holds (JSON), then
-- per account {credited, available, held, spent} (nil for no account)}
--- step: audit
--- keys: stock orders holds account...
--- args:
--- replies: OK
--- ok: stock orders holds wallets
--- flags: no-writes
local function audit(keys, args)
  local wallets = {}
  for index = 4, #keys do
    wallets[#wallets + 1] = redis.call('HMGET', keys[index], 'credited', 'available', 'held', 'spent')
  end
  return {'OK', redis.call('HGETALL', keys[1]), redis.call('HVALS', keys[2]),
    redis.call('HVALS', keys[3]), wallets}
end

-- ----- deal steps ---------------------------------------------------------------

-- create: a new deal (engine: `create_deal`, validated by the node): its
-- hash with the whole stock in the pool, and its DealCreated entry. A
-- retried call finds the hash and changes nothing.
-- price in fen; starts, ends, created_at in ms; registration 0|1.
--- step: create
--- keys: deal books
--- args: merchant title price stock limit starts ends registration hold_seconds created_at
--- replies: OK
--- ok:
--- flags: -
local function create(keys, args)
  local deal, stream = keys[1], keys[2]
  if redis.call('EXISTS', deal) == 1 then return {'OK'} end
  local merchant, title, price, stock = args[1], args[2], args[3], args[4]
  local limit, starts, ends, registration = args[5], args[6], args[7], args[8]
  local hold_seconds, created = args[9], args[10]
  redis.call('HSET', deal, 'merchant', merchant, 'title', title, 'price', price,
    'limit', limit, 'starts', starts, 'ends', ends, 'paused', 0,
    'registration', registration, 'hold_seconds', hold_seconds, 'created_at', created,
    'total', stock, 'pool', stock, 'sold_out', 0, 'version', 1)
  local id = string.match(deal, '{d:(%d+)}')
  books(stream, 'd', id, 'm', merchant, 'n', title, 'p', price, 's', stock, 'l', limit,
    'b', starts, 'e', ends, 'g', registration, 'h', hold_seconds, 't', created)
  return {'OK'}
end

-- refill: moves units from the deal's pool towards one shard's bucket under
-- a new transfer id: at least `need`, more while the pool is large (a
-- chunk of pool / (2 * shards), so the chunk shrinks as the pool drains and
-- little stock waits in other buckets at the end), never more than the pool.
-- The transfer stays pending until confirm, so a crash between here and
-- accept is finished by the reconciler.
-- Reply: {'OK', transfer id, units, pool left}; units 0 (nothing moved) when
-- the pool holds fewer than `need` (engine: `try_take` takes all or nothing).
--- step: refill
--- keys: deal transfers
--- args: shard need shards
--- replies: OK
--- ok: transfer units pool
--- flags: -
local function refill(keys, args)
  local deal, pending = keys[1], keys[2]
  local shard, need, shards = args[1], num(args[2]), num(args[3])
  local pool = num(redis.call('HGET', deal, 'pool'))
  if pool < need or pool <= 0 then return {'OK', '', 0, pool} end
  local units = math.max(need, math.floor(pool / (2 * shards)))
  units = math.min(units, pool)
  local id = redis.call('HINCRBY', deal, 'transfers', 1)
  redis.call('HINCRBY', deal, 'pool', -units)
  redis.call('HINCRBY', deal, 'c', 1)
  redis.call('HSET', pending, id, shard .. ':' .. int(units) .. ':' .. int(now_ms()))
  return {'OK', int(id), units, pool - units}
end

-- confirm: the transfer reached its bucket; forget it.
--- step: confirm
--- keys: transfers
--- args: transfer
--- replies: OK
--- ok:
--- flags: -
local function confirm(keys, args)
  redis.call('HDEL', keys[1], args[1])
  return {'OK'}
end

-- sweep_in: adds a sweep's units to the pool once per sweep id, and clears
-- the sold-out marker (engine: stock put back clears `sold_out`).
--- step: sweep_in
--- keys: deal accepted
--- args: sweep units channel
--- replies: OK
--- ok:
--- flags: -
local function sweep_in(keys, args)
  local deal, accepted = keys[1], keys[2]
  if redis.call('SADD', accepted, args[1]) == 1 then
    redis.call('HINCRBY', deal, 'pool', num(args[2]))
    redis.call('HINCRBY', deal, 'c', 1)
    if redis.call('HGET', deal, 'sold_out') == '1' then
      redis.call('HSET', deal, 'sold_out', 0)
      redis.call('PUBLISH', args[3], keys[1])
    end
  end
  return {'OK'}
end

-- sold_out: sets the deal's sold-out marker when its pool is empty and no
-- transfer is on its way to a bucket (the caller has swept every bucket).
--- step: sold_out
--- keys: deal transfers
--- args: channel
--- replies: OK
--- ok: marked
--- flags: -
local function sold_out(keys, args)
  if num(redis.call('HGET', keys[1], 'pool')) > 0 or redis.call('HLEN', keys[2]) > 0 then
    return {'OK', 0}
  end
  if redis.call('HGET', keys[1], 'sold_out') ~= '1' then
    redis.call('HSET', keys[1], 'sold_out', 1)
    redis.call('HINCRBY', keys[1], 'c', 1)
    redis.call('PUBLISH', args[1], keys[1])
  end
  return {'OK', 1}
end

-- engine: `decide_deal_change` (engine/src/rules/deal.rs): not the
-- caller's deal: forbidden; (add_stock 0 is refused by the node before the
-- call, with the engine's own reason;) total + add_stock past `stock_max`:
-- invalid add_stock; ends_at at or before the start or now: invalid
-- ends_at. Returns the effects {restock = units or nil, terms = {ends,
-- paused} or nil: the deal's end and pause after the change, each one not
-- given keeping its current value}, or nil and the refusal. Values are
-- kept as the text Redis stores.
local function decide_deal_change(view)
  if not view.own then return nil, err('forbidden', 'deal') end
  local change = view.change
  if change.add_stock ~= '' and view.total + num(change.add_stock) > view.stock_max then
    return nil, err('invalid', 'add_stock')
  end
  if change.ends_at ~= ''
    and (num(change.ends_at) <= view.starts or num(change.ends_at) <= view.now) then
    return nil, err('invalid', 'ends_at')
  end
  local terms = nil
  if change.ends_at ~= '' or change.paused ~= '' then
    terms = {
      ends = change.ends_at ~= '' and change.ends_at or view.ends,
      paused = change.paused ~= '' and change.paused or view.paused,
    }
  end
  return {restock = change.add_stock ~= '' and change.add_stock or nil, terms = terms}
end

-- update: PATCH /v1/deals/{id} by its merchant (engine: `update_deal`):
-- restock adds to the pool and the total and clears the sold-out marker;
-- ends_at and paused bump the terms' version. The caller has validated the
-- change against the terms it read; `ends_at` is re-checked against the
-- server's clock.
-- add_stock, ends_at: '' when not changed; paused: '1', '0' or ''; stock_max:
-- the bound on the total (STOCK_MAX).
--- step: update
--- keys: deal books
--- args: merchant add_stock ends_at paused stock_max channel
--- replies: OK ERR
--- ok:
--- flags: -
local function update(keys, args)
  local deal, stream = keys[1], keys[2]
  local id = string.match(deal, '{d:(%d+)}')
  local merchant, channel = args[1], args[6]
  -- Read (engine: the deal's lookup, before the rule), decide, apply.
  local current = redis.call('HMGET', deal, 'merchant', 'total', 'starts', 'ends', 'paused')
  if not current[1] then return err('not_found', 'deal') end
  local effects, refused = decide_deal_change({
    own = current[1] == merchant,
    change = {add_stock = args[2], ends_at = args[3], paused = args[4]},
    total = num(current[2]), stock_max = num(args[5]), starts = num(current[3]),
    ends = current[4], paused = current[5], now = now_ms(),
  })
  if not effects then return refused end
  redis.call('HINCRBY', deal, 'c', 1)
  -- engine: the restock first, so no buy takes a unit before its entry.
  if effects.restock then
    redis.call('HINCRBY', deal, 'total', num(effects.restock))
    redis.call('HINCRBY', deal, 'pool', num(effects.restock))
    -- engine: the StockAdded event, for the books.
    books(stream, 'r', id, 'q', effects.restock, 't', int(now_ms()))
    if redis.call('HGET', deal, 'sold_out') == '1' then
      redis.call('HSET', deal, 'sold_out', 0)
      redis.call('PUBLISH', channel, deal)
    end
  end
  if effects.terms then
    redis.call('HSET', deal, 'ends', effects.terms.ends, 'paused', effects.terms.paused)
    redis.call('HINCRBY', deal, 'version', 1)
    -- engine: the DealChanged event (the deal's end and pause after it).
    books(stream, 'u', id, 'e', effects.terms.ends, 'p', effects.terms.paused,
      't', int(now_ms()))
    redis.call('PUBLISH', channel, deal)
  end
  return {'OK'}
end

-- ----- global steps -------------------------------------------------------------

-- ids: hands out `count` new ids of a kind (merchant, shopper, deal) from the
-- deployment's sequences, only under the epoch the node knows (after
-- Redis lost its data the sequences start again from 1, and a node
-- that has not seen the new epoch must not number or sign an account as if
-- nothing happened; it gets 'EPOCH', learns the epoch, and asks again). A
-- deal's id goes into the deal index (keys[3]) in the same step, before the
-- node writes the deal: a deal is listed as soon as it exists, and an id
-- indexed without a deal (a node died in between) is skipped by readers.
-- keys: the id sequences, the epoch, the deal index (deals only); args: the
-- kind, how many, the node's epoch. OK: the last id handed out.
--- step: ids
--- keys: sequences epoch index?
--- args: kind count node_epoch
--- replies: OK EPOCH
--- ok: last
--- flags: -
local function ids(keys, args)
  if redis.call('GET', keys[2]) ~= args[3] then return {'EPOCH'} end
  local last = redis.call('HINCRBY', keys[1], args[1], num(args[2]))
  if keys[3] then redis.call('ZADD', keys[3], last, last) end
  return {'OK', last}
end

-- merchant: the merchant of a platform's user id (engine: `link_merchant`)
-- under the id that `ns:{g}:ext:merchants` links it to: made with its name
-- and external id unless it exists (as `link`). created_at in ms. OK: 1
-- when this call made it (else 0), then its name and created_at.
--- step: merchant
--- keys: merchant
--- args: name created_at external
--- replies: OK
--- ok: made name created_at
--- flags: -
local function merchant(keys, args)
  local made = 0
  if redis.call('EXISTS', keys[1]) == 0 then
    redis.call('HSET', keys[1], 'name', args[1], 'created_at', args[2], 'ext', args[3])
    made = 1
  end
  local read = redis.call('HMGET', keys[1], 'name', 'created_at')
  return {'OK', made, read[1], read[2]}
end

-- ----- tokens -------------------------------------------------------------------

-- Revokes an account's tokens: its not-before time becomes `not_before` (the
-- node's clock + 1 ms, engine/src/rules/tokens.rs) or stays a later one. The
-- time in force is appended to the revocations stream, which every node reads
-- on from where it left off (redis/src/tokens.rs), and the stream's key is
-- published on the channel so nodes read it at once. keys: the not-before
-- hash (account -> ms), the revocations stream; args: the account as the API
-- spells it (`s_2a`, `m_1`), the time, the bound on revoked accounts, the
-- channel. OK: the time in force. Refused `capacity_reached` when the account
-- is new and `bound` accounts have a time (TOKEN_REVOCATIONS_MAX).
--- step: revoke
--- keys: times revocations
--- args: account not_before bound channel
--- replies: OK ERR
--- ok: in_force
--- flags: -
local function revoke(keys, args)
  local earlier = redis.call('HGET', keys[1], args[1])
  local in_force = num(args[2])
  if earlier then
    in_force = math.max(num(earlier), in_force)
  elseif redis.call('HLEN', keys[1]) >= num(args[3]) then
    return err('capacity_reached', 'token_revocations_max')
  end
  redis.call('HSET', keys[1], args[1], int(in_force))
  redis.call('XADD', keys[2], 'MAXLEN', '~', args[3], '*', 'a', args[1], 'n', int(in_force))
  redis.call('PUBLISH', args[4], keys[2])
  return {'OK', int(in_force)}
end

-- ----- registration -------------------------------------------------------------

-- Every step, with its flags (`no-writes`: read only, called with FCALL_RO).
local steps = {
  {'reserve', reserve, {}},
  {'pay', pay, {}},
  {'release', release, {}},
  {'credit', credit, {}},
  {'accounts', accounts, {}},
  {'link', link, {}},
  {'register', register, {}},
  {'terms', install_terms, {}},
  {'accept', accept, {}},
  {'sweep_out', sweep_out, {}},
  {'sweep_done', sweep_done, {}},
  {'review', review, {}},
  {'share', share, {}},
  {'audit', audit, {'no-writes'}},
  {'create', create, {}},
  {'refill', refill, {}},
  {'confirm', confirm, {}},
  {'sweep_in', sweep_in, {}},
  {'sold_out', sold_out, {}},
  {'update', update, {}},
  {'ids', ids, {}},
  {'merchant', merchant, {}},
  {'revoke', revoke, {}},
}
for index = 1, #steps do
  local step = steps[index]
  local callback = step[2]
  redis.register_function{
    function_name = LIBRARY .. '_' .. step[1],
    callback = function(keys, args)
      -- A first argument `@ms` is a test's time (now_ms), not the step's.
      given_ms = nil
      local first = args[1]
      if first and string.byte(first, 1) == 64 then -- '@'
        given_ms = tonumber(string.sub(first, 2))
        table.remove(args, 1)
      end
      return callback(keys, args)
    end,
    flags = step[3],
  }
end
