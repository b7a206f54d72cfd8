//! Parsing every subcommand, as flags and as the environment, and the usage errors.

use std::ffi::OsString;
use std::sync::Mutex;
use std::time::Duration;

use clap::CommandFactory;

use super::usage::bad_value_message;
use super::*;
use crate::db::DbConfig;

/// Tests that set environment variables take turns: clap reads the process's environment.
static ENV: Mutex<()> = Mutex::new(());

const SETTINGS: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_READ_URL",
    "REDIS_URL",
    "REVIEWS_LISTEN",
    "REVIEWS_DB_POOL_SIZE",
    "REVIEWS_DB_READ_LANES",
    "REVIEWS_DB_CONNECT_TIMEOUT",
    "REVIEWS_DB_TIMEOUT",
    "REVIEWS_CACHE_TTL",
    "REVIEWS_REDIS_CONNECTIONS",
    "REVIEWS_CACHE_PREFIX",
    "REVIEWS_REDIS_TIMEOUT",
    "REVIEWS_HEALTH_INTERVAL",
    "REVIEWS_CORS_ORIGINS",
    "REVIEWS_MAX_CONNECTION_AGE",
    "REVIEWS_MAX_BODY_BYTES",
    "REVIEWS_MAX_IN_FLIGHT",
    "REVIEWS_QUEUE_DELAY_TARGET",
    "REVIEWS_VOTER_KEY",
    "REVIEWS_REJECTS",
    "REVIEWS_DEV_DATA",
];

/// Parses `args` with exactly the settings in `env` set (and every other one unset).
fn parse_with(env: &[(&str, &str)], args: &[&str]) -> Result<Cli, clap::Error> {
    let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
    for name in SETTINGS {
        std::env::remove_var(name);
    }
    for (name, value) in env {
        std::env::set_var(name, value);
    }
    let parsed = Cli::try_parse_from(std::iter::once("reviews").chain(args.iter().copied()));
    for (name, _) in env {
        std::env::remove_var(name);
    }
    parsed
}

