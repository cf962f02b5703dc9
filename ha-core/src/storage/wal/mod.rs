//! The segmented write-ahead log: the durable [`LogStore`].
//!
//! Owns: the byte layout of log segments (written down in
//! `docs/storage-format.md` and mirrored by the constants here), writing
//! records in checksummed batches, and recovering from a crash on open.
//!
//! How it works:
//! - Records go to an in-memory buffer on `append`, `save_hard_state` and
//!   `compact`; `sync` writes the buffer as one *batch* (a `BatchStart`
//!   record giving the batch's length, then the records) with one write and
//!   one `fdatasync`. Group commit sits on top of this ([`super::GroupCommit`]).
//! - A record is at most [`MAX_RECORD_BYTES`]: an append holding a larger
//!   one is refused whole with [`WalError::RecordTooLarge`] before anything
//!   is buffered. A buffer larger than the batch limit ([`MAX_BATCH_BYTES`],
//!   or less via [`Wal::set_max_batch_bytes`]) is written as several
//!   batches, split between records, each written and synced before the
//!   next. A crash during such a sync may therefore keep only the first
//!   batches of it: a *prefix* of what one `sync` (one Raft Ready, or one
//!   group of them) wrote, possibly ending inside an append. That is safe:
//!   nothing of that sync was acknowledged (acknowledgement waits for the
//!   whole sync), records are in the order the caller gave them (entries
//!   before the hard state that commits them), and Raft only needs the
//!   durable log to be a prefix of what it wrote.
//! - Truncating a conflicting suffix is a `Truncate` record, not a rewrite:
//!   segments are append-only, so a crash can only ever damage the tail.
//! - A segment is sealed when it passes `segment_max_bytes`; the next batch
//!   opens a new segment whose first records restate the hard state and the
//!   snapshot mark, so older segments can be deleted once a snapshot covers
//!   them.
//!
//! Recovery (on open), per segment, batch by batch:
//! - A batch is applied only when every record in it is whole and checksums
//!   match, and its batch start names its own offset and segment and the
//!   previous batch start's CRC (format version 2), so no copy of a batch
//!   start inside a payload passes for one.
//! - A bad batch in the *last* segment is a torn tail (the write a crash
//!   interrupted, never acknowledged) only if it runs past the end of the
//!   file, or one of its 512-byte sectors reads as zeros and only zeros
//!   follow it, or its batch start is cut short or zeros with no bound batch
//!   start after it (see `scan_segment`). It is cut off.
//! - Any other bad record means acknowledged data is damaged: opening fails
//!   with [`WalError::Corrupt`] naming the file and the offset. Nothing is
//!   ever skipped silently.
//! - The last batch is then written again in place and synced (after a
//!   failed fsync its pages read back whole from the cache, yet a crash
//!   loses them), and a newest segment without a base takes no more
//!   batches.
//!
//! Invariants:
//! 1. Batches are written one at a time, each followed by `fdatasync`
//!    before the next begins (also the several batches of one large sync);
//!    so a batch followed by any other batch was synced, and only the last
//!    batch can be torn.
//! 2. Replayed entries are contiguous: an `Entry` record follows the
//!    previous entry, a snapshot mark, or a `Truncate`.
//! 3. After a write or sync error the log is failed: it refuses every
//!    further write until reopened, because the kernel may have dropped the
//!    unsynced pages (fsync errors are not retryable).
//! 4. Every length written is checked against its limit (`u32::try_from`,
//!    [`MAX_RECORD_BYTES`], [`MAX_BATCH_BYTES`]) before a byte is buffered,
//!    and every length, index and term read back is checked before use: no
//!    file content can make the log panic or read out of bounds.

mod format;
mod open;
mod repair;
mod scan;
mod write;
use self::format::*;
use self::repair::*;
use self::scan::*;

use std::path::{Path, PathBuf};

use super::vfs::{Vfs, VfsFile};
use super::{LogStore, StoredState};
use crate::raft::Membership;
use crate::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

