//! The public face of a running node: [`NodeHandle`] (proposals, reads,
//! queries, status, metrics, shutdown), what it reports ([`NodeStatus`],
//! [`NodeMetrics`]) and why a call failed ([`NodeError`]).
//!
//! Owns: the commands a handle sends to the node task, and the numbers the
//! task shares with its handles. A handle never touches the core: every
//! call is a message to the task, on a bounded channel (callers wait when
//! it is full).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::{Availability, AvailabilityReport, Histogram, HistogramSnapshot};
use crate::raft::RoleKind;
use crate::types::{LogIndex, NodeId, Term};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a proposal or read failed.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// This node is not the leader; the command certainly did not take effect.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The node is overloaded; the command certainly did not take effect.
    #[error("busy: too many uncommitted entries")]
    Busy,
    /// The log is over the storage quota
    /// ([`NodeOptions::storage_quota_bytes`](super::NodeOptions::storage_quota_bytes)); the command certainly did
    /// not take effect. Reads still work; a snapshot lifts it.
    #[error("no space: the log holds {held} bytes, over the storage quota of {quota}")]
    NoSpace {
        /// Bytes held.
        held: u64,
        /// The quota.
        quota: u64,
    },
    /// The command is larger than any log entry may be; it certainly did
    /// not take effect.
    #[error("command of {bytes} bytes is too large (at most {max})")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Another entry committed at the command's index: it never will.
    #[error("the command was overwritten by a newer leader")]
    Overwritten,
    /// A snapshot from a newer leader replaced this node's log past the
    /// command's index before its outcome was seen here: it may or may not
    /// have been applied. (Retrying with the same session numbers tells.)
    #[error("a snapshot from the leader replaced the log before the command's outcome was known")]
    Superseded,
    /// Leadership was lost before the read was confirmed.
    #[error("leadership lost before the read was confirmed")]
    ReadAborted,
    /// The node stopped (shut down or its storage failed); the outcome of
    /// anything in flight is unknown.
    #[error("the node stopped: {0}")]
    Stopped(StopReason),
    /// The query could not run (it did not decode).
    #[error("query failed: {0}")]
    Query(String),
    /// A leadership transfer could not start (the target is not another
    /// voter, there is none, or a transfer to another node is running).
    #[error("leadership transfer refused: {0}")]
    TransferRefused(crate::raft::TransferError),
    /// A leadership transfer did not hand leadership to its target: no
    /// other node took over within its time (the target was down or lost
    /// its election; this node leads on, or no leader is known), or
    /// another node than the one named did.
    #[error("leadership transfer to {to} did not complete{}", match .leader {
        Some(l) => format!(": node {l} leads"),
        None => String::new(),
    })]
    TransferFailed {
        /// The target.
        to: NodeId,
        /// Who leads, if known.
        leader: Option<NodeId>,
    },
    /// A membership change could not start (another is in flight, the
    /// learner is not caught up, ...; see the error).
    #[error("membership change refused: {0}")]
    Membership(crate::raft::ConfChangeError),
    /// This node stopped leading after it started the change: the change
    /// may still complete under the next leader (asking it again is
    /// harmless: a change that holds is answered at once).
    #[error(
        "leadership moved after the membership change started (leader: {leader:?}); it may still complete"
    )]
    ChangeInDoubt {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
}

crate::debug_as_display!(NodeError);

impl NodeError {
    /// Whether the command certainly did not take effect.
    pub fn is_not_applied(&self) -> bool {
        matches!(
            self,
            NodeError::NotLeader { .. }
                | NodeError::Busy
                | NodeError::Overwritten
                | NodeError::TooLarge { .. }
                | NodeError::NoSpace { .. }
        )
    }
}

/// Why a node stopped. A stopped node answers nothing more; it is started
/// again from its disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopReason {
    /// It was asked to ([`NodeHandle::shutdown`]).
    Shutdown,
    /// Its storage failed (a write, a sync, a compaction, snapshot files,
    /// a received snapshot that cannot be installed): what it acknowledged
    /// is on disk, what it did not may be lost, so it stops rather than
    /// answer as if it were durable.
    Storage(String),
    /// It could not go on safely for another reason (a snapshot that does
    /// not restore into the state machine), said as it is.
    Failed(String),
    /// Its task panicked: a bug in the node, reported with the panic's
    /// message.
    Panicked(String),
}

