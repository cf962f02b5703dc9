//! Snapshots, log compaction and snapshot install on real 3-node QUIC
//! clusters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ha_core::{Replicated, replicated};
use ha_quic::{LocalCluster, LocalOptions};
use serde::{Deserialize, Serialize};

/// A map from numbered keys to values.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Table {
    rows: BTreeMap<u64, Vec<u8>>,
}

#[replicated]
impl Table {
    /// Sets a row.
    pub fn set(&mut self, key: u64, value: Vec<u8>) {
        self.rows.insert(key, value);
    }
    /// Every row.
    pub fn dump(&self) -> BTreeMap<u64, Vec<u8>> {
        self.rows.clone()
    }
}

fn opts(every: u64) -> LocalOptions {
    LocalOptions {
        snapshot_every_entries: Some(every),
        wal_segment_bytes: 256 << 10,
        ..LocalOptions::default()
    }
}

/// Writes `n` rows over `keys` keys with 64 concurrent clients.
async fn write_rows(
    cluster: &LocalCluster<Table>,
    n: u64,
    keys: u64,
    value_bytes: usize,
    salt: u64,
) {
    let per = n / 64;
    let tasks: Vec<_> = (0..64u64)
        .map(|w| {
            let c = cluster.client();
            tokio::spawn(async move {
                for k in 0..per {
                    let key = (w * per + k + salt) % keys;
                    c.set(key, vec![(k % 251) as u8; value_bytes])
                        .await
                        .expect("committed");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn same_state(cluster: &LocalCluster<Table>, a: u64, b: u64) {
    let ra = cluster.stale_client_of(a).unwrap().dump().await.unwrap();
    let rb = cluster.stale_client_of(b).unwrap().dump().await.unwrap();
    assert_eq!(
        ra.len(),
        rb.len(),
        "nodes {a} and {b} hold different row counts"
    );
    assert!(ra == rb, "nodes {a} and {b} hold different rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_offline_through_50000_commits_catches_up_by_snapshot() {
    let mut cluster = LocalCluster::<Table>::start_with(3, opts(2_000))
        .await
        .unwrap();
    let leader = cluster.leader().await.expect("a leader");
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|i| *i != leader)
        .unwrap();
    cluster.kill(follower).await;
    write_rows(&cluster, 50_048, 2_000, 16, 0).await;
    let leader = cluster.leader().await.expect("a leader");
    let st = cluster.status(leader).unwrap();
    let snap = cluster
        .stale_client_of(leader)
        .unwrap()
        .dump()
        .await
        .unwrap();
    assert_eq!(snap.len(), 2_000);
    // The leader compacted: its log no longer reaches back to the start.
    let (offset, applied) = (cluster.snapshot_index(leader), st.applied_index);
    assert!(
        offset.0 > 40_000,
        "the leader did not compact (snapshot at {offset})"
    );
    cluster.restart(follower).await.unwrap();
    wait_until("the follower caught up", 30, || {
        cluster
            .status(follower)
            .is_some_and(|s| s.applied_index >= applied)
    })
    .await;
    assert!(
        cluster.snapshot_index(follower).0 > 0,
        "the follower caught up without a snapshot"
    );
    same_state(&cluster, follower, leader).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_transfer_broken_by_the_leaders_death_restarts_cleanly() {
    let mut cluster = LocalCluster::<Table>::start_with(3, opts(500))
        .await
        .unwrap();
    let leader = cluster.leader().await.expect("a leader");
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|i| *i != leader)
        .unwrap();
    cluster.kill(follower).await;
    // Large rows make a snapshot of several megabytes: the transfer takes a
    // while, and the leader dies during it.
    write_rows(&cluster, 2_048, 1_000, 8 << 10, 0).await;
    cluster.restart(follower).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    cluster.kill(leader).await;
    let new_leader = cluster.leader().await.expect("a new leader");
    assert_ne!(new_leader, leader);
    // The survivors (the restarted follower among them) serve and agree.
    write_rows(&cluster, 64, 1_000, 16, 7).await;
    let target = cluster.status(new_leader).unwrap().applied_index;
    wait_until("the follower caught up", 30, || {
        cluster
            .status(follower)
            .is_some_and(|s| s.applied_index >= target)
    })
    .await;
    same_state(&cluster, follower, new_leader).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_use_stays_bounded_under_steady_writes_over_a_fixed_key_space() {
    let cluster = LocalCluster::<Table>::start_with(3, opts(5_000))
        .await
        .unwrap();
    cluster.leader().await.expect("a leader");
    let disk =
        |c: &LocalCluster<Table>| c.node_ids().iter().map(|i| c.disk_bytes(*i)).max().unwrap();
    write_rows(&cluster, 30_016, 2_000, 64, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_30k = disk(&cluster);
    write_rows(&cluster, 30_016, 2_000, 64, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_60k = disk(&cluster);
    eprintln!("disk use: {at_30k} bytes after 30,000 writes, {at_60k} after 60,000");
    // Slack: a snapshot interval of log (5,000 entries) plus a segment.
    let slack = 5_000 * 120 + (256 << 10);
    assert!(
        at_60k <= at_30k + slack,
        "disk grew from {at_30k} to {at_60k} bytes"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarts_from_snapshots_plus_the_log_after_them() {
    let mut cluster = LocalCluster::<Table>::start_with(3, opts(500))
        .await
        .unwrap();
    cluster.leader().await.expect("a leader");
    write_rows(&cluster, 3_008, 700, 16, 0).await;
    let before = cluster.client().dump().await.unwrap();
    for id in cluster.node_ids() {
        assert!(
            cluster.snapshot_index(id).0 > 0,
            "node {id} took no snapshot"
        );
    }
    for id in cluster.node_ids() {
        cluster.kill(id).await;
    }
    for id in cluster.node_ids() {
        cluster.restart(id).await.unwrap();
    }
    cluster.leader().await.expect("a leader after the restart");
    let after = cluster.client().dump().await.unwrap();
    assert_eq!(before, after, "state changed across a full restart");
    for id in cluster.node_ids() {
        wait_until("every node caught up", 20, || {
            cluster
                .status(id)
                .is_some_and(|s| s.applied_index.0 >= 3_008)
        })
        .await;
        same_state(&cluster, id, cluster.node_ids()[0]).await;
    }
    cluster.shutdown().await;
}

/// How long [`SlowToEncode`] takes to encode: longer than an election
/// timeout (300–600 ms at `LocalOptions`' 50 ms tick).
const ENCODE_TIME: Duration = Duration::from_millis(900);

/// A counter whose state takes [`ENCODE_TIME`] to encode, as a large
/// state would.
#[derive(Default, Deserialize, Replicated)]
pub struct SlowToEncode {
    n: u64,
}

impl Serialize for SlowToEncode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        std::thread::sleep(ENCODE_TIME);
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("SlowToEncode", 1)?;
        st.serialize_field("n", &self.n)?;
        st.end()
    }
}

#[replicated]
impl SlowToEncode {
    /// Adds one; returns the count.
    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

/// While a node's state machine encodes a snapshot, its consensus goes
/// on: the leader keeps committing (its applied index waits for the state
/// machine, its commit index does not), and every write is answered once
/// the state machine is back. (Were the state encoded on the consensus
/// task, nothing would move on the leader for the whole encoding: its
/// status would show the commit index stuck at the applied index.)
// Release builds only: in debug builds the determinism check encodes the
// state on the node task (every 16th command), which this state takes
// 900 ms to do.
#[cfg_attr(debug_assertions, ignore)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consensus_goes_on_while_a_snapshot_is_encoded() {
    let cluster = LocalCluster::<SlowToEncode>::start_with(3, opts(20))
        .await
        .unwrap();
    let leader = cluster.leader().await.expect("a leader");
    let c = cluster.client();
    // Entries 1.. are the session's registration and the bumps: past the
    // 20th applied entry every node starts encoding.
    for _ in 0..24 {
        c.bump().await.expect("committed");
    }
    // A command every 15 ms, each from its own task (none waits for the
    // one before: they keep coming while the state machine is away), for
    // 60 commands: the next snapshot starts 20 entries in and takes 900 ms.
    // Meanwhile sample the leader's status: look for a stretch of at
    // least 200 ms in which its applied index stood still while its
    // commit index, ahead of it, went on rising (by at least 5). A node
    // task stuck in the encoding publishes no status at all: its last one
    // stands still whole.
    let mut writers = Vec::new();
    let mut best = (Duration::ZERO, 0);
    let mut since: Option<(Instant, u64, u64)> = None;
    let mut i = 0;
    while i < 60
        || !writers
            .iter()
            .all(|w: &tokio::task::JoinHandle<()>| w.is_finished())
    {
        if i < 60 {
            let c = cluster.client();
            writers.push(tokio::spawn(async move {
                c.bump()
                    .await
                    .expect("answered once the state machine is back");
            }));
            i += 1;
        }
        let s = cluster.status(leader).expect("the leader's status");
        let (commit, applied) = (s.commit_index.0, s.applied_index.0);
        since = match since {
            Some((t, a, c0)) if a == applied && commit > applied => {
                if commit >= c0 + 5 {
                    best = best.max((t.elapsed(), commit - c0));
                }
                Some((t, a, c0))
            }
            _ if commit > applied => Some((Instant::now(), applied, commit)),
            _ => None,
        };
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        best.0 >= Duration::from_millis(200),
        "the leader never went on committing for 200 ms past an applied index that stood still \
         (best {best:?}): consensus waited for the snapshot's encoding"
    );
    assert_eq!(c.bump().await.expect("committed"), 24 + 60 + 1);
    cluster.shutdown().await;
}

/// A counter whose state cannot be encoded once it counts 5 or more: its
/// encoding panics.
#[derive(Default, Deserialize, Replicated)]
pub struct PanicsToEncode {
    n: u64,
}

impl Serialize for PanicsToEncode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert!(self.n < 5, "this state cannot be encoded");
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("PanicsToEncode", 1)?;
        st.serialize_field("n", &self.n)?;
        st.end()
    }
}

#[replicated]
impl PanicsToEncode {
    /// Adds one; returns the count.
    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

/// A state machine whose snapshot encoding panics costs the snapshot, not
/// the node: the state machine comes back, every write is answered, and
/// no node stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_encoding_panics_is_skipped_and_the_node_goes_on() {
    let cluster = LocalCluster::<PanicsToEncode>::start_with(3, opts(10))
        .await
        .unwrap();
    cluster.leader().await.expect("a leader");
    let c = cluster.client();
    for i in 1..=50u64 {
        assert_eq!(c.bump().await.expect("answered"), i);
    }
    for id in cluster.node_ids() {
        let s = cluster.status(id).expect("a status");
        assert!(s.stopped.is_none(), "node {id} stopped: {:?}", s.stopped);
        assert_eq!(cluster.snapshot_index(id).0, 0, "node {id} took a snapshot");
        // And it did try: the panic was caught and counted, not skipped.
        let tried = cluster
            .handle(id)
            .expect("running")
            .metrics()
            .snapshot_failures;
        assert!(tried > 0, "node {id} never tried a snapshot");
    }
    cluster.shutdown().await;
}
