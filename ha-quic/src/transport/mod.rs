//! The node's QUIC endpoint: Raft messages to and from peers, and client
//! requests, on one UDP socket.
//!
//! Owns: the endpoint, one sender task per (peer, stream class), the accept
//! loop that checks who is talking before anything they say reaches the
//! core, and the resource limits ([`QuicLimits`]) that keep an
//! authenticated but hostile or buggy peer or client from exhausting the
//! node.
//!
//! Peer traffic (ALPN `ha-raft/4`). Each node dials each peer lazily (on the
//! first message for it) and keeps two connections to it, each carrying one
//! unidirectional stream of frames:
//! - **control**: votes, pre-votes, heartbeats and every response: small,
//!   latency-critical;
//! - **replication**: appends, which can be large.
//!
//! Separate connections, not just separate streams, so bulk appends cannot
//! use up the connection-wide flow-control window that heartbeats need: a
//! leader under heavy write load keeps its followers. A stream opens with a
//! [`PeerHello`] naming the sender, the receiver, the cluster and the class.
//!
//! A snapshot travels on a connection of its own, on one bidirectional
//! stream: hello, [`SnapshotHeader`], the file's bytes; the receiver answers
//! with one [`SnapshotVerdict`] once the file is verified, durable and its
//! `InstallSnapshot` queued to the node, and the sender reports success
//! only on [`SnapshotVerdict::Accepted`].
//!
//! Client traffic (ALPN `ha-client/7`): one request and one response per
//! bidirectional stream.
//!
//! Invariants:
//! 1. A peer stream is accepted only if the dialer's certificate (verified
//!    against the cluster CA by the handshake) names `node-<from>` for the
//!    `from` its hello claims, `to` is this node, and the cluster id matches.
//!    Every message on it must then carry that same `from` and `to`. The
//!    peers an endpoint knows follow the configuration (the node hands it
//!    members' addresses and lets go of removed nodes); a certified node
//!    it does not know yet, and did not forget as removed, is learned at
//!    the address it dials from (`learn_peer`), so a node waiting to be
//!    added can answer its leader, and a member that has not seen the
//!    configuration naming a newer leader can hear and answer it. At most
//!    `MAX_LEARNED_PEERS` learned nodes are known at a time. A member the
//!    configuration names by a DNS name is looked up again whenever its
//!    connections fail or it dials in from another IP than the one it is
//!    known at (at most once a second), so a recreated container
//!    is followed to its new address; an address a connection comes from
//!    is never taken for a named member's (wrong behind NAT).
//! 2. A malformed, truncated, oversized or unexpected frame closes that
//!    connection and is logged with the peer's identity; the node keeps
//!    running.
//! 3. Send queues are bounded (`control_queue`, `replication_queue`);
//!    `send` drops when one is full, so a slow or dead follower cannot make
//!    the leader's memory grow. Raft resends what matters.
//! 4. Reconnects back off exponentially from 20 ms to 1 s, with jitter.
//! 5. Nothing is dropped silently: every message, request, connection,
//!    stream or snapshot this endpoint drops or refuses is counted in
//!    [`TransportStats`] and logged (events a flood could repeat are logged
//!    at the 1st, 2nd, 4th, ... and every 1024th occurrence, with the count).
//! 6. Every limit in [`QuicLimits`] holds (see there); in particular a
//!    client request is at most `max_request_bytes`, so every entry the log
//!    accepts fits a replication frame, and memory held for unfinished frames
//!    is paid from a byte budget before it is allocated.
//! 7. Of a peer's message streams of one class, only the newest delivers:
//!    once a newer one registered, an older one delivers nothing more, and
//!    one older than the registered one is refused at its hello (both
//!    counted in `dropped_superseded`). "Newer" is the order the sender
//!    created them in: connections are numbered when their first packet
//!    arrives (`endpoint.accept` yields them in that order), streams within
//!    a connection by their QUIC stream id. A sender's stream carries data
//!    only after the handshake, whose first packet this node had answered;
//!    so a connection a restarted peer opens arrives after every connection
//!    it opened before its crash, however late their data comes. Hence no
//!    message a peer sent before it restarted reaches the node after one it
//!    sent since: a leader never counts an append acknowledgement from
//!    before a follower's crash after that follower said, after the crash,
//!    that it is repairing. (The inbox is FIFO, so a check and enqueue under
//!    one lock suffices.)

