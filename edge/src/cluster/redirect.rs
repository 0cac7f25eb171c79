//! When an edge is not the place for a new WHIP/WHEP session, it answers 307 to one
//! that is (sans-IO: decided from the gossip view alone, so it works without the
//! control plane):
//! - a draining edge sends every new session to another live edge, chosen like
//!   `/v1/route` (region, carriers, load);
//! - a WHIP publisher of a stream another live edge already originates goes to that
//!   origin (one origin per stream; it answers 409 if its publisher is still there),
//!   unless the stream's publisher is here (then this edge answers: 409, or the
//!   takeover).

use ferry_proto::placement::{self, Candidate};

use ferry_proto::api::Member;

/// What the session wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Whip,
    Whep,
}

/// The `http_addr` of the edge to send the session to, or None to serve it here.
pub fn target(
    members: &[Member],
    self_id: &str,
    self_region: &str,
    draining: bool,
    kind: Kind,
    stream: &str,
    published_here: bool,
) -> Option<String> {
    let others = || {
        members
            .iter()
            .filter(|m| m.info.role == "edge" && m.id != self_id && m.alive && !m.info.http_addr.is_empty())
    };
    if kind == Kind::Whip && !published_here {
        if let Some(origin) = others().find(|m| m.info.origins.contains(stream)) {
            return Some(origin.info.http_addr.clone());
        }
    }
    if !draining {
        return None;
    }
    let candidates: Vec<Candidate> = others()
        .map(|m| Candidate {
            id: m.id.clone(),
            region: m.info.region.clone(),
            alive: true,
            draining: m.info.draining,
            sessions: m.info.sessions,
            capacity: 100,
            carries: kind == Kind::Whep
                && (m.info.origins.contains(stream) || m.info.carries.contains(stream)),
        })
        .collect();
    let route = placement::route(stream, Some(self_region), &candidates, placement::DEFAULT_EPSILON)?;
    others().find(|m| m.id == route.edge).map(|m| m.info.http_addr.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use std::collections::BTreeSet;

    use super::*;
    use ferry_proto::api::SelfInfo;

    fn member(id: &str, region: &str, alive: bool, draining: bool, origins: &[&str]) -> Member {
        Member {
            id: id.into(),
            gossip_addr: String::new(),
            generation: 1,
            alive,
            info: SelfInfo {
                role: "edge".into(),
                region: region.into(),
                quic_addr: format!("{id}:4433"),
                http_addr: format!("{id}:8080"),
                draining,
                origins: origins.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
                ..SelfInfo::default()
            },
        }
    }

    #[test]
    fn a_serving_edge_keeps_its_viewers_and_sends_publishers_to_the_origin() {
        let members = vec![member("me", "eu", true, false, &[]), member("o", "us", true, false, &["live/a"])];
        assert_eq!(target(&members, "me", "eu", false, Kind::Whep, "live/a", false), None);
        assert_eq!(target(&members, "me", "eu", false, Kind::Whip, "live/a", false), Some("o:8080".into()));
        // Gossip may still show another origin while the stream's publisher is here
        // (a publisher there was just refused): this edge answers.
        assert_eq!(target(&members, "me", "eu", false, Kind::Whip, "live/a", true), None);
        assert_eq!(
            target(&members, "me", "eu", false, Kind::Whip, "live/b", false),
            None,
            "a new stream starts here"
        );
    }

    #[test]
    fn a_draining_edge_sends_sessions_to_a_live_edge_in_its_region_first() {
        let members = vec![
            member("me", "eu", true, true, &[]),
            member("dead", "eu", false, false, &[]),
            member("busy", "eu", true, true, &[]),
            member("far", "us", true, false, &[]),
            member("near", "eu", true, false, &[]),
        ];
        assert_eq!(target(&members, "me", "eu", true, Kind::Whep, "live/a", false), Some("near:8080".into()));
        let only_far = vec![member("me", "eu", true, true, &[]), member("far", "us", true, false, &[])];
        assert_eq!(target(&only_far, "me", "eu", true, Kind::Whep, "live/a", false), Some("far:8080".into()));
        assert_eq!(
            target(&only_far[..1], "me", "eu", true, Kind::Whep, "live/a", false),
            None,
            "nowhere to go"
        );
    }
}
