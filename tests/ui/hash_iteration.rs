use std::collections::{BTreeMap, HashMap, HashSet};

use ha_core::{replicated, Replicated};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Cache {
    hot: HashMap<String, u64>,
    seen: HashSet<u64>,
    sorted: BTreeMap<String, u64>,
    list: Vec<u64>,
    boxed: Box<HashMap<u8, u8>>,
}

#[replicated]
impl Cache {
    /// Evicts "the first" key: another one on every replica.
    pub fn evict(&mut self) {
        if let Some(k) = self.hot.keys().next().cloned() {
            self.hot.remove(&k);
        }
    }
    pub fn sum(&mut self) -> u64 {
        let mut n = 0;
        for s in &self.seen {
            n += s;
        }
        n
    }
    pub fn first_boxed(&mut self) -> Option<u8> {
        self.boxed.keys().next().copied()
    }
    /// Lookups, inserts and ordered collections are fine.
    pub fn fine(&mut self, k: String) -> u64 {
        self.hot.insert(k.clone(), 1);
        let first = self.sorted.keys().next().cloned();
        let total: u64 = self.list.iter().sum();
        self.hot.get(&k).copied().unwrap_or(0) + total + first.map_or(0, |f| f.len() as u64)
    }
    /// The order cannot matter here (a sum): allowed.
    #[replicated(allow(hash_iteration))]
    pub fn total(&mut self) -> u64 {
        self.hot.values().sum()
    }
}

fn main() {}
