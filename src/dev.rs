//! `ferry dev`: a whole Ferry cluster on one machine — a single-voter control plane
//! (sled data in a temp dir, or `--data-dir`), two edges in two regions that register
//! with it and gossip with it and each other, and a synthetic publisher on `live/demo`
//! routed to the first edge (it moves to the second when the first is drained or dies).
//! The second edge pulls the stream from its origin on demand. Draining one edge
//! (`ferry ctl edges drain`) stops that edge only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ferry_client::publish::{PublishOptions, Source};
use ferry_client::routed::{publish_routed, RouteOptions};
use ferry_control_plane::node::NodeConfig;
use ferry_control_plane::server::{Control, ControlConfig};
use ferry_control_plane::transport::{RaftSecurity, TransportConfig};
use ferry_edge::auth::{kid_of, Action, Claims, Policy, StreamScope, TokenSecret};
use ferry_edge::config::AccessConfig;
use ferry_edge::webrtc::WebRtcConfig;
use ferry_edge::{BoundEdge, EdgeConfig};
use ferry_media::synthetic::SyntheticConfig;
use ferry_net::dial::SessionHello;
use ferry_net::gossip::{GossipConfig, KeyringSource, DEFAULT_INTERVAL};
use ferry_net::identity::{Identity, Role};
use ferry_net::tls::default_names;
use ferry_net::tls::{ClientTrust, ClusterTls, ServerIdentity, TransportTuning};
use ferry_proto::{NodeId, StreamName};

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// UDP address for the edge's QUIC port.
    #[arg(long, env = "FERRY_DEV_QUIC_LISTEN", default_value = "127.0.0.1:4433")]
    pub quic_listen: SocketAddr,
    /// TCP address for the edge's HTTP port.
    #[arg(long, env = "FERRY_DEV_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// UDP address for the second edge's QUIC port (region local-b).
    #[arg(long, env = "FERRY_DEV_EDGE_B_QUIC_LISTEN", default_value = "127.0.0.1:4434")]
    pub edge_b_quic_listen: SocketAddr,
    /// TCP address for the second edge's HTTP port.
    #[arg(long, env = "FERRY_DEV_EDGE_B_HTTP_LISTEN", default_value = "127.0.0.1:8081")]
    pub edge_b_http_listen: SocketAddr,
    /// Control-plane voters: 1, or 3 to try failover of the control plane locally.
    #[arg(long, env = "FERRY_DEV_VOTERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    pub voters: u16,
    /// TCP address of the control plane's HTTP API (voter N listens on its port + N - 1).
    #[arg(long, env = "FERRY_DEV_CONTROL_LISTEN", default_value = "127.0.0.1:9000")]
    pub control_listen: SocketAddr,
    /// UDP address of the control plane's raft transport (voter N: port + N - 1).
    #[arg(long, env = "FERRY_DEV_RAFT_LISTEN", default_value = "127.0.0.1:9001")]
    pub raft_listen: SocketAddr,
    /// Control-plane data directory (default: a fresh temp dir, removed at exit).
    #[arg(long, env = "FERRY_DEV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Stream the synthetic publisher sends.
    #[arg(long, env = "FERRY_DEV_STREAM", default_value = "live/demo")]
    pub stream: String,
    /// UDP ports the dev edges' WebRTC sessions bind (on 127.0.0.1), split between them.
    #[arg(long, env = "FERRY_DEV_WEBRTC_UDP_PORTS", default_value = "51000-51099",
          value_parser = ferry_edge::webrtc::parse_port_range)]
    pub webrtc_udp_ports: (u16, u16),
}

/// The cluster id of a dev cluster: gossip's, and the audience of its tokens.
const DEV_CLUSTER: &str = "ferry-dev";
/// The operator token of a dev cluster (local only; never use it elsewhere).
const DEV_TOKEN: &str = "ferry-dev-operator-token";
/// Silence after which the dev publisher counts its edge as gone (as `ferry publish`).
const DEV_FAILOVER_AFTER: Duration = Duration::from_millis(1500);

