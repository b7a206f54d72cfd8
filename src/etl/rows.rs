//! The rows of the four data-set files, parsed and range-checked one at a time. Checks that span
//! rows (unique ids, references) live in the loader.

use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};

use super::csv::Record;

pub struct ReviewRow {
    pub id: i32,
    pub product_id: i32,
    pub rating: i16,
    pub date: DateTime<Utc>,
    pub summary: String,
    pub body: String,
    pub recommend: bool,
    pub reported: bool,
    pub reviewer_name: String,
    pub reviewer_email: String,
    pub response: Option<String>,
    pub helpfulness: i32,
    /// Whether the photos file names the review (set by the loader, which reads it first).
    pub has_photos: bool,
}

pub struct PhotoRow {
    pub id: i32,
    pub review_id: i32,
    pub url: String,
}

pub struct CharacteristicRow {
    pub id: i32,
    pub product_id: i32,
    pub name: String,
}

pub struct CharacteristicReviewRow {
    pub id: i32,
    pub characteristic_id: i32,
    pub review_id: i32,
    pub value: i16,
}

pub const REVIEWS_HEADER: &str = "id,product_id,rating,date,summary,body,recommend,reported,reviewer_name,reviewer_email,response,helpfulness";
pub const PHOTOS_HEADER: &str = "id,review_id,url";
pub const CHARACTERISTICS_HEADER: &str = "id,product_id,name";
pub const CHARACTERISTIC_REVIEWS_HEADER: &str = "id,characteristic_id,review_id,value";

/// A data-set file: its name, header, and the table and columns its rows are copied into.
pub struct FileSpec {
    pub file: &'static str,
    pub header: &'static str,
    pub table: &'static str,
    pub types: &'static [Type],
}

pub const CHARACTERISTICS: FileSpec = FileSpec {
    file: "characteristics.csv",
    header: CHARACTERISTICS_HEADER,
    table: "reviews_staging.characteristics (id, product_id, name, value_sum, value_count)",
    types: &[Type::INT4, Type::INT4, Type::TEXT, Type::INT8, Type::INT8],
};
pub const REVIEWS: FileSpec = FileSpec {
    file: "reviews.csv",
    header: REVIEWS_HEADER,
    table: "reviews_staging.reviews (id, product_id, rating, date, summary, body, recommend, reported, \
            reviewer_name, reviewer_email, response, helpfulness, has_photos)",
    types: &[
        Type::INT4,
        Type::INT4,
        Type::INT2,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::BOOL,
        Type::BOOL,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::BOOL,
    ],
};
pub const PHOTOS: FileSpec = FileSpec {
    file: "reviews_photos.csv",
    header: PHOTOS_HEADER,
    table: "reviews_staging.reviews_photos (id, review_id, url)",
    types: &[Type::INT4, Type::INT4, Type::TEXT],
};
pub const CHARACTERISTIC_REVIEWS: FileSpec = FileSpec {
    file: "characteristic_reviews.csv",
    header: CHARACTERISTIC_REVIEWS_HEADER,
    table: "reviews_staging.characteristic_reviews (id, characteristic_id, review_id, value)",
    types: &[Type::INT4, Type::INT4, Type::INT4, Type::INT2],
};

type Parsed<T> = Result<T, String>;

fn expect_fields(rec: &Record, n: usize) -> Parsed<()> {
    if rec.len() == n {
        Ok(())
    } else {
        Err(format!("expected {n} fields, found {}", rec.len()))
    }
}

fn id(rec: &Record, i: usize, name: &str) -> Parsed<i32> {
    match rec.get(i).parse::<i32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!(
            "{name} {:?} is not a positive 32-bit integer",
            rec.get(i)
        )),
    }
}

fn small_range(rec: &Record, i: usize, name: &str) -> Parsed<i16> {
    match rec.get(i).parse::<i16>() {
        Ok(v @ 1..=5) => Ok(v),
        _ => Err(format!(
            "{name} {:?} is not an integer from 1 to 5",
            rec.get(i)
        )),
    }
}

