//! Snapshots built off the node's thread. A shadow copy of the state machine on a
//! thread of its own is fed the same committed requests, in the same order, and
//! serializes itself when asked, and writes the snapshot file, while the node goes on
//! applying and answering. Only recording the snapshot (a small sled insert and a flush)
//! and compacting the log are left to the node.
//!
//! The cost is a second `apply` of every request (small next to an fsync) and a second
//! copy of the state in memory; the gain is that a snapshot of a large state (up to
//! 100,000 remembered request ids) never stalls proposals.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use raft::eraftpb::ConfState;
use tokio::sync::mpsc;

use crate::state::{apply, Request, State, StateError};
use crate::storage::write_snapshot_file;

/// Jobs queued for the worker; past this the node waits for it (back-pressure, never
/// loss: every applied request must reach the shadow state).
const JOBS: usize = 1024;

enum Job {
    /// Requests the node applied, with their indexes.
    Apply(Vec<(u64, Request)>),
    /// The node installed a received snapshot: start over from it.
    Reset(Vec<u8>),
    /// Serialize the state as of `index` (everything sent before this job).
    Build { generation: u64, index: u64, conf: ConfState },
}

/// A finished snapshot, or why it could not be made.
pub(super) struct Built {
    /// Which state it belongs to: a snapshot installed since makes it stale.
    pub generation: u64,
    pub index: u64,
    pub conf: ConfState,
    pub data: Result<Vec<u8>, StateError>,
}

/// Where the shadow state lives.
enum Shadow {
    /// On its own thread, fed through a queue.
    Thread { jobs: Option<SyncSender<Job>>, worker: Option<JoinHandle<()>> },
    /// Here, each job done when it is sent (deterministic, for the simulation).
    Inline { state: Result<State, StateError>, done: mpsc::Sender<Built> },
}

/// The node's side of the worker.
pub(super) struct Snapshotter {
    shadow: Shadow,
    /// Finished snapshots, for the node's loop.
    pub built: mpsc::Receiver<Built>,
    /// Bumped by every reset; a `Built` of another generation is dropped.
    generation: u64,
    /// A build was asked for and has not come back.
    building: bool,
    batch: Vec<(u64, Request)>,
}

/// The worker stopped (it cannot: it only ends when the node drops its side).
#[derive(Debug, thiserror::Error)]
#[error("the snapshot worker stopped")]
pub(super) struct WorkerGone;

impl Snapshotter {
    /// Starts the worker on a copy of the node's state (`snapshot`: the bytes the node
    /// started from; empty for an empty state).
    /// With `files`, the worker also writes each snapshot it builds there
    /// ([`write_snapshot_file`]), so storing it costs the node's thread no large write.
    pub fn start(id: u64, snapshot: &[u8], files: Option<PathBuf>) -> Result<Snapshotter, std::io::Error> {
        let (jobs, rx) = sync_channel(JOBS);
        let (done, built) = mpsc::channel(4);
        let state = shadow_of(snapshot);
        let worker = std::thread::Builder::new()
            .name(format!("raft-{id}-snap"))
            .spawn(move || work(state, rx, done, files))?;
        let shadow = Shadow::Thread { jobs: Some(jobs), worker: Some(worker) };
        Ok(Snapshotter { shadow, built, generation: 0, building: false, batch: Vec::new() })
    }

    /// A shadow state without a thread: each job runs when sent, so a build is finished
    /// (in `built`) when [`Snapshotter::build`] returns. Deterministic, for the simulation.
    pub fn inline(snapshot: &[u8]) -> Snapshotter {
        let (done, built) = mpsc::channel(4);
        let shadow = Shadow::Inline { state: shadow_of(snapshot), done };
        Snapshotter { shadow, built, generation: 0, building: false, batch: Vec::new() }
    }

    /// Records a request the node applied at `index`; sent with the next [`flush`].
    pub fn applied(&mut self, index: u64, request: Request) {
        self.batch.push((index, request));
    }

    /// Sends the requests recorded since the last call.
    pub fn flush(&mut self) -> Result<(), WorkerGone> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.send(Job::Apply(batch))
    }

    /// The node replaced its state with a received snapshot.
    pub fn reset(&mut self, data: Vec<u8>) -> Result<(), WorkerGone> {
        self.batch.clear();
        self.generation += 1;
        self.building = false;
        self.send(Job::Reset(data))
    }

    /// Asks for a snapshot as of `index`, unless one is being built.
    pub fn build(&mut self, index: u64, conf: ConfState) -> Result<bool, WorkerGone> {
        if self.building {
            return Ok(false);
        }
        self.flush()?;
        self.send(Job::Build { generation: self.generation, index, conf })?;
        self.building = true;
        Ok(true)
    }

    /// Takes a finished snapshot back: `None` when a reset made it stale.
    pub fn finished(&mut self, built: Built) -> Option<Built> {
        if built.generation != self.generation {
            return None;
        }
        self.building = false;
        Some(built)
    }

    fn send(&mut self, job: Job) -> Result<(), WorkerGone> {
        match &mut self.shadow {
            Shadow::Thread { jobs, .. } => jobs.as_ref().ok_or(WorkerGone)?.send(job).map_err(|_| WorkerGone),
            Shadow::Inline { state, done } => match run(state, job, None) {
                Some(built) => done.try_send(built).map_err(|_| WorkerGone),
                None => Ok(()),
            },
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.built.close();
        if let Shadow::Thread { jobs, worker } = &mut self.shadow {
            // Closing the queue ends the worker after its current job.
            *jobs = None;
            if let Some(worker) = worker.take() {
                let _ = worker.join();
            }
        }
    }
}

