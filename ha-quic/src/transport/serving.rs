//! Client connections: one request and one response per stream, bounded in
//! number, bytes and time; the answer itself is the framework's
//! ([`ha_core::serving::answer`]).

use super::*;
use ha_core::serving::Answered;

/// Accepts the request streams of one client connection.
pub(super) async fn client_connection(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    node: NodeHandle,
) {
    // Clients only open request streams (see `tls`).
    conn.set_max_concurrent_uni_streams(0u32.into());
    let share = Arc::new(Semaphore::new(shared.limits.client_share_bytes()));
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    let (shared, node, conn) = (shared.clone(), node.clone(), conn.clone());
                    let share = share.clone();
                    tokio::spawn(client_stream(send, recv, conn, shared, node, share));
                }
                Err(_) => return,
            },
            s = conn.accept_uni() => match s {
                Ok(_) => {
                    return protocol_violation(
                        &conn,
                        &shared,
                        "client",
                        "clients may not open unidirectional streams",
                    );
                }
                Err(_) => return,
            },
        }
    }
}

/// One client request: read within its limits, answered, or refused.
pub(super) async fn client_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    conn: quinn::Connection,
    shared: Arc<Shared>,
    node: NodeHandle,
    share: Arc<Semaphore>,
) {
    let limits = ReadLimits {
        max_bytes: shared.limits.max_request_bytes,
        budget: Some(&shared.client_budget),
        share: Some(&share),
        deadline: Instant::now()
            .checked_add(shared.limits.client_request_timeout)
            .map_or(FrameDeadline::Never, FrameDeadline::At),
    };
    let (req, len) = match frame::read_frame_sized::<ClientRequest>(&mut recv, &limits).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(FrameError::TooLarge { len, max }) => {
            // Refused on its length alone: the body is never read.
            let n = bump(&shared.stats.requests_too_large);
            if sampled(n) {
                tracing::warn!(node = %shared.id, remote = %conn.remote_address(), "refused a client request of {len} bytes: the limit is {max} (max_request_bytes); {n} refused so far");
            }
            let _ = recv.stop(codes::REFUSED.into());
            let message = format!(
                "request too large: {len} bytes, and this node takes at most {max} \
                 (max_request_bytes); nothing was applied"
            );
            return respond(&mut send, &shared, ClientResponse::Refused { message }).await;
        }
        Err(FrameError::TimedOut) => {
            let n = bump(&shared.stats.frame_timeouts);
            if sampled(n) {
                tracing::warn!(node = %shared.id, remote = %conn.remote_address(), "closed a client stream whose request did not arrive within {:?} ({n} frame timeouts so far)", shared.limits.client_request_timeout);
            }
            let _ = recv.stop(codes::TIMEOUT.into());
            let _ = send.reset(codes::TIMEOUT.into());
            return;
        }
        Err(e) => return frame_failed(&conn, &shared, "client", "a client request", e),
    };
    // A request that waits for the node holds a slot and its bytes until it
    // is answered: it outlives its connection, so these bound what clients
    // can leave behind. A status answer never waits.
    let _held = if matches!(req, ClientRequest::Status) {
        None
    } else {
        match hold_request(&shared, len) {
            Ok(held) => Some(held),
            Err(limit) => {
                let n = bump(&shared.stats.requests_busy);
                if sampled(n) {
                    tracing::warn!(node = %shared.id, remote = %conn.remote_address(), "answered a client request busy: {limit}; {n} so far");
                }
                let message =
                    format!("busy: {limit} on this node; the request was not taken, retry later");
                return respond(&mut send, &shared, ClientResponse::Busy { message }).await;
            }
        }
    };
    let wait = shared.limits.client_request_timeout;
    let resp = match tokio::time::timeout(wait, answer(req, &shared, &node)).await {
        Ok(resp) => resp,
        Err(_) => {
            let n = bump(&shared.stats.answer_timeouts);
            if sampled(n) {
                tracing::warn!(node = %shared.id, "a client request got no answer from the node within {wait:?} ({n} so far)");
            }
            ClientResponse::Failed {
                not_applied: false,
                message: format!(
                    "the node gave no answer within {wait:?}; the request may still take effect"
                ),
            }
        }
    };
    respond(&mut send, &shared, resp).await;
}

