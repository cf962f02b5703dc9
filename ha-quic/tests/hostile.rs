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

// ---------------------------------------------------------------------------
// Issue 9: one request just under 16 MiB used to stop all writes.

/// The story: client and replication frames shared one 16 MiB cap, so a
/// request just under it was accepted into the log, the append carrying it
/// (bigger than the request) failed to encode, was dropped without a word,
/// and was resent forever: no write committed again. Now a request above
/// `max_request_bytes` is refused before it reaches the log, one at the cap
/// replicates, and writes go on.
#[test]
fn a_request_over_the_cap_is_refused_as_too_large_and_writes_go_on() {
    let cluster = start_cluster(3, |_| {});
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let client = cluster.client(leader.id()).await;
        let cap = QuicLimits::default().max_request_bytes;
        assert_eq!(cap, 1_572_864, "the default cap is etcd's");
        let applied_before = leader.status().applied_index;
        for len in [2 << 20, (16 << 20) - 64] {
            match client.request(&propose(len)).await.unwrap() {
                ClientResponse::Refused { message } => {
                    assert!(message.contains("too large"), "{message}")
                }
                other => panic!("a {len}-byte request was not refused: {other:?}"),
            }
        }
        assert_eq!(cluster.stat(leader.id(), |s| &s.requests_too_large), 2);
        // Nothing of either reached the log.
        assert!(cluster.procs.iter().all(|p| {
            p.applied
                .0
                .lock()
                .unwrap()
                .iter()
                .all(|(_, c)| c.len() < cap)
        }));
        // A request of exactly the cap is applied everywhere.
        let mut len = cap - 16;
        len += cap - (request_frame(&propose(len)).len() - 4);
        assert_eq!(request_frame(&propose(len)).len() - 4, cap);
        let index = match client.request(&propose(len)).await.unwrap() {
            ClientResponse::Applied { index, .. } => LogIndex(index),
            other => panic!("a request at the cap was not applied: {other:?}"),
        };
        assert!(index > applied_before);
        wait_until("every node applied the request at the cap", 20, || {
            cluster
                .procs
                .iter()
                .all(|p| p.node.handle().status().applied_index >= index)
        })
        .await;
        for p in &cluster.procs {
            let log = p.applied.0.lock().unwrap();
            assert!(log.iter().any(|(i, c)| *i == index.0 && c.len() == len));
        }
        // Writes go on, and nothing failed to encode on the way.
        cluster.still_commits(b"after the large requests").await;
        for id in cluster.addrs.keys() {
            assert_eq!(cluster.stat(*id, |s| &s.encode_failures), 0);
        }
    });
}

/// Two endpoints without nodes: 1 sends, 2 receives into `files` (if any).
struct Pair {
    certs: tempfile::TempDir,
    a: QuicEndpoint,
    b: QuicEndpoint,
    inbox: ha_core::node::InboxReceiver,
}

fn pair(files: Option<Arc<dyn SnapshotFiles>>, tweak: impl Fn(&mut QuicConfig)) -> Pair {
    let certs = tempfile::tempdir().unwrap();
    create_cluster_certs(certs.path(), &[NodeId(1), NodeId(2)]).unwrap();
    let (s1, s2) = (
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    let (a1, a2) = (s1.local_addr().unwrap(), s2.local_addr().unwrap());
    let cfg = |id: u64, me: SocketAddr, peer: u64, addr: SocketAddr| {
        let mut c = QuicConfig::new(
            NodeId(id),
            me,
            BTreeMap::from([(NodeId(peer), addr)]),
            load_node_identity(certs.path(), NodeId(id)).unwrap(),
        );
        tweak(&mut c);
        c
    };
    let a = QuicEndpoint::with_socket(cfg(1, a1, 2, a2), s1).unwrap();
    let b = QuicEndpoint::with_socket(cfg(2, a2, 1, a1), s2).unwrap();
    let (tx, inbox) = ha_core::node::Inbox::channel(64, 64 << 20);
    match files {
        Some(f) => b.serve_messages_and_snapshots(tx, f),
        None => b.serve_messages(tx),
    }
    Pair { certs, a, b, inbox }
}

fn append(from: u64, to: u64, payload_bytes: usize) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: Body::Append {
            prev_index: LogIndex(0),
            prev_term: Term(0),
            entries: vec![Entry {
                index: LogIndex(1),
                term: Term(1),
                payload: EntryPayload::Command(Bytes::from(vec![7u8; payload_bytes])),
            }],
            commit: LogIndex(0),
        },
    }
}

