//! The global error guard of rollouts (docs/rollouts.md), sans-IO: fed the edges' gossiped
//! session and error counters ([`CohortCounts`], cumulative since each edge started)
//! and a monotonic clock, it judges each active rollout window by window and says
//! when one trips. Every voter runs it so any voter can show the windows; only the
//! leader commits the trips.
//!
//! A window is `guard.window_ms` long and starts when the rollout becomes active at a
//! level and share (a level or share change starts a new window and forgets earlier
//! bad ones: the cohorts changed). Its
//! verdict:
//! - **no data**: fewer than `guard.min_sessions` treatment sessions started in it. It
//!   neither counts towards a trip nor clears the bad windows before it;
//! - **bad**: the treatment's error rate (errors / sessions in the window) is above
//!   `error_rate_max`, or above `error_rate_max_ratio` × the baseline's rate when the
//!   baseline also has `min_sessions` sessions (the baseline's rate is floored at one
//!   error per window so a clean baseline does not make one treatment error infinitely
//!   worse);
//! - **healthy** otherwise, which clears the bad windows.
//!
//! `guard.consecutive` bad windows in a row trip the rollout. Edges that restart
//! count from zero again (a counter that went down counts from zero); an edge seen for
//! the first time after the guard's first reading counts everything it reports.

use std::collections::{BTreeMap, VecDeque};

use ferry_proto::rollout::{CohortCounts, Guard};
use serde::Serialize;

/// Windows kept per rollout for the API.
pub const WINDOWS_KEPT: usize = 10;
/// An edge reading not refreshed for this long is forgotten.
const FORGET_EDGE_MS: u64 = 10 * 60 * 1000;

/// A rollout as the guard needs it.
#[derive(Debug, Clone)]
pub struct Watched<'a> {
    pub id: &'a str,
    pub level: u8,
    /// The level-3 share (basis points).
    pub share_bp: u32,
    /// Only active rollouts are judged; a paused, tripped or aborted one starts over.
    pub active: bool,
    pub guard: &'a Guard,
}

/// One edge's gossiped counters.
#[derive(Debug, Clone)]
pub struct Reading<'a> {
    /// Edge id plus its gossip generation (a restart is a new key).
    pub key: String,
    pub cpu: f64,
    pub counts: &'a BTreeMap<String, CohortCounts>,
}

/// What one window showed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowReport {
    /// Wall-clock end of the window (unix ms).
    pub ended_at_ms: u64,
    pub level: u8,
    pub treatment_sessions: u64,
    pub treatment_errors: u64,
    pub baseline_sessions: u64,
    pub baseline_errors: u64,
    /// Highest process CPU (cores) an edge gossiped during the window.
    pub max_edge_cpu: f64,
    /// `healthy`, `bad` or `no_data`.
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bad windows in a row after this one.
    pub bad_in_a_row: u32,
}

/// A rollout the guard says must fall back.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub id: String,
    /// For the audit log: `error rate: 0.48 > 0.05 over 3 windows`.
    pub reason: String,
    /// Monotonic time (ms) the deciding window ended.
    pub decided_at_ms: u64,
}

#[derive(Debug)]
struct Track {
    level: u8,
    share_bp: u32,
    started_ms: u64,
    sum: CohortCounts,
    max_cpu: f64,
    bad: u32,
    windows: VecDeque<WindowReport>,
}

/// The guard's memory.
#[derive(Debug, Default)]
pub struct ErrorGuard {
    /// Last counters per edge key, and when they were seen (monotonic ms).
    last: BTreeMap<String, (u64, BTreeMap<String, CohortCounts>)>,
    primed: bool,
    tracks: BTreeMap<String, Track>,
}

