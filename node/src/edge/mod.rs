//! The edge: accepts publishers, viewers and downstream edges over QUIC, keeps one
//! track buffer per published track, and pulls streams it lacks from an upstream.
//!
//! # Layout
//! - `mod.rs`: [`EdgeConfig`], binding, the accept loop and shutdown.
//! - `session`: one QUIC connection: hello, then the publisher or subscriber loop.
//! - `deliver`: one subscription's delivery — a QUIC stream per group, stale groups reset.
//! - `ingest`: reading group streams into track buffers.
//! - `registry`: the streams this edge knows.
//! - `upstream`: the shared link to the upstream edge (one subscription per track).
//! - `http`: `/healthz`, `/readyz`, `/metrics`.

mod deliver;
mod http;
mod ingest;
mod registry;
mod session;
mod session_publish;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ferry_proto::cohort::Cohort;
use ferry_proto::rollout::{CohortCounts, Congestion};
use ferry_proto::{ErrorCode, NodeId};
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::control::{ControlLink, Registration};
use crate::cluster::gossip::{Gossip, GossipConfig, GossipMetrics, SelfInfo, SelfInfoFn};
use crate::cluster::load::{cpu_seconds, Rates};
use crate::cluster::ClusterView;
use crate::metrics::{EdgeMetrics, RoleLabels};
use crate::tls::{self, ClientAuth, ClientTrust, ClusterTls, ServerIdentity, TransportTuning};
use crate::track::BufferConfig;
use crate::webrtc::{WebRtc, WebRtcConfig};
use crate::Result;

/// Rollouts whose session counts an edge keeps (and gossips) at most.
const MAX_COUNTED_ROLLOUTS: usize = 64;

pub use registry::Registry;
pub(crate) use session::find_track;

/// Everything an edge needs to run.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub node_id: NodeId,
    pub region: String,
    pub quic_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Pull streams this edge does not have from here (`HOST:PORT`).
    pub upstream: Option<String>,
    /// How to verify the upstream edge's certificate.
    pub upstream_trust: ClientTrust,
    pub identity: ServerIdentity,
    pub tuning: TransportTuning,
    /// QUIC connections served at once; more wait in the kernel/quinn backlog.
    pub max_connections: usize,
    /// Subscriptions per connection.
    pub max_subscriptions_per_connection: usize,
    pub buffer: BufferConfig,
    /// Largest frame payload accepted from publishers and upstreams.
    pub max_frame: usize,
    /// Latency budget this edge asks of its upstream.
    pub relay_max_lag: Duration,
    /// Upper bound for a subscriber's requested `max_lag`.
    pub max_lag_cap: Duration,
    /// Relayed tracks with no local subscriber are dropped after this long.
    pub relay_linger: Duration,
    /// How long shutdown waits for sessions to finish after GOAWAY.
    pub shutdown_grace: Duration,
    /// Apply rollouts' `fault.*` overrides (drills); without it they are ignored.
    pub allow_fault_injection: bool,
    /// How long WHEP viewers keep playing on a draining edge before they are closed
    /// (and re-route by themselves); capped by `shutdown_grace`.
    pub whep_drain_grace: Duration,
    /// WHIP/WHEP sessions.
    pub webrtc: WebRtcConfig,
    /// Health gossip (none: this edge does not gossip).
    pub gossip: Option<GossipConfig>,
    /// Control-plane API URLs (`http://HOST:PORT`); empty: not registered anywhere.
    pub control_plane: Vec<String>,
    /// Bearer token for the control-plane API.
    pub control_token: String,
    /// Relative capacity registered for placement.
    pub capacity: u32,
    /// Cluster CA and this edge's certificate: downstream edges must present a cluster
    /// certificate, and this edge presents its own to its upstreams.
    pub cluster_tls: Option<ClusterTls>,
    /// Host peers and clients reach this edge at (`--advertise-host`); `None`: the
    /// listen addresses.
    pub advertise_host: Option<String>,
}

