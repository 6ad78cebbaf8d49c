-- Redis mode's books streams (gateway/src/order_sink/streams.rs): orders,
-- credits and deals are keyed by (deployment_id, id), so applying an entry
-- twice adds nothing; a restock adds to deals.stock_total, so each restock
-- entry applied is recorded here, in the same transaction as its UPDATE,
-- and an entry already here is not applied again.
CREATE TABLE IF NOT EXISTS order_sink_stream_entries (
    deployment_id text NOT NULL,
    stream        text NOT NULL,
    entry_id      text NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, stream, entry_id)
);
