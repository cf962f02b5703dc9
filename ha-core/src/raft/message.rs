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
//! 3. Every term is at most [`MAX_TERM`] and every index at most
//!    [`MAX_INDEX`], so no arithmetic on them can overflow.

use serde::{Deserialize, Serialize};

use super::Membership;
use crate::types::{Entry, LogIndex, MAX_INDEX, MAX_TERM, NodeId, Term};

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
        /// Asked by the target of a leadership transfer (see
        /// [`Body::Vote`]'s): answered despite the leader lease.
        transfer: bool,
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
        /// Sent by the target of a leadership transfer ([`Body::TimeoutNow`]):
        /// voters that still hear the leader answer it anyway, since the
        /// leader itself asked for this election (dissertation §3.10), but
        /// only if its log is at least as up to date as their own.
        transfer: bool,
    },
    /// From a leader to the target of its leadership transfer, once the
    /// target's log matches its own: campaign now, without waiting for the
    /// election timeout (dissertation §3.10), through a pre-vote round that
    /// passes the lease. Obeyed only by a target whose log still ends at
    /// the leader's last entry, and its pre-votes find a majority only
    /// where no log is ahead of it: a copy that arrives late (the leader
    /// took proposals again) moves no term.
    TimeoutNow {
        /// Index of the leader's last entry when it sent this.
        last_index: LogIndex,
        /// Term of that entry.
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
        /// New entries, possibly none; at most [`MAX_APPEND_ENTRIES`] (more
        /// are refused while decoding, before they are built).
        #[serde(deserialize_with = "bounded_entries")]
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
        /// The configuration in force at `index`, as the snapshot file's
        /// header holds it (the receiving driver reads it from the file it
        /// verified; empty: a cluster bootstrapped with no configuration
        /// entry before `index`, which the receiver keeps its own for).
        membership: Membership,
    },
    /// "What is your term?", from a node repairing damaged storage, which
    /// may have forgotten the highest term it took part in. Changes no state
    /// of the receiver, whatever the message's term.
    TermQuery {
        /// Drawn at random for each repair: only answers echoing it count,
        /// so an answer delayed from before (another repair, another run)
        /// is ignored.
        nonce: u64,
    },
    /// Answer to a [`Body::TermQuery`]: the message's term is the sender's
    /// current (durable) term.
    TermReply {
        /// The query's nonce.
        nonce: u64,
        /// The sender's last log index, if it is the leader of that term.
        leader_last: Option<LogIndex>,
        /// The sender is repairing too (its term may be forgotten).
        repairing: bool,
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
    /// Like [`AppendOutcome::Accepted`], from a follower that is repairing
    /// damaged storage: it moves replication on but counts for no commit
    /// (the follower may have forgotten a higher term in which it
    /// acknowledged entries, so its acknowledgement may help a stale leader
    /// to a majority).
    RepairAccepted {
        /// Highest index known to match.
        match_index: LogIndex,
    },
    /// The follower is repairing damaged storage: its log ends at
    /// `(last_index, last_term)`, whatever it acknowledged before. The
    /// leader forgets what it knew of it and probes from there, if it knew
    /// of more. A repairing follower answers every heartbeat with this in
    /// place of a [`Body::HeartbeatResponse`], so it never counts towards
    /// confirming a leadership either.
    Repairing {
        /// The follower's last index.
        last_index: LogIndex,
        /// Its term.
        last_term: Term,
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
    /// A term or index is beyond what any real cluster reaches
    /// ([`MAX_TERM`], [`MAX_INDEX`]): corrupt or hostile input.
    #[error("{what} {value} is out of range")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// More entries than fit below [`MAX_INDEX`].
    #[error("append carries {count} entries")]
    TooManyEntries {
        /// How many.
        count: usize,
    },
    /// An entry or `prev_term` claims a term above the message's.
    #[error("append carries term {entry_term} above the message term {message_term}")]
    TermFromFuture {
        /// The offending term.
        entry_term: Term,
        /// The message's term.
        message_term: Term,
    },
    /// A configuration (an entry's, a snapshot's) that no cluster can run
    /// under: no voter, or a node both voter and learner.
    #[error("invalid configuration: {0}")]
    BadConfiguration(String),
}

/// The most entries one append may carry. A leader sends at most its
/// `max_append_entries` (which `Config::validate` holds to this); a longer
/// append from the network is refused as it is decoded, so a frame of tiny
/// entries cannot make a receiver build millions of them (an entry in
/// memory is many times its few bytes on the wire).
pub const MAX_APPEND_ENTRIES: usize = 1 << 16;

/// Decodes an append's entries, refusing more than [`MAX_APPEND_ENTRIES`].
fn bounded_entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Entry>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<Entry>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_APPEND_ENTRIES} entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Entry>, A::Error> {
            use serde::de::Error;
            let too_many = || {
                A::Error::custom(format!(
                    "an append of more than {MAX_APPEND_ENTRIES} entries"
                ))
            };
            let hint = seq.size_hint().unwrap_or(0);
            if hint > MAX_APPEND_ENTRIES {
                return Err(too_many());
            }
            let mut out = Vec::with_capacity(hint.min(1024));
            while let Some(e) = seq.next_element()? {
                if out.len() == MAX_APPEND_ENTRIES {
                    return Err(too_many());
                }
                out.push(e);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded)
}