mod inbound;
mod limits;
mod outbound;
mod peers;
mod serving;
mod snapshots;
mod stats;
mod wire;

use inbound::*;
pub use limits::*;
use outbound::*;
use serving::*;
use snapshots::*;
pub use stats::TransportStats;
use stats::{bump, sampled};
pub use wire::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ha_core::node::{Inbox, NodeHandle, SnapshotFiles};
use ha_core::raft::{Body, Message};
use ha_core::rng::SplitMix64;
use ha_core::transport::Transport;
use ha_core::types::{LogIndex, NodeId, Term};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::certs::{TlsIdentity, node_server_name};
use crate::client::{ClientRequest, ClientResponse};
use crate::frame::{
    self, FrameDeadline, FrameError, MAX_CONTROL_FRAME_BYTES, MAX_FRAME_BYTES, ReadLimits,
};
use crate::tls::{self, ALPN_CLIENT, ALPN_PEER, QuicOptions};

/// Handshakes reserved for peers' addresses.
const PEER_HANDSHAKES: usize = 16;

/// The most nodes known only from their connections (not named by a
/// configuration) at a time: a node learns one that connects with a
/// certificate of the cluster's CA naming it, at the address it dials from.
pub const MAX_LEARNED_PEERS: usize = 16;

pub use crate::resolve::pick_addr;

/// The shortest time between two lookups of one member's name after its
/// connections fail: a peer that is down for a while costs a lookup a
/// second, not one per reconnect attempt.
const RERESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a member's name is looked up again while nothing prompts it
/// (a follower may have nothing to send to a moved member for a while).
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The longest wait between lookups of a member's name that does not
/// resolve.
const MAX_RESOLVE_BACKOFF: Duration = Duration::from_secs(30);

/// A member's address as the configuration names it, and the wake-up of
/// the task that resolves it when it is a DNS name (one task per entry:
/// a replaced or removed entry's task sees its `wake` gone and ends).
struct Named {
    text: String,
    wake: Arc<tokio::sync::Notify>,
}

/// A handshake slot for `incoming`: from the common pool
/// (`max_handshakes`), or, when that is exhausted and the sender has a
/// peer's IP address, from the peers' reserve. `None` if it was refused, or
/// answered with a Retry (its sender comes back with a validated address).
fn admit_handshake(
    shared: &Shared,
    incoming: quinn::Incoming,
) -> Option<(quinn::Incoming, OwnedSemaphorePermit)> {
    let max = shared.limits.max_handshakes;
    // Half taken: an unproven address must prove it first, so a flood of
    // spoofed sources cannot hold the slots (a Retry keeps no state here).
    if shared.handshakes.available_permits() < max.div_ceil(2)
        && !incoming.remote_address_validated()
        && incoming.may_retry()
    {
        bump(&shared.stats.retries_sent);
        let _ = incoming.retry();
        return None;
    }
    // A dual-stack socket shows an IPv4 sender as `::ffff:a.b.c.d`. (A peer
    // behind NAT, or one that dials from another address than it listens
    // on, is not recognised and uses the common pool.)
    let from_peer = shared
        .peers
        .has_ip(incoming.remote_address().ip().to_canonical());
    let permit = shared.handshakes.clone().try_acquire_owned().or_else(|e| {
        if from_peer {
            shared.peer_handshakes.clone().try_acquire_owned()
        } else {
            Err(e)
        }
    });
    let Ok(permit) = permit else {
        let n = bump(&shared.stats.refused_connections);
        if sampled(n) {
            tracing::warn!(
                node = %shared.id,
                remote = %incoming.remote_address(),
                "refused a connection: {max} handshakes in progress; {n} refused so far"
            );
        }
        incoming.refuse();
        return None;
    };
    Some((incoming, permit))
}

struct PeerQueues {
    control: mpsc::Sender<Message>,
    replication: mpsc::Sender<Message>,
    connected: Arc<AtomicBool>,
    /// The control connection, while up (for its RTT estimate).
    conn: Arc<std::sync::Mutex<Option<quinn::Connection>>>,
}

