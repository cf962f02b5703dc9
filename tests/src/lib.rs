//! # ha-tests
//!
//! The deterministic simulator ([`sim`]) and, in `tests/`, the scenario and
//! fuzzing tests that drive it; the text scenarios of the core
//! ([`interaction`], scripts in `testdata/`). Later, integration tests that start real
//! QUIC clusters live here too.
//!
//! ## Running the simulator
//! - `cargo test --release -p ha-tests --test sim` runs the default seeds.
//! - `HA_SIM_SEEDS=5000 cargo test --release -p ha-tests --test sim` runs more.
//! - `HA_SIM_SEED=1234 cargo test --release -p ha-tests --test sim` replays
//!   exactly one seed (a failure prints the seed to use).

pub mod fragile;
pub mod interaction;
pub mod lincheck;
pub mod sim;

/// The payload crash tests write into entry `index`: its bytes depend on the
/// index, so a reader can check every one of them.
pub fn payload(index: u64) -> Vec<u8> {
    let len = 16 + (index % 200) as usize;
    (0..len).map(|k| (index as usize * 31 + k) as u8).collect()
}
