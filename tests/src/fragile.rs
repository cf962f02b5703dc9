//! A replicated type with a command that panics for one argument and a
//! query that panics out of range: the subject of the panic tests, shared
//! by the in-process cluster test and the `fragile_node` binary.

use ha_core::replicated;
use serde::{Deserialize, Serialize};

/// A list that refuses one number the hard way.
#[derive(Default, Serialize, Deserialize, ha_core::Replicated)]
pub struct Fragile {
    items: Vec<u32>,
}

#[replicated]
impl Fragile {
    /// Appends `x`; returns the length. Panics on 13, after appending it:
    /// what a command changed before its panic stays.
    pub fn push(&mut self, x: u32) -> usize {
        self.items.push(x);
        if x == 13 {
            panic!("unlucky number {x}");
        }
        self.items.len()
    }
    /// The item at `i`: indexing panics when out of range.
    pub fn at(&self, i: u32) -> u32 {
        self.items[i as usize]
    }
    /// How many items.
    pub fn count(&self) -> usize {
        self.items.len()
    }
}
