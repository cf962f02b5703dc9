//! Installing a large snapshot on a fresh follower: time, and peak memory.
//!
//! A 200 MB snapshot file (size set by `HA_BENCH_SNAPSHOT_MB`) sits in the
//! leader's snapshot directory; the leader's endpoint streams it to a fresh
//! follower endpoint over QUIC with mutual TLS, in 1 MiB chunks; the
//! follower writes it to disk, verifies its checksum and makes it visible.
//! The run reports the wall time until the follower steps `InstallSnapshot`,
//! and the growth of this process's peak resident memory (VmHWM) during the
//! transfer. Both endpoints run in this process, so the figure covers the
//! sender and the receiver together. It then reports, separately, reading
//! the verified file back whole, which an in-memory state machine's restore
//! needs (its memory is that of the state itself).
//!
//! Run: `cargo bench -p ha-quic --bench install`.

#[path = "../../ha-core/benches/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_core::node::SnapshotFiles;
use ha_core::raft::{Body, Membership, Message};
use ha_core::storage::{SnapshotMeta, SnapshotStore, StdFs};
use ha_core::transport::Transport;
use ha_core::types::{LogIndex, NodeId, Term};
use ha_quic::certs::{create_cluster_certs, load_node_identity};
use ha_quic::transport::{QuicConfig, QuicEndpoint};

fn proc_status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak-RSS mark (Linux: writing 5 to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let smoke = support::plan(0.0, 0.0, 1).smoke;
    let mb: usize = std::env::var("HA_BENCH_SNAPSHOT_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 4 } else { 200 });
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ha-bench-install");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    create_cluster_certs(&tmp.join("tls"), &[NodeId(1), NodeId(2)]).unwrap();
    let leader_files = SnapshotStore::open(StdFs, &tmp.join("leader")).unwrap();
    let follower_files: Arc<dyn SnapshotFiles> =
        Arc::new(SnapshotStore::open(StdFs, &tmp.join("follower")).unwrap());
    // Write the snapshot in pieces (so this bench does not hold it either).
    let meta = SnapshotMeta {
        index: LogIndex(1_000_000),
        term: Term(3),
        membership: Membership::new_voters([NodeId(1), NodeId(2)]),
    };
    let mut w = leader_files.writer(meta).unwrap();
    let mut rng = ha_core::rng::SplitMix64::new(1);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mb {
        for b in chunk.chunks_mut(8) {
            b.copy_from_slice(&rng.next_u64().to_le_bytes()[..b.len()]);
        }
        w.write(&chunk).unwrap();
    }
    w.finish().unwrap();
    drop(chunk);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (s1, s2) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
        let (a1, a2) = (s1.local_addr().unwrap(), s2.local_addr().unwrap());
        let cfg = |id: u64, peer: u64, me, addr| {
            QuicConfig::new(
                NodeId(id),
                me,
                BTreeMap::from([(NodeId(peer), addr)]),
                load_node_identity(&tmp.join("tls"), NodeId(id)).unwrap(),
            )
        };
        let leader = QuicEndpoint::with_socket(cfg(1, 2, a1, a2), s1).unwrap();
        let follower = QuicEndpoint::with_socket(cfg(2, 1, a2, a1), s2).unwrap();
        let (tx, mut rx) = ha_core::node::Inbox::channel(16, 64 << 20);
        follower.serve_messages_and_snapshots(tx, follower_files.clone());
        let snap = leader_files.open_latest().unwrap().unwrap();
        let bytes = snap.len;
        let install = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: Body::InstallSnapshot { index: LogIndex(1_000_000), term: Term(3), membership: Default::default() },
        };
        let base_rss = proc_status_kb("VmRSS:");
        reset_peak();
        let started = Instant::now();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        leader.transport().send_snapshot(
            NodeId(2),
            snap,
            install,
            Box::new(move |ok| {
                let _ = done_tx.send(ok);
            }),
        );
        let got = tokio::time::timeout(Duration::from_secs(600), rx.recv()).await.unwrap().unwrap();
        let elapsed = started.elapsed();
        assert!(matches!(got.body, Body::InstallSnapshot { .. }));
        assert!(done_rx.await.unwrap(), "the sender reports a failed transfer");
        let peak = proc_status_kb("VmHWM:");
        println!(
            "snapshot install over QUIC: {:.1} MB in {:.2} s ({:.0} MB/s); peak RSS {:.1} MB, {:.1} MB above the {:.1} MB before the transfer",
            bytes as f64 / 1e6,
            elapsed.as_secs_f64(),
            bytes as f64 / 1e6 / elapsed.as_secs_f64(),
            peak as f64 / 1024.0,
            peak.saturating_sub(base_rss) as f64 / 1024.0,
            base_rss as f64 / 1024.0,
        );
        reset_peak();
        let t = Instant::now();
        let state = follower_files.load_state(LogIndex(1_000_000), Term(3)).unwrap();
        println!(
            "reading the verified {:.1} MB state back for restore: {:.2} s, peak RSS {:.1} MB (an in-memory state machine holds its state)",
            state.len() as f64 / 1e6,
            t.elapsed().as_secs_f64(),
            proc_status_kb("VmHWM:") as f64 / 1024.0
        );
        leader.close();
        follower.close();
    });
    let _ = std::fs::remove_dir_all(&tmp);
}
