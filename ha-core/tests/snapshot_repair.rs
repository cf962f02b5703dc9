//! A damaged snapshot at start: set aside; if the log still holds what
//! follows the newest intact snapshot, nothing more; if not, the node
//! repairs from its peers (the log marked repairing and set aside too), or
//! a single voter refuses with nothing moved. On the simulated file
//! system, so every step is exact.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ha_core::node::recover;
use ha_core::raft::{InitialState, Membership};
use ha_core::sm::Applier;
use ha_core::storage::{
    LogStore, SimFs, SnapshotMeta, SnapshotStore, StoredState, Vfs, Wal, WalOptions,
};
use ha_core::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

const WAL: &str = "/data/wal";
const SNAP: &str = "/data/snap";

/// Remembers what it was restored from.
#[derive(Default)]
struct Restored(Option<Vec<u8>>);

impl Applier for Restored {
    fn apply(&mut self, _: LogIndex, _: Term, _: &Bytes) -> Bytes {
        Bytes::new()
    }
    fn query(&self, _: &Bytes) -> Result<Bytes, ha_core::sm::StateError> {
        Ok(Bytes::new())
    }
    fn snapshot(&self) -> Result<Vec<u8>, ha_core::sm::StateError> {
        Ok(self.0.clone().unwrap_or_default())
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), ha_core::sm::StateError> {
        self.0 = Some(state.to_vec());
        Ok(())
    }
}

fn meta(index: u64) -> SnapshotMeta {
    meta_of(index, 1)
}

