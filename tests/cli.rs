//! Every command the README shows, run for real on the built binary (`CARGO_BIN_EXE_reviews`):
//! the exit codes and the lines users are told to expect.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::sandbox::{self, answers_json_grpc_and_health, served_addr, Confinement, Netns, Proc};
use common::{cluster, fresh_db, scratch_dir, SAMPLE_TEMPLATE};

/// The data set's four files, in the order `load` reads them.
const FILES: [&str; 4] = [
    "characteristics.csv",
    "reviews.csv",
    "reviews_photos.csv",
    "characteristic_reviews.csv",
];

fn reviews(args: &[&str]) -> Command {
    let mut cmd = Command::new(sandbox::BIN);
    cmd.args(args);
    cmd
}

/// A new database with nothing in it, not even the migrations.
async fn empty_database() -> String {
    let name = format!("cli_{}_{}", std::process::id(), next_id());
    let cluster = cluster();
    reviews::local::create_database(&cluster.url("postgres"), &name, None)
        .await
        .unwrap();
    cluster.url(&name)
}

fn next_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn count_reviews(url: &str) -> i64 {
    let db = common::sql(url).await;
    let row = db
        .query_one("SELECT count(*) FROM reviews", &[])
        .await
        .unwrap();
    row.get(0)
}

/// The embedded migrations, as `migrate` names them: the folder names' digits.
fn migration_versions() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut versions: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .map(|n| n.split('_').next().unwrap().replace('-', ""))
        .collect();
    versions.sort();
    versions
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_applies_every_migration_once_and_then_nothing() {
    let url = empty_database().await;
    let mut first = Proc::spawn(&mut reviews(&["migrate", "--database-url", &url]));
    assert_eq!(
        first.finish(Duration::from_secs(60)).await,
        0,
        "{}",
        first.transcript()
    );
    let versions = migration_versions();
    assert_eq!(
        first.stdout(),
        [format!(
            "applied {} migration(s): {}",
            versions.len(),
            versions.join(", ")
        )]
    );

    let mut second = Proc::spawn(reviews(&["migrate"]).env("DATABASE_URL", &url));
    assert_eq!(
        second.finish(Duration::from_secs(60)).await,
        0,
        "{}",
        second.transcript()
    );
    assert_eq!(
        second.stdout(),
        ["no pending migrations: the database is up to date"]
    );
    assert_eq!(count_reviews(&url).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_setting_is_a_one_line_usage_error() {
    let mut ttl = Proc::spawn(
        reviews(&["serve"])
            .env("DATABASE_URL", "postgres://reviews@127.0.0.1:9/reviews")
            .env("REVIEWS_CACHE_TTL", "soon"),
    );
    assert_eq!(ttl.finish(Duration::from_secs(10)).await, 2);
    assert_eq!(
        ttl.stderr(),
        [
            "error: invalid value 'soon' for REVIEWS_CACHE_TTL (--cache-ttl): \
          invalid duration \"soon\": expected e.g. 500ms, 2s or 1m"
        ]
    );
    let mut missing = Proc::spawn(reviews(&["serve"]).env_remove("DATABASE_URL"));
    assert_eq!(missing.finish(Duration::from_secs(10)).await, 2);
    assert_eq!(
        missing.stderr(),
        ["error: missing --database-url (or DATABASE_URL)"]
    );
}

/// The numbers of the summary line of `gen-data`.
fn generated_counts(line: &str) -> Vec<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[0], "wrote", "{line}");
    words.iter().filter_map(|w| w.parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn gen_data_writes_a_set_that_load_loads_with_progress_and_a_summary() {
    let dir = scratch_dir(&format!("gen-{}", next_id()));
    let data = dir.join("data");
    let out = data.to_str().unwrap();
    let mut gen = Proc::spawn(&mut reviews(&[
        "gen-data",
        "--out",
        out,
        "--products",
        "400",
        "--dirty-rate",
        "0.003",
    ]));
    assert_eq!(
        gen.finish(Duration::from_secs(60)).await,
        0,
        "{}",
        gen.transcript()
    );
    let [line] = &gen.stdout()[..] else {
        panic!("one summary line expected\n{}", gen.transcript());
    };
    let counts = generated_counts(line);
    assert_eq!(counts.len(), 5, "{line}");
    assert!(counts[0] > 400 && counts[4] > 0, "{line}");
    for file in ["reviews.csv", "reviews_photos.csv", "characteristics.csv"] {
        assert!(data.join(file).is_file(), "{file}");
    }
    let dirty_rows = std::fs::read_to_string(data.join("dirty.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert_eq!(dirty_rows as u64, counts[4]);

    let url = empty_database().await;
    let mut migrate = Proc::spawn(&mut reviews(&["migrate", "--database-url", &url]));
    assert_eq!(migrate.finish(Duration::from_secs(60)).await, 0);
    let rejects = dir.join("rejects");
    let mut load = Proc::spawn(
        reviews(&["load", out, "--rejects", rejects.to_str().unwrap()]).env("DATABASE_URL", &url),
    );
    assert_eq!(
        load.finish(Duration::from_secs(120)).await,
        0,
        "{}",
        load.transcript()
    );

    // Progress (stderr is no terminal here, so log lines): each file begun and read.
    let log = load.stderr();
    for file in FILES {
        for event in ["reading file", "file read"] {
            assert!(
                log.iter().any(|l| l.contains(event) && l.contains(file)),
                "no {event:?} line for {file}\n{}",
                load.transcript()
            );
        }
    }
    // The summary: a row per file, the phases, the total, the peak memory, the rejects.
    let stdout = load.stdout();
    assert!(stdout[0]
        .split_whitespace()
        .eq(["file", "loaded", "rejected", "seconds"]));
    let row = |name: &str| -> Vec<u64> {
        let line = stdout
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row\n{}", stdout.join("\n")));
        line.split_whitespace()
            .skip(1)
            .map(|n| n.parse::<f64>().unwrap() as u64)
            .collect()
    };
    let (mut loaded, mut rejected) = (0, 0);
    for file in FILES {
        let r = row(file);
        loaded += r[0];
        rejected += r[1];
        let set_aside = std::fs::read_to_string(rejects.join(format!("{file}.rejects")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{file}:")))
            .count() as u64;
        assert_eq!(set_aside, r[1], "rows set aside in {file}.rejects");
    }
    assert_eq!(&row("total")[..2], &[loaded, rejected]);
    assert!(rejected >= counts[4], "every dirty row is set aside");
    assert!(stdout.iter().any(|l| l.starts_with("peak memory (RSS): ")));
    assert!(stdout.contains(&format!("rows set aside are in {}", rejects.display())));

    assert_eq!(count_reviews(&url).await as u64, row("reviews.csv")[0]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_configured_by_flags_answers_json_grpc_and_health() {
    let db = fresh_db(SAMPLE_TEMPLATE).await;
    let prefix = format!("cli-flags-{}", std::process::id());
    let mut server = Proc::spawn(&mut sandbox::serve(
        &db,
        &prefix,
        &["--redis-connections", "4"],
    ));
    let line = server
        .stderr_line("serving gRPC", Duration::from_secs(30))
        .await;
    assert!(server
        .stderr()
        .iter()
        .any(|l| l.contains("caching reads in Redis")));
    answers_json_grpc_and_health(served_addr(&line)).await;
    sandbox::stop(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_configured_by_the_environment_only_answers_json_grpc_and_health() {
    let db = fresh_db(SAMPLE_TEMPLATE).await;
    let mut server = Proc::spawn(
        reviews(&["serve"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("DATABASE_URL", &db)
            .env("REDIS_URL", &cluster().redis_url)
            .env(
                "REVIEWS_CACHE_PREFIX",
                format!("cli-env-{}", std::process::id()),
            )
            .env("REVIEWS_LISTEN", "127.0.0.1:0")
            .env("REVIEWS_DB_POOL_SIZE", "4")
            .env("REVIEWS_REDIS_CONNECTIONS", "4")
            .env("REVIEWS_LOG_FORMAT", "json"),
    );
    let line = server
        .stderr_line("serving gRPC", Duration::from_secs(30))
        .await;
    let addr = served_addr(&line);
    answers_json_grpc_and_health(addr).await;
    create_with_request_ids(addr).await;
    // The log lines reach the pipe a moment after the replies reach the client.
    for id in ["cli-json-1", "cli-grpc-1"] {
        server
            .stderr_line(&format!("\"request_id\":\"{id}\""), Duration::from_secs(10))
            .await;
    }
    let logged = server
        .stderr()
        .iter()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
        })
        .collect::<Vec<_>>();
    for id in ["cli-json-1", "cli-grpc-1"] {
        assert!(
            logged
                .iter()
                .any(|l| l["fields"]["message"] == "review created"
                    && l["fields"]["request_id"] == id),
            "the caller's x-request-id {id} reaches the core's log line: {logged:#?}"
        );
    }
    sandbox::stop(server).await;
}

/// Creates a review through each face, each call carrying its own `x-request-id`.
async fn create_with_request_ids(addr: std::net::SocketAddr) {
    let review = serde_json::json!({
        "product_id": 1, "rating": 4, "summary": "ok", "recommend": true,
        "body": "a body long enough to be a valid review, fifty chars at least",
        "name": "cli", "email": "cli@example.com",
        "characteristics": {"1": 3, "2": 3, "3": 3, "4": 3}
    });
    let created = sandbox::post_review(addr, &[("x-request-id", "cli-json-1")], &review).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let mut request = tonic::Request::new(reviews::pb::CreateReviewRequest {
        product_id: 1,
        rating: 5,
        summary: "ok".into(),
        body: "a body long enough to be a valid review, fifty chars at least".into(),
        recommend: true,
        name: "cli".into(),
        email: "cli-grpc@example.com".into(),
        photos: vec![],
        characteristics: [(1, 3), (2, 3), (3, 3), (4, 3)].into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "cli-grpc-1".parse().unwrap());
    reviews::pb::review_service_client::ReviewServiceClient::new(common::channel(addr).await)
        .create_review(request)
        .await
        .unwrap();
}

/// The processes whose process group is `pgid`.
fn process_group(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command name in parentheses: state, ppid, pgrp.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
        })
        .collect()
}

/// The quick start, as the README runs it: `reviews dev` from the repository, on its default
/// address (in a network namespace of its own, so a `reviews dev` the user already runs on
/// 127.0.0.1:50051 does not collide), stopped with Ctrl-C (SIGINT to its process group, as a
/// terminal sends it).
#[tokio::test(flavor = "multi_thread")]
async fn dev_comes_up_answers_and_on_ctrl_c_stops_everything_and_cleans_up() {
    if sandbox::skip_without_root("dev_comes_up_answers_and_on_ctrl_c_stops_everything") {
        return;
    }
    let netns = Netns::new(false);
    let tmp = scratch_dir(&format!("dev-{}", next_id()));
    let mut cmd = reviews(&["dev"]);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TMPDIR", &tmp)
        .env_remove("REDIS_URL")
        .env_remove("REVIEWS_LISTEN");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    Confinement {
        netns: Some(&netns),
        ..Default::default()
    }
    .apply(&mut cmd);
    let mut dev = Proc::spawn(&mut cmd);
    let line = dev
        .stderr_line("serving gRPC", Duration::from_secs(180))
        .await;
    let addr = served_addr(&line);
    assert_eq!(addr.to_string(), "127.0.0.1:50051", "the README's address");
    for said in ["Redis started", "PostgreSQL started", "sample data loaded"] {
        assert!(
            dev.stderr().iter().any(|l| l.contains(said)),
            "{said}\n{}",
            dev.transcript()
        );
    }
    netns.run(move || answers_json_grpc_and_health(addr)).await;
    let folders: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert_eq!(folders.len(), 1, "one folder for the throwaway servers");
    assert!(folders[0]
        .file_name()
        .to_string_lossy()
        .starts_with("reviews-dev-"));
    let started = process_group(dev.pid());
    assert!(started.len() >= 3, "dev, PostgreSQL and Redis: {started:?}");

    unsafe { libc::kill(-dev.pid(), libc::SIGINT) };
    assert_eq!(
        dev.finish(Duration::from_secs(30)).await,
        0,
        "{}",
        dev.transcript()
    );
    sandbox::wait_until(
        "every process dev started has exited",
        Duration::from_secs(10),
        || async { process_group(dev.pid()).is_empty() },
    )
    .await;
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "its folder is removed"
    );
    let _ = std::fs::remove_dir(&tmp);
}