/// A free UDP port on loopback (bound, then released for gossip to bind).
fn free_udp_port() -> anyhow::Result<SocketAddr> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("no free UDP port for gossip")?;
    Ok(socket.local_addr()?)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let shutdown = crate::process::shutdown_signal();
    // Without --data-dir, a temporary directory removed on exit.
    let (data_dir, _cleanup) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("ferry-dev-")
                .tempdir()
                .context("cannot create a temporary data directory (give --data-dir)")?;
            (temp.path().to_owned(), Some(temp))
        }
    };

    // Gossip ports, picked now so every process can seed from the voter's, and the
    // cluster's gossip keyring (kept with the data).
    let voter_gossip = free_udp_port()?;
    let keyring_dir = data_dir.join("gossip-keyring");
    if !keyring_dir.join("dev.key").exists() {
        std::fs::create_dir_all(&keyring_dir)
            .with_context(|| format!("cannot create {}", keyring_dir.display()))?;
        std::fs::write(keyring_dir.join("dev.key"), ferry_net::seal::new_key_hex()?)
            .with_context(|| format!("cannot write the dev gossip key in {}", keyring_dir.display()))?;
    }
    let keyring = KeyringSource::load(keyring_dir, DEV_CLUSTER).context("the dev gossip keyring")?;
    let gossip = |id: &str, listen: SocketAddr| GossipConfig {
        node_id: id.to_owned(),
        listen,
        advertise: None,
        seeds: vec![voter_gossip.to_string()],
        cluster_id: DEV_CLUSTER.into(),
        interval: DEFAULT_INTERVAL,
        keyring: Some(keyring.clone()),
        identity: None,
    };

    // The secret that signs the dev tokens (kept with the data, so tokens minted for a
    // --data-dir keep working across restarts).
    let secret_path = data_dir.join("tokens").join("dev.key");
    if !secret_path.exists() {
        let dir = data_dir.join("tokens");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let secret = ferry_net::random::id().context("generating the dev token secret")?
            + &ferry_net::random::id().context("generating the dev token secret")?;
        std::fs::write(&secret_path, secret)
            .with_context(|| format!("cannot write {}", secret_path.display()))?;
    }
    let token = |action: Action| -> anyhow::Result<String> {
        let secret = TokenSecret::from_file(&secret_path)?;
        let mut claims = Claims::new(
            StreamScope::Prefix("live/".into()),
            action,
            DEV_CLUSTER,
            Duration::from_secs(12 * 3600),
            std::time::SystemTime::now(),
        );
        claims.sub = Some(format!("dev-{action}"));
        Ok(secret.sign(&claims, Some(&kid_of(&secret_path))))
    };
    let (publish_token, view_token) = (token(Action::Publish)?, token(Action::View)?);

    // A cluster CA and a certificate per node: relay and raft are mutual TLS.
    let ca_dir = data_dir.join("ca");
    if !ca_dir.join("ca.pem").exists() {
        ferry_net::tls::init_ca(&ca_dir).context("creating the dev cluster CA")?;
    }
    let cluster_tls = |node: &str, identity: Identity| -> anyhow::Result<ClusterTls> {
        let (cert, key) = ferry_net::tls::issue_node_cert(
            &ca_dir,
            node,
            &identity,
            &default_names(),
            ferry_net::tls::DEFAULT_CERT_LIFETIME,
            &ca_dir,
        )
        .with_context(|| format!("issuing the dev certificate for {node}"))?;
        Ok(ClusterTls { ca: ca_dir.join("ca.pem"), cert, key })
    };

    // Control plane: `--voters` voters (1 or 3), voter N on the given ports + N - 1.
    let offset = |addr: SocketAddr, i: u16| {
        let mut a = addr;
        if a.port() != 0 {
            a.set_port(a.port().saturating_add(i));
        }
        a
    };
    let mut raft_addrs = Vec::new();
    for i in 0..args.voters {
        let want = offset(args.raft_listen, i);
        let raft = std::net::UdpSocket::bind(want).and_then(|s| s.local_addr());
        raft_addrs.push(raft.with_context(|| format!("cannot bind the raft port {want}"))?);
    }
    let peers: BTreeMap<u64, String> =
        raft_addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.to_string())).collect();
    let mut voters = Vec::new();
    for (i, raft) in raft_addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let name = format!("voter-{id}");
        let tls = cluster_tls(&name, Identity::voter(DEV_CLUSTER, id))?;
        let dir = if id == 1 { data_dir.clone() } else { data_dir.join(&name) };
        let gossip_addr = if id == 1 { voter_gossip } else { free_udp_port()? };
        let control = Control::start(
            ControlConfig {
                node: NodeConfig::new(id, peers.clone(), dir),
                transport: TransportConfig {
                    listen: *raft,
                    security: RaftSecurity::Mutual { tls, cluster: DEV_CLUSTER.into() },
                },
                require_edge_proofs: true,
                http_listen: offset(args.control_listen, i as u16),
                token: DEV_TOKEN.to_owned(),
                request_timeout: Duration::from_secs(5),
                gossip: Some(gossip(&name, gossip_addr)),
                failover_grace: ferry_control_plane::failover::DEFAULT_GRACE,
                stream_grace: ferry_control_plane::expiry::DEFAULT_GRACE,
                http_limits: Default::default(),
                // Plain HTTP on loopback, so the tour's curl commands stay short.
                api_tls: None,
                edge_certificates: None,
            },
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("cannot start dev voter {id}"))?;
        voters.push(control);
    }
    for control in &voters {
        let mut status = control.node.status_watch();
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.leader != 0))
            .await
            .context("the dev control plane elected no leader")?
            .context("the dev control plane stopped")?;
    }
    let urls: Vec<String> = voters.iter().map(|c| format!("http://{}", c.http_addr)).collect();
    let control_url = urls.join(",");

    // Two edges in two regions; they register themselves through the watch loop.
    let (low, high) = args.webrtc_udp_ports;
    let mid = low + (high.saturating_sub(low)) / 2;
    let specs = [
        ("dev-edge", "local-a", args.quic_listen, args.http_listen, (low, mid)),
        (
            "dev-edge-b",
            "local-b",
            args.edge_b_quic_listen,
            args.edge_b_http_listen,
            (mid.saturating_add(1).min(high), high),
        ),
    ];
    let mut edges = Vec::new();
    for (id, region, quic, http, ports) in specs {
        let mut config = EdgeConfig::new(NodeId::new(id)?, quic, http);
        config.region = region.into();
        // WebRTC on loopback; clients need the dev tokens the banner prints.
        config.webrtc = WebRtcConfig {
            udp_ports: ports,
            bind_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            ..WebRtcConfig::default()
        };
        config.access = AccessConfig {
            token_secrets: vec![secret_path.clone()],
            policy: Policy { audience: DEV_CLUSTER.into(), ..Policy::default() },
            allow_anonymous: false,
        };
        config.gossip = Some(gossip(id, free_udp_port()?));
        config.control_plane = urls.clone();
        config.control_token = DEV_TOKEN.to_owned();
        let identity = Identity::new(DEV_CLUSTER, Role::Edge, id).map_err(anyhow::Error::msg)?;
        let tls = cluster_tls(id, identity)?;
        config.identity = ServerIdentity::Files { cert: tls.cert.clone(), key: tls.key.clone() };
        config.upstream_trust = ClientTrust::Cluster(tls.clone());
        config.cluster_tls = Some(tls);
        let edge = BoundEdge::bind(config)
            .await
            .with_context(|| format!("cannot start the dev edge {id} (ports in use? see --help)"))?;
        edges.push((edge.quic_addr()?, edge.http_addr()?, edge));
    }
    let mut edge_tasks = Vec::new();
    let mut addrs = Vec::new();
    for (quic, http, edge) in edges {
        addrs.push((quic, http));
        // Its own token: an operator's drain of one edge stops that edge only.
        edge_tasks.push(tokio::spawn(edge.run(shutdown.child_token())));
    }
    let [(quic, http), (quic_b, http_b)] = addrs[..] else { bail!("dev edges did not start") };

    let stream = StreamName::new(args.stream.clone()).context("--stream")?;
    // Routing has somewhere to send the publisher once both edges registered and
    // every voter's gossip shows them alive: start it then, so a normal start logs no
    // routing failure.
    if let Some(control) = voters.first() {
        let node = &control.node;
        let registered =
            |_: &_| node.read(|s| ["dev-edge", "dev-edge-b"].iter().all(|id| s.edges.contains_key(*id)));
        let mut status = node.status_watch();
        let routable = async {
            let _ = status.wait_for(registered).await;
            // Gossip has no change notification: look every gossip round's fraction.
            while !voters.iter().all(|v| v.live_edges().len() >= 2) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(15), routable).await.is_err() {
            tracing::warn!("the dev edges are not routable within 15 s; the publisher starts anyway");
        }
    }
    // The publisher is routed in dev-edge's region, like `ferry publish --control-plane`:
    // when that edge is drained or dies it moves to the other one.
    let opts = PublishOptions {
        edge: String::new(),
        stream: stream.clone(),
        source: Source::Synthetic(SyntheticConfig::default()),
        duration: None,
        trust: ClientTrust::Insecure,
        tuning: TransportTuning::default().failing_over(DEV_FAILOVER_AFTER),
        label: NodeId::new("dev-publisher")?,
        max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
        session: SessionHello { token: Some(publish_token.clone()), ..SessionHello::default() },
    };
    let route = RouteOptions {
        control_plane: urls.clone(),
        region: Some("local-a".into()),
        max_failures: None,
        http: ferry_net::http::HttpClient::plain(),
    };
    let publisher = tokio::spawn(publish_routed(opts, route, shutdown.clone()));
    // The printed commands work once the stream has its origin (the edges register
    // and the publisher is routed first).
    if let Some(control) = voters.first() {
        let node = &control.node;
        let placed =
            |_: &_| node.read(|s| s.streams.get(stream.as_str()).is_some_and(|st| st.origin == "dev-edge"));
        let mut status = node.status_watch();
        if !matches!(tokio::time::timeout(Duration::from_secs(15), status.wait_for(placed)).await, Ok(Ok(_)))
        {
            tracing::warn!(%stream, "the dev publisher is not placed yet; it keeps trying");
        }
    }
    let banner = [
        format!("Ferry dev: edges dev-edge (local-a) quic://{quic} http://{http}, dev-edge-b (local-b) quic://{quic_b} http://{http_b}; publishing {stream} at dev-edge"),
        format!("Control plane ({} voter(s), data in {}): {control_url}", voters.len(), data_dir.display()),
        format!("Watch it:  cargo run --release -- watch --edge {quic} --stream {stream} --insecure --duration 10s --token {view_token}"),
        format!("Routed:    cargo run --release -- watch --control-plane {control_url} --region local-b --stream {stream} --insecure --duration 10s --token {view_token}"),
        format!("Publish from a browser (WHIP): http://{http}/demo/publish?stream=live/browser&token={publish_token}"),
        format!("Watch in a browser (WHEP):     http://{http_b}/demo/watch?stream=live/browser&token={view_token}"),
        format!("More tokens: cargo run --release -- token --secret-file {} --cluster-id {DEV_CLUSTER} --stream-prefix live/ --action view", secret_path.display()),
        format!("Operate:   cargo run --release -- ctl --control-plane {control_url} --control-token {DEV_TOKEN} edges list"),
        "Stop with Ctrl-C.".to_owned(),
    ];
    // Whoever started us may have closed stdout; the cluster keeps running.
    if let Err(e) = out!("{}", banner.join("\n")) {
        tracing::warn!(error = %e, "cannot print the dev banner");
    }
    // The routed publisher runs until Ctrl-C unless another publisher takes its stream
    // over; the cluster runs until Ctrl-C either way.
    if let Err(e) = publisher.await.context("publisher task")? {
        tracing::warn!("the dev publisher stopped: {}", ferry_net::Chain(&e));
    }
    shutdown.cancelled().await;
    for task in edge_tasks {
        task.await.context("edge task")??;
    }
    for control in voters {
        control.wait().await.context("a dev voter stopped")?;
    }
    Ok(())
}
