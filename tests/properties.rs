//! Properties over generated cases (proptest), against the real server and PostgreSQL:
//! - pages partition a product's list under every sort, whatever the ties, the reported reviews
//!   and the page size;
//! - any interleaving of creates and reports, run concurrently, leaves the meta equal to a recount
//!   of what was written.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};

use common::{TestServer, SAMPLE_TEMPLATE};
use proptest::prelude::*;
use reviews::db::DbConfig;
use reviews::pb::{self, Sort};

/// Each case writes to products of its own, far above the sample's.
static NEXT_PRODUCT: AtomicI32 = AtomicI32::new(500_000);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A review as a case generates it: a date out of a few (ties), a helpfulness out of a few
/// (ties), whether it was reported.
#[derive(Debug, Clone)]
struct Row {
    day: i32,
    helpfulness: i32,
    rating: i16,
    reported: bool,
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(
        (0..4i32, 0..3i32, 1..=5i16, prop::bool::weighted(0.2)).prop_map(
            |(day, helpfulness, rating, reported)| Row {
                day,
                helpfulness,
                rating,
                reported,
            },
        ),
        0..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn pages_partition_the_list_under_every_sort(rows in rows(), size in 1i32..12) {
        let rt = runtime();
        rt.block_on(pages_partition(rows, size));
    }

    #[test]
    fn any_interleaving_of_creates_and_reports_leaves_meta_equal_to_a_recount(
        ops in prop::collection::vec(op(), 1..24),
        groups in prop::collection::vec(1usize..6, 1..24),
    ) {
        let rt = runtime();
        rt.block_on(meta_after(ops, groups));
    }
}

async fn server() -> TestServer {
    let db = common::fresh_db(SAMPLE_TEMPLATE).await;
    TestServer::start_with(DbConfig::new(&db)).await
}

async fn pages_partition(rows: Vec<Row>, size: i32) {
    let s = server().await;
    let sql = s.sql().await;
    let product = NEXT_PRODUCT.fetch_add(1, Ordering::SeqCst);
    for r in &rows {
        sql.execute(
            "INSERT INTO reviews (product_id, rating, date, summary, body, recommend, reported,
                                  reviewer_name, reviewer_email, helpfulness)
             VALUES ($1, $2, timestamptz '2024-01-01' + make_interval(days => $3), 's', 'b',
                     true, $4, 'n', 'n@example.com', $5)",
            &[&product, &r.rating, &r.day, &r.reported, &r.helpfulness],
        )
        .await
        .unwrap();
    }
    // The sort keys as the database holds them, for the order the pages must follow.
    let keys: HashMap<i32, (i64, i64, f64)> = sql
        .query(
            "SELECT id, (extract(epoch FROM date) * 1000)::int8, helpfulness::int8, relevance
             FROM reviews WHERE product_id = $1 AND NOT reported",
            &[&product],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let mut client = s.client.clone();
    for sort in [Sort::Relevant, Sort::Newest, Sort::Helpful] {
        let mut seen = Vec::new();
        for page in 1.. {
            let results = client
                .list_reviews(pb::ListReviewsRequest {
                    product_id: product,
                    page: Some(page),
                    count: Some(size),
                    sort: sort as i32,
                })
                .await
                .unwrap()
                .into_inner()
                .results;
            assert!(results.len() <= size as usize);
            let last = results.len() < size as usize;
            seen.extend(results.into_iter().map(|r| r.review_id));
            if last {
                break;
            }
        }
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{sort:?}: a review on two pages: {seen:?}"
        );
        let mut listable: Vec<i32> = keys.keys().copied().collect();
        listable.sort_unstable();
        assert_eq!(
            unique, listable,
            "{sort:?}: the pages hold every listable review once"
        );
        let key = |id: &i32| {
            let (date, helpful, relevance) = keys[id];
            match sort {
                Sort::Newest => (date as f64, 0, *id),
                Sort::Helpful => (helpful as f64, date, *id),
                _ => (relevance, date, *id),
            }
        };
        assert!(
            seen.windows(2).all(|w| key(&w[0]) > key(&w[1])),
            "{sort:?}, pages of {size}: out of order {seen:?}"
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        rating: i32,
        recommend: bool,
        fit: i32,
        size: i32,
        photo: bool,
    },
    /// Reports the created review with this index (modulo how many exist), if any.
    Report(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=5i32, any::<bool>(), 1..=5i32, 1..=5i32, any::<bool>()).prop_map(
            |(rating, recommend, fit, size, photo)| Op::Create { rating, recommend, fit, size, photo }
        ),
        1 => (0usize..64).prop_map(Op::Report),
    ]
}

