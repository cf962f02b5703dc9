//! The key-value client commands: get, put, del, cas, repl, bench.
//!
//! Every outcome maps to one JSON line and one exit status, in one place
//! (`ha_server::cli::Outcome`): done 0, not applied or cas mismatch 1,
//! unknown 3.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use ha_core::Consistency;
use ha_server::cli::{ClientArgs, Outcome, emit, usage_error};
use serde_json::json;

use crate::kv::{Kv, KvClient};

fn text(b: Option<Vec<u8>>) -> Option<String> {
    b.map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn client(c: &ClientArgs) -> KvClient {
    c.client::<Kv>()
}

async fn do_get(c: &KvClient, key: String, stale: bool) -> Outcome {
    let c = if stale {
        c.with_consistency(Consistency::Stale)
    } else {
        c.clone()
    };
    match c.get(key.into_bytes()).await {
        Ok(v) => Outcome::Done(json!({"ok": true, "value": text(v)})),
        Err(e) => Outcome::Failed(e),
    }
}

async fn do_put(c: &KvClient, key: String, value: String) -> Outcome {
    match c.put(key.into_bytes(), value.into_bytes()).await {
        Ok(_) => Outcome::Done(json!({"ok": true})),
        Err(e) => Outcome::Failed(e),
    }
}

async fn do_del(c: &KvClient, key: String) -> Outcome {
    match c.del(key.into_bytes()).await {
        Ok(_) => Outcome::Done(json!({"ok": true})),
        Err(e) => Outcome::Failed(e),
    }
}

async fn do_cas(c: &KvClient, key: String, expected: Option<String>, new: String) -> Outcome {
    match c
        .cas(
            key.into_bytes(),
            expected.map(String::into_bytes),
            new.into_bytes(),
        )
        .await
    {
        Ok(Ok(())) => Outcome::Done(json!({"ok": true})),
        Ok(Err(current)) => Outcome::Mismatch(text(current)),
        Err(e) => Outcome::Failed(e),
    }
}

/// `ha-kv get`.
pub async fn get(c: &ClientArgs, key: String, stale: bool) -> i32 {
    emit(do_get(&client(c), key, stale).await)
}
/// `ha-kv put`.
pub async fn put(c: &ClientArgs, key: String, value: String) -> i32 {
    emit(do_put(&client(c), key, value).await)
}
/// `ha-kv del`.
pub async fn del(c: &ClientArgs, key: String) -> i32 {
    emit(do_del(&client(c), key).await)
}
/// `ha-kv cas`.
pub async fn cas(c: &ClientArgs, key: String, expected: Option<String>, new: String) -> i32 {
    emit(do_cas(&client(c), key, expected, new).await)
}

/// `ha-kv repl`: one JSON line per input line, in order, flushed at once.
pub async fn repl(c: &ClientArgs) -> i32 {
    let kv = client(c);
    let kv = &kv;
    ha_server::cli::repl(|line| async move {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["get", k] => do_get(kv, k.to_string(), false).await,
            ["get", k, "--stale"] => do_get(kv, k.to_string(), true).await,
            ["put", k, v] => do_put(kv, k.to_string(), v.to_string()).await,
            ["del", k] => do_del(kv, k.to_string()).await,
            ["cas", k, old, new] => {
                let expected = (*old != "--absent").then(|| old.to_string());
                do_cas(kv, k.to_string(), expected, new.to_string()).await
            }
            _ => ha_server::cli::usage(&line, "use get K | put K V | del K | cas K OLD NEW"),
        }
    })
    .await
}

/// Options of `ha-kv bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent clients.
    #[arg(long)]
    clients: usize,
    /// Operations in all.
    #[arg(long)]
    ops: u64,
    /// Bytes per value written.
    #[arg(long)]
    value_size: usize,
    /// Fraction of operations that are reads.
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// How reads are served: `linearizable` (ReadIndex at the leader),
    /// `lease` (the leader's lease where the nodes run with
    /// `--lease-reads`, else ReadIndex) or `stale` (each read to the next
    /// node in turn, answered from what it has applied).
    #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
    consistency: ReadConsistency,
    #[command(flatten)]
    client: ClientArgs,
}

/// `bench --consistency`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ReadConsistency {
    /// ReadIndex at the leader.
    Linearizable,
    /// The leader's lease.
    Lease,
    /// Any node, possibly stale.
    Stale,
}

