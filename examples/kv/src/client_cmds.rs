//! The client commands: get, put, del, cas, status, repl, bench.
//!
//! Every outcome maps to one JSON line and one exit status, in one place
//! ([`Outcome`]): done 0, not applied or cas mismatch 1, unknown 3.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use ha_core::protocol::{AvailabilityView, ClientRequest, ClientResponse, StatusView};
use ha_core::{ClientOptions, Consistency};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::cli::{ClientArgs, parse_addr};
use crate::kv::{Kv, KvClient};
use crate::usage_error;

/// What a client command ends in.
pub enum Outcome {
    /// Done; the JSON line.
    Done(Value),
    /// A compare-and-set saw another value.
    Mismatch(Option<String>),
    /// An error.
    Failed(ha_core::Error),
}

impl Outcome {
    /// The JSON line and the exit status.
    pub fn render(self) -> (Value, i32) {
        match self {
            Outcome::Done(v) => (v, 0),
            Outcome::Mismatch(cur) => (json!({"ok": false, "error": "mismatch", "value": cur}), 1),
            Outcome::Failed(e) if e.is_unknown() => (
                json!({"ok": null, "error": "unknown", "message": e.to_string()}),
                3,
            ),
            Outcome::Failed(e) => {
                let code = match e {
                    ha_core::Error::Query(_) => "unavailable",
                    ha_core::Error::Failed(_) => "failed",
                    _ => "not_applied",
                };
                (
                    json!({"ok": false, "error": code, "message": e.to_string()}),
                    1,
                )
            }
        }
    }
}

