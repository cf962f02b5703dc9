//! Exactly-once commands and linearizable queries on a real 3-node QUIC
//! cluster while leaders are killed and restarted, with a replicated type
//! defined here (the workspace has never seen it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ha_core::{Replicated, replicated};
use ha_quic::LocalCluster;
use ha_tests::lincheck::{Op, OpKind, check_counter};
use serde::{Deserialize, Serialize};

/// A replicated tally.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Tally {
    value: u64,
}

#[replicated]
impl Tally {
    /// Adds one; returns the new value.
    pub fn add(&mut self, n: u64) -> u64 {
        self.value += n;
        self.value
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.value
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_add_through_two_leader_kills_and_nothing_is_lost_or_doubled() {
    let mut cluster = LocalCluster::<Tally>::start(3)
        .await
        .expect("cluster starts");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let not_applied = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let client = cluster.client();
        let (stop, acked, unknown, not_applied) = (
            stop.clone(),
            acked.clone(),
            unknown.clone(),
            not_applied.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.add(1).await {
                    Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.is_unknown() => unknown.fetch_add(1, Ordering::Relaxed),
                    Err(_) => not_applied.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let started = Instant::now();
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let leader = cluster.leader().await.expect("a leader");
        cluster.kill(leader).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster
            .restart(leader)
            .await
            .unwrap_or_else(|e| panic!("round {round}: restart: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let value = cluster.client().get().await.expect("a linearizable read");
    let (acked, unknown) = (
        acked.load(Ordering::Relaxed),
        unknown.load(Ordering::Relaxed),
    );
    eprintln!(
        "value {value}, acknowledged {acked}, unknown {unknown}, not applied {}",
        not_applied.load(Ordering::Relaxed)
    );
    assert!(acked > 100, "too little progress: {acked}");
    assert!(
        value >= acked,
        "lost acknowledged adds: value {value} < acked {acked}"
    );
    assert!(
        value <= acked + unknown,
        "adds applied twice: value {value} > {acked} + {unknown}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_leader_changes_is_linearizable() {
    let mut cluster = LocalCluster::<Tally>::start(3)
        .await
        .expect("cluster starts");
    let epoch = Instant::now();
    let history = Arc::new(std::sync::Mutex::new(Vec::<Op>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let client = cluster.client();
        let (history, stop) = (history.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) && k < 60 {
                k += 1;
                let call = epoch.elapsed().as_micros() as u64;
                let op = if (k + w).is_multiple_of(3) {
                    match client.get().await {
                        Ok(v) => Some(Op {
                            call,
                            ret: Some(epoch.elapsed().as_micros() as u64),
                            kind: OpKind::Get,
                            result: Some(v as i64),
                        }),
                        Err(_) => None, // A failed read has no effect.
                    }
                } else {
                    match client.add(1).await {
                        Ok(v) => Some(Op {
                            call,
                            ret: Some(epoch.elapsed().as_micros() as u64),
                            kind: OpKind::Add(1),
                            result: Some(v as i64),
                        }),
                        Err(e) if e.is_unknown() => Some(Op {
                            call,
                            ret: None,
                            kind: OpKind::Add(1),
                            result: None,
                        }),
                        Err(_) => None,
                    }
                };
                if let Some(op) = op {
                    history.lock().unwrap().push(op);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = cluster.leader().await.expect("a leader");
    cluster.kill(leader).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.restart(leader).await.expect("restart");
    for w in workers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let history = history.lock().unwrap().clone();
    assert!(
        history.len() > 100,
        "only {} operations recorded",
        history.len()
    );
    assert!(
        check_counter(&history, 0),
        "the history is not linearizable: {history:?}"
    );
    cluster.shutdown().await;
}

/// A type the cluster does not run.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Stranger {
    text: String,
}

#[replicated]
impl Stranger {
    /// Sets the text.
    pub fn set(&mut self, text: String) {
        self.text = text;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_schema_is_refused_and_told_nothing_was_applied() {
    let cluster = LocalCluster::<Tally>::start(3)
        .await
        .expect("cluster starts");
    cluster.leader().await.expect("a leader");
    let addrs: Vec<std::net::SocketAddr> = cluster
        .node_ids()
        .iter()
        .filter_map(|id| cluster.addr(*id))
        .collect();
    let identity = ha_quic::load_client_identity(cluster.tls_dir()).unwrap();
    let stranger: StrangerClient =
        ha_quic::connect::<Stranger>(addrs, &identity, ha_core::ClientOptions::default()).unwrap();
    let err = stranger.set("hello".into()).await.unwrap_err();
    assert!(err.is_not_applied(), "{err}");
    assert!(err.to_string().contains("schema"), "{err}");
    // The cluster is untouched and still serves its own clients.
    assert_eq!(cluster.client().get().await.unwrap(), 0);
    cluster.shutdown().await;
}
