//! Operator commands through the typed client: the panic policy and the
//! resume of a halted service.
//!
//! Invariant: each call carries one nonce for all its retries, so a retry
//! is answered by the cluster and never applied twice.

use super::*;

impl<T: Replicated> Client<T> {
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

    /// Hands leadership to node `to`, or, with `None`, to the most
    /// up-to-date voter (an operator's command); returns the new leader
    /// once it leads. Safe to retry: the call first asks who leads, and a
    /// retried request finds the work done rather than moving leadership
    /// again. Fails with `NotApplied` when the node named is not another
    /// voter, and with `Unknown` when the call timed out (leadership may
    /// or may not have moved).
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<u64, Error> {
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let from = self.current_leader(deadline).await?;
        let moved = self
            .retry(
                deadline,
                false,
                false,
                || ClientRequest::TransferLeader {
                    from: Some(from),
                    to,
                },
                |resp| match resp {
                    ClientResponse::LeaderTransferred { leader } => Reply::Done(leader),
                    other => Reply::Retry(format!("unexpected response {other:?}")),
                },
            )
            .await;
        // The node answering was the old leader.
        self.set_leader(None);
        match moved {
            Ok(leader) => Ok(leader),
            Err(RetryEnd::Refused(message)) => Err(Error::NotApplied(message)),
            Err(RetryEnd::TimedOut(why)) => Err(Error::Unknown(format!(
                "timed out handing leadership over; last error: {why}"
            ))),
        }
    }

    /// The id of the leader of the highest term any node reports: every
    /// node is asked at once (a leader cut off from the rest may still say
    /// it leads, in an older term), again until one says so or the
    /// deadline passes.
    pub(super) async fn current_leader(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<u64, Error> {
        let mut last_why = String::from("no node answered");
        let mut backoff = Duration::from_millis(10);
        while tokio::time::Instant::now() < deadline {
            let mut asks = tokio::task::JoinSet::new();
            for addr in self.known_addrs() {
                let (transport, wait) = (self.inner.transport.clone(), self.opts.attempt_timeout);
                asks.spawn(async move {
                    tokio::time::timeout(wait, transport.request(addr, ClientRequest::Status)).await
                });
            }
            let mut best: Option<(crate::types::Term, u64)> = None;
            while let Some(answer) = asks.join_next().await {
                match answer {
                    Ok(Ok(Ok(ClientResponse::Status(v)))) => {
                        if v.node.role == crate::raft::RoleKind::Leader
                            && best.is_none_or(|(t, _)| v.node.term > t)
                        {
                            best = Some((v.node.term, v.node.id.0));
                        }
                    }
                    Ok(Ok(Ok(other))) => last_why = format!("unexpected response {other:?}"),
                    Ok(Ok(Err(RequestError::NotSent(w) | RequestError::Lost(w)))) => last_why = w,
                    Ok(Err(_)) => last_why = "no status answer in time".into(),
                    Err(e) => last_why = format!("status request failed: {e}"),
                }
            }
            if let Some((_, id)) = best {
                return Ok(id);
            }
            if last_why == "no node answered" {
                last_why = "no node says it leads".into();
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(Error::NotApplied(format!(
            "no leader found; last error: {last_why}"
        )))
    }

    /// Sends an operator command until it is answered: every retry carries
    /// one nonce, so the replicas answer a retry as its first attempt.
    /// `pick` takes the answer out of the outcome (`None`: not an answer to
    /// this command).
    pub(super) async fn operator<R>(
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
                false,
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
}
