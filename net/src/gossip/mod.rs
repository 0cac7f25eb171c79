//! Health gossip over UDP (chitchat 0.13): every process publishes a few keys about
//! itself, and reads everybody else's together with the failure detector's verdict.
//!
//! chitchat's defaults (1 s rounds, a 5 s prior for the failure detector, 24 h before a
//! dead node is forgotten) detect a dead process in tens of seconds. Ferry gossips every
//! 100 ms, starts the detector from that interval, and declares a node dead when its
//! heartbeat is [`PHI_THRESHOLD`] mean intervals late — about a second.
//!
//! chitchat believes whatever heartbeat the gossip key seals; with cluster certificates
//! the [`witness`] asks members it doubts to prove they are alive.

pub use ferry_proto::api::{Member, SelfInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Error, Result};

mod sealed;
pub mod witness;
pub use sealed::{GossipDrops, KeyringSource, SealedTransport, RELOAD_EVERY};
use witness::{Seen, WitnessEvents, WitnessLink};

/// Heartbeat lateness, in mean heartbeat intervals, at which a node is declared dead.
pub const PHI_THRESHOLD: f64 = 8.0;
/// Default gossip round interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
/// A dead node's state is forgotten after this long (chitchat's default is 24 h).
const DEAD_NODE_GRACE: Duration = Duration::from_secs(600);
/// Deleted keys are kept this long so late peers learn of the deletion.
const TOMBSTONE_GRACE: Duration = Duration::from_secs(60);
/// Longest list published under one key (streams originated or carried): a process
/// with more chooses which to list ([`SelfInfo::origins_unlisted`]).
pub const MAX_LISTED_STREAMS: usize = 256;

/// Keys every Ferry process publishes.
pub mod keys {
    pub const ROLE: &str = "role";
    pub const REGION: &str = "region";
    pub const VERSION: &str = "version";
    pub const QUIC: &str = "quic";
    pub const HTTP: &str = "http";
    pub const DRAINING: &str = "draining";
    pub const SESSIONS: &str = "sessions";
    pub const CPU: &str = "cpu";
    pub const BYTES_PER_S: &str = "bytes_per_s";
    pub const ORIGINS: &str = "origins";
    pub const ORIGINS_UNLISTED: &str = "origins_unlisted";
    pub const CARRIES: &str = "carries";
    pub const TRIPS: &str = "trips";
    pub const ROLLOUT_COUNTS: &str = "rollout_counts";
}

/// How to join the gossip.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This process's id (edge id, or `voter-N`).
    pub node_id: String,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Address peers reach us at (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// Gossip addresses of a few peers (`HOST:PORT`).
    pub seeds: Vec<String>,
    /// Processes with another cluster id ignore each other.
    pub cluster_id: String,
    pub interval: Duration,
    /// Seal every datagram with this keyring (`None`: plaintext, `--insecure-gossip`).
    pub keyring: Option<KeyringSource>,
    /// This process's cluster certificate: with a keyring, members gossip doubts are
    /// asked to prove they are alive with it ([`witness`]).
    pub identity: Option<crate::tls::ClusterTls>,
}

/// Produces this process's current [`SelfInfo`].
pub type SelfInfoFn = Arc<dyn Fn() -> SelfInfo + Send + Sync>;

/// A member as read from chitchat's state of it.
fn member_from_state(id: &ChitchatId, state: &NodeState, alive: bool) -> Member {
    let get = |k: &str| state.get(k).unwrap_or_default().to_owned();
    let list = |k: &str| -> BTreeSet<String> {
        state.get(k).and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default()
    };
    Member {
        id: id.node_id.to_string(),
        gossip_addr: id.gossip_advertise_addr.to_string(),
        generation: id.generation_id,
        alive,
        info: SelfInfo {
            role: get(keys::ROLE),
            region: get(keys::REGION),
            version: get(keys::VERSION),
            quic_addr: get(keys::QUIC),
            http_addr: get(keys::HTTP),
            draining: state.get(keys::DRAINING) == Some("1"),
            sessions: get(keys::SESSIONS).parse().unwrap_or(0),
            cpu: get(keys::CPU).parse().unwrap_or(0.0),
            bytes_per_s: get(keys::BYTES_PER_S).parse().unwrap_or(0),
            origins: list(keys::ORIGINS),
            origins_unlisted: get(keys::ORIGINS_UNLISTED).parse().unwrap_or(0),
            carries: list(keys::CARRIES),
            trips: list(keys::TRIPS),
            rollout_counts: state
                .get(keys::ROLLOUT_COUNTS)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
        },
    }
}

