//! Short fixed-seed fault-injection runs of `ha-chaos` over this crate's
//! `ha-kv` binary: three real nodes, eight `ha-kv repl` clients, SIGKILL,
//! SIGSTOP and whole-cluster restarts, snapshots every 50 entries, and the
//! history checked for linearizability. Longer runs: `ha-chaos --help`.

use std::path::PathBuf;

use ha_chaos::{Fault, Options, run};

fn options(seed: u64, faults: Vec<Fault>, timeout_ms: u64, out: PathBuf) -> Options {
    Options {
        ha_kv: PathBuf::from(env!("CARGO_BIN_EXE_ha-kv")),
        faults,
        secs: 15,
        seed,
        nodes: 3,
        clients: 8,
        keys: 5,
        snapshot_every: 50,
        timeout_ms,
        out,
        keep: false,
    }
}

#[test]
fn every_fault_with_patient_clients_loses_nothing() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let report =
        run(&options(1, Fault::ALL.to_vec(), 2000, out.path().into())).expect("the run starts");
    eprintln!("{report}");
    assert!(report.passed(), "seed 1 failed:\n{report}");
    assert!(
        report.faults.values().sum::<u64>() >= 2,
        "too few faults injected:\n{report}"
    );
    assert!(
        report.outcomes.ok > 100,
        "too few operations answered:\n{report}"
    );
}

#[test]
fn kills_and_pauses_with_impatient_clients_leave_unknown_outcomes_that_check() {
    // Clients give up after 150 ms, so a fault on the leader leaves
    // requests whose outcome is unknown; the checker must place them.
    let out = tempfile::tempdir().expect("a temporary directory");
    let report = run(&options(
        2,
        vec![Fault::Kill, Fault::Stop],
        150,
        out.path().into(),
    ))
    .expect("the run starts");
    eprintln!("{report}");
    assert!(report.passed(), "seed 2 failed:\n{report}");
    assert!(
        report.faults.values().sum::<u64>() >= 2,
        "too few faults injected:\n{report}"
    );
    assert!(
        report.outcomes.ok > 100,
        "too few operations answered:\n{report}"
    );
}
