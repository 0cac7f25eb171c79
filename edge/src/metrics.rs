//! Prometheus metrics of an edge. Handles are cheap clones over shared atomics.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A subscription's identity for labels: keep cardinality to streams × tracks × roles.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    pub stream: String,
    pub track: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrackLabels {
    pub stream: String,
    pub track: String,
}

/// A rollout and a cohort.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CohortLabels {
    pub rollout: String,
    pub cohort: String,
}

/// A rollout.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub rollout: String,
}

/// A rollout and the guard that tripped it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub rollout: String,
    pub guard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

/// Why a WebRTC session failed or was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

impl ReasonLabels {
    pub fn new(reason: &str) -> Self {
        Self { reason: reason.to_owned() }
    }
}

/// A rollout, a cohort and why a session failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CohortReasonLabels {
    pub rollout: String,
    pub cohort: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

/// What a label set of a [`LiveGauges`] needs.
pub trait Labels: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static {}

impl<L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> Labels for L {}

/// A gauge family whose series exist only while their value is above zero: the
/// series of a stream that ended leave `/metrics` with it, so the page does not grow
/// with every stream name ever seen. Counts change under one lock, so a series is
/// never removed while another holder raises it.
#[derive(Clone, Debug)]
pub struct LiveGauges<L> {
    family: Family<L, Gauge>,
    counts: Arc<Mutex<HashMap<L, i64>>>,
}

impl<L: Labels> Default for LiveGauges<L> {
    fn default() -> Self {
        LiveGauges { family: Family::default(), counts: Arc::default() }
    }
}

impl<L: Labels> LiveGauges<L> {
    /// The family to register.
    pub fn family(&self) -> Family<L, Gauge> {
        self.family.clone()
    }

    /// Adds one to `labels`' series until the returned guard drops.
    pub fn hold(&self, labels: L) -> LiveGauge<L> {
        self.add(&labels, 1);
        LiveGauge { gauges: self.clone(), labels }
    }

    /// Adds `delta` (negative to take away); the series goes at zero.
    pub fn add(&self, labels: &L, delta: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(labels.clone()).or_default();
        *count = count.saturating_add(delta);
        if *count > 0 {
            self.family.get_or_create(labels).set(*count);
        } else {
            counts.remove(labels);
            self.family.remove(labels);
        }
    }

    /// The current value of `labels`' series (0 when it has none).
    pub fn get(&self, labels: &L) -> i64 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(labels).copied().unwrap_or(0)
    }
}

/// One held unit of a [`LiveGauges`] series.
pub struct LiveGauge<L: Labels> {
    gauges: LiveGauges<L>,
    labels: L,
}

impl<L: Labels> Drop for LiveGauge<L> {
    fn drop(&mut self) {
        self.gauges.add(&self.labels, -1);
    }
}

/// Everything an edge reports at `/metrics`.
#[derive(Clone, Default)]
pub struct EdgeMetrics {
    /// Open QUIC connections, by peer role (after hello).
    pub connections: Family<RoleLabels, Gauge>,
    /// QUIC connections accepted since start.
    pub connections_accepted: Counter,
    /// QUIC connection attempts turned away at accept, by reason (`per_ip`: the
    /// address holds its share; `retry`: sent a Retry to validate its address).
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// QUIC connections the edge closed on its own, by reason (`idle`: a viewer with no
    /// subscription for `--viewer-idle-timeout`).
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// QUIC handshakes in flight (from accept until done or failed); above
    /// `RETRY_ABOVE`, unvalidated addresses are sent a Retry first.
    pub handshakes: Gauge,
    /// Live tasks owned by the edge's task tracker (a leak shows here).
    pub tasks: Gauge,
    /// Active subscriptions served, by stream, track and subscriber role.
    pub subscriptions: LiveGauges<SubscriptionLabels>,
    /// Subscriptions this edge holds on its upstream, by stream and track.
    pub upstream_subscriptions: LiveGauges<TrackLabels>,
    /// New sessions by rollout and cohort.
    pub rollout_sessions: Family<CohortLabels, Counter>,
    /// Sessions that failed (refused after placement, or ended in error), by rollout, cohort and reason.
    pub rollout_errors: Family<CohortReasonLabels, Counter>,
    /// Rollout trips by this edge's guards.
    pub rollout_trips: Family<GuardLabels, Counter>,
    /// Live treatment sessions moved back to the baseline (their latency budget).
    pub rollout_moved_back: Family<RolloutLabels, Counter>,
    /// QUIC connections accepted, by the congestion controller they got.
    pub congestion_connections: Family<ControllerLabels, Counter>,
    /// Streams known here (published locally or relayed).
    pub streams: Gauge,
    /// Tracks created since start (announced by publishers, or relayed).
    pub tracks_created: Counter,
    pub frames_in: Counter,
    pub bytes_in: Counter,
    pub frames_out: Counter,
    pub bytes_out: Counter,
    /// Groups subscribers skipped because they fell behind `max_lag`.
    pub skipped_groups: Family<RoleLabels, Counter>,
    /// Group streams reset because a subscriber stalled past its budget.
    pub stale_group_resets: Counter,
    /// Frames refused by track buffers (oversized groups, too-old groups).
    pub frames_dropped: Counter,
    /// Connections or requests refused, by error code.
    pub errors: Family<CodeLabels, Counter>,
    /// Keyframe requests forwarded upstream or to publishers.
    pub keyframe_requests: Counter,
    /// Payload bytes held in track buffers.
    pub buffered_bytes: Gauge,
    /// Live WebRTC sessions, by direction (whip, whep).
    pub webrtc_sessions: Family<DirectionLabels, Gauge>,
    /// RTP packets received from WHIP publishers (in) and sent to WHEP viewers (out).
    pub rtp_packets: Family<DirectionLabels, Counter>,
    /// RTP payload bytes, in and out.
    pub rtp_bytes: Family<DirectionLabels, Counter>,
    /// Keyframe requests sent to WHIP publishers (sent) and received from WHEP viewers (received).
    pub plis: Family<DirectionLabels, Counter>,
    /// NACKs received from WHEP viewers (loss reports; answered only for a rollout's `webrtc_nack`).
    pub nacks: Counter,
    /// WebRTC sessions refused or ended by an error, by reason.
    pub webrtc_session_errors: Family<ReasonLabels, Counter>,
    /// Clients and peers refused for their credential, by reason (QUIC and WebRTC).
    pub auth_refusals: Family<ReasonLabels, Counter>,
}

