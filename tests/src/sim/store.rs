//! A simulated node: its storage (the real write-ahead log on a simulated
//! file system, or an in-memory store), the promises its messages made
//! about that storage, and its snapshot.

use super::*;

pub(super) struct Packet {
    pub(super) deliver_at: u64,
    pub(super) seq: u64,
    pub(super) msg: Message,
}

/// Where a simulated node keeps its log.
pub(super) enum NodeStore {
    /// The in-memory store (loses unsynced writes on a crash).
    Mem(MemLogStore),
    /// The real write-ahead log over a simulated disk that tears writes.
    Wal { fs: SimFs, wal: Option<Wal<SimFs>> },
}

/// The log directory on a simulated node's disk.
pub(super) const WAL_DIR: &str = "/data/wal";

/// Small segments, so runs seal, rotate and replay many of them; a
/// storage bug planted if `bug` is one.
pub(super) fn sim_wal_options(bug: Option<Bug>) -> WalOptions {
    WalOptions::with_segment_max_bytes(4 << 10).with_planted_bug(bug)
}

impl NodeStore {
    /// Opens the store after a (re)start; the log cuts a torn tail here,
    /// and moves damage aside to repair from the peers. Returns the stored
    /// state, whether a torn tail was cut, and whether the node repairs.
    pub(super) fn open(&mut self, bug: Option<Bug>) -> Result<(StoredState, bool, bool), String> {
        match self {
            NodeStore::Mem(m) => Ok((m.load().expect("in-memory store loads"), false, false)),
            NodeStore::Wal { fs, wal } => {
                let (w, state) = Wal::open_repairing(
                    fs.clone(),
                    std::path::Path::new(WAL_DIR),
                    sim_wal_options(bug),
                )
                .map_err(|e| e.to_string())?;
                let (repaired, repairing) = (w.repaired().is_some(), w.repairing().is_some());
                *wal = Some(w);
                Ok((state, repaired, repairing))
            }
        }
    }

    /// Drops the log's repairing mark, if it has one.
    pub(super) fn finish_repair(&mut self) -> Result<(), String> {
        match self {
            NodeStore::Wal { wal: Some(w), .. } if w.repairing().is_some() => {
                w.finish_repair().map_err(|e| e.to_string())
            }
            _ => Ok(()),
        }
    }

