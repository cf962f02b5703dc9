use super::*;

#[test]
fn synced_data_survives_and_unsynced_creation_does_not() {
    let fs = SimFs::new();
    let dir = Path::new("/d");
    create_dir_durably(&fs, dir).unwrap();
    let mut a = fs.open(&dir.join("a"), true).unwrap();
    a.append(b"hello").unwrap();
    a.sync().unwrap();
    fs.sync_dir(dir).unwrap();
    a.append(b" world").unwrap();
    let mut b = fs.open(&dir.join("b"), true).unwrap();
    b.append(b"lost").unwrap();
    b.sync().unwrap(); // The file is synced, but its name is not.
    let mut rng = SplitMix64::new(1);
    fs.crash(&mut rng);
    let got = fs.read(&dir.join("a")).unwrap();
    assert!(got.starts_with(b"hello") && got.len() <= 11, "{got:?}");
    // `b`'s name was never synced: it may or may not have survived.
    let names = fs.list(dir).unwrap();
    assert!(names.contains(&"a".to_string()), "{names:?}");
    if names.contains(&"b".to_string()) {
        assert_eq!(fs.read(&dir.join("b")).unwrap(), b"lost");
    }
}

/// A directory whose parent sync failed is made durable by the next
/// open, although it exists by then.
#[test]
fn an_existing_directory_is_made_durable_too() {
    let fs = SimFs::new();
    let dir = Path::new("/n1/wal");
    fs.set_fail_dir_sync(true);
    assert!(create_dir_durably(&fs, dir).is_err());
    fs.set_fail_dir_sync(false);
    create_dir_durably(&fs, dir).unwrap();
    let mut a = fs.open(&dir.join("a"), true).unwrap();
    a.append(b"synced").unwrap();
    a.sync().unwrap();
    fs.sync_dir(dir).unwrap();
    fs.crash(&mut SplitMix64::new(2));
    assert_eq!(fs.read(&dir.join("a")).unwrap(), b"synced");
}

#[test]
fn a_crash_keeps_a_prefix_of_the_unsynced_namespace_changes() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        create_dir_durably(&fs, dir).unwrap();
        for n in ["1", "2", "3"] {
            fs.open(&dir.join(n), true).unwrap();
        }
        fs.sync_dir(dir).unwrap();
        // Unlinks in order, unsynced, then a rename.
        fs.remove(&dir.join("1")).unwrap();
        fs.remove(&dir.join("2")).unwrap();
        fs.rename(&dir.join("3"), &dir.join("4")).unwrap();
        fs.crash(&mut SplitMix64::new(seed));
        let names = fs.list(dir).unwrap().join(",");
        assert!(
            ["1,2,3", "2,3", "3", "4"].contains(&names.as_str()),
            "seed {seed}: {names} is not a prefix of the changes"
        );
        seen.insert(names);
    }
    assert_eq!(seen.len(), 4, "every prefix occurs: {seen:?}");
}

#[test]
fn a_directory_whose_parent_was_not_synced_is_lost_with_its_files() {
    let fs = SimFs::new();
    let dir = Path::new("/d/e");
    fs.create_dir_all(dir).unwrap();
    let mut a = fs.open(&dir.join("a"), true).unwrap();
    a.append(b"synced").unwrap();
    a.sync().unwrap();
    fs.sync_dir(dir).unwrap();
    // `/d` is durable in `/`, but `e` was never made durable in `/d`.
    fs.sync_dir(Path::new("/")).unwrap();
    fs.crash(&mut SplitMix64::new(1));
    assert!(fs.list(Path::new("/d")).unwrap().is_empty());
    assert_eq!(fs.list(dir).unwrap_err().kind(), io::ErrorKind::NotFound);
    assert!(fs.read(&dir.join("a")).is_err());
    // Created durably, it stays.
    create_dir_durably(&fs, dir).unwrap();
    let mut a = fs.open(&dir.join("a"), true).unwrap();
    a.append(b"synced").unwrap();
    a.sync().unwrap();
    fs.sync_dir(dir).unwrap();
    fs.crash(&mut SplitMix64::new(1));
    assert_eq!(fs.read(&dir.join("a")).unwrap(), b"synced");
}

#[test]
fn full_disk_fails_writes_and_keeps_synced_data() {
    let fs = SimFs::new();
    let dir = Path::new("/d");
    create_dir_durably(&fs, dir).unwrap();
    let mut a = fs.open(&dir.join("a"), true).unwrap();
    a.append(b"0123").unwrap();
    a.sync().unwrap();
    fs.set_space_left(Some(2));
    let err = a.append(b"4567").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    fs.set_fail_sync(true);
    assert!(a.sync().is_err());
    fs.sync_dir(dir).unwrap_err();
    fs.set_fail_sync(false);
    fs.sync_dir(dir).unwrap();
    fs.crash(&mut SplitMix64::new(3));
    assert!(fs.read(&dir.join("a")).unwrap().starts_with(b"0123"));
}
