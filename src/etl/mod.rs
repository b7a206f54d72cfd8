//! Loads the storefront's four CSV exports into an empty database in one transaction: every good
//! row is copied (binary COPY), every bad one is set aside with its file, line and reason, and
//! the kept aggregates and id sequences are rebuilt from what was loaded.

mod csv;
mod rows;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::{NoTls, Transaction};

use self::csv::{Reader, Record};
use self::rows::*;

/// What a load did, per file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub files: Vec<FileReport>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub file: &'static str,
    pub loaded: u64,
    pub rejected: u64,
}

impl LoadReport {
    pub fn rejected(&self) -> u64 {
        self.files.iter().map(|f| f.rejected).sum()
    }
}

/// Where rejected rows go: a CSV file (`file,line,reason`) when asked for, and the log.
struct Rejects {
    out: Option<BufWriter<File>>,
    logged: u64,
}

impl Rejects {
    const LOG_AT_MOST: u64 = 20;

    fn record(&mut self, file: &str, line: u64, reason: &str) -> anyhow::Result<()> {
        if self.logged < Self::LOG_AT_MOST {
            tracing::warn!(file, line, reason, "row set aside");
            self.logged += 1;
        }
        if let Some(out) = &mut self.out {
            let reason = reason.replace('"', "\"\"");
            writeln!(out, "{file},{line},\"{reason}\"")?;
        }
        Ok(())
    }
}

/// What has been loaded so far, for the checks that span rows and files.
#[derive(Default)]
struct Seen {
    review_product: HashMap<i32, i32>,
    characteristic_product: HashMap<i32, i32>,
    characteristic_names: HashSet<(i32, String)>,
    photo_ids: HashSet<i32>,
    characteristic_review_ids: HashSet<i32>,
    rated: HashSet<(i32, i32)>,
}

/// Loads `dir`'s four files into the (empty) database at `database_url`.
pub async fn load(
    database_url: &str,
    dir: &Path,
    rejects_file: Option<&Path>,
) -> anyhow::Result<LoadReport> {
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .context("could not connect to the database")?;
    let conn_task = tokio::spawn(connection);

    let tx = client.transaction().await?;
    let occupied: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM reviews) OR EXISTS (SELECT 1 FROM characteristics)",
            &[],
        )
        .await
        .context("could not read the reviews tables: run `reviews migrate` first")?
        .get(0);
    if occupied {
        bail!("the database already holds reviews; `reviews load` fills an empty database");
    }

    let mut rejects = Rejects {
        out: match rejects_file {
            Some(p) => Some(BufWriter::new(File::create(p).with_context(|| {
                format!("could not create the rejects file {}", p.display())
            })?)),
            None => None,
        },
        logged: 0,
    };
    let mut seen = Seen::default();
    let now = chrono::Utc::now();
    let mut report = LoadReport::default();

    report.files.push(
        copy_file(&tx, dir, &CHARACTERISTICS, &mut rejects, |rec| {
            let row = characteristic(rec)?;
            if seen.characteristic_product.contains_key(&row.id) {
                return Err(format!("duplicate characteristic id {}", row.id));
            }
            if !seen
                .characteristic_names
                .insert((row.product_id, row.name.clone()))
            {
                return Err(format!(
                    "product {} already has a characteristic named {:?}",
                    row.product_id, row.name
                ));
            }
            seen.characteristic_product.insert(row.id, row.product_id);
            Ok(row)
        })
        .await?,
    );
    report.files.push(
        copy_file(&tx, dir, &REVIEWS, &mut rejects, |rec| {
            let r = review(rec, now)?;
            if seen.review_product.insert(r.id, r.product_id).is_some() {
                return Err(format!("duplicate review id {}", r.id));
            }
            Ok(r)
        })
        .await?,
    );
    report.files.push(
        copy_file(&tx, dir, &PHOTOS, &mut rejects, |rec| {
            let p = photo(rec)?;
            if !seen.review_product.contains_key(&p.review_id) {
                return Err(format!("review {} does not exist", p.review_id));
            }
            if !seen.photo_ids.insert(p.id) {
                return Err(format!("duplicate photo id {}", p.id));
            }
            Ok(p)
        })
        .await?,
    );
    report.files.push(
        copy_file(&tx, dir, &CHARACTERISTIC_REVIEWS, &mut rejects, |rec| {
            let cr = characteristic_review(rec)?;
            let Some(&review_product) = seen.review_product.get(&cr.review_id) else {
                return Err(format!("review {} does not exist", cr.review_id));
            };
            let Some(&char_product) = seen.characteristic_product.get(&cr.characteristic_id) else {
                return Err(format!(
                    "characteristic {} does not exist",
                    cr.characteristic_id
                ));
            };
            if review_product != char_product {
                return Err(format!(
                    "characteristic {} belongs to product {char_product}, review {} to product \
                     {review_product}",
                    cr.characteristic_id, cr.review_id
                ));
            }
            if !seen.characteristic_review_ids.insert(cr.id) {
                return Err(format!("duplicate characteristic review id {}", cr.id));
            }
            if !seen.rated.insert((cr.review_id, cr.characteristic_id)) {
                return Err(format!(
                    "review {} already rates characteristic {}",
                    cr.review_id, cr.characteristic_id
                ));
            }
            Ok(cr)
        })
        .await?,
    );
    if let Some(out) = &mut rejects.out {
        out.flush()?;
    }

    tracing::info!("rebuilding aggregates and id sequences");
    tx.batch_execute(REBUILD_SQL).await?;
    tx.commit().await?;
    client.batch_execute("ANALYZE").await?;
    drop(client);
    let _ = conn_task.await;
    Ok(report)
}