fn serve_config(cli: Cli) -> ServeConfig {
    match cli.command {
        Command::Serve(cfg) => cfg,
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn the_command_line_is_well_formed() {
    // Panics on clashing argument ids, as two flattened `pool_size` fields once did.
    Cli::command().debug_assert();
}

#[test]
fn every_subcommand_parses_from_flags_only() {
    let serve = serve_config(
        parse_with(
            &[],
            &[
                "serve",
                "--listen=0.0.0.0:6000",
                "--database-url=postgres://u@db/reviews",
                "--database-read-url=postgres://u@db-ro/reviews",
                "--db-pool-size=3",
                "--db-connect-timeout=1s",
                "--db-timeout=4s",
                "--redis-url=redis://cache:6379/",
                "--redis-connections=5",
                "--redis-timeout=50ms",
                "--cache-ttl=30s",
                "--cache-prefix=t",
                "--health-interval=1s",
                "--cors-origins=https://a.example,https://b.example",
                "--max-connection-age=5m",
                "--max-body-bytes=1000",
            ],
        )
        .unwrap(),
    );
    assert_eq!(serve.listen.to_string(), "0.0.0.0:6000");
    assert_eq!(serve.db.pool_size, 3);
    assert_eq!(serve.cache.connections, 5);
    assert_eq!(serve.db.query_timeout, Duration::from_secs(4));
    assert_eq!(serve.cache.timeout, Duration::from_millis(50));
    assert_eq!(serve.server.cors_origins.len(), 2);
    let cache = serve.cache.config().unwrap();
    assert_eq!((cache.connections, cache.prefix.as_str()), (5, "t"));
    // The on/off switches, as the README writes them (a separate value) and with `=`.
    for switches in [
        &["--rate-limit", "off", "--one-review-per-email", "off"][..],
        &["--rate-limit=off", "--one-review-per-email=off"],
    ] {
        let args: Vec<&str> = ["serve", "--database-url=postgres://u@db/r"]
            .into_iter()
            .chain(switches.iter().copied())
            .collect();
        let options = serve_config(parse_with(&[], &args).unwrap())
            .server
            .options();
        assert!(
            !options.limits.enabled && !options.one_review_per_email,
            "{switches:?}"
        );
    }

    for args in [
        &["migrate", "--database-url", "postgres://u@db/reviews"][..],
        &[
            "load",
            "data",
            "--database-url",
            "postgres://u@db/r",
            "--rejects",
            "x",
        ],
        &[
            "load",
            "data",
            "--database-url",
            "postgres://u@db/r",
            "--redis-url",
            "redis://c/",
        ],
        &[
            "gen-data",
            "--out",
            "x",
            "--products",
            "10",
            "--seed",
            "2",
            "--dirty-rate",
            "0.1",
        ],
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "d",
            "--no-cache",
            "--cache-ttl",
            "5s",
        ],
    ] {
        parse_with(&[], args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
}

#[test]
fn every_subcommand_parses_from_the_environment_only() {
    let env = [
        ("DATABASE_URL", "postgres://u:pw@db:5432/reviews"),
        ("DATABASE_READ_URL", "postgres://u:pw@db-ro:5432/reviews"),
        ("REDIS_URL", "redis://redis:6379/"),
        ("REVIEWS_LISTEN", "0.0.0.0:50051"),
        ("REVIEWS_DB_POOL_SIZE", "8"),
        ("REVIEWS_DB_READ_LANES", "3"),
        ("REVIEWS_REDIS_CONNECTIONS", "4"),
        ("REVIEWS_DB_TIMEOUT", "5s"),
        ("REVIEWS_CACHE_TTL", "60s"),
        ("REVIEWS_REDIS_TIMEOUT", "100ms"),
        ("REVIEWS_CORS_ORIGINS", "*"),
        ("REVIEWS_MAX_CONNECTION_AGE", "5m"),
        ("REVIEWS_HEADER_TIMEOUT", "5s"),
        ("REVIEWS_BODY_TIMEOUT", "20s"),
        ("REVIEWS_IDLE_TIMEOUT", "2m"),
        ("REVIEWS_HTTP2_KEEPALIVE_INTERVAL", "10s"),
        ("REVIEWS_HTTP2_KEEPALIVE_TIMEOUT", "5s"),
        ("REVIEWS_MAX_CONCURRENT_STREAMS", "100"),
        ("REVIEWS_MAX_CONNECTIONS", "500"),
        ("REVIEWS_DRAIN_DELAY", "0s"),
        ("REVIEWS_QUEUE_DELAY_TARGET", "3ms"),
        ("REVIEWS_RATE_LIMIT", "off"),
        ("REVIEWS_CREATE_LIMIT", "5/1m:2"),
        ("REVIEWS_HELPFUL_LIMIT", "100/1h:50"),
        ("REVIEWS_REPORT_LIMIT", "3/1h:1"),
        ("REVIEWS_CLIENT_HEADER", "X-Forwarded-For"),
        ("REVIEWS_REJECTS", "/tmp/rejects"),
    ];
    let serve = serve_config(parse_with(&env, &["serve"]).unwrap());
    assert_eq!((serve.db.pool_size, serve.cache.connections), (8, 4));
    assert_eq!((serve.db.read_lanes, serve.db.lanes()), (3, 3));
    let c = serve.server.options().connections;
    assert_eq!(c.max_age, Some(Duration::from_secs(300)));
    assert_eq!(
        (c.header_timeout, c.body_timeout, c.idle_timeout),
        (
            Duration::from_secs(5),
            Duration::from_secs(20),
            Duration::from_secs(120)
        )
    );
    assert_eq!(
        (c.keepalive_interval, c.keepalive_timeout),
        (Duration::from_secs(10), Duration::from_secs(5))
    );
    assert_eq!((c.max_streams, c.max_connections), (100, 500));
    assert_eq!(c.drain_delay, Duration::ZERO);
    assert_eq!(
        serve.server.options().http.queue_delay_target,
        Some(Duration::from_millis(3))
    );
    let l = serve.server.options().limits;
    assert!(!l.enabled);
    assert_eq!(
        [l.create, l.helpful, l.report].map(|r| r.to_string()),
        ["5/1m:2", "100/1h:50", "3/1h:1"]
    );
    assert_eq!(l.client_header.unwrap().as_str(), "x-forwarded-for");
    assert!(serve.db.read_url.is_some() && serve.cache.redis_url.is_some());
    for args in [
        &["migrate"][..],
        &["load", "data"],
        &["gen-data", "--out", "x"],
        &["dev"],
    ] {
        parse_with(&env, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
}

#[test]
fn a_bad_value_names_the_variable_it_came_from_in_one_line() {
    let env = [
        ("DATABASE_URL", "postgres://u@db/r"),
        ("REVIEWS_CACHE_TTL", "soon"),
    ];
    let err = parse_with(&env, &["serve"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let args: Vec<OsString> = vec!["reviews".into(), "serve".into()];
    assert_eq!(
        bad_value_message(&err, &args).unwrap(),
        "error: invalid value 'soon' for REVIEWS_CACHE_TTL (--cache-ttl): \
         invalid duration \"soon\": expected e.g. 500ms, 2s or 1m"
    );

    let args = [
        "serve",
        "--database-url",
        "postgres://u@db/r",
        "--db-pool-size",
        "0",
    ];
    let err = parse_with(&[], &args).unwrap_err();
    let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
    assert_eq!(
        bad_value_message(&err, &argv).unwrap(),
        "error: invalid value '0' for --db-pool-size: 0 is not in 1..=10000"
    );
}

#[test]
fn a_bad_secret_is_named_but_never_shown() {
    let env = [("DATABASE_URL", "postgres://u:hunter2@db:port/r")];
    let err = parse_with(&env, &["migrate"]).unwrap_err();
    let line = bad_value_message(&err, &["reviews".into(), "migrate".into()]).unwrap();
    assert!(line.starts_with("error: invalid value for DATABASE_URL (--database-url): "));
    assert!(!line.contains("hunter2"), "{line}");

    let env = [
        ("DATABASE_URL", "postgres://u@db/r"),
        ("REVIEWS_VOTER_KEY", "hunter2"),
    ];
    let err = parse_with(&env, &["serve"]).unwrap_err();
    let line = bad_value_message(&err, &["reviews".into(), "serve".into()]).unwrap();
    assert_eq!(
        line,
        "error: invalid value for REVIEWS_VOTER_KEY (--voter-key): \
         must be at least 16 bytes (e.g. openssl rand -hex 32)"
    );
}

#[test]
fn a_missing_setting_names_its_flag_and_variable() {
    let err = parse_with(&[], &["serve"]).unwrap_err();
    assert_eq!(
        bad_value_message(&err, &["reviews".into(), "serve".into()]).unwrap(),
        "error: missing --database-url (or DATABASE_URL)"
    );
}

#[test]
fn the_command_lines_defaults_are_the_defaults_in_code() {
    let args = [
        "serve",
        "--database-url",
        "postgres://u@db/r",
        "--redis-url",
        "redis://c/",
    ];
    let serve = serve_config(parse_with(&[], &args).unwrap());
    let db = DbConfig::new("postgres://u@db/r");
    assert_eq!(
        (
            serve.db.pool_size,
            serve.db.connect_timeout,
            serve.db.query_timeout
        ),
        (db.pool_size, db.connect_timeout, db.query_timeout)
    );
    let (parsed, code) = (
        serve.cache.config().unwrap(),
        CacheConfig::new("redis://c/"),
    );
    assert_eq!(
        (
            &parsed.prefix,
            parsed.ttl,
            parsed.connections,
            parsed.timeout
        ),
        (&code.prefix, code.ttl, code.connections, code.timeout)
    );
    let options = crate::server::ServerOptions::default();
    assert_eq!(
        serve.server.options().health_interval,
        options.health_interval
    );
    assert_eq!(serve.server.options().http.max_body, options.http.max_body);
    assert_eq!(
        serve.server.options().http.cors_origins,
        options.http.cors_origins
    );
    assert_eq!(serve.server.options().connections, options.connections);
    assert_eq!(serve.server.options().limits, options.limits);
}