/// First bytes of every segment file this build writes: "HA-WAL", a zero,
/// format version 2 (batch starts bound to their place and chained).
pub const SEGMENT_MAGIC: [u8; 8] = *b"HA-WAL\x00\x02";
/// Format version 1 (unbound batch starts): still read; a log whose newest
/// segment has it continues in a new version 2 segment.
const SEGMENT_MAGIC_V1: [u8; 8] = *b"HA-WAL\x00\x01";
/// A version 2 batch start record's payload: batch length (4), the CRC of
/// the segment's previous batch start record (4, 0 for the first).
const BATCH_START_V2_PAYLOAD: usize = 8;
/// A version 2 batch start record, whole.
const BATCH_START_V2_BYTES: usize = RECORD_HEADER_BYTES + BATCH_START_V2_PAYLOAD;
/// Sector size of the torn-write rule: a torn append leaves whole sectors
/// unwritten, which read back as zeros.
const SECTOR_BYTES: usize = 512;
/// Segment header: magic (8), sequence number (8), reserved (8), CRC32C of
/// the first 24 bytes (4), zero padding (4).
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// What precedes a version 2 segment's first batch: the header, then a
/// guard record (a version 1 batch start of an empty batch). A build that
/// reads only version 1 sees the unknown magic, finds the guard "after" it
/// and refuses the log as damaged, instead of taking the segment for a torn
/// creation and deleting it (a downgrade never loses data silently).
pub const SEGMENT_PREFIX_BYTES: usize = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 4;
/// Record header: length (4), CRC32C (4), kind (1), index (8), term (8).
/// The length counts the bytes after the CRC: kind, index, term, payload.
pub const RECORD_HEADER_BYTES: usize = 25;
/// The part of a record the length and the CRC cover, minus the payload.
const RECORD_FIXED_BYTES: usize = 17;
/// Largest record: the record header's length field (kind, index, term and
/// payload) is at most this. Appends of a larger record are refused; reading
/// treats a larger length field as damage.
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// Largest command an entry may carry: what a record holds after its fixed
/// part and the payload tag.
pub const MAX_COMMAND_BYTES: usize = MAX_RECORD_BYTES - RECORD_FIXED_BYTES - 1;
/// Largest batch: the bytes after a `BatchStart` record. Larger syncs are
/// split into several batches (see the module docs); reading treats a larger
/// batch length as damage. Any one record fits in a batch of its own.
pub const MAX_BATCH_BYTES: usize = 128 << 20;
const _: () = assert!(
    MAX_BATCH_BYTES >= 8 + MAX_RECORD_BYTES && MAX_BATCH_BYTES <= u32::MAX as usize,
    "a batch holds any one record, and its length fits the u32 field"
);

/// Record kinds.
const KIND_BATCH_START: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_HARD_STATE: u8 = 3;
const KIND_TRUNCATE: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
const KIND_BASE: u8 = 6;

/// Entry payload tags.
const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_COMMAND: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

/// Settings of the log. Built with [`WalOptions::default`] or
/// [`WalOptions::with_segment_max_bytes`] (fields may be added).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WalOptions {
    /// A segment is sealed once it is at least this large.
    pub segment_max_bytes: u64,
    /// A storage bug to plant (tests only: the simulator proves it catches
    /// each fix reverted).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<crate::raft::PlantedBug>,
}

