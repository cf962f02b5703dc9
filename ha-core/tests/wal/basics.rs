//! The log's everyday contract: entries, hard state and memberships round
//! trip; a torn tail is cut and the synced prefix kept; checksum failures
//! refuse to open; compaction, snapshot marks, full disks, failed fsyncs
//! and crashes keep exactly what was synced.

use super::*;

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
    let mut with_addrs = m.clone();
    with_addrs.addrs.insert(NodeId(1), "10.1.2.3:7000".into());
    with_addrs
        .addrs
        .insert(NodeId(9), "kv-9.kv.default.svc:7000".into());
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
        Entry {
            index: LogIndex(3),
            term: Term(1),
            payload: EntryPayload::Membership(with_addrs),
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
