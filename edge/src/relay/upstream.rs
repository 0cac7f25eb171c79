//! The link to the upstream edge. However many local viewers watch a track, this
//! edge holds exactly one upstream subscription for it; relayed tracks nobody
//! watches are dropped after a linger period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ferry_proto::{
    ErrorCode, GroupHeader, Message, NodeId, Role, StreamName, TrackName, MAX_CONTROL_MESSAGE,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::ingest::ingest_group;
use super::EdgeState;
use crate::metrics::TrackLabels;
use crate::track::TrackProducer;
use crate::Result;
use ferry_net::dial::connect;
use ferry_net::tls::{ClientTrust, TransportTuning};
use ferry_net::wire::{pump_control, read_message};

/// How long a subscribe upstream may take before local viewers get an error.
/// How long a finished relayed track stays open for its last group streams to land.
const END_OF_TRACK_DRAIN: Duration = Duration::from_millis(500);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence after which the link to an upstream counts as dead (keep-alives every 500 ms).
const UPSTREAM_IDLE: Duration = Duration::from_secs(2);
/// How long a group stream may precede its SUBSCRIBE_OK (different QUIC streams).
const ORPHAN_GROUP_WAIT: Duration = Duration::from_secs(2);

type Refusal = (ErrorCode, String);
/// A subscribe sent upstream, waiting for its answer.
type Pending = (StreamName, oneshot::Sender<Result<TrackProducer, Refusal>>);

/// Where an edge pulls the streams it lacks from: one fixed upstream (`--upstream`),
/// or each stream's origin as the cluster knows it (gossip, then the control plane).
pub struct Upstreams {
    fixed: Option<Arc<Upstream>>,
    /// Links to origins by QUIC address. Bounded by the number of edges: idle links to
    /// addresses no longer in use are dropped whenever a new one is added.
    by_addr: Mutex<HashMap<String, Arc<Upstream>>>,
}

impl Upstreams {
    pub fn new(config: &super::EdgeConfig) -> Result<Self> {
        let fixed = match &config.upstream {
            Some(addr) => Some(Arc::new(Upstream::new(addr.clone(), config)?)),
            None => None,
        };
        Ok(Self { fixed, by_addr: Mutex::new(HashMap::new()) })
    }

    /// The relayed track, subscribing at the fixed upstream, or at the stream's origin
    /// or the relay of this edge's region ([`crate::cluster::ClusterView::upstream_of`];
    /// `for_edge`: another edge asks).
    pub async fn track(
        &self,
        state: &Arc<EdgeState>,
        stream: &StreamName,
        track: &TrackName,
        for_edge: bool,
    ) -> std::result::Result<TrackProducer, Refusal> {
        let upstream = match &self.fixed {
            Some(fixed) => Arc::clone(fixed),
            None => {
                let me = state.config.node_id.as_str();
                let origin = state.cluster().upstream_of(stream.as_str(), me, &state.config.region, for_edge);
                let Some(origin) = origin else {
                    return Err((
                        ErrorCode::NotFound,
                        format!("stream {stream} is not published in the cluster"),
                    ));
                };
                let mut links = lock(&self.by_addr);
                if !links.contains_key(&origin.quic_addr) {
                    links.retain(|_, up| !up.idle());
                    let up = Upstream::new(origin.quic_addr.clone(), &state.config)
                        .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
                    links.insert(origin.quic_addr.clone(), Arc::new(up));
                }
                match links.get(&origin.quic_addr) {
                    Some(up) => Arc::clone(up),
                    None => return Err((ErrorCode::Internal, "upstream link vanished".into())),
                }
            }
        };
        upstream.track(state, stream, track).await
    }
}

/// Pulls streams from one upstream edge.
pub struct Upstream {
    addr: String,
    trust: ClientTrust,
    tuning: TransportTuning,
    node: NodeId,
    /// The open link; connecting is serialized by this lock, which is never held while
    /// a subscription waits for its answer.
    link: tokio::sync::Mutex<Option<Arc<LinkState>>>,
    /// One upstream subscription at a time per track, so two viewers of a new track
    /// share one, and a track whose answer is slow holds up no other track.
    subscribing: Mutex<HashMap<TrackKey, Arc<tokio::sync::Mutex<()>>>>,
}

