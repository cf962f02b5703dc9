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

/// The file whose presence marks a log as repairing; it holds what was
/// found.
const REPAIR_MARKER: &str = "REPAIRING";
/// Repair rounds one open may take (each moves a segment aside or cuts one).
const MAX_REPAIR_ROUNDS: usize = 1 << 16;

/// The repairing mark's text, if the log is marked.
fn read_marker<V: Vfs>(vfs: &V, dir: &Path) -> Result<Option<String>, WalError> {
    let marker = dir.join(REPAIR_MARKER);
    match vfs.read(&marker) {
        Ok(b) => Ok(Some(
            String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&marker)(e)),
    }
}

/// Marks the log as repairing, durably (written aside, synced, renamed,
/// the directory synced), before anything is moved.
fn write_marker<V: Vfs>(vfs: &V, dir: &Path, why: &str) -> Result<(), WalError> {
    let tmp = dir.join(format!("{REPAIR_MARKER}.tmp"));
    let marker = dir.join(REPAIR_MARKER);
    let mut f = vfs.open(&tmp, true).map_err(io_err(&tmp))?;
    f.set_len(0).map_err(io_err(&tmp))?;
    f.append(why.as_bytes()).map_err(io_err(&tmp))?;
    f.sync().map_err(io_err(&tmp))?;
    vfs.rename(&tmp, &marker).map_err(io_err(&marker))?;
    vfs.sync_dir(dir).map_err(io_err(dir))
}

/// Sets segment `seq` (damaged at batch offset `at`) and every later one
/// aside in a new `dir/damaged-<seq>-<at>[-<n>]/`, then puts back segment
/// `seq`'s intact prefix (the bytes before `at`, if more than its header)
/// under its name.
///
/// Crash-safe in every step, and needs no free space but for the prefix:
/// segments move by renames, newest first, each durably, so what is left is
/// always the segments before the moved ones, and the next open either
/// finds the same damage and starts over or finds the log without it (the
/// repairing mark is durable before this runs, so either way the node
/// repairs from its peers). Writing the prefix back is a bonus: if it fails
/// (a full disk), the log goes on without it.
fn quarantine<V: Vfs>(vfs: &V, dir: &Path, seq: u64, at: u64) -> Result<(), WalError> {
    set_aside(vfs, dir, seq, at, "damaged")
}

/// [`quarantine`], into `dir/<label>-<seq>-<at>[-<n>]/`.
fn set_aside<V: Vfs>(vfs: &V, dir: &Path, seq: u64, at: u64, label: &str) -> Result<(), WalError> {
    let names = vfs.list(dir).map_err(io_err(dir))?;
    // A directory that cannot be listed does not exist yet (`list` names
    // files only, so the names above cannot tell).
    let base = format!("{label}-{seq:016x}-{at}");
    let aside = (0u32..)
        .map(|n| match n {
            0 => dir.join(&base),
            n => dir.join(format!("{base}-{n}")),
        })
        .find(|d| vfs.list(d).is_err())
        .expect("some name is free");
    super::vfs::create_dir_durably(vfs, &aside).map_err(io_err(&aside))?;
    let damaged = dir.join(segment_name(seq));
    // Read before it moves (it may be unreadable: then nothing is kept).
    let prefix = if at as usize > SEGMENT_HEADER_BYTES {
        vfs.read(&damaged)
            .ok()
            .and_then(|b| b.get(..at as usize).map(<[u8]>::to_vec))
    } else {
        None
    };
    let mut moving: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .filter(|s| *s >= seq)
        .collect();
    moving.sort_unstable_by(|a, b| b.cmp(a));
    for s in moving {
        let from = dir.join(segment_name(s));
        let to = aside.join(segment_name(s));
        vfs.rename(&from, &to).map_err(io_err(&to))?;
        vfs.sync_dir(&aside).map_err(io_err(&aside))?;
        vfs.sync_dir(dir).map_err(io_err(dir))?;
    }
    if let Some(prefix) = prefix {
        let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
        let put_back = || -> std::io::Result<()> {
            let mut f = vfs.open(&tmp, true)?;
            f.set_len(0)?;
            f.append(&prefix)?;
            f.sync()?;
            vfs.rename(&tmp, &damaged)?;
            vfs.sync_dir(dir)
        };
        if let Err(e) = put_back() {
            tracing::warn!(dir = %dir.display(), "could not keep the intact prefix of the damaged segment ({e}); repairing without it");
            let _ = vfs.remove(&tmp);
        }
    }
    Ok(())
}

/// Where the log stands.
#[derive(Clone, Copy, Debug)]
struct Position {
    last_index: LogIndex,
    last_term: Term,
    snapshot: (LogIndex, Term),
    hard_state: HardState,
}

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A version 2 segment's prefix: header and guard (see
/// [`SEGMENT_PREFIX_BYTES`]).
fn segment_prefix(seq: u64) -> Vec<u8> {
    let mut h = vec![0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&downgrade_guard());
    h
}

/// The guard record: a version 1 batch start of an empty batch.
fn downgrade_guard() -> Vec<u8> {
    let mut g = Vec::with_capacity(RECORD_HEADER_BYTES + 4);
    put_record(&mut g, KIND_BATCH_START, 0, 0, &0u32.to_le_bytes())
        .expect("a 4-byte payload is within the record limit");
    g
}

