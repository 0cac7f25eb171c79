//! `ferry dev`: a local edge plus a synthetic publisher on `live/demo`, for trying
//! Ferry on one machine. Later issues grow it into a whole local cluster.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use ferry_node::client::publish::{publish, PublishOptions, Source};
use ferry_node::edge::{BoundEdge, EdgeConfig};
use ferry_node::media::synthetic::SyntheticConfig;
use ferry_node::tls::{ClientTrust, TransportTuning};
use ferry_proto::{NodeId, StreamName};

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// UDP address for the edge's QUIC port.
    #[arg(long, env = "FERRY_DEV_QUIC_LISTEN", default_value = "127.0.0.1:4433")]
    pub quic_listen: SocketAddr,
    /// TCP address for the edge's HTTP port.
    #[arg(long, env = "FERRY_DEV_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Stream the synthetic publisher sends.
    #[arg(long, env = "FERRY_DEV_STREAM", default_value = "live/demo")]
    pub stream: String,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_signal();
    let config = EdgeConfig::new(NodeId::new("dev-edge")?, args.quic_listen, args.http_listen);
    let edge =
        BoundEdge::bind(config).await.context("cannot start the dev edge (ports in use? see --help)")?;
    let quic = edge.quic_addr()?;
    let http = edge.http_addr()?;
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
    println!("Ferry dev: edge on quic://{quic} (metrics http://{http}/metrics), publishing {stream}");
    println!(
        "Watch it:  cargo run --release -- watch --edge {quic} --stream {stream} --insecure --duration 10s"
    );
    println!("Stop with Ctrl-C.");
    let published = publisher.await.context("publisher task")?;
    if let Err(e) = published {
        tracing::error!(error = %e, "dev publisher stopped");
    }
    shutdown.cancel();
    edge_task.await.context("edge task")??;
    Ok(())
}
