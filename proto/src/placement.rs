//! Placement: which edge a new session of a stream should go to.
//!
//! Pure (sans-IO): no clock, no randomness, no sockets. The caller merges registrations with
//! gossip health into [`Candidate`]s and [`route`] answers with one edge and a [`Reason`].
//!
//! # Policy
//! 1. Only edges that are alive and not draining are eligible.
//! 2. A requested region is honoured when it has an eligible edge; otherwise every eligible edge
//!    competes and the answer says [`Reason::OtherRegion`].
//! 3. Within that set, edges are ordered by rendezvous hashing ([`rank`]), so a stream sticks to
//!    the same edges and adding or removing an edge only moves the streams it wins or loses.
//! 4. Bounded load (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimorghaddam):
//!    an edge takes a new session only while its sessions per unit of capacity stay within
//!    `(1 + epsilon)` times the average (counting the new session), but never below one session
//!    per unit of capacity, so an idle cluster keeps a stream on a single edge.
//! 5. An edge that already carries the stream wins when it is under the bound (no new relay
//!    hop); otherwise the first edge in rendezvous order under the bound; if every edge is
//!    full, the least loaded one (ties by rendezvous order).

use serde::Serialize;

/// One edge as routing sees it (registration merged with gossip health).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub id: String,
    pub region: String,
    /// Gossip says the process is alive.
    pub alive: bool,
    /// The edge is draining: no new sessions.
    pub draining: bool,
    /// Current sessions (viewers + publishers) from gossip.
    pub sessions: u64,
    /// Relative capacity (0 is treated as 1).
    pub capacity: u32,
    /// The edge already carries (originates or relays) the stream being routed.
    pub carries: bool,
}

/// Why a route was chosen, for the API answer and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The edge already carries the stream and has room.
    CarriesStream,
    /// First edge with room in rendezvous order (or the least loaded when all are full).
    HashOrder,
    /// A region was asked for but has no eligible edge; the edge is elsewhere.
    OtherRegion,
}

/// The answer of [`route`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub edge: String,
    pub reason: Reason,
}

/// Load bound: an edge is "full" for a new session when its sessions/capacity would exceed
/// `(1 + epsilon) * average load` of the eligible edges in the region (bounded-load consistent
/// hashing, Mirrokni et al.). Never below 1 session per unit of capacity so an empty cluster
/// still routes.
pub const DEFAULT_EPSILON: f64 = 0.25;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// The splitmix64 output finalizer: spreads FNV's weak low-entropy bits over all 64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rendezvous weight of `edge` for `stream`; fixed forever, every process must agree.
fn weight(stream: &str, edge: &str) -> u64 {
    hash_pair(stream, edge)
}

/// A stable 64-bit hash of (`a`, `b`): FNV-1a 64 over `a`, a 0 byte and `b`, then a
/// splitmix64 finalizer. Fixed forever: processes of every version must agree.
pub(crate) fn hash_pair(a: &str, b: &str) -> u64 {
    let h = fnv1a(fnv1a(FNV_OFFSET, a.as_bytes()), &[0]);
    mix(fnv1a(h, b.as_bytes()))
}

/// Sorts items by rendezvous weight for `stream`, highest first, ties by id.
fn sort_by_rank<T>(stream: &str, items: &mut [T], id: impl Fn(&T) -> &str) {
    items.sort_by_cached_key(|t| (std::cmp::Reverse(weight(stream, id(t))), id(t).to_owned()));
}

/// Rendezvous (highest-random-weight) order of edge ids for a stream: deterministic, stable
/// across processes and builds (FNV-1a 64 over `stream`, a 0 byte, `edge id`, then a splitmix64
/// finalizer). Highest weight first; ties by id.
pub fn rank<'a>(stream: &str, ids: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = ids.into_iter().collect();
    sort_by_rank(stream, &mut out, |id| id);
    out
}

