//! Prometheus text on `/metrics`, from a minimal HTTP/1.0 responder.
//!
//! Owns: rendering the metrics, and the responder's connection handling.
//! Invariants of the responder: at most [`MAX_CONNECTIONS`] connections are
//! served at once (the rest wait in the kernel's backlog); a client gets
//! [`IO_TIMEOUT`] to send its request head and again to take the answer; a
//! failed accept is logged and retried after [`ACCEPT_BACKOFF`], never the
//! end of the listener; a bare port binds loopback ([`listen_addr`]).
//!
//! Metrics (all prefixed `ha_`):
//! - `term`, `role{role=..}`, `commit_index`, `applied_index`, `last_index`
//! - `elections_won_total`, `proposals_total`, `applied_entries_total`
//! - `commit_latency_seconds` (histogram: proposal to answer, as leader),
//!   `fsync_latency_seconds` (histogram: one batch appended and synced)
//! - `snapshots_total`, `snapshot_index`
//! - `peer_replication_lag_entries{peer=..}`, `peer_rtt_seconds{peer=..}`
//! - `leaderless_ms`, `failovers_total`, `mttr_ms`, `mtbf_ms`,
//!   `availability` (MTBF / (MTBF + MTTR))
//! - `transport_dropped_total`, `transport_superseded_total`,
//!   `transport_protocol_errors_total`, `node_stopped`
//! - `repairing` (1 while the node repairs damaged storage from its peers),
//!   `repairing_info{found=..}` (while it does: what it found)
//! - `halted` (1 while the service is halted after a failed command under
//!   the `halt` panic policy; `ha-kv status` says where and why),
//!   `determinism_divergences_total` (commands the debug-build replay
//!   check found not deterministic on this node)

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ha_core::node::NodeHandle;
use ha_core::raft::RoleKind;
use ha_quic::QuicTransport;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::cli::parse_addr;

fn gauge_snapshot(o: &mut String, index: u64) {
    let _ = writeln!(
        o,
        "# HELP ha_snapshot_index Last index the newest snapshot covers.\n\
         # TYPE ha_snapshot_index gauge\nha_snapshot_index {index}"
    );
}

