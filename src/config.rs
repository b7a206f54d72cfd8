//! What the settings of every module share: secrets that stay out of logs, durations with units,
//! and the checks of URLs. Each module owns its own settings (a `clap::Args` type with its
//! defaults), and the command line flattens them.

use std::fmt;
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

/// A secret key: at least 16 bytes, so that it is not guessable.
pub fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.len() < 16 {
        return Err("must be at least 16 bytes (e.g. openssl rand -hex 32)".into());
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

/// A default written as text (as the command line shows it), as a `Duration`.
pub fn default_duration(text: &str) -> Duration {
    parse_duration(text).expect("a valid default duration")
}

/// Parses `250ms`, `2s`, `1m`, `1h`, or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_delay(s).and_then(|d| {
        // Every duration here is a timeout, a period or a lifetime: zero is never meant.
        if d.is_zero() {
            Err(format!(
                "invalid duration {:?}: must be more than zero",
                s.trim()
            ))
        } else {
            Ok(d)
        }
    })
}

/// Like [`parse_duration`], for a wait that may be none (`0s`).
pub fn parse_delay(s: &str) -> Result<Duration, String> {
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
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    }
}

/// Parses `on` or `off` (also `true`/`false`, `1`/`0`).
pub fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("invalid switch {s:?}: use on or off")),
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
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_delay("0s"), Ok(Duration::ZERO));
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
}
