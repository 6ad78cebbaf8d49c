-- Rows are keyed by the deployment that wrote them as well as their id, so
-- two deployments (two data directories today, two Redis-mode deployments
-- later) writing one database cannot collide: each numbers its orders from
-- the start. A single-node deployment's id is its journal's random id
-- (made once with the data directory and kept in it). Rows written before
-- this migration belong to the one journal that wrote them, when there is
-- exactly one.

ALTER TABLE deals ADD COLUMN IF NOT EXISTS deployment_id text NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN IF NOT EXISTS deployment_id text NOT NULL DEFAULT '';
ALTER TABLE wallet_movements ADD COLUMN IF NOT EXISTS deployment_id text NOT NULL DEFAULT '';

UPDATE deals SET deployment_id = (SELECT min(journal_id) FROM order_sink_positions)
    WHERE deployment_id = '' AND (SELECT count(*) FROM order_sink_positions) = 1;
UPDATE orders SET deployment_id = (SELECT min(journal_id) FROM order_sink_positions)
    WHERE deployment_id = '' AND (SELECT count(*) FROM order_sink_positions) = 1;
UPDATE wallet_movements SET deployment_id = (SELECT min(journal_id) FROM order_sink_positions)
    WHERE deployment_id = '' AND (SELECT count(*) FROM order_sink_positions) = 1;

ALTER TABLE deals ALTER COLUMN deployment_id DROP DEFAULT;
ALTER TABLE orders ALTER COLUMN deployment_id DROP DEFAULT;
ALTER TABLE wallet_movements ALTER COLUMN deployment_id DROP DEFAULT;

ALTER TABLE deals DROP CONSTRAINT IF EXISTS deals_pkey;
ALTER TABLE deals ADD PRIMARY KEY (deployment_id, id);
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_pkey;
ALTER TABLE orders ADD PRIMARY KEY (deployment_id, id);
ALTER TABLE wallet_movements DROP CONSTRAINT IF EXISTS wallet_movements_pkey;
ALTER TABLE wallet_movements ADD PRIMARY KEY (deployment_id, id);

DROP INDEX IF EXISTS orders_deal_id;
CREATE INDEX IF NOT EXISTS orders_deployment_deal_id ON orders (deployment_id, deal_id);

-- Journal events the sink could not write because Postgres refused their
-- content (or a row with the same key and other content was already
-- there): set aside here, with the real reason, so the events after them
-- still reach the books. `event` is the engine event's debug text, with
-- every control character escaped.
CREATE TABLE IF NOT EXISTS order_sink_set_aside (
    journal_id   text NOT NULL,
    position     bigint NOT NULL,
    reason       text NOT NULL,
    event        text NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (journal_id, position)
);
