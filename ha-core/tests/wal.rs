//! The write-ahead log: round trips, torn tails, corruption, truncation,
//! compaction, write failures, and a property test against the in-memory
//! store as the reference model.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ha_core::rng::SplitMix64;
use ha_core::storage::wal::{
    MAX_COMMAND_BYTES, MAX_RECORD_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_PREFIX_BYTES,
};
use ha_core::storage::{
    LogStore, MemLogStore, SimFs, StdFs, Vfs, VfsFile, Wal, WalError, WalOptions,
};
use ha_core::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};
use proptest::prelude::*;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: EntryPayload::Command(Bytes::from(format!("cmd-{index}-{term}"))),
    }
}

fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to).map(|i| entry(i, term)).collect()
}

fn hs(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/data/wal")
}

fn small_segments() -> WalOptions {
    WalOptions::with_segment_max_bytes(512)
}

fn segment_files<V: Vfs>(vfs: &V, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = vfs
        .list(dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("wal-"))
        .map(|n| dir.join(n))
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_on_the_real_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("wal");
    {
        let (mut wal, state) = Wal::open(StdFs, &d, WalOptions::default()).unwrap();
        assert!(state.entries.is_empty());
        wal.append(&entries(1, 10, 1)).unwrap();
        wal.save_hard_state(hs(1, Some(2), 7)).unwrap();
        wal.sync().unwrap();
        // A conflicting suffix replaced.
        wal.append(&entries(8, 12, 2)).unwrap();
        wal.sync().unwrap();
    }
    let (wal, state) = Wal::open(StdFs, &d, WalOptions::default()).unwrap();
    assert_eq!(state.hard_state, hs(1, Some(2), 7));
    let got: Vec<(u64, u64)> = state
        .entries
        .iter()
        .map(|e| (e.index.0, e.term.0))
        .collect();
    let mut want: Vec<(u64, u64)> = (1..=7).map(|i| (i, 1)).collect();
    want.extend((8..=12).map(|i| (i, 2)));
    assert_eq!(got, want);
    assert_eq!(state.entries[9], entry(10, 2));
    assert_eq!(wal.last_index(), LogIndex(12));
    assert_eq!(wal.load().unwrap(), state);
    assert!(wal.repaired().is_none());
}

#[test]
fn membership_and_blank_payloads_round_trip() {
    let fs = SimFs::new();
    let mut m = ha_core::raft::Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]);
    m.learners.insert(NodeId(9));
    let es = vec![
        Entry {
            index: LogIndex(1),
            term: Term(1),
            payload: EntryPayload::Blank,
        },
        Entry {
            index: LogIndex(2),
            term: Term(1),
            payload: EntryPayload::Membership(m),
        },
    ];
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&es).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, state) = Wal::open(fs, &dir(), WalOptions::default()).unwrap();
    assert_eq!(state.entries, es);
}

#[test]
fn a_torn_tail_is_cut_off_and_the_synced_prefix_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("wal");
    {
        let (mut wal, _) = Wal::open(StdFs, &d, WalOptions::default()).unwrap();
        wal.append(&entries(1, 5, 1)).unwrap();
        wal.sync().unwrap();
    }
    let seg = segment_files(&StdFs, &d).pop().unwrap();
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // A crash in the middle of the next batch: its first bytes made it.
    {
        let (mut wal, _) = Wal::open(StdFs, &d, WalOptions::default()).unwrap();
        wal.append(&entries(6, 9, 1)).unwrap();
        wal.sync().unwrap();
    }
    let full = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &full[..good_len as usize + 40]).unwrap();
    let (wal, state) = Wal::open(StdFs, &d, WalOptions::default()).unwrap();
    assert_eq!(state.entries.len(), 5);
    assert!(
        wal.repaired().unwrap().contains("torn tail"),
        "{:?}",
        wal.repaired()
    );
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        good_len,
        "the tail is cut"
    );
    // Appends continue cleanly after the cut.
    drop(wal);
    let (mut wal, _) = Wal::open(StdFs, &d, WalOptions::default()).unwrap();
    wal.append(&entries(6, 6, 2)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, state) = Wal::open(StdFs, &d, WalOptions::default()).unwrap();
    assert_eq!(state.entries.last().unwrap(), &entry(6, 2));
}

#[test]
fn a_lost_page_inside_the_last_batch_is_a_torn_tail() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 3, 1)).unwrap();
    wal.sync().unwrap();
    let seg = segment_files(&fs, &dir()).pop().unwrap();
    let good_len = fs.read(&seg).unwrap().len();
    wal.append(&entries(4, 200, 1)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    // A sector in the middle of the last batch never reached the disk (it
    // reads as zeros); the batch's end did.
    let sector = (good_len + 600).next_multiple_of(512);
    fs.zero(&seg, sector, 512).unwrap();
    let (wal, state) = Wal::open(fs, &dir(), WalOptions::default()).unwrap();
    assert_eq!(state.entries.len(), 3);
    assert!(wal.repaired().is_some());
}

