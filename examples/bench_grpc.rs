//! A gRPC load client for `scripts/bench`: `ListReviews` or `GetReviewMeta` with product ids drawn
//! at random, either closed loop (`--concurrency C`: C calls always in flight, for the maximum
//! throughput) or open loop (`--rate R`: calls started on a fixed schedule whatever the answers
//! do, each latency measured from its scheduled start, so a stall is not hidden by the client
//! waiting: coordinated omission corrected). Prints one JSON line of results.
//!
//! Usage: `bench_grpc --addr 127.0.0.1:50051 --products 1000011 [--hot 1000] [--method meta]
//!         (--rate 1000 | --concurrency 64) [--duration 15] [--connections 4]`

#[path = "support/ids.rs"]
mod ids;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ids::Ids;
use reviews::pb;
use reviews::pb::review_service_client::ReviewServiceClient;
use tonic::transport::Channel;

struct Options {
    addr: String,
    method: String,
    products: u64,
    rate: Option<f64>,
    concurrency: usize,
    duration: Duration,
    connections: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        addr: "127.0.0.1:50051".into(),
        method: "list".into(),
        products: 1_000_011,
        rate: None,
        concurrency: 64,
        duration: Duration::from_secs(15),
        connections: 4,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            anyhow::bail!("{pair:?}: every flag takes a value");
        };
        match flag.as_str() {
            "--addr" => o.addr = value.clone(),
            "--method" => o.method = value.clone(),
            "--products" | "--hot" => o.products = value.parse()?,
            "--rate" => o.rate = Some(value.parse()?),
            "--concurrency" => o.concurrency = value.parse()?,
            "--duration" => o.duration = Duration::from_secs_f64(value.parse()?),
            "--connections" => o.connections = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(o)
}

#[derive(Default)]
struct Tally {
    latencies_us: Mutex<Vec<u32>>,
    errors: AtomicU64,
}

async fn call(client: &mut ReviewServiceClient<Channel>, method: &str, product: i32) -> bool {
    if method == "meta" {
        let request = pb::GetReviewMetaRequest {
            product_id: product,
        };
        client.get_review_meta(request).await.is_ok()
    } else {
        let request = pb::ListReviewsRequest {
            product_id: product,
            ..Default::default()
        };
        client.list_reviews(request).await.is_ok()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Arc::new(options()?);
    let mut channels = Vec::new();
    for _ in 0..o.connections {
        channels.push(
            Channel::from_shared(format!("http://{}", o.addr))?
                .connect()
                .await?,
        );
    }
    let tally = Arc::new(Tally::default());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let started = Instant::now();
    match o.rate {
        Some(rate) => open_loop(&o, rate, &channels, &tally, seed).await,
        None => closed_loop(&o, &channels, &tally, seed).await,
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *tally.latencies_us.lock().unwrap());
    l.sort_unstable();
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return 0.0;
        }
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        f64::from(l[i]) / 1000.0
    };
    println!(
        "{{\"requests\":{},\"errors\":{},\"seconds\":{elapsed:.2},\"rps\":{:.0},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        l.len(),
        tally.errors.load(Ordering::Relaxed),
        l.len() as f64 / elapsed,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    Ok(())
}

async fn closed_loop(o: &Arc<Options>, channels: &[Channel], tally: &Arc<Tally>, seed: u64) {
    let deadline = Instant::now() + o.duration;
    let mut workers = Vec::new();
    for w in 0..o.concurrency {
        let (o, tally) = (o.clone(), tally.clone());
        let mut client = ReviewServiceClient::new(channels[w % channels.len()].clone());
        let mut ids = Ids(seed.wrapping_add(w as u64 * 7919) | 1, o.products);
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                if call(&mut client, &o.method, ids.next() as i32).await {
                    mine.push(start.elapsed().as_micros() as u32);
                } else {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            tally.latencies_us.lock().unwrap().extend(mine);
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

async fn open_loop(
    o: &Arc<Options>,
    rate: f64,
    channels: &[Channel],
    tally: &Arc<Tally>,
    seed: u64,
) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * o.duration.as_secs_f64()) as u64;
    let mut ids = Ids(seed, o.products);
    let start = Instant::now();
    let mut calls = Vec::with_capacity(total as usize);
    for n in 0..total {
        let scheduled = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (o, tally) = (o.clone(), tally.clone());
        let mut client = ReviewServiceClient::new(channels[n as usize % channels.len()].clone());
        let product = ids.next() as i32;
        calls.push(tokio::spawn(async move {
            if call(&mut client, &o.method, product).await {
                // From the scheduled start: a late start counts against the server.
                let us = scheduled.elapsed().as_micros() as u32;
                tally.latencies_us.lock().unwrap().push(us);
            } else {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for c in calls {
        let _ = c.await;
    }
}
