//! The node's QUIC endpoint: Raft messages to and from peers, and client
//! requests, on one UDP socket.
//!
//! Owns: the endpoint, one sender task per (peer, stream class), and the
//! accept loop that checks who is talking before anything they say reaches
//! the core.
//!
//! Peer traffic (ALPN `ha-raft/1`). Each node dials each peer lazily (on the
//! first message for it) and keeps two connections to it, each carrying one
//! unidirectional stream of frames:
//! - **control**: votes, pre-votes, heartbeats and every response: small,
//!   latency-critical;
//! - **replication**: appends, which can be large.
//!
//! Separate connections, not just separate streams, so bulk appends cannot
//! use up the connection-wide flow-control window that heartbeats need: a
//! leader under heavy write load keeps its followers. A stream opens with a
//! [`PeerHello`] naming the sender, the receiver, the cluster and the class.
//!
//! Invariants:
//! 1. A peer stream is accepted only if the dialer's certificate (verified
//!    against the cluster CA by the handshake) names `node-<from>` for the
//!    `from` its hello claims, `to` is this node, and the cluster id matches.
//!    Every message on it must then carry that same `from` and `to`.
//! 2. A malformed, truncated, oversized or unexpected frame closes that
//!    connection and is logged once with the peer's identity; the node
//!    keeps running.
//! 3. Send queues are bounded (`control_queue`, `replication_queue`);
//!    `send` drops when one is full, so a slow or dead follower cannot make
//!    the leader's memory grow. Raft resends what matters.
//! 4. Reconnects back off exponentially from 20 ms to 1 s, with jitter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ha_core::node::{NodeError, NodeHandle};
use ha_core::raft::rng::SplitMix64;
use ha_core::raft::{Body, Message};
use ha_core::transport::Transport;
use ha_core::types::NodeId;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::certs::{TlsIdentity, node_server_name};
use crate::client::{ClientRequest, ClientResponse, StatusView};
use crate::frame::{self, FrameError, MAX_CONTROL_FRAME_BYTES, MAX_FRAME_BYTES};
use crate::tls::{self, ALPN_CLIENT, ALPN_PEER, QuicOptions};
use ha_core::protocol::{Consistency, LogCommand, LogOp};

/// Application error codes used when closing a connection.
pub mod codes {
    /// The peer broke the protocol (bad frame, bad identity).
    pub const PROTOCOL: u32 = 1;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 2;
}

/// The two classes of peer traffic (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamClass {
    /// Votes, heartbeats, responses.
    Control,
    /// Appends.
    Replication,
    /// One snapshot file: a [`SnapshotHeader`] frame, then its raw bytes.
    Snapshot,
}

/// The frame that opens a snapshot stream, after the hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Last index the snapshot covers.
    pub index: ha_core::types::LogIndex,
    /// Its term.
    pub term: ha_core::types::Term,
    /// The sender's term as leader.
    pub leader_term: ha_core::types::Term,
    /// Bytes of the file that follow.
    pub len: u64,
}

/// Bytes of a snapshot file read (and written) at a time: the only buffer a
/// transfer holds on either side, besides QUIC's own flow-control windows.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// The first frame of every peer stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// The cluster the sender belongs to.
    pub cluster_id: String,
    /// The sending node (must match its certificate).
    pub from: NodeId,
    /// The node it means to reach.
    pub to: NodeId,
    /// What the stream carries.
    pub class: StreamClass,
    /// The schema fingerprint of the sender's replicated type (0: none).
    pub schema: u64,
}

/// Settings of a node's endpoint.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// This node.
    pub id: NodeId,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Every other voter and learner, and where to reach it.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Certificates.
    pub identity: TlsIdentity,
    /// QUIC settings.
    pub options: QuicOptions,
    /// Messages queued per peer on the control stream before dropping.
    pub control_queue: usize,
    /// Messages queued per peer on the replication stream before dropping.
    pub replication_queue: usize,
    /// The schema fingerprint of the replicated type (0: raw bytes). Peers
    /// and clients with another fingerprint are refused.
    pub schema: u64,
}