    /// Media damage: flips one bit in a random byte of a random segment.
    /// Returns whether anything was damaged.
    pub(super) fn damage(&mut self, rng: &mut SplitMix64) -> bool {
        let NodeStore::Wal { fs, .. } = self else {
            return false;
        };
        let dir = std::path::Path::new(WAL_DIR);
        let Ok(names) = fs.list(dir) else {
            return false;
        };
        let segs: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with("wal-") && n.ends_with(".log"))
            .collect();
        if segs.is_empty() {
            return false;
        }
        let name = &segs[rng.range(0, segs.len() as u64) as usize];
        let newest = segs.iter().max() == Some(name);
        let path = dir.join(name);
        let Ok(bytes) = fs.read(&path) else {
            return false;
        };
        if bytes.is_empty() {
            return false;
        }
        // The torn rule's blind spot (docs/storage-format.md): in the
        // newest segment, damage next to a sector that reads as zeros (the
        // last, partial one included; a torn tail not yet cut leaves some,
        // and a misdirected write may copy one) can read as a torn tail.
        // Not inflicted.
        let blind_spot = |b: &[u8]| newest && b.chunks(512).any(|c| c.iter().all(|x| *x == 0));
        match rng.range(0, 10) {
            // A latent sector error: the file cannot be read.
            0..=1 => fs.set_unreadable(&path).is_ok(),
            // A misdirected write: a sector of this segment lands on
            // another sector of it.
            2..=4 if bytes.len() >= 1024 => {
                const SECTOR: u64 = 512;
                let sectors = bytes.len() as u64 / SECTOR;
                let from = rng.range(0, sectors) * SECTOR;
                let mut to = rng.range(0, sectors) * SECTOR;
                if to == from {
                    to = (from + SECTOR) % (sectors * SECTOR);
                }
                let sector = &bytes[from as usize..(from + SECTOR) as usize];
                let mut after = bytes.clone();
                after[to as usize..(to + SECTOR) as usize].copy_from_slice(sector);
                !blind_spot(&after) && fs.overwrite(&path, to as usize, sector).is_ok()
            }
            // A flipped bit (the one `SimFs::corrupt` flips).
            _ => {
                let at = rng.range(0, bytes.len() as u64) as usize;
                let mut after = bytes.clone();
                after[at] ^= 0x10;
                !blind_spot(&after) && fs.corrupt(&path, at).is_ok()
            }
        }
    }

    /// Appends, records the hard state and syncs. With `fail_sync`, the
    /// writes happen but the fsync fails (the caller then cuts the power).
    pub(super) fn persist(
        &mut self,
        entries: &[ha_core::types::Entry],
        hs: Option<ha_core::types::HardState>,
        fail_sync: bool,
        eio: bool,
    ) -> Result<(), String> {
        match self {
            NodeStore::Mem(m) => {
                m.append(entries).map_err(|e| e.to_string())?;
                if let Some(hs) = hs {
                    m.save_hard_state(hs).map_err(|e| e.to_string())?;
                }
                if fail_sync || eio {
                    return Err("injected sync failure".into());
                }
                m.sync().map_err(|e| e.to_string())
            }
            NodeStore::Wal { fs, wal } => {
                let wal = wal.as_mut().expect("an up node has an open log");
                wal.append(entries).map_err(|e| e.to_string())?;
                if let Some(hs) = hs {
                    wal.save_hard_state(hs).map_err(|e| e.to_string())?;
                }
                if fail_sync {
                    // The power fails during the fsync: the crash that
                    // follows keeps a prefix of the write, possibly torn.
                    fs.set_sync_interrupted(true);
                }
                if eio {
                    fs.set_fail_sync(true);
                    let r = wal.sync();
                    fs.set_fail_sync(false);
                    return r.map_err(|e| e.to_string());
                }
                wal.sync().map_err(|e| e.to_string())
            }
        }
    }

    /// The node's process stops; the file system (and its page cache)
    /// goes on.
    pub(super) fn stop_process(&mut self) {
        match self {
            NodeStore::Mem(m) => m.crash(),
            NodeStore::Wal { wal, fs } => {
                *wal = None;
                // A full disk gets room before the restart (as after a
                // power loss), else the node could not start at all.
                fs.set_space_left(None);
            }
        }
    }

    /// A power loss; with probability `tear` a write in flight scrambles
    /// the synced bytes of its sector (returns whether it did).
    pub(super) fn crash(&mut self, rng: &mut SplitMix64, tear: f64) -> bool {
        match self {
            NodeStore::Mem(m) => {
                m.crash();
                false
            }
            NodeStore::Wal { fs, wal } => {
                *wal = None;
                fs.crash_tearing(rng, tear)
            }
        }
    }

    /// Records a snapshot installed from the leader (durable at the next sync).
    pub(super) fn install_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
        keep: bool,
    ) -> Result<(), String> {
        match self {
            NodeStore::Mem(m) => m
                .install_snapshot(index, term, keep)
                .map_err(|e| e.to_string()),
            NodeStore::Wal { wal, .. } => wal
                .as_mut()
                .expect("an up node has an open log")
                .install_snapshot(index, term, keep)
                .map_err(|e| e.to_string()),
        }
    }

    /// Compacts the log up to a durable snapshot, and syncs. With
    /// `power_fails`, directory syncs fail (the caller then cuts the power):
    /// the deletions of covered segments may persist in part.
    pub(super) fn compact_and_sync(
        &mut self,
        index: LogIndex,
        term: Term,
        power_fails: bool,
    ) -> Result<(), String> {
        match self {
            NodeStore::Mem(m) => {
                m.compact(index, term).map_err(|e| e.to_string())?;
                m.sync().map_err(|e| e.to_string())
            }
            NodeStore::Wal { wal, fs } => {
                let w = wal.as_mut().expect("an up node has an open log");
                w.compact(index, term).map_err(|e| e.to_string())?;
                fs.set_fail_dir_sync(power_fails);
                let r = w.sync().map_err(|e| e.to_string());
                fs.set_fail_dir_sync(false);
                r
            }
        }
    }

    /// Makes the disk fill up after `bytes` more bytes.
    pub(super) fn fill_disk_after(&mut self, bytes: u64) {
        if let NodeStore::Wal { fs, .. } = self {
            fs.set_space_left(Some(bytes));
        }
    }
}

