//! Rollouts at the edge: every new session is placed in each rollout's treatment or
//! baseline with [`ferry_proto::cohort::decide`], from the rollouts the edge last read
//! from the control plane (so it keeps deciding while the control plane is down), and
//! the treatment's overrides apply to that session.
//!
//! The per-session settings are applied by the session paths (`max_lag_ms` to QUIC and
//! WHEP viewers, `group_cache` to publishers, `webrtc_nack` to WHEP, `client_flag` back
//! to the client); the edge-wide ones (`congestion`, the CPU drill) by the edge.
//!
//! When a rollout stops treating a live session (it tripped on this edge or globally,
//! its level or share went down, it was aborted), the one setting that can change on a
//! live session moves back: the viewer's latency budget ([`LagBudget`]).
//!
//! [`LagBudget`]: crate::track::LagBudget

use std::collections::{BTreeMap, BTreeSet};

use ferry_proto::api::{Rollout, RolloutState};
use ferry_proto::cohort::{decide, Cohort, Session};
use ferry_proto::rollout::{Override, RolloutSpec};

use crate::track::BufferConfig;

/// A rollout an edge applies: not aborted.
#[derive(Debug, Clone)]
pub struct Live {
    pub id: String,
    pub spec: RolloutSpec,
    pub level: u8,
}

/// The rollouts to apply, from the control plane's records. A paused or tripped
/// rollout keeps applying at its (possibly fallen-back) level; an aborted one is gone.
pub fn live(records: &BTreeMap<String, Rollout>) -> Vec<Live> {
    records
        .values()
        .filter(|r| r.state != RolloutState::Aborted)
        .map(|r| Live { id: r.id.clone(), spec: r.spec.clone(), level: r.level })
        .collect()
}

/// The rollouts an edge knows, built once whenever the control plane's records
/// change and shared by every session placement until the next change.
#[derive(Debug, Default)]
pub struct RolloutView {
    /// The control plane's records, by id.
    pub records: BTreeMap<String, Rollout>,
    /// Those that apply ([`live`]).
    pub live: Vec<Live>,
}

impl RolloutView {
    pub fn new(records: BTreeMap<String, Rollout>) -> Self {
        let live = live(&records);
        Self { records, live }
    }
}

/// One session's place in every live rollout, and the settings that follow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    /// (rollout id, cohort), by rollout id.
    pub variants: Vec<(String, Cohort)>,
    /// The treatments' overrides together (two live rollouts never share a setting).
    pub overrides: Override,
    /// (rollout id, salt) of the treatment that set `fault.reject_sessions_bp`.
    pub reject_from: Option<(String, String)>,
    /// Who was placed (to place the live session again when the rollouts change).
    pub session_id: String,
    pub tags: Vec<String>,
}

impl Assignment {
    /// The assignment on an edge that does not allow fault injection: no faults.
    pub fn without_faults(mut self) -> Self {
        self.overrides.fault = Default::default();
        self.reject_from = None;
        self
    }

    /// The rollout whose fault injection refuses this session, if any: a sticky share
    /// (`fault.reject_sessions_bp`) of its treatment, by a bucket of the session id
    /// salted apart from the cohort's.
    pub fn rejected_by(&self, session_id: &str) -> Option<&str> {
        let (rollout, salt) = self.reject_from.as_ref()?;
        let share = self.overrides.fault.reject_sessions_bp?;
        (ferry_proto::cohort::bucket(&format!("{salt}/fault"), session_id) < share)
            .then_some(rollout.as_str())
    }

    /// The track buffer for a session this assignment publishes: `group_cache` groups
    /// per track when a treatment sets it.
    pub fn buffer(&self, base: BufferConfig) -> BufferConfig {
        match self.overrides.group_cache {
            Some(groups) => BufferConfig { max_groups: (groups as usize).max(1), ..base },
            None => base,
        }
    }

