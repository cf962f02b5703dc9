//! A bounded record of the simulator's last events, formatted only when a
//! run fails (recording must stay cheap: it happens for every event).
//!
//! Invariant: at most `cap` events are kept; the oldest go first.

use std::collections::VecDeque;

use ha_core::raft::{AppendOutcome, Body, Message, RoleKind};
use ha_core::types::{LogIndex, NodeId, Term};

/// A message reduced to what a reader of a trace needs.
#[derive(Clone, Debug)]
pub struct MsgSummary {
    from: NodeId,
    to: NodeId,
    term: Term,
    text: MsgText,
}

#[derive(Clone, Debug)]
enum MsgText {
    PreVote(LogIndex, Term),
    PreVoteResp(bool),
    Vote(LogIndex, Term),
    VoteResp(bool),
    Append {
        prev: LogIndex,
        prev_term: Term,
        n: usize,
        last_term: Option<Term>,
        commit: LogIndex,
    },
    AppendOk(LogIndex),
    AppendRej(LogIndex, LogIndex, Term),
    AppendRepairing(LogIndex, Term),
    AppendRepairOk(LogIndex),
    TermQuery,
    TermReply(Option<LogIndex>),
    Heartbeat(LogIndex, u64),
    HeartbeatResp(u64),
    InstallSnapshot(LogIndex, Term),
    TimeoutNow(LogIndex),
}

/// Summarizes a message without copying its entries.
pub fn summarize(m: &Message) -> MsgSummary {
    let text = match &m.body {
        Body::PreVote {
            last_index,
            last_term,
            ..
        } => MsgText::PreVote(*last_index, *last_term),
        Body::PreVoteResponse { granted } => MsgText::PreVoteResp(*granted),
        Body::Vote {
            last_index,
            last_term,
            ..
        } => MsgText::Vote(*last_index, *last_term),
        Body::TimeoutNow { last_index, .. } => MsgText::TimeoutNow(*last_index),
        Body::VoteResponse { granted } => MsgText::VoteResp(*granted),
        Body::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => MsgText::Append {
            prev: *prev_index,
            prev_term: *prev_term,
            n: entries.len(),
            last_term: entries.last().map(|e| e.term),
            commit: *commit,
        },
        Body::AppendResponse(AppendOutcome::Accepted { match_index }) => {
            MsgText::AppendOk(*match_index)
        }
        Body::AppendResponse(AppendOutcome::Rejected {
            rejected,
            hint_index,
            hint_term,
        }) => MsgText::AppendRej(*rejected, *hint_index, *hint_term),
        Body::AppendResponse(AppendOutcome::Repairing {
            last_index,
            last_term,
        }) => MsgText::AppendRepairing(*last_index, *last_term),
        Body::AppendResponse(AppendOutcome::RepairAccepted { match_index }) => {
            MsgText::AppendRepairOk(*match_index)
        }
        Body::TermQuery { .. } => MsgText::TermQuery,
        Body::TermReply { leader_last, .. } => MsgText::TermReply(*leader_last),
        Body::Heartbeat { commit, seq } => MsgText::Heartbeat(*commit, *seq),
        Body::HeartbeatResponse { seq } => MsgText::HeartbeatResp(*seq),
        Body::InstallSnapshot { index, term, .. } => MsgText::InstallSnapshot(*index, *term),
    };
    MsgSummary {
        from: m.from,
        to: m.to,
        term: m.term,
        text,
    }
}

impl std::fmt::Display for MsgSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{} t{} ", self.from, self.to, self.term)?;
        match &self.text {
            MsgText::PreVote(i, t) => write!(f, "PreVote last={i}@{t}"),
            MsgText::PreVoteResp(g) => write!(f, "PreVoteResp granted={g}"),
            MsgText::Vote(i, t) => write!(f, "Vote last={i}@{t}"),
            MsgText::VoteResp(g) => write!(f, "VoteResp granted={g}"),
            MsgText::Append {
                prev,
                prev_term,
                n,
                last_term,
                commit,
            } => write!(
                f,
                "Append prev={prev}@{prev_term} entries={n} last_term={} commit={commit}",
                last_term.map_or("-".to_string(), |t| t.to_string())
            ),
            MsgText::AppendOk(i) => write!(f, "AppendResp ok match={i}"),
            MsgText::AppendRej(r, hi, ht) => write!(f, "AppendResp reject prev={r} hint={hi}@{ht}"),
            MsgText::AppendRepairing(i, t) => write!(f, "AppendResp repairing last={i}@{t}"),
            MsgText::AppendRepairOk(i) => write!(f, "AppendResp ok (repairing) match={i}"),
            MsgText::TermQuery => write!(f, "TermQuery"),
            MsgText::TermReply(l) => write!(f, "TermReply leader_last={l:?}"),
            MsgText::Heartbeat(c, r) => write!(f, "Heartbeat commit={c} seq={r}"),
            MsgText::HeartbeatResp(r) => write!(f, "HeartbeatResp seq={r}"),
            MsgText::InstallSnapshot(i, t) => write!(f, "InstallSnapshot {i}@{t}"),
            MsgText::TimeoutNow(i) => write!(f, "TimeoutNow last={i}"),
        }
    }
}

/// One traced event.
#[derive(Clone, Debug)]
pub enum TraceEvent {
    /// A message was delivered.
    Deliver(MsgSummary),
    /// A node's role changed.
    Role(NodeId, RoleKind, Term),
    /// A node's commit index moved.
    Commit(NodeId, LogIndex),
    /// A client proposal and the index it got, if accepted.
    Propose(NodeId, u64, Option<LogIndex>),
    /// A node crashed.
    Crash(NodeId),
    /// A node restarted.
    Restart(NodeId),
    /// A node's process stalled for this many ticks (`None`: it resumed).
    Pause(NodeId, Option<u64>),
    /// The partition changed.
    Partition(String),
    /// A membership change started: (leader, the change, its entry's index).
    Membership(NodeId, String, LogIndex),
}

/// The ring of recent events.
pub struct Trace {
    cap: usize,
    events: VecDeque<(u64, TraceEvent)>,
}

impl Trace {
    /// A trace keeping the last `cap` events.
    pub fn new(cap: usize) -> Trace {
        Trace {
            cap,
            events: VecDeque::with_capacity(cap),
        }
    }

    /// Records an event at tick `now`.
    pub fn push(&mut self, now: u64, e: TraceEvent) {
        if self.events.len() == self.cap {
            self.events.pop_front();
        }
        self.events.push_back((now, e));
    }

    /// The events as readable lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|(t, e)| {
                let text = match e {
                    TraceEvent::Deliver(m) => format!("deliver {m}"),
                    TraceEvent::Role(n, r, term) => format!("node {n} is {r:?} in term {term}"),
                    TraceEvent::Commit(n, i) => format!("node {n} commit={i}"),
                    TraceEvent::Propose(n, c, Some(i)) => {
                        format!("propose cmd {c} on {n}: index {i}")
                    }
                    TraceEvent::Propose(n, c, None) => format!("propose cmd {c} on {n}: refused"),
                    TraceEvent::Crash(n) => format!("CRASH node {n}"),
                    TraceEvent::Restart(n) => format!("restart node {n}"),
                    TraceEvent::Pause(n, Some(t)) => format!("STALL node {n} for {t} ticks"),
                    TraceEvent::Pause(n, None) => format!("node {n} resumes"),
                    TraceEvent::Partition(d) => format!("network: {d}"),
                    TraceEvent::Membership(n, c, i) => format!("node {n} starts {c} at {i}"),
                };
                format!("[tick {t:>5}] {text}")
            })
            .collect()
    }
}