#[test]
fn a_checksum_failure_before_the_tail_refuses_to_open_and_names_the_place() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    for k in 0..3 {
        wal.append(&entries(k * 10 + 1, k * 10 + 10, 1)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let seg = segment_files(&fs, &dir()).pop().unwrap();
    // Damage a byte in the first batch: later batches prove it was synced.
    let off = SEGMENT_PREFIX_BYTES + 60;
    fs.corrupt(&seg, off).unwrap();
    let before = fs.read(&seg).unwrap();
    match Wal::open(fs.clone(), &dir(), WalOptions::default()) {
        Err(WalError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, seg);
            assert!(offset as usize <= off && offset as usize >= SEGMENT_HEADER_BYTES);
            assert!(reason.contains("checksum"), "{reason}");
            let msg = WalError::Corrupt {
                file,
                offset,
                reason,
            }
            .to_string();
            assert!(msg.contains("wal-") && msg.contains("offset"), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a corrupt log"),
    }
    assert_eq!(
        fs.read(&seg).unwrap(),
        before,
        "a refused open changes nothing"
    );
}

#[test]
fn a_checksum_failure_in_a_sealed_segment_refuses_to_open() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
    for k in 0..20 {
        wal.append(&entries(k * 5 + 1, k * 5 + 5, 1)).unwrap();
        wal.sync().unwrap();
    }
    assert!(wal.segment_count() > 2);
    drop(wal);
    let first = segment_files(&fs, &dir()).remove(0);
    let len = fs.read(&first).unwrap().len();
    // The very last byte of a sealed segment: still corruption, not a tail.
    fs.corrupt(&first, len - 1).unwrap();
    assert!(matches!(
        Wal::open(fs, &dir(), small_segments()),
        Err(WalError::Corrupt { .. })
    ));
}

#[test]
fn compaction_deletes_covered_segments_and_survives_reopen() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
    for k in 0..40 {
        wal.append(&entries(k * 5 + 1, k * 5 + 5, 1)).unwrap();
        wal.save_hard_state(hs(1, Some(1), k * 5 + 5)).unwrap();
        wal.sync().unwrap();
    }
    let before = wal.segment_count();
    let bytes_before = wal.disk_bytes();
    assert!(before > 5, "{before} segments");
    wal.compact(LogIndex(150), Term(1)).unwrap();
    wal.sync().unwrap();
    let after = wal.segment_count();
    assert!(after < before / 2, "{before} -> {after} segments");
    assert!(wal.disk_bytes() < bytes_before);
    drop(wal);
    let (wal, state) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
    assert_eq!(state.snapshot_last, (LogIndex(150), Term(1)));
    assert_eq!(state.entries.first().unwrap().index, LogIndex(151));
    assert_eq!(state.entries.last().unwrap().index, LogIndex(200));
    assert_eq!(state.hard_state, hs(1, Some(1), 200));
    assert_eq!(wal.segment_count(), segment_files(&fs, &dir()).len());
    // Appending below the snapshot is refused.
    drop(wal);
    let (mut wal, _) = Wal::open(fs, &dir(), small_segments()).unwrap();
    assert!(matches!(
        wal.append(&entries(150, 150, 2)),
        Err(WalError::InvalidAppend(_))
    ));
    assert!(matches!(
        wal.append(&entries(202, 202, 2)),
        Err(WalError::InvalidAppend(_))
    ));
}

#[test]
fn a_snapshot_ahead_of_the_log_replaces_it() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 5, 1)).unwrap();
    wal.compact(LogIndex(100), Term(7)).unwrap();
    wal.append(&entries(101, 102, 7)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, state) = Wal::open(fs, &dir(), WalOptions::default()).unwrap();
    assert_eq!(state.snapshot_last, (LogIndex(100), Term(7)));
    assert_eq!(state.entries, entries(101, 102, 7));
    assert_eq!(wal.last_index(), LogIndex(102));
}

/// A snapshot mark at the same index with another term restates the mark
/// (a base that named the entry before a lost segment corrected it), and
/// the entries after the old mark go with an install that keeps nothing.
#[test]
fn a_snapshot_at_the_marks_index_with_another_term_restates_it() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 5, 1)).unwrap();
    wal.compact(LogIndex(5), Term(1)).unwrap();
    wal.append(&entries(6, 7, 1)).unwrap();
    wal.sync().unwrap();
    wal.install_snapshot(LogIndex(5), Term(2), false).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, state) = Wal::open(fs, &dir(), WalOptions::default()).unwrap();
    assert_eq!(state.snapshot_last, (LogIndex(5), Term(2)));
    assert!(state.entries.is_empty(), "{:?}", state.entries);
    assert_eq!(wal.last_index(), LogIndex(5));
}

#[test]
fn a_full_disk_stops_writes_without_damaging_what_is_synced() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 10, 1)).unwrap();
    wal.sync().unwrap();
    fs.set_space_left(Some(50));
    wal.append(&entries(11, 40, 1)).unwrap();
    let err = wal.sync().unwrap_err();
    assert!(err.to_string().contains("no space"), "{err}");
    // Failed for good until reopened: nothing more is accepted.
    assert!(matches!(
        wal.append(&entries(41, 41, 1)),
        Err(WalError::Failed(_))
    ));
    assert!(matches!(wal.sync(), Err(WalError::Failed(_))));
    assert!(wal.failure().is_some());
    // Space returns: the reopened log holds the synced prefix and works.
    fs.set_space_left(None);
    let (mut wal, state) = wal.reopen().unwrap();
    assert_eq!(state.entries, entries(1, 10, 1));
    wal.append(&entries(11, 12, 2)).unwrap();
    wal.sync().unwrap();
}

#[test]
fn a_failed_fsync_is_never_retried() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    fs.set_fail_sync(true);
    wal.append(&entries(1, 3, 1)).unwrap();
    assert!(wal.sync().is_err());
    fs.set_fail_sync(false);
    // The kernel may have dropped the pages: a later sync must not "succeed".
    assert!(matches!(wal.sync(), Err(WalError::Failed(_))));
}

