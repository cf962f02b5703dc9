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
//! A node restarts with the same address and data directory. Slot `i`
//! (1..=n) binds [`node_ip`]`(i)` at a port fixed for the run, so
//! partitions can tell slots apart and clients' addresses stay good; it
//! holds node id `i` until a membership fault removes that node and puts
//! a new id (or the same id with an empty directory) in its place. A
//! removed slot holds no process and is added back before the cluster is
//! healed, so every slot is a voter again after [`Cluster::heal`].

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
    /// Removed from the configuration and killed; its data is gone, and
    /// [`Cluster::heal`] (or [`Cluster::member_in`]) adds a node back.
    Removed,
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
    /// The node id in each slot.
    ids: Vec<u64>,
    /// Whether each slot's node was started with `--join` (a node added
    /// by a membership fault) rather than with the first `--peers`.
    joined: Vec<bool>,
    /// The first `--peers` (every original node restarts with it).
    peers: String,
    /// The id the next replacement node gets.
    next_id: u64,
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
        let peers: Vec<String> = (1..=nodes)
            .map(|k| format!("{k}={}:{}", node_ip(k), ports[k - 1]))
            .collect();
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            ports,
            children: (0..nodes).map(|_| None).collect(),
            states: vec![NodeState::Dead; nodes],
            flags,
            env,
            ids: (1..=nodes as u64).collect(),
            joined: vec![false; nodes],
            peers: peers.join(","),
            next_id: nodes as u64 + 1,
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

    /// The node id slot `slot` holds.
    pub fn node_id(&self, slot: usize) -> u64 {
        self.ids[slot - 1]
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("data-{id}"))
    }

    fn spawn(&mut self, id: usize) -> io::Result<()> {
        let node = self.ids[id - 1];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", "--id", &node.to_string()])
            .args(["--listen", &self.addr(id)]);
        if self.joined[id - 1] {
            cmd.arg("--join");
        } else {
            cmd.args(["--peers", &self.peers]);
        }
        let child = cmd
            .arg("--data-dir")
            .arg(self.data_dir(node))
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
        if self.states[id - 1] != NodeState::Removed {
            self.states[id - 1] = NodeState::Dead;
        }
        Ok(())
    }

    /// Starts node `id` again from its data directory (killing it first
    /// if it runs); a removed slot is added back instead.
    pub fn restart(&mut self, id: usize) -> io::Result<()> {
        self.kill(id)?;
        if self.states[id - 1] == NodeState::Removed {
            return self.member_in(id);
        }
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
                NodeState::Running | NodeState::Removed => {}
                NodeState::Stopped => self.cont(id)?,
                NodeState::Dead => self.spawn(id)?,
            }
        }
        // Added back once every other node runs (adding needs a quorum).
        for id in 1..=self.len() {
            if self.states[id - 1] == NodeState::Removed {
                self.member_in(id)?;
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

    /// Runs `ha-kv ARGS --cluster .. --tls-dir .. --timeout-ms T`; its
    /// stdout, or `None` if it could not start or was still running
    /// after twice `timeout` (then it is killed).
    fn ha_kv(&self, args: &[&str], timeout: Duration) -> Option<String> {
        let mut child = Command::new(&self.bin)
            .args(args)
            .args(["--cluster", &self.cluster_arg(), "--tls-dir"])
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
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The slot of the leader some running node names, asked with
    /// `ha-kv status` (given up after twice `timeout`).
    pub fn leader(&self, timeout: Duration) -> Option<usize> {
        let out = self.ha_kv(&["status"], timeout)?;
        out.lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let id = v.get("leader")?.as_u64()?;
            self.ids.iter().position(|&i| i == id).map(|p| p + 1)
        })
    }

    /// The committed configuration, from `ha-kv member list`: each
    /// member's id and role.
    fn members(&self) -> Option<Vec<(u64, String)>> {
        let out = self.ha_kv(&["member", "list"], MEMBER_TIMEOUT)?;
        let v: serde_json::Value = serde_json::from_str(out.lines().next()?).ok()?;
        v.get("members")?
            .as_array()?
            .iter()
            .map(|m| Some((m.get("id")?.as_u64()?, m.get("role")?.as_str()?.to_string())))
            .collect()
    }

    /// Repeats `step` (an `ha-kv member` command chosen from the current
    /// configuration) until `done` holds of the configuration; an error
    /// after [`MEMBER_DEADLINE`] (the cluster is otherwise whole, so a
    /// change that cannot commit by then is a fault of its own).
    fn change(
        &self,
        what: &str,
        done: impl Fn(&[(u64, String)]) -> bool,
        step: impl Fn(&[(u64, String)]) -> Vec<String>,
    ) -> io::Result<()> {
        let deadline = std::time::Instant::now() + MEMBER_DEADLINE;
        loop {
            if let Some(members) = self.members() {
                if done(&members) {
                    return Ok(());
                }
                let args = step(&members);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                // Its answer says little (an unknown outcome, "busy"): the
                // next configuration read decides.
                let _ = self.ha_kv(&args, MEMBER_TIMEOUT);
            }
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{what}: not done within {} s of asking",
                    MEMBER_DEADLINE.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Removes slot `slot`'s node from the configuration (`ha-kv member
    /// remove`; a leader hands over first), kills it, and puts a node in
    /// its place that is not added yet: a new id (`replace`, with a
    /// certificate of its own) or the same id with its data directory
    /// deleted. [`Cluster::member_in`] (or [`Cluster::heal`]) adds it.
    pub fn member_out(&mut self, slot: usize, replace: bool) -> io::Result<()> {
        self.end_strobe(Some(slot))?;
        if self.states[slot - 1] == NodeState::Removed {
            return Ok(());
        }
        // A paused or dead node is brought back first: removing it would
        // work, but this fault is about the change, not the node.
        self.cont(slot)?;
        if self.states[slot - 1] == NodeState::Dead {
            self.spawn(slot)?;
        }
        let id = self.ids[slot - 1];
        self.change(
            &format!("removing node {id}"),
            |m| m.iter().all(|(i, _)| *i != id),
            |_| vec!["member".into(), "remove".into(), id.to_string()],
        )?;
        self.states[slot - 1] = NodeState::Removed;
        self.kill(slot)?;
        let next = if replace {
            let next = self.next_id;
            self.next_id += 1;
            let mut certs = Command::new(&self.bin);
            certs
                .args(["certs", "--dir"])
                .arg(self.tls_dir())
                .args(["--nodes", &next.to_string()]);
            if netns::inside() {
                certs.args(["--hosts", &format!("{next}={}", node_ip(slot))]);
            }
            run_ok(&mut certs)?;
            next
        } else {
            id
        };
        let data = self.data_dir(id);
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        self.ids[slot - 1] = next;
        self.joined[slot - 1] = true;
        Ok(())
    }

    /// Starts the node of a removed slot with `serve --join` and adds it
    /// (`ha-kv member add`: a learner that catches up, then a voter);
    /// done when the configuration lists it as a voter.
    pub fn member_in(&mut self, slot: usize) -> io::Result<()> {
        if self.states[slot - 1] != NodeState::Removed {
            return Ok(());
        }
        self.spawn(slot)?;
        let (id, addr) = (self.ids[slot - 1], self.addr(slot));
        self.change(
            &format!("adding node {id}"),
            |m| m.iter().any(|(i, role)| *i == id && role == "voter"),
            |m| {
                if m.iter().any(|(i, _)| *i == id) {
                    vec!["member".into(), "promote".into(), id.to_string()]
                } else {
                    vec!["member".into(), "add".into(), id.to_string(), addr.clone()]
                }
            },
        )
    }
}

/// Each `ha-kv member` call's timeout (an add waits for the learner to
/// catch up).
const MEMBER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a membership change may take in a cluster with no other
/// fault.
const MEMBER_DEADLINE: Duration = Duration::from_secs(60);

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.len() {
            let _ = self.kill(id);
        }
    }
}