type ConnSlot = Arc<std::sync::Mutex<Option<quinn::Connection>>>;

/// What every task of an endpoint shares. The semaphores are the limits of
/// [`QuicLimits`]: a permit is a connection slot, a snapshot slot, or a byte
/// of an unfinished frame, a client request waiting for its answer or a
/// byte of one, held for as long as that thing exists.
struct Shared {
    id: NodeId,
    cluster_id: String,
    schema: u64,
    query_schema: u64,
    /// The peers and their own limits (changed at runtime by
    /// [`QuicTransport::add_peer`] and [`QuicTransport::remove_peer`]).
    peers: peers::PeerTable,
    stats: TransportStats,
    options: QuicOptions,
    limits: QuicLimits,
    /// Depths of a peer's control and replication send queues.
    queue_depths: (usize, usize),
    /// The address text the configuration last named for each peer (a DNS
    /// name is resolved later, and again whenever the peer's connections
    /// fail; an answer is taken only if the entry is still the one it was
    /// resolved for).
    named: std::sync::Mutex<BTreeMap<NodeId, Named>>,
    /// How members' DNS names are resolved.
    resolver: crate::resolve::Resolver,
    /// Nodes forgotten as removed (see [`QuicTransport::learn_peer`]):
    /// not learned again from their connections unless a configuration
    /// names them again. At most `MAX_MEMBERS` kept (the oldest go).
    forgotten: std::sync::Mutex<std::collections::VecDeque<NodeId>>,
    /// Set once the endpoint is closed or dropped: background work for it
    /// (a member's DNS name being resolved) ends.
    closed: tokio::sync::watch::Sender<bool>,
    /// The runtime the endpoint was bound on: a peer's senders run there
    /// whoever adds the peer, and end with it.
    runtime: tokio::runtime::Handle,
    /// `max_connections`.
    connections: Arc<Semaphore>,
    /// `max_handshakes`: handshakes in progress.
    handshakes: Arc<Semaphore>,
    /// A reserve of handshakes for peers' addresses ([`PEER_HANDSHAKES`]),
    /// used when `handshakes` is exhausted.
    peer_handshakes: Arc<Semaphore>,
    /// `max_client_connections`.
    client_connections: Arc<Semaphore>,
    /// `client_budget_bytes`.
    client_budget: Arc<Semaphore>,
    /// `max_snapshot_receives`.
    snapshot_receives: Arc<Semaphore>,
    /// `max_client_requests`.
    client_requests: Arc<Semaphore>,
    /// `client_pending_bytes`.
    client_pending: Arc<Semaphore>,
    /// The newest message stream of each (peer, class): its connection's
    /// number and its stream id (invariant 7). At most one entry per peer
    /// and class.
    newest_streams: std::sync::Mutex<BTreeMap<(NodeId, bool), (u64, u64)>>,
    /// Numbers incoming connections in the order they arrive.
    next_connection: AtomicU64,
}

/// The sending half, handed to the node as its [`Transport`].
#[derive(Clone)]
pub struct QuicTransport {
    shared: Arc<Shared>,
    /// Each peer's send queues (changed with the peer table).
    queues: Arc<std::sync::RwLock<BTreeMap<NodeId, PeerQueues>>>,
    endpoint: quinn::Endpoint,
}

fn class_of(m: &Message) -> StreamClass {
    match m.body {
        Body::Append { .. } => StreamClass::Replication,
        _ => StreamClass::Control,
    }
}

impl Transport for QuicTransport {
    fn set_peer_addr(&self, id: NodeId, addr: &str) {
        if id == self.shared.id {
            return;
        }
        let mut named = self.shared.named.lock().unwrap_or_else(|e| e.into_inner());
        if named.get(&id).is_some_and(|n| n.text == addr) {
            // Named so already: a name is being followed; an address is
            // taken again (a no-op unless removed by hand meanwhile).
            if let Ok(a) = addr.parse::<SocketAddr>() {
                self.add_peer(id, a);
            }
            return;
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        let old = named.insert(
            id,
            Named {
                text: addr.to_string(),
                wake: wake.clone(),
            },
        );
        if let Some(old) = old {
            old.wake.notify_one(); // Its task sees the entry replaced, and ends.
        }
        self.shared
            .forgotten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|f| *f != id);
        if let Ok(a) = addr.parse::<SocketAddr>() {
            return self.add_peer(id, a);
        }
        drop(named);
        let (t, text) = (self.clone(), addr.to_string());
        self.shared
            .runtime
            .spawn(async move { t.follow_name(id, text, wake).await });
    }

