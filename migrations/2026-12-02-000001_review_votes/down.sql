DROP TABLE review_votes;
