//! Black-box tests of the `ha-kv` command line: three `serve` processes on
//! loopback, every subcommand, the JSON lines and exit codes of the contract,
//! kill -9 of the leader, and a restart of the whole cluster from its data
//! directories with every acknowledged write still there.

include!("harness.rs");

mod contract;
mod deploy;
mod leadership;
mod membership;
mod mistakes;
mod operations;
mod outcomes;
mod recovery;
use mistakes::*;
