//! The live page an operator opens at `/` on the metrics port, and the
//! JSON it refreshes from every second (`/api/state`).
//!
//! Owns: the [`Watch`] task that, once a second, samples this node's commit
//! index (for commits per second over the last hour) and asks every member
//! for its status over the client protocol (so the page served by any node
//! shows the whole cluster), and the page itself: one HTML file with its
//! script and styles inline, no external assets, so it works offline.
//!
//! Invariants: a page view never reaches the network or the node's task:
//! `/api/state` answers the JSON the watch made at its last poll, so any
//! number of viewers costs the cluster one poll a second and the node one
//! encoding, and with no viewer for [`VIEWED_FOR`] no member is asked. What a member answers is capped before it is kept
//! ([`MAX_STATUS_BYTES`], [`MAX_ERROR_CHARS`]), and the page puts every
//! text in with `textContent`, never as HTML. The watch asks each member
//! at most [`POLL_TIMEOUT`] and keeps at most [`SAMPLES`] samples; the
//! members it asks are those the node started with (a member added later
//! is shown once this node knows its address from its own configuration
//! view: not yet, see the README).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ha_core::client::{ClientTransport, NodeAddr, RequestError};
use ha_core::node::NodeHandle;
use ha_core::protocol::{ClientRequest, ClientResponse};
use ha_core::types::NodeId;
use ha_quic::QuicClientTransport;
use serde::Serialize;

/// The page (`/`).
pub const PAGE: &str = include_str!("page.html");

/// How long the watch waits for one member's status.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// Commit-index samples kept: one a second for an hour.
pub const SAMPLES: usize = 3600;

/// The window of the timeline.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// One member as the watch last saw it.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    /// Its id.
    pub id: u64,
    /// Where it was asked.
    pub addr: String,
    /// Its status, when it answered (the `status` command's JSON line).
    pub status: Option<serde_json::Value>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// What `/api/state` answers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct State {
    /// This node.
    pub me: u64,
    /// Wall-clock time of the answer, ms since the Unix epoch.
    pub now_unix_ms: u64,
    /// Every member, as last polled (its status, or why it gave none).
    pub members: Vec<Member>,
    /// This node's availability and maintainability figures.
    pub availability: Option<ha_core::metrics::AvailabilityReport>,
    /// This run's leader changes and down periods in the last hour.
    pub timeline: ha_core::metrics::Timeline,
    /// The timeline's window, in ms.
    pub window_ms: u64,
    /// Commits per second, one a second, oldest first: `[ms ago, rate]`.
    pub commits_per_sec: Vec<(u64, f64)>,
}

/// Longest error text kept of a member, in characters.
pub const MAX_ERROR_CHARS: usize = 256;

/// Largest status of a member kept, as JSON bytes (a bigger one is shown
/// as an error).
pub const MAX_STATUS_BYTES: usize = 64 * 1024;

/// The watch's findings, shared with the HTTP answers.
#[derive(Default)]
struct Seen {
    members: Vec<Member>,
    samples: VecDeque<(Instant, u64)>,
    /// The state as JSON, made once a poll: every viewer gets this.
    json: Arc<String>,
    /// When `/api/state` was last asked for.
    viewed: Option<Instant>,
}

/// How long after the last view the watch goes on asking the members (the
/// commit samples for the timeline are taken always).
pub const VIEWED_FOR: Duration = Duration::from_secs(10);

/// The once-a-second poller behind the page.
pub struct Watch {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Starts polling `members` (id and `HOST:PORT`, this node among them)
    /// through `client`.
    pub fn start(
        node: NodeHandle,
        members: BTreeMap<NodeId, String>,
        client: QuicClientTransport,
    ) -> Watch {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(poll(node, members, client, seen.clone()));
        Watch { seen, task }
    }

    /// The page's state as of the last poll, as JSON (empty before it).
    pub fn state_json(&self) -> Arc<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.viewed = Some(Instant::now());
        seen.json.clone()
    }
}

impl Seen {
    /// The page's state now.
    fn state(&self, node: &NodeHandle) -> State {
        let now = Instant::now();
        let seen = self;
        let ago = |t: Instant| {
            u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
        };
        let commits_per_sec = seen
            .samples
            .iter()
            .zip(seen.samples.iter().skip(1))
            .map(|(&(t0, c0), &(t1, c1))| {
                let secs = t1.saturating_duration_since(t0).as_secs_f64();
                let rate = if secs > 0.0 {
                    c1.saturating_sub(c0) as f64 / secs
                } else {
                    0.0
                };
                (ago(t1), rate)
            })
            .collect();
        State {
            me: node.id().0,
            now_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            members: seen.members.clone(),
            availability: Some(node.metrics().availability),
            timeline: node.timeline(WINDOW),
            window_ms: u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX),
            commits_per_sec,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn poll(
    node: NodeHandle,
    members: BTreeMap<NodeId, String>,
    client: QuicClientTransport,
    seen: Arc<Mutex<Seen>>,
) {
    let client = Arc::new(client);
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let commit = node.status().commit_index.0;
        // Every member at once, each bounded by POLL_TIMEOUT; only while
        // someone looks at the page (the first view answers "starting"
        // until the next poll).
        let viewed = seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .viewed
            .is_some_and(|t| t.elapsed() < VIEWED_FOR);
        let mut asks = tokio::task::JoinSet::new();
        for (id, addr) in members.iter().filter(|_| viewed) {
            let client = client.clone();
            let (id, addr) = (*id, addr.clone());
            asks.spawn(async move {
                let (status, error) = match ask(&client, &addr).await {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                };
                Member {
                    id: id.0,
                    addr,
                    status,
                    error,
                }
            });
        }
        let mut found: Vec<Member> = asks.join_all().await;
        found.sort_by_key(|m| m.id);
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        if viewed {
            s.members = found;
        }
        if s.samples.len() >= SAMPLES {
            s.samples.pop_front();
        }
        s.samples.push_back((Instant::now(), commit));
        if !viewed {
            continue; // no viewer: no members asked, no JSON made
        }
        let json = serde_json::to_string(&s.state(&node)).unwrap_or_default();
        s.json = Arc::new(json);
    }
}

/// One member's status, as the `status` command prints it.
async fn ask(client: &QuicClientTransport, addr: &str) -> Result<serde_json::Value, String> {
    let addr = NodeAddr::parse(addr)?;
    let r = tokio::time::timeout(POLL_TIMEOUT, client.request(addr, ClientRequest::Status)).await;
    match r {
        Err(_) => Err(format!("no answer within {POLL_TIMEOUT:?}")),
        Ok(Err(RequestError::NotSent(w) | RequestError::Lost(w))) => Err(cut(&w)),
        Ok(Ok(ClientResponse::Status(s))) => {
            let line = crate::cli::status_line(&s);
            if line.len() > MAX_STATUS_BYTES {
                return Err(format!(
                    "its status is {} bytes, more than the {MAX_STATUS_BYTES} shown",
                    line.len()
                ));
            }
            serde_json::from_str(&line).map_err(|e| cut(&e.to_string()))
        }
        Ok(Ok(other)) => Err(cut(&format!("unexpected answer {other:?}"))),
    }
}

/// `text`, cut to [`MAX_ERROR_CHARS`] characters.
fn cut(text: &str) -> String {
    text.chars().take(MAX_ERROR_CHARS).collect()
}
