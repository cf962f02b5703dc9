//! A deterministic simulator that runs a cluster of Raft cores and tries to
//! break them.
//!
//! Owns: a logical clock, a seeded random generator, a network that drops,
//! delays, duplicates, reorders and partitions (also one-way), crashes that
//! lose everything not yet persisted, restarts from persisted state, clients
//! that propose commands and linearizable reads, and the [`Checker`] that
//! tests the Raft safety properties after every event.
//!
//! Everything is a function of the seed: rerunning a seed replays the run
//! event for event. A failure carries the seed and the last events.
//!
//! Each node runs the node task's own `Ready` pipeline
//! (`ha_core::node::Pipeline`): the simulator is its IO. Its asynchrony is
//! made of separate, seeded events: a Ready's write completes ticks after
//! it is taken (`max_persist_delay_ticks`), its application later still
//! (`max_apply_delay_ticks`), a snapshot transfer's file arrives and its
//! outcome reaches the sender ticks later (`max_transfer_ticks`); messages
//! are stepped, ticks and proposals taken in between. A crash can strike
//! between the first send and the persist, which is where an unpersisted
//! vote would leak, and anywhere in between those events. Clients with
//! sessions retry under skewed leader clocks (`clock_skew_ms`), and a
//! reference session table checks every operation runs at most once.
//!
//! Invariants:
//! 1. Node `k` (0-based) has id `k + 1`.
//! 2. A crashed node has no core and no state machine; only its store's
//!    durable part survives.

pub mod checker;
pub mod sessions;
mod trace;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bytes::Bytes;
use ha_core::node::{NodeError, Pipeline, PipelineIo, Write, merge_snapshot};
use ha_core::raft::rng::SplitMix64;
use ha_core::raft::{Body, Config, InitialState, Membership, Message, Raft, RoleKind};
use ha_core::storage::{LogStore, MemLogStore, SimFs, StoredState, Vfs, Wal, WalOptions};
use ha_core::types::{EntryPayload, LogIndex, NodeId, Term};

pub use checker::Checker;
pub use ha_core::raft::PlantedBug as Bug;
use trace::{Trace, TraceEvent};

/// Where fresh command ids start; tests pick their own ids below it.
pub const FRESH_CMD_BASE: u64 = 1 << 48;

/// How hostile the world is. All probabilities are per tick unless noted.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Messages take `0..=max_delay_ticks` ticks (random per message, so
    /// they also reorder).
    pub max_delay_ticks: u64,
    /// Probability the partition changes this tick.
    pub partition: f64,
    /// Probability a live node crashes this tick.
    pub crash: f64,
    /// Probability the node leading the highest term crashes this tick
    /// (leaders are the interesting victims: the Figure 8 scenario of the
    /// Raft paper needs a chain of leaders failing mid-replication).
    pub crash_leader: f64,
    /// Probability the leader of the highest term is cut off this tick.
    pub isolate_leader: f64,
    /// Probability, per Ready, that a node crashes after sending its
    /// immediate messages and before persisting.
    pub crash_before_persist: f64,
    /// A crashed node restarts after `1..=max_down_ticks` ticks.
    pub max_down_ticks: u64,
    /// Probability, per Ready, that the write reaches the disk but its fsync
    /// fails and the power goes: the write survives whole, torn or not at all.
    pub torn_write: f64,
    /// Probability, per Ready, that the disk fills up part-way through the
    /// write; the node stops (its writes fail) and restarts later with space.
    pub disk_full: f64,
    /// A Ready's persistence completes `0..=max_persist_delay_ticks` ticks
    /// after it is taken (as the node task's group-commit write does):
    /// meanwhile the node steps messages, ticks and takes proposals, but
    /// takes no next Ready. 0 handles every Ready at once.
    pub max_persist_delay_ticks: u64,
    /// A snapshot transfer takes `1..=max_transfer_ticks` ticks: its file
    /// arrives (and `InstallSnapshot` is stepped) and the sender learns the
    /// outcome only then, as over a real stream; meanwhile the leader keeps
    /// stepping answers to appends it sent before. 0: at once.
    pub max_transfer_ticks: u64,
    /// After a Ready's write is durable, its application (restore, apply,
    /// answers, reads) comes `0..=max_apply_delay_ticks` ticks later, as an
    /// applier behind its log would: meanwhile the node steps messages.
    pub max_apply_delay_ticks: u64,
    /// A snapshot's file is written `0..=max_snapshot_save_ticks` ticks
    /// after its state was encoded; only then is the log compacted.
    pub max_snapshot_save_ticks: u64,
    /// Each node's clock runs up to this many ms ahead of true time (drawn
    /// per node at the start): a leader with a fast clock stamps commands
    /// far ahead and expires idle sessions early.
    pub clock_skew_ms: u64,
    /// Probability a crash also damages the node's disk, when no other node
    /// is damaged or repairing (a minority): a bit flipped in a random byte
    /// of a random log segment, synced or not, a sector written over
    /// another (a misdirected write) or a segment whose reads fail (a
    /// latent sector error); and, with half of it, a write in flight that
    /// scrambles the synced bytes of its sector (a non-atomic sector
    /// write). The node restarts repairing from its peers.
    pub media_damage: f64,
    /// Probability, per Ready, that the write's fsync fails with an I/O
    /// error: as on Linux, the disk's view drops the write while reads
    /// still see it; the node process stops and restarts without a power
    /// loss (its page cache intact), and a power loss may come later.
    pub fsync_eio: f64,
    /// Probability, per compaction, that the power fails while it deletes
    /// the segments a snapshot covers: the deletions persist in part.
    pub compaction_power_loss: f64,
}

impl Faults {
    /// A perfect network and no crashes.
    pub fn none() -> Faults {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            max_delay_ticks: 0,
            partition: 0.0,
            crash: 0.0,
            crash_leader: 0.0,
            isolate_leader: 0.0,
            crash_before_persist: 0.0,
            max_down_ticks: 0,
            torn_write: 0.0,
            disk_full: 0.0,
            max_persist_delay_ticks: 0,
            max_transfer_ticks: 0,
            max_apply_delay_ticks: 0,
            max_snapshot_save_ticks: 0,
            clock_skew_ms: 0,
            media_damage: 0.0,
            fsync_eio: 0.0,
            compaction_power_loss: 0.0,
        }
    }

    /// An unreliable network (drops, duplicates, long delays) without crashes.
    pub fn unreliable() -> Faults {
        Faults {
            drop: 0.1,
            duplicate: 0.05,
            max_delay_ticks: 4,
            ..Faults::none()
        }
    }
}

/// Settings of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Core settings template (the id and seed are filled per node).
    pub raft: Config,
    /// The fault profile.
    pub faults: Faults,
    /// Probability per tick that a client proposes a batch of commands.
    pub propose: f64,
    /// Probability per tick that a client asks for a linearizable read.
    pub read: f64,
    /// A bug to plant in every node.
    pub bug: Option<Bug>,
    /// Nodes keep their log in the real write-ahead log on a simulated disk
    /// (otherwise in the in-memory store).
    pub wal: bool,
    /// Each node snapshots its state machine and compacts its log once this
    /// many entries were applied since its last snapshot.
    pub snapshot_every: Option<u64>,
    /// Clients with sessions (exactly-once operations, retried with the
    /// same session numbers); 0: none.
    pub session_clients: usize,
    /// Session timeout of the replicated session table, in leader ms (a
    /// tick is [`TICK_MS`]).
    pub session_timeout_ms: u64,
    /// Probability a client's command is large (more than a page) and ends
    /// with a copy of a write-ahead log batch start, valid but bound to no
    /// place: a torn write of it must still read as torn.
    pub forged_batch_starts: f64,
}

/// Leader time advances this many milliseconds per tick.
pub const TICK_MS: u64 = 10;

/// Ticks a session client waits for an answer before it retries.
const SESSION_RETRY_TICKS: u64 = 12;

impl SimConfig {
    /// A quiet cluster of `nodes` with the given seed's core settings.
    pub fn quiet(nodes: usize) -> SimConfig {
        let mut raft = Config::new(NodeId(1));
        raft.election_timeout_min_ticks = 10;
        raft.election_timeout_max_ticks = 20;
        raft.heartbeat_interval_ticks = 2;
        SimConfig {
            nodes,
            raft,
            faults: Faults::none(),
            propose: 0.0,
            read: 0.0,
            bug: None,
            wal: false,
            snapshot_every: None,
            session_clients: 0,
            session_timeout_ms: 5_000,
            forged_batch_starts: 0.0,
        }
    }