/// Gossip metrics.
#[derive(Debug, Clone, Default)]
pub struct GossipMetrics {
    /// Members by state (`alive` / `dead`).
    pub members: Family<StateLabel, Gauge>,
    /// Peers this process saw go from alive to dead.
    pub deaths: Counter,
    /// Gossip rounds this process observed.
    pub rounds: Counter,
    /// Datagrams dropped by the sealed transport, by reason.
    pub drops: GossipDrops,
    /// Liveness probes of doubted members.
    pub witness: WitnessEvents,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

impl GossipMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("ferry_gossip_members", "Gossip members by state", self.members.clone());
        registry.register(
            "ferry_gossip_peer_deaths",
            "Peers this process saw go from alive to dead",
            self.deaths.clone(),
        );
        registry.register("ferry_gossip_rounds", "Gossip membership refreshes", self.rounds.clone());
        self.drops.register(registry);
        self.witness.register(registry);
    }
}

/// A running gossip participant. Dropping it does not stop it; call [`Gossip::shutdown`].
pub struct Gossip {
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    members: RwLock<BTreeMap<String, Member>>,
    /// When each peer was last seen going dead, for logs and the failover bench.
    deaths: RwLock<BTreeMap<String, SystemTime>>,
    metrics: GossipMetrics,
    local_addr: SocketAddr,
    witness: Option<Arc<WitnessLink>>,
}

