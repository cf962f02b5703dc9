//! The async node: one tokio task that owns a Raft core and drives it.
//!
//! Owns: the loop that turns timer ticks into `tick`, transport messages into
//! `step`, client calls into `propose` / `read_index`, persists each `Ready`
//! (in memory, or through the group-commit storage thread so the task never
//! blocks on an fsync), sends messages, applies committed entries and answers
//! the clients waiting for them. It makes no protocol decisions.
//!
//! Channels (each bounded, so a flood cannot grow memory without limit):
//! - inbound messages: transport -> node task, `inbound_queue` deep; when it
//!   is full the transport drops (Raft tolerates loss);
//! - commands: handles -> node task, `command_queue` deep; callers wait
//!   (backpressure on clients);
//! - persistence completions: storage thread -> node task; at most one
//!   `Ready` is being persisted at a time, so at most one is in flight.
//!
//! Invariants:
//! 1. The order of [`super::handle_ready`] holds: `persisted_messages`,
//!    applications and client answers happen only after the `Ready`'s
//!    entries and hard state are durable.
//! 2. A proposal is answered `Ok` only when its exact `(index, term)` has
//!    been applied; `NotApplied` only when it certainly never will be.
//! 3. After a storage failure the node stops: it answers nothing more as
//!    committed, and must be restarted from its disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::pipeline::{Pipeline, PipelineIo, Write};
use crate::metrics::{Availability, AvailabilityReport, Histogram, HistogramSnapshot};
use crate::raft::{
    Config, InitialState, Membership, Message, ProposeError, Raft, ReadIndexError, RoleKind,
};
use crate::storage::group::{GroupCommit, GroupOptions, WriteRequest};
use crate::storage::vfs::Vfs;
use crate::storage::{LogStore, MemLogStore, Wal};
use crate::transport::Transport;
use crate::types::{Entry, EntryPayload, LogIndex, NodeId, Term};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Applies committed commands: the replicated state machine, as the node
/// sees it. Called on the node task, in log order, once per command entry.
pub trait Applier: Send + 'static {
    /// Applies `command` (the entry at `index`, of `term`) and returns the
    /// answer for the client that proposed it.
    fn apply(&mut self, index: LogIndex, term: Term, command: &Bytes) -> Bytes;
    /// Runs a read-only query against the applied state.
    fn query(&self, query: &Bytes) -> Result<Bytes, String>;
    /// Encodes the applied state (for a snapshot).
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    /// Replaces the state with one decoded from a snapshot.
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
    /// Whether this applier runs a replicated type (false: raw bytes, the
    /// default). A node of a replicated type is started through a path that
    /// checks its data directory against the type's schema.
    fn is_replicated_type(&self) -> bool {
        false
    }
    /// While the service is halted (a command failed under
    /// [`crate::sm::PanicPolicy::Halt`]): where and why, for the status.
    fn halted(&self) -> Option<String> {
        None
    }
    /// The panic policy in force (a replicated type's), for the status.
    fn panic_policy(&self) -> Option<crate::sm::PanicPolicy> {
        None
    }
    /// Commands the determinism check found not deterministic on this
    /// replica (see [`crate::sm::Sessions::with_determinism_check`]).
    fn divergences(&self) -> u64 {
        0
    }
}

/// An applier that keeps nothing and answers with an empty reply.
#[derive(Debug, Default)]
pub struct NoopApplier;

impl Applier for NoopApplier {
    fn apply(&mut self, _: LogIndex, _: Term, _: &Bytes) -> Bytes {
        Bytes::new()
    }
    fn query(&self, _: &Bytes) -> Result<Bytes, String> {
        Ok(Bytes::new())
    }
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

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
    /// The initial configuration.
    pub membership: Membership,
    /// Wall-clock length of one logical tick.
    pub tick: Duration,
    /// Depth of the inbound message queue.
    pub inbound_queue: usize,
    /// Depth of the command queue.
    pub command_queue: usize,
    /// Snapshot the state and compact the log after this many entries
    /// applied since the last snapshot (`None`: never on a count; the
    /// storage quota still calls for one when the log nears it).
    pub snapshot_every_entries: Option<u64>,
    /// The storage quota: the bytes of log entries held since the last
    /// snapshot (on disk in the log, and in memory in the core) above which
    /// the leader refuses new commands with [`NodeError::NoSpace`] while
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

/// The slowest rate a snapshot transfer is allowed before the node's
/// backstop gives up on it: 1 MiB/s, as the QUIC transport's own deadline.
const SLOWEST_TRANSFER_BYTES_PER_SEC: u64 = 1 << 20;

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
            tick: Duration::from_millis(50),
            inbound_queue: 8192,
            command_queue: 8192,
            snapshot_every_entries: None,
            storage_quota_bytes: Some(DEFAULT_STORAGE_QUOTA_BYTES),
            snapshot_transfer_timeout: Duration::from_secs(3600),
            max_command_bytes: crate::storage::wal::MAX_COMMAND_BYTES,
            determinism_check_every: crate::sm::DEFAULT_DETERMINISM_CHECK_EVERY,
        }
    }
}

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
    /// ([`NodeOptions::storage_quota_bytes`]); the command certainly did
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
    Stopped(String),
    /// The query could not run (it did not decode).
    #[error("query failed: {0}")]
    Query(String),
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

