//! The node's QUIC endpoint: Raft messages to and from peers, and client
//! requests, on one UDP socket.
//!
//! Owns: the endpoint, one sender task per (peer, stream class), the accept
//! loop that checks who is talking before anything they say reaches the
//! core, and the resource limits ([`QuicLimits`]) that keep an
//! authenticated but hostile or buggy peer or client from exhausting the
//! node.
//!
//! Peer traffic (ALPN `ha-raft/2`). Each node dials each peer lazily (on the
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
//! A snapshot travels on a connection of its own, on one bidirectional
//! stream: hello, [`SnapshotHeader`], the file's bytes; the receiver answers
//! with one [`SnapshotVerdict`] once the file is verified, durable and its
//! `InstallSnapshot` queued to the node, and the sender reports success
//! only on [`SnapshotVerdict::Accepted`].
//!
//! Client traffic (ALPN `ha-client/2`): one request and one response per
//! bidirectional stream.
//!
//! Invariants:
//! 1. A peer stream is accepted only if the dialer's certificate (verified
//!    against the cluster CA by the handshake) names `node-<from>` for the
//!    `from` its hello claims, `to` is this node, and the cluster id matches.
//!    Every message on it must then carry that same `from` and `to`.
//! 2. A malformed, truncated, oversized or unexpected frame closes that
//!    connection and is logged with the peer's identity; the node keeps
//!    running.
//! 3. Send queues are bounded (`control_queue`, `replication_queue`);
//!    `send` drops when one is full, so a slow or dead follower cannot make
//!    the leader's memory grow. Raft resends what matters.
//! 4. Reconnects back off exponentially from 20 ms to 1 s, with jitter.
//! 5. Nothing is dropped silently: every message, request, connection,
//!    stream or snapshot this endpoint drops or refuses is counted in
//!    [`TransportStats`] and logged (events a flood could repeat are logged
//!    at the 1st, 2nd, 4th, ... and every 1024th occurrence, with the count).
//! 6. Every limit in [`QuicLimits`] holds (see there); in particular a
//!    client request is at most `max_request_bytes`, so every entry the log
//!    accepts fits a replication frame, and memory held for unfinished frames
//!    is paid from a byte budget before it is allocated.
//! 7. Of a peer's message streams of one class, only the newest delivers:
//!    once a newer one registered, an older one delivers nothing more, and
//!    one older than the registered one is refused at its hello (both
//!    counted in `dropped_superseded`). "Newer" is the order the sender
//!    created them in: connections are numbered when their first packet
//!    arrives (`endpoint.accept` yields them in that order), streams within
//!    a connection by their QUIC stream id. A sender's stream carries data
//!    only after the handshake, whose first packet this node had answered;
//!    so a connection a restarted peer opens arrives after every connection
//!    it opened before its crash, however late their data comes. Hence no
//!    message a peer sent before it restarted reaches the node after one it
//!    sent since: a leader never counts an append acknowledgement from
//!    before a follower's crash after that follower said, after the crash,
//!    that it is repairing. (The inbox is FIFO, so a check and enqueue under
//!    one lock suffices.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ha_core::node::{NodeError, NodeHandle, SnapshotFiles};
use ha_core::raft::rng::SplitMix64;
use ha_core::raft::{Body, Message};
use ha_core::transport::Transport;
use ha_core::types::{LogIndex, NodeId, Term};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::certs::{TlsIdentity, node_server_name};
use crate::client::{ClientRequest, ClientResponse, StatusView};
use crate::frame::{
    self, FrameDeadline, FrameError, MAX_CONTROL_FRAME_BYTES, MAX_FRAME_BYTES, ReadLimits,
};
use crate::tls::{self, ALPN_CLIENT, ALPN_PEER, QuicOptions};
use ha_core::protocol::{Consistency, LogCommand, LogOp};

/// Application error codes used when closing a connection or a stream.
pub mod codes {
    /// The peer broke the protocol (bad frame, bad identity).
    pub const PROTOCOL: u32 = 1;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 2;
    /// A limit was reached: too many connections, no frame budget left.
    pub const BUSY: u32 = 3;
    /// A frame or transfer did not complete by its deadline.
    pub const TIMEOUT: u32 = 4;
    /// The request or snapshot was refused (the answer says why).
    pub const REFUSED: u32 = 5;
}

/// The classes of peer traffic (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamClass {
    /// Votes, heartbeats, responses.
    Control,
    /// Appends.
    Replication,
    /// One snapshot file, on a bidirectional stream: a [`SnapshotHeader`]
    /// frame, then its raw bytes; the receiver answers with a
    /// [`SnapshotVerdict`].
    Snapshot,
}

/// The frame that opens a snapshot stream, after the hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Last index the snapshot covers.
    pub index: LogIndex,
    /// Its term.
    pub term: Term,
    /// The sender's term as leader.
    pub leader_term: Term,
    /// Bytes of the file that follow.
    pub len: u64,
}

/// The receiver's answer at the end of a snapshot stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotVerdict {
    /// The file arrived whole, verified, is durable, and its
    /// `InstallSnapshot` was handed to the node.
    Accepted,
    /// The snapshot was not taken, and why.
    Refused(String),
}

/// Bytes of a snapshot file read (and written) at a time: the only buffer a
/// transfer holds on either side, besides QUIC's own flow-control windows.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Pieces queued between a snapshot stream and the thread writing the file
/// (so at most this many chunks wait in memory per transfer).
const SNAPSHOT_WRITE_QUEUE: usize = 2;

/// Longest refusal reason sent in a [`SnapshotVerdict`].
const MAX_VERDICT_REASON_BYTES: usize = 1024;

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

/// Default cap of one client request: 1.5 MiB, like etcd's
/// `--max-request-bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1_572_864;
/// The core's default `max_append_bytes` (`ha_core::raft::Config`).
pub const DEFAULT_MAX_APPEND_BYTES: usize = 1 << 20;
/// Bytes an append's frame may take beyond its entries' payloads and the
/// core's estimate of their headers: the message header (ids, terms, the
/// commit index, the entry count) and the leader's timestamp around a
/// client command, with room to spare.
pub const APPEND_OVERHEAD_BYTES: usize = 4096;

/// The smallest replication frame cap that holds every append the core can
/// build from requests of at most `max_request_bytes` (invariant 6).
///
/// The core fills an append up to `max_append_bytes` of its own size
/// estimate (24 bytes per entry plus the payload), and always sends at least
/// one entry, however large. An entry made from a request is at most the
/// request plus the timestamp the leader adds. Postcard spends at most 26
/// bytes on an entry's header where the core counts 24, and at most 10 per
/// member id where it counts 8, so a full batch encodes to at most twice
/// its estimate. Hence: one request, plus twice the batch, plus the
/// message's own header.
pub const fn min_replication_frame_bytes(
    max_request_bytes: usize,
    max_append_bytes: usize,
) -> usize {
    max_request_bytes
        .saturating_add(max_append_bytes.saturating_mul(2))
        .saturating_add(APPEND_OVERHEAD_BYTES)
}

const _: () = assert!(
    min_replication_frame_bytes(DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_APPEND_BYTES)
        <= MAX_FRAME_BYTES,
    "the default request and append caps must fit the default replication frame"
);

