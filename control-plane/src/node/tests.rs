//! The node logic over the in-memory router: three nodes in one process, fast
//! ticks, real sled storage in temp dirs, partitions by dropping messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::MemoryRouter;
use super::*;
use crate::state::Command;

struct Cluster {
    nodes: Vec<NodeHandle>,
    router: MemoryRouter,
    cancel: CancellationToken,
    _dirs: Vec<tempfile::TempDir>,
}

fn cluster(n: u64) -> Cluster {
    cluster_from(n, None)
}

/// `n` nodes, each restored from `seed` when given.
fn cluster_from(n: u64, seed: Option<RestoreSeed>) -> Cluster {
    let router = MemoryRouter::default();
    let cancel = CancellationToken::new();
    let peers: BTreeMap<u64, String> = (1..=n).map(|id| (id, format!("mem:{id}"))).collect();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for id in 1..=n {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(id, peers.clone(), dir.path().to_owned());
        config.tick = Duration::from_millis(10);
        config.snapshot_every = 20;
        config.restore = seed.clone();
        let (runner, handle) = open(config).unwrap();
        router.add(id, handle.clone());
        tokio::spawn(runner.run(Arc::new(router.clone()), cancel.clone()));
        nodes.push(handle);
        dirs.push(dir);
    }
    Cluster { nodes, router, cancel, _dirs: dirs }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn leader_of(nodes: &[&NodeHandle]) -> u64 {
    leader_other_than(nodes, 0).await
}

/// Waits (bounded) until every node agrees on one leader that is not `old`.
async fn leader_other_than(nodes: &[&NodeHandle], old: u64) -> u64 {
    for _ in 0..500 {
        let leaders: Vec<u64> = nodes.iter().map(|n| n.status().leader).collect();
        if leaders[0] != 0 && leaders[0] != old && leaders.iter().all(|l| *l == leaders[0]) {
            return leaders[0];
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no agreed leader");
}

fn edge(id: &str) -> Request {
    Request {
        request_id: format!("req-{id}"),
        actor: "test".into(),
        role: String::new(),
        source: String::new(),
        at_ms: 1,
        command: Command::RegisterEdge {
            id: id.into(),
            region: "eu".into(),
            quic_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            version: "t".into(),
            capacity: 1,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_every_node_applies_every_write() {
    let c = cluster(3);
    let all: Vec<&NodeHandle> = c.nodes.iter().collect();
    leader_of(&all).await;
    for (i, node) in c.nodes.iter().enumerate() {
        let (_, outcome) = node.write(edge(&format!("e{i}")), Duration::from_secs(5)).await.unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    for node in &c.nodes {
        node.linearize(Duration::from_secs(5)).await.unwrap();
        assert_eq!(node.read(|s| s.edges.len()), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_is_replaced_and_catches_up_after_healing() {
    let c = cluster(3);
    let all: Vec<&NodeHandle> = c.nodes.iter().collect();
    let old = leader_of(&all).await;
    c.router.partition(old);
    let rest: Vec<&NodeHandle> = c.nodes.iter().filter(|n| n.status().id != old).collect();
    leader_other_than(&rest, old).await;
    // The cut-off node cannot commit.
    let cut = &c.nodes[usize::try_from(old - 1).unwrap()];
    let err = cut.write(edge("lost"), Duration::from_millis(500)).await.unwrap_err();
    assert!(matches!(err, NodeError::Timeout(_) | NodeError::NoLeader), "{err:?}");
    // The majority goes on, past a snapshot.
    for i in 0..30 {
        rest[i % 2].write(edge(&format!("m{i}")), Duration::from_secs(5)).await.unwrap();
    }
    c.router.heal(old);
    cut.linearize(Duration::from_secs(10)).await.unwrap();
    assert_eq!(cut.read(|s| s.edges.len()), rest[0].read(|s| s.edges.len()));
    assert!(cut.read(|s| !s.edges.contains_key("lost")), "an unacknowledged write must not appear by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_id_is_applied_once() {
    let c = cluster(3);
    let all: Vec<&NodeHandle> = c.nodes.iter().collect();
    leader_of(&all).await;
    let (_, first) = c.nodes[0].write(edge("x"), Duration::from_secs(5)).await.unwrap();
    // The retry (through another node) gets the first outcome back, not a second apply.
    let (_, again) = c.nodes[1].write(edge("x"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(first, again);
    for node in &c.nodes {
        node.linearize(Duration::from_secs(5)).await.unwrap();
        assert_eq!(node.read(|s| s.audit.iter().filter(|e| e.request_id == "req-x").count()), 1);
    }
}

/// Internal writes carry no request id (the rollout guard's trips, relay placements):
/// writes waiting together on one node each get their own entry's answer, never the
/// first one to apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_a_request_id_each_get_their_own_answer() {
    let c = cluster(3);
    let all: Vec<&NodeHandle> = c.nodes.iter().collect();
    leader_of(&all).await;
    let internal = |command| Request::internal(String::new(), "test", 1, command);
    for round in 0..20 {
        let register = internal(edge(&format!("e{round}")).command);
        let drain_unknown = internal(Command::DrainEdge { id: format!("nobody-{round}") });
        let (registered, drained) = tokio::join!(
            c.nodes[0].write(register, Duration::from_secs(5)),
            c.nodes[0].write(drain_unknown, Duration::from_secs(5)),
        );
        let ((i1, registered), (i2, drained)) = (registered.unwrap(), drained.unwrap());
        assert_ne!(i1, i2);
        assert!(matches!(registered, crate::state::Outcome::Ok { .. }), "round {round}: {registered:?}");
        assert!(matches!(drained, crate::state::Outcome::Rejected { .. }), "round {round}: {drained:?}");
    }
}

/// A follower forwards a proposal to the leader it believes in; when that leader is cut
/// off, the follower proposes the write again to the next leader (same id: applied
/// once) instead of letting it wait out the caller's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_lost_leader_is_proposed_to_the_next_one() {
    let c = cluster(3);
    let all: Vec<&NodeHandle> = c.nodes.iter().collect();
    let old = leader_of(&all).await;
    let follower = c.nodes.iter().find(|n| n.status().id != old).unwrap();
    c.router.partition(old);
    // The follower still believes in `old` (an election takes 5–10 ticks).
    assert_eq!(follower.status().leader, old);
    let (_, outcome) = follower.write(edge("moved"), Duration::from_secs(3)).await.unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(follower.status().reproposals >= 1, "{:?}", follower.status());
    let rest: Vec<&NodeHandle> = c.nodes.iter().filter(|n| n.status().id != old).collect();
    for node in rest {
        node.linearize(Duration::from_secs(5)).await.unwrap();
        assert_eq!(node.read(|s| s.audit.iter().filter(|e| e.request_id == "req-moved").count()), 1);
    }
}

/// raft-rs keeps a leader that removed itself leading (and panics on its next append
/// response); the node steps down and hands over instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_hands_over_to_another_voter() {
    let c = cluster(3);
    let all: Vec<&NodeHandle> = c.nodes.iter().collect();
    let old = leader_of(&all).await;
    let follower = c.nodes.iter().find(|n| n.status().id != old).unwrap();
    follower.remove_voter(old, Duration::from_secs(5)).await.unwrap();
    let rest: Vec<&NodeHandle> = c.nodes.iter().filter(|n| n.status().id != old).collect();
    let new = leader_other_than(&rest, old).await;
    assert_ne!(new, old);
    let (_, outcome) = rest[0].write(edge("after"), Duration::from_secs(5)).await.unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(rest[1].status().voters.len(), 2);
    // The removed node is still running (it stepped down; it did not panic).
    let removed = &c.nodes[usize::try_from(old - 1).unwrap()];
    assert_ne!(removed.status().role, "leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_restores_a_new_cluster_that_goes_on_after_it() {
    let old = cluster(3);
    let all: Vec<&NodeHandle> = old.nodes.iter().collect();
    leader_of(&all).await;
    // Past a snapshot, so the image is not the stored snapshot.
    for i in 0..30 {
        old.nodes[i % 3].write(edge(&format!("e{i}")), Duration::from_secs(5)).await.unwrap();
    }
    old.nodes[1].linearize(Duration::from_secs(5)).await.unwrap();
    let image = old.nodes[1].image(Duration::from_secs(5)).await.unwrap();
    assert!(image.index >= 30 && image.term >= 1, "{} {}", image.index, image.term);
    assert_eq!(image.voters, vec![1, 2, 3]);
    assert_eq!(image.state.edges.len(), 30);
    let seed = RestoreSeed {
        index: image.index,
        term: image.term,
        data: image.state.to_snapshot_bytes().unwrap(),
        cluster_uuid: "restored".into(),
    };
    drop(old);

    let new = cluster_from(3, Some(seed.clone()));
    let all: Vec<&NodeHandle> = new.nodes.iter().collect();
    leader_of(&all).await;
    for node in &new.nodes {
        assert_eq!(node.cluster_uuid(), Some("restored"));
        node.linearize(Duration::from_secs(5)).await.unwrap();
        assert_eq!(node.read(|s| s.edges.clone()), image.state.edges);
    }
    let (index, outcome) = new.nodes[2].write(edge("after"), Duration::from_secs(5)).await.unwrap();
    assert!(outcome.is_ok() && index > image.index, "{index} after {}", image.index);
    // A request id the old cluster applied is still remembered.
    let (_, again) = new.nodes[0].write(edge("e3"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(again, image.state.applied_requests["req-e3"].1);
}

#[test]
fn a_restore_reopens_its_own_cluster_and_refuses_any_other_raft_state() {
    let dir = tempfile::tempdir().unwrap();
    let peers: BTreeMap<u64, String> = [(1, "mem:1".to_owned())].into();
    let seed = |uuid: &str| RestoreSeed {
        index: 10,
        term: 2,
        data: crate::state::State::default().to_snapshot_bytes().unwrap(),
        cluster_uuid: uuid.into(),
    };
    let config = |seed: Option<RestoreSeed>| {
        let mut config = NodeConfig::new(1, peers.clone(), dir.path().to_owned());
        config.restore = seed;
        config
    };
    let reopen = |config: NodeConfig| {
        // sled lets go of its lock a moment after the last handle is dropped.
        for _ in 0..500 {
            match open(config.clone()) {
                Err(NodeError::Storage { source, .. }) if source.to_string().contains("lock") => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other.map(|(_, handle)| handle),
            }
        }
        panic!("the store stayed locked");
    };
    let handle = reopen(config(Some(seed("one")))).unwrap();
    assert_eq!((handle.cluster_uuid(), handle.read(|s| s.applied_index)), (Some("one"), 0));
    drop(handle);
    // Restarted with the same flag: opened as it is; without it: the same cluster.
    assert_eq!(reopen(config(Some(seed("one")))).unwrap().cluster_uuid(), Some("one"));
    assert_eq!(reopen(config(None)).unwrap().cluster_uuid(), Some("one"));
    let err = reopen(config(Some(seed("two")))).map(|_| ()).unwrap_err();
    assert!(matches!(&err, NodeError::RestoreRefused(m) if m.contains("one")), "{err}");
    // A founded cluster's data dir is refused too.
    let founded = tempfile::tempdir().unwrap();
    let mut plain = NodeConfig::new(1, peers.clone(), founded.path().to_owned());
    drop(reopen(plain.clone()).unwrap());
    plain.restore = Some(seed("one"));
    let err = reopen(plain).map(|_| ()).unwrap_err();
    assert!(matches!(err, NodeError::RestoreRefused(_)), "{err}");
}
