//! `reviews load`: the data set's quirks, rows set aside with their reasons, and all or nothing.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{fresh_db, TestServer, EMPTY_TEMPLATE};
use reviews::pb;

const REVIEWS: &str = r#"id,product_id,rating,date,summary,body,recommend,reported,reviewer_name,reviewer_email,response,helpfulness
2,10,4,1596080481467,"Quoted, with ""quotes""","Body  with  double spaces, and it's fine",true,false,"o'malley","a@b.co",null,3
1,10,5,1610178433963,"s","b",false,false,"n","e@x.co","null",0
3,11,2,1600000000001,"s","multi
line body",true,true,"n","e@x.co","We're sorry",1
4,10,7,1600000000000,"s","b",true,false,"n","e@x.co",null,0
5,10,3,notadate,"s","b",true,false,"n","e@x.co",null,0
6,10,3,1600000000000,"s","b",maybe,false,"n","e@x.co",null,0
7,10,3,1600000000000,"s","b",true
2,10,3,1600000000000,"s","b",true,false,"n","e@x.co",null,0
8,10,3,1600000000000,"s","never closed,true,false,n,e@x.co,null,0
"#;

const PHOTOS: &str = r#"id,review_id,url
8,2,"https://images.example.com/8.jpg"
7,2,"https://images.example.com/7.jpg"
9,99,"https://images.example.com/9.jpg"
8,1,"https://images.example.com/again.jpg"
"#;

const CHARACTERISTICS: &str = r#"id,product_id,name
2,10,"Length"
1,10,"Fit"
3,11,"Quality"
4,10,"Fit"
x,10,"Size"
"#;

const CHARACTERISTIC_REVIEWS: &str = "id,characteristic_id,review_id,value
1,1,2,4
2,2,2,3
3,1,1,2
4,2,1,5
5,3,3,4
6,3,2,4
7,1,2,5
8,1,404,3
9,9,2,3
10,2,2,0
";

