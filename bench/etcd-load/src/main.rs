//! `etcd-load`: the same closed-loop workload as `ha-kv bench`, against
//! etcd, so that `bench/compare-etcd.sh` puts the two side by side.
//!
//! Every client runs one operation at a time (a put of `--value-size`
//! bytes, or with `--read-ratio` a linearizable get) on a key drawn
//! uniformly from `--keys`, until `--ops` operations have been issued in
//! all. Clients share `--conns` gRPC connections, all to the leader (found
//! by asking each endpoint for its status), so no request pays a
//! follower's forwarding hop: etcd gets its best case. Prints one JSON line
//! in `ha-kv bench`'s shape: ops, secs, ops_per_sec, p50/p99/p999 in ms,
//! errors.
//!
//!     etcd-load --endpoints http://127.0.0.1:2379,... --clients 64 \
//!         --ops 40000 [--value-size 128] [--keys 10000] [--read-ratio 0] [--conns 1]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

struct Args {
    endpoints: Vec<String>,
    clients: usize,
    ops: u64,
    value_size: usize,
    keys: u64,
    read_ratio: f64,
    conns: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "etcd-load: {msg}\nusage: etcd-load --endpoints URL,... --clients N --ops N \
         [--value-size B] [--keys N] [--read-ratio R] [--conns N]"
    );
    std::process::exit(2)
}

fn num<N: std::str::FromStr>(flag: &str, v: &str) -> N {
    v.parse()
        .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
}

fn parse_args() -> Args {
    let mut a = Args {
        endpoints: Vec::new(),
        clients: 0,
        ops: 0,
        value_size: 128,
        keys: 10_000,
        read_ratio: 0.0,
        conns: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--endpoints" => a.endpoints = v.split(',').map(str::to_owned).collect(),
            "--clients" => a.clients = num(&flag, &v),
            "--ops" => a.ops = num(&flag, &v),
            "--value-size" => a.value_size = num(&flag, &v),
            "--keys" => a.keys = num(&flag, &v),
            "--read-ratio" => a.read_ratio = num(&flag, &v),
            "--conns" => a.conns = num(&flag, &v),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if a.endpoints.is_empty() || a.clients == 0 || a.keys == 0 || a.conns == 0 {
        usage("--endpoints, --clients, --keys and --conns must be given and non-zero");
    }
    if !(0.0..=1.0).contains(&a.read_ratio) {
        usage("--read-ratio must be within 0..=1");
    }
    a
}

/// The endpoint of the member that leads, asked of every endpoint until
/// one knows (retried for up to 30 s: a fresh cluster may still elect).
async fn leader_endpoint(endpoints: &[String]) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no endpoint answered");
    while Instant::now() < deadline {
        for e in endpoints {
            let status = async {
                let mut c = Client::connect([e.as_str()], None).await?;
                c.status().await
            }
            .await;
            match status {
                Ok(s) => {
                    let me = s.header().map(|h| h.member_id());
                    if s.leader() != 0 && me == Some(s.leader()) {
                        return Ok(e.clone());
                    }
                }
                Err(err) => last = format!("{e}: {err}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// SplitMix64: the same small generator `ha-kv bench` draws keys with.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let leader = leader_endpoint(&a.endpoints).await.unwrap_or_else(|e| {
        eprintln!("etcd-load: no leader found: {e}");
        std::process::exit(1)
    });
    let mut conns = Vec::with_capacity(a.conns);
    for _ in 0..a.conns {
        match Client::connect([leader.as_str()], None).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!("etcd-load: cannot connect to {leader}: {e}");
                std::process::exit(1)
            }
        }
    }
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let value = vec![b'x'; a.value_size];
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.clients)
        .map(|w| {
            let mut c = conns[w % conns.len()].clone();
            let (issued, errors, value) = (issued.clone(), errors.clone(), value.clone());
            let (ops, keys, read_ratio) = (a.ops, a.keys, a.read_ratio);
            tokio::spawn(async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("a valid histogram");
                let mut rng = Rng(w as u64 + 1);
                while issued.fetch_add(1, Ordering::Relaxed) < ops {
                    let key = format!("key-{}", rng.below(keys));
                    let t0 = Instant::now();
                    let ok = if rng.chance(read_ratio) {
                        c.get(key, None::<GetOptions>).await.is_ok()
                    } else {
                        c.put(key, value.clone(), None).await.is_ok()
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = h.record(t0.elapsed().as_micros() as u64);
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
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "ops": all.len(),
            "secs": (secs * 1000.0).round() / 1000.0,
            "ops_per_sec": (all.len() as f64 / secs).round(),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "errors": errors,
        })
    );
    if errors == all.len() {
        std::process::exit(1)
    }
}
