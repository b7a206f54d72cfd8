//! The deployment contract: the binary started exactly as the rendered Kubernetes manifests and
//! the Dockerfile's runtime stage start it, in a network namespace of its own (a pod's), as the
//! user they name, on a read-only root filesystem where they ask for one, from a working
//! directory it cannot write to. The migrate Job must complete; the Deployment's process must
//! pass its probes the way the kubelet runs them, and after the preStop delay a SIGTERM must end
//! it within the grace period with every call in flight answered.
//!
//! Nothing is copied from the manifests: command, arguments, environment (ConfigMaps, Secrets,
//! `$(VAR)` references), ports, probes, user, filesystem, preStop and grace period are read from
//! `kubectl kustomize` output and the Dockerfile. Only the host names of PostgreSQL, its read
//! service and Redis are mapped to this test's throwaway servers.

#[path = "../common/mod.rs"]
mod common;
mod image;
mod kubelet;
mod manifests;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::sandbox::{self, grpc_health, Netns, Proc, SERVING};
use serde_json::{json, Value};

use image::{dockerfile_image, set};
use kubelet::{
    assert_confined, installed_binary, launch, pod_start, probe_until_success, seconds, Start,
};
use manifests::{find, map_hosts, operator_objects, render, Backends};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Calls that are in flight at SIGTERM: each waits on a table lock the test holds until after
/// the signal. Each must be answered, and the process must exit 0 within the grace period.
async fn terminate_with_calls_in_flight(
    server: &mut Proc,
    pod: SocketAddr,
    db_url: &str,
    pre_stop: Duration,
    grace: Duration,
) {
    let terminating = Instant::now();
    let http = reqwest::Client::new();
    let base = format!("http://{pod}");
    let channel = common::channel(pod).await;
    // Warm connections, so the calls below need no new one.
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The kubelet runs the preStop hook, then sends SIGTERM; the calls start just before.
    tokio::time::sleep(pre_stop.saturating_sub(Duration::from_secs(2))).await;
    let mut locker = common::sql(db_url).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(
        "LOCK TABLE reviews, product_stats, characteristics IN ACCESS EXCLUSIVE MODE",
    )
    .await
    .unwrap();
    let mut list_client = reviews::pb::review_service_client::ReviewServiceClient::new(channel);
    let grpc_list = tokio::spawn(async move {
        list_client
            .list_reviews(reviews::pb::ListReviewsRequest {
                product_id: 7,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().results.len())
    });
    let meta = tokio::spawn(http.get(format!("{base}/reviews/meta?product_id=8")).send());
    let create = tokio::spawn(
        http.post(format!("{base}/reviews"))
            .header("content-type", "application/json")
            .body(
                json!({"product_id": 8, "rating": 4, "summary": "Held", "body": "Sent before the \
                 pod was told to stop, and answered before it did.", "recommend": true,
                 "name": "kubelet", "email": "k@example.com", "photos": [], "characteristics": {}})
                .to_string(),
            )
            .send(),
    );
    let watcher = common::sql(db_url).await;
    sandbox::wait_until(
        "three calls waiting on the lock",
        Duration::from_secs(3),
        || async {
            let row = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) >= 3
        },
    )
    .await;
    tokio::time::sleep(pre_stop.saturating_sub(terminating.elapsed())).await;
    server.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.try_status().is_none(), "exited with calls in flight");
    lock.commit().await.unwrap();

    assert_eq!(grpc_list.await.unwrap().expect("in-flight gRPC call"), 0);
    let meta = meta.await.unwrap().expect("in-flight JSON read");
    assert_eq!(meta.status(), 200);
    let created = create.await.unwrap().expect("in-flight JSON write");
    assert_eq!(created.status(), 201);
    let left = grace.saturating_sub(terminating.elapsed());
    let status = server.wait_for(left).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "did not exit cleanly within the grace period\n{}",
        server.transcript()
    );
    let rows = watcher
        .query_one("SELECT count(*) FROM reviews WHERE product_id = 8", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(rows, 1, "the in-flight create committed");
}

/// Every stderr line is JSON when the environment asks for it, and the last says it stopped.
fn check_logs(server: &Proc, env: &[(String, String)]) {
    let lines = server.stderr();
    if env
        .iter()
        .any(|(k, v)| k == "REVIEWS_LOG_FORMAT" && v == "json")
    {
        for line in &lines {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        }
    }
    assert!(
        lines.last().is_some_and(|l| l.contains("server stopped")),
        "{}",
        server.transcript()
    );
}

