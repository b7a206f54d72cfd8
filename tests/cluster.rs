//! Several replicas behind a real load balancer: `scripts/cluster` brings up a PostgreSQL primary
//! with a streaming replica, Redis, three `reviews serve` processes of the built binary on their
//! own loopback addresses and HAProxy in front; steady mixed load goes through HAProxy while
//! replicas are killed, restarted and scaled and Redis and PostgreSQL go away. Each scenario
//! prints its figures (requests sent, failed, recovery time).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sandbox::{self, wait_until};
use common::scratch_dir;
use reviews::pb::review_service_client::ReviewServiceClient;
use serde_json::{json, Value};

/// The products the sample data has without characteristics, so writes need to rate none.
const WRITE_PRODUCT: i32 = 27;
/// What a read may wait at most while the database is away: the default `REVIEWS_DB_TIMEOUT`.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// `scripts/cluster` on one folder, run on the built binary.
#[derive(Clone)]
struct Ctl {
    dir: std::path::PathBuf,
}

impl Ctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster"));
        cmd.args(args)
            .env("REVIEWS_BIN", sandbox::BIN)
            .env("REVIEWS_CLUSTER_DIR", &self.dir)
            .env("REVIEWS_HEALTH_INTERVAL", "500ms")
            // Every replica it starts (on up, scale and restart) runs with this limit, and takes
            // the load's many reviews by one email.
            .env("REVIEWS_CREATE_LIMIT", CREATE_LIMIT)
            .env("REVIEWS_ONE_REVIEW_PER_EMAIL", "off");
        cmd
    }

    /// Runs a subcommand to its end and returns what it printed on stdout.
    fn script(&self, args: &[&str]) -> String {
        sandbox::run_ok(&mut self.command(args))
    }
}

/// A running cluster, taken down on drop.
struct Cluster {
    ctl: Ctl,
    lb: SocketAddr,
    db_url: String,
}

impl Cluster {
    async fn run(&self, args: &[&str]) -> String {
        let ctl = self.ctl.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            ctl.script(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ctl.script(&["status"])).unwrap()
    }