/// The story: `frame::encode` failures on the send path were dropped with
/// no trace, which is how issue 9 went unnoticed. Now each is counted and
/// logged, and the stream carries on with the next message.
#[test]
fn a_message_too_large_to_send_is_counted_and_the_stream_carries_on() {
    runtime(2).block_on(async {
        let mut p = pair(None, |_| {});
        p.a.transport().send(append(1, 2, 17 << 20));
        p.a.transport().send(append(1, 2, 10));
        let got = tokio::time::timeout(Duration::from_secs(10), p.inbox.recv())
            .await
            .expect("the next message arrives")
            .unwrap();
        assert_eq!(got, append(1, 2, 10));
        let stats = p.a.transport();
        assert_eq!(stats.stats().encode_failures.load(Ordering::Relaxed), 1);
        assert_eq!(stats.stats().sent.load(Ordering::Relaxed), 1);
        p.a.close();
        p.b.close();
    });
}

/// The next message in `inbox`, within 10 s.
async fn next_message(inbox: &mut ha_core::node::InboxReceiver) -> Message {
    tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .expect("a message arrives")
        .expect("the inbox is open")
}

/// `m` as a frame on a peer stream.
fn peer_frame(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    frame::encode(m, &mut b).unwrap();
    b
}

/// A stream of `class` on `conn` from node 1 to node 2: its hello and
/// `first`, written at once.
async fn peer_stream_with(
    conn: &quinn::Connection,
    id: &TlsIdentity,
    class: StreamClass,
    first: &Message,
) -> quinn::SendStream {
    let mut s = conn.open_uni().await.unwrap();
    let mut buf = hello(id, 1, 2, class);
    buf.extend(peer_frame(first));
    s.write_all(&buf).await.unwrap();
    s
}

