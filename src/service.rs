//! The service core: the five operations of `reviews.v1.ReviewService` on domain types, called
//! by both faces (the gRPC handlers and the JSON edge). Reads are cache-aside in plain sight:
//! look up, load on a miss (from a replica fresh enough, sharing one load between concurrent
//! misses), answer, and fill the cache off the response path. Writes commit, then invalidate,
//! then return; they run to completion even when the caller goes away.

#[cfg(feature = "test-hooks")]
mod hooks;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tracing::field::Empty;
use tracing::Instrument;

#[cfg(feature = "test-hooks")]
pub use hooks::Hooks;

use crate::cache::{Cache, Entry, Lookup};
use crate::db::{Committed, Db};
use crate::error::Error;
use crate::limits::{Action, Limiter, LimitsConfig};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::reviews::{
    IdempotencyKey, ListQuery, Meta, NewReview, ProductId, Rating, RawPageQuery, Review, ReviewId,
    Tokens, Voter,
};
use crate::telemetry::{about_product, about_review, carried};

/// How a face sends a read's answer. The cache keeps answers in this form, so a hit is the
/// face's own bytes, with nothing decoded or re-encoded.
pub trait Encoding {
    /// Names the encoding and its version in cache keys, so that a service version that
    /// encodes differently never reads another's entries.
    const FORMAT: &'static str;
    fn list(query: &ListQuery, reviews: Vec<Review>) -> Bytes;
    fn meta(product: ProductId, meta: Meta) -> Bytes;
    fn rating(product: ProductId, rating: Rating) -> Bytes;
    fn page(reviews: Vec<Review>, next_page_token: String, total: i64) -> Bytes;
}

/// What a call carries besides its message: the caller's request id, from HTTP headers or gRPC
/// metadata alike (its trace context is the request's span's, made by the HTTP layer).
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub request_id: Option<String>,
    /// Who votes, when the storefront names them (`Reviews-Voter`, or `reviews-voter` in gRPC
    /// metadata), as sent: validated and hashed by the operations that count votes.
    pub voter: Option<http::HeaderValue>,
    /// Who the request is from, for the rate limits (resolved only by the writes that count
    /// them): the peer's address, and the configured client header's last value, as sent.
    pub peer: Option<std::net::IpAddr>,
    pub client_header: Option<http::HeaderValue>,
    /// A CreateReview's `Idempotency-Key` (gRPC: `idempotency-key`), as sent.
    pub idempotency_key: Option<http::HeaderValue>,
    /// What the caller accepts (`Accept`), for a face with more than one representation.
    pub accept: Option<http::HeaderValue>,
}

impl Context {
    /// The context of a request with these headers (or gRPC metadata), from no known client.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(128).collect())
        };
        Self {
            request_id: text("x-request-id"),
            voter: headers.get("reviews-voter").cloned(),
            peer: None,
            client_header: None,
            idempotency_key: headers.get("idempotency-key").cloned(),
            accept: headers.get(http::header::ACCEPT).cloned(),
        }
    }

    /// The span of a write: its log lines name the operation (the request's span, around it,
    /// names the caller's ids).
    fn span(operation: &'static str) -> tracing::Span {
        tracing::info_span!("call", operation)
    }

    /// The span of a read, at debug level: reads are the hot path.
    fn read_span(operation: &'static str) -> tracing::Span {
        tracing::debug_span!("call", operation)
    }
}

/// The rules writes follow, beyond the contract's validation.
#[derive(Debug, Clone)]
pub struct WriteRules {
    /// The HMAC key voter names are kept under.
    pub voter_key: Vec<u8>,
    /// Per-client rate limits.
    pub limits: LimitsConfig,
    /// A second review of a product by the same email is `AlreadyExists` (409).
    pub one_review_per_email: bool,
}

#[derive(Clone)]
pub struct Service {
    db: Db,
    cache: Option<Cache>,
    metrics: Arc<Metrics>,
    /// The HMAC key voter names are kept under.
    voter_key: Arc<[u8]>,
    /// Makes and checks the v1 list's page tokens.
    tokens: Tokens,
    limiter: Arc<Limiter>,
    one_review_per_email: bool,
    #[cfg(feature = "test-hooks")]
    hooks: Hooks,
}

impl Service {
    pub fn new(db: Db, cache: Option<Cache>, metrics: Arc<Metrics>, rules: WriteRules) -> Self {
        Self {
            limiter: Arc::new(Limiter::new(rules.limits, cache.clone())),
            one_review_per_email: rules.one_review_per_email,
            db,
            cache,
            metrics,
            tokens: Tokens::new(&rules.voter_key),
            voter_key: rules.voter_key.into(),
            #[cfg(feature = "test-hooks")]
            hooks: Hooks::default(),
        }
    }

