//! [`Sessions`]: the applier of a replicated type, which makes its commands
//! exactly-once (dissertation §6.3), catches their panics, and keeps the
//! operator's panic policy.
//!
//! Sessions. A client first registers a session: a [`LogOp::Register`]
//! entry, whose log index becomes the session id (dissertation §6.3). It
//! then numbers its commands 1, 2, 3, ... in that session, and says with
//! each which numbers below it already have their answers (`ack_below`). The replicated state keeps, per session, the
//! results not yet acknowledged. Applying `(client, seq)`:
//! 1. results below `ack_below` are forgotten, and numbers below it are
//!    closed;
//! 2. a closed number is not applied ([`CommandOutcome::Abandoned`]);
//! 3. a number with a kept result returns that result (a retry);
//! 4. otherwise the command runs and its result is kept.
//!
//! A session is created only by its registration entry. A command for a
//! session the table does not hold (expired, or never registered) is never
//! applied: the outcome is [`CommandOutcome::SessionExpired`]. Since ids are
//! log indexes, an expired session can never be re-created, so a late retry
//! of a command that was applied before the expiry cannot apply it again.
//!
//! Sessions expire deterministically: when a session has been idle for
//! `session_timeout_ms` of *leader-stamped* time (the `time_ms` in the log),
//! every replica drops it at the same log entry. A replica's own clock is
//! never consulted.
//!
//! Invariants:
//! 1. Everything here is a function of the log: two replicas that applied
//!    the same entries hold the same sessions and the same user state.
//! 2. A kept result is returned for a retry byte for byte.

mod command;
pub(crate) use command::panic_message;
mod operator;
pub(super) use self::command::run_command;
use self::operator::*;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::replay::{Replay, replay};
use super::{Applier, ApplyContext, Replicated, StateError, decode_exact};
use crate::protocol::{CommandOutcome, LogCommand, LogOp, SessionCommand};
use crate::schema::Schema;
use crate::types::{LogIndex, Term};

/// Sessions kept at most; registering one more evicts the least recently
/// active. Bounds the table (and snapshots) against client churn.
pub const DEFAULT_MAX_SESSIONS: usize = 1 << 16;

/// A digest of a command's bytes (FNV-1a, 64 bits): the same on every
/// replica. It tells a client's retry from a different command that reuses
/// a sequence number by mistake (not an adversary: sessions have secrets).
fn body_digest(body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// How long an idle session lives, by default: one hour of leader time.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// What the replicas do when a command panics, or its result cannot be
/// encoded. Part of the replicated state: set by a log entry
/// ([`LogOp::SetPanicPolicy`]; `Client::set_panic_policy`, `ha-kv
/// panic-policy`), so every replica applies the same policy at every index,
/// whatever it was started with and whether it replays from a snapshot or
/// from the log. A new service starts with `Continue`.
///
/// Either way the failure is caught (with `panic = "unwind"`, Rust's
/// default; a build with `panic = "abort"` dies instead, on every replica)
/// and becomes the command's outcome, the same on every replica: the panic's
/// message, answered to the client as [`crate::Error::Failed`] and to its
/// retries alike. What the method changed before it panicked stays, on every
/// replica alike. Builds that differ in `overflow-checks` (debug against
/// release) panic at different places: run one build on every replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PanicPolicy {
    /// Record the failure and go on with the next command.
    #[default]
    Continue,
    /// Fail-stop: record the failure, then refuse every later command (not
    /// applied, answered as such) and every query, until an operator
    /// resumes at that index ([`LogOp::Resume`]; `ha-kv resume`). The
    /// state stays as the failing command left it.
    Halt,
}

impl PanicPolicy {
    /// The policy's name as operators write it: `continue` or `halt`.
    pub fn name(self) -> &'static str {
        match self {
            PanicPolicy::Continue => "continue",
            PanicPolicy::Halt => "halt",
        }
    }
}

/// A kept result of a session's command: what a retry is answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Kept {
    /// The encoded output.
    Output(Bytes),
    /// The command failed (panicked, or its output could not be encoded).
    Failed(String),
    /// The command came while the service was halted: not applied.
    Halted { index: u64, reason: String },
}

