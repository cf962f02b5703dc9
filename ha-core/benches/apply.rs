//! The state machine's own cost per command: `Sessions::apply_log_command`
//! on a key-value type, without Raft, network or disk (decode, session
//! bookkeeping, the caught call, encoding the result).
//!
//! Run: `cargo bench -p ha-core --bench apply` (`HA_BENCH_SECS` sets the
//! length of each of the 5 runs; the median is reported).

mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use ha_core::protocol::{CommandOutcome, LogCommand, LogOp, SessionCommand};
use ha_core::sm::Sessions;
use ha_core::types::{LogIndex, Term};
use ha_core::{Replicated, replicated};
use serde::{Deserialize, Serialize};

/// A small key-value store.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Store {
    map: BTreeMap<String, Vec<u8>>,
}

#[replicated]
impl Store {
    /// Sets a key; returns whether it was new.
    pub fn put(&mut self, key: String, value: Vec<u8>) -> bool {
        self.map.insert(key, value).is_none()
    }
}

fn main() {
    let plan = support::plan(1.0, 0.05, 5);
    let bodies: Vec<Bytes> = (0..1024)
        .map(|i| {
            Bytes::from(
                postcard::to_stdvec(&StoreCommand::Put {
                    key: format!("key-{i:04}"),
                    value: vec![7; 64],
                })
                .expect("encodes"),
            )
        })
        .collect();
    let mut rates = Vec::new();
    for _ in 0..plan.runs {
        let mut s = Sessions::<Store>::new();
        let reg = LogCommand {
            time_ms: 1,
            op: LogOp::Register { secret: 9 },
        };
        let CommandOutcome::Registered { session } = s.apply_log_command(LogIndex(1), Term(1), reg)
        else {
            panic!("registers")
        };
        let start = Instant::now();
        let mut n: u64 = 0;
        while start.elapsed() < plan.secs {
            for _ in 0..256 {
                n += 1;
                let c = LogCommand {
                    time_ms: 1,
                    op: LogOp::Command(SessionCommand {
                        client: session,
                        secret: 9,
                        seq: n,
                        ack_below: n,
                        body: bodies[(n % 1024) as usize].clone(),
                    }),
                };
                let out = s.apply_log_command(LogIndex(1 + n), Term(1), c);
                assert!(matches!(out, CommandOutcome::Applied(_)));
            }
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "apply put (64-byte values, 1024 keys): {:.0} commands/s (median of {})",
        support::median(rates),
        plan.runs
    );
}
