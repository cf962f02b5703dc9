//! The messages Raft nodes exchange.
//!
//! Raft is written here as message passing, not RPC (as in etcd and raft-rs):
//! a response is just another message from the follower, so a transport only
//! has to move `Message`s between node ids.
//!
//! Invariants (checked by [`Message::validate`] before the core acts on a
//! message, so malformed network input is refused without changing state):
//! 1. An append's entries are contiguous, start at `prev_index + 1`, and none
//!    has a term above the message's term.
//! 2. An append's `prev_term` is not above the message's term.

use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogIndex, NodeId, Term};

/// One message between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: Body,
}

/// The body of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// "Would you vote for me in `term`?" (dissertation §9.6). Changes no state.
    PreVote {
        /// Index of the candidate's last entry.
        last_index: LogIndex,
        /// Term of the candidate's last entry.
        last_term: Term,
    },
    /// Answer to a [`Body::PreVote`].
    PreVoteResponse {
        /// Whether the pre-vote was granted.
        granted: bool,
    },
    /// RequestVote (dissertation §3.4).
    Vote {
        /// Index of the candidate's last entry.
        last_index: LogIndex,
        /// Term of the candidate's last entry.
        last_term: Term,
    },
    /// Answer to a [`Body::Vote`].
    VoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (dissertation §3.5).
    Append {
        /// Index of the entry just before `entries`.
        prev_index: LogIndex,
        /// Term of that entry.
        prev_term: Term,
        /// New entries, possibly none.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: LogIndex,
    },
    /// Answer to a [`Body::Append`].
    AppendResponse(AppendOutcome),
    /// Leader heartbeat; also confirms leadership for ReadIndex rounds.
    Heartbeat {
        /// `min(follower's match index, leader's commit)`: always safe to apply.
        commit: LogIndex,
        /// The leader's heartbeat sequence number in this term. An answer to
        /// it confirms every ReadIndex round started at or before it, and
        /// tells the leader which appends this heartbeat overtook.
        seq: u64,
    },
    /// Answer to a [`Body::Heartbeat`].
    HeartbeatResponse {
        /// Echo of the heartbeat's `seq`.
        seq: u64,
    },
    /// The leader's snapshot ending at `(index, term)` is now durable on the
    /// receiver (its bytes travelled out of band and were verified): install
    /// it. Answered with an [`AppendOutcome::Accepted`].
    InstallSnapshot {
        /// Last index the snapshot covers.
        index: LogIndex,
        /// Its term.
        term: Term,
    },
}

/// A follower's answer to an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// The follower's log now matches the leader's up to `match_index`.
    Accepted {
        /// Highest index known to match.
        match_index: LogIndex,
    },
    /// The follower has no entry `(prev_index, prev_term)`.
    Rejected {
        /// The rejected append's `prev_index`.
        rejected: LogIndex,
        /// Fast backtracking hint: the follower's largest index at or below
        /// `rejected` whose term is at most the append's `prev_term`.
        hint_index: LogIndex,
        /// The term at `hint_index`.
        hint_term: Term,
    },
}

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// An append's entries do not follow `prev_index` contiguously.
    #[error("append entries are not contiguous after index {prev_index}")]
    NotContiguous {
        /// The append's `prev_index`.
        prev_index: LogIndex,
    },
    /// An entry or `prev_term` claims a term above the message's.
    #[error("append carries term {entry_term} above the message term {message_term}")]
    TermFromFuture {
        /// The offending term.
        entry_term: Term,
        /// The message's term.
        message_term: Term,
    },
}

impl Message {
    /// Checks the invariants in the module docs.
    pub fn validate(&self) -> Result<(), MessageError> {
        if let Body::InstallSnapshot { term, .. } = &self.body
            && *term > self.term
        {
            return Err(MessageError::TermFromFuture {
                entry_term: *term,
                message_term: self.term,
            });
        }
        if let Body::Append {
            prev_index,
            prev_term,
            entries,
            ..
        } = &self.body
        {
            if *prev_term > self.term {
                return Err(MessageError::TermFromFuture {
                    entry_term: *prev_term,
                    message_term: self.term,
                });
            }
            for (k, e) in entries.iter().enumerate() {
                if e.index != prev_index.plus(k as u64 + 1) {
                    return Err(MessageError::NotContiguous {
                        prev_index: *prev_index,
                    });
                }
                if e.term > self.term {
                    return Err(MessageError::TermFromFuture {
                        entry_term: e.term,
                        message_term: self.term,
                    });
                }
            }
        }
        Ok(())
    }
}
