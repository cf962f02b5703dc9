//! Every subcommand against a real three-process cluster speaks the
//! contract: its JSON lines, exit codes, status objects, the bench summary,
//! metrics, operator commands, and nothing acknowledged lost to kills.

use super::*;

#[test]
fn every_subcommand_speaks_the_contract() {
    let mut c = start();
    let leader = c.wait_for_leader();
    put_get_del_cas_answer_their_lines_and_codes(&c);
    status_prints_one_object_per_node(&c);
    repl_answers_one_line_per_command(&c);
    bench_ends_with_its_summary(&c);
    metrics_are_served(&c);
    operator_commands_answer(&c);
    nothing_acknowledged_is_lost_to_kills(&mut c, leader);
}

/// put / get / del / cas: their lines and exit codes.
pub(super) fn put_get_del_cas_answer_their_lines_and_codes(c: &Cluster) {
    let out = c.client(&["put", "greeting", "hello"]);
    assert_eq!(
        (code(&out), json_line(&out)),
        (0, serde_json::json!({"ok": true}))
    );
    let out = c.client(&["get", "greeting"]);
    assert_eq!(
        (code(&out), json_line(&out)),
        (0, serde_json::json!({"ok": true, "value": "hello"}))
    );
    let out = c.client(&["get", "nothing"]);
    assert_eq!(
        json_line(&out),
        serde_json::json!({"ok": true, "value": null})
    );
    let out = c.client(&["get", "greeting", "--stale"]);
    assert_eq!(code(&out), 0);
    let out = c.client(&["cas", "greeting", "wrong", "x"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        json_line(&out),
        serde_json::json!({"ok": false, "error": "mismatch", "value": "hello"})
    );
    let out = c.client(&["cas", "greeting", "hello", "world"]);
    assert_eq!(
        (code(&out), json_line(&out)),
        (0, serde_json::json!({"ok": true}))
    );
    let out = c.client(&["cas", "fresh", "--absent", "new"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = c.client(&["cas", "fresh", "--absent", "again"]);
    assert_eq!(json_line(&out)["value"], "new");
    let out = c.client(&["del", "fresh"]);
    assert_eq!(
        (code(&out), json_line(&out)),
        (0, serde_json::json!({"ok": true}))
    );
}

/// status: one object per node, with availability accounting.
pub(super) fn status_prints_one_object_per_node(c: &Cluster) {
    let st = c.status();
    assert_eq!(st.len(), 3);
    for s in &st {
        for field in [
            "id",
            "role",
            "term",
            "leader",
            "commit_index",
            "applied_index",
            "last_log_index",
            "snapshot_index",
            "voters",
            "learners",
            "availability",
        ] {
            assert!(s.get(field).is_some(), "status lacks {field}: {s}");
        }
        assert!(
            s.get("last_index").is_none(),
            "the contract says last_log_index: {s}"
        );
        assert_eq!(s["voters"], serde_json::json!([1, 2, 3]));
        let a = &s["availability"];
        assert!(a["availability"].as_f64().is_some(), "{s}");
        for field in ["planned_ms", "unplanned_ms", "handoffs", "uptime_ms"] {
            assert!(
                a[field].as_u64().is_some(),
                "availability lacks {field}: {s}"
            );
        }
        assert!(a["maintainability"].as_f64().is_some(), "{s}");
    }
    assert_eq!(st.iter().filter(|s| s["role"] == "leader").count(), 1);
}

/// repl: one line per command, in order, nothing else on stdout.
pub(super) fn repl_answers_one_line_per_command(c: &Cluster) {
    let mut repl = Command::new(BIN)
        .args(["repl", "--cluster", &c.cluster_arg()])
        .arg("--tls-dir")
        .arg(c.tls())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = repl.stdin.take().unwrap();
        writeln!(
            stdin,
            "put a 1\nget a\ncas a 1 2\ncas a 1 3\ndel a\nget a\nnonsense"
        )
        .unwrap();
    }
    let out = repl.wait_with_output().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert_eq!(lines[1], serde_json::json!({"ok": true, "value": "1"}));
    assert_eq!(lines[3]["error"], "mismatch");
    assert_eq!(lines[5], serde_json::json!({"ok": true, "value": null}));
    assert_eq!(lines[6]["error"], "usage");
}

/// bench: the last stdout line is the summary.
pub(super) fn bench_ends_with_its_summary(c: &Cluster) {
    let out = c.client(&[
        "bench",
        "--clients",
        "4",
        "--ops",
        "200",
        "--value-size",
        "64",
        "--read-ratio",
        "0.5",
        "--keys",
        "50",
    ]);
    assert_eq!(code(&out), 0);
    let last: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["ops"], 200);
    for f in [
        "secs",
        "ops_per_sec",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "errors",
    ] {
        assert!(last.get(f).is_some(), "summary lacks {f}");
    }
    let (p999, max) = (last["p999_ms"].as_f64(), last["max_ms"].as_f64());
    assert!(
        p999.is_some_and(|p| max.is_some_and(|m| m >= p)),
        "max below p999: {last}"
    );
}

/// Prometheus metrics from node 1.
pub(super) fn metrics_are_served(c: &Cluster) {
    let body = http_get(c.metrics_port, "/metrics");
    for m in [
        "ha_term ",
        "ha_commit_index ",
        "ha_role{role=\"leader\"}",
        "ha_fsync_latency_seconds_bucket",
        "ha_failovers_total",
        "ha_availability ",
        "ha_halted 0",
    ] {
        assert!(body.contains(m), "metrics lack {m}");
    }
}

/// The panic policy and resume, as an operator types them; `member list`
/// names every voter with its address.
pub(super) fn operator_commands_answer(c: &Cluster) {
    let out = c.client(&["panic-policy", "halt"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["panic_policy"], "halt");
    let out = c.client(&["resume", "--index", "5"]);
    assert_eq!(code(&out), 1, "not halted: not applied");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["message"].as_str().unwrap().contains("not halted"), "{v}");
    let out = c.client(&["panic-policy", "continue"]);
    assert_eq!(code(&out), 0);

    let out = c.client(&["member", "list"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let v = json_line(&out);
    assert_eq!(v["ok"], true);
    let want: Vec<Value> = (1..=3)
        .map(|id| serde_json::json!({"id": id, "addr": c.addr(id), "role": "voter"}))
        .collect();
    assert_eq!(v["members"], Value::Array(want), "{v}");
    assert!((1..=3).contains(&v["leader"].as_u64().unwrap()), "{v}");
    // A member's id of 0, or an address that is not HOST:PORT: bad usage.
    for args in [
        ["member", "add", "0", "127.0.0.1:1"],
        ["member", "add", "4", "no-port"],
    ] {
        let out = c.client(&args);
        assert_eq!(code(&out), 2, "{args:?}");
    }
}

/// kill -9 of the leader: writes continue; then the whole cluster dies at once and restarts from its data directories; nothing acknowledged is lost.
pub(super) fn nothing_acknowledged_is_lost_to_kills(c: &mut Cluster, leader: usize) {
    let mut acked = vec![("greeting".to_string(), "world".to_string())];
    for i in 0..20 {
        let out = c.client(&["put", &format!("k{i}"), &format!("v{i}")]);
        assert_eq!(code(&out), 0);
        acked.push((format!("k{i}"), format!("v{i}")));
    }
    c.kill9(leader);
    for i in 20..30 {
        let out = c.client(&["put", &format!("k{i}"), &format!("v{i}")]);
        assert_eq!(
            code(&out),
            0,
            "put after the leader died: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        acked.push((format!("k{i}"), format!("v{i}")));
    }
    c.start_node(leader);
    // The whole cluster dies at once and restarts from its data dirs.
    for id in 1..=3 {
        c.kill9(id);
    }
    for id in 1..=3 {
        c.start_node(id);
    }
    c.wait_for_leader();
    for (k, v) in &acked {
        let out = c.client(&["get", k]);
        assert_eq!(
            json_line(&out),
            serde_json::json!({"ok": true, "value": v}),
            "key {k}"
        );
    }
}

pub(super) fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut last = String::new();
    for _ in 0..20 {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(b) if b.starts_with("HTTP/1.0 200") || b.starts_with("HTTP/1.1 200") => return b,
            Ok(b) => last = b,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no metrics from port {port}: {last}");
}
