//! A viewer's latency budget, which a rollout may change on a live session.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A viewer's latency budget: the baseline (what the client asked for, or the edge's
/// default) and a rollout treatment's `max_lag_ms`, which falls back to the baseline
/// when the rollout stops treating the session. Clones share the treatment, so one
/// fallback reaches every subscription of the session.
#[derive(Debug, Clone)]
pub struct LagBudget {
    baseline: Duration,
    cap: Duration,
    /// The treatment's budget in ms; 0: none (the baseline applies).
    treatment_ms: Arc<AtomicU32>,
}

impl LagBudget {
    /// `treatment_ms` (capped at `cap`) while treated, else `baseline`.
    pub fn new(baseline: Duration, treatment_ms: Option<u32>, cap: Duration) -> Self {
        let ms = treatment_ms.map_or(0, |ms| ms.max(1));
        LagBudget { baseline, cap, treatment_ms: Arc::new(AtomicU32::new(ms)) }
    }

    /// The same treatment over another baseline (a subscription's own request).
    pub fn with_baseline(&self, baseline: Duration) -> Self {
        LagBudget { baseline, cap: self.cap, treatment_ms: Arc::clone(&self.treatment_ms) }
    }

    /// The budget now.
    pub fn current(&self) -> Duration {
        match self.treatment_ms.load(Ordering::Relaxed) {
            0 => self.baseline,
            ms => Duration::from_millis(ms.into()).min(self.cap),
        }
    }

    /// Whether a treatment's budget applies.
    pub fn treated(&self) -> bool {
        self.treatment_ms.load(Ordering::Relaxed) != 0
    }

    /// Drops the treatment's budget; returns whether there was one.
    pub fn fall_back(&self) -> bool {
        self.treatment_ms.swap(0, Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_budget_falls_back_to_each_subscriptions_baseline_once() {
        let cap = Duration::from_secs(30);
        let session = LagBudget::new(Duration::from_millis(500), Some(60_000), cap);
        let sub = session.with_baseline(Duration::from_millis(800));
        assert!(session.treated());
        assert_eq!((session.current(), sub.current()), (cap, cap), "capped");
        assert!(sub.fall_back(), "one fallback reaches every clone");
        assert!(!session.fall_back());
        assert_eq!(session.current(), Duration::from_millis(500));
        assert_eq!(sub.current(), Duration::from_millis(800));
        let untreated = LagBudget::new(Duration::from_millis(500), None, cap);
        assert!(!untreated.treated() && !untreated.fall_back());
        assert_eq!(LagBudget::new(Duration::ZERO, Some(0), cap).current(), Duration::from_millis(1));
    }
}
