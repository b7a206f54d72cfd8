//! The command line: `migrate`, `load`, `serve`, and `dev` (the quick start).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};

use crate::cache::{Cache, CacheConfig, Hooks};
use crate::config::{parse_database_url, parse_redis_url, DbConfig, Secret, ServeConfig};
use crate::metrics::Metrics;
use crate::{db, dev, etl, server};

#[derive(Parser, Debug)]
#[command(name = "reviews", version, about = "Ratings & Reviews service")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the pending database migrations (embedded in the binary).
    Migrate {
        #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true, value_parser = parse_database_url)]
        database_url: Secret,
    },
    /// Replace the data set of a migrated database with the four CSV files in a folder, in one
    /// transaction (the service keeps serving the old data until it commits).
    Load {
        /// Folder holding reviews.csv, reviews_photos.csv, characteristics.csv and
        /// characteristic_reviews.csv.
        dir: PathBuf,
        #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true, value_parser = parse_database_url)]
        database_url: Secret,
        /// Folder for the rows set aside: `<file>.rejects`, each row as `file:line: reason`
        /// followed by the row.
        #[arg(long, env = "REVIEWS_REJECTS", default_value = "rejects")]
        rejects: PathBuf,
        /// The cache's Redis, whose entries are hidden once the new data is in.
        #[arg(long = "redis-url", env = "REDIS_URL", hide_env_values = true, value_parser = parse_redis_url)]
        redis_url: Option<Secret>,
        #[arg(
            long = "cache-prefix",
            env = "REVIEWS_CACHE_PREFIX",
            default_value = "rv"
        )]
        cache_prefix: String,
    },
    /// Write a deterministic data set of the real one's shape and size (1,000,011 products).
    GenData {
        /// Folder to write the four files (and dirty.csv, the list of dirty rows) into.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = etl::generate::FULL_PRODUCTS)]
        products: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Chance, per clean row, of a dirty row of some kind after it.
        #[arg(long, default_value_t = 0.0)]
        dirty_rate: f64,
    },
    /// Serve the gRPC API.
    Serve(ServeConfig),
    /// Quick start: a throwaway local PostgreSQL with the sample data, and the server on it.
    Dev(dev::DevConfig),
}

impl Cli {
    /// Reads the command line and the environment. A bad value ends the process with exit
    /// code 2 and one line naming where it came from: the environment variable when it was not
    /// given as a flag (a Deployment sets variables, not flags), and never the value of a secret.
    pub fn parse_or_exit() -> Self {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        Self::try_parse_from(&args).unwrap_or_else(|err| match bad_value_message(&err, &args) {
            Some(line) => {
                eprintln!("{line}");
                std::process::exit(2);
            }
            None => err.exit(),
        })
    }
}

/// For a value that failed its parser, `error: invalid value 'v' for REVIEWS_X (--x): why`; for
/// a missing setting, the flag and the variable that can give it.
pub fn bad_value_message(err: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    let cmd = Cli::command();
    let find = |shown: &str| {
        let long = shown
            .strip_prefix("--")?
            .split([' ', '='])
            .next()?
            .to_owned();
        let arg = cmd
            .get_subcommands()
            .flat_map(|c| c.get_arguments())
            .find(|a| a.get_long() == Some(long.as_str()))?;
        Some((format!("--{long}"), arg))
    };
    if err.kind() == ErrorKind::MissingRequiredArgument {
        let Some(ContextValue::Strings(missing)) = err.get(ContextKind::InvalidArg) else {
            return None;
        };
        let named: Vec<String> = missing
            .iter()
            .map(
                |shown| match find(shown).and_then(|(f, a)| Some((f, a.get_env()?))) {
                    Some((flag, env)) => format!("{flag} (or {})", env.to_string_lossy()),
                    None => shown.clone(),
                },
            )
            .collect();
        return Some(format!("error: missing {}", named.join(", ")));
    }
    if err.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let Some(ContextValue::String(shown)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let (flag, arg) = find(shown)?;
    let given_as_flag = args.iter().filter_map(|a| a.to_str()).any(|a| {
        a == flag
            || a.strip_prefix(flag.as_str())
                .is_some_and(|rest| rest.starts_with('='))
    });
    let source = match arg.get_env() {
        Some(env) if !given_as_flag => format!("{} ({flag})", env.to_string_lossy()),
        _ => flag,
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) if !arg.is_hide_env_values_set() => format!(" '{v}'"),
        _ => String::new(),
    };
    let reason = std::error::Error::source(err).map_or_else(String::new, |e| format!(": {e}"));
    Some(format!("error: invalid value{value} for {source}{reason}"))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate { database_url } => {
            let applied = db::migrate(database_url.expose()).await?;
            if applied.is_empty() {
                println!("no pending migrations: the database is up to date");
            } else {
                println!(
                    "applied {} migration(s): {}",
                    applied.len(),
                    applied.join(", ")
                );
            }
            Ok(())
        }
        Command::Load {
            dir,
            database_url,
            rejects,
            redis_url,
            cache_prefix,
        } => {
            let started = std::time::Instant::now();
            let report = etl::load(database_url.expose(), &dir, Some(&rejects)).await?;
            if let Some(url) = redis_url {
                let mut cache = CacheConfig::new(url.expose());
                cache.prefix = cache_prefix;
                crate::cache::hide_all(&cache).await?;
            }
            print_load_report(&report, started.elapsed(), &rejects);
            Ok(())
        }
        Command::GenData {
            out,
            products,
            seed,
            dirty_rate,
        } => {
            let started = std::time::Instant::now();
            let cfg = etl::generate::GenConfig {
                out,
                products,
                seed,
                dirty_rate,
            };
            let r = tokio::task::spawn_blocking(move || etl::generate::generate(&cfg)).await??;
            println!(
                "wrote {} reviews, {} photos, {} characteristics, {} characteristic reviews \
                 and {} dirty rows in {:.1} s",
                r.reviews,
                r.photos,
                r.characteristics,
                r.characteristic_reviews,
                r.dirty,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Serve(cfg) => serve(cfg).await,
        Command::Dev(cfg) => dev::run(cfg).await,
    }
}

/// Binds the listener and serves until SIGTERM or Ctrl-C.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("could not listen on {}", cfg.listen))?;
    let store = store(&cfg.db, cfg.cache.config(), Hooks::default())?;
    server::serve(
        listener,
        store,
        cfg.server.options(),
        server::shutdown_signal(),
    )
    .await
}

