//! Clients over QUIC: a raw single-node client, and the transport the
//! generic typed client uses.
//!
//! Owns: [`QuicClient`] (one connection, one request per bidirectional
//! stream) and [`QuicClientTransport`] (a pool of such connections,
//! implementing `ha_core::client::ClientTransport`). The protocol types live
//! in `ha_core::protocol`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ha_core::client::{ClientOptions, ClientTransport, NodeAddr, RequestError, RequestFuture};
use ha_core::sm::Replicated;

pub use ha_core::protocol::{ClientRequest, ClientResponse, StatusView};

use crate::certs::TlsIdentity;
use crate::frame::{self, MAX_FRAME_BYTES};
use crate::resolve::Resolver;
use crate::tls::{self, ALPN_CLIENT, QuicOptions};

/// Why a request got no response.
#[derive(thiserror::Error)]
pub enum ClientError {
    /// Connecting failed (including a refused certificate).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The node.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request or its response was lost; its outcome is unknown.
    #[error("request failed: {0}")]
    Request(String),
    /// TLS settings were refused.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

ha_core::debug_as_display!(ClientError);

/// The transport parameters of a client's connections: the nodes' own,
/// but a 300 ms idle timeout (three keep-alives) instead of 500 ms. A
/// client whose leader died learns it from the connection closing: that
/// is the longest part of its failover (requests on an open connection
/// wait for it), and a spurious close costs only a reconnect.
fn client_options() -> QuicOptions {
    QuicOptions {
        idle_timeout: std::time::Duration::from_millis(300),
        ..QuicOptions::default()
    }
}

fn client_endpoint(cfg: quinn::ClientConfig) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    tls::size_socket_buffers(&socket);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime (start the client inside tokio)"))?;
    let mut endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

/// Sends one request on a new stream of `conn` and reads the response.
///
/// A node may refuse a request before reading all of it (one above its
/// `max_request_bytes`): it stops the request stream and still answers, so
/// a write stopped by the node is followed by reading that answer.
async fn round_trip(
    conn: &quinn::Connection,
    req: &ClientRequest,
) -> Result<ClientResponse, String> {
    let mut buf = Vec::new();
    frame::encode(req, &mut buf).map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let written = match send.write_all(&buf).await {
        Ok(()) => send.finish().map_err(|e| e.to_string()),
        Err(quinn::WriteError::Stopped(code)) => {
            Err(format!("the node stopped the request ({code})"))
        }
        Err(e) => return Err(e.to_string()),
    };
    drop(buf);
    match frame::read_frame(&mut recv, MAX_FRAME_BYTES).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(written
            .err()
            .unwrap_or_else(|| "the node closed the stream without answering".into())),
        Err(e) => Err(written.err().unwrap_or_else(|| e.to_string())),
    }
}

/// A connection from a client to one node.
pub struct QuicClient {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl QuicClient {
    /// Connects to the node at `addr` (whose certificate must name
    /// `server_name`, e.g. `node-1` or `localhost`) with `identity`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        identity: &TlsIdentity,
    ) -> Result<QuicClient, ClientError> {
        let cfg = tls::client_config(identity, ALPN_CLIENT, &QuicOptions::default())?;
        QuicClient::connect_with(addr, server_name, cfg).await
    }

    /// Connects with a prepared configuration.
    pub async fn connect_with(
        addr: SocketAddr,
        server_name: &str,
        cfg: quinn::ClientConfig,
    ) -> Result<QuicClient, ClientError> {
        let connect_err = |reason: String| ClientError::Connect { addr, reason };
        let endpoint = client_endpoint(cfg).map_err(|e| connect_err(e.to_string()))?;
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| connect_err(explain(server_name, e)))?
            .await
            .map_err(|e| connect_err(explain(server_name, e)))?;
        Ok(QuicClient {
            _endpoint: endpoint,
            conn,
        })
    }

    /// Sends one request and waits for its response.
    pub async fn request(&self, req: &ClientRequest) -> Result<ClientResponse, ClientError> {
        round_trip(&self.conn, req)
            .await
            .map_err(ClientError::Request)
    }
}

