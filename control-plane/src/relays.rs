//! Relay placement (sans-IO): for every stream with a live origin, one edge in each
//! other region pulls the stream from the origin, and the rest of that region pulls
//! from it. A region then costs the origin one upstream copy, however many of its
//! edges have viewers.
//!
//! The leader runs [`plan`] on every failover tick and commits
//! [`crate::state::Command::PlaceRelays`] for the streams whose relays should change.
//! A relay keeps its place until it drains or the leader's failover confirms it dead
//! (which takes it out of every relay list after the grace period, so a gossip blip
//! moves nothing); then the first live edge in the stream's rendezvous order
//! ([`crate::placement::rank`]) of its region takes over — the same order routing uses, so the relay is usually
//! also where that region's viewers land. A relay is only a pointer: it pulls nothing
//! until one of its region's edges asks for the stream.

use std::collections::BTreeMap;

use crate::placement;

/// One registered edge as the leader sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeHealth {
    pub id: String,
    pub region: String,
    /// Alive in gossip.
    pub alive: bool,
    /// Draining, or asked to drain.
    pub draining: bool,
}

/// One stream's placement as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub name: String,
    pub origin: String,
    pub origin_lost: bool,
    pub relays: BTreeMap<String, Vec<String>>,
}

/// A change to commit: `name`'s relays become `relays`, provided `origin` still
/// originates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub name: String,
    pub origin: String,
    pub relays: BTreeMap<String, Vec<String>>,
}

/// The relays every stream should have, for the streams where that differs from now.
/// Streams whose origin is lost or unknown keep what they have (failover already took
/// dead edges out); regions without a live, non-draining edge get no relay.
pub fn plan(streams: &[Placed], edges: &[EdgeHealth]) -> Vec<Placement> {
    // Edges that may keep a relay place, and those that may take a new one.
    let mut kept_by_region: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut fresh_by_region: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in edges.iter().filter(|e| !e.draining) {
        kept_by_region.entry(e.region.as_str()).or_default().push(e.id.as_str());
        if e.alive {
            fresh_by_region.entry(e.region.as_str()).or_default().push(e.id.as_str());
        }
    }
    let mut out = Vec::new();
    for stream in streams.iter().filter(|s| !s.origin_lost) {
        let Some(origin) = edges.iter().find(|e| e.id == stream.origin) else {
            continue;
        };
        let mut want = BTreeMap::new();
        for (region, kept) in &kept_by_region {
            // The origin serves its own region.
            if *region == origin.region {
                continue;
            }
            let current =
                stream.relays.get(*region).into_iter().flatten().find(|id| kept.contains(&id.as_str()));
            let fresh = fresh_by_region.get(region).into_iter().flatten().copied();
            let chosen = match current {
                Some(id) => Some(id.as_str()),
                None => placement::rank(&stream.name, fresh).first().copied(),
            };
            if let Some(id) = chosen {
                want.insert((*region).to_owned(), vec![id.to_owned()]);
            }
        }
        if want != stream.relays {
            out.push(Placement { name: stream.name.clone(), origin: stream.origin.clone(), relays: want });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    fn edge(id: &str, region: &str, alive: bool) -> EdgeHealth {
        EdgeHealth { id: id.into(), region: region.into(), alive, draining: false }
    }

    fn stream(name: &str, origin: &str, relays: &[(&str, &str)]) -> Placed {
        Placed {
            name: name.into(),
            origin: origin.into(),
            origin_lost: false,
            relays: relays.iter().map(|(r, e)| ((*r).to_owned(), vec![(*e).to_owned()])).collect(),
        }
    }

    #[test]
    fn each_other_region_gets_one_relay_in_rendezvous_order() {
        let edges =
            [edge("o", "eu", true), edge("e2", "eu", true), edge("a", "us", true), edge("b", "us", true)];
        let plans = plan(&[stream("live/x", "o", &[])], &edges);
        assert_eq!(plans.len(), 1);
        let first = placement::rank("live/x", ["a", "b"])[0];
        assert_eq!(plans[0].relays, BTreeMap::from([("us".to_owned(), vec![first.to_owned()])]));
        assert_eq!(plans[0].origin, "o");
    }

    #[test]
    fn a_healthy_relay_keeps_its_place_and_nothing_is_committed() {
        let edges = [edge("o", "eu", true), edge("a", "us", true), edge("b", "us", true)];
        for keep in ["a", "b"] {
            assert!(plan(&[stream("live/x", "o", &[("us", keep)])], &edges).is_empty(), "{keep} moved");
        }
    }

    #[test]
    fn a_relay_failover_took_out_or_a_draining_relay_is_replaced_by_a_live_edge() {
        let mut edges = vec![edge("o", "eu", true), edge("a", "us", false), edge("b", "us", true)];
        // Dead in gossip but not confirmed yet: it stays (no churn on a blip) ...
        assert!(plan(&[stream("live/x", "o", &[("us", "a")])], &edges).is_empty());
        // ... once failover dropped it, the live edge takes over, never the dead one.
        let plans = plan(&[stream("live/x", "o", &[])], &edges);
        assert_eq!(plans[0].relays["us"], vec!["b".to_owned()]);
        // A draining relay is replaced right away.
        edges[1] = EdgeHealth { alive: true, draining: true, ..edge("a", "us", true) };
        let plans = plan(&[stream("live/x", "o", &[("us", "a")])], &edges);
        assert_eq!(plans[0].relays["us"], vec!["b".to_owned()]);
        // The last edge of a region draining: the region has no relay.
        let edges = [edge("o", "eu", true), EdgeHealth { draining: true, ..edge("a", "us", true) }];
        let plans = plan(&[stream("live/x", "o", &[("us", "a")])], &edges);
        assert!(plans[0].relays.is_empty());
    }

    #[test]
    fn lost_or_unknown_origins_are_left_alone() {
        let edges = [edge("a", "us", true)];
        let mut lost = stream("live/x", "gone", &[]);
        assert!(plan(std::slice::from_ref(&lost), &edges).is_empty(), "unknown origin");
        lost.origin = "a".into();
        lost.origin_lost = true;
        assert!(plan(&[lost], &edges).is_empty(), "origin lost");
    }

    #[test]
    fn the_origin_region_never_gets_a_relay() {
        let edges = [edge("o", "eu", true), edge("e2", "eu", true)];
        assert!(plan(&[stream("live/x", "o", &[])], &edges).is_empty());
    }
}
