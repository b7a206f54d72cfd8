//! The Redis cache: hits, invalidation by every write, replicas sharing one Redis, the fill race,
//! single-flight, and failing open when Redis dies or hangs.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cluster, eventually, fresh_db, Setup, TestServer, SAMPLE_TEMPLATE};
use futures_util::FutureExt;
use reviews::db::DbConfig;
use reviews::local::LocalRedis;
use reviews::pb::{self, ListReviewsRequest, Sort};
use reviews::service::Hooks;
use tokio::sync::Notify;

/// The server's cache counters from `GET /metrics`, without the `reviews_cache_` prefix and
/// the `_total` suffix.
async fn metrics(s: &TestServer) -> HashMap<String, u64> {
    s.metrics()
        .await
        .into_iter()
        .map(|(name, value)| {
            let name = name
                .trim_start_matches("reviews_cache_")
                .trim_end_matches("_total");
            (name.to_string(), value)
        })
        .collect()
}

/// Waits until every fill the server started has reached Redis (fills are made after the
/// answer is sent).
async fn fills_landed(s: &TestServer) {
    let landed = eventually(Duration::from_secs(10), || async {
        let m = metrics(s).await;
        m["fills"] + m["stale_fills"] >= m["loads"]
    })
    .await;
    assert!(landed, "fills land: {:?}", metrics(s).await);
}

async fn list(s: &TestServer, product: i32, page: Option<i32>, count: Option<i32>) -> Vec<i32> {
    s.newest_ids(product, page, count).await
}

fn review(product_id: i32, characteristics: &[(i32, i32)]) -> pb::CreateReviewRequest {
    pb::CreateReviewRequest {
        product_id,
        rating: 1,
        summary: "Cached?".into(),
        body: "Written to check that the cache shows every write as soon as it returns.".into(),
        recommend: false,
        name: "cachecheck".into(),
        email: "cache@example.com".into(),
        photos: vec![],
        characteristics: characteristics.iter().copied().collect(),
    }
}