impl StopReason {
    /// The same kind of stop without its text (file paths, a panic's
    /// message): what a client is told; the text stays in the node's log.
    pub fn for_clients(&self) -> StopReason {
        const SEE_LOG: &str = "details in the node's log";
        match self {
            StopReason::Shutdown => StopReason::Shutdown,
            StopReason::Storage(_) => StopReason::Storage(SEE_LOG.into()),
            StopReason::Failed(_) => StopReason::Failed(SEE_LOG.into()),
            StopReason::Panicked(_) => StopReason::Panicked(SEE_LOG.into()),
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Shutdown => f.write_str("shut down"),
            StopReason::Storage(why) => write!(f, "storage failed: {why}"),
            StopReason::Failed(why) => f.write_str(why),
            StopReason::Panicked(why) => write!(f, "the node task panicked: {why}"),
        }
    }
}

/// What a node reports about itself (clients see it inside
/// [`crate::protocol::StatusView`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: RoleKind,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit_index: LogIndex,
    /// Applied index.
    pub applied_index: LogIndex,
    /// Last log index.
    pub last_index: LogIndex,
    /// Last index the newest snapshot covers (0: none).
    pub snapshot_index: LogIndex,
    /// Whether the node is repairing damaged storage from its peers (see
    /// `InitialState::repairing`): it does not vote meanwhile.
    pub repairing: bool,
    /// While repairing (and only then): what the storage found damaged
    /// (the text of the log's repairing mark, or a general phrase if the
    /// storage keeps none).
    pub repair_found: Option<String>,
    /// While the service is halted (a command failed under
    /// [`crate::sm::PanicPolicy::Halt`]): where and why.
    pub halted: Option<String>,
    /// The panic policy in force (a node of a replicated type).
    pub panic_policy: Option<crate::sm::PanicPolicy>,
    /// Commands the determinism check found not deterministic here.
    pub divergences: u64,
    /// Why the node stopped, if it did.
    pub stopped: Option<StopReason>,
}

/// Counters and histograms a node keeps (shared with its handles).
#[derive(Debug)]
pub(super) struct SharedMetrics {
    /// From a proposal's arrival to its answer (applied here, as leader).
    pub(super) commit_latency: Histogram,
    /// Time to make one Ready durable.
    pub(super) fsync_latency: Histogram,
    /// Time the state machine took to encode a snapshot (on a blocking
    /// thread, while apply waited).
    pub(super) snapshot_encode: Histogram,
    /// Snapshots that failed, encoding or writing (retried with backoff).
    pub(super) snapshot_failures: AtomicU64,
    /// Linearizable reads served by the leader's lease (no round).
    pub(super) lease_reads: AtomicU64,
    /// Gaps between two messages from the same leader, on a follower.
    pub(super) leader_gap: Histogram,
    /// The longest such gap, in microseconds.
    pub(super) leader_gap_max_micros: AtomicU64,
    /// Linearizable reads taken into a ReadIndex round.
    pub(super) round_reads: AtomicU64,
    pub(super) elections_won: AtomicU64,
    pub(super) proposals: AtomicU64,
    /// Commands refused over the storage quota.
    pub(super) refused_no_space: AtomicU64,
    pub(super) applied_entries: AtomicU64,
    pub(super) snapshots: AtomicU64,
    pub(super) availability: Mutex<Availability>,
    pub(super) view: Mutex<MetricsView>,
    /// The storage quota in force.
    pub(super) quota: Option<u64>,
}

