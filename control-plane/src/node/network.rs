//! Where a node sends raft messages: the [`RaftNetwork`] seam. The QUIC transport
//! (`crate::transport`, a higher module) implements it in production; the in-memory
//! [`MemoryRouter`] here serves deterministic tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use raft::eraftpb::Message;

use super::NodeHandle;

/// Where the node sends raft messages. The QUIC transport in production;
/// [`MemoryRouter`] in tests, which can also cut nodes off.
pub trait RaftNetwork: Send + Sync + 'static {
    /// Queues messages for their destinations (`msg.to`). Must not block.
    fn send(&self, msgs: Vec<Message>);
}

/// An in-memory network between nodes of one process, for deterministic tests of
/// the node logic: delivers directly to each node's handle, and drops everything
/// to or from a partitioned node.
#[derive(Default, Clone)]
pub struct MemoryRouter {
    nodes: Arc<Mutex<HashMap<u64, NodeHandle>>>,
    cut: Arc<Mutex<std::collections::HashSet<u64>>>,
}

impl MemoryRouter {
    /// Connects a node.
    pub fn add(&self, id: u64, node: NodeHandle) {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner).insert(id, node);
    }
    /// Cuts a node off from everyone.
    pub fn partition(&self, id: u64) {
        self.cut.lock().unwrap_or_else(PoisonError::into_inner).insert(id);
    }
    /// Reconnects a node.
    pub fn heal(&self, id: u64) {
        self.cut.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }
}

impl RaftNetwork for MemoryRouter {
    fn send(&self, msgs: Vec<Message>) {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let cut = self.cut.lock().unwrap_or_else(PoisonError::into_inner);
        for msg in msgs {
            if cut.contains(&msg.from) || cut.contains(&msg.to) {
                continue;
            }
            if let Some(node) = nodes.get(&msg.to) {
                node.deliver(msg);
            }
        }
    }
}
