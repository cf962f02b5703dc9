//! `ha-kv demo`: a 3-node cluster in this process, put through its paces.
//!
//! It writes and reads through the typed client, kills the leader the way
//! kill -9 would, measures how long the cluster takes to serve again, and
//! checks that every acknowledged write survived. Exit 0 means all of that
//! held.

use std::time::{Duration, Instant};

use ha_quic::LocalCluster;

use crate::kv::Kv;

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

async fn run() -> Result<(), String> {
    println!(
        "ha-kv demo: a replicated key-value store on 3 nodes (QUIC + mutual TLS, durable logs)\n"
    );
    let t0 = Instant::now();
    let mut cluster = LocalCluster::<Kv>::start(3)
        .await
        .map_err(|e| e.to_string())?;
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
    let mut acked: Vec<(String, String)> = Vec::new();
    let t = Instant::now();
    for i in 1..=50 {
        let (k, v) = (format!("city-{i:02}"), format!("population-{}", i * 1000));
        kv.put(k.clone().into_bytes(), v.clone().into_bytes())
            .await
            .map_err(|e| e.to_string())?;
        acked.push((k, v));
    }
    step(format!(
        "wrote 50 keys through the leader in {} ms (each one durable on a majority)",
        t.elapsed().as_millis()
    ));
    let v = kv
        .get(b"city-07".to_vec())
        .await
        .map_err(|e| e.to_string())?;
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
        .await
        .map_err(|e| e.to_string())?;
    step(format!(
        "compare-and-set city-07 7000 -> 7001: {}",
        if swapped.is_ok() { "done" } else { "mismatch" }
    ));
    acked[6].1 = "population-7001".into();

    println!();
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
            Err(e) => return Err(format!("the cluster did not recover: {e}")),
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
            .await
            .map_err(|e| e.to_string())?;
        acked.push((k, v));
    }
    step("wrote 20 more keys on the surviving majority");

    cluster.restart(leader).await.map_err(|e| e.to_string())?;
    step(format!(
        "restarted node {leader} from its data directory; it rejoins as a follower"
    ));

    let mut missing = 0;
    for (k, v) in &acked {
        let got = kv
            .get(k.clone().into_bytes())
            .await
            .map_err(|e| e.to_string())?;
        if got.as_deref() != Some(v.as_bytes()) {
            missing += 1;
            eprintln!(
                "  ! {k}: expected {v}, read {:?}",
                got.map(|g| String::from_utf8_lossy(&g).into_owned())
            );
        }
    }
    if missing > 0 {
        return Err(format!("{missing} acknowledged writes were lost"));
    }
    step(format!(
        "all {} acknowledged writes read back intact (linearizable reads)",
        acked.len()
    ));
    let count = kv.key_count().await.map_err(|e| e.to_string())?;
    step(format!("the store holds {count} keys"));
    cluster.shutdown().await;
    println!(
        "\ndone in {:.1} s. Recovery after losing the leader: {} ms.",
        t0.elapsed().as_secs_f64(),
        recovered.as_millis()
    );
    Ok(())
}
