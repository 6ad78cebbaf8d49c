-- Raffle deals (issue #14) in the books: who registered, when the draw ran
-- and what it revealed, and how the ranking was walked (each place offered a
-- hold or passed over, and what became of the hold). Written by the order
-- sink (gateway/src/order_sink.rs) from the journal's Registered, DrawRun,
-- DrawOffered, DrawPassedOver and HoldReleased events; every row is keyed by
-- (deployment_id, id) like the tables of 0001-0002. Seeds, commitments and
-- hashes are 64 lowercase hex digits, as the API prints them.
--
-- The seed is secret until the draw (knowing it early lets anyone pick the
-- winners), so it is never on deals: it reaches Postgres only on draws, from
-- the DrawRun event, which the engine journals once the draw has run.

-- A deal's allocation (first_come or raffle) and, for a raffle, SHA-256 of
-- its seed, public from creation. Deals written before this migration are
-- first_come here (a raffle written by the build that added raffles but
-- not this migration reads first_come, without its commitment).
ALTER TABLE deals ADD COLUMN IF NOT EXISTS allocation text NOT NULL DEFAULT 'first_come'
    CHECK (allocation IN ('first_come', 'raffle'));
ALTER TABLE deals ADD COLUMN IF NOT EXISTS seed_commitment text
    CHECK (seed_commitment ~ '^[0-9a-f]{64}$');
ALTER TABLE deals DROP CONSTRAINT IF EXISTS deals_raffle_has_commitment;
ALTER TABLE deals ADD CONSTRAINT deals_raffle_has_commitment
    CHECK ((allocation = 'raffle') = (seed_commitment IS NOT NULL));

-- The hold an order paid (a raffle win paid with POST /v1/holds/{id}/payment,
-- or any hold's payment); NULL for a one-tap buy, and on orders written
-- before this migration.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS hold_id text;
CREATE INDEX IF NOT EXISTS orders_deployment_hold_id ON orders (deployment_id, hold_id)
    WHERE hold_id IS NOT NULL;

-- One row per shopper registered for a deal (raffle, or first-come with
-- requires_registration). id: r_<deal hex>_<shopper hex>.
CREATE TABLE IF NOT EXISTS registrations (
    deployment_id text NOT NULL,
    id            text NOT NULL,
    deal_id       text NOT NULL,
    shopper_id    text NOT NULL,
    registered_at timestamptz NOT NULL,
    PRIMARY KEY (deployment_id, id)
);
CREATE INDEX IF NOT EXISTS registrations_deployment_deal_id
    ON registrations (deployment_id, deal_id);

-- One row per raffle whose draw ran; id is the deal's id. seed is the
-- revealed seed, seed_commitment SHA-256 of it (equal to the deal's
-- seed_commitment when nobody swapped the seed), registrants how many
-- shoppers were ranked and registrants_hash the published registrant set's
-- hash (README "Fair draws"). The four are NULL only for a draw a format-2
-- journal recorded (DrawRunFormat2 did not carry them; GET
-- /v1/deals/{id}/draw has them).
CREATE TABLE IF NOT EXISTS draws (
    deployment_id    text NOT NULL,
    id               text NOT NULL,
    drawn_at         timestamptz NOT NULL,
    seed             text CHECK (seed ~ '^[0-9a-f]{64}$'),
    seed_commitment  text CHECK (seed_commitment ~ '^[0-9a-f]{64}$'),
    registrants      bigint CHECK (registrants >= 0),
    registrants_hash text CHECK (registrants_hash ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (deployment_id, id)
);

-- One row per place of a raffle's ranking the walk reached, in walk order
-- by journal_position (the place, 0-based as /draw/me says it, is
-- row_number() OVER (PARTITION BY deployment_id, deal_id ORDER BY
-- journal_position) - 1). id: p_<deal hex>_<shopper hex> (a shopper has one
-- place per raffle). outcome 'offered': the place got hold hold_id of
-- quantity units for amount, from reached_at until expires_at; paid if an
-- order has this hold_id; ended says 'released' or 'expired' (at ended_at)
-- if it was given back instead (an expired hold can still be paid late:
-- orders.late). outcome 'passed_over': the wallet could not cover the hold
-- at reached_at; the hold columns are NULL.
CREATE TABLE IF NOT EXISTS draw_places (
    deployment_id    text NOT NULL,
    id               text NOT NULL,
    deal_id          text NOT NULL,
    shopper_id       text NOT NULL,
    journal_position bigint NOT NULL,
    outcome          text NOT NULL CHECK (outcome IN ('offered', 'passed_over')),
    reached_at       timestamptz NOT NULL,
    hold_id          text,
    quantity         bigint CHECK (quantity > 0),
    amount           numeric(18,2) CHECK (amount >= 0),
    expires_at       timestamptz,
    ended            text CHECK (ended IN ('released', 'expired')),
    ended_at         timestamptz,
    PRIMARY KEY (deployment_id, id),
    CHECK ((outcome = 'offered') = (hold_id IS NOT NULL AND quantity IS NOT NULL
        AND amount IS NOT NULL AND expires_at IS NOT NULL)),
    CHECK ((ended IS NULL) = (ended_at IS NULL)),
    CHECK (ended IS NULL OR outcome = 'offered')
);
CREATE INDEX IF NOT EXISTS draw_places_deployment_deal_position
    ON draw_places (deployment_id, deal_id, journal_position);
CREATE INDEX IF NOT EXISTS draw_places_deployment_hold_id
    ON draw_places (deployment_id, hold_id) WHERE hold_id IS NOT NULL;
