//! Snapshot files: written atomically, found on open, never trusted blindly.
//!
//! Owns: the snapshot directory and the snapshot file format (see
//! `docs/storage-format.md`):
//!
//! ```text
//! "HA-SNAP" 0x01 | index u64 | term u64 | membership length u32 | membership
//! | state bytes ... | state length u64 | CRC32C u32 of everything before it
//! ```
//!
//! all integers little-endian. A file is named
//! `snap-<index:020>-<term:020>.snap`.
//!
//! Invariants:
//! 1. A snapshot becomes visible only complete and durable: it is written to
//!    a `.tmp` name, synced, renamed, and the directory synced.
//! 2. [`SnapshotStore::latest`] returns the newest snapshot or an error; a
//!    damaged newest snapshot is an error, never an empty state and never a
//!    silent fall-back to an older one.
//! 3. A published `snap-<index>-<term>.snap` is never overwritten: a second
//!    save of the same `(index, term)` keeps the first file.
//! 4. A snapshot received from a peer is verified into a `.staged` file and
//!    becomes a `.snap` only through [`SnapshotStore::promote`], once Raft
//!    accepted it; staged files left by a crash are removed at open, so a
//!    refused snapshot never becomes "the newest".

use std::path::{Path, PathBuf};

use super::vfs::{Vfs, VfsFile};
use crate::raft::Membership;
use crate::types::{LogIndex, Term};

/// First bytes of a snapshot file: "HA-SNAP", format version 1.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"HA-SNAP\x01";
const TRAILER_BYTES: usize = 12;

/// What a snapshot covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot includes.
    pub index: LogIndex,
    /// Term of that entry.
    pub term: Term,
    /// The configuration as of that entry.
    pub membership: Membership,
}

/// What a start finds in the snapshot directory
/// ([`SnapshotStore::scan_for_start`]).
#[derive(Debug)]
pub struct StartScan {
    /// The newest snapshot that verifies: what it covers, its state.
    pub intact: Option<(SnapshotMeta, Vec<u8>)>,
    /// Damaged snapshot files newer than it, newest first, with what is
    /// wrong with each.
    pub damaged: Vec<(PathBuf, SnapshotError)>,
}

/// What can go wrong.
#[derive(thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("snapshot I/O error on {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A snapshot file is damaged.
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A snapshot file of a format version this build does not read (a
    /// newer build wrote it): not damage, so nothing is set aside.
    #[error(
        "snapshot {path} has format version {version}, which this build does not read (was it \
         written by a newer build?)"
    )]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Its version byte.
        version: u8,
    },
    /// An error of another snapshot store (an implementation of
    /// [`SnapshotFiles`](crate::node::SnapshotFiles) of one's own).
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

crate::debug_as_display!(SnapshotError);

