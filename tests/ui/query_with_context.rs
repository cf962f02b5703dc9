use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    n: i64,
}

#[replicated]
impl Kv {
    pub fn get(&self, ctx: &ha_core::ApplyContext) -> i64 {
        let _ = ctx;
        self.n
    }
}

fn main() {}
