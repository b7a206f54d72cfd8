//! The queries behind the five operations. A list page is one round trip (reviews and their
//! photos); the meta is one round trip over kept aggregates; every write that changes what the
//! meta counts updates those aggregates in its own transaction.

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Int2, Int4, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::schema::{characteristic_reviews, characteristics, reviews, reviews_photos};
use crate::error::Error;
use crate::reviews::{
    CharacteristicMeta, Meta, NewReview, PageRequest, Photo, ProductId, Review, ReviewId, Sort,
};

/// The list query for each sort. Each sorts on exactly the key of its partial index, so a page
/// is a range scan; photos are aggregated per listed review only.
pub fn list_sql(sort: Sort) -> &'static str {
    macro_rules! list {
        ($order:literal) => {
            concat!(
                "SELECT r.id, r.rating, r.summary, r.recommend, r.response, r.body, r.date,
                        r.reviewer_name, r.helpfulness,
                        coalesce(p.ids, '{}'::int4[]) AS photo_ids,
                        coalesce(p.urls, '{}'::text[]) AS photo_urls
                 FROM (SELECT id, rating, summary, recommend, response, body, date,
                              reviewer_name, helpfulness, relevance
                       FROM reviews
                       WHERE product_id = $1 AND NOT reported
                       ORDER BY ",
                $order,
                " LIMIT $2 OFFSET $3) r
                 LEFT JOIN LATERAL (
                     SELECT array_agg(ph.id ORDER BY ph.id) AS ids,
                            array_agg(ph.url ORDER BY ph.id) AS urls
                     FROM reviews_photos ph WHERE ph.review_id = r.id) p ON true
                 ORDER BY ",
                $order
            )
        };
    }
    match sort {
        Sort::Relevant => list!("relevance DESC, date DESC, id DESC"),
        Sort::Newest => list!("date DESC, id DESC"),
        Sort::Helpful => list!("helpfulness DESC, date DESC, id DESC"),
    }
}

#[derive(QueryableByName)]
struct ReviewRow {
    #[diesel(sql_type = Int4)]
    id: i32,
    #[diesel(sql_type = Int2)]
    rating: i16,
    #[diesel(sql_type = Text)]
    summary: String,
    #[diesel(sql_type = Bool)]
    recommend: bool,
    #[diesel(sql_type = Nullable<Text>)]
    response: Option<String>,
    #[diesel(sql_type = Text)]
    body: String,
    #[diesel(sql_type = Timestamptz)]
    date: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = Text)]
    reviewer_name: String,
    #[diesel(sql_type = Int4)]
    helpfulness: i32,
    #[diesel(sql_type = Array<Int4>)]
    photo_ids: Vec<i32>,
    #[diesel(sql_type = Array<Text>)]
    photo_urls: Vec<String>,
}

impl From<ReviewRow> for Review {
    fn from(r: ReviewRow) -> Self {
        let photos = r
            .photo_ids
            .into_iter()
            .zip(r.photo_urls)
            .map(|(id, url)| Photo { id, url })
            .collect();
        Review {
            id: r.id,
            rating: r.rating,
            summary: r.summary,
            recommend: r.recommend,
            response: r.response,
            body: r.body,
            date: r.date,
            reviewer_name: r.reviewer_name,
            helpfulness: r.helpfulness,
            photos,
        }
    }
}

pub async fn list_reviews(
    conn: &mut AsyncPgConnection,
    product: ProductId,
    page: PageRequest,
    sort: Sort,
) -> Result<Vec<Review>, Error> {
    let rows: Vec<ReviewRow> = diesel::sql_query(list_sql(sort))
        .bind::<Int4, _>(product.get())
        .bind::<BigInt, _>(i64::from(page.size()))
        .bind::<BigInt, _>(page.offset())
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(Review::from).collect())
}

/// One row per characteristic of the product (or one row of NULL characteristic columns when it
/// has none), each carrying the product's counts.
pub const META_SQL: &str = "
    SELECT s.rating_1, s.rating_2, s.rating_3, s.rating_4, s.rating_5,
           s.recommended_false, s.recommended_true,
           c.id AS characteristic_id, c.name, c.value_sum, c.value_count
    FROM (SELECT $1::int4 AS product_id) q
    LEFT JOIN product_stats s ON s.product_id = q.product_id
    LEFT JOIN characteristics c ON c.product_id = q.product_id
    ORDER BY c.id";

#[derive(QueryableByName)]
struct MetaRow {
    #[diesel(sql_type = Nullable<Int8>)]
    rating_1: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    rating_2: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    rating_3: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    rating_4: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    rating_5: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    recommended_false: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    recommended_true: Option<i64>,
    #[diesel(sql_type = Nullable<Int4>)]
    characteristic_id: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<Int8>)]
    value_sum: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    value_count: Option<i64>,
}

