use super::*;
use crate::rng::SplitMix64;
use crate::storage::vfs::SimFs;
use crate::types::NodeId;

/// A snapshot's header, with the members' addresses (every test that
/// writes and reads one checks they come back).
fn meta(index: u64, term: u64) -> SnapshotMeta {
    let mut membership = Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]);
    membership.learners.insert(NodeId(4));
    for n in 1..=4 {
        membership
            .addrs
            .insert(NodeId(n), format!("node-{n}.kv.svc:7000"));
    }
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(term),
        membership,
    }
}

#[test]
fn a_file_sent_in_pieces_arrives_verified_or_not_at_all() {
    let fs = SimFs::new();
    let a = SnapshotStore::open(fs.clone(), Path::new("/a")).unwrap();
    let b = SnapshotStore::open(fs.clone(), Path::new("/b")).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    a.save(meta(50, 3), &data).unwrap();
    let (m, len, mut r) = a.open_latest_file().unwrap().unwrap();
    assert_eq!(m, meta(50, 3));
    let mut file = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut file).unwrap();
    assert_eq!(file.len() as u64, len);
    // Whole, in odd-sized pieces: verified and visible.
    let mut w = b.raw_writer(LogIndex(50), Term(3)).unwrap();
    for piece in file.chunks(777) {
        w.write(piece).unwrap();
    }
    assert_eq!(w.finish().unwrap(), meta(50, 3));
    // Verified but staged: not a snapshot to start from until accepted.
    assert!(b.latest().unwrap().is_none());
    b.promote(LogIndex(50), Term(3)).unwrap();
    assert_eq!(b.latest().unwrap().unwrap().1, data);
    // Damaged in transit: refused, nothing visible.
    let c = SnapshotStore::open(fs, Path::new("/c")).unwrap();
    let mut w = c.raw_writer(LogIndex(50), Term(3)).unwrap();
    let mut bad = file.clone();
    bad[5000] ^= 1;
    w.write(&bad).unwrap();
    assert!(matches!(w.finish(), Err(SnapshotError::Corrupt { .. })));
    assert!(c.latest().unwrap().is_none());
    // Cut short: refused.
    let mut w = c.raw_writer(LogIndex(50), Term(3)).unwrap();
    w.write(&file[..file.len() / 2]).unwrap();
    assert!(w.finish().is_err());
}

#[test]
fn a_staged_snapshot_never_accepted_is_gone_after_a_restart() {
    let fs = SimFs::new();
    let a = SnapshotStore::open(fs.clone(), Path::new("/a")).unwrap();
    let b = SnapshotStore::open(fs.clone(), Path::new("/b")).unwrap();
    a.save(meta(10, 1), b"old").unwrap();
    b.save(meta(10, 1), b"old").unwrap();
    a.save(meta(90, 4), &[7u8; 1000]).unwrap();
    let (_, _, mut r) = a.open_latest_file().unwrap().unwrap();
    let mut file = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut file).unwrap();
    let mut w = b.raw_writer(LogIndex(90), Term(4)).unwrap();
    w.write(&file).unwrap();
    w.finish().unwrap();
    // Raft refused it (no promote); the node restarts.
    let b = SnapshotStore::open(fs, Path::new("/b")).unwrap();
    assert_eq!(b.latest().unwrap().unwrap().0, meta(10, 1));
    assert!(b.promote(LogIndex(90), Term(4)).is_err());
}

#[test]
fn superseded_staged_snapshots_are_removed() {
    let fs = SimFs::new();
    let a = SnapshotStore::open(fs.clone(), Path::new("/a")).unwrap();
    let b = SnapshotStore::open(fs.clone(), Path::new("/b")).unwrap();
    let stage = |index: u64, term: u64| {
        a.save(meta(index, term), &[index as u8; 100]).unwrap();
        let (_, _, mut r) = a.open_latest_file().unwrap().unwrap();
        let mut file = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut file).unwrap();
        let mut w = b.raw_writer(LogIndex(index), Term(term)).unwrap();
        w.write(&file).unwrap();
        w.finish().unwrap();
    };
    stage(10, 1);
    stage(20, 2);
    stage(30, 3);
    // A staged file's header, configuration and all, is read back.
    assert_eq!(b.meta_of(LogIndex(10), Term(1)).unwrap(), Some(meta(10, 1)));
    assert_eq!(b.meta_of(LogIndex(10), Term(2)).unwrap(), None);
    b.promote(LogIndex(20), Term(2)).unwrap();
    let names = fs.list(Path::new("/b")).unwrap();
    let staged: Vec<_> = names.iter().filter(|n| n.ends_with(".staged")).collect();
    assert_eq!(staged.len(), 1, "{names:?}");
    assert!(staged[0].contains("00000000000000000030"), "{names:?}");
    assert_eq!(
        b.meta_of(LogIndex(20), Term(2)).unwrap(),
        Some(meta(20, 2)),
        "published counts"
    );
}

#[test]
fn a_published_snapshot_is_never_overwritten() {
    let fs = SimFs::new();
    let a = SnapshotStore::open(fs, Path::new("/a")).unwrap();
    a.save(meta(40, 2), b"the received state").unwrap();
    // A second save of the same (index, term), as a node whose applied
    // state lagged would attempt: the first file stays.
    a.save(meta(40, 2), b"a stale local state").unwrap();
    assert_eq!(
        a.load(LogIndex(40), Term(2)).unwrap().1,
        b"the received state"
    );
}

#[test]
fn the_newest_snapshot_round_trips() {
    let fs = SimFs::new();
    let s = SnapshotStore::open(fs, Path::new("/snap")).unwrap();
    assert!(s.latest().unwrap().is_none());
    s.save(meta(10, 1), b"ten").unwrap();
    let mut w = s.writer(meta(20, 2)).unwrap();
    w.write(b"twe").unwrap();
    w.write(b"nty").unwrap();
    w.finish().unwrap();
    assert_eq!(s.latest().unwrap(), Some((meta(20, 2), b"twenty".to_vec())));
    s.retain(1).unwrap();
    assert_eq!(s.files().unwrap().len(), 1);
}

#[test]
fn a_corrupt_newest_snapshot_is_an_error_not_an_empty_state() {
    let fs = SimFs::new();
    let dir = Path::new("/snap");
    let s = SnapshotStore::open(fs.clone(), dir).unwrap();
    s.save(meta(10, 1), b"ten").unwrap();
    s.save(meta(20, 2), b"twenty").unwrap();
    let path = dir.join(file_name(LogIndex(20), Term(2)));
    fs.corrupt(&path, 30).unwrap();
    let err = s.latest().unwrap_err();
    assert!(matches!(err, SnapshotError::Corrupt { .. }));
    assert!(
        err.to_string().contains("snap-00000000000000000020"),
        "{err}"
    );
}

#[test]
fn a_crash_before_the_rename_is_durable_keeps_the_old_snapshot() {
    let fs = SimFs::new();
    let dir = Path::new("/snap");
    let s = SnapshotStore::open(fs.clone(), dir).unwrap();
    s.save(meta(10, 1), b"ten").unwrap();
    // An interrupted write: never finished.
    let mut w = s.writer(meta(20, 2)).unwrap();
    w.write(b"half").unwrap();
    drop(w);
    fs.crash(&mut SplitMix64::new(7));
    let s = SnapshotStore::open(fs.clone(), dir).unwrap();
    assert_eq!(s.latest().unwrap(), Some((meta(10, 1), b"ten".to_vec())));
    assert!(fs.list(dir).unwrap().iter().all(|n| !n.ends_with(".tmp")));
}
