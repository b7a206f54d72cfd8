//! Reads from a read replica that lags on purpose: the cache tells the service how far the WAL
//! must be replayed for a product, so a lagging replica never answers with data older than a
//! write that returned, and a caught-up one takes the reads.

mod common;

use std::time::Duration;

use common::{cluster, eventually, fresh_db, Setup, TestServer, SAMPLE_TEMPLATE};
use reviews::config::Secret;
use reviews::db::DbConfig;
use reviews::local::LocalPostgres;
use reviews::pb;

async fn replica_reads(s: &TestServer) -> u64 {
    s.metrics().await["reviews_replica_reads_total"]
}

/// The newest review ids of a product, with a page size that makes a cache key of its own.
async fn newest(s: &TestServer, product: i32, count: i32) -> Vec<i32> {
    s.newest_ids(product, None, Some(count)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_replica_never_answers_with_data_older_than_a_write() {
    let db = fresh_db(SAMPLE_TEMPLATE).await;
    let name = db.rsplit('/').next().unwrap().to_string();
    let cluster = cluster();
    let dir = common::scratch_dir("replica");
    let mut replica =
        LocalPostgres::replica(&dir.join("pg"), cluster.pg_port, Duration::from_secs(2)).unwrap();
    replica.start().unwrap();
    let mut cfg = DbConfig::new(&db);
    cfg.read_url = Some(Secret::new(replica.url(&name)));
    let s = TestServer::launch(Setup::new(cfg).cached(&cluster.redis_url, &name)).await;

    // Before any write the cache knows no WAL position: reads stay on the primary.
    assert_eq!(newest(&s, 1, 1).await, [2]);
    assert_eq!(replica_reads(&s).await, 0);

    let id = s
        .client
        .clone()
        .create_review(pb::CreateReviewRequest {
            product_id: 1,
            rating: 5,
            summary: "Replicated?".into(),
            body: "Posted to check that a lagging read replica never hides a fresh write.".into(),
            recommend: true,
            name: "replica".into(),
            email: "replica@example.com".into(),
            photos: vec![],
            characteristics: [(1, 3), (2, 3), (3, 3), (4, 3)].into(),
        })
        .await
        .unwrap()
        .into_inner()
        .review_id;

    // The replica really is behind...
    let on_replica = common::sql(&replica.url(&name)).await;
    let seen: i64 = on_replica
        .query_one("SELECT count(*) FROM reviews WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "the replica has not replayed the write yet");
    // ...yet every read (each a cache miss of its own) shows the write.
    for count in 2..=8 {
        assert_eq!(newest(&s, 1, count).await[0], id, "count {count}");
    }
    assert_eq!(
        replica_reads(&s).await,
        0,
        "the lagging replica was not asked"
    );

    // Once it has caught up, misses go to the replica, and still show the write.
    let next_count = std::sync::atomic::AtomicI32::new(9);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let count = next_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let before = replica_reads(&s).await;
            let ids = newest(&s, 1, count).await;
            assert_eq!(ids[0], id, "never older than the write");
            replica_reads(&s).await > before
        })
        .await,
        "a caught-up replica takes the reads"
    );
    assert_eq!(
        newest(&s, 2, 3).await,
        [3, 4, 5],
        "other products read there too"
    );
}
