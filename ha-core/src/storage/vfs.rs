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

// ----- the simulated file system ---------------------------------------------

const PAGE_BYTES: usize = 4096;

#[derive(Clone, Debug, Default)]
struct SimInode {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a crash for sure (contents at the last sync).
    durable: Vec<u8>,
    /// Unsynced changes since the last sync, in order.
    pending: Vec<PendingOp>,
}

#[derive(Clone, Debug)]
enum PendingOp {
    /// Bytes written at an offset (an append writes at the end).
    Write {
        at: usize,
        data: Vec<u8>,
    },
    SetLen(u64),
}

impl PendingOp {
    /// Applies the op to `file`, of which only the first `cut` bytes of a
    /// write survive (all, when `None`). A write beyond the end leaves
    /// zeros in between, as a lost page reads.
    fn apply(&self, file: &mut Vec<u8>, cut: Option<usize>) {
        match self {
            PendingOp::Write { at, data } => {
                let data = &data[..cut.unwrap_or(data.len()).min(data.len())];
                let end = at + data.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[*at..end].copy_from_slice(data);
            }
            PendingOp::SetLen(l) => file.resize(*l as usize, 0),
        }
    }
}

/// A namespace change (crash model 2).
#[derive(Clone, Debug)]
enum NsOp {
    /// A name now refers to an inode (a creation).
    Set(PathBuf, u64),
    /// A name is gone (a removal).
    Unset(PathBuf),
    /// A rename: one change, never half done.
    Rename(PathBuf, PathBuf, u64),
}

impl NsOp {
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            NsOp::Set(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            NsOp::Unset(p) => {
                names.remove(p);
            }
            NsOp::Rename(from, to, ino) => {
                names.remove(from);
                names.insert(to.clone(), *ino);
            }
        }
    }
}

#[derive(Debug, Default)]
struct SimState {
    next_inode: u64,
    inodes: BTreeMap<u64, SimInode>,
    /// The namespace as reads see it: path -> inode.
    names: BTreeMap<PathBuf, u64>,
    /// The namespace as of the last directory sync, per directory.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Namespace changes no directory sync has made durable yet, in order.
    ns_pending: Vec<NsOp>,
    dirs: Vec<PathBuf>,
    /// Directories whose entry in their parent a directory sync made
    /// durable.
    durable_dirs: std::collections::BTreeSet<PathBuf>,
    /// Bytes that may still be written before writes fail with "no space".
    space_left: Option<u64>,
    /// Fail every sync while set.
    fail_sync: bool,
    /// Fail every directory sync while set.
    fail_dir_sync: bool,
    /// Syncs do not return (they fail, leaving the writes pending) while
    /// set: the power is failing, and a crash comes next.
    sync_interrupted: bool,
    /// Inodes whose reads fail with an I/O error (latent sector errors).
    unreadable: std::collections::BTreeSet<u64>,
    /// Counts of operations, for tests.
    syncs: u64,
    /// Paths locked through `try_lock`.
    locks: std::collections::BTreeSet<PathBuf>,
}

/// Releases a [`SimFs`] lock when dropped.
struct SimLockGuard {
    fs: SimFs,
    path: PathBuf,
}

impl Drop for SimLockGuard {
    fn drop(&mut self) {
        self.fs.lock().locks.remove(&self.path);
    }
}

/// An in-memory file system with a crash model (see the module docs).
/// Clones share one file system.
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

/// A file of a [`SimFs`].
#[derive(Debug)]
pub struct SimFile {
    fs: SimFs,
    inode: u64,
}

fn no_space() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "no space left on device (simulated)",
    )
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found (simulated)", p.display()),
    )
}

impl SimFs {
    /// An empty file system.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        // A poisoned lock means a test already panicked; keep its state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a power loss (see the module docs), choosing what survives
    /// with `rng`.
    pub fn crash(&self, rng: &mut SplitMix64) {
        self.crash_tearing(rng, 0.0);
    }