impl QuicConfig {
    /// Settings with default queues and QUIC options.
    pub fn new(
        id: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        identity: TlsIdentity,
    ) -> QuicConfig {
        QuicConfig {
            id,
            listen,
            peers,
            identity,
            options: QuicOptions::default(),
            control_queue: 4096,
            replication_queue: 1024,
            schema: 0,
        }
    }
}

/// What can go wrong starting an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// TLS settings were refused.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Counters of one endpoint.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages dropped because a send queue was full.
    pub dropped_full: AtomicU64,
    /// Messages written to peers.
    pub sent: AtomicU64,
    /// Messages received from peers and handed to the node.
    pub received: AtomicU64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: AtomicU64,
}

struct PeerQueues {
    control: mpsc::Sender<Message>,
    replication: mpsc::Sender<Message>,
    connected: Arc<AtomicBool>,
    /// The control connection, while up (for its RTT estimate).
    conn: Arc<std::sync::Mutex<Option<quinn::Connection>>>,
}

type ConnSlot = Arc<std::sync::Mutex<Option<quinn::Connection>>>;

struct Shared {
    id: NodeId,
    cluster_id: String,
    schema: u64,
    peers: BTreeMap<NodeId, SocketAddr>,
    stats: TransportStats,
}

/// The sending half, handed to the node as its [`Transport`].
#[derive(Clone)]
pub struct QuicTransport {
    shared: Arc<Shared>,
    queues: Arc<BTreeMap<NodeId, PeerQueues>>,
    endpoint: quinn::Endpoint,
}

fn class_of(m: &Message) -> StreamClass {
    match m.body {
        Body::Append { .. } => StreamClass::Replication,
        _ => StreamClass::Control,
    }
}

impl Transport for QuicTransport {
    fn send_snapshot(
        &self,
        to: NodeId,
        snapshot: ha_core::node::OutgoingSnapshot,
        install: Message,
        done: ha_core::transport::SnapshotDone,
    ) {
        let Some(addr) = self.shared.peers.get(&to).copied() else {
            return done(false);
        };
        let (endpoint, shared) = (self.endpoint.clone(), self.shared.clone());
        tokio::spawn(async move {
            let r = stream_snapshot(&endpoint, &shared, to, addr, snapshot, install.term).await;
            if let Err(e) = &r {
                tracing::warn!(node = %shared.id, peer = %to, "snapshot transfer failed: {e}");
            }
            done(r.is_ok());
        });
    }

