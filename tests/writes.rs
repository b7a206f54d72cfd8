//! CreateReview, MarkReviewHelpful and ReportReview: validation, atomicity, and aggregates that
//! stay exact under concurrency.

mod common;

use std::collections::HashMap;

use common::{fingerprint, violation_fields, TestServer};
use reviews::pb::{self, CreateReviewRequest, Sort};
use tonic::Code;

/// A valid review of product 1 (characteristics 1-4).
fn valid() -> CreateReviewRequest {
    CreateReviewRequest {
        product_id: 1,
        rating: 2,
        summary: "Shrank in the wash".into(),
        body: "Fit well out of the box, then lost a size after one cold wash.  Meh.".into(),
        recommend: false,
        name: "laundryday".into(),
        email: "laundry@example.com".into(),
        photos: vec![
            "https://images.example.com/a.jpg".into(),
            "http://images.example.com/b.jpg".into(),
        ],
        characteristics: HashMap::from([(1, 1), (2, 2), (3, 3), (4, 5)]),
    }
}

fn char_values(m: &pb::ReviewMeta) -> HashMap<String, Option<String>> {
    m.characteristics
        .iter()
        .map(|(n, c)| (n.clone(), c.value.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_review_shows_up_in_the_next_list_and_meta() {
    let mut s = TestServer::sample().await;
    let before = std::time::SystemTime::now();
    let id = s
        .client
        .create_review(valid())
        .await
        .unwrap()
        .into_inner()
        .review_id;
    assert!(id > 149, "ids continue after the loaded maximum, got {id}");

    let list = s.all_reviews(1, Sort::Newest).await;
    let r = &list[0];
    assert_eq!(r.review_id, id);
    assert_eq!((r.rating, r.recommend, r.helpfulness), (2, false, 0));
    assert_eq!(r.summary, "Shrank in the wash");
    assert_eq!(r.reviewer_name, "laundryday");
    assert_eq!(r.response, None);
    let urls: Vec<_> = r.photos.iter().map(|p| p.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "https://images.example.com/a.jpg",
            "http://images.example.com/b.jpg"
        ]
    );
    let date = r.date.as_ref().unwrap();
    assert_eq!(
        date.nanos % 1_000_000,
        0,
        "dates are kept to the millisecond"
    );
    let posted = std::time::UNIX_EPOCH + std::time::Duration::new(date.seconds as u64, 0);
    assert!(posted + std::time::Duration::from_secs(2) >= before);

    let m = s.meta(1).await;
    assert_eq!(m.ratings, HashMap::from([(2, 1), (4, 1), (5, 1)]));
    assert_eq!(m.recommended, HashMap::from([(false, 2), (true, 1)]));
    // Fit (4+4+1)/3, Length (3+4+2)/3, Comfort (5+5+3)/3, Quality (4+3+5)/3.
    assert_eq!(
        char_values(&m),
        HashMap::from([
            ("Fit".into(), Some("3.0000000000000000".into())),
            ("Length".into(), Some("3.0000000000000000".into())),
            ("Comfort".into(), Some("4.3333333333333333".into())),
            ("Quality".into(), Some("4.0000000000000000".into())),
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_invalid_review_is_rejected_and_writes_nothing() {
    let mut s = TestServer::sample().await;
    let db = s.sql().await;
    let untouched = fingerprint(&db).await;
    let cases: Vec<(&str, CreateReviewRequest, &str)> = vec![
        (
            "rating 7",
            CreateReviewRequest {
                rating: 7,
                ..valid()
            },
            "rating",
        ),
        (
            "rating 0",
            CreateReviewRequest {
                rating: 0,
                ..valid()
            },
            "rating",
        ),
        (
            "long summary",
            CreateReviewRequest {
                summary: "s".repeat(61),
                ..valid()
            },
            "summary",
        ),
        (
            "short body",
            CreateReviewRequest {
                body: "b".repeat(49),
                ..valid()
            },
            "body",
        ),
        (
            "long body",
            CreateReviewRequest {
                body: "b".repeat(1001),
                ..valid()
            },
            "body",
        ),
        (
            "NUL in body",
            CreateReviewRequest {
                body: format!("{}\0", "b".repeat(60)),
                ..valid()
            },
            "body",
        ),
        (
            "no name",
            CreateReviewRequest {
                name: String::new(),
                ..valid()
            },
            "name",
        ),
        (
            "long name",
            CreateReviewRequest {
                name: "n".repeat(61),
                ..valid()
            },
            "name",
        ),
        (
            "bad email",
            CreateReviewRequest {
                email: "laundry.example.com".into(),
                ..valid()
            },
            "email",
        ),
        (
            "long email",
            CreateReviewRequest {
                email: format!("{}@example.com", "e".repeat(50)),
                ..valid()
            },
            "email",
        ),
        (
            "six photos",
            CreateReviewRequest {
                photos: vec!["https://x.example/p.jpg".into(); 6],
                ..valid()
            },
            "photos",
        ),
        (
            "bad photo URL",
            CreateReviewRequest {
                photos: vec!["ftp://x.example/p.jpg".into()],
                ..valid()
            },
            "photos[0]",
        ),
        (
            "foreign characteristic",
            CreateReviewRequest {
                characteristics: HashMap::from([(1, 1), (2, 2), (3, 3), (4, 5), (5, 3)]),
                ..valid()
            },
            "characteristics[5]",
        ),
        (
            "missing characteristic",
            CreateReviewRequest {
                characteristics: HashMap::from([(1, 1), (2, 2), (3, 3)]),
                ..valid()
            },
            "characteristics[4]",
        ),
        (
            "characteristic value 6",
            CreateReviewRequest {
                characteristics: HashMap::from([(1, 1), (2, 2), (3, 3), (4, 6)]),
                ..valid()
            },
            "characteristics[4]",
        ),
        (
            "product 0",
            CreateReviewRequest {
                product_id: 0,
                ..valid()
            },
            "product_id",
        ),
    ];
    for (what, request, field) in cases {
        let e = s.client.create_review(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}");
        assert_eq!(violation_fields(&e), [field], "{what}: {}", e.message());
    }
    assert_eq!(
        fingerprint(&db).await,
        untouched,
        "a rejected review wrote something"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_reviews_of_one_product_leave_exact_meta() {
    let s = TestServer::sample().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = s.client.clone();
        tasks.push(tokio::spawn(async move {
            let request = CreateReviewRequest {
                rating: i % 5 + 1,
                recommend: i % 2 == 0,
                characteristics: HashMap::from([(1, i % 5 + 1), (2, 5), (3, 1), (4, 3)]),
                ..valid()
            };
            client
                .create_review(request)
                .await
                .map(|r| r.into_inner().review_id)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().expect("every concurrent create succeeds"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);

    let mut s = s;
    let m = s.meta(1).await;
    // The sample's two reviews (a 4 and a 5) plus ten of each star.
    assert_eq!(
        m.ratings,
        HashMap::from([(1, 10), (2, 10), (3, 10), (4, 11), (5, 11)])
    );
    assert_eq!(m.recommended, HashMap::from([(false, 26), (true, 26)]));
    // Fit: 4 + 4 + 10 * (1+2+3+4+5) = 158 over 52; Length: 3 + 4 + 250 = 257 over 52.
    let db = s.sql().await;
    let oracle = async |sum: i64| -> String {
        db.query_one("SELECT round($1::int8::numeric / 52, 16)::text", &[&sum])
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(
        char_values(&m),
        HashMap::from([
            ("Fit".into(), Some(oracle(158).await)),
            ("Length".into(), Some(oracle(257).await)),
            ("Comfort".into(), Some(oracle(5 + 5 + 50).await)),
            ("Quality".into(), Some(oracle(4 + 3 + 150).await)),
        ])
    );
    assert_eq!(s.all_reviews(1, Sort::Newest).await.len(), 52);
}

#[tokio::test(flavor = "multi_thread")]
async fn helpful_votes_count_and_unknown_reviews_are_not_found() {
    let mut s = TestServer::sample().await;
    for _ in 0..3 {
        s.client
            .mark_review_helpful(pb::MarkReviewHelpfulRequest { review_id: 2 })
            .await
            .unwrap();
    }
    let r2 = s
        .all_reviews(1, Sort::Newest)
        .await
        .into_iter()
        .find(|r| r.review_id == 2)
        .unwrap();
    assert_eq!(r2.helpfulness, 5);

    let db = s.sql().await;
    let untouched = fingerprint(&db).await;
    let e = s
        .client
        .mark_review_helpful(pb::MarkReviewHelpfulRequest { review_id: 424_242 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = s
        .client
        .report_review(pb::ReportReviewRequest { review_id: 424_242 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    for id in [0, -1] {
        let e = s
            .client
            .mark_review_helpful(pb::MarkReviewHelpfulRequest { review_id: id })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), violation_fields(&e)),
            (Code::InvalidArgument, vec!["review_id".into()])
        );
    }
    assert_eq!(fingerprint(&db).await, untouched);
}

#[tokio::test(flavor = "multi_thread")]
async fn reporting_hides_a_review_from_list_and_meta_once() {
    let mut s = TestServer::sample().await;
    s.client
        .report_review(pb::ReportReviewRequest { review_id: 2 })
        .await
        .unwrap();
    let ids: Vec<_> = s
        .all_reviews(1, Sort::Newest)
        .await
        .iter()
        .map(|r| r.review_id)
        .collect();
    assert_eq!(ids, [1]);
    let m = s.meta(1).await;
    assert_eq!(m.ratings, HashMap::from([(5, 1)]));
    assert_eq!(m.recommended, HashMap::from([(true, 1)]));
    assert_eq!(
        m.characteristics["Length"].value.as_deref(),
        Some("3.0000000000000000")
    );

    let db = s.sql().await;
    let once = fingerprint(&db).await;
    s.client
        .report_review(pb::ReportReviewRequest { review_id: 2 })
        .await
        .expect("reporting twice is harmless");
    assert_eq!(fingerprint(&db).await, once);
    let kept: i64 = db
        .query_one(
            "SELECT count(*) FROM reviews WHERE id = 2 AND reported",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "a reported review is kept");

    // Reporting the last review leaves counts empty and averages null.
    s.client
        .report_review(pb::ReportReviewRequest { review_id: 1 })
        .await
        .unwrap();
    let m = s.meta(1).await;
    assert!(m.ratings.is_empty() && m.recommended.is_empty());
    assert!(m.characteristics.values().all(|c| c.value.is_none()));
}

/// The votes kept for review 2: (kind, voter) rows.
async fn votes_on_review_2(db: &tokio_postgres::Client) -> Vec<(i16, Vec<u8>)> {
    db.query(
        "SELECT kind, voter FROM review_votes WHERE review_id = 2 ORDER BY kind, voter",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn helpfulness_of_review_2(db: &tokio_postgres::Client) -> i32 {
    db.query_one("SELECT helpfulness FROM reviews WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0)
}

/// A voter the storefront names counts once per review, whether named in a JSON header or in
/// gRPC metadata; calls that name no voter each count, as the legacy contract says. Names are
/// kept only as keyed hashes, and a bad name is refused, changing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_named_voter_counts_once_and_unnamed_votes_count_each_call() {
    let mut s = TestServer::sample().await;
    let db = s.sql().await;
    let http = reqwest::Client::new();
    let put = |path: &str, voter: Option<&str>| {
        let mut request = http.put(format!("http://{}{path}", s.addr));
        if let Some(voter) = voter {
            request = request.header("Reviews-Voter", voter);
        }
        request.send()
    };
    let start = helpfulness_of_review_2(&db).await;
    for _ in 0..3 {
        let r = put("/reviews/2/helpful", Some("session-alice"))
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "a repeated vote is a harmless no-op");
    }
    put("/reviews/2/helpful", Some("session-bob"))
        .await
        .unwrap();
    assert_eq!(helpfulness_of_review_2(&db).await, start + 2);

    let grpc_vote = |voter: &str| {
        let mut request = tonic::Request::new(pb::MarkReviewHelpfulRequest { review_id: 2 });
        request
            .metadata_mut()
            .insert("reviews-voter", voter.parse().unwrap());
        request
    };
    s.client
        .mark_review_helpful(grpc_vote("session-alice"))
        .await
        .expect("the same voter over gRPC: a no-op");
    s.client
        .mark_review_helpful(grpc_vote("session-carol"))
        .await
        .unwrap();
    assert_eq!(helpfulness_of_review_2(&db).await, start + 3);
    for _ in 0..2 {
        assert_eq!(put("/reviews/2/helpful", None).await.unwrap().status(), 204);
    }
    assert_eq!(helpfulness_of_review_2(&db).await, start + 5);

    for _ in 0..2 {
        let r = put("/reviews/2/report", Some("session-carol"))
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    // Kept as the HMAC of each name under the server's key (none configured: the public one),
    // never the name.
    let hashed = |name: &str| {
        let key = reviews::server::PUBLIC_VOTER_KEY.as_bytes();
        let voter = reviews::reviews::Voter::new(name.as_bytes(), key).unwrap();
        voter.bytes().to_vec()
    };
    let mut expected = vec![
        (1, hashed("session-alice")),
        (1, hashed("session-bob")),
        (1, hashed("session-carol")),
        (2, hashed("session-carol")),
    ];
    expected.sort();
    assert_eq!(
        votes_on_review_2(&db).await,
        expected,
        "alice, bob, carol helpful; carol's report"
    );
    assert_ne!(hashed("session-alice"), hashed("session-bob"));

    let untouched = fingerprint(&db).await;
    let too_long = "v".repeat(257);
    for voter in ["", too_long.as_str()] {
        let r = put("/reviews/1/helpful", Some(voter)).await.unwrap();
        assert_eq!(r.status(), 422, "voter {:?}", voter.len());
        let body = r.text().await.unwrap();
        assert!(body.contains("reviews-voter"), "{body}");
        let e = s
            .client
            .mark_review_helpful(grpc_vote(voter))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    let r = put("/reviews/424242/helpful", Some("session-alice"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(fingerprint(&db).await, untouched);
    let kept: i64 = db
        .query_one("SELECT count(*) FROM review_votes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 4, "no vote kept for a bad name or an unknown review");
}

/// `Idempotency-Key` on CreateReview: a retry returns the first answer and writes nothing,
/// through either face and either server, while the first attempt is still in flight, and after
/// its client hung up; the key sent with another review, or malformed, is 422.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_idempotency_key_writes_nothing_and_gets_the_first_answer() {
    let a = TestServer::sample().await;
    let b = TestServer::start(&a.db_url).await;
    let db = a.sql().await;
    let rows = || common::scalar(&db, "SELECT count(*) FROM reviews");
    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "product_id": 1, "rating": 4, "summary": "Kept once", "recommend": true,
        "body": "Posted over a flaky network: the client retries with the same key.",
        "name": "retrier", "email": "retry@example.com", "photos": [],
        "characteristics": {"1": 3, "2": 3, "3": 3, "4": 3}
    });
    let post = |server: &TestServer, key: &str, body: &serde_json::Value| {
        http.post(format!("http://{}/reviews", server.addr))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
    };
    let before = rows().await;
    let first = post(&a, "order-1234-review", &body).await.unwrap();
    assert_eq!(first.status(), 201);
    let first = first.text().await.unwrap();
    let created: serde_json::Value = serde_json::from_str(&first).unwrap();
    for server in [&a, &b] {
        let again = post(server, "order-1234-review", &body).await.unwrap();
        assert_eq!(again.status(), 201);
        assert_eq!(
            again.text().await.unwrap(),
            first,
            "the first answer, again"
        );
    }
    assert_eq!(rows().await, before + 1);

    // The same review over gRPC with the same key is the same request.
    let mut grpc = tonic::Request::new(CreateReviewRequest {
        product_id: 1,
        rating: 4,
        summary: "Kept once".into(),
        body: "Posted over a flaky network: the client retries with the same key.".into(),
        recommend: true,
        name: "retrier".into(),
        email: "retry@example.com".into(),
        photos: vec![],
        characteristics: HashMap::from([(1, 3), (2, 3), (3, 3), (4, 3)]),
    });
    grpc.metadata_mut()
        .insert("idempotency-key", "order-1234-review".parse().unwrap());
    let id = a.client.clone().create_review(grpc).await.unwrap();
    assert_eq!(created["review_id"], id.into_inner().review_id);
    assert_eq!(rows().await, before + 1);

    // The key with another review, and malformed keys: 422, nothing written.
    let mut other = body.clone();
    other["rating"] = 1.into();
    let reused = post(&a, "order-1234-review", &other).await.unwrap();
    assert_eq!(reused.status(), 422);
    assert!(reused.text().await.unwrap().contains("Idempotency-Key"));
    for bad in ["has space", &"k".repeat(256)] {
        let r = post(&a, bad, &body).await.unwrap();
        assert_eq!(r.status(), 422, "{bad}");
    }
    assert_eq!(rows().await, before + 1);

    // Twenty concurrent attempts with one key: one review, one answer.
    let answers = futures_util::future::join_all((0..20).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        post(server, "burst-key", &body)
    }))
    .await;
    let mut bodies = std::collections::HashSet::new();
    for r in answers {
        let r = r.unwrap();
        assert_eq!(r.status(), 201);
        bodies.insert(r.text().await.unwrap());
    }
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(rows().await, before + 2);

    // The first attempt's client gives up while the create waits on a lock; the retry waits for
    // that create and answers with its review.
    let blocker = a.sql().await;
    blocker
        .batch_execute("BEGIN; SELECT * FROM product_stats WHERE product_id = 1 FOR UPDATE")
        .await
        .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("http://{}/reviews", a.addr))
        .header("content-type", "application/json")
        .header("idempotency-key", "hung-up")
        .body(body.to_string())
        .send()
        .await;
    assert!(gave_up.is_err(), "the client hung up");
    let retry = tokio::spawn(post(&b, "hung-up", &body));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !retry.is_finished(),
        "the retry waits for the first attempt"
    );
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let retry = retry.await.unwrap().unwrap();
    assert_eq!(retry.status(), 201);
    let retried: serde_json::Value = serde_json::from_str(&retry.text().await.unwrap()).unwrap();
    assert_eq!(rows().await, before + 3, "the first attempt's create, once");
    let newest: i32 = db
        .query_one("SELECT max(id) FROM reviews", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(retried["review_id"], newest, "{retried}");
}

/// With one review per email (the default), a second review of a product by the same email, in
/// any case, is 409 / ALREADY_EXISTS, also when both race; other products are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_review_of_a_product_by_the_same_email_is_409() {
    let db = common::fresh_db(common::SAMPLE_TEMPLATE).await;
    let mut setup = common::Setup::new(reviews::db::DbConfig::new(&db));
    setup.options.one_review_per_email = true;
    let s = TestServer::launch(setup).await;
    let http = reqwest::Client::new();
    let post = |product: i32, email: &str| {
        let chars: serde_json::Value = if product == 1 {
            serde_json::json!({"1": 3, "2": 3, "3": 3, "4": 3})
        } else {
            serde_json::json!({})
        };
        http.post(format!("http://{}/reviews", s.addr))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({
                    "product_id": product, "rating": 5, "summary": "Again?", "recommend": true,
                    "body": "The same shopper tries to review the same product a second time.",
                    "name": "twice", "email": email, "photos": [], "characteristics": chars
                })
                .to_string(),
            )
            .send()
    };
    assert_eq!(post(1, "Ann@Example.com").await.unwrap().status(), 201);
    let second = post(1, "ann@example.com").await.unwrap();
    assert_eq!(second.status(), 409);
    let body: serde_json::Value = serde_json::from_str(&second.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "already_exists", "{body}");
    let mut grpc = valid();
    grpc.email = "ANN@example.com".into();
    let status = s.client.clone().create_review(grpc).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(post(27, "ann@example.com").await.unwrap().status(), 201);

    let raced =
        futures_util::future::join_all((0..10).map(|_| post(27, "racer@example.com"))).await;
    let statuses: Vec<u16> = raced
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&c| c == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&c| c == 409).count(),
        9,
        "{statuses:?}"
    );
}
