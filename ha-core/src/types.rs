//! The vocabulary of the log: node ids, terms, indexes, entries and hard state.
//!
//! Invariants:
//! 1. `Term` and `LogIndex` only grow through explicit `next()` calls; index 0
//!    and term 0 mean "before the first entry" and never name a real entry.
//!    Values from outside are checked against [`MAX_TERM`] and [`MAX_INDEX`]
//!    before any arithmetic, and the arithmetic saturates, so no input can
//!    make a term or index wrap.
//! 2. An [`Entry`] is identified by `(index, term)`: two entries with the same
//!    index and term carry the same payload (Raft's Log Matching property,
//!    dissertation §3.5), which the simulator checks.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::raft::Membership;

/// The identity of one node in a cluster. Ids start at 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A Raft term: a logical clock that orders leaders.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

/// The position of an entry in the replicated log. The first entry has index 1.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogIndex(pub u64);

macro_rules! newtype_fmt {
    ($t:ty, $prefix:literal) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}
newtype_fmt!(NodeId, "n");
newtype_fmt!(Term, "t");
newtype_fmt!(LogIndex, "i");

/// The highest term a node accepts from outside (a peer's message, a
/// stored hard state). At one election per millisecond it takes thousands
/// of years to reach, so a term above it is corrupt or hostile input, and
/// refusing it keeps `Term::next` far from overflow.
pub const MAX_TERM: u64 = 1 << 48;

/// The highest log index a node accepts from outside. Far beyond any real
/// log, and far enough below `u64::MAX` that index arithmetic on accepted
/// values (`plus` of a message's entry count, `+ 1`) cannot overflow.
pub const MAX_INDEX: u64 = 1 << 62;

impl Term {
    /// The term after this one (saturating: terms are validated against
    /// [`MAX_TERM`] on receipt, so saturation is never reached in practice,
    /// and it never wraps to 0).
    #[must_use]
    pub fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }

    /// Whether this term may be accepted from outside (see [`MAX_TERM`]).
    pub fn is_sane(self) -> bool {
        self.0 <= MAX_TERM
    }
}

impl LogIndex {
    /// The index after this one (saturating; see [`MAX_INDEX`]).
    #[must_use]
    pub fn next(self) -> LogIndex {
        LogIndex(self.0.saturating_add(1))
    }

    /// Whether this index may be accepted from outside (see [`MAX_INDEX`]).
    pub fn is_sane(self) -> bool {
        self.0 <= MAX_INDEX
    }

    /// The index before this one; index 0 stays 0.
    #[must_use]
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// This index plus `n` (saturating; see [`MAX_INDEX`]).
    #[must_use]
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0.saturating_add(n))
    }
}

/// What an entry carries.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// A no-op a new leader appends to commit entries of earlier terms
    /// (dissertation §3.6.2) and to serve ReadIndex (§6.4).
    Blank,
    /// An opaque command for the state machine.
    Command(Bytes),
    /// A configuration change (joint consensus, dissertation §4.3). Proposing
    /// one is not supported yet; the type exists so storage formats carry it.
    Membership(Membership),
}

impl fmt::Debug for EntryPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryPayload::Blank => write!(f, "blank"),
            EntryPayload::Command(b) => write!(f, "cmd({}B)", b.len()),
            EntryPayload::Membership(m) => write!(f, "conf({m:?})"),
        }
    }
}

impl Entry {
    /// The bytes this entry takes in memory, about.
    pub fn approx_bytes(&self) -> usize {
        let payload = match &self.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Command(b) => b.len(),
            // A set member costs its id and a share of its tree node.
            EntryPayload::Membership(m) => {
                (m.voters.len() + m.voters_outgoing.len() + m.learners.len()).saturating_mul(48)
                    + m.addrs.values().map(|a| 48 + a.len()).sum::<usize>()
            }
        };
        std::mem::size_of::<Entry>().saturating_add(payload)
    }
}

/// One entry of the replicated log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log.
    pub index: LogIndex,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{:?}", self.index.0, self.term.0, self.payload)
    }
}

impl Entry {
    /// An approximate size in bytes, used to bound messages and batches.
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 24;
        HEADER_BYTES
            + match &self.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Command(b) => b.len(),
                // Every id of every set at a varint's 10 bytes at most, and
                // each address with its id and length.
                EntryPayload::Membership(m) => {
                    10 * (m.voters.len() + m.voters_outgoing.len() + m.learners.len())
                        + m.addrs.values().map(|a| 20 + a.len()).sum::<usize>()
                }
            }
    }
}

/// The state a node must persist before it answers anyone (dissertation §3.8,
/// Figure 3.1 "Persistent state on all servers"), plus the commit index so a
/// restart need not wait for a leader to learn how far it may apply.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index this node knows to be committed.
    pub commit: LogIndex,
}
