//! Operator operations carried in the log: the panic policy, a halt and
//! its resume, each answered once per nonce.
//!
//! Invariants: an operator answer is kept with its operation (at most
//! [`MAX_OPERATOR_OPS`]), so a retry is answered and never applied again,
//! and a nonce seen with another operation is refused; a halt ends only by
//! a resume naming its index.

use super::*;

/// An operator operation, kept with its nonce (see `Sessions::operator_op`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum OperatorOp {
    Resume(u64),
    SetPanicPolicy(PanicPolicy),
}

/// An operator operation's answer, as kept in the replicated state: ha's
/// own type, not the wire's `CommandOutcome`, so the stored shape does not
/// change with the client protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum OperatorAnswer {
    Resume(Result<u64, String>),
    PanicPolicy(PanicPolicy),
}

impl OperatorAnswer {
    pub(super) fn outcome(&self) -> CommandOutcome {
        match self {
            OperatorAnswer::Resume(r) => CommandOutcome::Resume(r.clone()),
            OperatorAnswer::PanicPolicy(p) => CommandOutcome::PanicPolicy(*p),
        }
    }
}

/// Where and why the service halted ([`PanicPolicy::Halt`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Halt {
    pub(super) index: u64,
    pub(super) reason: String,
}

impl<T: Replicated> Sessions<T> {
    /// The operator sets the panic policy from this entry on.
    pub(super) fn set_panic_policy(
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
    pub(super) fn resume(&mut self, index: LogIndex, at: u64, nonce: u64) -> CommandOutcome {
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

    /// Applies an operator operation once per `nonce`: a retry (the same
    /// nonce, within the last [`MAX_OPERATOR_OPS`]) gets the first answer.
    /// A nonce seen with another operation is refused: a client bug (or a
    /// collision of two random numbers), never a reason to answer wrongly.
    pub(super) fn operator_op(
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
}

/// What a halted service answers.
pub(super) fn halted_text(h: &Halt) -> String {
    format!(
        "the service halted at log index {} because that command failed ({}): nothing is \
         applied or read until an operator resumes it at that index (`ha-kv resume --index {}`)",
        h.index, h.reason, h.index
    )
}