fn meta_of(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(term),
        membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

fn snap_path(index: u64) -> PathBuf {
    Path::new(SNAP).join(format!("snap-{index:020}-{:020}.snap", 1))
}

/// The directories `list` can list (it names files only) among `names`.
fn dirs_named(fs: &SimFs, names: impl Iterator<Item = String>) -> Vec<String> {
    names.filter(|d| fs.list(Path::new(d)).is_ok()).collect()
}

/// A node's disk: entries 1..=10 of term 1, snapshots at 4 and 8, the log
/// compacted up to `compacted`.
fn disk(compacted: u64) -> SimFs {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(
        fs.clone(),
        Path::new(WAL),
        WalOptions::with_segment_max_bytes(256),
    )
    .unwrap();
    let entries: Vec<Entry> = (1..=10)
        .map(|i| Entry {
            index: LogIndex(i),
            term: Term(1),
            payload: EntryPayload::Command(Bytes::from(vec![i as u8; 40])),
        })
        .collect();
    wal.append(&entries).unwrap();
    wal.save_hard_state(HardState {
        term: Term(1),
        vote: Some(NodeId(1)),
        commit: LogIndex(10),
    })
    .unwrap();
    wal.sync().unwrap();
    let snaps = SnapshotStore::open(fs.clone(), Path::new(SNAP)).unwrap();
    snaps.save(meta(4), b"four").unwrap();
    snaps.save(meta(8), b"eight").unwrap();
    wal.compact(LogIndex(compacted), Term(1)).unwrap();
    wal.sync().unwrap();
    fs
}

/// The log as a node opens it (damage repairs).
fn open_log(fs: &SimFs) -> Result<(Wal<SimFs>, StoredState), String> {
    Wal::open_repairing(
        fs.clone(),
        Path::new(WAL),
        WalOptions::with_segment_max_bytes(256),
    )
    .map_err(|e| e.to_string())
}

/// Marks the log repairing for `why`, as a start that found damage does.
fn mark(fs: &SimFs, why: &str) {
    open_log(fs).unwrap().0.mark_repairing(why).unwrap();
}

/// Starts as a node does: the log (repairing), the snapshots, `recover`.
fn start(fs: &SimFs, can_repair: bool) -> Result<(InitialState, Restored, Wal<SimFs>), String> {
    let (mut wal, stored) = open_log(fs)?;
    let snaps = SnapshotStore::open(fs.clone(), Path::new(SNAP)).map_err(|e| e.to_string())?;
    let mut applier = Restored::default();
    let init =
        recover(&mut wal, stored, &snaps, &mut applier, can_repair).map_err(|e| e.to_string())?;
    Ok((init, applier, wal))
}

fn names(fs: &SimFs, dir: &str) -> Vec<String> {
    let mut v = fs.list(Path::new(dir)).unwrap();
    v.sort();
    v
}

#[test]
fn a_damaged_snapshot_the_log_follows_is_set_aside_with_the_log() {
    let fs = disk(8);
    // The intact start first: from snapshot 8, entries 9 and 10.
    let (init, applier, _) = start(&fs, true).unwrap();
    assert_eq!(init.snapshot_last, (LogIndex(8), Term(1)));
    assert_eq!(init.entries.len(), 2);
    assert!(!init.repairing);
    assert_eq!(applier.0.as_deref(), Some(&b"eight"[..]));

    fs.corrupt(&snap_path(8), 30).unwrap();
    let (init, applier, wal) = start(&fs, true).unwrap();
    // The log followed snapshot 8: useless without it, set aside. The node
    // starts from snapshot 4 with an empty log, repairing; the log was not
    // damaged, so its term and vote are kept.
    assert!(init.repairing);
    assert_eq!(init.snapshot_last, (LogIndex(4), Term(1)));
    assert!(init.entries.is_empty());
    assert_eq!(init.hard_state.term, Term(1));
    assert_eq!(init.hard_state.vote, Some(NodeId(1)));
    assert_eq!(applier.0.as_deref(), Some(&b"four"[..]));
    let why = wal.repairing().expect("the log is marked repairing");
    assert!(why.contains("corrupt"), "{why}");
    let snap_names = names(&fs, SNAP);
    assert!(
        snap_names
            .iter()
            .any(|n| n.ends_with(".snap.damaged") && n.contains(&format!("{:020}", 8))),
        "the damaged snapshot is kept aside: {snap_names:?}"
    );
    let aside = dirs_named(
        &fs,
        (1..=64u64).map(|seq| format!("{WAL}/discarded-{seq:016x}-0")),
    );
    assert_eq!(aside.len(), 1, "the old log is kept aside once");
    let old_segments = fs.list(Path::new(&aside[0])).unwrap();
    assert!(!old_segments.is_empty());
    // Segment numbers go on from the old ones.
    let new_segments = names(&fs, WAL)
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect::<Vec<_>>();
    assert!(
        new_segments
            .iter()
            .all(|n| old_segments.iter().all(|o| n > o)),
        "{new_segments:?} after {old_segments:?}"
    );
    drop(wal);

    // A restart repairs on from the same place: nothing more is lost, and
    // the old log is not set aside twice.
    let (init, applier, wal) = start(&fs, true).unwrap();
    assert!(init.repairing);
    assert_eq!(init.snapshot_last, (LogIndex(4), Term(1)));
    assert!(init.entries.is_empty());
    assert_eq!(applier.0.as_deref(), Some(&b"four"[..]));
    assert!(wal.repairing().is_some());
}

#[test]
fn a_damaged_snapshot_before_the_log_keeps_the_log() {
    // The log was compacted only to 4: entries 5..=10 follow snapshot 4,
    // so losing snapshot 8 costs no entry.
    // Nothing is lost, so there is nothing to repair: the node votes at
    // once, even a single voter.
    for can_repair in [true, false] {
        let fs = disk(4);
        fs.corrupt(&snap_path(8), 30).unwrap();
        let (init, applier, wal) = start(&fs, can_repair).unwrap();
        assert!(!init.repairing, "nothing was lost");
        assert!(wal.repairing().is_none());
        assert_eq!(init.snapshot_last, (LogIndex(4), Term(1)));
        let kept: Vec<u64> = init.entries.iter().map(|e| e.index.0).collect();
        assert_eq!(kept, (5..=10).collect::<Vec<_>>());
        assert_eq!(init.hard_state.vote, Some(NodeId(1)));
        assert_eq!(applier.0.as_deref(), Some(&b"four"[..]));
        assert!(
            names(&fs, SNAP)
                .iter()
                .any(|n| n.ends_with(".snap.damaged"))
        );
        // A set-aside file is no snapshot to send or to name.
        let snaps = SnapshotStore::open(fs.clone(), Path::new(SNAP)).unwrap();
        assert!(snaps.meta_of(LogIndex(8), Term(1)).unwrap().is_none());
        let (m, _, _) = snaps.open_latest_file().unwrap().expect("snapshot 4");
        assert_eq!(m.index, LogIndex(4));
        snaps.retain(1).unwrap();
        assert!(
            names(&fs, SNAP)
                .iter()
                .any(|n| n.ends_with(".snap.damaged")),
            "kept for inspection"
        );
    }
}

#[test]
fn an_unreadable_snapshot_is_damage_too() {
    let fs = disk(8);
    fs.set_unreadable(&snap_path(8)).unwrap();
    let (init, applier, _) = start(&fs, true).unwrap();
    assert!(init.repairing);
    assert_eq!(init.snapshot_last, (LogIndex(4), Term(1)));
    assert_eq!(applier.0.as_deref(), Some(&b"four"[..]));
}

#[test]
fn a_single_voter_refuses_a_damaged_snapshot_and_moves_nothing() {
    let fs = disk(8);
    fs.corrupt(&snap_path(8), 30).unwrap();
    let before = (names(&fs, SNAP), names(&fs, WAL));
    let err = match start(&fs, false) {
        Err(e) => e,
        Ok(_) => panic!("a single voter must refuse a damaged snapshot"),
    };
    assert!(
        err.contains("corrupt") && err.contains("backup") && err.contains("index 8"),
        "{err}"
    );
    assert_eq!((names(&fs, SNAP), names(&fs, WAL)), before);
}

#[test]
fn a_crash_after_the_snapshot_was_set_aside_repairs_again() {
    // The mark is written and the snapshot set aside; the power goes before
    // the log is: the next start sets the log aside then.
    let fs = disk(8);
    mark(&fs, "snapshot 8 is corrupt (test)");
    let snaps = SnapshotStore::open(fs.clone(), Path::new(SNAP)).unwrap();
    snaps.set_aside(&snap_path(8)).unwrap();
    fs.crash(&mut ha_core::rng::SplitMix64::new(7));
    let (init, applier, wal) = start(&fs, true).unwrap();
    assert!(init.repairing);
    assert_eq!(init.snapshot_last, (LogIndex(4), Term(1)));
    assert!(init.entries.is_empty());
    assert_eq!(applier.0.as_deref(), Some(&b"four"[..]));
    assert_eq!(wal.repairing(), Some("snapshot 8 is corrupt (test)"));
}

#[test]
fn every_snapshot_damaged_starts_from_nothing() {
    let fs = disk(8);
    fs.corrupt(&snap_path(8), 30).unwrap();
    fs.corrupt(&snap_path(4), 30).unwrap();
    let (init, applier, _) = start(&fs, true).unwrap();
    assert!(init.repairing);
    assert_eq!(init.snapshot_last, (LogIndex(0), Term(0)));
    assert!(init.entries.is_empty());
    assert_eq!(applier.0, None, "nothing to restore from");
    let set_aside = names(&fs, SNAP)
        .into_iter()
        .filter(|n| n.ends_with(".damaged"))
        .count();
    assert_eq!(set_aside, 2);
}

#[test]
fn a_single_voter_with_a_leftover_mark_refuses_a_gap_and_moves_nothing() {
    // A mark from before (say, the cluster was bigger), and the snapshot
    // the log follows is gone without a trace: a single voter must not set
    // its only log aside.
    let fs = disk(8);
    mark(&fs, "earlier damage (test)");
    fs.remove(&snap_path(8)).unwrap();
    let before = (names(&fs, SNAP), names(&fs, WAL));
    let err = match start(&fs, false) {
        Err(e) => e,
        Ok(_) => panic!("a single voter must refuse to lose entries"),
    };
    assert!(err.contains("backup"), "{err}");
    assert_eq!((names(&fs, SNAP), names(&fs, WAL)), before);
}

#[test]
fn a_log_starting_at_the_snapshots_index_with_another_term_repairs() {
    // The log says its start is 8@1, the snapshot there says 8@2: a record
    // that restated the start was lost. The snapshot wins; the entries
    // after the log's start go, and the node repairs (it may have
    // acknowledged them).
    let fs = disk(8);
    let snaps = SnapshotStore::open(fs.clone(), Path::new(SNAP)).unwrap();
    fs.remove(&snap_path(8)).unwrap();
    snaps.save(meta_of(8, 2), b"eight, term 2").unwrap();
    let err = match start(&fs, false) {
        Err(e) => e,
        Ok(_) => panic!("a single voter must refuse"),
    };
    assert!(err.contains("backup"), "{err}");
    let (init, applier, wal) = start(&fs, true).unwrap();
    assert!(init.repairing);
    assert!(
        wal.repairing().unwrap().contains("term 2"),
        "{:?}",
        wal.repairing()
    );
    assert_eq!(init.snapshot_last, (LogIndex(8), Term(2)));
    assert!(init.entries.is_empty());
    assert_eq!(applier.0.as_deref(), Some(&b"eight, term 2"[..]));
    drop(wal);
    // The log recorded the snapshot's term: a restart agrees.
    let (init, _, _) = start(&fs, true).unwrap();
    assert_eq!(init.snapshot_last, (LogIndex(8), Term(2)));
}

#[test]
fn a_snapshot_of_a_newer_format_is_refused_not_set_aside() {
    // A whole file of version 9 (its checksum holds).
    let fs = disk(8);
    let mut bytes = fs.read(&snap_path(8)).unwrap();
    bytes[7] = 9;
    let n = bytes.len();
    let crc = crc32c::crc32c(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    fs.overwrite(&snap_path(8), 0, &bytes).unwrap();
    let err = match start(&fs, true) {
        Err(e) => e,
        Ok(_) => panic!("an unknown format must be refused"),
    };
    assert!(err.contains("format version 9"), "{err}");
    assert!(names(&fs, SNAP).iter().all(|n| !n.ends_with(".damaged")));
}

#[test]
fn a_flipped_version_byte_is_damage_not_a_newer_format() {
    let fs = disk(4);
    let mut bytes = fs.read(&snap_path(8)).unwrap();
    bytes[7] ^= 0x08;
    fs.overwrite(&snap_path(8), 0, &bytes[..8]).unwrap();
    let (init, _, _) = start(&fs, true).unwrap();
    assert!(!init.repairing, "the log holds what follows snapshot 4");
    assert!(
        names(&fs, SNAP)
            .iter()
            .any(|n| n.ends_with(".snap.damaged"))
    );
}
