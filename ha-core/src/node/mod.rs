//! The driver's duties for each [`Ready`](crate::raft::Ready), in the one
//! order that is safe.
//!
//! Owns: the [`Pipeline`] (those duties without IO), the async node that
//! runs it on tokio (`task`: the loop; `handle`: [`NodeHandle`] and what it
//! reports; `persist`: the Ready in flight and the storage backends;
//! [`snapshots`]: snapshot files, recovery, and the task's snapshot duties;
//! `options`: [`NodeOptions`]), and [`handle_ready`], the synchronous
//! form for tests and simple drivers, which runs the same pipeline. The
//! deterministic simulator drives that pipeline too. The order:
//!
//! 1. send `messages` (a leader's appends and heartbeats: they promise
//!    nothing about this node's disk);
//! 2. record an installed snapshot, append entries, record the hard state,
//!    and **sync**;
//! 3. only then send `persisted_messages` (votes, acknowledgements);
//! 4. restore an installed snapshot, apply committed entries, which answers
//!    clients (an answer promises the command is committed, and committed
//!    entries were synced here first);
//! 5. hand over read states and dropped reads; `advance`.
//!
//! If step 2 fails, nothing after it happens: the node must stop and restart
//! from what its disk holds (the log refuses further writes anyway).

mod handle;
mod inbox;
mod membership;
mod options;
mod persist;
mod pipeline;
pub mod snapshots;
mod start;
mod task;
mod transfer;

pub use snapshots::{
    IncomingSnapshot, OutgoingSnapshot, RecoverError, SnapshotFiles, merge_snapshot, recover,
};

pub use inbox::{DeliverError, Inbox, InboxReceiver};

pub use handle::{NodeError, NodeHandle, NodeMetrics, NodeStatus, PeerProgress, StopReason};
pub use options::{
    DEFAULT_INBOUND_QUEUE_BYTES, DEFAULT_STORAGE_QUOTA_BYTES, NodeOptions, NodeStorage,
};
pub use start::{StartNodeError, start_checked_node, start_node};

pub use pipeline::{Pipeline, PipelineError, PipelineIo, RestoreError, Write};

use crate::raft::{Message, Raft, ReadState};
use crate::storage::LogStore;
use crate::types::{Entry, LogIndex, NodeId, Term};

/// Where a driver's output goes.
pub trait ReadyIo {
    /// Sends one message to its recipient (best effort).
    fn send(&mut self, msg: Message);
    /// Applies one committed entry to the state machine, in log order, and
    /// answers the client waiting for it, if any.
    fn apply(&mut self, entry: &Entry);
    /// A linearizable read may be served once `applied >= read.index`.
    fn read_ready(&mut self, read: ReadState);
    /// A read could not be confirmed (leadership lost): fail it.
    fn read_dropped(&mut self, ctx: u64);
    /// The core installed a snapshot a leader sent, up to `index` (of
    /// `term`): the state machine must hold that snapshot's state before
    /// any later entry is applied, because entries up to `index` will
    /// never be applied one by one. This driver keeps no snapshot files, so
    /// the implementation fetches the state itself, or returns why it
    /// cannot; then [`handle_ready`] stops with
    /// [`HandleReadyError::Restore`] and applies nothing more.
    fn restore_snapshot(&mut self, index: LogIndex, term: Term) -> Result<(), RestoreError>;
}

/// Why [`handle_ready`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum HandleReadyError<E> {
    /// The log store failed; the node must restart from its disk.
    #[error("storage: {0}")]
    Storage(E),
    /// An installed snapshot could not be restored
    /// ([`ReadyIo::restore_snapshot`]); nothing after it was applied.
    #[error("restoring the snapshot at {index}")]
    Restore {
        /// The snapshot's index.
        index: LogIndex,
        /// What stopped the restore (the state machine's own error is its
        /// source in turn).
        #[source]
        source: PipelineError,
    },
}

/// Handles every pending `Ready` of `raft` in the safe order (see the module
/// docs), through the same [`Pipeline`] the node task runs. Returns the
/// error that stopped it, if any; the caller must then stop the node. A
/// snapshot the core installs is recorded in `store` and restored through
/// [`ReadyIo::restore_snapshot`] before any later entry is applied; this
/// simple driver sends no snapshots.
pub fn handle_ready<S: LogStore>(
    raft: &mut Raft,
    store: &mut S,
    io: &mut impl ReadyIo,
) -> Result<(), HandleReadyError<S::Error>> {
    let mut pipeline: Pipeline<(), ()> = Pipeline::new(raft.applied_index());
    let mut io = SyncIo { io, install: None };
    while let Some(write) = pipeline.start(raft, &mut io) {
        if let Some(i) = write.install {
            store
                .install_snapshot(i.index, i.term, i.keep_suffix)
                .map_err(HandleReadyError::Storage)?;
        }
        io.install = write.install.map(|i| (i.index, i.term));
        store
            .append(&write.entries)
            .map_err(HandleReadyError::Storage)?;
        if let Some(hs) = write.hard_state {
            store
                .save_hard_state(hs)
                .map_err(HandleReadyError::Storage)?;
        }
        store.sync().map_err(HandleReadyError::Storage)?;
        pipeline.persisted(&mut io);
        // The state passed is a placeholder: `SyncIo::restore` asks the
        // `ReadyIo` for the snapshot by index instead.
        if let Err(source) = pipeline.finish(raft, &mut io, Some(&[])) {
            let index = io.install.map_or(LogIndex(0), |(i, _)| i);
            return Err(HandleReadyError::Restore { index, source });
        }
    }
    Ok(())
}

/// [`ReadyIo`] as the pipeline's IO: no proposals or reads are registered,
/// so read states and dropped reads all reach the `ReadyIo`. `install` is
/// the snapshot the Ready in flight installs, if any.
struct SyncIo<'a, I: ReadyIo> {
    io: &'a mut I,
    install: Option<(LogIndex, Term)>,
}

impl<I: ReadyIo> PipelineIo for SyncIo<'_, I> {
    type Reply = ();
    type Read = ();
    fn send(&mut self, msg: Message) {
        self.io.send(msg);
    }
    fn send_snapshot(&mut self, _peer: NodeId) {}
    fn restore(&mut self, _state: &[u8]) -> Result<(), RestoreError> {
        let (index, term) = self.install.ok_or("a restore without an install")?;
        self.io.restore_snapshot(index, term)
    }
    fn apply(&mut self, entry: &Entry) -> Option<bytes::Bytes> {
        self.io.apply(entry);
        None
    }
    fn answer(&mut self, _reply: (), _result: Result<(LogIndex, bytes::Bytes), NodeError>) {}
    fn serve_read(&mut self, _read: (), _index: LogIndex) {}
    fn fail_read(&mut self, _read: (), _error: NodeError) {}
    fn unregistered_read(&mut self, read: ReadState) {
        self.io.read_ready(read);
    }
    fn unregistered_drop(&mut self, ctx: u64) {
        self.io.read_dropped(ctx);
    }
}
