-- The journal position of the last restock (the journal's StockAdded)
-- added to a deal's stock_total, so a restock applied again (the sink's
-- position lost or moved back, the journal replayed into rows already
-- there) adds nothing: a single node adds a restock only when its position
-- is above this one (gateway/src/order_sink.rs, "Order"). Redis mode keeps
-- 0 here: its restock entries arrive in any order and each is recorded
-- once in order_sink_stream_entries instead (0003). 0 on the rows written
-- before this migration: their next restock applies.
ALTER TABLE deals ADD COLUMN IF NOT EXISTS restock_version bigint NOT NULL DEFAULT 0
    CHECK (restock_version >= 0);