type TrackKey = (StreamName, TrackName);

/// A place in a track's queue of subscribers; the entry goes when its last holder does
/// (also when the waiting subscriber is cancelled).
struct Turn<'a> {
    queues: &'a Mutex<HashMap<TrackKey, Arc<tokio::sync::Mutex<()>>>>,
    key: TrackKey,
    queue: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn join(queues: &'a Mutex<HashMap<TrackKey, Arc<tokio::sync::Mutex<()>>>>, key: TrackKey) -> Self {
        let queue = Arc::clone(lock(queues).entry(key.clone()).or_default());
        Turn { queues, key, queue }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut queues = lock(self.queues);
        // Held by the map and this turn only: nobody else waits.
        if queues.get(&self.key).is_some_and(|q| Arc::ptr_eq(q, &self.queue) && Arc::strong_count(q) == 2) {
            queues.remove(&self.key);
        }
    }
}

struct Relayed {
    stream: StreamName,
    producer: TrackProducer,
    idle_since: Option<Instant>,
}

struct LinkState {
    ctl: mpsc::Sender<Message>,
    cancel: CancellationToken,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    tracks: Mutex<HashMap<u64, Relayed>>,
    tracks_changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Upstream {
    pub fn new(addr: String, config: &super::EdgeConfig) -> Result<Self> {
        Ok(Self {
            addr,
            trust: config.upstream_trust.clone(),
            // A dead upstream must end its relayed tracks quickly, so viewers move on.
            tuning: config.tuning.failing_over(UPSTREAM_IDLE),
            node: config.node_id.clone(),
            link: tokio::sync::Mutex::new(None),
            subscribing: Mutex::new(HashMap::new()),
        })
    }

    /// Whether no link is open (or being opened) to this upstream.
    fn idle(&self) -> bool {
        match self.link.try_lock() {
            Ok(link) => link.as_ref().is_none_or(|l| l.cancel.is_cancelled()),
            Err(_) => false,
        }
    }

    /// The relayed track, subscribing upstream if this edge does not carry it yet.
    pub async fn track(
        &self,
        state: &Arc<EdgeState>,
        stream: &StreamName,
        track: &TrackName,
    ) -> std::result::Result<TrackProducer, Refusal> {
        let turn = Turn::join(&self.subscribing, (stream.clone(), track.clone()));
        let _turn = Arc::clone(&turn.queue).lock_owned().await;
        // Another viewer may have subscribed while we waited for our turn.
        if let Some(producer) = state.registry.find(stream, track) {
            return Ok(producer);
        }
        let link = {
            let mut guard = self.link.lock().await;
            match guard.as_ref().filter(|l| !l.cancel.is_cancelled()) {
                Some(link) => Arc::clone(link),
                None => {
                    let link = self.connect(state).await.map_err(|e| {
                        (ErrorCode::UpstreamUnavailable, format!("upstream {} unreachable: {e}", self.addr))
                    })?;
                    *guard = Some(Arc::clone(&link));
                    link
                }
            }
        };
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&link.pending).insert(id, (stream.clone(), tx));
        let max_lag_ms = u32::try_from(state.config.relay_max_lag.as_millis()).unwrap_or(u32::MAX);
        let subscribe =
            Message::Subscribe { id, stream: stream.clone(), track: track.clone(), priority: 0, max_lag_ms };
        if link.ctl.send(subscribe).await.is_err() {
            return Err((ErrorCode::UpstreamUnavailable, "upstream link closed".into()));
        }
        let answer = tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await;
        let producer = match answer {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err((ErrorCode::UpstreamUnavailable, "upstream link closed".into())),
            Err(_) => {
                lock(&link.pending).remove(&id);
                return Err((ErrorCode::UpstreamUnavailable, "upstream did not answer".into()));
            }
        };
        let labels = TrackLabels { stream: stream.to_string(), track: track.to_string() };
        state.metrics.upstream_subscriptions.add(&labels, 1);
        Ok(state.registry.add_relayed(stream, producer))
    }

