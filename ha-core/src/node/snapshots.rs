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

/// The newest snapshot, as [`SnapshotFiles::newest_for_start`] found it.
pub enum Newest {
    /// There is no snapshot.
    None,
    /// The newest snapshot, verified: what it covers and its state bytes.
    Good(SnapshotMeta, Vec<u8>),
    /// The newest snapshot is damaged: what was found.
    Damaged(String),
}

/// A node's snapshot directory, shared by the node and its transport.
pub trait SnapshotFiles: Send + Sync {
    /// Writes a snapshot of the state (durably; see `storage::snapshot`).
    fn save(&self, meta: SnapshotMeta, state: &[u8]) -> Result<(), String>;
    /// The newest snapshot, as a file to send.
    fn open_latest(&self) -> Result<Option<OutgoingSnapshot>, String>;
    /// The newest snapshot's state bytes, verified.
    fn latest_state(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String>;
    /// The newest snapshot as a start reads it: its state, or that it is
    /// damaged and what was found (a store that cannot tell damage from
    /// other errors reports every error as one).
    fn newest_for_start(&self) -> Result<Newest, String> {
        Ok(match self.latest_state()? {
            Some((meta, state)) => Newest::Good(meta, state),
            None => Newest::None,
        })
    }
    /// Sets the newest snapshot aside as damaged (kept, no longer a
    /// snapshot to start from or send).
    fn set_aside_newest(&self) -> Result<(), String> {
        Err("this snapshot store cannot set a damaged snapshot aside".into())
    }
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
    fn newest_for_start(&self) -> Result<Newest, String> {
        match self.latest() {
            Ok(Some((meta, state))) => Ok(Newest::Good(meta, state)),
            Ok(None) => Ok(Newest::None),
            Err(e) if e.is_damage() => Ok(Newest::Damaged(e.to_string())),
            Err(e) => Err(e.to_string()),
        }
    }
    fn set_aside_newest(&self) -> Result<(), String> {
        let moved = SnapshotStore::set_aside_newest(self).map_err(|e| e.to_string())?;
        if let Some(p) = moved {
            tracing::warn!("damaged snapshot kept as {}", p.display());
        }
        Ok(())
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
///
/// A log that starts at the snapshot's index with another term (its first
/// segment's base names an entry that a later, now lost, segment replaced:
/// after a repair set damaged segments aside) diverges from it too: the
/// snapshot holds a committed prefix, so it wins.
pub fn merge_snapshot(init: &mut InitialState, index: LogIndex, term: Term) -> Option<bool> {
    if index < init.snapshot_last.0 || (index, term) == init.snapshot_last {
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
///
/// A damaged newest snapshot (it fails verification, or cannot be read:
/// EIO) is repaired from the peers when `can_repair` (there are other
/// voters): the log is marked repairing, durably, first; the file is set
/// aside; the next newest intact one is used. If the log starts after the
/// snapshot that was set aside, its entries cannot be applied without it:
/// the whole log is set aside too ([`Wal::discard_all`]) and the node
/// starts from the intact snapshot (or from nothing), repairing, and gets
/// the rest (entries or a snapshot) from its leader. Each step is durable
/// before the next, and a crash at any point repairs again at the next
/// start. Without `can_repair` (a single voter) a damaged snapshot is
/// refused and nothing is moved.
pub fn recover<V: Vfs>(
    wal: &mut Wal<V>,
    mut stored: StoredState,
    snapshots: &dyn SnapshotFiles,
    applier: &mut dyn Applier,
    can_repair: bool,
) -> Result<InitialState, String> {
    // Each round sets one file aside: bounded by the files there are.
    let latest = loop {
        match snapshots.newest_for_start()? {
            Newest::None => break None,
            Newest::Good(meta, state) => break Some((meta, state)),
            Newest::Damaged(what) if can_repair => {
                tracing::error!("{what}; repairing from the peers: setting it aside");
                wal.mark_repairing(&what).map_err(|e| e.to_string())?;
                snapshots.set_aside_newest()?;
            }
            Newest::Damaged(what) => {
                return Err(format!(
                    "{what}; a single-node cluster has no peer to repair from: restore the \
                     snapshot directory from a backup"
                ));
            }
        }
    };
    let newest = latest.as_ref().map_or(LogIndex(0), |(m, _)| m.index);
    if newest < stored.snapshot_last.0 && wal.repairing().is_some() {
        tracing::error!(
            "the log starts after index {}, past the newest intact snapshot ({newest}): setting \
             the whole log aside and repairing from the peers",
            stored.snapshot_last.0
        );
        stored = wal.discard_all().map_err(|e| e.to_string())?;
    }
    let mut init = InitialState {
        hard_state: stored.hard_state,
        snapshot_last: stored.snapshot_last,
        entries: stored.entries,
        // Damage was found and cut: the node repairs from its peers.
        repairing: wal.repairing().is_some(),
        ..InitialState::default()
    };
    if let Some((meta, state)) = latest {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, EntryPayload};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            payload: EntryPayload::Blank,
        }
    }

    fn init(snapshot: (u64, u64), entries: &[(u64, u64)], commit: u64) -> InitialState {
        let mut i = InitialState {
            snapshot_last: (LogIndex(snapshot.0), Term(snapshot.1)),
            entries: entries.iter().map(|(i, t)| entry(*i, *t)).collect(),
            ..InitialState::default()
        };
        i.hard_state.commit = LogIndex(commit);
        i
    }

    #[test]
    fn a_snapshot_at_the_logs_start_with_another_term_replaces_the_log() {
        // The log begins at a base 409@35 that a lost segment corrected; the
        // snapshot file says 409@37.
        let mut i = init((409, 35), &[(410, 35), (411, 36)], 391);
        assert_eq!(merge_snapshot(&mut i, LogIndex(409), Term(37)), Some(false));
        assert_eq!(i.snapshot_last, (LogIndex(409), Term(37)));
        assert!(i.entries.is_empty(), "entries after a diverging base go");
        assert_eq!(i.hard_state.commit, LogIndex(409));
    }

    #[test]
    fn a_snapshot_the_log_already_starts_from_changes_nothing() {
        let mut i = init((409, 37), &[(410, 37)], 405);
        assert_eq!(merge_snapshot(&mut i, LogIndex(409), Term(37)), None);
        assert_eq!(i.entries.len(), 1);
        let mut i = init((409, 37), &[(410, 37)], 405);
        assert_eq!(merge_snapshot(&mut i, LogIndex(300), Term(30)), None);
        assert_eq!(i.snapshot_last, (LogIndex(409), Term(37)));
    }

    #[test]
    fn a_newer_snapshot_keeps_the_suffix_it_matches_and_drops_one_it_does_not() {
        let mut i = init((0, 0), &[(1, 1), (2, 1), (3, 2)], 1);
        assert_eq!(merge_snapshot(&mut i, LogIndex(2), Term(1)), Some(true));
        assert_eq!(i.entries.len(), 1);
        assert_eq!(i.entries[0].index, LogIndex(3));
        let mut i = init((0, 0), &[(1, 1), (2, 1), (3, 2)], 1);
        assert_eq!(merge_snapshot(&mut i, LogIndex(2), Term(3)), Some(false));
        assert!(i.entries.is_empty());
    }
}
