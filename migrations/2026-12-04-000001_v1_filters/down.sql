DROP INDEX reviews_v1_relevant_idx;
DROP INDEX reviews_v1_helpful_idx;
DROP INDEX reviews_v1_newest_idx;
ALTER TABLE product_stats
    DROP COLUMN photos_rating_1, DROP COLUMN photos_rating_2, DROP COLUMN photos_rating_3,
    DROP COLUMN photos_rating_4, DROP COLUMN photos_rating_5;
ALTER TABLE reviews DROP COLUMN has_photos;
