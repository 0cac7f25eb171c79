//! The raft log, hard state, conf state and snapshots, on sled.
//!
//! [`LogStore`] is the seam the driver writes through; [`SledStore`] is the one real
//! implementation. Semantics follow raft-rs's `MemStorage`: the log starts right after the
//! stored snapshot (`first_index = snapshot index + 1`), the term of the snapshot index stays
//! answerable after compaction, and a fresh store is "compacted at 0".
//!
//! Layout: tree `entries` maps an index (u64, big-endian, so keys sort by index) to the
//! protobuf bytes of the [`Entry`]; tree `meta` holds the hard state, conf state, snapshot
//! metadata and data, and the applied index. Writes are not durable until [`LogStore::flush`].

use std::cmp;
use std::path::Path;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional as _;

use crate::raft_codec::{self, decode, encode};

#[cfg(test)]
mod tests;

const ENTRIES_TREE: &str = "entries";
const META_TREE: &str = "meta";
const HARD_STATE_KEY: &[u8] = b"hard_state";
const CONF_STATE_KEY: &[u8] = b"conf_state";
const SNAPSHOT_META_KEY: &[u8] = b"snapshot_meta";
const SNAPSHOT_DATA_KEY: &[u8] = b"snapshot_data";
const APPLIED_KEY: &[u8] = b"applied";
/// The identity of a cluster restored from a backup (absent for other clusters).
const CLUSTER_UUID_KEY: &[u8] = b"cluster_uuid";

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (IO, corruption it detected).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Stored bytes are not the protobuf message they should be.
    #[error(transparent)]
    Codec(#[from] raft_codec::DecodeError),
    /// The request reaches below the first index still in the log.
    #[error("index {index} is compacted; the log starts at {first}")]
    Compacted { index: u64, first: u64 },
    /// The request reaches past the end of the log.
    #[error("index {index} is past the last index {last}")]
    Unavailable { index: u64, last: u64 },
    /// Appended entries do not follow on from the log or from each other.
    #[error("entry {index} does not follow index {after}")]
    NotContiguous { index: u64, after: u64 },
    /// A snapshot older than what the store already holds.
    #[error("snapshot at {index} is older than the log's first index {first}")]
    SnapshotOutOfDate { index: u64, first: u64 },
    /// The stored data breaks an invariant of this module.
    #[error("corrupt raft store: {0}")]
    Corrupt(String),
}

impl From<StoreError> for raft::Error {
    fn from(e: StoreError) -> Self {
        raft::Error::Store(match e {
            StoreError::Compacted { .. } => StorageError::Compacted,
            StoreError::Unavailable { .. } => StorageError::Unavailable,
            StoreError::SnapshotOutOfDate { .. } => StorageError::SnapshotOutOfDate,
            other => StorageError::Other(Box::new(other)),
        })
    }
}

/// What the raft driver needs from storage beyond reading ([`raft::Storage`]).
pub trait LogStore: raft::Storage + Send + 'static {
    /// Appends entries, first truncating any entries at or after the first new index.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError>;
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StoreError>;
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StoreError>;
    /// Replaces the log with a snapshot received from the leader: the log becomes empty at
    /// the snapshot index, commit moves to it, and the conf state becomes the snapshot's.
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError>;
    /// Stores `data` (the state machine at `index`, which must be applied and committed) as
    /// the snapshot, then compacts the log up to and including `index`.
    fn create_snapshot(&mut self, index: u64, conf: ConfState, data: Vec<u8>) -> Result<(), StoreError>;
    /// Records the highest index applied to the state machine.
    fn set_applied(&mut self, index: u64) -> Result<(), StoreError>;
    fn applied(&self) -> u64;
    /// Makes every earlier write durable (fsync). Call once per Ready, before sending its
    /// messages or answering clients.
    fn flush(&self) -> Result<(), StoreError>;
}

