//! The async node: one tokio task that owns a Raft core and drives it.
//! Its Ready in flight is in `persist`, its snapshots in `snapshots`.
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

use super::handle::*;
use super::options::*;
use super::persist::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::pipeline::Pipeline;
use crate::raft::{InitialState, Message, ProposeError, Raft, ReadIndexError, RoleKind};
use crate::sm::Applier;
use crate::storage::vfs::Vfs;
use crate::storage::{GroupCommit, GroupOptions, WriteRequest};
use crate::transport::Transport;
use crate::types::{LogIndex, NodeId, Term};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Starts a node on the current tokio runtime. `init` is what its storage
/// held at start-up.
///
/// A node of a replicated type on durable storage is refused here: it
/// starts with [`start_checked_node`], given the proof that its data
/// directory was checked against the type's fingerprint, so a changed type
/// never replays an old log as other commands.
pub fn start_node<V: Vfs>(
    opts: NodeOptions,
    init: InitialState,
    storage: NodeStorage<V>,
    transport: Arc<dyn Transport>,
    applier: impl Applier,
) -> Result<NodeHandle, StartNodeError> {
    if applier.is_replicated_type() && matches!(storage, NodeStorage::Durable { .. }) {
        return Err(StartNodeError::Options(
            "a node of a replicated type on durable storage starts with start_checked_node, \
             given DataDir::check_schema's answer: nothing else checks that its log was \
             written by this type"
                .into(),
        ));
    }
    start(opts, init, storage, transport, applier)
}

/// [`start_node`] for a node of a replicated type: `checked` must be the
/// answer of [`DataDir::check_schema`](crate::storage::DataDir::check_schema)
/// for the directory the storage was opened from, and name the applier's
/// type.
pub fn start_checked_node<V: Vfs>(
    checked: crate::storage::SchemaChecked,
    opts: NodeOptions,
    init: InitialState,
    storage: NodeStorage<V>,
    transport: Arc<dyn Transport>,
    applier: impl Applier,
) -> Result<NodeHandle, StartNodeError> {
    if let NodeStorage::Durable { wal, .. } = &storage
        && wal.dir() != checked.wal_dir()
    {
        return Err(StartNodeError::Options(format!(
            "the log at {} is not the one of the checked data directory ({})",
            wal.dir().display(),
            checked.wal_dir().display()
        )));
    }
    if applier.stored_schema() != Some(checked.stored()) {
        return Err(StartNodeError::Options(format!(
            "the data directory was checked for schema {:016x}, but the applier runs {}",
            checked.stored(),
            applier
                .stored_schema()
                .map_or("no replicated type".to_string(), |s| format!(
                    "schema {s:016x}"
                ))
        )));
    }
    start(opts, init, storage, transport, applier)
}

fn start<V: Vfs>(
    opts: NodeOptions,
    init: InitialState,
    storage: NodeStorage<V>,
    transport: Arc<dyn Transport>,
    applier: impl Applier,
) -> Result<NodeHandle, StartNodeError> {
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
    check_options(&opts)?;
    let raft = Raft::new(opts.raft.clone(), init).map_err(StartNodeError::Core)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(opts.command_queue.max(1));
    let (in_tx, in_rx) = super::Inbox::channel(opts.inbound_queue, opts.inbound_queue_bytes);
    let storage_repairing = match &storage {
        NodeStorage::Durable { wal, .. } => wal.repairing().map(str::to_string),
        NodeStorage::Memory(_) => None,
    };
    let status = status_of(&raft, None, storage_repairing.as_deref(), &applier);
    let (status_tx, status_rx) = watch::channel(status);
    let metrics = Arc::new(SharedMetrics::new(&raft));
    let (storage, snapshots) = backend(storage);
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
        refused_messages: 0,
    };
    let watch_tx = task.status_tx.clone();
    watch_for_panic(tokio::spawn(task.run(opts.tick, in_rx, cmd_rx)), watch_tx);
    Ok(NodeHandle {
        id,
        metrics,
        snapshots,
        commands: cmd_tx,
        inbound: in_tx,
        status: status_rx,
    })
}

/// Why a node could not start.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartNodeError {
    /// A node setting cannot work.
    #[error("{0}")]
    Options(String),
    /// The core refused its settings or the stored state.
    #[error(transparent)]
    Core(#[from] crate::raft::InitError),
}

crate::debug_as_display!(StartNodeError);

