DROP INDEX reviews_author_idx;
