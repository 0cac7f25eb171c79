//! The QUIC accept loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{session, EdgeState};

/// Accepts connections until shutdown. A connection permit is taken *before*
/// accepting, so at most `max_connections` are served at once.
pub async fn accept_loop(state: &Arc<EdgeState>, endpoint: &quinn::Endpoint, shutdown: &CancellationToken) {
    let limit = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
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
        state.tracker.spawn(async move {
            session::run(task_state, connecting, session).await;
            drop(permit);
        });
    }
}
