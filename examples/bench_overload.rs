//! An HTTP/1.1 load client for the overload runs of `scripts/bench`: `GET /reviews?product_id=N`
//! with ids drawn at random, over many keep-alive connections, told apart by outcome, so the
//! latency of the requests the service admitted (2xx) and of those it shed (503) are reported
//! separately. Hand-written on raw sockets (one small request, one response with a
//! Content-Length) so that thousands of connections cost the client little.
//!
//! - closed loop (`--connections C`): C connections, each with one request in flight; after a
//!   503 a connection waits what `Retry-After` asks (as a well-behaved client does) unless
//!   `--hammer 1`, which sends the next request at once (a retry storm);
//! - open loop (`--rate R`): requests scheduled at R per second over C connections, each latency
//!   measured from its scheduled start (coordinated omission corrected).
//!
//! Usage: `bench_overload --addr 127.0.0.1:50051 --products 1000011 --connections 6000
//!         [--rate 4000 | --hammer 1] [--duration 15]`. Prints one JSON line.

#[path = "support/ids.rs"]
mod ids;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ids::Ids;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Options {
    addr: String,
    products: u64,
    connections: usize,
    rate: Option<f64>,
    duration: Duration,
    /// Ignore `Retry-After`.
    hammer: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        addr: "127.0.0.1:50051".into(),
        products: 1_000_011,
        connections: 2000,
        rate: None,
        duration: Duration::from_secs(15),
        hammer: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            anyhow::bail!("{pair:?}: every flag takes a value");
        };
        match flag.as_str() {
            "--addr" => o.addr = value.clone(),
            "--products" => o.products = value.parse()?,
            "--connections" => o.connections = value.parse()?,
            "--rate" => o.rate = Some(value.parse()?),
            "--duration" => o.duration = Duration::from_secs_f64(value.parse()?),
            "--hammer" => o.hammer = value == "1",
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(o)
}

/// Latencies in microseconds, by outcome.
#[derive(Default)]
struct Tally {
    ok: Vec<u32>,
    shed: Vec<u32>,
    other: Vec<u32>,
    /// Requests that got no answer (the connection failed), with how long they took.
    failed: Vec<u32>,
    /// The shed requests sent after the opening burst (the first second, when every connection
    /// sends at the same instant): the steady state of the overload.
    shed_steady: Vec<u32>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok.extend(other.ok);
        self.shed.extend(other.shed);
        self.other.extend(other.other);
        self.failed.extend(other.failed);
        self.shed_steady.extend(other.shed_steady);
    }

    /// One answer, `us` after its start, which came `since_start` after the run's.
    fn record(&mut self, outcome: Option<u16>, us: u32, since_start: Duration) {
        match outcome {
            Some(200..=299) => self.ok.push(us),
            Some(503) => {
                self.shed.push(us);
                if since_start >= OPENING {
                    self.shed_steady.push(us);
                }
            }
            Some(_) => self.other.push(us),
            None => self.failed.push(us),
        }
    }
}

/// One keep-alive connection, reconnected when the server closes it.
struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// What the last answer's `Retry-After` asked, in seconds.
    retry_after: Option<u64>,
}

