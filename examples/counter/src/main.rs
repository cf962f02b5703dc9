//! `ha-counter`: a replicated counter, start to finish.
//!
//! A plain struct and its methods, two macros, and a 3-node cluster on
//! loopback (QUIC, mutual TLS, durable logs in temporary directories). The
//! program adds through the typed client, kills the leader, keeps adding
//! through the new one, and checks that no acknowledged add was lost.

use ha_core::{ApplyContext, Replicated, replicated};
use ha_quic::LocalCluster;
use serde::{Deserialize, Serialize};

/// The replicated state: a counter and when it last changed.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Counter {
    value: i64,
    changed_at_ms: u64,
}

#[replicated]
impl Counter {
    /// Adds `delta` and returns the new value.
    pub fn add(&mut self, delta: i64, ctx: &ApplyContext) -> i64 {
        self.value += delta;
        // Leader-stamped time: the same on every replica.
        self.changed_at_ms = ctx.time_ms;
        self.value
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.value
    }

    /// When the value last changed (ms since the Unix epoch, leader time).
    pub fn changed_at(&self) -> u64 {
        self.changed_at_ms
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("ha-counter: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut cluster = LocalCluster::<Counter>::start(3).await?;
    let client = cluster.client();
    let leader = cluster.leader().await.ok_or("no leader elected")?;
    println!("3 nodes up; node {leader} leads");
    for _ in 0..10 {
        client.add(1).await?;
    }
    println!("after 10 adds: {}", client.get().await?);
    cluster.kill(leader).await;
    println!("killed node {leader}");
    for _ in 0..10 {
        client.add(1).await?;
    }
    let now = cluster.leader().await.ok_or("no new leader")?;
    let value = client.get().await?;
    println!("node {now} leads now; after 10 more adds: {value}");
    if value != 20 {
        return Err(format!("expected 20, read {value}").into());
    }
    println!("last change stamped at {} ms", client.changed_at().await?);
    cluster.shutdown().await;
    Ok(())
}
