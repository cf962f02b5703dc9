use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    n: i64,
}

#[replicated]
#[allow(non_snake_case)]
impl Kv {
    pub fn add_one(&mut self) {
        self.n += 1;
    }
    pub fn addOne(&mut self) {
        self.n += 1;
    }
    pub fn with_timeout(&self) -> i64 {
        self.n
    }
}

fn main() {}
