//! Snapshot transfers: receivers that cannot store, snapshots above the
//! cap, stalled and trickling senders, concurrent transfers of one
//! snapshot, and a slow fsync that must not stall the runtime.

use super::*;

// ---------------------------------------------------------------------------
// Snapshot transfers.

/// A snapshot directory that refuses to begin or to finish a received
/// snapshot, or is slow to finish one; otherwise a real directory.
pub(super) struct Faulty {
    store: SnapshotStore<StdFs>,
    fail_begin: bool,
    fail_finish: bool,
    slow_finish: Duration,
}

pub(super) struct FaultyIncoming {
    inner: Box<dyn IncomingSnapshot>,
    fail_finish: bool,
    slow_finish: Duration,
}

impl IncomingSnapshot for FaultyIncoming {
    fn write(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        self.inner.write(chunk)
    }
    fn finish(self: Box<Self>) -> Result<(), SnapshotError> {
        // Stands for a slow fsync: blocks the calling thread.
        std::thread::sleep(self.slow_finish);
        if self.fail_finish {
            return Err(SnapshotError::Other(
                "simulated: the disk refused the file".into(),
            ));
        }
        self.inner.finish()
    }
}

impl SnapshotFiles for Faulty {
    fn save(&self, meta: SnapshotMeta, state: &[u8]) -> Result<(), SnapshotError> {
        SnapshotFiles::save(&self.store, meta, state)
    }
    fn open_latest(&self) -> Result<Option<OutgoingSnapshot>, SnapshotError> {
        self.store.open_latest()
    }
    fn latest_state(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, SnapshotError> {
        self.store.latest_state()
    }
    fn load_state(&self, index: LogIndex, term: Term) -> Result<Vec<u8>, SnapshotError> {
        self.store.load_state(index, term)
    }
    fn begin(
        &self,
        index: LogIndex,
        term: Term,
    ) -> Result<Box<dyn IncomingSnapshot>, SnapshotError> {
        if self.fail_begin {
            return Err(SnapshotError::Other(
                "simulated: no room for a snapshot".into(),
            ));
        }
        Ok(Box::new(FaultyIncoming {
            inner: self.store.begin(index, term)?,
            fail_finish: self.fail_finish,
            slow_finish: self.slow_finish,
        }))
    }
    fn retain(&self, n: usize) -> Result<(), SnapshotError> {
        SnapshotFiles::retain(&self.store, n)
    }
    fn promote(&self, index: LogIndex, term: Term) -> Result<(), SnapshotError> {
        SnapshotFiles::promote(&self.store, index, term)
    }
    fn meta_of(&self, index: LogIndex, term: Term) -> Result<Option<SnapshotMeta>, SnapshotError> {
        SnapshotFiles::meta_of(&self.store, index, term)
    }
}

pub(super) fn faulty(
    dir: &Path,
    fail_begin: bool,
    fail_finish: bool,
    slow_finish: Duration,
) -> Arc<Faulty> {
    Arc::new(Faulty {
        store: SnapshotStore::open(StdFs, dir).unwrap(),
        fail_begin,
        fail_finish,
        slow_finish,
    })
}

/// A snapshot of `bytes` state bytes at (1000, 3), in a directory of its own.
pub(super) fn snapshot_source(dir: &Path, bytes: usize) -> SnapshotStore<StdFs> {
    let store = SnapshotStore::open(StdFs, dir).unwrap();
    let meta = SnapshotMeta {
        index: LogIndex(1000),
        term: Term(3),
        membership: Membership::new_voters([NodeId(1), NodeId(2)]),
    };
    let state: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    store.save(meta, &state).unwrap();
    store
}

pub(super) fn install_message() -> Message {
    Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body: Body::InstallSnapshot {
            index: LogIndex(1000),
            term: Term(3),
            membership: Default::default(),
        },
    }
}

/// Sends the source's newest snapshot from `p.a` to `p.b`; whether the
/// sender reported success.
pub(super) async fn send_snapshot(p: &Pair, source: &SnapshotStore<StdFs>) -> bool {
    let snap = SnapshotFiles::open_latest(source).unwrap().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    p.a.transport().send_snapshot(
        NodeId(2),
        snap,
        install_message(),
        Box::new(move |ok| {
            let _ = tx.send(ok);
        }),
    );
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("the sender reports")
        .unwrap()
}