/// Commands larger than this carry a forged batch start (session commands
/// are far smaller).
pub(super) const FORGED_MIN_BYTES: usize = 4_096;

/// A command `cmd` of more than a page: its id, `filler` bytes, then a
/// valid write-ahead log batch start record (docs/storage-format.md) naming
/// offset `index` of segment `seq`, which is not where it lies.
pub(super) fn forged_payload(cmd: u64, filler: usize, index: u64, seq: u64) -> Vec<u8> {
    debug_assert!(filler > FORGED_MIN_BYTES);
    let mut p = cmd.to_le_bytes().to_vec();
    p.resize(8 + filler, 0x5A);
    let mut body = vec![1u8];
    body.extend_from_slice(&index.to_le_bytes());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&[0x40, 0, 0, 0, 0x11, 0x22, 0x33, 0x44]);
    p.extend_from_slice(&(body.len() as u32).to_le_bytes());
    p.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    p.extend_from_slice(&body);
    p
}

/// What a node's log store said is durable: the state after its last
/// successful sync (or as an open found it). A restart must find it again
/// unless the disk was damaged (then the node repairs from its peers): the
/// invariant "no acknowledged write is lost", checked on each node alone,
/// where a lost batch shows at once instead of only when it also breaks a
/// cluster-wide property.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Promise {
    pub(super) hard_state: ha_core::types::HardState,
    /// The log's last index and its term.
    pub(super) last: (LogIndex, Term),
}

/// A write whose sync failed (or never came): it may have reached the disk
/// whole, in part, or not at all, so a restart may find it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Unsure {
    /// The write's first entry's index and the term of the entry before it:
    /// the log may end there (the write may have truncated the log).
    pub(super) from: Option<(LogIndex, Term)>,
    /// The write installed a snapshot that replaces the whole log.
    pub(super) replaced: bool,
}

impl Promise {
    /// The state after a successful sync of `install`, `entries` and `hs`.
    pub(super) fn after(
        mut self,
        install: Option<(LogIndex, Term, bool)>,
        entries: &[ha_core::types::Entry],
        hs: Option<ha_core::types::HardState>,
    ) -> Promise {
        if let Some((index, term, keep)) = install
            && !keep
        {
            self.last = (index, term);
        }
        if let Some(e) = entries.last() {
            self.last = (e.index, e.term);
        }
        if let Some(hs) = hs {
            self.hard_state = hs;
        }
        self
    }
}

/// A snapshot on a simulated node's disk: the state machine (command per
/// index) up to `index`. Written atomically; survives crashes.
#[derive(Clone)]
pub(super) struct SimSnapshot {
    pub(super) index: LogIndex,
    pub(super) term: Term,
    pub(super) state: BTreeMap<LogIndex, u64>,
    /// The configuration in force at `index` (the file's header).
    pub(super) membership: Membership,
}