impl EdgeConfig {
    /// Defaults for a local edge with the given id and addresses.
    pub fn new(node_id: NodeId, quic_listen: SocketAddr, http_listen: SocketAddr) -> Self {
        Self {
            node_id,
            region: "local".into(),
            quic_listen,
            http_listen,
            upstream: None,
            upstream_trust: ClientTrust::Insecure,
            identity: ServerIdentity::SelfSigned { names: default_names() },
            tuning: TransportTuning::default(),
            max_connections: 4096,
            max_subscriptions_per_connection: 64,
            buffer: BufferConfig::default(),
            max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
            relay_max_lag: Duration::from_secs(3),
            max_lag_cap: Duration::from_secs(30),
            relay_linger: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            whep_drain_grace: Duration::from_secs(10),
            allow_fault_injection: false,
            webrtc: WebRtcConfig::default(),
            gossip: None,
            control_plane: Vec::new(),
            control_token: String::new(),
            capacity: 100,
            cluster_tls: None,
            advertise_host: None,
        }
    }

    /// `bound` as peers and clients reach it: at `advertise_host` when set.
    fn advertised(&self, bound: SocketAddr) -> Result<String> {
        match &self.advertise_host {
            Some(host) if host.contains(':') && !host.starts_with('[') => {
                Ok(format!("[{host}]:{}", bound.port()))
            }
            Some(host) => Ok(format!("{host}:{}", bound.port())),
            None if bound.ip().is_unspecified()
                && (self.gossip.is_some() || !self.control_plane.is_empty()) =>
            {
                Err(crate::Error::Config(format!(
                    "the edge listens on {bound}, which peers cannot reach: give --advertise-host \
                     (the address they reach this edge at, e.g. the pod IP)"
                )))
            }
            None => Ok(bound.to_string()),
        }
    }
}

/// Names a dev self-signed certificate covers.
pub fn default_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// Gossip rounds a draining edge keeps serving so every peer learns it is draining.
const DRAIN_ANNOUNCE_ROUNDS: u32 = 5;

/// State shared by every task of one edge.
pub(crate) struct EdgeState {
    pub config: EdgeConfig,
    pub metrics: EdgeMetrics,
    pub registry: Registry,
    pub tracker: TaskTracker,
    /// Drain starts: QUIC sessions get GOAWAY, WHIP sessions end.
    pub shutdown: CancellationToken,
    /// The media plane stops: WHEP sessions and upstream links end (after the WHEP
    /// drain grace).
    pub media_shutdown: CancellationToken,
    pub upstreams: upstream::Upstreams,
    /// Health gossip, once started.
    pub gossip: OnceLock<Arc<Gossip>>,
    /// Registration and watch on the control plane.
    pub control: Option<Arc<ControlLink>>,
    /// Stops background work (gossip, control link) after the sessions drained.
    pub background: CancellationToken,
    rates: Rates,
    /// The edge-local CPU guard of rollouts.
    guard: std::sync::Mutex<crate::rollouts::CpuGuard>,
    /// Sessions and errors per rollout and cohort since start (gossiped).
    counts: std::sync::Mutex<BTreeMap<String, CohortCounts>>,
    /// The QUIC server config per congestion controller.
    congestion: Vec<(Congestion, Arc<quinn::ServerConfig>)>,
    pub next_session: AtomicU64,
    pub ready: AtomicBool,
    /// Shutting down: gossiped so routing sends new sessions elsewhere.
    pub draining: AtomicBool,
    pub webrtc: Arc<WebRtc>,
}

impl EdgeState {
    /// What the cluster sees of this edge.
    pub fn cluster(&self) -> ClusterView {
        ClusterView { gossip: self.gossip.get().cloned(), control: self.control.clone() }
    }

    /// Where a session stands in every rollout this edge knows (the last ones read from
    /// the control plane), not counted.
    fn decide(&self, session_id: &str, tags: &[String]) -> crate::rollouts::Assignment {
        let records = self.control.as_ref().map(|c| c.snapshot().rollouts).unwrap_or_default();
        let live = crate::rollouts::live(&records);
        let session = ferry_proto::cohort::Session {
            id: session_id,
            tags,
            region: &self.config.region,
            edge: self.config.node_id.as_str(),
        };
        let assignment = crate::rollouts::assign(&live, &session, &self.cpu_guard().tripped());
        match self.config.allow_fault_injection {
            true => assignment,
            false => assignment.without_faults(),
        }
    }

