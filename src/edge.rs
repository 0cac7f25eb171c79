//! `ferry edge`: run an edge.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_edge::auth::Policy;
use ferry_edge::certs::CertIssuance;
use ferry_edge::config::AccessConfig;
use ferry_edge::track::BufferConfig;
use ferry_edge::webrtc::WebRtcConfig;
use ferry_edge::{BoundEdge, EdgeConfig};
use ferry_net::identity::{Identity, Role};
use ferry_net::tls::{default_names, ClientTrust, ClusterTls, ServerIdentity, TransportTuning};
use ferry_proto::NodeId;

use crate::units;

#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// This edge's node id.
    #[arg(long, env = "FERRY_NODE_ID")]
    pub node_id: String,
    /// Region label (placement and metrics).
    #[arg(long, env = "FERRY_REGION", default_value = "local")]
    pub region: String,
    /// UDP address for QUIC.
    #[arg(long, env = "FERRY_QUIC_LISTEN", default_value = "127.0.0.1:4433")]
    pub quic_listen: SocketAddr,
    /// TCP address for HTTP: WHIP/WHEP, the demo pages, /healthz, /readyz, /metrics.
    #[arg(long, env = "FERRY_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Host (IP or DNS name) peers, the control plane and routed clients reach this
    /// edge at; the listen ports are added. Needed when listening on 0.0.0.0 or [::]
    /// in a cluster (in Kubernetes: the pod IP). Default: the listen addresses.
    #[arg(long, env = "FERRY_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// Pull streams this edge lacks from the edge at HOST:PORT.
    #[arg(long, env = "FERRY_UPSTREAM")]
    pub upstream: Option<String>,
    /// CA to verify the upstream edge with (default: no verification, dev only).
    #[arg(long, env = "FERRY_UPSTREAM_CA_FILE", value_name = "PEM", conflicts_with = "cluster_ca")]
    pub upstream_ca_file: Option<PathBuf>,
    /// Cluster CA (PEM, from `ferry ca init`): upstreams are verified against it and
    /// downstream edges must present a certificate it signed.
    #[arg(long, env = "FERRY_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
    /// Let the control plane issue and renew this edge's cluster certificate, kept in
    /// this directory (`node.pem`, `node-key.pem`) instead of --cluster-cert/--cluster-key.
    /// The first start needs --join-token-file; renewals (at two thirds of the
    /// lifetime) use the current certificate. Needs --cluster-ca and https:// --control-plane.
    #[arg(long, env = "FERRY_CERT_DIR", requires = "cluster_ca", conflicts_with_all = ["cluster_cert", "cluster_key"])]
    pub cert_dir: Option<PathBuf>,
    /// File holding the cluster's join token (the voters' --join-token-file), for the
    /// first certificate in --cert-dir.
    #[arg(long, env = "FERRY_JOIN_TOKEN_FILE", requires = "cert_dir")]
    pub join_token_file: Option<PathBuf>,
    /// This edge's cluster certificate (PEM, from `ferry ca issue`); also its QUIC
    /// server certificate unless --cert is given.
    #[arg(long, env = "FERRY_CLUSTER_CERT", requires = "cluster_ca")]
    pub cluster_cert: Option<PathBuf>,
    /// Private key for --cluster-cert.
    #[arg(long, env = "FERRY_CLUSTER_KEY", requires = "cluster_ca")]
    pub cluster_key: Option<PathBuf>,
    /// Certificate chain (PEM). Without it a self-signed certificate is generated.
    #[arg(long, env = "FERRY_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, env = "FERRY_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// QUIC connections served at once (at least 1).
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value = "4096", value_parser = units::at_least_one)]
    pub max_connections: usize,
    /// QUIC connections one client IP address may hold at once (at least 1); more are
    /// refused at once (`ferry_connections_refused_total{reason="per_ip"}`).
    #[arg(long, env = "FERRY_MAX_CONNECTIONS_PER_IP", default_value = "256", value_parser = units::at_least_one)]
    pub max_connections_per_ip: usize,
    /// A viewer connection with no subscription for this long is closed (code
    /// `no_error`, reason `idle`), so idle clients do not hold connection permits.
    #[arg(long, env = "FERRY_VIEWER_IDLE_TIMEOUT", default_value = "30s", value_parser = units::duration)]
    pub viewer_idle_timeout: Duration,
    /// Groups kept per track (at least 1).
    #[arg(long, env = "FERRY_GROUP_CACHE", default_value = "4", value_parser = units::at_least_one)]
    pub group_cache: usize,
    /// Bytes kept per track: payloads plus per-frame bookkeeping (at least 1).
    #[arg(long, env = "FERRY_TRACK_BUFFER_BYTES", default_value = "16777216", value_parser = units::at_least_one)]
    pub track_buffer_bytes: usize,
    /// Unacknowledged bytes QUIC queues per connection (bounds memory per slow viewer).
    #[arg(long, env = "FERRY_SEND_WINDOW", default_value_t = 4 * 1024 * 1024)]
    pub send_window: u64,
    /// Latency budget this edge asks of its upstream.
    #[arg(long, env = "FERRY_RELAY_MAX_LAG", default_value = "3s", value_parser = units::duration)]
    pub relay_max_lag: Duration,
    /// Drop relayed tracks nobody watched for this long.
    #[arg(long, env = "FERRY_RELAY_LINGER", default_value = "10s", value_parser = units::duration)]
    pub relay_linger: Duration,
    /// Drain deadline: how long shutdown (SIGTERM, `ferry ctl edges drain`) waits for
    /// sessions to move away after GOAWAY before the process exits anyway.
    #[arg(long, alias = "drain-deadline", env = "FERRY_SHUTDOWN_GRACE", default_value = "30s", value_parser = units::duration)]
    pub shutdown_grace: Duration,
    /// Apply rollouts' fault injection (`fault.reject_sessions_bp`, ...) for drills;
    /// without it, edges ignore those overrides.
    #[arg(long, env = "FERRY_ALLOW_FAULT_INJECTION")]
    pub allow_fault_injection: bool,
    /// On drain, how long WHEP viewers keep playing before they are closed (and
    /// re-route by themselves); at most the drain deadline.
    #[arg(long, env = "FERRY_WHEP_DRAIN_GRACE", default_value = "10s", value_parser = units::duration)]
    pub whep_drain_grace: Duration,
    /// Secret that signs the tokens clients must present (QUIC publish and watch,
    /// WHIP, WHEP): a file, or a directory of them (repeatable). A file's name
    /// without the extension is its key id: edges accept every secret given, so a
    /// secret rotates without dropping anyone; they are re-read every second.
    #[arg(long, env = "FERRY_TOKEN_SECRET_FILE", value_name = "FILE|DIR", value_delimiter = ',')]
    pub token_secret_file: Vec<PathBuf>,
    /// Longest token lifetime honoured, from its issue time (longer ones expire then).
    #[arg(long, env = "FERRY_TOKEN_MAX_TTL", default_value = "24h", value_parser = units::duration)]
    pub token_max_ttl: Duration,
    /// Serve clients without a token and, on an edge without --cluster-ca, relay to
    /// edges without a cluster certificate. For development only: anyone who reaches
    /// the edge may publish or watch any stream.
    #[arg(long, env = "FERRY_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    #[command(flatten)]
    pub http: crate::cluster_args::HttpServerArgs,
    #[command(flatten)]
    pub webrtc: WebRtcArgs,
    #[command(flatten)]
    pub gossip: crate::cluster_args::GossipArgs,
    #[command(flatten)]
    pub control: crate::cluster_args::ControlPlaneArgs,
}

