//! The QUIC accept loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_net::shares::PerIp;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{session, EdgeState};

/// A QUIC handshake must finish within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// With more handshakes than this in flight, clients whose address is not validated
/// yet are sent a Retry first (a spoofed source address cannot answer it).
const RETRY_ABOVE: i64 = 64;

/// A handshake in flight, counted in the `handshakes` gauge from accept until it
/// finishes or fails.
struct Handshaking(Gauge);

impl Handshaking {
    fn start(gauge: &Gauge) -> Handshaking {
        gauge.inc();
        Handshaking(gauge.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Accepts connections until shutdown. A connection permit is taken *before*
/// accepting, so at most `max_connections` are served at once; one client address
/// holds at most `max_connections_per_ip` of them (more are refused at once); under a
/// flood of handshakes, unvalidated addresses must answer a Retry first.
pub async fn accept_loop(state: &Arc<EdgeState>, endpoint: &quinn::Endpoint, shutdown: &CancellationToken) {
    let limit = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::default());
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let Some(share) = per_ip.take(incoming.remote_address().ip(), state.config.max_connections_per_ip)
        else {
            state.metrics.connection_refused("per_ip");
            incoming.refuse();
            continue;
        };
        let flooded = state.metrics.handshakes.get() > RETRY_ABOVE;
        if flooded && !incoming.remote_address_validated() && incoming.may_retry() {
            state.metrics.connection_refused("retry");
            if let Err(e) = incoming.retry() {
                tracing::debug!(error = %e, "sending a retry failed");
            }
            continue;
        }
        state.metrics.connections_accepted.inc();
        let connecting = match state.congestion_config() {
            Some(config) => incoming.accept_with(config),
            None => incoming.accept(),
        };
        let connecting = match connecting {
            Ok(connecting) => connecting,
            Err(e) => {
                tracing::debug!(error = %e, "accepting a connection failed");
                continue;
            }
        };
        let session = state.next_session.fetch_add(1, Ordering::Relaxed);
        let task_state = Arc::clone(state);
        let handshake = Handshaking::start(&state.metrics.handshakes);
        state.tracker.spawn(async move {
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await;
            drop(handshake);
            match conn {
                Ok(Ok(conn)) => session::run(task_state, conn, session).await,
                Ok(Err(e)) => tracing::debug!(session, error = %e, "handshake failed"),
                Err(_) => tracing::debug!(session, "handshake timed out"),
            }
            drop((permit, share));
        });
    }
}
