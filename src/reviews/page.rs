//! The v1 list: a filter over star ratings and photos, and keyset cursors. A page starts strictly
//! after the position of the last review the previous page showed, in the sort's order, so a
//! page costs an index range scan from that position at any depth, and reviews inserted during a
//! walk never shift the others (unlike an offset).
//!
//! The cursor travels as an opaque `page_token`: base64url of a version byte, the request it
//! continues (product, sort, filter) and the position, then the first 16 bytes of an
//! HMAC-SHA256 of all that under the service's key. A token that was altered, is of another
//! version, or is used with another product, sort or filter is refused, never turned into a page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};

use super::{ProductId, Review, Sort, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::error::{Error, FieldViolation};

/// The most rating values a filter may list (one per star).
pub const MAX_RATINGS: usize = 5;

/// Which of a product's listable reviews a v1 list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Filter {
    /// Bit `k - 1` set: reviews with `k` stars are shown.
    stars: u8,
    /// `Some(true)`: only reviews with photos; `Some(false)`: only those without.
    photos: Option<bool>,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            stars: 0b1_1111,
            photos: None,
        }
    }
}

impl Filter {
    /// Reviews with one of `ratings` (any when empty; each 1 to 5, at most five values) and,
    /// when `has_photos` is given, with or without photos.
    pub fn parse(ratings: &[i32], has_photos: Option<bool>) -> Result<Self, FieldViolation> {
        if ratings.len() > MAX_RATINGS {
            return Err(FieldViolation::new(
                "rating",
                format!("must list at most {MAX_RATINGS} values"),
            ));
        }
        let mut stars = 0u8;
        for &r in ratings {
            if !(1..=5).contains(&r) {
                return Err(FieldViolation::new("rating", "must be from 1 to 5"));
            }
            stars |= 1 << (r - 1);
        }
        Ok(Self {
            stars: if stars == 0 { 0b1_1111 } else { stars },
            photos: has_photos,
        })
    }

    /// The star ratings shown, ascending.
    pub fn stars(self) -> impl Iterator<Item = i16> {
        (1..=5).filter(move |k| self.stars & (1 << (k - 1)) != 0)
    }

    /// The (stars, has photos) pairs the filter admits: one index range per pair.
    pub fn branches(self) -> (Vec<i16>, Vec<bool>) {
        let photo_values: &[bool] = match self.photos {
            None => &[false, true],
            Some(true) => &[true],
            Some(false) => &[false],
        };
        self.stars()
            .flat_map(|k| photo_values.iter().map(move |&p| (k, p)))
            .unzip()
    }

    /// How many reviews match, from a product's kept counts.
    pub fn total(self, counts: &StarCounts) -> i64 {
        self.stars()
            .map(|k| {
                let (all, photos) = (counts.all[k as usize - 1], counts.photos[k as usize - 1]);
                match self.photos {
                    None => all,
                    Some(true) => photos,
                    Some(false) => all - photos,
                }
            })
            .sum()
    }

    /// The filter in a cache key: its byte, as page tokens hold it.
    pub fn key(self) -> String {
        format!("{:02x}", self.to_byte())
    }

    /// The star bits, and the photo condition in bits 5 and 6.
    fn to_byte(self) -> u8 {
        self.stars
            | match self.photos {
                None => 0,
                Some(true) => 1 << 5,
                Some(false) => 2 << 5,
            }
    }
}

/// A product's listable reviews per star: all of them, and those with photos.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StarCounts {
    pub all: [i64; 5],
    pub photos: [i64; 5],
}

/// Where a page starts: just after the review with this sort key, date and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The sort's leading key: helpfulness (`helpful`), the bits of the relevance (`relevant`),
    /// 0 (`newest`, whose key is the date).
    pub key: i64,
    /// Microseconds since the epoch.
    pub date_us: i64,
    pub id: i32,
}

