//! The Redis cache beside the database, shared by every replica of the service. It stores the
//! bytes each face sends (a JSON body, an encoded protobuf reply), so a hit is one Redis round
//! trip and a copy. It knows nothing of the database: the service core looks up, loads, fills
//! and invalidates through it (see `service`).
//!
//! Layout: one hash per product, `<prefix>:{<product>}`, holding `v` (a token that changes with
//! every write to the product), `lsn` (the primary's WAL position after the last write) and one
//! field per cached answer, whose value starts with the stamp `<epoch>.<v>|` it was filled under.
//! A lookup is one `HMGET` of the hash: a hit is an answer whose stamp matches the hash's `v` and
//! the current epoch. A write replaces `v` after its transaction commits and before it returns,
//! so every read that starts after a write returned misses whatever was filled before it. A fill
//! is made off the response path and only while `v` is still the one its lookup saw, so a read
//! that began before a write can never make its older answer current (the fill race). Misses of
//! one stamped answer share one load (single-flight).
//!
//! The epoch and the WAL floor are global and change rarely (a missed invalidation, a new data
//! set): each replica polls them instead of reading them on every lookup, and a fill is refused
//! once the epoch it was looked up under has passed.
//!
//! With read replicas, the lookup also says which WAL position a miss must read at least up to
//! (the product's `lsn`, or, for a product not written for a TTL, the largest position any write
//! recorded), so a lagging replica is never asked.
//!
//! Redis failing never fails a request: every call has a short deadline, a breaker skips Redis
//! for a while after repeated failures, and reads then go to PostgreSQL. A write whose
//! invalidation could not reach Redis leaves this replica owing an epoch bump, retried in the
//! background until it succeeds and made before this replica uses the cache again; the bump hides
//! every answer filled before it, on every replica once they next poll the epoch.

mod breaker;
mod config;
mod doorkeeper;
mod flight;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;

pub use config::{CacheArgs, CacheConfig, DEFAULT_PREFIX};
pub use flight::{Flight, Flights};

use self::breaker::Breaker;
use self::doorkeeper::Doorkeeper;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::reviews::{ListQuery, PageQuery, ProductId, Sort};

/// List pages past this one are not cached, which bounds the fields per product.
pub const MAX_CACHED_PAGE: u32 = 20;

/// How often each replica re-reads the epoch and the WAL floor.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Fills `ARGV[2]` with `ARGV[3]` if the product's version is still `ARGV[1]` (`0`: none yet)
/// and the epoch still `ARGV[5]`, and makes a hash this fill created expire after `ARGV[4]`
/// seconds.
const FILL: &str = r"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[5] then return 0 end
if (redis.call('HGET', KEYS[1], 'v') or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4], 'NX')
return 1
";

/// Replaces the product's hash by one holding only the new version `ARGV[1]` and, when `ARGV[2]`
/// is positive, the WAL position of the write (never lower than the one it replaces), which also
/// raises the global maximum `KEYS[3]` and sets the floor `KEYS[2]` once per Redis lifetime. The
/// hash then lives `ARGV[3]` seconds, so a product without a recorded position was last written
/// more than a TTL ago.
const INVALIDATE: &str = r"
local kept = redis.call('HGET', KEYS[1], 'lsn')
local lsn = kept
if tonumber(ARGV[2]) > tonumber(kept or '0') then lsn = ARGV[2] end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
if lsn then redis.call('HSET', KEYS[1], 'lsn', lsn) end
if tonumber(ARGV[2]) > 0 then
  if tonumber(ARGV[2]) > tonumber(redis.call('GET', KEYS[3]) or '0') then
    redis.call('SET', KEYS[3], ARGV[2])
  end
  redis.call('SET', KEYS[2], ARGV[2], 'NX')
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// One step of a GCRA rate limit (see `limits`) on `KEYS[1]`, which holds the theoretical arrival
/// time of the client's next request in microseconds of Redis's own clock (one clock for every
/// replica): `ARGV[1]` is the interval one request costs, `ARGV[2]` how far ahead of now the TAT
/// may run. Returns -1 when the request is allowed (and moves the TAT on, the key expiring as it
/// passes), else the microseconds until it would be.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
if tat - now > tolerance then return tat - tolerance - now end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.floor((next - now) / 1000) + 1)
return -1
";

/// What is cached: a list page or a product's meta, in the form one face sends it.
#[derive(Debug, Clone, Copy, Hash)]
pub enum Entry {
    List(ListQuery),
    Meta(ProductId),
    Rating(ProductId),
    /// A v1 page: cached from the start of a list only (a cursor's position is one reader's).
    Page(PageQuery),
}

