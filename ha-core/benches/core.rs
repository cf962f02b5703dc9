//! Core throughput: a 3-node cluster of Raft cores in one thread, messages
//! handed over in memory, logs in `MemLogStore`. No network, no disk: this
//! measures the protocol's own cost per proposal.
//!
//! Closed loop: each proposer keeps one proposal (or one batch) outstanding
//! and submits the next when the leader applies it. Each configuration runs
//! `RUNS` times; the median is reported.
//!
//! Run: `cargo bench -p ha-core` (set `HA_BENCH_SECS` to change the length of
//! each run, default 1 second).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::raft::{Config, InitialState, Membership, Message, Raft};
use ha_core::storage::{LogStore, MemLogStore};
use ha_core::types::{LogIndex, NodeId};

const RUNS: usize = 5;
const NODES: u64 = 3;

struct Cluster {
    nodes: Vec<Raft>,
    stores: Vec<MemLogStore>,
    queue: Vec<Message>,
}

impl Cluster {
    fn new() -> Cluster {
        let mut nodes = Vec::new();
        let mut stores = Vec::new();
        for id in 1..=NODES {
            let mut config = Config::new(NodeId(id));
            config.rng_seed = id;
            let init = InitialState {
                membership: Membership::new_voters((1..=NODES).map(NodeId)),
                ..InitialState::default()
            };
            nodes.push(Raft::new(config, init).expect("valid config"));
            stores.push(MemLogStore::new());
        }
        let mut c = Cluster {
            nodes,
            stores,
            queue: Vec::new(),
        };
        // Elect node 1 and let the cluster settle.
        while !c.nodes[0].is_leader() {
            c.nodes[0].tick();
            c.pump(&mut |_| {});
        }
        for _ in 0..10 {
            c.pump(&mut |_| {});
        }
        c
    }

    /// Handles every Ready and delivers every message until quiet; calls
    /// `applied` with each index the leader applies.
    fn pump(&mut self, applied: &mut dyn FnMut(LogIndex)) {
        loop {
            let mut busy = false;
            for k in 0..self.nodes.len() {
                while self.nodes[k].prepare_ready() {
                    busy = true;
                    let rd = self.nodes[k].ready();
                    let token = rd.token();
                    self.queue.extend(rd.messages);
                    let store = &mut self.stores[k];
                    store.append(&rd.entries).expect("append");
                    if let Some(hs) = rd.hard_state {
                        store.save_hard_state(hs).expect("hard state");
                    }
                    store.sync().expect("sync");
                    self.queue.extend(rd.persisted_messages);
                    if k == 0 {
                        for e in &rd.committed_entries {
                            applied(e.index);
                        }
                    }
                    self.nodes[k].advance(token);
                }
            }
            if self.queue.is_empty() && !busy {
                return;
            }
            for m in std::mem::take(&mut self.queue) {
                let k = (m.to.0 - 1) as usize;
                self.nodes[k].step(m).expect("valid message");
            }
        }
    }
}

/// Runs `proposers` closed-loop proposers, each proposing `batch` commands at
/// a time, for `secs`; returns proposals (commands) per second.
fn run(proposers: usize, batch: usize, secs: Duration) -> f64 {
    let mut c = Cluster::new();
    let payload = Bytes::from_static(&[7u8; 16]);
    // Last index of each outstanding batch -> proposer.
    let mut waiting: HashMap<LogIndex, usize> = HashMap::new();
    let mut idle: Vec<usize> = (0..proposers).collect();
    let mut done: u64 = 0;
    let start = Instant::now();
    let mut ticks = Instant::now();
    while start.elapsed() < secs {
        for p in idle.drain(..) {
            let (_, last, _) = c.nodes[0]
                .propose_batch(std::iter::repeat_n(payload.clone(), batch))
                .expect("node 1 leads");
            waiting.insert(last, p);
        }
        let mut finished = Vec::new();
        c.pump(&mut |i| {
            if let Some(p) = waiting.remove(&i) {
                finished.push(p);
            }
        });
        done += (finished.len() * batch) as u64;
        idle.extend(finished);
        // Keep logical time moving (heartbeats), about every 50 ms.
        if ticks.elapsed() > Duration::from_millis(50) {
            ticks = Instant::now();
            for n in &mut c.nodes {
                n.tick();
            }
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let support::Plan { secs, runs, .. } = support::plan(1.0, 0.05, RUNS);
    let cases: &[(&str, usize, usize)] = &[
        ("1 proposer, 1 command per proposal", 1, 1),
        ("64 proposers, 1 command per proposal", 64, 1),
        ("256 proposers, 1 command per proposal", 256, 1),
        ("64 proposers, batches of 16 commands", 64, 16),
    ];
    println!(
        "ha-core: 3-node in-memory cluster, 16-byte commands, median of {runs} runs of {:.2} s",
        secs.as_secs_f64()
    );
    for (name, proposers, batch) in cases {
        let rates: Vec<f64> = (0..runs).map(|_| run(*proposers, *batch, secs)).collect();
        let m = support::median(rates.clone());
        let lo = rates.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().cloned().fold(0.0, f64::max);
        println!("{name:<40} {m:>12.0} proposals/s   (min {lo:.0}, max {hi:.0})");
    }
}
