// The cluster harness of the `ha-kv` black-box tests: included (not a
// module) by `cli/main.rs` and by `handoff.rs`, so both test binaries
// share it. `ha-kv serve` processes on loopback, each node's log in a file,
// and the command-line client.

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
    /// Node 1's metrics port.
    metrics_port: u16,
    /// Every node's metrics port (node 1's is `metrics_port`).
    metrics_ports: Vec<u16>,
    /// Flags every `serve` of this cluster gets.
    serve_flags: Vec<String>,
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
        cmd.args(&self.serve_flags);
        cmd
    }
    fn start_node_with(&mut self, id: usize, peers: Option<&str>) {
        let cmd = self.serve_cmd(id, peers);
        self.spawn_serve(id, cmd);
    }
    /// Node slots `ports.len() + 1 ..` for `n` more nodes (a port and a
    /// certificate each), to be started with [`Cluster::start_joining`].
    fn add_slots(&mut self, n: usize) {
        let first = self.ports.len() + 1;
        let ids: Vec<String> = (first..first + n).map(|i| i.to_string()).collect();
        let out = Command::new(BIN)
            .args(["certs", "--nodes", &ids.join(","), "--dir"])
            .arg(self.tls())
            .output()
            .unwrap();
        assert!(out.status.success(), "certs for {ids:?}");
        for _ in 0..n {
            self.ports.push(free_udp_port());
            self.metrics_ports.push(free_tcp_port());
            self.children.push(None);
        }
    }
    /// `serve --join` for node `id` (a slot from [`Cluster::add_slots`]).
    fn start_joining(&mut self, id: usize) {
        let mut cmd = self.serve_cmd(id, None);
        cmd.arg("--join");
        self.spawn_serve(id, cmd);
    }
    /// The address node `id` listens on.
    fn addr(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.ports[id - 1])
    }
    fn spawn_serve(&mut self, id: usize, mut cmd: Command) {
        // Each node's log goes to a file, appended across restarts, so a
        // failing test can show what the node said.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("open the node's log file");
        // The framework's own progress too (tests look for some of it).
        cmd.env("RUST_LOG", "warn,ha_core=info,ha_quic=info,ha_server=info");
        cmd.stdout(Stdio::null()).stderr(log);
        // A bare port: the metrics listener binds loopback.
        cmd.args(["--metrics", &self.metrics_ports[id - 1].to_string()]);
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
    /// SIGTERM to node `id`; waits (at most 30 s) for it to exit.
    fn sigterm(&mut self, id: usize) -> std::process::ExitStatus {
        let mut child = self.children[id - 1].take().expect("running");
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", child.id())])
            .status()
            .expect("run sh");
        assert!(ok.success(), "kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {id} did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

impl Cluster {
    /// Three node slots in `dir` (certificates made already), ports from
    /// the OS, nothing started.
    fn unstarted(dir: tempfile::TempDir, serve_flags: &[&str]) -> Cluster {
        let metrics_ports: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
        Cluster {
            dir,
            ports: (0..3).map(|_| free_udp_port()).collect(),
            children: vec![None, None, None],
            metrics_port: metrics_ports[0],
            metrics_ports,
            serve_flags: serve_flags.iter().map(|s| s.to_string()).collect(),
        }
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
    start_with(&[])
}

/// A 3-node cluster whose nodes all get `serve_flags`.
fn start_with(serve_flags: &[&str]) -> Cluster {
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
    let mut c = Cluster::unstarted(dir, serve_flags);
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
