//! The `v1` API beside the legacy one, on the built `reviews serve` with Redis: the aggregate
//! rating (`GET /v1/products/{product_id}/rating`, `GetProductRating`), exact against
//! PostgreSQL's own arithmetic over the sample's reviews, the same over JSON, gRPC and gRPC-Web,
//! and never stale after a write.

mod common;

use common::sandbox::{self, get_text};
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

#[tokio::test(flavor = "multi_thread")]
async fn the_aggregate_rating_is_exact_on_both_faces_and_never_stale() {
    let db_url = fresh_db(SAMPLE_TEMPLATE).await;
    let db = sql(&db_url).await;
    let prefix = format!("v1-rating-{}", std::process::id());
    let (server, addr) = sandbox::started(&mut sandbox::serve(
        &db_url,
        &prefix,
        &["--rate-limit", "off"],
    ))
    .await;
    let http = reqwest::Client::new();
    let mut grpc = ReviewServiceClient::new(common::channel(addr).await);
    let rating_url = |p: i32| format!("http://{addr}/v1/products/{p}/rating");

    // Products with reviews (some reported), and one with none: the sample's first 40 and an
    // unknown id. Twice each, so the second answer is the cache's.
    for product in (1..=40).chain([999_999]) {
        let want = expected(&db, product).await;
        for _ in 0..2 {
            let json: serde_json::Value =
                serde_json::from_str(&get_text(&http, &rating_url(product)).await).unwrap();
            assert_eq!(json, want, "JSON, product {product}");
            let reply = grpc
                .get_product_rating(pb::GetProductRatingRequest {
                    product_id: product,
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
    let unknown: serde_json::Value =
        serde_json::from_str(&get_text(&http, &rating_url(999_999)).await).unwrap();
    assert_eq!(unknown["review_count"], 0);
    assert!(unknown["average_rating"].is_null() && unknown["recommend_ratio"].is_null());

    // A write through the service: the very next read, cached before, has it.
    let meta: serde_json::Value = serde_json::from_str(
        &get_text(&http, &format!("http://{addr}/reviews/meta?product_id=2")).await,
    )
    .unwrap();
    let characteristics: serde_json::Map<String, serde_json::Value> = meta["characteristics"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| (c["id"].to_string(), serde_json::json!(3)))
        .collect();
    let before: serde_json::Value =
        serde_json::from_str(&get_text(&http, &rating_url(2)).await).unwrap();
    let review = serde_json::json!({
        "product_id": 2, "rating": 1, "summary": "rating moves", "recommend": false,
        "body": "a body long enough to be a valid review, fifty characters at least",
        "name": "rater", "email": "rater@example.com", "characteristics": characteristics
    });
    let created = sandbox::post_review(addr, &[], &review).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let after: serde_json::Value =
        serde_json::from_str(&get_text(&http, &rating_url(2)).await).unwrap();
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
        .get_product_rating(pb::GetProductRatingRequest { product_id: 0 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(common::violation_fields(&refused), ["product_id"]);

    sandbox::stop(server).await;
}
