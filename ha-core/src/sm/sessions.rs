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

/// An operator operation, kept with its nonce (see `Sessions::operator_op`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum OperatorOp {
    Resume(u64),
    SetPanicPolicy(PanicPolicy),
}

/// An operator operation's answer, as kept in the replicated state: ha's
/// own type, not the wire's `CommandOutcome`, so the stored shape does not
/// change with the client protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum OperatorAnswer {
    Resume(Result<u64, String>),
    PanicPolicy(PanicPolicy),
}

impl OperatorAnswer {
    fn outcome(&self) -> CommandOutcome {
        match self {
            OperatorAnswer::Resume(r) => CommandOutcome::Resume(r.clone()),
            OperatorAnswer::PanicPolicy(p) => CommandOutcome::PanicPolicy(*p),
        }
    }
}

/// Where and why the service halted ([`PanicPolicy::Halt`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Halt {
    index: u64,
    reason: String,
}

/// The text of a panic's payload (what `panic!` was given): the same on
/// every replica for the same panic, unlike its location or backtrace.
/// At most this many bytes of it are kept (in session results, snapshots
/// and answers), cut on a character boundary: the same cut everywhere.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    const MAX: usize = 1024;
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "a panic whose payload is not text"
    };
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
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

impl<T: Replicated> Sessions<T> {
    /// A fresh state (`T::default()`) and no sessions.
    pub fn new(timeout_ms: u64) -> Sessions<T> {
        Sessions {
            state: T::default(),
            sessions: BTreeMap::new(),
            timeout_ms,
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

    /// The same with at most `max` sessions (at least 1).
    #[must_use]
    pub fn with_max_sessions(mut self, max: usize) -> Sessions<T> {
        self.max_sessions = max.max(1);
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

    /// A registration entry: a new session, whose id is the entry's index.
    fn register(&mut self, index: LogIndex, secret: u64) -> CommandOutcome {
        if self.sessions.len() >= self.max_sessions {
            // Deterministic eviction of the least recently active
            // session: its next command is answered "expired".
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(id, s)| (s.last_active_ms, **id))
                .map(|(id, _)| *id)
            {
                self.sessions.remove(&oldest);
            }
        }
        // The entry's index is unique in the log's history: a new
        // session, never one that existed before.
        self.sessions.insert(
            index.0,
            Session {
                secret,
                closed_below: 1,
                results: BTreeMap::new(),
                last_active_ms: self.now_ms,
            },
        );
        CommandOutcome::Registered { session: index.0 }
    }

    /// The operator sets the panic policy from this entry on.
    fn set_panic_policy(
        &mut self,
        index: LogIndex,
        policy: PanicPolicy,
        nonce: u64,
    ) -> CommandOutcome {
        self.operator_op(nonce, OperatorOp::SetPanicPolicy(policy), |s| {
            if policy != s.policy {
                tracing::warn!(
                    "the panic policy is {policy:?} from entry {} on (was {:?})",
                    index.0,
                    s.policy
                );
            }
            s.policy = policy;
            OperatorAnswer::PanicPolicy(policy)
        })
    }

    /// The operator resumes a service halted at `at`.
    fn resume(&mut self, index: LogIndex, at: u64, nonce: u64) -> CommandOutcome {
        self.operator_op(nonce, OperatorOp::Resume(at), |s| {
            OperatorAnswer::Resume(match &s.halted {
                Some(h) if h.index == at => {
                    tracing::warn!(
                        "the service resumes at entry {}, after the halt at {at}",
                        index.0
                    );
                    s.halted = None;
                    s.last_resumed = Some(at);
                    Ok(at)
                }
                // A new call after a lost answer: already done.
                None if s.last_resumed == Some(at) => Ok(at),
                Some(h) => Err(format!(
                    "the service halted at index {}, not {at}: resume names the index it \
                     halted at",
                    h.index
                )),
                None => Err("the service is not halted".into()),
            })
        })
    }

    /// A client's command in its session: run once, its outcome kept for
    /// retries.
    fn apply_command(&mut self, index: LogIndex, term: Term, c: SessionCommand) -> CommandOutcome {
        #[cfg(feature = "planted-bugs")]
        if self.planted_recreate && c.ack_below <= 1 && !self.sessions.contains_key(&c.client) {
            // The planted bug: a session's "first" command re-creates it.
            self.sessions.insert(
                c.client,
                Session {
                    secret: c.secret,
                    closed_below: 1,
                    ..Session::default()
                },
            );
        }
        let digest = body_digest(&c.body);
        if let Some(outcome) = self.session_gate(&c, digest) {
            return outcome;
        }
        let command = match decode_command::<T>(&c.body) {
            Ok(command) => command,
            Err(outcome) => return outcome,
        };
        let ctx = ApplyContext {
            index,
            term,
            time_ms: self.now_ms,
        };
        let before = self.state_before(index, &command);
        // A panic is caught and becomes the outcome (see `PanicPolicy`): it
        // happens at the same point on every replica, so they stay alike.
        let kept = run_command(&mut self.state, command, &ctx);
        if let Some(b) = before {
            let finding = replay(&self.state, &b, &c.body, &ctx, &kept);
            self.report_replay(index, finding);
        }
        self.note_failure(index, &kept);
        let outcome = kept.outcome();
        // The gate found the session, and nothing since removes one (only
        // `state`, `halted` and this replica's counters changed): losing
        // the kept result would let a retry apply the command twice.
        self.sessions
            .get_mut(&c.client)
            .expect("the session the gate found is still there")
            .results
            .insert(c.seq, (digest, kept));
        outcome
    }

    /// What the session table answers before a command may run: expired,
    /// abandoned, a retry's kept result, or halted (kept, so a late
    /// duplicate after a resume is not applied). `None`: run it.
    fn session_gate(&mut self, c: &SessionCommand, digest: u64) -> Option<CommandOutcome> {
        let now = self.now_ms;
        let Some(session) = self
            .sessions
            .get_mut(&c.client)
            .filter(|s| s.secret == c.secret)
        else {
            // Expired or never registered (or not this client's): never
            // applied (§6.3).
            return Some(CommandOutcome::SessionExpired);
        };
        session.last_active_ms = now;
        if c.ack_below > session.closed_below {
            session.closed_below = c.ack_below;
            session.results = session.results.split_off(&c.ack_below);
        }
        if c.seq < session.closed_below {
            return Some(CommandOutcome::Abandoned);
        }
        if let Some((d, r)) = session.results.get(&c.seq) {
            if *d != digest {
                // A client bug: one sequence number, two commands.
                return Some(CommandOutcome::SeqReused);
            }
            return Some(r.outcome());
        }
        if let Some(h) = &self.halted {
            let kept = Kept::Halted {
                index: h.index,
                reason: h.reason.clone(),
            };
            let outcome = kept.outcome();
            session.results.insert(c.seq, (digest, kept));
            return Some(outcome);
        }
        None
    }

    /// The determinism check's copy of the state before the command at
    /// `index`, if this one is checked. (User code: a panic in the state's
    /// encoding is caught; no check.) Skipped for a state too large to
    /// encode three more times on the node's task, and for a command whose
    /// method allowed non-determinism (`#[replicated(allow(..))]`: it may
    /// do IO, which must not happen twice).
    fn state_before(&mut self, index: LogIndex, command: &T::Command) -> Option<Vec<u8>> {
        let before = (self.check_every > 0
            && !self.check_too_large
            && index.0.is_multiple_of(self.check_every)
            && T::replay_safe(command))
        .then(|| {
            let state = &self.state;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.snapshot_state()))
        })
        .and_then(|r| r.ok()?.ok());
        // Once too large, never encoded for the check again.
        match before {
            Some(b) if b.len() > MAX_CHECKED_STATE_BYTES => {
                self.check_too_large = true;
                tracing::warn!(
                    "the determinism check stops: the state encodes to {} bytes, over {}",
                    b.len(),
                    MAX_CHECKED_STATE_BYTES
                );
                None
            }
            b => b,
        }
    }

