//! Subcommands and their flags. Every flag also reads an environment variable
//! (`FERRY_*`) and a key of the `--config` TOML file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ferry_client::publish::{publish, PublishOptions, Source};
use ferry_client::routed::{publish_routed, watch_routed, RouteOptions};
use ferry_client::watch::{watch, WatchOptions};
use ferry_client::whep::{watch_whep, WhepFailover, WhepOptions};
use ferry_edge::auth::TokenSecret;
use ferry_edge::track::BufferConfig;
use ferry_edge::webrtc::WebRtcConfig;
use ferry_edge::{BoundEdge, EdgeConfig};
use ferry_media::synthetic::SyntheticConfig;
use ferry_net::dial::SessionHello;
use ferry_net::http::HttpClient;
use ferry_net::tls::default_names;
use ferry_net::tls::{ClientTrust, ClusterTls, ServerIdentity, TransportTuning};
use ferry_proto::{NodeId, StreamName, TrackName};

use crate::units;

/// Ferry: a self-hosted distributed edge relay for live media.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, args_override_self = true)]
pub struct Cli {
    /// A TOML file with flag values (keys are long flag names, optionally in a
    /// `[subcommand]` table). Command line and environment win over it.
    #[arg(long, global = true, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter (RUST_LOG syntax); RUST_LOG wins when set.
    #[arg(long, global = true, env = "FERRY_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local cluster: one voter, two edges in two regions, a synthetic publisher on `live/demo`.
    Dev(crate::dev::DevArgs),
    /// Run an edge: QUIC relay for publishers, viewers and downstream edges.
    Edge(Box<EdgeArgs>),
    /// Publish a stream to an edge over QUIC.
    Publish(PublishArgs),
    /// Watch a stream from an edge over QUIC and print what arrived.
    Watch(WatchArgs),
    /// Measure Ferry (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Generate a cluster CA and a certificate signed by it (PEM files).
    Cert(CertArgs),
    /// The cluster CA for mutual TLS: `ca init`, `ca issue --node ID`.
    #[command(subcommand)]
    Ca(crate::ca::CaCommand),
    /// Run a control-plane voter (raft + sled + HTTP API).
    Control(crate::control::ControlArgs),
    /// Operate the control plane: cluster, members, edges, streams, rollouts, audit.
    Ctl(crate::ctl::CtlArgs),
    /// Mint a signed access token (HS256 JWT) for WHIP/WHEP.
    Token(crate::token::TokenArgs),
    /// Generate documentation from the binary (docs/configuration.md).
    #[command(subcommand, hide = true)]
    Docs(crate::docs::DocsCommand),
}

/// TLS trust for clients.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// CA certificate(s) (PEM) to verify the edge with.
    #[arg(long, env = "FERRY_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (dev only; traffic stays encrypted).
    #[arg(long, env = "FERRY_INSECURE")]
    pub insecure: bool,
}

impl TrustArgs {
    /// The HTTP client for `https://` WHEP and control-plane URLs: verified with
    /// `--ca-file` (or not at all with `--insecure`); plain `http://` needs neither.
    pub fn http(&self) -> anyhow::Result<HttpClient> {
        match (&self.ca_file, self.insecure) {
            (None, false) => Ok(HttpClient::plain()),
            _ => Ok(HttpClient::new(Some(&self.trust()?))?),
        }
    }

