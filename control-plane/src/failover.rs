//! The leader's failover decision (sans-IO): gossip says an edge is dead; the leader
//! confirms it with its own view held for a grace period, then commits
//! [`crate::state::Command::EdgeFailed`] once per death.
//!
//! Gossip on one voter can be wrong for a moment (a GC pause, a dropped packet burst);
//! the grace period keeps such blips from marking streams "origin lost". An edge that
//! comes back alive is forgotten, so a later death is handled again — also one of the
//! same process (stopped, then running again, then dead): every death gets a request
//! id of its own, so the control plane's idempotency never answers a new death with an
//! old one's outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Default time an edge must stay dead in this voter's gossip view before the leader
/// commits the reaction.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(1);

/// One edge as the leader's gossip sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub id: String,
    /// Bumped by every restart of the process.
    pub generation: u64,
    pub alive: bool,
}

/// A death to commit: the edge, its generation, and the request id of this death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    pub edge: String,
    pub generation: u64,
    pub request_id: String,
}

/// Tracks deaths and decides when to commit.
#[derive(Debug, Default)]
pub struct Failover {
    grace: Duration,
    /// Unique to this tracker (the voter and when it started), so request ids of two
    /// voters' trackers never meet.
    nonce: String,
    /// Deaths seen so far, numbering each.
    deaths: u64,
    /// First time each (edge, generation) was seen dead, and that death's number.
    dead_since: BTreeMap<(String, u64), (Instant, u64)>,
    /// Deaths already committed.
    committed: BTreeSet<(String, u64)>,
}

impl Failover {
    /// `nonce`: unique to this tracker among every voter's, ever (its request ids
    /// include it).
    pub fn new(grace: Duration, nonce: impl Into<String>) -> Self {
        Failover { grace, nonce: nonce.into(), ..Failover::default() }
    }

    /// Feeds the current view. Returns the edges whose failure should be committed now:
    /// registered (`is_registered`), dead for at least the grace period, with something
    /// to change (`has_work`), and not committed before for this generation.
    pub fn observe(
        &mut self,
        now: Instant,
        view: &[Observed],
        is_registered: impl Fn(&str) -> bool,
        has_work: impl Fn(&str) -> bool,
    ) -> Vec<Death> {
        let mut due = Vec::new();
        for o in view {
            let key = (o.id.clone(), o.generation);
            if o.alive {
                self.dead_since.remove(&key);
                self.committed.remove(&key);
                continue;
            }
            let (since, number) = match self.dead_since.get(&key) {
                Some(seen) => *seen,
                None => {
                    self.deaths += 1;
                    self.dead_since.insert(key.clone(), (now, self.deaths));
                    (now, self.deaths)
                }
            };
            let confirmed = now.saturating_duration_since(since) >= self.grace;
            if confirmed && !self.committed.contains(&key) && is_registered(&o.id) && has_work(&o.id) {
                let request_id = format!("failover-{}-{}-{}-{number}", o.id, o.generation, self.nonce);
                due.push(Death { edge: o.id.clone(), generation: o.generation, request_id });
            }
        }
        // Forget members gossip no longer reports (bounded by the member count).
        let present: BTreeSet<(String, u64)> = view.iter().map(|o| (o.id.clone(), o.generation)).collect();
        self.dead_since.retain(|k, _| present.contains(k));
        self.committed.retain(|k| present.contains(k));
        due
    }

