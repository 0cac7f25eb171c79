//! An edge's lifecycle: binding its sockets, serving (QUIC relay, WebRTC, HTTP,
//! gossip, the control link, the CPU guard), and draining on shutdown: announce,
//! GOAWAY, a grace period for sessions, then close.
//!
//! This is the top of the crate: it composes the relay and the WebRTC side, which
//! meet only through [`SessionPlane`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ferry_net::gossip::{Gossip, GossipMetrics, SelfInfo, SelfInfoFn};
use ferry_net::http::HttpClient;
use ferry_net::http_server::HttpServerMetrics;
use ferry_net::proof::Signer;
use ferry_net::tls::{self, ClientAuth, ClientTrust};
use ferry_proto::rollout::Congestion;
use ferry_proto::ErrorCode;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Access;
use crate::cluster::control::{ControlLink, Registration};
use crate::cluster::load::{cpu_seconds, Rates};
use crate::config::EdgeConfig;
use crate::http;
use crate::metrics::EdgeMetrics;
use crate::relay::{accept_loop, EdgeState, Registry, SessionPlane, Upstreams};
use crate::rollouts::CpuGuard;
use crate::webrtc::{WebRtc, WebRtcEdge};
use crate::{Error, Result};

/// Gossip rounds a draining edge keeps serving so every peer learns it is draining.
const DRAIN_ANNOUNCE_ROUNDS: u32 = 5;

/// An edge whose sockets are bound; [`BoundEdge::run`] serves until shutdown.
pub struct BoundEdge {
    state: Arc<EdgeState>,
    webrtc: Arc<WebRtc>,
    endpoint: quinn::Endpoint,
    http: tokio::net::TcpListener,
    metrics_registry: Arc<MetricsRegistry>,
    http_metrics: HttpServerMetrics,
    cert_metrics: crate::certs::CertMetrics,
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
        let endpoint = quinn::Endpoint::server(server, config.quic_listen)
            .map_err(Error::bind("QUIC (--quic-listen)", config.quic_listen))?;
        let http = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(Error::bind("HTTP (--http-listen)", config.http_listen))?;
        let metrics = EdgeMetrics::default();
        let mut metrics_registry = MetricsRegistry::default();
        metrics.register(&mut metrics_registry);
        let gossip_metrics = GossipMetrics::default();
        gossip_metrics.register(&mut metrics_registry);
        let http_metrics = HttpServerMetrics::default();
        http_metrics.register(&mut metrics_registry);
        let cert_metrics = crate::certs::CertMetrics::default();
        if config.certificate.is_some() {
            cert_metrics.register(&mut metrics_registry);
        }
        let upstreams = Upstreams::new(&config)?;
        let quic_addr =
            endpoint.local_addr().map_err(Error::bind("QUIC (--quic-listen)", config.quic_listen))?;
        let http_addr = http.local_addr().map_err(Error::bind("HTTP (--http-listen)", config.http_listen))?;
        let registration = Registration {
            id: config.node_id.to_string(),
            region: config.region.clone(),
            quic_addr: config.advertised(quic_addr)?,
            http_addr: config.advertised(http_addr)?,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: config.capacity,
        };
        let signer = match &config.cluster_tls {
            Some(tls) => Some(Signer::load(tls)?),
            None => None,
        };
        let control = match config.control_plane.is_empty() {
            true => None,
            false => {
                // https:// control planes are verified against the cluster CA, and the
                // edge presents its cluster certificate.
                let http = match &config.cluster_tls {
                    Some(tls) => HttpClient::new(Some(&ClientTrust::Cluster(tls.clone())))?,
                    None => HttpClient::plain(),
                };
                Some(ControlLink::new(
                    config.control_plane.clone(),
                    config.control_token.clone(),
                    http,
                    registration.clone(),
                    signer,
                ))
            }
        };
        if let Some(control) = &control {
            control.register_metrics(&mut metrics_registry);
        }
        let webrtc = Arc::new(WebRtc::new(config.webrtc.clone()));
        let access = Arc::new(Access::load(&config.access)?);
        if access.allows_anonymous() {
            tracing::warn!("serving clients without tokens (--allow-anonymous): for development only");
        }
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
            sessions_plane: Arc::clone(&webrtc) as Arc<dyn SessionPlane>,
            access,
            config,
            rates: Rates::default(),
            guard: std::sync::Mutex::new(CpuGuard::default()),
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
        Ok(Self {
            state,
            webrtc,
            endpoint,
            http,
            metrics_registry: Arc::new(metrics_registry),
            http_metrics,
            cert_metrics,
        })
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> Result<SocketAddr> {
        self.endpoint.local_addr().map_err(Error::bind("QUIC (--quic-listen)", self.state.config.quic_listen))
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Result<SocketAddr> {
        self.http.local_addr().map_err(Error::bind("HTTP (--http-listen)", self.state.config.http_listen))
    }

    /// Serves until `shutdown` is cancelled, then drains: GOAWAY to every session,
    /// wait up to the grace period, close the endpoint.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let BoundEdge { state, webrtc, endpoint, http, metrics_registry, http_metrics, cert_metrics } = self;
        if let Some((issuance, not_after)) = state.config.certificate.clone() {
            state.tracker.spawn(issuance.renew_loop(not_after, cert_metrics, state.background.clone()));
        }
        let http_shutdown = CancellationToken::new();
        let webrtc_routes = crate::webrtc::http::routes(WebRtcEdge::new(Arc::clone(&state), webrtc));
        let http_task = state.tracker.spawn(http::serve(
            http,
            Arc::clone(&state),
            metrics_registry,
            http_metrics,
            webrtc_routes,
            http_shutdown.clone(),
        ));
        if let Some(control) = state.control.clone() {
            let local = Arc::clone(&state) as Arc<dyn crate::cluster::control::LocalPublishers>;
            state.tracker.spawn(control.run(local, state.background.clone(), shutdown.clone()));
            state.tracker.spawn(guard_loop(Arc::clone(&state)));
        }
        state.tracker.spawn(Arc::clone(&state.access).reload_loop(state.background.clone()));
        state.ready.store(true, Ordering::Relaxed);
        let quic = endpoint.local_addr().map_or_else(|_| "unbound".to_owned(), |a| a.to_string());
        tracing::info!(node = %state.config.node_id, %quic, "edge serving");

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
            state.sessions_plane.end_all();
            state.registry.close_all();
            wait_for_sessions(&state).await;
        })
        .await
        .is_ok();
        // The deadline may have cut the above short.
        state.media_shutdown.cancel();
        state.sessions_plane.end_all();
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
        let view = state.rollouts();
        let tripped_now = state.cpu_guard().observe(cpu, &view.live, &view.records);
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
        let burn = crate::rollouts::burn_ms_per_s(&view.live, &tripped, &state.config.region, me);
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
    while state.sessions_plane.session_count() > 0 {
        tick.tick().await;
    }
}

async fn wait_for_sessions(state: &EdgeState) {
    // Sessions end once their peers leave after GOAWAY; only the HTTP task and the
    // background tasks (the secrets' reload; gossip; the control link and the
    // rollout guard) remain.
    let background = 2 + usize::from(state.gossip.get().is_some()) + 2 * usize::from(state.control.is_some());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while state.tracker.len() > background {
        tick.tick().await;
    }
}