impl Conn {
    async fn open(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).await.ok();
        if let Some(s) = &stream {
            let _ = s.set_nodelay(true);
        }
        Self {
            addr: addr.to_string(),
            stream,
            buf: Vec::with_capacity(16 * 1024),
            retry_after: None,
        }
    }

    /// Sends one GET and reads its answer; the status, or `None` if the connection failed.
    async fn get(&mut self, product: u64) -> Option<u16> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(&self.addr).await.ok()?;
                let _ = s.set_nodelay(true);
                self.stream = Some(s);
            }
            match self.exchange(product).await {
                Ok(status) => return Some(status),
                // A keep-alive connection the server closed between requests: once more on a
                // new one (the request was not answered, so it was not processed).
                Err(_) if attempt == 0 => self.stream = None,
                Err(_) => {
                    self.stream = None;
                    return None;
                }
            }
        }
        None
    }

    async fn exchange(&mut self, product: u64) -> std::io::Result<u16> {
        let stream = self.stream.as_mut().expect("connected");
        let request = format!("GET /reviews?product_id={product} HTTP/1.1\r\nHost: bench\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            read_more(stream, &mut self.buf).await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| std::io::Error::other("not UTF-8"))?
            .to_ascii_lowercase();
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("no content-length"))?;
        while self.buf.len() < head_end + length {
            read_more(stream, &mut self.buf).await?;
        }
        if head.contains("connection: close") {
            self.stream = None;
        }
        self.retry_after = head
            .lines()
            .find_map(|l| l.strip_prefix("retry-after:"))
            .and_then(|v| v.trim().parse().ok());
        Ok(status)
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Opens the connections before the clock starts, a few hundred at a time (a burst of thousands
/// of SYNs would overflow the listen backlog and measure the kernel's retransmit timer).
async fn connect_all(o: &Options) -> Vec<Conn> {
    let mut conns = Vec::with_capacity(o.connections);
    while conns.len() < o.connections {
        let n = (o.connections - conns.len()).min(200);
        let opened = futures_util::future::join_all((0..n).map(|_| Conn::open(&o.addr))).await;
        conns.extend(opened);
    }
    conns
}

/// How long the opening burst is taken to last.
const OPENING: Duration = Duration::from_secs(1);

fn pct(l: &[u32], p: f64) -> f64 {
    if l.is_empty() {
        return 0.0;
    }
    let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
    f64::from(l[i]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Arc::new(options()?);
    let conns = connect_all(&o).await;
    let connected = conns.iter().filter(|c| c.stream.is_some()).count();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let started = Instant::now();
    let deadline = started + o.duration;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut workers = Vec::new();
    match o.rate {
        None => {
            for (w, mut conn) in conns.into_iter().enumerate() {
                let (o, tally) = (o.clone(), tally.clone());
                let mut ids = Ids(seed.wrapping_add(w as u64 * 7919) | 1, o.products);
                workers.push(tokio::spawn(async move {
                    let mut mine = Tally::default();
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        let outcome = conn.get(ids.next()).await;
                        let us = start.elapsed().as_micros() as u32;
                        mine.record(outcome, us, start - started);
                        if let (Some(503), Some(secs), false) =
                            (outcome, conn.retry_after, o.hammer)
                        {
                            let wake = Instant::now() + Duration::from_secs(secs);
                            tokio::time::sleep_until(wake.min(deadline).into()).await;
                        }
                    }
                    tally.lock().unwrap().merge(mine);
                }));
            }
        }
        Some(rate) => {
            // Scheduled starts, taken by whichever connection is free.
            let (tx, rx) = tokio::sync::mpsc::channel::<(Instant, u64)>(1 << 16);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for mut conn in conns {
                let (rx, tally) = (rx.clone(), tally.clone());
                workers.push(tokio::spawn(async move {
                    let mut mine = Tally::default();
                    loop {
                        let next = rx.lock().await.recv().await;
                        let Some((scheduled, product)) = next else {
                            break;
                        };
                        let outcome = conn.get(product).await;
                        let us = scheduled.elapsed().as_micros() as u32;
                        mine.record(outcome, us, scheduled - started);
                    }
                    tally.lock().unwrap().merge(mine);
                }));
            }
            let interval = Duration::from_secs_f64(1.0 / rate);
            let total = (rate * o.duration.as_secs_f64()) as u64;
            let mut ids = Ids(seed, o.products);
            for n in 0..total {
                let scheduled = started + interval.mul_f64(n as f64);
                tokio::time::sleep_until(scheduled.into()).await;
                if tx.send((scheduled, ids.next())).await.is_err() {
                    break;
                }
            }
            drop(tx);
        }
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    for l in [
        &mut t.ok,
        &mut t.shed,
        &mut t.other,
        &mut t.failed,
        &mut t.shed_steady,
    ] {
        l.sort_unstable();
    }
    let max = [&t.ok, &t.shed, &t.other, &t.failed]
        .iter()
        .filter_map(|l| l.last())
        .max()
        .copied()
        .unwrap_or(0);
    let over_1s = [&t.ok, &t.shed, &t.other, &t.failed]
        .iter()
        .map(|l| l.iter().filter(|&&us| us > 1_000_000).count())
        .sum::<usize>();
    println!(
        "{{\"connections\":{},\"connected\":{connected},\"hammer\":{},\"seconds\":{elapsed:.2},\
         \"ok\":{},\"shed\":{},\"other\":{},\"failed\":{},\"ok_rps\":{:.0},\
         \"ok_p50_ms\":{:.3},\"ok_p99_ms\":{:.3},\"ok_max_ms\":{:.3},\
         \"shed_p50_ms\":{:.3},\"shed_p99_ms\":{:.3},\"shed_max_ms\":{:.3},\
         \"shed_steady\":{},\"shed_steady_p99_ms\":{:.3},\"shed_steady_max_ms\":{:.3},\
         \"max_ms\":{:.3},\"over_1s\":{over_1s}}}",
        o.connections,
        o.hammer,
        t.ok.len(),
        t.shed.len(),
        t.other.len(),
        t.failed.len(),
        t.ok.len() as f64 / elapsed,
        pct(&t.ok, 0.5),
        pct(&t.ok, 0.99),
        pct(&t.ok, 1.0),
        pct(&t.shed, 0.5),
        pct(&t.shed, 0.99),
        pct(&t.shed, 1.0),
        t.shed_steady.len(),
        pct(&t.shed_steady, 0.99),
        pct(&t.shed_steady, 1.0),
        f64::from(max) / 1000.0,
    );
    Ok(())
}
