//! Typed configuration. Defaults live here; every setting can be given as a command-line flag or
//! through the environment variable named beside it.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A value that must never reach a log line, such as a database URL with its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// A PostgreSQL URL (or `key=value` connection string), checked when the command line is read:
/// a typo is a usage error at start-up rather than a readiness probe that never passes. The
/// message never repeats the value, which may hold a password.
pub fn parse_database_url(s: &str) -> Result<Secret, String> {
    let cfg: tokio_postgres::Config = s.parse().map_err(|e| {
        format!("not a PostgreSQL URL (postgres://user:password@host:port/database): {e}")
    })?;
    if cfg.get_hosts().is_empty() {
        return Err("the PostgreSQL URL names no host".into());
    }
    Ok(Secret::new(s))
}

/// A Redis URL (`redis://[user:password@]host:port/[db]`), checked like [`parse_database_url`].
pub fn parse_redis_url(s: &str) -> Result<Secret, String> {
    use redis::IntoConnectionInfo;
    s.into_connection_info()
        .map_err(|_| "not a Redis URL (redis://host:port/ or redis://user:password@host:port/0)")?;
    Ok(Secret::new(s))
}

/// Parses `250ms`, `2s`, `1m`, or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 2s or 1m"))?;
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    }
    .and_then(|d| {
        // Every duration here is a timeout, a period or a lifetime: zero is never meant.
        if d.is_zero() {
            Err(format!("invalid duration {s:?}: must be more than zero"))
        } else {
            Ok(d)
        }
    })
}

/// How to reach PostgreSQL and how long to wait for it.
#[derive(clap::Args, Debug, Clone)]
pub struct DbConfig {
    /// PostgreSQL connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true, value_parser = parse_database_url)]
    pub url: Secret,
    /// Read replicas (e.g. CloudNativePG's `-ro` service). Reads that miss the cache go there
    /// when the cache knows the replica has replayed every write to the product; otherwise, and
    /// without a cache, to the primary.
    #[arg(long = "database-read-url", env = "DATABASE_READ_URL", hide_env_values = true, value_parser = parse_database_url)]
    pub read_url: Option<Secret>,
    /// Most connections the pool opens.
    // Explicit ids: flattened beside `CacheArgs`, two fields named `pool_size` would otherwise
    // share one argument id and `serve` would refuse to start.
    #[arg(
        id = "db_pool_size",
        long = "db-pool-size",
        env = "REVIEWS_DB_POOL_SIZE",
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub pool_size: u32,
    /// How long a request waits for a pooled connection before failing UNAVAILABLE.
    #[arg(long = "db-connect-timeout", env = "REVIEWS_DB_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Deadline for one operation on the database, connection included.
    #[arg(long = "db-timeout", env = "REVIEWS_DB_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub query_timeout: Duration,
}

impl DbConfig {
    /// The defaults, for a given database.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            read_url: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(5),
        }
    }
}

/// Settings of `reviews serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "REVIEWS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The Redis cache; without `REDIS_URL` the service runs uncached.
#[derive(clap::Args, Debug, Clone)]
pub struct CacheArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/. Unset: no cache.
    #[arg(long = "redis-url", env = "REDIS_URL", hide_env_values = true, value_parser = parse_redis_url)]
    pub redis_url: Option<Secret>,
    /// How long a cached entry lives.
    #[arg(long = "cache-ttl", env = "REVIEWS_CACHE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Most Redis connections.
    #[arg(
        id = "redis_pool_size",
        long = "redis-pool-size",
        env = "REVIEWS_REDIS_POOL_SIZE",
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub pool_size: u32,
    /// Prefix of every cache key (to share one Redis between environments).
    #[arg(
        long = "cache-prefix",
        env = "REVIEWS_CACHE_PREFIX",
        default_value = "rv"
    )]
    pub prefix: String,
    /// Deadline of one Redis call; past it the request goes to PostgreSQL.
    #[arg(id = "redis_timeout", long = "redis-timeout", env = "REVIEWS_REDIS_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl CacheArgs {
    pub fn config(&self) -> Option<crate::cache::CacheConfig> {
        let url = self.redis_url.as_ref()?;
        let mut cfg = crate::cache::CacheConfig::new(url.expose());
        cfg.ttl = self.ttl;
        cfg.prefix = self.prefix.clone();
        cfg.pool_size = self.pool_size;
        cfg.timeout = self.timeout;
        Some(cfg)
    }
}

/// Settings of the server around the service.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// How often readiness re-checks the database.
    #[arg(long = "health-interval", env = "REVIEWS_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Origins allowed to call from browsers (comma-separated), or `*` for any.
    #[arg(
        long = "cors-origins",
        env = "REVIEWS_CORS_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Close client connections (with a GOAWAY, so clients reconnect without failing calls)
    /// once they are this old, so long-lived gRPC connections spread over new replicas.
    #[arg(long = "max-connection-age", env = "REVIEWS_MAX_CONNECTION_AGE", value_parser = parse_duration)]
    pub max_connection_age: Option<Duration>,
    /// Largest JSON request body, in bytes; larger ones get 413.
    #[arg(long = "max-body-bytes", env = "REVIEWS_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
}

impl ServerArgs {
    pub fn options(&self) -> crate::server::ServerOptions {
        crate::server::ServerOptions {
            health_interval: self.health_interval,
            max_connection_age: self.max_connection_age,
            http: crate::http::HttpConfig {
                cors_origins: self.cors_origins.clone(),
                max_body: self.max_body_bytes,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn urls_are_checked_without_repeating_them() {
        assert!(parse_database_url("postgres://u:pw@db:5432/reviews").is_ok());
        assert!(parse_database_url("postgresql://u:pw@db.ns/reviews").is_ok());
        for bad in [
            "db:5432",
            "postgres://u:hunter2@db:port/x",
            "mysql://u:hunter2@db/x",
        ] {
            let err = parse_database_url(bad).unwrap_err();
            assert!(!err.contains("hunter2") && !err.contains("db:"), "{err}");
        }
        assert!(parse_redis_url("redis://redis:6379/").is_ok());
        let err = parse_redis_url("http://u:hunter2@redis:6379/").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let cfg = DbConfig::new("postgres://u:hunter2@localhost/db");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
