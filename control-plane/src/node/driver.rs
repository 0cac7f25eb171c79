//! The node task. Ready handling follows raft-rs's order exactly: send leader
//! messages → apply snapshot → apply committed → append entries and hard state and
//! **flush** → answer clients → send persisted messages → `advance` → light ready →
//! `advance_apply`.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Message, Snapshot};
use raft::{Config, RawNode};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::snapshotter::{Built, Snapshotter};
use super::RaftNetwork;
use super::{Image, Input, Members, NodeConfig, NodeError, NodeHandle, RestoreSeed, Status};
use crate::raft_codec;
use crate::state::{apply, decode_request, encode_entry, Command, Outcome, State};
use crate::storage::{LogStore, SledStore};

type WriteReply = oneshot::Sender<Result<(u64, Outcome), NodeError>>;
type IndexReply = oneshot::Sender<Result<u64, NodeError>>;

/// A ReadIndex without an answer after this long is sent again.
const READ_RETRY: Duration = Duration::from_millis(300);

/// A follower the leader has been sending a snapshot to for this long without an answer
/// is reported unreachable for snapshots, so the leader probes it and sends another:
/// raft-rs waits for a report forever, and a snapshot message can be lost (a full peer
/// queue, a connection that broke while sending it).
const SNAPSHOT_STUCK: Duration = Duration::from_secs(5);

/// A write not applied this long after it was (last) proposed, with the same leader
/// known all along, is proposed again: its forwarded proposal may have been dropped
/// (a full peer queue) or its entry overwritten by a leader we did not notice.
const REPROPOSE_AFTER: Duration = Duration::from_secs(2);

/// A write waiting for its entry to apply.
struct PendingWrite {
    reply: WriteReply,
    /// The encoded entry, kept when the request has an id: proposing it again (same
    /// context, same id) then applies it at most once, so it is re-proposed whenever the
    /// leader it went to may have lost it. `None`: proposed once only.
    data: Option<Vec<u8>>,
    /// The leader it was last proposed to (this node when it leads).
    leader: u64,
    /// When it was last proposed.
    sent: Instant,
}

/// Inputs handled per loop turn before the Ready is processed (fairness with ticks).
const INPUT_BATCH: usize = 512;
/// Log entries a snapshot compacted away that one loop turn removes from the store
/// (about a millisecond of sled work).
const COMPACT_PER_TURN: u64 = 64;

/// Where the driver reads the time: the monotonic clock, or a simulation's virtual one.
pub(super) type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// How a driver is assembled from its parts: production opens sled and draws a random
/// boot id; the simulation passes a memory store, a virtual clock and a seeded boot id.
pub(super) struct Parts<S> {
    pub store: S,
    pub members: Members,
    pub boot: u64,
    pub clock: Clock,
    /// Build snapshots on a worker thread (`false`: inline, deterministic).
    pub snapshot_thread: bool,
    /// The restored cluster's identity (`None`: a cluster founded from scratch).
    pub cluster_uuid: Option<String>,
}

pub(super) struct Driver<S: LogStore = SledStore> {
    raw: RawNode<S>,
    rx: mpsc::Receiver<Input>,
    /// Messages from peers (their own queue: see `PEER_QUEUE`).
    peer_rx: mpsc::Receiver<Message>,
    state: Arc<RwLock<State>>,
    status: watch::Sender<Status>,
    members: Members,
    config: NodeConfig,
    /// Writes waiting for their entry to apply, by the entry's context (this proposal's
    /// own tag: two writes with one request id, or none, never share an answer).
    writes: BTreeMap<Vec<u8>, PendingWrite>,
    /// ReadIndex requests by context, with when they were last sent to raft.
    reads: BTreeMap<Vec<u8>, (IndexReply, Instant)>,
    /// Conf changes waiting to apply, by context.
    conf_changes: BTreeMap<Vec<u8>, IndexReply>,
    next_ctx: u64,
    /// Random per start, in every context this process makes: entries proposed before
    /// a restart (applied again after it) never match a waiter of this run.
    boot: u64,
    applied: u64,
    snapshot_index: u64,
    snapshots_taken: u64,
    proposals: u64,
    /// Writes proposed again after a leader change or a silent leader.
    reproposals: u64,
    /// The leader seen at the end of the last loop turn.
    last_leader: u64,
    /// Followers this leader has been sending a snapshot to, since when.
    snapshots_out: BTreeMap<u64, Instant>,
    /// Requests that arrived while no leader was known, retried once one is (until
    /// their callers give up).
    leaderless: Vec<Input>,
    /// Builds snapshots off this thread.
    snapshotter: Snapshotter,
    /// A membership change applied: snapshot now, so a new member that needs a
    /// snapshot gets one whose conf state includes it (raft-rs refuses others).
    snapshot_due: bool,
    clock: Clock,
}