    fn send(&self, msg: Message) {
        let Some(q) = self.queues.get(&msg.to) else {
            return;
        };
        let queue = match class_of(&msg) {
            StreamClass::Control => &q.control,
            StreamClass::Replication | StreamClass::Snapshot => &q.replication,
        };
        if queue.try_send(msg).is_err() {
            self.shared
                .stats
                .dropped_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl QuicTransport {
    /// Whether the control connection to `peer` is up.
    pub fn peer_connected(&self, peer: NodeId) -> bool {
        self.queues
            .get(&peer)
            .is_some_and(|q| q.connected.load(Ordering::Relaxed))
    }

    /// The counters.
    pub fn stats(&self) -> &TransportStats {
        &self.shared.stats
    }

    /// QUIC's round-trip estimate to every connected peer.
    pub fn peer_rtts(&self) -> Vec<(NodeId, Duration)> {
        self.queues
            .iter()
            .filter_map(|(id, q)| {
                let c = q.conn.lock().unwrap_or_else(|e| e.into_inner());
                c.as_ref().map(|c| (*id, c.rtt()))
            })
            .collect()
    }
}

/// A bound endpoint: call [`QuicEndpoint::serve`] once the node runs.
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    transport: QuicTransport,
    shared: Arc<Shared>,
}

impl QuicEndpoint {
    /// Binds the socket and starts the peer senders (they connect lazily).
    /// Must be called inside a tokio runtime.
    pub fn bind(config: QuicConfig) -> Result<QuicEndpoint, QuicError> {
        let bind_err = |source| QuicError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
        QuicEndpoint::with_socket(config, socket)
    }

    /// Like [`QuicEndpoint::bind`], on a socket bound already (so a test can
    /// learn every node's port from the OS before any node starts).
    pub fn with_socket(
        config: QuicConfig,
        socket: std::net::UdpSocket,
    ) -> Result<QuicEndpoint, QuicError> {
        let server = tls::server_config(&config.identity, &config.options)?;
        let runtime = quinn::default_runtime().ok_or_else(|| QuicError::Bind {
            addr: config.listen,
            source: std::io::Error::other("no async runtime (start the endpoint inside tokio)"),
        })?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| QuicError::Bind {
            addr: config.listen,
            source,
        })?;
        let client = tls::client_config(&config.identity, ALPN_PEER, &config.options)?;
        endpoint.set_default_client_config(client);
        let shared = Arc::new(Shared {
            id: config.id,
            cluster_id: config.identity.cluster_id(),
            schema: config.schema,
            peers: config.peers.clone(),
            stats: TransportStats::default(),
        });
        let mut queues = BTreeMap::new();
        for (peer, addr) in &config.peers {
            if *peer == config.id {
                continue;
            }
            let connected = Arc::new(AtomicBool::new(false));
            let conn_slot: ConnSlot = Arc::new(std::sync::Mutex::new(None));
            let make = |class, depth: usize, connected: Option<(Arc<AtomicBool>, ConnSlot)>| {
                let (tx, rx) = mpsc::channel(depth.max(1));
                tokio::spawn(peer_sender(
                    endpoint.clone(),
                    shared.clone(),
                    *peer,
                    *addr,
                    class,
                    rx,
                    connected,
                ));
                tx
            };
            let control = make(
                StreamClass::Control,
                config.control_queue,
                Some((connected.clone(), conn_slot.clone())),
            );
            let replication = make(StreamClass::Replication, config.replication_queue, None);
            queues.insert(
                *peer,
                PeerQueues {
                    control,
                    replication,
                    connected,
                    conn: conn_slot,
                },
            );
        }
        let transport = QuicTransport {
            shared: shared.clone(),
            queues: Arc::new(queues),
            endpoint: endpoint.clone(),
        };
        Ok(QuicEndpoint {
            endpoint,
            transport,
            shared,
        })
    }

    /// The transport to give the node.
    pub fn transport(&self) -> QuicTransport {
        self.transport.clone()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Accepts connections for `node` until the endpoint closes.
    pub fn serve(&self, node: NodeHandle) {
        let files = node.snapshot_files();
        self.accept_into(node.inbound(), Some(node), Some(files));
    }

    /// Accepts peer connections and hands their messages to `inbound`, with
    /// no node behind the endpoint (clients are refused). For benchmarks and
    /// tests of the transport alone.
    pub fn serve_messages(&self, inbound: mpsc::Sender<Message>) {
        self.accept_into(inbound, None, None);
    }

    /// Like [`QuicEndpoint::serve_messages`], storing received snapshots in
    /// `files` (for benchmarks and tests of snapshot transfer alone).
    pub fn serve_messages_and_snapshots(
        &self,
        inbound: mpsc::Sender<Message>,
        files: Arc<dyn ha_core::node::SnapshotFiles>,
    ) {
        self.accept_into(inbound, None, Some(files));
    }

    fn accept_into(
        &self,
        inbound: mpsc::Sender<Message>,
        node: Option<NodeHandle>,
        files: Option<Arc<dyn ha_core::node::SnapshotFiles>>,
    ) {
        let endpoint = self.endpoint.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (shared, inbound, node, files) =
                    (shared.clone(), inbound.clone(), node.clone(), files.clone());
                tokio::spawn(handle_incoming(incoming, shared, inbound, node, files));
            }
        });
    }

    /// Closes every connection and the socket.
    pub fn close(&self) {
        self.endpoint
            .close(codes::SHUTDOWN.into(), b"shutting down");
    }
}

