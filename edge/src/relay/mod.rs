//! The QUIC relay at the heart of an edge: the state every task of an edge shares,
//! publisher and viewer sessions, delivery to subscribers, ingest into track
//! buffers, the upstream links that pull streams this edge lacks, and where each
//! session stands in the rollouts.
//!
//! # Layout
//! - `mod.rs`: [`EdgeState`] and [`SessionPlane`], the seam to sessions served
//!   beside QUIC (WebRTC, a higher module, implements it).
//! - `cohorts`: placing sessions in rollouts, counting them, the CPU guard's view.
//! - `accept`: the QUIC accept loop (a permit before every accept).
//! - `session` / `session_publish`: one QUIC connection: hello, then the publisher or
//!   subscriber loop.
//! - `deliver`: one subscription's delivery — a QUIC stream per group, stale groups reset.
//! - `ingest`: reading group streams into track buffers.
//! - `registry`: the streams this edge knows.
//! - `upstream`: the shared link to the upstream edge (one subscription per track).

mod accept;
mod cohorts;
mod deliver;
mod ingest;
mod registry;
mod session;
mod session_publish;
mod upstream;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ferry_net::gossip::{Gossip, SelfInfo};
use ferry_proto::rollout::{CohortCounts, Congestion};
use ferry_proto::ErrorCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Access;
use crate::cluster::control::{ControlLink, LocalPublisher, LocalPublishers, Registration};
use crate::cluster::load::{cpu_seconds, Rates};
use crate::cluster::ClusterView;
use crate::config::EdgeConfig;
use crate::metrics::{EdgeMetrics, RoleLabels};
use crate::rollouts::CpuGuard;

pub use accept::accept_loop;
pub use registry::{Registry, Revocation};
pub use session::find_track;
pub use upstream::Upstreams;

impl LocalPublishers for EdgeState {
    fn publishers(&self) -> Vec<LocalPublisher> {
        let list = self.registry.publishers();
        list.into_iter()
            .map(|(stream, session, takeover)| LocalPublisher { stream, session, takeover })
            .collect()
    }

    fn revoke(&self, stream: &str, session: u64, reason: ErrorCode) {
        self.registry.revoke(stream, session, reason);
    }

    fn origin_live(&self, edge: &str, stream: &str) -> bool {
        self.cluster().origin_live(edge, stream)
    }
}

/// Sessions an edge serves beside its QUIC ones (WHIP/WHEP). The WebRTC module
/// implements it; the relay only counts them and ends them on drain.
pub trait SessionPlane: Send + Sync {
    /// Sessions now (publishers and viewers).
    fn session_count(&self) -> usize;
    /// Ends every session (the edge is shutting down).
    fn end_all(&self);
}

/// State shared by every task of one edge.
pub struct EdgeState {
    pub config: EdgeConfig,
    pub metrics: EdgeMetrics,
    pub registry: Registry,
    pub tracker: TaskTracker,
    /// Drain starts: QUIC sessions get GOAWAY, WHIP sessions end.
    pub shutdown: CancellationToken,
    /// The media plane stops: WHEP sessions and upstream links end (after the WHEP
    /// drain grace).
    pub media_shutdown: CancellationToken,
    pub upstreams: Upstreams,
    /// Health gossip, once started.
    pub gossip: OnceLock<Arc<Gossip>>,
    /// Registration and watch on the control plane.
    pub control: Option<Arc<ControlLink>>,
    /// Stops background work (gossip, control link) after the sessions drained.
    pub background: CancellationToken,
    pub(crate) rates: Rates,
    /// The edge-local CPU guard of rollouts.
    pub(crate) guard: std::sync::Mutex<CpuGuard>,
    /// Sessions and errors per rollout and cohort since start (gossiped).
    pub(crate) counts: std::sync::Mutex<BTreeMap<String, CohortCounts>>,
    /// The QUIC server config per congestion controller.
    pub(crate) congestion: Vec<(Congestion, Arc<quinn::ServerConfig>)>,
    pub next_session: AtomicU64,
    pub ready: AtomicBool,
    /// Shutting down: gossiped so routing sends new sessions elsewhere.
    pub draining: AtomicBool,
    /// Sessions served beside QUIC (WebRTC): counted in this edge's load, ended when
    /// it drains.
    pub sessions_plane: Arc<dyn SessionPlane>,
    /// Who may publish and watch.
    pub access: Arc<Access>,
}

impl EdgeState {
    /// What the cluster sees of this edge.
    pub fn cluster(&self) -> ClusterView {
        ClusterView { gossip: self.gossip.get().cloned(), control: self.control.clone() }
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
        u64::try_from(quic).unwrap_or(0) + self.sessions_plane.session_count() as u64
    }

    /// The keys this edge gossips.
    pub(crate) fn self_info(&self, me: &Registration) -> SelfInfo {
        let listed = self.registry.stream_names(ferry_net::gossip::MAX_LISTED_STREAMS);
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
            origins: listed.origins,
            origins_unlisted: listed.origins_unlisted,
            carries: listed.carries,
            trips: self.cpu_guard().tripped(),
            rollout_counts: self.rollout_counts(),
        }
    }
}