impl Message {
    /// The bytes this message takes in memory, about: what a queue of
    /// decoded messages is bounded by (an append's entries cost their
    /// in-memory size, not their few bytes on the wire).
    pub fn approx_bytes(&self) -> usize {
        let entries = match &self.body {
            Body::Append { entries, .. } => entries.iter().map(Entry::approx_bytes).sum(),
            _ => 0,
        };
        std::mem::size_of::<Message>().saturating_add(entries)
    }

    /// Checks what the core relies on before it acts on a message, so
    /// malformed network input is refused without changing state: an
    /// append's entries are contiguous, start at `prev_index + 1` and have
    /// no term above the message's; its `prev_term` is not above the
    /// message's term; every term is at most [`MAX_TERM`](crate::types::MAX_TERM)
    /// and every index at most [`MAX_INDEX`](crate::types::MAX_INDEX), so no
    /// arithmetic on them can overflow.
    pub fn validate(&self) -> Result<(), MessageError> {
        self.validate_ranges()?;
        if let Body::InstallSnapshot {
            term, membership, ..
        } = &self.body
        {
            if *term > self.term {
                return Err(MessageError::TermFromFuture {
                    entry_term: *term,
                    message_term: self.term,
                });
            }
            if !membership.is_empty() {
                check_conf(membership)?;
            }
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
                if let crate::types::EntryPayload::Membership(m) = &e.payload {
                    check_conf(m)?;
                }
            }
        }
        Ok(())
    }
}

/// A configuration a node may take on: at least one voter, no node both
/// voter and learner.
fn check_conf(m: &Membership) -> Result<(), MessageError> {
    m.validate()
        .map_err(|e| MessageError::BadConfiguration(e.to_string()))
}

