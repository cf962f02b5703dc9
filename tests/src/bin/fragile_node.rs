//! One node of a `Fragile` cluster (see `ha_tests::fragile`), for tests
//! that run a cluster as separate processes. Runs until stdin closes or the
//! process is killed.
//!
//! Usage: `fragile_node ID DATA_DIR TLS_DIR 1=HOST:PORT,2=HOST:PORT,...`

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};

use ha_core::node::NodeOptions;
use ha_core::storage::{DataDir, StdFs, WalOptions};
use ha_core::types::NodeId;
use ha_quic::{QuicConfig, QuicNode, load_node_identity};
use ha_tests::fragile::Fragile;

fn fail(what: String) -> ! {
    eprintln!("fragile_node: {what}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [id, data, tls, cluster] = args.as_slice() else {
        fail("usage: fragile_node ID DATA_DIR TLS_DIR 1=HOST:PORT,...".into())
    };
    let me = NodeId(id.parse().unwrap_or_else(|_| fail(format!("bad id {id}"))));
    let addrs: BTreeMap<NodeId, SocketAddr> = cluster
        .split(',')
        .map(|p| {
            let (i, a) = p
                .split_once('=')
                .unwrap_or_else(|| fail(format!("bad peer {p}")));
            let i = i
                .parse()
                .unwrap_or_else(|_| fail(format!("bad peer id {i}")));
            let a = a
                .parse()
                .unwrap_or_else(|_| fail(format!("bad address {a}")));
            (NodeId(i), a)
        })
        .collect();
    let identity = load_node_identity(std::path::Path::new(tls), me)
        .unwrap_or_else(|e| fail(format!("certificates: {e}")));
    let dir = DataDir::open_for::<Fragile, _>(
        &StdFs,
        std::path::Path::new(data),
        &identity.cluster_id(),
        me,
    )
    .unwrap_or_else(|e| fail(format!("data dir: {e}")));
    let stored = dir
        .bootstrap_or_check_membership(
            &StdFs,
            &addrs.iter().map(|(i, a)| (*i, a.to_string())).collect(),
        )
        .unwrap_or_else(|e| fail(format!("membership: {e}")));
    let listen = addrs[&me];
    let socket = UdpSocket::bind(listen).unwrap_or_else(|e| fail(format!("bind {listen}: {e}")));
    let peers = addrs
        .iter()
        .filter(|(p, _)| **p != me)
        .map(|(p, a)| (*p, *a))
        .collect();
    let mut opts = NodeOptions::new(me, stored.voters.keys().copied());
    opts.raft.heartbeat_interval_ticks = 1;
    let quic = QuicConfig::new(me, listen, peers, identity);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("runtime: {e}")));
    rt.block_on(async move {
        let node = QuicNode::start_replicated::<Fragile>(
            opts,
            quic,
            Some(socket),
            dir,
            WalOptions::default(),
        )
        .unwrap_or_else(|e| fail(format!("start: {e}")));
        eprintln!("fragile_node: node {} listening on {listen}", me.0);
        // Until stdin closes (the test dropped its end) or a kill.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
        node.shutdown().await;
    });
}
