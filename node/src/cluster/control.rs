//! The edge's link to the control plane: register, keep a watch, and keep the control
//! plane's records of this edge and the streams it originates true.
//!
//! The loop is level-triggered: after every watch wake-up (a change anywhere, a local
//! publisher starting, or a timeout) it reads the edges and streams, compares them with
//! what this edge knows to be true and writes only the difference. A control plane that
//! was down, lost its data or elected a new leader therefore converges without any
//! bookkeeping of what was sent before. While no voter answers, the edge keeps its last
//! snapshot and keeps serving: only new placement waits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::proof::Signer;
use crate::http_client::{request, request_with, Response};

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

/// An edge as the control plane has it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EdgeRecord {
    pub id: String,
    pub region: String,
    pub quic_addr: String,
    pub http_addr: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub capacity: u32,
    /// An operator asked this edge to drain.
    #[serde(default)]
    pub draining: bool,
}

/// A stream as the control plane has it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StreamRecord {
    pub name: String,
    pub origin: String,
    #[serde(default)]
    pub relays: BTreeMap<String, Vec<String>>,
    /// The leader's failover marked the origin dead; no publisher has returned yet.
    #[serde(default)]
    pub origin_lost: bool,
}

/// The last state read from the control plane.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub edges: BTreeMap<String, EdgeRecord>,
    pub streams: BTreeMap<String, StreamRecord>,
    /// Rollouts, applied to new sessions ([`crate::rollouts`]).
    pub rollouts: BTreeMap<String, crate::rollouts::RolloutRecord>,
    /// Raft index the watch resumes from.
    pub index: u64,
}

/// The running link. Cheap to query from any task.
pub struct ControlLink {
    urls: Vec<String>,
    token: String,
    registration: Registration,
    snapshot: RwLock<Snapshot>,
    /// Wakes the loop when something local changed (a publisher started).
    local_change: Notify,
    connected: AtomicBool,
    /// Successful reconcile passes (for tests and metrics).
    syncs: AtomicU64,
    /// This process registered itself at least once (its first pass always does, which
    /// also clears a drain meant for an earlier process with the same id).
    registered_once: AtomicBool,
    /// Signs registrations with this edge's cluster certificate (when it has one).
    signer: Option<Signer>,
    /// Bumped whenever the rollouts in force here change (read from the control plane,
    /// or tripped by this edge's CPU guard): live sessions re-check their treatment.
    rollouts_epoch: tokio::sync::watch::Sender<u64>,
}

