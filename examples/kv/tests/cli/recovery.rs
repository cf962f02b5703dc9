//! A cluster of another type seen through `status`, and a node whose log
//! is damaged repairing from its peers with nothing lost.

use super::*;

/// A replicated type that is not `Kv`, for `ha-kv status` against a cluster
/// of another type.
mod tally {
    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    /// A count.
    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Tally {
        n: u64,
    }

    #[replicated]
    impl Tally {
        /// Adds one.
        pub fn bump(&mut self) -> u64 {
            self.n += 1;
            self.n
        }
    }
}

/// The README says `ha-kv status` works for a cluster of any replicated
/// type: the status request carries no schema.
#[test]
fn status_reports_the_nodes_of_a_cluster_of_another_type() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt
        .block_on(ha_quic::LocalCluster::<tally::Tally>::start(3))
        .unwrap();
    let client = {
        let _in_runtime = rt.enter();
        cluster.client()
    };
    assert_eq!(rt.block_on(client.bump()).unwrap(), 1);
    let addrs: Vec<String> = cluster
        .node_ids()
        .iter()
        .map(|id| cluster.addr(*id).unwrap().to_string())
        .collect();
    let out = Command::new(BIN)
        .args([
            "status",
            "--timeout-ms",
            "2000",
            "--cluster",
            &addrs.join(","),
        ])
        .arg("--tls-dir")
        .arg(cluster.tls_dir())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON status line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let leaders: Vec<&Value> = lines.iter().filter(|s| s["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{lines:?}");
    // The registration and the command are committed.
    assert!(leaders[0]["commit_index"].as_u64() >= Some(3), "{lines:?}");
    let mut ids: Vec<u64> = lines.iter().map(|s| s["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
    rt.block_on(cluster.shutdown());
}

/// Offset of the last write-ahead log batch start record in a segment's
/// bytes: a record of length 25 (4 bytes), a CRC (4), kind 1, and its own
/// offset as its index (the version 2 format, docs/storage-format.md).
#[cfg(target_os = "linux")]
pub(super) fn last_batch_start(seg: &[u8]) -> Option<usize> {
    (0..seg.len().saturating_sub(33)).rev().find(|&p| {
        seg[p..p + 4] == 25u32.to_le_bytes()
            && seg[p + 8] == 1
            && seg[p + 9..p + 17] == (p as u64).to_le_bytes()
    })
}

/// Flips a bit in the last batch of node `victim`'s newest log segment
/// (it must be stopped), in the batch's start record (its length field:
/// the record's checksum then fails on bytes that are not zeros, which is
/// damage whatever follows). Not in the batch's last bytes: a follower's
/// batch often ends with a hard state whose high bytes are zeros, and if
/// those fill the file's last, partial sector, the torn-write rule (a
/// sector of zeros) reads the damage as a torn tail
/// (docs/storage-format.md). Returns the log's directory, the damaged
/// segment's length, and where the bit was flipped.
#[cfg(target_os = "linux")]
pub(super) fn damage_last_batch(c: &Cluster, victim: usize) -> (PathBuf, usize, usize) {
    let wal = c.dir.path().join(format!("data-{victim}")).join("wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    let newest = segs.pop().expect("a segment");
    let mut bytes = std::fs::read(&newest).unwrap();
    let at = last_batch_start(&bytes).expect("a batch in the newest segment") + 25;
    bytes[at] ^= 0x01;
    std::fs::write(&newest, &bytes).unwrap();
    (wal, bytes.len(), at)
}

/// Issue: storage that never forgets an acknowledged batch. A bit flipped
/// in the last synced batch of one node's log (damage, not a torn write):
/// the node restarts, moves the damaged part aside, repairs from its peers
/// without voting meanwhile, and serves again; once it reports itself whole
/// the other follower can go and the cluster still commits, with every
/// acknowledged write there.
#[test]
#[cfg(target_os = "linux")]
fn a_node_with_a_damaged_log_repairs_from_its_peers_and_nothing_is_lost() {
    let mut c = start();
    let leader = c.wait_for_leader();
    for k in 0..20 {
        let out = c.client(&["put", &format!("k{k}"), &format!("v{k}")]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    }
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != victim).unwrap();
    // Stop it first and wait until it is stopped: a write in progress
    // finishes (a SIGKILL alone can cut a write short, leaving a torn tail
    // whose damage would rightly not be damage). Then kill it: every batch
    // written is whole, and stays (no power is lost), though the last one
    // may not have been synced yet.
    c.stop_and_kill9(victim);
    let (wal, len, at) = damage_last_batch(&c, victim);
    c.start_node(victim);
    // It repairs: status says so until it holds the leader's log again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the damaged node never finished repairing; its log:\n{}",
            c.log(victim)
        );
        let st = c.status();
        let me = st.iter().find(|s| s["id"] == victim as u64);
        let lead = st.iter().find(|s| s["role"] == "leader");
        if let (Some(me), Some(lead)) = (me, lead)
            && me.get("repairing").is_none()
            && me["applied_index"].as_u64() >= lead["commit_index"].as_u64()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let aside = std::fs::read_dir(&wal)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .count();
    assert_eq!(
        aside,
        1,
        "the damaged segment is kept aside ({} bytes, bit flipped at {at}); its log:\n{}",
        len,
        c.log(victim)
    );
    // The other follower goes: the leader and the repaired node commit.
    c.kill9(other);
    let out = c.client(&["put", "after", "repair"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    for k in 0..20 {
        let out = c.client(&["get", &format!("k{k}")]);
        assert_eq!(json_line(&out)["value"], format!("v{k}"), "k{k}");
    }
}
