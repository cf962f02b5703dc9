//! The client protocol: what a client sends a node and what it gets back.
//!
//! Owns: the request and response types (encoded with postcard, one request
//! and one response per stream by the transport), and the envelope a command
//! travels in through the log.
//!
//! A command's journey: the client wraps the encoded command in a
//! [`SessionCommand`] (its session id and sequence number); the leader that
//! receives it stamps its own wall-clock time into a [`LogCommand`] and
//! proposes that; every replica applies the same `LogCommand`, so time-
//! dependent logic and session expiry are deterministic.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How fresh a query must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Linearizable, through ReadIndex (the default): the leader confirms
    /// its leadership with a quorum after the query arrives.
    #[default]
    Linearizable,
    /// Linearizable under a clock assumption: the leader may answer without
    /// a round trip while it holds a lease (it heard from a quorum less than
    /// the minimum election timeout ago, shortened by a drift margin), which
    /// is safe only if no node's clock runs more than that margin fast or
    /// slow over one election timeout. Today nodes serve this option through
    /// ReadIndex as well, so opting in costs nothing in safety; the
    /// round-trip saving arrives with the lease implementation.
    Lease,
    /// Whatever the node that receives the query has applied: possibly
    /// stale, never torn. Any node answers: the client sends each such
    /// query to the next node in turn, so stale reads spread over the
    /// cluster.
    Stale,
}

/// A command as the client sends it: its session and place in the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCommand {
    /// The client's session id: the log index of the entry that registered
    /// the session ([`LogOp::Register`]), so no two sessions ever share one,
    /// and an expired session can never be re-created.
    pub client: u64,
    /// The secret the client chose when it registered the session: without
    /// it a command is not applied (session ids are easy to guess).
    pub secret: u64,
    /// The command's sequence number in the session, from 1.
    pub seq: u64,
    /// Every command below this sequence number has its answer: the
    /// replicas may forget their results (dissertation §6.3).
    pub ack_below: u64,
    /// The encoded command.
    pub body: Bytes,
}

/// A command as it sits in the log: stamped by the leader that took it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCommand {
    /// The leader's wall-clock time when it took the command, in
    /// milliseconds since the Unix epoch. Only a leader writes it: clients
    /// have no way to put a `LogCommand` of their own in the log.
    pub time_ms: u64,
    /// What the entry does.
    pub op: LogOp,
}

/// What a [`LogCommand`] does (dissertation §6.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogOp {
    /// Opens a new session whose id is this entry's log index. The only way
    /// a session comes to exist.
    Register {
        /// A random secret the client chose; its commands must carry it.
        secret: u64,
    },
    /// A command in an open session.
    Command(SessionCommand),
    /// An operator resumes a service halted at `index` (see
    /// [`crate::sm::PanicPolicy::Halt`]); refused if it is not halted there.
    Resume {
        /// The index the service halted at.
        index: u64,
        /// Chosen by the client, the same for every retry: a retry is
        /// answered as the first attempt, never applied again.
        nonce: u64,
    },
    /// An operator sets what failing commands do from this entry on.
    SetPanicPolicy {
        /// The policy.
        policy: crate::sm::PanicPolicy,
        /// As for `Resume`.
        nonce: u64,
    },
}

/// What a client asks a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Open a session (answered with [`CommandOutcome::Registered`] inside
    /// [`ClientResponse::Applied`]).
    Register {
        /// The schema fingerprint the client was built with.
        schema: u64,
        /// A random secret the session's commands will carry.
        secret: u64,
    },
    /// Apply a command exactly once.
    Command {
        /// The schema fingerprint the client was built with.
        schema: u64,
        /// The command.
        command: SessionCommand,
    },
    /// Run a query.
    Query {
        /// The schema fingerprint the client was built with.
        schema: u64,
        /// The encoded query.
        body: Bytes,
        /// How fresh the answer must be.
        consistency: Consistency,
    },
    /// Replicate and apply raw bytes (no session; for tests and tools of
    /// untyped nodes only: a node of a replicated type refuses it, since raw
    /// bytes could forge a leader's timestamp or a session's entries).
    Propose(Bytes),
    /// A linearizable read barrier.
    Read,
    /// The node's status.
    Status,
    /// Resume a service halted at `index` (an operator's command; see
    /// [`crate::sm::PanicPolicy::Halt`]).
    Resume {
        /// The stored fingerprint the client was built with.
        schema: u64,
        /// The index the service halted at.
        index: u64,
        /// The same for every retry of one call (see [`LogOp::Resume`]).
        nonce: u64,
    },
    /// Set what failing commands do (an operator's command; see
    /// [`crate::sm::PanicPolicy`]).
    SetPanicPolicy {
        /// The stored fingerprint the client was built with.
        schema: u64,
        /// The policy.
        policy: crate::sm::PanicPolicy,
        /// The same for every retry of one call (see [`LogOp::Resume`]).
        nonce: u64,
    },
    /// Hand leadership over (an operator's command): to `to`, or to the
    /// most up-to-date voter. Answered with
    /// [`ClientResponse::LeaderTransferred`] once the new leader is known.
    /// Retries are harmless: the leader answers at once if `to` already
    /// leads, or, with no `to`, if it is not `from`.
    TransferLeader {
        /// The leader the client saw when the call began (`None`: whoever
        /// leads when this arrives).
        from: Option<u64>,
        /// The node to hand over to (`None`: the most up-to-date voter).
        to: Option<u64>,
    },
    /// Change the configuration (an operator's command; see
    /// [`crate::raft::ConfChange`]). Answered by the leader with
    /// [`ClientResponse::Members`] once the change is committed and the
    /// configuration is not joint, or with
    /// [`ClientResponse::ChangeRefused`]. Retries are harmless: a change
    /// that holds already is answered at once.
    ChangeMembership {
        /// The change.
        change: crate::raft::ConfChange,
    },
    /// The configuration committed on the leader (answered with
    /// [`ClientResponse::Members`]).
    Members,
}

