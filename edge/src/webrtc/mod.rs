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
//! - `mod.rs`: [`WebRtcEdge`] (the edge as sessions see it), the session table, port
//!   allocation, limits; settings are [`WebRtcConfig`].
//! - `engine`: a session's peer connection on a port of the edge's pool (codecs and
//!   interceptors come from `ferry_media::peer`).
//! - `sdp`: cheap checks on offers before any WebRTC state is built.
//! - `catchup`: sans-IO policy for viewers that lost packets (keyframes only until calm).
//! - `whip` / `whep`: one publisher / viewer session.
//! - `http`: the HTTP handlers, errors as JSON, CORS, demo pages.
//!
//! [`TrackProducer`]: crate::track::TrackProducer
//! [`TrackConsumer`]: crate::track::TrackConsumer
//! [`WebRtcConfig`]: crate::config::WebRtcConfig

pub mod catchup;
pub(crate) mod engine;
pub mod http;
pub mod sdp;
mod whep;
mod whip;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub use crate::config::{parse_port_range, WebRtcConfig};
use crate::relay::{EdgeState, SessionPlane};

/// The edge as its WebRTC sessions see it: the state every edge task shares, plus
/// the WebRTC session table. Dereferences to the shared [`EdgeState`].
pub struct WebRtcEdge {
    pub edge: Arc<EdgeState>,
    pub webrtc: Arc<WebRtc>,
}

impl WebRtcEdge {
    pub fn new(edge: Arc<EdgeState>, webrtc: Arc<WebRtc>) -> Self {
        Self { edge, webrtc }
    }
}

impl std::ops::Deref for WebRtcEdge {
    type Target = EdgeState;

    fn deref(&self) -> &EdgeState {
        &self.edge
    }
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

/// Sessions, ports and the session limits of one edge.
pub struct WebRtc {
    pub config: WebRtcConfig,
    limit: Arc<Semaphore>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    ports: Mutex<PortPool>,
    /// Sessions per client address and per token subject.
    clients: Mutex<HashMap<ClientKey, usize>>,
}

/// Who asks for a session: the address the request came from (unknown in unit tests)
/// and the subject (`sub`) of its token, if any. Each has its own share of sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    pub ip: Option<std::net::IpAddr>,
    pub subject: Option<String>,
}

/// One share of the per-client session cap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Ip(std::net::IpAddr),
    Subject(String),
}

impl Client {
    fn keys(&self) -> Vec<ClientKey> {
        let ip = self.ip.map(ClientKey::Ip);
        let subject = self.subject.clone().map(ClientKey::Subject);
        ip.into_iter().chain(subject).collect()
    }
}

/// A session's claim on the limits and its port; released on drop.
pub(crate) struct SessionLease {
    webrtc: Arc<WebRtc>,
    pub id: String,
    pub port: u16,
    client: Vec<ClientKey>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        lock(&self.webrtc.sessions).remove(&self.id);
        lock(&self.webrtc.ports).release(self.port);
        let mut clients = lock(&self.webrtc.clients);
        for key in &self.client {
            if let Some(count) = clients.get_mut(key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    clients.remove(key);
                }
            }
        }
    }
}