    /// Runs a session's `work`. Meanwhile, whenever the rollouts in force change (a
    /// trip here or on the control plane, a lower level or share, an abort), places
    /// the session again; once no rollout treats it with a latency budget, `lag` falls
    /// back to the baseline for the rest of the session (counted per rollout left).
    /// Sessions only ever leave a treatment this way, never join one.
    pub async fn with_fallback<T>(
        &self,
        assignment: &crate::rollouts::Assignment,
        lag: &crate::rollouts::LagBudget,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        let fallback = self.fall_back_when_untreated(assignment, lag);
        tokio::pin!(fallback);
        let mut watching = true;
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = &mut fallback, if watching => watching = false,
            }
        }
    }

    async fn fall_back_when_untreated(
        &self,
        assignment: &crate::rollouts::Assignment,
        lag: &crate::rollouts::LagBudget,
    ) {
        let Some(control) = &self.control else { return };
        if !lag.treated() {
            return;
        }
        let mut changes = control.watch_rollouts();
        loop {
            let now = self.decide(&assignment.session_id, &assignment.tags);
            if now.overrides.max_lag_ms.is_none() {
                lag.fall_back();
                let left = crate::rollouts::left_treatment(assignment, &now);
                tracing::info!(session = %assignment.session_id, rollouts = ?left, "session moved back to the baseline");
                for rollout in left {
                    let labels = crate::metrics::RolloutLabels { rollout: rollout.to_owned() };
                    self.metrics.rollout_moved_back.get_or_create(&labels).inc();
                }
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Places a new session in every rollout this edge knows (the last ones read from
    /// the control plane) and counts it.
    pub fn assign(&self, session_id: &str, tags: &[String]) -> crate::rollouts::Assignment {
        let assignment = self.decide(session_id, tags);
        let mut counts = self.lock_counts();
        for (rollout, cohort) in &assignment.variants {
            let labels =
                crate::metrics::CohortLabels { rollout: rollout.clone(), cohort: cohort.as_str().into() };
            self.metrics.rollout_sessions.get_or_create(&labels).inc();
            if counts.len() < MAX_COUNTED_ROLLOUTS || counts.contains_key(rollout) {
                let c = counts.entry(rollout.clone()).or_default();
                match cohort {
                    Cohort::Treatment => c.treatment_sessions = c.treatment_sessions.saturating_add(1),
                    Cohort::Baseline => c.baseline_sessions = c.baseline_sessions.saturating_add(1),
                }
            }
        }
        assignment
    }

    /// A placed session failed (to start, or later with an error): counted per rollout
    /// and cohort with `reason`, and gossiped for the control plane's error guard.
    pub fn rollout_failed(&self, assignment: &crate::rollouts::Assignment, reason: &str) {
        let mut counts = self.lock_counts();
        for (rollout, cohort) in &assignment.variants {
            let labels = crate::metrics::CohortReasonLabels {
                rollout: rollout.clone(),
                cohort: cohort.as_str().to_owned(),
                reason: reason.to_owned(),
            };
            self.metrics.rollout_errors.get_or_create(&labels).inc();
            if let Some(c) = counts.get_mut(rollout) {
                match cohort {
                    Cohort::Treatment => c.treatment_errors = c.treatment_errors.saturating_add(1),
                    Cohort::Baseline => c.baseline_errors = c.baseline_errors.saturating_add(1),
                }
            }
        }
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CohortCounts>> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The counts of the rollouts this edge still knows (others are forgotten).
    fn rollout_counts(&self) -> BTreeMap<String, CohortCounts> {
        let records = self.control.as_ref().map(|c| c.snapshot().rollouts).unwrap_or_default();
        let mut counts = self.lock_counts();
        if !records.is_empty() {
            counts.retain(|id, _| records.contains_key(id));
        }
        counts.clone()
    }

    /// The server config for a new QUIC connection when a rollout that treats the whole
    /// edge changes its congestion controller (`None`: the endpoint's default, cubic),
    /// counted per controller.
    fn congestion_config(&self) -> Option<Arc<quinn::ServerConfig>> {
        let records = self.control.as_ref().map(|c| c.snapshot().rollouts).unwrap_or_default();
        let live = crate::rollouts::live(&records);
        let tripped = self.cpu_guard().tripped();
        let me = self.config.node_id.as_str();
        let controller = crate::rollouts::edge_congestion(&live, &tripped, &self.config.region, me);
        let name = match controller {
            None | Some(Congestion::Cubic) => "cubic",
            Some(Congestion::Bbr) => "bbr",
            Some(Congestion::NewReno) => "new_reno",
        };
        let labels = crate::metrics::ControllerLabels { controller: name.into() };
        self.metrics.congestion_connections.get_or_create(&labels).inc();
        let controller = controller?;
        self.congestion.iter().find(|(c, _)| *c == controller).map(|(_, config)| Arc::clone(config))
    }

    fn cpu_guard(&self) -> std::sync::MutexGuard<'_, crate::rollouts::CpuGuard> {
        self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A local publisher started or stopped: the control plane should hear now.
    pub fn streams_changed(&self) {
        if let Some(control) = &self.control {
            control.poke();
        }
    }

    /// Sessions served now: QUIC publishers and viewers, WebRTC sessions.
    pub fn sessions(&self) -> u64 {
        let quic: i64 = ["publisher", "viewer"]
            .iter()
            .map(|role| {
                self.metrics.connections.get_or_create(&RoleLabels { role: (*role).to_owned() }).get()
            })
            .sum();
        u64::try_from(quic).unwrap_or(0) + self.webrtc.session_count() as u64
    }

    /// The keys this edge gossips.
    fn self_info(&self, me: &Registration) -> SelfInfo {
        let (origins, carries) = self.registry.stream_names();
        let cpu_total = cpu_seconds(std::process::id()).unwrap_or(0.0);
        let (cpu, bytes_per_s) = self.rates.sample(cpu_total, self.metrics.bytes_out.get());
        SelfInfo {
            role: "edge".into(),
            region: me.region.clone(),
            version: me.version.clone(),
            quic_addr: me.quic_addr.clone(),
            http_addr: me.http_addr.clone(),
            draining: self.draining.load(Ordering::Relaxed),
            sessions: self.sessions(),
            cpu,
            bytes_per_s,
            origins,
            carries,
            trips: self.cpu_guard().tripped(),
            rollout_counts: self.rollout_counts(),
        }
    }
}

/// An edge whose sockets are bound; [`BoundEdge::run`] serves until shutdown.
pub struct BoundEdge {
    state: Arc<EdgeState>,
    endpoint: quinn::Endpoint,
    http: tokio::net::TcpListener,
    metrics_registry: Arc<MetricsRegistry>,
}

impl BoundEdge {
    /// Binds the QUIC and HTTP sockets.
    pub async fn bind(config: EdgeConfig) -> Result<Self> {
        let client_auth = match &config.cluster_tls {
            Some(c) => ClientAuth::Optional(c.ca.clone()),
            None => ClientAuth::None,
        };
        let server =
            tls::server_config_with(&config.identity, &config.tuning, ferry_proto::ALPN, &client_auth)?;
        // The same server with each congestion controller, for rollouts that change it.
        let mut congestion = Vec::new();
        for controller in [Congestion::Cubic, Congestion::Bbr, Congestion::NewReno] {
            let mut with = server.clone();
            with.transport_config(config.tuning.transport_with(controller)?);
            congestion.push((controller, Arc::new(with)));
        }
        let endpoint = quinn::Endpoint::server(server, config.quic_listen)?;
        let http = tokio::net::TcpListener::bind(config.http_listen).await?;
        let metrics = EdgeMetrics::default();
        let mut metrics_registry = MetricsRegistry::default();
        metrics.register(&mut metrics_registry);
        let gossip_metrics = GossipMetrics::default();
        gossip_metrics.register(&mut metrics_registry);
        let upstreams = upstream::Upstreams::new(&config)?;
        let quic_addr = endpoint.local_addr()?;
        let http_addr = http.local_addr()?;
        let registration = Registration {
            id: config.node_id.to_string(),
            region: config.region.clone(),
            quic_addr: config.advertised(quic_addr)?,
            http_addr: config.advertised(http_addr)?,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: config.capacity,
        };
        let signer = match &config.cluster_tls {
            Some(tls) => Some(crate::cluster::proof::Signer::load(tls)?),
            None => None,
        };
        let control = match config.control_plane.is_empty() {
            true => None,
            false => Some(ControlLink::new(
                config.control_plane.clone(),
                config.control_token.clone(),
                registration.clone(),
                signer,
            )),
        };
        let state = Arc::new(EdgeState {
            registry: Registry::new(metrics.clone()),
            metrics,
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            media_shutdown: CancellationToken::new(),
            background: CancellationToken::new(),
            upstreams,
            gossip: OnceLock::new(),
            control,
            next_session: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            webrtc: Arc::new(WebRtc::new(config.webrtc.clone())),
            config,
            rates: Rates::default(),
            guard: std::sync::Mutex::new(crate::rollouts::CpuGuard::default()),
            counts: std::sync::Mutex::new(BTreeMap::new()),
            congestion,
        });
        if let Some(gossip_config) = state.config.gossip.clone() {
            let weak = Arc::downgrade(&state);
            let info: SelfInfoFn = Arc::new(move || match weak.upgrade() {
                Some(state) => state.self_info(&registration),
                None => SelfInfo::default(),
            });
            let gossip =
                Gossip::start(gossip_config, info, gossip_metrics, &state.tracker, state.background.clone())
                    .await?;
            let _ = state.gossip.set(gossip);
        }
        Ok(Self { state, endpoint, http, metrics_registry: Arc::new(metrics_registry) })
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Result<SocketAddr> {
        Ok(self.http.local_addr()?)
    }

    /// Serves until `shutdown` is cancelled, then drains: GOAWAY to every session,
    /// wait up to the grace period, close the endpoint.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let BoundEdge { state, endpoint, http, metrics_registry } = self;
        let http_shutdown = CancellationToken::new();
        let http_task = state.tracker.spawn(http::serve(
            http,
            Arc::clone(&state),
            metrics_registry,
            http_shutdown.clone(),
        ));
        if let Some(control) = state.control.clone() {
            let weak = Arc::downgrade(&state);
            let originated = move || weak.upgrade().map(|s| s.registry.stream_names().0).unwrap_or_default();
            state.tracker.spawn(control.run(originated, state.background.clone(), shutdown.clone()));
            state.tracker.spawn(guard_loop(Arc::clone(&state)));
        }
        state.ready.store(true, Ordering::Relaxed);
        tracing::info!(node = %state.config.node_id, quic = ?endpoint.local_addr().ok(), "edge serving");

        accept_loop(&state, &endpoint, &shutdown).await;

        // Drain. First say so in gossip (routing stops sending sessions here) while
        // still serving for a few rounds; then stop accepting, tell sessions to go
        // away (they re-route), and give them a deadline.
        state.ready.store(false, Ordering::Relaxed);
        state.draining.store(true, Ordering::Relaxed);
        if let Some(gossip) = &state.config.gossip {
            let announce = gossip.interval * DRAIN_ANNOUNCE_ROUNDS;
            let keep_serving = CancellationToken::new();
            let _ = tokio::time::timeout(announce, accept_loop(&state, &endpoint, &keep_serving)).await;
        }
        state.shutdown.cancel();
        let grace = state.config.shutdown_grace;
        let whep_grace = state.config.whep_drain_grace.min(grace);
        let drained = tokio::time::timeout(grace, async {
            // WHEP viewers cannot be told to go away: they keep playing (their tracks
            // and upstream links stay up) until they leave or the WHEP grace ends; then
            // they are closed and re-route by themselves.
            let _ = tokio::time::timeout(whep_grace, wait_for_webrtc_sessions(&state)).await;
            state.media_shutdown.cancel();
            state.webrtc.end_all();
            state.registry.close_all();
            wait_for_sessions(&state).await;
        })
        .await
        .is_ok();
        // The deadline may have cut the above short.
        state.media_shutdown.cancel();
        state.webrtc.end_all();
        state.registry.close_all();
        endpoint.close(ErrorCode::GoingAway.as_u32().into(), b"edge shutting down");
        state.background.cancel();
        if let Some(gossip) = state.gossip.get() {
            gossip.shutdown().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        http_shutdown.cancel();
        state.tracker.close();
        if tokio::time::timeout(Duration::from_secs(2), state.tracker.wait()).await.is_err() {
            tracing::warn!(tasks = state.tracker.len(), "tasks still running at exit");
        }
        drop(http_task);
        tracing::info!(drained, "edge stopped");
        Ok(())
    }
}

/// How often the CPU guard samples process CPU (one sample per tick).
pub const CPU_SAMPLE: Duration = Duration::from_millis(250);

/// Every [`CPU_SAMPLE`]: sample process CPU, feed the rollouts' CPU guard (a trip takes
/// effect for new sessions at once and is gossiped), and burn CPU for
/// `fault.cpu_burn_ms_per_s` drills on edges that allow fault injection.
async fn guard_loop(state: Arc<EdgeState>) {
    let rates = Rates::default();
    let mut tick = tokio::time::interval(CPU_SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.background.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (cpu, _) = rates.sample(cpu_seconds(std::process::id()).unwrap_or(0.0), 0);
        let records = state.control.as_ref().map(|c| c.snapshot().rollouts).unwrap_or_default();
        let live = crate::rollouts::live(&records);
        let tripped_now = state.cpu_guard().observe(cpu, &live, &records);
        if let (false, Some(control)) = (tripped_now.is_empty(), &state.control) {
            control.rollouts_changed();
        }
        for rollout in tripped_now {
            tracing::warn!(%rollout, cpu, "rollout tripped by the CPU guard: new sessions get the baseline");
            let labels = crate::metrics::GuardLabels { rollout, guard: "cpu".into() };
            state.metrics.rollout_trips.get_or_create(&labels).inc();
        }
        if !state.config.allow_fault_injection {
            continue;
        }
        let tripped = state.cpu_guard().tripped();
        let me = state.config.node_id.as_str();
        let burn = crate::rollouts::burn_ms_per_s(&live, &tripped, &state.config.region, me);
        if burn > 0 {
            // A drill: spin on a blocking thread so the runtime keeps serving.
            let spin = CPU_SAMPLE * burn / 1000;
            let _ = tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < spin {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
            .await;
        }
    }
}

async fn wait_for_webrtc_sessions(state: &EdgeState) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while state.webrtc.session_count() > 0 {
        tick.tick().await;
    }
}

async fn wait_for_sessions(state: &EdgeState) {
    // Sessions end once their peers leave after GOAWAY; only the HTTP task and the
    // background tasks (gossip; the control link and the rollout guard) remain.
    let background = 1 + usize::from(state.gossip.get().is_some()) + 2 * usize::from(state.control.is_some());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while state.tracker.len() > background {
        tick.tick().await;
    }
}

/// Accepts connections until shutdown. A connection permit is taken *before*
/// accepting, so at most `max_connections` are served at once.
async fn accept_loop(state: &Arc<EdgeState>, endpoint: &quinn::Endpoint, shutdown: &CancellationToken) {
    let limit = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        state.metrics.connections_accepted.inc();
        let connecting = match state.congestion_config() {
            Some(config) => incoming.accept_with(config),
            None => incoming.accept(),
        };
        let connecting = match connecting {
            Ok(connecting) => connecting,
            Err(e) => {
                tracing::debug!(error = %e, "accepting a connection failed");
                continue;
            }
        };
        let session = state.next_session.fetch_add(1, Ordering::Relaxed);
        let task_state = Arc::clone(state);
        state.tracker.spawn(async move {
            session::run(task_state, connecting, session).await;
            drop(permit);
        });
    }
}
