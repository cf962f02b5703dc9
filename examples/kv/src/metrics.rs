//! Prometheus text on `/metrics`, from a minimal HTTP/1.0 responder.
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
//! - `transport_dropped_total`, `transport_protocol_errors_total`,
//!   `node_stopped`

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use ha_core::node::NodeHandle;
use ha_core::raft::RoleKind;
use ha_quic::QuicTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        "transport_protocol_errors_total",
        "Connections closed for breaking the protocol.",
        transport.stats().protocol_errors.load(Ordering::Relaxed),
    );
    gauge_snapshot(&mut o, m.snapshot_index.0);
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

/// Serves `/metrics` on `listener` until the process ends.
pub fn spawn(listener: tokio::net::TcpListener, node: NodeHandle, transport: QuicTransport) {
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (node, transport) = (node.clone(), transport.clone());
            tokio::spawn(async move {
                // Read the request head (bounded), then answer and close.
                let mut buf = Vec::with_capacity(1024);
                let mut piece = [0u8; 1024];
                let read_head = async {
                    while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut piece).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&piece[..n]),
                        }
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read_head).await;
                let req = String::from_utf8_lossy(&buf);
                let (status, body) = if req.starts_with("GET /metrics") {
                    ("200 OK", render(&node, &transport))
                } else {
                    ("404 Not Found", "try /metrics\n".to_string())
                };
                let head = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
}
