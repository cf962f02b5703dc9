//! Crash recovery of the write-ahead log on the real file system: a child
//! process appends in a loop and is killed (SIGKILL) at a random moment,
//! again and again on the same directory. After every kill the log must
//! open, hold every batch the child reported durable, byte for byte, and
//! stay contiguous.
//!
//! The kill times come from a seed (printed on failure); `HA_SIM_SEED=s`
//! reruns with seed `s`. Timing on a real machine is not deterministic, so a
//! seed chooses the kill times, not the exact byte the kill lands on.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ha_core::rng::SplitMix64;
use ha_core::storage::{StdFs, Wal, WalOptions};
use ha_core::types::EntryPayload;

#[test]
fn acknowledged_appends_survive_kill_9_in_a_loop() {
    let seed: u64 = std::env::var("HA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = SplitMix64::new(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let mut kills = 0;
    let mut best = 0u64;
    for round in 0..25 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wal_writer"))
            .arg(&dir)
            .arg((seed * 1000 + round).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wal_writer");
        let acked = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(n) = line.trim().parse::<u64>() {
                        acked.fetch_max(n, Ordering::SeqCst);
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.range(5, 80)));
        child.kill().expect("SIGKILL the writer");
        let status = child.wait().expect("reap the writer");
        assert!(
            !status.success(),
            "seed {seed} round {round}: writer exited by itself"
        );
        reader.join().expect("reader");
        kills += 1;
        let acked = acked.load(Ordering::SeqCst);
        let (_, state) = Wal::open(StdFs, &dir, WalOptions::with_segment_max_bytes(64 << 10))
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen failed: {e}"));
        let last = state.snapshot_last.0.0 + state.entries.len() as u64;
        assert!(
            last >= acked,
            "seed {seed} round {round}: acked {acked} but log ends at {last}"
        );
        assert!(
            state.hard_state.commit.0 >= acked,
            "seed {seed} round {round}: hard state lost"
        );
        for (k, e) in state.entries.iter().enumerate() {
            let index = state.snapshot_last.0.0 + k as u64 + 1;
            assert_eq!(e.index.0, index, "seed {seed} round {round}: gap");
            let EntryPayload::Command(b) = &e.payload else {
                panic!("seed {seed} round {round}: entry {index} has the wrong payload kind")
            };
            assert_eq!(
                &b[..],
                &ha_tests::payload(index)[..],
                "seed {seed}: entry {index}"
            );
        }
        best = best.max(acked);
    }
    assert_eq!(kills, 25);
    assert!(
        best > 0,
        "seed {seed}: the writer never acknowledged anything"
    );
}
