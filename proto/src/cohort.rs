//! Who gets a rollout's treatment: the cohort decision of docs/rollouts.md, a pure function
//! shared by edges (which decide per session), the control plane and the tests, so all
//! of them agree.
//!
//! Levels are cumulative:
//!
//! | level | treatment goes to |
//! |---|---|
//! | 0 | nobody |
//! | 1 | the allowlist: listed session ids, or a client tag containing a listed substring |
//! | 2 | + sessions on listed regions or edges |
//! | 3 | + a share of all sessions in basis points, by a sticky hash bucket |
//! | 4 | everyone |
//!
//! The bucket of a session is a stable hash of (rollout salt, session id) in
//! `0..10_000`; level 3 treats buckets below the share. So lowering the share only
//! removes sessions from the treatment and raising it only adds, and a session keeps its
//! cohort across edges and reconnects as long as it keeps its id. A new salt reshuffles.

use serde::{Deserialize, Serialize};

use crate::placement::hash_pair;

/// Highest rollout level.
pub const MAX_LEVEL: u8 = 4;
/// Basis points of a whole.
pub const ALL_BP: u32 = 10_000;

/// The gates of a rollout: who is eligible at levels 1–3.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Level 1: session ids (viewer or publisher ids) that get the treatment.
    #[serde(default)]
    pub session_ids: Vec<String>,
    /// Level 1: a session whose client tags (e.g. its user agent) contain one of these.
    #[serde(default)]
    pub client_tags: Vec<String>,
    /// Level 2: sessions on edges in these regions.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Level 2: sessions on these edges.
    #[serde(default)]
    pub edges: Vec<String>,
    /// Level 3: the sampled share, in basis points (0–10 000).
    #[serde(default)]
    pub share_bp: u32,
}

/// What is known about a new session when it is decided.
#[derive(Debug, Clone, Copy)]
pub struct Session<'a> {
    /// The client's stable id (viewer or publisher id); the bucket hashes it.
    pub id: &'a str,
    /// Client tags, e.g. the user agent.
    pub tags: &'a [String],
    pub region: &'a str,
    pub edge: &'a str,
}

/// Treatment or baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cohort {
    Baseline,
    Treatment,
}

impl Cohort {
    pub fn as_str(self) -> &'static str {
        match self {
            Cohort::Baseline => "baseline",
            Cohort::Treatment => "treatment",
        }
    }
}

/// The session's sticky bucket for a rollout salted with `salt`, in `0..10_000`.
pub fn bucket(salt: &str, session_id: &str) -> u32 {
    // 2^64 mod 10 000 is tiny next to 2^64: the bias is below 1e-15.
    (hash_pair(salt, session_id) % u64::from(ALL_BP)) as u32
}

