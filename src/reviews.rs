//! The domain: validated request types and the rules of the contract. Wire input becomes these
//! types at the edge; past it an invalid product id, page or review cannot exist.

mod new_review;
mod page;

pub use page::{
    page_size, Filter, Page, PageQuery, Position, RawPageQuery, StarCounts, Tokens, MAX_RATINGS,
    MAX_TOKEN_CHARS,
};

pub use new_review::{
    NewReview, RawNewReview, MAX_BODY_CHARS, MAX_EMAIL_CHARS, MAX_NAME_CHARS, MAX_PHOTOS,
    MAX_SUMMARY_CHARS, MAX_URL_CHARS, MIN_BODY_CHARS,
};

use chrono::{DateTime, Utc};

use crate::error::{Error, FieldViolation};

/// The largest page size a client can get; larger requests are clamped to it.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The page size when a request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 5;

/// A product id: a positive 32-bit integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProductId(i32);

impl ProductId {
    /// Fails with the legacy `invalid product_id` error for zero or negative ids.
    pub fn parse(raw: i32) -> Result<Self, Error> {
        if raw > 0 {
            Ok(Self(raw))
        } else {
            Err(Error::InvalidProductId)
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// A review id: a positive 32-bit integer. Any other value names no review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewId(i32);

impl ReviewId {
    pub fn parse(raw: i32) -> Result<Self, Error> {
        if raw > 0 {
            Ok(Self(raw))
        } else {
            Err(Error::invalid("review_id", "must be a positive integer"))
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// The longest voter name a storefront may send (a session or customer id).
pub const MAX_VOTER_BYTES: usize = 256;

/// A named voter, as the votes table keeps it: the HMAC-SHA256 of the name under the service's
/// voter key, so the table never holds a session or customer id (and, with a secret key, one
/// cannot be found again by hashing candidates).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Voter([u8; 32]);

impl Voter {
    /// The voter named `name` (1 to [`MAX_VOTER_BYTES`] bytes), keyed with `key`.
    pub fn new(name: &[u8], key: &[u8]) -> Result<Self, Error> {
        use hmac::{KeyInit, Mac};
        if name.is_empty() || name.len() > MAX_VOTER_BYTES {
            return Err(Error::invalid(
                "reviews-voter",
                format!("must be 1 to {MAX_VOTER_BYTES} bytes"),
            ));
        }
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(name);
        Ok(Self(mac.finalize().into_bytes().into()))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Voter(..)")
    }
}

/// The most bytes an `Idempotency-Key` may have.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// A CreateReview's `Idempotency-Key`, as the keys table holds it: the SHA-256 of the key, and
/// the SHA-256 of the request it came with, so that a key sent again with another review is told
/// apart from a retry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: [u8; 32],
    request: [u8; 32],
}

impl IdempotencyKey {
    /// The key `key` (1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] visible ASCII characters, such as a
    /// UUID) sent with `review`.
    pub fn new(key: &[u8], review: &new_review::NewReview) -> Result<Self, Error> {
        use sha2::Digest;
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
            || !key.iter().all(u8::is_ascii_graphic)
        {
            return Err(Error::invalid(
                "Idempotency-Key",
                format!(
                    "must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters, e.g. a UUID"
                ),
            ));
        }
        Ok(Self {
            key: sha2::Sha256::digest(key).into(),
            request: review.digest(),
        })
    }

    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    pub fn request(&self) -> &[u8; 32] {
        &self.request
    }
}

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyKey(..)")
    }
}

/// The order of a review list; every order ends with the review id descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Sort {
    #[default]
    Relevant,
    Newest,
    Helpful,
}

/// Which page of a list, 1-based, and how many reviews a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRequest {
    page: u32,
    size: u32,
}

impl PageRequest {
    /// `page` defaults to 1 and `count` to 5; both must be positive; `count` is clamped to
    /// [`MAX_PAGE_SIZE`]. Every violation is reported, not only the first.
    pub fn parse(page: Option<i32>, count: Option<i32>) -> Result<Self, Error> {
        let mut violations = Vec::new();
        let page = match page {
            None => 1,
            Some(p) if p > 0 => p as u32,
            Some(_) => {
                violations.push(FieldViolation::new("page", "must be a positive integer"));
                1
            }
        };
        let size = match count {
            None => DEFAULT_PAGE_SIZE,
            Some(c) if c > 0 => (c as u32).min(MAX_PAGE_SIZE),
            Some(_) => {
                violations.push(FieldViolation::new("count", "must be a positive integer"));
                DEFAULT_PAGE_SIZE
            }
        };
        if violations.is_empty() {
            Ok(Self { page, size })
        } else {
            Err(Error::Invalid(violations))
        }
    }

    /// The 1-based page number.
    pub fn page(self) -> u32 {
        self.page
    }

