//! The tonic face of the service: each handler turns the wire request into domain types, calls
//! one [`Store`] operation, and turns the result (or the error) back into wire types.

use tonic::{Request, Response, Status};

use crate::db::Store;
use crate::error::{Error, FieldViolation};
use crate::pb;
use crate::pb::review_service_server::ReviewService;
use crate::reviews::{
    Meta, NewReview, PageRequest, ProductId, RawNewReview, Review, ReviewId, Sort,
};

/// The encoded descriptor set of `reviews.v1`, `google.api.http` options included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reviews_descriptor.bin"));

pub struct ReviewsGrpc {
    store: Store,
}

impl ReviewsGrpc {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl ReviewService for ReviewsGrpc {
    async fn list_reviews(
        &self,
        request: Request<pb::ListReviewsRequest>,
    ) -> Result<Response<pb::ListReviewsResponse>, Status> {
        let req = request.into_inner();
        let (product, page, sort) = parse_list_request(&req)?;
        let reviews = self.store.list_reviews(product, page, sort).await?;
        Ok(Response::new(pb::ListReviewsResponse {
            product: product.get().into(),
            page: (page.page() - 1) as i32,
            count: page.size() as i32,
            results: reviews.into_iter().map(review_to_pb).collect(),
        }))
    }

    async fn get_review_meta(
        &self,
        request: Request<pb::GetReviewMetaRequest>,
    ) -> Result<Response<pb::ReviewMeta>, Status> {
        let product = ProductId::parse(request.into_inner().product_id)?;
        let meta = self.store.review_meta(product).await?;
        Ok(Response::new(meta_to_pb(product, meta)))
    }

    async fn create_review(
        &self,
        request: Request<pb::CreateReviewRequest>,
    ) -> Result<Response<pb::CreateReviewResponse>, Status> {
        let r = request.into_inner();
        let review = NewReview::parse(RawNewReview {
            product_id: r.product_id,
            rating: r.rating,
            summary: r.summary,
            body: r.body,
            recommend: r.recommend,
            name: r.name,
            email: r.email,
            photos: r.photos,
            characteristics: r.characteristics.into_iter().collect(),
        })?;
        let review_id = self.store.create_review(&review).await?;
        tracing::info!(
            review_id,
            product_id = review.product_id.get(),
            "review created"
        );
        Ok(Response::new(pb::CreateReviewResponse { review_id }))
    }

    async fn mark_review_helpful(
        &self,
        request: Request<pb::MarkReviewHelpfulRequest>,
    ) -> Result<Response<()>, Status> {
        let id = ReviewId::parse(request.into_inner().review_id)?;
        self.store.mark_helpful(id).await?;
        Ok(Response::new(()))
    }

    async fn report_review(
        &self,
        request: Request<pb::ReportReviewRequest>,
    ) -> Result<Response<()>, Status> {
        let id = ReviewId::parse(request.into_inner().review_id)?;
        self.store.report(id).await?;
        tracing::info!(review_id = id.get(), "review reported");
        Ok(Response::new(()))
    }
}

/// Validates a list request, reporting a bad page, count and sort together.
fn parse_list_request(
    req: &pb::ListReviewsRequest,
) -> Result<(ProductId, PageRequest, Sort), Error> {
    let product = ProductId::parse(req.product_id)?;
    let page = PageRequest::parse(req.page, req.count);
    let sort = match pb::Sort::try_from(req.sort) {
        Ok(pb::Sort::Unspecified | pb::Sort::Relevant) => Ok(Sort::Relevant),
        Ok(pb::Sort::Newest) => Ok(Sort::Newest),
        Ok(pb::Sort::Helpful) => Ok(Sort::Helpful),
        Err(_) => Err(FieldViolation::new(
            "sort",
            "must be one of relevant, newest, helpful",
        )),
    };
    match (page, sort) {
        (Ok(page), Ok(sort)) => Ok((product, page, sort)),
        (page, sort) => {
            let mut violations = page.err().map(|e| e.violations()).unwrap_or_default();
            violations.extend(sort.err());
            Err(Error::Invalid(violations))
        }
    }
}

fn review_to_pb(r: Review) -> pb::Review {
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

fn meta_to_pb(product: ProductId, meta: Meta) -> pb::ReviewMeta {
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
