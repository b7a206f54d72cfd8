//! The database schema: `src/db/schema.rs` matches the migrations, migrations reverse cleanly,
//! and the hot queries are index lookups (their plans are printed with `--nocapture`).

mod common;

use common::{fresh_db, EMPTY_TEMPLATE, SAMPLE_TEMPLATE};
use reviews::db::queries::{list_sql, META_SQL, STATS_SQL};
use reviews::reviews::Sort;

/// `table.column -> DieselType` for every column of the migrated database.
async fn database_columns(db: &tokio_postgres::Client) -> Vec<String> {
    let rows = db
        .query(
            "SELECT table_name::text, column_name::text, udt_name::text, is_nullable = 'YES'
             FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations'
             ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let ty = match r.get::<_, &str>(2) {
                "int2" => "Int2",
                "int4" => "Int4",
                "int8" => "Int8",
                "float8" => "Float8",
                "text" => "Text",
                "bool" => "Bool",
                "timestamptz" => "Timestamptz",
                "bytea" => "Bytea",
                other => panic!("no diesel type mapped for {other}"),
            };
            let ty = if r.get(3) {
                format!("Nullable<{ty}>")
            } else {
                ty.to_string()
            };
            format!("{}.{} -> {ty}", r.get::<_, &str>(0), r.get::<_, &str>(1))
        })
        .collect()
}

/// The same, as declared by the `table!` blocks of `src/db/schema.rs`.
fn declared_columns() -> Vec<String> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/db/schema.rs")).unwrap();
    let mut table = None;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some((name, _)) = line.split_once(" (").filter(|_| line.ends_with('{')) {
            table = Some(name.to_string());
        } else if line == "}" {
            table = None;
        } else if let (Some(t), Some((col, ty))) = (&table, line.split_once(" -> ")) {
            out.push(format!("{t}.{col} -> {}", ty.trim_end_matches(',')));
        }
    }
    out.sort_by_key(|c| c.split('.').next().unwrap().to_string());
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_rs_matches_the_migrated_database() {
    let db = common::sql(&fresh_db(EMPTY_TEMPLATE).await).await;
    let declared = declared_columns();
    assert!(declared.len() > 20);
    assert_eq!(database_columns(&db).await, declared);
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_run_down_and_up_again() {
    let url = fresh_db(EMPTY_TEMPLATE).await;
    let db = common::sql(&url).await;
    let before = database_columns(&db).await;
    let mut down = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path().join("down.sql"))
        .collect::<Vec<_>>();
    // Newest first: the folders are named by date.
    down.sort();
    for path in down.iter().rev() {
        db.batch_execute(&std::fs::read_to_string(path).unwrap())
            .await
            .unwrap();
    }
    db.batch_execute("DELETE FROM __diesel_schema_migrations")
        .await
        .unwrap();
    assert!(
        database_columns(&db).await.is_empty(),
        "down.sql removes everything"
    );
    reviews::db::migrate(&url).await.unwrap();
    assert_eq!(database_columns(&db).await, before);
}

/// A database with enough rows (60,000 reviews over 2,000 products) for the planner to plan as
/// it would in production.
async fn loaded_db() -> tokio_postgres::Client {
    let db = common::sql(&fresh_db(SAMPLE_TEMPLATE).await).await;
    db.batch_execute(
        "INSERT INTO reviews (product_id, rating, date, summary, body, recommend, reported,
                              reviewer_name, reviewer_email, helpfulness)
         SELECT 1000 + g % 2000, 1 + g % 5, now() - make_interval(mins => g), 's', 'b',
                g % 2 = 0, g % 23 = 0, 'n', 'n@example.com', g % 17
         FROM generate_series(1, 60000) g;
         INSERT INTO reviews_photos (review_id, url)
         SELECT id, 'https://images.example.com/' || id FROM reviews WHERE id % 3 = 0;
         INSERT INTO characteristics (product_id, name)
         SELECT p, n FROM generate_series(1000, 2999) p, unnest(ARRAY['Fit', 'Size']) n;
         INSERT INTO product_stats (product_id) SELECT generate_series(1000, 2999);
         ANALYZE;",
    )
    .await
    .unwrap();
    db
}

