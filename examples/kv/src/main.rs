//! `ha-kv`: the ha key-value service and its operator command line.
//!
//! The command line is a contract (see the README and the spec it follows):
//! every client command prints exactly one JSON line on stdout, logs and
//! progress go to stderr, and exit codes say what happened: 0 done, 1 not
//! applied (or a compare-and-set mismatch), 2 bad usage or configuration, 3
//! outcome unknown.

mod bootstrap;
mod cli;
mod client_cmds;
mod demo;
mod kv;
mod metrics;
mod serve;

use clap::Parser;

/// Exit status of a usage or configuration mistake.
pub const EXIT_USAGE: i32 = 2;

/// Prints one line saying what to fix, and exits with status 2.
pub fn usage_error(msg: impl std::fmt::Display) -> ! {
    eprintln!("ha-kv: {msg}");
    std::process::exit(EXIT_USAGE);
}

fn main() {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage_error(format!("cannot start the async runtime: {e}")));
    let code = rt.block_on(cli::run(args));
    // Exit without waiting for background tasks (connections, timers).
    rt.shutdown_background();
    std::process::exit(code);
}
