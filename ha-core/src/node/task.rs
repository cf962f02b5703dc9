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
use super::persist::*;
use super::start::{status_of, view_of};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::pipeline::Pipeline;
use crate::raft::{Message, ProposeError, Raft, ReadIndexError, ReadPath, RoleKind};
use crate::sm::Applier;
use crate::storage::WriteRequest;
use crate::storage::vfs::Vfs;
use crate::transport::Transport;
use crate::types::{LogIndex, NodeId, Term};
use std::sync::atomic::Ordering;
use std::time::Instant;

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

/// How long after the leader's first entry of its term is committed the
/// availability accounting waits for a write of the term to commit before
/// it takes that first commit as the end of a period (an idle cluster).
pub(super) const WRITES_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

pub(super) struct NodeTask<V: Vfs> {
    pub(super) raft: Raft,
    pub(super) storage: Backend<V>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) applier: Box<dyn Applier>,
    /// The Ready in flight, the proposals and reads waiting on the applier,
    /// and the applier's index.
    pub(super) pipeline: Pipeline<(ProposeReply, Instant), PendingRead>,
    pub(super) next_read: u64,
    /// Where the clock told to the core starts (see `sync_clock`).
    pub(super) clock_origin: Instant,
    pub(super) in_flight: Option<InFlight>,
    pub(super) status_tx: watch::Sender<NodeStatus>,
    pub(super) metrics: Arc<SharedMetrics>,
    pub(super) last_role: RoleKind,
    pub(super) last_leader: Option<NodeId>,
    /// The leader (and its term) the last message from a leader came
    /// from, and when: a gap is measured within one leader's term.
    pub(super) leader_heard: Option<(NodeId, crate::types::Term, Instant)>,
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
    /// A snapshot is being encoded or written.
    pub(super) snapshotting: bool,
    /// After a snapshot failed (encoding or writing): when the next may be
    /// tried, and the wait that led there (doubling from 1 s to 60 s;
    /// cleared by a success). See `maybe_snapshot`.
    pub(super) snapshot_retry: Option<(Instant, Duration)>,
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
    /// The hard state last handed to storage (at start: as stored). A
    /// Ready that changes nothing but the commit index may wait for the
    /// next write ([`Write::hard_state_may_wait`](super::Write::hard_state_may_wait)).
    pub(super) stored_hard_state: crate::types::HardState,
    /// The newest such hard state not written yet: the next write carries
    /// it.
    pub(super) unwritten_hard_state: Option<crate::types::HardState>,
    /// Peer messages the core refused (malformed, or naming a snapshot
    /// that never arrived): logged sampled, since a peer can send many.
    pub(super) refused_messages: u64,
    /// Callers waiting for a leadership transfer to end.
    pub(super) transfer_waits: Vec<super::transfer::TransferWait>,
    /// A period without a writable leader may be open: the availability
    /// accounting waits for a commit in the leader's term.
    pub(super) awaiting_writable: bool,
    /// While awaiting: when this node first saw an entry of the leader's
    /// term committed, and the term's first index.
    pub(super) writable_at: Option<(Instant, LogIndex)>,
    /// While this node hands over: its last index when it began (the
    /// writes it took before, which still commit).
    pub(super) handover_last: Option<LogIndex>,
    /// Wall-clock length of one tick.
    pub(super) tick: Duration,
    /// Writes that arrived while this node hands leadership over.
    pub(super) held_writes: super::transfer::HeldWrites,
    /// Callers waiting for a membership change to be done.
    pub(super) conf_waits: Vec<super::membership::ConfWait>,
    /// Whether the log said this node was removed (said once per change).
    pub(super) told_removed: bool,
    /// The configuration the transport was last told of (see
    /// `membership::sync_peers`).
    pub(super) peers_conf: crate::raft::Membership,
    /// Nodes that left the configuration in force but that the transport
    /// still reaches (their removal is not committed yet, or the leader
    /// still tells them).
    pub(super) departing: std::collections::BTreeSet<NodeId>,
}

