//! A damaged snapshot at start: repaired from the peers when there are
//! any (set aside, the log marked repairing, and the log set aside too if
//! its entries follow the damaged snapshot), refused with nothing moved
//! when there are none. On the simulated file system, so every step is
//! exact.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ha_core::node::{Applier, recover};
use ha_core::raft::{InitialState, Membership};
use ha_core::storage::{LogStore, SimFs, SnapshotMeta, SnapshotStore, Vfs, Wal, WalOptions};
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
    fn query(&self, _: &Bytes) -> Result<Bytes, String> {
        Ok(Bytes::new())
    }
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        Ok(self.0.clone().unwrap_or_default())
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.0 = Some(state.to_vec());
        Ok(())
    }
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(1),
        membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

fn snap_path(index: u64) -> PathBuf {
    Path::new(SNAP).join(format!("snap-{index:020}-{:020}.snap", 1))
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

/// Starts as a node does: the log (repairing), the snapshots, `recover`.
fn start(fs: &SimFs, can_repair: bool) -> Result<(InitialState, Restored, Wal<SimFs>), String> {
    let (mut wal, stored) = Wal::open_repairing(
        fs.clone(),
        Path::new(WAL),
        WalOptions::with_segment_max_bytes(256),
    )
    .map_err(|e| e.to_string())?;
    let snaps = SnapshotStore::open(fs.clone(), Path::new(SNAP)).map_err(|e| e.to_string())?;
    let mut applier = Restored::default();
    let init = recover(&mut wal, stored, &snaps, &mut applier, can_repair)?;
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
    // starts from snapshot 4 with an empty log, repairing, and forgot its
    // term and vote (the repair waits them out).
    assert!(init.repairing);
    assert_eq!(init.snapshot_last, (LogIndex(4), Term(1)));
    assert!(init.entries.is_empty());
    assert_eq!(init.hard_state.vote, None);
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
    // `list` names files only: a directory shows by being listable.
    let aside: Vec<String> = (1..=64u64)
        .map(|seq| format!("{WAL}/damaged-{seq:016x}-0"))
        .filter(|d| fs.list(Path::new(d)).is_ok())
        .collect();
    assert_eq!(aside.len(), 1, "the old log is kept aside once");
    assert!(!fs.list(Path::new(&aside[0])).unwrap().is_empty());
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
    let fs = disk(4);
    fs.corrupt(&snap_path(8), 30).unwrap();
    let (init, applier, wal) = start(&fs, true).unwrap();
    assert!(init.repairing, "damage was found: the node repairs");
    assert_eq!(init.snapshot_last, (LogIndex(4), Term(1)));
    let kept: Vec<u64> = init.entries.iter().map(|e| e.index.0).collect();
    assert_eq!(kept, (5..=10).collect::<Vec<_>>());
    assert_eq!(init.hard_state.vote, Some(NodeId(1)));
    assert_eq!(applier.0.as_deref(), Some(&b"four"[..]));
    assert!(wal.repairing().is_some());
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
    assert!(err.contains("corrupt") && err.contains("backup"), "{err}");
    assert_eq!((names(&fs, SNAP), names(&fs, WAL)), before);
}

#[test]
fn a_crash_after_the_snapshot_was_set_aside_repairs_again() {
    // The mark is written and the snapshot set aside; the power goes before
    // the log is: the next start sets the log aside then.
    let fs = disk(8);
    {
        let (mut wal, _) = Wal::open_repairing(
            fs.clone(),
            Path::new(WAL),
            WalOptions::with_segment_max_bytes(256),
        )
        .unwrap();
        wal.mark_repairing("snapshot 8 is corrupt (test)").unwrap();
        let snaps = SnapshotStore::open(fs.clone(), Path::new(SNAP)).unwrap();
        snaps
            .set_aside_newest()
            .unwrap()
            .expect("a snapshot to set aside");
    }
    fs.crash(&mut ha_core::raft::rng::SplitMix64::new(7));
    let (init, applier, wal) = start(&fs, true).unwrap();
    assert!(init.repairing);
    assert_eq!(init.snapshot_last, (LogIndex(4), Term(1)));
    assert!(init.entries.is_empty());
    assert_eq!(applier.0.as_deref(), Some(&b"four"[..]));
    assert_eq!(wal.repairing(), Some("snapshot 8 is corrupt (test)"));
}
