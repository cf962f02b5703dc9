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

use super::persist::*;
use super::task::*;
use std::io::Read;
use std::path::Path;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::raft::InitialState;
use crate::raft::Message;
use crate::sm::Applier;
use crate::storage::WriteRequest;
use crate::storage::snapshot::{
    RawSnapshotWriter, SnapshotError, SnapshotMeta, SnapshotStore, StartScan,
};
use crate::storage::vfs::Vfs;
use crate::storage::{LogStore, StoredState, Wal};
use crate::types::NodeId;
use crate::types::{LogIndex, Term};

/// A snapshot being received, piece by piece.
pub trait IncomingSnapshot: Send {
    /// Writes the next piece of the file.
    fn write(&mut self, chunk: &[u8]) -> Result<(), SnapshotError>;
    /// Verifies the whole file and makes it visible.
    fn finish(self: Box<Self>) -> Result<(), SnapshotError>;
}

/// A snapshot file to send: which it is, and a reader of its bytes.
pub struct OutgoingSnapshot {
    /// Last index it covers.
    pub index: LogIndex,
    /// Its term.
    pub term: Term,
    /// The configuration in force at `index`.
    pub membership: crate::raft::Membership,
    /// Bytes in the file.
    pub len: u64,
    /// The file's bytes.
    pub data: Box<dyn Read + Send>,
}

