-- The helpful votes and reports of named voters: when the storefront names the voter (a session
-- or customer id), each voter counts once per review and kind. `voter` is a keyed SHA-256 of
-- the name (HMAC), never the name. Calls that name no voter are not recorded here: the legacy
-- contract counts each of them.
--
-- No foreign key to `reviews`: a data-set load replaces the reviews wholesale and empties this
-- table in the same transaction (its ids may name other reviews then).
CREATE TABLE review_votes (
    review_id int4     NOT NULL,
    kind      smallint NOT NULL CHECK (kind IN (1, 2)), -- 1: helpful, 2: report
    voter     bytea    NOT NULL CHECK (length(voter) = 32),
    PRIMARY KEY (review_id, kind, voter)
);
