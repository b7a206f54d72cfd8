//! A review to be posted, validated field by field. Whether its characteristic ids are exactly
//! the product's is checked against the database, inside the transaction that writes it.

use std::collections::BTreeMap;

use super::ProductId;
use crate::error::{Error, FieldViolation};

pub const MAX_SUMMARY_CHARS: usize = 60;
pub const MIN_BODY_CHARS: usize = 50;
pub const MAX_BODY_CHARS: usize = 1000;
pub const MAX_NAME_CHARS: usize = 60;
pub const MAX_EMAIL_CHARS: usize = 60;
pub const MAX_PHOTOS: usize = 5;
pub const MAX_URL_CHARS: usize = 2048;

/// A review as it arrives from a client, before validation.
#[derive(Debug, Clone, Default)]
pub struct RawNewReview {
    pub product_id: i32,
    pub rating: i32,
    pub summary: String,
    pub body: String,
    pub recommend: bool,
    pub name: String,
    pub email: String,
    pub photos: Vec<String>,
    pub characteristics: BTreeMap<i32, i32>,
}

/// A review whose every field is valid on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReview {
    pub product_id: ProductId,
    pub rating: i16,
    pub summary: String,
    pub body: String,
    pub recommend: bool,
    pub name: String,
    pub email: String,
    pub photos: Vec<String>,
    /// Characteristic id to its 1-5 value, in id order.
    pub characteristics: BTreeMap<i32, i16>,
}

impl NewReview {
    /// A SHA-256 digest of every field, each length-prefixed, so two reviews have the same one
    /// exactly when they are the same review.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut text = |t: &str| {
            h.update((t.len() as u64).to_be_bytes());
            h.update(t.as_bytes());
        };
        text(&self.summary);
        text(&self.body);
        text(&self.name);
        text(&self.email);
        h.update((self.photos.len() as u64).to_be_bytes());
        for photo in &self.photos {
            h.update((photo.len() as u64).to_be_bytes());
            h.update(photo.as_bytes());
        }
        h.update(self.product_id.get().to_be_bytes());
        h.update(self.rating.to_be_bytes());
        h.update([u8::from(self.recommend)]);
        for (id, value) in &self.characteristics {
            h.update(id.to_be_bytes());
            h.update(value.to_be_bytes());
        }
        h.finalize().into()
    }

    /// Validates every field and reports every violation at once. A bad `product_id` is the
    /// legacy error on its own, since clients match its exact text.
    pub fn parse(raw: RawNewReview) -> Result<Self, Error> {
        let product_id = ProductId::parse(raw.product_id)?;
        let mut v = Vec::new();

        let rating = match i16::try_from(raw.rating) {
            Ok(r @ 1..=5) => r,
            _ => {
                v.push(FieldViolation::new(
                    "rating",
                    "must be an integer from 1 to 5",
                ));
                0
            }
        };
        check_text(&mut v, "summary", &raw.summary, 0, MAX_SUMMARY_CHARS);
        check_text(&mut v, "body", &raw.body, MIN_BODY_CHARS, MAX_BODY_CHARS);
        check_text(&mut v, "name", &raw.name, 1, MAX_NAME_CHARS);
        if check_text(&mut v, "email", &raw.email, 1, MAX_EMAIL_CHARS) && !is_email(&raw.email) {
            v.push(FieldViolation::new("email", "must be an email address"));
        }
        if raw.photos.len() > MAX_PHOTOS {
            v.push(FieldViolation::new(
                "photos",
                format!("at most {MAX_PHOTOS} photos are allowed"),
            ));
        }
        for (i, url) in raw.photos.iter().enumerate() {
            if !is_http_url(url) {
                v.push(FieldViolation::new(
                    format!("photos[{i}]"),
                    "must be an http or https URL",
                ));
            }
        }
        let mut characteristics = BTreeMap::new();
        for (&id, &value) in &raw.characteristics {
            match i16::try_from(value) {
                Ok(value @ 1..=5) => {
                    characteristics.insert(id, value);
                }
                _ => v.push(FieldViolation::new(
                    format!("characteristics[{id}]"),
                    "must be an integer from 1 to 5",
                )),
            }
        }

        if !v.is_empty() {
            return Err(Error::Invalid(v));
        }
        Ok(Self {
            product_id,
            rating,
            summary: raw.summary,
            body: raw.body,
            recommend: raw.recommend,
            name: raw.name,
            email: raw.email,
            photos: raw.photos,
            characteristics,
        })
    }

    /// The violations of the rule that the rated characteristics are exactly `product_chars`.
    pub fn characteristic_violations(&self, product_chars: &[i32]) -> Vec<FieldViolation> {
        let foreign = self
            .characteristics
            .keys()
            .filter(|id| !product_chars.contains(id))
            .map(|id| {
                FieldViolation::new(
                    format!("characteristics[{id}]"),
                    format!(
                        "is not a characteristic of product {}",
                        self.product_id.get()
                    ),
                )
            });
        let missing = product_chars
            .iter()
            .filter(|id| !self.characteristics.contains_key(id))
            .map(|id| {
                FieldViolation::new(
                    format!("characteristics[{id}]"),
                    "is missing: every characteristic of the product must be rated",
                )
            });
        foreign.chain(missing).collect()
    }
}

