use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    n: i64,
}

#[replicated]
impl Kv {
    pub async fn add(&mut self, x: i64) {
        self.n += x;
    }
}

fn main() {}
