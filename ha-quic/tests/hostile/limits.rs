//! Resource limits against authenticated peers and clients: raw proposals
//! on typed nodes, frame budgets, stalled and oversized frames, waiting
//! requests, stream and connection caps.

use super::*;

// ---------------------------------------------------------------------------
// Raw proposals on typed nodes.

/// The story: `ClientRequest::Propose` let any client put raw bytes in the
/// log of a typed service, a forged leader timestamp included. A node with
/// a schema refuses it now; raw (schema 0) nodes still take it.
#[test]
fn a_typed_node_refuses_raw_proposals() {
    let cluster = start_cluster(3, |q| q.schema = 0x7e57_5c4e_3a00_0001);
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let client = cluster.client(leader.id()).await;
        let before = leader.status().last_index;
        match client
            .request(&ClientRequest::Propose(Bytes::from_static(b"forged")))
            .await
            .unwrap()
        {
            ClientResponse::Refused { message } => {
                assert!(message.contains("raw proposals are refused"), "{message}")
            }
            other => panic!("a typed node took a raw proposal: {other:?}"),
        }
        assert_eq!(cluster.stat(leader.id(), |s| &s.requests_refused), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            leader.status().last_index,
            before,
            "nothing reached the log"
        );
        assert!(cluster.procs.iter().all(|p| {
            p.applied
                .0
                .lock()
                .unwrap()
                .iter()
                .all(|(_, c)| c != "forged")
        }));
    });
}

// ---------------------------------------------------------------------------
// Resource limits against authenticated peers and clients.

/// The story: a frame's claimed length was allocated at once, and a frame
/// that never finished was waited for forever, so a peer could pin 16 MiB
/// per stream with 14 bytes. Now the buffer grows with the bytes that came,
/// paid from a budget, and a frame that has started must finish within
/// `peer_frame_timeout` or its connection is closed.
#[test]
fn a_peer_claiming_16_mib_and_sending_10_bytes_holds_almost_nothing_and_is_cut_off() {
    let cluster = start_cluster(3, |q| q.limits.peer_frame_timeout = Duration::from_secs(1));
    runtime(1).block_on(async {
        cluster.leader().await;
        let n1 = NodeId(1);
        let timeouts_before = cluster.stat(n1, |s| &s.frame_timeouts);
        let id2 = load_node_identity(cluster.certs.path(), NodeId(2)).unwrap();
        let (_ep, conn) = raw_conn(cluster.addrs[&n1], "node-1", &id2, ALPN_PEER).await;
        let mut s = conn.open_uni().await.unwrap();
        let mut buf = hello(&id2, 2, 1, StreamClass::Replication);
        buf.extend_from_slice(&(16u32 << 20).to_le_bytes());
        buf.extend_from_slice(&[1; 10]);
        s.write_all(&buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = cluster.transport(n1).peer_frame_bytes_held();
        assert!(held < 1 << 20, "{held} bytes held for a 10-byte start");
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("the node closes the connection after the deadline");
        assert!(
            reason.to_string().contains("did not arrive in time"),
            "{reason}"
        );
        assert!(cluster.stat(n1, |s| &s.frame_timeouts) > timeouts_before);
        cluster.still_commits(b"after the stalled peer frame").await;
    });
}

/// The story: all peers paid their unfinished frames from one budget, so one
/// faulty peer holding it made every other peer's appends fail. Now each
/// peer has its own: node 2 holding nearly all of its budget leaves node 3
/// a whole one.
#[test]
fn one_peer_holding_its_frame_budget_does_not_take_another_peers() {
    let cluster = start_cluster(3, |q| {
        q.limits.max_replication_frame_bytes = 4 << 20;
        q.limits.peer_budget_bytes = (8 << 20) + (512 << 10);
        q.limits.peer_frame_timeout = Duration::from_secs(30);
    });
    runtime(1).block_on(async {
        cluster.leader().await;
        let n1 = NodeId(1);
        // A frame start of `sent` bytes claiming `claim`, as node `from`.
        async fn stall(
            cluster: &Cluster,
            from: u64,
            claim: u32,
            sent: usize,
        ) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream) {
            let id = load_node_identity(cluster.certs.path(), NodeId(from)).unwrap();
            let (ep, conn) = raw_conn(cluster.addrs[&NodeId(1)], "node-1", &id, ALPN_PEER).await;
            let mut s = conn.open_uni().await.unwrap();
            let mut buf = hello(&id, from, 1, StreamClass::Replication);
            buf.extend_from_slice(&claim.to_le_bytes());
            buf.extend_from_slice(&vec![1; sent]);
            s.write_all(&buf).await.unwrap();
            (ep, conn, s)
        }
        // Node 2 holds 7.5 MB of its 8.5 MiB; node 3 then 3 MB more, which a
        // shared budget could not pay.
        let _two = stall(&cluster, 2, 4 << 20, 3_750_000).await;
        let _two_more = stall(&cluster, 2, 4 << 20, 3_750_000).await;
        wait_until("node 2's frames are held", 10, || {
            cluster.transport(n1).peer_frame_bytes_held() >= 7_500_000
        })
        .await;
        let (_ep, three, _s) = stall(&cluster, 3, 4 << 20, 3_000_000).await;
        wait_until("node 3's frame is held too", 10, || {
            cluster.transport(n1).peer_frame_bytes_held() >= 10_500_000
        })
        .await;
        // Together more than one budget: each peer paid from its own. (The
        // real nodes' own streams, which share those budgets, may be cut
        // off meanwhile; that is each peer's own business.)
        assert!(three.close_reason().is_none(), "{:?}", three.close_reason());
    });
}