/// Checks a text field's length in characters (and that it can be stored); returns whether it
/// passed.
fn check_text(
    v: &mut Vec<FieldViolation>,
    field: &str,
    text: &str,
    min: usize,
    max: usize,
) -> bool {
    let len = text.chars().count();
    let reason = if text.contains('\0') {
        "must not contain NUL characters".to_string()
    } else if min > 0 && text.trim().is_empty() {
        "is required".to_string()
    } else if len < min {
        format!("must be at least {min} characters (got {len})")
    } else if len > max {
        format!("must be at most {max} characters (got {len})")
    } else {
        return true;
    };
    v.push(FieldViolation::new(field, reason));
    false
}

/// A practical email check: one `@`, a non-empty local part, a dotted domain of non-empty labels,
/// and no white space.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !s.chars().any(char::is_whitespace)
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// An absolute http(s) URL with a host and no white space or control characters.
fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    let Some(rest) = rest else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    s.chars().count() <= MAX_URL_CHARS
        && !host.is_empty()
        && !host.starts_with(':')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> RawNewReview {
        RawNewReview {
            product_id: 1,
            rating: 5,
            summary: "Great".into(),
            body: "b".repeat(50),
            recommend: true,
            name: "jo".into(),
            email: "jo@example.com".into(),
            photos: vec!["https://example.com/a.jpg".into()],
            characteristics: BTreeMap::from([(1, 4), (2, 3)]),
        }
    }

    fn fields(raw: RawNewReview) -> Vec<String> {
        match NewReview::parse(raw) {
            Err(Error::Invalid(v)) => v.into_iter().map(|f| f.field).collect(),
            other => panic!("expected field violations, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_review_parses() {
        let r = NewReview::parse(valid()).unwrap();
        assert_eq!(r.rating, 5);
        assert_eq!(r.characteristics, BTreeMap::from([(1, 4), (2, 3)]));
    }

    #[test]
    fn every_bad_field_is_reported() {
        let raw = RawNewReview {
            rating: 7,
            summary: "s".repeat(61),
            body: "too short".into(),
            name: " ".into(),
            email: "not an email".into(),
            photos: vec!["ftp://x".into(), "https://".into()],
            characteristics: BTreeMap::from([(1, 0), (2, 6)]),
            ..valid()
        };
        assert_eq!(
            fields(raw),
            [
                "rating",
                "summary",
                "body",
                "name",
                "email",
                "photos[0]",
                "photos[1]",
                "characteristics[1]",
                "characteristics[2]"
            ]
        );
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let raw = RawNewReview {
            body: "é".repeat(50),
            summary: "ü".repeat(60),
            ..valid()
        };
        assert!(NewReview::parse(raw).is_ok());
    }

    #[test]
    fn emails_and_urls() {
        for good in ["a@b.co", "first.last@gmail.com", "x+y@sub.example.org"] {
            assert!(is_email(good), "{good}");
        }
        for bad in ["", "a@", "@b.co", "a@b", "a@@b.co", "a b@c.de", "a@b..co"] {
            assert!(!is_email(bad), "{bad}");
        }
        assert!(is_http_url("http://example.com"));
        assert!(is_http_url("https://images.example.com/p.jpg?w=975&q=80"));
        for bad in [
            "example.com/a.jpg",
            "https:///a",
            "https://a b",
            "javascript:alert(1)",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    #[test]
    fn characteristics_must_be_exactly_the_products() {
        let review = NewReview::parse(RawNewReview {
            characteristics: BTreeMap::from([(1, 4), (9, 3)]),
            ..valid()
        })
        .unwrap();
        let fields: Vec<_> = review
            .characteristic_violations(&[1, 2])
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(fields, ["characteristics[9]", "characteristics[2]"]);
        let ok = NewReview::parse(valid()).unwrap();
        assert!(ok.characteristic_violations(&[1, 2]).is_empty());
    }
}
