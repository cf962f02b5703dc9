//! Repair bookkeeping: the mark that says a log is repairing (with what was
//! found), setting damaged segments aside, and the log's repair methods.
//!
//! Invariants: the mark is durable (its directory synced) before anything is
//! moved aside, and removed only once the repair is over; a set-aside
//! segment is renamed, never deleted.

use super::*;

/// The file whose presence marks a log as repairing; it holds what was
/// found.
pub(super) const REPAIR_MARKER: &str = "REPAIRING";
/// Repair rounds one open may take (each moves a segment aside or cuts one).
pub(super) const MAX_REPAIR_ROUNDS: usize = 1 << 16;

/// The repairing mark's text, if the log is marked.
pub(super) fn read_marker<V: Vfs>(vfs: &V, dir: &Path) -> Result<Option<String>, WalError> {
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
pub(super) fn write_marker<V: Vfs>(vfs: &V, dir: &Path, why: &str) -> Result<(), WalError> {
    let tmp = format!("{REPAIR_MARKER}.tmp");
    crate::storage::vfs::replace_durably(vfs, dir, REPAIR_MARKER, &tmp, why.as_bytes())
        .map_err(|(path, e)| io_err(&path)(e))
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
pub(super) fn quarantine<V: Vfs>(vfs: &V, dir: &Path, seq: u64, at: u64) -> Result<(), WalError> {
    set_aside(vfs, dir, seq, at, "damaged")
}

/// [`quarantine`], into `dir/<label>-<seq>-<at>[-<n>]/`.
pub(super) fn set_aside<V: Vfs>(
    vfs: &V,
    dir: &Path,
    seq: u64,
    at: u64,
    label: &str,
) -> Result<(), WalError> {
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
    crate::storage::vfs::create_dir_durably(vfs, &aside).map_err(io_err(&aside))?;
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

impl<V: Vfs> Wal<V> {
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

    /// What the last open repaired (a torn tail it cut off), if anything.
    pub fn repaired(&self) -> Option<&str> {
        self.repaired.as_deref()
    }
}