/// Resource limits of an endpoint against authenticated but hostile or
/// buggy peers and clients. [`QuicLimits::validate`] checks the relations
/// between them; the defaults suit a LAN cluster.
///
/// Memory a remote can make the node hold, besides QUIC's flow-control
/// windows (see `tls`): unfinished frames, paid from `client_budget_bytes`
/// and `peer_budget_bytes` (per peer: a cluster of n nodes holds up to n − 1
/// of them), requests waiting for answers (`client_pending_bytes`), and at
/// most `SNAPSHOT_WRITE_QUEUE` chunks of `SNAPSHOT_CHUNK_BYTES` per snapshot
/// transfer.
#[derive(Clone, Debug)]
pub struct QuicLimits {
    /// Largest client request frame (default 1.5 MiB). A larger request is
    /// answered with `ClientResponse::Refused` ("too large") after reading
    /// only its length, and never reaches the log.
    pub max_request_bytes: usize,
    /// The core's `max_append_bytes` (default 1 MiB); it must equal the
    /// node's `NodeOptions::raft.max_append_bytes`, which the transport
    /// cannot see. Used only to check `max_replication_frame_bytes`.
    pub max_append_bytes: usize,
    /// Largest replication frame, sent or received (default 16 MiB; at least
    /// [`min_replication_frame_bytes`], at most [`MAX_FRAME_BYTES`]). Every
    /// node of a cluster should use the same value.
    pub max_replication_frame_bytes: usize,
    /// Connections open at once, handshakes included (default 1024); more
    /// are refused before the handshake. At least `max_client_connections`
    /// plus `max_connections_per_peer` per peer plus one, so neither class
    /// can be locked out by the other.
    pub max_connections: usize,
    /// Client connections open at once (default 512); more are closed after
    /// the handshake.
    pub max_client_connections: usize,
    /// Connections one peer node may have open at once (default 8: control,
    /// replication, a snapshot, and the overlap of reconnects).
    pub max_connections_per_peer: usize,
    /// Bytes all client streams together may hold in unfinished request
    /// frames (default 256 MiB). A connection whose frame cannot be paid
    /// for is closed.
    pub client_budget_bytes: usize,
    /// Client requests one node keeps waiting for the node's answer, over
    /// all connections (default 4096; status requests, answered at once,
    /// do not count). One more is answered [`ClientResponse::Busy`]
    /// (certainly not applied; the client backs off and retries) and counted
    /// in `requests_busy`. A waiting request outlives its connection, so
    /// the per-connection stream cap alone does not bound them.
    pub max_client_requests: usize,
    /// Bytes the requests waiting for answers may hold together (default
    /// 256 MiB), counted by their frame length; beyond it a request is
    /// answered busy like one beyond `max_client_requests`.
    pub client_pending_bytes: usize,
    /// Bytes the streams of one peer node together may hold in unfinished
    /// frames (default 64 MiB, four largest frames). Each peer has its own,
    /// separate from the clients', so neither clients nor one faulty peer
    /// can starve another peer's replication.
    pub peer_budget_bytes: usize,
    /// A client stream must deliver its whole request within this long of
    /// being opened (default 10 s), and take its response within as long;
    /// otherwise the stream is closed. A request the node has not answered
    /// within as long is answered as failed with an unknown outcome.
    pub client_request_timeout: Duration,
    /// A peer's hello must arrive within this long of its stream opening,
    /// and a frame that has started must complete within this long (default
    /// 10 s); otherwise the connection is closed.
    pub peer_frame_timeout: Duration,
    /// Largest snapshot file received (default 16 GiB). A node restores a
    /// snapshot into memory, so a larger one could not be used anyway; the
    /// cap keeps a peer's claimed length from filling the disk. Checked
    /// before any file is created.
    pub max_snapshot_bytes: u64,
    /// Snapshot transfers received at once (default 2); more are refused.
    pub max_snapshot_receives: usize,
    /// A snapshot transfer with no bytes for this long is aborted and its
    /// partial file removed (default 10 s).
    pub snapshot_idle_timeout: Duration,
    /// A snapshot transfer must complete within this floor plus its length
    /// at `snapshot_min_bytes_per_sec` (default 60 s).
    pub snapshot_timeout_floor: Duration,
    /// The slowest transfer rate a snapshot deadline allows (default 1 MiB/s,
    /// far below any LAN or disk, so only a stalling peer hits it).
    pub snapshot_min_bytes_per_sec: u64,
}

impl Default for QuicLimits {
    fn default() -> QuicLimits {
        QuicLimits {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            max_replication_frame_bytes: MAX_FRAME_BYTES,
            max_connections: 1024,
            max_client_connections: 512,
            max_connections_per_peer: 8,
            client_budget_bytes: 256 << 20,
            max_client_requests: 4096,
            client_pending_bytes: 256 << 20,
            peer_budget_bytes: 64 << 20,
            client_request_timeout: Duration::from_secs(10),
            peer_frame_timeout: Duration::from_secs(10),
            max_snapshot_bytes: 16 << 30,
            max_snapshot_receives: 2,
            snapshot_idle_timeout: Duration::from_secs(10),
            snapshot_timeout_floor: Duration::from_secs(60),
            snapshot_min_bytes_per_sec: 1 << 20,
        }
    }
}

impl QuicLimits {
    /// Checks the relations between the limits, for a node with `peers`
    /// other nodes.
    pub fn validate(&self, peers: usize) -> Result<(), String> {
        let min_frame = min_replication_frame_bytes(self.max_request_bytes, self.max_append_bytes);
        if self.max_request_bytes == 0 {
            return Err("max_request_bytes must be at least 1".into());
        }
        // Deadlines are added to the clock: keep them to sane lengths so
        // that addition can never overflow.
        const LONGEST: Duration = Duration::from_secs(24 * 3600);
        for (name, d) in [
            ("snapshot_idle_timeout", self.snapshot_idle_timeout),
            ("peer_frame_timeout", self.peer_frame_timeout),
            ("client_request_timeout", self.client_request_timeout),
        ] {
            if d.is_zero() || d > LONGEST {
                return Err(format!("{name} must be above zero and at most a day"));
            }
        }
        if self.max_replication_frame_bytes > MAX_FRAME_BYTES {
            return Err(format!(
                "max_replication_frame_bytes {} exceeds the largest frame, {MAX_FRAME_BYTES}",
                self.max_replication_frame_bytes
            ));
        }
        if self.max_replication_frame_bytes < min_frame {
            return Err(format!(
                "max_replication_frame_bytes {} cannot hold an append of a {}-byte request \
                 and {} bytes of entries (max_append_bytes); it must be at least {min_frame}, \
                 or lower max_request_bytes",
                self.max_replication_frame_bytes, self.max_request_bytes, self.max_append_bytes
            ));
        }
        let needed = self.max_client_connections.saturating_add(
            self.max_connections_per_peer
                .saturating_mul(peers)
                .saturating_add(1),
        );
        if self.max_connections < needed {
            return Err(format!(
                "max_connections {} must be at least max_client_connections {} plus \
                 max_connections_per_peer {} for each of {peers} peers plus one ({needed})",
                self.max_connections, self.max_client_connections, self.max_connections_per_peer
            ));
        }
        for (name, v) in [
            ("max_client_connections", self.max_client_connections),
            ("max_connections_per_peer", self.max_connections_per_peer),
            ("max_snapshot_receives", self.max_snapshot_receives),
            ("max_client_requests", self.max_client_requests),
            ("max_client_connections", self.max_client_connections),
            ("max_connections", self.max_connections),
        ] {
            if v == 0 || v > Semaphore::MAX_PERMITS {
                return Err(format!(
                    "{name} must be at least 1 and at most {}",
                    Semaphore::MAX_PERMITS
                ));
            }
        }
        if self.client_pending_bytes < self.max_request_bytes
            || self.client_pending_bytes > Semaphore::MAX_PERMITS
        {
            return Err(format!(
                "client_pending_bytes {} must hold at least one largest request ({}) and at \
                 most {}",
                self.client_pending_bytes,
                self.max_request_bytes,
                Semaphore::MAX_PERMITS
            ));
        }
        // A peer's own traffic needs room for its largest append and a
        // control frame at once, and a reconnect's overlap: two appends.
        let peer_needs = self
            .max_replication_frame_bytes
            .saturating_mul(2)
            .saturating_add(MAX_CONTROL_FRAME_BYTES);
        if self.peer_budget_bytes < peer_needs {
            return Err(format!(
                "peer_budget_bytes {} must hold two largest replication frames and a \
                 control frame ({peer_needs})",
                self.peer_budget_bytes
            ));
        }
        for (name, budget, frame) in [
            (
                "client_budget_bytes",
                self.client_budget_bytes,
                self.max_request_bytes,
            ),
            (
                "peer_budget_bytes",
                self.peer_budget_bytes,
                self.max_replication_frame_bytes,
            ),
        ] {
            if budget < frame || budget > Semaphore::MAX_PERMITS {
                return Err(format!(
                    "{name} {budget} must hold at least one largest frame ({frame}) and at \
                     most {}",
                    Semaphore::MAX_PERMITS
                ));
            }
        }
        for (name, d) in [
            ("client_request_timeout", self.client_request_timeout),
            ("peer_frame_timeout", self.peer_frame_timeout),
            ("snapshot_idle_timeout", self.snapshot_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be longer than zero"));
            }
        }
        if self.snapshot_min_bytes_per_sec == 0 {
            return Err("snapshot_min_bytes_per_sec must be at least 1".into());
        }
        Ok(())
    }

