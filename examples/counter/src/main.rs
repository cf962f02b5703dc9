//! `ha-counter`: a replicated counter, start to finish.
//!
//! A plain struct and its methods, two macros, and a real service:
//! - `ha-counter` (or `ha-counter demo`) starts a 3-node cluster on loopback
//!   in this process (QUIC, mutual TLS, durable logs in temporary
//!   directories), adds through the typed client, kills the leader, keeps
//!   adding through the new one, and checks that no acknowledged add was
//!   lost;
//! - `ha-counter certs`, `serve`, `status`, `panic-policy` and `resume` are
//!   the framework's operator commands (`ha_server::cli`), so the same type
//!   runs as one node per process;
//! - `ha-counter add N` and `ha-counter get` are this service's client
//!   commands, one JSON line each; `ha-counter repl` reads them from stdin
//!   (`add N`, `get`, one per line) and answers each with one JSON line,
//!   in order, through one typed client and so one session (the fault
//!   suite's counter workload drives it).

use clap::{Parser, Subcommand};
use ha_core::{ApplyContext, Replicated, replicated};
use ha_quic::LocalCluster;
use ha_server::cli::{ClientArgs, OpsCommand, Outcome, emit, usage};
use serde::{Deserialize, Serialize};

/// The replicated state: a counter and when it last changed.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Counter {
    value: i64,
    changed_at_ms: u64,
}

#[replicated]
impl Counter {
    /// Adds `delta` and returns the new value (which stops at `i64`'s
    /// bounds rather than wrap).
    pub fn add(&mut self, delta: i64, ctx: &ApplyContext) -> i64 {
        self.value = self.value.saturating_add(delta);
        // Leader-stamped time: the same on every replica.
        self.changed_at_ms = ctx.time_ms;
        self.value
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.value
    }

    /// When the value last changed (ms since the Unix epoch, leader time).
    pub fn changed_at(&self) -> u64 {
        self.changed_at_ms
    }
}

/// A replicated counter built on ha.
#[derive(Parser, Debug)]
#[command(name = "ha-counter", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Ops(OpsCommand),
    /// Start a 3-node cluster in this process, add, kill its leader, add
    /// again, and check nothing was lost (the default).
    Demo,
    /// Add DELTA (may be negative); prints the new value.
    Add {
        /// What to add.
        #[arg(allow_hyphen_values = true)]
        delta: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read the value (linearizable).
    Get {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read `add N` and `get` from stdin, one per line, and answer each
    /// with exactly one JSON line (as `add` and `get` print), in order,
    /// flushed at once; nothing else on stdout.
    Repl {
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() {
    let cli = Cli::parse();
    ha_server::cli::run(|| async move {
        match cli.command.unwrap_or(Command::Demo) {
            Command::Ops(ops) => ops.run::<Counter>().await,
            Command::Demo => match demo().await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ha-counter: {e}");
                    1
                }
            },
            Command::Add { delta, client } => {
                emit(Outcome::value(client.client::<Counter>().add(delta).await))
            }
            Command::Get { client } => emit(Outcome::value(client.client::<Counter>().get().await)),
            Command::Repl { client } => repl(&client).await,
        }
    })
}

/// `ha-counter repl`: one client for every line, so retries of an add
/// reuse its session and sequence number (exactly once).
async fn repl(c: &ClientArgs) -> i32 {
    let counter = c.client::<Counter>();
    let counter = &counter;
    ha_server::cli::repl(|line| async move {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["get"] => Outcome::value(counter.get().await),
            ["add", n] => match n.parse::<i64>() {
                Ok(delta) => Outcome::value(counter.add(delta).await),
                Err(e) => usage(&line, &e.to_string()),
            },
            _ => usage(&line, "use add N | get"),
        }
    })
    .await
}

async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let mut cluster = LocalCluster::<Counter>::start(3).await?;
    let client = cluster.client();
    let leader = cluster.leader().await.ok_or("no leader elected")?;
    println!("3 nodes up; node {leader} leads");
    for _ in 0..10 {
        client.add(1).await?;
    }
    println!("after 10 adds: {}", client.get().await?);
    cluster.kill(leader).await;
    println!("killed node {leader}");
    for _ in 0..10 {
        client.add(1).await?;
    }
    let now = cluster.leader().await.ok_or("no new leader")?;
    let value = client.get().await?;
    println!("node {now} leads now; after 10 more adds: {value}");
    if value != 20 {
        return Err(format!("expected 20, read {value}").into());
    }
    println!("last change stamped at {} ms", client.changed_at().await?);
    cluster.shutdown().await;
    Ok(())
}