    pub fn trust(&self) -> anyhow::Result<ClientTrust> {
        match (&self.ca_file, self.insecure) {
            (Some(ca), _) => Ok(ClientTrust::CaFile(ca.clone())),
            (None, true) => Ok(ClientTrust::Insecure),
            (None, false) => {
                anyhow::bail!("give --ca-file PEM to verify the edge, or --insecure to skip verification")
            }
        }
    }
}

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
    /// TCP address for /healthz, /readyz, /metrics.
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
    #[arg(long, env = "FERRY_CLUSTER_CA", requires_all = ["cluster_cert", "cluster_key"])]
    pub cluster_ca: Option<PathBuf>,
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
    /// Connections served at once.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Groups kept per track.
    #[arg(long, env = "FERRY_GROUP_CACHE", default_value_t = 4)]
    pub group_cache: usize,
    /// Payload bytes kept per track.
    #[arg(long, env = "FERRY_TRACK_BUFFER_BYTES", default_value_t = 16 * 1024 * 1024)]
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
    /// WebRTC sessions served at once; more get 503 with Retry-After.
    #[arg(long, env = "FERRY_WEBRTC_MAX_SESSIONS", default_value_t = 500)]
    pub webrtc_max_sessions: usize,
    /// Latency budget of a WHEP viewer; behind by more, it skips to the newest keyframe.
    #[arg(long, env = "FERRY_WEBRTC_MAX_LAG", default_value = "1500ms", value_parser = units::duration)]
    pub webrtc_max_lag: Duration,
    /// Largest SDP offer accepted, in bytes.
    #[arg(long, env = "FERRY_WEBRTC_MAX_SDP_BYTES", default_value_t = 32 * 1024)]
    pub webrtc_max_sdp_bytes: usize,
    /// File holding the HS256 secret that signs WHIP/WHEP tokens (see `ferry token`).
    #[arg(long, env = "FERRY_TOKEN_SECRET_FILE", value_name = "FILE")]
    pub token_secret_file: Option<PathBuf>,
    /// Serve WHIP/WHEP without a token (dev only).
    #[arg(long, env = "FERRY_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    ferry_edge::webrtc::parse_port_range(s)
}

