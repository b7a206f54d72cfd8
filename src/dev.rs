//! `reviews dev`: the quick start. Starts a throwaway PostgreSQL from the machine's server
//! binaries (installing them with apt when missing and possible), migrates it, loads the sample
//! data, and serves until Ctrl-C, which stops everything it started.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::config::{DbConfig, ServeConfig, ServerArgs};
use crate::local::{self, LocalPostgres};
use crate::{cli, db, etl};

#[derive(clap::Args, Debug, Clone)]
pub struct DevConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "REVIEWS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Folder of CSV files to load.
    #[arg(long, env = "REVIEWS_DEV_DATA", default_value = "data/sample")]
    pub data: PathBuf,
}

pub async fn run(cfg: DevConfig) -> anyhow::Result<()> {
    ensure_postgres()?;
    let root = tempfile::Builder::new().prefix("reviews-dev-").tempdir()?;
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
    };
    let result = cli::serve(serve).await;
    pg.stop();
    result
}

/// Installs the PostgreSQL server with apt when it is missing and this process may.
fn ensure_postgres() -> anyhow::Result<()> {
    if local::postgres_available() {
        return Ok(());
    }
    let root = unsafe { libc::geteuid() } == 0;
    if !root || local::which("apt-get").is_none() {
        bail!(
            "PostgreSQL server binaries were not found. Install them (Debian/Ubuntu: \
             `sudo apt-get install -y postgresql`) and run `reviews dev` again."
        );
    }
    tracing::info!("installing PostgreSQL with apt-get");
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "postgresql"][..],
    ] {
        let status = Command::new("apt-get").args(args).status()?;
        if !status.success() {
            bail!("`apt-get {}` failed", args.join(" "));
        }
    }
    if !local::postgres_available() {
        bail!("PostgreSQL was installed but its server binaries are still not found");
    }
    Ok(())
}
