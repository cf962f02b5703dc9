//! Procedural macros for ha.
//!
//! This crate will hold `#[derive(Replicated)]` and `#[replicated]`. It exports
//! nothing yet: the macros arrive with the macro issue, and until then nothing
//! here pretends to work.