/// Recomputes the kept aggregates from the loaded rows (reported reviews excluded) and moves
/// every id sequence past the largest loaded id.
const REBUILD_SQL: &str = "
    INSERT INTO product_stats (product_id, rating_1, rating_2, rating_3, rating_4, rating_5,
                               recommended_false, recommended_true)
    SELECT product_id,
           count(*) FILTER (WHERE rating = 1), count(*) FILTER (WHERE rating = 2),
           count(*) FILTER (WHERE rating = 3), count(*) FILTER (WHERE rating = 4),
           count(*) FILTER (WHERE rating = 5),
           count(*) FILTER (WHERE NOT recommend), count(*) FILTER (WHERE recommend)
    FROM reviews WHERE NOT reported GROUP BY product_id;

    UPDATE characteristics c SET value_sum = s.total, value_count = s.n
    FROM (SELECT cr.characteristic_id, sum(cr.value) AS total, count(*) AS n
          FROM characteristic_reviews cr JOIN reviews r ON r.id = cr.review_id
          WHERE NOT r.reported GROUP BY cr.characteristic_id) s
    WHERE c.id = s.characteristic_id;

    SELECT setval(pg_get_serial_sequence('reviews', 'id'), coalesce(max(id), 0) + 1, false)
        FROM reviews;
    SELECT setval(pg_get_serial_sequence('reviews_photos', 'id'), coalesce(max(id), 0) + 1, false)
        FROM reviews_photos;
    SELECT setval(pg_get_serial_sequence('characteristics', 'id'), coalesce(max(id), 0) + 1, false)
        FROM characteristics;
    SELECT setval(pg_get_serial_sequence('characteristic_reviews', 'id'),
                  coalesce(max(id), 0) + 1, false)
        FROM characteristic_reviews;";

/// Streams one file into its table: reads each record, lets `accept` parse and check it, copies
/// the accepted ones and sets the others aside.
async fn copy_file<T: CopyRow>(
    tx: &Transaction<'_>,
    dir: &Path,
    spec: &FileSpec,
    rejects: &mut Rejects,
    mut accept: impl FnMut(&Record) -> Result<T, String>,
) -> anyhow::Result<FileReport> {
    let path: PathBuf = dir.join(spec.file);
    let file = File::open(&path).with_context(|| format!("could not open {}", path.display()))?;
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

    let sink = tx
        .copy_in(&format!("COPY {} FROM STDIN BINARY", spec.table))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, spec.types);
    let mut writer = std::pin::pin!(writer);
    let mut report = FileReport {
        file: spec.file,
        loaded: 0,
        rejected: 0,
    };
    loop {
        let outcome = match reader.read(&mut rec)? {
            Ok(false) => break,
            Ok(true) => accept(&rec).map_err(|reason| (rec.line, reason)),
            Err(bad) => Err((bad.line, bad.reason)),
        };
        match outcome {
            Ok(row) => {
                writer.as_mut().write(&row.values()).await?;
                report.loaded += 1;
            }
            Err((line, reason)) => {
                rejects.record(spec.file, line, &reason)?;
                report.rejected += 1;
            }
        }
    }
    writer.finish().await?;
    tracing::info!(
        file = spec.file,
        loaded = report.loaded,
        rejected = report.rejected,
        "file loaded"
    );
    Ok(report)
}
