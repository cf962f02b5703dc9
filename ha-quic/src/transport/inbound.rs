//! Accepting peers: who is talking is checked (certificate, hello, cluster)
//! before anything they say reaches the node; frames are read within their
//! caps, budgets and deadlines; a stream superseded by a newer one of the
//! same peer and class delivers nothing more.

use super::*;

pub(super) fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

pub(super) fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let any = conn.handshake_data()?;
    let hd = any
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    hd.protocol
}

/// Closes `conn` for a limit it hit: counts in `counter`, logs, and closes
/// with `code`.
pub(super) fn close_for(
    conn: &quinn::Connection,
    shared: &Shared,
    counter: &AtomicU64,
    code: u32,
    who: &str,
    why: &str,
) {
    let n = bump(counter);
    if sampled(n) {
        tracing::warn!(
            node = %shared.id,
            peer = who,
            remote = %conn.remote_address(),
            "closing a connection: {why} ({n} such so far)"
        );
    }
    conn.close(code.into(), why.as_bytes());
}

/// Handles one connection from the handshake on, holding `slot` (of
/// `max_connections`) until it ends.
pub(super) async fn handle_incoming(
    (incoming, handshake): (quinn::Incoming, OwnedSemaphorePermit),
    arrival: u64,
    slot: OwnedSemaphorePermit,
    transport: super::QuicTransport,
    inbound: Inbox,
    node: Option<NodeHandle>,
    files: Option<Arc<dyn SnapshotFiles>>,
) {
    let _slot = slot;
    let shared = transport.shared.clone();
    let remote = incoming.remote_address();
    let conn = incoming.await;
    // The handshake is over, either way: its slot is free.
    drop(handshake);
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            // Failed handshakes (no certificate, a foreign CA) end here.
            let n = bump(&shared.stats.failed_handshakes);
            if sampled(n) {
                tracing::info!(node = %shared.id, %remote, "refused a connection: {e} ({n} failed handshakes so far)");
            }
            return;
        }
    };
    let Some(cert) = peer_certificate(&conn) else {
        return protocol_violation(&conn, &shared, "unidentified", "no certificate");
    };
    match alpn(&conn).as_deref() {
        Some(p) if p == ALPN_PEER => {
            // Which member the certificate names decides whose slots it
            // takes; the hello must then claim that same member. A node
            // of the cluster not known yet (this node waits to be added,
            // or has not taken on the configuration that names it) is
            // learned at the address it dials from.
            let known = shared
                .peers
                .ids()
                .into_iter()
                .find(|id| tls::cert_names(&cert, &node_server_name(*id)));
            let peer = match known {
                Some(p) => p,
                None => match transport.learn_peer(&cert, conn.remote_address()) {
                    Ok(p) => p,
                    Err(why) => return protocol_violation(&conn, &shared, "unidentified", why),
                },
            };
            let who = node_server_name(peer);
            let Some(entry) = shared.peers.get(peer) else {
                return protocol_violation(&conn, &shared, &who, "a node removed meanwhile");
            };
            // A member dialing from another IP than the one it is known at
            // may have moved (a recreated container): if the configuration
            // names it by a DNS name, that name is looked up again. The
            // address it dials from is never taken as its own.
            if entry.addr.ip().to_canonical() != conn.remote_address().ip().to_canonical() {
                shared.recheck_name(peer);
            }
            let gone = entry.gone.subscribe();
            let Ok(_peer_slot) = entry.connections.try_acquire_owned() else {
                let why = format!(
                    "too many connections from this peer (max_connections_per_peer {})",
                    shared.limits.max_connections_per_peer
                );
                return close_for(
                    &conn,
                    &shared,
                    &shared.stats.refused_connections,
                    codes::BUSY,
                    &who,
                    &why,
                );
            };
            conn.set_max_concurrent_bi_streams(shared.options.max_peer_streams.into());
            peer_connection(conn, arrival, peer, shared, inbound, files, gone).await;
        }
        Some(p) if p == ALPN_CLIENT => {
            let Some(node) = node else {
                return conn.close(codes::PROTOCOL.into(), b"no service for clients here");
            };
            let Ok(_client_slot) = shared.client_connections.clone().try_acquire_owned() else {
                let why = format!(
                    "too many client connections (max_client_connections {})",
                    shared.limits.max_client_connections
                );
                return close_for(
                    &conn,
                    &shared,
                    &shared.stats.refused_connections,
                    codes::BUSY,
                    "client",
                    &why,
                );
            };
            client_connection(conn, shared, node).await;
        }
        _ => protocol_violation(&conn, &shared, "unidentified", "unknown protocol"),
    }
}

