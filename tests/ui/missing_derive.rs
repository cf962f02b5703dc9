use ha_core::replicated;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Inventory {
    items: u64,
}

#[replicated]
impl Inventory {
    pub fn add(&mut self, n: u64) -> u64 {
        self.items += n;
        self.items
    }
}

fn main() {}
