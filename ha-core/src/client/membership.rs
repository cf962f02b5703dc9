//! Membership changes through the typed client: [`Client::members`],
//! [`Client::member_add`], [`Client::member_promote`] and
//! [`Client::member_remove`].
//!
//! Invariants:
//! 1. A change is retried as it is (the same [`ConfChange`]): a change that
//!    holds already is answered at once by the leader, so a retry after a
//!    lost answer never changes the configuration twice.
//! 2. "Not applied" only when no attempt may have started the change: an
//!    attempt whose answer was lost may have appended it, and after that
//!    the call ends in `Ok` or an unknown outcome. So "another change is in
//!    progress" is [`Error::Busy`] only when every earlier attempt
//!    certainly started nothing; after a lost answer it may be this call's
//!    own change, and the call waits for it.
//! 3. A change that cannot start yet for a passing reason (another change
//!    finishing, a fresh leader, a transfer) is retried for
//!    [`BUSY_GRACE`] before the call answers busy.

use super::*;
use crate::raft::{ConfChange, ConfChangeError, Membership};

/// How long a change that finds another in progress waits for it before
/// answering [`Error::Busy`] (invariant 3).
pub const BUSY_GRACE: Duration = Duration::from_secs(1);

/// What a member does in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    /// Votes and counts towards quorums.
    Voter,
    /// Receives the log, never votes.
    Learner,
    /// A voter of the outgoing half of a joint configuration only: it
    /// leaves once the change completes.
    Leaving,
}

impl MemberRole {
    /// `voter`, `learner` or `leaving`.
    pub fn name(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
            MemberRole::Leaving => "leaving",
        }
    }
}

/// One member of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node's id.
    pub id: u64,
    /// Where it listens, as recorded when it was added (`None` for a
    /// member of a configuration from before addresses were recorded).
    pub addr: Option<String>,
    /// What it does.
    pub role: MemberRole,
}

/// The configuration committed on the leader, as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    /// The members, in id order.
    pub members: Vec<Member>,
    /// The leader that answered.
    pub leader: u64,
}

impl Members {
    /// The client's view of `m`, answered by `leader`.
    pub fn from_membership(m: &Membership, leader: u64) -> Members {
        let members = m
            .replication_targets()
            .into_iter()
            .map(|id| Member {
                id: id.0,
                addr: m.addrs.get(&id).cloned(),
                role: if m.voters.contains(&id) {
                    MemberRole::Voter
                } else if m.learners.contains(&id) {
                    MemberRole::Learner
                } else {
                    MemberRole::Leaving
                },
            })
            .collect();
        Members { members, leader }
    }

    /// Member `id`, if it is one.
    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// How a membership call treats a learner that is not caught up yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CatchUp {
    /// Wait for it until the deadline.
    Wait,
    /// Refuse at once.
    Refuse,
}

impl<T: Replicated> Client<T> {
    /// The client's view of `m`, answered by `leader`; the members'
    /// addresses become the ones the client learned (see
    /// [`Client::members`]).
    fn learn_members(&self, m: &Membership, leader: u64) -> Members {
        let found: Vec<NodeAddr> = m
            .addrs
            .values()
            .filter_map(|a| NodeAddr::parse(a).ok())
            .collect();
        self.learn(&found, true);
        Members::from_membership(m, leader)
    }

    /// The configuration committed on the leader: every member with its
    /// role and address, and the leader's id. The client also takes the
    /// members' addresses as ones to try (besides those it was given), so
    /// a long-lived client calling this now and then follows a cluster
    /// whose every node was replaced; it also learns each leader a node
    /// redirects it to.
    pub async fn members(&self) -> Result<Members, Error> {
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let answered = self
            .retry(
                deadline,
                true,
                false,
                || ClientRequest::Members,
                |resp| match resp {
                    ClientResponse::Members { membership, leader } => {
                        Reply::Done(self.learn_members(&membership, leader))
                    }
                    other => Reply::Retry(format!("unexpected response {other:?}")),
                },
            )
            .await;
        match answered {
            Ok(m) => Ok(m),
            Err(RetryEnd::Refused(message)) => Err(Error::NotApplied(message)),
            Err(RetryEnd::TimedOut(why)) => Err(Error::NotApplied(format!(
                "no leader answered in time; last error: {why}"
            ))),
        }
    }

