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
pub use ha_chaos::lincheck;
pub mod sim;

/// How many configuration entries `r`'s log holds past its commit index:
/// at most one on a leader ("one change at a time"), checked by the text
/// scenarios and the simulator alike.
pub fn uncommitted_confs(r: &ha_core::raft::Raft) -> usize {
    (r.commit_index().0 + 1..=r.last_index().0)
        .filter(|i| {
            r.entry(ha_core::types::LogIndex(*i))
                .is_some_and(|e| matches!(e.payload, ha_core::types::EntryPayload::Membership(_)))
        })
        .count()
}

/// The payload crash tests write into entry `index`: its bytes depend on the
/// index, so a reader can check every one of them.
pub fn payload(index: u64) -> Vec<u8> {
    let len = 16 + (index % 200) as usize;
    (0..len).map(|k| (index as usize * 31 + k) as u8).collect()
}