async fn deploys_as_rendered(overlay: &str) {
    let image = dockerfile_image();
    let objects = render(overlay);
    let made = operator_objects(&objects);
    let all: Vec<Value> = objects.iter().chain(&made).cloned().collect();
    let deployment = find(&objects, "Deployment", "reviews").expect("no reviews Deployment");
    let job = find(&objects, "Job", "reviews-migrate").expect("no reviews-migrate Job");
    let ns = deployment["metadata"]["namespace"].as_str().unwrap();

    let netns = Netns::new(true);
    let backends = Backends::start(&netns, &format!("deploy-{overlay}")).await;
    let bin = installed_binary(&backends.dir);

    // The Job first, as the README's steps say.
    let job_pod = &job["spec"]["template"]["spec"];
    let mut migrate = pod_start(&all, job_pod, &job_pod["containers"][0], &image);
    let databases = map_hosts(&mut migrate.env, &all, ns, &backends);
    for db in databases.iter().collect::<std::collections::BTreeSet<_>>() {
        reviews::local::create_database(&backends.admin_url(), db, None)
            .await
            .unwrap();
    }
    assert_confined(&migrate, &netns).await;
    let mut run = launch(&migrate, &image, &netns, &bin);
    assert_eq!(
        run.finish(Duration::from_secs(120)).await,
        0,
        "the Job failed\n{}",
        run.transcript()
    );
    assert!(
        run.stdout().iter().any(|l| l.starts_with("applied ")),
        "{}",
        run.transcript()
    );

    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mut serve = pod_start(&all, pod, container, &image);
    let databases = map_hosts(&mut serve.env, &all, ns, &backends);
    assert_eq!(
        serve
            .env
            .iter()
            .filter(|(k, _)| k.ends_with("_URL"))
            .count(),
        serve
            .env
            .iter()
            .filter(|(_, v)| v.contains(&netns.host.to_string()))
            .count(),
        "every URL reaches a test server: {:?}",
        serve.env.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    assert_confined(&serve, &netns).await;
    let mut server = launch(&serve, &image, &netns, &bin);
    for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
        probe_until_success(kind, container, netns.inside, &mut server).await;
    }
    let port = container["ports"][0]["containerPort"].as_u64().unwrap() as u16;
    let pod_addr = SocketAddr::from((netns.inside, port));
    let body = reqwest::get(format!("http://{pod_addr}/reviews/meta?product_id=1"))
        .await
        .unwrap();
    assert_eq!(body.status(), 200);

    let lifecycle = &container["lifecycle"]["preStop"];
    let pre_stop = match (
        lifecycle.get("sleep"),
        lifecycle["exec"]["command"].as_array(),
    ) {
        (Some(sleep), _) => seconds(sleep, "seconds", 0),
        (None, Some(cmd)) if cmd[0] == "sleep" => {
            Duration::from_secs(cmd[1].as_str().unwrap().parse().unwrap())
        }
        (None, None) => Duration::ZERO,
        other => panic!("unsupported preStop {other:?}"),
    };
    let grace = seconds(pod, "terminationGracePeriodSeconds", 30);
    let db_url = format!(
        "postgres://reviews@127.0.0.1:{}/{}",
        backends.pg.port(),
        databases[0]
    );
    terminate_with_calls_in_flight(&mut server, pod_addr, &db_url, pre_stop, grace).await;
    check_logs(&server, &serve.env);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dev_overlay_migrates_serves_passes_its_probes_and_drains() {
    if !sandbox::skip_without_root("the dev overlay's contract") {
        deploys_as_rendered("dev").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_prod_overlay_migrates_serves_passes_its_probes_and_drains() {
    if !sandbox::skip_without_root("the prod overlay's contract") {
        deploys_as_rendered("prod").await;
    }
}

/// `docker run -e DATABASE_URL=... -e REDIS_URL=... IMAGE migrate`, then `docker run ... IMAGE`
/// and `docker stop` (SIGTERM, then SIGKILL after 10 s).
#[tokio::test(flavor = "multi_thread")]
async fn the_image_migrates_serves_on_its_exposed_port_and_stops_on_sigterm() {
    if sandbox::skip_without_root("the image's contract") {
        return;
    }
    let image = dockerfile_image();
    assert_ne!(image.user.0, 0, "the image runs as root");
    let netns = Netns::new(true);
    let backends = Backends::start(&netns, "deploy-image").await;
    let bin = installed_binary(&backends.dir);
    reviews::local::create_database(&backends.admin_url(), "reviews", None)
        .await
        .unwrap();
    let mut env = image.env.clone();
    set(
        &mut env,
        "DATABASE_URL",
        &format!("postgres://reviews@{}/reviews", backends.pg),
    );
    set(
        &mut env,
        "REDIS_URL",
        &format!("redis://{}/", backends.redis),
    );
    let start = |argv: Vec<String>| Start {
        argv,
        env: env.clone(),
        user: image.user,
        read_only_root: false,
        workdir: image.workdir.clone(),
    };
    let migrate = start([image.entrypoint.clone(), vec!["migrate".into()]].concat());
    assert_confined(&migrate, &netns).await;
    let mut run = launch(&migrate, &image, &netns, &bin);
    assert_eq!(
        run.finish(Duration::from_secs(120)).await,
        0,
        "{}",
        run.transcript()
    );

    let serve = start([image.entrypoint.clone(), image.cmd.clone()].concat());
    let mut server = launch(&serve, &image, &netns, &bin);
    let port = *image.exposed.first().expect("the image exposes no port");
    let addr = SocketAddr::from((netns.inside, port));
    sandbox::wait_until(
        "the exposed port serves",
        Duration::from_secs(30),
        || async { grpc_health(addr, "reviews.v1.ReviewService").await == Ok(SERVING) },
    )
    .await;
    for path in ["/healthz", "/readyz", "/reviews/meta?product_id=1"] {
        let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let db_url = format!(
        "postgres://reviews@127.0.0.1:{}/reviews",
        backends.pg.port()
    );
    terminate_with_calls_in_flight(
        &mut server,
        addr,
        &db_url,
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    check_logs(&server, &serve.env);
}