async fn peer_sender(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    class: StreamClass,
    mut rx: mpsc::Receiver<Message>,
    connected: Option<(Arc<AtomicBool>, ConnSlot)>,
) {
    let min_backoff = Duration::from_millis(20);
    let max_backoff = Duration::from_secs(1);
    let mut backoff = min_backoff;
    let mut rng = SplitMix64::new(shared.id.0 << 32 ^ peer.0 ^ class as u64);
    let set_connected = |conn: Option<&quinn::Connection>| {
        if let Some((flag, slot)) = &connected {
            flag.store(conn.is_some(), Ordering::Relaxed);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = conn.cloned();
        }
    };
    let mut failures_logged = false;
    loop {
        // Connect lazily: only once there is something to send.
        let Some(first) = rx.recv().await else { return };
        let conn = match connect(&endpoint, peer, addr).await {
            Ok(c) => c,
            Err(e) => {
                if !failures_logged {
                    tracing::info!(node = %shared.id, %peer, %addr, ?class, "cannot reach peer: {e}");
                    failures_logged = true;
                }
                // Back off with jitter; what was queued meanwhile is stale.
                let jitter = rng.range(0, backoff.as_millis() as u64 / 2 + 1);
                tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                backoff = (backoff * 2).min(max_backoff);
                while rx.try_recv().is_ok() {}
                continue;
            }
        };
        let mut stream = match conn.open_uni().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let _ = stream.set_priority(if class == StreamClass::Control { 10 } else { 0 });
        let hello = PeerHello {
            cluster_id: shared.cluster_id.clone(),
            from: shared.id,
            to: peer,
            class,
            schema: shared.schema,
        };
        let mut buf = Vec::new();
        if frame::encode(&hello, &mut buf).is_err() || frame::encode(&first, &mut buf).is_err() {
            continue;
        }
        if stream.write_all(&buf).await.is_err() {
            continue;
        }
        if failures_logged {
            tracing::info!(node = %shared.id, %peer, ?class, "peer reachable again");
            failures_logged = false;
        }
        backoff = min_backoff;
        set_connected(Some(&conn));
        shared.stats.sent.fetch_add(1, Ordering::Relaxed);
        // Stream messages; write whatever queued up together, in one write.
        loop {
            let next = tokio::select! {
                m = rx.recv() => m,
                _ = conn.closed() => break,
            };
            let Some(m) = next else {
                let _ = stream.finish();
                return;
            };
            buf.clear();
            let mut n = 0u64;
            let mut push = |m: &Message, buf: &mut Vec<u8>| {
                if frame::encode(m, buf).is_ok() {
                    n += 1;
                }
            };
            push(&m, &mut buf);
            while buf.len() < 1 << 20 {
                match rx.try_recv() {
                    Ok(m) => push(&m, &mut buf),
                    Err(_) => break,
                }
            }
            if stream.write_all(&buf).await.is_err() {
                break;
            }
            shared.stats.sent.fetch_add(n, Ordering::Relaxed);
        }
        set_connected(None);
    }
}

