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
    let rejects = dir.path().join("rejects.csv");
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
            ("reviews_photos.csv", 2, 1),
            ("characteristic_reviews.csv", 5, 5),
        ]
    );

    let rejected = std::fs::read_to_string(&rejects).unwrap();
    let reasons: HashMap<(String, u64), String> = rejected
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, ',');
            let file = parts.next().unwrap().to_string();
            let line = parts.next().unwrap().parse().unwrap();
            ((file, line), parts.next().unwrap().to_string())
        })
        .collect();
    assert_eq!(reasons.len(), 14);
    let reason = |file: &str, line: u64| reasons[&(file.to_string(), line)].clone();
    assert!(reason("characteristics.csv", 5).contains("already has a characteristic named"));
    assert!(reason("characteristics.csv", 6).contains("not a positive 32-bit integer"));
    assert!(reason("reviews.csv", 6).contains("rating"));
    assert!(reason("reviews.csv", 7).contains("epoch milliseconds"));
    assert!(reason("reviews.csv", 8).contains("neither true nor false"));
    assert!(reason("reviews.csv", 9).contains("expected 12 fields, found 7"));
    assert!(reason("reviews.csv", 10).contains("duplicate review id 2"));
    assert!(reason("reviews.csv", 11).contains("not closed"));
    assert!(reason("reviews_photos.csv", 4).contains("review 99 does not exist"));
    assert!(reason("characteristic_reviews.csv", 7).contains("belongs to product 11"));
    assert!(reason("characteristic_reviews.csv", 8).contains("already rates"));
    assert!(reason("characteristic_reviews.csv", 9).contains("review 404 does not exist"));
    assert!(reason("characteristic_reviews.csv", 10).contains("characteristic 9 does not exist"));
    assert!(reason("characteristic_reviews.csv", 11).contains("from 1 to 5"));

    let db = common::sql(&url).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn load_refuses_a_database_that_holds_reviews() {
    let url = fresh_db(common::SAMPLE_TEMPLATE).await;
    let err = reviews::etl::load(&url, &common::sample_dir(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already holds reviews"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_load_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    std::fs::write(
        dir.path().join("reviews_photos.csv"),
        "id,url,review_id\n1,x,1\n",
    )
    .unwrap();
    let url = fresh_db(EMPTY_TEMPLATE).await;
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
        err.to_string().contains("characteristic_reviews.csv"),
        "{err}"
    );

    let db = common::sql(&url).await;
    assert_eq!(
        common::fingerprint(&db).await,
        vec![0; 7],
        "nothing was loaded"
    );
}

fn write_fixture_file(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}
