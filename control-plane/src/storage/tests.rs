use std::path::PathBuf;

use super::*;

/// A store's directory in a fresh temporary directory, removed when dropped.
struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new(name: &str) -> Self {
        TempDir(tempfile::Builder::new().prefix(&format!("ferry-store-{name}-")).tempdir().unwrap())
    }

    fn path(&self) -> PathBuf {
        self.0.path().join("store")
    }

    fn open(&self) -> SledStore {
        SledStore::open(&self.path()).unwrap()
    }

    /// Opens the store again after the previous handle was dropped. sled
    /// releases its file lock only when its background threads let go of the
    /// last reference, which can be a moment after `drop` returns (CI once saw
    /// `WouldBlock`), so wait for the lock — bounded — instead of failing.
    fn reopen(&self) -> SledStore {
        self.try_reopen().unwrap_or_else(|e| panic!("reopening {}: {e}", self.path().display()))
    }

    /// [`TempDir::reopen`]'s outcome, once the lock is free.
    fn try_reopen(&self) -> Result<SledStore, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(&self.path()) {
                Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: format!("cmd-{index}-{term}").into_bytes(), ..Entry::default() }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn read(store: &SledStore, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<(u64, u64)>> {
    let got = store.entries(low, high, max_size, GetEntriesContext::empty(false))?;
    Ok(got.iter().map(|e| (e.index, e.term)).collect())
}

fn store_error(result: raft::Result<impl std::fmt::Debug>) -> StorageError {
    match result {
        Err(raft::Error::Store(e)) => e,
        other => panic!("expected a storage error, got {other:?}"),
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState::from((ids.iter().copied(), std::iter::empty()))
}

#[test]
fn a_fresh_store_is_empty_and_compacted_at_zero() {
    let dir = TempDir::new("fresh");
    let store = dir.open();
    assert!(store.is_empty());
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (1, 0));
    assert_eq!(store.term(0).unwrap(), 0);
    assert_eq!(read(&store, 1, 1, None).unwrap(), vec![]);
    assert!(!store.initial_state().unwrap().initialized());
    assert_eq!(store_error(store.snapshot(0, 2)), StorageError::SnapshotTemporarilyUnavailable);
}

#[test]
fn appended_entries_can_be_read_back() {
    let dir = TempDir::new("append");
    let mut store = dir.open();
    store.append(&entries(1..=5, 1)).unwrap();
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (1, 5));
    assert_eq!(read(&store, 2, 5, None).unwrap(), vec![(2, 1), (3, 1), (4, 1)]);
    assert_eq!(store.term(5).unwrap(), 1);
    assert_eq!(store_error(store.term(6)), StorageError::Unavailable);
    assert_eq!(store_error(read(&store, 1, 7, None)), StorageError::Unavailable);
    assert_eq!(store_error(read(&store, 0, 2, None)), StorageError::Compacted);
    let data = store.entries(3, 4, None, GetEntriesContext::empty(false)).unwrap();
    assert_eq!(&data[0].data[..], b"cmd-3-1");
}

#[test]
fn appending_over_a_conflicting_suffix_replaces_it() {
    let dir = TempDir::new("conflict");
    let mut store = dir.open();
    store.append(&entries(1..=5, 1)).unwrap();
    store.append(&entries(3..=3, 2)).unwrap();
    assert_eq!(store.last_index().unwrap(), 3);
    assert_eq!(read(&store, 1, 4, None).unwrap(), vec![(1, 1), (2, 1), (3, 2)]);
    assert_eq!(store_error(store.term(4)), StorageError::Unavailable);

    // And the truncation is on disk, not just in the cache.
    drop(store);
    let store = dir.reopen();
    assert_eq!(store.last_index().unwrap(), 3);
    assert_eq!(read(&store, 1, 4, None).unwrap(), vec![(1, 1), (2, 1), (3, 2)]);
}

#[test]
fn appends_that_leave_a_gap_or_jump_are_refused() {
    let dir = TempDir::new("gap");
    let mut store = dir.open();
    store.append(&entries(1..=3, 1)).unwrap();
    assert!(matches!(
        store.append(&entries(5..=6, 1)),
        Err(StoreError::NotContiguous { index: 5, after: 3 })
    ));
    let jumpy = vec![entry(4, 1), entry(6, 1)];
    assert!(matches!(store.append(&jumpy), Err(StoreError::NotContiguous { index: 6, after: 4 })));
    assert_eq!(store.last_index().unwrap(), 3, "a refused append writes nothing");
    store.append(&[]).unwrap();
}

