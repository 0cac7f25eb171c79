//! The edge's link to the control plane: register, keep a watch, and keep the control
//! plane's records of this edge and the streams it originates true.
//!
//! The loop is level-triggered: after every watch wake-up (a change anywhere, a local
//! publisher starting, or a timeout) it reads the edges and streams, compares them with
//! what this edge knows to be true and writes only the difference. A control plane that
//! was down, lost its data or elected a new leader therefore converges without any
//! bookkeeping of what was sent before. While no voter answers, the edge keeps its last
//! snapshot and keeps serving: only new placement waits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ferry_net::http::{join, HttpClient, Method, Response};
use ferry_net::proof::Signer;
use ferry_proto::api::{Edge, EdgeRegistration, Rollout, Stream};
use ferry_proto::ErrorCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::origins::{Action, Origins};
use crate::rollouts::RolloutView;
use crate::{Error, Result};

/// Longest a watch request waits for a change before the loop reconciles anyway.
const WATCH_WAIT: Duration = Duration::from_secs(10);
/// Request timeout for reads and writes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What this edge registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub id: String,
    pub region: String,
    pub quic_addr: String,
    pub http_addr: String,
    pub version: String,
    pub capacity: u32,
}

/// The last state read from the control plane.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub edges: BTreeMap<String, Edge>,
    pub streams: BTreeMap<String, Stream>,
    /// Rollouts, applied to new sessions ([`crate::rollouts`]).
    pub rollouts: Arc<RolloutView>,
    /// Raft index the watch resumes from.
    pub index: u64,
}

/// The running link. Cheap to query from any task.
pub struct ControlLink {
    urls: Vec<String>,
    token: String,
    http: HttpClient,
    registration: Registration,
    snapshot: RwLock<Snapshot>,
    /// Wakes the loop when something local changed (a publisher started).
    local_change: Notify,
    connected: AtomicBool,
    /// Successful reconcile passes (`ferry_control_syncs_total`).
    syncs: Counter,
    /// Raft index the records of the last completed pass are at least as new as
    /// (`ferry_control_records_index`).
    records_index: Gauge,
    /// This process registered itself at least once (its first pass always does, which
    /// also clears a drain meant for an earlier process with the same id).
    registered_once: AtomicBool,
    /// Signs registrations with this edge's cluster certificate (when it has one).
    signer: Option<Signer>,
    /// Bumped whenever the rollouts in force here change (read from the control plane,
    /// or tripped by this edge's CPU guard): live sessions re-check their treatment.
    rollouts_epoch: tokio::sync::watch::Sender<u64>,
    /// Which streams this edge holds the origin of (decisions, sans-IO).
    origins: std::sync::Mutex<Origins>,
}

/// A publisher on this edge, as the control link sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPublisher {
    pub stream: String,
    /// The publisher's session on this edge.
    pub session: u64,
    /// Its token grants taking the stream over from another publisher.
    pub takeover: bool,
}

/// This edge's publishers: what the control link keeps the origins true to. The
/// relay implements it (a higher module).
pub trait LocalPublishers: Send + Sync {
    /// The publishers live here now.
    fn publishers(&self) -> Vec<LocalPublisher>;
    /// Ends the publisher `session` of `stream` with `reason` (another publisher
    /// holds it).
    fn revoke(&self, stream: &str, session: u64, reason: ErrorCode);
    /// Whether `edge` is live and publishes `stream`, by gossip (true without gossip).
    fn origin_live(&self, edge: &str, stream: &str) -> bool;
}

impl ControlLink {
    pub fn new(
        urls: Vec<String>,
        token: String,
        http: HttpClient,
        registration: Registration,
        signer: Option<Signer>,
    ) -> Arc<Self> {
        let origins = std::sync::Mutex::new(Origins::new(registration.id.clone()));
        Arc::new(ControlLink {
            urls,
            token,
            http,
            registration,
            snapshot: RwLock::new(Snapshot::default()),
            local_change: Notify::new(),
            connected: AtomicBool::new(false),
            syncs: Counter::default(),
            records_index: Gauge::default(),
            registered_once: AtomicBool::new(false),
            signer,
            rollouts_epoch: tokio::sync::watch::Sender::new(0),
            origins,
        })
    }

    /// The last snapshot (empty before the first successful read).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The rollouts of the last snapshot, parsed once per change.
    pub fn rollouts(&self) -> Arc<RolloutView> {
        self.snapshot.read().map(|s| Arc::clone(&s.rollouts)).unwrap_or_default()
    }

    /// Whether the last exchange with the control plane succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Completed reconcile passes.
    pub fn syncs(&self) -> u64 {
        self.syncs.get()
    }

