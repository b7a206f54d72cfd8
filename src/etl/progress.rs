//! Progress of a load: on a terminal a line redrawn twice a second (rows, rows/s, bytes, ETA),
//! otherwise a log line every ten seconds.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    file: &'static str,
    total_bytes: u64,
    started: Instant,
    last: Instant,
    terminal: bool,
}

impl Progress {
    pub fn new(file: &'static str, total_bytes: u64) -> Self {
        let now = Instant::now();
        Self {
            file,
            total_bytes,
            started: now,
            last: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Reports if it is time to; cheap to call for every row.
    pub fn tick(&mut self, rows: u64, bytes: u64) {
        let every = if self.terminal {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(10)
        };
        if !rows.is_multiple_of(4096) || self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = rows as f64 / secs;
        let eta = if bytes > 0 {
            secs * (self.total_bytes.saturating_sub(bytes)) as f64 / bytes as f64
        } else {
            0.0
        };
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        if self.terminal {
            eprint!(
                "\r{:<28} {rows:>11} rows {rate:>9.0} rows/s {:>8.1}/{:.1} MiB  ETA {eta:>4.0} s ",
                self.file,
                mib(bytes),
                mib(self.total_bytes),
            );
            let _ = std::io::stderr().flush();
        } else {
            tracing::info!(
                file = self.file,
                rows,
                rows_per_sec = rate as u64,
                mib_read = mib(bytes) as u64,
                mib_total = mib(self.total_bytes) as u64,
                eta_secs = eta as u64,
                "loading"
            );
        }
    }

    pub fn done(&self) -> Duration {
        if self.terminal {
            eprintln!();
        }
        self.started.elapsed()
    }
}

/// The process's peak resident memory in KiB (VmHWM), where /proc tells it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
