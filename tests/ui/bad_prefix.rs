use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Counter {
    n: i64,
}

#[replicated(prefix = "not an ident")]
impl Counter {
    pub fn add(&mut self, x: i64) {
        self.n += x;
    }
}

fn main() {}
