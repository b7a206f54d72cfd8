//! Ratings & Reviews: a gRPC service for a storefront's product reviews on PostgreSQL.

pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error;
pub mod etl;
pub mod grpc;
pub mod health;
pub mod http;
pub mod limits;
#[cfg(feature = "dev")]
pub mod local;
pub mod lsn;
pub mod metrics;
pub mod reviews;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod transport;
pub mod wire;

/// The generated protobuf messages, client and server of `reviews.v1`.
pub mod pb {
    tonic::include_proto!("reviews.v1");
}
