use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Stamps {
    last: u64,
    home: String,
}

#[replicated]
impl Stamps {
    pub fn stamp(&mut self) {
        let now = std::time::SystemTime::now();
        self.last = now.elapsed().map_or(0, |d| d.as_millis() as u64);
    }
    pub fn roll(&mut self) {
        self.last = rand::random();
    }
    pub fn home(&mut self) {
        self.home = std::env::var("HOME").unwrap_or_default();
    }
    pub fn load(&mut self) {
        self.home = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    }
    /// Allowed explicitly: not reported.
    #[replicated(allow(clock))]
    pub fn stamp_anyway(&mut self) {
        let _ = std::time::Instant::now();
    }
    /// Queries are not checked: they change nothing.
    pub fn peek(&self) -> u64 {
        let _ = std::time::Instant::now();
        self.last
    }
    #[replicated(allow(weather))]
    pub fn unknown(&mut self) {}
}

mod rand {
    pub fn random() -> u64 {
        4
    }
}

fn main() {}
