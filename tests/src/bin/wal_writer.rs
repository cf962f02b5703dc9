//! A child process for crash tests: appends to a write-ahead log in a loop
//! and prints the last index of every batch once it is durable, until it is
//! killed. Usage: `wal_writer DIR SEED`.
//!
//! Entry `i` carries `payload(i)`, so a reader can check every byte.

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use ha_core::rng::SplitMix64;
use ha_core::storage::{LogStore, StdFs, Wal, WalOptions};
use ha_core::types::{Entry, EntryPayload, HardState, LogIndex, Term};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: wal_writer DIR SEED"));
    let seed: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("usage: wal_writer DIR SEED");
    let opts = WalOptions::with_segment_max_bytes(64 << 10);
    let (mut wal, state) = Wal::open(StdFs, &dir, opts).unwrap_or_else(|e| {
        eprintln!("wal_writer: {e}");
        std::process::exit(2);
    });
    let mut rng = SplitMix64::new(seed);
    let mut last = wal.last_index().0;
    let term = state.hard_state.term.0 + 1;
    let out = std::io::stdout();
    loop {
        let n = rng.range(1, 40);
        let entries: Vec<Entry> = (last + 1..=last + n)
            .map(|i| Entry {
                index: LogIndex(i),
                term: Term(term),
                payload: EntryPayload::Command(Bytes::from(ha_tests::payload(i))),
            })
            .collect();
        wal.append(&entries).expect("append");
        last += n;
        wal.save_hard_state(HardState {
            term: Term(term),
            vote: None,
            commit: LogIndex(last),
        })
        .expect("hard state");
        if rng.chance(0.05) && last > 500 {
            // A snapshot covers all but the last 200 entries.
            wal.compact(LogIndex(last - 200), Term(term))
                .expect("compact");
        }
        wal.sync().expect("sync");
        let mut o = out.lock();
        writeln!(o, "{last}").expect("stdout");
        o.flush().expect("stdout");
    }
}