    /// The `Ferry-Variant` header value, e.g. `bbr=treatment, lag=baseline`; `None`
    /// without live rollouts.
    pub fn header(&self) -> Option<String> {
        if self.variants.is_empty() {
            return None;
        }
        let parts: Vec<String> = self.variants.iter().map(|(id, c)| format!("{id}={}", c.as_str())).collect();
        Some(parts.join(", "))
    }
}

/// Places `session` in every rollout; rollouts in `tripped` (this edge's CPU guard)
/// give everyone the baseline.
pub fn assign(rollouts: &[Live], session: &Session<'_>, tripped: &BTreeSet<String>) -> Assignment {
    let mut out = Assignment {
        session_id: session.id.to_owned(),
        tags: session.tags.to_vec(),
        ..Assignment::default()
    };
    for r in rollouts {
        let cohort = match tripped.contains(&r.id) {
            true => Cohort::Baseline,
            false => decide(r.level, &r.spec.gates, r.spec.salt_or(&r.id), session),
        };
        if cohort == Cohort::Treatment {
            merge(&mut out.overrides, &r.spec.overrides);
            if r.spec.overrides.fault.reject_sessions_bp.is_some() && out.reject_from.is_none() {
                out.reject_from = Some((r.id.clone(), r.spec.salt_or(&r.id).to_owned()));
            }
        }
        out.variants.push((r.id.clone(), cohort));
    }
    out
}

/// Whether `rollout` may treat some sessions on this edge (`edge` in `region`).
fn may_treat_here(rollout: &Live, region: &str, edge: &str) -> bool {
    let g = &rollout.spec.gates;
    match rollout.level {
        0 => false,
        l if l >= 4 => true,
        l => {
            !g.session_ids.is_empty()
                || !g.client_tags.is_empty()
                || (l >= 2 && (g.regions.iter().any(|r| r == region) || g.edges.iter().any(|e| e == edge)))
                || (l >= 3 && g.share_bp > 0)
        }
    }
}

/// Whether `rollout` treats every session on this edge (level 4, or level 2 and up
/// with this edge's region or id in its gates): its edge-wide settings then apply to
/// the whole edge.
fn treats_whole_edge(rollout: &Live, region: &str, edge: &str) -> bool {
    let g = &rollout.spec.gates;
    rollout.level >= 4
        || (rollout.level >= 2
            && (g.regions.iter().any(|r| r == region) || g.edges.iter().any(|e| e == edge)))
}

/// The congestion controller new QUIC connections get on this edge: a setting of the
/// whole connection, chosen before the session says who it is, so only a rollout that
/// treats the whole edge applies it (and not while tripped here).
pub fn edge_congestion(
    rollouts: &[Live],
    tripped: &BTreeSet<String>,
    region: &str,
    edge: &str,
) -> Option<ferry_proto::rollout::Congestion> {
    rollouts
        .iter()
        .filter(|r| !tripped.contains(&r.id) && treats_whole_edge(r, region, edge))
        .find_map(|r| r.spec.overrides.congestion)
}

/// CPU milliseconds per second to burn for `fault.cpu_burn_ms_per_s` drills: the
/// rollouts not tripped here that may treat sessions on this edge, at most 1000.
pub fn burn_ms_per_s(rollouts: &[Live], tripped: &BTreeSet<String>, region: &str, edge: &str) -> u32 {
    let total: u32 = rollouts
        .iter()
        .filter(|r| !tripped.contains(&r.id) && may_treat_here(r, region, edge))
        .filter_map(|r| r.spec.overrides.fault.cpu_burn_ms_per_s)
        .sum();
    total.min(1_000)
}

