//! Short fixed-seed fault-injection runs of `ha-chaos` over this crate's
//! `ha-kv` binary: three real nodes, eight `ha-kv repl` clients, SIGKILL,
//! SIGSTOP, whole-cluster restarts, partitions and a cut-off leader with a
//! slow clock (in a network namespace the test makes), nodes replaced and
//! rejoined, snapshots every 50 entries, and the history checked for
//! linearizability; and planted bugs that must be caught. Longer runs:
//! `ha-chaos --help`.

use std::path::PathBuf;

use ha_chaos::{Fault, Options, WorkloadKind, netns, run};

/// A run passed, with at least two faults and 50 writes acknowledged.
fn assert_passed(report: &ha_chaos::Report) {
    let seed = report.seed;
    assert!(report.passed(), "seed {seed} failed:\n{report}");
    let faults: u64 = report.faults.values().sum();
    assert!(faults >= 2, "too few faults injected:\n{report}");
    assert!(
        report.outcomes.writes > 50,
        "too few writes done:\n{report}"
    );
}

/// Where runs go: a failed run's directory stays there (node logs, data,
/// history); a passing run deletes its own.
fn runs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos")
}

fn options(seed: u64, faults: Vec<Fault>, timeout_ms: u64, out: PathBuf) -> Options {
    Options {
        workload: WorkloadKind::Register,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_ha-kv")),
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
        planted_bug: None,
    }
}

#[test]
fn every_fault_with_patient_clients_loses_nothing() {
    // Seed 8's schedule begins with a whole-cluster restart.
    let faults = vec![Fault::Kill, Fault::Stop, Fault::RestartAll];
    let report = run(&options(8, faults, 2000, runs_dir())).expect("the run starts");
    eprintln!("{report}");
    assert_passed(&report);
    assert!(
        report.faults.contains_key("restart-all"),
        "no whole-cluster restart:\n{report}"
    );
}

#[test]
fn kills_and_pauses_with_impatient_clients_leave_unknown_outcomes_that_check() {
    // Clients give up after 150 ms, so a fault on the leader leaves
    // requests whose outcome is unknown; the checker must place them.
    let out = runs_dir();
    let report = run(&options(
        2,
        vec![Fault::Kill, Fault::Stop],
        150,
        out.clone(),
    ))
    .expect("the run starts");
    eprintln!("{report}");
    assert_passed(&report);
}

#[test]
fn nodes_replaced_and_rejoined_under_kills_lose_nothing() {
    // A node removed and a new one added in its place, or the same id
    // added back with its data wiped (so it catches up by snapshot),
    // between kills and pauses, and a kill or pause of another node laid
    // over a change while its node is out.
    let faults = vec![Fault::Replace, Fault::Rejoin, Fault::Kill, Fault::Stop];
    let mut opts = options(5, faults, 1000, runs_dir());
    // A change takes seconds to make and undo: room for a few.
    opts.secs = 25;
    let report = run(&opts).expect("the run starts");
    eprintln!("{report}");
    assert_passed(&report);
    let changes: u64 = ["replace", "rejoin"]
        .iter()
        .filter_map(|k| report.faults.get(k))
        .sum();
    assert!(changes >= 2, "too few membership changes:\n{report}");
    // And a kill or pause of another node while one was out.
    assert!(
        report.faults.contains_key(ha_chaos::OVERLAID),
        "no fault during a membership change:\n{report}"
    );
}