/// The same for a client: a request that starts and stalls is cut off after
/// `client_request_timeout`, holding almost nothing meanwhile, and a request
/// claiming more than `max_request_bytes` is refused on its length alone,
/// before its body arrives.
#[test]
fn a_client_claiming_a_large_request_and_stalling_holds_almost_nothing_and_is_cut_off() {
    let cluster = start_cluster(3, |q| {
        q.limits.client_request_timeout = Duration::from_secs(1);
    });
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let (_ep, conn) = raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
        // Claims 1 MiB (under the cap), sends 10 bytes, and stalls.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut buf = (1u32 << 20).to_le_bytes().to_vec();
        buf.extend_from_slice(&[1; 10]);
        send.write_all(&buf).await.unwrap();
        // Claims 16 MiB, sends 10 bytes, and waits for an answer.
        let (mut send2, mut recv2) = conn.open_bi().await.unwrap();
        let mut buf = (16u32 << 20).to_le_bytes().to_vec();
        buf.extend_from_slice(&[1; 10]);
        send2.write_all(&buf).await.unwrap();
        let answer: ClientResponse = tokio::time::timeout(
            Duration::from_secs(5),
            frame::read_frame(&mut recv2, 1 << 20),
        )
        .await
        .expect("refused at once")
        .unwrap()
        .unwrap();
        assert!(
            matches!(&answer, ClientResponse::Refused { message } if message.contains("too large")),
            "{answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let held = cluster.transport(id).client_frame_bytes_held();
        assert!(held < 256 << 10, "{held} bytes held for a 10-byte start");
        // After the deadline the stalled stream is closed.
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), recv.read(&mut b))
            .await
            .expect("the stalled request's stream is closed after the deadline");
        assert!(r.is_err(), "the stalled request got an answer: {r:?}");
        assert_eq!(cluster.stat(id, |s| &s.frame_timeouts), 1);
        assert_eq!(cluster.transport(id).client_frame_bytes_held(), 0);
        // The connection itself still serves.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&request_frame(&ClientRequest::Status))
            .await
            .unwrap();
        send.finish().unwrap();
        let r: Option<ClientResponse> = frame::read_frame(&mut recv, 1 << 20).await.unwrap();
        assert!(matches!(r, Some(ClientResponse::Status(_))), "{r:?}");
        cluster.still_commits(b"after the stalled client").await;
    });
}

/// Requests that are started, but never finished, hold budget: once a
/// connection asks for more than is left, it is closed (and counted), and
/// the budget comes back for everybody else.
#[test]
fn a_client_exhausting_the_frame_budget_is_closed_and_others_are_served() {
    let cluster = start_cluster(3, |q| {
        q.limits.client_budget_bytes = 2 << 20;
        q.limits.client_request_timeout = Duration::from_secs(30);
    });
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let (_ep, conn) = raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let mut buf = (1_400_000u32).to_le_bytes().to_vec();
            buf.extend_from_slice(&vec![1; 900_000]);
            let _ = send.write_all(&buf).await;
            streams.push((send, recv));
        }
        let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the node closes the connection that exhausted the budget");
        assert!(reason.to_string().contains("no memory budget"), "{reason}");
        assert_eq!(cluster.stat(id, |s| &s.budget_exhausted), 1);
        wait_until("the budget is returned", 5, || {
            cluster.transport(id).client_frame_bytes_held() == 0
        })
        .await;
        let client = cluster.client(id).await;
        let r = client.request(&propose(1000)).await.unwrap();
        assert!(matches!(r, ClientResponse::Applied { .. }), "{r:?}");
    });
}

