//! [`SimFs`]: an in-memory file system with the crash model described in the
//! parent module, for tests and the simulator.
//!
//! Invariants: what a crash may keep is decided only from what was synced
//! (file pages and directory changes); every fault is drawn from the
//! file system's own seeded generator, so a seed replays a run exactly.

use super::*;

pub(super) const PAGE_BYTES: usize = 4096;

#[derive(Clone, Debug, Default)]
pub(super) struct SimInode {
    /// What reads see.
    pub(super) data: Vec<u8>,
    /// What survives a crash for sure (contents at the last sync).
    pub(super) durable: Vec<u8>,
    /// Unsynced changes since the last sync, in order.
    pub(super) pending: Vec<PendingOp>,
}

#[derive(Clone, Debug)]
pub(super) enum PendingOp {
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
    pub(super) fn apply(&self, file: &mut Vec<u8>, cut: Option<usize>) {
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
pub(super) enum NsOp {
    /// A name now refers to an inode (a creation).
    Set(PathBuf, u64),
    /// A name is gone (a removal).
    Unset(PathBuf),
    /// A rename: one change, never half done.
    Rename(PathBuf, PathBuf, u64),
}

impl NsOp {
    pub(super) fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
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
pub(super) struct SimState {
    pub(super) next_inode: u64,
    pub(super) inodes: BTreeMap<u64, SimInode>,
    /// The namespace as reads see it: path -> inode.
    pub(super) names: BTreeMap<PathBuf, u64>,
    /// The namespace as of the last directory sync, per directory.
    pub(super) durable_names: BTreeMap<PathBuf, u64>,
    /// Namespace changes no directory sync has made durable yet, in order.
    pub(super) ns_pending: Vec<NsOp>,
    pub(super) dirs: Vec<PathBuf>,
    /// Directories whose entry in their parent a directory sync made
    /// durable.
    pub(super) durable_dirs: std::collections::BTreeSet<PathBuf>,
    /// Bytes that may still be written before writes fail with "no space".
    pub(super) space_left: Option<u64>,
    /// Fail every sync while set.
    pub(super) fail_sync: bool,
    /// Fail every directory sync while set.
    pub(super) fail_dir_sync: bool,
    /// Syncs do not return (they fail, leaving the writes pending) while
    /// set: the power is failing, and a crash comes next.
    pub(super) sync_interrupted: bool,
    /// Inodes whose reads fail with an I/O error (latent sector errors).
    pub(super) unreadable: std::collections::BTreeSet<u64>,
    /// Counts of operations, for tests.
    pub(super) syncs: u64,
    /// Paths locked through `try_lock`.
    pub(super) locks: std::collections::BTreeSet<PathBuf>,
}

/// Releases a [`SimFs`] lock when dropped.
pub(super) struct SimLockGuard {
    pub(super) fs: SimFs,
    pub(super) path: PathBuf,
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
    pub(super) state: Arc<Mutex<SimState>>,
}

/// A file of a [`SimFs`].
#[derive(Debug)]
pub struct SimFile {
    pub(super) fs: SimFs,
    pub(super) inode: u64,
}

pub(super) fn no_space() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "no space left on device (simulated)",
    )
}

pub(super) fn not_found(p: &Path) -> io::Error {
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

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
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

pub(super) fn gone() -> io::Error {
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
