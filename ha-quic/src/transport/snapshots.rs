//! Receiving a snapshot: its file is written, verified and made durable,
//! its `InstallSnapshot` queued to the node, and only then is the sender
//! told it was accepted.

use super::*;

/// A piece of a snapshot file for the thread that writes it.
pub(super) enum Piece {
    /// The next bytes.
    Data(bytes::Bytes),
    /// Every byte arrived: verify and publish. A queue closed without this
    /// aborts the file (and removes it).
    End,
}

/// Writes one incoming snapshot on a blocking thread (file writes and
/// syncs must not stall a tokio worker).
pub(super) fn store_snapshot(
    files: Arc<dyn SnapshotFiles>,
    index: LogIndex,
    term: Term,
    mut pieces: mpsc::Receiver<Piece>,
) -> Result<(), String> {
    let mut writer = files.begin(index, term).map_err(|e| e.to_string())?;
    loop {
        match pieces.blocking_recv() {
            Some(Piece::Data(b)) => writer.write(&b).map_err(|e| e.to_string())?,
            Some(Piece::End) => return writer.finish().map_err(|e| e.to_string()),
            None => return Err("the transfer was abandoned".into()),
        }
    }
}

/// Receives one snapshot file and answers with a [`SnapshotVerdict`].
#[allow(clippy::too_many_arguments)]
pub(super) async fn receive_snapshot(
    mut recv: quinn::RecvStream,
    mut send: quinn::SendStream,
    conn: quinn::Connection,
    hello: PeerHello,
    who: &str,
    shared: Arc<Shared>,
    inbound: Inbox,
    files: Option<Arc<dyn SnapshotFiles>>,
    opened: Instant,
) {
    let r = take_snapshot(
        &mut recv, &conn, &hello, who, &shared, &inbound, files, opened,
    )
    .await;
    let verdict = match r {
        Ok(()) => {
            bump(&shared.stats.snapshots_received);
            SnapshotVerdict::Accepted
        }
        Err(mut why) => {
            let n = bump(&shared.stats.snapshots_refused);
            if sampled(n) {
                tracing::warn!(node = %shared.id, peer = who, "refused a snapshot: {why} ({n} refused so far)");
            }
            let _ = recv.stop(codes::REFUSED.into());
            if why.len() > MAX_VERDICT_REASON_BYTES {
                let mut cut = MAX_VERDICT_REASON_BYTES;
                while !why.is_char_boundary(cut) {
                    cut -= 1;
                }
                why.truncate(cut);
            }
            SnapshotVerdict::Refused(why)
        }
    };
    let mut buf = Vec::new();
    if frame::encode_within(&verdict, &mut buf, MAX_CONTROL_FRAME_BYTES).is_ok() {
        let write = tokio::time::timeout(shared.limits.peer_frame_timeout, send.write_all(&buf));
        if matches!(write.await, Ok(Ok(()))) {
            let _ = send.finish();
        }
    }
}

/// The receiving side of a snapshot transfer: checks, stores, hands the
/// node its `InstallSnapshot`; `Err` says why not.
#[allow(clippy::too_many_arguments)]
pub(super) async fn take_snapshot(
    recv: &mut quinn::RecvStream,
    conn: &quinn::Connection,
    hello: &PeerHello,
    who: &str,
    shared: &Shared,
    inbound: &Inbox,
    files: Option<Arc<dyn SnapshotFiles>>,
    opened: Instant,
) -> Result<(), String> {
    let Some(files) = files else {
        return Err("this endpoint takes no snapshots".into());
    };
    let (header, _permits) = admit_snapshot(recv, conn, hello, who, shared, opened).await?;
    let (tx, rx) = mpsc::channel(SNAPSHOT_WRITE_QUEUE);
    let (index, term) = (header.index, header.term);
    let writer = tokio::task::spawn_blocking(move || store_snapshot(files, index, term, rx));
    let received = stream_snapshot(recv, conn, who, shared, &header, opened, &tx).await;
    // Closing the queue without `End` makes the writer abandon the file and
    // remove it; waiting for it means nothing is left behind.
    drop(tx);
    let stored = writer
        .await
        .unwrap_or_else(|e| Err(format!("the snapshot writer failed: {e}")));
    received?;
    stored.map_err(|e| {
        tracing::error!(node = %shared.id, peer = who, "cannot store a snapshot: {e}");
        format!("cannot store the snapshot: {e}")
    })?;
    inbound
        .try_deliver(Message {
            from: hello.from,
            to: shared.id,
            term: header.leader_term,
            body: Body::InstallSnapshot {
                index: header.index,
                term: header.term,
                // The node reads it from the file's header before stepping.
                membership: ha_core::raft::Membership::default(),
            },
        })
        .map_err(|_| {
            bump(&shared.stats.dropped_inbound);
            "the node's inbox is full or closed".to_string()
        })
}