/// What a node reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub stopped: Option<String>,
}

/// Counters and histograms a node keeps (shared with its handles).
#[derive(Debug)]
struct SharedMetrics {
    /// From a proposal's arrival to its answer (applied here, as leader).
    commit_latency: Histogram,
    /// Time to make one Ready durable.
    fsync_latency: Histogram,
    elections_won: AtomicU64,
    proposals: AtomicU64,
    /// Commands refused over the storage quota.
    refused_no_space: AtomicU64,
    applied_entries: AtomicU64,
    snapshots: AtomicU64,
    availability: Mutex<Availability>,
    view: Mutex<MetricsView>,
}

#[derive(Clone, Debug, Default)]
struct MetricsView {
    snapshot_index: LogIndex,
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
    peers: Vec<PeerProgress>,
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
    /// Index the newest snapshot covers.
    pub snapshot_index: LogIndex,
    /// Proposal-to-answer latency on this node as leader.
    pub commit_latency: HistogramSnapshot,
    /// Time to persist one batch (append + fsync).
    pub fsync_latency: HistogramSnapshot,
    /// Leader-loss accounting.
    pub availability: AvailabilityReport,
    /// Voters of the configuration.
    pub voters: Vec<NodeId>,
    /// Learners of the configuration.
    pub learners: Vec<NodeId>,
    /// Followers' progress (on the leader only).
    pub peers: Vec<PeerProgress>,
}

enum Command {
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
    Shutdown,
}

/// A handle on a running node. Clones share it.
#[derive(Clone)]
pub struct NodeHandle {
    id: NodeId,
    metrics: Arc<SharedMetrics>,
    snapshots: Arc<dyn super::SnapshotFiles>,
    commands: mpsc::Sender<Command>,
    inbound: mpsc::Sender<Message>,
    status: watch::Receiver<NodeStatus>,
}

impl NodeHandle {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Where the transport delivers messages for this node.
    pub fn inbound(&self) -> mpsc::Sender<Message> {
        self.inbound.clone()
    }

    /// Where the transport stores snapshots this node receives.
    pub fn snapshot_files(&self) -> Arc<dyn super::SnapshotFiles> {
        self.snapshots.clone()
    }

    /// Proposes a command; resolves when it is applied (with the applier's
    /// answer and its index) or certainly never will be.
    pub async fn propose(&self, data: Bytes) -> Result<(LogIndex, Bytes), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Propose { data, reply })
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// A linearizable read barrier: resolves with an index once this node,
    /// as leader, has confirmed its leadership and applied up to it.
    pub async fn read_index(&self) -> Result<LogIndex, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Read { reply })
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Runs a query on the applied state. Linearizable unless `stale`: then
    /// it sees whatever this node (leader or not) has applied.
    pub async fn query(&self, body: Bytes, stale: bool) -> Result<Bytes, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Query { body, stale, reply })
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
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
            snapshot_index: view.snapshot_index,
            commit_latency: m.commit_latency.snapshot(),
            fsync_latency: m.fsync_latency.snapshot(),
            availability: m
                .availability
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .report(Instant::now()),
            voters: view.voters,
            learners: view.learners,
            peers: view.peers,
        }
    }

    /// The latest status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Asks the node to stop; pending callers learn `Stopped`.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let mut st = self.status.clone();
        let _ = st.wait_for(|s| s.stopped.is_some()).await;
    }

    fn stopped(&self) -> NodeError {
        let why = self.status.borrow().stopped.clone();
        NodeError::Stopped(why.unwrap_or_else(|| "shut down".into()))
    }
}

