//! The `v1` API beside the legacy one, on the built `reviews serve` with Redis: the aggregate
//! rating (`GET /v1/products/{product_id}/rating`, `GetProductRating`), exact against
//! PostgreSQL's own arithmetic over the sample's reviews, the same over JSON, gRPC and gRPC-Web,
//! and never stale after a write.

mod common;

use common::sandbox::{self, get_json, get_text};
use common::{exact_average, fresh_db, sql, SAMPLE_TEMPLATE};
use reviews::pb;
use reviews::pb::review_service_client::ReviewServiceClient;

/// What the rating of `product` must be, computed by PostgreSQL from the review rows (not
/// from the kept aggregates the service reads): count, average, recommend ratio, per star.
async fn expected(db: &tokio_postgres::Client, product: i32) -> serde_json::Value {
    let row = db
        .query_one(
            "SELECT count(*), coalesce(sum(rating), 0)::int8, count(*) FILTER (WHERE recommend),
                    array(SELECT count(r.id) FROM generate_series(1, 5) s
                          LEFT JOIN reviews r ON r.rating = s AND r.product_id = $1
                                             AND NOT r.reported
                          GROUP BY s ORDER BY s)
             FROM reviews WHERE product_id = $1 AND NOT reported",
            &[&product],
        )
        .await
        .unwrap();
    let (count, stars, recommending): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let per_star: Vec<i64> = row.get(3);
    let (average, ratio) = if count == 0 {
        (serde_json::Value::Null, serde_json::Value::Null)
    } else {
        (
            exact_average(db, stars, count).await.into(),
            exact_average(db, recommending, count).await.into(),
        )
    };
    serde_json::json!({
        "product_id": product,
        "average_rating": average,
        "review_count": count,
        "recommend_ratio": ratio,
        "histogram": (1..=5).zip(per_star)
            .map(|(s, n)| serde_json::json!({"rating": s, "count": n}))
            .collect::<Vec<_>>(),
    })
}

/// The gRPC answer in the JSON shape, to compare both faces with one oracle.
fn as_json(r: &pb::ProductRating) -> serde_json::Value {
    serde_json::json!({
        "product_id": r.product_id,
        "average_rating": r.average_rating,
        "review_count": r.review_count,
        "recommend_ratio": r.recommend_ratio,
        "histogram": r.histogram.iter()
            .map(|h| serde_json::json!({"rating": h.rating, "count": h.count}))
            .collect::<Vec<_>>(),
    })
}

