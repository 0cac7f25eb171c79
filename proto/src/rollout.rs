//! A rollout's spec (docs/rollouts.md): the typed override of edge settings it applies to
//! its treatment, who gets it ([`crate::cohort::Gates`]), the guard that falls it back,
//! and what a trip does. Operators write it as TOML (`ferry ctl rollout create -f`) or
//! JSON (`POST /v1/rollouts`); unknown keys are refused, so a typo is an error rather
//! than a rollout that silently changes nothing.
//!
//! [`RolloutSpec::validate`] checks ranges; [`RolloutSpec::settings`] names the
//! settings a rollout touches, so the control plane can refuse a second active rollout
//! on the same setting.

use serde::{Deserialize, Serialize};

use crate::cohort::{Gates, ALL_BP};

/// Longest `client_flag`, description or gate entry.
pub const MAX_TEXT: usize = 256;
/// Most entries in one gate list.
pub const MAX_GATE_ENTRIES: usize = 1_000;

/// What a rollout is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    #[serde(default)]
    pub description: String,
    /// The treatment: edge settings for the treated sessions.
    #[serde(rename = "override", default)]
    pub overrides: Override,
    #[serde(default)]
    pub gates: Gates,
    #[serde(default)]
    pub guard: Guard,
    #[serde(default)]
    pub on_trip: OnTrip,
    /// Reshuffles the share's buckets; empty means the rollout id.
    #[serde(default)]
    pub salt: String,
}

/// Edge settings the treatment changes; `None` keeps the edge's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Latency budget of a viewer (the edge's `--max-lag` for that session).
    pub max_lag_ms: Option<u32>,
    /// Groups kept per track for joining viewers.
    pub group_cache: Option<u32>,
    /// QUIC congestion controller of the session's connection.
    pub congestion: Option<Congestion>,
    /// Pace QUIC sends. Refused by [`RolloutSpec::validate`]: quinn 0.11 always paces
    /// and has no switch; the key is known so the refusal can say so.
    pub pacing: Option<bool>,
    /// Answer WHEP viewers' NACKs with retransmissions.
    pub webrtc_nack: Option<bool>,
    /// Opaque flag handed to the client (`Ferry-Variant` and the client flag header).
    pub client_flag: Option<String>,
    /// Drills; refused by edges without `--allow-fault-injection`.
    #[serde(default)]
    pub fault: Fault,
}

/// QUIC congestion controllers quinn offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Congestion {
    Cubic,
    Bbr,
    NewReno,
}

/// Fault injection for drills.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Refuse this share (basis points) of treatment sessions with an error.
    pub reject_sessions_bp: Option<u32>,
    /// Spin this many CPU milliseconds per second on the edge while treatment is active.
    pub cpu_burn_ms_per_s: Option<u32>,
}

/// When the treatment falls back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Edge-local: process CPU in cores (1.0 = one core busy) above which an edge gives
    /// new sessions the baseline.
    pub cpu_max: Option<f64>,
    /// Treatment errors per session in a window above which the rollout trips.
    pub error_rate_max: Option<f64>,
    /// ... or above this multiple of the baseline's error rate.
    pub error_rate_max_ratio: Option<f64>,
    /// Treatment sessions a window needs to count; fewer is "no data".
    #[serde(default = "default_min_sessions")]
    pub min_sessions: u32,
    /// Window length in milliseconds.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// Bad windows (or CPU samples, edge-local) in a row before a trip.
    #[serde(default = "default_consecutive")]
    pub consecutive: u32,
}

fn default_min_sessions() -> u32 {
    20
}
fn default_window_ms() -> u64 {
    10_000
}
fn default_consecutive() -> u32 {
    3
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            cpu_max: None,
            error_rate_max: None,
            error_rate_max_ratio: None,
            min_sessions: default_min_sessions(),
            window_ms: default_window_ms(),
            consecutive: default_consecutive(),
        }
    }
}