/// A storage step that failed, with its cause.
fn storage_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> NodeError {
    move |e| NodeError::Storage { what, source: Arc::new(e) }
}

impl Driver<SledStore> {
    pub fn open(
        mut config: NodeConfig,
        inputs: (mpsc::Sender<Input>, mpsc::Receiver<Input>),
        peers: (mpsc::Sender<Message>, mpsc::Receiver<Message>),
    ) -> Result<(Self, NodeHandle), NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(storage_err("creating the data directory"))?;
        let mut store =
            SledStore::open(&config.data_dir.join("raft")).map_err(storage_err("opening the raft store"))?;
        // The seed's data is in the store from now on: do not keep a second copy.
        if let Some(seed) = config.restore.take() {
            restore(&mut store, &seed, &config)?;
        } else if store.is_empty() {
            let voters: Vec<u64> = if config.join { vec![] } else { config.peers.keys().copied().collect() };
            store.initialize(&voters).map_err(storage_err("initializing the raft store"))?;
        }
        if let Some(uuid) = &config.cluster_uuid {
            match store.cluster_uuid() {
                Some(held) if held == uuid => {}
                Some(held) => {
                    return Err(NodeError::RestoreRefused(format!(
                        "the data directory {} belongs to cluster {held}, not {uuid} (--cluster-uuid)",
                        config.data_dir.display()
                    )))
                }
                None if store.is_empty() => {
                    store.set_cluster_uuid(uuid).map_err(storage_err("recording the cluster uuid"))?;
                }
                None => {
                    return Err(NodeError::RestoreRefused(format!(
                        "the data directory {} holds raft state of a cluster without an identity, not {uuid} \
                         (--cluster-uuid); join with an empty directory",
                        config.data_dir.display()
                    )))
                }
            }
        }
        let members = Members::load(&config.data_dir, &config.peers)
            .map_err(storage_err("loading the members file"))?;
        let mut boot = [0u8; 8];
        ferry_net::random::fill(&mut boot).map_err(storage_err("drawing a random boot id"))?;
        let cluster_uuid = store.cluster_uuid().map(str::to_owned);
        let parts = Parts {
            cluster_uuid,
            store,
            members,
            boot: u64::from_be_bytes(boot),
            clock: Arc::new(Instant::now),
            snapshot_thread: true,
        };
        Driver::assemble(config, parts, inputs, peers)
    }
}