/// Starts a node on the current tokio runtime. `init` is what its storage
/// held at start-up.
pub fn start_node<V: Vfs>(
    opts: NodeOptions,
    init: InitialState,
    storage: NodeStorage<V>,
    transport: Arc<dyn Transport>,
    applier: impl Applier,
) -> Result<NodeHandle, String> {
    let id = opts.raft.id;
    let init = InitialState {
        membership: opts.membership.clone(),
        // Fresh for every start: an answer to an earlier repair's query
        // never counts for this one, whatever the configured seed.
        repair_nonce: match init.repair_nonce {
            0 => crate::raft::config::fresh_seed(id) | 1,
            n => n,
        },
        ..init
    };
    if opts.storage_quota_bytes == Some(0) {
        return Err("storage quota of 0 bytes: no write could ever be taken".into());
    }
    if opts.snapshot_transfer_timeout.is_zero() {
        return Err("snapshot transfer timeout of 0: every transfer would fail".into());
    }
    if opts.max_command_bytes == 0
        || opts.max_command_bytes > crate::storage::wal::MAX_COMMAND_BYTES
    {
        return Err(format!(
            "max_command_bytes {} must be 1..={}",
            opts.max_command_bytes,
            crate::storage::wal::MAX_COMMAND_BYTES
        ));
    }
    let raft = Raft::new(opts.raft.clone(), init)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(opts.command_queue.max(1));
    let (in_tx, in_rx) = mpsc::channel(opts.inbound_queue.max(1));
    let storage_repairing = match &storage {
        NodeStorage::Durable { wal, .. } => wal.repairing().map(str::to_string),
        NodeStorage::Memory(_) => None,
    };
    let status = status_of(&raft, None, storage_repairing.as_deref(), &applier);
    let (status_tx, status_rx) = watch::channel(status);
    let metrics = Arc::new(SharedMetrics {
        commit_latency: Histogram::default(),
        fsync_latency: Histogram::default(),
        elections_won: AtomicU64::new(0),
        proposals: AtomicU64::new(0),
        refused_no_space: AtomicU64::new(0),
        applied_entries: AtomicU64::new(0),
        snapshots: AtomicU64::new(0),
        availability: Mutex::new(Availability::new(Instant::now())),
        // Filled from the start: a status asked for before the first
        // Ready still names the voters.
        view: Mutex::new(view_of(&raft)),
    });
    let memory_snapshots = || -> Arc<dyn super::SnapshotFiles> {
        let store = crate::storage::SnapshotStore::open(
            crate::storage::SimFs::new(),
            std::path::Path::new("/snapshots"),
        )
        .expect("an in-memory directory opens");
        Arc::new(store)
    };
    let (storage, snapshots) = match storage {
        NodeStorage::Memory(m) => (Backend::Memory(m), memory_snapshots()),
        NodeStorage::Durable { wal, snapshots } => (
            Backend::Group(GroupCommit::start(wal, GroupOptions::default())),
            snapshots,
        ),
    };
    let last_snapshot = raft.snapshot_last().0;
    let raft_repairing = raft.is_repairing();
    if let Some(why) = storage_repairing.as_deref() {
        tracing::warn!(node = %id, "storage was damaged and is repairing from the peers; this node does not vote until it is whole: {why}");
    }
    let task = NodeTask {
        raft,
        storage,
        transport,
        applier: Box::new(applier),
        pipeline: Pipeline::new(last_snapshot),
        next_read: 1,
        in_flight: None,
        status_tx,
        metrics: metrics.clone(),
        last_role: RoleKind::Follower,
        last_leader: None,
        snapshots: snapshots.clone(),
        snapshot_every: opts.snapshot_every_entries,
        last_snapshot,
        sending_snapshots: HashMap::new(),
        next_transfer: 0,
        snapshot_transfer_timeout: opts.snapshot_transfer_timeout,
        max_command_bytes: opts.max_command_bytes,
        quota: opts.storage_quota_bytes,
        over_quota: false,
        snapshotting: false,
        events: None,
        file_work: Vec::new(),
        repairing: raft_repairing,
        repair_found: storage_repairing,
        dropping_repair_mark: false,
        mark_in_ready: false,
    };
    // The node task should never panic; if it does (a bug), its handles
    // must not go on reporting the last status it published (a dead
    // leader still "leading"): the watcher publishes that it stopped, and
    // why. Callers waiting on it then learn `Stopped` with that reason.
    let watch_tx = task.status_tx.clone();
    let run = tokio::spawn(task.run(opts.tick, in_rx, cmd_rx));
    tokio::spawn(async move {
        // A cancelled task is a runtime shutting down (a process exiting, a
        // test's node killed): nothing to report.
        if let Err(e) = run.await
            && e.is_panic()
        {
            let why = {
                let p = e.into_panic();
                let text = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic whose payload is not text".into());
                format!("the node task panicked: {text}")
            };
            tracing::error!("node stopped: {why}");
            watch_tx.send_modify(|s| {
                s.role = RoleKind::Follower;
                s.leader = None;
                s.stopped = Some(why);
            });
        }
    });
    Ok(NodeHandle {
        id,
        metrics,
        snapshots,
        commands: cmd_tx,
        inbound: in_tx,
        status: status_rx,
    })
}

/// What the metrics show of `raft`'s configuration and followers.
fn view_of(raft: &Raft) -> MetricsView {
    let m = raft.membership();
    let last = raft.last_index();
    let peers = m
        .replication_targets()
        .into_iter()
        .filter(|p| *p != raft.id())
        .filter_map(|p| {
            raft.match_index_of(p).map(|mi| PeerProgress {
                id: p,
                match_index: mi,
                lag: last.0.saturating_sub(mi.0),
            })
        })
        .collect();
    MetricsView {
        snapshot_index: raft.snapshot_last().0,
        voters: m.voters.iter().copied().collect(),
        learners: m.learners.iter().copied().collect(),
        peers,
    }
}

fn status_of(
    raft: &Raft,
    stopped: Option<String>,
    found: Option<&str>,
    applier: &dyn Applier,
) -> NodeStatus {
    NodeStatus {
        id: raft.id(),
        role: raft.role(),
        term: raft.term(),
        leader: raft.leader(),
        commit_index: raft.commit_index(),
        applied_index: raft.applied_index(),
        last_index: raft.last_index(),
        snapshot_index: raft.snapshot_last().0,
        repairing: raft.is_repairing(),
        repair_found: raft
            .is_repairing()
            .then(|| found.unwrap_or("damaged storage").to_string()),
        halted: applier.halted(),
        panic_policy: applier.panic_policy(),
        divergences: applier.divergences(),
        stopped,
    }
}

