//! PostgreSQL: the connection pool, embedded migrations, and the [`Store`] whose methods are the
//! service's core operations. Every query lives below this module.

mod cached;
mod config;
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
use futures_util::FutureExt;

use crate::cache::{Cache, Cacheable, Entry};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::reviews::{Meta, NewReview, PageRequest, ProductId, Review, ReviewId, Sort};

pub use self::config::DbConfig;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type Pool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

/// Builds the pool without connecting, so the service can start (not ready) while the database
/// is down. Checkouts fail fast after `connect_timeout` instead of bb8's silent 30 s retry, and
/// checking a connection out costs no round trip: only connections already seen closed are
/// discarded.
pub fn pool(cfg: &DbConfig) -> Pool {
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

/// The service's core operations on the review store. Each runs under a deadline, and a missed
/// deadline is reported as the store being unavailable.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Read replicas, used only through the cache, and only when they have replayed every
    /// write to the product being read (see `read_conn`).
    replicas: Option<Pool>,
    timeout: Duration,
    cache: Option<Cache>,
    metrics: Arc<Metrics>,
}

/// How long a read waits for a replica connection before using the primary.
const REPLICA_CHECKOUT: Duration = Duration::from_millis(50);

type Conn<'a> = bb8::PooledConnection<'a, AsyncDieselConnectionManager<AsyncPgConnection>>;

impl Store {
    pub fn new(pool: Pool, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            pool,
            replicas: None,
            timeout,
            cache: None,
            metrics,
        }
    }

    /// Reads may go to `replicas` (`DATABASE_READ_URL`) when the cache can tell they are fresh.
    pub fn with_replicas(mut self, replicas: Pool) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// A connection for a read whose data must include WAL position `needed`: a replica that
    /// has replayed that far, else the primary. Without a known position, the primary.
    async fn read_conn(&self, needed: Option<i64>) -> Result<Conn<'_>, Error> {
        if let (Some(replicas), Some(needed)) = (&self.replicas, needed) {
            // A replica that is down must not slow reads down: give it little time.
            let checkout = tokio::time::timeout(REPLICA_CHECKOUT, replicas.get()).await;
            if let Ok(Ok(mut conn)) = checkout {
                if queries::replayed_past(&mut conn, needed)
                    .await
                    .unwrap_or(false)
                {
                    self.metrics.replica_reads.inc();
                    return Ok(conn);
                }
            }
        }
        Ok(self.pool.get().await?)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reads go through `cache` (cache-aside); writes invalidate it before they return.
    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    async fn cached<T, F, Fut>(&self, entry: Entry, load: F) -> Result<T, Error>
    where
        T: Cacheable,
        F: FnOnce(Option<i64>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>> + Send,
    {
        match &self.cache {
            Some(cache) => cache.get_or_load(entry, load).await,
            None => load(None).await,
        }
    }

    /// After a committed write: hides the product's cached entries, recording how far the
    /// primary's WAL had gone when replicas are in use.
    async fn invalidate(&self, product: i32) {
        let (Some(cache), Ok(product)) = (&self.cache, ProductId::parse(product)) else {
            return;
        };
        let lsn = match &self.replicas {
            Some(_) => self
                .run(async {
                    let mut conn = self.pool.get().await?;
                    queries::wal_position(&mut conn).await
                })
                .await
                .ok(),
            None => None,
        };
        cache.invalidate(product, lsn).await;
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub async fn list_reviews(
        &self,
        product: ProductId,
        page: PageRequest,
        sort: Sort,
    ) -> Result<Vec<Review>, Error> {
        let load = |needed| {
            self.run(async move {
                let mut conn = self.read_conn(needed).await?;
                queries::list_reviews(&mut conn, product, page, sort).await
            })
        };
        let entry = Entry::List {
            product,
            page,
            sort,
        };
        self.cached(entry, load).await
    }

    pub async fn review_meta(&self, product: ProductId) -> Result<Meta, Error> {
        let load = |needed| {
            self.run(async move {
                let mut conn = self.read_conn(needed).await?;
                queries::review_meta(&mut conn, product).await
            })
        };
        self.cached(Entry::Meta { product }, load).await
    }

    /// Writes the review, its photos, its characteristic values and the kept aggregates in one
    /// transaction; returns the new review's id.
    pub async fn create_review(&self, review: &NewReview) -> Result<i32, Error> {
        let (store, review) = (self.clone(), review.clone());
        detached(async move {
            let id = store
                .run(async {
                    let mut conn = store.pool.get().await?;
                    writes::create_review(&mut conn, &review).await
                })
                .await?;
            store.invalidate(review.product_id.get()).await;
            Ok(id)
        })
        .await
    }

    pub async fn mark_helpful(&self, id: ReviewId) -> Result<(), Error> {
        let store = self.clone();
        detached(async move {
            let product = store
                .run(async {
                    let mut conn = store.pool.get().await?;
                    writes::mark_helpful(&mut conn, id).await
                })
                .await?;
            store.invalidate(product).await;
            Ok(())
        })
        .await
    }

    pub async fn report(&self, id: ReviewId) -> Result<(), Error> {
        let store = self.clone();
        detached(async move {
            let changed = store
                .run(async {
                    let mut conn = store.pool.get().await?;
                    writes::report(&mut conn, id).await
                })
                .await?;
            if let Some(product) = changed {
                store.invalidate(product).await;
            }
            Ok(())
        })
        .await
    }

    /// Whether the database answers a trivial query within the deadline.
    pub async fn ping(&self) -> Result<(), Error> {
        self.run(async {
            let mut conn = self.pool.get().await?;
            queries::ping(&mut conn).await
        })
        .await
    }

    async fn run<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "database did not answer within {:?}",
                    self.timeout
                )))
            })
    }
}

/// Runs a write to completion even if the caller goes away: a write that committed must also
/// invalidate the cache, whatever happens to the request that asked for it.
async fn detached<T: Send + 'static>(
    write: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(write)
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("write task failed: {e}"))))
}