/// Refuses settings no node can run with.
fn check_options(opts: &NodeOptions) -> Result<(), StartNodeError> {
    if opts.storage_quota_bytes == Some(0) {
        return Err(StartNodeError::Options(
            "storage quota of 0 bytes: no write could ever be taken".into(),
        ));
    }
    if opts.snapshot_transfer_timeout.is_zero() {
        return Err(StartNodeError::Options(
            "snapshot transfer timeout of 0: every transfer would fail".into(),
        ));
    }
    // The largest append a peer of the same settings sends must fit the
    // inbox, or it would fit only an empty one and could starve: up to
    // `max_append_bytes` of entries, one more of up to the largest command
    // (an append carries at least one entry), and their bookkeeping.
    let largest_append = opts
        .raft
        .max_append_bytes
        .saturating_add(opts.max_command_bytes.max(opts.raft.max_append_bytes))
        .saturating_add(
            opts.raft
                .max_append_entries
                .saturating_mul(std::mem::size_of::<crate::types::Entry>()),
        )
        .saturating_add(std::mem::size_of::<crate::raft::Message>());
    if opts.inbound_queue_bytes < largest_append {
        return Err(StartNodeError::Options(format!(
            "inbound_queue_bytes {} is below the largest append's size in memory ({largest_append} \
             bytes): such an append would wait for an empty inbox",
            opts.inbound_queue_bytes
        )));
    }
    if opts.max_command_bytes == 0
        || opts.max_command_bytes > crate::storage::wal::MAX_COMMAND_BYTES
    {
        return Err(StartNodeError::Options(format!(
            "max_command_bytes {} must be 1..={}",
            opts.max_command_bytes,
            crate::storage::wal::MAX_COMMAND_BYTES
        )));
    }
    Ok(())
}

/// The persistence backend and the snapshot files of `storage`.
fn backend<V: Vfs>(storage: NodeStorage<V>) -> (Backend<V>, Arc<dyn super::SnapshotFiles>) {
    match storage {
        NodeStorage::Memory(m) => {
            let store = crate::storage::SnapshotStore::open(
                crate::storage::SimFs::new(),
                std::path::Path::new("/snapshots"),
            )
            .expect("an in-memory directory opens");
            (Backend::Memory(m), Arc::new(store))
        }
        NodeStorage::Durable { wal, snapshots } => (
            Backend::Group(GroupCommit::start(wal, GroupOptions::default())),
            snapshots,
        ),
    }
}

/// The node task should never panic; if it does (a bug), its handles must
/// not go on reporting the last status it published (a dead leader still
/// "leading"): this watcher publishes that it stopped, and why. Callers
/// waiting on it then learn `Stopped` with that reason.
fn watch_for_panic(run: tokio::task::JoinHandle<()>, watch_tx: watch::Sender<NodeStatus>) {
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
                StopReason::Panicked(text)
            };
            tracing::error!("node stopped: {why}");
            watch_tx.send_modify(|s| {
                s.role = RoleKind::Follower;
                s.leader = None;
                s.stopped = Some(why);
            });
        }
    });
}