pub(super) fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The story: the sender reported a snapshot delivered once it had written
/// the stream, even when the receiver could not store it, so the leader
/// believed a follower had a snapshot it never got. Now the receiver
/// answers with a verdict after the file is durable and `InstallSnapshot`
/// is queued, and only `Accepted` counts.
#[test]
fn a_receiver_that_cannot_store_a_snapshot_makes_the_sender_report_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let source = snapshot_source(&tmp.path().join("source"), 3 << 20);
    runtime(2).block_on(async {
        for (k, (fail_begin, fail_finish)) in [(true, false), (false, true)].into_iter().enumerate()
        {
            let dir = tmp.path().join(format!("refusing-{k}"));
            let mut p = pair(
                Some(faulty(&dir, fail_begin, fail_finish, Duration::ZERO)),
                |_| {},
            );
            assert!(
                !send_snapshot(&p, &source).await,
                "the sender reported success for a snapshot the receiver could not store \
                 (begin fails: {fail_begin}, finish fails: {fail_finish})"
            );
            let stats = p.b.transport();
            assert_eq!(stats.stats().snapshots_refused.load(Ordering::Relaxed), 1);
            assert_eq!(stats.stats().snapshots_received.load(Ordering::Relaxed), 0);
            assert!(p.inbox.try_recv().is_none(), "InstallSnapshot was stepped");
            assert!(
                files_in(&dir).is_empty(),
                "left behind: {:?}",
                files_in(&dir)
            );
            p.a.close();
            p.b.close();
        }
        // A receiver that stores it: success, and the node is told.
        let dir = tmp.path().join("storing");
        let mut p = pair(Some(faulty(&dir, false, false, Duration::ZERO)), |_| {});
        assert!(send_snapshot(&p, &source).await);
        let got = p
            .inbox
            .try_recv()
            .expect("InstallSnapshot queued before the verdict");
        assert_eq!(got, install_message());
        assert_eq!(
            p.b.transport()
                .stats()
                .snapshots_received
                .load(Ordering::Relaxed),
            1
        );
    });
}

/// Opens a raw snapshot stream to `p.b` as node 1 and sends `head`; returns
/// the stream's halves.
pub(super) async fn raw_snapshot_stream(
    p: &Pair,
    header: &SnapshotHeader,
    body: &[u8],
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let n1 = load_node_identity(p.certs.path(), NodeId(1)).unwrap();
    let (ep, conn) = raw_conn(p.b.local_addr(), "node-2", &n1, ALPN_PEER).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut buf = hello(&n1, 1, 2, StreamClass::Snapshot);
    frame::encode(header, &mut buf).unwrap();
    buf.extend_from_slice(body);
    send.write_all(&buf).await.unwrap();
    (ep, conn, send, recv)
}

pub(super) async fn verdict(recv: &mut quinn::RecvStream, secs: u64) -> SnapshotVerdict {
    tokio::time::timeout(Duration::from_secs(secs), frame::read_frame(recv, 64 << 10))
        .await
        .expect("a verdict in time")
        .unwrap()
        .expect("a verdict, not the end of the stream")
}

/// The story: `SnapshotHeader.len` was trusted, so a peer could announce a
/// file of any size and have the node start writing it. Now a length above
/// `max_snapshot_bytes` is refused before any file exists.
#[test]
fn a_snapshot_above_the_cap_is_refused_before_any_file_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("receiver");
    runtime(2).block_on(async {
        let p = pair(Some(faulty(&dir, false, false, Duration::ZERO)), |q| {
            q.limits.max_snapshot_bytes = 1 << 20;
        });
        let header = SnapshotHeader {
            index: LogIndex(1000),
            term: Term(3),
            leader_term: Term(3),
            len: 1 << 40,
        };
        let (_ep, _conn, _send, mut recv) = raw_snapshot_stream(&p, &header, &[0; 1000]).await;
        match verdict(&mut recv, 5).await {
            SnapshotVerdict::Refused(why) => assert!(why.contains("too large"), "{why}"),
            v => panic!("{v:?}"),
        }
        assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        let stats = p.b.transport();
        assert_eq!(stats.stats().snapshots_refused.load(Ordering::Relaxed), 1);
    });
}

/// The story: a transfer that stopped sending was waited for forever, its
/// partial file kept. Now no bytes for `snapshot_idle_timeout` aborts it,
/// removes the partial file, and the sender hears why.
#[test]
fn a_stalled_snapshot_transfer_is_aborted_and_its_partial_file_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("receiver");
    runtime(2).block_on(async {
        let p = pair(Some(faulty(&dir, false, false, Duration::ZERO)), |q| {
            q.limits.snapshot_idle_timeout = Duration::from_millis(500);
        });
        let header = SnapshotHeader {
            index: LogIndex(1000),
            term: Term(3),
            leader_term: Term(3),
            len: 1 << 20,
        };
        let (_ep, _conn, _send, mut recv) = raw_snapshot_stream(&p, &header, &[0; 1000]).await;
        // The partial file exists while the transfer is alive...
        wait_until("the partial file exists", 5, || {
            files_in(&dir).iter().any(|f| f.ends_with(".tmp"))
        })
        .await;
        match verdict(&mut recv, 5).await {
            SnapshotVerdict::Refused(why) => assert!(why.contains("stalled"), "{why}"),
            v => panic!("{v:?}"),
        }
        // ...and is gone once it was aborted.
        assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        let s = p.b.transport();
        assert_eq!(s.stats().snapshot_timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats().snapshots_refused.load(Ordering::Relaxed), 1);
    });
}