    async fn connect(&self, state: &Arc<EdgeState>) -> Result<Arc<LinkState>> {
        let link = connect(
            &self.addr,
            &self.trust,
            &self.tuning,
            self.node.clone(),
            Role::Edge,
            &Default::default(),
        )
        .await?;
        tracing::info!(upstream = %self.addr, peer = %link.peer, "connected upstream");
        let (ctl_tx, ctl_rx) = mpsc::channel(64);
        let shared = Arc::new(LinkState {
            ctl: ctl_tx,
            cancel: state.media_shutdown.child_token(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            tracks: Mutex::new(HashMap::new()),
            tracks_changed: Notify::new(),
        });
        state.tracker.spawn(run_link(Arc::clone(state), Arc::clone(&shared), link, ctl_rx));
        Ok(shared)
    }
}

/// Drives one upstream connection until it fails or the edge shuts down, then ends
/// every relayed track so local viewers learn the upstream is gone.
async fn run_link(
    state: Arc<EdgeState>,
    shared: Arc<LinkState>,
    link: ferry_net::dial::Link,
    ctl_rx: mpsc::Receiver<Message>,
) {
    let ferry_net::dial::Link { endpoint, conn, send, recv, version, .. } = link;
    let cancel = shared.cancel.clone();
    let writer = state.tracker.spawn(pump_control(send, ctl_rx, version, cancel.clone()));
    let mut janitor = tokio::time::interval(Duration::from_secs(1));
    let reader = read_upstream(&state, &shared, recv);
    tokio::pin!(reader);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = &mut reader => break,
            _ = janitor.tick() => drop_idle(&state, &shared),
            recv = conn.accept_uni() => match recv {
                Ok(recv) => {
                    let (state2, shared2, cancel2) = (Arc::clone(&state), Arc::clone(&shared), cancel.clone());
                    state.tracker.spawn(async move {
                        tokio::select! {
                            _ = cancel2.cancelled() => {}
                            _ = ingest_upstream_group(&state2, &shared2, recv) => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %ferry_net::Chain(&e), "upstream connection lost");
                    break;
                }
            },
        }
    }
    cancel.cancel();
    conn.close(ErrorCode::NoError.as_u32().into(), b"");
    let relayed: Vec<Relayed> = lock(&shared.tracks).drain().map(|(_, r)| r).collect();
    for r in relayed {
        forget(&state, &r);
    }
    lock(&shared.pending).clear();
    let _ = writer.await;
    endpoint.wait_idle().await;
}

fn forget(state: &EdgeState, r: &Relayed) {
    state.registry.remove_track(&r.stream, &r.producer);
    let labels = TrackLabels { stream: r.stream.to_string(), track: r.producer.info().name.to_string() };
    state.metrics.upstream_subscriptions.add(&labels, -1);
}

/// Unsubscribes relayed tracks that had no local reader for the linger period.
fn drop_idle(state: &EdgeState, shared: &LinkState) {
    let now = Instant::now();
    let linger = state.config.relay_linger;
    let mut gone = Vec::new();
    {
        let mut tracks = lock(&shared.tracks);
        for (id, r) in tracks.iter_mut() {
            if r.producer.consumer_count() > 0 {
                r.idle_since = None;
            } else if now.saturating_duration_since(*r.idle_since.get_or_insert(now)) >= linger {
                gone.push(*id);
            }
        }
        for id in &gone {
            if let Some(r) = tracks.remove(id) {
                forget(state, &r);
            }
        }
    }
    for id in gone {
        let _ = shared.ctl.try_send(Message::Unsubscribe { id });
    }
}

async fn read_upstream(state: &Arc<EdgeState>, shared: &Arc<LinkState>, mut recv: quinn::RecvStream) {
    loop {
        let msg = match read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE).await {
            Ok(Some((_, msg))) => msg,
            Ok(None) | Err(_) => return,
        };
        match msg {
            Message::SubscribeOk { id, track } => {
                let Some((stream, tx)) = lock(&shared.pending).remove(&id) else { continue };
                let producer = TrackProducer::new(track, state.config.buffer);
                lock(&shared.tracks)
                    .insert(id, Relayed { stream, producer: producer.clone(), idle_since: None });
                shared.tracks_changed.notify_waiters();
                spawn_keyframe_forwarder(state, shared, &producer, id);
                let _ = tx.send(Ok(producer));
            }
            Message::SubscribeError { id, code, message } => {
                if let Some((_, tx)) = lock(&shared.pending).remove(&id) {
                    let _ = tx.send(Err((code, message)));
                }
            }
            Message::SubscribeDone { id, .. } => {
                // The upstream sends this once it has written the track's last frames,
                // which may still be in flight on their group streams (streams are not
                // ordered with the control stream). Keep the track a moment so they
                // land, then end it for local viewers.
                let (state, shared) = (Arc::clone(state), Arc::clone(shared));
                let drain = tokio::time::sleep(END_OF_TRACK_DRAIN);
                state.tracker.clone().spawn(async move {
                    tokio::select! {
                        _ = shared.cancel.cancelled() => {}
                        _ = drain => {}
                    }
                    let removed = lock(&shared.tracks).remove(&id);
                    if let Some(r) = removed {
                        forget(&state, &r);
                    }
                });
            }
            Message::GoAway { reason } => {
                tracing::info!(%reason, "upstream going away");
                return;
            }
            other => tracing::debug!(kind = other.kind(), "ignoring upstream message"),
        }
    }
}

