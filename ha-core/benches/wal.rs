//! Durable appends: the write-ahead log with group commit on the real disk,
//! against the disk's raw fsync rate measured in the same run.
//!
//! - raw: a loop of one small write (128 bytes) + `fdatasync` on one file.
//! - group commit: N writer threads, each appending one 128-byte entry at a
//!   time and waiting until it is durable (closed loop). Indexes are
//!   assigned in order under a lock, as a Raft leader assigns them.
//!
//! Each configuration runs `RUNS` times; medians are reported. Files go to
//! Cargo's target temporary directory (on the same disk as the build, not a
//! tmpfs). Run: `cargo bench -p ha-core --bench wal`; `HA_BENCH_SECS` sets
//! the length of one run (default 2 seconds).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::storage::{GroupCommit, GroupOptions, WriteRequest};
use ha_core::storage::{StdFs, Wal, WalOptions};
use ha_core::types::{Entry, EntryPayload, LogIndex, Term};

const RUNS: usize = 3;
const ENTRY_BYTES: usize = 128;

fn bench_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("ha-bench")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create bench dir");
    d
}

/// Small writes + fdatasync per second on one file.
fn raw_fsync_rate(secs: Duration) -> f64 {
    let d = bench_dir("raw");
    let mut f = std::fs::File::create(d.join("raw")).expect("create");
    let buf = [7u8; ENTRY_BYTES];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct Outcome {
    appends_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    entries_per_fsync: f64,
}

fn group_commit(writers: usize, secs: Duration) -> Outcome {
    let d = bench_dir(&format!("group-{writers}"));
    let (wal, _) = Wal::open(StdFs, &d, WalOptions::default()).expect("open wal");
    let g = Arc::new(GroupCommit::start(wal, GroupOptions::default()));
    let next = Arc::new(Mutex::new(1u64));
    let done = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![7u8; ENTRY_BYTES]);
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (g, next, done, payload) = (g.clone(), next.clone(), done.clone(), payload.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let (tx, rx) = std::sync::mpsc::channel();
                while start.elapsed() < secs {
                    let t0 = Instant::now();
                    {
                        let mut n = next.lock().expect("sequencer");
                        let e = Entry {
                            index: LogIndex(*n),
                            term: Term(1),
                            payload: EntryPayload::Command(payload.clone()),
                        };
                        *n += 1;
                        let tx = tx.clone();
                        g.submit(WriteRequest {
                            finish_repair: false,
                            entries: vec![e],
                            hard_state: None,
                            compact: None,
                            install: None,
                            done: Box::new(move |r| {
                                let _ = tx.send(r.is_ok());
                            }),
                        })
                        .expect("storage thread runs");
                    }
                    assert!(rx.recv().expect("completion"), "durable append failed");
                    lat.push(t0.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer"))
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let batches = g.stats().batches.load(Ordering::Relaxed).max(1);
    let total = done.load(Ordering::Relaxed);
    Outcome {
        appends_per_sec: total as f64 / elapsed,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        entries_per_fsync: total as f64 / batches as f64,
    }
}

fn main() {
    let support::Plan { secs, runs, .. } = support::plan(2.0, 0.05, RUNS);
    let raw = support::median((0..runs).map(|_| raw_fsync_rate(secs)).collect());
    println!(
        "ha-core WAL: {ENTRY_BYTES}-byte entries, median of {runs} runs of {:.1} s, dir {}",
        secs.as_secs_f64(),
        Path::new(env!("CARGO_TARGET_TMPDIR")).display()
    );
    println!("raw write+fdatasync loop                 {raw:>10.0} /s");
    for writers in [1usize, 16, 64] {
        let outs: Vec<Outcome> = (0..runs).map(|_| group_commit(writers, secs)).collect();
        let rate = support::median(outs.iter().map(|o| o.appends_per_sec).collect());
        let p50 = support::median(outs.iter().map(|o| o.p50_ms).collect());
        let p99 = support::median(outs.iter().map(|o| o.p99_ms).collect());
        let per = support::median(outs.iter().map(|o| o.entries_per_fsync).collect());
        println!(
            "group commit, {writers:>2} writers              {rate:>10.0} appends/s  \
             ({:.1}x raw)  p50 {p50:.3} ms  p99 {p99:.3} ms  {per:.1} entries/fsync",
            rate / raw
        );
    }
}
