//! # ha-chaos
//!
//! Faults injected into real clusters (`ha-kv`, `ha-counter`, `ha-bank`)
//! while clients run, and each
//! run's history checked for linearizability: the shipped binaries, not
//! the simulator, under SIGKILL, SIGSTOP, whole-cluster restarts,
//! partitions, a cut-off node with a slow clock, and membership changes
//! (a node replaced, or removed and added back empty), with snapshots
//! taken and installed under those faults.
//!
//! Owns: the run ([`run`]: start a cluster, start clients, inject faults
//! on a seeded schedule, heal, make the workload's canary writes, restart
//! every node, read back, check), its [`Report`], the checker
//! ([`lincheck`]), the processes and faults ([`cluster`], [`netns`]) and
//! the workloads ([`workload`]: [`register`], [`counter`], [`bank`]).
//!
//! Invariants of a run:
//! - The seed fixes every choice (operations, faults, targets, durations);
//!   the timing of real processes does not repeat, so a seed names a
//!   schedule, not an interleaving.
//! - At most one node is faulty at a time (a minority of three), except
//!   for the whole-cluster restart, in which every node is killed at
//!   once; acknowledged writes must survive both. A membership fault's
//!   node is out of the configuration while it lasts, and is a voter
//!   again before the next fault and before the final phase.
//! - The run passes only if the history (including the reads after the
//!   final restart) is linearizable, no node exits on its own, and every
//!   client answer is one the service's contract allows (an answer that
//!   is neither done, nor certainly not applied, nor unknown fails it).
//! - A run's directory (node logs, data, `history.jsonl`) is kept when it
//!   fails, and deleted when it passes unless asked to keep it.

pub mod bank;
pub mod cluster;
pub mod counter;
pub mod lincheck;
pub mod netns;
pub mod register;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ha_core::rng::SplitMix64;

use cluster::Cluster;
use counter::CounterLoad;
use netns::Net;
use register::Register;
use workload::{Op, Outcomes, Repl, Workload};

pub use register::CANARY_KEYS;

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// get, put, cas and del on a few keys of `ha-kv` ([`register`]).
    Register,
    /// adds and reads of one counter through `ha-counter`'s typed client
    /// ([`counter`]): exactly-once commands.
    Counter,
    /// transfers between the accounts of `ha-bank` and reads of every
    /// balance ([`bank`]): the total never changes.
    Bank,
}