/// [`LogStore`] on a sled database. sled is the source of truth; the indexes, hard state,
/// conf state and snapshot metadata are cached here because raft reads them constantly.
pub struct SledStore {
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    hard_state: HardState,
    conf_state: ConfState,
    /// Metadata of the stored snapshot; its data is read only when raft asks for it.
    snapshot_meta: SnapshotMetadata,
    /// Index of the newest entry, or the snapshot index if the log is empty.
    last_index: u64,
    applied: u64,
    /// See [`SledStore::cluster_uuid`].
    cluster_uuid: Option<String>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("first_index", &self.first())
            .field("last_index", &self.last_index)
            .field("hard_state", &self.hard_state)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, and finishes a compaction a crash interrupted.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let entries = db.open_tree(ENTRIES_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let hard_state: HardState = read_message(&meta, HARD_STATE_KEY)?.unwrap_or_default();
        let conf_state: ConfState = read_message(&meta, CONF_STATE_KEY)?.unwrap_or_default();
        let snapshot_meta: SnapshotMetadata = read_message(&meta, SNAPSHOT_META_KEY)?.unwrap_or_default();
        let applied = match meta.get(APPLIED_KEY)? {
            Some(bytes) => decode_index(&bytes)?,
            None => 0,
        };

        // `create_snapshot` writes the snapshot before it compacts; finish the job.
        let mut batch = sled::Batch::default();
        for key in entries.range(..index_key(snapshot_meta.index.saturating_add(1))).keys() {
            batch.remove(key?);
        }
        entries.apply_batch(batch)?;

        let first = snapshot_meta.index.saturating_add(1);
        // The log runs without a hole from right after the snapshot.
        let mut last_index = snapshot_meta.index;
        for key in entries.iter().keys() {
            let index = decode_index(&key?)?;
            if index != last_index.saturating_add(1) {
                return Err(StoreError::Corrupt(format!(
                    "the log has entry {index} after {last_index} (it should start at {first} and have no gaps)"
                )));
            }
            last_index = index;
        }
        // raft-rs would stop the process on these; say what is wrong instead.
        if hard_state.commit > last_index || hard_state.commit < snapshot_meta.index {
            return Err(StoreError::Corrupt(format!(
                "the hard state commits index {} but the log holds {first}..={last_index} after a snapshot at {} \
                 (entries lost, or the hard state damaged)",
                hard_state.commit, snapshot_meta.index
            )));
        }
        let applied = cmp::max(applied, snapshot_meta.index);
        let cluster_uuid = match meta.get(CLUSTER_UUID_KEY)? {
            Some(bytes) => Some(
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| StoreError::Corrupt("the stored cluster uuid is not UTF-8".to_owned()))?,
            ),
            None => None,
        };
        Ok(SledStore {
            db,
            entries,
            meta,
            hard_state,
            conf_state,
            snapshot_meta,
            last_index,
            applied,
            cluster_uuid,
        })
    }

    /// The identity of the cluster this store belongs to, when it was restored from a
    /// backup (`None`: a cluster that was founded, not restored).
    pub fn cluster_uuid(&self) -> Option<&str> {
        self.cluster_uuid.as_deref()
    }

    /// Records the identity of the restored cluster an empty store is about to join
    /// (`ferry control --join --cluster-uuid`), durably. Refused unless the store is
    /// empty and has no identity yet.
    pub fn set_cluster_uuid(&mut self, cluster_uuid: &str) -> Result<(), StoreError> {
        if !self.is_empty() || self.cluster_uuid.is_some() {
            return Err(StoreError::Corrupt("a cluster identity is given only to an empty store".to_owned()));
        }
        self.meta.insert(CLUSTER_UUID_KEY, cluster_uuid.as_bytes())?;
        self.flush()?;
        self.cluster_uuid = Some(cluster_uuid.to_owned());
        Ok(())
    }

    /// Seeds an empty store from a backup: the snapshot (`data` at `index`, `term`) with
    /// `voters` as its configuration, a hard state committing `index` in `term`, the
    /// applied index, and the restored cluster's identity, in one transaction, then
    /// flushed. Refused (`Corrupt`) unless the store is empty.
    pub fn restore(
        &mut self,
        index: u64,
        term: u64,
        voters: &[u64],
        data: &[u8],
        cluster_uuid: &str,
    ) -> Result<(), StoreError> {
        if !self.is_empty() || self.cluster_uuid.is_some() {
            return Err(StoreError::Corrupt("a backup is restored only into an empty store".to_owned()));
        }
        let conf_state = ConfState::from((voters.iter().copied(), std::iter::empty()));
        let mut meta = SnapshotMetadata { index, term, ..SnapshotMetadata::default() };
        meta.set_conf_state(conf_state.clone());
        let hard_state = HardState { term, commit: index, ..HardState::default() };
        let meta_bytes = encode(&meta);
        let hard_state_bytes = encode(&hard_state);
        let conf_state_bytes = encode(&conf_state);
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META_KEY, meta_bytes);
        batch.insert(SNAPSHOT_DATA_KEY, data);
        batch.insert(HARD_STATE_KEY, hard_state_bytes);
        batch.insert(CONF_STATE_KEY, conf_state_bytes);
        batch.insert(APPLIED_KEY, &index_key(index));
        batch.insert(CLUSTER_UUID_KEY, cluster_uuid.as_bytes());
        // One batch is atomic in sled: a crash leaves an empty store or a restored one.
        self.meta.apply_batch(batch)?;
        self.flush()?;
        self.snapshot_meta = meta;
        self.hard_state = hard_state;
        self.conf_state = conf_state;
        self.last_index = index;
        self.applied = index;
        self.cluster_uuid = Some(cluster_uuid.to_owned());
        Ok(())
    }

    /// Gives a brand-new store its first configuration: every founding voter starts with the
    /// same conf state and an empty log, as raft-rs's examples do. Does nothing if the store
    /// already holds any raft state (check [`SledStore::is_empty`] to tell).
    pub fn initialize(&mut self, voters: &[u64]) -> Result<(), StoreError> {
        if !self.is_empty() {
            return Ok(());
        }
        self.set_conf_state(&ConfState::from((voters.iter().copied(), std::iter::empty())))?;
        self.flush()
    }

    /// Whether nothing raft-related was ever stored: no entries, snapshot, votes or members.
    pub fn is_empty(&self) -> bool {
        self.last_index == 0
            && self.snapshot_meta.index == 0
            && self.hard_state == HardState::default()
            && self.conf_state == ConfState::default()
    }

    /// The latest hard state written.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The latest conf state written (or taken from a snapshot).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Metadata of the stored snapshot; index 0 means there is none.
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot_meta
    }

    fn first(&self) -> u64 {
        self.snapshot_meta.index.saturating_add(1)
    }

    fn term_of(&self, index: u64) -> Result<u64, StoreError> {
        if index == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if index < self.first() {
            return Err(StoreError::Compacted { index, first: self.first() });
        }
        if index > self.last_index {
            return Err(StoreError::Unavailable { index, last: self.last_index });
        }
        match self.entries.get(index_key(index))? {
            Some(bytes) => Ok(decode::<Entry>(&bytes)?.term),
            None => Err(StoreError::Corrupt(format!("entry {index} is missing"))),
        }
    }

    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        if low < self.first() {
            return Err(StoreError::Compacted { index: low, first: self.first() });
        }
        if high > self.last_index.saturating_add(1) {
            return Err(StoreError::Unavailable { index: high.saturating_sub(1), last: self.last_index });
        }
        let mut out = Vec::new();
        if low >= high {
            return Ok(out);
        }
        let mut size: u64 = 0;
        let mut expected = low;
        for item in self.entries.range(index_key(low)..index_key(high)) {
            let (key, bytes) = item?;
            if decode_index(&key)? != expected {
                return Err(StoreError::Corrupt(format!("entry {expected} is missing")));
            }
            // The stored bytes are the protobuf encoding, so their length is the entry's size.
            size = size.saturating_add(bytes.len() as u64);
            // Like raft's `limit_size`: the first entry always goes, the rest while they fit.
            if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                return Ok(out);
            }
            out.push(decode::<Entry>(&bytes)?);
            expected = expected.saturating_add(1);
        }
        if expected != high {
            return Err(StoreError::Corrupt(format!("entry {expected} is missing")));
        }
        Ok(out)
    }

    fn read_snapshot(&self) -> Result<Snapshot, StoreError> {
        let data = self.meta.get(SNAPSHOT_DATA_KEY)?.map(|v| v.to_vec()).unwrap_or_default();
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(self.snapshot_meta.clone());
        snapshot.data = data;
        Ok(snapshot)
    }
}

