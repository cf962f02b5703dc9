//! How one call finds the leader and retries: registration of the session,
//! the retry loop shared by registrations, queries and operator commands,
//! and a command's attempts with the outcome each answer allows.
//!
//! Invariants: a retry of a command reuses its session and sequence number;
//! once an attempt may have reached a leader's log the call never ends in
//! "not applied"; a sequence number is closed when its call ends, however
//! it ends (the drop guard).

use super::*;

/// Closes one command's sequence number in the session when dropped (see
/// [`Client::command`]); forgets the session if the cluster said it expired.
pub(super) struct OpenSeq<'a> {
    pub(super) inner: &'a Inner,
    pub(super) client: u64,
    pub(super) seq: u64,
    pub(super) expired: bool,
}

impl Drop for OpenSeq<'_> {
    fn drop(&mut self) {
        let moved = {
            let mut s = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
            // A session replaced meanwhile is not this command's to edit.
            if s.id == Some(self.client) {
                let lowest = self.seq <= s.window_low(tokio::time::Instant::now());
                s.open.remove(&self.seq);
                if self.expired {
                    // The next command registers a fresh session.
                    s.id = None;
                    s.next_seq = 1;
                    s.open.clear();
                }
                lowest || self.expired
            } else {
                true
            }
        };
        // The window moved: commands waiting for room look again.
        if moved {
            self.inner.closed.notify_waiters();
        }
    }
}

/// What [`Client::retry`]'s caller makes of an answer.
pub(super) enum Reply<R> {
    Done(R),
    Retry(String),
}

/// How [`Client::retry`] ended without an answer.
pub(super) enum RetryEnd {
    /// A node refused the request for good.
    Refused(String),
    /// The deadline passed; the last reason to retry.
    TimedOut(String),
}

/// What one attempt of a command came to.
pub(super) enum Attempt {
    /// The answer (applied, or certainly not).
    Done(Result<Bytes, Error>),
    /// The session expired: the error, and the session must be renewed.
    Expired(Error),
    /// Try again (elsewhere); `maybe_appended` says whether this attempt
    /// may have put the command into a log.
    Retry { maybe_appended: bool, why: String },
}

