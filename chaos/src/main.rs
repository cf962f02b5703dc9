//! `ha-chaos`: seeded fault-injection runs over a real cluster (`ha-kv`, `ha-counter` or `ha-bank`),
//! each checked for linearizability; prints a summary table and exits 0
//! if every run passed, 1 if one failed, 2 on bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ha_chaos::{Fault, Options, WorkloadKind, netns};

/// Faults injected into a real ha-kv or ha-counter cluster while clients run; every
/// run's history is checked for linearizability.
#[derive(Parser, Debug)]
#[command(name = "ha-chaos")]
struct Args {
    /// The workload: `register` (get, put, cas and del on a few keys of
    /// ha-kv), `counter` (adds and reads of one ha-counter through its
    /// typed client: exactly-once commands) or `bank` (transfers between
    /// ha-bank's accounts and reads of every balance: the total never
    /// changes).
    #[arg(long, default_value = "register")]
    workload: String,
    /// Faults: `all`, `none`, or a comma list of kill, stop, restart-all,
    /// isolate, one-way, bridge, clock, replace, rejoin (partitions run in a network
    /// namespace the command makes with unshare, or are skipped where it
    /// cannot; clock, a cut-off node whose clock runs slow, is then only
    /// the slow clock).
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seconds of client load per run.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// The first run's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs, with seeds seed, seed+1, ...
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Keys the clients share.
    #[arg(long, default_value_t = 5)]
    keys: u64,
    /// The nodes' `--snapshot-every`.
    #[arg(long, default_value_t = 200)]
    snapshot_every: u64,
    /// Each client request's timeout.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// The service's binary (default: ha-kv, ha-counter or ha-bank, by
    /// workload, next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where run directories go (a failed run's is kept there).
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Keep every run's directory, not only failed ones.
    #[arg(long)]
    keep: bool,
    /// Plant a bug in every node (e.g. CommitOnLeaderAlone), to see the
    /// suite catch it; needs the service built with
    /// `--features ha-core/planted-bugs`.
    #[arg(long)]
    planted_bug: Option<String>,
}

/// What runs without a network namespace.
const SKIPPED: &str = "partitions skipped, and the clock fault runs without its cut";

fn main() -> ExitCode {
    let args = Args::parse();
    let usage = |msg: String| {
        eprintln!("ha-chaos: {msg}");
        ExitCode::from(2)
    };
    let workload = match WorkloadKind::parse(&args.workload) {
        Ok(w) => w,
        Err(e) => return usage(e),
    };
    let mut faults = match Fault::parse_list(&args.nemesis) {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    // Partitions run inside a network namespace of their own: run this
    // same command again inside one, or go on without them.
    if faults.iter().any(|f| f.wants_namespace()) && !netns::inside() {
        let again = std::env::current_exe()
            .map_err(|e| e.to_string())
            .and_then(|exe| netns::reexec(&exe, &std::env::args().skip(1).collect::<Vec<_>>()));
        match again.map(|mut cmd| cmd.status()) {
            Ok(Ok(status)) => return ExitCode::from(status.code().map_or(1, |c| c as u8)),
            Ok(Err(e)) => eprintln!("ha-chaos: {SKIPPED}: {e}"),
            Err(e) => eprintln!("ha-chaos: {SKIPPED}: {e}"),
        }
        faults.retain(|f| !f.is_partition());
        if faults.is_empty() {
            return usage(
                "every fault asked for was a partition, and partitions cannot run here".into(),
            );
        }
    }
    if args.nodes < 3 || args.clients == 0 || args.keys == 0 || args.secs == 0 || args.runs == 0 {
        return usage(
            "--nodes must be at least 3; --clients, --keys, --secs and --runs at least 1".into(),
        );
    }
    if args.keys > 1 << 20 {
        return usage("--keys must be at most 1048576".into());
    }
    let bin = match args.bin {
        Some(p) => p,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name(workload.binary()),
            Err(e) => {
                return usage(format!(
                    "cannot find this binary's directory ({e}); pass --bin"
                ));
            }
        },
    };
    let mut failed = 0;
    let mut table = Vec::new();
    for k in 0..args.runs {
        let opts = Options {
            workload,
            bin: bin.clone(),
            faults: faults.clone(),
            secs: args.secs,
            seed: args.seed.wrapping_add(k),
            nodes: args.nodes,
            clients: args.clients,
            keys: args.keys,
            snapshot_every: args.snapshot_every,
            timeout_ms: args.timeout_ms,
            out: args.out.clone(),
            keep: args.keep,
            planted_bug: args.planted_bug.clone(),
        };
        match ha_chaos::run(&opts) {
            Ok(report) => {
                eprintln!("{report}");
                failed += u64::from(!report.passed());
                table.push(report);
            }
            Err(e) => return usage(e),
        }
    }
    println!(
        "{:>6} {:>9} {:>9} {:>8} {:>12}  {:<36} verdict",
        "seed", "ops", "answered", "unknown", "checker (s)", "faults"
    );
    for r in &table {
        let faults: Vec<String> = r.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "{:>6} {:>9} {:>9} {:>8} {:>12.3}  {:<36} {}",
            r.seed,
            r.operations,
            r.outcomes.ok,
            r.outcomes.unknown,
            r.check_time.as_secs_f64(),
            faults.join(", "),
            match &r.verdict {
                Ok(()) => "ok".to_string(),
                Err(e) => format!(
                    "FAILED ({})",
                    r.kept
                        .as_ref()
                        .map_or(e.clone(), |d| d.display().to_string())
                ),
            }
        );
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
