-- Idempotency-Key on CreateReview: a retry with the same key (within 24 hours) returns the
-- review the first attempt created and writes nothing. `key` and `request` are SHA-256 digests
-- of the caller's key and of the validated request, never the key itself. The row is claimed
-- first in the create's transaction, so a retry that races the first attempt waits for it.
--
-- No foreign key to `reviews`: a data-set load replaces the reviews wholesale and empties this
-- table in the same transaction.
CREATE TABLE idempotency_keys (
    key        bytea       PRIMARY KEY CHECK (length(key) = 32),
    request    bytea       NOT NULL CHECK (length(request) = 32),
    review_id  int4,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Each keyed create prunes a few expired keys, oldest first.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