/// Why a session could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseError {
    TooManySessions,
    /// The client's address or token subject holds its share of sessions.
    ClientBusy,
    NoFreePort,
    /// The system random generator failed (no session id).
    NoRandom,
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
            clients: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// Takes a session slot, `client`'s share and a port, or says why not. Permits are
    /// taken before any WebRTC state exists.
    pub(crate) fn lease(
        self: &Arc<Self>,
        direction: Direction,
        stream: &str,
        client: &Client,
        cancel: CancellationToken,
    ) -> Result<SessionLease, LeaseError> {
        let permit = Arc::clone(&self.limit).try_acquire_owned().map_err(|_| LeaseError::TooManySessions)?;
        let keys = client.keys();
        {
            let mut clients = lock(&self.clients);
            let cap = self.config.max_sessions_per_client;
            if keys.iter().any(|k| clients.get(k).is_some_and(|n| *n >= cap)) {
                return Err(LeaseError::ClientBusy);
            }
            for key in &keys {
                *clients.entry(key.clone()).or_insert(0) += 1;
            }
        }
        // From here the lease gives the shares back when dropped, on error too.
        let mut lease = SessionLease {
            webrtc: Arc::clone(self),
            id: String::new(),
            port: 0,
            client: keys,
            _permit: permit,
        };
        lease.id = ferry_net::random::id().map_err(|_| LeaseError::NoRandom)?;
        lease.port = lock(&self.ports).take().ok_or(LeaseError::NoFreePort)?;
        lock(&self.sessions)
            .insert(lease.id.clone(), SessionEntry { direction, stream: stream.to_owned(), cancel });
        Ok(lease)
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
    pub fn ended(&self, state: &EdgeState, assignment: &crate::rollouts::Assignment, reason: &str) -> bool {
        tracing::info!(stream = %self.stream, session = %self.id, reason, "{} session ended", self.direction.name());
        let error = !matches!(reason, "closed" | "peer_closed" | "track_ended");
        if error {
            state
                .metrics
                .webrtc_session_errors
                .get_or_create(&crate::metrics::ReasonLabels::new(reason))
                .inc();
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

impl SessionPlane for WebRtc {
    fn session_count(&self) -> usize {
        WebRtc::session_count(self)
    }

    fn end_all(&self) {
        WebRtc::end_all(self);
    }
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
        let lease = webrtc.lease(Direction::Whep, "live/a", &Client::default(), CancellationToken::new());
        let lease = match lease {
            Ok(lease) => lease,
            Err(e) => panic!("first lease refused: {e:?}"),
        };
        assert_eq!(webrtc.count(Direction::Whep), 1);
        let second = webrtc.lease(Direction::Whep, "live/a", &Client::default(), CancellationToken::new());
        assert!(matches!(second, Err(LeaseError::TooManySessions)));
        assert!(!webrtc.end(Direction::Whip, &lease.id), "direction must match");
        assert!(webrtc.end(Direction::Whep, &lease.id));
        drop(lease);
        assert_eq!(webrtc.count(Direction::Whep), 0);
        assert!(webrtc
            .lease(Direction::Whep, "live/a", &Client::default(), CancellationToken::new())
            .is_ok());
    }

    #[tokio::test]
    async fn each_address_and_each_token_subject_gets_its_share_of_sessions() {
        let config = WebRtcConfig {
            max_sessions: 100,
            max_sessions_per_client: 2,
            udp_ports: (20000, 20099),
            ..Default::default()
        };
        let webrtc = Arc::new(WebRtc::new(config));
        let client = |ip: [u8; 4], subject: Option<&str>| Client {
            ip: Some(std::net::IpAddr::from(ip)),
            subject: subject.map(str::to_owned),
        };
        let lease = |c: &Client| webrtc.lease(Direction::Whep, "live/a", c, CancellationToken::new());
        let a = client([10, 0, 0, 1], None);
        let (first, second) = (lease(&a), lease(&a));
        assert!(first.is_ok() && second.is_ok());
        assert!(matches!(lease(&a), Err(LeaseError::ClientBusy)), "the address holds its share");
        assert!(lease(&client([10, 0, 0, 2], None)).is_ok(), "another address starts");
        // One token subject from many addresses: its own share.
        let (s1, s2) = (lease(&client([10, 0, 1, 1], Some("u"))), lease(&client([10, 0, 1, 2], Some("u"))));
        assert!(s1.is_ok() && s2.is_ok());
        assert!(matches!(lease(&client([10, 0, 1, 3], Some("u"))), Err(LeaseError::ClientBusy)));
        // A refused lease takes no share; an ended session gives its share back.
        drop(first);
        assert!(lease(&a).is_ok());
        drop(s1);
        assert!(lease(&client([10, 0, 1, 4], Some("u"))).is_ok());
    }
}
