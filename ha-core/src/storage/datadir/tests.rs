use super::cluster::{parse_cluster, render_cluster};
use super::*;
use crate::storage::vfs::{SimFs, StdFs};

#[test]
fn a_second_opener_is_refused_until_the_first_lets_go() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("node1");
    let first = DataDir::open(&StdFs, &d, "c1", NodeId(1)).unwrap();
    let err = DataDir::open(&StdFs, &d, "c1", NodeId(1)).unwrap_err();
    assert!(matches!(err, DataDirError::Locked(_)));
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(first);
    DataDir::open(&StdFs, &d, "c1", NodeId(1)).unwrap();
}

#[test]
fn a_directory_is_initialized_once_a_node_opened_it() {
    let fs = SimFs::new();
    let d = Path::new("/n1");
    assert!(!initialized(&fs, d), "missing");
    fs.create_dir_all(d).unwrap();
    assert!(!initialized(&fs, d), "empty");
    drop(DataDir::open(&fs, d, "c", NodeId(1)).unwrap());
    assert!(initialized(&fs, d));
}

#[test]
fn another_cluster_or_node_is_refused() {
    let fs = SimFs::new();
    let d = Path::new("/n1");
    drop(DataDir::open(&fs, d, "cluster-a", NodeId(1)).unwrap());
    let err = DataDir::open(&fs, d, "cluster-b", NodeId(1)).unwrap_err();
    assert!(matches!(err, DataDirError::ClusterMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("belongs to cluster \"cluster-a\""),
        "{err}"
    );
    let err = DataDir::open(&fs, d, "cluster-a", NodeId(2)).unwrap_err();
    assert!(matches!(err, DataDirError::NodeMismatch { .. }), "{err}");
    // Raw data is never read as a type's, and a type's never as raw.
    let err = DataDir::open_with_schema(&fs, d, "cluster-a", NodeId(1), 42).unwrap_err();
    assert!(matches!(err, DataDirError::NoSchema { .. }), "{err}");
    let typed = Path::new("/n2");
    drop(DataDir::open_with_schema(&fs, typed, "cluster-a", NodeId(1), 41).unwrap());
    let err = DataDir::open_with_schema(&fs, typed, "cluster-a", NodeId(1), 42).unwrap_err();
    assert!(matches!(err, DataDirError::SchemaMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("Writing and evolving a replicated type"),
        "{err}"
    );
    let err = DataDir::open(&fs, typed, "cluster-a", NodeId(1)).unwrap_err();
    assert!(matches!(err, DataDirError::TypedOpenedRaw { .. }), "{err}");
    let dd = DataDir::open(&fs, d, "cluster-a", NodeId(1)).unwrap();
    assert_eq!(dd.cluster_id(), "cluster-a");
    assert_eq!(dd.wal_dir(), Path::new("/n1/wal"));
}

#[test]
fn a_damaged_identity_or_data_without_one_is_refused() {
    let fs = SimFs::new();
    let d = Path::new("/n1");
    drop(DataDir::open(&fs, d, "c", NodeId(1)).unwrap());
    fs.corrupt(&d.join(META_FILE), 40).unwrap();
    let err = DataDir::open(&fs, d, "c", NodeId(1)).unwrap_err();
    assert!(matches!(err, DataDirError::BadMeta { .. }), "{err}");
    let d2 = Path::new("/n2");
    fs.create_dir_all(&d2.join("wal")).unwrap();
    fs.open(&d2.join("wal/wal-0000000000000001.log"), true)
        .unwrap();
    let err = DataDir::open(&fs, d2, "c", NodeId(1)).unwrap_err();
    assert!(err.to_string().contains("no identity file"), "{err}");
}

#[test]
fn an_identity_without_its_log_directory_is_refused() {
    use crate::storage::wal::{Wal, WalOptions};
    use crate::storage::{LogStore, SnapshotStore};
    use crate::types::{HardState, LogIndex, Term};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("node1");
    // As ha-kv serve and QuicNode::start_replicated do: the directory,
    // then the log and the snapshots in it. The node votes in term 7.
    {
        let dd = DataDir::open(&StdFs, &d, "c", NodeId(1)).unwrap();
        assert!(dd.wal_dir().is_dir(), "the log directory exists with meta");
        let (mut wal, _) = Wal::open(StdFs, &dd.wal_dir(), WalOptions::default()).unwrap();
        SnapshotStore::open(StdFs, &dd.snapshot_dir()).unwrap();
        wal.save_hard_state(HardState {
            term: Term(7),
            vote: Some(NodeId(2)),
            commit: LogIndex(0),
        })
        .unwrap();
        wal.sync().unwrap();
    }
    // Emptied (not removed) beside a snapshot: refused the same way.
    SnapshotStore::open(StdFs, &d.join("snap"))
        .unwrap()
        .save(
            crate::storage::SnapshotMeta {
                index: LogIndex(1),
                term: Term(7),
                membership: crate::raft::Membership::new_voters([NodeId(1)]),
            },
            b"state",
        )
        .unwrap();
    for f in std::fs::read_dir(d.join("wal")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let err = DataDir::open(&StdFs, &d, "c", NodeId(1)).unwrap_err();
    assert!(matches!(err, DataDirError::MissingWal { .. }), "{err}");
    std::fs::remove_dir_all(d.join("wal")).unwrap();
    let err = DataDir::open(&StdFs, &d, "c", NodeId(1)).unwrap_err();
    assert!(matches!(err, DataDirError::MissingWal { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&d.join("wal").display().to_string()) && msg.contains("term and vote"),
        "{msg}"
    );
    assert!(!d.join("wal").exists(), "a refused open creates nothing");
    // A new directory whose log was never opened is fine to reopen.
    let fresh = tmp.path().join("node2");
    drop(DataDir::open(&StdFs, &fresh, "c", NodeId(2)).unwrap());
    DataDir::open(&StdFs, &fresh, "c", NodeId(2)).unwrap();
}

fn voters(list: &[(u64, &str)]) -> BTreeMap<NodeId, String> {
    list.iter()
        .map(|(id, a)| (NodeId(*id), a.to_string()))
        .collect()
}

#[test]
fn a_log_without_stored_voters_is_never_given_voters_from_flags() {
    use crate::storage::LogStore;
    use crate::storage::wal::{Wal, WalOptions};
    let fs = SimFs::new();
    let d = Path::new("/old");
    let dd = DataDir::open(&fs, d, "c", NodeId(1)).unwrap();
    // A node that ran before voters were stored: a log, no cluster file.
    let (mut wal, _) = Wal::open(fs.clone(), &dd.wal_dir(), WalOptions::default()).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let alone = voters(&[(1, "10.0.0.1:7001")]);
    let err = dd.bootstrap_or_check_membership(&fs, &alone).unwrap_err();
    assert!(matches!(err, DataDirError::BadCluster { .. }), "{err}");
    assert_eq!(dd.stored_cluster(&fs).unwrap(), None, "nothing stored");
}

#[test]
fn the_first_configuration_is_stored_and_a_different_one_refused() {
    let fs = SimFs::new();
    let d = Path::new("/n1");
    let three = voters(&[(1, "10.0.0.1:7001"), (2, "10.0.0.2:7001"), (3, "h3:7001")]);
    {
        let dd = DataDir::open(&fs, d, "c", NodeId(1)).unwrap();
        assert_eq!(dd.stored_cluster(&fs).unwrap(), None);
        let s = dd.bootstrap_or_check_membership(&fs, &three).unwrap();
        assert!(s.bootstrapped_now);
        assert_eq!(s.voters, three);
    }
    // Stored durably: a power loss right after keeps it.
    fs.crash(&mut crate::rng::SplitMix64::new(1));
    let dd = DataDir::open(&fs, d, "c", NodeId(1)).unwrap();
    let s = dd.bootstrap_or_check_membership(&fs, &three).unwrap();
    assert!(!s.bootstrapped_now);
    assert_eq!(s.voters, three);
    assert_eq!(s.describe(), "1=10.0.0.1:7001,2=10.0.0.2:7001,3=h3:7001");
    // This node's own address is its own business.
    let own_moved = voters(&[(1, "0.0.0.0:7001"), (2, "10.0.0.2:7001"), (3, "h3:7001")]);
    assert_eq!(
        dd.bootstrap_or_check_membership(&fs, &own_moved)
            .unwrap()
            .voters,
        three
    );
    // Fewer voters, more voters, another peer address: refused.
    for other in [
        voters(&[(1, "10.0.0.1:7001")]),
        voters(&[(1, "10.0.0.1:7001"), (2, "10.0.0.2:7001")]),
        voters(&[
            (1, "10.0.0.1:7001"),
            (2, "10.0.0.2:7001"),
            (3, "h3:7001"),
            (4, "h4:7001"),
        ]),
        voters(&[(1, "10.0.0.1:7001"), (2, "10.0.0.2:7001"), (3, "h3:7009")]),
    ] {
        let err = dd.bootstrap_or_check_membership(&fs, &other).unwrap_err();
        assert!(
            matches!(err, DataDirError::MembershipMismatch { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("voters 1=10.0.0.1:7001,2=10.0.0.2:7001,3=h3:7001"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }
    assert_eq!(dd.stored_cluster(&fs).unwrap().unwrap().voters, three);
    // Nothing unstorable is accepted.
    let dd2 = DataDir::open(&fs, Path::new("/n2"), "c", NodeId(1)).unwrap();
    for bad in [voters(&[]), voters(&[(1, "a b:1")]), voters(&[(0, "h:1")])] {
        let err = dd2.bootstrap_or_check_membership(&fs, &bad).unwrap_err();
        assert!(matches!(err, DataDirError::BadCluster { .. }), "{err}");
    }
    assert_eq!(dd2.stored_cluster(&fs).unwrap(), None);
}

#[test]
fn a_damaged_configuration_file_is_refused() {
    let fs = SimFs::new();
    let d = Path::new("/n1");
    let dd = DataDir::open(&fs, d, "c", NodeId(1)).unwrap();
    dd.bootstrap_or_check_membership(&fs, &voters(&[(1, "h1:1"), (2, "h2:1")]))
        .unwrap();
    fs.corrupt(&d.join(CLUSTER_FILE), 45).unwrap();
    for err in [
        dd.stored_cluster(&fs).unwrap_err(),
        dd.bootstrap_or_check_membership(&fs, &voters(&[(1, "h1:1")]))
            .unwrap_err(),
    ] {
        assert!(matches!(err, DataDirError::BadCluster { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }
    // Well-formed text with a bad field is refused too.
    for text in [
        render_cluster(&voters(&[(1, "h1:1")])).replace("voter=1", "voter=x"),
        format!("{CLUSTER_HEADER}\nvoter=0 h:1\n"),
        format!("{CLUSTER_HEADER}\n"),
    ] {
        let body = text
            .lines()
            .filter(|l| !l.starts_with("crc32c="))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        let text = format!("{body}crc32c={:08x}\n", crc32c::crc32c(body.as_bytes()));
        assert!(parse_cluster(&text).is_err(), "{text}");
    }
}