enum Backend<V: Vfs> {
    Memory(MemLogStore),
    Group(GroupCommit<V>),
    /// After the node stopped: the storage thread is joined.
    Stopped,
}

/// The driver's side of the Ready in flight (the pipeline holds the rest).
struct InFlight {
    started: Instant,
    /// The installed snapshot's state, read off the node task.
    install_state: Option<Vec<u8>>,
    /// What to persist, held while the snapshot is promoted and read.
    write: Option<Write>,
}

/// The node task's side of the pipeline: the transport, the applier, the
/// clients' reply channels.
struct NodeIo<'a> {
    transport: &'a dyn Transport,
    applier: &'a mut dyn Applier,
    metrics: &'a SharedMetrics,
    /// Peers the core asked to send a snapshot to.
    snapshot_requests: Vec<NodeId>,
}

impl<'a> NodeIo<'a> {
    fn new(
        transport: &'a dyn Transport,
        applier: &'a mut dyn Applier,
        metrics: &'a SharedMetrics,
    ) -> NodeIo<'a> {
        NodeIo {
            transport,
            applier,
            metrics,
            snapshot_requests: Vec::new(),
        }
    }
}

impl PipelineIo for NodeIo<'_> {
    type Reply = (ProposeReply, Instant);
    type Read = PendingRead;
    fn send(&mut self, msg: Message) {
        self.transport.send(msg);
    }
    fn send_snapshot(&mut self, peer: NodeId) {
        self.snapshot_requests.push(peer);
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.applier.restore(state)
    }
    fn apply(&mut self, e: &Entry) -> Option<Bytes> {
        self.metrics.applied_entries.fetch_add(1, Ordering::Relaxed);
        match &e.payload {
            EntryPayload::Command(c) => Some(self.applier.apply(e.index, e.term, c)),
            _ => None,
        }
    }
    fn answer(&mut self, (reply, since): Self::Reply, r: Result<(LogIndex, Bytes), NodeError>) {
        self.metrics.commit_latency.observe(since.elapsed());
        let _ = reply.send(r);
    }
    fn serve_read(&mut self, read: PendingRead, index: LogIndex) {
        match read {
            PendingRead::Barrier(reply) => {
                let _ = reply.send(Ok(index));
            }
            PendingRead::Query(body, reply) => {
                let _ = reply.send(self.applier.query(&body).map_err(NodeError::Query));
            }
        }
    }
    fn fail_read(&mut self, read: PendingRead, error: NodeError) {
        read.fail(error);
    }
}

type ProposeReply = oneshot::Sender<Result<(LogIndex, Bytes), NodeError>>;
type ReadReply = oneshot::Sender<Result<LogIndex, NodeError>>;
type QueryReply = oneshot::Sender<Result<Bytes, NodeError>>;

/// A read waiting for confirmation or for the state machine: a bare read
/// barrier, or a query to run once the read index is applied.
enum PendingRead {
    Barrier(ReadReply),
    Query(Bytes, QueryReply),
}