impl Entry {
    fn product(&self) -> ProductId {
        match self {
            Entry::List(query) => query.product,
            Entry::Page(query) => query.product,
            Entry::Meta(product) | Entry::Rating(product) => *product,
        }
    }

    /// The hash field of this entry in `format` (which names its encoding and its version).
    fn field(&self, format: &str) -> String {
        match self {
            Entry::List(ListQuery { page, sort, .. }) => {
                let sort = sort_name(*sort);
                format!("list:{sort}:{}:{}:{format}", page.page(), page.size())
            }
            Entry::Meta(_) => format!("meta:{format}"),
            Entry::Rating(_) => format!("rating:{format}"),
            Entry::Page(query) => format!(
                "page:{}:{}:{}:{format}",
                sort_name(query.sort),
                query.filter.key(),
                query.size
            ),
        }
    }

    fn cacheable(&self) -> bool {
        match self {
            Entry::List(query) => query.page.page() <= MAX_CACHED_PAGE,
            Entry::Page(query) => query.after.is_none(),
            Entry::Meta(_) | Entry::Rating(_) => true,
        }
    }
}

fn sort_name(sort: Sort) -> &'static str {
    match sort {
        Sort::Relevant => "relevant",
        Sort::Newest => "newest",
        Sort::Helpful => "helpful",
    }
}

/// What a lookup found.
pub enum Lookup {
    /// The cached answer.
    Hit(Bytes),
    /// No current answer: load one (from data that includes `needed`) and fill it.
    Miss(Miss),
    /// Redis is not usable now, the entry is never cached, or this is its first sighting: read
    /// the primary, fill nothing.
    Skip,
}

/// A miss, with what its fill must be conditioned on.
pub struct Miss {
    key: String,
    field: String,
    /// The product's version the lookup saw (`0`: none), and the epoch it knew.
    version: String,
    epoch: i64,
    /// The WAL position the answer's data must include, when read replicas may answer.
    pub needed: Option<Lsn>,
}

impl Miss {
    /// Names the answer this miss will load, for single-flight: a later write changes it.
    pub fn flight_key(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.key,
            self.field,
            stamp(self.epoch, &self.version)
        )
    }
}

/// What a cached answer starts with: the epoch and the product version it was filled under.
fn stamp(epoch: i64, version: &str) -> String {
    format!("{epoch}.{version}|")
}

/// The global state each replica polls.
#[derive(Debug, Clone, Copy, Default)]
struct Globals {
    /// Whether the poll has succeeded since this replica (re)connected.
    known: bool,
    epoch: i64,
    /// Every write before this Redis started recording positions is at or below it.
    floor: Option<i64>,
    /// The largest position any write recorded.
    max_lsn: i64,
}

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    cfg: CacheConfig,
    fill: redis::Script,
    invalidate: redis::Script,
    gcra: redis::Script,
    breaker: Breaker,
    flights: Flights,
    doorkeeper: Doorkeeper,
    metrics: Arc<Metrics>,
    globals: RwLock<Globals>,
    owes_epoch_bump: AtomicBool,
}