#[test]
fn crashes_keep_exactly_the_synced_batches() {
    for seed in 0..200u64 {
        let fs = SimFs::new();
        let mut rng = SplitMix64::new(seed);
        let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
        let mut synced = 0u64;
        let mut last = 0u64;
        for _ in 0..rng.range(1, 30) {
            let n = rng.range(1, 8);
            wal.append(&entries(last + 1, last + n, 1)).unwrap();
            last += n;
            if rng.chance(0.2) {
                // The write happens, and the power goes during the fsync.
                fs.set_sync_interrupted(true);
                let _ = wal.sync();
                break;
            }
            wal.sync().unwrap();
            synced = last;
        }
        drop(wal);
        fs.crash(&mut rng);
        let (_, state) =
            Wal::open(fs, &dir(), small_segments()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let got = state.entries.last().map_or(0, |e| e.index.0);
        assert!(
            got >= synced && got <= last,
            "seed {seed}: {got} not in {synced}..={last}"
        );
        for (k, e) in state.entries.iter().enumerate() {
            assert_eq!(e, &entry(k as u64 + 1, 1), "seed {seed}");
        }
    }
}

#[test]
fn segment_files_are_named_and_headed() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 1, 1)).unwrap();
    wal.sync().unwrap();
    let files = segment_files(&fs, &dir());
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("wal-0000000000000001.log"));
    let buf = fs.read(&files[0]).unwrap();
    assert_eq!(&buf[..8], b"HA-WAL\x00\x02");
    let mut f = fs.open(&files[0], false).unwrap();
    assert_eq!(f.size().unwrap() as usize, buf.len());
    f.set_len(5).unwrap();
    drop(wal);
    // A segment whose header was torn at creation is removed on open.
    let (wal, state) = Wal::open(fs, &dir(), WalOptions::default()).unwrap();
    assert!(state.entries.is_empty());
    assert!(wal.repaired().unwrap().contains("removed"));
}

// ----- record and batch limits -------------------------------------------------

fn command_entry(index: u64, term: u64, bytes: usize) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: EntryPayload::Command(Bytes::from(vec![(index % 251) as u8; bytes])),
    }
}

#[test]
fn an_entry_above_the_record_limit_is_refused_whole_and_nothing_is_written() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 3, 1)).unwrap();
    wal.sync().unwrap();
    let seg = segment_files(&fs, &dir()).pop().unwrap();
    let before = fs.read(&seg).unwrap();
    // A small entry, then one a byte too large: the whole append is refused.
    let batch = vec![entry(4, 1), command_entry(5, 1, MAX_COMMAND_BYTES + 1)];
    match wal.append(&batch) {
        Err(WalError::RecordTooLarge { index, bytes, max }) => {
            assert_eq!(index, LogIndex(5));
            assert_eq!(max, MAX_RECORD_BYTES);
            assert_eq!(bytes, MAX_RECORD_BYTES + 1);
        }
        other => panic!("an oversized record was not refused: {other:?}"),
    }
    let msg = wal.append(&batch).unwrap_err().to_string();
    assert!(
        msg.contains("above the limit") && msg.contains("refused"),
        "{msg}"
    );
    // Nothing was buffered, and the log is still usable.
    assert_eq!(wal.last_index(), LogIndex(3));
    assert!(wal.failure().is_none());
    wal.sync().unwrap();
    assert_eq!(fs.read(&seg).unwrap(), before, "nothing written");
    wal.append(&entries(4, 5, 2)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, state) = Wal::open(fs, &dir(), WalOptions::default()).unwrap();
    let mut want = entries(1, 3, 1);
    want.extend(entries(4, 5, 2));
    assert_eq!(state.entries, want);
}

#[test]
fn the_largest_command_round_trips() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    let big = command_entry(1, 1, MAX_COMMAND_BYTES);
    wal.append(std::slice::from_ref(&big)).unwrap();
    wal.append(&[entry(2, 1)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, state) = Wal::open(fs, &dir(), WalOptions::default()).unwrap();
    assert_eq!(state.entries.len(), 2);
    assert!(
        state.entries[0] == big,
        "the largest command comes back intact"
    );
}

#[test]
fn a_sync_above_the_batch_limit_is_written_as_several_synced_batches() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.set_max_batch_bytes(1024);
    let syncs_before = fs.syncs();
    // About 45 bytes a record: some 4.5 KB, five batches or so.
    wal.append(&entries(1, 100, 1)).unwrap();
    wal.save_hard_state(hs(1, Some(1), 100)).unwrap();
    // One entry larger than the cap goes out alone.
    wal.append(&[command_entry(101, 1, 5000)]).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.syncs(), 1, "one sync for the caller");
    assert!(
        fs.syncs() - syncs_before >= 5,
        "each batch synced: {} fsyncs",
        fs.syncs() - syncs_before
    );
    drop(wal);
    let (_, state) = Wal::open(fs, &dir(), WalOptions::default()).unwrap();
    let mut want = entries(1, 100, 1);
    want.push(command_entry(101, 1, 5000));
    assert_eq!(state.entries, want);
    assert_eq!(state.hard_state, hs(1, Some(1), 100));
}

#[test]
fn a_failure_between_the_batches_of_one_sync_keeps_a_prefix_of_it() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.set_max_batch_bytes(1024);
    wal.append(&entries(1, 5, 1)).unwrap();
    wal.save_hard_state(hs(1, Some(1), 5)).unwrap();
    wal.sync().unwrap();
    // One Ready of 95 entries and a hard state; the disk fills after the
    // first batch of it.
    wal.append(&entries(6, 100, 2)).unwrap();
    wal.save_hard_state(hs(2, Some(2), 100)).unwrap();
    fs.set_space_left(Some(1500));
    assert!(wal.sync().is_err());
    fs.set_space_left(None);
    let (_, state) = wal.reopen().unwrap();
    let n = state.entries.len();
    assert!(n > 5 && n < 100, "a proper prefix survived: {n} entries");
    let mut want = entries(1, 5, 1);
    want.extend(entries(6, n as u64, 2));
    assert_eq!(state.entries, want, "a prefix, in order, without gaps");
    assert_eq!(
        state.hard_state,
        hs(1, Some(1), 5),
        "the hard state came last"
    );
}

