//! The Redis cache in front of the database, shared by every replica (cache-aside).
//!
//! Keys are versioned: `<prefix>:{<product>}:e<epoch>:v<version>:<entry>`. One Lua script reads the
//! global epoch, the product's version and the entry in one round trip. A write bumps the
//! product's version after its transaction commits and before it returns, so every read that
//! starts after a write returned looks up a key no reader could have filled with older data.
//! A read that began before the write fills the old key, which nobody reads any more: the
//! classic fill race cannot leave a stale entry in view. Misses of one key share one load
//! (single-flight, keyed by the versioned key, so a read never joins a load older than a write
//! it must see).
//!
//! With read replicas, a write also records the primary's WAL position after its commit (per
//! product, and once per Redis lifetime as a floor); the lookup returns the position a miss must
//! read at least up to, so a lagging replica is never asked (see `db::Store::read_conn`).
//!
//! Redis failing never fails a request: every call has a short timeout, a breaker skips Redis
//! for a while after repeated failures, and reads then go to PostgreSQL. A write whose version
//! bump could not reach Redis leaves the replica owing an epoch bump, retried in the background
//! until it succeeds and made before this replica uses the cache again; the bump hides every
//! entry filled before it. Until then other replicas may serve entries older than that write,
//! for at most the TTL.

mod breaker;
mod codec;
mod config;
mod flight;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;

pub use codec::Cacheable;
pub use config::{CacheArgs, CacheConfig, DEFAULT_PREFIX};

use self::breaker::Breaker;
use self::flight::Flights;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::reviews::{PageRequest, ProductId, Sort};

/// List pages past this one are not cached, which bounds the key space per product.
pub const MAX_CACHED_PAGE: u32 = 20;

/// Reads the epoch, the product's version and the versioned entry in one round trip.
const LOOKUP: &str = r"
local epoch = redis.call('GET', KEYS[1]) or '0'
local version = redis.call('GET', KEYS[2]) or '0'
local key = ARGV[1] .. epoch .. ':v' .. version .. ARGV[2]
return {key, redis.call('GET', key), redis.call('GET', KEYS[3]), redis.call('GET', KEYS[4])}
";

/// Bumps a product's version and records how far the primary's WAL had gone when the write
/// committed (the product's LSN only grows; the floor is set once per Redis lifetime).
const INVALIDATE: &str = r"
redis.call('INCR', KEYS[1])
local lsn = tonumber(ARGV[1])
if lsn > 0 then
  if lsn > tonumber(redis.call('GET', KEYS[2]) or '0') then
    redis.call('SET', KEYS[2], ARGV[1])
  end
  redis.call('SET', KEYS[3], ARGV[1], 'NX')
end
return 1
";

/// What is cached: a list page (after clamping) or a product's meta.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    List {
        product: ProductId,
        page: PageRequest,
        sort: Sort,
    },
    Meta {
        product: ProductId,
    },
}

impl Entry {
    fn product(&self) -> ProductId {
        match self {
            Entry::List { product, .. } | Entry::Meta { product } => *product,
        }
    }

    /// The part of the key after the version: the normalized request.
    fn suffix(&self) -> String {
        match self {
            Entry::List { page, sort, .. } => {
                let sort = match sort {
                    Sort::Relevant => "relevant",
                    Sort::Newest => "newest",
                    Sort::Helpful => "helpful",
                };
                format!(":list:{sort}:{}:{}", page.page(), page.size())
            }
            Entry::Meta { .. } => ":meta".into(),
        }
    }

    fn cacheable(&self) -> bool {
        match self {
            Entry::List { page, .. } => page.page() <= MAX_CACHED_PAGE,
            Entry::Meta { .. } => true,
        }
    }
}

impl CacheConfig {
    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Keys of one product share a hash tag, so they live on one Redis Cluster slot.
    fn entry_prefix(&self, product: ProductId) -> String {
        format!("{}:{{{}}}:e", self.prefix, product.get())
    }

    fn version_key(&self, product: ProductId) -> String {
        format!("{}:{{{}}}:version", self.prefix, product.get())
    }

    /// The primary's WAL position (as a number) after the product's last write.
    fn lsn_key(&self, product: ProductId) -> String {
        format!("{}:{{{}}}:lsn", self.prefix, product.get())
    }

    /// A WAL position at or past every write made before this Redis started keeping LSNs.
    fn floor_key(&self) -> String {
        format!("{}:lsn-floor", self.prefix)
    }
}

