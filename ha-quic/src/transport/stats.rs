//! What an endpoint counts, and how often it logs what repeats (the
//! transport's invariant 5: nothing is dropped silently, and a flood of
//! one event cannot flood the log).

use super::*;

/// Counters of one endpoint (invariant 5).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Nodes of the cluster learned from their connections (see
    /// `QuicTransport::learn_peer`).
    pub peers_learned: AtomicU64,
    /// Member addresses (DNS names) that could not be resolved.
    pub resolve_failures: AtomicU64,
    /// Times a member's DNS name, resolved again (after its connections
    /// failed, it dialed in from another IP, or at the periodic lookup),
    /// named a new address that the endpoint then followed.
    pub peers_moved: AtomicU64,
    /// Messages dropped because a send queue was full.
    pub dropped_full: AtomicU64,
    /// Messages dropped because they were for a node this endpoint does not
    /// know.
    pub dropped_no_route: AtomicU64,
    /// Messages written to peers.
    pub sent: AtomicU64,
    /// Messages (and responses) dropped because they could not be encoded
    /// within their frame cap.
    pub encode_failures: AtomicU64,
    /// Messages received from peers and handed to the node.
    pub received: AtomicU64,
    /// Messages from peers dropped because the node's inbox was full.
    pub dropped_inbound: AtomicU64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: AtomicU64,
    /// Connections refused or closed because a connection limit was reached.
    pub refused_connections: AtomicU64,
    /// Handshakes that failed (no certificate, a foreign CA, a bad ALPN):
    /// anyone who can send UDP can cause these, so they are logged sampled.
    pub failed_handshakes: AtomicU64,
    /// Connection attempts answered with a QUIC Retry (address validation
    /// while handshake slots run short).
    pub retries_sent: AtomicU64,
    /// Frames that did not arrive by their deadline (the stream or
    /// connection was closed).
    pub frame_timeouts: AtomicU64,
    /// Connections closed because the frame byte budget was exhausted.
    pub budget_exhausted: AtomicU64,
    /// Client requests refused as larger than `max_request_bytes`.
    pub requests_too_large: AtomicU64,
    /// Client requests answered "busy" because `max_client_requests` or
    /// `client_pending_bytes` were reached.
    pub requests_busy: AtomicU64,
    /// Client requests the node did not answer within
    /// `client_request_timeout` (answered as failed, outcome unknown).
    pub answer_timeouts: AtomicU64,
    /// Client requests refused for another reason (a schema mismatch, a raw
    /// proposal to a typed node).
    pub requests_refused: AtomicU64,
    /// Snapshots received, verified, and handed to the node.
    pub snapshots_received: AtomicU64,
    /// Snapshot transfers refused or failed on the receiving side (too large,
    /// too many at once, not storable, broken, timed out).
    pub snapshots_refused: AtomicU64,
    /// Snapshot transfers aborted for making no progress or missing their
    /// deadline (also counted in `snapshots_refused`).
    pub snapshot_timeouts: AtomicU64,
    /// Messages from a peer's stream that a newer stream of the same peer
    /// and class superseded, and streams refused at their hello as older
    /// than one the peer opened since (invariant 7).
    pub dropped_superseded: AtomicU64,
}

/// Adds one to `c`, returning the new count.
pub(super) fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

/// Whether the `n`th occurrence of a repeatable event is logged (invariant
/// 5): the 1st, 2nd, 4th, ... and every 1024th.
pub(super) fn sampled(n: u64) -> bool {
    n.is_power_of_two() || n.is_multiple_of(1024)
}
