//! The machine's limits for `scripts/bench`: a trivial HTTP server answering every request with
//! a fixed JSON body, and a trivial tonic server answering `ListReviews` with a fixed reply. Both
//! do no work per request beyond their protocol, so the service's figures divided by theirs say
//! how much of the machine's capacity the service's own work costs.
//!
//! Usage: `bench_floor http <addr> <body.json>` | `bench_floor grpc <addr> <reply.pb>`, and
//! `bench_floor fetch <service-addr> <product> <reply.pb>` to save the service's own reply.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use reviews::pb;
use reviews::pb::review_service_server::{ReviewService, ReviewServiceServer};
use tonic::{Request, Response, Status};

// The same allocator as the service, so the comparison is of the work, not of the allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr), Some(file)) = (args.get(1), args.get(2), args.last()) else {
        anyhow::bail!("usage: bench_floor http|grpc <addr> <file>");
    };
    if mode == "fetch" {
        let [.., product, out] = args.as_slice() else {
            anyhow::bail!("usage: bench_floor fetch <addr> <product> <reply.pb>");
        };
        let mut client =
            pb::review_service_client::ReviewServiceClient::connect(format!("http://{addr}"))
                .await?;
        let request = pb::ListReviewsRequest {
            product_id: product.parse()?,
            ..Default::default()
        };
        let reply = client.list_reviews(request).await?.into_inner();
        std::fs::write(out, reply.encode_to_vec())?;
        return Ok(());
    }
    let addr: SocketAddr = addr.parse()?;
    match mode.as_str() {
        "http" => http(addr, std::fs::read(file)?.into()).await,
        "grpc" => {
            let reply = pb::ListReviewsResponse::decode(Bytes::from(std::fs::read(file)?))?;
            tonic::transport::Server::builder()
                .add_service(ReviewServiceServer::new(Fixed(reply)))
                .serve(addr)
                .await?;
            Ok(())
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
}

/// HTTP/1.1 and h2c, as the service serves them, with one fixed body.
async fn http(addr: SocketAddr, body: Bytes) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let body = body.clone();
                async move {
                    let response = http::Response::builder()
                        .header("content-type", "application/json; charset=utf-8")
                        .body(Full::new(body))
                        .expect("a valid response");
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct Fixed(pb::ListReviewsResponse);

#[tonic::async_trait]
impl ReviewService for Fixed {
    async fn list_reviews(
        &self,
        _: Request<pb::ListReviewsRequest>,
    ) -> Result<Response<pb::ListReviewsResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }

    async fn get_review_meta(
        &self,
        _: Request<pb::GetReviewMetaRequest>,
    ) -> Result<Response<pb::ReviewMeta>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn create_review(
        &self,
        _: Request<pb::CreateReviewRequest>,
    ) -> Result<Response<pb::CreateReviewResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn mark_review_helpful(
        &self,
        _: Request<pb::MarkReviewHelpfulRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn report_review(
        &self,
        _: Request<pb::ReportReviewRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn get_product_rating(
        &self,
        _: Request<pb::GetProductRatingRequest>,
    ) -> Result<Response<pb::ProductRating>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn list_product_reviews(
        &self,
        _: Request<pb::ListProductReviewsRequest>,
    ) -> Result<Response<pb::ListProductReviewsResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
}
