//! Clients with sessions in the simulator, and the reference state machine
//! that checks every command runs at most once.
//!
//! Owns: [`SessionClient`] (registers a session, runs numbered operations,
//! retries one whose answer is late with the same session numbers, gives
//! up and registers anew after a few tries) and [`Reference`], which
//! applies the committed log, in order, to the real session table
//! ([`ha_core::sm::Sessions`]) over an [`OpLog`] that remembers which
//! operations ran.
//!
//! Invariants:
//! 1. An operation (one client call, across all its retries) runs at most
//!    once in the committed log: [`Reference::apply`] fails otherwise.
//! 2. Payloads are a command id (8 bytes, what the rest of the simulator
//!    tracks) followed, for session traffic, by a postcard `LogCommand`
//!    stamped with the proposing node's (possibly skewed) clock.

use std::collections::BTreeSet;

use ha_core::__private::postcard;
use ha_core::protocol::{LogCommand, LogOp};
use ha_core::sm::Sessions;
use ha_core::types::{LogIndex, Term};
use ha_core::{Replicated, replicated};
use serde::{Deserialize, Serialize};

/// The replicated type of session traffic: which operations ran.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct OpLog {
    ran: BTreeSet<u64>,
    /// The first operation that ran twice, if any.
    twice: Option<u64>,
}

#[replicated]
impl OpLog {
    /// Runs operation `op`.
    pub fn run(&mut self, op: u64) -> bool {
        let first = self.ran.insert(op);
        if !first && self.twice.is_none() {
            self.twice = Some(op);
        }
        first
    }

    /// Operations run.
    pub fn count(&self) -> usize {
        self.ran.len()
    }
}

/// The reference state machine over the committed log (invariant 1).
pub struct Reference {
    sessions: Sessions<OpLog>,
    expired: u64,
}

impl Reference {
    /// A reference with this session timeout (leader time, ms).
    pub fn new(timeout_ms: u64, planted_recreate: bool) -> Reference {
        // The simulator checks determinism itself (every replica's applied
        // entries against this reference): no replay, whose cost grows with
        // the state.
        let mut sessions = Sessions::new()
            .with_unchecked_settings(timeout_ms, ha_core::sm::DEFAULT_MAX_SESSIONS)
            .with_determinism_check(0);
        if planted_recreate {
            sessions = sessions.with_planted_recreate();
        }
        Reference {
            sessions,
            expired: 0,
        }
    }

    /// Operations run and commands refused as expired, so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.sessions.state().ran.len() as u64, self.expired)
    }

    /// Applies the committed entry at `index` (in order, each once).
    pub fn apply(&mut self, index: LogIndex, term: Term, payload: &[u8]) -> Result<(), String> {
        // Plain commands (an id) and the large ones that carry a forged
        // batch start (`SimConfig::forged_batch_starts`) hold no session
        // operation.
        if payload.len() <= 8 || payload.len() > super::FORGED_MIN_BYTES {
            return Ok(());
        }
        let cmd: LogCommand = postcard::from_bytes(&payload[8..])
            .map_err(|e| format!("a session payload at {index} does not decode: {e}"))?;
        if self.sessions.apply_log_command(index, term, cmd)
            == ha_core::protocol::CommandOutcome::SessionExpired
        {
            self.expired += 1;
        }
        match self.sessions.state().twice {
            Some(op) => Err(format!(
                "Exactly-once: operation {op} ran twice (the second time at index {index})"
            )),
            None => Ok(()),
        }
    }
}

/// The payload of a session command: `cmd` then the stamped `LogCommand`.
pub fn payload(cmd: u64, time_ms: u64, op: LogOp) -> Vec<u8> {
    let mut out = cmd.to_le_bytes().to_vec();
    out.extend(postcard::to_stdvec(&LogCommand { time_ms, op }).expect("encodes"));
    out
}

/// The encoded body of operation `op`.
pub fn op_body(op: u64) -> bytes::Bytes {
    bytes::Bytes::from(postcard::to_stdvec(&OpLogCommand::Run { op }).expect("encodes"))
}

/// One operation in flight.
pub struct Pending {
    /// The operation (the same across retries).
    pub op: u64,
    /// Its number in the session.
    pub seq: u64,
    /// Command ids of its attempts (any one acknowledged ends it).
    pub cmds: Vec<u64>,
    /// When the last attempt was sent.
    pub sent_at: u64,
    /// Attempts so far.
    pub attempts: u32,
}

/// A client with a session (see the module docs).
#[derive(Default)]
pub struct SessionClient {
    /// The session id, once registered.
    pub id: Option<u64>,
    /// The session's secret.
    pub secret: u64,
    /// The registration in flight: (command id, sent at).
    pub registering: Option<(u64, u64)>,
    /// The next sequence number.
    pub next_seq: u64,
    /// The operation in flight.
    pub pending: Option<Pending>,
    /// Operations finished in this session (a new session after a few).
    pub done_in_session: u32,
}