/// The story: a frame had `peer_frame_timeout` (10 s) to arrive whatever
/// its size, so a large append on a slow link was cut off as a stall again
/// and again. Now each byte received earns time at 1 MiB/s: a 2 MiB frame
/// arriving steadily over four times the base deadline is delivered.
#[test]
fn a_large_frame_arriving_steadily_is_not_cut_off_as_a_stall() {
    runtime(2).block_on(async {
        let mut p = pair(None, |q| {
            q.limits.peer_frame_timeout = Duration::from_millis(250);
        });
        let n1 = load_node_identity(p.certs.path(), NodeId(1)).unwrap();
        let (_ep, conn) = raw_conn(p.b.local_addr(), "node-2", &n1, ALPN_PEER).await;
        let first = append(1, 2, 10);
        let mut s = peer_stream_with(&conn, &n1, StreamClass::Replication, &first).await;
        assert_eq!(next_message(&mut p.inbox).await, first);
        let big = append(1, 2, 2 << 20);
        let frame = peer_frame(&big);
        // 2 MiB in 16 pieces, one every 60 ms: about 1 s in all, at about
        // 2 MiB/s.
        for piece in frame.chunks(frame.len().div_ceil(16)) {
            s.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert_eq!(next_message(&mut p.inbox).await, big);
        assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
        p.a.close();
        p.b.close();
    });
}

/// The story: a sender backed off only when it could not connect. A peer
/// that accepted the connection and then refused the stream (here: it runs
/// another schema) was dialled again for every queued message, a TLS
/// handshake each. Now a connection that breaks at once is a failure like
/// any other, and the sender backs off.
#[test]
fn a_peer_that_accepts_and_then_refuses_is_dialled_with_backoff() {
    runtime(2).block_on(async {
        let p = pair(None, |q| {
            if q.id == NodeId(2) {
                q.schema ^= 1;
            }
        });
        // A message every 5 ms for 1.5 s: 300 chances to dial.
        for _ in 0..300 {
            p.a.transport().send(append(1, 2, 10));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused =
            p.b.transport()
                .stats()
                .protocol_errors
                .load(Ordering::Relaxed);
        // Backoff 20, 40, 80, ... up to 1000 ms (with up to half again of
        // jitter): about 8 attempts fit in 1.5 s.
        assert!(refused >= 1, "the stream was refused at least once");
        assert!(refused <= 20, "{refused} streams refused: no backoff");
        p.a.close();
        p.b.close();
    });
}

/// The story: a slot of `max_connections` was taken before the handshake,
/// so anyone able to send UDP could hold them all with handshakes that
/// never finish. Now handshakes in progress are capped on their own
/// (`max_handshakes`, plus a reserve for peers' addresses), a sender must
/// prove its address once half are taken (a QUIC Retry, transparent to a
/// real client), and a burst beyond the cap is refused while the node goes
/// on serving.
#[test]
fn handshakes_in_progress_are_capped_and_the_node_keeps_serving() {
    runtime(2).block_on(async {
        let p = pair(None, |q| q.limits.max_handshakes = 2);
        let identity = load_client_identity(p.certs.path()).unwrap();
        let addr = p.b.local_addr();
        // 64 connections at once, each from an endpoint of its own.
        let attempts: Vec<_> = (0..64)
            .map(|_| {
                let identity = identity.clone();
                tokio::spawn(async move {
                    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
                    ep.set_default_client_config(
                        tls::client_config(&identity, ALPN_CLIENT, &QuicOptions::default())
                            .unwrap(),
                    );
                    let conn = ep.connect(addr, "node-2").unwrap().await;
                    (ep, conn.is_ok())
                })
            })
            .collect();
        let mut done = Vec::new();
        for a in attempts {
            done.push(a.await.unwrap());
        }
        let stats = p.b.transport();
        let (retries, refused) = (
            stats.stats().retries_sent.load(Ordering::Relaxed),
            stats.stats().refused_connections.load(Ordering::Relaxed),
        );
        assert!(retries > 0, "no Retry under a burst of 64 handshakes");
        assert!(
            refused > 0,
            "64 handshakes at once all admitted with a cap of 2 + 16"
        );
        assert!(done.iter().any(|(_, ok)| *ok), "some connected");
        drop(done);
        // The burst is over: a new client's handshake completes at once
        // (`raw_conn` fails the test otherwise). This endpoint runs no node,
        // so what happens after the handshake is not this test's subject.
        let (_ep, _conn) = raw_conn(addr, "node-2", &identity, ALPN_CLIENT).await;
    });
}

/// Waits until `p`'s receiver has dropped `n` messages or streams as
/// superseded.
async fn wait_superseded(p: &Pair, n: u64) {
    wait_until("messages are dropped as superseded", 10, || {
        p.b.transport()
            .stats()
            .dropped_superseded
            .load(Ordering::Relaxed)
            == n
    })
    .await;
}

/// The story: a follower acknowledges an append, crashes, restarts and
/// says it is repairing; its old connection, kept alive by a slow network,
/// could still deliver the old acknowledgement after that, and the leader
/// would count an entry the follower lost. Now a newer stream of the same
/// peer and class supersedes the older one: nothing more from the older
/// one reaches the node (counted), while the newer one goes on.
#[test]
fn a_newer_stream_of_a_peer_supersedes_its_older_one() {
    runtime(2).block_on(async {
        let mut p = pair(None, |_| {});
        let id = load_node_identity(p.certs.path(), NodeId(1)).unwrap();
        let addr = p.b.local_addr();
        let class = StreamClass::Replication;
        // The old process's stream.
        let (_ep1, old) = raw_conn(addr, "node-2", &id, ALPN_PEER).await;
        let mut old_s = peer_stream_with(&old, &id, class, &append(1, 2, 1)).await;
        assert_eq!(next_message(&mut p.inbox).await, append(1, 2, 1));
        // The restarted process's stream, on a new connection.
        let (_ep2, new) = raw_conn(addr, "node-2", &id, ALPN_PEER).await;
        let mut new_s = peer_stream_with(&new, &id, class, &append(1, 2, 2)).await;
        assert_eq!(next_message(&mut p.inbox).await, append(1, 2, 2));
        // A late message on the old stream is dropped and counted...
        old_s
            .write_all(&peer_frame(&append(1, 2, 3)))
            .await
            .unwrap();
        wait_superseded(&p, 1).await;
        // ...and the new stream still delivers, next after its first.
        new_s
            .write_all(&peer_frame(&append(1, 2, 4)))
            .await
            .unwrap();
        assert_eq!(next_message(&mut p.inbox).await, append(1, 2, 4));
        assert!(p.inbox.try_recv().is_none(), "nothing else arrived");
        p.a.close();
        p.b.close();
    });
}

/// The order is the sender's, not the order hellos arrive in: a stream on
/// a connection opened before a newer one is refused even if its hello
/// (delayed, say) comes after the newer one's.
#[test]
fn a_late_hello_on_an_older_connection_is_refused() {
    runtime(2).block_on(async {
        let mut p = pair(None, |_| {});
        let id = load_node_identity(p.certs.path(), NodeId(1)).unwrap();
        let addr = p.b.local_addr();
        let class = StreamClass::Control;
        let (_ep1, older) = raw_conn(addr, "node-2", &id, ALPN_PEER).await;
        let (_ep2, newer) = raw_conn(addr, "node-2", &id, ALPN_PEER).await;
        let mut new_s = peer_stream_with(&newer, &id, class, &append(1, 2, 1)).await;
        assert_eq!(next_message(&mut p.inbox).await, append(1, 2, 1));
        // The older connection's hello and message arrive only now.
        let _old_s = peer_stream_with(&older, &id, class, &append(1, 2, 2)).await;
        wait_superseded(&p, 1).await;
        new_s
            .write_all(&peer_frame(&append(1, 2, 3)))
            .await
            .unwrap();
        assert_eq!(next_message(&mut p.inbox).await, append(1, 2, 3));
        assert!(
            p.inbox.try_recv().is_none(),
            "nothing from the older stream"
        );
        p.a.close();
        p.b.close();
    });
}

// ---------------------------------------------------------------------------
// Issue 11: raw proposals on typed nodes.

/// The story: `ClientRequest::Propose` let any client put raw bytes in the
/// log of a typed service, a forged leader timestamp included. A node with
/// a schema refuses it now; raw (schema 0) nodes still take it.
#[test]
fn a_typed_node_refuses_raw_proposals() {
    let cluster = start_cluster(3, |q| q.schema = 0x7e57_5c4e_3a00_0001);
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let client = cluster.client(leader.id()).await;
        let before = leader.status().last_index;
        match client
            .request(&ClientRequest::Propose(Bytes::from_static(b"forged")))
            .await
            .unwrap()
        {
            ClientResponse::Refused { message } => {
                assert!(message.contains("raw proposals are refused"), "{message}")
            }
            other => panic!("a typed node took a raw proposal: {other:?}"),
        }
        assert_eq!(cluster.stat(leader.id(), |s| &s.requests_refused), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            leader.status().last_index,
            before,
            "nothing reached the log"
        );
        assert!(cluster.procs.iter().all(|p| {
            p.applied
                .0
                .lock()
                .unwrap()
                .iter()
                .all(|(_, c)| c != "forged")
        }));
    });
}