impl Kept {
    fn outcome(&self) -> CommandOutcome {
        match self {
            Kept::Output(b) => CommandOutcome::Applied(b.clone()),
            Kept::Failed(why) => CommandOutcome::Failed(why.clone()),
            Kept::Halted { index, reason } => CommandOutcome::Halted {
                index: *index,
                reason: reason.clone(),
            },
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// The secret the registering client chose: a command must carry it.
    /// Session ids are log indexes, so anyone can guess one; only the
    /// owner knows its secret.
    secret: u64,
    /// Numbers below this are closed.
    closed_below: u64,
    /// Results of open numbers, with a digest of the command that produced
    /// each: a retry must carry the same command.
    results: BTreeMap<u64, (u64, Kept)>,
    /// Leader time of the last command.
    last_active_ms: u64,
}

/// The user's state plus the session table: the whole replicated state.
pub struct Sessions<T> {
    state: T,
    sessions: BTreeMap<u64, Session>,
    timeout_ms: u64,
    /// Sessions kept at most (a setting, like the timeout: every replica
    /// must use the same).
    max_sessions: usize,
    /// Leader time of the last command applied.
    now_ms: u64,
    /// What a failing command does: replicated state, set by the log.
    policy: PanicPolicy,
    /// Set while halted ([`PanicPolicy::Halt`]): replicated state.
    halted: Option<Halt>,
    /// The answers to the last [`MAX_OPERATOR_OPS`] operator operations
    /// (resume, panic policy), by the nonce their client chose, oldest
    /// first: a retry is answered as the first attempt was, never applied
    /// again. Replicated state.
    operator_ops: VecDeque<(u64, OperatorOp, OperatorAnswer)>,
    /// The index of the last halt resumed: a new call to resume it (a
    /// rerun after a lost answer) is answered as done.
    last_resumed: Option<u64>,
    /// Replay every command whose index is a multiple of this on a copy
    /// of the state and compare (0: never). See
    /// [`Sessions::with_determinism_check`].
    check_every: u64,
    /// Commands the replay check found not deterministic.
    divergences: u64,
    /// Commands whose replay differed only in a sequence's order.
    order_only: u64,
    /// The state grew past [`MAX_CHECKED_STATE_BYTES`]: no more checks.
    check_too_large: bool,
    /// The planted bug (see [`Sessions::with_planted_recreate`]).
    #[cfg(feature = "planted-bugs")]
    planted_recreate: bool,
}

#[derive(Serialize, Deserialize)]
struct SnapshotForm {
    /// The stored fingerprint ([`Schema::stored`]) of the type that wrote it.
    schema: u64,
    sessions: BTreeMap<u64, Session>,
    now_ms: u64,
    policy: PanicPolicy,
    halted: Option<Halt>,
    operator_ops: VecDeque<(u64, OperatorOp, OperatorAnswer)>,
    last_resumed: Option<u64>,
    state: Vec<u8>,
}

impl<T: Replicated> Default for Sessions<T> {
    fn default() -> Sessions<T> {
        Sessions::new()
    }
}

impl<T: Replicated> Sessions<T> {
    /// A fresh state (`T::default()`) and no sessions, with ha's session
    /// settings ([`DEFAULT_SESSION_TIMEOUT_MS`], [`DEFAULT_MAX_SESSIONS`]).
    ///
    /// The settings decide which commands apply (an expired or evicted
    /// session's are refused), so every replica must use the same ones:
    /// they are ha's constants, part of the stored fingerprint, and no node
    /// option changes them.
    pub fn new() -> Sessions<T> {
        Sessions {
            state: T::default(),
            sessions: BTreeMap::new(),
            timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            max_sessions: DEFAULT_MAX_SESSIONS,
            now_ms: 0,
            policy: PanicPolicy::Continue,
            halted: None,
            operator_ops: VecDeque::new(),
            last_resumed: None,
            check_every: DEFAULT_DETERMINISM_CHECK_EVERY,
            divergences: 0,
            order_only: 0,
            check_too_large: false,
            #[cfg(feature = "planted-bugs")]
            planted_recreate: false,
        }
    }

    /// Plants the bug sessions had before registration entries: a command
    /// that could be a session's first re-creates an unknown session, so a
    /// late retry after an expiry applies twice. Test-only.
    #[cfg(feature = "planted-bugs")]
    #[must_use]
    pub fn with_planted_recreate(mut self) -> Sessions<T> {
        self.planted_recreate = true;
        self
    }

    /// The same with other session settings: an idle session lives
    /// `timeout_ms` of leader time, at most `max_sessions` (at least 1) are
    /// kept. For tests and the simulator only: these values are in no
    /// fingerprint, so replicas given different ones would diverge
    /// silently. A node never calls it.
    #[doc(hidden)]
    #[must_use]
    pub fn with_unchecked_settings(mut self, timeout_ms: u64, max_sessions: usize) -> Sessions<T> {
        self.timeout_ms = timeout_ms;
        self.max_sessions = max_sessions.max(1);
        self
    }

    /// The same, replaying every command whose log index is a multiple of
    /// `every` on a copy of the state (restored from a snapshot taken just
    /// before it) and comparing the result and the state afterwards: a
    /// command that reads a clock, randomness, a global, or iterates a
    /// `HashMap` (a copy hashes with other keys) is reported loudly, as an
    /// error in the log and in [`Sessions::divergences`]. 0 turns it off.
    /// On by default in debug builds (every 16th command), off in release:
    /// it costs two snapshots and a second run of the command.
    #[must_use]
    pub fn with_determinism_check(mut self, every: u64) -> Sessions<T> {
        self.check_every = every;
        self
    }

    /// Commands the determinism check found to give another result or
    /// state when run again (see [`Sessions::with_determinism_check`]).
    pub fn divergences(&self) -> u64 {
        self.divergences
    }

    /// Commands whose replay differed only in the order of a sequence (a
    /// `HashSet`, harmless, or a `Vec` filled in hash order, a bug): logged
    /// as a warning, counted apart from [`Sessions::divergences`].
    pub fn order_only_differences(&self) -> u64 {
        self.order_only
    }

    /// The policy for failing commands now in force.
    pub fn panic_policy(&self) -> PanicPolicy {
        self.policy
    }

    /// Where and why the service halted, while it is halted
    /// ([`PanicPolicy::Halt`]).
    pub fn halted(&self) -> Option<(LogIndex, &str)> {
        self.halted
            .as_ref()
            .map(|h| (LogIndex(h.index), h.reason.as_str()))
    }

    /// The user's state.
    pub fn state(&self) -> &T {
        &self.state
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Applies one log command (see the module docs) and returns the
    /// encoded [`CommandOutcome`].
    pub fn apply_log_command(
        &mut self,
        index: LogIndex,
        term: Term,
        cmd: LogCommand,
    ) -> CommandOutcome {
        let LogCommand { time_ms, op } = cmd;
        // Leader clocks may step back across leader changes; time in the
        // state machine never does.
        self.now_ms = self.now_ms.max(time_ms);
        self.expire();
        match op {
            LogOp::Register { secret } => self.register(index, secret),
            LogOp::SetPanicPolicy { policy, nonce } => self.set_panic_policy(index, policy, nonce),
            LogOp::Resume { index: at, nonce } => self.resume(index, at, nonce),
            LogOp::Command(c) => self.apply_command(index, term, c),
        }
    }

    /// Runs an encoded query; returns the encoded output. A query that
    /// panics is an error naming the panic, never the end of the node.
    pub fn query_bytes(&self, body: &[u8]) -> Result<Bytes, StateError> {
        if let Some(h) = &self.halted {
            return Err(StateError::Query(halted_text(h)));
        }
        let q: T::Query = decode_exact(body).map_err(StateError::Decode)?;
        let state = &self.state;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.run_query(q)))
            .map_err(|p| {
                StateError::Query(format!("the query panicked: {}", panic_message(&*p)))
            })?;
        Ok(Bytes::from(postcard::to_stdvec(&out).map_err(|e| {
            StateError::Encode(format!("the query's result could not be encoded: {e}"))
        })?))
    }

    /// Encodes the whole replicated state (user state and sessions).
    pub fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        let form = SnapshotForm {
            schema: Schema::of::<T>()
                .map_err(|e| StateError::Encode(e.to_string()))?
                .stored(),
            sessions: self.sessions.clone(),
            now_ms: self.now_ms,
            policy: self.policy,
            halted: self.halted.clone(),
            operator_ops: self.operator_ops.clone(),
            last_resumed: self.last_resumed,
            state: self.state.snapshot_state()?,
        };
        postcard::to_stdvec(&form).map_err(|e| StateError::Encode(e.to_string()))
    }

