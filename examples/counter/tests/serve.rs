//! `ha-counter` as a real service, as its README shows it: certificates,
//! three `serve` processes on loopback, client commands, `status`, the
//! HTTP health endpoints, and kill -9 of the leader with every acknowledged
//! add still counted.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ha-counter");

/// `n` distinct free UDP ports and `n` free TCP ports, from the OS: every
/// probe socket is held until all are drawn, so none is drawn twice.
fn free_ports(n: usize) -> (Vec<u16>, Vec<u16>) {
    let udp: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let tcp: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    (
        udp.iter().map(|s| s.local_addr().unwrap().port()).collect(),
        tcp.iter().map(|s| s.local_addr().unwrap().port()).collect(),
    )
}

struct Cluster {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    http_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    fn tls(&self) -> PathBuf {
        self.dir.path().join("tls")
    }
    fn peers(&self) -> String {
        (1..=3)
            .map(|i| format!("{i}=127.0.0.1:{}", self.ports[i - 1]))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn cluster(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn log_path(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }
    fn start(&mut self, id: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--id", &id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", self.ports[id - 1])])
            .args(["--peers", &self.peers()])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("data-{id}")))
            .arg("--tls-dir")
            .arg(self.tls())
            .args(["--metrics", &self.http_ports[id - 1].to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ha-counter serve");
        self.children[id - 1] = Some(child);
    }
    fn kill9(&mut self, id: usize) {
        let mut c = self.children[id - 1].take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }
    /// SIGTERM, and the exit status.
    fn terminate(&mut self, id: usize) -> Option<i32> {
        let mut c = self.children[id - 1].take().expect("running");
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", c.id())])
            .status()
            .unwrap();
        assert!(ok.success());
        c.wait().unwrap().code()
    }
    fn client(&self, args: &[&str]) -> Output {
        // Generous: a loaded machine must not turn a slow answer into an
        // unknown outcome that leaves the expected value in doubt.
        Command::new(BIN)
            .args(args)
            .args(["--timeout-ms", "30000"])
            .args(["--cluster", &self.cluster()])
            .arg("--tls-dir")
            .arg(self.tls())
            .output()
            .unwrap()
    }
    fn logs(&self) -> String {
        (1..=3)
            .map(|i| {
                format!(
                    "--- node {i} ---\n{}",
                    std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
                )
            })
            .collect()
    }
    /// The leader every reachable node agrees on, once there is one.
    fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.client(&["status"]);
            let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let leaders: Vec<_> = lines.iter().map(|s| s["leader"].as_u64()).collect();
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && lines.iter().any(|s| s["role"] == "leader")
            {
                return *l as usize;
            }
            assert!(
                Instant::now() < deadline,
                "no leader: {lines:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `GET path` on `port`: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).expect("an HTTP answer")
}

fn try_http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((code, body))
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Refused while the process starts.
        let last = match try_http_get(port, "/readyz") {
            Ok((200, body)) => {
                assert_eq!(body, "ready\n");
                return;
            }
            Ok((code, body)) => {
                assert_eq!(code, 503, "{body}");
                body
            }
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "never ready: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn certs(dir: &Path) {
    let out = Command::new(BIN)
        .args(["certs", "--nodes", "1,2,3", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn three_counter_processes_survive_the_loss_of_their_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (ports, http_ports) = free_ports(3);
    let mut c = Cluster {
        ports,
        http_ports,
        children: (0..3).map(|_| None).collect(),
        dir,
    };
    certs(&c.tls());
    for id in 1..=3 {
        c.start(id);
    }
    every_node_comes_up_healthy(&c);
    c.wait_for_leader();
    for id in 1..=3 {
        wait_ready(c.http_ports[id - 1]);
    }
    metrics_are_served(&c);
    let leader = adds_survive_the_leaders_kill(&mut c);
    the_killed_node_catches_up(&mut c, leader);
    stops_cleanly_and_reports_readiness(&mut c, leader);
}

/// Each node serves HTTP before it is ready, and is alive from then on:
/// "starting" while it recovers from its data directory, then "ok".
fn every_node_comes_up_healthy(c: &Cluster) {
    for id in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", c.http_ports[id - 1])).is_err() {
            assert!(
                Instant::now() < deadline,
                "no HTTP on node {id}\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Alive from the moment HTTP answers: "starting" while the node
        // recovers from its data directory, then "ok".
        loop {
            let (code, body) = http_get(c.http_ports[id - 1], "/healthz");
            assert_eq!(code, 200, "{body}");
            if body == "ok\n" {
                break;
            }
            assert_eq!(body, "starting\n");
            assert!(
                Instant::now() < deadline,
                "node {id} never started\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Node 1's Prometheus metrics, and a 404 for an unknown path.
fn metrics_are_served(c: &Cluster) {
    let (code, body) = http_get(c.http_ports[0], "/metrics");
    assert_eq!(code, 200);
    for m in [
        "ha_term ",
        "ha_role{role=\"leader\"}",
        "ha_failovers_total ",
    ] {
        assert!(body.contains(m), "metrics lack {m}: {body}");
    }
    assert_eq!(http_get(c.http_ports[0], "/nope").0, 404);
}

/// Adds through the cluster, kill -9 of the leader, more adds: every one
/// is answered with the running total. Returns the killed leader.
fn adds_survive_the_leaders_kill(c: &mut Cluster) -> usize {
    let mut expected = 0;
    for delta in [5, -2, 10] {
        expected += delta;
        let out = c.client(&["add", &delta.to_string()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            json(&out),
            serde_json::json!({"ok": true, "value": expected})
        );
    }
    // The leader as it is now (it may have moved since it was first seen).
    let leader = c.wait_for_leader();
    c.kill9(leader);
    for _ in 0..5 {
        expected += 1;
        let out = c.client(&["add", "1"]);
        assert_eq!(
            json(&out),
            serde_json::json!({"ok": true, "value": expected}),
            "after the leader died\n{}",
            c.logs()
        );
    }
    let out = c.client(&["get"]);
    assert_eq!(
        json(&out),
        serde_json::json!({"ok": true, "value": expected})
    );
    leader
}

/// The killed node comes back from its data directory and applies every
/// add.
fn the_killed_node_catches_up(c: &mut Cluster, leader: usize) {
    c.start(leader);
    wait_ready(c.http_ports[leader - 1]);
    let out = c.client(&["status"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    // It caught up: it applied every add.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.client(&["status"]);
        let back = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|s| s["id"] == leader as u64);
        let applied = back.as_ref().and_then(|s| s["applied_index"].as_u64());
        let commit = lines
            .iter()
            .filter_map(|s| s["commit_index"].as_u64())
            .max()
            .unwrap();
        if applied.is_some_and(|a| a >= commit) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {leader} did not catch up: {back:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM stops a node cleanly (exit 0, its directory free again); a node
/// left alone is healthy but not ready; client mistakes exit 2.
fn stops_cleanly_and_reports_readiness(c: &mut Cluster, leader: usize) {
    // SIGTERM: a clean stop, exit 0, and the data directory is free again.
    assert_eq!(c.terminate(leader), Some(0), "{}", c.logs());
    c.start(leader);
    wait_ready(c.http_ports[leader - 1]);
    // Two nodes gone: the last one knows no leader and says it is not
    // ready, while it is still healthy.
    let last = (1..=3).find(|i| *i != leader).unwrap();
    for id in (1..=3).filter(|i| *i != last) {
        c.kill9(id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = http_get(c.http_ports[last - 1], "/readyz");
        if code == 503 {
            assert_eq!(body, "no known leader\n");
            break;
        }
        assert!(Instant::now() < deadline, "still ready alone: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(c.http_ports[last - 1], "/healthz").0, 200);
    // A client mistake: exit 2, one line.
    let out = Command::new(BIN).args(["add", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "usage errors print no JSON line");
    let out = c.client(&["add"]);
    assert_eq!(out.status.code(), Some(2));
}
