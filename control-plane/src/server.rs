//! Running one control-plane voter: raft node, raft transport and HTTP API, with
//! shutdown on cancel (stop accepting → finish in-flight requests → flush → exit).

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use ferry_net::gossip::{Gossip, GossipConfig, GossipMetrics, Member, SelfInfo};
use ferry_net::http_server::{HttpLimits, HttpServerMetrics};
use ferry_net::tls::{self, PeerRefusals};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Api;
use crate::expiry::{Expired, Expiry, Record, Seen};
use crate::failover::{Failover, Observed};
use crate::guard::{ErrorGuard, Reading, Watched};
use crate::node::{self, NodeConfig, NodeHandle};
use crate::relays::{self, EdgeHealth, Placed, Placement};
use crate::state::{Command, Expiration, Request, RolloutState};
use crate::transport::{Transport, TransportConfig};
use crate::versions::next_command_set;
use crate::{Error, Result};
use ferry_proto::rollout::RolloutSpec;

/// Everything a voter needs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub node: NodeConfig,
    pub transport: TransportConfig,
    pub http_listen: SocketAddr,
    pub token: String,
    /// How long writes and linearizable reads wait for raft.
    pub request_timeout: Duration,
    /// Health gossip (none: this voter does not gossip, routing trusts registration).
    pub gossip: Option<GossipConfig>,
    /// How long the leader's own gossip view must show an edge dead before it commits
    /// the failover reaction.
    pub failover_grace: Duration,
    /// How long a stream must be published and relayed nowhere (as the leader's gossip
    /// sees it) before the leader removes its record.
    pub stream_grace: Duration,
    /// Edges must prove a certificate from the raft transport's cluster CA when they
    /// register (`--require-edge-proofs`); needs mutual-TLS raft.
    pub require_edge_proofs: bool,
    /// Bounds on API clients (timeouts, connection caps).
    pub http_limits: HttpLimits,
    /// Serve the API over HTTPS with this node certificate; clients may present a
    /// certificate from its CA (edges do: that is how they authenticate). `None`:
    /// plain HTTP (`--insecure-http`, `ferry dev`).
    pub api_tls: Option<tls::ClusterTls>,
    /// Sign edges' certificate requests (the voter holds the CA key).
    pub edge_certificates: Option<Arc<crate::api::EdgeCertificates>>,
}

/// A started voter.
pub struct Control {
    pub node: NodeHandle,
    pub http_addr: SocketAddr,
    gossip: Option<Arc<Gossip>>,
    tracker: TaskTracker,
    http: tokio::task::JoinHandle<()>,
}

impl Control {
    /// Opens storage, starts raft and binds the HTTP API.
    pub async fn start(config: ControlConfig, cancel: CancellationToken) -> Result<Control> {
        let tracker = TaskTracker::new();
        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(Error::bind("the API (--http-listen)", config.http_listen))?;
        let http_addr =
            listener.local_addr().map_err(Error::bind("the API (--http-listen)", config.http_listen))?;
        let cluster_ca = match (config.require_edge_proofs, config.transport.security.cluster_tls()) {
            (true, Some(c)) => Some(c.ca.clone()),
            _ => None,
        };
        let cluster = config.transport.security.cluster().map(str::to_owned);
        let refusals = PeerRefusals::default();
        let node =
            start_node(config.node, config.transport, refusals.clone(), &tracker, cancel.clone()).await?;
        let mut api = Api::new(node.clone(), config.token, config.request_timeout)
            .with_cluster(cluster)
            .with_shutdown(cancel.clone());
        let https = match &config.api_tls {
            Some(cluster_tls) => Some(tls::https_server_config(cluster_tls)?),
            None => None,
        };
        api.register_raft_refusals(&refusals);
        if let Some(certs) = config.edge_certificates {
            api = api.with_certificates(certs);
        }
        tracker.spawn(command_set_loop(node.clone(), cancel.clone()));
        let http_metrics = HttpServerMetrics::default();
        api.register_http_metrics(&http_metrics);
        let mut gossip_handle = None;
        if let Some(ca) = cluster_ca {
            let ca = tls::load_certs(&ca)?;
            api = api.with_cluster_ca(ca);
        }
        if let Some(gossip_config) = config.gossip {
            let metrics = GossipMetrics::default();
            api.register_gossip_metrics(&metrics);
            let info = SelfInfo {
                role: "voter".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                http_addr: http_addr.to_string(),
                ..SelfInfo::default()
            };
            let gossip = Gossip::start(
                gossip_config,
                Arc::new(move || info.clone()),
                metrics,
                &tracker,
                cancel.clone(),
            )
            .await?;
            tracker.spawn(failover_loop(
                node.clone(),
                Arc::clone(&gossip),
                Graces { failover: config.failover_grace, stream: config.stream_grace },
                cancel.clone(),
            ));
            let guard = Arc::new(std::sync::Mutex::new(ErrorGuard::default()));
            tracker.spawn(guard_loop(node.clone(), Arc::clone(&gossip), Arc::clone(&guard), cancel.clone()));
            gossip_handle = Some(Arc::clone(&gossip));
            api = api.with_gossip(gossip).with_guard(guard);
        }
        let router = api.router();
        let http = tokio::spawn(ferry_net::http_server::serve(
            listener,
            https,
            router,
            config.http_limits,
            http_metrics,
            cancel,
        ));
        Ok(Control { node, http_addr, gossip: gossip_handle, tracker, http })
    }