impl Cache {
    /// Builds the cache without connecting (Redis may be down when the service starts); a
    /// background task polls the epoch and repays owed epoch bumps.
    pub fn new(cfg: CacheConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let client = redis::Client::open(cfg.url.expose())?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            // Every call runs under the cache's own deadline (`guard`); a second timer per call
            // would only cost time.
            .set_response_timeout(None)
            // Reconnection is retried by the next call; a long retry loop would only delay it.
            .set_number_of_retries(1);
        let connections = (0..cfg.connections)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager.clone()))
            .collect::<Result<_, _>>()?;
        metrics.cache.enabled.set(1);
        metrics.cache.connections.set(cfg.connections as i64);
        let cache = Self {
            inner: Arc::new(Inner {
                connections,
                next: AtomicUsize::new(0),
                breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_cooldown, metrics.clone()),
                doorkeeper: Doorkeeper::new(cfg.ttl),
                cfg,
                fill: redis::Script::new(FILL),
                invalidate: redis::Script::new(INVALIDATE),
                gcra: redis::Script::new(GCRA),
                flights: Flights::default(),
                metrics,
                globals: RwLock::default(),
                owes_epoch_bump: AtomicBool::new(false),
            }),
        };
        tokio::spawn(poll(Arc::downgrade(&cache.inner)));
        Ok(cache)
    }

    /// Looks `entry` up in `format`: one `HMGET`, except on the answer's first sighting in this
    /// window (see `doorkeeper`), unless `needs_position`: with read replicas every miss must
    /// learn from Redis how far its replica must have replayed.
    pub async fn lookup(&self, entry: &Entry, format: &str, needs_position: bool) -> Lookup {
        let c = &self.inner;
        let mut globals = *c.globals.read().expect("globals lock");
        if !globals.known && c.usable() {
            // Just started, or Redis is back: read the globals now rather than at the next poll.
            c.poll().await;
            globals = *c.globals.read().expect("globals lock");
        }
        if !entry.cacheable() || !globals.known || !c.usable() {
            c.metrics.cache.bypassed.inc();
            return Lookup::Skip;
        }
        if !needs_position && !c.doorkeeper.seen_before((entry, format)) {
            c.metrics.cache.first_sightings.inc();
            return Lookup::Skip;
        }
        let field = entry.field(format);
        let key = c.cfg.product_key(entry.product());
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&key).arg("v").arg("lsn").arg(&field);
        let found: Result<(Option<String>, Option<i64>, Option<Bytes>), _> = c.call(&cmd).await;
        let Ok((version, lsn, value)) = found else {
            return Lookup::Skip;
        };
        let version = version.unwrap_or_else(|| "0".into());
        let stamp = stamp(globals.epoch, &version);
        if let Some(value) = value.filter(|v| v.starts_with(stamp.as_bytes())) {
            c.metrics.cache.hits.inc();
            return Lookup::Hit(value.slice(stamp.len()..));
        }
        c.metrics.cache.misses.inc();
        // Without a floor, writes from before this Redis's time are unaccounted for.
        let needed = globals
            .floor
            .map(|floor| Lsn::new(floor.max(lsn.unwrap_or(globals.max_lsn))));
        Lookup::Miss(Miss {
            key,
            field,
            version,
            epoch: globals.epoch,
            needed,
        })
    }

    /// Single-flight for misses: see [`Flights`].
    pub fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    /// Stores `answer` for `miss`, unless the product was written since its lookup.
    pub async fn fill(&self, miss: &Miss, answer: &[u8]) {
        let c = &self.inner;
        let stamp = stamp(miss.epoch, &miss.version);
        let mut value = Vec::with_capacity(stamp.len() + answer.len());
        value.extend_from_slice(stamp.as_bytes());
        value.extend_from_slice(answer);
        let mut invocation = c.fill.key(&miss.key);
        invocation
            .key(c.cfg.epoch_key())
            .arg(&miss.version)
            .arg(&miss.field)
            .arg(value)
            .arg(c.cfg.ttl.as_secs().max(1))
            .arg(miss.epoch);
        let mut conn = c.connection();
        match c.guard(invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(1) => c.metrics.cache.fills.inc(),
            Ok(_) => c.metrics.cache.stale_fills.inc(),
            Err(_) => {}
        }
    }

    /// One step of the rate limit named `key` (see `limits`) in Redis, shared by every replica:
    /// `Some(Ok(()))` if the request is allowed, `Some(Err(wait))` if not; `None` when Redis
    /// cannot be asked now (the breaker is open, or the call failed).
    pub async fn gcra(
        &self,
        key: &str,
        interval_us: u64,
        tolerance_us: u64,
    ) -> Option<Result<(), Duration>> {
        let c = &self.inner;
        if !c.breaker.allows() {
            return None;
        }
        let mut invocation = c.gcra.key(c.cfg.limit_key(key));
        invocation.arg(interval_us).arg(tolerance_us);
        let mut conn = c.connection();
        match c.guard(invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(wait) if wait < 0 => Some(Ok(())),
            Ok(wait) => Some(Err(Duration::from_micros(wait as u64))),
            Err(_) => None,
        }
    }

    /// Hides every cached answer of `product`, and records `lsn` (the primary's WAL position
    /// after the write, when read replicas are in use). Called after a write commits, before it
    /// returns.
    pub async fn invalidate(&self, product: ProductId, lsn: Option<Lsn>) {
        let c = &self.inner;
        c.metrics.cache.invalidations.inc();
        let mut invocation = c.invalidate.key(c.cfg.product_key(product));
        invocation
            .key(c.cfg.floor_key())
            .key(c.cfg.max_lsn_key())
            .arg(fresh_version())
            .arg(lsn.map_or(0, Lsn::get))
            .arg(c.cfg.ttl.as_secs().max(1));
        let mut conn = c.connection();
        let done = c.breaker.allows()
            && c.guard(invocation.invoke_async::<i64>(&mut conn))
                .await
                .is_ok();
        if !done {
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
    fn usable(&self) -> bool {
        self.breaker.allows() && !self.owes_epoch_bump.load(Ordering::SeqCst)
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut conn = self.connection();
        self.guard(cmd.query_async(&mut conn)).await
    }

    /// Runs one Redis call under the deadline; the outcome feeds the breaker.
    async fn guard<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        let in_flight = InFlight::new(&self.metrics.cache.calls_in_flight);
        let result = tokio::time::timeout(self.cfg.timeout, call).await;
        drop(in_flight);
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "deadline passed",
            ))),
        };
        match &result {
            Ok(_) => self.breaker.succeeded(),
            Err(error) => {
                tracing::debug!(%error, "redis call failed");
                self.metrics.cache.errors.inc();
                self.breaker.failed();
            }
        }
        result
    }

    /// Re-reads the epoch and the WAL floor and maximum; on failure the globals are unknown
    /// and the cache is skipped until a poll succeeds again (after a Redis restart the floor may
    /// be gone, and with it what replicas may answer).
    async fn poll(&self) {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.cfg.epoch_key())
            .arg(self.cfg.floor_key())
            .arg(self.cfg.max_lsn_key());
        let read: redis::RedisResult<(Option<i64>, Option<i64>, Option<i64>)> =
            self.call(&cmd).await;
        let mut globals = self.globals.write().expect("globals lock");
        *globals = match read {
            Ok((epoch, floor, max_lsn)) => Globals {
                known: true,
                epoch: epoch.unwrap_or(0),
                floor,
                max_lsn: max_lsn.unwrap_or(0),
            },
            Err(_) => Globals::default(),
        };
    }

    async fn bump_epoch(&self) {
        let mut cmd = redis::cmd("INCR");
        cmd.arg(self.cfg.epoch_key());
        if let Ok(epoch) = self.call::<i64>(&cmd).await {
            self.globals.write().expect("globals lock").epoch = epoch;
            self.owes_epoch_bump.store(false, Ordering::SeqCst);
            tracing::info!(
                "cache epoch bumped: entries older than the missed invalidation are hidden"
            );
        }
    }
}

