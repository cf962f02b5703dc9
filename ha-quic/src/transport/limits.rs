//! The endpoint's settings ([`QuicConfig`]) and resource limits
//! ([`QuicLimits`]), each checked before the endpoint starts, and its
//! errors.

use super::*;

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
    /// Handshakes in progress at once (default 256); more are refused, and
    /// once half are taken a sender must first prove its address (a QUIC
    /// Retry, which costs this node no state). Anyone who can send UDP can
    /// start a handshake; this keeps them from holding the connection
    /// slots. Peers' IP addresses have a reserve of 16 more.
    pub max_handshakes: usize,
    /// Client connections open at once (default 512); more are closed after
    /// the handshake.
    pub max_client_connections: usize,
    /// Connections one peer node may have open at once (default 8: control,
    /// replication, a snapshot, and the overlap of reconnects).
    pub max_connections_per_peer: usize,
    /// Bytes all client streams together may hold in unfinished request
    /// frames (default 256 MiB). A connection whose frame cannot be paid
    /// for is closed. One connection may hold at most half of it (and
    /// never less than one largest request): see
    /// [`QuicLimits::client_share_bytes`].
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
            max_handshakes: 256,
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
    /// Bytes of unfinished request frames one client connection may hold:
    /// half of `client_budget_bytes`, at least one largest request, at most
    /// the whole budget. With 256 requests open on a connection, one
    /// connection alone could otherwise take the whole budget, and honest
    /// clients' frames would be refused (their connections closed). Half
    /// keeps what 64 streams allowed before: 85 largest requests (1.5 MiB)
    /// arriving at once on one connection at the defaults; more, and that
    /// connection is closed like one over the whole budget.
    pub fn client_share_bytes(&self) -> usize {
        (self.client_budget_bytes / 2)
            .max(self.max_request_bytes)
            .min(self.client_budget_bytes)
            .min(tokio::sync::Semaphore::MAX_PERMITS)
    }

    /// Checks the relations between the limits, for a node with `peers`
    /// other nodes.
    pub fn validate(&self, peers: usize) -> Result<(), LimitsError> {
        if self.max_request_bytes == 0 {
            return Err(LimitsError("max_request_bytes must be at least 1".into()));
        }
        self.validate_times()
            .and_then(|()| self.validate_frames())
            .and_then(|()| self.validate_counts(peers))
            .and_then(|()| self.validate_budgets())
            .map_err(LimitsError)
    }

    fn validate_times(&self) -> Result<(), String> {
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

    fn validate_frames(&self) -> Result<(), String> {
        let min_frame = min_replication_frame_bytes(self.max_request_bytes, self.max_append_bytes);
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
        Ok(())
    }

    fn validate_counts(&self, peers: usize) -> Result<(), String> {
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
            ("max_handshakes", self.max_handshakes),
        ] {
            if v == 0 || v > Semaphore::MAX_PERMITS {
                return Err(format!(
                    "{name} must be at least 1 and at most {}",
                    Semaphore::MAX_PERMITS
                ));
            }
        }
        Ok(())
    }

    fn validate_budgets(&self) -> Result<(), String> {
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
    /// How members' DNS names are resolved (the system's resolver by
    /// default).
    pub resolver: crate::resolve::Resolver,
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
            resolver: crate::resolve::Resolver::default(),
        }
    }

    /// Checks the settings (the limits' relations among them).
    pub fn validate(&self) -> Result<(), LimitsError> {
        let peers = self.peers.keys().filter(|p| **p != self.id).count();
        self.limits.validate(peers)?;
        if self.options.max_client_streams == 0 || self.options.max_peer_streams == 0 {
            return Err(LimitsError(
                "max_client_streams and max_peer_streams must be at least 1".into(),
            ));
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
    Config(#[from] LimitsError),
}

ha_core::debug_as_display!(QuicError);

/// Why limits or an endpoint's settings were refused: one line naming the
/// setting and what it must be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitsError(pub String);
