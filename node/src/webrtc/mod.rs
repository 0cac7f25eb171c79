//! WebRTC at the edge: WHIP publishers and WHEP viewers (RFC 9725 style signalling
//! over the edge's HTTP port), built on the `webrtc` crate.
//!
//! Both directions meet the rest of the edge at the track buffer: a WHIP session
//! depacketizes RTP into whole frames and fills a [`TrackProducer`] like a QUIC
//! publisher does; a WHEP session reads a [`TrackConsumer`] like a QUIC viewer and
//! packetizes each frame afresh for its own peer connection, so every viewer has its
//! own SSRC, payload type, sequence numbers and timestamps, and a group skip is a clean
//! jump in time rather than loss.
//!
//! # Layout
//! - `mod.rs`: [`WebRtcConfig`], the session table, port allocation, limits.
//! - `engine`: media engine, interceptors and peer connection construction.
//! - `sdp`: cheap checks on offers before any WebRTC state is built.
//! - `rtp`: sans-IO frame assembly (ingest) and packetization (egress).
//! - `catchup`: sans-IO policy for viewers that lost packets (keyframes only until calm).
//! - `whip` / `whep`: one publisher / viewer session.
//! - `http`: the HTTP handlers, errors as JSON, CORS, demo pages.
//!
//! [`TrackProducer`]: crate::track::TrackProducer
//! [`TrackConsumer`]: crate::track::TrackConsumer

pub mod catchup;
pub(crate) mod engine;
pub(crate) mod http;
pub mod rtp;
pub mod sdp;
mod whep;
mod whip;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::TokenSecret;

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
    /// Largest SDP offer accepted.
    pub max_sdp_bytes: usize,
    /// Latency budget of a WHEP viewer: behind by more, it skips to the newest keyframe.
    pub viewer_max_lag: Duration,
    /// Verifies `Authorization: Bearer` tokens.
    pub token_secret: Option<Arc<TokenSecret>>,
    /// Serve requests without a token (dev only).
    pub allow_anonymous: bool,
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
            .field("max_sdp_bytes", &self.max_sdp_bytes)
            .field("viewer_max_lag", &self.viewer_max_lag)
            .field("token_secret", &self.token_secret.as_ref().map(|_| "<set>"))
            .field("allow_anonymous", &self.allow_anonymous)
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
            max_sdp_bytes: 32 * 1024,
            viewer_max_lag: Duration::from_millis(1500),
            token_secret: None,
            allow_anonymous: false,
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

/// Which way a session's media flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Whip,
    Whep,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Whip => "whip",
            Direction::Whep => "whep",
        }
    }
}

/// A live session, as the table sees it.
struct SessionEntry {
    direction: Direction,
    stream: String,
    cancel: CancellationToken,
}

/// Sessions, ports and the session limit of one edge.
pub(crate) struct WebRtc {
    pub config: WebRtcConfig,
    limit: Arc<Semaphore>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    ports: Mutex<PortPool>,
}

/// A session's claim on the limit and its port; released on drop.
pub(crate) struct SessionLease {
    webrtc: Arc<WebRtc>,
    pub id: String,
    pub port: u16,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        lock(&self.webrtc.sessions).remove(&self.id);
        lock(&self.webrtc.ports).release(self.port);
    }
}