impl SharedMetrics {
    /// Zeroed counters, and the view of `raft` filled from the start: a
    /// status asked for before the first Ready still names the voters.
    pub(super) fn new(raft: &crate::raft::Raft, quota: Option<u64>) -> SharedMetrics {
        SharedMetrics {
            commit_latency: Histogram::default(),
            fsync_latency: Histogram::default(),
            snapshot_encode: Histogram::default(),
            snapshot_failures: AtomicU64::new(0),
            lease_reads: AtomicU64::new(0),
            leader_gap: Histogram::default(),
            leader_gap_max_micros: AtomicU64::new(0),
            round_reads: AtomicU64::new(0),
            elections_won: AtomicU64::new(0),
            proposals: AtomicU64::new(0),
            refused_no_space: AtomicU64::new(0),
            applied_entries: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            availability: Mutex::new(Availability::new(Instant::now())),
            view: Mutex::new(super::start::view_of(raft)),
            quota,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct MetricsView {
    pub(super) log_bytes: u64,
    pub(super) snapshot_index: LogIndex,
    pub(super) voters: Vec<NodeId>,
    pub(super) learners: Vec<NodeId>,
    pub(super) peers: Vec<PeerProgress>,
}

/// What the leader knows of one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// The follower.
    pub id: NodeId,
    /// Highest index known replicated on it.
    pub match_index: LogIndex,
    /// Entries it is behind the leader's log.
    pub lag: u64,
}

/// A node's numbers for status and metrics.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    /// Times this node became leader.
    pub elections_won: u64,
    /// Proposals this node accepted as leader.
    pub proposals: u64,
    /// Commands refused over the storage quota.
    pub refused_no_space: u64,
    /// Entries applied.
    pub applied_entries: u64,
    /// Snapshots taken.
    pub snapshots: u64,
    /// Snapshots that failed, encoding or writing (each retried after a
    /// backoff of 1 s doubling to 60 s).
    pub snapshot_failures: u64,
    /// Linearizable reads this node served by its lease as leader.
    pub lease_reads: u64,
    /// As a follower: the gaps between two messages from the same leader
    /// (heartbeats go every heartbeat interval, so a gap far above it is a
    /// stall: of the leader, the network or this node).
    pub leader_gap: HistogramSnapshot,
    /// The longest of those gaps since the node started.
    pub leader_gap_max: Duration,
    /// Linearizable reads this node took into a ReadIndex round as leader.
    pub round_reads: u64,
    /// Index the newest snapshot covers.
    pub snapshot_index: LogIndex,
    /// Bytes of log entries held since the last snapshot (what the storage
    /// quota counts; refreshed every tick).
    pub log_bytes: u64,
    /// The storage quota, if any (see
    /// [`NodeOptions::storage_quota_bytes`](super::NodeOptions::storage_quota_bytes)).
    pub storage_quota_bytes: Option<u64>,
    /// Proposal-to-answer latency on this node as leader.
    pub commit_latency: HistogramSnapshot,
    /// Time to persist one batch (append + fsync).
    pub fsync_latency: HistogramSnapshot,
    /// Time to encode one snapshot of the state machine (apply waits for
    /// it; consensus does not).
    pub snapshot_encode: HistogramSnapshot,
    /// Leader-loss accounting.
    pub availability: AvailabilityReport,
    /// Voters of the configuration.
    pub voters: Vec<NodeId>,
    /// Learners of the configuration.
    pub learners: Vec<NodeId>,
    /// Followers' progress (on the leader only).
    pub peers: Vec<PeerProgress>,
}

pub(super) enum Command {
    Propose {
        data: Bytes,
        reply: oneshot::Sender<Result<(LogIndex, Bytes), NodeError>>,
    },
    Read {
        reply: oneshot::Sender<Result<LogIndex, NodeError>>,
    },
    Query {
        body: Bytes,
        stale: bool,
        reply: QueryReply,
    },
    TransferLeader {
        to: Option<NodeId>,
        reply: TransferReply,
    },
    ChangeMembership {
        change: crate::raft::ConfChange,
        reply: ConfReply,
    },
    Members {
        reply: ConfReply,
    },
    Shutdown,
}

/// A handle on a running node. Clones share it.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) id: NodeId,
    pub(super) metrics: Arc<SharedMetrics>,
    pub(super) snapshots: Arc<dyn super::SnapshotFiles>,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) inbound: super::Inbox,
    pub(super) status: watch::Receiver<NodeStatus>,
}

