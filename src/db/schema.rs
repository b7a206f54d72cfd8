// Diesel's view of the tables in `migrations/`; `tests/schema.rs` checks it against a migrated
// database, so the two cannot drift apart.

diesel::table! {
    reviews (id) {
        id -> Int4,
        product_id -> Int4,
        rating -> Int2,
        date -> Timestamptz,
        summary -> Text,
        body -> Text,
        recommend -> Bool,
        reported -> Bool,
        reviewer_name -> Text,
        reviewer_email -> Text,
        response -> Nullable<Text>,
        helpfulness -> Int4,
        relevance -> Float8,
        has_photos -> Bool,
    }
}

diesel::table! {
    reviews_photos (id) {
        id -> Int4,
        review_id -> Int4,
        url -> Text,
    }
}

diesel::table! {
    characteristics (id) {
        id -> Int4,
        product_id -> Int4,
        name -> Text,
        value_sum -> Int8,
        value_count -> Int8,
    }
}

diesel::table! {
    characteristic_reviews (id) {
        id -> Int4,
        characteristic_id -> Int4,
        review_id -> Int4,
        value -> Int2,
    }
}

diesel::table! {
    product_stats (product_id) {
        product_id -> Int4,
        rating_1 -> Int8,
        rating_2 -> Int8,
        rating_3 -> Int8,
        rating_4 -> Int8,
        rating_5 -> Int8,
        recommended_false -> Int8,
        recommended_true -> Int8,
        photos_rating_1 -> Int8,
        photos_rating_2 -> Int8,
        photos_rating_3 -> Int8,
        photos_rating_4 -> Int8,
        photos_rating_5 -> Int8,
    }
}

diesel::table! {
    review_votes (review_id, kind, voter) {
        review_id -> Int4,
        kind -> Int2,
        voter -> Bytea,
    }
}

diesel::table! {
    idempotency_keys (key) {
        key -> Bytea,
        request -> Bytea,
        review_id -> Nullable<Int4>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(reviews_photos -> reviews (review_id));
diesel::joinable!(characteristic_reviews -> reviews (review_id));
diesel::joinable!(characteristic_reviews -> characteristics (characteristic_id));

diesel::allow_tables_to_appear_in_same_query!(
    reviews,
    reviews_photos,
    characteristics,
    characteristic_reviews,
    product_stats,
    review_votes,
    idempotency_keys,
);