/// Renders every metric.
pub fn render(node: &NodeHandle, transport: &QuicTransport) -> String {
    let s = node.status();
    let m = node.metrics();
    let mut o = String::new();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let _ = writeln!(
            o,
            "# HELP ha_{name} {help}\n# TYPE ha_{name} gauge\nha_{name} {v}"
        );
    };
    gauge("term", "Current term.", s.term.0 as f64);
    gauge(
        "commit_index",
        "Highest committed index.",
        s.commit_index.0 as f64,
    );
    gauge(
        "applied_index",
        "Highest applied index.",
        s.applied_index.0 as f64,
    );
    gauge("last_index", "Last log index.", s.last_index.0 as f64);
    gauge(
        "leaderless_ms",
        "Time without a known leader since start.",
        m.availability.leaderless_ms as f64,
    );
    gauge(
        "mttr_ms",
        "Mean time to recover a leader.",
        m.availability.mttr_ms as f64,
    );
    gauge(
        "mtbf_ms",
        "Mean time between leader losses.",
        m.availability.mtbf_ms as f64,
    );
    gauge(
        "availability",
        "MTBF / (MTBF + MTTR).",
        m.availability.availability,
    );
    gauge(
        "node_stopped",
        "1 if the node stopped (storage failure).",
        s.stopped.is_some() as u8 as f64,
    );
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            o,
            "# HELP ha_{name} {help}\n# TYPE ha_{name} counter\nha_{name} {v}"
        );
    };
    counter(
        "elections_won_total",
        "Times this node became leader.",
        m.elections_won,
    );
    counter(
        "proposals_total",
        "Proposals accepted as leader.",
        m.proposals,
    );
    counter(
        "applied_entries_total",
        "Entries applied.",
        m.applied_entries,
    );
    counter(
        "failovers_total",
        "Leader losses followed by a new leader.",
        m.availability.failovers,
    );
    counter("snapshots_total", "Snapshots taken.", m.snapshots);
    counter(
        "transport_dropped_total",
        "Messages dropped because a peer's send queue was full.",
        transport.stats().dropped_full.load(Ordering::Relaxed),
    );
    counter(
        "transport_superseded_total",
        "Messages dropped from a peer's stream that a newer stream of that peer replaced.",
        transport.stats().dropped_superseded.load(Ordering::Relaxed),
    );
    counter(
        "transport_protocol_errors_total",
        "Connections closed for breaking the protocol.",
        transport.stats().protocol_errors.load(Ordering::Relaxed),
    );
    gauge_snapshot(&mut o, m.snapshot_index.0);
    render_repairing(&mut o, s.repair_found.as_deref());
    let _ = writeln!(
        o,
        "# HELP ha_halted 1 while the service is halted after a failed command.\n\
         # TYPE ha_halted gauge\nha_halted {}",
        u8::from(s.halted.is_some())
    );
    let _ = writeln!(
        o,
        "# HELP ha_determinism_divergences_total Commands found not deterministic here.\n\
         # TYPE ha_determinism_divergences_total counter\nha_determinism_divergences_total {}",
        s.divergences
    );
    let _ = writeln!(o, "# HELP ha_role The node's role.\n# TYPE ha_role gauge");
    for (name, r) in [
        ("leader", RoleKind::Leader),
        ("follower", RoleKind::Follower),
        ("candidate", RoleKind::Candidate),
        ("precandidate", RoleKind::PreCandidate),
    ] {
        let _ = writeln!(o, "ha_role{{role=\"{name}\"}} {}", (s.role == r) as u8);
    }
    let _ = writeln!(
        o,
        "# HELP ha_peer_replication_lag_entries Entries a follower is behind (leader only).\n\
         # TYPE ha_peer_replication_lag_entries gauge"
    );
    for p in &m.peers {
        let _ = writeln!(
            o,
            "ha_peer_replication_lag_entries{{peer=\"{}\"}} {}",
            p.id.0, p.lag
        );
    }
    let _ = writeln!(
        o,
        "# HELP ha_peer_rtt_seconds Round-trip time to a peer (QUIC estimate).\n\
         # TYPE ha_peer_rtt_seconds gauge"
    );
    for (peer, rtt) in transport.peer_rtts() {
        let _ = writeln!(
            o,
            "ha_peer_rtt_seconds{{peer=\"{}\"}} {}",
            peer.0,
            rtt.as_secs_f64()
        );
    }
    m.commit_latency.render(
        "ha_commit_latency_seconds",
        "From a proposal's arrival to its answer, on the leader.",
        &mut o,
    );
    m.fsync_latency.render(
        "ha_fsync_latency_seconds",
        "Appending and syncing one batch.",
        &mut o,
    );
    o
}

/// Longest `found` label of `ha_repairing_info`, in characters.
const MAX_FOUND_CHARS: usize = 512;

/// `ha_repairing` (0 or 1) and, while repairing, `ha_repairing_info` with
/// what was found as its `found` label (escaped as the text format wants:
/// backslash, double quote and newline; cut to [`MAX_FOUND_CHARS`]).
fn render_repairing(o: &mut String, found: Option<&str>) {
    let _ = writeln!(
        o,
        "# HELP ha_repairing 1 while the node repairs damaged storage from its peers.\n\
         # TYPE ha_repairing gauge\nha_repairing {}",
        found.is_some() as u8
    );
    let Some(found) = found else {
        return;
    };
    let mut label = String::new();
    for c in found.chars().take(MAX_FOUND_CHARS) {
        match c {
            '\\' => label.push_str("\\\\"),
            '"' => label.push_str("\\\""),
            '\n' => label.push_str("\\n"),
            c => label.push(c),
        }
    }
    let _ = writeln!(
        o,
        "# HELP ha_repairing_info What the node found damaged (while it repairs).\n\
         # TYPE ha_repairing_info gauge\nha_repairing_info{{found=\"{label}\"}} 1"
    );
}

