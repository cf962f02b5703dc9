//! A short fixed-seed fault-injection run of the counter workload over
//! this crate's `ha-counter` binary: three real nodes, eight
//! `ha-counter repl` clients adding to one counter through the typed
//! client (every add answers the new value, so an add applied twice or
//! lost shows), SIGKILL, SIGSTOP, whole-cluster restarts and a node
//! rejoining empty, snapshots every 50 entries, and the history checked
//! for linearizability. Longer runs: `ha-chaos --workload counter`.

use std::path::PathBuf;

use ha_chaos::{Fault, Options, WorkloadKind, run};

fn options(seed: u64, faults: Vec<Fault>, timeout_ms: u64) -> Options {
    Options {
        workload: WorkloadKind::Counter,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_ha-counter")),
        faults,
        secs: 15,
        seed,
        nodes: 3,
        clients: 8,
        keys: 1,
        snapshot_every: 50,
        timeout_ms,
        out: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos"),
        keep: false,
        planted_bug: None,
    }
}

#[test]
fn adds_under_kills_pauses_restarts_and_a_rejoin_apply_exactly_once() {
    let faults = vec![Fault::Kill, Fault::Stop, Fault::RestartAll, Fault::Rejoin];
    let report = run(&options(8, faults, 1000)).expect("the run starts");
    eprintln!("{report}");
    assert!(report.passed(), "seed 8 failed:\n{report}");
    let faults: u64 = report.faults.values().sum();
    assert!(faults >= 2, "too few faults injected:\n{report}");
    assert!(report.outcomes.writes > 50, "too few adds done:\n{report}");
    // Seed 8's schedule has a rejoin; every run ends with a whole-cluster
    // restart and a read of the counter.
    assert!(report.faults.contains_key("rejoin"), "no rejoin:\n{report}");
}

#[test]
fn a_session_table_that_applies_retries_again_is_caught() {
    // Planted: a retried add that already applied is applied again (the
    // session's kept answer ignored). Killing and pausing the leader makes
    // clients retry adds it may have committed; the counter then moves by
    // two for one add, which the answers show.
    let mut reports = Vec::new();
    for seed in 1..=6 {
        let mut opts = options(seed, vec![Fault::Kill, Fault::Stop], 2000);
        opts.planted_bug = Some("RetryAppliedTwice".into());
        let report = run(&opts).expect("the run starts");
        match &report.verdict {
            Err(e) if e.contains("not linearizable") => {
                eprintln!("caught RetryAppliedTwice with seed {seed}\n{report}");
                if let Some(dir) = &report.kept {
                    let _ = std::fs::remove_dir_all(dir);
                }
                return;
            }
            Err(e) => panic!("seed {seed} failed otherwise: {e}\n{report}"),
            Ok(()) => reports.push(report.to_string()),
        }
    }
    panic!(
        "the planted RetryAppliedTwice went unnoticed:\n{}",
        reports.join("\n")
    );
}