/// Outside a network namespace: runs test `name` again inside one (or
/// says why it cannot and skips), requires it to pass and to have left a
/// report starting with one of `expect`, and returns `None`. Inside one:
/// the file the test must write its report to.
fn inside_namespace(name: &str, expect: &[&str]) -> Option<PathBuf> {
    if netns::inside() {
        return Some(
            std::env::var_os("HA_CHAOS_MARK")
                .expect("set by the outer run")
                .into(),
        );
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mark = dir.path().join("report");
    let exe = std::env::current_exe().expect("this test's binary");
    let args = [name, "--exact", "--nocapture"].map(String::from);
    let mut cmd = match netns::reexec(&exe, &args) {
        Ok(cmd) => cmd,
        Err(why) => {
            eprintln!("skipped: partitions need a network namespace here: {why}");
            return None;
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
    assert!(expect.iter().any(|e| report.starts_with(e)), "{report}");
    eprintln!("{report}");
    None
}

const PARTITIONS: &str = "partitions_in_a_network_namespace_lose_nothing";

#[test]
fn partitions_in_a_network_namespace_lose_nothing() {
    let Some(mark) = inside_namespace(PARTITIONS, &["passed"]) else {
        return;
    };
    let out = runs_dir();
    let faults = vec![Fault::Isolate, Fault::OneWay, Fault::Bridge, Fault::Kill];
    let report = run(&options(11, faults, 1000, out.clone())).expect("the run starts");
    eprintln!("{report}");
    assert_passed(&report);
    let partitions: u64 = ["isolate", "one-way", "bridge"]
        .iter()
        .filter_map(|k| report.faults.get(k))
        .sum();
    assert!(partitions >= 2, "too few partitions:\n{report}");
    std::fs::write(mark, format!("passed\n{report}")).expect("the report is written");
}

/// Runs `faults` with `bug` planted in every node (clients giving up
/// after `timeout_ms`), seeds `seeds` in turn, until one run is found not
/// linearizable, and reports "caught" (to the outer run's `mark`). The
/// test build of ha-kv plants bugs (this crate's dev-dependencies ask
/// for the feature); a binary that did not would fail the test.
fn planted_is_caught(
    mark: PathBuf,
    bug: &str,
    faults: Vec<Fault>,
    timeout_ms: u64,
    seeds: std::ops::RangeInclusive<u64>,
) {
    let mut reports = Vec::new();
    for seed in seeds {
        let mut opts = options(seed, faults.clone(), timeout_ms, runs_dir());
        opts.planted_bug = Some(bug.into());
        opts.keep = true;
        let report = run(&opts).expect("the run starts");
        let dir = report.kept.clone().expect("kept");
        let log = std::fs::read_to_string(dir.join("node-1.log")).unwrap_or_default();
        let unexpected = report
            .verdict
            .as_ref()
            .is_err_and(|e| !e.contains("not linearizable"));
        // A run that failed as the bug predicts, or passed, is evidence of
        // nothing; one that failed otherwise keeps its directory.
        if !unexpected {
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert!(
            log.contains("planted bug active"),
            "this ha-kv did not plant {bug}: {report}"
        );
        if let Err(e) = &report.verdict {
            assert!(
                e.contains("not linearizable"),
                "seed {seed} failed otherwise ({}): {e}",
                dir.display()
            );
            let caught = format!("caught {bug} with seed {seed}\n{report}");
            std::fs::write(&mark, caught).expect("the report is written");
            return;
        }
        reports.push(report.to_string());
    }
    panic!("the planted {bug} went unnoticed:\n{}", reports.join("\n"));
}

const PLANTED_COMMIT: &str = "a_leader_that_commits_alone_is_caught";

#[test]
fn a_leader_that_commits_alone_is_caught() {
    // Planted: a leader acknowledges a write once it is durable on the
    // leader alone. An isolated leader then acknowledges writes the
    // majority never sees; after the partition heals they are gone.
    if let Some(mark) = inside_namespace(PLANTED_COMMIT, &["caught"]) {
        planted_is_caught(
            mark,
            "CommitOnLeaderAlone",
            vec![Fault::Isolate],
            2000,
            21..=24,
        );
    }
}

const PLANTED_READ: &str = "a_leader_that_reads_without_a_quorum_is_caught";

#[test]
fn a_leader_that_reads_without_a_quorum_is_caught() {
    // Planted: a leader answers reads from its own state without a
    // heartbeat round proving it still leads (ReadIndex without its
    // quorum check). A leader cut off with a slow clock keeps believing
    // it leads while the others elect a new one; clients that gave up on
    // it (300 ms) write there, and one that comes back to the old leader
    // reads a value already overwritten.
    if let Some(mark) = inside_namespace(PLANTED_READ, &["caught"]) {
        planted_is_caught(mark, "ReadWithoutQuorum", vec![Fault::Clock], 300, 1..=6);
    }
}

const SLOW_CLOCK: &str = "a_cut_off_leader_with_a_slow_clock_loses_nothing";

#[test]
fn a_cut_off_leader_with_a_slow_clock_loses_nothing() {
    // The same fault as above without the bug: reads on the old leader
    // wait for a quorum it cannot reach, and give up.
    let Some(mark) = inside_namespace(SLOW_CLOCK, &["passed"]) else {
        return;
    };
    let report = run(&options(3, vec![Fault::Clock], 300, runs_dir())).expect("the run starts");
    eprintln!("{report}");
    assert_passed(&report);
    assert!(
        report.faults.get("clock").is_some_and(|&n| n >= 2),
        "too few slow clocks:\n{report}"
    );
    std::fs::write(mark, format!("passed\n{report}")).expect("the report is written");
}

#[test]
fn the_nemesis_mechanics_leave_every_node_running_and_a_voter() {
    use ha_chaos::cluster::{Cluster, NodeState, paused};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ha-kv"));
    let mut c = Cluster::start(&bin, dir.path(), 3, Vec::new(), Vec::new()).expect("it starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.leader(Duration::from_millis(500)).is_none() {
        assert!(Instant::now() < deadline, "no leader within 30 s");
    }
    // A slow clock keeps its node paused most of the time...
    c.slow_clock(2).expect("the slow clock starts");
    let pid = c.pid(2).expect("slot 2 runs");
    let samples: Vec<Option<bool>> = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            paused(pid)
        })
        .collect();
    let paused_n = samples.iter().filter(|p| **p == Some(true)).count();
    assert!(paused_n >= 25, "paused in {paused_n} of 50 samples");
    // ...and healing leaves it running for good.
    c.heal().expect("healed");
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(paused(pid), Some(false), "slot 2 left paused");
    }
    // A paused node gets no slow clock; a slow clock ends with a kill.
    c.stop(3).expect("stopped");
    assert!(c.slow_clock(3).is_err(), "a slow clock on a paused node");
    c.cont(3).expect("continued");
    c.slow_clock(3).expect("the slow clock starts");
    c.kill(3).expect("killed");
    assert_eq!(c.state(3), NodeState::Dead);
    c.restart(3).expect("restarted");
    // Replaced: a new id in the slot, removed until healed.
    c.member_out(1, true).expect("node 1 removed");
    assert_eq!(c.state(1), NodeState::Removed);
    assert_eq!(c.node_id(1), 4);
    assert!(c.pid(1).is_none());
    c.heal().expect("node 4 added");
    assert_eq!(c.state(1), NodeState::Running);
    // Rejoined: the same id, its old data moved aside; a whole-cluster
    // restart adds it back (the joined ones restart with --join).
    c.member_out(2, false).expect("node 2 removed");
    assert_eq!(c.node_id(2), 2);
    assert!(dir.path().join("data-2.removed-1").is_dir());
    c.restart_all()
        .expect("every node restarted, node 2 added back");
    assert!((1..=3).all(|s| c.state(s) == NodeState::Running));
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.leader(Duration::from_millis(500)).is_none() {
        assert!(Instant::now() < deadline, "no leader after the restart");
    }
    assert_eq!(c.crashed(), None);
    let log = std::fs::read_to_string(dir.path().join("node-1.log")).expect("slot 1's log");
    assert!(log.contains("node 4 starts in slot 1 (--join)"), "{log}");
    // Converged: every node at one applied commit index; not while a node
    // is paused (it cannot say so).
    c.converged(Duration::from_secs(30))
        .expect("the replicas converge");
    c.stop(3).expect("stopped");
    let e = c
        .converged(Duration::from_secs(1))
        .expect_err("a paused node cannot have converged");
    assert!(e.contains("did not converge"), "{e}");
    c.cont(3).expect("continued");
    c.converged(Duration::from_secs(30))
        .expect("the replicas converge again");
}

const CUT: &str = "a_cut_link_drops_packets_one_way_until_healed";

/// The partitions do what they say: inside a namespace, a datagram from
/// node 1's address to node 2's arrives; with the link 1 -> 2 cut it does
/// not, while 2 -> 1 and 1 -> 3 still do; healed, it arrives again.
#[test]
fn a_cut_link_drops_packets_one_way_until_healed() {
    use std::net::UdpSocket;
    use std::time::Duration;
    let Some(mark) = inside_namespace(CUT, &["passed"]) else {
        return;
    };
    let mut net = netns::Net::setup().expect("the namespace's network");
    let bind = |n: usize| UdpSocket::bind((netns::node_ip(n).as_str(), 0)).expect("bound");
    let (one, two, three) = (bind(1), bind(2), bind(3));
    // Whether a datagram sent from `a` reaches `b` within `wait` (each
    // probe unique, so a late one is never taken for the next).
    let mut probe = 0u8;
    let mut arrives = |a: &UdpSocket, b: &UdpSocket, wait: u64| {
        probe += 1;
        b.set_read_timeout(Some(Duration::from_millis(wait)))
            .expect("a timeout");
        a.send_to(&[probe], b.local_addr().unwrap()).expect("sent");
        let mut buf = [0u8; 8];
        loop {
            match b.recv(&mut buf) {
                Ok(1) if buf[0] == probe => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    };
    // Patient where it must arrive, brief where it must not.
    let (yes, no) = (2000, 300);
    assert!(arrives(&one, &two, yes), "1 -> 2 before any cut");
    assert!(arrives(&two, &one, yes), "2 -> 1 before any cut");
    net.cut(1, 2).expect("cut");
    assert!(!arrives(&one, &two, no), "1 -> 2 arrived through the cut");
    assert!(arrives(&two, &one, yes), "2 -> 1 lost: the cut is one way");
    assert!(
        arrives(&one, &three, yes),
        "1 -> 3 lost: the cut is too wide"
    );
    net.heal().expect("healed");
    assert!(net.links_cut().is_empty());
    assert!(arrives(&one, &two, yes), "1 -> 2 after the heal");
    std::fs::write(mark, "passed").expect("the report is written");
}