#[test]
fn entries_honour_max_size_but_always_return_one() {
    let dir = TempDir::new("maxsize");
    let mut store = dir.open();
    store.append(&entries(1..=5, 1)).unwrap();
    let one = crate::raft_codec::encode(&entry(1, 1)).len() as u64;
    assert_eq!(read(&store, 1, 6, Some(0)).unwrap().len(), 1);
    assert_eq!(read(&store, 1, 6, Some(one)).unwrap().len(), 1);
    assert_eq!(read(&store, 1, 6, Some(one * 3)).unwrap().len(), 3);
    assert_eq!(read(&store, 1, 6, Some(one * 3 + 1)).unwrap().len(), 3);
    assert_eq!(read(&store, 1, 6, Some(raft::NO_LIMIT)).unwrap().len(), 5);

    // The same cut as raft's own `limit_size`.
    let mut all = store.entries(1, 6, None, GetEntriesContext::empty(false)).unwrap();
    raft::util::limit_size(&mut all, Some(one * 2 + 3));
    assert_eq!(read(&store, 1, 6, Some(one * 2 + 3)).unwrap().len(), all.len());
}

#[test]
fn hard_state_conf_state_and_applied_survive_reopen() {
    let dir = TempDir::new("reopen-meta");
    let mut store = dir.open();
    store.initialize(&[1, 2, 3]).unwrap();
    store.set_hard_state(&hard_state(4, 2, 0)).unwrap();
    store.set_applied(0).unwrap();
    store.flush().unwrap();
    drop(store);

    let mut store = dir.reopen();
    assert!(!store.is_empty());
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state, hard_state(4, 2, 0));
    assert_eq!(state.conf_state.voters, vec![1, 2, 3]);

    store.initialize(&[9]).unwrap();
    assert_eq!(store.conf_state().voters, vec![1, 2, 3], "initialize leaves a used store alone");
    store.set_conf_state(&voters(&[1, 2, 3, 4])).unwrap();
    store.append(&entries(1..=2, 4)).unwrap();
    store.set_applied(2).unwrap();
    drop(store);
    let store = dir.reopen();
    assert_eq!(store.conf_state().voters, vec![1, 2, 3, 4]);
    assert_eq!(store.applied(), 2);
}

#[test]
fn a_snapshot_compacts_the_log_it_covers() {
    let dir = TempDir::new("compact");
    let mut store = dir.open();
    store.append(&[entries(1..=3, 1), entries(4..=6, 2)].concat()).unwrap();
    store.set_hard_state(&hard_state(2, 1, 5)).unwrap();
    store.create_snapshot(4, voters(&[1, 2, 3]), b"state@4".to_vec()).unwrap();

    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (5, 6));
    assert_eq!(store.term(4).unwrap(), 2, "the snapshot's term stays known");
    assert_eq!(store_error(store.term(3)), StorageError::Compacted);
    assert_eq!(store_error(read(&store, 3, 6, None)), StorageError::Compacted);
    assert_eq!(read(&store, 5, 7, None).unwrap(), vec![(5, 2), (6, 2)]);

    let snapshot = store.snapshot(0, 2).unwrap();
    assert_eq!((snapshot.get_metadata().index, snapshot.get_metadata().term), (4, 2));
    assert_eq!(snapshot.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
    assert_eq!(&snapshot.data[..], b"state@4");
    assert_eq!(store_error(store.snapshot(5, 2)), StorageError::SnapshotTemporarilyUnavailable);

    assert!(matches!(
        store.create_snapshot(3, voters(&[1]), vec![]),
        Err(StoreError::SnapshotOutOfDate { .. })
    ));
    assert!(matches!(store.create_snapshot(7, voters(&[1]), vec![]), Err(StoreError::Unavailable { .. })));
    assert!(matches!(store.append(&entries(3..=3, 9)), Err(StoreError::Compacted { index: 3, first: 5 })));

    // Snapshotting the whole log leaves it empty at the snapshot index.
    store.create_snapshot(6, voters(&[1, 2, 3]), b"state@6".to_vec()).unwrap();
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (7, 6));
    store.append(&entries(7..=7, 3)).unwrap();
    assert_eq!(read(&store, 7, 8, None).unwrap(), vec![(7, 3)]);
}