impl Message {
    /// Checks invariant 3: every term and index in range.
    fn validate_ranges(&self) -> Result<(), MessageError> {
        let term = |what, t: Term| {
            if t.is_sane() {
                Ok(())
            } else {
                Err(MessageError::OutOfRange { what, value: t.0 })
            }
        };
        let index = |what, i: LogIndex| {
            if i.is_sane() {
                Ok(())
            } else {
                Err(MessageError::OutOfRange { what, value: i.0 })
            }
        };
        const { assert!(MAX_TERM < u64::MAX / 2 && MAX_INDEX < u64::MAX / 2) };
        term("message term", self.term)?;
        match &self.body {
            Body::PreVote {
                last_index,
                last_term,
                ..
            }
            | Body::Vote {
                last_index,
                last_term,
                ..
            }
            | Body::TimeoutNow {
                last_index,
                last_term,
            } => {
                index("last index", *last_index)?;
                term("last term", *last_term)
            }
            Body::PreVoteResponse { .. }
            | Body::VoteResponse { .. }
            | Body::HeartbeatResponse { .. }
            | Body::TermQuery { .. } => Ok(()),
            Body::TermReply { leader_last, .. } => match leader_last {
                Some(i) => index("leader's last index", *i),
                None => Ok(()),
            },
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                index("prev index", *prev_index)?;
                term("prev term", *prev_term)?;
                index("commit index", *commit)?;
                if entries.len() as u64 > MAX_INDEX - prev_index.0 {
                    return Err(MessageError::TooManyEntries {
                        count: entries.len(),
                    });
                }
                Ok(())
            }
            Body::AppendResponse(
                AppendOutcome::Accepted { match_index }
                | AppendOutcome::RepairAccepted { match_index },
            ) => index("match index", *match_index),
            Body::AppendResponse(AppendOutcome::Rejected {
                rejected,
                hint_index,
                hint_term,
            }) => {
                index("rejected index", *rejected)?;
                index("hint index", *hint_index)?;
                term("hint term", *hint_term)
            }
            Body::AppendResponse(AppendOutcome::Repairing {
                last_index,
                last_term,
            }) => {
                index("last index", *last_index)?;
                term("last term", *last_term)
            }
            Body::Heartbeat { commit, .. } => index("commit index", *commit),
            Body::InstallSnapshot {
                index: i, term: t, ..
            } => {
                index("snapshot index", *i)?;
                term("snapshot term", *t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(term: u64, body: Body) -> Message {
        Message {
            from: NodeId(2),
            to: NodeId(1),
            term: Term(term),
            body,
        }
    }

    fn blank_append(n: usize) -> Message {
        msg(
            1,
            Body::Append {
                prev_index: LogIndex(0),
                prev_term: Term(0),
                entries: (1..=n as u64)
                    .map(|i| Entry {
                        index: LogIndex(i),
                        term: Term(1),
                        payload: crate::types::EntryPayload::Blank,
                    })
                    .collect(),
                commit: LogIndex(0),
            },
        )
    }

    /// A frame of tiny entries would decode into many times its size: more
    /// than `MAX_APPEND_ENTRIES` are refused while decoding.
    #[test]
    fn an_append_of_too_many_entries_is_refused_while_it_is_decoded() {
        let ok = postcard::to_stdvec(&blank_append(MAX_APPEND_ENTRIES)).unwrap();
        let decoded: Message = postcard::from_bytes(&ok).unwrap();
        assert_eq!(decoded, blank_append(MAX_APPEND_ENTRIES));
        let over = postcard::to_stdvec(&blank_append(MAX_APPEND_ENTRIES + 1)).unwrap();
        assert!(postcard::from_bytes::<Message>(&over).is_err());
        let mut config = crate::raft::Config::new(NodeId(1));
        config.max_append_entries = MAX_APPEND_ENTRIES + 1;
        assert!(config.validate().is_err(), "a leader never sends more");
    }

    #[test]
    fn absurd_terms_and_indexes_are_refused() {
        let bad = [
            msg(u64::MAX, Body::HeartbeatResponse { seq: 1 }),
            msg(MAX_TERM + 1, Body::VoteResponse { granted: true }),
            msg(
                3,
                Body::Heartbeat {
                    commit: LogIndex(u64::MAX),
                    seq: 1,
                },
            ),
            msg(
                3,
                Body::AppendResponse(AppendOutcome::Accepted {
                    match_index: LogIndex(MAX_INDEX + 1),
                }),
            ),
            msg(
                3,
                Body::Vote {
                    last_index: LogIndex(u64::MAX),
                    last_term: Term(1),
                    transfer: false,
                },
            ),
            msg(
                3,
                Body::Append {
                    prev_index: LogIndex(u64::MAX - 1),
                    prev_term: Term(1),
                    entries: Vec::new(),
                    commit: LogIndex(0),
                },
            ),
        ];
        for m in bad {
            assert!(
                matches!(m.validate(), Err(MessageError::OutOfRange { .. })),
                "{m:?} was accepted"
            );
        }
        assert_eq!(
            msg(MAX_TERM, Body::HeartbeatResponse { seq: 1 }).validate(),
            Ok(())
        );
    }
}
