//! A cluster of real `ha-kv serve` processes on loopback, and the faults
//! done to them.
//!
//! Owns: the node processes (each one's log file, data directory and
//! port), the cluster's certificates, and the signals sent to them.
//!
//! Invariants:
//! - Slot `i` (1..=n) binds [`node_ip`]`(i)` at a port fixed for the run,
//!   so partitions can tell slots apart and clients' addresses stay good.
//!   It holds node id `i` until a membership fault removes that node and
//!   puts a new id (or the same id with its data directory moved aside)
//!   in its place; its log `node-i.log` has a line for every start.
//! - A slot is running, stopped (SIGSTOP), dead, or removed (out of the
//!   configuration, no process). A node restarts with its own address and
//!   data directory; a node added by a membership fault restarts with
//!   `--join`, an original one with the first `--peers`.
//! - A stopped node is continued before it is killed or restarted, and
//!   every node is killed when the cluster is dropped, so no run leaves a
//!   process behind (unless the harness itself is killed).
//! - At most one running node has a slow clock (a thread pausing and
//!   continuing it); the thread is joined, and the node checked to be
//!   running, before that node is stopped, continued, killed or healed.
//! - A removed slot is added back (and every slot is a voter again)
//!   before [`Cluster::heal`] returns.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
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

/// The processes of one cluster, in slots 1..=n.
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
    /// Nodes found exited on their own, each told as
    /// [`Cluster::crashed`] tells it.
    crashes: Vec<String>,
    /// The node whose clock runs slow, if any ([`Cluster::slow_clock`]).
    strobe: Option<Strobe>,
}

/// A thread that pauses and continues one node in turn, so the node sees
/// a fraction of real time pass: its timers (ticks) run slow.
struct Strobe {
    node: usize,
    pid: String,
    stop: Arc<AtomicBool>,
    /// The first signal that failed, if one did (the strobe then ended).
    failed: Arc<std::sync::Mutex<Option<String>>>,
    thread: JoinHandle<()>,
}

/// How a slow clock is made: the node is paused this long...
const STROBE_PAUSED: Duration = Duration::from_millis(190);
/// ...then runs this long, again and again. With a 10 ms tick that is
/// delayed, not caught up, after a pause, that is one or two ticks per
/// cycle: a clock at a tenth to a twentieth of real time.
const STROBE_RUNNING: Duration = Duration::from_millis(10);

