//! Opening the log: one attempt lists, scans and replays the segments,
//! rewrites the last batch in place, and creates the first segment of an
//! empty log.
//!
//! Invariants: an open either returns the state of every synced batch or
//! an error; damage is never silently cut.

use super::*;

impl<V: Vfs> Wal<V> {
    /// One open; a scan's damage comes with the segment and batch offset.
    pub(super) fn open_attempt(
        vfs: V,
        dir: &Path,
        opts: WalOptions,
    ) -> Result<Opened<V>, (WalError, Option<DamageAt>)> {
        let mut damage = None;
        Self::open_once(vfs, dir, opts, &mut damage).map_err(|e| (e, damage))
    }

    /// One open; sets `damage` to the segment and batch a scan found
    /// damaged.
    pub(super) fn open_once(
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
            crate::storage::vfs::create_dir_durably(&vfs, dir).map_err(io_err(dir))?;
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
    pub(super) fn scan_segments(
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
                Err(e) if e.raw_os_error() == Some(crate::storage::EIO) => {
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
            let mut seg = Segment::new(*seq, path.clone(), buf.len() as u64);
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
    pub(super) fn rewrite_last_batch(
        vfs: &V,
        file: &mut V::File,
        newest: &Segment,
    ) -> Result<(), WalError> {
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

    pub(super) fn create_segment(
        vfs: &V,
        dir: &Path,
        seq: u64,
    ) -> Result<(V::File, Segment), WalError> {
        let path = dir.join(segment_name(seq));
        let mut f = vfs.open(&path, true).map_err(io_err(&path))?;
        f.set_len(0).map_err(io_err(&path))?;
        f.append(&segment_prefix(seq)).map_err(io_err(&path))?;
        f.sync().map_err(io_err(&path))?;
        vfs.sync_dir(dir).map_err(io_err(dir))?;
        Ok((f, Segment::new(seq, path, SEGMENT_PREFIX_BYTES as u64)))
    }
}