    fn replicas(&self) -> Vec<SocketAddr> {
        self.status()["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["address"].as_str().unwrap().parse().unwrap())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.ctl.command(&["down"]).status();
    }
}

async fn up(replicas: usize) -> Cluster {
    let ctl = Ctl {
        dir: scratch_dir("cluster"),
    };
    let lb_port = reviews::local::free_port().unwrap();
    let started = Instant::now();
    let out = ctl
        .command(&["up", "--replicas", &replicas.to_string()])
        .env("REVIEWS_CLUSTER_LB_PORT", lb_port.to_string())
        .output()
        .unwrap();
    let mut cluster = Cluster {
        ctl,
        lb: SocketAddr::from(([127, 0, 0, 1], lb_port)),
        db_url: String::new(),
    };
    assert!(
        out.status.success(),
        "up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("up prints the status");
    assert_eq!(status["lb"], cluster.lb.to_string());
    let replicas_up = status["replicas"].as_array().unwrap();
    assert_eq!(replicas_up.len(), replicas);
    assert!(replicas_up
        .iter()
        .all(|r| r["ready"] == true && r["pid"].as_u64().is_some()));
    println!(
        "up: {replicas} replicas ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    cluster.db_url = format!(
        "postgres://reviews@{}/reviews",
        status["postgres"]["primary"].as_str().unwrap()
    );
    cluster
}

fn review(summary: &str) -> String {
    json!({
        "product_id": WRITE_PRODUCT, "rating": 5, "summary": summary, "recommend": true,
        "body": "Written through a load balancer while the cluster behind it was changing.",
        "name": "cluster", "email": "cluster@example.com", "photos": [], "characteristics": {}
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// Steady mixed load through the load balancer.

/// A write: its summary, whether the client was told it succeeded, how long it took.
type Write = (String, Result<(), String>, Duration);

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    /// JSON GETs that failed: what went wrong, and how long it took.
    failed_gets: Mutex<Vec<(String, Duration)>>,
    failed_grpc: Mutex<Vec<(String, Duration)>>,
    writes: Mutex<Vec<Write>>,
}

impl Tally {
    fn assert_none_failed(&self) {
        let gets = self.failed_gets.lock().unwrap();
        let grpc = self.failed_grpc.lock().unwrap();
        let writes = self.writes.lock().unwrap();
        let failed_writes: Vec<_> = writes.iter().filter(|w| w.1.is_err()).collect();
        assert!(
            gets.is_empty() && grpc.is_empty() && failed_writes.is_empty(),
            "GET {gets:?}, gRPC {grpc:?}, writes {failed_writes:?}"
        );
    }

    fn failed(&self) -> usize {
        self.failed_gets.lock().unwrap().len()
            + self.failed_grpc.lock().unwrap().len()
            + self
                .writes
                .lock()
                .unwrap()
                .iter()
                .filter(|w| w.1.is_err())
                .count()
    }
}

/// An HTTP/1.1 client whose every request ends within 10 s, answered or not.
fn client() -> reqwest::Client {
    client_from([127, 0, 0, 1])
}

/// The same, from a loopback address of its own: a client of its own for the rate limits
/// (HAProxy tells the replicas its address in `X-Forwarded-For`).
fn client_from(address: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(std::net::IpAddr::from(address))
        .build()
        .unwrap()
}

/// The create limit the cluster runs with: 60 a second once past a burst of 100, so the steady
/// load's writers (each a client of its own, at most 50 a second) never meet it.
const CREATE_LIMIT: &str = "3600/1m:100";
const CREATE_BURST: u64 = 100;
const CREATES_PER_SECOND: f64 = 60.0;

const GET_TASKS: u64 = 4;
const WRITE_TASKS: u64 = 2;

struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_load(lb: SocketAddr, tag: &'static str) -> Load {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let pace = Duration::from_millis(5);
    for t in 0..GET_TASKS {
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut n = t;
            while !stop.load(Ordering::Relaxed) {
                n += 7;
                let product = 1 + n % 40;
                // Cached reads, and pages past the cached ones, which always reach PostgreSQL.
                let url = match n % 3 {
                    0 => format!("http://{lb}/reviews?product_id={product}&sort=newest"),
                    1 => format!("http://{lb}/reviews/meta?product_id={product}"),
                    _ => format!(
                        "http://{lb}/reviews?product_id={product}&page={}",
                        21 + n % 9
                    ),
                };
                let started = Instant::now();
                tally.sent.fetch_add(1, Ordering::Relaxed);
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    other => tally.failed_gets.lock().unwrap().push((
                        format!("{url}: {:?}", other.map(|r| r.status())),
                        started.elapsed(),
                    )),
                }
                tokio::time::sleep(pace).await;
            }
        }));
    }
    {
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{lb}"))
                .unwrap()
                .timeout(Duration::from_secs(10))
                .connect_lazy();
            let mut client = ReviewServiceClient::new(channel);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let started = Instant::now();
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let call = client.list_reviews(reviews::pb::ListReviewsRequest {
                    product_id: 1 + n % 40,
                    ..Default::default()
                });
                if let Err(status) = call.await {
                    tally.failed_grpc.lock().unwrap().push((
                        format!("{:?}: {}", status.code(), status.message()),
                        started.elapsed(),
                    ));
                }
                tokio::time::sleep(pace).await;
            }
        }));
    }
    for t in 0..WRITE_TASKS {
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = client_from([127, 0, 0, 21 + t as u8]);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let summary = format!("{tag}-{t}-{n}");
                let started = Instant::now();
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let resp = http
                    .post(format!("http://{lb}/reviews"))
                    .header("content-type", "application/json")
                    .body(review(&summary))
                    .send()
                    .await;
                let outcome = match resp {
                    Ok(r) if r.status() == 201 => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                tally
                    .writes
                    .lock()
                    .unwrap()
                    .push((summary, outcome, started.elapsed()));
                tokio::time::sleep(pace * 4).await;
            }
        }));
    }
    Load { tally, stop, tasks }
}