impl NodeHandle {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Where the transport delivers messages for this node.
    pub fn inbound(&self) -> super::Inbox {
        self.inbound.clone()
    }

    /// Where the transport stores snapshots this node receives.
    pub fn snapshot_files(&self) -> Arc<dyn super::SnapshotFiles> {
        self.snapshots.clone()
    }

    /// Proposes a command; resolves when it is applied (with the applier's
    /// answer and its index) or certainly never will be.
    pub async fn propose(&self, data: Bytes) -> Result<(LogIndex, Bytes), NodeError> {
        self.call(|reply| Command::Propose { data, reply }).await
    }

    /// A linearizable read barrier: resolves with an index once this node,
    /// as leader, has confirmed its leadership and applied up to it.
    pub async fn read_index(&self) -> Result<LogIndex, NodeError> {
        self.call(|reply| Command::Read { reply }).await
    }

    /// Runs a query on the applied state. Linearizable unless `stale`: then
    /// it sees whatever this node (leader or not) has applied.
    pub async fn query(&self, body: Bytes, stale: bool) -> Result<Bytes, NodeError> {
        self.call(|reply| Command::Query { body, stale, reply })
            .await
    }

    /// Hands leadership to `to`, or, with `None`, to the most up-to-date
    /// voter heard from lately (dissertation §3.10); resolves with the new
    /// leader once this node hears from it. Meanwhile this node appends no
    /// proposals: it holds them (up to 4,096, past which
    /// [`NodeError::Busy`]; for at most one minimum election timeout or
    /// 500 ms, past which `Busy`, or `NotLeader` without a leader once it
    /// no longer leads) and answers them [`NodeError::NotLeader`] naming the
    /// new leader once it knows it, or proposes them if it leads on; reads
    /// go on. Fails with `NotLeader` on a node
    /// that does not lead, `TransferRefused` when it cannot start, and
    /// `TransferFailed` when no other node took over within an election
    /// timeout (this node then leads on).
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<NodeId, NodeError> {
        self.call(|reply| Command::TransferLeader { to, reply })
            .await
    }

    /// Changes the configuration (dissertation §4.3): adds a learner,
    /// promotes a caught-up learner, or removes a voter or learner, through
    /// a joint configuration when the voters change. Resolves, with the
    /// configuration now in force, once it is committed and not joint. On
    /// a node that does not lead: `NotLeader`; `ChangeInDoubt` if it stops
    /// leading after it started the change. Refused with `Membership`
    /// when it cannot start now (another change in flight, a learner not
    /// caught up: retry later) or at all. Asking again for a change that
    /// holds already answers at once (once the new leader has committed an
    /// entry of its term), so retrying at a new leader is harmless. Waits
    /// without a bound while the change can still complete (a promoted
    /// learner that stops answering keeps the joint configuration
    /// uncommitted while the other voters keep this leader in office):
    /// callers bound it with a timeout.
    pub async fn change_membership(
        &self,
        change: crate::raft::ConfChange,
    ) -> Result<crate::raft::Membership, NodeError> {
        self.call(|reply| Command::ChangeMembership { change, reply })
            .await
    }

    /// The configuration committed on this node, asked of the leader: a
    /// node that does not lead answers `NotLeader` (its own view may be
    /// behind). Its members' addresses are those recorded when they were
    /// added (see [`Membership::addrs`](crate::raft::Membership::addrs)).
    pub async fn members(&self) -> Result<crate::raft::Membership, NodeError> {
        self.call(|reply| Command::Members { reply }).await
    }