const P1: &[(i32, i32)] = &[(1, 1), (2, 1), (3, 1), (4, 1)];

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_read_is_a_hit_and_equivalent_requests_share_an_entry() {
    let s = TestServer::sample().await;
    let first = list(&s, 3, None, Some(5)).await;
    let m = metrics(&s).await;
    assert_eq!(
        (m["first_sightings"], m["misses"], m["loads"], m["fills"]),
        (1, 0, 0, 0),
        "a first sighting reads the database without asking Redis"
    );
    assert_eq!(
        list(&s, 3, Some(1), Some(5)).await,
        first,
        "page 1 is the default page"
    );
    fills_landed(&s).await;
    let m = metrics(&s).await;
    assert_eq!(
        (
            m["first_sightings"],
            m["misses"],
            m["loads"],
            m["fills"],
            m["hits"]
        ),
        (1, 1, 1, 1, 0),
        "the same answer asked again is looked up, loaded and filled"
    );
    assert_eq!(list(&s, 3, None, Some(5)).await, first);
    assert_eq!(metrics(&s).await["hits"], 1);

    let all = list(&s, 3, None, Some(1000)).await;
    assert_eq!(
        list(&s, 3, None, Some(1_000_000)).await,
        all,
        "clamped counts are one answer: seen once, then looked up"
    );
    fills_landed(&s).await;
    assert_eq!(list(&s, 3, None, Some(1000)).await, all);
    let m = metrics(&s).await;
    assert_eq!((m["first_sightings"], m["misses"], m["hits"]), (2, 2, 2));
    assert_eq!(m["enabled"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_write_is_seen_by_the_next_read() {
    let s = TestServer::sample().await;
    let mut client = s.client.clone();
    let meta = |mut c: reviews::pb::review_service_client::ReviewServiceClient<_>| async move {
        c.get_review_meta(pb::GetReviewMetaRequest { product_id: 1 })
            .await
            .unwrap()
            .into_inner()
    };
    for _ in 0..2 {
        // Seen, then filled: each write below must hide a filled entry.
        assert_eq!(list(&s, 1, None, None).await, [2, 1]);
        assert_eq!(
            meta(client.clone()).await.ratings,
            HashMap::from([(4, 1), (5, 1)])
        );
    }
    fills_landed(&s).await;

    let id = client
        .create_review(review(1, P1))
        .await
        .unwrap()
        .into_inner()
        .review_id;
    assert_eq!(list(&s, 1, None, None).await, [id, 2, 1], "create");
    assert_eq!(
        meta(client.clone()).await.ratings,
        HashMap::from([(1, 1), (4, 1), (5, 1)])
    );
    fills_landed(&s).await;

    client
        .mark_review_helpful(pb::MarkReviewHelpfulRequest { review_id: 2 })
        .await
        .unwrap();
    let r2 = client
        .list_reviews(ListReviewsRequest {
            product_id: 1,
            sort: Sort::Helpful as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        r2.iter().find(|r| r.review_id == 2).unwrap().helpfulness,
        3,
        "helpful"
    );

    client
        .report_review(pb::ReportReviewRequest { review_id: id })
        .await
        .unwrap();
    assert_eq!(list(&s, 1, None, None).await, [2, 1], "report");
    assert_eq!(
        meta(client.clone()).await.ratings,
        HashMap::from([(4, 1), (5, 1)])
    );
    let m = metrics(&s).await;
    assert_eq!(m["invalidations"], 3);
    assert!(m["hits"] == 0 && m["errors"] == 0, "{m:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_one_redis_see_each_others_writes_at_once() {
    let db = fresh_db(SAMPLE_TEMPLATE).await;
    let redis = &cluster().redis_url;
    let a = TestServer::launch(Setup::new(DbConfig::new(&db)).cached(redis, &db)).await;
    let b = TestServer::launch(Setup::new(DbConfig::new(&db)).cached(redis, &db)).await;
    for _ in 0..2 {
        assert_eq!(list(&a, 2, None, None).await, [3, 4, 5]);
    }
    fills_landed(&a).await;
    for _ in 0..2 {
        assert_eq!(list(&b, 2, None, None).await, [3, 4, 5]);
    }
    assert_eq!(
        metrics(&b).await["hits"],
        1,
        "b reads what a filled once it sees the answer asked again"
    );

    let id = b
        .client
        .clone()
        .create_review(review(2, &[(5, 3)]))
        .await
        .unwrap()
        .into_inner()
        .review_id;
    assert_eq!(list(&a, 2, None, None).await, [id, 3, 4, 5]);
    fills_landed(&a).await;
    b.client
        .clone()
        .report_review(pb::ReportReviewRequest { review_id: 3 })
        .await
        .unwrap();
    assert_eq!(list(&a, 2, None, None).await, [id, 4, 5]);
}

/// A gate a hook waits at: the test learns when a request reached it and decides when it
/// passes. Only the first request through is held.
#[derive(Clone, Default)]
struct Gate {
    armed: Arc<AtomicBool>,
    reached: Arc<Notify>,
    open: Arc<Notify>,
}

impl Gate {
    fn armed() -> Self {
        let g = Self::default();
        g.armed.store(true, Ordering::SeqCst);
        g
    }

    fn hook(&self) -> Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync> {
        let g = self.clone();
        Arc::new(move || {
            let g = g.clone();
            async move {
                if g.armed.swap(false, Ordering::SeqCst) {
                    g.reached.notify_one();
                    g.open.notified().await;
                }
            }
            .boxed()
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_read_overlapping_a_write_never_leaves_a_stale_entry() {
    let gate = Gate::armed();
    let s = TestServer::sample_with_hooks(Hooks {
        before_fill: Some(gate.hook()),
        ..Default::default()
    })
    .await;
    assert_eq!(list(&s, 1, None, None).await, [2, 1], "seen once");

    // The read loads the old page, then stops just before filling the cache with it.
    let slow = tokio::spawn({
        let client = s.client.clone();
        async move {
            let mut c = client;
            c.list_reviews(ListReviewsRequest {
                product_id: 1,
                sort: Sort::Newest as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .results
            .len()
        }
    });
    gate.reached.notified().await;
    // A write completes while the read holds its old result.
    let id = s
        .client
        .clone()
        .create_review(review(1, P1))
        .await
        .unwrap()
        .into_inner()
        .review_id;
    gate.open.notify_one();
    assert_eq!(
        slow.await.unwrap(),
        2,
        "the slow read began before the write"
    );

    assert!(
        eventually(Duration::from_secs(10), || async {
            metrics(&s).await["stale_fills"] == 1
        })
        .await,
        "the slow read tried to fill the cache after the write"
    );
    assert_eq!(metrics(&s).await["fills"], 0, "and was refused");
    assert_eq!(
        list(&s, 1, None, None).await,
        [id, 2, 1],
        "so no later read sees its old page"
    );
    fills_landed(&s).await;
    assert_eq!(list(&s, 1, None, None).await, [id, 2, 1]);
    assert_eq!(metrics(&s).await["hits"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_share_one_database_load() {
    let gate = Gate::armed();
    let s = TestServer::sample_with_hooks(Hooks {
        during_load: Some(gate.hook()),
        ..Default::default()
    })
    .await;
    s.client
        .clone()
        .get_review_meta(pb::GetReviewMetaRequest { product_id: 3 })
        .await
        .unwrap(); // seen once: the 50 below are looked up
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s_client = s.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = s_client;
            c.get_review_meta(pb::GetReviewMetaRequest { product_id: 3 })
                .await
                .unwrap()
                .into_inner()
        }));
    }
    gate.reached.notified().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metrics(&s).await["coalesced"] == 49
        })
        .await,
        "the other 49 misses wait for the first one's load"
    );
    gate.open.notify_one();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    fills_landed(&s).await;
    let m = metrics(&s).await;
    assert_eq!((m["loads"], m["misses"], m["fills"]), (1, 50, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_redis_costs_nothing_and_the_cache_comes_back_with_it() {
    let mut redis = LocalRedis::start(&common::scratch_dir("dead-redis")).unwrap();
    let db = fresh_db(SAMPLE_TEMPLATE).await;
    let s = TestServer::launch(Setup::new(DbConfig::new(&db)).cached(&redis.url(), "dead")).await;
    for _ in 0..2 {
        assert_eq!(list(&s, 1, None, None).await, [2, 1]);
    }
    fills_landed(&s).await;
    assert_eq!(list(&s, 1, None, None).await, [2, 1]);
    assert_eq!(metrics(&s).await["hits"], 1);

    redis.stop();
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(list(&s, 1, None, None).await, [2, 1]);
    }
    let id = s
        .client
        .clone()
        .create_review(review(1, P1))
        .await
        .unwrap()
        .into_inner()
        .review_id;
    assert_eq!(
        list(&s, 1, None, None).await,
        [id, 2, 1],
        "reads and writes go on"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let m = metrics(&s).await;
    assert!(m["errors"] >= 1 && m["bypassed"] >= 1, "{m:?}");
    assert_eq!(m["breaker_open"], 1);

    redis.restart().unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            list(&s, 1, None, None).await == [id, 2, 1] && metrics(&s).await["breaker_open"] == 0
        })
        .await
    );
    let hits = metrics(&s).await["hits"];
    assert!(
        eventually(Duration::from_secs(5), || async {
            list(&s, 1, None, None).await == [id, 2, 1] && metrics(&s).await["hits"] > hits
        })
        .await,
        "hits resume"
    );
}

/// Redis hangs (kept data, no answers) while a write commits: the write cannot invalidate, so
/// the replica owes an epoch bump, which hides the old entry before the cache is used again.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_redis_missed_leaves_no_stale_entry_behind() {
    let redis = LocalRedis::start(&common::scratch_dir("frozen-redis")).unwrap();
    let db = fresh_db(SAMPLE_TEMPLATE).await;
    let s = TestServer::launch(Setup::new(DbConfig::new(&db)).cached(&redis.url(), "frozen")).await;
    for _ in 0..2 {
        assert_eq!(list(&s, 1, None, None).await, [2, 1]);
    }
    fills_landed(&s).await; // the entry outlives the outage

    redis.freeze(true);
    let id = s
        .client
        .clone()
        .create_review(review(1, P1))
        .await
        .unwrap()
        .into_inner()
        .review_id;
    assert_eq!(list(&s, 1, None, None).await, [id, 2, 1]);
    redis.freeze(false);

    for _ in 0..20 {
        assert_eq!(
            list(&s, 1, None, None).await,
            [id, 2, 1],
            "never the entry from before the write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            metrics(&s).await["hits"] >= 1
        })
        .await,
        "the cache is used again"
    );
    assert_eq!(list(&s, 1, None, None).await, [id, 2, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_url_the_service_runs_uncached() {
    let s = TestServer::start(&fresh_db(SAMPLE_TEMPLATE).await).await;
    assert_eq!(list(&s, 1, None, None).await, [2, 1]);
    let m = metrics(&s).await;
    assert_eq!((m["enabled"], m["misses"], m["hits"]), (0, 0, 0));
    assert!(m["reviews_requests"] >= 2, "requests are counted: {m:?}");
}