/// Something the node task learns from helpers (storage, transport).
pub(super) enum Event {
    /// A Ready's persistence finished.
    Persisted(Result<(), String>),
    /// The state machine is back from encoding a snapshot, with the state
    /// (or why it could not encode it) and how long it took.
    Encoded(super::snapshots::Encoded),
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
                    Event::Encoded(e) => self.on_encoded(e),
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
                    self.sync_clock();
                    self.raft.tick();
                    self.send_past_a_slow_write(tick);
                    self.tick_transfers();
                    if let Err(e) = self.check_repair() {
                        break StopReason::Storage(e);
                    }
                    self.expire_transfers();
                    self.refresh_view();
                }
            }
            self.sync_clock();
            if !self.pipeline.busy()
                && self.raft.prepare_ready()
                && let Err(e) = self.start_ready()
            {
                break StopReason::Storage(e);
            }
            self.publish_status(None);
            self.settle_transfers();
            self.settle_held_writes();
            self.settle_conf_changes();
            self.say_if_removed();
            self.sync_peers();
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
        self.fail_transfers(&err);
        self.fail_conf_changes(&err);
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
        // once the mark is gone. Not while the state machine is away: a
        // held apply keeps an install, and all after it, out of Readies
        // (`prepare_ready` says no with that work still unwritten).
        if !self.repairing
            || self.dropping_repair_mark
            || self.raft.apply_held()
            || !self.raft.repair_complete()
            || self.pipeline.busy()
            || self.raft.prepare_ready()
        {
            return Ok(());
        }
        let tx = self.event_sender();
        // It carries a hard state that waits, if any.
        let hard_state = self.unwritten_hard_state.take();
        if let Some(hs) = hard_state {
            self.stored_hard_state = hs;
        }
        match &mut self.storage {
            Backend::Group(g) => {
                self.dropping_repair_mark = true;
                g.submit(WriteRequest {
                    finish_repair: true,
                    entries: Vec::new(),
                    hard_state,
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
            // A leader leaving the configuration, or lost while a change is
            // in progress, is a planned hand-off.
            let conf = self.raft.membership();
            if let Some(old) = self.last_leader
                && leader != self.last_leader
                && (conf.is_joint() || !conf.is_voter(old))
            {
                a.handoff_expected(now);
            }
            if role == RoleKind::Leader {
                if self.raft.transferring_to().is_some() {
                    a.handing_over(now);
                    if self.handover_last.is_none() {
                        self.awaiting_writable = true;
                        self.writable_at = None;
                    }
                    // Its period starts once the writes it took before
                    // are committed.
                    let last = *self.handover_last.get_or_insert(self.raft.last_index());
                    if self.raft.commit_index() >= last {
                        a.handover_drained(now);
                    }
                } else if leader == self.last_leader {
                    a.handover_failed(now);
                }
            }
            if role != RoleKind::Leader || self.raft.transferring_to().is_none() {
                self.handover_last = None;
            }
            a.leader_changed(leader, now);
            if role == RoleKind::Leader {
                a.heard_from_leader(now);
            }
            if leader != self.last_leader {
                self.awaiting_writable = true;
                self.writable_at = None;
            }
            drop(a);
            self.last_leader = leader;
            self.refresh_view();
        }
        // Not while this node hands over: it refuses writes, so the
        // cluster is not writable whatever its commit index says.
        if self.awaiting_writable
            && leader.is_some()
            && !(role == RoleKind::Leader && self.raft.transferring_to().is_some())
        {
            self.check_writable(now);
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

    /// Ends the open period of the availability accounting once the
    /// cluster takes writes again, as this node sees it: an entry of the
    /// leader's term after its first (a write, the first is the leader's
    /// no-op) is committed; or, if none is within [`WRITES_GRACE`] of the
    /// first one's commit (no client is writing), at that commit.
    fn check_writable(&mut self, now: Instant) {
        let (commit, term) = (self.raft.commit_index(), self.raft.term());
        if self.raft.term_at(commit) != Some(term) {
            return;
        }
        let (at, first) = *self.writable_at.get_or_insert_with(|| {
            // The term's first entry: a short walk back (a longer one
            // means writes of the term are committed already).
            let mut first = commit;
            for _ in 0..1024 {
                let prev = LogIndex(first.0.saturating_sub(1));
                if prev.0 == 0 || self.raft.term_at(prev) != Some(term) {
                    break;
                }
                first = prev;
            }
            (now, first)
        });
        let end = if commit > first {
            now
        } else if now.saturating_duration_since(at) >= WRITES_GRACE {
            at
        } else {
            return;
        };
        self.awaiting_writable = false;
        self.writable_at = None;
        self.metrics
            .availability
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writable(end);
    }

    pub(super) fn refresh_view(&self) {
        *self.metrics.view.lock().unwrap_or_else(|e| e.into_inner()) = view_of(&self.raft);
    }

    pub(super) fn step(&mut self, mut m: Message) {
        // Each message with a fresh reading: a follower's refusal to vote
        // runs from when it took its leader's message (see
        // `Raft::set_clock`).
        let from = m.from;
        // A hand-off's sign, if it is of this term or a later one (a stale
        // copy announces nothing).
        if m.term >= self.raft.term()
            && matches!(
                m.body,
                crate::raft::Body::TimeoutNow { .. }
                    | crate::raft::Body::PreVote { transfer: true, .. }
                    | crate::raft::Body::Vote { transfer: true, .. }
            )
        {
            self.metrics
                .availability
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .handoff_expected(Instant::now());
        }
        let from_leader = Some(from) == self.raft.leader();
        let lease = self.raft.config().lease.is_some();
        let now = (from_leader || lease).then(Instant::now);
        if let Some(now) = now.filter(|_| lease) {
            self.set_clock_at(now);
        }
        if let Some(now) = now.filter(|_| from_leader) {
            if let Some((leader, term, at)) = self.leader_heard
                && (leader, term) == (from, m.term)
            {
                let gap = now.saturating_duration_since(at);
                self.metrics.leader_gap.observe(gap);
                let micros = u64::try_from(gap.as_micros()).unwrap_or(u64::MAX);
                self.metrics
                    .leader_gap_max_micros
                    .fetch_max(micros, Ordering::Relaxed);
            }
            self.leader_heard = Some((from, m.term, now));
            self.metrics
                .availability
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .heard_from_leader(now);
        }
        if let crate::raft::Body::InstallSnapshot {
            index,
            term,
            membership,
        } = &mut m.body
        {
            let (index, term) = (*index, *term);
            // Only a snapshot whose file arrived (staged, verified) may be
            // installed: the core would drop its log for it, and the restore
            // would then fail and stop the node. The configuration is the
            // one its header names, whatever the message said.
            match self.snapshots.meta_of(index, term) {
                Ok(Some(meta)) => *membership = meta.membership,
                Ok(None) => {
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
            Command::Propose { data, reply } => match self.raft.propose(data.clone()) {
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
                // During a leadership transfer nothing is appended: the
                // write waits for the hand-over's end (see `transfer`).
                Err(ProposeError::Transferring { .. }) => self.hold_write(data, reply),
                Err(ProposeError::Busy | ProposeError::Leaving | ProposeError::Unsupported(_)) => {
                    let _ = reply.send(Err(NodeError::Busy));
                }
            },
            Command::Read { reply } => self.start_read(PendingRead::Barrier(reply)),
            // The state machine is encoding a snapshot elsewhere: a stale
            // read waits no better than a busy answer (the client retries).
            Command::Query {
                stale: true, reply, ..
            } if self.raft.apply_held() => {
                let _ = reply.send(Err(NodeError::Busy));
            }
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
            Command::TransferLeader { to, reply } => self.start_transfer(to, reply),
            Command::ChangeMembership { change, reply } => self.start_conf_change(change, reply),
            Command::Members { reply } => {
                let _ = reply.send(self.members());
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// While a Ready's write has taken a heartbeat interval or more (a
    /// disk busy with a snapshot file, say), sends the heartbeats and
    /// appends made since: they do not rest on the write, and a leader
    /// silent for the length of a slow fsync would look dead to its
    /// followers. (Faster writes keep them for the next Ready, batched:
    /// under heavy load fsyncs of over a tick are common, and sending
    /// appends past them only splits batches.) Not past two maximum
    /// election timeouts: a leader whose disk hangs must not keep its
    /// followers from electing another.
    fn send_past_a_slow_write(&mut self, tick: Duration) {
        let ticks = |n: u64| tick.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX).max(1));
        let patience = ticks(self.raft.config().heartbeat_interval_ticks);
        // A write stuck past two election timeouts (a hung disk): silence,
        // so the followers elect a leader that can still write and answer.
        let give_up = ticks(self.raft.config().election_timeout_max_ticks).saturating_mul(2);
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| (patience..give_up).contains(&f.started.elapsed()))
        {
            for m in self.raft.take_messages() {
                self.transport.send(m);
            }
        }
    }

    /// Tells the core the monotonic clock (nanoseconds since the node
    /// started), which its lease reads run on.
    /// (Only with lease reads on: nothing else reads it.)
    fn sync_clock(&mut self) {
        if self.raft.config().lease.is_some() {
            self.set_clock_at(Instant::now());
        }
    }

    /// [`NodeTask::sync_clock`] with a reading already taken.
    fn set_clock_at(&mut self, now: Instant) {
        let nanos = now.saturating_duration_since(self.clock_origin).as_nanos();
        self.raft
            .set_clock(u64::try_from(nanos).unwrap_or(u64::MAX));
    }

    pub(super) fn start_read(&mut self, pending: PendingRead) {
        let ctx = self.next_read;
        self.next_read += 1;
        self.sync_clock();
        match self.raft.read_lease(ctx) {
            Ok(ReadPath::Lease { index }) => {
                self.metrics
                    .lease_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut io = super::persist::NodeIo::new(
                    &*self.transport,
                    &mut *self.applier,
                    &self.metrics,
                );
                self.pipeline.read_confirmed(index, pending, &mut io);
            }
            Ok(ReadPath::Round) => {
                self.metrics
                    .round_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.pipeline.read_started(ctx, pending);
            }
            Err(ReadIndexError::NotLeader { leader }) => {
                pending.fail(NodeError::NotLeader { leader })
            }
            Err(ReadIndexError::Busy) => pending.fail(NodeError::Busy),
        }
    }

    /// Logs once when this node learns it is no longer in the committed
    /// configuration (it then idles: it never campaigns, and it serves no
    /// linearizable request; see `Raft::is_removed`), and once when it is
    /// in again.
    fn say_if_removed(&mut self) {
        let removed = self.raft.is_removed();
        if removed != self.told_removed {
            self.told_removed = removed;
            if removed {
                tracing::warn!(node = %self.raft.id(), "this node is no longer a member of the cluster's configuration: it stays idle and may be stopped");
            } else {
                tracing::info!(node = %self.raft.id(), "this node is a member of the configuration again");
            }
        }
    }

    pub(super) fn event_sender(&self) -> mpsc::UnboundedSender<Event> {
        self.events.clone().expect("set when the task starts")
    }
}