    /// The node's counters, histograms and availability figures.
    pub fn metrics(&self) -> NodeMetrics {
        let m = &self.metrics;
        let view = m.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
        NodeMetrics {
            elections_won: m.elections_won.load(Ordering::Relaxed),
            proposals: m.proposals.load(Ordering::Relaxed),
            refused_no_space: m.refused_no_space.load(Ordering::Relaxed),
            applied_entries: m.applied_entries.load(Ordering::Relaxed),
            snapshots: m.snapshots.load(Ordering::Relaxed),
            snapshot_failures: m.snapshot_failures.load(Ordering::Relaxed),
            lease_reads: m.lease_reads.load(Ordering::Relaxed),
            leader_gap: m.leader_gap.snapshot(),
            leader_gap_max: Duration::from_micros(m.leader_gap_max_micros.load(Ordering::Relaxed)),
            round_reads: m.round_reads.load(Ordering::Relaxed),
            snapshot_index: view.snapshot_index,
            log_bytes: view.log_bytes,
            storage_quota_bytes: m.quota,
            commit_latency: m.commit_latency.snapshot(),
            fsync_latency: m.fsync_latency.snapshot(),
            snapshot_encode: m.snapshot_encode.snapshot(),
            availability: self.availability().report(Instant::now()),
            voters: view.voters,
            learners: view.learners,
            peers: view.peers,
        }
    }

    /// Adds the downtime totals of the node's earlier runs to its
    /// accounting (once, right after start; see
    /// [`DowntimeHistory`](crate::metrics::DowntimeHistory)).
    pub fn carry_downtime(&self, history: crate::metrics::DowntimeHistory) {
        self.availability().carry_over(history);
    }

    /// The downtime totals to carry over to the node's next run.
    pub fn downtime_history(&self) -> crate::metrics::DowntimeHistory {
        self.availability().history(Instant::now())
    }

    /// Waits (at most `limit`) until the cluster is writable as this node
    /// sees it: it knows a leader and an entry of that leader's term is
    /// committed. True if it is; false at the limit or when the node
    /// stops. A leader that handed over waits so before it stops, so that
    /// its own accounting sees the hand-off end.
    pub async fn wait_writable(&self, limit: Duration) -> bool {
        let mut status = self.watch_status();
        let waited = tokio::time::timeout(limit, async {
            loop {
                if self.availability().is_writable() {
                    return true;
                }
                // A status change, or 10 ms (an idle cluster's period ends
                // with no change of status).
                tokio::select! {
                    r = status.changed() => {
                        if r.is_err() || status.borrow().stopped.is_some() {
                            return false;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        });
        waited.await.unwrap_or(false)
    }

    /// This run's leader changes and periods without a writable leader in
    /// the last `window`, oldest first.
    pub fn timeline(&self, window: Duration) -> crate::metrics::Timeline {
        self.availability().timeline(Instant::now(), window)
    }

    fn availability(&self) -> std::sync::MutexGuard<'_, Availability> {
        self.metrics
            .availability
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The latest status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Whether the node task still runs: it has not stopped, and its
    /// runtime has not dropped it.
    pub fn is_running(&self) -> bool {
        // Not the command channel: the task closes it when it begins to
        // stop, while its writers still run. It says "stopped" only after
        // they are joined; its status channel closes when its runtime
        // dropped it.
        self.status.has_changed().is_ok() && self.status.borrow().stopped.is_none()
    }

    /// Asks the node to stop; pending callers learn `Stopped`.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let mut st = self.status.clone();
        let _ = st.wait_for(|s| s.stopped.is_some()).await;
    }

    /// Sends the command `make` builds around a reply channel, and waits
    /// for its answer (`Stopped` if the node stops first).
    async fn call<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<R, NodeError>>) -> Command,
    ) -> Result<R, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    pub(super) fn stopped(&self) -> NodeError {
        let why = self.status.borrow().stopped.clone();
        NodeError::Stopped(why.unwrap_or(StopReason::Shutdown))
    }
}

pub(super) type ProposeReply = oneshot::Sender<Result<(LogIndex, Bytes), NodeError>>;
pub(super) type ReadReply = oneshot::Sender<Result<LogIndex, NodeError>>;
pub(super) type QueryReply = oneshot::Sender<Result<Bytes, NodeError>>;
pub(super) type TransferReply = oneshot::Sender<Result<NodeId, NodeError>>;
pub(super) type ConfReply = oneshot::Sender<Result<crate::raft::Membership, NodeError>>;
