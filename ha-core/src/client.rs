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

use std::collections::BTreeSet;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
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
}

crate::debug_as_display!(ClientError);

/// The client's error under the name the API contract promises
/// (`ha_core::Error`): a re-export, so its variants import as before.
pub use self::ClientError as Error;

impl ClientError {
    /// Whether the command certainly did not take effect.
    pub fn is_not_applied(&self) -> bool {
        matches!(self, Error::NotApplied(_) | Error::Query(_))
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
    /// Sends `req` to the node at `addr` and waits for its response.
    fn request(&self, addr: SocketAddr, req: ClientRequest) -> RequestFuture<'_>;
}

/// The client's side of its session. `id` is `None` until a session is
/// registered, and again after the cluster reported it expired; the next
/// command then registers a new one.
struct Session {
    id: Option<u64>,
    /// The secret the session was registered with (random per session).
    secret: u64,
    next_seq: u64,
    /// Sequence numbers still waiting for a definitive answer.
    open: BTreeSet<u64>,
}

struct Inner {
    transport: Arc<dyn ClientTransport>,
    addrs: Vec<SocketAddr>,
    leader: Mutex<Option<SocketAddr>>,
    session: Mutex<Session>,
    /// Held while a session is being registered, so concurrent first
    /// commands register one session, not one each.
    registering: tokio::sync::Mutex<()>,
    rotate: AtomicU64,
    seed: u64,
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
    // Unique per call in a process (a counter), and across processes and
    // machines with high probability (the clock, the process id, an
    // address), mixed by SplitMix64. Nonces and session secrets need to be
    // unique. Not a cryptographic secret: a secret only keeps one client's
    // bugs out of another's session; clients are authenticated by their
    // certificates.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let addr = &local as *const u8 as u64;
    let mut rng = crate::rng::SplitMix64::new(
        t ^ (u64::from(std::process::id()) << 32) ^ addr ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    rng.next_u64() | 1
}

/// Closes one command's sequence number in the session when dropped (see
/// [`Client::command`]); forgets the session if the cluster said it expired.
struct OpenSeq<'a> {
    inner: &'a Inner,
    client: u64,
    seq: u64,
    expired: bool,
}

impl Drop for OpenSeq<'_> {
    fn drop(&mut self) {
        let mut s = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
        // A session replaced meanwhile is not this command's to edit.
        if s.id == Some(self.client) {
            s.open.remove(&self.seq);
            if self.expired {
                // The next command registers a fresh session.
                s.id = None;
                s.next_seq = 1;
                s.open.clear();
            }
        }
    }
}

/// What [`Client::retry`]'s caller makes of an answer.
enum Reply<R> {
    Done(R),
    Retry(String),
}

/// How [`Client::retry`] ended without an answer.
enum RetryEnd {
    /// A node refused the request for good.
    Refused(String),
    /// The deadline passed; the last reason to retry.
    TimedOut(String),
}

/// What one attempt of a command came to.
enum Attempt {
    /// The answer (applied, or certainly not).
    Done(Result<Bytes, Error>),
    /// The session expired: the error, and the session must be renewed.
    Expired(Error),
    /// Try again (elsewhere); `maybe_appended` says whether this attempt
    /// may have put the command into a log.
    Retry { maybe_appended: bool, why: String },
}

/// What a command's kept outcome comes to.
fn outcome_step(answer: &[u8], maybe_appended: bool) -> Attempt {
    match decode_exact::<CommandOutcome>(answer) {
        Ok(CommandOutcome::Applied(out)) => Attempt::Done(Ok(out)),
        Ok(CommandOutcome::SessionExpired) => {
            // Not applied now; applied before only if an
            // earlier attempt may have reached a log.
            let why = "the session expired";
            Attempt::Expired(if maybe_appended {
                Error::Unknown(format!("{why}: an earlier attempt may have been applied"))
            } else {
                Error::NotApplied(format!("{why} before the command ran"))
            })
        }
        Ok(CommandOutcome::SeqReused) => Attempt::Done(Err(Error::NotApplied(
            "the session already holds another command at this number".into(),
        ))),
        Ok(CommandOutcome::Registered { .. }) => Attempt::Done(Err(Error::Unknown(
            "a registration answer to a command".into(),
        ))),
        Ok(CommandOutcome::Abandoned) => Attempt::Done(Err(Error::Unknown(
            "the session abandoned this command".into(),
        ))),
        Ok(CommandOutcome::Undecodable(e)) => Attempt::Done(Err(Error::NotApplied(format!(
            "the cluster could not decode the command: {e}"
        )))),
        Ok(CommandOutcome::Failed(why)) => Attempt::Done(Err(Error::Failed(why))),
        // Checked after the session's kept results: an
        // earlier attempt that ran would have its answer.
        Ok(CommandOutcome::Halted { index, reason }) => {
            Attempt::Done(Err(Error::NotApplied(format!(
                "the service halted at log index {index} because that command \
                 failed ({reason}); an operator resumes it"
            ))))
        }
        Ok(CommandOutcome::Resume(_) | CommandOutcome::PanicPolicy(_)) => Attempt::Done(Err(
            Error::Unknown("an operator's answer to a command".into()),
        )),
        Err(e) => Attempt::Done(Err(Error::Unknown(format!("undecodable answer: {e}")))),
    }
}