/// What a command's kept outcome comes to.
pub(super) fn outcome_step(answer: &[u8], maybe_appended: bool) -> Attempt {
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

/// Whether a failure seen at `at` still passes its node over at `now`.
fn fresh(at: tokio::time::Instant, now: tokio::time::Instant) -> bool {
    now.duration_since(at) < UNREACHABLE_MEMORY
}

impl<T: Replicated> Client<T> {
    /// The node to ask: the leader if one is known, else the next in turn
    /// that has not failed within [`UNREACHABLE_MEMORY`] (any, if all have).
    pub(super) fn target(&self) -> NodeAddr {
        if let Some(l) = self.leader() {
            return l;
        }
        self.next_in_turn()
    }

    /// The next node in turn that has not failed within
    /// [`UNREACHABLE_MEMORY`] (any, if all have), leader or not: where a
    /// stale query goes, so such reads spread over every node.
    pub(super) fn next_in_turn(&self) -> NodeAddr {
        let k = self.inner.rotate.fetch_add(1, Ordering::Relaxed) + self.inner.seed;
        let now = tokio::time::Instant::now();
        let passed_over: Vec<NodeAddr> = self
            .inner
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, at)| fresh(*at, now))
            .map(|(a, _)| a.clone())
            .collect();
        let addrs = self.inner.addrs.lock().unwrap_or_else(|e| e.into_inner());
        let n = addrs.len() as u64;
        (0..n)
            .map(|i| &addrs[((k + i) % n) as usize])
            .find(|a| !passed_over.contains(a))
            .unwrap_or(&addrs[(k % n) as usize])
            .clone()
    }

    /// Every node the client knows (given and learned), in turn order.
    pub(super) fn known_addrs(&self) -> Vec<NodeAddr> {
        self.inner
            .addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn leader(&self) -> Option<NodeAddr> {
        self.inner
            .leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_leader(&self, addr: Option<NodeAddr>) {
        *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    /// `addr` failed: if it is the leader the client knows, it no longer
    /// does (a follower that failed a stale read says nothing of the
    /// leader, which other callers of this client use).
    pub(super) fn forget_leader(&self, addr: &NodeAddr) {
        let mut leader = self.inner.leader.lock().unwrap_or_else(|e| e.into_inner());
        if leader.as_ref() == Some(addr) {
            *leader = None;
        }
    }

    /// A request could not be sent to `addr`: it is forgotten as leader
    /// and passed over for [`UNREACHABLE_MEMORY`]. (A request sent and not
    /// answered in time only forgets the leader: a slow leader is not
    /// shunned by every caller sharing this client.)
    pub(super) fn unreachable(&self, addr: &NodeAddr) {
        self.forget_leader(addr);
        let now = tokio::time::Instant::now();
        let mut u = self
            .inner
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        u.retain(|(a, at)| a != addr && fresh(*at, now));
        if u.len() >= MAX_UNREACHABLE {
            u.remove(0);
        }
        u.push((addr.clone(), now));
    }

    /// `addr` answered: it is not passed over any more.
    pub(super) fn answered(&self, addr: &NodeAddr) {
        let mut u = self
            .inner
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !u.is_empty() {
            u.retain(|(a, _)| a != addr);
        }
    }

    fn recently_unreachable(&self, addr: &NodeAddr) -> bool {
        let now = tokio::time::Instant::now();
        self.inner
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(a, at)| a == addr && fresh(*at, now))
    }

    /// The wait before the next attempt. After a "not the leader" answer,
    /// while `polls` lasts: none when the answer named another node as
    /// leader and the client now follows it (`followed`: the next attempt
    /// goes there, and a node that leads now is worth asking at once: a
    /// hand-off answers its held writes so), else at most
    /// [`ELECTION_POLL`] (an election is likely under way and over soon:
    /// waiting longer only adds to the client's failover); `backoff` does
    /// not grow. Otherwise `backoff`, which then doubles up to 200 ms.
    /// `polls` bounds the immediate attempts too, so two nodes naming each
    /// other cannot keep a caller spinning.
    pub(super) fn pause(
        backoff: &mut Duration,
        polls: &mut u32,
        not_leader: bool,
        followed: bool,
    ) -> Duration {
        if not_leader && *polls > 0 {
            *polls -= 1;
            if followed {
                return Duration::ZERO;
            }
            return (*backoff).min(ELECTION_POLL);
        }
        let wait = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_millis(200));
        wait
    }

    pub(super) async fn attempt(
        &self,
        req: ClientRequest,
    ) -> (NodeAddr, Result<ClientResponse, RequestError>) {
        self.attempt_at(self.target(), req).await
    }

    /// One attempt of `req` at `addr`.
    pub(super) async fn attempt_at(
        &self,
        addr: NodeAddr,
        req: ClientRequest,
    ) -> (NodeAddr, Result<ClientResponse, RequestError>) {
        self.warm_standbys(&addr);
        let fut = self.inner.transport.request(addr.clone(), req);
        match tokio::time::timeout(self.opts.attempt_timeout, fut).await {
            Ok(r) => (addr, r),
            Err(_) => (addr, Err(RequestError::Lost("no response in time".into()))),
        }
    }

    /// Every [`WARM_EVERY`](super::WARM_EVERY), asks the transport to
    /// keep a connection ready to each known node but `target`.
    fn warm_standbys(&self, target: &NodeAddr) {
        {
            let mut warmed = self.inner.warmed.lock().unwrap_or_else(|e| e.into_inner());
            if warmed.elapsed() < super::WARM_EVERY {
                return;
            }
            *warmed = std::time::Instant::now();
        }
        for a in self.known_addrs().iter().filter(|a| *a != target) {
            if !self.recently_unreachable(a) {
                self.inner.transport.warm(a);
            }
        }
    }

    /// `addr` is not the leader and named `leader_addr` (from the
    /// network: taken only if it is a valid address) as the one to ask:
    /// the next attempt goes there, and the client learns it. A node that
    /// failed within [`UNREACHABLE_MEMORY`] is not followed: the node
    /// naming it may not yet know it is gone.
    pub(super) fn redirect(&self, addr: &NodeAddr, leader_addr: Option<String>) {
        match leader_addr.and_then(|l| NodeAddr::parse(&l).ok()) {
            Some(l) if l != *addr && !self.recently_unreachable(&l) => {
                self.learn(std::slice::from_ref(&l), false);
                self.set_leader(Some(l));
            }
            _ => self.set_leader(None),
        }
    }

    /// Adds `found` to the nodes tried in turn (`replace`: the learned ones
    /// become exactly `found`, as a configuration lists them), so a client
    /// follows a cluster whose members were replaced. The addresses it was
    /// given stay; at most [`MAX_LEARNED_ADDRS`] learned ones are kept
    /// (the oldest go first). One that cannot be reached for a while is
    /// kept (a blip must not leave the client with only dead seeds): the
    /// next member list replaces them.
    pub(super) fn learn(&self, found: &[NodeAddr], replace: bool) {
        let seeds = self.inner.seeds;
        let mut addrs = self.inner.addrs.lock().unwrap_or_else(|e| e.into_inner());
        if replace {
            addrs.truncate(seeds);
        }
        for a in found {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        let extra = addrs.len().saturating_sub(seeds + MAX_LEARNED_ADDRS);
        addrs.drain(seeds..seeds + extra);
    }

    /// Registers a session unless one is open (or another caller registered
    /// one meanwhile). A failure means the command was never sent.
    pub(super) async fn register(&self, deadline: tokio::time::Instant) -> Result<(), Error> {
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
            .retry(deadline, true, false, req, |resp| match resp {
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
                drop(s);
                self.inner.closed.notify_waiters();
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
    /// that answered is remembered as the leader. With `any_node` (what
    /// any node answers: stale queries), each try goes to the next node in
    /// turn instead of the leader, so such reads spread over the cluster.
    /// For requests a retry cannot harm (registrations, queries).
    pub(super) async fn retry<R>(
        &self,
        deadline: tokio::time::Instant,
        answered_by_leader: bool,
        any_node: bool,
        req: impl Fn() -> ClientRequest,
        mut reply: impl FnMut(ClientResponse) -> Reply<R>,
    ) -> Result<R, RetryEnd> {
        let mut last_why = String::from("no node answered");
        let mut backoff = Duration::from_millis(10);
        let mut polls = ELECTION_POLLS;
        while tokio::time::Instant::now() < deadline {
            // What any node answers goes to each in turn; the rest to the
            // leader.
            let to = if any_node {
                self.next_in_turn()
            } else {
                self.target()
            };
            let (addr, resp) = self.attempt_at(to, req()).await;
            let not_leader = matches!(resp, Ok(ClientResponse::NotLeader { .. }));
            let asked = addr.clone();
            if resp.is_ok() {
                self.answered(&addr);
            }
            match resp {
                Ok(ClientResponse::NotLeader { leader_addr, .. }) => {
                    self.redirect(&addr, leader_addr);
                    last_why = format!("{addr} is not the leader");
                }
                Ok(ClientResponse::Refused { message }) => return Err(RetryEnd::Refused(message)),
                Ok(ClientResponse::Failed { message, .. }) => {
                    self.forget_leader(&addr);
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
                Err(RequestError::NotSent(w)) => {
                    self.unreachable(&addr);
                    last_why = w;
                }
                Err(RequestError::Lost(w)) => {
                    self.forget_leader(&addr);
                    last_why = w;
                }
            }
            let followed = not_leader && self.leader().is_some_and(|l| l != asked);
            tokio::time::sleep(Self::pause(&mut backoff, &mut polls, not_leader, followed)).await;
        }
        Err(RetryEnd::TimedOut(last_why))
    }

    /// Sends `(client, seq)` until it has an answer or the deadline passes.
    /// Returns the result and whether the cluster said the session expired.
    pub(super) async fn command_loop(
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
        let mut polls = ELECTION_POLLS;
        while tokio::time::Instant::now() < deadline {
            let ack_below = {
                let s = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
                if s.id != Some(client) {
                    // The session expired (another command learned it):
                    // this command cannot be applied any more.
                    last_why = "the session expired".into();
                    break;
                }
                s.open.keys().next().copied().unwrap_or(s.next_seq)
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
            let not_leader = matches!(resp, Ok(ClientResponse::NotLeader { .. }));
            if resp.is_ok() {
                self.answered(&addr);
            }
            let asked = addr.clone();
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
            let followed = not_leader && self.leader().is_some_and(|l| l != asked);
            tokio::time::sleep(Self::pause(&mut backoff, &mut polls, not_leader, followed)).await;
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
    pub(super) fn command_step(
        &self,
        addr: NodeAddr,
        resp: Result<ClientResponse, RequestError>,
        maybe_appended: bool,
    ) -> Attempt {
        match resp {
            Ok(ClientResponse::Applied { answer, .. }) => {
                self.set_leader(Some(addr));
                outcome_step(&answer, maybe_appended)
            }
            Ok(ClientResponse::NotLeader { leader_addr, .. }) => {
                self.redirect(&addr, leader_addr);
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
                self.forget_leader(&addr);
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
                self.unreachable(&addr);
                Attempt::Retry {
                    maybe_appended: false,
                    why,
                }
            }
            Err(RequestError::Lost(why)) => {
                self.forget_leader(&addr);
                Attempt::Retry {
                    maybe_appended: true,
                    why,
                }
            }
        }
    }
}
