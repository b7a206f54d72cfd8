//! How to reach PostgreSQL and how long to wait for it.

use std::time::Duration;

use crate::config::{default_duration, parse_database_url, parse_duration, Secret};

pub const DEFAULT_POOL_SIZE: u32 = 8;
pub const DEFAULT_READ_LANES: u32 = 2;
pub const DEFAULT_CONNECT_TIMEOUT: &str = "2s";
pub const DEFAULT_QUERY_TIMEOUT: &str = "5s";

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
        default_value_t = DEFAULT_POOL_SIZE,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub pool_size: u32,
    /// Pooled connections that short reads share, pipelined (see `db::lanes`); the rest of the
    /// pool is for writes and long reads. At most the pool size less one.
    #[arg(
        long = "db-read-lanes",
        env = "REVIEWS_DB_READ_LANES",
        default_value_t = DEFAULT_READ_LANES,
        value_parser = clap::value_parser!(u32).range(0..=10_000)
    )]
    pub read_lanes: u32,
    /// How long a request waits for a pooled connection before failing UNAVAILABLE.
    #[arg(long = "db-connect-timeout", env = "REVIEWS_DB_CONNECT_TIMEOUT", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Deadline for one operation on the database, connection included.
    #[arg(long = "db-timeout", env = "REVIEWS_DB_TIMEOUT", default_value = DEFAULT_QUERY_TIMEOUT, value_parser = parse_duration)]
    pub query_timeout: Duration,
}

impl DbConfig {
    /// The defaults, for a given database.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            read_url: None,
            pool_size: DEFAULT_POOL_SIZE,
            read_lanes: DEFAULT_READ_LANES,
            connect_timeout: default_duration(DEFAULT_CONNECT_TIMEOUT),
            query_timeout: default_duration(DEFAULT_QUERY_TIMEOUT),
        }
    }

    /// The read lanes, leaving at least one pooled connection for writes.
    pub fn lanes(&self) -> usize {
        self.read_lanes.min(self.pool_size - 1) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_lanes_leave_a_connection_for_writes() {
        let mut cfg = DbConfig::new("postgres://localhost/db");
        assert_eq!(cfg.lanes(), DEFAULT_READ_LANES as usize);
        cfg.pool_size = 2;
        assert_eq!(cfg.lanes(), 1);
        cfg.pool_size = 1;
        assert_eq!(cfg.lanes(), 0, "a pool of one: every read checks out");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let cfg = DbConfig::new("postgres://u:hunter2@localhost/db");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
