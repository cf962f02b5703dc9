//! TLS and QUIC settings: mutual TLS 1.3 against the cluster CA, ALPN, and
//! transport parameters tuned for a LAN cluster.
//!
//! Owns: building quinn server and client configurations.
//!
//! - Every connection is mutual TLS: both sides present a certificate signed
//!   by the cluster CA, the only trust anchor. A client with no certificate,
//!   or one from another CA, fails the handshake.
//! - ALPN separates peer traffic (`ha-raft/4`) from client traffic
//!   (`ha-client/7`) on the one endpoint of a node. Each protocol's
//!   version is in its ALPN: `ha-raft/3` sends snapshots on bidirectional
//!   streams that end with the receiver's verdict and carries leadership
//!   transfer (`TimeoutNow`, and votes marked as a transfer's);
//!   `ha-raft/4` carries members' addresses in configurations; `ha-client/3` checks
//!   queries against their own fingerprint, carries panic outcomes,
//!   the panic policy and resume, and answers a status with the node's
//!   typed report (`ha-client/2` sent roles and ids as text and numbers);
//!   `ha-client/4` adds the leadership transfer request; `ha-client/5`
//!   the membership requests; `ha-client/6` names the leader in a
//!   redirect by its configured `HOST:PORT` (a DNS name or an IP address)
//!   instead of a socket address; `ha-client/7` adds the maintainability
//!   figures (planned and unplanned downtime, uptime) to the status.
//! - A client dials a node by a `HOST:PORT` and checks that the node's
//!   certificate names that host (see `client`).
//! - A dialing node names the peer it expects (`node-<id>`), so the server's
//!   certificate must be that node's; the accepting side checks the dialer's
//!   claimed id against its certificate (see `transport`).
//! - Only the `ring` crypto provider is used, always passed explicitly, so
//!   no process-wide default provider is needed.
//!
//! Transport parameters (see [`QuicOptions`]) trade a little idle traffic
//! for fast failure detection and large windows:
//! - keep-alive every 100 ms and a 500 ms idle timeout: a dead peer's
//!   connection is torn down within about two election timeouts at the
//!   server's default settings (150–300 ms), and its sender starts
//!   reconnecting, while one or two lost keep-alives do not kill a healthy
//!   connection; Raft's own timers stay the failure detector for
//!   leadership.
//! - an initial RTT estimate of 5 ms (the default 333 ms suits the
//!   internet, not a LAN, and would stretch the first timeouts).
//! - stream and connection receive windows of 8 and 32 MiB, a 32 MiB send
//!   window: one replication stream can fill a 10 Gb/s LAN at sub-millisecond
//!   round trips without waiting for window updates, while a stalled peer
//!   can pin at most that much memory.
//! - streams a remote may open: on a node's server side at most
//!   `max_client_streams` bidirectional ones (client requests) and
//!   `max_peer_streams` unidirectional ones (a peer needs one per
//!   connection); once the ALPN tells clients from peers, the transport
//!   narrows each connection to its class (see `transport`). A dialing side
//!   (a node reaching a peer, a client) accepts no streams at all, since the
//!   other side never opens any: a hostile server cannot make a dialer
//!   buffer streams nobody reads.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;

use crate::certs::TlsIdentity;

/// ALPN of node-to-node traffic.
pub const ALPN_PEER: &[u8] = b"ha-raft/4";
/// ALPN of client traffic.
pub const ALPN_CLIENT: &[u8] = b"ha-client/7";

/// QUIC transport settings (see the module docs for why).
#[derive(Clone, Debug)]
pub struct QuicOptions {
    /// Close a connection that hears nothing for this long.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this much silence.
    pub keep_alive: Duration,
    /// Round-trip estimate before the first measurement.
    pub initial_rtt: Duration,
    /// Receive window of one stream.
    pub stream_window_bytes: u32,
    /// Receive window of one connection.
    pub connection_window_bytes: u32,
    /// Send window of one connection.
    pub send_window_bytes: u64,
    /// Requests one client connection may have open at once (bidirectional
    /// streams; server side). 256 by default: a client that shares one
    /// connection among many tasks (as `ha-kv bench` does) keeps that many
    /// requests in flight, and the leader batches them; 64 held a
    /// 256-client bench to 64 in flight, at 0.6x the throughput and twice
    /// the p99. The node's `max_client_requests` and `client_budget_bytes`
    /// still bound all clients together.
    pub max_client_streams: u32,
    /// Streams one peer connection may have open at once (server side; a
    /// peer opens one per connection).
    pub max_peer_streams: u32,
}

