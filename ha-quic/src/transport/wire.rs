//! What travels between nodes besides Raft messages: the stream hello, the
//! snapshot header and verdict, the close codes, and the stream classes.
//! Everything here is read from the network: every field is checked by
//! whoever reads it before it is used.

use super::*;

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
pub(super) const SNAPSHOT_WRITE_QUEUE: usize = 2;

/// Longest refusal reason sent in a [`SnapshotVerdict`].
pub(super) const MAX_VERDICT_REASON_BYTES: usize = 1024;

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
