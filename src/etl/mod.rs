//! Loads the storefront's four CSV exports, replacing the data set: the files are streamed into
//! staging tables (binary COPY, no indexes yet), every bad row is set aside with its file, line,
//! reason and text, the kept aggregates gathered on the way and sequences set; then keys, indexes,
//! foreign keys and statistics are built over two connections, and the staging tables replace the
//! live ones in one transaction. Readers see the old data until that commit; a failed or killed
//! load leaves it untouched and can simply be run again.

/// Public for the fuzz target of the CSV reader (`fuzz/`).
pub mod csv;
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
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Transaction};

use self::csv::{Reader, Record};
use self::progress::Progress;
use self::rows::*;
use self::seen::{CharacteristicInfo, IdSet, ReviewInfo, Seen};

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

    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOAD_LOCK])
        .await?
        .get(0);
    if !locked {
        // Another load, or the server side of one just killed, which lives on until PostgreSQL
        // notices: wait for it rather than share the staging schema with it.
        tracing::warn!("another `reviews load` is running against this database: waiting for it");
        client
            .execute("SELECT pg_advisory_lock($1)", &[&LOAD_LOCK])
            .await?;
    }
    let result = load_locked(&mut client, database_url, dir, rejects_dir).await;
    if result.is_err() {
        // Nothing of a failed load is live; drop what it staged (a rolled-back copy left nothing).
        let _ = client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                staging::SCHEMA
            ))
            .await;
    }
    drop(client);
    let _ = conn_task.await;
    let mut report = result?;
    report.peak_rss_kib = progress::peak_rss_kib();
    Ok(report)
}

/// The session advisory lock a load holds, so that two loads never share the staging schema: a
/// second load waits for the first.
pub const LOAD_LOCK: i64 = 0x7265_7669_6577_736c; // "reviewsl"

/// How many connections build the keys and indexes: PostgreSQL gives each one core.
const BUILD_CONNECTIONS: usize = 2;

async fn load_locked(
    client: &mut tokio_postgres::Client,
    database_url: &str,
    dir: &Path,
    rejects_dir: Option<&Path>,
) -> anyhow::Result<LoadReport> {
    let definitions = staging::definitions(client).await?;
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
    // Which reviews the photos file names, read before the reviews so that each review row is
    // written with its has_photos column once (an UPDATE afterwards would rewrite a fifth of the
    // reviews table).
    let named = reviews_with_photos(dir)?;
    report.files.push(
        copy_file(&tx, dir, &REVIEWS, &mut rejects, |rec| {
            let mut r = review(rec, now)?;
            r.has_photos = named.contains(r.id);
            let info = ReviewInfo {
                product: r.product_id,
                rating: r.rating as u8,
                listable: !r.reported,
                photos: false,
                rated: 0,
            };
            if !seen.reviews.insert_new(r.id, info) {
                return Err(format!("duplicate review id {}", r.id));
            }
            if info.listable {
                seen.count_listable(r.product_id, r.rating, r.recommend);
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
            let review = seen.reviews.get_mut(p.review_id).expect("checked above");
            if !review.photos {
                review.photos = true;
                let review = *review;
                if review.listable {
                    seen.count_photos(review.product, review.rating);
                }
            }
            Ok(Some(p))
        })
        .await?,
    );
    // A review named only by photo rows that were set aside has no photo after all.
    let photoless: Vec<i32> = named
        .iter()
        .filter(|&id| seen.reviews.get(id).is_some_and(|r| !r.photos))
        .collect();
    drop(named);
    if !photoless.is_empty() {
        tx.execute(
            "UPDATE reviews_staging.reviews SET has_photos = false WHERE id = ANY($1)",
            &[&photoless],
        )
        .await?;
    }
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
    copy_product_stats(&tx, &seen).await?;
    drop(seen);
    staging::set_sequences(&tx).await?;
    tx.commit().await?;
    phase("aggregates and sequences", t);

    let t = Instant::now();
    let mut extra = Vec::with_capacity(BUILD_CONNECTIONS - 1);
    let mut connections = Vec::with_capacity(BUILD_CONNECTIONS - 1);
    for _ in 1..BUILD_CONNECTIONS {
        let (worker, connection) = tokio_postgres::connect(database_url, NoTls)
            .await
            .context("could not connect to the database")?;
        connections.push(tokio::spawn(connection));
        extra.push(worker);
    }
    let workers: Vec<&tokio_postgres::Client> = std::iter::once(&*client).chain(&extra).collect();
    let built = staging::build(&workers, &definitions).await;
    drop(workers);
    drop(extra);
    for c in connections {
        let _ = c.await;
    }
    built?;
    phase("keys, indexes, ANALYZE", t);

    let t = Instant::now();
    let tx = client.transaction().await?;
    staging::swap(&tx).await?;
    tx.commit().await?;
    phase("swap", t);
    Ok(report)
}

fn accept_characteristic(seen: &mut Seen, rec: &Record) -> Result<(), String> {
    let row = characteristic(rec)?;
    let name = seen
        .intern(&row.name)
        .ok_or("too many distinct characteristic names")?;
    let (count, mask) = *seen.product_names.get_or_insert(row.product_id, (0, 0));
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
    *seen.product_names.get_or_insert(row.product_id, (0, 0)) = (count.saturating_add(1), mask);
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
    let sink = tx.copy_in(&copy_sql(CHARACTERISTICS.table)).await?;
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
async fn copy_product_stats(tx: &Transaction<'_>, seen: &Seen) -> anyhow::Result<()> {
    let mut types = [Type::INT8; 13];
    types[0] = Type::INT4;
    let sink = tx
        .copy_in(&copy_sql(
            "reviews_staging.product_stats (product_id, rating_1, rating_2, rating_3, rating_4, \
             rating_5, recommended_false, recommended_true, photos_rating_1, photos_rating_2, \
             photos_rating_3, photos_rating_4, photos_rating_5)",
        ))
        .await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
    for (product, counts) in seen.product_counts.iter() {
        // In the columns' order (see `ProductCounts`).
        let counts = counts.map(i64::from);
        let mut row: [&(dyn ToSql + Sync); 13] = [&product; 13];
        for (value, count) in row[1..].iter_mut().zip(&counts) {
            *value = count;
        }
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The ids of the reviews that the photos file's readable rows name (whether or not those rows
/// pass every check; the loader corrects the few that do not).
fn reviews_with_photos(dir: &Path) -> anyhow::Result<IdSet> {
    let path = dir.join(PHOTOS.file);
    let file = File::open(&path).with_context(|| format!("could not open {}", path.display()))?;
    let mut reader = Reader::new(BufReader::with_capacity(1 << 20, file));
    let mut rec = Record::default();
    let mut named = IdSet::default();
    let mut header = true;
    loop {
        match reader.read(&mut rec)? {
            Ok(false) => return Ok(named),
            Ok(true) if std::mem::take(&mut header) => {}
            Ok(true) => {
                if let Ok(p) = photo(&rec) {
                    named.insert(p.review_id);
                }
            }
            Err(_) => header = false,
        }
    }
}

/// A binary COPY into a staging table. FREEZE, allowed because the table was created in this
/// transaction, writes the rows already frozen, so nothing rewrites their pages to set hint bits
/// when the foreign keys are validated or the service first reads them.
fn copy_sql(target: &str) -> String {
    format!("COPY {target} FROM STDIN (FORMAT binary, FREEZE)")
}

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
                        let sink = tx.copy_in(&copy_sql(spec.table)).await?;
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
