//! The generic client: leader discovery, redirects, retries, and honest
//! outcomes.
//!
//! Owns: [`Client<T>`], which the generated `<Name>Client` wraps, and
//! [`Error`], the one error type of client calls.
//!
//! A command is sent with its session id and sequence number; a retry (after
//! a timeout, a lost connection or a leader change) resends the *same*
//! numbers, and the replicated session table applies it at most once and
//! returns the original result (see [`crate::sm`]). So retrying is safe, and
//! the client retries until the call's deadline.
//!
//! Outcomes are one of three, and never guessed:
//! - `Ok`: applied (the node answered after applying it);
//! - [`Error::is_not_applied`]: it certainly never takes effect: every
//!   attempt was refused before it could be appended (wrong node, busy,
//!   overwritten, never sent);
//! - [`Error::is_unknown`]: anything else (a timeout after sending, a lost
//!   connection, a leader lost mid-request). It may still commit.
//!
//! Invariant: once any attempt may have reached a leader's log, the call can
//! end only in `Ok` or an unknown outcome, never "not applied".

mod addr;
mod membership;
mod operator;
mod retry;
pub use self::addr::NodeAddr;
pub use self::membership::{BUSY_GRACE, Member, MemberRole, Members};
use self::retry::*;

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::protocol::{ClientRequest, ClientResponse, CommandOutcome, Consistency, SessionCommand};
use crate::schema::Schema;
use crate::sm::{Replicated, decode_exact};

/// Why a client call did not succeed: the error of every typed client
/// method, also reachable as `ha_core::Error` (the name the API contract
/// promises).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The command certainly did not take effect and never will.
    #[error("not applied: {0}")]
    NotApplied(String),
    /// The command may or may not take effect.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// A query failed (queries change nothing).
    #[error("query failed: {0}")]
    Query(String),
    /// The command ran on every replica, in log order, and failed there:
    /// the method panicked, or its result could not be encoded. What it
    /// changed before failing stays (see [`crate::sm::PanicPolicy`]); a
    /// retry of this call is answered the same.
    #[error("the command failed on the replicas: {0}")]
    Failed(String),
    /// Another operation of the kind is in progress (a membership change):
    /// nothing was done; retry once it is over.
    #[error("busy: {0}")]
    Busy(String),
}

crate::debug_as_display!(ClientError);

/// The client's error under the name the API contract promises
/// (`ha_core::Error`): a re-export, so its variants import as before.
pub use self::ClientError as Error;

impl ClientError {
    /// Whether the command certainly did not take effect.
    pub fn is_not_applied(&self) -> bool {
        matches!(
            self,
            Error::NotApplied(_) | Error::Query(_) | Error::Busy(_)
        )
    }
    /// Whether the command's outcome is unknown.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Error::Unknown(_))
    }
}

/// The stored fingerprint of `T`, which commands and registrations carry;
/// a type that cannot be traced sends nothing.
fn stored_schema<T: Replicated>() -> Result<u64, Error> {
    Schema::of::<T>()
        .map(|s| s.stored())
        .map_err(|e| Error::NotApplied(e.to_string()))
}

/// Why one request got no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The request was certainly not delivered (no connection).
    NotSent(String),
    /// The request may have been delivered; its response was lost.
    Lost(String),
}

/// A boxed future returned by [`ClientTransport::request`].
pub type RequestFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ClientResponse, RequestError>> + Send + 'a>>;

/// Sends one request to one node (ha-quic implements it over QUIC).
pub trait ClientTransport: Send + Sync + 'static {
    /// Sends `req` to the node at `addr` and waits for its response. The
    /// transport resolves `addr`'s host when it connects, and checks the
    /// node's certificate names that host.
    fn request(&self, addr: NodeAddr, req: ClientRequest) -> RequestFuture<'_>;

    /// Starts connecting to the node at `addr` in the background, unless a
    /// connection to it is open or being made, so that a failover to it
    /// need not wait for a handshake (see [`WARM_EVERY`]). By default,
    /// nothing.
    fn warm(&self, addr: &NodeAddr) {
        let _ = addr;
    }
}

/// How often a client asks its transport to keep a connection ready to
/// every node it knows ([`ClientTransport::warm`]), once it has run for
/// [`WARM_AFTER`]: when the leader hands over or fails, the client's writes
/// go to the next leader without a handshake first (with many clients,
/// their handshakes at once were most of what a hand-off cost them), and a
/// node that restarted is connected to again soon after it is back.
pub const WARM_EVERY: Duration = Duration::from_millis(250);

/// How long a client runs before it first keeps standby connections: one
/// that ends sooner (a command-line call) never does, since it would only
/// load the nodes with handshakes it never uses.
pub const WARM_AFTER: Duration = Duration::from_secs(1);

/// Addresses a client keeps besides the ones it was given: learned from
/// redirects and member lists (a cluster of more members is still
/// reached through the ones given and redirects).
pub const MAX_LEARNED_ADDRS: usize = 16;