    /// How long a snapshot of `len` bytes may take: the floor plus its
    /// length at the slowest allowed rate.
    pub fn snapshot_deadline(&self, len: u64) -> Duration {
        self.snapshot_timeout_floor
            .saturating_add(Duration::from_secs(
                len / self.snapshot_min_bytes_per_sec.max(1),
            ))
    }
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
    /// and clients with another fingerprint are refused, and so are raw
    /// `ClientRequest::Propose` requests when it is not 0. This is the
    /// stored fingerprint (`ha_core::schema::Schema::stored`): commands,
    /// their outputs and the state.
    pub schema: u64,
    /// The query fingerprint (`ha_core::schema::Schema::query`), checked
    /// against clients' queries only (0 with raw bytes).
    pub query_schema: u64,
    /// Resource limits against hostile or buggy peers and clients.
    pub limits: QuicLimits,
}

impl QuicConfig {
    /// Settings with default queues, QUIC options and limits.
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
            query_schema: 0,
            limits: QuicLimits::default(),
        }
    }

    /// Checks the settings (the limits' relations among them).
    pub fn validate(&self) -> Result<(), String> {
        let peers = self.peers.keys().filter(|p| **p != self.id).count();
        self.limits.validate(peers)?;
        if self.options.max_client_streams == 0 || self.options.max_peer_streams == 0 {
            return Err("max_client_streams and max_peer_streams must be at least 1".into());
        }
        Ok(())
    }
}

/// What can go wrong starting an endpoint.
#[derive(thiserror::Error)]
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
    /// The settings contradict each other.
    #[error("invalid transport settings: {0}")]
    Config(String),
}

ha_core::debug_as_display!(QuicError);

/// Counters of one endpoint (invariant 5).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages dropped because a send queue was full.
    pub dropped_full: AtomicU64,
    /// Messages dropped because they were for a node this endpoint does not
    /// know.
    pub dropped_no_route: AtomicU64,
    /// Messages written to peers.
    pub sent: AtomicU64,
    /// Messages (and responses) dropped because they could not be encoded
    /// within their frame cap.
    pub encode_failures: AtomicU64,
    /// Messages received from peers and handed to the node.
    pub received: AtomicU64,
    /// Messages from peers dropped because the node's inbox was full.
    pub dropped_inbound: AtomicU64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: AtomicU64,
    /// Connections refused or closed because a connection limit was reached.
    pub refused_connections: AtomicU64,
    /// Frames that did not arrive by their deadline (the stream or
    /// connection was closed).
    pub frame_timeouts: AtomicU64,
    /// Connections closed because the frame byte budget was exhausted.
    pub budget_exhausted: AtomicU64,
    /// Client requests refused as larger than `max_request_bytes`.
    pub requests_too_large: AtomicU64,
    /// Client requests answered "busy" because `max_client_requests` or
    /// `client_pending_bytes` were reached.
    pub requests_busy: AtomicU64,
    /// Client requests the node did not answer within
    /// `client_request_timeout` (answered as failed, outcome unknown).
    pub answer_timeouts: AtomicU64,
    /// Client requests refused for another reason (a schema mismatch, a raw
    /// proposal to a typed node).
    pub requests_refused: AtomicU64,
    /// Snapshots received, verified, and handed to the node.
    pub snapshots_received: AtomicU64,
    /// Snapshot transfers refused or failed on the receiving side (too large,
    /// too many at once, not storable, broken, timed out).
    pub snapshots_refused: AtomicU64,
    /// Snapshot transfers aborted for making no progress or missing their
    /// deadline (also counted in `snapshots_refused`).
    pub snapshot_timeouts: AtomicU64,
    /// Messages from a peer's stream that a newer stream of the same peer
    /// and class superseded, and streams refused at their hello as older
    /// than one the peer opened since (invariant 7).
    pub dropped_superseded: AtomicU64,
}

/// Adds one to `c`, returning the new count.
fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

/// Whether the `n`th occurrence of a repeatable event is logged (invariant
/// 5): the 1st, 2nd, 4th, ... and every 1024th.
fn sampled(n: u64) -> bool {
    n.is_power_of_two() || n.is_multiple_of(1024)
}

struct PeerQueues {
    control: mpsc::Sender<Message>,
    replication: mpsc::Sender<Message>,
    connected: Arc<AtomicBool>,
    /// The control connection, while up (for its RTT estimate).
    conn: Arc<std::sync::Mutex<Option<quinn::Connection>>>,
}

type ConnSlot = Arc<std::sync::Mutex<Option<quinn::Connection>>>;