    /// Like [`SimFs::crash`], and a write that began inside a sector holding
    /// synced bytes scrambles those bytes with probability `tear` (crash
    /// model 3). Returns whether synced bytes were scrambled.
    pub fn crash_tearing(&self, rng: &mut SplitMix64, tear: f64) -> bool {
        const SECTOR: usize = 512;
        let mut tore = false;
        let mut st = self.lock();
        // Directories: only those durable up to the root, with their files.
        let durable_dirs = st.durable_dirs.clone();
        let survives = |d: &Path| {
            d.ancestors()
                .filter(|a| a.parent().is_some())
                .all(|a| durable_dirs.contains(a))
        };
        st.dirs.retain(|d| survives(d));
        st.durable_dirs.retain(|d| survives(d));
        // Namespace: only what a directory sync made durable, in a
        // directory that survived.
        let dirs = st.dirs.clone();
        let mut names = st.durable_names.clone();
        let ops = std::mem::take(&mut st.ns_pending);
        let keep = rng.range(0, ops.len() as u64 + 1) as usize;
        for op in &ops[..keep] {
            op.apply(&mut names);
        }
        st.names = names
            .iter()
            .filter(|(p, _)| {
                p.parent()
                    .is_some_and(|d| d.parent().is_none() || dirs.iter().any(|x| x == d))
            })
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        st.durable_names = st.names.clone();
        let live: Vec<u64> = st.names.values().copied().collect();
        st.inodes.retain(|ino, _| live.contains(ino));
        for inode in st.inodes.values_mut() {
            let mut data = inode.durable.clone();
            let n = inode.pending.len();
            let keep = if n == 0 {
                0
            } else {
                rng.range(0, n as u64 + 1) as usize
            };
            let synced_len = data.len();
            // A non-atomic sector write: the first pending write began in
            // a sector that already held synced bytes.
            if let Some(PendingOp::Write { at, .. }) = inode.pending.first()
                && tear > 0.0
                && *at <= synced_len
                && *at % SECTOR != 0
                && rng.chance(tear)
            {
                let start = at - at % SECTOR;
                // Never zeros: a sector of zeros reads as one never written
                // (the torn rule's blind spot, docs/storage-format.md).
                for b in &mut data[start..*at] {
                    *b = rng.next_u64() as u8 | 1;
                }
                tore = true;
            }
            for (k, op) in inode.pending.iter().take(keep).enumerate() {
                let cut = match op {
                    // The last surviving write may be torn.
                    PendingOp::Write { data: b, .. } if k + 1 == keep && rng.chance(0.5) => {
                        Some(rng.range(0, b.len() as u64 + 1) as usize)
                    }
                    _ => None,
                };
                op.apply(&mut data, cut);
            }
            // A page of the unsynced region may not have made it: a whole
            // page at a page-aligned file offset, less what an earlier sync
            // had already made durable of it.
            if data.len() > synced_len + PAGE_BYTES && rng.chance(0.3) {
                let first = synced_len / PAGE_BYTES;
                let pages = data.len().div_ceil(PAGE_BYTES) - first;
                let page = first + rng.range(0, pages as u64) as usize;
                let at = (page * PAGE_BYTES).max(synced_len);
                let end = ((page + 1) * PAGE_BYTES).min(data.len());
                data[at..end].iter_mut().for_each(|b| *b = 0);
            }
            inode.data = data.clone();
            inode.durable = data;
            inode.pending.clear();
        }
        let live: std::collections::BTreeSet<u64> = st.inodes.keys().copied().collect();
        st.unreadable.retain(|i| live.contains(i));
        st.fail_sync = false;
        st.fail_dir_sync = false;
        st.sync_interrupted = false;
        st.space_left = None;
        tore
    }