/// Runs `ops` in concurrent groups (sizes from `groups`, cycled), then compares the meta with a
/// recount of the reviews written and not reported.
async fn meta_after(ops: Vec<Op>, groups: Vec<usize>) {
    let s = server().await;
    let sql = s.sql().await;
    let product = NEXT_PRODUCT.fetch_add(1, Ordering::SeqCst);
    let chars: Vec<i32> = sql
        .query(
            "INSERT INTO characteristics (product_id, name) VALUES ($1, 'Fit'), ($1, 'Size')
             RETURNING id",
            &[&product],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // (id, rating, recommend, fit, size, reported, with a photo) of every review created.
    let mut made: Vec<(i32, i32, bool, i32, i32, bool, bool)> = Vec::new();
    let mut ops = ops.into_iter().peekable();
    let mut sizes = groups.into_iter().cycle();
    while ops.peek().is_some() {
        let group: Vec<Op> = ops.by_ref().take(sizes.next().unwrap()).collect();
        let calls = group.iter().map(|op| {
            let mut client = s.client.clone();
            let target = match op {
                Op::Report(i) if !made.is_empty() => Some(made[i % made.len()].0),
                _ => None,
            };
            let op = op.clone();
            let chars = chars.clone();
            async move {
                match op {
                    Op::Create {
                        rating,
                        recommend,
                        fit,
                        size,
                        photo,
                    } => {
                        let id = client
                            .create_review(pb::CreateReviewRequest {
                                product_id: product,
                                rating,
                                summary: "generated".into(),
                                body:
                                    "A review written by the aggregate property test, long enough."
                                        .into(),
                                recommend,
                                name: "prop".into(),
                                email: "prop@example.com".into(),
                                photos: if photo {
                                    vec!["https://images.example.com/p.jpg".into()]
                                } else {
                                    vec![]
                                },
                                characteristics: HashMap::from([(chars[0], fit), (chars[1], size)]),
                            })
                            .await
                            .unwrap()
                            .into_inner()
                            .review_id;
                        Some((id, rating, recommend, fit, size, false, photo))
                    }
                    Op::Report(_) => {
                        if let Some(id) = target {
                            client
                                .report_review(pb::ReportReviewRequest { review_id: id })
                                .await
                                .unwrap();
                        }
                        target.map(|id| (id, 0, false, 0, 0, true, false))
                    }
                }
            }
        });
        for outcome in futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
        {
            match outcome {
                (id, _, _, _, _, true, _) => {
                    for m in made.iter_mut().filter(|m| m.0 == id) {
                        m.5 = true;
                    }
                }
                created => made.push(created),
            }
        }
    }

    let listable: Vec<_> = made.iter().filter(|m| !m.5).collect();
    let mut ratings: HashMap<i32, i64> = HashMap::new();
    let mut recommended: HashMap<bool, i64> = HashMap::new();
    for m in &listable {
        *ratings.entry(m.1).or_default() += 1;
        *recommended.entry(m.2).or_default() += 1;
    }
    let average = async |values: Vec<i64>| -> Option<String> {
        let n = values.len() as i64;
        if n == 0 {
            return None;
        }
        Some(common::exact_average(&sql, values.iter().sum(), n).await)
    };
    let fit = average(listable.iter().map(|m| i64::from(m.3)).collect()).await;
    let size = average(listable.iter().map(|m| i64::from(m.4)).collect()).await;
    let meta = s
        .client
        .clone()
        .get_review_meta(pb::GetReviewMetaRequest {
            product_id: product,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.ratings, ratings);
    assert_eq!(meta.recommended, recommended);
    let got: HashMap<String, (i32, Option<String>)> = meta
        .characteristics
        .into_iter()
        .map(|(n, c)| (n, (c.id, c.value)))
        .collect();
    let expected = HashMap::from([
        ("Fit".to_string(), (chars[0], fit)),
        ("Size".to_string(), (chars[1], size)),
    ]);
    assert_eq!(got, expected);

    // The v1 list's totals, kept per star with and without photos, equal the same recount.
    for stars in [vec![], vec![1], vec![2, 5], vec![3, 4]] {
        for photos in [None, Some(true), Some(false)] {
            let want = listable
                .iter()
                .filter(|m| stars.is_empty() || stars.contains(&m.1))
                .filter(|m| photos.is_none_or(|p| p == m.6))
                .count();
            let page = s
                .client
                .clone()
                .list_product_reviews(pb::ListProductReviewsRequest {
                    product_id: product,
                    page_size: 1000,
                    rating: stars.clone(),
                    has_photos: photos,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.total_size as usize, want, "{stars:?} {photos:?}");
            assert_eq!(page.reviews.len(), want, "{stars:?} {photos:?}");
        }
    }
}