    fn forget_peer(&self, id: NodeId) {
        let mut named = self.shared.named.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = named.remove(&id) {
            old.wake.notify_one();
        }
        {
            let mut f = self
                .shared
                .forgotten
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !f.contains(&id) {
                if f.len() >= ha_core::raft::MAX_MEMBERS {
                    f.pop_front();
                }
                f.push_back(id);
            }
        }
        self.remove_peer(id);
    }

    fn send_snapshot(
        &self,
        to: NodeId,
        snapshot: ha_core::node::OutgoingSnapshot,
        install: Message,
        done: ha_core::transport::SnapshotDone,
    ) {
        let Some(addr) = self.shared.peers.addr(to) else {
            let n = bump(&self.shared.stats.dropped_no_route);
            tracing::warn!(node = %self.shared.id, peer = %to, "cannot send a snapshot to an unknown node ({n} messages without a route so far)");
            return done(false);
        };
        let (endpoint, shared) = (self.endpoint.clone(), self.shared.clone());
        tokio::spawn(async move {
            // The whole transfer, the verdict included, has a deadline: a
            // receiver that stops reading cannot hold the sender forever.
            let limit = shared
                .limits
                .snapshot_deadline(snapshot.len)
                .saturating_add(shared.limits.snapshot_idle_timeout);
            let r = tokio::time::timeout(
                limit,
                stream_snapshot(&endpoint, &shared, to, addr, snapshot, install.term),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no verdict within {limit:?}")));
            if let Err(e) = &r {
                tracing::warn!(node = %shared.id, peer = %to, "snapshot transfer failed: {e}");
            }
            done(r.is_ok());
        });
    }

    fn send(&self, msg: Message) {
        let stats = &self.shared.stats;
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        let Some(q) = queues.get(&msg.to) else {
            let n = bump(&stats.dropped_no_route);
            if sampled(n) {
                tracing::warn!(node = %self.shared.id, to = %msg.to, "dropped a message for a node this endpoint does not know ({n} so far)");
            }
            return;
        };
        let queue = match class_of(&msg) {
            StreamClass::Control => &q.control,
            StreamClass::Replication | StreamClass::Snapshot => &q.replication,
        };
        let to = msg.to;
        if queue.try_send(msg).is_err() {
            let n = bump(&stats.dropped_full);
            if sampled(n) {
                tracing::warn!(node = %self.shared.id, peer = %to, "dropped a message: the send queue is full ({n} so far; Raft resends)");
            }
        }
    }
}

impl QuicTransport {
    /// Keeps peer `id`, named `text` (a DNS name) by the configuration, at
    /// the address the name resolves to: resolved off the node's task,
    /// retried with backoff while it fails (a pod's name may not exist
    /// yet), and resolved again whenever the peer's connections fail or it
    /// dials in from an unexpected IP (a recreated container comes back
    /// under its name with a new address),
    /// at most once per [`RERESOLVE_INTERVAL`], and every
    /// [`REFRESH_INTERVAL`] anyway. Ends when the endpoint
    /// closes or the entry `wake` belongs to is replaced or removed; an
    /// answer is taken only while that entry stands. An address of the
    /// endpoint's own family is preferred.
    async fn follow_name(self, id: NodeId, text: String, wake: Arc<tokio::sync::Notify>) {
        let v4 = self.endpoint.local_addr().map_or(true, |a| a.is_ipv4());
        let mut closed = self.shared.closed.subscribe();
        // Whether the entry this task follows still stands.
        let ours = |named: &BTreeMap<NodeId, Named>| {
            named.get(&id).is_some_and(|n| Arc::ptr_eq(&n.wake, &wake))
        };
        let mut backoff = Duration::from_millis(200);
        // This lookup was prompted by failing connections (or a dial from
        // another IP), not by the periodic refresh.
        let mut prompted = false;
        loop {
            if !ours(&self.shared.named.lock().unwrap_or_else(|e| e.into_inner())) {
                return;
            }
            let found = tokio::select! {
                _ = closed.wait_for(|c| *c) => return,
                r = self.shared.resolver.lookup(&text) => r,
            };
            // At a periodic lookup the address in use stays while the name
            // still lists it (a name with several records, answered in
            // rotation, does not move the peer back and forth); after
            // failures another listed address is preferred (a host with a
            // dead interface). Else the rule's pick.
            let before = self.shared.peers.addr(id);
            let resolved = found.and_then(|all| {
                let others: Vec<SocketAddr> =
                    all.iter().copied().filter(|a| Some(*a) != before).collect();
                let kept = before.filter(|b| all.contains(b) && (!prompted || others.is_empty()));
                let pool = if prompted && !others.is_empty() {
                    others
                } else {
                    all
                };
                kept.or_else(|| pick_addr(pool, v4))
                    .ok_or_else(|| format!("{text} resolves to no address"))
            });
            let pause = {
                // Checked and taken under the lock `set_peer_addr` and
                // `forget_peer` change the entry under.
                let named = self.shared.named.lock().unwrap_or_else(|e| e.into_inner());
                if !ours(&named) {
                    return;
                }
                match resolved {
                    Ok(a) => {
                        if before.is_some() && before != Some(a) {
                            bump(&self.shared.stats.peers_moved);
                            tracing::info!(node = %self.shared.id, peer = %id, name = %text, from = ?before, to = %a, "a member's name resolves to a new address: following it");
                        }
                        // Always: a no-op at the same address, except that
                        // a peer learned from its connection becomes a
                        // configured one.
                        self.add_peer(id, a);
                        backoff = Duration::from_millis(200);
                        None
                    }
                    Err(e) => {
                        let n = bump(&self.shared.stats.resolve_failures);
                        if sampled(n) {
                            tracing::warn!(node = %self.shared.id, peer = %id, "{e}; retrying in {backoff:?} ({n} failures so far)");
                        }
                        let b = backoff;
                        backoff = (backoff * 2).min(MAX_RESOLVE_BACKOFF);
                        Some(b)
                    }
                }
            };
            match pause {
                // Resolved: look again once the peer's connections fail
                // (or the entry is replaced), not more than once a second,
                // and every `REFRESH_INTERVAL` anyway.
                None => {
                    prompted = tokio::select! {
                        _ = closed.wait_for(|c| *c) => return,
                        _ = wake.notified() => true,
                        _ = tokio::time::sleep(REFRESH_INTERVAL) => false,
                    };
                    tokio::select! {
                        _ = closed.wait_for(|c| *c) => return,
                        _ = tokio::time::sleep(RERESOLVE_INTERVAL) => {}
                    }
                }
                // Not resolved: the backoff holds, whatever fails to
                // connect meanwhile (a replaced entry's task ends after
                // it, at the check above).
                Some(b) => {
                    tokio::select! {
                        _ = closed.wait_for(|c| *c) => return,
                        _ = tokio::time::sleep(b) => {}
                    }
                }
            }
        }
    }