pub(super) fn protocol_violation(conn: &quinn::Connection, shared: &Shared, who: &str, why: &str) {
    let n = bump(&shared.stats.protocol_errors);
    if sampled(n) {
        tracing::warn!(
            node = %shared.id,
            peer = who,
            remote = %conn.remote_address(),
            "closing a connection for breaking the protocol: {why} ({n} so far)"
        );
    }
    conn.close(codes::PROTOCOL.into(), why.as_bytes());
}

/// Closes `conn` for a frame that failed to arrive (`what` names it); a
/// stream or connection that went away is no one's fault and only logged
/// at debug level.
pub(super) fn frame_failed(
    conn: &quinn::Connection,
    shared: &Shared,
    who: &str,
    what: &str,
    e: FrameError,
) {
    match e {
        FrameError::Stream(e) => {
            tracing::debug!(node = %shared.id, peer = who, "{what}: the stream went away: {e}");
        }
        FrameError::TimedOut => close_for(
            conn,
            shared,
            &shared.stats.frame_timeouts,
            codes::TIMEOUT,
            who,
            &format!("{what} did not arrive in time"),
        ),
        e @ FrameError::OverBudget { .. } => close_for(
            conn,
            shared,
            &shared.stats.budget_exhausted,
            codes::BUSY,
            who,
            &format!("{what}: {e}"),
        ),
        e => protocol_violation(conn, shared, who, &format!("{what}: {e}")),
    }
}

/// Accepts the streams of one peer connection: unidirectional ones for
/// messages, bidirectional ones for snapshots.
pub(super) async fn peer_connection(
    conn: quinn::Connection,
    arrival: u64,
    peer: NodeId,
    shared: Arc<Shared>,
    inbound: Inbox,
    files: Option<Arc<dyn SnapshotFiles>>,
    mut gone: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (recv, send) = tokio::select! {
            // Removed from the peer table (peers.rs invariant 2): nothing
            // more of it is delivered.
            _ = gone.wait_for(|g| *g) => {
                tracing::info!(node = %shared.id, peer = %peer, "closing a removed peer's connection");
                return conn.close(codes::SHUTDOWN.into(), b"removed from the configuration");
            }
            s = conn.accept_uni() => match s {
                Ok(recv) => (recv, None),
                Err(_) => return,
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => (recv, Some(send)),
                Err(_) => return,
            },
        };
        tokio::spawn(peer_stream(
            recv,
            send,
            conn.clone(),
            arrival,
            peer,
            shared.clone(),
            inbound.clone(),
            files.clone(),
        ));
    }
}

/// Counts and logs a stream that a newer one of the same peer and class
/// superseded (invariant 7); the stream then ends.
/// `what` says what was not delivered.
pub(super) fn superseded(shared: &Shared, who: &str, what: &str) {
    let n = bump(&shared.stats.dropped_superseded);
    if sampled(n) {
        tracing::warn!(node = %shared.id, peer = %who, "{what}: the peer has since opened a newer stream of its class, and this one ends ({n} so far)");
    }
}

