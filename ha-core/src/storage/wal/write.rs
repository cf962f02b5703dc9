//! Writing: batches are encoded and written with one write and one sync,
//! segments rotate and covered segments are deleted, and the `LogStore`
//! implementation the node drives.
//!
//! Invariants: after a failed write or sync the log refuses every further
//! write until `reopen`; a segment is deleted only when a snapshot covers it.

use super::*;

impl<V: Vfs> Wal<V> {
    pub(super) fn write_batch(&mut self) -> Result<(), WalError> {
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
    pub(super) fn rotate(&mut self) -> Result<(), WalError> {
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
    pub(super) fn delete_covered_segments(&mut self) -> Result<(), WalError> {
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