/// A slot of `max_client_requests` and `len` bytes of
/// `client_pending_bytes`, or which limit was reached.
pub(super) fn hold_request(
    shared: &Shared,
    len: usize,
) -> Result<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>), String> {
    let slot = shared
        .client_requests
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            format!(
                "{} requests are waiting for answers (max_client_requests)",
                shared.limits.max_client_requests
            )
        })?;
    let bytes = match u32::try_from(len) {
        Ok(0) => None,
        Ok(n) => shared.client_pending.clone().try_acquire_many_owned(n).ok(),
        Err(_) => None,
    };
    if len > 0 && bytes.is_none() {
        return Err(format!(
            "requests waiting for answers hold {} bytes (client_pending_bytes)",
            shared.limits.client_pending_bytes
        ));
    }
    Ok((slot, bytes))
}

/// Sends `resp` and ends the stream; a response too large to encode is
/// counted, logged, and replaced by a failure saying so.
pub(super) async fn respond(send: &mut quinn::SendStream, shared: &Shared, resp: ClientResponse) {
    let mut buf = Vec::new();
    if let Err(e) = frame::encode(&resp, &mut buf) {
        let n = bump(&shared.stats.encode_failures);
        tracing::error!(node = %shared.id, "cannot send a response ({n} encode failures so far): {e}");
        let failed = ClientResponse::Failed {
            not_applied: false,
            message: format!("the node cannot send its answer: {e}"),
        };
        if frame::encode(&failed, &mut buf).is_err() {
            let _ = send.reset(codes::REFUSED.into());
            return;
        }
    }
    // A client that does not read its response loses the stream.
    let write = tokio::time::timeout(shared.limits.client_request_timeout, send.write_all(&buf));
    match write.await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        Ok(Err(_)) => {}
        Err(_) => {
            let n = bump(&shared.stats.frame_timeouts);
            if sampled(n) {
                tracing::warn!(node = %shared.id, "closed a client stream that did not take its response within {:?} ({n} frame timeouts so far)", shared.limits.client_request_timeout);
            }
            let _ = send.reset(codes::TIMEOUT.into());
        }
    }
}

/// "Not the leader", naming the leader by the `HOST:PORT` the
/// configuration gives it (the name clients dial and its certificate
/// carries), or else by the address this endpoint knows it at.
pub(super) fn not_leader(shared: &Shared, leader: Option<NodeId>) -> ClientResponse {
    let leader_addr = leader.and_then(|l| {
        let named = shared
            .named
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&l)
            .map(|n| n.text.clone());
        named.or_else(|| shared.peers.addr(l).map(|a| a.to_string()))
    });
    ClientResponse::NotLeader {
        leader: leader.map(|l| l.0),
        leader_addr,
    }
}

/// The framework's answer to `req`, finished here: a refusal is counted
/// and logged, and "not the leader" says where the leader is reached.
pub(super) async fn answer(
    req: ClientRequest,
    shared: &Shared,
    node: &NodeHandle,
) -> ClientResponse {
    let schemas = ha_core::serving::Schemas {
        stored: shared.schema,
        query: shared.query_schema,
    };
    match ha_core::serving::answer(req, node, schemas).await {
        Answered::Response(r) => r,
        Answered::NotLeader(leader) => not_leader(shared, leader),
        Answered::Refused(message) => {
            let n = bump(&shared.stats.requests_refused);
            if sampled(n) {
                tracing::warn!(node = %shared.id, "refused a client request: {message} ({n} refused so far)");
            }
            ClientResponse::Refused { message }
        }
    }
}