impl ErrorGuard {
    /// Feeds one reading of every edge at `now_ms` (monotonic) / `wall_ms` (for
    /// reports). Returns the rollouts that trip now.
    pub fn observe(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        rollouts: &[Watched<'_>],
        edges: &[Reading<'_>],
    ) -> Vec<Trip> {
        let mut growth: BTreeMap<&str, CohortCounts> = BTreeMap::new();
        for edge in edges {
            let previous = self.last.get(&edge.key).map(|(_, counts)| counts);
            for (rollout, counts) in edge.counts {
                let added = match previous {
                    Some(before) => counts.since(&before.get(rollout).copied().unwrap_or_default()),
                    None if self.primed => *counts,
                    None => CohortCounts::default(),
                };
                growth.entry(rollout.as_str()).or_default().add(&added);
            }
        }
        for edge in edges {
            self.last.insert(edge.key.clone(), (now_ms, edge.counts.clone()));
        }
        self.last.retain(|_, (seen, _)| now_ms.saturating_sub(*seen) < FORGET_EDGE_MS);
        self.primed = true;
        let max_cpu = edges.iter().map(|e| e.cpu).fold(0.0, f64::max);

        let mut trips = Vec::new();
        self.tracks.retain(|id, _| rollouts.iter().any(|r| r.id == id));
        for r in rollouts {
            let judged = r.active
                && r.level > 0
                && (r.guard.error_rate_max.is_some() || r.guard.error_rate_max_ratio.is_some());
            let track = self.tracks.entry(r.id.to_owned()).or_insert_with(|| Track {
                level: r.level,
                share_bp: r.share_bp,
                started_ms: now_ms,
                sum: CohortCounts::default(),
                max_cpu: 0.0,
                bad: 0,
                windows: VecDeque::new(),
            });
            if !judged || track.level != r.level || track.share_bp != r.share_bp {
                track.level = r.level;
                track.share_bp = r.share_bp;
                track.started_ms = now_ms;
                track.sum = CohortCounts::default();
                track.max_cpu = 0.0;
                track.bad = 0;
                continue;
            }
            if let Some(g) = growth.get(r.id) {
                track.sum.add(g);
            }
            track.max_cpu = track.max_cpu.max(max_cpu);
            if now_ms.saturating_sub(track.started_ms) < r.guard.window_ms {
                continue;
            }
            let (verdict, reason) = judge(&track.sum, r.guard);
            match verdict {
                "bad" => track.bad = track.bad.saturating_add(1),
                "healthy" => track.bad = 0,
                _ => {}
            }
            let s = track.sum;
            track.windows.push_back(WindowReport {
                ended_at_ms: wall_ms,
                level: r.level,
                treatment_sessions: s.treatment_sessions,
                treatment_errors: s.treatment_errors,
                baseline_sessions: s.baseline_sessions,
                baseline_errors: s.baseline_errors,
                max_edge_cpu: track.max_cpu,
                verdict,
                reason: reason.clone(),
                bad_in_a_row: track.bad,
            });
            while track.windows.len() > WINDOWS_KEPT {
                track.windows.pop_front();
            }
            if track.bad >= r.guard.consecutive.max(1) {
                trips.push(Trip {
                    id: r.id.to_owned(),
                    reason: format!("{} over {} windows", reason.unwrap_or_default(), track.bad),
                    decided_at_ms: now_ms,
                });
                track.bad = 0;
            }
            track.started_ms = now_ms;
            track.sum = CohortCounts::default();
            track.max_cpu = 0.0;
        }
        trips
    }

    /// The last windows of `rollout`, oldest first.
    pub fn windows(&self, rollout: &str) -> Vec<WindowReport> {
        self.tracks.get(rollout).map(|t| t.windows.iter().cloned().collect()).unwrap_or_default()
    }
}

/// A window's verdict and, when bad, why.
fn judge(s: &CohortCounts, guard: &Guard) -> (&'static str, Option<String>) {
    if s.treatment_sessions < u64::from(guard.min_sessions) || s.treatment_sessions == 0 {
        return ("no_data", None);
    }
    let rate = s.treatment_errors as f64 / s.treatment_sessions as f64;
    if let Some(max) = guard.error_rate_max {
        if rate > max {
            return ("bad", Some(format!("error rate {rate:.3} > {max}")));
        }
    }
    if let Some(ratio) = guard.error_rate_max_ratio {
        if s.baseline_sessions >= u64::from(guard.min_sessions.max(1)) {
            let sessions = s.baseline_sessions as f64;
            let baseline = (s.baseline_errors as f64 / sessions).max(1.0 / sessions);
            if rate > ratio * baseline {
                return ("bad", Some(format!("error rate {rate:.3} > {ratio} x baseline {baseline:.3}")));
            }
        }
    }
    ("healthy", None)
}

#[cfg(test)]
mod tests;
