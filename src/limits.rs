//! Per-client rate limits on the writes (CreateReview, MarkReviewHelpful, ReportReview), shared by
//! every replica through Redis and kept locally while Redis cannot be asked.
//!
//! Each limit is a GCRA (generic cell rate algorithm): a rate (`count` per `period`, so one
//! request per `interval` on average) and a burst (`burst` requests at once after a quiet spell).
//! Per client and action the only state is the theoretical arrival time (TAT) of its next
//! request; a request at `now` is allowed when `TAT - (burst - 1) * interval <= now`, and then
//! moves the TAT to `max(TAT, now) + interval`. In Redis that is one script (`cache::Cache::gcra`)
//! on one key that expires when the TAT passes; here it is the same arithmetic in a map. The
//! arithmetic is written out rather than taken from a crate (governor has it for the local half)
//! so that both halves compute exactly the same answer: a client sees the same limit whether or
//! not Redis answered.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::config::{parse_duration, parse_switch};
use crate::error::Error;

/// The writes that are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Helpful,
    Report,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Helpful => "helpful",
            Action::Report => "report",
        }
    }
}

/// `count` requests per `period`, in bursts of at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    /// The time one request costs, in microseconds.
    fn interval_us(&self) -> u64 {
        (self.period.as_micros() as u64 / u64::from(self.count)).max(1)
    }

    /// How far ahead of `now` the TAT may run.
    fn tolerance_us(&self) -> u64 {
        self.interval_us() * u64::from(self.burst - 1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, whole) = (self.period, self.period.subsec_nanos() == 0);
        let period = match p.as_secs() {
            s if whole && s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
            s if whole && s > 0 && s % 60 == 0 => format!("{}m", s / 60),
            s if whole && s > 0 => format!("{s}s"),
            _ => format!("{}ms", p.as_millis()),
        };
        write!(f, "{}/{period}:{}", self.count, self.burst)
    }
}

/// Parses `COUNT/PERIOD:BURST`, e.g. `20/1h:10`: 20 an hour, 10 at once.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("invalid rate {s:?}: expected COUNT/PERIOD:BURST, e.g. 20/1h:10");
    let (count, rest) = s.trim().split_once('/').ok_or_else(bad)?;
    let (period, burst) = rest.split_once(':').ok_or_else(bad)?;
    let count: u32 = count.parse().map_err(|_| bad())?;
    let burst: u32 = burst.parse().map_err(|_| bad())?;
    let period = parse_duration(period).map_err(|e| format!("invalid rate {s:?}: {e}"))?;
    if count == 0 || burst == 0 {
        return Err(format!(
            "invalid rate {s:?}: the count and the burst must be at least 1"
        ));
    }
    if count > 1_000_000 || burst > 1_000_000 || period > Duration::from_secs(7 * 86_400) {
        return Err(format!(
            "invalid rate {s:?}: at most 1000000 per period, bursts of 1000000, periods of 7 days"
        ));
    }
    Ok(Rate {
        count,
        period,
        burst,
    })
}

pub const DEFAULT_CREATE: &str = "20/1h:10";
pub const DEFAULT_HELPFUL: &str = "120/1h:30";
pub const DEFAULT_REPORT: &str = "20/1h:10";

/// Settings of the write limits.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// `on` or `off`: per-client rate limits on creates, helpful votes and reports.
    #[arg(long = "rate-limit", env = "REVIEWS_RATE_LIMIT", default_value = "on", action = clap::ArgAction::Set, value_parser = parse_switch)]
    pub rate_limit: bool,
    /// CreateReview per client: COUNT/PERIOD:BURST.
    #[arg(long = "create-limit", env = "REVIEWS_CREATE_LIMIT", default_value = DEFAULT_CREATE, value_parser = parse_rate)]
    pub create: Rate,
    /// MarkReviewHelpful per client: COUNT/PERIOD:BURST.
    #[arg(long = "helpful-limit", env = "REVIEWS_HELPFUL_LIMIT", default_value = DEFAULT_HELPFUL, value_parser = parse_rate)]
    pub helpful: Rate,
    /// ReportReview per client: COUNT/PERIOD:BURST.
    #[arg(long = "report-limit", env = "REVIEWS_REPORT_LIMIT", default_value = DEFAULT_REPORT, value_parser = parse_rate)]
    pub report: Rate,
    /// A header that names the client, set by a trusted proxy or gateway in front (e.g.
    /// `x-forwarded-for`, whose last entry is used, or an API-key header); unset: the peer
    /// address. Never set it without such a proxy: clients could name themselves.
    #[arg(long = "client-header", env = "REVIEWS_CLIENT_HEADER", value_parser = parse_header_name)]
    pub client_header: Option<http::HeaderName>,
}

