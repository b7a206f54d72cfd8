//! Loads the storefront's four CSV exports, replacing the data set in one transaction: the files
//! are streamed into staging tables (binary COPY, no indexes yet), every bad row is set aside
//! with its file, line, reason and text, then keys, indexes and the kept aggregates are built,
//! sequences set and statistics gathered, and the staging tables replace the live ones. Readers
//! see the old data until the commit; a failed or killed load leaves it untouched and can simply
//! be run again.

mod csv;
pub mod generate;
mod progress;
mod rows;
mod seen;
mod staging;

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::{NoTls, Transaction};

use self::csv::{Reader, Record};
use self::progress::Progress;
use self::rows::*;
use self::seen::{CharacteristicInfo, ReviewInfo, Seen};

/// What a load did.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub files: Vec<FileReport>,
    /// The phases after the copy (aggregates, indexes, swap, ...) and how long each took.
    pub phases: Vec<(&'static str, Duration)>,
    pub peak_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub file: &'static str,
    pub loaded: u64,
    pub rejected: u64,
    pub seconds: u64,
}

impl LoadReport {
    pub fn rejected(&self) -> u64 {
        self.files.iter().map(|f| f.rejected).sum()
    }

    pub fn loaded(&self) -> u64 {
        self.files.iter().map(|f| f.loaded).sum()
    }
}

/// Where rejected rows go: `<dir>/<file>.rejects` (`file:line: reason`, then the row as it was)
/// when a folder is given, and the first few to the log.
struct Rejects {
    dir: Option<PathBuf>,
    open: Vec<(&'static str, BufWriter<File>)>,
    logged: u64,
}

impl Rejects {
    const LOG_AT_MOST: u64 = 20;

    fn record(
        &mut self,
        file: &'static str,
        line: u64,
        reason: &str,
        raw: &str,
    ) -> anyhow::Result<()> {
        if self.logged < Self::LOG_AT_MOST {
            tracing::warn!(file, line, reason, "row set aside");
            self.logged += 1;
        }
        let Some(dir) = &self.dir else { return Ok(()) };
        let out = match self.open.iter().position(|(f, _)| *f == file) {
            Some(i) => &mut self.open[i].1,
            None => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(format!("{file}.rejects"));
                let w = BufWriter::new(
                    File::create(&path)
                        .with_context(|| format!("could not create {}", path.display()))?,
                );
                self.open.push((file, w));
                &mut self.open.last_mut().expect("just pushed").1
            }
        };
        writeln!(out, "{file}:{line}: {reason}")?;
        out.write_all(raw.as_bytes())?;
        if !raw.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        for (_, w) in &mut self.open {
            w.flush()?;
        }
        Ok(())
    }
}