/// Sends one snapshot file on a connection of its own, in chunks; a reader
/// thread and the writer share a queue of two chunks, so memory stays
/// bounded whatever the file's size.
async fn stream_snapshot(
    endpoint: &quinn::Endpoint,
    shared: &Shared,
    to: NodeId,
    addr: SocketAddr,
    mut snapshot: ha_core::node::OutgoingSnapshot,
    leader_term: ha_core::types::Term,
) -> Result<(), String> {
    let conn = connect(endpoint, to, addr).await?;
    let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
    let _ = stream.set_priority(-1);
    let mut buf = Vec::new();
    let hello = PeerHello {
        cluster_id: shared.cluster_id.clone(),
        from: shared.id,
        to,
        class: StreamClass::Snapshot,
        schema: shared.schema,
    };
    let header = SnapshotHeader {
        index: snapshot.index,
        term: snapshot.term,
        leader_term,
        len: snapshot.len,
    };
    frame::encode(&hello, &mut buf).map_err(|e| e.to_string())?;
    frame::encode(&header, &mut buf).map_err(|e| e.to_string())?;
    stream.write_all(&buf).await.map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(2);
    std::thread::spawn(move || {
        loop {
            let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            match std::io::Read::read(&mut snapshot.data, &mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        sent += chunk.len() as u64;
        stream.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    if sent != header.len {
        return Err(format!(
            "read {sent} bytes of a {}-byte snapshot",
            header.len
        ));
    }
    stream.finish().map_err(|e| e.to_string())?;
    // Resolves once the peer has read everything (or gone away).
    match stream.stopped().await {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

async fn connect(
    endpoint: &quinn::Endpoint,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect(addr, &node_server_name(peer))
        .map_err(|e| e.to_string())?;
    connecting.await.map_err(|e| e.to_string())
}

fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let any = conn.handshake_data()?;
    let hd = any
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    hd.protocol
}

async fn handle_incoming(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    node: Option<NodeHandle>,
    files: Option<Arc<dyn ha_core::node::SnapshotFiles>>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            // Failed handshakes (no certificate, a foreign CA) end here.
            tracing::info!(node = %shared.id, %remote, "refused a connection: {e}");
            return;
        }
    };
    let Some(cert) = peer_certificate(&conn) else {
        conn.close(codes::PROTOCOL.into(), b"no certificate");
        return;
    };
    match alpn(&conn).as_deref() {
        Some(p) if p == ALPN_PEER => peer_connection(conn, cert, shared, inbound, files).await,
        Some(p) if p == ALPN_CLIENT => match node {
            Some(node) => client_connection(conn, shared, node).await,
            None => conn.close(codes::PROTOCOL.into(), b"no service for clients here"),
        },
        _ => conn.close(codes::PROTOCOL.into(), b"unknown protocol"),
    }
}

fn protocol_violation(conn: &quinn::Connection, shared: &Shared, who: &str, why: &str) {
    shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        node = %shared.id,
        peer = who,
        remote = %conn.remote_address(),
        "closing a peer connection: {why}"
    );
    conn.close(codes::PROTOCOL.into(), why.as_bytes());
}

async fn peer_connection(
    conn: quinn::Connection,
    cert: CertificateDer<'static>,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    files: Option<Arc<dyn ha_core::node::SnapshotFiles>>,
) {
    while let Ok(recv) = conn.accept_uni().await {
        tokio::spawn(peer_stream(
            recv,
            conn.clone(),
            cert.clone(),
            shared.clone(),
            inbound.clone(),
            files.clone(),
        ));
    }
}

async fn peer_stream(
    mut recv: quinn::RecvStream,
    conn: quinn::Connection,
    cert: CertificateDer<'static>,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    files: Option<Arc<dyn ha_core::node::SnapshotFiles>>,
) {
    let hello: PeerHello = match frame::read_frame(&mut recv, MAX_CONTROL_FRAME_BYTES).await {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) => {
            return protocol_violation(&conn, &shared, "unidentified", &format!("bad hello: {e}"));
        }
    };
    let who = node_server_name(hello.from);
    if hello.cluster_id != shared.cluster_id {
        return protocol_violation(&conn, &shared, &who, "hello names another cluster");
    }
    if hello.schema != shared.schema {
        return protocol_violation(
            &conn,
            &shared,
            &who,
            "the peer runs another version of the replicated type (schema fingerprint differs)",
        );
    }
    if hello.to != shared.id {
        return protocol_violation(&conn, &shared, &who, "hello is meant for another node");
    }
    if !shared.peers.contains_key(&hello.from) || hello.from == shared.id {
        return protocol_violation(&conn, &shared, &who, "hello claims an unknown node id");
    }
    if !tls::cert_names(&cert, &who) {
        return protocol_violation(
            &conn,
            &shared,
            &who,
            "the certificate does not name the node id the hello claims",
        );
    }
    let max = match hello.class {
        StreamClass::Control => MAX_CONTROL_FRAME_BYTES,
        StreamClass::Replication => MAX_FRAME_BYTES,
        StreamClass::Snapshot => {
            return receive_snapshot(recv, conn, hello, &who, shared, inbound, files).await;
        }
    };
    loop {
        match frame::read_frame::<Message>(&mut recv, max).await {
            Ok(Some(m)) => {
                if m.from != hello.from || m.to != shared.id {
                    return protocol_violation(
                        &conn,
                        &shared,
                        &who,
                        "message does not match its stream's hello",
                    );
                }
                shared.stats.received.fetch_add(1, Ordering::Relaxed);
                // A full inbox drops (the core is behind; Raft resends).
                let _ = inbound.try_send(m);
            }
            Ok(None) => return,
            Err(FrameError::Stream(_)) => return, // The connection went away.
            Err(e) => return protocol_violation(&conn, &shared, &who, &e.to_string()),
        }
    }
}

/// Receives one snapshot file in chunks into the node's snapshot directory;
/// once its checksum verified, steps `InstallSnapshot` from the sender.
async fn receive_snapshot(
    mut recv: quinn::RecvStream,
    conn: quinn::Connection,
    hello: PeerHello,
    who: &str,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    files: Option<Arc<dyn ha_core::node::SnapshotFiles>>,
) {
    let Some(files) = files else {
        return protocol_violation(&conn, &shared, who, "this endpoint takes no snapshots");
    };
    let header: SnapshotHeader = match frame::read_frame(&mut recv, MAX_CONTROL_FRAME_BYTES).await {
        Ok(Some(h)) => h,
        Ok(None) | Err(FrameError::Stream(_)) => return,
        Err(e) => {
            return protocol_violation(&conn, &shared, who, &format!("bad snapshot header: {e}"));
        }
    };
    let mut writer = match files.begin(header.index, header.term) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(node = %shared.id, "cannot store a snapshot from {who}: {e}");
            let _ = recv.stop(codes::PROTOCOL.into());
            return;
        }
    };
    let mut got = 0u64;
    loop {
        match recv.read_chunk(SNAPSHOT_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => {
                got += chunk.bytes.len() as u64;
                if got > header.len {
                    return protocol_violation(
                        &conn,
                        &shared,
                        who,
                        "snapshot longer than announced",
                    );
                }
                if let Err(e) = writer.write(&chunk.bytes) {
                    tracing::error!(node = %shared.id, "cannot store a snapshot from {who}: {e}");
                    let _ = recv.stop(codes::PROTOCOL.into());
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                // A broken transfer: the partial file is never made visible,
                // and the leader will send again.
                tracing::info!(node = %shared.id, "snapshot transfer from {who} broke: {e}");
                return;
            }
        }
    }
    if got != header.len {
        tracing::info!(node = %shared.id, "snapshot from {who} ended after {got} of {} bytes", header.len);
        return;
    }
    if let Err(e) = writer.finish() {
        tracing::warn!(node = %shared.id, "refused a snapshot from {who}: {e}");
        return;
    }
    let _ = inbound.try_send(Message {
        from: hello.from,
        to: shared.id,
        term: header.leader_term,
        body: Body::InstallSnapshot {
            index: header.index,
            term: header.term,
        },
    });
}

