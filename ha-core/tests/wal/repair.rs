//! Repair instead of refusing: damaged acknowledged data is moved aside
//! (never deleted), the intact prefix kept, and the log marked repairing
//! until the repair finishes.

use super::*;

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
