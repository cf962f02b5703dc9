//! How a node keeps, sends, receives and starts from snapshots.
//!
//! Owns: [`SnapshotFiles`], the object-safe face of a snapshot directory the
//! node, the transport and start-up share; [`recover`], which starts a node
//! from its newest snapshot plus the log after it.
//!
//! Invariants:
//! 1. A received snapshot is staged once its checksum verified (see
//!    `storage::snapshot`), and only then is `InstallSnapshot` stepped; it
//!    joins the snapshots a restart starts from only when Raft accepted it
//!    ([`SnapshotFiles::promote`], before the log records the install).
//! 2. A snapshot file, once published, is never overwritten: its
//!    `(index, term)` names one committed prefix.
//! 3. Snapshot bytes move in bounded pieces: a reader on the sending side,
//!    [`IncomingSnapshot::write`] on the receiving side; no message carries
//!    a whole snapshot.

use std::io::Read;

use crate::node::Applier;
use crate::raft::InitialState;
use crate::storage::snapshot::{RawSnapshotWriter, SnapshotMeta, SnapshotStore};
use crate::storage::vfs::Vfs;
use crate::storage::{LogStore, StoredState, Wal};
use crate::types::{LogIndex, Term};

/// A snapshot being received, piece by piece.
pub trait IncomingSnapshot: Send {
    /// Writes the next piece of the file.
    fn write(&mut self, chunk: &[u8]) -> Result<(), String>;
    /// Verifies the whole file and makes it visible.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// A snapshot file to send: which it is, and a reader of its bytes.
pub struct OutgoingSnapshot {
    /// Last index it covers.
    pub index: LogIndex,
    /// Its term.
    pub term: Term,
    /// Bytes in the file.
    pub len: u64,
    /// The file's bytes.
    pub data: Box<dyn Read + Send>,
}

/// A node's snapshot directory, shared by the node and its transport.
pub trait SnapshotFiles: Send + Sync {
    /// Writes a snapshot of the state (durably; see `storage::snapshot`).
    fn save(&self, meta: SnapshotMeta, state: &[u8]) -> Result<(), String>;
    /// The newest snapshot, as a file to send.
    fn open_latest(&self) -> Result<Option<OutgoingSnapshot>, String>;
    /// The newest snapshot's state bytes, verified.
    fn latest_state(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String>;
    /// The state bytes of the snapshot ending at `(index, term)`, verified.
    fn load_state(&self, index: LogIndex, term: Term) -> Result<Vec<u8>, String>;
    /// Starts receiving the snapshot ending at `(index, term)`.
    fn begin(&self, index: LogIndex, term: Term) -> Result<Box<dyn IncomingSnapshot>, String>;
    /// Keeps only the newest `n` snapshots.
    fn retain(&self, n: usize) -> Result<(), String>;
    /// Raft accepted the received snapshot ending at `(index, term)`: move
    /// it from the staging area (where [`IncomingSnapshot::finish`] left it)
    /// among the snapshots a restart starts from. If a snapshot of that
    /// `(index, term)` exists already it is kept (both hold the same
    /// committed prefix) and the staged copy dropped.
    fn promote(&self, index: LogIndex, term: Term) -> Result<(), String>;
    /// Whether the snapshot ending at `(index, term)` is here, staged or
    /// published. The node steps an `InstallSnapshot` only if it is: a
    /// message naming a snapshot that never arrived is refused, not fatal.
    fn contains(&self, index: LogIndex, term: Term) -> Result<bool, String>;
}

impl<V: Vfs> IncomingSnapshot for RawSnapshotWriter<V> {
    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        RawSnapshotWriter::write(self, chunk).map_err(|e| e.to_string())
    }
    fn finish(self: Box<Self>) -> Result<(), String> {
        RawSnapshotWriter::finish(*self)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl<V: Vfs> SnapshotFiles for SnapshotStore<V> {
    fn save(&self, meta: SnapshotMeta, state: &[u8]) -> Result<(), String> {
        SnapshotStore::save(self, meta, state)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn open_latest(&self) -> Result<Option<OutgoingSnapshot>, String> {
        Ok(self
            .open_latest_file()
            .map_err(|e| e.to_string())?
            .map(|(meta, len, data)| OutgoingSnapshot {
                index: meta.index,
                term: meta.term,
                len,
                data,
            }))
    }
    fn latest_state(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
        self.latest().map_err(|e| e.to_string())
    }
    fn load_state(&self, index: LogIndex, term: Term) -> Result<Vec<u8>, String> {
        self.load(index, term)
            .map(|(_, d)| d)
            .map_err(|e| e.to_string())
    }
    fn begin(&self, index: LogIndex, term: Term) -> Result<Box<dyn IncomingSnapshot>, String> {
        Ok(Box::new(
            self.raw_writer(index, term).map_err(|e| e.to_string())?,
        ))
    }
    fn retain(&self, n: usize) -> Result<(), String> {
        SnapshotStore::retain(self, n).map_err(|e| e.to_string())
    }
    fn promote(&self, index: LogIndex, term: Term) -> Result<(), String> {
        SnapshotStore::promote(self, index, term)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn contains(&self, index: LogIndex, term: Term) -> Result<bool, String> {
        SnapshotStore::contains(self, index, term).map_err(|e| e.to_string())
    }
}

/// Merges a snapshot ending at `(index, term)` into what a log store held:
/// entries it covers go, and if the stored entry at `index` has another
/// term the whole stored log diverges and goes. Returns `Some(keep_suffix)`
/// when the log store must record the snapshot before the node starts.
pub fn merge_snapshot(init: &mut InitialState, index: LogIndex, term: Term) -> Option<bool> {
    if index <= init.snapshot_last.0 {
        return None;
    }
    let keep = init
        .entries
        .iter()
        .any(|e| e.index == index && e.term == term);
    if keep {
        init.entries.retain(|e| e.index > index);
    } else {
        init.entries.clear();
    }
    init.snapshot_last = (index, term);
    init.hard_state.commit = init.hard_state.commit.max(index);
    Some(keep)
}

/// Prepares a node's start: restores `applier` from the newest snapshot (if
/// any), merges it with what the log held, and records it in the log if the
/// log had not yet. The result goes to `start_node`.
pub fn recover<V: Vfs>(
    wal: &mut Wal<V>,
    stored: StoredState,
    snapshots: &dyn SnapshotFiles,
    applier: &mut dyn Applier,
) -> Result<InitialState, String> {
    let mut init = InitialState {
        hard_state: stored.hard_state,
        snapshot_last: stored.snapshot_last,
        entries: stored.entries,
        // Damage was found and cut: the node repairs from its peers.
        repairing: wal.repairing().is_some(),
        ..InitialState::default()
    };
    if let Some((meta, state)) = snapshots.latest_state()? {
        if meta.index < init.snapshot_last.0 {
            return Err(format!(
                "the newest snapshot ends at {} but the log starts after {}: a snapshot file is \
                 missing",
                meta.index, init.snapshot_last.0
            ));
        }
        applier.restore(&state)?;
        if let Some(keep) = merge_snapshot(&mut init, meta.index, meta.term) {
            wal.install_snapshot(meta.index, meta.term, keep)
                .map_err(|e| e.to_string())?;
            wal.sync().map_err(|e| e.to_string())?;
        }
    } else if init.snapshot_last.0 > LogIndex(0) {
        return Err(format!(
            "the log starts after a snapshot at index {}, but no snapshot file is there",
            init.snapshot_last.0
        ));
    }
    Ok(init)
}