/// The story: with 256 requests open on a connection, one connection could
/// hold the whole frame budget, and the next honest frame was refused, its
/// connection closed. Now a connection pays from its own share too (half
/// the budget, at least one largest request): the one that
/// runs its share out is closed, and another's large frame, started
/// before and finished after, is served.
#[test]
fn one_client_connection_cannot_hold_the_whole_frame_budget() {
    let cluster = start_cluster(3, |q| {
        q.limits.client_budget_bytes = 4 << 20;
        q.limits.client_request_timeout = Duration::from_secs(30);
    });
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        // B: an honest, large request, half sent.
        let (_epb, b) = raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
        let big = request_frame(&propose(1_300_000));
        let (mut b_send, mut b_recv) = b.open_bi().await.unwrap();
        b_send.write_all(&big[..700_000]).await.unwrap();
        // A: frames started and never finished, more than its share.
        let (_epa, a) = raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            let (mut send, recv) = a.open_bi().await.unwrap();
            let mut buf = (1_400_000u32).to_le_bytes().to_vec();
            buf.extend_from_slice(&vec![1; 900_000]);
            let _ = send.write_all(&buf).await;
            streams.push((send, recv));
        }
        let reason = tokio::time::timeout(Duration::from_secs(10), a.closed())
            .await
            .expect("the node closes the connection that ran out its share");
        assert!(reason.to_string().contains("no memory budget"), "{reason}");
        // B was not touched: it finishes its frame and is answered.
        b_send.write_all(&big[700_000..]).await.unwrap();
        b_send.finish().unwrap();
        let r: Option<ClientResponse> = frame::read_frame(&mut b_recv, 1 << 20).await.unwrap();
        assert!(matches!(r, Some(ClientResponse::Applied { .. })), "{r:?}");
        assert!(
            b.close_reason().is_none(),
            "the honest connection was closed"
        );
    });
}

/// The story: requests waiting for the node outlived their connection, so
/// a client could leave any number behind, each holding its bytes. Now at
/// most `max_client_requests` wait on a node (and `client_pending_bytes` of
/// them); one more is answered busy (certainly not applied, nothing in the
/// log), the client backs off and retries the same leader, and once the
/// waiting ones are answered, requests are served again. Status requests,
/// answered at once, are always served.
#[test]
fn requests_beyond_the_waiting_cap_are_answered_busy_and_not_applied() {
    let cluster = start_cluster_with(
        3,
        |q| {
            q.limits.max_client_requests = 2;
            q.limits.client_request_timeout = Duration::from_secs(3);
        },
        // A leader that loses its followers stays leader, so writes wait.
        |o| o.raft.check_quorum = false,
    );
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        // Two writes that cannot commit: both followers are stopped.
        for p in &cluster.procs {
            if p.node.handle().id() != id {
                p.node.handle().shutdown().await;
            }
        }
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let proposed = leader.metrics().proposals;
        let mut waiting = Vec::new();
        for k in 0..2u8 {
            let (ep, conn) =
                raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&request_frame(&propose(10 + usize::from(k))))
                .await
                .unwrap();
            send.finish().unwrap();
            // The connection goes; the request stays.
            waiting.push((ep, recv));
            drop(conn);
        }
        wait_until("both writes wait for their commit", 5, || {
            leader.metrics().proposals >= proposed + 2
        })
        .await;
        let client = cluster.client(id).await;
        let before = leader.status().last_index;
        let r = client.request(&propose(20)).await.unwrap();
        assert!(
            matches!(&r, ClientResponse::Busy { message } if message.contains("max_client_requests")),
            "{r:?}"
        );
        assert_eq!(cluster.stat(id, |s| &s.requests_busy), 1);
        assert_eq!(leader.status().last_index, before, "a busy write reached the log");
        let r = client.request(&ClientRequest::Status).await.unwrap();
        assert!(matches!(r, ClientResponse::Status(_)), "{r:?}");
        // The waiting writes are answered (outcome unknown) at the
        // deadline, which frees their slots.
        wait_until("the waiting writes time out", 10, || {
            cluster.stat(id, |s| &s.answer_timeouts) >= 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = client.request(&ClientRequest::Read).await.unwrap();
        assert!(!matches!(r, ClientResponse::Busy { .. }), "{r:?}");
    });
}