impl Position {
    /// The position of `review` (whose relevance is `relevance`) in `sort`'s order.
    pub fn of(review: &Review, relevance: f64, sort: Sort) -> Self {
        Self {
            key: match sort {
                Sort::Newest => 0,
                Sort::Helpful => i64::from(review.helpfulness),
                Sort::Relevant => relevance.to_bits() as i64,
            },
            date_us: review.date.timestamp_micros(),
            id: review.id,
        }
    }

    pub fn helpfulness(self) -> i32 {
        self.key as i32
    }

    pub fn relevance(self) -> f64 {
        f64::from_bits(self.key as u64)
    }

    pub fn date(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.date_us).unwrap_or_default()
    }
}

/// A v1 list request once checked: a product, an order, a filter, a page size and, past the
/// first page, the position the page starts after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageQuery {
    pub product: ProductId,
    pub sort: Sort,
    pub filter: Filter,
    pub size: u32,
    pub after: Option<Position>,
}

/// A v1 list request as the faces read it, before its token is checked (which takes the
/// service's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPageQuery {
    pub product: ProductId,
    pub sort: Sort,
    pub filter: Filter,
    pub size: u32,
    pub token: String,
}

/// The page size of a v1 request: [`DEFAULT_PAGE_SIZE`] for 0, at most [`MAX_PAGE_SIZE`].
pub fn page_size(raw: i32) -> Result<u32, FieldViolation> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > 0 => Ok((n as u32).min(MAX_PAGE_SIZE)),
        _ => Err(FieldViolation::new(
            "page_size",
            "must not be negative (0 is the default size)",
        )),
    }
}

/// The longest `page_token` accepted (a token of this version has 58 characters).
pub const MAX_TOKEN_CHARS: usize = 128;

const TOKEN_VERSION: u8 = 1;
const TAG_BYTES: usize = 16;
const BODY_BYTES: usize = 1 + 4 + 1 + 1 + 8 + 8 + 4;

/// Makes and checks page tokens under one key.
#[derive(Clone)]
pub struct Tokens {
    key: hmac::Hmac<sha2::Sha256>,
}

impl Tokens {
    /// Tokens under a key derived from `secret` (the voter key: every replica has it), so a
    /// token made by one replica is good on all of them.
    pub fn new(secret: &[u8]) -> Self {
        let mut derive =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        derive.update(b"reviews.v1 page token");
        let key = derive.finalize().into_bytes();
        Self {
            key: hmac::Hmac::new_from_slice(&key).expect("HMAC takes any key length"),
        }
    }