impl Load {
    async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.tally
    }
}

fn report(scenario: &str, tally: &Tally, extra: &str) {
    let failed = tally.failed();
    let writes = tally.writes.lock().unwrap();
    println!(
        "{scenario}: sent {}, failed {failed} (GET {}, gRPC {}, writes {} of {}){extra}",
        tally.sent.load(Ordering::Relaxed),
        tally.failed_gets.lock().unwrap().len(),
        tally.failed_grpc.lock().unwrap().len(),
        writes.iter().filter(|w| w.1.is_err()).count(),
        writes.len(),
    );
}

/// Every write the client was told succeeded is in the database exactly once; none is there
/// twice (a failed one may have committed before its replica died, and was reported failed).
async fn writes_applied_at_most_once(cluster: &Cluster, tag: &str, tally: &Tally) {
    let db = common::sql(&cluster.db_url).await;
    let rows = db
        .query(
            "SELECT summary, count(*) FROM reviews WHERE summary LIKE $1 GROUP BY summary",
            &[&format!("{tag}-%")],
        )
        .await
        .unwrap();
    let counts: std::collections::HashMap<String, i64> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (summary, outcome, _) in tally.writes.lock().unwrap().iter() {
        let n = counts.get(summary).copied().unwrap_or(0);
        match outcome {
            Ok(()) => assert_eq!(n, 1, "{summary} succeeded, so it is there once"),
            Err(e) => assert!(n <= 1, "{summary} ({e}) applied {n} times"),
        }
    }
}

async fn ready_everywhere(cluster: &Cluster) {
    let status = cluster.status();
    let replicas = status["replicas"].as_array().unwrap();
    assert!(replicas.iter().all(|r| r["ready"] == true), "{status}");
}

// ---------------------------------------------------------------------------------------------
// The scenarios, in order on one cluster.