    /// The edges this voter's gossip shows alive: where routing can send clients.
    pub fn live_edges(&self) -> Vec<String> {
        let members = self.gossip.as_ref().map(|g| g.members()).unwrap_or_default();
        members.into_iter().filter(|m| m.alive && m.info.role == "edge").map(|m| m.id).collect()
    }

    /// Waits for shutdown to finish (after the cancel token fired): an error when it
    /// was the raft node's failure that stopped this voter.
    pub async fn wait(self) -> Result<()> {
        let _ = self.http.await;
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await.is_err() {
            tracing::warn!("control-plane tasks still running at exit");
        }
        match self.node.status().fault {
            Some(fault) => Err(Error::Stopped(fault)),
            None => Ok(()),
        }
    }
}

/// How often the leader looks whether every member announced a newer command set.
const COMMAND_SET_TICK: Duration = Duration::from_secs(1);

/// On the leader: raises the cluster's command set once every member announced it (see
/// [`crate::versions`]). One write per raise; a failed one is tried again next tick.
async fn command_set_loop(node: NodeHandle, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(COMMAND_SET_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = node.status();
        if status.leader != status.id || status.leader == 0 {
            continue;
        }
        let members: Vec<u64> = status.voters.iter().chain(&status.learners).copied().collect();
        let in_use = node.read(|s| s.command_set());
        let Some(to) = next_command_set(in_use, status.id, &members, &node.announcements()) else {
            continue;
        };
        let command = Command::RaiseCommandSet { to };
        match commit(&node, "cluster-version", format!("command-set-{to}"), command).await {
            Ok(outcome) => {
                tracing::info!(from = in_use, to, %outcome, "every voter announced command set {to}; the cluster uses it")
            }
            Err(e) => tracing::warn!(to, "raising the command set failed, retrying: {e}"),
        }
    }
}

/// How often every voter reads the edges' rollout counters into the error guard.
const GUARD_TICK: Duration = Duration::from_millis(200);

/// On every voter: feeds the edges' gossiped rollout counters to the error guard (see
/// [`crate::guard`]); on the leader, commits [`Command::TripRollout`] for the rollouts
/// it trips and for the CPU trips edges gossip (each recorded once: a tripped rollout
/// is no longer active).
async fn guard_loop(
    node: NodeHandle,
    gossip: Arc<Gossip>,
    guard: Arc<std::sync::Mutex<ErrorGuard>>,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(GUARD_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Trips decided but not yet committed (retried every tick while still active).
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Gossip is a hint: only registered edges' readings and trips count, so a
        // process that holds the gossip key but never registered trips nothing.
        let registered: BTreeSet<String> = node.read(|s| s.edges.keys().cloned().collect());
        let members: Vec<_> = gossip
            .members()
            .into_iter()
            .filter(|m| m.info.role == "edge" && registered.contains(&m.id))
            .collect();
        let rollouts: Vec<(String, u8, bool, RolloutSpec)> = node.read(|s| {
            s.rollouts
                .values()
                .map(|r| (r.id.clone(), r.level, r.state == RolloutState::Active, r.spec.clone()))
                .collect()
        });
        let watched: Vec<Watched<'_>> = rollouts
            .iter()
            .map(|(id, level, active, spec)| Watched {
                id,
                level: *level,
                share_bp: spec.gates.share_bp,
                active: *active,
                guard: &spec.guard,
            })
            .collect();
        let readings: Vec<Reading<'_>> = members
            .iter()
            .map(|m| Reading {
                key: format!("{}#{}", m.id, m.generation),
                cpu: m.info.cpu,
                counts: &m.info.rollout_counts,
            })
            .collect();
        let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let trips = guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).observe(
            now_ms,
            ferry_net::time::unix_ms(),
            &watched,
            &readings,
        );
        for trip in trips {
            tracing::warn!(rollout = %trip.id, reason = %trip.reason, "error guard: the rollout trips");
            pending.entry(trip.id).or_insert(format!("errors: {}", trip.reason));
        }
        // Edges' CPU guards trip rollouts on their own.
        for m in members.iter().filter(|m| m.alive) {
            for rollout in &m.info.trips {
                pending.entry(rollout.clone()).or_insert_with(|| format!("cpu on edge {}", m.id));
            }
        }
        pending.retain(|id, _| rollouts.iter().any(|(r, _, active, _)| r == id && *active));
        let status = node.status();
        if status.leader != status.id {
            continue;
        }
        for (rollout, reason) in std::mem::take(&mut pending) {
            let command = Command::TripRollout { id: rollout.clone(), guard: reason.clone() };
            match commit(&node, "guard", String::new(), command).await {
                Ok(outcome) => tracing::warn!(%rollout, %reason, %outcome, "recorded a rollout trip"),
                Err(e) => {
                    tracing::warn!(%rollout, "recording a rollout trip failed, retrying: {e}");
                    pending.insert(rollout, reason);
                }
            }
        }
    }
}

