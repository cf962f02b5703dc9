//! Exactly-once commands through the replicated session table, and the
//! determinism of everything in it.

use bytes::Bytes;
use ha_core::protocol::{CommandOutcome, LogCommand, LogOp, SessionCommand};
use ha_core::schema::Schema;
use std::collections::BTreeMap;

use ha_core::sm::{ApplyContext, DEFAULT_MAX_SESSIONS, PanicPolicy, Sessions};
use ha_core::types::{LogIndex, Term};
use ha_core::{Replicated, replicated};
use serde::{Deserialize, Serialize};

/// A counter that also remembers when it last changed.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Counter {
    value: i64,
    stamped: u64,
}

#[replicated]
impl Counter {
    /// Adds and returns the new value.
    pub fn add(&mut self, delta: i64, ctx: &ApplyContext) -> i64 {
        self.value += delta;
        self.stamped = ctx.time_ms;
        self.value
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.value
    }
}

/// Another type, to show snapshots refuse a foreign schema.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Other {
    text: String,
}

#[replicated]
impl Other {
    /// Sets the text.
    pub fn set(&mut self, text: String) {
        self.text = text;
    }
}

fn cmd(client: u64, seq: u64, ack_below: u64, time_ms: u64, delta: i64) -> LogCommand {
    in_session(
        client,
        seq,
        ack_below,
        time_ms,
        &CounterCommand::Add { delta },
    )
}

/// Command `seq` of session `client` (the tests' secret), encoded.
fn in_session<C: Serialize>(
    client: u64,
    seq: u64,
    ack_below: u64,
    time_ms: u64,
    command: &C,
) -> LogCommand {
    LogCommand {
        time_ms,
        op: LogOp::Command(SessionCommand {
            client,
            secret: SECRET,
            seq,
            ack_below,
            body: Bytes::from(postcard::to_stdvec(command).unwrap()),
        }),
    }
}

/// The secret the tests' sessions are registered with.
const SECRET: u64 = 0x5EC2E7;

fn register(time_ms: u64) -> LogCommand {
    LogCommand {
        time_ms,
        op: LogOp::Register { secret: SECRET },
    }
}

/// Applies a registration at `index`; returns the new session's id.
fn open_session<T: Replicated>(s: &mut Sessions<T>, index: u64, time_ms: u64) -> u64 {
    match s.apply_log_command(LogIndex(index), Term(1), register(time_ms)) {
        CommandOutcome::Registered { session } => session,
        other => panic!("registration answered {other:?}"),
    }
}

fn applied(o: CommandOutcome) -> i64 {
    match o {
        CommandOutcome::Applied(b) => match postcard::from_bytes(&b).unwrap() {
            CounterCommandOutput::Add(v) => v,
        },
        other => panic!("not applied: {other:?}"),
    }
}

mod client;
mod exactly_once;
mod failures;
mod membership;
mod replay;
