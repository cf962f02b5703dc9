//! `ha-kv serve`: one node in the foreground until SIGINT or SIGTERM.
//!
//! Every configuration mistake ends here with exit status 2 and one line
//! saying what to fix, before the node touches its data.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ha_core::node::NodeOptions;
use ha_core::storage::{DataDir, StdFs, WalOptions};
use ha_core::types::NodeId;
use ha_quic::{QuicConfig, QuicNode};

use crate::cli::parse_addr;
use crate::kv::Kv;
use crate::usage_error;

/// Options of `ha-kv serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// This node's id (from 1).
    #[arg(long)]
    id: u64,
    /// Where to listen, HOST:PORT.
    #[arg(long)]
    listen: String,
    /// The initial voters, ID=HOST:PORT,... (may include this node). Read
    /// only when the data dir is new; afterwards the stored voters are used,
    /// --peers may be left out, and a different --peers is refused.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Where the node keeps its log and snapshots.
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the certificates are (from `ha-kv certs`).
    #[arg(long)]
    tls_dir: PathBuf,
    /// Start as a non-member waiting to be added (not yet supported).
    #[arg(long)]
    join: bool,
    /// Heartbeat interval in ms (also the node's tick).
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Election timeout range in ms, MIN-MAX.
    #[arg(long, default_value = "300-600")]
    election_timeout_ms: String,
    /// Take a snapshot (and compact the log) every N applied entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Serve Prometheus metrics on HOST:PORT at /metrics (a bare PORT binds
    /// 127.0.0.1).
    #[arg(long)]
    metrics: Option<String>,
    /// Refuse client requests larger than N bytes (before they reach the
    /// log), like etcd's --max-request-bytes.
    #[arg(long, default_value_t = ha_quic::transport::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Refuse writes ("no space"; reads go on) while the log beyond the last
    /// snapshot holds more than N bytes, like etcd's --quota-backend-bytes.
    /// 0: no quota.
    #[arg(long, default_value_t = ha_core::node::DEFAULT_STORAGE_QUOTA_BYTES)]
    storage_quota_bytes: u64,
}

fn timing(a: &ServeArgs) -> (Duration, u64, u64) {
    let (lo, hi) = a
        .election_timeout_ms
        .split_once('-')
        .and_then(|(l, h)| Some((l.trim().parse::<u64>().ok()?, h.trim().parse::<u64>().ok()?)))
        .unwrap_or_else(|| usage_error("--election-timeout-ms: write a range like 300-600"));
    if a.heartbeat_ms == 0 || lo <= a.heartbeat_ms || hi <= lo {
        usage_error(format!(
            "--election-timeout-ms {lo}-{hi} must be a rising range above --heartbeat-ms {}",
            a.heartbeat_ms
        ));
    }
    let tick = a.heartbeat_ms;
    (
        Duration::from_millis(tick),
        lo.div_ceil(tick),
        hi.div_ceil(tick).max(lo.div_ceil(tick) + 1),
    )
}

/// Runs the node until a signal; returns the exit status.
pub async fn serve(a: ServeArgs) -> i32 {
    if a.join {
        eprintln!("ha-kv: serve --join is not yet supported");
        return crate::EXIT_USAGE;
    }
    if a.snapshot_every == 0 {
        usage_error("--snapshot-every must be at least 1");
    }
    if a.id == 0 {
        usage_error("--id: node ids start at 1");
    }
    let limits = ha_quic::transport::QuicLimits {
        max_request_bytes: a.max_request_bytes,
        ..Default::default()
    };
    if let Err(e) = limits.validate(0) {
        usage_error(format!("--max-request-bytes: {e}"));
    }
    let me = NodeId(a.id);
    let listen = parse_addr("--listen", &a.listen);
    let peers = crate::bootstrap::parse_peers(&a.peers);
    let (tick, min_ticks, max_ticks) = timing(&a);
    let identity = ha_quic::load_node_identity(&a.tls_dir, me).unwrap_or_else(|e| {
        usage_error(format!(
            "--tls-dir: {e}; create certificates with `ha-kv certs --dir {} --nodes ...` \
             including node {}",
            a.tls_dir.display(),
            a.id
        ))
    });
    let dir = DataDir::open_for::<Kv, _>(&StdFs, &a.data_dir, &identity.cluster_id(), me)
        .unwrap_or_else(|e| usage_error(format!("--data-dir: {e}")));
    let socket = std::net::UdpSocket::bind(listen).unwrap_or_else(|e| {
        usage_error(format!(
            "--listen: cannot listen on {listen}: {e}; choose a free port"
        ))
    });
    let metrics_listener = match &a.metrics {
        Some(m) => {
            let addr = crate::metrics::listen_addr(m);
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .unwrap_or_else(|e| {
                        usage_error(format!(
                            "--metrics: cannot listen on {addr}: {e}; choose a free port"
                        ))
                    }),
            )
        }
        None => None,
    };
    // The stored voters (after storing --peers on a first start).
    let voters = crate::bootstrap::voters(&dir, me, &a.listen, &peers);
    let peers = crate::bootstrap::resolve_peers(&voters, me);
    let mut opts = NodeOptions::new(me, voters.keys().copied());
    opts.tick = tick;
    opts.raft.heartbeat_interval_ticks = 1;
    opts.raft.election_timeout_min_ticks = min_ticks;
    opts.raft.election_timeout_max_ticks = max_ticks;
    opts.snapshot_every_entries = Some(a.snapshot_every);
    opts.storage_quota_bytes = (a.storage_quota_bytes > 0).then_some(a.storage_quota_bytes);
    let mut quic = QuicConfig::new(me, listen, peers, identity);
    quic.limits.max_request_bytes = a.max_request_bytes;
    let node =
        QuicNode::start_replicated::<Kv>(opts, quic, Some(socket), dir, WalOptions::default())
            .unwrap_or_else(|e| usage_error(format!("--data-dir: {e}")));
    eprintln!("ha-kv: node {} listening on {listen}", a.id);
    if let Some(l) = metrics_listener {
        crate::metrics::spawn(l, node.handle().clone(), node.transport());
    }
    let mut status = node.handle().watch_status();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| usage_error(format!("cannot watch SIGTERM: {e}")));
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => 0,
        _ = term.recv() => 0,
        r = status.wait_for(|s| s.stopped.is_some()) => {
            let why = r.map(|s| s.stopped.clone().unwrap_or_default()).unwrap_or_default();
            eprintln!("ha-kv: node stopped: {why}");
            1
        }
    };
    node.shutdown().await;
    // The node holds the data directory's lock until it is dropped, after
    // its writers stopped.
    drop(node);
    eprintln!("ha-kv: node {} stopped", a.id);
    code
}