impl Default for QuicOptions {
    fn default() -> QuicOptions {
        QuicOptions {
            idle_timeout: Duration::from_millis(500),
            keep_alive: Duration::from_millis(100),
            initial_rtt: Duration::from_millis(5),
            stream_window_bytes: 8 << 20,
            connection_window_bytes: 32 << 20,
            send_window_bytes: 32 << 20,
            max_client_streams: 256,
            max_peer_streams: 4,
        }
    }
}

/// Bytes asked of the kernel for a QUIC socket's receive and send buffers.
/// The default (about 208 KiB on Linux) overflowed under 256 clients on
/// one connection: hundreds of datagrams dropped a second, each a QUIC
/// loss and a retransmission in the tail. Linux caps the request, without
/// an error, at `net.core.rmem_max` / `wmem_max` (208 KiB on a stock
/// kernel: raise them to get the full size).
pub(crate) const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer on `socket`,
/// and says (once per socket, at info) when the kernel granted less. A
/// refusal is logged, not fatal: the socket works with what it has.
pub(crate) fn size_socket_buffers(socket: &std::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s
        .set_recv_buffer_size(SOCKET_BUFFER_BYTES)
        .and_then(|()| s.set_send_buffer_size(SOCKET_BUFFER_BYTES))
    {
        tracing::warn!("could not enlarge the UDP socket's buffers: {e}");
        return;
    }
    // Linux reports twice what it grants (its bookkeeping overhead).
    if let Ok(got) = s.recv_buffer_size()
        && got / 2 < SOCKET_BUFFER_BYTES
    {
        tracing::info!(
            "the UDP receive buffer is {} KiB of the {} KiB asked for (capped by the kernel's \
             net.core.rmem_max): under heavy load datagrams may drop and be resent",
            got / 2 / 1024,
            SOCKET_BUFFER_BYTES / 1024
        );
    }
}

/// What can go wrong building configurations.
#[derive(thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificates or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

ha_core::debug_as_display!(TlsError);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(id: &TlsIdentity) -> Result<Arc<RootCertStore>, TlsError> {
    let mut r = RootCertStore::empty();
    r.add(id.ca.clone())?;
    Ok(Arc::new(r))
}

/// Streams the remote side may open: `(unidirectional, bidirectional)`.
fn transport(opts: &QuicOptions, streams: (u32, u32)) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        opts.idle_timeout
            .try_into()
            .expect("idle timeout fits a VarInt"),
    ));
    t.keep_alive_interval(Some(opts.keep_alive));
    t.initial_rtt(opts.initial_rtt);
    t.stream_receive_window(opts.stream_window_bytes.into());
    t.receive_window(opts.connection_window_bytes.into());
    t.send_window(opts.send_window_bytes);
    t.max_concurrent_uni_streams(streams.0.into());
    t.max_concurrent_bidi_streams(streams.1.into());
    Arc::new(t)
}

/// The server side of a node's endpoint: both ALPNs, client certificates
/// required and verified against the cluster CA.
pub fn server_config(
    id: &TlsIdentity,
    opts: &QuicOptions,
) -> Result<quinn::ServerConfig, TlsError> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(id)?, p.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    // Before the handshake the class of a connection is unknown, so the
    // initial limits are the larger of both; `transport` narrows them.
    cfg.transport_config(transport(
        opts,
        (
            opts.max_peer_streams,
            opts.max_client_streams.max(opts.max_peer_streams),
        ),
    ));
    Ok(cfg)
}

/// The client side: our certificate, the cluster CA, one ALPN.
pub fn client_config(
    id: &TlsIdentity,
    alpn: &[u8],
    opts: &QuicOptions,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(id)?)
        .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    // The side that dials accepts no streams (see the module docs).
    cfg.transport_config(transport(opts, (0, 0)));
    Ok(cfg)
}

/// A client configuration that presents no certificate (for tests proving it
/// is refused).
pub fn anonymous_client_config(
    ca: &rustls_pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let mut r = RootCertStore::empty();
    r.add(ca.clone())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(Arc::new(r))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// The node ids `cert` (already verified against the CA by the handshake)
/// names: its DNS names of the form `node-N` (see
/// [`node_server_name`](crate::certs::node_server_name)), each checked as
/// [`cert_names`] does.
pub fn cert_node_ids(cert: &rustls_pki_types::CertificateDer<'_>) -> Vec<ha_core::types::NodeId> {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    let mut ids: Vec<ha_core::types::NodeId> = ee
        .valid_dns_names()
        .filter_map(|n| n.strip_prefix("node-")?.parse::<u64>().ok())
        .filter(|n| *n != 0)
        .map(ha_core::types::NodeId)
        .filter(|id| cert_names(cert, &crate::certs::node_server_name(*id)))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether `cert` (already verified against the CA by the handshake) names
/// the DNS identity `name`.
pub fn cert_names(cert: &rustls_pki_types::CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&server_name).is_ok()
}