impl PendingRead {
    fn fail(self, e: NodeError) {
        match self {
            PendingRead::Barrier(r) => {
                let _ = r.send(Err(e));
            }
            PendingRead::Query(_, r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

struct NodeTask<V: Vfs> {
    raft: Raft,
    storage: Backend<V>,
    transport: Arc<dyn Transport>,
    applier: Box<dyn Applier>,
    /// The Ready in flight, the proposals and reads waiting on the applier,
    /// and the applier's index.
    pipeline: Pipeline<(ProposeReply, Instant), PendingRead>,
    next_read: u64,
    in_flight: Option<InFlight>,
    status_tx: watch::Sender<NodeStatus>,
    metrics: Arc<SharedMetrics>,
    last_role: RoleKind,
    last_leader: Option<NodeId>,
    snapshots: Arc<dyn super::SnapshotFiles>,
    snapshot_every: Option<u64>,
    /// Index of the last snapshot taken or installed.
    last_snapshot: LogIndex,
    /// The storage quota, if any.
    quota: Option<u64>,
    /// Whether the last proposal was refused over the quota (for logging
    /// the transitions only).
    over_quota: bool,
    /// Peers a snapshot transfer is running to: at most one each. With the
    /// time it is given up at and a number naming it (a late report of a
    /// transfer given up on must not end a newer one).
    sending_snapshots: HashMap<NodeId, (Option<Instant>, u64)>,
    next_transfer: u64,
    /// A transfer not reported within this time counts as failed.
    snapshot_transfer_timeout: Duration,
    /// Larger proposals are refused (see [`NodeOptions::max_command_bytes`]).
    max_command_bytes: usize,
    /// A snapshot is being written.
    snapshotting: bool,
    /// Where helpers report back to the node task.
    events: Option<mpsc::UnboundedSender<Event>>,
    /// File work running on blocking threads (snapshot saves, installs).
    file_work: Vec<tokio::task::JoinHandle<()>>,
    /// The core was repairing damaged storage at the last look.
    repairing: bool,
    /// What the storage found damaged (the log's repairing mark's text).
    repair_found: Option<String>,
    /// The request that drops the log's repairing mark is on its way.
    dropping_repair_mark: bool,
    /// That request is the write of the Ready in flight.
    mark_in_ready: bool,
}

/// Something the node task learns from helpers (storage, transport).
enum Event {
    /// A Ready's persistence finished.
    Persisted(Result<(), String>),
    /// A snapshot of the state up to `(index, term)` is durable.
    Snapshotted(Result<(LogIndex, Term), String>),
    /// An accepted snapshot was promoted and its state read.
    InstallLoaded(Result<Vec<u8>, String>),
    /// A snapshot transfer to a peer ended.
    SnapshotSent(NodeId, u64, Option<LogIndex>),
    /// The log's repairing mark is durably gone.
    RepairMarkDropped,
}

/// Messages drained per wake-up before the loop looks at its other inputs.
const DRAIN_MAX: usize = 1024;

impl<V: Vfs> NodeTask<V> {
    async fn run(
        mut self,
        tick: Duration,
        mut inbound: mpsc::Receiver<Message>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
        self.events = Some(ev_tx);
        let stop_reason = 'run: loop {
            // No `biased`: tokio polls the branches in a random order, so no
            // source (client commands, peer messages, ticks, completions)
            // can starve another, and each branch drains a bounded batch.
            tokio::select! {
                Some(ev) = ev_rx.recv() => match ev {
                    Event::Persisted(Err(e)) => break format!("storage failed: {e}"),
                    Event::Persisted(Ok(())) => {
                        if std::mem::take(&mut self.mark_in_ready) {
                            self.end_repair();
                        }
                        if let Err(e) = self.finish_ready() {
                            break e;
                        }
                    }
                    Event::Snapshotted(r) => {
                        if let Err(e) = self.on_snapshotted(r) {
                            break e;
                        }
                    }
                    Event::InstallLoaded(r) => {
                        if let Err(e) = self.on_install_loaded(r) {
                            break e;
                        }
                    }
                    Event::RepairMarkDropped => self.end_repair(),
                    Event::SnapshotSent(peer, transfer, r) => {
                        if self.sending_snapshots.get(&peer).map(|(_, t)| *t) != Some(transfer) {
                            // Given up on already (see `expire_transfers`).
                            continue;
                        }
                        self.sending_snapshots.remove(&peer);
                        self.raft.report_snapshot(peer, r);
                    }
                },
                Some(c) = commands.recv() => {
                    if !self.command(c) {
                        break "shut down".to_string();
                    }
                    for _ in 0..DRAIN_MAX {
                        match commands.try_recv() {
                            // A shutdown behind other commands stops the node
                            // (not just this drain).
                            Ok(c) => if !self.command(c) { break 'run "shut down".to_string(); },
                            Err(_) => break,
                        }
                    }
                }
                Some(m) = inbound.recv() => {
                    self.step(m);
                    for _ in 0..DRAIN_MAX {
                        match inbound.try_recv() {
                            Ok(m) => self.step(m),
                            Err(_) => break,
                        }
                    }
                }
                _ = ticker.tick() => {
                    self.raft.tick();
                    if let Err(e) = self.check_repair() {
                        break e;
                    }
                    self.expire_transfers();
                    self.refresh_view();
                }
            }
            if !self.pipeline.busy()
                && self.raft.has_ready()
                && let Err(e) = self.start_ready()
            {
                break format!("storage failed: {e}");
            }
            self.publish_status(None);
        };
        // Nothing more is taken while the writers are joined: queued and
        // new requests fail at once instead of waiting on a stopping node.
        drop(commands);
        drop(inbound);
        self.stop(stop_reason).await;
    }

    /// Answers what waits, then stops every writer of the data directory
    /// (the storage thread, snapshot file work) and only then says
    /// "stopped": whoever waits for that (and then drops the directory's
    /// lock) knows nothing of this node writes there any more.
    async fn stop(mut self, reason: String) {
        if reason == "shut down" {
            tracing::info!(node = %self.raft.id(), "node stopped: {reason}");
        } else {
            tracing::error!(node = %self.raft.id(), "node stopped: {reason}");
        }
        let err = NodeError::Stopped(reason.clone());
        let mut io = NodeIo::new(&*self.transport, &mut *self.applier, &self.metrics);
        self.pipeline.stop(&mut io, err);
        if let Backend::Group(g) = std::mem::replace(&mut self.storage, Backend::Stopped) {
            // Joins the storage thread after its queued writes.
            let _ = tokio::task::spawn_blocking(move || drop(g)).await;
        }
        for h in std::mem::take(&mut self.file_work) {
            let _ = h.await;
        }
        self.publish_status(Some(reason));
    }

    /// The core finished repairing damaged storage: the log drops its
    /// repairing mark (after everything before it is durable).
    /// The log's repairing mark is durably gone: the core votes and counts
    /// again.
    fn end_repair(&mut self) {
        self.raft.end_repair();
        self.repairing = false;
        tracing::info!(node = %self.raft.id(), "storage repair finished: the log is whole again, voting resumes");
    }

    fn check_repair(&mut self) -> Result<(), String> {
        // Only once everything the core wrote is durable (its hard state
        // records the vote that ends the repair): the write queue is
        // ordered, so the mark goes after it; the core counts again only
        // once the mark is gone.
        if !self.repairing
            || self.dropping_repair_mark
            || !self.raft.repair_complete()
            || self.pipeline.busy()
            || self.raft.has_ready()
        {
            return Ok(());
        }
        let tx = self.event_sender();
        match &mut self.storage {
            Backend::Group(g) => {
                self.dropping_repair_mark = true;
                g.submit(WriteRequest {
                    finish_repair: true,
                    entries: Vec::new(),
                    hard_state: None,
                    compact: None,
                    install: None,
                    done: Box::new(move |r| {
                        let _ = tx.send(match r {
                            Ok(()) => Event::RepairMarkDropped,
                            Err(e) => Event::Persisted(Err(e.to_string())),
                        });
                    }),
                })
                .map_err(|e| e.to_string())?;
            }
            Backend::Memory(_) => {
                let _ = tx.send(Event::RepairMarkDropped);
                self.dropping_repair_mark = true;
            }
            Backend::Stopped => {}
        }
        Ok(())
    }

    /// Runs `f` (file I/O) on a blocking thread; the node waits for it
    /// before it reports itself stopped.
    fn spawn_file_work(&mut self, f: impl FnOnce() + Send + 'static) {
        self.file_work.retain(|h| !h.is_finished());
        self.file_work.push(tokio::task::spawn_blocking(f));
    }

    fn publish_status(&mut self, stopped: Option<String>) {
        let now = Instant::now();
        let role = self.raft.role();
        if role != self.last_role {
            if role == RoleKind::Leader {
                self.metrics.elections_won.fetch_add(1, Ordering::Relaxed);
            }
            self.last_role = role;
        }
        let leader = self.raft.leader();
        if leader != self.last_leader || role == RoleKind::Leader {
            let mut a = self
                .metrics
                .availability
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            a.leader_changed(leader, now);
            if role == RoleKind::Leader {
                a.heard_from_leader(now);
            }
            drop(a);
            self.last_leader = leader;
            self.refresh_view();
        }
        let s = status_of(
            &self.raft,
            stopped,
            self.repair_found.as_deref(),
            &*self.applier,
        );
        self.status_tx.send_if_modified(|cur| {
            if *cur != s {
                *cur = s;
                true
            } else {
                false
            }
        });
    }

    fn refresh_view(&self) {
        *self.metrics.view.lock().unwrap_or_else(|e| e.into_inner()) = view_of(&self.raft);
    }

    fn step(&mut self, m: Message) {
        let from = m.from;
        if Some(from) == self.raft.leader() {
            self.metrics
                .availability
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .heard_from_leader(Instant::now());
        }
        if let crate::raft::Body::InstallSnapshot { index, term } = m.body {
            // Only a snapshot whose file arrived (staged, verified) may be
            // installed: the core would drop its log for it, and the restore
            // would then fail and stop the node.
            match self.snapshots.contains(index, term) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(node = %self.raft.id(), peer = %from, %index, %term, "refused an InstallSnapshot naming a snapshot that never arrived");
                    return;
                }
                Err(e) => {
                    tracing::warn!(node = %self.raft.id(), peer = %from, "cannot check for a received snapshot: {e}");
                    return;
                }
            }
        }
        if let Err(e) = self.raft.step(m) {
            tracing::warn!(node = %self.raft.id(), peer = %from, "refused a message: {e}");
        }
    }

    /// Handles one command; returns false to stop.
    fn command(&mut self, c: Command) -> bool {
        match c {
            Command::Propose { data, reply } if data.len() > self.max_command_bytes => {
                // Refused before the log: the storage or the peers would
                // refuse the entry after the core already held it.
                let _ = reply.send(Err(NodeError::TooLarge {
                    bytes: data.len(),
                    max: self.max_command_bytes,
                }));
            }
            Command::Propose { data, reply }
                if self.quota.is_some_and(|q| {
                    self.raft.is_leader()
                        && self.raft.log_bytes().saturating_add(data.len() as u64) > q
                }) =>
            {
                let (held, quota) = (self.raft.log_bytes(), self.quota.unwrap_or(0));
                self.metrics
                    .refused_no_space
                    .fetch_add(1, Ordering::Relaxed);
                if !self.over_quota {
                    self.over_quota = true;
                    tracing::error!(node = %self.raft.id(), held, quota, "storage quota reached: refusing writes until a snapshot compacts the log; reads go on");
                }
                let _ = reply.send(Err(NodeError::NoSpace { held, quota }));
            }
            Command::Propose { data, reply } => match self.raft.propose(data) {
                Ok((index, term)) => {
                    if std::mem::take(&mut self.over_quota) {
                        tracing::info!(node = %self.raft.id(), "below the storage quota again: writes resume");
                    }
                    self.metrics.proposals.fetch_add(1, Ordering::Relaxed);
                    if let Some((displaced, _)) =
                        self.pipeline.proposed(index, term, (reply, Instant::now()))
                    {
                        // An entry after a snapshot point that did not match
                        // was never committed; its index was reused.
                        let _ = displaced.send(Err(NodeError::Overwritten));
                    }
                }
                Err(ProposeError::NotLeader { leader }) => {
                    let _ = reply.send(Err(NodeError::NotLeader { leader }));
                }
                Err(ProposeError::Busy | ProposeError::Unsupported(_)) => {
                    let _ = reply.send(Err(NodeError::Busy));
                }
            },
            Command::Read { reply } => self.start_read(PendingRead::Barrier(reply)),
            Command::Query {
                body,
                stale: true,
                reply,
            } => {
                let _ = reply.send(self.applier.query(&body).map_err(NodeError::Query));
            }
            Command::Query {
                body,
                stale: false,
                reply,
            } => self.start_read(PendingRead::Query(body, reply)),
            Command::Shutdown => return false,
        }
        true
    }

    fn start_read(&mut self, pending: PendingRead) {
        let ctx = self.next_read;
        self.next_read += 1;
        match self.raft.read_index(ctx) {
            Ok(()) => {
                self.pipeline.read_started(ctx, pending);
            }
            Err(ReadIndexError::NotLeader { leader }) => {
                pending.fail(NodeError::NotLeader { leader })
            }
            Err(ReadIndexError::Busy) => pending.fail(NodeError::Busy),
        }
    }

    fn event_sender(&self) -> mpsc::UnboundedSender<Event> {
        self.events.clone().expect("set when the task starts")
    }

    fn start_ready(&mut self) -> Result<(), String> {
        let mut io = NodeIo::new(&*self.transport, &mut *self.applier, &self.metrics);
        let Some(write) = self.pipeline.start(&mut self.raft, &mut io) else {
            return Ok(());
        };
        for peer in io.snapshot_requests {
            self.send_snapshot(peer);
        }
        let install = write.install;
        self.in_flight = Some(InFlight {
            started: Instant::now(),
            install_state: None,
            write: Some(write),
        });
        if let Some(i) = install {
            // Raft accepted the received snapshot: only now does its file
            // leave the staging area (a refused one never becomes "the
            // newest" on restart), before the log records the install.
            // File work (a rename, a directory sync, reading the whole
            // state) happens off the node task; the write follows.
            let (files, tx) = (self.snapshots.clone(), self.event_sender());
            self.spawn_file_work(move || {
                let r = files
                    .promote(i.index, i.term)
                    .and_then(|()| files.load_state(i.index, i.term));
                let _ = tx.send(Event::InstallLoaded(r));
            });
            return Ok(());
        }
        self.persist_in_flight()
    }

    /// The received snapshot is promoted and its state read: persist the
    /// Ready that installs it.
    fn on_install_loaded(&mut self, r: Result<Vec<u8>, String>) -> Result<(), String> {
        let state = r.map_err(|e| format!("cannot install the received snapshot: {e}"))?;
        if let Some(f) = &mut self.in_flight {
            f.install_state = Some(state);
        }
        self.persist_in_flight()
    }

    /// Persists the in-flight Ready's writes (in memory at once, or through
    /// the group-commit thread, which reports back).
    fn persist_in_flight(&mut self) -> Result<(), String> {
        let Some(f) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let Write {
            install,
            entries,
            hard_state,
        } = f.write.take().unwrap_or_default();
        let nothing_to_write = entries.is_empty() && hard_state.is_none() && install.is_none();
        match &mut self.storage {
            Backend::Memory(m) => {
                if let Some(i) = install {
                    m.install_snapshot(i.index, i.term, i.keep_suffix)
                        .map_err(|e| e.to_string())?;
                }
                m.append(&entries).map_err(|e| e.to_string())?;
                if let Some(hs) = hard_state {
                    m.save_hard_state(hs).map_err(|e| e.to_string())?;
                }
                m.sync().map_err(|e| e.to_string())?;
                self.finish_ready()?;
            }
            Backend::Group(_) if nothing_to_write => self.finish_ready()?,
            Backend::Group(g) => {
                let tx = self.events.clone().expect("set when the task starts");
                // The first write after the core's repair is complete carries
                // every hard state it changed: the mark can go with it (the
                // storage drops it after the write's fsync), so a busy node,
                // whose pipeline is never idle at a tick, is not held back.
                let finish_repair =
                    self.repairing && !self.dropping_repair_mark && self.raft.repair_complete();
                if finish_repair {
                    self.dropping_repair_mark = true;
                    self.mark_in_ready = true;
                }
                g.submit(WriteRequest {
                    finish_repair,
                    entries,
                    hard_state,
                    compact: None,
                    install: install.map(|i| (i.index, i.term, i.keep_suffix)),
                    done: Box::new(move |r| {
                        let _ = tx.send(Event::Persisted(r.map_err(|e| e.to_string())));
                    }),
                })
                .map_err(|e| e.to_string())?;
            }
            Backend::Stopped => return Err("the node has stopped".into()),
        }
        Ok(())
    }

    /// A transfer the transport has not reported within the timeout counts
    /// as failed, so a lost report cannot keep a follower without appends.
    fn expire_transfers(&mut self) {
        let now = Instant::now();
        let expired: Vec<NodeId> = self
            .sending_snapshots
            .iter()
            .filter(|(_, (give_up_at, _))| give_up_at.is_some_and(|t| now > t))
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            tracing::warn!(node = %self.raft.id(), %peer, "a snapshot transfer was not reported in time; counting it as failed");
            self.sending_snapshots.remove(&peer);
            self.raft.report_snapshot(peer, None);
        }
    }

    /// Streams the newest snapshot to `peer` (the core asked for it).
    fn send_snapshot(&mut self, peer: NodeId) {
        if self.sending_snapshots.contains_key(&peer) {
            // One transfer per peer: the running one reports for both.
            return;
        }
        let (offset, _) = self.raft.snapshot_last();
        let snap = match self.snapshots.open_latest() {
            Ok(Some(s)) if s.index >= offset => s,
            other => {
                if let Err(e) = other {
                    tracing::warn!(node = %self.raft.id(), "cannot open a snapshot to send: {e}");
                }
                self.raft.report_snapshot(peer, None);
                return;
            }
        };
        let install = Message {
            from: self.raft.id(),
            to: peer,
            term: self.raft.term(),
            body: crate::raft::Body::InstallSnapshot {
                index: snap.index,
                term: snap.term,
            },
        };
        let index = snap.index;
        let tx = self.event_sender();
        let transfer = self.next_transfer;
        self.next_transfer += 1;
        // The backstop grows with the file, so a large snapshot on a slow
        // link is not given up (and started again) while still moving.
        // (`None`: so far off the clock cannot say it; never given up.)
        let give_up_at = Instant::now().checked_add(self.snapshot_transfer_timeout.saturating_add(
            Duration::from_secs(snap.len / SLOWEST_TRANSFER_BYTES_PER_SEC),
        ));
        self.sending_snapshots.insert(peer, (give_up_at, transfer));
        tracing::info!(node = %self.raft.id(), %peer, %index, bytes = snap.len, "sending a snapshot");
        self.transport.send_snapshot(
            peer,
            snap,
            install,
            Box::new(move |ok| {
                let _ = tx.send(Event::SnapshotSent(peer, transfer, ok.then_some(index)));
            }),
        );
    }

    /// Takes a snapshot when enough was applied since the last one: the
    /// state is encoded here, at a consistent applied index, and written to
    /// disk on a blocking thread, off the consensus path.
    fn maybe_snapshot(&mut self) {
        if self.snapshotting {
            return;
        }
        let applied = self.pipeline.applied();
        let due = self
            .snapshot_every
            .is_some_and(|every| applied.0 >= self.last_snapshot.0.saturating_add(every));
        // Half-way to the storage quota, snapshot early, counts or not: a
        // log of few large entries (or a node with count snapshots off)
        // would otherwise reach the quota with no snapshot due to lift it.
        // Only when a snapshot would drop a quarter of the quota, so a log
        // full of entries not yet applied cannot make it snapshot on every
        // entry.
        let quota_pressing = self.quota.is_some_and(|q| {
            self.raft.log_bytes() >= q / 2 && self.raft.compactable_bytes() >= q / 4
        });
        if !(due || quota_pressing) {
            return;
        }
        let Some(term) = self.raft.term_at(applied) else {
            return;
        };
        let state = match self.applier.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(node = %self.raft.id(), "cannot encode a snapshot: {e}");
                return;
            }
        };
        self.snapshotting = true;
        let meta = crate::storage::SnapshotMeta {
            index: applied,
            term,
            membership: self.raft.membership().clone(),
        };
        let (files, tx) = (self.snapshots.clone(), self.event_sender());
        self.spawn_file_work(move || {
            let r = files.save(meta, &state).map(|()| (applied, term));
            let _ = files.retain(2);
            let _ = tx.send(Event::Snapshotted(r));
        });
    }

    /// A snapshot is durable: the log may drop what it covers.
    fn on_snapshotted(&mut self, r: Result<(LogIndex, Term), String>) -> Result<(), String> {
        self.snapshotting = false;
        let (index, term) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(node = %self.raft.id(), "cannot write a snapshot: {e}");
                return Ok(());
            }
        };
        self.last_snapshot = self.last_snapshot.max(index);
        self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
        if !self.raft.compact(index) {
            return Ok(());
        }
        let tx = self.event_sender();
        match &mut self.storage {
            Backend::Memory(m) => {
                m.compact(index, term).map_err(|e| e.to_string())?;
                m.sync().map_err(|e| e.to_string())?;
            }
            Backend::Group(g) => {
                g.submit(WriteRequest {
                    finish_repair: false,
                    entries: Vec::new(),
                    hard_state: None,
                    compact: Some((index, term)),
                    install: None,
                    done: Box::new(move |r| {
                        if let Err(e) = r {
                            let _ = tx.send(Event::Persisted(Err(e.to_string())));
                        }
                    }),
                })
                .map_err(|e| e.to_string())?;
            }
            Backend::Stopped => return Err("the node has stopped".into()),
        }
        Ok(())
    }

    /// The in-flight Ready is durable: do the rest of its duties.
    fn finish_ready(&mut self) -> Result<(), String> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        let installed = self.pipeline.installing();
        self.metrics.fsync_latency.observe(f.started.elapsed());
        let mut io = NodeIo::new(&*self.transport, &mut *self.applier, &self.metrics);
        self.pipeline
            .finish(&mut self.raft, &mut io, f.install_state.as_deref())?;
        if let Some(i) = installed {
            self.last_snapshot = self.last_snapshot.max(i.index);
            tracing::info!(node = %self.raft.id(), index = %i.index, "installed a snapshot from the leader");
        }
        self.maybe_snapshot();
        Ok(())
    }
}
