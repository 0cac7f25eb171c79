//! The one HTTP server of Ferry (an edge's HTTP port, a voter's API): hyper 1 HTTP/1.1
//! with a timer, so that slow or silent clients cannot hold connections.
//!
//! - A connection must deliver each request's headers within
//!   [`HttpLimits::header_timeout`], counted from when the server starts waiting for
//!   them: a client that connects and sends nothing, or trickles header lines, is closed.
//! - A request body must arrive within [`HttpLimits::body_timeout`] of the request's
//!   start; a handler reading it then gets an error (and answers 4xx).
//! - At most [`HttpLimits::max_connections`] connections are open (permits are taken
//!   before accepting; beyond the cap new connections wait in the kernel's backlog),
//!   and at most [`HttpLimits::max_per_ip`] from one IP address: more are closed at once
//!   and counted (`ferry_http_connections_refused_total{reason="per_ip"}`).
//!
//! Each request carries the client's address as a [`PeerAddr`] extension. With TLS
//! ([`HttpTls`]) the handshake must also finish within the header timeout, and a
//! client certificate (already verified against the configured CA) is on every
//! request of the connection as a [`PeerCert`] extension.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::BoxError;

/// How long connections still running at shutdown may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors): the error repeats until
/// a connection closes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bounds on the clients of one HTTP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections from one IP address at most.
    pub max_per_ip: usize,
    /// Time to deliver a request's headers (and for a new connection, its first).
    pub header_timeout: Duration,
    /// Time to deliver a request's body, from the request's start.
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_per_ip: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The client's address, on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The client's verified certificate (the leaf), on every request of a TLS connection
/// that presented one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert(pub rustls::pki_types::CertificateDer<'static>);

/// Serve HTTPS with this rustls configuration.
pub type HttpTls = Arc<rustls::ServerConfig>;

/// `ferry_http_connections` (open now), `ferry_http_connections_refused_total{reason}`
/// and `ferry_http_connections_timed_out_total`; clones share the values.
#[derive(Debug, Clone, Default)]
pub struct HttpServerMetrics {
    open: Gauge,
    refused: Family<RefusedLabels, Counter>,
    timed_out: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

const PER_IP: RefusedLabels = RefusedLabels { reason: "per_ip" };

impl HttpServerMetrics {
    /// Registers both metrics (the refusal reasons at zero).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("ferry_http_connections", "Open HTTP connections", self.open.clone());
        let _ = self.refused.get_or_create(&PER_IP);
        registry.register(
            "ferry_http_connections_refused",
            "HTTP connections closed at accept, by reason (per_ip: the client's address holds its share)",
            self.refused.clone(),
        );
        registry.register(
            "ferry_http_connections_timed_out",
            "HTTP connections closed because a request's headers did not arrive in time",
            self.timed_out.clone(),
        );
    }
}

/// Serves `service` on `listener` until `cancel`, within `limits`; then stops accepting,
/// lets running requests finish for a few seconds, and returns.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<HttpTls>,
    service: S,
    limits: HttpLimits,
    metrics: HttpServerMetrics,
    cancel: CancellationToken,
) where
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(crate::shares::PerIp::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_ip.take(peer.ip(), limits.max_per_ip) else {
            metrics.refused.get_or_create(&PER_IP).inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let (watcher, metrics) = (graceful.watcher(), metrics.clone());
        let acceptor = tls.clone().map(tokio_rustls::TlsAcceptor::from);
        metrics.open.inc();
        connections.spawn(async move {
            match acceptor {
                None => serve_connection(stream, None, peer, service, limits, watcher, &metrics).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                            let cert = cert.map(|c| PeerCert(c.into_owned()));
                            serve_connection(tls, cert, peer, service, limits, watcher, &metrics).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            metrics.timed_out.inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            // Counted as timed out before it stops being open: a scrape never misses it.
            metrics.open.dec();
            drop((slot, permit));
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::debug!("HTTP connections still open at shutdown; closing them");
    }
    connections.shutdown().await;
}

/// Serves HTTP/1.1 on one accepted connection (plain or TLS) until it ends.
async fn serve_connection<I, S, B>(
    io: I,
    cert: Option<PeerCert>,
    peer: SocketAddr,
    service: S,
    limits: HttpLimits,
    watcher: hyper_util::server::graceful::Watcher,
    metrics: &HttpServerMetrics,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let body_timeout = limits.body_timeout;
    let hyper_service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut service = service.clone();
        let mut request = request.map(|body| TimedBody::new(body, body_timeout));
        request.extensions_mut().insert(PeerAddr(peer));
        if let Some(cert) = &cert {
            request.extensions_mut().insert(cert.clone());
        }
        async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(request).await
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), hyper_service);
    if let Err(e) = watcher.watch(connection).await {
        if e.is_timeout() {
            metrics.timed_out.inc();
        }
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// A request body that must arrive within a deadline: after it, reading fails.
pub struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: Incoming, within: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(within)) }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err("the request body did not arrive in time".into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
