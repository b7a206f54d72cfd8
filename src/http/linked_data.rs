//! The aggregate rating as schema.org markup: `GET /v1/products/{product_id}/rating` with
//! `Accept: application/ld+json` answers a JSON-LD `Product` with its `AggregateRating` and the
//! first reviews (most relevant) as `Review` items, with the properties search engines document
//! for review snippets (`ratingValue`, `reviewCount`, `bestRating`, `worstRating`; a review's
//! `author` as a `Person`, `reviewRating`, `datePublished`, `reviewBody`, `name`). It is built
//! from the same JSON answers the v1 routes send (the rating and the first page, cache hits as a
//! rule), so it says what they say. The service knows no product names: the storefront that
//! renders the page sends `product_name` (required here), and may send `product_url` and `sku`.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::error::{Error, FieldViolation};

/// How many reviews the markup carries.
pub const MARKUP_REVIEWS: u32 = 5;

/// Whether `accept` asks for JSON-LD before plain JSON (any `application/ld+json` with a
/// non-zero quality).
pub fn wanted(accept: Option<&http::HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|a| a.to_str().ok()) else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/ld+json") && !refused
    })
}

/// What the storefront tells about the product.
pub struct Product<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub sku: &'a str,
}

/// The longest `product_name`, `product_url` and `sku` accepted.
pub const MAX_PRODUCT_NAME_CHARS: usize = 200;
pub const MAX_PRODUCT_URL_CHARS: usize = 2048;
pub const MAX_SKU_CHARS: usize = 100;

impl Product<'_> {
    /// Every violation: each field has a most length, a URL is http(s), and for the markup
    /// (`linked`) a name is required.
    pub fn check(&self, linked: bool) -> Result<(), Error> {
        let mut violations = Vec::new();
        let too_long = |text: &str, max: usize| text.chars().count() > max;
        if linked && self.name.trim().is_empty() {
            violations.push(FieldViolation::new(
                "product_name",
                "is required for the JSON-LD representation (the service knows no product names)",
            ));
        } else if too_long(self.name, MAX_PRODUCT_NAME_CHARS) {
            violations.push(FieldViolation::new(
                "product_name",
                format!("must be at most {MAX_PRODUCT_NAME_CHARS} characters"),
            ));
        }
        if too_long(self.url, MAX_PRODUCT_URL_CHARS)
            || !(self.url.is_empty()
                || self.url.starts_with("https://")
                || self.url.starts_with("http://"))
        {
            violations.push(FieldViolation::new(
                "product_url",
                format!("must be an http(s) URL of at most {MAX_PRODUCT_URL_CHARS} characters"),
            ));
        }
        if too_long(self.sku, MAX_SKU_CHARS) {
            violations.push(FieldViolation::new(
                "sku",
                format!("must be at most {MAX_SKU_CHARS} characters"),
            ));
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(violations))
        }
    }
}

/// The `Product` markup from the v1 rating answer and the first page of reviews (both the JSON
/// the v1 routes send).
pub fn product_markup(product: &Product, rating: &[u8], page: &[u8]) -> Result<Bytes, Error> {
    let parse = |bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes)
            .map_err(|e| Error::Internal(format!("an answer of the service is not JSON: {e}")))
    };
    let (rating, page) = (parse(rating)?, parse(page)?);
    let mut markup = Map::new();
    markup.insert("@context".into(), json!("https://schema.org"));
    markup.insert("@type".into(), json!("Product"));
    markup.insert("name".into(), json!(product.name));
    if !product.url.is_empty() {
        markup.insert("url".into(), json!(product.url));
    }
    if !product.sku.is_empty() {
        markup.insert("sku".into(), json!(product.sku));
    }
    // Without reviews there is no rating to mark up (search engines reject a zero count).
    if rating["review_count"].as_i64().unwrap_or(0) > 0 {
        markup.insert(
            "aggregateRating".into(),
            json!({
                "@type": "AggregateRating",
                "ratingValue": rating["average_rating"],
                "reviewCount": rating["review_count"],
                "bestRating": 5,
                "worstRating": 1,
            }),
        );
        let reviews: Vec<Value> = page["reviews"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                json!({
                    "@type": "Review",
                    "author": {"@type": "Person", "name": r["reviewer_name"]},
                    "datePublished": r["date"].as_str().map(|d| d.get(..10).unwrap_or(d)),
                    "name": r["summary"],
                    "reviewBody": r["body"],
                    "reviewRating": {
                        "@type": "Rating",
                        "ratingValue": r["rating"],
                        "bestRating": 5,
                        "worstRating": 1,
                    },
                })
            })
            .collect();
        markup.insert("review".into(), Value::Array(reviews));
    }
    Ok(serde_json::to_vec(&Value::Object(markup))
        .expect("a JSON value serialises")
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_ld_is_asked_for_by_media_type_and_quality() {
        let hv = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert!(wanted(Some(&hv("application/ld+json"))));
        assert!(wanted(Some(&hv("text/html, application/LD+JSON;q=0.9"))));
        assert!(!wanted(Some(&hv("application/ld+json;q=0"))));
        assert!(!wanted(Some(&hv("application/json"))));
        assert!(!wanted(None));
    }
}
