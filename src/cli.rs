//! The command line: `migrate`, `load`, `serve`, and `dev` (the quick start).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::cache::{Cache, CacheConfig, Hooks};
use crate::config::{DbConfig, Secret, ServeConfig};
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
        #[arg(long = "database-url", env = "DATABASE_URL")]
        database_url: Secret,
    },
    /// Load the four CSV files of the data set from a folder into an empty, migrated database.
    Load {
        /// Folder holding reviews.csv, reviews_photos.csv, characteristics.csv and
        /// characteristic_reviews.csv.
        dir: PathBuf,
        #[arg(long = "database-url", env = "DATABASE_URL")]
        database_url: Secret,
        /// Write the rows set aside (file, line, reason) to this CSV file.
        #[arg(long, env = "REVIEWS_REJECTS")]
        rejects: Option<PathBuf>,
    },
    /// Serve the gRPC API.
    Serve(ServeConfig),
    /// Quick start: a throwaway local PostgreSQL with the sample data, and the server on it.
    Dev(dev::DevConfig),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate { database_url } => {
            let applied = db::migrate(database_url.expose()).await?;
            tracing::info!(count = applied.len(), versions = ?applied, "migrations applied");
            Ok(())
        }
        Command::Load {
            dir,
            database_url,
            rejects,
        } => {
            let report = etl::load(database_url.expose(), &dir, rejects.as_deref()).await?;
            for f in &report.files {
                println!(
                    "{:<28} loaded {:>10}  rejected {:>8}",
                    f.file, f.loaded, f.rejected
                );
            }
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
    let store = db::Store::new(db::pool(cfg), cfg.query_timeout, metrics.clone());
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