/// WHIP/WHEP settings of an edge.
#[derive(Debug, Clone, Args)]
pub struct WebRtcArgs {
    /// UDP ports WebRTC sessions bind, LOW-HIGH (one port per session).
    #[arg(long, env = "FERRY_WEBRTC_UDP_PORTS", default_value = "50000-50999", value_parser = parse_port_range)]
    pub webrtc_udp_ports: (u16, u16),
    /// Address WebRTC sockets bind (0.0.0.0: every non-loopback interface).
    #[arg(long, env = "FERRY_WEBRTC_BIND", default_value = "0.0.0.0")]
    pub webrtc_bind: IpAddr,
    /// Address to advertise in ICE candidates instead (behind NAT, Kubernetes node IP).
    #[arg(long, env = "FERRY_WEBRTC_PUBLIC_IP")]
    pub webrtc_public_ip: Option<IpAddr>,
    /// WebRTC sessions served at once (at least 1); more get 503 with Retry-After.
    #[arg(long, env = "FERRY_WEBRTC_MAX_SESSIONS", default_value = "500", value_parser = units::at_least_one)]
    pub webrtc_max_sessions: usize,
    /// WebRTC sessions one client address, and one token subject, may hold at once (at
    /// least 1); more get 429 with Retry-After. Raise it behind a proxy that connects
    /// from few addresses.
    #[arg(
        long,
        env = "FERRY_WEBRTC_MAX_SESSIONS_PER_CLIENT",
        default_value = "32",
        value_parser = units::at_least_one
    )]
    pub webrtc_max_sessions_per_client: usize,
    /// Latency budget of a WHEP viewer; behind by more, it skips to the newest keyframe.
    #[arg(long, env = "FERRY_WEBRTC_MAX_LAG", default_value = "1500ms", value_parser = units::duration)]
    pub webrtc_max_lag: Duration,
    /// Largest SDP offer accepted, in bytes (at least 1).
    #[arg(long, env = "FERRY_WEBRTC_MAX_SDP_BYTES", default_value = "32768", value_parser = units::at_least_one)]
    pub webrtc_max_sdp_bytes: usize,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    ferry_edge::webrtc::parse_port_range(s)
}

