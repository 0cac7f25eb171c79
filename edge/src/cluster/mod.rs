//! Being part of a cluster: health gossip among all processes (`ferry_net::gossip`),
//! and an edge's registration and watch on the control plane ([`control`]).
//!
//! [`ClusterView`] merges both into the answers an edge needs on its hot paths — mainly
//! "which edge originates this stream" — without asking anybody: gossip is fresh and
//! works without the control plane (static stability); the control plane's snapshot
//! covers what gossip has not spread yet.

pub mod control;
pub mod load;
pub mod origins;
pub mod redirect;

use std::sync::Arc;

use control::ControlLink;
use ferry_net::gossip::{Gossip, Member};

/// What an edge knows about the cluster. Both parts are optional: a static edge
/// (`--upstream`) has neither.
#[derive(Clone, Default)]
pub struct ClusterView {
    pub gossip: Option<Arc<Gossip>>,
    pub control: Option<Arc<ControlLink>>,
}

/// Where to pull a stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub edge: String,
    pub quic_addr: String,
}

impl ClusterView {
    /// The edge originating `stream`, other than `self_id`: a live edge that gossips it
    /// as an origin first (only edges the control plane vouches for, at their registered
    /// addresses: [`ClusterView::vouched_members`]), else the control plane's record
    /// (unless gossip knows that edge is dead).
    pub fn origin_of(&self, stream: &str, self_id: &str) -> Option<Origin> {
        let members = self.vouched_members();
        let live_origin = members
            .iter()
            .filter(|m| m.alive && !m.info.quic_addr.is_empty() && m.id != self_id)
            .find(|m| m.info.origins.contains(stream));
        if let Some(m) = live_origin {
            return Some(Origin { edge: m.id.clone(), quic_addr: m.info.quic_addr.clone() });
        }
        let snapshot = self.control.as_ref()?.snapshot();
        let record = snapshot.streams.get(stream)?;
        if record.origin == self_id || record.origin_lost {
            return None;
        }
        let dead = members.iter().any(|m: &Member| m.id == record.origin && !m.alive);
        if dead {
            return None;
        }
        let edge = snapshot.edges.get(&record.origin)?;
        Some(Origin { edge: edge.id.clone(), quic_addr: edge.quic_addr.clone() })
    }

    /// Where this edge (`self_id` in `region`) pulls `stream` from: the relay the
    /// control plane placed in its region when the origin is elsewhere, the origin
    /// itself otherwise — and always when `for_edge` (another edge asks: relays pull
    /// only from origins, so a stale placement can never make two edges pull from each
    /// other), when this edge is the relay, or when the relay is dead, draining or
    /// unknown.
    pub fn upstream_of(&self, stream: &str, self_id: &str, region: &str, for_edge: bool) -> Option<Origin> {
        let origin = self.origin_of(stream, self_id)?;
        if for_edge {
            return Some(origin);
        }
        let members = self.members();
        let Some(control) = self.control.as_ref() else {
            return Some(origin);
        };
        let snapshot = control.snapshot();
        let origin_region = members
            .iter()
            .find(|m| m.id == origin.edge && m.alive)
            .map(|m| m.info.region.clone())
            .or_else(|| snapshot.edges.get(&origin.edge).map(|e| e.region.clone()));
        if origin_region.as_deref() == Some(region) {
            return Some(origin);
        }
        let relays = snapshot.streams.get(stream).and_then(|s| s.relays.get(region));
        let relay = relays.into_iter().flatten().find_map(|id| {
            let edge = snapshot.edges.get(id)?;
            let usable = match &self.gossip {
                Some(_) => members.iter().any(|m| &m.id == id && m.alive && !m.info.draining),
                None => true,
            };
            (usable && !edge.draining).then_some(edge)
        });
        match relay {
            Some(edge) if edge.id != self_id => {
                Some(Origin { edge: edge.id.clone(), quic_addr: edge.quic_addr.clone() })
            }
            _ => Some(origin),
        }
    }

    /// Another edge where a publisher of `stream` is live now, by gossip (which
    /// knows within a round when a publisher leaves, so a vanished publisher never
    /// keeps a stream busy): the edge id. Only edges the control plane vouches for
    /// count ([`ClusterView::vouched_members`]): a process that only gossips cannot
    /// make a stream busy. `None` without gossip.
    pub fn live_origin_elsewhere(&self, stream: &str, self_id: &str) -> Option<String> {
        self.gossip.as_ref()?;
        let members = self.vouched_members();
        members
            .into_iter()
            .find(|m| m.alive && m.id != self_id && m.info.role == "edge" && m.info.origins.contains(stream))
            .map(|m| m.id)
    }

    /// Whether `edge` is live and publishing `stream`, by gossip. Without gossip
    /// nothing is known, so the edge is taken to be live.
    pub fn origin_live(&self, edge: &str, stream: &str) -> bool {
        let Some(gossip) = self.gossip.as_ref() else { return true };
        gossip.members().into_iter().any(|m| m.alive && m.id == edge && m.info.origins.contains(stream))
    }

    /// Gossip members (empty without gossip).
    pub fn members(&self) -> Vec<Member> {
        self.gossip.as_ref().map(|g| g.members()).unwrap_or_default()
    }

    /// Gossip members whose claims may move traffic: edges registered with the control
    /// plane under the id they gossip, with the addresses of their registration (never
    /// the addresses they gossip), and every non-edge member as it is. Gossip is a hint:
    /// a process that holds the gossip key but never registered is left out. Without a
    /// control link (a static edge) gossip is all there is, and so it is for an edge
    /// that has not read the control plane's records yet (one started while the whole
    /// control plane is down still finds origins and serves viewers); once it has, the
    /// last records it read vouch, through any later outage.
    pub fn vouched_members(&self) -> Vec<Member> {
        let members = self.members();
        let Some(control) = self.control.as_ref() else { return members };
        if control.syncs() == 0 {
            return members;
        }
        let snapshot = control.snapshot();
        members
            .into_iter()
            .filter_map(|mut m| {
                if m.info.role != "edge" {
                    return Some(m);
                }
                let edge = snapshot.edges.get(&m.id)?;
                m.info.http_addr = edge.http_addr.clone();
                m.info.quic_addr = edge.quic_addr.clone();
                Some(m)
            })
            .collect()
    }
}