/// What a lookup found: the versioned key, its value, and the WAL position its data needs.
struct Lookup {
    key: String,
    value: Option<Bytes>,
    needed: Option<i64>,
}

/// Test hooks: pause a read between its database load and its fill, or inside its load.
#[derive(Default, Clone)]
pub struct Hooks {
    pub before_fill: Option<Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>>,
    pub during_load: Option<Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>>,
}

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    pool: bb8::Pool<Manager>,
    cfg: CacheConfig,
    lookup: redis::Script,
    invalidate: redis::Script,
    breaker: Breaker,
    flights: Flights,
    metrics: Arc<Metrics>,
    owes_epoch_bump: AtomicBool,
    hooks: Hooks,
}

impl Cache {
    /// Builds the cache without connecting; a background task repays owed epoch bumps.
    pub fn new(cfg: CacheConfig, metrics: Arc<Metrics>, hooks: Hooks) -> anyhow::Result<Self> {
        let manager = Manager(bb8_redis::RedisConnectionManager::new(cfg.url.expose())?);
        let pool = bb8::Pool::builder()
            .max_size(cfg.pool_size)
            .connection_timeout(cfg.timeout)
            .retry_connection(false)
            .test_on_check_out(false)
            .build_unchecked(manager);
        metrics.cache.enabled.store(true, Ordering::Relaxed);
        let cache = Self {
            inner: Arc::new(Inner {
                pool,
                breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_cooldown, metrics.clone()),
                cfg,
                lookup: redis::Script::new(LOOKUP),
                invalidate: redis::Script::new(INVALIDATE),
                flights: Flights::default(),
                metrics,
                owes_epoch_bump: AtomicBool::new(false),
                hooks,
            }),
        };
        tokio::spawn(repay_epoch_bumps(Arc::downgrade(&cache.inner)));
        Ok(cache)
    }

    /// The cached value of `entry`, or `load`'s, which is then cached. `load` is told the WAL
    /// position its data must include (every write to the product so far), when the cache
    /// knows it: a read replica that has replayed that far may answer.
    pub async fn get_or_load<T, F, Fut>(&self, entry: Entry, load: F) -> Result<T, Error>
    where
        T: Cacheable,
        F: FnOnce(Option<i64>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>> + Send,
    {
        let c = &self.inner;
        if !entry.cacheable() || !c.ready().await {
            c.metrics.cache.bypassed.inc();
            return load(None).await;
        }
        let (key, needed) = match c.lookup(&entry).await {
            Ok(Lookup {
                key,
                value: Some(bytes),
                needed,
            }) => match T::decode(&bytes) {
                Some(value) => {
                    c.metrics.cache.hits.inc();
                    return Ok(value);
                }
                None => (key, needed), // written by another version of the service: reload it
            },
            Ok(Lookup {
                key,
                value: None,
                needed,
            }) => (key, needed),
            Err(()) => return load(None).await,
        };
        let load = load(needed);
        c.metrics.cache.misses.inc();
        let joined = || c.metrics.cache.coalesced.inc();
        let (outcome, _) = c
            .flights
            .run(
                &key,
                async {
                    c.metrics.cache.loads.inc();
                    if let Some(hook) = &c.hooks.during_load {
                        hook().await;
                    }
                    let bytes = load.await?.encode();
                    if let Some(hook) = &c.hooks.before_fill {
                        hook().await;
                    }
                    c.fill(&key, bytes.clone()).await;
                    Ok(bytes)
                },
                joined,
            )
            .await;
        T::decode(&outcome?).ok_or_else(|| Error::Internal("undecodable cache entry".into()))
    }

    /// Hides every cached entry of `product`, and records `lsn` (the primary's WAL position
    /// after the write, when read replicas are in use). Called after a write commits, before it
    /// returns.
    pub async fn invalidate(&self, product: ProductId, lsn: Option<i64>) {
        let c = &self.inner;
        c.metrics.cache.invalidations.inc();
        let mut invocation = c.invalidate.key(c.cfg.version_key(product));
        invocation
            .key(c.cfg.lsn_key(product))
            .key(c.cfg.floor_key())
            .arg(lsn.unwrap_or(0));
        let bumped = c.breaker.allows()
            && c.call(|mut conn| async move {
                invocation.invoke_async::<i64>(&mut conn).await.map(drop)
            })
            .await
            .is_ok();
        if !bumped {
            tracing::warn!(
                product_id = product.get(),
                "could not invalidate: owing an epoch bump"
            );
            c.owes_epoch_bump.store(true, Ordering::SeqCst);
        }
    }
}

