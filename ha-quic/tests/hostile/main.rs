//! Hostile peers and hostile clients: raw QUIC with mutual TLS, using
//! certificates from the cluster CA, doing what honest nodes and clients
//! never do (oversized requests, frames that never finish, floods of
//! streams and connections, snapshots that lie or stall), while the
//! cluster must keep serving with nothing lost, and every refusal counted.
//!
//! Real clusters on 127.0.0.1 with ports from the OS, each node on a tokio
//! runtime of its own (as in `cluster.rs`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::node::{
    IncomingSnapshot, NodeHandle, NodeOptions, NodeStorage, OutgoingSnapshot, SnapshotFiles,
};
use ha_core::raft::Membership;
use ha_core::raft::{Body, InitialState, Message, RoleKind};
use ha_core::sm::Applier;
use ha_core::storage::{MemLogStore, SnapshotError, SnapshotMeta, SnapshotStore, StdFs};
use ha_core::transport::Transport;
use ha_core::types::{Entry, EntryPayload, LogIndex, NodeId, Term};
use ha_quic::certs::{TlsIdentity, create_cluster_certs, load_client_identity, load_node_identity};
use ha_quic::client::{ClientRequest, ClientResponse, QuicClient};
use ha_quic::frame;
use ha_quic::tls::{self, ALPN_CLIENT, ALPN_PEER, QuicOptions};
use ha_quic::transport::{
    PeerHello, QuicConfig, QuicEndpoint, QuicLimits, SnapshotHeader, SnapshotVerdict, StreamClass,
    TransportStats,
};
use ha_quic::{QuicNode, QuicTransport};

/// Records every command it applies, in order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(u64, Bytes)>>>);

impl Applier for Recorder {
    fn apply(&mut self, index: LogIndex, _: Term, command: &Bytes) -> Bytes {
        self.0.lock().unwrap().push((index.0, command.clone()));
        Bytes::from(index.0.to_le_bytes().to_vec())
    }
    fn query(&self, _: &Bytes) -> Result<Bytes, ha_core::sm::StateError> {
        Ok(Bytes::new())
    }
    fn snapshot(&self) -> Result<Vec<u8>, ha_core::sm::StateError> {
        Err(ha_core::sm::StateError::Encode(
            "the recorder keeps no snapshots".into(),
        ))
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), ha_core::sm::StateError> {
        Err(ha_core::sm::StateError::Encode(
            "the recorder keeps no snapshots".into(),
        ))
    }
}

struct Proc {
    rt: Option<tokio::runtime::Runtime>,
    node: QuicNode,
    applied: Recorder,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Cluster {
    procs: Vec<Proc>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    certs: tempfile::TempDir,
}

/// Starts `n` nodes; `tweak` adjusts each node's endpoint settings.
fn start_cluster(n: u64, tweak: impl Fn(&mut QuicConfig)) -> Cluster {
    start_cluster_with(n, tweak, |_| {})
}

/// Like `start_cluster`; `tweak_node` adjusts each node's settings.
fn start_cluster_with(
    n: u64,
    tweak: impl Fn(&mut QuicConfig),
    tweak_node: impl Fn(&mut NodeOptions),
) -> Cluster {
    let certs = tempfile::tempdir().unwrap();
    let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
    create_cluster_certs(certs.path(), &ids).unwrap();
    let sockets: Vec<UdpSocket> = ids
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: BTreeMap<NodeId, SocketAddr> = ids
        .iter()
        .zip(&sockets)
        .map(|(id, s)| (*id, s.local_addr().unwrap()))
        .collect();
    let mut procs = Vec::new();
    for (id, socket) in ids.iter().zip(sockets) {
        let rt = runtime(1);
        let identity = load_node_identity(certs.path(), *id).unwrap();
        let peers = addrs
            .iter()
            .filter(|(p, _)| *p != id)
            .map(|(p, a)| (*p, *a))
            .collect();
        let mut quic = QuicConfig::new(*id, addrs[id], peers, identity);
        tweak(&mut quic);
        let mut opts = NodeOptions::new(*id, ids.iter().copied());
        opts.tick = Duration::from_millis(20);
        tweak_node(&mut opts);
        let applied = Recorder::default();
        let node = {
            let _guard = rt.enter();
            QuicNode::start_on(
                opts,
                quic,
                Some(socket),
                InitialState::default(),
                NodeStorage::<StdFs>::Memory(MemLogStore::new()),
                applied.clone(),
            )
            .unwrap()
        };
        procs.push(Proc {
            rt: Some(rt),
            node,
            applied,
        });
    }
    Cluster {
        procs,
        addrs,
        certs,
    }
}

impl Cluster {
    fn proc(&self, id: NodeId) -> &Proc {
        &self.procs[(id.0 - 1) as usize]
    }

    fn transport(&self, id: NodeId) -> QuicTransport {
        self.proc(id).node.transport()
    }

    /// A counter of node `id`'s endpoint.
    fn stat(&self, id: NodeId, f: impl Fn(&TransportStats) -> &AtomicU64) -> u64 {
        f(self.transport(id).stats()).load(Ordering::Relaxed)
    }

    async fn leader(&self) -> NodeHandle {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let found = self
                .procs
                .iter()
                .map(|p| p.node.handle().clone())
                .filter(|h| h.status().role == RoleKind::Leader)
                .max_by_key(|h| h.status().term);
            if let Some(h) = found {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no leader within 10 s");
    }

    /// A well-behaved client of node `id`.
    async fn client(&self, id: NodeId) -> QuicClient {
        let identity = load_client_identity(self.certs.path()).unwrap();
        QuicClient::connect(self.addrs[&id], "localhost", &identity)
            .await
            .unwrap()
    }

    /// The cluster still commits: a write through the leader is applied by
    /// every node.
    async fn still_commits(&self, what: &'static [u8]) {
        let leader = self.leader().await;
        let (index, _) = leader
            .propose(Bytes::from_static(what))
            .await
            .expect("commit");
        wait_until("every node applied the write", 10, || {
            self.procs
                .iter()
                .all(|p| p.node.handle().status().applied_index >= index)
        })
        .await;
    }
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw connection speaking `alpn` with `identity`; the endpoint must live
/// as long as the connection.
async fn raw_conn(
    addr: SocketAddr,
    server_name: &str,
    identity: &TlsIdentity,
    alpn: &[u8],
) -> (quinn::Endpoint, quinn::Connection) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        tls::client_config(identity, alpn, &QuicOptions::default()).unwrap(),
    );
    let conn = ep.connect(addr, server_name).unwrap().await.unwrap();
    (ep, conn)
}

fn hello(identity: &TlsIdentity, from: u64, to: u64, class: StreamClass) -> Vec<u8> {
    let mut buf = Vec::new();
    let h = PeerHello {
        cluster_id: identity.cluster_id(),
        from: NodeId(from),
        to: NodeId(to),
        class,
        schema: 0,
    };
    frame::encode(&h, &mut buf).unwrap();
    buf
}

/// The frame of `req`, as a client sends it.
fn request_frame(req: &ClientRequest) -> Vec<u8> {
    let mut buf = Vec::new();
    frame::encode(req, &mut buf).unwrap();
    buf
}

/// `Propose` of `len` bytes.
fn propose(len: usize) -> ClientRequest {
    ClientRequest::Propose(Bytes::from(vec![0x5a; len]))
}

mod limits;
mod snapshots;
mod streams;
use streams::*;
