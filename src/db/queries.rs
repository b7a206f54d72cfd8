//! The read queries. A list page is one round trip (reviews and their photos); the meta and the
//! aggregate rating are one round trip each over kept aggregates.

use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Float8, Int2, Int4, Int8, Nullable, Text, Timestamptz,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::cached::cached;
use crate::error::Error;
use crate::reviews::{
    CharacteristicMeta, Meta, PageQuery, PageRequest, Photo, Position, ProductId, Rating, Review,
    Sort, StarCounts,
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
    mut conn: &AsyncPgConnection,
    product: ProductId,
    page: PageRequest,
    sort: Sort,
) -> Result<Vec<Review>, Error> {
    let rows: Vec<ReviewRow> = cached(
        diesel::sql_query(list_sql(sort))
            .bind::<Int4, _>(product.get())
            .bind::<BigInt, _>(i64::from(page.size()))
            .bind::<BigInt, _>(page.offset()),
    )
    .load(&mut conn)
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

pub async fn review_meta(mut conn: &AsyncPgConnection, product: ProductId) -> Result<Meta, Error> {
    let rows: Vec<MetaRow> = cached(diesel::sql_query(META_SQL).bind::<Int4, _>(product.get()))
        .load(&mut conn)
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

pub async fn ping(conn: &mut AsyncPgConnection) -> Result<(), Error> {
    cached(diesel::sql_query("SELECT 1")).execute(conn).await?;
    Ok(())
}

#[derive(QueryableByName)]
struct WalPosition {
    #[diesel(sql_type = Int8)]
    lsn: i64,
}

/// How far the primary's WAL has gone (the insert position, past every commit so far).
pub async fn wal_position(conn: &mut AsyncPgConnection) -> Result<i64, Error> {
    let p: WalPosition = cached(diesel::sql_query(
        "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8 AS lsn",
    ))
    .get_result(conn)
    .await?;
    Ok(p.lsn)
}

#[derive(QueryableByName)]
struct Replayed {
    #[diesel(sql_type = Bool)]
    replayed: bool,
}

/// Whether this server has replayed the WAL past `lsn` (a primary always has).
pub async fn replayed_past(mut conn: &AsyncPgConnection, lsn: i64) -> Result<bool, Error> {
    let r: Replayed = cached(
        diesel::sql_query(
            "SELECT coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn) >= $1, true) AS replayed",
        )
        .bind::<Int8, _>(lsn),
    )
    .get_result(&mut conn)
    .await?;
    Ok(r.replayed)
}

/// The v1 list query for each sort, from the start (`after` false) or after a position ($4
/// date, $5 id, and for `helpful` and `relevant` $6 the leading key). One branch per (stars,
/// has photos) pair of the filter (`$2`, `$3`, at most ten), each a range scan of its sort's
/// index from the position, `LIMIT $7`; the merged branches are cut to `$7` again. A page
/// reads at most ten times its size of index entries, whatever the product's size, the
/// filter's selectivity or the page's depth.
pub fn page_sql(sort: Sort, after: bool) -> &'static str {
    macro_rules! page {
        ($order:literal, $after:literal) => {
            concat!(
                "SELECT r.id, r.rating, r.summary, r.recommend, r.response, r.body, r.date,
                        r.reviewer_name, r.helpfulness, r.relevance,
                        coalesce(p.ids, '{}'::int4[]) AS photo_ids,
                        coalesce(p.urls, '{}'::text[]) AS photo_urls
                 FROM (SELECT b.* FROM unnest($2::int2[], $3::bool[]) AS f(rating, has_photos)
                       CROSS JOIN LATERAL (
                           SELECT id, rating, summary, recommend, response, body, date,
                                  reviewer_name, helpfulness, relevance
                           FROM reviews
                           WHERE product_id = $1 AND rating = f.rating
                             AND has_photos = f.has_photos AND NOT reported",
                $after,
                " ORDER BY ",
                $order,
                " LIMIT $7) b
                       ORDER BY ",
                $order,
                " LIMIT $7) r
                 LEFT JOIN LATERAL (
                     SELECT array_agg(ph.id ORDER BY ph.id) AS ids,
                            array_agg(ph.url ORDER BY ph.id) AS urls
                     FROM reviews_photos ph WHERE ph.review_id = r.id) p ON true
                 ORDER BY ",
                $order
            )
        };
    }
    // Every query binds $4 .. $6, with their types (a first page leaves them unused), so
    // that one set of binds serves all of a sort's queries.
    match (sort, after) {
        (Sort::Newest, false) => page!("date DESC, id DESC", ""),
        (Sort::Newest, true) => page!("date DESC, id DESC", " AND (date, id) < ($4, $5)"),
        (Sort::Helpful, false) => page!("helpfulness DESC, date DESC, id DESC", ""),
        (Sort::Helpful, true) => page!(
            "helpfulness DESC, date DESC, id DESC",
            " AND (helpfulness, date, id) < ($6, $4, $5)"
        ),
        (Sort::Relevant, false) => page!("relevance DESC, date DESC, id DESC", ""),
        (Sort::Relevant, true) => page!(
            "relevance DESC, date DESC, id DESC",
            " AND (relevance, date, id) < ($6, $4, $5)"
        ),
    }
}

#[derive(QueryableByName)]
struct PageRow {
    #[diesel(embed)]
    review: ReviewRow,
    #[diesel(sql_type = Float8)]
    relevance: f64,
}

/// One v1 page: up to `limit` reviews in `query`'s order from its position, each with its
/// relevance (the `relevant` sort's key, which a review does not show).
pub async fn list_page(
    mut conn: &AsyncPgConnection,
    query: &PageQuery,
    limit: i64,
) -> Result<Vec<(Review, f64)>, Error> {
    let (stars, photos) = query.filter.branches();
    let after = query.after.unwrap_or(Position {
        key: 0,
        date_us: 0,
        id: 0,
    });
    let sql = diesel::sql_query(page_sql(query.sort, query.after.is_some()))
        .into_boxed::<diesel::pg::Pg>()
        .bind::<Int4, _>(query.product.get())
        .bind::<Array<Int2>, _>(stars)
        .bind::<Array<Bool>, _>(photos)
        .bind::<Timestamptz, _>(after.date())
        .bind::<Int4, _>(after.id);
    let sql = match query.sort {
        Sort::Relevant => sql.bind::<Float8, _>(after.relevance()),
        Sort::Newest | Sort::Helpful => sql.bind::<Int4, _>(after.helpfulness()),
    };
    let rows: Vec<PageRow> = cached(sql.bind::<BigInt, _>(limit)).load(&mut conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| (Review::from(r.review), r.relevance))
        .collect())
}

/// A product's row of kept counts (none for a product never reviewed): per star, all and with
/// photos, and per recommendation. The aggregate rating and the v1 list's totals read it.
pub const STATS_SQL: &str = "
    SELECT rating_1, rating_2, rating_3, rating_4, rating_5, recommended_false, recommended_true,
           photos_rating_1, photos_rating_2, photos_rating_3, photos_rating_4, photos_rating_5
    FROM product_stats WHERE product_id = $1";

#[derive(QueryableByName, Default)]
struct StatsRow {
    #[diesel(sql_type = Int8)]
    rating_1: i64,
    #[diesel(sql_type = Int8)]
    rating_2: i64,
    #[diesel(sql_type = Int8)]
    rating_3: i64,
    #[diesel(sql_type = Int8)]
    rating_4: i64,
    #[diesel(sql_type = Int8)]
    rating_5: i64,
    #[diesel(sql_type = Int8)]
    recommended_false: i64,
    #[diesel(sql_type = Int8)]
    recommended_true: i64,
    #[diesel(sql_type = Int8)]
    photos_rating_1: i64,
    #[diesel(sql_type = Int8)]
    photos_rating_2: i64,
    #[diesel(sql_type = Int8)]
    photos_rating_3: i64,
    #[diesel(sql_type = Int8)]
    photos_rating_4: i64,
    #[diesel(sql_type = Int8)]
    photos_rating_5: i64,
}

impl StatsRow {
    /// Listable reviews per star.
    fn ratings(&self) -> [i64; 5] {
        [
            self.rating_1,
            self.rating_2,
            self.rating_3,
            self.rating_4,
            self.rating_5,
        ]
    }
}

async fn stats(conn: &mut &AsyncPgConnection, product: ProductId) -> Result<StatsRow, Error> {
    let row = cached(diesel::sql_query(STATS_SQL).bind::<Int4, _>(product.get()))
        .get_result(conn)
        .await
        .optional()?;
    Ok(row.unwrap_or_default())
}

/// A product's aggregate rating.
pub async fn product_rating(
    mut conn: &AsyncPgConnection,
    product: ProductId,
) -> Result<Rating, Error> {
    let r = stats(&mut conn, product).await?;
    Ok(Rating {
        ratings: r.ratings(),
        recommended_false: r.recommended_false,
        recommended_true: r.recommended_true,
    })
}

/// A product's listable reviews per star, all and with photos: the totals of every filter.
pub async fn star_counts(
    mut conn: &AsyncPgConnection,
    product: ProductId,
) -> Result<StarCounts, Error> {
    let r = stats(&mut conn, product).await?;
    Ok(StarCounts {
        all: r.ratings(),
        photos: [
            r.photos_rating_1,
            r.photos_rating_2,
            r.photos_rating_3,
            r.photos_rating_4,
            r.photos_rating_5,
        ],
    })
}