    /// The token of the page after `after` in the list `query` asks for.
    pub fn encode(&self, query: &PageQuery, after: Position) -> String {
        let body = body(query, after);
        let mut token = body.to_vec();
        token.extend_from_slice(&self.tag(&body));
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The query `raw` asks for: the first page without a token, else the page its token
    /// continues, if the token is this service's and was made for the same list.
    pub fn decode(&self, raw: RawPageQuery) -> Result<PageQuery, Error> {
        let mut query = PageQuery {
            product: raw.product,
            sort: raw.sort,
            filter: raw.filter,
            size: raw.size,
            after: None,
        };
        if raw.token.is_empty() {
            return Ok(query);
        }
        let invalid = || {
            Error::invalid(
                "page_token",
                "is not a token of this list (a next_page_token, with the same product, sort \
                 and filter)",
            )
        };
        if raw.token.len() > MAX_TOKEN_CHARS {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(&raw.token).map_err(|_| invalid())?;
        if bytes.len() != BODY_BYTES + TAG_BYTES || bytes[0] != TOKEN_VERSION {
            return Err(invalid());
        }
        let (body_bytes, tag) = bytes.split_at(BODY_BYTES);
        let mut check = self.key.clone();
        check.update(body_bytes);
        check.verify_truncated_left(tag).map_err(|_| invalid())?;
        let after = Position {
            key: i64::from_be_bytes(body_bytes[7..15].try_into().expect("8 bytes")),
            date_us: i64::from_be_bytes(body_bytes[15..23].try_into().expect("8 bytes")),
            id: i32::from_be_bytes(body_bytes[23..27].try_into().expect("4 bytes")),
        };
        // The token names the list it was made for: the same product, sort and filter.
        if body(&query, after)[..] != body_bytes[..] {
            return Err(invalid());
        }
        query.after = Some(after);
        Ok(query)
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.key.clone();
        mac.update(body);
        let full = mac.finalize().into_bytes();
        full[..TAG_BYTES].try_into().expect("16 of 32 bytes")
    }
}

fn body(query: &PageQuery, after: Position) -> [u8; BODY_BYTES] {
    let mut b = [0u8; BODY_BYTES];
    b[0] = TOKEN_VERSION;
    b[1..5].copy_from_slice(&query.product.get().to_be_bytes());
    b[5] = match query.sort {
        Sort::Relevant => 0,
        Sort::Newest => 1,
        Sort::Helpful => 2,
    };
    b[6] = query.filter.to_byte();
    b[7..15].copy_from_slice(&after.key.to_be_bytes());
    b[15..23].copy_from_slice(&after.date_us.to_be_bytes());
    b[23..27].copy_from_slice(&after.id.to_be_bytes());
    b
}

/// A v1 page: its reviews, the position of its last one when more follow, and the filter's
/// total.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub reviews: Vec<Review>,
    pub next: Option<Position>,
    pub total: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(token: &str) -> RawPageQuery {
        RawPageQuery {
            product: ProductId::parse(7).unwrap(),
            sort: Sort::Helpful,
            filter: Filter::parse(&[4, 5], Some(true)).unwrap(),
            size: 10,
            token: token.into(),
        }
    }

    #[test]
    fn a_token_continues_its_own_list_only() {
        let tokens = Tokens::new(b"a key of sixteen bytes");
        let first = tokens.decode(query("")).unwrap();
        assert_eq!(first.after, None);
        let at = Position {
            key: 3,
            date_us: 1_596_080_481_467_000,
            id: 42,
        };
        let token = tokens.encode(&first, at);
        assert_eq!(token.len(), 58);
        assert_eq!(tokens.decode(query(&token)).unwrap().after, Some(at));
        // Another page size is the same list.
        let mut resized = query(&token);
        resized.size = 50;
        assert_eq!(tokens.decode(resized).unwrap().after, Some(at));

        let refused = |raw: RawPageQuery| matches!(tokens.decode(raw), Err(Error::Invalid(_)));
        let mut other = query(&token);
        other.sort = Sort::Newest;
        assert!(refused(other));
        let mut other = query(&token);
        other.filter = Filter::parse(&[5], Some(true)).unwrap();
        assert!(refused(other));
        let mut other = query(&token);
        other.product = ProductId::parse(8).unwrap();
        assert!(refused(other));
        // Any changed character, a cut token, junk, another key's token.
        for i in 0..token.len() {
            let mut t = token.clone().into_bytes();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            assert!(refused(query(std::str::from_utf8(&t).unwrap())), "at {i}");
        }
        assert!(refused(query(&token[..40])));
        assert!(refused(query("not a token!")));
        let foreign = Tokens::new(b"another key, also long").encode(&first, at);
        assert!(refused(query(&foreign)));
    }

    #[test]
    fn filters_admit_their_branches_and_add_up_their_totals() {
        let counts = StarCounts {
            all: [1, 2, 3, 4, 5],
            photos: [0, 1, 1, 2, 5],
        };
        assert_eq!(Filter::default().total(&counts), 15);
        assert_eq!(Filter::default().branches().0.len(), 10);
        let f = Filter::parse(&[5, 4, 4], Some(false)).unwrap();
        assert_eq!(f.branches(), (vec![4, 5], vec![false, false]));
        assert_eq!(f.total(&counts), 2);
        assert_eq!(Filter::parse(&[], Some(true)).unwrap().total(&counts), 9);
        assert!(Filter::parse(&[0], None).is_err());
        assert!(Filter::parse(&[6], None).is_err());
        assert!(Filter::parse(&[1, 2, 3, 4, 5, 5], None).is_err());
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(i32::MAX).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