impl Gossip {
    /// Binds the UDP socket and starts gossiping; the refresh task runs on `tracker`
    /// until `cancel` fires.
    pub async fn start(
        config: GossipConfig,
        info: SelfInfoFn,
        metrics: GossipMetrics,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Arc<Gossip>> {
        let advertise = config.advertise.unwrap_or(config.listen);
        let generation =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        let interval = config.interval.max(Duration::from_millis(10));
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_id.clone(), generation, advertise),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: interval,
            listen_addr: config.listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: PHI_THRESHOLD,
                sampling_window_size: 100,
                max_interval: interval * 20,
                initial_interval: interval,
                dead_node_grace_period: DEAD_NODE_GRACE,
            },
            marked_for_deletion_grace_period: TOMBSTONE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let initial = encode(&info());
        let witness = match (&config.keyring, &config.identity) {
            (Some(keyring), Some(identity)) => Some(Arc::new(WitnessLink::new(
                identity,
                &config.cluster_id,
                &config.node_id,
                generation,
                keyring.clone(),
                metrics.witness.clone(),
            )?)),
            _ => None,
        };
        let spawned = match &config.keyring {
            Some(keyring) => {
                tracker.spawn(keyring.clone().reload(cancel.clone()));
                let transport = SealedTransport {
                    keyring: keyring.clone(),
                    drops: metrics.drops.clone(),
                    tracker: tracker.clone(),
                    cancel: cancel.clone(),
                    witness: witness.clone(),
                };
                spawn_chitchat(chitchat_config, initial, &transport).await
            }
            None => spawn_chitchat(chitchat_config, initial, &UdpTransport).await,
        };
        let handle = spawned.map_err(|e| {
            Error::Config(format!("cannot start gossip on {} (--gossip-listen): {e:#}", config.listen))
        })?;
        let gossip = Arc::new(Gossip {
            handle: tokio::sync::Mutex::new(Some(handle)),
            members: RwLock::new(BTreeMap::new()),
            deaths: RwLock::new(BTreeMap::new()),
            metrics,
            local_addr: config.listen,
            witness,
        });
        tracker.spawn(refresh(Arc::clone(&gossip), info, interval, cancel));
        Ok(gossip)
    }

    /// The UDP address gossip is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every known process (one entry per id: its newest generation), self included.
    pub fn members(&self) -> Vec<Member> {
        self.members.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// One process by id.
    pub fn member(&self, id: &str) -> Option<Member> {
        self.members.read().ok()?.get(id).cloned()
    }

    /// When gossip last declared each peer dead (wall clock, for reports).
    pub fn deaths(&self) -> BTreeMap<String, SystemTime> {
        self.deaths.read().map(|d| d.clone()).unwrap_or_default()
    }

    /// Leaves the gossip: stops the chitchat server.
    pub async fn shutdown(&self) {
        if let Some(handle) = self.handle.lock().await.take() {
            if let Err(e) = handle.shutdown().await {
                tracing::debug!("gossip shutdown: {e:#}");
            }
        }
    }

    /// Publishes `info` and refreshes the member table from chitchat.
    async fn round(&self, info: &SelfInfo) {
        let guard = self.handle.lock().await;
        let Some(handle) = guard.as_ref() else { return };
        let snapshot = handle
            .with_chitchat(|c| {
                let node = c.self_node_state();
                for (k, v) in encode(info) {
                    node.set(k, v);
                }
                let live: BTreeSet<ChitchatId> = c.live_nodes().cloned().collect();
                c.node_states()
                    .iter()
                    .map(|(id, state)| {
                        (member_from_state(id, state, live.contains(id)), id.gossip_advertise_addr)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        drop(guard);
        self.metrics.rounds.inc();
        // chitchat believes any heartbeat the gossip key relays; doubted members prove
        // they are alive with their certificates.
        let mut snapshot = snapshot;
        if let Some(witness) = &self.witness {
            let view: Vec<Seen> = snapshot
                .iter()
                .map(|(m, addr)| Seen {
                    id: m.id.clone(),
                    generation: m.generation,
                    addr: *addr,
                    alive: m.alive,
                })
                .collect();
            for ((m, _), alive) in snapshot.iter_mut().zip(witness.decide(&view)) {
                m.alive = alive;
            }
        }
        // One entry per node id: a live generation wins, else the newest.
        let mut by_id: BTreeMap<String, Member> = BTreeMap::new();
        for (m, _) in snapshot {
            let replace = match by_id.get(&m.id) {
                None => true,
                Some(old) => (m.alive, m.generation) > (old.alive, old.generation),
            };
            if replace {
                by_id.insert(m.id.clone(), m);
            }
        }
        let (alive, dead) =
            by_id.values().fold((0, 0), |(a, d), m| if m.alive { (a + 1, d) } else { (a, d + 1) });
        self.metrics.members.get_or_create(&StateLabel { state: "alive" }).set(alive);
        self.metrics.members.get_or_create(&StateLabel { state: "dead" }).set(dead);
        let Ok(mut members) = self.members.write() else { return };
        for (id, m) in &by_id {
            let was_alive = members.get(id).is_some_and(|old| old.alive);
            if was_alive && !m.alive {
                self.metrics.deaths.inc();
                tracing::warn!(peer = %id, addr = %m.gossip_addr, "gossip: peer is dead");
                if let Ok(mut deaths) = self.deaths.write() {
                    deaths.insert(id.clone(), SystemTime::now());
                }
            } else if !was_alive && m.alive && members.contains_key(id) {
                tracing::info!(peer = %id, "gossip: peer is alive again");
            }
        }
        *members = by_id;
    }
}

async fn refresh(gossip: Arc<Gossip>, info: SelfInfoFn, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        gossip.round(&info()).await;
        if started.elapsed() < interval * 2 {
            tracing::debug!(members = gossip.members().len(), "gossip started");
        }
    }
    gossip.shutdown().await;
}

/// The key/value pairs for `info`.
fn encode(info: &SelfInfo) -> Vec<(String, String)> {
    let list = |set: &BTreeSet<String>| {
        let limited: Vec<&String> = set.iter().take(MAX_LISTED_STREAMS).collect();
        serde_json::to_string(&limited).unwrap_or_else(|_| "[]".into())
    };
    // The process normally chooses what to list; whatever the cut here drops counts too.
    let cut = info.origins.len().saturating_sub(MAX_LISTED_STREAMS) as u64;
    let unlisted = info.origins_unlisted.saturating_add(cut);
    vec![
        (keys::ROLE.into(), info.role.clone()),
        (keys::REGION.into(), info.region.clone()),
        (keys::VERSION.into(), info.version.clone()),
        (keys::QUIC.into(), info.quic_addr.clone()),
        (keys::HTTP.into(), info.http_addr.clone()),
        (keys::DRAINING.into(), if info.draining { "1" } else { "0" }.into()),
        (keys::SESSIONS.into(), info.sessions.to_string()),
        (keys::CPU.into(), format!("{:.3}", info.cpu)),
        (keys::BYTES_PER_S.into(), info.bytes_per_s.to_string()),
        (keys::ORIGINS.into(), list(&info.origins)),
        (keys::ORIGINS_UNLISTED.into(), unlisted.to_string()),
        (keys::CARRIES.into(), list(&info.carries)),
        (keys::TRIPS.into(), list(&info.trips)),
        (
            keys::ROLLOUT_COUNTS.into(),
            serde_json::to_string(&info.rollout_counts).unwrap_or_else(|_| "{}".into()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;
    use crate::seal::Drop;

    fn info(role: &str, origins: &[&str]) -> SelfInfoFn {
        let info = SelfInfo {
            role: role.into(),
            region: "r1".into(),
            quic_addr: "127.0.0.1:1".into(),
            origins: origins.iter().map(|s| s.to_string()).collect(),
            ..SelfInfo::default()
        };
        Arc::new(move || info.clone())
    }

    async fn start(
        id: &str,
        seeds: Vec<String>,
        role: &str,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Arc<Gossip> {
        start_with(id, seeds, role, None, GossipMetrics::default(), tracker, cancel).await
    }

    async fn start_with(
        id: &str,
        seeds: Vec<String>,
        role: &str,
        keyring: Option<KeyringSource>,
        metrics: GossipMetrics,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Arc<Gossip> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = socket.local_addr().unwrap();
        drop(socket);
        let config = GossipConfig {
            node_id: id.into(),
            listen,
            advertise: None,
            seeds,
            cluster_id: "test".into(),
            interval: DEFAULT_INTERVAL,
            keyring,
            identity: None,
        };
        Gossip::start(config, info(role, &["live/a"]), metrics, tracker, cancel.child_token()).await.unwrap()
    }

    fn keyring(dir: &std::path::Path, keys: &[&str], primary: &str) -> KeyringSource {
        std::fs::create_dir_all(dir).unwrap();
        for k in keys {
            let path = dir.join(format!("{k}.key"));
            if !path.exists() {
                std::fs::write(path, crate::seal::new_key_hex().unwrap()).unwrap();
            }
        }
        std::fs::write(dir.join(crate::seal::PRIMARY_FILE), primary).unwrap();
        KeyringSource::load(dir.to_owned(), "test").unwrap()
    }

    /// Three members with the cluster's key see each other; a process with another key
    /// or none sees nobody and nobody sees it, and its datagrams are counted as dropped.
    /// A key rotation (install, use, remove) on all three costs no member a death.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sealed_gossip_admits_only_key_holders_and_rotates_without_deaths() {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let (ka, kb, kc) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        // Shared by the three key holders: deaths anywhere are counted together.
        let metrics = GossipMetrics::default();
        let ring_a = keyring(&ka, &["k1"], "k1");
        let a =
            start_with("a", vec![], "voter", Some(ring_a.clone()), metrics.clone(), &tracker, &cancel).await;
        let seed = vec![a.local_addr().to_string()];
        // b and c share the key (copies of a's directory).
        let mut holders = Vec::new();
        for (id, dir) in [("b", &kb), ("c", &kc)] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::copy(ka.join("k1.key"), dir.join("k1.key")).unwrap();
            let ring = keyring(dir, &["k1"], "k1");
            let member =
                start_with(id, seed.clone(), "edge", Some(ring.clone()), metrics.clone(), &tracker, &cancel)
                    .await;
            holders.push((member, ring));
        }
        let [(b, ring_b), (c, ring_c)] = [holders.remove(0), holders.remove(0)];
        let wrong = start_with(
            "wrong",
            seed.clone(),
            "edge",
            Some(keyring(&dir.path().join("w"), &["k1"], "k1")),
            GossipMetrics::default(),
            &tracker,
            &cancel,
        )
        .await;
        let plain = start("plain", seed.clone(), "edge", &tracker, &cancel).await;
        until("a, b and c see each other", || {
            [&a, &b, &c].iter().all(|g| g.members().iter().filter(|m| m.alive).count() == 3)
        })
        .await;
        until("a dropped the wrong key's and the plaintext datagrams", || {
            metrics.drops.get(Drop::UnknownKey) > 0 && metrics.drops.get(Drop::Unsealed) > 0
        })
        .await;
        for outsider in [&wrong, &plain] {
            assert_eq!(outsider.members().len(), 1, "an outsider sees only itself");
        }
        assert!(a.member("wrong").is_none() && a.member("plain").is_none());

        // Rotation: install k2 everywhere, make it primary one member at a time, remove
        // k1; each step once every process has read it.
        let deaths = metrics.deaths.get();
        let rings = [&ring_a, &ring_b, &ring_c];
        let dirs = [&ka, &kb, &kc];
        std::fs::write(ka.join("k2.key"), crate::seal::new_key_hex().unwrap()).unwrap();
        for d in [&kb, &kc] {
            std::fs::copy(ka.join("k2.key"), d.join("k2.key")).unwrap();
        }
        until("k2 installed", || rings.iter().all(|r| r.get().names().len() == 2)).await;
        for (d, ring) in dirs.iter().zip(rings) {
            std::fs::write(d.join(crate::seal::PRIMARY_FILE), "k2").unwrap();
            until("the member seals with k2", || ring.get().primary_name() == "k2").await;
            let rounds = metrics.rounds.get();
            until("ten rounds with the members on mixed keys", || metrics.rounds.get() > rounds + 10).await;
        }
        for d in dirs {
            std::fs::remove_file(d.join("k1.key")).unwrap();
        }
        until("k1 removed", || rings.iter().all(|r| r.get().names() == ["k2"])).await;
        let rounds = metrics.rounds.get();
        until("twenty rounds on k2 alone", || metrics.rounds.get() > rounds + 20).await;
        assert_eq!(metrics.deaths.get(), deaths, "a member died during the rotation");
        for g in [&a, &b, &c] {
            assert_eq!(g.members().iter().filter(|m| m.alive).count(), 3, "{:?}", g.members());
        }
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Three processes see each other with their keys; one stops and the others mark it
    /// dead; it returns under a new generation and is alive again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_see_each_other_and_a_stopped_one_goes_dead() {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let a = start("a", vec![], "voter", &tracker, &cancel).await;
        let seed = vec![a.local_addr().to_string()];
        let b = start("b", seed.clone(), "edge", &tracker, &cancel).await;
        let c_cancel = cancel.child_token();
        let c = start("c", seed.clone(), "edge", &tracker, &c_cancel).await;
        until("all alive", || {
            [&a, &b, &c].iter().all(|g| g.members().iter().filter(|m| m.alive).count() == 3)
        })
        .await;
        let seen = a.member("c").unwrap();
        assert_eq!((seen.info.role.as_str(), seen.info.region.as_str()), ("edge", "r1"));
        assert!(seen.info.origins.contains("live/a"));

        c_cancel.cancel();
        c.shutdown().await;
        until("c dead at a and b", || [&a, &b].iter().all(|g| g.member("c").is_some_and(|m| !m.alive))).await;
        assert!(a.deaths().contains_key("c"));

        let c2 = start("c", seed, "edge", &tracker, &cancel).await;
        until("c alive again", || a.member("c").is_some_and(|m| m.alive)).await;
        // The restarted process learns the others on its own schedule.
        until("a alive at c again", || c2.members().iter().any(|m| m.id == "a" && m.alive)).await;
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