/// Replaces the data set in the migrated database at `database_url` with `dir`'s four files;
/// rejected rows are written under `rejects_dir` when given.
pub async fn load(
    database_url: &str,
    dir: &Path,
    rejects_dir: Option<&Path>,
) -> anyhow::Result<LoadReport> {
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .context("could not connect to the database")?;
    let conn_task = tokio::spawn(connection);
    let migrated: bool = client
        .query_one("SELECT to_regclass('public.reviews') IS NOT NULL", &[])
        .await?
        .get(0);
    if !migrated {
        bail!("the database has no reviews tables: run `reviews migrate` first");
    }
    for spec in [&CHARACTERISTICS, &REVIEWS, &PHOTOS, &CHARACTERISTIC_REVIEWS] {
        let path = dir.join(spec.file);
        if !path.is_file() {
            bail!("{} is missing", path.display());
        }
    }

    let mut rejects = Rejects {
        dir: rejects_dir.map(Path::to_path_buf),
        open: Vec::new(),
        logged: 0,
    };
    let mut seen = Seen::default();
    let now = chrono::Utc::now();
    let mut report = LoadReport::default();

    let tx = client.transaction().await?;
    staging::create(&tx).await?;

    report.files.push(
        copy_file::<CharacteristicRow>(&tx, dir, &CHARACTERISTICS, &mut rejects, |rec| {
            accept_characteristic(&mut seen, rec).map(|()| None)
        })
        .await?,
    );
    report.files.push(
        copy_file(&tx, dir, &REVIEWS, &mut rejects, |rec| {
            let r = review(rec, now)?;
            let info = ReviewInfo {
                product: r.product_id,
                listable: !r.reported,
                rated: 0,
            };
            if !seen.reviews.insert_new(r.id, info) {
                return Err(format!("duplicate review id {}", r.id));
            }
            Ok(Some(r))
        })
        .await?,
    );
    report.files.push(
        copy_file(&tx, dir, &PHOTOS, &mut rejects, |rec| {
            let p = photo(rec)?;
            if seen.reviews.get(p.review_id).is_none() {
                return Err(format!("review {} does not exist", p.review_id));
            }
            if !seen.photos.insert(p.id) {
                return Err(format!("duplicate photo id {}", p.id));
            }
            Ok(Some(p))
        })
        .await?,
    );
    report.files.push(
        copy_file(&tx, dir, &CHARACTERISTIC_REVIEWS, &mut rejects, |rec| {
            accept_rating(&mut seen, rec).map(Some)
        })
        .await?,
    );
    rejects.flush()?;

    let mut phase = |name: &'static str, started: Instant| {
        tracing::info!(phase = name, secs = started.elapsed().as_secs_f32(), "done");
        report.phases.push((name, started.elapsed()));
    };
    let t = Instant::now();
    copy_characteristics(&tx, &seen).await?;
    tx.batch_execute(PRODUCT_STATS_SQL).await?;
    phase("aggregates", t);
    let t = Instant::now();
    staging::build_keys_and_indexes(&tx).await?;
    phase("keys and indexes", t);
    let t = Instant::now();
    staging::finish(&tx).await?;
    phase("sequences and statistics", t);
    let t = Instant::now();
    staging::swap(&tx).await?;
    tx.commit().await?;
    phase("swap", t);
    let t = Instant::now();
    staging::validate_foreign_keys(&client).await?;
    phase("validate foreign keys", t);

    drop(client);
    let _ = conn_task.await;
    report.peak_rss_kib = progress::peak_rss_kib();
    Ok(report)
}

fn accept_characteristic(seen: &mut Seen, rec: &Record) -> Result<(), String> {
    let row = characteristic(rec)?;
    let name = seen
        .intern(&row.name)
        .ok_or("too many distinct characteristic names")?;
    let (count, mask) = seen.product_names.get(row.product_id).unwrap_or((0, 0));
    let taken = if name < 64 {
        mask & (1 << name) != 0
    } else {
        !seen.product_rare_names.insert((row.product_id, name))
    };
    if taken {
        return Err(format!(
            "product {} already has a characteristic named {:?}",
            row.product_id, row.name
        ));
    }
    let info = CharacteristicInfo {
        product: row.product_id,
        name,
        position: count,
        value_sum: 0,
        value_count: 0,
    };
    if !seen.characteristics.insert_new(row.id, info) {
        return Err(format!("duplicate characteristic id {}", row.id));
    }
    let mask = if name < 64 { mask | 1 << name } else { mask };
    let entry = (count.saturating_add(1), mask);
    if !seen.product_names.insert_new(row.product_id, entry) {
        *seen.product_names.get_mut(row.product_id).expect("present") = entry;
    }
    Ok(())
}

fn accept_rating(seen: &mut Seen, rec: &Record) -> Result<CharacteristicReviewRow, String> {
    let cr = characteristic_review(rec)?;
    let Some(review) = seen.reviews.get(cr.review_id) else {
        return Err(format!("review {} does not exist", cr.review_id));
    };
    let Some(ch) = seen.characteristics.get(cr.characteristic_id) else {
        return Err(format!(
            "characteristic {} does not exist",
            cr.characteristic_id
        ));
    };
    if review.product != ch.product {
        return Err(format!(
            "characteristic {} belongs to product {}, review {} to product {}",
            cr.characteristic_id, ch.product, cr.review_id, review.product
        ));
    }
    if !seen.characteristic_reviews.insert(cr.id) {
        return Err(format!("duplicate characteristic review id {}", cr.id));
    }
    let again = if ch.position < 8 {
        let bit = 1u8 << ch.position;
        let r = seen.reviews.get_mut(cr.review_id).expect("present");
        let again = r.rated & bit != 0;
        r.rated |= bit;
        again
    } else {
        !seen.rated.insert((cr.review_id, cr.characteristic_id))
    };
    if again {
        return Err(format!(
            "review {} already rates characteristic {}",
            cr.review_id, cr.characteristic_id
        ));
    }
    if review.listable {
        let c = seen
            .characteristics
            .get_mut(cr.characteristic_id)
            .expect("present");
        c.value_sum += cr.value as u64;
        c.value_count += 1;
    }
    Ok(cr)
}