impl WebRtcArgs {
    pub fn to_config(&self) -> anyhow::Result<WebRtcConfig> {
        Ok(WebRtcConfig {
            udp_ports: self.webrtc_udp_ports,
            bind_ip: self.webrtc_bind,
            public_ip: self.webrtc_public_ip,
            max_sessions: self.webrtc_max_sessions.max(1),
            max_sessions_per_client: self.webrtc_max_sessions_per_client.max(1),
            max_sdp_bytes: self.webrtc_max_sdp_bytes,
            viewer_max_lag: self.webrtc_max_lag,
            ..WebRtcConfig::default()
        })
    }
}

impl EdgeArgs {
    pub fn to_config(&self) -> anyhow::Result<EdgeConfig> {
        let node = NodeId::new(self.node_id.clone()).context("--node-id")?;
        let mut config = EdgeConfig::new(node.clone(), self.quic_listen, self.http_listen);
        config.region = self.region.clone();
        config.advertise_host = self.advertise_host.clone();
        config.upstream = self.upstream.clone();
        if let Some(ca) = &self.upstream_ca_file {
            config.upstream_trust = ClientTrust::CaFile(ca.clone());
        }
        let files = match (&self.cluster_ca, &self.cluster_cert, &self.cluster_key, &self.cert_dir) {
            (Some(ca), Some(cert), Some(key), None) => Some((ca, cert.clone(), key.clone())),
            (Some(ca), None, None, Some(dir)) => Some((ca, dir.join("node.pem"), dir.join("node-key.pem"))),
            (None, None, None, None) => None,
            _ => anyhow::bail!("--cluster-ca goes with --cluster-cert and --cluster-key, or with --cert-dir"),
        };
        if let Some((ca, cert, key)) = files {
            let cluster = ClusterTls { ca: ca.clone(), cert, key };
            config.upstream_trust = ClientTrust::Cluster(cluster.clone());
            config.cluster_tls = Some(cluster);
        }
        config.identity = match (&self.cert, &self.key, &config.cluster_tls) {
            (Some(cert), Some(key), _) => ServerIdentity::Files { cert: cert.clone(), key: key.clone() },
            (_, _, Some(c)) => ServerIdentity::Files { cert: c.cert.clone(), key: c.key.clone() },
            _ => {
                let mut names = default_names();
                names.push(node.to_string());
                ServerIdentity::SelfSigned { names }
            }
        };
        config.max_connections = self.max_connections;
        config.max_connections_per_ip = self.max_connections_per_ip;
        config.viewer_idle_timeout = self.viewer_idle_timeout.max(Duration::from_millis(100));
        config.http_limits = self.http.limits();
        config.buffer =
            BufferConfig { max_groups: self.group_cache.max(1), max_bytes: self.track_buffer_bytes };
        config.tuning = TransportTuning { send_window: self.send_window, ..TransportTuning::default() };
        config.relay_max_lag = self.relay_max_lag;
        config.relay_linger = self.relay_linger;
        config.shutdown_grace = self.shutdown_grace;
        config.whep_drain_grace = self.whep_drain_grace;
        config.allow_fault_injection = self.allow_fault_injection;
        config.webrtc = self.webrtc.to_config()?;
        config.access = AccessConfig {
            token_secrets: self.token_secret_file.clone(),
            policy: Policy { audience: self.gossip.cluster_id.clone(), max_ttl: self.token_max_ttl },
            allow_anonymous: self.allow_anonymous,
        };
        config.gossip = self.gossip.to_config(&self.node_id)?;
        if let Some(gossip) = &mut config.gossip {
            gossip.identity = config.cluster_tls.clone();
        }
        (config.control_plane, config.control_token) = self.control.resolve()?;
        if config.control_plane.iter().any(|u| u.starts_with("https://")) && config.cluster_tls.is_none() {
            anyhow::bail!(
                "an https:// --control-plane verifies voters and authenticates this edge with its cluster \
                 certificate: give --cluster-ca, --cluster-cert and --cluster-key"
            );
        }
        config.capacity = self.control.capacity;
        Ok(config)
    }
}