    /// Records that the reaction for `(edge, generation)` was committed.
    pub fn committed(&mut self, edge: &str, generation: u64) {
        self.committed.insert((edge.to_owned(), generation));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    fn view(alive: &[(&str, u64, bool)]) -> Vec<Observed> {
        alive.iter().map(|(id, g, a)| Observed { id: (*id).into(), generation: *g, alive: *a }).collect()
    }

    #[test]
    fn a_death_is_committed_once_after_the_grace_period() {
        let t0 = Instant::now();
        let mut f = Failover::new(Duration::from_secs(1), "v1");
        let dead = view(&[("a", 1, false), ("b", 1, true)]);
        assert!(f.observe(t0, &dead, |_| true, |_| true).is_empty(), "not before the grace period");
        assert!(f.observe(t0 + Duration::from_millis(999), &dead, |_| true, |_| true).is_empty());
        let due = f.observe(t0 + Duration::from_secs(1), &dead, |_| true, |_| true);
        assert_eq!(edges(&due), vec![("a".to_owned(), 1)]);
        // Until the commit lands it is proposed again; afterwards never.
        assert_eq!(f.observe(t0 + Duration::from_secs(2), &dead, |_| true, |_| true).len(), 1);
        f.committed("a", 1);
        assert!(f.observe(t0 + Duration::from_secs(3), &dead, |_| true, |_| true).is_empty());
    }

    #[test]
    fn a_blip_shorter_than_the_grace_period_commits_nothing() {
        let t0 = Instant::now();
        let mut f = Failover::new(Duration::from_secs(1), "v1");
        f.observe(t0, &view(&[("a", 1, false)]), |_| true, |_| true);
        f.observe(t0 + Duration::from_millis(500), &view(&[("a", 1, true)]), |_| true, |_| true);
        // Dead again: the clock starts over.
        let again = view(&[("a", 1, false)]);
        assert!(f.observe(t0 + Duration::from_millis(1200), &again, |_| true, |_| true).is_empty());
        assert_eq!(f.observe(t0 + Duration::from_millis(2200), &again, |_| true, |_| true).len(), 1);
    }

    #[test]
    fn unregistered_edges_and_deaths_with_nothing_to_change_are_skipped() {
        let t0 = Instant::now();
        let mut f = Failover::new(Duration::ZERO, "v1");
        let dead = view(&[("rogue", 1, false), ("idle", 1, false), ("origin", 1, false)]);
        let due = f.observe(t0, &dead, |id| id != "rogue", |id| id == "origin");
        assert_eq!(edges(&due), vec![("origin".to_owned(), 1)]);
    }

    #[test]
    fn a_restarted_edge_that_dies_again_is_handled_again() {
        let t0 = Instant::now();
        let mut f = Failover::new(Duration::ZERO, "v1");
        assert_eq!(f.observe(t0, &view(&[("a", 1, false)]), |_| true, |_| true).len(), 1);
        f.committed("a", 1);
        // The restart shows up as a new generation, alive; then it dies.
        f.observe(t0, &view(&[("a", 1, false), ("a", 2, true)]), |_| true, |_| true);
        let due = f.observe(t0, &view(&[("a", 1, false), ("a", 2, false)]), |_| true, |_| true);
        assert_eq!(edges(&due), vec![("a".to_owned(), 2)]);
    }

    /// The soak found it: an edge stopped (SIGSTOP) and continued keeps its generation;
    /// when it later dies, that death must not reuse the first one's request id, or the
    /// control plane answers it with the first commit's outcome and applies nothing.
    #[test]
    fn every_death_of_the_same_process_gets_a_request_id_of_its_own() {
        let t0 = Instant::now();
        let mut f = Failover::new(Duration::ZERO, "v1");
        let first = f.observe(t0, &view(&[("a", 1, false)]), |_| true, |_| true);
        f.committed("a", 1);
        f.observe(t0, &view(&[("a", 1, true)]), |_| true, |_| true);
        let second = f.observe(t0, &view(&[("a", 1, false)]), |_| true, |_| true);
        assert_eq!(edges(&second), vec![("a".to_owned(), 1)]);
        assert_ne!(first[0].request_id, second[0].request_id);
        // Retried until committed: the same death, the same id.
        let again = f.observe(t0, &view(&[("a", 1, false)]), |_| true, |_| true);
        assert_eq!(again, second);
        // Another voter's tracker never makes the same ids.
        let mut other = Failover::new(Duration::ZERO, "v2");
        let theirs = other.observe(t0, &view(&[("a", 1, false)]), |_| true, |_| true);
        assert_ne!(theirs[0].request_id, first[0].request_id);
    }

    fn edges(due: &[Death]) -> Vec<(String, u64)> {
        due.iter().map(|d| (d.edge.clone(), d.generation)).collect()
    }
}