fn boolean(rec: &Record, i: usize, name: &str) -> Parsed<bool> {
    match rec.get(i) {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{name} {other:?} is neither true nor false")),
    }
}

fn text(rec: &Record, i: usize, name: &str, required: bool) -> Parsed<String> {
    let t = rec.get(i);
    if t.contains('\0') {
        Err(format!("{name} contains a NUL character"))
    } else if required && t.trim().is_empty() {
        Err(format!("{name} is empty"))
    } else {
        Ok(t.to_string())
    }
}

/// Epoch milliseconds, kept to the millisecond, between 1970 and a day from now.
fn epoch_millis(rec: &Record, i: usize, now: DateTime<Utc>) -> Parsed<DateTime<Utc>> {
    let raw = rec.get(i);
    let date = raw
        .parse::<i64>()
        .ok()
        .filter(|&ms| ms >= 0)
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| format!("date {raw:?} is not epoch milliseconds"))?;
    if date > now + chrono::Duration::days(1) {
        return Err(format!("date {raw:?} is in the future"));
    }
    Ok(date)
}

pub fn review(rec: &Record, now: DateTime<Utc>) -> Parsed<ReviewRow> {
    expect_fields(rec, 12)?;
    let helpfulness = match rec.get(11).parse::<i32>() {
        Ok(h) if h >= 0 => h,
        _ => {
            return Err(format!(
                "helpfulness {:?} is not a non-negative integer",
                rec.get(11)
            ))
        }
    };
    let response = if rec.is_bare(10) && rec.get(10) == "null" {
        None
    } else {
        Some(text(rec, 10, "response", false)?)
    };
    Ok(ReviewRow {
        id: id(rec, 0, "id")?,
        product_id: id(rec, 1, "product_id")?,
        rating: small_range(rec, 2, "rating")?,
        date: epoch_millis(rec, 3, now)?,
        summary: text(rec, 4, "summary", false)?,
        body: text(rec, 5, "body", false)?,
        recommend: boolean(rec, 6, "recommend")?,
        reported: boolean(rec, 7, "reported")?,
        reviewer_name: text(rec, 8, "reviewer_name", false)?,
        reviewer_email: text(rec, 9, "reviewer_email", false)?,
        response,
        helpfulness,
        has_photos: false,
    })
}

pub fn photo(rec: &Record) -> Parsed<PhotoRow> {
    expect_fields(rec, 3)?;
    Ok(PhotoRow {
        id: id(rec, 0, "id")?,
        review_id: id(rec, 1, "review_id")?,
        url: text(rec, 2, "url", true)?,
    })
}

pub fn characteristic(rec: &Record) -> Parsed<CharacteristicRow> {
    expect_fields(rec, 3)?;
    Ok(CharacteristicRow {
        id: id(rec, 0, "id")?,
        product_id: id(rec, 1, "product_id")?,
        name: text(rec, 2, "name", true)?,
    })
}

pub fn characteristic_review(rec: &Record) -> Parsed<CharacteristicReviewRow> {
    expect_fields(rec, 4)?;
    Ok(CharacteristicReviewRow {
        id: id(rec, 0, "id")?,
        characteristic_id: id(rec, 1, "characteristic_id")?,
        review_id: id(rec, 2, "review_id")?,
        value: small_range(rec, 3, "value")?,
    })
}

/// A row's values in the order of its table's COPY column list.
pub trait CopyRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)>;
}

impl CopyRow for ReviewRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.id,
            &self.product_id,
            &self.rating,
            &self.date,
            &self.summary,
            &self.body,
            &self.recommend,
            &self.reported,
            &self.reviewer_name,
            &self.reviewer_email,
            &self.response,
            &self.helpfulness,
            &self.has_photos,
        ]
    }
}

impl CopyRow for PhotoRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.id, &self.review_id, &self.url]
    }
}

impl CopyRow for CharacteristicRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.id, &self.product_id, &self.name]
    }
}

impl CopyRow for CharacteristicReviewRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.id,
            &self.characteristic_id,
            &self.review_id,
            &self.value,
        ]
    }
}
