//! Writing snapshot files: [`SnapshotWriter`] for a state this node
//! serializes, [`RawSnapshotWriter`] for a whole file arriving from a peer.
//!
//! Invariant (the store's 1 and 4): neither writer's file is visible under
//! a snapshot's name until it is complete, verified and durable; an
//! abandoned raw transfer removes its temporary file.

use super::*;

/// A snapshot being written; [`SnapshotWriter::finish`] makes it visible.
pub struct SnapshotWriter<V: Vfs> {
    store: SnapshotStore<V>,
    meta: SnapshotMeta,
    tmp: PathBuf,
    file: V::File,
    crc: u32,
    data_len: u64,
}

impl<V: Vfs> SnapshotWriter<V> {
    /// Appends state bytes.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        self.file.append(chunk).map_err(io_err(&self.tmp))?;
        self.crc = crc32c::crc32c_append(self.crc, chunk);
        self.data_len += chunk.len() as u64;
        Ok(())
    }

    /// Seals the file, syncs it, and renames it into place (invariant 1).
    pub fn finish(mut self) -> Result<SnapshotMeta, SnapshotError> {
        let mut trailer = Vec::with_capacity(TRAILER_BYTES);
        trailer.extend_from_slice(&self.data_len.to_le_bytes());
        let crc = crc32c::crc32c_append(self.crc, &trailer);
        trailer.extend_from_slice(&crc.to_le_bytes());
        self.file.append(&trailer).map_err(io_err(&self.tmp))?;
        self.file.sync().map_err(io_err(&self.tmp))?;
        self.store
            .publish(&self.tmp, self.meta.index, self.meta.term)?;
        Ok(self.meta)
    }
}

/// A snapshot file arriving from a peer in pieces.
pub struct RawSnapshotWriter<V: Vfs> {
    store: SnapshotStore<V>,
    index: LogIndex,
    term: Term,
    tmp: PathBuf,
    file: V::File,
    /// CRC of everything but the last 4 bytes seen so far.
    crc: u32,
    /// The last (up to) 4 bytes seen: the candidate checksum.
    tail: Vec<u8>,
    len: u64,
    /// Whether `tmp` became the staged file; until then dropping the writer
    /// (an abandoned or refused transfer) removes `tmp`.
    staged: bool,
}

/// Numbers the temporary files of received snapshots, so transfers running
/// at once never share one, even for the same `(index, term)`.
static RAW_WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A temporary name of its own for one incoming transfer: the snapshot's
/// name, a process-wide counter, and a random salt (so names differ across
/// restarts too); it ends in `.tmp`, so [`SnapshotStore::open`] removes
/// whatever a crash left.
fn raw_tmp_name(index: LogIndex, term: Term) -> String {
    use std::hash::BuildHasher;
    let n = RAW_WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let salt = std::collections::hash_map::RandomState::new().hash_one(n);
    format!("{}.{n}-{salt:016x}.tmp", file_name(index, term))
}

impl<V: Vfs> Drop for RawSnapshotWriter<V> {
    fn drop(&mut self) {
        if !self.staged {
            // Best effort: what stays behind is removed at the next open.
            let _ = self.store.vfs.remove(&self.tmp);
        }
    }
}

impl<V: Vfs> RawSnapshotWriter<V> {
    /// Appends the next piece of the file.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        self.file.append(chunk).map_err(io_err(&self.tmp))?;
        self.len += chunk.len() as u64;
        // Keep the last 4 bytes out of the running checksum.
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 4 {
            let cut = self.tail.len() - 4;
            self.crc = crc32c::crc32c_append(self.crc, &self.tail[..cut]);
            self.tail.drain(..cut);
        }
        Ok(())
    }

    /// Verifies the checksum, syncs, and makes the snapshot visible.
    pub fn finish(mut self) -> Result<SnapshotMeta, SnapshotError> {
        let corrupt = |reason: &str| SnapshotError::Corrupt {
            path: self.tmp.clone(),
            reason: reason.to_string(),
        };
        if self.tail.len() != 4 || self.len < 40 {
            return Err(corrupt("the transfer ended too early"));
        }
        if u32::from_le_bytes(self.tail[..4].try_into().expect("4 bytes")) != self.crc {
            return Err(corrupt("checksum mismatch"));
        }
        self.file.sync().map_err(io_err(&self.tmp))?;
        let staged = self.store.dir.join(staged_name(self.index, self.term));
        // Parse the header (and check it names what was announced) first.
        let meta = self
            .store
            .read_meta(&self.tmp, (self.index.0, self.term.0))?;
        // A staged file of the same `(index, term)` (a retried transfer) is
        // replaced: both were verified against their checksum and name the
        // same entry, and Raft's log matching makes the state at one
        // `(index, term)` the same from any correct node.
        self.store
            .vfs
            .rename(&self.tmp, &staged)
            .map_err(io_err(&staged))?;
        self.store.sync_renamed(&staged, &self.tmp)?;
        self.staged = true;
        Ok(meta)
    }
}

impl<V: Vfs> SnapshotStore<V> {
    /// Starts writing a snapshot.
    pub fn writer(&self, meta: SnapshotMeta) -> Result<SnapshotWriter<V>, SnapshotError> {
        let tmp = self
            .dir
            .join(format!("{}.tmp", file_name(meta.index, meta.term)));
        let mut file = self.vfs.open(&tmp, true).map_err(io_err(&tmp))?;
        file.set_len(0).map_err(io_err(&tmp))?;
        let mut header = Vec::new();
        header.extend_from_slice(&SNAPSHOT_MAGIC);
        header.extend_from_slice(&meta.index.0.to_le_bytes());
        header.extend_from_slice(&meta.term.0.to_le_bytes());
        let mut m = Vec::new();
        meta.membership.encode_into(&mut m).map_err(|e| {
            SnapshotError::Other(format!("cannot store the configuration: {e}").into())
        })?;
        header.extend_from_slice(&(m.len() as u32).to_le_bytes());
        header.extend_from_slice(&m);
        file.append(&header).map_err(io_err(&tmp))?;
        Ok(SnapshotWriter {
            crc: crc32c::crc32c(&header),
            store: self.clone(),
            meta,
            tmp,
            file,
            data_len: 0,
        })
    }

    /// Starts receiving a whole snapshot file (as [`Self::open_latest_file`]
    /// reads it) ending at `(index, term)`; [`RawSnapshotWriter::finish`]
    /// verifies it before it becomes visible.
    pub fn raw_writer(
        &self,
        index: LogIndex,
        term: Term,
    ) -> Result<RawSnapshotWriter<V>, SnapshotError> {
        let tmp = self.dir.join(raw_tmp_name(index, term));
        let mut file = self.vfs.open(&tmp, true).map_err(io_err(&tmp))?;
        file.set_len(0).map_err(io_err(&tmp))?;
        Ok(RawSnapshotWriter {
            store: self.clone(),
            index,
            term,
            tmp,
            file,
            crc: 0,
            tail: Vec::new(),
            len: 0,
            staged: false,
        })
    }
}
