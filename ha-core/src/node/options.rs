//! A node's settings ([`NodeOptions`]) and where it keeps its log
//! ([`NodeStorage`]).

use std::sync::Arc;
use std::time::Duration;

use crate::raft::{Config, Membership};
use crate::storage::vfs::Vfs;
use crate::storage::{MemLogStore, Wal};
use crate::types::NodeId;

/// Where the node keeps its log.
pub enum NodeStorage<V: Vfs> {
    /// In memory (tests, benchmarks): nothing survives the process;
    /// snapshots live in an in-memory file system.
    Memory(MemLogStore),
    /// The durable write-ahead log and a durable snapshot directory. (There
    /// is deliberately no "durable log, in-memory snapshots" form: the log
    /// is compacted against snapshots, so after a restart such a node would
    /// find its log cut and no snapshot to start from.)
    Durable {
        /// The log.
        wal: Wal<V>,
        /// The snapshots (see [`super::recover`] for starting from them).
        snapshots: Arc<dyn super::SnapshotFiles>,
    },
}

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Core settings (the id among them).
    pub raft: Config,
    /// The configuration the cluster was bootstrapped with (in force until
    /// the first configuration entry, where no snapshot names another);
    /// empty for a node waiting to be added (`joining`).
    pub membership: Membership,
    /// The node was started to be added to a running cluster: it starts in
    /// no configuration and waits for a leader's entries (an empty
    /// `membership` is refused otherwise).
    pub joining: bool,
    /// Wall-clock length of one logical tick.
    pub tick: Duration,
    /// Depth of the inbound message queue.
    pub inbound_queue: usize,
    /// Bytes the inbound queue holds at most, counted as the messages sit
    /// in memory ([`Message::approx_bytes`](crate::raft::Message::approx_bytes));
    /// a message beyond it is dropped and counted (Raft resends).
    pub inbound_queue_bytes: usize,
    /// Depth of the command queue.
    pub command_queue: usize,
    /// Snapshot the state and compact the log after this many entries
    /// applied since the last snapshot (`None`: never on a count; the
    /// storage quota still calls for one when the log nears it).
    pub snapshot_every_entries: Option<u64>,
    /// The storage quota: the bytes of log entries held since the last
    /// snapshot (on disk in the log, and in memory in the core) above which
    /// the leader refuses new commands with [`NodeError::NoSpace`](super::NodeError::NoSpace) while
    /// reads go on (etcd's NOSPACE alarm). Snapshots compact the log and
    /// lift it. `None`: no quota.
    pub storage_quota_bytes: Option<u64>,
    /// A snapshot transfer the transport has not reported within this time,
    /// plus one second per MiB of the snapshot, counts as failed (the
    /// transport's own deadlines should end it sooner; this is the
    /// backstop). Above zero.
    pub snapshot_transfer_timeout: Duration,
    /// The largest command a proposal may carry (at most
    /// [`MAX_COMMAND_BYTES`](crate::storage::wal::MAX_COMMAND_BYTES), what a
    /// log record holds). A transport lowers it to what it can replicate.
    pub max_command_bytes: usize,
    /// A node of a replicated type replays every command whose log index
    /// is a multiple of this on a copy of its state and reports a command
    /// that is not deterministic (0: never; see
    /// [`Sessions::with_determinism_check`](crate::sm::Sessions::with_determinism_check)).
    /// Every 16th in debug builds, never in release.
    pub determinism_check_every: u64,
}

/// The default byte bound of the inbound queue: 256 MiB.
pub const DEFAULT_INBOUND_QUEUE_BYTES: usize = 256 << 20;

/// The default storage quota: 2 GiB of log beyond the last snapshot (etcd's
/// default backend quota).
pub const DEFAULT_STORAGE_QUOTA_BYTES: u64 = 2 << 30;

impl NodeOptions {
    /// Defaults for node `id` in a cluster of `voters`: a 50 ms tick,
    /// heartbeats every tick, elections after 300–600 ms.
    pub fn new(id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> NodeOptions {
        NodeOptions {
            raft: Config::new(id),
            membership: Membership::new_voters(voters),
            joining: false,
            tick: Duration::from_millis(50),
            inbound_queue: 8192,
            inbound_queue_bytes: DEFAULT_INBOUND_QUEUE_BYTES,
            command_queue: 8192,
            snapshot_every_entries: None,
            storage_quota_bytes: Some(DEFAULT_STORAGE_QUOTA_BYTES),
            snapshot_transfer_timeout: Duration::from_secs(3600),
            max_command_bytes: crate::storage::wal::MAX_COMMAND_BYTES,
            determinism_check_every: crate::sm::DEFAULT_DETERMINISM_CHECK_EVERY,
        }
    }

    /// Turns lease reads on (see [`Raft::read_lease`](crate::raft::Raft::read_lease)),
    /// with clocks whose rates differ by at most `max_clock_drift_ppm`
    /// parts per million, for the current `tick` (set the tick and the
    /// election timeout first, and the same on every node). The lease is
    /// `(election_timeout_min_ticks - 1)` ticks shortened by the drift
    /// bound; [`Config::validate`] refuses a bound outside
    /// [`MIN_CLOCK_DRIFT_PPM`](crate::raft::MIN_CLOCK_DRIFT_PPM)..=[`MAX_CLOCK_DRIFT_PPM`](crate::raft::MAX_CLOCK_DRIFT_PPM).
    pub fn with_lease_reads(mut self, max_clock_drift_ppm: u32) -> NodeOptions {
        self.raft.lease = Some(crate::raft::LeaseConfig {
            tick_nanos: u64::try_from(self.tick.as_nanos()).unwrap_or(u64::MAX),
            max_clock_drift_ppm,
        });
        self
    }
}