impl SnapshotError {
    /// Whether this is damage to the file (it fails verification, or its
    /// read fails with EIO, a latent sector error), not a refusal to work
    /// (permissions, a missing directory).
    pub fn is_damage(&self) -> bool {
        match self {
            SnapshotError::Corrupt { .. } => true,
            SnapshotError::Io { source, .. } => source.raw_os_error() == Some(super::EIO),
            SnapshotError::Unsupported { .. } | SnapshotError::Other(_) => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn file_name(index: LogIndex, term: Term) -> String {
    format!("snap-{:020}-{:020}.snap", index.0, term.0)
}

/// Where a received, verified snapshot waits for Raft to accept it.
fn staged_name(index: LogIndex, term: Term) -> String {
    format!("snap-{:020}-{:020}.staged", index.0, term.0)
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (i, t) = rest.split_once('-')?;
    Some((i.parse().ok()?, t.parse().ok()?))
}

/// The snapshot directory (see the module docs).
#[derive(Clone, Debug)]
pub struct SnapshotStore<V: Vfs> {
    vfs: V,
    dir: PathBuf,
}

/// Verifies and decodes a whole snapshot file named `(index, term)`.
fn parse_file(
    path: &Path,
    mut buf: Vec<u8>,
    named: (u64, u64),
) -> Result<(SnapshotMeta, Vec<u8>), SnapshotError> {
    let corrupt = |reason: &str| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    // Another version is a refusal only if the file is whole (its trailing
    // checksum holds): a flipped bit in the version byte is damage.
    if buf.len() >= 12
        && buf[..7] == SNAPSHOT_MAGIC[..7]
        && buf[7] != SNAPSHOT_MAGIC[7]
        && crc32c::crc32c(&buf[..buf.len() - 4])
            == u32::from_le_bytes(buf[buf.len() - 4..].try_into().expect("4 bytes"))
    {
        return Err(SnapshotError::Unsupported {
            path: path.to_path_buf(),
            version: buf[7],
        });
    }
    if buf.len() < 8 + 8 + 8 + 4 + TRAILER_BYTES || buf[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("not a snapshot file (bad magic or too short)"));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("checksum mismatch"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
    let m_len = u32::from_le_bytes(buf[24..28].try_into().expect("4 bytes")) as usize;
    let data_start = 28 + m_len;
    let data_len = u64_at(body.len() - 8) as usize;
    if data_start
        .checked_add(data_len)
        .and_then(|x| x.checked_add(TRAILER_BYTES))
        != Some(buf.len())
    {
        return Err(corrupt("lengths do not add up"));
    }
    let membership = Membership::decode(&buf[28..data_start])
        .map_err(|e| corrupt(&format!("bad membership: {e}")))?;
    let meta = SnapshotMeta {
        index: LogIndex(u64_at(8)),
        term: Term(u64_at(16)),
        membership,
    };
    if (meta.index.0, meta.term.0) != named {
        return Err(corrupt("contents do not match the file name"));
    }
    // Keep the state bytes in the same allocation (no second copy).
    buf.truncate(data_start + data_len);
    buf.drain(..data_start);
    Ok((meta, buf))
}

/// The newest snapshot's meta, its file's length, and a reader of the file.
pub type LatestFile = (SnapshotMeta, u64, Box<dyn std::io::Read + Send>);

impl<V: Vfs> SnapshotStore<V> {
    /// Opens the directory, removing temporary files of interrupted writes.
    pub fn open(vfs: V, dir: &Path) -> Result<SnapshotStore<V>, SnapshotError> {
        // Durably: a snapshot in a directory a crash forgets is gone too.
        super::vfs::create_dir_durably(&vfs, dir).map_err(io_err(dir))?;
        for name in vfs.list(dir).map_err(io_err(dir))? {
            if name.ends_with(".tmp") || name.ends_with(".staged") {
                let p = dir.join(&name);
                vfs.remove(&p).map_err(io_err(&p))?;
            }
        }
        // Names published before a failed directory sync (or a crash) may
        // be in memory only: make what is trusted from here on durable.
        vfs.sync_dir(dir).map_err(io_err(dir))?;
        Ok(SnapshotStore {
            vfs,
            dir: dir.to_path_buf(),
        })
    }

    /// Renames a synced temporary file into place and syncs the directory
    /// (invariant 1); returns the final path.
    fn publish(&self, tmp: &Path, index: LogIndex, term: Term) -> Result<PathBuf, SnapshotError> {
        let path = self.dir.join(file_name(index, term));
        if self.exists(&path)? {
            // Invariant 3: the first file of this (index, term) stays.
            self.vfs.remove(tmp).map_err(io_err(tmp))?;
            return Ok(path);
        }
        self.vfs.rename(tmp, &path).map_err(io_err(&path))?;
        self.sync_renamed(&path, tmp)?;
        Ok(path)
    }

    /// Makes the rename of `from` to `to` durable; if the directory sync
    /// fails, the rename is undone, so a name whose durability is unknown
    /// is never trusted (after a failed fsync Linux may keep serving the
    /// new name although the disk never got it).
    fn sync_renamed(&self, to: &Path, from: &Path) -> Result<(), SnapshotError> {
        if let Err(e) = self.vfs.sync_dir(&self.dir) {
            if let Err(undo) = self.vfs.rename(to, from) {
                tracing::error!(
                    "cannot undo the rename of {} after a failed directory sync: {undo}",
                    to.display()
                );
            }
            return Err(io_err(&self.dir)(e));
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> Result<bool, SnapshotError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        Ok(self
            .vfs
            .list(&self.dir)
            .map_err(io_err(&self.dir))?
            .iter()
            .any(|n| n == name))
    }

    /// Raft accepted the staged snapshot ending at `(index, term)`: publish
    /// it (invariant 4). Returns its final path.
    pub fn promote(&self, index: LogIndex, term: Term) -> Result<PathBuf, SnapshotError> {
        let staged = self.dir.join(staged_name(index, term));
        if !self.exists(&staged)? {
            let path = self.dir.join(file_name(index, term));
            if self.exists(&path)? {
                return Ok(path);
            }
            return Err(SnapshotError::Io {
                path: staged,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the accepted snapshot was never received",
                ),
            });
        }
        let path = self.publish(&staged, index, term)?;
        // Staged snapshots this one supersedes will never be accepted. Their
        // removal is housekeeping: the snapshot is published, so a failure
        // here is logged, not a failed install (`retain` tries again).
        if let Err(e) = self.remove_staged_up_to(index) {
            tracing::warn!("cannot remove superseded staged snapshots: {e}");
        }
        Ok(path)
    }

    /// The header of the snapshot ending at `(index, term)`, staged or
    /// published, if it is here (`None` if not).
    pub fn meta_of(
        &self,
        index: LogIndex,
        term: Term,
    ) -> Result<Option<SnapshotMeta>, SnapshotError> {
        // Staged first: a promotion renames staged to published, so a file
        // promoted between the two lookups is found by the second.
        for path in [
            self.dir.join(staged_name(index, term)),
            self.dir.join(file_name(index, term)),
        ] {
            match self.vfs.file_size(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
            match self.read_meta(&path, (index.0, term.0)) {
                Ok(meta) => return Ok(Some(meta)),
                // Promoted (renamed) since the size was read.
                Err(SnapshotError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Removes staged snapshots ending at or below `index` (Raft will never
    /// accept them: a snapshot at least as new is published).
    fn remove_staged_up_to(&self, index: LogIndex) -> Result<(), SnapshotError> {
        for name in self.vfs.list(&self.dir).map_err(io_err(&self.dir))? {
            let Some(rest) = name.strip_suffix(".staged") else {
                continue;
            };
            let Some((i, _)) = parse_name(&format!("{rest}.snap")) else {
                continue;
            };
            if i <= index.0 {
                let p = self.dir.join(&name);
                match self.vfs.remove(&p) {
                    // Another cleanup (promote and retain run on separate
                    // threads) removed it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    r => r.map_err(io_err(&p))?,
                }
            }
        }
        Ok(())
    }

    /// Writes a whole snapshot at once.
    pub fn save(&self, meta: SnapshotMeta, data: &[u8]) -> Result<SnapshotMeta, SnapshotError> {
        let mut w = self.writer(meta)?;
        w.write(data)?;
        w.finish()
    }

    /// Snapshot files present, oldest first, as (index, term, path).
    fn files(&self) -> Result<Vec<(u64, u64, PathBuf)>, SnapshotError> {
        let mut v: Vec<(u64, u64, PathBuf)> = self
            .vfs
            .list(&self.dir)
            .map_err(io_err(&self.dir))?
            .iter()
            .filter_map(|n| parse_name(n).map(|(i, t)| (i, t, self.dir.join(n))))
            .collect();
        v.sort();
        Ok(v)
    }

    /// The newest snapshot, verified (invariant 2), or `None` if there is none.
    pub fn latest(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, SnapshotError> {
        let Some((index, term, path)) = self.files()?.pop() else {
            return Ok(None);
        };
        let buf = self.vfs.read(&path).map_err(io_err(&path))?;
        parse_file(&path, buf, (index, term)).map(Some)
    }

    /// The newest snapshot's meta, file length, and a reader of the whole
    /// file (header, state and trailer) for sending it to a peer in pieces.
    pub fn open_latest_file(&self) -> Result<Option<LatestFile>, SnapshotError> {
        let Some((index, term, path)) = self.files()?.pop() else {
            return Ok(None);
        };
        let meta = self.read_meta(&path, (index, term))?;
        let len = self.vfs.file_size(&path).map_err(io_err(&path))?;
        let r = self.vfs.open_read(&path).map_err(io_err(&path))?;
        Ok(Some((meta, len, r)))
    }

    /// Reads just the header of a snapshot file (bounded memory).
    fn read_meta(&self, path: &Path, named: (u64, u64)) -> Result<SnapshotMeta, SnapshotError> {
        let corrupt = |reason: &str| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let mut r = self.vfs.open_read(path).map_err(io_err(path))?;
        let mut head = [0u8; 28];
        std::io::Read::read_exact(&mut r, &mut head).map_err(io_err(path))?;
        if head[..8] != SNAPSHOT_MAGIC {
            return Err(corrupt("not a snapshot file (bad magic)"));
        }
        let m_len = u32::from_le_bytes(head[24..28].try_into().expect("4 bytes")) as usize;
        if m_len > 1 << 20 {
            return Err(corrupt("membership too large"));
        }
        let mut m = vec![0u8; m_len];
        std::io::Read::read_exact(&mut r, &mut m).map_err(io_err(path))?;
        let membership =
            Membership::decode(&m).map_err(|e| corrupt(&format!("bad membership: {e}")))?;
        let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        if (u64_at(8), u64_at(16)) != named {
            return Err(corrupt("contents do not match the file name"));
        }
        Ok(SnapshotMeta {
            index: LogIndex(u64_at(8)),
            term: Term(u64_at(16)),
            membership,
        })
    }

    /// Loads the snapshot ending exactly at `(index, term)`.
    pub fn load(
        &self,
        index: LogIndex,
        term: Term,
    ) -> Result<(SnapshotMeta, Vec<u8>), SnapshotError> {
        let path = self.dir.join(file_name(index, term));
        let buf = self.vfs.read(&path).map_err(io_err(&path))?;
        parse_file(&path, buf, (index.0, term.0))
    }

    /// What a start finds: the newest snapshot that verifies, and the
    /// damaged ones newer than it (newest first), each with what is wrong.
    /// Reads files newest first until one verifies. An error that is not
    /// damage (a listing that fails, permissions, an unsupported version)
    /// is returned as such: nothing is taken for damage that is not.
    pub fn scan_for_start(&self) -> Result<StartScan, SnapshotError> {
        let mut damaged = Vec::new();
        for (index, term, path) in self.files()?.into_iter().rev() {
            let read = self
                .vfs
                .read(&path)
                .map_err(io_err(&path))
                .and_then(|buf| parse_file(&path, buf, (index, term)));
            match read {
                Ok(found) => {
                    return Ok(StartScan {
                        intact: Some(found),
                        damaged,
                    });
                }
                Err(e) if e.is_damage() => damaged.push((path, e)),
                Err(e) => return Err(e),
            }
        }
        Ok(StartScan {
            intact: None,
            damaged,
        })
    }

    /// Sets the snapshot file `path` aside as damaged: renames it to
    /// `<name>.damaged` (or `<name>.damaged-<n>`, never over an earlier
    /// one), which no listing takes for a snapshot, and syncs the
    /// directory. Kept for inspection. Returns its new path.
    pub fn set_aside(&self, path: &Path) -> Result<PathBuf, SnapshotError> {
        let names = self.vfs.list(&self.dir).map_err(io_err(&self.dir))?;
        let base = format!(
            "{}.damaged",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("snap")
        );
        let name = (0u32..)
            .map(|n| match n {
                0 => base.clone(),
                n => format!("{base}-{n}"),
            })
            .find(|c| !names.contains(c))
            .expect("some name is free");
        let to = self.dir.join(name);
        self.vfs.rename(path, &to).map_err(io_err(&to))?;
        self.vfs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(to)
    }

    /// Removes all but the newest `keep` snapshots.
    pub fn retain(&self, keep: usize) -> Result<(), SnapshotError> {
        let files = self.files()?;
        if let Some((newest, _, _)) = files.last() {
            // Staged snapshots no newer than the newest published one are
            // dead weight: Raft refuses or superseded them.
            self.remove_staged_up_to(LogIndex(*newest))?;
        }
        let n = files.len().saturating_sub(keep);
        for (_, _, p) in files.into_iter().take(n) {
            self.vfs.remove(&p).map_err(io_err(&p))?;
        }
        self.vfs.sync_dir(&self.dir).map_err(io_err(&self.dir))
    }
}

mod writers;

pub use writers::{RawSnapshotWriter, SnapshotWriter};

#[cfg(test)]
mod tests;
