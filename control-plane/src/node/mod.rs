//! The raft node: one task owns the `RawNode`, its storage and the state machine;
//! everything else talks to it through a [`NodeHandle`].
//!
//! # Layout
//! - `mod.rs`: configuration, the handle, errors.
//! - `driver`: the loop — ticks, inputs, and the Ready handling in raft-rs's order.
//! - `members`: the voters' raft addresses, persisted beside the log.
//! - `snapshotter`: a shadow state machine that builds snapshots off the node's thread.
//! - `log`: raft-rs's slog records into `tracing`.

mod driver;
pub mod log;
mod members;
mod network;
#[cfg(test)]
mod sim;
mod snapshotter;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use raft::eraftpb::Message;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::state::{Outcome, Request, State};
use crate::versions::Announcement;
pub use network::{MemoryRouter, RaftNetwork};

pub use members::Members;

/// How a raft node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This voter's id (1, 2, 3, ...).
    pub id: u64,
    /// Raft addresses of the initial voters, this one included.
    pub peers: BTreeMap<u64, String>,
    /// Where sled keeps the log, hard state and snapshots.
    pub data_dir: PathBuf,
    /// One raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election (randomized up to twice this).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between snapshots (log compaction).
    pub snapshot_every: u64,
    /// Start empty and wait to be added by the cluster (a new member).
    pub join: bool,
    /// Seed an empty store from a backup (`ferry control --restore`); a store that
    /// already holds this restored cluster is opened as it is.
    pub restore: Option<RestoreSeed>,
    /// With `join`: the identity of the restored cluster this new member joins, kept in
    /// its store (a store with another identity, or raft state without one, is refused).
    pub cluster_uuid: Option<String>,
}

/// What a voter restored from a backup starts from.
#[derive(Clone)]
pub struct RestoreSeed {
    /// The raft index and term the backup's state is at.
    pub index: u64,
    pub term: u64,
    /// The snapshot bytes of the state.
    pub data: Vec<u8>,
    /// The restored cluster's identity (see `backup::restored_cluster_uuid`).
    pub cluster_uuid: String,
}

impl std::fmt::Debug for RestoreSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSeed")
            .field("index", &self.index)
            .field("term", &self.term)
            .field("data_len", &self.data.len())
            .field("cluster_uuid", &self.cluster_uuid)
            .finish()
    }
}

/// The state at an applied index, for a backup ([`NodeHandle::image`]).
#[derive(Debug, Clone)]
pub struct Image {
    /// The applied index the state is at, and its term.
    pub index: u64,
    pub term: u64,
    /// The voters then.
    pub voters: Vec<u64>,
    pub state: State,
}

impl NodeConfig {
    /// Defaults: 100 ms ticks, elections after 0.5–1 s, snapshots every 10,000 entries.
    pub fn new(id: u64, peers: BTreeMap<u64, String>, data_dir: PathBuf) -> Self {
        Self {
            id,
            peers,
            data_dir,
            tick: Duration::from_millis(100),
            election_ticks: 5,
            heartbeat_ticks: 1,
            snapshot_every: 10_000,
            join: false,
            restore: None,
            cluster_uuid: None,
        }
    }
}

/// What the node knows about the cluster, updated after every Ready.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Status {
    pub id: u64,
    /// 0 when no leader is known.
    pub leader: u64,
    pub term: u64,
    pub role: String,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Index of the newest snapshot taken or installed here.
    pub snapshot_index: u64,
    pub snapshots_taken: u64,
    pub proposals: u64,
    /// Writes proposed again because the leader they went to changed or stayed silent
    /// (each still applies once).
    pub reproposals: u64,
    /// Why this node stopped (a storage failure); `None` while it runs.
    pub fault: Option<String>,
}

/// Why a node operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// No leader is known (election in progress, or no quorum).
    #[error("no raft leader (election in progress or no quorum)")]
    NoLeader,
    /// Not committed in time: the write may or may not apply later; retry with the
    /// same request id (retries are applied once).
    #[error("not committed within {0:?}; retry with the same request id")]
    Timeout(Duration),
    /// The node's input queue is full (overloaded): nothing was proposed; retry.
    #[error("the raft node is overloaded (its input queue is full); retry shortly")]
    Busy,
    /// The node is shutting down.
    #[error("the raft node stopped")]
    Stopped,
    /// The change is not allowed (e.g. removing an unknown member).
    #[error("{0}")]
    Rejected(String),
    /// A committed entry this build cannot apply (written by a newer release, or
    /// damaged). The node stops rather than skip it: skipping would make its state
    /// differ from the other voters'.
    #[error("log entry {index} cannot be applied by this build ({what}); upgrade this voter")]
    Incompatible { index: u64, what: String },
    /// `--restore` into a data directory that holds raft state of another cluster.
    #[error("{0}")]
    RestoreRefused(String),
    /// The raft log, its state or the snapshot could not be read or written: `what`
    /// names the step; the cause is the source.
    #[error("raft storage: {what}")]
    Storage {
        what: &'static str,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

pub(crate) enum Input {
    Propose { request: Box<Request>, reply: oneshot::Sender<Result<(u64, Outcome), NodeError>> },
    ReadIndex { reply: oneshot::Sender<Result<u64, NodeError>> },
    AddVoter { id: u64, addr: String, reply: oneshot::Sender<Result<u64, NodeError>> },
    RemoveVoter { id: u64, reply: oneshot::Sender<Result<u64, NodeError>> },
    Image { reply: oneshot::Sender<Result<Image, NodeError>> },
}

/// Client requests queued for the node task; past this they get back-pressure errors.
const INPUT_QUEUE: usize = 4096;
/// Messages from peers queued for the node task, apart from client requests (a burst
/// of proposals never crowds out heartbeats and votes); past this they are dropped
/// (raft retries).
const PEER_QUEUE: usize = 4096;

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    inputs: mpsc::Sender<Input>,
    peers: mpsc::Sender<Message>,
    status: watch::Receiver<Status>,
    state: Arc<RwLock<State>>,
    members: Members,
    cluster_uuid: Option<Arc<str>>,
    /// What each peer announced on its current raft connection (see [`crate::versions`]).
    announced: Arc<std::sync::Mutex<BTreeMap<u64, Announcement>>>,
}

