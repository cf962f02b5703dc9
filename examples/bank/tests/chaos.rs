//! A short fixed-seed fault-injection run of the bank workload over this
//! crate's `ha-bank` binary: three real nodes, eight `ha-bank repl`
//! clients moving money between eight accounts and reading every
//! balance, SIGKILL, SIGSTOP, whole-cluster restarts and a node replaced,
//! snapshots every 50 entries; every read must add up to the opening
//! total and the history must be linearizable. Longer runs:
//! `ha-chaos --workload bank`.

use std::path::PathBuf;

use ha_chaos::{Fault, Options, WorkloadKind, run};

#[test]
fn transfers_under_kills_pauses_restarts_and_a_replacement_keep_the_total() {
    let opts = Options {
        workload: WorkloadKind::Bank,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_ha-bank")),
        faults: vec![Fault::Kill, Fault::Stop, Fault::RestartAll, Fault::Replace],
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
    assert!(
        report.outcomes.writes > 50,
        "too few transfers made:\n{report}"
    );
    assert!(
        report.faults.contains_key("replace"),
        "no replacement:\n{report}"
    );
}
