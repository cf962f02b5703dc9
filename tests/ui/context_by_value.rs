use ha_core::{replicated, ApplyContext, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    n: i64,
    at: u64,
}

#[replicated]
impl Kv {
    pub fn add(&mut self, x: i64, ctx: ApplyContext) {
        self.n += x;
        self.at = ctx.time_ms;
    }
}

fn main() {}