/// How often the leader looks at gossip for dead edges and relays to place.
const FAILOVER_TICK: Duration = Duration::from_millis(250);
/// Relay placements committed per tick at most, so a restart with many streams does
/// not flood the log.
const RELAY_PLACEMENTS_PER_TICK: usize = 32;

/// Stream records the leader removes per tick at most.
const EXPIRIES_PER_TICK: usize = 32;

/// How long the leader waits before it reacts.
#[derive(Debug, Clone, Copy)]
struct Graces {
    /// An edge dead in gossip.
    failover: Duration,
    /// A stream published and relayed nowhere.
    stream: Duration,
}

/// On the leader: commits [`Command::EdgeFailed`] for edges gossip has shown dead for
/// the grace period (see [`crate::failover`]), then [`Command::PlaceRelays`] where the
/// relays should change (see [`crate::relays`]), then removes the records of streams
/// nobody has used for their grace period (see [`crate::expiry`]). Followers only keep
/// their view fresh.
async fn failover_loop(node: NodeHandle, gossip: Arc<Gossip>, graces: Graces, cancel: CancellationToken) {
    let nonce = format!("{}.{}", node.status().id, ferry_net::time::unix_ms());
    let mut failover = Failover::new(graces.failover, nonce);
    let mut expiry = Expiry::new(graces.stream);
    let mut tick = tokio::time::interval(FAILOVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let members: Vec<_> = gossip.members().into_iter().filter(|m| m.info.role == "edge").collect();
        let view: Vec<Observed> = members
            .iter()
            .map(|m| Observed { id: m.id.clone(), generation: m.generation, alive: m.alive })
            .collect();
        let status = node.status();
        let (registered, work) = node.read(|s| {
            let registered: BTreeSet<String> = s.edges.keys().cloned().collect();
            let mut work = BTreeSet::new();
            for stream in s.streams.values() {
                if !stream.origin_lost {
                    work.insert(stream.origin.clone());
                }
                work.extend(stream.relays.values().flatten().cloned());
            }
            (registered, work)
        });
        let due =
            failover.observe(Instant::now(), &view, |id| registered.contains(id), |id| work.contains(id));
        if status.leader != status.id {
            continue;
        }
        for death in due {
            let edge = death.edge;
            let command = Command::EdgeFailed { id: edge.clone() };
            match commit(&node, "failover", death.request_id, command).await {
                Ok(outcome) => {
                    tracing::warn!(%edge, %outcome, "failover: committed the reaction to a dead edge");
                    failover.committed(&edge, death.generation);
                }
                Err(e) => tracing::warn!(%edge, "failover: commit failed, retrying: {e}"),
            }
        }
        let (streams, edges) = node.read(|s| {
            let streams: Vec<Placed> = s
                .streams
                .values()
                .map(|st| Placed {
                    name: st.name.clone(),
                    origin: st.origin.clone(),
                    origin_lost: st.origin_lost,
                    relays: st.relays.clone(),
                })
                .collect();
            let edges: Vec<EdgeHealth> = s
                .edges
                .values()
                .map(|e| {
                    let live = members.iter().filter(|m| m.id == e.id && m.alive);
                    let (mut alive, mut draining) = (false, e.draining);
                    for m in live {
                        alive = true;
                        draining |= m.info.draining;
                    }
                    EdgeHealth { id: e.id.clone(), region: e.region.clone(), alive, draining }
                })
                .collect();
            (streams, edges)
        });
        for placement in relays::plan(&streams, &edges).into_iter().take(RELAY_PLACEMENTS_PER_TICK) {
            let Placement { name, origin, relays } = placement;
            let command = Command::PlaceRelays { name: name.clone(), origin, relays };
            // No request id: a placement is recomputed from the state every tick.
            match commit(&node, "placement", String::new(), command).await {
                Ok(outcome) => tracing::info!(stream = %name, %outcome, "placed relays"),
                Err(e) => tracing::warn!(stream = %name, "relay placement: commit failed: {e}"),
            }
        }
        let records: Vec<Record> = node.read(|s| {
            s.streams
                .values()
                .map(|st| Record {
                    name: st.name.clone(),
                    origin: st.origin.clone(),
                    origin_lost: st.origin_lost,
                    updated_at_ms: st.updated_at_ms,
                })
                .collect()
        });
        let registered = node.read(|s| s.edges.keys().cloned().collect::<BTreeSet<String>>());
        let due = expiry.observe(Instant::now(), &records, |r| stream_use(&members, &registered, r));
        for Expired { record, reason } in due.into_iter().take(EXPIRIES_PER_TICK) {
            let Record { name, origin, origin_lost, updated_at_ms } = record;
            let expired = Some(Expiration { updated_at_ms, origin_lost, reason });
            let command = Command::ReleaseStream { name: name.clone(), origin, expired };
            match commit(&node, "expiry", format!("expire-{name}-{updated_at_ms}"), command).await {
                Ok(outcome) => {
                    tracing::info!(stream = %name, %outcome, "removed the record of an unused stream")
                }
                Err(e) => tracing::warn!(stream = %name, "stream expiry: commit failed: {e}"),
            }
        }
    }
}