/// What every task of an endpoint shares. The semaphores are the limits of
/// [`QuicLimits`]: a permit is a connection slot, a snapshot slot, or a byte
/// of an unfinished frame, a client request waiting for its answer or a
/// byte of one, held for as long as that thing exists.
struct Shared {
    id: NodeId,
    cluster_id: String,
    schema: u64,
    query_schema: u64,
    peers: BTreeMap<NodeId, SocketAddr>,
    stats: TransportStats,
    options: QuicOptions,
    limits: QuicLimits,
    /// `max_connections`.
    connections: Arc<Semaphore>,
    /// `max_client_connections`.
    client_connections: Arc<Semaphore>,
    /// `max_connections_per_peer`, per peer.
    peer_connections: BTreeMap<NodeId, Arc<Semaphore>>,
    /// `client_budget_bytes`.
    client_budget: Arc<Semaphore>,
    /// `peer_budget_bytes`, per peer.
    peer_budgets: BTreeMap<NodeId, Arc<Semaphore>>,
    /// `max_snapshot_receives`.
    snapshot_receives: Arc<Semaphore>,
    /// `max_client_requests`.
    client_requests: Arc<Semaphore>,
    /// `client_pending_bytes`.
    client_pending: Arc<Semaphore>,
    /// The newest message stream of each (peer, class): its connection's
    /// number and its stream id (invariant 7). At most one entry per peer
    /// and class.
    newest_streams: std::sync::Mutex<BTreeMap<(NodeId, bool), (u64, u64)>>,
    /// Numbers incoming connections in the order they arrive.
    next_connection: AtomicU64,
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
            let n = bump(&self.shared.stats.dropped_no_route);
            tracing::warn!(node = %self.shared.id, peer = %to, "cannot send a snapshot to an unknown node ({n} messages without a route so far)");
            return done(false);
        };
        let (endpoint, shared) = (self.endpoint.clone(), self.shared.clone());
        tokio::spawn(async move {
            // The whole transfer, the verdict included, has a deadline: a
            // receiver that stops reading cannot hold the sender forever.
            let limit = shared
                .limits
                .snapshot_deadline(snapshot.len)
                .saturating_add(shared.limits.snapshot_idle_timeout);
            let r = tokio::time::timeout(
                limit,
                stream_snapshot(&endpoint, &shared, to, addr, snapshot, install.term),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no verdict within {limit:?}")));
            if let Err(e) = &r {
                tracing::warn!(node = %shared.id, peer = %to, "snapshot transfer failed: {e}");
            }
            done(r.is_ok());
        });
    }

    fn send(&self, msg: Message) {
        let stats = &self.shared.stats;
        let Some(q) = self.queues.get(&msg.to) else {
            let n = bump(&stats.dropped_no_route);
            if sampled(n) {
                tracing::warn!(node = %self.shared.id, to = %msg.to, "dropped a message for a node this endpoint does not know ({n} so far)");
            }
            return;
        };
        let queue = match class_of(&msg) {
            StreamClass::Control => &q.control,
            StreamClass::Replication | StreamClass::Snapshot => &q.replication,
        };
        let to = msg.to;
        if queue.try_send(msg).is_err() {
            let n = bump(&stats.dropped_full);
            if sampled(n) {
                tracing::warn!(node = %self.shared.id, peer = %to, "dropped a message: the send queue is full ({n} so far; Raft resends)");
            }
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

    /// Bytes client streams hold in unfinished request frames now (at most
    /// `client_budget_bytes`).
    pub fn client_frame_bytes_held(&self) -> usize {
        self.shared.limits.client_budget_bytes - self.shared.client_budget.available_permits()
    }

    /// Bytes peer streams hold in unfinished frames now, over all peers
    /// (at most `peer_budget_bytes` each).
    pub fn peer_frame_bytes_held(&self) -> usize {
        self.shared
            .peer_budgets
            .values()
            .map(|b| self.shared.limits.peer_budget_bytes - b.available_permits())
            .sum()
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
        config.validate().map_err(QuicError::Config)?;
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
        config.validate().map_err(QuicError::Config)?;
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
        let limits = &config.limits;
        let shared = Arc::new(Shared {
            id: config.id,
            cluster_id: config.identity.cluster_id(),
            schema: config.schema,
            query_schema: config.query_schema,
            peers: config.peers.clone(),
            stats: TransportStats::default(),
            options: config.options.clone(),
            limits: limits.clone(),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            client_connections: Arc::new(Semaphore::new(limits.max_client_connections)),
            peer_connections: config
                .peers
                .keys()
                .filter(|p| **p != config.id)
                .map(|p| {
                    (
                        *p,
                        Arc::new(Semaphore::new(limits.max_connections_per_peer)),
                    )
                })
                .collect(),
            client_budget: Arc::new(Semaphore::new(limits.client_budget_bytes)),
            peer_budgets: config
                .peers
                .keys()
                .filter(|p| **p != config.id)
                .map(|p| (*p, Arc::new(Semaphore::new(limits.peer_budget_bytes))))
                .collect(),
            snapshot_receives: Arc::new(Semaphore::new(limits.max_snapshot_receives)),
            client_requests: Arc::new(Semaphore::new(limits.max_client_requests)),
            client_pending: Arc::new(Semaphore::new(limits.client_pending_bytes)),
            newest_streams: std::sync::Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
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
        files: Arc<dyn SnapshotFiles>,
    ) {
        self.accept_into(inbound, None, Some(files));
    }

    fn accept_into(
        &self,
        inbound: mpsc::Sender<Message>,
        node: Option<NodeHandle>,
        files: Option<Arc<dyn SnapshotFiles>>,
    ) {
        let endpoint = self.endpoint.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                // In arrival order, before anything else can reorder them
                // (invariant 7).
                let arrival = shared.next_connection.fetch_add(1, Ordering::Relaxed);
                // The total cap, before spending a handshake on it.
                let Ok(slot) = shared.connections.clone().try_acquire_owned() else {
                    let n = bump(&shared.stats.refused_connections);
                    if sampled(n) {
                        tracing::warn!(
                            node = %shared.id,
                            remote = %incoming.remote_address(),
                            "refused a connection: {} are open (max_connections); {n} refused so far",
                            shared.limits.max_connections
                        );
                    }
                    incoming.refuse();
                    continue;
                };
                let (shared, inbound, node, files) =
                    (shared.clone(), inbound.clone(), node.clone(), files.clone());
                tokio::spawn(handle_incoming(
                    incoming, arrival, slot, shared, inbound, node, files,
                ));
            }
        });
    }

    /// Closes every connection and the socket.
    pub fn close(&self) {
        self.endpoint
            .close(codes::SHUTDOWN.into(), b"shutting down");
    }
}