fn parse_header_name(s: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::try_from(s.trim()).map_err(|_| format!("invalid header name {s:?}"))
}

impl LimitArgs {
    pub fn config(&self) -> LimitsConfig {
        LimitsConfig {
            enabled: self.rate_limit,
            create: self.create,
            helpful: self.helpful,
            report: self.report,
            client_header: self.client_header.clone(),
        }
    }
}

/// The write limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub enabled: bool,
    pub create: Rate,
    pub helpful: Rate,
    pub report: Rate,
    /// The header that names the client; `None`: the peer address.
    pub client_header: Option<http::HeaderName>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let rate = |s| parse_rate(s).expect("a valid default rate");
        Self {
            enabled: true,
            create: rate(DEFAULT_CREATE),
            helpful: rate(DEFAULT_HELPFUL),
            report: rate(DEFAULT_REPORT),
            client_header: None,
        }
    }
}

impl LimitsConfig {
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    fn rate(&self, action: Action) -> Rate {
        match action {
            Action::Create => self.create,
            Action::Helpful => self.helpful,
            Action::Report => self.report,
        }
    }
}

/// Who a request is from, for its limits: the address of its peer (an IPv6 one by its /64,
/// which one host can hold whole), or what the configured client header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    Ip(IpAddr),
    /// A header value that is not an address (an API key, a tenant), at most 128 bytes.
    Named(Vec<u8>),
}

impl Client {
    /// The client named by a header such as `X-Forwarded-For`: its last entry, the one the
    /// nearest (trusted) proxy added.
    pub fn from_header(value: &[u8]) -> Option<Self> {
        let last = value.rsplit(|&b| b == b',').next()?.trim_ascii();
        if last.is_empty() {
            return None;
        }
        if let Some(ip) = std::str::from_utf8(last).ok().and_then(|s| s.parse().ok()) {
            return Some(Client::Ip(ip));
        }
        Some(Client::Named(last[..last.len().min(128)].to_vec()))
    }