#[test]
fn crashes_during_split_syncs_keep_a_prefix() {
    for seed in 0..200u64 {
        let fs = SimFs::new();
        let mut rng = SplitMix64::new(seed);
        let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
        wal.set_max_batch_bytes(rng.range(40, 300) as usize);
        let mut synced = 0u64;
        let mut last = 0u64;
        for _ in 0..rng.range(1, 20) {
            let n = rng.range(1, 12);
            wal.append(&entries(last + 1, last + n, 1)).unwrap();
            last += n;
            if rng.chance(0.2) {
                // The power goes during the fsync of a split sync.
                fs.set_sync_interrupted(true);
                let _ = wal.sync();
                break;
            }
            wal.sync().unwrap();
            synced = last;
        }
        drop(wal);
        fs.crash(&mut rng);
        let (_, state) =
            Wal::open(fs, &dir(), small_segments()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let got = state.entries.last().map_or(0, |e| e.index.0);
        assert!(
            got >= synced && got <= last,
            "seed {seed}: {got} not in {synced}..={last}"
        );
        for (k, e) in state.entries.iter().enumerate() {
            assert_eq!(e, &entry(k as u64 + 1, 1), "seed {seed}");
        }
    }
}

// ----- property test: the log against the in-memory reference ----------------

#[derive(Clone, Debug)]
enum Op {
    /// Append `n` entries starting `back` entries before the end (a conflict).
    Append {
        back: u64,
        n: u64,
    },
    HardState {
        commit: u64,
    },
    Sync,
    Compact {
        back: u64,
    },
    CrashAndReopen,
    /// The batch is written but its fsync fails; then the power goes.
    FailedSyncThenCrash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..4, 1u64..6).prop_map(|(back, n)| Op::Append { back, n }),
        1 => (0u64..50).prop_map(|commit| Op::HardState { commit }),
        3 => Just(Op::Sync),
        1 => (0u64..6).prop_map(|back| Op::Compact { back }),
        1 => Just(Op::CrashAndReopen),
        1 => Just(Op::FailedSyncThenCrash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn the_log_behaves_like_the_in_memory_model(ops in proptest::collection::vec(op(), 1..60)) {
        let fs = SimFs::new();
        let mut model = MemLogStore::new();
        let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
        let mut term = 1;
        let mut rng = SplitMix64::new(ops.len() as u64);
        for op in ops {
            match op {
                Op::Append { back, n } => {
                    let snap = model.load().unwrap().snapshot_last.0;
                    let from = LogIndex(model.last_index().0.saturating_sub(back) + 1).max(snap.next());
                    term += 1;
                    let es = entries(from.0, from.0 + n - 1, term);
                    model.append(&es).unwrap();
                    wal.append(&es).unwrap();
                }
                Op::HardState { commit } => {
                    let h = hs(term, Some(1), commit);
                    model.save_hard_state(h).unwrap();
                    wal.save_hard_state(h).unwrap();
                }
                Op::Sync => {
                    model.sync().unwrap();
                    wal.sync().unwrap();
                    prop_assert_eq!(wal.load().unwrap(), model.load().unwrap());
                }
                Op::Compact { back } => {
                    let st = model.load().unwrap();
                    let at = model.last_index().0.saturating_sub(back);
                    if at > st.snapshot_last.0.0 {
                        let t = st.entries.iter().find(|e| e.index.0 == at).map_or(Term(0), |e| e.term);
                        model.compact(LogIndex(at), t).unwrap();
                        wal.compact(LogIndex(at), t).unwrap();
                    }
                }
                Op::CrashAndReopen => {
                    drop(wal);
                    fs.crash(&mut rng);
                    model.crash();
                    let (w, state) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
                    wal = w;
                    prop_assert_eq!(state, model.load().unwrap());
                }
                Op::FailedSyncThenCrash => {
                    let mut before = model.clone();
                    before.crash();
                    model.sync().unwrap();
                    fs.set_sync_interrupted(true);
                    let _ = wal.sync();
                    drop(wal);
                    fs.crash(&mut rng);
                    let (w, state) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
                    wal = w;
                    // The unsynced batch survives whole or not at all.
                    if state != model.load().unwrap() {
                        prop_assert_eq!(&state, &before.load().unwrap());
                        model = before;
                    }
                }
            }
        }
    }
}

// Issue: storage never forgets an acknowledged batch.

/// The story: a bit flipped inside the last synced batch (entries 6–10 and
/// the vote for n3 in term 2) was cut off as a torn tail: the node forgot
/// acknowledged entries and could vote twice in a term. A torn tail is now
/// only a batch that runs past the end of the file or has a sector of
/// zeros; anything else is damage and refuses to open.
#[test]
fn a_bit_flip_in_the_last_synced_batch_is_corruption_not_a_torn_tail() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 5, 1)).unwrap();
    wal.save_hard_state(hs(1, Some(2), 5)).unwrap();
    wal.sync().unwrap();
    let seg = segment_files(&fs, &dir()).pop().unwrap();
    let first_len = fs.read(&seg).unwrap().len();
    wal.append(&entries(6, 10, 2)).unwrap();
    wal.save_hard_state(hs(2, Some(3), 10)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let len = fs.read(&seg).unwrap().len();
    for off in [
        first_len + 3,
        first_len + 40,
        (first_len + len) / 2,
        len - 1,
    ] {
        let fs = fs.clone();
        let snapshot = fs.read(&seg).unwrap();
        fs.corrupt(&seg, off).unwrap();
        match Wal::open(fs.clone(), &dir(), WalOptions::default()) {
            Err(WalError::Corrupt { .. }) => {}
            Err(e) => panic!("offset {off}: wrong error {e}"),
            Ok((_, state)) => panic!(
                "offset {off}: opened with last index {} and {:?}",
                state.entries.len(),
                state.hard_state
            ),
        }
        // Undo the flip for the next offset.
        fs.corrupt(&seg, off).unwrap();
        assert_eq!(fs.read(&seg).unwrap(), snapshot);
    }
}