pub async fn review_meta(conn: &mut AsyncPgConnection, product: ProductId) -> Result<Meta, Error> {
    let rows: Vec<MetaRow> = diesel::sql_query(META_SQL)
        .bind::<Int4, _>(product.get())
        .load(conn)
        .await?;
    let mut meta = Meta::default();
    if let Some(first) = <[MetaRow]>::first(&rows) {
        let counts = [
            first.rating_1,
            first.rating_2,
            first.rating_3,
            first.rating_4,
            first.rating_5,
        ];
        meta.ratings = counts.map(|c| c.unwrap_or(0));
        meta.recommended_false = first.recommended_false.unwrap_or(0);
        meta.recommended_true = first.recommended_true.unwrap_or(0);
    }
    meta.characteristics = rows
        .into_iter()
        .filter_map(|r| {
            Some(CharacteristicMeta {
                id: r.characteristic_id?,
                name: r.name?,
                value_sum: r.value_sum.unwrap_or(0),
                value_count: r.value_count.unwrap_or(0),
            })
        })
        .collect();
    Ok(meta)
}

/// Adds `delta` (1 or -1) reviews of this rating and recommendation to the product's counts.
/// Taking this row's lock first serialises every write to a product's aggregates.
async fn count_review(
    conn: &mut AsyncPgConnection,
    product: i32,
    rating: i16,
    recommend: bool,
    delta: i64,
) -> Result<(), Error> {
    diesel::sql_query(
        "INSERT INTO product_stats AS s (product_id, rating_1, rating_2, rating_3, rating_4,
                                         rating_5, recommended_false, recommended_true)
         VALUES ($1, CASE WHEN $2 = 1 THEN $4 ELSE 0 END, CASE WHEN $2 = 2 THEN $4 ELSE 0 END,
                     CASE WHEN $2 = 3 THEN $4 ELSE 0 END, CASE WHEN $2 = 4 THEN $4 ELSE 0 END,
                     CASE WHEN $2 = 5 THEN $4 ELSE 0 END, CASE WHEN $3 THEN 0 ELSE $4 END,
                     CASE WHEN $3 THEN $4 ELSE 0 END)
         ON CONFLICT (product_id) DO UPDATE SET
             rating_1 = s.rating_1 + excluded.rating_1,
             rating_2 = s.rating_2 + excluded.rating_2,
             rating_3 = s.rating_3 + excluded.rating_3,
             rating_4 = s.rating_4 + excluded.rating_4,
             rating_5 = s.rating_5 + excluded.rating_5,
             recommended_false = s.recommended_false + excluded.recommended_false,
             recommended_true = s.recommended_true + excluded.recommended_true",
    )
    .bind::<Int4, _>(product)
    .bind::<Int2, _>(rating)
    .bind::<Bool, _>(recommend)
    .bind::<Int8, _>(delta)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn create_review(conn: &mut AsyncPgConnection, review: &NewReview) -> Result<i32, Error> {
    conn.transaction(async |conn| {
        let product = review.product_id.get();
        count_review(conn, product, review.rating, review.recommend, 1).await?;

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
    diesel::sql_query(
        "UPDATE characteristics c
         SET value_sum = c.value_sum + $2 * cr.value, value_count = c.value_count + $2
         FROM characteristic_reviews cr
         WHERE cr.review_id = $1 AND c.id = cr.characteristic_id",
    )
    .bind::<Int4, _>(review)
    .bind::<Int8, _>(sign)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn mark_helpful(conn: &mut AsyncPgConnection, id: ReviewId) -> Result<(), Error> {
    let updated = diesel::update(reviews::table.find(id.get()))
        .set(reviews::helpfulness.eq(reviews::helpfulness + 1))
        .execute(conn)
        .await?;
    if updated == 0 {
        return Err(not_found(id));
    }
    Ok(())
}

/// Hides the review and takes it out of the kept aggregates, once: reporting a reported review
/// changes nothing.
pub async fn report(conn: &mut AsyncPgConnection, id: ReviewId) -> Result<(), Error> {
    conn.transaction(async |conn| {
        let hidden: Option<(i32, i16, bool)> = diesel::update(
            reviews::table
                .find(id.get())
                .filter(reviews::reported.eq(false)),
        )
        .set(reviews::reported.eq(true))
        .returning((reviews::product_id, reviews::rating, reviews::recommend))
        .get_result(conn)
        .await
        .optional()?;
        let Some((product, rating, recommend)) = hidden else {
            let exists: bool = diesel::select(diesel::dsl::exists(reviews::table.find(id.get())))
                .get_result(conn)
                .await?;
            return if exists { Ok(()) } else { Err(not_found(id)) };
        };
        count_review(conn, product, rating, recommend, -1).await?;
        apply_characteristic_values(conn, id.get(), -1).await
    })
    .await
}

pub async fn ping(conn: &mut AsyncPgConnection) -> Result<(), Error> {
    diesel::sql_query("SELECT 1").execute(conn).await?;
    Ok(())
}

fn not_found(id: ReviewId) -> Error {
    Error::NotFound(format!("review {}", id.get()))
}
