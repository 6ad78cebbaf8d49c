-- What the order sink knows of the last event it applied from a journal:
-- its position and the SHA-256 of its record (flashsale_journal::event_digest),
-- written with the position in the batch's transaction. A data directory
-- copied (a restore, a clone) keeps its journal's id, so two journals with
-- one id can write here; a sink adopts the stored position only if its own
-- journal holds this event at event_position (gateway/src/order_sink.rs,
-- "Copies"). Its own column, not implied by position, so an operator who
-- moves position back leaves the check intact. NULL (rows written before
-- this migration, or position 0): cannot check, accepted.
ALTER TABLE order_sink_positions
    ADD COLUMN IF NOT EXISTS event_position bigint CHECK (event_position >= 1),
    ADD COLUMN IF NOT EXISTS event_sha256 bytea CHECK (octet_length(event_sha256) = 32);
