//! `ha-kv`: the ha key-value service and its operator command line.
//!
//! The command line is a contract (see the README and the spec it follows):
//! every client command prints exactly one JSON line on stdout, logs and
//! progress go to stderr, and exit codes say what happened: 0 done, 1 not
//! applied (or a compare-and-set mismatch), 2 bad usage or configuration, 3
//! outcome unknown.
//!
//! The operator commands (`certs`, `serve`, `status`, `panic-policy`,
//! `resume`) are the framework's, from `ha_server::cli`, the same for any
//! replicated type; this program adds the key-value commands and the demo.

mod cli;
mod client_cmds;
mod demo;
mod kv;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    ha_server::cli::run(|| cli::run(args))
}