/// Picks the edge for a new session of `stream`, preferring `region`; see the module docs for
/// the policy. `epsilon` is the allowed overload over the average ([`DEFAULT_EPSILON`]);
/// negative or NaN counts as 0. `None` when no candidate is alive and not draining.
pub fn route(stream: &str, region: Option<&str>, candidates: &[Candidate], epsilon: f64) -> Option<Route> {
    let eligible: Vec<&Candidate> = candidates.iter().filter(|c| c.alive && !c.draining).collect();
    let in_region = |c: &&Candidate| region.is_some_and(|r| c.region == r);
    let other_region = region.is_some() && !eligible.iter().any(in_region);
    let mut set: Vec<&Candidate> = if other_region || region.is_none() {
        eligible
    } else {
        eligible.into_iter().filter(in_region).collect()
    };
    if set.is_empty() {
        return None;
    }
    sort_by_rank(stream, &mut set, |c| c.id.as_str());

    let cap = |c: &Candidate| f64::from(c.capacity.max(1));
    let sessions: f64 = set.iter().map(|c| c.sessions as f64).sum();
    let capacity: f64 = set.iter().map(|c| cap(c)).sum();
    let epsilon = if epsilon.is_nan() { 0.0 } else { epsilon.max(0.0) };
    let bound = ((1.0 + epsilon) * (sessions + 1.0) / capacity).max(1.0);
    let under = |c: &&&Candidate| (c.sessions as f64 + 1.0) / cap(c) <= bound;
    let load = |c: &&Candidate| c.sessions as f64 / cap(c);

    let (edge, reason) = if let Some(c) = set.iter().filter(|c| c.carries).find(under) {
        (c, Reason::CarriesStream)
    } else if let Some(c) = set.iter().find(under) {
        (c, Reason::HashOrder)
    } else {
        // Everyone is full: spread the overload. `min_by` keeps the first (best ranked) tie.
        (set.iter().min_by(|a, b| load(a).total_cmp(&load(b)))?, Reason::HashOrder)
    };
    let reason = if other_region { Reason::OtherRegion } else { reason };
    Some(Route { edge: edge.id.clone(), reason })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;
    use proptest::prelude::*;

    fn edge(id: &str, region: &str) -> Candidate {
        Candidate {
            id: id.into(),
            region: region.into(),
            alive: true,
            draining: false,
            sessions: 0,
            capacity: 1,
            carries: false,
        }
    }

    fn four() -> Vec<Candidate> {
        ["a", "b", "c", "d"].iter().map(|id| edge(id, "eu")).collect()
    }

    fn pick(stream: &str, region: Option<&str>, cs: &[Candidate]) -> Route {
        route(stream, region, cs, DEFAULT_EPSILON).unwrap()
    }

    fn idx(cs: &[Candidate], id: &str) -> usize {
        cs.iter().position(|c| c.id == id).unwrap()
    }

    fn at<'c>(cs: &'c mut [Candidate], id: &str) -> &'c mut Candidate {
        cs.iter_mut().find(|c| c.id == id).unwrap()
    }

    #[test]
    fn hash_is_pinned_fnv1a_and_splitmix64() {
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(mix(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn no_eligible_edge_is_none_and_dead_or_draining_never_chosen() {
        assert_eq!(route("s", None, &[], DEFAULT_EPSILON), None);
        let mut cs = four();
        let order = rank("s", ["a", "b", "c", "d"]);
        at(&mut cs, order[0]).alive = false;
        at(&mut cs, order[1]).draining = true;
        assert_eq!(pick("s", None, &cs).edge, order[2]);
        for c in &mut cs {
            c.alive = c.id == order[1]; // the only live edge is draining
        }
        assert_eq!(route("s", None, &cs, DEFAULT_EPSILON), None);
    }

    #[test]
    fn region_preferred_then_other_region_fallback() {
        let mut cs = vec![edge("eu1", "eu"), edge("eu2", "eu"), edge("us1", "us"), edge("us2", "us")];
        for s in ["x", "y", "z", "w"] {
            let r = pick(s, Some("us"), &cs);
            assert!(r.edge.starts_with("us") && r.reason == Reason::HashOrder, "{r:?}");
        }
        cs[2].draining = true;
        cs[3].alive = false;
        cs[1].carries = true;
        let r = pick("x", Some("us"), &cs);
        assert!(r.edge.starts_with("eu") && r.reason == Reason::OtherRegion, "{r:?}");
        assert_eq!(pick("x", Some("mars"), &cs).reason, Reason::OtherRegion);
    }

    #[test]
    fn same_inputs_same_edge_and_streams_spread() {
        let cs = four();
        assert_eq!(pick("live/1", None, &cs), pick("live/1", None, &cs));
        let mut hits = std::collections::BTreeMap::<String, u32>::new();
        for i in 0..1000 {
            *hits.entry(pick(&format!("live/{i}"), None, &cs).edge).or_default() += 1;
        }
        assert_eq!(hits.len(), 4);
        assert!(hits.values().all(|n| (150..=350).contains(n)), "{hits:?}");
    }

    #[test]
    fn carrier_under_bound_wins_overloaded_carrier_does_not() {
        let mut cs = four();
        let order = rank("s", ["a", "b", "c", "d"]);
        let carrier = idx(&cs, order[3]);
        cs[carrier].carries = true;
        assert_eq!(pick("s", None, &cs), Route { edge: order[3].into(), reason: Reason::CarriesStream });
        cs[carrier].sessions = 10;
        assert_eq!(pick("s", None, &cs), Route { edge: order[0].into(), reason: Reason::HashOrder });
    }

    #[test]
    fn bounded_load_keeps_one_stream_compact_then_spreads() {
        let mut cs = four();
        for c in &mut cs {
            c.capacity = 2;
        }
        let mut first = None;
        for n in 1..=100u64 {
            let chosen = idx(&cs, &pick("big", Some("eu"), &cs).edge);
            cs[chosen].sessions += 1;
            cs[chosen].carries = true;
            let average = n as f64 / 4.0;
            let limit = ((1.0 + DEFAULT_EPSILON) * average).ceil() as u64 + 1;
            assert!(cs.iter().all(|c| c.sessions <= limit), "n={n}: {cs:?}");
            let used = cs.iter().filter(|c| c.carries).count();
            if n <= 2 {
                assert_eq!(*first.get_or_insert(chosen), chosen);
                assert_eq!(used, 1);
            }
            if n <= 6 {
                assert!(used < 4, "n={n}");
            }
        }
        assert!(cs.iter().all(|c| c.sessions > 0));
    }

    #[test]
    fn all_full_picks_least_loaded_by_rank() {
        let mut cs = four();
        let order = rank("s", ["a", "b", "c", "d"]);
        for c in &mut cs {
            c.sessions = 1; // bound = 1.25 * 5 / 4 < 2 = (1 + 1) / 1: every edge is full
        }
        assert_eq!(pick("s", None, &cs), Route { edge: order[0].into(), reason: Reason::HashOrder });
        at(&mut cs, order[0]).sessions = 2;
        assert_eq!(pick("s", None, &cs).edge, order[1]);
    }

    #[test]
    fn rank_is_deterministic_permutation() {
        let ids = ["e1", "e2", "e3", "e4", "e5", "e5"];
        let r = rank("s", ids);
        assert_eq!(r, rank("s", ids.iter().rev().copied()));
        let mut sorted = r.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ids);
        assert!(rank("s", []).is_empty());
    }

    fn cluster() -> impl Strategy<Value = Vec<Candidate>> {
        let one = (any::<bool>(), any::<bool>(), 0u32..4, any::<bool>(), any::<bool>(), 0u64..4);
        prop::collection::vec(one, 1..12).prop_map(|v| {
            let it = v.into_iter().enumerate();
            it.map(|(i, (alive, draining, capacity, carries, eu, sessions))| Candidate {
                id: format!("edge-{i}"),
                region: if eu { "eu" } else { "us" }.into(),
                alive: alive || i % 3 == 0,
                draining: draining && i % 2 == 0,
                // Lightly loaded (below one session per unit), so the load bound does not bind
                // and the choice is pure rendezvous + carrier + region preference.
                sessions: sessions.min(u64::from(capacity.max(1)) - 1),
                capacity,
                carries,
            })
            .collect()
        })
    }

    proptest! {
        #[test]
        fn removing_an_unchosen_edge_keeps_the_choice(
            cs in cluster(), stream in "[a-z/0-9]{1,12}", region in prop::option::of("eu|us"),
            victim in any::<prop::sample::Index>(),
        ) {
            let Some(before) = route(&stream, region.as_deref(), &cs, DEFAULT_EPSILON) else {
                return Ok(());
            };
            let victim = victim.index(cs.len());
            prop_assume!(cs[victim].id != before.edge);
            let mut fewer = cs.clone();
            fewer.remove(victim);
            prop_assert_eq!(route(&stream, region.as_deref(), &fewer, DEFAULT_EPSILON), Some(before));
        }
    }
}