/// A node's status, as clients see it: its own report and the
/// configuration and availability its metrics hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// What the node reports about itself.
    pub node: crate::node::NodeStatus,
    /// Voters of the configuration.
    pub voters: Vec<crate::types::NodeId>,
    /// Learners of the configuration.
    pub learners: Vec<crate::types::NodeId>,
    /// Downtime accounting (over the node's runs, where the service carries
    /// it over restarts).
    pub availability: crate::metrics::AvailabilityReport,
}

impl StatusView {
    /// The role an operator sees: `leader`, `candidate` (pre-candidates
    /// too), `learner` (a follower that does not vote) or `follower`.
    pub fn role_name(&self) -> &'static str {
        use crate::raft::RoleKind;
        match self.node.role {
            RoleKind::Leader => "leader",
            RoleKind::Candidate | RoleKind::PreCandidate => "candidate",
            RoleKind::Follower if self.learners.contains(&self.node.id) => "learner",
            RoleKind::Follower => "follower",
        }
    }
}

/// What a node answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The command was applied at `index`; `answer` is the state machine's
    /// (for a session command, an encoded [`CommandOutcome`]).
    Applied {
        /// Log index of the command.
        index: u64,
        /// The answer.
        answer: Bytes,
    },
    /// The query's answer.
    QueryResult {
        /// The encoded answer.
        answer: Bytes,
    },
    /// Reads may be served at or after this index.
    ReadIndex {
        /// The index.
        index: u64,
    },
    /// The node's status (boxed: the largest answer by far, and rare).
    Status(Box<StatusView>),
    /// This node is not the leader; nothing was done.
    NotLeader {
        /// The leader it knows of.
        leader: Option<u64>,
        /// Where to reach that leader: its `HOST:PORT` as the
        /// configuration names it (a DNS name or an IP address), which the
        /// client dials and expects the leader's certificate to name. A
        /// client takes it only if it passes
        /// [`check_addr`](crate::raft::check_addr).
        leader_addr: Option<String>,
    },
    /// The request can never succeed here (for example a client built for
    /// another schema); nothing was done, and retrying will not help.
    Refused {
        /// Why.
        message: String,
    },
    /// The request failed.
    Failed {
        /// Whether the command certainly did not take effect.
        not_applied: bool,
        /// What happened.
        message: String,
    },
    /// The node has as many requests in flight as it takes: this one was
    /// not taken (certainly not applied). Retry the same node after a pause.
    Busy {
        /// Which limit was reached.
        message: String,
    },
    /// The answer to [`ClientRequest::TransferLeader`]: who leads now.
    LeaderTransferred {
        /// The new leader.
        leader: u64,
    },
    /// The configuration committed on the leader, which answered (to
    /// [`ClientRequest::Members`], and to a change once it is done).
    Members {
        /// The configuration, with the members' recorded addresses.
        membership: crate::raft::Membership,
        /// The leader that answered.
        leader: u64,
    },
    /// The leader could not start the change; nothing was appended.
    ChangeRefused {
        /// Why (some reasons pass: another change in progress, a learner
        /// not caught up yet).
        reason: crate::raft::ConfChangeError,
    },
}