// ---------------------------------------------------------------------------
// Issue 12: resource limits against authenticated peers and clients.

/// The story: a frame's claimed length was allocated at once, and a frame
/// that never finished was waited for forever, so a peer could pin 16 MiB
/// per stream with 14 bytes. Now the buffer grows with the bytes that came,
/// paid from a budget, and a frame that has started must finish within
/// `peer_frame_timeout` or its connection is closed.
#[test]
fn a_peer_claiming_16_mib_and_sending_10_bytes_holds_almost_nothing_and_is_cut_off() {
    let cluster = start_cluster(3, |q| q.limits.peer_frame_timeout = Duration::from_secs(1));
    runtime(1).block_on(async {
        cluster.leader().await;
        let n1 = NodeId(1);
        let timeouts_before = cluster.stat(n1, |s| &s.frame_timeouts);
        let id2 = load_node_identity(cluster.certs.path(), NodeId(2)).unwrap();
        let (_ep, conn) = raw_conn(cluster.addrs[&n1], "node-1", &id2, ALPN_PEER).await;
        let mut s = conn.open_uni().await.unwrap();
        let mut buf = hello(&id2, 2, 1, StreamClass::Replication);
        buf.extend_from_slice(&(16u32 << 20).to_le_bytes());
        buf.extend_from_slice(&[1; 10]);
        s.write_all(&buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = cluster.transport(n1).peer_frame_bytes_held();
        assert!(held < 1 << 20, "{held} bytes held for a 10-byte start");
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("the node closes the connection after the deadline");
        assert!(
            reason.to_string().contains("did not arrive in time"),
            "{reason}"
        );
        assert!(cluster.stat(n1, |s| &s.frame_timeouts) > timeouts_before);
        cluster.still_commits(b"after the stalled peer frame").await;
    });
}

/// The story: all peers paid their unfinished frames from one budget, so one
/// faulty peer holding it made every other peer's appends fail. Now each
/// peer has its own: node 2 holding nearly all of its budget leaves node 3
/// a whole one.
#[test]
fn one_peer_holding_its_frame_budget_does_not_take_another_peers() {
    let cluster = start_cluster(3, |q| {
        q.limits.max_replication_frame_bytes = 4 << 20;
        q.limits.peer_budget_bytes = (8 << 20) + (512 << 10);
        q.limits.peer_frame_timeout = Duration::from_secs(30);
    });
    runtime(1).block_on(async {
        cluster.leader().await;
        let n1 = NodeId(1);
        // A frame start of `sent` bytes claiming `claim`, as node `from`.
        async fn stall(
            cluster: &Cluster,
            from: u64,
            claim: u32,
            sent: usize,
        ) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream) {
            let id = load_node_identity(cluster.certs.path(), NodeId(from)).unwrap();
            let (ep, conn) = raw_conn(cluster.addrs[&NodeId(1)], "node-1", &id, ALPN_PEER).await;
            let mut s = conn.open_uni().await.unwrap();
            let mut buf = hello(&id, from, 1, StreamClass::Replication);
            buf.extend_from_slice(&claim.to_le_bytes());
            buf.extend_from_slice(&vec![1; sent]);
            s.write_all(&buf).await.unwrap();
            (ep, conn, s)
        }
        // Node 2 holds 7.5 MB of its 8.5 MiB; node 3 then 3 MB more, which a
        // shared budget could not pay.
        let _two = stall(&cluster, 2, 4 << 20, 3_750_000).await;
        let _two_more = stall(&cluster, 2, 4 << 20, 3_750_000).await;
        wait_until("node 2's frames are held", 10, || {
            cluster.transport(n1).peer_frame_bytes_held() >= 7_500_000
        })
        .await;
        let (_ep, three, _s) = stall(&cluster, 3, 4 << 20, 3_000_000).await;
        wait_until("node 3's frame is held too", 10, || {
            cluster.transport(n1).peer_frame_bytes_held() >= 10_500_000
        })
        .await;
        // Together more than one budget: each peer paid from its own. (The
        // real nodes' own streams, which share those budgets, may be cut
        // off meanwhile; that is each peer's own business.)
        assert!(three.close_reason().is_none(), "{:?}", three.close_reason());
    });
}

