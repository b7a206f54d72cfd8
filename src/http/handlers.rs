//! The JSON face's handlers: each turns the generated request message into domain types, calls
//! one [`Service`] operation, and returns the reply (for reads, the JSON the cache keeps).

use bytes::Bytes;

use super::edge::{to_json, JsonApi, Reply};
use super::linked_data;
use crate::error::Error;
use crate::pb;
use crate::reviews::{
    Filter, ListQuery, Meta, ProductId, Rating, RawPageQuery, Review, ReviewId, Sort,
};
use crate::service::{Context, Encoding, Service};
use crate::wire;

/// Replies as the legacy JSON bodies: what the cache keeps for JSON callers, so a hit is sent
/// as it is.
pub struct Json;

impl Encoding for Json {
    const FORMAT: &'static str = "json1";

    fn list(query: &ListQuery, reviews: Vec<Review>) -> Bytes {
        to_json(&wire::list_response(query, reviews))
    }

    fn meta(product: ProductId, meta: Meta) -> Bytes {
        to_json(&wire::review_meta(product, meta))
    }

    fn rating(product: ProductId, rating: Rating) -> Bytes {
        to_json(&wire::product_rating(product, rating))
    }

    fn page(reviews: Vec<Review>, next_page_token: String, total: i64) -> Bytes {
        to_json(&wire::page_response(reviews, next_page_token, total))
    }
}

pub struct JsonHandlers {
    service: Service,
}

impl JsonHandlers {
    pub fn new(service: Service) -> Self {
        Self { service }
    }
}

impl JsonApi for JsonHandlers {
    fn context(&self, headers: &http::HeaderMap, peer: Option<std::net::IpAddr>) -> Context {
        self.service.context(headers, peer)
    }

    async fn list_reviews(
        &self,
        // Reads need nothing of the call's context: the request's span names the caller.
        _ctx: Context,
        request: pb::ListReviewsRequest,
    ) -> Result<Reply<pb::ListReviewsResponse>, Error> {
        let query = wire::list_query(&request)?;
        let body = self.service.list_reviews::<Json>(query).await?;
        Ok(Reply::Json(body))
    }

    async fn get_review_meta(
        &self,
        _ctx: Context,
        request: pb::GetReviewMetaRequest,
    ) -> Result<Reply<pb::ReviewMeta>, Error> {
        let product = ProductId::parse(request.product_id)?;
        let body = self.service.get_review_meta::<Json>(product).await?;
        Ok(Reply::Json(body))
    }

    async fn get_product_rating(
        &self,
        ctx: Context,
        request: pb::GetProductRatingRequest,
    ) -> Result<Reply<pb::ProductRating>, Error> {
        let product = wire::v1_product(request.product_id)?;
        let about = linked_data::Product {
            name: &request.product_name,
            url: &request.product_url,
            sku: &request.sku,
        };
        let linked = linked_data::wanted(ctx.accept.as_ref());
        about.check(linked)?;
        if !linked {
            let body = self.service.get_product_rating::<Json>(product).await?;
            return Ok(Reply::Json(body));
        }
        let first_page = RawPageQuery {
            product,
            sort: Sort::Relevant,
            filter: Filter::default(),
            size: linked_data::MARKUP_REVIEWS,
            token: String::new(),
        };
        let (rating, page) = futures_util::try_join!(
            self.service.get_product_rating::<Json>(product),
            self.service.list_product_reviews::<Json>(first_page),
        )?;
        Ok(Reply::LinkedData(linked_data::product_markup(
            &about, &rating, &page,
        )?))
    }

    async fn list_product_reviews(
        &self,
        _ctx: Context,
        request: pb::ListProductReviewsRequest,
    ) -> Result<Reply<pb::ListProductReviewsResponse>, Error> {
        let query = wire::page_query(request)?;
        let body = self.service.list_product_reviews::<Json>(query).await?;
        Ok(Reply::Json(body))
    }

    async fn create_review(
        &self,
        ctx: Context,
        request: pb::CreateReviewRequest,
    ) -> Result<Reply<pb::CreateReviewResponse>, Error> {
        let review = wire::new_review(request)?;
        let id = self.service.create_review(&ctx, review).await?;
        Ok(Reply::Message(pb::CreateReviewResponse {
            review_id: id.get(),
        }))
    }

    async fn mark_review_helpful(
        &self,
        ctx: Context,
        request: pb::MarkReviewHelpfulRequest,
    ) -> Result<(), Error> {
        let id = ReviewId::parse(request.review_id)?;
        self.service.mark_review_helpful(&ctx, id).await
    }

    async fn report_review(
        &self,
        ctx: Context,
        request: pb::ReportReviewRequest,
    ) -> Result<(), Error> {
        let id = ReviewId::parse(request.review_id)?;
        self.service.report_review(&ctx, id).await
    }
}
