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

/// Sessions, ports and the session limit of one edge.
pub struct WebRtc {
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
            config,
        }
    }

    /// Takes a session slot and a port, or says why not. The permit is taken before
    /// any WebRTC state exists.
    pub(crate) fn lease(
        self: &Arc<Self>,
        direction: Direction,
        stream: &str,
        cancel: CancellationToken,
    ) -> Result<SessionLease, LeaseError> {
        let permit = Arc::clone(&self.limit).try_acquire_owned().map_err(|_| LeaseError::TooManySessions)?;
        let id = ferry_net::random::id().map_err(|_| LeaseError::NoRandom)?;
        let port = lock(&self.ports).take().ok_or(LeaseError::NoFreePort)?;
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
