//! The accept loop and the life of each client connection: our own, on hyper's HTTP/1.1 and
//! HTTP/2 connections, rather than tonic's `Server`, which has no deadline for a connection that
//! never sends a request, none for a request body, no idle timeout and no way to close HTTP/1.1
//! keep-alive connections cleanly during a drain.
//!
//! A connection's life:
//! - Its first bytes must arrive within the header timeout; they tell HTTP/2 (the preface) from
//!   HTTP/1.1.
//! - A connection that has carried no request within the header timeout, or none for the idle
//!   timeout since its last one, is closed gracefully (HTTP/2: GOAWAY). hyper's own header timeout
//!   also closes an HTTP/1.1 connection that waits longer than it for the next request's headers.
//! - A request's body must arrive whole within the body timeout; past it the read fails (the JSON
//!   edge answers 408) and the connection is not reused.
//! - HTTP/2 connections are pinged while open and closed when a ping goes unanswered; they carry
//!   at most `max_streams` requests at once.
//! - At `max_connection_age` a connection is closed gracefully, so clients reconnect and spread
//!   over new replicas.
//! - A connection asked to close gets the body timeout to finish; then it is cut.
//!
//! A drain (on shutdown): readiness is withdrawn and for the drain delay the server goes on
//! accepting and answering, but every HTTP/1.1 response carries `Connection: close` and every
//! HTTP/2 connection gets a GOAWAY, so keep-alive clients move elsewhere without a reset. Then
//! the listener closes, idle connections are closed, and the server returns once the calls in
//! flight have been answered.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Buf, Bytes};
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::metrics::Metrics;
use crate::transport::{BodyTimeout, Peer};

/// How client connections are treated. The defaults are the CLI's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// A new connection's first bytes, and each HTTP/1.1 request's headers, must arrive within
    /// this; an HTTP/1.1 connection waiting longer for its next request is closed.
    pub header_timeout: Duration,
    /// A request's body must arrive whole within this.
    pub body_timeout: Duration,
    /// A connection that carries no request for this long is closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// How often an open HTTP/2 connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Requests one HTTP/2 connection may carry at once.
    pub max_streams: u32,
    /// Client connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Age at which a connection is closed gracefully.
    pub max_age: Option<Duration>,
    /// How long a drain keeps accepting and answering (with `Connection: close` and GOAWAY)
    /// before the listener closes.
    pub drain_delay: Duration,
}

pub const DEFAULT_HEADER_TIMEOUT: &str = "10s";
pub const DEFAULT_BODY_TIMEOUT: &str = "30s";
pub const DEFAULT_IDLE_TIMEOUT: &str = "60s";
pub const DEFAULT_KEEPALIVE_INTERVAL: &str = "20s";
pub const DEFAULT_KEEPALIVE_TIMEOUT: &str = "20s";
pub const DEFAULT_MAX_STREAMS: u32 = 200;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub const DEFAULT_DRAIN_DELAY: &str = "1s";

impl Default for ConnectionOptions {
    fn default() -> Self {
        use crate::config::default_duration as d;
        Self {
            header_timeout: d(DEFAULT_HEADER_TIMEOUT),
            body_timeout: d(DEFAULT_BODY_TIMEOUT),
            idle_timeout: d(DEFAULT_IDLE_TIMEOUT),
            keepalive_interval: d(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: d(DEFAULT_KEEPALIVE_TIMEOUT),
            max_streams: DEFAULT_MAX_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            max_age: None,
            drain_delay: crate::config::parse_delay(DEFAULT_DRAIN_DELAY).expect("a valid delay"),
        }
    }
}

/// Where the server is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Answering, but asking every client to go: `Connection: close`, GOAWAY.
    Draining,
    /// The listener is closed: every connection closes once its calls are answered.
    Closing,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `app` on `listener` until `shutdown` resolves; then runs `on_drain` (which withdraws
/// readiness), drains as the module describes, and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    options: ConnectionOptions,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    on_drain: impl Future<Output = ()>,
) {
    let (phase, _) = watch::channel(Phase::Serving);
    let server = Arc::new(Shared {
        app,
        metrics,
        slots: Arc::new(Semaphore::new(options.max_connections)),
        draining: AtomicBool::new(false),
        options,
    });
    let mut shutdown = std::pin::pin!(shutdown);
    accept_until(&listener, &server, &phase, shutdown.as_mut()).await;

    server.draining.store(true, Ordering::Relaxed);
    phase.send_replace(Phase::Draining);
    on_drain.await;
    accept_until(
        &listener,
        &server,
        &phase,
        tokio::time::sleep(server.options.drain_delay),
    )
    .await;
    drop(listener);
    phase.send_replace(Phase::Closing);
    // Every connection holds a receiver until it has closed.
    phase.closed().await;
}

struct Shared {
    app: axum::Router,
    options: ConnectionOptions,
    metrics: Arc<Metrics>,
    /// One permit per connection that may be open.
    slots: Arc<Semaphore>,
    /// Whether the drain has begun, for the HTTP/1.1 answers (the connections watch `Phase`).
    draining: AtomicBool,
}

async fn accept_until(
    listener: &TcpListener,
    server: &Arc<Shared>,
    phase: &watch::Sender<Phase>,
    until: impl Future<Output = ()>,
) {
    let mut until = std::pin::pin!(until);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut until => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to be released rather than
                    // spin on a listener that stays readable.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = server.slots.clone().try_acquire_owned() else {
            server.metrics.connections.refused.inc();
            drop(stream);
            continue;
        };
        // Without TCP_NODELAY, a small reply waits for the client's delayed ACK (40 ms on Linux).
        let _ = stream.set_nodelay(true);
        server.metrics.connections.accepted.inc();
        tokio::spawn(connection(
            server.clone(),
            stream,
            peer,
            phase.subscribe(),
            slot,
        ));
    }
}

