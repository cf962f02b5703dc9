//! Durable state of one node: the log and the hard state.
//!
//! Owns: the [`LogStore`] trait that every log implementation honours;
//! [`MemLogStore`], the in-memory twin; [`Wal`], the durable segmented
//! write-ahead log; [`GroupCommit`], group commit on a storage thread;
//! [`SnapshotStore`], snapshot files; [`DataDir`], the locked, identified data
//! directory with its stored bootstrap configuration ([`StoredCluster`]); and
//! [`vfs`], the file layer (real, or simulated with crashes).
//!
//! The contract (every implementation):
//! 1. `append` and `save_hard_state` may be buffered; only `sync` makes them
//!    durable. After a crash, everything synced is there, exactly.
//! 2. `append` whose first entry's index is at or below the last stored index
//!    replaces the stored suffix from that index: storage never holds a gap
//!    or two entries at one index.
//! 3. Until `sync` returns, a crash may keep or lose any unsynced write, but a
//!    synced prefix is never damaged.

pub mod datadir;
mod group;
mod mem;
pub mod snapshot;
pub mod vfs;
pub mod wal;

pub use datadir::{DataDir, DataDirError, SchemaChecked, StoredCluster};
pub use group::{
    Completion, GroupCommit, GroupOptions, GroupStats, Stopped, WriteRequest, WriteResult,
};
pub use mem::MemLogStore;
pub use snapshot::{SnapshotError, SnapshotMeta, SnapshotStore, StartScan};

/// The error number of an I/O error (Linux's `EIO`): what a read of a bad
/// sector returns. Storage takes it, and only it, for damage.
pub(crate) const EIO: i32 = 5;
pub use vfs::{SimFs, StdFs, Vfs, VfsFile, VfsLock};
pub use wal::{Wal, WalError, WalOptions};

use crate::types::{Entry, HardState, LogIndex, Term};

/// What a store holds when a node starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredState {
    /// The last durable hard state.
    pub hard_state: HardState,
    /// Index and term of the last entry a snapshot covers (0, 0 if none).
    pub snapshot_last: (LogIndex, Term),
    /// The durable entries after the snapshot.
    pub entries: Vec<Entry>,
}

/// The storage of a node's log and hard state (see the module docs).
pub trait LogStore {
    /// What can go wrong.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reads everything back at start-up.
    fn load(&self) -> Result<StoredState, Self::Error>;

    /// Appends entries, replacing any stored suffix from the first entry's
    /// index (contract point 2). Entries must be contiguous.
    fn append(&mut self, entries: &[Entry]) -> Result<(), Self::Error>;

    /// Records a new hard state.
    fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), Self::Error>;

    /// Makes every earlier `append` and `save_hard_state` durable.
    fn sync(&mut self) -> Result<(), Self::Error>;

    /// Index of the last stored entry (or of the snapshot if none).
    fn last_index(&self) -> LogIndex;

    /// Discards entries up to and including `index`, which a snapshot ending
    /// at `(index, term)` now covers.
    fn compact(&mut self, index: LogIndex, term: Term) -> Result<(), Self::Error>;

    /// Records a snapshot installed from the leader: like `compact`, and if
    /// `keep_suffix` is false, the stored entries after `index` (a diverging
    /// history) are discarded too.
    fn install_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
        keep_suffix: bool,
    ) -> Result<(), Self::Error>;
}

/// Errors of the in-memory store.
#[derive(Debug, thiserror::Error)]
pub enum MemStoreError {
    /// Entries would leave a gap in the log.
    #[error("append at index {got} would leave a gap after index {last}")]
    Gap {
        /// The first index of the append.
        got: LogIndex,
        /// The last stored index.
        last: LogIndex,
    },
    /// The append's entries are not contiguous.
    #[error("append entries are not contiguous at index {0}")]
    NotContiguous(LogIndex),
    /// The append would replace entries a snapshot covers.
    #[error("append at index {got} is below the snapshot at {snapshot}")]
    BelowSnapshot {
        /// The first index of the append.
        got: LogIndex,
        /// The snapshot's last index.
        snapshot: LogIndex,
    },
    /// An injected write failure.
    #[error("injected write failure")]
    Injected,
}