fn text(b: Option<Vec<u8>>) -> Option<String> {
    b.map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn addrs(c: &ClientArgs) -> Vec<std::net::SocketAddr> {
    c.cluster
        .iter()
        .map(|a| parse_addr("--cluster", a))
        .collect()
}

fn client(c: &ClientArgs) -> KvClient {
    let identity = ha_quic::load_client_identity(&c.tls_dir).unwrap_or_else(|e| {
        usage_error(format!(
            "--tls-dir: {e}; create certificates with `ha-kv certs`"
        ))
    });
    let opts = ClientOptions {
        timeout: Duration::from_millis(c.timeout_ms),
        attempt_timeout: Duration::from_millis(c.timeout_ms.clamp(100, 1500)),
        ..ClientOptions::default()
    };
    ha_quic::connect::<Kv>(addrs(c), &identity, opts)
        .unwrap_or_else(|e| usage_error(format!("cannot create a client: {e}")))
}

fn emit(o: Outcome) -> i32 {
    let (line, code) = o.render();
    println!("{line}");
    code
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
/// `ha-kv panic-policy`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Answer a failed command as failed and go on.
    Continue,
    /// Stop applying after a failed command until `resume`.
    Halt,
}

/// `ha-kv panic-policy`.
pub async fn panic_policy(c: &ClientArgs, policy: PolicyArg) -> i32 {
    let (p, name) = match policy {
        PolicyArg::Continue => (ha_core::sm::PanicPolicy::Continue, "continue"),
        PolicyArg::Halt => (ha_core::sm::PanicPolicy::Halt, "halt"),
    };
    emit(match client(c).inner().set_panic_policy(p).await {
        Ok(()) => Outcome::Done(json!({"ok": true, "panic_policy": name})),
        Err(e) => Outcome::Failed(e),
    })
}

/// `ha-kv resume`.
pub async fn resume(c: &ClientArgs, index: u64) -> i32 {
    emit(match client(c).inner().resume(index).await {
        Ok(at) => Outcome::Done(json!({"ok": true, "resumed_at": at})),
        Err(e) => Outcome::Failed(e),
    })
}
/// `ha-kv cas`.
pub async fn cas(c: &ClientArgs, key: String, expected: Option<String>, new: String) -> i32 {
    emit(do_cas(&client(c), key, expected, new).await)
}

/// One `status` line, with the contract's field names and order (the wire
/// type's `last_index` is the contract's `last_log_index`).
#[derive(serde::Serialize)]
struct StatusLine<'a> {
    id: u64,
    role: &'a str,
    term: u64,
    leader: Option<u64>,
    commit_index: u64,
    applied_index: u64,
    last_log_index: u64,
    snapshot_index: u64,
    voters: &'a [u64],
    learners: &'a [u64],
    availability: &'a AvailabilityView,
    /// Present while the node repairs damaged storage from its peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    repairing: Option<&'a str>,
    /// Present while the service is halted after a failed command.
    #[serde(skip_serializing_if = "Option::is_none")]
    halted: Option<&'a str>,
    /// What a failed command does: continue or halt.
    #[serde(skip_serializing_if = "Option::is_none")]
    panic_policy: Option<&'a str>,
    /// Present when the determinism check found a command that is not.
    #[serde(skip_serializing_if = "is_zero")]
    divergences: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The JSON line `ha-kv status` prints for a node's status.
fn status_line(s: &StatusView) -> String {
    let line = StatusLine {
        id: s.id,
        // The contract's roles: leader, follower, candidate, learner.
        role: if s.role == "precandidate" {
            "candidate"
        } else {
            &s.role
        },
        term: s.term,
        leader: s.leader,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_log_index: s.last_index,
        snapshot_index: s.snapshot_index,
        voters: &s.voters,
        learners: &s.learners,
        availability: &s.availability,
        repairing: s.repairing.as_deref(),
        halted: s.halted.as_deref(),
        panic_policy: s.panic_policy.as_deref(),
        divergences: s.divergences,
    };
    serde_json::to_string(&line).expect("a status line encodes")
}

/// `ha-kv status`: one JSON line per reachable node; the rest on stderr.
pub async fn status(c: &ClientArgs) -> i32 {
    let identity = ha_quic::load_client_identity(&c.tls_dir).unwrap_or_else(|e| {
        usage_error(format!(
            "--tls-dir: {e}; create certificates with `ha-kv certs`"
        ))
    });
    let timeout = Duration::from_millis(c.timeout_ms);
    let mut reachable = 0;
    for addr in addrs(c) {
        let asked = async {
            let q = ha_quic::QuicClient::connect(addr, "localhost", &identity)
                .await
                .map_err(|e| e.to_string())?;
            q.request(&ClientRequest::Status)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(ClientResponse::Status(s))) => {
                reachable += 1;
                println!("{}", status_line(&s));
            }
            Ok(Ok(other)) => eprintln!("ha-kv: node at {addr} answered oddly: {other:?}"),
            Ok(Err(e)) => eprintln!("ha-kv: node at {addr} unreachable: {e}"),
            Err(_) => eprintln!("ha-kv: node at {addr} unreachable: no answer in {timeout:?}"),
        }
    }
    if reachable > 0 { 0 } else { 1 }
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
    let bar = indicatif::ProgressBar::new(a.ops);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} ops  {per_sec}  eta {eta}")
            .expect("a valid template"),
    );
    let value = vec![b'x'; a.value_size];
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.clients)
        .map(|w| {
            let (kv, issued, errors, bar, value) = (
                kv.clone(),
                issued.clone(),
                errors.clone(),
                bar.clone(),
                value.clone(),
            );
            let (ops, keys, read_ratio) = (a.ops, a.keys, a.read_ratio);
            tokio::spawn(async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("a valid histogram");
                let mut rng = ha_core::raft::rng::SplitMix64::new(w as u64 + 1);
                while issued.fetch_add(1, Ordering::Relaxed) < ops {
                    let key = format!("key-{}", rng.range(0, keys)).into_bytes();
                    let t0 = Instant::now();
                    let ok = if rng.chance(read_ratio) {
                        kv.get(key).await.is_ok()
                    } else {
                        kv.put(key, value.clone()).await.is_ok()
                    };
                    if !ok {
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
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_uses_the_contract_field_names() {
        let s = StatusView {
            id: 1,
            role: "precandidate".into(),
            term: 7,
            leader: None,
            commit_index: 120,
            applied_index: 120,
            last_index: 121,
            snapshot_index: 100,
            voters: vec![1, 2, 3],
            learners: vec![],
            availability: AvailabilityView::default(),
            repairing: None,
            halted: None,
            panic_policy: Some("continue".into()),
            divergences: 0,
        };
        let line = status_line(&s);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["last_log_index"], 121, "{line}");
        assert_eq!(v["panic_policy"], "continue", "{line}");
        assert!(
            v.get("divergences").is_none(),
            "shown only when found: {line}"
        );
        assert!(v.get("last_index").is_none(), "{line}");
        assert_eq!(v["role"], "candidate");
        assert!(line.starts_with(r#"{"id":1,"role":"candidate","term":7,"leader":null,"#));
    }
}
