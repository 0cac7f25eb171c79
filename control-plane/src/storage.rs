//! The raft log, hard state, conf state and snapshots, on sled.
//!
//! [`LogStore`] is the seam the driver writes through; [`SledStore`] is the one real
//! implementation. Semantics follow raft-rs's `MemStorage`: the log starts right after the
//! stored snapshot (`first_index = snapshot index + 1`), the term of the snapshot index stays
//! answerable after compaction, and a fresh store is "compacted at 0".
//!
//! Layout: tree `entries` maps an index (u64, big-endian, so keys sort by index) to the
//! protobuf bytes of the [`Entry`]; tree `meta` holds the hard state, conf state, snapshot
//! metadata, and the applied index. Writes are not durable until [`LogStore::flush`].
//!
//! Snapshot data lives in `snapshots/<index>.bin` beside sled's files, written and synced
//! by the snapshot worker before the node records the snapshot's metadata: storing a
//! multi-megabyte value in sled, on the node's thread, stalled every write for 50–150 ms.
//! A received or restored snapshot, and a store written by an older build, keep the
//! data in the `meta` tree's `snapshot_data`; the file of the metadata's index wins when
//! it exists (its bytes are the same: the state at a committed index is unique).

use std::cmp;
use std::path::{Path, PathBuf};

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
/// Directory of snapshot files, inside the store's directory.
const SNAPSHOT_FILES: &str = "snapshots";

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
    /// A file (a snapshot, or sled's log when syncing it) could not be written, read or
    /// synced.
    #[error("file {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the snapshot at `index` is kept, under a store's snapshot directory.
pub fn snapshot_file(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.bin"))
}

/// Writes the snapshot at `index` into `dir` durably ([`ferry_net::files::replace`]), so
/// the file exists complete or not at all.
pub fn write_snapshot_file(dir: &Path, index: u64, data: &[u8]) -> Result<(), StoreError> {
    let path = snapshot_file(dir, index);
    std::fs::create_dir_all(dir)
        .and_then(|()| ferry_net::files::replace(&path, data, None))
        .map_err(|source| StoreError::File { path, source })
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
    /// Where a snapshot worker may write the file of a snapshot before
    /// [`LogStore::create_snapshot`] records it ([`write_snapshot_file`]); `None`: the
    /// store keeps snapshot data itself.
    fn snapshot_dir(&self) -> Option<PathBuf> {
        None
    }
    /// Removes up to `max` entries a snapshot compacted away but that are still stored.
    /// [`LogStore::create_snapshot`] leaves that to these calls, made a few at a time
    /// between Readies: removing 10,000 sled keys at once cost the node ~150 ms.
    fn compact_some(&mut self, _max: u64) -> Result<(), StoreError> {
        Ok(())
    }
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
    /// Directory of snapshot files.
    snapshots: PathBuf,
    /// sled's log file, and its path: see [`LogStore::flush`].
    log: (std::fs::File, PathBuf),
    /// Entries up to here are removed; those after it up to the snapshot index are left
    /// to [`LogStore::compact_some`].
    compacted: u64,
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
        let log_path = dir.join("db");
        let log = std::fs::File::open(&log_path)
            .map_err(|source| StoreError::File { path: log_path.clone(), source })?;
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
            snapshots: dir.join(SNAPSHOT_FILES),
            log: (log, log_path),
            compacted: first.saturating_sub(1),
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

    /// Removes snapshot files (and unfinished `.tmp` files) other than `keep`'s. Best
    /// effort: a file left behind is only disk space, and the next snapshot tries again.
    fn remove_snapshot_files(&self, keep: Option<u64>) {
        let Ok(files) = std::fs::read_dir(&self.snapshots) else { return };
        let keep = keep.map(|index| snapshot_file(&self.snapshots, index));
        for file in files.flatten() {
            let path = file.path();
            if Some(&path) != keep.as_ref() {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an old snapshot file");
                }
            }
        }
    }

    fn read_snapshot(&self) -> Result<Snapshot, StoreError> {
        let path = snapshot_file(&self.snapshots, self.snapshot_meta.index);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.meta.get(SNAPSHOT_DATA_KEY)?.map(|v| v.to_vec()).unwrap_or_default()
            }
            Err(source) => return Err(StoreError::File { path, source }),
        };
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
        // The data is in sled now; once that is durable, no file is needed.
        self.flush()?;
        self.remove_snapshot_files(None);
        Ok(())
    }

    fn create_snapshot(&mut self, index: u64, conf: ConfState, data: Vec<u8>) -> Result<(), StoreError> {
        if index < self.snapshot_meta.index {
            return Err(StoreError::SnapshotOutOfDate { index, first: self.first() });
        }
        let term = self.term_of(index)?;
        let mut meta = SnapshotMetadata { index, term, ..SnapshotMetadata::default() };
        meta.set_conf_state(conf);
        // The worker usually wrote the file already (off this thread).
        if !snapshot_file(&self.snapshots, index).exists() {
            write_snapshot_file(&self.snapshots, index, &data)?;
        }
        drop(data);
        // One small insert: the metadata names the new file from now on.
        self.meta.insert(SNAPSHOT_META_KEY, encode(&meta))?;
        self.flush()?;
        self.snapshot_meta = meta;
        // Older snapshots and data an older build kept in sled are garbage now.
        self.meta.remove(SNAPSHOT_DATA_KEY)?;
        self.remove_snapshot_files(Some(index));
        // The entries up to `index` are removed by `compact_some`, a few at a time (and
        // by `open`, if we crash first): raft never reads below the first index.
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

    /// sled's flush ends, on Linux, with `sync_file_range`, which neither writes the file's
    /// metadata (its size, as the log grows) nor flushes the drive's cache: a power loss
    /// could lose what it acknowledged (sled's own `fsync` runs every 500 ms). So the
    /// flush is followed by an `fdatasync` of sled's log file, as etcd does for its WAL.
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        let (log, path) = &self.log;
        log.sync_data().map_err(|source| StoreError::File { path: path.clone(), source })
    }

    fn snapshot_dir(&self) -> Option<PathBuf> {
        Some(self.snapshots.clone())
    }

    fn compact_some(&mut self, max: u64) -> Result<(), StoreError> {
        let upto = self.snapshot_meta.index.min(self.compacted.saturating_add(max));
        // Oldest first: a crash leaves a log that starts later.
        for old in self.compacted.saturating_add(1)..=upto {
            self.entries.remove(index_key(old))?;
            self.compacted = old;
        }
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