impl WalOptions {
    /// The default options, with segments sealed once they reach `bytes`.
    pub fn with_segment_max_bytes(bytes: u64) -> WalOptions {
        WalOptions {
            segment_max_bytes: bytes,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions::with_segment_max_bytes(64 << 20)
    }
}

#[cfg(feature = "planted-bugs")]
impl WalOptions {
    /// These options with `bug` planted (tests only; a core bug is
    /// ignored here, as a storage bug is by the core's `Config`).
    pub fn with_planted_bug(mut self, bug: Option<crate::raft::PlantedBug>) -> WalOptions {
        self.planted_bug = bug;
        self
    }
}

/// Storage bugs planted back for the simulator to catch: all off unless
/// the `planted-bugs` feature sets one through [`WalOptions`].
#[derive(Clone, Copy, Default)]
struct Planted {
    torn_any_bad_tail: bool,
    no_rewrite_at_open: bool,
    unbound_batch_start: bool,
    append_without_base: bool,
    no_dir_sync: bool,
}

impl Planted {
    #[cfg(feature = "planted-bugs")]
    fn of(opts: &WalOptions) -> Planted {
        use crate::raft::PlantedBug as B;
        let on = |b| opts.planted_bug == Some(b);
        Planted {
            torn_any_bad_tail: on(B::WalTornAnyBadTail),
            no_rewrite_at_open: on(B::WalNoRewriteAtOpen),
            unbound_batch_start: on(B::WalUnboundBatchStart),
            append_without_base: on(B::WalAppendWithoutBase),
            no_dir_sync: on(B::WalNoDirSync),
        }
    }

    #[cfg(not(feature = "planted-bugs"))]
    fn of(_opts: &WalOptions) -> Planted {
        Planted::default()
    }
}

/// What can go wrong.
#[derive(thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("write-ahead log I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Acknowledged data is damaged; the node must not start on it.
    #[error(
        "write-ahead log is corrupt: {file} at byte offset {offset}: {reason}; \
         acknowledged data is damaged, refusing to start (restore this node from \
         its peers or a backup)"
    )]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// An earlier write or sync failed; the log refuses writes until reopened.
    #[error("write-ahead log stopped after an earlier error ({0}); reopen it to recover")]
    Failed(String),
    /// The caller broke the append contract.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// A record would exceed [`MAX_RECORD_BYTES`]. Nothing of the call that
    /// returned this was buffered; the log stays usable.
    #[error(
        "write-ahead log record for index {index} would be {bytes} bytes, above the limit of \
         {max} bytes; the append was refused and nothing of it was written"
    )]
    RecordTooLarge {
        /// The entry's index (or the record's index field).
        index: LogIndex,
        /// The record's length as it would be encoded.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

crate::debug_as_display!(WalError);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Highest entry index written in this segment (0 if none).
    max_index: LogIndex,
    /// Whether the segment starts with a base record (every segment but the
    /// very first does), so replay can begin at it once older ones are gone.
    has_base: bool,
    /// Format version (1 or 2; this build writes 2).
    version: u8,
    /// CRC of the segment's last batch start record (0 before the first):
    /// the next batch start names it (version 2).
    chain: u32,
    /// Where the segment's last batch starts, if it has one.
    last_batch_at: Option<u64>,
    /// Where the batch a scan found damaged starts (0: the header).
    damaged_at: Option<u64>,
}

impl Segment {
    /// A version 2 segment of `bytes` bytes, nothing known of its records yet.
    fn new(seq: u64, path: PathBuf, bytes: u64) -> Segment {
        Segment {
            seq,
            path,
            bytes,
            max_index: LogIndex(0),
            has_base: false,
            version: 2,
            chain: 0,
            last_batch_at: None,
            damaged_at: None,
        }
    }
}

/// The segmented write-ahead log (see the module docs).
pub struct Wal<V: Vfs> {
    vfs: V,
    dir: PathBuf,
    opts: WalOptions,
    /// Oldest first; the last one is open for appending. Never empty.
    segments: Vec<Segment>,
    file: V::File,
    /// Records written since the last sync.
    pending: Vec<u8>,
    /// Highest entry index in `pending`.
    pending_max_index: LogIndex,
    /// The log as written, including `pending`.
    current: Position,
    /// The log as of the last successful sync.
    synced: Position,
    /// Set after a write error (invariant 3).
    failed: Option<String>,
    /// What the last open repaired, for logs and tests.
    repaired: Option<String>,
    /// Successful fsyncs, for metrics and tests.
    syncs: u64,
    /// A sync whose buffer is larger is written as several batches.
    max_batch_bytes: usize,
    /// The next batch goes to a new segment (see `open`).
    rotate_next: bool,
    /// Why the log is repairing, while it is (see [`Wal::open_repairing`]).
    repairing: Option<String>,
}