/// The story: a peer trickling a byte just inside the idle timeout held a
/// receive slot for as long as the length it announced allowed (hours for
/// a large one), and two such peers held every slot. Now the deadline moves
/// on only as bytes arrive (the slowest allowed rate past a floor), and one
/// peer has one transfer at a time.
#[test]
fn a_trickling_snapshot_sender_is_cut_off_and_holds_one_slot_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("receiver");
    runtime(2).block_on(async {
        let p = pair(Some(faulty(&dir, false, false, Duration::ZERO)), |q| {
            q.limits.snapshot_idle_timeout = Duration::from_secs(5);
            q.limits.snapshot_timeout_floor = Duration::from_millis(500);
            q.limits.max_snapshot_receives = 2;
        });
        let header = SnapshotHeader {
            index: LogIndex(1000),
            term: Term(3),
            leader_term: Term(3),
            len: 100 << 20,
        };
        let (_ep, _conn, mut send, mut recv) = raw_snapshot_stream(&p, &header, &[0; 10]).await;
        wait_until("the partial file exists", 5, || {
            files_in(&dir).iter().any(|f| f.ends_with(".tmp"))
        })
        .await;
        // A second transfer from the same peer while the first is alive.
        let (_ep2, _conn2, _send2, mut recv2) = raw_snapshot_stream(&p, &header, &[0; 10]).await;
        match verdict(&mut recv2, 5).await {
            SnapshotVerdict::Refused(why) => assert!(why.contains("busy"), "{why}"),
            v => panic!("{v:?}"),
        }
        // A byte every 100 ms: never idle, far below 1 MiB/s.
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if send.write_all(&[0]).await.is_err() {
                    break;
                }
            }
        });
        match verdict(&mut recv, 5).await {
            SnapshotVerdict::Refused(why) => assert!(why.contains("stalled"), "{why}"),
            v => panic!("{v:?}"),
        }
        // Bytes kept coming (never idle for 5 s) and the announced length
        // allowed 100 s: only the rate can have ended it this soon.
        trickle.abort();
        wait_until("the partial file is removed", 5, || {
            files_in(&dir).is_empty()
        })
        .await;
        let s = p.b.transport();
        assert_eq!(s.stats().snapshot_timeouts.load(Ordering::Relaxed), 1);
    });
}

/// The story: two transfers of the same `(index, term)` (a leader retrying
/// while the first is still arriving) wrote into one temporary file, mixing
/// their bytes. Now every transfer has a temporary file of its own.
#[test]
fn two_transfers_of_the_same_snapshot_do_not_share_a_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let source = snapshot_source(&tmp.path().join("source"), 200_000);
    let mut file = Vec::new();
    let mut r = SnapshotFiles::open_latest(&source).unwrap().unwrap().data;
    std::io::Read::read_to_end(&mut r, &mut file).unwrap();
    let receiver = SnapshotStore::open(StdFs, &tmp.path().join("receiver")).unwrap();
    let mut first = SnapshotFiles::begin(&receiver, LogIndex(1000), Term(3)).unwrap();
    let mut second = SnapshotFiles::begin(&receiver, LogIndex(1000), Term(3)).unwrap();
    for piece in file.chunks(30_000) {
        first.write(piece).unwrap();
        second.write(piece).unwrap();
    }
    first.finish().expect("the first transfer is intact");
    second.finish().expect("the second transfer is intact");
    SnapshotFiles::promote(&receiver, LogIndex(1000), Term(3)).unwrap();
    let state = SnapshotFiles::load_state(&receiver, LogIndex(1000), Term(3)).unwrap();
    assert_eq!(state.len(), 200_000);
}

/// The story: snapshot writes and the fsync of `finish` ran on a tokio
/// worker, so a slow disk froze every task of the node on it: timers,
/// heartbeats, QUIC keep-alives. Now they run on a blocking thread, and the
/// runtime keeps ticking through a 1.5 s fsync.
#[test]
fn a_slow_snapshot_fsync_does_not_stall_the_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let source = snapshot_source(&tmp.path().join("source"), 1 << 20);
    let dir = tmp.path().join("receiver");
    // The receiver on a runtime of one worker, with a ticker measuring the
    // longest gap between its ticks.
    let receiver_rt = runtime(1);
    let worst_gap = Arc::new(Mutex::new(Duration::ZERO));
    let p = {
        let _g = receiver_rt.enter();
        let gap = worst_gap.clone();
        receiver_rt.spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = Instant::now();
                let mut g = gap.lock().unwrap();
                *g = (*g).max(now - last);
                last = now;
            }
        });
        pair(
            Some(faulty(&dir, false, false, Duration::from_millis(1500))),
            |_| {},
        )
    };
    runtime(1).block_on(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        *worst_gap.lock().unwrap() = Duration::ZERO;
        assert!(send_snapshot(&p, &source).await);
        let gap = *worst_gap.lock().unwrap();
        assert!(
            gap < Duration::from_millis(500),
            "the receiver's runtime stalled for {gap:?}"
        );
    });
    drop(p);
    receiver_rt.shutdown_background();
}
