//! Dialing peers: one sender task per (peer, stream class) that drains its
//! bounded queue onto a stream, reconnecting with backoff, and snapshot
//! sends on their own connection.

use super::*;

/// Encodes `m` into `buf` within `class`'s frame cap; a message that cannot
/// be encoded is counted and logged, and dropped (invariant 5).
pub(super) fn encode_message(
    shared: &Shared,
    class: StreamClass,
    m: &Message,
    buf: &mut Vec<u8>,
) -> bool {
    let max = match class {
        StreamClass::Control => MAX_CONTROL_FRAME_BYTES,
        StreamClass::Replication | StreamClass::Snapshot => {
            shared.limits.max_replication_frame_bytes
        }
    };
    match frame::encode_within(m, buf, max) {
        Ok(()) => true,
        Err(e) => {
            let n = bump(&shared.stats.encode_failures);
            tracing::error!(
                node = %shared.id,
                peer = %m.to,
                term = %m.term,
                ?class,
                "dropped a message that cannot be sent ({n} so far): {e}"
            );
            false
        }
    }
}

pub(super) async fn peer_sender(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    class: StreamClass,
    mut rx: mpsc::Receiver<Message>,
    connected: Option<(Arc<AtomicBool>, ConnSlot)>,
) {
    let min_backoff = Duration::from_millis(20);
    let mut backoff = min_backoff;
    let mut rng = SplitMix64::new(shared.id.0 << 32 ^ peer.0 ^ class as u64);
    let set_connected = |conn: Option<&quinn::Connection>| {
        if let Some((flag, slot)) = &connected {
            flag.store(conn.is_some(), Ordering::Relaxed);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = conn.cloned();
        }
    };
    let mut failures_logged = false;
    let mut last_refusal: Option<String> = None;
    loop {
        // Connect lazily: only once there is something to send.
        let Some(first) = rx.recv().await else { return };
        let conn = match connect(&endpoint, peer, addr).await {
            Ok(c) => c,
            Err(e) => {
                if !failures_logged {
                    tracing::info!(node = %shared.id, %peer, %addr, ?class, "cannot reach peer: {e}");
                    failures_logged = true;
                }
                // A member named by DNS may have moved: look its name up again.
                shared.recheck_name(peer);
                back_off(&shared, peer, class, &mut backoff, &mut rng, &mut rx).await;
                continue;
            }
        };
        let mut stream = match conn.open_uni().await {
            Ok(s) => s,
            Err(_) => {
                note_refusal(&shared, peer, class, &conn, &mut last_refusal);
                back_off(&shared, peer, class, &mut backoff, &mut rng, &mut rx).await;
                continue;
            }
        };
        let _ = stream.set_priority(if class == StreamClass::Control { 10 } else { 0 });
        let hello = PeerHello {
            cluster_id: shared.cluster_id.clone(),
            from: shared.id,
            to: peer,
            class,
            schema: shared.schema,
        };
        let mut buf = Vec::new();
        if let Err(e) = frame::encode_within(&hello, &mut buf, MAX_CONTROL_FRAME_BYTES) {
            let n = bump(&shared.stats.encode_failures);
            tracing::error!(node = %shared.id, %peer, "cannot encode the stream hello ({n} encode failures so far): {e}");
            tokio::time::sleep(MAX_BACKOFF).await;
            continue;
        }
        let n = u64::from(encode_message(&shared, class, &first, &mut buf));
        if stream.write_all(&buf).await.is_err() {
            note_refusal(&shared, peer, class, &conn, &mut last_refusal);
            back_off(&shared, peer, class, &mut backoff, &mut rng, &mut rx).await;
            continue;
        }
        if failures_logged {
            tracing::info!(node = %shared.id, %peer, ?class, "peer reachable again");
            failures_logged = false;
        }
        let up_since = Instant::now();
        set_connected(Some(&conn));
        shared.stats.sent.fetch_add(n, Ordering::Relaxed);
        let queue_closed = stream_messages(&shared, class, &conn, &mut stream, &mut rx, buf).await;
        if queue_closed {
            return;
        }
        set_connected(None);
        note_refusal(&shared, peer, class, &conn, &mut last_refusal);
        // A connection that lasted is a recovered peer: start over from the
        // shortest wait. One that broke at once (a peer that accepts and
        // then closes) is a failure like any other, so a broken peer costs
        // a handshake per backoff, not one per message.
        if up_since.elapsed() >= HEALTHY_CONNECTION {
            backoff = min_backoff;
        } else {
            back_off(&shared, peer, class, &mut backoff, &mut rng, &mut rx).await;
        }
    }
}

/// Logs why `peer` closed `conn`, if it closed it on purpose (it refused
/// this node, say as removed from the configuration), once per reason in
/// a row: an operator sees why a node is shut out, and a peer that keeps
/// refusing does not flood the log.
fn note_refusal(
    shared: &Shared,
    peer: NodeId,
    class: StreamClass,
    conn: &quinn::Connection,
    last: &mut Option<String>,
) {
    let Some(quinn::ConnectionError::ApplicationClosed(c)) = conn.close_reason() else {
        return;
    };
    // From the network: shown lossily, without control characters, and
    // at most 200 characters of it.
    let why: String = String::from_utf8_lossy(&c.reason)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if last.as_deref() != Some(why.as_str()) {
        tracing::warn!(node = %shared.id, %peer, ?class, "peer closed the connection: {why}");
        *last = Some(why);
    }
}