impl<S: LogStore> Driver<S> {
    /// A driver over an initialized store.
    pub fn assemble(
        config: NodeConfig,
        parts: Parts<S>,
        (inputs, rx): (mpsc::Sender<Input>, mpsc::Receiver<Input>),
        (peers, peer_rx): (mpsc::Sender<Message>, mpsc::Receiver<Message>),
    ) -> Result<(Self, NodeHandle), NodeError> {
        let Parts { store, members, boot, clock, snapshot_thread, cluster_uuid } = parts;
        // Rebuild the state machine from the newest snapshot; raft re-delivers the
        // committed entries after it.
        let snapshot = store.snapshot(0, config.id).unwrap_or_default();
        let snapshot_index = snapshot.get_metadata().index;
        let state = if snapshot.data.is_empty() {
            State::default()
        } else {
            State::from_snapshot_bytes(&snapshot.data).map_err(storage_err("decoding the stored snapshot"))?
        };
        let snapshotter = if snapshot_thread {
            Snapshotter::start(config.id, &snapshot.data, store.snapshot_dir())
                .map_err(storage_err("starting the snapshot worker"))?
        } else {
            Snapshotter::inline(&snapshot.data)
        };
        let raft_config = Config {
            id: config.id,
            election_tick: config.election_ticks.max(2),
            heartbeat_tick: config.heartbeat_ticks.max(1),
            applied: snapshot_index,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        raft_config.validate().map_err(storage_err("checking the raft configuration"))?;
        let raw =
            RawNode::new(&raft_config, store, &super::log::logger()).map_err(storage_err("starting raft"))?;
        let (status_tx, status_rx) = watch::channel(Status { id: config.id, ..Status::default() });
        let state = Arc::new(RwLock::new(state));
        let handle = NodeHandle {
            inputs,
            peers,
            status: status_rx,
            state: Arc::clone(&state),
            members: members.clone(),
            cluster_uuid: cluster_uuid.map(Arc::from),
            announced: Arc::default(),
        };
        let driver = Driver {
            raw,
            rx,
            peer_rx,
            state,
            status: status_tx,
            members,
            config,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            conf_changes: BTreeMap::new(),
            next_ctx: 1,
            boot,
            applied: snapshot_index,
            snapshot_index,
            snapshots_taken: 0,
            proposals: 0,
            reproposals: 0,
            last_leader: raft::INVALID_ID,
            snapshots_out: BTreeMap::new(),
            snapshot_due: false,
            snapshotter,
            leaderless: Vec::new(),
            clock,
        };
        Ok((driver, handle))
    }

    /// Drives raft until `cancel` fires (`Ok`) or storage fails (the error, also in the
    /// published status as its `fault`).
    pub async fn run(
        mut self,
        transport: Arc<dyn RaftNetwork>,
        cancel: CancellationToken,
    ) -> Result<(), NodeError> {
        let mut fault = None;
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => self.tick(),
                // Peers first, then a batch of clients too: neither queue starves.
                msg = self.peer_rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.step(msg);
                    self.take_queued();
                }
                input = self.rx.recv() => {
                    let Some(input) = input else { break };
                    self.handle(input);
                    self.take_queued();
                }
                built = self.snapshotter.built.recv() => {
                    let Some(built) = built else { break };
                    if let Err(e) = self.store_snapshot(built) {
                        tracing::error!(error = %ferry_net::Chain(&e), "raft storage failure; stopping this node");
                        fault = Some(e);
                        break;
                    }
                }
            }
            self.repropose_on_leader_change();
            if let Err(e) = self.on_ready(transport.as_ref()) {
                // Storage failed: we cannot persist, so we must not vote or ack.
                tracing::error!(error = %ferry_net::Chain(&e), "raft storage failure; stopping this node");
                fault = Some(e);
                break;
            }
        }
        let _ = self.raw.mut_store().flush();
        if let Some(e) = &fault {
            let reason = ferry_net::Chain(e).to_string();
            self.status.send_modify(|s| {
                s.leader = 0;
                s.fault = Some(reason);
            });
        }
        for (_, write) in std::mem::take(&mut self.writes) {
            let _ = write.reply.send(Err(NodeError::Stopped));
        }
        fault.map_or(Ok(()), Err)
    }

    /// One raft tick, and the timers that ride on it.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.forget_abandoned();
        self.reissue_reads();
        self.retry_leaderless();
        self.repropose_stale((self.clock)());
        self.retry_stuck_snapshots();
    }

    /// Reports snapshots without an answer after `SNAPSHOT_STUCK` as failed.
    fn retry_stuck_snapshots(&mut self) {
        let now = (self.clock)();
        if self.raw.raft.state != raft::StateRole::Leader {
            self.snapshots_out.clear();
            return;
        }
        let sending: BTreeMap<u64, ()> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
            .map(|(id, _)| (*id, ()))
            .collect();
        self.snapshots_out.retain(|id, _| sending.contains_key(id));
        let mut stuck = Vec::new();
        for id in sending.keys() {
            let since = *self.snapshots_out.entry(*id).or_insert(now);
            if now.saturating_duration_since(since) >= SNAPSHOT_STUCK {
                stuck.push(*id);
            }
        }
        for id in stuck {
            tracing::info!(follower = id, "no answer to a snapshot; sending it again");
            self.snapshots_out.remove(&id);
            self.raw.report_snapshot(id, raft::SnapshotStatus::Failure);
        }
    }

    /// A context no other proposal or read of any voter, in any run, carries.
    fn ctx(&mut self) -> Vec<u8> {
        self.next_ctx += 1;
        [self.config.id, self.boot, self.next_ctx].iter().flat_map(|n| n.to_be_bytes()).collect()
    }

    /// Takes up to a batch of queued peer messages, then up to a batch of queued client
    /// requests, without waiting.
    fn take_queued(&mut self) {
        for _ in 0..INPUT_BATCH {
            let Ok(msg) = self.peer_rx.try_recv() else { break };
            self.step(msg);
        }
        for _ in 0..INPUT_BATCH {
            let Ok(input) = self.rx.try_recv() else { break };
            self.handle(input);
        }
    }

    pub fn step(&mut self, msg: Message) {
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(error = %e, "raft step");
        }
    }

    pub fn handle(&mut self, input: Input) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            // An election is in progress: hold the request (bounded) rather than fail
            // it; the caller's timeout still applies.
            if self.leaderless.len() < LEADERLESS_QUEUE {
                self.leaderless.push(input);
            } else {
                reject_no_leader(input);
            }
            return;
        }
        match input {
            Input::Propose { request, reply } => {
                let in_use = self.state.read().unwrap_or_else(PoisonError::into_inner).command_set();
                let needs = request.command.needs();
                if needs > in_use && !matches!(request.command, Command::RaiseCommandSet { .. }) {
                    let _ = reply.send(Err(NodeError::Rejected(format!(
                        "{} needs command set {needs}; the cluster is at {in_use} until every voter \
                         runs a release that applies it (finish the upgrade)",
                        request.command.action()
                    ))));
                    return;
                }
                let data = match encode_entry(&request, in_use) {
                    Ok(data) => data,
                    Err(e) => {
                        let _ = reply.send(Err(NodeError::Rejected(e.to_string())));
                        return;
                    }
                };
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(NodeError::NoLeader));
                    return;
                }
                let ctx = self.ctx();
                let keep = (!request.request_id.is_empty()).then(|| data.clone());
                match self.raw.propose(ctx.clone(), data) {
                    Ok(()) => {
                        self.proposals += 1;
                        let write = PendingWrite {
                            reply,
                            data: keep,
                            leader: self.raw.raft.leader_id,
                            sent: (self.clock)(),
                        };
                        self.writes.insert(ctx, write);
                    }
                    Err(_) if self.leaderless.len() < LEADERLESS_QUEUE => {
                        // A leader transferring its leadership drops proposals: hold it
                        // until the transfer ends, like a request without a leader.
                        self.leaderless.push(Input::Propose { request, reply });
                    }
                    Err(_) => {
                        let _ = reply.send(Err(NodeError::NoLeader));
                    }
                }
            }
            Input::ReadIndex { reply } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(NodeError::NoLeader));
                    return;
                }
                let ctx = self.ctx();
                self.raw.read_index(ctx.clone());
                self.reads.insert(ctx, (reply, (self.clock)()));
            }
            Input::AddVoter { id, addr, reply } => {
                self.conf_change(ConfChangeType::AddNode, id, addr.into_bytes(), reply);
            }
            Input::Image { reply } => {
                let _ = reply.send(self.image());
            }
            Input::RemoveVoter { id, reply } => {
                if !self.raw.raft.prs().conf().voters().contains(id) {
                    let _ = reply.send(Err(NodeError::Rejected(format!("{id} is not a voter"))));
                    return;
                }
                self.conf_change(ConfChangeType::RemoveNode, id, vec![], reply);
            }
        }
    }

    fn conf_change(&mut self, kind: ConfChangeType, id: u64, addr: Vec<u8>, reply: IndexReply) {
        // A follower's proposal is forwarded to the leader by raft-rs; the entry
        // keeps our context, so we answer when it applies here.
        if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(NodeError::NoLeader));
            return;
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        cc.context = addr;
        let ctx = self.ctx();
        match self.raw.propose_conf_change(ctx.clone(), cc) {
            Ok(()) => {
                self.conf_changes.insert(ctx, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(NodeError::Rejected(e.to_string())));
            }
        }
    }

    /// The state now, at the applied index.
    fn image(&self) -> Result<Image, NodeError> {
        let index = self.applied;
        let term =
            self.raw.raft.raft_log.term(index).map_err(storage_err("reading the applied entry's term"))?;
        let mut voters: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        voters.sort_unstable();
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(Image { index, term, voters, state })
    }

    fn retry_leaderless(&mut self) {
        if self.raw.raft.leader_id == raft::INVALID_ID || self.leaderless.is_empty() {
            return;
        }
        for input in std::mem::take(&mut self.leaderless) {
            if !input_abandoned(&input) {
                self.handle(input);
            }
        }
    }

    /// raft-rs drops a ReadIndex silently when it cannot serve it yet (a new leader
    /// before its first commit, a follower whose leader just died): ask again.
    fn reissue_reads(&mut self) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let now = (self.clock)();
        let stale: Vec<Vec<u8>> = self
            .reads
            .iter()
            .filter(|(_, (_, sent))| now.saturating_duration_since(*sent) >= READ_RETRY)
            .map(|(ctx, _)| ctx.clone())
            .collect();
        for ctx in stale {
            self.raw.read_index(ctx.clone());
            if let Some((_, sent)) = self.reads.get_mut(&ctx) {
                *sent = now;
            }
        }
    }

    /// A new leader is known: every write still waiting that went to another one is
    /// proposed to it. A follower forwards proposals to the leader it believes in, and
    /// raft-rs never resends them: one forwarded to a leader that just died, or appended
    /// by a leader that lost its term before committing it, would otherwise wait out the
    /// caller's whole timeout. The copy keeps the context and the request id, so
    /// whichever entry applies first answers, and the others apply as no-ops.
    pub fn repropose_on_leader_change(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader == self.last_leader {
            return;
        }
        self.last_leader = leader;
        if leader != raft::INVALID_ID {
            let now = (self.clock)();
            self.repropose(|w| w.leader != leader, now);
        }
    }

    /// Writes that waited `REPROPOSE_AFTER` under one leader are proposed again.
    fn repropose_stale(&mut self, now: Instant) {
        if self.raw.raft.leader_id != raft::INVALID_ID {
            self.repropose(|w| now.saturating_duration_since(w.sent) >= REPROPOSE_AFTER, now);
        }
    }

    fn repropose(&mut self, due: impl Fn(&PendingWrite) -> bool, now: Instant) {
        let leader = self.raw.raft.leader_id;
        let again: Vec<(Vec<u8>, Vec<u8>)> = self
            .writes
            .iter()
            .filter(|(_, w)| due(w))
            .filter_map(|(ctx, w)| Some((ctx.clone(), w.data.clone()?)))
            .collect();
        for (ctx, data) in again {
            if self.raw.propose(ctx.clone(), data).is_err() {
                // A leader transfer is under way: the next leader change retries.
                return;
            }
            self.reproposals += 1;
            if let Some(w) = self.writes.get_mut(&ctx) {
                w.leader = leader;
                w.sent = now;
            }
        }
    }

    /// Drops waiters whose callers gave up, so pending maps stay bounded.
    fn forget_abandoned(&mut self) {
        self.writes.retain(|_, w| !w.reply.is_closed());
        self.reads.retain(|_, (r, _)| !r.is_closed());
        self.conf_changes.retain(|_, r| !r.is_closed());
    }

    pub fn on_ready(&mut self, transport: &dyn RaftNetwork) -> Result<(), NodeError> {
        self.raw.mut_store().compact_some(COMPACT_PER_TURN).map_err(storage_err("compacting the log"))?;
        if !self.raw.has_ready() {
            self.publish_status();
            return Ok(());
        }
        let mut ready = self.raw.ready();
        transport.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        for rs in ready.take_read_states() {
            if let Some((reply, _)) = self.reads.remove(&rs.request_ctx) {
                let _ = reply.send(Ok(rs.index));
            }
        }
        let mut answers = Vec::new();
        self.apply_committed(ready.take_committed_entries(), &mut answers)?;
        if !ready.entries().is_empty() {
            self.raw.mut_store().append(ready.entries()).map_err(storage_err("appending log entries"))?;
        }
        if let Some(hs) = ready.hs() {
            self.raw.mut_store().set_hard_state(hs).map_err(storage_err("writing the hard state"))?;
        }
        // A Ready that only moves the commit index needs no fsync: the committed entries
        // raft hands out are already persisted (raft-rs bounds them by the persisted
        // index), and a commit index that goes back after a crash is learned again. This
        // saves the second fsync per write on every voter (the Ready that applies it).
        if ready.must_sync() {
            self.raw.mut_store().flush().map_err(storage_err("flushing the raft store"))?;
        }
        answer(answers);
        transport.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.raw.raft.hard_state();
            hs.commit = commit;
            self.raw.mut_store().set_hard_state(&hs).map_err(storage_err("writing the hard state"))?;
        }
        transport.send(light.take_messages());
        let mut answers = Vec::new();
        // These entries are committed and already in our flushed log (a previous
        // Ready appended them): answering needs no second fsync.
        self.apply_committed(light.take_committed_entries(), &mut answers)?;
        answer(answers);
        self.raw.advance_apply();
        self.step_down_if_removed();
        self.maybe_snapshot()?;
        self.publish_status();
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), NodeError> {
        let index = snapshot.get_metadata().index;
        let state = State::from_snapshot_bytes(&snapshot.data)
            .map_err(storage_err("decoding a received snapshot"))?;
        self.snapshotter
            .reset(snapshot.data.to_vec())
            .map_err(storage_err("resetting the snapshot worker"))?;
        self.raw.mut_store().apply_snapshot(snapshot).map_err(storage_err("storing a received snapshot"))?;
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
        self.applied = index;
        self.snapshot_index = index;
        tracing::info!(index, "installed snapshot from the leader");
        Ok(())
    }

    fn apply_committed(&mut self, entries: Vec<Entry>, answers: &mut Vec<Answer>) -> Result<(), NodeError> {
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if !entry.data.is_empty() => self.apply_normal(&entry, answers)?,
                EntryType::EntryNormal => {}
                EntryType::EntryConfChange => self.apply_conf_change(&entry, answers)?,
                EntryType::EntryConfChangeV2 => {
                    // Ferry never proposes joint consensus: a build that does is newer.
                    return Err(NodeError::Incompatible {
                        index: entry.index,
                        what: "a joint-consensus membership change".to_owned(),
                    });
                }
            }
            self.applied = entry.index;
        }
        self.raw.mut_store().set_applied(self.applied).map_err(storage_err("recording the applied index"))?;
        self.snapshotter.flush().map_err(storage_err("feeding the snapshot worker"))?;
        Ok(())
    }

    fn apply_normal(&mut self, entry: &Entry, answers: &mut Vec<Answer>) -> Result<(), NodeError> {
        let request = decode_request(&entry.data).map_err(|e| NodeError::Incompatible {
            index: entry.index,
            what: ferry_net::Chain(&e).to_string(),
        })?;
        let outcome =
            apply(&mut self.state.write().unwrap_or_else(PoisonError::into_inner), entry.index, &request);
        self.snapshotter.applied(entry.index, request);
        if let Some(write) = self.writes.remove(&entry.context[..]) {
            answers.push(Answer::Write(write.reply, Ok((entry.index, outcome))));
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry, answers: &mut Vec<Answer>) -> Result<(), NodeError> {
        let cc = raft_codec::decode::<ConfChange>(&entry.data)
            .map_err(storage_err("decoding a membership change"))?;
        let cs = self.raw.apply_conf_change(&cc).map_err(storage_err("applying a membership change"))?;
        self.raw.mut_store().set_conf_state(&cs).map_err(storage_err("writing the conf state"))?;
        let addr = match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                Some(String::from_utf8_lossy(&cc.context).into_owned()).filter(|a| !a.is_empty())
            }
            ConfChangeType::RemoveNode => None,
        };
        self.snapshot_due = true;
        if addr.is_some() || cc.get_change_type() == ConfChangeType::RemoveNode {
            let versioned = self.state.read().unwrap_or_else(PoisonError::into_inner).command_set() > 1;
            self.members
                .update(cc.node_id, addr, versioned)
                .map_err(storage_err("updating the members file"))?;
        }
        tracing::info!(index = entry.index, node = cc.node_id, change = ?cc.get_change_type(), voters = ?cs.voters, "membership changed");
        if let Some(reply) = self.conf_changes.remove(entry.context.as_ref() as &[u8]) {
            answers.push(Answer::Index(reply, Ok(entry.index)));
        }
        Ok(())
    }

    /// Asks the worker for a snapshot when one is due; [`Driver::store_snapshot`] stores
    /// it when it comes back, while this thread goes on.
    /// raft-rs keeps a leader that removed itself leading a group that no longer tracks
    /// it, and panics on the next append response (raft-rs's own TODO: "step down and
    /// ask the follower with the largest Match to TimeoutNow"). That is done here: the
    /// best caught-up voter is told to campaign at once, and this node steps down.
    /// Runs after a Ready is fully handled: raft-rs refuses a follower with messages
    /// queued during its Ready.
    fn step_down_if_removed(&mut self) {
        let me = self.config.id;
        let voters = self.raw.raft.prs().conf().voters().ids();
        if self.raw.raft.state != raft::StateRole::Leader || voters.contains(me) {
            return;
        }
        let successor = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| voters.contains(**id))
            .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        if let Some(to) = successor {
            self.raw.raft.send_timeout_now(to);
        }
        let term = self.raw.raft.term;
        self.raw.raft.become_follower(term, raft::INVALID_ID);
        tracing::info!(successor = ?successor, "removed from the voters while leading: stepped down");
    }

    fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        let due = self.snapshot_due || self.applied >= self.snapshot_index + self.config.snapshot_every;
        if !due || self.applied <= self.snapshot_index {
            return Ok(());
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        if self.snapshotter.build(self.applied, conf).map_err(storage_err("asking for a snapshot"))? {
            self.snapshot_due = false;
        }
        Ok(())
    }

    /// Stores the snapshots the worker finished, without waiting for one.
    #[cfg(test)]
    pub fn store_finished_snapshots(&mut self) -> Result<(), NodeError> {
        while let Ok(built) = self.snapshotter.built.try_recv() {
            self.store_snapshot(built)?;
        }
        Ok(())
    }

    /// The raft node, for the simulation's view of roles.
    #[cfg(test)]
    pub fn raw(&self) -> &RawNode<S> {
        &self.raw
    }

    /// The raft node, for the simulation's control of its election timer.
    #[cfg(test)]
    pub fn raw_mut(&mut self) -> &mut RawNode<S> {
        &mut self.raw
    }

    /// Stores a snapshot the worker built, and compacts the log up to it.
    pub fn store_snapshot(&mut self, built: Built) -> Result<(), NodeError> {
        let Some(Built { index, conf, data, .. }) = self.snapshotter.finished(built) else { return Ok(()) };
        if index <= self.snapshot_index {
            // A newer snapshot was installed meanwhile.
            return Ok(());
        }
        let data = data.map_err(storage_err("taking a snapshot"))?;
        self.raw.mut_store().create_snapshot(index, conf, data).map_err(storage_err("storing a snapshot"))?;
        self.raw.mut_store().flush().map_err(storage_err("flushing the raft store"))?;
        self.snapshot_index = index;
        self.snapshots_taken += 1;
        tracing::info!(index, "snapshot taken, log compacted");
        self.publish_status();
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        let status = Status {
            id: raft.id,
            leader: raft.leader_id,
            term: raft.term,
            role: format!("{:?}", raft.state).to_lowercase(),
            commit: raft.raft_log.committed,
            applied: self.applied,
            voters,
            learners,
            snapshot_index: self.snapshot_index,
            snapshots_taken: self.snapshots_taken,
            proposals: self.proposals,
            reproposals: self.reproposals,
            fault: None,
        };
        self.status.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
    }
}

