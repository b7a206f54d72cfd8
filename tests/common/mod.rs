//! The test harness. Once per test binary it starts a throwaway PostgreSQL and Redis on free
//! ports and prepares two template databases (migrated; migrated with the sample data). Each
//! test clones its own database from a template and starts the real server on port 0.
#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use reviews::cache::CacheConfig;
use reviews::db::DbConfig;
use reviews::local::{self, LocalPostgres, LocalRedis};
use reviews::pb::review_service_client::ReviewServiceClient;
use reviews::pb::{self, Sort};
use reviews::server::{Application, ServerOptions, Settings};
use reviews::service::Hooks;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const EMPTY_TEMPLATE: &str = "reviews_empty";
pub const SAMPLE_TEMPLATE: &str = "reviews_sample";

pub struct Cluster {
    pub pg_port: u16,
    pub redis_url: String,
}

impl Cluster {
    pub fn url(&self, db: &str) -> String {
        format!("postgres://reviews@127.0.0.1:{}/{db}", self.pg_port)
    }
}

pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample")
}

/// A folder for this test process's servers; folders left by earlier, dead runs are removed.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let base = std::env::temp_dir().join("reviews-tests");
    let _ = std::fs::create_dir_all(&base);
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next()?.parse::<i32>().ok());
        if let Some(pid) = pid {
            if unsafe { libc::kill(pid, 0) } != 0 {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(format!("{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The servers shared by this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        // The servers die with the thread that started them, so that thread lives as long as
        // the test process does.
        std::thread::spawn(move || {
            let started = (|| -> anyhow::Result<_> {
                let dir = scratch_dir("cluster");
                let mut pg = LocalPostgres::init(&dir.join("pg"))?;
                pg.start()?;
                let redis = LocalRedis::start(&dir.join("redis"))?;
                Ok((pg, redis))
            })();
            match started {
                Ok((pg, redis)) => {
                    let cluster = Cluster {
                        pg_port: pg.port(),
                        redis_url: redis.url(),
                    };
                    prepare_templates(&cluster);
                    tx.send(Ok(cluster)).unwrap();
                    let _keep = (pg, redis);
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => tx.send(Err(format!("{e:#}"))).unwrap(),
            }
        });
        rx.recv()
            .expect("the test servers could not start")
            .expect("the test servers could not start")
    })
}

fn prepare_templates(cluster: &Cluster) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = cluster.url("postgres");
        for (name, sample) in [(EMPTY_TEMPLATE, false), (SAMPLE_TEMPLATE, true)] {
            local::create_database(&admin, name, None).await.unwrap();
            reviews::db::migrate(&cluster.url(name)).await.unwrap();
            if sample {
                let report = reviews::etl::load(&cluster.url(name), &sample_dir(), None)
                    .await
                    .unwrap();
                assert_eq!(report.rejected(), 0, "the sample data must load cleanly");
            }
        }
    });
}

/// A fresh database of this test's own, cloned from `template`; returns its URL.
pub async fn fresh_db(template: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let cluster = cluster();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    local::create_database(&cluster.url("postgres"), &name, Some(template))
        .await
        .unwrap();
    cluster.url(&name)
}

/// The server's options as tests start it: readiness re-checked often, no drain delay, no rate
/// limits and any number of reviews per email (the tests of each set them), as
/// `REVIEWS_DRAIN_DELAY=0s`, `REVIEWS_RATE_LIMIT=off` and `REVIEWS_ONE_REVIEW_PER_EMAIL=off`
/// would.
pub fn options() -> ServerOptions {
    let mut options = ServerOptions {
        health_interval: Duration::from_millis(200),
        limits: reviews::limits::LimitsConfig::off(),
        one_review_per_email: false,
        ..Default::default()
    };
    options.connections.drain_delay = Duration::ZERO;
    options
}

/// How to start a test server.
pub struct Setup {
    pub db: DbConfig,
    pub cache: Option<CacheConfig>,
    pub hooks: Hooks,
    pub options: ServerOptions,
}

impl Setup {
    pub fn new(db: DbConfig) -> Self {
        Self {
            db,
            cache: None,
            hooks: Hooks::default(),
            options: options(),
        }
    }

    /// Through the Redis at `redis_url`, with keys under `prefix`.
    pub fn cached(mut self, redis_url: &str, prefix: &str) -> Self {
        let mut cache = CacheConfig::new(redis_url);
        cache.prefix = prefix.rsplit('/').next().unwrap_or(prefix).to_string();
        self.cache = Some(cache);
        self
    }
}