/// The edge-local CPU guard (sans-IO), fed one process CPU sample per tick (250 ms): a
/// rollout whose `guard.cpu_max` is exceeded for `guard.consecutive` samples in a row
/// trips here at once — new sessions get the baseline, no control plane needed — and
/// stays tripped until an operator resumes it after the control plane recorded the
/// trip (or the rollout is aborted or deleted).
#[derive(Debug, Default)]
pub struct CpuGuard {
    /// Samples in a row above `cpu_max`, per rollout.
    over: BTreeMap<String, u32>,
    /// Tripped here; `true` once the control plane shows the rollout tripped.
    tripped: BTreeMap<String, bool>,
}

impl CpuGuard {
    /// Feeds a sample (`cpu` in cores). Returns the rollouts that trip now.
    pub fn observe(
        &mut self,
        cpu: f64,
        rollouts: &[Live],
        records: &BTreeMap<String, Rollout>,
    ) -> Vec<String> {
        self.tripped.retain(|id, recorded| match records.get(id).map(|r| r.state) {
            None | Some(RolloutState::Aborted) => false,
            Some(RolloutState::Tripped) => {
                *recorded = true;
                true
            }
            // Resumed by an operator after the control plane recorded the trip.
            Some(RolloutState::Active) => !*recorded,
            Some(RolloutState::Paused) => true,
        });
        let mut now_tripped = Vec::new();
        for r in rollouts {
            let Some(max) = r.spec.guard.cpu_max else { continue };
            if self.tripped.contains_key(&r.id) || r.level == 0 {
                self.over.remove(&r.id);
                continue;
            }
            let over = self.over.entry(r.id.clone()).or_default();
            *over = if cpu > max { over.saturating_add(1) } else { 0 };
            if *over >= r.spec.guard.consecutive {
                self.over.remove(&r.id);
                self.tripped.insert(r.id.clone(), false);
                now_tripped.push(r.id.clone());
            }
        }
        self.over.retain(|id, _| rollouts.iter().any(|r| &r.id == id));
        now_tripped
    }

    /// Rollouts tripped on this edge.
    pub fn tripped(&self) -> BTreeSet<String> {
        self.tripped.keys().cloned().collect()
    }
}

fn merge(into: &mut Override, from: &Override) {
    into.max_lag_ms = into.max_lag_ms.or(from.max_lag_ms);
    into.group_cache = into.group_cache.or(from.group_cache);
    into.congestion = into.congestion.or(from.congestion);
    into.pacing = into.pacing.or(from.pacing);
    into.webrtc_nack = into.webrtc_nack.or(from.webrtc_nack);
    into.client_flag = into.client_flag.take().or_else(|| from.client_flag.clone());
    into.fault.reject_sessions_bp = into.fault.reject_sessions_bp.or(from.fault.reject_sessions_bp);
    into.fault.cpu_burn_ms_per_s = into.fault.cpu_burn_ms_per_s.or(from.fault.cpu_burn_ms_per_s);
}