/// Checks a segment header; returns the segment's format version (1 or 2).
fn check_segment_header(buf: &[u8], seq: u64) -> Result<u8, String> {
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Err(format!("segment header is short ({} bytes)", buf.len()));
    }
    let version = if buf[..8] == SEGMENT_MAGIC {
        2
    } else if buf[..8] == SEGMENT_MAGIC_V1 {
        1
    } else {
        return Err("not a write-ahead log segment (bad magic or format version)".into());
    };
    let crc = u32::from_le_bytes(buf[24..28].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&buf[..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let got = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    if got != seq {
        return Err(format!(
            "segment header names sequence {got}, file name says {seq}"
        ));
    }
    if version == 2
        && buf.get(SEGMENT_HEADER_BYTES..SEGMENT_PREFIX_BYTES) != Some(&downgrade_guard()[..])
    {
        return Err("segment header's guard record is missing or damaged".into());
    }
    Ok(version)
}

/// Appends one record to `out`; refuses (appending nothing) one whose length
/// field would exceed [`MAX_RECORD_BYTES`].
fn put_record(
    out: &mut Vec<u8>,
    kind: u8,
    index: u64,
    term: u64,
    payload: &[u8],
) -> Result<(), WalError> {
    let too_large = || WalError::RecordTooLarge {
        index: LogIndex(index),
        bytes: RECORD_FIXED_BYTES.saturating_add(payload.len()),
        max: MAX_RECORD_BYTES,
    };
    let len = RECORD_FIXED_BYTES
        .checked_add(payload.len())
        .filter(|l| *l <= MAX_RECORD_BYTES)
        .ok_or_else(too_large)?;
    let len = u32::try_from(len).map_err(|_| too_large())?;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn encode_hard_state(hs: HardState, out: &mut Vec<u8>) -> Result<(), WalError> {
    let vote = hs.vote.map_or(0, |v| v.0).to_le_bytes();
    put_record(out, KIND_HARD_STATE, hs.commit.0, hs.term.0, &vote)
}

/// Encodes an entry payload; fails only for a membership set whose size does
/// not fit its u32 count.
fn encode_payload(p: &EntryPayload, out: &mut Vec<u8>) -> Result<(), String> {
    match p {
        EntryPayload::Blank => out.push(PAYLOAD_BLANK),
        EntryPayload::Command(b) => {
            out.push(PAYLOAD_COMMAND);
            out.extend_from_slice(b);
        }
        EntryPayload::Membership(m) => {
            out.push(PAYLOAD_MEMBERSHIP);
            for set in [&m.voters, &m.voters_outgoing, &m.learners] {
                let n = u32::try_from(set.len())
                    .map_err(|_| format!("a membership set of {} ids", set.len()))?;
                out.extend_from_slice(&n.to_le_bytes());
                for id in set.iter() {
                    out.extend_from_slice(&id.0.to_le_bytes());
                }
            }
        }
    }
    Ok(())
}

/// Where the batch that starts at `from` in `records` (whole records, as
/// `put_record` wrote them) ends: as many records as fit in `limit` bytes,
/// and at least one.
fn batch_end(records: &[u8], from: usize, limit: usize) -> usize {
    let mut end = from;
    while let Some(len) = records.get(end..end + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let size = 8 + len;
        if end > from && end - from + size > limit {
            break;
        }
        end = (end + size).min(records.len());
    }
    if end == from { records.len() } else { end }
}

fn decode_payload(b: &[u8]) -> Result<EntryPayload, String> {
    let (&tag, rest) = b.split_first().ok_or("empty entry payload")?;
    match tag {
        PAYLOAD_BLANK if rest.is_empty() => Ok(EntryPayload::Blank),
        PAYLOAD_COMMAND => Ok(EntryPayload::Command(bytes::Bytes::copy_from_slice(rest))),
        PAYLOAD_MEMBERSHIP => {
            let mut m = Membership::default();
            let mut at = 0;
            for k in 0..3 {
                let n = rest.get(at..at + 4).ok_or("membership payload is short")?;
                let n = u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize;
                at += 4;
                for _ in 0..n {
                    let id = rest.get(at..at + 8).ok_or("membership payload is short")?;
                    let id = NodeId(u64::from_le_bytes(id.try_into().expect("8 bytes")));
                    at += 8;
                    [&mut m.voters, &mut m.voters_outgoing, &mut m.learners][k].insert(id);
                }
            }
            if at != rest.len() {
                return Err("membership payload has trailing bytes".into());
            }
            Ok(EntryPayload::Membership(m))
        }
        t => Err(format!("unknown entry payload tag {t}")),
    }
}

/// One decoded record.
struct Record<'a> {
    kind: u8,
    index: u64,
    term: u64,
    payload: &'a [u8],
}

/// Decodes the record at `pos`; returns it and the offset after it.
fn read_record(buf: &[u8], pos: usize) -> Result<(Record<'_>, usize), String> {
    let header = buf.get(pos..pos + 8).ok_or("record header is cut short")?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if !(RECORD_FIXED_BYTES..=MAX_RECORD_BYTES).contains(&len) {
        return Err(format!("record length {len} is out of range"));
    }
    let body = buf
        .get(pos + 8..pos + 8 + len)
        .ok_or("record is cut short")?;
    if crc32c::crc32c(body) != crc {
        return Err("record checksum mismatch".into());
    }
    let rec = Record {
        kind: body[0],
        index: u64::from_le_bytes(body[1..9].try_into().expect("8 bytes")),
        term: u64::from_le_bytes(body[9..17].try_into().expect("8 bytes")),
        payload: &body[RECORD_FIXED_BYTES..],
    };
    Ok((rec, pos + 8 + len))
}

/// Whether `buf[from..to]` overlaps a 512-byte sector (aligned to file
/// offsets) that is all zeros, within the file.
fn has_zero_sector(buf: &[u8], from: usize, to: usize) -> bool {
    let to = to.min(buf.len());
    let mut sector = from - from % SECTOR_BYTES;
    while sector < to {
        let end = (sector + SECTOR_BYTES).min(buf.len());
        if buf[sector..end].iter().all(|b| *b == 0) {
            return true;
        }
        sector += SECTOR_BYTES;
    }
    false
}

/// A version 2 batch start bound to offset `at` of segment `seq`: its
/// batch length and its own CRC, or `None` if the bytes there are not one.
/// The offset and sequence inside the record make a batch start copied
/// into a command's bytes (or anywhere else) fail this check.
fn bound_batch_start(buf: &[u8], at: usize, seq: u64) -> Option<(usize, u32)> {
    let (r, _) = read_record(buf, at).ok()?;
    if r.kind != KIND_BATCH_START
        || r.index != at as u64
        || r.term != seq
        || r.payload.len() != BATCH_START_V2_PAYLOAD
    {
        return None;
    }
    let len = u32::from_le_bytes(r.payload[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
    Some((len, crc))
}

/// Whether a version 2 batch start bound to its own offset begins anywhere
/// after `from`: then the bytes at `from` were followed by a later write,
/// so they were synced, and damage there is not a torn tail.
fn bound_batch_start_after(buf: &[u8], from: usize, seq: u64, planted: Planted) -> bool {
    let want = ((RECORD_FIXED_BYTES + BATCH_START_V2_PAYLOAD) as u32).to_le_bytes();
    (from + 1..buf.len().saturating_sub(BATCH_START_V2_BYTES - 1)).any(|p| {
        buf[p..p + 4] == want
            && buf[p + 8] == KIND_BATCH_START
            && (bound_batch_start(buf, p, seq).is_some()
                || (planted.unbound_batch_start
                    && read_record(buf, p).is_ok_and(|(r, _)| r.kind == KIND_BATCH_START)))
    })
}

/// Whether a version 1 batch start record begins anywhere after `from`
/// (the version 1 rule; its batch starts are not bound to their place).
fn v1_batch_start_after(buf: &[u8], from: usize) -> bool {
    let want_len = (RECORD_FIXED_BYTES + 4) as u32;
    (from + 1..buf.len().saturating_sub(RECORD_HEADER_BYTES)).any(|p| {
        buf[p..p + 4] == want_len.to_le_bytes()
            && buf.get(p + 8) == Some(&KIND_BATCH_START)
            && read_record(buf, p).is_ok()
    })
}

/// The log state rebuilt by replaying records.
#[derive(Default)]
struct Replay {
    state: StoredState,
    /// Whether any batch has been replayed yet.
    started: bool,
}

impl Replay {
    fn last_index(&self) -> LogIndex {
        self.state
            .snapshot_last
            .0
            .plus(self.state.entries.len() as u64)
    }

    fn last_term(&self) -> Term {
        self.state
            .entries
            .last()
            .map_or(self.state.snapshot_last.1, |e| e.term)
    }

    fn apply(&mut self, r: &Record<'_>) -> Result<Option<LogIndex>, String> {
        if !LogIndex(r.index).is_sane() || !Term(r.term).is_sane() {
            return Err(format!(
                "record of kind {} names index {} and term {}, beyond any real log",
                r.kind, r.index, r.term
            ));
        }
        match r.kind {
            KIND_ENTRY => {
                let index = LogIndex(r.index);
                if index <= self.state.snapshot_last.0 {
                    return Ok(None); // Covered by the snapshot.
                }
                if index != self.last_index().next() {
                    return Err(format!(
                        "entry {index} does not follow the log's last index {}",
                        self.last_index()
                    ));
                }
                if let Some(prev) = self.state.entries.last()
                    && prev.term.0 > r.term
                {
                    return Err(format!("entry {index} has a term below its predecessor's"));
                }
                let payload = decode_payload(r.payload)?;
                self.state.entries.push(Entry {
                    index,
                    term: Term(r.term),
                    payload,
                });
                Ok(Some(index))
            }
            KIND_HARD_STATE => {
                let vote = match r.payload.try_into() {
                    Ok(b) => u64::from_le_bytes(b),
                    Err(_) => return Err("hard state record has a bad payload".into()),
                };
                self.state.hard_state = HardState {
                    term: Term(r.term),
                    vote: (vote != 0).then_some(NodeId(vote)),
                    commit: LogIndex(r.index),
                };
                Ok(None)
            }
            KIND_TRUNCATE => {
                let from = LogIndex(r.index);
                if from > self.last_index().next() {
                    return Err(format!("truncation at {from} beyond the log's end"));
                }
                let keep = from.0.saturating_sub(self.state.snapshot_last.0.0 + 1) as usize;
                self.state.entries.truncate(keep);
                Ok(None)
            }
            KIND_SNAPSHOT => {
                let (index, term) = (LogIndex(r.index), Term(r.term));
                // An equal index may restate the mark with the true term: the
                // base of a segment that survived compaction names the entry
                // as it stood when the segment opened.
                if index >= self.state.snapshot_last.0 {
                    if index >= self.last_index() {
                        self.state.entries.clear();
                    } else {
                        let drop = (index.0 - self.state.snapshot_last.0.0) as usize;
                        self.state.entries.drain(..drop);
                    }
                    self.state.snapshot_last = (index, term);
                }
                Ok(None)
            }
            KIND_BASE => {
                let (index, term) = (LogIndex(r.index), Term(r.term));
                if !self.started {
                    // The oldest segment left after compaction: its base is
                    // where the kept log begins (a snapshot covers the rest).
                    self.state.snapshot_last = (index, term);
                    return Ok(None);
                }
                if index <= self.state.snapshot_last.0 {
                    // Inside what a snapshot covers (possibly a base replay
                    // began from): the history there no longer matters, and
                    // a later snapshot record restates the true mark.
                    return Ok(None);
                }
                let here = (self.last_index(), self.last_term());
                if here != (index, term) {
                    return Err(format!(
                        "segment begins after {index}@{term} but the log before it ends at \
                         {}@{}: a segment file is missing or damaged",
                        here.0, here.1
                    ));
                }
                Ok(None)
            }
            k => Err(format!("unknown record kind {k}")),
        }
    }
}

/// How a segment scan ended.
enum ScanEnd {
    /// Every byte was valid.
    Clean,
    /// A torn tail begins at this offset (last segment only).
    Torn(u64),
}

/// Decodes the records of the batch `buf[at..end]` (after its start).
fn batch_records(
    buf: &[u8],
    mut at: usize,
    end: usize,
) -> Result<Vec<Record<'_>>, (usize, String)> {
    let mut records = Vec::new();
    while at < end {
        let (r, next) = read_record(&buf[..end], at).map_err(|e| (at, e))?;
        if r.kind == KIND_BATCH_START {
            return Err((at, "batch start inside a batch".into()));
        }
        records.push(r);
        at = next;
    }
    Ok(records)
}

/// Replays one segment into `replay`. `last` says whether it is the newest.
///
/// The torn-write rule (version 2): a bad batch is a torn tail only in the
/// last segment, and only if its batch start runs past the end of the
/// file, or one of its sectors reads as zeros and nothing but zeros follows
/// it, or its batch start itself reads as zeros (or is cut short) and no
/// batch start bound to its own place follows. Anything else was synced and
/// is damage ([`WalError::Corrupt`]).
fn scan_segment(
    buf: &[u8],
    path: &Path,
    seq: u64,
    last: bool,
    replay: &mut Replay,
    seg: &mut Segment,
    planted: Planted,
) -> Result<ScanEnd, WalError> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        file: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let version = match check_segment_header(buf, seq) {
        Ok(v) => v,
        Err(reason) => {
            // The segment's creation was interrupted: its header (written
            // and synced before any batch) is short or zeros, and no batch
            // follows.
            // (The prefix is one write: a version 2 prefix cut short, or
            // one whose page never reached the disk, is the same case.)
            let head = &buf[..buf.len().min(SEGMENT_PREFIX_BYTES)];
            let unwritten = head.len() < SEGMENT_PREFIX_BYTES
                || head.iter().all(|b| *b == 0)
                || (buf.get(..8) == Some(&SEGMENT_MAGIC[..])
                    && has_zero_sector(buf, 0, SEGMENT_PREFIX_BYTES));
            if last
                && unwritten
                && !bound_batch_start_after(buf, 0, seq, planted)
                && !v1_batch_start_after(buf, 0)
            {
                return Ok(ScanEnd::Torn(0));
            }
            seg.damaged_at = Some(0);
            return Err(corrupt(0, reason));
        }
    };
    seg.version = version;
    let mut pos = if version == 2 {
        SEGMENT_PREFIX_BYTES
    } else {
        SEGMENT_HEADER_BYTES
    };
    while pos < buf.len() {
        let batch_start = pos;
        let verdict = if version == 1 {
            scan_batch_v1(buf, pos, last)
        } else {
            scan_batch_v2(buf, pos, seq, seg.chain, last, planted)
        };
        match verdict {
            Batch::Good {
                records,
                end,
                chain,
            } => {
                for r in &records {
                    match replay.apply(r) {
                        Ok(Some(i)) => seg.max_index = seg.max_index.max(i),
                        Ok(None) => {}
                        Err(reason) => {
                            seg.damaged_at = Some(batch_start as u64);
                            return Err(corrupt(batch_start, reason));
                        }
                    }
                    if r.kind == KIND_BASE {
                        seg.has_base = true;
                    }
                    replay.started = true;
                }
                seg.chain = chain;
                seg.last_batch_at = Some(batch_start as u64);
                pos = end;
            }
            Batch::Torn => return Ok(ScanEnd::Torn(batch_start as u64)),
            Batch::Damaged(offset, reason) => {
                seg.damaged_at = Some(batch_start as u64);
                return Err(corrupt(offset, reason));
            }
        }
    }
    Ok(ScanEnd::Clean)
}

/// What the scan of one batch found.
enum Batch<'a> {
    /// Whole and valid: its records, where it ends, its chain value.
    Good {
        records: Vec<Record<'a>>,
        end: usize,
        chain: u32,
    },
    /// A torn tail (the write a crash interrupted; never acknowledged).
    Torn,
    /// Damage to synced data: where, and what.
    Damaged(usize, String),
}

