//! A cluster of real `ha-kv serve` processes on loopback, and the faults
//! done to them.
//!
//! Owns: the node processes (each one's log file, data directory and
//! port), the cluster's certificates, and the signals sent to them.
//! Invariants: a node is running, stopped (SIGSTOP) or dead; a stopped
//! node is continued before it is killed or restarted, and every node is
//! killed when the cluster is dropped, so no run leaves a process behind.
//! A node restarts with the same address and data directory; node `i`
//! binds [`node_ip`]`(i)`, so partitions can tell nodes apart.

use std::fs::OpenOptions;
use std::io;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ha_core::rng::SplitMix64;

use crate::netns::{self, node_ip};

/// Where one node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Serving.
    Running,
    /// Paused with SIGSTOP.
    Stopped,
    /// Killed, not restarted yet.
    Dead,
}

/// The processes of one cluster, with ids 1..=n.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    states: Vec<NodeState>,
    flags: Vec<String>,
    env: Vec<(String, String)>,
    /// Nodes found exited on their own: id and exit status.
    crashes: Vec<(usize, String)>,
}

/// A UDP port free now on `ip`, below Linux's ephemeral range (32768 and
/// up), so that no client socket takes it while its node is down between
/// a kill and a restart; the OS's choice if none is found.
fn free_port(ip: &str, rng: &mut SplitMix64) -> io::Result<UdpSocket> {
    for _ in 0..200 {
        let port = rng.range(10_000, 32_000) as u16;
        if let Ok(s) = UdpSocket::bind((ip, port)) {
            return Ok(s);
        }
    }
    UdpSocket::bind((ip, 0))
}

