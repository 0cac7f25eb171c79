//! Deterministic simulation of the raft node: the real [`Driver`] (raft-rs, the
//! pending-request bookkeeping, re-proposals, snapshots) and the real state machine, on
//! a virtual clock, over an in-memory network that delays, reorders, duplicates, loses
//! and partitions, with crash-restarts that lose unflushed writes, leader transfers and
//! membership changes, all drawn from one seed. Clients record every call and answer;
//! each seed's history is checked for linearizability, for acknowledged writes that
//! went missing, and for replicas that disagree.
//!
//! A failing seed replays exactly:
//! `FERRY_SIM_SEED=<n> cargo test -p ferry-control-plane --lib sim::replay -- --nocapture`
//! prints its trace. `FERRY_SIM_SEEDS=a..b` runs another range of seeds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod store;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use raft::StateRole;
use tokio::sync::{mpsc, oneshot};

use super::driver::{Clock, Driver, Parts};
use super::{Input, Members, NodeConfig, NodeError, NodeHandle, RaftNetwork};
use crate::linearizable::{self, Answer, Call, Op, Verdict};
use crate::state::{Command, Outcome, Request, State, COMMAND_SET};
use store::{Disk, MemStore};

/// SplitMix64: small, fast, and the same on every machine.
pub struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5EED_F00D_CAFE_D00D)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True with probability `percent`/100.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Test-only ways to break the node, to show the simulation catches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    None,
    /// The store's flush does nothing: votes, entries and acknowledgements are sent
    /// before the disk has them (a background flush writes them later).
    AckBeforeFlush,
    /// Reads answer from the local state without a ReadIndex round.
    StaleReads,
}

/// The simulated world's knobs.
#[derive(Debug, Clone, Copy)]
struct World {
    /// Ids 1..=nodes exist; 1..=3 are the founding voters, the rest may be added.
    nodes: u64,
    clients: usize,
    /// Faults and new client operations stop here; then everything heals.
    chaos_ms: u64,
    /// The run ends here.
    end_ms: u64,
    broken: Broken,
}

const TICK_MS: u64 = 100;
const ELECTION_TICKS: usize = 5;
/// A client gives up on an operation after this long (its answer is then unknown).
const CLIENT_TIMEOUT_MS: u64 = 5_000;
/// Registers the clients share: edges, whose capacity is the value.
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const CHECK_BUDGET: u64 = 2_000_000;

/// Messages a node sent during one step, collected for the simulated network.
#[derive(Default)]
struct Outbox(Mutex<Vec<Message>>);

impl RaftNetwork for Outbox {
    fn send(&self, msgs: Vec<Message>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend(msgs);
    }
}

struct Node {
    driver: Option<Driver<MemStore>>,
    handle: Option<NodeHandle>,
    disk: Arc<Mutex<Disk>>,
    dir: tempfile::TempDir,
    /// (term, role, leader) after the last step: a change re-draws the election timer.
    seen: (u64, StateRole, u64),
    /// Started at least once (a founding voter, or added by the cluster).
    started: bool,
}

enum Event {
    Deliver(Box<Message>),
    Tick(u64),
    Restart(u64),
    Cut(u64),
    Heal(u64),
    Fault,
    ClientStart(usize),
    BackgroundFlush,
    /// The leader's cluster-version loop: raise the command set, once a second, until
    /// the leader has applied the raise.
    RaiseCommandSet,
}