/// What the metrics show of `raft`'s configuration and followers.
pub(super) fn view_of(raft: &Raft) -> MetricsView {
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

pub(super) fn status_of(
    raft: &Raft,
    stopped: Option<StopReason>,
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

/// A read waiting for confirmation or for the state machine: a bare read
/// barrier, or a query to run once the read index is applied.
pub(super) enum PendingRead {
    Barrier(ReadReply),
    Query(Bytes, QueryReply),
}

impl PendingRead {
    pub(super) fn fail(self, e: NodeError) {
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

pub(super) struct NodeTask<V: Vfs> {
    pub(super) raft: Raft,
    pub(super) storage: Backend<V>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) applier: Box<dyn Applier>,
    /// The Ready in flight, the proposals and reads waiting on the applier,
    /// and the applier's index.
    pub(super) pipeline: Pipeline<(ProposeReply, Instant), PendingRead>,
    pub(super) next_read: u64,
    pub(super) in_flight: Option<InFlight>,
    pub(super) status_tx: watch::Sender<NodeStatus>,
    pub(super) metrics: Arc<SharedMetrics>,
    pub(super) last_role: RoleKind,
    pub(super) last_leader: Option<NodeId>,
    pub(super) snapshots: Arc<dyn super::SnapshotFiles>,
    pub(super) snapshot_every: Option<u64>,
    /// Index of the last snapshot taken or installed.
    pub(super) last_snapshot: LogIndex,
    /// The storage quota, if any.
    pub(super) quota: Option<u64>,
    /// Whether the last proposal was refused over the quota (for logging
    /// the transitions only).
    pub(super) over_quota: bool,
    /// Peers a snapshot transfer is running to: at most one each. With the
    /// time it is given up at and a number naming it (a late report of a
    /// transfer given up on must not end a newer one).
    pub(super) sending_snapshots: HashMap<NodeId, (Option<Instant>, u64)>,
    pub(super) next_transfer: u64,
    /// A transfer not reported within this time counts as failed.
    pub(super) snapshot_transfer_timeout: Duration,
    /// Larger proposals are refused (see [`NodeOptions::max_command_bytes`]).
    pub(super) max_command_bytes: usize,
    /// A snapshot is being written.
    pub(super) snapshotting: bool,
    /// Where helpers report back to the node task.
    pub(super) events: Option<mpsc::UnboundedSender<Event>>,
    /// File work running on blocking threads (snapshot saves, installs).
    pub(super) file_work: Vec<tokio::task::JoinHandle<()>>,
    /// The core was repairing damaged storage at the last look.
    pub(super) repairing: bool,
    /// What the storage found damaged (the log's repairing mark's text).
    pub(super) repair_found: Option<String>,
    /// The request that drops the log's repairing mark is on its way.
    pub(super) dropping_repair_mark: bool,
    /// That request is the write of the Ready in flight.
    pub(super) mark_in_ready: bool,
    /// Peer messages the core refused (malformed, or naming a snapshot
    /// that never arrived): logged sampled, since a peer can send many.
    pub(super) refused_messages: u64,
}

/// Something the node task learns from helpers (storage, transport).
pub(super) enum Event {
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
pub(super) const DRAIN_MAX: usize = 1024;

impl<V: Vfs> NodeTask<V> {
    pub(super) async fn run(
        mut self,
        tick: Duration,
        mut inbound: super::InboxReceiver,
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
                    Event::Persisted(Err(e)) => break StopReason::Storage(e.to_string()),
                    Event::Persisted(Ok(())) => {
                        if std::mem::take(&mut self.mark_in_ready) {
                            self.end_repair();
                        }
                        if let Err(e) = self.finish_ready() {
                            break StopReason::Failed(e);
                        }
                    }
                    Event::Snapshotted(r) => {
                        if let Err(e) = self.on_snapshotted(r) {
                            break StopReason::Storage(e);
                        }
                    }
                    Event::InstallLoaded(r) => {
                        if let Err(e) = self.on_install_loaded(r) {
                            break StopReason::Storage(e);
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
                        break StopReason::Shutdown;
                    }
                    for _ in 0..DRAIN_MAX {
                        match commands.try_recv() {
                            // A shutdown behind other commands stops the node
                            // (not just this drain).
                            Ok(c) => if !self.command(c) { break 'run StopReason::Shutdown; },
                            Err(_) => break,
                        }
                    }
                }
                Some(m) = inbound.recv() => {
                    self.step(m);
                    for _ in 0..DRAIN_MAX {
                        match inbound.try_recv() {
                            Some(m) => self.step(m),
                            None => break,
                        }
                    }
                }
                _ = ticker.tick() => {
                    self.raft.tick();
                    if let Err(e) = self.check_repair() {
                        break StopReason::Storage(e);
                    }
                    self.expire_transfers();
                    self.refresh_view();
                }
            }
            if !self.pipeline.busy()
                && self.raft.prepare_ready()
                && let Err(e) = self.start_ready()
            {
                break StopReason::Storage(e);
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
    pub(super) async fn stop(mut self, reason: StopReason) {
        if reason == StopReason::Shutdown {
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

    /// The log's repairing mark is durably gone: the core votes and counts
    /// again.
    pub(super) fn end_repair(&mut self) {
        self.raft.end_repair();
        self.repairing = false;
        tracing::info!(node = %self.raft.id(), "storage repair finished: the log is whole again, voting resumes");
    }

    /// The core finished repairing damaged storage: the log drops its
    /// repairing mark (after everything before it is durable).
    pub(super) fn check_repair(&mut self) -> Result<(), String> {
        // Only once everything the core wrote is durable (its hard state
        // records the vote that ends the repair): the write queue is
        // ordered, so the mark goes after it; the core counts again only
        // once the mark is gone.
        if !self.repairing
            || self.dropping_repair_mark
            || !self.raft.repair_complete()
            || self.pipeline.busy()
            || self.raft.prepare_ready()
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
    pub(super) fn spawn_file_work(&mut self, f: impl FnOnce() + Send + 'static) {
        self.file_work.retain(|h| !h.is_finished());
        self.file_work.push(tokio::task::spawn_blocking(f));
    }

    pub(super) fn publish_status(&mut self, stopped: Option<StopReason>) {
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

    pub(super) fn refresh_view(&self) {
        *self.metrics.view.lock().unwrap_or_else(|e| e.into_inner()) = view_of(&self.raft);
    }

    pub(super) fn step(&mut self, m: Message) {
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
                    if self.refused() {
                        tracing::warn!(node = %self.raft.id(), peer = %from, %index, %term, "refused an InstallSnapshot naming a snapshot that never arrived ({} refused messages so far)", self.refused_messages);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(node = %self.raft.id(), peer = %from, "cannot check for a received snapshot: {e}");
                    return;
                }
            }
        }
        if let Err(e) = self.raft.step(m)
            && self.refused()
        {
            tracing::warn!(node = %self.raft.id(), peer = %from, "refused a message: {e} ({} refused so far)", self.refused_messages);
        }
    }

    /// Counts a refused message; whether to log this one (the 1st, 2nd,
    /// 4th, ... and every 1024th).
    fn refused(&mut self) -> bool {
        self.refused_messages += 1;
        let n = self.refused_messages;
        n.is_power_of_two() || n.is_multiple_of(1024)
    }

    /// Handles one command; returns false to stop.
    pub(super) fn command(&mut self, c: Command) -> bool {
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
                let _ = reply.send(
                    self.applier
                        .query(&body)
                        .map_err(|e| NodeError::Query(e.to_string())),
                );
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

    pub(super) fn start_read(&mut self, pending: PendingRead) {
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

    pub(super) fn event_sender(&self) -> mpsc::UnboundedSender<Event> {
        self.events.clone().expect("set when the task starts")
    }
}
