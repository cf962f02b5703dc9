use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

/// The user's own type, named as the macro names the commands of `Counter`:
/// rustc says the name is defined twice, at this type and at the attribute
/// (the macro docs say to write `#[replicated(prefix = "Other")]`).
pub struct CounterCommand;

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Counter {
    n: i64,
}

#[replicated]
impl Counter {
    pub fn add(&mut self, x: i64) {
        self.n += x;
    }
}

fn main() {}
