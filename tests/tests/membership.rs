//! Membership changes on a real QUIC cluster: every node of a 3-node
//! cluster replaced in turn (add 4, remove 1, add 5, remove 2, add 6,
//! remove 3) under a write load, every acknowledged write read back at the
//! end; the new nodes catch up by snapshot before they are promoted, and a
//! node that joined restarts from its data directory. No transport is told
//! of another node by hand: the new nodes' addresses travel with the
//! configuration, and the removed ones are forgotten.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ha_core::ClientOptions;
use ha_core::types::NodeId;
use ha_core::{Replicated, replicated};
use ha_quic::{LocalCluster, LocalOptions};
use serde::{Deserialize, Serialize};

/// A replicated set of numbers.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Seen {
    values: BTreeSet<u64>,
}

#[replicated]
impl Seen {
    /// Adds `v`; whether it was new.
    pub fn add(&mut self, v: u64) -> bool {
        self.values.insert(v)
    }
    /// Whether `v` was added.
    pub fn has(&self, v: u64) -> bool {
        self.values.contains(&v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_replaced_under_load_and_nothing_acknowledged_is_lost() {
    let opts = LocalOptions {
        snapshot_every_entries: Some(100),
        ..LocalOptions::default()
    };
    let mut cluster = LocalCluster::<Seen>::start_with(3, opts)
        .await
        .expect("cluster starts");
    // More than a snapshot's worth before any node is added.
    let client = cluster.client();
    for v in 0..300 {
        assert!(client.add(v).await.expect("a write on a healthy cluster"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1_000));
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let client = cluster.client_with(ClientOptions {
            timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        });
        let (stop, next, acked) = (stop.clone(), next.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let v = next.fetch_add(1, Ordering::Relaxed);
                if client.add(v).await.is_ok() {
                    acked.lock().unwrap().push(v);
                }
            }
        }));
    }
    let started = std::time::Instant::now();
    for old in 1..=3u64 {
        let new = cluster.add_node().await.expect("a node is added");
        // It caught up from a snapshot (the log before it was compacted).
        assert!(
            cluster.snapshots_received(new) > 0,
            "node {new} was promoted without receiving a snapshot"
        );
        cluster.remove_node(old).await.expect("a node is removed");
    }
    let took = started.elapsed();
    let during = acked.lock().unwrap().len();
    assert!(
        during > 0,
        "no write was acknowledged during the replacement"
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // Reported, not asserted (speed is measured in benchmarks).
    eprintln!(
        "rolling replacement of 3 nodes under 8 writers: {:.2} s, {during} writes acknowledged meanwhile",
        took.as_secs_f64(),
    );
    assert_eq!(cluster.node_ids(), vec![4, 5, 6]);
    let leader = cluster.leader().await.expect("a leader");
    let voters = cluster.handle(leader).unwrap().metrics().voters;
    assert_eq!(voters, vec![NodeId(4), NodeId(5), NodeId(6)]);
    let members = cluster.handle(leader).unwrap().members().await.unwrap();
    for id in 4..=6u64 {
        assert_eq!(
            members.addrs.get(&NodeId(id)),
            Some(&cluster.addr(id).unwrap().to_string()),
            "the configuration records where node {id} listens"
        );
    }
    assert_eq!(
        members.addrs.len(),
        3,
        "the removed nodes' addresses went with them"
    );
    // Every node reaches exactly the others, at the addresses the
    // configuration records (the removed ones forgotten once the leader
    // let go of them: within an election timeout of their last answer).
    let want = |me: u64| -> Vec<(u64, std::net::SocketAddr)> {
        (4..=6u64)
            .filter(|p| *p != me)
            .map(|p| (p, cluster.addr(p).unwrap()))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for id in 4..=6u64 {
        while cluster.peers_of(id) != want(id) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cluster.peers_of(id), want(id), "node {id}'s peers");
    }
    // A node that joined restarts from its data directory and serves on.
    cluster.kill(4).await;
    cluster.restart(4).await.expect("a joined node restarts");
    // A fresh client (the writers' knew only the nodes that are gone, and
    // a client does not learn new members' addresses yet): the new nodes
    // take writes, and hold every acknowledged one.
    let reader = cluster.client();
    for v in 500..550 {
        assert!(reader.add(v).await.expect("a write on the new nodes"));
    }
    for v in (0..300).chain(500..550).chain(acked) {
        assert!(reader.has(v).await.expect("a read"), "write {v} was lost");
    }
    cluster.shutdown().await;
}