    /// Whether the control connection to `peer` is up.
    pub fn peer_connected(&self, peer: NodeId) -> bool {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .is_some_and(|q| q.connected.load(Ordering::Relaxed))
    }

    /// Adds peer `id` listening at `addr` (a member added to the
    /// configuration), or moves it there: its senders start (they connect
    /// lazily) and its connections are accepted. The endpoint's own id is
    /// ignored.
    pub fn add_peer(&self, id: NodeId, addr: SocketAddr) {
        if id == self.shared.id {
            return;
        }
        let limits = &self.shared.limits;
        if self.install_peer(id, addr, |peers| peers.insert(id, addr, limits)) {
            tracing::info!(node = %self.shared.id, peer = %id, %addr, "peer added");
        }
    }

    /// Changes the peer table with `change` (true if it added or moved
    /// peer `id` to `addr`) and then starts the peer's senders, holding the
    /// queue map's lock across both, so two changes of one peer cannot
    /// interleave (table at one address, senders at another). A replaced
    /// entry's queues drop here: its old senders end. True if it changed.
    fn install_peer(
        &self,
        id: NodeId,
        addr: SocketAddr,
        change: impl FnOnce(&peers::PeerTable) -> bool,
    ) -> bool {
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        if !change(&self.shared.peers) {
            return false;
        }
        queues.insert(
            id,
            start_peer_sender(&self.endpoint, &self.shared, id, addr),
        );
        true
    }

