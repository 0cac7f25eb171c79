//! Where each session stands in the rollouts this edge knows: placing new sessions,
//! moving live ones back when a rollout stops treating them, counting both per
//! cohort (gossiped for the control plane's error guard), and the congestion
//! controller a rollout gives new connections.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_proto::cohort::Cohort;
use ferry_proto::rollout::{CohortCounts, Congestion};

use super::EdgeState;
use crate::rollouts::{Assignment, CpuGuard, RolloutView};
use crate::track::LagBudget;

/// Rollouts whose session counts an edge keeps (and gossips) at most.
const MAX_COUNTED_ROLLOUTS: usize = 64;

impl EdgeState {
    /// The rollouts this edge knows (the last ones read from the control plane),
    /// parsed once per change.
    pub fn rollouts(&self) -> Arc<RolloutView> {
        self.control.as_ref().map(|c| c.rollouts()).unwrap_or_default()
    }

    /// Where a session stands in every rollout this edge knows (the last ones read from
    /// the control plane), not counted.
    fn decide(&self, session_id: &str, tags: &[String]) -> Assignment {
        let view = self.rollouts();
        let session = ferry_proto::cohort::Session {
            id: session_id,
            tags,
            region: &self.config.region,
            edge: self.config.node_id.as_str(),
        };
        let assignment = crate::rollouts::assign(&view.live, &session, &self.cpu_guard().tripped());
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
        assignment: &Assignment,
        lag: &LagBudget,
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

    async fn fall_back_when_untreated(&self, assignment: &Assignment, lag: &LagBudget) {
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
                tracing::info!(session = %assignment.session_id, rollouts = %left.join(", "), "session moved back to the baseline");
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
    pub fn assign(&self, session_id: &str, tags: &[String]) -> Assignment {
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
    pub fn rollout_failed(&self, assignment: &Assignment, reason: &str) {
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
    pub(crate) fn rollout_counts(&self) -> BTreeMap<String, CohortCounts> {
        let view = self.rollouts();
        let mut counts = self.lock_counts();
        if !view.records.is_empty() {
            counts.retain(|id, _| view.records.contains_key(id));
        }
        counts.clone()
    }

    /// The server config for a new QUIC connection when a rollout that treats the whole
    /// edge changes its congestion controller (`None`: the endpoint's default, cubic),
    /// counted per controller.
    pub(crate) fn congestion_config(&self) -> Option<Arc<quinn::ServerConfig>> {
        let view = self.rollouts();
        let tripped = self.cpu_guard().tripped();
        let me = self.config.node_id.as_str();
        let controller = crate::rollouts::edge_congestion(&view.live, &tripped, &self.config.region, me);
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

    pub(crate) fn cpu_guard(&self) -> std::sync::MutexGuard<'_, CpuGuard> {
        self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