    /// The randomized configuration of one fuzzing seed: node count (3 or 5,
    /// by the seed's parity), core options and fault rates all come from the
    /// seed, so the seed alone reproduces the run.
    pub fn for_seed(seed: u64) -> SimConfig {
        let mut rng = SplitMix64::new(seed ^ 0xA5A5_5A5A_DEAD_BEEF);
        let nodes = if seed.is_multiple_of(2) { 3 } else { 5 };
        let mut c = SimConfig::quiet(nodes);
        c.raft.pre_vote = rng.chance(0.7);
        c.raft.check_quorum = rng.chance(0.7);
        c.raft.max_inflight_appends = [1, 2, 4, 256][rng.range(0, 4) as usize];
        c.raft.max_append_entries = [1, 1, 2, 3, 8, 64][rng.range(0, 6) as usize];
        c.raft.max_uncommitted_entries = [16, 256, 1 << 16][rng.range(0, 3) as usize];
        c.faults = Faults {
            drop: [0.0, 0.01, 0.05, 0.15][rng.range(0, 4) as usize],
            duplicate: [0.0, 0.02, 0.1][rng.range(0, 3) as usize],
            max_delay_ticks: rng.range(0, 6),
            partition: [0.005, 0.02, 0.05][rng.range(0, 3) as usize],
            crash: [0.0, 0.002, 0.01][rng.range(0, 3) as usize],
            crash_leader: [0.0, 0.005, 0.02][rng.range(0, 3) as usize],
            isolate_leader: [0.0, 0.005, 0.02][rng.range(0, 3) as usize],
            crash_before_persist: [0.0, 0.01, 0.05][rng.range(0, 3) as usize],
            max_down_ticks: rng.range(1, 60),
            torn_write: 0.0,
            disk_full: 0.0,
            max_persist_delay_ticks: 0,
            max_transfer_ticks: 0,
            max_apply_delay_ticks: 0,
            max_snapshot_save_ticks: 0,
            clock_skew_ms: 0,
            media_damage: 0.0,
            fsync_eio: 0.0,
            compaction_power_loss: 0.0,
        };
        // A disk fault's probability: one of `choices` with a log on disk,
        // else none (drawing nothing).
        let wal_fault = |rng: &mut SplitMix64, wal: bool, choices: &[f64]| {
            if wal {
                choices[rng.range(0, choices.len() as u64) as usize]
            } else {
                0.0
            }
        };
        c.propose = [0.1, 0.3, 0.8][rng.range(0, 3) as usize];
        c.wal = rng.chance(0.5);
        c.snapshot_every = [None, Some(5), Some(20), Some(100)][rng.range(0, 4) as usize];
        c.faults.torn_write = wal_fault(&mut rng, c.wal, &[0.0, 0.01, 0.03]);
        c.faults.disk_full = wal_fault(&mut rng, c.wal, &[0.0, 0.002, 0.01]);
        c.read = [0.0, 0.1, 0.3][rng.range(0, 3) as usize];
        c.faults.max_persist_delay_ticks = [0, 1, 3][rng.range(0, 3) as usize];
        c.faults.max_transfer_ticks = [0, 2, 8][rng.range(0, 3) as usize];
        c.session_clients = [0, 2, 4][rng.range(0, 3) as usize];
        c.faults.clock_skew_ms = [0, 2_000, 20_000][rng.range(0, 3) as usize];
        c.faults.max_apply_delay_ticks = [0, 0, 2][rng.range(0, 3) as usize];
        c.faults.max_snapshot_save_ticks = [0, 3][rng.range(0, 2) as usize];
        c.faults.media_damage = wal_fault(&mut rng, c.wal, &[0.0, 0.0, 0.2, 0.5]);
        c.faults.fsync_eio = wal_fault(&mut rng, c.wal, &[0.0, 0.01, 0.03]);
        c.forged_batch_starts = wal_fault(&mut rng, c.wal, &[0.0, 0.0, 0.3]);
        c.faults.compaction_power_loss = wal_fault(&mut rng, c.wal, &[0.0, 0.05, 0.2]);
        c
    }
}

/// A failed run: what broke, and how to see it again.
#[derive(Debug)]
pub struct Failure {
    /// The seed that reproduces the run.
    pub seed: u64,
    /// The property that broke.
    pub violation: String,
    /// The last events before it, oldest first.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation failed: seed {}: {}",
            self.seed, self.violation
        )?;
        writeln!(
            f,
            "reproduce with: HA_SIM_SEED={} cargo test --release -p ha-tests",
            self.seed
        )?;
        writeln!(f, "last {} events:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What a finished run did.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Ticks simulated.
    pub ticks: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Commands acknowledged to clients.
    pub acknowledged: u64,
    /// Reads served.
    pub reads: u64,
    /// Leaders elected.
    pub elections: u64,
    /// Crashes.
    pub crashes: u64,
    /// Restarts whose log open cut off a torn tail.
    pub torn_tails_repaired: u64,
    /// Disks damaged (see `Faults::media_damage`).
    pub media_damage: u64,
    /// Restarts that found damage and repaired from the peers.
    pub repairs: u64,
    /// Writes that failed (full disk, failed fsync).
    pub disk_errors: u64,
    /// Snapshots taken (and logs compacted).
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Session operations run (in the committed log).
    pub session_ops: u64,
    /// Session commands refused because their session had expired.
    pub session_expired: u64,
    /// Large commands proposed that carry a forged batch start.
    pub forged_commands: u64,
    /// Power losses while a compaction deleted covered segments.
    pub compaction_power_losses: u64,
}

struct Packet {
    deliver_at: u64,
    seq: u64,
    msg: Message,
}

/// Where a simulated node keeps its log.
enum NodeStore {
    /// The in-memory store (loses unsynced writes on a crash).
    Mem(MemLogStore),
    /// The real write-ahead log over a simulated disk that tears writes.
    Wal { fs: SimFs, wal: Option<Wal<SimFs>> },
}

/// The log directory on a simulated node's disk.
const WAL_DIR: &str = "/data/wal";

/// Small segments, so runs seal, rotate and replay many of them; a
/// storage bug planted if `bug` is one.
fn sim_wal_options(bug: Option<Bug>) -> WalOptions {
    WalOptions::with_segment_max_bytes(4 << 10).with_planted_bug(bug)
}

