//! The scenario files' text: how entries, messages and roles are written
//! in expected output, and how a file's commands and their arguments are
//! read.

use super::*;

/// `index@term kind`, e.g. `3@2 "put x"` or `1@1 blank`.
pub fn entry_text(e: &Entry) -> String {
    let what = match &e.payload {
        EntryPayload::Blank => "blank".to_string(),
        EntryPayload::Command(b) => format!("{:?}", String::from_utf8_lossy(b)),
        EntryPayload::Membership(m) => format!("membership {m:?}"),
    };
    format!("{}@{} {what}", e.index, e.term)
}

/// One line for a message: `from->to Kind term=T ...`.
pub fn message_text(m: &Message) -> String {
    let body = match &m.body {
        Body::PreVote {
            last_index,
            last_term,
            transfer,
        } => {
            let why = if *transfer { " transfer" } else { "" };
            format!("PreVote last={last_index}@{last_term}{why}")
        }
        Body::Vote {
            last_index,
            last_term,
            transfer,
        } => {
            let why = if *transfer { " transfer" } else { "" };
            format!("Vote last={last_index}@{last_term}{why}")
        }
        Body::TimeoutNow {
            last_index,
            last_term,
        } => format!("TimeoutNow last={last_index}@{last_term}"),
        Body::PreVoteResponse { granted } => format!("PreVoteResponse granted={granted}"),
        Body::VoteResponse { granted } => format!("VoteResponse granted={granted}"),
        Body::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            let es: Vec<String> = entries.iter().map(entry_text).collect();
            format!(
                "Append prev={prev_index}@{prev_term} commit={commit} entries=[{}]",
                es.join(", ")
            )
        }
        Body::AppendResponse(AppendOutcome::Accepted { match_index }) => {
            format!("AppendResponse accepted match={match_index}")
        }
        Body::AppendResponse(AppendOutcome::RepairAccepted { match_index }) => {
            format!("AppendResponse repair-accepted match={match_index}")
        }
        Body::AppendResponse(AppendOutcome::Rejected {
            rejected,
            hint_index,
            hint_term,
        }) => format!("AppendResponse rejected={rejected} hint={hint_index}@{hint_term}"),
        Body::AppendResponse(AppendOutcome::Repairing {
            last_index,
            last_term,
        }) => format!("AppendResponse repairing last={last_index}@{last_term}"),
        Body::Heartbeat { commit, seq } => format!("Heartbeat commit={commit} seq={seq}"),
        Body::HeartbeatResponse { seq } => format!("HeartbeatResponse seq={seq}"),
        Body::InstallSnapshot { index, term, .. } => format!("InstallSnapshot {index}@{term}"),
        Body::TermQuery { nonce } => format!("TermQuery nonce={nonce}"),
        Body::TermReply {
            nonce,
            leader_last,
            repairing,
        } => format!("TermReply nonce={nonce} leader_last={leader_last:?} repairing={repairing}"),
    };
    format!("{}->{} {body} term={}", m.from, m.to, m.term)
}

pub(super) fn role_text(r: RoleKind) -> &'static str {
    match r {
        RoleKind::Leader => "leader",
        RoleKind::Follower => "follower",
        RoleKind::Candidate => "candidate",
        RoleKind::PreCandidate => "precandidate",
    }
}

/// One command: its name, arguments (`key=value` or bare `key`) and input.
#[derive(Clone, Debug, Default)]
pub struct Command {
    /// The command's name.
    pub directive: String,
    /// Its arguments: bare ones have no values.
    pub args: HashMap<String, Vec<String>>,
    /// The lines between the command and `----`.
    pub input: String,
}

impl Command {
    /// Every command of a test file, ignoring the expected output (for runs
    /// that look only at the invariants).
    pub fn parse_file(text: &str) -> Vec<Command> {
        let mut commands = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let directive = words.next().unwrap_or_default().to_string();
            let args = words
                .map(|w| match w.split_once('=') {
                    Some((k, v)) => (k.to_string(), vec![v.to_string()]),
                    None => (w.to_string(), Vec::new()),
                })
                .collect();
            let mut input = Vec::new();
            for l in lines.by_ref() {
                if l.trim() == "----" {
                    break;
                }
                input.push(l);
            }
            // The expected output runs to the next blank line.
            for l in lines.by_ref() {
                if l.trim().is_empty() {
                    break;
                }
            }
            commands.push(Command {
                directive,
                args,
                input: input.join("\n"),
            });
        }
        commands
    }
}

/// The numeric bare arguments of a command (node ids), in order.
pub(super) fn ids(tc: &Command) -> Vec<u64> {
    let mut v: Vec<u64> = tc
        .args
        .iter()
        .filter(|(_, vals)| vals.is_empty())
        .filter_map(|(k, _)| k.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// The one bare argument that is not a number (a proposal's data).
pub(super) fn word(tc: &Command) -> Option<String> {
    tc.args
        .iter()
        .find(|(k, vals)| vals.is_empty() && k.parse::<u64>().is_err())
        .map(|(k, _)| k.clone())
}

pub(super) fn arg<T: std::str::FromStr>(tc: &Command, key: &str, default: T) -> T {
    tc.args
        .get(key)
        .and_then(|v| v.first())
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{key}={v}: not a valid value"))
        })
        .unwrap_or(default)
}
