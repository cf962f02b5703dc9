//! Starting a node: checks its options, picks its persistence backend,
//! spawns its task, and watches that task for a panic. Also the views of a
//! core the handle publishes (metrics, status).
//!
//! Invariant: a node of a replicated type on durable storage starts only
//! through [`start_checked_node`], with its data directory checked against
//! the type's fingerprint.

use super::handle::*;
use super::options::*;
use super::persist::*;
use super::task::*;
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::pipeline::Pipeline;
use crate::raft::{InitialState, Raft, RoleKind};
use crate::sm::Applier;
use crate::storage::vfs::Vfs;
use crate::storage::{GroupCommit, GroupOptions};
use crate::transport::Transport;

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
    #[cfg(feature = "planted-bugs")]
    let opts = {
        let mut opts = opts;
        if let Some(bug) = crate::raft::PlantedBug::from_env() {
            tracing::warn!(node = %opts.raft.id, "planted bug active: {bug:?} (HA_PLANTED_BUG)");
            opts.raft.planted_bug = Some(bug);
        }
        opts
    };
    let id = opts.raft.id;
    let init = InitialState {
        // The snapshot's configuration if it names one; else the one the
        // cluster was bootstrapped with (the log's configuration entries
        // come after either).
        membership: if init.membership.is_empty() {
            opts.membership.clone()
        } else {
            init.membership
        },
        // Fresh for every start: an answer to an earlier repair's query
        // never counts for this one, whatever the configured seed.
        repair_nonce: match init.repair_nonce {
            0 => crate::raft::config::fresh_seed(id) | 1,
            n => n,
        },
        joined: init.joined || opts.joining,
        ..init
    };
    check_options(&opts)?;
    let stored_hard_state = init.hard_state;
    let raft = Raft::new(opts.raft.clone(), init).map_err(StartNodeError::Core)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(opts.command_queue.max(1));
    let (in_tx, in_rx) = super::Inbox::channel(opts.inbound_queue, opts.inbound_queue_bytes);
    let storage_repairing = match &storage {
        NodeStorage::Durable { wal, .. } => wal.repairing().map(str::to_string),
        NodeStorage::Memory(_) => None,
    };
    let status = status_of(&raft, None, storage_repairing.as_deref(), &applier);
    let (status_tx, status_rx) = watch::channel(status);
    let metrics = Arc::new(SharedMetrics::new(&raft, opts.storage_quota_bytes));
    let (storage, snapshots) = backend(storage);
    let last_snapshot = raft.snapshot_last().0;
    let raft_repairing = raft.is_repairing();
    if let Some(why) = storage_repairing.as_deref() {
        tracing::warn!(node = %id, "storage was damaged and is repairing from the peers; this node does not vote until it is whole: {why}");
    }
    let conf = raft.membership();
    if !conf.is_empty() && !conf.is_voter(id) {
        tracing::warn!(node = %id, "this node is not a voter of its latest configuration (a learner, or removed by a change whose commit it has not seen): it campaigns only while the configuration at its commit index names it a voter");
    }
    let task = NodeTask {
        raft,
        storage,
        transport,
        applier: Box::new(applier),
        pipeline: Pipeline::new(last_snapshot),
        next_read: 1,
        clock_origin: std::time::Instant::now(),
        in_flight: None,
        status_tx,
        metrics: metrics.clone(),
        last_role: RoleKind::Follower,
        last_leader: None,
        leader_heard: None,
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
        snapshot_retry: None,
        events: None,
        file_work: Vec::new(),
        repairing: raft_repairing,
        repair_found: storage_repairing,
        dropping_repair_mark: false,
        mark_in_ready: false,
        stored_hard_state,
        unwritten_hard_state: None,
        refused_messages: 0,
        transfer_waits: Vec::new(),
        held_writes: Default::default(),
        tick: opts.tick,
        awaiting_writable: false,
        writable_at: None,
        handover_last: None,
        conf_waits: Vec::new(),
        told_removed: false,
        // The transport was started with the bootstrap configuration's
        // peers: the first sync drops those no longer members, and hands it
        // every address the configuration in force records (one it has
        // already changes nothing; a DNS name it could not resolve at
        // start is resolved again).
        peers_conf: opts.membership.without_addrs(),
        departing: Default::default(),
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
    if let Some(lease) = &opts.raft.lease
        && u128::from(lease.tick_nanos) != opts.tick.as_nanos()
    {
        return Err(StartNodeError::Options(format!(
            "the lease's tick ({} ns) is not the node's tick ({:?}): the lease would not match the followers' election timers",
            lease.tick_nanos, opts.tick
        )));
    }
    if opts.storage_quota_bytes == Some(0) {
        return Err(StartNodeError::Options(
            "storage quota of 0 bytes: no write could ever be taken".into(),
        ));
    }
    if opts.tick.is_zero() {
        return Err(StartNodeError::Options(
            "a tick of 0: the node's timers could never run".into(),
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
            let why = StopReason::Panicked(crate::sm::panic_message(&*e.into_panic()));
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
        log_bytes: raft.log_bytes(),
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