async fn a_write_through_one_replica_is_read_through_every_other_and_the_lb(cluster: &Cluster) {
    let replicas = cluster.replicas();
    let http = reqwest::Client::new();
    let meta = |addr: SocketAddr| {
        let http = http.clone();
        async move {
            let url = format!("http://{addr}/reviews/meta?product_id={WRITE_PRODUCT}");
            let v = sandbox::get_text(&http, &url).await;
            let v: Value = serde_json::from_str(&v).unwrap();
            v["ratings"]["5"]
                .as_str()
                .map_or(0, |n| n.parse::<i64>().unwrap())
        }
    };
    // Warm every replica's cache for the product first, so a stale entry would show.
    let mut before = Vec::new();
    for addr in replicas.iter().chain([&cluster.lb]) {
        before.push(meta(*addr).await);
    }
    let created = http
        .post(format!("http://{}/reviews", replicas[0]))
        .header("content-type", "application/json")
        .body(review("read-your-write"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for (i, addr) in replicas.iter().chain([&cluster.lb]).enumerate() {
        let url = format!("http://{addr}/reviews?product_id={WRITE_PRODUCT}&sort=newest&count=1");
        let list = sandbox::get_text(&http, &url).await;
        let list: Value = serde_json::from_str(&list).unwrap();
        assert_eq!(
            list["results"][0]["summary"], "read-your-write",
            "through {addr}"
        );
        assert_eq!(meta(*addr).await, before[i] + 1, "meta through {addr}");
    }
    println!(
        "read-your-write: 1 write through {}, read through {} addresses",
        replicas[0],
        replicas.len()
    );
}

async fn a_killed_replica_fails_no_get_and_loses_no_write(cluster: &Cluster) {
    let load = start_load(cluster.lb, "kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.run(&["kill", "1"]).await;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = load.stop().await;
    report(
        "SIGKILL of replica 1",
        &tally,
        &format!(
            ", load ran {:.1} s past the kill",
            killed.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(*tally.failed_gets.lock().unwrap(), vec![], "no GET fails");
    let failed_writes = tally
        .writes
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.1.is_err())
        .count();
    assert!(
        failed_writes as u64 <= WRITE_TASKS,
        "at most the writes in flight on it"
    );
    assert!(
        tally.failed_grpc.lock().unwrap().len() <= 1,
        "at most the gRPC call in flight on it"
    );
    writes_applied_at_most_once(cluster, "kill", &tally).await;
    cluster.run(&["scale", "3"]).await;
    ready_everywhere(cluster).await;
}

async fn a_rolling_restart_under_load_fails_nothing(cluster: &Cluster) {
    let load = start_load(cluster.lb, "restart");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    cluster.run(&["restart"]).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    report(
        "rolling restart",
        &tally,
        &format!(", restart took {:.1} s", took.as_secs_f64()),
    );
    tally.assert_none_failed();
    writes_applied_at_most_once(cluster, "restart", &tally).await;
}

async fn scaling_1_3_1_under_load_fails_nothing(cluster: &Cluster) {
    cluster.run(&["scale", "1"]).await;
    let load = start_load(cluster.lb, "scale");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.run(&["scale", "3"]).await;
    assert_eq!(cluster.replicas().len(), 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.run(&["scale", "1"]).await;
    assert_eq!(cluster.replicas().len(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    report("scale 1 -> 3 -> 1", &tally, "");
    tally.assert_none_failed();
    writes_applied_at_most_once(cluster, "scale", &tally).await;
    cluster.run(&["scale", "3"]).await;
}

async fn redis_killed_under_load_fails_no_read(cluster: &Cluster) {
    let load = start_load(cluster.lb, "redis");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.run(&["redis", "stop"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.run(&["redis", "start"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    report("Redis killed for 3 s", &tally, "");
    assert_eq!(*tally.failed_gets.lock().unwrap(), vec![], "no read fails");
    assert_eq!(*tally.failed_grpc.lock().unwrap(), vec![], "no read fails");
    writes_applied_at_most_once(cluster, "redis", &tally).await;
}

async fn a_postgres_restart_fails_fast_and_every_replica_recovers_within_5_s(cluster: &Cluster) {
    let load = start_load(cluster.lb, "pg");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.run(&["db", "stop"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.run(&["db", "start"]).await;
    let back = Instant::now();
    // Ready as the replicas say (`/readyz`) and as HAProxy sees them (routed again): `status`.
    wait_until(
        "every replica ready and routed again",
        Duration::from_secs(5),
        || async {
            let ctl = cluster.ctl.clone();
            let status = tokio::task::spawn_blocking(move || ctl.script(&["status"]))
                .await
                .unwrap();
            let status: Value = serde_json::from_str(&status).unwrap();
            status["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["ready"] == true)
        },
    )
    .await;
    let recovered = back.elapsed();
    let during = load.stop().await;
    // Failures only during the outage, each fast and saying the service is unavailable.
    for (what, took) in during.failed_gets.lock().unwrap().iter() {
        assert!(what.contains("503"), "{what}");
        assert!(
            *took <= DB_TIMEOUT + Duration::from_millis(500),
            "{what} took {took:?}"
        );
    }
    for (summary, outcome, took) in during.writes.lock().unwrap().iter() {
        if let Err(e) = outcome {
            assert!(e.contains("503"), "{summary}: {e}");
            assert!(
                *took <= DB_TIMEOUT + Duration::from_millis(500),
                "{summary} took {took:?}"
            );
        }
    }
    for (what, took) in during.failed_grpc.lock().unwrap().iter() {
        assert!(what.starts_with("Unavailable"), "{what}");
        assert!(
            *took <= DB_TIMEOUT + Duration::from_millis(500),
            "{what} took {took:?}"
        );
    }
    let slowest = [
        during.failed_gets.lock().unwrap().iter().map(|f| f.1).max(),
        during.failed_grpc.lock().unwrap().iter().map(|f| f.1).max(),
        during
            .writes
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.1.is_err())
            .map(|w| w.2)
            .max(),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or_default();
    report(
        "PostgreSQL primary stopped for 3 s",
        &during,
        &format!(
            ", slowest failure {:.2} s, every replica ready and routed {:.2} s after PostgreSQL",
            slowest.as_secs_f64(),
            recovered.as_secs_f64()
        ),
    );
    writes_applied_at_most_once(cluster, "pg", &during).await;
    let after = start_load(cluster.lb, "pg-after");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = after.stop().await;
    report("after PostgreSQL is back", &after, "");
    after.assert_none_failed();
}

/// 1,000 creates from one client as fast as it can send them, spread by HAProxy over three
/// replicas: the burst goes through, and past it only what the rate allows, counted once for the
/// cluster in Redis (three replicas limiting alone would let three bursts through).
async fn one_clients_creates_are_limited_once_across_the_replicas(cluster: &Cluster) {
    assert_eq!(cluster.replicas().len(), 3);
    let http = client_from([127, 0, 0, 250]);
    let lb = cluster.lb;
    let started = Instant::now();
    let shed = AtomicU64::new(0);
    // A 503 is the replica's overload refusal (its adaptive in-flight limit shrinks when a busy
    // machine delays its runtime), not an answer: the client retries after Retry-After, as the
    // README asks, and the request ends as 201 or 429.
    let create = |i: usize| {
        let (http, shed) = (&http, &shed);
        async move {
            loop {
                let r = http
                    .post(format!("http://{lb}/reviews"))
                    .header("content-type", "application/json")
                    .body(review(&format!("limited-{i}")))
                    .send()
                    .await
                    .unwrap();
                if r.status() != 503 {
                    return r.status().as_u16();
                }
                shed.fetch_add(1, Ordering::Relaxed);
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        }
    };
    let mut statuses = Vec::new();
    for chunk in (0..1_000).collect::<Vec<_>>().chunks(50) {
        statuses.extend(futures_util::future::join_all(chunk.iter().map(|&i| create(i))).await);
    }
    let elapsed = started.elapsed();
    let created = statuses.iter().filter(|&&s| s == 201).count() as u64;
    let limited = statuses.iter().filter(|&&s| s == 429).count() as u64;
    let most = CREATE_BURST + (elapsed.as_secs_f64() * CREATES_PER_SECOND).ceil() as u64 + 1;
    println!(
        "1,000 creates from one client in {:.2} s over 3 replicas: {created} created, {limited} \
         limited (at most {most} allowed), {} overload refusals retried",
        elapsed.as_secs_f64(),
        shed.into_inner()
    );
    assert_eq!(created + limited, 1_000, "only 201 or 429");
    assert!(
        (CREATE_BURST..=most).contains(&created),
        "{created} created in {elapsed:?}"
    );
    let sql = common::sql(&cluster.db_url).await;
    let stored: i64 = sql
        .query_one(
            "SELECT count(*) FROM reviews WHERE summary LIKE 'limited-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as u64, created, "a limited create wrote nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_serves_through_kills_restarts_scaling_and_outages() {
    let cluster = up(3).await;
    a_write_through_one_replica_is_read_through_every_other_and_the_lb(&cluster).await;
    one_clients_creates_are_limited_once_across_the_replicas(&cluster).await;
    a_killed_replica_fails_no_get_and_loses_no_write(&cluster).await;
    a_rolling_restart_under_load_fails_nothing(&cluster).await;
    scaling_1_3_1_under_load_fails_nothing(&cluster).await;
    redis_killed_under_load_fails_no_read(&cluster).await;
    a_postgres_restart_fails_fast_and_every_replica_recovers_within_5_s(&cluster).await;
    cluster.run(&["down"]).await;
    assert!(!cluster.ctl.dir.exists(), "down removes its folder");
}
