use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    n: i64,
}

pub struct Report {
    pub n: i64,
}

#[replicated]
impl Kv {
    pub fn report(&self) -> Report {
        Report { n: self.n }
    }
}

fn main() {}