async fn client_connection(conn: quinn::Connection, shared: Arc<Shared>, node: NodeHandle) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let (shared, node, conn) = (shared.clone(), node.clone(), conn.clone());
        tokio::spawn(async move {
            let req: ClientRequest = match frame::read_frame(&mut recv, MAX_FRAME_BYTES).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(FrameError::Stream(_)) => return,
                Err(e) => {
                    shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %shared.id, remote = %conn.remote_address(), "closing a client connection: {e}");
                    conn.close(codes::PROTOCOL.into(), b"malformed request");
                    return;
                }
            };
            let resp = answer(req, &shared, &node).await;
            let mut buf = Vec::new();
            if frame::encode(&resp, &mut buf).is_ok() && send.write_all(&buf).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

fn not_leader(shared: &Shared, leader: Option<NodeId>) -> ClientResponse {
    ClientResponse::NotLeader {
        leader: leader.map(|l| l.0),
        leader_addr: leader.and_then(|l| shared.peers.get(&l).copied()),
    }
}

async fn answer(req: ClientRequest, shared: &Shared, node: &NodeHandle) -> ClientResponse {
    let failed = |e: NodeError| ClientResponse::Failed {
        not_applied: e.is_not_applied(),
        message: e.to_string(),
    };
    let schema_mismatch = |schema: u64| ClientResponse::Refused {
        message: format!(
            "the client was built for schema {schema:016x} but the cluster runs {:016x}: \
             rebuild the client with the same version of the replicated type",
            shared.schema
        ),
    };
    match req {
        ClientRequest::Command { schema, .. }
        | ClientRequest::Query { schema, .. }
        | ClientRequest::Register { schema }
            if schema != shared.schema =>
        {
            schema_mismatch(schema)
        }
        ClientRequest::Command { .. } | ClientRequest::Register { .. } => {
            let op = match req {
                ClientRequest::Command { command, .. } => LogOp::Command(command),
                _ => LogOp::Register,
            };
            // The leader stamps the time every replica will see.
            let time_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let entry = LogCommand { time_ms, op };
            let bytes = match postcard::to_stdvec(&entry) {
                Ok(b) => bytes::Bytes::from(b),
                Err(e) => return failed(NodeError::Query(e.to_string())),
            };
            match node.propose(bytes).await {
                Ok((index, answer)) => ClientResponse::Applied {
                    index: index.0,
                    answer,
                },
                Err(NodeError::NotLeader { leader }) => not_leader(shared, leader),
                Err(e) => failed(e),
            }
        }
        ClientRequest::Query {
            body, consistency, ..
        } => {
            // Lease reads fall back to ReadIndex: the safe side of the option.
            let stale = consistency == Consistency::Stale;
            match node.query(body, stale).await {
                Ok(answer) => ClientResponse::QueryResult { answer },
                Err(NodeError::NotLeader { leader }) => not_leader(shared, leader),
                Err(e) => failed(e),
            }
        }
        ClientRequest::Propose(data) => match node.propose(data).await {
            Ok((index, answer)) => ClientResponse::Applied {
                index: index.0,
                answer,
            },
            Err(NodeError::NotLeader { leader }) => not_leader(shared, leader),
            Err(e) => failed(e),
        },
        ClientRequest::Read => match node.read_index().await {
            Ok(index) => ClientResponse::ReadIndex { index: index.0 },
            Err(NodeError::NotLeader { leader }) => not_leader(shared, leader),
            Err(e) => failed(e),
        },
        ClientRequest::Status => {
            let s = node.status();
            let m = node.metrics();
            let a = m.availability;
            ClientResponse::Status(StatusView {
                id: s.id.0,
                role: match s.role {
                    ha_core::raft::RoleKind::Leader => "leader",
                    ha_core::raft::RoleKind::Candidate => "candidate",
                    ha_core::raft::RoleKind::PreCandidate => "candidate",
                    ha_core::raft::RoleKind::Follower if m.learners.contains(&s.id) => "learner",
                    ha_core::raft::RoleKind::Follower => "follower",
                }
                .to_string(),
                term: s.term.0,
                leader: s.leader.map(|l| l.0),
                commit_index: s.commit_index.0,
                applied_index: s.applied_index.0,
                last_index: s.last_index.0,
                snapshot_index: s.snapshot_index.0,
                voters: m.voters.iter().map(|v| v.0).collect(),
                learners: m.learners.iter().map(|v| v.0).collect(),
                availability: ha_core::protocol::AvailabilityView {
                    leaderless_ms: a.leaderless_ms,
                    failovers: a.failovers,
                    mttr_ms: a.mttr_ms,
                    mtbf_ms: a.mtbf_ms,
                    availability: a.availability,
                },
            })
        }
    }
}
