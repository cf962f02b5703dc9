//! Black-box tests of the `ha-kv` command line: three `serve` processes on
//! loopback, every subcommand, the JSON lines and exit codes of the contract,
//! kill -9 of the leader, and a restart of the whole cluster from its data
//! directories with every acknowledged write still there.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ha-kv");

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Cluster {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    metrics_port: u16,
}

impl Cluster {
    fn tls(&self) -> PathBuf {
        self.dir.path().join("tls")
    }
    fn cluster_arg(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn peers_arg(&self) -> String {
        self.ports
            .iter()
            .enumerate()
            .map(|(k, p)| format!("{}=127.0.0.1:{p}", k + 1))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn start_node(&mut self, id: usize) {
        let peers = self.peers_arg();
        self.start_node_with(id, Some(&peers));
    }
    /// `serve` for node `id`, with `--peers` when given.
    fn serve_cmd(&self, id: usize, peers: Option<&str>) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--id", &id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", self.ports[id - 1])])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("data-{id}")))
            .arg("--tls-dir")
            .arg(self.tls());
        if let Some(p) = peers {
            cmd.args(["--peers", p]);
        }
        cmd
    }
    fn start_node_with(&mut self, id: usize, peers: Option<&str>) {
        let mut cmd = self.serve_cmd(id, peers);
        // Each node's log goes to a file, appended across restarts, so a
        // failing test can show what the node said.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("open the node's log file");
        cmd.stdout(Stdio::null()).stderr(log);
        if id == 1 {
            // A bare port: the metrics listener binds loopback.
            cmd.args(["--metrics", &self.metrics_port.to_string()]);
        }
        self.children[id - 1] = Some(cmd.spawn().expect("spawn ha-kv serve"));
    }
    fn log_path(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }
    /// What node `id` wrote to its log so far (every run of it).
    fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }
    /// SIGSTOP, wait until every thread of the process is stopped (a
    /// write in progress completes first: only a fatal signal cuts one
    /// short), then SIGKILL. Linux: it reads `/proc`.
    #[cfg(target_os = "linux")]
    fn stop_and_kill9(&mut self, id: usize) {
        let pid = self.children[id - 1].as_ref().expect("running").id();
        // The shell's own `kill`: no procps needed.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -STOP {pid}")])
            .status()
            .expect("run sh");
        assert!(ok.success(), "kill -STOP {pid}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let stopped = || -> bool {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.filter_map(Result::ok).all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the command name's closing parenthesis.
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                state.starts_with('T') || state.is_empty()
            })
        };
        while !stopped() {
            assert!(Instant::now() < deadline, "node {id} never stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill9(id);
    }
    fn kill9(&mut self, id: usize) {
        if let Some(mut c) = self.children[id - 1].take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
    }
    fn client(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--cluster", &self.cluster_arg()])
            .arg("--tls-dir")
            .arg(self.tls())
            .output()
            .expect("run ha-kv")
    }
    /// Status lines of every reachable node.
    fn status(&self) -> Vec<Value> {
        let out = self.client(&["status", "--timeout-ms", "1000"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON status line"))
            .collect()
    }
    fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(l) = self.status().iter().find(|s| s["role"] == "leader") {
                return l["id"].as_u64().unwrap() as usize;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader within 20 s");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.children.len() {
            self.kill9(id);
        }
    }
}

fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["certs", "--nodes", "1,2,3", "--dir"])
        .arg(dir.path().join("tls"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["ok"], true);
    let mut c = Cluster {
        dir,
        ports: (0..3).map(|_| free_udp_port()).collect(),
        children: vec![None, None, None],
        metrics_port: free_tcp_port(),
    };
    for id in 1..=3 {
        c.start_node(id);
    }
    c
}

fn json_line(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one stdout line, got {text:?}");
    serde_json::from_str(lines[0]).expect("a JSON line")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code")
}

