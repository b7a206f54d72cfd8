-- The v1 list's filters (star ratings, with photos) and their totals.
--
-- has_photos: whether the review has at least one photo, set by the create that writes the
-- review and its photos in one transaction, and by the loader.
ALTER TABLE reviews ADD COLUMN has_photos boolean NOT NULL DEFAULT false;
UPDATE reviews r SET has_photos = true
WHERE EXISTS (SELECT 1 FROM reviews_photos p WHERE p.review_id = r.id);

-- Per star, the listable reviews with photos, kept beside rating_1 .. rating_5 by every create
-- and report: the total of any filter is a sum of at most five columns of one row.
ALTER TABLE product_stats
    ADD COLUMN photos_rating_1 bigint NOT NULL DEFAULT 0,
    ADD COLUMN photos_rating_2 bigint NOT NULL DEFAULT 0,
    ADD COLUMN photos_rating_3 bigint NOT NULL DEFAULT 0,
    ADD COLUMN photos_rating_4 bigint NOT NULL DEFAULT 0,
    ADD COLUMN photos_rating_5 bigint NOT NULL DEFAULT 0;
UPDATE product_stats s SET
    photos_rating_1 = c.r1, photos_rating_2 = c.r2, photos_rating_3 = c.r3,
    photos_rating_4 = c.r4, photos_rating_5 = c.r5
FROM (SELECT product_id,
             count(*) FILTER (WHERE rating = 1) AS r1, count(*) FILTER (WHERE rating = 2) AS r2,
             count(*) FILTER (WHERE rating = 3) AS r3, count(*) FILTER (WHERE rating = 4) AS r4,
             count(*) FILTER (WHERE rating = 5) AS r5
      FROM reviews WHERE has_photos AND NOT reported GROUP BY product_id) c
WHERE s.product_id = c.product_id;

-- One index per sort for filtered lists, each in that sort's order within one (star, photos)
-- pair: a filtered page is one range scan per pair the filter admits (at most ten), merged.
CREATE INDEX reviews_v1_newest_idx ON reviews (product_id, rating, has_photos, date DESC, id DESC)
    WHERE NOT reported;
CREATE INDEX reviews_v1_helpful_idx
    ON reviews (product_id, rating, has_photos, helpfulness DESC, date DESC, id DESC)
    WHERE NOT reported;
CREATE INDEX reviews_v1_relevant_idx
    ON reviews (product_id, rating, has_photos, relevance DESC, date DESC, id DESC)
    WHERE NOT reported;
