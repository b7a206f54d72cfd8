//! ListReviews and GetReviewMeta over real gRPC against the sample data.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{violation_fields, TestServer};
use reviews::pb::{self, ListReviewsRequest, Sort};
use tonic::Code;

async fn list(
    s: &mut TestServer,
    product: i32,
    page: Option<i32>,
    count: Option<i32>,
    sort: Sort,
) -> Result<pb::ListReviewsResponse, tonic::Status> {
    s.client
        .list_reviews(ListReviewsRequest {
            product_id: product,
            page,
            count,
            sort: sort as i32,
        })
        .await
        .map(|r| r.into_inner())
}

fn millis(r: &pb::Review) -> i64 {
    let d = r.date.as_ref().unwrap();
    d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
}

fn relevance(r: &pb::Review) -> f64 {
    (1.0 + f64::from(r.helpfulness)).log2() + millis(r) as f64 / 1000.0 / 7_776_000.0
}

/// The sample's reviews as written in the CSV file, read with an independent CSV parser.
struct SampleReview {
    id: i32,
    product: i32,
    rating: i32,
    recommend: bool,
    reported: bool,
}

fn sample_reviews() -> Vec<SampleReview> {
    let mut rdr = csv::Reader::from_path(common::sample_dir().join("reviews.csv")).unwrap();
    rdr.records()
        .map(|r| {
            let r = r.unwrap();
            SampleReview {
                id: r[0].parse().unwrap(),
                product: r[1].parse().unwrap(),
                rating: r[2].parse().unwrap(),
                recommend: &r[6] == "true",
                reported: &r[7] == "true",
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_sort_orders_by_its_key_and_ends_with_review_id() {
    let mut s = TestServer::sample().await;
    let newest = s.all_reviews(3, Sort::Newest).await;
    assert!(newest.len() > 15, "product 3 has many listable reviews");
    for w in newest.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(
            (millis(a), a.review_id) > (millis(b), b.review_id),
            "newest order"
        );
    }
    let helpful = s.all_reviews(3, Sort::Helpful).await;
    for w in helpful.windows(2) {
        let key = |r: &pb::Review| (r.helpfulness, millis(r), r.review_id);
        assert!(key(&w[0]) > key(&w[1]), "helpful order");
    }
    let relevant = s.all_reviews(3, Sort::Relevant).await;
    for w in relevant.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let ord = relevance(a)
            .partial_cmp(&relevance(b))
            .unwrap()
            .then(millis(a).cmp(&millis(b)))
            .then(a.review_id.cmp(&b.review_id));
        assert_eq!(ord, std::cmp::Ordering::Greater, "relevant order");
    }
    // Same reviews in every order, and the default is relevant.
    let ids = |v: &[pb::Review]| {
        let mut ids: Vec<_> = v.iter().map(|r| r.review_id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&newest), ids(&helpful));
    assert_eq!(ids(&newest), ids(&relevant));
    assert_eq!(s.all_reviews(3, Sort::Unspecified).await, relevant);
}

#[tokio::test(flavor = "multi_thread")]
async fn ties_on_date_are_broken_by_review_id() {
    let mut s = TestServer::sample().await;
    // The sample gives several of product 3's reviews the very same timestamp.
    let newest = s.all_reviews(3, Sort::Newest).await;
    let tied: Vec<_> = newest
        .iter()
        .filter(|r| millis(r) == 1_600_000_000_123)
        .map(|r| r.review_id)
        .collect();
    assert!(tied.len() >= 3);
    assert!(tied.windows(2).all(|w| w[0] > w[1]), "{tied:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn relevance_lets_recent_reviews_rise_without_burying_helpful_ones() {
    let mut s = TestServer::sample().await;
    // (id, days old, helpfulness) for a product of their own.
    let rows = [
        (9001, 60, 0),
        (9002, 300, 10),
        (9003, 10, 0),
        (9004, 400, 1),
    ];
    let db = s.sql().await;
    for (id, days, helpful) in rows {
        db.execute(
            "INSERT INTO reviews (id, product_id, rating, date, summary, body, recommend,
                                  reviewer_name, reviewer_email, helpfulness)
             VALUES ($1, 777, 4, now() - make_interval(days => $2), 's', 'b', true, 'n',
                     'n@example.com', $3)",
            &[&id, &days, &helpful],
        )
        .await
        .unwrap();
    }
    let ids = |v: Vec<pb::Review>| v.into_iter().map(|r| r.review_id).collect::<Vec<_>>();
    // 9002 is 240 days older than 9001 but has 11 times its (1 + helpfulness), more than the
    // 2^(240/90) = 6.3 it needs; 9004's one vote does not make up for 340 days.
    assert_eq!(
        ids(s.all_reviews(777, Sort::Relevant).await),
        [9002, 9003, 9001, 9004]
    );
    assert_eq!(
        ids(s.all_reviews(777, Sort::Newest).await),
        [9003, 9001, 9002, 9004]
    );
    assert_eq!(
        ids(s.all_reviews(777, Sort::Helpful).await),
        [9002, 9004, 9003, 9001]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consecutive_pages_partition_the_list_for_every_sort() {
    let mut s = TestServer::sample().await;
    for sort in [Sort::Relevant, Sort::Newest, Sort::Helpful] {
        let full: Vec<_> = s.all_reviews(3, sort).await;
        for count in [1, 2, 3, 4, 7] {
            let mut paged = Vec::new();
            for page in 1.. {
                let resp = list(&mut s, 3, Some(page), Some(count), sort)
                    .await
                    .unwrap();
                assert_eq!(resp.page, page - 1, "page echo is 0-based");
                assert_eq!(resp.count, count);
                if resp.results.is_empty() {
                    break;
                }
                assert!(resp.results.len() <= count as usize);
                paged.extend(resp.results);
            }
            assert_eq!(paged, full, "sort {sort:?}, count {count}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_clamping_and_unknown_products() {
    let mut s = TestServer::sample().await;
    let d = list(&mut s, 3, None, None, Sort::Unspecified)
        .await
        .unwrap();
    assert_eq!((d.product, d.page, d.count, d.results.len()), (3, 0, 5, 5));

    let huge = list(&mut s, 3, None, Some(1_000_000), Sort::Newest)
        .await
        .unwrap();
    assert_eq!(huge.count, 1000, "count is clamped and says so");
    let listable = sample_reviews()
        .iter()
        .filter(|r| r.product == 3 && !r.reported)
        .count();
    assert_eq!(huge.results.len(), listable);

    let unknown = list(&mut s, 999_999, None, None, Sort::Newest)
        .await
        .unwrap();
    assert_eq!(unknown.product, 999_999);
    assert!(unknown.results.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn reviews_carry_their_own_photos_dates_and_responses() {
    let mut s = TestServer::sample().await;
    let reviews = s.all_reviews(2, Sort::Newest).await;
    let by_id: HashMap<_, _> = reviews.iter().map(|r| (r.review_id, r)).collect();
    let r5 = by_id[&5];
    assert_eq!(r5.summary, "I'm enjoying wearing these shades");
    assert_eq!(r5.body, "Comfortable and practical.");
    assert_eq!(r5.reviewer_name, "shortandsweeet");
    assert_eq!((r5.rating, r5.helpfulness, r5.recommend), (3, 5, false));
    assert_eq!(r5.response, None);
    let photo_ids: Vec<_> = r5.photos.iter().map(|p| p.id).collect();
    assert_eq!(photo_ids, [1, 2]);
    assert!(r5.photos[0]
        .url
        .starts_with("https://images.unsplash.com/photo-1560570803-7474c0f9af99"));
    let r3 = by_id[&3];
    assert_eq!(
        r3.response.as_deref(),
        Some("Glad you're enjoying the product!")
    );
    assert!(r3.photos.is_empty());
    assert_eq!(millis(r3), 1_609_325_851_021, "milliseconds are kept");
    // Review 6 is reported.
    assert!(!by_id.contains_key(&6));

    let p1 = s.all_reviews(1, Sort::Newest).await;
    assert_eq!(p1[1].review_id, 1);
    assert_eq!(p1[1].photos.len(), 1);
    assert_eq!(p1[1].photos[0].id, 3);
    assert_eq!(
        p1[1].body,
        "I really did or did not like this product based on whether it was sustainably \
         sourced.  Then I found out that its made from nothing at all."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn meta_of_product_1_is_exact() {
    let mut s = TestServer::sample().await;
    let m = s.meta(1).await;
    assert_eq!(m.product_id, 1);
    assert_eq!(m.ratings, HashMap::from([(4, 1), (5, 1)]));
    assert_eq!(m.recommended, HashMap::from([(false, 1), (true, 1)]));
    let chars: BTreeMap<_, _> = m
        .characteristics
        .iter()
        .map(|(name, c)| (name.as_str(), (c.id, c.value.as_deref())))
        .collect();
    assert_eq!(
        chars,
        BTreeMap::from([
            ("Fit", (1, Some("4.0000000000000000"))),
            ("Length", (2, Some("3.5000000000000000"))),
            ("Comfort", (3, Some("5.0000000000000000"))),
            ("Quality", (4, Some("3.5000000000000000"))),
        ])
    );
}

/// The meta of every sample product, recomputed here from the CSV files with another parser.
#[tokio::test(flavor = "multi_thread")]
async fn meta_matches_the_csv_for_every_sample_product() {
    let reviews = sample_reviews();
    let listable: HashMap<i32, &SampleReview> = reviews
        .iter()
        .filter(|r| !r.reported)
        .map(|r| (r.id, r))
        .collect();
    let mut chars: HashMap<i32, (i32, String, i64, i64)> = HashMap::new();
    let dir = common::sample_dir();
    for r in csv::Reader::from_path(dir.join("characteristics.csv"))
        .unwrap()
        .records()
    {
        let r = r.unwrap();
        chars.insert(
            r[0].parse().unwrap(),
            (r[1].parse().unwrap(), r[2].to_string(), 0, 0),
        );
    }
    for r in csv::Reader::from_path(dir.join("characteristic_reviews.csv"))
        .unwrap()
        .records()
    {
        let r = r.unwrap();
        let review: i32 = r[2].parse().unwrap();
        if listable.contains_key(&review) {
            let c = chars.get_mut(&r[1].parse().unwrap()).unwrap();
            c.2 += r[3].parse::<i64>().unwrap();
            c.3 += 1;
        }
    }

    let mut s = TestServer::sample().await;
    let db = s.sql().await;
    for product in 1..=41 {
        let mut ratings = HashMap::new();
        let mut recommended = HashMap::new();
        for r in listable.values().filter(|r| r.product == product) {
            *ratings.entry(r.rating).or_insert(0i64) += 1;
            *recommended.entry(r.recommend).or_insert(0i64) += 1;
        }
        let mut expected_chars: HashMap<String, (i32, Option<String>)> = HashMap::new();
        for (&id, c) in chars.iter().filter(|(_, c)| c.0 == product) {
            let avg = if c.3 > 0 {
                Some(common::exact_average(&db, c.2, c.3).await)
            } else {
                None
            };
            expected_chars.insert(c.1.clone(), (id, avg));
        }
        let m = s.meta(product).await;
        assert_eq!(m.ratings, ratings, "ratings of product {product}");
        assert_eq!(
            m.recommended, recommended,
            "recommended of product {product}"
        );
        let got: HashMap<String, (i32, Option<String>)> = m
            .characteristics
            .into_iter()
            .map(|(n, c)| (n, (c.id, c.value)))
            .collect();
        assert_eq!(got, expected_chars, "characteristics of product {product}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn products_without_reviews_have_empty_counts_and_null_averages() {
    let mut s = TestServer::sample().await;
    // Product 13 has neither reviews nor characteristics; 20 has characteristics only; every
    // review of 21 is reported.
    let m13 = s.meta(13).await;
    assert!(m13.ratings.is_empty() && m13.recommended.is_empty());
    assert!(m13.characteristics.is_empty());
    for product in [20, 21] {
        let m = s.meta(product).await;
        assert!(
            m.ratings.is_empty() && m.recommended.is_empty(),
            "{product}"
        );
        assert!(!m.characteristics.is_empty());
        assert!(
            m.characteristics.values().all(|c| c.value.is_none()),
            "{product}"
        );
        assert!(s.all_reviews(product, Sort::Newest).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_list_and_meta_requests_name_the_field() {
    let mut s = TestServer::sample().await;
    for product in [0, -3] {
        let e = list(&mut s, product, None, None, Sort::Newest)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "invalid product_id provided");
        assert_eq!(violation_fields(&e), ["product_id"]);
        let e = s
            .client
            .get_review_meta(pb::GetReviewMetaRequest {
                product_id: product,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), violation_fields(&e)),
            (Code::InvalidArgument, vec!["product_id".into()])
        );
    }
    let e = list(&mut s, 1, Some(0), Some(0), Sort::Newest)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violation_fields(&e), ["page", "count"]);
    let e = list(&mut s, 1, Some(-1), None, Sort::Newest)
        .await
        .unwrap_err();
    assert_eq!(violation_fields(&e), ["page"]);
    let e = s
        .client
        .list_reviews(ListReviewsRequest {
            product_id: 1,
            sort: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), violation_fields(&e)),
        (Code::InvalidArgument, vec!["sort".into()])
    );
}
