# syntax=docker/dockerfile:1
# The reviews service: one binary with subcommands (serve, migrate, load, gen-data).
# Dependencies are built in their own layer (cargo-chef), so code changes rebuild in seconds.

FROM rust:1.95-slim-bookworm AS chef
WORKDIR /src
RUN cargo install cargo-chef --locked --version 0.1.78

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --no-default-features --recipe-path recipe.json
COPY . .
# The commit `reviews_build_info` reports (the context has no .git):
# `docker build --build-arg REVIEWS_GIT_SHA=$(git rev-parse --short=12 HEAD) .`
ARG REVIEWS_GIT_SHA=unknown
# Without the default `dev` feature: the image has no `reviews dev` and no throwaway-server code.
RUN cargo build --release --locked --no-default-features --bin reviews

# distroless/cc has glibc and libgcc and nothing else; it runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/reviews /usr/local/bin/reviews
USER 65532:65532
EXPOSE 50051
ENV REVIEWS_LISTEN=0.0.0.0:50051 \
    REVIEWS_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/reviews"]
CMD ["serve"]