/// A created snapshot's data goes to a file (sled keeps only its metadata), older files
/// go once a newer snapshot is durable, the entries it covers leave the store a few at a
/// time (or all at once when the store is reopened), and a snapshot from the leader is
/// kept in sled with the files removed.
#[test]
fn a_snapshot_lives_in_a_file_and_its_entries_leave_a_few_at_a_time() {
    let dir = TempDir::new("snapshot-file");
    let mut store = dir.open();
    let files = store.snapshot_dir().unwrap();
    store.append(&entries(1..=100, 1)).unwrap();
    store.set_hard_state(&hard_state(1, 1, 100)).unwrap();
    store.create_snapshot(90, voters(&[1, 2, 3]), b"state@90".to_vec()).unwrap();
    assert_eq!(std::fs::read(snapshot_file(&files, 90)).unwrap(), b"state@90");
    assert!(store.meta.get(SNAPSHOT_DATA_KEY).unwrap().is_none(), "no data in sled");
    assert_eq!(&store.snapshot(0, 2).unwrap().data[..], b"state@90");
    assert_eq!(store.first_index().unwrap(), 91);
    assert_eq!(store.entries.len(), 100, "nothing removed yet");
    store.compact_some(64).unwrap();
    assert_eq!(store.entries.len(), 36);
    store.compact_some(64).unwrap();
    store.compact_some(64).unwrap();
    assert_eq!(store.entries.len(), 10);
    assert_eq!(read(&store, 91, 101, None).unwrap().len(), 10);

    // A file the worker wrote is taken as it is; the older one goes.
    write_snapshot_file(&files, 95, b"state@95 from the worker").unwrap();
    store.create_snapshot(95, voters(&[1, 2, 3]), b"ignored".to_vec()).unwrap();
    assert_eq!(&store.snapshot(0, 2).unwrap().data[..], b"state@95 from the worker");
    assert!(!snapshot_file(&files, 90).exists());
    drop(store);

    // Reopening finishes the compaction and reads the snapshot from its file.
    let mut store = dir.reopen();
    assert_eq!(store.entries.len(), 5);
    assert_eq!(&store.snapshot(0, 2).unwrap().data[..], b"state@95 from the worker");

    // A snapshot from the leader lives in sled; no file is left to shadow it.
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 120;
    snapshot.mut_metadata().term = 2;
    snapshot.data = b"state@120".to_vec();
    store.apply_snapshot(snapshot).unwrap();
    assert_eq!(std::fs::read_dir(&files).unwrap().count(), 0);
    assert_eq!(&store.snapshot(0, 2).unwrap().data[..], b"state@120");
}

#[test]
fn a_snapshot_from_the_leader_replaces_a_fresh_log() {
    let dir = TempDir::new("install");
    let mut store = dir.open();
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 10;
    snapshot.mut_metadata().term = 3;
    snapshot.mut_metadata().set_conf_state(voters(&[1, 2, 3]));
    snapshot.data = b"state@10".to_vec();
    store.apply_snapshot(snapshot.clone()).unwrap();

    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (11, 10));
    assert_eq!(store.term(10).unwrap(), 3);
    assert_eq!(store.applied(), 10);
    let state = store.initial_state().unwrap();
    assert_eq!((state.hard_state.term, state.hard_state.commit), (3, 10));
    assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(store.snapshot(0, 1).unwrap(), snapshot);
    store.append(&entries(11..=12, 3)).unwrap();
    assert_eq!(store.last_index().unwrap(), 12);

    let mut stale = Snapshot::default();
    stale.mut_metadata().index = 5;
    assert!(matches!(
        store.apply_snapshot(stale),
        Err(StoreError::SnapshotOutOfDate { index: 5, first: 11 })
    ));
}

#[test]
fn a_snapshot_from_the_leader_drops_the_old_log() {
    let dir = TempDir::new("install-over");
    let mut store = dir.open();
    store.append(&entries(1..=8, 1)).unwrap();
    store.set_hard_state(&hard_state(5, 1, 3)).unwrap();
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 6;
    snapshot.mut_metadata().term = 2;
    store.apply_snapshot(snapshot).unwrap();
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (7, 6));
    let hs = store.hard_state();
    assert_eq!((hs.term, hs.vote, hs.commit), (5, 1, 6), "the term never goes backwards");
    drop(store);

    let store = dir.reopen();
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (7, 6));
    assert_eq!(store_error(store.term(8)), StorageError::Unavailable);
}

