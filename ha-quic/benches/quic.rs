//! What QUIC costs: raw message throughput between two endpoints on
//! loopback, and 3-node replication throughput over QUIC against the same
//! cluster over the in-memory transport, in one run, so the cost is a ratio.
//!
//! - messages: node 1's transport streams appends (8 entries of 128 bytes
//!   each) to node 2's endpoint, at most `WINDOW` unreceived at a time.
//! - replication: 3 nodes, in-memory logs, 64 closed-loop proposers of
//!   128-byte commands on the leader, for the run's length.
//!
//! Every figure is the median of `RUNS` runs. Run:
//! `cargo bench -p ha-quic --bench quic` (`HA_BENCH_SECS` sets the length of
//! one run, default 2 seconds).

#[path = "../../ha-core/benches/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::node::{NodeHandle, NodeOptions, NodeStorage, start_node};
use ha_core::raft::{Body, InitialState, Message, RoleKind};
use ha_core::sm::NoopApplier;
use ha_core::storage::{MemLogStore, StdFs};
use ha_core::transport::{MemNetwork, Transport};
use ha_core::types::{Entry, EntryPayload, LogIndex, NodeId, Term};
use ha_quic::QuicNode;
use ha_quic::certs::{create_cluster_certs, load_node_identity};
use ha_quic::transport::{QuicConfig, QuicEndpoint};

const RUNS: usize = 3;
const WINDOW: u64 = 4096;
const ENTRY_BYTES: usize = 128;

fn append(i: u64) -> Message {
    let entries = (0..8)
        .map(|k| Entry {
            index: LogIndex(i * 8 + k),
            term: Term(1),
            payload: EntryPayload::Command(Bytes::from(vec![7u8; ENTRY_BYTES])),
        })
        .collect();
    Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: Body::Append {
            prev_index: LogIndex(i * 8),
            prev_term: Term(1),
            entries,
            commit: LogIndex(0),
        },
    }
}

/// Messages per second and payload MB per second from one endpoint to another.
async fn messages(certs: &std::path::Path, secs: Duration) -> (f64, f64) {
    let s1 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a1, a2) = (s1.local_addr().unwrap(), s2.local_addr().unwrap());
    let cfg = |id: u64, peer: u64, addr: SocketAddr, me: SocketAddr| {
        let mut c = QuicConfig::new(
            NodeId(id),
            me,
            BTreeMap::from([(NodeId(peer), addr)]),
            load_node_identity(certs, NodeId(id)).unwrap(),
        );
        c.replication_queue = WINDOW as usize * 2;
        c
    };
    let e1 = QuicEndpoint::with_socket(cfg(1, 2, a2, a1), s1).unwrap();
    let e2 = QuicEndpoint::with_socket(cfg(2, 1, a1, a2), s2).unwrap();
    let (tx, mut rx) = ha_core::node::Inbox::channel(WINDOW as usize * 2, 1 << 30);
    e2.serve_messages(tx);
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let counter = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            r.fetch_add(1, Ordering::Relaxed);
        }
    });
    let t = e1.transport();
    // Warm up: connect.
    t.send(append(0));
    while received.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = Instant::now();
    let base = received.load(Ordering::Relaxed);
    let mut sent = 0u64;
    while start.elapsed() < secs {
        if sent - (received.load(Ordering::Relaxed) - base) < WINDOW {
            t.send(append(sent + 1));
            sent += 1;
        } else {
            tokio::task::yield_now().await;
        }
    }
    let n = received.load(Ordering::Relaxed) - base;
    let el = start.elapsed().as_secs_f64();
    e1.close();
    e2.close();
    counter.abort();
    let bytes = n as f64 * 8.0 * ENTRY_BYTES as f64;
    (n as f64 / el, bytes / el / 1e6)
}