fn write_fixture(dir: &Path) {
    for (name, text) in [
        ("reviews.csv", REVIEWS),
        ("reviews_photos.csv", PHOTOS),
        ("characteristics.csv", CHARACTERISTICS),
        ("characteristic_reviews.csv", CHARACTERISTIC_REVIEWS),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn load_handles_the_quirks_and_sets_bad_rows_aside() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let url = fresh_db(EMPTY_TEMPLATE).await;
    let rejects = dir.path().join("rejects");
    let report = reviews::etl::load(&url, dir.path(), Some(&rejects))
        .await
        .unwrap();
    let counts: Vec<_> = report
        .files
        .iter()
        .map(|f| (f.file, f.loaded, f.rejected))
        .collect();
    assert_eq!(
        counts,
        [
            ("characteristics.csv", 3, 2),
            ("reviews.csv", 3, 6),
            ("reviews_photos.csv", 2, 2),
            ("characteristic_reviews.csv", 5, 5),
        ]
    );

    let reasons = read_rejects(&rejects);
    assert_eq!(reasons.len(), 15);
    let reason = |file: &str, line: u64| reasons[&(file.to_string(), line)].0.clone();
    assert!(reason("characteristics.csv", 5).contains("already has a characteristic named"));
    assert!(reason("characteristics.csv", 6).contains("not a positive 32-bit integer"));
    assert!(reason("reviews.csv", 6).contains("rating"));
    assert!(reason("reviews.csv", 7).contains("epoch milliseconds"));
    assert!(reason("reviews.csv", 8).contains("neither true nor false"));
    assert!(reason("reviews.csv", 9).contains("expected 12 fields, found 7"));
    assert!(reason("reviews.csv", 10).contains("duplicate review id 2"));
    assert!(reason("reviews.csv", 11).contains("not closed"));
    assert!(reason("reviews_photos.csv", 4).contains("review 99 does not exist"));
    assert!(reason("reviews_photos.csv", 5).contains("duplicate photo id 8"));
    assert!(reason("characteristic_reviews.csv", 7).contains("belongs to product 11"));
    assert!(reason("characteristic_reviews.csv", 8).contains("already rates"));
    assert!(reason("characteristic_reviews.csv", 9).contains("review 404 does not exist"));
    assert!(reason("characteristic_reviews.csv", 10).contains("characteristic 9 does not exist"));
    assert!(reason("characteristic_reviews.csv", 11).contains("from 1 to 5"));

    let db = common::sql(&url).await;
    // Review 2 has its two photos; review 1 none (its one photo row was set aside): the v1
    // filters' column and counts say so.
    let with_photos: Vec<i32> = db
        .query("SELECT id FROM reviews WHERE has_photos ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(with_photos, [2]);
    let photo_counts: Vec<i64> = db
        .query_one(
            "SELECT ARRAY[photos_rating_1, photos_rating_2, photos_rating_3, photos_rating_4,
                          photos_rating_5] FROM product_stats WHERE product_id = 10",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(photo_counts, [0, 0, 0, 1, 0]);
    let row = db
        .query_one(
            "SELECT summary, body, response, (extract(epoch FROM date) * 1000)::int8
             FROM reviews WHERE id = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Quoted, with \"quotes\"");
    assert_eq!(
        row.get::<_, String>(1),
        "Body  with  double spaces, and it's fine"
    );
    assert_eq!(
        row.get::<_, Option<String>>(2),
        None,
        "bare null is SQL NULL"
    );
    assert_eq!(
        row.get::<_, i64>(3),
        1_596_080_481_467,
        "milliseconds are kept"
    );
    let quoted_null: Option<String> = db
        .query_one("SELECT response FROM reviews WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        quoted_null.as_deref(),
        Some("null"),
        "a quoted \"null\" is text"
    );
    let body: String = db
        .query_one("SELECT body FROM reviews WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(body, "multi\nline body");

    // Aggregates rebuilt (review 3 is reported) and sequences past the loaded maximum.
    let mut s = TestServer::start(&url).await;
    let m = s
        .client
        .get_review_meta(pb::GetReviewMetaRequest { product_id: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.ratings, HashMap::from([(4, 1), (5, 1)]));
    assert_eq!(
        m.characteristics["Fit"].value.as_deref(),
        Some("3.0000000000000000")
    );
    assert_eq!(
        m.characteristics["Length"].value.as_deref(),
        Some("4.0000000000000000")
    );
    let m11 = s
        .client
        .get_review_meta(pb::GetReviewMetaRequest { product_id: 11 })
        .await
        .unwrap()
        .into_inner();
    assert!(m11.ratings.is_empty());
    assert_eq!(m11.characteristics["Quality"].value, None);

    let created = s
        .client
        .create_review(pb::CreateReviewRequest {
            product_id: 10,
            rating: 3,
            summary: "After the load".into(),
            body: "Written after a load to prove every id sequence moved past the data.".into(),
            recommend: true,
            name: "seq".into(),
            email: "seq@example.com".into(),
            photos: vec!["https://images.example.com/new.jpg".into()],
            characteristics: HashMap::from([(1, 3), (2, 3)]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.review_id, 4);
    let photo: i32 = db
        .query_one("SELECT id FROM reviews_photos WHERE review_id = 4", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(photo, 9);
}

/// `(file, line) -> (reason, row)` from a rejects folder.
fn read_rejects(dir: &Path) -> HashMap<(String, u64), (String, String)> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut lines = text.lines();
        while let Some(header) = lines.next() {
            let (file, rest) = header.split_once(':').unwrap();
            let (line, reason) = rest.split_once(": ").unwrap();
            let row = lines.next().unwrap_or_default().to_string();
            out.insert(
                (file.to_string(), line.parse().unwrap()),
                (reason.to_string(), row),
            );
        }
    }
    out
}

/// A digest of every row of every table, to compare whole data sets.
async fn digest(db: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for table in [
        "reviews",
        "reviews_photos",
        "characteristics",
        "characteristic_reviews",
        "product_stats",
    ] {
        let key = if table == "product_stats" {
            "product_id"
        } else {
            "id"
        };
        let row = db
            .query_one(
                &format!("SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY {key})), '') FROM {table} t"),
                &[],
            )
            .await
            .unwrap();
        out.push(format!("{table} {}", row.get::<_, String>(0)));
    }
    out
}

async fn has_staging(db: &tokio_postgres::Client) -> bool {
    db.query_one("SELECT to_regnamespace('reviews_staging') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

/// The data set's constraints (with whether they are validated), indexes and table options.
async fn schema(db: &tokio_postgres::Client) -> Vec<String> {
    let rows = db
        .query(
            "SELECT format('%s %s %s %s', r.relname, c.conname, pg_get_constraintdef(c.oid),
                          c.convalidated)
             FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
             WHERE r.relnamespace = 'public'::regnamespace AND r.relkind = 'r'
             UNION ALL
             SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
             UNION ALL
             SELECT format('%s options %s', relname, reloptions) FROM pg_class
             WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let out: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(out.len() > 20, "constraints and indexes: {out:?}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_again_replaces_the_data_set_with_the_same_result() {
    let url = fresh_db(common::SAMPLE_TEMPLATE).await;
    let db = common::sql(&url).await;
    let before = digest(&db).await;
    // The keys, indexes and checks the migrations create, which every load must rebuild.
    let migrated = schema(&common::sql(&fresh_db(EMPTY_TEMPLATE).await).await).await;
    // What a load killed while building keys leaves: committed staging tables, half indexed.
    db.batch_execute(
        "CREATE SCHEMA reviews_staging;
         CREATE TABLE reviews_staging.reviews (id int PRIMARY KEY);
         INSERT INTO reviews_staging.reviews VALUES (1);
         INSERT INTO review_votes VALUES (2, 1, sha256('a voter'))",
    )
    .await
    .unwrap();
    let report = reviews::etl::load(&url, &common::sample_dir(), None)
        .await
        .unwrap();
    assert_eq!(report.rejected(), 0);
    assert_eq!(digest(&db).await, before);
    let votes: i64 = db
        .query_one("SELECT count(*) FROM review_votes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(votes, 0, "votes name reviews of the replaced data set");
    assert_eq!(
        schema(&db).await,
        migrated,
        "the migrations' keys, indexes and checks, every one validated"
    );

    // The aggregates the loader gathers while it reads equal the same sums taken by SQL over
    // the loaded rows, both ways round.
    let row = db
        .query_one(
            "WITH stats AS (
                 SELECT product_id,
                        count(*) FILTER (WHERE rating = 1), count(*) FILTER (WHERE rating = 2),
                        count(*) FILTER (WHERE rating = 3), count(*) FILTER (WHERE rating = 4),
                        count(*) FILTER (WHERE rating = 5),
                        count(*) FILTER (WHERE NOT recommend), count(*) FILTER (WHERE recommend),
                        count(*) FILTER (WHERE rating = 1 AND photos),
                        count(*) FILTER (WHERE rating = 2 AND photos),
                        count(*) FILTER (WHERE rating = 3 AND photos),
                        count(*) FILTER (WHERE rating = 4 AND photos),
                        count(*) FILTER (WHERE rating = 5 AND photos)
                 FROM (SELECT r.*, EXISTS (SELECT 1 FROM reviews_photos p
                                           WHERE p.review_id = r.id) AS photos
                       FROM reviews r) r
                 WHERE NOT reported GROUP BY product_id),
             sums AS (
                 SELECT c.id, coalesce(sum(cr.value) FILTER (WHERE NOT r.reported), 0)::int8,
                        count(cr.value) FILTER (WHERE NOT r.reported)
                 FROM characteristics c
                 LEFT JOIN characteristic_reviews cr ON cr.characteristic_id = c.id
                 LEFT JOIN reviews r ON r.id = cr.review_id GROUP BY c.id)
             SELECT (SELECT count(*) FROM ((TABLE product_stats EXCEPT TABLE stats)
                                           UNION ALL (TABLE stats EXCEPT TABLE product_stats)) d),
                    (SELECT count(*) FROM ((SELECT id, value_sum, value_count FROM characteristics
                                            EXCEPT TABLE sums)
                                           UNION ALL (TABLE sums EXCEPT
                                                      SELECT id, value_sum, value_count
                                                      FROM characteristics)) d),
                    (SELECT count(*) FROM stats), (SELECT count(*) FROM sums WHERE count > 0),
                    (SELECT count(*) FROM reviews r WHERE has_photos <> EXISTS (
                         SELECT 1 FROM reviews_photos p WHERE p.review_id = r.id))",
            &[],
        )
        .await
        .unwrap();
    let (stats_off, sums_off, products, rated, photos_off): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(
        (stats_off, sums_off, photos_off),
        (0, 0, 0),
        "aggregates differ from the rows"
    );
    assert!(
        products > 0 && rated > 0,
        "the sample has aggregates to compare"
    );
    assert!(!has_staging(&db).await, "no staging schema is left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_dirty_row_is_set_aside_with_its_line_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = reviews::etl::generate::GenConfig {
        out: data.clone(),
        products: 2000,
        seed: 7,
        dirty_rate: 0.01,
    };
    let generated = reviews::etl::generate::generate(&cfg).unwrap();
    let url = fresh_db(EMPTY_TEMPLATE).await;
    let rejects = dir.path().join("rejects");
    let report = reviews::etl::load(&url, &data, Some(&rejects))
        .await
        .unwrap();

    let loaded: Vec<u64> = report.files.iter().map(|f| f.loaded).collect();
    assert_eq!(
        loaded,
        [
            generated.characteristics,
            generated.reviews,
            generated.photos,
            generated.characteristic_reviews
        ],
        "every clean row loads"
    );
    let injected: Vec<(String, u64, String)> = std::fs::read_to_string(data.join("dirty.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut p = l.splitn(3, ',');
            (
                p.next().unwrap().into(),
                p.next().unwrap().parse().unwrap(),
                p.next().unwrap().into(),
            )
        })
        .collect();
    let kinds: std::collections::BTreeSet<&str> =
        injected.iter().map(|(_, _, k)| k.as_str()).collect();
    assert_eq!(kinds.len(), 7, "every kind of dirt was injected: {kinds:?}");
    let rejected = read_rejects(&rejects);
    assert_eq!(rejected.len() as u64, generated.dirty);
    for (file, line, kind) in &injected {
        let (reason, row) = rejected
            .get(&(file.clone(), *line))
            .unwrap_or_else(|| panic!("{file}:{line} ({kind}) was not set aside"));
        assert!(row.starts_with("15000"), "the row is kept as it was: {row}");
        assert!(!reason.is_empty());
    }
}

#[test]
fn generated_data_is_the_same_for_a_seed() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&a, &b] {
        let cfg = reviews::etl::generate::GenConfig {
            out: dir.path().to_path_buf(),
            products: 300,
            seed: 42,
            dirty_rate: 0.02,
        };
        reviews::etl::generate::generate(&cfg).unwrap();
    }
    for file in [
        "reviews.csv",
        "reviews_photos.csv",
        "characteristics.csv",
        "characteristic_reviews.csv",
        "dirty.csv",
    ] {
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(file)).unwrap();
        assert_eq!(read(&a), read(&b), "{file}");
    }
    let reviews = std::fs::read_to_string(a.path().join("reviews.csv")).unwrap();
    assert!(reviews.starts_with(
        "id,product_id,rating,date,summary,body,recommend,reported,reviewer_name,reviewer_email,response,helpfulness\n"
    ));
    assert!(reviews.contains(",null,"), "bare null responses");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_load_leaves_the_old_data_serving_and_a_rerun_swaps_in_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = reviews::etl::generate::GenConfig {
        out: data.clone(),
        products: 30_000,
        seed: 3,
        dirty_rate: 0.0,
    };
    reviews::etl::generate::generate(&cfg).unwrap();
    let db_url = fresh_db(common::SAMPLE_TEMPLATE).await;
    let redis = &common::cluster().redis_url;
    let s = TestServer::launch(
        common::Setup::new(reviews::db::DbConfig::new(&db_url)).cached(redis, &db_url),
    )
    .await;
    let meta = |s: &TestServer| {
        let mut c = s.client.clone();
        async move {
            c.get_review_meta(pb::GetReviewMetaRequest { product_id: 1 })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let old = meta(&s).await;
    assert_eq!(old.ratings, HashMap::from([(4, 1), (5, 1)]));

    let mut load = std::process::Command::new(env!("CARGO_BIN_EXE_reviews"))
        .args(["load", data.to_str().unwrap(), "--database-url", &db_url])
        .arg("--rejects")
        .arg(dir.path().join("rejects"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let watcher = common::sql(&db_url).await;
    assert!(
        common::eventually(std::time::Duration::from_secs(30), || async {
            let copying: i64 = watcher
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY reviews_staging.%'", &[])
                .await
                .unwrap()
                .get(0);
            copying > 0
        })
        .await,
        "the load is copying"
    );
    load.kill().unwrap();
    load.wait().unwrap();

    assert_eq!(meta(&s).await, old, "the old data is still served");
    assert_eq!(
        common::fingerprint(&watcher).await[0],
        149,
        "and still in place"
    );

    let report = reviews::etl::load(&db_url, &data, None).await.unwrap();
    assert_eq!(report.rejected(), 0);
    reviews::cache::hide_all(&{
        let mut c = reviews::cache::CacheConfig::new(redis);
        c.prefix = db_url.rsplit('/').next().unwrap().to_string();
        c
    })
    .await
    .unwrap();
    let new = meta(&s).await;
    assert_ne!(
        new, old,
        "right after the swap the service answers from the new data"
    );
    let expected: i64 = watcher
        .query_one(
            "SELECT count(*) FROM reviews WHERE product_id = 1 AND NOT reported",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(new.ratings.values().sum::<i64>(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_load_leaves_the_old_data_untouched() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    std::fs::write(
        dir.path().join("reviews_photos.csv"),
        "id,url,review_id\n1,x,1\n",
    )
    .unwrap();
    let url = fresh_db(common::SAMPLE_TEMPLATE).await;
    let db = common::sql(&url).await;
    let before = digest(&db).await;
    let err = reviews::etl::load(&url, dir.path(), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not start with the header"),
        "{err}"
    );

    std::fs::remove_file(dir.path().join("characteristic_reviews.csv")).unwrap();
    write_fixture_file(dir.path(), "reviews_photos.csv", PHOTOS);
    let err = reviews::etl::load(&url, dir.path(), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("characteristic_reviews.csv is missing"),
        "{err}"
    );

    assert_eq!(digest(&db).await, before, "the old data set is untouched");
}

fn write_fixture_file(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_load_waits_for_the_one_running() {
    let url = fresh_db(common::SAMPLE_TEMPLATE).await;
    let db = common::sql(&url).await;
    let before = digest(&db).await;
    // A load in progress holds this lock for its whole run.
    let other = common::sql(&url).await;
    other
        .execute("SELECT pg_advisory_lock($1)", &[&reviews::etl::LOAD_LOCK])
        .await
        .unwrap();
    let second = tokio::spawn({
        let url = url.clone();
        async move { reviews::etl::load(&url, &common::sample_dir(), None).await }
    });
    let waiting = common::eventually(std::time::Duration::from_secs(10), || async {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                 WHERE l.locktype = 'advisory' AND NOT l.granted
                   AND d.datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        waiting == 1
    })
    .await;
    assert!(waiting, "the second load waits for the lock");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "and does nothing meanwhile");
    assert!(!has_staging(&db).await, "not even the staging schema");

    other
        .execute("SELECT pg_advisory_unlock($1)", &[&reviews::etl::LOAD_LOCK])
        .await
        .unwrap();
    let report = second.await.unwrap().unwrap();
    assert_eq!(report.rejected(), 0, "once the other load is done, it runs");
    assert_eq!(digest(&db).await, before);
}