/// Encodes `m` into `buf` within `class`'s frame cap; a message that cannot
/// be encoded is counted and logged, and dropped (invariant 5).
fn encode_message(shared: &Shared, class: StreamClass, m: &Message, buf: &mut Vec<u8>) -> bool {
    let max = match class {
        StreamClass::Control => MAX_CONTROL_FRAME_BYTES,
        StreamClass::Replication | StreamClass::Snapshot => {
            shared.limits.max_replication_frame_bytes
        }
    };
    match frame::encode_within(m, buf, max) {
        Ok(()) => true,
        Err(e) => {
            let n = bump(&shared.stats.encode_failures);
            tracing::error!(
                node = %shared.id,
                peer = %m.to,
                term = %m.term,
                ?class,
                "dropped a message that cannot be sent ({n} so far): {e}"
            );
            false
        }
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
                let mut stale = 0u64;
                while rx.try_recv().is_ok() {
                    stale += 1;
                }
                if stale > 0 {
                    let n = shared
                        .stats
                        .dropped_full
                        .fetch_add(stale, Ordering::Relaxed)
                        + stale;
                    tracing::debug!(node = %shared.id, %peer, ?class, "dropped {stale} messages queued while the peer was unreachable ({n} dropped so far)");
                }
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
        if let Err(e) = frame::encode_within(&hello, &mut buf, MAX_CONTROL_FRAME_BYTES) {
            let n = bump(&shared.stats.encode_failures);
            tracing::error!(node = %shared.id, %peer, "cannot encode the stream hello ({n} encode failures so far): {e}");
            tokio::time::sleep(max_backoff).await;
            continue;
        }
        let mut n = u64::from(encode_message(&shared, class, &first, &mut buf));
        if stream.write_all(&buf).await.is_err() {
            continue;
        }
        if failures_logged {
            tracing::info!(node = %shared.id, %peer, ?class, "peer reachable again");
            failures_logged = false;
        }
        backoff = min_backoff;
        set_connected(Some(&conn));
        shared.stats.sent.fetch_add(n, Ordering::Relaxed);
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
            n = u64::from(encode_message(&shared, class, &m, &mut buf));
            while buf.len() < 1 << 20 {
                match rx.try_recv() {
                    Ok(m) => n += u64::from(encode_message(&shared, class, &m, &mut buf)),
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

/// Sends one snapshot file on a connection of its own, in chunks, and waits
/// for the receiver's verdict; a reader thread and the writer share a queue
/// of two chunks, so memory stays bounded whatever the file's size.
async fn stream_snapshot(
    endpoint: &quinn::Endpoint,
    shared: &Shared,
    to: NodeId,
    addr: SocketAddr,
    mut snapshot: ha_core::node::OutgoingSnapshot,
    leader_term: Term,
) -> Result<(), String> {
    let conn = connect(endpoint, to, addr).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let _ = send.set_priority(-1);
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
    frame::encode_within(&hello, &mut buf, MAX_CONTROL_FRAME_BYTES).map_err(|e| e.to_string())?;
    frame::encode_within(&header, &mut buf, MAX_CONTROL_FRAME_BYTES).map_err(|e| e.to_string())?;
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
    // Writes fail when the receiver refuses and stops the stream; its
    // verdict then says why, so it is read either way.
    let written: Result<(), String> = async {
        send.write_all(&buf).await.map_err(|e| e.to_string())?;
        let mut sent = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.map_err(|e| format!("cannot read the snapshot: {e}"))?;
            sent += chunk.len() as u64;
            send.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        if sent != header.len {
            return Err(format!(
                "read {sent} bytes of a {}-byte snapshot",
                header.len
            ));
        }
        send.finish().map_err(|e| e.to_string())
    }
    .await;
    if written.is_err() {
        // Tell the receiver the file is incomplete (a no-op if it stopped).
        let _ = send.reset(codes::REFUSED.into());
    }
    // The receiver syncs the file before answering; allow it the time a
    // transfer of this size may take.
    let deadline = Instant::now().checked_add(shared.limits.snapshot_deadline(header.len));
    let limits = ReadLimits {
        max_bytes: MAX_CONTROL_FRAME_BYTES,
        budget: None,
        deadline: deadline.map_or(FrameDeadline::Never, FrameDeadline::At),
    };
    let verdict = frame::read_frame_with::<SnapshotVerdict>(&mut recv, &limits).await;
    match (verdict, written) {
        (Ok(Some(SnapshotVerdict::Accepted)), Ok(())) => Ok(()),
        (Ok(Some(SnapshotVerdict::Refused(why))), _) => {
            Err(format!("node {to} refused the snapshot: {why}"))
        }
        (_, Err(e)) => Err(e),
        (Ok(None), Ok(())) => Err(format!(
            "node {to} closed the snapshot stream without a verdict"
        )),
        (Err(e), Ok(())) => Err(format!("no verdict from node {to}: {e}")),
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

/// Closes `conn` for a limit it hit: counts in `counter`, logs, and closes
/// with `code`.
fn close_for(
    conn: &quinn::Connection,
    shared: &Shared,
    counter: &AtomicU64,
    code: u32,
    who: &str,
    why: &str,
) {
    let n = bump(counter);
    if sampled(n) {
        tracing::warn!(
            node = %shared.id,
            peer = who,
            remote = %conn.remote_address(),
            "closing a connection: {why} ({n} such so far)"
        );
    }
    conn.close(code.into(), why.as_bytes());
}

/// Handles one connection from the handshake on, holding `slot` (of
/// `max_connections`) until it ends.
async fn handle_incoming(
    incoming: quinn::Incoming,
    arrival: u64,
    slot: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    node: Option<NodeHandle>,
    files: Option<Arc<dyn SnapshotFiles>>,
) {
    let _slot = slot;
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
        return protocol_violation(&conn, &shared, "unidentified", "no certificate");
    };
    match alpn(&conn).as_deref() {
        Some(p) if p == ALPN_PEER => {
            // Which member the certificate names decides whose slots it
            // takes; the hello must then claim that same member.
            let Some(peer) = shared
                .peer_connections
                .keys()
                .copied()
                .find(|id| tls::cert_names(&cert, &node_server_name(*id)))
            else {
                return protocol_violation(
                    &conn,
                    &shared,
                    "unidentified",
                    "the certificate names no member of this cluster",
                );
            };
            let who = node_server_name(peer);
            let Ok(_peer_slot) = shared.peer_connections[&peer].clone().try_acquire_owned() else {
                let why = format!(
                    "too many connections from this peer (max_connections_per_peer {})",
                    shared.limits.max_connections_per_peer
                );
                return close_for(
                    &conn,
                    &shared,
                    &shared.stats.refused_connections,
                    codes::BUSY,
                    &who,
                    &why,
                );
            };
            conn.set_max_concurrent_bi_streams(shared.options.max_peer_streams.into());
            peer_connection(conn, arrival, peer, shared, inbound, files).await;
        }
        Some(p) if p == ALPN_CLIENT => {
            let Some(node) = node else {
                return conn.close(codes::PROTOCOL.into(), b"no service for clients here");
            };
            let Ok(_client_slot) = shared.client_connections.clone().try_acquire_owned() else {
                let why = format!(
                    "too many client connections (max_client_connections {})",
                    shared.limits.max_client_connections
                );
                return close_for(
                    &conn,
                    &shared,
                    &shared.stats.refused_connections,
                    codes::BUSY,
                    "client",
                    &why,
                );
            };
            client_connection(conn, shared, node).await;
        }
        _ => protocol_violation(&conn, &shared, "unidentified", "unknown protocol"),
    }
}

fn protocol_violation(conn: &quinn::Connection, shared: &Shared, who: &str, why: &str) {
    shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        node = %shared.id,
        peer = who,
        remote = %conn.remote_address(),
        "closing a connection for breaking the protocol: {why}"
    );
    conn.close(codes::PROTOCOL.into(), why.as_bytes());
}

/// Closes `conn` for a frame that failed to arrive (`what` names it); a
/// stream or connection that went away is no one's fault and only logged
/// at debug level.
fn frame_failed(conn: &quinn::Connection, shared: &Shared, who: &str, what: &str, e: FrameError) {
    match e {
        FrameError::Stream(e) => {
            tracing::debug!(node = %shared.id, peer = who, "{what}: the stream went away: {e}");
        }
        FrameError::TimedOut => close_for(
            conn,
            shared,
            &shared.stats.frame_timeouts,
            codes::TIMEOUT,
            who,
            &format!("{what} did not arrive in time"),
        ),
        e @ FrameError::OverBudget { .. } => close_for(
            conn,
            shared,
            &shared.stats.budget_exhausted,
            codes::BUSY,
            who,
            &format!("{what}: {e}"),
        ),
        e => protocol_violation(conn, shared, who, &format!("{what}: {e}")),
    }
}

/// Accepts the streams of one peer connection: unidirectional ones for
/// messages, bidirectional ones for snapshots.
async fn peer_connection(
    conn: quinn::Connection,
    arrival: u64,
    peer: NodeId,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    files: Option<Arc<dyn SnapshotFiles>>,
) {
    loop {
        let (recv, send) = tokio::select! {
            s = conn.accept_uni() => match s {
                Ok(recv) => (recv, None),
                Err(_) => return,
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => (recv, Some(send)),
                Err(_) => return,
            },
        };
        tokio::spawn(peer_stream(
            recv,
            send,
            conn.clone(),
            arrival,
            peer,
            shared.clone(),
            inbound.clone(),
            files.clone(),
        ));
    }
}

/// Counts and logs a stream that a newer one of the same peer and class
/// superseded (invariant 7); the stream then ends.
/// `what` says what was not delivered.
fn superseded(shared: &Shared, who: &str, what: &str) {
    let n = bump(&shared.stats.dropped_superseded);
    if sampled(n) {
        tracing::warn!(node = %shared.id, peer = %who, "{what}: the peer has since opened a newer stream of its class, and this one ends ({n} so far)");
    }
}

// A task's entry point: its arguments are the state it owns.
#[allow(clippy::too_many_arguments)]
async fn peer_stream(
    mut recv: quinn::RecvStream,
    send: Option<quinn::SendStream>,
    conn: quinn::Connection,
    arrival: u64,
    peer: NodeId,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    files: Option<Arc<dyn SnapshotFiles>>,
) {
    let opened = Instant::now();
    let Some(budget) = shared.peer_budgets.get(&peer).cloned() else {
        let who = node_server_name(peer);
        return protocol_violation(&conn, &shared, &who, "a stream from an unknown node id");
    };
    let first = |max_bytes| ReadLimits {
        max_bytes,
        budget: Some(&budget),
        deadline: opened
            .checked_add(shared.limits.peer_frame_timeout)
            .map_or(FrameDeadline::Never, FrameDeadline::At),
    };
    let who = node_server_name(peer);
    let hello: PeerHello =
        match frame::read_frame_with(&mut recv, &first(MAX_CONTROL_FRAME_BYTES)).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => return frame_failed(&conn, &shared, &who, "the stream's hello", e),
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
    if hello.from != peer {
        return protocol_violation(
            &conn,
            &shared,
            &who,
            "the certificate does not name the node id the hello claims",
        );
    }
    let max_bytes = match (hello.class, send) {
        (StreamClass::Control, None) => MAX_CONTROL_FRAME_BYTES,
        (StreamClass::Replication, None) => shared.limits.max_replication_frame_bytes,
        (StreamClass::Snapshot, Some(send)) => {
            return receive_snapshot(
                recv, send, conn, hello, &who, shared, inbound, files, opened,
            )
            .await;
        }
        (class, _) => {
            return protocol_violation(
                &conn,
                &shared,
                &who,
                &format!("{class:?} traffic on the wrong kind of stream"),
            );
        }
    };
    let limits = ReadLimits {
        max_bytes,
        budget: Some(&budget),
        deadline: FrameDeadline::AfterFirstByte(shared.limits.peer_frame_timeout),
    };
    // Invariant 7: this stream becomes the peer's newest of its class,
    // unless a newer one already is.
    let key = (peer, hello.class == StreamClass::Replication);
    let number = (arrival, recv.id().index());
    {
        let mut newest = shared
            .newest_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if newest.get(&key).is_some_and(|n| *n > number) {
            drop(newest);
            return superseded(&shared, &who, "refused a stream at its hello");
        }
        newest.insert(key, number);
    }
    loop {
        match frame::read_frame_with::<Message>(&mut recv, &limits).await {
            Ok(Some(m)) => {
                if m.from != hello.from || m.to != shared.id {
                    return protocol_violation(
                        &conn,
                        &shared,
                        &who,
                        "message does not match its stream's hello",
                    );
                }
                if matches!(m.body, Body::InstallSnapshot { .. }) {
                    // Only a snapshot stream may say this, after its file
                    // arrived and verified.
                    return protocol_violation(
                        &conn,
                        &shared,
                        &who,
                        "InstallSnapshot outside a snapshot stream",
                    );
                }
                // The check and the enqueue under one lock: a newer stream
                // registers under it too (invariant 7).
                let newest = shared
                    .newest_streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if newest.get(&key) != Some(&number) {
                    drop(newest);
                    return superseded(&shared, &who, "dropped a message, undelivered");
                }
                shared.stats.received.fetch_add(1, Ordering::Relaxed);
                // A full inbox drops (the core is behind; Raft resends).
                let sent = inbound.try_send(m);
                drop(newest);
                if sent.is_err() {
                    let n = bump(&shared.stats.dropped_inbound);
                    if sampled(n) {
                        tracing::warn!(node = %shared.id, peer = %who, "dropped a message: the node's inbox is full or closed ({n} so far; Raft resends)");
                    }
                }
            }
            Ok(None) => return,
            Err(e) => return frame_failed(&conn, &shared, &who, "a message", e),
        }
    }
}

/// A piece of a snapshot file for the thread that writes it.
enum Piece {
    /// The next bytes.
    Data(bytes::Bytes),
    /// Every byte arrived: verify and publish. A queue closed without this
    /// aborts the file (and removes it).
    End,
}

/// Writes one incoming snapshot on a blocking thread (file writes and
/// syncs must not stall a tokio worker).
fn store_snapshot(
    files: Arc<dyn SnapshotFiles>,
    index: LogIndex,
    term: Term,
    mut pieces: mpsc::Receiver<Piece>,
) -> Result<(), String> {
    let mut writer = files.begin(index, term)?;
    loop {
        match pieces.blocking_recv() {
            Some(Piece::Data(b)) => writer.write(&b)?,
            Some(Piece::End) => return writer.finish(),
            None => return Err("the transfer was abandoned".into()),
        }
    }
}

/// Receives one snapshot file and answers with a [`SnapshotVerdict`].
#[allow(clippy::too_many_arguments)]
async fn receive_snapshot(
    mut recv: quinn::RecvStream,
    mut send: quinn::SendStream,
    conn: quinn::Connection,
    hello: PeerHello,
    who: &str,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    files: Option<Arc<dyn SnapshotFiles>>,
    opened: Instant,
) {
    let r = take_snapshot(
        &mut recv, &conn, &hello, who, &shared, &inbound, files, opened,
    )
    .await;
    let verdict = match r {
        Ok(()) => {
            bump(&shared.stats.snapshots_received);
            SnapshotVerdict::Accepted
        }
        Err(mut why) => {
            let n = bump(&shared.stats.snapshots_refused);
            tracing::warn!(node = %shared.id, peer = who, "refused a snapshot: {why} ({n} refused so far)");
            let _ = recv.stop(codes::REFUSED.into());
            if why.len() > MAX_VERDICT_REASON_BYTES {
                let mut cut = MAX_VERDICT_REASON_BYTES;
                while !why.is_char_boundary(cut) {
                    cut -= 1;
                }
                why.truncate(cut);
            }
            SnapshotVerdict::Refused(why)
        }
    };
    let mut buf = Vec::new();
    if frame::encode_within(&verdict, &mut buf, MAX_CONTROL_FRAME_BYTES).is_ok() {
        let write = tokio::time::timeout(shared.limits.peer_frame_timeout, send.write_all(&buf));
        if matches!(write.await, Ok(Ok(()))) {
            let _ = send.finish();
        }
    }
}

/// The receiving side of a snapshot transfer: checks, stores, hands the
/// node its `InstallSnapshot`; `Err` says why not.
#[allow(clippy::too_many_arguments)]
async fn take_snapshot(
    recv: &mut quinn::RecvStream,
    conn: &quinn::Connection,
    hello: &PeerHello,
    who: &str,
    shared: &Shared,
    inbound: &mpsc::Sender<Message>,
    files: Option<Arc<dyn SnapshotFiles>>,
    opened: Instant,
) -> Result<(), String> {
    let Some(files) = files else {
        return Err("this endpoint takes no snapshots".into());
    };
    let Some(budget) = shared.peer_budgets.get(&hello.from) else {
        return Err("a snapshot from an unknown node id".into());
    };
    let limits = ReadLimits {
        max_bytes: MAX_CONTROL_FRAME_BYTES,
        budget: Some(budget),
        deadline: opened
            .checked_add(shared.limits.peer_frame_timeout)
            .map_or(FrameDeadline::Never, FrameDeadline::At),
    };
    let header: SnapshotHeader = match frame::read_frame_with(recv, &limits).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err("the stream ended before the snapshot header".into()),
        Err(e) => {
            let why = format!("bad snapshot header: {e}");
            frame_failed(conn, shared, who, "the snapshot header", e);
            return Err(why);
        }
    };
    let max = shared.limits.max_snapshot_bytes;
    if header.len > max {
        return Err(format!(
            "a snapshot of {} bytes is too large: the limit is {max} (max_snapshot_bytes)",
            header.len
        ));
    }
    let Ok(_receiving) = shared.snapshot_receives.clone().try_acquire_owned() else {
        return Err(format!(
            "busy: {} snapshot transfers in progress (max_snapshot_receives)",
            shared.limits.max_snapshot_receives
        ));
    };
    let (tx, rx) = mpsc::channel(SNAPSHOT_WRITE_QUEUE);
    let (index, term) = (header.index, header.term);
    let writer = tokio::task::spawn_blocking(move || store_snapshot(files, index, term, rx));
    let idle = shared.limits.snapshot_idle_timeout;
    let overall = opened.checked_add(shared.limits.snapshot_deadline(header.len));
    let mut got = 0u64;
    let received: Result<(), String> = loop {
        let idle_until = Instant::now() + idle;
        let until = overall.map_or(idle_until, |o| o.min(idle_until));
        let chunk =
            match tokio::time::timeout_at(until, recv.read_chunk(SNAPSHOT_CHUNK_BYTES, true)).await
            {
                Err(_) => {
                    bump(&shared.stats.snapshot_timeouts);
                    break Err(format!(
                        "the transfer stalled after {got} of {} bytes (no bytes for {idle:?}, or \
                     past its deadline of {:?})",
                        header.len,
                        shared.limits.snapshot_deadline(header.len)
                    ));
                }
                Ok(Err(e)) => break Err(format!("the transfer broke: {e}")),
                Ok(Ok(None)) if got == header.len => {
                    // The writer may have failed meanwhile; its error says so.
                    let _ = tx.send(Piece::End).await;
                    break Ok(());
                }
                Ok(Ok(None)) => {
                    break Err(format!(
                        "the transfer ended after {got} of {} bytes",
                        header.len
                    ));
                }
                Ok(Ok(Some(c))) => c.bytes,
            };
        got += chunk.len() as u64;
        if got > header.len {
            protocol_violation(conn, shared, who, "snapshot longer than announced");
            break Err("the snapshot is longer than announced".into());
        }
        if tx.send(Piece::Data(chunk)).await.is_err() {
            // The writer gave up; its error says why.
            break Ok(());
        }
    };
    // Closing the queue without `End` makes the writer abandon the file and
    // remove it; waiting for it means nothing is left behind.
    drop(tx);
    let stored = writer
        .await
        .unwrap_or_else(|e| Err(format!("the snapshot writer failed: {e}")));
    received?;
    stored.map_err(|e| {
        tracing::error!(node = %shared.id, peer = who, "cannot store a snapshot: {e}");
        format!("cannot store the snapshot: {e}")
    })?;
    inbound
        .try_send(Message {
            from: hello.from,
            to: shared.id,
            term: header.leader_term,
            body: Body::InstallSnapshot {
                index: header.index,
                term: header.term,
            },
        })
        .map_err(|_| {
            bump(&shared.stats.dropped_inbound);
            "the node's inbox is full or closed".to_string()
        })
}

/// Accepts the request streams of one client connection.
async fn client_connection(conn: quinn::Connection, shared: Arc<Shared>, node: NodeHandle) {
    // Clients only open request streams (see `tls`).
    conn.set_max_concurrent_uni_streams(0u32.into());
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    let (shared, node, conn) = (shared.clone(), node.clone(), conn.clone());
                    tokio::spawn(client_stream(send, recv, conn, shared, node));
                }
                Err(_) => return,
            },
            s = conn.accept_uni() => match s {
                Ok(_) => {
                    return protocol_violation(
                        &conn,
                        &shared,
                        "client",
                        "clients may not open unidirectional streams",
                    );
                }
                Err(_) => return,
            },
        }
    }
}