/// Connections to many nodes, for the generic client.
///
/// Each node is dialed by the [`NodeAddr`] the client has for it: its host
/// is resolved afresh whenever a connection is made (a node that comes
/// back at a new address under its name is found there), and the node's
/// certificate must name that host (a DNS name or an IP address), so a
/// client knows it reached the node it meant, not just some node of the
/// cluster.
pub struct QuicClientTransport {
    endpoint: quinn::Endpoint,
    resolver: Resolver,
    conns: Arc<Mutex<HashMap<NodeAddr, quinn::Connection>>>,
    /// Handshakes under way, by node: a request waits for one at most
    /// [`CONNECT_PATIENCE`], then it goes on in the background and the
    /// next request to that node takes it up.
    connecting: Arc<Mutex<HashMap<NodeAddr, Connecting>>>,
    /// When each node was last dialed to keep a standby connection.
    warm_tried: Mutex<HashMap<NodeAddr, std::time::Instant>>,
}

/// One handshake under way: `None` until it ends.
type Connecting = tokio::sync::watch::Receiver<Option<Result<quinn::Connection, String>>>;

/// How long one request waits for a handshake before it is given up as not
/// sent (the client then asks another node). A handshake takes one round
/// trip; a node that has not answered one in this time is likely dead (a
/// killed leader, whose address followers still name for a heartbeat or
/// two), and a client that waited its whole attempt on it would sit out the
/// election that replaces it. A node that is only far away is not lost: its
/// handshake goes on, and the client finds it done when it comes back.
pub const CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);

/// Why `addr` could not be connected to (see [`explain`]).
fn connect_error(addr: &NodeAddr, e: impl std::fmt::Display) -> String {
    format!("{addr}: {}", explain(addr.host(), e))
}

/// A connection error to a node dialed as `host`, in words an operator
/// can act on: a certificate that does not name the host dialed says so.
fn explain(host: &str, e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    if e.contains("NotValidForName") || e.contains("not valid for name") {
        format!(
            "the node's certificate does not name {host}: issue node certificates with \
             this host among their names (`certs --hosts ID={host}`), or dial a name they \
             carry ({e})"
        )
    } else {
        e
    }
}

impl QuicClientTransport {
    /// A transport presenting `identity`, resolving names with the
    /// system's resolver.
    pub fn new(identity: &TlsIdentity) -> Result<QuicClientTransport, ClientError> {
        QuicClientTransport::with_resolver(identity, Resolver::system())
    }

    /// A transport presenting `identity`, resolving names with `resolver`.
    pub fn with_resolver(
        identity: &TlsIdentity,
        resolver: Resolver,
    ) -> Result<QuicClientTransport, ClientError> {
        let cfg = tls::client_config(identity, ALPN_CLIENT, &client_options())?;
        let endpoint = client_endpoint(cfg).map_err(|e| ClientError::Connect {
            addr: "0.0.0.0:0".parse().expect("a valid address"),
            reason: e.to_string(),
        })?;
        Ok(QuicClientTransport {
            endpoint,
            resolver,
            conns: Arc::new(Mutex::new(HashMap::new())),
            connecting: Arc::new(Mutex::new(HashMap::new())),
            warm_tried: Mutex::new(HashMap::new()),
        })
    }

    async fn connection(&self, addr: &NodeAddr) -> Result<quinn::Connection, String> {
        let cached = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .cloned();
        if let Some(c) = cached
            && c.close_reason().is_none()
        {
            return Ok(c);
        }
        let mut rx = self.handshake(addr);
        let waited = tokio::time::timeout(CONNECT_PATIENCE, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(done)) => done
                .clone()
                .unwrap_or_else(|| Err(format!("{addr}: the handshake ended without a result"))),
            // (Its task ended without a word; its guard let go of the
            // entry, so the next request starts afresh.)
            Ok(Err(_)) => Err(format!("{addr}: the handshake was abandoned")),
            Err(_) => Err(format!(
                "{addr}: no handshake within {CONNECT_PATIENCE:?} (it goes on; another node \
                 is asked meanwhile)"
            )),
        }
    }

    /// The handshake with `addr` under way, or a new one, run on its own
    /// task so that it outlives a request that stopped waiting for it. At
    /// most one runs per node; their number is bounded like the cache's.
    fn handshake(&self, addr: &NodeAddr) -> Connecting {
        let mut connecting = self.connecting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = connecting.get(addr) {
            return rx.clone();
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        if connecting.len() >= MAX_CACHED {
            // A client asks at most its seeds and `MAX_LEARNED_ADDRS`
            // others; more handshakes at once than that is no use.
            let _ = tx.send(Some(Err(format!(
                "{addr}: {MAX_CACHED} handshakes are under way already"
            ))));
            return rx;
        }
        connecting.insert(addr.clone(), rx.clone());
        drop(connecting);
        let (endpoint, resolver) = (self.endpoint.clone(), self.resolver.clone());
        let conns = self.conns.clone();
        let addr = addr.clone();
        // Lets go of the entry however the task ends (a resolver that
        // panics included), so no node is left waiting on a dead handshake.
        let guard = HandshakeGuard {
            connecting: self.connecting.clone(),
            addr: addr.clone(),
            rx: rx.clone(),
        };
        tokio::spawn(async move {
            let result = async {
                // The endpoint's socket is IPv4: an IPv4 address is preferred.
                let to = resolver.resolve(addr.as_str(), true).await?;
                endpoint
                    .connect(to, addr.host())
                    .map_err(|e| connect_error(&addr, e))?
                    .await
                    .map_err(|e| connect_error(&addr, e))
            }
            .await;
            if let Ok(conn) = &result {
                let mut conns = conns.lock().unwrap_or_else(|e| e.into_inner());
                // Connections to nodes the client no longer asks are let
                // go of (at most `MAX_CACHED` kept: a client that learns
                // addresses over a long life does not keep every one it
                // ever dialed).
                if conns.len() >= MAX_CACHED {
                    conns.retain(|_, c| c.close_reason().is_none());
                    if conns.len() >= MAX_CACHED {
                        conns.clear();
                    }
                }
                conns.insert(addr.clone(), conn.clone());
            }
            drop(guard);
            let _ = tx.send(Some(result));
        });
        rx
    }
}