    /// Says and counts what the determinism check found. Nothing here
    /// touches the replicated state: the counts are this replica's own,
    /// never in a snapshot.
    fn report_replay(&mut self, index: LogIndex, finding: Replay) {
        match finding {
            Replay::Same => {}
            Replay::Differs(why) => {
                self.divergences += 1;
                tracing::error!(
                    "NOT DETERMINISTIC: the command at log index {} {why} when run again on a \
                     copy of the state from just before it: replicas will drift apart. Look \
                     in it for HashMap or HashSet iteration, clocks, randomness, globals or IO \
                     ({} found so far)",
                    index.0,
                    self.divergences
                );
            }
            Replay::OrderOnly(why) => {
                // A HashSet in the state does this on every check: said
                // once, then counted.
                self.order_only += 1;
                if self.order_only == 1 {
                    tracing::warn!(
                        "the command at log index {} {why} when run again, but only in the \
                         order of a sequence: a HashSet (harmless; a BTreeSet avoids this \
                         warning), or a Vec filled in a hash collection's order (replicas \
                         drift apart). Said once; later ones are only counted",
                        index.0
                    );
                }
            }
            Replay::Unchecked(why) => {
                tracing::warn!(
                    "the determinism check could not check the command at log index {}: {why}",
                    index.0
                );
            }
        }
    }

