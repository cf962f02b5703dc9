//! `ha-kv demo`: a 3-node cluster in this process, put through its paces.
//!
//! It writes and reads through the typed client, kills the leader the way
//! kill -9 would, measures how long the cluster takes to serve again, and
//! checks that every acknowledged write survived. Exit 0 means all of that
//! held.

use std::time::{Duration, Instant};

use ha_quic::LocalCluster;

use ha_core::Replicated;

use crate::kv::Kv;

/// The typed client the demo drives.
type KvClient = <Kv as Replicated>::Client;

fn step(msg: impl std::fmt::Display) {
    println!("  \u{2022} {msg}");
}

/// Runs the demo; returns the exit status.
pub async fn demo() -> i32 {
    match run().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ha-kv demo failed: {e}");
            1
        }
    }
}

/// What the demo's steps fail with: any error, printed as it is.
type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// The keys and values the cluster acknowledged, in the order it did.
type Acked = Vec<(String, String)>;

async fn run() -> Result<(), DemoError> {
    println!(
        "ha-kv demo: a replicated key-value store on 3 nodes (QUIC + mutual TLS, durable logs)\n"
    );
    let t0 = Instant::now();
    let mut cluster = LocalCluster::<Kv>::start(3).await?;
    step(format!(
        "started nodes {:?} on {}",
        cluster.node_ids(),
        cluster
            .node_ids()
            .iter()
            .filter_map(|i| cluster.addr(*i))
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let leader = cluster.leader().await.ok_or("no leader was elected")?;
    step(format!(
        "node {leader} won the election after {} ms",
        t0.elapsed().as_millis()
    ));
    let kv = cluster.client();
    let mut acked = write_and_read(&kv).await?;
    println!();
    let recovered = fail_over(&mut cluster, &kv, leader, &mut acked).await?;
    cluster.restart(leader).await?;
    step(format!(
        "restarted node {leader} from its data directory; it rejoins as a follower"
    ));
    read_back(&kv, &acked).await?;
    cluster.shutdown().await;
    println!(
        "\ndone in {:.1} s. Recovery after losing the leader: {} ms.",
        t0.elapsed().as_secs_f64(),
        recovered.as_millis()
    );
    Ok(())
}

/// Writes 50 keys, reads one back linearizably and swaps it with a
/// compare-and-set; returns what was acknowledged.
async fn write_and_read(kv: &KvClient) -> Result<Acked, DemoError> {
    let mut acked = Acked::new();
    let t = Instant::now();
    for i in 1..=50 {
        let (k, v) = (format!("city-{i:02}"), format!("population-{}", i * 1000));
        kv.put(k.clone().into_bytes(), v.clone().into_bytes())
            .await?;
        acked.push((k, v));
    }
    step(format!(
        "wrote 50 keys through the leader in {} ms (each one durable on a majority)",
        t.elapsed().as_millis()
    ));
    let v = kv.get(b"city-07".to_vec()).await?;
    step(format!(
        "linearizable read of city-07: {}",
        String::from_utf8_lossy(&v.ok_or("city-07 is missing")?)
    ));
    let swapped = kv
        .cas(
            b"city-07".to_vec(),
            Some(b"population-7000".to_vec()),
            b"population-7001".to_vec(),
        )
        .await?;
    step(format!(
        "compare-and-set city-07 7000 -> 7001: {}",
        if swapped.is_ok() { "done" } else { "mismatch" }
    ));
    // A mismatch leaves 7000 in place, and the read-back then fails.
    acked[6].1 = "population-7001".into();
    Ok(acked)
}

/// Kills the leader, keeps writing until a write succeeds again, then
/// writes 19 more; returns how long the cluster took to serve again.
async fn fail_over(
    cluster: &mut LocalCluster<Kv>,
    kv: &KvClient,
    leader: u64,
    acked: &mut Acked,
) -> Result<Duration, DemoError> {
    step(format!(
        "killing the leader, node {leader}, without warning (like kill -9)"
    ));
    let killed_at = Instant::now();
    cluster.kill(leader).await;
    // Keep writing: the first write that succeeds marks recovery.
    let mut n = 0;
    loop {
        n += 1;
        let (k, v) = (format!("after-failover-{n}"), format!("v{n}"));
        match kv.put(k.clone().into_bytes(), v.clone().into_bytes()).await {
            Ok(_) => {
                acked.push((k, v));
                break;
            }
            Err(e) if killed_at.elapsed() < Duration::from_secs(10) => {
                tracing::debug!("write during failover: {e}");
            }
            Err(e) => return Err(format!("the cluster did not recover: {e}").into()),
        }
    }
    let recovered = killed_at.elapsed();
    let new_leader = cluster.leader().await.ok_or("no new leader")?;
    step(format!(
        "node {new_leader} took over; writes flowed again {} ms after the kill",
        recovered.as_millis()
    ));
    for i in 2..=20 {
        let (k, v) = (format!("after-failover-{i}"), format!("v{i}"));
        kv.put(k.clone().into_bytes(), v.clone().into_bytes())
            .await?;
        acked.push((k, v));
    }
    step("wrote 20 more keys on the surviving majority");
    Ok(recovered)
}

/// Reads every acknowledged key back; any that is missing or different
/// fails the demo.
async fn read_back(kv: &KvClient, acked: &Acked) -> Result<(), DemoError> {
    let mut missing = 0;
    for (k, v) in acked {
        let got = kv.get(k.clone().into_bytes()).await?;
        if got.as_deref() != Some(v.as_bytes()) {
            missing += 1;
            eprintln!(
                "  ! {k}: expected {v}, read {:?}",
                got.map(|g| String::from_utf8_lossy(&g).into_owned())
            );
        }
    }
    if missing > 0 {
        return Err(format!("{missing} acknowledged writes were lost").into());
    }
    step(format!(
        "all {} acknowledged writes read back intact (linearizable reads)",
        acked.len()
    ));
    let count = kv.key_count().await?;
    step(format!("the store holds {count} keys"));
    Ok(())
}
