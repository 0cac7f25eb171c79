//! The leader's collection of stream records nobody publishes any more (sans-IO).
//!
//! A publisher that leaves cleanly has its edge release the stream. The records that
//! stay behind are the other endings: an origin that died (the failover marked the
//! stream "origin lost") and no publisher came back; an edge that restarted and forgot
//! what it held; a release that never reached the control plane. Each such record is
//! removed once gossip has shown it published nowhere and relayed nowhere for the
//! grace period, by a conditional release the leader commits (see
//! [`crate::state::Command::ReleaseStream`]): a record that changed since the leader
//! looked (a publisher came back) is left alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Default time a stream must stay published nowhere before its record is removed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// One stream record as the state holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub origin: String,
    pub origin_lost: bool,
    /// When the record last changed: the expiry names it, so a record rewritten since
    /// (a publisher came back) is not removed.
    pub updated_at_ms: u64,
}

/// What the leader's gossip says about a stream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A live edge publishes it, or relays it to viewers.
    InUse,
    /// Nothing uses it: the origin was lost, or the origin is live and its complete
    /// list of published streams leaves it out.
    Unused,
    /// Gossip cannot tell (the origin is not in this voter's view, is dead and the
    /// failover has not been committed yet, or lists only part of what it publishes).
    Unknown,
}

/// A record to remove now, and why (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub record: Record,
    pub reason: String,
}

/// Tracks how long each record has gone unused.
#[derive(Debug)]
pub struct Expiry {
    grace: Duration,
    /// Stream name → (the record as first seen unused, since when).
    unused_since: BTreeMap<String, (Record, Instant)>,
}

impl Expiry {
    pub fn new(grace: Duration) -> Self {
        Expiry { grace, unused_since: BTreeMap::new() }
    }

    /// Feeds the current records and what gossip says of each. Returns the records
    /// unused for the whole grace period, unchanged all that time; until they are
    /// removed they are returned again at every call.
    pub fn observe(
        &mut self,
        now: Instant,
        records: &[Record],
        seen: impl Fn(&Record) -> Seen,
    ) -> Vec<Expired> {
        let mut due = Vec::new();
        let mut unused = BTreeMap::new();
        for record in records {
            if seen(record) != Seen::Unused {
                continue;
            }
            let since = match self.unused_since.remove(&record.name) {
                Some((before, since)) if before == *record => since,
                _ => now,
            };
            let idle = now.saturating_duration_since(since);
            if idle >= self.grace {
                let reason = match record.origin_lost {
                    true => format!("origin {} lost, no publisher for {}s", record.origin, idle.as_secs()),
                    false => format!(
                        "origin {} stopped publishing it, unused for {}s",
                        record.origin,
                        idle.as_secs()
                    ),
                };
                due.push(Expired { record: record.clone(), reason });
            }
            unused.insert(record.name.clone(), (record.clone(), since));
        }
        // Records in use, unknown or gone start over (bounded by the record count).
        self.unused_since = unused;
        due
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    fn record(name: &str, origin: &str, lost: bool, updated: u64) -> Record {
        Record { name: name.into(), origin: origin.into(), origin_lost: lost, updated_at_ms: updated }
    }

    fn names(due: &[Expired]) -> Vec<&str> {
        due.iter().map(|e| e.record.name.as_str()).collect()
    }

    #[test]
    fn an_unused_record_expires_after_the_grace_period_and_not_before() {
        let t0 = Instant::now();
        let mut e = Expiry::new(Duration::from_secs(60));
        let records = [record("live/a", "e1", true, 5), record("live/b", "e1", false, 5)];
        let seen = |r: &Record| if r.name == "live/a" { Seen::Unused } else { Seen::InUse };
        assert!(e.observe(t0, &records, seen).is_empty());
        assert!(e.observe(t0 + Duration::from_secs(59), &records, seen).is_empty());
        let due = e.observe(t0 + Duration::from_secs(60), &records, seen);
        assert_eq!(names(&due), ["live/a"]);
        assert_eq!(due[0].reason, "origin e1 lost, no publisher for 60s");
        // Until the removal lands it is due again.
        assert_eq!(names(&e.observe(t0 + Duration::from_secs(61), &records, seen)), ["live/a"]);
    }

    #[test]
    fn use_or_doubt_in_between_starts_the_clock_over() {
        let t0 = Instant::now();
        let mut e = Expiry::new(Duration::from_secs(10));
        let records = [record("live/a", "e1", false, 5)];
        e.observe(t0, &records, |_| Seen::Unused);
        e.observe(t0 + Duration::from_secs(5), &records, |_| Seen::InUse);
        assert!(e.observe(t0 + Duration::from_secs(6), &records, |_| Seen::Unused).is_empty());
        assert!(e.observe(t0 + Duration::from_secs(15), &records, |_| Seen::Unused).is_empty());
        e.observe(t0 + Duration::from_secs(15), &records, |_| Seen::Unknown);
        assert!(e.observe(t0 + Duration::from_secs(17), &records, |_| Seen::Unused).is_empty());
        assert_eq!(e.observe(t0 + Duration::from_secs(27), &records, |_| Seen::Unused).len(), 1);
    }

    #[test]
    fn a_record_that_changes_starts_the_clock_over() {
        let t0 = Instant::now();
        let mut e = Expiry::new(Duration::from_secs(10));
        e.observe(t0, &[record("live/a", "e1", true, 5)], |_| Seen::Unused);
        // Claimed again by e2 (a new record), which then stopped too.
        let moved = [record("live/a", "e2", false, 9)];
        assert!(e.observe(t0 + Duration::from_secs(10), &moved, |_| Seen::Unused).is_empty());
        let due = e.observe(t0 + Duration::from_secs(20), &moved, |_| Seen::Unused);
        assert_eq!(due[0].record, moved[0]);
        assert_eq!(due[0].reason, "origin e2 stopped publishing it, unused for 10s");
    }

    #[test]
    fn removed_records_are_forgotten() {
        let t0 = Instant::now();
        let mut e = Expiry::new(Duration::from_secs(10));
        e.observe(t0, &[record("live/a", "e1", true, 5)], |_| Seen::Unused);
        e.observe(t0 + Duration::from_secs(5), &[], |_| Seen::Unused);
        assert!(e.unused_since.is_empty());
        // Back again: a fresh clock.
        let again = [record("live/a", "e1", true, 5)];
        assert!(e.observe(t0 + Duration::from_secs(12), &again, |_| Seen::Unused).is_empty());
    }
}
