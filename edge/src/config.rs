//! Everything an edge is configured with: its addresses and identity, limits, the
//! cluster it joins, and its WebRTC settings. Plain data, read by every other module
//! of this crate; the binary fills it from flags, the environment and files.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ferry_net::gossip::GossipConfig;
use ferry_net::http_server::HttpLimits;
use ferry_net::tls::{ClientTrust, ClusterTls, ServerIdentity, TransportTuning};
use ferry_proto::NodeId;

use crate::auth::Policy;
use crate::track::BufferConfig;
use crate::Result;

/// Everything an edge needs to run.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub node_id: NodeId,
    pub region: String,
    pub quic_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Pull streams this edge does not have from here (`HOST:PORT`).
    pub upstream: Option<String>,
    /// How to verify the upstream edge's certificate.
    pub upstream_trust: ClientTrust,
    pub identity: ServerIdentity,
    pub tuning: TransportTuning,
    /// QUIC connections served at once; more wait in the kernel/quinn backlog.
    pub max_connections: usize,
    /// QUIC connections one client IP address holds at once; more are refused.
    pub max_connections_per_ip: usize,
    /// Subscriptions per connection.
    pub max_subscriptions_per_connection: usize,
    /// A viewer connection with no subscription for this long is closed.
    pub viewer_idle_timeout: Duration,
    pub buffer: BufferConfig,
    /// Largest frame payload accepted from publishers and upstreams.
    pub max_frame: usize,
    /// Latency budget this edge asks of its upstream.
    pub relay_max_lag: Duration,
    /// Upper bound for a subscriber's requested `max_lag`.
    pub max_lag_cap: Duration,
    /// Relayed tracks with no local subscriber are dropped after this long.
    pub relay_linger: Duration,
    /// How long shutdown waits for sessions to finish after GOAWAY.
    pub shutdown_grace: Duration,
    /// Apply rollouts' `fault.*` overrides (drills); without it they are ignored.
    pub allow_fault_injection: bool,
    /// How long WHEP viewers keep playing on a draining edge before they are closed
    /// (and re-route by themselves); capped by `shutdown_grace`.
    pub whep_drain_grace: Duration,
    /// WHIP/WHEP sessions.
    pub webrtc: WebRtcConfig,
    /// Who may publish and watch, over QUIC and WebRTC alike.
    pub access: AccessConfig,
    /// Health gossip (none: this edge does not gossip).
    pub gossip: Option<GossipConfig>,
    /// Control-plane API URLs (`http://HOST:PORT`); empty: not registered anywhere.
    pub control_plane: Vec<String>,
    /// Bearer token for the control-plane API.
    pub control_token: String,
    /// Relative capacity registered for placement.
    pub capacity: u32,
    /// Cluster CA and this edge's certificate: downstream edges must present a cluster
    /// certificate, and this edge presents its own to its upstreams.
    pub cluster_tls: Option<ClusterTls>,
    /// Host peers and clients reach this edge at (`--advertise-host`); `None`: the
    /// listen addresses.
    pub advertise_host: Option<String>,
    /// Bounds on HTTP clients (timeouts, connection caps).
    pub http_limits: HttpLimits,
    /// This edge's certificate is issued by the control plane and renewed while it runs
    /// (with when the one in use ends); `None`: certificate files managed by hand.
    pub certificate: Option<(crate::certs::CertIssuance, std::time::SystemTime)>,
}

impl EdgeConfig {
    /// Defaults for a local edge with the given id and addresses.
    pub fn new(node_id: NodeId, quic_listen: SocketAddr, http_listen: SocketAddr) -> Self {
        Self {
            node_id,
            region: "local".into(),
            quic_listen,
            http_listen,
            upstream: None,
            upstream_trust: ClientTrust::Insecure,
            identity: ServerIdentity::SelfSigned { names: ferry_net::tls::default_names() },
            tuning: TransportTuning::default(),
            max_connections: 4096,
            max_connections_per_ip: 256,
            max_subscriptions_per_connection: 64,
            viewer_idle_timeout: Duration::from_secs(30),
            buffer: BufferConfig::default(),
            max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
            relay_max_lag: Duration::from_secs(3),
            max_lag_cap: Duration::from_secs(30),
            relay_linger: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            whep_drain_grace: Duration::from_secs(10),
            allow_fault_injection: false,
            webrtc: WebRtcConfig::default(),
            access: AccessConfig::default(),
            gossip: None,
            control_plane: Vec::new(),
            control_token: String::new(),
            capacity: 100,
            cluster_tls: None,
            advertise_host: None,
            http_limits: HttpLimits::default(),
            certificate: None,
        }
    }