/// The same for a client: a request that starts and stalls is cut off after
/// `client_request_timeout`, holding almost nothing meanwhile, and a request
/// claiming more than `max_request_bytes` is refused on its length alone,
/// before its body arrives.
#[test]
fn a_client_claiming_a_large_request_and_stalling_holds_almost_nothing_and_is_cut_off() {
    let cluster = start_cluster(3, |q| {
        q.limits.client_request_timeout = Duration::from_secs(1);
    });
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let (_ep, conn) = raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
        // Claims 1 MiB (under the cap), sends 10 bytes, and stalls.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut buf = (1u32 << 20).to_le_bytes().to_vec();
        buf.extend_from_slice(&[1; 10]);
        send.write_all(&buf).await.unwrap();
        // Claims 16 MiB, sends 10 bytes, and waits for an answer.
        let (mut send2, mut recv2) = conn.open_bi().await.unwrap();
        let mut buf = (16u32 << 20).to_le_bytes().to_vec();
        buf.extend_from_slice(&[1; 10]);
        send2.write_all(&buf).await.unwrap();
        let answer: ClientResponse = tokio::time::timeout(
            Duration::from_secs(5),
            frame::read_frame(&mut recv2, 1 << 20),
        )
        .await
        .expect("refused at once")
        .unwrap()
        .unwrap();
        assert!(
            matches!(&answer, ClientResponse::Refused { message } if message.contains("too large")),
            "{answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let held = cluster.transport(id).client_frame_bytes_held();
        assert!(held < 256 << 10, "{held} bytes held for a 10-byte start");
        // After the deadline the stalled stream is closed.
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), recv.read(&mut b))
            .await
            .expect("the stalled request's stream is closed after the deadline");
        assert!(r.is_err(), "the stalled request got an answer: {r:?}");
        assert_eq!(cluster.stat(id, |s| &s.frame_timeouts), 1);
        assert_eq!(cluster.transport(id).client_frame_bytes_held(), 0);
        // The connection itself still serves.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&request_frame(&ClientRequest::Status))
            .await
            .unwrap();
        send.finish().unwrap();
        let r: Option<ClientResponse> = frame::read_frame(&mut recv, 1 << 20).await.unwrap();
        assert!(matches!(r, Some(ClientResponse::Status(_))), "{r:?}");
        cluster.still_commits(b"after the stalled client").await;
    });
}