impl EdgeMetrics {
    /// Registers every metric under the `ferry_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        self.init_known_series();
        let r = registry.sub_registry_with_prefix("ferry");
        r.register("connections", "Open QUIC connections by peer role", self.connections.clone());
        r.register("connections_accepted", "QUIC connections accepted", self.connections_accepted.clone());
        r.register(
            "connections_refused",
            "QUIC connection attempts turned away at accept, by reason (per_ip: the address holds its share; retry: asked to validate its address first)",
            self.connections_refused.clone(),
        );
        r.register(
            "connections_closed",
            "QUIC connections the edge closed on its own, by reason (idle: a viewer with no subscription for --viewer-idle-timeout)",
            self.connections_closed.clone(),
        );
        r.register(
            "handshakes",
            "QUIC handshakes in flight (above 64, clients must first validate their address with a Retry)",
            self.handshakes.clone(),
        );
        r.register("tasks", "Live tasks owned by the edge", self.tasks.clone());
        r.register("subscriptions", "Active subscriptions served", self.subscriptions.family());
        r.register(
            "upstream_subscriptions",
            "Subscriptions held on the upstream edge",
            self.upstream_subscriptions.family(),
        );
        r.register(
            "rollout_sessions",
            "New sessions by rollout and cohort (treatment or baseline)",
            self.rollout_sessions.clone(),
        );
        r.register(
            "rollout_errors",
            "Sessions that failed (refused after placement, or ended in error), by rollout, cohort and reason",
            self.rollout_errors.clone(),
        );
        r.register("rollout_trips", "Rollouts tripped by this edge's guards", self.rollout_trips.clone());
        r.register(
            "rollout_moved_back_sessions",
            "Live treatment sessions moved back to the baseline when their rollout stopped treating them",
            self.rollout_moved_back.clone(),
        );
        r.register(
            "quic_congestion_connections",
            "QUIC connections accepted, by congestion controller (a rollout's congestion override)",
            self.congestion_connections.clone(),
        );
        r.register("streams", "Streams known to this edge", self.streams.clone());
        r.register(
            "tracks_created",
            "Tracks created (announced by publishers, or relayed from upstream)",
            self.tracks_created.clone(),
        );
        r.register("frames_in", "Frames received from publishers and upstreams", self.frames_in.clone());
        r.register("bytes_in", "Payload bytes received", self.bytes_in.clone());
        r.register("frames_out", "Frames sent to subscribers", self.frames_out.clone());
        r.register("bytes_out", "Payload bytes sent to subscribers", self.bytes_out.clone());
        r.register("skipped_groups", "Groups skipped by lagging subscribers", self.skipped_groups.clone());
        r.register("stale_group_resets", "Group streams reset past max_lag", self.stale_group_resets.clone());
        r.register("frames_dropped", "Frames refused by track buffers", self.frames_dropped.clone());
        r.register("errors", "Connections and requests refused, by code", self.errors.clone());
        r.register("keyframe_requests", "Keyframe requests sent upstream", self.keyframe_requests.clone());
        r.register(
            "buffered_bytes",
            "Bytes held in track buffers: payloads plus per-frame bookkeeping",
            self.buffered_bytes.clone(),
        );
        r.register("webrtc_sessions", "Live WebRTC sessions by direction", self.webrtc_sessions.clone());
        r.register("rtp_packets", "RTP packets received (in) and sent (out)", self.rtp_packets.clone());
        r.register("rtp_bytes", "RTP payload bytes received (in) and sent (out)", self.rtp_bytes.clone());
        r.register(
            "plis",
            "Keyframe requests sent to publishers or received from viewers",
            self.plis.clone(),
        );
        r.register("nacks", "NACKs received from WHEP viewers", self.nacks.clone());
        r.register(
            "webrtc_session_errors",
            "WebRTC sessions refused or failed, by reason",
            self.webrtc_session_errors.clone(),
        );
        r.register(
            "auth_refusals",
            "Clients refused for their token, and relaying peers for their certificate, by reason",
            self.auth_refusals.clone(),
        );
    }

    /// Creates the series whose label values are known up front, at zero, so alerts
    /// and dashboards see them (and `rate()` works) before the first event.
    fn init_known_series(&self) {
        let label = |s: &str| s.to_owned();
        for code in ferry_proto::ErrorCode::ALL.into_iter().filter(|c| *c != ferry_proto::ErrorCode::NoError)
        {
            let _ = self.errors.get_or_create(&CodeLabels { code: label(code.name()) });
        }
        for role in ["publisher", "viewer", "edge"] {
            let _ = self.connections.get_or_create(&RoleLabels { role: label(role) });
        }
        for role in ["viewer", "edge", "whep"] {
            let _ = self.skipped_groups.get_or_create(&RoleLabels { role: label(role) });
        }
        for direction in ["whip", "whep"] {
            let _ = self.webrtc_sessions.get_or_create(&DirectionLabels { direction: label(direction) });
        }
        for direction in ["in", "out"] {
            let _ = self.rtp_packets.get_or_create(&DirectionLabels { direction: label(direction) });
            let _ = self.rtp_bytes.get_or_create(&DirectionLabels { direction: label(direction) });
        }
        for direction in ["sent", "received"] {
            let _ = self.plis.get_or_create(&DirectionLabels { direction: label(direction) });
        }
        for reason in ["too_many_sessions", "no_free_port"] {
            let _ = self.webrtc_session_errors.get_or_create(&ReasonLabels::new(reason));
        }
        for reason in ["per_ip", "retry"] {
            let _ = self.connections_refused.get_or_create(&ReasonLabels::new(reason));
        }
        let _ = self.connections_closed.get_or_create(&ReasonLabels::new("idle"));
    }

    /// Counts a credential refused for `reason` (`token_expired`, ...).
    pub fn auth_refused(&self, reason: &str) {
        self.auth_refusals.get_or_create(&ReasonLabels::new(reason)).inc();
    }

    /// Counts a connection attempt turned away for `reason`.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.get_or_create(&ReasonLabels::new(reason)).inc();
    }

    /// Counts a connection the edge closed on its own for `reason`.
    pub fn connection_closed(&self, reason: &str) {
        self.connections_closed.get_or_create(&ReasonLabels::new(reason)).inc();
    }

    /// Counts a refusal with `code`.
    pub fn error(&self, code: ferry_proto::ErrorCode) {
        self.errors.get_or_create(&CodeLabels { code: code.name().to_owned() }).inc();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    fn page(metrics: &EdgeMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn a_subscription_series_lives_while_someone_holds_it() {
        let metrics = EdgeMetrics::default();
        let labels = |stream: &str| SubscriptionLabels {
            stream: stream.into(),
            track: "video".into(),
            role: "viewer".into(),
        };
        let empty = page(&metrics);
        let a = metrics.subscriptions.hold(labels("live/a"));
        let a2 = metrics.subscriptions.hold(labels("live/a"));
        let b = metrics.subscriptions.hold(labels("live/b"));
        let text = page(&metrics);
        assert!(
            text.contains(r#"ferry_subscriptions{stream="live/a",track="video",role="viewer"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_subscriptions{stream="live/b",track="video",role="viewer"} 1"#),
            "{text}"
        );
        drop(a);
        assert_eq!(metrics.subscriptions.get(&labels("live/a")), 1);
        drop((a2, b));
        assert_eq!(page(&metrics), empty, "no series left behind");
    }
}
