//! The core's scenarios as text: every file in `testdata/` is a script of
//! commands with the exact Readies and messages each produces (see
//! `ha_tests::interaction` for the commands). `REWRITE=1 cargo test -p
//! ha-tests --test interactions` rewrites the expected output; read the
//! diff before committing it. `RUN=name.txt` runs one file.

use ha_core::raft::PlantedBug;
use ha_tests::interaction::{Command, Env};

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

#[test]
fn interactions() {
    datadriven::walk(TESTDATA, |f| {
        let mut env = Env::default();
        f.run(|tc| env.run(tc));
    });
}

/// The runner's safety check is real: with the commit rule of §3.6.2
/// removed, the commands of the Figure 8 script (their expected output
/// aside) replace a committed entry, and the check fails.
#[test]
fn figure_8_fails_with_the_commit_rule_removed() {
    let text = std::fs::read_to_string(format!("{TESTDATA}/figure8.txt")).unwrap();
    let commands = Command::parse_file(&text);
    assert!(commands.len() > 40, "{} commands", commands.len());
    let text = failure_with_bug(commands, PlantedBug::CommitPreviousTermByCount);
    assert!(text.contains("committed entry 2@2 replaced"), "{text}");
}

/// And without the bug, the same commands run through.
#[test]
fn figure_8_commands_run_through_with_the_rule() {
    let text = std::fs::read_to_string(format!("{TESTDATA}/figure8.txt")).unwrap();
    let mut env = Env::default();
    for c in &Command::parse_file(&text) {
        env.command(c);
    }
}

/// A snapshot installed without discarding the conflicting log suffix, and
/// the kept suffix answered as matching the leader's: the snapshot script's
/// deposed leader keeps its own entries 5..7 of term 1 after the snapshot
/// 4@2, is counted as holding the leader's 5..7, and the next heartbeat's
/// commit index commits its 5@1 where 5@2 is committed. The check fails.
#[test]
fn snapshot_conflict_fails_with_the_suffix_kept() {
    let text = std::fs::read_to_string(format!("{TESTDATA}/snapshot_conflict.txt")).unwrap();
    let commands = Command::parse_file(&text);
    assert!(commands.len() > 20, "{} commands", commands.len());
    let text = failure_with_bug(commands, PlantedBug::SnapshotKeepsConflictingSuffix);
    assert!(
        text.contains("committed entry 5@2 replaced by 5@1 on node 1"),
        "{text}"
    );
}

/// Runs `commands` (their expected output aside) on nodes with `bug`
/// planted; returns the message of the check that failed. Fails the test if
/// none did.
fn failure_with_bug(commands: Vec<Command>, bug: PlantedBug) -> String {
    let run = std::panic::catch_unwind(move || {
        let mut env = Env::with_bug(bug);
        for c in &commands {
            env.command(c);
        }
    });
    let e = run.expect_err("the planted bug went unnoticed");
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
