//! PostgreSQL: the connection pools, embedded migrations, and [`Db`], whose methods run the
//! service's statements under a deadline and pick a fresh replica for reads. Every query lives
//! below this module.

mod cached;
mod config;
mod lanes;
pub mod queries;
pub mod schema;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolableConnection, RecyclingMethod,
};
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::Instrument;

use crate::error::Error;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::reviews::{
    IdempotencyKey, Meta, NewReview, Page, PageQuery, PageRequest, Position, ProductId, Rating,
    Review, ReviewId, Sort, Voter,
};

pub use self::config::DbConfig;
use self::lanes::{Lane, Lanes};
pub use self::writes::HAS_REVIEW_BY_SQL;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

type Manager = AsyncDieselConnectionManager<AsyncPgConnection>;
pub type Pool = bb8::Pool<Manager>;

/// Builds the pool without connecting, so the service can start (not ready) while the database
/// is down. Checkouts fail fast after `connect_timeout` instead of bb8's silent 30 s retry, and
/// checking a connection out costs no round trip: only connections already seen closed are
/// discarded.
fn pool(cfg: &DbConfig) -> Pool {
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    manager_config.recycling_method = RecyclingMethod::CustomFunction(Box::new(|conn| {
        let broken = PoolableConnection::is_broken(conn);
        async move {
            if broken {
                Err(diesel::result::Error::BrokenTransactionManager)
            } else {
                Ok(())
            }
        }
        .boxed()
    }));
    manager_config.custom_setup = Box::new(|url| {
        async move {
            use diesel_async::{AsyncConnection, SimpleAsyncConnection};
            let mut conn = AsyncPgConnection::establish(url).await?;
            // Every statement of the service is an index lookup by id, for which the generic
            // plan is the plan: planning each execution anew would only cost CPU.
            conn.batch_execute("SET plan_cache_mode = force_generic_plan")
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        cfg.url.expose(),
        manager_config,
    );
    bb8::Pool::builder()
        .max_size(cfg.pool_size)
        .min_idle(Some(1))
        .connection_timeout(cfg.connect_timeout)
        .error_sink(Box::new(LogErrors))
        .build_unchecked(manager)
}

/// Logs the connection errors bb8 would otherwise swallow while it retries.
#[derive(Debug, Clone, Copy)]
struct LogErrors;

impl bb8::ErrorSink<diesel_async::pooled_connection::PoolError> for LogErrors {
    fn sink(&self, error: diesel_async::pooled_connection::PoolError) {
        tracing::warn!(%error, "could not open a database connection");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<diesel_async::pooled_connection::PoolError>> {
        Box::new(*self)
    }
}

/// Applies the pending embedded migrations and returns their versions.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    use diesel_async::AsyncConnection;
    let conn = AsyncPgConnection::establish(url).await?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    Ok(applied.iter().map(ToString::to_string).collect())
}

/// What a write committed: the product whose reads it changes and, when read replicas are in
/// use, the primary's WAL position just after the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed<T> {
    pub value: T,
    pub product: ProductId,
    pub lsn: Option<Lsn>,
}

/// The database as the service sees it: the primary's pool, optional read replicas, and the
/// deadline every statement runs under (a missed deadline reads as the database being
/// unavailable). It knows nothing of the cache: the service core composes the two.
#[derive(Clone)]
pub struct Db {
    primary: Pool,
    /// Reads on the primary, pipelined over a share of its pool.
    reads: Arc<Lanes>,
    /// Read replicas, used only for reads whose caller knows the WAL position they need and
    /// only when a replica has replayed that far (see `read_lane`).
    replicas: Option<Arc<Lanes>>,
    timeout: Duration,
    /// How many times a read whose connection broke runs again (see `read`).
    retries: u32,
    metrics: Arc<Metrics>,
}

/// How long a read waits for a replica connection before using the primary.
const REPLICA_CHECKOUT: Duration = Duration::from_millis(50);

/// Rows a list read may skip and return and still count as short, so that it shares a lane.
const SHORT_READ_ROWS: i64 = 200;

impl Db {
    /// The pools of `cfg` (the replicas' too, when `read_url` is set), built without connecting.
    pub fn new(cfg: &DbConfig, metrics: Arc<Metrics>) -> Self {
        let replicas = cfg.read_url.as_ref().map(|url| {
            let replica = pool(&DbConfig {
                url: url.clone(),
                read_url: None,
                ..cfg.clone()
            });
            metrics.sample_pool("replica", replica.clone(), cfg.pool_size);
            Arc::new(Lanes::new(replica, cfg.lanes()))
        });
        let primary = pool(cfg);
        metrics.sample_pool("primary", primary.clone(), cfg.pool_size);
        Self {
            reads: Arc::new(Lanes::new(primary.clone(), cfg.lanes())),
            primary,
            replicas,
            timeout: cfg.query_timeout,
            retries: cfg.pool_size + 1,
            metrics,
        }
    }

    /// Whether reads may go to replicas, so a read must learn which WAL position it needs.
    pub fn has_replicas(&self) -> bool {
        self.replicas.is_some()
    }

    /// The primary's pool, for tests that look at how its connections are set up.
    #[cfg(feature = "test-hooks")]
    pub fn primary(&self) -> &Pool {
        &self.primary
    }

    /// A lane for a read whose data must include WAL position `needed`: a replica's that has
    /// replayed that far, else the primary's. Without a known position, the primary's.
    async fn read_lane(&self, needed: Option<Lsn>, long: bool) -> Result<(Lane, &Lanes), Error> {
        if let (Some(replicas), Some(needed)) = (&self.replicas, needed) {
            // A replica that is down must not slow reads down: give it little time.
            let checkout = tokio::time::timeout(REPLICA_CHECKOUT, replicas.get(long)).await;
            if let Ok(Ok(lane)) = checkout {
                match queries::replayed_past(&lane, needed.get()).await {
                    Ok(true) => {
                        self.metrics.replica_reads.inc();
                        return Ok((lane, replicas));
                    }
                    Ok(false) => {}
                    Err(_) => replicas.retire(&lane),
                }
            }
        }
        Ok((self.reads.get(long).await?, &self.reads))
    }

    /// Runs one read (`long`: one that may take long, which gets a connection of its own) on a
    /// lane that has `needed`. A read whose connection turns out broken (PostgreSQL restarted,
    /// its backend was terminated) retires the lane and runs again on a fresh connection: a
    /// read changes nothing, so trying again is safe, and a lane's break does not fail the reads
    /// that were queued on it.
    async fn read<T, F>(
        &self,
        name: &'static str,
        needed: Option<Lsn>,
        long: bool,
        query: F,
    ) -> Result<T, Error>
    where
        F: for<'c> Fn(&'c AsyncPgConnection) -> BoxFuture<'c, Result<T, Error>>,
    {
        self.run(name, async {
            let (lane, lanes) = self.read_lane(needed, long).await?;
            let mut result = query(&lane).await;
            if matches!(result, Err(Error::Unavailable(_))) {
                lanes.retire(&lane);
                // On connections of its own, not another lane: what breaks one (a restart)
                // breaks them all. Up to once per pooled connection and once more: each idle
                // connection checked out just as it broke (before the pool saw it close) fails
                // at once and is discarded; all of it within the read's one deadline.
                for _ in 0..self.retries {
                    let (own, _) = self.read_lane(needed, true).await?;
                    result = query(&own).await;
                    if !matches!(result, Err(Error::Unavailable(_))) {
                        break;
                    }
                }
            }
            result
        })
        .await
    }

    /// One page of a product's listable reviews, from a connection that has `needed`.
    pub async fn list_reviews(
        &self,
        needed: Option<Lsn>,
        product: ProductId,
        page: PageRequest,
        sort: Sort,
    ) -> Result<Vec<Review>, Error> {
        let long = page.offset() + i64::from(page.size()) > SHORT_READ_ROWS;
        self.read("list_reviews", needed, long, |conn| {
            queries::list_reviews(conn, product, page, sort).boxed()
        })
        .await
    }

    /// A product's kept aggregates, from a connection that has `needed`.
    pub async fn review_meta(
        &self,
        needed: Option<Lsn>,
        product: ProductId,
    ) -> Result<Meta, Error> {
        self.read("review_meta", needed, false, |conn| {
            queries::review_meta(conn, product).boxed()
        })
        .await
    }

    /// A product's aggregate rating, from a connection that has `needed`.
    pub async fn product_rating(
        &self,
        needed: Option<Lsn>,
        product: ProductId,
    ) -> Result<Rating, Error> {
        self.read("product_rating", needed, false, |conn| {
            queries::product_rating(conn, product).boxed()
        })
        .await
    }

    /// One v1 page (`query.size` reviews from its position, and whether more follow) with the
    /// number of reviews its filter matches, from a connection that has `needed`: the page and
    /// the product's counts are two statements pipelined on one connection, one round trip.
    pub async fn list_page(&self, needed: Option<Lsn>, query: PageQuery) -> Result<Page, Error> {
        let size = query.size as usize;
        let long = i64::from(query.size) > SHORT_READ_ROWS;
        let (rows, counts) = self
            .read("list_page", needed, long, |conn| {
                async move {
                    // One more than the page: whether another page follows.
                    let page = queries::list_page(conn, &query, size as i64 + 1);
                    futures_util::try_join!(page, queries::star_counts(conn, query.product))
                }
                .boxed()
            })
            .await?;
        let next = (rows.len() > size).then(|| {
            let (last, relevance) = &rows[size - 1];
            Position::of(last, *relevance, query.sort)
        });
        Ok(Page {
            reviews: rows.into_iter().take(size).map(|(r, _)| r).collect(),
            next,
            total: query.filter.total(&counts),
        })
    }

    /// Writes the review, its photos, its characteristic values and the kept aggregates in one
    /// transaction; returns the new review's id. With `key`, a create that committed with the
    /// same key is replayed instead: its review's id, nothing written. With `one_per_email`, a
    /// second review of the product by the same email is `AlreadyExists`.
    pub async fn create_review(
        &self,
        review: &NewReview,
        key: Option<&IdempotencyKey>,
        one_per_email: bool,
    ) -> Result<Committed<ReviewId>, Error> {
        let id = self
            .run("create_review", async {
                let mut conn = self.primary.get().await?;
                writes::create_review(&mut conn, review, key, one_per_email).await
            })
            .await?;
        let id = ReviewId::parse(id)?;
        self.committed(id, review.product_id).await
    }

    /// The review a create with `key` made, if one committed (in the last 24 hours); an error if
    /// the key came with another request. Read on the primary: it must see every commit.
    pub async fn replayed(
        &self,
        key: &IdempotencyKey,
        product: ProductId,
    ) -> Result<Option<Committed<ReviewId>>, Error> {
        let id = self
            .run("replayed", async {
                let mut conn = self.primary.get().await?;
                writes::replayed(&mut conn, key).await
            })
            .await?;
        match id {
            Some(id) => Ok(Some(self.committed(ReviewId::parse(id)?, product).await?)),
            None => Ok(None),
        }
    }

    /// Adds one to a review's helpfulness; `None` when `voter` had voted it helpful already
    /// (nothing changed).
    pub async fn mark_helpful(
        &self,
        id: ReviewId,
        voter: Option<Voter>,
    ) -> Result<Option<Committed<()>>, Error> {
        let product = self
            .run("mark_helpful", async {
                let mut conn = self.primary.get().await?;
                writes::mark_helpful(&mut conn, id, voter.as_ref()).await
            })
            .await?;
        self.changed(product).await
    }

    /// Hides a review; `None` when it was hidden already (nothing changed).
    pub async fn report(
        &self,
        id: ReviewId,
        voter: Option<Voter>,
    ) -> Result<Option<Committed<()>>, Error> {
        let product = self
            .run("report", async {
                let mut conn = self.primary.get().await?;
                writes::report(&mut conn, id, voter.as_ref()).await
            })
            .await?;
        self.changed(product).await
    }

    /// What a write that may have changed nothing committed.
    async fn changed(&self, product: Option<i32>) -> Result<Option<Committed<()>>, Error> {
        match product {
            Some(product) => Ok(Some(self.committed((), ProductId::parse(product)?).await?)),
            None => Ok(None),
        }
    }

    /// Whether the database answers a trivial query within the deadline.
    pub async fn ping(&self) -> Result<(), Error> {
        self.run("ping", async {
            let mut conn = self.primary.get().await?;
            queries::ping(&mut conn).await
        })
        .await
    }

    /// The write's result with the primary's WAL position when replicas need it. A position
    /// that cannot be read is left out: readers then go to the primary, which is always fresh.
    async fn committed<T>(&self, value: T, product: ProductId) -> Result<Committed<T>, Error> {
        let lsn = match &self.replicas {
            Some(_) => self
                .run("wal_position", async {
                    let mut conn = self.primary.get().await?;
                    queries::wal_position(&mut conn).await
                })
                .await
                .ok()
                .map(Lsn::new),
            None => None,
        };
        Ok(Committed {
            value,
            product,
            lsn,
        })
    }

    /// Runs the database work `name` (a name for traces, never with values) within the
    /// deadline, in a span of its own inside a request's (work outside requests, such as the
    /// readiness ping, is not traced).
    async fn run<T>(
        &self,
        name: &'static str,
        op: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        // Only when the span is wanted (tracing on) is the current span looked up.
        let span =
            if !tracing::enabled!(tracing::Level::DEBUG) || tracing::Span::current().is_none() {
                tracing::Span::none()
            } else {
                tracing::debug_span!(
                    "db.query",
                    otel.name = name,
                    otel.kind = "client",
                    otel.status_code = tracing::field::Empty,
                    db.system.name = "postgresql",
                    db.query.summary = name,
                )
            };
        let result = tokio::time::timeout(self.timeout, op)
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "database did not answer within {:?}",
                    self.timeout
                )))
            });
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }
}
