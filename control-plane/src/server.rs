//! Running one control-plane voter: raft node, raft transport and HTTP API, with
//! shutdown on cancel (stop accepting → finish in-flight requests → flush → exit).

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Api;
use crate::node::{self, NodeConfig, NodeHandle};
use crate::transport::TransportConfig;

/// Everything a voter needs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub node: NodeConfig,
    pub transport: TransportConfig,
    pub http_listen: SocketAddr,
    pub token: String,
    /// How long writes and linearizable reads wait for raft.
    pub request_timeout: Duration,
}

/// A started voter.
pub struct Control {
    pub node: NodeHandle,
    pub http_addr: SocketAddr,
    tracker: TaskTracker,
    http: tokio::task::JoinHandle<()>,
}

/// Why a voter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("raft node: {0}")]
    Node(#[from] node::NodeError),
    #[error("http listener on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
}

impl Control {
    /// Opens storage, starts raft and binds the HTTP API.
    pub async fn start(config: ControlConfig, cancel: CancellationToken) -> Result<Control, StartError> {
        let tracker = TaskTracker::new();
        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| StartError::Http { addr: config.http_listen, source })?;
        let http_addr =
            listener.local_addr().map_err(|source| StartError::Http { addr: config.http_listen, source })?;
        let node = node::start(config.node, config.transport, &tracker, cancel.clone()).await?;
        let router = Api::new(node.clone(), config.token, config.request_timeout).router();
        let http = tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(cancel.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "http server failed");
            }
        });
        Ok(Control { node, http_addr, tracker, http })
    }

    /// Waits for shutdown to finish (after the cancel token fired).
    pub async fn wait(self) {
        let _ = self.http.await;
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await.is_err() {
            tracing::warn!("control-plane tasks still running at exit");
        }
    }
}