/// The same batch with a sector of zeros in it and nothing after it is the
/// write a crash interrupted: cut off, the synced prefix kept.
#[test]
fn a_zero_sector_in_the_last_batch_is_a_torn_tail() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 5, 1)).unwrap();
    wal.sync().unwrap();
    let seg = segment_files(&fs, &dir()).pop().unwrap();
    let first_len = fs.read(&seg).unwrap().len();
    wal.append(&entries(6, 60, 2)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let len = fs.read(&seg).unwrap().len();
    let sector = first_len.next_multiple_of(512);
    assert!(sector + 512 < len, "the batch spans a whole sector");
    fs.zero(&seg, sector, 512).unwrap();
    let (wal, state) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    assert_eq!(state.entries, entries(1, 5, 1));
    assert!(wal.repaired().unwrap().contains("torn tail"));
    assert_eq!(fs.read(&seg).unwrap().len(), first_len);
}

/// Encodes a record as the log does (length, CRC32C, kind, index, term,
/// payload): for forging one.
fn forged_record(kind: u8, index: u64, term: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(&index.to_le_bytes());
    body.extend_from_slice(&term.to_le_bytes());
    body.extend_from_slice(payload);
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The story: the scan for "valid data after a bad record" looked at every
/// offset, payloads included, so a client value carrying a forged batch
/// start turned a torn write into "acknowledged data is damaged". Batch
/// starts are now bound to their segment and offset and chained to the
/// previous one; a copy anywhere else is just bytes.
#[test]
fn a_forged_batch_start_in_a_value_does_not_turn_a_torn_tail_into_corruption() {
    let forged_v1 = forged_record(1, 0, 0, &64u32.to_le_bytes());
    let mut v2_payload = 64u32.to_le_bytes().to_vec();
    v2_payload.extend_from_slice(&0u32.to_le_bytes());
    let forged_v2 = forged_record(1, 4096, 1, &v2_payload);
    for tear_at in [40usize, 200, 700] {
        let fs = SimFs::new();
        let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
        wal.append(&entries(1, 3, 1)).unwrap();
        wal.sync().unwrap();
        let seg = segment_files(&fs, &dir()).pop().unwrap();
        let good_len = fs.read(&seg).unwrap().len();
        let mut value = Vec::new();
        for _ in 0..20 {
            value.extend_from_slice(&forged_v1);
            value.extend_from_slice(&forged_v2);
        }
        wal.append(&[Entry {
            index: LogIndex(4),
            term: Term(1),
            payload: EntryPayload::Command(Bytes::from(value)),
        }])
        .unwrap();
        wal.sync().unwrap();
        drop(wal);
        // The crash kept only the first bytes of the last write.
        let full = fs.read(&seg).unwrap();
        let mut f = fs.open(&seg, false).unwrap();
        f.set_len((good_len + tear_at).min(full.len() - 1) as u64)
            .unwrap();
        f.sync().unwrap();
        let (wal, state) = Wal::open(fs.clone(), &dir(), WalOptions::default())
            .unwrap_or_else(|e| panic!("torn at {tear_at}: {e}"));
        assert_eq!(state.entries, entries(1, 3, 1), "torn at {tear_at}");
        assert!(wal.repaired().is_some());
    }
}

/// The story: after a failed fsync, Linux keeps the pages in its cache
/// marked clean, so a reopen read the batch back whole, counted it (and its
/// vote), and a crash then lost it. Now the reopen writes the last batch
/// again and syncs it before trusting it: what an open reports survives a
/// crash.
#[test]
fn what_an_open_after_a_failed_fsync_reports_survives_a_crash() {
    for seed in 0..50u64 {
        let fs = SimFs::new();
        let mut rng = SplitMix64::new(seed);
        let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
        wal.append(&entries(1, 3, 1)).unwrap();
        wal.save_hard_state(hs(1, Some(1), 3)).unwrap();
        wal.sync().unwrap();
        fs.set_fail_sync(true);
        wal.append(&entries(4, 6, 2)).unwrap();
        wal.save_hard_state(hs(2, Some(3), 3)).unwrap();
        assert!(wal.sync().is_err());
        fs.set_fail_sync(false);
        let (wal, before) = wal.reopen().unwrap();
        drop(wal);
        fs.crash(&mut rng);
        let (_, after) = Wal::open(fs, &dir(), WalOptions::default())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(after.entries, before.entries, "seed {seed}");
        assert_eq!(after.hard_state, before.hard_state, "seed {seed}");
    }
}

/// The story: a segment whose first batch (its base) was lost to a full
/// disk kept taking batches without a base; a crash that persisted only
/// some unlinks of a compaction then left it first, and replay refused a
/// log the snapshot covered. Now the next batch after such a reopen opens a
/// segment with a base.
#[test]
fn a_segment_whose_base_was_lost_takes_no_more_batches() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
    let mut last = 0;
    // Fill until the newest segment is full: the next sync rotates.
    loop {
        wal.append(&entries(last + 1, last + 2, 1)).unwrap();
        last += 2;
        wal.sync().unwrap();
        let newest = segment_files(&fs, &dir()).pop().unwrap();
        if wal.segment_count() >= 2 && fs.read(&newest).unwrap().len() >= 512 {
            break;
        }
    }
    let before = segment_files(&fs, &dir()).len();
    // The new segment's header fits; its base does not.
    fs.set_space_left(Some(SEGMENT_PREFIX_BYTES as u64 + 8));
    wal.append(&entries(last + 1, last + 1, 1)).unwrap();
    assert!(wal.sync().is_err());
    fs.set_space_left(None);
    assert_eq!(segment_files(&fs, &dir()).len(), before + 1);
    let (mut wal, _) = wal.reopen().unwrap();
    wal.append(&entries(last + 1, last + 4, 1)).unwrap();
    wal.sync().unwrap();
    last += 4;
    drop(wal);
    // A compaction's unlinks, persisted only up to the baseless segment.
    let files = segment_files(&fs, &dir());
    for f in &files[..before] {
        fs.remove(f).unwrap();
    }
    let (_, state) = Wal::open(fs.clone(), &dir(), small_segments())
        .unwrap_or_else(|e| panic!("the log after the baseless segment: {e}"));
    assert_eq!(
        state.snapshot_last.0.plus(state.entries.len() as u64),
        LogIndex(last)
    );
}