impl Storage for SledStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        Ok(self.read_entries(low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.term_of(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// Returns the stored snapshot. Snapshots are made by the driver from applied state,
    /// not on demand, so a request for a newer one is "temporarily unavailable".
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_meta.index == 0 || self.snapshot_meta.index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.read_snapshot()?)
    }
}

impl LogStore for SledStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let (Some(head), Some(tail)) = (entries.first(), entries.last()) else { return Ok(()) };
        if head.index < self.first() {
            return Err(StoreError::Compacted { index: head.index, first: self.first() });
        }
        if head.index > self.last_index.saturating_add(1) {
            return Err(StoreError::NotContiguous { index: head.index, after: self.last_index });
        }
        let mut batch = sled::Batch::default();
        let mut previous = head.index.saturating_sub(1);
        for entry in entries {
            if entry.index != previous.saturating_add(1) {
                return Err(StoreError::NotContiguous { index: entry.index, after: previous });
            }
            batch.insert(&index_key(entry.index), encode(entry));
            previous = entry.index;
        }
        // The new entries win over any old suffix; drop what they do not overwrite.
        for index in tail.index.saturating_add(1)..=self.last_index {
            batch.remove(&index_key(index));
        }
        self.entries.apply_batch(batch)?;
        self.last_index = tail.index;
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StoreError> {
        self.meta.insert(HARD_STATE_KEY, encode(hs))?;
        self.hard_state = hs.clone();
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StoreError> {
        self.meta.insert(CONF_STATE_KEY, encode(cs))?;
        self.conf_state = cs.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, mut snapshot: Snapshot) -> Result<(), StoreError> {
        let meta = snapshot.take_metadata();
        let index = meta.index;
        if index < self.first() {
            return Err(StoreError::SnapshotOutOfDate { index, first: self.first() });
        }
        let mut hard_state = self.hard_state.clone();
        hard_state.term = cmp::max(hard_state.term, meta.term);
        hard_state.commit = index;
        let conf_state = meta.get_conf_state().clone();

        let meta_bytes = encode(&meta);
        let hard_state_bytes = encode(&hard_state);
        let conf_state_bytes = encode(&conf_state);
        let data = std::mem::take(&mut snapshot.data);
        let old_log = self.first()..=self.last_index;
        // One transaction: a crash must not leave the old log beside the new snapshot.
        (&self.entries, &self.meta)
            .transaction(|(entries, meta)| {
                for old in old_log.clone() {
                    entries.remove(&index_key(old))?;
                }
                meta.insert(SNAPSHOT_META_KEY, meta_bytes.as_slice())?;
                meta.insert(SNAPSHOT_DATA_KEY, data.as_slice())?;
                meta.insert(HARD_STATE_KEY, hard_state_bytes.as_slice())?;
                meta.insert(CONF_STATE_KEY, conf_state_bytes.as_slice())?;
                meta.insert(APPLIED_KEY, &index_key(index))?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Sled(e),
                TransactionError::Abort(()) => StoreError::Corrupt("snapshot transaction aborted".to_owned()),
            })?;

        self.snapshot_meta = meta;
        self.hard_state = hard_state;
        self.conf_state = conf_state;
        self.last_index = index;
        self.applied = index;
        Ok(())
    }

    fn create_snapshot(&mut self, index: u64, conf: ConfState, data: Vec<u8>) -> Result<(), StoreError> {
        if index < self.snapshot_meta.index {
            return Err(StoreError::SnapshotOutOfDate { index, first: self.first() });
        }
        let term = self.term_of(index)?;
        let mut meta = SnapshotMetadata { index, term, ..SnapshotMetadata::default() };
        meta.set_conf_state(conf);

        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META_KEY, encode(&meta));
        batch.insert(SNAPSHOT_DATA_KEY, data);
        self.meta.apply_batch(batch)?;
        // Compact after the snapshot is stored; `open` finishes this if we crash here.
        let mut batch = sled::Batch::default();
        for old in self.first()..=index {
            batch.remove(&index_key(old));
        }
        self.entries.apply_batch(batch)?;
        self.snapshot_meta = meta;
        Ok(())
    }

    fn set_applied(&mut self, index: u64) -> Result<(), StoreError> {
        self.meta.insert(APPLIED_KEY, &index_key(index))?;
        self.applied = index;
        Ok(())
    }

    fn applied(&self) -> u64 {
        self.applied
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_index(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] =
        bytes.try_into().map_err(|_| StoreError::Corrupt(format!("index of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

fn read_message<M: raft_codec::RaftMessage>(tree: &sled::Tree, key: &[u8]) -> Result<Option<M>, StoreError> {
    match tree.get(key)? {
        Some(bytes) => decode::<M>(&bytes).map(Some).map_err(|e| {
            StoreError::Corrupt(format!(
                "the stored {} does not decode: {}",
                String::from_utf8_lossy(key),
                ferry_net::Chain(&e)
            ))
        }),
        None => Ok(None),
    }
}