/// A node's snapshot directory, shared by the node and its transport.
pub trait SnapshotFiles: Send + Sync {
    /// Writes a snapshot of the state (durably; see `storage::snapshot`).
    fn save(&self, meta: SnapshotMeta, state: &[u8]) -> Result<(), SnapshotError>;
    /// The newest snapshot, as a file to send.
    fn open_latest(&self) -> Result<Option<OutgoingSnapshot>, SnapshotError>;
    /// The newest snapshot's state bytes, verified.
    fn latest_state(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, SnapshotError>;
    /// What a start finds: the newest snapshot that verifies, and the
    /// damaged ones newer than it, newest first, with what is wrong (a
    /// store that cannot tell damage from other errors reports none and
    /// fails instead).
    fn scan_for_start(&self) -> Result<StartScan, SnapshotError> {
        Ok(StartScan {
            intact: self.latest_state()?,
            damaged: Vec::new(),
        })
    }
    /// Sets the damaged snapshot file `file` aside (kept, no longer a
    /// snapshot to start from or send).
    fn set_aside(&self, file: &Path) -> Result<(), SnapshotError> {
        Err(SnapshotError::Other(
            format!("this snapshot store cannot set {} aside", file.display()).into(),
        ))
    }
    /// The state bytes of the snapshot ending at `(index, term)`, verified.
    fn load_state(&self, index: LogIndex, term: Term) -> Result<Vec<u8>, SnapshotError>;
    /// Starts receiving the snapshot ending at `(index, term)`.
    fn begin(
        &self,
        index: LogIndex,
        term: Term,
    ) -> Result<Box<dyn IncomingSnapshot>, SnapshotError>;
    /// Keeps only the newest `n` snapshots.
    fn retain(&self, n: usize) -> Result<(), SnapshotError>;
    /// Raft accepted the received snapshot ending at `(index, term)`: move
    /// it from the staging area (where [`IncomingSnapshot::finish`] left it)
    /// among the snapshots a restart starts from. If a snapshot of that
    /// `(index, term)` exists already it is kept (both hold the same
    /// committed prefix) and the staged copy dropped.
    fn promote(&self, index: LogIndex, term: Term) -> Result<(), SnapshotError>;
    /// The header of the snapshot ending at `(index, term)` if it is here,
    /// staged or published. The node steps an `InstallSnapshot` only if it
    /// is (a message naming a snapshot that never arrived is refused, not
    /// fatal), with the configuration the header names.
    fn meta_of(&self, index: LogIndex, term: Term) -> Result<Option<SnapshotMeta>, SnapshotError>;
}

impl<V: Vfs> IncomingSnapshot for RawSnapshotWriter<V> {
    fn write(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        RawSnapshotWriter::write(self, chunk)
    }
    fn finish(self: Box<Self>) -> Result<(), SnapshotError> {
        RawSnapshotWriter::finish(*self).map(|_| ())
    }
}

impl<V: Vfs> SnapshotFiles for SnapshotStore<V> {
    fn save(&self, meta: SnapshotMeta, state: &[u8]) -> Result<(), SnapshotError> {
        SnapshotStore::save(self, meta, state).map(|_| ())
    }
    fn open_latest(&self) -> Result<Option<OutgoingSnapshot>, SnapshotError> {
        Ok(self
            .open_latest_file()?
            .map(|(meta, len, data)| OutgoingSnapshot {
                index: meta.index,
                term: meta.term,
                membership: meta.membership,
                len,
                data,
            }))
    }
    fn latest_state(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, SnapshotError> {
        self.latest()
    }
    fn scan_for_start(&self) -> Result<StartScan, SnapshotError> {
        SnapshotStore::scan_for_start(self)
    }
    fn set_aside(&self, file: &Path) -> Result<(), SnapshotError> {
        let to = SnapshotStore::set_aside(self, file)?;
        tracing::warn!("damaged snapshot kept as {}", to.display());
        Ok(())
    }
    fn load_state(&self, index: LogIndex, term: Term) -> Result<Vec<u8>, SnapshotError> {
        self.load(index, term).map(|(_, d)| d)
    }
    fn begin(
        &self,
        index: LogIndex,
        term: Term,
    ) -> Result<Box<dyn IncomingSnapshot>, SnapshotError> {
        Ok(Box::new(self.raw_writer(index, term)?))
    }
    fn retain(&self, n: usize) -> Result<(), SnapshotError> {
        SnapshotStore::retain(self, n)
    }
    fn promote(&self, index: LogIndex, term: Term) -> Result<(), SnapshotError> {
        SnapshotStore::promote(self, index, term).map(|_| ())
    }
    fn meta_of(&self, index: LogIndex, term: Term) -> Result<Option<SnapshotMeta>, SnapshotError> {
        SnapshotStore::meta_of(self, index, term)
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

/// Why a node could not start from its storage.
#[derive(thiserror::Error)]
pub enum RecoverError {
    /// The snapshot files could not be read or set aside.
    #[error("snapshots: {0}")]
    Snapshots(#[from] SnapshotError),
    /// The log could not be changed or synced.
    #[error(transparent)]
    Log(#[from] crate::storage::WalError),
    /// The newest snapshot does not restore into the state machine.
    #[error("the newest snapshot does not restore: {0}")]
    Restore(#[from] crate::sm::StateError),
    /// What the disk holds cannot be started from, and nothing can repair
    /// it here (why, and what to do).
    #[error("{0}")]
    Unrecoverable(String),
}

crate::debug_as_display!(RecoverError);

/// Prepares a node's start: restores `applier` from the newest snapshot (if
/// any), merges it with what the log held, and records it in the log if the
/// log had not yet. The result goes to `start_node`.
///
/// Damaged snapshot files (they fail verification, or their reads fail
/// with EIO) newer than the newest intact one are set aside
/// (`<name>.damaged`, kept) and the node starts from the intact one:
/// - if the log still holds every entry after it (the log starts at or
///   before it), nothing is lost: no repair, whatever `can_repair` says;
/// - if not (the log was compacted up to a snapshot that is gone), the
///   entries in between exist only on the peers: with `can_repair` (there
///   are other voters) the log is marked repairing, durably, first, the
///   files are set aside, and the log is set aside whole
///   ([`Wal::discard_all`], keeping its term and vote unless a crash comes
///   in between, which a repair assumes anyway): the node starts
///   from the intact snapshot (or from nothing) and its leader sends it the
///   rest, entries or a snapshot. Without `can_repair` the start is refused
///   and nothing is moved.
///
/// A log that starts at the intact snapshot's index with another term
/// (a record that restated its start was lost) is repaired the same way:
/// the snapshot holds a committed prefix and wins, the entries after the
/// log's start go, and the node repairs (or, a single voter, refuses).
///
/// Each step is durable before the next, and each is decided afresh from
/// what is on disk: a crash at any point repairs again at the next start
/// (the mark stays until the repair ends).
pub fn recover<V: Vfs>(
    wal: &mut Wal<V>,
    mut stored: StoredState,
    snapshots: &dyn SnapshotFiles,
    applier: &mut dyn Applier,
    can_repair: bool,
) -> Result<InitialState, RecoverError> {
    let scan = snapshots
        .scan_for_start()
        .map_err(RecoverError::Snapshots)?;
    let intact = scan
        .intact
        .as_ref()
        .map_or((LogIndex(0), Term(0)), |(m, _)| (m.index, m.term));
    let start = stored.snapshot_last;
    // The log starts after the intact snapshot: the entries in between were
    // only in a snapshot that is gone (or was never there).
    let gap = intact.0 < start.0;
    // The log starts at the intact snapshot's index with another term.
    let conflict = intact.0 == start.0 && intact.0 > LogIndex(0) && intact.1 != start.1;
    if gap || conflict {
        let lost = if gap {
            format!(
                "the log starts after index {}, but the newest intact snapshot ends at {}: the \
                 entries in between are lost",
                start.0, intact.0
            )
        } else {
            format!(
                "the log starts at index {} of term {}, but the snapshot there is of term {}: \
                 the entries after it may be lost",
                start.0, start.1, intact.1
            )
        };
        let why = match scan.damaged.first() {
            Some((_, damage)) => format!("{damage}; {lost}"),
            None => lost,
        };
        if !can_repair {
            return Err(RecoverError::Unrecoverable(format!(
                "{why}, and a single-node cluster has no peer to repair from: restore the data \
                 directory from a backup"
            )));
        }
        tracing::error!("{why}; repairing from the peers");
        wal.mark_repairing(&why)?;
    }
    for (file, why) in &scan.damaged {
        tracing::error!("{why}; setting it aside");
        snapshots.set_aside(file).map_err(RecoverError::Snapshots)?;
    }
    if gap {
        tracing::error!("setting the whole log aside: it cannot be applied without that snapshot");
        stored = wal.discard_all(stored.hard_state)?;
    }
    let mut init = InitialState {
        hard_state: stored.hard_state,
        snapshot_last: stored.snapshot_last,
        entries: stored.entries,
        // Damage was found: the node repairs from its peers.
        repairing: wal.repairing().is_some(),
        ..InitialState::default()
    };
    if let Some((meta, state)) = scan.intact {
        if meta.index < init.snapshot_last.0 {
            return Err(RecoverError::Unrecoverable(format!(
                "the newest snapshot ends at {} but the log starts after {}: a snapshot file is \
                 missing",
                meta.index, init.snapshot_last.0
            )));
        }
        applier.restore(&state).map_err(RecoverError::Restore)?;
        init.membership = meta.membership.clone();
        if let Some(keep) = merge_snapshot(&mut init, meta.index, meta.term) {
            wal.install_snapshot(meta.index, meta.term, keep)?;
            wal.sync()?;
        }
    } else if init.snapshot_last.0 > LogIndex(0) {
        return Err(RecoverError::Unrecoverable(format!(
            "the log starts after a snapshot at index {}, but no snapshot file is there",
            init.snapshot_last.0
        )));
    }
    Ok(init)
}

/// The slowest rate a snapshot transfer is allowed before the node's
/// backstop gives up on it: 1 MiB/s, as the QUIC transport's own deadline.
const SLOWEST_TRANSFER_BYTES_PER_SEC: u64 = 1 << 20;

// On the node task: taking snapshots, sending them, and giving up on
// transfers that stall.
impl<V: Vfs> NodeTask<V> {
    /// A transfer the transport has not reported within the timeout counts
    /// as failed, so a lost report cannot keep a follower without appends.
    pub(super) fn expire_transfers(&mut self) {
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
    pub(super) fn send_snapshot(&mut self, peer: NodeId) {
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
                membership: snap.membership.clone(),
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

    /// Takes a snapshot when enough was applied since the last one. The
    /// state machine goes to a blocking thread to encode its state, at the
    /// applied index it holds; meanwhile the core holds its committed
    /// entries back (`Raft::hold_apply`) and the pipeline its reads, while
    /// appends, heartbeats, votes and commits go on, so a large state does
    /// not stall consensus or cost an election. Writes and reads are
    /// answered only once the state machine is back (a leader encoding
    /// alone keeps its leadership and answers nothing for that long), and
    /// a follower that takes a snapshot install meanwhile goes quiet until
    /// then. Called between Readies only (the hold must not catch a Ready
    /// with entries to apply).
    pub(super) fn maybe_snapshot(&mut self) {
        if self.snapshotting || self.raft.apply_held() || self.pipeline.busy() {
            return;
        }
        let applied = self.pipeline.applied();
        // After a failure, not again before its backoff ends (by time, not
        // by entries: a leader refusing writes over its storage quota
        // applies no more, yet needs the snapshot that lifts the quota; a
        // state that cannot encode would otherwise hold apply back on
        // every Ready).
        if self
            .snapshot_retry
            .is_some_and(|(at, _)| Instant::now() < at)
        {
            return;
        }
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
        let meta = crate::storage::SnapshotMeta {
            index: applied,
            term,
            // The configuration in force at the snapshot's index, not the
            // latest one (a later configuration entry may yet be truncated).
            membership: self.raft.membership_at(applied).clone(),
        };
        let away = Away::standing_in_for(&*self.applier);
        let applier = std::mem::replace(&mut self.applier, Box::new(away));
        self.raft.hold_apply(true);
        self.pipeline.hold_reads(true);
        self.snapshotting = true;
        let tx = self.event_sender();
        self.spawn_file_work(move || {
            let started = Instant::now();
            // The user's encoding may panic: caught, the state machine
            // (only borrowed by `snapshot`) still comes back, and the node
            // goes on without this snapshot.
            let state =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| applier.snapshot()))
                    .map_err(|p| {
                        format!(
                            "the state machine panicked: {}",
                            crate::sm::panic_message(&*p)
                        )
                    })
                    .and_then(|r| r.map_err(|e| e.to_string()));
            let took = started.elapsed();
            // (A node stopping meanwhile drops the state machine with the
            // event, once its task ends.)
            let _ = tx.send(Event::Encoded(Encoded {
                applier,
                meta,
                state,
                took,
            }));
        });
    }

    /// A snapshot failed: the next waits 1 s, then twice as long as the
    /// last, up to 60 s. Returns the wait.
    fn snapshot_failed(&mut self) -> Duration {
        let wait = self
            .snapshot_retry
            .map_or(Duration::from_secs(1), |(_, w)| {
                (w * 2).min(Duration::from_secs(60))
            });
        self.snapshot_retry = Some((Instant::now() + wait, wait));
        self.metrics
            .snapshot_failures
            .fetch_add(1, Ordering::Relaxed);
        wait
    }

    /// The state machine is back from encoding: apply and reads go on, and
    /// the state is written to disk on a blocking thread.
    pub(super) fn on_encoded(&mut self, e: Encoded) {
        self.applier = e.applier;
        self.raft.hold_apply(false);
        self.pipeline.hold_reads(false);
        let mut io = NodeIo::new(&*self.transport, &mut *self.applier, &self.metrics);
        self.pipeline.serve_reads(&mut io);
        self.metrics.snapshot_encode.observe(e.took);
        let state = match e.state {
            Ok(s) => s,
            Err(err) => {
                self.snapshotting = false;
                let wait = self.snapshot_failed();
                tracing::error!(node = %self.raft.id(), index = %e.meta.index, "cannot encode a snapshot (trying again in {wait:?}): {err}");
                return;
            }
        };
        let (applied, term) = (e.meta.index, e.meta.term);
        tracing::debug!(node = %self.raft.id(), index = %applied, bytes = state.len(), took = ?e.took, "encoded a snapshot");
        let (files, tx) = (self.snapshots.clone(), self.event_sender());
        let meta = e.meta;
        self.spawn_file_work(move || {
            let r = files.save(meta, &state).map(|()| (applied, term));
            let _ = files.retain(2);
            let _ = tx.send(Event::Snapshotted(r.map_err(|e| e.to_string())));
        });
    }

    /// A snapshot is durable: the log may drop what it covers.
    pub(super) fn on_snapshotted(
        &mut self,
        r: Result<(LogIndex, Term), String>,
    ) -> Result<(), String> {
        self.snapshotting = false;
        let (index, term) = match r {
            Ok(x) => x,
            Err(e) => {
                // Not again at once: each try holds apply while it encodes.
                let wait = self.snapshot_failed();
                tracing::error!(node = %self.raft.id(), "cannot write a snapshot (trying again in {wait:?}): {e}");
                return Ok(());
            }
        };
        self.snapshot_retry = None;
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
}

/// The state machine back from encoding a snapshot (see
/// `NodeTask::maybe_snapshot`).
pub(super) struct Encoded {
    pub(super) applier: Box<dyn Applier>,
    pub(super) meta: crate::storage::SnapshotMeta,
    pub(super) state: Result<Vec<u8>, String>,
    pub(super) took: Duration,
}

/// Stands in for the state machine while it encodes a snapshot on a
/// blocking thread. The core's apply and the pipeline's reads are held
/// meanwhile and stale queries are answered busy, so nothing applies,
/// restores or queries through it; status reads what the state machine
/// said when it left.
pub(super) struct Away {
    halted: Option<String>,
    panic_policy: Option<crate::sm::PanicPolicy>,
    divergences: u64,
}

impl Away {
    fn standing_in_for(a: &dyn Applier) -> Away {
        Away {
            halted: a.halted(),
            panic_policy: a.panic_policy(),
            divergences: a.divergences(),
        }
    }
}

impl Applier for Away {
    fn apply(&mut self, index: LogIndex, _: Term, _: &bytes::Bytes) -> bytes::Bytes {
        // The core hands no committed entry while its apply is held
        // (`Raft::hold_apply`, set before this stands in and let go only
        // after the state machine is back): reaching this is a bug in the
        // node, not anything from outside, and applying nothing would let
        // this replica's state silently diverge.
        unreachable!("entry {index} handed for apply while the state machine encodes a snapshot")
    }
    fn query(&self, _: &bytes::Bytes) -> Result<bytes::Bytes, crate::sm::StateError> {
        Err(crate::sm::StateError::Query(
            "the state machine is encoding a snapshot".into(),
        ))
    }
    fn snapshot(&self) -> Result<Vec<u8>, crate::sm::StateError> {
        Err(crate::sm::StateError::Encode(
            "the state machine is encoding a snapshot".into(),
        ))
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), crate::sm::StateError> {
        // As for `apply`: no install is handed while apply is held.
        unreachable!("a snapshot install handed while the state machine encodes a snapshot")
    }
    fn halted(&self) -> Option<String> {
        self.halted.clone()
    }
    fn panic_policy(&self) -> Option<crate::sm::PanicPolicy> {
        self.panic_policy
    }
    fn divergences(&self) -> u64 {
        self.divergences
    }
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
