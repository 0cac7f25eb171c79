//! Being part of a cluster: health gossip among all processes ([`gossip`]), and an
//! edge's registration and watch on the control plane ([`control`]).
//!
//! [`ClusterView`] merges both into the answers an edge needs on its hot paths — mainly
//! "which edge originates this stream" — without asking anybody: gossip is fresh and
//! works without the control plane (static stability); the control plane's snapshot
//! covers what gossip has not spread yet.

pub mod control;
pub mod gossip;
pub mod load;
pub mod proof;
pub mod redirect;

use std::sync::Arc;

use control::ControlLink;
use gossip::{Gossip, Member};

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
    /// as an origin first, else the control plane's record (unless gossip knows that edge
    /// is dead).
    pub fn origin_of(&self, stream: &str, self_id: &str) -> Option<Origin> {
        let members = self.gossip.as_ref().map(|g| g.members()).unwrap_or_default();
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

    /// Gossip members (empty without gossip).
    pub fn members(&self) -> Vec<Member> {
        self.gossip.as_ref().map(|g| g.members()).unwrap_or_default()
    }
}