    /// Adds node `id`, listening at `addr` (`HOST:PORT`; a node started to
    /// be added, `serve --join`), as a learner; unless `learner_only`, then
    /// waits until it has caught up with the leader's log and promotes it
    /// to voter (through a joint configuration). Answers with the
    /// configuration once the last step is committed. If the promotion
    /// does not happen (the learner does not catch up before the call's
    /// timeout, another change runs), the node stays a learner and the
    /// call fails as [`Error::Unknown`] saying so: the configuration did
    /// change, so the call was neither done nor "not applied" (promote it
    /// later with [`Client::member_promote`]).
    pub async fn member_add(
        &self,
        id: u64,
        addr: &str,
        learner_only: bool,
    ) -> Result<Members, Error> {
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let change = ConfChange::AddLearner(crate::types::NodeId(id), Some(addr.to_string()));
        let added = match self.change(change, deadline, CatchUp::Refuse).await {
            Err(Error::NotApplied(why)) if !learner_only => {
                // A retry of a call whose promotion completed meanwhile:
                // the node is a voter at that address, which is what was
                // asked (adding a voter as a learner is refused).
                match self.members().await {
                    Ok(m)
                        if m.get(id).is_some_and(|x| {
                            x.role == MemberRole::Voter && x.addr.as_deref() == Some(addr)
                        }) =>
                    {
                        return Ok(m);
                    }
                    _ => return Err(Error::NotApplied(why)),
                }
            }
            r => r?,
        };
        if learner_only {
            return Ok(added);
        }
        let promote = ConfChange::Promote(crate::types::NodeId(id));
        self.change(promote, deadline, CatchUp::Wait)
            .await
            .map_err(|e| {
                Error::Unknown(format!(
                    "node {id} was added as a learner, but its promotion to voter did not \
                     complete ({e}); promote it once it has caught up"
                ))
            })
    }

    /// Makes learner `id` a voter, once it has caught up (waits for that
    /// until the call's timeout).
    pub async fn member_promote(&self, id: u64) -> Result<Members, Error> {
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let change = ConfChange::Promote(crate::types::NodeId(id));
        self.change(change, deadline, CatchUp::Wait).await
    }

    /// Removes voter or learner `id`. Removing the leader makes it hand
    /// leadership to an up-to-date voter once the change commits.
    pub async fn member_remove(&self, id: u64) -> Result<Members, Error> {
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let change = ConfChange::Remove(crate::types::NodeId(id));
        self.change(change, deadline, CatchUp::Refuse).await
    }

    /// Sends `change` to the leader until it is done, refused for good, or
    /// the deadline passes (see the module's invariants).
    async fn change(
        &self,
        change: ConfChange,
        deadline: tokio::time::Instant,
        catch_up: CatchUp,
    ) -> Result<Members, Error> {
        let started = tokio::time::Instant::now();
        let mut maybe_started = false;
        let mut last_why = String::from("no node answered");
        let mut backoff = Duration::from_millis(10);
        let end = |maybe_started: bool, why: String| {
            if maybe_started {
                Error::Unknown(format!(
                    "{why} (an earlier attempt may have started the change)"
                ))
            } else {
                Error::NotApplied(why)
            }
        };
        while tokio::time::Instant::now() < deadline {
            let req = ClientRequest::ChangeMembership {
                change: change.clone(),
            };
            let (addr, resp) = self.attempt(req).await;
            match resp {
                Ok(ClientResponse::Members { membership, leader }) => {
                    self.set_leader(Some(addr));
                    return Ok(self.learn_members(&membership, leader));
                }
                Ok(ClientResponse::ChangeRefused { reason }) => {
                    self.set_leader(Some(addr));
                    let passing = matches!(
                        reason,
                        ConfChangeError::InProgress | ConfChangeError::Transferring { .. }
                    );
                    let waiting = matches!(reason, ConfChangeError::NotCaughtUp { .. })
                        && catch_up == CatchUp::Wait;
                    if passing && !maybe_started && started.elapsed() >= BUSY_GRACE {
                        return Err(Error::Busy(reason.to_string()));
                    }
                    if !(passing || waiting) {
                        return Err(end(maybe_started, reason.to_string()));
                    }
                    last_why = reason.to_string();
                }
                Ok(ClientResponse::NotLeader { leader_addr, .. }) => {
                    self.redirect(&addr, leader_addr);
                    last_why = format!("{addr} is not the leader");
                }
                Ok(ClientResponse::Refused { message }) => {
                    return Err(end(maybe_started, message));
                }
                Ok(ClientResponse::Failed {
                    not_applied,
                    message,
                }) => {
                    self.forget_leader(&addr);
                    maybe_started |= !not_applied;
                    last_why = message;
                }
                Ok(ClientResponse::Busy { message }) => last_why = message,
                Ok(other) => {
                    maybe_started = true;
                    last_why = format!("unexpected response {other:?}");
                }
                Err(RequestError::NotSent(why)) => {
                    self.forget_leader(&addr);
                    last_why = why;
                }
                Err(RequestError::Lost(why)) => {
                    self.forget_leader(&addr);
                    maybe_started = true;
                    last_why = why;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(end(
            maybe_started,
            format!("timed out; last error: {last_why}"),
        ))
    }
}