/// The real server, on a free port, against one database.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub db_url: String,
    pub client: ReviewServiceClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// A server on `db_url`, without a cache.
    pub async fn start(db_url: &str) -> Self {
        Self::start_with(DbConfig::new(db_url)).await
    }

    pub async fn start_with(db: DbConfig) -> Self {
        Self::launch(Setup::new(db)).await
    }

    pub async fn start_with_options(db: DbConfig, options: ServerOptions) -> Self {
        Self::launch(Setup {
            options,
            ..Setup::new(db)
        })
        .await
    }

    /// The server as `reviews serve` builds it, on a free port.
    pub async fn launch(setup: Setup) -> Self {
        let db_url = setup.db.url.expose().to_string();
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            db: setup.db,
            cache: setup.cache,
            options: setup.options,
        };
        let app = Application::build(settings)
            .await
            .unwrap()
            .with_hooks(setup.hooks);
        let addr = app.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        let client = ReviewServiceClient::new(channel(addr).await);
        Self {
            addr,
            db_url,
            client,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Sample data in a database of its own, served through the harness's Redis (with keys of
    /// its own).
    pub async fn sample() -> Self {
        Self::sample_with_hooks(Hooks::default()).await
    }

    pub async fn sample_with_hooks(hooks: Hooks) -> Self {
        let db = fresh_db(SAMPLE_TEMPLATE).await;
        let setup = Setup::new(DbConfig::new(&db)).cached(&cluster().redis_url, &db);
        Self::launch(Setup { hooks, ..setup }).await
    }

    pub async fn channel(&self) -> Channel {
        channel(self.addr).await
    }

    /// Asks the server to stop and waits until it has.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }

    /// Sends the shutdown signal without waiting.
    pub fn begin_shutdown(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("server already stopped")
    }

    /// A direct database connection, to look behind the API.
    pub async fn sql(&self) -> tokio_postgres::Client {
        sql(&self.db_url).await
    }
}

/// Whether a call reached no server: the client gave up on it before writing it (its connection
/// was closing, after the server's GOAWAY, when the call was queued on it), or the server's
/// GOAWAY refused its stream (HTTP/2 promises such a stream was not processed).
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
            || e.downcast_ref::<h2::Error>().is_some_and(|e| {
                e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR)
            })
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Makes a call as gRPC's own clients do (grpc-go's "transparent retry"): one that never reached
/// a server is sent again, at most twice; tonic has no such retry of its own. A call that failed
/// after the server took it is not. Returns the outcome and the number of tries.
pub async fn resend_never_sent<T, F, Fut>(mut call: F) -> (Result<T, tonic::Status>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut tries = 1;
    loop {
        match call().await {
            Err(e) if tries < 3 && never_sent(&e) => tries += 1,
            result => return (result, tries),
        }
    }
}

pub async fn channel(addr: std::net::SocketAddr) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("server at {addr} unreachable: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

pub async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Every row count and aggregate the service keeps, to prove a failed write changed nothing.
pub async fn fingerprint(db: &tokio_postgres::Client) -> Vec<i64> {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM reviews), (SELECT count(*) FROM reviews_photos),
                    (SELECT count(*) FROM characteristic_reviews),
                    (SELECT coalesce(sum(helpfulness), 0) FROM reviews),
                    (SELECT count(*) FROM reviews WHERE reported),
                    (SELECT coalesce(sum(rating_1 + 2 * rating_2 + 3 * rating_3 + 4 * rating_4
                                         + 5 * rating_5 + 7 * recommended_true
                                         + 11 * recommended_false), 0)::int8 FROM product_stats),
                    (SELECT coalesce(sum(value_sum * 13 + value_count), 0)::int8
                       FROM characteristics)",
            &[],
        )
        .await
        .unwrap();
    (0..7).map(|i| row.get::<_, i64>(i)).collect()
}

/// The one integer a query answers (a count, say).
pub async fn scalar(db: &tokio_postgres::Client, query: &str) -> i64 {
    db.query_one(query, &[]).await.unwrap().get(0)
}

/// `sum / n` rounded to 16 decimals as PostgreSQL's numeric computes it: the oracle for the
/// exact averages of the meta.
pub async fn exact_average(db: &tokio_postgres::Client, sum: i64, n: i64) -> String {
    db.query_one(
        "SELECT round($1::int8::numeric / $2::int8, 16)::text",
        &[&sum, &n],
    )
    .await
    .unwrap()
    .get(0)
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestServer {
    /// Every listable review of a product (up to the page-size bound) in one order.
    pub async fn all_reviews(&mut self, product: i32, sort: Sort) -> Vec<pb::Review> {
        self.client
            .list_reviews(pb::ListReviewsRequest {
                product_id: product,
                page: None,
                count: Some(1000),
                sort: sort as i32,
            })
            .await
            .unwrap()
            .into_inner()
            .results
    }

    /// The server's counters and gauges from `GET /metrics`, by full name.
    pub async fn metrics(&self) -> std::collections::HashMap<String, u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.split_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// The ids of a newest-first page of a product's reviews.
    pub async fn newest_ids(
        &self,
        product: i32,
        page: Option<i32>,
        count: Option<i32>,
    ) -> Vec<i32> {
        self.client
            .clone()
            .list_reviews(pb::ListReviewsRequest {
                product_id: product,
                page,
                count,
                sort: Sort::Newest as i32,
            })
            .await
            .unwrap()
            .into_inner()
            .results
            .iter()
            .map(|r| r.review_id)
            .collect()
    }

    pub async fn meta(&mut self, product: i32) -> pb::ReviewMeta {
        self.client
            .get_review_meta(pb::GetReviewMetaRequest {
                product_id: product,
            })
            .await
            .unwrap()
            .into_inner()
    }
}

/// The fields named by a status's google.rpc `BadRequest` details.
pub fn violation_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}
