//! What a node answers its clients: framework policy, whatever carries the
//! bytes (the QUIC transport calls [`answer`] for every client request).
//!
//! Owns: the schema checks on requests (a client built for another version
//! of the type is refused before anything is proposed), the envelope of a
//! command (the leader stamps the time every replica will see), which
//! requests a raw node or a typed node takes, how node errors map to
//! answers (refused: retrying cannot help; failed: with whether it
//! certainly did not apply), and the status a client sees
//! ([`status_view`]).
//!
//! Invariant: nothing a client sends can make this panic; a request that
//! cannot be honoured is answered, never dropped.

use bytes::Bytes;

use crate::node::{NodeError, NodeHandle, NodeMetrics, NodeStatus, StopReason};
use crate::protocol::{ClientRequest, ClientResponse, Consistency, LogCommand, LogOp, StatusView};
use crate::types::NodeId;

/// The fingerprints a node checks clients against (0 and 0: a raw node,
/// which runs no replicated type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schemas {
    /// Commands, their outputs, the state and ha's envelope.
    pub stored: u64,
    /// Queries and their outputs.
    pub query: u64,
}

/// How a request was answered, for the transport to finish: it knows where
/// the leader is reached, and counts refusals.
#[derive(Clone, Debug, PartialEq)]
pub enum Answered {
    /// The answer to send.
    Response(ClientResponse),
    /// This node is not the leader (the one it knows, if any).
    NotLeader(Option<NodeId>),
    /// The request can never succeed here (why); nothing was done.
    Refused(String),
}

/// Answers one client request on `node`.
pub async fn answer(req: ClientRequest, node: &NodeHandle, schemas: Schemas) -> Answered {
    if let Some(why) = refusal(&req, schemas) {
        return Answered::Refused(why);
    }
    match req {
        ClientRequest::Command { command, .. } => propose_op(node, LogOp::Command(command)).await,
        ClientRequest::Register { secret, .. } => {
            propose_op(node, LogOp::Register { secret }).await
        }
        ClientRequest::Resume { index, nonce, .. } => {
            propose_op(node, LogOp::Resume { index, nonce }).await
        }
        ClientRequest::SetPanicPolicy { policy, nonce, .. } => {
            propose_op(node, LogOp::SetPanicPolicy { policy, nonce }).await
        }
        ClientRequest::Query {
            body, consistency, ..
        } => {
            // Lease reads fall back to ReadIndex: the safe side of the option.
            let stale = consistency == Consistency::Stale;
            match node.query(body, stale).await {
                Ok(answer) => Answered::Response(ClientResponse::QueryResult { answer }),
                Err(e) => failed(e),
            }
        }
        ClientRequest::Propose(data) => applied(node.propose(data).await),
        ClientRequest::Read => match node.read_index().await {
            Ok(index) => Answered::Response(ClientResponse::ReadIndex { index: index.0 }),
            Err(e) => failed(e),
        },
        ClientRequest::Status => Answered::Response(ClientResponse::Status(Box::new(status_view(
            &node.status(),
            &node.metrics(),
        )))),
        ClientRequest::TransferLeader { from, to } => transfer(node, from, to).await,
        ClientRequest::ChangeMembership { change } => match node.change_membership(change).await {
            Ok(membership) => members(node, membership),
            Err(NodeError::Membership(reason)) => {
                Answered::Response(ClientResponse::ChangeRefused { reason })
            }
            Err(e) => failed(e),
        },
        ClientRequest::Members => match node.members().await {
            Ok(membership) => members(node, membership),
            Err(e) => failed(e),
        },
    }
}

/// The answer naming `membership`, from this node as the leader.
fn members(node: &NodeHandle, membership: crate::raft::Membership) -> Answered {
    Answered::Response(ClientResponse::Members {
        membership,
        leader: node.id().0,
    })
}

/// Hands leadership over, unless a retry finds it done already: `to`
/// leads, or (no target named) the leader is no longer `from`.
async fn transfer(node: &NodeHandle, from: Option<u64>, to: Option<u64>) -> Answered {
    let status = node.status();
    if status.role != crate::raft::RoleKind::Leader {
        return Answered::NotLeader(status.leader);
    }
    let me = node.id().0;
    if to == Some(me) || (to.is_none() && from.is_some_and(|f| f != me)) {
        return Answered::Response(ClientResponse::LeaderTransferred { leader: me });
    }
    match node.transfer_leadership(to.map(NodeId)).await {
        Ok(leader) => Answered::Response(ClientResponse::LeaderTransferred { leader: leader.0 }),
        Err(e) => failed(e),
    }
}