    /// `bound` as peers and clients reach it: at `advertise_host` when set.
    pub(crate) fn advertised(&self, bound: SocketAddr) -> Result<String> {
        match &self.advertise_host {
            Some(host) if host.contains(':') && !host.starts_with('[') => {
                Ok(format!("[{host}]:{}", bound.port()))
            }
            Some(host) => Ok(format!("{host}:{}", bound.port())),
            None if bound.ip().is_unspecified()
                && (self.gossip.is_some() || !self.control_plane.is_empty()) =>
            {
                Err(crate::Error::Config(format!(
                    "the edge listens on {bound}, which peers cannot reach: give --advertise-host \
                     (the address they reach this edge at, e.g. the pod IP)"
                )))
            }
            None => Ok(bound.to_string()),
        }
    }
}

/// Who may publish and watch on an edge.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Token secret files, or directories of them (each file's name is its key id);
    /// re-read while the edge runs, so secrets rotate without a restart.
    pub token_secrets: Vec<PathBuf>,
    /// The audience tokens must name, and the longest lifetime honoured.
    pub policy: Policy,
    /// Serve clients without a token and, without a cluster CA, relay to edges
    /// without a cluster certificate (dev only).
    pub allow_anonymous: bool,
}

/// WebRTC settings of an edge.
#[derive(Clone)]
pub struct WebRtcConfig {
    /// UDP ports sessions may bind (inclusive); one port per session.
    pub udp_ports: (u16, u16),
    /// Address the session sockets bind (a wildcard binds every non-loopback interface).
    pub bind_ip: IpAddr,
    /// Address advertised in ICE candidates instead of the bound one (NAT, Kubernetes).
    pub public_ip: Option<IpAddr>,
    /// WebRTC sessions served at once (publishers and viewers).
    pub max_sessions: usize,
    /// Sessions one client address, and one token subject, may hold at once.
    pub max_sessions_per_client: usize,
    /// Largest SDP offer accepted.
    pub max_sdp_bytes: usize,
    /// Latency budget of a WHEP viewer: behind by more, it skips to the newest keyframe.
    pub viewer_max_lag: Duration,
    /// How long an answer waits for ICE gathering before it is sent with what it has.
    pub ice_gather_timeout: Duration,
    /// A session whose ICE/DTLS never connects is closed after this long.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for WebRtcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcConfig")
            .field("udp_ports", &self.udp_ports)
            .field("bind_ip", &self.bind_ip)
            .field("public_ip", &self.public_ip)
            .field("max_sessions", &self.max_sessions)
            .field("max_sessions_per_client", &self.max_sessions_per_client)
            .field("max_sdp_bytes", &self.max_sdp_bytes)
            .field("viewer_max_lag", &self.viewer_max_lag)
            .finish_non_exhaustive()
    }
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            udp_ports: (50000, 50999),
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            public_ip: None,
            max_sessions: 500,
            max_sessions_per_client: 32,
            max_sdp_bytes: 32 * 1024,
            viewer_max_lag: Duration::from_millis(1500),
            ice_gather_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// Parses `LOW-HIGH` (inclusive) or a single port.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (low, high) = s.split_once('-').unwrap_or((s, s));
    let low: u16 = low.trim().parse().map_err(|_| format!("bad port {low:?} in range {s:?}"))?;
    let high: u16 = high.trim().parse().map_err(|_| format!("bad port {high:?} in range {s:?}"))?;
    if low == 0 || high < low {
        return Err(format!("port range {s:?} must be LOW-HIGH with 0 < LOW <= HIGH"));
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range("50000-50999"), Ok((50000, 50999)));
        assert_eq!(parse_port_range("4000"), Ok((4000, 4000)));
        assert!(parse_port_range("5-4").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("a-b").is_err());
    }
}