    /// Restores a state written by [`Sessions::snapshot`], refusing one of
    /// another stored fingerprint. The replica's settings are ha's (see
    /// [`Sessions::new`]).
    pub fn restore(bytes: &[u8]) -> Result<Sessions<T>, StateError> {
        let form: SnapshotForm = decode_exact(bytes).map_err(StateError::Decode)?;
        let ours = Schema::of::<T>()
            .map_err(|e| StateError::Decode(e.to_string()))?
            .stored();
        if form.schema != ours {
            return Err(StateError::Decode(format!(
                "snapshot was written by another version of the replicated type (stored \
                 fingerprint {:016x}; this build has {ours:016x})",
                form.schema
            )));
        }
        // Written by `snapshot`, which never keeps more; a snapshot that
        // says otherwise is refused, not trusted to shrink later.
        if form.operator_ops.len() > MAX_OPERATOR_OPS {
            return Err(StateError::Decode(format!(
                "snapshot keeps {} operator answers, more than the {MAX_OPERATOR_OPS} ever kept",
                form.operator_ops.len()
            )));
        }
        // What the snapshot holds; the rest (this replica's settings and
        // counts) starts as in a fresh one.
        Ok(Sessions {
            state: T::restore_state(&form.state)?,
            sessions: form.sessions,
            now_ms: form.now_ms,
            policy: form.policy,
            halted: form.halted,
            operator_ops: form.operator_ops,
            last_resumed: form.last_resumed,
            ..Sessions::new()
        })
    }
}