pub(super) struct SimNode {
    pub(super) id: NodeId,
    pub(super) raft: Option<Raft>,
    pub(super) store: NodeStore,
    /// The snapshot the node's state machine and log start from.
    pub(super) snapshot: Option<SimSnapshot>,
    /// Snapshots received from leaders, verified and staged, not yet
    /// accepted by Raft, by `(index, term)` (as the staging files are). A
    /// restart removes them: only an accepted snapshot is started from.
    pub(super) received: BTreeMap<(LogIndex, Term), SimSnapshot>,
    /// The state machine: command ids applied, by index (lost on crash).
    pub(super) applied: BTreeMap<LogIndex, u64>,
    /// The node task's Ready pipeline: the Ready in flight, the commands
    /// this node took as leader (by index) and the reads it confirms.
    pub(super) pipeline: Pipeline<u64, u64>,
    /// Reads in flight: ctx -> the highest index acknowledged before each
    /// began (a linearizable read must be served at or above it).
    pub(super) read_floors: BTreeMap<u64, LogIndex>,
    pub(super) restart_at: Option<u64>,
    /// The disk was damaged while the node was down (not yet rebooted).
    pub(super) damaged: bool,
    /// Restarts so far (seeds each incarnation's core differently).
    pub(super) incarnation: u64,
    /// The commit index up to which the checker has seen this node commit.
    pub(super) checked_commit: LogIndex,
    /// A snapshot being written, and the tick its write completes.
    pub(super) saving: Option<(u64, SimSnapshot)>,
    /// What the log store said is durable (see [`Promise`]).
    pub(super) promise: Promise,
    /// A hard state that moved only the commit index, not written yet:
    /// the next write carries it (as the node task does).
    pub(super) unwritten_hs: Option<ha_core::types::HardState>,
    /// A write that failed after the promise, which a restart may find.
    pub(super) unsure: Option<Unsure>,
    /// The Ready whose persistence is under way, and the tick it completes.
    pub(super) in_flight: Option<(u64, InFlight)>,
}

impl SimNode {
    /// Checks what an open found against what the store promised (see
    /// [`Promise`]), then takes the found state as the new promise.
    pub(super) fn check_promise(
        &mut self,
        stored: &StoredState,
        repairing: bool,
    ) -> Result<(), String> {
        let p = self.promise;
        let found_last = (
            stored.snapshot_last.0.plus(stored.entries.len() as u64),
            stored
                .entries
                .last()
                .map_or(stored.snapshot_last.1, |e| e.term),
        );
        let term_at = |i: LogIndex| -> Option<Term> {
            if i == stored.snapshot_last.0 {
                return Some(stored.snapshot_last.1);
            }
            let k = i.0.checked_sub(stored.snapshot_last.0.0)?.checked_sub(1)?;
            stored.entries.get(k as usize).map(|e| e.term)
        };
        let unsure = self.unsure.take();
        self.unwritten_hs = None;
        self.promise = Promise {
            hard_state: stored.hard_state,
            last: found_last,
        };
        let id = self.id;
        if repairing {
            // Only damage may make a node repair: a torn write is cut.
            if !self.damaged {
                return Err(format!(
                    "Durability: node {id} repairs its log, but its disk was never damaged \
                     (what a crash did taken for damage)"
                ));
            }
            return Ok(());
        }
        let (hs, found) = (p.hard_state, stored.hard_state);
        if found.term < hs.term
            || (found.term == hs.term && hs.vote.is_some() && found.vote != hs.vote)
            || found.commit < hs.commit
        {
            return Err(format!(
                "Durability: node {id} restarts with hard state {found:?}, but its log had \
                 synced {hs:?}"
            ));
        }
        if unsure.is_some_and(|u| u.replaced) {
            return Ok(());
        }
        // The log must still hold the synced one, up to where a failed
        // write may have cut it.
        let floor = match unsure.and_then(|u| u.from) {
            Some((from, prev_term)) if from <= p.last.0 => (from.prev(), prev_term),
            _ => p.last,
        };
        if floor.0 > LogIndex(0)
            && floor.0 >= stored.snapshot_last.0
            && term_at(floor.0) != Some(floor.1)
        {
            return Err(format!(
                "Durability: node {id} restarts with its log ending at {}@{} (snapshot at \
                 {}), but it had synced entry {}@{}",
                found_last.0, found_last.1, stored.snapshot_last.0, floor.0, floor.1
            ));
        }
        Ok(())
    }
}
