//! Reading a segment back: batches are scanned, checked and replayed into
//! the log state, and the scan says how the segment ends (clean, torn, or
//! damaged at an offset).
//!
//! Invariants: only whole, checksummed batches are replayed; a torn tail is
//! reported only where no synced batch can follow it.

use super::*;

/// The log state rebuilt by replaying records.
#[derive(Default)]
pub(super) struct Replay {
    pub(super) state: StoredState,
    /// Whether any batch has been replayed yet.
    pub(super) started: bool,
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
pub(super) enum ScanEnd {
    /// Every byte was valid.
    Clean,
    /// A torn tail begins at this offset (last segment only).
    Torn(u64),
}

/// Decodes the records of the batch `buf[at..end]` (after its start).
pub(super) fn batch_records(
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
pub(super) fn scan_segment(
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
pub(super) enum Batch<'a> {
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
pub(super) fn scan_batch_v2(
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
pub(super) fn scan_batch_v1(buf: &[u8], pos: usize, last: bool) -> Batch<'_> {
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
