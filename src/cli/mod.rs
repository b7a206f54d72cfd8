//! The command line: `migrate`, `load`, `serve`, and `dev` (the quick start).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cache::CacheConfig;
use crate::config::{parse_database_url, parse_redis_url, Secret};
use crate::server::ServeConfig;
use crate::{db, etl, server};

mod usage;

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
            default_value = crate::cache::DEFAULT_PREFIX
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
    #[cfg(feature = "dev")]
    Dev(crate::dev::DevConfig),
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
        #[cfg(feature = "dev")]
        Command::Dev(cfg) => crate::dev::run(cfg).await,
    }
}

/// Builds the server and serves until SIGTERM or Ctrl-C.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    server::Application::build(cfg.settings())
        .await?
        .run_until(server::shutdown_signal())
        .await
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
mod tests;
