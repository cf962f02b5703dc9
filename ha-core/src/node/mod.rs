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
mod options;
mod persist;
mod pipeline;
pub mod snapshots;
mod task;

pub use snapshots::{
    IncomingSnapshot, OutgoingSnapshot, RecoverError, SnapshotFiles, merge_snapshot, recover,
};

pub use handle::{NodeError, NodeHandle, NodeMetrics, NodeStatus, PeerProgress, StopReason};
pub use options::{DEFAULT_STORAGE_QUOTA_BYTES, NodeOptions, NodeStorage};
pub use task::{StartNodeError, start_node};

pub use pipeline::{Pipeline, PipelineIo, Write};

use crate::raft::{Message, Raft, ReadState};
use crate::storage::LogStore;
use crate::types::{Entry, LogIndex, NodeId};

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
}

/// Handles every pending `Ready` of `raft` in the safe order (see the module
/// docs), through the same [`Pipeline`] the node task runs. Returns the
/// storage error that stopped it, if any; the caller must then stop the
/// node. A snapshot the core installs is recorded in `store`; this simple
/// driver keeps no state machine to restore and sends no snapshots.
pub fn handle_ready<S: LogStore>(
    raft: &mut Raft,
    store: &mut S,
    io: &mut impl ReadyIo,
) -> Result<(), S::Error> {
    let mut pipeline: Pipeline<(), ()> = Pipeline::new(raft.applied_index());
    let mut io = SyncIo(io);
    while let Some(write) = pipeline.start(raft, &mut io) {
        if let Some(i) = write.install {
            store.install_snapshot(i.index, i.term, i.keep_suffix)?;
        }
        store.append(&write.entries)?;
        if let Some(hs) = write.hard_state {
            store.save_hard_state(hs)?;
        }
        store.sync()?;
        pipeline.persisted(&mut io);
        pipeline
            .finish(raft, &mut io, Some(&[]))
            .expect("this driver's restore cannot fail");
    }
    Ok(())
}

/// [`ReadyIo`] as the pipeline's IO: no proposals or reads are registered,
/// so read states and dropped reads all reach the `ReadyIo`.
struct SyncIo<'a, I: ReadyIo>(&'a mut I);

impl<I: ReadyIo> PipelineIo for SyncIo<'_, I> {
    type Reply = ();
    type Read = ();
    fn send(&mut self, msg: Message) {
        self.0.send(msg);
    }
    fn send_snapshot(&mut self, _peer: NodeId) {}
    fn restore(&mut self, _state: &[u8]) -> Result<(), String> {
        Ok(())
    }
    fn apply(&mut self, entry: &Entry) -> Option<bytes::Bytes> {
        self.0.apply(entry);
        None
    }
    fn answer(&mut self, _reply: (), _result: Result<(LogIndex, bytes::Bytes), NodeError>) {}
    fn serve_read(&mut self, _read: (), _index: LogIndex) {}
    fn fail_read(&mut self, _read: (), _error: NodeError) {}
    fn unregistered_read(&mut self, read: ReadState) {
        self.0.read_ready(read);
    }
    fn unregistered_drop(&mut self, ctx: u64) {
        self.0.read_dropped(ctx);
    }
}