impl WebRtcArgs {
    pub fn to_config(&self) -> anyhow::Result<WebRtcConfig> {
        let token_secret = match &self.token_secret_file {
            Some(path) => Some(Arc::new(
                TokenSecret::from_file(path)
                    .with_context(|| format!("--token-secret-file {}", path.display()))?,
            )),
            None => None,
        };
        Ok(WebRtcConfig {
            udp_ports: self.webrtc_udp_ports,
            bind_ip: self.webrtc_bind,
            public_ip: self.webrtc_public_ip,
            max_sessions: self.webrtc_max_sessions.max(1),
            max_sdp_bytes: self.webrtc_max_sdp_bytes,
            viewer_max_lag: self.webrtc_max_lag,
            token_secret,
            allow_anonymous: self.allow_anonymous,
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
        if let (Some(ca), Some(cert), Some(key)) = (&self.cluster_ca, &self.cluster_cert, &self.cluster_key) {
            let cluster = ClusterTls { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
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
        config.buffer =
            BufferConfig { max_groups: self.group_cache.max(1), max_bytes: self.track_buffer_bytes };
        config.tuning = TransportTuning { send_window: self.send_window, ..TransportTuning::default() };
        config.relay_max_lag = self.relay_max_lag;
        config.relay_linger = self.relay_linger;
        config.shutdown_grace = self.shutdown_grace;
        config.whep_drain_grace = self.whep_drain_grace;
        config.allow_fault_injection = self.allow_fault_injection;
        config.webrtc = self.webrtc.to_config()?;
        config.gossip = self.gossip.to_config(&self.node_id);
        (config.control_plane, config.control_token) = self.control.resolve()?;
        config.capacity = self.control.capacity;
        Ok(config)
    }
}

/// Routing through the control plane, with failover.
#[derive(Debug, Clone, Args)]
pub struct RouteArgs {
    /// Ask the control plane (http://HOST:PORT,...) for the edge, and ask again
    /// whenever the edge fails (conflicts with --edge).
    #[arg(long, env = "FERRY_CONTROL_PLANE", value_delimiter = ',', conflicts_with = "edge")]
    pub control_plane: Vec<String>,
    /// Region to be routed in.
    #[arg(long, env = "FERRY_CLIENT_REGION", requires = "control_plane")]
    pub region: Option<String>,
    /// With --control-plane: silence after which the edge counts as dead and the
    /// client moves on.
    #[arg(long, env = "FERRY_FAILOVER_AFTER", default_value = "1500ms", value_parser = units::duration)]
    pub failover_after: Duration,
    /// With --control-plane: give up after this many sessions in a row fail.
    #[arg(long, env = "FERRY_MAX_FAILURES", default_value_t = 20)]
    pub max_failures: u32,
}

impl RouteArgs {
    fn options(&self, http: HttpClient) -> Option<RouteOptions> {
        (!self.control_plane.is_empty()).then(|| RouteOptions {
            control_plane: self.control_plane.clone(),
            region: self.region.clone(),
            max_failures: Some(self.max_failures),
            http,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Edge QUIC address, HOST:PORT.
    #[arg(long, env = "FERRY_EDGE", required_unless_present = "control_plane")]
    pub edge: Option<String>,
    #[command(flatten)]
    pub route: RouteArgs,
    /// Stream name, e.g. live/room1.
    #[arg(long, env = "FERRY_STREAM")]
    pub stream: String,
    /// Publish Ferry's synthetic test stream (frames carry their send time).
    #[arg(long, env = "FERRY_SYNTHETIC", conflicts_with = "input", required_unless_present = "input")]
    pub synthetic: bool,
    /// Publish an IVF file (VP8/VP9/AV1), `-` for standard input; paced by its timestamps.
    #[arg(long, env = "FERRY_INPUT", value_name = "FILE.ivf|-")]
    pub input: Option<PathBuf>,
    /// Synthetic bit rate.
    #[arg(long, env = "FERRY_BITRATE", default_value = "2500k", value_parser = units::bitrate)]
    pub bitrate: u64,
    /// Synthetic frame rate.
    #[arg(long, env = "FERRY_FPS", default_value_t = 30)]
    pub fps: u32,
    /// Synthetic keyframe interval.
    #[arg(long, env = "FERRY_GOP", default_value = "2s", value_parser = units::duration)]
    pub gop: Duration,
    /// Label the synthetic stream VP8 (behind a VP8 frame tag) so WHEP viewers can
    /// receive it; for benchmarks — no decoder can show it.
    #[arg(long, env = "FERRY_SYNTHETIC_VP8", requires = "synthetic")]
    pub synthetic_vp8: bool,
    /// Stop after this long.
    #[arg(long, env = "FERRY_DURATION", value_parser = units::duration)]
    pub duration: Option<Duration>,
    /// Print the final stats as one JSON object.
    #[arg(long, env = "FERRY_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Who a publisher or viewer session is, for rollouts (DESIGN.md §7).
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// This session's stable id, by which rollouts place it in a cohort (over WHEP the
    /// `Ferry-Session` header); without it the edge side picks a random one.
    #[arg(long, env = "FERRY_SESSION_ID")]
    pub session_id: Option<String>,
    /// A client tag that rollouts' `gates.client_tags` match (repeatable; QUIC only,
    /// over WHEP the User-Agent is the tag). Default: `ferry/<version>`.
    #[arg(long = "client-tag", env = "FERRY_CLIENT_TAGS", value_delimiter = ',')]
    pub client_tags: Vec<String>,
}

impl SessionArgs {
    /// The checked session hello.
    pub fn hello(&self) -> anyhow::Result<SessionHello> {
        let id = self.session_id.clone().unwrap_or_else(|| "x".into());
        ferry_proto::check_session(&id, &self.client_tags)
            .map_err(|e| anyhow::anyhow!("--session-id/--client-tag: {e}"))?;
        Ok(SessionHello { id: self.session_id.clone(), tags: self.client_tags.clone() })
    }
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Edge QUIC address, HOST:PORT.
    #[arg(long, env = "FERRY_EDGE", required_unless_present_any = ["whep", "control_plane"])]
    pub edge: Option<String>,
    #[command(flatten)]
    pub route: RouteArgs,
    /// Stream name, e.g. live/room1.
    #[arg(long, env = "FERRY_STREAM", required_unless_present = "whep")]
    pub stream: Option<String>,
    /// Watch over WebRTC instead: the WHEP endpoint, e.g. http://HOST:PORT/whep/live/room1.
    /// With --control-plane, a session that ends early (edge gone, closed, stalled for
    /// --failover-after) is followed by a new one routed by the control plane.
    #[arg(long, env = "FERRY_WHEP", conflicts_with_all = ["edge", "output", "throttle"])]
    pub whep: Option<String>,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Access token for --whep (see `ferry token`).
    #[arg(long, env = "FERRY_WHEP_TOKEN", requires = "whep")]
    pub token: Option<String>,
    /// Track to watch.
    #[arg(long, env = "FERRY_TRACK", default_value = "video")]
    pub track: String,
    /// Latency budget: fall further behind and the edge skips you to the newest keyframe.
    #[arg(long, env = "FERRY_MAX_LAG", default_value = "2s", value_parser = units::duration)]
    pub max_lag: Duration,
    /// Stop after this long.
    #[arg(long, env = "FERRY_DURATION", value_parser = units::duration)]
    pub duration: Option<Duration>,
    /// Print the stats as one JSON object.
    #[arg(long, env = "FERRY_JSON")]
    pub json: bool,
    /// Write received frames as IVF (`-` for standard output).
    #[arg(long, env = "FERRY_OUTPUT", value_name = "FILE.ivf|-")]
    pub output: Option<PathBuf>,
    /// Read at most this bit rate (emulates a slow viewer).
    #[arg(long, env = "FERRY_THROTTLE", value_parser = units::bitrate)]
    pub throttle: Option<u64>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CertArgs {
    /// Directory for ca.pem, ca-key.pem, cert.pem, key.pem.
    #[arg(long, env = "FERRY_CERT_OUT_DIR")]
    pub out_dir: PathBuf,
    /// Names (DNS or IP) the certificate is valid for.
    #[arg(long = "name", env = "FERRY_CERT_NAMES", value_delimiter = ',', default_values_t = default_names())]
    pub names: Vec<String>,
}

/// A client label unique per process, e.g. `viewer-1234`.
pub fn label(prefix: &str) -> anyhow::Result<NodeId> {
    Ok(NodeId::new(format!("{prefix}-{}", std::process::id()))?)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => crate::dev::run(args).await,
        Command::Edge(args) => run_edge(*args).await,
        Command::Publish(args) => run_publish(args).await,
        Command::Watch(args) => run_watch(args).await,
        Command::Bench(cmd) => crate::bench::run(cmd).await,
        Command::Control(args) => crate::control::run(args).await,
        Command::Ctl(args) => crate::ctl::run(args).await,
        Command::Token(args) => crate::token::run(args),
        Command::Docs(cmd) => crate::docs::run(cmd),
        Command::Ca(cmd) => crate::ca::run(cmd),
        Command::Cert(args) => {
            let files = ferry_net::tls::generate_cluster_certs(&args.out_dir, &args.names)?;
            out!(
                "{}",
                serde_json::json!({
                    "ca": files.ca_cert, "ca_key": files.ca_key, "cert": files.cert, "key": files.key
                })
            )?;
            Ok(())
        }
    }
}

async fn run_edge(args: EdgeArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
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
    edge.run(crate::shutdown_signal()).await?;
    Ok(())
}

async fn run_publish(args: PublishArgs) -> anyhow::Result<()> {
    let source = match &args.input {
        Some(path) => Source::Ivf(path.clone()),
        None => {
            let config = SyntheticConfig { bitrate_bps: args.bitrate, fps: args.fps, gop: args.gop };
            if args.synthetic_vp8 {
                Source::SyntheticVp8(config)
            } else {
                Source::Synthetic(config)
            }
        }
    };
    let routed = args.route.options(args.trust.http()?);
    let tuning = match routed {
        Some(_) => TransportTuning::default().failing_over(args.route.failover_after),
        None => TransportTuning::default(),
    };
    let opts = PublishOptions {
        edge: args.edge.clone().unwrap_or_default(),
        stream: StreamName::new(args.stream.clone()).context("--stream")?,
        source,
        duration: args.duration,
        trust: args.trust.trust()?,
        tuning,
        label: label("publisher")?,
        max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
        session: args.session.hello()?,
    };
    if let Some(route) = routed {
        let sessions = publish_routed(opts, route, crate::shutdown_signal()).await?;
        let frames: u64 = sessions.iter().map(|(_, s)| s.frames).sum();
        if args.json {
            let list: Vec<_> =
                sessions.iter().map(|(edge, s)| serde_json::json!({ "edge": edge, "stats": s })).collect();
            out!("{}", serde_json::json!({ "frames": frames, "sessions": list }))?;
        } else {
            eprintln!("published {frames} frames in {} sessions", sessions.len());
        }
        if frames == 0 {
            anyhow::bail!("no frame was published");
        }
        return Ok(());
    }
    let stats = publish(opts, crate::shutdown_signal()).await?;
    if args.json {
        out!("{}", serde_json::to_string(&stats)?)?;
    } else {
        eprintln!(
            "published {} frames, {} bytes, {} groups ({}); max write {:.1} ms, {} late frames",
            stats.frames, stats.bytes, stats.groups, stats.ended, stats.max_write_ms, stats.late_frames
        );
    }
    Ok(())
}

async fn run_watch(args: WatchArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.whep {
        return run_watch_whep(&args, url).await;
    }
    let routed = args.route.options(args.trust.http()?);
    let opts = WatchOptions {
        edge: match routed {
            Some(_) => String::new(),
            None => args.edge.clone().context("--edge is required")?,
        },
        stream: StreamName::new(args.stream.clone().context("--stream is required")?).context("--stream")?,
        track: TrackName::new(args.track.clone()).context("--track")?,
        max_lag: args.max_lag,
        duration: args.duration,
        output: args.output.clone(),
        throttle_bps: args.throttle,
        trust: args.trust.trust()?,
        tuning: match routed {
            Some(_) => TransportTuning::viewer().failing_over(args.route.failover_after),
            None => TransportTuning::viewer(),
        },
        label: label("viewer")?,
        max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
        stall_timeout: routed.as_ref().map(|_| args.route.failover_after),
        session: args.session.hello()?,
    };
    if let Some(route) = routed {
        let stats = watch_routed(opts, route, crate::shutdown_signal()).await?;
        if args.json {
            out!("{}", serde_json::to_string(&stats)?)?;
        } else {
            eprintln!(
                "watched {} frames on {} legs ({} reconnects), {} skipped groups ({})",
                stats.frames,
                stats.legs.len(),
                stats.reconnects,
                stats.skipped_groups,
                stats.ended
            );
        }
        if stats.frames == 0 {
            anyhow::bail!("no frame arrived ({})", stats.ended);
        }
        return Ok(());
    }
    let stats = watch(opts, crate::shutdown_signal()).await?;
    if args.json {
        out!("{}", serde_json::to_string(&stats)?)?;
    } else {
        let latency = stats
            .latency_ms
            .map(|l| format!(", latency p50 {:.1} ms p99 {:.1} ms", l.p50, l.p99))
            .unwrap_or_default();
        eprintln!(
            "watched {} frames, {} bytes, {} groups, {} skipped ({}){latency}",
            stats.frames, stats.bytes, stats.groups, stats.skipped_groups, stats.ended
        );
    }
    Ok(())
}

async fn run_watch_whep(args: &WatchArgs, url: &str) -> anyhow::Result<()> {
    args.session.hello()?;
    let failover = match args.route.control_plane.is_empty() {
        true => None,
        false => {
            let stream = match &args.stream {
                Some(stream) => stream.clone(),
                None => stream_of_whep_url(url)
                    .ok_or_else(|| anyhow::anyhow!("--whep {url}: no /whep/STREAM path; give --stream"))?,
            };
            let region = args.route.region.as_deref().map(|r| format!("?region={r}")).unwrap_or_default();
            let urls = args
                .route
                .control_plane
                .iter()
                .map(|cp| format!("{}/whep/{stream}{region}", cp.trim_end_matches('/')));
            Some(WhepFailover {
                urls: urls.collect(),
                stall_timeout: args.route.failover_after,
                max_failures: Some(args.route.max_failures),
            })
        }
    };
    let opts = WhepOptions {
        url: url.to_owned(),
        token: args.token.clone(),
        duration: args.duration,
        bind_ip: whep_bind_ip(url),
        connect_timeout: Duration::from_secs(10),
        failover,
        session_id: args.session.session_id.clone(),
        http: args.trust.http()?,
    };
    let stats = watch_whep(opts, crate::shutdown_signal()).await.with_context(|| format!("WHEP {url}"))?;
    if args.json {
        out!("{}", serde_json::to_string(&stats)?)?;
    } else {
        eprintln!(
            "watched {} frames ({} keyframes, {} lost), {} bytes, {} audio packets over WHEP, {} reconnects ({})",
            stats.frames,
            stats.keyframes,
            stats.lost_frames,
            stats.bytes,
            stats.audio_packets,
            stats.reconnects,
            stats.ended
        );
    }
    if stats.frames == 0 && stats.audio_packets == 0 {
        anyhow::bail!("no media arrived ({})", stats.ended);
    }
    Ok(())
}

/// `live/x` from `http://HOST:PORT/whep/live/x?…`.
fn stream_of_whep_url(url: &str) -> Option<String> {
    let path = url.split_once("/whep/")?.1;
    let stream = path.split(['?', '#']).next()?;
    (!stream.is_empty()).then(|| stream.to_owned())
}

/// Loopback endpoints get a loopback media socket; anything else every interface.
fn whep_bind_ip(url: &str) -> IpAddr {
    let host = url.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from([0, 0, 0, 0])
    }
}