/// An opened log and what it holds.
type Opened<V> = (Wal<V>, StoredState);
/// Where a scan found damage: the segment's sequence number and the offset
/// of the damaged batch in it.
type DamageAt = (u64, u64);

impl<V: Vfs> Wal<V> {
    /// Opens (or creates) the log in `dir`, repairing a torn tail, and
    /// returns it with everything it holds.
    pub fn open(vfs: V, dir: &Path, opts: WalOptions) -> Result<(Wal<V>, StoredState), WalError> {
        let (mut wal, state) = Self::open_attempt(vfs, dir, opts).map_err(|(e, _)| e)?;
        wal.repairing = read_marker(&wal.vfs, dir)?;
        Ok((wal, state))
    }

    /// Like [`Wal::open`], but damage to acknowledged data does not refuse
    /// the log: the damaged segment and every later one are moved to a
    /// `damaged-*` directory beside the segments (kept for inspection), the
    /// intact prefix before the damaged batch stays, and the log is marked
    /// *repairing* ([`Wal::repairing`]) until [`Wal::finish_repair`]: its
    /// owner must not vote until it has the rest of the log from its peers
    /// (see `InitialState::repairing`). The mark is durable before anything
    /// is moved, so a crash mid-repair restarts the repair.
    pub fn open_repairing(
        vfs: V,
        dir: &Path,
        opts: WalOptions,
    ) -> Result<(Wal<V>, StoredState), WalError> {
        // Each round moves at least one segment aside or cuts one short, so
        // the rounds are bounded by the segments there are.
        for _ in 0..=MAX_REPAIR_ROUNDS {
            match Self::open_attempt(vfs.clone(), dir, opts.clone()) {
                Ok((mut wal, state)) => {
                    wal.repairing = read_marker(&wal.vfs, dir)?;
                    return Ok((wal, state));
                }
                Err((e @ WalError::Corrupt { .. }, Some((seq, at)))) => {
                    tracing::error!(dir = %dir.display(), "{e}; repairing: keeping the intact prefix and moving the rest aside");
                    write_marker(&vfs, dir, &e.to_string())?;
                    quarantine(&vfs, dir, seq, at)?;
                }
                Err((e, _)) => return Err(e),
            }
        }
        Err(WalError::Corrupt {
            file: dir.to_path_buf(),
            offset: 0,
            reason: format!("still damaged after {MAX_REPAIR_ROUNDS} repair rounds"),
        })
    }

    /// Why the log stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Number of successful syncs since open.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes in all segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Caps the bytes of one batch (default and upper bound:
    /// [`MAX_BATCH_BYTES`]); a sync holding more is written as several
    /// batches, each synced before the next (see the module docs). A record
    /// larger than the cap still goes out, alone in its batch. For tests and
    /// tuning.
    pub fn set_max_batch_bytes(&mut self, bytes: usize) {
        self.max_batch_bytes = bytes.clamp(1, MAX_BATCH_BYTES);
    }

    fn check_usable(&self) -> Result<(), WalError> {
        match &self.failed {
            Some(e) => Err(WalError::Failed(e.clone())),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: WalError) -> WalError {
        tracing::error!(dir = %self.dir.display(), error = %e, "write-ahead log stopped accepting writes");
        self.failed = Some(e.to_string());
        e
    }

    /// Reopens the log from disk after a failure (for example once space
    /// returns), discarding whatever was not synced. The caller restarts its
    /// Raft core from the returned state.
    pub fn reopen(self) -> Result<(Wal<V>, StoredState), WalError> {
        let (vfs, dir, opts) = (self.vfs.clone(), self.dir.clone(), self.opts.clone());
        let max_batch_bytes = self.max_batch_bytes;
        drop(self);
        let (mut wal, state) = Wal::open(vfs, &dir, opts)?;
        wal.max_batch_bytes = max_batch_bytes;
        Ok((wal, state))
    }
}