/// Runs `cmd` to its end; an error unless it exits 0.
fn run_ok(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Cluster {
    /// Creates certificates in `dir` and starts `nodes` nodes, each with
    /// `flags` added to its `serve` command and `env` to its environment.
    pub fn start(
        bin: &Path,
        dir: &Path,
        nodes: usize,
        flags: Vec<String>,
        env: Vec<(String, String)>,
    ) -> io::Result<Cluster> {
        let ids: Vec<String> = (1..=nodes).map(|i| i.to_string()).collect();
        // Certificates name each node's own address when nodes have
        // their own (clients check it).
        let mut certs = Command::new(bin);
        certs
            .args(["certs", "--dir"])
            .arg(dir.join("tls"))
            .args(["--nodes", &ids.join(",")]);
        if netns::inside() {
            let hosts: Vec<String> = (1..=nodes)
                .map(|id| format!("{id}={}", node_ip(id)))
                .collect();
            certs.args(["--hosts", &hosts.join(",")]);
        }
        run_ok(&mut certs)?;
        let mut rng = SplitMix64::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()),
        );
        // Every probe socket stays open until all are chosen, so two nodes
        // on one address never draw the same port.
        let probes = (1..=nodes)
            .map(|id| free_port(&node_ip(id), &mut rng))
            .collect::<io::Result<Vec<UdpSocket>>>()?;
        let ports = probes
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<io::Result<Vec<u16>>>()?;
        drop(probes);
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            ports,
            children: (0..nodes).map(|_| None).collect(),
            states: vec![NodeState::Dead; nodes],
            flags,
            env,
            crashes: Vec::new(),
        };
        for id in 1..=nodes {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether the cluster has no nodes (never, once started).
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The certificates' directory (clients need it too).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// `--cluster` for a client: every node's address.
    pub fn cluster_arg(&self) -> String {
        let addrs: Vec<String> = (1..=self.len()).map(|id| self.addr(id)).collect();
        addrs.join(",")
    }

    /// Node `id`'s address.
    pub fn addr(&self, id: usize) -> String {
        format!("{}:{}", node_ip(id), self.ports[id - 1])
    }

    /// Node `id`'s state.
    pub fn state(&self, id: usize) -> NodeState {
        self.states[id - 1]
    }

    fn spawn(&mut self, id: usize) -> io::Result<()> {
        let peers: Vec<String> = (1..=self.len())
            .map(|k| format!("{k}={}", self.addr(k)))
            .collect();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let child = Command::new(&self.bin)
            .args(["serve", "--id", &id.to_string()])
            .args(["--listen", &self.addr(id)])
            .args(["--peers", &peers.join(",")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("data-{id}")))
            .arg("--tls-dir")
            .arg(self.tls_dir())
            .args(&self.flags)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children[id - 1] = Some(child);
        self.states[id - 1] = NodeState::Running;
        Ok(())
    }

    fn signal(&self, id: usize, sig: &str) -> io::Result<()> {
        let Some(child) = &self.children[id - 1] else {
            return Ok(());
        };
        run_ok(Command::new("kill").args([sig, &child.id().to_string()]))
    }

    /// SIGKILL to node `id` (continued first if stopped).
    pub fn kill(&mut self, id: usize) -> io::Result<()> {
        if self.states[id - 1] == NodeState::Stopped {
            // A SIGKILL ends a stopped process too; the CONT only keeps
            // the state tidy, so its failure does not stop the kill.
            let _ = self.signal(id, "-CONT");
        }
        if let Some(mut child) = self.children[id - 1].take() {
            // Exited before this kill: a crash, whatever happens next.
            if let Ok(Some(status)) = child.try_wait() {
                self.crashes.push((id, status.to_string()));
            }
            // An error here means it had exited already: dead either way.
            let _ = child.kill();
            child.wait()?;
        }
        self.states[id - 1] = NodeState::Dead;
        Ok(())
    }

    /// Starts node `id` again from its data directory (killing it first
    /// if it runs).
    pub fn restart(&mut self, id: usize) -> io::Result<()> {
        self.kill(id)?;
        self.spawn(id)
    }

    /// Pauses node `id` (SIGSTOP).
    pub fn stop(&mut self, id: usize) -> io::Result<()> {
        if self.states[id - 1] == NodeState::Running {
            self.signal(id, "-STOP")?;
            self.states[id - 1] = NodeState::Stopped;
        }
        Ok(())
    }

    /// Resumes node `id` (SIGCONT).
    pub fn cont(&mut self, id: usize) -> io::Result<()> {
        if self.states[id - 1] == NodeState::Stopped {
            self.signal(id, "-CONT")?;
            self.states[id - 1] = NodeState::Running;
        }
        Ok(())
    }

    /// SIGKILL to every node at once, then every node started again.
    pub fn restart_all(&mut self) -> io::Result<()> {
        (1..=self.len()).try_for_each(|id| self.kill(id))?;
        self.heal()
    }

    /// Every node running again: stopped ones continued, dead ones
    /// restarted.
    pub fn heal(&mut self) -> io::Result<()> {
        for id in 1..=self.len() {
            match self.states[id - 1] {
                NodeState::Running => {}
                NodeState::Stopped => self.cont(id)?,
                NodeState::Dead => self.spawn(id)?,
            }
        }
        Ok(())
    }

    /// Whether a node process exited on its own (a crash): its id and
    /// exit status.
    pub fn crashed(&mut self) -> Option<(usize, String)> {
        if let Some(c) = self.crashes.first() {
            return Some(c.clone());
        }
        for (k, child) in self.children.iter_mut().enumerate() {
            if let Some(c) = child
                && let Ok(Some(status)) = c.try_wait()
            {
                return Some((k + 1, status.to_string()));
            }
        }
        None
    }

    /// The leader some running node names, asked with `ha-kv status`
    /// (given up, and the process killed, after twice `timeout`).
    pub fn leader(&self, timeout: Duration) -> Option<usize> {
        let mut child = Command::new(&self.bin)
            .args(["status", "--cluster", &self.cluster_arg(), "--tls-dir"])
            .arg(self.tls_dir())
            .args(["--timeout-ms", &timeout.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = std::time::Instant::now() + timeout * 2;
        while child.try_wait().ok()?.is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                let id = v.get("leader")?.as_u64()?;
                usize::try_from(id)
                    .ok()
                    .filter(|id| (1..=self.len()).contains(id))
            })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.len() {
            let _ = self.kill(id);
        }
    }
}
