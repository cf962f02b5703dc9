//! The key-value state: a plain struct and its methods, made replicated by
//! the macros (the example dogfoods them).
//!
//! Keys and values are bytes; `BTreeMap` keeps iteration deterministic.

use std::collections::BTreeMap;

use ha_core::{Replicated, replicated};
use serde::{Deserialize, Serialize};

/// The replicated map.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Kv {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[replicated]
impl Kv {
    /// Sets `key` to `value`; returns the previous value.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        self.map.insert(key, value)
    }

    /// Removes `key`; returns whether it existed.
    pub fn del(&mut self, key: Vec<u8>) -> bool {
        self.map.remove(&key).is_some()
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent).
    /// On a mismatch, returns the value it saw.
    pub fn cas(
        &mut self,
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<(), Option<Vec<u8>>> {
        let current = self.map.get(&key).cloned();
        if current != expected {
            return Err(current);
        }
        self.map.insert(key, new);
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: Vec<u8>) -> Option<Vec<u8>> {
        self.map.get(&key).cloned()
    }

    /// Number of keys.
    pub fn key_count(&self) -> u64 {
        self.map.len() as u64
    }
}