/// Sessions and errors an edge counted for one rollout since it started, by cohort.
/// Edges gossip them; the control plane's error guard reads the growth per window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortCounts {
    pub treatment_sessions: u64,
    pub treatment_errors: u64,
    pub baseline_sessions: u64,
    pub baseline_errors: u64,
}

impl CohortCounts {
    /// What `self` (a later reading) added to `earlier`; a counter that went down (the
    /// edge restarted) counts from zero.
    pub fn since(&self, earlier: &CohortCounts) -> CohortCounts {
        let d = |now: u64, then: u64| if now >= then { now - then } else { now };
        CohortCounts {
            treatment_sessions: d(self.treatment_sessions, earlier.treatment_sessions),
            treatment_errors: d(self.treatment_errors, earlier.treatment_errors),
            baseline_sessions: d(self.baseline_sessions, earlier.baseline_sessions),
            baseline_errors: d(self.baseline_errors, earlier.baseline_errors),
        }
    }

    /// Adds `other` in place.
    pub fn add(&mut self, other: &CohortCounts) {
        self.treatment_sessions = self.treatment_sessions.saturating_add(other.treatment_sessions);
        self.treatment_errors = self.treatment_errors.saturating_add(other.treatment_errors);
        self.baseline_sessions = self.baseline_sessions.saturating_add(other.baseline_sessions);
        self.baseline_errors = self.baseline_errors.saturating_add(other.baseline_errors);
    }
}

/// What a trip does to the level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTrip {
    /// Back to the level before the current one.
    #[default]
    Previous,
    /// Back to level 0.
    Off,
}

impl RolloutSpec {
    /// Checks every range; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        check_text("description", &self.description)?;
        check_text("salt", &self.salt)?;
        let o = &self.overrides;
        if self.settings().is_empty() {
            return Err("override: the rollout changes nothing (set at least one override)".into());
        }
        check_range("override.max_lag_ms", o.max_lag_ms, 1, 60_000)?;
        check_range("override.group_cache", o.group_cache, 1, 1_024)?;
        check_range("override.fault.reject_sessions_bp", o.fault.reject_sessions_bp, 0, ALL_BP)?;
        check_range("override.fault.cpu_burn_ms_per_s", o.fault.cpu_burn_ms_per_s, 0, 1_000)?;
        if let Some(flag) = &o.client_flag {
            check_text("override.client_flag", flag)?;
            if flag.is_empty() || !flag.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("override.client_flag: visible ASCII without spaces, not empty".into());
            }
        }
        let g = &self.gates;
        if g.share_bp > ALL_BP {
            return Err(format!("gates.share_bp: {} is above {ALL_BP}", g.share_bp));
        }
        for (name, list) in [
            ("gates.session_ids", &g.session_ids),
            ("gates.client_tags", &g.client_tags),
            ("gates.regions", &g.regions),
            ("gates.edges", &g.edges),
        ] {
            if list.len() > MAX_GATE_ENTRIES {
                return Err(format!("{name}: more than {MAX_GATE_ENTRIES} entries"));
            }
            if let Some(entry) = list.iter().find(|e| e.is_empty() || e.len() > MAX_TEXT) {
                return Err(format!("{name}: entry {entry:?} is empty or longer than {MAX_TEXT} bytes"));
            }
        }
        let guard = &self.guard;
        check_positive("guard.cpu_max", guard.cpu_max)?;
        if let Some(rate) = guard.error_rate_max {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("guard.error_rate_max: {rate} is outside 0..=1"));
            }
        }
        check_positive("guard.error_rate_max_ratio", guard.error_rate_max_ratio)?;
        if !(1_000..=3_600_000).contains(&guard.window_ms) {
            return Err(format!("guard.window_ms: {} is outside 1000..=3600000", guard.window_ms));
        }
        if !(1..=100).contains(&guard.consecutive) {
            return Err(format!("guard.consecutive: {} is outside 1..=100", guard.consecutive));
        }
        if o.pacing.is_some() {
            return Err("override.pacing: not supported: quinn 0.11 always paces and has no switch".into());
        }
        Ok(())
    }

    /// The settings this rollout changes; two active rollouts may not share one.
    pub fn settings(&self) -> Vec<&'static str> {
        let o = &self.overrides;
        [
            ("max_lag_ms", o.max_lag_ms.is_some()),
            ("group_cache", o.group_cache.is_some()),
            ("congestion", o.congestion.is_some()),
            ("pacing", o.pacing.is_some()),
            ("webrtc_nack", o.webrtc_nack.is_some()),
            ("client_flag", o.client_flag.is_some()),
            ("fault.reject_sessions_bp", o.fault.reject_sessions_bp.is_some()),
            ("fault.cpu_burn_ms_per_s", o.fault.cpu_burn_ms_per_s.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect()
    }

    /// The salt in effect: the spec's, else the rollout id.
    pub fn salt_or<'a>(&'a self, id: &'a str) -> &'a str {
        if self.salt.is_empty() {
            id
        } else {
            &self.salt
        }
    }
}