async fn connection(
    server: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    phase: watch::Receiver<Phase>,
    _slot: OwnedSemaphorePermit,
) {
    server.metrics.connections.open.inc();
    serve_connection(&server, stream, peer, phase).await;
    server.metrics.connections.open.dec();
}

async fn serve_connection(
    server: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    phase: watch::Receiver<Phase>,
) {
    let opts = &server.options;
    let prefix = match tokio::time::timeout(opts.header_timeout, sniff(&stream)).await {
        Ok(Ok(prefix)) => prefix,
        Ok(Err(_)) => return, // closed or reset before saying anything
        Err(_) => {
            server.metrics.connections.timed_out.inc();
            return;
        }
    };
    let h2 = prefix[..] == H2_PREFACE[..];
    let io = TokioIo::new(Rewind {
        prefix,
        inner: stream,
    });
    let state = Arc::new(ConnState::new());
    let service = ConnService {
        server: server.clone(),
        state: state.clone(),
        peer,
        h2,
    };
    let life = Life {
        server,
        state: &state,
        phase,
        h2,
    };
    if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(opts.keepalive_interval))
            .keep_alive_timeout(opts.keepalive_timeout)
            .max_concurrent_streams(opts.max_streams);
        let conn = std::pin::pin!(builder.serve_connection(io, service));
        life.drive(conn, |c| c.graceful_shutdown()).await;
    } else {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_timeout);
        let conn = std::pin::pin!(builder.serve_connection(io, service));
        life.drive(conn, |c| c.graceful_shutdown()).await;
    }
}

