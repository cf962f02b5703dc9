//! The driver's duties for one [`Ready`], in the one order that is safe.
//!
//! Owns: the async node ([`driver`]) and [`handle_ready`], the synchronous
//! form of a driver's duties for tests and simple drivers. Both follow the
//! same order:
//!
//! 1. send `messages` (a leader's appends and heartbeats: they promise
//!    nothing about this node's disk);
//! 2. append entries, record the hard state, and **sync**;
//! 3. only then send `persisted_messages` (votes, acknowledgements);
//! 4. apply committed entries, which answers clients (an answer promises the
//!    command is committed, and committed entries were synced here first);
//! 5. hand over read states and dropped reads; `advance`.
//!
//! If step 2 fails, nothing after it happens: the node must stop and restart
//! from what its disk holds (the log refuses further writes anyway).

pub mod driver;
pub mod snapshots;

pub use snapshots::{IncomingSnapshot, OutgoingSnapshot, SnapshotFiles, merge_snapshot, recover};

pub use driver::{
    Applier, DEFAULT_STORAGE_QUOTA_BYTES, NodeError, NodeHandle, NodeMetrics, NodeOptions,
    NodeStatus, NodeStorage, NoopApplier, PeerProgress, start_node,
};

use crate::raft::{Message, Raft, ReadState, Ready};
use crate::storage::LogStore;
use crate::types::Entry;

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
/// docs). Returns the storage error that stopped it, if any; the caller must
/// then stop the node.
pub fn handle_ready<S: LogStore>(
    raft: &mut Raft,
    store: &mut S,
    io: &mut impl ReadyIo,
) -> Result<(), S::Error> {
    while raft.has_ready() {
        let rd: Ready = raft.ready();
        let token = rd.token();
        for m in rd.messages {
            io.send(m);
        }
        store.append(&rd.entries)?;
        if let Some(hs) = rd.hard_state {
            store.save_hard_state(hs)?;
        }
        store.sync()?;
        for m in rd.persisted_messages {
            io.send(m);
        }
        for e in &rd.committed_entries {
            io.apply(e);
        }
        for r in rd.read_states {
            io.read_ready(r);
        }
        for ctx in rd.dropped_reads {
            io.read_dropped(ctx);
        }
        raft.advance(token);
    }
    Ok(())
}
