//! Outcomes a client cannot be sure of, and a bench with no cluster to
//! reach.

use super::*;

#[test]
fn an_unknown_outcome_exits_3() {
    use std::io::{BufRead, BufReader, Write as _};
    let mut c = start();
    let leader = c.wait_for_leader();
    let leader_addr = format!("127.0.0.1:{}", c.ports[leader - 1]);
    // One client process, one session: the first write opens the session
    // and commits.
    let mut repl = Command::new(BIN)
        .args(["repl", "--timeout-ms", "1500", "--cluster", &leader_addr])
        .arg("--tls-dir")
        .arg(c.tls())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = repl.stdin.take().unwrap();
    let mut stdout = BufReader::new(repl.stdout.take().unwrap());
    let mut line = String::new();
    writeln!(stdin, "put a 1").unwrap();
    stdout.read_line(&mut line).unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["ok"], Value::Bool(true), "{line}");
    for id in (1..=3).filter(|i| *i != leader) {
        c.kill9(id);
    }
    // The leader takes the next write but cannot commit it: unknown.
    line.clear();
    writeln!(stdin, "put k v").unwrap();
    stdout.read_line(&mut line).unwrap();
    let second: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(second["ok"], Value::Null, "{line}");
    drop(stdin);
    let _ = repl.wait();
    // A one-shot write opens a session first; that cannot commit either, so
    // the write itself was never sent: certainly not applied, exit 1.
    let out = Command::new(BIN)
        .args(["put", "k", "v", "--timeout-ms", "1500"])
        .args(["--cluster", &leader_addr])
        .arg("--tls-dir")
        .arg(c.tls())
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(json_line(&out)["ok"], Value::Bool(false));
}

/// A bench against a cluster nobody serves gives up when no operation
/// succeeded within 10 s (three client timeouts at most): exit 1, the
/// summary still its last line, and a message that says why, instead of
/// waiting out a million timeouts.
#[test]
fn a_bench_against_no_cluster_gives_up_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    assert_eq!(code(&certs(&tls, "1,2,3")), 0);
    let nobody = format!("127.0.0.1:{}", free_udp_port());
    let mut bench = Command::new(BIN)
        .args(["bench", "--clients", "2", "--ops", "1000000"])
        .args(["--value-size", "8", "--timeout-ms", "300"])
        .args(["--cluster", &nobody])
        .arg("--tls-dir")
        .arg(&tls)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A bound on waiting, so a bench that never gives up fails this test
    // instead of hanging the suite (it gives up after 10 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while bench.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = bench.kill();
            panic!("the bench did not give up against an unreachable cluster");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = bench.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    let summary = json_line(&out);
    assert_eq!(
        summary["ok"],
        Value::Null,
        "a summary, not a result: {summary}"
    );
    let errors = summary["errors"].as_u64().unwrap();
    assert!(errors >= 2, "{summary}");
    assert!(summary["ops"].as_u64().unwrap() < 1_000_000, "{summary}");
    assert!(stderr.contains("gave up"), "{stderr}");
}
