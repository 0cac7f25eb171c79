//! `ferry dev`: Ferry on one machine — a single-voter control plane (sled data in a
//! temp dir, or `--data-dir`), one edge registered with it, and a synthetic
//! publisher on `live/demo`. Later issues grow it into a whole local cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ferry_control_plane::node::NodeConfig;
use ferry_control_plane::server::{Control, ControlConfig};
use ferry_control_plane::state::{Command, Outcome, Request};
use ferry_control_plane::transport::TransportConfig;
use ferry_node::client::publish::{publish, PublishOptions, Source};
use ferry_node::edge::{default_names, BoundEdge, EdgeConfig};
use ferry_node::media::synthetic::SyntheticConfig;
use ferry_node::tls::{ClientTrust, ServerIdentity, TransportTuning};
use ferry_node::webrtc::WebRtcConfig;
use ferry_proto::{NodeId, StreamName};

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// UDP address for the edge's QUIC port.
    #[arg(long, env = "FERRY_DEV_QUIC_LISTEN", default_value = "127.0.0.1:4433")]
    pub quic_listen: SocketAddr,
    /// TCP address for the edge's HTTP port.
    #[arg(long, env = "FERRY_DEV_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// TCP address of the control plane's HTTP API.
    #[arg(long, env = "FERRY_DEV_CONTROL_LISTEN", default_value = "127.0.0.1:9000")]
    pub control_listen: SocketAddr,
    /// UDP address of the control plane's raft transport.
    #[arg(long, env = "FERRY_DEV_RAFT_LISTEN", default_value = "127.0.0.1:9001")]
    pub raft_listen: SocketAddr,
    /// Control-plane data directory (default: a fresh temp dir, removed at exit).
    #[arg(long, env = "FERRY_DEV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Stream the synthetic publisher sends.
    #[arg(long, env = "FERRY_DEV_STREAM", default_value = "live/demo")]
    pub stream: String,
    /// UDP ports the dev edge's WebRTC sessions bind (on 127.0.0.1).
    #[arg(long, env = "FERRY_DEV_WEBRTC_UDP_PORTS", default_value = "51000-51099",
          value_parser = ferry_node::webrtc::parse_port_range)]
    pub webrtc_udp_ports: (u16, u16),
}

/// The operator token of a dev cluster (local only; never use it elsewhere).
const DEV_TOKEN: &str = "ferry-dev-operator-token";

/// Removes a temp data dir when dropped.
struct TempData(Option<PathBuf>);

impl Drop for TempData {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_signal();
    let (data_dir, _cleanup) = match &args.data_dir {
        Some(dir) => (dir.clone(), TempData(None)),
        None => {
            let dir = std::env::temp_dir().join(format!("ferry-dev-{}", std::process::id()));
            (dir.clone(), TempData(Some(dir)))
        }
    };

    // Control plane: one voter.
    let raft = std::net::UdpSocket::bind(args.raft_listen).and_then(|s| s.local_addr());
    let raft = raft.with_context(|| format!("cannot bind the raft port {}", args.raft_listen))?;
    let peers = BTreeMap::from([(1, raft.to_string())]);
    let control = Control::start(
        ControlConfig {
            node: NodeConfig::new(1, peers, data_dir.clone()),
            transport: TransportConfig {
                listen: raft,
                identity: ServerIdentity::SelfSigned { names: default_names() },
                trust: ClientTrust::Insecure,
            },
            http_listen: args.control_listen,
            token: DEV_TOKEN.to_owned(),
            request_timeout: Duration::from_secs(5),
            gossip: None,
        },
        shutdown.clone(),
    )
    .await
    .context("cannot start the dev control plane")?;
    let node = control.node.clone();
    let mut status = node.status_watch();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.leader != 0))
        .await
        .context("the dev control plane elected no leader")?
        .context("the dev control plane stopped")?;

    // Edge, registered with the control plane.
    let mut config = EdgeConfig::new(NodeId::new("dev-edge")?, args.quic_listen, args.http_listen);
    // Local only: WebRTC on loopback, no tokens needed.
    config.webrtc = WebRtcConfig {
        udp_ports: args.webrtc_udp_ports,
        bind_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        allow_anonymous: true,
        ..WebRtcConfig::default()
    };
    let edge =
        BoundEdge::bind(config).await.context("cannot start the dev edge (ports in use? see --help)")?;
    let quic = edge.quic_addr()?;
    let http = edge.http_addr()?;
    let register = Request {
        request_id: format!("dev-register-{}", std::process::id()),
        actor: "ferry dev".into(),
        at_ms: 0,
        command: Command::RegisterEdge {
            id: "dev-edge".into(),
            region: "local".into(),
            quic_addr: quic.to_string(),
            http_addr: http.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            capacity: 0,
        },
    };
    match node.write(register, Duration::from_secs(5)).await.context("registering the dev edge")? {
        (_, Outcome::Ok { .. }) => {}
        (_, Outcome::Rejected { message, .. }) => bail!("the control plane refused the dev edge: {message}"),
    }
    let edge_task = tokio::spawn(edge.run(shutdown.clone()));

    let stream = StreamName::new(args.stream.clone()).context("--stream")?;
    let opts = PublishOptions {
        edge: quic.to_string(),
        stream: stream.clone(),
        source: Source::Synthetic(SyntheticConfig::default()),
        duration: None,
        trust: ClientTrust::Insecure,
        tuning: TransportTuning::default(),
        label: NodeId::new("dev-publisher")?,
        max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
    };
    let publisher = tokio::spawn(publish(opts, shutdown.clone()));
    let control_url = format!("http://{}", control.http_addr);
    println!("Ferry dev: edge on quic://{quic} (metrics http://{http}/metrics), publishing {stream}");
    println!("Control plane (1 voter, data in {}): {control_url}", data_dir.display());
    println!(
        "Watch it:  cargo run --release -- watch --edge {quic} --stream {stream} --insecure --duration 10s"
    );
    println!("Publish from a browser (WHIP): http://{http}/demo/publish?stream=live/browser");
    println!("Watch in a browser (WHEP):     http://{http}/demo/watch?stream=live/browser");
    println!("Operate:   cargo run --release -- ctl --control {control_url} --token {DEV_TOKEN} edges list");
    println!("Stop with Ctrl-C.");
    let published = publisher.await.context("publisher task")?;
    if let Err(e) = published {
        tracing::error!(error = %e, "dev publisher stopped");
    }
    shutdown.cancel();
    edge_task.await.context("edge task")??;
    control.wait().await;
    Ok(())
}