/// Reads a connection's first bytes: the 24 of the HTTP/2 preface, or fewer as soon as they
/// cannot be one (an HTTP/1.1 request line).
async fn sniff(stream: &TcpStream) -> io::Result<Bytes> {
    let mut buf = [0u8; 24];
    let mut n = 0;
    loop {
        stream.readable().await?;
        match stream.try_read(&mut buf[n..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => {
                n += read;
                if n == buf.len() || buf[..n] != H2_PREFACE[..n] {
                    return Ok(Bytes::copy_from_slice(&buf[..n]));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// What a connection's life is watched by.
struct Life<'a> {
    server: &'a Shared,
    state: &'a ConnState,
    phase: watch::Receiver<Phase>,
    h2: bool,
}

impl Life<'_> {
    /// Runs a connection to its end, closing it gracefully when it is idle, too old, or the
    /// server drains, and cutting it if it has not closed within the body timeout of being asked
    /// to.
    async fn drive<C: Future<Output = hyper::Result<()>>>(
        self,
        mut conn: Pin<&mut C>,
        graceful: fn(Pin<&mut C>),
    ) {
        let Life {
            server,
            state,
            mut phase,
            h2,
        } = self;
        let (opts, born) = (&server.options, state.born);
        let far = born + Duration::from_secs(86_400 * 365);
        let age = tokio::time::sleep_until(opts.max_age.map_or(far, |a| born + a).into());
        let mut age = std::pin::pin!(age);
        let idle = tokio::time::sleep_until((born + opts.header_timeout).into());
        let mut idle = std::pin::pin!(idle);
        let mut cut = std::pin::pin!(tokio::time::sleep_until(far.into()));
        let mut closing = false;
        let close = |conn: Pin<&mut C>, cut: Pin<&mut tokio::time::Sleep>, closing: &mut bool| {
            if !*closing {
                *closing = true;
                graceful(conn);
                cut.reset((Instant::now() + opts.body_timeout).into());
            }
        };
        // A connection opened during the drain is served until the listener closes: a GOAWAY on
        // it at once would only refuse the calls its client is about to send.
        let mut seen = *phase.borrow_and_update();
        loop {
            let now = *phase.borrow_and_update();
            if now != seen {
                seen = now;
                // HTTP/1.1 connections are asked to close by their responses while draining; closing
                // an idle one then could race a request the client is sending.
                if now == Phase::Closing || h2 {
                    close(conn.as_mut(), cut.as_mut(), &mut closing);
                }
            }
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = &mut age, if !closing => close(conn.as_mut(), cut.as_mut(), &mut closing),
                () = &mut idle, if !closing => {
                    let limit = if !state.served.load(Ordering::Relaxed) {
                        opts.header_timeout
                    } else {
                        opts.idle_timeout
                    };
                    match state.idle_since() {
                        Some(since) if since.elapsed() >= limit => {
                            if !state.served.load(Ordering::Relaxed) {
                                server.metrics.connections.timed_out.inc();
                            }
                            close(conn.as_mut(), cut.as_mut(), &mut closing);
                        }
                        Some(since) => idle.as_mut().reset((since + limit).into()),
                        // Busy: look again one limit from now.
                        None => idle.as_mut().reset((Instant::now() + limit).into()),
                    }
                }
                changed = phase.changed(), if seen != Phase::Closing => {
                    if changed.is_err() {
                        seen = Phase::Closing; // the server is gone
                        close(conn.as_mut(), cut.as_mut(), &mut closing);
                    }
                }
                () = &mut cut => {
                    tracing::debug!("connection cut: it did not close in time");
                    return;
                }
            }
        }
    }
}

/// What a connection is doing, for its idle timeout.
struct ConnState {
    /// When the connection opened.
    born: Instant,
    /// Whether a request has started on it.
    served: AtomicBool,
    /// Requests being answered.
    active: AtomicUsize,
    /// When the last answer was done, in milliseconds since the connection opened.
    idle_from_ms: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            served: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            idle_from_ms: AtomicU64::new(0),
        }
    }

    /// Since when the connection has been idle; `None` while it is answering.
    fn idle_since(&self) -> Option<Instant> {
        (self.active.load(Ordering::Acquire) == 0)
            .then(|| self.born + Duration::from_millis(self.idle_from_ms.load(Ordering::Acquire)))
    }
}

/// Counts a request as active until its answer is ready (or it is dropped).
struct Active(Arc<ConnState>);

impl Drop for Active {
    fn drop(&mut self) {
        let state = &self.0;
        let ms = state.born.elapsed().as_millis() as u64;
        state.idle_from_ms.fetch_max(ms, Ordering::AcqRel);
        state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The per-connection service: the application, plus the connection's bookkeeping, the body
/// timeout and, while draining, `Connection: close`.
struct ConnService {
    server: Arc<Shared>,
    state: Arc<ConnState>,
    peer: SocketAddr,
    h2: bool,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.state.served.store(true, Ordering::Relaxed);
        self.state.active.fetch_add(1, Ordering::AcqRel);
        let active = Active(self.state.clone());
        let timeout = self.server.options.body_timeout;
        let mut request = request.map(|body| {
            if hyper::body::Body::is_end_stream(&body) {
                Body::new(body)
            } else {
                Body::new(Deadline {
                    metrics: self.server.metrics.clone(),
                    inner: body,
                    timeout,
                    sleep: Box::pin(tokio::time::sleep(timeout)),
                })
            }
        });
        request.extensions_mut().insert(Peer(self.peer));
        let (server, h1) = (self.server.clone(), !self.h2);
        Box::pin(async move {
            let Ok(mut response) = server.app.clone().oneshot(request).await;
            drop(active);
            if h1 && server.draining.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}

/// A request body that fails with [`BodyTimeout`] if it has not arrived whole in time.
struct Deadline {
    metrics: Arc<Metrics>,
    inner: Incoming,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.metrics.connections.body_timeouts.inc();
                    Poll::Ready(Some(Err(BodyTimeout(self.timeout).into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection, with the bytes read to tell its protocol put back in front.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