    /// A failed command is logged, and under `Halt` halts the service.
    fn note_failure(&mut self, index: LogIndex, kept: &Kept) {
        if let Kept::Failed(why) = kept {
            tracing::error!(
                "command at index {} failed ({why}); policy {:?}",
                index.0,
                self.policy
            );
            if self.policy == PanicPolicy::Halt {
                self.halted = Some(Halt {
                    index: index.0,
                    reason: why.clone(),
                });
            }
        }
    }

    fn expire(&mut self) {
        let (now, timeout) = (self.now_ms, self.timeout_ms);
        self.sessions
            .retain(|_, s| s.last_active_ms.saturating_add(timeout) >= now);
    }

    /// Applies an operator operation once per `nonce`: a retry (the same
    /// nonce, within the last [`MAX_OPERATOR_OPS`]) gets the first answer.
    /// A nonce seen with another operation is refused: a client bug (or a
    /// collision of two random numbers), never a reason to answer wrongly.
    fn operator_op(
        &mut self,
        nonce: u64,
        op: OperatorOp,
        apply: impl FnOnce(&mut Self) -> OperatorAnswer,
    ) -> CommandOutcome {
        if let Some((_, seen, answer)) = self.operator_ops.iter().find(|(n, ..)| *n == nonce) {
            return if *seen == op {
                answer.outcome()
            } else {
                CommandOutcome::Undecodable(
                    "this operator command's nonce was used by another one: not applied".into(),
                )
            };
        }
        let answer = apply(self);
        if self.operator_ops.len() >= MAX_OPERATOR_OPS {
            self.operator_ops.pop_front();
        }
        self.operator_ops.push_back((nonce, op, answer.clone()));
        answer.outcome()
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
    /// another stored fingerprint.
    pub fn restore(bytes: &[u8], timeout_ms: u64) -> Result<Sessions<T>, StateError> {
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
            ..Sessions::new(timeout_ms)
        })
    }
}

/// Decodes a command: the user's Deserialize impls run here too, so a
/// panic in one is an undecodable command, the same on every replica.
fn decode_command<T: Replicated>(body: &[u8]) -> Result<T::Command, CommandOutcome> {
    match std::panic::catch_unwind(|| decode_exact(body)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CommandOutcome::Undecodable(e)),
        Err(p) => Err(CommandOutcome::Undecodable(format!(
            "decoding it panicked: {}",
            panic_message(&*p)
        ))),
    }
}

/// Runs one command on `state`: its encoded output, or why it failed (a
/// panic, or an output that cannot be encoded), caught.
pub(super) fn run_command<T: Replicated>(
    state: &mut T,
    command: T::Command,
    ctx: &ApplyContext,
) -> Kept {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        state.apply_command(command, ctx)
    }));
    match run {
        Ok(out) => match postcard::to_stdvec(&out) {
            Ok(b) => Kept::Output(Bytes::from(b)),
            Err(e) => Kept::Failed(format!("its result could not be encoded: {e}")),
        },
        Err(payload) => Kept::Failed(format!("it panicked: {}", panic_message(&*payload))),
    }
}

/// The largest state (encoded) the determinism check copies.
pub const MAX_CHECKED_STATE_BYTES: usize = 16 << 20;

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
pub(crate) fn envelope_shape() -> Result<String, crate::schema::SchemaError> {
    Ok(format!(
        "log={} snapshot={}",
        crate::schema::shape_of::<LogCommand>()?,
        crate::schema::shape_of::<SnapshotForm>()?
    ))
}

/// What a halted service answers.
fn halted_text(h: &Halt) -> String {
    format!(
        "the service halted at log index {} because that command failed ({}): nothing is \
         applied or read until an operator resumes it at that index (`ha-kv resume --index {}`)",
        h.index, h.reason, h.index
    )
}

impl<T: Replicated> Applier for Sessions<T> {
    fn is_replicated_type(&self) -> bool {
        true
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
        let (max, every) = (self.max_sessions, self.check_every);
        // What this replica found is its own, not the snapshot's: the
        // count (a metric's counter) must not go back.
        let (divergences, order_only) = (self.divergences, self.order_only);
        *self = Sessions::restore(state, self.timeout_ms)?
            .with_max_sessions(max)
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