impl NodeHandle {
    /// Records what peer `id` announced on a new raft connection.
    pub fn announce(&self, id: u64, announcement: Announcement) {
        self.announced.lock().unwrap_or_else(PoisonError::into_inner).insert(id, announcement);
    }

    /// Forgets what peer `id` announced: it connected without a hello (an earlier
    /// release), so it counts as command set 1 again.
    pub fn forget_announcement(&self, id: u64) {
        self.announced.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    /// What the peers announced, by id.
    pub fn announcements(&self) -> BTreeMap<u64, Announcement> {
        self.announced.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The identity of a cluster restored from a backup (`None`: a founded cluster).
    pub fn cluster_uuid(&self) -> Option<&str> {
        self.cluster_uuid.as_deref()
    }

    /// A copy of the state at the node's applied index with that index's term and the
    /// voters, taken between two Readies. Call [`NodeHandle::linearize`] first for a
    /// consistent one.
    pub async fn image(&self, timeout: Duration) -> Result<Image, NodeError> {
        self.call(|reply| Input::Image { reply }, timeout).await
    }

    /// The latest status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A watch of the status (applied index, leader, ...).
    pub fn status_watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Reads the local state machine (possibly stale; see [`NodeHandle::linearize`]).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Raft addresses of the members.
    pub fn members(&self) -> BTreeMap<u64, String> {
        self.members.snapshot()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Input,
        timeout: Duration,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.inputs.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NodeError::Busy,
            mpsc::error::TrySendError::Closed(_) => NodeError::Stopped,
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) if self.status().leader == 0 => Err(NodeError::NoLeader),
            Err(_) => Err(NodeError::Timeout(timeout)),
        }
    }

    /// Proposes a write and waits until it is committed, applied and flushed here.
    /// Returns the log index and the outcome.
    pub async fn write(&self, request: Request, timeout: Duration) -> Result<(u64, Outcome), NodeError> {
        self.call(|reply| Input::Propose { request: Box::new(request), reply }, timeout).await
    }

    /// Waits until this node has applied everything committed before the call
    /// (raft ReadIndex), so a following local read is linearizable.
    pub async fn linearize(&self, timeout: Duration) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let index = self.call(|reply| Input::ReadIndex { reply }, timeout).await?;
        self.wait_applied(index, deadline).await.then_some(()).ok_or(NodeError::Timeout(timeout))
    }

    /// Waits until the applied index reaches `index` or the deadline passes.
    pub async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) -> bool {
        let mut status = self.status.clone();
        let reached = tokio::time::timeout_at(deadline, status.wait_for(|s| s.applied >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Adds a voter (raft conf change). Returns the index it applied at.
    pub async fn add_voter(&self, id: u64, addr: String, timeout: Duration) -> Result<u64, NodeError> {
        self.call(|reply| Input::AddVoter { id, addr, reply }, timeout).await
    }

    /// Removes a voter.
    pub async fn remove_voter(&self, id: u64, timeout: Duration) -> Result<u64, NodeError> {
        self.call(|reply| Input::RemoveVoter { id, reply }, timeout).await
    }

    /// The raft address of member `id`.
    pub fn member_addr(&self, id: u64) -> Option<String> {
        self.members.get(id)
    }

    /// Hands a message from a peer to the node; dropped when the queue is full.
    pub fn deliver(&self, msg: Message) {
        if self.peers.try_send(msg).is_err() {
            tracing::debug!("raft peer queue full; a message dropped");
        }
    }
}

/// A node whose storage is open, not yet running: connect it to a network, then
/// [`NodeRunner::run`] it.
pub struct NodeRunner(driver::Driver);

impl NodeRunner {
    /// Drives raft until `cancel` fires, sending through `network`; an error when
    /// storage failed and the node stopped.
    pub async fn run(
        self,
        network: Arc<dyn RaftNetwork>,
        cancel: CancellationToken,
    ) -> Result<(), NodeError> {
        self.0.run(network, cancel).await
    }
}

/// Opens (or creates) the node's storage and rebuilds its state machine.
pub fn open(config: NodeConfig) -> Result<(NodeRunner, NodeHandle), NodeError> {
    let (inputs, rx) = mpsc::channel(INPUT_QUEUE);
    let (peers, peer_rx) = mpsc::channel(PEER_QUEUE);
    let (driver, handle) = driver::Driver::open(config, (inputs, rx), (peers, peer_rx))?;
    Ok((NodeRunner(driver), handle))
}
