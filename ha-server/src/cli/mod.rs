//! The operator command line every replicated type gets: `certs`, `serve`,
//! `status`, `panic-policy`, `resume` (and, reserved, `member` and
//! `transfer-leader`), with the flags, JSON lines and exit codes of the
//! `ha-kv` contract.
//!
//! A type with no commands of its own runs it whole:
//!
//! ```no_run
//! # use ha_core::{Replicated, replicated};
//! # #[derive(Default, serde::Serialize, serde::Deserialize, Replicated)]
//! # pub struct Counter { n: u64 }
//! # #[replicated] impl Counter { pub fn add(&mut self) -> u64 { self.n += 1; self.n } }
//! fn main() {
//!     ha_server::cli::main::<Counter>()
//! }
//! ```
//!
//! A service with its own client commands flattens [`OpsCommand`] into its
//! own `clap` subcommands, runs its own with [`ClientArgs::client`] and
//! [`emit`], and hands the rest to [`OpsCommand::run`] (see `ha-counter`
//! and `ha-kv`).
//!
//! Exit codes: 0 done, 1 not applied (or nothing reachable), 2 bad usage
//! or configuration (one line on stderr saying what to fix), 3 outcome
//! unknown. Every client command prints exactly one JSON line on stdout;
//! logs go to stderr.

mod ops;
mod outcome;
mod repl;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use ha_core::ClientOptions;
use ha_core::client::NodeAddr;
use ha_core::sm::Replicated;

pub use ops::{CertsArgs, OpsCommand, PolicyArg, ServeArgs, status_line};
pub use outcome::{Outcome, emit};
pub use repl::{MAX_LINE, repl, usage};

/// Exit status of a usage or configuration mistake.
pub const EXIT_USAGE: i32 = 2;

/// The program's name as it was started (for messages: `ha-kv: ...`).
pub fn program() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "ha".into())
}

/// Prints one line saying what to fix, and exits with status 2.
pub fn usage_error(msg: impl std::fmt::Display) -> ! {
    eprintln!("{}: {msg}", program());
    std::process::exit(EXIT_USAGE);
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Nodes to contact, HOST:PORT,... (any subset; the leader is found).
    #[arg(long, value_delimiter = ',', required = true)]
    pub cluster: Vec<String>,
    /// Directory holding ca.pem, client.pem and client.key.
    #[arg(long)]
    pub tls_dir: PathBuf,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

impl ClientArgs {
    /// The `--cluster` addresses; exits 2 on one that is not `HOST:PORT`.
    /// A host (a DNS name or an IP address) is resolved each time the
    /// client connects to it, and the node's certificate must name it.
    pub fn addrs(&self) -> Vec<NodeAddr> {
        self.cluster
            .iter()
            .map(|a| {
                NodeAddr::parse(a.trim())
                    .unwrap_or_else(|e| usage_error(format!("--cluster {a:?}: {e}")))
            })
            .collect()
    }

    /// The client certificate; exits 2 when it cannot be loaded.
    pub fn identity(&self) -> ha_quic::TlsIdentity {
        ha_quic::load_client_identity(&self.tls_dir).unwrap_or_else(|e| {
            usage_error(format!(
                "--tls-dir: {e}; create certificates with `{} certs`",
                program()
            ))
        })
    }

    /// Client options from `--timeout-ms`.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_millis(self.timeout_ms),
            attempt_timeout: Duration::from_millis(self.timeout_ms.clamp(100, 1500)),
            ..ClientOptions::default()
        }
    }

    /// The generic client of `T` (operator commands, raw requests).
    pub fn core_client<T: Replicated>(&self) -> ha_core::Client<T> {
        let transport = ha_quic::QuicClientTransport::new(&self.identity())
            .unwrap_or_else(|e| usage_error(format!("cannot create a client: {e}")));
        ha_core::Client::new(std::sync::Arc::new(transport), self.addrs(), self.options())
    }

    /// The typed client of `T`.
    pub fn client<T: Replicated>(&self) -> T::Client {
        T::Client::from(self.core_client::<T>())
    }
}

/// Sets up logging to stderr (`RUST_LOG`, default `warn`) and a tokio
/// runtime, runs `main` on it, and exits the process with the status it
/// returns, without waiting for background tasks (connections, timers).
pub fn run<F: Future<Output = i32>>(main: impl FnOnce() -> F) -> ! {
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
    let code = rt.block_on(main());
    rt.shutdown_background();
    std::process::exit(code);
}

/// The command line of a service with only the operator commands.
#[derive(Parser, Debug)]
#[command(version, about = "A replicated service built on ha")]
struct OpsOnly {
    #[command(subcommand)]
    command: OpsCommand,
}

/// Runs the operator command line for `T` and exits: `certs`, `serve`,
/// `status`, `panic-policy`, `resume`.
pub fn main<T: Replicated>() -> ! {
    let cli = OpsOnly::parse();
    run(|| cli.command.run::<T>())
}