/// The built `reviews serve` on a fresh copy of the sample, with Redis (keys under `tag`) and no
/// rate limits, and a connection to its database.
async fn served(tag: &str) -> (tokio_postgres::Client, sandbox::Proc, std::net::SocketAddr) {
    let db_url = fresh_db(SAMPLE_TEMPLATE).await;
    let db = sql(&db_url).await;
    let prefix = format!("{tag}-{}", std::process::id());
    let mut serve = sandbox::serve(&db_url, &prefix, &["--rate-limit", "off"]);
    let (server, addr) = sandbox::started(&mut serve).await;
    (db, server, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aggregate_rating_is_exact_on_both_faces_and_never_stale() {
    let (db, server, addr) = served("v1-rating").await;
    let http = reqwest::Client::new();
    let mut grpc = ReviewServiceClient::new(common::channel(addr).await);
    let rating_url = |p: i32| format!("http://{addr}/v1/products/{p}/rating");

    // Products with reviews (some reported), and one with none: the sample's first 40 and an
    // unknown id. Twice each, so the second answer is the cache's.
    for product in (1..=40).chain([999_999]) {
        let want = expected(&db, product).await;
        for _ in 0..2 {
            let json = get_json(&http, &rating_url(product)).await;
            assert_eq!(json, want, "JSON, product {product}");
            let reply = grpc
                .get_product_rating(pb::GetProductRatingRequest {
                    product_id: product,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(as_json(&reply), want, "gRPC, product {product}");
        }
    }
    // gRPC-Web, as a browser sends it: the same message in the first frame of the body.
    let answered = http
        .post(format!(
            "http://{addr}/reviews.v1.ReviewService/GetProductRating"
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(sandbox::grpc_web_frame(&pb::GetProductRatingRequest {
            product_id: 2,
            ..Default::default()
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    let body = answered.bytes().await.unwrap();
    assert_eq!(body[0], 0, "a data frame first");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let web = <pb::ProductRating as prost::Message>::decode(&body[5..5 + len]).unwrap();
    assert_eq!(as_json(&web), expected(&db, 2).await, "gRPC-Web");
    // The bytes, as the README shows them.
    assert_eq!(
        get_text(&http, &rating_url(2)).await,
        r#"{"product_id":2,"average_rating":"3.6666666666666667","review_count":3,"recommend_ratio":"0.6666666666666667","histogram":[{"rating":1,"count":0},{"rating":2,"count":0},{"rating":3,"count":1},{"rating":4,"count":2},{"rating":5,"count":0}]}"#
    );
    let unknown = get_json(&http, &rating_url(999_999)).await;
    assert_eq!(unknown["review_count"], 0);
    assert!(unknown["average_rating"].is_null() && unknown["recommend_ratio"].is_null());

    // A write through the service: the very next read, cached before, has it.
    let meta = get_json(&http, &format!("http://{addr}/reviews/meta?product_id=2")).await;
    let characteristics = sandbox::rate_all(&meta, 3);
    let before = get_json(&http, &rating_url(2)).await;
    let review = serde_json::json!({
        "product_id": 2, "rating": 1, "summary": "rating moves", "recommend": false,
        "body": "a body long enough to be a valid review, fifty characters at least",
        "name": "rater", "email": "rater@example.com", "characteristics": characteristics
    });
    let created = sandbox::post_review(addr, &[], &review).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let after = get_json(&http, &rating_url(2)).await;
    assert_eq!(after, expected(&db, 2).await);
    assert_eq!(
        after["review_count"].as_i64(),
        before["review_count"].as_i64().map(|n| n + 1)
    );
    assert_eq!(
        after["histogram"][0]["count"].as_i64(),
        before["histogram"][0]["count"].as_i64().map(|n| n + 1)
    );

    // Bad ids: a field violation, as JSON (the legacy routes' plain-text error is theirs), and
    // INVALID_ARGUMENT over gRPC.
    for bad in ["0", "-3", "abc", "99999999999", "+2"] {
        let r = http
            .get(format!("http://{addr}/v1/products/{bad}/rating"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{bad}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("product_id"),
            "{bad}: {body}"
        );
    }
    let refused = grpc
        .get_product_rating(pb::GetProductRatingRequest {
            product_id: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(common::violation_fields(&refused), ["product_id"]);

    sandbox::stop(server).await;
}

/// The v1 list's orders, as SQL over the review rows: the oracle of the walks below.
fn order_by(sort: &str) -> &'static str {
    match sort {
        "newest" => "date DESC, id DESC",
        "helpful" => "helpfulness DESC, date DESC, id DESC",
        _ => "relevance DESC, date DESC, id DESC",
    }
}

/// The ids a filtered list must show, in order, computed from the review and photo rows (not
/// from the has_photos column or the kept counts the service reads).
async fn expected_ids(
    db: &tokio_postgres::Client,
    product: i32,
    sort: &str,
    stars: &[i16],
    photos: Option<bool>,
) -> Vec<i32> {
    let stars: Vec<i16> = if stars.is_empty() {
        (1..=5).collect()
    } else {
        stars.to_vec()
    };
    db.query(
        &format!(
            "SELECT id FROM reviews r
             WHERE product_id = $1 AND NOT reported AND rating = ANY($2)
               AND ($3::bool IS NULL
                    OR EXISTS (SELECT 1 FROM reviews_photos p WHERE p.review_id = r.id) = $3)
             ORDER BY {}",
            order_by(sort)
        ),
        &[&product, &stars, &photos],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Walks a v1 list over JSON from its first page to its last: the ids in order, and the
/// `total_size` of every page. `between` runs after each page.
async fn walk(
    http: &reqwest::Client,
    url: &str,
    size: usize,
    mut between: impl AsyncFnMut(usize),
) -> (Vec<i32>, Vec<i64>) {
    let (mut ids, mut totals, mut token) = (Vec::new(), Vec::new(), String::new());
    for page in 0.. {
        let text = get_text(http, &format!("{url}&page_size={size}&page_token={token}")).await;
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let reviews = body["reviews"].as_array().unwrap();
        assert!(reviews.len() <= size, "{url}: page {page} is too long");
        ids.extend(
            reviews
                .iter()
                .map(|r| r["review_id"].as_i64().unwrap() as i32),
        );
        totals.push(body["total_size"].as_i64().unwrap());
        token = body["next_page_token"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
        assert_eq!(reviews.len(), size, "{url}: only the last page is short");
        between(page).await;
    }
    (ids, totals)
}

#[tokio::test(flavor = "multi_thread")]
async fn filtered_lists_page_by_cursor_with_exact_totals() {
    let (db, server, addr) = served("v1-list").await;
    let http = reqwest::Client::new();
    let product = 3;

    // 45 more reviews of product 3 through the service: every star, a photo on every third,
    // then votes (ties in helpfulness) and reports; and dates cut to the second, so that dates
    // tie too and the id decides.
    let meta = get_json(
        &http,
        &format!("http://{addr}/reviews/meta?product_id={product}"),
    )
    .await;
    let characteristics = sandbox::rate_all(&meta, 4);
    let post = |i: usize| {
        let photos: Vec<String> = if i.is_multiple_of(3) {
            vec![format!("https://images.example.com/{i}.jpg")]
        } else {
            Vec::new()
        };
        let review = serde_json::json!({
            "product_id": product, "rating": 1 + i % 5, "summary": format!("review {i}"),
            "recommend": i.is_multiple_of(2), "photos": photos, "name": "walker",
            "body": "a body long enough to be a valid review, fifty characters at least",
            "email": format!("walker{i}@example.com"), "characteristics": characteristics.clone()
        });
        async move {
            let created = sandbox::post_review(addr, &[], &review).await;
            let status = created.status();
            let body: serde_json::Value =
                serde_json::from_slice(&created.bytes().await.unwrap()).unwrap();
            assert_eq!(status, 201, "{body}");
            body["review_id"].as_i64().unwrap() as i32
        }
    };
    let mut created = Vec::new();
    for i in 0..45 {
        created.push(post(i).await);
    }
    db.execute(
        "UPDATE reviews SET date = date_trunc('second', date) WHERE product_id = $1",
        &[&product],
    )
    .await
    .unwrap();
    for (i, id) in created.iter().enumerate() {
        for _ in 0..i % 4 {
            let voted = http
                .put(format!("http://{addr}/reviews/{id}/helpful"))
                .send()
                .await
                .unwrap();
            assert_eq!(voted.status(), 204);
        }
        if i % 11 == 5 {
            let reported = http
                .put(format!("http://{addr}/reviews/{id}/report"))
                .send()
                .await
                .unwrap();
            assert_eq!(reported.status(), 204);
        }
    }

    // Every sort under every kind of filter: the pages partition the list the rows define, in
    // its order, and every page says the filter's exact total. Twice, so the first pages come
    // from the cache the second time.
    let filters: [(&str, &[i16], Option<bool>); 6] = [
        ("", &[], None),
        ("&rating=5", &[5], None),
        ("&rating=1&rating=2", &[1, 2], None),
        ("&has_photos=true", &[], Some(true)),
        ("&has_photos=false", &[], Some(false)),
        ("&rating=4&rating=3&has_photos=true", &[3, 4], Some(true)),
    ];
    for sort in ["relevant", "newest", "helpful"] {
        for (query, stars, photos) in filters {
            let want = expected_ids(&db, product, sort, stars, photos).await;
            assert!(!want.is_empty(), "{sort}{query}: the data has such reviews");
            let url = format!("http://{addr}/v1/products/{product}/reviews?sort={sort}{query}");
            for size in [4, 7] {
                let (ids, totals) = walk(&http, &url, size, async |_| {}).await;
                assert_eq!(ids, want, "{url}, page_size {size}");
                assert!(
                    totals.iter().all(|&t| t == want.len() as i64),
                    "{url}: totals {totals:?}, {} match",
                    want.len()
                );
            }
        }
    }

    // Reviews posted during a walk: none is shown twice, and every review there was at the
    // start is shown once. In `newest` they land before the position, unseen; in `helpful`,
    // with no votes, after it, and are shown once.
    for (round, sort) in ["newest", "helpful"].into_iter().enumerate() {
        let before = expected_ids(&db, product, sort, &[], None).await;
        let url = format!("http://{addr}/v1/products/{product}/reviews?sort={sort}");
        let mut posted = Vec::new();
        let (ids, _) = walk(&http, &url, 5, async |page| {
            if page < 3 {
                posted.push(post(100 + 10 * round + page).await);
            }
        })
        .await;
        let mut seen = ids.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            ids.len(),
            "{sort}: a review shown twice: {ids:?}"
        );
        assert!(
            before.iter().all(|id| ids.contains(id)),
            "{sort}: a review skipped"
        );
        let new_seen = ids.iter().filter(|id| posted.contains(id)).count();
        match sort {
            "newest" => assert_eq!(new_seen, 0, "newer reviews land before the position"),
            _ => assert_eq!(new_seen, posted.len(), "unvoted reviews land after it"),
        }
    }

    // gRPC and gRPC-Web walk the same lists.
    let mut grpc = ReviewServiceClient::new(common::channel(addr).await);
    let want = expected_ids(&db, product, "helpful", &[3, 4], Some(true)).await;
    let (mut ids, mut token) = (Vec::new(), String::new());
    loop {
        let page = grpc
            .list_product_reviews(pb::ListProductReviewsRequest {
                product_id: product,
                page_size: 2,
                page_token: token,
                sort: pb::Sort::Helpful as i32,
                rating: vec![3, 4],
                has_photos: Some(true),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size as usize, want.len());
        ids.extend(page.reviews.iter().map(|r| r.review_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(ids, want, "gRPC");
    let answered = http
        .post(format!(
            "http://{addr}/reviews.v1.ReviewService/ListProductReviews"
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(sandbox::grpc_web_frame(&pb::ListProductReviewsRequest {
            product_id: product,
            page_size: 3,
            rating: vec![5],
            ..Default::default()
        }))
        .send()
        .await
        .unwrap();
    let body = answered.bytes().await.unwrap();
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let web =
        <pb::ListProductReviewsResponse as prost::Message>::decode(&body[5..5 + len]).unwrap();
    let want = expected_ids(&db, product, "relevant", &[5], None).await;
    let web_ids: Vec<i32> = web.reviews.iter().map(|r| r.review_id).collect();
    assert_eq!(web_ids, want[..3], "gRPC-Web");
    assert_eq!(web.total_size as usize, want.len());

    // Bad parameters and tokens: 422 naming the field, INVALID_ARGUMENT over gRPC; never a page.
    let first = get_json(
        &http,
        &format!("http://{addr}/v1/products/{product}/reviews?rating=5&page_size=2"),
    )
    .await;
    let token = first["next_page_token"].as_str().unwrap().to_string();
    let mut tampered = token.clone().into_bytes();
    tampered[10] = if tampered[10] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(tampered).unwrap();
    let base = format!("http://{addr}/v1/products/{product}/reviews?");
    for (query, field) in [
        (format!("rating=5&page_token={tampered}"), "page_token"),
        (format!("rating=4&page_token={token}"), "page_token"),
        (
            format!("rating=5&sort=newest&page_token={token}"),
            "page_token",
        ),
        ("page_token=AAAA".to_string(), "page_token"),
        (format!("page_token={}", "A".repeat(200)), "page_token"),
        ("rating=0".to_string(), "rating"),
        ("rating=6".to_string(), "rating"),
        (
            "rating=1&rating=2&rating=3&rating=4&rating=5&rating=5".to_string(),
            "rating",
        ),
        ("page_size=-1".to_string(), "page_size"),
        ("has_photos=yes".to_string(), "has_photos"),
        ("sort=best".to_string(), "sort"),
    ] {
        let r = http.get(format!("{base}{query}")).send().await.unwrap();
        assert_eq!(r.status(), 422, "{query}");
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(
            body["fields"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["field"] == field),
            "{query}: {body}"
        );
    }
    let refused = grpc
        .list_product_reviews(pb::ListProductReviewsRequest {
            product_id: product,
            rating: vec![5],
            page_token: tampered,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(common::violation_fields(&refused), ["page_token"]);

    sandbox::stop(server).await;
}

/// `document` expanded by PyLD, a JSON-LD processor (tests/jsonld/expand.py).
fn expanded(document: &[u8]) -> serde_json::Value {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/jsonld/expand.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test installs PyLD)");
    child.stdin.take().unwrap().write_all(document).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyLD could not expand it");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rating_as_json_ld_is_a_schema_org_product_with_its_reviews() {
    let (db, server, addr) = served("v1-ld").await;
    let http = reqwest::Client::new();
    let ld = |query: &str| {
        http.get(format!("http://{addr}/v1/products/{query}"))
            .header("accept", "application/ld+json")
            .send()
    };
    let r =
        ld("2/rating?product_name=Camo%20Onesie&product_url=https://shop.example.com/p/2&sku=C-2")
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/ld+json");
    assert!(r
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("accept")));
    let body = r.bytes().await.unwrap();
    let doc = expanded(&body);
    let s = |term: &str| format!("http://schema.org/{term}");
    let product = &doc[0];
    assert_eq!(product["@type"], serde_json::json!([s("Product")]));
    assert_eq!(product[s("name")][0]["@value"], "Camo Onesie");
    assert_eq!(
        product[s("url")][0]["@value"],
        "https://shop.example.com/p/2"
    );
    assert_eq!(product[s("sku")][0]["@value"], "C-2");
    let rating = &product[s("aggregateRating")][0];
    assert_eq!(rating["@type"], serde_json::json!([s("AggregateRating")]));
    let want = expected(&db, 2).await;
    assert_eq!(
        rating[s("ratingValue")][0]["@value"],
        want["average_rating"]
    );
    assert_eq!(rating[s("reviewCount")][0]["@value"], want["review_count"]);
    assert_eq!(rating[s("bestRating")][0]["@value"], 5);
    assert_eq!(rating[s("worstRating")][0]["@value"], 1);
    // The first reviews, most relevant first, with what review snippets need.
    let ids = expected_ids(&db, 2, "relevant", &[], None).await;
    let reviews = product[s("review")].as_array().unwrap();
    assert_eq!(reviews.len(), ids.len().min(5));
    for (review, id) in reviews.iter().zip(&ids) {
        let row = db
            .query_one(
                "SELECT reviewer_name, summary, body, rating::int4, to_char(date AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                 FROM reviews WHERE id = $1",
                &[id],
            )
            .await
            .unwrap();
        assert_eq!(review["@type"], serde_json::json!([s("Review")]));
        let author = &review[s("author")][0];
        assert_eq!(author["@type"], serde_json::json!([s("Person")]));
        assert_eq!(author[s("name")][0]["@value"], row.get::<_, String>(0));
        assert_eq!(review[s("name")][0]["@value"], row.get::<_, String>(1));
        assert_eq!(
            review[s("reviewBody")][0]["@value"],
            row.get::<_, String>(2)
        );
        let stars = &review[s("reviewRating")][0];
        assert_eq!(stars["@type"], serde_json::json!([s("Rating")]));
        assert_eq!(stars[s("ratingValue")][0]["@value"], row.get::<_, i32>(3));
        assert_eq!(
            review[s("datePublished")][0]["@value"],
            row.get::<_, String>(4)
        );
    }
    // The bytes, as the README shows them (the key is the default one, as in `reviews dev`).
    let shown = ld("2/rating?product_name=Camo%20Onesie&sku=C-2")
        .await
        .unwrap();
    assert_eq!(
        shown.text().await.unwrap(),
        r#"{"@context":"https://schema.org","@type":"Product","aggregateRating":{"@type":"AggregateRating","bestRating":5,"ratingValue":"3.6666666666666667","reviewCount":3,"worstRating":1},"name":"Camo Onesie","review":[{"@type":"Review","author":{"@type":"Person","name":"bigbrotherbenjamin"},"datePublished":"2020-12-30","name":"I am liking these glasses","reviewBody":"They are very dark.  But that's good because I'm in very sunny spots","reviewRating":{"@type":"Rating","bestRating":5,"ratingValue":4,"worstRating":1}},{"@type":"Review","author":{"@type":"Person","name":"fashionperson"},"datePublished":"2020-09-05","name":"They look good on me","reviewBody":"I so stylish and just my aesthetic.","reviewRating":{"@type":"Rating","bestRating":5,"ratingValue":4,"worstRating":1}},{"@type":"Review","author":{"@type":"Person","name":"shortandsweeet"},"datePublished":"2019-04-14","name":"I'm enjoying wearing these shades","reviewBody":"Comfortable and practical.","reviewRating":{"@type":"Rating","bestRating":5,"ratingValue":3,"worstRating":1}}],"sku":"C-2"}"#
    );
    // And the README's v1 list: the first page of 4- and 5-star reviews, one a page.
    let listed = sandbox::get_text(
        &http,
        &format!("http://{addr}/v1/products/2/reviews?rating=4&rating=5&sort=newest&page_size=1"),
    )
    .await;
    assert_eq!(
        listed,
        r#"{"reviews":[{"review_id":3,"rating":4,"summary":"I am liking these glasses","recommend":true,"response":"Glad you're enjoying the product!","body":"They are very dark.  But that's good because I'm in very sunny spots","date":"2020-12-30T10:57:31.021Z","reviewer_name":"bigbrotherbenjamin","helpfulness":5,"photos":[]}],"next_page_token":"AQAAAAIBGAAAAAAAAAAAAAW3rF-tjsgAAAADH218X4OXNaC3tytETavQxg","total_size":2}"#
    );
    // The same URL without Accept is the JSON answer, with its own tag.
    let plain = http
        .get(format!("http://{addr}/v1/products/2/rating?product_name=Camo%20Onesie&product_url=https://shop.example.com/p/2&sku=C-2"))
        .send()
        .await
        .unwrap();
    assert!(plain.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let plain: serde_json::Value = serde_json::from_slice(&plain.bytes().await.unwrap()).unwrap();
    assert_eq!(plain, want);
    // A product without reviews has no rating to mark up; the name is required; bad fields
    // are named.
    let none: serde_json::Value = serde_json::from_slice(
        &ld("999999/rating?product_name=New")
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(none["@type"], "Product");
    assert!(none.get("aggregateRating").is_none() && none.get("review").is_none());
    for (query, field) in [
        ("2/rating", "product_name"),
        ("2/rating?product_name=%20", "product_name"),
        ("2/rating?product_name=x&product_url=ftp://x", "product_url"),
        (
            &format!("2/rating?product_name=x&sku={}", "s".repeat(101)),
            "sku",
        ),
    ] {
        let r = ld(query).await.unwrap();
        assert_eq!(r.status(), 422, "{query}");
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body["fields"][0]["field"], field, "{query}: {body}");
    }
    sandbox::stop(server).await;
}