/// The story: new directories (`wal/`, `snap/`, the data directory) were
/// never synced in their parent, so a crash could forget a directory with
/// every synced segment or snapshot in it. The simulated disk now loses
/// such directories; the log and the snapshot store create theirs durably.
#[test]
fn synced_data_in_new_directories_survives_a_crash() {
    use ha_core::storage::{SnapshotMeta, SnapshotStore};
    for seed in 0..20u64 {
        let fs = SimFs::new();
        let wal_dir = Path::new("/srv/ha/node-1/wal");
        let snap_dir = Path::new("/srv/ha/node-1/snap");
        let (mut wal, _) = Wal::open(fs.clone(), wal_dir, WalOptions::default()).unwrap();
        wal.append(&entries(1, 5, 1)).unwrap();
        wal.sync().unwrap();
        let store = SnapshotStore::open(fs.clone(), snap_dir).unwrap();
        let meta = SnapshotMeta {
            index: LogIndex(3),
            term: Term(1),
            membership: Default::default(),
        };
        store.save(meta, b"state").unwrap();
        drop(wal);
        fs.crash(&mut SplitMix64::new(seed));
        let (_, state) = Wal::open(fs.clone(), wal_dir, WalOptions::default()).unwrap();
        assert_eq!(state.entries, entries(1, 5, 1), "seed {seed}");
        let store = SnapshotStore::open(fs.clone(), snap_dir).unwrap();
        let (got, bytes) = store.latest().unwrap().expect("the snapshot survives");
        assert_eq!((got.index, bytes.as_slice()), (LogIndex(3), &b"state"[..]));
    }
}

/// The story: a snapshot renamed into place whose directory fsync then
/// failed stayed visible under its final name, though a crash could lose
/// that name: a node could compact its log against it. Now the rename is
/// undone and the save fails.
#[test]
fn a_snapshot_whose_directory_sync_failed_is_not_published() {
    use ha_core::storage::{SnapshotMeta, SnapshotStore};
    let fs = SimFs::new();
    let snap_dir = Path::new("/srv/ha/node-1/snap");
    let store = SnapshotStore::open(fs.clone(), snap_dir).unwrap();
    let meta = |i| SnapshotMeta {
        index: LogIndex(i),
        term: Term(1),
        membership: Default::default(),
    };
    store.save(meta(3), b"three").unwrap();
    fs.set_fail_dir_sync(true);
    assert!(store.save(meta(7), b"seven").is_err());
    fs.set_fail_dir_sync(false);
    let (newest, bytes) = store.latest().unwrap().unwrap();
    assert_eq!(
        (newest.index, bytes.as_slice()),
        (LogIndex(3), &b"three"[..])
    );
    // And a reopen (which clears temporary files) agrees.
    let store = SnapshotStore::open(fs.clone(), snap_dir).unwrap();
    assert_eq!(store.latest().unwrap().unwrap().0.index, LogIndex(3));
}

