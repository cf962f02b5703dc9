//! Storage never forgets an acknowledged batch: what is damage and what is
//! a torn tail, failed directory and header syncs, large batches under
//! crashes, and segments of another format version.

use super::*;

// Storage never forgets an acknowledged batch.

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
pub(super) fn forged_record(kind: u8, index: u64, term: u64, payload: &[u8]) -> Vec<u8> {
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

pub(super) const RECORD_HEADER: usize = 25;