/// The two slots a transfer holds while it runs: this peer's one, and one
/// of the endpoint's `max_snapshot_receives`. Dropping it frees both.
pub(super) struct SnapshotPermits {
    _peer: OwnedSemaphorePermit,
    _endpoint: OwnedSemaphorePermit,
}

/// Reads a transfer's header and decides whether to take it: a known
/// sender, a length within `max_snapshot_bytes`, and a free slot for this
/// peer and for the endpoint.
async fn admit_snapshot(
    recv: &mut quinn::RecvStream,
    conn: &quinn::Connection,
    hello: &PeerHello,
    who: &str,
    shared: &Shared,
    opened: Instant,
) -> Result<(SnapshotHeader, SnapshotPermits), String> {
    let Some(peer) = shared.peers.get(hello.from) else {
        return Err("a snapshot from an unknown node id".into());
    };
    let budget = &peer.budget;
    let limits = ReadLimits {
        max_bytes: MAX_CONTROL_FRAME_BYTES,
        budget: Some(budget),
        share: None,
        deadline: opened
            .checked_add(shared.limits.peer_frame_timeout)
            .map_or(FrameDeadline::Never, FrameDeadline::At),
    };
    let header: SnapshotHeader = match frame::read_frame_with(recv, &limits).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err("the stream ended before the snapshot header".into()),
        Err(e) => {
            let why = format!("bad snapshot header: {e}");
            frame_failed(conn, shared, who, "the snapshot header", e);
            return Err(why);
        }
    };
    let max = shared.limits.max_snapshot_bytes;
    if header.len > max {
        return Err(format!(
            "a snapshot of {} bytes is too large: the limit is {max} (max_snapshot_bytes)",
            header.len
        ));
    }
    let Ok(peer) = peer.snapshot_slot.clone().try_acquire_owned() else {
        return Err("busy: this peer's previous snapshot transfer is still in progress".into());
    };
    let Ok(endpoint) = shared.snapshot_receives.clone().try_acquire_owned() else {
        return Err(format!(
            "busy: {} snapshot transfers in progress (max_snapshot_receives)",
            shared.limits.max_snapshot_receives
        ));
    };
    let permits = SnapshotPermits {
        _peer: peer,
        _endpoint: endpoint,
    };
    Ok((header, permits))
}

/// Moves the announced bytes from the stream to the writer's queue, sends
/// `End` once exactly `header.len` arrived, and cuts off a sender that
/// stalls, trickles, or sends more than it announced. `Ok` also when the
/// writer gave up: its own error says why.
async fn stream_snapshot(
    recv: &mut quinn::RecvStream,
    conn: &quinn::Connection,
    who: &str,
    shared: &Shared,
    header: &SnapshotHeader,
    opened: Instant,
    tx: &mpsc::Sender<Piece>,
) -> Result<(), String> {
    let idle = shared.limits.snapshot_idle_timeout;
    let overall = opened.checked_add(shared.limits.snapshot_deadline(header.len));
    let mut got = 0u64;
    loop {
        // The deadline moves on only as bytes arrive: past the floor, the
        // transfer must keep the slowest allowed rate on average, so a
        // sender trickling a byte now and then is cut off, whatever length
        // it announced.
        let idle_until = Instant::now() + idle;
        let earned = opened.checked_add(shared.limits.snapshot_deadline(got));
        let until = [overall, earned]
            .into_iter()
            .flatten()
            .fold(idle_until, Instant::min);
        let chunk =
            match tokio::time::timeout_at(until, recv.read_chunk(SNAPSHOT_CHUNK_BYTES, true)).await
            {
                Err(_) => {
                    bump(&shared.stats.snapshot_timeouts);
                    return Err(format!(
                        "the transfer stalled after {got} of {} bytes (no bytes for {idle:?}, \
                     slower than {} bytes/s on average past the first {:?}, or past its \
                     deadline of {:?})",
                        header.len,
                        shared.limits.snapshot_min_bytes_per_sec,
                        shared.limits.snapshot_timeout_floor,
                        shared.limits.snapshot_deadline(header.len)
                    ));
                }
                Ok(Err(e)) => return Err(format!("the transfer broke: {e}")),
                Ok(Ok(None)) if got == header.len => {
                    // The writer may have failed meanwhile; its error says so.
                    let _ = tx.send(Piece::End).await;
                    return Ok(());
                }
                Ok(Ok(None)) => {
                    return Err(format!(
                        "the transfer ended after {got} of {} bytes",
                        header.len
                    ));
                }
                Ok(Ok(Some(c))) => c.bytes,
            };
        got += chunk.len() as u64;
        if got > header.len {
            protocol_violation(conn, shared, who, "snapshot longer than announced");
            return Err("the snapshot is longer than announced".into());
        }
        if tx.send(Piece::Data(chunk)).await.is_err() {
            // The writer gave up; its error says why.
            return Ok(());
        }
    }
}