/// Removes a handshake's entry from `connecting` when its task ends, if the
/// entry is still that handshake's.
struct HandshakeGuard {
    connecting: Arc<Mutex<HashMap<NodeAddr, Connecting>>>,
    addr: NodeAddr,
    rx: Connecting,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        let mut connecting = self.connecting.lock().unwrap_or_else(|e| e.into_inner());
        if connecting
            .get(&self.addr)
            .is_some_and(|rx| rx.same_channel(&self.rx))
        {
            connecting.remove(&self.addr);
        }
    }
}

/// Connections a [`QuicClientTransport`] keeps open at most.
const MAX_CACHED: usize = 64;

/// The least time between two warming handshakes to one node (see
/// `ClientTransport::warm`).
pub const WARM_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

impl ClientTransport for QuicClientTransport {
    fn warm(&self, addr: &NodeAddr) {
        let open = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .is_some_and(|c| c.close_reason().is_none());
        if open {
            return;
        }
        // At most one warming handshake per node every WARM_RETRY: a dead
        // or refusing node is not dialed again and again.
        let now = std::time::Instant::now();
        {
            let mut tried = self.warm_tried.lock().unwrap_or_else(|e| e.into_inner());
            if tried
                .get(addr)
                .is_some_and(|t| now.duration_since(*t) < WARM_RETRY)
            {
                return;
            }
            if tried.len() >= MAX_CACHED {
                tried.retain(|_, t| now.duration_since(*t) < WARM_RETRY);
                if tried.len() >= MAX_CACHED {
                    return;
                }
            }
            tried.insert(addr.clone(), now);
        }
        // At most one handshake per node runs; its result is cached.
        let _ = self.handshake(addr);
    }

    fn request(&self, addr: NodeAddr, req: ClientRequest) -> RequestFuture<'_> {
        Box::pin(async move {
            let conn = self
                .connection(&addr)
                .await
                .map_err(RequestError::NotSent)?;
            round_trip(&conn, &req).await.map_err(|e| {
                self.conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&addr);
                RequestError::Lost(e)
            })
        })
    }
}

/// A typed client of the cluster reachable at any of `addrs` (socket
/// addresses, or [`NodeAddr`]s naming nodes by DNS name or IP address; a
/// node's certificate must name the host it is dialed by). Refused when
/// `addrs` is empty.
pub fn connect<T: Replicated>(
    addrs: impl IntoIterator<Item = impl Into<NodeAddr>>,
    identity: &TlsIdentity,
    opts: ClientOptions,
) -> Result<T::Client, ClientError> {
    let addrs: Vec<NodeAddr> = addrs.into_iter().map(Into::into).collect();
    if addrs.is_empty() {
        return Err(ClientError::Request(
            "no node address given: a client needs at least one".into(),
        ));
    }
    let transport = Arc::new(QuicClientTransport::new(identity)?);
    Ok(T::Client::from(ha_core::Client::new(
        transport, addrs, opts,
    )))
}