/// The certificate the control plane issues this edge (`--cert-dir`): the one on disk
/// while valid, else a new one for the join token.
async fn issued_certificate(
    args: &EdgeArgs,
    config: &EdgeConfig,
    dir: &std::path::Path,
    ca: &std::path::Path,
) -> anyhow::Result<(CertIssuance, std::time::SystemTime)> {
    if config.control_plane.is_empty() || config.control_plane.iter().any(|u| !u.starts_with("https://")) {
        anyhow::bail!(
            "--cert-dir needs https:// --control-plane URLs: the control plane issues the certificate"
        );
    }
    let identity =
        Identity::new(&args.gossip.cluster_id, Role::Edge, &args.node_id).map_err(anyhow::Error::msg)?;
    let mut names = default_names();
    names.push(args.node_id.clone());
    names.extend(config.advertise_host.clone());
    for ip in [config.quic_listen.ip(), config.http_listen.ip()] {
        if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
            names.push(ip.to_string());
        }
    }
    let issuance = CertIssuance {
        control_plane: config.control_plane.clone(),
        ca: ca.to_owned(),
        dir: dir.to_owned(),
        identity,
        names,
    };
    let join_token = match &args.join_token_file {
        Some(file) => crate::config::read_secret(file, "--join-token-file")?,
        None => String::new(),
    };
    let not_after = issuance.ensure(&join_token).await.context("cannot get this edge's certificate")?;
    Ok((issuance, not_after))
}

pub async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    let mut config = args.to_config()?;
    if let (Some(dir), Some(ca)) = (&args.cert_dir, &args.cluster_ca) {
        config.certificate = Some(issued_certificate(&args, &config, dir, ca).await?);
    }
    let edge = BoundEdge::bind(config).await.context("cannot start the edge")?;
    // One machine-readable line so scripts and tests learn the bound ports.
    if let Err(e) = out!(
        "{}",
        serde_json::json!({
            "event": "ready", "node": args.node_id,
            "quic": edge.quic_addr()?.to_string(), "http": edge.http_addr()?.to_string()
        })
    ) {
        tracing::warn!(error = %e, "cannot print the ready line");
    }
    edge.run(crate::process::shutdown_signal()).await?;
    Ok(())
}
