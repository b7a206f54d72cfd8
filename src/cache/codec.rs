//! The compact encoding of cached values: protobuf messages that mirror the domain types
//! exactly, so a hit decodes to what the database would have returned.

use bytes::Bytes;
use prost::Message;

use crate::reviews::{CharacteristicMeta, Meta, Photo, Review};

/// A value the cache can store.
pub trait Cacheable: Sized {
    fn encode(&self) -> Bytes;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

#[derive(Clone, PartialEq, Message)]
struct ReviewList {
    #[prost(message, repeated, tag = "1")]
    reviews: Vec<CachedReview>,
}

#[derive(Clone, PartialEq, Message)]
struct CachedReview {
    #[prost(int32, tag = "1")]
    id: i32,
    #[prost(int32, tag = "2")]
    rating: i32,
    #[prost(string, tag = "3")]
    summary: String,
    #[prost(bool, tag = "4")]
    recommend: bool,
    #[prost(string, optional, tag = "5")]
    response: Option<String>,
    #[prost(string, tag = "6")]
    body: String,
    /// Microseconds since the epoch.
    #[prost(int64, tag = "7")]
    date_micros: i64,
    #[prost(string, tag = "8")]
    reviewer_name: String,
    #[prost(int32, tag = "9")]
    helpfulness: i32,
    #[prost(int32, repeated, tag = "10")]
    photo_ids: Vec<i32>,
    #[prost(string, repeated, tag = "11")]
    photo_urls: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct CachedMeta {
    #[prost(int64, repeated, tag = "1")]
    ratings: Vec<i64>,
    #[prost(int64, tag = "2")]
    recommended_false: i64,
    #[prost(int64, tag = "3")]
    recommended_true: i64,
    #[prost(message, repeated, tag = "4")]
    characteristics: Vec<CachedCharacteristic>,
}

#[derive(Clone, PartialEq, Message)]
struct CachedCharacteristic {
    #[prost(int32, tag = "1")]
    id: i32,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(int64, tag = "3")]
    value_sum: i64,
    #[prost(int64, tag = "4")]
    value_count: i64,
}

impl Cacheable for Vec<Review> {
    fn encode(&self) -> Bytes {
        let list = ReviewList {
            reviews: self
                .iter()
                .map(|r| CachedReview {
                    id: r.id,
                    rating: r.rating.into(),
                    summary: r.summary.clone(),
                    recommend: r.recommend,
                    response: r.response.clone(),
                    body: r.body.clone(),
                    date_micros: r.date.timestamp_micros(),
                    reviewer_name: r.reviewer_name.clone(),
                    helpfulness: r.helpfulness,
                    photo_ids: r.photos.iter().map(|p| p.id).collect(),
                    photo_urls: r.photos.iter().map(|p| p.url.clone()).collect(),
                })
                .collect(),
        };
        list.encode_to_vec().into()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        ReviewList::decode(bytes)
            .ok()?
            .reviews
            .into_iter()
            .map(|r| {
                Some(Review {
                    id: r.id,
                    rating: i16::try_from(r.rating).ok()?,
                    summary: r.summary,
                    recommend: r.recommend,
                    response: r.response,
                    body: r.body,
                    date: chrono::DateTime::from_timestamp_micros(r.date_micros)?,
                    reviewer_name: r.reviewer_name,
                    helpfulness: r.helpfulness,
                    photos: r
                        .photo_ids
                        .into_iter()
                        .zip(r.photo_urls)
                        .map(|(id, url)| Photo { id, url })
                        .collect(),
                })
            })
            .collect()
    }
}

impl Cacheable for Meta {
    fn encode(&self) -> Bytes {
        let meta = CachedMeta {
            ratings: self.ratings.to_vec(),
            recommended_false: self.recommended_false,
            recommended_true: self.recommended_true,
            characteristics: self
                .characteristics
                .iter()
                .map(|c| CachedCharacteristic {
                    id: c.id,
                    name: c.name.clone(),
                    value_sum: c.value_sum,
                    value_count: c.value_count,
                })
                .collect(),
        };
        meta.encode_to_vec().into()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let m = CachedMeta::decode(bytes).ok()?;
        Some(Meta {
            ratings: m.ratings.try_into().ok()?,
            recommended_false: m.recommended_false,
            recommended_true: m.recommended_true,
            characteristics: m
                .characteristics
                .into_iter()
                .map(|c| CharacteristicMeta {
                    id: c.id,
                    name: c.name,
                    value_sum: c.value_sum,
                    value_count: c.value_count,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let reviews = vec![Review {
            id: 5,
            rating: 3,
            summary: "s".into(),
            recommend: false,
            response: None,
            body: "b".into(),
            date: chrono::DateTime::from_timestamp_millis(1_555_200_000_123).unwrap(),
            reviewer_name: "n".into(),
            helpfulness: 5,
            photos: vec![Photo {
                id: 1,
                url: "https://x/1".into(),
            }],
        }];
        assert_eq!(Vec::<Review>::decode(&reviews.encode()).unwrap(), reviews);
        let meta = Meta {
            ratings: [0, 0, 0, 1, 1],
            recommended_false: 1,
            recommended_true: 1,
            characteristics: vec![CharacteristicMeta {
                id: 1,
                name: "Fit".into(),
                value_sum: 8,
                value_count: 2,
            }],
        };
        assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
        assert!(Meta::decode(b"\xff\xff").is_none());
    }
}