#[test]
fn every_subcommand_speaks_the_contract() {
    let mut c = start();
    let leader = c.wait_for_leader();

    // put / get / del / cas and their lines and codes.
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

    // status: one object per node, with availability accounting.
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
        assert!(s["availability"]["availability"].as_f64().is_some());
    }
    assert_eq!(st.iter().filter(|s| s["role"] == "leader").count(), 1);

    // repl: one line per command, in order, nothing else on stdout.
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

    // bench: the last stdout line is the summary.
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
        "errors",
    ] {
        assert!(last.get(f).is_some(), "summary lacks {f}");
    }

    // Prometheus metrics from node 1.
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

    // The panic policy and resume, as an operator types them.
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

    // Not yet supported: exit 2, one line.
    let out = Command::new(BIN).args(["member", "list"]).output().unwrap();
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not yet supported"));

    // kill -9 of the leader: writes continue, nothing acknowledged is lost.
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

fn http_get(port: u16, path: &str) -> String {
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

fn serve_args(dir: &Path, tls: &Path, listen: &str) -> Vec<String> {
    vec![
        "serve".into(),
        "--id".into(),
        "1".into(),
        "--listen".into(),
        listen.into(),
        "--peers".into(),
        format!("1={listen}"),
        "--data-dir".into(),
        dir.display().to_string(),
        "--tls-dir".into(),
        tls.display().to_string(),
    ]
}

fn fails_with_one_line(args: &[String], expect: &str) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{args:?}: {err}");
    assert!(err.contains(expect), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn operator_mistakes_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let other_tls = dir.path().join("other-tls");
    for d in [&tls, &other_tls] {
        let out = Command::new(BIN)
            .args(["certs", "--nodes", "1"])
            .arg("--dir")
            .arg(d)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    // Bad address.
    fails_with_one_line(&serve_args(&data, &tls, "not-an-address"), "--listen");
    // Unreadable certificates.
    fails_with_one_line(
        &serve_args(&data, &dir.path().join("nope"), &listen),
        "--tls-dir",
    );
    // Port in use.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    fails_with_one_line(&serve_args(&data, &tls, &busy), "cannot listen");
    // Bad peer list and ids.
    let mut a = serve_args(&data, &tls, &listen);
    a[6] = "x=127.0.0.1:1".into();
    fails_with_one_line(&a, "--peers");
    // A data directory of another cluster: first use it with one CA, then
    // start with another.
    let mut first = Command::new(BIN)
        .args(serve_args(&data, &tls, &listen))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    first.kill().unwrap();
    first.wait().unwrap();
    fails_with_one_line(
        &serve_args(&data, &other_tls, &listen),
        "belongs to cluster",
    );
    // An initialized data directory that lost its log (and with it the
    // node's term and vote) is refused, naming the path, not started afresh.
    let wal = data.join("wal");
    assert!(wal.is_dir());
    std::fs::remove_dir_all(&wal).unwrap();
    fails_with_one_line(
        &serve_args(&data, &tls, &listen),
        &format!("write-ahead log directory {} is missing", wal.display()),
    );
    assert!(!wal.exists(), "nothing recreated");
    // Not yet supported options.
    let mut j = serve_args(&data, &tls, &listen);
    j.push("--join".into());
    fails_with_one_line(&j, "not yet supported");
    // A client without certificates.
    let out = Command::new(BIN)
        .args(["get", "k", "--cluster", &listen, "--tls-dir"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    // Usage errors from the parser.
    let out = Command::new(BIN)
        .args(["put", "only-a-key"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
}

#[test]
fn a_restart_with_other_peers_exits_2_naming_the_stored_voters() {
    let mut c = start();
    c.wait_for_leader();
    let stored = c.peers_arg();
    // Node 1 restarted with only itself as voter would elect itself and
    // acknowledge writes alone: refused, naming the stored voters.
    c.kill9(1);
    let alone = format!("1=127.0.0.1:{}", c.ports[0]);
    let out = c.serve_cmd(1, Some(&alone)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("started with voters {stored}")) && err.contains("--peers"),
        "{err}"
    );
    // More voters than stored: refused too.
    let more = format!("{stored},4=127.0.0.1:{}", free_udp_port());
    let out = c.serve_cmd(1, Some(&more)).output().unwrap();
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    // Without --peers the stored voters are used; the node rejoins.
    c.start_node_with(1, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = c.status();
        if let Some(one) = st.iter().find(|s| s["id"] == 1) {
            assert_eq!(one["voters"], serde_json::json!([1, 2, 3]));
            if one["leader"].is_u64() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "node 1 did not rejoin: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c.client(&["put", "after", "restart"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    // A new data directory needs --peers.
    let out = Command::new(BIN)
        .args(["serve", "--id", "1", "--listen"])
        .arg(format!("127.0.0.1:{}", free_udp_port()))
        .arg("--data-dir")
        .arg(c.dir.path().join("data-new"))
        .arg("--tls-dir")
        .arg(c.tls())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert!(err.contains("--peers: required"), "{err}");
}

fn certs(dir: &Path, nodes: &str) -> Output {
    Command::new(BIN)
        .args(["certs", "--nodes", nodes, "--dir"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn certs_never_replace_the_cluster_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    assert_eq!(code(&certs(&tls, "1,2")), 0);
    let ca_pem = std::fs::read(tls.join("ca.pem")).unwrap();
    let ca_key = std::fs::read(tls.join("ca.key")).unwrap();
    // The CA key kept offline, as advised: nothing to issue is fine.
    std::fs::remove_file(tls.join("ca.key")).unwrap();
    let out = certs(&tls, "1,2");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    // A new node needs the CA key back; no new CA is made.
    let out = certs(&tls, "1,2,3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("bring ca.key back"), "{err}");
    assert!(!tls.join("ca.key").exists() && !tls.join("node-3.pem").exists());
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), ca_pem);
    // Only the key: refused as well.
    std::fs::write(tls.join("ca.key"), &ca_key).unwrap();
    std::fs::remove_file(tls.join("ca.pem")).unwrap();
    let out = certs(&tls, "1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("restore ca.pem"), "{err}");
    // Both back: node 3 is issued by the same CA, with a private key.
    std::fs::write(tls.join("ca.pem"), &ca_pem).unwrap();
    assert_eq!(code(&certs(&tls, "3")), 0);
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), ca_pem);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = tls.join("node-3.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A key others may read is warned about.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = certs(&tls, "3");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), 0, "{err}");
        assert!(
            err.contains("warning") && err.contains("node-3.key"),
            "{err}"
        );
    }
}

/// A replicated type that is not `Kv`, for `ha-kv status` against a cluster
/// of another type.
mod tally {
    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    /// A count.
    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Tally {
        n: u64,
    }

    #[replicated]
    impl Tally {
        /// Adds one.
        pub fn bump(&mut self) -> u64 {
            self.n += 1;
            self.n
        }
    }
}

/// The README says `ha-kv status` works for a cluster of any replicated
/// type: the status request carries no schema.
#[test]
fn status_reports_the_nodes_of_a_cluster_of_another_type() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt
        .block_on(ha_quic::LocalCluster::<tally::Tally>::start(3))
        .unwrap();
    let client = {
        let _in_runtime = rt.enter();
        cluster.client()
    };
    assert_eq!(rt.block_on(client.bump()).unwrap(), 1);
    let addrs: Vec<String> = cluster
        .node_ids()
        .iter()
        .map(|id| cluster.addr(*id).unwrap().to_string())
        .collect();
    let out = Command::new(BIN)
        .args([
            "status",
            "--timeout-ms",
            "2000",
            "--cluster",
            &addrs.join(","),
        ])
        .arg("--tls-dir")
        .arg(cluster.tls_dir())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON status line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let leaders: Vec<&Value> = lines.iter().filter(|s| s["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{lines:?}");
    // The registration and the command are committed.
    assert!(leaders[0]["commit_index"].as_u64() >= Some(3), "{lines:?}");
    let mut ids: Vec<u64> = lines.iter().map(|s| s["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
    rt.block_on(cluster.shutdown());
}

/// Offset of the last write-ahead log batch start record in a segment's
/// bytes: a record of length 25 (4 bytes), a CRC (4), kind 1, and its own
/// offset as its index (the version 2 format, docs/storage-format.md).
#[cfg(target_os = "linux")]
fn last_batch_start(seg: &[u8]) -> Option<usize> {
    (0..seg.len().saturating_sub(33)).rev().find(|&p| {
        seg[p..p + 4] == 25u32.to_le_bytes()
            && seg[p + 8] == 1
            && seg[p + 9..p + 17] == (p as u64).to_le_bytes()
    })
}

/// Issue: storage that never forgets an acknowledged batch. A bit flipped
/// in the last synced batch of one node's log (damage, not a torn write):
/// the node restarts, moves the damaged part aside, repairs from its peers
/// without voting meanwhile, and serves again; once it reports itself whole
/// the other follower can go and the cluster still commits, with every
/// acknowledged write there.
#[test]
#[cfg(target_os = "linux")]
fn a_node_with_a_damaged_log_repairs_from_its_peers_and_nothing_is_lost() {
    let mut c = start();
    let leader = c.wait_for_leader();
    for k in 0..20 {
        let out = c.client(&["put", &format!("k{k}"), &format!("v{k}")]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    }
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != victim).unwrap();
    // Stop it first and wait until it is stopped: a write in progress
    // finishes (a SIGKILL alone can cut a write short, leaving a torn tail
    // whose damage would rightly not be damage). Then kill it: every batch
    // written is whole, and stays (no power is lost), though the last one
    // may not have been synced yet.
    c.stop_and_kill9(victim);
    // Flip a bit in the last batch of its newest segment, in the batch's
    // start record (its length field: the record's checksum then fails on
    // bytes that are not zeros, which is damage whatever follows). Not in
    // the batch's last bytes: a follower's batch often ends with a hard
    // state whose high bytes are zeros, and if those fill the file's last,
    // partial sector, the torn-write rule (a sector of zeros) reads the
    // damage as a torn tail (docs/storage-format.md).
    let wal = c.dir.path().join(format!("data-{victim}")).join("wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    let newest = segs.pop().expect("a segment");
    let mut bytes = std::fs::read(&newest).unwrap();
    let at = last_batch_start(&bytes).expect("a batch in the newest segment") + 25;
    bytes[at] ^= 0x01;
    std::fs::write(&newest, &bytes).unwrap();
    c.start_node(victim);
    // It repairs: status says so until it holds the leader's log again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the damaged node never finished repairing; its log:\n{}",
            c.log(victim)
        );
        let st = c.status();
        let me = st.iter().find(|s| s["id"] == victim as u64);
        let lead = st.iter().find(|s| s["role"] == "leader");
        if let (Some(me), Some(lead)) = (me, lead)
            && me.get("repairing").is_none()
            && me["applied_index"].as_u64() >= lead["commit_index"].as_u64()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let aside = std::fs::read_dir(&wal)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .count();
    assert_eq!(
        aside,
        1,
        "the damaged segment is kept aside ({} bytes, bit flipped at {at}); its log:\n{}",
        bytes.len(),
        c.log(victim)
    );
    // The other follower goes: the leader and the repaired node commit.
    c.kill9(other);
    let out = c.client(&["put", "after", "repair"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    for k in 0..20 {
        let out = c.client(&["get", &format!("k{k}")]);
        assert_eq!(json_line(&out)["value"], format!("v{k}"), "k{k}");
    }
}