fn spawn_keyframe_forwarder(
    state: &Arc<EdgeState>,
    shared: &Arc<LinkState>,
    producer: &TrackProducer,
    id: u64,
) {
    let (producer, shared2) = (producer.clone(), Arc::clone(shared));
    let metrics = state.metrics.clone();
    state.tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = shared2.cancel.cancelled() => return,
                _ = producer.keyframe_requested() => {}
            }
            let stream = match lock(&shared2.tracks).get(&id) {
                Some(r) => r.stream.clone(),
                None => return,
            };
            let msg = Message::KeyframeRequest { stream, track: producer.info().name.clone() };
            metrics.keyframe_requests.inc();
            if shared2.ctl.send(msg).await.is_err() {
                return;
            }
        }
    });
}

async fn ingest_upstream_group(state: &EdgeState, shared: &LinkState, mut recv: quinn::RecvStream) {
    let header =
        match tokio::time::timeout(ORPHAN_GROUP_WAIT, read_message::<GroupHeader>(&mut recv, 64)).await {
            Ok(Ok(Some((_, header)))) => header,
            _ => return,
        };
    let deadline = tokio::time::Instant::now() + ORPHAN_GROUP_WAIT;
    let producer = loop {
        let notified = shared.tracks_changed.notified();
        if let Some(r) = lock(&shared.tracks).get(&header.track) {
            break r.producer.clone();
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let _ = recv.stop(ErrorCode::Cancelled.as_u32().into());
            return;
        }
    };
    if let Err(e) = ingest_group(recv, &producer, header.seq, state.config.max_frame, &state.metrics).await {
        tracing::warn!(error = %ferry_net::Chain(&e), "bad group from upstream");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(track: &str) -> TrackKey {
        (StreamName::new("live/a").unwrap(), TrackName::new(track).unwrap())
    }

    #[tokio::test]
    async fn a_track_queue_goes_with_its_last_subscriber_and_tracks_do_not_wait_on_each_other() {
        let queues = Mutex::new(HashMap::new());
        let first = Turn::join(&queues, key("video"));
        let held = Arc::clone(&first.queue).lock_owned().await;
        // Another track is not queued behind it.
        let other = Turn::join(&queues, key("audio"));
        let other_held = Arc::clone(&other.queue).try_lock_owned();
        assert!(other_held.is_ok());
        // The same track is.
        let second = Turn::join(&queues, key("video"));
        assert!(Arc::clone(&second.queue).try_lock_owned().is_err());
        drop((other_held, other));
        assert_eq!(lock(&queues).len(), 1);
        // A waiter that gives up leaves the queue to the holder, who removes it.
        drop(second);
        assert_eq!(lock(&queues).len(), 1);
        drop((held, first));
        assert!(lock(&queues).is_empty());
    }
}
