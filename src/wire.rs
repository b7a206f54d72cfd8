//! The wire messages of both faces, the generated `reviews.v1` types, to and from domain types.
//! The gRPC face sends them as protobuf, the JSON edge as the legacy JSON; both parse requests
//! with these functions, so a request means the same through either face.

use crate::error::{Error, FieldViolation};
use crate::pb;
use crate::reviews::{
    page_size, Filter, ListQuery, Meta, NewReview, PageRequest, ProductId, Rating, RawNewReview,
    RawPageQuery, Review, Sort, MAX_TOKEN_CHARS,
};

/// The order a request names.
fn sort(raw: i32) -> Result<Sort, FieldViolation> {
    match pb::Sort::try_from(raw) {
        Ok(pb::Sort::Unspecified | pb::Sort::Relevant) => Ok(Sort::Relevant),
        Ok(pb::Sort::Newest) => Ok(Sort::Newest),
        Ok(pb::Sort::Helpful) => Ok(Sort::Helpful),
        Err(_) => Err(FieldViolation::new(
            "sort",
            "must be one of relevant, newest, helpful",
        )),
    }
}

/// Validates a list request, reporting a bad page, count and sort together.
pub fn list_query(req: &pb::ListReviewsRequest) -> Result<ListQuery, Error> {
    let product = ProductId::parse(req.product_id)?;
    let page = PageRequest::parse(req.page, req.count);
    let sort = sort(req.sort);
    match (page, sort) {
        (Ok(page), Ok(sort)) => Ok(ListQuery {
            product,
            page,
            sort,
        }),
        (page, sort) => {
            let mut violations = page.err().map(|e| e.violations()).unwrap_or_default();
            violations.extend(sort.err());
            Err(Error::Invalid(violations))
        }
    }
}

/// Validates a v1 list request, reporting every bad field together (its token is checked by
/// the service, which holds the key).
pub fn page_query(req: pb::ListProductReviewsRequest) -> Result<RawPageQuery, Error> {
    let product = v1_product(req.product_id);
    let size = page_size(req.page_size);
    let sort = sort(req.sort);
    let filter = Filter::parse(&req.rating, req.has_photos);
    let token = if req.page_token.len() <= MAX_TOKEN_CHARS {
        Ok(req.page_token)
    } else {
        Err(FieldViolation::new(
            "page_token",
            format!("must be at most {MAX_TOKEN_CHARS} characters"),
        ))
    };
    match (product, size, sort, filter, token) {
        (Ok(product), Ok(size), Ok(sort), Ok(filter), Ok(token)) => Ok(RawPageQuery {
            product,
            sort,
            filter,
            size,
            token,
        }),
        (product, size, sort, filter, token) => {
            let mut violations = product.err().map(|e| e.violations()).unwrap_or_default();
            violations.extend(size.err());
            violations.extend(sort.err());
            violations.extend(filter.err());
            violations.extend(token.err());
            Err(Error::Invalid(violations))
        }
    }
}

/// A v1 page as the wire message.
pub fn page_response(
    reviews: Vec<Review>,
    next_page_token: String,
    total: i64,
) -> pb::ListProductReviewsResponse {
    pb::ListProductReviewsResponse {
        reviews: reviews.into_iter().map(review).collect(),
        next_page_token,
        // Counts of one product's reviews fit the proto's int32 (ids are int32 too).
        total_size: i32::try_from(total).unwrap_or(i32::MAX),
    }
}

pub fn new_review(r: pb::CreateReviewRequest) -> Result<NewReview, Error> {
    NewReview::parse(RawNewReview {
        product_id: r.product_id,
        rating: r.rating,
        summary: r.summary,
        body: r.body,
        recommend: r.recommend,
        name: r.name,
        email: r.email,
        photos: r.photos,
        characteristics: r.characteristics.into_iter().collect(),
    })
}

pub fn list_response(query: &ListQuery, reviews: Vec<Review>) -> pb::ListReviewsResponse {
    pb::ListReviewsResponse {
        product: query.product.get().into(),
        page: (query.page.page() - 1) as i32,
        count: query.page.size() as i32,
        results: reviews.into_iter().map(review).collect(),
    }
}

fn review(r: Review) -> pb::Review {
    pb::Review {
        review_id: r.id,
        rating: r.rating.into(),
        summary: r.summary,
        recommend: r.recommend,
        response: r.response,
        body: r.body,
        date: Some(prost_types::Timestamp {
            seconds: r.date.timestamp(),
            nanos: r.date.timestamp_subsec_nanos() as i32,
        }),
        reviewer_name: r.reviewer_name,
        helpfulness: r.helpfulness,
        photos: r
            .photos
            .into_iter()
            .map(|p| pb::Photo {
                id: p.id,
                url: p.url,
            })
            .collect(),
    }
}

pub fn review_meta(product: ProductId, meta: Meta) -> pb::ReviewMeta {
    let ratings = (1..=5).zip(meta.ratings).filter(|&(_, n)| n > 0).collect();
    let recommended = [
        (false, meta.recommended_false),
        (true, meta.recommended_true),
    ]
    .into_iter()
    .filter(|&(_, n)| n > 0)
    .collect();
    let characteristics = meta
        .characteristics
        .into_iter()
        .map(|c| {
            let value = c.average();
            (c.name, pb::CharacteristicMeta { id: c.id, value })
        })
        .collect();
    pb::ReviewMeta {
        product_id: product.get().into(),
        ratings,
        recommended,
        characteristics,
    }
}

pub fn product_rating(product: ProductId, rating: Rating) -> pb::ProductRating {
    // Counts of one product's reviews fit the proto's int32 (ids are int32 too).
    let count = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    pb::ProductRating {
        product_id: product.get(),
        average_rating: rating.average(),
        review_count: count(rating.count()),
        recommend_ratio: rating.recommend_ratio(),
        histogram: (1..=5)
            .zip(rating.ratings)
            .map(|(stars, n)| pb::StarCount {
                rating: stars,
                count: count(n),
            })
            .collect(),
    }
}

/// The product id of a `v1` request: a field violation like any other (the legacy routes'
/// plain-text error is theirs only).
pub fn v1_product(raw: i32) -> Result<ProductId, Error> {
    ProductId::parse(raw).map_err(|_| Error::invalid("product_id", "must be a positive integer"))
}
