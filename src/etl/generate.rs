//! `reviews gen-data`: a deterministic data set of the storefront's shape and size (the real
//! exports are not available), optionally with dirty rows of every kind the loader must set
//! aside. The dirty rows are extra rows, listed in `dirty.csv` (file, line, kind), so the clean
//! rows are the same whatever the dirt.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::rows::{
    CHARACTERISTICS_HEADER, CHARACTERISTIC_REVIEWS_HEADER, PHOTOS_HEADER, REVIEWS_HEADER,
};

/// The real set's product count.
pub const FULL_PRODUCTS: u32 = 1_000_011;

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub out: PathBuf,
    pub products: u32,
    pub seed: u64,
    /// Chance, per clean row, that a dirty row follows it.
    pub dirty_rate: f64,
}

/// How many rows of each file were written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GenReport {
    pub reviews: u64,
    pub photos: u64,
    pub characteristics: u64,
    pub characteristic_reviews: u64,
    pub dirty: u64,
}

/// SplitMix64: small, fast, and the same sequence on every machine for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() as usize % items.len()]
    }
}

const NAMES: [&str; 6] = ["Fit", "Length", "Comfort", "Quality", "Size", "Width"];
const SUMMARIES: &[&str] = &[
    "This product was great!",
    "This product was ok!",
    "I am liking these glasses",
    "Fits \"true to size\", mostly",
    "Meh.",
    "Two thumbs up,  would buy again",
    "It's fine, I guess",
    "Not what I expected",
];
const SENTENCES: &[&str] = &[
    "I really did or did not like this product based on whether it was sustainably sourced.",
    "Then I found out that its made from nothing at all.",
    "They are very dark.  But that's good because I'm in very sunny spots.",
    "Runs a bit small, so order a size up; the material is soft, \"as advertised\".",
    "Shipping took forever, but it's comfortable and well made.",
    "My sister says it's the comfiest thing she has, and she's picky.",
];
const REVIEWERS: &[&str] = &[
    "funtime",
    "mymainstreammother",
    "bigbrotherbenjamin",
    "shortandsweeet",
    "o'malley",
];
const RESPONSES: &[&str] = &[
    "Glad you're enjoying the product!",
    "Sorry to hear that, please contact us, we'll make it right.",
];

/// 2019-01-01 and 2021-12-31 in epoch milliseconds.
const FIRST_DATE: u64 = 1_546_300_800_000;
const LAST_DATE: u64 = 1_640_995_199_999;

/// Ids of dirty rows come from far above the clean ones, so they never collide with them.
const DIRTY_IDS: i64 = 1_500_000_000;

/// A data-set file being written, counting its lines.
struct Out {
    w: BufWriter<File>,
    name: &'static str,
    line: u64,
}

impl Out {
    fn create(dir: &Path, name: &'static str, header: &str) -> std::io::Result<Self> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(dir.join(name))?);
        writeln!(w, "{header}")?;
        Ok(Self { w, name, line: 1 })
    }