/// The rollouts that treated a session (`before`) and no longer do (`now`).
pub fn left_treatment<'a>(before: &'a Assignment, now: &Assignment) -> Vec<&'a str> {
    before
        .variants
        .iter()
        .filter(|(_, cohort)| *cohort == Cohort::Treatment)
        .filter(|(id, _)| !now.variants.iter().any(|(other, c)| other == id && *c == Cohort::Treatment))
        .map(|(id, _)| id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use serde_json::{json, Value};

    use super::*;

    fn state(name: &str) -> RolloutState {
        serde_json::from_value(json!(name)).unwrap()
    }

    fn record(id: &str, level: u8, state_name: &str, spec: Value) -> (String, Rollout) {
        let spec = serde_json::from_value(spec).unwrap();
        let state = state(state_name);
        (
            id.to_owned(),
            Rollout { id: id.to_owned(), spec, level, state, history: Vec::new(), created_at_ms: 0 },
        )
    }

    #[test]
    fn treatments_merge_their_overrides_and_every_rollout_is_named() {
        let records: BTreeMap<_, _> = [
            record("lag", 4, "active", json!({"override": {"max_lag_ms": 700, "client_flag": "lag-1"}})),
            record("bbr", 0, "paused", json!({"override": {"congestion": "bbr"}})),
            record("old", 4, "aborted", json!({"override": {"pacing": false}})),
        ]
        .into_iter()
        .collect();
        let live = live(&records);
        assert_eq!(live.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["bbr", "lag"]);
        let tags = vec!["Chrome".to_owned()];
        let a = assign(&live, &Session { id: "v1", tags: &tags, region: "eu", edge: "e1" }, &BTreeSet::new());
        assert_eq!(a.header().as_deref(), Some("bbr=baseline, lag=treatment"));
        assert_eq!(a.overrides.max_lag_ms, Some(700));
        assert_eq!(a.overrides.client_flag.as_deref(), Some("lag-1"));
        assert_eq!(a.overrides.congestion, None);
        let none = BTreeSet::new();
        assert_eq!(
            assign(&[], &Session { id: "v1", tags: &tags, region: "eu", edge: "e1" }, &none).header(),
            None
        );
    }

    #[test]
    fn sessions_leave_the_treatment_when_the_level_drops_the_share_shrinks_or_a_guard_trips() {
        let spec = json!({"override": {"max_lag_ms": 700}, "gates": {"share_bp": 5000}, "salt": "s"});
        let at = |level: u8, spec: Value| -> BTreeMap<String, Rollout> {
            [record("lag", level, "active", spec)].into_iter().collect()
        };
        let tags = Vec::new();
        let id = (0..)
            .map(|i| format!("v{i}"))
            .find(|id| (1000..5000).contains(&ferry_proto::cohort::bucket("s", id)))
            .unwrap();
        let who = Session { id: &id, tags: &tags, region: "eu", edge: "e1" };
        let none = BTreeSet::new();
        let before = assign(&live(&at(3, spec.clone())), &who, &none);
        assert_eq!(before.overrides.max_lag_ms, Some(700));
        assert!(left_treatment(&before, &assign(&live(&at(4, spec.clone())), &who, &none)).is_empty());
        assert_eq!(left_treatment(&before, &assign(&live(&at(2, spec.clone())), &who, &none)), ["lag"]);
        let mut smaller = spec.clone();
        smaller["gates"]["share_bp"] = json!(1000);
        let shrunk = assign(&live(&at(3, smaller)), &who, &none);
        assert_eq!((left_treatment(&before, &shrunk), shrunk.overrides.max_lag_ms), (vec!["lag"], None));
        let tripped: BTreeSet<String> = ["lag".to_owned()].into();
        assert_eq!(left_treatment(&before, &assign(&live(&at(3, spec)), &who, &tripped)), ["lag"]);
        assert_eq!(left_treatment(&before, &assign(&[], &who, &none)), ["lag"], "aborted");
    }

    #[test]
    fn fault_injection_refuses_its_share_of_the_treatment_unless_the_edge_forbids_it() {
        let records: BTreeMap<_, _> =
            [record("drill", 4, "active", json!({"override": {"fault": {"reject_sessions_bp": 5000}}}))]
                .into_iter()
                .collect();
        let live = live(&records);
        let tags = Vec::new();
        let ids: Vec<String> = (0..400).map(|i| format!("s{i}")).collect();
        let refused = ids
            .iter()
            .filter(|id| {
                let a =
                    assign(&live, &Session { id, tags: &tags, region: "eu", edge: "e1" }, &BTreeSet::new());
                a.rejected_by(id) == Some("drill")
            })
            .count();
        assert!((140..=260).contains(&refused), "{refused} of 400 refused at 50 %");
        let a = assign(&live, &Session { id: "s1", tags: &tags, region: "eu", edge: "e1" }, &BTreeSet::new())
            .without_faults();
        assert_eq!(a.rejected_by("s1"), None);
        assert_eq!(a.overrides.fault, Default::default());
    }

    #[test]
    fn group_cache_sets_a_publishers_buffer_and_congestion_applies_to_whole_edges_only() {
        use ferry_proto::rollout::Congestion;
        let spec = json!({"override": {"group_cache": 2, "congestion": "bbr"}, "gates": {"regions": ["eu"], "session_ids": ["vip"]}});
        let mut records: BTreeMap<_, _> = [record("tune", 1, "active", spec)].into_iter().collect();
        let base = BufferConfig::default();
        let none = BTreeSet::new();
        let tags = Vec::new();
        let vip = Session { id: "vip", tags: &tags, region: "us", edge: "e1" };
        let a = assign(&live(&records), &vip, &none);
        assert_eq!(a.buffer(base).max_groups, 2);
        assert_eq!(a.buffer(base).max_bytes, base.max_bytes);
        let other = Session { id: "x", tags: &tags, region: "us", edge: "e1" };
        assert_eq!(assign(&live(&records), &other, &none).buffer(base), base);
        // Level 1 treats single sessions: no edge-wide controller anywhere.
        assert_eq!(edge_congestion(&live(&records), &none, "eu", "e1"), None);
        // Level 2 treats the eu edges as a whole.
        records.get_mut("tune").unwrap().level = 2;
        assert_eq!(edge_congestion(&live(&records), &none, "eu", "e1"), Some(Congestion::Bbr));
        assert_eq!(edge_congestion(&live(&records), &none, "us", "e1"), None);
        let tripped: BTreeSet<String> = ["tune".to_owned()].into();
        assert_eq!(edge_congestion(&live(&records), &tripped, "eu", "e1"), None, "not while tripped here");
        records.get_mut("tune").unwrap().level = 4;
        assert_eq!(edge_congestion(&live(&records), &none, "us", "e9"), Some(Congestion::Bbr));
    }

    #[test]
    fn the_cpu_guard_trips_after_consecutive_samples_and_holds_until_resumed() {
        let spec = json!({"override": {"fault": {"cpu_burn_ms_per_s": 800}}, "gates": {"edges": ["e1"]},
                          "guard": {"cpu_max": 0.5, "consecutive": 3}});
        let mut records: BTreeMap<_, _> = [record("burn", 2, "active", spec)].into_iter().collect();
        let mut guard = CpuGuard::default();
        let live_now = live(&records);
        // Noise: a single high sample between normal ones never trips.
        for cpu in [0.9, 0.2, 0.9, 0.9, 0.1, 0.9] {
            assert!(guard.observe(cpu, &live_now, &records).is_empty(), "tripped at {cpu}");
        }
        assert!(guard.observe(0.9, &live_now, &records).is_empty());
        assert_eq!(guard.observe(0.9, &live_now, &records), vec!["burn".to_owned()]);
        let tripped = guard.tripped();
        assert!(tripped.contains("burn"));
        let tags = Vec::new();
        let session = Session { id: "x", tags: &tags, region: "eu", edge: "e1" };
        assert_eq!(assign(&live_now, &session, &tripped).variants[0].1, Cohort::Baseline);
        assert_eq!(burn_ms_per_s(&live_now, &tripped, "eu", "e1"), 0, "a tripped drill stops burning");
        assert_eq!(burn_ms_per_s(&live_now, &BTreeSet::new(), "eu", "e1"), 800);
        assert_eq!(burn_ms_per_s(&live_now, &BTreeSet::new(), "eu", "e2"), 0, "not gated to e2");
        // Still active (the control plane has not heard yet): held.
        assert!(guard.observe(0.1, &live_now, &records).is_empty());
        assert!(guard.tripped().contains("burn"));
        // Recorded as tripped, then resumed by an operator: cleared.
        records.get_mut("burn").unwrap().state = state("tripped");
        guard.observe(0.1, &live_now, &records);
        assert!(guard.tripped().contains("burn"));
        records.get_mut("burn").unwrap().state = state("active");
        guard.observe(0.1, &live_now, &records);
        assert!(guard.tripped().is_empty());
    }
}