    fn key(&self) -> String {
        match self {
            Client::Ip(IpAddr::V4(ip)) => ip.to_string(),
            Client::Ip(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let s = ip.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
            Client::Named(name) => {
                let mut key = String::from("id:");
                for &b in name {
                    if b.is_ascii_graphic() && b != b'%' {
                        key.push(b as char);
                    } else {
                        key.push_str(&format!("%{b:02x}"));
                    }
                }
                key
            }
        }
    }
}

/// Most clients the local limiter keeps; past it, entries whose TAT has passed are dropped, and
/// if that frees nothing the request is let through (the limiter's memory stays bounded).
const LOCAL_CAPACITY: usize = 100_000;

/// The limits, checked in Redis when there is one and it answers, else locally.
pub struct Limiter {
    cfg: LimitsConfig,
    cache: Option<Cache>,
    start: Instant,
    /// TATs in microseconds since `start`, by `<action>:<client>`.
    local: Mutex<HashMap<String, u64>>,
}

impl Limiter {
    pub fn new(cfg: LimitsConfig, cache: Option<Cache>) -> Self {
        Self {
            cfg,
            cache,
            start: Instant::now(),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// The last value of the configured client header, if one is configured and sent: kept as
    /// sent (a shared buffer's handle), parsed only by a write that is limited.
    pub fn client_header(&self, headers: &http::HeaderMap) -> Option<http::HeaderValue> {
        let name = self.cfg.client_header.as_ref()?;
        headers.get_all(name).iter().next_back().cloned()
    }

    /// Who a request is from: what the client header says, or else the peer address.
    pub fn client(header: Option<&http::HeaderValue>, peer: Option<IpAddr>) -> Option<Client> {
        header
            .and_then(|value| Client::from_header(value.as_bytes()))
            .or(peer.map(Client::Ip))
    }

    /// Counts a request of `client` for `action`; `Err(RateLimited)` when it is over the limit.
    /// A request from no known client (none can be told) is not limited.
    pub async fn check(&self, action: Action, client: Option<&Client>) -> Result<(), Error> {
        let Some(client) = client.filter(|_| self.cfg.enabled) else {
            return Ok(());
        };
        let rate = self.cfg.rate(action);
        let key = format!("{}:{}", action.name(), client.key());
        let shared = match &self.cache {
            Some(cache) => {
                cache
                    .gcra(&key, rate.interval_us(), rate.tolerance_us())
                    .await
            }
            None => None,
        };
        let verdict = match shared {
            Some(verdict) => verdict,
            None => self.local(key, rate),
        };
        // A refusal's wait is never zero: the TAT is strictly beyond the tolerance.
        verdict.map_err(Error::RateLimited)
    }

    fn local(&self, key: String, rate: Rate) -> Result<(), Duration> {
        let now = self.start.elapsed().as_micros() as u64;
        let mut map = self.local.lock().expect("limiter lock");
        if map.len() >= LOCAL_CAPACITY && !map.contains_key(&key) {
            map.retain(|_, tat| *tat > now);
            if map.len() >= LOCAL_CAPACITY {
                return Ok(());
            }
        }
        let tat = map.entry(key).or_insert(now);
        let (next, verdict) = gcra(*tat, now, rate.interval_us(), rate.tolerance_us());
        *tat = next;
        verdict
    }
}

/// One GCRA step: the new TAT, and whether the request at `now` is allowed (else how long until
/// it would be). The same arithmetic as the Redis script (`cache::GCRA`).
fn gcra(tat: u64, now: u64, interval: u64, tolerance: u64) -> (u64, Result<(), Duration>) {
    let tat = tat.max(now);
    if tat - now > tolerance {
        let wait = tat - tolerance - now;
        (tat, Err(Duration::from_micros(wait)))
    } else {
        (tat + interval, Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        let r = parse_rate("20/1h:10").unwrap();
        assert_eq!(
            (r.count, r.period, r.burst),
            (20, Duration::from_secs(3600), 10)
        );
        assert_eq!(r.to_string(), "20/1h:10");
        assert_eq!(parse_rate("5/30s:1").unwrap().to_string(), "5/30s:1");
        assert_eq!(parse_rate("5/250ms:2").unwrap().to_string(), "5/250ms:2");
        for bad in [
            "", "20", "20/1h", "0/1h:1", "1/1h:0", "x/1h:1", "1/soon:1", "1/0s:1",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let (interval, tolerance) = (1_000, 4_000); // 5 at once, then 1 per ms
        let (mut tat, mut allowed) = (0, 0);
        for _ in 0..100 {
            let (next, verdict) = gcra(tat, 0, interval, tolerance);
            tat = next;
            allowed += usize::from(verdict.is_ok());
        }
        assert_eq!(allowed, 5);
        let (_, verdict) = gcra(tat, 0, interval, tolerance);
        assert_eq!(verdict, Err(Duration::from_micros(1_000)));
        let (tat, verdict) = gcra(tat, 1_000, interval, tolerance);
        assert!(verdict.is_ok());
        assert!(gcra(tat, 1_000, interval, tolerance).1.is_err());
        // A quiet spell refills the burst, and no more.
        let (mut tat, mut allowed) = (tat, 0);
        for _ in 0..100 {
            let (next, verdict) = gcra(tat, 1_000_000, interval, tolerance);
            tat = next;
            allowed += usize::from(verdict.is_ok());
        }
        assert_eq!(allowed, 5);
    }

    #[test]
    fn clients_are_keyed_by_address_or_name() {
        let c = |s: &str| Client::from_header(s.as_bytes()).unwrap().key();
        assert_eq!(c("203.0.113.7"), "203.0.113.7");
        assert_eq!(c("10.0.0.1, 198.51.100.2"), "198.51.100.2");
        assert_eq!(c("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(c("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(c("key 1"), "id:key%201");
        assert!(Client::from_header(b" , ").is_none());
        assert_eq!(c(&"k".repeat(500)).len(), 3 + 128);
    }
}
