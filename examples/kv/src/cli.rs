//! The command line: parsing, and the shared client options.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::usage_error;

/// The ha key-value service.
#[derive(Parser, Debug)]
#[command(
    name = "ha-kv",
    version,
    about = "A replicated key-value service built on ha"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a cluster CA (only if neither ca.pem nor ca.key exists) and
    /// node and client certificates (idempotent: existing files are kept).
    Certs {
        /// Where to write them.
        #[arg(long)]
        dir: PathBuf,
        /// Node ids, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
    },
    /// Run one node in the foreground until SIGINT or SIGTERM.
    Serve(crate::serve::ServeArgs),
    /// Start a 3-node cluster in this process, use it, kill its leader, and
    /// show it recover.
    Demo,
    /// Read a key (linearizable unless --stale).
    Get {
        /// The key.
        key: String,
        /// Allow a possibly stale read from any node.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Compare and set: EXPECTED may be --absent (the key must not exist).
    Cas {
        /// The key.
        key: String,
        /// The value the key must have (or --absent).
        #[arg(allow_hyphen_values = true)]
        expected: String,
        /// The new value.
        new: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One JSON status line per reachable node.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read commands from stdin, answer each with one JSON line.
    Repl {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Closed-loop load; a JSON summary as the last line.
    Bench(crate::client_cmds::BenchArgs),
    /// What the cluster does when a command fails (panics): `continue`
    /// (the default) answers it as failed and goes on; `halt` then refuses
    /// every command and query until `resume`. Replicated: every node
    /// switches at the same log entry.
    PanicPolicy {
        /// continue or halt.
        #[arg(value_enum)]
        policy: crate::client_cmds::PolicyArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a cluster halted after a failed command (`status` shows
    /// `halted` and where): the state stays as that command left it, and
    /// commands and queries are served again.
    Resume {
        /// The log index the cluster halted at.
        #[arg(long)]
        index: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Membership changes (not yet supported).
    Member {
        /// add ID HOST:PORT | remove ID | list
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Hand leadership to another node (not yet supported).
    TransferLeader {
        /// The node to hand over to.
        id: u64,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

/// Parses HOST:PORT, resolving a host name; exits 2 with a clear line if it
/// cannot.
pub fn parse_addr(what: &str, s: &str) -> SocketAddr {
    match s.to_socket_addrs() {
        Ok(mut a) => a
            .next()
            .unwrap_or_else(|| usage_error(format!("{what}: '{s}' resolves to no address"))),
        Err(e) => usage_error(format!("{what}: '{s}' is not a valid HOST:PORT ({e})")),
    }
}

fn not_yet(what: &str) -> i32 {
    eprintln!("ha-kv: {what} is not yet supported");
    crate::EXIT_USAGE
}

/// Runs a parsed command; returns the exit status.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Certs { dir, nodes } => {
            let ids: Vec<_> = nodes.iter().map(|n| ha_core::types::NodeId(*n)).collect();
            if ids.iter().any(|i| i.0 == 0) {
                usage_error("--nodes: node ids start at 1");
            }
            match ha_quic::certs::create_cluster_certs_report(&dir, &ids) {
                Ok(report) => {
                    for w in &report.warnings {
                        eprintln!("ha-kv: warning: {w}");
                    }
                    let written = report.written;
                    for p in &written {
                        eprintln!("wrote {}", p.display());
                    }
                    println!(
                        "{}",
                        serde_json::json!({"ok": true, "dir": dir, "created": written})
                    );
                    0
                }
                Err(e) => usage_error(e),
            }
        }
        Command::Serve(args) => crate::serve::serve(args).await,
        Command::Demo => crate::demo::demo().await,
        Command::Get { key, stale, client } => crate::client_cmds::get(&client, key, stale).await,
        Command::Put { key, value, client } => crate::client_cmds::put(&client, key, value).await,
        Command::Del { key, client } => crate::client_cmds::del(&client, key).await,
        Command::Cas {
            key,
            expected,
            new,
            client,
        } => {
            let expected = (expected != "--absent").then_some(expected);
            crate::client_cmds::cas(&client, key, expected, new).await
        }
        Command::Status { client } => crate::client_cmds::status(&client).await,
        Command::Repl { client } => crate::client_cmds::repl(&client).await,
        Command::Bench(args) => crate::client_cmds::bench(args).await,
        Command::Resume { index, client } => crate::client_cmds::resume(&client, index).await,
        Command::PanicPolicy { policy, client } => {
            crate::client_cmds::panic_policy(&client, policy).await
        }
        Command::Member { .. } => not_yet("member"),
        Command::TransferLeader { .. } => not_yet("transfer-leader"),
    }
}