    fn row(&mut self, args: std::fmt::Arguments) -> std::io::Result<u64> {
        self.w.write_fmt(args)?;
        self.w.write_all(b"\n")?;
        self.line += 1;
        Ok(self.line)
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn generate(cfg: &GenConfig) -> anyhow::Result<GenReport> {
    std::fs::create_dir_all(&cfg.out)?;
    let mut rng = Rng(cfg.seed);
    let mut reviews = Out::create(&cfg.out, "reviews.csv", REVIEWS_HEADER)?;
    let mut photos = Out::create(&cfg.out, "reviews_photos.csv", PHOTOS_HEADER)?;
    let mut chars = Out::create(&cfg.out, "characteristics.csv", CHARACTERISTICS_HEADER)?;
    let mut rated = Out::create(
        &cfg.out,
        "characteristic_reviews.csv",
        CHARACTERISTIC_REVIEWS_HEADER,
    )?;
    let mut dirty = BufWriter::new(File::create(cfg.out.join("dirty.csv"))?);
    writeln!(dirty, "file,line,kind")?;
    let mut report = GenReport::default();
    let (mut review_id, mut char_id, mut photo_id, mut rated_id) = (0i64, 0i64, 0i64, 0i64);
    let mut held_photo: Option<String> = None;

    for product in 1..=i64::from(cfg.products) {
        // 1-5 characteristics (3.35 on average, as in the real set), distinct names.
        let k = match rng.range(1, 100) {
            1..=10 => 1,
            11..=25 => 2,
            26..=50 => 3,
            51..=80 => 4,
            _ => 5,
        };
        let mut names = NAMES;
        for i in 0..k {
            let j = i + rng.range(0, (NAMES.len() - 1 - i) as u64) as usize;
            names.swap(i, j);
        }
        let first_char = char_id + 1;
        for name in &names[..k] {
            char_id += 1;
            chars.row(format_args!("{char_id},{product},{}", quote(name)))?;
            report.characteristics += 1;
        }
        // Most products have a few reviews, some hundreds, a quarter none.
        let count = if rng.chance(0.25) {
            0
        } else if rng.chance(0.972) {
            rng.range(1, 9)
        } else {
            (20f64 * 15f64.powf(rng.unit())) as u64
        };
        for _ in 0..count {
            review_id += 1;
            let rating = [1, 2, 3, 3, 4, 4, 4, 5, 5, 5][rng.range(0, 9) as usize];
            let date = rng.range(FIRST_DATE, LAST_DATE);
            let mut body = String::new();
            while body.len() < 50 || (body.len() < 400 && rng.chance(0.5)) {
                if !body.is_empty() {
                    body.push_str("  ");
                }
                body.push_str(rng.pick(SENTENCES));
            }
            let response = if rng.chance(0.15) {
                quote(rng.pick(RESPONSES))
            } else {
                "null".to_string()
            };
            reviews.row(format_args!(
                "{review_id},{product},{rating},{date},{},{},{},{},{},\"first.last@gmail.com\",{response},{}",
                quote(rng.pick(SUMMARIES)),
                quote(&body),
                rng.chance(0.75),
                rng.chance(0.03),
                quote(&format!("{}{}", rng.pick(REVIEWERS), rng.range(1, 999))),
                rng.range(0, 30) * u64::from(rng.chance(0.6)),
            ))?;
            report.reviews += 1;
            if rng.chance(cfg.dirty_rate) {
                dirty_review(&mut reviews, &mut dirty, &mut rng, product, &mut report)?;
            }
            for c in first_char..=char_id {
                rated_id += 1;
                rated.row(format_args!(
                    "{rated_id},{c},{review_id},{}",
                    rng.range(1, 5)
                ))?;
                report.characteristic_reviews += 1;
                if rng.chance(cfg.dirty_rate) {
                    dirty_rating(&mut rated, &mut dirty, &mut rng, c, review_id, &mut report)?;
                }
            }
            if rng.chance(0.23) {
                for _ in 0..rng.range(1, 3) {
                    photo_id += 1;
                    let row = format!(
                        "{photo_id},{review_id},\"https://images.example.com/photo-{photo_id}?ixlib=rb-1.2.1&w=975&q=80\""
                    );
                    report.photos += 1;
                    // Now and then a photo row comes after the next one, as in the real file.
                    match held_photo.take() {
                        Some(held) => {
                            photos.row(format_args!("{row}"))?;
                            photos.row(format_args!("{held}"))?;
                        }
                        None if photo_id % 997 == 0 => held_photo = Some(row),
                        None => {
                            photos.row(format_args!("{row}"))?;
                        }
                    }
                    if rng.chance(cfg.dirty_rate) {
                        dirty_photo(&mut photos, &mut dirty, &mut rng, review_id, &mut report)?;
                    }
                }
            }
        }
    }
    if let Some(held) = held_photo {
        photos.row(format_args!("{held}"))?;
    }
    for out in [&mut reviews, &mut photos, &mut chars, &mut rated] {
        out.w.flush()?;
    }
    dirty.flush()?;
    Ok(report)
}

fn note(
    dirty: &mut BufWriter<File>,
    out: &Out,
    kind: &str,
    report: &mut GenReport,
) -> std::io::Result<()> {
    report.dirty += 1;
    writeln!(dirty, "{},{},{kind}", out.name, out.line)
}

fn dirty_review(
    out: &mut Out,
    dirty: &mut BufWriter<File>,
    rng: &mut Rng,
    product: i64,
    report: &mut GenReport,
) -> std::io::Result<()> {
    let id = DIRTY_IDS + report.dirty as i64;
    let good_tail = "\"s\",\"a body that is long enough to be a real review, but it is not\",true,false,\"n\",\"e@x.co\",null,0";
    let (kind, row) = match rng.range(0, 4) {
        0 => (
            "field count",
            format!("{id},{product},5,1600000000000,\"s\",\"b\",true"),
        ),
        1 => (
            "unparsable number",
            format!("{id},{product}x,5,1600000000000,{good_tail}"),
        ),
        2 => (
            "rating out of range",
            format!(
                "{id},{product},{},1600000000000,{good_tail}",
                if rng.chance(0.5) { 0 } else { 9 }
            ),
        ),
        3 => (
            "bad date",
            format!("{id},{product},4,yesterday,{good_tail}"),
        ),
        _ => (
            "unterminated quote",
            format!("{id},{product},4,1600000000000,\"never closed,true,false,n,e,null,0"),
        ),
    };
    out.row(format_args!("{row}"))?;
    note(dirty, out, kind, report)
}

fn dirty_rating(
    out: &mut Out,
    dirty: &mut BufWriter<File>,
    rng: &mut Rng,
    characteristic: i64,
    review: i64,
    report: &mut GenReport,
) -> std::io::Result<()> {
    let id = DIRTY_IDS + report.dirty as i64;
    let (kind, row) = match rng.range(0, 2) {
        0 => (
            "dangling characteristic id",
            format!("{id},{},{review},3", DIRTY_IDS + 7),
        ),
        1 => (
            "dangling review id",
            format!("{id},{characteristic},{},3", DIRTY_IDS + 7),
        ),
        _ => (
            "rating out of range",
            format!("{id},{characteristic},{review},9"),
        ),
    };
    out.row(format_args!("{row}"))?;
    note(dirty, out, kind, report)
}

fn dirty_photo(
    out: &mut Out,
    dirty: &mut BufWriter<File>,
    rng: &mut Rng,
    review: i64,
    report: &mut GenReport,
) -> std::io::Result<()> {
    let id = DIRTY_IDS + report.dirty as i64;
    let (kind, row) = if rng.chance(0.5) {
        (
            "dangling review id",
            format!(
                "{id},{},\"https://images.example.com/x.jpg\"",
                DIRTY_IDS + 7
            ),
        )
    } else {
        ("field count", format!("{id},{review}"))
    };
    out.row(format_args!("{row}"))?;
    note(dirty, out, kind, report)
}