    /// Registers `ferry_control_syncs_total` and `ferry_control_records_index` (completed
    /// passes, and the raft index their records have reached: the records this edge
    /// routes by are fresh while it grows).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "ferry_control_syncs",
            "Completed passes with the control plane (registration, origins, records read)",
            self.syncs.clone(),
        );
        registry.register(
            "ferry_control_records_index",
            "Raft index the control-plane records this edge routes by are at least as new as",
            self.records_index.clone(),
        );
    }

    /// Tells live sessions that the rollouts in force changed.
    pub fn rollouts_changed(&self) {
        self.rollouts_epoch.send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }

    /// Changes whenever the rollouts in force change.
    pub fn watch_rollouts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rollouts_epoch.subscribe()
    }

    /// Asks the loop to reconcile now (a local publisher started or stopped).
    pub fn poke(&self) {
        self.local_change.notify_one();
    }

    /// Runs until `cancel`: reconcile, watch, repeat; on failure move to the next URL
    /// with exponential backoff. `local` is this edge's publishers; `drain` is
    /// cancelled when an operator asks this edge to drain.
    pub async fn run(
        self: Arc<Self>,
        local: Arc<dyn LocalPublishers>,
        cancel: CancellationToken,
        drain: CancellationToken,
    ) {
        let mut url_index = 0usize;
        let mut backoff = BACKOFF_MIN;
        loop {
            let Some(url) = self.urls.get(url_index % self.urls.len().max(1)).cloned() else { return };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.pass(&url, local.as_ref(), &drain) => r,
            };
            match result {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    if !self.connected.swap(true, Ordering::Relaxed) {
                        tracing::info!(control_plane = %url, "registered with the control plane");
                    }
                }
                Err(e) => {
                    let e = ferry_net::Chain(&e).to_string();
                    if self.connected.swap(false, Ordering::Relaxed) {
                        tracing::warn!(control_plane = %url, "control plane unreachable, serving from the last snapshot: {e}");
                    } else {
                        tracing::debug!(control_plane = %url, "control plane: {e}");
                    }
                    url_index = url_index.wrapping_add(1);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One pass: read, fix what is wrong, then wait for the next change.
    async fn pass(&self, url: &str, local: &dyn LocalPublishers, drain: &CancellationToken) -> Result<()> {
        // The index the last watch reported, read before the records: they are at least
        // as new as it.
        let index = self.snapshot.read().map(|s| s.index).unwrap_or(0);
        let edges: Vec<Edge> = self.list(url, "/v1/edges?stale=true", "edges").await?;
        let streams: Vec<Stream> = self.list(url, "/v1/streams?stale=true", "streams").await?;
        let rollouts: Vec<Rollout> = self.list(url, "/v1/rollouts?stale=true", "rollouts").await?;
        let known = self.snapshot.read().map(|s| Arc::clone(&s.rollouts)).unwrap_or_default();
        let records: BTreeMap<String, Rollout> = rollouts.into_iter().map(|r| (r.id.clone(), r)).collect();
        let rollouts_moved = known.records != records;
        let snapshot = Snapshot {
            edges: edges.into_iter().map(|e| (e.id.clone(), e)).collect(),
            streams: streams.into_iter().map(|s| (s.name.clone(), s)).collect(),
            rollouts: match rollouts_moved {
                true => Arc::new(RolloutView::new(records)),
                false => known,
            },
            index,
        };
        let me = &self.registration;
        let registered = self.registered_once.load(Ordering::Relaxed)
            && snapshot.edges.get(&me.id).is_some_and(|e| {
                (&e.region, &e.quic_addr, &e.http_addr, &e.version, e.capacity)
                    == (&me.region, &me.quic_addr, &me.http_addr, &me.version, me.capacity)
            });
        if registered && snapshot.edges.get(&me.id).is_some_and(|e| e.draining) && !drain.is_cancelled() {
            tracing::warn!("the control plane asked this edge to drain");
            drain.cancel();
        }
        if !registered {
            let body = EdgeRegistration {
                region: me.region.clone(),
                quic_addr: me.quic_addr.clone(),
                http_addr: me.http_addr.clone(),
                version: Some(me.version.clone()),
                capacity: me.capacity,
            };
            let body = serde_json::to_value(&body).map_err(|e| Error::Config(e.to_string()))?;
            self.write(url, Method::PUT, &format!("/v1/edges/{}", me.id), &body).await?;
            self.registered_once.store(true, Ordering::Relaxed);
        }
        self.reconcile_origins(url, &snapshot, local).await?;
        if let Ok(mut s) = self.snapshot.write() {
            *s = snapshot;
        }
        if rollouts_moved {
            self.rollouts_changed();
        }
        self.syncs.inc();
        self.records_index.set(i64::try_from(index).unwrap_or(i64::MAX));
        self.connected.store(true, Ordering::Relaxed);

        // Wait for a change on the control plane or here.
        let path = format!("/v1/watch?since={index}&timeout_ms={}", WATCH_WAIT.as_millis());
        let watch =
            self.http.get(&join(url, &path)).bearer(&self.token).timeout(WATCH_WAIT + REQUEST_TIMEOUT);
        let recheck = self.origins().recheck().unwrap_or(WATCH_WAIT + REQUEST_TIMEOUT);
        tokio::select! {
            _ = self.local_change.notified() => Ok(()),
            // A publisher waits on a refused claim: look again soon.
            _ = tokio::time::sleep(recheck) => Ok(()),
            r = watch.send() => {
                let r = r?;
                check(&r, "/v1/watch")?;
                let next = r.json().get("index").and_then(Value::as_u64).unwrap_or(index);
                if let Ok(mut s) = self.snapshot.write() {
                    s.index = next;
                }
                Ok(())
            }
        }
    }

    /// Keeps the control plane's origins true to this edge's publishers, with at most
    /// one write per publisher start and one per end ([`Origins`] decides; this
    /// performs).
    async fn reconcile_origins(
        &self,
        url: &str,
        snapshot: &Snapshot,
        local: &dyn LocalPublishers,
    ) -> Result<()> {
        let publishers = local.publishers();
        let live = |edge: &str, stream: &str| local.origin_live(edge, stream);
        let actions = self.origins().plan(Instant::now(), &publishers, &snapshot.streams, &live);
        for action in actions {
            match action {
                Action::Claim { stream, session, takeover } => match self.claim(url, &stream, takeover).await
                {
                    Ok(()) => {
                        tracing::info!(%stream, takeover, "claimed the stream's origin for this edge");
                        self.origins().granted(&stream, session);
                    }
                    Err(Error::ControlPlane { status: 409, body, .. }) => {
                        let record = snapshot.streams.get(&stream);
                        let holder_live = record.is_some_and(|s| local.origin_live(&s.origin, &stream));
                        tracing::info!(%stream, holder_live, "the stream is held by another edge: {body}");
                        let refused =
                            self.origins().refused(Instant::now(), &stream, session, record, holder_live);
                        if let Some(Action::Revoke { stream, session, reason }) = refused {
                            local.revoke(&stream, session, reason);
                        }
                    }
                    Err(e) => return Err(e),
                },
                Action::Release { stream } => {
                    let path = format!("/v1/origins/{stream}?origin={}", self.registration.id);
                    self.write(url, Method::DELETE, &path, &Value::Null).await?;
                    tracing::info!(%stream, "released the stream: its publisher left");
                    self.origins().released(&stream);
                }
                Action::Revoke { stream, session, reason } => {
                    tracing::warn!(%stream, reason = reason.name(), "ending this edge's publisher: another edge holds the stream");
                    local.revoke(&stream, session, reason);
                }
            }
        }
        Ok(())
    }

    fn origins(&self) -> std::sync::MutexGuard<'_, Origins> {
        self.origins.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn claim(&self, url: &str, stream: &str, takeover: bool) -> Result<()> {
        let body = serde_json::json!({ "origin": self.registration.id, "takeover": takeover });
        self.write(url, Method::PUT, &format!("/v1/origins/{stream}"), &body).await
    }

    async fn list<T: serde::de::DeserializeOwned>(&self, url: &str, path: &str, key: &str) -> Result<Vec<T>> {
        let r = self.http.get(&join(url, path)).bearer(&self.token).timeout(REQUEST_TIMEOUT).send().await?;
        check(&r, path)?;
        Ok(parse_items(r.json(), key, path))
    }

    async fn write(&self, url: &str, method: Method, path: &str, body: &Value) -> Result<()> {
        let bytes = body.to_string();
        let mut request = self
            .http
            .request(method.clone(), &join(url, path))
            .bearer(&self.token)
            .body("application/json", bytes.clone())
            .timeout(REQUEST_TIMEOUT);
        if let Some(signer) = &self.signer {
            let now = ferry_net::time::unix_ms();
            for (name, value) in signer.headers(method.as_str(), path, now, bytes.as_bytes())? {
                request = request.header(&name, &value);
            }
        }
        check(&request.send().await?, path)
    }
}

/// The items of a list answer (`{"edges": [...]}`). An item this edge cannot read (a
/// newer control plane's rollout spec, say) is skipped with a warning, so the others
/// still apply.
fn parse_items<T: serde::de::DeserializeOwned>(body: Value, key: &str, path: &str) -> Vec<T> {
    let Some(Value::Array(items)) = body.get(key).cloned() else { return Vec::new() };
    items
        .into_iter()
        .filter_map(|item| match serde_json::from_value(item) {
            Ok(item) => Some(item),
            Err(e) => {
                tracing::warn!(%path, "skipping an item this edge cannot read: {e}");
                None
            }
        })
        .collect()
}

fn check(r: &Response, path: &str) -> Result<()> {
    match r.ok() {
        true => Ok(()),
        false => {
            Err(Error::ControlPlane { path: path.to_owned(), status: r.status, body: r.json().to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn a_rollout_this_edge_cannot_read_is_skipped_and_the_others_apply() {
        let body = serde_json::json!({"rollouts": [
            {"id": "lag", "spec": {"override": {"max_lag_ms": 500}}, "level": 1, "state": "active"},
            {"id": "new", "spec": {"override": {"from_the_future": 1}}, "level": 4, "state": "active"},
        ]});
        let rollouts: Vec<Rollout> = parse_items(body, "rollouts", "/v1/rollouts");
        assert_eq!(rollouts.len(), 1);
        assert_eq!((rollouts[0].id.as_str(), rollouts[0].spec.overrides.max_lag_ms), ("lag", Some(500)));
    }
}