async fn explain(db: &tokio_postgres::Client, sql: &str, binds: &[&str]) -> String {
    let mut sql = sql.to_string();
    for (i, value) in binds.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), value);
    }
    let rows = db.query(&format!("EXPLAIN {sql}"), &[]).await.unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn list_pages_are_range_scans_of_their_sorts_index() {
    let db = loaded_db().await;
    for (sort, index) in [
        (Sort::Relevant, "reviews_relevant_idx"),
        (Sort::Newest, "reviews_newest_idx"),
        (Sort::Helpful, "reviews_helpful_idx"),
    ] {
        let plan = explain(&db, list_sql(sort), &["1500", "5", "10"]).await;
        println!("ListReviews, {sort:?}:\n{plan}\n");
        let (_, below_limit) = plan.split_once("->  Limit").expect("a LIMIT node");
        assert!(
            below_limit.contains(&format!("Index Scan using {index} on reviews")),
            "{plan}"
        );
        assert!(
            !below_limit.contains("Sort"),
            "no sort over a product's reviews:\n{plan}"
        );
        assert!(plan.contains("reviews_photos_review_id_idx"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }
}

/// The one-review-per-email check probes the author index, even on a product with many reviews.
#[tokio::test(flavor = "multi_thread")]
async fn the_author_check_is_an_index_probe() {
    let db = loaded_db().await;
    let plan = explain(
        &db,
        reviews::db::HAS_REVIEW_BY_SQL,
        &["1500", "'N@example.com'"],
    )
    .await;
    println!("author check:\n{plan}\n");
    assert!(plan.contains("reviews_author_idx"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aggregate_rating_is_one_row_of_kept_counts() {
    let db = loaded_db().await;
    let plan = explain(&db, STATS_SQL, &["1500"]).await;
    println!("GetProductRating:\n{plan}\n");
    assert!(
        plan.contains("Index Scan using product_stats_pkey"),
        "{plan}"
    );
    assert!(
        !plan.contains(" on reviews"),
        "no review rows are read:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

#[tokio::test(flavor = "multi_thread")]
async fn meta_reads_kept_aggregates_only() {
    let db = loaded_db().await;
    let plan = explain(&db, META_SQL, &["1500"]).await;
    println!("GetReviewMeta:\n{plan}\n");
    assert!(plan.contains("product_stats_pkey"), "{plan}");
    assert!(
        plan.contains("characteristics_product_id_name_key"),
        "{plan}"
    );
    assert!(
        !plan.contains(" on reviews"),
        "no review rows are read:\n{plan}"
    );
    assert!(!plan.contains("characteristic_reviews"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

/// A v1 page is one range scan per (stars, photos) pair its filter admits, from the cursor's
/// position, in the sort's order: on a product with 50,000 reviews, a deep page of a selective
/// filter reads no more index entries than it returns (plus one per branch), and no review that
/// the filter does not admit. Run as the service runs it: a prepared statement's generic plan.
#[tokio::test(flavor = "multi_thread")]
async fn v1_pages_read_only_their_rows_at_any_depth() {
    use reviews::db::queries::page_sql;

    let db = loaded_db().await;
    db.batch_execute(
        "INSERT INTO reviews (product_id, rating, date, summary, body, recommend, reported,
                              reviewer_name, reviewer_email, helpfulness, has_photos)
         SELECT 7777, 1 + g % 5, now() - make_interval(secs => g / 3), 's', 'b', true,
                g % 41 = 0, 'n', 'n@example.com', g % 7, g % 10 = 0
         FROM generate_series(1, 50000) g;
         ANALYZE reviews;
         SET plan_cache_mode = force_generic_plan;",
    )
    .await
    .unwrap();
    for (sort, index, key) in [
        (Sort::Newest, "reviews_v1_newest_idx", "0::int4"),
        (Sort::Helpful, "reviews_v1_helpful_idx", "3::int4"),
        (Sort::Relevant, "reviews_v1_relevant_idx", "1e12::float8"),
    ] {
        let key_type = key.split("::").nth(1).unwrap();
        for (after, stars, photos) in [
            (false, "{1,2,3,4,5}", "{f,f,f,f,f}"),
            (true, "{1,2,3,4,5}", "{f,f,f,f,f}"),
            (true, "{2}", "{t}"),
            (true, "{1,1,5,5}", "{f,t,f,t}"),
        ] {
            let sql = page_sql(sort, after);
            db.batch_execute(&format!(
                "DEALLOCATE ALL; PREPARE page (int4, int2[], bool[], timestamptz, int4, \
                 {key_type}, int8) AS {sql}"
            ))
            .await
            .unwrap();
            // Deep in the list: 40,000 seconds back is past 120,000 / 3 of the product's rows.
            let rows = db
                .query(
                    &format!(
                        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE page(7777, \
                         '{stars}', '{photos}', now() - interval '4000 seconds', 100000, {key}, 21)"
                    ),
                    &[],
                )
                .await
                .unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let plan = plan.join("\n");
            println!("ListProductReviews, {sort:?}, after {after}, {stars} {photos}:\n{plan}\n");
            assert!(
                plan.contains(&format!("Index Scan using {index}")),
                "{plan}"
            );
            assert!(!plan.contains("Seq Scan"), "{plan}");
            assert!(!plan.contains("Rows Removed by Filter"), "{plan}");
            // Each branch reads at most the page and one more (LIMIT 21): never its range.
            let scanned: Vec<f64> = plan
                .lines()
                .filter(|l| l.contains(&format!("Index Scan using {index}")))
                .map(|l| {
                    let rows = l.split("rows=").nth(1).unwrap();
                    rows.split(' ').next().unwrap().parse().unwrap()
                })
                .collect();
            assert!(
                !scanned.is_empty() && scanned.iter().all(|&n| n <= 21.0),
                "{plan}"
            );
            if after {
                assert!(
                    plan.contains("Index Cond") && plan.contains(") < ROW("),
                    "{plan}"
                );
            }
        }
    }
    let plan = explain(&db, STATS_SQL, &["7777"]).await;
    assert!(
        plan.contains("product_stats_pkey") && !plan.contains(" on reviews"),
        "{plan}"
    );
}
