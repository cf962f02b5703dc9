use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    n: i64,
}

#[replicated]
impl Kv {
    pub fn add<T: Into<i64>>(&mut self, x: T) {
        self.n += x.into();
    }
}

fn main() {}
