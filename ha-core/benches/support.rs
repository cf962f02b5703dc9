//! What every ha benchmark shares: how long and how often to run, and the
//! median. (Included by path from the benchmarks of ha-core and ha-quic.)

// Each benchmark uses a part of this module.
#![allow(dead_code)]

use std::time::Duration;

/// How a benchmark run is sized.
pub struct Plan {
    /// `cargo test --benches` runs a benchmark without `--bench`: then it
    /// only smoke-tests, briefly, once.
    pub smoke: bool,
    /// Length of one run (`HA_BENCH_SECS`, else `default_secs`).
    pub secs: Duration,
    /// Runs per configuration (`runs`, or 1 when smoke-testing).
    pub runs: usize,
}

/// The plan from the command line and the environment.
pub fn plan(default_secs: f64, smoke_secs: f64, runs: usize) -> Plan {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("HA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(if smoke { smoke_secs } else { default_secs });
    Plan {
        smoke,
        secs: Duration::from_secs_f64(secs),
        runs: if smoke { 1 } else { runs },
    }
}

/// The median of `v` (the upper one for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}