impl WorkloadKind {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Counter => "counter",
            WorkloadKind::Bank => "bank",
        }
    }

    /// The service binary it drives (next to `ha-chaos`, by default).
    pub fn binary(self) -> &'static str {
        match self {
            WorkloadKind::Register => "ha-kv",
            WorkloadKind::Counter => "ha-counter",
            WorkloadKind::Bank => "ha-bank",
        }
    }

    /// Parses `--workload`.
    pub fn parse(s: &str) -> Result<WorkloadKind, String> {
        [
            WorkloadKind::Register,
            WorkloadKind::Counter,
            WorkloadKind::Bank,
        ]
        .into_iter()
        .find(|w| w.name() == s)
        .ok_or_else(|| format!("unknown workload {s:?}: use register, counter or bank"))
    }
}

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL a node (the leader half the time), restart it later.
    Kill,
    /// SIGSTOP a node (the leader half the time), SIGCONT it later.
    Stop,
    /// SIGKILL every node at once, then start them all.
    RestartAll,
    /// Cut a node (the leader half the time) off from the others, both
    /// ways; with three nodes, the halves of a partition.
    Isolate,
    /// A node (the leader half the time) can hear the others but not
    /// reach them.
    OneWay,
    /// Two nodes cannot reach each other; the third reaches both.
    Bridge,
    /// The leader is cut off from the others both ways, as in
    /// [`Fault::Isolate`], and its clock runs at a tenth to a twentieth of
    /// real time ([`Cluster::slow_clock`]), for 2-5 s: a cut-off
    /// leader that is slow to notice it lost its followers, while clients
    /// still reach it and the others elect a new leader. Without a
    /// network namespace, only the clock.
    Clock,
    /// A node (the leader half the time: it hands over first) is removed
    /// from the configuration and killed; a new node with a new id takes
    /// its place 0.5-3 s later, started empty with `serve --join` and added
    /// (a learner that catches up, by snapshot if need be, then a voter).
    Replace,
    /// As [`Fault::Replace`], but the node comes back under its own id
    /// with its data directory wiped (it forgot every vote it gave).
    Rejoin,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 9] = [
        Fault::Kill,
        Fault::Stop,
        Fault::RestartAll,
        Fault::Isolate,
        Fault::OneWay,
        Fault::Bridge,
        Fault::Clock,
        Fault::Replace,
        Fault::Rejoin,
    ];

    /// The faults that are partitions (they need [`netns`]).
    pub fn is_partition(self) -> bool {
        matches!(self, Fault::Isolate | Fault::OneWay | Fault::Bridge)
    }

    /// The membership changes: a node taken out of the configuration and
    /// another (or itself, wiped) added in its place.
    pub fn is_membership(self) -> bool {
        matches!(self, Fault::Replace | Fault::Rejoin)
    }

    /// The faults that cut links where they can ([`netns`]): partitions,
    /// and the slow clock, which runs without its cut elsewhere.
    pub fn wants_namespace(self) -> bool {
        self.is_partition() || self == Fault::Clock
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::RestartAll => "restart-all",
            Fault::Isolate => "isolate",
            Fault::OneWay => "one-way",
            Fault::Bridge => "bridge",
            Fault::Clock => "clock",
            Fault::Replace => "replace",
            Fault::Rejoin => "rejoin",
        }
    }

    /// Parses `--nemesis`: `all`, `none`, or names separated by commas.
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        match s {
            "all" => return Ok(Fault::ALL.to_vec()),
            "none" => return Ok(Vec::new()),
            _ => {}
        }
        s.split(',')
            .map(|name| {
                Fault::ALL
                    .into_iter()
                    .find(|f| f.name() == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                        format!(
                            "unknown fault {name:?}: use all, none, or some of {}",
                            known.join(",")
                        )
                    })
            })
            .collect()
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// What the clients do.
    pub workload: WorkloadKind,
    /// The service's binary: `ha-kv` for the register workload,
    /// `ha-counter` for the counter, `ha-bank` for the bank.
    pub bin: PathBuf,
    /// Faults to choose from.
    pub faults: Vec<Fault>,
    /// How long clients run, before the final restart and reads.
    pub secs: u64,
    /// Seeds every choice.
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: u64,
    /// Keys the clients share.
    pub keys: u64,
    /// `--snapshot-every` for the nodes (small, so snapshots are taken
    /// and installed under faults).
    pub snapshot_every: u64,
    /// Each client request's `--timeout-ms`.
    pub timeout_ms: u64,
    /// Where run directories go.
    pub out: PathBuf,
    /// Keep the run directory even when the run passes.
    pub keep: bool,
    /// A bug for the nodes to plant (`HA_PLANTED_BUG`; honoured only by
    /// a service built with `ha-core/planted-bugs`, which then logs
    /// "planted bug active").
    pub planted_bug: Option<String>,
}

/// The figures of one run.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Operations in the history (answered or unknown).
    pub operations: usize,
    /// Client outcomes.
    pub outcomes: Outcomes,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// How long the check took.
    pub check_time: Duration,
    /// The checker's verdict, or the broken rule that failed the run
    /// before it.
    pub verdict: Result<(), String>,
    /// The kept run directory, if any.
    pub kept: Option<PathBuf>,
}

impl Report {
    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.verdict.is_ok()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "seed            {}", self.seed)?;
        writeln!(f, "operations      {}", self.operations)?;
        writeln!(f, "  answered      {}", self.outcomes.ok)?;
        writeln!(f, "    writes done {}", self.outcomes.writes)?;
        writeln!(f, "  unknown       {}", self.outcomes.unknown)?;
        writeln!(
            f,
            "  not applied   {} (left out)",
            self.outcomes.not_applied
        )?;
        let faults = if faults.is_empty() {
            "none".to_string()
        } else {
            faults.join(", ")
        };
        writeln!(f, "faults          {faults}")?;
        writeln!(f, "checker time    {:.3} s", self.check_time.as_secs_f64())?;
        match &self.verdict {
            Ok(()) => writeln!(f, "verdict         linearizable")?,
            Err(e) => writeln!(f, "verdict         FAILED: {e}")?,
        }
        if let Some(dir) = &self.kept {
            writeln!(f, "kept            {}", dir.display())?;
        }
        Ok(())
    }
}

