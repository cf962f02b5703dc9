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
