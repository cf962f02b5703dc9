//! The key-value client commands: get, put, del, cas, repl, bench.
//!
//! Every outcome maps to one JSON line and one exit status, in one place
//! (`ha_server::cli::Outcome`): done 0, not applied or cas mismatch 1,
//! unknown 3.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Args;
use ha_core::Consistency;
use ha_server::cli::{ClientArgs, Outcome, emit, usage_error};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

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
    use std::io::Write;
    let kv = client(c);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let outcome = match words.as_slice() {
            [] => continue,
            ["get", k] => do_get(&kv, k.to_string(), false).await,
            ["get", k, "--stale"] => do_get(&kv, k.to_string(), true).await,
            ["put", k, v] => do_put(&kv, k.to_string(), v.to_string()).await,
            ["del", k] => do_del(&kv, k.to_string()).await,
            ["cas", k, old, new] => {
                let expected = (*old != "--absent").then(|| old.to_string());
                do_cas(&kv, k.to_string(), expected, new.to_string()).await
            }
            _ => Outcome::Done(json!({
                "ok": false,
                "error": "usage",
                "message": format!("cannot parse '{line}': use get K | put K V | del K | cas K OLD NEW"),
            })),
        };
        let (json, _) = outcome.render();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
    }
    0
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
    #[command(flatten)]
    client: ClientArgs,
}

/// `ha-kv bench`: closed loop, HDR latencies, a JSON summary last.
pub async fn bench(a: BenchArgs) -> i32 {
    if a.clients == 0 || a.keys == 0 || !(0.0..=1.0).contains(&a.read_ratio) {
        usage_error("bench: --clients and --keys must be at least 1, --read-ratio in 0..=1");
    }
    let kv = client(&a.client);
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let succeeded = Arc::new(AtomicU64::new(0));
    let bar = indicatif::ProgressBar::new(a.ops);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} ops  {per_sec}  eta {eta}")
            .expect("a valid template"),
    );
    let value = vec![b'x'; a.value_size];
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.clients)
        .map(|w| {
            let (kv, issued, errors, succeeded, bar, value) = (
                kv.clone(),
                issued.clone(),
                errors.clone(),
                succeeded.clone(),
                bar.clone(),
                value.clone(),
            );
            let (ops, keys, read_ratio, clients) = (a.ops, a.keys, a.read_ratio, a.clients);
            tokio::spawn(async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("a valid histogram");
                let mut rng = ha_core::rng::SplitMix64::new(w as u64 + 1);
                while issued.fetch_add(1, Ordering::Relaxed) < ops
                    && !gave_up(&succeeded, &errors, clients)
                {
                    let key = format!("key-{}", rng.range(0, keys)).into_bytes();
                    let t0 = Instant::now();
                    let ok = if rng.chance(read_ratio) {
                        kv.get(key).await.is_ok()
                    } else {
                        kv.put(key, value.clone()).await.is_ok()
                    };
                    if ok {
                        succeeded.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
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
    println!(
        "{}",
        json!({
            "ops": ops,
            "secs": (secs * 1000.0).round() / 1000.0,
            "ops_per_sec": (ops as f64 / secs).round(),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "errors": errors.load(Ordering::Relaxed),
        })
    );
    if gave_up(&succeeded, &errors, a.clients) {
        eprintln!(
            "{}: bench: gave up: none of the first {} operations succeeded (is the cluster up, \
             and are --cluster and --tls-dir right?)",
            ha_server::cli::program(),
            errors.load(Ordering::Relaxed)
        );
        return 1;
    }
    0
}

/// Whether a bench stops early: every client's operation failed at least
/// once on average (each after the client's timeout) and none succeeded,
/// so the cluster is unreachable rather than slow. Without this, a bench
/// against no cluster would wait out every one of its operations.
fn gave_up(succeeded: &AtomicU64, errors: &AtomicU64, clients: usize) -> bool {
    succeeded.load(Ordering::Relaxed) == 0 && errors.load(Ordering::Relaxed) >= clients as u64
}