    /// The page size after clamping.
    pub fn size(self) -> u32 {
        self.size
    }

    /// How many reviews come before this page.
    pub fn offset(self) -> i64 {
        (i64::from(self.page) - 1) * i64::from(self.size)
    }
}

/// Which reviews a list asks for: a product, a page, an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListQuery {
    pub product: ProductId,
    pub page: PageRequest,
    pub sort: Sort,
}

/// One listed review, as the store returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub id: i32,
    pub rating: i16,
    pub summary: String,
    pub recommend: bool,
    pub response: Option<String>,
    pub body: String,
    pub date: DateTime<Utc>,
    pub reviewer_name: String,
    pub helpfulness: i32,
    pub photos: Vec<Photo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Photo {
    pub id: i32,
    pub url: String,
}

/// A product's rating breakdown and characteristic averages over its listable reviews.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Review counts for 1 to 5 stars.
    pub ratings: [i64; 5],
    pub recommended_false: i64,
    pub recommended_true: i64,
    pub characteristics: Vec<CharacteristicMeta>,
}

/// A product's kept counts over its listable reviews: its aggregate rating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rating {
    /// Review counts for 1 to 5 stars.
    pub ratings: [i64; 5],
    pub recommended_false: i64,
    pub recommended_true: i64,
}

impl Rating {
    /// The number of listable reviews.
    pub fn count(&self) -> i64 {
        self.ratings.iter().sum()
    }

    /// The average star rating, exact to 16 digits; `None` without reviews.
    pub fn average(&self) -> Option<String> {
        let stars: i64 = (1..=5).zip(self.ratings).map(|(star, n)| star * n).sum();
        format_average(stars, self.count())
    }

    /// The share of reviews that recommend the product, exact to 16 digits; `None` without
    /// reviews.
    pub fn recommend_ratio(&self) -> Option<String> {
        format_average(
            self.recommended_true,
            self.recommended_true + self.recommended_false,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharacteristicMeta {
    pub id: i32,
    pub name: String,
    pub value_sum: i64,
    pub value_count: i64,
}

impl CharacteristicMeta {
    /// The average value with exactly 16 fractional digits, or `None` when nobody rated it.
    pub fn average(&self) -> Option<String> {
        format_average(self.value_sum, self.value_count)
    }
}

/// `sum / count` as a decimal string with exactly 16 fractional digits, rounded half up, computed
/// in integers so that it is exact (10/3 is "3.3333333333333333", 7/2 is "3.5000000000000000").
pub fn format_average(sum: i64, count: i64) -> Option<String> {
    if count <= 0 || sum < 0 {
        return None;
    }
    const SCALE: u128 = 10_000_000_000_000_000; // 10^16
    let (sum, count) = (sum as u128, count as u128);
    let scaled = (sum * SCALE * 10 / count + 5) / 10;
    Some(format!("{}.{:016}", scaled / SCALE, scaled % SCALE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aggregate_rating_is_exact() {
        let rating = Rating {
            ratings: [1, 0, 0, 1, 1],
            recommended_false: 1,
            recommended_true: 2,
        };
        assert_eq!(rating.count(), 3);
        assert_eq!(rating.average().unwrap(), "3.3333333333333333");
        assert_eq!(rating.recommend_ratio().unwrap(), "0.6666666666666667");
        assert_eq!(Rating::default().average(), None);
        assert_eq!(Rating::default().recommend_ratio(), None);
    }

    #[test]
    fn averages_have_sixteen_rounded_digits() {
        assert_eq!(format_average(10, 3).unwrap(), "3.3333333333333333");
        assert_eq!(format_average(7, 2).unwrap(), "3.5000000000000000");
        assert_eq!(format_average(5, 3).unwrap(), "1.6666666666666667");
        assert_eq!(format_average(4, 1).unwrap(), "4.0000000000000000");
        assert_eq!(format_average(0, 0), None);
    }

    #[test]
    fn page_request_defaults_clamps_and_rejects() {
        let p = PageRequest::parse(None, None).unwrap();
        assert_eq!((p.page(), p.size(), p.offset()), (1, 5, 0));
        let p = PageRequest::parse(Some(3), Some(1_000_000)).unwrap();
        assert_eq!((p.page(), p.size(), p.offset()), (3, 1000, 2000));
        let Err(Error::Invalid(v)) = PageRequest::parse(Some(0), Some(-1)) else {
            panic!("page 0 and count -1 must be rejected");
        };
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["page", "count"]);
    }

    #[test]
    fn ids_must_be_positive() {
        assert!(matches!(ProductId::parse(0), Err(Error::InvalidProductId)));
        assert!(matches!(ProductId::parse(-4), Err(Error::InvalidProductId)));
        assert_eq!(ProductId::parse(7).unwrap().get(), 7);
        assert!(matches!(ReviewId::parse(0), Err(Error::Invalid(_))));
    }
}