/// Requests that are started, but never finished, hold budget: once a
/// connection asks for more than is left, it is closed (and counted), and
/// the budget comes back for everybody else.
#[test]
fn a_client_exhausting_the_frame_budget_is_closed_and_others_are_served() {
    let cluster = start_cluster(3, |q| {
        q.limits.client_budget_bytes = 2 << 20;
        q.limits.client_request_timeout = Duration::from_secs(30);
    });
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let (_ep, conn) = raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let mut buf = (1_400_000u32).to_le_bytes().to_vec();
            buf.extend_from_slice(&vec![1; 900_000]);
            let _ = send.write_all(&buf).await;
            streams.push((send, recv));
        }
        let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the node closes the connection that exhausted the budget");
        assert!(reason.to_string().contains("no memory budget"), "{reason}");
        assert_eq!(cluster.stat(id, |s| &s.budget_exhausted), 1);
        wait_until("the budget is returned", 5, || {
            cluster.transport(id).client_frame_bytes_held() == 0
        })
        .await;
        let client = cluster.client(id).await;
        let r = client.request(&propose(1000)).await.unwrap();
        assert!(matches!(r, ClientResponse::Applied { .. }), "{r:?}");
    });
}

/// The story: requests waiting for the node outlived their connection, so
/// a client could leave any number behind, each holding its bytes. Now at
/// most `max_client_requests` wait on a node (and `client_pending_bytes` of
/// them); one more is answered busy (certainly not applied, nothing in the
/// log), the client backs off and retries the same leader, and once the
/// waiting ones are answered, requests are served again. Status requests,
/// answered at once, are always served.
#[test]
fn requests_beyond_the_waiting_cap_are_answered_busy_and_not_applied() {
    let cluster = start_cluster_with(
        3,
        |q| {
            q.limits.max_client_requests = 2;
            q.limits.client_request_timeout = Duration::from_secs(3);
        },
        // A leader that loses its followers stays leader, so writes wait.
        |o| o.raft.check_quorum = false,
    );
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        // Two writes that cannot commit: both followers are stopped.
        for p in &cluster.procs {
            if p.node.handle().id() != id {
                p.node.handle().shutdown().await;
            }
        }
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let proposed = leader.metrics().proposals;
        let mut waiting = Vec::new();
        for k in 0..2u8 {
            let (ep, conn) =
                raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&request_frame(&propose(10 + usize::from(k))))
                .await
                .unwrap();
            send.finish().unwrap();
            // The connection goes; the request stays.
            waiting.push((ep, recv));
            drop(conn);
        }
        wait_until("both writes wait for their commit", 5, || {
            leader.metrics().proposals >= proposed + 2
        })
        .await;
        let client = cluster.client(id).await;
        let before = leader.status().last_index;
        let r = client.request(&propose(20)).await.unwrap();
        assert!(
            matches!(&r, ClientResponse::Busy { message } if message.contains("max_client_requests")),
            "{r:?}"
        );
        assert_eq!(cluster.stat(id, |s| &s.requests_busy), 1);
        assert_eq!(leader.status().last_index, before, "a busy write reached the log");
        let r = client.request(&ClientRequest::Status).await.unwrap();
        assert!(matches!(r, ClientResponse::Status(_)), "{r:?}");
        // The waiting writes are answered (outcome unknown) at the
        // deadline, which frees their slots.
        wait_until("the waiting writes time out", 10, || {
            cluster.stat(id, |s| &s.answer_timeouts) >= 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = client.request(&ClientRequest::Read).await.unwrap();
        assert!(!matches!(r, ClientResponse::Busy { .. }), "{r:?}");
    });
}

