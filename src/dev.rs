//! `reviews dev`: the quick start. Starts a throwaway PostgreSQL and Redis from the machine's
//! server binaries (installing them with apt when missing and possible), migrates, loads the
//! sample data, and serves through the cache until Ctrl-C, which stops everything it started.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::cache::CacheArgs;
use crate::config::Secret;
use crate::db::DbConfig;
use crate::local::{self, LocalPostgres, LocalRedis};
use crate::server::{self, Application, ServeConfig, ServerArgs, DEFAULT_LISTEN};
use crate::{db, etl};

#[derive(clap::Args, Debug, Clone)]
pub struct DevConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "REVIEWS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Serve without starting Redis (reads always go to PostgreSQL).
    #[arg(long)]
    pub no_cache: bool,
    /// Folder of CSV files to load.
    #[arg(long, env = "REVIEWS_DEV_DATA", default_value = "data/sample")]
    pub data: PathBuf,
}

pub async fn run(mut cfg: DevConfig) -> anyhow::Result<()> {
    ensure_installed(local::postgres_available(), "postgresql")?;
    let root = tempfile::Builder::new().prefix("reviews-dev-").tempdir()?;
    let redis = if cfg.no_cache || cfg.cache.redis_url.is_some() {
        None
    } else {
        ensure_installed(local::which("redis-server").is_some(), "redis-server")?;
        let redis = LocalRedis::start(&root.path().join("redis"))?;
        tracing::info!(redis_url = %redis.url(), "Redis started");
        cfg.cache.redis_url = Some(Secret::new(redis.url()));
        Some(redis)
    };
    // Started from this (the main) thread, so the server dies with the process.
    let mut pg = LocalPostgres::init(root.path())?;
    pg.start()?;
    local::create_database(&pg.url("postgres"), "reviews", None).await?;
    let url = pg.url("reviews");
    tracing::info!(database_url = %url, "PostgreSQL started");

    db::migrate(&url).await?;
    let report = etl::load(&url, &cfg.data, None)
        .await
        .with_context(|| format!("could not load {}", cfg.data.display()))?;
    let loaded: u64 = report.files.iter().map(|f| f.loaded).sum();
    tracing::info!(
        rows = loaded,
        rejected = report.rejected(),
        "sample data loaded"
    );

    let serve = ServeConfig {
        listen: cfg.listen,
        server: cfg.server.clone(),
        db: DbConfig::new(url),
        cache: cfg.cache.clone(),
    };
    let result = match Application::build(serve.settings()).await {
        Ok(app) => app.run_until(server::shutdown_signal()).await,
        Err(e) => Err(e),
    };
    pg.stop();
    drop(redis);
    result
}

/// Installs a Debian package with apt when what it provides is missing and this process may.
fn ensure_installed(present: bool, package: &str) -> anyhow::Result<()> {
    if present {
        return Ok(());
    }
    let root = unsafe { libc::geteuid() } == 0;
    if !root || local::which("apt-get").is_none() {
        bail!(
            "{package} is not installed. Install it (Debian/Ubuntu: \
             `sudo apt-get install -y {package}`) and run `reviews dev` again."
        );
    }
    tracing::info!(package, "installing with apt-get");
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", package][..],
    ] {
        let status = Command::new("apt-get").args(args).status()?;
        if !status.success() {
            bail!("`apt-get {}` failed", args.join(" "));
        }
    }
    Ok(())
}
