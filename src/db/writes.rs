//! The write queries. Every write that changes what the meta counts updates the kept aggregates
//! in its own transaction, taking the product's `product_stats` row lock first.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Bytea, Int2, Int4, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::cached::cached;
use super::schema::{
    characteristic_reviews, characteristics, review_votes, reviews, reviews_photos,
};
use crate::error::Error;
use crate::reviews::{IdempotencyKey, NewReview, ReviewId, Voter};

/// Adds `delta` (1 or -1) reviews of this rating and recommendation, with photos or not, to the
/// product's counts. Taking this row's lock first serialises every write to a product's
/// aggregates.
async fn count_review(
    conn: &mut AsyncPgConnection,
    product: i32,
    review: Counted,
    delta: i64,
) -> Result<(), Error> {
    cached(
        diesel::sql_query(
            "INSERT INTO product_stats AS s (product_id, rating_1, rating_2, rating_3, rating_4,
                                         rating_5, recommended_false, recommended_true,
                                         photos_rating_1, photos_rating_2, photos_rating_3,
                                         photos_rating_4, photos_rating_5)
         VALUES ($1, CASE WHEN $2 = 1 THEN $4 ELSE 0 END, CASE WHEN $2 = 2 THEN $4 ELSE 0 END,
                     CASE WHEN $2 = 3 THEN $4 ELSE 0 END, CASE WHEN $2 = 4 THEN $4 ELSE 0 END,
                     CASE WHEN $2 = 5 THEN $4 ELSE 0 END, CASE WHEN $3 THEN 0 ELSE $4 END,
                     CASE WHEN $3 THEN $4 ELSE 0 END,
                     CASE WHEN $5 AND $2 = 1 THEN $4 ELSE 0 END,
                     CASE WHEN $5 AND $2 = 2 THEN $4 ELSE 0 END,
                     CASE WHEN $5 AND $2 = 3 THEN $4 ELSE 0 END,
                     CASE WHEN $5 AND $2 = 4 THEN $4 ELSE 0 END,
                     CASE WHEN $5 AND $2 = 5 THEN $4 ELSE 0 END)
         ON CONFLICT (product_id) DO UPDATE SET
             rating_1 = s.rating_1 + excluded.rating_1,
             rating_2 = s.rating_2 + excluded.rating_2,
             rating_3 = s.rating_3 + excluded.rating_3,
             rating_4 = s.rating_4 + excluded.rating_4,
             rating_5 = s.rating_5 + excluded.rating_5,
             recommended_false = s.recommended_false + excluded.recommended_false,
             recommended_true = s.recommended_true + excluded.recommended_true,
             photos_rating_1 = s.photos_rating_1 + excluded.photos_rating_1,
             photos_rating_2 = s.photos_rating_2 + excluded.photos_rating_2,
             photos_rating_3 = s.photos_rating_3 + excluded.photos_rating_3,
             photos_rating_4 = s.photos_rating_4 + excluded.photos_rating_4,
             photos_rating_5 = s.photos_rating_5 + excluded.photos_rating_5",
        )
        .bind::<Int4, _>(product)
        .bind::<Int2, _>(review.rating)
        .bind::<Bool, _>(review.recommend)
        .bind::<Int8, _>(delta)
        .bind::<Bool, _>(review.has_photos),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// What the kept counts count of a review.
#[derive(Debug, Clone, Copy)]
struct Counted {
    rating: i16,
    recommend: bool,
    has_photos: bool,
}

/// How long an idempotency key is remembered, as the SQL interval every query of the keys uses
/// (a macro, so that `concat!` builds each query's constant text from it).
macro_rules! key_retention {
    () => {
        "24 hours"
    };
}

/// The review an idempotency key created, if it is remembered; an error if it came with another
/// request.
pub async fn replayed(
    conn: &mut AsyncPgConnection,
    key: &IdempotencyKey,
) -> Result<Option<i32>, Error> {
    #[derive(QueryableByName)]
    struct Kept {
        #[diesel(sql_type = Bytea)]
        request: Vec<u8>,
        #[diesel(sql_type = Nullable<Int4>)]
        review_id: Option<i32>,
    }
    let kept: Option<Kept> = cached(
        diesel::sql_query(concat!(
            "SELECT request, review_id FROM idempotency_keys
                 WHERE key = $1 AND created_at >= now() - interval '",
            key_retention!(),
            "'"
        ))
        .bind::<Bytea, _>(&key.key()[..]),
    )
    .get_result(conn)
    .await
    .optional()?;
    match kept {
        None => Ok(None),
        Some(kept) if kept.request != key.request()[..] => Err(Error::invalid(
            "Idempotency-Key",
            concat!(
                "was sent with another review in the last ",
                key_retention!()
            ),
        )),
        Some(kept) => Ok(kept.review_id),
    }
}

/// Claims an idempotency key for this create, in its transaction: true if it is this create's
/// (new, or remembered no longer), false if a create with it committed already. A create with the
/// same key still in flight holds the row: this waits for it to commit or roll back.
async fn claim(conn: &mut AsyncPgConnection, key: &IdempotencyKey) -> Result<bool, Error> {
    let claimed = cached(
        diesel::sql_query(concat!(
            "INSERT INTO idempotency_keys AS k (key, request) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE
                     SET request = excluded.request, review_id = NULL, created_at = now()
                     WHERE k.created_at < now() - interval '",
            key_retention!(),
            "'"
        ))
        .bind::<Bytea, _>(&key.key()[..])
        .bind::<Bytea, _>(&key.request()[..]),
    )
    .execute(conn)
    .await?;
    Ok(claimed == 1)
}

/// Records the review a claimed key created, and forgets a few expired keys.
async fn settle(conn: &mut AsyncPgConnection, key: &IdempotencyKey, id: i32) -> Result<(), Error> {
    cached(
        diesel::sql_query("UPDATE idempotency_keys SET review_id = $2 WHERE key = $1")
            .bind::<Bytea, _>(&key.key()[..])
            .bind::<Int4, _>(id),
    )
    .execute(conn)
    .await?;
    cached(diesel::sql_query(concat!(
        "DELETE FROM idempotency_keys WHERE key IN (
             SELECT key FROM idempotency_keys
             WHERE created_at < now() - interval '",
        key_retention!(),
        "' ORDER BY created_at LIMIT 16)"
    )))
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether product `$1` has a review by the email `$2` (in any case): a probe of
/// `reviews_author_idx`, whatever the product's number of reviews.
pub const HAS_REVIEW_BY_SQL: &str = "SELECT EXISTS (SELECT 1 FROM reviews \
     WHERE product_id = $1 AND lower(reviewer_email) = lower($2)) AS taken";

/// Whether the product has a review by this email already (any case).
async fn has_review_by(
    conn: &mut AsyncPgConnection,
    product: i32,
    email: &str,
) -> Result<bool, Error> {
    #[derive(QueryableByName)]
    struct Taken {
        #[diesel(sql_type = Bool)]
        taken: bool,
    }
    let found: Taken = cached(
        diesel::sql_query(HAS_REVIEW_BY_SQL)
            .bind::<Int4, _>(product)
            .bind::<Text, _>(email),
    )
    .get_result(conn)
    .await?;
    Ok(found.taken)
}

/// Writes a review in one transaction and returns its id: with `key`, only if no create with that
/// key committed already (then that create's review id, nothing written); with `one_per_email`,
/// only if the product has no review by the same email (else `AlreadyExists`).
pub async fn create_review(
    conn: &mut AsyncPgConnection,
    review: &NewReview,
    key: Option<&IdempotencyKey>,
    one_per_email: bool,
) -> Result<i32, Error> {
    conn.transaction(async |conn| {
        if let Some(key) = key {
            if !claim(conn, key).await? {
                return match replayed(conn, key).await? {
                    Some(id) => Ok(id),
                    None => Err(Error::Internal("a claimed key names no review".into())),
                };
            }
        }
        let product = review.product_id.get();
        let counted = Counted {
            rating: review.rating,
            recommend: review.recommend,
            has_photos: !review.photos.is_empty(),
        };
        count_review(conn, product, counted, 1).await?;
        // Under the product's aggregate lock (`count_review`): two creates of one product by
        // one email cannot both pass.
        if one_per_email && has_review_by(conn, product, &review.email).await? {
            return Err(Error::AlreadyExists(format!(
                "product {product} already has a review by this email"
            )));
        }

        let product_chars: Vec<i32> = characteristics::table
            .filter(characteristics::product_id.eq(product))
            .select(characteristics::id)
            .order(characteristics::id)
            .load(conn)
            .await?;
        let violations = review.characteristic_violations(&product_chars);
        if !violations.is_empty() {
            return Err(Error::Invalid(violations));
        }

        let id: i32 = diesel::insert_into(reviews::table)
            .values((
                reviews::product_id.eq(product),
                reviews::rating.eq(review.rating),
                // Milliseconds, like every date the service reads and writes.
                reviews::date.eq(diesel::dsl::sql::<Timestamptz>(
                    "date_trunc('milliseconds', now())",
                )),
                reviews::summary.eq(&review.summary),
                reviews::body.eq(&review.body),
                reviews::recommend.eq(review.recommend),
                reviews::reviewer_name.eq(&review.name),
                reviews::reviewer_email.eq(&review.email),
                reviews::has_photos.eq(counted.has_photos),
            ))
            .returning(reviews::id)
            .get_result(conn)
            .await?;

        let photos: Vec<_> = review
            .photos
            .iter()
            .map(|url| {
                (
                    reviews_photos::review_id.eq(id),
                    reviews_photos::url.eq(url),
                )
            })
            .collect();
        diesel::insert_into(reviews_photos::table)
            .values(&photos)
            .execute(conn)
            .await?;

        let values: Vec<_> = review
            .characteristics
            .iter()
            .map(|(&c, &v)| {
                (
                    characteristic_reviews::characteristic_id.eq(c),
                    characteristic_reviews::review_id.eq(id),
                    characteristic_reviews::value.eq(v),
                )
            })
            .collect();
        diesel::insert_into(characteristic_reviews::table)
            .values(&values)
            .execute(conn)
            .await?;
        apply_characteristic_values(conn, id, 1).await?;
        if let Some(key) = key {
            settle(conn, key, id).await?;
        }
        Ok(id)
    })
    .await
}

/// Adds (`sign` 1) or removes (`sign` -1) a review's characteristic values to or from the
/// characteristics' kept sums.
async fn apply_characteristic_values(
    conn: &mut AsyncPgConnection,
    review: i32,
    sign: i64,
) -> Result<(), Error> {
    cached(
        diesel::sql_query(
            "UPDATE characteristics c
         SET value_sum = c.value_sum + $2 * cr.value, value_count = c.value_count + $2
         FROM characteristic_reviews cr
         WHERE cr.review_id = $1 AND c.id = cr.characteristic_id",
        )
        .bind::<Int4, _>(review)
        .bind::<Int8, _>(sign),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records `voter`'s vote of `kind` on the review; false when they had cast it already.
async fn record_vote(
    conn: &mut AsyncPgConnection,
    id: ReviewId,
    kind: i16,
    voter: &Voter,
) -> Result<bool, Error> {
    let inserted = diesel::insert_into(review_votes::table)
        .values((
            review_votes::review_id.eq(id.get()),
            review_votes::kind.eq(kind),
            review_votes::voter.eq(&voter.bytes()[..]),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

const HELPFUL: i16 = 1;
const REPORT: i16 = 2;

/// Adds one to the review's helpfulness, once per named voter. Returns the review's product, or
/// `None` when `voter` had voted already (nothing changed).
pub async fn mark_helpful(
    conn: &mut AsyncPgConnection,
    id: ReviewId,
    voter: Option<&Voter>,
) -> Result<Option<i32>, Error> {
    let Some(voter) = voter else {
        return add_helpful(conn, id).await.map(Some);
    };
    conn.transaction(async |conn| {
        // The review's row lock first: a vote on a review that does not exist is not kept.
        lock_review(conn, id).await?;
        if !record_vote(conn, id, HELPFUL, voter).await? {
            return Ok(None);
        }
        add_helpful(conn, id).await.map(Some)
    })
    .await
}

/// Returns the review's product.
async fn add_helpful(conn: &mut AsyncPgConnection, id: ReviewId) -> Result<i32, Error> {
    diesel::update(reviews::table.find(id.get()))
        .set(reviews::helpfulness.eq(reviews::helpfulness + 1))
        .returning(reviews::product_id)
        .get_result(conn)
        .await
        .optional()?
        .ok_or_else(|| not_found(id))
}

/// Takes the review's row lock, or fails with NOT_FOUND.
async fn lock_review(conn: &mut AsyncPgConnection, id: ReviewId) -> Result<(), Error> {
    reviews::table
        .find(id.get())
        .select(reviews::id)
        .for_update()
        .first::<i32>(conn)
        .await
        .optional()?
        .map(|_| ())
        .ok_or_else(|| not_found(id))
}

/// Hides the review and takes it out of the kept aggregates, once: reporting a reported review
/// changes nothing. A named voter's report is recorded, once. Returns the product whose
/// reviews changed, if any did.
pub async fn report(
    conn: &mut AsyncPgConnection,
    id: ReviewId,
    voter: Option<&Voter>,
) -> Result<Option<i32>, Error> {
    conn.transaction(async |conn| {
        if let Some(voter) = voter {
            lock_review(conn, id).await?;
            record_vote(conn, id, REPORT, voter).await?;
        }
        let hidden: Option<(i32, i16, bool, bool)> = diesel::update(
            reviews::table
                .find(id.get())
                .filter(reviews::reported.eq(false)),
        )
        .set(reviews::reported.eq(true))
        .returning((
            reviews::product_id,
            reviews::rating,
            reviews::recommend,
            reviews::has_photos,
        ))
        .get_result(conn)
        .await
        .optional()?;
        let Some((product, rating, recommend, has_photos)) = hidden else {
            let exists: bool = diesel::select(diesel::dsl::exists(reviews::table.find(id.get())))
                .get_result(conn)
                .await?;
            return if exists { Ok(None) } else { Err(not_found(id)) };
        };
        let counted = Counted {
            rating,
            recommend,
            has_photos,
        };
        count_review(conn, product, counted, -1).await?;
        apply_characteristic_values(conn, id.get(), -1).await?;
        Ok(Some(product))
    })
    .await
}

fn not_found(id: ReviewId) -> Error {
    Error::NotFound(format!("review {}", id.get()))
}