    /// Adds the node a connecting certificate names, unknown to this
    /// endpoint, at the address it dials from (an endpoint dials from the
    /// socket it listens on). This is how a node waiting to be added
    /// answers the leader that adds it before any configuration has told
    /// it where the leader is, and how a member that has not yet seen the
    /// configuration naming a newer leader hears and answers it (§4.2.2);
    /// the configuration's address takes over once known
    /// ([`Transport::set_peer_addr`]). A node forgotten as removed is not
    /// learned again (until a configuration names it again). The
    /// certificate must name exactly one node, not this one; a known node
    /// is never moved by this; and at most [`MAX_LEARNED_PEERS`] learned
    /// nodes are known at a time. The list of forgotten nodes is kept in
    /// memory: after this node restarts, a removed node that dials it may
    /// be learned again (it cannot disrupt the cluster with PreVote and
    /// CheckQuorum on, the defaults; dissertation §4.2.3).
    pub(super) fn learn_peer(
        &self,
        cert: &rustls_pki_types::CertificateDer<'_>,
        remote: SocketAddr,
    ) -> Result<NodeId, &'static str> {
        let ids = tls::cert_node_ids(cert);
        let [id] = ids[..] else {
            return Err("the certificate names no single node of this cluster");
        };
        if id == self.shared.id {
            return Err("the certificate names this node");
        }
        // Checked under the queue map's lock (in `install_peer`), which
        // `forget_peer` takes to remove the peer after recording it: no
        // learning in between.
        let mut forgotten = false;
        let limits = &self.shared.limits;
        let learned = self.install_peer(id, remote, |peers| {
            forgotten = self
                .shared
                .forgotten
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id);
            !forgotten && peers.insert_new(id, remote, limits, MAX_LEARNED_PEERS)
        });
        if forgotten {
            return Err("the certificate names a node removed from the configuration");
        }
        if !learned {
            // Known meanwhile (another connection, or the configuration):
            // taken as it is.
            return match self.shared.peers.get(id) {
                Some(_) => Ok(id),
                None => Err("this node knows as many learned peers as it takes"),
            };
        }
        let n = bump(&self.shared.stats.peers_learned);
        tracing::info!(node = %self.shared.id, peer = %id, %remote, "learned a node of the cluster from its connection ({n} so far)");
        Ok(id)
    }

    /// Forgets peer `id` (a member removed from the configuration): its
    /// senders end, its connections are closed, and its new connections
    /// and streams are refused.
    pub fn remove_peer(&self, id: NodeId) {
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        if !self.shared.peers.remove(id) {
            return;
        }
        queues.remove(&id);
        drop(queues);
        tracing::info!(node = %self.shared.id, peer = %id, "peer removed");
    }

    /// The peers this endpoint knows, with their addresses.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        self.shared
            .peers
            .ids()
            .into_iter()
            .filter_map(|id| Some((id, self.shared.peers.addr(id)?)))
            .collect()
    }

    /// The counters.
    pub fn stats(&self) -> &TransportStats {
        &self.shared.stats
    }

    /// Bytes client streams hold in unfinished request frames now (at most
    /// `client_budget_bytes`).
    pub fn client_frame_bytes_held(&self) -> usize {
        self.shared.limits.client_budget_bytes - self.shared.client_budget.available_permits()
    }

    /// Bytes peer streams hold in unfinished frames now, over all peers
    /// (at most `peer_budget_bytes` each).
    pub fn peer_frame_bytes_held(&self) -> usize {
        self.shared
            .peers
            .bytes_held(self.shared.limits.peer_budget_bytes)
    }

    /// QUIC's round-trip estimate to every connected peer.
    pub fn peer_rtts(&self) -> Vec<(NodeId, Duration)> {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(id, q)| {
                let c = q.conn.lock().unwrap_or_else(|e| e.into_inner());
                c.as_ref().map(|c| (*id, c.rtt()))
            })
            .collect()
    }
}

