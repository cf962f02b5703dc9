use ha_core::{replicated, ApplyContext, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    n: i64,
}

#[replicated]
impl Kv {
    pub fn add(&mut self, ctx: &mut ApplyContext, x: i64) {
        let _ = ctx;
        self.n += x;
    }
}

fn main() {}