#[test]
fn reopening_after_everything_gives_the_same_view() {
    let dir = TempDir::new("reopen-all");
    let mut store = dir.open();
    store.initialize(&[1, 2, 3]).unwrap();
    store.append(&entries(1..=10, 1)).unwrap();
    store.append(&entries(8..=12, 2)).unwrap();
    store.set_hard_state(&hard_state(2, 3, 9)).unwrap();
    store.set_applied(9).unwrap();
    store.create_snapshot(9, voters(&[1, 2, 3]), b"state@9".to_vec()).unwrap();
    store.flush().unwrap();
    let view = |s: &SledStore| {
        let state = s.initial_state().unwrap();
        let entries = read(s, s.first_index().unwrap(), s.last_index().unwrap() + 1, None).unwrap();
        (
            state.hard_state,
            state.conf_state,
            s.first_index().unwrap(),
            s.last_index().unwrap(),
            entries,
            s.applied(),
        )
    };
    let before = view(&store);
    let snapshot = store.snapshot(0, 1).unwrap();
    drop(store);

    let store = dir.reopen();
    assert_eq!(view(&store), before);
    assert_eq!(before.4, vec![(10, 2), (11, 2), (12, 2)]);
    assert_eq!(store.snapshot(0, 1).unwrap(), snapshot);
    assert_eq!(store.term(9).unwrap(), 2);
}

#[test]
fn a_compaction_cut_short_by_a_crash_is_finished_on_open() {
    let dir = TempDir::new("crash");
    let mut store = dir.open();
    store.append(&entries(1..=6, 1)).unwrap();
    store.set_hard_state(&hard_state(1, 1, 4)).unwrap();
    store.create_snapshot(4, voters(&[1]), b"s".to_vec()).unwrap();
    // Put back what compaction removed, as if the process died between the two writes.
    for e in entries(1..=4, 1) {
        store.entries.insert(index_key(e.index), crate::raft_codec::encode(&e)).unwrap();
    }
    drop(store);
    let store = dir.reopen();
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (5, 6));
    assert_eq!(read(&store, 5, 7, None).unwrap(), vec![(5, 1), (6, 1)]);
}

#[test]
fn store_errors_map_to_raft_storage_errors() {
    let compacted: raft::Error = StoreError::Compacted { index: 1, first: 2 }.into();
    assert_eq!(compacted, raft::Error::Store(StorageError::Compacted));
    let unavailable: raft::Error = StoreError::Unavailable { index: 3, last: 2 }.into();
    assert_eq!(unavailable, raft::Error::Store(StorageError::Unavailable));
}

/// What raft-rs would stop the process on is refused at open, with the reason.
#[test]
fn an_inconsistent_store_is_refused_at_open() {
    type Damage = fn(&mut SledStore);
    let cases: [(&str, Damage); 3] = [
        ("the hard state commits index 9", |s| s.set_hard_state(&hard_state(1, 1, 9)).unwrap()),
        ("the log has entry 4 after 2", |s| {
            s.entries.remove(index_key(3)).unwrap();
        }),
        ("hard_state does not decode", |s| {
            s.meta.insert(HARD_STATE_KEY, &b"\xff\xff"[..]).unwrap();
        }),
    ];
    for (says, damage) in cases {
        let dir = TempDir::new("inconsistent");
        let mut store = dir.open();
        store.append(&entries(1..=6, 1)).unwrap();
        store.set_hard_state(&hard_state(1, 1, 6)).unwrap();
        damage(&mut store);
        store.flush().unwrap();
        drop(store);
        let Err(err) = dir.try_reopen() else { panic!("{says}: opened") };
        assert!(err.to_string().contains(says), "{says}: {err}");
    }
}

#[test]
fn a_restored_store_starts_at_the_backup_and_keeps_its_cluster_identity() {
    let dir = TempDir::new("restore");
    let mut store = dir.open();
    assert_eq!(store.cluster_uuid(), None);
    store.restore(120, 4, &[1, 2, 3], b"state", "uuid-1").unwrap();
    drop(store);
    let mut store = dir.reopen();
    assert_eq!(store.cluster_uuid(), Some("uuid-1"));
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (121, 120));
    assert_eq!(store.term(120).unwrap(), 4);
    assert_eq!(store.applied(), 120);
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state, hard_state(4, 0, 120));
    assert_eq!(state.conf_state, voters(&[1, 2, 3]));
    let snapshot = store.snapshot(0, 1).unwrap();
    assert_eq!((snapshot.get_metadata().index, &snapshot.data[..]), (120, &b"state"[..]));
    assert_eq!(snapshot.get_metadata().get_conf_state(), &voters(&[1, 2, 3]));
    // The log goes on after it.
    store.append(&entries(121..=122, 5)).unwrap();
    assert_eq!(read(&store, 121, 123, None).unwrap(), vec![(121, 5), (122, 5)]);
    // Only an empty store takes a backup.
    assert!(store.restore(7, 1, &[1], b"x", "uuid-2").is_err());
    let other = TempDir::new("restore-used");
    let mut used = other.open();
    used.initialize(&[1]).unwrap();
    assert!(used.restore(7, 1, &[1], b"x", "uuid-2").is_err());
}
