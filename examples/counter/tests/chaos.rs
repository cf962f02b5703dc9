//! A short fixed-seed fault-injection run of the counter workload over
//! this crate's `ha-counter` binary: three real nodes, eight
//! `ha-counter repl` clients adding to one counter through the typed
//! client (every add answers the new value, so an add applied twice or
//! lost shows), SIGKILL, SIGSTOP, whole-cluster restarts and a node
//! rejoining empty, snapshots every 50 entries, and the history checked
//! for linearizability. Longer runs: `ha-chaos --workload counter`.

use std::path::PathBuf;

use ha_chaos::{Fault, Options, WorkloadKind, run};

#[test]
fn adds_under_kills_pauses_restarts_and_a_rejoin_apply_exactly_once() {
    let opts = Options {
        workload: WorkloadKind::Counter,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_ha-counter")),
        faults: vec![Fault::Kill, Fault::Stop, Fault::RestartAll, Fault::Rejoin],
        secs: 15,
        seed: 8,
        nodes: 3,
        clients: 8,
        keys: 1,
        snapshot_every: 50,
        timeout_ms: 1000,
        out: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos"),
        keep: false,
        planted_bug: None,
    };
    let report = run(&opts).expect("the run starts");
    eprintln!("{report}");
    assert!(report.passed(), "seed 8 failed:\n{report}");
    let faults: u64 = report.faults.values().sum();
    assert!(faults >= 2, "too few faults injected:\n{report}");
    assert!(report.outcomes.writes > 50, "too few adds done:\n{report}");
    // Seed 8's schedule has a rejoin; every run ends with a whole-cluster
    // restart and a read of the counter.
    assert!(report.faults.contains_key("rejoin"), "no rejoin:\n{report}");
}