/// Why a session could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseError {
    TooManySessions,
    NoFreePort,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WebRtc {
    pub fn new(config: WebRtcConfig) -> Self {
        let ports = PortPool::new(config.udp_ports);
        Self {
            limit: Arc::new(Semaphore::new(config.max_sessions.max(1))),
            sessions: Mutex::new(HashMap::new()),
            ports: Mutex::new(ports),
            config,
        }
    }

    /// Takes a session slot and a port, or says why not. The permit is taken before
    /// any WebRTC state exists.
    pub fn lease(
        self: &Arc<Self>,
        direction: Direction,
        stream: &str,
        cancel: CancellationToken,
    ) -> Result<SessionLease, LeaseError> {
        let permit = Arc::clone(&self.limit).try_acquire_owned().map_err(|_| LeaseError::TooManySessions)?;
        let port = lock(&self.ports).take().ok_or(LeaseError::NoFreePort)?;
        let id = random_id();
        lock(&self.sessions)
            .insert(id.clone(), SessionEntry { direction, stream: stream.to_owned(), cancel });
        Ok(SessionLease { webrtc: Arc::clone(self), id, port, _permit: permit })
    }

    /// A port the OS refused: skip it for a while and hand out another.
    pub fn port_in_use(&self, port: u16) -> Option<u16> {
        let mut ports = lock(&self.ports);
        ports.quarantine(port);
        ports.take()
    }

    /// Ends session `id` of `direction`; false if there is no such session.
    pub fn end(&self, direction: Direction, id: &str) -> bool {
        let sessions = lock(&self.sessions);
        match sessions.get(id) {
            Some(entry) if entry.direction == direction => {
                tracing::info!(stream = %entry.stream, session = id, "session ended by its client");
                entry.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Sessions (publishers and viewers) now.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Ends every session (edge shutdown).
    pub fn end_all(&self) {
        lock(&self.sessions).values().for_each(|e| e.cancel.cancel());
    }

    /// Live sessions by direction.
    #[cfg(test)]
    pub fn count(&self, direction: Direction) -> usize {
        lock(&self.sessions).values().filter(|e| e.direction == direction).count()
    }
}

/// Counts a session in `ferry_webrtc_sessions{direction}` while held, and logs its
/// start and end.
pub(crate) struct LiveSession {
    gauge: prometheus_client::metrics::gauge::Gauge,
    direction: Direction,
    stream: String,
    id: String,
}

impl LiveSession {
    pub fn start(
        metrics: &crate::metrics::EdgeMetrics,
        direction: Direction,
        stream: &str,
        lease: &SessionLease,
    ) -> Self {
        let labels = crate::metrics::DirectionLabels { direction: direction.name().to_owned() };
        let gauge = metrics.webrtc_sessions.get_or_create(&labels).clone();
        gauge.inc();
        tracing::info!(stream, session = %lease.id, port = lease.port, "{} session", direction.name());
        Self { gauge, direction, stream: stream.to_owned(), id: lease.id.clone() }
    }

    /// Logs why the session ended; failures also count in `ferry_webrtc_session_errors`.
    /// Logs and counts the end; true when it was an error (not a close or the end of
    /// the stream), which also counts against the session's rollout cohorts.
    pub fn ended(
        &self,
        state: &crate::edge::EdgeState,
        assignment: &crate::rollouts::Assignment,
        reason: &str,
    ) -> bool {
        tracing::info!(stream = %self.stream, session = %self.id, reason, "{} session ended", self.direction.name());
        let error = !matches!(reason, "closed" | "peer_closed" | "track_ended");
        if error {
            state.metrics.webrtc_session_errors.get_or_create(&http::ReasonLabels::new(reason)).inc();
            state.rollout_failed(assignment, reason);
        }
        error
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Session ids: 128 random bits, hex.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills `out` from the system RNG (falls back to a time-seeded mix if it fails,
/// which only weakens unpredictability of ids, never correctness).
pub(crate) fn fill_random(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(out).is_err() {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        for b in out.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
    }
}

pub(crate) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    fill_random(&mut b);
    u32::from_be_bytes(b)
}

/// Free ports of the configured range, handed out round-robin so a just-released
/// port is not reused at once.
struct PortPool {
    range: (u16, u16),
    next: u16,
    used: BTreeSet<u16>,
    quarantined: BTreeSet<u16>,
}

impl PortPool {
    fn new(range: (u16, u16)) -> Self {
        Self { range, next: range.0, used: BTreeSet::new(), quarantined: BTreeSet::new() }
    }

    fn take(&mut self) -> Option<u16> {
        let (low, high) = self.range;
        let size = u32::from(high - low) + 1;
        for _ in 0..size {
            let port = self.next;
            self.next = if port >= high { low } else { port + 1 };
            if !self.used.contains(&port) && !self.quarantined.contains(&port) {
                self.used.insert(port);
                return Some(port);
            }
        }
        // Every port is busy or was refused by the OS: give quarantined ones another chance.
        if let Some(port) = self.quarantined.pop_first() {
            self.used.insert(port);
            return Some(port);
        }
        None
    }

    fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    fn quarantine(&mut self, port: u16) {
        self.used.remove(&port);
        self.quarantined.insert(port);
    }
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

    #[test]
    fn port_pool_hands_out_each_port_once() {
        let mut pool = PortPool::new((10, 12));
        let taken: Vec<_> = (0..3).filter_map(|_| pool.take()).collect();
        assert_eq!(taken, vec![10, 11, 12]);
        assert_eq!(pool.take(), None);
        pool.release(11);
        assert_eq!(pool.take(), Some(11));
        pool.quarantine(11);
        // Only the quarantined port is left; it gets another chance.
        assert_eq!(pool.take(), Some(11));
    }

    #[tokio::test]
    async fn leases_enforce_the_session_limit_and_free_on_drop() {
        let config = WebRtcConfig { max_sessions: 1, udp_ports: (20000, 20001), ..Default::default() };
        let webrtc = Arc::new(WebRtc::new(config));
        let lease = webrtc.lease(Direction::Whep, "live/a", CancellationToken::new());
        let lease = match lease {
            Ok(lease) => lease,
            Err(e) => panic!("first lease refused: {e:?}"),
        };
        assert_eq!(webrtc.count(Direction::Whep), 1);
        let second = webrtc.lease(Direction::Whep, "live/a", CancellationToken::new());
        assert!(matches!(second, Err(LeaseError::TooManySessions)));
        assert!(!webrtc.end(Direction::Whip, &lease.id), "direction must match");
        assert!(webrtc.end(Direction::Whep, &lease.id));
        drop(lease);
        assert_eq!(webrtc.count(Direction::Whep), 0);
        assert!(webrtc.lease(Direction::Whep, "live/a", CancellationToken::new()).is_ok());
    }
}
