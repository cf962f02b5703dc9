use ha_core::{replicated, Replicated};

#[derive(Default, Replicated)]
pub struct Kv {
    n: i64,
}

#[replicated]
impl Kv {
    pub fn add(&mut self, x: i64) {
        self.n += x;
    }
}

fn main() {}