/// The story: a connection could have 1024 requests open at once. Now a
/// client connection has at most `max_client_streams` and a peer connection
/// `max_peer_streams`: QUIC itself refuses more, the requests that never
/// finish are closed after the deadline, and other clients are served all
/// along.
#[test]
fn more_streams_than_allowed_are_refused_while_a_legitimate_client_is_served() {
    let cluster = start_cluster(3, |q| {
        q.options.max_client_streams = 8;
        q.limits.client_request_timeout = Duration::from_secs(2);
        q.limits.peer_frame_timeout = Duration::from_secs(2);
    });
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let (_ep, conn) = raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
        let mut held = Vec::new();
        for k in 0..8 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            // Half send a piece of a request, half nothing (the stream is
            // opened by a later stream's bytes).
            if k % 2 == 1 {
                send.write_all(&[9, 0]).await.unwrap();
            }
            held.push((send, recv));
        }
        let ninth = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
        assert!(
            ninth.is_err(),
            "a ninth concurrent request stream was allowed"
        );
        // A legitimate client, meanwhile.
        let client = cluster.client(id).await;
        assert!(matches!(
            client.request(&ClientRequest::Status).await.unwrap(),
            ClientResponse::Status(_)
        ));
        assert!(matches!(
            client.request(&propose(100)).await.unwrap(),
            ClientResponse::Applied { .. }
        ));
        // A peer connection may open only a few streams.
        let n2 = load_node_identity(cluster.certs.path(), NodeId(2)).unwrap();
        let target = if id == NodeId(2) { NodeId(1) } else { id };
        let (_ep2, pconn) = raw_conn(
            cluster.addrs[&target],
            &format!("node-{}", target.0),
            &n2,
            ALPN_PEER,
        )
        .await;
        let mut peer_streams = Vec::new();
        for _ in 0..4 {
            let mut s = pconn.open_uni().await.unwrap();
            s.write_all(&[1]).await.unwrap();
            peer_streams.push(s);
        }
        let fifth = tokio::time::timeout(Duration::from_millis(500), pconn.open_uni()).await;
        assert!(
            fifth.is_err(),
            "a fifth stream on a peer connection was allowed"
        );
        drop(pconn);
        // The idle requests are closed after their deadline (counted), which
        // frees room for new ones once the client's QUIC stack answers the
        // node's STOP_SENDING (quinn does when the stream handles go; until
        // then a client only blocks its own connection).
        wait_until("the idle requests time out", 10, || {
            cluster.stat(id, |s| &s.frame_timeouts) >= 8
        })
        .await;
        drop(held);
        let opened = tokio::time::timeout(Duration::from_secs(5), conn.open_bi())
            .await
            .expect("room for a new request after the deadline")
            .unwrap();
        drop(opened);
        cluster.still_commits(b"after the stream flood").await;
    });
}

