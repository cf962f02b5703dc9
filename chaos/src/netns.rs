//! Network partitions between nodes on one machine, made inside a private
//! network namespace so nothing outside the run is touched.
//!
//! Owns: entering the namespace (re-running a command under
//! `unshare --net --map-root-user`), setting it up, and the routing rules
//! that cut links. How a cut works: node `i` binds `127.0.0.(10+i)`, and
//! its peer traffic leaves from that address (peer connections use the
//! node's own endpoint). A rule "from node a's address to node b's address
//! look up table 100" sends those packets to a veth device whose other end
//! drops them: silently, as a real partition does, with no error to the
//! sender. Clients send from `127.0.0.1`, which no rule names, so they
//! reach every node (clients on both sides of a partition).
//!
//! Invariants: rules exist only inside the namespace, which dies with the
//! last process in it; [`Net::heal`] removes every rule [`Net::cut`]
//! added, and only those.

use std::io;
use std::process::{Command, Stdio};

/// The environment variable that says this process runs inside a
/// namespace set up for partitions; its value names the namespace it was
/// made from.
pub const INSIDE: &str = "HA_CHAOS_NETNS";

/// Set by [`reexec`] to the pid of the process that runs this one again
/// (`unshare` execs in place, so it is the parent's; see
/// [`end_with_parent`]).
pub const PARENT: &str = "HA_CHAOS_PARENT";

/// This process's network namespace, as the kernel names it
/// (`net:[4026531840]`).
fn own_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/net").ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// Whether this process runs inside a namespace made by [`reexec`]: the
/// variable names the namespace [`reexec`] left, and this process is in
/// another one (so a stray or inherited variable never rewires the
/// network it names).
pub fn inside() -> bool {
    let Some(left) = std::env::var_os(INSIDE) else {
        return false;
    };
    let left = left.to_string_lossy();
    left.starts_with("net:[") && own_namespace().is_some_and(|me| me != left)
}

/// The loopback address node `id` binds: `127.0.0.(10+id)` inside a
/// namespace, `127.0.0.1` outside.
pub fn node_ip(id: usize) -> String {
    if inside() && id <= 200 {
        format!("127.0.0.{}", 10 + id)
    } else {
        "127.0.0.1".to_string()
    }
}

/// Ends this process (status 3) once the process that started it is gone,
/// watched from a thread of its own (started once): a run made again
/// inside a namespace does not outlive the run that made it, and its
/// nodes (see [`crate::cluster::dies_with_parent`]) go with it.
pub fn end_with_parent() {
    static WATCH: std::sync::Once = std::sync::Once::new();
    WATCH.call_once(|| {
        // The process that ran this one again, as it named itself (one
        // that is gone by now is not this process's parent any more).
        let parent = std::env::var(PARENT)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(std::os::unix::process::parent_id);
        std::thread::spawn(move || {
            loop {
                if std::os::unix::process::parent_id() != parent {
                    eprintln!("ha-chaos: the process that started this one is gone; ending");
                    std::process::exit(3);
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
    });
}

/// A command that runs `program args` inside a new network namespace
/// (with [`INSIDE`] set), or why that is not possible here.
pub fn reexec(program: &std::path::Path, args: &[String]) -> Result<Command, String> {
    // Never nest: a process that was already run again (whether or not
    // it can tell it is inside) does not run itself once more.
    if std::env::var_os(INSIDE).is_some() {
        return Err(format!(
            "{INSIDE} is set but this process is not in a namespace of its own"
        ));
    }
    // Everything [`Net::setup`] needs, tried in a throwaway namespace.
    let probe = Command::new("unshare")
        .args(["--net", "--map-root-user", "sh", "-c"])
        .arg(
            "ip link set lo up && ip link add p0 type veth peer name p1 \
             && sysctl -qw net.ipv4.conf.all.route_localnet=1 && ip rule add pref 10 lookup main",
        )
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "unshare --net --map-root-user failed: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    let here = own_namespace().ok_or("cannot read this process's network namespace")?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--map-root-user"])
        .arg(program)
        .args(args)
        .env(INSIDE, here)
        .env(PARENT, std::process::id().to_string());
    Ok(cmd)
}

fn sh(args: &[&str]) -> io::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The partitions of one namespace.
#[derive(Debug, Default)]
pub struct Net {
    /// The links cut, as (from, to) node ids.
    cut: Vec<(usize, usize)>,
}

/// The routing table cut links are sent to.
const TABLE: &str = "100";
/// The preference of the rules that cut links (before the local table,
/// which moves to [`LOCAL_PREF`]).
const CUT_PREF: &str = "10";
const LOCAL_PREF: &str = "100";

impl Net {
    /// Sets the namespace up: loopback up, loopback addresses routable to
    /// the drop device, the local table after the cut rules.
    pub fn setup() -> io::Result<Net> {
        if !inside() {
            return Err(io::Error::other(
                "not inside a network namespace made for partitions",
            ));
        }
        sh(&["ip", "link", "set", "lo", "up"])?;
        sh(&[
            "ip", "link", "add", "ha-drop0", "type", "veth", "peer", "name", "ha-drop1",
        ])?;
        sh(&["ip", "link", "set", "ha-drop0", "up"])?;
        sh(&["ip", "link", "set", "ha-drop1", "up"])?;
        sh(&["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"])?;
        sh(&[
            "ip", "route", "add", "default", "dev", "ha-drop0", "table", TABLE,
        ])?;
        sh(&["ip", "rule", "add", "pref", LOCAL_PREF, "lookup", "local"])?;
        sh(&["ip", "rule", "del", "pref", "0"])?;
        Ok(Net::default())
    }

    /// Drops every packet from node `from` to node `to` (one way).
    pub fn cut(&mut self, from: usize, to: usize) -> io::Result<()> {
        if from == to || self.cut.contains(&(from, to)) {
            return Ok(());
        }
        let (a, b) = (node_ip(from), node_ip(to));
        sh(&[
            "ip", "rule", "add", "pref", CUT_PREF, "from", &a, "to", &b, "lookup", TABLE,
        ])?;
        self.cut.push((from, to));
        Ok(())
    }

    /// Cuts both ways between every node of `a` and every node of `b`.
    pub fn split(&mut self, a: &[usize], b: &[usize]) -> io::Result<()> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Restores every link cut (a link whose rule could not be removed
    /// stays listed).
    pub fn heal(&mut self) -> io::Result<()> {
        while let Some(&(from, to)) = self.cut.last() {
            let (a, b) = (node_ip(from), node_ip(to));
            sh(&[
                "ip", "rule", "del", "pref", CUT_PREF, "from", &a, "to", &b, "lookup", TABLE,
            ])?;
            self.cut.pop();
        }
        Ok(())
    }

    /// The links cut now.
    pub fn links_cut(&self) -> &[(usize, usize)] {
        &self.cut
    }
}

impl Drop for Net {
    /// A run that ends early (a failure, a panic) leaves no link cut for
    /// the next run in the same namespace.
    fn drop(&mut self) {
        let _ = self.heal();
    }
}