/// Why `req` must be refused by a node of `schemas`, if it must.
fn refusal(req: &ClientRequest, schemas: Schemas) -> Option<String> {
    match req {
        ClientRequest::Command { schema, .. }
        | ClientRequest::Register { schema, .. }
        | ClientRequest::Resume { schema, .. }
        | ClientRequest::SetPanicPolicy { schema, .. }
            if *schema != schemas.stored =>
        {
            Some(format!(
                "the client was built for stored schema {schema:016x} but the cluster runs \
                 {:016x}: its commands would be misread; rebuild the client with the same \
                 version of the replicated type",
                schemas.stored
            ))
        }
        ClientRequest::Query { schema, .. } if *schema != schemas.query => Some(format!(
            "the client was built for query schema {schema:016x} but the cluster runs \
             {:016x}: its queries would be misread; rebuild the client with the same version \
             of the replicated type",
            schemas.query
        )),
        // Raw bytes in the log would bypass sessions and could carry a
        // forged leader timestamp: only raw (schema 0) nodes take them.
        ClientRequest::Propose(_) if schemas.stored != 0 => Some(format!(
            "raw proposals are refused by a node of a replicated type (schema {:016x}); send \
             commands through a client of that type",
            schemas.stored
        )),
        ClientRequest::Resume { .. } | ClientRequest::SetPanicPolicy { .. }
            if schemas.stored == 0 =>
        {
            Some("a raw node runs no replicated type: it has no panic policy".into())
        }
        ClientRequest::ChangeMembership {
            change: crate::raft::ConfChange::AddLearner(id, addr),
        } => match addr {
            None => Some(format!(
                "node {id} is added without an address: give the HOST:PORT it listens on"
            )),
            Some(a) => crate::raft::check_addr(a)
                .err()
                .map(|why| format!("node {id}'s address: {why}")),
        },
        _ => None,
    }
}

/// Proposes `op` in ha's envelope, stamped with this leader's time (the
/// time every replica will see).
async fn propose_op(node: &NodeHandle, op: LogOp) -> Answered {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let bytes = match postcard::to_stdvec(&LogCommand { time_ms, op }) {
        Ok(b) => Bytes::from(b),
        Err(e) => return failed(NodeError::Query(e.to_string())),
    };
    applied(node.propose(bytes).await)
}

fn applied(r: Result<(crate::types::LogIndex, Bytes), NodeError>) -> Answered {
    match r {
        Ok((index, answer)) => Answered::Response(ClientResponse::Applied {
            index: index.0,
            answer,
        }),
        Err(e) => failed(e),
    }
}

/// The answer to a node error.
fn failed(e: NodeError) -> Answered {
    match e {
        NodeError::NotLeader { leader } => Answered::NotLeader(leader),
        // Retrying cannot help: answered as refused, not as a failure the
        // client would retry until its deadline. A query's own error (it
        // panicked, it cannot be decoded, the service is halted) is the
        // same on every node.
        // Another transfer is running: the same as a full node.
        NodeError::TransferRefused(crate::raft::TransferError::InProgress { .. }) => {
            Answered::Response(ClientResponse::Busy {
                message: e.to_string(),
            })
        }
        // A failed transfer is the call's answer: retrying would refuse
        // writes for another election timeout each time.
        NodeError::TooLarge { .. }
        | NodeError::Query(_)
        | NodeError::TransferRefused(_)
        | NodeError::TransferFailed { .. } => Answered::Response(ClientResponse::Refused {
            message: e.to_string(),
        }),
        _ => Answered::Response(ClientResponse::Failed {
            not_applied: e.is_not_applied(),
            message: e.to_string(),
        }),
    }
}

/// What a client sees of a node's status.
pub fn status_view(s: &NodeStatus, m: &NodeMetrics) -> StatusView {
    StatusView {
        node: NodeStatus {
            // Whether and how it stopped, but not the text (paths, a
            // panic's message): that is for its operator's log.
            stopped: s.stopped.as_ref().map(StopReason::for_clients),
            ..s.clone()
        },
        voters: m.voters.clone(),
        learners: m.learners.clone(),
        availability: m.availability.clone(),
    }
}