/// A command running `bin` that is killed (SIGKILL) when the process that
/// starts it ends while the starting thread still runs (a run's thread
/// holds its nodes to the end), by `setpriv --pdeathsig KILL` where that
/// works (it execs `bin` in place, so the child's pid is the service's):
/// a harness that is itself killed leaves no node running. Plain `bin`
/// elsewhere. (On the kernels tried, a starting thread that ended on its
/// own before its process leaves the child running.)
pub fn dies_with_parent(bin: &Path) -> Command {
    static SETPRIV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let works = *SETPRIV.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if works {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

/// Sends `sig` (e.g. `-STOP`) to process `pid`.
fn send(sig: &str, pid: &str) -> io::Result<()> {
    run_ok(Command::new("kill").args([sig, pid]))
}

/// Process `pid`'s state letter in `/proc/PID/stat` (`T` stopped, `Z`
/// exited and not reaped, ...); `None` if it cannot be read.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether process `pid` is paused (state `T` or `t`); `None` if that
/// cannot be read (it was reaped, or there is no `/proc`).
pub fn paused(pid: u32) -> Option<bool> {
    proc_state(pid).map(|c| c == 'T' || c == 't')
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
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let how = if self.joined[id - 1] {
            "--join"
        } else {
            "--peers"
        };
        writeln!(log, "--- ha-chaos: node {node} starts in slot {id} ({how})")?;
        let mut cmd = dies_with_parent(&self.bin);
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

    /// Node `id`'s clock runs slow (a tenth to a twentieth of real time)
    /// until [`Cluster::cont`], [`Cluster::kill`], [`Cluster::stop`] or
    /// [`Cluster::heal`]: a thread pauses it (SIGSTOP) and continues it
    /// (SIGCONT) in turn. A node counts time in ticks of its own timer, so
    /// this is the clock skew that matters to it: a leader that believes
    /// less time has passed than has. One node at a time; an error if the
    /// node is not running or the first pause fails.
    pub fn slow_clock(&mut self, id: usize) -> io::Result<()> {
        self.end_strobe(None)?;
        if self.states[id - 1] != NodeState::Running {
            return Err(io::Error::other(format!(
                "slot {id} is not running ({:?})",
                self.states[id - 1]
            )));
        }
        let Some(child) = &self.children[id - 1] else {
            return Err(io::Error::other(format!("slot {id} has no process")));
        };
        let pid = child.id().to_string();
        // The first pause here, so that a strobe that cannot signal at all
        // fails the fault instead of passing for one.
        send("-STOP", &pid)?;
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(std::sync::Mutex::new(None));
        let (flag, fail, target) = (stop.clone(), failed.clone(), pid.clone());
        let thread = std::thread::spawn(move || {
            let note = |e: io::Error| {
                let mut f = fail.lock().unwrap_or_else(|e| e.into_inner());
                f.get_or_insert(e.to_string());
            };
            loop {
                std::thread::sleep(STROBE_PAUSED);
                if let Err(e) = send("-CONT", &target) {
                    note(e);
                    break;
                }
                std::thread::sleep(STROBE_RUNNING);
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Err(e) = send("-STOP", &target) {
                    note(e);
                    break;
                }
            }
        });
        self.strobe = Some(Strobe {
            node: id,
            pid,
            stop,
            failed,
            thread,
        });
        Ok(())
    }

    /// Ends the slow clock (of node `only`, or of any node), and checks
    /// the node was left running: an error if a signal failed while the
    /// node lives (a node that exited is a crash, which
    /// [`Cluster::crashed`] reports) or if it is still paused.
    fn end_strobe(&mut self, only: Option<usize>) -> io::Result<()> {
        if only.is_some_and(|id| self.strobe.as_ref().is_none_or(|s| s.node != id)) {
            return Ok(());
        }
        let Some(s) = self.strobe.take() else {
            return Ok(());
        };
        s.stop.store(true, Ordering::Relaxed);
        let joined = s.thread.join();
        let alive = self.children[s.node - 1]
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !alive {
            return Ok(());
        }
        // The thread always ends on a continue; one more does no harm and
        // covers a thread that died between a pause and its continue.
        let cont = send("-CONT", &s.pid);
        if joined.is_err() {
            return Err(io::Error::other("the slow-clock thread panicked"));
        }
        if let Some(e) = s.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(io::Error::other(format!(
                "the slow clock of slot {} stopped early: {e}",
                s.node
            )));
        }
        cont?;
        let pid = s.pid.parse().unwrap_or(0);
        if paused(pid) == Some(true) {
            return Err(io::Error::other(format!(
                "slot {} is still paused after its slow clock ended",
                s.node
            )));
        }
        Ok(())
    }

    /// The process id of slot `slot`'s node, if it has one.
    pub fn pid(&self, slot: usize) -> Option<u32> {
        self.children[slot - 1].as_ref().map(Child::id)
    }

    /// SIGKILL to node `id` (continued first if stopped).
    pub fn kill(&mut self, id: usize) -> io::Result<()> {
        // The kill goes ahead whatever the strobe's end says (it is the
        // one way to be sure the node is not left paused).
        let strobe = self.end_strobe(Some(id));
        if self.states[id - 1] == NodeState::Stopped {
            // A SIGKILL ends a stopped process too; the CONT only keeps
            // the state tidy, so its failure does not stop the kill.
            let _ = self.signal(id, "-CONT");
        }
        if let Some(mut child) = self.children[id - 1].take() {
            // Exited before this kill: a crash, whatever happens next.
            if let Ok(Some(status)) = child.try_wait() {
                let what = self.crash_text(id, &status.to_string());
                self.crashes.push(what);
            }
            // An error here means it had exited already: dead either way.
            let _ = child.kill();
            child.wait()?;
        }
        if self.states[id - 1] != NodeState::Removed {
            self.states[id - 1] = NodeState::Dead;
        }
        strobe
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

    /// Whether a node process exited on its own (a crash): what happened,
    /// naming the node, its slot and its log.
    pub fn crashed(&mut self) -> Option<String> {
        if let Some(c) = self.crashes.first() {
            return Some(c.clone());
        }
        // A slow-clocked node that exited (a zombie, not reaped yet): its
        // strobe ends before the reaping frees the pid for reuse.
        if let Some(st) = &self.strobe
            && proc_state(st.pid.parse().unwrap_or(0)) == Some('Z')
        {
            let node = st.node;
            let _ = self.end_strobe(Some(node));
        }
        let found = self
            .children
            .iter_mut()
            .enumerate()
            .find_map(|(k, child)| {
                let status = child.as_mut()?.try_wait().ok()??;
                Some((k + 1, status))
            })?;
        let (slot, status) = found;
        // Its pid is free now: nothing may signal it any more.
        let _ = self.end_strobe(Some(slot));
        let what = self.crash_text(slot, &status.to_string());
        self.crashes.push(what.clone());
        Some(what)
    }

    fn crash_text(&self, slot: usize, status: &str) -> String {
        format!(
            "node {} (slot {slot}) exited on its own ({status}); see node-{slot}.log",
            self.ids[slot - 1]
        )
    }

    /// Runs `BIN ARGS --cluster .. --tls-dir .. --timeout-ms T` (BIN is
    /// the service's binary, whose operator commands every service has);
    /// its stdout, or why there is none: it could not start, or was still
    /// running after twice `timeout` (it is then killed).
    fn ha_kv(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        self.ha_kv_at(args, &self.cluster_arg(), timeout)
    }

    /// [`Cluster::ha_kv`] asking the nodes at `cluster` only.
    fn ha_kv_at(&self, args: &[&str], cluster: &str, timeout: Duration) -> Result<String, String> {
        let mut child = Command::new(&self.bin)
            .args(args)
            .args(["--cluster", cluster, "--tls-dir"])
            .arg(self.tls_dir())
            .args(["--timeout-ms", &timeout.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{args:?} did not start: {e}"))?;
        // Its output is read to the end by threads of their own, so that a
        // chatty command never blocks on a full pipe while this one waits;
        // the child stays here, to be killed (never by a pid that may have
        // been reused) if it runs too long.
        // At most `MAX_OUTPUT` bytes are kept; the rest is read and dropped.
        let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.by_ref().take(MAX_OUTPUT).read_to_end(&mut buf);
                    let _ = io::copy(&mut r, &mut io::sink());
                }
                buf
            })
        };
        let stdout = drain(child.stdout.take().map(|r| Box::new(r) as _));
        let stderr = drain(child.stderr.take().map(|r| Box::new(r) as _));
        let deadline = std::time::Instant::now() + timeout * 2;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{args:?} did not end within {:?}", timeout * 2));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(e.to_string()),
            }
        };
        let out = std::process::Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if stdout.trim().is_empty() {
            return Err(format!(
                "{args:?} printed nothing ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(stdout)
    }

    /// The slot of the leader some running node names, asked with
    /// `ha-kv status` (given up after twice `timeout`).
    pub fn leader(&self, timeout: Duration) -> Option<usize> {
        let out = self.ha_kv(&["status"], timeout).ok()?;
        out.lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let id = v.get("leader")?.as_u64()?;
            self.ids.iter().position(|&i| i == id).map(|p| p + 1)
        })
    }

    /// Waits until every node of the configuration reports one commit
    /// index, applied in full, and is neither halted, repairing nor
    /// flagging a command its determinism check found diverging (`status`,
    /// asked of each slot on its own, the answer's id the slot's); an error
    /// naming the last answers after `within` (give or take one round of
    /// questions, at most 4 s a node), or at once if a node crashes, halts
    /// or diverges. With no client writing and
    /// every fault healed, each replica must catch up with its leader: one
    /// that cannot (a follower stuck on a log it cannot repair) fails the
    /// run. It compares positions, not contents: the history's check is
    /// what compares what was applied.
    pub fn converged(&mut self, within: Duration) -> Result<(), String> {
        let slots: Vec<usize> = (1..=self.len())
            .filter(|&k| self.states[k - 1] != NodeState::Removed)
            .collect();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(crash) = self.crashed() {
                return Err(crash);
            }
            let mut commits = std::collections::BTreeSet::new();
            let mut all = true;
            let mut last = Vec::new();
            for &slot in &slots {
                let (id, addr) = (self.ids[slot - 1], self.addr(slot));
                let answer = self.ha_kv_at(&["status"], &addr, Duration::from_secs(2));
                let text = answer.as_ref().unwrap_or_else(|e| e).trim();
                // A few hundred bytes of each answer are enough to report.
                let short: String = text.chars().take(300).collect();
                last.push(format!("slot {slot}: {short}"));
                let v = answer.ok().and_then(|out| {
                    out.lines()
                        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                });
                let field = |k: &str| v.as_ref()?.get(k)?.as_u64();
                // Halted or diverging does not pass with time: at once.
                if let Some(v) = &v
                    && (v.get("halted").is_some() || field("divergences").unwrap_or(0) > 0)
                {
                    return Err(format!("node {id} (slot {slot}) cannot converge: {short}"));
                }
                match (field("id"), field("commit_index"), field("applied_index")) {
                    (Some(i), Some(c), Some(a))
                        if i == id
                            && c == a
                            && v.as_ref().is_some_and(|v| v.get("repairing").is_none()) =>
                    {
                        commits.insert(c);
                    }
                    _ => all = false,
                }
            }
            if all && commits.len() == 1 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let ids: Vec<u64> = slots.iter().map(|&k| self.ids[k - 1]).collect();
                return Err(format!(
                    "the replicas did not converge within {} s (one commit index, applied in \
                     full by every node of {ids:?}); last status: {}",
                    within.as_secs(),
                    last.join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The committed configuration, from `member list`: each member's id
    /// and role, or the answer that was not one.
    fn members(&self, timeout: Duration) -> Result<Vec<(u64, String)>, String> {
        let out = self.ha_kv(&["member", "list"], timeout)?;
        let parse = || -> Option<Vec<(u64, String)>> {
            let v: serde_json::Value = serde_json::from_str(out.lines().next()?).ok()?;
            v.get("members")?
                .as_array()?
                .iter()
                .map(|m| Some((m.get("id")?.as_u64()?, m.get("role")?.as_str()?.to_string())))
                .collect()
        };
        parse().ok_or_else(|| format!("member list answered {:?}", out.trim()))
    }

    /// Repeats `step` (a `member` command chosen from the current
    /// configuration) until `done` holds of the configuration. An error
    /// if a node crashes meanwhile, or after [`MEMBER_DEADLINE`] (the
    /// cluster has no other fault, so a change that cannot commit by then
    /// is a fault of its own), with the last answers seen.
    fn change(
        &mut self,
        what: &str,
        done: impl Fn(&[(u64, String)]) -> bool,
        step: impl Fn(&[(u64, String)]) -> Vec<String>,
    ) -> io::Result<()> {
        let deadline = std::time::Instant::now() + MEMBER_DEADLINE;
        let mut last: String;
        loop {
            if let Some(crash) = self.crashed() {
                return Err(io::Error::other(format!("{what}: {crash}")));
            }
            // Each call gets at most the time left (and at least 100 ms).
            let left = deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(MEMBER_TIMEOUT)
                .max(Duration::from_millis(100));
            match self.members(left) {
                Ok(members) if done(&members) => return Ok(()),
                Ok(members) => {
                    let args = step(&members);
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    // The answer (done, unknown, busy) says little: the
                    // next configuration read decides.
                    last = match self.ha_kv(&args, left) {
                        Ok(out) => format!("members {members:?}; {args:?} answered {}", out.trim()),
                        Err(e) => format!("members {members:?}; {e}"),
                    };
                }
                Err(e) => last = e,
            }
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{what}: not done within {} s; last: {last}",
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
        let rest = self.voters_but(slot);
        self.change(
            &format!("removing node {id}"),
            |m| exactly_voters(m, &rest),
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
        if !replace {
            // Moved aside, not deleted: a failed run keeps it to read.
            let data = self.data_dir(id);
            let aside = (1..)
                .map(|k| self.dir.join(format!("data-{id}.removed-{k}")))
                .find(|p| !p.exists())
                .unwrap_or_else(|| self.dir.join(format!("data-{id}.removed")));
            if data.exists() {
                std::fs::rename(&data, aside)?;
            }
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
        let all = self.voters_but(0);
        self.change(
            &format!("adding node {id}"),
            |m| exactly_voters(m, &all),
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

impl Cluster {
    /// The ids of every slot but `slot` (0: every slot) not removed.
    fn voters_but(&self, slot: usize) -> Vec<u64> {
        (1..=self.len())
            .filter(|&k| k != slot && self.states[k - 1] != NodeState::Removed)
            .map(|k| self.ids[k - 1])
            .collect()
    }
}

/// Whether configuration `m` is exactly `ids`, every one a voter (no
/// learner, none leaving). A joint configuration that only adds a voter
/// shows as its outcome already; the leader leaves it as soon as it is
/// committed.
fn exactly_voters(m: &[(u64, String)], ids: &[u64]) -> bool {
    let mut have: Vec<u64> = m.iter().map(|(i, _)| *i).collect();
    let mut want = ids.to_vec();
    have.sort_unstable();
    want.sort_unstable();
    // A list naming one member twice is not the expected one.
    m.iter().all(|(_, role)| role == "voter") && have == want
}

/// The most of an operator command's output kept (bytes, per stream).
const MAX_OUTPUT: u64 = 1 << 20;

/// Each `member` call's timeout (an add waits for the learner to
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the copy of this test that starts a node and exits.
    const STARTER: &str = "HA_CHAOS_TEST_STARTER";

    /// A node started by [`dies_with_parent`] is killed when the process
    /// that started it ends (where `setpriv` works; elsewhere the test
    /// says so and checks nothing more): this test runs itself again as
    /// that process, which starts `sleep 30`, prints its pid and exits.
    #[test]
    fn a_node_dies_with_the_process_that_started_it() {
        if std::env::var_os(STARTER).is_some() {
            // Started by a thread that still runs when the process ends, as
            // a run's nodes are when the harness is killed.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                // Never waited for: the process ends with it running, which
                // is the point.
                #[allow(clippy::zombie_processes)]
                let child = dies_with_parent(Path::new("sleep"))
                    .arg("30")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("sleep starts");
                tx.send(child.id()).expect("sent");
                std::thread::sleep(Duration::from_secs(60));
            });
            let pid = rx.recv().expect("a pid");
            // Until setpriv has set the signal and exec'd the node (the
            // spawn returns once setpriv itself runs).
            let comm = format!("/proc/{pid}/comm");
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while std::fs::read_to_string(&comm).map_or(true, |c| c.trim() != "sleep")
                && std::time::Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            println!("pid {pid}");
            std::process::exit(0);
        }
        // Decided apart from the function under test.
        let setpriv = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !setpriv {
            eprintln!("setpriv --pdeathsig is not available here: skipped");
            return;
        }
        assert!(
            format!("{:?}", dies_with_parent(Path::new("sleep"))).contains("setpriv"),
            "setpriv works here, yet nodes are started without it"
        );
        let out = Command::new(std::env::current_exe().expect("this test's binary"))
            .args([
                "--exact",
                "cluster::tests::a_node_dies_with_the_process_that_started_it",
                "--nocapture",
            ])
            .env(STARTER, "1")
            .stdin(Stdio::null())
            .output()
            .expect("the starter runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let pid: u32 = text
            .lines()
            .find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {text:?}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie its new parent has not reaped yet.
        while !matches!(proc_state(pid), None | Some('Z')) {
            if std::time::Instant::now() > deadline {
                let state = proc_state(pid);
                let _ = send("-KILL", &pid.to_string());
                panic!("pid {pid} still ran ({state:?}) after the process that started it ended");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