/// Whether anything uses `record`'s stream, as this voter's gossip sees it.
fn stream_use(members: &[Member], registered: &BTreeSet<String>, record: &Record) -> Seen {
    let live = || members.iter().filter(|m| m.alive);
    if live().any(|m| m.info.origins.contains(&record.name) || m.info.carries.contains(&record.name)) {
        return Seen::InUse;
    }
    if record.origin_lost || !registered.contains(&record.origin) {
        return Seen::Unused;
    }
    // The origin stopped publishing it: only its complete list can say so.
    match live().find(|m| m.id == record.origin) {
        Some(origin) if origin.info.origins_unlisted == 0 => Seen::Unused,
        _ => Seen::Unknown,
    }
}

/// Commits one command as the cluster itself.
async fn commit(
    node: &NodeHandle,
    actor: &str,
    request_id: String,
    command: Command,
) -> Result<crate::state::Outcome, String> {
    let request = Request::internal(request_id, actor, ferry_net::time::unix_ms(), command);
    node.write(request, Duration::from_secs(5)).await.map(|(_, outcome)| outcome).map_err(|e| e.to_string())
}

/// How long a voter whose raft node failed keeps answering (503 on /readyz) before it
/// exits.
const FAULT_EXIT_DELAY: Duration = Duration::from_secs(2);

/// Opens storage and starts the node task with the QUIC transport on `tracker`.
async fn start_node(
    config: NodeConfig,
    transport: TransportConfig,
    refusals: PeerRefusals,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<NodeHandle> {
    let id = config.id;
    let (runner, handle) = node::open(config)?;
    let network = Transport::start(transport, handle.clone(), refusals, tracker, cancel.clone()).await?;
    // The node runs on a thread of its own: its fsyncs and snapshots block that thread
    // only, never a worker the API, QUIC and gossip share.
    let (done, stopped) = tokio::sync::oneshot::channel::<()>();
    let node_cancel = cancel.clone();
    std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the raft node's runtime; this voter exits");
                    node_cancel.cancel();
                    return;
                }
            };
            runtime.block_on(async move {
                if let Err(e) = runner.run(Arc::new(network), node_cancel.clone()).await {
                    tracing::error!(
                        error = %ferry_net::Chain(&e),
                        "the raft node stopped; this voter exits (its supervisor restarts it)"
                    );
                    // /readyz answers 503 with the reason meanwhile, for probes and scrapes.
                    tokio::select! {
                        _ = tokio::time::sleep(FAULT_EXIT_DELAY) => {}
                        _ = node_cancel.cancelled() => {}
                    }
                    node_cancel.cancel();
                }
            });
            let _ = done.send(());
        })
        .map_err(crate::Error::Thread)?;
    // Shutdown waits for the node to stop (its final flush) like for any task.
    tracker.spawn(async move {
        let _ = stopped.await;
    });
    Ok(handle)
}
