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
mod clients;
mod config;
mod drive;
mod io;
mod membership;
mod network;
pub mod sessions;
mod store;
mod trace;

pub use config::*;
use io::*;
use store::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bytes::Bytes;
use ha_core::node::{NodeError, Pipeline, PipelineIo, Write, merge_snapshot};
use ha_core::raft::{Body, Config, InitialState, Membership, Message, Raft, RoleKind};
use ha_core::rng::SplitMix64;
use ha_core::storage::{LogStore, MemLogStore, SimFs, StoredState, Vfs, Wal, WalOptions};
use ha_core::types::{EntryPayload, LogIndex, NodeId, Term};

pub use checker::Checker;
pub use ha_core::raft::PlantedBug as Bug;
use trace::{Trace, TraceEvent};

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
    /// Each node's clock rate against true time, in parts per million.
    clock_rate_ppm: Vec<i64>,
    /// Stalled nodes, and the tick each stall ends.
    paused: BTreeMap<usize, u64>,
    /// Reads a client will ask of a node at a tick: `(tick, node)`.
    probe_reads: Vec<(u64, NodeId)>,
    /// The faults are over (see [`Sim::heal_and_converge`]): no targeted
    /// fault cuts a node off any more.
    converging: bool,
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
        Body::TimeoutNow { .. } => "timeout-now",
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
            clock_rate_ppm: Vec::new(),
            paused: BTreeMap::new(),
            probe_reads: Vec::new(),
            converging: false,
            next_op: 1,
            cfg,
        };
        for k in 0..sim.cfg.nodes + sim.cfg.spares {
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
                unwritten_hs: None,
                unsure: None,
            });
            sim.boot(k).expect("an empty store opens");
        }
        // Clocks and clients draw from their own generator, so runs without
        // them see the same world as before they existed.
        let mut side = SplitMix64::new(seed ^ 0x5E55_1045_C10C_5EED);
        let skew = sim.cfg.faults.clock_skew_ms;
        sim.clock_offset_ms = (0..sim.cfg.nodes + sim.cfg.spares)
            .map(|_| if skew > 0 { side.range(0, skew + 1) } else { 0 })
            .collect();
        sim.clients = (0..sim.cfg.session_clients)
            .map(|_| sessions::SessionClient {
                secret: side.next_u64(),
                ..Default::default()
            })
            .collect();
        let rate = i64::from(sim.cfg.faults.clock_rate_ppm);
        sim.clock_rate_ppm = (0..sim.cfg.nodes + sim.cfg.spares)
            .map(|_| {
                if rate > 0 {
                    side.range(0, 2 * rate as u64 + 1) as i64 - rate
                } else {
                    0
                }
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

    /// Node `k`'s monotonic clock in nanoseconds, running at its rate.
    fn clock_nanos(&self, k: usize) -> u64 {
        let rate = 1_000_000 + self.clock_rate_ppm.get(k).copied().unwrap_or(0);
        let true_nanos = u128::from(self.now) * u128::from(TICK_MS) * 1_000_000;
        u64::try_from(true_nanos * rate as u128 / 1_000_000).unwrap_or(u64::MAX)
    }

    /// Tells node `k`'s core its clock (lease reads run on it).
    fn sync_clock(&mut self, k: usize) {
        let now = self.clock_nanos(k);
        if let Some(r) = self.nodes[k].raft.as_mut() {
            r.set_clock(now);
        }
    }

    /// Whether node `k`'s process is stalled.
    fn is_paused(&self, k: usize) -> bool {
        self.paused.contains_key(&k)
    }

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

    /// The core of node `id`, if it is up (`None` for an id no node was
    /// started for).
    pub fn raft(&self, id: NodeId) -> Option<&Raft> {
        let k = usize::try_from(id.0.checked_sub(1)?).ok()?;
        self.nodes.get(k)?.raft.as_ref()
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

    /// Runs `n` ticks. Stops early (and returns the failure) if a property breaks.
    pub fn run_ticks(&mut self, n: u64) -> Result<(), Failure> {
        for _ in 0..n {
            let stepped = self.step_tick();
            self.note(stepped);
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
    /// Keeps the first failure of a run (later ones follow from it).
    fn note(&mut self, r: Result<(), String>) {
        if let Err(e) = r
            && self.failure.is_none()
        {
            self.failure = Some(e);
        }
    }

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

    /// Heals the world (every node up, every link whole, no more faults) and
    /// runs until every node has applied every acknowledged command, or fails
    /// after `max_ticks`.
    pub fn heal_and_converge(&mut self, max_ticks: u64) -> Result<(), Failure> {
        self.set_faults(Faults::none());
        self.converging = true;
        self.cfg.propose = 0.0;
        self.cfg.read = 0.0;
        self.heal();
        for id in self.ids() {
            self.restart(id);
            let k = (id.0 - 1) as usize;
            let driven = self.drive(k);
            self.note(driven);
        }
        // A fresh command (the marker) makes a leader commit everything
        // before it; once every node applied it, every node applied all.
        let mut marker: Option<(u64, NodeId, Term)> = None;
        let mut marker_at = 0;
        // A leader that never learns it was replaced (one removed from the
        // configuration, with CheckQuorum and PreVote off, is told by
        // nobody) never commits the marker: after a while, propose again.
        let patience = 8 * self.cfg.raft.election_timeout_max_ticks;
        let mut converged = false;
        for _ in 0..max_ticks {
            if let Some((cmd, node, term)) = marker {
                if let Some(&index) = self.acked.get(&cmd) {
                    if self
                        .members()
                        .iter()
                        .all(|id| self.applied_index(*id) >= index)
                    {
                        converged = true;
                        break;
                    }
                } else if self.now.saturating_sub(marker_at) > patience
                    || self
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
                    marker_at = self.now;
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
        // Every member of the final configuration holds every acknowledged
        // command (a removed node, or a spare never added, need not).
        let members = self.members();
        for (cmd, index) in self.acked.clone() {
            for id in members.iter().copied() {
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
                            t.transfers += st.transfers;
                            t.conf_changes += st.conf_changes;
                            t.lease_reads += st.lease_reads;
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