/// One client request: read within its limits, answered, or refused.
async fn client_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    conn: quinn::Connection,
    shared: Arc<Shared>,
    node: NodeHandle,
) {
    let limits = ReadLimits {
        max_bytes: shared.limits.max_request_bytes,
        budget: Some(&shared.client_budget),
        deadline: Instant::now()
            .checked_add(shared.limits.client_request_timeout)
            .map_or(FrameDeadline::Never, FrameDeadline::At),
    };
    let (req, len) = match frame::read_frame_sized::<ClientRequest>(&mut recv, &limits).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(FrameError::TooLarge { len, max }) => {
            // Refused on its length alone: the body is never read.
            let n = bump(&shared.stats.requests_too_large);
            if sampled(n) {
                tracing::warn!(node = %shared.id, remote = %conn.remote_address(), "refused a client request of {len} bytes: the limit is {max} (max_request_bytes); {n} refused so far");
            }
            let _ = recv.stop(codes::REFUSED.into());
            let message = format!(
                "request too large: {len} bytes, and this node takes at most {max} \
                 (max_request_bytes); nothing was applied"
            );
            return respond(&mut send, &shared, ClientResponse::Refused { message }).await;
        }
        Err(FrameError::TimedOut) => {
            let n = bump(&shared.stats.frame_timeouts);
            if sampled(n) {
                tracing::warn!(node = %shared.id, remote = %conn.remote_address(), "closed a client stream whose request did not arrive within {:?} ({n} frame timeouts so far)", shared.limits.client_request_timeout);
            }
            let _ = recv.stop(codes::TIMEOUT.into());
            let _ = send.reset(codes::TIMEOUT.into());
            return;
        }
        Err(e) => return frame_failed(&conn, &shared, "client", "a client request", e),
    };
    // A request that waits for the node holds a slot and its bytes until it
    // is answered: it outlives its connection, so these bound what clients
    // can leave behind. A status answer never waits.
    let _held = if matches!(req, ClientRequest::Status) {
        None
    } else {
        match hold_request(&shared, len) {
            Ok(held) => Some(held),
            Err(limit) => {
                let n = bump(&shared.stats.requests_busy);
                if sampled(n) {
                    tracing::warn!(node = %shared.id, remote = %conn.remote_address(), "answered a client request busy: {limit}; {n} so far");
                }
                let message =
                    format!("busy: {limit} on this node; the request was not taken, retry later");
                return respond(&mut send, &shared, ClientResponse::Busy { message }).await;
            }
        }
    };
    let wait = shared.limits.client_request_timeout;
    let resp = match tokio::time::timeout(wait, answer(req, &shared, &node)).await {
        Ok(resp) => resp,
        Err(_) => {
            let n = bump(&shared.stats.answer_timeouts);
            if sampled(n) {
                tracing::warn!(node = %shared.id, "a client request got no answer from the node within {wait:?} ({n} so far)");
            }
            ClientResponse::Failed {
                not_applied: false,
                message: format!(
                    "the node gave no answer within {wait:?}; the request may still take effect"
                ),
            }
        }
    };
    respond(&mut send, &shared, resp).await;
}

