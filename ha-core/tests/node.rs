//! The async node over the in-memory network: elections, replication,
//! reads, and a node cut off while the majority keeps serving.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ha_core::node::{NodeHandle, NodeOptions, NodeStorage, StopReason, start_node};
use ha_core::raft::{InitialState, RoleKind};
use ha_core::sm::{Applier, NoopApplier};
use ha_core::storage::{MemLogStore, StdFs};
use ha_core::transport::MemNetwork;
use ha_core::types::NodeId;

fn cluster(net: &MemNetwork, n: u64) -> Vec<NodeHandle> {
    cluster_with(
        net,
        n,
        |_| {},
        |id| Arc::new(net.transport(id)),
        || NoopApplier,
    )
}

/// `n` in-memory nodes with a 10 ms tick; `tweak` adjusts each node's
/// options, `transport` gives each its transport.
fn cluster_with<A: Applier>(
    net: &MemNetwork,
    n: u64,
    tweak: impl Fn(&mut NodeOptions),
    transport: impl Fn(NodeId) -> Arc<dyn ha_core::transport::Transport>,
    applier: impl Fn() -> A,
) -> Vec<NodeHandle> {
    (1..=n)
        .map(|id| {
            let mut opts = NodeOptions::new(NodeId(id), (1..=n).map(NodeId));
            opts.tick = Duration::from_millis(10);
            opts.raft.rng_seed = id;
            tweak(&mut opts);
            let h = start_node::<StdFs>(
                opts,
                InitialState::default(),
                NodeStorage::Memory(MemLogStore::new()),
                transport(NodeId(id)),
                applier(),
            )
            .expect("start");
            net.register(NodeId(id), h.inbound());
            net.register_snapshots(NodeId(id), h.snapshot_files());
            h
        })
        .collect()
}