// A task's entry point: its arguments are the state it owns.
#[allow(clippy::too_many_arguments)]
pub(super) async fn peer_stream(
    mut recv: quinn::RecvStream,
    send: Option<quinn::SendStream>,
    conn: quinn::Connection,
    arrival: u64,
    peer: NodeId,
    shared: Arc<Shared>,
    inbound: Inbox,
    files: Option<Arc<dyn SnapshotFiles>>,
) {
    let opened = Instant::now();
    let Some(budget) = shared.peers.get(peer).map(|p| p.budget) else {
        let who = node_server_name(peer);
        return protocol_violation(&conn, &shared, &who, "a stream from an unknown node id");
    };
    let first = |max_bytes| ReadLimits {
        max_bytes,
        budget: Some(&budget),
        share: None,
        deadline: opened
            .checked_add(shared.limits.peer_frame_timeout)
            .map_or(FrameDeadline::Never, FrameDeadline::At),
    };
    let who = node_server_name(peer);
    let hello: PeerHello =
        match frame::read_frame_with(&mut recv, &first(MAX_CONTROL_FRAME_BYTES)).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => return frame_failed(&conn, &shared, &who, "the stream's hello", e),
        };
    let who = node_server_name(hello.from);
    if let Err(why) = check_hello(&hello, peer, &shared) {
        return protocol_violation(&conn, &shared, &who, why);
    }
    let max_bytes = match (hello.class, send) {
        (StreamClass::Control, None) => MAX_CONTROL_FRAME_BYTES,
        (StreamClass::Replication, None) => shared.limits.max_replication_frame_bytes,
        (StreamClass::Snapshot, Some(send)) => {
            return receive_snapshot(
                recv, send, conn, hello, &who, shared, inbound, files, opened,
            )
            .await;
        }
        (class, _) => {
            return protocol_violation(
                &conn,
                &shared,
                &who,
                &format!("{class:?} traffic on the wrong kind of stream"),
            );
        }
    };
    let limits = ReadLimits {
        max_bytes,
        budget: Some(&budget),
        share: None,
        deadline: FrameDeadline::AfterFirstByte(shared.limits.peer_frame_timeout),
    };
    // Invariant 7: this stream becomes the peer's newest of its class,
    // unless a newer one already is.
    let key = (peer, hello.class == StreamClass::Replication);
    let number = (arrival, recv.id().index());
    {
        let mut newest = shared
            .newest_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if newest.get(&key).is_some_and(|n| *n > number) {
            drop(newest);
            return superseded(&shared, &who, "refused a stream at its hello");
        }
        newest.insert(key, number);
    }
    deliver(
        recv,
        &limits,
        (key, number),
        hello.from,
        &conn,
        &shared,
        &inbound,
        &who,
    )
    .await
}

/// Why a stream's hello is refused, if it is: another cluster, another
/// schema, another recipient, an unknown sender, or a sender other than the
/// one its certificate names.
fn check_hello(hello: &PeerHello, peer: NodeId, shared: &Shared) -> Result<(), &'static str> {
    if hello.cluster_id != shared.cluster_id {
        return Err("hello names another cluster");
    }
    if hello.schema != shared.schema {
        return Err(
            "the peer runs another version of the replicated type (schema fingerprint differs)",
        );
    }
    if hello.to != shared.id {
        return Err("hello is meant for another node");
    }
    if shared.peers.get(hello.from).is_none() || hello.from == shared.id {
        return Err("hello claims an unknown node id");
    }
    if hello.from != peer {
        return Err("the certificate does not name the node id the hello claims");
    }
    Ok(())
}

/// Hands a message stream's messages to the node while the stream is its
/// peer's newest of its class (invariant 7).
#[allow(clippy::too_many_arguments)]
async fn deliver(
    mut recv: quinn::RecvStream,
    limits: &ReadLimits<'_>,
    (key, number): ((NodeId, bool), (u64, u64)),
    from: NodeId,
    conn: &quinn::Connection,
    shared: &Shared,
    inbound: &Inbox,
    who: &str,
) {
    loop {
        match frame::read_frame_with::<Message>(&mut recv, limits).await {
            Ok(Some(m)) => {
                if m.from != from || m.to != shared.id {
                    return protocol_violation(
                        conn,
                        shared,
                        who,
                        "message does not match its stream's hello",
                    );
                }
                if matches!(m.body, Body::InstallSnapshot { .. }) {
                    // Only a snapshot stream may say this, after its file
                    // arrived and verified.
                    return protocol_violation(
                        conn,
                        shared,
                        who,
                        "InstallSnapshot outside a snapshot stream",
                    );
                }
                // The check and the enqueue under one lock: a newer stream
                // registers under it too (invariant 7).
                let newest = shared
                    .newest_streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if newest.get(&key) != Some(&number) {
                    drop(newest);
                    return superseded(shared, who, "dropped a message, undelivered");
                }
                shared.stats.received.fetch_add(1, Ordering::Relaxed);
                // A full inbox drops (the core is behind; Raft resends).
                let sent = inbound.try_deliver(m);
                drop(newest);
                if sent.is_err() {
                    let n = bump(&shared.stats.dropped_inbound);
                    if sampled(n) {
                        tracing::warn!(node = %shared.id, peer = %who, "dropped a message: the node's inbox is full or closed ({n} so far; Raft resends)");
                    }
                }
            }
            Ok(None) => return,
            Err(e) => return frame_failed(conn, shared, who, "a message", e),
        }
    }
}