/// The story: nothing limited connections. Now a node takes at most
/// `max_client_connections` clients and `max_connections_per_peer`
/// connections of each peer; more are closed right after the handshake,
/// counted, and the cluster (whose peers have slots of their own) serves on.
#[test]
fn idle_connections_beyond_the_caps_are_refused() {
    let cluster = start_cluster(3, |q| {
        q.limits.max_client_connections = 4;
        q.limits.max_connections = 64;
    });
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        let legit = cluster.client(id).await;
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let mut conns = Vec::new();
        for _ in 0..10 {
            conns.push(raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let closed: Vec<String> = conns
            .iter()
            .filter_map(|(_, c)| c.close_reason().map(|r| r.to_string()))
            .collect();
        assert_eq!(closed.len(), 7, "{closed:?}");
        assert!(
            closed
                .iter()
                .all(|r| r.contains("too many client connections"))
        );
        assert_eq!(cluster.stat(id, |s| &s.refused_connections), 7);
        assert!(matches!(
            legit.request(&ClientRequest::Status).await.unwrap(),
            ClientResponse::Status(_)
        ));
        // A peer's connections beyond its own cap are refused too, and do
        // not take the real peer's place.
        let other = cluster.addrs.keys().copied().find(|n| *n != id).unwrap();
        let peer_id = load_node_identity(cluster.certs.path(), other).unwrap();
        let mut pconns = Vec::new();
        for _ in 0..12 {
            pconns.push(
                raw_conn(
                    cluster.addrs[&id],
                    &format!("node-{}", id.0),
                    &peer_id,
                    ALPN_PEER,
                )
                .await,
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let refused = pconns
            .iter()
            .filter_map(|(_, c)| c.close_reason())
            .filter(|r| {
                r.to_string()
                    .contains("too many connections from this peer")
            })
            .count();
        assert!(
            refused >= 4,
            "only {refused} of 12 extra peer connections refused"
        );
        assert!(cluster.stat(id, |s| &s.refused_connections) >= 7 + 4);
        drop(pconns);
        cluster.still_commits(b"after the connection flood").await;
    });
}

// ---------------------------------------------------------------------------
// Issues 6 and 16: snapshot transfers.

/// A snapshot directory that refuses to begin or to finish a received
/// snapshot, or is slow to finish one; otherwise a real directory.
struct Faulty {
    store: SnapshotStore<StdFs>,
    fail_begin: bool,
    fail_finish: bool,
    slow_finish: Duration,
}

struct FaultyIncoming {
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
    fn contains(&self, index: LogIndex, term: Term) -> Result<bool, SnapshotError> {
        SnapshotFiles::contains(&self.store, index, term)
    }
}

fn faulty(dir: &Path, fail_begin: bool, fail_finish: bool, slow_finish: Duration) -> Arc<Faulty> {
    Arc::new(Faulty {
        store: SnapshotStore::open(StdFs, dir).unwrap(),
        fail_begin,
        fail_finish,
        slow_finish,
    })
}

/// A snapshot of `bytes` state bytes at (1000, 3), in a directory of its own.
fn snapshot_source(dir: &Path, bytes: usize) -> SnapshotStore<StdFs> {
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

fn install_message() -> Message {
    Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body: Body::InstallSnapshot {
            index: LogIndex(1000),
            term: Term(3),
        },
    }
}

/// Sends the source's newest snapshot from `p.a` to `p.b`; whether the
/// sender reported success.
async fn send_snapshot(p: &Pair, source: &SnapshotStore<StdFs>) -> bool {
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

fn files_in(dir: &Path) -> Vec<String> {
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
async fn raw_snapshot_stream(
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

async fn verdict(recv: &mut quinn::RecvStream, secs: u64) -> SnapshotVerdict {
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