    /// Writes fail with "no space" once `bytes` more have been written
    /// (`None`: unlimited).
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.lock().space_left = bytes;
    }

    /// Makes every sync fail (or succeed again).
    pub fn set_fail_sync(&self, fail: bool) {
        self.lock().fail_sync = fail;
    }

    /// Makes every file sync stop short, as when the power fails during
    /// it: the sync returns an error and its writes stay pending, so the
    /// crash that follows keeps a prefix of them, possibly torn (unlike
    /// [`SimFs::set_fail_sync`], an I/O error that drops them).
    pub fn set_sync_interrupted(&self, interrupted: bool) {
        self.lock().sync_interrupted = interrupted;
    }

    /// Makes every directory sync fail (or succeed again); file syncs are
    /// unaffected.
    pub fn set_fail_dir_sync(&self, fail: bool) {
        self.lock().fail_dir_sync = fail;
    }

    /// Number of successful file syncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Zeroes `len` bytes of the durable and current contents of `path`
    /// from `offset` (within the file): a lost write, as a sector that never
    /// reached the disk reads back.
    pub fn zero(&self, path: &Path, offset: usize, len: usize) -> io::Result<()> {
        let mut st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = st.inodes.get_mut(&ino).expect("named inode exists");
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= inode.data.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range past end"))?;
        inode.data[offset..end].fill(0);
        let durable_end = end.min(inode.durable.len());
        if offset < durable_end {
            inode.durable[offset..durable_end].fill(0);
        }
        Ok(())
    }

    /// Overwrites the durable and current contents of `path` from `offset`
    /// with `bytes`, within the file (a misdirected write: bytes meant for
    /// elsewhere).
    pub fn overwrite(&self, path: &Path, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = st.inodes.get_mut(&ino).expect("named inode exists");
        let end = offset
            .checked_add(bytes.len())
            .filter(|e| *e <= inode.data.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range past end"))?;
        inode.data[offset..end].copy_from_slice(bytes);
        let durable_end = end.min(inode.durable.len());
        if offset < durable_end {
            inode.durable[offset..durable_end].copy_from_slice(&bytes[..durable_end - offset]);
        }
        Ok(())
    }

    /// Makes every read of the file at `path` fail with an I/O error, as a
    /// latent sector error does, until the file is gone.
    pub fn set_unreadable(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        st.unreadable.insert(ino);
        Ok(())
    }

    /// Flips one bit of the durable and current contents of `path` at
    /// `offset` (simulated media damage).
    pub fn corrupt(&self, path: &Path, offset: usize) -> io::Result<()> {
        let mut st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = st.inodes.get_mut(&ino).expect("named inode exists");
        if offset >= inode.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset past end",
            ));
        }
        inode.data[offset] ^= 0x10;
        if offset < inode.durable.len() {
            inode.durable[offset] ^= 0x10;
        }
        Ok(())
    }
}