enum Pending {
    Idle,
    Write { key: &'static str, value: u64, rx: oneshot::Receiver<Result<(u64, Outcome), NodeError>> },
    ReadIndex { key: &'static str, node: u64, rx: oneshot::Receiver<Result<u64, NodeError>> },
    ReadWait { key: &'static str, node: u64, index: u64 },
}

struct Client {
    pending: Pending,
    invoked: u64,
    writes: u64,
}

/// A conf change a client of the cluster (an operator) asked for.
struct Membership {
    rx: oneshot::Receiver<Result<u64, NodeError>>,
}

/// What one seed found.
#[derive(Debug)]
pub struct SeedReport {
    pub ops: usize,
    pub acked: usize,
    pub faults: usize,
    pub trace_hash: u64,
    pub violation: Option<String>,
}

struct Sim {
    world: World,
    rng: Rng,
    now_us: Arc<AtomicU64>,
    base: Instant,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    seq: u64,
    nodes: BTreeMap<u64, Node>,
    cut: BTreeSet<u64>,
    clients: Vec<Client>,
    history: Vec<Op>,
    acked: Vec<String>,
    membership: Option<Membership>,
    outbox: Arc<Outbox>,
    faults: usize,
    trace: Option<Vec<String>>,
    trace_hash: u64,
    violation: Option<String>,
}

impl Sim {
    fn new(seed: u64, world: World, trace: bool) -> Sim {
        let mut sim = Sim {
            world,
            rng: Rng::new(seed),
            now_us: Arc::new(AtomicU64::new(0)),
            base: Instant::now(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            nodes: BTreeMap::new(),
            cut: BTreeSet::new(),
            clients: (0..world.clients)
                .map(|_| Client { pending: Pending::Idle, invoked: 0, writes: 0 })
                .collect(),
            history: Vec::new(),
            acked: Vec::new(),
            membership: None,
            outbox: Arc::new(Outbox::default()),
            faults: 0,
            trace: trace.then(Vec::new),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            violation: None,
        };
        for id in 1..=world.nodes {
            let node = Node {
                driver: None,
                handle: None,
                disk: Arc::new(Mutex::new(Disk::default())),
                dir: tempfile::tempdir().unwrap(),
                seen: (0, StateRole::Follower, 0),
                started: false,
            };
            sim.nodes.insert(id, node);
        }
        for id in 1..=3 {
            sim.start_node(id, false);
        }
        for id in 1..=3 {
            let phase = sim.rng.below(TICK_MS * 1000);
            sim.at(phase, Event::Tick(id));
        }
        for c in 0..world.clients {
            let start = sim.rng.between(500, 1_500) * 1000;
            sim.at(start, Event::ClientStart(c));
        }
        let first_fault = sim.rng.between(1_000, 2_000) * 1000;
        sim.at(first_fault, Event::Fault);
        if world.broken == Broken::AckBeforeFlush {
            sim.at(200_000, Event::BackgroundFlush);
        }
        // The cluster moves to this build's command set at some point of the chaos, so
        // both entry formats and both snapshot versions meet crashes and partitions.
        let raise = sim.rng.between(1_000, 15_000) * 1000;
        sim.at(raise, Event::RaiseCommandSet);
        sim
    }

    fn now_ms(&self) -> u64 {
        self.now_us.load(Ordering::Relaxed) / 1000
    }

    fn at(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at_us, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn after_ms(&mut self, ms: u64, event: Event) {
        let at = self.now_us.load(Ordering::Relaxed) + ms * 1000;
        self.at(at, event);
    }

    fn log(&mut self, what: impl FnOnce() -> String) {
        let line = what();
        for b in line.bytes() {
            self.trace_hash = (self.trace_hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{:>8.3}s {line}", self.now_us.load(Ordering::Relaxed) as f64 / 1e6));
        }
    }

    fn fail(&mut self, why: String) {
        self.log(|| format!("VIOLATION {why}"));
        if self.violation.is_none() {
            self.violation = Some(why);
        }
    }

    fn peers(&self) -> BTreeMap<u64, String> {
        (1..=3).map(|id| (id, format!("sim:{id}"))).collect()
    }

    fn start_node(&mut self, id: u64, join: bool) {
        let lazy = self.world.broken == Broken::AckBeforeFlush;
        let node = self.nodes.get(&id).unwrap();
        let mut store = MemStore::open(Arc::clone(&node.disk), lazy);
        if !node.started && !join {
            store.initialize(&[1, 2, 3]);
        }
        let mut config = NodeConfig::new(id, self.peers(), node.dir.path().to_owned());
        config.tick = Duration::from_millis(TICK_MS);
        config.election_ticks = ELECTION_TICKS;
        config.snapshot_every = 20;
        config.join = join;
        let members = Members::load(node.dir.path(), &config.peers).unwrap();
        let now = Arc::clone(&self.now_us);
        let base = self.base;
        let clock: Clock = Arc::new(move || base + Duration::from_micros(now.load(Ordering::Relaxed)));
        let boot = self.rng.next();
        let parts = Parts { store, members, boot, clock, snapshot_thread: false, cluster_uuid: None };
        let (driver, handle) =
            Driver::assemble(config, parts, mpsc::channel(16), mpsc::channel(16)).expect("a node opens");
        let node = self.nodes.get_mut(&id).unwrap();
        node.driver = Some(driver);
        node.handle = Some(handle);
        node.started = true;
        node.seen = (u64::MAX, StateRole::Follower, u64::MAX);
        self.log(|| format!("node {id} starts{}", if join { " (joining)" } else { "" }));
        self.after_step(id);
    }

    /// Runs `f` on node `id`'s driver if it is up, then handles what it produced.
    fn on_node(&mut self, id: u64, f: impl FnOnce(&mut Driver<MemStore>)) {
        let Some(driver) = self.nodes.get_mut(&id).and_then(|n| n.driver.as_mut()) else { return };
        f(driver);
        self.after_step(id);
    }

    /// The driver loop's tail after any input: re-propose on a leader change, handle the
    /// Ready, store finished snapshots; then route the messages and re-draw the
    /// election timer if raft reset it.
    fn after_step(&mut self, id: u64) {
        let outbox = Arc::clone(&self.outbox);
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some(driver) = node.driver.as_mut() else { return };
        driver.repropose_on_leader_change();
        let result = driver.on_ready(outbox.as_ref()).and_then(|()| driver.store_finished_snapshots());
        let raft = &driver.raw_mut().raft;
        let seen = (raft.term, raft.state, raft.leader_id);
        let changed = seen != node.seen;
        node.seen = seen;
        if changed {
            let timeout =
                ELECTION_TICKS + usize::try_from(self.rng.below(ELECTION_TICKS as u64)).unwrap_or(0);
            let node = self.nodes.get_mut(&id).unwrap();
            node.driver.as_mut().unwrap().raw_mut().raft.set_randomized_election_timeout(timeout);
            self.log(|| format!("node {id}: term {} {:?} leader {}", seen.0, seen.1, seen.2));
        }
        if let Err(e) = result {
            // The node stops, as a voter's process does (its disk stays as it is).
            self.fail(format!("node {id} stopped: {}", ferry_net::Chain(&e)));
            let node = self.nodes.get_mut(&id).unwrap();
            node.driver = None;
            node.handle = None;
        }
        let msgs = std::mem::take(&mut *self.outbox.0.lock().unwrap_or_else(PoisonError::into_inner));
        for msg in msgs {
            self.send(msg);
        }
    }

    fn send(&mut self, msg: Message) {
        if self.cut.contains(&msg.from) || self.cut.contains(&msg.to) || self.rng.percent(1) {
            return;
        }
        let copies = if self.rng.percent(1) { 2 } else { 1 };
        for _ in 0..copies {
            let delay_us = if self.rng.percent(2) {
                self.rng.between(50_000, 400_000)
            } else {
                self.rng.between(200, 10_000)
            };
            let at = self.now_us.load(Ordering::Relaxed) + delay_us;
            self.at(at, Event::Deliver(Box::new(msg.clone())));
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.iter().find_map(|(id, n)| {
            let raft = &n.driver.as_ref()?.raw().raft;
            (raft.state == StateRole::Leader).then_some(*id)
        })
    }

    fn up(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.driver.is_some()).map(|(id, _)| *id).collect()
    }

    fn voters(&self) -> BTreeSet<u64> {
        let Some(leader) = self.leader() else { return BTreeSet::new() };
        let raft = &self.nodes[&leader].driver.as_ref().unwrap().raw().raft;
        raft.prs().conf().voters().ids().iter().collect()
    }

    fn run(&mut self) {
        while let Some(&Reverse((at, seq))) = self.queue.peek() {
            if at > self.world.end_ms * 1000 {
                break;
            }
            self.queue.pop();
            self.now_us.store(at, Ordering::Relaxed);
            let Some(event) = self.events.remove(&seq) else { continue };
            self.handle(event);
            self.poll_clients();
        }
    }

    fn handle(&mut self, event: Event) {
        let chaos = self.now_ms() < self.world.chaos_ms;
        match event {
            Event::Deliver(msg) => {
                let to = msg.to;
                if self.trace.is_some() && std::env::var_os("FERRY_SIM_MESSAGES").is_some() {
                    self.log(|| {
                        format!(
                            "{:?} {}->{} term {} log {}/{} commit {} entries {} reject {}",
                            msg.get_msg_type(),
                            msg.from,
                            msg.to,
                            msg.term,
                            msg.log_term,
                            msg.index,
                            msg.commit,
                            msg.entries.len(),
                            msg.reject
                        )
                    });
                }
                if !self.cut.contains(&msg.from) && !self.cut.contains(&to) {
                    self.on_node(to, |d| d.step(*msg));
                }
            }
            Event::Tick(id) => {
                self.on_node(id, Driver::tick);
                self.after_ms(TICK_MS, Event::Tick(id));
            }
            Event::Restart(id) => {
                if self.nodes[&id].driver.is_none() {
                    self.start_node(id, false);
                }
            }
            Event::Cut(id) => {
                self.log(|| format!("partition: node {id} cut off"));
                self.cut.insert(id);
            }
            Event::Heal(id) => {
                self.log(|| format!("partition: node {id} back"));
                self.cut.remove(&id);
            }
            Event::Fault if chaos => {
                self.fault();
                let next = self.rng.between(500, 2_500);
                self.after_ms(next, Event::Fault);
            }
            Event::Fault => self.heal_all(),
            Event::ClientStart(c) if chaos => self.start_op(c),
            Event::ClientStart(_) => {}
            Event::BackgroundFlush => {
                for node in self.nodes.values() {
                    node.disk.lock().unwrap_or_else(PoisonError::into_inner).flush();
                }
                self.after_ms(200, Event::BackgroundFlush);
            }
            Event::RaiseCommandSet => {
                let Some(leader) = self.leader() else {
                    self.after_ms(1_000, Event::RaiseCommandSet);
                    return;
                };
                let in_use = self.nodes[&leader].handle.as_ref().map_or(1, |h| h.read(State::command_set));
                if in_use >= COMMAND_SET {
                    return;
                }
                self.log(|| format!("node {leader}: raise the command set to {COMMAND_SET}"));
                let command = Command::RaiseCommandSet { to: COMMAND_SET };
                let request =
                    Request::internal(format!("command-set-{COMMAND_SET}"), "sim", self.now_ms(), command);
                // The answer is not awaited: the next turn looks at the leader's state.
                let (reply, _) = oneshot::channel();
                self.on_node(leader, |d| d.handle(Input::Propose { request: Box::new(request), reply }));
                self.after_ms(1_000, Event::RaiseCommandSet);
            }
        }
    }

    fn crash(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if node.driver.is_none() {
            return;
        }
        node.driver = None;
        node.handle = None;
        node.disk.lock().unwrap_or_else(PoisonError::into_inner).crash(&mut self.rng);
        self.log(|| format!("node {id} crashes"));
    }

    fn heal_all(&mut self) {
        self.log(|| "chaos ends: heal everything".to_owned());
        let cut: Vec<u64> = self.cut.iter().copied().collect();
        for id in cut {
            self.handle(Event::Heal(id));
        }
        let down: Vec<u64> =
            self.nodes.iter().filter(|(_, n)| n.started && n.driver.is_none()).map(|(id, _)| *id).collect();
        for id in down {
            self.start_node(id, false);
        }
    }

    fn fault(&mut self) {
        self.faults += 1;
        let up = self.up();
        if up.is_empty() {
            return;
        }
        let leader = self.leader();
        // The leader is the interesting victim; anyone else half the time.
        let victim = match leader {
            Some(l) if self.rng.percent(50) => l,
            _ => up[usize::try_from(self.rng.below(up.len() as u64)).unwrap_or(0)],
        };
        let down = self.nodes.values().filter(|n| n.started && n.driver.is_none()).count();
        match self.rng.below(100) {
            0..=34 if down < 2 => {
                self.crash(victim);
                let back = self.rng.between(200, 2_000);
                self.after_ms(back, Event::Restart(victim));
            }
            0..=64 => {
                self.handle(Event::Cut(victim));
                let back = self.rng.between(300, 3_000);
                self.after_ms(back, Event::Heal(victim));
            }
            65..=79 => {
                let (Some(leader), Some(&to)) = (leader, self.voters().iter().find(|v| Some(**v) != leader))
                else {
                    return;
                };
                self.log(|| format!("leader {leader} transfers to {to}"));
                self.on_node(leader, |d| d.raw_mut().transfer_leader(to));
            }
            _ => self.change_membership(),
        }
    }

    /// Adds a node that is not a voter, or removes a voter (never below 3), through a
    /// random running node, one change at a time.
    fn change_membership(&mut self) {
        if self.membership.as_mut().is_some_and(|m| m.rx.try_recv().is_err()) {
            return;
        }
        self.membership = None;
        let voters = self.voters();
        let up = self.up();
        let Some(&via) = up.get(usize::try_from(self.rng.below(up.len() as u64)).unwrap_or(0)) else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        let outsiders: Vec<u64> = (1..=self.world.nodes).filter(|id| !voters.contains(id)).collect();
        if voters.len() > 3 && self.rng.percent(50) || outsiders.is_empty() {
            if voters.len() <= 3 {
                return;
            }
            let gone = *voters
                .iter()
                .nth(usize::try_from(self.rng.below(voters.len() as u64)).unwrap_or(0))
                .unwrap();
            self.log(|| format!("remove voter {gone} via node {via}"));
            self.on_node(via, |d| d.handle(Input::RemoveVoter { id: gone, reply: tx }));
        } else {
            let new = outsiders[usize::try_from(self.rng.below(outsiders.len() as u64)).unwrap_or(0)];
            if self.nodes[&new].driver.is_none() {
                let started = self.nodes[&new].started;
                self.start_node(new, !started);
                let phase = self.rng.below(TICK_MS * 1000);
                let now = self.now_us.load(Ordering::Relaxed);
                if !started {
                    self.at(now + phase, Event::Tick(new));
                }
            }
            self.log(|| format!("add voter {new} via node {via}"));
            self.on_node(via, |d| {
                d.handle(Input::AddVoter { id: new, addr: format!("sim:{new}"), reply: tx })
            });
        }
        self.membership = Some(Membership { rx });
    }

    fn start_op(&mut self, c: usize) {
        let up = self.up();
        let pick = |rng: &mut Rng, n: usize| usize::try_from(rng.below(n as u64)).unwrap_or(0);
        let Some(&node) = up.get(pick(&mut self.rng, up.len())) else {
            self.after_ms(50, Event::ClientStart(c));
            return;
        };
        let key = KEYS[pick(&mut self.rng, KEYS.len())];
        let invoked = self.now_ms();
        let client = &mut self.clients[c];
        client.invoked = invoked;
        if self.rng.percent(50) {
            client.writes += 1;
            let value = c as u64 * 100_000 + client.writes;
            let request_id = format!("c{c}-w{}", client.writes);
            let (tx, rx) = oneshot::channel();
            client.pending = Pending::Write { key, value, rx };
            let command = Command::RegisterEdge {
                id: key.to_owned(),
                region: "eu".into(),
                quic_addr: "127.0.0.1:1".into(),
                http_addr: "127.0.0.1:2".into(),
                version: "sim".into(),
                capacity: u32::try_from(value).unwrap_or(u32::MAX),
            };
            let request = Request::internal(request_id.clone(), "sim", invoked, command);
            self.log(|| format!("client {c}: write {key}={value} ({request_id}) via node {node}"));
            self.on_node(node, |d| d.handle(Input::Propose { request: Box::new(request), reply: tx }));
        } else if self.world.broken == Broken::StaleReads {
            let value = self.read_local(node, key);
            self.log(|| format!("client {c}: stale read {key} via node {node} = {value:?}"));
            self.history.push(Op {
                key: key.to_owned(),
                client: c,
                call: Call::Read,
                answer: Answer::Read(value),
                invoked: Duration::from_millis(invoked),
                returned: Duration::from_millis(invoked),
            });
            let pause = self.rng.between(10, 100);
            self.after_ms(pause, Event::ClientStart(c));
        } else {
            let (tx, rx) = oneshot::channel();
            self.clients[c].pending = Pending::ReadIndex { key, node, rx };
            self.log(|| format!("client {c}: read {key} via node {node}"));
            self.on_node(node, |d| d.handle(Input::ReadIndex { reply: tx }));
        }
    }

    fn read_local(&self, node: u64, key: &str) -> Option<u64> {
        let handle = self.nodes[&node].handle.as_ref()?;
        handle.read(|s| s.edges.get(key).map(|e| u64::from(e.capacity)))
    }

    fn applied(&self, node: u64) -> Option<u64> {
        Some(self.nodes[&node].handle.as_ref()?.status().applied)
    }

    /// Collects answers; a client whose operation finished starts another soon.
    fn poll_clients(&mut self) {
        for c in 0..self.clients.len() {
            let pending = std::mem::replace(&mut self.clients[c].pending, Pending::Idle);
            match self.poll_client(c, pending) {
                Ok(op) => {
                    if let (Call::Write(value), Answer::Written) = (op.call, op.answer) {
                        self.acked.push(format!("c{c}-w{}", value % 100_000));
                    }
                    self.history.push(op);
                    let pause = self.rng.between(5, 100);
                    self.after_ms(pause, Event::ClientStart(c));
                }
                Err(pending) => self.clients[c].pending = pending,
            }
        }
    }

    /// The finished operation, or what is still pending.
    fn poll_client(&mut self, c: usize, pending: Pending) -> Result<Op, Pending> {
        let now = self.now_ms();
        let invoked = self.clients[c].invoked;
        let timed_out = now >= invoked + CLIENT_TIMEOUT_MS;
        match pending {
            Pending::Idle => Err(Pending::Idle),
            Pending::Write { key, value, mut rx } => {
                let answer = match rx.try_recv() {
                    Ok(Ok((_, Outcome::Ok { .. }))) => Answer::Written,
                    Ok(Ok((_, rejected))) => {
                        self.fail(format!("client {c}: write {key}={value} rejected: {rejected}"));
                        Answer::Unknown
                    }
                    Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => Answer::Unknown,
                    Err(oneshot::error::TryRecvError::Empty) if timed_out => Answer::Unknown,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        return Err(Pending::Write { key, value, rx })
                    }
                };
                self.log(|| format!("client {c}: write {key}={value} -> {answer:?}"));
                Ok(Op {
                    key: key.to_owned(),
                    client: c,
                    call: Call::Write(value),
                    answer,
                    invoked: Duration::from_millis(invoked),
                    returned: Duration::from_millis(now),
                })
            }
            Pending::ReadIndex { key, node, mut rx } => match rx.try_recv() {
                Ok(Ok(index)) => self.poll_client(c, Pending::ReadWait { key, node, index }),
                Err(oneshot::error::TryRecvError::Empty) if !timed_out => {
                    Err(Pending::ReadIndex { key, node, rx })
                }
                _ => {
                    self.log(|| format!("client {c}: read {key} failed"));
                    Ok(read_op(key, c, None, invoked, now))
                }
            },
            Pending::ReadWait { key, node, index } => match self.applied(node) {
                Some(applied) if applied >= index => {
                    let value = self.read_local(node, key);
                    self.log(|| format!("client {c}: read {key} via node {node} = {value:?}"));
                    Ok(read_op(key, c, Some(value), invoked, now))
                }
                Some(_) if !timed_out => Err(Pending::ReadWait { key, node, index }),
                _ => {
                    self.log(|| format!("client {c}: read {key} failed"));
                    Ok(read_op(key, c, None, invoked, now))
                }
            },
        }
    }

    /// After the quiet period: every acknowledged write is in every running voter's
    /// state, exactly once in its audit log, and the voters' states are equal.
    fn final_checks(&mut self) {
        let voters = self.voters();
        if voters.is_empty() {
            self.fail("no leader after the quiet period".to_owned());
            return;
        }
        let mut states = Vec::new();
        for id in &voters {
            let Some(handle) = self.nodes[id].handle.as_ref() else {
                self.fail(format!("voter {id} is not running after the quiet period"));
                return;
            };
            let status = handle.status();
            states.push((*id, status.applied, handle.read(Clone::clone)));
        }
        let commit =
            self.leader().map(|l| self.nodes[&l].handle.as_ref().unwrap().status().commit).unwrap_or(0);
        for (id, applied, state) in &states {
            if *applied < commit {
                self.fail(format!("voter {id} applied {applied} of the leader's commit {commit}"));
                return;
            }
            if state.command_set() != COMMAND_SET {
                self.fail(format!("voter {id} is at command set {}, not {COMMAND_SET}", state.command_set()));
                return;
            }
            for request_id in &self.acked.clone() {
                if !state.applied_requests.contains_key(request_id) {
                    self.fail(format!("voter {id} lost acknowledged write {request_id}"));
                    return;
                }
                let times = state.audit.iter().filter(|e| &e.request_id == request_id).count();
                if times > 1 {
                    self.fail(format!("voter {id} applied {request_id} {times} times"));
                    return;
                }
            }
        }
        if let Some((first_id, _, first)) = states.first() {
            for (id, _, state) in &states[1..] {
                if state != first {
                    self.fail(format!("voters {first_id} and {id} have different states"));
                    return;
                }
            }
            // A final read of every key, after everything, through the state all agree on.
            let now = self.now_ms();
            for key in KEYS {
                let value = first.edges.get(key).map(|e| u64::from(e.capacity));
                self.history.push(read_op(key, usize::MAX, Some(value), now, now));
            }
        }
        match linearizable::check(&self.history, CHECK_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::Violation { key, detail } => self.fail(format!("not linearizable on {key}: {detail}")),
            Verdict::Undecided { key } => {
                self.fail(format!("the checker could not decide {key} within its budget"))
            }
        }
    }
}

fn read_op(key: &str, client: usize, value: Option<Option<u64>>, invoked: u64, now: u64) -> Op {
    Op {
        key: key.to_owned(),
        client,
        call: Call::Read,
        answer: value.map_or(Answer::Unknown, Answer::Read),
        invoked: Duration::from_millis(invoked),
        returned: Duration::from_millis(now),
    }
}

const WORLD: World = World { nodes: 5, clients: 4, chaos_ms: 20_000, end_ms: 32_000, broken: Broken::None };

/// Runs one seed. A panic inside it (raft-rs asserts its invariants, e.g. a follower
/// that lost entries it acknowledged) is a violation too.
pub fn run_seed(seed: u64, broken: Broken, trace: bool) -> (SeedReport, Option<Vec<String>>) {
    let run = std::panic::catch_unwind(|| {
        let mut sim = Sim::new(seed, World { broken, ..WORLD }, trace);
        sim.run();
        sim.final_checks();
        sim
    });
    let mut sim = match run {
        Ok(sim) => sim,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let report = SeedReport {
                ops: 0,
                acked: 0,
                faults: 0,
                trace_hash: 0,
                violation: Some(format!("panicked: {why}")),
            };
            return (report, None);
        }
    };
    let outcome = SeedReport {
        ops: sim.history.len(),
        acked: sim.acked.len(),
        faults: sim.faults,
        trace_hash: sim.trace_hash,
        violation: sim.violation.take(),
    };
    (outcome, sim.trace.take())
}

fn seeds(default: std::ops::Range<u64>) -> std::ops::Range<u64> {
    let Ok(range) = std::env::var("FERRY_SIM_SEEDS") else { return default };
    let (a, b) = range.split_once("..").expect("FERRY_SIM_SEEDS=a..b");
    a.parse().expect("a seed")..b.parse().expect("a seed")
}

fn run_range(range: std::ops::Range<u64>) {
    let started = Instant::now();
    let count = range.end.saturating_sub(range.start);
    let (mut ops, mut acked, mut faults) = (0, 0, 0);
    for seed in range {
        let (outcome, _) = run_seed(seed, Broken::None, false);
        if let Some(why) = outcome.violation {
            panic!(
                "seed {seed}: {why}\nreplay: FERRY_SIM_SEED={seed} cargo test -p ferry-control-plane --lib \
                 sim::replay -- --nocapture"
            );
        }
        ops += outcome.ops;
        acked += outcome.acked;
        faults += outcome.faults;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{count} seeds in {secs:.1} s ({:.1} seeds/s): {faults} faults, {ops} client operations, \
         {acked} acknowledged writes, all linearizable",
        count as f64 / secs
    );
}

#[test]
fn seeds_0_to_250() {
    run_range(seeds(0..250));
}

#[test]
fn seeds_250_to_500() {
    run_range(seeds(250..500));
}

#[test]
fn seeds_500_to_750() {
    run_range(seeds(500..750));
}

#[test]
fn seeds_750_to_1000() {
    run_range(seeds(750..1000));
}

/// One seed, twice: the same trace (the simulation is deterministic).
#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 7, 42] {
        let (a, _) = run_seed(seed, Broken::None, false);
        let (b, _) = run_seed(seed, Broken::None, false);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
        assert_eq!((a.ops, a.acked), (b.ops, b.acked), "seed {seed}");
    }
}

/// The broken variants fail within a few hundred seeds.
#[test]
fn the_simulation_catches_broken_variants() {
    for broken in [Broken::AckBeforeFlush, Broken::StaleReads] {
        let caught = (0..300).find_map(|seed| {
            let (outcome, _) = run_seed(seed, broken, false);
            outcome.violation.map(|why| (seed, why))
        });
        let (seed, why) = caught.unwrap_or_else(|| panic!("{broken:?} passed 300 seeds"));
        println!("{broken:?}: caught by seed {seed}: {why}");
    }
}

/// A committed entry from a newer release stops every voter that meets it, with a
/// message that says why, instead of being skipped.
#[test]
fn voters_stop_at_an_entry_of_a_newer_command_set() {
    let mut sim = Sim::new(1, World { chaos_ms: 0, end_ms: 2_000, ..WORLD }, false);
    sim.run();
    let leader = sim.leader().expect("a leader within 2 s");
    let mut entry = vec![0, 2];
    entry.extend_from_slice(&(crate::state::COMMAND_SET + 1).to_be_bytes());
    entry.extend_from_slice(b"{}");
    sim.on_node(leader, |d| d.raw_mut().propose(vec![], entry).unwrap());
    sim.world.end_ms = 4_000;
    sim.run();
    let why = sim.violation.clone().expect("the voters stop");
    let newer = format!("command set {}", crate::state::COMMAND_SET + 1);
    assert!(why.contains("cannot be applied by this build") && why.contains(&newer), "{why}");
    assert!(sim.up().is_empty(), "every voter that applied it stopped: {:?}", sim.up());
}

/// `FERRY_SIM_SEED=n`: one seed with its trace printed.
#[test]
fn replay() {
    let Ok(seed) = std::env::var("FERRY_SIM_SEED") else { return };
    let seed: u64 = seed.parse().expect("FERRY_SIM_SEED=<n>");
    let broken = match std::env::var("FERRY_SIM_BROKEN").as_deref() {
        Ok("ack-before-flush") => Broken::AckBeforeFlush,
        Ok("stale-reads") => Broken::StaleReads,
        _ => Broken::None,
    };
    let (outcome, trace) = run_seed(seed, broken, true);
    for line in trace.unwrap_or_default() {
        println!("{line}");
    }
    println!("{outcome:?}");
}
