-- The merchant's books, written by the order sink (gateway/src/order_sink.rs)
-- from the journal. Ids are the engine ids' text (o_1f, d_2, s_9); money is
-- numeric(18,2) yuan; times are UTC.

CREATE TABLE IF NOT EXISTS deals (
    id                    text PRIMARY KEY,
    merchant_id           text NOT NULL,
    title                 text NOT NULL,
    price                 numeric(18,2) NOT NULL,
    -- initial stock plus every restock
    stock_total           bigint NOT NULL,
    per_user_limit        integer NOT NULL,
    starts_at             timestamptz NOT NULL,
    ends_at               timestamptz NOT NULL,
    requires_registration boolean NOT NULL,
    hold_seconds          integer NOT NULL,
    paused                boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS orders (
    id          text PRIMARY KEY,
    deal_id     text NOT NULL,
    shopper_id  text NOT NULL,
    quantity    bigint NOT NULL,
    unit_price  numeric(18,2) NOT NULL,
    amount      numeric(18,2) NOT NULL,
    late        boolean NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_deal_id ON orders (deal_id);

-- Credits (id c_<shopper hex>_<reference digest>) and order debits (id = the
-- order id). amount is always positive; kind says the direction.
CREATE TABLE IF NOT EXISTS wallet_movements (
    id          text PRIMARY KEY,
    shopper_id  text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('credit', 'debit')),
    amount      numeric(18,2) NOT NULL CHECK (amount > 0),
    order_id    text,
    created_at  timestamptz NOT NULL
);

-- The last journal position applied, per journal (a data directory's random
-- id), written in the same transaction as the rows.
CREATE TABLE IF NOT EXISTS order_sink_positions (
    journal_id  text PRIMARY KEY,
    position    bigint NOT NULL CHECK (position >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