    /// Pauses in the read path, for tests that make races deterministic.
    #[cfg(feature = "test-hooks")]
    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The context of a request: its headers (or gRPC metadata), and the address of its peer
    /// when the transport knows it.
    pub fn context(&self, headers: &http::HeaderMap, peer: Option<std::net::IpAddr>) -> Context {
        Context {
            peer,
            client_header: self.limiter.client_header(headers),
            ..Context::from_headers(headers)
        }
    }

    /// One page of a product's listable reviews, as `E` sends it.
    pub async fn list_reviews<E: Encoding>(&self, query: ListQuery) -> Result<Bytes, Error> {
        about_product(query.product.get());
        let load = |needed| async move {
            let reviews = self
                .db
                .list_reviews(needed, query.product, query.page, query.sort)
                .await?;
            Ok(E::list(&query, reviews))
        };
        self.read(Entry::List(query), E::FORMAT, load)
            .instrument(Context::read_span("ListReviews"))
            .await
    }

    /// A product's rating breakdown and characteristic averages, as `E` sends them.
    pub async fn get_review_meta<E: Encoding>(&self, product: ProductId) -> Result<Bytes, Error> {
        about_product(product.get());
        let load = |needed| async move {
            let meta = self.db.review_meta(needed, product).await?;
            Ok(E::meta(product, meta))
        };
        self.read(Entry::Meta(product), E::FORMAT, load)
            .instrument(Context::read_span("GetReviewMeta"))
            .await
    }

    /// A product's aggregate rating, as `E` sends it.
    pub async fn get_product_rating<E: Encoding>(
        &self,
        product: ProductId,
    ) -> Result<Bytes, Error> {
        about_product(product.get());
        let load = |needed| async move {
            let rating = self.db.product_rating(needed, product).await?;
            Ok(E::rating(product, rating))
        };
        self.read(Entry::Rating(product), E::FORMAT, load)
            .instrument(Context::read_span("GetProductRating"))
            .await
    }

    /// A v1 page of a product's listable reviews that match a filter, with the filter's total
    /// and the next page's token, as `E` sends it. A token that is not this list's is
    /// `Invalid`.
    pub async fn list_product_reviews<E: Encoding>(
        &self,
        raw: RawPageQuery,
    ) -> Result<Bytes, Error> {
        about_product(raw.product.get());
        let query = self.tokens.decode(raw)?;
        let load = |needed| async move {
            let page = self.db.list_page(needed, query).await?;
            let next = page
                .next
                .map(|at| self.tokens.encode(&query, at))
                .unwrap_or_default();
            Ok(E::page(page.reviews, next, page.total))
        };
        self.read(Entry::Page(query), E::FORMAT, load)
            .instrument(Context::read_span("ListProductReviews"))
            .await
    }

    /// Posts a review with its photos and characteristic ratings, all or nothing.
    pub async fn create_review(&self, ctx: &Context, review: NewReview) -> Result<ReviewId, Error> {
        about_product(review.product_id.get());
        let key = ctx
            .idempotency_key
            .as_ref()
            .map(|key| IdempotencyKey::new(key.as_bytes(), &review))
            .transpose()?;
        let product = review.product_id;
        if let Some(key) = &key {
            // A retry of a create that committed: its answer again, not counted as a new create.
            // (Invalidating again costs one Redis call and closes the window in which the first
            // attempt, committed, had not invalidated yet.)
            if let Some(committed) = self.db.replayed(key, product).await? {
                return Ok(self.invalidate(committed).await);
            }
        }
        self.limited(ctx, Action::Create).await?;
        let (this, one_per_email) = (self.clone(), self.one_review_per_email);
        let id = detached(async move {
            let committed = this
                .db
                .create_review(&review, key.as_ref(), one_per_email)
                .await?;
            Ok(this.invalidate(committed).await)
        })
        .instrument(Context::span("CreateReview"))
        .await?;
        about_review(id.get());
        tracing::info!(
            review_id = id.get(),
            product_id = product.get(),
            request_id = ctx.request_id.as_deref(),
            "review created"
        );
        Ok(id)
    }

    /// Adds one to a review's helpfulness; a named voter's second vote changes nothing.
    pub async fn mark_review_helpful(&self, ctx: &Context, id: ReviewId) -> Result<(), Error> {
        about_review(id.get());
        let voter = self.voter(ctx)?;
        self.limited(ctx, Action::Helpful).await?;
        let this = self.clone();
        detached(async move {
            if let Some(committed) = this.db.mark_helpful(id, voter).await? {
                this.invalidate(committed).await;
            }
            Ok(())
        })
        .instrument(Context::span("MarkReviewHelpful"))
        .await
    }