impl VfsFile for SimFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut st = self.fs.lock();
        if let Some(left) = st.space_left {
            if (buf.len() as u64) > left {
                // A full disk may take part of a write before failing.
                let part = left as usize;
                st.space_left = Some(0);
                let inode = st.inodes.get_mut(&self.inode).ok_or_else(gone)?;
                let at = inode.data.len();
                inode.data.extend_from_slice(&buf[..part]);
                inode.pending.push(PendingOp::Write {
                    at,
                    data: buf[..part].to_vec(),
                });
                return Err(no_space());
            }
            st.space_left = Some(left - buf.len() as u64);
        }
        let inode = st.inodes.get_mut(&self.inode).ok_or_else(gone)?;
        let at = inode.data.len();
        inode.data.extend_from_slice(buf);
        inode.pending.push(PendingOp::Write {
            at,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut st = self.fs.lock();
        if st.sync_interrupted {
            return Err(io::Error::other(
                "the power failed during fsync (simulated)",
            ));
        }
        if st.fail_sync {
            // Crash model 5: the writes are dropped from the disk's view,
            // and no later sync brings them back. Reads still see them.
            let inode = st.inodes.get_mut(&self.inode).ok_or_else(gone)?;
            inode.pending.clear();
            return Err(io::Error::other("fsync failed (simulated I/O error)"));
        }
        st.syncs += 1;
        let inode = st.inodes.get_mut(&self.inode).ok_or_else(gone)?;
        let mut durable = std::mem::take(&mut inode.durable);
        for op in inode.pending.drain(..) {
            op.apply(&mut durable, None);
        }
        inode.durable = durable;
        Ok(())
    }
    fn write_at(&mut self, at: u64, buf: &[u8]) -> io::Result<()> {
        let mut st = self.fs.lock();
        let inode = st.inodes.get_mut(&self.inode).ok_or_else(gone)?;
        let at = usize::try_from(at).map_err(|_| io::Error::other("offset out of range"))?;
        let end = at
            .checked_add(buf.len())
            .filter(|e| *e <= inode.data.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past the end"))?;
        inode.data[at..end].copy_from_slice(buf);
        inode.pending.push(PendingOp::Write {
            at,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut st = self.fs.lock();
        let inode = st.inodes.get_mut(&self.inode).ok_or_else(gone)?;
        inode.data.resize(len as usize, 0);
        inode.pending.push(PendingOp::SetLen(len));
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        let st = self.fs.lock();
        Ok(st.inodes.get(&self.inode).ok_or_else(gone)?.data.len() as u64)
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "file was removed (simulated)")
}

impl Vfs for SimFs {
    type File = SimFile;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        for d in dir.ancestors().filter(|a| a.parent().is_some()) {
            if !st.dirs.iter().any(|x| x == d) {
                st.dirs.push(d.to_path_buf());
            }
        }
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if dir.parent().is_some() && !st.dirs.iter().any(|d| d == dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let mut st = self.lock();
        let ino = match st.names.get(path) {
            Some(i) => *i,
            None if create => {
                if st.space_left == Some(0) {
                    // A new directory entry may need a block too.
                    return Err(no_space());
                }
                st.next_inode += 1;
                let ino = st.next_inode;
                st.inodes.insert(ino, SimInode::default());
                st.names.insert(path.to_path_buf(), ino);
                st.ns_pending.push(NsOp::Set(path.to_path_buf(), ino));
                ino
            }
            None => return Err(not_found(path)),
        };
        Ok(SimFile {
            fs: self.clone(),
            inode: ino,
        })
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let ino = st.names.get(path).ok_or_else(|| not_found(path))?;
        if st.unreadable.contains(ino) {
            // EIO, as a latent sector error reads.
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(st.inodes[ino].data.clone())
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        Ok(Box::new(io::Cursor::new(self.read(path)?)))
    }
    fn file_size(&self, path: &Path) -> io::Result<u64> {
        let st = self.lock();
        let ino = st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(st.inodes[ino].data.len() as u64)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        st.ns_pending.push(NsOp::Unset(path.to_path_buf()));
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.space_left == Some(0) {
            return Err(no_space());
        }
        let ino = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), ino);
        st.ns_pending
            .push(NsOp::Rename(from.to_path_buf(), to.to_path_buf(), ino));
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.fail_sync || st.fail_dir_sync {
            return Err(io::Error::other(
                "directory fsync failed (simulated I/O error)",
            ));
        }
        let in_dir = |p: &Path| p.parent() == Some(dir);
        let names: Vec<(PathBuf, u64)> = st
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        st.durable_names.retain(|p, _| !in_dir(p));
        st.durable_names.extend(names);
        // What this directory's sync made durable leaves the pending list;
        // a rename between two directories keeps the other side's half.
        let pending = std::mem::take(&mut st.ns_pending);
        st.ns_pending = pending
            .into_iter()
            .filter_map(|op| match op {
                NsOp::Set(p, _) | NsOp::Unset(p) if in_dir(&p) => None,
                NsOp::Rename(a, b, _) if in_dir(&a) && in_dir(&b) => None,
                NsOp::Rename(a, b, ino) if in_dir(&a) => Some(NsOp::Set(b, ino)),
                NsOp::Rename(a, b, _) if in_dir(&b) => Some(NsOp::Unset(a)),
                other => Some(other),
            })
            .collect();
        let children: Vec<PathBuf> = st.dirs.iter().filter(|d| in_dir(d)).cloned().collect();
        st.durable_dirs.extend(children);
        Ok(())
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<VfsLock>> {
        if !self.lock().locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        let guard = SimLockGuard {
            fs: self.clone(),
            path: path.to_path_buf(),
        };
        Ok(Some(VfsLock {
            _inner: Box::new(guard),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_data_survives_and_unsynced_creation_does_not() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        create_dir_durably(&fs, dir).unwrap();
        let mut a = fs.open(&dir.join("a"), true).unwrap();
        a.append(b"hello").unwrap();
        a.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        a.append(b" world").unwrap();
        let mut b = fs.open(&dir.join("b"), true).unwrap();
        b.append(b"lost").unwrap();
        b.sync().unwrap(); // The file is synced, but its name is not.
        let mut rng = SplitMix64::new(1);
        fs.crash(&mut rng);
        let got = fs.read(&dir.join("a")).unwrap();
        assert!(got.starts_with(b"hello") && got.len() <= 11, "{got:?}");
        // `b`'s name was never synced: it may or may not have survived.
        let names = fs.list(dir).unwrap();
        assert!(names.contains(&"a".to_string()), "{names:?}");
        if names.contains(&"b".to_string()) {
            assert_eq!(fs.read(&dir.join("b")).unwrap(), b"lost");
        }
    }

    /// A directory whose parent sync failed is made durable by the next
    /// open, although it exists by then.
    #[test]
    fn an_existing_directory_is_made_durable_too() {
        let fs = SimFs::new();
        let dir = Path::new("/n1/wal");
        fs.set_fail_dir_sync(true);
        assert!(create_dir_durably(&fs, dir).is_err());
        fs.set_fail_dir_sync(false);
        create_dir_durably(&fs, dir).unwrap();
        let mut a = fs.open(&dir.join("a"), true).unwrap();
        a.append(b"synced").unwrap();
        a.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        fs.crash(&mut SplitMix64::new(2));
        assert_eq!(fs.read(&dir.join("a")).unwrap(), b"synced");
    }

    #[test]
    fn a_crash_keeps_a_prefix_of_the_unsynced_namespace_changes() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let fs = SimFs::new();
            let dir = Path::new("/d");
            create_dir_durably(&fs, dir).unwrap();
            for n in ["1", "2", "3"] {
                fs.open(&dir.join(n), true).unwrap();
            }
            fs.sync_dir(dir).unwrap();
            // Unlinks in order, unsynced, then a rename.
            fs.remove(&dir.join("1")).unwrap();
            fs.remove(&dir.join("2")).unwrap();
            fs.rename(&dir.join("3"), &dir.join("4")).unwrap();
            fs.crash(&mut SplitMix64::new(seed));
            let names = fs.list(dir).unwrap().join(",");
            assert!(
                ["1,2,3", "2,3", "3", "4"].contains(&names.as_str()),
                "seed {seed}: {names} is not a prefix of the changes"
            );
            seen.insert(names);
        }
        assert_eq!(seen.len(), 4, "every prefix occurs: {seen:?}");
    }

    #[test]
    fn a_directory_whose_parent_was_not_synced_is_lost_with_its_files() {
        let fs = SimFs::new();
        let dir = Path::new("/d/e");
        fs.create_dir_all(dir).unwrap();
        let mut a = fs.open(&dir.join("a"), true).unwrap();
        a.append(b"synced").unwrap();
        a.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        // `/d` is durable in `/`, but `e` was never made durable in `/d`.
        fs.sync_dir(Path::new("/")).unwrap();
        fs.crash(&mut SplitMix64::new(1));
        assert!(fs.list(Path::new("/d")).unwrap().is_empty());
        assert_eq!(fs.list(dir).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(fs.read(&dir.join("a")).is_err());
        // Created durably, it stays.
        create_dir_durably(&fs, dir).unwrap();
        let mut a = fs.open(&dir.join("a"), true).unwrap();
        a.append(b"synced").unwrap();
        a.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        fs.crash(&mut SplitMix64::new(1));
        assert_eq!(fs.read(&dir.join("a")).unwrap(), b"synced");
    }

    #[test]
    fn full_disk_fails_writes_and_keeps_synced_data() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        create_dir_durably(&fs, dir).unwrap();
        let mut a = fs.open(&dir.join("a"), true).unwrap();
        a.append(b"0123").unwrap();
        a.sync().unwrap();
        fs.set_space_left(Some(2));
        let err = a.append(b"4567").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        fs.set_fail_sync(true);
        assert!(a.sync().is_err());
        fs.sync_dir(dir).unwrap_err();
        fs.set_fail_sync(false);
        fs.sync_dir(dir).unwrap();
        fs.crash(&mut SplitMix64::new(3));
        assert!(fs.read(&dir.join("a")).unwrap().starts_with(b"0123"));
    }
}