/// Connections served at once. Beyond it, new connections wait in the
/// kernel's accept backlog until one finishes: a flood of clients cannot
/// use up the process's file descriptors (which the log also needs).
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request head (and, separately, to take
/// the answer) before its connection is closed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (for example when out of file descriptors)
/// before trying again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Largest request head read.
const MAX_HEAD_BYTES: usize = 8192;

/// The address `--metrics` names: `HOST:PORT` as given, or loopback
/// (127.0.0.1) when only a port is given (`9100` or `:9100`), so metrics
/// are not exposed beyond the machine unless asked for. Exits 2 with one
/// line when it is not an address.
pub fn listen_addr(s: &str) -> SocketAddr {
    let port = s.trim().strip_prefix(':').unwrap_or(s.trim());
    match port.parse::<u16>() {
        Ok(p) => SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
        Err(_) => parse_addr("--metrics", s.trim()),
    }
}

/// Where connections come from: a TCP listener, or a stand-in in tests.
pub trait Acceptor: Send + 'static {
    /// One connection.
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Conn>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Conn> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// The limits of the responder (see the constants).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Deadline for reading the request head, and for writing the answer.
    pub io_timeout: Duration,
    /// Pause after a failed accept.
    pub accept_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            io_timeout: IO_TIMEOUT,
            accept_backoff: ACCEPT_BACKOFF,
        }
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub fn spawn(listener: tokio::net::TcpListener, node: NodeHandle, transport: QuicTransport) {
    let render = Arc::new(move || render(&node, &transport));
    tokio::spawn(serve(listener, render, Limits::default()));
}

/// Answers connections from `acceptor` forever, at most
/// `limits.max_connections` at a time; `GET /metrics` gets `render()`.
/// A failed accept is logged and retried after a pause: it never ends the
/// loop.
pub async fn serve<A: Acceptor>(
    mut acceptor: A,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // A slot first: beyond the cap, connections wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // The semaphore is never closed.
        };
        match acceptor.accept().await {
            Ok(conn) => {
                let render = render.clone();
                tokio::spawn(async move {
                    answer(conn, &*render, limits.io_timeout).await;
                    drop(slot);
                });
            }
            Err(e) => {
                drop(slot);
                tracing::warn!(error = %e, "metrics listener: accept failed; retrying");
                tokio::time::sleep(limits.accept_backoff).await;
            }
        }
    }
}

