//! A cluster of real `ha-kv serve` processes on loopback, and the faults
//! done to them.
//!
//! Owns: the node processes (each one's log file, data directory and
//! port), the cluster's certificates, and the signals sent to them.
//! Invariants: a node is running, stopped (SIGSTOP) or dead; a stopped
//! node is continued before it is killed or restarted, and every node is
//! killed when the cluster is dropped, so no run leaves a process behind.
//! At most one running node has a slow clock (a thread pausing and
//! continuing it); the thread is joined, and the node left running,
//! before that node is stopped, continued, killed or healed.
//! A node restarts with the same address and data directory; node `i`
//! binds [`node_ip`]`(i)`, so partitions can tell nodes apart.

use std::fs::OpenOptions;
use std::io;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
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
    /// The node whose clock runs slow, if any ([`Cluster::slow_clock`]).
    strobe: Option<Strobe>,
}

/// A thread that pauses and continues one node in turn, so the node sees
/// a fraction of real time pass: its timers (ticks) run slow.
struct Strobe {
    node: usize,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// How a slow clock is made: the node is paused this long...
const STROBE_PAUSED: Duration = Duration::from_millis(190);
/// ...then runs this long, again and again (about a twentieth of real time:
/// with a 10 ms tick that is delayed, not caught up, after a pause, one
/// or two ticks per cycle).
const STROBE_RUNNING: Duration = Duration::from_millis(10);

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
            strobe: None,
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

    /// Node `id`'s clock runs slow (about a twentieth of real time) until
    /// [`Cluster::cont`], [`Cluster::kill`] or [`Cluster::heal`]: a thread
    /// pauses it (SIGSTOP) and continues it (SIGCONT) in turn. A node
    /// counts time in ticks of its own timer, so this is the clock skew
    /// that matters to it: a leader that believes less time has passed
    /// than has. One node at a time; a paused or dead node is left alone.
    pub fn slow_clock(&mut self, id: usize) -> io::Result<()> {
        self.end_strobe(None)?;
        if self.states[id - 1] != NodeState::Running {
            return Ok(());
        }
        let Some(child) = &self.children[id - 1] else {
            return Ok(());
        };
        let pid = child.id().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let signal = |sig: &str| {
                // A failure (the node exited) ends the strobe; the crash
                // is seen by `crashed`.
                run_ok(Command::new("kill").args([sig, &pid])).is_ok()
            };
            while !flag.load(Ordering::Relaxed) && signal("-STOP") {
                std::thread::sleep(STROBE_PAUSED);
                if !signal("-CONT") {
                    break;
                }
                std::thread::sleep(STROBE_RUNNING);
            }
            // Always left running.
            let _ = signal("-CONT");
        });
        self.strobe = Some(Strobe {
            node: id,
            stop,
            thread,
        });
        Ok(())
    }

    /// Ends the slow clock (of node `only`, or of any node), leaving the
    /// node running.
    fn end_strobe(&mut self, only: Option<usize>) -> io::Result<()> {
        if only.is_some_and(|id| self.strobe.as_ref().is_none_or(|s| s.node != id)) {
            return Ok(());
        }
        if let Some(s) = self.strobe.take() {
            s.stop.store(true, Ordering::Relaxed);
            s.thread
                .join()
                .map_err(|_| io::Error::other("the slow-clock thread panicked"))?;
        }
        Ok(())
    }

    /// SIGKILL to node `id` (continued first if stopped).
    pub fn kill(&mut self, id: usize) -> io::Result<()> {
        self.end_strobe(Some(id))?;
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

    /// Pauses node `id` (SIGSTOP; a slow clock of it ends first).
    pub fn stop(&mut self, id: usize) -> io::Result<()> {
        self.end_strobe(Some(id))?;
        if self.states[id - 1] == NodeState::Running {
            self.signal(id, "-STOP")?;
            self.states[id - 1] = NodeState::Stopped;
        }
        Ok(())
    }

    /// Resumes node `id` (SIGCONT), and ends its slow clock.
    pub fn cont(&mut self, id: usize) -> io::Result<()> {
        self.end_strobe(Some(id))?;
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

    /// Every node running again at full speed: a slow clock ended,
    /// stopped nodes continued, dead ones restarted.
    pub fn heal(&mut self) -> io::Result<()> {
        self.end_strobe(None)?;
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