/// What applying a session command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Applied (now or before, for a retry): the encoded output.
    Applied(Bytes),
    /// A session was opened; its id.
    Registered {
        /// The new session's id (the registration entry's log index).
        session: u64,
    },
    /// The session is not open (it expired, or never was): the command was
    /// *not* applied now. Whether an earlier attempt of it was applied
    /// before the session expired cannot be told from this answer; the
    /// client knows whether it sent one. The client must register anew.
    SessionExpired,
    /// The client had already given up on this sequence number; it was not
    /// applied now.
    Abandoned,
    /// A different command came with a sequence number that already has a
    /// result (a client bug): this one was not applied.
    SeqReused,
    /// The command could not be decoded (a schema mismatch); not applied.
    Undecodable(String),
    /// The command ran and failed on every replica: it panicked, or its
    /// result could not be encoded. What it changed before that stays.
    Failed(String),
    /// The service is halted (a command failed under
    /// [`crate::sm::PanicPolicy::Halt`]): this command was not applied.
    Halted {
        /// The index of the command that failed.
        index: u64,
        /// Why it failed.
        reason: String,
    },
    /// The answer to [`LogOp::Resume`]: the index resumed at, or why not.
    Resume(Result<u64, String>),
    /// The answer to [`LogOp::SetPanicPolicy`]: the policy now in force.
    PanicPolicy(crate::sm::PanicPolicy),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeStatus, StopReason};
    use crate::raft::RoleKind;
    use crate::types::{LogIndex, NodeId, Term};

    /// The status answer's bytes are part of `ha-client/7`: postcard
    /// encodes by position and variant number, so reordering `RoleKind`'s
    /// variants or a field of `NodeStatus` or `StatusView` changes them
    /// silently. A change that makes this test fail needs a new client ALPN
    /// (and this test's bytes updated with it).
    #[test]
    fn the_status_answers_encoding_is_pinned() {
        let view = StatusView {
            node: NodeStatus {
                id: NodeId(0x21),
                role: RoleKind::Candidate,
                term: Term(0x22),
                leader: Some(NodeId(0x23)),
                commit_index: LogIndex(0x24),
                applied_index: LogIndex(0x25),
                last_index: LogIndex(0x26),
                snapshot_index: LogIndex(0x27),
                repairing: true,
                repair_found: Some("r".into()),
                halted: Some("h".into()),
                panic_policy: Some(crate::sm::PanicPolicy::Halt),
                divergences: 0x28,
                stopped: Some(StopReason::Failed("f".into())),
            },
            voters: vec![NodeId(0x29)],
            learners: vec![NodeId(0x2a)],
            availability: crate::metrics::AvailabilityReport {
                leaderless_ms: 0x2b,
                failovers: 0x2c,
                mttr_ms: 0x2d,
                mtbf_ms: 0x2e,
                availability: 0.5,
                planned_ms: 0x2f,
                unplanned_ms: 0x30,
                handoffs: 0x31,
                uptime_ms: 0x32,
                maintainability: 0.25,
                handover_ms: 0x33,
            },
        };
        assert_eq!(
            hex(&ClientResponse::Status(Box::new(view))),
            "0321022201232425262701010172010168010128010201660129012a\
             2b2c2d2e000000000000e03f2f303132000000000000d03f33"
        );
    }

    /// Every variant of the enums a status carries keeps its number (the
    /// match is exhaustive: a new variant must be pinned here too).
    #[test]
    fn the_status_enums_keep_their_numbers() {
        use crate::sm::PanicPolicy;
        for role in [
            RoleKind::Follower,
            RoleKind::PreCandidate,
            RoleKind::Candidate,
            RoleKind::Leader,
        ] {
            let n = match role {
                RoleKind::Follower => "00",
                RoleKind::PreCandidate => "01",
                RoleKind::Candidate => "02",
                RoleKind::Leader => "03",
            };
            assert_eq!(hex(&role), n, "{role:?}");
        }
        for policy in [PanicPolicy::Continue, PanicPolicy::Halt] {
            let n = match policy {
                PanicPolicy::Continue => "00",
                PanicPolicy::Halt => "01",
            };
            assert_eq!(hex(&policy), n, "{policy:?}");
        }
        for stop in [
            StopReason::Shutdown,
            StopReason::Storage("x".into()),
            StopReason::Failed("x".into()),
            StopReason::Panicked("x".into()),
        ] {
            let n = match stop {
                StopReason::Shutdown => "00",
                StopReason::Storage(_) => "010178",
                StopReason::Failed(_) => "020178",
                StopReason::Panicked(_) => "030178",
            };
            assert_eq!(hex(&stop), n, "{stop:?}");
        }
    }

    /// A status tells a client how a node stopped, never the text (paths,
    /// a panic's message), which stays in the node's log.
    #[test]
    fn a_stop_reason_reaches_clients_without_its_text() {
        for (stop, kind) in [
            (StopReason::Storage("/data/wal/seg-7: EIO".into()), 1),
            (StopReason::Failed("/data/snap/x: bad".into()), 2),
            (StopReason::Panicked("secret at /data".into()), 3),
        ] {
            let told = stop.for_clients();
            assert_eq!(hex(&told)[..2], format!("{kind:02x}"), "{told:?}");
            assert!(!told.to_string().contains("/data"), "{told}");
        }
        assert_eq!(StopReason::Shutdown.for_clients(), StopReason::Shutdown);
    }

    fn hex(v: &impl Serialize) -> String {
        postcard::to_stdvec(v)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