impl ControlLink {
    pub fn new(
        urls: Vec<String>,
        token: String,
        registration: Registration,
        signer: Option<Signer>,
    ) -> Arc<Self> {
        Arc::new(ControlLink {
            urls,
            token,
            registration,
            snapshot: RwLock::new(Snapshot::default()),
            local_change: Notify::new(),
            connected: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            registered_once: AtomicBool::new(false),
            signer,
            rollouts_epoch: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The last snapshot (empty before the first successful read).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether the last exchange with the control plane succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Completed reconcile passes.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
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
    /// with exponential backoff. `originated` lists the streams published on this edge;
    /// `drain` is cancelled when an operator asks this edge to drain.
    pub async fn run(
        self: Arc<Self>,
        originated: impl Fn() -> BTreeSet<String>,
        cancel: CancellationToken,
        drain: CancellationToken,
    ) {
        let mut url_index = 0usize;
        let mut backoff = BACKOFF_MIN;
        loop {
            let Some(url) = self.urls.get(url_index % self.urls.len().max(1)).cloned() else { return };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.pass(&url, &originated, &drain) => r,
            };
            match result {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    if !self.connected.swap(true, Ordering::Relaxed) {
                        tracing::info!(control_plane = %url, "registered with the control plane");
                    }
                }
                Err(e) => {
                    if self.connected.swap(false, Ordering::Relaxed) {
                        tracing::warn!(control_plane = %url, "control plane unreachable, serving from the last snapshot: {e:#}");
                    } else {
                        tracing::debug!(control_plane = %url, "control plane: {e:#}");
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
    async fn pass(
        &self,
        url: &str,
        originated: &impl Fn() -> BTreeSet<String>,
        drain: &CancellationToken,
    ) -> anyhow::Result<()> {
        let edges: Vec<EdgeRecord> = self.list(url, "/v1/edges?stale=true", "edges").await?;
        let streams: Vec<StreamRecord> = self.list(url, "/v1/streams?stale=true", "streams").await?;
        let rollouts: Vec<crate::rollouts::RolloutRecord> =
            self.list(url, "/v1/rollouts?stale=true", "rollouts").await?;
        let index = self.snapshot.read().map(|s| s.index).unwrap_or(0);
        let snapshot = Snapshot {
            edges: edges.into_iter().map(|e| (e.id.clone(), e)).collect(),
            streams: streams.into_iter().map(|s| (s.name.clone(), s)).collect(),
            rollouts: rollouts.into_iter().map(|r| (r.id.clone(), r)).collect(),
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
            let body = json!({
                "region": me.region, "quic_addr": me.quic_addr, "http_addr": me.http_addr,
                "version": me.version, "capacity": me.capacity,
            });
            self.write(url, "PUT", &format!("/v1/edges/{}", me.id), &body).await?;
            self.registered_once.store(true, Ordering::Relaxed);
        }
        for stream in originated() {
            // Also re-claim a stream a failover marked lost while this edge kept it
            // (a partition healed with the publisher still here).
            if snapshot.streams.get(&stream).is_some_and(|s| s.origin == me.id && !s.origin_lost) {
                continue;
            }
            let body = json!({ "origin": me.id });
            self.write(url, "PUT", &format!("/v1/streams/{stream}"), &body).await?;
            tracing::info!(%stream, "committed this edge as the stream's origin");
        }
        let mut rollouts_moved = false;
        if let Ok(mut s) = self.snapshot.write() {
            rollouts_moved = s.rollouts != snapshot.rollouts;
            *s = snapshot;
        }
        if rollouts_moved {
            self.rollouts_changed();
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);

        // Wait for a change on the control plane or here.
        let path = format!("/v1/watch?since={index}&timeout_ms={}", WATCH_WAIT.as_millis());
        tokio::select! {
            _ = self.local_change.notified() => Ok(()),
            r = request(url, "GET", &path, &self.token, None, None, WATCH_WAIT + REQUEST_TIMEOUT) => {
                let r = r?;
                if r.status != 200 {
                    anyhow::bail!("watch: HTTP {}: {}", r.status, r.body);
                }
                let next = r.body.get("index").and_then(Value::as_u64).unwrap_or(index);
                if let Ok(mut s) = self.snapshot.write() {
                    s.index = next;
                }
                Ok(())
            }
        }
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        key: &str,
    ) -> anyhow::Result<Vec<T>> {
        let r = request(url, "GET", path, &self.token, None, None, REQUEST_TIMEOUT).await?;
        check(&r, path)?;
        let items = r.body.get(key).cloned().unwrap_or(Value::Array(Vec::new()));
        Ok(serde_json::from_value(items)?)
    }

    async fn write(&self, url: &str, method: &str, path: &str, body: &Value) -> anyhow::Result<()> {
        let headers = match &self.signer {
            Some(signer) => {
                let bytes = serde_json::to_vec(body)?;
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
                signer.headers(method, path, now, &bytes)?
            }
            None => Vec::new(),
        };
        let r =
            request_with(url, method, path, &self.token, Some(body), None, &headers, REQUEST_TIMEOUT).await?;
        check(&r, path)
    }
}

fn check(r: &Response, path: &str) -> anyhow::Result<()> {
    if r.status / 100 != 2 {
        anyhow::bail!("{path}: HTTP {}: {}", r.status, r.body);
    }
    Ok(())
}