/// A bound endpoint: call [`QuicEndpoint::serve`] once the node runs.
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    transport: QuicTransport,
    shared: Arc<Shared>,
}

impl Shared {
    /// The endpoint's bookkeeping for `config`: its limits' semaphores,
    /// one budget, connection cap and snapshot slot per peer, and fresh
    /// counters.
    fn new(config: &QuicConfig) -> Shared {
        let limits = &config.limits;
        Shared {
            id: config.id,
            cluster_id: config.identity.cluster_id(),
            schema: config.schema,
            query_schema: config.query_schema,
            peers: peers::PeerTable::new(config.id, &config.peers, limits),
            stats: TransportStats::default(),
            options: config.options.clone(),
            limits: limits.clone(),
            queue_depths: (config.control_queue, config.replication_queue),
            named: std::sync::Mutex::new(BTreeMap::new()),
            resolver: config.resolver.clone(),
            forgotten: std::sync::Mutex::new(std::collections::VecDeque::new()),
            closed: tokio::sync::watch::Sender::new(false),
            runtime: tokio::runtime::Handle::current(),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
            peer_handshakes: Arc::new(Semaphore::new(PEER_HANDSHAKES)),
            client_connections: Arc::new(Semaphore::new(limits.max_client_connections)),
            client_budget: Arc::new(Semaphore::new(limits.client_budget_bytes)),
            snapshot_receives: Arc::new(Semaphore::new(limits.max_snapshot_receives)),
            client_requests: Arc::new(Semaphore::new(limits.max_client_requests)),
            client_pending: Arc::new(Semaphore::new(limits.client_pending_bytes)),
            newest_streams: std::sync::Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
        }
    }
}

impl Shared {
    /// Peer `peer` could not be reached, or dialed in from an unexpected
    /// IP: if the configuration names it by a DNS name, its name is looked
    /// up again (see [`QuicTransport::follow_name`]).
    fn recheck_name(&self, peer: NodeId) {
        if let Some(n) = self
            .named
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
        {
            n.wake.notify_one();
        }
    }
}

/// Starts the two senders (control and replication) of one peer; they
/// connect lazily. Returns their queues.
fn start_peer_sender(
    endpoint: &quinn::Endpoint,
    shared: &Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
) -> PeerQueues {
    let connected = Arc::new(AtomicBool::new(false));
    let conn_slot: ConnSlot = Arc::new(std::sync::Mutex::new(None));
    let make = |class, depth: usize, connected: Option<(Arc<AtomicBool>, ConnSlot)>| {
        let (tx, rx) = mpsc::channel(depth.max(1));
        shared.runtime.spawn(peer_sender(
            endpoint.clone(),
            shared.clone(),
            peer,
            addr,
            class,
            rx,
            connected,
        ));
        tx
    };
    let (control_depth, replication_depth) = shared.queue_depths;
    let control = make(
        StreamClass::Control,
        control_depth,
        Some((connected.clone(), conn_slot.clone())),
    );
    let replication = make(StreamClass::Replication, replication_depth, None);
    PeerQueues {
        control,
        replication,
        connected,
        conn: conn_slot,
    }
}

/// Starts the senders of every peer but this node.
fn start_peer_senders(
    endpoint: &quinn::Endpoint,
    shared: &Arc<Shared>,
) -> BTreeMap<NodeId, PeerQueues> {
    shared
        .peers
        .ids()
        .into_iter()
        .filter_map(|peer| {
            let addr = shared.peers.addr(peer)?;
            Some((peer, start_peer_sender(endpoint, shared, peer, addr)))
        })
        .collect()
}