/// A fault in progress, undone at `until`.
struct Active {
    fault: Fault,
    node: usize,
    until: Instant,
}

/// Runs one seeded run; `Err` only when the run could not be set up (no
/// binary, no directory), never for what the cluster did.
pub fn run(opts: &Options) -> Result<Report, String> {
    if netns::inside() {
        netns::end_with_parent();
    }
    let bad = |what: &str| Err(format!("bad options: {what}"));
    if !(3..=200).contains(&opts.nodes) {
        return bad("nodes must be 3 to 200");
    }
    if !(1..=1000).contains(&opts.clients) || !(1..=1 << 20).contains(&opts.keys) {
        return bad("clients must be 1 to 1000, keys 1 to 1048576");
    }
    if opts.secs == 0 || !(1..=600_000).contains(&opts.timeout_ms) {
        return bad("secs must be at least 1, timeout_ms 1 to 600000");
    }
    if !opts.bin.is_file() {
        let name = opts.workload.binary();
        return Err(format!(
            "no {name} binary at {} (build it with `cargo build --release -p {name}`, or pass --bin PATH)",
            opts.bin.display()
        ));
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let dir = opts.out.join(format!("run-{}-{stamp}", opts.seed));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (verdict, operations, outcomes, faults, check_time) = match opts.workload {
        WorkloadKind::Register => run_in(opts, &dir, Register { keys: opts.keys }),
        WorkloadKind::Counter => run_in(opts, &dir, CounterLoad),
        WorkloadKind::Bank => run_in(opts, &dir, bank::HA_BANK),
    };
    let kept = if verdict.is_err() || opts.keep {
        Some(dir)
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        None
    };
    Ok(Report {
        seed: opts.seed,
        operations,
        outcomes,
        faults,
        check_time,
        verdict,
        kept,
    })
}

/// A run's verdict, operations, outcomes, faults and check time.
type RunResult = (
    Result<(), String>,
    usize,
    Outcomes,
    BTreeMap<&'static str, u64>,
    Duration,
);

/// Runs workload `w`; its history goes to `dir/history.jsonl`.
fn run_in<W: Workload>(opts: &Options, dir: &std::path::Path, w: W) -> RunResult {
    let (verdict, history, outcomes, faults, check_time) = run_load(opts, dir, &w);
    if let Err(e) = workload::write_history::<W>(&dir.join("history.jsonl"), &history) {
        eprintln!("ha-chaos: writing the history: {e}");
    }
    (verdict, history.len(), outcomes, faults, check_time)
}

#[allow(clippy::type_complexity)]
fn run_load<W: Workload>(
    opts: &Options,
    dir: &std::path::Path,
    w: &W,
) -> (
    Result<(), String>,
    Vec<Op<W>>,
    Outcomes,
    BTreeMap<&'static str, u64>,
    Duration,
) {
    let mut faults = BTreeMap::new();
    let mut outcomes = Outcomes::default();
    let mut history = Vec::new();
    let fail = |e: String, h, o, f| (Err(e), h, o, f, Duration::ZERO);
    let flags = vec![
        "--snapshot-every".to_string(),
        opts.snapshot_every.to_string(),
    ];
    // Inside a namespace the network must be set up (loopback up) even
    // for a run without partitions: nodes listen on its addresses.
    let mut net = if opts.faults.iter().any(|f| f.is_partition()) || netns::inside() {
        match shared_net() {
            Ok(net) => Some(net),
            Err(e) => return fail(e, history, outcomes, faults),
        }
    } else {
        None
    };
    let env: Vec<(String, String)> = opts
        .planted_bug
        .iter()
        .map(|b| ("HA_PLANTED_BUG".to_string(), b.clone()))
        .collect();
    let mut cluster = match Cluster::start(&opts.bin, dir, opts.nodes, flags, env) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                format!("the cluster did not start: {e}"),
                history,
                outcomes,
                faults,
            );
        }
    };
    let start = Instant::now();
    let until = Duration::from_secs(opts.secs);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let mut broken: Option<String> = None;
    for id in 0..opts.clients {
        let repl = match client(opts, &cluster) {
            Ok(r) => r,
            Err(e) => {
                broken = Some(format!("client {id} did not start: {e}"));
                break;
            }
        };
        let pid = repl.pid();
        let client = w.client(id, opts.seed);
        let (w, stop) = (w.clone(), stop.clone());
        let worker = std::thread::spawn(move || {
            workload::client_loop(w, id, client, repl, start, until, &stop)
        });
        workers.push((worker, pid));
    }
    // The nemesis, on this thread: a fault every 1-4 s, each held for
    // 0.5-3 s (a slow clock 2-5 s), and none that would not be over while
    // the clients still run. One at a time, but for one: while a
    // membership change has its node out, half the time a second fault
    // (any but another change or a restart of all; a bridge only if three
    // nodes are left to make one) is laid over it, on another node, begun
    // within the change's first third and undone before the node comes
    // back in (the change is held long enough for it). Only membership
    // changes draw for overlays, so other runs keep their schedules.
    let mut rng = SplitMix64::new(opts.seed);
    let mut active: Option<Active> = None;
    let mut overlay: Option<Active> = None;
    let mut overlay_due: Option<(Instant, Overlay)> = None;
    let overlays: Vec<Fault> = opts
        .faults
        .iter()
        .copied()
        .filter(|f| !f.is_membership() && *f != Fault::RestartAll)
        .filter(|f| *f != Fault::Bridge || opts.nodes > 3)
        .collect();
    let slots: Vec<usize> = (1..=opts.nodes).collect();
    let mut next_fault = start + Duration::from_millis(rng.range(1000, 4000));
    while start.elapsed() < until && broken.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(crash) = cluster.crashed() {
            broken = Some(crash);
            break;
        }
        let now = Instant::now();
        let membership_over = active.as_ref().is_some_and(|a| now >= a.until);
        if let Some(o) = overlay.take_if(|o| membership_over || now >= o.until)
            && let Err(e) = undo(&o, &mut cluster, &mut net)
        {
            broken = Some(format!("undoing {:?} on slot {}: {e}", o.fault, o.node));
        }
        if membership_over {
            overlay_due = None;
        }
        if let Some((_, o)) = overlay_due.take_if(|(at, _)| now >= *at)
            && let Some(out) = active.as_ref().map(|a| a.node)
        {
            let live: Vec<usize> = slots.iter().copied().filter(|&k| k != out).collect();
            let launch = Launch {
                fault: o.fault,
                hold: o.hold,
                leader: o.coin,
                random: live[(o.pick % live.len() as u64) as usize],
                out: Some(out),
            };
            let (a, e) = launch.run(&live, &mut cluster, &mut net, &mut faults, start);
            broken = broken.or(e);
            overlay = Some(a);
        }
        if let Some(a) = active.take_if(|a| now >= a.until).as_ref() {
            if let Err(e) = undo(a, &mut cluster, &mut net) {
                broken = Some(format!("undoing {:?} on slot {}: {e}", a.fault, a.node));
            }
            next_fault = now + Duration::from_millis(rng.range(1000, 4000));
        }
        if active.is_none() && now >= next_fault && !opts.faults.is_empty() {
            let fault = opts.faults[rng.range(0, opts.faults.len() as u64) as usize];
            let random = rng.range(1, cluster.len() as u64 + 1) as usize;
            let coin = rng.range(0, 2) == 0;
            let mut hold = fault_hold(fault, &mut rng);
            let planned = if fault.is_membership() && !overlays.is_empty() {
                let lay = rng.range(0, 2) == 0;
                let kind = overlays[rng.range(0, overlays.len() as u64) as usize];
                let delay = Duration::from_millis(rng.range(0, hold.as_millis() as u64 / 3 + 1));
                let o = Overlay {
                    fault: kind,
                    hold: fault_hold(kind, &mut rng),
                    pick: rng.next_u64(),
                    coin: rng.range(0, 2) == 0,
                };
                if lay {
                    // Its start may wait for a tick and for the leader's
                    // name (twice a 500 ms lookup) before its own hold.
                    let lookup = if o.fault == Fault::Clock || o.coin {
                        Duration::from_millis(1100)
                    } else {
                        Duration::ZERO
                    };
                    hold = hold.max(delay + lookup + o.hold + Duration::from_millis(350));
                }
                lay.then_some((delay, o))
            } else {
                None
            };
            // A membership change takes a few seconds more to make and
            // undo; a fault still on when the clients stop is not tested.
            let extra = if fault.is_membership() {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            };
            if start.elapsed() + hold + extra >= until {
                next_fault = start + until;
                continue;
            }
            let launch = Launch {
                fault,
                hold,
                leader: coin,
                random,
                out: None,
            };
            let (a, e) = launch.run(&slots, &mut cluster, &mut net, &mut faults, start);
            broken = broken.or(e);
            overlay_due = planned.map(|(delay, o)| (Instant::now() + delay, o));
            active = Some(a);
        }
    }
    // A failure stops the clients early; either way each finishes its
    // last request within its timeout, and one that does not answer by
    // then broke the contract.
    stop.store(true, Ordering::Relaxed);
    let grace = Duration::from_millis(opts.timeout_ms.saturating_mul(3).saturating_add(5000));
    let waited = Instant::now();
    while workers.iter().any(|(w, _)| !w.is_finished()) && waited.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (w, pid) in &workers {
        // Only a client still running holds its repl (and so its pid).
        if !w.is_finished() {
            broken.get_or_insert_with(|| "a client did not answer within three timeouts".into());
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    for (w, _) in workers {
        match w.join() {
            Ok((h, o, error)) => {
                history.extend(h);
                outcomes += o;
                if let Some(e) = error {
                    broken.get_or_insert(e);
                }
            }
            Err(_) => {
                broken.get_or_insert_with(|| "a client thread panicked".into());
            }
        }
    }
    // Heal, write fresh keys, restart every node at once, and read every
    // key back: what was acknowledged must still be there.
    if let Some(Err(e)) = net.as_mut().map(Net::heal) {
        broken.get_or_insert(format!("healing the network: {e}"));
    }
    if broken.is_none()
        && let Err(e) = final_phase(opts, w, &mut cluster, start, &mut history, &mut outcomes)
    {
        broken = Some(e);
    }
    if let Some(crash) = cluster.crashed() {
        broken.get_or_insert(crash);
    }
    // A bug asked for but not taken up (a name the nodes do not know, a
    // binary built without the feature) would make a pass mean nothing.
    if let Some(bug) = &opts.planted_bug {
        for slot in 1..=opts.nodes {
            let name = format!("node-{slot}.log");
            let log = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            if !log.contains("planted bug active") {
                broken.get_or_insert(format!(
                    "the nodes did not plant {bug:?} (no \"planted bug active\" in {name})"
                ));
            }
        }
    }
    // Then every replica must catch up. A crash meanwhile is a crash; a
    // replica left behind is reported after the history's own failure,
    // if it has one: a bug that both loses writes and leaves a node
    // behind is named by what it lost.
    let converged = if broken.is_none() {
        cluster.converged(Duration::from_secs(30))
    } else {
        Ok(())
    };
    if let Some(crash) = cluster.crashed() {
        broken.get_or_insert(crash);
    }
    drop(cluster);
    if let Some(e) = broken {
        return fail(e, history, outcomes, faults);
    }
    let t = Instant::now();
    let verdict = match (w.check(&history), converged) {
        (Ok(()), converged) => converged,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(format!("{e}\n(and: {c})")),
    };
    (verdict, history, outcomes, faults, t.elapsed())
}

/// The namespace's network, set up once per process (every run of the
/// process shares it; each heals what it cut).
fn shared_net() -> Result<Net, String> {
    static SETUP: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    SETUP
        .get_or_init(|| Net::setup().map(drop).map_err(|e| e.to_string()))
        .clone()
        .map(|()| Net::default())
        .map_err(|e| format!("partitions need a network namespace ({e}); the ha-chaos command makes one with unshare"))
}

/// The faults-table entry counting faults laid over a membership change
/// (each also counted under its own name).
pub const OVERLAID: &str = "(during a change)";

/// A fault to lay over a membership change, drawn when the change is.
struct Overlay {
    fault: Fault,
    hold: Duration,
    /// Picks the node (among those left) when the leader is not taken.
    pick: u64,
    /// Whether to take the leader.
    coin: bool,
}

/// How long `fault` is held: 0.5-3 s, a slow clock 2-5 s (long enough for
/// a new leader, and clients that left the old one, while the old one
/// still believes it leads).
fn fault_hold(fault: Fault, rng: &mut SplitMix64) -> Duration {
    Duration::from_millis(if fault == Fault::Clock {
        rng.range(2000, 5000)
    } else {
        rng.range(500, 3000)
    })
}

/// A fault about to begin.
struct Launch {
    fault: Fault,
    hold: Duration,
    /// Whether to take the leader (a slow clock always does, when a node
    /// names one: it is a stale leader's fault).
    leader: bool,
    /// The slot taken otherwise.
    random: usize,
    /// The slot out of the configuration, if this fault is laid over a
    /// membership change (never the target).
    out: Option<usize>,
}

impl Launch {
    /// Begins the fault among the slots `live`, counts it in `faults` and
    /// logs it; the fault now active, and why it could not begin, if so.
    fn run(
        self,
        live: &[usize],
        cluster: &mut Cluster,
        net: &mut Option<Net>,
        faults: &mut BTreeMap<&'static str, u64>,
        start: Instant,
    ) -> (Active, Option<String>) {
        let Launch {
            fault,
            hold,
            random,
            out,
            ..
        } = self;
        let leader = (fault == Fault::Clock || self.leader)
            .then(|| cluster.leader(Duration::from_millis(500)))
            .flatten()
            .filter(|&l| Some(l) != out);
        let node = leader.unwrap_or(random);
        let id = cluster.node_id(node);
        let error = begin(fault, node, live, cluster, net)
            .err()
            .map(|e| format!("{fault:?} on node {id} (slot {node}): {e}"));
        *faults.entry(fault.name()).or_insert(0) += 1;
        if out.is_some() {
            *faults.entry(OVERLAID).or_insert(0) += 1;
        }
        eprintln!(
            "{:>8.3} s  {} node {id} (slot {node}{}) for {} ms{}",
            start.elapsed().as_secs_f64(),
            fault.name(),
            if leader.is_some() { ", the leader" } else { "" },
            hold.as_millis(),
            out.map_or(String::new(), |o| format!(", while slot {o} is out"))
        );
        let until = Instant::now() + hold;
        (Active { fault, node, until }, error)
    }
}

/// Begins `fault` on slot `node`; a partition cuts among the slots `live`
/// (`node` one of them).
fn begin(
    fault: Fault,
    node: usize,
    live: &[usize],
    cluster: &mut Cluster,
    net: &mut Option<Net>,
) -> std::io::Result<()> {
    match fault {
        Fault::Kill => cluster.kill(node),
        Fault::Stop => cluster.stop(node),
        Fault::RestartAll => cluster.restart_all(),
        Fault::Isolate | Fault::OneWay | Fault::Bridge => match net.as_mut() {
            Some(net) => partition(net, fault, node, live),
            None => Ok(()),
        },
        Fault::Clock => net
            .as_mut()
            .map_or(Ok(()), |net| partition(net, Fault::Isolate, node, live))
            .and_then(|()| cluster.slow_clock(node)),
        Fault::Replace => cluster.member_out(node, true),
        Fault::Rejoin => cluster.member_out(node, false),
    }
}

/// Undoes the fault `a`.
fn undo(a: &Active, cluster: &mut Cluster, net: &mut Option<Net>) -> std::io::Result<()> {
    match a.fault {
        Fault::Kill => cluster.restart(a.node),
        Fault::Stop => cluster.cont(a.node),
        Fault::RestartAll => Ok(()),
        Fault::Isolate | Fault::OneWay | Fault::Bridge => net.as_mut().map_or(Ok(()), Net::heal),
        Fault::Clock => cluster
            .cont(a.node)
            .and_then(|()| net.as_mut().map_or(Ok(()), Net::heal)),
        Fault::Replace | Fault::Rejoin => cluster.member_in(a.node),
    }
}

/// Cuts links for a partition `fault` around `node`, among the slots
/// `live` (a bridge needs two others).
fn partition(net: &mut Net, fault: Fault, node: usize, live: &[usize]) -> std::io::Result<()> {
    let others: Vec<usize> = live.iter().copied().filter(|&n| n != node).collect();
    match fault {
        Fault::Isolate => net.split(&[node], &others),
        Fault::OneWay => others.iter().try_for_each(|&o| net.cut(node, o)),
        // `node` is the bridge: the first two others cannot talk.
        _ => net.split(&others[..1], &others[1..2]),
    }
}

/// A new `repl` client (of the service's binary) of `cluster`.
fn client(opts: &Options, cluster: &Cluster) -> std::io::Result<Repl> {
    Repl::start(
        &opts.bin,
        &cluster.cluster_arg(),
        &cluster.tls_dir(),
        opts.timeout_ms,
    )
}

/// After the clients stop: heal every node, make the workload's canary
/// writes (each until one attempt is acknowledged), kill every node at
/// once and start them all, then make its final reads (each until
/// answered). Each step has a minute once the cluster is whole. All of it
/// goes into the history, except final reads with no answer (they say
/// nothing).
fn final_phase<W: Workload>(
    opts: &Options,
    w: &W,
    cluster: &mut Cluster,
    start: Instant,
    history: &mut Vec<Op<W>>,
    outcomes: &mut Outcomes,
) -> Result<(), String> {
    cluster
        .heal()
        .map_err(|e| format!("healing the nodes: {e}"))?;
    let mut repl =
        client(opts, cluster).map_err(|e| format!("the final client did not start: {e}"))?;
    let id = opts.clients;
    let mut reader = w.client(id, opts.seed);
    // Until one answer of `input(reader)` counts as `done`.
    let mut until_done = |reader: &mut W::Client,
                          repl: &mut Repl,
                          input: &mut dyn FnMut(&mut W::Client) -> workload::In<W>,
                          done: fn(&Outcomes) -> bool,
                          when: &str,
                          history: &mut Vec<Op<W>>|
     -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut counts = Outcomes::default();
            let op = input(reader);
            workload::run_op::<W>(id, reader, repl, op.clone(), start, history, &mut counts)?;
            *outcomes += counts;
            if done(&counts) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{op:?} {when}: not done within a minute (see the node logs)"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for k in 0..w.canaries() {
        let mut put = |c: &mut W::Client| w.canary(c, k);
        until_done(
            &mut reader,
            &mut repl,
            &mut put,
            |c| c.writes == 1,
            "before the final restart",
            history,
        )?;
    }
    drop(repl);
    cluster
        .restart_all()
        .map_err(|e| format!("the final restart: {e}"))?;
    let mut repl =
        client(opts, cluster).map_err(|e| format!("the final reader did not start: {e}"))?;
    for read in w.final_reads() {
        let before = history.len();
        let mut get = |_: &mut W::Client| read.clone();
        until_done(
            &mut reader,
            &mut repl,
            &mut get,
            |c| c.ok == 1,
            "after the final restart",
            history,
        )?;
        // Unknown reads say nothing (the checker drops them): keep only
        // the answered one.
        let answered = history.pop();
        history.truncate(before);
        history.extend(answered);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemesis_lists_parse_and_bad_names_are_refused() {
        assert_eq!(Fault::parse_list("all").unwrap(), Fault::ALL.to_vec());
        assert!(Fault::parse_list("none").unwrap().is_empty());
        assert_eq!(
            Fault::parse_list("stop,kill").unwrap(),
            vec![Fault::Stop, Fault::Kill]
        );
        let e = Fault::parse_list("kill,partition-everything").unwrap_err();
        assert!(
            e.contains("partition-everything") && e.contains("restart-all"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_binary_is_a_clear_error_not_a_failed_run() {
        let out = std::env::temp_dir().join("ha-chaos-no-binary");
        let opts = Options {
            workload: WorkloadKind::Register,
            bin: out.join("no-such-ha-kv"),
            faults: Vec::new(),
            secs: 1,
            seed: 1,
            nodes: 3,
            clients: 1,
            keys: 1,
            snapshot_every: 10,
            timeout_ms: 100,
            out,
            keep: false,
            planted_bug: None,
        };
        let e = run(&opts).unwrap_err();
        assert!(e.contains("no ha-kv binary") && e.contains("--bin"), "{e}");
    }
}