/// How long a bench waits for its first successful operation before it
/// gives up: three client timeouts, and never less than 10 s (a cluster
/// that is still electing its first leader is slow, not unreachable).
fn give_up_after(timeout_ms: u64) -> Duration {
    Duration::from_millis(timeout_ms.saturating_mul(3)).max(Duration::from_secs(10))
}

/// What the bench's clients share: counters, the last error, and the one
/// decision to give up (latched once, read by every client and the exit
/// code alike).
#[derive(Default)]
struct BenchShared {
    issued: AtomicU64,
    errors: AtomicU64,
    succeeded: AtomicU64,
    gave_up: std::sync::atomic::AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
}

impl BenchShared {
    /// Whether this client goes on: there are operations left, and the
    /// bench has not given up. Gives up (once, for everyone) when no
    /// operation succeeded within `limit` of the start.
    fn go_on(&self, ops: u64, started: Instant, limit: Duration) -> bool {
        if self.succeeded.load(Ordering::SeqCst) == 0 && started.elapsed() >= limit {
            self.gave_up.store(true, Ordering::SeqCst);
        }
        !self.gave_up.load(Ordering::SeqCst) && self.issued.fetch_add(1, Ordering::Relaxed) < ops
    }
}

/// `ha-kv bench`: closed loop, HDR latencies, a JSON summary last. Exits 1
/// when no operation succeeded within [`give_up_after`] of the start (the
/// summary is still printed, and the last error said on stderr).
pub async fn bench(a: BenchArgs) -> i32 {
    if a.clients == 0 || a.keys == 0 || !(0.0..=1.0).contains(&a.read_ratio) {
        usage_error("bench: --clients and --keys must be at least 1, --read-ratio in 0..=1");
    }
    let kv = client(&a.client);
    let reader = kv.with_consistency(match a.consistency {
        ReadConsistency::Linearizable => Consistency::Linearizable,
        ReadConsistency::Lease => Consistency::Lease,
        ReadConsistency::Stale => Consistency::Stale,
    });
    let shared = Arc::new(BenchShared::default());
    let bar = indicatif::ProgressBar::new(a.ops);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} ops  {per_sec}  eta {eta}")
            .expect("a valid template"),
    );
    let value = vec![b'x'; a.value_size];
    let started = Instant::now();
    let limit = give_up_after(a.client.timeout_ms);
    let tasks: Vec<_> = (0..a.clients)
        .map(|w| {
            let (kv, reader, shared, bar, value) = (
                kv.clone(),
                reader.clone(),
                shared.clone(),
                bar.clone(),
                value.clone(),
            );
            let (ops, keys, read_ratio) = (a.ops, a.keys, a.read_ratio);
            tokio::spawn(async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("a valid histogram");
                let mut rng = ha_core::rng::SplitMix64::new(w as u64 + 1);
                while shared.go_on(ops, started, limit) {
                    let key = format!("key-{}", rng.range(0, keys)).into_bytes();
                    let t0 = Instant::now();
                    let result = if rng.chance(read_ratio) {
                        reader.get(key).await.map(|_| ())
                    } else {
                        kv.put(key, value.clone()).await.map(|_| ())
                    };
                    match result {
                        Ok(()) => {
                            shared.succeeded.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(e.to_string());
                        }
                    }
                    let _ = h.record(t0.elapsed().as_micros() as u64);
                    bar.inc(1);
                }
                h
            })
        })
        .collect();
    let mut all = hdrhistogram::Histogram::<u64>::new(3).expect("a valid histogram");
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = all.add(h);
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let ops = all.len();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    let errors = shared.errors.load(Ordering::SeqCst);
    println!(
        "{}",
        json!({
            "ops": ops,
            "secs": (secs * 1000.0).round() / 1000.0,
            "ops_per_sec": (ops as f64 / secs).round(),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": all.max() as f64 / 1000.0,
            "errors": errors,
        })
    );
    if shared.gave_up.load(Ordering::SeqCst) {
        let last = shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        eprintln!(
            "{}: bench: gave up: no operation succeeded in {limit:?} ({errors} failed; the last \
             with: {})",
            ha_server::cli::program(),
            last.as_deref().unwrap_or("none finished")
        );
        return 1;
    }
    0
}