/// Seeds an empty store from a backup, or checks that the store already holds the
/// restored cluster (a voter restarted with `--restore` still on its command line).
fn restore(store: &mut SledStore, seed: &RestoreSeed, config: &NodeConfig) -> Result<(), NodeError> {
    match store.cluster_uuid() {
        Some(uuid) if uuid == seed.cluster_uuid => {
            tracing::info!(cluster_uuid = uuid, "the data directory already holds the restored cluster");
            return Ok(());
        }
        Some(other) => {
            return Err(NodeError::RestoreRefused(format!(
                "the data directory {} holds restored cluster {other}, not {} (this backup with these --peers); \
                 restore into an empty directory",
                config.data_dir.display(),
                seed.cluster_uuid
            )))
        }
        None if !store.is_empty() => {
            return Err(NodeError::RestoreRefused(format!(
                "the data directory {} already holds raft state of another cluster; restore into an empty directory",
                config.data_dir.display()
            )))
        }
        None => {}
    }
    // The members file first: a crash before the store is seeded leaves an empty store,
    // and the next start seeds it again.
    Members::save(&config.data_dir, &config.peers).map_err(storage_err("writing the members file"))?;
    let voters: Vec<u64> = config.peers.keys().copied().collect();
    store
        .restore(seed.index, seed.term, &voters, &seed.data, &seed.cluster_uuid)
        .map_err(storage_err("seeding the raft store from the backup"))?;
    tracing::info!(
        index = seed.index,
        term = seed.term,
        ?voters,
        cluster_uuid = %seed.cluster_uuid,
        "restored from a backup: a new cluster"
    );
    Ok(())
}

/// Requests held while no leader is known.
const LEADERLESS_QUEUE: usize = 1024;

fn reject_no_leader(input: Input) {
    match input {
        Input::Propose { reply, .. } => {
            let _ = reply.send(Err(NodeError::NoLeader));
        }
        Input::ReadIndex { reply } | Input::AddVoter { reply, .. } | Input::RemoveVoter { reply, .. } => {
            let _ = reply.send(Err(NodeError::NoLeader));
        }
        Input::Image { reply } => {
            let _ = reply.send(Err(NodeError::NoLeader));
        }
    }
}

fn input_abandoned(input: &Input) -> bool {
    match input {
        Input::Propose { reply, .. } => reply.is_closed(),
        Input::ReadIndex { reply } | Input::AddVoter { reply, .. } | Input::RemoveVoter { reply, .. } => {
            reply.is_closed()
        }
        Input::Image { reply } => reply.is_closed(),
    }
}

/// A client answer held until the Ready that produced it is flushed.
enum Answer {
    Write(WriteReply, Result<(u64, Outcome), NodeError>),
    Index(IndexReply, Result<u64, NodeError>),
}

fn answer(answers: Vec<Answer>) {
    for a in answers {
        match a {
            Answer::Write(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Index(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }
}
