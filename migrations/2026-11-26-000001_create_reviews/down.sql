DROP TABLE product_stats;
DROP TABLE characteristic_reviews;
DROP TABLE characteristics;
DROP TABLE reviews_photos;
DROP TABLE reviews;
DROP FUNCTION reviews_relevance(integer, timestamptz);