/// One version 2 batch at `pos` of segment `seq`, whose previous batch
/// start had CRC `prev` (see [`scan_segment`] for the torn-write rule).
fn scan_batch_v2(
    buf: &[u8],
    pos: usize,
    seq: u64,
    prev: u32,
    last: bool,
    planted: Planted,
) -> Batch<'_> {
    let Some((len, crc)) = bound_batch_start(buf, pos, seq) else {
        let head = &buf[pos..buf.len().min(pos + BATCH_START_V2_BYTES)];
        // Cut short, or a sector of it never reached the disk (a start that
        // straddles a sector boundary may keep its first part).
        let unwritten = head.len() < BATCH_START_V2_BYTES
            || head.iter().all(|b| *b == 0)
            || has_zero_sector(buf, pos, pos + BATCH_START_V2_BYTES);
        if last
            && (unwritten || planted.torn_any_bad_tail)
            && !bound_batch_start_after(buf, pos, seq, planted)
        {
            return Batch::Torn;
        }
        return Batch::Damaged(pos, "expected a batch start bound to this place".into());
    };
    let chained = u32::from_le_bytes(buf[pos + 29..pos + 33].try_into().expect("4 bytes"));
    if chained != prev {
        return Batch::Damaged(
            pos,
            "batch start does not follow the segment's previous batch (chain mismatch)".into(),
        );
    }
    if len > MAX_BATCH_BYTES {
        return Batch::Damaged(pos, format!("batch length {len} is out of range"));
    }
    let at = pos + BATCH_START_V2_BYTES;
    let end = at + len;
    if end > buf.len() {
        // The write was cut short by the crash: nothing of it was synced.
        if last {
            return Batch::Torn;
        }
        return Batch::Damaged(
            pos,
            format!("batch of {len} bytes runs past the end of the file"),
        );
    }
    match batch_records(buf, at, end) {
        Ok(records) => Batch::Good {
            records,
            end,
            chain: crc,
        },
        Err((offset, reason)) => {
            let nothing_after = buf[end..].iter().all(|b| *b == 0);
            // The zero sector must be at or after the first bad record: a
            // value of zeros before it says nothing of how it broke.
            // (The rule before the etcd one, planted back: torn whenever no
            // batch start follows.)
            let old_rule =
                planted.torn_any_bad_tail && !bound_batch_start_after(buf, offset, seq, planted);
            if last && (old_rule || (nothing_after && has_zero_sector(buf, offset, end))) {
                Batch::Torn
            } else {
                Batch::Damaged(offset, reason)
            }
        }
    }
}