/// A slot of `max_client_requests` and `len` bytes of
/// `client_pending_bytes`, or which limit was reached.
fn hold_request(
    shared: &Shared,
    len: usize,
) -> Result<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>), String> {
    let slot = shared
        .client_requests
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            format!(
                "{} requests are waiting for answers (max_client_requests)",
                shared.limits.max_client_requests
            )
        })?;
    let bytes = match u32::try_from(len) {
        Ok(0) => None,
        Ok(n) => shared.client_pending.clone().try_acquire_many_owned(n).ok(),
        Err(_) => None,
    };
    if len > 0 && bytes.is_none() {
        return Err(format!(
            "requests waiting for answers hold {} bytes (client_pending_bytes)",
            shared.limits.client_pending_bytes
        ));
    }
    Ok((slot, bytes))
}

/// Sends `resp` and ends the stream; a response too large to encode is
/// counted, logged, and replaced by a failure saying so.
async fn respond(send: &mut quinn::SendStream, shared: &Shared, resp: ClientResponse) {
    let mut buf = Vec::new();
    if let Err(e) = frame::encode(&resp, &mut buf) {
        let n = bump(&shared.stats.encode_failures);
        tracing::error!(node = %shared.id, "cannot send a response ({n} encode failures so far): {e}");
        let failed = ClientResponse::Failed {
            not_applied: false,
            message: format!("the node cannot send its answer: {e}"),
        };
        if frame::encode(&failed, &mut buf).is_err() {
            let _ = send.reset(codes::REFUSED.into());
            return;
        }
    }
    // A client that does not read its response loses the stream.
    let write = tokio::time::timeout(shared.limits.client_request_timeout, send.write_all(&buf));
    match write.await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        Ok(Err(_)) => {}
        Err(_) => {
            let n = bump(&shared.stats.frame_timeouts);
            if sampled(n) {
                tracing::warn!(node = %shared.id, "closed a client stream that did not take its response within {:?} ({n} frame timeouts so far)", shared.limits.client_request_timeout);
            }
            let _ = send.reset(codes::TIMEOUT.into());
        }
    }
}

