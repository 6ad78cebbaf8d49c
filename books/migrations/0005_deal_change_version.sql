-- The version of the last deal change (PATCH ends_at/paused: the journal's
-- DealChanged, Redis mode's `u` books entry) written to a deal's row, so
-- the row converges to the newest change whatever order changes arrive in
-- (gateway/src/order_sink.rs, "Order"): a change updates the row only when
-- its version is above this one. A single node's version is the event's
-- journal position; Redis mode's is the entry id of the deal's own books
-- stream `<ms>-<seq>` packed as ms * 2^20 + seq (ordered within a stream,
-- and one stream holds all of a deal's changes). 0: no change written yet,
-- as on the rows written before this migration (the next change applies).
ALTER TABLE deals ADD COLUMN IF NOT EXISTS change_version bigint NOT NULL DEFAULT 0
    CHECK (change_version >= 0);