impl NodeStore {
    /// Opens the store after a (re)start; the log cuts a torn tail here,
    /// and moves damage aside to repair from the peers. Returns the stored
    /// state, whether a torn tail was cut, and whether the node repairs.
    fn open(&mut self, bug: Option<Bug>) -> Result<(StoredState, bool, bool), String> {
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
    fn finish_repair(&mut self) -> Result<(), String> {
        match self {
            NodeStore::Wal { wal: Some(w), .. } if w.repairing().is_some() => {
                w.finish_repair().map_err(|e| e.to_string())
            }
            _ => Ok(()),
        }
    }

    /// Media damage: flips one bit in a random byte of a random segment.
    /// Returns whether anything was damaged.
    fn damage(&mut self, rng: &mut SplitMix64) -> bool {
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
    fn persist(
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
    fn stop_process(&mut self) {
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
    fn crash(&mut self, rng: &mut SplitMix64, tear: f64) -> bool {
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
    fn install_snapshot(&mut self, index: LogIndex, term: Term, keep: bool) -> Result<(), String> {
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
    fn compact_and_sync(
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
    fn fill_disk_after(&mut self, bytes: u64) {
        if let NodeStore::Wal { fs, .. } = self {
            fs.set_space_left(Some(bytes));
        }
    }
}

/// Commands larger than this carry a forged batch start (session commands
/// are far smaller).
const FORGED_MIN_BYTES: usize = 4_096;

/// A command `cmd` of more than a page: its id, `filler` bytes, then a
/// valid write-ahead log batch start record (docs/storage-format.md) naming
/// offset `index` of segment `seq`, which is not where it lies.
fn forged_payload(cmd: u64, filler: usize, index: u64, seq: u64) -> Vec<u8> {
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
struct Promise {
    hard_state: ha_core::types::HardState,
    /// The log's last index and its term.
    last: (LogIndex, Term),
}

/// A write whose sync failed (or never came): it may have reached the disk
/// whole, in part, or not at all, so a restart may find it.
#[derive(Clone, Copy, Debug)]
struct Unsure {
    /// The write's first entry's index and the term of the entry before it:
    /// the log may end there (the write may have truncated the log).
    from: Option<(LogIndex, Term)>,
    /// The write installed a snapshot that replaces the whole log.
    replaced: bool,
}

impl Promise {
    /// The state after a successful sync of `install`, `entries` and `hs`.
    fn after(
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
struct SimSnapshot {
    index: LogIndex,
    term: Term,
    state: BTreeMap<LogIndex, u64>,
}

struct SimNode {
    id: NodeId,
    raft: Option<Raft>,
    store: NodeStore,
    /// The snapshot the node's state machine and log start from.
    snapshot: Option<SimSnapshot>,
    /// Snapshots received from leaders, verified and staged, not yet
    /// accepted by Raft, by `(index, term)` (as the staging files are). A
    /// restart removes them: only an accepted snapshot is started from.
    received: BTreeMap<(LogIndex, Term), SimSnapshot>,
    /// The state machine: command ids applied, by index (lost on crash).
    applied: BTreeMap<LogIndex, u64>,
    /// The node task's Ready pipeline: the Ready in flight, the commands
    /// this node took as leader (by index) and the reads it confirms.
    pipeline: Pipeline<u64, u64>,
    /// Reads in flight: ctx -> the highest index acknowledged before each
    /// began (a linearizable read must be served at or above it).
    read_floors: BTreeMap<u64, LogIndex>,
    restart_at: Option<u64>,
    /// The disk was damaged while the node was down (not yet rebooted).
    damaged: bool,
    /// Restarts so far (seeds each incarnation's core differently).
    incarnation: u64,
    /// The commit index up to which the checker has seen this node commit.
    checked_commit: LogIndex,
    /// A snapshot being written, and the tick its write completes.
    saving: Option<(u64, SimSnapshot)>,
    /// What the log store said is durable (see [`Promise`]).
    promise: Promise,
    /// A write that failed after the promise, which a restart may find.
    unsure: Option<Unsure>,
    /// The Ready whose persistence is under way, and the tick it completes.
    in_flight: Option<(u64, InFlight)>,
}

impl SimNode {
    /// Checks what an open found against what the store promised (see
    /// [`Promise`]), then takes the found state as the new promise.
    fn check_promise(&mut self, stored: &StoredState, repairing: bool) -> Result<(), String> {
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

/// The part of a Ready that waits for its persistence (as in the node
/// task): written, then the rest of its duties done, when it completes.
struct InFlight {
    /// What the pipeline asked to make durable.
    write: Write,
    torn: bool,
    /// The fsync fails with an I/O error (`Faults::fsync_eio`).
    eio: bool,
    /// The term of the entry before `write.entries[0]` when the Ready was
    /// taken.
    first_prev_term: Term,
    /// The write is durable and its messages sent; the application waits.
    persisted: bool,
    /// The installed snapshot's state, taken from the staged copy when it
    /// was promoted (before the log recorded the install).
    install_state: Option<BTreeMap<LogIndex, u64>>,
}

/// What one pipeline step produced, for the simulator to act on.
#[derive(Default)]
struct SimOutputs {
    messages: Vec<Message>,
    snapshot_requests: Vec<NodeId>,
    soft: Option<ha_core::raft::SoftState>,
    error: Option<String>,
}

/// The simulator's side of the node task's pipeline: the network, the
/// state machine (command ids by index), the clients, and the checker.
struct SimIo<'a> {
    id: NodeId,
    checker: &'a mut Checker,
    applied: &'a mut BTreeMap<LogIndex, u64>,
    read_floors: &'a mut BTreeMap<u64, LogIndex>,
    acked: &'a mut BTreeMap<u64, LogIndex>,
    stats: &'a mut RunStats,
    max_acked: &'a mut LogIndex,
    served_reads: &'a mut BTreeMap<u64, LogIndex>,
    /// The state of the snapshot the step restores.
    restore: Option<BTreeMap<LogIndex, u64>>,
    out: SimOutputs,
}

impl PipelineIo for SimIo<'_> {
    type Reply = u64;
    type Read = u64;
    fn send(&mut self, msg: Message) {
        self.out.messages.push(msg);
    }
    fn send_snapshot(&mut self, peer: NodeId) {
        self.out.snapshot_requests.push(peer);
    }
    fn soft_state(&mut self, state: ha_core::raft::SoftState) {
        self.out.soft = Some(state);
    }
    fn restore(&mut self, _state: &[u8]) -> Result<(), String> {
        let state = self
            .restore
            .take()
            .ok_or("a snapshot restore without a received snapshot")?;
        *self.applied = state;
        Ok(())
    }
    fn apply(&mut self, e: &ha_core::types::Entry) -> Option<Bytes> {
        if let Err(err) = self.checker.on_apply(self.id, e) {
            self.out.error.get_or_insert(err);
        }
        let cmd = match &e.payload {
            EntryPayload::Command(b) => {
                let mut buf = [0u8; 8];
                buf.copy_from_slice(&b[..8]);
                u64::from_le_bytes(buf)
            }
            _ => 0,
        };
        self.applied.insert(e.index, cmd);
        None
    }
    fn answer(&mut self, cmd: u64, result: Result<(LogIndex, Bytes), NodeError>) {
        if let Ok((index, _)) = result {
            self.acked.insert(cmd, index);
            self.stats.acknowledged += 1;
            *self.max_acked = (*self.max_acked).max(index);
        }
    }
    fn serve_read(&mut self, ctx: u64, index: LogIndex) {
        let floor = self.read_floors.remove(&ctx).unwrap_or_default();
        if index < floor {
            self.out.error.get_or_insert(format!(
                "Linearizability: node {} served read {ctx} at index {index}, but index {floor} \
                 was acknowledged before the read began",
                self.id
            ));
        }
        self.stats.reads += 1;
        self.served_reads.insert(ctx, index);
    }
    fn fail_read(&mut self, ctx: u64, _error: NodeError) {
        self.read_floors.remove(&ctx);
    }
}

/// The simulator (see the module docs).
pub struct Sim {
    seed: u64,
    cfg: SimConfig,
    rng: SplitMix64,
    now: u64,
    nodes: Vec<SimNode>,
    net: Vec<Packet>,
    next_seq: u64,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes cut from everyone (a message passes only if neither end is
    /// here and its link is not cut).
    disconnected: BTreeSet<NodeId>,
    checker: Checker,
    trace: Trace,
    next_cmd: u64,
    next_read: u64,
    /// Acknowledged commands: id -> index.
    acked: BTreeMap<u64, LogIndex>,
    max_acked_index: LogIndex,
    /// Counts of messages sent, by body kind, for message-count tests.
    pub sent: BTreeMap<&'static str, u64>,
    stats: RunStats,
    failure: Option<String>,
    /// Reads served: ctx -> index.
    served_reads: BTreeMap<u64, LogIndex>,
    /// Snapshot bytes in flight, keyed by (from, to, index).
    snapshot_payloads: BTreeMap<(NodeId, NodeId, LogIndex), SimSnapshot>,
    /// Snapshot transfers under way: (due tick, the InstallSnapshot the
    /// receiver steps once the file arrived, the file).
    transfers: Vec<(u64, Message, SimSnapshot)>,
    /// Clients with sessions.
    clients: Vec<sessions::SessionClient>,
    /// How far each node's clock runs ahead, in ms.
    clock_offset_ms: Vec<u64>,
    next_op: u64,
}

fn body_kind(b: &Body) -> &'static str {
    match b {
        Body::PreVote { .. } => "prevote",
        Body::PreVoteResponse { .. } => "prevote-resp",
        Body::Vote { .. } => "vote",
        Body::VoteResponse { .. } => "vote-resp",
        Body::Append { .. } => "append",
        Body::AppendResponse(ha_core::raft::AppendOutcome::Accepted { .. }) => "append-ok",
        Body::AppendResponse(ha_core::raft::AppendOutcome::Rejected { .. }) => "append-reject",
        Body::AppendResponse(ha_core::raft::AppendOutcome::Repairing { .. }) => "append-repairing",
        Body::AppendResponse(ha_core::raft::AppendOutcome::RepairAccepted { .. }) => {
            "append-ok-repairing"
        }
        Body::TermQuery { .. } => "term-query",
        Body::TermReply { .. } => "term-reply",
        Body::Heartbeat { .. } => "heartbeat",
        Body::HeartbeatResponse { .. } => "heartbeat-resp",
        Body::InstallSnapshot { .. } => "install-snapshot",
    }
}

impl Sim {
    /// A new cluster; every node starts as a follower with an empty log.
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let rng = SplitMix64::new(seed);
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            nodes: Vec::new(),
            net: Vec::new(),
            next_seq: 0,
            cut: BTreeSet::new(),
            disconnected: BTreeSet::new(),
            checker: Checker::default(),
            // `HA_SIM_TRACE=n` keeps the last n events (80 by default).
            trace: Trace::new(
                std::env::var("HA_SIM_TRACE")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(80),
            ),
            next_cmd: FRESH_CMD_BASE,
            next_read: 1,
            acked: BTreeMap::new(),
            max_acked_index: LogIndex(0),
            sent: BTreeMap::new(),
            stats: RunStats::default(),
            failure: None,
            served_reads: BTreeMap::new(),
            snapshot_payloads: BTreeMap::new(),
            transfers: Vec::new(),
            clients: Vec::new(),
            clock_offset_ms: Vec::new(),
            next_op: 1,
            cfg,
        };
        for k in 0..sim.cfg.nodes {
            let id = NodeId(k as u64 + 1);
            sim.nodes.push(SimNode {
                id,
                raft: None,
                snapshot: None,
                received: BTreeMap::new(),
                store: if sim.cfg.wal {
                    NodeStore::Wal {
                        fs: SimFs::new(),
                        wal: None,
                    }
                } else {
                    NodeStore::Mem(MemLogStore::new())
                },
                applied: BTreeMap::new(),
                pipeline: Pipeline::new(LogIndex(0)),
                read_floors: BTreeMap::new(),
                restart_at: None,
                damaged: false,
                incarnation: 0,
                in_flight: None,
                saving: None,
                checked_commit: LogIndex(0),
                promise: Promise::default(),
                unsure: None,
            });
            sim.boot(k).expect("an empty store opens");
        }
        // Clocks and clients draw from their own generator, so runs without
        // them see the same world as before they existed.
        let mut side = SplitMix64::new(seed ^ 0x5E55_1045_C10C_5EED);
        let skew = sim.cfg.faults.clock_skew_ms;
        sim.clock_offset_ms = (0..sim.cfg.nodes)
            .map(|_| if skew > 0 { side.range(0, skew + 1) } else { 0 })
            .collect();
        sim.clients = (0..sim.cfg.session_clients)
            .map(|_| sessions::SessionClient {
                secret: side.next_u64(),
                ..Default::default()
            })
            .collect();
        if sim.cfg.session_clients > 0 {
            sim.checker.set_reference(sessions::Reference::new(
                sim.cfg.session_timeout_ms,
                sim.cfg.bug == Some(Bug::SessionRecreate),
            ));
        }
        sim
    }

    /// Node `k`'s clock, in ms: true time plus its skew.
    fn clock_ms(&self, k: usize) -> u64 {
        self.now * TICK_MS + self.clock_offset_ms.get(k).copied().unwrap_or(0)
    }

    /// Proposes a session request on node `k` (stamped with its clock);
    /// returns the command id if the node took it as leader.
    fn propose_session_op(&mut self, k: usize, op: ha_core::protocol::LogOp) -> Option<u64> {
        let cmd = self.fresh_cmd();
        let payload = sessions::payload(cmd, self.clock_ms(k), op);
        self.propose_payload(k, cmd, Bytes::from(payload))
            .map(|_| cmd)
    }

    /// Proposes `payload` (command `cmd`) on node `k`; returns its index if
    /// the node took it as leader.
    fn propose_payload(&mut self, k: usize, cmd: u64, payload: Bytes) -> Option<LogIndex> {
        let id = self.nodes[k].id;
        let raft = self.nodes[k].raft.as_mut()?;
        let res = raft.propose(payload);
        self.trace.push(
            self.now,
            TraceEvent::Propose(id, cmd, res.as_ref().ok().map(|r| r.0)),
        );
        let (index, term) = res.ok()?;
        // A displaced proposal's entry never committed: it is simply never
        // acknowledged.
        let _displaced = self.nodes[k].pipeline.proposed(index, term, cmd);
        self.drive(k);
        Some(index)
    }

    /// Moves every session client one step (see `sessions`).
    fn step_session_clients(&mut self) {
        if self.cfg.propose <= 0.0 {
            return; // Quiet (healing): no new traffic.
        }
        for c in 0..self.clients.len() {
            if !self.rng.chance(self.cfg.propose) {
                continue;
            }
            let k = self.rng.range(0, self.nodes.len() as u64) as usize;
            let now = self.now;
            let client = &mut self.clients[c];
            match (client.id, client.registering, client.pending.as_ref()) {
                (None, None, _) => {
                    let secret = client.secret;
                    let sent =
                        self.propose_session_op(k, ha_core::protocol::LogOp::Register { secret });
                    self.clients[c].registering = sent.map(|cmd| (cmd, now));
                }
                (None, Some((cmd, at)), _) => {
                    if let Some(index) = self.acked.get(&cmd) {
                        let client = &mut self.clients[c];
                        client.id = Some(index.0);
                        client.registering = None;
                        client.next_seq = 1;
                        client.done_in_session = 0;
                    } else if now.saturating_sub(at) > SESSION_RETRY_TICKS {
                        // A lost registration opens a session nobody uses.
                        self.clients[c].registering = None;
                    }
                }
                (Some(_), _, None) => {
                    let op = self.next_op;
                    self.next_op += 1;
                    let client = &mut self.clients[c];
                    let seq = client.next_seq;
                    client.next_seq += 1;
                    client.pending = Some(sessions::Pending {
                        op,
                        seq,
                        cmds: Vec::new(),
                        sent_at: now,
                        attempts: 0,
                    });
                    self.session_attempt(c, k);
                }
                (Some(_), _, Some(p)) => {
                    if p.cmds.iter().any(|cmd| self.acked.contains_key(cmd)) {
                        let client = &mut self.clients[c];
                        client.pending = None;
                        client.done_in_session += 1;
                        if client.done_in_session >= 3 {
                            // A new session now and then: a session's first
                            // command is where expiry bugs hide.
                            client.id = None;
                        }
                    } else if now.saturating_sub(p.sent_at) > SESSION_RETRY_TICKS {
                        if p.attempts >= 6 {
                            // Give up (the session may have expired).
                            let client = &mut self.clients[c];
                            client.pending = None;
                            client.id = None;
                        } else {
                            self.session_attempt(c, k);
                        }
                    }
                }
            }
        }
    }

    /// Sends (again) client `c`'s pending operation, through node `k`.
    fn session_attempt(&mut self, c: usize, k: usize) {
        let client = &self.clients[c];
        let (Some(id), Some(p)) = (client.id, client.pending.as_ref()) else {
            return;
        };
        let op = ha_core::protocol::LogOp::Command(ha_core::protocol::SessionCommand {
            client: id,
            secret: client.secret,
            seq: p.seq,
            ack_below: p.seq,
            body: sessions::op_body(p.op),
        });
        let sent = self.propose_session_op(k, op);
        let now = self.now;
        if let Some(p) = self.clients[c].pending.as_mut() {
            p.attempts += 1;
            p.sent_at = now;
            p.cmds.extend(sent);
        }
    }

    fn membership(&self) -> Membership {
        Membership::new_voters((1..=self.cfg.nodes as u64).map(NodeId))
    }

    fn boot(&mut self, k: usize) -> Result<(), String> {
        let membership = self.membership();
        let node = &mut self.nodes[k];
        let (stored, repaired, repairing) = node
            .store
            .open(self.cfg.bug)
            .map_err(|e| format!("node {} cannot reopen its log: {e}", node.id))?;
        node.check_promise(&stored, repairing)?;
        if repaired {
            self.stats.torn_tails_repaired += 1;
        }
        if repairing {
            self.stats.repairs += 1;
        }
        let mut config = self.cfg.raft.clone();
        config.id = node.id;
        config.rng_seed = self.seed ^ (node.id.0 << 48) ^ (node.incarnation << 32);
        config.planted_bug = self.cfg.bug;
        let mut init = InitialState {
            hard_state: stored.hard_state,
            membership,
            snapshot_last: stored.snapshot_last,
            entries: stored.entries,
            repairing,
            // From the seeded generator, whose seed differs per incarnation.
            repair_nonce: 0,
        };
        node.applied.clear();
        let published = node.snapshot.as_ref().map_or(LogIndex(0), |s| s.index);
        if init.snapshot_last.0 > published {
            // What `recover` refuses: the log was compacted or an install
            // recorded against a snapshot that is not there.
            return Err(format!(
                "node {}: the log starts after a snapshot at {} but the newest snapshot is at {}",
                node.id, init.snapshot_last.0, published
            ));
        }
        if let Some(snap) = &node.snapshot {
            if let Some(keep) = merge_snapshot(&mut init, snap.index, snap.term) {
                node.store
                    .install_snapshot(snap.index, snap.term, keep)
                    .and_then(|_| node.store.persist(&[], None, false, false))
                    .map_err(|e| format!("node {} cannot record its snapshot: {e}", node.id))?;
                node.promise = node
                    .promise
                    .after(Some((snap.index, snap.term, keep)), &[], None);
            }
            node.applied = snap.state.clone();
        }
        let raft = Raft::new(config, init)
            .map_err(|e| format!("node {} cannot start from its log: {e}", node.id))?;
        node.checked_commit = raft.commit_index();
        node.pipeline = Pipeline::new(raft.applied_index());
        node.raft = Some(raft);
        node.read_floors.clear();
        node.restart_at = None;
        Ok(())
    }

    // ----- observation -------------------------------------------------------

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Logical time in ticks.
    pub fn now(&self) -> u64 {
        self.now
    }
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// The core of node `id`, if it is up.
    pub fn raft(&self, id: NodeId) -> Option<&Raft> {
        self.nodes[(id.0 - 1) as usize].raft.as_ref()
    }
    /// Whether node `id` is up.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.raft(id).is_some()
    }
    /// Ids of all nodes.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }
    /// The command applied at `index` on node `id` (None if not applied or blank).
    pub fn applied_at(&self, id: NodeId, index: LogIndex) -> Option<u64> {
        self.nodes[(id.0 - 1) as usize].applied.get(&index).copied()
    }
    /// Highest index applied on node `id`.
    pub fn applied_index(&self, id: NodeId) -> LogIndex {
        self.raft(id).map_or(LogIndex(0), |r| r.applied_index())
    }
    /// Commands acknowledged to clients, with their indexes.
    pub fn acknowledged(&self) -> &BTreeMap<u64, LogIndex> {
        &self.acked
    }
    /// Statistics so far.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }
    /// The node that is leader of the highest term among live nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.is_leader())
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    // ----- control -----------------------------------------------------------

    /// Replaces the fault profile.
    pub fn set_faults(&mut self, faults: Faults) {
        self.cfg.faults = faults;
    }

    /// Cuts `id` off from everyone until [`Sim::connect`].
    pub fn disconnect(&mut self, id: NodeId) {
        self.disconnected.insert(id);
        self.trace
            .push(self.now, TraceEvent::Partition(format!("disconnect {id}")));
    }

    /// Undoes [`Sim::disconnect`] (links cut one by one stay cut).
    pub fn connect(&mut self, id: NodeId) {
        self.disconnected.remove(&id);
        self.trace
            .push(self.now, TraceEvent::Partition(format!("connect {id}")));
    }

    /// Splits the cluster into `groups`: links between groups are cut, and a
    /// node in no group is cut off from everyone.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.cut.clear();
        self.disconnected.clear();
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        for a in self.ids() {
            for b in self.ids() {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    self.cut.insert((a, b));
                }
            }
        }
        self.trace.push(
            self.now,
            TraceEvent::Partition(format!("partition {groups:?}")),
        );
    }

    fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
            && !self.disconnected.contains(&from)
            && !self.disconnected.contains(&to)
    }

    /// Asks node `id` for a ReadIndex; returns whether it accepted.
    pub fn try_read_on(&mut self, id: NodeId) -> bool {
        self.start_read(id).is_some()
    }

    fn start_read(&mut self, id: NodeId) -> Option<u64> {
        let k = (id.0 - 1) as usize;
        let ctx = self.next_read;
        self.next_read += 1;
        let floor = self.max_acked_index;
        self.nodes[k].raft.as_mut()?.read_index(ctx).ok()?;
        self.nodes[k].pipeline.read_started(ctx, ctx);
        self.nodes[k].read_floors.insert(ctx, floor);
        self.drive(k);
        Some(ctx)
    }

    /// A linearizable read on node `id`: returns the index it was served at
    /// (checked against every write acknowledged before it), or a failure if
    /// the node refused it or could not confirm it within 60 ticks.
    pub fn read_on(&mut self, id: NodeId) -> Result<LogIndex, Failure> {
        let Some(ctx) = self.start_read(id) else {
            return Err(self.fail(format!("node {id} refused the read")));
        };
        for _ in 0..60 {
            if let Some(index) = self.served_reads.get(&ctx) {
                return Ok(*index);
            }
            self.run_ticks(1)?;
        }
        Err(self.fail(format!(
            "node {id} did not confirm read {ctx} within 60 ticks"
        )))
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.disconnected.clear();
        self.trace
            .push(self.now, TraceEvent::Partition("heal".into()));
    }

    /// Crashes node `id`: its core, state machine and unsynced writes are gone.
    pub fn crash(&mut self, id: NodeId) {
        self.stop(id, true);
    }

    /// Stops node `id`: its core and state machine are gone, and with a
    /// power loss its unsynced writes (and maybe more: media damage).
    fn stop(&mut self, id: NodeId, power_loss: bool) {
        if self.nodes[(id.0 - 1) as usize].raft.is_none() {
            return;
        }
        // Media damage on at most one node at a time (a minority): a node
        // is whole again once it runs and no longer repairs (this one too,
        // checked before it stops).
        for n in &mut self.nodes {
            if n.raft.as_ref().is_some_and(|r| !r.is_repairing()) {
                n.damaged = false;
            }
        }
        let node = &mut self.nodes[(id.0 - 1) as usize];
        node.raft = None;
        if !power_loss {
            node.store.stop_process();
        }
        let f = self.cfg.faults.media_damage;
        let others_whole = self.nodes.iter().all(|n| n.id == id || !n.damaged);
        let may_damage = power_loss && f > 0.0 && others_whole;
        let node = &mut self.nodes[(id.0 - 1) as usize];
        let tore = power_loss
            && node
                .store
                .crash(&mut self.rng, if may_damage { f / 2.0 } else { 0.0 });
        let damaged =
            tore || (may_damage && self.rng.chance(f) && node.store.damage(&mut self.rng));
        if damaged {
            node.damaged = true;
            self.stats.media_damage += 1;
            let what = if tore {
                "a torn sector write scrambled synced bytes"
            } else {
                "disk damaged"
            };
            self.trace.push(
                self.now,
                TraceEvent::Partition(format!("node {id}: {what}")),
            );
        }
        let node = &mut self.nodes[(id.0 - 1) as usize];
        node.applied.clear();
        node.pipeline = Pipeline::new(LogIndex(0));
        node.read_floors.clear();
        node.in_flight = None;
        node.saving = None;
        node.received.clear();
        self.stats.crashes += 1;
        self.trace.push(self.now, TraceEvent::Crash(id));
    }

    /// Restarts node `id` from its durable state.
    pub fn restart(&mut self, id: NodeId) {
        let k = (id.0 - 1) as usize;
        if self.nodes[k].raft.is_some() {
            return;
        }
        self.nodes[k].incarnation += 1;
        if let Err(e) = self.boot(k) {
            self.failure = Some(e);
            return;
        }
        self.trace.push(self.now, TraceEvent::Restart(id));
    }

    /// Proposes command `cmd` on node `id`. Returns the index it got if the
    /// node accepted it as leader.
    pub fn propose_on(&mut self, id: NodeId, cmd: u64) -> Option<LogIndex> {
        let k = (id.0 - 1) as usize;
        self.propose_payload(k, cmd, Bytes::copy_from_slice(&cmd.to_le_bytes()))
    }

    /// Proposes a fresh command to the current leader, if any.
    pub fn propose(&mut self) -> Option<(u64, LogIndex)> {
        let leader = self.leader()?;
        let cmd = self.fresh_cmd();
        self.propose_on(leader, cmd).map(|i| (cmd, i))
    }

    /// A command id never used before (fresh ids start at
    /// [`FRESH_CMD_BASE`], so they never collide with ids a test picks).
    pub fn fresh_cmd(&mut self) -> u64 {
        let c = self.next_cmd;
        self.next_cmd += 1;
        c
    }

    /// Runs `n` ticks. Stops early (and returns the failure) if a property breaks.
    pub fn run_ticks(&mut self, n: u64) -> Result<(), Failure> {
        for _ in 0..n {
            self.step_tick();
            if self.failure.is_some() {
                return Err(self.take_failure());
            }
        }
        Ok(())
    }

    /// Runs until `pred` holds or `max` ticks pass; returns whether it held.
    pub fn run_until(
        &mut self,
        max: u64,
        mut pred: impl FnMut(&Sim) -> bool,
    ) -> Result<bool, Failure> {
        for _ in 0..max {
            if pred(self) {
                return Ok(true);
            }
            self.run_ticks(1)?;
        }
        Ok(pred(self))
    }

    /// Turns a failure message into a [`Failure`] with the trace.
    fn take_failure(&mut self) -> Failure {
        Failure {
            seed: self.seed,
            violation: self.failure.take().unwrap_or_default(),
            trace: self.trace.lines(),
        }
    }

    /// Fails the run from a test with the simulator's context attached.
    pub fn fail(&mut self, violation: impl Into<String>) -> Failure {
        self.failure = Some(violation.into());
        self.take_failure()
    }

    // ----- the event loop ----------------------------------------------------

    fn step_tick(&mut self) {
        self.now += 1;
        self.stats.ticks += 1;
        self.random_faults();
        // Deliver everything due, in random order among equals.
        let now = self.now;
        let mut due: Vec<Packet> = Vec::new();
        let mut k = 0;
        while k < self.net.len() {
            if self.net[k].deliver_at <= now {
                due.push(self.net.swap_remove(k));
            } else {
                k += 1;
            }
        }
        due.sort_by_key(|p| (p.deliver_at, p.seq));
        let len = due.len();
        for i in 0..len {
            let j = i + self.rng.range(0, (len - i) as u64) as usize;
            due.swap(i, j);
        }
        for p in due {
            self.deliver(p.msg);
            if self.failure.is_some() {
                return;
            }
        }
        self.end_transfers();
        if self.failure.is_some() {
            return;
        }
        for k in 0..self.nodes.len() {
            if self.nodes[k]
                .saving
                .as_ref()
                .is_some_and(|(due, _)| *due <= now)
            {
                let (_, snap) = self.nodes[k].saving.take().expect("checked");
                self.snapshot_saved(k, snap);
            }
        }
        for k in self.shuffled_nodes() {
            if self.nodes[k]
                .in_flight
                .as_ref()
                .is_some_and(|(due, _)| *due <= now)
            {
                let (_, f) = self.nodes[k].in_flight.take().expect("checked");
                self.complete(k, f);
                if self.failure.is_some() {
                    return;
                }
                self.drive(k);
                if self.failure.is_some() {
                    return;
                }
            }
        }
        for k in self.shuffled_nodes() {
            if let Some(r) = self.nodes[k].raft.as_mut() {
                r.tick();
                self.drive(k);
                if self.failure.is_some() {
                    return;
                }
                // As the node task does: the core's repair is complete and
                // all it wrote is durable, so the log drops its repairing
                // mark, and then the core ends its repair.
                let node = &mut self.nodes[k];
                let settled = node
                    .raft
                    .as_mut()
                    .is_some_and(|r| r.repair_complete() && !r.prepare_ready())
                    && node.in_flight.is_none()
                    && !node.pipeline.busy();
                if settled {
                    if let Err(e) = node.store.finish_repair() {
                        self.failure = Some(e);
                        return;
                    }
                    if let Some(r) = node.raft.as_mut() {
                        r.end_repair();
                    }
                }
            }
        }
        self.random_clients();
        for k in 0..self.nodes.len() {
            if self.nodes[k].restart_at.is_some_and(|t| t <= now) {
                let id = self.nodes[k].id;
                self.restart(id);
                self.drive(k);
            }
        }
    }

    fn shuffled_nodes(&mut self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        for i in 0..order.len() {
            let j = i + self.rng.range(0, (order.len() - i) as u64) as usize;
            order.swap(i, j);
        }
        order
    }

    fn random_faults(&mut self) {
        let f = self.cfg.faults.clone();
        if f.partition > 0.0 && self.rng.chance(f.partition) {
            self.random_partition();
        }
        if f.crash > 0.0 && self.rng.chance(f.crash) {
            let k = self.rng.range(0, self.nodes.len() as u64) as usize;
            self.crash_for_a_while(k);
        }
        if f.crash_leader > 0.0
            && self.rng.chance(f.crash_leader)
            && let Some(leader) = self.leader()
        {
            self.crash_for_a_while((leader.0 - 1) as usize);
        }
        if f.isolate_leader > 0.0
            && self.rng.chance(f.isolate_leader)
            && let Some(leader) = self.leader()
        {
            self.disconnect(leader);
        }
    }

    fn crash_for_a_while(&mut self, k: usize) {
        if self.nodes[k].raft.is_none() {
            return;
        }
        let id = self.nodes[k].id;
        self.crash(id);
        let down = self.rng.range(1, self.cfg.faults.max_down_ticks.max(1) + 1);
        self.nodes[k].restart_at = Some(self.now + down);
    }

    /// Stops node `k`'s process (no power loss: what it wrote stays in the
    /// page cache, durable or not) and restarts it later.
    fn stop_process_for_a_while(&mut self, k: usize) {
        if self.nodes[k].raft.is_none() {
            return;
        }
        let id = self.nodes[k].id;
        self.stop(id, false);
        let down = self.rng.range(1, self.cfg.faults.max_down_ticks.max(1) + 1);
        self.nodes[k].restart_at = Some(self.now + down);
    }

    fn random_partition(&mut self) {
        let n = self.nodes.len() as u64;
        let ids = self.ids();
        self.cut.clear();
        self.disconnected.clear();
        let desc = match self.rng.range(0, 5) {
            0 => "heal".to_string(),
            1 => {
                let a = NodeId(self.rng.range(1, n + 1));
                for b in &ids {
                    if *b != a {
                        self.cut.insert((a, *b));
                        self.cut.insert((*b, a));
                    }
                }
                format!("isolate {a}")
            }
            2 => {
                // Split into two groups at random.
                let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(0.5)).collect();
                for (i, a) in ids.iter().enumerate() {
                    for (j, b) in ids.iter().enumerate() {
                        if side[i] != side[j] {
                            self.cut.insert((*a, *b));
                        }
                    }
                }
                let left: Vec<u64> = ids
                    .iter()
                    .zip(&side)
                    .filter(|(_, s)| **s)
                    .map(|(a, _)| a.0)
                    .collect();
                format!("split {left:?} | rest")
            }
            3 => {
                let a = NodeId(self.rng.range(1, n + 1));
                let b = NodeId(self.rng.range(1, n + 1));
                if a != b {
                    self.cut.insert((a, b));
                }
                format!("one-way cut {a}->{b}")
            }
            _ => {
                // One node can send but not receive.
                let a = NodeId(self.rng.range(1, n + 1));
                for b in &ids {
                    if *b != a {
                        self.cut.insert((*b, a));
                    }
                }
                format!("deafen {a}")
            }
        };
        self.trace.push(self.now, TraceEvent::Partition(desc));
    }

    fn random_clients(&mut self) {
        if !self.clients.is_empty() {
            self.step_session_clients();
        }
        if self.cfg.propose > 0.0 && self.rng.chance(self.cfg.propose) {
            // A client picks a node; only a leader accepts.
            let k = self.rng.range(0, self.nodes.len() as u64) as usize;
            let batch = self.rng.range(1, 4);
            let id = self.nodes[k].id;
            for _ in 0..batch {
                let cmd = self.fresh_cmd();
                let forged = self.cfg.forged_batch_starts;
                let taken = if forged > 0.0 && self.rng.chance(forged) {
                    let filler = self.rng.range(4_200, 9_000) as usize;
                    let index = self.rng.next_u64() % (1 << 20);
                    let seq = self.rng.range(1, 64);
                    let payload = forged_payload(cmd, filler, index, seq);
                    self.stats.forged_commands += 1;
                    self.propose_payload(k, cmd, Bytes::from(payload))
                } else {
                    self.propose_on(id, cmd)
                };
                if taken.is_none() {
                    break;
                }
            }
        }
        if self.cfg.read > 0.0 && self.rng.chance(self.cfg.read) {
            let id = NodeId(self.rng.range(1, self.nodes.len() as u64 + 1));
            self.start_read(id);
        }
    }

    fn send(&mut self, msg: Message) {
        *self.sent.entry(body_kind(&msg.body)).or_insert(0) += 1;
        if !self.link_up(msg.from, msg.to) {
            return;
        }
        let f = &self.cfg.faults;
        if f.drop > 0.0 && self.rng.chance(f.drop) {
            return;
        }
        let copies = if f.duplicate > 0.0 && self.rng.chance(f.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if f.max_delay_ticks > 0 {
                self.rng.range(0, f.max_delay_ticks + 1)
            } else {
                0
            };
            self.next_seq += 1;
            // Delivery happens at the earliest on the next tick.
            self.net.push(Packet {
                deliver_at: self.now + 1 + delay,
                seq: self.next_seq,
                msg: msg.clone(),
            });
        }
    }

    fn deliver(&mut self, msg: Message) {
        let k = (msg.to.0 - 1) as usize;
        // A cut made while the message was in flight drops it too.
        if !self.link_up(msg.from, msg.to) {
            return;
        }
        if self.nodes[k].raft.is_none() {
            return;
        }
        self.stats.delivered += 1;
        self.trace
            .push(self.now, TraceEvent::Deliver(trace::summarize(&msg)));
        if let Body::InstallSnapshot { index, .. } = msg.body {
            // The snapshot's bytes arrived with the message: on disk first.
            let Some(snap) = self
                .snapshot_payloads
                .get(&(msg.from, msg.to, index))
                .cloned()
            else {
                return;
            };
            if let Err(e) = self.checker.check_snapshot(msg.to, &snap.state) {
                self.failure = Some(e);
                return;
            }
            self.nodes[k].received.insert((snap.index, snap.term), snap);
        }
        let raft = self.nodes[k].raft.as_mut().expect("checked above");
        if let Err(e) = raft.step(msg) {
            // Correct peers never send what a node must refuse; when one does,
            // a safety property broke upstream (it is how a planted bug often
            // first shows).
            self.failure = Some(format!("node {} refused a message: {e}", k + 1));
            return;
        }
        if let Err(e) = self.check_commit(k) {
            self.failure = Some(e);
            return;
        }
        self.drive(k);
    }

    /// Runs `f` with node `k`'s core, pipeline and a [`SimIo`] over the
    /// simulator's state; then sends what it sent and records what it
    /// found. Returns `None` if the node is down.
    fn with_pipeline<T>(
        &mut self,
        k: usize,
        restore: Option<BTreeMap<LogIndex, u64>>,
        f: impl FnOnce(&mut Raft, &mut Pipeline<u64, u64>, &mut SimIo<'_>) -> T,
    ) -> Option<(T, SimOutputs)> {
        let Sim {
            nodes,
            checker,
            acked,
            stats,
            max_acked_index,
            served_reads,
            ..
        } = self;
        let SimNode {
            id,
            raft,
            pipeline,
            applied,
            read_floors,
            ..
        } = &mut nodes[k];
        let raft = raft.as_mut()?;
        let mut io = SimIo {
            id: *id,
            checker,
            applied,
            read_floors,
            acked,
            stats,
            max_acked: max_acked_index,
            served_reads,
            restore,
            out: SimOutputs::default(),
        };
        let r = f(raft, pipeline, &mut io);
        Some((r, io.out))
    }

    /// Sends what a pipeline step sent; records a soft state; keeps the
    /// first error as the run's failure. Returns false on failure.
    fn take_outputs(&mut self, k: usize, out: SimOutputs) -> bool {
        let id = self.nodes[k].id;
        if let Some(ss) = out.soft {
            self.trace
                .push(self.now, TraceEvent::Role(id, ss.role, ss.term));
            if ss.role == RoleKind::Leader {
                self.stats.elections += 1;
                let raft = self.nodes[k].raft.as_ref().expect("node is up");
                if let Err(e) = self.checker.on_leader(raft) {
                    self.failure = Some(e);
                    return false;
                }
            }
        }
        for m in out.messages {
            self.send(m);
        }
        if let Some(e) = out.error {
            self.failure = Some(e);
            return false;
        }
        true
    }

    /// Takes every Ready of node `k` it may, through the node task's
    /// pipeline: sends its messages at once, and completes its persistence
    /// now or, with `max_persist_delay_ticks`, on a later tick.
    fn drive(&mut self, k: usize) {
        loop {
            if self.nodes[k].in_flight.is_some() {
                return; // One Ready at a time: the next waits for this one.
            }
            let Some((started, out)) = self.with_pipeline(k, None, |raft, p, io| {
                let write = p.start(raft, io)?;
                let first_prev_term = write
                    .entries
                    .first()
                    .and_then(|e| raft.term_at(e.index.prev()))
                    .unwrap_or(Term(0));
                Some((write, first_prev_term))
            }) else {
                return;
            };
            let snapshot_requests = out.snapshot_requests.clone();
            if !self.take_outputs(k, out) {
                return;
            }
            let Some((write, first_prev_term)) = started else {
                return;
            };
            let id = self.nodes[k].id;
            let needs_write = write.hard_state.is_some() || !write.entries.is_empty();
            let f = self.cfg.faults.crash_before_persist;
            if f > 0.0 && needs_write && self.rng.chance(f) {
                self.crash_for_a_while(k);
                return;
            }
            let f = self.cfg.faults.clone();
            let torn = needs_write && f.torn_write > 0.0 && self.rng.chance(f.torn_write);
            let eio = !torn && needs_write && f.fsync_eio > 0.0 && self.rng.chance(f.fsync_eio);
            if needs_write && f.disk_full > 0.0 && self.rng.chance(f.disk_full) {
                let room = self.rng.range(0, 200);
                self.nodes[k].store.fill_disk_after(room);
            }
            for peer in &snapshot_requests {
                let node = &self.nodes[k];
                let offset = node
                    .raft
                    .as_ref()
                    .map_or(LogIndex(0), |r| r.snapshot_last().0);
                let sent = node.snapshot.clone().filter(|s| s.index >= offset);
                if let Some(snap) = sent {
                    let index = snap.index;
                    let term = self.nodes[k].raft.as_ref().map_or(Term(0), |r| r.term());
                    let install = Message {
                        from: id,
                        to: *peer,
                        term,
                        body: Body::InstallSnapshot {
                            index,
                            term: snap.term,
                        },
                    };
                    let max = self.cfg.faults.max_transfer_ticks;
                    if max > 0 {
                        // Reported when the transfer ends (see `step_tick`).
                        let due = self.now + self.rng.range(1, max + 1);
                        self.transfers.push((due, install, snap));
                        continue;
                    }
                    self.snapshot_payloads
                        .insert((id, *peer, index), snap.clone());
                    self.send(install);
                    self.nodes[k]
                        .raft
                        .as_mut()
                        .expect("up")
                        .report_snapshot(*peer, Some(index));
                } else {
                    self.nodes[k]
                        .raft
                        .as_mut()
                        .expect("up")
                        .report_snapshot(*peer, None);
                }
            }
            let f = InFlight {
                write,
                torn,
                eio,
                first_prev_term,
                persisted: false,
                install_state: None,
            };
            let delay = match self.cfg.faults.max_persist_delay_ticks {
                0 => 0,
                max => self.rng.range(0, max + 1),
            };
            if delay > 0 {
                self.nodes[k].in_flight = Some((self.now + delay, f));
                return;
            }
            self.complete(k, f);
            if self.failure.is_some() || self.nodes[k].in_flight.is_some() {
                return;
            }
        }
    }

    /// A Ready's persistence completes (write it, send what waited for the
    /// disk), then, now or with `max_apply_delay_ticks` on a later tick, its
    /// application (restore, apply, `advance`, serve reads) through the
    /// pipeline; then snapshot.
    fn complete(&mut self, k: usize, mut f: InFlight) {
        let id = self.nodes[k].id;
        if self.nodes[k].raft.is_none() {
            return;
        }
        if !f.persisted {
            if let Some(inst) = f.write.install {
                // As the node task does: publish the staged snapshot, then
                // record the install in the log.
                let node = &mut self.nodes[k];
                let Some(snap) = node.received.remove(&(inst.index, inst.term)) else {
                    self.failure = Some(format!(
                        "node {id} installed snapshot {}@{} it never received",
                        inst.index, inst.term,
                    ));
                    return;
                };
                // Staged copies this one supersedes go (a newer one may be
                // staged and already stepped: it stays for the next Ready).
                node.received.retain(|(i, _), _| *i > inst.index);
                if let Err(e) = self
                    .checker
                    .check_snapshot_complete(id, inst.index, &snap.state)
                {
                    self.failure = Some(e);
                    return;
                }
                let node = &mut self.nodes[k];
                f.install_state = Some(snap.state.clone());
                // Promotion keeps a snapshot file of the same (index, term)
                // that exists already (both hold the same prefix).
                if node
                    .snapshot
                    .as_ref()
                    .is_none_or(|cur| (cur.index, cur.term) != (inst.index, inst.term))
                {
                    node.snapshot = Some(snap);
                }
                self.stats.snapshots_installed += 1;
                if let Err(e) = node
                    .store
                    .install_snapshot(inst.index, inst.term, inst.keep_suffix)
                {
                    // A disk that failed earlier (a compaction's write):
                    // the node stops and restarts from what its disk kept.
                    self.trace.push(
                        self.now,
                        TraceEvent::Partition(format!("node {id} disk: {e}")),
                    );
                    self.stats.disk_errors += 1;
                    self.nodes[k].unsure = Some(Unsure {
                        from: None,
                        replaced: !inst.keep_suffix,
                    });
                    self.crash_for_a_while(k);
                    return;
                }
            }
            if let Err(e) =
                self.nodes[k]
                    .store
                    .persist(&f.write.entries, f.write.hard_state, f.torn, f.eio)
            {
                // The write failed: nothing that depends on it may leave the
                // node. It stops, and restarts later from what its disk kept
                // (after an I/O error from fsync, without a power loss: the
                // page cache still serves the lost write).
                self.trace.push(
                    self.now,
                    TraceEvent::Partition(format!("node {id} disk: {e}")),
                );
                self.stats.disk_errors += 1;
                self.nodes[k].unsure = Some(Unsure {
                    from: f
                        .write
                        .entries
                        .first()
                        .map(|e| (e.index, f.first_prev_term)),
                    replaced: f.write.install.is_some_and(|i| !i.keep_suffix),
                });
                if f.eio {
                    self.stop_process_for_a_while(k);
                } else {
                    self.crash_for_a_while(k);
                }
                return;
            }
            let node = &mut self.nodes[k];
            node.promise = node.promise.after(
                f.write.install.map(|i| (i.index, i.term, i.keep_suffix)),
                &f.write.entries,
                f.write.hard_state,
            );
            if let Err(e) = self
                .checker
                .on_persist(id, f.first_prev_term, &f.write.entries)
            {
                self.failure = Some(e);
                return;
            }
            let Some(((), out)) = self.with_pipeline(k, None, |_, p, io| p.persisted(io)) else {
                return;
            };
            if !self.take_outputs(k, out) {
                return;
            }
            f.persisted = true;
            let delay = match self.cfg.faults.max_apply_delay_ticks {
                0 => 0,
                max => self.rng.range(0, max + 1),
            };
            if delay > 0 {
                self.nodes[k].in_flight = Some((self.now + delay, f));
                return;
            }
        }
        // The applier's part.
        let restore = f.install_state.take();
        let state: Option<&[u8]> = f.write.install.map(|_| &[][..]);
        let Some((r, out)) = self.with_pipeline(k, restore, |raft, p, io| {
            let r = p.finish(raft, io, state);
            // Invariant 3 of the pipeline: the applier's index is the core's.
            if r.is_ok() && p.applied() != raft.applied_index() {
                return Err(format!(
                    "node {}: the core counts {} applied but the state machine holds up to {}",
                    raft.id(),
                    raft.applied_index(),
                    p.applied()
                ));
            }
            r
        }) else {
            return;
        };
        if !self.take_outputs(k, out) {
            return;
        }
        if let Err(e) = r {
            self.failure = Some(e);
            return;
        }
        if let Err(e) = self.check_commit(k) {
            self.failure = Some(e);
            return;
        }
        if let Err(e) = self.maybe_snapshot(k) {
            self.failure = Some(e);
        }
    }

    /// Ends the snapshot transfers due now: the file arrives if the link and
    /// the receiver are up (the receiver then steps `InstallSnapshot`), and
    /// the sender learns whether it did.
    fn end_transfers(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.transfers)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.transfers = later;
        for (_, install, snap) in due {
            let (from, to) = (install.from, install.to);
            let Body::InstallSnapshot { index, .. } = install.body else {
                continue;
            };
            let arrived = self.link_up(from, to) && self.is_up(to);
            if arrived {
                self.snapshot_payloads.insert((from, to, index), snap);
                self.deliver(install);
                if self.failure.is_some() {
                    return;
                }
            }
            let k = (from.0 - 1) as usize;
            if let Some(r) = self.nodes[k].raft.as_mut() {
                r.report_snapshot(to, arrived.then_some(index));
                self.drive(k);
                if self.failure.is_some() {
                    return;
                }
            }
        }
    }

    /// Checks what node `k` committed since its last check, as soon as its
    /// core's commit index moves (on a step or an `advance`).
    fn check_commit(&mut self, k: usize) -> Result<(), String> {
        let Some(raft) = self.nodes[k].raft.as_ref() else {
            return Ok(());
        };
        let old = self.nodes[k].checked_commit.min(raft.commit_index());
        let new = raft.commit_index();
        if new <= old {
            return Ok(());
        }
        self.trace
            .push(self.now, TraceEvent::Commit(self.nodes[k].id, new));
        self.nodes[k].checked_commit = new;
        let raft = self.nodes[k].raft.as_ref().expect("node is up");
        let leaders: Vec<&Raft> = self
            .nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.is_leader())
            .collect();
        self.checker.on_commit(raft, old, &leaders)
    }

    /// Takes a snapshot and compacts the log when enough was applied.
    fn maybe_snapshot(&mut self, k: usize) -> Result<(), String> {
        let Some(every) = self.cfg.snapshot_every else {
            return Ok(());
        };
        let node = &mut self.nodes[k];
        let Some(raft) = node.raft.as_mut() else {
            return Ok(());
        };
        // As the node task does: the applier's own index (the pipeline's),
        // against the last snapshot this driver took or restored.
        if node.saving.is_some() {
            return Ok(()); // One snapshot written at a time.
        }
        let applied = node.pipeline.applied();
        let last = node.snapshot.as_ref().map_or(LogIndex(0), |s| s.index);
        if applied.0 < last.0 + every {
            return Ok(());
        }
        let Some(term) = raft.term_at(applied) else {
            // A snapshot from the leader is stepped but not yet restored:
            // the state machine is behind the log's start, and that
            // snapshot is the newer one anyway.
            return Ok(());
        };
        // The state saved as "everything up to `applied`" must hold exactly
        // that, no less and no more: the core's applied index is the
        // driver's word for what the state machine holds.
        let state = node.applied.clone();
        self.checker
            .check_snapshot_complete(node.id, applied, &state)?;
        if node
            .snapshot
            .as_ref()
            .is_some_and(|cur| (cur.index, cur.term) == (applied, term))
        {
            return Ok(()); // Never overwrite a published snapshot.
        }
        let snap = SimSnapshot {
            index: applied,
            term,
            state,
        };
        // The state is encoded here; the file is written off the node task
        // and reported later (at most one at a time), as in the node task.
        let delay = match self.cfg.faults.max_snapshot_save_ticks {
            0 => 0,
            max => self.rng.range(0, max + 1),
        };
        if delay > 0 {
            self.nodes[k].saving = Some((self.now + delay, snap));
            return Ok(());
        }
        self.snapshot_saved(k, snap);
        Ok(())
    }

    /// A snapshot file is durable: publish it (unless a newer one is) and
    /// let the log forget what it covers.
    fn snapshot_saved(&mut self, k: usize, snap: SimSnapshot) {
        let node = &mut self.nodes[k];
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        if node
            .snapshot
            .as_ref()
            .is_some_and(|cur| cur.index >= snap.index)
        {
            return; // A newer snapshot was installed meanwhile.
        }
        let (index, term) = (snap.index, snap.term);
        node.snapshot = Some(snap);
        self.stats.snapshots_taken += 1;
        if !raft.compact(index) {
            return;
        }
        // The power may fail while the compaction deletes covered segments.
        let f = self.cfg.faults.compaction_power_loss;
        let power_fails = f > 0.0 && self.rng.chance(f);
        let failed = self.nodes[k]
            .store
            .compact_and_sync(index, term, power_fails)
            .is_err();
        if power_fails && failed {
            self.stats.compaction_power_losses += 1;
            let id = self.nodes[k].id;
            self.trace.push(
                self.now,
                TraceEvent::Partition(format!("node {id}: power lost while compacting")),
            );
            self.crash_for_a_while(k);
        }
        // Any other failure (a disk that failed earlier) leaves the log
        // store holding more than the core: harmless (a restart loads it
        // and merges the snapshot).
    }

    // ----- whole runs --------------------------------------------------------

    /// Heals the world (every node up, every link whole, no more faults) and
    /// runs until every node has applied every acknowledged command, or fails
    /// after `max_ticks`.
    pub fn heal_and_converge(&mut self, max_ticks: u64) -> Result<(), Failure> {
        self.set_faults(Faults::none());
        self.cfg.propose = 0.0;
        self.cfg.read = 0.0;
        self.heal();
        for id in self.ids() {
            self.restart(id);
            let k = (id.0 - 1) as usize;
            self.drive(k);
        }
        // A fresh command (the marker) makes a leader commit everything
        // before it; once every node applied it, every node applied all.
        let mut marker: Option<(u64, NodeId, Term)> = None;
        let mut converged = false;
        for _ in 0..max_ticks {
            if let Some((cmd, node, term)) = marker {
                if let Some(&index) = self.acked.get(&cmd) {
                    if self.ids().iter().all(|id| self.applied_index(*id) >= index) {
                        converged = true;
                        break;
                    }
                } else if self
                    .raft(node)
                    .is_none_or(|r| !r.is_leader() || r.term() != term)
                {
                    // Its leader is gone before committing it; propose another.
                    marker = None;
                }
            }
            if marker.is_none()
                && let Some(leader) = self.leader()
            {
                let term = self.raft(leader).map(|r| r.term()).unwrap_or_default();
                let cmd = self.fresh_cmd();
                if self.propose_on(leader, cmd).is_some() {
                    marker = Some((cmd, leader, term));
                }
            }
            self.run_ticks(1)?;
        }
        if !converged {
            let mut state = String::new();
            for id in self.ids() {
                if let Some(r) = self.raft(id) {
                    let _ = write!(
                        state,
                        " [{id}: {:?} term {} commit {} applied {} last {}@{:?}{}]",
                        r.role(),
                        r.term(),
                        r.commit_index(),
                        r.applied_index(),
                        r.last_index(),
                        r.term_at(r.last_index()),
                        if r.is_repairing() { " repairing" } else { "" }
                    );
                }
            }
            return Err(self.fail(format!(
                "Liveness: the healed cluster did not converge within {max_ticks} ticks;{state}"
            )));
        }
        for (cmd, index) in self.acked.clone() {
            for id in self.ids() {
                let got = self.applied_at(id, index);
                if got != Some(cmd) {
                    let applied = self.applied_index(id);
                    let held = self.nodes[(id.0 - 1) as usize].applied.len();
                    return Err(self.fail(format!(
                        "Durability: command {cmd} was acknowledged at index {index} but node \
                         {id} applied {got:?} there (applied index {applied}, {held} entries \
                         applied since its last start)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// One complete fuzzing run: `ticks` ticks of faults and load, then heal
    /// and check that every acknowledged command is everywhere.
    pub fn run(seed: u64, ticks: u64, bug: Option<Bug>) -> Result<RunStats, Failure> {
        let mut cfg = SimConfig::for_seed(seed);
        cfg.bug = bug;
        let mut sim = Sim::new(seed, cfg);
        sim.run_ticks(ticks)?;
        // A slow configuration (one entry per append, one append in flight)
        // needs time in proportion to the log it must repair.
        let longest = sim
            .nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.last_index().0);
        let budget = 2_000 + 4 * longest.max().unwrap_or(0);
        sim.heal_and_converge(budget)?;
        let mut stats = sim.stats.clone();
        (stats.session_ops, stats.session_expired) = sim.checker.session_counts();
        Ok(stats)
    }
}

/// How many seeds and which: `HA_SIM_SEED=n` runs exactly seed `n`;
/// `HA_SIM_SEEDS=n` runs seeds `0..n`; otherwise `0..default`.
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("HA_SIM_SEED") {
        let seed = s.trim().parse().expect("HA_SIM_SEED must be an integer");
        return vec![seed];
    }
    let n = std::env::var("HA_SIM_SEEDS")
        .ok()
        .map(|s| s.trim().parse().expect("HA_SIM_SEEDS must be an integer"))
        .unwrap_or(default);
    (0..n).collect()
}

/// Runs `seeds` on all cores; returns the failure with the smallest seed, if
/// any, and the summed statistics. With `stop_at_first`, workers stop once
/// any seed fails (used when hunting a planted bug).
pub fn run_seeds(
    seeds: &[u64],
    ticks: u64,
    bug: Option<Bug>,
    stop_at_first: bool,
) -> (Option<Failure>, RunStats, usize) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let ran = AtomicUsize::new(0);
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let total: Mutex<RunStats> = Mutex::new(RunStats::default());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(seeds.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { return };
                    ran.fetch_add(1, Ordering::Relaxed);
                    match Sim::run(seed, ticks, bug) {
                        Ok(st) => {
                            let mut t = total.lock().expect("stats lock");
                            t.ticks += st.ticks;
                            t.delivered += st.delivered;
                            t.acknowledged += st.acknowledged;
                            t.reads += st.reads;
                            t.elections += st.elections;
                            t.crashes += st.crashes;
                            t.torn_tails_repaired += st.torn_tails_repaired;
                            t.media_damage += st.media_damage;
                            t.repairs += st.repairs;
                            t.disk_errors += st.disk_errors;
                            t.snapshots_taken += st.snapshots_taken;
                            t.snapshots_installed += st.snapshots_installed;
                            t.session_ops += st.session_ops;
                            t.session_expired += st.session_expired;
                            t.forged_commands += st.forged_commands;
                            t.compaction_power_losses += st.compaction_power_losses;
                        }
                        Err(f) => {
                            failures.lock().expect("failures lock").push(f);
                            if stop_at_first {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("failures lock");
    failures.sort_by_key(|f| f.seed);
    let first = failures.into_iter().next();
    (
        first,
        total.into_inner().expect("stats lock"),
        ran.into_inner(),
    )
}