/// How long a node a request could not be sent to is passed over (not
/// picked in turn, not followed when another node names it leader), unless
/// it answers meanwhile. Followers go on naming a leader for a while after
/// they last heard from it; a client that kept following them to a dead
/// leader would spend its attempts there instead of finding the next one.
pub const UNREACHABLE_MEMORY: Duration = Duration::from_millis(250);

/// Nodes remembered as unreachable at most.
pub const MAX_UNREACHABLE: usize = 32;

/// The longest wait after a "not the leader" answer: the next attempt goes
/// to the leader named, or, with none named, asks again soon (an election
/// is likely under way). At most [`ELECTION_POLLS`] such short waits per
/// call; after them the ordinary backoff (doubling to 200 ms) goes on, so
/// a cluster with no leader for long is not polled hard.
pub const ELECTION_POLL: Duration = Duration::from_millis(25);

/// Short waits after "not the leader" per call (see [`ELECTION_POLL`]):
/// the wait is the backoff when it is below 25 ms, so from the first
/// backoff of 10 ms 32 of them cover 320 ms, more than one election round
/// at the server's default timing (150–300 ms).
pub const ELECTION_POLLS: u32 = 32;

/// The client's side of its session. `id` is `None` until a session is
/// registered, and again after the cluster reported it expired; the next
/// command then registers a new one.
struct Session {
    id: Option<u64>,
    /// The secret the session was registered with (random per session).
    secret: u64,
    next_seq: u64,
    /// Sequence numbers still waiting for a definitive answer, each with
    /// its call's deadline.
    open: BTreeMap<u64, tokio::time::Instant>,
}

impl Session {
    /// The lowest number of the window: the lowest open number whose call
    /// has not passed its deadline (`next_seq` if none). A call past its
    /// deadline no longer holds the window (its future may never be polled
    /// again).
    fn window_low(&self, now: tokio::time::Instant) -> u64 {
        self.open
            .iter()
            .find(|(_, until)| **until > now)
            .map_or(self.next_seq, |(seq, _)| *seq)
    }
}

struct Inner {
    transport: Arc<dyn ClientTransport>,
    /// The nodes tried in turn: the ones the client was given first (never
    /// dropped), then the ones it learned (see [`Client::learn`]).
    addrs: Mutex<Vec<NodeAddr>>,
    /// How many of `addrs` the client was given.
    seeds: usize,
    leader: Mutex<Option<NodeAddr>>,
    /// Nodes a request could not be sent to, and when: for
    /// [`UNREACHABLE_MEMORY`] (or until they answer) the client neither
    /// picks them in turn nor follows a redirect to them (see
    /// [`Client::redirect`]). At most [`MAX_UNREACHABLE`] are kept.
    unreachable: Mutex<Vec<(NodeAddr, tokio::time::Instant)>>,
    session: Mutex<Session>,
    /// Held while a session is being registered, so concurrent first
    /// commands register one session, not one each.
    registering: tokio::sync::Mutex<()>,
    /// Woken when a sequence number closes: a command waiting for room in
    /// the session's window (see [`Client::command`]) looks again.
    closed: tokio::sync::Notify,
    rotate: AtomicU64,
    seed: u64,
    /// When the client last asked for ready connections (at first, so
    /// that the first time is [`WARM_AFTER`] after it was made).
    warmed: Mutex<std::time::Instant>,
}

/// Settings of a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one call may take, retries included.
    pub timeout: Duration,
    /// How long to wait for one response before retrying elsewhere.
    pub attempt_timeout: Duration,
    /// How fresh queries must be.
    pub consistency: Consistency,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_millis(1500),
            consistency: Consistency::Linearizable,
        }
    }
}

/// The generic client of a replicated type `T`. Clones share one session.
pub struct Client<T> {
    inner: Arc<Inner>,
    opts: ClientOptions,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Client<T> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
            opts: self.opts.clone(),
            _t: PhantomData,
        }
    }
}

fn random_u64() -> u64 {
    // A per-call counter and the clock hashed with SipHash under keys the
    // OS's randomness seeded (std's `RandomState`): unique per call in a
    // process, and unpredictable to anyone else. Nonces and session secrets
    // need to be unique; a secret keeps one client's bugs (or guesses) out
    // of another's session. Clients are authenticated by their
    // certificates, not by secrets.
    use std::hash::BuildHasher;
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((n, t, std::process::id())) | 1
}