/// One version 1 batch at `pos` (its batch starts are not bound to their
/// place: damage followed by anything that parses as one is corruption).
fn scan_batch_v1(buf: &[u8], pos: usize, last: bool) -> Batch<'_> {
    let parsed = (|| -> Result<(Vec<Record<'_>>, usize), (usize, String)> {
        let (start, at) = read_record(buf, pos).map_err(|e| (pos, e))?;
        if start.kind != KIND_BATCH_START || start.payload.len() != 4 {
            return Err((pos, "expected a batch start record".into()));
        }
        let len = u32::from_le_bytes(start.payload.try_into().expect("4 bytes")) as usize;
        if len > MAX_BATCH_BYTES {
            return Err((pos, format!("batch length {len} is out of range")));
        }
        let end = at + len;
        if end > buf.len() {
            return Err((
                pos,
                format!("batch of {len} bytes runs past the end of the file"),
            ));
        }
        Ok((batch_records(buf, at, end)?, end))
    })();
    match parsed {
        Ok((records, end)) => Batch::Good {
            records,
            end,
            chain: 0,
        },
        Err((offset, reason)) => {
            if last && !v1_batch_start_after(buf, offset) {
                Batch::Torn
            } else {
                Batch::Damaged(offset, reason)
            }
        }
    }
}

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

    /// Why the log is repairing (the damage it found), while it is: from
    /// an [`Wal::open_repairing`] that found damage, until
    /// [`Wal::finish_repair`], across restarts.
    pub fn repairing(&self) -> Option<&str> {
        self.repairing.as_deref()
    }

    /// Marks the log as repairing, durably, for damage found outside it
    /// (a damaged snapshot): its owner must not vote until it has the rest
    /// from its peers, as after [`Wal::open_repairing`] found damage. A log
    /// that is already repairing keeps its first reason.
    pub fn mark_repairing(&mut self, why: &str) -> Result<(), WalError> {
        if self.repairing.is_none() {
            write_marker(&self.vfs, &self.dir, why)?;
            self.repairing = Some(why.to_string());
        }
        Ok(())
    }

    /// Sets every segment aside (in a new `discarded-<seq>-0` directory)
    /// and starts the log over, empty but for `keep`'s term and vote (the
    /// commit index goes with the entries), still repairing: for a log
    /// whose entries cannot be used because the snapshot they follow is
    /// gone. Segment numbers go on from the highest set aside. Only a log
    /// marked repairing may be discarded (the mark is durable first, so a
    /// crash midway repairs again and discards again). A crash after the
    /// segments moved and before the new hard state is durable loses the
    /// term and vote (and the numbering starts over): safe, because a
    /// repair assumes a forgotten vote.
    pub fn discard_all(&mut self, keep: HardState) -> Result<StoredState, WalError> {
        if self.repairing.is_none() {
            return Err(WalError::InvalidAppend(
                "only a log marked repairing may be discarded".into(),
            ));
        }
        let seqs: Vec<u64> = self
            .vfs
            .list(&self.dir)
            .map_err(io_err(&self.dir))?
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .collect();
        if let (Some(first), Some(last)) = (seqs.iter().min(), seqs.iter().max()) {
            set_aside(&self.vfs, &self.dir, *first, 0, "discarded")?;
            // The next segment goes on from the numbers set aside.
            let next = last.checked_add(1).ok_or_else(|| WalError::Corrupt {
                file: self.dir.clone(),
                offset: 0,
                reason: "segment numbers are exhausted".into(),
            })?;
            Self::create_segment(&self.vfs, &self.dir, next)?;
        }
        let (mut wal, mut state) =
            Self::open_repairing(self.vfs.clone(), &self.dir.clone(), self.opts.clone())?;
        state.hard_state = HardState {
            term: keep.term,
            vote: keep.vote,
            commit: LogIndex(0),
        };
        wal.save_hard_state(state.hard_state)?;
        wal.sync()?;
        *self = wal;
        Ok(state)
    }

    /// The log is whole again (its owner caught up with its peers): drops
    /// the repairing mark, durably.
    pub fn finish_repair(&mut self) -> Result<(), WalError> {
        if self.repairing.take().is_some() {
            let marker = self.dir.join(REPAIR_MARKER);
            match self.vfs.remove(&marker) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&marker)(e)),
            }
            self.vfs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        }
        Ok(())
    }

    /// One open; a scan's damage comes with the segment and batch offset.
    fn open_attempt(
        vfs: V,
        dir: &Path,
        opts: WalOptions,
    ) -> Result<Opened<V>, (WalError, Option<DamageAt>)> {
        let mut damage = None;
        Self::open_once(vfs, dir, opts, &mut damage).map_err(|e| (e, damage))
    }

    /// One open; sets `damage` to the segment and batch a scan found
    /// damaged.
    fn open_once(
        vfs: V,
        dir: &Path,
        opts: WalOptions,
        damage: &mut Option<(u64, u64)>,
    ) -> Result<(Wal<V>, StoredState), WalError> {
        // A new directory is durable only once its parent is synced; and a
        // segment created before a failed directory sync is made durable
        // here, before anything more is acknowledged in it.
        let planted = Planted::of(&opts);
        if planted.no_dir_sync {
            vfs.create_dir_all(dir).map_err(io_err(dir))?;
        } else {
            super::vfs::create_dir_durably(&vfs, dir).map_err(io_err(dir))?;
            vfs.sync_dir(dir).map_err(io_err(dir))?;
        }
        let mut seqs: Vec<u64> = vfs
            .list(dir)
            .map_err(io_err(dir))?
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .collect();
        seqs.sort_unstable();
        let (replay, segments, repaired) = Self::scan_segments(&vfs, dir, &seqs, planted, damage)?;
        if let Some(r) = &repaired {
            tracing::warn!(dir = %dir.display(), "write-ahead log repaired on open: {r}");
        }
        let state = replay.state;
        let last_index = state.snapshot_last.0.plus(state.entries.len() as u64);
        let last_term = state
            .entries
            .last()
            .map_or(state.snapshot_last.1, |e| e.term);
        let (mut file, segments) = match segments.last() {
            Some(s) => (vfs.open(&s.path, false).map_err(io_err(&s.path))?, segments),
            None => {
                let seq = seqs.last().map_or(1, |s| s + 1);
                let (file, seg) = Self::create_segment(&vfs, dir, seq)?;
                (file, vec![seg])
            }
        };
        let newest = segments.last().expect("never empty");
        // Only the last batch can have failed its sync (the log stops at the
        // first error), and after a failed fsync Linux keeps its pages in
        // the cache, marked clean: they read back whole, but a crash loses
        // them. Write it again and sync before trusting it.
        // A segment with no batch yet gets its header written again: its
        // creation's sync may have failed the same way. A truncation at
        // open whose sync failed is redone first.
        if !planted.no_rewrite_at_open {
            Self::rewrite_last_batch(&vfs, &mut file, newest)?;
        }
        // A newest segment without a base (its base write failed, say on a
        // full disk), or of format version 1, takes no more batches: the
        // next one opens a segment with a base, so a crash partway through
        // a compaction never leaves a baseless segment first.
        let rotate_next = (segments.len() > 1 && !newest.has_base && !planted.append_without_base)
            || newest.version != 2;
        let synced = Position {
            last_index,
            last_term,
            snapshot: state.snapshot_last,
            hard_state: state.hard_state,
        };
        let wal = Wal {
            vfs,
            dir: dir.to_path_buf(),
            opts,
            segments,
            file,
            pending: Vec::new(),
            pending_max_index: LogIndex(0),
            current: synced,
            synced,
            failed: None,
            repaired,
            syncs: 0,
            max_batch_bytes: MAX_BATCH_BYTES,
            rotate_next,
            repairing: None,
        };
        Ok((wal, state))
    }

    /// Reads and checks every segment in order, replaying its records:
    /// a torn tail (the only damage a crash can leave) is cut or its
    /// segment removed, durably; any other damage is an error, with where
    /// it is in `damage`. Returns the replay, the segments kept, and what
    /// was cut, if anything.
    fn scan_segments(
        vfs: &V,
        dir: &Path,
        seqs: &[u64],
        planted: Planted,
        damage: &mut Option<(u64, u64)>,
    ) -> Result<(Replay, Vec<Segment>, Option<String>), WalError> {
        let mut replay = Replay::default();
        let mut segments: Vec<Segment> = Vec::new();
        let mut repaired = None;
        for (k, seq) in seqs.iter().enumerate() {
            let path = dir.join(segment_name(*seq));
            let buf = match vfs.read(&path) {
                Ok(b) => b,
                // EIO: an unreadable segment (a latent sector error), whose
                // acknowledged data is as good as damaged. Any other error
                // (permissions, too many open files) is no damage: opening
                // fails, and nothing is moved.
                Err(e) if e.raw_os_error() == Some(super::EIO) => {
                    *damage = Some((*seq, 0));
                    return Err(WalError::Corrupt {
                        file: path,
                        offset: 0,
                        reason: format!("the segment cannot be read: {e}"),
                    });
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            let last = k + 1 == seqs.len();
            let mut seg = Segment {
                seq: *seq,
                path: path.clone(),
                bytes: buf.len() as u64,
                max_index: LogIndex(0),
                has_base: false,
                version: 2,
                chain: 0,
                last_batch_at: None,
                damaged_at: None,
            };
            let scanned = scan_segment(&buf, &path, *seq, last, &mut replay, &mut seg, planted);
            if let (Err(_), Some(at)) = (&scanned, seg.damaged_at) {
                *damage = Some((*seq, at));
            }
            match scanned? {
                ScanEnd::Clean => segments.push(seg),
                ScanEnd::Torn(0) => {
                    // The segment's creation itself was interrupted.
                    vfs.remove(&path).map_err(io_err(&path))?;
                    vfs.sync_dir(dir).map_err(io_err(dir))?;
                    repaired = Some(format!("removed torn segment {}", path.display()));
                }
                ScanEnd::Torn(at) => {
                    let mut f = vfs.open(&path, false).map_err(io_err(&path))?;
                    f.set_len(at).map_err(io_err(&path))?;
                    f.sync().map_err(io_err(&path))?;
                    repaired = Some(format!(
                        "cut a torn tail of {} bytes from {} at offset {at}",
                        buf.len() as u64 - at,
                        path.display()
                    ));
                    seg.bytes = at;
                    segments.push(seg);
                }
            }
        }
        Ok((replay, segments, repaired))
    }

    /// Writes the newest segment's last batch again and syncs it (see the
    /// caller for why), cutting the file to what was read.
    fn rewrite_last_batch(vfs: &V, file: &mut V::File, newest: &Segment) -> Result<(), WalError> {
        let at = newest.last_batch_at.unwrap_or(0);
        let path = &newest.path;
        let buf = vfs.read(path).map_err(io_err(path))?;
        let tail =
            buf.get(at as usize..newest.bytes as usize)
                .ok_or_else(|| WalError::Corrupt {
                    file: path.clone(),
                    offset: at,
                    reason: "the segment changed while it was opened".into(),
                })?;
        file.set_len(newest.bytes).map_err(io_err(path))?;
        if !tail.is_empty() {
            file.write_at(at, tail).map_err(io_err(path))?;
        }
        file.sync().map_err(io_err(path))
    }

    fn create_segment(vfs: &V, dir: &Path, seq: u64) -> Result<(V::File, Segment), WalError> {
        let path = dir.join(segment_name(seq));
        let mut f = vfs.open(&path, true).map_err(io_err(&path))?;
        f.set_len(0).map_err(io_err(&path))?;
        f.append(&segment_prefix(seq)).map_err(io_err(&path))?;
        f.sync().map_err(io_err(&path))?;
        vfs.sync_dir(dir).map_err(io_err(dir))?;
        let seg = Segment {
            seq,
            path,
            bytes: SEGMENT_PREFIX_BYTES as u64,
            max_index: LogIndex(0),
            has_base: false,
            version: 2,
            chain: 0,
            last_batch_at: None,
            damaged_at: None,
        };
        Ok((f, seg))
    }

    /// What the last open repaired (a torn tail it cut off), if anything.
    pub fn repaired(&self) -> Option<&str> {
        self.repaired.as_deref()
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

    fn write_batch(&mut self) -> Result<(), WalError> {
        let current = self.segments.last().expect("never empty");
        if current.bytes >= self.opts.segment_max_bytes || self.rotate_next {
            self.rotate()?;
            self.rotate_next = false;
        }
        let seg = self.segments.last_mut().expect("never empty");
        let path = seg.path.clone();
        // Several batches when the buffer is larger than one may be, each
        // synced before the next (invariant 1): a crash keeps a prefix.
        let mut from = 0;
        while from < self.pending.len() {
            let end = batch_end(&self.pending, from, self.max_batch_bytes);
            let body = &self.pending[from..end];
            let len = u32::try_from(body.len())
                .ok()
                .filter(|l| *l as usize <= MAX_BATCH_BYTES)
                .ok_or_else(|| {
                    WalError::InvalidAppend(format!(
                        "a batch of {} bytes exceeds the limit of {MAX_BATCH_BYTES}",
                        body.len()
                    ))
                })?;
            // Bound to its place and chained to the previous batch start
            // (version 2), so no copy of it elsewhere passes for it.
            let mut start = [0u8; BATCH_START_V2_PAYLOAD];
            start[..4].copy_from_slice(&len.to_le_bytes());
            start[4..].copy_from_slice(&seg.chain.to_le_bytes());
            let mut batch = Vec::with_capacity(BATCH_START_V2_BYTES + body.len());
            put_record(&mut batch, KIND_BATCH_START, seg.bytes, seg.seq, &start)?;
            let crc = u32::from_le_bytes(batch[4..8].try_into().expect("4 bytes"));
            batch.extend_from_slice(body);
            self.file.append(&batch).map_err(io_err(&path))?;
            self.file.sync().map_err(io_err(&path))?;
            seg.last_batch_at = Some(seg.bytes);
            seg.chain = crc;
            seg.bytes += batch.len() as u64;
            from = end;
        }
        seg.max_index = seg.max_index.max(self.pending_max_index);
        self.pending.clear();
        self.pending_max_index = LogIndex(0);
        self.synced = self.current;
        self.syncs += 1;
        Ok(())
    }

    /// Seals the current segment and opens the next. The new segment's first
    /// batch states where the log stood (base: last index and term), the
    /// snapshot mark and the hard state, all as of the last sync, so replay
    /// can begin at this segment once a snapshot covers everything before it.
    fn rotate(&mut self) -> Result<(), WalError> {
        let seq = self.segments.last().expect("never empty").seq + 1;
        let (file, mut seg) = Self::create_segment(&self.vfs, &self.dir, seq)?;
        seg.has_base = true;
        self.file = file;
        self.segments.push(seg);
        let at = self.synced;
        let mut head = Vec::new();
        put_record(&mut head, KIND_BASE, at.last_index.0, at.last_term.0, &[])?;
        put_record(
            &mut head,
            KIND_SNAPSHOT,
            at.snapshot.0.0,
            at.snapshot.1.0,
            &[],
        )?;
        encode_hard_state(at.hard_state, &mut head)?;
        head.extend_from_slice(&self.pending);
        self.pending = head;
        Ok(())
    }

    /// Deletes the oldest sealed segments whose entries the durable snapshot
    /// covers, when the segment after them has a base to replay from.
    fn delete_covered_segments(&mut self) -> Result<(), WalError> {
        let snapshot = self.synced.snapshot.0;
        let mut max_before = LogIndex(0);
        let mut cut = 0;
        for k in 0..self.segments.len().saturating_sub(1) {
            max_before = max_before.max(self.segments[k].max_index);
            if max_before > snapshot {
                break;
            }
            if self.segments[k + 1].has_base {
                cut = k + 1;
            }
        }
        if cut == 0 {
            return Ok(());
        }
        for seg in self.segments.drain(..cut) {
            self.vfs.remove(&seg.path).map_err(io_err(&seg.path))?;
        }
        self.vfs.sync_dir(&self.dir).map_err(io_err(&self.dir))
    }
}

impl<V: Vfs> LogStore for Wal<V> {
    type Error = WalError;

    fn load(&self) -> Result<StoredState, WalError> {
        let mut replay = Replay::default();
        for (k, s) in self.segments.iter().enumerate() {
            let buf = self.vfs.read(&s.path).map_err(io_err(&s.path))?;
            // Scanned afresh: the chain starts over at the segment's start.
            let mut seg = Segment {
                chain: 0,
                last_batch_at: None,
                ..s.clone()
            };
            let last = k + 1 == self.segments.len();
            if let ScanEnd::Torn(at) = scan_segment(
                &buf,
                &s.path,
                s.seq,
                last,
                &mut replay,
                &mut seg,
                Planted::of(&self.opts),
            )? {
                return Err(WalError::Corrupt {
                    file: s.path.clone(),
                    offset: at,
                    reason: "unsynced tail while loading".into(),
                });
            }
        }
        Ok(replay.state)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        self.check_usable()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        for w in entries.windows(2) {
            if w[1].index != w[0].index.next() {
                return Err(WalError::InvalidAppend(format!(
                    "entries are not contiguous at index {}",
                    w[1].index
                )));
            }
        }
        let cur = self.current;
        if first.index <= cur.snapshot.0 {
            return Err(WalError::InvalidAppend(format!(
                "index {} is covered by the snapshot at {}",
                first.index, cur.snapshot.0
            )));
        }
        if first.index > cur.last_index.next() {
            return Err(WalError::InvalidAppend(format!(
                "index {} leaves a gap after {}",
                first.index, cur.last_index
            )));
        }
        if let Some(w) = entries.windows(2).find(|w| w[1].term < w[0].term) {
            return Err(WalError::InvalidAppend(format!(
                "term falls at index {}",
                w[1].index
            )));
        }
        // All or nothing: a refused record leaves the buffer as it was.
        let mark = self.pending.len();
        let buffered = (|| {
            if first.index <= cur.last_index {
                put_record(&mut self.pending, KIND_TRUNCATE, first.index.0, 0, &[])?;
            }
            let mut payload = Vec::new();
            for e in entries {
                payload.clear();
                encode_payload(&e.payload, &mut payload)
                    .map_err(|why| WalError::InvalidAppend(format!("entry {}: {why}", e.index)))?;
                put_record(&mut self.pending, KIND_ENTRY, e.index.0, e.term.0, &payload)?;
            }
            Ok(())
        })();
        if let Err(e) = buffered {
            self.pending.truncate(mark);
            return Err(e);
        }
        let last = entries.last().expect("non-empty");
        self.current.last_index = last.index;
        self.current.last_term = last.term;
        self.pending_max_index = self.pending_max_index.max(last.index);
        Ok(())
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), WalError> {
        self.check_usable()?;
        encode_hard_state(hard_state, &mut self.pending)?;
        self.current.hard_state = hard_state;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_batch() {
            return Err(self.fail(e));
        }
        if let Err(e) = self.delete_covered_segments() {
            return Err(self.fail(e));
        }
        Ok(())
    }

    fn last_index(&self) -> LogIndex {
        self.current.last_index
    }

    fn install_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
        keep_suffix: bool,
    ) -> Result<(), WalError> {
        self.check_usable()?;
        if !keep_suffix && self.current.last_index > index && index >= self.current.snapshot.0 {
            put_record(&mut self.pending, KIND_TRUNCATE, index.0 + 1, 0, &[])?;
            self.current.last_index = index;
            self.current.last_term = term;
        }
        self.compact(index, term)
    }

    fn compact(&mut self, index: LogIndex, term: Term) -> Result<(), WalError> {
        self.check_usable()?;
        // An equal index with another term restates the mark: a segment's
        // base (what replay starts from once older segments are gone) names
        // the entry as it stood when the segment opened, and a repair may
        // have set aside the later segments that corrected it.
        if index < self.current.snapshot.0 || (index, term) == self.current.snapshot {
            return Ok(());
        }
        put_record(&mut self.pending, KIND_SNAPSHOT, index.0, term.0, &[])?;
        self.current.snapshot = (index, term);
        if index >= self.current.last_index {
            self.current.last_index = index;
            self.current.last_term = term;
        }
        Ok(())
    }
}