/// The story: a connection could have 1024 requests open at once. Now a
/// client connection has at most `max_client_streams` and a peer connection
/// `max_peer_streams`: QUIC itself refuses more, the requests that never
/// finish are closed after the deadline, and other clients are served all
/// along.
#[test]
fn more_streams_than_allowed_are_refused_while_a_legitimate_client_is_served() {
    let cluster = start_cluster(3, |q| {
        q.options.max_client_streams = 8;
        q.limits.client_request_timeout = Duration::from_secs(2);
        q.limits.peer_frame_timeout = Duration::from_secs(2);
    });
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let (_ep, conn) = raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await;
        let mut held = Vec::new();
        for k in 0..8 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            // Half send a piece of a request, half nothing (the stream is
            // opened by a later stream's bytes).
            if k % 2 == 1 {
                send.write_all(&[9, 0]).await.unwrap();
            }
            held.push((send, recv));
        }
        let ninth = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
        assert!(
            ninth.is_err(),
            "a ninth concurrent request stream was allowed"
        );
        // A legitimate client, meanwhile.
        let client = cluster.client(id).await;
        assert!(matches!(
            client.request(&ClientRequest::Status).await.unwrap(),
            ClientResponse::Status(_)
        ));
        assert!(matches!(
            client.request(&propose(100)).await.unwrap(),
            ClientResponse::Applied { .. }
        ));
        // A peer connection may open only a few streams.
        let n2 = load_node_identity(cluster.certs.path(), NodeId(2)).unwrap();
        let target = if id == NodeId(2) { NodeId(1) } else { id };
        let (_ep2, pconn) = raw_conn(
            cluster.addrs[&target],
            &format!("node-{}", target.0),
            &n2,
            ALPN_PEER,
        )
        .await;
        let mut peer_streams = Vec::new();
        for _ in 0..4 {
            let mut s = pconn.open_uni().await.unwrap();
            s.write_all(&[1]).await.unwrap();
            peer_streams.push(s);
        }
        let fifth = tokio::time::timeout(Duration::from_millis(500), pconn.open_uni()).await;
        assert!(
            fifth.is_err(),
            "a fifth stream on a peer connection was allowed"
        );
        drop(pconn);
        // The idle requests are closed after their deadline (counted), which
        // frees room for new ones once the client's QUIC stack answers the
        // node's STOP_SENDING (quinn does when the stream handles go; until
        // then a client only blocks its own connection).
        wait_until("the idle requests time out", 10, || {
            cluster.stat(id, |s| &s.frame_timeouts) >= 8
        })
        .await;
        drop(held);
        let opened = tokio::time::timeout(Duration::from_secs(5), conn.open_bi())
            .await
            .expect("room for a new request after the deadline")
            .unwrap();
        drop(opened);
        cluster.still_commits(b"after the stream flood").await;
    });
}

/// The story: nothing limited connections. Now a node takes at most
/// `max_client_connections` clients and `max_connections_per_peer`
/// connections of each peer; more are closed right after the handshake,
/// counted, and the cluster (whose peers have slots of their own) serves on.
#[test]
fn idle_connections_beyond_the_caps_are_refused() {
    let cluster = start_cluster(3, |q| {
        q.limits.max_client_connections = 4;
        q.limits.max_connections = 64;
    });
    runtime(1).block_on(async {
        let leader = cluster.leader().await;
        let id = leader.id();
        let legit = cluster.client(id).await;
        let client_id = load_client_identity(cluster.certs.path()).unwrap();
        let mut conns = Vec::new();
        for _ in 0..10 {
            conns.push(raw_conn(cluster.addrs[&id], "localhost", &client_id, ALPN_CLIENT).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let closed: Vec<String> = conns
            .iter()
            .filter_map(|(_, c)| c.close_reason().map(|r| r.to_string()))
            .collect();
        assert_eq!(closed.len(), 7, "{closed:?}");
        assert!(
            closed
                .iter()
                .all(|r| r.contains("too many client connections"))
        );
        assert_eq!(cluster.stat(id, |s| &s.refused_connections), 7);
        assert!(matches!(
            legit.request(&ClientRequest::Status).await.unwrap(),
            ClientResponse::Status(_)
        ));
        // A peer's connections beyond its own cap are refused too, and do
        // not take the real peer's place.
        let other = cluster.addrs.keys().copied().find(|n| *n != id).unwrap();
        let peer_id = load_node_identity(cluster.certs.path(), other).unwrap();
        let mut pconns = Vec::new();
        for _ in 0..12 {
            pconns.push(
                raw_conn(
                    cluster.addrs[&id],
                    &format!("node-{}", id.0),
                    &peer_id,
                    ALPN_PEER,
                )
                .await,
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let refused = pconns
            .iter()
            .filter_map(|(_, c)| c.close_reason())
            .filter(|r| {
                r.to_string()
                    .contains("too many connections from this peer")
            })
            .count();
        assert!(
            refused >= 4,
            "only {refused} of 12 extra peer connections refused"
        );
        assert!(cluster.stat(id, |s| &s.refused_connections) >= 7 + 4);
        drop(pconns);
        cluster.still_commits(b"after the connection flood").await;
    });
}