impl<T: Replicated> Client<T> {
    /// A client of the cluster reachable at any of `addrs` (socket
    /// addresses, or [`NodeAddr`]s naming nodes by DNS name or IP).
    ///
    /// # Panics
    /// If `addrs` is empty: a client must know where to start.
    pub fn new(
        transport: Arc<dyn ClientTransport>,
        addrs: impl IntoIterator<Item = impl Into<NodeAddr>>,
        opts: ClientOptions,
    ) -> Client<T> {
        let mut seeds: Vec<NodeAddr> = Vec::new();
        for a in addrs {
            let a = a.into();
            if !seeds.contains(&a) {
                seeds.push(a);
            }
        }
        assert!(
            !seeds.is_empty(),
            "a client needs at least one node address"
        );
        Client {
            inner: Arc::new(Inner {
                transport,
                seeds: seeds.len(),
                addrs: Mutex::new(seeds),
                leader: Mutex::new(None),
                unreachable: Mutex::new(Vec::new()),
                session: Mutex::new(Session {
                    id: None,
                    secret: 0,
                    next_seq: 1,
                    open: BTreeMap::new(),
                }),
                registering: tokio::sync::Mutex::new(()),
                closed: tokio::sync::Notify::new(),
                rotate: AtomicU64::new(0),
                seed: random_u64(),
                warmed: Mutex::new(
                    std::time::Instant::now() + WARM_AFTER.saturating_sub(WARM_EVERY),
                ),
            }),
            opts,
            _t: PhantomData,
        }
    }

    /// A client sharing this one's session, with other query consistency.
    pub fn with_consistency(&self, consistency: Consistency) -> Client<T> {
        let mut c = self.clone();
        c.opts.consistency = consistency;
        c
    }

    /// A client sharing this one's session, with another call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Client<T> {
        let mut c = self.clone();
        c.opts.timeout = timeout;
        c
    }

    /// Runs a command exactly once; returns its output.
    pub async fn command(&self, command: &T::Command) -> Result<T::CommandOutput, Error> {
        let body = Bytes::from(
            postcard::to_stdvec(command).map_err(|e| Error::NotApplied(format!("encode: {e}")))?,
        );
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let (client, secret, seq) = loop {
            let room = self.inner.closed.notified();
            let registered = {
                let mut s = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
                match s.id {
                    // A window of `MAX_OPEN_RESULTS` numbers from the
                    // lowest open one: the replicas keep every result in
                    // it, so a retry is always answered from what they
                    // kept, never `Abandoned` by their cap.
                    // A call past its deadline no longer holds the window
                    // (its future may never be polled again): if the
                    // replicas then drop its result, its late retry is
                    // answered `Abandoned`, an unknown outcome, honestly.
                    Some(id) => {
                        let lowest = s.window_low(tokio::time::Instant::now());
                        if s.next_seq - lowest < crate::sm::MAX_OPEN_RESULTS as u64 {
                            let seq = s.next_seq;
                            s.next_seq += 1;
                            s.open.insert(seq, deadline);
                            break (id, s.secret, seq);
                        }
                        true
                    }
                    None => false,
                }
            };
            if !registered {
                self.register(deadline).await?;
                continue;
            }
            // Woken when the lowest open number closes; looks again at the
            // latest when a call's deadline passes.
            let next_expiry = {
                let s = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
                let now = tokio::time::Instant::now();
                s.open.values().filter(|d| **d > now).min().copied()
            };
            let until = next_expiry.map_or(deadline, |e| e.min(deadline));
            if tokio::time::timeout_at(until, room).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Err(Error::NotApplied(format!(
                    "the session's oldest unanswered command holds the window of {} numbers \
                     the replicas keep results for",
                    crate::sm::MAX_OPEN_RESULTS
                )));
            }
        };
        // Closes `seq` in the session however this call ends, even if its
        // future is dropped: an open number left behind would pin
        // `ack_below` and make the replicas keep every later result.
        let guard = OpenSeq {
            inner: &self.inner,
            client,
            seq,
            expired: false,
        };
        let (result, expired) = self.command_loop(client, secret, seq, body, deadline).await;
        let mut guard = guard;
        guard.expired = expired;
        drop(guard);
        let bytes = result?;
        decode_exact(&bytes).map_err(|e| Error::Unknown(format!("undecodable answer: {e}")))
    }

    /// Runs a query with this client's consistency.
    pub async fn query(&self, query: &T::Query) -> Result<T::QueryOutput, Error> {
        let body =
            Bytes::from(postcard::to_stdvec(query).map_err(|e| Error::Query(e.to_string()))?);
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let schema = Schema::of::<T>()
            .map_err(|e| Error::Query(e.to_string()))?
            .query();
        let req = || ClientRequest::Query {
            schema,
            body: body.clone(),
            consistency: self.opts.consistency,
        };
        // A stale query may be answered by any node: not a leader hint.
        let answered_by_leader = self.opts.consistency != Consistency::Stale;
        let answer = self
            .retry(
                deadline,
                answered_by_leader,
                !answered_by_leader,
                req,
                |resp| match resp {
                    ClientResponse::QueryResult { answer } => Reply::Done(answer),
                    other => Reply::Retry(format!("unexpected response {other:?}")),
                },
            )
            .await;
        match answer {
            Ok(answer) => decode_exact(&answer).map_err(Error::Query),
            Err(RetryEnd::Refused(message)) => Err(Error::Query(message)),
            Err(RetryEnd::TimedOut(why)) => {
                Err(Error::Query(format!("timed out; last error: {why}")))
            }
        }
    }
}
