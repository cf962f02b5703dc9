use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    n: i64,
}

#[replicated]
impl Kv {
    pub fn at(&mut self, when: std::time::Instant) {
        let _ = when;
    }
}

fn main() {}
