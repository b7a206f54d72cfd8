//! The cache's settings: where Redis is, how long entries live, how long a call may take.

use std::time::Duration;

use crate::config::{default_duration, parse_duration, parse_redis_url, Secret};

pub const DEFAULT_PREFIX: &str = "rv";
pub const DEFAULT_TTL: &str = "60s";
pub const DEFAULT_CONNECTIONS: u32 = 1;
pub const DEFAULT_TIMEOUT: &str = "100ms";

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub url: Secret,
    /// Prefix of every key, so environments (or tests) can share one Redis.
    pub prefix: String,
    pub ttl: Duration,
    /// Multiplexed connections; each carries any number of concurrent calls.
    pub connections: u32,
    /// Deadline of one Redis call, connection included.
    pub timeout: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
}

impl CacheConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            prefix: DEFAULT_PREFIX.into(),
            ttl: default_duration(DEFAULT_TTL),
            connections: DEFAULT_CONNECTIONS,
            timeout: default_duration(DEFAULT_TIMEOUT),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(2),
        }
    }
}

/// The Redis cache; without `REDIS_URL` the service runs uncached.
#[derive(clap::Args, Debug, Clone)]
pub struct CacheArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/. Unset: no cache.
    #[arg(long = "redis-url", env = "REDIS_URL", hide_env_values = true, value_parser = parse_redis_url)]
    pub redis_url: Option<Secret>,
    /// How long a cached entry lives.
    #[arg(long = "cache-ttl", env = "REVIEWS_CACHE_TTL", default_value = DEFAULT_TTL, value_parser = parse_duration)]
    pub ttl: Duration,
    /// Redis connections; each is multiplexed (pipelines every concurrent call).
    #[arg(
        long = "redis-connections",
        env = "REVIEWS_REDIS_CONNECTIONS",
        default_value_t = DEFAULT_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub connections: u32,
    /// Prefix of every cache key (to share one Redis between environments).
    #[arg(
        long = "cache-prefix",
        env = "REVIEWS_CACHE_PREFIX",
        default_value = DEFAULT_PREFIX
    )]
    pub prefix: String,
    /// Deadline of one Redis call; past it the request goes to PostgreSQL.
    #[arg(id = "redis_timeout", long = "redis-timeout", env = "REVIEWS_REDIS_TIMEOUT", default_value = DEFAULT_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,
}

impl CacheArgs {
    pub fn config(&self) -> Option<CacheConfig> {
        let url = self.redis_url.as_ref()?;
        let mut cfg = CacheConfig::new(url.expose());
        cfg.ttl = self.ttl;
        cfg.prefix = self.prefix.clone();
        cfg.connections = self.connections;
        cfg.timeout = self.timeout;
        Some(cfg)
    }
}