fn check_text(name: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT {
        return Err(format!("{name}: longer than {MAX_TEXT} bytes"));
    }
    Ok(())
}

fn check_range(name: &str, value: Option<u32>, low: u32, high: u32) -> Result<(), String> {
    match value {
        Some(v) if !(low..=high).contains(&v) => Err(format!("{name}: {v} is outside {low}..={high}")),
        _ => Ok(()),
    }
}

fn check_positive(name: &str, value: Option<f64>) -> Result<(), String> {
    match value {
        Some(v) if !(v.is_finite() && v > 0.0) => Err(format!("{name}: {v} must be a positive number")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    fn parse(json: &str) -> Result<RolloutSpec, String> {
        let spec: RolloutSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    #[test]
    fn a_full_spec_parses_with_defaults() {
        let spec = parse(
            r#"{"description": "bbr for eu", "override": {"congestion": "bbr", "client_flag": "bbr-1"},
                "gates": {"regions": ["eu"], "share_bp": 1000},
                "guard": {"cpu_max": 1.5, "error_rate_max": 0.05}, "on_trip": "off"}"#,
        )
        .unwrap();
        assert_eq!(spec.overrides.congestion, Some(Congestion::Bbr));
        assert_eq!(spec.settings(), vec!["congestion", "client_flag"]);
        assert_eq!((spec.guard.min_sessions, spec.guard.window_ms, spec.guard.consecutive), (20, 10_000, 3));
        assert_eq!(spec.on_trip, OnTrip::Off);
        assert_eq!(spec.salt_or("r1"), "r1");
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            (r#"{"override": {"max_lag": 5}}"#, "unknown field `max_lag`"),
            (r#"{"override": {"max_lag_ms": 500}, "gates": {"share_bp": 10001}}"#, "gates.share_bp"),
            (r#"{"override": {"max_lag_ms": 0}}"#, "override.max_lag_ms"),
            (r#"{"override": {"congestion": "vegas"}}"#, "unknown variant `vegas`"),
            (r#"{"override": {}}"#, "changes nothing"),
            (
                r#"{"override": {"webrtc_nack": true}, "guard": {"error_rate_max": 2}}"#,
                "guard.error_rate_max",
            ),
            (r#"{"override": {"webrtc_nack": true}, "guard": {"window_ms": 10}}"#, "guard.window_ms"),
            (r#"{"override": {"pacing": false}}"#, "override.pacing: not supported"),
            (r#"{"override": {"client_flag": "a b"}}"#, "client_flag"),
            (r#"{"override": {"fault": {"reject_sessions_bp": 20000}}}"#, "reject_sessions_bp"),
            (r#"{"override": {"group_cache": 2}, "guard": {"cpu_max": -1}}"#, "guard.cpu_max"),
            (r#"{"image": "x"}"#, "unknown field `image`"),
        ];
        for (json, want) in cases {
            let err = parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
