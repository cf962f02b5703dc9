//! The file layer under durable storage: the real file system, or a
//! simulated one that crashes the way disks do.
//!
//! Owns: the [`Vfs`] trait (the few file operations the write-ahead log and
//! the snapshot files need), [`StdFs`] over `std::fs`, and [`SimFs`], an
//! in-memory file system with a crash model for tests and the simulator.
//!
//! The crash model of [`SimFs`] (what a power loss may do):
//! 1. File contents written since the file's last `sync` may be lost, kept,
//!    or kept in part: a prefix of the unsynced writes survives, the last of
//!    them possibly torn, and a page in the middle of the survivors may come
//!    back as zeros (pages reach the disk in any order).
//! 2. Creating, renaming or removing a file is durable once the directory
//!    is synced. Before that, a crash keeps a random prefix of those
//!    changes, in the order they were made (as ext4 may), each rename whole.
//! 3. Synced data is damaged by a crash only through
//!    [`SimFs::crash_tearing`]: a write that began inside a sector which
//!    already held synced bytes rewrites that whole sector, and a power loss
//!    during it may leave the sector's synced bytes scrambled (a
//!    non-atomic sector write).
//! 4. A directory (and all it holds) survives a crash only if its parent
//!    was synced after it was created, and so on up to the root
//!    ([`create_dir_durably`] does that).
//! 5. A failed sync behaves as on Linux: the writes it should have made
//!    durable are dropped from the disk's view (their pages are marked
//!    clean), yet reads still return them until a crash, and a later sync
//!    that succeeds does not persist them. Only a rewrite does.
//!
//! Failure injection: writes, file creations and renames can fail once a
//! byte budget runs out (a full disk), and syncs can be made to fail. Media
//! damage: a bit flips ([`SimFs::corrupt`]), a sector never written reads
//! as zeros ([`SimFs::zero`]), a write lands at the wrong place
//! ([`SimFs::overwrite`]), a file's reads fail with an I/O error (a latent
//! sector error, [`SimFs::set_unreadable`]).

mod sim;
pub use self::sim::*;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::rng::SplitMix64;

/// A file opened for reading and appending.
pub trait VfsFile: Send {
    /// Appends `buf` at the end of the file.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the file's contents durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Overwrites bytes of the file from offset `at` (which with `buf` must
    /// lie within the file), leaving the append position at the end.
    fn write_at(&mut self, at: u64, buf: &[u8]) -> io::Result<()>;
    /// The file's length.
    fn size(&self) -> io::Result<u64>;
}

/// The file operations storage needs. Paths are plain `Path`s.
pub trait Vfs: Clone + Send + Sync + 'static {
    /// The file type.
    type File: VfsFile;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for appending, creating it if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens a file for reading in pieces.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>>;
    /// The length of a file.
    fn file_size(&self, path: &Path) -> io::Result<u64>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (creating the file), or returns
    /// `None` at once if another holder has it. The lock lasts as long as the
    /// returned guard.
    fn try_lock(&self, path: &Path) -> io::Result<Option<VfsLock>>;
}

/// A held lock (see [`Vfs::try_lock`]); dropping it releases the lock.
pub struct VfsLock {
    _inner: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for VfsLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VfsLock")
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

/// A real file opened for appending.
#[derive(Debug)]
pub struct StdFile(std::fs::File);

impl VfsFile for StdFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        use std::io::Write;
        self.0.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        use std::io::{Seek, SeekFrom};
        self.0.set_len(len)?;
        self.0.seek(SeekFrom::Start(len)).map(|_| ())
    }
    fn write_at(&mut self, at: u64, buf: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let len = self.0.metadata()?.len();
        if at.checked_add(buf.len() as u64).is_none_or(|end| end > len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end",
            ));
        }
        // A positioned write: the file's cursor (at its end) is unchanged.
        self.0.write_all_at(buf, at)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Vfs for StdFs {
    type File = StdFile;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<StdFile> {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        f.seek(SeekFrom::End(0))?;
        Ok(StdFile(f))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        Ok(Box::new(io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(path)?,
        )))
    }
    fn file_size(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<VfsLock>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // An advisory lock (flock) held by the open file: released when the
        // file closes, including when the process dies.
        match f.try_lock() {
            Ok(()) => Ok(Some(VfsLock {
                _inner: Box::new(f),
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Replaces `dir/name` with `bytes` durably: written to `dir/tmp`, synced,
/// renamed over `name`, the directory synced. A crash leaves the old file
/// or the new one, never a mix. The error names the path it concerns.
pub fn replace_durably<V: Vfs>(
    vfs: &V,
    dir: &Path,
    name: &str,
    tmp: &str,
    bytes: &[u8],
) -> Result<(), (PathBuf, io::Error)> {
    let (path, tmp) = (dir.join(name), dir.join(tmp));
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let mut f = vfs.open(&tmp, true).map_err(at(&tmp))?;
    f.set_len(0).map_err(at(&tmp))?;
    f.append(bytes).map_err(at(&tmp))?;
    f.sync().map_err(at(&tmp))?;
    vfs.rename(&tmp, &path).map_err(at(&path))?;
    vfs.sync_dir(dir).map_err(at(dir))
}

/// Creates `dir` and its missing parents, and makes every component of the
/// path durable in the directory it is in, whether it was created now or
/// before (a directory created before a crash or a failed sync may exist in
/// memory only, and one that appeared only in memory vanishes in a crash,
/// with every file in it). A relative path's first component is synced in
/// the working directory.
pub fn create_dir_durably<V: Vfs>(vfs: &V, dir: &Path) -> io::Result<()> {
    let parent_of = |d: &Path| match d.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(Path::new(".").to_path_buf()),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    };
    // Every component's entry, not only the new ones': one whose parent
    // sync failed (or never ran, after a crash) exists but is not durable,
    // and nothing tells the two apart. Directory syncs of clean
    // directories cost little.
    let mut to_sync: Vec<PathBuf> = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .filter_map(parent_of)
        .collect();
    vfs.create_dir_all(dir)?;
    // Outermost first: a child's entry is durable only in a durable parent.
    to_sync.sort_by_key(|p| p.components().count());
    to_sync.dedup();
    for p in to_sync {
        vfs.sync_dir(&p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