    /// Hides a review from lists and meta counts; reporting twice changes nothing more.
    pub async fn report_review(&self, ctx: &Context, id: ReviewId) -> Result<(), Error> {
        about_review(id.get());
        let voter = self.voter(ctx)?;
        self.limited(ctx, Action::Report).await?;
        let this = self.clone();
        detached(async move {
            if let Some(committed) = this.db.report(id, voter).await? {
                this.invalidate(committed).await;
            }
            Ok(())
        })
        .instrument(Context::span("ReportReview"))
        .await?;
        tracing::info!(
            review_id = id.get(),
            request_id = ctx.request_id.as_deref(),
            "review reported"
        );
        Ok(())
    }

    /// Counts the call against its client's limit for `action`, refusing it when over.
    async fn limited(&self, ctx: &Context, action: Action) -> Result<(), Error> {
        let client = Limiter::client(ctx.client_header.as_ref(), ctx.peer);
        let verdict = self.limiter.check(action, client.as_ref()).await;
        if verdict.is_err() {
            self.metrics.rate_limited.inc();
        }
        verdict
    }

    /// The caller's voter, if it names one.
    fn voter(&self, ctx: &Context) -> Result<Option<Voter>, Error> {
        ctx.voter
            .as_ref()
            .map(|name| Voter::new(name.as_bytes(), &self.voter_key))
            .transpose()
    }

    /// The cached answer, or the loaded one (shared by concurrent misses of the same answer),
    /// which is then filled in the background. `load` is told the WAL position its data must
    /// include when the cache knows it, so a replica that has replayed that far may answer.
    async fn read<L, Fut>(&self, entry: Entry, format: &str, load: L) -> Result<Bytes, Error>
    where
        L: FnOnce(Option<Lsn>) -> Fut,
        Fut: Future<Output = Result<Bytes, Error>>,
    {
        let Some(cache) = &self.cache else {
            #[cfg(feature = "test-hooks")]
            self.hooks.during_load().await;
            return load(None).await;
        };
        let span = tracing::debug_span!(
            "cache.lookup",
            otel.kind = "client",
            db.system.name = "redis",
            cache.result = Empty
        );
        let lookup = cache
            .lookup(&entry, format, self.db.has_replicas())
            .instrument(span.clone())
            .await;
        let miss = match lookup {
            Lookup::Hit(answer) => {
                span.record("cache.result", "hit");
                return Ok(answer);
            }
            Lookup::Skip => {
                span.record("cache.result", "skip");
                return load(None).await;
            }
            Lookup::Miss(miss) => {
                span.record("cache.result", "miss");
                miss
            }
        };
        let loading = async {
            self.metrics.cache.loads.inc();
            #[cfg(feature = "test-hooks")]
            self.hooks.during_load().await;
            load(miss.needed).await
        };
        let coalesced = || self.metrics.cache.coalesced.inc();
        let (answer, flight) = cache
            .flights()
            .run(&miss.flight_key(), loading, coalesced)
            .await;
        if let (Ok(bytes), Some(flight)) = (&answer, flight) {
            let (cache, bytes) = (cache.clone(), bytes.clone());
            #[cfg(feature = "test-hooks")]
            let hooks = self.hooks.clone();
            let fill = async move {
                #[cfg(feature = "test-hooks")]
                hooks.before_fill().await;
                cache.fill(&miss, &bytes).await;
                drop(flight); // later misses load again only once the fill has landed
            };
            // In the request's trace, though it may end after the request.
            let span =
                tracing::debug_span!("cache.fill", otel.kind = "client", db.system.name = "redis");
            tokio::spawn(fill.instrument(span));
        }
        answer
    }

    /// After a committed write: hides the product's cached answers and records the write's WAL
    /// position for replica reads.
    async fn invalidate<T>(&self, committed: Committed<T>) -> T {
        if let Some(cache) = &self.cache {
            let span = tracing::debug_span!(
                "cache.invalidate",
                otel.kind = "client",
                db.system.name = "redis"
            );
            cache
                .invalidate(committed.product, committed.lsn)
                .instrument(span)
                .await;
        }
        committed.value
    }
}

/// Runs a write to completion even if the caller goes away: a write that committed must also
/// invalidate the cache, whatever happens to the request that asked for it. Its log lines and
/// spans stay the request's.
async fn detached<T: Send + 'static>(
    write: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(carried(write))
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("write task failed: {e}"))))
}