/// A new segment whose header sync failed: the reopen writes the header
/// again, so after a crash it is not a short, "corrupt" middle segment.
#[test]
fn a_segment_whose_header_sync_failed_is_made_whole_at_reopen() {
    for seed in 0..20u64 {
        let fs = SimFs::new();
        let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
        let mut last = 0;
        loop {
            wal.append(&entries(last + 1, last + 2, 1)).unwrap();
            last += 2;
            wal.sync().unwrap();
            let newest = segment_files(&fs, &dir()).pop().unwrap();
            if fs.read(&newest).unwrap().len() >= 512 {
                break;
            }
        }
        fs.set_fail_sync(true);
        wal.append(&entries(last + 1, last + 1, 1)).unwrap();
        assert!(wal.sync().is_err());
        fs.set_fail_sync(false);
        let (mut wal, _) = wal.reopen().unwrap();
        wal.append(&entries(last + 1, last + 3, 1)).unwrap();
        wal.sync().unwrap();
        last += 3;
        drop(wal);
        fs.crash(&mut SplitMix64::new(seed));
        let (_, state) =
            Wal::open(fs, &dir(), small_segments()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(
            state.entries.last().unwrap().index,
            LogIndex(last),
            "seed {seed}"
        );
    }
}

/// Crashes during batches larger than a page (so a lost page can fall
/// anywhere in one, a batch start included) keep exactly a prefix, and
/// never make the log refuse to open.
#[test]
fn crashes_during_large_batches_keep_a_prefix_and_never_refuse() {
    for seed in 0..300u64 {
        let fs = SimFs::new();
        let mut rng = SplitMix64::new(seed);
        let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
        let (mut synced, mut last) = (0u64, 0u64);
        for _ in 0..rng.range(1, 8) {
            let n = rng.range(1, 6);
            let batch: Vec<Entry> = (last + 1..=last + n)
                .map(|i| command_entry(i, 1, rng.range(100, 3000) as usize))
                .collect();
            wal.append(&batch).unwrap();
            last += n;
            if rng.chance(0.3) {
                // The write happens, and the power goes during the fsync.
                fs.set_sync_interrupted(true);
                let _ = wal.sync();
                break;
            }
            wal.sync().unwrap();
            synced = last;
        }
        drop(wal);
        fs.crash(&mut rng);
        let (_, state) = Wal::open(fs, &dir(), WalOptions::default())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let got = state.entries.last().map_or(0, |e| e.index.0);
        assert!(
            got >= synced && got <= last,
            "seed {seed}: {got} not in {synced}..={last}"
        );
    }
}

/// The story: a build that reads only format version 1, run on a log this
/// build wrote, took the newest version 2 segment for a torn creation and
/// deleted it. A version 2 segment now carries a guard such a build sees as
/// a valid batch start after a bad header: it refuses instead.
#[test]
fn a_version_2_segment_looks_damaged_not_torn_to_a_version_1_reader() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 3, 1)).unwrap();
    wal.sync().unwrap();
    let seg = segment_files(&fs, &dir()).pop().unwrap();
    let buf = fs.read(&seg).unwrap();
    assert_eq!(&buf[..8], b"HA-WAL\x00\x02");
    // The version 1 reader's test for a torn creation: is there a record
    // that parses as a version 1 batch start (length 21, kind 1, valid CRC)
    // anywhere after offset 0?
    let v1_start = (1..buf.len() - RECORD_HEADER).any(|p| {
        let len = u32::from_le_bytes(buf[p..p + 4].try_into().unwrap()) as usize;
        len == 21
            && buf[p + 8] == 1
            && p + 8 + len <= buf.len()
            && crc32c::crc32c(&buf[p + 8..p + 8 + len])
                == u32::from_le_bytes(buf[p + 4..p + 8].try_into().unwrap())
    });
    assert!(v1_start, "a version 1 reader would delete this segment");
    assert_eq!(
        SEGMENT_PREFIX_BYTES,
        SEGMENT_HEADER_BYTES + RECORD_HEADER + 4
    );
}

const RECORD_HEADER: usize = 25;

// ----- repair instead of refusing ---------------------------------------------

/// Damage to acknowledged data: `open` refuses, `open_repairing` keeps the
/// intact prefix, moves the damaged segment and every later one aside
/// (nothing is deleted), and marks the log repairing, durably, until
/// `finish_repair`.
#[test]
fn open_repairing_keeps_the_intact_prefix_and_marks_the_log_until_finished() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
    for k in 0..20 {
        wal.append(&entries(k * 5 + 1, k * 5 + 5, 1)).unwrap();
        wal.save_hard_state(hs(1, Some(2), k * 5 + 5)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let files = segment_files(&fs, &dir());
    assert!(files.len() > 3);
    // A flipped bit in the middle of the second segment.
    let victim = &files[1];
    let len = fs.read(victim).unwrap().len();
    fs.corrupt(victim, len / 2).unwrap();
    assert!(matches!(
        Wal::open(fs.clone(), &dir(), small_segments()),
        Err(WalError::Corrupt { .. })
    ));
    let (mut wal, state) = Wal::open_repairing(fs.clone(), &dir(), small_segments()).unwrap();
    let why = wal.repairing().expect("marked repairing").to_string();
    assert!(why.contains("corrupt"), "{why}");
    // A prefix of what was written, shorter than all of it.
    let last = state.entries.last().map_or(0, |e| e.index.0);
    assert!((1..100).contains(&last), "{last}");
    assert_eq!(state.entries, entries(1, last, 1));
    // The rest is kept aside, not deleted.
    let aside: Vec<String> = fs
        .list(&dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("wal-"))
        .collect();
    assert!(aside.len() <= 2, "{aside:?}");
    // Appends go on; a restart (any open) is still repairing until it is
    // finished, durably.
    wal.append(&entries(last + 1, last + 3, 2)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    fs.crash(&mut SplitMix64::new(7));
    let (mut wal, state) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
    assert!(wal.repairing().is_some(), "the mark survives a crash");
    assert_eq!(state.entries.last().unwrap().index, LogIndex(last + 3));
    wal.finish_repair().unwrap();
    drop(wal);
    fs.crash(&mut SplitMix64::new(8));
    let (wal, _) = Wal::open(fs, &dir(), small_segments()).unwrap();
    assert!(wal.repairing().is_none());
}

/// A flipped bit in the last synced batch (which must not be cut as torn)
/// is repaired like any other damage.
#[test]
fn open_repairing_repairs_damage_in_the_last_synced_batch() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 5, 1)).unwrap();
    wal.sync().unwrap();
    wal.append(&entries(6, 10, 2)).unwrap();
    wal.save_hard_state(hs(2, Some(3), 8)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let seg = segment_files(&fs, &dir()).pop().unwrap();
    let len = fs.read(&seg).unwrap().len();
    fs.corrupt(&seg, len - 3).unwrap();
    let (wal, state) = Wal::open_repairing(fs.clone(), &dir(), WalOptions::default()).unwrap();
    assert!(wal.repairing().is_some());
    assert_eq!(state.entries, entries(1, 5, 1));
}