/// The cohort of `session` for a rollout at `level` with `gates` and `salt`. Levels
/// above [`MAX_LEVEL`] count as 4; shares above 10 000 as everyone.
pub fn decide(level: u8, gates: &Gates, salt: &str, session: &Session<'_>) -> Cohort {
    let treated = match level {
        0 => false,
        l if l >= MAX_LEVEL => true,
        l => {
            let allowlisted = gates.session_ids.iter().any(|id| id == session.id)
                || gates
                    .client_tags
                    .iter()
                    .filter(|t| !t.is_empty())
                    .any(|t| session.tags.iter().any(|tag| tag.contains(t.as_str())));
            let placed = l >= 2
                && (gates.regions.iter().any(|r| r == session.region)
                    || gates.edges.iter().any(|e| e == session.edge));
            let sampled = l >= 3 && bucket(salt, session.id) < gates.share_bp.min(ALL_BP);
            allowlisted || placed || sampled
        }
    };
    if treated {
        Cohort::Treatment
    } else {
        Cohort::Baseline
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use proptest::prelude::*;

    use super::*;

    fn session<'a>(id: &'a str, tags: &'a [String], region: &'a str, edge: &'a str) -> Session<'a> {
        Session { id, tags, region, edge }
    }

    #[test]
    fn each_level_adds_its_gate() {
        let gates = Gates {
            session_ids: vec!["vip".into()],
            client_tags: vec!["Firefox".into()],
            regions: vec!["eu".into()],
            edges: vec!["edge-7".into()],
            share_bp: 0,
        };
        let ff = vec!["Mozilla/5.0 Firefox/140".to_owned()];
        let none: Vec<String> = Vec::new();
        let cases = [
            (session("vip", &none, "us", "e1"), [false, true, true, true, true]),
            (session("u1", &ff, "us", "e1"), [false, true, true, true, true]),
            (session("u2", &none, "eu", "e1"), [false, false, true, true, true]),
            (session("u3", &none, "us", "edge-7"), [false, false, true, true, true]),
            (session("u4", &none, "us", "e1"), [false, false, false, false, true]),
        ];
        for (s, want) in cases {
            for level in 0..=4u8 {
                let got = decide(level, &gates, "salt", &s) == Cohort::Treatment;
                assert_eq!(got, want[level as usize], "{} at level {level}", s.id);
            }
        }
        assert_eq!(decide(9, &gates, "salt", &cases[4].0), Cohort::Treatment, "above 4 is everyone");
    }

    #[test]
    fn the_share_treats_about_that_many_sessions() {
        let gates = Gates { share_bp: 1_000, ..Gates::default() };
        let none: Vec<String> = Vec::new();
        let ids: Vec<String> = (0..20_000).map(|i| format!("viewer-{i}")).collect();
        let treated = ids
            .iter()
            .filter(|id| decide(3, &gates, "r1", &session(id, &none, "us", "e")) == Cohort::Treatment);
        let n = treated.count() as f64;
        // Binomial(20 000, 0.1): sd ≈ 42; 5 sd either side.
        assert!((1_790.0..=2_210.0).contains(&n), "{n} of 20 000 treated at 10 %");
    }

    #[test]
    fn the_bucket_is_fixed_forever() {
        // Edges of every version must agree. These values were computed by a separate
        // implementation of the documented hash (FNV-1a 64 of salt, 0, id; splitmix64
        // finalizer; mod 10 000), so they pin the algorithm, not this code's output.
        let cases = [("s", "a", 1869), ("s", "b", 5505), ("s", "c", 7435), ("salt", "viewer-1", 6267)];
        for (salt, id, want) in cases {
            assert_eq!(bucket(salt, id), want, "bucket({salt:?}, {id:?})");
        }
        assert_ne!(bucket("s1", "a"), bucket("s2", "a"), "the salt reshuffles");
    }

    proptest! {
        #[test]
        fn raising_the_share_only_adds_and_lowering_only_removes(
            ids in proptest::collection::vec("[a-z0-9-]{1,24}", 1..200),
            salt in "[a-z0-9]{0,12}",
            a in 0u32..=10_000,
            b in 0u32..=10_000,
        ) {
            let (low, high) = (a.min(b), a.max(b));
            let none: Vec<String> = Vec::new();
            for id in &ids {
                let s = session(id, &none, "r", "e");
                let at = |bp| decide(3, &Gates { share_bp: bp, ..Gates::default() }, &salt, &s);
                if at(low) == Cohort::Treatment {
                    prop_assert_eq!(at(high), Cohort::Treatment);
                }
            }
        }

        #[test]
        fn a_higher_level_never_removes_a_session(
            id in "[a-z0-9-]{1,24}",
            tag in "[A-Za-z/ .0-9]{0,20}",
            region in "[a-z]{1,3}",
            edge in "[a-z0-9]{1,4}",
            share_bp in 0u32..=12_000,
            listed in proptest::bool::ANY,
        ) {
            let gates = Gates {
                session_ids: if listed { vec![id.clone()] } else { vec![] },
                client_tags: vec!["Chrome".into()],
                regions: vec!["eu".into()],
                edges: vec!["e1".into()],
                share_bp,
            };
            let tags = vec![tag];
            let s = session(&id, &tags, &region, &edge);
            for level in 0..MAX_LEVEL {
                if decide(level, &gates, "salt", &s) == Cohort::Treatment {
                    prop_assert_eq!(decide(level + 1, &gates, "salt", &s), Cohort::Treatment);
                }
            }
        }
    }
}
