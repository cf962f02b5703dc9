use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    n: i64,
}

pub struct Opaque;

#[replicated]
impl Kv {
    pub fn set(&mut self, value: Opaque) {
        let _ = value;
    }
}

fn main() {}