async fn leader_of(nodes: &[NodeHandle]) -> NodeHandle {
    loop {
        if let Some(l) = nodes.iter().find(|n| n.status().role == RoleKind::Leader) {
            return l.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn proposals_per_sec(leader: NodeHandle, secs: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (l, d) = (leader.clone(), done.clone());
            tokio::spawn(async move {
                let cmd = Bytes::from(vec![1u8; ENTRY_BYTES]);
                while start.elapsed() < secs {
                    if l.propose(cmd.clone()).await.is_ok() {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn opts(id: u64) -> NodeOptions {
    let mut o = NodeOptions::new(NodeId(id), (1..=3).map(NodeId));
    o.tick = Duration::from_millis(20);
    o.raft.rng_seed = id;
    o
}

async fn replicate_quic(certs: &std::path::Path, secs: Duration) -> f64 {
    let sockets: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: BTreeMap<NodeId, SocketAddr> = (1..=3)
        .map(|i| (NodeId(i), sockets[(i - 1) as usize].local_addr().unwrap()))
        .collect();
    let mut nodes = Vec::new();
    for (k, socket) in sockets.into_iter().enumerate() {
        let id = NodeId(k as u64 + 1);
        let peers = addrs
            .iter()
            .filter(|(p, _)| **p != id)
            .map(|(p, a)| (*p, *a))
            .collect();
        let quic = QuicConfig::new(
            id,
            addrs[&id],
            peers,
            load_node_identity(certs, id).unwrap(),
        );
        nodes.push(
            QuicNode::start_on::<StdFs>(
                opts(id.0),
                quic,
                Some(socket),
                InitialState::default(),
                NodeStorage::Memory(MemLogStore::new()),
                NoopApplier,
            )
            .unwrap(),
        );
    }
    let handles: Vec<NodeHandle> = nodes.iter().map(|n| n.handle().clone()).collect();
    let rate = proposals_per_sec(leader_of(&handles).await, secs).await;
    for n in &nodes {
        n.shutdown().await;
    }
    rate
}

async fn replicate_mem(secs: Duration) -> f64 {
    let net = MemNetwork::new();
    let handles: Vec<NodeHandle> = (1..=3)
        .map(|id| {
            let h = start_node::<StdFs>(
                opts(id),
                InitialState::default(),
                NodeStorage::Memory(MemLogStore::new()),
                Arc::new(net.transport(NodeId(id))) as Arc<dyn Transport>,
                NoopApplier,
            )
            .unwrap();
            net.register(NodeId(id), h.inbound());
            h
        })
        .collect();
    let rate = proposals_per_sec(leader_of(&handles).await, secs).await;
    for h in &handles {
        h.shutdown().await;
    }
    rate
}

fn main() {
    let support::Plan { secs, runs, .. } = support::plan(2.0, 0.1, RUNS);
    let certs = tempfile::tempdir().unwrap();
    create_cluster_certs(certs.path(), &[NodeId(1), NodeId(2), NodeId(3)]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let m: Vec<(f64, f64)> = {
            let mut v = Vec::new();
            for _ in 0..runs {
                v.push(messages(certs.path(), secs).await);
            }
            v
        };
        println!(
            "ha-quic on loopback, median of {runs} runs of {:.1} s",
            secs.as_secs_f64()
        );
        println!(
            "appends of 8 x {ENTRY_BYTES} B, node to node:   {:>10.0} messages/s  {:>7.1} MB/s payload",
            support::median(m.iter().map(|x| x.0).collect()),
            support::median(m.iter().map(|x| x.1).collect())
        );
        let mut q = Vec::new();
        let mut mem = Vec::new();
        for _ in 0..runs {
            q.push(replicate_quic(certs.path(), secs).await);
            mem.push(replicate_mem(secs).await);
        }
        let (q, mem) = (support::median(q), support::median(mem));
        println!("3-node replication, 64 proposers, in-memory logs:");
        println!("  over the in-memory transport              {mem:>10.0} commits/s");
        println!(
            "  over QUIC with mutual TLS                 {q:>10.0} commits/s  ({:.2}x of in-memory)",
            q / mem
        );
    });
}