/// A segment whose reads fail (a latent sector error): `open` refuses,
/// naming it; `open_repairing` moves it and every later one aside without
/// reading it, and keeps the segments before it.
#[test]
fn an_unreadable_segment_is_damage_that_a_repair_moves_aside() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
    for k in 0..20 {
        wal.append(&entries(k * 5 + 1, k * 5 + 5, 1)).unwrap();
        wal.save_hard_state(hs(1, Some(2), k * 5 + 5)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let files = segment_files(&fs, &dir());
    assert!(files.len() > 3);
    fs.set_unreadable(&files[2]).unwrap();
    match Wal::open(fs.clone(), &dir(), small_segments()) {
        Err(WalError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (files[2].clone(), 0));
        }
        Err(e) => panic!("an unreadable segment must be damage, got {e}"),
        Ok(_) => panic!("an unreadable segment was opened"),
    }
    let (wal, state) = Wal::open_repairing(fs.clone(), &dir(), small_segments()).unwrap();
    assert!(wal.repairing().is_some());
    let last = state.entries.last().map_or(0, |e| e.index.0);
    assert!((1..100).contains(&last), "{last}");
    assert_eq!(state.entries, entries(1, last, 1));
    let left = segment_files(&fs, &dir());
    assert_eq!(left, files[..2].to_vec());
}

/// A full disk refuses new files and renames too, not only writes; what
/// is synced stays.
#[test]
fn a_full_disk_refuses_creations_and_renames() {
    let fs = SimFs::new();
    let d = dir();
    ha_core::storage::vfs::create_dir_durably(&fs, &d).unwrap();
    let mut f = fs.open(&d.join("a"), true).unwrap();
    f.append(b"kept").unwrap();
    f.sync().unwrap();
    fs.sync_dir(&d).unwrap();
    fs.set_space_left(Some(0));
    assert_eq!(
        fs.open(&d.join("b"), true).err().map(|e| e.kind()),
        Some(std::io::ErrorKind::StorageFull)
    );
    assert_eq!(
        fs.rename(&d.join("a"), &d.join("c"))
            .err()
            .map(|e| e.kind()),
        Some(std::io::ErrorKind::StorageFull)
    );
    fs.crash(&mut SplitMix64::new(1));
    assert_eq!(fs.read(&d.join("a")).unwrap(), b"kept");
}

/// A write that begins inside a sector holding synced bytes may scramble
/// them in a power loss (a non-atomic sector write); the log finds the
/// damage in its last synced batch and does not cut it off as torn.
#[test]
fn a_torn_sector_write_damages_the_last_synced_batch_and_is_not_torn() {
    let mut found = 0;
    for seed in 0..50 {
        let fs = SimFs::new();
        let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
        wal.append(&entries(1, 5, 1)).unwrap();
        wal.save_hard_state(hs(1, Some(2), 5)).unwrap();
        wal.sync().unwrap();
        // Unsynced (the power fails during its fsync): it begins inside
        // the last synced batch's final sector.
        wal.append(&entries(6, 8, 1)).unwrap();
        fs.set_sync_interrupted(true);
        assert!(wal.sync().is_err());
        let mut rng = SplitMix64::new(seed);
        let tore = fs.crash_tearing(&mut rng, 1.0);
        drop(wal);
        if !tore {
            continue;
        }
        found += 1;
        match Wal::open(fs.clone(), &dir(), WalOptions::default()) {
            Err(WalError::Corrupt { .. }) => {}
            Ok((_, s)) => panic!(
                "seed {seed}: scrambled synced bytes were taken as a torn tail: last {:?}",
                s.entries.last().map(|e| e.index)
            ),
            Err(e) => panic!("seed {seed}: {e}"),
        }
        let (_, state) = Wal::open_repairing(fs, &dir(), WalOptions::default()).unwrap();
        assert!(state.entries.len() < 5, "seed {seed}");
    }
    assert!(found > 0, "no seed tore a sector");
}

/// A misdirected write (a sector of the log copied over another) is damage.
#[test]
fn a_misdirected_sector_is_damage() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    for k in 0..10 {
        wal.append(&entries(k * 5 + 1, k * 5 + 5, 1)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let seg = segment_files(&fs, &dir()).pop().unwrap();
    let bytes = fs.read(&seg).unwrap();
    assert!(bytes.len() >= 1024);
    fs.overwrite(&seg, 512, &bytes[..512]).unwrap();
    assert!(matches!(
        Wal::open(fs, &dir(), WalOptions::default()),
        Err(WalError::Corrupt { .. })
    ));
}

/// Damage found twice at the same segment and offset (the prefix put back
/// took new batches from there) is set aside in a second directory: the
/// first incident's files are not overwritten.
#[test]
fn a_second_repair_at_the_same_place_keeps_the_first_ones_files() {
    let fs = SimFs::new();
    let (mut wal, _) = Wal::open(fs.clone(), &dir(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 5, 1)).unwrap();
    wal.sync().unwrap();
    wal.append(&entries(6, 10, 1)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let seg = segment_files(&fs, &dir()).pop().unwrap();
    let len = fs.read(&seg).unwrap().len();
    fs.corrupt(&seg, len - 3).unwrap();
    let (mut wal, state) = Wal::open_repairing(fs.clone(), &dir(), WalOptions::default()).unwrap();
    assert_eq!(state.entries, entries(1, 5, 1));
    // The same batch position, damaged again.
    wal.append(&entries(6, 10, 1)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert_eq!(fs.read(&seg).unwrap().len(), len);
    fs.corrupt(&seg, len - 3).unwrap();
    Wal::open_repairing(fs.clone(), &dir(), WalOptions::default()).unwrap();
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    let seq = name
        .trim_start_matches("wal-")
        .trim_end_matches(".log")
        .to_string();
    let asides: Vec<PathBuf> = (0..len)
        .flat_map(|at| {
            let base = format!("damaged-{seq}-{at}");
            [dir().join(&base), dir().join(format!("{base}-1"))]
        })
        .filter(|d| fs.list(d).is_ok())
        .collect();
    assert_eq!(asides.len(), 2, "{asides:?}");
    for d in &asides {
        assert_eq!(fs.list(d).unwrap(), vec![name.clone()], "{}", d.display());
    }
}