/// The store on `db`, behind the Redis cache when one is configured.
pub fn store(
    cfg: &DbConfig,
    cache: Option<CacheConfig>,
    hooks: Hooks,
) -> anyhow::Result<db::Store> {
    let metrics = Arc::new(Metrics::default());
    let mut store = db::Store::new(db::pool(cfg), cfg.query_timeout, metrics.clone());
    if let Some(read_url) = &cfg.read_url {
        let replicas = DbConfig {
            url: read_url.clone(),
            read_url: None,
            ..cfg.clone()
        };
        store = store.with_replicas(db::pool(&replicas));
    }
    Ok(match cache {
        Some(cache) => {
            tracing::info!(ttl = ?cache.ttl, "caching reads in Redis");
            store.with_cache(Cache::new(cache, metrics, hooks)?)
        }
        None => {
            tracing::info!("REDIS_URL is not set: serving without a cache");
            store
        }
    })
}

fn print_load_report(
    report: &etl::LoadReport,
    total: std::time::Duration,
    rejects: &std::path::Path,
) {
    println!(
        "{:<28} {:>11} {:>9} {:>8}",
        "file", "loaded", "rejected", "seconds"
    );
    for f in &report.files {
        println!(
            "{:<28} {:>11} {:>9} {:>8}",
            f.file, f.loaded, f.rejected, f.seconds
        );
    }
    for (phase, took) in &report.phases {
        println!("{phase:<28} {:>30.1}", took.as_secs_f64());
    }
    println!(
        "{:<28} {:>11} {:>9} {:>8.1}",
        "total",
        report.loaded(),
        report.rejected(),
        total.as_secs_f64()
    );
    if let Some(kib) = report.peak_rss_kib {
        println!("peak memory (RSS): {} MiB", kib / 1024);
    }
    if report.rejected() > 0 {
        println!("rows set aside are in {}", rejects.display());
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Tests that set environment variables take turns: clap reads the process's environment.
    static ENV: Mutex<()> = Mutex::new(());

    const SETTINGS: &[&str] = &[
        "DATABASE_URL",
        "DATABASE_READ_URL",
        "REDIS_URL",
        "REVIEWS_LISTEN",
        "REVIEWS_DB_POOL_SIZE",
        "REVIEWS_DB_CONNECT_TIMEOUT",
        "REVIEWS_DB_TIMEOUT",
        "REVIEWS_CACHE_TTL",
        "REVIEWS_REDIS_POOL_SIZE",
        "REVIEWS_CACHE_PREFIX",
        "REVIEWS_REDIS_TIMEOUT",
        "REVIEWS_HEALTH_INTERVAL",
        "REVIEWS_CORS_ORIGINS",
        "REVIEWS_MAX_CONNECTION_AGE",
        "REVIEWS_MAX_BODY_BYTES",
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
                    "--redis-pool-size=5",
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
        assert_eq!(serve.cache.pool_size, 5);
        assert_eq!(serve.db.query_timeout, Duration::from_secs(4));
        assert_eq!(serve.cache.timeout, Duration::from_millis(50));
        assert_eq!(serve.server.cors_origins.len(), 2);
        let cache = serve.cache.config().unwrap();
        assert_eq!((cache.pool_size, cache.prefix.as_str()), (5, "t"));

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
            ("REVIEWS_REDIS_POOL_SIZE", "4"),
            ("REVIEWS_DB_TIMEOUT", "5s"),
            ("REVIEWS_CACHE_TTL", "60s"),
            ("REVIEWS_REDIS_TIMEOUT", "100ms"),
            ("REVIEWS_CORS_ORIGINS", "*"),
            ("REVIEWS_MAX_CONNECTION_AGE", "5m"),
            ("REVIEWS_REJECTS", "/tmp/rejects"),
        ];
        let serve = serve_config(parse_with(&env, &["serve"]).unwrap());
        assert_eq!((serve.db.pool_size, serve.cache.pool_size), (8, 4));
        assert_eq!(
            serve.server.max_connection_age,
            Some(Duration::from_secs(300))
        );
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
    }

    #[test]
    fn a_missing_setting_names_its_flag_and_variable() {
        let err = parse_with(&[], &["serve"]).unwrap_err();
        assert_eq!(
            bad_value_message(&err, &["reviews".into(), "serve".into()]).unwrap(),
            "error: missing --database-url (or DATABASE_URL)"
        );
    }
}