impl QuicEndpoint {
    /// Binds the socket and starts the peer senders (they connect lazily).
    /// Must be called inside a tokio runtime.
    pub fn bind(config: QuicConfig) -> Result<QuicEndpoint, QuicError> {
        config.validate().map_err(QuicError::Config)?;
        let bind_err = |source| QuicError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
        QuicEndpoint::with_socket(config, socket)
    }

    /// Like [`QuicEndpoint::bind`], on a socket bound already (so a test can
    /// learn every node's port from the OS before any node starts).
    pub fn with_socket(
        config: QuicConfig,
        socket: std::net::UdpSocket,
    ) -> Result<QuicEndpoint, QuicError> {
        config.validate().map_err(QuicError::Config)?;
        tls::size_socket_buffers(&socket);
        let server = tls::server_config(&config.identity, &config.options)?;
        let runtime = quinn::default_runtime().ok_or_else(|| QuicError::Bind {
            addr: config.listen,
            source: std::io::Error::other("no async runtime (start the endpoint inside tokio)"),
        })?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| QuicError::Bind {
            addr: config.listen,
            source,
        })?;
        let client = tls::client_config(&config.identity, ALPN_PEER, &config.options)?;
        endpoint.set_default_client_config(client);
        let shared = Arc::new(Shared::new(&config));
        let queues = start_peer_senders(&endpoint, &shared);
        let transport = QuicTransport {
            shared: shared.clone(),
            queues: Arc::new(std::sync::RwLock::new(queues)),
            endpoint: endpoint.clone(),
        };
        Ok(QuicEndpoint {
            endpoint,
            transport,
            shared,
        })
    }

    /// The transport to give the node.
    pub fn transport(&self) -> QuicTransport {
        self.transport.clone()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Accepts connections for `node` until the endpoint closes.
    pub fn serve(&self, node: NodeHandle) {
        let files = node.snapshot_files();
        self.accept_into(node.inbound(), Some(node), Some(files));
    }

    /// Accepts peer connections and hands their messages to `inbound`, with
    /// no node behind the endpoint (clients are refused). For benchmarks and
    /// tests of the transport alone.
    pub fn serve_messages(&self, inbound: Inbox) {
        self.accept_into(inbound, None, None);
    }

    /// Like [`QuicEndpoint::serve_messages`], storing received snapshots in
    /// `files` (for benchmarks and tests of snapshot transfer alone).
    pub fn serve_messages_and_snapshots(&self, inbound: Inbox, files: Arc<dyn SnapshotFiles>) {
        self.accept_into(inbound, None, Some(files));
    }

    fn accept_into(
        &self,
        inbound: Inbox,
        node: Option<NodeHandle>,
        files: Option<Arc<dyn SnapshotFiles>>,
    ) {
        let endpoint = self.endpoint.clone();
        let shared = self.shared.clone();
        let transport = self.transport.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                // In arrival order, before anything else can reorder them
                // (invariant 7).
                let arrival = shared.next_connection.fetch_add(1, Ordering::Relaxed);
                // The total cap, before spending a handshake on it.
                let Ok(slot) = shared.connections.clone().try_acquire_owned() else {
                    let n = bump(&shared.stats.refused_connections);
                    if sampled(n) {
                        tracing::warn!(
                            node = %shared.id,
                            remote = %incoming.remote_address(),
                            "refused a connection: {} are open (max_connections); {n} refused so far",
                            shared.limits.max_connections
                        );
                    }
                    incoming.refuse();
                    continue;
                };
                let Some(handshake) = admit_handshake(&shared, incoming) else {
                    continue;
                };
                let (inbound, node, files, transport) = (
                    inbound.clone(),
                    node.clone(),
                    files.clone(),
                    transport.clone(),
                );
                tokio::spawn(handle_incoming(
                    handshake, arrival, slot, transport, inbound, node, files,
                ));
            }
        });
    }

    /// Closes every connection and the socket.
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
        self.endpoint
            .close(codes::SHUTDOWN.into(), b"shutting down");
    }
}

/// An endpoint dropped without [`QuicEndpoint::close`] still ends the
/// background work for it (its transports' clones may live on).
impl Drop for QuicEndpoint {
    fn drop(&mut self) {
        self.shared.closed.send_replace(true);
    }
}
