//! A [`LogStore`] in memory whose "disk" survives a simulated crash: what was flushed
//! survives, and so does a random prefix of what was not (sled's background flusher may
//! have written some of it; nothing promises all or none). Semantics follow `SledStore`.

use std::cmp;
use std::sync::{Arc, Mutex, PoisonError};

use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::Rng;
use crate::storage::{LogStore, StoreError};

/// Everything a store holds.
#[derive(Clone, Default)]
struct Data {
    /// Entries after the snapshot: `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    applied: u64,
}

/// One write, as the disk sees it.
#[derive(Clone)]
enum Op {
    Append(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    ApplySnapshot(Snapshot),
    CreateSnapshot { index: u64, term: u64, conf: ConfState, data: Vec<u8> },
    Applied(u64),
}

impl Data {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    fn term_of(&self, index: u64) -> Result<u64, StoreError> {
        if index == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if index < self.first() {
            return Err(StoreError::Compacted { index, first: self.first() });
        }
        if index > self.last() {
            return Err(StoreError::Unavailable { index, last: self.last() });
        }
        let at = usize::try_from(index - self.first()).unwrap_or(usize::MAX);
        self.entries
            .get(at)
            .map(|e| e.term)
            .ok_or_else(|| StoreError::Corrupt(format!("entry {index} is missing")))
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Append(entries) => {
                let Some(head) = entries.first() else { return };
                let keep = usize::try_from(head.index.saturating_sub(self.first())).unwrap_or(usize::MAX);
                self.entries.truncate(keep);
                self.entries.extend(entries);
            }
            Op::HardState(hs) => self.hard_state = hs,
            Op::ConfState(cs) => self.conf_state = cs,
            Op::ApplySnapshot(snapshot) => {
                let meta = snapshot.get_metadata();
                self.hard_state.term = cmp::max(self.hard_state.term, meta.term);
                self.hard_state.commit = meta.index;
                self.conf_state = meta.get_conf_state().clone();
                self.applied = meta.index;
                self.entries.clear();
                self.snapshot = snapshot;
            }
            Op::CreateSnapshot { index, term, conf, data } => {
                let drop = usize::try_from(index.saturating_sub(self.snapshot_index())).unwrap_or(usize::MAX);
                self.entries.drain(..drop.min(self.entries.len()));
                let mut meta = SnapshotMetadata { index, term, ..SnapshotMetadata::default() };
                meta.set_conf_state(conf);
                let mut snapshot = Snapshot::default();
                snapshot.set_metadata(meta);
                snapshot.data = data;
                self.snapshot = snapshot;
            }
            Op::Applied(index) => self.applied = index,
        }
    }
}

/// The part of a node that survives its crash.
#[derive(Default)]
pub struct Disk {
    durable: Data,
    /// Written, not yet flushed.
    pending: Vec<Op>,
}

impl Disk {
    /// A crash: keeps what was flushed and a random prefix of the rest.
    pub fn crash(&mut self, rng: &mut Rng) {
        let keep = usize::try_from(rng.below(self.pending.len() as u64 + 1)).unwrap_or(0);
        for op in self.pending.drain(..).take(keep) {
            self.durable.apply(op);
        }
    }

    /// Writes everything pending (sled's background flush, for the broken variant).
    pub fn flush(&mut self) {
        for op in self.pending.drain(..) {
            self.durable.apply(op);
        }
    }
}

/// The store a simulated node writes through.
pub struct MemStore {
    view: Data,
    disk: Arc<Mutex<Disk>>,
    /// The broken variant: `flush` does nothing (acknowledging before the disk has it).
    lazy: bool,
}

impl MemStore {
    /// A store over `disk` as it stands (after a crash, its durable part).
    pub fn open(disk: Arc<Mutex<Disk>>, lazy: bool) -> MemStore {
        let view = disk.lock().unwrap_or_else(PoisonError::into_inner).durable.clone();
        MemStore { view, disk, lazy }
    }

    /// A founding voter's first configuration, flushed.
    pub fn initialize(&mut self, voters: &[u64]) {
        let cs = ConfState::from((voters.iter().copied(), std::iter::empty()));
        self.write(Op::ConfState(cs));
        self.disk.lock().unwrap_or_else(PoisonError::into_inner).flush();
    }

    fn write(&mut self, op: Op) {
        self.view.apply(op.clone());
        self.disk.lock().unwrap_or_else(PoisonError::into_inner).pending.push(op);
    }
}

impl Storage for MemStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.view.hard_state.clone(), self.view.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let data = &self.view;
        if low < data.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > data.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let at = usize::try_from(index - data.first()).unwrap_or(usize::MAX);
            let Some(entry) = data.entries.get(at) else {
                return Err(raft::Error::Store(StorageError::Unavailable));
            };
            size += entry.encoded_len() as u64;
            if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.view.term_of(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.view.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.view.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let index = self.view.snapshot_index();
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.view.snapshot.clone())
    }
}

impl LogStore for MemStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(head) = entries.first() else { return Ok(()) };
        if head.index < self.view.first() {
            return Err(StoreError::Compacted { index: head.index, first: self.view.first() });
        }
        if head.index > self.view.last() + 1 {
            return Err(StoreError::NotContiguous { index: head.index, after: self.view.last() });
        }
        self.write(Op::Append(entries.to_vec()));
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StoreError> {
        self.write(Op::HardState(hs.clone()));
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StoreError> {
        self.write(Op::ConfState(cs.clone()));
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let index = snapshot.get_metadata().index;
        if index < self.view.first() {
            return Err(StoreError::SnapshotOutOfDate { index, first: self.view.first() });
        }
        self.write(Op::ApplySnapshot(snapshot));
        Ok(())
    }

    fn create_snapshot(&mut self, index: u64, conf: ConfState, data: Vec<u8>) -> Result<(), StoreError> {
        if index < self.view.snapshot_index() {
            return Err(StoreError::SnapshotOutOfDate { index, first: self.view.first() });
        }
        let term = self.view.term_of(index)?;
        self.write(Op::CreateSnapshot { index, term, conf, data });
        Ok(())
    }

    fn set_applied(&mut self, index: u64) -> Result<(), StoreError> {
        self.write(Op::Applied(index));
        Ok(())
    }

    fn applied(&self) -> u64 {
        self.view.applied
    }

    fn flush(&self) -> Result<(), StoreError> {
        if !self.lazy {
            self.disk.lock().unwrap_or_else(PoisonError::into_inner).flush();
        }
        Ok(())
    }
}
