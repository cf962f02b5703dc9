//! Short fixed-seed fault-injection runs of `ha-chaos` over this crate's
//! `ha-kv` binary: three real nodes, eight `ha-kv repl` clients, SIGKILL,
//! SIGSTOP, whole-cluster restarts and partitions (in a network namespace
//! the test makes), snapshots every 50 entries, and the history checked
//! for linearizability. Longer runs: `ha-chaos --help`.

use std::path::PathBuf;

use ha_chaos::{Fault, Options, netns, run};

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

const PARTITIONS: &str = "partitions_in_a_network_namespace_lose_nothing";

#[test]
fn partitions_in_a_network_namespace_lose_nothing() {
    if !netns::inside() {
        // Run this test again inside a network namespace of its own; it
        // leaves its report in `mark` only if its run passed.
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mark = dir.path().join("report");
        let exe = std::env::current_exe().expect("this test's binary");
        let args = [PARTITIONS, "--exact", "--nocapture"].map(String::from);
        let mut cmd = match netns::reexec(&exe, &args) {
            Ok(cmd) => cmd,
            Err(why) => {
                eprintln!("skipped: partitions need a network namespace here: {why}");
                return;
            }
        };
        let status = cmd
            .env("HA_CHAOS_MARK", &mark)
            .status()
            .expect("the test runs again");
        assert!(
            status.success(),
            "the run inside the namespace failed ({status})"
        );
        let report = std::fs::read_to_string(&mark).expect("the inner run left its report");
        assert!(report.contains("linearizable"), "{report}");
        return;
    }
    let out = tempfile::tempdir().expect("a temporary directory");
    let faults = vec![Fault::Isolate, Fault::OneWay, Fault::Bridge, Fault::Kill];
    let report = run(&options(11, faults, 1000, out.path().into())).expect("the run starts");
    eprintln!("{report}");
    assert!(report.passed(), "seed 11 failed:\n{report}");
    let partitions: u64 = ["isolate", "one-way", "bridge"]
        .iter()
        .filter_map(|k| report.faults.get(k))
        .sum();
    assert!(partitions >= 2, "too few partitions:\n{report}");
    assert!(
        report.outcomes.ok > 100,
        "too few operations answered:\n{report}"
    );
    let mark = std::env::var_os("HA_CHAOS_MARK").expect("set by the outer run");
    std::fs::write(mark, report.to_string()).expect("the report is written");
}