fn shadow_of(snapshot: &[u8]) -> Result<State, StateError> {
    if snapshot.is_empty() {
        Ok(State::default())
    } else {
        State::from_snapshot_bytes(snapshot)
    }
}

fn work(
    mut state: Result<State, StateError>,
    jobs: Receiver<Job>,
    done: mpsc::Sender<Built>,
    files: Option<PathBuf>,
) {
    while let Ok(job) = jobs.recv() {
        if let Some(built) = run(&mut state, job, files.as_deref()) {
            if done.blocking_send(built).is_err() {
                return;
            }
        }
    }
}

/// Does one job on the shadow state; a build's result (written into `files` too, when
/// given).
fn run(state: &mut Result<State, StateError>, job: Job, files: Option<&Path>) -> Option<Built> {
    match job {
        Job::Apply(batch) => {
            if let Ok(state) = state {
                for (index, request) in &batch {
                    apply(state, *index, request);
                }
            }
            None
        }
        Job::Reset(data) => {
            *state = State::from_snapshot_bytes(&data);
            None
        }
        Job::Build { generation, index, conf } => {
            let data = match state {
                Ok(state) => state.to_snapshot_bytes(),
                Err(e) => Err(StateError::MalformedSnapshot(format!("the shadow state is unusable: {e}"))),
            };
            if let (Some(dir), Ok(bytes)) = (files, &data) {
                if let Err(e) = write_snapshot_file(dir, index, bytes) {
                    // The node's thread writes it when it stores the snapshot.
                    tracing::warn!(index, error = %ferry_net::Chain(&e), "the snapshot worker could not write the snapshot file");
                }
            }
            Some(Built { generation, index, conf, data })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::state::Command;

    fn register(i: u64) -> Request {
        let command = Command::RegisterEdge {
            id: format!("e{i}"),
            region: "eu".into(),
            quic_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            version: "t".into(),
            capacity: 1,
        };
        Request::internal(format!("r{i}"), "test", i, command)
    }

    /// The shadow state's snapshot equals the state the node applied the same requests
    /// to (in the bytes it returns and in the file it writes), a reset starts it over,
    /// and a build asked before a reset is dropped.
    #[test]
    fn the_shadow_state_snapshots_what_the_node_applied() {
        let files = tempfile::tempdir().unwrap();
        let mut node = State::default();
        let mut snap = Snapshotter::start(1, &[], Some(files.path().to_owned())).unwrap();
        for i in 1..=50 {
            apply(&mut node, i, &register(i));
            snap.applied(i, register(i));
        }
        assert!(snap.build(50, ConfState::default()).unwrap());
        assert!(!snap.build(50, ConfState::default()).unwrap(), "one build at a time");
        let built = {
            let b = snap.built.blocking_recv().unwrap();
            snap.finished(b)
        }
        .unwrap();
        assert_eq!(built.index, 50);
        let data = built.data.unwrap();
        assert_eq!(State::from_snapshot_bytes(&data).unwrap(), node);
        let file = crate::storage::snapshot_file(files.path(), 50);
        assert_eq!(std::fs::read(file).unwrap(), data, "the worker wrote the snapshot file");

        // A build in flight when a received snapshot replaces the state is stale.
        apply(&mut node, 51, &register(51));
        snap.applied(51, register(51));
        assert!(snap.build(51, ConfState::default()).unwrap());
        let mut other = State::default();
        apply(&mut other, 7, &register(7));
        snap.reset(other.to_snapshot_bytes().unwrap()).unwrap();
        assert!({
            let b = snap.built.blocking_recv().unwrap();
            snap.finished(b)
        }
        .is_none());
        apply(&mut other, 8, &register(8));
        snap.applied(8, register(8));
        assert!(snap.build(8, ConfState::default()).unwrap());
        let built = {
            let b = snap.built.blocking_recv().unwrap();
            snap.finished(b)
        }
        .unwrap();
        assert_eq!(State::from_snapshot_bytes(&built.data.unwrap()).unwrap(), other);
    }
}