/// Streams the queue's messages on `stream`, writing whatever queued up
/// together in one write, until the connection or a write breaks (`false`)
/// or the queue closes (`true`: the stream is finished, the sender ends).
async fn stream_messages(
    shared: &Shared,
    class: StreamClass,
    conn: &quinn::Connection,
    stream: &mut quinn::SendStream,
    rx: &mut mpsc::Receiver<Message>,
    mut buf: Vec<u8>,
) -> bool {
    loop {
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = conn.closed() => return false,
        };
        let Some(m) = next else {
            let _ = stream.finish();
            return true;
        };
        buf.clear();
        let mut n = u64::from(encode_message(shared, class, &m, &mut buf));
        while buf.len() < 1 << 20 {
            match rx.try_recv() {
                Ok(m) => n += u64::from(encode_message(shared, class, &m, &mut buf)),
                Err(_) => break,
            }
        }
        if stream.write_all(&buf).await.is_err() {
            return false;
        }
        shared.stats.sent.fetch_add(n, Ordering::Relaxed);
    }
}

/// The longest wait between attempts to reach a peer.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long a connection must last for its end not to count as a failure.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(1);

/// Waits `backoff` plus jitter, doubles it (up to a second), and drops what
/// was queued meanwhile (stale by then; Raft resends what matters), counted.
async fn back_off(
    shared: &Shared,
    peer: NodeId,
    class: StreamClass,
    backoff: &mut Duration,
    rng: &mut SplitMix64,
    rx: &mut mpsc::Receiver<Message>,
) {
    let jitter = rng.range(0, backoff.as_millis() as u64 / 2 + 1);
    tokio::time::sleep(*backoff + Duration::from_millis(jitter)).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    let mut stale = 0u64;
    while rx.try_recv().is_ok() {
        stale += 1;
    }
    if stale > 0 {
        let n = shared
            .stats
            .dropped_full
            .fetch_add(stale, Ordering::Relaxed)
            + stale;
        tracing::debug!(node = %shared.id, %peer, ?class, "dropped {stale} messages queued while the peer was unreachable ({n} dropped so far)");
    }
}

/// Sends one snapshot file on a connection of its own, in chunks, and waits
/// for the receiver's verdict; a reader thread and the writer share a queue
/// of two chunks, so memory stays bounded whatever the file's size.
pub(super) async fn stream_snapshot(
    endpoint: &quinn::Endpoint,
    shared: &Shared,
    to: NodeId,
    addr: SocketAddr,
    mut snapshot: ha_core::node::OutgoingSnapshot,
    leader_term: Term,
) -> Result<(), String> {
    let conn = connect(endpoint, to, addr).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let _ = send.set_priority(-1);
    let mut buf = Vec::new();
    let hello = PeerHello {
        cluster_id: shared.cluster_id.clone(),
        from: shared.id,
        to,
        class: StreamClass::Snapshot,
        schema: shared.schema,
    };
    let header = SnapshotHeader {
        index: snapshot.index,
        term: snapshot.term,
        leader_term,
        len: snapshot.len,
    };
    frame::encode_within(&hello, &mut buf, MAX_CONTROL_FRAME_BYTES).map_err(|e| e.to_string())?;
    frame::encode_within(&header, &mut buf, MAX_CONTROL_FRAME_BYTES).map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(2);
    std::thread::spawn(move || {
        loop {
            let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            match std::io::Read::read(&mut snapshot.data, &mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    // Writes fail when the receiver refuses and stops the stream; its
    // verdict then says why, so it is read either way.
    let written: Result<(), String> = async {
        send.write_all(&buf).await.map_err(|e| e.to_string())?;
        let mut sent = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.map_err(|e| format!("cannot read the snapshot: {e}"))?;
            sent += chunk.len() as u64;
            send.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        if sent != header.len {
            return Err(format!(
                "read {sent} bytes of a {}-byte snapshot",
                header.len
            ));
        }
        send.finish().map_err(|e| e.to_string())
    }
    .await;
    if written.is_err() {
        // Tell the receiver the file is incomplete (a no-op if it stopped).
        let _ = send.reset(codes::REFUSED.into());
    }
    // The receiver syncs the file before answering; allow it the time a
    // transfer of this size may take.
    let deadline = Instant::now().checked_add(shared.limits.snapshot_deadline(header.len));
    let limits = ReadLimits {
        max_bytes: MAX_CONTROL_FRAME_BYTES,
        budget: None,
        share: None,
        deadline: deadline.map_or(FrameDeadline::Never, FrameDeadline::At),
    };
    let verdict = frame::read_frame_with::<SnapshotVerdict>(&mut recv, &limits).await;
    match (verdict, written) {
        (Ok(Some(SnapshotVerdict::Accepted)), Ok(())) => Ok(()),
        (Ok(Some(SnapshotVerdict::Refused(why))), _) => {
            Err(format!("node {to} refused the snapshot: {why}"))
        }
        (_, Err(e)) => Err(e),
        (Ok(None), Ok(())) => Err(format!(
            "node {to} closed the snapshot stream without a verdict"
        )),
        (Err(e), Ok(())) => Err(format!("no verdict from node {to}: {e}")),
    }
}

pub(super) async fn connect(
    endpoint: &quinn::Endpoint,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect(addr, &node_server_name(peer))
        .map_err(|e| e.to_string())?;
    connecting.await.map_err(|e| e.to_string())
}
