//! The command line: the framework's operator commands and the key-value
//! commands.

use clap::{Parser, Subcommand};
use ha_server::cli::{ClientArgs, OpsCommand};

use crate::kv::Kv;

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

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Ops(OpsCommand),
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
    /// Read commands from stdin, answer each with one JSON line.
    Repl {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Closed-loop load; a JSON summary as the last line.
    Bench(crate::client_cmds::BenchArgs),
}

/// Runs a parsed command; returns the exit status.
pub async fn run(cli: Cli) -> i32 {
    use crate::client_cmds as c;
    match cli.command {
        Command::Ops(ops) => ops.run::<Kv>().await,
        Command::Demo => crate::demo::demo().await,
        Command::Get { key, stale, client } => c::get(&client, key, stale).await,
        Command::Put { key, value, client } => c::put(&client, key, value).await,
        Command::Del { key, client } => c::del(&client, key).await,
        Command::Cas {
            key,
            expected,
            new,
            client,
        } => {
            let expected = (expected != "--absent").then_some(expected);
            c::cas(&client, key, expected, new).await
        }
        Command::Repl { client } => c::repl(&client).await,
        Command::Bench(args) => c::bench(args).await,
    }
}