impl Inner {
    /// Whether the cache may be used now: the breaker is closed and no epoch bump is owed.
    async fn ready(&self) -> bool {
        if !self.breaker.allows() {
            return false;
        }
        !self.owes_epoch_bump.load(Ordering::SeqCst) || self.bump_epoch().await
    }

    async fn bump_epoch(&self) -> bool {
        let ok = self
            .call(|mut conn| async move {
                redis::cmd("INCR")
                    .arg(self.cfg.epoch_key())
                    .query_async::<i64>(&mut conn)
                    .await
                    .map(drop)
            })
            .await
            .is_ok();
        if ok {
            self.owes_epoch_bump.store(false, Ordering::SeqCst);
            tracing::info!(
                "cache epoch bumped: entries older than the missed invalidation are hidden"
            );
        }
        ok
    }

    async fn lookup(&self, entry: &Entry) -> Result<Lookup, ()> {
        let product = entry.product();
        let invocation = {
            let mut inv = self.lookup.key(self.cfg.epoch_key());
            inv.key(self.cfg.version_key(product))
                .key(self.cfg.lsn_key(product))
                .key(self.cfg.floor_key())
                .arg(self.cfg.entry_prefix(product))
                .arg(entry.suffix());
            inv
        };
        self.call(|mut conn| async move {
            let (key, value, lsn, floor): (String, Option<Vec<u8>>, Option<i64>, Option<i64>) =
                invocation.invoke_async(&mut conn).await?;
            // Without a floor, writes from before this Redis's time are unaccounted for.
            let needed = floor.map(|f| f.max(lsn.unwrap_or(0)));
            Ok(Lookup {
                key,
                value: value.map(Bytes::from),
                needed,
            })
        })
        .await
    }

    async fn fill(&self, key: &str, bytes: Bytes) {
        let ttl = self.cfg.ttl.as_secs().max(1);
        let key = key.to_string();
        let filled = self
            .call(|mut conn| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(bytes.as_ref())
                    .arg("EX")
                    .arg(ttl)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        if filled.is_ok() {
            self.metrics.cache.fills.inc();
        }
    }

    /// Runs one Redis call under the deadline; failures feed the breaker and mark the
    /// connection for disposal.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ()>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let mut pooled = self.pool.get().await.map_err(|e| e.to_string())?;
            let result = f(pooled.conn.clone()).await;
            if let Err(e) = &result {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    pooled.broken = true;
                }
            }
            result.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.cfg.timeout, attempt).await {
            Ok(Ok(v)) => {
                self.breaker.succeeded();
                Ok(v)
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "redis call failed");
                self.metrics.cache.errors.inc();
                self.breaker.failed();
                Err(())
            }
            Err(_) => {
                self.metrics.cache.errors.inc();
                self.breaker.failed();
                Err(())
            }
        }
    }
}

/// Retries an owed epoch bump every half second, so a replica that missed an invalidation
/// hides the stale entries as soon as Redis is back, whether or not it gets traffic.
async fn repay_epoch_bumps(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.owes_epoch_bump.load(Ordering::SeqCst) {
            inner.bump_epoch().await;
        }
    }
}

/// A pooled Redis connection that the cache marks broken when a call fails at the transport
/// level, so bb8 replaces it instead of handing it out again (bb8-redis never reports broken
/// connections, and a check-out PING would double every call's round trips).
pub struct PooledRedis {
    conn: MultiplexedConnection,
    broken: bool,
}

struct Manager(bb8_redis::RedisConnectionManager);

impl bb8::ManageConnection for Manager {
    type Connection = PooledRedis;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<PooledRedis, redis::RedisError> {
        Ok(PooledRedis {
            conn: self.0.connect().await?,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut PooledRedis) -> Result<(), redis::RedisError> {
        self.0.is_valid(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut PooledRedis) -> bool {
        conn.broken
    }
}

/// Hides every cached entry by bumping the epoch, e.g. after a new data set was loaded, and
/// forgets the WAL floor, so replicas serve again only once they have replayed a later write.
pub async fn hide_all(cfg: &CacheConfig) -> anyhow::Result<()> {
    let client = redis::Client::open(cfg.url.expose())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::pipe()
        .atomic()
        .incr(cfg.epoch_key(), 1)
        .del(cfg.floor_key())
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}
