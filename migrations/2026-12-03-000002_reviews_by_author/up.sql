-- One review per product and email (REVIEWS_ONE_REVIEW_PER_EMAIL): a create looks for the
-- product's reviews by the same email, case-insensitively, under the product's aggregate lock.
-- Not unique: loaded data sets may hold such pairs already, and the rule is a setting.
CREATE INDEX reviews_author_idx ON reviews (product_id, lower(reviewer_email));