/// The largest state (encoded) the determinism check copies.
pub const MAX_CHECKED_STATE_BYTES: usize = 16 << 20;

/// Results one session keeps at most for numbers its client has not
/// acknowledged; a new number beyond it closes the oldest (see
/// `Sessions::session_gate`). Part of the stored fingerprint.
pub const MAX_OPEN_RESULTS: usize = 1024;

/// Operator operations whose answers are kept for retries (see
/// `Sessions::operator_ops`).
pub const MAX_OPERATOR_OPS: usize = 64;

/// How often the determinism check replays a command by default (see
/// [`Sessions::with_determinism_check`]).
pub const DEFAULT_DETERMINISM_CHECK_EVERY: u64 = if cfg!(debug_assertions) { 16 } else { 0 };

/// The shapes of what ha itself stores around the user's types: a log
/// entry's envelope and the snapshot's (the session table, kept results,
/// the panic policy and halt). Part of the stored fingerprint, so a change
/// to any of them refuses old data instead of misreading it.
///
/// The session settings are in it too: they decide which commands apply, so
/// an ha build with other settings must not share a cluster or a data
/// directory with this one.
pub(crate) fn envelope_shape() -> Result<String, crate::schema::SchemaError> {
    Ok(format!(
        "log={} snapshot={} sessions(timeout_ms={DEFAULT_SESSION_TIMEOUT_MS},max={DEFAULT_MAX_SESSIONS},open_results={MAX_OPEN_RESULTS},operator_ops={MAX_OPERATOR_OPS})",
        crate::schema::shape_of::<LogCommand>()?,
        crate::schema::shape_of::<SnapshotForm>()?
    ))
}

impl<T: Replicated> Applier for Sessions<T> {
    fn is_replicated_type(&self) -> bool {
        true
    }
    fn stored_schema(&self) -> Option<u64> {
        Schema::of::<T>().ok().map(|s| s.stored())
    }
    fn apply(&mut self, index: LogIndex, term: Term, command: &Bytes) -> Bytes {
        let outcome = match decode_exact::<LogCommand>(command) {
            Ok(cmd) => self.apply_log_command(index, term, cmd),
            Err(e) => CommandOutcome::Undecodable(e),
        };
        Bytes::from(postcard::to_stdvec(&outcome).expect("outcomes encode"))
    }

    fn query(&self, query: &Bytes) -> Result<Bytes, StateError> {
        self.query_bytes(query)
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Sessions::snapshot(self)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), StateError> {
        let (timeout, max, every) = (self.timeout_ms, self.max_sessions, self.check_every);
        // What this replica found is its own, not the snapshot's: the
        // count (a metric's counter) must not go back.
        let (divergences, order_only) = (self.divergences, self.order_only);
        *self = Sessions::restore(state)?
            .with_unchecked_settings(timeout, max)
            .with_determinism_check(every);
        self.divergences = divergences;
        self.order_only = order_only;
        Ok(())
    }

    fn halted(&self) -> Option<String> {
        self.halted.as_ref().map(halted_text)
    }

    fn panic_policy(&self) -> Option<PanicPolicy> {
        Some(self.policy)
    }

    fn divergences(&self) -> u64 {
        self.divergences
    }
}