async fn leader(nodes: &[NodeHandle], skip: Option<NodeId>) -> NodeHandle {
    for _ in 0..500 {
        let found = nodes
            .iter()
            .filter(|n| Some(n.id()) != skip)
            .filter(|n| n.status().role == RoleKind::Leader)
            .max_by_key(|n| n.status().term);
        if let Some(l) = found {
            return l.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader elected within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_and_survives_a_lost_node() {
    let net = MemNetwork::new();
    let nodes = cluster(&net, 3);
    let l = leader(&nodes, None).await;
    let mut last = None;
    for k in 0..200u32 {
        let (i, _) = l
            .propose(Bytes::from(k.to_le_bytes().to_vec()))
            .await
            .expect("commit");
        last = Some(i);
    }
    let read = l.read_index().await.expect("read");
    assert!(read >= last.unwrap());
    // A follower refuses proposals and names the leader.
    let f = nodes.iter().find(|n| n.id() != l.id()).unwrap();
    let err = f.propose(Bytes::from_static(b"x")).await.unwrap_err();
    assert!(err.is_not_applied());
    // The leader goes silent: the other two elect a new one and keep serving.
    net.set_down(l.id(), true);
    let l2 = leader(&nodes, Some(l.id())).await;
    assert_ne!(l2.id(), l.id());
    l2.propose(Bytes::from_static(b"after"))
        .await
        .expect("the majority serves");
    for n in &nodes {
        n.shutdown().await;
        assert!(n.status().stopped.is_some());
    }
}

/// A flood of client commands must not starve the leader's other inputs:
/// with the driver polling commands first, the leader stopped stepping
/// acknowledgements and ticking, its followers heard no heartbeats and
/// elected another leader. Open-loop load from eight producers on four
/// workers keeps the command queue full for two seconds; the leader must
/// keep its term and keep committing. (Whether a starving driver loses its
/// term in two seconds depends on scheduling: with the commands-first
/// select this failed about one run in three here; a fair one never did.)
/// The election timeout is 400–800 ms, not the default 60–120 ms: on two
/// shared cores under this load the operating system alone held a
/// follower's task back for over 100 ms (2 runs in 6 lost the term with a
/// fair select). With the driver's bounded drains, a `biased` select no
/// longer loses the term here either (3 runs of 3 passed at 200–400 ms):
/// fairness rests on the unbiased select itself; this test keeps the
/// property a user sees, a leader that keeps its term under a flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_flood_does_not_starve_heartbeats() {
    let net = MemNetwork::new();
    let nodes = cluster_with(
        &net,
        3,
        |o| {
            o.raft.election_timeout_min_ticks = 40;
            o.raft.election_timeout_max_ticks = 80;
        },
        |id| Arc::new(net.transport(id)),
        || NoopApplier,
    );
    let l = leader(&nodes, None).await;
    let term = l.status().term;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(100_000));
    let mut flooders = Vec::new();
    for _ in 0..8 {
        let (l, stop, committed, permits) =
            (l.clone(), stop.clone(), committed.clone(), permits.clone());
        flooders.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let permit = permits.clone().acquire_owned().await.unwrap();
                let (l, committed) = (l.clone(), committed.clone());
                tokio::spawn(async move {
                    if l.propose(Bytes::from_static(b"load")).await.is_ok() {
                        committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    for n in &nodes {
        let s = n.status();
        assert_eq!(
            s.term, term,
            "node {} moved to term {} under load: the leader's heartbeats starved",
            s.id, s.term
        );
    }
    assert_eq!(l.status().role, RoleKind::Leader);
    assert!(
        committed.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the flood must commit to mean anything"
    );
    for n in &nodes {
        n.shutdown().await;
    }
}

/// Over the storage quota the leader refuses writes with a clear "no space"
/// (certainly not applied) while reads go on; a snapshot that compacts the
/// log lifts it.
fn quota_cluster<A: Applier>(
    net: &MemNetwork,
    snapshot_every: Option<u64>,
    applier: impl Fn() -> A,
) -> Vec<NodeHandle> {
    cluster_with(
        net,
        3,
        |opts| {
            opts.storage_quota_bytes = Some(20_000);
            opts.snapshot_every_entries = snapshot_every;
        },
        |id| Arc::new(net.transport(id)),
        applier,
    )
}

/// A raw applier that panics on one command: the node task dies of it (a
/// replicated type's panics are caught by its session table; a raw
/// applier's are not).
struct Bomb;

impl Applier for Bomb {
    fn apply(&mut self, _: ha_core::types::LogIndex, _: ha_core::types::Term, c: &Bytes) -> Bytes {
        assert!(&c[..] != b"boom", "boom");
        Bytes::new()
    }
    fn query(&self, _: &Bytes) -> Result<Bytes, ha_core::sm::StateError> {
        Ok(Bytes::new())
    }
    fn snapshot(&self) -> Result<Vec<u8>, ha_core::sm::StateError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), ha_core::sm::StateError> {
        Ok(())
    }
}

/// A node task that panics publishes that it stopped and why: it no longer
/// reports itself as leader (the status it had published before), and its
/// callers learn the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_task_that_panics_publishes_why() {
    let net = MemNetwork::new();
    let nodes = cluster_with(&net, 3, |_| {}, |id| Arc::new(net.transport(id)), || Bomb);
    let l = leader(&nodes, None).await;
    l.propose(Bytes::from_static(b"fine"))
        .await
        .expect("applied");
    assert!(l.propose(Bytes::from_static(b"boom")).await.is_err());
    // Every node applies the entry and its task dies of it; each publishes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in &nodes {
        loop {
            let s = n.status();
            if let Some(why) = &s.stopped {
                assert!(
                    matches!(why, StopReason::Panicked(text) if text.contains("boom")),
                    "{why}"
                );
                assert!(
                    why.to_string().starts_with("the node task panicked"),
                    "{why}"
                );
                assert_ne!(s.role, RoleKind::Leader);
                assert_eq!(s.leader, None);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} never published that it stopped: {s:?}",
                n.id().0
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Callers now learn why, not "shut down".
    let err = l.propose(Bytes::from_static(b"after")).await.unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
}

/// An applier whose snapshots cannot be encoded: nothing can lift a quota.
struct NoSnapshots;

impl Applier for NoSnapshots {
    fn apply(&mut self, _: ha_core::types::LogIndex, _: ha_core::types::Term, _: &Bytes) -> Bytes {
        Bytes::new()
    }
    fn query(&self, _: &Bytes) -> Result<Bytes, ha_core::sm::StateError> {
        Ok(Bytes::new())
    }
    fn snapshot(&self) -> Result<Vec<u8>, ha_core::sm::StateError> {
        Err(ha_core::sm::StateError::Encode(
            "this state cannot be encoded".into(),
        ))
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), ha_core::sm::StateError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_storage_quota_writes_are_refused_and_reads_go_on() {
    let net = MemNetwork::new();
    let nodes = quota_cluster(&net, None, || NoSnapshots);
    let l = leader(&nodes, None).await;
    let mut accepted = 0;
    let err = loop {
        match l.propose(Bytes::from(vec![7u8; 1000])).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "the quota never applied");
    };
    assert!(
        matches!(err, ha_core::node::NodeError::NoSpace { .. }),
        "{err}"
    );
    assert!(err.is_not_applied());
    assert!(err.to_string().contains("no space"), "{err}");
    assert!((15..=20).contains(&accepted), "{accepted} writes fit");
    // Reads still work.
    l.read_index().await.expect("reads go on over the quota");
    assert!(l.metrics().refused_no_space >= 1);
    for n in &nodes {
        n.shutdown().await;
    }
}

/// With snapshots compacting the log, the same quota lifts on its own: a
/// write refused for space (certainly not applied) succeeds once a
/// snapshot compacted the log, so 100 writes of 1 KB go through a 20 KB
/// quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_lift_the_storage_quota() {
    let net = MemNetwork::new();
    // No snapshots by count (the default): the node snapshots when the
    // quota presses, or writes would stop for good at the quota.
    let nodes = quota_cluster(&net, None, || NoopApplier);
    let l = leader(&nodes, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for k in 0..100 {
        loop {
            match l.propose(Bytes::from(vec![7u8; 1000])).await {
                Ok(_) => break,
                Err(ha_core::node::NodeError::NoSpace { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("write {k} refused: {e}; status {:?}", l.status()),
            }
        }
    }
    assert!(l.status().snapshot_index.0 > 0);
    assert!(l.metrics().snapshots > 0);
    for n in &nodes {
        n.shutdown().await;
    }
}

/// A transport that takes snapshot transfers and never reports them.
struct NeverReports {
    inner: ha_core::transport::MemTransport,
    transfers: Arc<std::sync::atomic::AtomicU64>,
}

impl ha_core::transport::Transport for NeverReports {
    fn send(&self, msg: ha_core::raft::Message) {
        self.inner.send(msg);
    }
    fn send_snapshot(
        &self,
        _to: NodeId,
        _snapshot: ha_core::node::OutgoingSnapshot,
        _install: ha_core::raft::Message,
        done: ha_core::transport::SnapshotDone,
    ) {
        self.transfers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(done); // Lost: never called.
    }
}

/// A transfer whose report is lost must not keep the follower without
/// appends for good: past the timeout it counts as failed and the leader
/// tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_transfer_never_reported_is_given_up_and_retried() {
    let net = MemNetwork::new();
    let transfers = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let nodes = cluster_with(
        &net,
        3,
        |opts| {
            opts.snapshot_every_entries = Some(5);
            opts.snapshot_transfer_timeout = Duration::from_millis(200);
        },
        |id| {
            Arc::new(NeverReports {
                inner: net.transport(id),
                transfers: transfers.clone(),
            })
        },
        || NoopApplier,
    );
    let l = leader(&nodes, None).await;
    let lagging = nodes.iter().find(|n| n.id() != l.id()).unwrap().id();
    net.set_down(lagging, true);
    for _ in 0..40 {
        l.propose(Bytes::from_static(b"x")).await.expect("commit");
    }
    // Wait until the leader's log no longer holds what the lagging node
    // needs.
    for _ in 0..200 {
        if l.status().snapshot_index.0 > 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    net.set_down(lagging, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while transfers.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader stopped trying after {} unreported transfers",
            transfers.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

/// A leader cut off with a command in flight loses its leadership; the
/// others commit on, snapshot and compact past the command's index; once
/// back, the old leader installs their snapshot. The command's entry is gone
/// from its log, so whether it committed cannot be told there: it must be
/// answered (outcome unknown), not left waiting for the client's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_a_snapshot_covers_is_answered() {
    let net = MemNetwork::new();
    let nodes = cluster_with(
        &net,
        3,
        |opts| opts.snapshot_every_entries = Some(5),
        |id| Arc::new(net.transport(id)),
        || NoopApplier,
    );
    let old = leader(&nodes, None).await;
    net.set_down(old.id(), true);
    let pending = {
        let old = old.clone();
        tokio::spawn(async move { old.propose(Bytes::from_static(b"cut off")).await })
    };
    let new = leader(&nodes, Some(old.id())).await;
    for _ in 0..50 {
        new.propose(Bytes::from_static(b"x")).await.expect("commit");
    }
    while new.status().snapshot_index.0 < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    net.set_down(old.id(), false);
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the covered proposal was never answered")
        .unwrap();
    assert_eq!(answer, Err(ha_core::node::NodeError::Superseded));
    assert!(
        !answer.unwrap_err().is_not_applied(),
        "its outcome is unknown"
    );
    for n in &nodes {
        n.shutdown().await;
    }
}

// ----- stopping: no writer outlives "stopped" --------------------------------

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use ha_core::storage::vfs::VfsLock;
use ha_core::storage::{SimFs, SnapshotStore, Vfs, VfsFile, Wal, WalOptions};

/// A disk whose fsync takes 100 ms, counting syncs started and finished.
#[derive(Clone)]
struct SlowFs {
    inner: SimFs,
    started: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
}

struct SlowFile {
    inner: <SimFs as Vfs>::File,
    fs: SlowFs,
}

impl VfsFile for SlowFile {
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.append(buf)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.fs.started.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        let r = self.inner.sync();
        self.fs.finished.fetch_add(1, Ordering::SeqCst);
        r
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn write_at(&mut self, at: u64, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(at, buf)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
}

impl Vfs for SlowFs {
    type File = SlowFile;
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path, create: bool) -> std::io::Result<SlowFile> {
        Ok(SlowFile {
            inner: self.inner.open(path, create)?,
            fs: self.clone(),
        })
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn open_read(&self, path: &Path) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        self.inner.open_read(path)
    }
    fn file_size(&self, path: &Path) -> std::io::Result<u64> {
        self.inner.file_size(path)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path) -> std::io::Result<Option<VfsLock>> {
        self.inner.try_lock(path)
    }
}

/// The story: "stopped" was published before the storage thread was
/// joined, so a caller that then released the data directory's lock could
/// overlap a second writer with the first for a moment. Now, once shutdown
/// returns, no sync of this node is running or starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_shutdown_returns_the_node_writes_nothing_more() {
    let fs = SlowFs {
        inner: SimFs::new(),
        started: Arc::new(AtomicU64::new(0)),
        finished: Arc::new(AtomicU64::new(0)),
    };
    let (wal, _) = Wal::open(fs.clone(), Path::new("/d/wal"), WalOptions::default()).unwrap();
    let snapshots = SnapshotStore::open(fs.clone(), Path::new("/d/snap")).unwrap();
    let net = MemNetwork::new();
    let mut opts = NodeOptions::new(NodeId(1), [NodeId(1)]);
    opts.tick = Duration::from_millis(10);
    let node = start_node(
        opts,
        InitialState::default(),
        NodeStorage::Durable {
            wal,
            snapshots: Arc::new(snapshots),
        },
        Arc::new(net.transport(NodeId(1))),
        NoopApplier,
    )
    .unwrap();
    leader(std::slice::from_ref(&node), None).await;
    // Writes keep the storage thread syncing while the node is told to stop.
    let mut writers = Vec::new();
    for k in 0..8u8 {
        let n = node.clone();
        writers.push(tokio::spawn(async move {
            for j in 0..50u8 {
                if n.propose(Bytes::from(vec![k, j])).await.is_err() {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    node.shutdown().await;
    let (started, finished) = (
        fs.started.load(Ordering::SeqCst),
        fs.finished.load(Ordering::SeqCst),
    );
    assert_eq!(
        started, finished,
        "a sync was still running after shutdown returned"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fs.started.load(Ordering::SeqCst),
        started,
        "a sync started after shutdown returned"
    );
    for w in writers {
        w.await.unwrap();
    }
}
