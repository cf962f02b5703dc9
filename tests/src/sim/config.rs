//! What a run is made of: its settings ([`SimConfig`], [`Faults`]), its
//! statistics ([`RunStats`]) and how it fails ([`Failure`]).

use super::*;

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
    /// Probability the leader of the highest term starts a leadership
    /// transfer this tick (to a random node, maybe itself or a stranger, or
    /// to the most up-to-date voter).
    pub transfer_leader: f64,
    /// Probability the leader of the highest term starts a random
    /// membership change this tick: a node (a voter, learner, spare or
    /// stranger) added as a learner, promoted or removed, never leaving
    /// fewer than three voters (so a damaged disk stays a minority).
    pub membership: f64,
    /// Probability a live node's process stalls this tick (a long garbage
    /// collection, the scheduler), the leader of the highest term half the
    /// time: for `1..=max_pause_ticks` ticks it neither ticks, nor takes
    /// in what arrives (it waits), nor completes a write, while its clock
    /// runs on; then, before anything else reaches it, a client asks it
    /// for a read.
    pub pause: f64,
    /// The longest stall, in ticks.
    pub max_pause_ticks: u64,
    /// How much each node's clock rate may differ from true time, in parts
    /// per million either way (drawn per node at the start); lease reads
    /// assume twice this as their drift bound.
    pub clock_rate_ppm: u32,
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
            transfer_leader: 0.0,
            membership: 0.0,
            pause: 0.0,
            max_pause_ticks: 0,
            clock_rate_ppm: 0,
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
    /// Number of nodes the cluster starts with (all voters).
    pub nodes: usize,
    /// Nodes started in no configuration, waiting to be added (ids after
    /// the first `nodes`).
    pub spares: usize,
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
pub(super) const SESSION_RETRY_TICKS: u64 = 12;

impl SimConfig {
    /// A quiet cluster of `nodes` with the given seed's core settings.
    pub fn quiet(nodes: usize) -> SimConfig {
        let mut raft = Config::new(NodeId(1));
        raft.election_timeout_min_ticks = 10;
        raft.election_timeout_max_ticks = 20;
        raft.heartbeat_interval_ticks = 2;
        SimConfig {
            nodes,
            spares: 0,
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
            transfer_leader: 0.0,
            membership: 0.0,
            pause: 0.0,
            max_pause_ticks: 0,
            clock_rate_ppm: 0,
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
        c.faults.transfer_leader = [0.0, 0.002, 0.01][rng.range(0, 3) as usize];
        // Drawn last, so the seeds without changes see the world they saw
        // before membership changes existed.
        c.faults.membership = [0.0, 0.01, 0.03][rng.range(0, 3) as usize];
        if c.faults.membership > 0.0 {
            c.spares = 2;
        }
        // Lease reads and process stalls, drawn after everything else.
        c.faults.pause = [0.0, 0.002, 0.01][rng.range(0, 3) as usize];
        c.faults.max_pause_ticks = rng.range(1, 80);
        if c.raft.check_quorum && rng.chance(0.5) {
            c.faults.clock_rate_ppm = [500, 5_000, 50_000][rng.range(0, 3) as usize];
            c.raft.lease = Some(ha_core::raft::LeaseConfig {
                tick_nanos: TICK_MS * 1_000_000,
                max_clock_drift_ppm: 2 * c.faults.clock_rate_ppm,
            });
        }
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
    /// Leadership transfers a leader started.
    pub transfers: u64,
    /// Membership changes a leader started (a configuration entry
    /// appended).
    pub conf_changes: u64,
    /// Reads a leader confirmed by its lease, without a round.
    pub lease_reads: u64,
}
