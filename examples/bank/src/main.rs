//! `ha-bank`: a replicated bank whose total never changes.
//!
//! [`ACCOUNTS`] accounts open with [`OPENING`] each; a transfer moves money
//! between two of them if the first holds enough, as one command, and a
//! read returns every balance, as one linearizable query. Whatever
//! crashes, partitions or retries do, the balances must add up to
//! `ACCOUNTS * OPENING` in every read, and every read must be a state the
//! transfers could have reached in some order consistent with real time:
//! the fault suite's bank workload checks both.
//!
//! - `ha-bank certs`, `serve`, `status`, `member`, ... are the framework's
//!   operator commands (`ha_server::cli`), one node per process;
//! - `ha-bank transfer FROM TO AMOUNT` and `ha-bank balances` are its
//!   client commands, one JSON line each; `ha-bank repl` reads
//!   `transfer FROM TO AMOUNT` and `balances` from stdin, one per line,
//!   and answers each with one JSON line, in order, through one client
//!   (one session).

use clap::{Parser, Subcommand};
use ha_core::{Replicated, replicated};
use ha_server::cli::{ClientArgs, OpsCommand, Outcome, emit, usage};
use serde::{Deserialize, Serialize};

/// How many accounts the bank has.
pub const ACCOUNTS: usize = 8;
/// What each account opens with.
pub const OPENING: i64 = 100;

/// The replicated state: every account's balance.
#[derive(Serialize, Deserialize, Replicated)]
pub struct Bank {
    balances: Vec<i64>,
}

impl Default for Bank {
    fn default() -> Bank {
        Bank {
            balances: vec![OPENING; ACCOUNTS],
        }
    }
}

#[replicated]
impl Bank {
    /// Moves `amount` from account `from` to account `to` if `from` holds
    /// at least that much; whether it did. A transfer between unknown
    /// accounts, to the same account, or of a non-positive amount moves
    /// nothing.
    pub fn transfer(&mut self, from: u32, to: u32, amount: i64) -> bool {
        let (from, to) = (from as usize, to as usize);
        if from == to || amount <= 0 || from >= self.balances.len() || to >= self.balances.len() {
            return false;
        }
        if self.balances[from] < amount {
            return false;
        }
        // Cannot overflow: the total is fixed and every balance is at
        // least 0, so `to` holds at most the total less `amount`.
        self.balances[from] -= amount;
        self.balances[to] += amount;
        true
    }

    /// Every balance, in account order.
    pub fn balances(&self) -> Vec<i64> {
        self.balances.clone()
    }
}

/// A replicated bank built on ha.
#[derive(Parser, Debug)]
#[command(name = "ha-bank", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Ops(OpsCommand),
    /// Move AMOUNT from account FROM to account TO if FROM holds enough;
    /// prints whether it did.
    Transfer {
        /// The account debited (0-based).
        from: u32,
        /// The account credited.
        to: u32,
        /// How much.
        amount: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read every balance (linearizable).
    Balances {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read `transfer FROM TO AMOUNT` and `balances` from stdin, one per
    /// line, and answer each with exactly one JSON line (as the commands
    /// print), in order, flushed at once; nothing else on stdout.
    Repl {
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() {
    let cli = Cli::parse();
    ha_server::cli::run(|| async move {
        match cli.command {
            Command::Ops(ops) => ops.run::<Bank>().await,
            Command::Transfer {
                from,
                to,
                amount,
                client,
            } => emit(Outcome::value(
                client.client::<Bank>().transfer(from, to, amount).await,
            )),
            Command::Balances { client } => {
                emit(Outcome::value(client.client::<Bank>().balances().await))
            }
            Command::Repl { client } => repl(&client).await,
        }
    })
}

/// `ha-bank repl`: one client for every line, so retries of a transfer
/// reuse its session and sequence number (exactly once).
async fn repl(c: &ClientArgs) -> i32 {
    let bank = c.client::<Bank>();
    let bank = &bank;
    ha_server::cli::repl(|line| async move {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["balances"] => Outcome::value(bank.balances().await),
            ["transfer", from, to, amount] => {
                match (
                    from.parse::<u32>(),
                    to.parse::<u32>(),
                    amount.parse::<i64>(),
                ) {
                    (Ok(from), Ok(to), Ok(amount)) => {
                        Outcome::value(bank.transfer(from, to, amount).await)
                    }
                    _ => usage(&line, "FROM and TO are account numbers, AMOUNT an integer"),
                }
            }
            _ => usage(&line, "use transfer FROM TO AMOUNT | balances"),
        }
    })
    .await
}
