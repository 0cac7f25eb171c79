//! Running one control-plane voter: raft node, raft transport and HTTP API, with
//! shutdown on cancel (stop accepting → finish in-flight requests → flush → exit).

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use ferry_node::cluster::gossip::{Gossip, GossipConfig, GossipMetrics, SelfInfo};
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
    /// Health gossip (none: this voter does not gossip, routing trusts registration).
    pub gossip: Option<GossipConfig>,
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
    #[error("gossip: {0}")]
    Gossip(String),
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
        let mut api = Api::new(node.clone(), config.token, config.request_timeout);
        if let Some(gossip_config) = config.gossip {
            let metrics = GossipMetrics::default();
            api.register_gossip_metrics(&metrics);
            let info = SelfInfo {
                role: "voter".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                http_addr: http_addr.to_string(),
                ..SelfInfo::default()
            };
            let gossip = Gossip::start(
                gossip_config,
                Arc::new(move || info.clone()),
                metrics,
                &tracker,
                cancel.clone(),
            )
            .await
            .map_err(|e| StartError::Gossip(e.to_string()))?;
            api = api.with_gossip(gossip);
        }
        let router = api.router();
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