/// Polls the globals and repays an owed epoch bump (bumped first, so this replica never reads
/// an answer filled before the invalidation it missed), whether or not the replica gets traffic.
async fn poll(inner: std::sync::Weak<Inner>) {
    loop {
        {
            let Some(inner) = inner.upgrade() else { return };
            if inner.owes_epoch_bump.load(Ordering::SeqCst) {
                inner.bump_epoch().await;
            }
            if inner.breaker.allows() {
                inner.poll().await;
            } else {
                // Whatever Redis holds when it answers again must be read afresh.
                *inner.globals.write().expect("globals lock") = Globals::default();
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A version token no earlier write to any product used, so a hash that expired and was
/// created again can never make an old answer current.
fn fresh_version() -> String {
    use std::hash::BuildHasher;
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // RandomState is seeded per process, so tokens of two replicas differ even in one instant.
    let mixed = std::collections::hash_map::RandomState::new()
        .hash_one((nanos, COUNT.fetch_add(1, Ordering::Relaxed)));
    format!("{mixed:016x}")
}

/// Hides every cached answer, e.g. after a new data set was loaded: bumps the epoch (so no
/// read that began before can fill), deletes every product's hash (so no server still on the old
/// epoch until its next poll can hit), and forgets the WAL floor (so replicas serve again only
/// once they have replayed a later write).
pub async fn hide_all(cfg: &CacheConfig) -> anyhow::Result<()> {
    let client = redis::Client::open(cfg.url.expose())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::pipe()
        .atomic()
        .incr(cfg.epoch_key(), 1)
        .del(cfg.floor_key())
        .del(cfg.max_lsn_key())
        .query_async::<()>(&mut conn)
        .await?;
    let pattern = format!("{}:{{*}}", cfg.prefix);
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

impl CacheConfig {
    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// The product's hash; the braces are a hash tag, so it maps to one Redis Cluster slot.
    fn product_key(&self, product: ProductId) -> String {
        format!("{}:{{{}}}", self.prefix, product.get())
    }

    /// A WAL position at or past every write made before this Redis started keeping positions.
    fn floor_key(&self) -> String {
        format!("{}:lsn-floor", self.prefix)
    }

    fn max_lsn_key(&self) -> String {
        format!("{}:lsn-max", self.prefix)
    }

    fn limit_key(&self, name: &str) -> String {
        format!("{}:rl:{name}", self.prefix)
    }
}

/// Counts a Redis call in flight until it is answered or abandoned.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