/// The characteristics, with the sums of the values listable reviews gave them.
async fn copy_characteristics(tx: &Transaction<'_>, seen: &Seen) -> anyhow::Result<()> {
    let sink = tx
        .copy_in(&format!("COPY {} FROM STDIN BINARY", CHARACTERISTICS.table))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, CHARACTERISTICS.types);
    let mut writer = std::pin::pin!(writer);
    for (id, c) in seen.characteristics.iter() {
        let name = &seen.names[c.name as usize];
        let (sum, count) = (c.value_sum as i64, c.value_count as i64);
        writer
            .as_mut()
            .write(&[&id, &c.product, name, &sum, &count])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Per-product counts over the listable reviews.
const PRODUCT_STATS_SQL: &str = "
    INSERT INTO reviews_staging.product_stats (product_id, rating_1, rating_2, rating_3, rating_4,
                                               rating_5, recommended_false, recommended_true)
    SELECT product_id,
           count(*) FILTER (WHERE rating = 1), count(*) FILTER (WHERE rating = 2),
           count(*) FILTER (WHERE rating = 3), count(*) FILTER (WHERE rating = 4),
           count(*) FILTER (WHERE rating = 5),
           count(*) FILTER (WHERE NOT recommend), count(*) FILTER (WHERE recommend)
    FROM reviews_staging.reviews WHERE NOT reported GROUP BY product_id";

/// Streams one file: reads each record, lets `accept` parse and check it, copies the rows it
/// returns, and sets the others aside.
async fn copy_file<T: CopyRow>(
    tx: &Transaction<'_>,
    dir: &Path,
    spec: &FileSpec,
    rejects: &mut Rejects,
    mut accept: impl FnMut(&Record) -> Result<Option<T>, String>,
) -> anyhow::Result<FileReport> {
    let path: PathBuf = dir.join(spec.file);
    let file = File::open(&path).with_context(|| format!("could not open {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut reader = Reader::new(BufReader::with_capacity(1 << 20, file));
    let mut rec = Record::default();
    let header_ok = matches!(reader.read(&mut rec)?, Ok(true))
        && (0..rec.len())
            .map(|i| rec.get(i))
            .collect::<Vec<_>>()
            .join(",")
            == spec.header;
    if !header_ok {
        bail!(
            "{} does not start with the header `{}`",
            spec.file,
            spec.header
        );
    }

    let mut writer = None;
    tracing::info!(file = spec.file, mib = size / (1024 * 1024), "reading file");
    let mut progress = Progress::new(spec.file, size);
    let mut report = FileReport {
        file: spec.file,
        loaded: 0,
        rejected: 0,
        seconds: 0,
    };
    loop {
        let outcome = match reader.read(&mut rec)? {
            Ok(false) => break,
            Ok(true) => accept(&rec).map_err(|reason| (rec.line, reason, rec.raw.clone())),
            Err(bad) => Err((bad.line, bad.reason, bad.raw)),
        };
        match outcome {
            Ok(row) => {
                if let Some(row) = row {
                    if writer.is_none() {
                        let sink = tx
                            .copy_in(&format!("COPY {} FROM STDIN BINARY", spec.table))
                            .await?;
                        writer = Some(Box::pin(BinaryCopyInWriter::new(sink, spec.types)));
                    }
                    let w = writer.as_mut().expect("opened above");
                    w.as_mut().write(&row.values()).await?;
                }
                report.loaded += 1;
            }
            Err((line, reason, raw)) => {
                rejects.record(spec.file, line, &reason, &raw)?;
                report.rejected += 1;
            }
        }
        progress.tick(report.loaded + report.rejected, reader.bytes_read());
    }
    if let Some(w) = writer.as_mut() {
        w.as_mut().finish().await?;
    }
    report.seconds = progress.done().as_secs();
    tracing::info!(
        file = spec.file,
        loaded = report.loaded,
        rejected = report.rejected,
        secs = report.seconds,
        "file read"
    );
    Ok(report)
}
