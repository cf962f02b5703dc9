//! A session command's way through the state machine: registration, the
//! session gate (unknown, expired, duplicate), the user's method under
//! `catch_unwind`, the determinism replay check, and what is kept.
//!
//! Invariants: a command runs only for a registered, live session and a
//! sequence number not seen before; its outcome (success, failure, panic)
//! is the same on every replica and is kept for retries.

use super::*;

/// The text of a panic's payload (what `panic!` was given): the same on
/// every replica for the same panic, unlike its location or backtrace.
/// At most this many bytes of it are kept (in session results, snapshots
/// and answers), cut on a character boundary: the same cut everywhere.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
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

impl<T: Replicated> Sessions<T> {
    /// A registration entry: a new session, whose id is the entry's index.
    pub(super) fn register(&mut self, index: LogIndex, secret: u64) -> CommandOutcome {
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

    /// A client's command in its session: run once, its outcome kept for
    /// retries.
    pub(super) fn apply_command(
        &mut self,
        index: LogIndex,
        term: Term,
        c: SessionCommand,
    ) -> CommandOutcome {
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
    pub(super) fn session_gate(
        &mut self,
        c: &SessionCommand,
        digest: u64,
    ) -> Option<CommandOutcome> {
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
            #[cfg(feature = "planted-bugs")]
            let planted = crate::raft::PlantedBug::from_env_once()
                == Some(crate::raft::PlantedBug::RetryAppliedTwice);
            #[cfg(not(feature = "planted-bugs"))]
            let planted = false;
            if planted {
                // Applied again, and nothing else of the gate: the bug is
                // the double apply alone.
                return None;
            }
            return Some(r.outcome());
        }
        // A new number on a session already keeping the most results it
        // may: the oldest is closed and forgotten (a retry of it is answered
        // `Abandoned`, which the client reports as an unknown outcome), the
        // same on every replica. Bounds what one client that never
        // acknowledges can make every replica keep.
        // (The client keeps its open numbers within a window of this size,
        // so this happens only to a client that does not.) A new number
        // below the oldest kept is itself the oldest: it is closed and
        // refused, and nothing kept is lost for it.
        if session.results.len() >= MAX_OPEN_RESULTS
            && let Some((&oldest, _)) = session.results.first_key_value()
        {
            if c.seq < oldest {
                session.closed_below = c.seq.saturating_add(1);
                return Some(CommandOutcome::Abandoned);
            }
            session.closed_below = oldest.saturating_add(1);
            session.results.remove(&oldest);
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
    pub(super) fn state_before(
        &mut self,
        index: LogIndex,
        command: &T::Command,
    ) -> Option<Vec<u8>> {
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
    pub(super) fn report_replay(&mut self, index: LogIndex, finding: Replay) {
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
    pub(super) fn note_failure(&mut self, index: LogIndex, kept: &Kept) {
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

    pub(super) fn expire(&mut self) {
        let (now, timeout) = (self.now_ms, self.timeout_ms);
        self.sessions
            .retain(|_, s| s.last_active_ms.saturating_add(timeout) >= now);
    }
}

/// Decodes a command: the user's Deserialize impls run here too, so a
/// panic in one is an undecodable command, the same on every replica.
pub(super) fn decode_command<T: Replicated>(body: &[u8]) -> Result<T::Command, CommandOutcome> {
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
pub(in crate::sm) fn run_command<T: Replicated>(
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