impl<T: Replicated> Client<T> {
    /// A client of the cluster reachable at any of `addrs`.
    pub fn new(
        transport: Arc<dyn ClientTransport>,
        addrs: Vec<SocketAddr>,
        opts: ClientOptions,
    ) -> Client<T> {
        Client {
            inner: Arc::new(Inner {
                transport,
                addrs,
                leader: Mutex::new(None),
                session: Mutex::new(Session {
                    id: None,
                    secret: 0,
                    next_seq: 1,
                    open: BTreeSet::new(),
                }),
                registering: tokio::sync::Mutex::new(()),
                rotate: AtomicU64::new(0),
                seed: random_u64(),
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

    fn target(&self) -> SocketAddr {
        if let Some(l) = *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) {
            return l;
        }
        let k = self.inner.rotate.fetch_add(1, Ordering::Relaxed) + self.inner.seed;
        self.inner.addrs[(k % self.inner.addrs.len() as u64) as usize]
    }

    fn set_leader(&self, addr: Option<SocketAddr>) {
        *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    async fn attempt(
        &self,
        req: ClientRequest,
    ) -> (SocketAddr, Result<ClientResponse, RequestError>) {
        let addr = self.target();
        let fut = self.inner.transport.request(addr, req);
        match tokio::time::timeout(self.opts.attempt_timeout, fut).await {
            Ok(r) => (addr, r),
            Err(_) => (addr, Err(RequestError::Lost("no response in time".into()))),
        }
    }

    fn redirect(&self, addr: SocketAddr, leader_addr: Option<SocketAddr>) {
        match leader_addr {
            Some(l) if l != addr => self.set_leader(Some(l)),
            _ => self.set_leader(None),
        }
    }

    /// Runs a command exactly once; returns its output.
    pub async fn command(&self, command: &T::Command) -> Result<T::CommandOutput, Error> {
        let body = Bytes::from(
            postcard::to_stdvec(command).map_err(|e| Error::NotApplied(format!("encode: {e}")))?,
        );
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let (client, secret, seq) = loop {
            {
                let mut s = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(id) = s.id {
                    let seq = s.next_seq;
                    s.next_seq += 1;
                    s.open.insert(seq);
                    break (id, s.secret, seq);
                }
            }
            self.register(deadline).await?;
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

    /// Sets what failing commands do from now on, on every replica (an
    /// operator's command; see [`crate::sm::PanicPolicy`]). Its retries
    /// carry one nonce, so a retry that arrives after another operator's
    /// change is answered, not applied again.
    pub async fn set_panic_policy(&self, policy: crate::sm::PanicPolicy) -> Result<(), Error> {
        self.operator(
            |schema, nonce| ClientRequest::SetPanicPolicy {
                schema,
                policy,
                nonce,
            },
            |o| match o {
                CommandOutcome::PanicPolicy(p) if p == policy => Some(Ok(())),
                _ => None,
            },
        )
        .await
    }

    /// Resumes a service halted at log index `index` (an operator's
    /// command; see [`crate::sm::PanicPolicy::Halt`]). Returns the index
    /// resumed at; a retry of this call is answered as its first attempt
    /// was. Refused if the service is not halted there.
    pub async fn resume(&self, index: u64) -> Result<u64, Error> {
        self.operator(
            |schema, nonce| ClientRequest::Resume {
                schema,
                index,
                nonce,
            },
            |o| match o {
                CommandOutcome::Resume(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    /// Sends an operator command until it is answered: every retry carries
    /// one nonce, so the replicas answer a retry as its first attempt.
    /// `pick` takes the answer out of the outcome (`None`: not an answer to
    /// this command).
    async fn operator<R>(
        &self,
        req: impl Fn(u64, u64) -> ClientRequest,
        pick: impl Fn(CommandOutcome) -> Option<Result<R, String>>,
    ) -> Result<R, Error> {
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let schema = stored_schema::<T>()?;
        let nonce = random_u64();
        let answered = self
            .retry(
                deadline,
                true,
                || req(schema, nonce),
                |resp| match resp {
                    ClientResponse::Applied { answer, .. } => {
                        match decode_exact::<CommandOutcome>(&answer) {
                            // Refused by the replicas (a reused nonce): final.
                            Ok(CommandOutcome::Undecodable(why)) => Reply::Done(Err(why)),
                            Ok(o) => {
                                let text = format!("unexpected answer {o:?}");
                                pick(o).map_or(Reply::Retry(text), Reply::Done)
                            }
                            Err(e) => Reply::Retry(format!("undecodable answer: {e}")),
                        }
                    }
                    other => Reply::Retry(format!("unexpected response {other:?}")),
                },
            )
            .await;
        match answered {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(why)) => Err(Error::NotApplied(why)),
            Err(RetryEnd::Refused(message)) => Err(Error::NotApplied(message)),
            Err(RetryEnd::TimedOut(why)) => {
                Err(Error::Unknown(format!("timed out; last error: {why}")))
            }
        }
    }

    /// Registers a session unless one is open (or another caller registered
    /// one meanwhile). A failure means the command was never sent.
    async fn register(&self, deadline: tokio::time::Instant) -> Result<(), Error> {
        let Ok(_guard) = tokio::time::timeout_at(deadline, self.inner.registering.lock()).await
        else {
            return Err(Error::NotApplied(
                "timed out waiting to open a session (the command was not sent)".into(),
            ));
        };
        if self
            .inner
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .id
            .is_some()
        {
            return Ok(());
        }
        let secret = random_u64();
        let schema = stored_schema::<T>()?;
        let req = || ClientRequest::Register { schema, secret };
        let registered = self
            .retry(deadline, true, req, |resp| match resp {
                ClientResponse::Applied { answer, .. } => {
                    match decode_exact::<CommandOutcome>(&answer) {
                        Ok(CommandOutcome::Registered { session }) => Reply::Done(session),
                        other => Reply::Retry(format!("unexpected registration answer {other:?}")),
                    }
                }
                other => Reply::Retry(format!("unexpected response {other:?}")),
            })
            .await;
        // (A lost registration may have opened a session nobody uses; it
        // expires on its own.)
        match registered {
            Ok(session) => {
                let mut s = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
                s.id = Some(session);
                s.secret = secret;
                s.next_seq = 1;
                s.open.clear();
                Ok(())
            }
            Err(RetryEnd::Refused(message)) => Err(Error::NotApplied(message)),
            Err(RetryEnd::TimedOut(why)) => Err(Error::NotApplied(format!(
                "timed out opening a session (the command was not sent); last error: {why}"
            ))),
        }
    }

    /// Sends `req()` until `reply` takes an answer, a node refuses it for
    /// good, or `deadline` passes: follows redirects, forgets a failed
    /// leader, backs off between tries. With `answered_by_leader`, the node
    /// that answered is remembered as the leader. For requests a retry cannot harm
    /// (registrations, queries).
    async fn retry<R>(
        &self,
        deadline: tokio::time::Instant,
        answered_by_leader: bool,
        req: impl Fn() -> ClientRequest,
        mut reply: impl FnMut(ClientResponse) -> Reply<R>,
    ) -> Result<R, RetryEnd> {
        let mut last_why = String::from("no node answered");
        let mut backoff = Duration::from_millis(10);
        while tokio::time::Instant::now() < deadline {
            let (addr, resp) = self.attempt(req()).await;
            match resp {
                Ok(ClientResponse::NotLeader { leader_addr, .. }) => {
                    self.redirect(addr, leader_addr);
                    last_why = format!("{addr} is not the leader");
                }
                Ok(ClientResponse::Refused { message }) => return Err(RetryEnd::Refused(message)),
                Ok(ClientResponse::Failed { message, .. }) => {
                    self.set_leader(None);
                    last_why = message;
                }
                // The leader is still the leader: back off and ask it again.
                Ok(ClientResponse::Busy { message }) => last_why = message,
                Ok(other) => match reply(other) {
                    Reply::Done(r) => {
                        if answered_by_leader {
                            self.set_leader(Some(addr));
                        }
                        return Ok(r);
                    }
                    Reply::Retry(why) => last_why = why,
                },
                Err(RequestError::NotSent(w) | RequestError::Lost(w)) => {
                    self.set_leader(None);
                    last_why = w;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(RetryEnd::TimedOut(last_why))
    }

    /// Sends `(client, seq)` until it has an answer or the deadline passes.
    /// Returns the result and whether the cluster said the session expired.
    async fn command_loop(
        &self,
        client: u64,
        secret: u64,
        seq: u64,
        body: Bytes,
        deadline: tokio::time::Instant,
    ) -> (Result<Bytes, Error>, bool) {
        let mut maybe_appended = false;
        let mut last_why = String::from("no node answered");
        let mut backoff = Duration::from_millis(10);
        while tokio::time::Instant::now() < deadline {
            let ack_below = {
                let s = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
                if s.id != Some(client) {
                    // The session expired (another command learned it):
                    // this command cannot be applied any more.
                    last_why = "the session expired".into();
                    break;
                }
                s.open.first().copied().unwrap_or(s.next_seq)
            };
            let schema = match stored_schema::<T>() {
                Ok(s) => s,
                Err(e) => return (Err(e), false),
            };
            let req = ClientRequest::Command {
                schema,
                command: SessionCommand {
                    client,
                    secret,
                    seq,
                    ack_below,
                    body: body.clone(),
                },
            };
            let (addr, resp) = self.attempt(req).await;
            let step = self.command_step(addr, resp, maybe_appended);
            match step {
                Attempt::Done(r) => return (r, false),
                Attempt::Expired(e) => return (Err(e), true),
                Attempt::Retry {
                    maybe_appended: m,
                    why,
                } => {
                    maybe_appended |= m;
                    last_why = why;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        let r = if maybe_appended {
            Err(Error::Unknown(format!("timed out; last error: {last_why}")))
        } else {
            Err(Error::NotApplied(format!(
                "timed out before any node took it; last error: {last_why}"
            )))
        };
        (r, false)
    }

    /// What a node's response to one attempt of a command comes to.
    fn command_step(
        &self,
        addr: SocketAddr,
        resp: Result<ClientResponse, RequestError>,
        maybe_appended: bool,
    ) -> Attempt {
        match resp {
            Ok(ClientResponse::Applied { answer, .. }) => {
                self.set_leader(Some(addr));
                outcome_step(&answer, maybe_appended)
            }
            Ok(ClientResponse::NotLeader { leader_addr, .. }) => {
                self.redirect(addr, leader_addr);
                Attempt::Retry {
                    maybe_appended: false,
                    why: format!("{addr} is not the leader"),
                }
            }
            Ok(ClientResponse::Refused { message }) if !maybe_appended => {
                Attempt::Done(Err(Error::NotApplied(message)))
            }
            Ok(ClientResponse::Refused { message }) => Attempt::Done(Err(Error::Unknown(format!(
                "{message} (an earlier attempt may have been applied)"
            )))),
            Ok(ClientResponse::Failed {
                not_applied,
                message,
            }) => {
                self.set_leader(None);
                Attempt::Retry {
                    maybe_appended: !not_applied,
                    why: message,
                }
            }
            Ok(ClientResponse::Busy { message }) => Attempt::Retry {
                maybe_appended: false,
                why: message,
            },
            Ok(other) => Attempt::Retry {
                maybe_appended: true,
                why: format!("unexpected response {other:?}"),
            },
            Err(RequestError::NotSent(why)) => {
                self.set_leader(None);
                Attempt::Retry {
                    maybe_appended: false,
                    why,
                }
            }
            Err(RequestError::Lost(why)) => {
                self.set_leader(None);
                Attempt::Retry {
                    maybe_appended: true,
                    why,
                }
            }
        }
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
            .retry(deadline, answered_by_leader, req, |resp| match resp {
                ClientResponse::QueryResult { answer } => Reply::Done(answer),
                other => Reply::Retry(format!("unexpected response {other:?}")),
            })
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