fn not_leader(shared: &Shared, leader: Option<NodeId>) -> ClientResponse {
    ClientResponse::NotLeader {
        leader: leader.map(|l| l.0),
        leader_addr: leader.and_then(|l| shared.peers.get(&l).copied()),
    }
}

async fn answer(req: ClientRequest, shared: &Shared, node: &NodeHandle) -> ClientResponse {
    let failed = |e: NodeError| match e {
        // Retrying cannot help: answered as refused, not as a failure the
        // client would retry until its deadline. A query's own error (it
        // panicked, it cannot be decoded, the service is halted) is the
        // same on every node.
        NodeError::TooLarge { .. } | NodeError::Query(_) => ClientResponse::Refused {
            message: e.to_string(),
        },
        _ => ClientResponse::Failed {
            not_applied: e.is_not_applied(),
            message: e.to_string(),
        },
    };
    let refused = |message: String| {
        let n = bump(&shared.stats.requests_refused);
        if sampled(n) {
            tracing::warn!(node = %shared.id, "refused a client request: {message} ({n} refused so far)");
        }
        ClientResponse::Refused { message }
    };
    match req {
        ClientRequest::Command { schema, .. }
        | ClientRequest::Register { schema, .. }
        | ClientRequest::Resume { schema, .. }
        | ClientRequest::SetPanicPolicy { schema, .. }
            if schema != shared.schema =>
        {
            refused(format!(
                "the client was built for stored schema {schema:016x} but the cluster runs \
                 {:016x}: its commands would be misread; rebuild the client with the same \
                 version of the replicated type",
                shared.schema
            ))
        }
        ClientRequest::Query { schema, .. } if schema != shared.query_schema => refused(format!(
            "the client was built for query schema {schema:016x} but the cluster runs \
                 {:016x}: its queries would be misread; rebuild the client with the same \
                 version of the replicated type",
            shared.query_schema
        )),
        // Raw bytes in the log would bypass sessions and could carry a
        // forged leader timestamp: only raw (schema 0) nodes take them.
        ClientRequest::Propose(_) if shared.schema != 0 => refused(format!(
            "raw proposals are refused by a node of a replicated type (schema {:016x}); \
             send commands through a client of that type",
            shared.schema
        )),
        ClientRequest::Resume { .. } | ClientRequest::SetPanicPolicy { .. }
            if shared.schema == 0 =>
        {
            refused("a raw node runs no replicated type: it has no panic policy".into())
        }
        ClientRequest::Command { .. }
        | ClientRequest::Register { .. }
        | ClientRequest::Resume { .. }
        | ClientRequest::SetPanicPolicy { .. } => {
            let op = match req {
                ClientRequest::Command { command, .. } => LogOp::Command(command),
                ClientRequest::Register { secret, .. } => LogOp::Register { secret },
                ClientRequest::Resume { index, nonce, .. } => LogOp::Resume { index, nonce },
                ClientRequest::SetPanicPolicy { policy, nonce, .. } => {
                    LogOp::SetPanicPolicy { policy, nonce }
                }
                // Not reached (the arm matched one of the two); refusing
                // keeps the node free of panics on client input.
                _ => return refused("unexpected request".into()),
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
            // Only the encoded copy waits for the commit.
            drop(entry);
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
            ClientResponse::Status(Box::new(StatusView {
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
                repairing: s.repair_found.clone(),
                halted: s.halted.clone(),
                panic_policy: s.panic_policy.map(|p| {
                    match p {
                        ha_core::sm::PanicPolicy::Continue => "continue",
                        ha_core::sm::PanicPolicy::Halt => "halt",
                    }
                    .to_string()
                }),
                divergences: s.divergences,
                availability: ha_core::protocol::AvailabilityView {
                    leaderless_ms: a.leaderless_ms,
                    failovers: a.failovers,
                    mttr_ms: a.mttr_ms,
                    mtbf_ms: a.mtbf_ms,
                    availability: a.availability,
                },
            }))
        }
    }
}
