//! Record and batch limits: an entry above the record limit is refused
//! whole; a sync above the batch limit is written as several synced
//! batches, and a crash between them keeps a prefix.

use super::*;

// ----- record and batch limits -------------------------------------------------

pub(super) fn command_entry(index: u64, term: u64, bytes: usize) -> Entry {
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