/// Reads the request head (bounded in size and time), answers, closes.
async fn answer<C: AsyncRead + AsyncWrite + Unpin>(
    mut sock: C,
    render: &(dyn Fn() -> String + Send + Sync),
    io_timeout: Duration,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut piece = [0u8; 1024];
    let read_head = async {
        while buf.len() < MAX_HEAD_BYTES && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut piece).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&piece[..n]),
            }
        }
    };
    if tokio::time::timeout(io_timeout, read_head).await.is_err() {
        return; // Too slow: close without an answer.
    }
    let req = String::from_utf8_lossy(&buf);
    let (status, body) = if req.starts_with("GET /metrics") {
        ("200 OK", render())
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        sock.write_all(head.as_bytes()).await?;
        sock.write_all(body.as_bytes()).await?;
        sock.shutdown().await
    };
    let _ = tokio::time::timeout(io_timeout, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn repairing_is_rendered_with_what_was_found_escaped() {
        let mut o = String::new();
        render_repairing(&mut o, None);
        assert!(o.contains("\nha_repairing 0\n"), "{o}");
        assert!(!o.contains("ha_repairing_info"), "{o}");

        let mut o = String::new();
        render_repairing(&mut o, Some("wal \"x\\y\"\nat 5"));
        assert!(o.contains("\nha_repairing 1\n"), "{o}");
        assert!(
            o.contains(r#"ha_repairing_info{found="wal \"x\\y\"\nat 5"} 1"#),
            "{o}"
        );
        // One sample per line: the newline in the text did not break it.
        assert_eq!(o.lines().filter(|l| !l.starts_with('#')).count(), 2, "{o}");

        let mut o = String::new();
        render_repairing(&mut o, Some(&"d".repeat(10_000)));
        let info = o
            .lines()
            .find(|l| l.starts_with("ha_repairing_info"))
            .unwrap();
        let label = info.split('"').nth(1).expect("a quoted label");
        assert_eq!(label, "d".repeat(MAX_FOUND_CHARS));
    }

    fn limits(max_connections: usize, io_ms: u64) -> Limits {
        Limits {
            max_connections,
            io_timeout: Duration::from_millis(io_ms),
            accept_backoff: Duration::from_millis(10),
        }
    }

    fn body() -> Arc<dyn Fn() -> String + Send + Sync> {
        Arc::new(|| "ha_term 1\n".to_string())
    }

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_and_are_answered_later() {
        let (l, addr) = listener().await;
        tokio::spawn(serve(l, body(), limits(4, 30_000)));
        // Four idle clients take every slot.
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a fifth connection was served");
        drop(idle);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("answered once slots free up")
            .unwrap()
            .unwrap();
        assert!(
            got.starts_with("HTTP/1.0 200") && got.ends_with("ha_term 1\n"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn a_burst_above_the_cap_is_answered_and_the_listener_keeps_going() {
        let (l, addr) = listener().await;
        let busy = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let render: Arc<dyn Fn() -> String + Send + Sync> = {
            let (busy, peak) = (busy.clone(), peak.clone());
            Arc::new(move || {
                let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                busy.fetch_sub(1, Ordering::SeqCst);
                "ok\n".to_string()
            })
        };
        tokio::spawn(serve(l, render, limits(8, 5_000)));
        let burst: Vec<_> = (0..200).map(|_| tokio::spawn(get(addr))).collect();
        let mut answered = 0;
        for b in burst {
            if let Ok(Ok(r)) = b.await
                && r.starts_with("HTTP/1.0 200")
            {
                answered += 1;
            }
        }
        assert_eq!(answered, 200, "every connection of the burst answered");
        assert!(peak.load(Ordering::SeqCst) <= 8, "at most the cap at once");
        let after = get(addr).await.unwrap();
        assert!(after.starts_with("HTTP/1.0 200"), "{after}");
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_at_the_deadline_and_frees_its_slot() {
        let (l, addr) = listener().await;
        tokio::spawn(serve(l, body(), limits(1, 200)));
        let _silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = tokio::time::timeout(Duration::from_secs(5), get(addr))
            .await
            .expect("served after the silent client's deadline")
            .unwrap();
        assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    }

    /// Fails its first accepts (as when out of file descriptors), then
    /// accepts for real.
    struct Flaky {
        inner: TcpListener,
        failures: Arc<AtomicUsize>,
    }

    impl Acceptor for Flaky {
        type Conn = TcpStream;
        async fn accept(&mut self) -> std::io::Result<TcpStream> {
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(std::io::Error::other("Too many open files (simulated)"));
            }
            self.inner.accept().await.map(|(s, _)| s)
        }
    }

    #[tokio::test]
    async fn accept_errors_do_not_stop_the_listener() {
        let (inner, addr) = listener().await;
        let failures = Arc::new(AtomicUsize::new(5));
        let flaky = Flaky {
            inner,
            failures: failures.clone(),
        };
        tokio::spawn(serve(flaky, body(), limits(4, 5_000)));
        let got = tokio::time::timeout(Duration::from_secs(5), get(addr))
            .await
            .expect("answered after the accept errors")
            .unwrap();
        assert!(got.starts_with("HTTP/1.0 200"), "{got}");
        assert_eq!(
            failures.load(Ordering::SeqCst),
            0,
            "every error was retried"
        );
    }

    #[test]
    fn a_bare_port_binds_loopback() {
        let lo = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        assert_eq!(listen_addr("9100"), lo(9100));
        assert_eq!(listen_addr(":9100"), lo(9100));
        assert_eq!(listen_addr("127.0.0.1:9101"), lo(9101));
        assert_eq!(
            listen_addr("0.0.0.0:9102"),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9102))
        );
    }
}
